//! Side by side on one dense chain: chainfold and Ponder, cold, into Postgres, with the bounds
//! of the node, the store and the broker measured in the same run.
//!
//! A local anvil gets one Uniswap-V2-style pair (`FixtureDensePair`) emitting `swaps` ×
//! (`Sync`, `Swap`) per block over `blocks` blocks (default 4,000 × 50: 200,000 swaps and
//! 200,000 syncs). Then, `runs` times each (default 3; medians reported):
//!
//! - chainfold cold: fresh topics and database; the release binary's `ingest rpc --until-head`
//!   and `project` started together; the time until every `swap` and `pool_sync` row is in
//!   Postgres (and, separately, until ingest has published everything and exited).
//! - Ponder cold (0.16.10 from npm, installed by `scripts/bench` into
//!   ~/.cache/chainfold/ponder, `CHAINFOLD_PONDER_DIR` elsewhere; `CHAINFOLD_DENSE_PONDER=0`
//!   skips it): a fresh database, `ponder start` in Postgres mode with indexing functions that
//!   insert one row per `Swap` and one per `Sync`; the time until every row is in Postgres.
//! - Bounds: the fastest of three `eth_getLogs` over the whole range; `COPY` of the same rows
//!   (the projector's event ids, random in the primary key as its are) into the real `swap`
//!   and `pool_sync` tables of a migrated database, in one transaction; the broker's raw
//!   produce (acks=all, the ingest producer's settings) and raw consume of as many records of
//!   the envelopes' size.
//!
//! With `CHAINFOLD_BASE_BIN=<an earlier build of chainfold>`, every round also runs that build
//! cold (the two in alternating order) and the summary gives this build's time as a ratio of
//! it: how a change is measured here.
//!
//! `cargo bench -p chainfold-cli --bench dense -- [blocks] [swaps per block] [runs]`, or
//! `scripts/bench dense` (installs Ponder, builds, runs). Services as for the tests. No timing
//! is asserted; row counts are (a run that does not reach them fails).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use alloy::providers::{Provider as _, ProviderBuilder};
use alloy::rpc::types::Filter;
use chainfold_simulate::anvil::Anvil;
use chainfold_simulate::dense::{self, DenseChain};
use chainfold_testkit::cpu::{comm_seconds, machine_seconds, proc_times};
use chainfold_testkit::{unique, Isolated};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::producer::FutureRecord;
use rdkafka::{Offset, TopicPartitionList};

/// The allocator the `chainfold` binary uses, so the bare client of the bounds allocates as
/// chainfold does.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Kills the child when dropped (a failed run leaves no process behind).
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn count(pool: &sqlx::PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap_or(0)
}

/// Polls every 50 ms until every swap and sync of the chain is in chainfold's tables; fails
/// after `limit`. The poll itself must not load the store it measures: `count(*)` of a growing
/// table is a sequential scan (measured: 10% of the machine at 50 ms, polling two tables), so
/// the one-row `pool_summary` (advanced in the same transaction as the swaps) gates it and the
/// counts run only once all swaps are in.
async fn wait_for_rows(
    pool: &sqlx::PgPool,
    want: i64,
    started: Instant,
    limit: Duration,
    what: &str,
    child: &mut Killed,
) -> Duration {
    loop {
        let swaps = count(
            pool,
            "SELECT COALESCE(sum(swap_count), 0)::int8 FROM pool_summary",
        )
        .await;
        let n = if swaps >= want {
            count(
                pool,
                "SELECT least((SELECT count(*) FROM swap), (SELECT count(*) FROM pool_sync))",
            )
            .await
        } else {
            0
        };
        if n >= want {
            return started.elapsed();
        }
        if let Ok(Some(status)) = child.0.try_wait() {
            panic!("{what} exited with {status} at {swaps}/{want} swaps");
        }
        assert!(
            started.elapsed() < limit,
            "{what} stalled: {swaps}/{want} swaps after {:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Where a cold run's CPU went, in core-seconds (user + system), read from `/proc`.
#[derive(Debug, Clone, Copy, Default)]
struct CpuAccount {
    ingest: f64,
    project: f64,
    anvil: f64,
    /// Every JVM on the machine: the broker (and the idle fault cluster, if it is up).
    broker: f64,
    /// Every Postgres process, with the backends that ended in the window.
    postgres: f64,
    /// The machine's busy time (all cores) and its capacity (cores × wall) in the window.
    busy: f64,
    capacity: f64,
}

/// The machine's parts at one instant (seconds since they started).
#[derive(Debug, Clone, Copy)]
struct CpuSnapshot {
    children: f64,
    anvil: f64,
    broker: f64,
    postgres: f64,
    busy: f64,
    total: f64,
}

fn snapshot(anvil_pid: u32) -> CpuSnapshot {
    let (busy, total) = machine_seconds();
    CpuSnapshot {
        children: proc_times("self").map_or(0.0, |t| t.1),
        anvil: proc_times(&anvil_pid.to_string()).map_or(0.0, |t| t.0),
        broker: comm_seconds("java"),
        postgres: comm_seconds("postgres"),
        busy,
        total,
    }
}

struct ChainfoldRun {
    /// Until ingest published everything and exited.
    ingest: Duration,
    /// Until every row was in Postgres.
    rows: Duration,
    /// A second projector, alone, folding the same topics into a fresh database: until every
    /// row was in Postgres (the projector's own rate, beside the COPY bound).
    project_alone: Duration,
    cpu: CpuAccount,
}

async fn chainfold_run(chain: &DenseChain, anvil: &Anvil, i: usize, bin: &Path) -> ChainfoldRun {
    let iso = Isolated::new(&format!("dense{i}")).await;
    let chains = std::env::temp_dir()
        .join(unique("dense-chains"))
        .with_extension("toml");
    std::fs::write(&chains, dense::chains_toml(chain, &anvil.http_url())).expect("chains.toml");
    let logs = std::env::temp_dir().join(unique("dense-logs"));
    std::fs::create_dir_all(&logs).expect("log dir");
    let role = |args: &[&str], log: &str| {
        let mut c = Command::new(bin);
        c.args(args)
            .env("CHAINFOLD_KAFKA_BROKERS", &iso.kafka.brokers)
            .env("CHAINFOLD_TOPIC_PREFIX", &iso.kafka.topic_prefix)
            .env("DATABASE_URL", iso.postgres.expose_url())
            .env("REDIS_URL", iso.redis.expose_url())
            .env("CHAINFOLD_REDIS_PREFIX", &iso.redis.prefix)
            .env(
                "RUST_LOG",
                std::env::var("CHAINFOLD_DENSE_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .current_dir(workspace())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(logs.join(log)).expect("log"));
        c
    };
    // Migrations and topics exist before the clock starts for both (as for Ponder, whose
    // schema creation is inside its run: a few hundred ms at most, noted in BENCHMARKS.md).
    let pool = chainfold_platform::postgres::connect_and_migrate(&iso.postgres)
        .await
        .expect("migrate");
    chainfold_platform::kafka::ensure_topics(&iso.kafka, &iso.kafka.topics().all())
        .await
        .expect("topics");
    let before = snapshot(anvil.pid());
    let started = Instant::now();
    let mut ingest = Killed(
        role(
            &[
                "ingest",
                "rpc",
                "--until-head",
                "--chains",
                chains.to_str().expect("a UTF-8 temp path"),
            ],
            "ingest.log",
        )
        .spawn()
        .expect("ingest"),
    );
    let mut project = Killed(
        role(&["project", "--group", &iso.group], "project.log")
            .spawn()
            .expect("project"),
    );
    let limit = Duration::from_secs(900);
    let want = chain.swaps as i64;
    let ingest_done = tokio::task::spawn_blocking(move || {
        let status = ingest.0.wait().expect("wait ingest");
        // Reaped: its CPU is now in this process's children's times.
        (
            status,
            Instant::now(),
            proc_times("self").map_or(0.0, |t| t.1),
        )
    });
    let rows = wait_for_rows(
        &pool,
        want,
        started,
        limit,
        "chainfold project",
        &mut project,
    )
    .await;
    let at_rows = snapshot(anvil.pid());
    let (status, ended, ingest_children) = ingest_done.await.expect("ingest task");
    // The projector has folded everything: stop it (reaped) to read its CPU.
    drop(project);
    let cpu = CpuAccount {
        ingest: ingest_children - before.children,
        project: proc_times("self").map_or(0.0, |t| t.1) - ingest_children,
        anvil: at_rows.anvil - before.anvil,
        broker: at_rows.broker - before.broker,
        postgres: at_rows.postgres - before.postgres,
        busy: at_rows.busy - before.busy,
        capacity: at_rows.total - before.total,
    };
    // The projector alone: the same topics, a new group, a fresh database, all already in the
    // log when it starts.
    let alone = Isolated::new(&format!("densealone{i}")).await;
    let alone_pool = chainfold_platform::postgres::connect_and_migrate(&alone.postgres)
        .await
        .expect("migrate");
    let started_alone = Instant::now();
    let mut refold = Killed(
        role(&["project", "--group", &alone.group], "project-alone.log")
            .env("DATABASE_URL", alone.postgres.expose_url())
            .spawn()
            .expect("project alone"),
    );
    let project_alone = wait_for_rows(
        &alone_pool,
        want,
        started_alone,
        limit,
        "chainfold project (alone)",
        &mut refold,
    )
    .await;
    drop(refold);
    alone_pool.close().await;
    alone.drop_database().await;
    assert!(
        status.success(),
        "ingest failed ({status}); log in {}",
        logs.display()
    );
    if std::env::var_os("CHAINFOLD_DENSE_LOG").is_some() {
        eprintln!("role logs in {}", logs.display());
    }
    let swaps = count(&pool, "SELECT count(*) FROM swap").await;
    assert_eq!(swaps, want, "every swap once");
    let syncs = count(&pool, "SELECT count(*) FROM pool_sync").await;
    assert_eq!(syncs, want, "every sync once");
    pool.close().await;
    iso.drop_database().await;
    ChainfoldRun {
        ingest: ended - started,
        rows,
        project_alone,
        cpu,
    }
}

/// The binary measured: this build's, or `CHAINFOLD_BIN`.
fn binary() -> PathBuf {
    std::env::var_os("CHAINFOLD_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_chainfold")),
        PathBuf::from,
    )
}

/// `CHAINFOLD_BASE_BIN`: an earlier build, run cold beside [`binary`] in every round (the two
/// in alternating order), so a change is measured against its baseline on the same machine in
/// the same minutes. Separate invocations of this benchmark on one machine differed by up to
/// ~10 % in every figure, the unchanged node and store included.
fn base_binary() -> Option<PathBuf> {
    std::env::var_os("CHAINFOLD_BASE_BIN").map(PathBuf::from)
}

/// Round `i`'s cold run of the [`base_binary`], if one is set.
async fn baseline_run(chain: &DenseChain, anvil: &Anvil, i: usize) -> Option<ChainfoldRun> {
    let bin = base_binary()?;
    eprintln!("run {i}: baseline cold");
    Some(chainfold_run(chain, anvil, 1_000 + i, &bin).await)
}

fn ponder_dir() -> PathBuf {
    std::env::var_os("CHAINFOLD_PONDER_DIR").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/chainfold/ponder"),
        PathBuf::from,
    )
}

/// A Ponder project over the dense pair in `dir`, linking the installed node_modules.
fn ponder_project(dir: &Path, chain: &DenseChain, rpc: &str) {
    std::fs::create_dir_all(dir.join("src")).expect("ponder dir");
    let build: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(workspace().join("fixtures/build/FixtureDensePair.json"))
            .expect("abi"),
    )
    .expect("abi json");
    let events: Vec<&serde_json::Value> = build["abi"]
        .as_array()
        .expect("abi array")
        .iter()
        .filter(|e| e["type"] == "event")
        .collect();
    let abi = serde_json::to_string(&events).expect("abi");
    std::fs::write(
        dir.join("package.json"),
        r#"{ "name": "chainfold-dense-ponder", "private": true, "type": "module" }"#,
    )
    .expect("package.json");
    let modules = dir.join("node_modules");
    if !modules.exists() {
        std::os::unix::fs::symlink(ponder_dir().join("node_modules"), modules).expect("link");
    }
    std::fs::write(
        dir.join("ponder.config.ts"),
        format!(
            r#"import {{ createConfig }} from "ponder";
const abi = {abi} as const;
export default createConfig({{
  database: {{ kind: "postgres", connectionString: process.env.DATABASE_URL }},
  chains: {{ anvil: {{ id: {chain_id}, rpc: "{rpc}", disableCache: true }} }},
  contracts: {{ Pair: {{ chain: "anvil", abi, address: "{pair:#x}", startBlock: {start} }} }},
}});
"#,
            chain_id = chain.chain_id,
            pair = chain.pair,
            start = chain.deployed_at,
        ),
    )
    .expect("config");
    std::fs::write(
        dir.join("ponder.schema.ts"),
        r#"import { onchainTable } from "ponder";
export const swap = onchainTable("swap", (t) => ({
  id: t.text().primaryKey(),
  pool: t.hex().notNull(),
  sender: t.hex().notNull(),
  recipient: t.hex().notNull(),
  amount0In: t.bigint().notNull(),
  amount1In: t.bigint().notNull(),
  amount0Out: t.bigint().notNull(),
  amount1Out: t.bigint().notNull(),
  blockNumber: t.bigint().notNull(),
  blockTime: t.bigint().notNull(),
  txHash: t.hex().notNull(),
  logIndex: t.integer().notNull(),
}));
export const sync = onchainTable("sync", (t) => ({
  id: t.text().primaryKey(),
  pool: t.hex().notNull(),
  reserve0: t.bigint().notNull(),
  reserve1: t.bigint().notNull(),
  blockNumber: t.bigint().notNull(),
  blockTime: t.bigint().notNull(),
  txHash: t.hex().notNull(),
  logIndex: t.integer().notNull(),
}));
"#,
    )
    .expect("schema");
    std::fs::write(
        dir.join("src/index.ts"),
        r#"import { ponder } from "ponder:registry";
import { swap, sync } from "ponder:schema";
ponder.on("Pair:Swap", async ({ event, context }) => {
  await context.db.insert(swap).values({
    id: event.id, pool: event.log.address, sender: event.args.sender, recipient: event.args.to,
    amount0In: event.args.amount0In, amount1In: event.args.amount1In,
    amount0Out: event.args.amount0Out, amount1Out: event.args.amount1Out,
    blockNumber: event.block.number, blockTime: event.block.timestamp,
    txHash: event.transaction.hash, logIndex: event.log.logIndex,
  });
});
ponder.on("Pair:Sync", async ({ event, context }) => {
  await context.db.insert(sync).values({
    id: event.id, pool: event.log.address, reserve0: event.args.reserve0,
    reserve1: event.args.reserve1, blockNumber: event.block.number,
    blockTime: event.block.timestamp, txHash: event.transaction.hash,
    logIndex: event.log.logIndex,
  });
});
"#,
    )
    .expect("indexing functions");
    // Ponder 0.16 refuses to start without an API file; the run serves no query.
    std::fs::create_dir_all(dir.join("src/api")).expect("api dir");
    std::fs::write(
        dir.join("src/api/index.ts"),
        "import { Hono } from \"hono\";\nconst app = new Hono();\nexport default app;\n",
    )
    .expect("api file");
}

async fn ponder_run(chain: &DenseChain, anvil: &Anvil, i: usize) -> Duration {
    let iso = Isolated::new(&format!("ponder{i}")).await;
    let dir = std::env::temp_dir().join(unique("dense-ponder"));
    ponder_project(&dir, chain, &anvil.http_url());
    let schema = format!("dense_{i}");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(iso.postgres.expose_url())
        .await
        .expect("pg");
    let log = dir.join("ponder.log");
    let started = Instant::now();
    let mut child = Killed(
        Command::new("node")
            .arg(ponder_dir().join("node_modules/ponder/dist/esm/bin/ponder.js"))
            .args(["start", "--schema", &schema, "--port", &port.to_string()])
            .env("DATABASE_URL", iso.postgres.expose_url())
            .env("NODE_ENV", "production")
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).expect("log"))
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node ponder start"),
    );
    let want = chain.swaps as i64;
    let sql = format!(
        "SELECT CASE WHEN to_regclass('{schema}.sync') IS NULL THEN 0 ELSE
           (SELECT least((SELECT count(*) FROM {schema}.swap), (SELECT count(*) FROM {schema}.sync))) END"
    );
    // The regclass check keeps the poll from failing before Ponder created its tables; the
    // count query is planned only when they exist.
    let took = loop {
        let exists: bool = sqlx::query_scalar(&format!(
            "SELECT to_regclass('{schema}.sync') IS NOT NULL AND to_regclass('{schema}.swap') IS NOT NULL"
        ))
        .fetch_one(&pool)
        .await
        .unwrap_or(false);
        // Ponder's tables have no one-row summary to gate on: the count's own cost sets the
        // interval (at most a tenth of the time goes to polling).
        let mut pause = Duration::from_millis(100);
        if exists {
            let asked = Instant::now();
            let n = count(&pool, &sql).await;
            if n >= want {
                break started.elapsed();
            }
            pause = pause.max(asked.elapsed() * 10);
        }
        if let Ok(Some(status)) = child.0.try_wait() {
            panic!("ponder exited with {status}; log in {}", log.display());
        }
        assert!(
            started.elapsed() < Duration::from_secs(1800),
            "ponder stalled; log in {}",
            log.display()
        );
        tokio::time::sleep(pause).await;
    };
    drop(child);
    pool.close().await;
    iso.drop_database().await;
    took
}

/// The fastest of [`GET_LOGS_TRIES`] `eth_getLogs` calls over the whole range: (logs, seconds).
/// One call of ~300 MB of JSON varied by up to 1.6× between runs on the same machine; the
/// fastest of a few is the node's bound, and the strictest one to compare with.
async fn get_logs_bound(chain: &DenseChain, anvil: &Anvil) -> (usize, Duration) {
    let provider = ProviderBuilder::new().connect_http(anvil.http_url().parse().expect("url"));
    let filter = Filter::new()
        .address(chain.pair)
        .from_block(chain.deployed_at + 1)
        .to_block(chain.head);
    let mut best: Option<(usize, Duration)> = None;
    for _ in 0..GET_LOGS_TRIES {
        let started = Instant::now();
        let logs = provider.get_logs(&filter).await.expect("eth_getLogs");
        let took = (logs.len(), started.elapsed());
        drop(logs);
        best = Some(best.map_or(took, |b| if took.1 < b.1 { took } else { b }));
    }
    best.expect("at least one try")
}

/// `eth_getLogs` calls per run for the node's bound.
const GET_LOGS_TRIES: usize = 3;

/// `COPY` of rows shaped as the projector writes them into the migrated `swap` and
/// `pool_sync` tables of a fresh database: (rows, seconds).
async fn copy_bound(chain: &DenseChain, anvil: &Anvil, i: usize) -> (usize, Duration) {
    let provider = ProviderBuilder::new().connect_http(anvil.http_url().parse().expect("url"));
    let filter = Filter::new()
        .address(chain.pair)
        .from_block(chain.deployed_at + 1)
        .to_block(chain.head);
    let logs = provider.get_logs(&filter).await.expect("eth_getLogs");
    let iso = Isolated::new(&format!("densecopy{i}")).await;
    let pool = chainfold_platform::postgres::connect_and_migrate(&iso.postgres)
        .await
        .expect("migrate");
    let (mut swaps, mut syncs) = (String::new(), String::new());
    let (t0, t1) = (
        format!("{:#x}", chain.token0),
        format!("{:#x}", chain.token1),
    );
    let pair = format!("{:#x}", chain.pair);
    for (offset, log) in logs.iter().enumerate() {
        let block = log.block_number.unwrap_or_default();
        let hash = format!("{:#x}", log.block_hash.unwrap_or_default());
        let tx_hash = log.transaction_hash.unwrap_or_default();
        let tx = format!("{tx_hash:#x}");
        let index = log.log_index.unwrap_or_default();
        // The projector's primary key: keccak(chain ‖ tx hash ‖ log index), random in the
        // index as the projector's are (a sequential key would make the bound easier).
        let id = chainfold_domain::EventId::of_log(chain.chain_id, &tx_hash, index as u32);
        let words: Vec<String> = log
            .data()
            .data
            .chunks(32)
            .map(|w| alloy::primitives::U256::from_be_slice(w).to_string())
            .collect();
        if words.len() == 2 {
            syncs.push_str(&format!(
                "{id}\t{}\t{pair}\tuniswap-v2\t{t0}\t{t1}\t{}\t{}\t{block}\t{hash}\t{tx}\t{index}\t2026-01-01 00:00:00+00\tbench.amm\t0\t{offset}\n",
                chain.chain_id, words[0], words[1]
            ));
        } else {
            swaps.push_str(&format!(
                "{id}\t{}\t{pair}\tuniswap-v2\t{block}\t{hash}\t{tx}\t0\t{{}}\t{index}\t2026-01-01 00:00:00+00\t{pair}\t{pair}\t{t0}\t{}\t{t1}\t{}\tf\tbench.amm\t0\t{offset}\n",
                chain.chain_id, words[0], words[3]
            ));
        }
    }
    let started = Instant::now();
    let mut conn = pool.acquire().await.expect("conn");
    let mut tx = sqlx::Acquire::begin(&mut *conn).await.expect("begin");
    for (sql, data) in [
        ("COPY swap (event_id, chain_id, pool, protocol, block_number, block_hash, tx_hash, tx_position, trace_address, log_index, block_time, sender, recipient, token_in, amount_in, token_out, amount_out, reverted, kafka_topic, kafka_partition, kafka_offset) FROM STDIN", &swaps),
        ("COPY pool_sync (event_id, chain_id, pool, protocol, token0, token1, reserve0, reserve1, block_number, block_hash, tx_hash, log_index, block_time, kafka_topic, kafka_partition, kafka_offset) FROM STDIN", &syncs),
    ] {
        let mut copy = tx.copy_in_raw(sql).await.expect("copy in");
        for chunk in data.as_bytes().chunks(1 << 16) {
            copy.send(chunk).await.expect("copy send");
        }
        copy.finish().await.expect("copy finish");
    }
    tx.commit().await.expect("commit");
    let took = started.elapsed();
    drop(conn);
    pool.close().await;
    iso.drop_database().await;
    (logs.len(), took)
}

/// The broker's raw produce (acks=all, the ingest producer) and consume (plain assign) of
/// `n` records of `size` bytes over the events topic's partitions: (produce, consume).
async fn broker_bound(n: usize, size: usize, i: usize) -> (Duration, Duration) {
    let iso = Isolated::new(&format!("densebroker{i}")).await;
    let topics = iso.kafka.topics();
    chainfold_platform::kafka::ensure_topics(&iso.kafka, &topics.all())
        .await
        .expect("topics");
    let topic = topics.amm.clone();
    let producer = chainfold_platform::kafka::producer(&iso.kafka).expect("producer");
    let payload = vec![b'x'; size];
    let started = Instant::now();
    let mut pending = std::collections::VecDeque::new();
    for k in 0..n {
        let key = format!("0x{:040x}", k % 64);
        loop {
            match producer.send_result(FutureRecord::to(&topic).key(&key).payload(&payload)) {
                Ok(d) => {
                    pending.push_back(d);
                    break;
                }
                Err((_, _)) => {
                    if let Some(d) = pending.pop_front() {
                        d.await.expect("ack").expect("delivered");
                    }
                }
            }
        }
        if pending.len() >= 20_000 {
            pending
                .pop_front()
                .expect("20,000 pending")
                .await
                .expect("ack")
                .expect("delivered");
        }
    }
    for d in pending {
        d.await.expect("ack").expect("delivered");
    }
    let produce = started.elapsed();
    let kafka = iso.kafka.clone();
    let consume = tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = chainfold_platform::kafka::client_config(&kafka)
            .set("group.id", unique("dense-raw"))
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        let mut tpl = TopicPartitionList::new();
        for (partition, _, _) in
            chainfold_platform::kafka::watermarks(&consumer, &topic).expect("watermarks")
        {
            tpl.add_partition_offset(&topic, partition, Offset::Beginning)
                .expect("tpl");
        }
        consumer.assign(&tpl).expect("assign");
        let started = Instant::now();
        let mut seen = 0;
        while seen < n {
            if let Some(r) = consumer.poll(Duration::from_secs(5)) {
                r.expect("consume");
                seen += 1;
            }
            assert!(
                started.elapsed() < Duration::from_secs(600),
                "raw consume stalled"
            );
        }
        started.elapsed()
    })
    .await
    .expect("consume task");
    (produce, consume)
}

fn arg(n: usize, default: u64) -> u64 {
    std::env::args()
        .filter(|a| !a.starts_with("--"))
        .nth(n)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() {
    let blocks = arg(1, 4000);
    let per_block = arg(2, 50);
    let runs = arg(3, 3) as usize;
    let with_ponder = std::env::var("CHAINFOLD_DENSE_PONDER").map_or(true, |v| v != "0");
    let anvil = Anvil::spawn(31337).expect("anvil");
    let built = Instant::now();
    let chain = dense::build(&anvil.http_url(), blocks, per_block)
        .await
        .expect("dense chain");
    let logs_total = (chain.swaps * 2) as f64;
    eprintln!(
        "dense chain: {blocks} blocks × {per_block} swaps = {} Swap + {} Sync logs, built in {:.1}s",
        chain.swaps,
        chain.swaps,
        built.elapsed().as_secs_f64()
    );
    let (mut get_logs, mut copy, mut produce, mut consume) = (vec![], vec![], vec![], vec![]);
    let (mut cf_rows, mut cf_ingest, mut cf_alone, mut ponder) = (vec![], vec![], vec![], vec![]);
    let mut accounts: Vec<CpuAccount> = Vec::new();
    let (mut base_rows, mut base_accounts): (Vec<f64>, Vec<CpuAccount>) = (vec![], vec![]);
    for i in 0..runs {
        eprintln!("run {i}: eth_getLogs bound");
        let (n, t) = get_logs_bound(&chain, &anvil).await;
        assert_eq!(n as f64, logs_total, "eth_getLogs returned every log");
        get_logs.push(n as f64 / t.as_secs_f64());
        eprintln!("run {i}: COPY bound");
        let (rows, t) = copy_bound(&chain, &anvil, i).await;
        copy.push(rows as f64 / t.as_secs_f64());
        // Envelope JSON of a swap or sync is ~700 bytes on the wire.
        eprintln!("run {i}: broker bound");
        let (p, c) = broker_bound(logs_total as usize, 700, i).await;
        produce.push(logs_total / p.as_secs_f64());
        consume.push(logs_total / c.as_secs_f64());
        // The baseline build, if any, runs before this build in odd rounds and after it in
        // even ones.
        let base_first = i % 2 == 1;
        let mut base = None;
        if base_first {
            base = baseline_run(&chain, &anvil, i).await;
        }
        eprintln!("run {i}: chainfold cold");
        let run = chainfold_run(&chain, &anvil, i, &binary()).await;
        if !base_first {
            base = baseline_run(&chain, &anvil, i).await;
        }
        if let Some(b) = base {
            eprintln!(
                "run {i}: baseline cold {:.2}s to all rows (ingest done at {:.2}s); CPU: ingest {:.2}, projector {:.2}, busy {:.2}",
                b.rows.as_secs_f64(),
                b.ingest.as_secs_f64(),
                b.cpu.ingest,
                b.cpu.project,
                b.cpu.busy
            );
            base_rows.push(b.rows.as_secs_f64());
            base_accounts.push(b.cpu);
        }
        eprintln!(
            "run {i}: eth_getLogs {:.0} logs/s | COPY {:.0} rows/s | broker produce {:.0}/s consume {:.0}/s | chainfold cold {:.2}s to all rows (ingest done at {:.2}s)",
            get_logs[i],
            copy[i],
            produce[i],
            consume[i],
            run.rows.as_secs_f64(),
            run.ingest.as_secs_f64()
        );
        eprintln!(
            "run {i}: projector alone {:.2}s = {:.0} rows/s",
            run.project_alone.as_secs_f64(),
            logs_total / run.project_alone.as_secs_f64()
        );
        let c = run.cpu;
        eprintln!(
            "run {i}: CPU of the cold run, core-seconds: ingest {:.2}, projector {:.2}, anvil {:.2}, broker {:.2}, postgres {:.2}, rest {:.2}; busy {:.2} of {:.2}",
            c.ingest,
            c.project,
            c.anvil,
            c.broker,
            c.postgres,
            c.busy - c.ingest - c.project - c.anvil - c.broker - c.postgres,
            c.busy,
            c.capacity
        );
        accounts.push(c);
        cf_alone.push(logs_total / run.project_alone.as_secs_f64());
        cf_rows.push(run.rows.as_secs_f64());
        cf_ingest.push(run.ingest.as_secs_f64());
        if with_ponder {
            let t = ponder_run(&chain, &anvil, i).await;
            eprintln!("run {i}: ponder cold {:.2}s to all rows", t.as_secs_f64());
            ponder.push(t.as_secs_f64());
        }
    }
    let cf = median(cf_rows.clone());
    let cf_rate = logs_total / cf;
    println!(
        "\nmedians of {runs} ({blocks} blocks × {per_block} swaps, {} logs):",
        logs_total
    );
    println!(
        "  eth_getLogs bound        {:>10.0} logs/s",
        median(get_logs.clone())
    );
    println!(
        "  COPY bound               {:>10.0} rows/s",
        median(copy.clone())
    );
    println!(
        "  broker raw produce       {:>10.0} records/s",
        median(produce.clone())
    );
    println!(
        "  broker raw consume       {:>10.0} records/s",
        median(consume.clone())
    );
    println!(
        "  chainfold cold           {:>10.2} s to all rows = {:.0} logs/s ({:.3}x eth_getLogs, {:.2}x COPY); ingest alone {:.2} s; runs {:?}; each round against its own bound {:?}",
        cf,
        cf_rate,
        cf_rate / median(get_logs.clone()),
        cf_rate / median(copy.clone()),
        median(cf_ingest),
        cf_rows.iter().map(|t| format!("{t:.2}")).collect::<Vec<_>>(),
        cf_rows
            .iter()
            .zip(&get_logs)
            .map(|(t, bound)| format!("{:.3}x", logs_total / t / bound))
            .collect::<Vec<_>>()
    );
    println!(
        "  projector alone          {:>10.0} rows/s ({:.2}x COPY)",
        median(cf_alone.clone()),
        median(cf_alone) / median(copy.clone())
    );
    if with_ponder {
        let p = median(ponder.clone());
        println!(
            "  ponder cold              {:>10.2} s to all rows; runs {:?}; chainfold is {:.1}x faster",
            p,
            ponder.iter().map(|t| format!("{t:.2}")).collect::<Vec<_>>(),
            p / cf
        );
    }
    let account = |f: fn(&CpuAccount) -> f64| median(accounts.iter().map(f).collect());
    let busy = account(|c| c.busy);
    println!(
        "  cold run CPU (core-s, medians): ingest {:.2} ({:.1} µs/log), projector {:.2} ({:.1} µs/row), anvil {:.2}, broker {:.2}, postgres {:.2}; machine busy {:.2} of {:.2} ({:.0}%)",
        account(|c| c.ingest),
        account(|c| c.ingest) * 1e6 / logs_total,
        account(|c| c.project),
        account(|c| c.project) * 1e6 / logs_total,
        account(|c| c.anvil),
        account(|c| c.broker),
        account(|c| c.postgres),
        busy,
        account(|c| c.capacity),
        100.0 * busy / account(|c| c.capacity)
    );
    let spread = cf_rows.iter().copied().fold(f64::MIN, f64::max)
        / cf_rows.iter().copied().fold(f64::MAX, f64::min);
    println!("  repeated chainfold runs: slowest/fastest {spread:.2}x");
    if !base_rows.is_empty() {
        let base = median(base_rows.clone());
        let base_account =
            |f: fn(&CpuAccount) -> f64| median(base_accounts.iter().map(f).collect());
        println!(
            "  baseline build cold      {:>10.2} s to all rows ({:.2}x eth_getLogs); runs {:?}; this build takes {:.2}x its time; CPU (core-s) ingest {:.2} -> {:.2}, projector {:.2} -> {:.2}, busy {:.2} -> {:.2}",
            base,
            logs_total / base / median(get_logs.clone()),
            base_rows.iter().map(|t| format!("{t:.2}")).collect::<Vec<_>>(),
            cf / base,
            base_account(|c| c.ingest),
            account(|c| c.ingest),
            base_account(|c| c.project),
            account(|c| c.project),
            base_account(|c| c.busy),
            busy
        );
    }
}
