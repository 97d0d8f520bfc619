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
    let row = sqlx::query_scalar!(
        "SELECT block_number FROM ingest_checkpoint WHERE chain_id = $1",
        chain_id as i64
    )
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|b| b as u64))
}

/// The stored window of recent blocks.
pub async fn load_window(pool: &PgPool, chain_id: u64) -> anyhow::Result<BTreeMap<u64, SeenBlock>> {
    let rows = sqlx::query!(
        "SELECT number, hash, parent_hash FROM ingest_block WHERE chain_id = $1 ORDER BY number",
        chain_id as i64
    )
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|r| {
            let (n, h, p) = (r.number, r.hash, r.parent_hash);
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
    // Every block, then every event, in one statement each (a catch-up of many blocks is two
    // statements, not two per block).
    let mut numbers = Vec::with_capacity(blocks.len());
    let mut hashes = Vec::with_capacity(blocks.len());
    let mut parents = Vec::with_capacity(blocks.len());
    let mut at = Vec::new();
    let mut index = Vec::new();
    let mut kinds = Vec::new();
    let mut payloads = Vec::new();
    for (number, seen, events) in blocks {
        numbers.push(*number as i64);
        hashes.push(hex(&seen.hash));
        parents.push(hex(&seen.parent));
        for env in *events {
            at.push(*number as i64);
            index.push(i64::from(env.log_index.unwrap_or_default()));
            kinds.push(kind_name(env.event.topic()).to_owned());
            payloads.push(crate::publish::encode(env));
        }
    }
    sqlx::query!(
        "INSERT INTO ingest_block (chain_id, number, hash, parent_hash)
         SELECT $1, * FROM UNNEST($2::int8[], $3::text[], $4::text[])
         ON CONFLICT (chain_id, number) DO UPDATE SET hash = EXCLUDED.hash, parent_hash = EXCLUDED.parent_hash",
        chain,
        &numbers,
        &hashes,
        &parents
    )
    .execute(&mut *tx)
    .await?;
    if !at.is_empty() {
        sqlx::query!(
            "INSERT INTO ingest_journal (chain_id, block_number, log_index, topic_kind, payload)
             SELECT $1, * FROM UNNEST($2::int8[], $3::int8[], $4::text[], $5::bytea[])
             ON CONFLICT (chain_id, block_number, log_index) DO UPDATE
             SET topic_kind = EXCLUDED.topic_kind, payload = EXCLUDED.payload",
            chain,
            &at,
            &index,
            &kinds,
            &payloads
        )
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query!(
        "DELETE FROM ingest_pending WHERE chain_id = $1 AND block_number <= $2",
        chain,
        last as i64
    )
    .execute(&mut *tx)
    .await?;
    let floor = last.saturating_sub(keep) as i64;
    sqlx::query!(
        "DELETE FROM ingest_block WHERE chain_id = $1 AND number <= $2",
        chain,
        floor
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query!(
        "DELETE FROM ingest_journal WHERE chain_id = $1 AND block_number <= $2",
        chain,
        floor
    )
    .execute(&mut *tx)
    .await?;
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
    sqlx::query!(
        "INSERT INTO ingest_checkpoint (chain_id, block_number, block_hash, updated_at)
         VALUES ($1, $2, $3, now())
         ON CONFLICT (chain_id) DO UPDATE SET block_number = EXCLUDED.block_number,
             block_hash = EXCLUDED.block_hash, updated_at = now()",
        chain_id as i64,
        number as i64,
        seen.map(|b| hex(&b.hash))
    )
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
    let rows = sqlx::query!(
        "SELECT topic_kind, payload FROM ingest_journal WHERE chain_id = $1 AND block_number > $2
         ORDER BY block_number DESC, log_index DESC",
        chain_id as i64,
        ancestor as i64
    )
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|r| Ok((kind_of(&r.topic_kind)?, read_payload(&r.payload)?)))
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
    sqlx::query!(
        "INSERT INTO ingest_pending (chain_id, block_number, log_index, payload)
         SELECT $1, * FROM UNNEST($2::int8[], $3::int8[], $4::bytea[])
         ON CONFLICT (chain_id, block_number, log_index) DO UPDATE SET payload = EXCLUDED.payload",
        chain_id as i64,
        &blocks,
        &index,
        &payloads
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Events published (or about to be) and never checkpointed, newest first.
pub async fn pending(pool: &PgPool, chain_id: u64) -> anyhow::Result<Vec<Envelope>> {
    let rows = sqlx::query_scalar!(
        "SELECT payload FROM ingest_pending WHERE chain_id = $1
         ORDER BY block_number DESC, log_index DESC",
        chain_id as i64
    )
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|payload| read_payload(&payload))
        .collect()
}

/// A journalled envelope, in whichever form the build that wrote it used.
fn read_payload(payload: &[u8]) -> anyhow::Result<Envelope> {
    chainfold_domain::envelope::decode_envelope(payload)
        .map_err(|err| anyhow::anyhow!("a journalled event does not read: {err}"))
}

/// Forgets the pending events after their retractions were acknowledged.
pub async fn clear_pending(pool: &PgPool, chain_id: u64) -> anyhow::Result<()> {
    sqlx::query!(
        "DELETE FROM ingest_pending WHERE chain_id = $1",
        chain_id as i64
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Forgets the blocks above `ancestor` (after their retractions were acknowledged) and moves the
/// checkpoint back to it.
pub async fn rewind(pool: &PgPool, chain_id: u64, ancestor: u64, hash: B256) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    let chain = chain_id as i64;
    sqlx::query!(
        "DELETE FROM ingest_journal WHERE chain_id = $1 AND block_number > $2",
        chain,
        ancestor as i64
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query!(
        "DELETE FROM ingest_block WHERE chain_id = $1 AND number > $2",
        chain,
        ancestor as i64
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query!(
        "UPDATE ingest_checkpoint SET block_number = $2, block_hash = $3, updated_at = now() WHERE chain_id = $1",
        chain,
        ancestor as i64,
        hex(&hash)
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Records the chain's genesis hash on first sight; afterwards refuses a chain whose genesis
/// changed (a devnet restarted from scratch under the same chain id).
pub async fn check_genesis(pool: &PgPool, chain_id: u64, genesis: B256) -> anyhow::Result<()> {
    let stored = sqlx::query_scalar!(
        "SELECT genesis_hash FROM ingest_chain WHERE chain_id = $1",
        chain_id as i64
    )
    .fetch_optional(pool)
    .await?;
    match stored {
        Some(hash) if hash == hex(&genesis) => Ok(()),
        Some(hash) => anyhow::bail!(
            "chain {chain_id} was reset: its genesis is now {genesis:#x}, the ingest state and read models hold chain {chain_id} from genesis {hash}; run `chainfold ingest rpc --forget-chain {chain_id}` to drop them"
        ),
        None => {
            sqlx::query!(
                "INSERT INTO ingest_chain (chain_id, genesis_hash) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                chain_id as i64,
                hex(&genesis)
            )
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
    let chain = chain_id as i64;
    let mut deleted = 0;
    macro_rules! delete {
        ($($sql:tt),+ $(,)?) => {
            $(
                deleted += sqlx::query!($sql, chain).execute(&mut *tx).await?.rows_affected();
            )+
        };
    }
    delete!(
        "DELETE FROM ingest_checkpoint WHERE chain_id = $1",
        "DELETE FROM ingest_block WHERE chain_id = $1",
        "DELETE FROM ingest_journal WHERE chain_id = $1",
        "DELETE FROM ingest_chain WHERE chain_id = $1",
        "DELETE FROM ingest_discovered WHERE chain_id = $1",
        "DELETE FROM lending_event WHERE chain_id = $1",
        "DELETE FROM wallet_lending_summary WHERE chain_id = $1",
        "DELETE FROM swap WHERE chain_id = $1",
        "DELETE FROM pool_summary WHERE chain_id = $1",
        "DELETE FROM pool_token_volume WHERE chain_id = $1",
        "DELETE FROM pool_sync WHERE chain_id = $1",
        "DELETE FROM liquidity_event WHERE chain_id = $1",
        "DELETE FROM flash_loan WHERE chain_id = $1",
        "DELETE FROM oracle_update WHERE chain_id = $1",
        "DELETE FROM chain_head WHERE chain_id = $1",
        // What was derived from the chain's events goes with them.
        "DELETE FROM credit_score WHERE chain_id = $1",
        "DELETE FROM credit_decision WHERE chain_id = $1",
        "DELETE FROM risk_alert WHERE chain_id = $1",
        "DELETE FROM stress_run WHERE chain_id = $1",
        "DELETE FROM backtest_score WHERE chain_id = $1",
    );
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
    sqlx::query!(
        "INSERT INTO ingest_discovered (chain_id, address, kind, token0, token1, created_block)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (chain_id, address) DO NOTHING",
        chain_id as i64,
        format!("{:#x}", d.address),
        if d.v3 {
            "uniswap_v3_pool"
        } else {
            "uniswap_v2_pair"
        },
        format!("{:#x}", d.token0),
        format!("{:#x}", d.token1),
        d.created_block as i64
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// The pools discovered so far on `chain_id`.
pub async fn load_discovered(pool: &PgPool, chain_id: u64) -> anyhow::Result<Vec<Discovered>> {
    let rows = sqlx::query!(
        "SELECT address, kind, token0, token1, created_block FROM ingest_discovered WHERE chain_id = $1 ORDER BY created_block",
        chain_id as i64
    )
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|r| {
            let (a, k, t0, t1, b) = (r.address, r.kind, r.token0, r.token1, r.created_block);
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
