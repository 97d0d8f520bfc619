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
pub mod store;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chainfold_domain::fold::{lending_row, swap_row, LendingRow, SwapRow};
use chainfold_domain::Envelope;
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
        self.instance_id.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
                .or_else(|| std::env::var("HOSTNAME").ok())
                .unwrap_or_else(|| "localhost".to_owned());
            format!("{}@{host}", self.group)
        })
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
    Lending(Box<LendingRow>),
    Swap(Box<SwapRow>),
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
        tracing::info!(group = %config.group, lending = %topics.lending, amm = %topics.amm, "projector subscribed");
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

    /// Receives up to `batch_size` messages (waiting at most `batch_wait` after the first, and
    /// at most `idle` for the first), folds them, and commits rows and offsets in one Postgres
    /// transaction. Returns what it did; `received == 0` means nothing arrived within `idle`.
    pub async fn process_batch(&mut self, idle: Duration) -> anyhow::Result<BatchOutcome> {
        self.apply_pending_assignment().await?;
        let started = Instant::now();
        let mut messages: Vec<Received> = Vec::new();
        let mut deadline = Instant::now() + idle;
        let mut first = true;
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
                    messages.push(Received {
                        at: Coordinates {
                            topic: msg.topic().to_owned(),
                            partition: msg.partition(),
                            offset: msg.offset(),
                        },
                        key: msg.key().map(<[u8]>::to_vec),
                        payload: msg.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                    });
                    if first {
                        first = false;
                        deadline = Instant::now() + self.config.batch_wait;
                    }
                }
            }
            // A rebalance during the wait: stop here and seek before reading more.
            if !self
                .pending
                .lock()
                .expect("pending assignment lock poisoned")
                .is_empty()
            {
                break;
            }
        }
        self.timings.receive += started.elapsed();
        if messages.is_empty() {
            return Ok(BatchOutcome::default());
        }
        self.write_batch(messages).await
    }

    async fn write_batch(&mut self, messages: Vec<Received>) -> anyhow::Result<BatchOutcome> {
        let mut outcome = BatchOutcome {
            received: messages.len() as u64,
            ..BatchOutcome::default()
        };
        let fold_started = Instant::now();
        let mut lending: Vec<(LendingRow, Coordinates)> = Vec::new();
        let mut swaps: Vec<(SwapRow, Coordinates)> = Vec::new();
        let mut rejected: Vec<(Received, String)> = Vec::new();
        let mut next_offsets: BTreeMap<(String, i32), i64> = BTreeMap::new();
        for message in messages {
            let position = (message.at.topic.clone(), message.at.partition);
            if self
                .positions
                .get(&position)
                .is_some_and(|next| message.at.offset < *next)
            {
                outcome.skipped += 1;
                continue;
            }
            next_offsets.insert(position, message.at.offset + 1);
            match self.fold(&message) {
                Ok(Folded::Lending(row)) => lending.push((*row, message.at)),
                Ok(Folded::Swap(row)) => swaps.push((*row, message.at)),
                Err(reason) => rejected.push((message, reason)),
            }
        }
        self.timings.decode_fold += fold_started.elapsed();

        // Dead letters are acknowledged by the broker before the offsets that pass them are
        // committed: a crash in between re-sends them, never loses them.
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
            outcome.dead_lettered += 1;
        }
        self.timings.dead_letter += dlq_started.elapsed();

        let offsets: Vec<(String, i32, i64)> = next_offsets
            .iter()
            .map(|((t, p), o)| (t.clone(), *p, *o))
            .collect();
        let pg_started = Instant::now();
        let written = self.commit_with_retry(&lending, &swaps, &offsets).await?;
        self.timings.postgres += pg_started.elapsed();
        outcome.stored = written.new_lending + written.new_swaps;
        for ((topic, partition), next) in &next_offsets {
            self.positions.insert((topic.clone(), *partition), *next);
        }

        let redis_started = Instant::now();
        if let Err(err) = cache::write_summaries(
            &mut self.redis,
            &self.config.redis.prefix,
            &written.wallets,
            &written.pools,
        )
        .await
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
            // A hint for tools that read the group's Kafka offsets; Postgres is the truth.
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

    fn fold(&self, message: &Received) -> Result<Folded, String> {
        let envelope: Envelope = serde_json::from_slice(&message.payload)
            .map_err(|e| format!("could not decode envelope: {e}"))?;
        if message.at.topic == self.topics.amm {
            swap_row(&envelope)
                .map(|r| Folded::Swap(Box::new(r)))
                .map_err(|e| e.to_string())
        } else {
            lending_row(&envelope)
                .map(|r| Folded::Lending(Box::new(r)))
                .map_err(|e| e.to_string())
        }
    }

    /// Writes a batch in one transaction, retrying transient failures with backoff. A
    /// deterministic failure (constraint or data error) is narrowed to the offending rows by
    /// writing them one at a time; those are dead-lettered and the rest stored.
    async fn commit_with_retry(
        &mut self,
        lending: &[(LendingRow, Coordinates)],
        swaps: &[(SwapRow, Coordinates)],
        offsets: &[(String, i32, i64)],
    ) -> anyhow::Result<store::BatchWrite> {
        let mut backoff = Duration::from_millis(200);
        loop {
            match write_once(&self.pool, &self.config.group, lending, swaps, offsets).await {
                Ok(written) => return Ok(written),
                Err(err) if err.is_deterministic() && lending.len() + swaps.len() > 1 => {
                    tracing::warn!(error = %err, "batch rejected by Postgres; writing its rows one by one");
                    return self.write_one_by_one(lending, swaps, offsets).await;
                }
                Err(err) if err.is_deterministic() => {
                    let (topic, reason) = (
                        offsets.first().map(|o| o.0.clone()).unwrap_or_default(),
                        format!("{err}: {:?}", std::error::Error::source(&err)),
                    );
                    let payload = format!("{lending:?}{swaps:?}");
                    dlq::send(
                        &self.producer,
                        &DeadLetter {
                            topic: &topic,
                            stage: "projector",
                            reason: &reason,
                            origin: "postgres",
                            key: None,
                            payload: payload.as_bytes(),
                        },
                    )
                    .await?;
                    return write_once(&self.pool, &self.config.group, &[], &[], offsets)
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
        &mut self,
        lending: &[(LendingRow, Coordinates)],
        swaps: &[(SwapRow, Coordinates)],
        offsets: &[(String, i32, i64)],
    ) -> anyhow::Result<store::BatchWrite> {
        let mut total = store::BatchWrite::default();
        for item in lending {
            let written =
                Box::pin(self.commit_with_retry(std::slice::from_ref(item), &[], &[])).await?;
            total.new_lending += written.new_lending;
            total.wallets.extend(written.wallets);
        }
        for item in swaps {
            let written =
                Box::pin(self.commit_with_retry(&[], std::slice::from_ref(item), &[])).await?;
            total.new_swaps += written.new_swaps;
            total.pools.extend(written.pools);
        }
        Box::pin(self.commit_with_retry(&[], &[], offsets)).await?;
        Ok(total)
    }

    /// True when every partition of the event topics has been folded up to `targets`
    /// (high watermarks taken earlier), by the offsets stored in Postgres.
    pub async fn caught_up_to(&self, targets: &[(String, i32, i64)]) -> anyhow::Result<bool> {
        let mut stored: HashMap<(String, i32), i64> = HashMap::new();
        for topic in self.topics.event_topics() {
            for (partition, offset) in
                store::load_offsets(&self.pool, &self.config.group, topic).await?
            {
                stored.insert((topic.to_owned(), partition), offset);
            }
        }
        Ok(targets.iter().all(|(topic, partition, high)| {
            *high == 0
                || stored
                    .get(&(topic.clone(), *partition))
                    .is_some_and(|o| o >= high)
        }))
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

    /// Folds until everything in the log when called has been folded (demo, rebuild,
    /// benchmarks), then returns the totals.
    pub async fn run_until_caught_up(&mut self) -> anyhow::Result<BatchOutcome> {
        self.run_until_caught_up_or(std::future::pending()).await
    }

    /// [`Self::run_until_caught_up`], stopping early (after the batch in hand) when `shutdown`
    /// resolves.
    pub async fn run_until_caught_up_or(
        &mut self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<BatchOutcome> {
        tokio::pin!(shutdown);
        let targets = self.high_watermarks().await?;
        let mut total = BatchOutcome::default();
        loop {
            if self.caught_up_to(&targets).await? {
                return Ok(total);
            }
            if futures::poll!(&mut shutdown).is_ready() {
                anyhow::bail!("stopped before the read models caught up with the log");
            }
            let outcome = self.process_batch(Duration::from_millis(500)).await?;
            total.received += outcome.received;
            total.stored += outcome.stored;
            total.dead_lettered += outcome.dead_lettered;
            total.skipped += outcome.skipped;
        }
    }

    /// Folds until `shutdown` resolves; the batch in hand is finished and committed first.
    pub async fn run_until_stopped(
        mut self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        tokio::pin!(shutdown);
        let mut folded: u64 = 0;
        let mut last_report = Instant::now();
        loop {
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                outcome = self.process_batch(Duration::from_millis(500)) => {
                    let outcome = outcome?;
                    folded += outcome.stored;
                    if last_report.elapsed() > Duration::from_secs(10) && folded > 0 {
                        tracing::info!(folded, "projector progress");
                        last_report = Instant::now();
                    }
                }
            }
        }
        tracing::info!(folded, "projector stopped");
        Ok(())
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

async fn write_once(
    pool: &PgPool,
    group: &str,
    lending: &[(LendingRow, Coordinates)],
    swaps: &[(SwapRow, Coordinates)],
    offsets: &[(String, i32, i64)],
) -> Result<store::BatchWrite, StoreError> {
    let mut tx = pool.begin().await?;
    let (new_lending, wallets) = store::insert_lending(&mut tx, lending).await?;
    let (new_swaps, pools) = store::insert_swaps(&mut tx, swaps).await?;
    store::store_offsets(&mut tx, group, offsets).await?;
    tx.commit().await?;
    Ok(store::BatchWrite {
        new_lending,
        new_swaps,
        wallets,
        pools,
    })
}
