//! `chainfold backtest --model <version> --from <time> --to <time>`: replays the lending topic
//! from its beginning to the end it has when the run starts, and scores every lending event
//! whose block time lies in `[from, to)` with the chosen model version, into `backtest_run` /
//! `backtest_score` under a run id (and an optional label). Live scores (`credit_score`), Redis
//! and the scores topic are never touched, and no consumer group commits anything.
//!
//! Features come from the read models exactly as the live scorer computes them (as of each
//! event's time), so a backtest of the live model reproduces the live scores; the run refuses to
//! start while the projector has not folded the log up to the end it replays.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use chainfold_domain::credit::HistoryEvent;
use chainfold_platform::config::{KafkaArgs, PostgresArgs};
use chrono::{DateTime, Utc};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message as _;

use crate::model::PositionModel;
use crate::worker::{ScoreEngine, Trigger};

/// `chainfold backtest` settings.
#[derive(Debug, Clone, clap::Args)]
pub struct BacktestConfig {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub postgres: PostgresArgs,
    /// Model version: a directory of `--models-dir` holding `position_model.onnx`.
    #[arg(long = "model")]
    pub model: String,
    #[arg(long = "models-dir", default_value = "scoring/models")]
    pub models_dir: PathBuf,
    /// Start of the window (inclusive): RFC 3339 or `YYYY-MM-DD` (UTC).
    #[arg(long = "from", value_parser = parse_time)]
    pub from: DateTime<Utc>,
    /// End of the window (exclusive).
    #[arg(long = "to", value_parser = parse_time)]
    pub to: DateTime<Utc>,
    /// A name for the result set.
    #[arg(long = "label")]
    pub label: Option<String>,
    /// The projector whose read models the features are read from.
    #[arg(
        long = "projector-group",
        env = "CHAINFOLD_PROJECTOR_GROUP",
        default_value = "chainfold-projector"
    )]
    pub projector_group: String,
}

/// Parses RFC 3339 or a date (midnight UTC).
pub fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .map(|d| d.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc())
        .map_err(|_| format!("{text:?} is neither RFC 3339 nor YYYY-MM-DD"))
}

/// What a run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BacktestSummary {
    pub run_id: String,
    pub model_version: String,
    /// Lending records replayed (the whole log up to its end at the start).
    pub events_read: u64,
    /// Scores stored for the window.
    pub scored: u64,
}

impl std::fmt::Display for BacktestSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "backtest {}: model {}, {} lending records replayed, {} scores in backtest_score",
            self.run_id, self.model_version, self.events_read, self.scored
        )
    }
}

/// Runs a backtest.
pub async fn run(config: &BacktestConfig) -> anyhow::Result<BacktestSummary> {
    anyhow::ensure!(
        config.from < config.to,
        "--from ({}) must be before --to ({})",
        config.from,
        config.to
    );
    anyhow::ensure!(
        !config.model.is_empty()
            && config
                .model
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.'),
        "--model must be a model directory name like position-v1, got {:?}",
        config.model
    );
    let dir = config.models_dir.join(&config.model);
    let model = PositionModel::load(&dir).with_context(|| {
        format!(
            "model version {} not found under {}",
            config.model,
            config.models_dir.display()
        )
    })?;
    let pool = chainfold_platform::postgres::connect_and_migrate(&config.postgres).await?;
    let topic = config.kafka.topics().lending;

    // The end of the log this run replays, and the projector must have folded it.
    let consumer: BaseConsumer = chainfold_platform::kafka::client_config(&config.kafka)
        .set(
            "group.id",
            format!("chainfold-backtest-{}", std::process::id()),
        )
        .set("enable.auto.commit", "false")
        .create()
        .context("could not create Kafka consumer")?;
    let marks = chainfold_platform::kafka::watermarks(&consumer, &topic)?;
    let folded: Vec<(i32, i64)> = chainfold_platform::offsets::load(&pool, &config.projector_group)
        .await?
        .into_iter()
        .filter(|((t, _), _)| *t == topic)
        .map(|((_, p), next)| (p, next))
        .collect();
    let folded: BTreeMap<i32, i64> = folded.into_iter().collect();
    for (partition, _, high) in &marks {
        let done = folded.get(partition).copied().unwrap_or(0);
        anyhow::ensure!(
            done >= *high,
            "the read models are behind the log (projector {} at offset {done} of {high} on {topic}/{partition}): run the projector first",
            config.projector_group
        );
    }
    let run_id = format!("bt-{}", Utc::now().format("%Y%m%dT%H%M%S%.6fZ"));
    let log_end: serde_json::Value = marks
        .iter()
        .map(|(p, _, high)| (p.to_string(), serde_json::json!(high)))
        .collect::<serde_json::Map<_, _>>()
        .into();
    let engine = ScoreEngine::new(pool.clone(), model);
    chainfold_store::backtests::start(
        &pool,
        &chainfold_store::backtests::NewRun {
            id: &run_id,
            label: config.label.as_deref(),
            model_version: &engine.version,
            model_sha256: &engine.sha256,
            from_time: config.from,
            to_time: config.to,
            log_end: &log_end,
        },
    )
    .await?;

    let mut assignment = rdkafka::TopicPartitionList::new();
    let mut remaining = 0;
    for (partition, low, high) in &marks {
        if high > low {
            assignment
                .add_partition_offset(&topic, *partition, rdkafka::Offset::Offset(*low))
                .context("assignment")?;
            remaining += 1;
        }
    }
    consumer.assign(&assignment).context("could not assign")?;
    let ends: BTreeMap<i32, i64> = marks.iter().map(|(p, _, h)| (*p, *h)).collect();
    let mut finished = std::collections::BTreeSet::new();
    let mut events_read = 0u64;
    let mut scored = 0u64;
    let mut chunk: Vec<Trigger> = Vec::new();
    while finished.len() < remaining {
        let Some(message) = consumer.poll(Duration::from_secs(10)) else {
            anyhow::bail!("the log stopped answering before its end offsets were reached");
        };
        let message = message.context("could not read from Kafka")?;
        let (partition, offset) = (message.partition(), message.offset());
        let end = ends.get(&partition).copied().unwrap_or(0);
        if offset >= end {
            finished.insert(partition);
            continue;
        }
        if offset + 1 >= end {
            finished.insert(partition);
        }
        events_read += 1;
        let parsed = message
            .payload()
            .and_then(|p| chainfold_domain::envelope::decode_envelope(p).ok())
            .filter(|env| !env.retracted);
        let Some((env, event)) =
            parsed.and_then(|env| HistoryEvent::of(&env).map(|event| (env, event)))
        else {
            continue;
        };
        if event.at < config.from || event.at >= config.to {
            continue;
        }
        chunk.push(Trigger {
            chain_id: env.chain_id,
            wallet: format!("{:#x}", env.partition_key()),
            event_id: env.event_id.to_string(),
            at: event.at,
            topic: topic.clone(),
            partition,
            offset,
            block_number: env.block.map(|b| b.number as i64),
        });
        if chunk.len() >= 2000 {
            scored += store(&pool, &engine, &run_id, &std::mem::take(&mut chunk)).await?;
        }
    }
    scored += store(&pool, &engine, &run_id, &chunk).await?;
    chainfold_store::backtests::finish(&pool, &run_id, events_read as i64, scored as i64).await?;
    Ok(BacktestSummary {
        run_id,
        model_version: engine.version.clone(),
        events_read,
        scored,
    })
}

async fn store(
    pool: &sqlx::PgPool,
    engine: &ScoreEngine,
    run_id: &str,
    triggers: &[Trigger],
) -> anyhow::Result<u64> {
    if triggers.is_empty() {
        return Ok(0);
    }
    let rows = engine.compute_rows(triggers).await?;
    let mut tx = pool.begin().await?;
    let mut stored = 0;
    for (chain, wallet, t, s) in &rows {
        let band = serde_json::to_value(s.band)?;
        let score = chainfold_store::backtests::Score {
            chain_id: *chain as i64,
            wallet,
            event_id: &t.event_id,
            score: s.score,
            band: band.as_str().unwrap_or_default(),
            probability_of_liquidation: s.probability_of_liquidation,
            reasons: serde_json::to_value(&s.reasons)?,
            computed_at: t.at,
            kafka_partition: t.partition,
            kafka_offset: t.offset,
        };
        if chainfold_store::backtests::insert_score(&mut tx, run_id, &score).await? {
            stored += 1;
        }
    }
    tx.commit().await?;
    Ok(stored)
}
