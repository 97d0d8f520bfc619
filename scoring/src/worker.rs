//! `chainfold score`: a consumer group on the lending, AMM, oracle and attestation topics that
//! rescores every wallet an event touches.
//!
//! Triggers: a lending event rescores its wallet; a swap rescores its sender and recipient when
//! they have a lending history; an oracle round that moves an asset's price beyond
//! `--oracle-threshold` from the last mark rescores every wallet holding or owing the asset; an
//! attestation rescores its wallet. Per batch the scorer waits until the projector has folded the
//! batch's events (its offsets in `consumer_offset` pass them), resumes each wallet's credit
//! profile from Postgres and folds only the history rows after it (two queries for the whole
//! batch, see [`crate::profiles`]), and computes one score per (wallet, trigger) with the features as of the trigger's time (so
//! the result does not depend on batch boundaries): behaviour from the history, and when the
//! wallet has debt and priced holdings, the position model's probability of liquidation (one
//! batched ONNX call per batch, on a blocking thread). Rows go in with `ON CONFLICT (chain_id,
//! wallet, event_id) DO NOTHING`; Kafka offsets are committed after the Postgres commit. A crash
//! replays from the last commit and the replay changes nothing.
//! After the commit: Redis (`<prefix>score:<chain>:<wallet>` hash + a `<prefix>scores` pub/sub
//! message), `chainfold.scores.v1` (keyed by wallet), and for a wallet whose band changed and
//! that has requested credit, a new decision of its last request (`chainfold.decisions.v1`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chainfold_domain::credit::{
    dominant_collateral, hourly_volatility, liquidation_threshold, position_features,
    AccountTotals, ActivityFeatures, Attestation, DayMarks, Holding, VOLATILITY_DAYS,
};
use chainfold_domain::decision::DecisionRecord;
use chainfold_domain::decision::Policy;
use chainfold_domain::profile::CreditProfile;
use chainfold_domain::scorecard::{self, Score};
use chainfold_domain::{topics, DefiEvent};
use chainfold_platform::config::{KafkaArgs, PostgresArgs, RedisArgs};
use chainfold_platform::dlq::{self, DeadLetter};
use chainfold_platform::kafka;
use chainfold_platform::member::{Member, Received};
use chainfold_platform::offsets::{Fenced, OffsetError};
use chainfold_platform::outbox::{Held, Output};
use chrono::{DateTime, Utc};
use rdkafka::producer::FutureProducer;
use sqlx::PgPool;

use crate::model::PositionModel;
use crate::profiles::{self, HistoryRow, Loaded, WalletKey};

/// `chainfold score` settings.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub postgres: PostgresArgs,
    #[command(flatten)]
    pub redis: RedisArgs,
    /// Consumer group of the scorer.
    #[arg(
        long = "group",
        env = "CHAINFOLD_SCORER_GROUP",
        default_value = "chainfold-scorer"
    )]
    pub group: String,
    /// The projector's group: the scorer reads a wallet's history once that projector has
    /// folded the events being scored.
    #[arg(
        long = "projector-group",
        env = "CHAINFOLD_PROJECTOR_GROUP",
        default_value = "chainfold-projector"
    )]
    pub projector_group: String,
    /// Directory of the position model (its name is the model version).
    #[arg(
        long = "model-dir",
        env = "CHAINFOLD_MODEL_DIR",
        default_value = "scoring/models/position-v1"
    )]
    pub model_dir: PathBuf,
    /// Static membership id (see `chainfold project --help`); defaults to `<group>@<hostname>`.
    #[arg(long = "instance-id", env = "CHAINFOLD_SCORER_INSTANCE_ID")]
    pub instance_id: Option<String>,
    /// Most messages scored in one batch.
    #[arg(
        long = "batch-size",
        env = "CHAINFOLD_SCORER_BATCH_SIZE",
        default_value_t = 2000
    )]
    pub batch_size: usize,
    /// Lending decision policy file; the shipped `scoring/policy.toml` (built in) when omitted.
    #[arg(long = "policy", env = "CHAINFOLD_POLICY")]
    pub policy: Option<std::path::PathBuf>,
    /// Relative oracle price move (since the last rescoring of the asset's holders) that
    /// rescores every wallet holding or owing the asset.
    #[arg(
        long = "oracle-threshold",
        env = "CHAINFOLD_SCORER_ORACLE_THRESHOLD",
        default_value_t = 0.02
    )]
    pub oracle_threshold: f64,
    /// How long to wait for the projector to fold a batch before failing.
    #[arg(long = "projector-wait", default_value = "60s", value_parser = chainfold_platform::config::parse_duration)]
    pub projector_wait: Duration,
    /// Resume each wallet from its stored credit profile (`credit_profile`). `false` reads every
    /// rescored wallet's whole history each batch, the cost before profiles (for comparison; the
    /// scores are the same).
    #[arg(
        long = "resume-profiles",
        env = "CHAINFOLD_SCORER_RESUME_PROFILES",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub resume_profiles: bool,
    /// The issuers whose attestations count (0x addresses, comma-separated): an attestation must
    /// carry its issuer's EIP-712 signature (see `chainfold_domain::attest`). Unsigned ones,
    /// forged or altered ones and those of other issuers are dead-lettered with the reason.
    /// Empty (the default): no attestation counts.
    #[arg(
        long = "attestation-issuers",
        env = "CHAINFOLD_ATTESTATION_ISSUERS",
        value_delimiter = ',',
        value_parser = parse_issuer
    )]
    pub attestation_issuers: Vec<alloy_primitives::Address>,
}

fn parse_issuer(text: &str) -> Result<alloy_primitives::Address, String> {
    text.trim()
        .parse()
        .map_err(|_| format!("an attestation issuer must be a 0x address, got {text:?}"))
}

impl Config {
    pub fn new(
        kafka: KafkaArgs,
        postgres: PostgresArgs,
        redis: RedisArgs,
        group: String,
        projector_group: String,
        model_dir: PathBuf,
    ) -> Config {
        Config {
            kafka,
            postgres,
            redis,
            group,
            projector_group,
            model_dir,
            instance_id: None,
            policy: None,
            oracle_threshold: 0.02,
            batch_size: 2000,
            projector_wait: Duration::from_secs(60),
            resume_profiles: true,
            attestation_issuers: Vec::new(),
        }
    }

    fn instance_id(&self) -> String {
        self.instance_id
            .clone()
            .unwrap_or_else(|| chainfold_platform::kafka::default_instance_id(&self.group))
    }
}

/// What a batch did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub received: u64,
    /// Score rows newly stored.
    pub scored: u64,
    /// Messages that were not scorable lending events (no time, not lending, undecodable).
    pub skipped: u64,
    /// Attestations ignored: malformed, unsigned, forged or from an issuer not on the
    /// allow-list (dead-lettered with the reason, never stored) …
    pub attestations_malformed: u64,
    /// … and stored ones that had expired at the time a score was computed.
    pub attestations_expired: u64,
    /// Scores with the position model's probability of liquidation.
    pub with_position: u64,
    /// Oracle rounds that moved beyond the threshold (each rescored the asset's holders).
    pub oracle_moves: u64,
    /// Decisions pushed because a requester's score changed band.
    pub decisions: u64,
    /// Scores deleted because a reorg orphaned their triggering event.
    pub retracted: u64,
    /// Wallets resumed from their stored credit profile …
    pub profiles_resumed: u64,
    /// … and wallets whose whole history was read (new, stale profile, or after a reorg).
    pub full_reads: u64,
    /// Lending history rows read to compute the features.
    pub history_rows_read: u64,
    /// Triggers that saw less than the stored profile (late, older blocks): scored from the
    /// wallet's whole history.
    pub behind: u64,
    /// Lending price points taken from what earlier batches kept instead of read again.
    pub price_points_kept: u64,
}

impl Outcome {
    fn add(&mut self, o: &Outcome) {
        self.received += o.received;
        self.scored += o.scored;
        self.skipped += o.skipped;
        self.attestations_malformed += o.attestations_malformed;
        self.attestations_expired += o.attestations_expired;
        self.with_position += o.with_position;
        self.retracted += o.retracted;
        self.oracle_moves += o.oracle_moves;
        self.decisions += o.decisions;
        self.profiles_resumed += o.profiles_resumed;
        self.full_reads += o.full_reads;
        self.history_rows_read += o.history_rows_read;
        self.behind += o.behind;
        self.price_points_kept += o.price_points_kept;
    }
}

/// A running scorer.
pub struct Scorer {
    /// Held shared while this scorer runs: `chainfold rebuild` cannot run beside it.
    _pipeline: chainfold_platform::lease::PipelineGuard,
    member: Member,
    producer: FutureProducer,
    pool: PgPool,
    redis: redis::aio::ConnectionManager,
    engine: ScoreEngine,
    policy: Policy,
    config: Config,
    lending_topic: String,
    amm_topic: String,
    oracle_topic: String,
    attestations_topic: String,
    scores_topic: String,
    decisions_topic: String,
    /// The last committed batch's publishing (outbox relay, Redis), started at its commit and
    /// running beside what comes next; the next batch's publishing awaits it first (records
    /// leave in commit order), and an idle scorer and a drain await it.
    publishing: Option<Publishing>,
    /// The worker loop's write in flight (see [`Scorer::step`]) …
    writing: Option<Writing>,
    /// … and the profiles it stores: the batch computed beside it starts from these (they are
    /// later than the stored ones). Emptied when the write finishes, whatever its end.
    fresh_profiles: HashMap<WalletKey, CreditProfile>,
    /// The first message of the batch being processed (busy time's clip of the publishing).
    batch_started: Option<Instant>,
    /// The first message this scorer received, and the end of the last work it finished
    /// ([`Scorer::span`]).
    first_message: Option<Instant>,
    last_done: Option<Instant>,
    /// Wall-clock time [`Scorer::process_batch`] (one batch at a time) was working: each batch
    /// from its first message to its commit, plus the time its publishing ran on alone (not
    /// beside the next batch); waiting for the group join or for messages excluded. What the
    /// benchmark's per-batch figures divide by (the worker loop's runs use [`Scorer::span`]).
    pub busy: Duration,
    /// Where the busy time went, summed over batches.
    pub stages: Stages,
    /// The check, started in the background with a batch, that `credit_score` and
    /// `credit_profile` are not estimated empty while they hold rows (see
    /// [`chainfold_platform::postgres::estimated_empty`]): a refill after `chainfold rebuild` or
    /// a truncate can leave them so, and the bands and profile reads may then walk the whole
    /// table per wallet until the next autoanalyze.
    estimates: chainfold_platform::postgres::EstimatesCheck,
}

/// Where a scorer's busy time went, summed over batches (what the benchmark prints).
#[derive(Debug, Clone, Default)]
pub struct Stages {
    /// Decoding the messages and storing attestations.
    pub decode: Duration,
    /// Waiting until the projector has folded the batch's offsets and the chain is sealed.
    pub wait_projector: Duration,
    /// Finding the wallets that swaps and oracle moves rescore.
    pub triggers: Duration,
    /// Loading profiles and history rows, folding them, running the models.
    pub compute: Duration,
    /// The part of `compute` spent waiting for its reads from Postgres: profiles and history
    /// rows, attestations, Aave pools, prices, and the bands read before each write.
    pub compute_reads: Duration,
    /// The transaction: profiles, scores, decisions, outbox, offsets, commit.
    pub write: Duration,
    /// Relaying the outbox to Kafka (in the background, beside the next batch).
    pub relay: Duration,
    /// Refreshing Redis (in the background, after the relay).
    pub redis: Duration,
    /// Waiting for the previous batch's publishing before starting the next.
    pub wait_publish: Duration,
    /// Waiting for the write in flight (the worker loop's pipeline: the part of the previous
    /// batch's write that did not run beside this batch's receiving and computing).
    pub wait_write: Duration,
    pub batches: u64,
}

impl std::fmt::Display for Stages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        write!(
            f,
            "{} batches: decode {:.1} ms, wait for projector {:.1} ms, triggers {:.1} ms, compute {:.1} ms (reads {:.1} ms), write {:.1} ms (waited for: {:.1} ms), relay {:.1} ms and redis {:.1} ms (waited for: {:.1} ms)",
            self.batches,
            ms(self.decode),
            ms(self.wait_projector),
            ms(self.triggers),
            ms(self.compute),
            ms(self.compute_reads),
            ms(self.write),
            ms(self.wait_write),
            ms(self.relay),
            ms(self.redis),
            ms(self.wait_publish)
        )
    }
}

impl std::fmt::Debug for Scorer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scorer")
            .field("group", &self.config.group)
            .finish()
    }
}

/// What a score row is computed for: an event that touched the wallet (lending, swap, oracle
/// move) or an attestation of it.
#[derive(Debug, Clone)]
pub struct Trigger {
    pub chain_id: u64,
    pub wallet: String,
    pub event_id: String,
    pub at: DateTime<Utc>,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub block_number: Option<i64>,
}

/// Features and model: computes scores for triggers from the read models (the live scorer and
/// `chainfold backtest` share it, so a backtest scores exactly as the live path would).
#[derive(Debug, Clone)]
pub struct ScoreEngine {
    pool: PgPool,
    model: std::sync::Arc<std::sync::Mutex<PositionModel>>,
    /// The model directory's name, stored with every score.
    pub version: String,
    pub sha256: String,
    /// Each reserve's lending price points kept from one batch to the next (the live scorer's;
    /// `None` reads every batch's windows whole, as a backtest does).
    lending: Option<std::sync::Arc<std::sync::Mutex<LendingPrices>>>,
}

/// Scores computed for a batch of triggers.
struct Computed<'t> {
    rows: Vec<(u64, String, &'t Trigger, Score)>,
    /// Each row's account health factor (aligned with `rows`).
    health: Vec<Option<f64>>,
    expired: u64,
    with_position: u64,
    /// The profiles to store: each as of the last trigger of the persisted topic.
    profiles: Vec<(WalletKey, CreditProfile)>,
    stats: profiles::LoadStats,
    /// Triggers scored from a whole history because they saw less than the stored profile.
    behind: u64,
    /// Lending price points taken from what earlier batches kept.
    price_points_kept: u64,
    /// The part of the computing spent waiting for Postgres: the profiles, attestations, Aave
    /// pools and prices read.
    reads: Duration,
}

/// (reserve, symbol, collateral, debt) per reserve, as [`chainfold_domain::profile::PositionBook::positions`] gives them.
type Positions = Vec<(String, String, f64, f64)>;

/// Whether a history row (its block and time) is seen by a trigger: at or before the trigger's
/// time and, where both have blocks, in the trigger's block or before.
/// Which of a wallet's triggers advance its profile over `rows` (the history after the
/// profile's cursor), as (rows the trigger sees, trigger) in the order of how much each sees;
/// and the triggers that see less than the profile already holds, to score from the start.
fn plan<'t>(
    triggers: &[&'t Trigger],
    profile: &CreditProfile,
    rows: &[HistoryRow],
) -> (Vec<(usize, &'t Trigger)>, Vec<&'t Trigger>) {
    let mut plan: Vec<(usize, &Trigger)> = Vec::with_capacity(triggers.len());
    let mut older: Vec<&Trigger> = Vec::new();
    for &t in triggers {
        let seen = rows
            .iter()
            .take_while(|r| visible(t, r.block, r.key.at))
            .count();
        let prefix = !rows[seen..].iter().any(|r| visible(t, r.block, r.key.at));
        let holds = profile
            .cursor
            .as_ref()
            .is_none_or(|c| visible(t, (c.block != i64::MAX).then_some(c.block), c.at));
        if prefix && holds {
            plan.push((seen, t));
        } else {
            older.push(t);
        }
    }
    plan.sort_by_key(|(seen, _)| *seen);
    (plan, older)
}

fn visible(t: &Trigger, block: Option<i64>, at: DateTime<Utc>) -> bool {
    at <= t.at
        && match (t.block_number, block) {
            (Some(limit), Some(b)) => b <= limit,
            _ => true,
        }
}

fn fold_row(profile: &mut CreditProfile, r: &HistoryRow) {
    profile.apply(
        r.key.clone(),
        r.block_hash.as_deref(),
        r.entry.as_ref().map(|(e, f)| (e, f)),
    );
}

impl ScoreEngine {
    pub fn new(pool: PgPool, model: PositionModel) -> ScoreEngine {
        ScoreEngine {
            pool,
            version: model.version.clone(),
            sha256: model.sha256.clone(),
            model: std::sync::Arc::new(std::sync::Mutex::new(model)),
            lending: None,
        }
    }

    /// The engine keeping lending price points from one batch to the next (see
    /// [`LendingPrices`]): for a reader whose batches wait for their blocks' seals.
    fn keeping_prices(mut self) -> ScoreEngine {
        self.lending = Some(Default::default());
        self
    }

    /// [`ScoreEngine::compute`]'s rows: (chain, wallet, trigger, score).
    pub async fn compute_rows<'t>(
        &self,
        triggers: &'t [Trigger],
    ) -> anyhow::Result<Vec<(u64, String, &'t Trigger, Score)>> {
        Ok(self
            .compute(
                triggers,
                &HashSet::new(),
                &HashMap::new(),
                None,
                &HashMap::new(),
            )
            .await?
            .rows)
    }

    /// One score per trigger whose wallet has history at the trigger's time, as of that time.
    ///
    /// Each wallet's features come from its credit profile (see [`crate::profiles`]): the stored
    /// one, advanced over the history rows after its cursor, one trigger after another in the
    /// order of how much of the history each sees. A trigger that sees less than the stored
    /// profile holds (an older block arriving late) is scored from the wallet's whole history,
    /// folded from the start: the same features, at the old cost. `persist` names the topic
    /// whose triggers may move the stored profile (the lending topic: a wallet's own events
    /// arrive in order on one partition); `None` stores nothing (a backtest). `sealed` gives,
    /// per chain, a block whose seal the batch waited for: the price points up to it are whole,
    /// so the engine may keep them for the next batch (see [`LendingPrices`]).
    async fn compute<'t>(
        &self,
        triggers: &'t [Trigger],
        reset: &HashSet<WalletKey>,
        fresher: &HashMap<WalletKey, CreditProfile>,
        persist: Option<&str>,
        sealed: &HashMap<u64, i64>,
    ) -> anyhow::Result<Computed<'t>> {
        let mut by_wallet: BTreeMap<WalletKey, Vec<&Trigger>> = BTreeMap::new();
        for t in triggers {
            by_wallet
                .entry((t.chain_id, t.wallet.clone()))
                .or_default()
                .push(t);
        }
        let keys: Vec<WalletKey> = by_wallet.keys().cloned().collect();
        // The latest time any trigger of the wallet sees: history after it is not read.
        let until: Vec<DateTime<Utc>> = by_wallet
            .values()
            .map(|list| list.iter().map(|t| t.at).max().unwrap_or_default())
            .collect();
        let reading = Instant::now();
        let (mut loaded, stats) = profiles::load(&self.pool, &keys, &until, reset, fresher).await?;
        let mut attested = self.attestations(&keys).await?;
        let aave_pools = self.aave_pools(&keys).await?;
        let mut reads = reading.elapsed();
        let mut expired = 0;
        let mut behind = 0;
        let mut cache = PriceCache {
            since: triggers
                .iter()
                .map(|t| t.at)
                .min()
                .map(|at| at - chrono::Duration::days(VOLATILITY_DAYS)),
            until: triggers.iter().map(|t| t.at).max(),
            points: HashMap::new(),
            sealed: sealed.clone(),
            kept: 0,
        };
        let mut keep = Vec::new();
        // Each wallet's attestations, and (wallet index, trigger, activity, positions) of every
        // trigger with features: first every fold, then the prices they need, read at once.
        let mut attestations: Vec<Vec<Attestation>> = Vec::with_capacity(by_wallet.len());
        let mut featured: Vec<(usize, &'t Trigger, ActivityFeatures, Positions)> =
            Vec::with_capacity(triggers.len());
        for (w, ((key, list), until)) in by_wallet.iter().zip(&until).enumerate() {
            let Loaded {
                mut profile, rows, ..
            } = loaded.remove(key).unwrap_or_default();
            attestations.push(attested.remove(key).unwrap_or_default());
            let (plan, older) = plan(list, &profile, &rows);
            let last_kept = plan
                .iter()
                .rposition(|(_, t)| persist.is_some_and(|topic| t.topic == topic));
            let mut folded = 0;
            let mut scored: Vec<(&Trigger, Option<ActivityFeatures>, Positions)> =
                Vec::with_capacity(list.len());
            for (i, (seen, t)) in plan.into_iter().enumerate() {
                for r in &rows[folded..seen] {
                    fold_row(&mut profile, r);
                }
                folded = seen;
                if Some(i) == last_kept {
                    keep.push((key.clone(), profile.clone()));
                }
                scored.push((t, profile.activity.features(t.at), profile.book.positions()));
            }
            if !older.is_empty() {
                behind += older.len() as u64;
                scored.extend(self.score_from_start(key, *until, older).await?);
            }
            featured.extend(
                scored
                    .into_iter()
                    .filter_map(|(t, features, positions)| Some((w, t, features?, positions))),
            );
        }
        // The reserves of every position with debt (the ones priced), read side by side.
        let reserves: HashSet<(u64, String)> = featured
            .iter()
            .filter(|(_, _, _, positions)| positions.iter().any(|p| p.3 > 0.0))
            .flat_map(|(_, t, _, positions)| positions.iter().map(|p| (t.chain_id, p.0.clone())))
            .collect();
        let reading = Instant::now();
        self.prefetch_prices(&mut cache, reserves).await?;
        reads += reading.elapsed();
        let keys: Vec<&WalletKey> = by_wallet.keys().collect();
        // (chain, wallet, trigger, activity, active attestations, position features)
        let mut pending = Vec::with_capacity(featured.len());
        for (w, t, features, positions) in featured {
            let (key, attested) = (keys[w], &attestations[w]);
            let active: Vec<Attestation> = attested
                .iter()
                .filter(|a| a.active_at(t.at))
                .cloned()
                .collect();
            expired += attested
                .iter()
                .filter(|a| a.issued_at <= t.at && a.expires_at <= t.at)
                .count() as u64;
            let mut position = self
                .position_inputs(&mut cache, key.0, positions, t.at, t.block_number)
                .await?;
            if let (Some(pool), Some(block)) = (aave_pools.get(key), t.block_number) {
                if let Some(exact) = self.aave_health(key, *pool, block, t.at).await? {
                    position.0 = exact;
                }
            }
            pending.push((key.0, key.1.clone(), t, features, active, position));
        }
        let inputs: Vec<[f32; 4]> = pending.iter().filter_map(|p| p.5 .1).collect();
        let mut probabilities = self.infer(inputs).await?.into_iter();
        let mut with_position = 0;
        let mut rows: Vec<(u64, String, &'t Trigger, Score)> = Vec::with_capacity(pending.len());
        let mut health = Vec::with_capacity(pending.len());
        for (chain, wallet, t, features, active, (hf, position)) in pending {
            health.push(hf);
            let p = match position {
                Some(_) => {
                    with_position += 1;
                    probabilities.next().map(f64::from)
                }
                None => None,
            };
            let active: Vec<&Attestation> = active.iter().collect();
            rows.push((
                chain,
                wallet,
                t,
                scorecard::score_with(&features, p, &active),
            ));
        }
        Ok(Computed {
            rows,
            health,
            expired,
            with_position,
            profiles: keep,
            stats,
            behind,
            price_points_kept: cache.kept,
            reads,
        })
    }

    /// The scores of triggers that see less of the wallet's history than its stored profile
    /// holds (older blocks arriving late): each folded from the wallet's whole history read
    /// once, up to what the trigger sees.
    async fn score_from_start<'t>(
        &self,
        key: &WalletKey,
        until: DateTime<Utc>,
        older: Vec<&'t Trigger>,
    ) -> anyhow::Result<Vec<(&'t Trigger, Option<ActivityFeatures>, Positions)>> {
        let mut conn = self.pool.acquire().await?;
        let all = profiles::rows_after(
            &mut conn,
            std::slice::from_ref(key),
            &[None],
            std::slice::from_ref(&until),
        )
        .await?
        .remove(&0)
        .unwrap_or_default();
        Ok(older
            .into_iter()
            .map(|t| {
                let mut from_start = CreditProfile::default();
                for r in all.iter().filter(|r| visible(t, r.block, r.key.at)) {
                    fold_row(&mut from_start, r);
                }
                (
                    t,
                    from_start.activity.features(t.at),
                    from_start.book.positions(),
                )
            })
            .collect())
    }

    /// One batched inference of the position model for every priced position, on a blocking
    /// thread: the probabilities of liquidation, in the order of `inputs`.
    async fn infer(&self, inputs: Vec<[f32; 4]>) -> anyhow::Result<Vec<f32>> {
        let model = self.model.clone();
        tokio::task::spawn_blocking(move || {
            model
                .lock()
                .map_err(|_| anyhow::anyhow!("position model lock poisoned"))?
                .predict(&inputs)
        })
        .await
        .context("inference thread")?
    }

    /// The attestations of each wallet, oldest first (one query for the batch).
    async fn attestations(
        &self,
        wallets: &[WalletKey],
    ) -> anyhow::Result<HashMap<WalletKey, Vec<Attestation>>> {
        let chains: Vec<i64> = wallets.iter().map(|w| w.0 as i64).collect();
        let addrs: Vec<String> = wallets.iter().map(|w| w.1.clone()).collect();
        Ok(chainfold_store::attestations::of_wallets(&self.pool, &chains, &addrs).await?)
    }

    /// USD price points of a reserve as of `block` (all of them without one): its oracle
    /// answers, or where it has none by then, the prices its lending events carried. Read once
    /// per batch, and only as far back as the batch needs: the points from 30 days before its
    /// earliest trigger on (the volatility windows) and the one point before them (the price in
    /// force), so a batch reads the same whatever the length of the reserve's history. A lookup
    /// borrows the batch's points where it can (see [`PriceSource::visible`]): its cost does
    /// not grow with the number of points the batch read.
    async fn prices<'c>(
        &self,
        cache: &'c mut PriceCache,
        chain_id: u64,
        reserve: &str,
        block: Option<i64>,
    ) -> anyhow::Result<Visible<'c>> {
        if cache.get(chain_id, reserve).is_none() {
            self.prefetch_prices(cache, HashSet::from([(chain_id, reserve.to_owned())]))
                .await?;
        }
        let (oracle, lending) = cache
            .get(chain_id, reserve)
            .context("a reserve's price points were just read")?;
        let from_oracle = oracle.visible(block);
        Ok(if from_oracle.points.is_empty() {
            lending.visible(block)
        } else {
            from_oracle
        })
    }

    /// Reads the price points of `reserves` not in `cache` yet, each on its own connection,
    /// side by side. The lending points come from what the engine kept of earlier batches
    /// where it can ([`LendingPrices`]): only the points after those are read.
    async fn prefetch_prices(
        &self,
        cache: &mut PriceCache,
        reserves: HashSet<(u64, String)>,
    ) -> anyhow::Result<()> {
        let wanted: Vec<(u64, String)> = reserves
            .into_iter()
            .filter(|(chain_id, reserve)| cache.get(*chain_id, reserve).is_none())
            .collect();
        if wanted.is_empty() {
            return Ok(());
        }
        let (since, until) = (cache.since, cache.until);
        // What the engine kept, taken out for this batch's reads (after the mark: a change
        // committed before it shows in the reads, one committed after it moves the next mark).
        let mut kept: HashMap<(u64, String), KeptLending> = HashMap::new();
        if let (Some(memory), Some(since)) = (&self.lending, since) {
            let mut mark = chainfold_store::prices::change_mark(&self.pool).await?;
            if mark.0 > PRICE_CHANGES_MOST {
                chainfold_store::prices::prune_changes(
                    &self.pool,
                    PRICE_CHANGES_MOST,
                    PRICE_CHANGES_MOST / 10,
                )
                .await?;
                mark = chainfold_store::prices::change_mark(&self.pool).await?;
            }
            let mut memory = memory
                .lock()
                .map_err(|_| anyhow::anyhow!("lending price memory lock poisoned"))?;
            if memory.mark != Some(mark) {
                memory.kept.clear();
                memory.mark = Some(mark);
            }
            // Points a batch has moved past are not kept.
            memory.kept.retain(|_, k| k.below > since);
            for key in &wanted {
                if let Some(k) = memory.kept.remove(key) {
                    kept.insert(key.clone(), k);
                }
            }
        }
        let mut reads = tokio::task::JoinSet::new();
        for (chain_id, reserve) in wanted {
            let pool = self.pool.clone();
            let held = kept.remove(&(chain_id, reserve.clone()));
            let sealed = self
                .lending
                .is_some()
                .then(|| cache.sealed.get(&chain_id).copied())
                .flatten();
            reads.spawn(async move {
                let read = async {
                    let chain = chain_id as i64;
                    let oracle =
                        chainfold_store::prices::oracle_window(&pool, chain, &reserve, since)
                            .await?;
                    let Some(since) = since else {
                        // No trigger: nothing is priced, nothing read or kept.
                        let lending = chainfold_store::prices::lending_window(
                            &pool, chain, &reserve, None, until,
                        )
                        .await?;
                        return Ok((oracle, lending, None, 0));
                    };
                    let mut reused = 0;
                    let joined = match held {
                        Some(held) => {
                            reused = held.points.len() as u64;
                            // Before the kept points (a batch starting earlier) …
                            let gap = if since < held.since {
                                Some(
                                    chainfold_store::prices::lending_gap(
                                        &pool, chain, &reserve, since, held.since,
                                    )
                                    .await?,
                                )
                            } else {
                                None
                            };
                            // … and after them.
                            let after = if until.is_none_or(|until| until >= held.below) {
                                chainfold_store::prices::lending_from(
                                    &pool, chain, &reserve, held.below, until,
                                )
                                .await?
                            } else {
                                Vec::new()
                            };
                            held.join(since, gap, after, sealed)
                        }
                        None => Joined::read(
                            chainfold_store::prices::lending_window(
                                &pool,
                                chain,
                                &reserve,
                                Some(since),
                                until,
                            )
                            .await?,
                            since,
                            sealed,
                        ),
                    };
                    let keep = joined.keep(since, KEPT_POINTS);
                    let lending = cut_window(joined.points, since, until);
                    Ok::<_, sqlx::Error>((oracle, lending, keep, reused))
                }
                .await;
                (chain_id, reserve, read)
            });
        }
        let mut keep = Vec::new();
        while let Some(done) = reads.join_next().await {
            let (chain_id, reserve, read) = done.context("a price read")?;
            let (oracle, lending, kept, reused) = read?;
            cache.kept += reused;
            if let Some(kept) = kept {
                keep.push(((chain_id, reserve.clone()), kept));
            }
            cache.insert(chain_id, reserve, oracle, lending);
        }
        if let Some(memory) = &self.lending {
            memory
                .lock()
                .map_err(|_| anyhow::anyhow!("lending price memory lock poisoned"))?
                .kept
                .extend(keep);
        }
        Ok(())
    }

    /// The lending pool of each wallet's latest flow that names one (live RPC events): the pool
    /// whose own accounting gives the wallet's health factor. One query per batch.
    async fn aave_pools(
        &self,
        keys: &[WalletKey],
    ) -> anyhow::Result<HashMap<WalletKey, chainfold_domain::Address>> {
        let chains: Vec<i64> = keys.iter().map(|k| k.0 as i64).collect();
        let wallets: Vec<String> = keys.iter().map(|k| k.1.clone()).collect();
        let rows = chainfold_store::lending::latest_pools(&self.pool, &chains, &wallets).await?;
        Ok(rows
            .into_iter()
            .filter_map(|(chain, wallet, pool)| Some(((chain as u64, wallet), pool.parse().ok()?)))
            .collect())
    }

    /// The wallet's health factor as its Aave pool computes it at `block` (`getUserAccountData`,
    /// see `chainfold_store::aave`): `Some(None)` without debt, `None` when the pool's
    /// accounting cannot answer (no reserve data or no price yet), where the estimate stays.
    async fn aave_health(
        &self,
        key: &WalletKey,
        pool: chainfold_domain::Address,
        block: i64,
        at: DateTime<Utc>,
    ) -> anyhow::Result<Option<Option<f64>>> {
        let Ok(wallet) = key.1.parse() else {
            return Ok(None);
        };
        let account = chainfold_store::aave::account(
            &self.pool,
            key.0,
            pool,
            wallet,
            u64::try_from(block).unwrap_or_default(),
            u64::try_from(at.timestamp()).unwrap_or_default(),
        )
        .await;
        Ok(match account {
            // A reserve configured before the ingest's start would count as no collateral.
            Ok(Some(a)) if !a.unconfigured.is_empty() => None,
            Ok(Some(a)) if a.data.health_factor == chainfold_domain::U256::MAX => Some(None),
            Ok(Some(a)) => {
                let hf: f64 = a.data.health_factor.to_string().parse().unwrap_or(f64::NAN);
                (hf.is_finite()).then_some(Some(hf / 1e18))
            }
            Ok(None) | Err(chainfold_store::aave::AaveError::Account(_)) => None,
            Err(e) => return Err(e.into()),
        })
    }

    /// The account's health factor and the position model's inputs for the wallet's position
    /// at `at`. Both `None` without debt or when a held reserve has no price at `at`; the inputs
    /// also when its collateral has too few prices for a volatility.
    async fn position_inputs(
        &self,
        cache: &mut PriceCache,
        chain_id: u64,
        positions: Positions,
        at: DateTime<Utc>,
        block: Option<i64>,
    ) -> anyhow::Result<(Option<f64>, Option<[f32; 4]>)> {
        if !positions.iter().any(|p| p.3 > 0.0) {
            return Ok((None, None));
        }
        let mut holdings = Vec::with_capacity(positions.len());
        let mut reserves = Vec::with_capacity(positions.len());
        for (reserve, symbol, collateral, debt) in positions {
            let visible = self.prices(cache, chain_id, &reserve, block).await?;
            let points = &visible.points;
            let seen = points.partition_point(|(t, _)| *t <= at);
            let Some(&(_, price)) = seen.checked_sub(1).and_then(|i| points.get(i)) else {
                return Ok((None, None));
            };
            holdings.push(Holding {
                liquidation_threshold: liquidation_threshold(&symbol),
                symbol,
                collateral,
                debt,
                price,
            });
            reserves.push(reserve);
        }
        let hf = AccountTotals::of(&holdings).health_factor();
        let Some(main) = dominant_collateral(&holdings) else {
            // Debt without collateral: the worst position there is.
            return Ok((hf, Some([(1e-9f64).ln() as f32, 0.0, 0.0, -50.0])));
        };
        let index = holdings
            .iter()
            .position(|h| std::ptr::eq(h, main))
            .unwrap_or_default();
        let points = self
            .prices(cache, chain_id, &reserves[index], block)
            .await?;
        let Some((vol_7d, vol_30d)) = points.hourly_volatility(at) else {
            return Ok((hf, None));
        };
        Ok((hf, position_features(&holdings, vol_7d, vol_30d)))
    }
}

/// A batch's messages, sorted for scoring.
#[derive(Debug, Default)]
struct Decoded {
    /// Lending events and verified attestations: their wallet is rescored.
    triggers: Vec<Trigger>,
    /// Event-topic offsets the projector must have folded before the features are read.
    max_offset: BTreeMap<(String, i32), i64>,
    /// Per chain, what must be sealed: a wallet's features read other partitions (prices,
    /// positions), which are whole only below a seal of the trigger's block.
    sealed: BTreeMap<u64, SealNeed>,
    /// Verified attestations with their partition and offset.
    attestations: Vec<(Attestation, i32, i64)>,
    /// Swaps' senders and recipients (rescored only with a lending history).
    swaps: Vec<Trigger>,
    /// Oracle rounds (their moves rescore the asset's holders).
    rounds: Vec<OracleRound>,
    /// (chain, event id, orphaned block, topic, partition, offset) of retracted events.
    retracted: Vec<(i64, String, i64, String, i32, i64)>,
    /// Wallets a retraction of a lending event touched: their stored profiles are dropped.
    reset: HashSet<WalletKey>,
}

/// An oracle round of an asset, with the trigger its holders get if it moved.
#[derive(Debug, Clone)]
struct OracleRound {
    asset: String,
    price: f64,
    /// Wallet left empty: filled per holder.
    trigger: Trigger,
}

/// Price points per (chain, reserve) with their blocks, oracle and lending-event ones, read
/// once per batch from `since` (30 days before the batch's earliest trigger) on, plus the last
/// point before it.
#[derive(Debug, Default)]
struct PriceCache {
    since: Option<DateTime<Utc>>,
    /// The batch's latest trigger time: no lending point after it prices anything.
    until: Option<DateTime<Utc>>,
    /// Per chain and reserve (looked up by the reserve's name, without building a key).
    points: HashMap<u64, HashMap<String, (PriceSource, PriceSource)>>,
    /// Per chain, a block whose seal the batch waited for (see [`ScoreEngine::compute`]).
    sealed: HashMap<u64, i64>,
    /// Lending points taken from what earlier batches kept ([`LendingPrices`]).
    kept: u64,
}

/// Lending price points kept from one batch to the next, per (chain, reserve).
///
/// A batch of a backfill reads each priced reserve's points from 30 days before its earliest
/// trigger to its latest one, and the next batch's window overlaps most of it: re-reading and
/// decoding them was the largest single cost left per score (BENCHMARKS.md, 2026-12-07). The
/// points of a sealed block do not change, so a batch keeps the points it read up to the last
/// one of a sealed block, and the next batch reads only the points from there on.
///
/// Why the kept points are whole: the batch waited until every block up to `sealed` was folded
/// (its seal); a point missing from the read belongs to a later block, and a later block's time
/// is not earlier (an EVM block's timestamp is never below its parent's), so it is not earlier
/// than the last point of a sealed block. Everything before that time was therefore read.
///
/// What can change them anyway (a retraction, a chain's reset, a rebuild, a reorg's
/// replacement blocks) appends to `price_change`; a moved mark drops everything kept. A reserve
/// with a point without a block is never kept (nothing says which points are whole).
#[derive(Debug, Default)]
struct LendingPrices {
    /// `price_change`'s (count, last id) when `kept` was last valid.
    mark: Option<(i64, Option<i64>)>,
    kept: HashMap<(u64, String), KeptLending>,
}

/// One reserve's kept lending points.
#[derive(Debug, Clone, PartialEq)]
struct KeptLending {
    /// The window start they were read for: they begin with the last point before it.
    since: DateTime<Utc>,
    /// Every point of `since..below` (`below` excluded) is here, in window order.
    below: DateTime<Utc>,
    points: Vec<PricePoint>,
}

/// `price_change` is cut back to its last tenth once it holds more rows than this (one row
/// per retracting statement, rebuild or reorg seal): its count is read once per batch.
const PRICE_CHANGES_MOST: i64 = 10_000;

/// At most this many points of one reserve are kept from a batch before the points older than
/// the batch's own window are let go (24 bytes each).
const KEPT_POINTS: usize = 1 << 20;

/// A reserve's lending points as a batch has them: every point from the last one before
/// `since` on, in window order; those before `below` are whole (see [`LendingPrices`]), those
/// after it are what the batch read of blocks not sealed yet.
#[derive(Debug)]
struct Joined {
    since: DateTime<Utc>,
    below: Option<DateTime<Utc>>,
    points: Vec<PricePoint>,
}

impl Joined {
    /// A window read whole for `since` ([`chainfold_store::prices::lending_window`]), with the
    /// blocks up to `sealed` whole: its points are whole up to the last one of a sealed block
    /// (excluded: a point of a later block may share its time). Nothing is whole when a point
    /// has no block.
    fn read(points: Vec<PricePoint>, since: DateTime<Utc>, sealed: Option<i64>) -> Joined {
        Joined {
            since,
            below: sealed_until(&points, sealed).filter(|_| chain_ordered(&points)),
            points,
        }
    }

    /// What of it the next batch can start from: the whole points, from the last one before
    /// `since` on when there are more than `most` to keep from the earlier start.
    fn keep(&self, since: DateTime<Utc>, most: usize) -> Option<KeptLending> {
        let below = self.below?;
        let end = self.points.partition_point(|p| p.0 < below);
        let mut start = 0;
        let mut from = self.since;
        if end > most && since > self.since {
            start = self.points[..end]
                .partition_point(|p| p.0 < since)
                .saturating_sub(1);
            from = since;
        }
        (end > start).then(|| KeptLending {
            since: from,
            below,
            points: self.points[start..end].to_vec(),
        })
    }
}

/// Whether the points' blocks never go down as their times go on, as on a chain: what makes
/// the points before a sealed block's time whole (see [`LendingPrices`]). Data where they do
/// (recorded blocks and times from different sources) is never kept.
fn chain_ordered(points: &[PricePoint]) -> bool {
    points.windows(2).all(|w| w[0].1 <= w[1].1)
}

/// The time of the last point of a block up to `sealed`: every point before it was read (see
/// [`LendingPrices`]). `None` without a sealed block, without such a point, or when a point
/// has no block.
fn sealed_until(points: &[PricePoint], sealed: Option<i64>) -> Option<DateTime<Utc>> {
    let sealed = sealed?;
    let mut below = None;
    for (at, block, _) in points {
        match block {
            None => return None,
            Some(b) if *b <= sealed => {
                below = Some(below.map_or(*at, |x: DateTime<Utc>| x.max(*at)))
            }
            Some(_) => {}
        }
    }
    below
}

impl KeptLending {
    /// The kept points with what a batch read around them for its window from `since`: `gap`,
    /// when it starts earlier, the window up to the kept start
    /// ([`chainfold_store::prices::lending_gap`]), and `after`, the points from `below` on
    /// ([`chainfold_store::prices::lending_from`]). Whole up to `below`, or further when
    /// `after` holds points of blocks up to `sealed`.
    fn join(
        self,
        since: DateTime<Utc>,
        gap: Option<Vec<PricePoint>>,
        after: Vec<PricePoint>,
        sealed: Option<i64>,
    ) -> Joined {
        let blockless = |points: &[PricePoint]| points.iter().any(|p| p.1.is_none());
        let mut whole = !blockless(&after) && !gap.as_deref().is_some_and(blockless);
        let (from, mut points) = match gap {
            // The gap brings the point before the earlier start; the kept one before theirs
            // is in the gap already.
            Some(mut gap) => {
                let kept_since = self.since;
                gap.extend(self.points.into_iter().filter(|p| p.0 >= kept_since));
                (since.min(kept_since), gap)
            }
            None => (self.since, self.points),
        };
        let mut below = self.below;
        match sealed_until(&after, sealed) {
            Some(further) if further > below => below = further,
            Some(_) => {}
            // A point without a block among them: nothing says which are whole.
            None if blockless(&after) => whole = false,
            None => {}
        }
        points.extend(after);
        whole &= chain_ordered(&points);
        Joined {
            since: from,
            below: whole.then_some(below),
            points,
        }
    }
}

/// The window of `since..=until` as [`chainfold_store::prices::lending_window`] reads it (the
/// last point before `since`, then the points of the window) cut from `points`: every point
/// from the last one before `since` on, in window order.
fn cut_window(
    mut points: Vec<PricePoint>,
    since: DateTime<Utc>,
    until: Option<DateTime<Utc>>,
) -> Vec<PricePoint> {
    let start = points.partition_point(|p| p.0 < since);
    let end = until
        .map_or(points.len(), |until| {
            points.partition_point(|p| p.0 <= until)
        })
        .max(start);
    points.truncate(end);
    points.drain(..start.saturating_sub(1));
    points
}

/// One reserve's points of one kind (oracle or lending), as read, with what a lookup needs.
#[derive(Debug, Default)]
struct PriceSource {
    points: Vec<PricePoint>,
    /// (time, price) of each point, in the same order.
    priced: Vec<(DateTime<Utc>, f64)>,
    /// Every point has a block, and blocks and times never go down: the points visible at a
    /// block are a prefix, and a prefix is sorted by time.
    ordered: bool,
    /// The days of `priced` when `ordered`: a score's volatility is computed from its window's
    /// days, not its points ([`DayMarks::hourly_volatility`]).
    days: Option<DayMarks>,
}

impl PriceCache {
    /// Keeps a reserve's points as read ([`chainfold_store::prices::oracle_window`],
    /// [`chainfold_store::prices::lending_window`]); without a
    /// trigger time (no triggers) nothing is compared with the window: nothing prices.
    fn insert(
        &mut self,
        chain_id: u64,
        reserve: String,
        mut oracle: Vec<PricePoint>,
        mut lending: Vec<PricePoint>,
    ) {
        if self.since.is_none() {
            oracle.clear();
            lending.clear();
        }
        self.points.entry(chain_id).or_default().insert(
            reserve,
            (PriceSource::new(oracle), PriceSource::new(lending)),
        );
    }

    /// A reserve's points (oracle, lending), if read.
    fn get(&self, chain_id: u64, reserve: &str) -> Option<&(PriceSource, PriceSource)> {
        self.points.get(&chain_id)?.get(reserve)
    }
}

impl PriceSource {
    fn new(points: Vec<PricePoint>) -> PriceSource {
        let ordered = points.iter().all(|p| p.1.is_some())
            && points
                .windows(2)
                .all(|w| w[0].1 <= w[1].1 && w[0].0 <= w[1].0);
        let priced: Vec<(DateTime<Utc>, f64)> = points.iter().map(|(t, _, p)| (*t, *p)).collect();
        let days = if ordered { DayMarks::of(&priced) } else { None };
        PriceSource {
            points,
            priced,
            ordered,
            days,
        }
    }

    /// The points visible at `block` (blocks at or below it; every point without a block or
    /// without a `block`), in their order. Ordered points are borrowed (a binary search for the
    /// prefix); others are filtered into a copy, as every lookup did before.
    fn visible(&self, block: Option<i64>) -> Visible<'_> {
        if self.ordered {
            let end = match block {
                Some(at) => self
                    .points
                    .partition_point(|(_, b, _)| b.is_some_and(|b| b <= at)),
                None => self.points.len(),
            };
            return Visible {
                points: std::borrow::Cow::Borrowed(&self.priced[..end]),
                sorted: true,
                days: self.days.as_ref(),
            };
        }
        let points = self
            .points
            .iter()
            .filter(|(_, b, _)| match (block, b) {
                (Some(at), Some(b)) => *b <= at,
                _ => true,
            })
            .map(|(t, _, p)| (*t, *p))
            .collect();
        Visible {
            points: std::borrow::Cow::Owned(points),
            sorted: false,
            days: None,
        }
    }
}

/// A reserve's price points visible at a trigger's block.
#[derive(Debug)]
struct Visible<'c> {
    points: std::borrow::Cow<'c, [(DateTime<Utc>, f64)]>,
    /// Sorted by time (then the windows are found by binary search).
    sorted: bool,
    /// The days of the points this is a prefix of, when they are sorted.
    days: Option<&'c DayMarks>,
}

impl Visible<'_> {
    /// [`hourly_volatility`] at `at` of the points visible: from the window's days when the
    /// points are marked, else from its points (the same value).
    fn hourly_volatility(&self, at: DateTime<Utc>) -> Option<(f64, f64)> {
        match self.days {
            Some(days) => days.hourly_volatility(&self.points, at),
            None => hourly_volatility(self.volatility_window(at), at),
        }
    }

    /// What [`hourly_volatility`] reads at `at`: the points of the 30 days up to `at` when they
    /// are sorted (the same points in the same order as its own filter keeps), else all.
    fn volatility_window(&self, at: DateTime<Utc>) -> &[(DateTime<Utc>, f64)] {
        if !self.sorted {
            return &self.points;
        }
        let from = at - chrono::Duration::days(VOLATILITY_DAYS);
        let start = self.points.partition_point(|(t, _)| *t <= from);
        let end = self.points.partition_point(|(t, _)| *t <= at);
        &self.points[start..end.max(start)]
    }
}

type PricePoint = (DateTime<Utc>, Option<i64>, f64);

impl Scorer {
    pub async fn build(config: Config) -> anyhow::Result<Scorer> {
        let model = PositionModel::load(&config.model_dir)?;
        let policy = chainfold_store::decisions::policy_or_shipped(config.policy.as_deref())?;
        let pool = chainfold_platform::postgres::connect_replanning(&config.postgres).await?;
        let pipeline = chainfold_platform::lease::hold_pipeline(&config.postgres).await?;
        let redis = chainfold_platform::redis_cache::connect(&config.redis).await?;
        let topics = config.kafka.topics();
        let scores_topic = format!("{}{}", config.kafka.topic_prefix, topics::SCORES);
        let attestations_topic = format!("{}{}", config.kafka.topic_prefix, topics::ATTESTATIONS);
        let decisions_topic = format!("{}{}", config.kafka.topic_prefix, topics::DECISIONS);
        let mut all = topics.all();
        all.push(scores_topic.clone());
        all.push(attestations_topic.clone());
        all.push(topics::dlq(&attestations_topic));
        all.push(decisions_topic.clone());
        kafka::ensure_topics(&config.kafka, &all).await?;
        let member = Member::join(
            &config.kafka,
            pool.clone(),
            &config.group,
            &config.instance_id(),
            &[
                topics.lending.as_str(),
                topics.amm.as_str(),
                topics.oracle.as_str(),
                attestations_topic.as_str(),
            ],
        )?;
        let producer = kafka::producer(&config.kafka)?;
        tracing::info!(group = %config.group, instance = %config.instance_id(), model = %model.version, sha256 = %model.sha256, "scorer subscribed");
        let scorer = Scorer {
            _pipeline: pipeline,
            member,
            producer,
            engine: ScoreEngine::new(pool.clone(), model).keeping_prices(),
            pool,
            redis,
            policy,
            lending_topic: topics.lending,
            amm_topic: topics.amm,
            oracle_topic: topics.oracle,
            attestations_topic,
            scores_topic,
            decisions_topic,
            publishing: None,
            writing: None,
            fresh_profiles: HashMap::new(),
            batch_started: None,
            first_message: None,
            last_done: None,
            busy: Duration::ZERO,
            stages: Stages::default(),
            estimates: chainfold_platform::postgres::EstimatesCheck::new(&[
                "credit_score",
                "credit_profile",
            ]),
            config,
        };
        // Outputs a previous process committed but did not get to publish.
        scorer.relay().await?;
        Ok(scorer)
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Publishes what the outbox holds for the scores and decisions topics.
    async fn relay(&self) -> anyhow::Result<u64> {
        self.publisher().relay(&Held::default()).await
    }

    /// Relays what is pending if a row has waited past
    /// [`chainfold_platform::outbox::ABANDONED_AFTER`]: its writer did not relay it. Rows their
    /// writers (this scorer's or another replica's) are relaying are left to them.
    async fn relay_abandoned(&self) -> anyhow::Result<u64> {
        let topics = [self.scores_topic.clone(), self.decisions_topic.clone()];
        let after = chainfold_platform::outbox::ABANDONED_AFTER;
        if chainfold_platform::outbox::abandoned(&self.pool, &topics, after).await? {
            return self.relay().await;
        }
        Ok(0)
    }

    /// Sends a record the scorer cannot read to `<topic>.dlq` with the reason (awaited: the
    /// offset that skips it is committed only after).
    async fn dead_letter(&self, message: &Received, reason: &str) -> anyhow::Result<()> {
        dlq::send(
            &self.producer,
            &DeadLetter {
                topic: &message.topic,
                stage: "scorer",
                reason,
                origin: &message.origin(),
                key: message.key.as_deref(),
                payload: &message.payload,
            },
        )
        .await
    }

    /// Receives up to `batch_size` messages (waiting at most `idle` for the first), scores them and
    /// commits. `received == 0` means nothing arrived. Not pipelined (a write still in flight
    /// from the worker loop is finished first): for tests and benchmarks that time one batch.
    ///
    /// Everything the batch writes — attestations, retractions, scores, oracle marks, band-change
    /// decisions, their outbox records and the batch's offsets — commits in ONE transaction, the
    /// offsets as a compare-and-set on this member's claim. At the commit a task starts that
    /// relays the outbox to Kafka and refreshes Redis beside what comes next; the next batch
    /// awaits it before it writes (so records leave in commit order), and an idle scorer or a
    /// drain awaits it too. A crash anywhere replays the batch, which computes the same rows
    /// (keyed by event id) and outputs (keyed by output id); outbox rows a crash left are
    /// relayed when the scorer starts.
    pub async fn process_batch(&mut self, idle: Duration) -> anyhow::Result<Outcome> {
        let (mut outcome, _) = self.finish_write().await?;
        let (before, prepared) = self.prepare(idle).await?;
        outcome.add(&before);
        let Some(prepared) = prepared else {
            // Idle: the last batch's publishing finishes before the scorer reports idle, and
            // what a failed publishing left in the outbox goes now (see `step`).
            self.await_publishing(None).await?;
            self.relay_abandoned().await?;
            return Ok(outcome);
        };
        let first_at = prepared.first_at;
        outcome.add(&prepared.outcome);
        // The previous batch's publishing ends first (and counts as busy where it ran alone).
        self.await_publishing(Some(first_at)).await?;
        self.start_write(prepared).await?;
        let (written, _) = self.finish_write().await?;
        outcome.add(&written);
        self.busy += first_at.elapsed();
        Ok(outcome)
    }

    /// One step of the worker loop, pipelined: receives and computes a batch while the previous
    /// batch's write is in flight (its publishing starts as it commits), then finishes that
    /// write and starts this batch's. The outcome counts the messages this step received and
    /// the rows the writes it finished stored.
    ///
    /// Computing beside the previous write is safe because nothing it reads is written by it:
    /// the batch starts from the profiles the write in flight stores (held in memory, under
    /// the checks a stored profile passes: still a prefix of the history), or from the stored
    /// ones, an earlier prefix that folds to the same features; the bands that decide
    /// band-change decisions are read after the write has committed. A write that forgets
    /// profiles or retracts scores (a reorg) is finished before the next batch computes. A
    /// write refused (fenced) or failed drops the batch computed beside it: the member reads it
    /// again from what Postgres holds.
    async fn step(&mut self, wait: Duration) -> anyhow::Result<Outcome> {
        let (mut outcome, prepared) = self.prepare(wait).await?;
        let was_writing = self.writing.is_some();
        let (written, fenced) = self.finish_write().await?;
        outcome.add(&written);
        let Some(prepared) = prepared else {
            // Idle with nothing just committed: the last publishing finishes before the loop
            // sees an idle scorer (a publishing just started is awaited by the next idle step).
            // Then rows abandoned in the outbox are relayed from Postgres: a publishing that
            // failed after its commit (Postgres or the broker went away while it relayed) left
            // its rows there, and without this they would wait for the next batch to commit,
            // which on a quiet stream may never come.
            if !was_writing {
                self.await_publishing(None).await?;
                self.relay_abandoned().await?;
            }
            return Ok(outcome);
        };
        outcome.add(&prepared.outcome);
        if !fenced {
            self.start_write(prepared).await?;
        }
        Ok(outcome)
    }

    /// Receives a batch and computes its scores (see [`Scorer::process_batch`]); `None` when
    /// nothing arrived, or when the write in flight, finished first because it forgets profiles
    /// or retracts scores, was refused (the batch is read again). The outcome is that of any
    /// write it finished.
    async fn prepare(&mut self, idle: Duration) -> anyhow::Result<(Outcome, Option<Prepared>)> {
        let mut finished = Outcome::default();
        let batch = self
            .member
            .receive(self.config.batch_size, idle, Duration::from_millis(20))
            .await?;
        let first_at = Instant::now();
        let mut outcome = Outcome {
            received: batch.messages.len() as u64,
            ..Outcome::default()
        };
        if batch.messages.is_empty() {
            return Ok((finished, None));
        }
        self.first_message.get_or_insert(first_at);
        self.batch_started = Some(first_at);
        self.estimates.start(&self.pool);
        let Decoded {
            mut triggers,
            max_offset,
            sealed,
            attestations,
            swaps,
            rounds,
            retracted,
            reset,
        } = self.decode(&batch.messages, &mut outcome).await?;
        // Attestations first, in their own transaction (idempotent by id): the features of this
        // batch's scores read them.
        if !attestations.is_empty() {
            let mut tx = self.pool.begin().await?;
            store_attestations(&mut tx, &attestations).await?;
            tx.commit().await?;
        }
        let mut mark = first_at;
        let mut lap = |stage: &mut Duration| {
            let now = Instant::now();
            *stage += now - mark;
            mark = now;
        };
        lap(&mut self.stages.decode);
        if self.writing.as_ref().is_some_and(|w| w.reorg) {
            // The write in flight forgets profiles or retracts scores: it commits first.
            let (written, fenced) = self.finish_write().await?;
            finished.add(&written);
            if fenced {
                finished.received += outcome.received;
                return Ok((finished, None));
            }
            // (Counted by `finish_write` as waiting for the write.)
            let mut counted = Duration::ZERO;
            lap(&mut counted);
        }
        let projector = self.wait_for_projector(&max_offset, &sealed).await?;
        lap(&mut self.stages.wait_projector);
        // Swaps rescore only wallets with a lending history (a credit profile to move).
        triggers.extend(self.with_history(swaps).await?);
        let (moved, holders) = self.oracle_triggers(&rounds).await?;
        outcome.oracle_moves = moved;
        triggers.extend(holders);
        lap(&mut self.stages.triggers);
        if !retracted.is_empty() {
            // A trigger whose event a later message of the batch retracts is not scored.
            triggers.retain(|t| {
                !retracted.iter().any(|r| {
                    r.1 == t.event_id && r.3 == t.topic && r.4 == t.partition && r.5 > t.offset
                })
            });
        }
        // The blocks the batch waited to see sealed: their price points are whole.
        let sealed: HashMap<u64, i64> = sealed
            .iter()
            .filter_map(|(chain, need)| Some((*chain, need.block? as i64)))
            .collect();
        let computed = if self.config.resume_profiles {
            self.engine
                .compute(
                    &triggers,
                    &reset,
                    &self.fresh_profiles,
                    Some(&self.lending_topic),
                    &sealed,
                )
                .await?
        } else {
            let every: HashSet<WalletKey> = triggers
                .iter()
                .map(|t| (t.chain_id, t.wallet.clone()))
                .collect();
            self.engine
                .compute(&triggers, &every, &HashMap::new(), None, &sealed)
                .await?
        };
        outcome.attestations_expired = computed.expired;
        outcome.with_position = computed.with_position;
        outcome.profiles_resumed = computed.stats.resumed;
        outcome.full_reads = computed.stats.full_reads;
        outcome.history_rows_read = computed.stats.rows_read;
        outcome.behind = computed.behind;
        outcome.price_points_kept = computed.price_points_kept;
        self.stages.compute_reads += computed.reads;
        let scored = Scored::of(
            computed,
            &projector,
            &self.engine.version,
            &self.engine.sha256,
        )?;
        lap(&mut self.stages.compute);
        Ok((
            finished,
            Some(Prepared {
                first_at,
                outcome,
                advances: batch.advances,
                retracted,
                reset,
                scored,
                triggers,
            }),
        ))
    }

    /// Starts writing a prepared batch (the write in flight, if any, must be finished): reads
    /// the bands its wallets had (after every earlier write committed), then spawns the
    /// transaction.
    async fn start_write(&mut self, prepared: Prepared) -> anyhow::Result<()> {
        debug_assert!(self.writing.is_none(), "one write in flight at a time");
        let started = Instant::now();
        let bands_before = self.latest_bands(&prepared.triggers).await?;
        self.stages.compute += started.elapsed();
        self.stages.compute_reads += started.elapsed();
        let reorg = !prepared.retracted.is_empty() || !prepared.reset.is_empty();
        self.fresh_profiles = prepared.scored.profiles.iter().cloned().collect();
        let task = tokio::spawn(write_and_publish(
            self.writer(),
            self.publisher(),
            prepared,
            bands_before,
            self.publishing.take(),
        ));
        self.writing = Some(Writing { task, reorg });
        Ok(())
    }

    /// Awaits the write in flight, if any: when it committed, remembers its offsets and starts
    /// its publishing (after the previous batch's); when it was refused, reads its partitions
    /// again from Postgres and returns `true`. A failed write is the error (nothing of it was
    /// committed).
    async fn finish_write(&mut self) -> anyhow::Result<(Outcome, bool)> {
        let Some(Writing { task, .. }) = self.writing.take() else {
            return Ok((Outcome::default(), false));
        };
        let waited = Instant::now();
        let end = task.await.context("the write task");
        self.stages.wait_write += waited.elapsed();
        // Committed, Postgres holds them; refused or failed, they are no one's.
        self.fresh_profiles.clear();
        let end = end?;
        // Committed: its own publishing (started at the commit, after the previous one);
        // otherwise the previous batch's, handed back.
        self.publishing = end.publishing;
        match end.result? {
            Ok(written) => {
                self.member.committed(&written.advances);
                self.stages.write += written.took;
                self.stages.batches += 1;
                self.note_done(written.committed_at);
                Ok((written.outcome, false))
            }
            Err(fenced) => {
                tracing::warn!(%fenced, "scoring batch fenced; nothing of it was stored");
                self.member.recover(&fenced).await?;
                Ok((Outcome::default(), true))
            }
        }
    }

    /// The wall-clock time from the first message this scorer received to the last work it
    /// finished (a commit or a batch's publishing): what a run over a filled log took, with
    /// the group join before it and any idle wait after it excluded.
    pub fn span(&self) -> Duration {
        match (self.first_message, self.last_done) {
            (Some(first), Some(last)) => last.saturating_duration_since(first),
            _ => Duration::ZERO,
        }
    }

    fn note_done(&mut self, at: Instant) {
        self.last_done = Some(self.last_done.map_or(at, |last| last.max(at)));
    }

    /// What a batch's write needs (cheap clones of shared handles).
    fn writer(&self) -> Writer {
        Writer {
            pool: self.pool.clone(),
            group: self.member.group().to_owned(),
            version: self.engine.version.clone(),
            sha256: self.engine.sha256.clone(),
            policy: self.policy.clone(),
            scores_topic: self.scores_topic.clone(),
            decisions_topic: self.decisions_topic.clone(),
        }
    }

    /// What the publishing of a batch needs (cheap clones of shared handles).
    fn publisher(&self) -> Publisher {
        Publisher {
            pool: self.pool.clone(),
            producer: self.producer.clone(),
            redis: self.redis.clone(),
            prefix: self.config.redis.prefix.clone(),
            topics: [self.scores_topic.clone(), self.decisions_topic.clone()],
        }
    }

    /// Waits for the previous batch's publishing, if any, and counts its time: the relay and
    /// Redis stages, and as busy the part of it that did not run beside the batch that began
    /// at `next` (all of it when no batch began: idle, or draining).
    async fn await_publishing(&mut self, next: Option<Instant>) -> anyhow::Result<()> {
        let Some(Publishing { task, committed_at }) = self.publishing.take() else {
            return Ok(());
        };
        let waited = Instant::now();
        let times = task.await.context("the publishing task")??;
        self.stages.wait_publish += waited.elapsed();
        self.stages.relay += times.relay;
        self.stages.redis += times.redis;
        self.note_done(times.finished);
        let alone_until = next.map_or(times.finished, |n| n.min(times.finished));
        self.busy += alone_until.saturating_duration_since(committed_at);
        Ok(())
    }

    /// Sorts a batch's messages into what scoring them needs (see [`Decoded`]); a message that
    /// does not decode is dead-lettered with its reason and counted.
    async fn decode(
        &self,
        messages: &[Received],
        outcome: &mut Outcome,
    ) -> anyhow::Result<Decoded> {
        let mut d = Decoded::default();
        for message in messages {
            let (topic, partition, offset) = (&message.topic, &message.partition, &message.offset);
            if *topic == self.attestations_topic {
                let parsed = serde_json::from_slice::<Attestation>(&message.payload)
                    .map_err(|e| format!("could not decode attestation: {e}"))
                    .and_then(|a| a.verify(&self.config.attestation_issuers).map(|()| a));
                match parsed {
                    Ok(a) => {
                        d.triggers.push(Trigger {
                            chain_id: a.chain_id,
                            wallet: format!("{:#x}", a.wallet),
                            event_id: a.id().to_string(),
                            at: a.issued_at,
                            topic: topic.clone(),
                            partition: *partition,
                            offset: *offset,
                            block_number: None,
                        });
                        d.attestations.push((a, *partition, *offset));
                    }
                    Err(reason) => {
                        self.dead_letter(message, &reason).await?;
                        outcome.attestations_malformed += 1;
                    }
                }
                continue;
            }
            let entry = d
                .max_offset
                .entry((topic.clone(), *partition))
                .or_insert(*offset);
            *entry = (*entry).max(*offset);
            let env = match chainfold_domain::envelope::decode_envelope(&message.payload) {
                Ok(env) => env,
                Err(reason) => {
                    self.dead_letter(message, &reason).await?;
                    outcome.skipped += 1;
                    continue;
                }
            };
            let need = d.sealed.entry(env.chain_id).or_default();
            match env.block {
                Some(b) => need.block = need.block.max(Some(b.number)),
                None => {
                    let o = need
                        .records
                        .entry((topic.clone(), *partition))
                        .or_insert(*offset);
                    *o = (*o).max(*offset);
                }
            }
            if env.retracted {
                // A reorg orphaned the event: the scores it triggered go (and subscribers are
                // sent their retraction); the event's canonical copy, if any, scores anew.
                if *topic == self.lending_topic {
                    d.reset
                        .insert((env.chain_id, format!("{:#x}", env.partition_key())));
                }
                if let Some(block) = env.block {
                    d.retracted.push((
                        env.chain_id as i64,
                        env.event_id.to_string(),
                        block.number as i64,
                        topic.clone(),
                        *partition,
                        *offset,
                    ));
                }
                continue;
            }
            let trigger = |wallet: String, at: DateTime<Utc>| Trigger {
                chain_id: env.chain_id,
                wallet,
                event_id: env.event_id.to_string(),
                at,
                topic: topic.clone(),
                partition: *partition,
                offset: *offset,
                block_number: env.block.map(|b| b.number as i64),
            };
            match (&env.event, env.block_time) {
                // A lending action with a time: what `HistoryEvent::of` accepts, asked without
                // pricing the event (its USD arithmetic is the history read's, not the trigger's).
                (event, Some(at))
                    if *topic == self.lending_topic && event.lending_action().is_some() =>
                {
                    d.triggers
                        .push(trigger(format!("{:#x}", env.partition_key()), at));
                }
                (DefiEvent::Swap(swap), Some(at)) if *topic == self.amm_topic => {
                    d.swaps.push(trigger(format!("{:#x}", swap.sender), at));
                    if swap.recipient != swap.sender {
                        d.swaps.push(trigger(format!("{:#x}", swap.recipient), at));
                    }
                }
                (DefiEvent::OracleUpdate(update), Some(at)) if *topic == self.oracle_topic => {
                    let price: Option<f64> = update.price().to_string().parse().ok();
                    match (update.asset, price) {
                        (Some(asset), Some(price)) if price > 0.0 => d.rounds.push(OracleRound {
                            asset: format!("{asset:#x}"),
                            price,
                            trigger: trigger(String::new(), at),
                        }),
                        _ => outcome.skipped += 1,
                    }
                }
                _ => outcome.skipped += 1,
            }
        }
        Ok(d)
    }

    /// Waits until the projector's stored offsets pass every offset of the batch and, per
    /// chain, a seal of the batch's last block (or, for events without blocks, of the records
    /// themselves) has been folded with everything below it; returns the offsets.
    async fn wait_for_projector(
        &self,
        max_offset: &BTreeMap<(String, i32), i64>,
        sealed: &BTreeMap<u64, SealNeed>,
    ) -> anyhow::Result<HashMap<(String, i32), i64>> {
        let started = Instant::now();
        loop {
            let folded: HashMap<(String, i32), i64> =
                chainfold_platform::offsets::load(&self.pool, &self.config.projector_group)
                    .await?
                    .into_iter()
                    .collect();
            let mut needed: BTreeMap<(String, i32), i64> =
                max_offset.iter().map(|(k, o)| (k.clone(), o + 1)).collect();
            let mut unsealed = false;
            for (chain, need) in sealed {
                match self.seal_covering(*chain, need).await? {
                    Some(through) => {
                        for t in through {
                            let n = needed.entry((t.topic, t.partition)).or_insert(0);
                            *n = (*n).max(t.next_offset);
                        }
                    }
                    None => unsealed = true,
                }
            }
            if !unsealed
                && needed
                    .iter()
                    .all(|(k, n)| folded.get(k).is_some_and(|next| next >= n))
            {
                return Ok(folded);
            }
            anyhow::ensure!(
                started.elapsed() < self.config.projector_wait,
                "the projector (group {}) has not folded the events being scored after {:?}: is it running?",
                self.config.projector_group,
                self.config.projector_wait
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// What must be folded for `need` to be whole: the bounds of every folded seal of `chain`
    /// up to the first one covering it (a seal bounds only its own stretch; the blocks before
    /// it were sealed by earlier seals, which other partitions may hold). `None` while no folded
    /// seal covers it yet.
    async fn seal_covering(
        &self,
        chain: u64,
        need: &SealNeed,
    ) -> anyhow::Result<Option<Vec<chainfold_domain::seal::Through>>> {
        use chainfold_store::seals;
        let mut bound: Vec<seals::Bound> = Vec::new();
        if let Some(block) = need.block {
            if !seals::covers_block(&self.pool, chain as i64, block as i64).await? {
                return Ok(None);
            }
            bound.extend(seals::bounds_to_block(&self.pool, chain as i64, block as i64).await?);
        }
        for ((topic, partition), offset) in &need.records {
            // The first seal holding the record, and every seal before it.
            let Some(seal) =
                seals::first_holding(&self.pool, chain as i64, topic, *partition, *offset).await?
            else {
                return Ok(None);
            };
            bound.extend(seals::bounds_through_seal(&self.pool, chain as i64, &seal).await?);
        }
        Ok(Some(
            bound
                .into_iter()
                .map(
                    |(topic, partition, next_offset)| chainfold_domain::seal::Through {
                        topic,
                        partition,
                        next_offset,
                    },
                )
                .collect(),
        ))
    }

    /// The triggers whose wallet has a lending history on its chain.
    async fn with_history(&self, triggers: Vec<Trigger>) -> anyhow::Result<Vec<Trigger>> {
        if triggers.is_empty() {
            return Ok(triggers);
        }
        let chains: Vec<i64> = triggers.iter().map(|t| t.chain_id as i64).collect();
        let wallets: Vec<String> = triggers.iter().map(|t| t.wallet.clone()).collect();
        let known: std::collections::HashSet<(u64, String)> =
            chainfold_store::lending::wallets_with_history(&self.pool, &chains, &wallets)
                .await?
                .into_iter()
                .map(|(c, w)| (c as u64, w))
                .collect();
        Ok(triggers
            .into_iter()
            .filter(|t| known.contains(&(t.chain_id, t.wallet.clone())))
            .collect())
    }

    /// Oracle rounds against their asset's mark: the first round of an asset sets the mark, a
    /// round that moves the price beyond the threshold from the mark rescores every wallet
    /// holding or owing the asset and becomes the new mark. The marks are replayed from the
    /// asset's rounds in `oracle_update` (folded, sealed, canonical) rather than kept by the
    /// scorer, so a round a reorg orphaned or a replica that saw other rounds first cannot move
    /// them. Returns (moves, triggers).
    async fn oracle_triggers(&self, rounds: &[OracleRound]) -> anyhow::Result<(u64, Vec<Trigger>)> {
        if rounds.is_empty() {
            return Ok((0, Vec::new()));
        }
        // The rounds that move their asset.
        let mut moving: std::collections::HashSet<String> = Default::default();
        let assets: std::collections::BTreeSet<(u64, String)> = rounds
            .iter()
            .map(|r| (r.trigger.chain_id, r.asset.clone()))
            .collect();
        for (chain, asset) in assets {
            let last_block = rounds
                .iter()
                .filter(|r| r.trigger.chain_id == chain && r.asset == asset)
                .filter_map(|r| r.trigger.block_number)
                .max();
            let history = chainfold_store::prices::oracle_rounds(
                &self.pool,
                chain as i64,
                &asset,
                last_block,
            )
            .await?;
            let mut mark: Option<(String, f64)> = None;
            for (event_id, price) in history {
                match &mark {
                    None => mark = Some((event_id, price)),
                    Some((_, m))
                        if *m > 0.0 && (price / m - 1.0).abs() >= self.config.oracle_threshold =>
                    {
                        moving.insert(event_id.clone());
                        mark = Some((event_id, price));
                    }
                    _ => {}
                }
            }
        }
        let mut moves = 0;
        let mut triggers = Vec::new();
        for round in rounds {
            if !moving.contains(&round.trigger.event_id) {
                continue;
            }
            moves += 1;
            // The holders as of the round's block (sealed and folded): not whoever the projector
            // has folded by now, which depends on how far it got.
            let holders = chainfold_store::lending::holders(
                &self.pool,
                round.trigger.chain_id as i64,
                &round.asset,
                round.trigger.block_number,
            )
            .await?;
            tracing::debug!(asset = %round.asset, price = round.price, holders = holders.len(), "oracle move rescores holders");
            for wallet in holders {
                let mut t = round.trigger.clone();
                t.wallet = wallet;
                triggers.push(t);
            }
        }
        Ok((moves, triggers))
    }

    /// Each batch wallet's band before the batch.
    async fn latest_bands(
        &self,
        triggers: &[Trigger],
    ) -> anyhow::Result<HashMap<(u64, String), String>> {
        let by_wallet: std::collections::BTreeSet<(u64, &str)> = triggers
            .iter()
            .map(|t| (t.chain_id, t.wallet.as_str()))
            .collect();
        if by_wallet.is_empty() {
            return Ok(HashMap::new());
        }
        let chains: Vec<i64> = by_wallet.iter().map(|(c, _)| *c as i64).collect();
        let wallets: Vec<String> = by_wallet.iter().map(|(_, w)| (*w).to_owned()).collect();
        let rows = chainfold_store::scores::latest_bands(&self.pool, &chains, &wallets).await?;
        Ok(rows
            .into_iter()
            .map(|(c, w, b)| ((c as u64, w), b))
            .collect())
    }

    /// Scores until a batch arrives empty after `idle` (tests, backfills). The first batch
    /// waits up to 30 s: joining the group (and taking over a restarted member's partitions)
    /// comes first.
    pub async fn run_until_idle(&mut self, idle: Duration) -> anyhow::Result<Outcome> {
        chainfold_platform::worker::run_until_idle(self, idle).await
    }

    /// Scores until `shutdown` resolves (the batch in hand commits first).
    pub async fn run_until_stopped(
        mut self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        chainfold_platform::worker::run_until_stopped(
            &mut self,
            Duration::from_millis(500),
            chainfold_platform::worker::SHUTDOWN_GRACE,
            shutdown,
        )
        .await
    }
}

impl chainfold_platform::worker::BatchWorker for Scorer {
    type Outcome = Outcome;

    fn process_batch(
        &mut self,
        wait: Duration,
    ) -> impl std::future::Future<Output = anyhow::Result<Outcome>> + Send {
        self.step(wait)
    }

    fn received(outcome: &Outcome) -> u64 {
        outcome.received
    }

    fn add(total: &mut Outcome, outcome: &Outcome) {
        total.add(outcome);
    }

    async fn recover(&mut self, err: anyhow::Error, backoff: &mut Duration) -> anyhow::Result<()> {
        // The write in flight first: finished if it committed (a refused or failed one stored
        // nothing). Then what was not committed is read again once the service is back.
        if let Err(err) = self.finish_write().await {
            tracing::warn!(error = %format!("{err:#}"), "the scoring write in flight failed; nothing of it was stored");
        }
        self.member.retry_after(err, backoff, "scoring batch").await
    }

    fn settling(&self) -> bool {
        self.member.has_pending_assignment() || self.writing.is_some()
    }

    async fn drain(&mut self) -> anyhow::Result<Outcome> {
        let (written, _) = self.finish_write().await?;
        self.await_publishing(None).await?;
        Ok(written)
    }
}

/// A batch received and computed, ready to be written.
struct Prepared {
    first_at: Instant,
    outcome: Outcome,
    advances: Vec<chainfold_platform::offsets::Advance>,
    retracted: Vec<(i64, String, i64, String, i32, i64)>,
    reset: HashSet<WalletKey>,
    /// Its scores, rendered with the projector's offsets the features were read at.
    scored: Scored,
    triggers: Vec<Trigger>,
}

/// Each score's chain, its trigger's time and the score, aligned with a [`Rendered`] (whose rows
/// hold its wallet and event id).
type ScoreTimes = Vec<(u64, DateTime<Utc>, Score)>;

/// A batch's scores, owning what their write and publishing need (the write runs apart from
/// the batch).
struct Scored {
    rows: ScoreTimes,
    /// The profiles to store.
    profiles: Vec<(WalletKey, CreditProfile)>,
    /// Each row as stored and as published (aligned with `rows`), rendered with the batch's
    /// compute, so the write holds its transaction only for Postgres's own work.
    rendered: Rendered,
}

/// The rows of a batch's scores as `credit_score` takes them, and each score's output id and
/// published message, in the order of the scores.
struct Rendered {
    scores: chainfold_store::scores::NewScores,
    messages: Vec<(String, std::sync::Arc<str>)>,
}

impl Scored {
    fn of(
        computed: Computed<'_>,
        projector: &HashMap<(String, i32), i64>,
        version: &str,
        sha256: &str,
    ) -> anyhow::Result<Scored> {
        let (rows, rendered) = render(computed.rows, &computed.health, projector, version, sha256)?;
        Ok(Scored {
            rows,
            profiles: computed.profiles,
            rendered,
        })
    }
}

/// Renders scores (with each one's account health factor, aligned) for the write: each score's
/// reasons are serialized once, straight from their type, and that text is both the row's
/// `reasons` and the message's (spliced in, not serialized again); the outbox record and the
/// Redis copies use the message's text. `projector` gives the projector offset each row was
/// read at. Each message is serialized into one reused buffer and copied out once, at its size
/// (a fresh `String` per message grew through five allocations to hold its ~1 KB).
fn render(
    rows: Vec<(u64, String, &Trigger, Score)>,
    health: &[Option<f64>],
    projector: &HashMap<(String, i32), i64>,
    version: &str,
    sha256: &str,
) -> anyhow::Result<(ScoreTimes, Rendered)> {
    let mut scores = chainfold_store::scores::NewScores::default();
    let mut messages = Vec::with_capacity(rows.len());
    let mut kept = Vec::with_capacity(rows.len());
    let mut buffer: Vec<u8> = Vec::with_capacity(4096);
    for ((chain, w, t, s), health) in rows.into_iter().zip(health) {
        let reasons = serde_json::value::to_raw_value(&s.reasons)?;
        let output_id = score_output_id(chain as i64, &w, &t.event_id);
        buffer.clear();
        serde_json::to_writer(
            &mut buffer,
            &Published {
                chain_id: chain,
                wallet: &w,
                score: s.score,
                band: s.band,
                probability_of_liquidation: s.probability_of_liquidation,
                reasons: &reasons,
                model_version: version,
                model_sha256: sha256,
                computed_at: t.at,
                event_id: &t.event_id,
                provenance: ProvenanceRef {
                    topic: &t.topic,
                    partition: t.partition,
                    offset: t.offset,
                    block_number: t.block_number,
                },
                output_id: &output_id,
            },
        )?;
        let published: std::sync::Arc<str> = std::str::from_utf8(&buffer)?.into();
        messages.push((output_id, published));
        let projector_next_offset = projector
            .iter()
            .find(|((topic, partition), _)| *partition == t.partition && *topic == t.topic)
            .map(|(_, next)| *next)
            .unwrap_or_default();
        scores.push(chainfold_store::scores::NewScore {
            chain_id: chain as i64,
            wallet: w,
            score: s.score,
            band: s.band.name().to_owned(),
            probability_of_liquidation: s.probability_of_liquidation,
            reasons: Box::<str>::from(reasons).into(),
            computed_at: t.at,
            event_id: t.event_id.clone(),
            kafka_topic: t.topic.clone(),
            kafka_partition: t.partition,
            kafka_offset: t.offset,
            projector_next_offset,
            block_number: t.block_number,
            health_factor: *health,
        });
        kept.push((chain, t.at, s));
    }
    Ok((kept, Rendered { scores, messages }))
}

/// The worker loop's write in flight.
struct Writing {
    task: tokio::task::JoinHandle<WriteEnd>,
    /// It forgets profiles or retracts scores: the next batch computes after it commits.
    reorg: bool,
}

/// How a write ended, and the publishing the scorer holds after it.
struct WriteEnd {
    result: anyhow::Result<Result<Written, Fenced>>,
    /// Committed: the batch's publishing; otherwise the previous one, handed back.
    publishing: Option<Publishing>,
}

/// Writes a batch (see [`write`]) and, once it committed, starts its publishing right away
/// (after `previous`, which it awaits first: records leave in commit order), so a committed
/// batch's records and Redis copies do not wait for the next batch to arrive.
async fn write_and_publish(
    writer: Writer,
    publisher: Publisher,
    prepared: Prepared,
    bands_before: HashMap<(u64, String), String>,
    previous: Option<Publishing>,
) -> WriteEnd {
    match write(writer, prepared, bands_before).await {
        Ok(Ok(mut written)) => {
            let (stored, decisions, unscored, held) = (
                std::mem::take(&mut written.stored),
                std::mem::take(&mut written.decisions),
                std::mem::take(&mut written.unscored),
                std::mem::take(&mut written.held),
            );
            let task = tokio::spawn(publish(
                publisher,
                previous.map(|p| p.task),
                Committed {
                    stored,
                    decisions,
                    unscored,
                    held,
                },
            ));
            WriteEnd {
                publishing: Some(Publishing {
                    task,
                    committed_at: written.committed_at,
                }),
                result: Ok(Ok(written)),
            }
        }
        other => WriteEnd {
            result: other,
            publishing: previous,
        },
    }
}

/// What a committed write stored.
struct Written {
    advances: Vec<chainfold_platform::offsets::Advance>,
    stored: Vec<StoredScore>,
    decisions: Vec<DecisionRecord>,
    unscored: Vec<(i64, String)>,
    /// The batch's outbox records, kept to relay from memory.
    held: Held,
    outcome: Outcome,
    took: Duration,
    committed_at: Instant,
}

/// What a committed batch publishes: its scores, decisions and retractions (the Redis copies)
/// and its outbox records.
struct Committed {
    stored: Vec<StoredScore>,
    decisions: Vec<DecisionRecord>,
    unscored: Vec<(i64, String)>,
    held: Held,
}

/// The handles a batch's write uses (see [`write`]).
struct Writer {
    pool: PgPool,
    group: String,
    version: String,
    sha256: String,
    policy: Policy,
    scores_topic: String,
    decisions_topic: String,
}

/// Stores a computed batch in one transaction: retractions, profiles, scores, band-change
/// decisions and their outbox records, with the batch's offsets (a compare-and-set on the
/// member's claim: `Fenced`, nothing stored, when another member took a partition).
async fn write(
    writer: Writer,
    prepared: Prepared,
    bands_before: HashMap<(u64, String), String>,
) -> anyhow::Result<Result<Written, Fenced>> {
    let started = Instant::now();
    let Prepared {
        advances,
        retracted,
        reset,
        scored,
        ..
    } = prepared;
    let mut tx = writer.pool.begin().await?;
    let mut unscored = Vec::new();
    if !retracted.is_empty() {
        unscored = retract_scores(&mut tx, &retracted).await?;
    }
    profiles::forget(&mut tx, &reset).await?;
    profiles::store(&mut tx, &scored.profiles).await?;
    let stored = writer.insert_scores(&mut tx, scored).await?;
    let decisions = writer.band_changes(&mut tx, &bands_before, &stored).await?;
    let mut outputs: Vec<Output> = stored
        .iter()
        .map(|s| Output {
            topic: writer.scores_topic.clone(),
            key: s.wallet.clone(),
            output_id: s.output_id.clone(),
            // The record is rendered whole from its `credit_score` row: the outbox row names it.
            payload: chainfold_platform::outbox::Payload::Sourced {
                text: s.published.clone(),
                source: SCORE_RECORDS,
            },
        })
        .collect();
    for d in &decisions {
        outputs.push(chainfold_store::decisions::output(
            &writer.decisions_topic,
            d,
        )?);
    }
    let queued = chainfold_platform::outbox::enqueue(&mut tx, &outputs).await?;
    match chainfold_platform::offsets::advance(&mut tx, &writer.group, &advances).await {
        Ok(()) => {}
        Err(OffsetError::Fenced(fenced)) => return Ok(Err(fenced)),
        Err(OffsetError::Postgres(err)) => return Err(err.into()),
    }
    chainfold_platform::failpoint::hit("score.before_commit");
    tx.commit()
        .await
        .context("could not commit a scoring batch")?;
    chainfold_platform::failpoint::hit("score.after_commit");
    let committed_at = Instant::now();
    let outcome = Outcome {
        retracted: unscored.len() as u64,
        scored: stored.len() as u64,
        decisions: decisions.len() as u64,
        ..Outcome::default()
    };
    Ok(Ok(Written {
        advances,
        stored,
        decisions,
        unscored,
        held: Held::new(queued, outputs),
        outcome,
        took: committed_at - started,
        committed_at,
    }))
}

impl Writer {
    /// Inserts the computed scores (one statement; rows already stored, a replay, come back as
    /// nothing) and returns the new ones with their published message (see [`render`]).
    async fn insert_scores(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        scored: Scored,
    ) -> anyhow::Result<Vec<StoredScore>> {
        let Scored {
            rows,
            rendered: Rendered { scores, messages },
            ..
        } = scored;
        // The positions stored (ascending): each stored row once, even if the batch held its
        // event twice.
        let inserted =
            chainfold_store::scores::insert(tx, &self.version, &self.sha256, &scores).await?;
        let (wallets, events) = scores.into_wallets_and_events();
        let mut inserted = inserted.into_iter().peekable();
        Ok(rows
            .into_iter()
            .zip(messages)
            .zip(wallets.into_iter().zip(events))
            .enumerate()
            .filter(|(i, _)| inserted.next_if_eq(i).is_some())
            .map(
                |(_, (((chain, at, s), (output_id, published)), (wallet, event_id)))| StoredScore {
                    chain,
                    wallet,
                    event_id,
                    at,
                    score: s.score,
                    band: s.band,
                    probability_of_liquidation: s.probability_of_liquidation,
                    output_id,
                    published,
                },
            )
            .collect())
    }

    /// For each wallet whose newly stored scores left its band and that has requested credit:
    /// its last request decided again with the latest score, stored in `tx`. Returns the new
    /// decisions (their outbox records are queued by the caller).
    async fn band_changes(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        before: &HashMap<(u64, String), String>,
        stored: &[StoredScore],
    ) -> anyhow::Result<Vec<DecisionRecord>> {
        // The last stored score per wallet, if its band differs from the band before the batch.
        let mut last: BTreeMap<(u64, String), &StoredScore> = BTreeMap::new();
        for s in stored {
            last.insert((s.chain, s.wallet.clone()), s);
        }
        let mut crossed: BTreeMap<u64, Vec<&StoredScore>> = BTreeMap::new();
        for ((chain, wallet), s) in last {
            let was = before.get(&(chain, wallet));
            if was.is_some_and(|b| s.band.name() != b) {
                crossed.entry(chain).or_default().push(s);
            }
        }
        let mut new = Vec::new();
        for (chain, list) in crossed {
            let wallets: Vec<String> = list.iter().map(|s| s.wallet.clone()).collect();
            let requests =
                chainfold_store::decisions::latest_requests(&self.pool, chain, &wallets).await?;
            for request in requests {
                let Some(s) = list.iter().find(|s| s.wallet == request.wallet) else {
                    continue;
                };
                let snapshot = chainfold_store::decisions::ScoreSnapshot {
                    score: s.score,
                    band: s.band,
                    probability_of_liquidation: s.probability_of_liquidation,
                    event_id: s.event_id.clone(),
                    model_version: self.version.clone(),
                };
                let record = chainfold_store::decisions::decide_band_change(
                    &self.pool,
                    &self.policy,
                    &request,
                    &snapshot,
                    s.at,
                )
                .await?;
                if chainfold_store::decisions::store(&mut **tx, &record).await? {
                    new.push(record);
                }
            }
        }
        Ok(new)
    }
}

/// The handles a batch's publishing uses (see [`publish`]).
struct Publisher {
    pool: PgPool,
    producer: FutureProducer,
    redis: redis::aio::ConnectionManager,
    /// The Redis key prefix.
    prefix: String,
    /// The scores and decisions topics (the outbox rows relayed).
    topics: [String; 2],
}

/// A batch's publishing, running beside the next batch.
struct Publishing {
    task: tokio::task::JoinHandle<anyhow::Result<PublishTimes>>,
    committed_at: Instant,
}

/// How long a batch's publishing took, and when it finished.
struct PublishTimes {
    relay: Duration,
    redis: Duration,
    finished: Instant,
}

/// Publishes a committed batch, after the publishing of the batch before it (`after`): what
/// the outbox holds (its records, sent from memory, and any a failed relay or another replica
/// left, read from Postgres) to Kafka, and beside it the Redis copies. Redis is best effort
/// (rebuildable from Postgres); a relay failure is the error (the records stay in the outbox
/// for the next relay).
async fn publish(
    publisher: Publisher,
    after: Option<tokio::task::JoinHandle<anyhow::Result<PublishTimes>>>,
    committed: Committed,
) -> anyhow::Result<PublishTimes> {
    let Committed {
        stored,
        decisions,
        unscored,
        held,
    } = committed;
    // The previous batch's publishing first (its times are added to these).
    let (mut relay, mut redis) = (Duration::ZERO, Duration::ZERO);
    if let Some(previous) = after {
        let times = previous.await.context("the publishing task")??;
        relay += times.relay;
        redis += times.redis;
    }
    // The relay and the Redis copies side by side: the copies are read from Postgres (which
    // holds the batch since its commit) and kept newest-first by version, so they need not
    // wait for the broker's acknowledgements.
    let started = Instant::now();
    let mut connection = publisher.redis.clone();
    let (relayed, refreshed) = tokio::join!(
        async {
            let relayed = publisher.relay(&held).await;
            (relayed, Instant::now())
        },
        async {
            publisher
                .refresh_redis(&mut connection, &stored, &decisions, unscored)
                .await;
            Instant::now()
        },
    );
    relayed.0?;
    drop(held);
    Ok(PublishTimes {
        relay: relay + (relayed.1 - started),
        redis: redis + (refreshed - started),
        finished: relayed.1.max(refreshed),
    })
}

impl Publisher {
    /// Relays what the outbox holds for the scores and decisions topics, `held`'s rows from
    /// memory.
    async fn relay(&self, held: &Held) -> anyhow::Result<u64> {
        chainfold_platform::outbox::relay_with(
            &self.pool,
            &self.producer,
            &self.topics,
            1000,
            held,
            &sources(),
        )
        .await
    }

    /// The Redis score cache and pub/sub after a commit (best effort: rebuildable from Postgres).
    async fn refresh_redis(
        &self,
        connection: &mut redis::aio::ConnectionManager,
        stored: &[StoredScore],
        decisions: &[DecisionRecord],
        unscored: Vec<(i64, String)>,
    ) {
        // Each wallet's last score of the batch (by position).
        let mut last: HashMap<(u64, &str), usize> = HashMap::with_capacity(stored.len());
        for (i, s) in stored.iter().enumerate() {
            last.insert((s.chain, s.wallet.as_str()), i);
        }
        // The API's copy of each touched wallet's latest score, newest version kept.
        let mut touched: std::collections::BTreeSet<(i64, String)> = unscored.into_iter().collect();
        touched.extend(
            last.keys()
                .map(|(chain, wallet)| (*chain as i64, (*wallet).to_owned())),
        );
        let touched: Vec<(i64, String)> = touched.into_iter().collect();
        if let Err(err) = chainfold_store::latest::refresh(
            connection,
            &self.pool,
            &self.prefix,
            chainfold_store::latest::Kind::Score,
            &touched,
        )
        .await
        {
            tracing::warn!(error = %format!("{err:#}"), "could not update the API's Redis scores");
        }
        // Each score is announced; the cache keeps the wallet's last score of the batch, so
        // only that one is written (the writes of the others would be overwritten in the same
        // pipeline). Sent in pipelines of about a thousand commands, in order: one pipeline of
        // a whole batch's ~10 MB built a buffer of that size each time (fresh pages).
        let mut pipe = redis::pipe();
        let mut queued = 0;
        let channel = format!("{}scores", self.prefix);
        for (i, s) in stored.iter().enumerate() {
            // The scores topic's record: the message with its output id.
            let json: &str = &s.published;
            if last.get(&(s.chain, s.wallet.as_str())) == Some(&i) {
                let key = format!("{}score:{}:{}", self.prefix, s.chain, s.wallet);
                pipe.hset_multiple(
                    &key,
                    &[
                        ("score", s.score.to_string()),
                        ("band", format!("{:?}", s.band)),
                        ("json", json.to_owned()),
                    ],
                )
                .ignore();
            }
            pipe.publish(&channel, json).ignore();
            queued += 1;
            if queued >= 1000 || i + 1 == stored.len() {
                if let Err(err) = pipe.query_async::<()>(connection).await {
                    tracing::warn!(%err, "could not update the Redis score cache");
                    break;
                }
                pipe.clear();
                queued = 0;
            }
        }
        let prefix = self.prefix.clone();
        for d in decisions {
            chainfold_store::decisions::announce(connection, &prefix, d).await;
        }
    }
}

/// What a batch's events of one chain need sealed before their features are read.
#[derive(Debug, Default)]
struct SealNeed {
    /// The last block among the events.
    block: Option<u64>,
    /// Events without blocks: the last offset per partition.
    records: BTreeMap<(String, i32), i64>,
}

/// A score stored by a batch, with the message published for it (a
/// [`ScoreMessage`](chainfold_domain::messages::ScoreMessage)).
#[derive(Debug, Clone)]
struct StoredScore {
    chain: u64,
    wallet: String,
    event_id: String,
    at: DateTime<Utc>,
    score: i32,
    band: chainfold_domain::scorecard::Band,
    probability_of_liquidation: Option<f64>,
    output_id: String,
    /// The message as published on the scores topic (with its output id), serialized once and
    /// shared with the batch's outbox output.
    published: std::sync::Arc<str>,
}

/// A score as published on the scores topic: a
/// [`ScoreMessage`](chainfold_domain::messages::ScoreMessage)'s fields in its order, borrowed
/// from the computed score (the reasons as their serialized text), then the output id. The
/// test `a_published_score_is_the_message_with_its_output_id` holds it to serializing the
/// message itself.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Published<'a> {
    chain_id: u64,
    wallet: &'a str,
    score: i32,
    band: chainfold_domain::scorecard::Band,
    probability_of_liquidation: Option<f64>,
    reasons: &'a serde_json::value::RawValue,
    model_version: &'a str,
    model_sha256: &'a str,
    computed_at: DateTime<Utc>,
    event_id: &'a str,
    provenance: ProvenanceRef<'a>,
    output_id: &'a str,
}

/// The outbox source of score records: their `credit_score` rows (see [`sources`]).
pub const SCORE_RECORDS: &str = "credit_score";

/// What a relay of the scores topic needs to rebuild the records its writer did not relay from
/// memory (a crash after the commit, a failed relay): each score record rendered again from its
/// `credit_score` row, the same text the scorer rendered at its commit.
pub fn sources() -> chainfold_platform::outbox::Sources {
    chainfold_platform::outbox::Sources::default().with(SCORE_RECORDS, rebuild_score_records)
}

/// A score's output id: `score:<chain>:<wallet>:<event id>`, the record's identity on the
/// scores topic (a replay computes the same one).
fn score_output_id(chain: i64, wallet: &str, event_id: &str) -> String {
    use std::fmt::Write as _;
    // Sized once: `format!` grew it through several allocations (one per score of a batch).
    let mut id = String::with_capacity(6 + 20 + 2 + wallet.len() + event_id.len());
    id.push_str("score:");
    let _ = write!(id, "{chain}");
    id.push(':');
    id.push_str(wallet);
    id.push(':');
    id.push_str(event_id);
    id
}

/// The (chain, wallet, event id) a [`score_output_id`] names (a wallet has no `:`; an event id
/// may).
fn parse_score_output_id(id: &str) -> Option<(i64, &str, &str)> {
    let mut parts = id.splitn(4, ':');
    if parts.next()? != "score" {
        return None;
    }
    let chain = parts.next()?.parse().ok()?;
    Some((chain, parts.next()?, parts.next()?))
}

/// [`Rebuild`](chainfold_platform::outbox::Rebuild) of [`SCORE_RECORDS`].
fn rebuild_score_records<'a>(
    pool: &'a PgPool,
    output_ids: &'a [String],
) -> chainfold_platform::outbox::Rebuilding<'a> {
    Box::pin(score_records(pool, output_ids))
}

/// The record of each score `output_ids` names, rendered from its row (`None`: retracted).
async fn score_records(
    pool: &PgPool,
    output_ids: &[String],
) -> anyhow::Result<Vec<Option<String>>> {
    let (mut chains, mut wallets, mut events) = (Vec::new(), Vec::new(), Vec::new());
    for id in output_ids {
        let (chain, wallet, event) = parse_score_output_id(id)
            .with_context(|| format!("`{id}` is not a score's output id"))?;
        chains.push(chain);
        wallets.push(wallet.to_owned());
        events.push(event.to_owned());
    }
    chainfold_store::scores::records(pool, &chains, &wallets, &events)
        .await?
        .iter()
        .map(|r| r.as_ref().map(score_record).transpose())
        .collect()
}

/// A stored score's record, as [`render`] rendered it before the commit.
fn score_record(r: &chainfold_store::scores::ScoreRow<String>) -> anyhow::Result<String> {
    let output_id = score_output_id(r.chain_id, &r.wallet, &r.event_id);
    let band = chainfold_domain::scorecard::Band::from_name(&r.band)
        .with_context(|| format!("score {output_id} has no band named {}", r.band))?;
    let reasons: &serde_json::value::RawValue = serde_json::from_str(&r.reasons)
        .with_context(|| format!("score {output_id} has reasons that are not JSON"))?;
    let computed_at = r
        .computed_at
        .with_context(|| format!("score {output_id} has no time"))?;
    Ok(serde_json::to_string(&Published {
        chain_id: u64::try_from(r.chain_id)?,
        wallet: &r.wallet,
        score: r.score,
        band,
        probability_of_liquidation: r.probability_of_liquidation,
        reasons,
        model_version: &r.model_version,
        model_sha256: &r.model_sha256,
        computed_at,
        event_id: &r.event_id,
        provenance: ProvenanceRef {
            topic: &r.kafka_topic,
            partition: r.kafka_partition,
            offset: r.kafka_offset,
            block_number: r.block_number,
        },
        output_id: &output_id,
    })?)
}

/// [`Provenance`](chainfold_domain::messages::Provenance), borrowed.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct ProvenanceRef<'a> {
    topic: &'a str,
    partition: i32,
    offset: i64,
    block_number: Option<i64>,
}

/// Deletes the scores that orphaned events triggered (the feed trigger records each as a
/// retraction for subscribers). Returns how many went.
async fn retract_scores(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    retracted: &[(i64, String, i64, String, i32, i64)],
) -> anyhow::Result<Vec<(i64, String)>> {
    let chains: Vec<i64> = retracted.iter().map(|r| r.0).collect();
    let events: Vec<String> = retracted.iter().map(|r| r.1.clone()).collect();
    let blocks: Vec<i64> = retracted.iter().map(|r| r.2).collect();
    Ok(chainfold_store::scores::retract(tx, &chains, &events, &blocks).await?)
}

/// Stores valid attestations (idempotent by their id) before the scores that use them.
async fn store_attestations(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    list: &[(Attestation, i32, i64)],
) -> anyhow::Result<()> {
    for (a, partition, offset) in list {
        chainfold_store::attestations::insert(tx, a, *partition, *offset).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_score_output_id_names_its_chain_wallet_and_event_whatever_the_event_holds() {
        for event in ["137:0xabc:7", "e", "a:b:c:d", ""] {
            let id = score_output_id(137, "0x00000000000000000000000000000000000000aa", event);
            assert_eq!(
                parse_score_output_id(&id),
                Some((137, "0x00000000000000000000000000000000000000aa", event))
            );
        }
        assert_eq!(parse_score_output_id("alert:1:0xa:e"), None);
        assert_eq!(parse_score_output_id("score:x:0xa:e"), None);
        assert_eq!(parse_score_output_id("score:1:0xa"), None);
    }
    use chainfold_domain::messages::{Provenance, ScoreMessage};
    use chainfold_domain::scorecard::{Band, Reason};

    /// The message with its output id, serialized as a whole (how it was published before the
    /// reasons were spliced in).
    #[derive(serde::Serialize)]
    struct Whole<'a> {
        #[serde(flatten)]
        message: &'a ScoreMessage,
        #[serde(rename = "outputId")]
        output_id: &'a str,
    }

    #[test]
    fn a_published_score_is_the_message_with_its_output_id() {
        let reasons = vec![
            Reason {
                code: "LIQUIDATED".into(),
                description: "was liquidated \"twice\"\t\\ é 😀".into(),
                impact: -41.25,
            },
            Reason {
                code: "AGE".into(),
                description: "old wallet".into(),
                impact: 1e-7,
            },
        ];
        for (probability, block, band, reasons) in [
            (
                Some(0.123_456_789_012_345_6),
                Some(64_000_000),
                Band::Fair,
                reasons,
            ),
            (None, None, Band::Excellent, Vec::new()),
        ] {
            let message = ScoreMessage {
                chain_id: 137,
                wallet: "0xabc".into(),
                score: 612,
                band,
                probability_of_liquidation: probability,
                reasons,
                model_version: "position-v1".into(),
                model_sha256: "ff00".into(),
                computed_at: "2024-03-01T12:34:56Z".parse().expect("time"),
                event_id: "137:0xdead:7".into(),
                provenance: Provenance {
                    topic: "chainfold.lending.v1".into(),
                    partition: 3,
                    offset: 99,
                    block_number: block,
                },
            };
            let raw = serde_json::value::to_raw_value(&message.reasons).expect("reasons");
            let spliced = serde_json::to_string(&Published {
                chain_id: message.chain_id,
                wallet: &message.wallet,
                score: message.score,
                band: message.band,
                probability_of_liquidation: message.probability_of_liquidation,
                reasons: &raw,
                model_version: &message.model_version,
                model_sha256: &message.model_sha256,
                computed_at: message.computed_at,
                event_id: &message.event_id,
                provenance: ProvenanceRef {
                    topic: &message.provenance.topic,
                    partition: message.provenance.partition,
                    offset: message.provenance.offset,
                    block_number: message.provenance.block_number,
                },
                output_id: "score:137:0xabc:137:0xdead:7",
            })
            .expect("published");
            let whole = serde_json::to_string(&Whole {
                message: &message,
                output_id: "score:137:0xabc:137:0xdead:7",
            })
            .expect("whole");
            assert_eq!(spliced, whole, "byte for byte");
            let back: ScoreMessage = serde_json::from_str(&spliced).expect("reads back");
            assert_eq!(back, message);
        }
    }

    fn at(hours: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + hours * 3_600, 0).expect("in range")
    }

    /// What every lookup did before it borrowed: a filtered copy of all the points.
    fn filtered(points: &[PricePoint], block: Option<i64>) -> Vec<(DateTime<Utc>, f64)> {
        points
            .iter()
            .filter(|(_, b, _)| match (block, b) {
                (Some(at), Some(b)) => b <= &at,
                _ => true,
            })
            .map(|(t, _, p)| (*t, *p))
            .collect()
    }

    /// 90 days of points, every 5 hours, a block per point, prices moving.
    fn series() -> Vec<PricePoint> {
        (0..432)
            .map(|i| {
                (
                    at(i * 5),
                    Some(1_000 + i),
                    100.0 + ((i * 37) % 23) as f64 * 0.7,
                )
            })
            .collect()
    }

    #[test]
    fn a_borrowed_window_prices_and_moves_exactly_as_the_filtered_copy() {
        let points = series();
        let source = PriceSource::new(points.clone());
        assert!(source.ordered);
        let mut moved = 0;
        for (hours, block) in [
            (0, Some(1_000)),
            (400, Some(1_080)),
            (1_000, Some(1_200)),
            (1_000, Some(1_100)),
            (2_155, Some(1_431)),
            (2_155, None),
            (3_000, Some(5_000)),
            (10, Some(10)),
        ] {
            let now = at(hours);
            let copy = filtered(&points, block);
            let visible = source.visible(block);
            assert!(matches!(visible.points, std::borrow::Cow::Borrowed(_)));
            assert_eq!(
                visible.points.as_ref(),
                copy.as_slice(),
                "{hours} h, {block:?}"
            );
            let vol = hourly_volatility(visible.volatility_window(now), now);
            assert_eq!(vol, hourly_volatility(&copy, now), "{hours} h, {block:?}");
            assert!(visible.days.is_some());
            assert_eq!(visible.hourly_volatility(now), vol, "{hours} h, {block:?}");
            moved += usize::from(vol.is_some_and(|(v7, v30)| v7 > 0.0 && v30 > 0.0));
        }
        assert!(moved >= 5, "{moved}");
        // The window is the 30 days up to `now`, not everything the batch read.
        let now = at(2_000);
        let window = source.visible(None).volatility_window(now).len();
        assert_eq!(window, 30 * 24 / 5, "{window}");
    }

    #[test]
    fn points_out_of_order_or_without_blocks_are_filtered_as_before() {
        let mut points = series();
        points.swap(100, 101); // a time going down
        let mut blockless = series();
        blockless[50].1 = None;
        for points in [points, blockless] {
            let source = PriceSource::new(points.clone());
            assert!(!source.ordered);
            for block in [Some(1_040), Some(1_120), None] {
                let now = at(600);
                let copy = filtered(&points, block);
                let visible = source.visible(block);
                assert_eq!(visible.points.as_ref(), copy.as_slice());
                assert_eq!(visible.volatility_window(now), copy.as_slice());
                assert_eq!(
                    hourly_volatility(visible.volatility_window(now), now),
                    hourly_volatility(&copy, now)
                );
            }
        }
    }

    /// What `lending_window` returns from `table` (points in window order): the last point
    /// before `since`, then those of `since..=until`.
    fn read_window(
        table: &[PricePoint],
        since: DateTime<Utc>,
        until: Option<DateTime<Utc>>,
    ) -> Vec<PricePoint> {
        let before = table.iter().rev().find(|p| p.0 < since).copied();
        before
            .into_iter()
            .chain(
                table
                    .iter()
                    .filter(|p| p.0 >= since && until.is_none_or(|u| p.0 <= u))
                    .copied(),
            )
            .collect()
    }

    #[test]
    fn kept_lending_points_with_the_rest_read_are_the_window_read_whole() {
        // A chain of 3,000 blocks, 12 s apart, some sharing a timestamp (a block's time is never
        // below its parent's), with 0–3 priced lending events each.
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut chain: Vec<PricePoint> = Vec::new();
        let mut time = at(0);
        for block in 0..3_000 {
            if next(5) != 0 {
                time += chrono::Duration::seconds(12);
            }
            for _ in 0..next(4) {
                chain.push((time, Some(block), 1_000.0 + next(1_000) as f64));
            }
        }
        let last_time = |block: i64| {
            chain
                .iter()
                .rev()
                .find(|p| p.1.is_some_and(|b| b <= block))
                .map(|p| p.0)
                .expect("a point")
        };
        // Batches move through the chain as a backfill's do: the blocks sealed so far grow,
        // the projector may have folded part of the blocks after them, and each batch's own
        // blocks (its seal, its triggers) lag behind by a varying stretch, so its window starts
        // earlier than the last one's at times and ends before what was kept.
        let mut memory: Option<KeptLending> = None;
        let (mut reused, mut batches, mut earlier, mut whole_reads) = (0, 0, 0, 0);
        let mut sealed_so_far = 300;
        while sealed_so_far < 3_000 {
            let ahead = sealed_so_far + next(40) as i64;
            let table: Vec<PricePoint> = chain
                .iter()
                .filter(|p| {
                    let b = p.1.expect("block");
                    b <= sealed_so_far || (b <= ahead && next(2) == 0)
                })
                .copied()
                .collect();
            let sealed = sealed_so_far - next(200) as i64;
            let since = last_time(sealed - 40 - next(120) as i64) - chrono::Duration::seconds(1);
            let until = Some(last_time(sealed - next(3) as i64));
            let whole = read_window(&table, since, until);
            let joined = match memory.take() {
                Some(kept) => {
                    reused += kept.points.len();
                    let gap = (since < kept.since).then(|| {
                        earlier += 1;
                        read_window(&table, since, None)
                            .into_iter()
                            .filter(|p| p.0 < kept.since)
                            .collect()
                    });
                    let after = if until.is_none_or(|u| u >= kept.below) {
                        table
                            .iter()
                            .filter(|p| p.0 >= kept.below && until.is_none_or(|u| p.0 <= u))
                            .copied()
                            .collect()
                    } else {
                        Vec::new()
                    };
                    kept.join(since, gap, after, Some(sealed))
                }
                None => {
                    whole_reads += 1;
                    Joined::read(whole.clone(), since, Some(sealed))
                }
            };
            // Few kept (the batch's own window from then on) so that batches start earlier.
            memory = joined.keep(since, 400);
            let read = cut_window(joined.points, since, until);
            assert_eq!(read, whole, "batch {batches}, sealed {sealed}");
            if let Some(kept) = &memory {
                // Everything kept is whole: the chain's points of the kept span are all there.
                let span: Vec<PricePoint> = read_window(&chain, kept.since, None)
                    .into_iter()
                    .filter(|p| p.0 < kept.below)
                    .collect();
                assert_eq!(kept.points, span, "batch {batches}");
            }
            sealed_so_far += 1 + next(60) as i64;
            batches += 1;
        }
        assert!(
            batches > 50 && reused > 10_000 && earlier > 5 && whole_reads == 1,
            "{batches} batches, {reused} reused, {earlier} started earlier, {whole_reads} read whole"
        );
    }

    #[test]
    fn no_lending_point_is_kept_without_a_block_or_a_sealed_one() {
        let points = series();
        let since = at(100);
        let kept = Joined::read(points.clone(), since, Some(1_010))
            .keep(since, KEPT_POINTS)
            .expect("kept");
        // Up to the last point of block 1,010 (at 50 h), that point excluded: a point of a later
        // block may share its time.
        assert_eq!(kept.below, at(50));
        assert_eq!(kept.points, points[..10].to_vec());
        assert_eq!(
            Joined::read(points.clone(), since, Some(999)).keep(since, KEPT_POINTS),
            None
        );
        assert_eq!(
            Joined::read(points.clone(), since, None).keep(since, KEPT_POINTS),
            None
        );
        let mut blockless = points.clone();
        blockless[300].1 = None;
        assert_eq!(
            Joined::read(blockless.clone(), since, Some(1_300)).keep(since, KEPT_POINTS),
            None
        );
        // Nor are kept points extended by points without a block.
        let joined = kept
            .clone()
            .join(since, None, blockless[10..].to_vec(), Some(1_300));
        assert_eq!(joined.below, None);
        // Nor where a later point has an earlier block (the chain's order is what makes a
        // sealed block's time a bound), read whole or after kept points.
        let mut unordered = points.clone();
        unordered[200].1 = Some(1_100);
        assert_eq!(
            Joined::read(unordered.clone(), since, Some(1_300)).keep(since, KEPT_POINTS),
            None
        );
        assert_eq!(
            kept.join(since, None, unordered[10..].to_vec(), Some(1_300))
                .below,
            None
        );
    }
}
