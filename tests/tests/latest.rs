//! The API's hottest reads from Redis (`chainfold_store::latest`): the Polygon histories
//! replayed, projected and scored by the real roles, then served by two APIs side by side, one
//! reading Redis first (`--redis-reads true`, the default) and one reading Postgres only. They
//! must answer alike for every wallet; the Redis one must really answer from Redis, keep the
//! newest version whatever order writes arrive in, and fall back to Postgres on a miss. And the
//! plans the API's Postgres pool caches must stay on the wallet index when `credit_score` is
//! emptied and filled again under it.

use std::time::Duration;

use chainfold_ingest::replay::Dataset;
use chainfold_store::latest::{self, Kind};
use chainfold_testkit::{data_dir, Isolated};
use serde_json::{json, Value};

const WALLET: &str = "0x000006eee6e39015cb523aebdd4d0b1855aba682";

async fn start_api(iso: &Isolated, redis_reads: bool) -> u16 {
    let mut config = chainfold_api::Config::new(
        iso.postgres.clone(),
        iso.redis.clone(),
        "127.0.0.1:0".parse().expect("addr"),
    );
    config.kafka = iso.kafka.clone();
    config.redis_reads = redis_reads;
    config.public_rate_per_minute = 100_000;
    let app = chainfold_api::App::build(config).await.expect("api starts");
    let port = app.port();
    tokio::spawn(app.run_until_stopped(std::future::pending()));
    port
}

async fn wallet(port: u16, address: &str) -> Value {
    let query = format!(
        r#"{{ wallet(chainId: 137, address: "{address}") {{
            firstActivityAt lastActivityAt
            lendingSummary {{ action count amountUsd pricedCount }}
            creditScore {{ cursor score band probabilityOfDefault healthFactor computedAt eventId
                           kafkaTopic kafkaPartition kafkaOffset blockNumber modelVersion
                           reasons {{ code description impact }} }} }} }}"#
    );
    let response: Value = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/graphql"))
        .json(&json!({ "query": query }))
        .send()
        .await
        .expect("http")
        .json()
        .await
        .expect("json");
    assert!(response.get("errors").is_none(), "{response}");
    response["data"]["wallet"].clone()
}

async fn redis_reads(port: u16, result: &str) -> u64 {
    let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let prefix = format!("chainfold_api_redis_reads_total{{result=\"{result}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {prefix} in /metrics"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_scores_and_summaries_are_served_from_redis_in_commit_order() {
    let iso = Isolated::new("latest").await;
    chainfold_tests::replay_and_project(&iso, Dataset::Polygon).await;
    let mut scorer = chainfold_tests::score_all(&iso).await;
    let pool = scorer.pool().clone();
    let mut redis = chainfold_platform::redis_cache::connect(&iso.redis)
        .await
        .expect("redis");
    let prefix = iso.redis.prefix.clone();

    // Every wallet alike from both APIs, and the Redis one found them in Redis: the projector
    // and the scorer wrote them after their commits.
    let cached = start_api(&iso, true).await;
    let direct = start_api(&iso, false).await;
    let wallets: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT wallet FROM wallet_lending_summary WHERE chain_id = 137 ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .expect("wallets");
    assert!(wallets.len() >= 10, "{wallets:?}");
    for w in &wallets {
        let (a, b) = (wallet(cached, w).await, wallet(direct, w).await);
        assert_eq!(a, b, "{w}");
        assert!(a["creditScore"]["score"].is_i64(), "{w}: {a}");
    }
    assert_eq!(
        redis_reads(cached, "hit").await,
        2 * wallets.len() as u64,
        "every score and summary read from Redis"
    );
    assert_eq!(redis_reads(cached, "miss").await, 0);
    // An address nobody has seen: null from both, and no entry made for it.
    let stranger = "0x00000000000000000000000000000000000000aa";
    assert_eq!(wallet(cached, stranger).await, Value::Null);
    let made: bool = redis::cmd("EXISTS")
        .arg(latest::key(&prefix, Kind::Wallet, 137, stranger))
        .query_async(&mut redis)
        .await
        .expect("exists");
    assert!(!made, "unknown addresses fill nothing");

    // A newer score through the real pipeline replaces the entry, in both APIs alike.
    let before = wallet(cached, WALLET).await;
    let events: Vec<chainfold_domain::Envelope> = Dataset::Polygon
        .decode_dir(&data_dir())
        .expect("data")
        .into_iter()
        .flatten()
        .collect();
    let mut env = events
        .iter()
        .rev()
        .find(|e| format!("{:#x}", e.partition_key()) == WALLET)
        .expect("an event of the wallet")
        .clone();
    env.event_id = chainfold_domain::EventId::of_record(137, "latest-test", "1");
    env.block_time = env.block_time.map(|t| t + chrono::Duration::days(30));
    chainfold_tests::publish_and_project(&iso, vec![Ok(env)]).await;
    scorer
        .run_until_idle(Duration::from_secs(3))
        .await
        .expect("score");
    let after = wallet(cached, WALLET).await;
    assert_ne!(
        after["creditScore"]["cursor"],
        before["creditScore"]["cursor"]
    );
    assert_ne!(after["lendingSummary"], before["lendingSummary"]);
    assert_eq!(after, wallet(direct, WALLET).await);

    // A write that lost the race (an older version) changes nothing …
    let score_key = latest::key(&prefix, Kind::Score, 137, WALLET);
    let stored: i64 = redis::cmd("HGET")
        .arg(&score_key)
        .arg("v")
        .query_async(&mut redis)
        .await
        .expect("version");
    assert_eq!(
        stored.to_string(),
        after["creditScore"]["cursor"].as_str().expect("cursor")
    );
    let late = latest::Entry {
        chain_id: 137,
        wallet: WALLET.to_owned(),
        version: stored - 1,
        row: Some("{\"stale\": true}".to_owned()),
    };
    let written = latest::put(&mut redis, &prefix, Kind::Score, &[late])
        .await
        .expect("put");
    assert_eq!(written, 0);
    assert_eq!(wallet(cached, WALLET).await, after);

    // … and a newer one is served as written: the answer really comes from Redis.
    let mut planted: Value = serde_json::from_str(
        &latest::read_postgres(&pool, Kind::Score, &[(137, WALLET.to_owned())], false)
            .await
            .expect("read")[0]
            .row
            .clone()
            .expect("a score"),
    )
    .expect("json");
    planted["score"] = json!(301);
    let newer = latest::Entry {
        chain_id: 137,
        wallet: WALLET.to_owned(),
        version: stored + 1,
        row: Some(planted.to_string()),
    };
    assert_eq!(
        latest::put(&mut redis, &prefix, Kind::Score, &[newer])
            .await
            .expect("put"),
        1
    );
    assert_eq!(wallet(cached, WALLET).await["creditScore"]["score"], 301);
    assert_eq!(
        wallet(direct, WALLET).await["creditScore"]["score"],
        after["creditScore"]["score"]
    );

    // A miss reads Postgres and fills the entry with Postgres's version.
    let _: () = redis::cmd("DEL")
        .arg(&score_key)
        .query_async(&mut redis)
        .await
        .expect("del");
    let misses = redis_reads(cached, "miss").await;
    assert_eq!(wallet(cached, WALLET).await, after);
    assert_eq!(redis_reads(cached, "miss").await, misses + 1);
    let filled: i64 = redis::cmd("HGET")
        .arg(&score_key)
        .arg("v")
        .query_async(&mut redis)
        .await
        .expect("filled");
    assert_eq!(filled, stored);
    let ttl: i64 = redis::cmd("TTL")
        .arg(&score_key)
        .query_async(&mut redis)
        .await
        .expect("ttl");
    assert!(ttl > 0 && ttl <= latest::TTL.as_secs() as i64, "{ttl}");
}

async fn pool_state(port: u16, address: &str) -> Value {
    let query = format!(
        r#"{{ pool(chainId: 1, address: "{address}") {{
            chainId address protocol swapCount revertedCount firstBlock lastBlock }} }}"#
    );
    let response: Value = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/graphql"))
        .json(&json!({ "query": query }))
        .send()
        .await
        .expect("http")
        .json()
        .await
        .expect("json");
    assert!(response.get("errors").is_none(), "{response}");
    response["data"]["pool"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_states_are_served_from_redis_and_follow_new_swaps() {
    let iso = Isolated::new("latest_pool").await;
    chainfold_tests::replay_and_project(&iso, Dataset::Swaps).await;
    let db = chainfold_platform::postgres::connect_and_migrate(&iso.postgres)
        .await
        .expect("postgres");
    let mut redis = chainfold_platform::redis_cache::connect(&iso.redis)
        .await
        .expect("redis");
    let prefix = iso.redis.prefix.clone();
    let cached = start_api(&iso, true).await;
    let direct = start_api(&iso, false).await;

    // Every pool alike from both APIs, each answered from the entry the projector wrote after
    // its commit.
    let pools: Vec<String> =
        sqlx::query_scalar("SELECT pool FROM pool_summary WHERE chain_id = 1 ORDER BY 1")
            .fetch_all(&db)
            .await
            .expect("pools");
    assert!(pools.len() >= 10, "{pools:?}");
    for p in &pools {
        let (a, b) = (pool_state(cached, p).await, pool_state(direct, p).await);
        assert_eq!(a, b, "{p}");
        let swaps = a["swapCount"].as_i64().unwrap_or(0) + a["revertedCount"].as_i64().unwrap_or(0);
        assert!(swaps > 0, "{p}: {a}");
    }
    assert_eq!(redis_reads(cached, "hit").await, pools.len() as u64);
    assert_eq!(redis_reads(cached, "miss").await, 0);
    let stranger = "0x00000000000000000000000000000000000000bb";
    assert_eq!(pool_state(cached, stranger).await, Value::Null);
    let made: bool = redis::cmd("EXISTS")
        .arg(latest::key(&prefix, Kind::Pool, 1, stranger))
        .query_async(&mut redis)
        .await
        .expect("exists");
    assert!(!made, "unknown pools fill nothing");

    // A new swap through the real pipeline moves the entry, in both APIs alike.
    let events: Vec<chainfold_domain::Envelope> = Dataset::Swaps
        .decode_dir(&data_dir())
        .expect("data")
        .into_iter()
        .flatten()
        .collect();
    let mut env = events
        .iter()
        .find(|e| matches!(&e.event, chainfold_domain::DefiEvent::Swap(s) if !s.reverted))
        .expect("a successful swap")
        .clone();
    let address = match &env.event {
        chainfold_domain::DefiEvent::Swap(s) => format!("{:#x}", s.pool),
        _ => unreachable!("found a swap"),
    };
    let before = pool_state(cached, &address).await;
    env.event_id = chainfold_domain::EventId::of_record(1, "latest-pool-test", "1");
    chainfold_tests::publish_and_project(&iso, vec![Ok(env)]).await;
    let after = pool_state(cached, &address).await;
    assert_eq!(
        after["swapCount"].as_i64(),
        before["swapCount"].as_i64().map(|n| n + 1),
        "{before} → {after}"
    );
    assert_eq!(after, pool_state(direct, &address).await);

    // An older version loses; a newer one is what the API serves (it reads Redis).
    let key = latest::key(&prefix, Kind::Pool, 1, &address);
    let stored: i64 = redis::cmd("HGET")
        .arg(&key)
        .arg("v")
        .query_async(&mut redis)
        .await
        .expect("version");
    let row = latest::read_postgres(&db, Kind::Pool, &[(1, address.clone())], false)
        .await
        .expect("read")[0]
        .clone();
    assert_eq!(
        row.version, stored,
        "the projector stored Postgres's version"
    );
    let mut planted: Value =
        serde_json::from_str(row.row.as_deref().expect("a pool")).expect("json");
    planted["swap_count"] = json!(424_242);
    let entry = |version: i64| latest::Entry {
        chain_id: 1,
        wallet: address.clone(),
        version,
        row: Some(planted.to_string()),
    };
    assert_eq!(
        latest::put(&mut redis, &prefix, Kind::Pool, &[entry(stored - 1)])
            .await
            .expect("put"),
        0
    );
    assert_eq!(pool_state(cached, &address).await, after);
    assert_eq!(
        latest::put(&mut redis, &prefix, Kind::Pool, &[entry(stored + 1)])
            .await
            .expect("put"),
        1
    );
    assert_eq!(pool_state(cached, &address).await["swapCount"], 424_242);
    assert_eq!(pool_state(direct, &address).await, after);
}

/// The API keeps Postgres's plan cache (planning each point read as it runs cost 2.8× in
/// `pgbench`). That is safe after `chainfold rebuild` empties `credit_score` under it: here a
/// connection of the API's own pool prepares the latest-score read (`scores::latest_of`, the
/// Postgres path of `creditScore`), runs it eight times over the truncated table (enough for
/// Postgres to weigh a generic plan), and once 20,000 scores are stored its plan must still read
/// the wallet index. The control shows the check can fail: the same statement prepared after an
/// `ANALYZE` of the empty table keeps a plan that scans the whole table. Autovacuum is off for
/// the table, so no autoanalyze replans either statement behind the test's back.
#[tokio::test]
async fn the_apis_cached_plans_keep_the_wallet_index_after_a_truncate() {
    let iso = Isolated::new("api_plans").await;
    let config = chainfold_api::Config::new(
        iso.postgres.clone(),
        iso.redis.clone(),
        "127.0.0.1:0".parse().expect("addr"),
    );
    let pool = chainfold_api::connect_postgres(&config)
        .await
        .expect("pool");
    let mut conn = pool.acquire().await.expect("a connection");
    let mode: String = sqlx::query_scalar("SHOW plan_cache_mode")
        .fetch_one(&mut *conn)
        .await
        .expect("mode");
    assert_eq!(mode, "auto", "the API keeps the plan cache");
    let wallets: Vec<String> = (0..1_000).map(|i| format!("'0x{i:040x}'")).collect();
    let args = format!(
        "(ARRAY[{}]::int8[], ARRAY[{}]::text[])",
        vec!["137"; wallets.len()].join(","),
        wallets.join(",")
    );
    let statement = |name: &str| {
        format!(
            "PREPARE {name}(int8[], text[]) AS
             SELECT s.id FROM UNNEST($1::int8[], $2::text[]) AS k(c, w)
             CROSS JOIN LATERAL (SELECT id, chain_id, wallet, health_factor, score, band,
                                        probability_of_liquidation, reasons, model_version,
                                        model_sha256, computed_at, event_id, kafka_topic,
                                        kafka_partition, kafka_offset, block_number
                                 FROM credit_score
                                 WHERE chain_id = k.c AND wallet = k.w
                                 ORDER BY id DESC LIMIT 1) s"
        )
    };
    let fill = "INSERT INTO credit_score (chain_id, wallet, score, band, reasons, model_version,
                    model_sha256, computed_at, event_id, kafka_topic, kafka_partition,
                    kafka_offset, projector_next_offset)
                SELECT 137, '0x' || lpad(to_hex(g % 1000), 40, '0'), 600, 'GOOD', '[]', 'v',
                       's', now(), 'e' || g, 't', 0, g, g
                FROM generate_series(1, 20000) g";
    let mut plan_after = async |name: &str, setup: &str| -> String {
        sqlx::raw_sql(&format!("{setup}; {};", statement(name)))
            .execute(&mut *conn)
            .await
            .expect("prepare");
        for _ in 0..8 {
            let found: Vec<i64> = sqlx::query_scalar(&format!("EXECUTE {name}{args}"))
                .fetch_all(&mut *conn)
                .await
                .expect("over the empty table");
            assert!(found.is_empty());
        }
        sqlx::raw_sql(fill).execute(&mut *conn).await.expect("fill");
        let plan: Vec<String> =
            sqlx::query_scalar(&format!("EXPLAIN (COSTS OFF) EXECUTE {name}{args}"))
                .fetch_all(&mut *conn)
                .await
                .expect("plan");
        plan.join("\n")
    };
    let truncated = plan_after(
        "after_truncate",
        "ALTER TABLE credit_score SET (autovacuum_enabled = false); TRUNCATE credit_score",
    )
    .await;
    assert!(
        truncated.contains("credit_score_wallet_idx")
            && !truncated.contains("Seq Scan on credit_score"),
        "{truncated}"
    );
    let analyzed = plan_after(
        "after_analyze",
        "TRUNCATE credit_score; ANALYZE credit_score",
    )
    .await;
    assert!(analyzed.contains("Seq Scan on credit_score"), "{analyzed}");
}
