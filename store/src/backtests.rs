//! Backtest runs (`backtest_run`) and the scores they computed (`backtest_score`), kept apart
//! from the live scores under a run id.

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction};

/// A run as it starts: which model, over which time range, up to which end of the log.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRun<'a> {
    pub id: &'a str,
    pub label: Option<&'a str>,
    pub model_version: &'a str,
    pub model_sha256: &'a str,
    pub from_time: DateTime<Utc>,
    pub to_time: DateTime<Utc>,
    /// Per partition, the end offset replayed.
    pub log_end: &'a serde_json::Value,
}

/// Stores a run as started.
pub async fn start(pool: &PgPool, run: &NewRun<'_>) -> sqlx::Result<()> {
    sqlx::query!(
        "INSERT INTO backtest_run (id, label, model_version, model_sha256, from_time, to_time, log_end)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        run.id,
        run.label,
        run.model_version,
        run.model_sha256,
        run.from_time,
        run.to_time,
        run.log_end
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Marks run `id` finished with its counts.
pub async fn finish(pool: &PgPool, id: &str, events_read: i64, scored: i64) -> sqlx::Result<()> {
    sqlx::query!(
        "UPDATE backtest_run SET finished_at = now(), events_read = $2, scored = $3 WHERE id = $1",
        id,
        events_read,
        scored
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// One score a run computed.
#[derive(Debug, Clone, PartialEq)]
pub struct Score<'a> {
    pub chain_id: i64,
    pub wallet: &'a str,
    pub event_id: &'a str,
    pub score: i32,
    pub band: &'a str,
    pub probability_of_liquidation: Option<f64>,
    pub reasons: serde_json::Value,
    pub computed_at: DateTime<Utc>,
    pub kafka_partition: i32,
    pub kafka_offset: i64,
}

/// Stores a score of run `run_id` unless stored; `true` when new.
pub async fn insert_score(
    tx: &mut Transaction<'_, Postgres>,
    run_id: &str,
    s: &Score<'_>,
) -> sqlx::Result<bool> {
    let done = sqlx::query!(
        "INSERT INTO backtest_score (run_id, chain_id, wallet, event_id, score, band,
            probability_of_liquidation, reasons, computed_at, kafka_partition, kafka_offset)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
         ON CONFLICT DO NOTHING",
        run_id,
        s.chain_id,
        s.wallet,
        s.event_id,
        s.score,
        s.band,
        s.probability_of_liquidation,
        s.reasons,
        s.computed_at,
        s.kafka_partition,
        s.kafka_offset
    )
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}
