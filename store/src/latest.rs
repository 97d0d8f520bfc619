//! The API's hottest reads kept in Redis: a wallet's latest credit score and its lending summary,
//! and a pool's state, each a versioned entry `<prefix>latest:<kind>:<chain>:<address>` →
//! {`v`, `row`}.
//!
//! The version grows in commit order for its entity: a score's is its id, or the number of the
//! newest retraction of the wallet's scores (both from `credit_score`'s sequence, drawn under the
//! feed lock, so in commit order); a summary's is `wallet_lending_summary.version` (one projector
//! member owns a wallet); a pool's is `pool_summary.version` (one member owns a pool). A pool seen
//! only through `Sync`s (no summary row yet) reads as version 0, which is never stored: its
//! first swap writes a version above any. Values and versions are read from Postgres in one statement, by the
//! writer after its commit (scorer, projector) and by the API on a miss, and stored with one
//! atomic compare-and-set that keeps the newer ([`put`]): writers finishing out of order, a
//! replica, or an API fill that read before a commit can never put an older value over a newer
//! one. Entries expire after [`TTL`], which bounds how long a failed write can leave one stale
//! (the next read fills it again from Postgres). Postgres stays the truth; Redis only answers
//! faster when it has the entry.

use redis::aio::ConnectionManager;
use sqlx::PgPool;

/// How long an entry lives without being rewritten.
pub const TTL: std::time::Duration = std::time::Duration::from_secs(600);

/// What an entry holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The latest `credit_score` row as JSON (the columns the API serves), `""` for none.
    Score,
    /// The `wallet_lending_summary` rows as a JSON array, `""` for a wallet without any.
    Wallet,
    /// The pool's `pool_summary` row as JSON (the columns the API serves), `""` for a pool
    /// chainfold has not seen.
    Pool,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Score => "score",
            Kind::Wallet => "wallet",
            Kind::Pool => "pool",
        }
    }
}

/// The key of an entry.
pub fn key(prefix: &str, kind: Kind, chain_id: i64, wallet: &str) -> String {
    format!("{prefix}latest:{}:{chain_id}:{wallet}", kind.name())
}

/// One entity as Postgres holds it now: its version and its value (`None`: nothing stored).
/// `wallet` is the entity's address (a pool's for [`Kind::Pool`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub chain_id: i64,
    pub wallet: String,
    pub version: i64,
    pub row: Option<String>,
}

/// The columns of a score the API serves (its `ScoreRow`).
pub const SCORE_COLUMNS: &str = "id, chain_id, wallet, health_factor, score, band, probability_of_liquidation, reasons, model_version, model_sha256, computed_at, event_id, kafka_topic, kafka_partition, kafka_offset, block_number";

/// The entries of `wallets` (chain, address) as Postgres holds them now, one statement. A writer
/// (`writer`: it has just committed a change) gives a wallet summary left without rows a fresh
/// version from the sequence, so its empty entry replaces the stale one; a reader leaves it at 0.
pub async fn read_postgres(
    pool: &PgPool,
    kind: Kind,
    wallets: &[(i64, String)],
    writer: bool,
) -> sqlx::Result<Vec<Entry>> {
    let (chains, addrs): (Vec<i64>, Vec<String>) = wallets.iter().cloned().unzip();
    macro_rules! entries {
        ($query:expr) => {
            $query
                .fetch_all(pool)
                .await?
                .into_iter()
                .map(|r| Entry {
                    chain_id: r.c,
                    wallet: r.w,
                    version: r.version,
                    row: r.row,
                })
                .collect()
        };
    }
    Ok(match kind {
        // `greatest` skips nulls: a wallet without scores or retractions has version 0. The
        // score's columns are SCORE_COLUMNS (`score_entries_hold_the_score_columns` checks).
        // `row_to_json`, not `to_jsonb`: the stored `json` reasons go in as their text, not
        // parsed into `jsonb` and printed again (~7 of ~27 ms for 1,000 wallets).
        Kind::Score => entries!(sqlx::query!(
            r#"SELECT k.c AS "c!", k.w AS "w!", greatest(s.id, r.seq, 0) AS "version!",
                      row_to_json(s)::text AS "row?"
               FROM UNNEST($1::int8[], $2::text[]) AS k(c, w)
               LEFT JOIN LATERAL (SELECT id, chain_id, wallet, health_factor, score, band,
                                         probability_of_liquidation, reasons, model_version,
                                         model_sha256, computed_at, event_id, kafka_topic,
                                         kafka_partition, kafka_offset, block_number
                                  FROM credit_score
                                  WHERE chain_id = k.c AND wallet = k.w
                                  ORDER BY id DESC LIMIT 1) s ON true
               LEFT JOIN LATERAL (SELECT max(seq) AS seq FROM feed_retraction
                                  WHERE feed = 'credit_score' AND chain_id = k.c
                                    AND row->>'wallet' = k.w) r ON true"#,
            &chains,
            &addrs
        )),
        Kind::Wallet => entries!(sqlx::query!(
            r#"SELECT k.c AS "c!", k.w AS "w!",
                      CASE WHEN a.version IS NOT NULL THEN a.version
                           WHEN $3 THEN nextval('wallet_lending_summary_version')
                           ELSE 0 END AS "version!",
                      a.rows::text AS "row?"
               FROM UNNEST($1::int8[], $2::text[]) AS k(c, w)
               CROSS JOIN LATERAL (
                   SELECT max(s.version) AS version,
                          jsonb_agg(jsonb_build_object(
                              'action', s.action, 'event_count', s.event_count,
                              'priced_count', s.priced_count, 'amount_usd', s.amount_usd::text,
                              'first_at', s.first_at, 'last_at', s.last_at)
                            ORDER BY array_position(
                              ARRAY['deposit','borrow','repay','redeem','liquidation'],
                              s.action)) AS rows
                   FROM wallet_lending_summary s WHERE s.chain_id = k.c AND s.wallet = k.w) a"#,
            &chains,
            &addrs,
            writer
        )),
        // A pool with a summary row, else one seen only through `Sync`s (zero swaps, version 0),
        // else none; a writer gives a pool left without a summary (a retraction) a fresh version.
        Kind::Pool => entries!(sqlx::query!(
            r#"SELECT k.c AS "c!", k.w AS "w!",
                      CASE WHEN p.version IS NOT NULL THEN p.version
                           WHEN $3 THEN nextval('pool_summary_version')
                           ELSE 0 END AS "version!",
                      COALESCE(p.row, y.row)::text AS "row?"
               FROM UNNEST($1::int8[], $2::text[]) AS k(c, w)
               LEFT JOIN LATERAL (
                   SELECT s.version, jsonb_build_object(
                              'chain_id', s.chain_id, 'pool', s.pool, 'protocol', s.protocol,
                              'swap_count', s.swap_count, 'reverted_count', s.reverted_count,
                              'first_block', s.first_block, 'last_block', s.last_block) AS row
                   FROM pool_summary s WHERE s.chain_id = k.c AND s.pool = k.w) p ON true
               LEFT JOIN LATERAL (
                   SELECT jsonb_build_object(
                              'chain_id', y.chain_id, 'pool', y.pool, 'protocol', y.protocol,
                              'swap_count', 0, 'reverted_count', 0,
                              'first_block', NULL, 'last_block', NULL) AS row
                   FROM pool_sync y WHERE p.version IS NULL AND y.chain_id = k.c AND y.pool = k.w
                   LIMIT 1) y ON true"#,
            &chains,
            &addrs,
            writer
        )),
    })
}

/// Writes `entry` unless Redis holds one as new or newer, and (re)starts its expiry; one atomic
/// step.
const PUT: &str = r"
local v = redis.call('HGET', KEYS[1], 'v')
if v and tonumber(v) >= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'row', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
";

/// Stores the entries that are newer than what Redis holds, in one pipeline; returns how many
/// were written (the rest were older or as old). Version 0 (nothing versioned in Postgres yet)
/// is never stored.
pub async fn put(
    redis: &mut ConnectionManager,
    prefix: &str,
    kind: Kind,
    entries: &[Entry],
) -> redis::RedisResult<u64> {
    let entries: Vec<&Entry> = entries.iter().filter(|e| e.version > 0).collect();
    if entries.is_empty() {
        return Ok(0);
    }
    let mut pipe = redis::pipe();
    for e in entries {
        pipe.cmd("EVAL")
            .arg(PUT)
            .arg(1)
            .arg(key(prefix, kind, e.chain_id, &e.wallet))
            .arg(e.version)
            .arg(e.row.as_deref().unwrap_or(""))
            .arg(TTL.as_secs());
    }
    let written: Vec<i64> = pipe.query_async(redis).await?;
    Ok(written.into_iter().filter(|w| *w == 1).count() as u64)
}

/// Reads entries in one round trip, aligned with `wallets`: `None` for a miss, `Some(None)` for
/// an entity known to have nothing, `Some(Some(json))` for a value.
pub async fn get(
    redis: &mut ConnectionManager,
    prefix: &str,
    kind: Kind,
    wallets: &[(i64, String)],
) -> redis::RedisResult<Vec<Option<Option<String>>>> {
    if wallets.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    for (chain, wallet) in wallets {
        pipe.cmd("HGET")
            .arg(key(prefix, kind, *chain, wallet))
            .arg("row");
    }
    let rows: Vec<Option<String>> = pipe.query_async(redis).await?;
    Ok(rows
        .into_iter()
        .map(|r| r.map(|json| (!json.is_empty()).then_some(json)))
        .collect())
}

/// Reads the entities' current state from Postgres and stores it where newer: what a writer
/// does after its commit. Returns how many entries were written.
pub async fn refresh(
    redis: &mut ConnectionManager,
    pool: &PgPool,
    prefix: &str,
    kind: Kind,
    wallets: &[(i64, String)],
) -> anyhow::Result<u64> {
    if wallets.is_empty() {
        return Ok(0);
    }
    let entries = read_postgres(pool, kind, wallets, true).await?;
    Ok(put(redis, prefix, kind, &entries).await?)
}
