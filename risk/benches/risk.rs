//! Risk benchmark on the real broker and Postgres, all figures from one run:
//! 1. detection latency: the 235 recorded blocks of `swaps.csv` published one block at a time
//!    (a pause of `--gap-ms`, default 200, between blocks; each block's seal after its events)
//!    while `chainfold project` and `chainfold risk` run; for each stored sandwich alert, seal
//!    published (its Kafka timestamp) → alert committed (`detected_at`), which includes the
//!    projector folding the block; median and p99. Baseline in the same run: publish →
//!    received by a plain consumer of the same topic, per message.
//! 2. stress recompute time: `chainfold stress` on the bundled Polygon positions (replayed and
//!    projected), median of 5 runs (2,000 paths × 24 h).
//!
//! `cargo bench -p chainfold-risk --bench risk`. Services as for the tests (`scripts/stack up`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chainfold_domain::Envelope;
use chainfold_ingest::replay::Dataset;
use chainfold_risk::worker::{RiskConfig, RiskWorker};
use chainfold_testkit::{data_dir, unique, Isolated};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message as _;

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let gap_ms: u64 = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .and_then(|a| a.parse().ok())
        .unwrap_or(200);
    let iso = Isolated::new("bench_risk").await;
    let topics = iso.kafka.topics();
    chainfold_platform::kafka::ensure_topics(&iso.kafka, &topics.all())
        .await
        .expect("topics");
    let producer = chainfold_platform::kafka::producer(&iso.kafka).expect("producer");

    // Baseline consumer and the risk worker, both joined before anything is published.
    let baseline: StreamConsumer =
        chainfold_platform::kafka::consumer_config(&iso.kafka, &unique("baseline"))
            .create()
            .expect("consumer");
    baseline
        .subscribe(&[topics.amm.as_str()])
        .expect("subscribe");
    let mut risk_config = RiskConfig::new(
        iso.kafka.clone(),
        iso.postgres.clone(),
        iso.redis.clone(),
        unique("risk"),
    );
    risk_config.projector_group = iso.group.clone();
    let worker = RiskWorker::build(risk_config).await.expect("risk worker");
    let pool = worker.pool().clone();
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let projector = chainfold_projector::App::build(chainfold_projector::Config::new(
        iso.kafka.clone(),
        iso.postgres.clone(),
        iso.redis.clone(),
        iso.group.clone(),
    ))
    .await
    .expect("projector");
    let mut projector_stop = stop_rx.clone();
    let projector_task = tokio::spawn(projector.run_until_stopped(async move {
        let _ = projector_stop.wait_for(|s| *s).await;
    }));
    let task = tokio::spawn(worker.run_until_stopped(async move {
        let _ = stop_rx.wait_for(|s| *s).await;
    }));
    let (lat_tx, mut lat_rx) = tokio::sync::mpsc::unbounded_channel::<f64>();
    let base_task = tokio::spawn(async move {
        while let Ok(m) = baseline.recv().await {
            if let Some(ts) = m.timestamp().to_millis() {
                let now = chrono::Utc::now().timestamp_millis();
                let _ = lat_tx.send((now - ts) as f64);
            }
        }
    });
    tokio::time::sleep(Duration::from_secs(12)).await;

    let mut blocks: BTreeMap<u64, Vec<Envelope>> = BTreeMap::new();
    for env in Dataset::Swaps
        .decode_dir(&data_dir())
        .expect("swaps")
        .into_iter()
        .flatten()
    {
        if let Some(b) = env.block {
            blocks.entry(b.number).or_default().push(env);
        }
    }
    let expected = chainfold_report::measure(&data_dir())
        .expect("report")
        .sandwiches
        .len();
    let started = Instant::now();
    let mut published = 0usize;
    for envs in blocks.values() {
        // The block's events, then its seal, as `ingest rpc` publishes a block.
        let summary = chainfold_ingest::publish::publish_all(
            &producer,
            &topics,
            envs.iter().cloned().map(Ok),
            |_, _| {},
        )
        .await
        .expect("publish");
        published += summary.published() as usize;
        tokio::time::sleep(Duration::from_millis(gap_ms)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM risk_alert")
            .fetch_one(&pool)
            .await
            .expect("count");
        if n as usize >= expected || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = stop_tx.send(true);
    task.await.expect("task").expect("worker");
    projector_task.await.expect("task").expect("projector");
    base_task.abort();
    let latencies: Vec<f64> = sqlx::query_scalar(
        "SELECT (extract(epoch FROM detected_at - source_published_at) * 1000)::float8 FROM risk_alert",
    )
    .fetch_all(&pool)
    .await
    .expect("latencies");
    let mut base = Vec::new();
    while let Ok(v) = lat_rx.try_recv() {
        base.push(v);
    }
    println!(
        "published {published} swaps in {} blocks ({gap_ms} ms apart) in {:.1}s; {} of {expected} sandwich alerts stored",
        blocks.len(),
        started.elapsed().as_secs_f64(),
        latencies.len()
    );
    let (b50, b99) = (percentile(base.clone(), 0.5), percentile(base, 0.99));
    let (d50, d99) = (
        percentile(latencies.clone(), 0.5),
        percentile(latencies, 0.99),
    );
    println!(
        "detection latency (block published → alert committed): median {d50:.1} ms, p99 {d99:.1} ms; baseline publish → consumed median {b50:.1} ms, p99 {b99:.1} ms ({:.2}x the baseline median)",
        d50 / b50.max(0.001)
    );

    // Stress recompute time on the bundled Polygon positions.
    let items = Dataset::Polygon.decode_dir(&data_dir()).expect("polygon");
    chainfold_ingest::publish::publish_all(&producer, &topics, items, |_, _| {})
        .await
        .expect("publish");
    let mut projector = chainfold_projector::App::build(chainfold_projector::Config::new(
        iso.kafka.clone(),
        iso.postgres.clone(),
        iso.redis.clone(),
        unique("bench-stress-projector"),
    ))
    .await
    .expect("projector");
    projector.run_until_caught_up().await.expect("project");
    let config = chainfold_risk::stress::StressConfig {
        postgres: iso.postgres.clone(),
        chain_id: 137,
        prices_dir: data_dir().join("aave-v2-eth-bhemen/usd_prices"),
        paths: 2000,
        horizon_hours: 24,
        seed: 1,
    };
    let mut times = Vec::new();
    let mut last = None;
    for _ in 0..5 {
        let t = Instant::now();
        let run = chainfold_risk::stress::run(&pool, &config, "bench")
            .await
            .expect("stress");
        times.push(t.elapsed().as_secs_f64() * 1e3);
        last = Some(run);
    }
    let run = last.expect("a run");
    println!(
        "stress recompute (chain 137: {} positions, {} scenarios, {} paths x {} h, history {}): median {:.1} ms over 5 runs (runs {:?})",
        run.positions,
        run.scenarios.len(),
        config.paths,
        config.horizon_hours,
        config.prices_dir.display(),
        percentile(times.clone(), 0.5),
        times.iter().map(|t| (t * 10.0).round() / 10.0).collect::<Vec<_>>()
    );
}
