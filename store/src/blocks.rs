//! What the risk worker reads of a chain's blocks: the swaps, syncs and flash loans of a block
//! range, pools' reserve states, the reserves and pools a stretch of the log touched (by hour),
//! the anomaly model's swap history, and the blocks with oracle rounds; and the chains' heads
//! (the API's `_meta` and time travel).

use chrono::{DateTime, Utc};
use sqlx::PgPool;

/// A successful swap with a transaction (the sandwich and anomaly detectors' input).
#[derive(Debug, Clone, PartialEq)]
pub struct SwapRow {
    pub block_number: i64,
    pub tx_hash: String,
    pub tx_position: i32,
    pub trace_address: Vec<i32>,
    pub log_index: Option<i32>,
    pub pool: String,
    pub sender: String,
    pub recipient: String,
    pub token_in: String,
    pub amount_in: f64,
    pub token_out: String,
    pub amount_out: f64,
    pub block_time: Option<DateTime<Utc>>,
}

/// The chain's successful swaps with a transaction in blocks `from..=to`, in chain order.
pub async fn swaps(pool: &PgPool, chain_id: i64, from: i64, to: i64) -> sqlx::Result<Vec<SwapRow>> {
    sqlx::query_as!(
        SwapRow,
        r#"SELECT block_number AS "block_number!", tx_hash AS "tx_hash!", tx_position,
                  trace_address, log_index AS "log_index?", pool, sender, recipient, token_in,
                  amount_in::float8 AS "amount_in!", token_out, amount_out::float8 AS "amount_out!",
                  block_time AS "block_time?"
           FROM swap WHERE chain_id = $1 AND block_number BETWEEN $2 AND $3
             AND tx_hash IS NOT NULL AND NOT reverted
           ORDER BY block_number, tx_position, trace_address, log_index"#,
        chain_id,
        from,
        to
    )
    .fetch_all(pool)
    .await
}

/// A `Sync`: a pool's reserves after a log.
#[derive(Debug, Clone, PartialEq)]
pub struct SyncRow {
    pub block_number: i64,
    pub log_index: Option<i32>,
    pub tx_hash: Option<String>,
    pub pool: String,
    pub reserve0: f64,
    pub reserve1: f64,
    pub block_time: Option<DateTime<Utc>>,
}

/// The chain's `Sync`s in blocks `from..=to`, in log order.
pub async fn syncs(pool: &PgPool, chain_id: i64, from: i64, to: i64) -> sqlx::Result<Vec<SyncRow>> {
    sqlx::query_as!(
        SyncRow,
        r#"SELECT block_number AS "block_number!", log_index AS "log_index?",
                  tx_hash AS "tx_hash?", pool, reserve0::float8 AS "reserve0!",
                  reserve1::float8 AS "reserve1!", block_time AS "block_time?"
           FROM pool_sync WHERE chain_id = $1 AND block_number BETWEEN $2 AND $3
           ORDER BY block_number, log_index"#,
        chain_id,
        from,
        to
    )
    .fetch_all(pool)
    .await
}

/// A flash loan with a transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct LoanRow {
    pub block_number: i64,
    pub tx_hash: String,
    pub initiator: String,
    pub asset: String,
    pub amount: f64,
    pub premium: f64,
    pub block_time: Option<DateTime<Utc>>,
}

/// The chain's flash loans with a transaction in blocks `from..=to`, in log order.
pub async fn flash_loans(
    pool: &PgPool,
    chain_id: i64,
    from: i64,
    to: i64,
) -> sqlx::Result<Vec<LoanRow>> {
    sqlx::query_as!(
        LoanRow,
        r#"SELECT block_number AS "block_number!", tx_hash AS "tx_hash!",
                  initiator AS "initiator!", asset AS "asset!", amount::float8 AS "amount!",
                  premium::float8 AS "premium!", block_time AS "block_time?"
           FROM flash_loan WHERE chain_id = $1 AND block_number BETWEEN $2 AND $3
             AND tx_hash IS NOT NULL
           ORDER BY block_number, log_index"#,
        chain_id,
        from,
        to
    )
    .fetch_all(pool)
    .await
}

/// A pool's reserves at the end of a block.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolState {
    pub pool: String,
    pub block_number: i64,
    pub reserve0: f64,
    pub reserve1: f64,
}

/// Each pool's last state before block `from`, then its end-of-block states in `from..=to`,
/// by pool and block.
pub async fn pool_states(
    pool: &PgPool,
    chain_id: i64,
    pools: &[String],
    from: i64,
    to: i64,
) -> sqlx::Result<(Vec<PoolState>, Vec<PoolState>)> {
    let before = sqlx::query_as!(
        PoolState,
        r#"SELECT DISTINCT ON (pool) pool, block_number AS "block_number!",
                  reserve0::float8 AS "reserve0!", reserve1::float8 AS "reserve1!"
           FROM pool_sync WHERE chain_id = $1 AND pool = ANY($2) AND block_number < $3
           ORDER BY pool, block_number DESC, log_index DESC"#,
        chain_id,
        pools,
        from
    )
    .fetch_all(pool)
    .await?;
    let within = sqlx::query_as!(
        PoolState,
        r#"SELECT DISTINCT ON (pool, block_number) pool, block_number AS "block_number!",
                  reserve0::float8 AS "reserve0!", reserve1::float8 AS "reserve1!"
           FROM pool_sync WHERE chain_id = $1 AND pool = ANY($2) AND block_number BETWEEN $3 AND $4
           ORDER BY pool, block_number, log_index DESC"#,
        chain_id,
        pools,
        from,
        to
    )
    .fetch_all(pool)
    .await?;
    Ok((before, within))
}

/// A pool's two tokens, if any of its `Sync`s is stored.
pub async fn pool_tokens(
    pool: &PgPool,
    chain_id: i64,
    address: &str,
) -> sqlx::Result<Option<(String, String)>> {
    let row = sqlx::query!(
        "SELECT token0, token1 FROM pool_sync WHERE chain_id = $1 AND pool = $2 LIMIT 1",
        chain_id,
        address
    )
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|r| (r.token0, r.token1)))
}

/// A stretch of the log: (topic, partition, first offset, end offset) per partition.
pub type Ranges = [(String, i32, i64, i64)];

fn unzip(ranges: &Ranges) -> (Vec<String>, Vec<i32>, Vec<i64>, Vec<i64>) {
    (
        ranges.iter().map(|r| r.0.clone()).collect(),
        ranges.iter().map(|r| r.1).collect(),
        ranges.iter().map(|r| r.2).collect(),
        ranges.iter().map(|r| r.3).collect(),
    )
}

/// The lending reserves whose events are in `ranges`, each with the hours (since the epoch)
/// of those events' block times, by reserve.
pub async fn touched_reserves(
    pool: &PgPool,
    chain_id: i64,
    ranges: &Ranges,
) -> sqlx::Result<Vec<(String, Vec<i64>)>> {
    let (topics, partitions, lo, hi) = unzip(ranges);
    let rows = sqlx::query!(
        r#"SELECT e.reserve,
                  array_agg(DISTINCT floor(extract(epoch FROM e.block_time) / 3600)::int8)
                      AS "hours!"
           FROM lending_event e
           JOIN UNNEST($2::text[], $3::int4[], $4::int8[], $5::int8[]) AS r(t, p, lo, hi)
             ON e.kafka_topic = r.t AND e.kafka_partition = r.p
            AND e.kafka_offset >= r.lo AND e.kafka_offset < r.hi
           WHERE e.chain_id = $1 AND e.block_time IS NOT NULL
           GROUP BY 1 ORDER BY 1"#,
        chain_id,
        &topics,
        &partitions,
        &lo,
        &hi
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|r| (r.reserve, r.hours)).collect())
}

/// The pools whose `Sync`s are in `ranges`, each with the hours of their block times, by pool.
pub async fn touched_pools(
    pool: &PgPool,
    chain_id: i64,
    ranges: &Ranges,
) -> sqlx::Result<Vec<(String, Vec<i64>)>> {
    let (topics, partitions, lo, hi) = unzip(ranges);
    let rows = sqlx::query!(
        r#"SELECT e.pool,
                  array_agg(DISTINCT floor(extract(epoch FROM e.block_time) / 3600)::int8)
                      AS "hours!"
           FROM pool_sync e
           JOIN UNNEST($2::text[], $3::int4[], $4::int8[], $5::int8[]) AS r(t, p, lo, hi)
             ON e.kafka_topic = r.t AND e.kafka_partition = r.p
            AND e.kafka_offset >= r.lo AND e.kafka_offset < r.hi
           WHERE e.chain_id = $1 AND e.block_time IS NOT NULL
           GROUP BY 1 ORDER BY 1"#,
        chain_id,
        &topics,
        &partitions,
        &lo,
        &hi
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|r| (r.pool, r.hours)).collect())
}

/// For each (pool, token) pair (aligned `pools`/`tokens`), the input amounts of its last
/// `limit` successful swaps before block `before`, oldest first.
pub async fn swap_inputs_before(
    pool: &PgPool,
    chain_id: i64,
    before: i64,
    pools: &[String],
    tokens: &[String],
    limit: i64,
) -> sqlx::Result<Vec<(String, String, Vec<f64>)>> {
    let rows = sqlx::query!(
        r#"SELECT u.pool AS "pool!", u.token AS "token!", coalesce(array(
               SELECT amount_in::float8 FROM (
                   SELECT amount_in, block_number, tx_position, trace_address, log_index FROM swap
                   WHERE chain_id = $1 AND pool = u.pool AND token_in = u.token
                     AND block_number < $2 AND NOT reverted
                   ORDER BY block_number DESC, tx_position DESC, trace_address DESC, log_index DESC
                   LIMIT $5) last
               ORDER BY block_number, tx_position, trace_address, log_index), '{}') AS "amounts!"
           FROM UNNEST($3::text[], $4::text[]) AS u(pool, token)"#,
        chain_id,
        before,
        pools,
        tokens,
        limit
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.pool, r.token, r.amounts))
        .collect())
}

/// The blocks in `from..=to` with oracle rounds, each with its latest block time.
pub async fn oracle_blocks(
    pool: &PgPool,
    chain_id: i64,
    from: i64,
    to: i64,
) -> sqlx::Result<Vec<(i64, Option<DateTime<Utc>>)>> {
    let rows = sqlx::query!(
        r#"SELECT block_number AS "block_number!", max(block_time) AS "time?" FROM oracle_update
           WHERE chain_id = $1 AND block_number BETWEEN $2 AND $3
           GROUP BY block_number ORDER BY block_number"#,
        chain_id,
        from,
        to
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|r| (r.block_number, r.time)).collect())
}

/// A live chain's latest head.
#[derive(Debug, Clone, PartialEq)]
pub struct Head {
    pub chain_id: i64,
    pub name: String,
    pub number: i64,
    pub hash: String,
    pub block_time: Option<DateTime<Utc>>,
    pub confirmations: i64,
}

/// Every live chain's head, by chain id.
pub async fn heads(pool: &PgPool) -> sqlx::Result<Vec<Head>> {
    sqlx::query_as!(
        Head,
        "SELECT chain_id, name, number, hash, block_time, confirmations FROM chain_head
         ORDER BY chain_id"
    )
    .fetch_all(pool)
    .await
}

/// A chain's head number and confirmation depth, if it has a head.
pub async fn head_of(pool: &PgPool, chain_id: i64) -> sqlx::Result<Option<(i64, i64)>> {
    Ok(sqlx::query!(
        "SELECT number, confirmations FROM chain_head WHERE chain_id = $1",
        chain_id
    )
    .fetch_optional(pool)
    .await?
    .map(|r| (r.number, r.confirmations)))
}

/// The number of the canonical block `hash` of a chain (`None`: never indexed, or orphaned).
pub async fn number_of_hash(pool: &PgPool, chain_id: i64, hash: &str) -> sqlx::Result<Option<i64>> {
    sqlx::query_scalar!("SELECT chainfold_block_number($1, $2)", chain_id, hash)
        .fetch_one(pool)
        .await
}
