//! `chainfold risk`: the attack detectors of `domain::risk` over sealed stretches of each chain.
//!
//! A chain's events travel on many partitions (swaps keyed by pool, flash loans by wallet), so
//! the risk worker does not read them from Kafka. It reads the **seals** (`chainfold.seals.v1`,
//! keyed by chain id, `domain::seal`) the ingest publishes once a stretch of blocks is
//! acknowledged, waits until the projector has folded everything below the seal's offsets, and
//! evaluates the sealed blocks from the read models, whole and in block order:
//! - per block: sandwiches on each pool; the anomaly model on each swap (its size feature
//!   against the previous swaps of the pool and token, read from `swap`); each flash loan
//!   against Forta's rule with its transaction's swaps and pool price moves (reserves from
//!   `pool_sync`); reserve drains within a window of blocks;
//! - per lending reserve and AMM pool with new events, per hour of them: the utilisation and
//!   ±2% depth forecasts on the history up to that hour (`LIQUIDITY_SHORTAGE`);
//! - per block with an oracle move past the threshold: the stress test as of that block.
//!
//! Everything an evaluation reads is fixed by the chain and the seal, not by which replica owns
//! which partition, when a message arrived or how the blocks were split into seals, so any
//! replica, a restart or a replay of the log computes the same alerts. An evaluation of blocks
//! [from, to] replaces the block alerts of those blocks (a reorg's retraction seal removes the
//! orphaned blocks' alerts). Alerts, incidents, the chain's progress, their outbox records and
//! the seals' offsets commit in one transaction; the outbox is relayed to `chainfold.risk.v1`
//! and Redis `<prefix>alerts` is told after the commit.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use alloy_primitives::{Address, B256};
use anyhow::Context as _;
use chainfold_domain::risk::{
    drains, find_sandwiches, flash_loan_attack, AlertKind, FlashLoanRule, Loan, PriceMove,
    ReserveState, Severity, SwapLeg, DETECTOR_VERSION,
};
use chainfold_domain::seal::Seal;
use chainfold_domain::topics;
use chainfold_platform::config::{KafkaArgs, PostgresArgs, RedisArgs};
use chainfold_platform::dlq::{self, DeadLetter};
use chainfold_platform::kafka;
use chainfold_platform::member::{Member, Received};
use chainfold_platform::offsets::OffsetError;
use chainfold_platform::outbox::Output;
use chainfold_store::{alerts, blocks};
use chrono::{DateTime, Utc};
use rdkafka::producer::FutureProducer;
use sqlx::{PgPool, Postgres, Transaction};

/// `chainfold risk` settings.
#[derive(Debug, Clone, clap::Args)]
pub struct RiskConfig {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub postgres: PostgresArgs,
    #[command(flatten)]
    pub redis: RedisArgs,
    #[arg(
        long = "group",
        env = "CHAINFOLD_RISK_GROUP",
        default_value = "chainfold-risk"
    )]
    pub group: String,
    /// Least pool price move within a flash-loan transaction (0.1 = 10%).
    #[arg(long = "flash-min-price-move", default_value_t = 0.1)]
    pub flash_min_price_move: f64,
    /// Least profit of a flash-loan transaction as a share of the loan (Forta: 0.02).
    #[arg(long = "flash-min-profit-share", default_value_t = 0.02)]
    pub flash_min_profit_share: f64,
    /// Share of a pool reserve lost within `--drain-window` blocks that is a drain.
    #[arg(long = "drain-share", default_value_t = 0.5)]
    pub drain_share: f64,
    #[arg(long = "drain-window", default_value_t = 5)]
    pub drain_window: u64,
    /// Most seals per batch.
    #[arg(long = "batch-size", default_value_t = 500)]
    pub batch_size: usize,
    /// Oracle move (relative to the prices of a chain's last stress run) that recomputes its
    /// stress test and VaR as of the oracle's block …
    #[arg(long = "stress-threshold", default_value_t = 0.02)]
    pub stress_threshold: f64,
    /// … at most once per this much block time (chain time, not wall time: a replay of the log
    /// stresses at the same blocks); 0 (the default) runs at every such move.
    #[arg(long = "stress-interval", default_value = "0s", value_parser = chainfold_platform::config::parse_duration)]
    pub stress_interval: Duration,
    /// Seals per batch; how long to wait for the projector to fold a sealed stretch before
    /// failing.
    #[arg(long = "projector-wait", default_value = "120s", value_parser = chainfold_platform::config::parse_duration)]
    pub projector_wait: Duration,
    /// The projector's group: a sealed stretch is evaluated once that group has folded it.
    #[arg(
        long = "projector-group",
        env = "CHAINFOLD_PROJECTOR_GROUP",
        default_value = "chainfold-projector"
    )]
    pub projector_group: String,
    /// Static membership id (see `chainfold project --help`); defaults to `<group>@<hostname>`.
    #[arg(long = "instance-id", env = "CHAINFOLD_RISK_INSTANCE_ID")]
    pub instance_id: Option<String>,
    /// The swap anomaly model (`scoring/models/<version>`): one score per swap, a
    /// `POOL_ANOMALY` alert for the swaps it flags.
    #[arg(
        long = "anomaly-model-dir",
        env = "CHAINFOLD_ANOMALY_MODEL_DIR",
        default_value = "scoring/models/pool-anomaly-v1"
    )]
    pub anomaly_model_dir: Option<std::path::PathBuf>,
    /// Run without the anomaly model.
    #[arg(long = "no-anomaly")]
    pub no_anomaly: bool,
    /// Hours ahead a lending reserve's utilisation is forecast.
    #[arg(long = "shortage-horizon-hours", default_value_t = 6.0)]
    pub shortage_horizon_hours: f64,
    /// Forecast utilisation that is a shortage …
    #[arg(long = "shortage-bound", default_value_t = 0.9)]
    pub shortage_bound: f64,
    /// … and the utilisation the recommended supply brings it back to.
    #[arg(long = "shortage-target", default_value_t = 0.8)]
    pub shortage_target: f64,
    /// History (hours before the reserve's latest event) the trend is fitted on.
    #[arg(long = "shortage-window-hours", default_value_t = 24.0)]
    pub shortage_window_hours: f64,
    /// An AMM pool's forecast depth (±2%, same horizon and window) below this share of its
    /// window's median depth is a shortage …
    #[arg(long = "depth-bound", default_value_t = 0.5)]
    pub depth_bound: f64,
    /// … and the share of that median the recommended liquidity brings it back to.
    #[arg(long = "depth-target", default_value_t = 0.8)]
    pub depth_target: f64,
    /// Hourly USD price history the stress test bootstraps from.
    #[arg(
        long = "prices-dir",
        env = "CHAINFOLD_PRICES_DIR",
        default_value = "data/aave-v2-eth-bhemen/usd_prices"
    )]
    pub prices_dir: std::path::PathBuf,
}

impl RiskConfig {
    pub fn new(kafka: KafkaArgs, postgres: PostgresArgs, redis: RedisArgs, group: String) -> Self {
        RiskConfig {
            kafka,
            postgres,
            redis,
            group,
            flash_min_price_move: 0.1,
            flash_min_profit_share: 0.02,
            drain_share: 0.5,
            drain_window: 5,
            batch_size: 500,
            anomaly_model_dir: None,
            no_anomaly: false,
            shortage_horizon_hours: 6.0,
            shortage_bound: 0.9,
            shortage_target: 0.8,
            shortage_window_hours: 24.0,
            depth_bound: 0.5,
            depth_target: 0.8,
            stress_threshold: 0.02,
            stress_interval: Duration::ZERO,
            projector_wait: Duration::from_secs(120),
            projector_group: "chainfold-projector".into(),
            instance_id: None,
            prices_dir: "data/aave-v2-eth-bhemen/usd_prices".into(),
        }
    }
}

/// One alert as stored and published (the typed message of `chainfold.risk.v1`).
pub use chainfold_domain::messages::Alert;

/// What a batch did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RiskOutcome {
    /// Seals received.
    pub received: u64,
    pub blocks: u64,
    /// Alerts newly stored, by kind.
    pub sandwiches: u64,
    pub flash_loan_attacks: u64,
    pub drains: u64,
    /// Stress runs recomputed because an oracle price moved.
    pub stress_runs: u64,
    /// Incidents written (new or grown) around the new alerts.
    pub incidents: u64,
    /// Liquidity-shortage alerts newly stored.
    pub shortages: u64,
    /// Swaps scored by the anomaly model, and `POOL_ANOMALY` alerts newly stored.
    pub swaps_scored: u64,
    pub anomalies: u64,
}

/// The kinds the block detectors raise: evaluating blocks [from, to] replaces these alerts of
/// those blocks.
const BLOCK_KINDS: [AlertKind; 4] = [
    AlertKind::Sandwich,
    AlertKind::FlashLoanAttack,
    AlertKind::LiquidityDrain,
    AlertKind::PoolAnomaly,
];

/// A running risk worker.
pub struct RiskWorker {
    /// Held shared while this worker runs: `chainfold rebuild` cannot run beside it.
    _pipeline: chainfold_platform::lease::PipelineGuard,
    member: Member,
    producer: FutureProducer,
    pool: PgPool,
    redis: redis::aio::ConnectionManager,
    config: RiskConfig,
    risk_topic: String,
    anomaly: Option<crate::anomaly::AnomalyModel>,
}

impl std::fmt::Debug for RiskWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RiskWorker")
            .field("group", &self.config.group)
            .finish()
    }
}

fn hex<T: std::fmt::LowerHex>(v: T) -> String {
    format!("{v:#x}")
}

fn address(text: &str) -> Address {
    text.parse().unwrap_or_default()
}

/// A chain's seals of one batch, merged.
#[derive(Debug, Default, Clone)]
struct Stretch {
    blocks: Option<(u64, u64)>,
    through: BTreeMap<(String, i32), i64>,
    published_at: Option<DateTime<Utc>>,
}

impl Stretch {
    fn add(&mut self, seal: &Seal, published_at: Option<DateTime<Utc>>) {
        if let Some((lo, hi)) = seal.blocks {
            self.blocks = Some(match self.blocks {
                None => (lo, hi),
                Some((a, b)) => (a.min(lo), b.max(hi)),
            });
        }
        for t in &seal.through {
            let next = self
                .through
                .entry((t.topic.clone(), t.partition))
                .or_insert(0);
            *next = (*next).max(t.next_offset);
        }
        self.published_at = self.published_at.max(published_at);
    }
}

/// What the evaluation of one chain's stretch decided.
#[derive(Debug, Default)]
struct Evaluation {
    alerts: Vec<Alert>,
    /// Block alerts of these blocks not in `alerts` go.
    blocks: Option<(u64, u64)>,
    /// Shortage alerts evaluated (hour by hour): an id here not in `alerts` goes.
    evaluated_ids: Vec<String>,
    blocks_evaluated: u64,
    swaps_scored: u64,
    stress_runs: u64,
}

/// One block's rows, from the read models.
#[derive(Debug, Default)]
struct BlockRows {
    time: Option<DateTime<Utc>>,
    swaps: Vec<SwapLeg>,
    /// (log index, tx, pool, reserve0, reserve1)
    syncs: Vec<(u32, B256, Address, f64, f64)>,
    loans: Vec<Loan>,
}

impl RiskWorker {
    pub async fn build(config: RiskConfig) -> anyhow::Result<RiskWorker> {
        let pool = chainfold_platform::postgres::connect_and_migrate(&config.postgres).await?;
        let pipeline = chainfold_platform::lease::hold_pipeline(&config.postgres).await?;
        let redis = chainfold_platform::redis_cache::connect(&config.redis).await?;
        let topics = config.kafka.topics();
        let risk_topic = format!("{}{}", config.kafka.topic_prefix, topics::RISK);
        let mut all = topics.all();
        all.push(risk_topic.clone());
        kafka::ensure_topics(&config.kafka, &all).await?;
        let instance = config
            .instance_id
            .clone()
            .unwrap_or_else(|| kafka::default_instance_id(&config.group));
        let member = Member::join(
            &config.kafka,
            pool.clone(),
            &config.group,
            &instance,
            &[topics.seals.as_str()],
        )?;
        let producer = kafka::producer(&config.kafka)?;
        let anomaly = match (&config.anomaly_model_dir, config.no_anomaly) {
            (Some(dir), false) => Some(crate::anomaly::AnomalyModel::load(dir)?),
            _ => None,
        };
        tracing::info!(group = %config.group, instance = %instance, anomaly = anomaly.is_some(), "risk worker subscribed to seals");
        let worker = RiskWorker {
            _pipeline: pipeline,
            member,
            producer,
            pool,
            redis,
            risk_topic,
            config,
            anomaly,
        };
        worker.relay().await?;
        Ok(worker)
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn relay(&self) -> anyhow::Result<u64> {
        chainfold_platform::outbox::relay(
            &self.pool,
            &self.producer,
            std::slice::from_ref(&self.risk_topic),
            1000,
        )
        .await
    }

    /// Receives up to `batch_size` seals (waiting at most `idle` for the first), evaluates what
    /// they seal and commits (see the module doc).
    pub async fn process_batch(&mut self, idle: Duration) -> anyhow::Result<RiskOutcome> {
        let batch = self
            .member
            .receive(self.config.batch_size, idle, Duration::from_millis(50))
            .await?;
        let mut outcome = RiskOutcome {
            received: batch.messages.len() as u64,
            ..RiskOutcome::default()
        };
        if batch.messages.is_empty() {
            // Idle: what a relay that failed after its batch committed left in the outbox goes
            // now, not when the next batch commits (on a quiet stream it may never come); rows
            // their writers are relaying are left to them.
            let topics = std::slice::from_ref(&self.risk_topic);
            let after = chainfold_platform::outbox::ABANDONED_AFTER;
            if chainfold_platform::outbox::abandoned(&self.pool, topics, after).await? {
                self.relay().await?;
            }
            return Ok(outcome);
        }
        let mut stretches: BTreeMap<u64, Stretch> = BTreeMap::new();
        for message in &batch.messages {
            match decode_seal(message) {
                Ok(seal) => {
                    let published = message
                        .timestamp_ms
                        .and_then(DateTime::from_timestamp_millis);
                    stretches
                        .entry(seal.chain_id)
                        .or_default()
                        .add(&seal, published);
                }
                Err(reason) => self.dead_letter(message, &reason).await?,
            }
        }
        self.wait_for_projector(&stretches).await?;
        let mut evaluations = Vec::new();
        let mut progress = Vec::new();
        for (chain, stretch) in &stretches {
            let before = self.progress(*chain).await?;
            let evaluation = self.evaluate(*chain, stretch, &before).await?;
            outcome.blocks += evaluation.blocks_evaluated;
            outcome.swaps_scored += evaluation.swaps_scored;
            outcome.stress_runs += evaluation.stress_runs;
            let mut through = before;
            for (key, next) in &stretch.through {
                let n = through.entry(key.clone()).or_insert(0);
                *n = (*n).max(*next);
            }
            progress.push((*chain, through, stretch.blocks.map(|b| b.1)));
            evaluations.push((*chain, evaluation));
        }

        let mut tx = self.pool.begin().await?;
        let mut stored = Vec::new();
        for (chain, evaluation) in &evaluations {
            stored.extend(store(&mut tx, *chain, evaluation).await?);
        }
        for a in &stored {
            match a.kind {
                AlertKind::Sandwich => outcome.sandwiches += 1,
                AlertKind::FlashLoanAttack => outcome.flash_loan_attacks += 1,
                AlertKind::LiquidityShortage => outcome.shortages += 1,
                AlertKind::PoolAnomaly => outcome.anomalies += 1,
                AlertKind::LiquidityDrain => outcome.drains += 1,
            }
        }
        outcome.incidents = correlate(&mut tx, &stored).await?;
        for (chain, through, last_block) in &progress {
            let last_block = last_block.map(|b| b as i64);
            alerts::save_progress(
                &mut tx,
                &self.config.group,
                *chain as i64,
                through,
                last_block,
            )
            .await?;
        }
        let outputs: Vec<Output> = stored
            .iter()
            .map(|a| {
                Ok(Output {
                    topic: self.risk_topic.clone(),
                    key: a.chain_id.to_string(),
                    output_id: a.id.clone(),
                    payload: serde_json::to_value(a)?.into(),
                })
            })
            .collect::<anyhow::Result<_>>()?;
        chainfold_platform::outbox::enqueue(&mut tx, &outputs).await?;
        match chainfold_platform::offsets::advance(&mut tx, self.member.group(), &batch.advances)
            .await
        {
            Ok(()) => {}
            Err(OffsetError::Fenced(fenced)) => {
                drop(tx);
                tracing::warn!(%fenced, "risk batch fenced; nothing of it was stored");
                self.member.recover(&fenced).await?;
                return Ok(RiskOutcome::default());
            }
            Err(OffsetError::Postgres(err)) => return Err(err.into()),
        }
        chainfold_platform::failpoint::hit("risk.before_commit");
        tx.commit().await.context("could not commit a risk batch")?;
        chainfold_platform::failpoint::hit("risk.after_commit");
        self.member.committed(&batch.advances);
        self.relay().await?;
        self.announce(&stored).await;
        Ok(outcome)
    }

    async fn dead_letter(&self, message: &Received, reason: &str) -> anyhow::Result<()> {
        dlq::send(
            &self.producer,
            &DeadLetter {
                topic: &message.topic,
                stage: "risk",
                reason,
                origin: &message.origin(),
                key: message.key.as_deref(),
                payload: &message.payload,
            },
        )
        .await
    }

    /// Waits until the projector has folded every sealed record.
    async fn wait_for_projector(&self, stretches: &BTreeMap<u64, Stretch>) -> anyhow::Result<()> {
        let mut needed: BTreeMap<(String, i32), i64> = BTreeMap::new();
        for stretch in stretches.values() {
            for (key, next) in &stretch.through {
                let n = needed.entry(key.clone()).or_insert(0);
                *n = (*n).max(*next);
            }
        }
        let started = Instant::now();
        loop {
            let folded: HashMap<(String, i32), i64> =
                chainfold_platform::offsets::load(&self.pool, &self.config.projector_group)
                    .await?
                    .into_iter()
                    .collect();
            if needed
                .iter()
                .all(|(k, next)| folded.get(k).is_some_and(|f| f >= next))
            {
                return Ok(());
            }
            anyhow::ensure!(
                started.elapsed() < self.config.projector_wait,
                "the projector (group {}) has not folded the sealed events after {:?}: is it running?",
                self.config.projector_group,
                self.config.projector_wait
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The cumulative seal bound of `chain` this group has evaluated.
    async fn progress(&self, chain: u64) -> anyhow::Result<BTreeMap<(String, i32), i64>> {
        Ok(alerts::progress(&self.pool, &self.config.group, chain as i64).await?)
    }

    async fn evaluate(
        &mut self,
        chain: u64,
        stretch: &Stretch,
        before: &BTreeMap<(String, i32), i64>,
    ) -> anyhow::Result<Evaluation> {
        let mut evaluation = Evaluation::default();
        if let Some((from, to)) = stretch.blocks {
            self.block_alerts(chain, from, to, stretch.published_at, &mut evaluation)
                .await?;
            evaluation.blocks = Some((from, to));
            evaluation.stress_runs = self.restress(chain, from, to).await?;
        }
        // The new events: between what was evaluated and the seal's bound, per partition.
        let ranges: Vec<(String, i32, i64, i64)> = stretch
            .through
            .iter()
            .map(|((t, p), next)| {
                (
                    t.clone(),
                    *p,
                    before.get(&(t.clone(), *p)).copied().unwrap_or(0),
                    *next,
                )
            })
            .filter(|(_, _, lo, hi)| hi > lo)
            .collect();
        // Histories are read as sealed: blocks up to the stretch's last (chains with blocks),
        // or below every seal's bound so far (recorded data without block numbers).
        let mut sealed = before.clone();
        for (key, next) in &stretch.through {
            let n = sealed.entry(key.clone()).or_insert(0);
            *n = (*n).max(*next);
        }
        let bound = SealBound {
            last_block: stretch.blocks.map(|b| b.1 as i64),
            through: sealed.into_iter().map(|((t, p), n)| (t, p, n)).collect(),
        };
        self.shortages(chain, &ranges, &bound, &mut evaluation)
            .await?;
        self.depth_shortages(chain, &ranges, &bound, &mut evaluation)
            .await?;
        for a in &mut evaluation.alerts {
            a.source_published_at = a.source_published_at.or(stretch.published_at);
        }
        Ok(evaluation)
    }

    /// Sandwiches, anomalies, flash-loan attacks and drains of blocks [from, to] of `chain`.
    async fn block_alerts(
        &mut self,
        chain: u64,
        from: u64,
        to: u64,
        published: Option<DateTime<Utc>>,
        out: &mut Evaluation,
    ) -> anyhow::Result<()> {
        let (blocks, pools) = self.block_rows(chain, from, to).await?;
        if blocks.is_empty() {
            return Ok(());
        }
        out.blocks_evaluated = blocks.len() as u64;
        let history = self.reserve_history(chain, from, to, &pools).await?;
        // Reserves before the stretch: the last state below `from`.
        let mut reserves: HashMap<Address, (f64, f64)> = HashMap::new();
        for (pool, states) in &history {
            if let Some(s) = states.iter().rev().find(|s| s.block < from) {
                reserves.insert(*pool, (s.reserve0, s.reserve1));
            }
        }
        let mut features = self.seed_features(chain, from, &blocks).await?;
        let rule = FlashLoanRule {
            min_price_move: self.config.flash_min_price_move,
            min_profit_share: self.config.flash_min_profit_share,
        };
        let mut seen_ids = BTreeSet::new();
        for (block, rows) in &blocks {
            let at = BlockAt {
                chain,
                block: *block,
                rows,
                published,
            };
            let (moves, ended) = price_moves(rows, &mut reserves);
            let mut alerts = sandwich_alerts(&at)?;
            if let Some(model) = self.anomaly.as_mut() {
                let (found, scored) = anomaly_alerts(&at, model, &mut features)?;
                out.swaps_scored += scored;
                alerts.extend(found);
            }
            alerts.extend(flash_loan_alerts(&at, &rule, &moves));
            for pool in ended {
                alerts.extend(
                    self.drains_at(chain, pool, *block, &history, rows, published)
                        .await?,
                );
            }
            // One alert per id: a drain episode is reported at its first block.
            for a in alerts {
                if seen_ids.insert(a.id.clone()) {
                    out.alerts.push(a);
                }
            }
        }
        Ok(())
    }

    /// The swaps, syncs and flash loans of blocks [from, to] of `chain`, by block, and the pools
    /// the syncs name.
    async fn block_rows(
        &self,
        chain: u64,
        from: u64,
        to: u64,
    ) -> anyhow::Result<(BTreeMap<u64, BlockRows>, BTreeSet<String>)> {
        let (c, f, t) = (chain as i64, from as i64, to as i64);
        let mut blocks: BTreeMap<u64, BlockRows> = BTreeMap::new();
        for s in blocks::swaps(&self.pool, c, f, t).await? {
            let rows = blocks.entry(s.block_number as u64).or_default();
            rows.time = rows.time.or(s.block_time);
            rows.swaps.push(SwapLeg {
                block: s.block_number as u64,
                tx_hash: s.tx_hash.parse().unwrap_or_default(),
                tx_position: s.tx_position as u32,
                trace: if s.trace_address.is_empty() {
                    vec![s.log_index.unwrap_or_default() as u32]
                } else {
                    s.trace_address.into_iter().map(|i| i as u32).collect()
                },
                pool: address(&s.pool),
                sender: address(&s.sender),
                recipient: address(&s.recipient),
                token_in: address(&s.token_in),
                amount_in: s.amount_in,
                token_out: address(&s.token_out),
                amount_out: s.amount_out,
            });
        }
        let mut pools: BTreeSet<String> = BTreeSet::new();
        for s in blocks::syncs(&self.pool, c, f, t).await? {
            let Some(tx) = s.tx_hash else { continue };
            let rows = blocks.entry(s.block_number as u64).or_default();
            rows.time = rows.time.or(s.block_time);
            rows.syncs.push((
                s.log_index.unwrap_or_default() as u32,
                tx.parse().unwrap_or_default(),
                address(&s.pool),
                s.reserve0,
                s.reserve1,
            ));
            pools.insert(s.pool);
        }
        for l in blocks::flash_loans(&self.pool, c, f, t).await? {
            let rows = blocks.entry(l.block_number as u64).or_default();
            rows.time = rows.time.or(l.block_time);
            rows.loans.push(Loan {
                tx_hash: l.tx_hash.parse().unwrap_or_default(),
                initiator: address(&l.initiator),
                asset: address(&l.asset),
                amount: l.amount,
                premium: l.premium,
            });
        }
        Ok((blocks, pools))
    }

    /// Each pool's end-of-block states, oldest first, from a drain window before `from` to `to`
    /// (plus the state before those, which holds until the first).
    async fn reserve_history(
        &self,
        chain: u64,
        from: u64,
        to: u64,
        pools: &BTreeSet<String>,
    ) -> anyhow::Result<HashMap<Address, Vec<ReserveState>>> {
        let (c, f, t) = (chain as i64, from as i64, to as i64);
        let pool_list: Vec<String> = pools.iter().cloned().collect();
        // Each pool's reserves as the stretch begins, and its end-of-block states from a drain
        // window before it on (plus the state before those, which holds until the first).
        let window = self.config.drain_window;
        let (start, states) = blocks::pool_states(
            &self.pool,
            c,
            &pool_list,
            f.saturating_sub(window as i64),
            t,
        )
        .await?;
        // End-of-block states per pool, oldest first.
        let mut history: HashMap<Address, Vec<ReserveState>> = HashMap::new();
        for s in start.into_iter().chain(states) {
            history
                .entry(address(&s.pool))
                .or_default()
                .push(ReserveState {
                    block: s.block_number as u64,
                    reserve0: s.reserve0,
                    reserve1: s.reserve1,
                });
        }
        Ok(history)
    }

    /// The drains of `pool` that reach their low at `block`: over the pool's end-of-block
    /// states within the window, starting with the state that held as the window opened.
    async fn drains_at(
        &self,
        chain: u64,
        pool: Address,
        block: u64,
        history: &HashMap<Address, Vec<ReserveState>>,
        rows: &BlockRows,
        published: Option<DateTime<Utc>>,
    ) -> anyhow::Result<Vec<Alert>> {
        let window = self.config.drain_window;
        let Some(states) = history.get(&pool) else {
            return Ok(Vec::new());
        };
        let opens = block.saturating_sub(window);
        // The state holding at the window's opening (its own block may be older), stamped at
        // the opening so the window check keeps it, then the states within the window.
        let mut slice: Vec<ReserveState> = Vec::new();
        let mut opening_block = None;
        if let Some(s) = states.iter().rev().find(|s| s.block < opens) {
            slice.push(ReserveState { block: opens, ..*s });
            opening_block = Some(s.block);
        }
        slice.extend(
            states
                .iter()
                .filter(|s| s.block >= opens && s.block <= block)
                .copied(),
        );
        let mut out = Vec::new();
        for mut d in drains(pool, &slice, window, self.config.drain_share)
            .into_iter()
            .filter(|d| d.to_block == block)
        {
            // A drain from the state that held at the window's opening started where that
            // state began: the same episode whichever block it is seen from.
            if d.from_block == opens {
                if let Some(real) = opening_block {
                    d.from_block = real;
                }
            }
            let txs: Vec<String> = rows
                .syncs
                .iter()
                .filter(|s| s.2 == pool)
                .map(|s| hex(s.1))
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            let token = blocks::pool_tokens(&self.pool, chain as i64, &hex(pool)).await?;
            let token = token.map(|(t0, t1)| address(if d.reserve == 0 { &t0 } else { &t1 }));
            let usd = match token {
                Some(token) => {
                    self.token_usd(chain, token, block)
                        .await?
                        .map(|(decimals, price)| {
                            (d.before - d.after) / 10f64.powi(i32::from(decimals)) * price
                        })
                }
                None => None,
            };
            let mut evidence = serde_json::to_value(&d)?;
            evidence["token"] = serde_json::json!(token.map(hex));
            evidence["usd_lost"] = serde_json::json!(usd);
            out.push(Alert {
                usd,
                id: alert_id(&[
                    AlertKind::LiquidityDrain.as_str(),
                    &chain.to_string(),
                    &hex(pool),
                    &d.from_block.to_string(),
                    &d.reserve.to_string(),
                ]),
                kind: AlertKind::LiquidityDrain,
                severity: if d.share_lost >= 0.9 {
                    Severity::Critical
                } else {
                    Severity::High
                },
                chain_id: chain,
                block_number: block,
                tx_hashes: txs,
                addresses: Vec::new(),
                pools: vec![hex(pool)],
                evidence,
                detector_version: DETECTOR_VERSION.into(),
                source_published_at: published,
                block_time: rows.time,
            });
        }
        Ok(out)
    }

    /// The anomaly size feature's causal state as the stretch begins: each (pool, token)'s
    /// previous input amounts, from the swaps before `from`.
    async fn seed_features(
        &self,
        chain: u64,
        from: u64,
        blocks: &BTreeMap<u64, BlockRows>,
    ) -> anyhow::Result<crate::anomaly::FeatureState> {
        let mut state = crate::anomaly::FeatureState::default();
        if self.anomaly.is_none() {
            return Ok(state);
        }
        let pairs: BTreeSet<(Address, Address)> = blocks
            .values()
            .flat_map(|b| b.swaps.iter().map(|s| (s.pool, s.token_in)))
            .collect();
        if pairs.is_empty() {
            return Ok(state);
        }
        let pools: Vec<String> = pairs.iter().map(|(p, _)| hex(*p)).collect();
        let tokens: Vec<String> = pairs.iter().map(|(_, t)| hex(*t)).collect();
        let rows = blocks::swap_inputs_before(
            &self.pool,
            chain as i64,
            from as i64,
            &pools,
            &tokens,
            crate::anomaly::HISTORY as i64,
        )
        .await?;
        for (pool, token, amounts) in rows {
            state.seed(chain, address(&pool), address(&token), amounts);
        }
        Ok(state)
    }

    /// The stress test as of each block of [from, to] whose oracle answers moved a price beyond
    /// the threshold from the chain's last oracle-triggered run (at most once per
    /// `--stress-interval` of block time; a run stored for a block is not repeated).
    async fn restress(&self, chain: u64, from: u64, to: u64) -> anyhow::Result<u64> {
        let oracle_blocks =
            blocks::oracle_blocks(&self.pool, chain as i64, from as i64, to as i64).await?;
        let mut runs = 0;
        for (block, time) in oracle_blocks {
            let last =
                chainfold_store::stress::last_oracle_run(&self.pool, chain as i64, block).await?;
            if last.as_ref().is_some_and(|l| l.0 == block) {
                continue;
            }
            if let (Some((_, _, Some(at))), Some(now)) = (&last, time) {
                let interval = chrono::Duration::from_std(self.config.stress_interval)
                    .unwrap_or_else(|_| chrono::Duration::zero());
                if now - *at < interval {
                    continue;
                }
            }
            let (_, prices, _) =
                crate::stress::live_positions(&self.pool, chain, Some(block)).await?;
            let moved = match &last {
                None => !prices.is_empty(),
                Some((_, before, _)) => prices.iter().any(|(symbol, p)| {
                    use bigdecimal::ToPrimitive as _;
                    // Prices are stored as decimal strings (numbers before migration 30).
                    let b = match &before[symbol] {
                        serde_json::Value::String(t) => t.parse::<f64>().ok(),
                        v => v.as_f64(),
                    };
                    let p = p.to_f64().unwrap_or(f64::NAN);
                    b.is_none_or(|b| {
                        b <= 0.0 || (p / b - 1.0).abs() >= self.config.stress_threshold
                    })
                }),
            };
            if !moved {
                continue;
            }
            let config = crate::stress::StressConfig {
                postgres: self.config.postgres.clone(),
                chain_id: chain,
                prices_dir: self.config.prices_dir.clone(),
                paths: 2000,
                horizon_hours: 24,
                seed: 1,
            };
            let run =
                crate::stress::run_as_of(&self.pool, &config, "oracle_move", Some(block)).await?;
            tracing::info!(
                chain,
                block,
                run = run.id,
                positions = run.positions,
                elapsed_ms = run.elapsed_ms,
                "stress recomputed"
            );
            runs += 1;
        }
        Ok(runs)
    }

    /// Utilisation forecasts of the lending reserves with new events, per hour of those events,
    /// on the reserve's sealed history up to the end of that hour. One alert per episode: at the
    /// first hour whose forecast reaches the bound after an hour whose forecast did not.
    async fn shortages(
        &self,
        chain: u64,
        ranges: &[(String, i32, i64, i64)],
        bound: &SealBound,
        out: &mut Evaluation,
    ) -> anyhow::Result<()> {
        use chainfold_store::liquidity::{recent, reserve_history_sealed};
        for (reserve, hours) in blocks::touched_reserves(&self.pool, chain as i64, ranges).await? {
            let rows = reserve_history_sealed(
                &self.pool,
                chain as i64,
                &reserve,
                bound.last_block,
                &bound.through,
            )
            .await?;
            let forecast = |hour: i64| {
                let upto: Vec<_> = rows
                    .iter()
                    .filter(|r| r.hours.floor() as i64 <= hour)
                    .cloned()
                    .collect();
                let last = upto.last().cloned()?;
                let window: Vec<(f64, f64, f64)> =
                    recent(&upto, |r| r.hours, self.config.shortage_window_hours)
                        .iter()
                        .map(|r| (r.hours, r.supply, r.debt))
                        .collect();
                chainfold_domain::pool::utilisation_shortage(
                    &window,
                    self.config.shortage_horizon_hours,
                    self.config.shortage_bound,
                    self.config.shortage_target,
                )
                .map(|s| (s, last))
            };
            for hour in hours {
                let id = alert_id(&[
                    AlertKind::LiquidityShortage.as_str(),
                    &chain.to_string(),
                    &reserve,
                    &hour.to_string(),
                ]);
                out.evaluated_ids.push(id.clone());
                let Some((shortage, last)) = forecast(hour) else {
                    continue;
                };
                if forecast(hour - 1).is_some() {
                    // The episode began earlier; its alert stands.
                    continue;
                }
                let symbol = last.symbol;
                out.alerts.push(Alert {
                    id,
                    kind: AlertKind::LiquidityShortage,
                    severity: if shortage.utilisation_forecast >= 1.0 { Severity::High } else { Severity::Medium },
                    chain_id: chain,
                    block_number: last.block_number.unwrap_or_default().max(0) as u64,
                    tx_hashes: Vec::new(),
                    addresses: Vec::new(),
                    pools: vec![reserve.clone()],
                    evidence: serde_json::json!({
                        "reserve": reserve, "symbol": symbol, "forecast": shortage,
                        "recommendation": {"action": "provision", "reserve": reserve, "symbol": symbol,
                                           "amount": shortage.provision,
                                           "reason": format!("supply {:.4} {symbol} to bring the {}h forecast utilisation from {:.1}% to {:.0}%",
                                               shortage.provision, shortage.horizon_hours,
                                               shortage.utilisation_forecast * 100.0, shortage.target * 100.0)},
                    }),
                    detector_version: DETECTOR_VERSION.into(),
                    // A forecast has no single source event.
                    source_published_at: None,
                    usd: None,
                    block_time: DateTime::from_timestamp((last.hours * 3600.0) as i64, 0),
                });
            }
        }
        Ok(())
    }

    /// ±2% depth forecasts of the AMM pools with new `Sync`s, per hour of those `Sync`s, on the
    /// pool's sealed history within the shortage window before the end of that hour; one alert
    /// per episode, as for reserves.
    async fn depth_shortages(
        &self,
        chain: u64,
        ranges: &[(String, i32, i64, i64)],
        bound: &SealBound,
        out: &mut Evaluation,
    ) -> anyhow::Result<()> {
        for (pool, hours) in blocks::touched_pools(&self.pool, chain as i64, ranges).await? {
            for hour in hours {
                let id = alert_id(&[
                    AlertKind::LiquidityShortage.as_str(),
                    &chain.to_string(),
                    &pool,
                    &hour.to_string(),
                ]);
                out.evaluated_ids.push(id.clone());
                let Some((shortage, last)) = self.depth_forecast(chain, &pool, hour, bound).await?
                else {
                    continue;
                };
                if self
                    .depth_forecast(chain, &pool, hour - 1, bound)
                    .await?
                    .is_some()
                {
                    // The episode began earlier; its alert stands.
                    continue;
                }
                let block = last.block_number.unwrap_or_default().max(0) as u64;
                let add0 = (last.reserve0 * shortage.add_share).round();
                let add1 = (last.reserve1 * shortage.add_share).round();
                let usd = match last.token0.parse::<Address>() {
                    Ok(t) => self
                        .token_usd(chain, t, block)
                        .await?
                        .map(|(decimals, price)| {
                            shortage.depth_forecast / 10f64.powi(i32::from(decimals)) * price
                        }),
                    Err(_) => None,
                };
                out.alerts.push(Alert {
                    id,
                    kind: AlertKind::LiquidityShortage,
                    severity: if shortage.depth_forecast <= 0.0 { Severity::High } else { Severity::Medium },
                    chain_id: chain,
                    block_number: block,
                    tx_hashes: Vec::new(),
                    addresses: Vec::new(),
                    pools: vec![pool.clone()],
                    evidence: serde_json::json!({
                        "pool": pool, "token0": last.token0, "token1": last.token1,
                        "depth_unit": "token0 base units within ±2% of the price",
                        "forecast": shortage, "forecast_depth_usd": usd,
                        "recommendation": {"action": "add_liquidity", "pool": pool,
                                           "amount0": format!("{add0:.0}"), "amount1": format!("{add1:.0}"),
                                           "reason": format!("add {:.1}% of the reserves (both tokens at the current ratio) to bring the {}h forecast depth from {:.0}% back to {:.0}% of its median",
                                               shortage.add_share * 100.0, shortage.horizon_hours,
                                               shortage.depth_forecast / shortage.depth_reference * 100.0,
                                               shortage.target * 100.0)},
                    }),
                    detector_version: DETECTOR_VERSION.into(),
                    source_published_at: None,
                    // The forecast's USD is evidence, not a loss to rank by.
                    usd: None,
                    block_time: DateTime::from_timestamp((last.hours * 3600.0) as i64, 0),
                });
            }
        }
        Ok(())
    }

    /// The depth forecast of `pool` as of the end of `hour`, with the last point it used.
    async fn depth_forecast(
        &self,
        chain: u64,
        pool: &str,
        hour: i64,
        bound: &SealBound,
    ) -> anyhow::Result<
        Option<(
            chainfold_domain::pool::DepthShortage,
            chainfold_store::liquidity::PoolPoint,
        )>,
    > {
        use chainfold_domain::pool::{depth_shortage, depth_token0};
        let rows = chainfold_store::liquidity::pool_history_sealed(
            &self.pool,
            chain as i64,
            pool,
            (hour + 1) as f64,
            self.config.shortage_window_hours,
            bound.last_block,
            &bound.through,
        )
        .await?;
        let Some(last) = rows.last().cloned() else {
            return Ok(None);
        };
        let history: Vec<(f64, f64)> = rows
            .iter()
            .map(|r| (r.hours, depth_token0(r.reserve0, 0.02)))
            .collect();
        Ok(depth_shortage(
            &history,
            self.config.shortage_horizon_hours,
            self.config.depth_bound,
            self.config.depth_target,
        )
        .map(|s| (s, last)))
    }

    /// A token's decimals (from the lending reserves) and USD price (its last oracle answer at
    /// or before `block`), where known.
    async fn token_usd(
        &self,
        chain: u64,
        token: Address,
        block: u64,
    ) -> anyhow::Result<Option<(u8, f64)>> {
        let row =
            chainfold_store::prices::token_at(&self.pool, chain as i64, &hex(token), block as i64)
                .await?;
        Ok(match row {
            (Some(decimals), Some(price)) => u8::try_from(decimals).ok().map(|d| (d, price)),
            _ => None,
        })
    }

    /// Redis `<prefix>alerts` after the commit (best effort: Postgres and Kafka hold them).
    async fn announce(&mut self, alerts: &[Alert]) {
        if alerts.is_empty() {
            return;
        }
        let mut pipe = redis::pipe();
        for a in alerts {
            if let Ok(payload) = serde_json::to_string(a) {
                pipe.publish(format!("{}alerts", self.config.redis.prefix), payload)
                    .ignore();
            }
        }
        if let Err(err) = pipe.query_async::<()>(&mut self.redis).await {
            tracing::warn!(%err, "could not publish alerts on Redis");
        }
    }

    /// Evaluates until a batch arrives empty after `idle` (tests); the first wait is at least
    /// 30 s (group join).
    pub async fn run_until_idle(&mut self, idle: Duration) -> anyhow::Result<RiskOutcome> {
        chainfold_platform::worker::run_until_idle(self, idle).await
    }

    /// Evaluates until `shutdown` resolves (the batch in hand commits first).
    pub async fn run_until_stopped(
        mut self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        chainfold_platform::worker::run_until_stopped(
            &mut self,
            Duration::from_millis(200),
            chainfold_platform::worker::SHUTDOWN_GRACE,
            shutdown,
        )
        .await
    }
}

impl chainfold_platform::worker::BatchWorker for RiskWorker {
    type Outcome = RiskOutcome;

    fn process_batch(
        &mut self,
        wait: Duration,
    ) -> impl std::future::Future<Output = anyhow::Result<RiskOutcome>> + Send {
        RiskWorker::process_batch(self, wait)
    }

    fn received(outcome: &RiskOutcome) -> u64 {
        outcome.received
    }

    fn add(total: &mut RiskOutcome, o: &RiskOutcome) {
        total.received += o.received;
        total.blocks += o.blocks;
        total.sandwiches += o.sandwiches;
        total.flash_loan_attacks += o.flash_loan_attacks;
        total.drains += o.drains;
        total.stress_runs += o.stress_runs;
        total.incidents += o.incidents;
        total.shortages += o.shortages;
        total.swaps_scored += o.swaps_scored;
        total.anomalies += o.anomalies;
    }

    async fn recover(&mut self, err: anyhow::Error, backoff: &mut Duration) -> anyhow::Result<()> {
        // Nothing of the batch committed: read it again once the service is back.
        self.member.retry_after(err, backoff, "risk batch").await
    }

    fn settling(&self) -> bool {
        self.member.has_pending_assignment()
    }
}

/// What a seal covers, to bound the histories read for it.
#[derive(Debug, Clone)]
struct SealBound {
    last_block: Option<i64>,
    through: Vec<(String, i32, i64)>,
}

fn decode_seal(message: &Received) -> Result<Seal, String> {
    let seal: Seal = serde_json::from_slice(&message.payload)
        .map_err(|e| format!("could not decode seal: {e}"))?;
    if seal.schema_version != chainfold_domain::SCHEMA_VERSION {
        return Err(format!(
            "unsupported schema version {} (this build reads version {})",
            seal.schema_version,
            chainfold_domain::SCHEMA_VERSION
        ));
    }
    Ok(seal)
}

/// Stores a chain's evaluation: block alerts of the evaluated blocks and shortage alerts of
/// the evaluated hours that it no longer holds (or holds with other content) go, the new ones
/// come in. Returns the alerts inserted.
async fn store(
    tx: &mut Transaction<'_, Postgres>,
    chain: u64,
    evaluation: &Evaluation,
) -> anyhow::Result<Vec<Alert>> {
    let ids: Vec<String> = evaluation.alerts.iter().map(|a| a.id.clone()).collect();
    alerts::delete_replaced(tx, &evaluation.alerts).await?;
    if let Some((from, to)) = evaluation.blocks {
        alerts::delete_unfound_in_blocks(
            tx,
            chain as i64,
            (from as i64, to as i64),
            &BLOCK_KINDS,
            &ids,
        )
        .await?;
    }
    if !evaluation.evaluated_ids.is_empty() {
        alerts::delete_unfound(tx, &evaluation.evaluated_ids, &ids).await?;
    }
    let mut new = Vec::new();
    for a in &evaluation.alerts {
        if alerts::insert(tx, a).await? {
            new.push(a.clone());
        }
    }
    Ok(new)
}

/// Correlates the new alerts with the stored ones within the window around their block times
/// and upserts the incidents they belong to.
async fn correlate(tx: &mut Transaction<'_, Postgres>, new: &[Alert]) -> anyhow::Result<u64> {
    const WINDOW_SECS: i64 = 3600;
    let times: Vec<i64> = new
        .iter()
        .filter_map(|a| {
            a.block_time
                .or(a.source_published_at)
                .map(|t| t.timestamp())
        })
        .collect();
    let (Some(from), Some(to)) = (times.iter().min(), times.iter().max()) else {
        return Ok(0);
    };
    let alerts = alerts::in_window(tx, from - 2 * WINDOW_SECS, to + 2 * WINDOW_SECS).await?;
    let new_ids: std::collections::HashSet<&str> = new.iter().map(|a| a.id.as_str()).collect();
    let mut written = 0;
    for incident in chainfold_domain::risk::correlate(&alerts, WINDOW_SECS) {
        if !incident
            .alert_ids
            .iter()
            .any(|id| new_ids.contains(id.as_str()))
        {
            continue;
        }
        alerts::upsert_incident(tx, &incident).await?;
        written += 1;
    }
    Ok(written)
}

/// A deterministic alert id: keccak256 of its identifying parts.
fn alert_id(parts: &[&str]) -> String {
    chainfold_domain::decision::DecisionRecord::id_of(parts)
}

/// Where the block detectors look: one block of a chain with its rows.
struct BlockAt<'a> {
    chain: u64,
    block: u64,
    rows: &'a BlockRows,
    published: Option<DateTime<Utc>>,
}

impl BlockAt<'_> {
    /// An alert of this block; its id is the kind, the chain and `key`.
    fn alert(
        &self,
        kind: AlertKind,
        severity: Severity,
        key: &[&str],
        who: (Vec<String>, Vec<String>, Vec<String>),
        evidence: serde_json::Value,
    ) -> Alert {
        let chain = self.chain.to_string();
        let mut parts = vec![kind.as_str(), chain.as_str()];
        parts.extend_from_slice(key);
        let (tx_hashes, addresses, pools) = who;
        Alert {
            id: alert_id(&parts),
            kind,
            severity,
            chain_id: self.chain,
            block_number: self.block,
            tx_hashes,
            addresses,
            pools,
            evidence,
            detector_version: DETECTOR_VERSION.into(),
            source_published_at: self.published,
            usd: None,
            block_time: self.rows.time,
        }
    }
}

/// Each transaction's price moves per pool in the block (from the reserves before it), and the
/// pools whose reserves the block changed; `reserves` advances to the block's end.
fn price_moves(
    rows: &BlockRows,
    reserves: &mut HashMap<Address, (f64, f64)>,
) -> (
    HashMap<B256, BTreeMap<Address, PriceMove>>,
    BTreeSet<Address>,
) {
    let mut moves: HashMap<B256, BTreeMap<Address, PriceMove>> = HashMap::new();
    let mut ended: BTreeSet<Address> = BTreeSet::new();
    let price = |r0: f64, r1: f64| if r0 > 0.0 { r1 / r0 } else { 0.0 };
    for (_, tx, pool, r0, r1) in &rows.syncs {
        let before = reserves.get(pool).copied();
        let entry = moves
            .entry(*tx)
            .or_default()
            .entry(*pool)
            .or_insert(PriceMove {
                pool: *pool,
                before: before.map_or(price(*r0, *r1), |(a, b)| price(a, b)),
                after: price(*r0, *r1),
            });
        entry.after = price(*r0, *r1);
        reserves.insert(*pool, (*r0, *r1));
        ended.insert(*pool);
    }
    (moves, ended)
}

/// `SANDWICH`: [`find_sandwiches`] on the block's swaps; `MEDIUM` with more than two victims.
fn sandwich_alerts(at: &BlockAt<'_>) -> anyhow::Result<Vec<Alert>> {
    let mut alerts = Vec::new();
    for s in find_sandwiches(&at.rows.swaps) {
        let mut txs = vec![hex(s.front_tx)];
        txs.extend(s.victim_txs.iter().map(|t| hex(*t)));
        txs.push(hex(s.back_tx));
        let severity = if s.victim_txs.len() > 2 {
            Severity::Medium
        } else {
            Severity::Low
        };
        alerts.push(at.alert(
            AlertKind::Sandwich,
            severity,
            &[&hex(s.front_tx), &hex(s.back_tx), &hex(s.pool)],
            (txs, vec![hex(s.sandwicher)], vec![hex(s.pool)]),
            serde_json::to_value(&s)?,
        ));
    }
    Ok(alerts)
}

/// `POOL_ANOMALY`: the block's swaps the anomaly model labels outliers, with the two features
/// that contributed most; `MEDIUM` below a score of −0.1. Also returns how many it scored.
fn anomaly_alerts(
    at: &BlockAt<'_>,
    model: &mut crate::anomaly::AnomalyModel,
    features: &mut crate::anomaly::FeatureState,
) -> anyhow::Result<(Vec<Alert>, u64)> {
    let scored_rows = features.block_features(at.chain, &at.rows.swaps);
    let inputs: Vec<[f32; 4]> = scored_rows.iter().map(|r| r.1).collect();
    let scored = model.predict(&inputs)?;
    let count = scored.len() as u64;
    let mut alerts = Vec::new();
    for ((index, row), (label, score)) in scored_rows.iter().zip(scored) {
        if label != -1 {
            continue;
        }
        let swap = &at.rows.swaps[*index];
        let top: Vec<serde_json::Value> = model
            .contributions(row)
            .into_iter()
            .take(2)
            .map(|(feature, value, z)| {
                serde_json::json!({"feature": feature, "value": value, "robust_z": z})
            })
            .collect();
        let severity = if score < -0.1 {
            Severity::Medium
        } else {
            Severity::Low
        };
        alerts.push(at.alert(
            AlertKind::PoolAnomaly,
            severity,
            &[
                &hex(swap.tx_hash),
                &hex(swap.pool),
                &format!("{:?}", swap.trace),
            ],
            (
                vec![hex(swap.tx_hash)],
                vec![hex(swap.sender), hex(swap.recipient)],
                vec![hex(swap.pool)],
            ),
            serde_json::json!({
                "model": model.version, "modelSha256": model.sha256, "score": score,
                "features": crate::anomaly::ANOMALY_FEATURES.iter().zip(row)
                    .map(|(n, v)| (n.to_string(), serde_json::json!(v)))
                    .collect::<serde_json::Map<_, _>>(),
                "top": top,
            }),
        ));
    }
    Ok((alerts, count))
}

/// `FLASH_LOAN_ATTACK`: [`flash_loan_attack`] on each of the block's flash loans with its
/// transaction's swaps and price moves; `CRITICAL` above a tenth of the loan in profit.
fn flash_loan_alerts(
    at: &BlockAt<'_>,
    rule: &FlashLoanRule,
    moves: &HashMap<B256, BTreeMap<Address, PriceMove>>,
) -> Vec<Alert> {
    let mut alerts = Vec::new();
    for loan in &at.rows.loans {
        let swaps: Vec<SwapLeg> = at
            .rows
            .swaps
            .iter()
            .filter(|s| s.tx_hash == loan.tx_hash)
            .cloned()
            .collect();
        let tx_moves: Vec<PriceMove> = moves
            .get(&loan.tx_hash)
            .map(|m| m.values().copied().collect())
            .unwrap_or_default();
        let Some(hit) = flash_loan_attack(rule, loan, &swaps, &tx_moves) else {
            continue;
        };
        let mut hit_pools: Vec<String> = tx_moves.iter().map(|m| hex(m.pool)).collect();
        hit_pools.sort();
        let severity = if hit.profit_share > 0.1 {
            Severity::Critical
        } else {
            Severity::High
        };
        alerts.push(at.alert(
            AlertKind::FlashLoanAttack,
            severity,
            &[&hex(loan.tx_hash)],
            (
                vec![hex(loan.tx_hash)],
                vec![hex(loan.initiator)],
                hit_pools,
            ),
            serde_json::json!({
                "loan": hit, "swaps": swaps.len(),
                "priceMoves": tx_moves.iter().map(|m| serde_json::json!({
                    "pool": hex(m.pool), "before": m.before, "after": m.after,
                    "relative": m.relative()})).collect::<Vec<_>>(),
            }),
        ));
    }
    alerts
}
