//! Liquidity histories read from the read models, shared by the risk worker (shortage alerts)
//! and the API (forecasts): one point per instant, oldest first, hours since the epoch.

use sqlx::PgPool;

/// A lending reserve's running supply and debt (whole tokens) after each instant with flows.
#[derive(Debug, Clone, PartialEq)]
pub struct ReservePoint {
    pub hours: f64,
    pub supply: f64,
    pub debt: f64,
    pub symbol: String,
    pub block_number: Option<i64>,
}

/// An AMM pool's reserves (base units) after each instant with a `Sync`.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolPoint {
    pub hours: f64,
    pub reserve0: f64,
    pub reserve1: f64,
    pub token0: String,
    pub token1: String,
    pub block_number: Option<i64>,
}

/// Keeps the last of the points that share an instant (their order within it is arbitrary).
fn last_per_instant<T: Clone>(points: &mut Vec<T>, hours: impl Fn(&T) -> f64) {
    points.dedup_by(|later, earlier| {
        if hours(later) == hours(earlier) {
            *earlier = later.clone();
            true
        } else {
            false
        }
    });
}

/// Supply (deposits − redeems) and debt (borrows − repays − liquidated debt) of a reserve, as
/// running totals of its `lending_event` flows with a block time.
pub async fn reserve_history(
    pool: &PgPool,
    chain_id: i64,
    reserve: &str,
) -> sqlx::Result<Vec<ReservePoint>> {
    let mut points = sqlx::query_as!(
        ReservePoint,
        r#"SELECT extract(epoch FROM block_time)::float8 / 3600.0 AS "hours!",
                  (sum(CASE action WHEN 'deposit' THEN amount WHEN 'redeem' THEN -amount ELSE 0 END)
                      OVER w / 10::numeric ^ decimals)::float8 AS "supply!",
                  (sum(CASE action WHEN 'borrow' THEN amount WHEN 'repay' THEN -amount
                                   WHEN 'liquidation' THEN -amount ELSE 0 END)
                      OVER w / 10::numeric ^ decimals)::float8 AS "debt!",
                  symbol AS "symbol!", block_number AS "block_number?"
           FROM lending_event
           WHERE chain_id = $1 AND reserve = $2 AND block_time IS NOT NULL
           WINDOW w AS (ORDER BY block_time, event_id ROWS UNBOUNDED PRECEDING)
           ORDER BY block_time, event_id"#,
        chain_id,
        reserve
    )
    .fetch_all(pool)
    .await?;
    last_per_instant(&mut points, |p| p.hours);
    Ok(points)
}

/// A pool's reserves after each of its timed `Sync`s (`pool_sync`) within `window_hours` of its
/// latest one (the window is applied in Postgres: a busy pool's older history is not read).
pub async fn pool_history(
    pool: &PgPool,
    chain_id: i64,
    address: &str,
    window_hours: f64,
) -> sqlx::Result<Vec<PoolPoint>> {
    let mut points = sqlx::query_as!(
        PoolPoint,
        r#"SELECT extract(epoch FROM block_time)::float8 / 3600.0 AS "hours!",
                  reserve0::float8 AS "reserve0!", reserve1::float8 AS "reserve1!",
                  token0 AS "token0!", token1 AS "token1!", block_number AS "block_number?"
           FROM pool_sync
           WHERE chain_id = $1 AND pool = $2 AND block_time IS NOT NULL
             AND block_time >= (SELECT max(block_time) FROM pool_sync
                                WHERE chain_id = $1 AND pool = $2)
                               - make_interval(secs => $3::float8 * 3600)
           ORDER BY block_number, log_index"#,
        chain_id,
        address,
        window_hours
    )
    .fetch_all(pool)
    .await?;
    last_per_instant(&mut points, |p| p.hours);
    Ok(points)
}

// "The row is sealed", in the two statements below: block at most `$3` when the chain's stretch
// has blocks, else below the seals' bound in its partition (`$4..$6`, UNNESTed arrays).

/// [`reserve_history`] as sealed (`domain::seal`): only the flows of blocks up to `last_block`,
/// or, without blocks, below `through` (topic, partition, next offset) in their partition; what
/// the risk worker forecasts from, so a forecast does not depend on how far the projector was.
pub async fn reserve_history_sealed(
    pool: &PgPool,
    chain_id: i64,
    reserve: &str,
    last_block: Option<i64>,
    through: &[(String, i32, i64)],
) -> sqlx::Result<Vec<ReservePoint>> {
    let (topics, partitions, next) = unzip_through(through);
    let mut points = sqlx::query_as!(
        ReservePoint,
        r#"SELECT extract(epoch FROM block_time)::float8 / 3600.0 AS "hours!",
                  (sum(CASE action WHEN 'deposit' THEN amount WHEN 'redeem' THEN -amount ELSE 0 END)
                      OVER w / 10::numeric ^ decimals)::float8 AS "supply!",
                  (sum(CASE action WHEN 'borrow' THEN amount WHEN 'repay' THEN -amount
                                   WHEN 'liquidation' THEN -amount ELSE 0 END)
                      OVER w / 10::numeric ^ decimals)::float8 AS "debt!",
                  symbol AS "symbol!", block_number AS "block_number?"
           FROM lending_event
           WHERE chain_id = $1 AND reserve = $2 AND block_time IS NOT NULL
             AND (CASE WHEN $3::int8 IS NOT NULL THEN block_number <= $3
                  ELSE EXISTS (SELECT 1 FROM UNNEST($4::text[], $5::int4[], $6::int8[]) AS s(t, p, n)
                               WHERE s.t = kafka_topic AND s.p = kafka_partition
                                 AND kafka_offset < s.n) END)
           WINDOW w AS (ORDER BY block_time, event_id ROWS UNBOUNDED PRECEDING)
           ORDER BY block_time, event_id"#,
        chain_id,
        reserve,
        last_block,
        &topics,
        &partitions,
        &next
    )
    .fetch_all(pool)
    .await?;
    last_per_instant(&mut points, |p| p.hours);
    Ok(points)
}

/// A pool's sealed reserves (see [`reserve_history_sealed`]) after each timed `Sync` within
/// `window_hours` before `end_hours` (hours since the epoch, exclusive).
pub async fn pool_history_sealed(
    pool: &PgPool,
    chain_id: i64,
    address: &str,
    end_hours: f64,
    window_hours: f64,
    last_block: Option<i64>,
    through: &[(String, i32, i64)],
) -> sqlx::Result<Vec<PoolPoint>> {
    let (topics, partitions, next) = unzip_through(through);
    let mut points = sqlx::query_as!(
        PoolPoint,
        r#"SELECT extract(epoch FROM block_time)::float8 / 3600.0 AS "hours!",
                  reserve0::float8 AS "reserve0!", reserve1::float8 AS "reserve1!",
                  token0 AS "token0!", token1 AS "token1!", block_number AS "block_number?"
           FROM pool_sync
           WHERE chain_id = $1 AND pool = $2 AND block_time IS NOT NULL
             AND (CASE WHEN $3::int8 IS NOT NULL THEN block_number <= $3
                  ELSE EXISTS (SELECT 1 FROM UNNEST($4::text[], $5::int4[], $6::int8[]) AS s(t, p, n)
                               WHERE s.t = kafka_topic AND s.p = kafka_partition
                                 AND kafka_offset < s.n) END)
             AND block_time < to_timestamp($7::float8 * 3600)
             AND block_time >= to_timestamp(($7::float8 - $8::float8) * 3600)
           ORDER BY block_number, log_index"#,
        chain_id,
        address,
        last_block,
        &topics,
        &partitions,
        &next,
        end_hours,
        window_hours
    )
    .fetch_all(pool)
    .await?;
    last_per_instant(&mut points, |p| p.hours);
    Ok(points)
}

fn unzip_through(through: &[(String, i32, i64)]) -> (Vec<String>, Vec<i32>, Vec<i64>) {
    (
        through.iter().map(|t| t.0.clone()).collect(),
        through.iter().map(|t| t.1).collect(),
        through.iter().map(|t| t.2).collect(),
    )
}

/// The points of `history` within `window_hours` of its last one.
pub fn recent<T: Clone>(history: &[T], hours: impl Fn(&T) -> f64, window_hours: f64) -> Vec<T> {
    let Some(last) = history.last().map(&hours) else {
        return Vec::new();
    };
    history
        .iter()
        .filter(|p| hours(p) >= last - window_hours)
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_point_per_instant_keeps_the_last_and_windows_count_back_from_the_end() {
        let mut v = vec![(0.0, 1), (1.0, 2), (1.0, 3), (2.0, 4), (2.0, 5), (2.0, 6)];
        last_per_instant(&mut v, |p| p.0);
        assert_eq!(v, vec![(0.0, 1), (1.0, 3), (2.0, 6)]);
        assert_eq!(recent(&v, |p| p.0, 1.0), vec![(1.0, 3), (2.0, 6)]);
        assert!(recent(&Vec::<(f64, i32)>::new(), |p| p.0, 1.0).is_empty());
    }
}
