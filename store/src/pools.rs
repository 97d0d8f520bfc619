//! AMM pools as the API reads them: the swap summary (`pool_summary`, or a pool seen only
//! through `Sync`s), per-token volumes, and the latest reserves.

use bigdecimal::BigDecimal;
use sqlx::PgPool;

/// A pool's swap summary (also the JSON of its Redis entry, `latest::Kind::Pool`).
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct PoolSummary {
    pub chain_id: i64,
    pub pool: String,
    pub protocol: String,
    pub swap_count: i64,
    pub reverted_count: i64,
    pub first_block: Option<i64>,
    pub last_block: Option<i64>,
}

/// The pool's summary; a pool with reserves (`Sync`s) and no swap yet reads as zero swaps;
/// `None` for a pool seen in neither.
pub async fn summary(
    pool: &PgPool,
    chain_id: i64,
    address: &str,
) -> sqlx::Result<Option<PoolSummary>> {
    sqlx::query_as!(
        PoolSummary,
        r#"SELECT chain_id AS "chain_id!", pool AS "pool!", protocol AS "protocol!",
                  swap_count AS "swap_count!", reverted_count AS "reverted_count!",
                  first_block AS "first_block?", last_block AS "last_block?"
           FROM pool_summary WHERE chain_id = $1 AND pool = $2
           UNION ALL
           (SELECT chain_id, pool, protocol, 0, 0, NULL::int8, NULL::int8 FROM pool_sync
            WHERE chain_id = $1 AND pool = $2 LIMIT 1)
           LIMIT 1"#,
        chain_id,
        address
    )
    .fetch_optional(pool)
    .await
}

/// Per token: (token, volume in, volume out) in base units.
pub type TokenVolume = (String, BigDecimal, BigDecimal);

/// The pool's per-token volumes over all its successful swaps (`pool_token_volume`), by token.
pub async fn token_volumes(
    pool: &PgPool,
    chain_id: i64,
    address: &str,
) -> sqlx::Result<Vec<TokenVolume>> {
    let rows = sqlx::query!(
        r#"SELECT token AS "token!", volume_in AS "volume_in!", volume_out AS "volume_out!"
           FROM pool_token_volume WHERE chain_id = $1 AND pool = $2 ORDER BY token"#,
        chain_id,
        address
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.token, r.volume_in, r.volume_out))
        .collect())
}

/// The pool's per-token volumes of its successful swaps in the `hours` before its latest timed
/// swap, by token; empty when its swaps carry no time.
pub async fn recent_token_volumes(
    pool: &PgPool,
    chain_id: i64,
    address: &str,
    hours: i32,
) -> sqlx::Result<Vec<TokenVolume>> {
    let rows = sqlx::query!(
        r#"WITH latest AS (SELECT max(block_time) AS t FROM swap
                           WHERE chain_id = $1 AND pool = $2 AND NOT reverted),
                recent AS (SELECT s.* FROM swap s, latest
                           WHERE s.chain_id = $1 AND s.pool = $2 AND NOT s.reverted
                             AND s.block_time > latest.t - make_interval(hours => $3))
           SELECT token AS "token!", sum(vin) AS "volume_in!", sum(vout) AS "volume_out!" FROM (
               SELECT token_in AS token, amount_in AS vin, 0::numeric AS vout FROM recent
               UNION ALL
               SELECT token_out, 0, amount_out FROM recent) t
           GROUP BY token ORDER BY token"#,
        chain_id,
        address,
        hours
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.token, r.volume_in, r.volume_out))
        .collect())
}

/// A `Sync`'s reserves.
#[derive(Debug, Clone, PartialEq)]
pub struct Reserves {
    pub token0: String,
    pub token1: String,
    pub reserve0: BigDecimal,
    pub reserve1: BigDecimal,
    pub block_number: Option<i64>,
}

/// The pool's latest `n` `Sync`s, newest first.
pub async fn latest_reserves(
    pool: &PgPool,
    chain_id: i64,
    address: &str,
    n: i64,
) -> sqlx::Result<Vec<Reserves>> {
    sqlx::query_as!(
        Reserves,
        r#"SELECT token0, token1, reserve0, reserve1, block_number AS "block_number?"
           FROM pool_sync
           WHERE chain_id = $1 AND pool = $2
           ORDER BY block_number DESC, log_index DESC LIMIT $3"#,
        chain_id,
        address,
        n
    )
    .fetch_all(pool)
    .await
}
