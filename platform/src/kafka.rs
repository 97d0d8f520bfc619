//! Kafka plumbing: topic names (with an optional prefix so tests and demos can run isolated
//! pipelines on one broker), explicit topic creation, and producer/consumer settings.
//!
//! Delivery: producers are idempotent with `acks=all` and lz4 (snappy batches break the local
//! tansu broker). Consumers never auto-commit or auto-store offsets: the projector stores them
//! in Postgres in the same transaction as the rows, and commits to Kafka only afterwards.
//! Nothing here uses Kafka transactions (the local broker does not support EndTxn).

use std::time::Duration;

use anyhow::Context as _;
use chainfold_domain::topics;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::FutureProducer;

use crate::config::KafkaArgs;

/// The topic names one pipeline uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    pub lending: String,
    pub amm: String,
    pub oracle: String,
    pub blocks: String,
}

impl Topics {
    /// `<prefix>chainfold.lending.v1`, `<prefix>chainfold.amm.v1`, `<prefix>chainfold.oracle.v1`
    /// and `<prefix>chainfold.blocks.v1`.
    pub fn with_prefix(prefix: &str) -> Self {
        Topics {
            lending: format!("{prefix}{}", topics::LENDING),
            amm: format!("{prefix}{}", topics::AMM),
            oracle: format!("{prefix}{}", topics::ORACLE),
            blocks: format!("{prefix}{}", topics::BLOCKS),
        }
    }

    /// The topic of an event kind.
    pub fn of(&self, kind: chainfold_domain::TopicKind) -> &str {
        match kind {
            chainfold_domain::TopicKind::Lending => &self.lending,
            chainfold_domain::TopicKind::Amm => &self.amm,
            chainfold_domain::TopicKind::Oracle => &self.oracle,
        }
    }

    /// The topics the projector folds (not their DLQs): the three event topics and the heads.
    pub fn event_topics(&self) -> [&str; 4] {
        [&self.lending, &self.amm, &self.oracle, &self.blocks]
    }

    /// Every topic including the dead-letter ones.
    pub fn all(&self) -> Vec<String> {
        let mut all = Vec::with_capacity(8);
        for topic in self.event_topics() {
            all.push(topic.to_owned());
            all.push(topics::dlq(topic));
        }
        all
    }
}

/// The default static membership id (`group.instance.id`) of a consumer in `group`:
/// `<group>@<hostname>`. A restarted process on the same host takes its partitions back at
/// once (the local broker never expires a member that died without leaving).
pub fn default_instance_id(group: &str) -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_owned());
    format!("{group}@{host}")
}

/// Brokers, then `settings`, then the raw `--kafka-option`s (last, so they override).
fn configured(args: &KafkaArgs, settings: &[(&str, &str)]) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &args.brokers);
    for (key, value) in settings {
        config.set(*key, *value);
    }
    for (key, value) in &args.options {
        config.set(key, value);
    }
    config
}

/// The settings every client shares: brokers and the raw `--kafka-option`s.
pub fn client_config(args: &KafkaArgs) -> ClientConfig {
    configured(args, &[])
}

/// An idempotent producer: `acks=all`, lz4, small linger so batches fill under load.
pub fn producer(args: &KafkaArgs) -> anyhow::Result<FutureProducer> {
    configured(
        args,
        &[
            ("enable.idempotence", "true"),
            ("acks", "all"),
            ("compression.type", "lz4"),
            ("linger.ms", "5"),
            ("batch.num.messages", "10000"),
            ("queue.buffering.max.messages", "200000"),
            ("message.timeout.ms", "30000"),
        ],
    )
    .create()
    .context("could not create Kafka producer")
}

/// Consumer settings for group `group`: manual offsets, start from the beginning when the group
/// has no committed offset (the projector then seeks to what Postgres stored).
pub fn consumer_config(args: &KafkaArgs, group: &str) -> ClientConfig {
    configured(
        args,
        &[
            ("group.id", group),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("auto.offset.reset", "earliest"),
            ("enable.partition.eof", "false"),
            ("session.timeout.ms", "10000"),
            ("fetch.wait.max.ms", "50"),
        ],
    )
}

/// Creates `names` with the configured partitions if they do not exist yet (the local broker
/// does not auto-create topics), then waits until the broker's metadata lists them all.
pub async fn ensure_topics(args: &KafkaArgs, names: &[String]) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = client_config(args)
        .create()
        .context("could not create Kafka admin client")?;
    let new_topics: Vec<NewTopic<'_>> = names
        .iter()
        .map(|name| NewTopic::new(name, args.partitions, TopicReplication::Fixed(1)))
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics(&new_topics, &options)
        .await
        .with_context(|| format!("could not create topics on Kafka at {}", args.brokers))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => anyhow::bail!("could not create topic {topic}: {code}"),
        }
    }
    wait_for_topics(args, names).await
}

async fn wait_for_topics(args: &KafkaArgs, names: &[String]) -> anyhow::Result<()> {
    let probe: BaseConsumer = client_config(args)
        .create()
        .context("could not create Kafka metadata client")?;
    let names = names.to_vec();
    tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let metadata = probe
                .fetch_metadata(None, Duration::from_secs(5))
                .context("could not fetch Kafka metadata")?;
            let missing: Vec<&String> = names
                .iter()
                .filter(|n| {
                    !metadata
                        .topics()
                        .iter()
                        .any(|t| t.name() == n.as_str() && !t.partitions().is_empty())
                })
                .collect();
            if missing.is_empty() {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                anyhow::bail!("topics {missing:?} did not appear in the broker's metadata");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    })
    .await
    .context("metadata task panicked")?
}

/// Low and high watermark of every partition of `topic`: `(partition, low, high)`.
pub fn watermarks(consumer: &BaseConsumer, topic: &str) -> anyhow::Result<Vec<(i32, i64, i64)>> {
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .with_context(|| format!("could not fetch metadata of {topic}"))?;
    let partitions = metadata
        .topics()
        .first()
        .map(|t| t.partitions().iter().map(|p| p.id()).collect::<Vec<_>>())
        .unwrap_or_default();
    if partitions.is_empty() {
        anyhow::bail!("topic {topic} does not exist");
    }
    partitions
        .into_iter()
        .map(|p| {
            let (low, high) = consumer
                .fetch_watermarks(topic, p, Duration::from_secs(5))
                .with_context(|| format!("could not fetch watermarks of {topic}/{p}"))?;
            Ok((p, low, high))
        })
        .collect()
}
