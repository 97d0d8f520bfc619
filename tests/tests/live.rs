//! Live ingest against real local chains: fixture contracts on anvil → `ingest rpc` follower →
//! Kafka (real broker) → projector → Postgres. Each test starts its own anvil on a free port and
//! has its own topics, group and database.

use std::time::Duration;

use alloy::primitives::{Address, U256};
use alloy::providers::Provider as _;
use chainfold_ingest::rpc::config::ChainsFile;
use chainfold_ingest::rpc::follow::Follower;
use chainfold_simulate::anvil::Anvil;
use chainfold_simulate::{Deployment, Sim};
use chainfold_testkit::{data_dir, Isolated};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use sqlx::PgPool;

struct Chain {
    anvil: Anvil,
    sim: Sim,
}

async fn chain(chain_id: u64) -> Chain {
    let anvil = Anvil::spawn(chain_id).expect("anvil starts");
    let weth = chainfold_simulate::prices(&data_dir(), "WETH").expect("prices");
    let wbtc = chainfold_simulate::prices(&data_dir(), "WBTC").expect("prices");
    let d = Deployment::deploy(&anvil.http_url(), weth[0], wbtc[0])
        .await
        .expect("fixtures deploy");
    let mut sim = Sim::new(d, weth, wbtc);
    sim.seed_liquidity().await.expect("liquidity");
    Chain { anvil, sim }
}

fn chains_toml(chains: &[&Chain], extra: &str) -> String {
    chains
        .iter()
        .map(|c| {
            c.sim
                .d
                .chains_toml(
                    &format!("anvil{}", c.anvil.chain_id),
                    &c.anvil.http_url(),
                    None,
                    2,
                )
                .replace("poll_interval", &format!("{extra}\npoll_interval"))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

async fn follower(iso: &Isolated, toml: &str) -> Follower {
    let chain = ChainsFile::parse(toml)
        .expect("chains file")
        .chains
        .remove(0);
    let pool = chainfold_platform::postgres::connect_and_migrate(&iso.postgres)
        .await
        .expect("postgres");
    let topics = iso.kafka.topics();
    chainfold_platform::kafka::ensure_topics(&iso.kafka, &topics.all())
        .await
        .expect("topics");
    let producer = chainfold_platform::kafka::producer(&iso.kafka).expect("producer");
    Follower::new(chain, producer, topics, pool)
        .await
        .expect("follower starts")
}

async fn project(iso: &Isolated) -> PgPool {
    chainfold_tests::project(iso).await.pool().clone()
}

async fn scalar(pool: &PgPool, sql: &str) -> String {
    let v: Option<String> = sqlx::query_scalar(sql).fetch_one(pool).await.expect(sql);
    v.unwrap_or_default()
}

#[tokio::test]
async fn every_fixture_event_decodes_with_the_values_sent() {
    let iso = Isolated::new("live_decode").await;
    let mut c = chain(31337).await;
    let d = c.sim.d.clone();
    let who = Address::repeat_byte(0x42);
    d.fund(
        who,
        d.usdc.token,
        chainfold_simulate::contracts::units(1e6, 6),
    )
    .await
    .expect("fund");
    d.fund(
        who,
        d.weth.token,
        chainfold_simulate::contracts::units(100.0, 18),
    )
    .await
    .expect("fund");
    for spender in [d.router, d.lending_pool] {
        d.approve(who, d.usdc.token, spender)
            .await
            .expect("approve");
        d.approve(who, d.weth.token, spender)
            .await
            .expect("approve");
    }
    let amount_in = U256::from(12_345_678_u64); // 12.345678 USDC
    let quoted = d
        .quote(d.pairs[0], d.usdc.token, amount_in)
        .await
        .expect("quote");
    let (swap_tx, _) = d
        .swap(who, d.pairs[0], d.usdc.token, amount_in)
        .await
        .expect("swap");
    let deposit = chainfold_simulate::contracts::units(3.0, 18);
    d.deposit(who, d.weth.token, deposit)
        .await
        .expect("deposit");
    let borrowed = U256::from(1_000_000_000_u64);
    d.borrow(who, d.usdc.token, borrowed).await.expect("borrow");
    d.repay(who, d.usdc.token, U256::from(400_000_000_u64))
        .await
        .expect("repay");
    let withdrawn = chainfold_simulate::contracts::units(0.5, 18);
    d.withdraw(who, d.weth.token, withdrawn)
        .await
        .expect("withdraw");
    d.set_price(&d.weth, 2345.5).await.expect("price");
    let flash = c
        .sim
        .flash_loan_attack()
        .await
        .expect("flash loan scenario");
    let drain = c.sim.liquidity_drain().await.expect("drain scenario");
    let crash = c.sim.oracle_crash().await.expect("crash scenario");

    let mut f = follower(&iso, &chains_toml(&[&c], "")).await;
    f.sync_to_head().await.expect("follows to head");
    let pool = project(&iso).await;

    // The swap: exactly the amount sent in, exactly the router's quote out.
    let row: (String, String, String, String) = sqlx::query_as(
        "SELECT token_in, amount_in::text, token_out, amount_out::text FROM swap WHERE tx_hash = $1",
    )
    .bind(format!("{swap_tx:#x}"))
    .fetch_one(&pool)
    .await
    .expect("swap row");
    assert_eq!(row.0, format!("{:#x}", d.usdc.token));
    assert_eq!(row.1, amount_in.to_string());
    assert_eq!(row.2, format!("{:#x}", d.weth.token));
    assert_eq!(row.3, quoted.to_string());
    // Pool state from Sync equals the pair's reserves now.
    for pair in &d.pairs {
        let (r0, r1, _) = d.reserves(*pair).await.expect("reserves");
        let state: (String, String) =
            sqlx::query_as("SELECT reserve0::text, reserve1::text FROM pool_state WHERE pool = $1")
                .bind(format!("{pair:#x}"))
                .fetch_one(&pool)
                .await
                .expect("pool_state row");
        assert_eq!(state, (r0.to_string(), r1.to_string()), "pool {pair:#x}");
    }
    // Lending position: principal flows of the wallet.
    let position: (String, String) = sqlx::query_as(
        "SELECT collateral::text, variable_debt::text FROM lending_position WHERE wallet = $1 AND reserve = $2",
    )
    .bind(format!("{who:#x}"))
    .bind(format!("{:#x}", d.usdc.token))
    .fetch_one(&pool)
    .await
    .expect("usdc position");
    assert_eq!(position.1, "600000000", "borrowed 1000 USDC, repaid 400");
    let weth_collateral = scalar(
        &pool,
        &format!(
            "SELECT collateral::text FROM lending_position WHERE wallet = '{who:#x}' AND reserve = '{:#x}'",
            d.weth.token
        ),
    )
    .await;
    assert_eq!(weth_collateral, (deposit - withdrawn).to_string());
    // The flash loan, with the amount the scenario borrowed.
    let loan = scalar(&pool, "SELECT amount::text FROM flash_loan").await;
    assert_eq!(loan, flash.details["loan"].as_str().expect("loan"));
    // The drain's burn.
    let burns = scalar(
        &pool,
        &format!(
            "SELECT count(*)::text FROM liquidity_event WHERE kind = 'burn' AND tx_hash = '{:#x}'",
            drain.transactions[0]
        ),
    )
    .await;
    assert_eq!(burns, "1");
    // Liquidations of the crash, and the oracle's last answer.
    let liquidations = scalar(&pool, "SELECT count(*)::text FROM liquidation").await;
    assert_eq!(liquidations, crash.details["liquidations"].to_string());
    let price = scalar(
        &pool,
        &format!(
            "SELECT price::text FROM oracle_price WHERE feed = '{:#x}'",
            d.weth.feed
        ),
    )
    .await;
    let expected = crash.details["price_after"].as_f64().expect("price");
    assert!(
        (price.parse::<f64>().expect("number") - expected).abs() < 1e-6,
        "{price} vs {expected}"
    );
    // Finality: the head is known; the newest rows are not final yet, old ones are.
    // (confirmations = 2: the position touched by the last transaction is not final yet; the
    // test wallet's, many blocks older, is.)
    let newest = scalar(
        &pool,
        "SELECT final::text FROM lending_position ORDER BY last_block DESC LIMIT 1",
    )
    .await;
    assert_eq!(newest, "false");
    let older = scalar(
        &pool,
        &format!("SELECT bool_and(final)::text FROM lending_position WHERE wallet = '{who:#x}'"),
    )
    .await;
    assert_eq!(older, "true");
    let head = scalar(
        &pool,
        "SELECT number::text FROM chain_head WHERE chain_id = 31337",
    )
    .await;
    let latest = d.provider.get_block_number().await.expect("block number");
    assert_eq!(head, latest.to_string());
}

/// Snapshot → k blocks of swaps → follow → revert → k+1 other blocks → follow, for several k;
/// then a fresh follower over the canonical chain into fresh topics must fold the same rows.
#[tokio::test]
async fn reorgs_up_to_64_blocks_are_retracted_and_read_models_equal_a_clean_replay() {
    let iso = Isolated::new("live_reorg").await;
    let c = chain(31337).await;
    let d = c.sim.d.clone();
    let who = Address::repeat_byte(0x43);
    d.fund(
        who,
        d.usdc.token,
        chainfold_simulate::contracts::units(1e9, 6),
    )
    .await
    .expect("fund");
    d.fund(
        who,
        d.weth.token,
        chainfold_simulate::contracts::units(1e5, 18),
    )
    .await
    .expect("fund");
    d.approve(who, d.usdc.token, d.router)
        .await
        .expect("approve");
    d.approve(who, d.weth.token, d.lending_pool)
        .await
        .expect("approve");
    let toml = chains_toml(&[&c], "");
    let mut f = follower(&iso, &toml).await;
    f.sync_to_head().await.expect("sync");
    let mut orphaned_swaps = 0u64;
    for (round, k) in [1u64, 7, 64].into_iter().enumerate() {
        let snapshot: U256 = d
            .provider
            .raw_request("evm_snapshot".into(), ())
            .await
            .expect("snapshot");
        for i in 0..k {
            d.swap(who, d.pairs[0], d.usdc.token, U256::from(1_000_000 + i))
                .await
                .expect("swap");
        }
        d.deposit(who, d.weth.token, U256::from(10_u64.pow(15) + round as u64))
            .await
            .expect("deposit");
        f.sync_to_head().await.expect("sync before reorg");
        orphaned_swaps += k;
        let reverted: bool = d
            .provider
            .raw_request("evm_revert".into(), (snapshot,))
            .await
            .expect("revert");
        assert!(reverted);
        for i in 0..=k {
            d.swap(who, d.pairs[0], d.usdc.token, U256::from(7_000_000 + i * 3))
                .await
                .expect("swap");
        }
        f.sync_to_head().await.expect("sync after reorg");
    }
    assert_eq!(f.stats.reorgs.load(std::sync::atomic::Ordering::Relaxed), 3);
    let pool = project(&iso).await;

    // A clean replay of the canonical chain.
    let fresh = Isolated::new("live_reorg_clean").await;
    let mut clean = follower(&fresh, &toml).await;
    clean.sync_to_head().await.expect("clean sync");
    let clean_pool = project(&fresh).await;
    for sql in [
        "SELECT event_id || ':' || amount_in || ':' || coalesce(block_hash, '') FROM swap ORDER BY 1",
        "SELECT pool || ':' || swap_count || ':' || reverted_count || ':' || first_block || ':' || last_block FROM pool_summary ORDER BY 1",
        "SELECT pool || ':' || token || ':' || volume_in || ':' || volume_out FROM pool_token_volume ORDER BY 1",
        "SELECT pool || ':' || reserve0 || ':' || reserve1 || ':' || block_hash FROM pool_state ORDER BY 1",
        "SELECT wallet || ':' || action || ':' || event_count FROM wallet_lending_summary ORDER BY 1",
        "SELECT wallet || ':' || reserve || ':' || collateral || ':' || variable_debt FROM lending_position ORDER BY 1",
        "SELECT event_id || ':' || block_hash FROM pool_sync ORDER BY 1",
    ] {
        let ours: Vec<String> = sqlx::query_scalar(sql).fetch_all(&pool).await.expect(sql);
        let theirs: Vec<String> = sqlx::query_scalar(sql).fetch_all(&clean_pool).await.expect(sql);
        assert!(!theirs.is_empty(), "{sql} is empty");
        assert_eq!(ours, theirs, "{sql}");
    }
    // The API answers from the corrected read models.
    let schema = chainfold_api::build_schema(pool.clone());
    let request = format!(
        "{{ pool(chainId: 31337, address: \"{:#x}\") {{ swapCount }} }}",
        d.pairs[0]
    );
    let response = serde_json::to_value(schema.execute(request.as_str()).await).expect("json");
    let canonical: i64 = sqlx::query_scalar("SELECT count(*) FROM swap WHERE pool = $1")
        .bind(format!("{:#x}", d.pairs[0]))
        .fetch_one(&clean_pool)
        .await
        .expect("count");
    assert_eq!(
        response["data"]["pool"]["swapCount"], canonical,
        "{response}"
    );
    // The retractions are in the log of record: one per orphaned swap, sync and deposit.
    let consumer: BaseConsumer =
        chainfold_platform::kafka::consumer_config(&iso.kafka, &chainfold_testkit::unique("check"))
            .create()
            .expect("consumer");
    let topics = iso.kafka.topics();
    consumer
        .subscribe(&[topics.amm.as_str(), topics.lending.as_str()])
        .expect("subscribe");
    let mut retracted_swaps = 0;
    let mut idle = 0;
    while idle < 20 {
        match consumer.poll(Duration::from_millis(250)) {
            Some(Ok(m)) => {
                idle = 0;
                let env =
                    chainfold_domain::envelope::decode_envelope(m.payload().unwrap_or_default())
                        .expect("an envelope");
                if env.retracted && matches!(env.event, chainfold_domain::DefiEvent::Swap(_)) {
                    retracted_swaps += 1;
                }
            }
            _ => idle += 1,
        }
    }
    assert_eq!(retracted_swaps, orphaned_swaps);
}

/// A proxy in front of anvil that refuses `eth_getLogs` over more than 3 blocks, as providers
/// refuse large ranges ("query returned more than 10000 results").
async fn refusing_proxy(upstream: String) -> String {
    use axum::routing::post;
    let client = reqwest::Client::new();
    let app = axum::Router::new().route(
        "/",
        post(move |body: axum::Json<serde_json::Value>| {
            let client = client.clone();
            let upstream = upstream.clone();
            async move {
                let req = body.0;
                if req["method"] == "eth_getLogs" {
                    let p = &req["params"][0];
                    let num = |v: &serde_json::Value| {
                        v.as_str().and_then(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok())
                    };
                    if let (Some(a), Some(b)) = (num(&p["fromBlock"]), num(&p["toBlock"])) {
                        if b - a + 1 > 3 {
                            return axum::Json(serde_json::json!({
                                "jsonrpc": "2.0", "id": req["id"],
                                "error": {"code": -32005, "message": "query returned more than 10000 results"}
                            }));
                        }
                    }
                }
                let resp: serde_json::Value = client
                    .post(&upstream)
                    .json(&req)
                    .send()
                    .await
                    .expect("upstream")
                    .json()
                    .await
                    .expect("upstream json");
                axum::Json(resp)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

#[tokio::test]
async fn backfill_splits_ranges_a_provider_refuses_and_still_finishes() {
    let iso = Isolated::new("live_split").await;
    let c = chain(31337).await;
    let d = c.sim.d.clone();
    let who = Address::repeat_byte(0x44);
    d.fund(
        who,
        d.usdc.token,
        chainfold_simulate::contracts::units(1e9, 6),
    )
    .await
    .expect("fund");
    d.approve(who, d.usdc.token, d.router)
        .await
        .expect("approve");
    for i in 0..30u64 {
        d.swap(who, d.pairs[0], d.usdc.token, U256::from(5_000_000 + i))
            .await
            .expect("swap");
    }
    let proxy = refusing_proxy(c.anvil.http_url()).await;
    let toml = chains_toml(&[&c], "reorg_window = 2\nmax_range = 64\nconcurrency = 2")
        .replace(&c.anvil.http_url(), &proxy);
    let mut f = follower(&iso, &toml).await;
    f.sync_to_head()
        .await
        .expect("backfill finishes through the refusing proxy");
    assert!(
        f.stats
            .range_splits
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );
    let pool = project(&iso).await;
    let swaps = scalar(
        &pool,
        &format!("SELECT count(*)::text FROM swap WHERE recipient = '{who:#x}'"),
    )
    .await;
    assert_eq!(swaps, "30");
}

#[tokio::test]
async fn one_process_follows_two_chains_and_rows_keep_their_chain_id() {
    let iso = Isolated::new("live_two").await;
    let a = chain(31337).await;
    let b = chain(31338).await;
    let who = Address::repeat_byte(0x45);
    for (c, n) in [(&a, 2u64), (&b, 5)] {
        let d = &c.sim.d;
        d.fund(
            who,
            d.usdc.token,
            chainfold_simulate::contracts::units(1e9, 6),
        )
        .await
        .expect("fund");
        d.approve(who, d.usdc.token, d.router)
            .await
            .expect("approve");
        for i in 0..n {
            d.swap(who, d.pairs[0], d.usdc.token, U256::from(9_000_000 + i))
                .await
                .expect("swap");
        }
    }
    let dir = std::env::temp_dir().join(chainfold_testkit::unique("chains"));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("chains.toml");
    std::fs::write(&file, chains_toml(&[&a, &b], "")).expect("write");
    let args = chainfold_ingest::rpc::RpcArgs {
        chains: file,
        until_head: true,
        forget_chain: None,
        standby_poll: std::time::Duration::from_secs(1),
        // This test publishes JSON text (`--envelope-json`): the form other consumers read,
        // and the form older builds wrote. The projector reads it as it reads the binary form.
        kafka: chainfold_platform::config::KafkaArgs {
            envelope_json: true,
            ..iso.kafka.clone()
        },
        postgres: iso.postgres.clone(),
    };
    chainfold_ingest::rpc::run(&args, std::future::pending())
        .await
        .expect("ingest both chains");
    let published = chainfold_testkit::read_topic(
        &iso.kafka,
        &iso.kafka.topics().amm,
        1,
        Duration::from_secs(10),
    );
    assert!(
        published.iter().all(|p| p.first() == Some(&b'{')),
        "published as JSON text"
    );
    let pool = project(&iso).await;
    let rows: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT chain_id, count(*) FROM swap WHERE recipient = $1 GROUP BY chain_id ORDER BY chain_id",
    )
    .bind(format!("{who:#x}"))
    .fetch_all(&pool)
    .await
    .expect("rows");
    assert_eq!(rows, vec![(31337, 2), (31338, 5)]);
    let heads: Vec<i64> = sqlx::query_scalar("SELECT chain_id FROM chain_head ORDER BY chain_id")
        .fetch_all(&pool)
        .await
        .expect("heads");
    assert_eq!(heads, vec![31337, 31338]);
}

#[tokio::test]
async fn a_watched_log_that_does_not_decode_goes_to_the_dlq_and_the_rest_is_projected() {
    let iso = Isolated::new("live_dlq").await;
    let c = chain(31337).await;
    let d = c.sim.d.clone();
    let (bad, bad_tx) = d.emit_bad_sync().await.expect("bad log");
    let who = Address::repeat_byte(0x46);
    d.fund(
        who,
        d.usdc.token,
        chainfold_simulate::contracts::units(1e9, 6),
    )
    .await
    .expect("fund");
    d.approve(who, d.usdc.token, d.router)
        .await
        .expect("approve");
    d.swap(who, d.pairs[0], d.usdc.token, U256::from(3_000_000_u64))
        .await
        .expect("swap");
    let toml = format!(
        "{}\n[[chain.contract]]\naddress = \"{bad:#x}\"\nkind = \"uniswap_v2_pair\"\n",
        chains_toml(&[&c], "")
    );
    let mut f = follower(&iso, &toml).await;
    f.sync_to_head().await.expect("sync");
    assert_eq!(
        f.stats
            .dead_lettered
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    let consumer: BaseConsumer =
        chainfold_platform::kafka::consumer_config(&iso.kafka, &chainfold_testkit::unique("dlq"))
            .create()
            .expect("consumer");
    let dlq = chainfold_domain::topics::dlq(&iso.kafka.topics().amm);
    consumer.subscribe(&[dlq.as_str()]).expect("subscribe");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let message = loop {
        assert!(
            std::time::Instant::now() < deadline,
            "no dead letter within 30 s"
        );
        if let Some(result) = consumer.poll(Duration::from_millis(500)) {
            break result.expect("read dlq").detach();
        }
    };
    use rdkafka::message::Headers as _;
    let headers = message.headers().expect("headers");
    let reason = headers
        .iter()
        .find(|h| h.key == chainfold_domain::topics::headers::DLQ_REASON)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).to_string())
        .expect("a reason");
    assert!(
        reason.contains("could not decode Sync(uint112,uint112) log"),
        "{reason}"
    );
    let payload = String::from_utf8_lossy(message.payload().expect("payload")).to_string();
    assert!(
        payload.contains(&format!("{bad_tx:#x}")),
        "the raw log is kept: {payload}"
    );
    let pool = project(&iso).await;
    let swaps = scalar(
        &pool,
        &format!("SELECT count(*)::text FROM swap WHERE recipient = '{who:#x}'"),
    )
    .await;
    assert_eq!(swaps, "1");
}

#[test]
fn the_compiled_fixtures_match_their_solidity_sources() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures");
    let status = std::process::Command::new("node")
        .args(["compile.js", "--check"])
        .current_dir(&root)
        .status()
        .expect("node runs (scripts/stack up installs the fixtures' npm packages)");
    assert!(
        status.success(),
        "fixtures/build is stale: run `node compile.js` in fixtures/"
    );
}

/// The follower as `chainfold ingest rpc` runs it: heads pushed over WebSocket (`newHeads`),
/// each new block published without polling for it.
#[tokio::test]
async fn new_heads_pushed_over_websocket_are_followed() {
    let iso = Isolated::new("live_ws").await;
    let c = chain(31337).await;
    let d = c.sim.d.clone();
    let who = Address::repeat_byte(0x47);
    d.fund(
        who,
        d.usdc.token,
        chainfold_simulate::contracts::units(1e9, 6),
    )
    .await
    .expect("fund");
    d.approve(who, d.usdc.token, d.router)
        .await
        .expect("approve");
    // Polling every 10 minutes: only a pushed head can wake the follower in time.
    let toml = c
        .sim
        .d
        .chains_toml("anvil", &c.anvil.http_url(), Some(&c.anvil.ws_url()), 2)
        .replace("poll_interval = \"100ms\"", "poll_interval = \"10m\"");
    let f = follower(&iso, &toml).await;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(f.run(async move {
        let _ = stop_rx.await;
    }));
    let pool = chainfold_platform::postgres::connect_and_migrate(&iso.postgres)
        .await
        .expect("pg");
    // Let the first pass reach the head, then mine swaps.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for i in 0..3u64 {
        d.swap(who, d.pairs[0], d.usdc.token, U256::from(2_000_000 + i))
            .await
            .expect("swap");
    }
    let latest = d.provider.get_block_number().await.expect("number");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let at: Option<i64> =
            sqlx::query_scalar("SELECT block_number FROM ingest_checkpoint WHERE chain_id = 31337")
                .fetch_optional(&pool)
                .await
                .expect("checkpoint");
        if at == Some(latest as i64) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "follower stuck at {at:?}, head {latest}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop_tx.send(());
    task.await.expect("join").expect("follower ran cleanly");
    let pool = project(&iso).await;
    let swaps = scalar(
        &pool,
        &format!("SELECT count(*)::text FROM swap WHERE recipient = '{who:#x}'"),
    )
    .await;
    assert_eq!(swaps, "3");
}

#[tokio::test]
async fn an_unreachable_endpoint_is_a_clear_error_without_the_key() {
    let iso = Isolated::new("live_unreachable").await;
    let toml = r#"
        [[chain]]
        chain_id = 1
        name = "mainnet"
        rpc_url = "http://127.0.0.1:1/v2/SECRETKEY"
        [[chain.contract]]
        address = "0x87870Bca3F3fD6335C3F4ce8392D69350B4fA4E2"
        kind = "aave_v3_pool"
    "#;
    let chain = ChainsFile::parse(toml)
        .expect("valid file")
        .chains
        .remove(0);
    let pool = chainfold_platform::postgres::connect_and_migrate(&iso.postgres)
        .await
        .expect("pg");
    let producer = chainfold_platform::kafka::producer(&iso.kafka).expect("producer");
    let err = Follower::new(chain, producer, iso.kafka.topics(), pool)
        .await
        .expect_err("nothing listens on port 1");
    let text = format!("{err:#}");
    assert!(
        text.starts_with("chain mainnet: could not reach http://127.0.0.1:1/…"),
        "{text}"
    );
    assert!(!text.contains("SECRETKEY"), "{text}");
}

/// Uniswap V3 and Aave V3 signatures, emitted on anvil with chosen values, decoded and folded.
#[tokio::test]
async fn v3_pool_and_aave_v3_events_decode_with_the_values_sent() {
    use alloy::primitives::aliases::{I24, U160};
    use alloy::primitives::I256;
    use chainfold_simulate::contracts::{FixtureAaveV3Events, FixtureV3Events};
    let iso = Isolated::new("live_v3").await;
    let c = chain(31337).await;
    let d = c.sim.d.clone();
    let (v3, aave3) = d.deploy_v3_emitters().await.expect("emitters");
    let me = d.deployer;
    let (alice, bob) = (Address::repeat_byte(0xa1), Address::repeat_byte(0xb2));
    let pool = FixtureV3Events::new(v3, &d.provider);
    let sqrt = U160::from(1_234_567_890_123_456_789_u128);
    let tick = I24::try_from(-200_000_i32).expect("fits");
    let send = |tx: alloy::rpc::types::TransactionRequest| {
        let d = d.clone();
        async move { d.confirm(tx.from(me)).await.expect("mined") }
    };
    // 5 USDC in (token0), 0.002 WETH out (token1).
    send(
        pool.swap(
            alice,
            I256::try_from(5_000_000_i64).expect("fits"),
            I256::try_from(-2_000_000_000_000_000_i64).expect("fits"),
            sqrt,
            987_654_321,
            tick,
        )
        .into_transaction_request(),
    )
    .await;
    send(
        pool.mint(
            alice,
            I24::try_from(-887_220_i32).expect("fits"),
            I24::try_from(887_220_i32).expect("fits"),
            1_000,
            U256::from(10_u64),
            U256::from(20_u64),
        )
        .into_transaction_request(),
    )
    .await;
    send(
        pool.burn(
            I24::try_from(-60_i32).expect("fits"),
            I24::try_from(60_i32).expect("fits"),
            500,
            U256::from(5_u64),
            U256::from(7_u64),
        )
        .into_transaction_request(),
    )
    .await;
    let aave = FixtureAaveV3Events::new(aave3, &d.provider);
    send(
        aave.supply(d.usdc.token, alice, U256::from(1_000_000_u64))
            .into_transaction_request(),
    )
    .await;
    send(
        aave.withdraw(d.usdc.token, bob, U256::from(400_000_u64))
            .into_transaction_request(),
    )
    .await;
    send(
        aave.borrow(d.weth.token, alice, U256::from(10_u64.pow(17)))
            .into_transaction_request(),
    )
    .await;
    send(
        aave.repay(d.weth.token, alice, U256::from(5 * 10_u64.pow(16)))
            .into_transaction_request(),
    )
    .await;
    send(
        aave.liquidationCall(
            d.weth.token,
            d.usdc.token,
            alice,
            U256::from(300_000_u64),
            U256::from(10_u64.pow(15)),
        )
        .into_transaction_request(),
    )
    .await;
    send(
        aave.flashLoan(
            bob,
            d.usdc.token,
            U256::from(9_000_000_u64),
            U256::from(8_100_u64),
        )
        .into_transaction_request(),
    )
    .await;
    let toml = format!(
        "{}\n[[chain.contract]]\naddress = \"{v3:#x}\"\nkind = \"uniswap_v3_pool\"\n\n[[chain.contract]]\naddress = \"{aave3:#x}\"\nkind = \"aave_v3_pool\"\n",
        chains_toml(&[&c], "")
    );
    let mut f = follower(&iso, &toml).await;
    f.sync_to_head().await.expect("sync");
    let pool_db = project(&iso).await;
    let swap: (String, String, String, String, String, String, i32) = sqlx::query_as(
        "SELECT token_in, amount_in::text, token_out, amount_out::text, sqrt_price_x96::text, liquidity::text, tick FROM swap WHERE pool = $1",
    )
    .bind(format!("{v3:#x}"))
    .fetch_one(&pool_db)
    .await
    .expect("v3 swap");
    assert_eq!(
        swap,
        (
            format!("{:#x}", d.usdc.token),
            "5000000".into(),
            format!("{:#x}", d.weth.token),
            "2000000000000000".into(),
            sqrt.to_string(),
            "987654321".into(),
            -200_000
        )
    );
    let state = scalar(
        &pool_db,
        &format!("SELECT tick::text FROM pool_v3_state WHERE pool = '{v3:#x}'"),
    )
    .await;
    assert_eq!(state, "-200000");
    type LiquidityRow = (
        String,
        Option<String>,
        String,
        String,
        Option<String>,
        Option<i32>,
        Option<i32>,
    );
    let liquidity: Vec<LiquidityRow> = sqlx::query_as(
        "SELECT kind, owner, amount0::text, amount1::text, liquidity::text, tick_lower, tick_upper FROM liquidity_event WHERE pool = $1 ORDER BY block_number",
    )
    .bind(format!("{v3:#x}"))
    .fetch_all(&pool_db)
    .await
    .expect("liquidity");
    assert_eq!(
        liquidity,
        vec![
            (
                "mint".into(),
                Some(format!("{alice:#x}")),
                "10".into(),
                "20".into(),
                Some("1000".into()),
                Some(-887_220),
                Some(887_220)
            ),
            (
                "burn".into(),
                Some(format!("{me:#x}")),
                "5".into(),
                "7".into(),
                Some("500".into()),
                Some(-60),
                Some(60)
            ),
        ]
    );
    let lending: Vec<(String, String, String, String, Option<String>)> = sqlx::query_as(
        "SELECT action, wallet, symbol, amount::text, counterparty FROM lending_event WHERE protocol = 'aave_v3' ORDER BY block_number",
    )
    .fetch_all(&pool_db)
    .await
    .expect("lending");
    let (a, b, m) = (
        format!("{alice:#x}"),
        format!("{bob:#x}"),
        format!("{me:#x}"),
    );
    assert_eq!(
        lending,
        vec![
            (
                "deposit".into(),
                a.clone(),
                "USDC".into(),
                "1000000".into(),
                Some(m.clone())
            ),
            (
                "redeem".into(),
                m.clone(),
                "USDC".into(),
                "400000".into(),
                Some(b.clone())
            ),
            (
                "borrow".into(),
                a.clone(),
                "WETH".into(),
                "100000000000000000".into(),
                Some(m.clone())
            ),
            (
                "repay".into(),
                a.clone(),
                "WETH".into(),
                "50000000000000000".into(),
                Some(m.clone())
            ),
            (
                "liquidation".into(),
                a.clone(),
                "USDC".into(),
                "300000".into(),
                Some(m.clone())
            ),
        ]
    );
    let seized = scalar(&pool_db, "SELECT collateral_symbol || ':' || collateral_amount FROM liquidation WHERE wallet IN (SELECT wallet FROM lending_event WHERE protocol = 'aave_v3')").await;
    assert_eq!(seized, "WETH:1000000000000000");
    let loan: (String, String, String, String, String) = sqlx::query_as(
        "SELECT target, initiator, symbol, amount::text, premium::text FROM flash_loan WHERE protocol = 'aave_v3'",
    )
    .fetch_one(&pool_db)
    .await
    .expect("flash loan");
    assert_eq!(loan, (b, m, "USDC".into(), "9000000".into(), "8100".into()));
}

/// `[[chain.factory]]`: pairs the factory creates are watched from their creation on, in
/// backfill (created and traded inside one fetched range) and at the head, and after a restart.
#[tokio::test]
async fn pools_announced_by_a_watched_factory_are_followed_from_their_creation() {
    use chainfold_simulate::contracts::units;
    let iso = Isolated::new("live_factory").await;
    let c = chain(31337).await;
    let d = c.sim.d.clone();
    let who = Address::repeat_byte(0x48);
    for (token, amount) in [
        (d.weth.token, units(1e4, 18)),
        (d.usdc.token, units(1e9, 6)),
        (d.wbtc.token, units(1e3, 8)),
    ] {
        d.fund(who, token, amount).await.expect("fund");
        d.approve(who, token, d.router).await.expect("approve");
    }
    let factory = d.deploy_factory().await.expect("factory");
    let trade =
        |pair: Address, a: (Address, U256), b: (Address, U256), swap_in: (Address, U256)| {
            let d = d.clone();
            async move {
                let (token0, _) = d.tokens(pair).await.expect("tokens");
                let (x, y) = if token0 == a.0 {
                    (a.1, b.1)
                } else {
                    (b.1, a.1)
                };
                d.add_liquidity(who, pair, x, y).await.expect("liquidity");
                d.swap(who, pair, swap_in.0, swap_in.1).await.expect("swap");
            }
        };
    let first = d
        .create_pair(factory, d.weth.token, d.usdc.token)
        .await
        .expect("pair");
    trade(
        first,
        (d.weth.token, units(10.0, 18)),
        (d.usdc.token, units(20_000.0, 6)),
        (d.usdc.token, units(100.0, 6)),
    )
    .await;
    // Bury the first pair's creation and trades below the reorg window: backfill finds them.
    let _: serde_json::Value = d
        .provider
        .raw_request("anvil_mine".into(), (U256::from(5u8),))
        .await
        .expect("mine");
    // Only the factory is configured: both pairs are found through it.
    let toml = format!(
        "[[chain]]\nchain_id = 31337\nname = \"anvil\"\nrpc_url = \"{}\"\nreorg_window = 3\n\n[[chain.factory]]\naddress = \"{factory:#x}\"\nkind = \"uniswap_v2_factory\"\n",
        c.anvil.http_url()
    );
    let mut f = follower(&iso, &toml).await;
    f.sync_to_head().await.expect("backfill");
    let second = d
        .create_pair(factory, d.wbtc.token, d.usdc.token)
        .await
        .expect("pair");
    trade(
        second,
        (d.wbtc.token, units(1.0, 8)),
        (d.usdc.token, units(30_000.0, 6)),
        (d.usdc.token, units(50.0, 6)),
    )
    .await;
    f.sync_to_head().await.expect("head");
    drop(f);
    // A restarted follower remembers both pairs.
    d.swap(who, first, d.weth.token, units(0.01, 18))
        .await
        .expect("swap");
    let mut again = follower(&iso, &toml).await;
    again.sync_to_head().await.expect("restart");
    let pool = project(&iso).await;
    let counts: Vec<(String, i64)> =
        sqlx::query_as("SELECT pool, count(*) FROM swap GROUP BY pool ORDER BY pool")
            .fetch_all(&pool)
            .await
            .expect("counts");
    let mut expected = vec![(format!("{first:#x}"), 2), (format!("{second:#x}"), 1)];
    expected.sort();
    assert_eq!(counts, expected);
    for pair in [first, second] {
        let (r0, r1, _) = d.reserves(pair).await.expect("reserves");
        let state: (String, String) =
            sqlx::query_as("SELECT reserve0::text, reserve1::text FROM pool_state WHERE pool = $1")
                .bind(format!("{pair:#x}"))
                .fetch_one(&pool)
                .await
                .expect("pool state");
        assert_eq!(state, (r0.to_string(), r1.to_string()));
    }
}

/// A `poolUpdated` subscriber is sent a pool's new reserves; a reorg orphans that block; the
/// subscriber then receives the retraction of exactly what it was sent (same cursor named in
/// `retracts`), followed by the canonical chain's reserves, which equal the read model's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reorg_retracts_pushed_pool_updates_to_subscribers() {
    use futures::StreamExt as _;
    let iso = Isolated::new("live_retract").await;
    let c = chain(31337).await;
    let d = c.sim.d.clone();
    let who = Address::repeat_byte(0x44);
    d.fund(
        who,
        d.usdc.token,
        chainfold_simulate::contracts::units(1e9, 6),
    )
    .await
    .expect("fund");
    d.approve(who, d.usdc.token, d.router)
        .await
        .expect("approve");
    let toml = chains_toml(&[&c], "");
    let mut f = follower(&iso, &toml).await;
    f.sync_to_head().await.expect("sync");
    let pool = project(&iso).await;

    let hub = chainfold_api::live::Hub::start(pool.clone())
        .await
        .expect("hub");
    let schema = chainfold_api::schema::build_full(pool.clone(), None, Some(hub));
    let pair = format!("{:#x}", d.pairs[0]);
    let request = async_graphql::Request::new(format!(
        r#"subscription {{ poolUpdated(chainId: 31337, pools: ["{pair}"]) {{ cursor reserves blockNumber retracted retracts }} }}"#
    ))
    .data(chainfold_api::auth::Caller::Key {
        id: 1,
        name: "test".into(),
        rate_per_minute: 600,
    });
    let mut stream = schema.execute_stream(request);
    macro_rules! next {
        () => {{
            let response = tokio::time::timeout(Duration::from_secs(30), stream.next())
                .await
                .expect("an update within 30 s")
                .expect("stream open");
            assert!(response.errors.is_empty(), "{:?}", response.errors);
            let v = response.data.into_json().expect("json");
            v["poolUpdated"].clone()
        }};
    }
    // A subscription stream starts (and joins the feed) when first polled: nothing is there yet.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), stream.next())
            .await
            .is_err()
    );

    let snapshot: U256 = d
        .provider
        .raw_request("evm_snapshot".into(), ())
        .await
        .expect("snapshot");
    d.swap(who, d.pairs[0], d.usdc.token, U256::from(5_000_000u64))
        .await
        .expect("swap");
    f.sync_to_head().await.expect("sync before reorg");
    project(&iso).await;
    let sent = next!();
    assert_eq!(sent["retracted"], false, "{sent}");
    let orphaned_block = sent["blockNumber"].as_i64().expect("block");

    let reverted: bool = d
        .provider
        .raw_request("evm_revert".into(), (snapshot,))
        .await
        .expect("revert");
    assert!(reverted);
    for amount in [7_000_000u64, 9_000_000] {
        d.swap(who, d.pairs[0], d.usdc.token, U256::from(amount))
            .await
            .expect("swap");
    }
    f.sync_to_head().await.expect("sync after reorg");
    project(&iso).await;

    let retraction = next!();
    assert_eq!(retraction["retracted"], true, "{retraction}");
    assert_eq!(retraction["retracts"], sent["cursor"], "{retraction}");
    assert_eq!(retraction["reserves"], sent["reserves"]);
    assert_eq!(retraction["blockNumber"].as_i64(), Some(orphaned_block));
    assert!(
        retraction["cursor"]
            .as_str()
            .unwrap_or_default()
            .parse::<i64>()
            .expect("cursor")
            > sent["cursor"]
                .as_str()
                .unwrap_or_default()
                .parse::<i64>()
                .expect("cursor")
    );
    let first = next!();
    let second = next!();
    assert_eq!(first["retracted"], false);
    assert_eq!(second["retracted"], false);
    assert_ne!(first["reserves"], sent["reserves"]);
    let state: (String, String) = sqlx::query_as(
        "SELECT reserve0::text, reserve1::text FROM pool_state WHERE chain_id = 31337 AND pool = $1",
    )
    .bind(&pair)
    .fetch_one(&pool)
    .await
    .expect("pool state");
    assert_eq!(second["reserves"], serde_json::json!([state.0, state.1]));
}
