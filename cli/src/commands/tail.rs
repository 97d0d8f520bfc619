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
            let payload = message.payload().map(readable).unwrap_or_default();
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

/// A payload as text: a binary envelope as its JSON form (what `--envelope-json` would have
/// published), anything else as the bytes' text.
fn readable(payload: &[u8]) -> String {
    if !chainfold_domain::codec::is_binary(payload) {
        return String::from_utf8_lossy(payload).into_owned();
    }
    match chainfold_domain::codec::decode(payload) {
        Ok(env) => serde_json::to_string(&env)
            .expect("an Envelope always serialises: no maps with non-string keys"),
        Err(err) => format!(
            "(a binary envelope that does not read: {err}) {}",
            payload
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        ),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn binary_envelopes_print_as_their_json_and_damaged_ones_say_why() {
        let env = chainfold_domain::Envelope {
            schema_version: chainfold_domain::SCHEMA_VERSION,
            event_id: chainfold_domain::EventId(chainfold_domain::B256::repeat_byte(1)),
            chain_id: 1,
            block: None,
            tx_hash: None,
            log_index: None,
            block_time: None,
            source: chainfold_domain::Source::Rpc,
            event: chainfold_domain::DefiEvent::PoolSync(chainfold_domain::PoolSync {
                protocol: "uniswap_v2".into(),
                pool: chainfold_domain::Address::repeat_byte(2),
                token0: chainfold_domain::Address::repeat_byte(3),
                token1: chainfold_domain::Address::repeat_byte(4),
                reserve0: chainfold_domain::TokenAmount::parse_integer("5").expect("valid"),
                reserve1: chainfold_domain::TokenAmount::parse_integer("6").expect("valid"),
            }),
            retracted: false,
        };
        let binary = chainfold_domain::codec::encode(&env);
        let json = serde_json::to_string(&env).expect("serialise");
        assert_eq!(super::readable(&binary), json);
        assert_eq!(super::readable(json.as_bytes()), json);
        let cut = super::readable(&binary[..binary.len() - 1]);
        assert!(
            cut.starts_with("(a binary envelope that does not read: binary envelope ends early"),
            "{cut}"
        );
    }
}
