//! Scoring benchmark on the real broker, Postgres and Redis, all figures from one run:
//! 1. throughput: the Polygon histories (1,724 lending events, 18 wallets) replayed and projected,
//!    then scored from scratch, batched (batch size 2,000) and per event (batch size 1); events/s
//!    and wallet rescorings/s, medians of 3 fresh groups each;
//! 2. event-to-score latency: projector and scorer running, one new lending event published at a
//!    time (a recorded event with a fresh id), time until its score row is committed; median and
//!    p99 over N events (default 200). Baseline in the same run: publish → projected row.
//!
//! `cargo bench -p chainfold-scoring --bench scoring -- [events]`. Services and ORT_DYLIB_PATH
//! as for the tests (`scripts/stack up`).

use std::time::{Duration, Instant};

use chainfold_domain::{Envelope, EventId};
use chainfold_ingest::replay::Dataset;
use chainfold_scoring::worker::{Config, Scorer};
use chainfold_testkit::{data_dir, unique, Isolated};
use rdkafka::producer::FutureRecord;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn config(iso: &Isolated, group: &str, batch: usize) -> Config {
    let mut c = Config::new(
        iso.kafka.clone(),
        iso.postgres.clone(),
        iso.redis.clone(),
        group.to_owned(),
        iso.group.clone(),
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/position-v1"),
    );
    c.batch_size = batch;
    c.policy = Some(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policy.toml"));
    c.instance_id = Some(format!("{group}-i"));
    c
}

#[tokio::main]
async fn main() {
    let samples: usize = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .and_then(|a| a.parse().ok())
        .unwrap_or(200);
    let iso = Isolated::new("bench_scoring").await;
    let topics = iso.kafka.topics();
    chainfold_platform::kafka::ensure_topics(&iso.kafka, &topics.all())
        .await
        .expect("topics");
    let producer = chainfold_platform::kafka::producer(&iso.kafka).expect("producer");
    let events: Vec<Envelope> = Dataset::Polygon
        .decode_dir(&data_dir())
        .expect("data")
        .into_iter()
        .flatten()
        .collect();
    let items = events.iter().cloned().map(Ok).collect::<Vec<_>>();
    chainfold_ingest::publish::publish_all(&producer, &topics, items, |_, _| {})
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
    let pool = projector.pool().clone();

    for (label, batch) in [
        ("batched (2,000 per batch)", 2_000),
        ("per event (1 per batch)", 1),
    ] {
        let mut rates = Vec::new();
        for _ in 0..3 {
            sqlx::query("TRUNCATE credit_score")
                .execute(&pool)
                .await
                .expect("truncate");
            let mut scorer = Scorer::build(config(&iso, &unique("bench-scorer"), batch))
                .await
                .expect("scorer");
            let outcome = scorer
                .run_until_idle(Duration::from_millis(300))
                .await
                .expect("score");
            assert_eq!(outcome.scored, 1724, "every event scored");
            // Busy time: from each batch's first message to its commit (group join and idle
            // waits excluded).
            rates.push(outcome.scored as f64 / scorer.busy.as_secs_f64());
        }
        println!(
            "throughput {label}: median {:.0} events/s (= wallet rescorings/s), runs {:?}",
            median(rates.clone()),
            rates.iter().map(|r| r.round()).collect::<Vec<_>>()
        );
    }

    // Latency: projector and scorer running; one fresh event at a time. The first projector
    // leaves first: a second member with the same static instance id would fence it.
    drop(projector);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut config_p = chainfold_projector::Config::new(
        iso.kafka.clone(),
        iso.postgres.clone(),
        iso.redis.clone(),
        iso.group.clone(),
    );
    config_p.batch_wait = Duration::from_millis(5);
    let projector = chainfold_projector::App::build(config_p)
        .await
        .expect("projector");
    let mut s1 = stop_rx.clone();
    let project = tokio::spawn(projector.run_until_stopped(async move {
        let _ = s1.wait_for(|s| *s).await;
    }));
    let mut scorer = Scorer::build(config(&iso, &unique("bench-live"), 2_000))
        .await
        .expect("scorer");
    scorer
        .process_batch(Duration::from_secs(30))
        .await
        .expect("join");
    let mut s2 = stop_rx.clone();
    let score = tokio::spawn(scorer.run_until_stopped(async move {
        let _ = s2.wait_for(|s| *s).await;
    }));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (mut to_row, mut to_score) = (Vec::new(), Vec::new());
    for i in 0..samples {
        let mut env = events[i % events.len()].clone();
        env.event_id = EventId::of_record(env.chain_id, "bench-latency", &format!("{i}"));
        let id = env.event_id.to_string();
        let payload = chainfold_ingest::publish::encode(&env);
        let key = format!("{:#x}", env.partition_key());
        let started = Instant::now();
        producer
            .send(
                FutureRecord::to(&topics.lending)
                    .key(&key)
                    .payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .expect("publish");
        let mut projected = false;
        loop {
            if !projected {
                let found: Option<i32> =
                    sqlx::query_scalar("SELECT 1 FROM lending_event WHERE event_id = $1")
                        .bind(&id)
                        .fetch_optional(&pool)
                        .await
                        .expect("query");
                if found.is_some() {
                    to_row.push(started.elapsed().as_secs_f64() * 1e3);
                    projected = true;
                }
            }
            let scored: Option<i32> =
                sqlx::query_scalar("SELECT 1 FROM credit_score WHERE event_id = $1")
                    .bind(&id)
                    .fetch_optional(&pool)
                    .await
                    .expect("query");
            if scored.is_some() {
                if !projected {
                    to_row.push(started.elapsed().as_secs_f64() * 1e3);
                }
                to_score.push(started.elapsed().as_secs_f64() * 1e3);
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "event {i} not scored within 20 s (projected: {projected}); scorer finished: {}",
                score.is_finished()
            );
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
    }
    let _ = stop_tx.send(true);
    project.await.expect("join").expect("projector");
    score.await.expect("join").expect("scorer");
    println!(
        "latency over {samples} events (projector batch wait 5 ms): publish → projected row median {:.1} ms p99 {:.1} ms (baseline); publish → score row median {:.1} ms p99 {:.1} ms ({:.2}x the baseline median)",
        median(to_row.clone()),
        percentile(to_row.clone(), 0.99),
        median(to_score.clone()),
        percentile(to_score.clone(), 0.99),
        median(to_score) / median(to_row)
    );
}
