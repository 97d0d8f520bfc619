//! Scoring benchmark on the real broker, Postgres and Redis, all figures from one run:
//! 1. throughput: the Polygon histories (1,724 lending events, 18 wallets) replayed and projected,
//!    then scored from scratch, batched (batch size 2,000) and per event (batch size 1); events/s
//!    and wallet rescorings/s (scores / wall-clock from the first message to the last work
//!    finished), medians of 3 fresh groups each;
//! 2. event-to-score latency: projector and scorer running, one new lending event published at a
//!    time (a recorded event with a fresh id), time until its score row is committed; median and
//!    p99 over N events (default 200). Baseline in the same run: publish → projected row.
//!
//! 3. a long history: one wallet with H lending events (default 100,000, one an hour, templates
//!    from the Polygon data), published and projected, then scored in batches of 1,000 (a tenth of H when smaller) twice in
//!    the same run: resuming the wallet's stored credit profile (the default), and with
//!    `--resume-profiles false` (the whole history read every batch: the baseline). Per-event
//!    cost (batch busy time / scores) in the first and the last tenth of the history.
//!
//! 4. many wallets: W wallets (default 1,000) with M lending events in all (default 100,000,
//!    templates from the Polygon data), published and projected, then scored from scratch in
//!    batches of 10,000 by three fresh groups; rescorings/s (scores / wall-clock from the first
//!    message to the last work finished), median of 3, with where each run's time went and its
//!    CPU per score (this process, Postgres, the broker, Redis: core time from `/proc` over the
//!    run); and as the baseline in the same run, three fresh groups one batch at a time (scores
//!    / busy time).
//!
//!    When the server preloads `pg_stat_statements`, section 4 also prints Postgres's time per
//!    score by statement over the worker-loop groups.
//!
//! `cargo bench -p chainfold-scoring --bench scoring -- [events] [history] [many]`; `--only-many`
//! runs section 4 alone; `--many-batch N` scores section 4 in batches of N (`chainfold score
//! --batch-size`) instead of 10,000. Services and ORT_DYLIB_PATH as for the tests (`scripts/stack up`).

use std::time::{Duration, Instant};

use alloy_primitives::Address;
use chainfold_domain::{DefiEvent, Envelope, EventId};
use chainfold_ingest::replay::Dataset;
use chainfold_scoring::worker::{Config, Scorer};
use chainfold_testkit::cpu::Parts;
use chainfold_testkit::{data_dir, unique, Isolated};

/// The allocator the `chainfold` binary uses (cli/src/main.rs), so the scorer measured here
/// allocates as `chainfold score` does.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    let args: Vec<String> = std::env::args().skip(1).collect();
    // Positional numbers: not a flag, nor the value of `--many-batch`.
    let numbers: Vec<usize> = args
        .iter()
        .enumerate()
        .filter(|(i, a)| !a.starts_with('-') && (*i == 0 || args[i - 1] != "--many-batch"))
        .filter_map(|(_, a)| a.parse().ok())
        .collect();
    let samples = numbers.first().copied().unwrap_or(200);
    let history = numbers.get(1).copied().unwrap_or(100_000);
    let many = numbers.get(2).copied().unwrap_or(100_000);
    if std::env::args().any(|a| a == "--only-many") {
        many_wallets(&polygon(), many, 1_000, many_batch()).await;
        return;
    }
    let iso = Isolated::new("bench_scoring").await;
    let topics = iso.kafka.topics();
    let events = polygon();
    let (producer, projector) = publish_and_project(&iso, events.clone()).await;
    let pool = projector.pool().clone();

    for (label, batch) in [
        ("batched (2,000 per batch)", 2_000),
        ("per event (1 per batch)", 1),
    ] {
        let (rates, _) = three_fresh_groups(&iso, &pool, label, batch, 1_724, 300).await;
        println!(
            "throughput {label}: median {:.0} events/s (= wallet rescorings/s), runs {:?}",
            median(rates.clone()),
            rates.iter().map(|r| r.round()).collect::<Vec<_>>()
        );
    }

    long_history(&events, history).await;
    many_wallets(&events, many, 1_000, many_batch()).await;

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
        // Published as ingest publishes, with the seal that tells the scorer the record is
        // whole (a blockless record is scored once a seal covers it).
        let started = Instant::now();
        chainfold_ingest::publish::publish_all(&producer, &topics, [Ok(env)], |_, _| {})
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
    drop(pool);
    iso.drop_database().await;
}

/// One wallet with `n` lending events, one an hour, made from the recorded deposits, borrows,
/// repays and redeems (new ids and times, one wallet).
fn one_wallet(events: &[Envelope], n: usize) -> Vec<Envelope> {
    spread(events, n, 1)
}

/// `n` lending events, one an hour and one block each, made from the recorded deposits, borrows,
/// repays and redeems (new ids, times and blocks), dealt in turn to `wallets` wallets.
fn spread(events: &[Envelope], n: usize, wallets: usize) -> Vec<Envelope> {
    let templates: Vec<&Envelope> = events
        .iter()
        .filter(|e| {
            matches!(
                &e.event,
                DefiEvent::Deposit(_)
                    | DefiEvent::Borrow(_)
                    | DefiEvent::Repay(_)
                    | DefiEvent::Redeem(_)
            )
        })
        .take(64)
        .collect();
    assert!(!templates.is_empty(), "the Polygon data has lending flows");
    let wallet = |i: usize| {
        let mut bytes = [0u8; 20];
        bytes[12..].copy_from_slice(&(0xc0ffee01_u64 + (i % wallets) as u64).to_be_bytes());
        Address::from(bytes)
    };
    let start = chrono::DateTime::from_timestamp(1_500_000_000, 0).expect("in range");
    (0..n)
        .map(|i| {
            let mut env = templates[i % templates.len()].clone();
            env.event_id = EventId::of_record(env.chain_id, "bench-long-history", &i.to_string());
            env.block_time = Some(start + chrono::Duration::hours(i as i64));
            // Blocks move with time, as on a chain (the templates' own blocks would not).
            env.block = Some(chainfold_domain::BlockRef {
                number: 20_000_000 + i as u64,
                hash: Some(alloy_primitives::B256::left_padding_from(
                    &(i as u64 + 1).to_be_bytes(),
                )),
            });
            if let DefiEvent::Deposit(f)
            | DefiEvent::Borrow(f)
            | DefiEvent::Repay(f)
            | DefiEvent::Redeem(f) = &mut env.event
            {
                f.wallet = wallet(i);
            }
            env
        })
        .collect()
}

/// Section 3: per-event cost along one wallet's long history, with and without stored profiles.
async fn long_history(events: &[Envelope], n: usize) {
    let iso = Isolated::new("bench_history").await;
    let (_, projector) = publish_and_project(&iso, one_wallet(events, n)).await;
    let pool = projector.pool().clone();
    drop(projector);
    let mut tenths = Vec::new();
    // At most 1,000 a batch, and at least one batch in every tenth of the history.
    let batch = (n / 10).clamp(1, 1_000);
    for resume in [true, false] {
        sqlx::query("TRUNCATE credit_score, credit_profile")
            .execute(&pool)
            .await
            .expect("truncate");
        let mut c = config(&iso, &unique("bench-history"), batch);
        c.resume_profiles = resume;
        let mut scorer = Scorer::build(c).await.expect("scorer");
        // (history scored so far, µs per score) per batch.
        let mut per_batch: Vec<(u64, f64)> = Vec::new();
        let (mut scored, mut rows_read) = (0u64, 0u64);
        while scored < n as u64 {
            let before = scorer.busy;
            let outcome = scorer
                .process_batch(Duration::from_secs(5))
                .await
                .expect("score");
            if outcome.scored == 0 {
                assert!(outcome.received > 0, "scorer idle at {scored}/{n}");
                continue;
            }
            scored += outcome.scored;
            rows_read += outcome.history_rows_read;
            let busy = (scorer.busy - before).as_secs_f64();
            per_batch.push((scored, busy * 1e6 / outcome.scored as f64));
        }
        let tenth = |lo: f64, hi: f64| {
            median(
                per_batch
                    .iter()
                    .filter(|(at, _)| (*at as f64) > lo * n as f64 && (*at as f64) <= hi * n as f64)
                    .map(|(_, us)| *us)
                    .collect(),
            )
        };
        let (first, last) = (tenth(0.0, 0.1), tenth(0.9, 1.0));
        println!(
            "long history ({n} events of one wallet, batches of {batch}, {}): per score median {first:.0} µs in the first tenth, {last:.0} µs in the last ({:.2}x); {rows_read} history rows read",
            if resume { "stored profiles" } else { "baseline: --resume-profiles false" },
            last / first,
        );
        tenths.push((first, last));
    }
    println!(
        "long history: in the last tenth the baseline costs {:.1}x the stored profiles per score",
        tenths[1].1 / tenths[0].1
    );
    iso.drop_database().await;
}

/// `--many-batch N`: section 4's batch size (default 10,000).
fn many_batch() -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == "--many-batch")
        .map(|i| {
            args.get(i + 1)
                .and_then(|n| n.parse().ok())
                .filter(|n| *n > 0)
                .expect("--many-batch takes a batch size above 0")
        })
        .unwrap_or(10_000)
}

/// Section 4: rescorings/s over many wallets, in batches of `batch`, three fresh groups through
/// the worker loop (each batch computed while the previous one writes), and as the baseline in
/// the same run three fresh groups one batch at a time (`Scorer::process_batch`: receive,
/// compute, write, in turn).
async fn many_wallets(events: &[Envelope], n: usize, wallets: usize, batch: usize) {
    let reference_before = machine_reference();
    let iso = Isolated::new("bench_many").await;
    let (_, projector) = publish_and_project(&iso, spread(events, n, wallets)).await;
    let pool = projector.pool().clone();
    drop(projector);
    let statements = Statements::start(&pool).await;
    let (rates, cpu) = three_fresh_groups(&iso, &pool, "many wallets", batch, n as u64, 500).await;
    statements.print(&pool, 3 * n as u64).await;
    let mut serial = Vec::new();
    let mut serial_cpu = Vec::new();
    for _ in 0..3 {
        sqlx::query("TRUNCATE credit_score, credit_profile")
            .execute(&pool)
            .await
            .expect("truncate");
        let before = Parts::now();
        let mut scorer = Scorer::build(config(&iso, &unique("bench-serial"), batch))
            .await
            .expect("scorer");
        let mut scored = 0;
        let mut wait = Duration::from_secs(30);
        while scored < n as u64 {
            let outcome = scorer.process_batch(wait).await.expect("score");
            assert!(outcome.received > 0, "scorer idle at {scored}/{n}");
            scored += outcome.scored;
            wait = Duration::from_millis(500);
        }
        // Its last publishing, counted as busy (it ran alone).
        scorer.process_batch(wait).await.expect("idle");
        serial.push(scored as f64 / scorer.busy.as_secs_f64());
        serial_cpu.push(PerScore::of(&Parts::now().since(&before), scored));
        println!("  one batch at a time: {}", scorer.stages);
        println!(
            "  one batch at a time: {}",
            serial_cpu[serial_cpu.len() - 1]
        );
    }
    println!(
        "many wallets ({n} events of {wallets} wallets, batches of {batch}): median {:.0} rescorings/s, runs {:?}; one batch at a time (baseline, same run) median {:.0}, runs {:?}: {:.2}x",
        median(rates.clone()),
        rates.iter().map(|r| r.round()).collect::<Vec<_>>(),
        median(serial.clone()),
        serial.iter().map(|r| r.round()).collect::<Vec<_>>(),
        median(rates.clone()) / median(serial.clone())
    );
    println!(
        "many wallets, medians: worker loop {}; one batch at a time {}",
        PerScore::median_of(&cpu),
        PerScore::median_of(&serial_cpu)
    );
    println!(
        "many wallets: machine reference (SHA-256 of 64 MiB on one core, median of 5; lower is a faster machine) {:.1} ms before the section, {:.1} ms after",
        reference_before,
        machine_reference()
    );
    // A database left behind is one more for autovacuum to visit while the next run measures.
    drop(pool);
    iso.drop_database().await;
}

/// Postgres's time per statement over the worker-loop groups, from `pg_stat_statements` when
/// the server preloads it (`ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'`
/// and a restart; BENCHMARKS.md): a change to one statement shows there even when the machine's
/// swings hide it in the whole run's rate.
struct Statements {
    /// Why there is nothing to print, if so.
    not_measured: Option<String>,
}

impl Statements {
    async fn start(pool: &sqlx::PgPool) -> Statements {
        let preload: String =
            sqlx::query_scalar("SELECT current_setting('shared_preload_libraries')")
                .fetch_one(pool)
                .await
                .expect("setting");
        if !preload.contains("pg_stat_statements") {
            return Statements {
                not_measured: Some("pg_stat_statements is not in shared_preload_libraries".into()),
            };
        }
        // The extension needs a role that may create it (the tests' `postgres` can); without
        // it the section runs as before and says why it has no statements.
        let started = async {
            sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
                .execute(pool)
                .await?;
            sqlx::query("SELECT pg_stat_statements_reset()")
                .execute(pool)
                .await
        }
        .await;
        Statements {
            not_measured: started.err().map(|err| err.to_string()),
        }
    }

    /// The statements of this database that took the most time since [`Statements::start`], as
    /// µs per score over `scores`.
    async fn print(&self, pool: &sqlx::PgPool, scores: u64) {
        if let Some(why) = &self.not_measured {
            println!("  many wallets: per statement: not measured ({why})");
            return;
        }
        let rows: Vec<(f64, i64, String)> = sqlx::query_as(
            "SELECT total_exec_time, calls, left(regexp_replace(query, '\\s+', ' ', 'g'), 90)
             FROM pg_stat_statements
             WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
             ORDER BY total_exec_time DESC LIMIT 8",
        )
        .fetch_all(pool)
        .await
        .expect("statements");
        println!("  many wallets: Postgres time per score by statement (worker-loop groups, pg_stat_statements):");
        for (ms, calls, query) in rows {
            println!(
                "    {:>6.2} µs  {calls:>6} calls  {query}",
                ms * 1e3 / scores.max(1) as f64
            );
        }
    }
}

/// The machine's speed at the moment, with no service involved: one core hashing 64 MiB with
/// SHA-256, median of 5, in ms. The same binary's throughput swings by a third between the
/// machine's fast and slow windows (BENCHMARKS.md); this figure, printed beside each run, says
/// which window a run was in.
fn machine_reference() -> f64 {
    use sha2::Digest as _;
    let data = vec![0x5au8; 64 << 20];
    median(
        (0..5)
            .map(|_| {
                let started = Instant::now();
                std::hint::black_box(sha2::Sha256::digest(std::hint::black_box(&data)));
                started.elapsed().as_secs_f64() * 1e3
            })
            .collect(),
    )
}

/// The recorded Polygon lending histories, decoded.
fn polygon() -> Vec<Envelope> {
    Dataset::Polygon
        .decode_dir(&data_dir())
        .expect("data")
        .into_iter()
        .flatten()
        .collect()
}

/// Scores what `iso`'s topics hold from scratch with three fresh groups (batches of `batch`,
/// idle after `idle_ms`), the scores and profiles cleared before each; checks each scored
/// `expect` and prints its stages. Returns each run's rate: scores / `Scorer::span` (wall-clock
/// from the first message received to the last commit or publishing finished: the group join
/// and the final idle wait excluded). The runs go through the worker loop, as `chainfold
/// score` does: each batch computes while the previous one writes.
async fn three_fresh_groups(
    iso: &Isolated,
    pool: &sqlx::PgPool,
    label: &str,
    batch: usize,
    expect: u64,
    idle_ms: u64,
) -> (Vec<f64>, Vec<PerScore>) {
    let mut rates = Vec::new();
    let mut cpu = Vec::new();
    for _ in 0..3 {
        sqlx::query("TRUNCATE credit_score, credit_profile")
            .execute(pool)
            .await
            .expect("truncate");
        let before = Parts::now();
        let mut scorer = Scorer::build(config(iso, &unique("bench-scorer"), batch))
            .await
            .expect("scorer");
        let outcome = scorer
            .run_until_idle(Duration::from_millis(idle_ms))
            .await
            .expect("score");
        assert_eq!(outcome.scored, expect, "every event scored");
        println!(
            "  {label}: {} lending price points taken from earlier batches",
            outcome.price_points_kept
        );
        rates.push(outcome.scored as f64 / scorer.span().as_secs_f64());
        cpu.push(PerScore::of(&Parts::now().since(&before), outcome.scored));
        println!("  {label}: {}", scorer.stages);
        println!("  {label}: {}", cpu[cpu.len() - 1]);
    }
    (rates, cpu)
}

/// CPU per score of one run, in µs (core time, user + system): the scorer (this process), the
/// services beside it, and the machine's busy share of its capacity over the run.
#[derive(Debug, Clone, Copy, Default)]
struct PerScore {
    scorer: f64,
    postgres: f64,
    broker: f64,
    redis: f64,
    busy: f64,
}

impl PerScore {
    fn of(spent: &Parts, scores: u64) -> PerScore {
        let per = |s: f64| s * 1e6 / scores.max(1) as f64;
        PerScore {
            scorer: per(spent.own),
            postgres: per(spent.postgres),
            broker: per(spent.broker),
            redis: per(spent.redis),
            busy: spent.busy / spent.total.max(f64::MIN_POSITIVE),
        }
    }

    fn sum(&self) -> f64 {
        self.scorer + self.postgres + self.broker + self.redis
    }

    /// The medians of each part over `runs`.
    fn median_of(runs: &[PerScore]) -> PerScore {
        let m = |f: fn(&PerScore) -> f64| median(runs.iter().map(f).collect());
        PerScore {
            scorer: m(|c| c.scorer),
            postgres: m(|c| c.postgres),
            broker: m(|c| c.broker),
            redis: m(|c| c.redis),
            busy: m(|c| c.busy),
        }
    }
}

impl std::fmt::Display for PerScore {
    /// Also what the machine's cores could score at most if the parts overlapped perfectly
    /// (cores / CPU per score).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        write!(
            f,
            "CPU per score: scorer {:.1} µs, postgres {:.1}, broker {:.1}, redis {:.1}; sum {:.1} µs (at most {:.0}/s on {cores} cores); machine busy {:.0} %",
            self.scorer,
            self.postgres,
            self.broker,
            self.redis,
            self.sum(),
            cores * 1e6 / self.sum().max(f64::MIN_POSITIVE),
            self.busy * 100.0
        )
    }
}

/// Publishes `events` to `iso`'s topics (with their seals) and folds them with a projector of
/// `iso`'s group until it has caught up; returns the producer and the projector.
async fn publish_and_project(
    iso: &Isolated,
    events: Vec<Envelope>,
) -> (rdkafka::producer::FutureProducer, chainfold_projector::App) {
    let topics = iso.kafka.topics();
    chainfold_platform::kafka::ensure_topics(&iso.kafka, &topics.all())
        .await
        .expect("topics");
    let producer = chainfold_platform::kafka::producer(&iso.kafka).expect("producer");
    let items = events.into_iter().map(Ok).collect::<Vec<_>>();
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
    (producer, projector)
}
