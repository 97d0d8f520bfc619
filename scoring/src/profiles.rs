//! Credit profiles in Postgres (`credit_profile`): each wallet's [`CreditProfile`] as of the last
//! `lending_event` row folded, read for a whole batch of wallets with their history after that
//! row in two queries, and written back in the transaction of the scores.
//!
//! A stored profile is used only when it is still a prefix of the wallet's history: its cursor
//! row must still be stored under the same block hash (a reorg that orphaned any folded row
//! orphaned that one, the highest folded), and the rows it has taken in plus the rows after its
//! cursor must equal the wallet's count in `wallet_lending_summary` (the projector keeps it
//! exact, retractions included; a row that arrived behind the cursor fails it). Otherwise, or
//! without a stored profile, the wallet's whole history is read and folded from the start: the
//! result is the same, only slower.

use std::collections::{BTreeMap, HashMap, HashSet};

use chainfold_domain::credit::{HistoryEvent, PositionFlow};
use chainfold_domain::profile::{CreditProfile, HistoryKey};
use chainfold_domain::LendingAction;
use chrono::{DateTime, Utc};
use sqlx::PgPool;

/// (chain, wallet).
pub type WalletKey = (u64, String);

/// One row of a wallet's lending history, in the order the features fold it.
#[derive(Debug, Clone)]
pub struct HistoryRow {
    pub key: HistoryKey,
    pub block: Option<i64>,
    pub block_hash: Option<String>,
    /// `None` for a row without a known action: counted, not folded.
    pub entry: Option<(HistoryEvent, PositionFlow)>,
}

/// A wallet's stored profile (or an empty one) and its history after the profile's cursor.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    pub profile: CreditProfile,
    pub rows: Vec<HistoryRow>,
}

/// Statistics of one load, for the scorer's outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadStats {
    /// Wallets resumed from a stored profile.
    pub resumed: u64,
    /// Wallets whose whole history was read (no profile, a stale one, or reset by a reorg).
    pub full_reads: u64,
    /// History rows read.
    pub rows_read: u64,
}

type ProfileRow = (
    i64,
    String,
    Option<i64>,
    Option<DateTime<Utc>>,
    Option<i64>,
    Option<i64>,
    Option<String>,
    Option<serde_json::Value>,
    i64,
    i64,
    bool,
    i64,
);

/// Loads the profiles of `wallets` and the history after each one's cursor up to its `until`
/// (the batch's latest trigger time for the wallet: rows after it are seen by no trigger of the
/// batch, and during a backfill the projector may hold many). Rows after `until` are counted for
/// the check, not read. Wallets in `reset` (a reorg retracted one of their events in this batch)
/// start from an empty profile.
pub async fn load(
    pool: &PgPool,
    wallets: &[WalletKey],
    until: &[DateTime<Utc>],
    reset: &HashSet<WalletKey>,
) -> anyhow::Result<(HashMap<WalletKey, Loaded>, LoadStats)> {
    let chains: Vec<i64> = wallets.iter().map(|w| w.0 as i64).collect();
    let addrs: Vec<&str> = wallets.iter().map(|w| w.1.as_str()).collect();
    // One snapshot for the count and the rows: a projector committing between them would make
    // a good profile look stale.
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    // Rows without a block time are never folded (they have no place in time), and rows after
    // `until` are not read: both are counted apart for the check.
    let stored: Vec<ProfileRow> = sqlx::query_as(
        "SELECT w.chain_id, w.wallet, p.rows_folded, p.cursor_time, p.cursor_block, p.cursor_log,
                p.cursor_event_id, p.state,
                (SELECT coalesce(sum(s.event_count), 0) FROM wallet_lending_summary s
                 WHERE s.chain_id = w.chain_id AND s.wallet = w.wallet)::int8,
                (SELECT count(*) FROM lending_event n
                 WHERE n.chain_id = w.chain_id AND n.wallet = w.wallet AND n.block_time IS NULL),
                EXISTS (SELECT 1 FROM lending_event c WHERE c.event_id = p.cursor_event_id
                        AND c.block_hash IS NOT DISTINCT FROM p.cursor_block_hash),
                (SELECT count(*) FROM lending_event n
                 WHERE n.chain_id = w.chain_id AND n.wallet = w.wallet AND n.block_time > w.until)
         FROM UNNEST($1::int8[], $2::text[], $3::timestamptz[]) AS w(chain_id, wallet, until)
         LEFT JOIN credit_profile p ON p.chain_id = w.chain_id AND p.wallet = w.wallet",
    )
    .bind(&chains)
    .bind(&addrs)
    .bind(until)
    .fetch_all(&mut *tx)
    .await?;
    let mut profiles: HashMap<WalletKey, (CreditProfile, i64)> = HashMap::new();
    for (chain, wallet, rows, t, b, l, id, state, total, untimed, cursor_kept, beyond) in stored {
        let key = (chain as u64, wallet);
        let profile = match (rows, t, b, l, id, state) {
            (Some(rows), Some(at), Some(block), Some(log_index), Some(event_id), Some(state))
                if cursor_kept && !reset.contains(&key) =>
            {
                match serde_json::from_value::<CreditProfile>(state) {
                    Ok(mut p) => {
                        p.rows = rows as u64;
                        p.cursor = Some(HistoryKey {
                            at,
                            block,
                            log_index,
                            event_id,
                        });
                        p
                    }
                    // A profile written by another version: read the history instead.
                    Err(_) => CreditProfile::default(),
                }
            }
            _ => CreditProfile::default(),
        };
        profiles.insert(key, (profile, total - untimed - beyond));
    }
    let mut stats = LoadStats::default();
    let mut out: HashMap<WalletKey, Loaded> = HashMap::new();
    let after = |profiles: &HashMap<WalletKey, (CreditProfile, i64)>, keys: &[WalletKey]| {
        keys.iter()
            .map(|k| profiles.get(k).and_then(|p| p.0.cursor.clone()))
            .collect::<Vec<_>>()
    };
    let cursors = after(&profiles, wallets);
    let mut rows = rows_after(&mut tx, wallets, &cursors, until).await?;
    let mut stale = Vec::new();
    for (i, key) in wallets.iter().enumerate() {
        let (profile, timed) = profiles.remove(key).unwrap_or_default();
        let tail = rows.remove(&i).unwrap_or_default();
        stats.rows_read += tail.len() as u64;
        let resumed = profile.cursor.is_some();
        if resumed && profile.rows + tail.len() as u64 != timed.max(0) as u64 {
            stale.push(key.clone());
            continue;
        }
        if resumed {
            stats.resumed += 1;
        } else {
            stats.full_reads += 1;
        }
        out.insert(
            key.clone(),
            Loaded {
                profile,
                rows: tail,
            },
        );
    }
    if !stale.is_empty() {
        let none = vec![None; stale.len()];
        let stale_until: Vec<DateTime<Utc>> = stale
            .iter()
            .map(|k| until[wallets.iter().position(|w| w == k).unwrap_or_default()])
            .collect();
        let mut again = rows_after(&mut tx, &stale, &none, &stale_until).await?;
        for (i, key) in stale.into_iter().enumerate() {
            let tail = again.remove(&i).unwrap_or_default();
            stats.rows_read += tail.len() as u64;
            stats.full_reads += 1;
            out.insert(
                key,
                Loaded {
                    profile: CreditProfile::default(),
                    rows: tail,
                },
            );
        }
    }
    tx.commit().await?;
    Ok((out, stats))
}

type EventRow = (
    i64,
    String,
    DateTime<Utc>,
    Option<f64>,
    String,
    String,
    Option<f64>,
    Option<String>,
    Option<String>,
    Option<f64>,
    Option<i64>,
    Option<i32>,
    String,
    Option<String>,
);

/// The timed history rows of each wallet after its cursor (all of them without one) up to and
/// including its `until`, in the fold's order, keyed by the wallet's position in `wallets`. One
/// query for the whole batch.
pub async fn rows_after(
    conn: &mut sqlx::PgConnection,
    wallets: &[WalletKey],
    cursors: &[Option<HistoryKey>],
    until: &[DateTime<Utc>],
) -> anyhow::Result<BTreeMap<usize, Vec<HistoryRow>>> {
    let chains: Vec<i64> = wallets.iter().map(|w| w.0 as i64).collect();
    let addrs: Vec<&str> = wallets.iter().map(|w| w.1.as_str()).collect();
    let times: Vec<Option<DateTime<Utc>>> =
        cursors.iter().map(|c| c.as_ref().map(|c| c.at)).collect();
    let blocks: Vec<Option<i64>> = cursors
        .iter()
        .map(|c| c.as_ref().map(|c| c.block))
        .collect();
    let logs: Vec<Option<i64>> = cursors
        .iter()
        .map(|c| c.as_ref().map(|c| c.log_index))
        .collect();
    let ids: Vec<Option<&str>> = cursors
        .iter()
        .map(|c| c.as_ref().map(|c| c.event_id.as_str()))
        .collect();
    let rows: Vec<EventRow> = sqlx::query_as(
        "SELECT (w.i - 1)::int8, e.action, e.block_time, e.amount_usd::float8, e.reserve, e.symbol,
                (e.amount / power(10::numeric, e.decimals))::float8,
                e.collateral_reserve, e.collateral_symbol,
                (e.collateral_amount / power(10::numeric, e.collateral_decimals))::float8,
                e.block_number, e.log_index, e.event_id, e.block_hash
         FROM UNNEST($1::int8[], $2::text[], $3::timestamptz[], $4::int8[], $5::int8[], $6::text[],
                     $7::timestamptz[])
              WITH ORDINALITY AS w(chain_id, wallet, t, b, l, id, until, i)
         JOIN lending_event e ON e.chain_id = w.chain_id AND e.wallet = w.wallet
          AND e.block_time <= w.until
          AND (w.t IS NULL OR e.block_time > w.t OR (e.block_time = w.t
               AND (coalesce(e.block_number, 9223372036854775807),
                    coalesce(e.log_index::int8, 9223372036854775807),
                    e.event_id) > (w.b, w.l, w.id COLLATE \"C\")))
         -- The fold's order (the features sum floats; a sum's last digit depends on it).
         ORDER BY w.i, e.block_time, e.block_number, e.log_index, e.event_id",
    )
    .bind(&chains)
    .bind(&addrs)
    .bind(&times)
    .bind(&blocks)
    .bind(&logs)
    .bind(&ids)
    .bind(until)
    .fetch_all(&mut *conn)
    .await?;
    let mut out: BTreeMap<usize, Vec<HistoryRow>> = BTreeMap::new();
    for (
        i,
        action,
        at,
        usd,
        reserve,
        symbol,
        amount,
        c_reserve,
        c_symbol,
        c_amount,
        block,
        log,
        id,
        hash,
    ) in rows
    {
        let entry = LendingAction::parse(&action).map(|action| {
            (
                HistoryEvent { action, at, usd },
                PositionFlow {
                    action,
                    at,
                    reserve,
                    symbol,
                    amount: amount.unwrap_or(0.0),
                    seized: match (c_reserve, c_symbol, c_amount) {
                        (Some(r), Some(s), Some(a)) => Some((r, s, a)),
                        _ => None,
                    },
                },
            )
        });
        out.entry(i as usize).or_default().push(HistoryRow {
            key: HistoryKey::new(at, block, log.map(i64::from), id),
            block,
            block_hash: hash,
            entry,
        });
    }
    Ok(out)
}

/// Writes the profiles (one statement), replacing what was stored.
pub async fn store(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    profiles: &[(WalletKey, CreditProfile)],
) -> anyhow::Result<()> {
    let mut chain = Vec::with_capacity(profiles.len());
    let mut wallet = Vec::with_capacity(profiles.len());
    let mut rows = Vec::with_capacity(profiles.len());
    let (mut t, mut b, mut l, mut id, mut hash, mut state) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for ((c, w), p) in profiles {
        let Some(cursor) = &p.cursor else { continue };
        chain.push(*c as i64);
        wallet.push(w.as_str());
        rows.push(p.rows as i64);
        t.push(cursor.at);
        b.push(cursor.block);
        l.push(cursor.log_index);
        id.push(cursor.event_id.as_str());
        hash.push(p.cursor_block_hash.as_deref());
        state.push(serde_json::to_value(p)?);
    }
    if chain.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO credit_profile (chain_id, wallet, rows_folded, cursor_time, cursor_block,
                                     cursor_log, cursor_event_id, cursor_block_hash, state)
         SELECT * FROM UNNEST($1::int8[], $2::text[], $3::int8[], $4::timestamptz[], $5::int8[],
                              $6::int8[], $7::text[], $8::text[], $9::jsonb[])
         ON CONFLICT (chain_id, wallet) DO UPDATE SET
            rows_folded = excluded.rows_folded, cursor_time = excluded.cursor_time,
            cursor_block = excluded.cursor_block, cursor_log = excluded.cursor_log,
            cursor_event_id = excluded.cursor_event_id,
            cursor_block_hash = excluded.cursor_block_hash, state = excluded.state,
            updated_at = now()",
    )
    .bind(&chain)
    .bind(&wallet)
    .bind(&rows)
    .bind(&t)
    .bind(&b)
    .bind(&l)
    .bind(&id)
    .bind(&hash)
    .bind(&state)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Forgets the profiles of wallets a reorg touched (their next rescoring reads their history).
pub async fn forget(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    wallets: &HashSet<WalletKey>,
) -> anyhow::Result<()> {
    if wallets.is_empty() {
        return Ok(());
    }
    let chains: Vec<i64> = wallets.iter().map(|w| w.0 as i64).collect();
    let addrs: Vec<&str> = wallets.iter().map(|w| w.1.as_str()).collect();
    sqlx::query(
        "DELETE FROM credit_profile p USING UNNEST($1::int8[], $2::text[]) AS w(chain_id, wallet)
         WHERE p.chain_id = w.chain_id AND p.wallet = w.wallet",
    )
    .bind(&chains)
    .bind(&addrs)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
