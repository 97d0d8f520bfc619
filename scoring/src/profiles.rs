//! Credit profiles in Postgres (`credit_profile`): each wallet's [`CreditProfile`] as of the last
//! `lending_event` row folded, read for a whole batch of wallets with their history after that
//! row in two queries, and written back in the transaction of the scores.
//!
//! A stored profile is used only when it is still a prefix of the wallet's history: its cursor
//! row must still be stored under the same block hash (a reorg that orphaned any folded row
//! orphaned that one, the highest folded), and the wallet's mark in `lending_order` must still be
//! the one its rows were read under. Triggers on `lending_event` draw a new mark whenever a row
//! arrives at or before the wallet's last key, or a row is deleted or changed, on every path that
//! writes the table; rows appended after the last key leave it. Both checks are one key lookup
//! per wallet, whatever its history or the rows projected ahead of the batch. Otherwise, or
//! without a stored profile, the wallet's whole history is read and folded from the start: the
//! result is the same, only slower.

use std::collections::{BTreeMap, HashMap, HashSet};

use chainfold_domain::credit::{HistoryEvent, PositionFlow};
use chainfold_domain::profile::{CreditProfile, HistoryKey};
use chainfold_domain::LendingAction;
use chainfold_store::profiles;
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

/// Loads the profiles of `wallets` and the history after each one's cursor up to its `until`
/// (the batch's latest trigger time for the wallet: rows after it are seen by no trigger of the
/// batch, and during a backfill the projector may hold many; they are not read). Wallets in
/// `reset` (a reorg retracted one of their events in this batch) start from an empty profile. A
/// wallet in `fresher` (the profiles of a batch whose write is still in flight: later than the
/// stored ones) starts from that profile instead of the stored one, under the same checks (its
/// cursor event still in the log under its block hash, its mark the wallet's mark now);
/// otherwise from the stored one. Each loaded profile carries the mark its rows were read under.
pub async fn load(
    pool: &PgPool,
    wallets: &[WalletKey],
    until: &[DateTime<Utc>],
    reset: &HashSet<WalletKey>,
    fresher: &HashMap<WalletKey, CreditProfile>,
) -> anyhow::Result<(HashMap<WalletKey, Loaded>, LoadStats)> {
    let chains: Vec<i64> = wallets.iter().map(|w| w.0 as i64).collect();
    let addrs: Vec<String> = wallets.iter().map(|w| w.1.clone()).collect();
    // One snapshot for the marks and the rows: a projector committing between them could append
    // rows behind a mark the profile would then be stored under.
    let mut tx = pool.begin().await?;
    profiles::snapshot(&mut tx).await?;
    let stored = profiles::stored(&mut tx, &chains, &addrs).await?;
    // The fresher profiles of this batch's wallets whose cursor is still in the log.
    let candidates: Vec<(&WalletKey, &CreditProfile)> = wallets
        .iter()
        .filter(|k| !reset.contains(*k))
        .filter_map(|k| Some((k, fresher.get(k)?)))
        .filter(|(_, p)| p.cursor.is_some())
        .collect();
    let kept: HashSet<String> = if candidates.is_empty() {
        HashSet::new()
    } else {
        let (events, hashes): (Vec<String>, Vec<Option<String>>) = candidates
            .iter()
            .filter_map(|(_, p)| {
                Some((
                    p.cursor.as_ref()?.event_id.clone(),
                    p.cursor_block_hash.clone(),
                ))
            })
            .unzip();
        profiles::cursors_kept(&mut tx, &events, &hashes)
            .await?
            .into_iter()
            .collect()
    };
    let mut fresh: HashMap<&WalletKey, &CreditProfile> = candidates
        .into_iter()
        .filter(|(_, p)| {
            p.cursor
                .as_ref()
                .is_some_and(|c| kept.contains(&c.event_id))
        })
        .collect();
    let mut stats = LoadStats::default();
    let mut profiles: HashMap<WalletKey, CreditProfile> = HashMap::new();
    for p in stored {
        let key = (p.chain_id as u64, p.wallet);
        // Resumed only under the mark its rows were read under: otherwise a row arrived at or
        // before a key it folded, or one was deleted or changed, since.
        let unchanged = |read_under: Option<i64>| p.mark.is_some() && read_under == p.mark;
        let mut profile = match fresh.remove(&key) {
            // A fresher profile that is stale makes the stored one stale too: it was read
            // earlier, and a mark is never drawn twice.
            Some(fresher) if unchanged(fresher.order_mark) => fresher.clone(),
            Some(_) => CreditProfile::default(),
            None => match (
                p.rows_folded,
                p.cursor_time,
                p.cursor_block,
                p.cursor_log,
                p.cursor_event_id,
                p.state,
            ) {
                (
                    Some(rows),
                    Some(at),
                    Some(block),
                    Some(log_index),
                    Some(event_id),
                    Some(state),
                ) if p.cursor_kept && !reset.contains(&key) && unchanged(p.stored_mark) => {
                    match serde_json::from_str::<CreditProfile>(&state) {
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
            },
        };
        // The rows read below are read under this mark: the profile stored after them names it.
        profile.order_mark = p.mark;
        profiles.insert(key, profile);
    }
    let cursors: Vec<Option<HistoryKey>> = wallets
        .iter()
        .map(|k| profiles.get(k).and_then(|p| p.cursor.clone()))
        .collect();
    let mut rows = rows_after(&mut tx, wallets, &cursors, until).await?;
    let mut out: HashMap<WalletKey, Loaded> = HashMap::with_capacity(wallets.len());
    for (i, key) in wallets.iter().enumerate() {
        let profile = profiles.remove(key).unwrap_or_default();
        let tail = rows.remove(&i).unwrap_or_default();
        stats.rows_read += tail.len() as u64;
        if profile.cursor.is_some() {
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
    tx.commit().await?;
    Ok((out, stats))
}

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
    let addrs: Vec<String> = wallets.iter().map(|w| w.1.clone()).collect();
    let cursors = profiles::Cursors {
        time: cursors.iter().map(|c| c.as_ref().map(|c| c.at)).collect(),
        block: cursors
            .iter()
            .map(|c| c.as_ref().map(|c| c.block))
            .collect(),
        log: cursors
            .iter()
            .map(|c| c.as_ref().map(|c| c.log_index))
            .collect(),
        event_id: cursors
            .iter()
            .map(|c| c.as_ref().map(|c| c.event_id.clone()))
            .collect(),
    };
    let rows = profiles::history_after(conn, &chains, &addrs, &cursors, until).await?;
    let mut out: BTreeMap<usize, Vec<HistoryRow>> = BTreeMap::new();
    for profiles::HistoryEventRow {
        wallet: i,
        action,
        block_time: at,
        amount_usd: usd,
        reserve,
        symbol,
        amount,
        collateral_reserve: c_reserve,
        collateral_symbol: c_symbol,
        collateral_amount: c_amount,
        block_number: block,
        log_index: log,
        event_id: id,
        block_hash: hash,
    } in rows
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
    list: &[(WalletKey, CreditProfile)],
) -> anyhow::Result<()> {
    let mut new = profiles::NewProfiles::default();
    for ((c, w), p) in list {
        let Some(cursor) = &p.cursor else { continue };
        new.chain_id.push(*c as i64);
        new.wallet.push(w.clone());
        new.rows_folded.push(p.rows as i64);
        new.cursor_time.push(cursor.at);
        new.cursor_block.push(cursor.block);
        new.cursor_log.push(cursor.log_index);
        new.cursor_event_id.push(cursor.event_id.clone());
        new.cursor_block_hash.push(p.cursor_block_hash.clone());
        new.state.push(serde_json::to_string(p)?);
        new.order_mark.push(p.order_mark);
    }
    if new.chain_id.is_empty() {
        return Ok(());
    }
    profiles::upsert(tx, &new).await?;
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
    let addrs: Vec<String> = wallets.iter().map(|w| w.1.clone()).collect();
    profiles::forget(tx, &chains, &addrs).await?;
    Ok(())
}
