//! Live-ingest benchmark on a local anvil, all figures from one run:
//!
//! 1. Decode throughput: every log `chainfold simulate` produced (recorded swaps, lending flows,
//!    oracle answers, scenarios), decoded (`sol!` ABI) alone, and decoded + normalised into
//!    envelopes + JSON-encoded; medians of 5 passes, in logs/s.
//! 2. Backfill end to end: a fresh follower over the whole simulated chain (eth_getLogs over
//!    adaptive ranges, publish, checkpoint), median of 3 runs, in logs/s and blocks/s.
//! 3. Head-to-projected latency over N blocks (default 1000): one swap per block; from the moment
//!    the node returned the mined transaction to the moment the follower's checkpoint reached the
//!    block (published and acknowledged) and to the moment its `swap` row is committed in
//!    Postgres by a running projector. Median and p99, with the projector's default 50 ms batch
//!    wait, with 5 ms, and with 5 ms plus the consumer's `fetch.wait.max.ms` at 5 (default 50). Baseline in the same run: the floor of one block's work on the same
//!    services, done by hand 200 times (read the header, `eth_getLogs` by block hash, produce
//!    one record and wait for its acknowledgement, commit one Postgres row).
//!
//! `cargo bench -p chainfold-tests --bench live -- [blocks]`. Services as for the tests.

use std::time::{Duration, Instant};

use alloy::primitives::{Address, U256};
use alloy::providers::{Provider, ProviderBuilder};
use alloy::rpc::types::Filter;
use chainfold_ingest::rpc::abi::{decode_log, ContractKind};
use chainfold_ingest::rpc::config::ChainsFile;
use chainfold_ingest::rpc::follow::Follower;
use chainfold_ingest::rpc::normalize::{normalize, FeedMeta, LogMeta, Metadata};
use chainfold_simulate::anvil::Anvil;
use chainfold_testkit::{data_dir, Isolated};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

async fn follower(iso: &Isolated, toml: &str) -> Follower {
    let chain = ChainsFile::parse(toml).expect("chains").chains.remove(0);
    let pool = chainfold_platform::postgres::connect_and_migrate(&iso.postgres)
        .await
        .expect("pg");
    let topics = iso.kafka.topics();
    chainfold_platform::kafka::ensure_topics(&iso.kafka, &topics.all())
        .await
        .expect("topics");
    let producer = chainfold_platform::kafka::producer(&iso.kafka).expect("producer");
    Follower::new(chain, producer, topics, pool)
        .await
        .expect("follower")
}

async fn decode_bench(anvil: &Anvil, toml: &str) {
    let file = ChainsFile::parse(toml).expect("chains");
    let chain = &file.chains[0];
    let provider = ProviderBuilder::new().connect_http(anvil.http_url().parse().expect("url"));
    let kinds: std::collections::HashMap<Address, ContractKind> = chain
        .contracts
        .iter()
        .map(|c| (c.address, c.kind))
        .collect();
    let filter = Filter::new()
        .address(kinds.keys().copied().collect::<Vec<_>>())
        .from_block(0)
        .to_block(provider.get_block_number().await.expect("head"));
    let logs = provider.get_logs(&filter).await.expect("logs");
    // Metadata as the follower learns it, built here from the decoded data so the loop is pure.
    let mut md = Metadata::default();
    for c in &chain.contracts {
        md.feeds.insert(
            c.address,
            FeedMeta {
                description: "bench".into(),
                decimals: 8,
                asset: c.asset,
            },
        );
        md.pairs.insert(
            c.address,
            (Address::repeat_byte(1), Address::repeat_byte(2)),
        );
    }
    for log in &logs {
        if let Ok(raw) = decode_log(kinds[&log.address()], &log.inner) {
            for t in raw.tokens() {
                md.tokens.insert(
                    t,
                    chainfold_domain::Reserve {
                        address: t,
                        symbol: "T".into(),
                        decimals: 18,
                    },
                );
            }
        }
    }
    let metas: Vec<LogMeta> = logs
        .iter()
        .map(|l| LogMeta {
            chain_id: 31337,
            address: l.address(),
            block_number: l.block_number.unwrap_or_default(),
            block_hash: l.block_hash.unwrap_or_default(),
            block_time: None,
            tx_hash: l.transaction_hash.unwrap_or_default(),
            tx_index: l.transaction_index.unwrap_or_default() as u32,
            log_index: l.log_index.unwrap_or_default() as u32,
        })
        .collect();
    let (mut decode_only, mut full) = (Vec::new(), Vec::new());
    let mut watched = 0;
    for _ in 0..5 {
        let started = Instant::now();
        let mut n = 0;
        for log in &logs {
            if decode_log(kinds[&log.address()], &log.inner).is_ok() {
                n += 1;
            }
        }
        decode_only.push(logs.len() as f64 / started.elapsed().as_secs_f64());
        watched = n;
        let started = Instant::now();
        let mut bytes = 0;
        for (log, meta) in logs.iter().zip(&metas) {
            if let Ok(raw) = decode_log(kinds[&log.address()], &log.inner) {
                let env = normalize(raw, meta, &md).expect("normalises");
                bytes += chainfold_ingest::publish::encode(&env).len();
            }
        }
        std::hint::black_box(bytes);
        full.push(logs.len() as f64 / started.elapsed().as_secs_f64());
    }
    println!(
        "decode: {} logs of the watched contracts ({} of watched events); decode alone {:.0} logs/s; decode + normalise + JSON {:.0} logs/s (medians of 5)",
        logs.len(),
        watched,
        median(decode_only),
        median(full)
    );
}

async fn backfill_bench(toml: &str, blocks: u64) {
    let mut rates = Vec::new();
    let mut log_rates = Vec::new();
    for run in 0..3 {
        let iso = Isolated::new(&format!("bench_backfill{run}")).await;
        let mut f = follower(&iso, toml).await;
        let started = Instant::now();
        f.sync_to_head().await.expect("backfill");
        let secs = started.elapsed().as_secs_f64();
        let logs = f.stats.logs.load(std::sync::atomic::Ordering::Relaxed);
        rates.push(blocks as f64 / secs);
        log_rates.push(logs as f64 / secs);
    }
    println!(
        "backfill (eth_getLogs ranges + publish + checkpoint, fresh topics each run): {:.0} blocks/s, {:.0} logs/s (medians of 3)",
        median(rates),
        median(log_rates)
    );
}

async fn latency_bench(blocks: usize, batch_wait: Duration, fetch_wait_ms: Option<u32>) {
    let mut iso = Isolated::new("bench_latency").await;
    if let Some(ms) = fetch_wait_ms {
        iso.kafka
            .options
            .push(("fetch.wait.max.ms".into(), ms.to_string()));
    }
    let anvil = Anvil::spawn(31337).expect("anvil");
    let weth = chainfold_simulate::prices(&data_dir(), "WETH").expect("prices");
    let wbtc = chainfold_simulate::prices(&data_dir(), "WBTC").expect("prices");
    let d = chainfold_simulate::Deployment::deploy(&anvil.http_url(), weth[0], wbtc[0])
        .await
        .expect("deploy");
    let mut sim = chainfold_simulate::Sim::new(d.clone(), weth, wbtc);
    sim.seed_liquidity().await.expect("seed");
    let who = Address::repeat_byte(0x99);
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
    let toml = d.chains_toml("anvil", &anvil.http_url(), Some(&anvil.ws_url()), 2);
    let f = follower(&iso, &toml).await;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut s1 = stop_rx.clone();
    let ingest = tokio::spawn(f.run(async move {
        let _ = s1.wait_for(|s| *s).await;
    }));
    let mut config = chainfold_projector::Config::new(
        iso.kafka.clone(),
        iso.postgres.clone(),
        iso.redis.clone(),
        iso.group.clone(),
    );
    config.batch_wait = batch_wait;
    let projector = chainfold_projector::App::build(config)
        .await
        .expect("projector");
    let pool = projector.pool().clone();
    let mut s2 = stop_rx.clone();
    let project = tokio::spawn(projector.run_until_stopped(async move {
        let _ = s2.wait_for(|s| *s).await;
    }));
    // The baseline: one block's work by hand on the same services.
    let floor = {
        let http = ProviderBuilder::new().connect_http(anvil.http_url().parse().expect("url"));
        let producer = chainfold_platform::kafka::producer(&iso.kafka).expect("producer");
        let scratch = iso.kafka.topics().blocks.clone();
        let mut samples = Vec::new();
        for n in 0..200 {
            let started = Instant::now();
            let number = http.get_block_number().await.expect("number");
            let block = http
                .get_block_by_number(number.into())
                .await
                .expect("block")
                .expect("exists");
            let _ = http
                .get_logs(&Filter::new().at_block_hash(block.header.hash))
                .await
                .expect("logs");
            let delivery = producer
                .send_result(
                    rdkafka::producer::FutureRecord::to(&scratch)
                        .key("floor")
                        .payload("{}"),
                )
                .map_err(|(e, _)| e)
                .expect("enqueue");
            delivery.await.expect("delivery").expect("ack");
            let mut tx = pool.begin().await.expect("tx");
            sqlx::query("INSERT INTO consumer_offset (group_id, topic, partition_id, next_offset) VALUES ('bench-floor', 'floor', $1, 0) ON CONFLICT DO NOTHING")
                .bind(n)
                .execute(&mut *tx)
                .await
                .expect("insert");
            tx.commit().await.expect("commit");
            samples.push(started.elapsed().as_secs_f64() * 1e3);
        }
        median(samples)
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (mut to_published, mut to_row) = (Vec::new(), Vec::new());
    for i in 0..blocks {
        let (tx, block) = d
            .swap(
                who,
                d.pairs[0],
                d.usdc.token,
                U256::from(1_000_000 + i as u64),
            )
            .await
            .expect("swap");
        let mined = Instant::now();
        loop {
            let at: Option<i64> = sqlx::query_scalar(
                "SELECT block_number FROM ingest_checkpoint WHERE chain_id = 31337",
            )
            .fetch_optional(&pool)
            .await
            .expect("checkpoint");
            if at.is_some_and(|b| b >= block as i64) {
                to_published.push(mined.elapsed().as_secs_f64() * 1e3);
                break;
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        let hash = format!("{tx:#x}");
        loop {
            let found: Option<i32> = sqlx::query_scalar("SELECT 1 FROM swap WHERE tx_hash = $1")
                .bind(&hash)
                .fetch_optional(&pool)
                .await
                .expect("query");
            if found.is_some() {
                to_row.push(mined.elapsed().as_secs_f64() * 1e3);
                break;
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
    }
    let _ = stop_tx.send(true);
    ingest.await.expect("join").expect("ingest");
    project.await.expect("join").expect("projector");
    println!(
        "latency over {blocks} blocks, projector batch wait {batch_wait:?}, consumer fetch.wait.max.ms {}: one block's work by hand (baseline) median {floor:.1} ms; mined to published by the follower median {:.1} ms p99 {:.1} ms ({:.1}x the baseline); mined to projected row median {:.1} ms p99 {:.1} ms",
        fetch_wait_ms.map_or("50 (default)".to_owned(), |ms| ms.to_string()),
        median(to_published.clone()),
        percentile(to_published.clone(), 0.99),
        median(to_published) / floor.max(1e-9),
        median(to_row.clone()),
        percentile(to_row, 0.99),
    );
}

#[tokio::main]
async fn main() {
    let blocks: usize = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .and_then(|a| a.parse().ok())
        .unwrap_or(1000);
    let anvil = Anvil::spawn(31337).expect("anvil");
    let out = std::env::temp_dir().join(chainfold_testkit::unique("bench-sim"));
    std::fs::create_dir_all(&out).expect("dir");
    let args = chainfold_simulate::SimulateArgs {
        rpc_url: Some(anvil.http_url()),
        chain_id: 31337,
        data_dir: data_dir(),
        swaps: 200,
        pools: 2,
        wallets: 6,
        price_hours: 120,
        no_scenarios: false,
        labels: out.join("labels.jsonl"),
        chains_out: out.join("chains.toml"),
        exit: true,
    };
    let started = Instant::now();
    let summary = chainfold_simulate::run(&args).await.expect("simulate");
    println!(
        "simulate: {summary} ({:.1} s)",
        started.elapsed().as_secs_f64()
    );
    let toml = std::fs::read_to_string(&args.chains_out).expect("chains file");
    if std::env::var("BENCH_ONLY").as_deref() != Ok("latency") {
        decode_bench(&anvil, &toml).await;
        backfill_bench(&toml, summary.last_block + 1).await;
    }
    latency_bench(blocks, Duration::from_millis(50), None).await;
    latency_bench(blocks, Duration::from_millis(5), None).await;
    latency_bench(blocks, Duration::from_millis(5), Some(5)).await;
}
