//! Config groups shared by the roles, flattened into each subcommand with
//! `#[command(flatten)]`. Every field reads a flag and a `CHAINFOLD_*` variable (the standard
//! `DATABASE_URL` and `REDIS_URL` are kept); defaults run against 127.0.0.1.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

/// Kafka connection and topic naming.
#[derive(Debug, Clone, clap::Args)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers, comma separated.
    #[arg(
        long = "kafka-brokers",
        env = "CHAINFOLD_KAFKA_BROKERS",
        default_value = "127.0.0.1:9092"
    )]
    pub brokers: String,
    /// Prefix put before every topic name (`<prefix>chainfold.lending.v1`), to run several
    /// isolated pipelines on one broker. Empty in production.
    #[arg(
        id = "topic_prefix",
        value_name = "PREFIX",
        long = "topic-prefix",
        env = "CHAINFOLD_TOPIC_PREFIX",
        default_value = ""
    )]
    pub topic_prefix: String,
    /// Partitions for topics chainfold creates. Lending is keyed by wallet and AMM by pool, so
    /// this bounds how many projector instances share the work.
    #[arg(
        long = "topic-partitions",
        env = "CHAINFOLD_TOPIC_PARTITIONS",
        default_value_t = 6
    )]
    pub partitions: i32,
    /// Replication factor of topics chainfold creates: 1 on one local broker, 3 on a cluster
    /// (docker/, `scripts/stack up --cluster`).
    #[arg(
        long = "topic-replication",
        env = "CHAINFOLD_TOPIC_REPLICATION",
        default_value_t = 1,
        value_parser = clap::value_parser!(i32).range(1..=32)
    )]
    pub replication: i32,
    /// `min.insync.replicas` of topics chainfold creates: how many replicas must have a record
    /// before the producer (`acks=all`) is told it is written. 2 with replication 3, so one
    /// broker can fail without losing an acknowledged event.
    #[arg(
        long = "topic-min-insync-replicas",
        env = "CHAINFOLD_TOPIC_MIN_INSYNC_REPLICAS",
        default_value_t = 1,
        value_parser = clap::value_parser!(i32).range(1..=32)
    )]
    pub min_insync_replicas: i32,
    /// Raw librdkafka option `key=value`, repeatable; applied last (escape hatch).
    #[arg(long = "kafka-option", value_parser = parse_key_value)]
    pub options: Vec<(String, String)>,
    /// Publish events as JSON text instead of the compact binary form (for consumers outside
    /// chainfold; chainfold's own read both). Used by `ingest`.
    #[arg(long = "envelope-json", env = "CHAINFOLD_ENVELOPE_JSON")]
    pub envelope_json: bool,
}

impl KafkaArgs {
    /// Settings for a broker at `brokers` with no prefix and the default partitions.
    pub fn new(brokers: impl Into<String>, topic_prefix: impl Into<String>) -> Self {
        KafkaArgs {
            brokers: brokers.into(),
            topic_prefix: topic_prefix.into(),
            partitions: 6,
            replication: 1,
            min_insync_replicas: 1,
            options: Vec::new(),
            envelope_json: false,
        }
    }

    /// Refuses settings no broker would accept, before anything connects.
    pub fn validate(&self) -> Result<(), String> {
        if self.min_insync_replicas > self.replication {
            return Err(format!(
                "--topic-min-insync-replicas {} is more than --topic-replication {}: no write could ever be acknowledged",
                self.min_insync_replicas, self.replication
            ));
        }
        if self.partitions < 1 {
            return Err(format!(
                "--topic-partitions {} must be at least 1",
                self.partitions
            ));
        }
        Ok(())
    }

    /// The topic names these settings address.
    pub fn topics(&self) -> crate::kafka::Topics {
        crate::kafka::Topics {
            json_envelopes: self.envelope_json,
            ..crate::kafka::Topics::with_prefix(&self.topic_prefix)
        }
    }
}

fn parse_key_value(text: &str) -> Result<(String, String), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("expected key=value, got {text:?}"))?;
    if key.trim().is_empty() {
        return Err(format!("empty key in {text:?}"));
    }
    Ok((key.trim().to_owned(), value.trim().to_owned()))
}

/// Postgres connection.
#[derive(Debug, Clone, clap::Args)]
pub struct PostgresArgs {
    /// Postgres URL of the read models (may hold a password: never logged).
    #[arg(
        id = "database_url",
        value_name = "URL",
        long = "database-url",
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/chainfold"
    )]
    pub url: SecretString,
    /// Most connections the pool opens.
    #[arg(
        long = "database-max-connections",
        env = "CHAINFOLD_DATABASE_MAX_CONNECTIONS",
        default_value_t = 8
    )]
    pub max_connections: u32,
    /// How long to wait for a connection before failing, e.g. `5s`.
    #[arg(long = "database-connect-timeout", env = "CHAINFOLD_DATABASE_CONNECT_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
}

impl PostgresArgs {
    pub fn new(url: impl Into<String>) -> Self {
        PostgresArgs {
            url: SecretString::from(url.into()),
            max_connections: 8,
            connect_timeout: Duration::from_secs(5),
        }
    }

    /// The URL, for the connection call only.
    pub fn expose_url(&self) -> &str {
        self.url.expose_secret()
    }
}

/// Redis connection and key naming.
#[derive(Debug, Clone, clap::Args)]
pub struct RedisArgs {
    /// Redis URL of the caches (may hold a password: never logged).
    #[arg(
        id = "redis_url",
        value_name = "URL",
        long = "redis-url",
        env = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    pub url: SecretString,
    /// Prefix of every Redis key chainfold writes.
    #[arg(
        id = "redis_prefix",
        value_name = "PREFIX",
        long = "redis-prefix",
        env = "CHAINFOLD_REDIS_PREFIX",
        default_value = "chainfold:"
    )]
    pub prefix: String,
}

impl RedisArgs {
    pub fn new(url: impl Into<String>, prefix: impl Into<String>) -> Self {
        RedisArgs {
            url: SecretString::from(url.into()),
            prefix: prefix.into(),
        }
    }

    pub fn expose_url(&self) -> &str {
        self.url.expose_secret()
    }
}

/// Logging.
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Log filter (`RUST_LOG` syntax), e.g. `info,chainfold_projector=debug`.
    #[arg(long = "log", env = "RUST_LOG", default_value = "info", global = true)]
    pub filter: String,
    /// Log as JSON lines instead of text.
    #[arg(long = "log-json", env = "CHAINFOLD_LOG_JSON", global = true)]
    pub json: bool,
}

/// Parses `500ms`, `5s`, `2m`, `1h` into a [`Duration`].
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{text:?} has no unit (use ms, s, m or h)"))?;
    let (number, unit) = text.split_at(split);
    let value: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} does not start with a whole number"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(value)),
        "s" => Ok(Duration::from_secs(value)),
        "m" => Ok(Duration::from_secs(value * 60)),
        "h" => Ok(Duration::from_secs(value * 3600)),
        other => Err(format!(
            "unknown unit {other:?} in {text:?} (use ms, s, m or h)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_and_reject_bare_numbers() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("5 parsecs").is_err());
    }

    #[test]
    fn kafka_options_need_a_key_and_an_equals_sign() {
        assert_eq!(
            parse_key_value("linger.ms=5"),
            Ok(("linger.ms".into(), "5".into()))
        );
        assert!(parse_key_value("linger.ms").is_err());
        assert!(parse_key_value("=5").is_err());
    }
}
