//! `chainfold score`: a consumer group on the lending topic that rescores a wallet on every
//! lending event of it.
//!
//! Per batch: the lending envelopes are grouped by wallet; the scorer waits until the projector
//! has folded them (its offsets in `consumer_offset` pass the batch's), reads each wallet's
//! history from `lending_event` once, and computes one score per event with the features as of
//! that event's time (so the result does not depend on batch boundaries). Rows go in with
//! `ON CONFLICT (chain_id, wallet, event_id) DO NOTHING`; Kafka offsets are committed after the
//! Postgres commit. A crash replays from the last commit and the replay changes nothing.
//! After the commit: Redis (`<prefix>score:<chain>:<wallet>` hash + a `<prefix>scores` pub/sub
//! message) and `chainfold.scores.v1` (keyed by wallet).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chainfold_domain::credit::{activity_features, Attestation, HistoryEvent};
use chainfold_domain::scorecard::{self, Score};
use chainfold_domain::{topics, Envelope, LendingAction};
use chainfold_platform::config::{KafkaArgs, PostgresArgs, RedisArgs};
use chainfold_platform::kafka;
use chrono::{DateTime, Utc};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message as _;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use sqlx::PgPool;

use crate::model::PositionModel;

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
    /// How long to wait for the projector to fold a batch before failing.
    #[arg(long = "projector-wait", default_value = "60s", value_parser = chainfold_platform::config::parse_duration)]
    pub projector_wait: Duration,
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
            batch_size: 2000,
            projector_wait: Duration::from_secs(60),
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
    /// Attestations ignored: malformed ones (never stored) …
    pub attestations_malformed: u64,
    /// … and stored ones that had expired at the time a score was computed.
    pub attestations_expired: u64,
}

/// A running scorer.
pub struct Scorer {
    consumer: StreamConsumer,
    producer: FutureProducer,
    pool: PgPool,
    redis: redis::aio::ConnectionManager,
    model: PositionModel,
    config: Config,
    lending_topic: String,
    attestations_topic: String,
    scores_topic: String,
    /// Time spent from each batch's first message to its commit (waiting for the group join or
    /// for messages excluded): what the benchmark divides by.
    pub busy: Duration,
}

impl std::fmt::Debug for Scorer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scorer")
            .field("group", &self.config.group)
            .finish()
    }
}

/// What a score row is computed for: a lending event or an attestation of the wallet.
struct Trigger {
    chain_id: u64,
    wallet: String,
    event_id: String,
    at: DateTime<Utc>,
    topic: String,
    partition: i32,
    offset: i64,
    block_number: Option<i64>,
}

impl Scorer {
    pub async fn build(config: Config) -> anyhow::Result<Scorer> {
        let model = PositionModel::load(&config.model_dir)?;
        let pool = chainfold_platform::postgres::connect_and_migrate(&config.postgres).await?;
        let redis = chainfold_platform::redis_cache::connect(&config.redis).await?;
        let topics = config.kafka.topics();
        let scores_topic = format!("{}{}", config.kafka.topic_prefix, topics::SCORES);
        let attestations_topic = format!("{}{}", config.kafka.topic_prefix, topics::ATTESTATIONS);
        let mut all = topics.all();
        all.push(scores_topic.clone());
        all.push(attestations_topic.clone());
        kafka::ensure_topics(&config.kafka, &all).await?;
        let consumer: StreamConsumer = kafka::consumer_config(&config.kafka, &config.group)
            .set("group.instance.id", config.instance_id())
            .create()
            .context("could not create Kafka consumer")?;
        consumer
            .subscribe(&[topics.lending.as_str(), attestations_topic.as_str()])
            .context("could not subscribe to the lending and attestation topics")?;
        let producer = kafka::producer(&config.kafka)?;
        tracing::info!(group = %config.group, model = %model.version, sha256 = %model.sha256, "scorer subscribed");
        Ok(Scorer {
            consumer,
            producer,
            pool,
            redis,
            model,
            lending_topic: topics.lending,
            attestations_topic,
            scores_topic,
            busy: Duration::ZERO,
            config,
        })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Receives up to `batch_size` messages (waiting at most `idle` for the first), scores them and
    /// commits. `received == 0` means nothing arrived.
    pub async fn process_batch(&mut self, idle: Duration) -> anyhow::Result<Outcome> {
        let mut messages = Vec::new();
        let mut first_at: Option<Instant> = None;
        let deadline = Instant::now() + idle;
        while messages.len() < self.config.batch_size {
            let wait = if messages.is_empty() {
                deadline.saturating_duration_since(Instant::now())
            } else {
                Duration::from_millis(20)
            };
            match tokio::time::timeout(wait, self.consumer.recv()).await {
                Ok(Ok(m)) => {
                    first_at.get_or_insert_with(Instant::now);
                    messages.push((
                        m.topic().to_owned(),
                        m.partition(),
                        m.offset(),
                        m.payload().map(<[u8]>::to_vec),
                    ));
                }
                Ok(Err(err)) => return Err(err).context("could not read from Kafka"),
                Err(_) => break,
            }
        }
        let mut outcome = Outcome {
            received: messages.len() as u64,
            ..Outcome::default()
        };
        if messages.is_empty() {
            return Ok(outcome);
        }
        let mut triggers: Vec<Trigger> = Vec::new();
        // Lending offsets only: the projector does not fold attestations.
        let mut max_offset: BTreeMap<i32, i64> = BTreeMap::new();
        let mut commit: BTreeMap<(String, i32), i64> = BTreeMap::new();
        let mut attestations = Vec::new();
        for (topic, partition, offset, payload) in &messages {
            let next = commit.entry((topic.clone(), *partition)).or_insert(*offset);
            *next = (*next).max(*offset);
            if *topic == self.attestations_topic {
                let parsed = payload
                    .as_deref()
                    .ok_or_else(|| "empty record".to_owned())
                    .and_then(|p| {
                        serde_json::from_slice::<Attestation>(p).map_err(|e| e.to_string())
                    })
                    .and_then(|a| a.validate().map(|()| a));
                match parsed {
                    Ok(a) => {
                        triggers.push(Trigger {
                            chain_id: a.chain_id,
                            wallet: format!("{:#x}", a.wallet),
                            event_id: a.id().to_string(),
                            at: a.issued_at,
                            topic: topic.clone(),
                            partition: *partition,
                            offset: *offset,
                            block_number: None,
                        });
                        attestations.push((a, *partition, *offset));
                    }
                    Err(reason) => {
                        tracing::warn!(%reason, partition, offset, "attestation ignored: malformed");
                        outcome.attestations_malformed += 1;
                    }
                }
                continue;
            }
            let entry = max_offset.entry(*partition).or_insert(*offset);
            *entry = (*entry).max(*offset);
            let parsed = payload
                .as_deref()
                .and_then(|p| serde_json::from_slice::<Envelope>(p).ok())
                .filter(|env| !env.retracted);
            match parsed.and_then(|env| HistoryEvent::of(&env).map(|event| (env, event))) {
                Some((env, event)) => triggers.push(Trigger {
                    chain_id: env.chain_id,
                    wallet: format!("{:#x}", env.partition_key()),
                    event_id: env.event_id.to_string(),
                    at: event.at,
                    topic: topic.clone(),
                    partition: *partition,
                    offset: *offset,
                    block_number: env.block.map(|b| b.number as i64),
                }),
                None => outcome.skipped += 1,
            }
        }
        self.store_attestations(&attestations).await?;
        let projector = self.wait_for_projector(&max_offset).await?;
        let (scored, expired) = self.score_and_store(&triggers, &projector).await?;
        outcome.scored = scored;
        outcome.attestations_expired = expired;
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), offset) in &commit {
            tpl.add_partition_offset(topic, *partition, Offset::Offset(offset + 1))
                .context("commit list")?;
        }
        self.consumer
            .commit(&tpl, CommitMode::Sync)
            .context("could not commit Kafka offsets")?;
        if let Some(first) = first_at {
            self.busy += first.elapsed();
        }
        Ok(outcome)
    }

    /// Waits until the projector's stored offsets pass every offset of the batch; returns them.
    async fn wait_for_projector(
        &self,
        max_offset: &BTreeMap<i32, i64>,
    ) -> anyhow::Result<HashMap<i32, i64>> {
        let started = Instant::now();
        loop {
            let rows: Vec<(i32, i64)> = sqlx::query_as(
                "SELECT partition_id, next_offset FROM consumer_offset WHERE group_id = $1 AND topic = $2",
            )
            .bind(&self.config.projector_group)
            .bind(&self.lending_topic)
            .fetch_all(&self.pool)
            .await?;
            let folded: HashMap<i32, i64> = rows.into_iter().collect();
            if max_offset
                .iter()
                .all(|(p, o)| folded.get(p).is_some_and(|next| next > o))
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

    /// Stores valid attestations (idempotent by their id) before the scores that use them.
    async fn store_attestations(&self, list: &[(Attestation, i32, i64)]) -> anyhow::Result<()> {
        for (a, partition, offset) in list {
            sqlx::query(
                "INSERT INTO attestation (id, chain_id, wallet, kind, value, issuer, issued_at, expires_at, kafka_partition, kafka_offset)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (id) DO NOTHING",
            )
            .bind(a.id().to_string())
            .bind(a.chain_id as i64)
            .bind(format!("{:#x}", a.wallet))
            .bind(&a.kind)
            .bind(a.value)
            .bind(&a.issuer)
            .bind(a.issued_at)
            .bind(a.expires_at)
            .bind(*partition)
            .bind(*offset)
            .execute(&self.pool)
            .await?;
        }
        Ok(())
    }

    async fn attestations(&self, chain_id: u64, wallet: &str) -> anyhow::Result<Vec<Attestation>> {
        type Row = (String, f64, String, DateTime<Utc>, DateTime<Utc>);
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT kind, value, issuer, issued_at, expires_at FROM attestation WHERE chain_id = $1 AND wallet = $2 ORDER BY issued_at, id",
        )
        .bind(chain_id as i64)
        .bind(wallet)
        .fetch_all(&self.pool)
        .await?;
        let address = wallet.parse().unwrap_or_default();
        Ok(rows
            .into_iter()
            .map(|(kind, value, issuer, issued_at, expires_at)| Attestation {
                schema_version: chainfold_domain::SCHEMA_VERSION,
                chain_id,
                wallet: address,
                kind,
                value,
                issuer,
                issued_at,
                expires_at,
            })
            .collect())
    }

    async fn history(&self, chain_id: u64, wallet: &str) -> anyhow::Result<Vec<HistoryEvent>> {
        let rows: Vec<(String, Option<DateTime<Utc>>, Option<bigdecimal::BigDecimal>)> = sqlx::query_as(
            "SELECT action, block_time, amount_usd FROM lending_event WHERE chain_id = $1 AND wallet = $2",
        )
        .bind(chain_id as i64)
        .bind(wallet)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(action, at, usd)| {
                Some(HistoryEvent {
                    action: LendingAction::parse(&action)?,
                    at: at?,
                    usd: usd.and_then(|u| u.to_string().parse().ok()),
                })
            })
            .collect())
    }

    async fn score_and_store(
        &mut self,
        triggers: &[Trigger],
        projector: &HashMap<i32, i64>,
    ) -> anyhow::Result<(u64, u64)> {
        let mut by_wallet: BTreeMap<(u64, String), Vec<&Trigger>> = BTreeMap::new();
        for t in triggers {
            by_wallet
                .entry((t.chain_id, t.wallet.clone()))
                .or_default()
                .push(t);
        }
        let mut expired = 0;
        let mut rows: Vec<(u64, String, &Trigger, Score)> = Vec::new();
        for ((chain, wallet), list) in &by_wallet {
            let history = self.history(*chain, wallet).await?;
            let attested = self.attestations(*chain, wallet).await?;
            for t in list {
                let Some(features) = activity_features(&history, t.at) else {
                    continue;
                };
                let active: Vec<&Attestation> =
                    attested.iter().filter(|a| a.active_at(t.at)).collect();
                expired += attested
                    .iter()
                    .filter(|a| a.issued_at <= t.at && a.expires_at <= t.at)
                    .count() as u64;
                // The position model needs the wallet's current holdings and their price
                // paths; until the scorer folds those, the risk term is left out (None).
                rows.push((
                    *chain,
                    wallet.clone(),
                    *t,
                    scorecard::score_with(&features, None, &active),
                ));
            }
        }
        // One statement for the batch; rows already stored (a replay) come back as nothing.
        let n = rows.len();
        let (mut chain_id, mut wallet, mut score, mut band, mut probability) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let (mut reasons, mut computed_at, mut event_id, mut topic) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let (mut partition, mut offset, mut projector_next, mut block) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for (chain, w, t, s) in &rows {
            chain_id.push(*chain as i64);
            wallet.push(w.clone());
            score.push(s.score);
            band.push(
                serde_json::to_value(s.band)?
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            );
            probability.push(s.probability_of_liquidation);
            reasons.push(serde_json::to_value(&s.reasons)?);
            computed_at.push(t.at);
            event_id.push(t.event_id.clone());
            topic.push(t.topic.clone());
            partition.push(t.partition);
            offset.push(t.offset);
            projector_next.push(projector.get(&t.partition).copied().unwrap_or_default());
            block.push(t.block_number);
        }
        let inserted: Vec<(i64, String, String)> = sqlx::query_as(
            r#"INSERT INTO credit_score (chain_id, wallet, score, band, probability_of_liquidation,
                reasons, model_version, model_sha256, computed_at, event_id, kafka_topic,
                kafka_partition, kafka_offset, projector_next_offset, block_number)
               SELECT c, w, s, b, p, r, $6, $7, at, e, tp, pa, o, pn, bl
               FROM UNNEST($1::int8[], $2::text[], $3::int4[], $4::text[], $5::float8[],
                    $8::jsonb[], $9::timestamptz[], $10::text[], $11::text[], $12::int4[],
                    $13::int8[], $14::int8[], $15::int8[])
                    AS t(c, w, s, b, p, r, at, e, tp, pa, o, pn, bl)
               ON CONFLICT (chain_id, wallet, event_id) DO NOTHING
               RETURNING chain_id, wallet, event_id"#,
        )
        .bind(&chain_id)
        .bind(&wallet)
        .bind(&score)
        .bind(&band)
        .bind(&probability)
        .bind(&self.model.version)
        .bind(&self.model.sha256)
        .bind(&reasons)
        .bind(&computed_at)
        .bind(&event_id)
        .bind(&topic)
        .bind(&partition)
        .bind(&offset)
        .bind(&projector_next)
        .bind(&block)
        .fetch_all(&self.pool)
        .await?;
        let mut new: std::collections::HashSet<(u64, String, String)> = inserted
            .into_iter()
            .map(|(c, w, e)| (c as u64, w, e))
            .collect();
        let stored: Vec<_> = rows
            .iter()
            // Each stored row once, even if the batch held its event twice.
            .filter(|(c, w, t, _)| new.remove(&(*c, w.clone(), t.event_id.clone())))
            .map(|(c, w, t, s)| (c, w, t, s))
            .collect();
        // After the commit: cache, pub/sub and the scores topic (rebuildable from Postgres).
        let mut pipe = redis::pipe();
        let mut deliveries = Vec::new();
        for (chain, wallet, t, s) in &stored {
            let message = serde_json::json!({
                "chainId": chain, "wallet": wallet, "score": s.score, "band": s.band,
                "probabilityOfLiquidation": s.probability_of_liquidation, "reasons": s.reasons,
                "modelVersion": self.model.version, "modelSha256": self.model.sha256,
                "computedAt": t.at, "eventId": t.event_id,
                "provenance": {"topic": t.topic, "partition": t.partition, "offset": t.offset,
                               "blockNumber": t.block_number},
            });
            let key = format!("{}score:{chain}:{wallet}", self.config.redis.prefix);
            pipe.hset_multiple(
                &key,
                &[
                    ("score", s.score.to_string()),
                    ("band", format!("{:?}", s.band)),
                    ("json", message.to_string()),
                ],
            )
            .ignore();
            pipe.publish(
                format!("{}scores", self.config.redis.prefix),
                message.to_string(),
            )
            .ignore();
            let payload = message.to_string();
            deliveries.push(
                self.producer
                    .send_result(
                        FutureRecord::to(&self.scores_topic)
                            .key(wallet.as_str())
                            .payload(&payload),
                    )
                    .map_err(|(e, _)| e)
                    .context("could not enqueue a score")?,
            );
        }
        if let Err(err) = pipe.query_async::<()>(&mut self.redis).await {
            tracing::warn!(%err, "could not update the Redis score cache");
        }
        for d in deliveries {
            match d.await {
                Ok(Ok(_)) => {}
                Ok(Err((err, _))) => return Err(err).context("the broker rejected a score"),
                Err(_) => anyhow::bail!("producer dropped before a score was acknowledged"),
            }
        }
        Ok((stored.len() as u64, expired))
    }

    /// Scores until a batch arrives empty after `idle` (tests, backfills). The first batch
    /// waits up to 30 s: joining the group (and taking over a restarted member's partitions)
    /// comes first.
    pub async fn run_until_idle(&mut self, idle: Duration) -> anyhow::Result<Outcome> {
        let mut total = Outcome::default();
        let mut wait = idle.max(Duration::from_secs(30));
        loop {
            let o = self.process_batch(wait).await?;
            wait = idle;
            if o.received == 0 {
                return Ok(total);
            }
            total.received += o.received;
            total.scored += o.scored;
            total.skipped += o.skipped;
            total.attestations_malformed += o.attestations_malformed;
            total.attestations_expired += o.attestations_expired;
        }
    }

    /// Scores until `shutdown` resolves.
    pub async fn run_until_stopped(
        mut self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => return Ok(()),
                outcome = self.process_batch(Duration::from_millis(500)) => {
                    let o = outcome?;
                    if o.scored > 0 {
                        tracing::debug!(scored = o.scored, "batch scored");
                    }
                }
            }
        }
    }
}
