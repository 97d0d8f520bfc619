//! Projector: folds the Kafka event log into the Postgres read models and the Redis caches.
//!
//! Delivery (the "storing offsets outside Kafka" pattern): messages are read in batches; each
//! batch's rows and the next offset of every partition it touched are written in ONE Postgres
//! transaction; only after that commit are the Redis caches updated and the offsets committed
//! to Kafka (as a hint). On every (re)assignment the consumer seeks the new partitions to the
//! offsets stored in Postgres and skips anything below them. A crash at any point therefore replays
//! from the last Postgres commit, and inserts keyed by event id make that replay change nothing.
//!
//! A message that cannot be decoded or folded goes to `<topic>.dlq` with its reason (awaited
//! before the batch commits), and its offset is committed with the batch: the partition moves on.

pub mod cache;
pub mod live;
pub mod store;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chainfold_domain::fold::{self as folds, Row};
use chainfold_domain::{ChainHead, Envelope, TopicKind, SCHEMA_VERSION};
use chainfold_platform::config::{KafkaArgs, PostgresArgs, RedisArgs};
use chainfold_platform::dlq::{self, DeadLetter};
use chainfold_platform::kafka::{self, Topics};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::Message as _;
use rdkafka::producer::FutureProducer;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use redis::aio::ConnectionManager;
use sqlx::PgPool;

use crate::store::{Coordinates, StoreError};

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
    /// same id takes its partitions back at once instead of waiting for the broker to expire
    /// the old member (the local tansu broker never expires a member that died without leaving).
    /// Must differ between instances running at the same time; defaults to `<group>@<hostname>`.
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

/// Partitions assigned by the last rebalance that still need their Postgres offsets.
type PendingAssignment = Arc<Mutex<Vec<(String, i32)>>>;

/// Consumer context: on assignment, hands the new partitions to the loop, which seeks them to
/// the offsets stored in Postgres (no I/O in the callback).
#[derive(Debug, Clone, Default)]
pub struct ProjectorContext {
    pending: PendingAssignment,
}

impl ClientContext for ProjectorContext {}

impl ConsumerContext for ProjectorContext {
    fn post_rebalance(&self, _base_consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let mut pending = self
            .pending
            .lock()
            .expect("pending assignment lock poisoned");
        match rebalance {
            // The eager protocol hands over the whole assignment each time: replace, not append.
            Rebalance::Assign(tpl) => {
                pending.clear();
                for element in tpl.elements() {
                    tracing::info!(
                        topic = element.topic(),
                        partition = element.partition(),
                        "partition assigned"
                    );
                    pending.push((element.topic().to_owned(), element.partition()));
                }
            }
            Rebalance::Revoke(_) => pending.clear(),
            Rebalance::Error(err) => tracing::warn!(%err, "rebalance error"),
        }
    }
}

/// The Kafka log ends before offsets stored in Postgres: the broker's data was reset or the
/// topics recreated, and the read models describe a log that no longer exists.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the Kafka log ends before the offsets stored in Postgres ({0}); was the broker reset? `chainfold rebuild` refolds the read models from the log")]
pub struct LogReset(pub String);

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
}

/// A folded event in log order: an insert, or the retraction of an orphaned one.
#[derive(Debug, Clone)]
struct Item {
    row: Row,
    at: Coordinates,
    retracted: bool,
}

struct Received {
    at: Coordinates,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
}

/// A running projector.
pub struct App {
    consumer: StreamConsumer<ProjectorContext>,
    pending: PendingAssignment,
    /// Next offset to fold per (topic, partition), as stored in Postgres.
    positions: HashMap<(String, i32), i64>,
    /// Assigned partitions whose seek to the stored offset has not succeeded yet.
    to_seek: Vec<((String, i32), Option<i64>)>,
    producer: FutureProducer,
    pool: PgPool,
    redis: ConnectionManager,
    topics: Topics,
    config: Config,
    pub timings: Timings,
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
        let redis = chainfold_platform::redis_cache::connect(&config.redis).await?;
        let topics = config.kafka.topics();
        kafka::ensure_topics(&config.kafka, &topics.all()).await?;
        let producer = kafka::producer(&config.kafka)?;
        let context = ProjectorContext::default();
        let pending = context.pending.clone();
        let consumer: StreamConsumer<ProjectorContext> =
            kafka::consumer_config(&config.kafka, &config.group)
                .create_with_context(context)
                .context("could not create Kafka consumer")?;
        consumer
            .subscribe(&topics.event_topics())
            .context("could not subscribe to the event topics")?;
        tracing::info!(group = %config.group, lending = %topics.lending, amm = %topics.amm, oracle = %topics.oracle, blocks = %topics.blocks, "projector subscribed");
        Ok(App {
            consumer,
            pending,
            positions: HashMap::new(),
            to_seek: Vec::new(),
            producer,
            pool,
            redis,
            topics,
            config,
            timings: Timings::default(),
        })
    }

    /// The Postgres pool (for callers that check progress).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Seeks newly assigned partitions to their Postgres offsets (the beginning when none is
    /// stored). Until a partition's seek succeeds, nothing below its stored offset is folded:
    /// Kafka's own committed offset is only ever behind Postgres (it is committed after), so
    /// whatever arrives first from there is skipped, never applied twice.
    async fn apply_pending_assignment(&mut self) -> anyhow::Result<()> {
        let assigned: Vec<(String, i32)> = std::mem::take(
            &mut *self
                .pending
                .lock()
                .expect("pending assignment lock poisoned"),
        );
        if !assigned.is_empty() {
            let mut stored: HashMap<(String, i32), i64> = HashMap::new();
            for topic in self.topics.event_topics() {
                for (partition, offset) in
                    store::load_offsets(&self.pool, &self.config.group, topic).await?
                {
                    stored.insert((topic.to_owned(), partition), offset);
                }
            }
            // A stored offset beyond the log's end means the log was replaced (a broker reset):
            // seeking there would skip the new log's records. Refuse; a rebuild refolds.
            let highs = self.high_watermarks().await?;
            let behind: Vec<String> = assigned
                .iter()
                .filter_map(|(topic, partition)| {
                    let stored = *stored.get(&(topic.clone(), *partition))?;
                    let (_, _, end) = highs
                        .iter()
                        .find(|(t, p, _)| t == topic && p == partition)?;
                    (stored > *end)
                        .then(|| format!("{topic}/{partition} stored {stored}, log ends at {end}"))
                })
                .collect();
            if !behind.is_empty() {
                *self
                    .pending
                    .lock()
                    .expect("pending assignment lock poisoned") = assigned;
                return Err(LogReset(behind.join("; ")).into());
            }
            self.positions.clear();
            self.to_seek.clear();
            for key in assigned {
                let offset = stored.get(&key).copied();
                self.positions.insert(key.clone(), offset.unwrap_or(0));
                self.to_seek.push((key, offset));
            }
        }
        // A partition can be sought only once its fetcher has started; retry the rest next time.
        let mut still_pending = Vec::new();
        for ((topic, partition), offset) in std::mem::take(&mut self.to_seek) {
            let target = offset.map_or(Offset::Beginning, Offset::Offset);
            match self
                .consumer
                .seek(&topic, partition, target, Duration::from_secs(1))
            {
                Ok(()) => tracing::info!(
                    topic,
                    partition,
                    ?target,
                    "sought to the offset stored in Postgres"
                ),
                Err(err) => {
                    tracing::debug!(topic, partition, %err, "seek not possible yet");
                    still_pending.push(((topic, partition), offset));
                }
            }
        }
        self.to_seek = still_pending;
        Ok(())
    }

    /// True when a rebalance handed over partitions that still need their stored offsets.
    fn has_pending_assignment(&self) -> bool {
        !self
            .pending
            .lock()
            .expect("pending assignment lock poisoned")
            .is_empty()
    }

    /// Receives up to `batch_size` messages, waiting at most `idle` for the first and
    /// `batch_wait` after it. Applies a pending assignment first.
    async fn receive(&mut self, idle: Duration) -> anyhow::Result<Vec<Received>> {
        self.apply_pending_assignment().await?;
        let started = Instant::now();
        let mut messages: Vec<Received> = Vec::new();
        let mut deadline = Instant::now() + idle;
        while messages.len() < self.config.batch_size {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            match tokio::time::timeout(remaining, self.consumer.recv()).await {
                Err(_) => break,
                Ok(Err(err)) => {
                    tracing::warn!(%err, "kafka consumer error");
                    continue;
                }
                Ok(Ok(msg)) => {
                    if messages.is_empty() {
                        deadline = Instant::now() + self.config.batch_wait;
                    }
                    messages.push(Received {
                        at: Coordinates {
                            topic: msg.topic().to_owned(),
                            partition: msg.partition(),
                            offset: msg.offset(),
                        },
                        key: msg.key().map(<[u8]>::to_vec),
                        payload: msg.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                    });
                }
            }
            // A rebalance during the wait: stop here and seek before reading more.
            if self.has_pending_assignment() {
                break;
            }
        }
        self.timings.receive += started.elapsed();
        Ok(messages)
    }

    /// Folds a batch, dead-letters what does not fold (acknowledged by the broker before the
    /// batch's offsets can be committed) and advances the in-memory positions.
    async fn prepare(&mut self, messages: Vec<Received>) -> anyhow::Result<Prepared> {
        let mut prepared = Prepared {
            outcome: BatchOutcome {
                received: messages.len() as u64,
                ..BatchOutcome::default()
            },
            items: Vec::new(),
            heads: Vec::new(),
            offsets: Vec::new(),
        };
        let fold_started = Instant::now();
        let mut rejected: Vec<(Received, String)> = Vec::new();
        let mut next_offsets: BTreeMap<(String, i32), i64> = BTreeMap::new();
        for message in messages {
            let position = (message.at.topic.clone(), message.at.partition);
            if self
                .positions
                .get(&position)
                .is_some_and(|next| message.at.offset < *next)
            {
                prepared.outcome.skipped += 1;
                continue;
            }
            next_offsets.insert(position, message.at.offset + 1);
            match self.fold(&message) {
                Ok(Folded::Row { row, retracted }) => prepared.items.push(Item {
                    row,
                    at: message.at,
                    retracted,
                }),
                Ok(Folded::Head(head)) => prepared.heads.push(*head),
                Err(reason) => rejected.push((message, reason)),
            }
        }
        self.timings.decode_fold += fold_started.elapsed();

        let dlq_started = Instant::now();
        for (message, reason) in &rejected {
            let origin = format!(
                "{}/{}/{}",
                message.at.topic, message.at.partition, message.at.offset
            );
            dlq::send(
                &self.producer,
                &DeadLetter {
                    topic: &message.at.topic,
                    stage: "projector",
                    reason,
                    origin: &origin,
                    key: message.key.as_deref(),
                    payload: &message.payload,
                },
            )
            .await?;
            prepared.outcome.dead_lettered += 1;
        }
        self.timings.dead_letter += dlq_started.elapsed();
        for ((topic, partition), next) in next_offsets {
            self.positions.insert((topic.clone(), partition), next);
            prepared.offsets.push((topic, partition, next));
        }
        Ok(prepared)
    }

    fn fold(&self, message: &Received) -> Result<Folded, String> {
        let topic = &message.at.topic;
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
        } else {
            TopicKind::Lending
        };
        let envelope: Envelope = serde_json::from_slice(&message.payload)
            .map_err(|e| format!("could not decode envelope: {e}"))?;
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
    /// (a hint for tools; Postgres holds the truth).
    async fn finish(&mut self, written: Written) -> anyhow::Result<BatchOutcome> {
        let Written {
            batch,
            outcome,
            offsets,
            postgres,
        } = written;
        self.timings.postgres += postgres;
        let redis_started = Instant::now();
        if let Err(err) =
            cache::write_summaries(&mut self.redis, &self.config.redis.prefix, &batch).await
        {
            // The cache is rebuildable; Postgres already holds the truth.
            tracing::warn!(%err, "could not update the Redis cache");
        }
        self.timings.redis += redis_started.elapsed();
        let commit_started = Instant::now();
        if !offsets.is_empty() {
            let mut tpl = TopicPartitionList::new();
            for (topic, partition, next) in &offsets {
                tpl.add_partition_offset(topic, *partition, Offset::Offset(*next))
                    .context("could not build the commit list")?;
            }
            if let Err(err) = self
                .consumer
                .commit(&tpl, rdkafka::consumer::CommitMode::Async)
            {
                tracing::debug!(%err, "kafka offset commit failed (offsets are in Postgres)");
            }
        }
        self.timings.kafka_commit += commit_started.elapsed();
        self.timings.batches += 1;
        tracing::debug!(
            received = outcome.received,
            stored = outcome.stored,
            dead_lettered = outcome.dead_lettered,
            "batch committed"
        );
        Ok(outcome)
    }

    /// Receives one batch (waiting at most `idle` for its first message), folds it, and commits
    /// rows and offsets in one Postgres transaction. `received == 0` means nothing arrived.
    pub async fn process_batch(&mut self, idle: Duration) -> anyhow::Result<BatchOutcome> {
        let messages = self.receive(idle).await?;
        if messages.is_empty() {
            return Ok(BatchOutcome::default());
        }
        let prepared = self.prepare(messages).await?;
        let written = self.writer().write(prepared).await?;
        self.finish(written).await
    }

    /// High watermarks of every partition of the event topics, now.
    pub async fn high_watermarks(&self) -> anyhow::Result<Vec<(String, i32, i64)>> {
        let probe: BaseConsumer = kafka::client_config(&self.config.kafka)
            .create()
            .context("could not create Kafka metadata client")?;
        let topics: Vec<String> = self
            .topics
            .event_topics()
            .iter()
            .map(|t| (*t).to_owned())
            .collect();
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            for topic in topics {
                for (partition, _low, high) in kafka::watermarks(&probe, &topic)? {
                    out.push((topic.clone(), partition, high));
                }
            }
            Ok(out)
        })
        .await
        .context("watermark task panicked")?
    }

    /// True when every partition in `targets` has been folded up to its target offset.
    fn covers(&self, targets: &[(String, i32, i64)]) -> bool {
        targets.iter().all(|(topic, partition, high)| {
            *high == 0
                || self
                    .positions
                    .get(&(topic.clone(), *partition))
                    .is_some_and(|next| next >= high)
        })
    }

    /// Folds until everything in the log when called has been folded (demo, rebuild,
    /// benchmarks), then returns the totals. Meant for a projector that owns every partition.
    pub async fn run_until_caught_up(&mut self) -> anyhow::Result<BatchOutcome> {
        self.run_until_caught_up_or(std::future::pending()).await
    }

    /// [`Self::run_until_caught_up`], stopping early (after the batch in hand is committed)
    /// when `shutdown` resolves.
    pub async fn run_until_caught_up_or(
        &mut self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<BatchOutcome> {
        let targets = self.high_watermarks().await?;
        let (total, stopped) = self.run(Some(&targets), shutdown).await?;
        if stopped {
            anyhow::bail!("stopped before the read models caught up with the log");
        }
        Ok(total)
    }

    /// Folds until `shutdown` resolves; the batch in hand is committed first.
    pub async fn run_until_stopped(
        mut self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let (total, _) = self.run(None, shutdown).await?;
        tracing::info!(folded = total.stored, "projector stopped");
        Ok(())
    }

    /// The pipelined loop: batch N+1 is received, folded and dead-lettered while batch N's
    /// transaction commits. One write is in flight at most, so batches commit in order, and it
    /// is drained before a rebalance's seek and before returning.
    async fn run(
        &mut self,
        targets: Option<&[(String, i32, i64)]>,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<(BatchOutcome, bool)> {
        tokio::pin!(shutdown);
        let mut total = BatchOutcome::default();
        let mut in_flight: Option<tokio::task::JoinHandle<anyhow::Result<Written>>> = None;
        let mut last_report = Instant::now();
        let stopped = loop {
            let done = targets.is_some_and(|t| self.covers(t));
            if done || self.has_pending_assignment() {
                if let Some(handle) = in_flight.take() {
                    total.add(
                        &self
                            .finish(handle.await.context("write task panicked")??)
                            .await?,
                    );
                }
                if done {
                    break false;
                }
            }
            let messages = tokio::select! {
                biased;
                () = &mut shutdown => None,
                received = self.receive(Duration::from_millis(500)) => Some(received?),
            };
            let Some(messages) = messages else {
                if let Some(handle) = in_flight.take() {
                    total.add(
                        &self
                            .finish(handle.await.context("write task panicked")??)
                            .await?,
                    );
                }
                break true;
            };
            let prepared = if messages.is_empty() {
                None
            } else {
                Some(self.prepare(messages).await?)
            };
            if let Some(handle) = in_flight.take() {
                total.add(
                    &self
                        .finish(handle.await.context("write task panicked")??)
                        .await?,
                );
            }
            if let Some(prepared) = prepared {
                in_flight = Some(tokio::spawn(self.writer().write(prepared)));
            }
            if last_report.elapsed() > Duration::from_secs(10) && total.stored > 0 {
                tracing::info!(folded = total.stored, "projector progress");
                last_report = Instant::now();
            }
        };
        Ok((total, stopped))
    }

    /// Empties the read models, the group's offsets and the Redis cache (`chainfold rebuild`).
    pub async fn reset(&mut self) -> anyhow::Result<()> {
        store::reset(&self.pool, &self.config.group)
            .await
            .context("could not reset the read models")?;
        self.positions.clear();
        let deleted = cache::clear(&mut self.redis, &self.config.redis.prefix)
            .await
            .context("could not clear the Redis cache")?;
        tracing::info!(deleted, "read models and cache cleared");
        Ok(())
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

/// A folded batch, its dead letters already acknowledged, ready to be written.
struct Prepared {
    outcome: BatchOutcome,
    items: Vec<Item>,
    heads: Vec<ChainHead>,
    offsets: Vec<(String, i32, i64)>,
}

/// A committed batch.
struct Written {
    batch: store::BatchWrite,
    outcome: BatchOutcome,
    offsets: Vec<(String, i32, i64)>,
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
    async fn write(self, prepared: Prepared) -> anyhow::Result<Written> {
        let started = Instant::now();
        let batch = self
            .commit_with_retry(&prepared.items, &prepared.heads, &prepared.offsets)
            .await?;
        let mut outcome = prepared.outcome;
        outcome.stored = batch.new_lending + batch.new_swaps + batch.new_other;
        outcome.retracted = batch.retracted;
        Ok(Written {
            batch,
            outcome,
            offsets: prepared.offsets,
            postgres: started.elapsed(),
        })
    }

    /// Writes rows and offsets in one transaction, retrying transient failures with backoff. A
    /// deterministic failure (constraint or data error) is narrowed down by writing the rows one
    /// at a time; a row Postgres still refuses is dead-lettered and the rest are stored.
    async fn commit_with_retry(
        &self,
        items: &[Item],
        heads: &[ChainHead],
        offsets: &[(String, i32, i64)],
    ) -> anyhow::Result<store::BatchWrite> {
        let mut backoff = Duration::from_millis(200);
        loop {
            match write_once(&self.pool, &self.group, items, heads, offsets).await {
                Ok(written) => return Ok(written),
                Err(err) if err.is_deterministic() && items.len() + heads.len() > 1 => {
                    tracing::warn!(error = %err, "batch refused by Postgres; writing its rows one by one");
                    return self.write_one_by_one(items, heads, offsets).await;
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
                    return write_once(&self.pool, &self.group, &[], &[], offsets)
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
        offsets: &[(String, i32, i64)],
    ) -> anyhow::Result<store::BatchWrite> {
        let mut total = store::BatchWrite::default();
        for item in items {
            let written =
                Box::pin(self.commit_with_retry(std::slice::from_ref(item), &[], &[])).await?;
            total.merge(written);
        }
        for head in heads {
            Box::pin(self.commit_with_retry(&[], std::slice::from_ref(head), &[])).await?;
        }
        Box::pin(self.commit_with_retry(&[], &[], offsets)).await?;
        Ok(total)
    }
}

/// Writes one run of inserts (no retraction inside it).
async fn insert_run(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    items: &[Item],
    out: &mut store::BatchWrite,
) -> Result<(), StoreError> {
    let mut lending = Vec::new();
    let mut swaps = Vec::new();
    let mut syncs = Vec::new();
    let mut liquidity = Vec::new();
    let mut loans = Vec::new();
    let mut oracle = Vec::new();
    for item in items {
        match &item.row {
            Row::Lending(r) => lending.push(((**r).clone(), item.at.clone())),
            Row::Swap(r) => swaps.push(((**r).clone(), item.at.clone())),
            Row::PoolSync(r) => syncs.push((&**r, &item.at)),
            Row::Liquidity(r) => liquidity.push((&**r, &item.at)),
            Row::FlashLoan(r) => loans.push((&**r, &item.at)),
            Row::Oracle(r) => oracle.push((&**r, &item.at)),
        }
    }
    let (new_lending, wallets) = store::insert_lending(tx, &lending).await?;
    let (new_swaps, pools) = store::insert_swaps(tx, &swaps).await?;
    out.new_lending += new_lending;
    out.new_swaps += new_swaps;
    out.wallets.extend(wallets);
    out.pools.extend(pools);
    out.new_other += live::insert_pool_syncs(tx, &syncs).await?;
    out.new_other += live::insert_liquidity(tx, &liquidity).await?;
    out.new_other += live::insert_flash_loans(tx, &loans).await?;
    out.new_other += live::insert_oracle_updates(tx, &oracle).await?;
    Ok(())
}

async fn write_once(
    pool: &PgPool,
    group: &str,
    items: &[Item],
    heads: &[ChainHead],
    offsets: &[(String, i32, i64)],
) -> Result<store::BatchWrite, StoreError> {
    let mut tx = pool.begin().await?;
    // Losing the last commits in a Postgres crash is safe here: the offsets are in the same
    // transaction, so they are lost with the rows and the projector refolds them from Kafka.
    sqlx::query("SET LOCAL synchronous_commit = off")
        .execute(&mut *tx)
        .await?;
    let mut out = store::BatchWrite::default();
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
            insert_run(&mut tx, run, &mut out).await?;
        }
    }
    live::upsert_heads(&mut tx, heads).await?;
    store::store_offsets(&mut tx, group, offsets).await?;
    tx.commit().await?;
    Ok(out)
}
