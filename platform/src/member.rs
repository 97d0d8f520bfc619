//! A consumer group member whose offsets live in Postgres ([`crate::offsets`]): what the
//! projector, the scorer and the risk worker consume through.
//!
//! The discipline (at least once in, each write once):
//! - On every assignment the member claims its partitions in Postgres (raising their epoch),
//!   checks the stored offsets against the log (below its start: the records are gone, refuse;
//!   beyond its end: the log was replaced, refuse) and seeks each partition there.
//! - The claimed partitions are assigned at those offsets; whatever arrives from a partition
//!   before that (fetched from Kafka's own committed offset, which after a rebuild is not where
//!   Postgres is) is discarded.
//! - Each [`Batch`] carries the [`Advance`] of every partition it read; the caller writes them
//!   with [`crate::offsets::advance`] in the transaction of its rows and, once that commits,
//!   calls [`Member::committed`] (which also commits to Kafka, as a hint for tools).
//! - A commit refused as [`Fenced`] is handed to [`Member::recover`]: a partition that another
//!   member claimed is dropped (or claimed back, if Kafka still assigns it here); one whose stored
//!   offset moved is sought back to it. The refused batch is read again.
//!
//! Static membership (`group.instance.id`) is set from the configured instance id, so a
//! restarted process takes its partitions back without a rebalance.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message as _;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use sqlx::PgPool;

use crate::config::KafkaArgs;
use crate::kafka;
use crate::offsets::{self, Advance, Fenced};

/// The latest assignment handed over by a rebalance, not yet applied (`Some(vec![])` after a
/// revocation).
type Pending = Arc<Mutex<Option<Vec<(String, i32)>>>>;

/// Records the assignment for the loop (no I/O in the callback).
#[derive(Debug, Clone, Default)]
pub struct MemberContext {
    pending: Pending,
}

impl ClientContext for MemberContext {
    /// `auto.offset.reset` is `error`, so librdkafka reports every partition it has no Kafka
    /// offset for; the member positions those itself from Postgres (and refuses offsets outside
    /// the log), so that report is not an error here.
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::AutoOffsetReset) {
            tracing::debug!("librdkafka: {error}: {reason} (the member seeks from Postgres)");
        } else {
            tracing::error!("librdkafka: {error}: {reason}");
        }
    }
}

impl ConsumerContext for MemberContext {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let mut pending = self.pending.lock().expect("assignment lock poisoned");
        match rebalance {
            // The eager protocol hands over the whole assignment each time: replace it.
            Rebalance::Assign(tpl) => {
                let list: Vec<(String, i32)> = tpl
                    .elements()
                    .iter()
                    .map(|e| (e.topic().to_owned(), e.partition()))
                    .collect();
                tracing::info!(partitions = list.len(), "partitions assigned");
                *pending = Some(list);
            }
            Rebalance::Revoke(tpl) => {
                tracing::info!(partitions = tpl.count(), "partitions revoked");
                *pending = Some(Vec::new());
            }
            Rebalance::Error(err) => tracing::warn!(%err, "rebalance error"),
        }
    }
}

/// The Kafka log ends before offsets stored in Postgres: the broker's data was reset or the
/// topics recreated, and what Postgres holds describes a log that no longer exists.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the Kafka log ends before the offsets stored in Postgres ({0}); was the broker reset? `chainfold rebuild` refolds everything from the log")]
pub struct LogReset(pub String);

/// The log no longer starts where Postgres says this group must read next: records were
/// deleted (retention, `kafka-delete-records`) and what they held cannot be folded.
#[derive(Debug, Clone, thiserror::Error)]
#[error("records the read models need are gone from Kafka ({0}); the log of record must keep every record (retention.ms=-1): restore it, or rebuild from a log that starts at offset 0")]
pub struct LogTruncated(pub String);

/// One received record.
#[derive(Debug, Clone)]
pub struct Received {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    /// The broker's timestamp of the record (ms since the epoch), when it has one.
    pub timestamp_ms: Option<i64>,
}

impl Received {
    /// `topic/partition/offset`, the origin a dead letter names.
    pub fn origin(&self) -> String {
        format!("{}/{}/{}", self.topic, self.partition, self.offset)
    }
}

/// Records received in one call, with the offsets their commit must write.
#[derive(Debug, Default)]
pub struct Batch {
    pub messages: Vec<Received>,
    /// Per partition read: from the offset stored before this batch to one past its last record.
    pub advances: Vec<Advance>,
    /// Records below a partition's position (read again after a seek) that were dropped.
    pub skipped: u64,
}

#[derive(Debug, Clone)]
struct Owned {
    epoch: i64,
    /// What Postgres holds (as far as this member knows): the next offset to fold.
    stored: i64,
    /// The next offset to accept from Kafka (ahead of `stored` while batches are in flight).
    read: i64,
    sought: bool,
}

/// A group member with Postgres offsets.
pub struct Member {
    consumer: StreamConsumer<MemberContext>,
    pending: Pending,
    owned: BTreeMap<(String, i32), Owned>,
    /// The group's last assignment to this member (what Kafka assigns here, whatever was claimed).
    assigned: Vec<(String, i32)>,
    /// An assignment has been applied (claimed and checked against the log) at least once.
    joined: bool,
    pool: PgPool,
    group: String,
    owner: String,
    instance_id: String,
    kafka: KafkaArgs,
    probe: Arc<BaseConsumer>,
}

impl std::fmt::Debug for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Member")
            .field("group", &self.group)
            .field("owner", &self.owner)
            .field("partitions", &self.owned.len())
            .finish()
    }
}

impl Member {
    /// Joins `group` as static member `instance_id` and subscribes to `topics`.
    pub fn join(
        kafka: &KafkaArgs,
        pool: PgPool,
        group: &str,
        instance_id: &str,
        topics: &[&str],
    ) -> anyhow::Result<Member> {
        let context = MemberContext::default();
        let pending = context.pending.clone();
        let consumer: StreamConsumer<MemberContext> = kafka::consumer_config(kafka, group)
            .set("group.instance.id", instance_id)
            // An offset outside the log is an error to report, never a silent jump.
            .set("auto.offset.reset", "error")
            .create_with_context(context)
            .context("could not create Kafka consumer")?;
        consumer
            .subscribe(topics)
            .with_context(|| format!("could not subscribe to {topics:?}"))?;
        let probe: BaseConsumer = kafka::client_config(kafka)
            .create()
            .context("could not create Kafka metadata client")?;
        Ok(Member {
            consumer,
            pending,
            owned: BTreeMap::new(),
            assigned: Vec::new(),
            joined: false,
            pool,
            group: group.to_owned(),
            owner: format!("{instance_id}/{}", std::process::id()),
            instance_id: instance_id.to_owned(),
            kafka: kafka.clone(),
            probe: Arc::new(probe),
        })
    }

    /// The group id (also the key of the offsets in Postgres).
    pub fn group(&self) -> &str {
        &self.group
    }

    /// The partitions this member holds a claim on.
    pub fn partitions(&self) -> Vec<(String, i32)> {
        self.owned.keys().cloned().collect()
    }

    /// The offset Postgres holds for a partition this member owns.
    pub fn stored(&self, topic: &str, partition: i32) -> Option<i64> {
        self.owned
            .get(&(topic.to_owned(), partition))
            .map(|o| o.stored)
    }

    /// True when a rebalance handed over an assignment not applied yet.
    pub fn has_pending_assignment(&self) -> bool {
        self.pending
            .lock()
            .expect("assignment lock poisoned")
            .is_some()
    }

    /// Applies a pending assignment (claims, log checks) and retries seeks not yet possible.
    pub async fn apply_assignment(&mut self) -> anyhow::Result<()> {
        let assigned = self
            .pending
            .lock()
            .expect("assignment lock poisoned")
            .take();
        if let Some(assigned) = assigned {
            self.owned.clear();
            self.assigned.clone_from(&assigned);
            let claimed = match offsets::claim(&self.pool, &self.group, &self.owner, &assigned)
                .await
                .context("could not claim the assigned partitions in Postgres")
            {
                Ok(claims) => self.check_against_log(&claims).await.map(|()| claims),
                Err(err) => Err(err),
            };
            let claims = match claimed {
                Ok(claims) => claims,
                Err(err) => {
                    // Tried again on the next receive (after a rebuild reset the offsets, say),
                    // unless a newer rebalance replaced it meanwhile.
                    self.pending
                        .lock()
                        .expect("assignment lock poisoned")
                        .get_or_insert(assigned);
                    return Err(err);
                }
            };
            self.joined = true;
            for (key, claim) in claims {
                tracing::debug!(topic = %key.0, partition = key.1, epoch = claim.epoch, next = claim.next_offset, "partition claimed");
                self.owned.insert(
                    key,
                    Owned {
                        epoch: claim.epoch,
                        stored: claim.next_offset,
                        read: claim.next_offset,
                        sought: false,
                    },
                );
            }
        }
        self.reassign()
    }

    /// Refuses claims whose offset is outside the log (see [`LogReset`], [`LogTruncated`]).
    async fn check_against_log(
        &self,
        claims: &[((String, i32), offsets::Claim)],
    ) -> anyhow::Result<()> {
        if claims.is_empty() {
            return Ok(());
        }
        let probe = self.probe.clone();
        let wanted: Vec<(String, i32)> = claims.iter().map(|(k, _)| k.clone()).collect();
        let marks = tokio::task::spawn_blocking(move || {
            wanted
                .into_iter()
                .map(|(topic, partition)| {
                    let marks = kafka::partition_watermarks(
                        &probe,
                        &topic,
                        partition,
                        Duration::from_secs(60),
                    )?;
                    Ok(((topic, partition), marks))
                })
                .collect::<anyhow::Result<BTreeMap<_, _>>>()
        })
        .await
        .context("watermark task panicked")??;
        let mut reset = Vec::new();
        let mut truncated = Vec::new();
        for ((topic, partition), claim) in claims {
            let Some((low, high)) = marks.get(&(topic.clone(), *partition)) else {
                continue;
            };
            if claim.next_offset > *high {
                reset.push(format!(
                    "{topic}/{partition} stored {}, log ends at {high}",
                    claim.next_offset
                ));
            } else if claim.next_offset < *low {
                truncated.push(format!(
                    "{topic}/{partition} must read from {}, log starts at {low}",
                    claim.next_offset
                ));
            }
        }
        if !reset.is_empty() {
            return Err(LogReset(reset.join("; ")).into());
        }
        if !truncated.is_empty() {
            return Err(LogTruncated(truncated.join("; ")).into());
        }
        Ok(())
    }

    /// Points the consumer at the claimed offsets: one `assign` of every owned partition at
    /// its read offset (a seek is refused while a partition has no fetch position, which is the
    /// state `auto.offset.reset=error` leaves a partition Kafka has no committed offset for).
    fn reassign(&mut self) -> anyhow::Result<()> {
        if self.owned.values().all(|o| o.sought) {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), owned) in &self.owned {
            tpl.add_partition_offset(topic, *partition, Offset::Offset(owned.read))
                .context("could not build the assignment")?;
        }
        self.consumer
            .assign(&tpl)
            .context("could not assign the claimed partitions at their stored offsets")?;
        for ((topic, partition), owned) in self.owned.iter_mut().filter(|(_, o)| !o.sought) {
            owned.sought = true;
            tracing::info!(
                topic,
                partition,
                offset = owned.read,
                epoch = owned.epoch,
                "reading from the offset stored in Postgres"
            );
        }
        Ok(())
    }

    /// Receives up to `max` records, waiting at most `idle` for the first and `linger` after
    /// it; stops early when a rebalance hands over a new assignment (apply it first).
    pub async fn receive(
        &mut self,
        max: usize,
        idle: Duration,
        linger: Duration,
    ) -> anyhow::Result<Batch> {
        self.apply_assignment().await?;
        let mut batch = Batch::default();
        let mut starts: BTreeMap<(String, i32), i64> = BTreeMap::new();
        let mut deadline = Instant::now() + idle;
        while batch.messages.len() < max {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            let received = match tokio::time::timeout(remaining, self.consumer.recv()).await {
                Err(_) => break,
                Ok(Ok(message)) => Received {
                    topic: message.topic().to_owned(),
                    partition: message.partition(),
                    offset: message.offset(),
                    key: message.key().map(<[u8]>::to_vec),
                    payload: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                    timestamp_ms: message.timestamp().to_millis(),
                },
                Ok(Err(err)) => {
                    if self.has_pending_assignment() && batch.messages.is_empty() {
                        self.apply_assignment().await?;
                    }
                    if err.rdkafka_error_code() == Some(RDKafkaErrorCode::AutoOffsetReset) {
                        self.check_positions_in_log().await?;
                    } else {
                        self.consumer_error(err)?;
                    }
                    if self.has_pending_assignment() && !batch.messages.is_empty() {
                        break;
                    }
                    continue;
                }
            };
            if self.has_pending_assignment() && batch.messages.is_empty() {
                // A rebalance during the wait, nothing read yet: claim and assign right away.
                // This record was fetched before that (from Kafka's committed offset, not the
                // claim's): drop it; the partition is read again from the claimed offset.
                self.apply_assignment().await?;
                continue;
            }
            let key = (received.topic.clone(), received.partition);
            let Some(owned) = self.owned.get_mut(&key).filter(|o| o.sought) else {
                // Not claimed, or not assigned at its claim yet: fetched from where Kafka was,
                // not from where Postgres is.
                if self.has_pending_assignment() {
                    break;
                }
                continue;
            };
            if received.offset < owned.read {
                batch.skipped += 1;
                continue;
            }
            starts.entry(key).or_insert(owned.read);
            owned.read = received.offset + 1;
            if batch.messages.is_empty() {
                deadline = Instant::now() + linger;
            }
            batch.messages.push(received);
            if self.has_pending_assignment() {
                // Commit what was read under the old claims before claiming anew.
                break;
            }
        }
        for ((topic, partition), from) in starts {
            let owned = &self.owned[&(topic.clone(), partition)];
            batch.advances.push(Advance {
                topic,
                partition,
                epoch: owned.epoch,
                from,
                to: owned.read,
            });
        }
        Ok(batch)
    }

    fn consumer_error(&self, err: KafkaError) -> anyhow::Result<()> {
        match err.rdkafka_error_code() {
            Some(RDKafkaErrorCode::FencedInstanceId) => Err(anyhow::anyhow!(
                "another process joined group {} as instance {}: give each replica its own --instance-id",
                self.group,
                self.instance_id
            )),
            _ if matches!(err, KafkaError::MessageConsumptionFatal(_)) => {
                Err(err).context("the Kafka consumer failed")
            }
            _ => {
                tracing::debug!(%err, "kafka consumer error");
                Ok(())
            }
        }
    }

    /// `auto.offset.reset=error` reports an offset outside the log without saying which
    /// partition (and also for the fetch librdkafka starts before the claimed offsets are
    /// assigned): check every owned partition's position against the log; one outside it is
    /// [`LogTruncated`], never silently replaced.
    async fn check_positions_in_log(&self) -> anyhow::Result<()> {
        let positions: Vec<((String, i32), offsets::Claim)> = self
            .owned
            .iter()
            .map(|(k, o)| {
                (
                    k.clone(),
                    offsets::Claim {
                        next_offset: o.read,
                        epoch: o.epoch,
                    },
                )
            })
            .collect();
        self.check_against_log(&positions).await
    }

    /// An advance of a partition this member owns from its stored offset to `to` (for callers
    /// that commit less than they read, like the risk worker's unevaluated blocks).
    pub fn advance_to(&self, topic: &str, partition: i32, to: i64) -> Option<Advance> {
        let owned = self.owned.get(&(topic.to_owned(), partition))?;
        (to > owned.stored).then(|| Advance {
            topic: topic.to_owned(),
            partition,
            epoch: owned.epoch,
            from: owned.stored,
            to,
        })
    }

    /// After the transaction holding `advances` committed: remembers the stored offsets and
    /// commits them to Kafka (a hint for tools and lag metrics; Postgres is the truth).
    pub fn committed(&mut self, advances: &[Advance]) {
        let mut tpl = TopicPartitionList::new();
        for a in advances {
            if let Some(owned) = self
                .owned
                .get_mut(&(a.topic.clone(), a.partition))
                .filter(|o| o.epoch == a.epoch)
            {
                owned.stored = a.to;
            }
            if tpl
                .add_partition_offset(&a.topic, a.partition, Offset::Offset(a.to))
                .is_err()
            {
                return;
            }
        }
        if tpl.count() > 0 {
            if let Err(err) = self.consumer.commit(&tpl, CommitMode::Async) {
                tracing::debug!(%err, "kafka offset commit failed (offsets are in Postgres)");
            }
        }
    }

    /// After a commit refused as [`Fenced`]: a partition another member claimed is dropped, or
    /// claimed again when Kafka still assigns it here (a claim from an older assignment that
    /// overtook ours); one whose stored offset moved is read again from there.
    pub async fn recover(&mut self, fenced: &Fenced) -> anyhow::Result<()> {
        // Whatever was read after the refused batch's start is dropped with it: every partition
        // is read again from what Postgres holds.
        for owned in self.owned.values_mut() {
            owned.read = owned.stored;
            owned.sought = false;
        }
        if self.has_pending_assignment() {
            // A rebalance came meanwhile: its claims (next receive) settle every partition.
            return Ok(());
        }
        let assigned = self.assigned.clone();
        for key in &fenced.partitions {
            let Some(owned) = self.owned.get(key).cloned() else {
                continue;
            };
            let row = offsets::stored(&self.pool, &self.group, &key.0, key.1)
                .await
                .context("could not read a fenced partition's offset")?;
            match row {
                Some((next, epoch, _)) if epoch == owned.epoch => {
                    tracing::warn!(topic = %key.0, partition = key.1, stored = next, expected = owned.stored, "stored offset moved under this member; reading again from it");
                    self.owned.insert(
                        key.clone(),
                        Owned {
                            stored: next,
                            read: next,
                            sought: false,
                            ..owned
                        },
                    );
                }
                row if assigned.contains(key) => {
                    let claims = offsets::claim(
                        &self.pool,
                        &self.group,
                        &self.owner,
                        std::slice::from_ref(key),
                    )
                    .await
                    .context("could not claim a partition back")?;
                    self.check_against_log(&claims).await?;
                    for (key, claim) in claims {
                        tracing::warn!(topic = %key.0, partition = key.1, other = ?row.as_ref().and_then(|r| r.2.clone()), epoch = claim.epoch, "partition claimed by another member while Kafka still assigns it here; claimed back");
                        self.owned.insert(
                            key,
                            Owned {
                                epoch: claim.epoch,
                                stored: claim.next_offset,
                                read: claim.next_offset,
                                sought: false,
                            },
                        );
                    }
                }
                row => {
                    tracing::warn!(topic = %key.0, partition = key.1, other = ?row.and_then(|r| r.2), "partition claimed by another member; dropped");
                    self.owned.remove(key);
                }
            }
        }
        self.reassign()
    }

    /// Drops whatever was read and not committed: every partition is read again from what
    /// Postgres holds (after a batch failed half-way, e.g. its database connection broke).
    pub fn rewind(&mut self) {
        for owned in self.owned.values_mut() {
            owned.read = owned.stored;
            owned.sought = false;
        }
    }

    /// After a failed batch: a transient failure (see [`is_transient`]) rewinds to what Postgres
    /// holds and waits `backoff` (doubled, at most 10 s, for the next one); anything else is
    /// returned. A successful batch resets `backoff` with [`Member::RETRY_START`].
    pub async fn retry_after(
        &mut self,
        err: anyhow::Error,
        backoff: &mut std::time::Duration,
        what: &str,
    ) -> anyhow::Result<()> {
        if !is_transient(&err) {
            return Err(err);
        }
        tracing::warn!(error = %format!("{err:#}"), retry_in = ?*backoff, "{what} failed; retrying");
        self.rewind();
        tokio::time::sleep(*backoff).await;
        *backoff = (*backoff * 2).min(std::time::Duration::from_secs(10));
        Ok(())
    }

    /// The first wait of [`Member::retry_after`].
    pub const RETRY_START: std::time::Duration = std::time::Duration::from_millis(200);

    /// High watermarks of every partition of `topics`, now.
    pub async fn high_watermarks(
        &self,
        topics: &[String],
    ) -> anyhow::Result<Vec<(String, i32, i64)>> {
        let probe = self.probe.clone();
        let topics = topics.to_vec();
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

    /// True when every partition in `targets` has been read up to its target offset by some
    /// member of the group (Postgres, not this member: others may own the partitions). False
    /// until this member has joined: its own claims are what check the stored offsets against
    /// the log.
    pub async fn group_covers(&self, targets: &[(String, i32, i64)]) -> anyhow::Result<bool> {
        if !self.joined {
            return Ok(false);
        }
        let stored: BTreeMap<(String, i32), i64> = offsets::load(&self.pool, &self.group)
            .await
            .context("could not read the group's offsets")?
            .into_iter()
            .collect();
        Ok(targets.iter().all(|(topic, partition, high)| {
            *high == 0
                || stored
                    .get(&(topic.clone(), *partition))
                    .is_some_and(|next| next >= high)
        }))
    }

    /// The Kafka settings this member was built with.
    pub fn kafka(&self) -> &KafkaArgs {
        &self.kafka
    }
}

/// True when `err` is worth retrying with the same input: the database or the broker was
/// unreachable, restarting or timed out (not a bad record or a broken config). In doubt, transient
/// only for I/O: a deterministic failure retried forever would be a crash loop of its own.
pub fn is_transient(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        if let Some(e) = e.downcast_ref::<sqlx::Error>() {
            return match e {
                sqlx::Error::Io(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::WorkerCrashed
                | sqlx::Error::Protocol(_)
                | sqlx::Error::Tls(_) => true,
                // 08: connection exception, 53: insufficient resources, 57P: operator
                // intervention (admin shutdown, crash shutdown, cannot connect now).
                sqlx::Error::Database(db) => db.code().is_some_and(|c| {
                    c.starts_with("08") || c.starts_with("53") || c.starts_with("57P")
                }),
                _ => false,
            };
        }
        if let Some(e) = e.downcast_ref::<KafkaError>() {
            return !matches!(e, KafkaError::MessageConsumptionFatal(_));
        }
        e.downcast_ref::<std::io::Error>().is_some()
    })
}
