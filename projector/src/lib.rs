//! Projector: folds the Kafka event log into the Postgres read models and the Redis caches.
//!
//! Delivery (the "storing offsets outside Kafka" pattern, through [`chainfold_platform::member`]):
//! messages are read in batches; each batch's rows and the next offset of every partition it
//! touched are written in ONE Postgres transaction, the offsets as a compare-and-set against
//! the claim this projector made when the partition was assigned. Only after that commit are the
//! Redis caches updated and the offsets committed to Kafka (as a hint). On every (re)assignment
//! the partitions are claimed and sought to the offsets stored in Postgres; nothing fetched
//! before the seek is folded. A crash at any point therefore replays from the last Postgres
//! commit (commits are durable), inserts keyed by event id make that replay change nothing, and
//! a projector whose partition was reassigned cannot commit what it folded (fenced).
//!
//! A message that cannot be decoded or folded goes to `<topic>.dlq` with its reason (awaited
//! before the batch commits), and its offset is committed with the batch: the partition moves on.

//!
//! Modules: [`cache`], the Redis summaries and the API's versioned entries refreshed after
//! each commit. The SQL of the read models is `chainfold_store::projection`; the loop is
//! `chainfold_platform::worker`'s.

pub mod cache;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chainfold_domain::fold::{self as folds, Row, SwapRow};
use chainfold_domain::{ChainHead, Envelope, TopicKind, SCHEMA_VERSION};
use chainfold_platform::config::{KafkaArgs, PostgresArgs, RedisArgs};
use chainfold_platform::dlq::{self, DeadLetter};
use chainfold_platform::kafka::{self, Topics};
use chainfold_platform::member::{Member, Received};
use chainfold_platform::offsets::{Advance, Fenced};
use rdkafka::producer::FutureProducer;
use redis::aio::ConnectionManager;
use sqlx::PgPool;

use chainfold_store::projection::{self as store, live, Coordinates, StoreError};

/// `chainfold project` settings.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub postgres: PostgresArgs,
    #[command(flatten)]
    pub redis: RedisArgs,
    /// Kafka consumer group; also the key of the offsets stored in Postgres.
    #[arg(
        long = "group",
        env = "CHAINFOLD_PROJECTOR_GROUP",
        default_value = "chainfold-projector"
    )]
    pub group: String,
    /// Static group membership id (Kafka `group.instance.id`): a restarted instance with the
    /// same id takes its partitions back at once, without a rebalance; one that does not come
    /// back is expired after the session timeout (10 s). Must differ between instances running
    /// at the same time (the broker fences the older one); defaults to `<group>@<hostname>`.
    #[arg(long = "instance-id", env = "CHAINFOLD_INSTANCE_ID")]
    pub instance_id: Option<String>,
    /// Most messages folded in one Postgres transaction.
    #[arg(
        long = "batch-size",
        env = "CHAINFOLD_PROJECTOR_BATCH_SIZE",
        default_value_t = 5000
    )]
    pub batch_size: usize,
    /// How long a batch waits to fill after its first message, e.g. `50ms`.
    #[arg(long = "batch-wait", env = "CHAINFOLD_PROJECTOR_BATCH_WAIT", default_value = "50ms", value_parser = chainfold_platform::config::parse_duration)]
    pub batch_wait: Duration,
}

impl Config {
    /// Settings for the given services with default batching (tests, demo).
    pub fn new(
        kafka: KafkaArgs,
        postgres: PostgresArgs,
        redis: RedisArgs,
        group: impl Into<String>,
    ) -> Self {
        Config {
            kafka,
            postgres,
            redis,
            group: group.into(),
            instance_id: None,
            batch_size: 5000,
            batch_wait: Duration::from_millis(50),
        }
    }

    /// The static membership id in force.
    pub fn instance_id(&self) -> String {
        self.instance_id
            .clone()
            .unwrap_or_else(|| chainfold_platform::kafka::default_instance_id(&self.group))
    }
}

pub use chainfold_platform::member::{LogReset, LogTruncated};

/// What one batch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Messages taken from Kafka.
    pub received: u64,
    /// Rows newly stored (replayed events are not counted).
    pub stored: u64,
    pub dead_lettered: u64,
    /// Messages below the stored offset (already folded before a rebalance or restart).
    pub skipped: u64,
    /// Rows deleted by retractions (events of blocks a reorg orphaned).
    pub retracted: u64,
}

/// Where the projector's time went, summed over batches.
#[derive(Debug, Clone, Default)]
pub struct Timings {
    pub receive: Duration,
    pub decode_fold: Duration,
    pub dead_letter: Duration,
    pub postgres: Duration,
    pub redis: Duration,
    pub kafka_commit: Duration,
    pub batches: u64,
}

/// A decoded message waiting to be written.
enum Folded {
    Row { row: Row, retracted: bool },
    Head(Box<ChainHead>),
    Seal(Box<chainfold_domain::seal::Seal>),
}

/// A folded event in log order: an insert, or the retraction of an orphaned one.
#[derive(Debug, Clone)]
struct Item {
    row: Row,
    at: Coordinates,
    retracted: bool,
}

/// A running projector.
pub struct App {
    /// Held shared while this projector runs: `chainfold rebuild` cannot run beside it.
    _pipeline: chainfold_platform::lease::PipelineGuard,
    member: Member,
    producer: FutureProducer,
    pool: PgPool,
    redis: ConnectionManager,
    topics: Topics,
    config: Config,
    pub timings: Timings,
    /// Batches being written, oldest first, while the next one is received and folded (at
    /// most [`WRITES_IN_FLIGHT`]).
    in_flight: VecDeque<WriteTask>,
    /// Resolves when the newest write in flight has committed (the next write's turn).
    next_turn: Option<tokio::sync::oneshot::Receiver<()>>,
    /// The check, started in the background with each batch, that no read model is estimated
    /// empty while it holds rows (see [`chainfold_platform::postgres::estimated_empty`]): a
    /// refill after `chainfold rebuild` can leave one so, and every plan over it is then made
    /// for an empty table until the next autoanalyze.
    estimates: chainfold_platform::postgres::EstimatesCheck,
    /// Rows stored since the start, and when progress was last logged.
    folded: u64,
    last_report: Instant,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("group", &self.config.group)
            .field("topics", &self.topics)
            .finish()
    }
}

impl App {
    /// Connects to Postgres (running migrations), Redis and Kafka, creates the topics if needed
    /// and subscribes.
    pub async fn build(config: Config) -> anyhow::Result<App> {
        let pool = chainfold_platform::postgres::connect_and_migrate(&config.postgres).await?;
        let pipeline = chainfold_platform::lease::hold_pipeline(&config.postgres).await?;
        let redis = chainfold_platform::redis_cache::connect(&config.redis).await?;
        let topics = config.kafka.topics();
        kafka::ensure_topics(&config.kafka, &topics.all()).await?;
        let producer = kafka::producer(&config.kafka)?;
        let member = Member::join(
            &config.kafka,
            pool.clone(),
            &config.group,
            &config.instance_id(),
            &topics.event_topics(),
        )?;
        tracing::info!(group = %config.group, instance = %config.instance_id(), lending = %topics.lending, amm = %topics.amm, oracle = %topics.oracle, blocks = %topics.blocks, "projector subscribed");
        Ok(App {
            _pipeline: pipeline,
            member,
            producer,
            pool,
            redis,
            topics,
            config,
            timings: Timings::default(),
            in_flight: VecDeque::new(),
            next_turn: None,
            estimates: chainfold_platform::postgres::EstimatesCheck::new(&[]),
            folded: 0,
            last_report: Instant::now(),
        })
    }

    /// The Postgres pool (for callers that check progress).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Receives up to `batch_size` messages, waiting at most `idle` for the first and
    /// `batch_wait` after it (a pending assignment is claimed and sought first).
    async fn receive(
        &mut self,
        idle: Duration,
    ) -> anyhow::Result<chainfold_platform::member::Batch> {
        let started = Instant::now();
        let batch = self
            .member
            .receive(self.config.batch_size, idle, self.config.batch_wait)
            .await?;
        self.timings.receive += started.elapsed();
        Ok(batch)
    }

    /// Folds a batch, dead-letters what does not fold (acknowledged by the broker before the
    /// batch's offsets can be committed) and advances the in-memory positions.
    async fn prepare(
        &mut self,
        batch: chainfold_platform::member::Batch,
    ) -> anyhow::Result<Prepared> {
        let mut prepared = Prepared {
            outcome: BatchOutcome {
                received: batch.messages.len() as u64,
                skipped: batch.skipped,
                ..BatchOutcome::default()
            },
            items: Vec::new(),
            heads: Vec::new(),
            seals: Vec::new(),
            offsets: batch.advances,
        };
        let fold_started = Instant::now();
        let mut rejected: Vec<(Received, String)> = Vec::new();
        for message in batch.messages {
            match self.fold(&message) {
                Ok(Folded::Row { row, retracted }) => prepared.items.push(Item {
                    row,
                    at: Coordinates {
                        topic: message.topic,
                        partition: message.partition,
                        offset: message.offset,
                    },
                    retracted,
                }),
                Ok(Folded::Head(head)) => prepared.heads.push(*head),
                Ok(Folded::Seal(seal)) => prepared.seals.push((
                    *seal,
                    Coordinates {
                        topic: message.topic,
                        partition: message.partition,
                        offset: message.offset,
                    },
                )),
                Err(reason) => rejected.push((message, reason)),
            }
        }
        let folding = fold_started.elapsed();
        self.timings.decode_fold += folding;
        tracing::debug!(
            messages = prepared.outcome.received,
            fold_ms = folding.as_secs_f64() * 1e3,
            "batch folded"
        );

        let dlq_started = Instant::now();
        for (message, reason) in &rejected {
            dlq::send(
                &self.producer,
                &DeadLetter {
                    topic: &message.topic,
                    stage: "projector",
                    reason,
                    origin: &message.origin(),
                    key: message.key.as_deref(),
                    payload: &message.payload,
                },
            )
            .await?;
            prepared.outcome.dead_lettered += 1;
        }
        self.timings.dead_letter += dlq_started.elapsed();
        Ok(prepared)
    }

    fn fold(&self, message: &Received) -> Result<Folded, String> {
        let topic = &message.topic;
        if *topic == self.topics.seals {
            let seal: chainfold_domain::seal::Seal = serde_json::from_slice(&message.payload)
                .map_err(|e| format!("could not decode seal: {e}"))?;
            if seal.schema_version != SCHEMA_VERSION {
                return Err(format!(
                    "unsupported schema version {} (this build folds version {SCHEMA_VERSION})",
                    seal.schema_version
                ));
            }
            return Ok(Folded::Seal(Box::new(seal)));
        }
        if *topic == self.topics.blocks {
            let head: ChainHead = serde_json::from_slice(&message.payload)
                .map_err(|e| format!("could not decode chain head: {e}"))?;
            if head.schema_version != SCHEMA_VERSION {
                return Err(format!(
                    "unsupported schema version {} (this build folds version {SCHEMA_VERSION})",
                    head.schema_version
                ));
            }
            return Ok(Folded::Head(Box::new(head)));
        }
        let kind = if *topic == self.topics.amm {
            TopicKind::Amm
        } else if *topic == self.topics.oracle {
            TopicKind::Oracle
        } else if *topic == self.topics.transfers {
            TopicKind::Transfers
        } else {
            TopicKind::Lending
        };
        let envelope: Envelope = chainfold_domain::envelope::decode_envelope(&message.payload)?;
        let row = folds::fold(&envelope, kind).map_err(|e| e.to_string())?;
        Ok(Folded::Row {
            row,
            retracted: envelope.retracted,
        })
    }

    fn writer(&self) -> Writer {
        Writer {
            pool: self.pool.clone(),
            producer: self.producer.clone(),
            group: self.config.group.clone(),
        }
    }

    /// After a batch's Postgres commit: refresh the Redis cache and commit the offsets to Kafka
    /// (a hint for tools; Postgres holds the truth). A batch that was fenced instead hands its
    /// partitions to the member to recover (nothing of it was stored).
    async fn finish(&mut self, written: Written) -> anyhow::Result<BatchOutcome> {
        let Written {
            batch,
            outcome,
            offsets,
            postgres,
        } = written;
        self.timings.postgres += postgres;
        chainfold_platform::failpoint::hit("project.after_commit");
        let redis_started = Instant::now();
        if let Err(err) =
            cache::write_summaries(&mut self.redis, &self.config.redis.prefix, &batch).await
        {
            // The cache is rebuildable; Postgres already holds the truth.
            tracing::warn!(%err, "could not update the Redis cache");
        }
        if let Err(err) = cache::write_latest_wallets(
            &mut self.redis,
            &self.pool,
            &self.config.redis.prefix,
            &batch,
        )
        .await
        {
            // A stale or missing entry: the API falls back to Postgres on a miss, and the next
            // change of the wallet writes a newer version.
            tracing::warn!(error = %format!("{err:#}"), "could not update the API's Redis wallet summaries");
        }
        if let Err(err) = cache::write_latest_pools(
            &mut self.redis,
            &self.pool,
            &self.config.redis.prefix,
            &batch,
        )
        .await
        {
            tracing::warn!(error = %format!("{err:#}"), "could not update the API's Redis pool states");
        }
        let redis = redis_started.elapsed();
        self.timings.redis += redis;
        let commit_started = Instant::now();
        self.member.committed(&offsets);
        self.timings.kafka_commit += commit_started.elapsed();
        self.timings.batches += 1;
        self.folded += outcome.stored;
        tracing::debug!(
            received = outcome.received,
            stored = outcome.stored,
            dead_lettered = outcome.dead_lettered,
            postgres_ms = postgres.as_secs_f64() * 1e3,
            redis_ms = redis.as_secs_f64() * 1e3,
            "batch committed"
        );
        Ok(outcome)
    }

    /// Receives one batch (waiting at most `idle` for its first message), folds it, and commits
    /// rows and offsets in one Postgres transaction. `received == 0` means nothing arrived.
    /// (Not pipelined: for benchmarks that time one batch.)
    pub async fn process_batch(&mut self, idle: Duration) -> anyhow::Result<BatchOutcome> {
        let mut outcome = self.drain().await?;
        let batch = self.receive(idle).await?;
        if batch.messages.is_empty() {
            outcome.skipped += batch.skipped;
            return Ok(outcome);
        }
        let prepared = self.prepare(batch).await?;
        match self.writer().write(prepared, Turn::default()).await? {
            Ok(written) => outcome.add(&self.finish(written).await?),
            Err(fenced) => {
                tracing::warn!(%fenced, "batch fenced; nothing of it was stored");
                self.member.recover(&fenced).await?;
            }
        }
        Ok(outcome)
    }

    /// High watermarks of every partition of the event topics, now.
    pub async fn high_watermarks(&self) -> anyhow::Result<Vec<(String, i32, i64)>> {
        let topics: Vec<String> = self
            .topics
            .event_topics()
            .iter()
            .map(|t| (*t).to_owned())
            .collect();
        self.member.high_watermarks(&topics).await
    }

    /// Folds until everything in the log when called has been folded by the group — this
    /// process and any other projector of the group, whichever owns a partition (demo,
    /// rebuild, benchmarks) — then returns this process's totals.
    pub async fn run_until_caught_up(&mut self) -> anyhow::Result<BatchOutcome> {
        self.run_until_caught_up_or(std::future::pending()).await
    }

    /// [`Self::run_until_caught_up`], stopping early (after the batch in hand is committed)
    /// when `shutdown` resolves.
    pub async fn run_until_caught_up_or(
        &mut self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<BatchOutcome> {
        use futures::FutureExt as _;
        let targets = self.high_watermarks().await?;
        tokio::pin!(shutdown);
        let mut total = BatchOutcome::default();
        loop {
            // Caught up: checked against the group's offsets in Postgres whenever nothing is
            // in flight, since other members may own some of the partitions.
            if self.in_flight.is_empty() && self.member.group_covers(&targets).await? {
                return Ok(total);
            }
            if (&mut shutdown).now_or_never().is_some() {
                total.add(&self.drain().await?);
                anyhow::bail!("stopped before the read models caught up with the log");
            }
            total.add(&self.step(Duration::from_millis(200)).await?);
        }
    }

    /// Folds until `shutdown` resolves, through the workers' one loop
    /// ([`chainfold_platform::worker`]): the batch in hand is committed, and the write in
    /// flight, first; a transient failure reads again from what Postgres holds.
    pub async fn run_until_stopped(
        mut self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        use chainfold_platform::worker;
        worker::run_until_stopped(
            &mut self,
            Duration::from_millis(200),
            worker::SHUTDOWN_GRACE,
            shutdown,
        )
        .await?;
        tracing::info!(folded = self.folded, "projector stopped");
        Ok(())
    }

    /// One step of the pipelined loop: the next batch is received, folded and dead-lettered
    /// while earlier batches' transactions run; then the oldest writes are finished until
    /// fewer than [`WRITES_IN_FLIGHT`] remain, and the new batch's write starts. Writes in
    /// flight run on their own connections, but they commit in order: a write stores only its
    /// swap rows (which lock nothing shared) until the write before it has committed (its
    /// [`Turn`]), then the rest and its offsets, a compare-and-set from where the previous
    /// batch ends (refused, [`Fenced`], if that one did not commit). A refused batch makes the
    /// member read again from what Postgres holds, so the batch prepared behind it is dropped.
    /// Returns what was committed.
    async fn step(&mut self, wait: Duration) -> anyhow::Result<BatchOutcome> {
        let mut total = BatchOutcome::default();
        if self.member.has_pending_assignment() {
            total.add(&self.drain().await?);
        }
        let batch = self.receive(wait).await?;
        total.skipped += batch.skipped;
        let prepared = if batch.messages.is_empty() {
            None
        } else {
            self.estimates.start(&self.pool);
            Some(self.prepare(batch).await?)
        };
        let mut fenced = false;
        // Room for the new write, and whatever already ended finished at once (its Redis
        // entries and Kafka commit should not wait for the next batch).
        let limit = if prepared.is_some() {
            WRITES_IN_FLIGHT - 1
        } else {
            0
        };
        while !fenced
            && (self.in_flight.len() > limit
                || self.in_flight.front().is_some_and(|w| w.is_finished()))
        {
            let (outcome, refused) = self.finish_oldest().await?;
            total.add(&outcome);
            fenced = refused;
        }
        match prepared {
            // Read before the member went back to Postgres's offsets: read again.
            Some(_) if fenced => {}
            Some(prepared) => {
                let (ready, next) = tokio::sync::oneshot::channel();
                let turn = Turn {
                    after: if self.in_flight.is_empty() {
                        None
                    } else {
                        self.next_turn.take()
                    },
                    ready: Some(ready),
                };
                self.next_turn = Some(next);
                self.in_flight
                    .push_back(tokio::spawn(self.writer().write(prepared, turn)));
            }
            None => {}
        }
        self.report_progress();
        Ok(total)
    }

    /// Awaits the oldest write in flight and finishes it. A refused write settles every later
    /// one first (each either committed on partitions of its own or was refused too), then
    /// the member reads again from what Postgres holds; returns `true` then.
    async fn finish_oldest(&mut self) -> anyhow::Result<(BatchOutcome, bool)> {
        let Some(handle) = self.in_flight.pop_front() else {
            return Ok((BatchOutcome::default(), false));
        };
        let mut total = BatchOutcome::default();
        match handle.await.context("write task panicked")?? {
            Ok(written) => {
                total.add(&self.finish(written).await?);
                Ok((total, false))
            }
            Err(mut fenced) => {
                while let Some(later) = self.in_flight.pop_front() {
                    match later.await.context("write task panicked")?? {
                        Ok(written) => total.add(&self.finish(written).await?),
                        Err(also) => fenced.partitions.extend(also.partitions),
                    }
                }
                tracing::warn!(%fenced, "batch fenced; nothing of it was stored");
                self.member.recover(&fenced).await?;
                Ok((total, true))
            }
        }
    }

    /// Commits every write in flight, oldest first.
    async fn drain(&mut self) -> anyhow::Result<BatchOutcome> {
        let mut total = BatchOutcome::default();
        while !self.in_flight.is_empty() {
            total.add(&self.finish_oldest().await?.0);
        }
        Ok(total)
    }

    fn report_progress(&mut self) {
        if self.last_report.elapsed() > Duration::from_secs(10) && self.folded > 0 {
            let t = &self.timings;
            tracing::info!(
                folded = self.folded,
                batches = t.batches,
                receive_ms = t.receive.as_millis() as u64,
                decode_fold_ms = t.decode_fold.as_millis() as u64,
                postgres_ms = t.postgres.as_millis() as u64,
                redis_ms = t.redis.as_millis() as u64,
                "projector progress"
            );
            self.last_report = Instant::now();
        }
    }

    /// Empties the read models, the group's offsets and the Redis cache (`chainfold rebuild`).
    pub async fn reset(&mut self) -> anyhow::Result<()> {
        store::reset(&self.pool, &self.config.group)
            .await
            .context("could not reset the read models")?;
        let deleted = cache::clear(&mut self.redis, &self.config.redis.prefix)
            .await
            .context("could not clear the Redis cache")?;
        tracing::info!(deleted, "read models and cache cleared");
        Ok(())
    }
}

impl chainfold_platform::worker::BatchWorker for App {
    type Outcome = BatchOutcome;

    async fn process_batch(&mut self, wait: Duration) -> anyhow::Result<BatchOutcome> {
        self.step(wait).await
    }

    fn received(outcome: &BatchOutcome) -> u64 {
        outcome.received
    }

    fn add(total: &mut BatchOutcome, outcome: &BatchOutcome) {
        total.add(outcome);
    }

    /// After a failed step: the write in flight is awaited first (finished if it committed),
    /// then the member reads again from what Postgres holds. A failure that retrying cannot
    /// mend stops the projector with its error.
    async fn recover(&mut self, err: anyhow::Error, backoff: &mut Duration) -> anyhow::Result<()> {
        // Oldest first; a refused one is skipped (the member reads again from Postgres below).
        while let Some(handle) = self.in_flight.pop_front() {
            if let Ok(Ok(Ok(written))) = handle.await {
                if let Err(err) = self.finish(written).await {
                    tracing::warn!(error = %format!("{err:#}"), "could not finish the write in flight");
                }
            }
        }
        self.member
            .retry_after(err, backoff, "projector loop")
            .await
    }

    fn settling(&self) -> bool {
        self.member.has_pending_assignment() || !self.in_flight.is_empty()
    }

    async fn drain(&mut self) -> anyhow::Result<BatchOutcome> {
        App::drain(self).await
    }
}

impl BatchOutcome {
    fn add(&mut self, other: &BatchOutcome) {
        self.received += other.received;
        self.stored += other.stored;
        self.dead_lettered += other.dead_lettered;
        self.skipped += other.skipped;
        self.retracted += other.retracted;
    }
}

/// Batch writes in flight at once: each on its own connection, so Postgres works on one
/// batch's tables while the previous batch finishes and commits (one backend alone bounds a
/// projector at its `COPY` rate); they commit in order (see [`App::step`]).
const WRITES_IN_FLIGHT: usize = 2;

/// A batch's write, running as its own task.
type WriteTask = tokio::task::JoinHandle<anyhow::Result<Result<Written, Fenced>>>;

/// A folded batch, its dead letters already acknowledged, ready to be written.
struct Prepared {
    outcome: BatchOutcome,
    items: Vec<Item>,
    heads: Vec<ChainHead>,
    seals: Vec<(chainfold_domain::seal::Seal, Coordinates)>,
    offsets: Vec<Advance>,
}

/// A committed batch.
struct Written {
    batch: store::BatchWrite,
    outcome: BatchOutcome,
    offsets: Vec<Advance>,
    postgres: Duration,
}

/// What a write needs, owned, so it can run as its own task beside the next receive.
#[derive(Clone)]
struct Writer {
    pool: PgPool,
    producer: FutureProducer,
    group: String,
}

impl Writer {
    async fn write(
        self,
        prepared: Prepared,
        mut turn: Turn,
    ) -> anyhow::Result<Result<Written, Fenced>> {
        let started = Instant::now();
        let batch = match self
            .commit_with_retry(
                &prepared.items,
                &prepared.heads,
                &prepared.seals,
                &prepared.offsets,
                &mut turn,
            )
            .await
        {
            Ok(batch) => batch,
            Err(err) => {
                return match err.downcast::<StoreError>() {
                    Ok(StoreError::Fenced(fenced)) => Ok(Err(fenced)),
                    Ok(other) => Err(other.into()),
                    Err(err) => Err(err),
                }
            }
        };
        let mut outcome = prepared.outcome;
        outcome.stored = batch.new_lending + batch.new_swaps + batch.new_other;
        outcome.retracted = batch.retracted;
        Ok(Ok(Written {
            batch,
            outcome,
            offsets: prepared.offsets,
            postgres: started.elapsed(),
        }))
    }

    /// Writes rows and offsets in one transaction, retrying transient failures with backoff. A
    /// deterministic failure (constraint or data error) is narrowed down by writing the rows one
    /// at a time; a row Postgres still refuses is dead-lettered and the rest are stored.
    async fn commit_with_retry(
        &self,
        items: &[Item],
        heads: &[ChainHead],
        seals: &[(chainfold_domain::seal::Seal, Coordinates)],
        offsets: &[Advance],
        turn: &mut Turn,
    ) -> anyhow::Result<store::BatchWrite> {
        let mut backoff = Duration::from_millis(200);
        loop {
            let attempt =
                write_once(&self.pool, &self.group, items, heads, seals, offsets, turn).await;
            if attempt.is_err() {
                // This attempt will not commit: the next write must not wait for it.
                turn.ready = None;
            }
            match attempt {
                Ok(written) => return Ok(written),
                Err(err @ StoreError::Fenced(_)) => return Err(err.into()),
                Err(err)
                    if err.is_deterministic() && items.len() + heads.len() + seals.len() > 1 =>
                {
                    tracing::warn!(error = %err, "batch refused by Postgres; writing its rows one by one");
                    // Row by row commits outside the batch's transaction: only in its turn.
                    turn.wait(offsets).await?;
                    return self.write_one_by_one(items, heads, seals, offsets).await;
                }
                Err(err) if err.is_deterministic() => {
                    let (topic, origin) =
                        items.first().map_or((String::new(), String::new()), |i| {
                            (
                                i.at.topic.clone(),
                                format!("{}/{}/{}", i.at.topic, i.at.partition, i.at.offset),
                            )
                        });
                    let reason = format!(
                        "{err}: {}",
                        std::error::Error::source(&err)
                            .map(ToString::to_string)
                            .unwrap_or_default()
                    );
                    let payload = format!("{items:?}{heads:?}");
                    // In its turn first: a batch refused here is read again, and its row must
                    // not be dead-lettered twice.
                    turn.wait(offsets).await?;
                    dlq::send(
                        &self.producer,
                        &DeadLetter {
                            topic: &topic,
                            stage: "projector",
                            reason: &reason,
                            origin: &origin,
                            key: None,
                            payload: payload.as_bytes(),
                        },
                    )
                    .await?;
                    return write_once(
                        &self.pool,
                        &self.group,
                        &[],
                        &[],
                        &[],
                        offsets,
                        &mut Turn::default(),
                    )
                    .await
                    .map_err(anyhow::Error::from);
                }
                Err(err) => {
                    tracing::error!(error = %err, source = ?std::error::Error::source(&err), retry_in = ?backoff, "could not write a batch; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
    }

    async fn write_one_by_one(
        &self,
        items: &[Item],
        heads: &[ChainHead],
        seals: &[(chainfold_domain::seal::Seal, Coordinates)],
        offsets: &[Advance],
    ) -> anyhow::Result<store::BatchWrite> {
        let mut total = store::BatchWrite::default();
        for item in items {
            let written = Box::pin(self.commit_with_retry(
                std::slice::from_ref(item),
                &[],
                &[],
                &[],
                &mut Turn::default(),
            ))
            .await?;
            total.merge(written);
        }
        for head in heads {
            Box::pin(self.commit_with_retry(
                &[],
                std::slice::from_ref(head),
                &[],
                &[],
                &mut Turn::default(),
            ))
            .await?;
        }
        for seal in seals {
            Box::pin(self.commit_with_retry(
                &[],
                &[],
                std::slice::from_ref(seal),
                &[],
                &mut Turn::default(),
            ))
            .await?;
        }
        Box::pin(self.commit_with_retry(&[], &[], &[], offsets, &mut Turn::default())).await?;
        Ok(total)
    }
}

/// Writes one run of inserts (no retraction inside it).
async fn insert_run(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    items: &[Item],
    out: &mut store::BatchWrite,
    swaps_stored: Option<&[&SwapRow]>,
) -> Result<(), StoreError> {
    let mut lending = Vec::new();
    let mut swaps = Vec::new();
    let mut syncs = Vec::new();
    let mut liquidity = Vec::new();
    let mut loans = Vec::new();
    let mut oracle = Vec::new();
    let mut market = Vec::new();
    let mut transfers = Vec::new();
    for item in items {
        match &item.row {
            Row::Lending(r) => lending.push(((**r).clone(), item.at.clone())),
            Row::Swap(_) if swaps_stored.is_some() => {}
            Row::Swap(r) => swaps.push(((**r).clone(), item.at.clone())),
            Row::PoolSync(r) => syncs.push((&**r, &item.at)),
            Row::Liquidity(r) => liquidity.push((&**r, &item.at)),
            Row::FlashLoan(r) => loans.push((&**r, &item.at)),
            Row::Oracle(r) => oracle.push((&**r, &item.at)),
            Row::Market(r) => market.push((&**r, &item.at)),
            Row::Transfer(r) => transfers.push((&**r, &item.at)),
        }
    }
    let (new_lending, wallets) = store::insert_lending(tx, &lending).await?;
    let (new_swaps, pools) = match swaps_stored {
        Some(stored) => store::advance_pool_summaries(tx, stored).await?,
        None => store::insert_swaps(tx, &swaps).await?,
    };
    out.new_lending += new_lending;
    out.new_swaps += new_swaps;
    out.wallets.extend(wallets);
    out.pools.extend(pools);
    out.new_other += live::insert_pool_syncs(tx, &syncs).await?;
    out.new_other += live::insert_liquidity(tx, &liquidity).await?;
    out.new_other += live::insert_flash_loans(tx, &loans).await?;
    out.new_other += live::insert_oracle_updates(tx, &oracle).await?;
    out.new_other += live::insert_market_events(tx, &market).await?;
    out.new_other += live::insert_transfers(tx, &transfers).await?;
    Ok(())
}

async fn write_once(
    pool: &PgPool,
    group: &str,
    items: &[Item],
    heads: &[ChainHead],
    seals: &[(chainfold_domain::seal::Seal, Coordinates)],
    offsets: &[Advance],
    turn: &mut Turn,
) -> Result<store::BatchWrite, StoreError> {
    // Durable commits (the server's synchronous_commit): a commit Postgres acknowledged survives
    // its crash, so the offsets this process goes on from are never ahead of the rows.
    let mut tx = pool.begin().await?;
    let mut out = store::BatchWrite::default();
    if turn.after.is_some() && !items.iter().any(|i| i.retracted) {
        // Out of turn, only what locks no shared row: the swap rows themselves. The
        // summaries, the other tables (pool syncs take the feed's lock), heads, seals and
        // offsets follow in turn, once the previous write has committed.
        let swaps: Vec<(SwapRow, Coordinates)> = items
            .iter()
            .filter_map(|i| match &i.row {
                Row::Swap(r) => Some(((**r).clone(), i.at.clone())),
                _ => None,
            })
            .collect();
        let stored = store::insert_swap_rows(&mut tx, &swaps).await?;
        turn.wait(offsets).await?;
        insert_run(&mut tx, items, &mut out, Some(&stored)).await?;
        return finish_write(tx, group, heads, seals, offsets, turn, out).await;
    }
    turn.wait(offsets).await?;
    // Runs of inserts and runs of retractions, applied in log order: an event retracted and
    // re-published in one batch must be deleted before its canonical copy goes in.
    for run in items.chunk_by(|a, b| a.retracted == b.retracted) {
        if run[0].retracted {
            let rows: Vec<&Row> = run.iter().map(|i| &i.row).collect();
            let r = live::retract(&mut tx, &rows).await?;
            out.retracted += r.deleted;
            out.wallets.extend(r.wallets);
            out.pools.extend(r.pools);
            out.reset_wallets.extend(r.reset_wallets);
            out.reset_pools.extend(r.reset_pools);
        } else {
            insert_run(&mut tx, run, &mut out, None).await?;
        }
    }
    finish_write(tx, group, heads, seals, offsets, turn, out).await
}

/// The end of every batch transaction: heads, seals, the offsets' compare-and-set, the commit,
/// then the next write's turn.
async fn finish_write(
    mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
    group: &str,
    heads: &[ChainHead],
    seals: &[(chainfold_domain::seal::Seal, Coordinates)],
    offsets: &[Advance],
    turn: &mut Turn,
    out: store::BatchWrite,
) -> Result<store::BatchWrite, StoreError> {
    live::upsert_heads(&mut tx, heads).await?;
    live::insert_seals(&mut tx, seals).await?;
    chainfold_platform::offsets::advance(&mut tx, group, offsets).await?;
    chainfold_platform::failpoint::hit("project.before_commit");
    tx.commit().await?;
    // Committed: the next write may go on with its summaries and offsets (its compare-and-set
    // is checked against what is committed, so it must not run before this commit).
    if let Some(ready) = turn.ready.take() {
        let _ = ready.send(());
    }
    Ok(out)
}

/// How long a write waits for its turn before it gives up (rolls back, and the member reads
/// its batch again). Only a cycle the database cannot see lasts this long: the previous write
/// waiting on a row this one inserted first (the same event republished into both batches).
const TURN_TIMEOUT: Duration = Duration::from_secs(10);

/// A write's place in the order of writes in flight (see [`App::step`]).
#[derive(Debug, Default)]
struct Turn {
    /// Resolves once the previous write has committed; closed if it did not. `None`: no
    /// previous write in flight.
    after: Option<tokio::sync::oneshot::Receiver<()>>,
    /// Resolved by this write at the same point, for the next one; dropped if it fails.
    ready: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Turn {
    /// Waits for the previous write's commit; [`Fenced`] (the batch is read again) when it
    /// failed or did not commit within [`TURN_TIMEOUT`].
    async fn wait(&mut self, offsets: &[Advance]) -> Result<(), StoreError> {
        let Some(after) = self.after.take() else {
            return Ok(());
        };
        match tokio::time::timeout(TURN_TIMEOUT, after).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(StoreError::Fenced(Fenced {
                partitions: offsets
                    .iter()
                    .map(|a| (a.topic.clone(), a.partition))
                    .collect(),
            })),
        }
    }
}
