//! `chainfold tail`: a topic's records printed readably.

use std::time::Duration;

use anyhow::Context as _;
use chainfold_platform::config::KafkaArgs;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

/// `chainfold tail` settings.
#[derive(Debug, Clone, clap::Args)]
pub struct TailConfig {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Topic to print, e.g. `chainfold.lending.v1` or `chainfold.lending.v1.dlq`.
    pub topic: String,
    /// Print at most this many records, then exit.
    #[arg(long = "limit", short = 'n')]
    pub limit: Option<u64>,
    /// Keep waiting for new records after the end of the topic.
    #[arg(long = "follow", short = 'f')]
    pub follow: bool,
    /// Start at each partition's end instead of its beginning (use with --follow).
    #[arg(long = "from-end")]
    pub from_end: bool,
}

pub async fn run(config: TailConfig) -> anyhow::Result<()> {
    let consumer: BaseConsumer = chainfold_platform::kafka::client_config(&config.kafka)
        .set("group.id", "chainfold-tail")
        .set("enable.auto.commit", "false")
        .create()
        .context("could not create Kafka consumer")?;
    let topic = config.topic.clone();
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let marks = chainfold_platform::kafka::watermarks(&consumer, &topic)?;
        let mut tpl = TopicPartitionList::new();
        for (partition, low, high) in &marks {
            let start = if config.from_end { *high } else { *low };
            tpl.add_partition_offset(&topic, *partition, Offset::Offset(start))
                .context("could not build the assignment")?;
        }
        consumer
            .assign(&tpl)
            .context("could not assign partitions")?;
        let mut remaining: i64 = marks
            .iter()
            .map(|(_, low, high)| if config.from_end { 0 } else { high - low })
            .sum();
        let mut printed = 0u64;
        loop {
            if config.limit.is_some_and(|limit| printed >= limit)
                || (!config.follow && remaining <= 0)
            {
                return Ok(());
            }
            let Some(result) = consumer.poll(Duration::from_millis(500)) else {
                continue;
            };
            let message = result.context("could not read from Kafka")?;
            remaining -= 1;
            printed += 1;
            let key = message
                .key()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .unwrap_or_else(|| "-".into());
            let headers = message
                .headers()
                .map(|hs| {
                    hs.iter()
                        .map(|h| {
                            format!(
                                "{}={}",
                                h.key,
                                h.value
                                    .map(|v| String::from_utf8_lossy(v).into_owned())
                                    .unwrap_or_default()
                            )
                        })
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default();
            let payload = message
                .payload()
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .unwrap_or_default();
            println!(
                "{}/{}@{} key={} {}\n  {}",
                message.topic(),
                message.partition(),
                message.offset(),
                key,
                if headers.is_empty() {
                    String::new()
                } else {
                    format!("[{headers}]")
                },
                payload
            );
        }
    })
    .await
    .context("tail task panicked")?
}
