//! Whole-pipeline tests: recorded data → ingest → Kafka (a real broker) → projector → Postgres
//! and Redis → GraphQL. Each test has its own topics, group, database and Redis keys, so they
//! run in parallel. Services come from `DATABASE_URL`, `REDIS_URL` and
//! `CHAINFOLD_KAFKA_BROKERS` (`scripts/stack up` starts them). Reproduce one with
//! `TEST_LOG=1 cargo nextest run -p chainfold-tests <name>`.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use bigdecimal::{BigDecimal, RoundingMode};
use chainfold_ingest::replay::Dataset;
use chainfold_projector::{App as Projector, Config as ProjectorConfig};
use chainfold_testkit::{data_dir, Isolated};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::FutureRecord;
use serde_json::Value;

const CONTRACT_WALLET_QUERY: &str = r#"query($address: String!) { wallet(chainId: 137, address: $address) {
    address
    lendingSummary { action count amountUsd }
    firstActivityAt lastActivityAt
    events(first: 10, after: null) { edges { cursor node { eventId action amountUsd blockTime } } pageInfo { hasNextPage endCursor } }
} }"#;

async fn replay(iso: &Isolated, dataset: Dataset) -> chainfold_ingest::publish::PublishSummary {
    let topics = iso.kafka.topics();
    chainfold_platform::kafka::ensure_topics(&iso.kafka, &topics.all())
        .await
        .expect("create topics");
    let producer = chainfold_platform::kafka::producer(&iso.kafka).expect("producer");
    let items = dataset
        .decode_dir(&data_dir())
        .expect("decode bundled data");
    chainfold_ingest::publish::publish_all(&producer, &topics, items, |_, _| {})
        .await
        .expect("publish")
}

fn projector_config(iso: &Isolated) -> ProjectorConfig {
    ProjectorConfig::new(
        iso.kafka.clone(),
        iso.postgres.clone(),
        iso.redis.clone(),
        iso.group.clone(),
    )
}

async fn project(iso: &Isolated) -> Projector {
    let mut app = Projector::build(projector_config(iso))
        .await
        .expect("projector starts");
    tokio::time::timeout(Duration::from_secs(120), app.run_until_caught_up())
        .await
        .expect("projector catches up within 2 minutes")
        .expect("projector runs");
    app
}

async fn query(schema: &chainfold_api::ChainfoldSchema, query: &str, variables: Value) -> Value {
    let request = async_graphql::Request::new(query)
        .variables(async_graphql::Variables::from_json(variables));
    let response = schema.execute(request).await;
    serde_json::to_value(&response).expect("response serialises")
}

fn cents(value: &BigDecimal) -> String {
    value
        .with_scale_round(2, RoundingMode::HalfEven)
        .to_string()
}

/// Per wallet and action: (count, USD), computed straight from the JSON file, independently of
/// the decoder: amount / 10^decimals × assetPriceUSD, or for a liquidation the principal
/// amount / 10^decimals(principal) × borrowAssetPriceUSD.
fn expected_polygon_summaries() -> BTreeMap<String, BTreeMap<String, (i64, BigDecimal)>> {
    let path =
        data_dir().join("aave-v2-polygon-wallet-txns/user-wallet-transactions.head1724.json.gz");
    let bytes = chainfold_ingest::replay::read_maybe_gzip(&path).expect("read bundled file");
    let records: Vec<Value> = serde_json::from_slice(&bytes).expect("a JSON array");
    assert_eq!(records.len(), 1724);
    let decimals = |symbol: &str| match symbol {
        "USDC" | "USDT" => 6,
        "WBTC" => 8,
        _ => 18,
    };
    let mut out: BTreeMap<String, BTreeMap<String, (i64, BigDecimal)>> = BTreeMap::new();
    for r in records {
        let data = &r["actionData"];
        let text = |v: &Value| v.as_str().expect("string field").to_owned();
        let (action, amount, symbol, price) = match r["action"].as_str().expect("action") {
            "liquidationcall" => (
                "LIQUIDATION",
                text(&data["principalAmount"]),
                text(&data["principalReserveSymbol"]),
                text(&data["borrowAssetPriceUSD"]),
            ),
            other => (
                match other {
                    "deposit" => "DEPOSIT",
                    "borrow" => "BORROW",
                    "repay" => "REPAY",
                    "redeemunderlying" => "REDEEM",
                    unknown => panic!("unexpected action {unknown}"),
                },
                text(&data["amount"]),
                text(&data["assetSymbol"]),
                text(&data["assetPriceUSD"]),
            ),
        };
        let usd = BigDecimal::from_str(&amount).expect("amount")
            / BigDecimal::from(10_u64.pow(decimals(&symbol)))
            * BigDecimal::from_str(&price).expect("price");
        let entry = out
            .entry(r["userWallet"].as_str().expect("wallet").to_owned())
            .or_default()
            .entry(action.to_owned())
            .or_insert((0, BigDecimal::from(0)));
        entry.0 += 1;
        entry.1 += usd;
    }
    out
}

async fn summaries_from_api(
    schema: &chainfold_api::ChainfoldSchema,
    wallets: impl Iterator<Item = &String>,
) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for wallet in wallets {
        let response = query(
            schema,
            CONTRACT_WALLET_QUERY,
            serde_json::json!({ "address": wallet }),
        )
        .await;
        assert!(response.get("errors").is_none(), "{response}");
        out.insert(wallet.clone(), response["data"]["wallet"].clone());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_polygon_wallets_match_an_independent_computation_and_a_second_replay_changes_nothing(
) {
    let iso = Isolated::new("polygon").await;
    let published = replay(&iso, Dataset::Polygon).await;
    assert_eq!((published.lending, published.dead_lettered), (1724, 0));
    let app = project(&iso).await;
    let schema = chainfold_api::build_schema(app.pool().clone());

    let expected = expected_polygon_summaries();
    assert_eq!(expected.len(), 18);
    let first = summaries_from_api(&schema, expected.keys()).await;
    for (wallet, actions) in &expected {
        let got = &first[wallet];
        assert_eq!(got["address"], Value::String(wallet.clone()));
        let summary = got["lendingSummary"].as_array().expect("summary list");
        assert_eq!(summary.len(), actions.len(), "{wallet}: {summary:?}");
        for row in summary {
            let action = row["action"].as_str().expect("action");
            let (count, usd) = &actions[action];
            assert_eq!(
                row["count"].as_i64(),
                Some(*count),
                "{wallet} {action} count"
            );
            let api_usd = BigDecimal::from_str(row["amountUsd"].as_str().expect("decimal string"))
                .expect("decimal");
            assert_eq!(cents(&api_usd), cents(usd), "{wallet} {action} USD");
        }
        let events = got["events"]["edges"].as_array().expect("edges");
        let total: i64 = actions.values().map(|(c, _)| c).sum();
        assert_eq!(events.len() as i64, total.min(10), "{wallet}");
        assert_eq!(
            got["events"]["pageInfo"]["hasNextPage"].as_bool(),
            Some(total > 10)
        );
    }
    // The wallet with the three zero-amount liquidations counts them from their liquidation fields.
    let liquidated = &first["0x000006eee6e39015cb523aebdd4d0b1855aba682"]["lendingSummary"];
    let liquidation = liquidated
        .as_array()
        .expect("list")
        .iter()
        .find(|r| r["action"] == "LIQUIDATION")
        .expect("liquidations");
    assert_eq!(liquidation["count"].as_i64(), Some(3));
    assert_ne!(liquidation["amountUsd"].as_str(), Some("0"));

    // The Redis cache holds the same counts after the commit.
    let client = redis::Client::open(chainfold_testkit::redis_url()).expect("redis url");
    let mut redis = client
        .get_multiplexed_async_connection()
        .await
        .expect("REDIS_URL must point at a running Redis");
    let key = chainfold_platform::redis_cache::wallet_key(
        &iso.redis.prefix,
        137,
        "0x000006eee6e39015cb523aebdd4d0b1855aba682",
    );
    let cached: Option<String> = redis::cmd("HGET")
        .arg(&key)
        .arg("liquidation_count")
        .query_async(&mut redis)
        .await
        .expect("hget");
    assert_eq!(cached.as_deref(), Some("3"));
    drop(app);

    // Replaying the same file again puts every event in the log twice; the read models must not move.
    replay(&iso, Dataset::Polygon).await;
    let app = project(&iso).await;
    let second = summaries_from_api(&schema, expected.keys()).await;
    assert_eq!(first, second);
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM lending_event")
        .fetch_one(app.pool())
        .await
        .expect("count");
    assert_eq!(rows, 1724);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_is_dead_lettered_with_its_reason_and_later_events_are_still_projected() {
    let iso = Isolated::new("poison").await;
    let topics = iso.kafka.topics();
    chainfold_platform::kafka::ensure_topics(&iso.kafka, &topics.all())
        .await
        .expect("create topics");
    let producer = chainfold_platform::kafka::producer(&iso.kafka).expect("producer");
    let mut events = Dataset::Polygon
        .decode_dir(&data_dir())
        .expect("decode")
        .into_iter()
        .map(|d| d.expect("bundled polygon records all decode"))
        .filter(|e| {
            format!("{:#x}", e.partition_key()) == "0x000006eee6e39015cb523aebdd4d0b1855aba682"
        });
    let before = events.next().expect("an event");
    let after = events.next().expect("another event");
    let key = "0x000006eee6e39015cb523aebdd4d0b1855aba682";
    // All three share a key, so they land on one partition in this order.
    for payload in [
        chainfold_ingest::publish::encode(&before),
        b"{\"schema_version\":1,\"not\":\"an envelope\"}".to_vec(),
        chainfold_ingest::publish::encode(&after),
    ] {
        producer
            .send(
                FutureRecord::to(&topics.lending).key(key).payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("produce");
    }
    let app = project(&iso).await;
    let ids: Vec<String> =
        sqlx::query_scalar("SELECT event_id FROM lending_event ORDER BY kafka_offset")
            .fetch_all(app.pool())
            .await
            .expect("rows");
    assert_eq!(
        ids,
        vec![before.event_id.to_string(), after.event_id.to_string()]
    );

    let dlq = chainfold_domain::topics::dlq(&topics.lending);
    let consumer: BaseConsumer = chainfold_platform::kafka::client_config(&iso.kafka)
        .set("group.id", chainfold_testkit::unique("dlq-reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    consumer.subscribe(&[dlq.as_str()]).expect("subscribe");
    let message = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            assert!(
                std::time::Instant::now() < deadline,
                "no dead letter within 30s"
            );
            if let Some(result) = consumer.poll(Duration::from_millis(500)) {
                return result.expect("read dlq").detach();
            }
        }
    })
    .await
    .expect("reader");
    assert_eq!(
        message.payload(),
        Some(&b"{\"schema_version\":1,\"not\":\"an envelope\"}"[..])
    );
    let headers = message.headers().expect("dead letters carry headers");
    let reason = headers
        .iter()
        .find(|h| h.key == chainfold_domain::topics::headers::DLQ_REASON)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .expect("a reason header");
    assert!(reason.starts_with("could not decode envelope"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projector_stopped_mid_stream_resumes_with_nothing_lost_and_nothing_doubled() {
    let iso = Isolated::new("restart").await;
    // The file twice in the log before anything is folded, so batches hold both copies of an
    // event: each must count once.
    replay(&iso, Dataset::Polygon).await;
    replay(&iso, Dataset::Polygon).await;
    let mut config = projector_config(&iso);
    config.batch_size = 100;
    let mut first = Projector::build(config.clone())
        .await
        .expect("projector starts");
    let mut folded = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while folded < 300 {
        assert!(
            std::time::Instant::now() < deadline,
            "the first projector folded only {folded} events"
        );
        folded += first
            .process_batch(Duration::from_millis(500))
            .await
            .expect("batch")
            .stored;
    }
    assert!(
        folded < 1724,
        "stop mid-stream, not at the end (folded {folded})"
    );
    drop(first);

    let second = Projector::build(config).await.expect("projector restarts");
    let mut second = second;
    tokio::time::timeout(Duration::from_secs(120), second.run_until_caught_up())
        .await
        .expect("catches up")
        .expect("runs");
    let (rows, counted, distinct): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM lending_event), (SELECT sum(event_count)::int8 FROM wallet_lending_summary),
                (SELECT count(DISTINCT event_id) FROM lending_event)",
    )
    .fetch_one(second.pool())
    .await
    .expect("counts");
    assert_eq!((rows, counted, distinct), (1724, 1724, 1724));
    let expected = expected_polygon_summaries();
    let schema = chainfold_api::build_schema(second.pool().clone());
    let got = summaries_from_api(&schema, expected.keys()).await;
    for (wallet, actions) in &expected {
        for row in got[wallet]["lendingSummary"].as_array().expect("list") {
            let (count, usd) = &actions[row["action"].as_str().expect("action")];
            assert_eq!(row["count"].as_i64(), Some(*count));
            let api_usd =
                BigDecimal::from_str(row["amountUsd"].as_str().expect("string")).expect("decimal");
            assert_eq!(cents(&api_usd), cents(usd));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_swaps_give_exact_pool_counts_and_the_busiest_pool_first() {
    let iso = Isolated::new("swaps").await;
    let published = replay(&iso, Dataset::Swaps).await;
    assert_eq!(published.amm, 10_000);
    let app = project(&iso).await;
    let schema = chainfold_api::build_schema(app.pool().clone());

    // Independent count from the CSV: successful swaps of the busiest pool.
    let csv = chainfold_ingest::replay::read_maybe_gzip(
        &data_dir().join("dex-swaps-mev-inspect/swaps.csv.gz"),
    )
    .expect("read");
    let mut reader = csv::Reader::from_reader(csv.as_slice());
    let mut per_pool: BTreeMap<String, i64> = BTreeMap::new();
    for row in reader.records() {
        let row = row.expect("row");
        if row.get(13).unwrap_or_default().is_empty() {
            *per_pool
                .entry(row.get(5).expect("pool").to_owned())
                .or_default() += 1;
        }
    }
    let busiest = "0xc9b7c3ba45ee5c3c2c8629b157c0e814c36d9b46";
    let response = query(
        &schema,
        r#"{ pool(chainId: 1, address: "0xc9b7c3ba45ee5c3c2c8629b157c0e814c36d9b46") { address protocol swapCount } }"#,
        Value::Null,
    )
    .await;
    assert_eq!(
        response["data"]["pool"]["swapCount"].as_i64(),
        Some(per_pool[busiest])
    );
    assert_eq!(response["data"]["pool"]["protocol"], "uniswap_v2");

    let response = query(&schema, "{ pools(chainId: 1, first: 20, orderBy: swapCount, orderDirection: desc) { edges { node { address swapCount } } } }", Value::Null).await;
    let edges = response["data"]["pools"]["edges"]
        .as_array()
        .expect("edges");
    assert_eq!(edges.len(), 20);
    assert_eq!(edges[0]["node"]["address"], busiest);
    let counts: Vec<i64> = edges
        .iter()
        .map(|e| e["node"]["swapCount"].as_i64().expect("count"))
        .collect();
    assert!(counts.windows(2).all(|w| w[0] >= w[1]), "{counts:?}");
    let mut top: Vec<i64> = per_pool.values().copied().collect();
    top.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(counts, top[..20].to_vec());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_rejects_bad_addresses_returns_null_for_unknown_wallets_and_reports_health() {
    let iso = Isolated::new("api").await;
    let config = chainfold_api::Config::new(
        iso.postgres.clone(),
        iso.redis.clone(),
        "127.0.0.1:0".parse().expect("addr"),
    );
    let app = chainfold_api::App::build(config).await.expect("api starts");
    let schema = app.schema().clone();
    let response = query(
        &schema,
        r#"{ wallet(chainId: 137, address: "0x1234") { address } }"#,
        Value::Null,
    )
    .await;
    assert_eq!(
        response["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
        "{response}"
    );
    let response = query(
        &schema,
        r#"{ wallet(chainId: 137, address: "0x00000000000000000000000000000000000000aa") { address } }"#,
        Value::Null,
    )
    .await;
    assert!(response.get("errors").is_none(), "{response}");
    assert_eq!(response["data"]["wallet"], Value::Null);
    let response = query(
        &schema,
        "{ pools(chainId: 1, first: 5000) { edges { node { address } } } }",
        Value::Null,
    )
    .await;
    assert!(
        response["errors"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("first") || m.contains("complex")),
        "{response}"
    );

    let port = app.port();
    let server = tokio::spawn(app.run_until_stopped(std::future::pending()));
    let base = format!("http://127.0.0.1:{port}");
    let health = http_get(&format!("{base}/health")).await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(
        health.contains("\"postgres\":\"ok\"") && health.contains("\"redis\":\"ok\""),
        "{health}"
    );
    let page = http_get(&format!("{base}/")).await;
    assert!(
        page.to_lowercase().contains("graphiql"),
        "GraphiQL page expected"
    );
    let huge = format!(
        "{{\"query\":\"{{ __typename }}\",\"padding\":\"{}\"}}",
        "x".repeat(200_000)
    );
    let refused = http_post(&format!("{base}/graphql"), &huge).await;
    assert!(
        refused.starts_with("HTTP/1.1 413"),
        "{}",
        &refused[..refused.len().min(200)]
    );
    server.abort();
}

/// A minimal HTTP/1.1 client over a TCP socket (enough for these checks, no extra dependency).
async fn http_request(url: &str, method: &str, body: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let rest = url.strip_prefix("http://").expect("http url");
    let (host, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_owned()), |(h, p)| (h, format!("/{p}")));
    let mut stream = tokio::net::TcpStream::connect(host).await.expect("connect");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response)).await;
    String::from_utf8_lossy(&response).into_owned()
}

async fn http_get(url: &str) -> String {
    http_request(url, "GET", "").await
}

async fn http_post(url: &str, body: &str) -> String {
    http_request(url, "POST", body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_beyond_the_log_are_refused_instead_of_skipped_and_a_rebuild_refolds() {
    let iso = Isolated::new("reset").await;
    replay(&iso, Dataset::Polygon).await;
    let app = project(&iso).await;
    // What a broker reset leaves behind: Postgres holds offsets past the end of the log (here
    // set directly; deleting topics on the shared test broker would disturb other tests).
    sqlx::query("UPDATE consumer_offset SET next_offset = next_offset + 1000 WHERE group_id = $1")
        .bind(&iso.group)
        .execute(app.pool())
        .await
        .expect("move offsets");
    drop(app);

    let mut app = Projector::build(projector_config(&iso))
        .await
        .expect("projector starts");
    let err = tokio::time::timeout(Duration::from_secs(60), app.run_until_caught_up())
        .await
        .expect("answers within a minute")
        .expect_err("stored offsets beyond the log's end must not be sought silently");
    assert!(
        err.downcast_ref::<chainfold_projector::LogReset>()
            .is_some(),
        "{err:#}"
    );
    assert!(format!("{err}").contains("chainfold rebuild"), "{err}");

    app.reset().await.expect("reset");
    tokio::time::timeout(Duration::from_secs(120), app.run_until_caught_up())
        .await
        .expect("in time")
        .expect("refolds");
    let (events, counted): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM lending_event), (SELECT sum(event_count)::int8 FROM wallet_lending_summary)",
    )
    .fetch_one(app.pool())
    .await
    .expect("counts");
    assert_eq!((events, counted), (1724, 1724));
}

/// Every record of `topic` whose `dlq_stage` header is `stage`: (payload, reason).
async fn dead_letters(iso: &Isolated, topic: &str, stage: &str) -> Vec<(Vec<u8>, String)> {
    let consumer: BaseConsumer = chainfold_platform::kafka::client_config(&iso.kafka)
        .set("group.id", chainfold_testkit::unique("dlq-reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    consumer
        .subscribe(&[chainfold_domain::topics::dlq(topic).as_str()])
        .expect("subscribe");
    let stage = stage.to_owned();
    tokio::task::spawn_blocking(move || {
        let header = |m: &rdkafka::message::BorrowedMessage<'_>, name: &str| {
            m.headers()
                .and_then(|h| h.iter().find(|h| h.key == name).and_then(|h| h.value))
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        let mut found = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        // Read until something of the stage came and the topic then stays quiet for 2 s.
        let mut quiet_since = std::time::Instant::now();
        while std::time::Instant::now() < deadline {
            match consumer.poll(Duration::from_millis(200)) {
                Some(result) => {
                    let m = result.expect("read dlq");
                    quiet_since = std::time::Instant::now();
                    if header(&m, chainfold_domain::topics::headers::DLQ_STAGE).as_deref()
                        == Some(stage.as_str())
                    {
                        found.push((
                            m.payload().unwrap_or_default().to_vec(),
                            header(&m, chainfold_domain::topics::headers::DLQ_REASON)
                                .unwrap_or_default(),
                        ));
                    }
                }
                None if !found.is_empty() && quiet_since.elapsed() > Duration::from_secs(2) => {
                    break
                }
                None => {}
            }
        }
        found
    })
    .await
    .expect("reader")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scorer_and_the_risk_worker_dead_letter_what_they_cannot_decode_and_go_on() {
    let iso = Isolated::new("poison-derived").await;
    let topics = iso.kafka.topics();
    chainfold_platform::kafka::ensure_topics(&iso.kafka, &topics.all())
        .await
        .expect("create topics");
    let producer = chainfold_platform::kafka::producer(&iso.kafka).expect("producer");
    let attestations = format!(
        "{}{}",
        iso.kafka.topic_prefix,
        chainfold_domain::topics::ATTESTATIONS
    );
    chainfold_platform::kafka::ensure_topics(&iso.kafka, std::slice::from_ref(&attestations))
        .await
        .expect("attestations topic");
    // Poison first on every topic the two roles read: what follows must still be scored and
    // evaluated.
    let poison: &[u8] = b"{\"schema_version\":1,\"not\":\"an envelope\"}";
    let future = b"{\"schema_version\":99,\"chain_id\":137}";
    for (topic, payload) in [
        (&topics.lending, poison),
        (&topics.lending, &future[..]),
        (&topics.seals, poison),
        (&attestations, b"not json" as &[u8]),
    ] {
        producer
            .send(
                FutureRecord::to(topic).key("poison").payload(payload),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("produce");
    }
    let items = Dataset::Polygon.decode_dir(&data_dir()).expect("data");
    chainfold_ingest::publish::publish_all(&producer, &topics, items, |_, _| {})
        .await
        .expect("publish");
    let app = project(&iso).await;
    let models = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scoring/models");
    let mut scorer =
        chainfold_scoring::worker::Scorer::build(chainfold_scoring::worker::Config::new(
            iso.kafka.clone(),
            iso.postgres.clone(),
            iso.redis.clone(),
            chainfold_testkit::unique("scorer"),
            iso.group.clone(),
            models.join("position-v1"),
        ))
        .await
        .expect("scorer");
    let scored = scorer
        .run_until_idle(Duration::from_secs(3))
        .await
        .expect("the scorer does not stop at poison");
    assert_eq!(scored.skipped, 2, "{scored:?}");
    assert_eq!(scored.attestations_malformed, 1, "{scored:?}");
    assert!(scored.scored > 1000, "{scored:?}");
    drop(scorer);
    let mut risk = chainfold_risk::worker::RiskConfig::new(
        iso.kafka.clone(),
        iso.postgres.clone(),
        iso.redis.clone(),
        chainfold_testkit::unique("risk"),
    );
    risk.projector_group = iso.group.clone();
    let evaluated = chainfold_risk::worker::RiskWorker::build(risk)
        .await
        .expect("risk")
        .run_until_idle(Duration::from_secs(3))
        .await
        .expect("the risk worker does not stop at poison");
    // The poison seal and the file's seal were read; the file's (blockless) stretch evaluated.
    assert_eq!(evaluated.received, 2, "{evaluated:?}");
    assert!(evaluated.shortages > 0, "{evaluated:?}");
    let progressed: i64 = sqlx::query_scalar("SELECT count(*) FROM risk_progress")
        .fetch_one(app.pool())
        .await
        .expect("progress");
    assert!(progressed > 0);

    // Each poison record is in its topic's dead-letter topic once per role that read it, with
    // the role and the reason.
    let lending = dead_letters(&iso, &topics.lending, "scorer").await;
    let reasons: Vec<&str> = lending.iter().map(|(_, r)| r.as_str()).collect();
    assert_eq!(lending.len(), 2, "{reasons:?}");
    assert!(
        lending
            .iter()
            .any(|(p, r)| p == poison && r.starts_with("could not decode envelope")),
        "{reasons:?}"
    );
    assert!(
        lending
            .iter()
            .any(|(p, r)| p == future && r.contains("unsupported schema version 99")),
        "{reasons:?}"
    );
    let seals = dead_letters(&iso, &topics.seals, "risk").await;
    assert_eq!(seals.len(), 1, "{seals:?}");
    assert_eq!(seals[0].0, poison);
    assert!(!seals[0].1.is_empty());
    let attested = dead_letters(&iso, &attestations, "scorer").await;
    assert_eq!(attested.len(), 1, "{attested:?}");
    assert!(
        attested[0].1.starts_with("could not decode attestation"),
        "{attested:?}"
    );
}

/// The projector checks, with each batch and in the background, that no read model is
/// estimated empty while it holds rows (pages, `reltuples` 0, live rows counted: what a vacuum
/// leaves when it runs while a refill's first rows are still being written), and analyzes one
/// that is. Here, after the Polygon data is projected, `lending_event`'s estimates are set so,
/// with autovacuum off for it so that only the projector can correct them; the same data
/// published again (duplicates, stored once) gives the projector batches, and the table must
/// come out analyzed.
#[tokio::test]
async fn the_projector_analyzes_a_read_model_estimated_empty_while_holding_rows() {
    let iso = Isolated::new("projector_estimates").await;
    let items = || Dataset::Polygon.decode_dir(&data_dir()).expect("data");
    chainfold_tests::publish_and_project(&iso, items()).await;
    let pool = chainfold_platform::postgres::connect_and_migrate(&iso.postgres)
        .await
        .expect("pool");
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM lending_event")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert!(stored > 1_000, "{stored} lending events");
    sqlx::query("ALTER TABLE lending_event SET (autovacuum_enabled = false)")
        .execute(&pool)
        .await
        .expect("autovacuum off");
    chainfold_testkit::wait_live_rows(&pool, "lending_event").await;
    chainfold_testkit::set_estimated_empty(&pool, "lending_event").await;
    chainfold_tests::publish_and_project(&iso, items()).await;
    let estimated = chainfold_testkit::wait_estimated_rows(
        &pool,
        "lending_event",
        stored as f32,
        &format!("{stored} stored"),
    )
    .await;
    assert_eq!(estimated, stored as f32, "an analyze counts every row");
}
