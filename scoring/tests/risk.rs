//! The risk worker on the real broker and Postgres: the recorded mev-inspect swaps replayed
//! through Kafka give exactly the sandwiches the offline report finds, stored once, published,
//! and a second pass over the log stores nothing new.

use std::time::Duration;

use chainfold_ingest::replay::Dataset;
use chainfold_scoring::risk::{RiskConfig, RiskWorker};
use chainfold_testkit::{data_dir, unique, Isolated};

#[tokio::test]
async fn replayed_swaps_raise_the_sandwiches_the_report_finds_once() {
    let iso = Isolated::new("risk").await;
    let topics = iso.kafka.topics();
    chainfold_platform::kafka::ensure_topics(&iso.kafka, &topics.all())
        .await
        .expect("topics");
    let producer = chainfold_platform::kafka::producer(&iso.kafka).expect("producer");
    let items = Dataset::Swaps.decode_dir(&data_dir()).expect("swaps");
    chainfold_ingest::publish::publish_all(&producer, &topics, items, |_, _| {})
        .await
        .expect("publish");
    let expected = chainfold_scoring::report::measure(&data_dir())
        .expect("report")
        .sandwiches;

    let mut config = RiskConfig::new(
        iso.kafka.clone(),
        iso.postgres.clone(),
        iso.redis.clone(),
        unique("risk"),
    );
    // Small batches: blocks complete across batches by the partition frontier.
    config.batch_size = 700;
    let mut worker = RiskWorker::build(config).await.expect("risk worker");
    let outcome = worker
        .run_until_idle(Duration::from_secs(3))
        .await
        .expect("detects");
    assert_eq!(outcome.sandwiches as usize, expected.len(), "{outcome:?}");
    assert_eq!((outcome.flash_loan_attacks, outcome.drains), (0, 0));
    let pool = worker.pool().clone();
    let stored: Vec<(String, Vec<String>, String, i64)> = sqlx::query_as(
        "SELECT kind, tx_hashes, detector_version, block_number FROM risk_alert ORDER BY seq",
    )
    .fetch_all(&pool)
    .await
    .expect("alerts");
    assert_eq!(stored.len(), expected.len());
    for s in &expected {
        let front = format!("{:#x}", s.front_tx);
        let back = format!("{:#x}", s.back_tx);
        assert!(
            stored
                .iter()
                .any(|(kind, txs, version, block)| kind == "SANDWICH"
                    && txs.first() == Some(&front)
                    && txs.last() == Some(&back)
                    && version == chainfold_domain::risk::DETECTOR_VERSION
                    && *block as u64 == s.block),
            "sandwich {front} → {back} not stored"
        );
    }
    let latency_known: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM risk_alert WHERE source_published_at <= detected_at",
    )
    .fetch_one(&pool)
    .await
    .expect("latency");
    assert_eq!(latency_known as usize, expected.len());
    let risk_topic = format!(
        "{}{}",
        iso.kafka.topic_prefix,
        chainfold_domain::topics::RISK
    );
    let published = chainfold_testkit::read_topic(
        &iso.kafka,
        &risk_topic,
        expected.len(),
        Duration::from_secs(20),
    );
    assert_eq!(published.len(), expected.len());

    // Incidents: every alert in exactly one; a bot's sandwiches (same actor, within the hour)
    // in the same one; so fewer incidents than alerts.
    let incidents: Vec<(String, Vec<String>, Vec<String>)> =
        sqlx::query_as("SELECT id, alert_ids, stages FROM risk_incident")
            .fetch_all(&pool)
            .await
            .expect("incidents");
    let mut members: Vec<&String> = incidents.iter().flat_map(|i| i.1.iter()).collect();
    members.sort();
    let total = members.len();
    members.dedup();
    assert_eq!((total, members.len()), (expected.len(), expected.len()));
    assert!(incidents.len() < expected.len(), "{}", incidents.len());
    assert!(incidents
        .iter()
        .all(|i| i.2 == vec!["exploitation".to_owned()]));
    let by_actor: Vec<(String, String)> = sqlx::query_as(
        "SELECT a.addresses[1], i.id FROM risk_alert a JOIN risk_incident i ON a.id = ANY(i.alert_ids)",
    )
    .fetch_all(&pool)
    .await
    .expect("membership");
    for (actor, incident) in &by_actor {
        assert!(
            by_actor.iter().all(|(a, i)| a != actor || i == incident),
            "{actor}'s sandwiches split across incidents"
        );
    }

    let listed = serde_json::to_value(
        chainfold_api::build_schema(pool.clone())
            .execute("{ incidents(chainId: 1, first: 200) { id alertIds stages severity } }")
            .await,
    )
    .expect("json");
    assert_eq!(
        listed["data"]["incidents"]
            .as_array()
            .expect("incidents")
            .len(),
        incidents.len().min(200),
        "{listed}"
    );

    // The API pages through them, newest first, filtered by kind.
    let schema = chainfold_api::build_schema(pool.clone());
    let page = |after: Option<String>, kinds: &str| {
        let schema = schema.clone();
        let after = after.map_or("null".to_owned(), |a| format!("\"{a}\""));
        let q = format!(
            "{{ alerts(chainId: 1, kinds: [{kinds}], first: 5, after: {after}) {{ totalCount
                pageInfo {{ hasNextPage endCursor }}
                edges {{ node {{ id kind severity blockNumber txHashes pools evidence detectorVersion }} }} }} }}"
        );
        async move { serde_json::to_value(schema.execute(q.as_str()).await).expect("json") }
    };
    let first = page(None, "SANDWICH").await;
    let alerts = &first["data"]["alerts"];
    assert_eq!(alerts["totalCount"], expected.len() as i64, "{first}");
    assert_eq!(alerts["edges"].as_array().expect("edges").len(), 5);
    assert_eq!(alerts["pageInfo"]["hasNextPage"], true);
    assert_eq!(alerts["edges"][0]["node"]["kind"], "SANDWICH");
    assert!(alerts["edges"][0]["node"]["evidence"]["victim_txs"].is_array());
    let cursor = alerts["pageInfo"]["endCursor"]
        .as_str()
        .expect("cursor")
        .to_owned();
    let second = page(Some(cursor), "SANDWICH").await;
    let first_ids: Vec<&serde_json::Value> = alerts["edges"]
        .as_array()
        .expect("edges")
        .iter()
        .map(|e| &e["node"]["id"])
        .collect();
    for e in second["data"]["alerts"]["edges"].as_array().expect("edges") {
        assert!(!first_ids.contains(&&e["node"]["id"]), "pages overlap");
    }
    let none = page(None, "FLASH_LOAN_ATTACK, LIQUIDITY_DRAIN").await;
    assert_eq!(none["data"]["alerts"]["totalCount"], 0, "{none}");

    // Another group over the same log detects the same and stores nothing new.
    let mut again = RiskWorker::build(RiskConfig::new(
        iso.kafka.clone(),
        iso.postgres.clone(),
        iso.redis.clone(),
        unique("risk-again"),
    ))
    .await
    .expect("risk worker");
    let replay = again
        .run_until_idle(Duration::from_secs(3))
        .await
        .expect("replays");
    assert_eq!(replay.sandwiches, 0, "{replay:?}");
    assert!(replay.received > 0);
}
