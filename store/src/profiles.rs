//! Credit profiles (`credit_profile`): each wallet's credit features kept as the state of a
//! fold over its lending history, with the cursor (the last row folded) they are as of, and
//! the history rows after a cursor. The fold itself is `domain::credit`; the scorer decides
//! when a stored profile can be resumed.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, Postgres, Transaction};

/// A wallet's stored profile (all `None` without one), with what checks it: the mark its rows
/// were read under, the wallet's mark now (`lending_order`: it changes whenever a row arrives
/// at or before the wallet's last key, or one is deleted or changed), and whether the profile's
/// cursor event is still in the log as it was (a reorg removes it).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredProfile {
    pub chain_id: i64,
    pub wallet: String,
    pub rows_folded: Option<i64>,
    pub cursor_time: Option<DateTime<Utc>>,
    pub cursor_block: Option<i64>,
    pub cursor_log: Option<i64>,
    pub cursor_event_id: Option<String>,
    /// The fold's state as JSON text.
    pub state: Option<String>,
    /// The wallet's mark when the profile's rows were read (`None`: stored before marks).
    pub stored_mark: Option<i64>,
    /// The wallet's mark now (`None`: no timed row stored).
    pub mark: Option<i64>,
    pub cursor_kept: bool,
}

/// Makes `conn`'s transaction one read-only snapshot (profiles and history read together).
pub async fn snapshot(conn: &mut PgConnection) -> sqlx::Result<()> {
    // A utility statement: it has no shape to check.
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(conn)
        .await?;
    Ok(())
}

/// The stored profiles of the wallets (aligned `chains`/`wallets`) and their marks: one primary
/// key lookup per wallet in each of `credit_profile` and `lending_order`, whatever the history.
pub async fn stored(
    conn: &mut PgConnection,
    chains: &[i64],
    wallets: &[String],
) -> sqlx::Result<Vec<StoredProfile>> {
    sqlx::query_as!(
        StoredProfile,
        r#"SELECT w.chain_id AS "chain_id!", w.wallet AS "wallet!", p.rows_folded AS "rows_folded?",
                  p.cursor_time AS "cursor_time?", p.cursor_block AS "cursor_block?",
                  p.cursor_log AS "cursor_log?", p.cursor_event_id AS "cursor_event_id?",
                  p.state::text AS "state?", p.order_mark AS "stored_mark?", o.mark AS "mark?",
                  EXISTS (SELECT 1 FROM lending_event c WHERE c.event_id = p.cursor_event_id
                          AND c.block_hash IS NOT DISTINCT FROM p.cursor_block_hash) AS "cursor_kept!"
           FROM UNNEST($1::int8[], $2::text[]) AS w(chain_id, wallet)
           LEFT JOIN credit_profile p ON p.chain_id = w.chain_id AND p.wallet = w.wallet
           LEFT JOIN lending_order o ON o.chain_id = w.chain_id AND o.wallet = w.wallet"#,
        chains,
        wallets
    )
    .fetch_all(conn)
    .await
}

/// One timed lending event of a wallet, in whole tokens, for the fold; `wallet` is the
/// wallet's position in the request.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryEventRow {
    pub wallet: i64,
    pub action: String,
    pub block_time: DateTime<Utc>,
    pub amount_usd: Option<f64>,
    pub reserve: String,
    pub symbol: String,
    pub amount: Option<f64>,
    pub collateral_reserve: Option<String>,
    pub collateral_symbol: Option<String>,
    pub collateral_amount: Option<f64>,
    pub block_number: Option<i64>,
    pub log_index: Option<i32>,
    pub event_id: String,
    pub block_hash: Option<String>,
}

/// Where each wallet's fold stands (all `None`: nothing folded), aligned with the wallets.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Cursors {
    pub time: Vec<Option<DateTime<Utc>>>,
    pub block: Vec<Option<i64>>,
    pub log: Vec<Option<i64>>,
    pub event_id: Vec<Option<String>>,
}

/// The timed lending events of each wallet after its cursor up to and including its `until`,
/// in the fold's order (the features sum floats: a sum's last digit depends on it), by wallet.
/// The cursor's time is also stated as a bound on `block_time` by itself (every row after the
/// cursor is at or after its time): with only the row comparison, an index scan of a wallet's
/// history reads from its first event and filters, so each batch would cost what the history
/// before the cursor holds, not the rows it returns.
pub async fn history_after(
    conn: &mut PgConnection,
    chains: &[i64],
    wallets: &[String],
    cursors: &Cursors,
    until: &[DateTime<Utc>],
) -> sqlx::Result<Vec<HistoryEventRow>> {
    sqlx::query_as!(
        HistoryEventRow,
        r#"SELECT (w.i - 1)::int8 AS "wallet!", e.action, e.block_time AS "block_time!",
                  e.amount_usd::float8 AS "amount_usd?", e.reserve, e.symbol,
                  (e.amount / power(10::numeric, e.decimals))::float8 AS "amount?",
                  e.collateral_reserve, e.collateral_symbol,
                  (e.collateral_amount / power(10::numeric, e.collateral_decimals))::float8
                      AS "collateral_amount?",
                  e.block_number, e.log_index, e.event_id, e.block_hash
           FROM UNNEST($1::int8[], $2::text[], $3::timestamptz[], $4::int8[], $5::int8[], $6::text[],
                       $7::timestamptz[])
                WITH ORDINALITY AS w(chain_id, wallet, t, b, l, id, until, i)
           JOIN lending_event e ON e.chain_id = w.chain_id AND e.wallet = w.wallet
            AND e.block_time <= w.until AND e.block_time >= coalesce(w.t, '-infinity')
            AND (w.t IS NULL OR e.block_time > w.t OR (e.block_time = w.t
                 AND (coalesce(e.block_number, 9223372036854775807),
                      coalesce(e.log_index::int8, 9223372036854775807),
                      e.event_id) > (w.b, w.l, w.id COLLATE "C")))
           ORDER BY w.i, e.block_time, e.block_number, e.log_index, e.event_id"#,
        chains,
        wallets,
        &cursors.time as &[Option<DateTime<Utc>>],
        &cursors.block as &[Option<i64>],
        &cursors.log as &[Option<i64>],
        &cursors.event_id as &[Option<String>],
        until
    )
    .fetch_all(conn)
    .await
}

/// Profiles to store as columns (one statement): the wallet, how many rows were folded, the
/// cursor (time, block, log, event, block hash) and the fold's state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NewProfiles {
    pub chain_id: Vec<i64>,
    pub wallet: Vec<String>,
    pub rows_folded: Vec<i64>,
    pub cursor_time: Vec<DateTime<Utc>>,
    pub cursor_block: Vec<i64>,
    pub cursor_log: Vec<i64>,
    pub cursor_event_id: Vec<String>,
    pub cursor_block_hash: Vec<Option<String>>,
    /// The fold's state as JSON text (stored as `json`, as written).
    pub state: Vec<String>,
    /// The wallet's `lending_order` mark its rows were read under.
    pub order_mark: Vec<Option<i64>>,
}

/// Stores `profiles`, replacing what was stored for their wallets.
pub async fn upsert(tx: &mut Transaction<'_, Postgres>, p: &NewProfiles) -> sqlx::Result<()> {
    sqlx::query!(
        "INSERT INTO credit_profile (chain_id, wallet, rows_folded, cursor_time, cursor_block,
                                     cursor_log, cursor_event_id, cursor_block_hash, state,
                                     order_mark)
         SELECT c, w, r, t, b, l, e, h, st::json, m
         FROM UNNEST($1::int8[], $2::text[], $3::int8[], $4::timestamptz[], $5::int8[],
                     $6::int8[], $7::text[], $8::text[], $9::text[], $10::int8[])
              AS u(c, w, r, t, b, l, e, h, st, m)
         ON CONFLICT (chain_id, wallet) DO UPDATE SET
            rows_folded = excluded.rows_folded, cursor_time = excluded.cursor_time,
            cursor_block = excluded.cursor_block, cursor_log = excluded.cursor_log,
            cursor_event_id = excluded.cursor_event_id,
            cursor_block_hash = excluded.cursor_block_hash, state = excluded.state,
            order_mark = excluded.order_mark, updated_at = now()",
        &p.chain_id,
        &p.wallet,
        &p.rows_folded,
        &p.cursor_time,
        &p.cursor_block,
        &p.cursor_log,
        &p.cursor_event_id,
        &p.cursor_block_hash as &[Option<String>],
        &p.state,
        &p.order_mark as &[Option<i64>]
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Of the cursor events `(event id, block hash)`, those still in the log under that block hash
/// (a reorg removes or replaces them): the check a stored profile's `cursor_kept` makes, for
/// profiles not read from `credit_profile` (a batch's, still being written).
pub async fn cursors_kept(
    conn: &mut PgConnection,
    events: &[String],
    hashes: &[Option<String>],
) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar!(
        r#"SELECT c.event_id AS "event_id!"
           FROM UNNEST($1::text[], $2::text[]) AS k(event_id, block_hash)
           JOIN lending_event c ON c.event_id = k.event_id
                               AND c.block_hash IS NOT DISTINCT FROM k.block_hash"#,
        events,
        hashes as &[Option<String>]
    )
    .fetch_all(conn)
    .await
}

/// Deletes the profiles of the wallets (their next rescoring reads their whole history).
pub async fn forget(
    tx: &mut Transaction<'_, Postgres>,
    chains: &[i64],
    wallets: &[String],
) -> sqlx::Result<()> {
    sqlx::query!(
        "DELETE FROM credit_profile p USING UNNEST($1::int8[], $2::text[]) AS w(chain_id, wallet)
         WHERE p.chain_id = w.chain_id AND p.wallet = w.wallet",
        chains,
        wallets
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}
