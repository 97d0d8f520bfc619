//! USD prices as the read models hold them: oracle rounds (`oracle_update`, the latest per
//! asset in `oracle_price`) and, for reserves without an oracle, the prices lending events
//! carried (`lending_event.price_usd`).

use bigdecimal::BigDecimal;
use chrono::{DateTime, Utc};
use sqlx::PgPool;

/// One price: when it took effect, the block it came in (if known) and the USD price.
pub type PricePoint = (DateTime<Utc>, Option<i64>, f64);

// A reserve's price window: its points from `since` on, oldest first, preceded by the last
// point before `since` (the price in force when the window opens): its oracle rounds
// ([`oracle_window`]), and separately the prices its lending events carried
// ([`lending_window`]), those up to `until` (the latest time a reader prices at; lending points
// after it are never read, so a batch of a backfill reads its own stretch, not the rest of the
// history). Reads the same whatever the length of the reserve's history before `since`. Oracle
// rounds are read to the end: whether a reserve has any visible round at all decides which
// kind prices it.
//
// Each kind comes back as one row of three arrays, not a row per point: a batch's windows hold
// tens of thousands of points, and a row each cost the scorer ~10 % of its CPU in per-row
// decoding alone. The arrays are filled in the order the points are read, as the rows were
// returned before: the point before the window, then the window in index order (an `Append` of
// the two ordered scans; an `ORDER BY` inside each `array_agg` would sort the points three
// times over).

/// A reserve's oracle rounds in its price window: the last one before `since`, then every one
/// from `since` on in chain order (read to the end: whether a reserve has a visible round at all
/// decides which kind prices it).
pub async fn oracle_window(
    pool: &PgPool,
    chain_id: i64,
    reserve: &str,
    since: Option<DateTime<Utc>>,
) -> sqlx::Result<Vec<PricePoint>> {
    let oracle = sqlx::query!(
        r#"SELECT coalesce(array_agg(at), '{}') AS "at!",
                  coalesce(array_agg(block_number), '{}') AS "block!: Vec<Option<i64>>",
                  coalesce(array_agg(price), '{}') AS "price!"
           FROM (
             SELECT * FROM (
               SELECT coalesce(updated_at, block_time) AS at, block_number, price::float8 AS price
               FROM oracle_update
               WHERE chain_id = $1 AND asset = $2 AND coalesce(updated_at, block_time) < $3
               ORDER BY coalesce(updated_at, block_time) DESC, block_number DESC, log_index DESC
               LIMIT 1) before
             UNION ALL
             SELECT * FROM (
               SELECT coalesce(updated_at, block_time), block_number, price::float8
               FROM oracle_update
               WHERE chain_id = $1 AND asset = $2 AND coalesce(updated_at, block_time) >= $3
               ORDER BY block_number, log_index) window_points) points"#,
        chain_id,
        reserve,
        since
    )
    .fetch_one(pool)
    .await?;
    Ok(zip(oracle.at, oracle.block, oracle.price))
}

/// A reserve's lending points in its price window: the last one before `since`, then those of
/// `since..=until` (no later point prices anything), in the order of (`block_time`,
/// `event_id`).
pub async fn lending_window(
    pool: &PgPool,
    chain_id: i64,
    reserve: &str,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
) -> sqlx::Result<Vec<PricePoint>> {
    let lending = sqlx::query!(
        r#"SELECT coalesce(array_agg(at), '{}') AS "at!",
                  coalesce(array_agg(block_number), '{}') AS "block!: Vec<Option<i64>>",
                  coalesce(array_agg(price), '{}') AS "price!"
           FROM (
             SELECT * FROM (
               SELECT block_time AS at, block_number, price_usd::float8 AS price
               FROM lending_event
               WHERE chain_id = $1 AND reserve = $2 AND price_usd IS NOT NULL
                 AND block_time < $3
               ORDER BY block_time DESC, event_id DESC
               LIMIT 1) before
             UNION ALL
             SELECT * FROM (
               SELECT block_time, block_number, price_usd::float8 FROM lending_event
               WHERE chain_id = $1 AND reserve = $2 AND price_usd IS NOT NULL
                 AND block_time >= $3 AND block_time <= coalesce($4::timestamptz, 'infinity')
               ORDER BY block_time, event_id) window_points) points"#,
        chain_id,
        reserve,
        since,
        until
    )
    .fetch_one(pool)
    .await?;
    Ok(zip(lending.at, lending.block, lending.price))
}

/// [`lending_window`] for a window that ends before `below` (excluded): what a reader holding
/// the points from `below` on reads to start its window earlier.
pub async fn lending_gap(
    pool: &PgPool,
    chain_id: i64,
    reserve: &str,
    since: DateTime<Utc>,
    below: DateTime<Utc>,
) -> sqlx::Result<Vec<PricePoint>> {
    // Postgres keeps times to the microsecond: before `below` is up to a microsecond before it.
    let until = below - chrono::Duration::microseconds(1);
    lending_window(pool, chain_id, reserve, Some(since), Some(until)).await
}

/// A reserve's lending points of `from..=until` (no point before them), in the order of
/// [`lending_window`]: what a reader holding the points before `from` adds to them.
pub async fn lending_from(
    pool: &PgPool,
    chain_id: i64,
    reserve: &str,
    from: DateTime<Utc>,
    until: Option<DateTime<Utc>>,
) -> sqlx::Result<Vec<PricePoint>> {
    let lending = sqlx::query!(
        r#"SELECT coalesce(array_agg(block_time), '{}') AS "at!",
                  coalesce(array_agg(block_number), '{}') AS "block!: Vec<Option<i64>>",
                  coalesce(array_agg(price), '{}') AS "price!"
           FROM (
             SELECT block_time, block_number, price_usd::float8 AS price FROM lending_event
             WHERE chain_id = $1 AND reserve = $2 AND price_usd IS NOT NULL
               AND block_time >= $3 AND block_time <= coalesce($4::timestamptz, 'infinity')
             ORDER BY block_time, event_id) points"#,
        chain_id,
        reserve,
        from,
        until
    )
    .fetch_one(pool)
    .await?;
    Ok(zip(lending.at, lending.block, lending.price))
}

/// Where the price points' changes stand (`price_change`: deletes, updates and truncates of
/// `lending_event` and `oracle_update`, and reorgs' retraction seals): its row count and last
/// id. Points read after one mark and checked against the next are whole if it did not move.
pub async fn change_mark(pool: &PgPool) -> sqlx::Result<(i64, Option<i64>)> {
    let mark = sqlx::query!(r#"SELECT count(*) AS "count!", max(id) AS last FROM price_change"#)
        .fetch_one(pool)
        .await?;
    Ok((mark.count, mark.last))
}

/// Lets go of `price_change`'s rows but those of the last `keep` ids once it holds more than
/// `most`, so that [`change_mark`]'s count stays cheap. A reader's next mark then differs once
/// (it drops what it kept and reads whole once); returns the rows deleted.
pub async fn prune_changes(pool: &PgPool, most: i64, keep: i64) -> sqlx::Result<u64> {
    Ok(sqlx::query!(
        "DELETE FROM price_change
         WHERE (SELECT count(*) FROM price_change) > $1
           AND id <= (SELECT max(id) FROM price_change) - $2",
        most,
        keep
    )
    .execute(pool)
    .await?
    .rows_affected())
}

fn zip(at: Vec<DateTime<Utc>>, block: Vec<Option<i64>>, price: Vec<f64>) -> Vec<PricePoint> {
    at.into_iter()
        .zip(block)
        .zip(price)
        .map(|((at, block), price)| (at, block, price))
        .collect()
}

/// An asset's latest oracle price on the chain, if it has an oracle.
pub async fn oracle_price(
    pool: &PgPool,
    chain_id: i64,
    asset: &str,
) -> sqlx::Result<Option<BigDecimal>> {
    // A feed whose price is not stored (NULL) reads as unpriced, like no feed.
    Ok(sqlx::query_scalar!(
        "SELECT price FROM oracle_price WHERE chain_id = $1 AND asset = $2",
        chain_id,
        asset
    )
    .fetch_optional(pool)
    .await?
    .flatten())
}

/// A token's decimals (as a lending reserve) and its last oracle answer at or before `block`;
/// either `None` where unknown.
pub async fn token_at(
    pool: &PgPool,
    chain_id: i64,
    token: &str,
    block: i64,
) -> sqlx::Result<(Option<i16>, Option<f64>)> {
    let r = sqlx::query!(
        r#"SELECT (SELECT decimals FROM lending_event WHERE chain_id = $1 AND reserve = $2 LIMIT 1)
                      AS "decimals?",
                  (SELECT price::float8 FROM oracle_update WHERE chain_id = $1 AND asset = $2
                     AND block_number <= $3 ORDER BY block_number DESC, log_index DESC LIMIT 1)
                      AS "price?""#,
        chain_id,
        token,
        block
    )
    .fetch_one(pool)
    .await?;
    Ok((r.decimals, r.price))
}

/// An asset's oracle rounds up to block `last_block` (all without one), in chain order:
/// (event id, price).
pub async fn oracle_rounds(
    pool: &PgPool,
    chain_id: i64,
    asset: &str,
    last_block: Option<i64>,
) -> sqlx::Result<Vec<(String, f64)>> {
    let rows = sqlx::query!(
        r#"SELECT event_id, price::float8 AS "price!" FROM oracle_update
           WHERE chain_id = $1 AND asset = $2 AND ($3::int8 IS NULL OR block_number <= $3)
           ORDER BY block_number, log_index, event_id"#,
        chain_id,
        asset,
        last_block
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|r| (r.event_id, r.price)).collect())
}

/// The last block of the chain's oracle rounds among `tx_hashes`.
pub async fn last_round_block_of(
    pool: &PgPool,
    chain_id: i64,
    tx_hashes: &[String],
) -> sqlx::Result<Option<i64>> {
    sqlx::query_scalar!(
        "SELECT max(block_number) FROM oracle_update WHERE chain_id = $1 AND tx_hash = ANY($2)",
        chain_id,
        tx_hashes
    )
    .fetch_one(pool)
    .await
}
