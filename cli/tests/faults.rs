//! Fault tests of the real binary on the fault stack of `scripts/stack up --cluster`: a
//! three-broker Apache Kafka cluster (replication 3, min.insync.replicas 2) and a Postgres and a
//! Redis of their own, which these tests kill and restart. They take a cross-process lock, so
//! only one runs at a time.
//!
//! - chaos: `ingest rpc`, `project`, `score` and `risk` run as processes while a seeded workload
//!   (swaps, lending, oracle moves, reorgs) drives an anvil chain, and a seeded schedule
//!   SIGKILLs roles (some restarted with a crash point armed inside a commit window), kills and
//!   restarts a broker, restarts Postgres (fast and immediate) and Redis. Afterwards every read
//!   model and derived table equals, table by table, a fault-free run over the same chain, and
//!   each output topic holds each output once after de-duplication by output id.
//!   `CHAINFOLD_CHAOS_SEED`, `CHAINFOLD_CHAOS_FAULTS` (12) and `CHAINFOLD_CHAOS_STEPS` (150)
//!   reproduce a run or make it longer.
//! - scale: three projectors and two scorers in one group on six partitions, one of each killed
//!   mid-stream: the tables equal a single process's.
//! - lease: two `ingest rpc` of one chain; the second stands by until the first is SIGKILLed,
//!   then follows on; the log, projected, equals one uninterrupted follower's.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use alloy::primitives::{Address, U256};
use alloy::providers::Provider as _;
use chainfold_simulate::anvil::Anvil;
use chainfold_simulate::contracts::units;
use chainfold_simulate::Deployment;
use chainfold_testkit::{data_dir, stack, unique, Isolated};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers as _, Message as _};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The roles of one pipeline as child processes of the real binary, restarted when they die.
struct Pipeline {
    iso: Isolated,
    chains: PathBuf,
    logs: PathBuf,
    groups: BTreeMap<&'static str, String>,
    children: BTreeMap<&'static str, Child>,
    starts: u64,
    /// Exits nobody asked for (crash points, errors), by role.
    crashes: BTreeMap<&'static str, u64>,
}

impl Pipeline {
    fn new(iso: Isolated, chains: PathBuf) -> Pipeline {
        let logs = std::env::temp_dir().join(unique("chaos-logs"));
        std::fs::create_dir_all(&logs).expect("log dir");
        let groups = ["project", "score", "risk"]
            .into_iter()
            .map(|r| (r, unique(&format!("chaos-{r}"))))
            .collect();
        Pipeline {
            iso,
            chains,
            logs,
            groups,
            children: BTreeMap::new(),
            starts: 0,
            crashes: BTreeMap::new(),
        }
    }

    fn command(&self, role: &'static str, failpoints: Option<&str>) -> Command {
        self.member_command(role, 1, failpoints)
    }

    /// The command of member `instance` of `role`'s group (its static membership id).
    fn member_command(
        &self,
        role: &'static str,
        instance: u32,
        failpoints: Option<&str>,
    ) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_chainfold"));
        let models = workspace().join("scoring/models");
        match role {
            "ingest" => {
                c.args(["ingest", "rpc", "--standby-poll", "200ms", "--chains"])
                    .arg(&self.chains);
            }
            "project" => {
                c.args([
                    "project",
                    "--batch-wait",
                    "20ms",
                    "--group",
                    &self.groups["project"],
                ])
                .args([
                    "--instance-id",
                    &format!("{}-{instance}", self.groups["project"]),
                ]);
            }
            "score" => {
                c.args([
                    "score",
                    "--group",
                    &self.groups["score"],
                    "--projector-wait",
                    "600s",
                ])
                .args(["--projector-group", &self.groups["project"]])
                .args([
                    "--instance-id",
                    &format!("{}-{instance}", self.groups["score"]),
                ])
                .arg("--model-dir")
                .arg(models.join("position-v1"));
            }
            _ => {
                c.args([
                    "risk",
                    "--group",
                    &self.groups["risk"],
                    "--projector-wait",
                    "600s",
                ])
                .args(["--projector-group", &self.groups["project"]])
                .args([
                    "--instance-id",
                    &format!("{}-{instance}", self.groups["risk"]),
                ])
                .arg("--anomaly-model-dir")
                .arg(models.join("pool-anomaly-v1"))
                .arg("--prices-dir")
                .arg(data_dir().join("aave-v2-eth-bhemen/usd_prices"));
            }
        }
        let log = std::fs::File::create(
            self.logs
                .join(format!("{role}-{instance}-{}.log", self.starts)),
        )
        .expect("log file");
        c.env("CHAINFOLD_KAFKA_BROKERS", &self.iso.kafka.brokers)
            .env("CHAINFOLD_TOPIC_PREFIX", &self.iso.kafka.topic_prefix)
            .env(
                "CHAINFOLD_TOPIC_REPLICATION",
                self.iso.kafka.replication.to_string(),
            )
            .env(
                "CHAINFOLD_TOPIC_MIN_INSYNC_REPLICAS",
                self.iso.kafka.min_insync_replicas.to_string(),
            )
            .env("DATABASE_URL", self.iso.postgres.expose_url())
            .env("REDIS_URL", self.iso.redis.expose_url())
            .env("CHAINFOLD_REDIS_PREFIX", &self.iso.redis.prefix)
            .env("RUST_LOG", "warn")
            .env(chainfold_platform::failpoint::ENV, failpoints.unwrap_or(""))
            .current_dir(workspace())
            .stdout(Stdio::null())
            .stderr(log);
        c
    }

    fn start(&mut self, role: &'static str, failpoints: Option<&str>) {
        self.starts += 1;
        let child = self.command(role, failpoints).spawn().expect("start role");
        self.children.insert(role, child);
    }

    /// SIGKILL: no shutdown, no last commit.
    fn kill(&mut self, role: &'static str) {
        if let Some(mut child) = self.children.remove(role) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Restarts every role that exited by itself.
    fn reap(&mut self) {
        let dead: Vec<&'static str> = self
            .children
            .iter_mut()
            .filter_map(|(role, child)| child.try_wait().ok().flatten().map(|_| *role))
            .collect();
        for role in dead {
            *self.crashes.entry(role).or_default() += 1;
            self.children.remove(role);
            self.start(role, None);
        }
    }

    fn stop(&mut self) {
        for role in ["ingest", "project", "score", "risk"] {
            self.kill(role);
        }
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Crash points of each role: inside its commit windows (see `platform::failpoint`).
fn failpoints_of(role: &str) -> &'static [&'static str] {
    match role {
        "ingest" => &["ingest.after_publish"],
        "project" => &["project.before_commit", "project.after_commit"],
        "score" => &[
            "score.before_commit",
            "score.after_commit",
            "outbox.after_ack",
        ],
        _ => &[
            "risk.before_commit",
            "risk.after_commit",
            "outbox.after_ack",
        ],
    }
}

/// The accounts of the workload, funded and approved.
async fn prepare(d: &Deployment, weth_usd: f64) -> Vec<Address> {
    let lp = Address::repeat_byte(0x70);
    let traders: Vec<Address> = (0x71..0x77).map(Address::repeat_byte).collect();
    for who in std::iter::once(lp).chain(traders.iter().copied()) {
        for (token, amount) in [
            (d.weth.token, units(1e5, 18)),
            (d.usdc.token, units(1e10, 6)),
            (d.wbtc.token, units(1e3, 8)),
        ] {
            d.fund(who, token, amount).await.expect("fund");
            d.approve(who, token, d.router)
                .await
                .expect("approve router");
            d.approve(who, token, d.lending_pool)
                .await
                .expect("approve pool");
        }
    }
    let (_, _, token0) = d.reserves(d.pairs[0]).await.expect("reserves");
    let (w, u) = (units(2000.0, 18), units(2000.0 * weth_usd, 6));
    let (a0, a1) = if token0 == d.weth.token {
        (w, u)
    } else {
        (u, w)
    };
    d.add_liquidity(lp, d.pairs[0], a0, a1)
        .await
        .expect("liquidity");
    d.approve(lp, d.pairs[0], d.router)
        .await
        .expect("approve shares");
    traders
}

/// One step of the seeded workload; a refused transaction (over the pool's LTV, say) is part of
/// the workload too.
async fn step(d: &Deployment, rng: &mut StdRng, traders: &[Address], price: &mut f64) {
    let who = traders[rng.gen_range(0..traders.len())];
    match rng.gen_range(0..100) {
        0..=44 => {
            let usdc = rng.gen_bool(0.5);
            let (token, amount) = if usdc {
                (d.usdc.token, units(rng.gen_range(100.0..50_000.0), 6))
            } else {
                (d.weth.token, units(rng.gen_range(0.05..20.0), 18))
            };
            let _ = d.swap(who, d.pairs[0], token, amount).await;
        }
        45..=59 => {
            let _ = d
                .deposit(who, d.weth.token, units(rng.gen_range(0.5..30.0), 18))
                .await;
        }
        60..=72 => {
            let _ = d
                .borrow(who, d.usdc.token, units(rng.gen_range(50.0..8_000.0), 6))
                .await;
        }
        73..=82 => {
            let _ = d
                .repay(who, d.usdc.token, units(rng.gen_range(10.0..3_000.0), 6))
                .await;
        }
        83..=88 => {
            let _ = d
                .withdraw(who, d.weth.token, units(rng.gen_range(0.1..5.0), 18))
                .await;
        }
        _ => {
            *price *= rng.gen_range(0.94..1.06);
            let _ = d.set_price(&d.weth, *price).await;
        }
    }
}

/// Blocks until every role has caught up with the chain's head and the log, or panics after
/// `within`.
/// Waits until every role has caught up with the chain's final head. The ingest's checkpoint
/// must be that block by hash, not only by number: when the workload's last step is a reorg that
/// leaves the head at the same height, a checkpoint of the orphaned block at that height would
/// otherwise count as caught up (the chaos test once compared then, before the follower's next
/// poll saw the replaced tip).
async fn converge(
    p: &mut Pipeline,
    pool: &sqlx::PgPool,
    (head, head_hash): (u64, String),
    within: Duration,
) {
    let started = Instant::now();
    let topics = p.iso.kafka.topics();
    let prefix = p.iso.kafka.topic_prefix.clone();
    let probe: BaseConsumer = chainfold_platform::kafka::client_config(&p.iso.kafka)
        .create()
        .expect("probe");
    let highs = |names: Vec<String>| -> BTreeMap<(String, i32), i64> {
        let mut out = BTreeMap::new();
        for topic in names {
            for (partition, _, high) in
                chainfold_platform::kafka::watermarks(&probe, &topic).unwrap_or_default()
            {
                out.insert((topic.clone(), partition), high);
            }
        }
        out
    };
    loop {
        p.reap();
        let checkpoint: Option<(i64, Option<String>)> = sqlx::query_as(
            "SELECT block_number, block_hash FROM ingest_checkpoint WHERE chain_id = 31337",
        )
        .fetch_optional(pool)
        .await
        .ok()
        .flatten();
        let mut behind = Vec::new();
        let at_head = checkpoint.as_ref().is_some_and(|(c, hash)| {
            (*c as u64) > head || ((*c as u64) == head && hash.as_deref() == Some(&head_hash))
        });
        if !at_head {
            behind.push(format!("ingest at {checkpoint:?} of {head} {head_hash}"));
        }
        let events: Vec<String> = topics
            .event_topics()
            .iter()
            .map(|t| (*t).to_owned())
            .collect();
        let scored = vec![
            topics.lending.clone(),
            topics.amm.clone(),
            topics.oracle.clone(),
            format!("{prefix}{}", chainfold_domain::topics::ATTESTATIONS),
        ];
        for (role, names) in [
            ("project", events),
            ("score", scored),
            ("risk", vec![topics.seals.clone()]),
        ] {
            let stored: BTreeMap<(String, i32), i64> =
                chainfold_platform::offsets::load(pool, &p.groups[role])
                    .await
                    .unwrap_or_default()
                    .into_iter()
                    .collect();
            for (key, high) in highs(names) {
                if high > 0 && stored.get(&key).is_none_or(|s| s < &high) {
                    behind.push(format!(
                        "{role} {}/{} at {:?} of {high}",
                        key.0,
                        key.1,
                        stored.get(&key)
                    ));
                }
            }
        }
        let outbox = chainfold_platform::outbox::pending(pool)
            .await
            .unwrap_or(-1);
        if outbox != 0 {
            behind.push(format!("{outbox} outputs not relayed"));
        }
        if behind.is_empty() {
            return;
        }
        assert!(
            started.elapsed() < within,
            "the pipeline did not catch up within {within:?}: {behind:?} (logs in {})",
            p.logs.display()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Every record of `topic` as (output id header, count).
fn outputs_of(kafka: &chainfold_platform::config::KafkaArgs, topic: &str) -> BTreeMap<String, u64> {
    let consumer: BaseConsumer = chainfold_platform::kafka::client_config(kafka)
        .set("group.id", unique("outputs"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let marks = chainfold_platform::kafka::watermarks(&consumer, topic).expect("watermarks");
    let mut tpl = rdkafka::TopicPartitionList::new();
    let mut left: HashMap<i32, i64> = HashMap::new();
    for (partition, low, high) in marks {
        if high > low {
            tpl.add_partition_offset(topic, partition, rdkafka::Offset::Beginning)
                .expect("tpl");
            left.insert(partition, high);
        }
    }
    let mut out = BTreeMap::new();
    if left.is_empty() {
        return out;
    }
    consumer.assign(&tpl).expect("assign");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !left.is_empty() && Instant::now() < deadline {
        let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let id = m
            .headers()
            .and_then(|h| {
                h.iter()
                    .find(|h| h.key == chainfold_platform::outbox::OUTPUT_ID_HEADER)
                    .and_then(|h| h.value.map(|v| String::from_utf8_lossy(v).into_owned()))
            })
            .expect("every output record carries its output id");
        *out.entry(id).or_default() += 1;
        if left
            .get(&m.partition())
            .is_some_and(|h| m.offset() + 1 >= *h)
        {
            left.remove(&m.partition());
        }
    }
    assert!(left.is_empty(), "could not read {topic} to its end");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_roles_brokers_postgres_and_redis_change_no_table_and_no_output() {
    let _one_at_a_time = chainfold_testkit::fault_stack().await;
    let seed: u64 = env_or("CHAINFOLD_CHAOS_SEED", rand::random());
    let faults: usize = env_or("CHAINFOLD_CHAOS_FAULTS", 12);
    let steps: usize = env_or("CHAINFOLD_CHAOS_STEPS", 150);
    eprintln!("chaos: seed {seed}, {faults} faults, {steps} steps (CHAINFOLD_CHAOS_SEED={seed} reproduces the schedule)");
    let mut rng = StdRng::seed_from_u64(seed);

    let anvil = Anvil::spawn(31337).expect("anvil");
    let weth = chainfold_simulate::prices(&data_dir(), "WETH").expect("prices")[0];
    let d = Deployment::deploy(&anvil.http_url(), weth, 30_000.0)
        .await
        .expect("deploy");
    let traders = prepare(&d, weth).await;
    let chains = std::env::temp_dir().join(format!("{}.toml", unique("chaos")));
    let mut toml = d.chains_toml("anvil", &anvil.http_url(), None, 2).replace(
        "poll_interval",
        "reorg_window = 16\nmax_range = 50\npoll_interval",
    );
    // The fixture tokens' transfers too: balances folded and unfolded under the same kills.
    for token in [d.weth.token, d.usdc.token, d.wbtc.token] {
        toml.push_str(&format!(
            "\n[[chain.contract]]\naddress = \"{token:#x}\"\nkind = \"erc20_token\"\n"
        ));
    }
    std::fs::write(&chains, toml).expect("chains file");

    let iso = Isolated::on_fault_stack("chaos").await;
    let pool = chainfold_platform::postgres::connect_and_migrate(&iso.postgres)
        .await
        .expect("fault-stack postgres");
    let mut p = Pipeline::new(iso, chains.clone());
    for role in ["ingest", "project", "score", "risk"] {
        p.start(role, None);
    }

    // The workload and the fault schedule, interleaved: a fault every steps/faults steps.
    let every = (steps / faults.max(1)).max(1);
    let mut price = weth;
    let mut tried: Vec<String> = Vec::new();
    let mut broker_down: Option<(u32, Instant)> = None;
    let mut reorgs = 0;
    for i in 0..steps {
        p.reap();
        if i % 37 == 20 {
            // A reorg: some blocks the pipeline may already have seen, then a longer fork.
            let snapshot: U256 = d
                .provider
                .raw_request("evm_snapshot".into(), ())
                .await
                .expect("snapshot");
            for _ in 0..rng.gen_range(1..5) {
                step(&d, &mut rng, &traders, &mut price).await;
            }
            tokio::time::sleep(Duration::from_millis(rng.gen_range(0..400))).await;
            let reverted: bool = d
                .provider
                .raw_request("evm_revert".into(), (snapshot,))
                .await
                .expect("revert");
            assert!(reverted);
            reorgs += 1;
            for _ in 0..rng.gen_range(2..7) {
                step(&d, &mut rng, &traders, &mut price).await;
            }
        }
        if i == steps * 2 / 3 {
            // The liquidity provider pulls 90% of the deep pair: a drain for the risk worker.
            let lp = Address::repeat_byte(0x70);
            let shares = d.lp_balance(d.pairs[0], lp).await.expect("shares");
            d.remove_liquidity(lp, d.pairs[0], shares * U256::from(9u8) / U256::from(10u8))
                .await
                .expect("drain");
        }
        step(&d, &mut rng, &traders, &mut price).await;
        tokio::time::sleep(Duration::from_millis(rng.gen_range(10..120))).await;
        if let Some((node, since)) = broker_down {
            if since.elapsed() > Duration::from_secs(4) {
                stack(&["fault", "broker-start", &node.to_string()]);
                broker_down = None;
            }
        }
        if i % every != every - 1 || tried.len() >= faults {
            continue;
        }
        match rng.gen_range(0..10) {
            0..=5 => {
                let role = ["ingest", "project", "score", "risk"][rng.gen_range(0..4)];
                p.kill(role);
                tokio::time::sleep(Duration::from_millis(rng.gen_range(0..1500))).await;
                if rng.gen_bool(0.5) {
                    let points = failpoints_of(role);
                    let point = points[rng.gen_range(0..points.len())];
                    p.start(role, Some(&format!("{point}=0.5")));
                    tried.push(format!("SIGKILL {role}, restarted with {point} armed"));
                } else {
                    p.start(role, None);
                    tried.push(format!("SIGKILL {role}"));
                }
            }
            6 if broker_down.is_none() => {
                let node = rng.gen_range(1..=3u32);
                stack(&["fault", "broker-kill", &node.to_string()]);
                broker_down = Some((node, Instant::now()));
                tried.push(format!("SIGKILL broker {node}"));
            }
            7 => {
                stack(&["fault", "postgres-restart", "fast"]);
                tried.push("postgres restart -m fast".into());
            }
            8 => {
                stack(&["fault", "postgres-restart", "immediate"]);
                tried.push("postgres restart -m immediate (crash)".into());
            }
            _ => {
                stack(&["fault", "redis-restart"]);
                tried.push("redis restart".into());
            }
        }
    }
    if let Some((node, _)) = broker_down {
        stack(&["fault", "broker-start", &node.to_string()]);
    }
    let head = d.provider.get_block_number().await.expect("head");
    let head_hash = d
        .provider
        .get_block_by_number(head.into())
        .await
        .expect("head block")
        .expect("the head exists")
        .header
        .hash;
    converge(
        &mut p,
        &pool,
        (head, format!("{head_hash:#x}")),
        Duration::from_secs(300),
    )
    .await;
    p.stop();
    eprintln!(
        "chaos: {reorgs} reorgs, faults tried: {tried:#?}; crashes (crash points, errors) restarted: {:?}",
        p.crashes
    );

    // The reference: the same final chain, followed, projected, scored and evaluated once,
    // in-process, without a fault, on the shared stack.
    let clean = Isolated::new("chaos_clean").await;
    let clean_pool = reference_run(&clean, &chains).await;
    chainfold_testkit::assert_same_tables(&pool, &clean_pool, "the faulted run").await;
    let transfers: i64 = sqlx::query_scalar("SELECT count(*) FROM erc20_transfer")
        .fetch_one(&pool)
        .await
        .expect("transfers");
    assert!(transfers > 0, "the workload moves the fixture tokens");

    // Each output once after de-duplication: every stored score and alert is on its topic,
    // and nothing else is but what a reorg or a re-evaluation retracted.
    let prefix = &p.iso.kafka.topic_prefix;
    let scores = outputs_of(
        &p.iso.kafka,
        &format!("{prefix}{}", chainfold_domain::topics::SCORES),
    );
    let stored: BTreeSet<String> = sqlx::query_scalar(
        "SELECT 'score:' || chain_id || ':' || wallet || ':' || event_id FROM credit_score",
    )
    .fetch_all(&pool)
    .await
    .expect("scores")
    .into_iter()
    .collect();
    let retracted: BTreeSet<String> = sqlx::query_scalar(
        "SELECT 'score:' || (row->>'chain_id') || ':' || (row->>'wallet') || ':' || (row->>'event_id')
         FROM feed_retraction WHERE feed = 'credit_score'",
    )
    .fetch_all(&pool)
    .await
    .expect("retracted")
    .into_iter()
    .collect();
    assert!(!stored.is_empty());
    let published: BTreeSet<String> = scores.keys().cloned().collect();
    let missing: Vec<&String> = stored.difference(&published).take(5).collect();
    assert!(
        missing.is_empty(),
        "scores stored but never published: {missing:?}"
    );
    let stray: Vec<&String> = published
        .iter()
        .filter(|id| !stored.contains(*id) && !retracted.contains(*id))
        .take(5)
        .collect();
    assert!(
        stray.is_empty(),
        "scores published that no run stored: {stray:?}"
    );
    let alerts = outputs_of(
        &p.iso.kafka,
        &format!("{prefix}{}", chainfold_domain::topics::RISK),
    );
    let stored_alerts: BTreeSet<String> = sqlx::query_scalar("SELECT id FROM risk_alert")
        .fetch_all(&pool)
        .await
        .expect("alerts")
        .into_iter()
        .collect();
    let replaced_alerts: BTreeSet<String> =
        sqlx::query_scalar("SELECT row->>'id' FROM feed_retraction WHERE feed = 'risk_alert'")
            .fetch_all(&pool)
            .await
            .expect("replaced")
            .into_iter()
            .collect();
    let alert_ids: BTreeSet<String> = alerts.keys().cloned().collect();
    assert!(
        stored_alerts.is_subset(&alert_ids),
        "alerts stored but never published"
    );
    assert!(
        alert_ids
            .iter()
            .all(|id| stored_alerts.contains(id) || replaced_alerts.contains(id)),
        "alerts published that no run stored"
    );
    assert!(
        !stored_alerts.is_empty(),
        "the workload's drain raises an alert in both runs"
    );
    let doubled: u64 = scores.values().chain(alerts.values()).map(|n| n - 1).sum();
    eprintln!(
        "chaos: {} scores and {} alerts published, {doubled} records sent twice (crash after the broker's ack, before the outbox delete) and removed by output id",
        scores.len(),
        alerts.len()
    );
}

/// Follows `chains` to its head, projects, scores and evaluates risk in-process, no faults.
async fn reference_run(iso: &Isolated, chains: &Path) -> sqlx::PgPool {
    let pool = follow_and_project(iso, chains).await;
    let models = workspace().join("scoring/models");
    let mut scorer =
        chainfold_scoring::worker::Scorer::build(chainfold_scoring::worker::Config::new(
            iso.kafka.clone(),
            iso.postgres.clone(),
            iso.redis.clone(),
            unique("clean-scorer"),
            iso.group.clone(),
            models.join("position-v1"),
        ))
        .await
        .expect("scorer");
    scorer
        .run_until_idle(Duration::from_secs(3))
        .await
        .expect("score");
    let mut risk = chainfold_risk::worker::RiskConfig::new(
        iso.kafka.clone(),
        iso.postgres.clone(),
        iso.redis.clone(),
        unique("clean-risk"),
    );
    risk.projector_group = iso.group.clone();
    risk.anomaly_model_dir = Some(models.join("pool-anomaly-v1"));
    risk.prices_dir = data_dir().join("aave-v2-eth-bhemen/usd_prices");
    chainfold_risk::worker::RiskWorker::build(risk)
        .await
        .expect("risk")
        .run_until_idle(Duration::from_secs(3))
        .await
        .expect("risk");
    pool
}

/// Follows `chains` to its head and projects it in-process, no faults.
async fn follow_and_project(iso: &Isolated, chains: &Path) -> sqlx::PgPool {
    let chain = chainfold_ingest::rpc::config::ChainsFile::load(chains)
        .expect("chains")
        .chains
        .remove(0);
    let pool = chainfold_platform::postgres::connect_and_migrate(&iso.postgres)
        .await
        .expect("postgres");
    let topics = iso.kafka.topics();
    chainfold_platform::kafka::ensure_topics(&iso.kafka, &topics.all())
        .await
        .expect("topics");
    let producer = chainfold_platform::kafka::producer(&iso.kafka).expect("producer");
    chainfold_ingest::rpc::follow::Follower::new(chain, producer, topics, pool.clone())
        .await
        .expect("follower")
        .sync_to_head()
        .await
        .expect("follow");
    let mut projector = chainfold_projector::App::build(chainfold_projector::Config::new(
        iso.kafka.clone(),
        iso.postgres.clone(),
        iso.redis.clone(),
        iso.group.clone(),
    ))
    .await
    .expect("projector");
    projector.run_until_caught_up().await.expect("project");
    pool
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_projectors_and_two_scorers_share_six_partitions_and_lose_one_each_without_a_trace() {
    let _one_at_a_time = chainfold_testkit::fault_stack().await;
    let iso = Isolated::on_fault_stack("scale").await;
    let pool = chainfold_platform::postgres::connect_and_migrate(&iso.postgres)
        .await
        .expect("fault-stack postgres");
    publish_bundled(&iso).await;
    let mut p = Pipeline::new(iso, PathBuf::new());
    let mut members: Vec<(&'static str, u32, Child)> = Vec::new();
    for (role, instance) in [
        ("project", 1),
        ("project", 2),
        ("project", 3),
        ("score", 1),
        ("score", 2),
    ] {
        p.starts += 1;
        let child = p
            .member_command(role, instance, None)
            .spawn()
            .expect("start member");
        members.push((role, instance, child));
    }
    // Mid-stream (a third of the log folded), one projector and one scorer die without leaving.
    let topics = p.iso.kafka.topics();
    let probe: BaseConsumer = chainfold_platform::kafka::client_config(&p.iso.kafka)
        .create()
        .expect("probe");
    let total: i64 = topics
        .event_topics()
        .iter()
        .flat_map(|t| chainfold_platform::kafka::watermarks(&probe, t).unwrap_or_default())
        .map(|(_, _, high)| high)
        .sum();
    let started = Instant::now();
    let mut owners_seen: BTreeSet<String> = BTreeSet::new();
    loop {
        let rows: Vec<(i64, Option<String>)> =
            sqlx::query_as("SELECT next_offset, owner FROM consumer_offset WHERE group_id = $1")
                .bind(&p.groups["project"])
                .fetch_all(&pool)
                .await
                .unwrap_or_default();
        owners_seen.extend(rows.iter().filter_map(|r| r.1.clone()));
        let folded: i64 = rows.iter().map(|r| r.0).sum();
        // The group must have spread the partitions (two owners at least) and the projector
        // about to be killed must hold some when it dies: a member that joins late gets its
        // share at the next rebalance, which can come after a third of the log is folded.
        let killed_owns = owners_seen
            .iter()
            .any(|o| o.starts_with(&format!("{}-2/", p.groups["project"])));
        if folded * 3 >= total && killed_owns && owners_seen.len() >= 2 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no progress: {folded} of {total}, owners {owners_seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (role, instance, child) in &mut members {
        if (*role, *instance) == ("project", 2) || (*role, *instance) == ("score", 1) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
    let highs = |names: Vec<String>| -> BTreeMap<(String, i32), i64> {
        let mut out = BTreeMap::new();
        for topic in names {
            for (partition, _, high) in
                chainfold_platform::kafka::watermarks(&probe, &topic).unwrap_or_default()
            {
                out.insert((topic.clone(), partition), high);
            }
        }
        out
    };
    let scored = vec![
        topics.lending.clone(),
        topics.amm.clone(),
        topics.oracle.clone(),
    ];
    let events: Vec<String> = topics
        .event_topics()
        .iter()
        .map(|t| (*t).to_owned())
        .collect();
    loop {
        let mut behind = Vec::new();
        for (role, names) in [("project", events.clone()), ("score", scored.clone())] {
            let stored: BTreeMap<(String, i32), i64> =
                chainfold_platform::offsets::load(&pool, &p.groups[role])
                    .await
                    .unwrap_or_default()
                    .into_iter()
                    .collect();
            for (key, high) in highs(names) {
                if high > 0 && stored.get(&key).is_none_or(|s| s < &high) {
                    behind.push(format!("{role} {}/{}", key.0, key.1));
                }
            }
        }
        // The killed projector's partitions are claimed by a survivor (the claim is written
        // on assignment, with or without records left to fold).
        let held_by_killed: Vec<String> = sqlx::query_scalar(
            "SELECT topic || '/' || partition_id FROM consumer_offset
             WHERE group_id = $1 AND owner LIKE $2",
        )
        .bind(&p.groups["project"])
        .bind(format!("{}-2/%", p.groups["project"]))
        .fetch_all(&pool)
        .await
        .expect("claims");
        if behind.is_empty()
            && held_by_killed.is_empty()
            && chainfold_platform::outbox::pending(&pool)
                .await
                .unwrap_or(-1)
                == 0
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "the survivors did not take over: behind {behind:?}, still held by the killed projector {held_by_killed:?} (logs in {})",
            p.logs.display()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for (_, _, child) in &mut members {
        let _ = child.kill();
        let _ = child.wait();
    }
    assert!(
        owners_seen.len() >= 2,
        "the projectors shared the partitions: owners {owners_seen:?}"
    );
    let owners_now: BTreeSet<String> = sqlx::query_scalar(
        "SELECT owner FROM consumer_offset WHERE group_id = $1 AND owner IS NOT NULL",
    )
    .bind(&p.groups["project"])
    .fetch_all(&pool)
    .await
    .expect("owners")
    .into_iter()
    .collect();
    assert!(
        owners_now
            .iter()
            .all(|o| !o.starts_with(&format!("{}-2/", p.groups["project"]))),
        "the killed projector's partitions were taken over: {owners_now:?}"
    );

    // The same log folded and scored by one process each, without a fault.
    let reference = Isolated::new("scale_reference").await;
    publish_bundled(&reference).await;
    let mut projector = chainfold_projector::App::build(chainfold_projector::Config::new(
        reference.kafka.clone(),
        reference.postgres.clone(),
        reference.redis.clone(),
        reference.group.clone(),
    ))
    .await
    .expect("projector");
    projector.run_until_caught_up().await.expect("project");
    let mut scorer =
        chainfold_scoring::worker::Scorer::build(chainfold_scoring::worker::Config::new(
            reference.kafka.clone(),
            reference.postgres.clone(),
            reference.redis.clone(),
            unique("reference-scorer"),
            reference.group.clone(),
            workspace().join("scoring/models/position-v1"),
        ))
        .await
        .expect("scorer");
    scorer
        .run_until_idle(Duration::from_secs(3))
        .await
        .expect("score");
    chainfold_testkit::assert_same_tables(
        &pool,
        projector.pool(),
        "three projectors and two scorers",
    )
    .await;
}

/// The bundled recorded data sets, published to `iso`'s topics (with their seals).
async fn publish_bundled(iso: &Isolated) {
    let topics = iso.kafka.topics();
    chainfold_platform::kafka::ensure_topics(&iso.kafka, &topics.all())
        .await
        .expect("topics");
    let producer = chainfold_platform::kafka::producer(&iso.kafka).expect("producer");
    for dataset in [
        chainfold_ingest::replay::Dataset::Polygon,
        chainfold_ingest::replay::Dataset::Swaps,
    ] {
        let items = dataset.decode_dir(&data_dir()).expect("bundled data");
        chainfold_ingest::publish::publish_all(&producer, &topics, items, |_, _| {})
            .await
            .expect("publish");
    }
}

/// The holder of the chain's ingest lease, as recorded by the leader (`role@host/pid`).
async fn lease_holder(pool: &sqlx::PgPool) -> Option<String> {
    sqlx::query_scalar("SELECT holder FROM role_lease WHERE lease = 'ingest:31337'")
        .fetch_optional(pool)
        .await
        .ok()
        .flatten()
}

/// Waits until the ingest checkpoint reaches `head` with the lease held by process `pid`.
async fn ingested_by(pool: &sqlx::PgPool, head: u64, pid: u32, logs: &Path) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let checkpoint: Option<i64> =
            sqlx::query_scalar("SELECT block_number FROM ingest_checkpoint WHERE chain_id = 31337")
                .fetch_optional(pool)
                .await
                .ok()
                .flatten();
        let holder = lease_holder(pool).await;
        let led = holder
            .as_deref()
            .is_some_and(|h| h.ends_with(&format!("/{pid}")));
        if led && checkpoint.is_some_and(|c| c as u64 >= head) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "ingest by {pid} did not reach {head}: checkpoint {checkpoint:?}, lease {holder:?} (logs in {})",
            logs.display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_ingest_of_a_chain_stands_by_and_takes_over_when_the_leader_is_killed() {
    let mut rng = StdRng::seed_from_u64(env_or("CHAINFOLD_CHAOS_SEED", 7));
    let anvil = Anvil::spawn(31337).expect("anvil");
    let weth = chainfold_simulate::prices(&data_dir(), "WETH").expect("prices")[0];
    let d = Deployment::deploy(&anvil.http_url(), weth, 30_000.0)
        .await
        .expect("deploy");
    let traders = prepare(&d, weth).await;
    let chains = std::env::temp_dir().join(format!("{}.toml", unique("lease")));
    std::fs::write(&chains, d.chains_toml("anvil", &anvil.http_url(), None, 2)).expect("chains");
    let iso = Isolated::new("lease").await;
    let pool = chainfold_platform::postgres::connect_and_migrate(&iso.postgres)
        .await
        .expect("postgres");
    let p = Pipeline::new(iso, chains.clone());
    let mut price = weth;

    // The first process leads; the second, started after, stands by and publishes nothing.
    let mut leader = p.member_command("ingest", 1, None).spawn().expect("leader");
    let head = d.provider.get_block_number().await.expect("head");
    ingested_by(&pool, head, leader.id(), &p.logs).await;
    let mut standby = p
        .member_command("ingest", 2, None)
        .spawn()
        .expect("standby");
    for _ in 0..20 {
        step(&d, &mut rng, &traders, &mut price).await;
    }
    let head = d.provider.get_block_number().await.expect("head");
    ingested_by(&pool, head, leader.id(), &p.logs).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        standby.try_wait().expect("standby").is_none(),
        "the standby waits, it does not exit"
    );
    assert!(lease_holder(&pool)
        .await
        .is_some_and(|h| h.ends_with(&format!("/{}", leader.id()))));

    // The leader is killed (no shutdown): the standby takes the lease within its poll and
    // follows on from the checkpoint, through blocks mined while nobody led.
    let _ = leader.kill();
    let _ = leader.wait();
    for _ in 0..20 {
        step(&d, &mut rng, &traders, &mut price).await;
    }
    let head = d.provider.get_block_number().await.expect("head");
    ingested_by(&pool, head, standby.id(), &p.logs).await;
    let _ = standby.kill();
    let _ = standby.wait();

    // What the two published, projected, equals one uninterrupted follower's: nothing lost,
    // nothing doubled.
    let mut projector = chainfold_projector::App::build(chainfold_projector::Config::new(
        p.iso.kafka.clone(),
        p.iso.postgres.clone(),
        p.iso.redis.clone(),
        p.iso.group.clone(),
    ))
    .await
    .expect("projector");
    projector.run_until_caught_up().await.expect("project");
    drop(projector);
    let clean = Isolated::new("lease_clean").await;
    let clean_pool = follow_and_project(&clean, &chains).await;
    let (ours, theirs) = (
        chainfold_testkit::fingerprints(&pool).await,
        chainfold_testkit::fingerprints(&clean_pool).await,
    );
    let swaps = theirs.iter().find(|f| f.0 == "swap").map_or(0, |f| f.1);
    assert!(swaps > 5, "the workload swapped: {theirs:?}");
    assert_eq!(ours, theirs, "two ingest processes in turn vs one");
}

/// `scripts/test` prunes earlier runs' topics before the tests: on the fault cluster too, or
/// its brokers pile up partitions (~7,000 after some runs) that each restart must load, and a
/// killed broker no longer comes back within `broker-start`'s 90 s under a test run's load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_test_topic_prune_reaches_the_fault_cluster() {
    let _one_at_a_time = chainfold_testkit::fault_stack().await;
    let iso = Isolated::on_fault_stack("prune").await;
    let topic = iso.kafka.topics().all()[0].clone();
    chainfold_platform::kafka::ensure_topics(&iso.kafka, std::slice::from_ref(&topic))
        .await
        .expect("a test topic on the cluster");
    // --list: what the prune would delete, without deleting the topics of tests running now.
    let listed = stack(&["prune-test-topics", "--list"]);
    let cluster = chainfold_testkit::fault_kafka_brokers();
    let brokers: BTreeSet<&str> = listed
        .lines()
        .filter(|line| line.split_once(' ').is_some_and(|(_, t)| t == topic))
        .filter_map(|line| line.split_once(' ').map(|(b, _)| b))
        .collect();
    assert_eq!(
        brokers,
        BTreeSet::from([cluster.as_str()]),
        "the prune lists {topic} on the cluster's brokers:\n{listed}"
    );
}
