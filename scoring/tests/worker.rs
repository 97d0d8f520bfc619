//! The scoring worker end to end on the real broker, Postgres and Redis: the Polygon wallet
//! histories replayed, projected and scored; a restart mid-stream and a full replay change
//! nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use chainfold_ingest::replay::Dataset;
use chainfold_scoring::worker::{Config, Scorer};
use chainfold_testkit::{data_dir, unique, Isolated};

const LIQUIDATED: &str = "0x000006eee6e39015cb523aebdd4d0b1855aba682";

fn config(iso: &Isolated, group: &str) -> Config {
    let mut c = Config::new(
        iso.kafka.clone(),
        iso.postgres.clone(),
        iso.redis.clone(),
        group.to_owned(),
        iso.group.clone(),
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/position-v1"),
    );
    c.batch_size = 500;
    c.instance_id = Some(format!("{group}-instance"));
    c
}

#[tokio::test]
async fn every_polygon_wallet_is_scored_once_per_event_and_restarts_change_nothing() {
    let iso = Isolated::new("scoring").await;
    let topics = iso.kafka.topics();
    chainfold_platform::kafka::ensure_topics(&iso.kafka, &topics.all())
        .await
        .expect("topics");
    let producer = chainfold_platform::kafka::producer(&iso.kafka).expect("producer");
    let items = Dataset::Polygon.decode_dir(&data_dir()).expect("data");
    let published = chainfold_ingest::publish::publish_all(&producer, &topics, items, |_, _| {})
        .await
        .expect("publish");
    let mut projector = chainfold_projector::App::build(chainfold_projector::Config::new(
        iso.kafka.clone(),
        iso.postgres.clone(),
        iso.redis.clone(),
        iso.group.clone(),
    ))
    .await
    .expect("projector");
    projector.run_until_caught_up().await.expect("project");

    // A first scorer takes one batch (at most 500 events), then stops; a restart with the same
    // group finishes the log.
    let group = unique("scorer");
    let mut first = Scorer::build(config(&iso, &group)).await.expect("scorer");
    let one = first
        .process_batch(Duration::from_secs(20))
        .await
        .expect("batch");
    assert!(
        one.received > 0 && one.received < published.lending,
        "{one:?}"
    );
    drop(first);
    let mut again = Scorer::build(config(&iso, &group))
        .await
        .expect("scorer restarts");
    again
        .run_until_idle(Duration::from_secs(5))
        .await
        .expect("scores");
    let pool = again.pool().clone();

    let (rows, distinct, events): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM credit_score), (SELECT count(DISTINCT event_id) FROM credit_score),
                (SELECT count(*) FROM lending_event WHERE block_time IS NOT NULL)",
    )
    .fetch_one(&pool)
    .await
    .expect("counts");
    assert_eq!(events as u64, published.lending);
    assert_eq!(
        (rows, distinct),
        (events, events),
        "one score per lending event, none missing, none twice"
    );
    let unscored: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT wallet) FROM lending_event e WHERE NOT EXISTS (SELECT 1 FROM credit_score s WHERE s.wallet = e.wallet)",
    )
    .fetch_one(&pool)
    .await
    .expect("unscored");
    assert_eq!(unscored, 0, "every wallet has a score");

    // A full replay of the log into a new group stores nothing new.
    let mut replay = Scorer::build(config(&iso, &unique("scorer-replay")))
        .await
        .expect("scorer");
    let outcome = replay
        .run_until_idle(Duration::from_secs(10))
        .await
        .expect("replay");
    assert_eq!(outcome.received, published.lending);
    assert_eq!(outcome.scored, 0);

    // The thrice-liquidated wallet: below its never-liquidated peers, and says why.
    let latest: Vec<(String, i32, serde_json::Value, String, String)> = sqlx::query_as(
        "SELECT wallet, score, reasons, model_version, model_sha256 FROM credit_score_latest WHERE chain_id = 137",
    )
    .fetch_all(&pool)
    .await
    .expect("latest");
    let by_wallet: BTreeMap<String, (i32, serde_json::Value)> = latest
        .iter()
        .map(|(w, s, r, _, _)| (w.clone(), (*s, r.clone())))
        .collect();
    assert!(latest
        .iter()
        .all(|r| r.3 == "position-v1" && r.4.len() == 64));
    let (bad, reasons) = &by_wallet[LIQUIDATED];
    assert_eq!(reasons[0]["code"], "LIQUIDATION_HISTORY", "{reasons}");
    let counts: Vec<(String, i64, bool)> = sqlx::query_as(
        "SELECT wallet, count(*), bool_or(action = 'liquidation') FROM lending_event WHERE chain_id = 137 GROUP BY wallet",
    )
    .fetch_all(&pool)
    .await
    .expect("counts");
    let size = counts.iter().find(|c| c.0 == LIQUIDATED).expect("wallet").1;
    let peers: Vec<&(String, i64, bool)> = counts
        .iter()
        .filter(|c| !c.2 && c.1 * 2 >= size && c.1 <= size * 2)
        .collect();
    assert!(!peers.is_empty());
    for peer in peers {
        assert!(
            *bad < by_wallet[&peer.0].0,
            "{bad} vs {} {}",
            peer.0,
            by_wallet[&peer.0].0
        );
    }
}
