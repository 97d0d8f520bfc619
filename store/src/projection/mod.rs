//! The projector's writes: batched, idempotent inserts of the read models the log folds into,
//! their summaries, retractions, and the reset a rebuild starts from, in the transaction the
//! projector commits its offsets in.
//!
//! Rows go in with `INSERT … ON CONFLICT (event_id) DO NOTHING RETURNING …` (or, for a large
//! batch of a high-volume table, one `COPY`: [`copy`]), and the summaries are advanced only
//! from what that statement returned, i.e. from rows that were new. A replayed event (a
//! rebalance, a crash between the Postgres and Kafka commits, the log replayed twice)
//! therefore changes nothing. The batch shape is one UNNEST over column arrays per table;
//! every statement is `sqlx::query!`, checked against `.sqlx/`, except the `COPY … FROM STDIN`
//! texts, which sqlx cannot describe (their columns are the migrations' and the repository
//! tests run them).
//!
//! - this module: lending events and wallet summaries, swaps and pool summaries, the reset.
//! - [`live`]: pool syncs, liquidity, flash loans, oracle updates, lending market events,
//!   ERC-20 transfers and balances, seals, chain heads, and retractions.
//! - [`copy`]: the `COPY` text builder and the optimistic copy of new rows.

pub mod copy;
pub mod live;

use std::collections::HashSet;

use bigdecimal::BigDecimal;
use chainfold_domain::fold::{summarise_lending, summarise_swaps, LendingRow, SwapRow};
use chainfold_domain::UsdValue;
use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction};

/// Why a write failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("could not write to Postgres")]
    Database(#[from] sqlx::Error),
    /// Another member claimed a partition of the batch, or its stored offset moved: the
    /// transaction was rolled back and the batch must be read again (never dead-lettered).
    #[error(transparent)]
    Fenced(chainfold_platform::offsets::Fenced),
}

impl From<chainfold_platform::offsets::OffsetError> for StoreError {
    fn from(err: chainfold_platform::offsets::OffsetError) -> Self {
        match err {
            chainfold_platform::offsets::OffsetError::Fenced(f) => StoreError::Fenced(f),
            chainfold_platform::offsets::OffsetError::Postgres(e) => StoreError::Database(e),
        }
    }
}

impl StoreError {
    /// True when retrying the same write cannot succeed (a constraint or data error caused by
    /// the rows themselves): the offending message is dead-lettered. Everything else (connection
    /// lost, timeout, serialization failure) is retried. In doubt, transient.
    pub fn is_deterministic(&self) -> bool {
        let StoreError::Database(sqlx::Error::Database(db)) = self else {
            return false;
        };
        // SQLSTATE class 22 = data exception, 23 = integrity constraint violation.
        db.code()
            .is_some_and(|c| c.starts_with("22") || c.starts_with("23"))
    }
}

/// Where a folded row came from in Kafka.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coordinates {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// A wallet summary row as it stands after a batch (for the Redis cache).
#[derive(Debug, Clone, PartialEq)]
pub struct WalletSummaryRow {
    pub chain_id: i64,
    pub wallet: String,
    pub action: String,
    pub event_count: i64,
    pub amount_usd: BigDecimal,
}

/// A pool summary row as it stands after a batch (for the Redis cache): the row the API reads.
pub use crate::pools::PoolSummary as PoolSummaryRow;

/// What changed in a batch, for the caches.
#[derive(Debug, Default, Clone)]
pub struct BatchWrite {
    pub new_lending: u64,
    pub new_swaps: u64,
    /// New rows of the live models (pool syncs, liquidity, flash loans, oracle updates).
    pub new_other: u64,
    /// Rows deleted by retractions.
    pub retracted: u64,
    pub wallets: Vec<WalletSummaryRow>,
    pub pools: Vec<PoolSummaryRow>,
    /// Cached summaries to drop before writing `wallets`/`pools` (touched by a retraction).
    pub reset_wallets: Vec<(i64, String)>,
    pub reset_pools: Vec<(i64, String)>,
}

impl BatchWrite {
    /// Adds another write's changes (later summaries override earlier ones in the cache).
    pub fn merge(&mut self, other: BatchWrite) {
        self.new_lending += other.new_lending;
        self.new_swaps += other.new_swaps;
        self.new_other += other.new_other;
        self.retracted += other.retracted;
        self.wallets.extend(other.wallets);
        self.pools.extend(other.pools);
        self.reset_wallets.extend(other.reset_wallets);
        self.reset_pools.extend(other.reset_pools);
    }
}

fn hex<T: std::fmt::LowerHex>(value: &T) -> String {
    format!("{value:#x}")
}

fn usd(value: &Option<UsdValue>) -> Option<BigDecimal> {
    value.as_ref().map(|v| v.0.clone())
}

/// The rows whose ids Postgres reports as inserted, each id once: a batch can hold the same
/// event twice (the log holds a replay), and the second copy is not new.
fn newly_inserted<'a, T>(
    rows: impl Iterator<Item = &'a T>,
    ids: &[String],
    inserted: Vec<String>,
) -> Vec<&'a T> {
    let mut inserted: HashSet<String> = inserted.into_iter().collect();
    rows.zip(ids)
        .filter(|(_, id)| inserted.remove(*id))
        .map(|(row, _)| row)
        .collect()
}

/// Inserts lending rows, skipping those already stored, and advances the wallet summaries by
/// the new ones. Returns how many were new and the summaries as they now stand.
pub async fn insert_lending(
    tx: &mut Transaction<'_, Postgres>,
    rows: &[(LendingRow, Coordinates)],
) -> Result<(u64, Vec<WalletSummaryRow>), StoreError> {
    if rows.is_empty() {
        return Ok((0, Vec::new()));
    }
    let n = rows.len();
    let mut event_id = Vec::with_capacity(n);
    let mut chain_id = Vec::with_capacity(n);
    let mut wallet = Vec::with_capacity(n);
    let mut action = Vec::with_capacity(n);
    let mut protocol = Vec::with_capacity(n);
    let mut reserve = Vec::with_capacity(n);
    let mut symbol = Vec::with_capacity(n);
    let mut decimals = Vec::with_capacity(n);
    let mut amount = Vec::with_capacity(n);
    let mut price_usd = Vec::with_capacity(n);
    let mut amount_usd = Vec::with_capacity(n);
    let mut counterparty = Vec::with_capacity(n);
    let mut block_number = Vec::with_capacity(n);
    let mut block_hash = Vec::with_capacity(n);
    let mut tx_hash = Vec::with_capacity(n);
    let mut log_index = Vec::with_capacity(n);
    let mut block_time: Vec<Option<DateTime<Utc>>> = Vec::with_capacity(n);
    let mut collateral_reserve = Vec::with_capacity(n);
    let mut collateral_symbol = Vec::with_capacity(n);
    let mut collateral_decimals = Vec::with_capacity(n);
    let mut collateral_amount = Vec::with_capacity(n);
    let mut collateral_price_usd = Vec::with_capacity(n);
    let mut collateral_usd = Vec::with_capacity(n);
    let mut topic = Vec::with_capacity(n);
    let mut partition = Vec::with_capacity(n);
    let mut offset = Vec::with_capacity(n);
    let mut pool = Vec::with_capacity(n);
    for (row, at) in rows {
        pool.push(row.pool.as_ref().map(hex));
        let liq = row.liquidation.as_ref();
        collateral_reserve.push(liq.map(|l| hex(&l.collateral_reserve)));
        collateral_symbol.push(liq.map(|l| l.collateral_symbol.clone()));
        collateral_decimals.push(liq.map(|l| i16::from(l.collateral_decimals)));
        collateral_amount.push(liq.map(|l| l.collateral_amount.to_decimal()));
        collateral_price_usd.push(liq.and_then(|l| usd(&l.collateral_price_usd)));
        collateral_usd.push(liq.and_then(|l| usd(&l.collateral_usd)));
        event_id.push(row.event_id.to_string());
        chain_id.push(row.chain_id as i64);
        wallet.push(hex(&row.wallet));
        action.push(row.action.as_str());
        protocol.push(row.protocol.clone());
        reserve.push(hex(&row.reserve));
        symbol.push(row.symbol.clone());
        decimals.push(i16::from(row.decimals));
        amount.push(row.amount.to_decimal());
        price_usd.push(usd(&row.price_usd));
        amount_usd.push(usd(&row.amount_usd));
        counterparty.push(row.counterparty.as_ref().map(hex));
        block_number.push(row.block_number.map(|b| b as i64));
        block_hash.push(row.block_hash.as_ref().map(hex));
        tx_hash.push(row.tx_hash.as_ref().map(hex));
        log_index.push(row.log_index.map(|i| i as i32));
        block_time.push(row.block_time);
        topic.push(at.topic.clone());
        partition.push(at.partition);
        offset.push(at.offset);
    }
    let inserted: Vec<String> = sqlx::query_scalar!(
        r#"
        INSERT INTO lending_event (event_id, chain_id, wallet, action, protocol, reserve, symbol,
            decimals, amount, price_usd, amount_usd, counterparty, block_number, block_hash,
            tx_hash, log_index, block_time, kafka_topic, kafka_partition, kafka_offset,
            collateral_reserve, collateral_symbol, collateral_decimals, collateral_amount,
            collateral_price_usd, collateral_usd, pool)
        SELECT * FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::text[], $5::text[],
            $6::text[], $7::text[], $8::int2[], $9::numeric[], $10::numeric[], $11::numeric[],
            $12::text[], $13::int8[], $14::text[], $15::text[], $16::int4[], $17::timestamptz[],
            $18::text[], $19::int4[], $20::int8[], $21::text[], $22::text[], $23::int2[],
            $24::numeric[], $25::numeric[], $26::numeric[], $27::text[])
        ON CONFLICT (event_id) DO NOTHING
        RETURNING event_id
        "#,
        &event_id,
        &chain_id,
        &wallet,
        &action as &[&str],
        &protocol,
        &reserve,
        &symbol,
        &decimals,
        &amount,
        &price_usd as &[Option<BigDecimal>],
        &amount_usd as &[Option<BigDecimal>],
        &counterparty as &[Option<String>],
        &block_number as &[Option<i64>],
        &block_hash as &[Option<String>],
        &tx_hash as &[Option<String>],
        &log_index as &[Option<i32>],
        &block_time as &[Option<DateTime<Utc>>],
        &topic,
        &partition,
        &offset,
        &collateral_reserve as &[Option<String>],
        &collateral_symbol as &[Option<String>],
        &collateral_decimals as &[Option<i16>],
        &collateral_amount as &[Option<BigDecimal>],
        &collateral_price_usd as &[Option<BigDecimal>],
        &collateral_usd as &[Option<BigDecimal>],
        &pool as &[Option<String>]
    )
    .fetch_all(&mut **tx)
    .await?;
    if inserted.is_empty() {
        return Ok((0, Vec::new()));
    }
    let new_rows: Vec<&LendingRow> =
        newly_inserted(rows.iter().map(|(row, _)| row), &event_id, inserted);
    let wallets = upsert_wallet_summaries(tx, &new_rows).await?;
    Ok((new_rows.len() as u64, wallets))
}

async fn upsert_wallet_summaries(
    tx: &mut Transaction<'_, Postgres>,
    rows: &[&LendingRow],
) -> Result<Vec<WalletSummaryRow>, StoreError> {
    let deltas = summarise_lending(rows.iter().copied());
    let mut chain_id = Vec::with_capacity(deltas.len());
    let mut wallet = Vec::with_capacity(deltas.len());
    let mut action = Vec::with_capacity(deltas.len());
    let mut event_count = Vec::with_capacity(deltas.len());
    let mut priced_count = Vec::with_capacity(deltas.len());
    let mut amount_usd = Vec::with_capacity(deltas.len());
    let mut first_at = Vec::with_capacity(deltas.len());
    let mut last_at = Vec::with_capacity(deltas.len());
    for ((chain, addr, act), d) in deltas {
        chain_id.push(chain as i64);
        wallet.push(hex(&addr));
        action.push(act.as_str());
        event_count.push(d.event_count as i64);
        priced_count.push(d.priced_count as i64);
        amount_usd.push(d.amount_usd);
        first_at.push(d.first_at);
        last_at.push(d.last_at);
    }
    let rows = sqlx::query_as!(
        WalletSummaryRow,
        r#"
        INSERT INTO wallet_lending_summary AS s
            (chain_id, wallet, action, event_count, priced_count, amount_usd, first_at, last_at)
        SELECT * FROM UNNEST($1::int8[], $2::text[], $3::text[], $4::int8[], $5::int8[],
            $6::numeric[], $7::timestamptz[], $8::timestamptz[])
        ON CONFLICT (chain_id, wallet, action) DO UPDATE SET
            event_count = s.event_count + EXCLUDED.event_count,
            priced_count = s.priced_count + EXCLUDED.priced_count,
            amount_usd = s.amount_usd + EXCLUDED.amount_usd,
            first_at = LEAST(s.first_at, EXCLUDED.first_at),
            last_at = GREATEST(s.last_at, EXCLUDED.last_at),
            version = nextval('wallet_lending_summary_version')
        RETURNING chain_id, wallet, action, event_count, amount_usd
        "#,
        &chain_id,
        &wallet,
        &action as &[&str],
        &event_count,
        &priced_count,
        &amount_usd,
        &first_at as &[Option<DateTime<Utc>>],
        &last_at as &[Option<DateTime<Utc>>]
    )
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows)
}

/// Inserts swap rows, skipping those already stored, and advances pool summaries and per-token
/// volumes by the new ones. Returns how many were new and the pool summaries as they now stand.
pub async fn insert_swaps(
    tx: &mut Transaction<'_, Postgres>,
    rows: &[(SwapRow, Coordinates)],
) -> Result<(u64, Vec<PoolSummaryRow>), StoreError> {
    let new_rows = insert_swap_rows(tx, rows).await?;
    advance_pool_summaries(tx, &new_rows).await
}

/// The first half of [`insert_swaps`]: the swap rows alone, those already stored skipped.
/// Returns the new ones. It locks no shared row (only the new rows' keys), so a writer may run
/// it while an earlier batch's transaction still holds the summaries.
pub async fn insert_swap_rows<'a>(
    tx: &mut Transaction<'_, Postgres>,
    rows: &'a [(SwapRow, Coordinates)],
) -> Result<Vec<&'a SwapRow>, StoreError> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    if rows.len() >= crate::projection::copy::COPY_MIN {
        return copy_swaps(tx, rows).await;
    }
    let n = rows.len();
    let mut event_id = Vec::with_capacity(n);
    let mut chain_id = Vec::with_capacity(n);
    let mut pool = Vec::with_capacity(n);
    let mut protocol = Vec::with_capacity(n);
    let mut block_number = Vec::with_capacity(n);
    let mut block_hash = Vec::with_capacity(n);
    let mut tx_hash = Vec::with_capacity(n);
    let mut tx_position = Vec::with_capacity(n);
    let mut trace_address = Vec::with_capacity(n);
    let mut log_index = Vec::with_capacity(n);
    let mut block_time: Vec<Option<DateTime<Utc>>> = Vec::with_capacity(n);
    let mut sender = Vec::with_capacity(n);
    let mut recipient = Vec::with_capacity(n);
    let mut token_in = Vec::with_capacity(n);
    let mut amount_in = Vec::with_capacity(n);
    let mut token_out = Vec::with_capacity(n);
    let mut amount_out = Vec::with_capacity(n);
    let mut reverted = Vec::with_capacity(n);
    let mut topic = Vec::with_capacity(n);
    let mut partition = Vec::with_capacity(n);
    let mut offset = Vec::with_capacity(n);
    let mut sqrt_price = Vec::with_capacity(n);
    let mut liquidity = Vec::with_capacity(n);
    let mut tick = Vec::with_capacity(n);
    for (row, at) in rows {
        sqrt_price.push(row.v3.as_ref().map(|v| v.sqrt_price_x96.to_decimal()));
        liquidity.push(row.v3.as_ref().map(|v| v.liquidity.to_decimal()));
        tick.push(row.v3.as_ref().map(|v| v.tick));
        event_id.push(row.event_id.to_string());
        chain_id.push(row.chain_id as i64);
        pool.push(hex(&row.pool));
        protocol.push(row.protocol.clone());
        block_number.push(row.block_number.map(|b| b as i64));
        block_hash.push(row.block_hash.as_ref().map(hex));
        tx_hash.push(row.tx_hash.as_ref().map(hex));
        tx_position.push(row.tx_position as i32);
        // Postgres cannot UNNEST an array of arrays: the path travels as "0.1.3".
        trace_address.push(
            row.trace_address
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join("."),
        );
        log_index.push(row.log_index.map(|i| i as i32));
        block_time.push(row.block_time);
        sender.push(hex(&row.sender));
        recipient.push(hex(&row.recipient));
        token_in.push(hex(&row.token_in));
        amount_in.push(row.amount_in.to_decimal());
        token_out.push(hex(&row.token_out));
        amount_out.push(row.amount_out.to_decimal());
        reverted.push(row.reverted);
        topic.push(at.topic.clone());
        partition.push(at.partition);
        offset.push(at.offset);
    }
    let inserted: Vec<String> = sqlx::query_scalar!(
        r#"
        INSERT INTO swap (event_id, chain_id, pool, protocol, block_number, block_hash, tx_hash,
            tx_position, trace_address, log_index, block_time, sender, recipient, token_in,
            amount_in, token_out, amount_out, reverted, kafka_topic, kafka_partition, kafka_offset,
            sqrt_price_x96, liquidity, tick)
        SELECT event_id, chain_id, pool, protocol, block_number, block_hash, tx_hash, tx_position,
            CASE WHEN trace = '' THEN '{}'::int4[] ELSE string_to_array(trace, '.')::int4[] END,
            log_index, block_time, sender, recipient, token_in, amount_in, token_out, amount_out,
            reverted, kafka_topic, kafka_partition, kafka_offset, sqrt_price_x96, liquidity, tick
        FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::text[], $5::int8[], $6::text[],
            $7::text[], $8::int4[], $9::text[], $10::int4[], $11::timestamptz[], $12::text[],
            $13::text[], $14::text[], $15::numeric[], $16::text[], $17::numeric[], $18::bool[],
            $19::text[], $20::int4[], $21::int8[], $22::numeric[], $23::numeric[], $24::int4[])
            AS t(event_id, chain_id, pool, protocol, block_number, block_hash, tx_hash, tx_position,
                 trace, log_index, block_time, sender, recipient, token_in, amount_in, token_out,
                 amount_out, reverted, kafka_topic, kafka_partition, kafka_offset, sqrt_price_x96,
                 liquidity, tick)
        ON CONFLICT (event_id) DO NOTHING
        RETURNING event_id
        "#,
        &event_id,
        &chain_id,
        &pool,
        &protocol,
        &block_number as &[Option<i64>],
        &block_hash as &[Option<String>],
        &tx_hash as &[Option<String>],
        &tx_position,
        &trace_address,
        &log_index as &[Option<i32>],
        &block_time as &[Option<DateTime<Utc>>],
        &sender,
        &recipient,
        &token_in,
        &amount_in,
        &token_out,
        &amount_out,
        &reverted,
        &topic,
        &partition,
        &offset,
        &sqrt_price as &[Option<BigDecimal>],
        &liquidity as &[Option<BigDecimal>],
        &tick as &[Option<i32>]
    )
    .fetch_all(&mut **tx)
    .await?;
    if inserted.is_empty() {
        return Ok(Vec::new());
    }
    Ok(newly_inserted(
        rows.iter().map(|(row, _)| row),
        &event_id,
        inserted,
    ))
}

/// The second half of [`insert_swaps`]: advances pool summaries and per-token volumes by
/// `new_rows`. Returns how many rows that was and the pool summaries as they now stand.
pub async fn advance_pool_summaries(
    tx: &mut Transaction<'_, Postgres>,
    new_rows: &[&SwapRow],
) -> Result<(u64, Vec<PoolSummaryRow>), StoreError> {
    if new_rows.is_empty() {
        return Ok((0, Vec::new()));
    }
    let pools = upsert_pool_summaries(tx, new_rows).await?;
    Ok((new_rows.len() as u64, pools))
}

/// [`insert_swap_rows`] for a large batch: the new rows in one `COPY` (see [`copy`]).
async fn copy_swaps<'a>(
    tx: &mut Transaction<'_, Postgres>,
    rows: &'a [(SwapRow, Coordinates)],
) -> Result<Vec<&'a SwapRow>, StoreError> {
    use crate::projection::copy::{copy_new, CopyTable, CopyText};
    static SWAP: CopyTable = CopyTable::new("swap");
    let ids: Vec<String> = rows.iter().map(|(r, _)| r.event_id.to_string()).collect();
    let build = |fresh: &[usize]| {
        let mut data = CopyText::with_capacity(fresh.len());
        for &i in fresh {
            let (row, at) = &rows[i];
            let trace = format!(
                "{{{}}}",
                row.trace_address
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            );
            data.plain(&ids[i])
                .plain(row.chain_id as i64)
                .hex(&row.pool)
                .text(&row.protocol)
                .opt(row.block_number.map(|b| b as i64))
                .opt_hex(row.block_hash.as_ref())
                .opt_hex(row.tx_hash.as_ref())
                .plain(row.tx_position as i32)
                .plain(trace)
                .opt(row.log_index.map(|i| i as i32))
                .time(row.block_time)
                .hex(&row.sender)
                .hex(&row.recipient)
                .hex(&row.token_in)
                .plain(row.amount_in)
                .hex(&row.token_out)
                .plain(row.amount_out)
                .plain(row.reverted)
                .text(&at.topic)
                .plain(at.partition)
                .plain(at.offset)
                .opt(row.v3.as_ref().map(|v| &v.sqrt_price_x96))
                .opt(row.v3.as_ref().map(|v| &v.liquidity))
                .opt(row.v3.as_ref().map(|v| v.tick));
            data.end_row();
        }
        data
    };
    let copied = copy_new(
        tx,
        &SWAP,
        &ids,
        "COPY swap (event_id, chain_id, pool, protocol, block_number, block_hash, tx_hash,
            tx_position, trace_address, log_index, block_time, sender, recipient, token_in,
            amount_in, token_out, amount_out, reverted, kafka_topic, kafka_partition, kafka_offset,
            sqrt_price_x96, liquidity, tick) FROM STDIN",
        build,
    )
    .await?;
    Ok(copied.fresh.iter().map(|&i| &rows[i].0).collect())
}

async fn upsert_pool_summaries(
    tx: &mut Transaction<'_, Postgres>,
    rows: &[&SwapRow],
) -> Result<Vec<PoolSummaryRow>, StoreError> {
    let deltas = summarise_swaps(rows.iter().copied());
    let mut chain_id = Vec::new();
    let mut pool = Vec::new();
    let mut protocol = Vec::new();
    let mut swap_count = Vec::new();
    let mut reverted_count = Vec::new();
    let mut first_block = Vec::new();
    let mut last_block = Vec::new();
    let mut v_chain = Vec::new();
    let mut v_pool = Vec::new();
    let mut v_token = Vec::new();
    let mut v_in = Vec::new();
    let mut v_out = Vec::new();
    for ((chain, addr), d) in deltas {
        chain_id.push(chain as i64);
        pool.push(hex(&addr));
        protocol.push(d.protocol);
        swap_count.push(d.swap_count as i64);
        reverted_count.push(d.reverted_count as i64);
        first_block.push(d.first_block.map(|b| b as i64));
        last_block.push(d.last_block.map(|b| b as i64));
        for (token, (vin, vout)) in d.volumes {
            v_chain.push(chain as i64);
            v_pool.push(hex(&addr));
            v_token.push(hex(&token));
            v_in.push(vin);
            v_out.push(vout);
        }
    }
    if !v_chain.is_empty() {
        sqlx::query!(
            r#"
            INSERT INTO pool_token_volume AS v (chain_id, pool, token, volume_in, volume_out)
            SELECT * FROM UNNEST($1::int8[], $2::text[], $3::text[], $4::numeric[], $5::numeric[])
            ON CONFLICT (chain_id, pool, token) DO UPDATE SET
                volume_in = v.volume_in + EXCLUDED.volume_in,
                volume_out = v.volume_out + EXCLUDED.volume_out
            "#,
            &v_chain,
            &v_pool,
            &v_token,
            &v_in,
            &v_out
        )
        .execute(&mut **tx)
        .await?;
    }
    let rows = sqlx::query_as!(
        PoolSummaryRow,
        r#"
        INSERT INTO pool_summary AS p (chain_id, pool, protocol, swap_count, reverted_count, first_block, last_block)
        SELECT * FROM UNNEST($1::int8[], $2::text[], $3::text[], $4::int8[], $5::int8[], $6::int8[], $7::int8[])
        ON CONFLICT (chain_id, pool) DO UPDATE SET
            swap_count = p.swap_count + EXCLUDED.swap_count,
            reverted_count = p.reverted_count + EXCLUDED.reverted_count,
            first_block = LEAST(p.first_block, EXCLUDED.first_block),
            last_block = GREATEST(p.last_block, EXCLUDED.last_block),
            version = nextval('pool_summary_version')
        RETURNING chain_id, pool, protocol, swap_count, reverted_count, first_block, last_block
        "#,
        &chain_id,
        &pool,
        &protocol,
        &swap_count,
        &reverted_count,
        &first_block as &[Option<i64>],
        &last_block as &[Option<i64>]
    )
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows)
}

/// Records `next_offset` per (topic, partition) for `group`. Never moves an offset backwards: a
/// Empties every read model and forgets `group`'s offsets, so the next run refolds the whole
/// log (`chainfold rebuild`).
pub async fn reset(pool: &PgPool, group: &str) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    sqlx::query!(
        "TRUNCATE lending_event, wallet_lending_summary, swap, pool_summary, pool_token_volume,
                  pool_sync, liquidity_event, flash_loan, oracle_update, lending_market_event,
                  erc20_transfer, erc20_balance, erc20_token, chain_head, chain_seal"
    )
    .execute(&mut *tx)
    .await?;
    chainfold_platform::offsets::forget(&mut tx, group).await?;
    tx.commit().await?;
    Ok(())
}
