//! Test-only helpers: service settings from the environment (with the local defaults), unique
//! names so tests run in parallel on one broker and one Postgres, and a fresh database per test.
//! A missing service fails the test with the variable that points at it.

pub mod cpu;
pub mod outbox;

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

/// `CHAINFOLD_FAULT_KAFKA_BROKERS`: the three-broker cluster of `scripts/stack up --cluster`
/// that the fault and scale tests use (and kill brokers of).
pub fn fault_kafka_brokers() -> String {
    std::env::var("CHAINFOLD_FAULT_KAFKA_BROKERS")
        .unwrap_or_else(|_| "127.0.0.1:9192,127.0.0.1:9193,127.0.0.1:9194".into())
}

/// `CHAINFOLD_FAULT_DATABASE_URL`: the Postgres of `scripts/stack up --cluster` that the fault
/// tests restart (never the one the other tests share).
pub fn fault_database_url() -> String {
    std::env::var("CHAINFOLD_FAULT_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5433/postgres".into())
}

/// `CHAINFOLD_FAULT_REDIS_URL`: the Redis of `scripts/stack up --cluster` the fault tests
/// restart.
pub fn fault_redis_url() -> String {
    std::env::var("CHAINFOLD_FAULT_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6380".into())
}

/// Runs `scripts/stack <args>` (the fault tests' way to kill and restart services), panics with
/// its output when it fails, and returns what it printed on stdout.
pub fn stack(args: &[&str]) -> String {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/stack");
    let output = std::process::Command::new(&script)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("could not run {}: {e}", script.display()));
    assert!(
        output.status.success(),
        "scripts/stack {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Holds a Postgres advisory lock named `name` on the shared test server until the connection is
/// dropped: tests that kill the fault stack's services take it so they run one at a time,
/// whichever test binary or thread they are in.
pub async fn exclusive(name: &str) -> sqlx::PgConnection {
    use sqlx::Connection as _;
    let mut conn = sqlx::PgConnection::connect(&database_url())
        .await
        .unwrap_or_else(|e| panic!("Postgres must run at DATABASE_URL={}: {e}", database_url()));
    sqlx::query("SELECT pg_advisory_lock(hashtext($1))")
        .bind(format!("chainfold-test:{name}"))
        .execute(&mut conn)
        .await
        .expect("advisory lock");
    conn
}

/// Takes the fault stack for one test ([`exclusive`]) and first brings back whatever an earlier
/// test left stopped (`scripts/stack up --cluster` starts only what is down): a fault test that
/// fails while a broker or Postgres is down must not fail the next one too.
pub async fn fault_stack() -> sqlx::PgConnection {
    let lock = exclusive("fault-stack").await;
    stack(&["up", "--cluster"]);
    lock
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
        Isolated::on(name, &kafka_brokers(), &database_url(), &redis_url()).await
    }

    /// [`Isolated::new`] on the fault stack (`scripts/stack up --cluster`): the three-broker
    /// cluster with replication 3 and `min.insync.replicas` 2, its own Postgres and Redis.
    pub async fn on_fault_stack(name: &str) -> Isolated {
        let mut iso = Isolated::on(
            name,
            &fault_kafka_brokers(),
            &fault_database_url(),
            &fault_redis_url(),
        )
        .await;
        iso.kafka.replication = 3;
        iso.kafka.min_insync_replicas = 2;
        iso
    }

    /// [`Isolated::new`] on the given services.
    pub async fn on(name: &str, brokers: &str, server: &str, redis: &str) -> Isolated {
        init_logs();
        let database = unique(&format!("cf_{name}")).replace('-', "_");
        let server = server.to_owned();
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
            kafka: KafkaArgs::new(brokers, format!("{}.", unique(name))),
            postgres: PostgresArgs::new(url),
            redis: RedisArgs::new(redis, format!("{}:", unique(name))),
            group: unique(&format!("{name}-group")),
            database,
        }
    }
}

impl Isolated {
    /// Drops this pipeline's database (its sessions are closed first): for benchmarks, whose
    /// databases run to hundreds of MB each. Tests leave theirs for inspection;
    /// `scripts/stack prune-test-databases` clears them before the next run.
    pub async fn drop_database(&self) {
        let url = self.postgres.expose_url();
        let Some((base, _)) = url.rsplit_once('/') else {
            return;
        };
        let Ok(admin) = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(5))
            .connect(&format!("{base}/postgres"))
            .await
        else {
            return;
        };
        if let Err(err) = sqlx::query(&format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
            self.database
        ))
        .execute(&admin)
        .await
        {
            eprintln!("could not drop {}: {err}", self.database);
        }
        admin.close().await;
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

/// Reads the dead letters of `topic` (its `.dlq` topic, from the beginning) until `expect`
/// arrived or `timeout` passed: (reason header, payload) each.
pub fn read_dead_letters(
    kafka: &KafkaArgs,
    topic: &str,
    expect: usize,
    timeout: Duration,
) -> Vec<(String, Vec<u8>)> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::{Headers, Message};
    let dlq = chainfold_domain::topics::dlq(topic);
    let consumer: BaseConsumer = chainfold_platform::kafka::client_config(kafka)
        .set("group.id", unique("dlq-reader"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("dead-letter reader");
    consumer.subscribe(&[dlq.as_str()]).expect("subscribe");
    let deadline = std::time::Instant::now() + timeout;
    let mut out = Vec::new();
    while out.len() < expect && std::time::Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            let reason = m
                .headers()
                .and_then(|h| {
                    h.iter()
                        .find(|h| h.key == chainfold_domain::topics::headers::DLQ_REASON)
                        .and_then(|h| h.value)
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                })
                .unwrap_or_default();
            out.push((reason, m.payload().unwrap_or_default().to_vec()));
        }
    }
    out
}

/// Columns that say where the log put a record (a prefixed topic, a partition, an offset).
const KAFKA: [&str; 3] = ["kafka_topic", "kafka_partition", "kafka_offset"];

/// Every table a replay of the log rebuilds (read models and derived tables), with the columns
/// left out of its fingerprint: where in the log a record sat, surrogate sequence numbers and
/// the wall-clock time a process wrote a row. Everything else must be equal between two runs of
/// the same chain, whatever faults one of them went through.
pub fn rebuilt_tables() -> Vec<(&'static str, Vec<&'static str>)> {
    let kafka = |extra: &[&'static str]| KAFKA.iter().chain(extra).copied().collect::<Vec<_>>();
    vec![
        ("lending_event", kafka(&[])),
        ("wallet_lending_summary", vec!["version"]),
        // Each wallet's last key must be the history's, whatever was retracted; marks are drawn
        // from a sequence.
        ("lending_order", vec!["mark"]),
        ("swap", kafka(&[])),
        ("pool_summary", vec!["version"]),
        ("pool_token_volume", vec![]),
        ("pool_sync", kafka(&["seq"])),
        ("liquidity_event", kafka(&[])),
        ("flash_loan", kafka(&[])),
        ("oracle_update", kafka(&[])),
        ("lending_market_event", kafka(&[])),
        ("erc20_transfer", kafka(&[])),
        ("erc20_balance", vec![]),
        ("erc20_token", vec![]),
        ("chain_head", vec!["updated_at"]),
        (
            "credit_score",
            kafka(&["id", "projector_next_offset", "created_at"]),
        ),
        ("attestation", vec!["kafka_partition", "kafka_offset"]),
        (
            "credit_decision",
            vec![
                "seq",
                "tx_hash",
                "tx_block",
                "actuated_at",
                "actuation_error",
            ],
        ),
        (
            "risk_alert",
            vec!["seq", "source_published_at", "detected_at"],
        ),
        ("risk_incident", vec!["updated_at"]),
        ("stress_run", vec!["id", "computed_at", "elapsed_ms"]),
    ]
}

/// The rows of `table` as the fingerprint sees them: JSON without the left-out columns, sorted.
pub async fn fingerprint_rows(pool: &sqlx::PgPool, table: &str, without: &[&str]) -> Vec<String> {
    let without: Vec<String> = without.iter().map(|c| (*c).to_owned()).collect();
    // `table` is one of `rebuilt_tables()`, never input.
    let sql = if table == "stress_scenario" {
        "SELECT ((to_jsonb(s) - 'run_id') || jsonb_build_object('as_of_block', r.as_of_block,
                 'trigger', r.trigger))::text AS j
         FROM stress_scenario s JOIN stress_run r ON r.id = s.run_id ORDER BY 1"
            .to_owned()
    } else {
        format!("SELECT (to_jsonb(t) - $1::text[])::text AS j FROM {table} t ORDER BY 1")
    };
    sqlx::query_scalar(&sql)
        .bind(&without)
        .fetch_all(pool)
        .await
        .unwrap_or_else(|e| panic!("fingerprint of {table}: {e}"))
}

/// Per rebuilt table (and `stress_scenario`): (row count, md5 of its sorted fingerprint rows).
pub async fn fingerprints(pool: &sqlx::PgPool) -> Vec<(String, usize, String)> {
    let mut out = Vec::new();
    let mut tables = rebuilt_tables();
    tables.push(("stress_scenario", vec![]));
    for (table, without) in tables {
        let rows = fingerprint_rows(pool, table, &without).await;
        let digest: String = sqlx::query_scalar("SELECT md5($1)")
            .bind(rows.join("\n"))
            .fetch_one(pool)
            .await
            .expect("md5");
        out.push((table.to_owned(), rows.len(), digest));
    }
    out
}

/// Panics naming every table whose fingerprint differs between `ours` and `theirs`, with a few
/// rows each side has and the other has not.
pub async fn assert_same_tables(ours: &sqlx::PgPool, theirs: &sqlx::PgPool, what: &str) {
    let (a, b) = (fingerprints(ours).await, fingerprints(theirs).await);
    let mut report = String::new();
    let mut tables = rebuilt_tables();
    tables.push(("stress_scenario", vec![]));
    for ((table, without), (x, y)) in tables.iter().zip(a.iter().zip(&b)) {
        if x == y {
            continue;
        }
        let ra = fingerprint_rows(ours, table, without).await;
        let rb = fingerprint_rows(theirs, table, without).await;
        let only_a: Vec<&String> = ra.iter().filter(|r| !rb.contains(r)).take(3).collect();
        let only_b: Vec<&String> = rb.iter().filter(|r| !ra.contains(r)).take(3).collect();
        report.push_str(&format!(
            "\n{table}: {} rows vs {}\n  only in {what}: {only_a:#?}\n  only in the reference: {only_b:#?}",
            x.1, y.1
        ));
    }
    assert!(
        report.is_empty(),
        "tables differ from the reference:{report}"
    );
}

/// Waits (up to 30 s) until the cumulative statistics count live rows in `table`: a backend
/// reports its committed rows within about a second.
pub async fn wait_live_rows(pool: &sqlx::PgPool, table: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while sqlx::query_scalar::<_, i64>(
        "SELECT coalesce(max(n_live_tup), 0) FROM pg_stat_user_tables WHERE relname = $1",
    )
    .bind(table)
    .fetch_one(pool)
    .await
    .expect("live rows")
        == 0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no live rows counted in {table}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sets `table`'s planner estimates to what a vacuum beside an uncommitted refill leaves: its
/// pages, and 0 tuples (needs a superuser, as the tests' `DATABASE_URL` is).
pub async fn set_estimated_empty(pool: &sqlx::PgPool, table: &str) {
    sqlx::query(
        "UPDATE pg_class SET relpages = greatest(pg_relation_size(oid) / 8192, 1), reltuples = 0
         WHERE oid = to_regclass($1)",
    )
    .bind(table)
    .execute(pool)
    .await
    .expect("estimated empty");
}

/// Waits (up to 30 s) until the planner estimates `table` at `rows` tuples or more, and returns
/// the estimate; fails naming `what` if it does not come.
pub async fn wait_estimated_rows(pool: &sqlx::PgPool, table: &str, rows: f32, what: &str) -> f32 {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let tuples: f32 =
            sqlx::query_scalar("SELECT reltuples FROM pg_class WHERE oid = to_regclass($1)")
                .bind(table)
                .fetch_one(pool)
                .await
                .expect("estimate");
        if tuples >= rows {
            return tuples;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{table} still estimated at {tuples} rows, {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
