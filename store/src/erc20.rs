//! Watched ERC-20 tokens (`erc20_balance`, `erc20_token`): holders' balances.

use bigdecimal::BigDecimal;
use sqlx::PgPool;

/// A holder's balance of one token, with what is known of the token.
#[derive(Debug, Clone, PartialEq)]
pub struct Balance {
    pub token: String,
    pub name: Option<String>,
    pub symbol: Option<String>,
    pub decimals: Option<i16>,
    /// Base units.
    pub balance: BigDecimal,
    pub transfers: i64,
}

/// The holder's balances, largest first (ties by token), at most `limit`.
pub async fn balances(
    pool: &PgPool,
    chain_id: i64,
    holder: &str,
    limit: i64,
) -> sqlx::Result<Vec<Balance>> {
    sqlx::query_as!(
        Balance,
        r#"SELECT b.token, t.name AS "name?", t.symbol AS "symbol?", t.decimals AS "decimals?",
                  b.balance, b.transfers
           FROM erc20_balance b
           LEFT JOIN erc20_token t USING (chain_id, token)
           WHERE b.chain_id = $1 AND b.holder = $2
           ORDER BY b.balance DESC, b.token LIMIT $3"#,
        chain_id,
        holder,
        limit
    )
    .fetch_all(pool)
    .await
}

/// Whether any watched token's transfers name `holder`.
pub async fn holds_any(pool: &PgPool, chain_id: i64, holder: &str) -> sqlx::Result<bool> {
    sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM erc20_balance WHERE chain_id = $1 AND holder = $2) AS "e!""#,
        chain_id,
        holder
    )
    .fetch_one(pool)
    .await
}
