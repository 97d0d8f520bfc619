//! The API's subscription feeds: rows after a feed position (a `credit_score` id, a
//! `risk_alert`, `credit_decision` or `pool_sync` sequence number), with the retractions of
//! deleted rows (`feed_retraction`) in the same sequence order, and where each feed stands.
//!
//! Every read takes the same filter shape: `upto` bounds the stretch (a notification's
//! sequence number), `chain_id` and the lists are `None` for all.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::scores::ScoreRow;

/// A score of the feed: a stored row, or a retraction of a deleted one (its last state, with
/// the retraction's sequence number as `row.id` and the deleted id in `retracts`).
#[derive(Debug, Clone)]
pub struct FeedScore {
    pub row: ScoreRow,
    pub retracted: bool,
    pub retracts: Option<i64>,
}

/// Scores and score retractions after `after` (at most `upto`) of `chain_id` and `wallets`,
/// oldest first, at most `limit`.
pub async fn scores(
    pool: &PgPool,
    after: i64,
    upto: Option<i64>,
    chain_id: Option<i64>,
    wallets: Option<&[String]>,
    limit: i64,
) -> sqlx::Result<Vec<FeedScore>> {
    let rows = sqlx::query!(
        r#"SELECT id AS "id!", chain_id AS "chain_id!", wallet AS "wallet!",
                  health_factor AS "health_factor?", score AS "score!", band AS "band!",
                  probability_of_liquidation AS "probability_of_liquidation?",
                  reasons AS "reasons!", model_version AS "model_version!",
                  model_sha256 AS "model_sha256!", computed_at AS "computed_at?",
                  event_id AS "event_id!", kafka_topic AS "kafka_topic!",
                  kafka_partition AS "kafka_partition!", kafka_offset AS "kafka_offset!",
                  block_number AS "block_number?", retracted AS "retracted!",
                  retracts AS "retracts?"
           FROM (
             SELECT id, chain_id, wallet, health_factor, score, band, probability_of_liquidation,
                    reasons, model_version, model_sha256, computed_at, event_id, kafka_topic,
                    kafka_partition, kafka_offset, block_number, false AS retracted,
                    NULL::int8 AS retracts
             FROM credit_score
             WHERE id > $1 AND ($2::int8 IS NULL OR id <= $2) AND ($3::int8 IS NULL OR chain_id = $3)
               AND ($4::text[] IS NULL OR wallet = ANY($4))
             UNION ALL
             SELECT r.seq, p.chain_id, p.wallet, p.health_factor, p.score, p.band,
                    p.probability_of_liquidation, p.reasons, p.model_version, p.model_sha256,
                    p.computed_at, p.event_id, p.kafka_topic, p.kafka_partition, p.kafka_offset,
                    p.block_number, true, r.retracts
             FROM feed_retraction r
             CROSS JOIN LATERAL jsonb_populate_record(NULL::credit_score, r.row) p
             WHERE r.feed = 'credit_score' AND r.seq > $1 AND ($2::int8 IS NULL OR r.seq <= $2)
               AND ($3::int8 IS NULL OR r.chain_id = $3) AND ($4::text[] IS NULL OR p.wallet = ANY($4))
           ) f
           ORDER BY 1 LIMIT $5"#,
        after,
        upto,
        chain_id,
        wallets,
        limit
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| FeedScore {
            row: ScoreRow {
                id: r.id,
                chain_id: r.chain_id,
                wallet: r.wallet,
                score: r.score,
                health_factor: r.health_factor,
                band: r.band,
                probability_of_liquidation: r.probability_of_liquidation,
                reasons: r.reasons,
                model_version: r.model_version,
                model_sha256: r.model_sha256,
                computed_at: r.computed_at,
                event_id: r.event_id,
                kafka_topic: r.kafka_topic,
                kafka_partition: r.kafka_partition,
                kafka_offset: r.kafka_offset,
                block_number: r.block_number,
            },
            retracted: r.retracted,
            retracts: r.retracts,
        })
        .collect())
}

/// A `risk_alert` row: seq, id, kind, severity, chain, block, tx hashes, addresses, pools,
/// evidence, detector version, detection time, USD at stake (the columns of
/// [`ALERT_COLUMNS`], in order).
pub type AlertRow = (
    i64,
    String,
    String,
    String,
    i64,
    i64,
    Vec<String>,
    Vec<String>,
    Vec<String>,
    serde_json::Value,
    String,
    DateTime<Utc>,
    Option<f64>,
);

/// The columns of an [`AlertRow`] (the collection engine selects them too).
pub const ALERT_COLUMNS: &str = "seq, id, kind, severity, chain_id, block_number, tx_hashes, addresses, pools, evidence, detector_version, detected_at, usd";

/// What an alert read filters on (`None`: all).
#[derive(Debug, Clone, Copy, Default)]
pub struct AlertFilter<'a> {
    pub chain_id: Option<i64>,
    pub kinds: Option<&'a [String]>,
    pub severities: Option<&'a [String]>,
    pub pools: Option<&'a [String]>,
}

/// Alerts after `after` (at most `upto`) matching `f`, oldest first, at most `limit`.
pub async fn alerts(
    pool: &PgPool,
    after: i64,
    upto: Option<i64>,
    f: AlertFilter<'_>,
    limit: i64,
) -> sqlx::Result<Vec<AlertRow>> {
    let rows = sqlx::query!(
        "SELECT seq, id, kind, severity, chain_id, block_number, tx_hashes, addresses, pools,
                evidence, detector_version, detected_at, usd
         FROM risk_alert
         WHERE seq > $1 AND ($2::int8 IS NULL OR seq <= $2) AND ($3::int8 IS NULL OR chain_id = $3)
           AND ($4::text[] IS NULL OR kind = ANY($4)) AND ($5::text[] IS NULL OR severity = ANY($5))
           AND ($6::text[] IS NULL OR pools && $6)
         ORDER BY seq LIMIT $7",
        after,
        upto,
        f.chain_id,
        f.kinds,
        f.severities,
        f.pools,
        limit
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            (
                r.seq,
                r.id,
                r.kind,
                r.severity,
                r.chain_id,
                r.block_number,
                r.tx_hashes,
                r.addresses,
                r.pools,
                r.evidence,
                r.detector_version,
                r.detected_at,
                r.usd,
            )
        })
        .collect())
}

/// A pool's reserves as a sync left them, or the retraction of a deleted sync.
#[derive(Debug, Clone)]
pub struct PoolFeedRow {
    pub seq: i64,
    pub chain_id: i64,
    pub pool: String,
    pub token0: String,
    pub token1: String,
    /// Exact, as Postgres prints them.
    pub reserve0: String,
    pub reserve1: String,
    pub block_number: Option<i64>,
    pub block_time: Option<DateTime<Utc>>,
    pub retracted: bool,
    pub retracts: Option<i64>,
}

/// Pool syncs and sync retractions after `after` (at most `upto`) of `chain_id` and `pools`,
/// oldest first, at most `limit`.
pub async fn pool_syncs(
    pool: &PgPool,
    after: i64,
    upto: Option<i64>,
    chain_id: Option<i64>,
    pools: Option<&[String]>,
    limit: i64,
) -> sqlx::Result<Vec<PoolFeedRow>> {
    sqlx::query_as!(
        PoolFeedRow,
        r#"SELECT seq AS "seq!", chain_id AS "chain_id!", pool AS "pool!", token0 AS "token0!",
                  token1 AS "token1!", reserve0 AS "reserve0!", reserve1 AS "reserve1!",
                  block_number AS "block_number?", block_time AS "block_time?",
                  retracted AS "retracted!", retracts AS "retracts?"
           FROM (
             SELECT seq, chain_id, pool, token0, token1, reserve0::text AS reserve0,
                    reserve1::text AS reserve1, block_number, block_time, false AS retracted,
                    NULL::int8 AS retracts
             FROM pool_sync
             WHERE seq > $1 AND ($2::int8 IS NULL OR seq <= $2) AND ($3::int8 IS NULL OR chain_id = $3)
               AND ($4::text[] IS NULL OR pool = ANY($4))
             UNION ALL
             SELECT r.seq, p.chain_id, p.pool, p.token0, p.token1, p.reserve0::text,
                    p.reserve1::text, p.block_number, p.block_time, true, r.retracts
             FROM feed_retraction r
             CROSS JOIN LATERAL jsonb_populate_record(NULL::pool_sync, r.row) p
             WHERE r.feed = 'pool_sync' AND r.seq > $1 AND ($2::int8 IS NULL OR r.seq <= $2)
               AND ($3::int8 IS NULL OR r.chain_id = $3) AND ($4::text[] IS NULL OR p.pool = ANY($4))
           ) f
           ORDER BY 1 LIMIT $5"#,
        after,
        upto,
        chain_id,
        pools,
        limit
    )
    .fetch_all(pool)
    .await
}

/// A stored lending decision as the feed serves it.
#[derive(Debug, Clone)]
pub struct DecisionFeedRow {
    pub seq: i64,
    pub record: serde_json::Value,
    pub tx_hash: Option<String>,
    pub tx_block: Option<i64>,
    pub actuation_error: Option<String>,
}

/// Decisions after `after` (at most `upto`) of `chain_id` and `wallets`, oldest first, at most
/// `limit`.
pub async fn decisions(
    pool: &PgPool,
    after: i64,
    upto: Option<i64>,
    chain_id: Option<i64>,
    wallets: Option<&[String]>,
    limit: i64,
) -> sqlx::Result<Vec<DecisionFeedRow>> {
    sqlx::query_as!(
        DecisionFeedRow,
        "SELECT seq, record, tx_hash, tx_block, actuation_error FROM credit_decision
         WHERE seq > $1 AND ($2::int8 IS NULL OR seq <= $2) AND ($3::int8 IS NULL OR chain_id = $3)
           AND ($4::text[] IS NULL OR wallet = ANY($4))
         ORDER BY seq LIMIT $5",
        after,
        upto,
        chain_id,
        wallets,
        limit
    )
    .fetch_all(pool)
    .await
}

/// Where each feed stands now: scores (with their retractions), alerts, decisions, pool syncs
/// (with theirs). Rows after these are new to a process that starts listening.
pub async fn positions(pool: &PgPool) -> sqlx::Result<[i64; 4]> {
    let r = sqlx::query!(
        r#"SELECT greatest((SELECT coalesce(max(id), 0) FROM credit_score),
                           (SELECT coalesce(max(seq), 0) FROM feed_retraction
                            WHERE feed = 'credit_score')) AS "scores!",
                  (SELECT coalesce(max(seq), 0) FROM risk_alert) AS "alerts!",
                  (SELECT coalesce(max(seq), 0) FROM credit_decision) AS "decisions!",
                  greatest((SELECT coalesce(max(seq), 0) FROM pool_sync),
                           (SELECT coalesce(max(seq), 0) FROM feed_retraction
                            WHERE feed = 'pool_sync')) AS "pools!""#
    )
    .fetch_one(pool)
    .await?;
    Ok([r.scores, r.alerts, r.decisions, r.pools])
}
