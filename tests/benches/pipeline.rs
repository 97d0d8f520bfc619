//! Pipeline benchmark: replay, the broker's raw consume rate and the projector's rate, measured
//! in the same run on the same topics, three times; medians and ratios are printed.
//!
//! `cargo bench -p chainfold-tests --bench pipeline -- [copies]` (default 8). The data is the
//! bundled real data (23,220 events) published `copies` times; each copy's event ids are
//! re-derived (`keccak(chain ‖ "bench-copy" ‖ id#copy)`) so the projector stores every copy instead of skipping
//! replays. Services as for the tests (`scripts/stack up`: Apache Kafka). Each run leaves ~150 MB
//! of uniquely named topics in the broker; `scripts/stack prune-test-topics` deletes them.

use std::time::{Duration, Instant};

use chainfold_domain::{Envelope, EventId};
use chainfold_ingest::replay::Dataset;
use chainfold_ingest::Decoded;
use chainfold_testkit::{data_dir, Isolated};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

struct Run {
    events: u64,
    /// JSON encoding of every envelope, alone.
    encode: Duration,
    encoded_bytes: usize,
    /// Events folded after the first batch (the steady-state part).
    steady_events: u64,
    /// Group join plus the first batch.
    join: Duration,
    decode: Duration,
    publish: Duration,
    raw_consume: Duration,
    project: Duration,
    timings: chainfold_projector::Timings,
}

fn copies_of(decoded: &[Decoded], copies: u32) -> Vec<Decoded> {
    let mut out = Vec::with_capacity(decoded.len() * copies as usize);
    for copy in 0..copies {
        for item in decoded.iter().filter_map(|d| d.as_ref().ok()) {
            let mut env: Envelope = item.clone();
            if copy > 0 {
                env.event_id = EventId::of_record(
                    env.chain_id,
                    "bench-copy",
                    &format!("{}#{copy}", env.event_id),
                );
            }
            out.push(Ok(env));
        }
    }
    out
}

fn raw_consume(iso: &Isolated, expected: u64) -> Duration {
    let topics = iso.kafka.topics();
    let consumer: BaseConsumer = chainfold_platform::kafka::client_config(&iso.kafka)
        .set("group.id", chainfold_testkit::unique("bench-raw"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for topic in topics.event_topics() {
        for (partition, _, _) in
            chainfold_platform::kafka::watermarks(&consumer, topic).expect("watermarks")
        {
            tpl.add_partition_offset(topic, partition, Offset::Beginning)
                .expect("tpl");
        }
    }
    consumer.assign(&tpl).expect("assign");
    let started = Instant::now();
    let mut seen = 0;
    while seen < expected {
        if let Some(result) = consumer.poll(Duration::from_secs(5)) {
            result.expect("consume");
            seen += 1;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "raw consume stalled at {seen}/{expected}"
        );
    }
    started.elapsed()
}

async fn run_once(copies: u32) -> Run {
    let iso = Isolated::new("bench").await;
    let topics = iso.kafka.topics();
    chainfold_platform::kafka::ensure_topics(&iso.kafka, &topics.all())
        .await
        .expect("topics");
    let started = Instant::now();
    let mut decoded = Vec::new();
    for dataset in Dataset::ALL {
        decoded.extend(dataset.decode_dir(&data_dir()).expect("decode"));
    }
    let items = copies_of(&decoded, copies);
    let decode = started.elapsed();
    let events = items.len() as u64;
    let started = Instant::now();
    let encoded_bytes: usize = items
        .iter()
        .filter_map(|d| d.as_ref().ok())
        .map(|e| chainfold_ingest::publish::encode(e).len())
        .sum();
    let encode = started.elapsed();
    let producer = chainfold_platform::kafka::producer(&iso.kafka).expect("producer");
    let started = Instant::now();
    let summary = chainfold_ingest::publish::publish_all(&producer, &topics, items, |_, _| {})
        .await
        .expect("publish");
    let publish = started.elapsed();
    assert_eq!(summary.published(), events);

    let raw_iso = iso.clone();
    let raw_consume = tokio::task::spawn_blocking(move || raw_consume(&raw_iso, events))
        .await
        .expect("raw consume");

    let config = chainfold_projector::Config::new(
        iso.kafka.clone(),
        iso.postgres.clone(),
        iso.redis.clone(),
        iso.group.clone(),
    );
    let mut projector = chainfold_projector::App::build(config)
        .await
        .expect("projector");
    // Joining the consumer group (a one-off: claims, assignment) is timed apart from the steady rate,
    // which is what compares with the raw consumer (plain assign, no group).
    let started = Instant::now();
    let mut first = projector
        .process_batch(Duration::from_secs(30))
        .await
        .expect("first batch");
    while first.received == 0 {
        first = projector
            .process_batch(Duration::from_secs(30))
            .await
            .expect("first batch");
    }
    let join = started.elapsed();
    projector.timings = chainfold_projector::Timings::default();
    let started = Instant::now();
    let outcome = projector.run_until_caught_up().await.expect("project");
    let project = started.elapsed();
    assert_eq!(outcome.stored + first.stored, events);
    let timings = projector.timings.clone();
    Run {
        events,
        encode,
        encoded_bytes,
        steady_events: outcome.stored,
        decode,
        publish,
        raw_consume,
        join,
        project,
        timings,
    }
}

fn steady_rate(run: &Run) -> f64 {
    run.steady_events as f64 / run.project.as_secs_f64()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(str::to_owned)
        })
        .and_then(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn main() {
    let copies: u32 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(8);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut runs = Vec::new();
    for i in 1..=3 {
        let run = runtime.block_on(run_once(copies));
        let rate = |d: Duration| run.events as f64 / d.as_secs_f64();
        println!(
            "run {i}: {} events | decode {:.0}/s | publish {:.0}/s | broker raw consume {:.0}/s | projector {:.0}/s steady ({:.2}x raw), group join + first batch {:.2}s",
            run.events,
            rate(run.decode),
            rate(run.publish),
            rate(run.raw_consume),
            steady_rate(&run),
            steady_rate(&run) / rate(run.raw_consume),
            run.join.as_secs_f64()
        );
        println!(
            "       json encode {:.0}/s ({:.0} bytes/event, {:.2}s of the {:.2}s publish)",
            rate(run.encode),
            run.encoded_bytes as f64 / run.events as f64,
            run.encode.as_secs_f64(),
            run.publish.as_secs_f64()
        );
        let t = &run.timings;
        println!(
            "       projector time: receive {:.2}s, decode+fold {:.2}s, postgres {:.2}s, redis {:.2}s, dlq {:.3}s, kafka commit {:.3}s, {} batches (total {:.2}s)",
            t.receive.as_secs_f64(),
            t.decode_fold.as_secs_f64(),
            t.postgres.as_secs_f64(),
            t.redis.as_secs_f64(),
            t.dead_letter.as_secs_f64(),
            t.kafka_commit.as_secs_f64(),
            t.batches,
            run.project.as_secs_f64()
        );
        runs.push(run);
    }
    let rates = |f: &dyn Fn(&Run) -> Duration| {
        median(
            runs.iter()
                .map(|r| r.events as f64 / f(r).as_secs_f64())
                .collect(),
        )
    };
    let ratio = median(
        runs.iter()
            .map(|r| steady_rate(r) / (r.events as f64 / r.raw_consume.as_secs_f64()))
            .collect(),
    );
    let with_join = median(
        runs.iter()
            .map(|r| r.events as f64 / (r.join + r.project).as_secs_f64())
            .collect(),
    );
    println!(
        "median of 3: publish {:.0} events/s, broker raw consume {:.0} msg/s, projector {:.0} events/s steady, projector/raw {:.2}x; including the group join {:.0} events/s; peak RSS {:.0} MiB",
        rates(&|r| r.publish),
        rates(&|r| r.raw_consume),
        median(runs.iter().map(steady_rate).collect()),
        ratio,
        with_join,
        peak_rss_mib()
    );
}
