//! `GET /metrics`: Prometheus text exposition, written by hand (a few families, no registry).
//!
//! - `chainfold_api_requests_total{kind,outcome}` and
//!   `chainfold_api_request_duration_seconds{kind}` (histogram) for `POST /graphql`;
//!   `chainfold_api_rate_limited_total`.
//! - `chainfold_subscriptions_active`, `chainfold_subscription_updates_total`.
//! - `chainfold_api_key_cache_hits_total`, `chainfold_api_loader_batches_total`,
//!   `chainfold_api_redis_reads_total{result=hit|miss}`.
//! - From Kafka at scrape time: `chainfold_topic_end_offset{topic,partition}` (its rate is the
//!   events/s written), `chainfold_consumer_committed_offset{group,topic,partition}` (its rate is
//!   a role's events/s) and `chainfold_consumer_lag{group,topic,partition}`;
//!   `chainfold_dlq_messages{topic}` for the dead-letter topics; `chainfold_kafka_up`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use chainfold_platform::config::KafkaArgs;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::{Offset, TopicPartitionList};

use crate::live::Hub;

/// Upper bounds of the latency histogram, seconds.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// What a GraphQL request was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Query,
    Mutation,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Query => "query",
            Kind::Mutation => "mutation",
        }
    }
}

/// Whether a query document is a mutation (its first operation keyword).
pub fn operation_kind(query: &str) -> Kind {
    let first = query
        .split(|c: char| c.is_whitespace() || c == '{' || c == '(')
        .find(|w| !w.is_empty() && !w.starts_with('#'));
    if first == Some("mutation") {
        Kind::Mutation
    } else {
        Kind::Query
    }
}

#[derive(Debug, Default)]
struct Histogram {
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// The API's counters, and what `/metrics` reads from Kafka.
pub struct Metrics {
    hub: Hub,
    kafka: KafkaArgs,
    groups: Vec<String>,
    requests: Mutex<BTreeMap<(Kind, bool), u64>>,
    latency: Mutex<BTreeMap<Kind, Histogram>>,
    rate_limited: AtomicU64,
    /// One OffsetFetch-only consumer per group, made on first scrape.
    consumers: Arc<Mutex<BTreeMap<String, Arc<BaseConsumer>>>>,
    loaders: Option<crate::loaders::Loaders>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("groups", &self.groups)
            .finish()
    }
}

impl Metrics {
    pub fn new(hub: Hub, kafka: KafkaArgs, groups: Vec<String>) -> Self {
        Metrics {
            hub,
            kafka,
            groups,
            requests: Mutex::default(),
            latency: Mutex::default(),
            rate_limited: AtomicU64::new(0),
            consumers: Arc::default(),
            loaders: None,
        }
    }

    /// Reports the batches of these loaders too.
    pub fn with_loaders(mut self, loaders: crate::loaders::Loaders) -> Self {
        self.loaders = Some(loaders);
        self
    }

    /// Counts a request and its latency.
    pub fn observe_request(&self, kind: Kind, ok: bool, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        *self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((kind, ok))
            .or_default() += 1;
        let mut latency = self.latency.lock().unwrap_or_else(|e| e.into_inner());
        let h = latency.entry(kind).or_default();
        for (i, bound) in BUCKETS.iter().enumerate() {
            if secs <= *bound {
                h.buckets[i] += 1;
            }
        }
        h.count += 1;
        h.sum += secs;
    }

    /// Counts a request refused by a rate limit.
    pub fn rate_limited(&self) {
        self.rate_limited.fetch_add(1, Ordering::Relaxed);
    }

    /// The API's own families.
    fn render_api(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP chainfold_api_requests_total GraphQL requests over HTTP.\n# TYPE chainfold_api_requests_total counter");
        for ((kind, ok), n) in self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let outcome = if *ok { "ok" } else { "error" };
            let _ = writeln!(
                out,
                "chainfold_api_requests_total{{kind=\"{}\",outcome=\"{outcome}\"}} {n}",
                kind.label()
            );
        }
        let _ = writeln!(out, "# HELP chainfold_api_request_duration_seconds GraphQL request latency.\n# TYPE chainfold_api_request_duration_seconds histogram");
        for (kind, h) in self
            .latency
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let k = kind.label();
            for (bound, n) in BUCKETS.iter().zip(h.buckets) {
                let _ = writeln!(
                    out,
                    "chainfold_api_request_duration_seconds_bucket{{kind=\"{k}\",le=\"{bound}\"}} {n}"
                );
            }
            let _ = writeln!(
                out,
                "chainfold_api_request_duration_seconds_bucket{{kind=\"{k}\",le=\"+Inf\"}} {}\nchainfold_api_request_duration_seconds_sum{{kind=\"{k}\"}} {}\nchainfold_api_request_duration_seconds_count{{kind=\"{k}\"}} {}",
                h.count, h.sum, h.count
            );
        }
        let _ = writeln!(
            out,
            "# HELP chainfold_api_rate_limited_total Requests refused by a rate limit.\n# TYPE chainfold_api_rate_limited_total counter\nchainfold_api_rate_limited_total {}",
            self.rate_limited.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP chainfold_subscriptions_active Open GraphQL subscriptions.\n# TYPE chainfold_subscriptions_active gauge\nchainfold_subscriptions_active {}",
            self.hub.active()
        );
        let _ = writeln!(
            out,
            "# HELP chainfold_subscription_updates_total Updates sent to subscribers.\n# TYPE chainfold_subscription_updates_total counter\nchainfold_subscription_updates_total {}",
            self.hub.delivered()
        );
        let _ = writeln!(
            out,
            "# HELP chainfold_api_key_cache_hits_total API key lookups answered from the process cache.\n# TYPE chainfold_api_key_cache_hits_total counter\nchainfold_api_key_cache_hits_total {}",
            self.hub.keys().hits()
        );
        if let Some(loaders) = &self.loaders {
            let _ = writeln!(
                out,
                "# HELP chainfold_api_loader_batches_total Batched queries of the DataLoaders.\n# TYPE chainfold_api_loader_batches_total counter\nchainfold_api_loader_batches_total {}",
                loaders.batches()
            );
            if let Some(latest) = &loaders.latest {
                use std::sync::atomic::Ordering;
                let _ = writeln!(
                    out,
                    "# HELP chainfold_api_redis_reads_total Latest scores and wallet summaries read, by where they were found.\n# TYPE chainfold_api_redis_reads_total counter\nchainfold_api_redis_reads_total{{result=\"hit\"}} {}\nchainfold_api_redis_reads_total{{result=\"miss\"}} {}",
                    latest.hits.load(Ordering::Relaxed),
                    latest.misses.load(Ordering::Relaxed)
                );
            }
        }
    }
}

/// End offsets per (topic, partition) and committed offsets per group, read from Kafka.
#[derive(Debug, Default)]
struct KafkaState {
    ends: BTreeMap<(String, i32), i64>,
    committed: BTreeMap<(String, String, i32), i64>,
}

fn read_kafka(
    kafka: &KafkaArgs,
    groups: &[String],
    consumers: &Mutex<BTreeMap<String, Arc<BaseConsumer>>>,
) -> anyhow::Result<KafkaState> {
    let timeout = Duration::from_secs(2);
    let consumer_for = |group: &str| -> anyhow::Result<Arc<BaseConsumer>> {
        let mut map = consumers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = map.get(group) {
            return Ok(c.clone());
        }
        let c: BaseConsumer = chainfold_platform::kafka::consumer_config(kafka, group).create()?;
        let c = Arc::new(c);
        map.insert(group.to_owned(), c.clone());
        Ok(c)
    };
    let probe = consumer_for("chainfold-metrics")?;
    let metadata = probe.fetch_metadata(None, timeout)?;
    let ours = format!("{}chainfold.", kafka.topic_prefix);
    let mut state = KafkaState::default();
    let mut tpl = TopicPartitionList::new();
    for topic in metadata
        .topics()
        .iter()
        .filter(|t| t.name().starts_with(&ours))
    {
        for p in topic.partitions() {
            let (_, high) = probe.fetch_watermarks(topic.name(), p.id(), timeout)?;
            state.ends.insert((topic.name().to_owned(), p.id()), high);
            tpl.add_partition(topic.name(), p.id());
        }
    }
    for group in groups {
        let committed = consumer_for(group)?.committed_offsets(tpl.clone(), timeout)?;
        for e in committed.elements() {
            if let Offset::Offset(o) = e.offset() {
                state
                    .committed
                    .insert((group.clone(), e.topic().to_owned(), e.partition()), o);
            }
        }
    }
    Ok(state)
}

fn render_kafka(state: &KafkaState, out: &mut String) {
    let _ = writeln!(out, "# HELP chainfold_topic_end_offset Next offset of each partition (its rate is events written per second).\n# TYPE chainfold_topic_end_offset counter");
    for ((topic, p), end) in &state.ends {
        let _ = writeln!(
            out,
            "chainfold_topic_end_offset{{topic=\"{topic}\",partition=\"{p}\"}} {end}"
        );
    }
    let _ = writeln!(out, "# HELP chainfold_consumer_committed_offset Committed offset of a consumer group (its rate is the group's events per second).\n# TYPE chainfold_consumer_committed_offset counter");
    for ((group, topic, p), o) in &state.committed {
        let _ = writeln!(
            out,
            "chainfold_consumer_committed_offset{{group=\"{group}\",topic=\"{topic}\",partition=\"{p}\"}} {o}"
        );
    }
    let _ = writeln!(out, "# HELP chainfold_consumer_lag Messages a consumer group has yet to process, per partition.\n# TYPE chainfold_consumer_lag gauge");
    for ((group, topic, p), o) in &state.committed {
        let end = state.ends.get(&(topic.clone(), *p)).copied().unwrap_or(*o);
        let _ = writeln!(
            out,
            "chainfold_consumer_lag{{group=\"{group}\",topic=\"{topic}\",partition=\"{p}\"}} {}",
            (end - o).max(0)
        );
    }
    let mut dlq: BTreeMap<&str, i64> = BTreeMap::new();
    for ((topic, _), end) in &state.ends {
        if topic.ends_with(".dlq") {
            *dlq.entry(topic).or_default() += end;
        }
    }
    let _ = writeln!(out, "# HELP chainfold_dlq_messages Messages in each dead-letter topic.\n# TYPE chainfold_dlq_messages gauge");
    for (topic, n) in dlq {
        let _ = writeln!(out, "chainfold_dlq_messages{{topic=\"{topic}\"}} {n}");
    }
}

/// `GET /metrics`.
pub(crate) async fn serve(State(state): State<crate::AppState>) -> impl IntoResponse {
    let metrics = state.metrics.clone();
    let mut out = String::new();
    metrics.render_api(&mut out);
    let (kafka, groups, consumers) = (
        metrics.kafka.clone(),
        metrics.groups.clone(),
        metrics.consumers.clone(),
    );
    let read = tokio::task::spawn_blocking(move || read_kafka(&kafka, &groups, &consumers)).await;
    match read {
        Ok(Ok(k)) => {
            render_kafka(&k, &mut out);
            out.push_str("# HELP chainfold_kafka_up Whether the broker answered this scrape.\n# TYPE chainfold_kafka_up gauge\nchainfold_kafka_up 1\n");
        }
        Ok(Err(err)) => {
            tracing::warn!(error = %format!("{err:#}"), "metrics: Kafka did not answer");
            out.push_str("# HELP chainfold_kafka_up Whether the broker answered this scrape.\n# TYPE chainfold_kafka_up gauge\nchainfold_kafka_up 0\n");
        }
        Err(err) => tracing::error!(%err, "metrics task failed"),
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutations_are_told_from_queries() {
        assert_eq!(operation_kind("mutation { requestCredit }"), Kind::Mutation);
        assert_eq!(
            operation_kind("  mutation M($a: Int) { x }"),
            Kind::Mutation
        );
        assert_eq!(operation_kind("{ wallet { address } }"), Kind::Query);
        assert_eq!(operation_kind("query Q { mutation }"), Kind::Query);
    }

    #[test]
    fn lag_is_end_minus_committed_and_dlq_counts_sum_partitions() {
        let mut k = KafkaState::default();
        k.ends.insert(("chainfold.amm.v1".into(), 0), 100);
        k.ends.insert(("chainfold.amm.v1.dlq".into(), 0), 2);
        k.ends.insert(("chainfold.amm.v1.dlq".into(), 1), 3);
        k.committed
            .insert(("p".into(), "chainfold.amm.v1".into(), 0), 60);
        let mut out = String::new();
        render_kafka(&k, &mut out);
        assert!(out.contains(
            "chainfold_consumer_lag{group=\"p\",topic=\"chainfold.amm.v1\",partition=\"0\"} 40"
        ));
        assert!(out.contains("chainfold_dlq_messages{topic=\"chainfold.amm.v1.dlq\"} 5"));
    }
}
