//! Test-only helpers: service settings from the environment (with the local defaults), unique
//! names so tests run in parallel on one broker and one Postgres, and a fresh database per test.
//! A missing service fails the test with the variable that points at it.

use std::path::PathBuf;
use std::sync::Once;
use std::time::Duration;

use chainfold_platform::config::{KafkaArgs, PostgresArgs, RedisArgs};
use rand::Rng as _;

/// `CHAINFOLD_KAFKA_BROKERS`, default `127.0.0.1:9092`.
pub fn kafka_brokers() -> String {
    std::env::var("CHAINFOLD_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// `DATABASE_URL` of the server (its database is not used; each test gets its own).
pub fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/chainfold".into())
}

/// `REDIS_URL`, default `redis://127.0.0.1:6379`.
pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// `<prefix>-<random>`: topic prefixes, groups, database names and Redis prefixes that no
/// other test uses.
pub fn unique(prefix: &str) -> String {
    let n: u64 = rand::thread_rng().gen();
    format!("{prefix}-{n:016x}")
}

/// The bundled `data/` directory of the workspace.
pub fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data")
}

/// Logs to stderr when `TEST_LOG=1`, quiet otherwise.
pub fn init_logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var("TEST_LOG").is_ok_and(|v| v == "1") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
                .with_test_writer()
                .try_init();
        }
    });
}

/// Everything one isolated pipeline needs: its own topics, group, database and Redis keys.
#[derive(Debug, Clone)]
pub struct Isolated {
    pub kafka: KafkaArgs,
    pub postgres: PostgresArgs,
    pub redis: RedisArgs,
    pub group: String,
    pub database: String,
}

impl Isolated {
    /// Creates a fresh database (migrations run when a role connects) and picks unique names.
    pub async fn new(name: &str) -> Isolated {
        init_logs();
        let database = unique(&format!("cf_{name}")).replace('-', "_");
        let server = database_url();
        let Some((base, _)) = server.rsplit_once('/') else {
            panic!("DATABASE_URL={server} has no database path")
        };
        // Admin work happens in the server's `postgres` database, which always exists.
        let admin = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(5))
            .connect(&format!("{base}/postgres"))
            .await
            .unwrap_or_else(|e| {
                panic!("Postgres must run at DATABASE_URL={server} (scripts/stack up): {e}")
            });
        sqlx::query(&format!("CREATE DATABASE \"{database}\""))
            .execute(&admin)
            .await
            .expect("create a test database");
        admin.close().await;
        let url = format!("{base}/{database}");
        Isolated {
            kafka: KafkaArgs::new(kafka_brokers(), format!("{}.", unique(name))),
            postgres: PostgresArgs::new(url),
            redis: RedisArgs::new(redis_url(), format!("{}:", unique(name))),
            group: unique(&format!("{name}-group")),
            database,
        }
    }
}

/// Reads `topic` from the beginning (all partitions, no group) until `expect` records arrived
/// or `timeout` passed; returns the payloads read.
pub fn read_topic(
    kafka: &KafkaArgs,
    topic: &str,
    expect: usize,
    timeout: Duration,
) -> Vec<Vec<u8>> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    let consumer: BaseConsumer = chainfold_platform::kafka::client_config(kafka)
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("reader");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let mut assignment = rdkafka::TopicPartitionList::new();
    for t in metadata.topics() {
        for p in t.partitions() {
            assignment
                .add_partition_offset(topic, p.id(), rdkafka::Offset::Beginning)
                .expect("assignment");
        }
    }
    consumer.assign(&assignment).expect("assign");
    let deadline = std::time::Instant::now() + timeout;
    let mut out = Vec::new();
    while out.len() < expect && std::time::Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            out.push(m.payload().unwrap_or_default().to_vec());
        }
    }
    out
}
