//! Stress runs (`stress_run`) and their shock grids (`stress_scenario`), as the risk worker and
//! `chainfold stress` store them.

use bigdecimal::BigDecimal;
use chainfold_domain::stress::ShockRow;
use sqlx::{Postgres, Transaction};

/// A stress run's header: what was stressed and the Monte Carlo figures (cents).
#[derive(Debug, Clone, PartialEq)]
pub struct NewRun {
    pub chain_id: i64,
    /// The block the positions are as of (`None`: as the read models held them).
    pub as_of_block: Option<i64>,
    /// What started it (`block`, `manual`, …).
    pub trigger: String,
    pub positions: i32,
    /// The prices used, per symbol.
    pub prices: serde_json::Value,
    /// The liquidation rules applied.
    pub rules: serde_json::Value,
    pub history_hours: i32,
    pub paths: i32,
    pub horizon_hours: i32,
    pub var95_usd: Option<BigDecimal>,
    pub evar99_usd: Option<BigDecimal>,
    pub lar95_usd: Option<BigDecimal>,
    pub elapsed_ms: f64,
}

/// Stores a run and its grid in `tx`; returns the run's id.
pub async fn insert(
    tx: &mut Transaction<'_, Postgres>,
    run: &NewRun,
    grid: &[ShockRow],
) -> sqlx::Result<i64> {
    let id = sqlx::query_scalar!(
        "INSERT INTO stress_run (chain_id, as_of_block, trigger, positions, prices, rules,
            history_hours, paths, horizon_hours, var95_usd, evar99_usd, lar95_usd, elapsed_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) RETURNING id",
        run.chain_id,
        run.as_of_block,
        run.trigger,
        run.positions,
        run.prices,
        run.rules,
        run.history_hours,
        run.paths,
        run.horizon_hours,
        run.var95_usd,
        run.evar99_usd,
        run.lar95_usd,
        run.elapsed_ms
    )
    .fetch_one(&mut **tx)
    .await?;
    for r in grid {
        sqlx::query!(
            "INSERT INTO stress_scenario (run_id, asset, shock, correlated, liquidatable,
                debt_at_risk_usd, bad_debt_usd) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            id,
            r.asset,
            r.shock,
            r.correlated,
            r.impact.liquidatable as i32,
            r.impact.debt_at_risk_usd,
            r.impact.bad_debt_usd
        )
        .execute(&mut **tx)
        .await?;
    }
    Ok(id)
}

/// The chain's latest oracle-triggered run as of block `block` or before: its block, the prices
/// it used and the time of that block's oracle rounds.
pub async fn last_oracle_run(
    pool: &sqlx::PgPool,
    chain_id: i64,
    block: i64,
) -> sqlx::Result<
    Option<(
        i64,
        serde_json::Value,
        Option<chrono::DateTime<chrono::Utc>>,
    )>,
> {
    let row = sqlx::query!(
        r#"SELECT r.as_of_block AS "as_of_block!", r.prices,
                  (SELECT max(block_time) FROM oracle_update o
                   WHERE o.chain_id = r.chain_id AND o.block_number = r.as_of_block) AS "at?"
           FROM stress_run r
           WHERE r.chain_id = $1 AND r.trigger = 'oracle_move' AND r.as_of_block <= $2
           ORDER BY r.as_of_block DESC LIMIT 1"#,
        chain_id,
        block
    )
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|r| (r.as_of_block, r.prices, r.at)))
}

/// A stored run as the API serves it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRun {
    pub id: i64,
    pub computed_at: chrono::DateTime<chrono::Utc>,
    pub as_of_block: Option<i64>,
    pub trigger: String,
    pub positions: i32,
    pub prices: serde_json::Value,
    pub var95_usd: Option<BigDecimal>,
    pub evar99_usd: Option<BigDecimal>,
    pub lar95_usd: Option<BigDecimal>,
    pub elapsed_ms: f64,
}

/// One row of a stored grid.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredScenario {
    pub asset: String,
    pub shock: f64,
    pub correlated: bool,
    pub liquidatable: i32,
    pub debt_at_risk_usd: BigDecimal,
    pub bad_debt_usd: BigDecimal,
}

/// The chain's latest run with its grid (by asset, uncorrelated first, mildest shock first).
pub async fn latest(
    pool: &sqlx::PgPool,
    chain_id: i64,
) -> sqlx::Result<Option<(StoredRun, Vec<StoredScenario>)>> {
    let Some(run) = sqlx::query_as!(
        StoredRun,
        "SELECT id, computed_at, as_of_block, trigger, positions, prices, var95_usd,
                evar99_usd, lar95_usd, elapsed_ms
         FROM stress_run WHERE chain_id = $1 ORDER BY id DESC LIMIT 1",
        chain_id
    )
    .fetch_optional(pool)
    .await?
    else {
        return Ok(None);
    };
    let grid = sqlx::query_as!(
        StoredScenario,
        "SELECT asset, shock, correlated, liquidatable, debt_at_risk_usd, bad_debt_usd
         FROM stress_scenario WHERE run_id = $1 ORDER BY asset, correlated, shock DESC",
        run.id
    )
    .fetch_all(pool)
    .await?;
    Ok(Some((run, grid)))
}

/// The block of the chain's first run as of `from_block` or later that priced `symbol` at
/// `price` (to a cent).
pub async fn first_priced_at(
    pool: &sqlx::PgPool,
    chain_id: i64,
    from_block: i64,
    symbol: &str,
    price: f64,
) -> sqlx::Result<Option<i64>> {
    Ok(sqlx::query_scalar!(
        "SELECT r.as_of_block FROM stress_run r
         WHERE r.chain_id = $1 AND r.as_of_block >= $2
           AND abs((r.prices->>$3)::float8 - $4) < 0.01
         ORDER BY r.as_of_block, r.id LIMIT 1",
        chain_id,
        from_block,
        symbol,
        price
    )
    .fetch_optional(pool)
    .await?
    .flatten())
}
