//! The risk worker on the real broker and Postgres: the recorded mev-inspect swaps replayed
//! through Kafka give exactly the sandwiches the offline report finds, stored once, published,
//! and a second pass over the log stores nothing new.

use std::time::Duration;

use chainfold_ingest::replay::Dataset;
use chainfold_risk::worker::{RiskConfig, RiskWorker};
use chainfold_testkit::{data_dir, unique, Isolated};

/// Folds `iso`'s log with a projector of `iso`'s group (the risk worker evaluates sealed blocks
/// from the read models once that group has folded them).
async fn project(iso: &Isolated) {
    let mut projector = chainfold_projector::App::build(chainfold_projector::Config::new(
        iso.kafka.clone(),
        iso.postgres.clone(),
        iso.redis.clone(),
        iso.group.clone(),
    ))
    .await
    .expect("projector");
    projector.run_until_caught_up().await.expect("project");
}

/// A risk worker config of `iso` reading what `iso`'s projector folded.
fn risk_config(iso: &Isolated, group: String) -> RiskConfig {
    let mut config = RiskConfig::new(
        iso.kafka.clone(),
        iso.postgres.clone(),
        iso.redis.clone(),
        group,
    );
    config.projector_group = iso.group.clone();
    config
}

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
    let expected = chainfold_report::measure(&data_dir())
        .expect("report")
        .sandwiches;
    project(&iso).await;

    let config = risk_config(&iso, unique("risk"));
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
            "{{ alerts(chainId: 1, where: {{kind_in: [{kinds}]}}, first: 5, after: {after}) {{ totalCount
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
    let mut again = RiskWorker::build(risk_config(&iso, unique("risk-again")))
        .await
        .expect("risk worker");
    let replay = again
        .run_until_idle(Duration::from_secs(3))
        .await
        .expect("replays");
    assert_eq!(replay.sandwiches, 0, "{replay:?}");
    assert!(replay.received > 0);
}

/// A recorded Polygon deposit as a template for hand-built lending flows.
fn template() -> chainfold_domain::Envelope {
    Dataset::Polygon
        .decode_dir(&data_dir())
        .expect("polygon")
        .into_iter()
        .flatten()
        .find(|e| matches!(e.event, chainfold_domain::DefiEvent::Deposit(_)))
        .expect("a deposit")
}

#[tokio::test]
async fn borrowing_that_trends_past_the_bound_raises_a_shortage_with_a_recommendation() {
    use chainfold_domain::{DefiEvent, EventId, TokenAmount};
    let iso = Isolated::new("shortage").await;
    let topics = iso.kafka.topics();
    chainfold_platform::kafka::ensure_topics(&iso.kafka, &topics.all())
        .await
        .expect("topics");
    let producer = chainfold_platform::kafka::producer(&iso.kafka).expect("producer");
    let base = template();
    let DefiEvent::Deposit(flow) = base.event.clone() else {
        unreachable!()
    };
    let t0 = chrono::DateTime::from_timestamp(1_700_000_000, 0).expect("time");
    let unit = 10u128.pow(u32::from(flow.reserve.decimals));
    // Two reserves on chain 999: `hot` gets 1,000 supplied then +100 borrowed every hour for
    // 8 hours (utilisation 10% → 80%, forecast past 90% within 6 h); `calm` stays at 50%.
    let mut events = Vec::new();
    for (name, hourly) in [("hot", 100u128), ("calm", 0)] {
        let mut reserve = flow.reserve.clone();
        reserve.address =
            alloy_primitives::Address::repeat_byte(if name == "hot" { 0x11 } else { 0x22 });
        reserve.symbol = name.to_uppercase();
        let mut add = |i: u32, event: DefiEvent, hours: i64| {
            let mut e = base.clone();
            e.chain_id = 999;
            e.event_id = EventId::of_record(999, "test", &format!("{name}-{i}"));
            e.block_time = Some(t0 + chrono::Duration::hours(hours));
            e.event = event;
            events.push(Ok(e));
        };
        let mut supply = flow.clone();
        supply.reserve = reserve.clone();
        supply.amount = TokenAmount(alloy_primitives::U256::from(1000 * unit));
        add(0, DefiEvent::Deposit(supply.clone()), 0);
        let mut first = supply.clone();
        first.amount = TokenAmount(alloy_primitives::U256::from(if hourly == 0 {
            500 * unit
        } else {
            100 * unit
        }));
        add(1, DefiEvent::Borrow(first), 0);
        for h in 1..8u32 {
            let mut b = supply.clone();
            b.amount = TokenAmount(alloy_primitives::U256::from(
                hourly.max(1) * unit / if hourly == 0 { 1_000_000 } else { 1 },
            ));
            add(1 + h, DefiEvent::Borrow(b), i64::from(h));
        }
    }
    chainfold_ingest::publish::publish_all(&producer, &topics, events, |_, _| {})
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
    let mut worker = RiskWorker::build(risk_config(&iso, unique("risk")))
        .await
        .expect("risk worker");
    let outcome = worker
        .run_until_idle(Duration::from_secs(3))
        .await
        .expect("forecasts");
    // Evaluated hour by hour, as the flows arrived: the 6 h forecast first reaches 90% at hour 2
    // (30% now, +10%/h) and stays past it, one episode: one alert, at hour 2, on `hot`.
    assert_eq!(outcome.shortages, 1, "{outcome:?}");
    let hot = format!("{:#x}", alloy_primitives::Address::repeat_byte(0x11));
    let (pools, evidence, at): (
        Vec<String>,
        serde_json::Value,
        chrono::DateTime<chrono::Utc>,
    ) = sqlx::query_as(
        "SELECT pools, evidence, block_time FROM risk_alert WHERE kind = 'LIQUIDITY_SHORTAGE'",
    )
    .fetch_one(worker.pool())
    .await
    .expect("alert");
    assert_eq!(pools, vec![hot]);
    assert_eq!(at, t0 + chrono::Duration::hours(2));
    // One point per instant (the totals after all its events): debt 100, 200, 300 at hours
    // 0, 1, 2, supply flat at 1,000: the trend gives 900 debt at hour 2 + 6 = 8, so
    // utilisation 90%, and 900 / 0.8 − 1,000 = 125 supply brings it back to 80%.
    let debt_8 = 900.0;
    let forecast = &evidence["forecast"];
    assert!((forecast["utilisation_now"].as_f64().expect("now") - 0.3).abs() < 1e-9);
    let got = forecast["utilisation_forecast"].as_f64().expect("forecast");
    assert!(
        (got - debt_8 / 1000.0).abs() < 1e-9,
        "{got} vs {}",
        debt_8 / 1000.0
    );
    let amount = evidence["recommendation"]["amount"]
        .as_f64()
        .expect("amount");
    assert!((amount - (debt_8 / 0.8 - 1000.0)).abs() < 1e-6, "{amount}");
    assert_eq!(evidence["recommendation"]["action"], "provision");
}

#[tokio::test]
async fn the_anomaly_model_scores_every_replayed_swap_once_and_flags_about_what_training_did() {
    // Six partitions, a transaction's legs on several of them: the worker scores sealed blocks
    // from the read models, so no arrival order can split a transaction's features (the
    // stream-order worker it replaced once flagged 68 instead of 93 here, and needed one
    // partition to pass).
    let iso = Isolated::new("anomaly").await;
    let topics = iso.kafka.topics();
    chainfold_platform::kafka::ensure_topics(&iso.kafka, &topics.all())
        .await
        .expect("topics");
    let producer = chainfold_platform::kafka::producer(&iso.kafka).expect("producer");
    let items = Dataset::Swaps.decode_dir(&data_dir()).expect("swaps");
    chainfold_ingest::publish::publish_all(&producer, &topics, items, |_, _| {})
        .await
        .expect("publish");
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scoring/models/pool-anomaly-v1");
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("metrics.json")).expect("metrics"))
            .expect("json");
    project(&iso).await;
    let mut config = risk_config(&iso, unique("risk"));
    config.anomaly_model_dir = Some(dir);
    let mut worker = RiskWorker::build(config).await.expect("risk worker");
    let outcome = worker
        .run_until_idle(Duration::from_secs(3))
        .await
        .expect("scores");
    // Every non-reverted swap scored exactly once.
    assert_eq!(
        outcome.swaps_scored,
        metrics["rows"].as_u64().expect("rows"),
        "{outcome:?}"
    );
    // The same model on the same causal features flags what training flagged.
    let trained = metrics["flagged"].as_u64().expect("flagged");
    assert!(
        outcome.anomalies == trained,
        "{} vs {trained}",
        outcome.anomalies
    );
    let evidence: Vec<serde_json::Value> =
        sqlx::query_scalar("SELECT evidence FROM risk_alert WHERE kind = 'POOL_ANOMALY'")
            .fetch_all(worker.pool())
            .await
            .expect("alerts");
    assert_eq!(evidence.len() as u64, outcome.anomalies);
    for e in &evidence {
        assert!(e["score"].as_f64().expect("score") < 0.0, "{e}");
        assert_eq!(e["top"].as_array().expect("top").len(), 2, "{e}");
        assert_eq!(e["model"], "pool-anomaly-v1");
    }
}

/// A committed batch whose relay failed leaves its alerts in the outbox; on a quiet stream no
/// later batch commits to take them along: the worker relays them when it next finds nothing.
#[tokio::test]
async fn alerts_a_failed_relay_left_in_the_outbox_go_when_the_worker_idles() {
    let iso = Isolated::new("risk_idle_relay").await;
    let topics = iso.kafka.topics();
    chainfold_platform::kafka::ensure_topics(&iso.kafka, &topics.all())
        .await
        .expect("topics");
    let mut worker = RiskWorker::build(risk_config(&iso, unique("risk-idle")))
        .await
        .expect("risk worker");
    let pool = worker.pool().clone();
    // Left behind after the worker started (it relays what is pending when it starts).
    let risk_topic = format!(
        "{}{}",
        iso.kafka.topic_prefix,
        chainfold_domain::topics::RISK
    );
    let output = chainfold_platform::outbox::Output {
        topic: risk_topic,
        key: "31337".into(),
        output_id: unique("alert:left-behind"),
        payload: serde_json::json!({ "kind": "left behind" }).into(),
    };
    chainfold_testkit::outbox::left_behind_goes_when_idle(&pool, output, async || {
        let batch = worker.process_batch(Duration::from_millis(300)).await;
        batch.expect("an idle batch").received
    })
    .await;
}
