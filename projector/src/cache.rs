//! Redis caches of the summaries, written after the Postgres commit. A rebuildable cache: if a
//! write here fails, the rows are still right in Postgres and the next update of the same
//! entity rewrites its hash.

use chainfold_platform::redis_cache::{pool_key, wallet_key};
use redis::aio::ConnectionManager;

use chainfold_store::projection::BatchWrite;

/// Writes the summaries as they now stand, in one pipeline:
/// `<prefix>wallet:<chain>:<address>` → `{action}_count`, `{action}_usd`;
/// `<prefix>pool:<chain>:<address>` → `protocol`, `swap_count`, `reverted_count`, `first_block`,
/// `last_block`.
/// Summaries a retraction touched are deleted first, then rewritten from what Postgres now holds.
pub async fn write_summaries(
    redis: &mut ConnectionManager,
    prefix: &str,
    batch: &BatchWrite,
) -> redis::RedisResult<()> {
    let (wallets, pools) = (&batch.wallets, &batch.pools);
    if wallets.is_empty()
        && pools.is_empty()
        && batch.reset_wallets.is_empty()
        && batch.reset_pools.is_empty()
    {
        return Ok(());
    }
    let mut pipe = redis::pipe();
    for (chain, wallet) in &batch.reset_wallets {
        pipe.del(wallet_key(prefix, *chain as u64, wallet)).ignore();
    }
    for (chain, pool) in &batch.reset_pools {
        pipe.del(pool_key(prefix, *chain as u64, pool)).ignore();
    }
    for w in wallets.iter() {
        pipe.hset_multiple(
            wallet_key(prefix, w.chain_id as u64, &w.wallet),
            &[
                (format!("{}_count", w.action), w.event_count.to_string()),
                (format!("{}_usd", w.action), w.amount_usd.to_plain_string()),
            ],
        )
        .ignore();
    }
    for p in pools.iter() {
        pipe.hset_multiple(
            pool_key(prefix, p.chain_id as u64, &p.pool),
            &[
                ("protocol", p.protocol.clone()),
                ("swap_count", p.swap_count.to_string()),
                ("reverted_count", p.reverted_count.to_string()),
                (
                    "first_block",
                    p.first_block.map(|b| b.to_string()).unwrap_or_default(),
                ),
                (
                    "last_block",
                    p.last_block.map(|b| b.to_string()).unwrap_or_default(),
                ),
            ],
        )
        .ignore();
    }
    pipe.query_async(redis).await
}

/// Deletes every key under `prefix` (for `chainfold rebuild`).
pub async fn clear(redis: &mut ConnectionManager, prefix: &str) -> redis::RedisResult<u64> {
    let pattern = format!("{prefix}*");
    let mut cursor: u64 = 0;
    let mut deleted = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(redis)
            .await?;
        if !keys.is_empty() {
            deleted += keys.len() as u64;
            redis::cmd("DEL")
                .arg(&keys)
                .query_async::<()>(redis)
                .await?;
        }
        if next == 0 {
            return Ok(deleted);
        }
        cursor = next;
    }
}

/// The summaries of the wallets a batch touched, as the API serves them
/// (`<prefix>latest:wallet:…`, see [`chainfold_store::latest`]): read after the commit with
/// their version and stored where newer than what Redis holds. Returns how many were written.
pub async fn write_latest_wallets(
    redis: &mut ConnectionManager,
    pool: &sqlx::PgPool,
    prefix: &str,
    batch: &BatchWrite,
) -> anyhow::Result<u64> {
    let mut wallets: std::collections::BTreeSet<(i64, String)> = batch
        .wallets
        .iter()
        .map(|w| (w.chain_id, w.wallet.clone()))
        .collect();
    wallets.extend(batch.reset_wallets.iter().cloned());
    let wallets: Vec<(i64, String)> = wallets.into_iter().collect();
    chainfold_store::latest::refresh(
        redis,
        pool,
        prefix,
        chainfold_store::latest::Kind::Wallet,
        &wallets,
    )
    .await
}

/// The state of the pools a batch touched (swaps folded, or a retraction recomputed), as the API
/// serves it (`<prefix>latest:pool:…`, see [`chainfold_store::latest`]): read after the
/// commit with its version and stored where newer than what Redis holds. Returns how many were
/// written.
pub async fn write_latest_pools(
    redis: &mut ConnectionManager,
    pool: &sqlx::PgPool,
    prefix: &str,
    batch: &BatchWrite,
) -> anyhow::Result<u64> {
    let mut pools: std::collections::BTreeSet<(i64, String)> = batch
        .pools
        .iter()
        .map(|p| (p.chain_id, p.pool.clone()))
        .collect();
    pools.extend(batch.reset_pools.iter().cloned());
    let pools: Vec<(i64, String)> = pools.into_iter().collect();
    chainfold_store::latest::refresh(
        redis,
        pool,
        prefix,
        chainfold_store::latest::Kind::Pool,
        &pools,
    )
    .await
}
