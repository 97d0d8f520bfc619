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
    let rows: Vec<(f64, f64, f64, String, Option<i64>)> = sqlx::query_as(
        "SELECT extract(epoch FROM block_time)::float8 / 3600.0,
                (sum(CASE action WHEN 'deposit' THEN amount WHEN 'redeem' THEN -amount ELSE 0 END)
                    OVER w / 10::numeric ^ decimals)::float8,
                (sum(CASE action WHEN 'borrow' THEN amount WHEN 'repay' THEN -amount
                                 WHEN 'liquidation' THEN -amount ELSE 0 END)
                    OVER w / 10::numeric ^ decimals)::float8,
                symbol, block_number
         FROM lending_event
         WHERE chain_id = $1 AND reserve = $2 AND block_time IS NOT NULL
         WINDOW w AS (ORDER BY block_time, event_id ROWS UNBOUNDED PRECEDING)
         ORDER BY block_time, event_id",
    )
    .bind(chain_id)
    .bind(reserve)
    .fetch_all(pool)
    .await?;
    let mut points: Vec<ReservePoint> = rows
        .into_iter()
        .map(|(hours, supply, debt, symbol, block_number)| ReservePoint {
            hours,
            supply,
            debt,
            symbol,
            block_number,
        })
        .collect();
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
    let rows: Vec<PoolRow> = sqlx::query_as(
        "SELECT extract(epoch FROM block_time)::float8 / 3600.0, reserve0::float8,
                reserve1::float8, token0, token1, block_number
         FROM pool_sync
         WHERE chain_id = $1 AND pool = $2 AND block_time IS NOT NULL
           AND block_time >= (SELECT max(block_time) FROM pool_sync
                              WHERE chain_id = $1 AND pool = $2)
                             - make_interval(secs => $3 * 3600)
         ORDER BY block_number, log_index",
    )
    .bind(chain_id)
    .bind(address)
    .bind(window_hours)
    .fetch_all(pool)
    .await?;
    Ok(pool_points(rows))
}

/// The SQL condition "the row is sealed": block at most `$n` when the chain's stretch has
/// blocks, else below the seals' bound in its partition (`$n+1..$n+3`, UNNESTed arrays).
const SEALED: &str = "(CASE WHEN $3::int8 IS NOT NULL THEN block_number <= $3
      ELSE EXISTS (SELECT 1 FROM UNNEST($4::text[], $5::int4[], $6::int8[]) AS s(t, p, n)
                   WHERE s.t = kafka_topic AND s.p = kafka_partition AND kafka_offset < s.n) END)";

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
    let sql = format!(
        "SELECT extract(epoch FROM block_time)::float8 / 3600.0,
                (sum(CASE action WHEN 'deposit' THEN amount WHEN 'redeem' THEN -amount ELSE 0 END)
                    OVER w / 10::numeric ^ decimals)::float8,
                (sum(CASE action WHEN 'borrow' THEN amount WHEN 'repay' THEN -amount
                                 WHEN 'liquidation' THEN -amount ELSE 0 END)
                    OVER w / 10::numeric ^ decimals)::float8,
                symbol, block_number
         FROM lending_event
         WHERE chain_id = $1 AND reserve = $2 AND block_time IS NOT NULL AND {SEALED}
         WINDOW w AS (ORDER BY block_time, event_id ROWS UNBOUNDED PRECEDING)
         ORDER BY block_time, event_id"
    );
    let rows: Vec<(f64, f64, f64, String, Option<i64>)> = sqlx::query_as(&sql)
        .bind(chain_id)
        .bind(reserve)
        .bind(last_block)
        .bind(&topics)
        .bind(&partitions)
        .bind(&next)
        .fetch_all(pool)
        .await?;
    let mut points: Vec<ReservePoint> = rows
        .into_iter()
        .map(|(hours, supply, debt, symbol, block_number)| ReservePoint {
            hours,
            supply,
            debt,
            symbol,
            block_number,
        })
        .collect();
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
    let sql = format!(
        "SELECT extract(epoch FROM block_time)::float8 / 3600.0, reserve0::float8,
                reserve1::float8, token0, token1, block_number
         FROM pool_sync
         WHERE chain_id = $1 AND pool = $2 AND block_time IS NOT NULL AND {SEALED}
           AND block_time < to_timestamp($7 * 3600) AND block_time >= to_timestamp(($7 - $8) * 3600)
         ORDER BY block_number, log_index"
    );
    let rows: Vec<PoolRow> = sqlx::query_as(&sql)
        .bind(chain_id)
        .bind(address)
        .bind(last_block)
        .bind(&topics)
        .bind(&partitions)
        .bind(&next)
        .bind(end_hours)
        .bind(window_hours)
        .fetch_all(pool)
        .await?;
    Ok(pool_points(rows))
}

type PoolRow = (f64, f64, f64, String, String, Option<i64>);

/// A pool's `Sync` rows as points, the last of each instant.
fn pool_points(rows: Vec<PoolRow>) -> Vec<PoolPoint> {
    let mut points: Vec<PoolPoint> = rows
        .into_iter()
        .map(
            |(hours, reserve0, reserve1, token0, token1, block_number)| PoolPoint {
                hours,
                reserve0,
                reserve1,
                token0,
                token1,
                block_number,
            },
        )
        .collect();
    last_per_instant(&mut points, |p| p.hours);
    points
}

fn unzip_through(through: &[(String, i32, i64)]) -> (Vec<&str>, Vec<i32>, Vec<i64>) {
    (
        through.iter().map(|t| t.0.as_str()).collect(),
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
