//! chainfold under the scenarios of the public reliability suite of the open indexer benchmark
//! (`enviodev/open-indexer-benchmark`, `reliability/`): restart recovery, database outage, reorg
//! handling, hostile values, head latency and a flaky RPC endpoint, each against a synthetic
//! chain served over JSON-RPC (`chainfold_simulate::mockchain`). The suite's own runner needs a
//! Docker engine and Node 22; this driver and case are written here from its description, with
//! its parameters, and run chainfold as a user would: `chainfold ingest rpc` and
//! `chainfold project` as processes of the real binary (defaults: no confirmations, 1 s polling),
//! Apache Kafka, Postgres.
//!
//! Every test asserts what the suite counts as ❌ (rows missing, rows from orphaned blocks,
//! duplicates, or a tool that never caught up); restarts and timings are reported, not asserted.
//! With `CHAINFOLD_RELIABILITY_REPORT=<file>` each scenario appends its scorecard section
//! (`scripts/reliability` runs them all and prints the scorecard).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use alloy::primitives::{Address, U256};
use chainfold_simulate::mockchain::{self, Endpoint, Faults, MockChain, Row};
use chainfold_testkit::{unique, Isolated};

/// One scenario at a time: the timings are the point, and the database-outage one stops the
/// fault-test Postgres.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const CHAIN_ID: u64 = 1;

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// chainfold's two processes of one pipeline, restarted when they exit unasked.
struct Indexer {
    iso: Isolated,
    chains: PathBuf,
    logs: PathBuf,
    children: BTreeMap<&'static str, Child>,
    starts: u64,
    /// Exits nobody asked for.
    crashes: u64,
    last_error: Option<String>,
}

impl Indexer {
    fn new(iso: Isolated, endpoint: &Endpoint) -> Indexer {
        let logs = std::env::temp_dir().join(unique("reliability-logs"));
        std::fs::create_dir_all(&logs).expect("log dir");
        let chains = logs.join("chains.toml");
        std::fs::write(
            &chains,
            format!(
                "[[chain]]\nchain_id = {CHAIN_ID}\nname = \"mock\"\nrpc_url = \"{}\"\n\n[[chain.contract]]\naddress = \"{:#x}\"\nkind = \"erc20_token\"\n",
                endpoint.url(),
                mockchain::CONTRACT
            ),
        )
        .expect("chains.toml");
        Indexer {
            iso,
            chains,
            logs,
            children: BTreeMap::new(),
            starts: 0,
            crashes: 0,
            last_error: None,
        }
    }

    fn start(&mut self, role: &'static str) {
        self.starts += 1;
        let mut c = Command::new(env!("CARGO_BIN_EXE_chainfold"));
        match role {
            "ingest" => {
                c.args(["ingest", "rpc", "--chains"]).arg(&self.chains);
            }
            _ => {
                c.args(["project", "--group", &self.iso.group]);
            }
        }
        let log = std::fs::File::create(self.logs.join(format!("{role}-{}.log", self.starts)))
            .expect("log file");
        c.env("CHAINFOLD_KAFKA_BROKERS", &self.iso.kafka.brokers)
            .env("CHAINFOLD_TOPIC_PREFIX", &self.iso.kafka.topic_prefix)
            .env("DATABASE_URL", self.iso.postgres.expose_url())
            .env("REDIS_URL", self.iso.redis.expose_url())
            .env("CHAINFOLD_REDIS_PREFIX", &self.iso.redis.prefix)
            .env("RUST_LOG", "warn")
            .current_dir(workspace())
            .stdout(Stdio::null())
            .stderr(log);
        self.children
            .insert(role, c.spawn().expect("start chainfold"));
    }

    fn start_all(&mut self) {
        self.start("ingest");
        self.start("project");
    }

    /// SIGKILL: no shutdown path, no last commit.
    fn kill_all(&mut self) {
        for (_, mut child) in std::mem::take(&mut self.children) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn signal(&self, role: &str, signal: &str) {
        let pid = self.children[role].id();
        let status = Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal} {pid}");
    }

    /// Restarts what exited by itself, counting it and keeping the last error it logged.
    fn reap(&mut self) {
        let dead: Vec<&'static str> = self
            .children
            .iter_mut()
            .filter_map(|(role, child)| child.try_wait().ok().flatten().map(|_| *role))
            .collect();
        for role in dead {
            self.crashes += 1;
            self.children.remove(role);
            self.last_error = self.last_error_of(role).or(self.last_error.take());
            self.start(role);
        }
    }

    fn last_error_of(&self, role: &str) -> Option<String> {
        let log = std::fs::read_to_string(self.logs.join(format!("{role}-{}.log", self.starts)))
            .ok()
            .or_else(|| {
                (1..=self.starts).rev().find_map(|n| {
                    std::fs::read_to_string(self.logs.join(format!("{role}-{n}.log"))).ok()
                })
            })?;
        log.lines()
            .rev()
            .find(|l| l.contains("ERROR") || l.contains("Error") || l.contains("error"))
            .map(|l| l.chars().take(240).collect())
    }

    fn log_text(&self) -> String {
        let mut all = String::new();
        for entry in std::fs::read_dir(&self.logs).expect("logs").flatten() {
            all.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
        }
        all
    }
}

impl Drop for Indexer {
    fn drop(&mut self) {
        for child in self.children.values_mut() {
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
        }
        self.kill_all();
    }
}

/// What is stored, as rows comparable with [`MockChain::expected`]; `None` while the database
/// does not answer.
async fn stored(iso: &Isolated) -> Option<Vec<Row>> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(2))
        .connect(iso.postgres.expose_url())
        .await
        .ok()?;
    let rows: Vec<(i64, i64, String, String, String, i64)> = tokio::time::timeout(
        Duration::from_secs(3),
        sqlx::query_as(
            "SELECT block_number, log_index, from_address, to_address, value::text,
                    extract(epoch FROM block_time)::int8
             FROM erc20_transfer WHERE chain_id = $1 AND token = $2",
        )
        .bind(CHAIN_ID as i64)
        .bind(format!("{:#x}", mockchain::CONTRACT))
        .fetch_all(&pool),
    )
    .await
    .ok()?
    .ok()?;
    pool.close().await;
    Some(
        rows.into_iter()
            .map(|(b, i, f, t, v, ts)| Row {
                block: b as u64,
                log_index: i as u64,
                from: f.parse().unwrap_or_default(),
                to: t.parse().unwrap_or_default(),
                value: v.parse().unwrap_or_default(),
                timestamp: ts as u64,
            })
            .collect(),
    )
}

/// Rows on the canonical chain and not stored; stored and not on it (orphans); stored twice.
#[derive(Debug, Default, Clone, PartialEq)]
struct Diff {
    missing: usize,
    unexpected: usize,
    duplicated: usize,
}

impl Diff {
    fn of(expected: &[Row], actual: &[Row]) -> Diff {
        let mut want: BTreeMap<&Row, i64> = BTreeMap::new();
        for r in expected {
            *want.entry(r).or_default() += 1;
        }
        let mut got: BTreeMap<&Row, i64> = BTreeMap::new();
        for r in actual {
            *got.entry(r).or_default() += 1;
        }
        let mut d = Diff::default();
        for (row, n) in &want {
            let g = got.get(row).copied().unwrap_or(0);
            d.missing += (n - g).max(0) as usize;
            d.duplicated += (g - n).max(0) as usize;
        }
        d.unexpected = got
            .iter()
            .filter(|(r, _)| !want.contains_key(*r))
            .map(|(_, n)| *n as usize)
            .sum();
        d
    }

    fn clean(&self) -> bool {
        *self == Diff::default()
    }
}

impl std::fmt::Display for Diff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} missing, {} from orphaned blocks, {} duplicated",
            self.missing, self.unexpected, self.duplicated
        )
    }
}

/// Waits until the stored rows equal the canonical chain (restarting what crashed); the time it
/// took, or the last difference after `within`.
async fn converge(
    indexer: &mut Indexer,
    endpoint: &Endpoint,
    within: Duration,
) -> Result<Duration, Diff> {
    let started = Instant::now();
    let mut last = Diff::default();
    loop {
        indexer.reap();
        let expected = endpoint.with(|c| c.expected(c.height()));
        if let Some(rows) = stored(&indexer.iso).await {
            last = Diff::of(&expected, &rows);
            if last.clean() {
                return Ok(started.elapsed());
            }
        }
        if started.elapsed() > within {
            return Err(last);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The highest block with stored rows (how far the indexer really is).
async fn position(iso: &Isolated) -> i64 {
    stored(iso)
        .await
        .and_then(|rows| rows.iter().map(|r| r.block as i64).max())
        .unwrap_or(-1)
}

/// Waits (polling every 10 ms, up to a minute) until rows past block `past` are stored; the
/// position then.
async fn until_past(iso: &Isolated, past: i64) -> i64 {
    let started = Instant::now();
    loop {
        let at = position(iso).await;
        if at > past || started.elapsed() > Duration::from_secs(60) {
            return at;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Appends `count` blocks `every` apart, restarting what crashes meanwhile.
async fn produce(indexer: &mut Indexer, endpoint: &Endpoint, count: u64, every: Duration) {
    for _ in 0..count {
        tokio::time::sleep(every).await;
        endpoint.with(|c| c.append(1));
        indexer.reap();
    }
}

fn report(section: &str) {
    println!("{section}");
    if let Ok(path) = std::env::var("CHAINFOLD_RELIABILITY_REPORT") {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("report file");
        writeln!(file, "{section}").expect("report");
    }
}

fn glyph(correct: bool, costly: bool) -> &'static str {
    match (correct, costly) {
        (false, _) => "❌",
        (true, true) => "⚠️",
        (true, false) => "✅",
    }
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

async fn setup(name: &str, chain: MockChain, on_fault_postgres: bool) -> (Endpoint, Indexer) {
    let endpoint = Endpoint::serve(chain, CHAIN_ID).await.expect("mock chain");
    let iso = if on_fault_postgres {
        Isolated::on(
            name,
            &chainfold_testkit::kafka_brokers(),
            &chainfold_testkit::fault_database_url(),
            &chainfold_testkit::redis_url(),
        )
        .await
    } else {
        Isolated::new(name).await
    };
    let indexer = Indexer::new(iso, &endpoint);
    (endpoint, indexer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_recovery_four_sigkills_lose_and_double_nothing() {
    let _serial = SERIAL.lock().await;
    let mut chain = MockChain::new("restart-recovery");
    chain.append(60);
    let (endpoint, mut ix) = setup("rel_restart", chain, false).await;
    ix.start_all();
    // 1: after its first writes.
    until_past(&ix.iso, -1).await;
    let mut kills = vec![(position(&ix.iso).await, endpoint.with(|c| c.height()))];
    ix.kill_all();
    ix.start_all();
    // 2 and 3: inside a burst of 400 blocks released at once, as soon as its rows appear.
    let before = endpoint.with(|c| {
        let h = c.height() as i64;
        c.append(400);
        h
    });
    for _ in 0..2 {
        let at = until_past(&ix.iso, before.max(position(&ix.iso).await)).await;
        kills.push((at, endpoint.with(|c| c.height())));
        ix.kill_all();
        ix.start_all();
    }
    let burst = converge(&mut ix, &endpoint, Duration::from_secs(120)).await;
    // 4: at the head, with blocks arriving while it is dead.
    produce(&mut ix, &endpoint, 3, Duration::from_millis(500)).await;
    kills.push((position(&ix.iso).await, endpoint.with(|c| c.height())));
    ix.kill_all();
    produce(&mut ix, &endpoint, 5, Duration::from_millis(500)).await;
    let restarted = Instant::now();
    ix.start_all();
    produce(&mut ix, &endpoint, 5, Duration::from_millis(500)).await;
    let last = converge(&mut ix, &endpoint, Duration::from_secs(60)).await;
    let back = restarted.elapsed();
    let correct = burst.is_ok() && last.is_ok();
    report(&format!(
        "### Restart recovery: {}\n\nSIGKILLed ingest and projector four times; killed at blocks (stored / chain head): {}. \
         After the burst: {}. After the last kill at the head: {} (caught up {} after the restart). \
         Unasked exits: {}.\n",
        glyph(correct, ix.crashes > 0),
        kills
            .iter()
            .map(|(p, h)| format!("{p} of {h}"))
            .collect::<Vec<_>>()
            .join(", "),
        match &burst {
            Ok(t) => format!("caught up, no gap or duplicate ({} after the third kill)", secs(*t)),
            Err(d) => format!("never caught up: {d}"),
        },
        match &last {
            Ok(_) => "caught up, no gap or duplicate".to_owned(),
            Err(d) => format!("never caught up: {d}"),
        },
        secs(back),
        ix.crashes,
    ));
    assert!(burst.is_ok(), "after the burst: {burst:?}");
    assert!(last.is_ok(), "after the kill at the head: {last:?}");
    ix.iso.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage_stop_kill_and_pause_under_a_running_indexer() {
    let _serial = SERIAL.lock().await;
    let mut chain = MockChain::new("db-outage");
    chain.append(40);
    let (endpoint, mut ix) = setup("rel_db_outage", chain, true).await;
    ix.start_all();
    let first = converge(&mut ix, &endpoint, Duration::from_secs(60)).await;
    assert!(first.is_ok(), "initial sync: {first:?}");
    let mut outcomes = Vec::new();
    for (shape, down, up) in [
        (
            "stop (clean shutdown)",
            vec!["postgres-stop", "fast"],
            vec!["postgres-start"],
        ),
        (
            "kill (immediate: no checkpoint, WAL replay)",
            vec!["postgres-stop", "immediate"],
            vec!["postgres-start"],
        ),
        (
            "pause (SIGSTOP: connections hang)",
            vec!["postgres-pause"],
            vec!["postgres-resume"],
        ),
        (
            "kill again",
            vec!["postgres-stop", "immediate"],
            vec!["postgres-start"],
        ),
    ] {
        let crashes = ix.crashes;
        let mut args = vec!["fault"];
        args.extend(down.iter().copied());
        chainfold_testkit::stack(&args);
        produce(&mut ix, &endpoint, 8, Duration::from_millis(700)).await;
        let mut args = vec!["fault"];
        args.extend(up.iter().copied());
        let restoring = Instant::now();
        chainfold_testkit::stack(&args);
        let restored = restoring.elapsed();
        let behind = endpoint.with(|c| c.height()) as i64 - position(&ix.iso).await;
        let back = converge(&mut ix, &endpoint, Duration::from_secs(120))
            .await
            .map(|_| restoring.elapsed());
        outcomes.push((shape, restored, behind, back, ix.crashes - crashes));
    }
    let correct = outcomes.iter().all(|(_, _, _, back, _)| back.is_ok());
    let survived = outcomes
        .iter()
        .filter(|(_, _, _, b, c)| b.is_ok() && *c == 0)
        .count();
    report(&format!(
        "### Database outage: {}\n\nFour outages of about 6 s each while the chain produced a block every 0.7 s; survived without a restart: {survived} of 4; restarts: {}.\n\n{}\n",
        glyph(correct, ix.crashes > 0),
        ix.crashes,
        outcomes
            .iter()
            .map(|(shape, restored, behind, back, crashes)| format!(
                "- {shape}: {}, {crashes} restart(s)",
                match back {
                    Ok(t) => format!(
                        "back at the head {} after the database was told to come back (Postgres itself took {}; {behind} blocks behind right after), data correct",
                        secs(*t),
                        secs(*restored)
                    ),
                    Err(d) => format!("not back: {d}"),
                }
            ))
            .collect::<Vec<_>>()
            .join("\n")
    ));
    if let Some(e) = &ix.last_error {
        report(&format!("  last error logged before a restart: `{e}`\n"));
    }
    for (shape, _, _, back, _) in &outcomes {
        assert!(back.is_ok(), "{shape}: {back:?}");
    }
    ix.kill_all();
    ix.iso.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reorgs_of_seven_shapes_leave_no_orphan_and_miss_no_row() {
    let _serial = SERIAL.lock().await;
    let mut chain = MockChain::new("reorg");
    chain.append(100);
    let (endpoint, mut ix) = setup("rel_reorg", chain, false).await;
    ix.start_all();
    let first = converge(&mut ix, &endpoint, Duration::from_secs(60)).await;
    assert!(first.is_ok(), "initial sync: {first:?}");
    let mut rows = Vec::new();
    for case in [
        "tip",
        "3 deep",
        "12 deep",
        "shortening (6 replaced by 3)",
        "repeated (3 × 2 deep, 600 ms apart)",
        "during backfill (80 behind, 40 unread rewritten)",
        "beyond finality (70 deep; the endpoint finalises at 64)",
    ] {
        match case {
            "tip" => {
                endpoint.with(|c| c.reorg(1, 1));
            }
            "3 deep" => {
                endpoint.with(|c| c.reorg(3, 3));
            }
            "12 deep" => {
                endpoint.with(|c| c.reorg(12, 12));
            }
            "shortening (6 replaced by 3)" => {
                endpoint.with(|c| c.reorg(6, 3));
            }
            "repeated (3 × 2 deep, 600 ms apart)" => {
                for _ in 0..3 {
                    endpoint.with(|c| c.reorg(2, 2));
                    tokio::time::sleep(Duration::from_millis(600)).await;
                }
            }
            "during backfill (80 behind, 40 unread rewritten)" => {
                ix.signal("ingest", "STOP");
                endpoint.with(|c| {
                    c.append(80);
                    c.reorg(40, 40)
                });
                ix.signal("ingest", "CONT");
            }
            _ => {
                endpoint.with(|c| c.reorg(70, 70));
            }
        }
        produce(&mut ix, &endpoint, 10, Duration::from_millis(700)).await;
        let outcome = converge(&mut ix, &endpoint, Duration::from_secs(60)).await;
        rows.push((case, outcome));
    }
    let correct = rows.iter().all(|(_, o)| o.is_ok());
    report(&format!(
        "### Reorg handling: {}\n\nAfter each reorg ten more blocks, one every 0.7 s, then the whole table is compared with the canonical chain.\n\n| case | result |\n|---|---|\n{}\n",
        glyph(correct, ix.crashes > 0),
        rows.iter()
            .map(|(case, o)| format!(
                "| {case} | {} |",
                match o {
                    Ok(t) => format!("✅ converged {} after the last new block", secs(*t)),
                    Err(d) => format!("❌ {d}"),
                }
            ))
            .collect::<Vec<_>>()
            .join("\n")
    ));
    for (case, o) in &rows {
        assert!(o.is_ok(), "{case}: {o:?}");
    }
    ix.iso.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_values_are_stored_or_said_and_indexing_goes_on() {
    let _serial = SERIAL.lock().await;
    let mut chain = MockChain::new("hostile");
    chain.hostile_metadata = true;
    chain.hostile_at(5);
    chain.append(12);
    let (endpoint, mut ix) = setup("rel_hostile", chain, false).await;
    ix.start_all();
    let outcome = converge(&mut ix, &endpoint, Duration::from_secs(60)).await;
    let pool = sqlx::PgPool::connect(ix.iso.postgres.expose_url())
        .await
        .expect("postgres");
    let token: Option<(Option<String>, Option<String>, Option<i16>)> =
        sqlx::query_as("SELECT name, symbol, decimals FROM erc20_token WHERE token = $1")
            .bind(format!("{:#x}", mockchain::CONTRACT))
            .fetch_optional(&pool)
            .await
            .expect("token");
    let max: Option<String> = sqlx::query_scalar::<_, Option<String>>(
        "SELECT max(value)::text FROM erc20_transfer WHERE block_number = 5",
    )
    .fetch_one(&pool)
    .await
    .expect("max");
    let large: Option<i64> = sqlx::query_scalar(
        "SELECT log_index FROM erc20_transfer WHERE block_number = 5 ORDER BY log_index DESC LIMIT 1",
    )
    .fetch_optional(&pool)
    .await
    .expect("log index");
    let said = ix.log_text().contains("contains NUL bytes");
    let (name, symbol, _) = token.clone().unwrap_or_default();
    report(&format!(
        "### Hostile values: {}\n\nGot past the block: {}. Stored symbol {:?} and name {:?} (NUL removed; the ingest log says so: {}). \
         The 2^256-1 transfer stored as {} ({}). The log at index 0xfffffffc stored with index {}. Unasked exits: {}.\n",
        glyph(outcome.is_ok(), ix.crashes > 0 || !said),
        if outcome.is_ok() { "yes, every row stored" } else { "no" },
        symbol,
        name,
        if said { "yes" } else { "no" },
        max.as_deref().unwrap_or("nothing"),
        if max.as_deref() == Some(&U256::MAX.to_string()) { "exact" } else { "lost" },
        large.map_or("none".to_owned(), |l| l.to_string()),
        ix.crashes,
    ));
    assert!(outcome.is_ok(), "{outcome:?}");
    assert_eq!(symbol.as_deref(), Some("NULTOK"));
    assert_eq!(
        name.as_deref(),
        Some(&*mockchain::HOSTILE_NAME.replace('\0', ""))
    );
    assert_eq!(max, Some(U256::MAX.to_string()));
    assert_eq!(large, Some(mockchain::LARGE_LOG_INDEX as i64));
    assert!(said, "the NUL removal is logged");
    pool.close().await;
    ix.iso.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_latency_of_twenty_blocks_two_seconds_apart() {
    let _serial = SERIAL.lock().await;
    let mut chain = MockChain::new("head-latency");
    chain.append(10);
    let (endpoint, mut ix) = setup("rel_latency", chain, false).await;
    ix.start_all();
    let first = converge(&mut ix, &endpoint, Duration::from_secs(60)).await;
    assert!(first.is_ok(), "initial sync: {first:?}");
    let mut latencies = Vec::new();
    let mut unseen = 0;
    for _ in 0..20 {
        let (number, announced) = endpoint.with(|c| {
            c.append(1);
            (c.height(), Instant::now())
        });
        let deadline = announced + Duration::from_secs(2);
        let mut seen = None;
        loop {
            if position(&ix.iso).await >= number as i64 {
                seen = Some(announced.elapsed());
                break;
            }
            if Instant::now() >= deadline + Duration::from_secs(8) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        match seen {
            Some(l) => latencies.push(l),
            None => unseen += 1,
        }
        if let Some(rest) = deadline.checked_duration_since(Instant::now()) {
            tokio::time::sleep(rest).await;
        }
        ix.reap();
    }
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 - 1.0) * q).round() as usize];
    let final_state = converge(&mut ix, &endpoint, Duration::from_secs(30)).await;
    report(&format!(
        "### Head latency: {}\n\nFrom a block becoming the head to its rows being readable in Postgres (polled every 100 ms), 20 blocks 2 s apart, chainfold's defaults (1 s head polling, no confirmations, 50 ms projector batch wait): median {}, p95 {}, max {}; blocks never seen: {unseen}.\n",
        glyph(final_state.is_ok() && unseen == 0, ix.crashes > 0),
        secs(at(0.5)),
        secs(at(0.95)),
        secs(at(1.0)),
    ));
    assert_eq!(unseen, 0, "every block shows up");
    assert!(final_state.is_ok(), "{final_state:?}");
    ix.iso.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flaky_endpoint_is_ridden_out_and_the_indexer_catches_up_on_its_own() {
    let _serial = SERIAL.lock().await;
    let mut chain = MockChain::new("flaky-rpc");
    chain.append(50);
    let (endpoint, mut ix) = setup("rel_flaky", chain, false).await;
    ix.start_all();
    let first = converge(&mut ix, &endpoint, Duration::from_secs(60)).await;
    assert!(first.is_ok(), "initial sync: {first:?}");
    endpoint.set_faults(Faults {
        http_500: 0.25,
        http_429: 0.10,
        rpc_error: 0.10,
        null_recent_block: 0.05,
        latency: Duration::from_millis(50),
        truncated: 0.0,
    });
    produce(&mut ix, &endpoint, 30, Duration::from_millis(700)).await;
    endpoint.set_faults(Faults {
        truncated: 0.5,
        ..Faults::default()
    });
    produce(&mut ix, &endpoint, 15, Duration::from_millis(700)).await;
    endpoint.set_faults(Faults::default());
    let healed = Instant::now();
    let outcome = converge(&mut ix, &endpoint, Duration::from_secs(120)).await;
    let counts = endpoint.fault_counts();
    report(&format!(
        "### Flaky RPC: {}\n\n21 s of 25% HTTP 500, 10% 429, 10% JSON-RPC errors, 5% `null` for a block just announced and 50 ms added latency, then 10.5 s of half the answers cut off mid-body with the socket dropped, while the chain grew by 45 blocks. \
         Faults served: {} of {} requests ({} × 500, {} × 429, {} JSON-RPC errors, {} null blocks, {} truncated). {}. Unasked exits: {}.\n",
        glyph(outcome.is_ok(), ix.crashes > 0),
        counts.total(),
        counts.requests,
        counts.http_500,
        counts.http_429,
        counts.rpc_error,
        counts.null_block,
        counts.truncated,
        match &outcome {
            Ok(_) => format!("Caught up on its own {} after the endpoint was healthy, data correct", secs(healed.elapsed())),
            Err(d) => format!("Did not catch up: {d}"),
        },
        ix.crashes,
    ));
    if let Some(e) = &ix.last_error {
        report(&format!("  last error logged before a restart: `{e}`\n"));
    }
    assert!(counts.total() > 20, "faults were served: {counts:?}");
    assert!(outcome.is_ok(), "{outcome:?}");
    ix.iso.drop_database().await;
}

#[test]
fn the_diff_counts_missing_orphaned_and_duplicated_rows() {
    let row = |b: u64| Row {
        block: b,
        log_index: 0,
        from: Address::ZERO,
        to: Address::ZERO,
        value: U256::from(b),
        timestamp: 0,
    };
    let d = Diff::of(&[row(1), row(2)], &[row(2), row(2), row(3)]);
    assert_eq!(
        d,
        Diff {
            missing: 1,
            unexpected: 1,
            duplicated: 1
        }
    );
    assert!(Diff::of(&[row(1)], &[row(1)]).clean());
}
