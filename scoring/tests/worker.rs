//! The scoring worker end to end on the real broker, Postgres and Redis: the Polygon wallet
//! histories replayed, projected and scored; a restart mid-stream and a full replay change
//! nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use chainfold_ingest::replay::Dataset;
use chainfold_scoring::worker::{Config, Scorer};
use chainfold_testkit::{data_dir, unique, Isolated};

const LIQUIDATED: &str = "0x000006eee6e39015cb523aebdd4d0b1855aba682";

/// The attestation issuer the scorers of these tests allow (`--attestation-issuers`).
fn issuer_key() -> k256::ecdsa::SigningKey {
    k256::ecdsa::SigningKey::from_slice(&[0x42; 32]).expect("a valid secret key")
}

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
    c.policy = Some(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policy.toml"));
    c.instance_id = Some(format!("{group}-instance"));
    c.attestation_issuers = vec![alloy_primitives::Address::from_private_key(&issuer_key())];
    c
}

/// Publishes `items` to `iso`'s topics and folds them with a projector of `iso`'s group (built on
/// first use, kept for later calls) until it has caught up.
async fn publish_and_project(
    iso: &Isolated,
    projector: &mut Option<chainfold_projector::App>,
    items: impl IntoIterator<Item = chainfold_ingest::Decoded>,
) -> chainfold_ingest::publish::PublishSummary {
    let topics = iso.kafka.topics();
    chainfold_platform::kafka::ensure_topics(&iso.kafka, &topics.all())
        .await
        .expect("topics");
    let producer = chainfold_platform::kafka::producer(&iso.kafka).expect("producer");
    let published = chainfold_ingest::publish::publish_all(&producer, &topics, items, |_, _| {})
        .await
        .expect("publish");
    if projector.is_none() {
        *projector = Some(
            chainfold_projector::App::build(chainfold_projector::Config::new(
                iso.kafka.clone(),
                iso.postgres.clone(),
                iso.redis.clone(),
                iso.group.clone(),
            ))
            .await
            .expect("projector"),
        );
    }
    if let Some(p) = projector.as_mut() {
        p.run_until_caught_up().await.expect("project");
    }
    published
}

/// The Polygon histories published, projected and scored to the end by one scorer: the events,
/// the projector (for later publishes) and the scorer.
async fn polygon_scored(
    iso: &Isolated,
) -> (
    Vec<chainfold_domain::Envelope>,
    Option<chainfold_projector::App>,
    Scorer,
) {
    let events: Vec<chainfold_domain::Envelope> = Dataset::Polygon
        .decode_dir(&data_dir())
        .expect("data")
        .into_iter()
        .flatten()
        .collect();
    let mut projector = None;
    publish_and_project(iso, &mut projector, events.iter().cloned().map(Ok)).await;
    let mut scorer = Scorer::build(config(iso, &unique("scorer")))
        .await
        .expect("scorer");
    scorer
        .run_until_idle(Duration::from_secs(5))
        .await
        .expect("scores");
    (events, projector, scorer)
}

/// A backtest of the live model over all time, labelled `label`.
async fn backtest_all_time(
    iso: &Isolated,
    label: &str,
) -> chainfold_scoring::backtest::BacktestSummary {
    chainfold_scoring::backtest::run(&chainfold_scoring::backtest::BacktestConfig {
        kafka: iso.kafka.clone(),
        postgres: iso.postgres.clone(),
        model: "position-v1".into(),
        models_dir: std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models"),
        from: chainfold_scoring::backtest::parse_time("2000-01-01").expect("time"),
        to: chainfold_scoring::backtest::parse_time("2100-01-01").expect("time"),
        label: Some(label.into()),
        projector_group: iso.group.clone(),
    })
    .await
    .expect("backtest")
}

#[tokio::test]
async fn every_polygon_wallet_is_scored_once_per_event_and_restarts_change_nothing() {
    let iso = Isolated::new("scoring").await;
    let items = Dataset::Polygon.decode_dir(&data_dir()).expect("data");
    let published = publish_and_project(&iso, &mut None, items).await;
    let producer = chainfold_platform::kafka::producer(&iso.kafka).expect("producer");

    // A first scorer takes batches (at most 100 events each) until one wallet's history is
    // folded in part, then stops; a restart with the same group finishes the log. (Five of the
    // six partitions hold fewer than 500 events: a first batch of whole partitions left no
    // wallet to resume, and then the restart's resumed count below was 0.)
    let group = unique("scorer");
    let mut small = config(&iso, &group);
    small.batch_size = 100;
    let mut first = Scorer::build(small).await.expect("scorer");
    let first_pool = first.pool().clone();
    let mut taken = 0;
    loop {
        let one = first
            .process_batch(Duration::from_secs(20))
            .await
            .expect("batch");
        assert!(one.received > 0, "{one:?}");
        taken += one.received;
        let partial: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM credit_profile p
                            WHERE p.rows_folded < (SELECT count(*) FROM lending_event e
                                                   WHERE e.chain_id = p.chain_id
                                                     AND e.wallet = p.wallet))",
        )
        .fetch_one(&first_pool)
        .await
        .expect("profiles");
        if partial {
            break;
        }
    }
    assert!(
        taken < published.lending,
        "{taken} of {}",
        published.lending
    );
    drop(first);
    // Every score is announced on the Redis channel, in pipelines of ~1,000 commands: the
    // restarted scorer takes batches of 2,000, so a batch spans pipelines.
    let announced = {
        let client = redis::Client::open(iso.redis.expose_url()).expect("redis url");
        let mut pubsub = client.get_async_pubsub().await.expect("pubsub");
        pubsub
            .subscribe(format!("{}scores", iso.redis.prefix))
            .await
            .expect("subscribe");
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        tokio::spawn(async move {
            use futures::StreamExt as _;
            let mut messages = pubsub.into_on_message();
            while let Some(m) = messages.next().await {
                if tx.send(m.get_payload().expect("text")).is_err() {
                    break;
                }
            }
        });
        rx
    };
    let mut restarted = config(&iso, &group);
    restarted.batch_size = 2_000;
    let mut again = Scorer::build(restarted).await.expect("scorer restarts");
    let resumed = again
        .run_until_idle(Duration::from_secs(5))
        .await
        .expect("scores");
    assert!(resumed.scored > 1_000, "{resumed:?}");
    let mut announced = announced;
    let mut ids = std::collections::HashSet::new();
    while ids.len() < resumed.scored as usize {
        let message = tokio::time::timeout(Duration::from_secs(10), announced.recv())
            .await
            .expect("every score announced")
            .expect("subscriber");
        let value: serde_json::Value = serde_json::from_str(&message).expect("JSON");
        let id = value["outputId"].as_str().expect("outputId").to_owned();
        assert!(ids.insert(id.clone()), "{id} announced twice");
    }
    assert_eq!(ids.len() as u64, resumed.scored);
    // The restarted scorer went on from the profiles the first one stored with its offsets (the
    // backtest below folds every history from the start and must agree score for score).
    assert!(resumed.profiles_resumed > 0, "{resumed:?}");
    assert_eq!(resumed.behind, 0, "{resumed:?}");
    // Each history row is read about once, although the projector is ahead of every batch: a
    // batch reads a wallet's rows only up to its latest trigger.
    assert!(
        resumed.history_rows_read <= published.lending,
        "{} rows read for {} events",
        resumed.history_rows_read,
        published.lending
    );
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

    // A backtest of the live model over all time reproduces every live score into its own
    // result set and leaves the live scores alone; a narrower window scores fewer.
    let backtest =
        |from: &str, to: &str, label: &str| chainfold_scoring::backtest::BacktestConfig {
            kafka: iso.kafka.clone(),
            postgres: iso.postgres.clone(),
            model: "position-v1".into(),
            models_dir: std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models"),
            from: chainfold_scoring::backtest::parse_time(from).expect("time"),
            to: chainfold_scoring::backtest::parse_time(to).expect("time"),
            label: Some(label.into()),
            projector_group: iso.group.clone(),
        };
    let all = chainfold_scoring::backtest::run(&backtest("2000-01-01", "2100-01-01", "all"))
        .await
        .expect("backtest");
    assert_eq!(all.events_read, published.lending);
    assert_eq!(all.scored as i64, events);
    let (differ, live_rows): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM backtest_score b JOIN credit_score c USING (chain_id, wallet, event_id)
                 WHERE b.run_id = $1 AND (b.score <> c.score OR b.reasons <> c.reasons::jsonb
                       OR b.probability_of_liquidation IS DISTINCT FROM c.probability_of_liquidation)),
                (SELECT count(*) FROM credit_score)",
    )
    .bind(&all.run_id)
    .fetch_one(&pool)
    .await
    .expect("compare");
    assert_eq!(
        (differ, live_rows),
        (0, events),
        "same scores, live untouched"
    );
    let part = chainfold_scoring::backtest::run(&backtest("2021-06-01", "2021-09-01", "summer"))
        .await
        .expect("backtest");
    let in_window: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM lending_event WHERE block_time >= '2021-06-01' AND block_time < '2021-09-01'",
    )
    .fetch_one(&pool)
    .await
    .expect("window");
    assert_eq!(part.scored as i64, in_window);
    let refused =
        chainfold_scoring::backtest::run(&backtest("2022-01-01", "2021-01-01", "backwards"))
            .await
            .expect_err("an empty window");
    assert!(
        format!("{refused:#}").contains("must be before"),
        "{refused:#}"
    );

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
    // The Redis score hash of every wallet holds its latest score (a batch writes only each
    // wallet's last score of the batch there).
    let mut redis = redis::Client::open(iso.redis.expose_url())
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    for (wallet, (score, _)) in &by_wallet {
        let key = format!("{}score:137:{wallet}", iso.redis.prefix);
        let (cached, json): (i32, String) = redis::cmd("HMGET")
            .arg(&key)
            .arg("score")
            .arg("json")
            .query_async(&mut redis)
            .await
            .expect("hmget");
        assert_eq!(cached, *score, "{wallet}");
        let message: serde_json::Value = serde_json::from_str(&json).expect("JSON");
        assert_eq!(message["score"], serde_json::json!(score), "{wallet}");
    }
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

    // The API serves the latest score with its reasons and provenance, and the history.
    let schema = chainfold_api::build_schema(pool.clone());
    let query = format!(
        r#"{{ wallet(chainId: 137, address: "{LIQUIDATED}") {{
            creditScore {{ score band probabilityOfDefault modelVersion computedAt eventId kafkaOffset reasons {{ code description impact }} }}
            scoreHistory(first: 2) {{ edges {{ node {{ score computedAt modelVersion }} }} pageInfo {{ hasNextPage }} }} }} }}"#
    );
    let response = serde_json::to_value(schema.execute(query.as_str()).await).expect("json");
    let score = &response["data"]["wallet"]["creditScore"];
    assert_eq!(score["score"], *bad, "{response}");
    assert_eq!(score["modelVersion"], "position-v1");
    assert_eq!(score["reasons"][0]["code"], "LIQUIDATION_HISTORY");
    assert!(score["reasons"][0]["impact"].as_f64().expect("impact") < 0.0);
    let history = &response["data"]["wallet"]["scoreHistory"];
    assert_eq!(history["edges"].as_array().expect("edges").len(), 2);
    assert_eq!(history["pageInfo"]["hasNextPage"], true);
    assert_eq!(history["edges"][0]["node"]["score"], *bad, "newest first");

    // An identity: one address alone scores what the worker stored for it; joined with the
    // liquidated wallet, it inherits the liquidation history; more than 50 are refused.
    let peer = counts
        .iter()
        .find(|c| !c.2 && c.1 * 2 >= size && c.1 <= size * 2)
        .expect("a peer")
        .0
        .clone();
    let identity = |addresses: Vec<String>| {
        let schema = schema.clone();
        async move {
            let list = addresses
                .iter()
                .map(|a| format!("\"{a}\""))
                .collect::<Vec<_>>()
                .join(", ");
            let q = format!(
                "{{ identityScore(chainId: 137, addresses: [{list}]) {{ addresses score band reasons {{ code impact }} }} }}"
            );
            serde_json::to_value(schema.execute(q.as_str()).await).expect("json")
        }
    };
    let alone = identity(vec![peer.clone()]).await;
    assert_eq!(
        alone["data"]["identityScore"]["score"], by_wallet[&peer].0,
        "{alone}"
    );
    let joined = identity(vec![peer.clone(), LIQUIDATED.to_owned(), peer.clone()]).await;
    let joined = &joined["data"]["identityScore"];
    assert_eq!(joined["addresses"].as_array().expect("addresses").len(), 2);
    assert!(joined["score"].as_i64().expect("score") < i64::from(by_wallet[&peer].0));
    assert!(joined["reasons"]
        .as_array()
        .expect("reasons")
        .iter()
        .any(|r| r["code"] == "LIQUIDATION_HISTORY"));
    let too_many: Vec<String> = (0..51).map(|i| format!("0x{i:040x}")).collect();
    let refused = identity(too_many).await;
    assert_eq!(
        refused["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
        "{refused}"
    );

    // requestCredit: decided against the latest score with the shipped policy, stored,
    // published and listed on the wallet; unknown wallets and assets are refused clearly.
    let decisions_topic = format!(
        "{}{}",
        iso.kafka.topic_prefix,
        chainfold_domain::topics::DECISIONS
    );
    chainfold_platform::kafka::ensure_topics(&iso.kafka, std::slice::from_ref(&decisions_topic))
        .await
        .expect("decisions topic");
    let policy_path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policy.toml");
    let policy = chainfold_store::decisions::load_policy(&policy_path).expect("policy");
    let desk = chainfold_api::decisions::DecisionDesk {
        policy: policy.clone(),
        producer: producer.clone(),
        topic: decisions_topic.clone(),
        redis: None,
    };
    let lender = chainfold_api::schema::build_with(pool.clone(), Some(desk));
    // requestCredit needs an API key: the request carries the caller the HTTP layer would.
    let as_lender = |query: String| {
        async_graphql::Request::new(query).data(chainfold_api::auth::Caller::Key {
            id: 0,
            name: "lender".into(),
            rate_per_minute: 600,
        })
    };
    let (peer_score, peer_band): (i32, String) = sqlx::query_as(
        "SELECT score, band FROM credit_score_latest WHERE chain_id = 137 AND wallet = $1",
    )
    .bind(&peer)
    .fetch_one(&pool)
    .await
    .expect("peer score");
    let asset: String = sqlx::query_scalar(
        "SELECT symbol FROM lending_event WHERE chain_id = 137 AND wallet = $1 ORDER BY action LIMIT 1",
    )
    .bind(&peer)
    .fetch_one(&pool)
    .await
    .expect("an asset of the wallet");
    let request = |wallet: &str, asset: &str| {
        format!(
            r#"mutation {{ requestCredit(chainId: 137, address: "{wallet}", amountUsd: "1000", collateralAsset: "{asset}") {{
                id outcome requiredCollateralRatio requiredCollateralUsd reason policyVersion score band
                collateralUsd collateralDailyVolatility trigger }} }}"#
        )
    };
    // Amounts that are not plain decimals are refused with the reason, whatever their size, and
    // decide nothing.
    let decisions_before: i64 = sqlx::query_scalar("SELECT count(*) FROM credit_decision")
        .fetch_one(&pool)
        .await
        .expect("count");
    for amount in [
        "-5",
        "1e400",
        "0",
        "1.2.3",
        &"9".repeat(100_000),
        "1000000000000.01",
    ] {
        let query = request(&peer, &asset).replace("\"1000\"", &format!("\"{amount}\""));
        let response = serde_json::to_value(lender.execute(as_lender(query)).await).expect("json");
        assert_eq!(
            response["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
            "{amount:.20}: {response:.300}"
        );
        let message = response["errors"][0]["message"]
            .as_str()
            .unwrap_or_default();
        assert!(message.contains("amountUsd"), "{message:.200}");
        assert!(message.len() < 300, "a bounded message: {message:.300}");
    }
    let decisions_after: i64 = sqlx::query_scalar("SELECT count(*) FROM credit_decision")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(decisions_before, decisions_after);
    let response = serde_json::to_value(lender.execute(as_lender(request(&peer, &asset))).await)
        .expect("json");
    let decision = &response["data"]["requestCredit"];
    assert_eq!(decision["score"], peer_score, "{response}");
    assert_eq!(decision["band"], peer_band);
    assert_eq!(decision["policyVersion"], policy.version.as_str());
    assert_eq!(decision["trigger"], "REQUEST");
    let outcome = decision["outcome"].as_str().expect("outcome");
    if peer_score < policy.min_score {
        assert_eq!(outcome, "REJECT", "{decision}");
    } else {
        assert_ne!(outcome, "REJECT", "{decision}");
        // The ratio is the tier's, reduced for the asset's volatility.
        let decimal = |field: &str| -> bigdecimal::BigDecimal {
            decision[field]
                .as_str()
                .unwrap_or_else(|| panic!("{field} is a decimal string: {decision}"))
                .parse()
                .expect("decimal")
        };
        let ratio = decimal("requiredCollateralRatio");
        assert!(ratio > 1, "{decision}");
        // Whole basis points, and the required USD is 1000 × the ratio exactly.
        assert!((&ratio * bigdecimal::BigDecimal::from(10_000)).is_integer());
        assert_eq!(
            decimal("requiredCollateralUsd"),
            bigdecimal::BigDecimal::from(1000) * ratio
        );
    }
    let request_id = decision["id"].as_str().expect("id").to_owned();
    let stored: (String, String, String) = sqlx::query_as(
        "SELECT outcome, trigger, policy_version FROM credit_decision WHERE id = $1",
    )
    .bind(&request_id)
    .fetch_one(&pool)
    .await
    .expect("decision stored");
    assert_eq!((stored.0.as_str(), stored.1.as_str()), (outcome, "REQUEST"));
    let listed = serde_json::to_value(
        lender
            .execute(
                format!(
                    r#"{{ wallet(chainId: 137, address: "{peer}") {{ decisions {{ id outcome txHash }} }} }}"#
                )
                .as_str(),
            )
            .await,
    )
    .expect("json");
    assert_eq!(
        listed["data"]["wallet"]["decisions"][0]["id"], request_id,
        "{listed}"
    );
    for (wallet, asset, expected) in [
        (
            "0x00000000000000000000000000000000000000a1",
            asset.as_str(),
            "no credit score",
        ),
        (peer.as_str(), "NOPE", "not a reserve"),
    ] {
        let refused = serde_json::to_value(lender.execute(as_lender(request(wallet, asset))).await)
            .expect("json");
        assert_eq!(
            refused["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
            "{refused}"
        );
        assert!(
            refused["errors"][0]["message"]
                .as_str()
                .expect("message")
                .contains(expected),
            "{refused}"
        );
    }

    // Attestations: a valid one (signed by an allowed issuer) moves the score while it is
    // valid; once expired (a later attestation triggers a rescore) the score is back; a
    // malformed, an unsigned, a forged and a stranger's one are dead-lettered with the reason
    // and counted, not stored.
    let (s0, t0): (i32, chrono::DateTime<chrono::Utc>) = sqlx::query_as(
        "SELECT score, computed_at FROM credit_score_latest WHERE chain_id = 137 AND wallet = $1",
    )
    .bind(&peer)
    .fetch_one(&pool)
    .await
    .expect("peer score");
    // EIP-712 signs whole seconds.
    let t0 = chrono::DateTime::from_timestamp(t0.timestamp(), 0).expect("time");
    let unsigned =
        |kind: &str, value: f64, from_h: i64, to_h: i64| chainfold_domain::credit::Attestation {
            schema_version: chainfold_domain::SCHEMA_VERSION,
            chain_id: 137,
            wallet: peer.parse().expect("address"),
            kind: kind.into(),
            value,
            issuer: format!(
                "{:#x}",
                alloy_primitives::Address::from_private_key(&issuer_key())
            ),
            issued_at: t0 + chrono::Duration::hours(from_h),
            expires_at: t0 + chrono::Duration::hours(to_h),
            signature: None,
        };
    let attestation = |kind: &str, value: f64, from_h: i64, to_h: i64| {
        unsigned(kind, value, from_h, to_h)
            .signed_by(&issuer_key())
            .expect("signs")
    };
    let kyc = attestation("kyc", 1.0, 1, 24);
    let later = attestation("bureau", 0.0, 48, 72);
    let stranger = unsigned("kyc", 1.0, 2, 24)
        .signed_by(&k256::ecdsa::SigningKey::from_slice(&[0x07; 32]).expect("key"))
        .expect("signs");
    let forged = chainfold_domain::credit::Attestation {
        value: -1.0,
        ..attestation("kyc", 1.0, 3, 24)
    };
    let topic = format!(
        "{}{}",
        iso.kafka.topic_prefix,
        chainfold_domain::topics::ATTESTATIONS
    );
    for payload in [
        serde_json::to_vec(&kyc).expect("json"),
        serde_json::to_vec(&attestation("kyc", 5.0, 1, 24)).expect("json"),
        serde_json::to_vec(&unsigned("kyc", 1.0, 4, 24)).expect("json"),
        serde_json::to_vec(&stranger).expect("json"),
        serde_json::to_vec(&forged).expect("json"),
        serde_json::to_vec(&later).expect("json"),
    ] {
        producer
            .send(
                rdkafka::producer::FutureRecord::to(&topic)
                    .key(peer.as_str())
                    .payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .expect("publish attestation");
    }
    let outcome = again
        .run_until_idle(Duration::from_secs(5))
        .await
        .expect("scores attestations");
    assert_eq!(outcome.attestations_malformed, 4, "{outcome:?}");
    assert!(outcome.attestations_expired >= 1, "{outcome:?}");
    let mut reasons: Vec<String> =
        chainfold_testkit::read_dead_letters(&iso.kafka, &topic, 4, Duration::from_secs(20))
            .into_iter()
            .map(|(reason, _)| reason)
            .collect();
    reasons.sort();
    assert_eq!(reasons.len(), 4, "{reasons:?}");
    for expected in [
        "not on the allow-list",
        "does not recover to the issuer",
        "unsigned attestation",
        "value must be in [-1, 1]",
    ] {
        assert!(
            reasons.iter().any(|r| r.contains(expected)),
            "no dead letter saying {expected:?}: {reasons:?}"
        );
    }
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM attestation WHERE wallet = $1")
        .bind(&peer)
        .fetch_one(&pool)
        .await
        .expect("attestations");
    assert_eq!(
        stored, 2,
        "only the two signed by the allowed issuer are stored"
    );
    let score_of = |id: String| {
        let pool = pool.clone();
        async move {
            sqlx::query_as::<_, (i32, serde_json::Value)>(
                "SELECT score, reasons FROM credit_score WHERE event_id = $1",
            )
            .bind(id)
            .fetch_one(&pool)
            .await
            .expect("score row")
        }
    };
    let (with_kyc, reasons) = score_of(kyc.id().to_string()).await;
    assert!(
        (with_kyc - s0 - 50).abs() <= 1,
        "{s0} -> {with_kyc}: {reasons}"
    );
    assert!(reasons
        .as_array()
        .expect("reasons")
        .iter()
        .any(|r| r["code"] == "ATTESTATION" && r["impact"] == 50.0));
    let (after_expiry, _) = score_of(later.id().to_string()).await;
    assert!((after_expiry - s0).abs() <= 1, "{s0} -> {after_expiry}");

    // Band change: two attestations worth ±100 together take the score out of its band (up,
    // unless it is Excellent); the scorer decides the wallet's last request again and pushes it.
    let sign = if after_expiry >= 750 { -1.0 } else { 1.0 };
    let pushes = [
        attestation("bureau", sign, 100, 200),
        attestation("bureau", sign, 101, 200),
    ];
    for a in &pushes {
        producer
            .send(
                rdkafka::producer::FutureRecord::to(&topic)
                    .key(peer.as_str())
                    .payload(&serde_json::to_vec(a).expect("json")),
                Duration::from_secs(10),
            )
            .await
            .expect("publish attestation");
    }
    let outcome = again
        .run_until_idle(Duration::from_secs(5))
        .await
        .expect("scores attestations");
    assert!(outcome.decisions >= 1, "{outcome:?}");
    let (moved, _) = score_of(pushes[1].id().to_string()).await;
    assert!(
        (moved - after_expiry - 100 * sign as i32).abs() <= 2,
        "{after_expiry} -> {moved}"
    );
    let pushed: Vec<(String, i32, String)> = sqlx::query_as(
        "SELECT request_id, score, band FROM credit_decision WHERE trigger = 'BAND_CHANGE' ORDER BY seq",
    )
    .fetch_all(&pool)
    .await
    .expect("band-change decisions");
    assert!(!pushed.is_empty());
    assert!(pushed.iter().all(|p| p.0 == request_id));
    assert_ne!(pushed[0].2, peer_band, "decided with the new band");
    assert_eq!(pushed.last().expect("last").1, moved);
    // On the decisions topic: the request and every push, as decision records.
    let records = chainfold_testkit::read_topic(
        &iso.kafka,
        &decisions_topic,
        1 + pushed.len(),
        Duration::from_secs(20),
    );
    assert_eq!(records.len(), 1 + pushed.len());
    let parsed: Vec<chainfold_domain::decision::DecisionRecord> = records
        .iter()
        .map(|r| serde_json::from_slice(r).expect("a decision record"))
        .collect();
    assert!(parsed.iter().any(|r| r.id == request_id));
    assert_eq!(
        parsed
            .iter()
            .filter(|r| r.trigger == chainfold_domain::decision::Trigger::BandChange)
            .count(),
        pushed.len()
    );
}

/// A stored profile that is no longer a prefix of the wallet's history is not resumed: one whose
/// cursor row moved to another block hash (what a reorg does), or one stored before a row arrived
/// behind its cursor (the wallet's `lending_order` mark has moved on). Each is paired here with a
/// profile that forgets the wallet's liquidations; the next score must still carry them.
#[tokio::test]
async fn a_profile_that_is_not_a_prefix_of_the_history_is_read_again() {
    let iso = Isolated::new("scoring_profiles").await;
    let (events, mut projector, mut scorer) = polygon_scored(&iso).await;
    let pool = scorer.pool().clone();
    let (liquidations, rows): (serde_json::Value, i64) = sqlx::query_as(
        "SELECT state->'activity'->'liquidations', rows_folded FROM credit_profile
         WHERE chain_id = 137 AND wallet = $1",
    )
    .bind(LIQUIDATED)
    .fetch_one(&pool)
    .await
    .expect("the liquidated wallet's profile is stored");
    assert_eq!(liquidations, 3, "the profile holds the three liquidations");
    let stored: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM lending_event WHERE chain_id = 137 AND wallet = $1",
    )
    .bind(LIQUIDATED)
    .fetch_one(&pool)
    .await
    .expect("count");
    assert_eq!(rows, stored, "the profile has folded the whole history");

    let template = events
        .iter()
        .rev()
        .find(|e| {
            matches!(&e.event, chainfold_domain::DefiEvent::Deposit(f)
                if format!("{:#x}", f.wallet) == LIQUIDATED)
        })
        .expect("a deposit of the liquidated wallet")
        .clone();
    let last = events
        .iter()
        .filter_map(|e| e.block_time)
        .max()
        .expect("times");
    for (i, tamper) in [
        // A reorg moved the cursor's row to another block.
        "UPDATE credit_profile SET cursor_block_hash = '0xdead',
                state = jsonb_set(jsonb_set(state::jsonb, '{activity,liquidations}', '0'),
                                  '{activity,last_liquidation}', 'null')::json
         WHERE chain_id = 137 AND wallet = $1",
        // A row arrived behind the cursor (a deposit a day before the wallet's first), written
        // to the log as the projector writes it.
        "WITH forgot AS (
             UPDATE credit_profile
             SET state = jsonb_set(jsonb_set(state::jsonb, '{activity,liquidations}', '0'),
                                   '{activity,last_liquidation}', 'null')::json
             WHERE chain_id = 137 AND wallet = $1 RETURNING 1)
         INSERT INTO lending_event (event_id, chain_id, wallet, action, protocol, reserve, symbol,
             decimals, amount, block_number, block_time, kafka_topic, kafka_partition, kafka_offset)
         SELECT 'late-deposit', chain_id, wallet, action, protocol, reserve, symbol, decimals,
                amount, block_number, block_time - interval '1 day', kafka_topic, kafka_partition,
                kafka_offset
         FROM lending_event WHERE chain_id = 137 AND wallet = $1 AND action = 'deposit'
           AND (SELECT count(*) FROM forgot) = 1
         ORDER BY block_time LIMIT 1",
    ]
    .into_iter()
    .enumerate()
    {
        sqlx::query(tamper)
            .bind(LIQUIDATED)
            .execute(&pool)
            .await
            .expect("tamper");
        let mut env = template.clone();
        env.event_id = chainfold_domain::EventId::of_record(137, "profile-tamper", &i.to_string());
        env.block_time = Some(last + chrono::Duration::days(1 + i as i64));
        let id = env.event_id.to_string();
        publish_and_project(&iso, &mut projector, [Ok(env)]).await;
        let outcome = scorer
            .run_until_idle(Duration::from_secs(3))
            .await
            .expect("scores");
        assert_eq!(
            (outcome.scored, outcome.full_reads, outcome.profiles_resumed),
            (1, 1, 0),
            "tamper {i}: {outcome:?}"
        );
        let reasons: serde_json::Value =
            sqlx::query_scalar("SELECT reasons FROM credit_score WHERE event_id = $1")
                .bind(&id)
                .fetch_one(&pool)
                .await
                .expect("scored");
        assert_eq!(
            reasons[0]["code"], "LIQUIDATION_HISTORY",
            "tamper {i}: {reasons}"
        );
        let healed: serde_json::Value = sqlx::query_scalar(
            "SELECT state->'activity'->'liquidations' FROM credit_profile
             WHERE chain_id = 137 AND wallet = $1",
        )
        .bind(LIQUIDATED)
        .fetch_one(&pool)
        .await
        .expect("profile");
        assert_eq!(healed, 3, "tamper {i}: the stored profile is rebuilt");
    }

    // An untouched profile is resumed: one more event reads one history row.
    let mut env = template.clone();
    env.event_id = chainfold_domain::EventId::of_record(137, "profile-tamper", "resume");
    env.block_time = Some(last + chrono::Duration::days(10));
    publish_and_project(&iso, &mut projector, [Ok(env)]).await;
    let outcome = scorer
        .run_until_idle(Duration::from_secs(3))
        .await
        .expect("scores");
    assert_eq!(
        (
            outcome.scored,
            outcome.profiles_resumed,
            outcome.history_rows_read
        ),
        (1, 1, 1),
        "{outcome:?}"
    );

    // A batch computed beside a write in flight starts from that write's profiles, under the
    // same checks: loaded with a fresher profile that forgets the liquidations, the wallet
    // resumes from it while its cursor row is in the log as it was, and is read from the start
    // once that cursor's block hash is not the log's (a reorg since).
    use chainfold_scoring::profiles;
    let key = (137u64, LIQUIDATED.to_owned());
    let until = [last + chrono::Duration::days(30)];
    let mut stored: serde_json::Value =
        sqlx::query_scalar("SELECT state FROM credit_profile WHERE chain_id = 137 AND wallet = $1")
            .bind(LIQUIDATED)
            .fetch_one(&pool)
            .await
            .expect("profile");
    let (rows, event_id, hash, at, block, log, mark): (i64, String, Option<String>, chrono::DateTime<chrono::Utc>, i64, i64, Option<i64>) =
        sqlx::query_as(
            "SELECT rows_folded, cursor_event_id, cursor_block_hash, cursor_time, cursor_block, cursor_log,
                    order_mark
             FROM credit_profile WHERE chain_id = 137 AND wallet = $1",
        )
        .bind(LIQUIDATED)
        .fetch_one(&pool)
        .await
        .expect("cursor");
    stored["activity"]["liquidations"] = 0.into();
    stored["activity"]["last_liquidation"] = serde_json::Value::Null;
    let mut fresher: chainfold_domain::profile::CreditProfile =
        serde_json::from_value(stored).expect("a profile");
    fresher.rows = rows as u64;
    fresher.cursor = Some(chainfold_domain::profile::HistoryKey {
        at,
        block,
        log_index: log,
        event_id,
    });
    fresher.cursor_block_hash = hash.clone();
    fresher.order_mark = mark;
    let liquidations = |p: &chainfold_domain::profile::CreditProfile| {
        serde_json::to_value(p).expect("a profile")["activity"]["liquidations"].clone()
    };
    let load = |fresher: chainfold_domain::profile::CreditProfile| {
        let pool = pool.clone();
        let key = key.clone();
        async move {
            profiles::load(
                &pool,
                std::slice::from_ref(&key),
                &until,
                &Default::default(),
                &[(key.clone(), fresher)].into_iter().collect(),
            )
            .await
            .expect("load")
        }
    };
    let (loaded, stats) = load(fresher.clone()).await;
    assert_eq!((stats.resumed, stats.full_reads), (1, 0), "{stats:?}");
    assert_eq!(
        liquidations(&loaded[&key].profile),
        0,
        "the fresher profile"
    );
    let mut moved = fresher.clone();
    moved.cursor_block_hash = Some("0xdead".to_owned());
    let (loaded, stats) = load(moved).await;
    assert_eq!((stats.resumed, stats.full_reads), (1, 0), "{stats:?}");
    assert_eq!(
        liquidations(&loaded[&key].profile),
        3,
        "a fresher profile whose cursor moved gives way to the stored one"
    );
    // Read under a mark the wallet no longer has (a row arrived behind it since): the history
    // is read from the start.
    fresher.order_mark = mark.map(|m| m - 1);
    let (loaded, stats) = load(fresher).await;
    assert_eq!((stats.resumed, stats.full_reads), (0, 1), "{stats:?}");
    let timed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM lending_event
         WHERE chain_id = 137 AND wallet = $1 AND block_time IS NOT NULL",
    )
    .bind(LIQUIDATED)
    .fetch_one(&pool)
    .await
    .expect("count");
    assert!(loaded[&key].profile.cursor.is_none(), "an empty profile");
    assert_eq!(loaded[&key].rows.len() as i64, timed, "the whole history");
}

/// A lending event that arrives late through the log (a block older than any the wallet's stored
/// profile has folded) is in the wallet's next score. The projector's insert draws a new mark for
/// the wallet, so the scorer reads its history again rather than resuming, and both scores equal
/// the ones a backtest folds from the start. Here a never-liquidated wallet is liquidated a day
/// before its first event, and then deposits once more.
#[tokio::test]
async fn a_late_event_through_the_log_is_in_the_next_score_as_a_backtest_folds_it() {
    use chainfold_domain::{DefiEvent, EventId};
    let iso = Isolated::new("scoring_late").await;
    let (events, mut projector, mut scorer) = polygon_scored(&iso).await;
    let pool = scorer.pool().clone();
    let (wallet, first): (String, chrono::DateTime<chrono::Utc>) = sqlx::query_as(
        "SELECT p.wallet, (SELECT min(block_time) FROM lending_event e
                           WHERE e.chain_id = 137 AND e.wallet = p.wallet)
         FROM credit_profile p
         WHERE p.chain_id = 137 AND NOT EXISTS (
             SELECT 1 FROM lending_event e
             WHERE e.chain_id = 137 AND e.wallet = p.wallet AND e.action = 'liquidation')
           AND EXISTS (
             SELECT 1 FROM lending_event e
             WHERE e.chain_id = 137 AND e.wallet = p.wallet AND e.action = 'deposit')
         ORDER BY p.rows_folded DESC, p.wallet LIMIT 1",
    )
    .fetch_one(&pool)
    .await
    .expect("a never-liquidated wallet with a stored profile");
    let last = events
        .iter()
        .filter_map(|e| e.block_time)
        .max()
        .expect("times");
    let mut late = events
        .iter()
        .find(|e| {
            matches!(&e.event, DefiEvent::Liquidation(l) if format!("{:#x}", l.wallet) == LIQUIDATED)
        })
        .expect("a liquidation")
        .clone();
    if let DefiEvent::Liquidation(l) = &mut late.event {
        l.wallet = wallet.parse().expect("an address");
    }
    late.event_id = EventId::of_record(137, "late-arrival", "liquidation");
    late.block_time = Some(first - chrono::Duration::days(1));
    let mut next = events
        .iter()
        .rev()
        .find(|e| matches!(&e.event, DefiEvent::Deposit(f) if format!("{:#x}", f.wallet) == wallet))
        .expect("a deposit of the wallet")
        .clone();
    next.event_id = EventId::of_record(137, "late-arrival", "next");
    next.block_time = Some(last + chrono::Duration::days(1));
    let ids = [late.event_id.to_string(), next.event_id.to_string()];
    publish_and_project(&iso, &mut projector, [Ok(late), Ok(next)]).await;
    let outcome = scorer
        .run_until_idle(Duration::from_secs(3))
        .await
        .expect("scores");
    // The wallet's history is read from the start (the stored profile is not resumed).
    assert!(
        outcome.scored == 2 && outcome.full_reads >= 1,
        "{outcome:?}"
    );
    let reasons: serde_json::Value =
        sqlx::query_scalar("SELECT reasons FROM credit_score WHERE event_id = $1")
            .bind(&ids[1])
            .fetch_one(&pool)
            .await
            .expect("the next event is scored");
    assert!(
        reasons
            .as_array()
            .expect("reasons")
            .iter()
            .any(|r| r["code"] == "LIQUIDATION_HISTORY"),
        "the late liquidation is in the next score: {reasons}"
    );
    let run = backtest_all_time(&iso, "late").await;
    let same: Vec<(String, bool)> = sqlx::query_as(
        "SELECT c.event_id, b.score = c.score AND b.reasons = c.reasons::jsonb
                AND b.probability_of_liquidation IS NOT DISTINCT FROM c.probability_of_liquidation
         FROM credit_score c JOIN backtest_score b USING (chain_id, wallet, event_id)
         WHERE b.run_id = $1 AND c.event_id = ANY($2) ORDER BY 1",
    )
    .bind(&run.run_id)
    .bind(&ids[..])
    .fetch_all(&pool)
    .await
    .expect("compare");
    assert_eq!(same.len(), 2, "{same:?}");
    assert!(
        same.iter().all(|(_, s)| *s),
        "live against the backtest: {same:?}"
    );
}

/// In the worker loop a batch's write runs beside the next batch, and its publishing starts
/// at its commit: the scores of a committed batch reach the scores topic without another step
/// of the loop (on a quiet log the next step would wait in its receive).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committed_batch_is_published_without_waiting_for_the_next_step() {
    use chainfold_platform::worker::BatchWorker;
    let iso = Isolated::new("scoring_publish").await;
    let items = Dataset::Polygon.decode_dir(&data_dir()).expect("data");
    publish_and_project(&iso, &mut None, items).await;
    let mut scorer = Scorer::build(config(&iso, &unique("scorer")))
        .await
        .expect("scorer");
    // One step that received a batch: it computed it and left its write in flight.
    let mut received = 0;
    for _ in 0..5 {
        received = BatchWorker::process_batch(&mut scorer, Duration::from_secs(30))
            .await
            .expect("step")
            .received;
        if received > 0 {
            break;
        }
    }
    assert!(received > 0, "the scorer received a batch");
    let pool = scorer.pool().clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let stored = loop {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM credit_score")
            .fetch_one(&pool)
            .await
            .expect("count");
        if n > 0 {
            break n as usize;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the write in flight did not commit"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let kafka = iso.kafka.clone();
    let topic = format!(
        "{}{}",
        iso.kafka.topic_prefix,
        chainfold_domain::topics::SCORES
    );
    let records = tokio::task::spawn_blocking(move || {
        chainfold_testkit::read_topic(&kafka, &topic, stored, Duration::from_secs(30))
    })
    .await
    .expect("reader");
    assert_eq!(
        records.len(),
        stored,
        "every score of the committed batch is on the topic, with no further step"
    );
    for r in &records {
        let message: serde_json::Value = serde_json::from_slice(r).expect("JSON");
        assert!(message["outputId"]
            .as_str()
            .is_some_and(|id| id.starts_with("score:")));
    }
    // The loop's next step finishes the write it left in flight.
    let outcome = BatchWorker::drain(&mut scorer).await.expect("drain");
    assert_eq!(outcome.scored as usize, stored, "{outcome:?}");
}

/// A committed batch whose publishing failed (Postgres or the broker went away while it
/// relayed) leaves its records in the outbox. On a quiet stream no later batch commits to take
/// them along: the scorer relays them when it next finds nothing to score.
#[tokio::test]
async fn records_a_failed_publishing_left_in_the_outbox_are_relayed_when_the_scorer_idles() {
    let iso = Isolated::new("score_idle_relay").await;
    let topics = iso.kafka.topics();
    chainfold_platform::kafka::ensure_topics(&iso.kafka, &topics.all())
        .await
        .expect("topics");
    let group = unique("idle-relay");
    let mut scorer = Scorer::build(config(&iso, &group)).await.expect("scorer");
    let pool = scorer.pool().clone();
    // Left behind after the scorer started (it relays what is pending when it starts).
    let scores_topic = format!(
        "{}{}",
        iso.kafka.topic_prefix,
        chainfold_domain::topics::SCORES
    );
    let output_id = unique("score:left-behind");
    let payload = format!(r#"{{"outputId":"{output_id}"}}"#);
    let output = chainfold_platform::outbox::Output {
        topic: scores_topic.clone(),
        key: "0x00000000000000000000000000000000000000aa".into(),
        output_id,
        payload: chainfold_platform::outbox::Payload::Text(payload.clone().into()),
    };
    chainfold_testkit::outbox::left_behind_goes_when_idle(&pool, output, async || {
        let step = scorer.process_batch(Duration::from_millis(300)).await;
        step.expect("an idle step").received
    })
    .await;

    // And the record is on the scores topic.
    let read = chainfold_testkit::read_topic(&iso.kafka, &scores_topic, 1, Duration::from_secs(30));
    assert_eq!(
        read,
        vec![payload.into_bytes()],
        "the left-behind record reached {scores_topic}"
    );
}

/// The lending price points a scorer keeps from one batch to the next give the scores a whole
/// read gives, and a change to points it holds (here an update, as a retraction's delete or a
/// rebuild would be) makes it read them again.
#[tokio::test]
async fn kept_price_points_score_as_a_whole_read_and_a_change_to_them_is_seen() {
    let iso = Isolated::new("scoring_kept_prices").await;
    // The recorded histories carry no block numbers (the source gives the timestamp there), and
    // only points of sealed blocks are kept: each event gets a block that moves with its time.
    let mut events: Vec<chainfold_domain::Envelope> = Dataset::Polygon
        .decode_dir(&data_dir())
        .expect("data")
        .into_iter()
        .flatten()
        .collect();
    events.sort_by_key(|e| e.block_time);
    for (i, e) in events.iter_mut().enumerate() {
        e.block = Some(chainfold_domain::BlockRef {
            number: 40_000_000 + i as u64,
            hash: Some(alloy_primitives::B256::left_padding_from(
                &(i as u64 + 1).to_be_bytes(),
            )),
        });
    }
    let published = publish_and_project(&iso, &mut None, events.into_iter().map(Ok)).await;
    let mut small = config(&iso, &unique("scorer-kept"));
    small.batch_size = 150;
    let mut scorer = Scorer::build(small).await.expect("scorer");
    let pool = scorer.pool().clone();
    // Batches until one took points an earlier one kept.
    let mut before = chainfold_scoring::worker::Outcome::default();
    while before.price_points_kept == 0 {
        let o = scorer
            .process_batch(Duration::from_secs(20))
            .await
            .expect("batch");
        assert!(o.received > 0, "the log ended before any points were kept");
        before.scored += o.scored;
        before.price_points_kept += o.price_points_kept;
    }
    // Every price point the scorer may hold moves, by block.
    let changed = sqlx::query(
        "UPDATE lending_event SET price_usd = price_usd * (1 + (block_number % 7) * 0.03)
         WHERE price_usd IS NOT NULL",
    )
    .execute(&pool)
    .await
    .expect("prices move")
    .rows_affected();
    assert!(changed > 100, "{changed}");
    let (changed_at,): (i64,) = sqlx::query_as("SELECT max(id) FROM credit_score")
        .fetch_one(&pool)
        .await
        .expect("last id");
    let after = scorer
        .run_until_idle(Duration::from_secs(5))
        .await
        .expect("the rest");
    assert_eq!(before.scored + after.scored, published.lending);
    assert!(after.price_points_kept > 0, "{after:?}");

    // A backtest reads every window whole, from the prices as they now are.
    let run = backtest_all_time(&iso, "whole reads").await;
    let compare = |newer: bool| {
        let (pool, run_id) = (pool.clone(), run.run_id.clone());
        async move {
            sqlx::query_as::<_, (i64, i64)>(
                "SELECT count(*) FILTER (WHERE b.score <> c.score OR b.reasons <> c.reasons::jsonb
                        OR b.probability_of_liquidation IS DISTINCT FROM c.probability_of_liquidation),
                        count(*) FILTER (WHERE c.probability_of_liquidation IS NOT NULL)
                 FROM backtest_score b JOIN credit_score c USING (chain_id, wallet, event_id)
                 WHERE b.run_id = $1 AND (c.id > $2) = $3",
            )
            .bind(run_id)
            .bind(changed_at)
            .bind(newer)
            .fetch_one(&pool)
            .await
            .expect("compare")
        }
    };
    // The scores before the change saw the old prices: the change shows in them …
    let (differ_before, priced_before) = compare(false).await;
    assert!(
        differ_before > 0 && priced_before > 0,
        "{differ_before} of the scores before the change differ ({priced_before} priced)"
    );
    // … and every score after it is what a whole read gives.
    let (differ_after, priced_after) = compare(true).await;
    assert!(priced_after > 0, "{priced_after}");
    assert_eq!(
        differ_after, 0,
        "scores after the change that a whole read does not give"
    );
}

/// The scores topic gets a score's record from the scorer's memory right after the commit; a
/// relay that takes the batch's outbox row instead (a crash after the commit, a failed relay)
/// renders the record again from its `credit_score` row, since the row names its records
/// rather than holding them. Both must be the same bytes, for every score of the Polygon data.
#[tokio::test]
async fn a_score_record_rebuilt_from_its_row_is_the_record_sent_at_the_commit() {
    let iso = Isolated::new("scoring_rebuilt_records").await;
    let items = Dataset::Polygon.decode_dir(&data_dir()).expect("data");
    publish_and_project(&iso, &mut None, items).await;
    let mut scorer = Scorer::build(config(&iso, &unique("scorer")))
        .await
        .expect("scorer");
    let scored = scorer
        .run_until_idle(Duration::from_secs(5))
        .await
        .expect("scores")
        .scored as usize;
    assert!(scored > 1_000, "{scored}");
    let pool = scorer.pool().clone();
    let outbox_payload_bytes: i64 =
        sqlx::query_scalar("SELECT coalesce(sum(pg_column_size(payloads)), 0)::int8 FROM outbox")
            .fetch_one(&pool)
            .await
            .expect("outbox");
    assert_eq!(outbox_payload_bytes, 0, "every batch was relayed");
    let prefix = iso.kafka.topic_prefix.clone();
    let sent_topic = format!("{prefix}{}", chainfold_domain::topics::SCORES);
    let kafka = iso.kafka.clone();
    let sent = tokio::task::spawn_blocking(move || {
        chainfold_testkit::read_topic(&kafka, &sent_topic, scored, Duration::from_secs(60))
    })
    .await
    .expect("reader");
    assert_eq!(sent.len(), scored, "each score sent once");
    let by_id = |records: Vec<Vec<u8>>| -> std::collections::BTreeMap<String, String> {
        records
            .into_iter()
            .map(|r| {
                let text = String::from_utf8(r).expect("UTF-8");
                let value: serde_json::Value = serde_json::from_str(&text).expect("JSON");
                (
                    value["outputId"].as_str().expect("outputId").to_owned(),
                    text,
                )
            })
            .collect()
    };
    let sent = by_id(sent);
    assert_eq!(sent.len(), scored, "no output id twice");

    // An outbox row naming every score as the scorer queues them, no relay holding it: the
    // relay must rebuild each record from its row.
    let rebuilt_topic = format!("{prefix}rebuilt-scores");
    chainfold_platform::kafka::ensure_topics(&iso.kafka, std::slice::from_ref(&rebuilt_topic))
        .await
        .expect("topic");
    let outputs: Vec<chainfold_platform::outbox::Output> = sent
        .keys()
        .map(|id| chainfold_platform::outbox::Output {
            topic: rebuilt_topic.clone(),
            key: id.split(':').nth(2).expect("wallet").to_owned(),
            output_id: id.clone(),
            payload: chainfold_platform::outbox::Payload::Sourced {
                text: "not what the relay sends".into(),
                source: chainfold_scoring::worker::SCORE_RECORDS,
            },
        })
        .collect();
    let mut tx = pool.begin().await.expect("begin");
    chainfold_platform::outbox::enqueue(&mut tx, &outputs)
        .await
        .expect("enqueue");
    tx.commit().await.expect("commit");
    let producer = chainfold_platform::kafka::producer(&iso.kafka).expect("producer");
    let relayed = chainfold_platform::outbox::relay_with(
        &pool,
        &producer,
        std::slice::from_ref(&rebuilt_topic),
        1_000,
        &chainfold_platform::outbox::Held::default(),
        &chainfold_scoring::worker::sources(),
    )
    .await
    .expect("relay");
    assert_eq!(relayed as usize, scored);
    let kafka = iso.kafka.clone();
    let rebuilt = tokio::task::spawn_blocking(move || {
        chainfold_testkit::read_topic(&kafka, &rebuilt_topic, scored, Duration::from_secs(60))
    })
    .await
    .expect("reader");
    let rebuilt = by_id(rebuilt);
    let differ: Vec<(&String, &String)> = sent
        .iter()
        .filter(|(id, text)| rebuilt.get(*id) != Some(*text))
        .take(3)
        .collect();
    assert!(
        differ.is_empty(),
        "{} of {scored} records rebuilt differently, e.g. {differ:?} became {:?}",
        sent.iter()
            .filter(|(id, text)| rebuilt.get(*id) != Some(*text))
            .count(),
        differ
            .iter()
            .map(|(id, _)| rebuilt.get(*id))
            .collect::<Vec<_>>()
    );
    assert_eq!(rebuilt.len(), scored);
}

/// The tables the scorer reads can be emptied and filled again while its connections live
/// (`chainfold rebuild`, the benchmarks' fresh groups). Postgres may keep one generic plan for a
/// prepared statement after five runs, and one made over an empty table sorts the whole table
/// to find each wallet's latest score (5.7 s for 1,000 wallets over 100,000 scores, measured),
/// so the scorer's connections plan each statement for the table as it is. Here the bands
/// statement (`store::scores::latest_bands`) is prepared on one of the scorer's connections,
/// run eight times over an empty, analyzed `credit_score`, and after 20,000 scores are stored
/// its next plan must read the wallet index.
#[tokio::test]
async fn a_statement_planned_over_an_empty_table_is_planned_again_once_it_fills() {
    let iso = Isolated::new("scoring_replanning").await;
    // The pool `Scorer::build` connects with.
    let pool = chainfold_platform::postgres::connect_replanning(&iso.postgres)
        .await
        .expect("pool");
    let mut conn = pool.acquire().await.expect("a connection");
    let wallets: Vec<String> = (0..1_000).map(|i| format!("'0x{i:040x}'")).collect();
    let execute = format!(
        "EXECUTE latest_band(ARRAY[{}]::int8[], ARRAY[{}]::text[])",
        vec!["137"; wallets.len()].join(","),
        wallets.join(",")
    );
    sqlx::raw_sql(
        "TRUNCATE credit_score; ANALYZE credit_score;
         PREPARE latest_band(int8[], text[]) AS
         SELECT t.c, t.w, s.band
         FROM UNNEST($1::int8[], $2::text[]) AS t(c, w)
         CROSS JOIN LATERAL (SELECT band FROM credit_score
                             WHERE chain_id = t.c AND wallet = t.w
                             ORDER BY id DESC LIMIT 1) s",
    )
    .execute(&mut *conn)
    .await
    .expect("prepare");
    for _ in 0..8 {
        let found: Vec<(i64, String, String)> = sqlx::query_as(&execute)
            .fetch_all(&mut *conn)
            .await
            .expect("over the empty table");
        assert!(found.is_empty());
    }
    sqlx::raw_sql(
        "INSERT INTO credit_score (chain_id, wallet, score, band, reasons, model_version,
             model_sha256, computed_at, event_id, kafka_topic, kafka_partition, kafka_offset,
             projector_next_offset)
         SELECT 137, '0x' || lpad(to_hex(g % 1000), 40, '0'), 600, 'GOOD', '[]', 'v', 's',
                now(), 'e' || g, 't', 0, g, g
         FROM generate_series(1, 20000) g",
    )
    .execute(&mut *conn)
    .await
    .expect("scores");
    let plan: Vec<String> = sqlx::query_scalar(&format!("EXPLAIN (COSTS OFF) {execute}"))
        .fetch_all(&mut *conn)
        .await
        .expect("plan");
    let plan = plan.join("\n");
    assert!(
        plan.contains("credit_score_wallet_idx") && !plan.contains("Seq Scan on credit_score"),
        "{plan}"
    );
}

/// `platform::postgres::analyze_estimated_empty`, on the state Postgres itself leaves: a vacuum
/// that runs while a refill's first rows are still being written (as autovacuum did to a
/// truncated `credit_score` under the benchmark's first `COPY`) counts none of them, so once they
/// commit the table has pages and `reltuples` 0, and the planner costs it as empty until the
/// next autoanalyze. The check analyzes that table only: not one that is empty indeed (its rows
/// deleted and vacuumed), not one whose estimates are right, not one that does not exist.
#[tokio::test]
async fn a_table_estimated_empty_while_holding_rows_is_analyzed() {
    let iso = Isolated::new("scoring_estimates").await;
    let pool = chainfold_platform::postgres::connect_replanning(&iso.postgres)
        .await
        .expect("pool");
    sqlx::raw_sql(
        "CREATE TABLE refilled (x int) WITH (autovacuum_enabled = false);
         CREATE TABLE emptied (x int) WITH (autovacuum_enabled = false);
         CREATE TABLE counted (x int) WITH (autovacuum_enabled = false);
         INSERT INTO emptied SELECT generate_series(1, 1000);
         DELETE FROM emptied;
         INSERT INTO counted SELECT generate_series(1, 1000);
         ANALYZE counted;",
    )
    .execute(&pool)
    .await
    .expect("tables");
    sqlx::query("VACUUM emptied")
        .execute(&pool)
        .await
        .expect("vacuum");
    let mut refill = pool.begin().await.expect("a refill");
    sqlx::query("INSERT INTO refilled SELECT generate_series(1, 10000)")
        .execute(&mut *refill)
        .await
        .expect("rows");
    sqlx::query("VACUUM refilled")
        .execute(&pool)
        .await
        .expect("a vacuum beside the refill");
    refill.commit().await.expect("commit");
    let estimate = |table: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_as::<_, (i32, f32)>(
                "SELECT relpages, reltuples FROM pg_class WHERE oid = to_regclass($1)",
            )
            .bind(table)
            .fetch_one(&pool)
            .await
            .expect("estimate")
        }
    };
    let (pages, tuples) = estimate("refilled").await;
    assert!(pages > 0 && tuples == 0.0, "{pages} pages, {tuples} tuples");
    chainfold_testkit::wait_live_rows(&pool, "refilled").await;
    let tables = ["refilled", "emptied", "counted", "missing"];
    let analyzed = chainfold_platform::postgres::analyze_estimated_empty(&pool, &tables)
        .await
        .expect("check");
    assert_eq!(analyzed, vec!["refilled".to_owned()]);
    assert_eq!(estimate("refilled").await.1, 10_000.0);
    assert!(
        chainfold_platform::postgres::analyze_estimated_empty(&pool, &tables)
            .await
            .expect("again")
            .is_empty(),
        "once analyzed, the table is not listed again"
    );
}

/// The scorer runs that check on `credit_score` and `credit_profile` with its batches (at most
/// once a second), in the background. Here, after a first batch committed, `credit_score`'s
/// estimates are set to what such a vacuum leaves (pages, `reltuples` 0), with autovacuum off
/// for it so that only the scorer can correct them; the next batch must get the table analyzed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scorer_analyzes_its_table_when_it_is_estimated_empty_while_holding_rows() {
    use chainfold_platform::worker::BatchWorker;
    let iso = Isolated::new("scoring_estimated").await;
    let items = Dataset::Polygon.decode_dir(&data_dir()).expect("data");
    publish_and_project(&iso, &mut None, items).await;
    let mut scorer = Scorer::build(config(&iso, &unique("scorer")))
        .await
        .expect("scorer");
    let pool = scorer.pool().clone();
    sqlx::query("ALTER TABLE credit_score SET (autovacuum_enabled = false)")
        .execute(&pool)
        .await
        .expect("autovacuum off");
    let mut scored = 0;
    for _ in 0..5 {
        scored += BatchWorker::process_batch(&mut scorer, Duration::from_secs(30))
            .await
            .expect("step")
            .scored;
        scored += BatchWorker::drain(&mut scorer).await.expect("drain").scored;
        if scored > 0 {
            break;
        }
    }
    assert!(scored > 0, "a first batch committed");
    chainfold_testkit::wait_live_rows(&pool, "credit_score").await;
    chainfold_testkit::set_estimated_empty(&pool, "credit_score").await;
    // The check runs at most once per `ESTIMATES_EVERY`; the first batch ran one.
    tokio::time::sleep(chainfold_platform::postgres::ESTIMATES_EVERY).await;
    let outcome = BatchWorker::process_batch(&mut scorer, Duration::from_secs(30))
        .await
        .expect("the next batch");
    assert!(outcome.received > 0, "a second batch: {outcome:?}");
    BatchWorker::drain(&mut scorer).await.expect("drain");
    chainfold_testkit::wait_estimated_rows(
        &pool,
        "credit_score",
        scored as f32,
        &format!("{scored} stored before the batch"),
    )
    .await;
}
