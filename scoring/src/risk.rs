//! `chainfold risk`: the attack detectors of `domain::risk` on the live event stream.
//!
//! A consumer group on `chainfold.amm.v1` (swaps, `Sync`s) and `chainfold.lending.v1` (flash
//! loans) buffers events per (chain, block) and evaluates a block once it is complete: when every
//! partition that delivered events of the chain in the batch has moved past it (a pool's events
//! share a partition, in order), or when the stream is idle. Per block: sandwiches on each pool;
//! for each flash loan, its transaction's swaps and pool price moves (from the pools' reserves
//! before and after the transaction) against Forta's rule; reserve drains within a window of
//! blocks. Alerts (kind, severity, chain, block, transactions, addresses, pools, evidence,
//! detector version) go to `risk_alert` (idempotent by a deterministic id), then
//! `chainfold.risk.v1` and Redis `<prefix>alerts`; Kafka offsets of evaluated events are
//! committed last, so a crash re-detects and stores nothing twice.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use alloy_primitives::{Address, B256};
use anyhow::Context as _;
use chainfold_domain::risk::{
    drains, find_sandwiches, flash_loan_attack, FlashLoanRule, Loan, PriceMove, ReserveState,
    SwapLeg, DETECTOR_VERSION,
};
use chainfold_domain::{topics, DefiEvent, Envelope};
use chainfold_platform::config::{KafkaArgs, PostgresArgs, RedisArgs};
use chainfold_platform::kafka;
use chrono::{DateTime, Utc};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message as _;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use sqlx::PgPool;

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
    /// Most messages per batch.
    #[arg(long = "batch-size", default_value_t = 5000)]
    pub batch_size: usize,
    /// Oracle move (relative to the prices of a chain's last stress run) that recomputes its
    /// stress test and VaR …
    #[arg(long = "stress-threshold", default_value_t = 0.02)]
    pub stress_threshold: f64,
    /// … at most once per this interval.
    #[arg(long = "stress-interval", default_value = "60s", value_parser = chainfold_platform::config::parse_duration)]
    pub stress_interval: Duration,
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
            batch_size: 5000,
            anomaly_model_dir: None,
            no_anomaly: false,
            shortage_horizon_hours: 6.0,
            shortage_bound: 0.9,
            shortage_target: 0.8,
            shortage_window_hours: 24.0,
            depth_bound: 0.5,
            depth_target: 0.8,
            stress_threshold: 0.02,
            stress_interval: Duration::from_secs(60),
            prices_dir: "data/aave-v2-eth-bhemen/usd_prices".into(),
        }
    }
}

/// One alert as stored and published.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    pub id: String,
    pub kind: &'static str,
    pub severity: &'static str,
    pub chain_id: u64,
    pub block_number: u64,
    pub tx_hashes: Vec<String>,
    pub addresses: Vec<String>,
    pub pools: Vec<String>,
    pub evidence: serde_json::Value,
    pub detector_version: &'static str,
    pub source_published_at: Option<DateTime<Utc>>,
    /// What the alert is worth in USD where it can be valued (a drain's lost reserve).
    pub usd: Option<f64>,
}

/// What a batch did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RiskOutcome {
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

#[derive(Debug, Default)]
struct BlockEvents {
    swaps: Vec<SwapLeg>,
    /// (log index, tx, pool, reserve0, reserve1)
    syncs: Vec<(u32, B256, Address, f64, f64)>,
    loans: Vec<Loan>,
    published_at: Option<DateTime<Utc>>,
    /// (topic, partition, offset) of the block's messages.
    offsets: Vec<(String, i32, i64)>,
}

/// What a block's evaluation saw, kept for a while: an event that arrives after its block was
/// evaluated (another partition lagging, e.g. the lending partition's flash loan behind the
/// AMM partitions' swaps) is evaluated together with it.
#[derive(Debug, Default)]
struct Evaluated {
    swaps: Vec<SwapLeg>,
    loans: Vec<Loan>,
    moves: HashMap<B256, BTreeMap<Address, PriceMove>>,
}

/// Blocks per chain kept in [`Evaluated`] form.
const RETAINED_BLOCKS: u64 = 1024;

/// A running risk worker.
pub struct RiskWorker {
    consumer: StreamConsumer,
    producer: FutureProducer,
    pool: PgPool,
    redis: redis::aio::ConnectionManager,
    config: RiskConfig,
    risk_topic: String,
    pending: BTreeMap<(u64, u64), BlockEvents>,
    /// Offsets received and done (no block to wait for, or evaluated), not yet committed.
    done: Vec<(String, i32, i64)>,
    reserves: HashMap<(u64, Address), (f64, f64)>,
    history: HashMap<(u64, Address), VecDeque<ReserveState>>,
    evaluated: BTreeMap<(u64, u64), Evaluated>,
    /// The anomaly model and its features' causal state, when configured.
    anomaly: Option<(crate::anomaly::AnomalyModel, crate::anomaly::FeatureState)>,
    /// Each pool's (token0, token1), from its `Sync`s.
    pool_tokens: HashMap<(u64, Address), (Address, Address)>,
    /// Lending reserves with new flows since their last shortage check.
    reserves_touched: std::collections::BTreeSet<(u64, String)>,
    /// AMM pools with new `Sync`s since their last depth check.
    pools_touched: std::collections::BTreeSet<(u64, String)>,
    /// Swaps the anomaly model scored since the last batch outcome.
    swaps_scored: u64,
    /// Chains with oracle rounds since their last stress check, and when each last ran.
    oracle_chains: std::collections::BTreeSet<u64>,
    last_stress: HashMap<u64, Instant>,
}

impl std::fmt::Debug for RiskWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RiskWorker")
            .field("group", &self.config.group)
            .finish()
    }
}

fn f64_of(a: &chainfold_domain::TokenAmount) -> f64 {
    a.0.to_string().parse().unwrap_or(0.0)
}

fn hex<T: std::fmt::LowerHex>(v: T) -> String {
    format!("{v:#x}")
}

impl RiskWorker {
    pub async fn build(config: RiskConfig) -> anyhow::Result<RiskWorker> {
        let pool = chainfold_platform::postgres::connect_and_migrate(&config.postgres).await?;
        let redis = chainfold_platform::redis_cache::connect(&config.redis).await?;
        let topics = config.kafka.topics();
        let risk_topic = format!("{}{}", config.kafka.topic_prefix, topics::RISK);
        let mut all = topics.all();
        all.push(risk_topic.clone());
        kafka::ensure_topics(&config.kafka, &all).await?;
        let consumer: StreamConsumer = kafka::consumer_config(&config.kafka, &config.group)
            .create()
            .context("could not create Kafka consumer")?;
        consumer
            .subscribe(&[
                topics.amm.as_str(),
                topics.lending.as_str(),
                topics.oracle.as_str(),
            ])
            .context("could not subscribe to the AMM, lending and oracle topics")?;
        let producer = kafka::producer(&config.kafka)?;
        let anomaly = match (&config.anomaly_model_dir, config.no_anomaly) {
            (Some(dir), false) => Some((
                crate::anomaly::AnomalyModel::load(dir)?,
                crate::anomaly::FeatureState::default(),
            )),
            _ => None,
        };
        tracing::info!(group = %config.group, anomaly = anomaly.is_some(), "risk worker subscribed");
        Ok(RiskWorker {
            consumer,
            producer,
            pool,
            redis,
            config,
            risk_topic,
            pending: BTreeMap::new(),
            done: Vec::new(),
            reserves: HashMap::new(),
            history: HashMap::new(),
            oracle_chains: Default::default(),
            last_stress: HashMap::new(),
            evaluated: BTreeMap::new(),
            reserves_touched: Default::default(),
            pools_touched: Default::default(),
            swaps_scored: 0,
            pool_tokens: HashMap::new(),
            anomaly,
        })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Receives up to `batch_size` messages (waiting at most `idle` for the first, 50 ms for
    /// the next), evaluates the blocks that are complete (all of them when the stream went
    /// idle), stores and publishes the alerts, and commits.
    pub async fn process_batch(&mut self, idle: Duration) -> anyhow::Result<RiskOutcome> {
        let mut outcome = RiskOutcome::default();
        let deadline = Instant::now() + idle;
        let mut went_idle = false;
        // Per (chain, topic, partition): the highest block delivered in this batch.
        let mut frontier: HashMap<(u64, String, i32), u64> = HashMap::new();
        while (outcome.received as usize) < self.config.batch_size {
            let wait = if outcome.received == 0 {
                deadline.saturating_duration_since(Instant::now())
            } else {
                Duration::from_millis(50)
            };
            let message = match tokio::time::timeout(wait, self.consumer.recv()).await {
                Ok(Ok(m)) => m,
                Ok(Err(err)) => return Err(err).context("could not read from Kafka"),
                Err(_) => {
                    went_idle = true;
                    break;
                }
            };
            outcome.received += 1;
            let origin = (
                message.topic().to_owned(),
                message.partition(),
                message.offset(),
            );
            let published = message
                .timestamp()
                .to_millis()
                .and_then(DateTime::from_timestamp_millis);
            let env = message
                .payload()
                .and_then(|p| serde_json::from_slice::<Envelope>(p).ok());
            // Lending reserves whose utilisation the batch changed.
            if let Some(e) = env.as_ref().filter(|e| !e.retracted) {
                match &e.event {
                    DefiEvent::Deposit(f)
                    | DefiEvent::Borrow(f)
                    | DefiEvent::Repay(f)
                    | DefiEvent::Redeem(f) => {
                        self.reserves_touched
                            .insert((e.chain_id, hex(f.reserve.address)));
                    }
                    DefiEvent::Liquidation(l) => {
                        self.reserves_touched
                            .insert((e.chain_id, hex(l.debt.address)));
                    }
                    DefiEvent::PoolSync(s) => {
                        self.pools_touched.insert((e.chain_id, hex(s.pool)));
                    }
                    _ => {}
                }
            }
            if let Some(DefiEvent::OracleUpdate(_)) = env.as_ref().map(|e| &e.event) {
                if let Some(e) = &env {
                    self.oracle_chains.insert(e.chain_id);
                }
                self.done.push(origin);
                continue;
            }
            let Some((env, block)) = env
                .filter(|e| !e.retracted)
                .and_then(|e| e.block.map(|b| (e, b.number)))
            else {
                self.done.push(origin);
                continue;
            };
            let key = (env.chain_id, origin.0.clone(), origin.1);
            let front = frontier.entry(key).or_insert(block);
            *front = (*front).max(block);
            let events = self.pending.entry((env.chain_id, block)).or_default();
            events.published_at = events.published_at.max(published);
            events.offsets.push(origin);
            let Some(tx_hash) = env.tx_hash else { continue };
            match &env.event {
                DefiEvent::Swap(s) if !s.reverted => events.swaps.push(SwapLeg {
                    block,
                    tx_hash,
                    tx_position: s.tx_position,
                    trace: if s.trace_address.is_empty() {
                        vec![env.log_index.unwrap_or_default()]
                    } else {
                        s.trace_address.clone()
                    },
                    pool: s.pool,
                    sender: s.sender,
                    recipient: s.recipient,
                    token_in: s.token_in,
                    amount_in: f64_of(&s.amount_in),
                    token_out: s.token_out,
                    amount_out: f64_of(&s.amount_out),
                }),
                DefiEvent::PoolSync(s) => {
                    self.pool_tokens
                        .insert((env.chain_id, s.pool), (s.token0, s.token1));
                    events.syncs.push((
                        env.log_index.unwrap_or_default(),
                        tx_hash,
                        s.pool,
                        f64_of(&s.reserve0),
                        f64_of(&s.reserve1),
                    ));
                }
                DefiEvent::FlashLoan(f) => events.loans.push(Loan {
                    tx_hash,
                    initiator: f.initiator,
                    asset: f.asset.address,
                    amount: f64_of(&f.amount),
                    premium: f64_of(&f.premium),
                }),
                _ => {}
            }
        }
        // Complete blocks: below every delivering partition's frontier for their chain.
        let mut limit: HashMap<u64, u64> = HashMap::new();
        for ((chain, _, _), block) in &frontier {
            let l = limit.entry(*chain).or_insert(*block);
            *l = (*l).min(*block);
        }
        let ready: Vec<(u64, u64)> = self
            .pending
            .keys()
            .filter(|(chain, block)| went_idle || limit.get(chain).is_some_and(|l| block < l))
            .copied()
            .collect();
        let mut alerts = Vec::new();
        for key in ready {
            let Some(events) = self.pending.remove(&key) else {
                continue;
            };
            outcome.blocks += 1;
            alerts.extend(self.evaluate(key.0, key.1, &events).await?);
            self.done.extend(events.offsets);
        }
        alerts.extend(self.shortages().await?);
        alerts.extend(self.depth_shortages().await?);
        outcome.swaps_scored = std::mem::take(&mut self.swaps_scored);
        let stored = self.store(&alerts).await?;
        for a in &stored {
            match a.kind {
                "SANDWICH" => outcome.sandwiches += 1,
                "FLASH_LOAN_ATTACK" => outcome.flash_loan_attacks += 1,
                "LIQUIDITY_SHORTAGE" => outcome.shortages += 1,
                "POOL_ANOMALY" => outcome.anomalies += 1,
                _ => outcome.drains += 1,
            }
        }
        self.publish(&stored).await?;
        outcome.incidents = self.correlate(&stored).await?;
        outcome.stress_runs = self.restress().await?;
        self.commit()?;
        Ok(outcome)
    }

    /// Forecasts the utilisation of each touched lending reserve (supply and debt on their
    /// trends over the window, from the `lending_event` read model) and raises a
    /// `LIQUIDITY_SHORTAGE` alert with a provisioning recommendation when it reaches the bound;
    /// at most one alert per reserve and hour of its latest event.
    async fn shortages(&mut self) -> anyhow::Result<Vec<Alert>> {
        use chainfold_platform::liquidity::{recent, reserve_history};
        let mut alerts = Vec::new();
        for (chain, reserve) in std::mem::take(&mut self.reserves_touched) {
            let rows = reserve_history(&self.pool, chain as i64, &reserve).await?;
            let Some(last) = rows.last().cloned() else {
                continue;
            };
            let latest = last.hours;
            let window: Vec<(f64, f64, f64)> =
                recent(&rows, |r| r.hours, self.config.shortage_window_hours)
                    .iter()
                    .map(|r| (r.hours, r.supply, r.debt))
                    .collect();
            let Some(shortage) = chainfold_domain::pool::utilisation_shortage(
                &window,
                self.config.shortage_horizon_hours,
                self.config.shortage_bound,
                self.config.shortage_target,
            ) else {
                continue;
            };
            let (symbol, block) = (last.symbol, last.block_number);
            let hour = latest.floor() as i64;
            alerts.push(Alert {
                id: alert_id(&["LIQUIDITY_SHORTAGE", &chain.to_string(), &reserve, &hour.to_string()]),
                kind: "LIQUIDITY_SHORTAGE",
                severity: if shortage.utilisation_forecast >= 1.0 { "HIGH" } else { "MEDIUM" },
                chain_id: chain,
                block_number: block.unwrap_or_default().max(0) as u64,
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
                detector_version: DETECTOR_VERSION,
                // A forecast has no single source event.
                source_published_at: None,
                usd: None,
            });
        }
        Ok(alerts)
    }

    /// Forecasts the ±2% depth of each AMM pool with new `Sync`s (its reserves' history in
    /// `pool_sync`, one point per instant, over the shortage window) and raises a
    /// `LIQUIDITY_SHORTAGE` alert with an add-liquidity recommendation when the forecast falls
    /// below the depth bound; at most one alert per pool and hour of its latest `Sync`.
    async fn depth_shortages(&mut self) -> anyhow::Result<Vec<Alert>> {
        use chainfold_domain::pool::{depth_shortage, depth_token0};
        use chainfold_platform::liquidity::pool_history;
        let mut alerts = Vec::new();
        for (chain, pool) in std::mem::take(&mut self.pools_touched) {
            let rows = pool_history(
                &self.pool,
                chain as i64,
                &pool,
                self.config.shortage_window_hours,
            )
            .await?;
            let Some(last) = rows.last().cloned() else {
                continue;
            };
            let history: Vec<(f64, f64)> = rows
                .iter()
                .map(|r| (r.hours, depth_token0(r.reserve0, 0.02)))
                .collect();
            let Some(shortage) = depth_shortage(
                &history,
                self.config.shortage_horizon_hours,
                self.config.depth_bound,
                self.config.depth_target,
            ) else {
                continue;
            };
            let (r0, r1, token0, token1, block) = (
                last.reserve0,
                last.reserve1,
                last.token0,
                last.token1,
                last.block_number,
            );
            let add0 = (r0 * shortage.add_share).round();
            let add1 = (r1 * shortage.add_share).round();
            let usd = match token0.parse::<Address>() {
                Ok(t) => self.token_usd(chain, t).await?.map(|(decimals, price)| {
                    shortage.depth_forecast / 10f64.powi(i32::from(decimals)) * price
                }),
                Err(_) => None,
            };
            let hour = last.hours.floor() as i64;
            alerts.push(Alert {
                id: alert_id(&["LIQUIDITY_SHORTAGE", &chain.to_string(), &pool, &hour.to_string()]),
                kind: "LIQUIDITY_SHORTAGE",
                severity: if shortage.depth_forecast <= 0.0 { "HIGH" } else { "MEDIUM" },
                chain_id: chain,
                block_number: block.unwrap_or_default().max(0) as u64,
                tx_hashes: Vec::new(),
                addresses: Vec::new(),
                pools: vec![pool.clone()],
                evidence: serde_json::json!({
                    "pool": pool, "token0": token0, "token1": token1,
                    "depth_unit": "token0 base units within ±2% of the price",
                    "forecast": shortage, "forecast_depth_usd": usd,
                    "recommendation": {"action": "add_liquidity", "pool": pool,
                                       "amount0": format!("{add0:.0}"), "amount1": format!("{add1:.0}"),
                                       "reason": format!("add {:.1}% of the reserves (both tokens at the current ratio) to bring the {}h forecast depth from {:.0}% back to {:.0}% of its median",
                                           shortage.add_share * 100.0, shortage.horizon_hours,
                                           shortage.depth_forecast / shortage.depth_reference * 100.0,
                                           shortage.target * 100.0)},
                }),
                detector_version: DETECTOR_VERSION,
                source_published_at: None,
                // The forecast's USD is evidence, not a loss to rank by.
                usd: None,
            });
        }
        Ok(alerts)
    }

    /// Correlates the new alerts with the stored ones within the window around them and
    /// upserts the incidents they belong to.
    async fn correlate(&self, new: &[Alert]) -> anyhow::Result<u64> {
        const WINDOW_SECS: i64 = 3600;
        let times: Vec<i64> = new
            .iter()
            .filter_map(|a| a.source_published_at.map(|t| t.timestamp()))
            .collect();
        let (Some(from), Some(to)) = (times.iter().min(), times.iter().max()) else {
            return Ok(0);
        };
        type Row = (String, String, String, i64, i64, Vec<String>, Vec<String>);
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT id, kind, severity, chain_id,
                    extract(epoch FROM coalesce(source_published_at, detected_at))::int8,
                    addresses, tx_hashes
             FROM risk_alert
             WHERE coalesce(source_published_at, detected_at)
                   BETWEEN to_timestamp($1) AND to_timestamp($2)
             ORDER BY coalesce(source_published_at, detected_at), seq",
        )
        .bind((from - 2 * WINDOW_SECS) as f64)
        .bind((to + 2 * WINDOW_SECS) as f64)
        .fetch_all(&self.pool)
        .await?;
        let alerts: Vec<chainfold_domain::risk::AlertRef> = rows
            .into_iter()
            .map(|(id, kind, severity, chain, at, addresses, tx_hashes)| {
                chainfold_domain::risk::AlertRef {
                    id,
                    kind,
                    severity,
                    chain_id: chain as u64,
                    at,
                    addresses,
                    tx_hashes,
                }
            })
            .collect();
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
            let chains: Vec<i64> = incident.chain_ids.iter().map(|c| *c as i64).collect();
            // Incidents this one absorbed (their earliest alert is now a member) go.
            sqlx::query("DELETE FROM risk_incident WHERE id = ANY($1) AND id <> $2")
                .bind(&incident.alert_ids)
                .bind(&incident.id)
                .execute(&self.pool)
                .await?;
            sqlx::query(
                "INSERT INTO risk_incident (id, alert_ids, chain_ids, stages, severity, first_at, last_at)
                 VALUES ($1, $2, $3, $4, $5, to_timestamp($6), to_timestamp($7))
                 ON CONFLICT (id) DO UPDATE SET alert_ids = EXCLUDED.alert_ids,
                     chain_ids = EXCLUDED.chain_ids, stages = EXCLUDED.stages,
                     severity = EXCLUDED.severity, first_at = EXCLUDED.first_at,
                     last_at = EXCLUDED.last_at, updated_at = now()",
            )
            .bind(&incident.id)
            .bind(&incident.alert_ids)
            .bind(&chains)
            .bind(&incident.stages)
            .bind(&incident.severity)
            .bind(incident.first_at as f64)
            .bind(incident.last_at as f64)
            .execute(&self.pool)
            .await?;
            written += 1;
        }
        Ok(written)
    }

    /// Recomputes the stress test of each chain that had oracle rounds, when a price moved
    /// beyond the threshold from the prices of its last run (or it has none) and the interval
    /// has passed. Runs on the read models as the projector has them.
    async fn restress(&mut self) -> anyhow::Result<u64> {
        let mut runs = 0;
        for chain in std::mem::take(&mut self.oracle_chains) {
            if self
                .last_stress
                .get(&chain)
                .is_some_and(|t| t.elapsed() < self.config.stress_interval)
            {
                self.oracle_chains.insert(chain);
                continue;
            }
            let last: Option<serde_json::Value> = sqlx::query_scalar(
                "SELECT prices FROM stress_run WHERE chain_id = $1 ORDER BY id DESC LIMIT 1",
            )
            .bind(chain as i64)
            .fetch_optional(&self.pool)
            .await?;
            let (_, now, _) = crate::stress::live_positions(&self.pool, chain).await?;
            let moved = match &last {
                None => true,
                Some(before) => now.iter().any(|(symbol, p)| {
                    before[symbol].as_f64().is_none_or(|b| {
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
            let run = crate::stress::run(&self.pool, &config, "oracle_move").await?;
            tracing::info!(
                chain,
                run = run.id,
                positions = run.positions,
                elapsed_ms = run.elapsed_ms,
                "stress recomputed"
            );
            self.last_stress.insert(chain, Instant::now());
            runs += 1;
        }
        Ok(runs)
    }

    /// Commits, per partition, up to the first offset still waiting in an unevaluated block.
    fn commit(&mut self) -> anyhow::Result<()> {
        let mut waiting: HashMap<(String, i32), i64> = HashMap::new();
        for events in self.pending.values() {
            for (t, p, o) in &events.offsets {
                let w = waiting.entry((t.clone(), *p)).or_insert(*o);
                *w = (*w).min(*o);
            }
        }
        let mut next: BTreeMap<(String, i32), i64> = BTreeMap::new();
        for (t, p, o) in self.done.drain(..) {
            let limit = waiting.get(&(t.clone(), p)).copied();
            let candidate = match limit {
                Some(w) if o + 1 > w => w,
                _ => o + 1,
            };
            let n = next.entry((t, p)).or_insert(candidate);
            *n = (*n).max(candidate);
        }
        if next.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for ((t, p), o) in &next {
            tpl.add_partition_offset(t, *p, Offset::Offset(*o))
                .context("commit list")?;
        }
        self.consumer
            .commit(&tpl, CommitMode::Sync)
            .context("could not commit Kafka offsets")
    }

    /// The reserves of `pool` before (block, log index), from memory or the read model.
    async fn reserves_before(
        &mut self,
        chain: u64,
        pool: Address,
        block: u64,
        log_index: u32,
    ) -> anyhow::Result<Option<(f64, f64)>> {
        if let Some(r) = self.reserves.get(&(chain, pool)) {
            return Ok(Some(*r));
        }
        let row: Option<(f64, f64)> = sqlx::query_as(
            "SELECT reserve0::float8, reserve1::float8 FROM pool_sync
             WHERE chain_id = $1 AND pool = $2 AND (block_number, log_index) < ($3, $4)
             ORDER BY block_number DESC, log_index DESC LIMIT 1",
        )
        .bind(chain as i64)
        .bind(hex(pool))
        .bind(block as i64)
        .bind(log_index as i32)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row)
    }

    async fn evaluate(
        &mut self,
        chain: u64,
        block: u64,
        events: &BlockEvents,
    ) -> anyhow::Result<Vec<Alert>> {
        let mut alerts = Vec::new();
        let published = events.published_at;
        // Price moves per transaction and the pools' end-of-block reserves.
        let mut syncs = events.syncs.clone();
        syncs.sort_by_key(|s| s.0);
        let mut moves: HashMap<B256, BTreeMap<Address, PriceMove>> = HashMap::new();
        let mut end_state: BTreeMap<Address, (f64, f64)> = BTreeMap::new();
        for (log_index, tx, pool, r0, r1) in &syncs {
            let before = self
                .reserves_before(chain, *pool, block, *log_index)
                .await?;
            self.history.entry((chain, *pool)).or_insert_with(|| {
                before
                    .map(|(b0, b1)| ReserveState {
                        block: block.saturating_sub(1),
                        reserve0: b0,
                        reserve1: b1,
                    })
                    .into_iter()
                    .collect()
            });
            let price = |r0: f64, r1: f64| if r0 > 0.0 { r1 / r0 } else { 0.0 };
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
            self.reserves.insert((chain, *pool), (*r0, *r1));
            end_state.insert(*pool, (*r0, *r1));
        }
        // Merge with what an earlier evaluation of this block saw (late events).
        let retained = self.evaluated.remove(&(chain, block)).unwrap_or_default();
        let mut all = Evaluated {
            swaps: retained.swaps,
            loans: retained.loans,
            moves: retained.moves,
        };
        all.swaps.extend(events.swaps.iter().cloned());
        all.loans.extend(events.loans.iter().copied());
        for (tx, pools) in moves {
            let entry = all.moves.entry(tx).or_default();
            for (pool, m) in pools {
                entry.entry(pool).or_insert(m);
            }
        }
        let moves = &all.moves;
        // Sandwiches.
        for s in find_sandwiches(&all.swaps) {
            let mut txs = vec![hex(s.front_tx)];
            txs.extend(s.victim_txs.iter().map(|t| hex(*t)));
            txs.push(hex(s.back_tx));
            alerts.push(Alert {
                id: alert_id(&[
                    "SANDWICH",
                    &chain.to_string(),
                    &hex(s.front_tx),
                    &hex(s.back_tx),
                    &hex(s.pool),
                ]),
                kind: "SANDWICH",
                severity: if s.victim_txs.len() > 2 {
                    "MEDIUM"
                } else {
                    "LOW"
                },
                chain_id: chain,
                block_number: block,
                tx_hashes: txs,
                addresses: vec![hex(s.sandwicher)],
                pools: vec![hex(s.pool)],
                evidence: serde_json::to_value(&s)?,
                detector_version: DETECTOR_VERSION,
                source_published_at: published,
                usd: None,
            });
        }
        // Anomaly scores of the block's new swaps, in one call.
        if let Some((model, state)) = self.anomaly.as_mut() {
            let rows = state.block_features(chain, &events.swaps);
            let inputs: Vec<[f32; 4]> = rows.iter().map(|r| r.1).collect();
            let scored = model.predict(&inputs)?;
            self.swaps_scored += scored.len() as u64;
            for ((index, row), (label, score)) in rows.iter().zip(scored) {
                if label != -1 {
                    continue;
                }
                let swap = &events.swaps[*index];
                let top: Vec<serde_json::Value> = model
                    .contributions(row)
                    .into_iter()
                    .take(2)
                    .map(|(feature, value, z)| {
                        serde_json::json!({"feature": feature, "value": value, "robust_z": z})
                    })
                    .collect();
                alerts.push(Alert {
                    id: alert_id(&[
                        "POOL_ANOMALY",
                        &chain.to_string(),
                        &hex(swap.tx_hash),
                        &hex(swap.pool),
                        &format!("{:?}", swap.trace),
                    ]),
                    kind: "POOL_ANOMALY",
                    severity: if score < -0.1 { "MEDIUM" } else { "LOW" },
                    chain_id: chain,
                    block_number: block,
                    tx_hashes: vec![hex(swap.tx_hash)],
                    addresses: vec![hex(swap.sender), hex(swap.recipient)],
                    pools: vec![hex(swap.pool)],
                    evidence: serde_json::json!({
                        "model": model.version, "modelSha256": model.sha256, "score": score,
                        "features": crate::anomaly::ANOMALY_FEATURES.iter().zip(row)
                            .map(|(n, v)| (n.to_string(), serde_json::json!(v)))
                            .collect::<serde_json::Map<_, _>>(),
                        "top": top,
                    }),
                    detector_version: DETECTOR_VERSION,
                    source_published_at: published,
                    usd: None,
                });
            }
        }
        // Flash-loan attacks.
        let rule = FlashLoanRule {
            min_price_move: self.config.flash_min_price_move,
            min_profit_share: self.config.flash_min_profit_share,
        };
        for loan in &all.loans {
            let swaps: Vec<SwapLeg> = all
                .swaps
                .iter()
                .filter(|s| s.tx_hash == loan.tx_hash)
                .cloned()
                .collect();
            let tx_moves: Vec<PriceMove> = moves
                .get(&loan.tx_hash)
                .map(|m| m.values().copied().collect())
                .unwrap_or_default();
            if let Some(hit) = flash_loan_attack(&rule, loan, &swaps, &tx_moves) {
                let mut pools: Vec<String> = tx_moves.iter().map(|m| hex(m.pool)).collect();
                pools.sort();
                alerts.push(Alert {
                    id: alert_id(&["FLASH_LOAN_ATTACK", &chain.to_string(), &hex(loan.tx_hash)]),
                    kind: "FLASH_LOAN_ATTACK",
                    severity: if hit.profit_share > 0.1 {
                        "CRITICAL"
                    } else {
                        "HIGH"
                    },
                    chain_id: chain,
                    block_number: block,
                    tx_hashes: vec![hex(loan.tx_hash)],
                    addresses: vec![hex(loan.initiator)],
                    pools,
                    evidence: serde_json::json!({
                        "loan": hit, "swaps": swaps.len(),
                        "priceMoves": tx_moves.iter().map(|m| serde_json::json!({
                            "pool": hex(m.pool), "before": m.before, "after": m.after,
                            "relative": m.relative()})).collect::<Vec<_>>(),
                    }),
                    detector_version: DETECTOR_VERSION,
                    source_published_at: published,
                    usd: None,
                });
            }
        }
        // Drains.
        for (pool, (r0, r1)) in end_state {
            let window = self.config.drain_window;
            let Some(history) = self.history.get_mut(&(chain, pool)) else {
                continue;
            };
            history.push_back(ReserveState {
                block,
                reserve0: r0,
                reserve1: r1,
            });
            while history.front().is_some_and(|s| s.block + window < block) {
                history.pop_front();
            }
            let states: Vec<ReserveState> = history.iter().copied().collect();
            for d in drains(pool, &states, window, self.config.drain_share)
                .into_iter()
                .filter(|d| d.to_block == block)
            {
                let txs: Vec<String> = syncs
                    .iter()
                    .filter(|s| s.2 == pool)
                    .map(|s| hex(s.1))
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect();
                let token = self.pool_tokens.get(&(chain, pool)).map(|t| {
                    if d.reserve == 0 {
                        t.0
                    } else {
                        t.1
                    }
                });
                let usd = match token {
                    Some(token) => self
                        .token_usd(chain, token)
                        .await?
                        .map(|(decimals, price)| {
                            (d.before - d.after) / 10f64.powi(i32::from(decimals)) * price
                        }),
                    None => None,
                };
                let mut evidence = serde_json::to_value(&d)?;
                evidence["token"] = serde_json::json!(token.map(hex));
                evidence["usd_lost"] = serde_json::json!(usd);
                alerts.push(Alert {
                    usd,
                    id: alert_id(&[
                        "LIQUIDITY_DRAIN",
                        &chain.to_string(),
                        &hex(pool),
                        &d.from_block.to_string(),
                        &d.reserve.to_string(),
                    ]),
                    kind: "LIQUIDITY_DRAIN",
                    severity: if d.share_lost >= 0.9 {
                        "CRITICAL"
                    } else {
                        "HIGH"
                    },
                    chain_id: chain,
                    block_number: block,
                    tx_hashes: txs,
                    addresses: Vec::new(),
                    pools: vec![hex(pool)],
                    evidence,
                    detector_version: DETECTOR_VERSION,
                    source_published_at: published,
                });
            }
        }
        self.evaluated.insert((chain, block), all);
        let keep_from = block.saturating_sub(RETAINED_BLOCKS);
        self.evaluated
            .retain(|(c, b), _| *c != chain || *b >= keep_from);
        Ok(alerts)
    }

    /// A token's decimals (from the lending reserves) and USD price (oracle), where known.
    async fn token_usd(&self, chain: u64, token: Address) -> anyhow::Result<Option<(u8, f64)>> {
        let row: Option<(Option<i16>, Option<f64>)> = sqlx::query_as(
            "SELECT (SELECT decimals FROM lending_event WHERE chain_id = $1 AND reserve = $2 LIMIT 1),
                    (SELECT price::float8 FROM oracle_price WHERE chain_id = $1 AND asset = $2)",
        )
        .bind(chain as i64)
        .bind(hex(token))
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            Some((Some(decimals), Some(price))) => u8::try_from(decimals).ok().map(|d| (d, price)),
            _ => None,
        })
    }

    /// Stores alerts; returns the ones that are new.
    async fn store(&self, alerts: &[Alert]) -> anyhow::Result<Vec<Alert>> {
        let mut new = Vec::new();
        let mut tx = self.pool.begin().await?;
        for a in alerts {
            let inserted = sqlx::query(
                "INSERT INTO risk_alert (id, kind, severity, chain_id, block_number, tx_hashes,
                    addresses, pools, evidence, detector_version, source_published_at, usd)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) ON CONFLICT (id) DO NOTHING",
            )
            .bind(&a.id)
            .bind(a.kind)
            .bind(a.severity)
            .bind(a.chain_id as i64)
            .bind(a.block_number as i64)
            .bind(&a.tx_hashes)
            .bind(&a.addresses)
            .bind(&a.pools)
            .bind(&a.evidence)
            .bind(a.detector_version)
            .bind(a.source_published_at)
            .bind(a.usd)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if inserted == 1 {
                new.push(a.clone());
            }
        }
        tx.commit().await?;
        Ok(new)
    }

    async fn publish(&mut self, alerts: &[Alert]) -> anyhow::Result<()> {
        let mut pipe = redis::pipe();
        let mut deliveries = Vec::new();
        for a in alerts {
            let payload = serde_json::to_string(a)?;
            pipe.publish(format!("{}alerts", self.config.redis.prefix), &payload)
                .ignore();
            let key = a.chain_id.to_string();
            deliveries.push(
                self.producer
                    .send_result(
                        FutureRecord::to(&self.risk_topic)
                            .key(&key)
                            .payload(&payload),
                    )
                    .map_err(|(e, _)| e)
                    .context("could not enqueue an alert")?,
            );
        }
        if !alerts.is_empty() {
            if let Err(err) = pipe.query_async::<()>(&mut self.redis).await {
                tracing::warn!(%err, "could not publish alerts on Redis");
            }
        }
        for d in deliveries {
            match d.await {
                Ok(Ok(_)) => {}
                Ok(Err((err, _))) => return Err(err).context("the broker rejected an alert"),
                Err(_) => anyhow::bail!("producer dropped before an alert was acknowledged"),
            }
        }
        Ok(())
    }

    /// Evaluates until a batch arrives empty after `idle` (tests); the first wait is at least
    /// 30 s (group join).
    pub async fn run_until_idle(&mut self, idle: Duration) -> anyhow::Result<RiskOutcome> {
        let mut total = RiskOutcome::default();
        let mut wait = idle.max(Duration::from_secs(30));
        loop {
            let o = self.process_batch(wait).await?;
            wait = idle;
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
            if o.received == 0 && self.pending.is_empty() {
                return Ok(total);
            }
        }
    }

    /// Evaluates until `shutdown` resolves.
    pub async fn run_until_stopped(
        mut self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => return Ok(()),
                outcome = self.process_batch(Duration::from_millis(200)) => { outcome?; }
            }
        }
    }
}

/// A deterministic alert id: keccak256 of its identifying parts.
fn alert_id(parts: &[&str]) -> String {
    chainfold_domain::decision::DecisionRecord::id_of(parts)
}
