//! Kafka plumbing: topic names (with an optional prefix so tests and demos can run isolated
//! pipelines on one broker), explicit topic creation, and producer/consumer settings.
//!
//! The log of record: every topic chainfold creates keeps its records forever
//! (`retention.ms=-1`, `retention.bytes=-1`), with the configured replication factor and
//! `min.insync.replicas`; a topic that already exists with another retention is corrected on
//! start. Producers are idempotent with `acks=all` (a record is acknowledged once
//! `min.insync.replicas` brokers have it) and lz4. Consumers never auto-commit or auto-store
//! offsets: each role stores them in Postgres in the transaction of its writes
//! ([`crate::offsets`]), and commits to Kafka only afterwards, as a hint for tools.

use std::time::Duration;

use anyhow::Context as _;
use chainfold_domain::topics;
use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, ConfigSource, NewTopic, ResourceSpecifier,
    TopicReplication,
};
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
    /// `chainfold.transfers.v1`: ERC-20 transfers of watched tokens.
    pub transfers: String,
    pub blocks: String,
    /// `chainfold.seals.v1`: which blocks of a chain are published whole (domain::seal).
    pub seals: String,
    /// Publish events as JSON text instead of the binary form (`--envelope-json`).
    pub json_envelopes: bool,
}

impl Topics {
    /// `<prefix>chainfold.lending.v1`, `<prefix>chainfold.amm.v1`, `<prefix>chainfold.oracle.v1`
    /// and `<prefix>chainfold.blocks.v1`.
    pub fn with_prefix(prefix: &str) -> Self {
        Topics {
            lending: format!("{prefix}{}", topics::LENDING),
            amm: format!("{prefix}{}", topics::AMM),
            oracle: format!("{prefix}{}", topics::ORACLE),
            transfers: format!("{prefix}{}", topics::TRANSFERS),
            blocks: format!("{prefix}{}", topics::BLOCKS),
            seals: format!("{prefix}{}", topics::SEALS),
            json_envelopes: false,
        }
    }

    /// An event's record payload in the form this deployment publishes: the compact binary
    /// form ([`chainfold_domain::codec`]), or JSON text with `--envelope-json`. Every chainfold
    /// consumer reads both, so a topic may hold a mix.
    pub fn payload(&self, env: &chainfold_domain::Envelope) -> Vec<u8> {
        if self.json_envelopes {
            serde_json::to_vec(env)
                .expect("an Envelope always serialises: no maps with non-string keys")
        } else {
            chainfold_domain::codec::encode(env)
        }
    }

    /// The topic of an event kind.
    pub fn of(&self, kind: chainfold_domain::TopicKind) -> &str {
        match kind {
            chainfold_domain::TopicKind::Lending => &self.lending,
            chainfold_domain::TopicKind::Amm => &self.amm,
            chainfold_domain::TopicKind::Oracle => &self.oracle,
            chainfold_domain::TopicKind::Transfers => &self.transfers,
        }
    }

    /// The topics the projector folds (not their DLQs): the four event topics, the heads and
    /// the seals.
    pub fn event_topics(&self) -> [&str; 6] {
        [
            &self.lending,
            &self.amm,
            &self.oracle,
            &self.transfers,
            &self.blocks,
            &self.seals,
        ]
    }

    /// Every topic the ingest writes, including the dead-letter ones.
    pub fn all(&self) -> Vec<String> {
        let mut all = Vec::with_capacity(12);
        for topic in self.event_topics() {
            all.push(topic.to_owned());
            all.push(topics::dlq(topic));
        }
        all
    }
}

/// The default static membership id (`group.instance.id`) of a consumer in `group`:
/// `<group>@<hostname>`. A restarted process on the same host takes its partitions back at
/// once, without a rebalance; one that does not come back is expired after the session
/// timeout. Two live processes must not share an id (the broker fences the older one).
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

/// Topic settings of the log of record: nothing is ever deleted by age or size.
pub const RETENTION_FOREVER: [(&str, &str); 2] =
    [("retention.ms", "-1"), ("retention.bytes", "-1")];

/// Creates `names` with the configured partitions, replication factor, `min.insync.replicas`
/// and infinite retention if they do not exist yet (chainfold never relies on auto-creation),
/// corrects the retention and `min.insync.replicas` of those that exist with other values, then
/// waits until the broker's metadata lists them all.
pub async fn ensure_topics(args: &KafkaArgs, names: &[String]) -> anyhow::Result<()> {
    args.validate().map_err(anyhow::Error::msg)?;
    let admin: AdminClient<DefaultClientContext> = client_config(args)
        .create()
        .context("could not create Kafka admin client")?;
    let min_insync = args.min_insync_replicas.to_string();
    let new_topics: Vec<NewTopic<'_>> = names
        .iter()
        .map(|name| {
            RETENTION_FOREVER.iter().fold(
                NewTopic::new(
                    name,
                    args.partitions,
                    TopicReplication::Fixed(args.replication),
                )
                .set("min.insync.replicas", &min_insync),
                |topic, (key, value)| topic.set(key, value),
            )
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics(&new_topics, &options)
        .await
        .with_context(|| format!("could not create topics on Kafka at {}", args.brokers))?;
    let mut existing = Vec::new();
    for result in results {
        match result {
            Ok(_) => {}
            Err((topic, RDKafkaErrorCode::TopicAlreadyExists)) => existing.push(topic),
            Err((topic, RDKafkaErrorCode::InvalidReplicationFactor)) => anyhow::bail!(
                "could not create topic {topic}: replication factor {} is more than the brokers at {} (set --topic-replication)",
                args.replication,
                args.brokers
            ),
            Err((topic, code)) => anyhow::bail!("could not create topic {topic}: {code}"),
        }
    }
    if !existing.is_empty() {
        correct_retention(&admin, &existing, &min_insync).await?;
    }
    wait_for_topics(args, names).await
}

/// Topics created before the log of record kept everything (or by hand) get infinite retention
/// and the configured `min.insync.replicas`; their other dynamic settings are carried over
/// (a non-incremental AlterConfigs replaces the whole set).
async fn correct_retention(
    admin: &AdminClient<DefaultClientContext>,
    topics: &[String],
    min_insync: &str,
) -> anyhow::Result<()> {
    let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
    let specifiers: Vec<ResourceSpecifier<'_>> =
        topics.iter().map(|t| ResourceSpecifier::Topic(t)).collect();
    let described = admin
        .describe_configs(&specifiers, &options)
        .await
        .context("could not describe the topics' configuration")?;
    let wanted: Vec<(&str, &str)> = RETENTION_FOREVER
        .iter()
        .copied()
        .chain([("min.insync.replicas", min_insync)])
        .collect();
    for (topic, resource) in topics.iter().zip(described) {
        let resource =
            resource.with_context(|| format!("could not describe the configuration of {topic}"))?;
        let differs = wanted
            .iter()
            .any(|(key, value)| resource.get(key).and_then(|e| e.value.as_deref()) != Some(*value));
        if !differs {
            continue;
        }
        let kept: Vec<(String, String)> = resource
            .entries
            .iter()
            .filter(|e| e.source == ConfigSource::DynamicTopic)
            .filter(|e| !wanted.iter().any(|(key, _)| *key == e.name))
            .filter_map(|e| Some((e.name.clone(), e.value.clone()?)))
            .collect();
        let mut alter = AlterConfig::new(ResourceSpecifier::Topic(topic));
        for (key, value) in &kept {
            alter = alter.set(key, value);
        }
        for (key, value) in &wanted {
            alter = alter.set(key, value);
        }
        for result in admin
            .alter_configs(&[alter], &options)
            .await
            .with_context(|| format!("could not set the retention of {topic}"))?
        {
            result.map_err(|(_, code)| {
                anyhow::anyhow!("could not set the retention of {topic}: {code}")
            })?;
        }
        tracing::warn!(
            topic,
            "topic kept records for a limited time; set to keep them forever"
        );
    }
    Ok(())
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
            let (low, high) = partition_watermarks(consumer, topic, p, Duration::from_secs(30))?;
            Ok((p, low, high))
        })
        .collect()
}

/// Low and high watermark of one partition, asked again while the cluster moves leaders.
///
/// Right after a topic is created, or while a broker restarts and leaders move, a broker
/// answers `NotLeaderForPartition` or `LeaderNotAvailable` until the new leader is known:
/// a passing state, not an answer. A client that subscribes to nothing does not refresh its
/// metadata by itself, so each retry asks for the topic's metadata first. Gives up with the
/// last error after `patience`.
pub fn partition_watermarks(
    consumer: &BaseConsumer,
    topic: &str,
    partition: i32,
    patience: Duration,
) -> anyhow::Result<(i64, i64)> {
    let deadline = std::time::Instant::now() + patience;
    let mut pause = Duration::from_millis(100);
    loop {
        match consumer.fetch_watermarks(topic, partition, Duration::from_secs(10)) {
            Ok(marks) => return Ok(marks),
            Err(error) if std::time::Instant::now() + pause < deadline => {
                tracing::debug!(topic, partition, %error, "watermarks not available yet, asking again");
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_secs(2));
                // Refresh the client's view of the topic's leaders; an error here is the
                // same passing state and shows again in the next fetch.
                let _ = consumer.fetch_metadata(Some(topic), Duration::from_secs(5));
            }
            Err(error) => {
                return Err(anyhow::Error::new(error).context(format!(
                    "could not fetch the watermarks of {topic}/{partition} within {patience:?}"
                )))
            }
        }
    }
}
