//! What the read models and derived tables hold, counted and summarised: the figures the demo
//! prints and the statements `rebuild` runs on the derived tables.

use sqlx::{PgPool, Postgres, Transaction};

/// Row counts of the main read models.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadModelCounts {
    pub lending_events: i64,
    pub wallets: i64,
    pub swaps: i64,
    pub pools: i64,
}

/// Counts the lending events, wallets with lending activity, swaps and pools.
pub async fn read_models(pool: &PgPool) -> sqlx::Result<ReadModelCounts> {
    sqlx::query_as!(
        ReadModelCounts,
        r#"SELECT (SELECT count(*) FROM lending_event) AS "lending_events!",
                  (SELECT count(DISTINCT (chain_id, wallet)) FROM wallet_lending_summary) AS "wallets!",
                  (SELECT count(*) FROM swap) AS "swaps!",
                  (SELECT count(*) FROM pool_summary) AS "pools!""#
    )
    .fetch_one(pool)
    .await
}

/// Row counts of one chain's live read models.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveCounts {
    pub pool_states: i64,
    pub lending_positions: i64,
    pub liquidations: i64,
    pub flash_loans: i64,
    pub oracle_feeds: i64,
}

/// Counts one chain's pool states, lending positions, liquidations, flash loans and oracle feeds.
pub async fn live(pool: &PgPool, chain_id: i64) -> sqlx::Result<LiveCounts> {
    sqlx::query_as!(
        LiveCounts,
        r#"SELECT (SELECT count(*) FROM pool_state WHERE chain_id = $1) AS "pool_states!",
                  (SELECT count(*) FROM lending_position WHERE chain_id = $1) AS "lending_positions!",
                  (SELECT count(*) FROM liquidation WHERE chain_id = $1) AS "liquidations!",
                  (SELECT count(*) FROM flash_loan WHERE chain_id = $1) AS "flash_loans!",
                  (SELECT count(*) FROM oracle_price WHERE chain_id = $1) AS "oracle_feeds!""#,
        chain_id
    )
    .fetch_one(pool)
    .await
}

/// Wallets with a latest score, and how many of those carry a probability of liquidation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScoreCounts {
    pub wallets: i64,
    pub priced: i64,
}

/// Counts the scored wallets (every chain).
pub async fn scores(pool: &PgPool) -> sqlx::Result<ScoreCounts> {
    sqlx::query_as!(
        ScoreCounts,
        r#"SELECT count(*) AS "wallets!", count(probability_of_liquidation) AS "priced!"
           FROM credit_score_latest"#
    )
    .fetch_one(pool)
    .await
}

/// Stored alerts per kind, by kind.
pub async fn alerts_by_kind(pool: &PgPool) -> sqlx::Result<Vec<(String, i64)>> {
    let rows = sqlx::query!(
        r#"SELECT kind AS "kind!", count(*) AS "count!" FROM risk_alert GROUP BY kind ORDER BY kind"#
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|r| (r.kind, r.count)).collect())
}

/// A chain's latest stress run, in brief (money in whole dollars for printing).
#[derive(Debug, Clone, PartialEq)]
pub struct StressBrief {
    pub positions: i32,
    pub var95_usd: Option<f64>,
    pub lar95_usd: Option<f64>,
    pub elapsed_ms: f64,
}

/// The chain's latest stress run, if any.
pub async fn latest_stress(pool: &PgPool, chain_id: i64) -> sqlx::Result<Option<StressBrief>> {
    sqlx::query_as!(
        StressBrief,
        r#"SELECT positions, var95_usd::float8 AS "var95_usd?", lar95_usd::float8 AS "lar95_usd?",
                  elapsed_ms
           FROM stress_run WHERE chain_id = $1 ORDER BY id DESC LIMIT 1"#,
        chain_id
    )
    .fetch_optional(pool)
    .await
}

/// The scored wallet of the chain most likely to be liquidated (ties by address).
pub async fn riskiest_borrower(pool: &PgPool, chain_id: i64) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar!(
        r#"SELECT wallet AS "wallet!" FROM credit_score_latest
           WHERE chain_id = $1 AND probability_of_liquidation IS NOT NULL
           ORDER BY probability_of_liquidation DESC, wallet LIMIT 1"#,
        chain_id
    )
    .fetch_optional(pool)
    .await
}

/// Empties every table derived from the log by the scorer and the risk worker (scores,
/// profiles, attestations, alerts, incidents, stress, the outbox) and the band-change decisions
/// (derived from scores; requested decisions are inputs and stay). `TRUNCATE`, not `DELETE`: the
/// rows emptied are not retractions for subscribers.
pub async fn empty_derived(tx: &mut Transaction<'_, Postgres>) -> sqlx::Result<()> {
    sqlx::query!(
        "TRUNCATE credit_score, credit_profile, attestation, risk_alert, risk_incident, stress_scenario,
                  stress_run, risk_progress, outbox"
    )
    .execute(&mut **tx)
    .await?;
    sqlx::query!("DELETE FROM credit_decision WHERE trigger = 'BAND_CHANGE'")
        .execute(&mut **tx)
        .await?;
    Ok(())
}
