//! The follower's durable state in Postgres (see `migrations/*_ingest_state.sql`).

use std::collections::BTreeMap;

use alloy_primitives::B256;
use chainfold_domain::{Envelope, TopicKind};
use sqlx::PgPool;

/// A block processed near the head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeenBlock {
    pub hash: B256,
    pub parent: B256,
}

fn hex(value: &B256) -> String {
    format!("{value:#x}")
}

fn parse(text: &str) -> anyhow::Result<B256> {
    text.parse()
        .map_err(|e| anyhow::anyhow!("stored hash {text} is invalid: {e}"))
}

fn kind_name(kind: TopicKind) -> &'static str {
    match kind {
        TopicKind::Lending => "lending",
        TopicKind::Amm => "amm",
        TopicKind::Oracle => "oracle",
        TopicKind::Transfers => "transfers",
    }
}

fn kind_of(name: &str) -> anyhow::Result<TopicKind> {
    Ok(match name {
        "lending" => TopicKind::Lending,
        "amm" => TopicKind::Amm,
        "oracle" => TopicKind::Oracle,
        "transfers" => TopicKind::Transfers,
        other => anyhow::bail!("unknown journal topic kind {other}"),
    })
}

/// The last checkpointed block of `chain_id`.
pub async fn load_checkpoint(pool: &PgPool, chain_id: u64) -> anyhow::Result<Option<u64>> {
    let row: Option<(i64,)> =
        sqlx::query_as("SELECT block_number FROM ingest_checkpoint WHERE chain_id = $1")
            .bind(chain_id as i64)
            .fetch_optional(pool)
            .await?;
    Ok(row.map(|r| r.0 as u64))
}

/// The stored window of recent blocks.
pub async fn load_window(pool: &PgPool, chain_id: u64) -> anyhow::Result<BTreeMap<u64, SeenBlock>> {
    let rows: Vec<(i64, String, String)> = sqlx::query_as(
        "SELECT number, hash, parent_hash FROM ingest_block WHERE chain_id = $1 ORDER BY number",
    )
    .bind(chain_id as i64)
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|(n, h, p)| {
            Ok((
                n as u64,
                SeenBlock {
                    hash: parse(&h)?,
                    parent: parse(&p)?,
                },
            ))
        })
        .collect()
}

/// Moves the checkpoint to `number`. With `block`, also remembers that block's hash and events
/// (the reorg window) and forgets what fell out of the last `keep` blocks. One transaction.
pub async fn advance(
    pool: &PgPool,
    chain_id: u64,
    number: u64,
    block: Option<(SeenBlock, &[Envelope])>,
    keep: u64,
) -> anyhow::Result<()> {
    match block {
        Some((seen, events)) => {
            advance_blocks(pool, chain_id, &[(number, seen, events)], keep).await
        }
        None => {
            let mut tx = pool.begin().await?;
            set_checkpoint(&mut tx, chain_id, number, None).await?;
            tx.commit().await?;
            Ok(())
        }
    }
}

/// [`advance`] over consecutive blocks at once (oldest first): each remembered with its
/// events, the checkpoint moved to the last, in one transaction (one commit for a catch-up of
/// many blocks instead of one per block).
pub async fn advance_blocks(
    pool: &PgPool,
    chain_id: u64,
    blocks: &[(u64, SeenBlock, &[Envelope])],
    keep: u64,
) -> anyhow::Result<()> {
    let Some(&(last, last_seen, _)) = blocks.last() else {
        return Ok(());
    };
    let mut tx = pool.begin().await?;
    let chain = chain_id as i64;
    for (number, seen, events) in blocks {
        sqlx::query(
            "INSERT INTO ingest_block (chain_id, number, hash, parent_hash) VALUES ($1, $2, $3, $4)
             ON CONFLICT (chain_id, number) DO UPDATE SET hash = EXCLUDED.hash, parent_hash = EXCLUDED.parent_hash",
        )
        .bind(chain)
        .bind(*number as i64)
        .bind(hex(&seen.hash))
        .bind(hex(&seen.parent))
        .execute(&mut *tx)
        .await?;
        if !events.is_empty() {
            let mut index = Vec::with_capacity(events.len());
            let mut kinds = Vec::with_capacity(events.len());
            let mut payloads = Vec::with_capacity(events.len());
            for env in *events {
                index.push(i64::from(env.log_index.unwrap_or_default()));
                kinds.push(kind_name(env.event.topic()));
                payloads.push(crate::publish::encode(env));
            }
            sqlx::query(
                "INSERT INTO ingest_journal (chain_id, block_number, log_index, topic_kind, payload)
                 SELECT $1, $2, * FROM UNNEST($3::int8[], $4::text[], $5::bytea[])
                 ON CONFLICT (chain_id, block_number, log_index) DO UPDATE
                 SET topic_kind = EXCLUDED.topic_kind, payload = EXCLUDED.payload",
            )
            .bind(chain)
            .bind(*number as i64)
            .bind(&index)
            .bind(&kinds)
            .bind(&payloads)
            .execute(&mut *tx)
            .await?;
        }
    }
    sqlx::query("DELETE FROM ingest_pending WHERE chain_id = $1 AND block_number <= $2")
        .bind(chain)
        .bind(last as i64)
        .execute(&mut *tx)
        .await?;
    let floor = last.saturating_sub(keep) as i64;
    for (table, column) in [
        ("ingest_block", "number"),
        ("ingest_journal", "block_number"),
    ] {
        sqlx::query(&format!(
            "DELETE FROM {table} WHERE chain_id = $1 AND {column} <= $2"
        ))
        .bind(chain)
        .bind(floor)
        .execute(&mut *tx)
        .await?;
    }
    set_checkpoint(&mut tx, chain_id, last, Some(last_seen)).await?;
    tx.commit().await?;
    Ok(())
}

async fn set_checkpoint(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    chain_id: u64,
    number: u64,
    seen: Option<SeenBlock>,
) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO ingest_checkpoint (chain_id, block_number, block_hash, updated_at)
         VALUES ($1, $2, $3, now())
         ON CONFLICT (chain_id) DO UPDATE SET block_number = EXCLUDED.block_number,
             block_hash = EXCLUDED.block_hash, updated_at = now()",
    )
    .bind(chain_id as i64)
    .bind(number as i64)
    .bind(seen.map(|b| hex(&b.hash)))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The journaled events of blocks above `ancestor`, newest block and log first (the order their
/// retractions are published in).
pub async fn orphaned_events(
    pool: &PgPool,
    chain_id: u64,
    ancestor: u64,
) -> anyhow::Result<Vec<(TopicKind, Envelope)>> {
    let rows: Vec<(String, Vec<u8>)> = sqlx::query_as(
        "SELECT topic_kind, payload FROM ingest_journal WHERE chain_id = $1 AND block_number > $2
         ORDER BY block_number DESC, log_index DESC",
    )
    .bind(chain_id as i64)
    .bind(ancestor as i64)
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|(kind, payload)| Ok((kind_of(&kind)?, serde_json::from_slice(&payload)?)))
        .collect()
}

/// Records `events` as about to be published (write-ahead): until the checkpoint covering their
/// block commits, a later pass retracts them first (see [`pending`]).
pub async fn pend(pool: &PgPool, chain_id: u64, events: &[&Envelope]) -> anyhow::Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let mut blocks = Vec::with_capacity(events.len());
    let mut index = Vec::with_capacity(events.len());
    let mut payloads = Vec::with_capacity(events.len());
    for env in events {
        blocks.push(env.block.map(|b| b.number as i64).unwrap_or_default());
        index.push(i64::from(env.log_index.unwrap_or_default()));
        payloads.push(crate::publish::encode(env));
    }
    sqlx::query(
        "INSERT INTO ingest_pending (chain_id, block_number, log_index, payload)
         SELECT $1, * FROM UNNEST($2::int8[], $3::int8[], $4::bytea[])
         ON CONFLICT (chain_id, block_number, log_index) DO UPDATE SET payload = EXCLUDED.payload",
    )
    .bind(chain_id as i64)
    .bind(&blocks)
    .bind(&index)
    .bind(&payloads)
    .execute(pool)
    .await?;
    Ok(())
}

/// Events published (or about to be) and never checkpointed, newest first.
pub async fn pending(pool: &PgPool, chain_id: u64) -> anyhow::Result<Vec<Envelope>> {
    let rows: Vec<(Vec<u8>,)> = sqlx::query_as(
        "SELECT payload FROM ingest_pending WHERE chain_id = $1
         ORDER BY block_number DESC, log_index DESC",
    )
    .bind(chain_id as i64)
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|(payload,)| Ok(serde_json::from_slice(&payload)?))
        .collect()
}

/// Forgets the pending events after their retractions were acknowledged.
pub async fn clear_pending(pool: &PgPool, chain_id: u64) -> anyhow::Result<()> {
    sqlx::query("DELETE FROM ingest_pending WHERE chain_id = $1")
        .bind(chain_id as i64)
        .execute(pool)
        .await?;
    Ok(())
}

/// Forgets the blocks above `ancestor` (after their retractions were acknowledged) and moves the
/// checkpoint back to it.
pub async fn rewind(pool: &PgPool, chain_id: u64, ancestor: u64, hash: B256) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    let chain = chain_id as i64;
    sqlx::query("DELETE FROM ingest_journal WHERE chain_id = $1 AND block_number > $2")
        .bind(chain)
        .bind(ancestor as i64)
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM ingest_block WHERE chain_id = $1 AND number > $2")
        .bind(chain)
        .bind(ancestor as i64)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "UPDATE ingest_checkpoint SET block_number = $2, block_hash = $3, updated_at = now() WHERE chain_id = $1",
    )
    .bind(chain)
    .bind(ancestor as i64)
    .bind(hex(&hash))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Records the chain's genesis hash on first sight; afterwards refuses a chain whose genesis
/// changed (a devnet restarted from scratch under the same chain id).
pub async fn check_genesis(pool: &PgPool, chain_id: u64, genesis: B256) -> anyhow::Result<()> {
    let stored: Option<String> =
        sqlx::query_scalar("SELECT genesis_hash FROM ingest_chain WHERE chain_id = $1")
            .bind(chain_id as i64)
            .fetch_optional(pool)
            .await?;
    match stored {
        Some(hash) if hash == hex(&genesis) => Ok(()),
        Some(hash) => anyhow::bail!(
            "chain {chain_id} was reset: its genesis is now {genesis:#x}, the ingest state and read models hold chain {chain_id} from genesis {hash}; run `chainfold ingest rpc --forget-chain {chain_id}` to drop them"
        ),
        None => {
            sqlx::query("INSERT INTO ingest_chain (chain_id, genesis_hash) VALUES ($1, $2) ON CONFLICT DO NOTHING")
                .bind(chain_id as i64)
                .bind(hex(&genesis))
                .execute(pool)
                .await?;
            Ok(())
        }
    }
}

/// Drops everything known about `chain_id`: the follower's state, the chain's rows in every
/// read model (summaries of wallets and pools of that chain included) and what was derived from
/// them (scores, decisions, alerts, stress runs, backtest rows). Events already in Kafka
/// stay there; a later `chainfold rebuild` folds them again.
pub async fn forget_chain(pool: &PgPool, chain_id: u64) -> anyhow::Result<u64> {
    let mut tx = pool.begin().await?;
    let mut deleted = 0;
    for table in [
        "ingest_checkpoint",
        "ingest_block",
        "ingest_journal",
        "ingest_chain",
        "ingest_discovered",
        "lending_event",
        "wallet_lending_summary",
        "swap",
        "pool_summary",
        "pool_token_volume",
        "pool_sync",
        "liquidity_event",
        "flash_loan",
        "oracle_update",
        "chain_head",
        // What was derived from the chain's events goes with them.
        "credit_score",
        "credit_decision",
        "risk_alert",
        "stress_run",
        "backtest_score",
    ] {
        deleted += sqlx::query(&format!("DELETE FROM {table} WHERE chain_id = $1"))
            .bind(chain_id as i64)
            .execute(&mut *tx)
            .await?
            .rows_affected();
    }
    tx.commit().await?;
    Ok(deleted)
}

/// A pool a factory announced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovered {
    pub address: alloy_primitives::Address,
    pub v3: bool,
    pub token0: alloy_primitives::Address,
    pub token1: alloy_primitives::Address,
    pub created_block: u64,
}

/// Remembers a discovered pool (idempotent).
pub async fn save_discovered(pool: &PgPool, chain_id: u64, d: &Discovered) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO ingest_discovered (chain_id, address, kind, token0, token1, created_block)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (chain_id, address) DO NOTHING",
    )
    .bind(chain_id as i64)
    .bind(format!("{:#x}", d.address))
    .bind(if d.v3 {
        "uniswap_v3_pool"
    } else {
        "uniswap_v2_pair"
    })
    .bind(format!("{:#x}", d.token0))
    .bind(format!("{:#x}", d.token1))
    .bind(d.created_block as i64)
    .execute(pool)
    .await?;
    Ok(())
}

/// The pools discovered so far on `chain_id`.
pub async fn load_discovered(pool: &PgPool, chain_id: u64) -> anyhow::Result<Vec<Discovered>> {
    let rows: Vec<(String, String, String, String, i64)> = sqlx::query_as(
        "SELECT address, kind, token0, token1, created_block FROM ingest_discovered WHERE chain_id = $1 ORDER BY created_block",
    )
    .bind(chain_id as i64)
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|(a, k, t0, t1, b)| {
            let addr = |t: &str| {
                t.parse()
                    .map_err(|e| anyhow::anyhow!("stored address {t} is invalid: {e}"))
            };
            Ok(Discovered {
                address: addr(&a)?,
                v3: k == "uniswap_v3_pool",
                token0: addr(&t0)?,
                token1: addr(&t1)?,
                created_block: b as u64,
            })
        })
        .collect()
}
