//! Reads of the lending read models (`lending_event`, `lending_position`,
//! `lending_market_event`) that the scorer, the risk worker and the API share: which wallets
//! have a history, the pool each borrows from, a reserve's decimals, and the chain's debtors
//! with their priced exposures (what a stress test shocks).

use std::collections::HashSet;

use bigdecimal::BigDecimal;
use sqlx::PgPool;

/// The (chain, wallet) pairs among `chains`/`wallets` (aligned) with at least one lending event.
pub async fn wallets_with_history(
    pool: &PgPool,
    chains: &[i64],
    wallets: &[String],
) -> sqlx::Result<HashSet<(i64, String)>> {
    let rows = sqlx::query!(
        r#"SELECT DISTINCT e.chain_id, e.wallet FROM lending_event e
           JOIN UNNEST($1::int8[], $2::text[]) AS t(c, w) ON e.chain_id = t.c AND e.wallet = t.w"#,
        chains,
        wallets
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|r| (r.chain_id, r.wallet)).collect())
}

/// For each wallet (aligned `chains`/`wallets`), the lending pool its latest flow that names one
/// went to (live RPC events carry the pool; recorded ones may not): (chain, wallet, pool).
pub async fn latest_pools(
    pool: &PgPool,
    chains: &[i64],
    wallets: &[String],
) -> sqlx::Result<Vec<(i64, String, String)>> {
    let rows = sqlx::query!(
        r#"SELECT DISTINCT ON (e.chain_id, e.wallet) e.chain_id, e.wallet, e.pool AS "pool!"
           FROM lending_event e
           JOIN UNNEST($1::int8[], $2::text[]) AS k(chain_id, wallet)
             ON e.chain_id = k.chain_id AND e.wallet = k.wallet
           WHERE e.pool IS NOT NULL
           ORDER BY e.chain_id, e.wallet, e.block_number DESC"#,
        chains,
        wallets
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.chain_id, r.wallet, r.pool))
        .collect())
}

/// A reserve's decimals, as its lending events recorded them; `None` for a token that is no
/// reserve of the chain.
pub async fn reserve_decimals(
    pool: &PgPool,
    chain_id: i64,
    reserve: &str,
) -> sqlx::Result<Option<i16>> {
    sqlx::query_scalar!(
        "SELECT decimals FROM lending_event WHERE chain_id = $1 AND reserve = $2 LIMIT 1",
        chain_id,
        reserve
    )
    .fetch_optional(pool)
    .await
}

/// One position of a wallet with debt somewhere on the chain, priced: base units (negative
/// balances floored at zero), the reserve's decimals, its USD price (oracle, else the last
/// price its lending events carried; `None`: unpriced), its latest configured liquidation
/// threshold and bonus (bps; `None`: the log carries no configuration), and the block the
/// position is as of.
#[derive(Debug, Clone, PartialEq)]
pub struct DebtorPosition {
    pub wallet: String,
    pub symbol: String,
    pub collateral: BigDecimal,
    pub debt: BigDecimal,
    pub decimals: i32,
    pub price: Option<BigDecimal>,
    pub liquidation_threshold: Option<i32>,
    pub liquidation_bonus: Option<i32>,
    pub block: Option<i64>,
}

/// The positions of every wallet with debt on the chain, now (`as_of` `None`: positions,
/// prices and configurations as the read models hold them) or as of block `as_of` (positions
/// from `lending_position_as_of`, each price and configuration the last at or before it), by
/// wallet and symbol.
pub async fn debtor_positions(
    pool: &PgPool,
    chain_id: i64,
    as_of: Option<i64>,
) -> sqlx::Result<Vec<DebtorPosition>> {
    match as_of {
        None => {
            sqlx::query_as!(
                DebtorPosition,
                r#"WITH p AS (
                       SELECT * FROM lending_position WHERE chain_id = $1
                   ), debtors AS (
                       SELECT wallet FROM p GROUP BY wallet HAVING sum(variable_debt) > 0
                   )
                   SELECT p.wallet AS "wallet!", p.symbol AS "symbol!",
                          greatest(p.collateral, 0)::numeric AS "collateral!",
                          greatest(p.variable_debt, 0)::numeric AS "debt!",
                          p.decimals::int4 AS "decimals!",
                          coalesce(o.price, (SELECT e.price_usd FROM lending_event e
                                             WHERE e.chain_id = p.chain_id AND e.reserve = p.reserve
                                               AND e.price_usd IS NOT NULL
                                             ORDER BY e.block_time DESC NULLS LAST LIMIT 1))::numeric
                              AS "price?",
                          c.liquidation_threshold AS "liquidation_threshold?",
                          c.liquidation_bonus AS "liquidation_bonus?",
                          p.last_block AS "block?"
                   FROM p JOIN debtors USING (wallet)
                   LEFT JOIN oracle_price o ON o.chain_id = p.chain_id AND o.asset = p.reserve
                   LEFT JOIN LATERAL (
                       SELECT m.liquidation_threshold, m.liquidation_bonus FROM lending_market_event m
                       WHERE m.chain_id = p.chain_id AND m.reserve = p.reserve
                         AND m.kind = 'reserve_config'
                       ORDER BY m.block_number DESC, m.log_index DESC LIMIT 1
                   ) c ON true
                   ORDER BY p.wallet, p.symbol"#,
                chain_id
            )
            .fetch_all(pool)
            .await
        }
        Some(block) => {
            sqlx::query_as!(
                DebtorPosition,
                r#"WITH p AS (
                       SELECT * FROM lending_position_as_of($1, $2)
                   ), debtors AS (
                       SELECT wallet FROM p GROUP BY wallet HAVING sum(variable_debt) > 0
                   )
                   SELECT p.wallet AS "wallet!", p.symbol AS "symbol!",
                          greatest(p.collateral, 0)::numeric AS "collateral!",
                          greatest(p.variable_debt, 0)::numeric AS "debt!",
                          p.decimals::int4 AS "decimals!",
                          coalesce(
                              (SELECT o.price FROM oracle_update o
                               WHERE o.chain_id = $1 AND o.asset = p.reserve AND o.block_number <= $2
                               ORDER BY o.block_number DESC, o.log_index DESC LIMIT 1),
                              (SELECT e.price_usd FROM lending_event e
                               WHERE e.chain_id = $1 AND e.reserve = p.reserve
                                 AND e.price_usd IS NOT NULL AND e.block_number <= $2
                               ORDER BY e.block_number DESC, e.event_id DESC LIMIT 1))::numeric
                              AS "price?",
                          c.liquidation_threshold AS "liquidation_threshold?",
                          c.liquidation_bonus AS "liquidation_bonus?",
                          $2::int8 AS "block?"
                   FROM p JOIN debtors USING (wallet)
                   LEFT JOIN LATERAL (
                       SELECT m.liquidation_threshold, m.liquidation_bonus FROM lending_market_event m
                       WHERE m.chain_id = $1 AND m.reserve = p.reserve AND m.kind = 'reserve_config'
                         AND m.block_number <= $2
                       ORDER BY m.block_number DESC, m.log_index DESC LIMIT 1
                   ) c ON true
                   ORDER BY p.wallet, p.symbol"#,
                chain_id,
                block
            )
            .fetch_all(pool)
            .await
        }
    }
}

/// One action of a wallet's lending summary (`wallet_lending_summary`).
#[derive(Debug, Clone, PartialEq)]
pub struct SummaryRow {
    pub action: String,
    pub event_count: i64,
    pub priced_count: i64,
    /// Postgres's own text of the numeric (its scale kept), as the Redis copy holds it.
    pub amount_usd: String,
    pub first_at: Option<chrono::DateTime<chrono::Utc>>,
    pub last_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// The wallet's lending summary, one row per action it took, in the order deposit, borrow,
/// repay, redeem, liquidation.
pub async fn summary(pool: &PgPool, chain_id: i64, wallet: &str) -> sqlx::Result<Vec<SummaryRow>> {
    sqlx::query_as!(
        SummaryRow,
        r#"SELECT action, event_count, priced_count, amount_usd::text AS "amount_usd!",
                  first_at AS "first_at?", last_at AS "last_at?"
           FROM wallet_lending_summary WHERE chain_id = $1 AND wallet = $2
           ORDER BY array_position(ARRAY['deposit','borrow','repay','redeem','liquidation'], action)"#,
        chain_id,
        wallet
    )
    .fetch_all(pool)
    .await
}

/// Every lending event of the wallets (an identity's addresses): (action, block time, USD).
pub async fn flows_of(
    pool: &PgPool,
    chain_id: i64,
    wallets: &[String],
) -> sqlx::Result<
    Vec<(
        String,
        Option<chrono::DateTime<chrono::Utc>>,
        Option<BigDecimal>,
    )>,
> {
    let rows = sqlx::query!(
        "SELECT action, block_time, amount_usd FROM lending_event WHERE chain_id = $1 AND wallet = ANY($2)",
        chain_id,
        wallets
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.action, r.block_time, r.amount_usd))
        .collect())
}

/// The wallets holding or owing `reserve` on the chain, now (`block` `None`) or as of `block`,
/// by address.
pub async fn holders(
    pool: &PgPool,
    chain_id: i64,
    reserve: &str,
    block: Option<i64>,
) -> sqlx::Result<Vec<String>> {
    match block {
        Some(block) => {
            sqlx::query_scalar!(
                r#"SELECT DISTINCT wallet AS "wallet!" FROM lending_position_as_of($1, $3)
                   WHERE reserve = $2 AND (collateral > 0 OR variable_debt > 0)
                   ORDER BY 1"#,
                chain_id,
                reserve,
                block
            )
            .fetch_all(pool)
            .await
        }
        None => {
            sqlx::query_scalar!(
                r#"SELECT DISTINCT wallet AS "wallet!" FROM lending_position
                   WHERE chain_id = $1 AND reserve = $2 AND (collateral > 0 OR variable_debt > 0)
                   ORDER BY 1"#,
                chain_id,
                reserve
            )
            .fetch_all(pool)
            .await
        }
    }
}

/// One wallet's total for one lending action, the amount as Postgres prints it (its scale
/// kept, as the API and the Redis copies serve it).
#[derive(Debug, Clone, PartialEq)]
pub struct ActionTotal {
    pub chain_id: i64,
    pub wallet: String,
    pub action: String,
    pub event_count: i64,
    pub priced_count: i64,
    pub amount_usd: String,
}

/// The per-action totals (`wallet_lending_summary`) of each (chain, wallet) of
/// `chains`/`wallets` (aligned), per wallet in the order deposit, borrow, repay, redeem,
/// liquidation.
pub async fn totals_of(
    pool: &PgPool,
    chains: &[i64],
    wallets: &[String],
) -> sqlx::Result<Vec<ActionTotal>> {
    sqlx::query_as!(
        ActionTotal,
        r#"SELECT s.chain_id, s.wallet, s.action, s.event_count, s.priced_count,
                  s.amount_usd::text AS "amount_usd!"
           FROM wallet_lending_summary s
           JOIN UNNEST($1::int8[], $2::text[]) AS k(c, w) ON s.chain_id = k.c AND s.wallet = k.w
           ORDER BY s.chain_id, s.wallet,
                    array_position(ARRAY['deposit','borrow','repay','redeem','liquidation'], s.action)"#,
        chains,
        wallets
    )
    .fetch_all(pool)
    .await
}
