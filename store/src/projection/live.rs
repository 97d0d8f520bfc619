//! Writes of the live read models (pool syncs, liquidity changes, flash loans, oracle updates,
//! chain heads) and the application of retractions.
//!
//! A retraction deletes the row whose `event_id` and `block_hash` both match (a later re-inclusion
//! of the same log in the canonical block has the same id and another hash, and is kept). The
//! incremental summaries (`wallet_lending_summary`, `pool_summary`, `pool_token_volume`) of the
//! wallets and pools a retraction touched are then recomputed from their event rows, so they
//! equal what a clean replay of the canonical chain folds. The "current state" models are views
//! over event rows and need nothing more.

use std::collections::BTreeSet;

use bigdecimal::BigDecimal;
use chainfold_domain::fold::{
    FlashLoanRow, LiquidityRow, MarketChange, MarketRow, OracleRow, PoolSyncRow, Row, TransferRow,
};
use chainfold_domain::{ChainHead, EModeChange, EModeKind, IsolationKind};
use chrono::{DateTime, Utc};
use sqlx::{Postgres, Transaction};

use crate::projection::{Coordinates, PoolSummaryRow, StoreError, WalletSummaryRow};

fn hex<T: std::fmt::LowerHex>(value: &T) -> String {
    format!("{value:#x}")
}

/// Columns every live row shares, as arrays for UNNEST.
#[derive(Default)]
struct Common {
    event_id: Vec<String>,
    chain_id: Vec<i64>,
    block_number: Vec<Option<i64>>,
    block_hash: Vec<Option<String>>,
    tx_hash: Vec<Option<String>>,
    log_index: Vec<Option<i32>>,
    block_time: Vec<Option<DateTime<Utc>>>,
    topic: Vec<String>,
    partition: Vec<i32>,
    offset: Vec<i64>,
}

impl Common {
    fn push(&mut self, at: &chainfold_domain::fold::EventRef, from: &Coordinates) {
        self.event_id.push(at.event_id.to_string());
        self.chain_id.push(at.chain_id as i64);
        self.block_number.push(at.block_number.map(|b| b as i64));
        self.block_hash.push(at.block_hash.as_ref().map(hex));
        self.tx_hash.push(at.tx_hash.as_ref().map(hex));
        self.log_index.push(at.log_index.map(|i| i as i32));
        self.block_time.push(at.block_time);
        self.topic.push(from.topic.clone());
        self.partition.push(from.partition);
        self.offset.push(from.offset);
    }
}

/// Inserts pool syncs, skipping stored ones; returns how many were new.
pub async fn insert_pool_syncs(
    tx: &mut Transaction<'_, Postgres>,
    rows: &[(&PoolSyncRow, &Coordinates)],
) -> Result<u64, StoreError> {
    if rows.is_empty() {
        return Ok(0);
    }
    if rows.len() >= crate::projection::copy::COPY_MIN {
        return copy_pool_syncs(tx, rows).await;
    }
    let mut c = Common::default();
    let (mut pool, mut protocol, mut token0, mut token1, mut r0, mut r1) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for (row, from) in rows {
        c.push(&row.at, from);
        pool.push(hex(&row.sync.pool));
        protocol.push(row.sync.protocol.clone());
        token0.push(hex(&row.sync.token0));
        token1.push(hex(&row.sync.token1));
        r0.push(row.sync.reserve0.to_decimal());
        r1.push(row.sync.reserve1.to_decimal());
    }
    let done = sqlx::query!(
        r#"
        INSERT INTO pool_sync (event_id, chain_id, block_number, block_hash, tx_hash, log_index,
            block_time, kafka_topic, kafka_partition, kafka_offset, pool, protocol, token0, token1,
            reserve0, reserve1)
        SELECT * FROM UNNEST($1::text[], $2::int8[], $3::int8[], $4::text[], $5::text[],
            $6::int4[], $7::timestamptz[], $8::text[], $9::int4[], $10::int8[], $11::text[],
            $12::text[], $13::text[], $14::text[], $15::numeric[], $16::numeric[])
        ON CONFLICT (event_id) DO NOTHING
        "#,
        &c.event_id,
        &c.chain_id,
        &c.block_number as &[Option<i64>],
        &c.block_hash as &[Option<String>],
        &c.tx_hash as &[Option<String>],
        &c.log_index as &[Option<i32>],
        &c.block_time as &[Option<DateTime<Utc>>],
        &c.topic,
        &c.partition,
        &c.offset,
        &pool,
        &protocol,
        &token0,
        &token1,
        &r0,
        &r1
    )
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected())
}

/// [`insert_pool_syncs`] for a large batch: the new rows in one `COPY` (see [`copy`]).
async fn copy_pool_syncs(
    tx: &mut Transaction<'_, Postgres>,
    rows: &[(&PoolSyncRow, &Coordinates)],
) -> Result<u64, StoreError> {
    use crate::projection::copy::{copy_new, CopyTable, CopyText};
    static POOL_SYNC: CopyTable = CopyTable::new("pool_sync");
    let ids: Vec<String> = rows
        .iter()
        .map(|(r, _)| r.at.event_id.to_string())
        .collect();
    let build = |fresh: &[usize]| {
        let mut data = CopyText::with_capacity(fresh.len());
        for &i in fresh {
            let (row, from) = rows[i];
            let at = &row.at;
            data.plain(&ids[i])
                .plain(at.chain_id as i64)
                .opt(at.block_number.map(|b| b as i64))
                .opt_hex(at.block_hash.as_ref())
                .opt_hex(at.tx_hash.as_ref())
                .opt(at.log_index.map(|i| i as i32))
                .time(at.block_time)
                .text(&from.topic)
                .plain(from.partition)
                .plain(from.offset)
                .hex(&row.sync.pool)
                .text(&row.sync.protocol)
                .hex(&row.sync.token0)
                .hex(&row.sync.token1)
                .plain(row.sync.reserve0)
                .plain(row.sync.reserve1);
            data.end_row();
        }
        data
    };
    let copied = copy_new(
        tx,
        &POOL_SYNC,
        &ids,
        "COPY pool_sync (event_id, chain_id, block_number, block_hash, tx_hash, log_index,
            block_time, kafka_topic, kafka_partition, kafka_offset, pool, protocol, token0, token1,
            reserve0, reserve1) FROM STDIN",
        build,
    )
    .await?;
    Ok(copied.fresh.len() as u64)
}

/// Inserts liquidity changes, skipping stored ones; returns how many were new.
pub async fn insert_liquidity(
    tx: &mut Transaction<'_, Postgres>,
    rows: &[(&LiquidityRow, &Coordinates)],
) -> Result<u64, StoreError> {
    if rows.is_empty() {
        return Ok(0);
    }
    let mut c = Common::default();
    let (mut pool, mut protocol, mut kind, mut sender, mut owner) =
        (vec![], vec![], vec![], vec![], vec![]);
    let (mut a0, mut a1, mut liq, mut lower, mut upper) = (vec![], vec![], vec![], vec![], vec![]);
    for (row, from) in rows {
        let ch = &row.change;
        c.push(&row.at, from);
        pool.push(hex(&ch.pool));
        protocol.push(ch.protocol.clone());
        kind.push(ch.kind.as_str());
        sender.push(ch.sender.as_ref().map(hex));
        owner.push(ch.owner.as_ref().map(hex));
        a0.push(ch.amount0.to_decimal());
        a1.push(ch.amount1.to_decimal());
        liq.push(ch.liquidity.map(|l| l.to_decimal()));
        lower.push(ch.tick_lower);
        upper.push(ch.tick_upper);
    }
    let done = sqlx::query!(
        r#"
        INSERT INTO liquidity_event (event_id, chain_id, block_number, block_hash, tx_hash,
            log_index, block_time, kafka_topic, kafka_partition, kafka_offset, pool, protocol,
            kind, sender, owner, amount0, amount1, liquidity, tick_lower, tick_upper)
        SELECT * FROM UNNEST($1::text[], $2::int8[], $3::int8[], $4::text[], $5::text[],
            $6::int4[], $7::timestamptz[], $8::text[], $9::int4[], $10::int8[], $11::text[],
            $12::text[], $13::text[], $14::text[], $15::text[], $16::numeric[], $17::numeric[],
            $18::numeric[], $19::int4[], $20::int4[])
        ON CONFLICT (event_id) DO NOTHING
        "#,
        &c.event_id,
        &c.chain_id,
        &c.block_number as &[Option<i64>],
        &c.block_hash as &[Option<String>],
        &c.tx_hash as &[Option<String>],
        &c.log_index as &[Option<i32>],
        &c.block_time as &[Option<DateTime<Utc>>],
        &c.topic,
        &c.partition,
        &c.offset,
        &pool,
        &protocol,
        &kind as &[&str],
        &sender as &[Option<String>],
        &owner as &[Option<String>],
        &a0,
        &a1,
        &liq as &[Option<BigDecimal>],
        &lower as &[Option<i32>],
        &upper as &[Option<i32>]
    )
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected())
}

/// Inserts flash loans, skipping stored ones; returns how many were new.
pub async fn insert_flash_loans(
    tx: &mut Transaction<'_, Postgres>,
    rows: &[(&FlashLoanRow, &Coordinates)],
) -> Result<u64, StoreError> {
    if rows.is_empty() {
        return Ok(0);
    }
    let mut c = Common::default();
    let (mut protocol, mut pool, mut target, mut initiator, mut asset) =
        (vec![], vec![], vec![], vec![], vec![]);
    let (mut symbol, mut decimals, mut amount, mut premium) = (vec![], vec![], vec![], vec![]);
    for (row, from) in rows {
        let l = &row.loan;
        c.push(&row.at, from);
        protocol.push(l.protocol.clone());
        pool.push(hex(&l.pool));
        target.push(hex(&l.target));
        initiator.push(hex(&l.initiator));
        asset.push(hex(&l.asset.address));
        symbol.push(l.asset.symbol.clone());
        decimals.push(i16::from(l.asset.decimals));
        amount.push(l.amount.to_decimal());
        premium.push(l.premium.to_decimal());
    }
    let done = sqlx::query!(
        r#"
        INSERT INTO flash_loan (event_id, chain_id, block_number, block_hash, tx_hash, log_index,
            block_time, kafka_topic, kafka_partition, kafka_offset, protocol, pool, target,
            initiator, asset, symbol, decimals, amount, premium)
        SELECT * FROM UNNEST($1::text[], $2::int8[], $3::int8[], $4::text[], $5::text[],
            $6::int4[], $7::timestamptz[], $8::text[], $9::int4[], $10::int8[], $11::text[],
            $12::text[], $13::text[], $14::text[], $15::text[], $16::text[], $17::int2[],
            $18::numeric[], $19::numeric[])
        ON CONFLICT (event_id) DO NOTHING
        "#,
        &c.event_id,
        &c.chain_id,
        &c.block_number as &[Option<i64>],
        &c.block_hash as &[Option<String>],
        &c.tx_hash as &[Option<String>],
        &c.log_index as &[Option<i32>],
        &c.block_time as &[Option<DateTime<Utc>>],
        &c.topic,
        &c.partition,
        &c.offset,
        &protocol,
        &pool,
        &target,
        &initiator,
        &asset,
        &symbol,
        &decimals,
        &amount,
        &premium
    )
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected())
}

/// The columns of `lending_market_event` rows, as arrays for UNNEST.
#[derive(Default)]
struct MarketColumns {
    c: Common,
    protocol: Vec<String>,
    pool: Vec<String>,
    kind: Vec<&'static str>,
    reserve: Vec<Option<String>>,
    symbol: Vec<Option<String>>,
    decimals: Vec<Option<i16>>,
    wallet: Vec<Option<String>>,
    emode: Vec<Option<i16>>,
    label: Vec<Option<String>>,
    figure: Vec<Option<BigDecimal>>,
    /// liquidity rate, stable and variable borrow rates, liquidity and variable borrow indices.
    rates: [Vec<Option<BigDecimal>>; 5],
    /// LTV, liquidation threshold and bonus (basis points).
    params: [Vec<Option<i32>>; 3],
}

impl MarketColumns {
    /// Adds one row: which kind of change it is, what it names, and the figures it carries.
    fn push(&mut self, row: &MarketRow, from: &Coordinates) {
        self.c.push(&row.at, from);
        let (p, pl, k, r, w) = match &row.change {
            MarketChange::Reserve(u) => (
                &u.protocol,
                u.pool,
                "reserve_update",
                Some(&u.reserve),
                None,
            ),
            MarketChange::Config(u) => (
                &u.protocol,
                u.pool,
                "reserve_config",
                Some(&u.reserve),
                None,
            ),
            MarketChange::Collateral(u) => (
                &u.protocol,
                u.pool,
                if u.enabled {
                    "collateral_enabled"
                } else {
                    "collateral_disabled"
                },
                Some(&u.reserve),
                Some(hex(&u.wallet)),
            ),
            MarketChange::Isolation(i) => (
                &i.protocol,
                i.pool,
                match i.kind {
                    IsolationKind::DebtCeiling => "debt_ceiling",
                    IsolationKind::TotalDebt => "isolation_debt",
                },
                Some(&i.reserve),
                None,
            ),
            MarketChange::EMode(e) => match &e.change {
                EModeKind::Category { .. } => (&e.protocol, e.pool, "emode_category", None, None),
                EModeKind::Asset { reserve } => {
                    (&e.protocol, e.pool, "emode_asset", Some(reserve), None)
                }
                EModeKind::User { wallet } => {
                    (&e.protocol, e.pool, "user_emode", None, Some(hex(wallet)))
                }
            },
        };
        self.protocol.push(p.clone());
        self.pool.push(hex(&pl));
        self.kind.push(k);
        self.reserve.push(r.map(|r| hex(&r.address)));
        self.symbol.push(r.map(|r| r.symbol.clone()));
        self.decimals.push(r.map(|r| i16::from(r.decimals)));
        self.wallet.push(w);
        let (category, text) = match &row.change {
            MarketChange::EMode(e) => (
                Some(i16::from(e.category)),
                match &e.change {
                    EModeKind::Category { label, .. } => Some(label.clone()),
                    _ => None,
                },
            ),
            _ => (None, None),
        };
        self.emode.push(category);
        self.label.push(text);
        self.figure.push(match &row.change {
            MarketChange::Isolation(i) => Some(i.value.to_decimal()),
            _ => None,
        });
        let values = match &row.change {
            MarketChange::Reserve(u) => [
                &u.liquidity_rate,
                &u.stable_borrow_rate,
                &u.variable_borrow_rate,
                &u.liquidity_index,
                &u.variable_borrow_index,
            ]
            .map(|a| Some(a.to_decimal())),
            _ => Default::default(),
        };
        for (column, value) in self.rates.iter_mut().zip(values) {
            column.push(value);
        }
        let bps = match &row.change {
            MarketChange::Config(u) => {
                [u.ltv, u.liquidation_threshold, u.liquidation_bonus].map(|v| Some(i32::from(v)))
            }
            MarketChange::EMode(EModeChange {
                change:
                    EModeKind::Category {
                        ltv,
                        liquidation_threshold,
                        liquidation_bonus,
                        ..
                    },
                ..
            }) => [*ltv, *liquidation_threshold, *liquidation_bonus].map(|v| Some(i32::from(v))),
            _ => [None; 3],
        };
        for (column, value) in self.params.iter_mut().zip(bps) {
            column.push(value);
        }
    }
}

/// Inserts lending-pool reserve updates, configurations and collateral-use changes, skipping
/// stored ones; returns how many were new.
pub async fn insert_market_events(
    tx: &mut Transaction<'_, Postgres>,
    rows: &[(&MarketRow, &Coordinates)],
) -> Result<u64, StoreError> {
    if rows.is_empty() {
        return Ok(0);
    }
    let mut m = MarketColumns::default();
    for (row, from) in rows {
        m.push(row, from);
    }
    let MarketColumns {
        c,
        protocol,
        pool,
        kind,
        reserve,
        symbol,
        decimals,
        wallet,
        emode,
        label,
        figure,
        rates,
        params,
    } = m;
    let done = sqlx::query!(
        r#"
        INSERT INTO lending_market_event (event_id, chain_id, block_number, block_hash, tx_hash,
            log_index, block_time, kafka_topic, kafka_partition, kafka_offset, protocol, pool,
            kind, reserve, symbol, decimals, wallet, liquidity_rate, stable_borrow_rate,
            variable_borrow_rate, liquidity_index, variable_borrow_index, ltv,
            liquidation_threshold, liquidation_bonus, emode_category, label, amount)
        SELECT * FROM UNNEST($1::text[], $2::int8[], $3::int8[], $4::text[], $5::text[],
            $6::int4[], $7::timestamptz[], $8::text[], $9::int4[], $10::int8[], $11::text[],
            $12::text[], $13::text[], $14::text[], $15::text[], $16::int2[], $17::text[],
            $18::numeric[], $19::numeric[], $20::numeric[], $21::numeric[], $22::numeric[],
            $23::int4[], $24::int4[], $25::int4[], $26::int2[], $27::text[], $28::numeric[])
        ON CONFLICT (event_id) DO NOTHING
        "#,
        &c.event_id,
        &c.chain_id,
        &c.block_number as &[Option<i64>],
        &c.block_hash as &[Option<String>],
        &c.tx_hash as &[Option<String>],
        &c.log_index as &[Option<i32>],
        &c.block_time as &[Option<DateTime<Utc>>],
        &c.topic,
        &c.partition,
        &c.offset,
        &protocol,
        &pool,
        &kind as &[&str],
        &reserve as &[Option<String>],
        &symbol as &[Option<String>],
        &decimals as &[Option<i16>],
        &wallet as &[Option<String>],
        &rates[0] as &[Option<BigDecimal>],
        &rates[1] as &[Option<BigDecimal>],
        &rates[2] as &[Option<BigDecimal>],
        &rates[3] as &[Option<BigDecimal>],
        &rates[4] as &[Option<BigDecimal>],
        &params[0] as &[Option<i32>],
        &params[1] as &[Option<i32>],
        &params[2] as &[Option<i32>],
        &emode as &[Option<i16>],
        &label as &[Option<String>],
        &figure as &[Option<BigDecimal>]
    )
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected())
}

/// Inserts ERC-20 transfers, skipping stored ones, and folds the new ones into `erc20_balance`
/// (sender minus, receiver plus) and their tokens' metadata into `erc20_token`, all in one
/// statement of the batch's transaction; returns how many were new.
pub async fn insert_transfers(
    tx: &mut Transaction<'_, Postgres>,
    rows: &[(&TransferRow, &Coordinates)],
) -> Result<u64, StoreError> {
    if rows.is_empty() {
        return Ok(0);
    }
    let n = rows.len();
    let (mut event_id, mut chain_id, mut token, mut block_number, mut block_hash, mut tx_hash) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut log_index, mut block_time, mut from, mut to, mut value) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut topic, mut partition, mut offset) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut name, mut symbol, mut decimals) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for (row, at) in rows {
        let t = &row.transfer;
        event_id.push(row.at.event_id.to_string());
        chain_id.push(row.at.chain_id as i64);
        token.push(hex(&t.token));
        block_number.push(row.at.block_number.map(|b| b as i64));
        block_hash.push(row.at.block_hash.as_ref().map(hex));
        tx_hash.push(row.at.tx_hash.as_ref().map(hex));
        log_index.push(row.at.log_index.map(i64::from));
        block_time.push(row.at.block_time);
        from.push(hex(&t.from));
        to.push(hex(&t.to));
        value.push(t.value.to_decimal());
        topic.push(at.topic.clone());
        partition.push(at.partition);
        offset.push(at.offset);
        name.push(t.metadata.name.clone());
        symbol.push(t.metadata.symbol.clone());
        decimals.push(t.metadata.decimals.map(i16::from));
    }
    let new = sqlx::query_scalar!(
        r#"
        WITH new AS (
            INSERT INTO erc20_transfer (event_id, chain_id, token, block_number, block_hash,
                tx_hash, log_index, block_time, from_address, to_address, value, kafka_topic,
                kafka_partition, kafka_offset)
            SELECT * FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::int8[], $5::text[],
                $6::text[], $7::int8[], $8::timestamptz[], $9::text[], $10::text[],
                $11::numeric[], $12::text[], $13::int4[], $14::int8[])
            ON CONFLICT (event_id) DO NOTHING
            RETURNING chain_id, token, from_address, to_address, value
        ), legs AS (
            SELECT chain_id, token, from_address AS holder, -value AS delta FROM new
            UNION ALL
            SELECT chain_id, token, to_address, value FROM new
        ), balances AS (
            INSERT INTO erc20_balance (chain_id, token, holder, balance, transfers)
            SELECT chain_id, token, holder, sum(delta), count(*) FROM legs
            GROUP BY chain_id, token, holder
            ON CONFLICT (chain_id, token, holder) DO UPDATE
                SET balance = erc20_balance.balance + EXCLUDED.balance,
                    transfers = erc20_balance.transfers + EXCLUDED.transfers
        ), tokens AS (
            INSERT INTO erc20_token (chain_id, token, name, symbol, decimals)
            SELECT DISTINCT ON (chain_id, token) chain_id, token, name, symbol, decimals
            FROM UNNEST($2::int8[], $3::text[], $15::text[], $16::text[], $17::int2[])
                AS m(chain_id, token, name, symbol, decimals)
            ORDER BY chain_id, token
            ON CONFLICT (chain_id, token) DO NOTHING
        )
        SELECT count(*) AS "n!" FROM new
        "#,
        &event_id,
        &chain_id,
        &token,
        &block_number as &[Option<i64>],
        &block_hash as &[Option<String>],
        &tx_hash as &[Option<String>],
        &log_index as &[Option<i64>],
        &block_time as &[Option<DateTime<Utc>>],
        &from,
        &to,
        &value,
        &topic,
        &partition,
        &offset,
        &name as &[Option<String>],
        &symbol as &[Option<String>],
        &decimals as &[Option<i16>]
    )
    .fetch_one(&mut **tx)
    .await?;
    Ok(new as u64)
}

/// Deletes retracted transfers (by event id and orphaned block hash) and unfolds them from
/// `erc20_balance`; a holder left with no transfers loses its row, as a rebuild would not
/// have it. Returns how many transfers were deleted.
async fn retract_transfers(
    tx: &mut Transaction<'_, Postgres>,
    ids: &[String],
    hashes: &[Option<String>],
) -> Result<u64, StoreError> {
    let deleted = sqlx::query_scalar!(
        r#"
        WITH gone AS (
            DELETE FROM erc20_transfer t
            USING UNNEST($1::text[], $2::text[]) AS r(event_id, block_hash)
            WHERE t.event_id = r.event_id AND t.block_hash IS NOT DISTINCT FROM r.block_hash
            RETURNING t.chain_id, t.token, t.from_address, t.to_address, t.value
        ), legs AS (
            SELECT chain_id, token, from_address AS holder, value AS delta FROM gone
            UNION ALL
            SELECT chain_id, token, to_address, -value FROM gone
        ), summed AS (
            SELECT chain_id, token, holder, sum(delta) AS delta, count(*) AS n FROM legs
            GROUP BY chain_id, token, holder
        ), unfolded AS (
            UPDATE erc20_balance b SET balance = b.balance + s.delta, transfers = b.transfers - s.n
            FROM summed s
            WHERE b.chain_id = s.chain_id AND b.token = s.token AND b.holder = s.holder
        )
        SELECT count(*) AS "n!" FROM gone
        "#,
        ids,
        hashes as &[Option<String>]
    )
    .fetch_one(&mut **tx)
    .await?;
    if deleted > 0 {
        sqlx::query!("DELETE FROM erc20_balance WHERE transfers = 0")
            .execute(&mut **tx)
            .await?;
    }
    Ok(deleted as u64)
}

/// Inserts oracle updates, skipping stored ones; returns how many were new.
pub async fn insert_oracle_updates(
    tx: &mut Transaction<'_, Postgres>,
    rows: &[(&OracleRow, &Coordinates)],
) -> Result<u64, StoreError> {
    if rows.is_empty() {
        return Ok(0);
    }
    let mut c = Common::default();
    let (mut feed, mut description, mut asset, mut answer, mut decimals) =
        (vec![], vec![], vec![], vec![], vec![]);
    let (mut price, mut round_id, mut updated_at) = (vec![], vec![], vec![]);
    for (row, from) in rows {
        let u = &row.update;
        c.push(&row.at, from);
        feed.push(hex(&u.feed));
        description.push(u.description.clone());
        asset.push(u.asset.as_ref().map(hex));
        answer.push(u.answer.clone());
        decimals.push(i16::from(u.decimals));
        price.push(row.price.clone());
        round_id.push(u.round_id.to_decimal());
        updated_at.push(u.updated_at);
    }
    let done = sqlx::query!(
        r#"
        INSERT INTO oracle_update (event_id, chain_id, block_number, block_hash, tx_hash,
            log_index, block_time, kafka_topic, kafka_partition, kafka_offset, feed, description,
            asset, answer, decimals, price, round_id, updated_at)
        SELECT * FROM UNNEST($1::text[], $2::int8[], $3::int8[], $4::text[], $5::text[],
            $6::int4[], $7::timestamptz[], $8::text[], $9::int4[], $10::int8[], $11::text[],
            $12::text[], $13::text[], $14::numeric[], $15::int2[], $16::numeric[],
            $17::numeric[], $18::timestamptz[])
        ON CONFLICT (event_id) DO NOTHING
        "#,
        &c.event_id,
        &c.chain_id,
        &c.block_number as &[Option<i64>],
        &c.block_hash as &[Option<String>],
        &c.tx_hash as &[Option<String>],
        &c.log_index as &[Option<i32>],
        &c.block_time as &[Option<DateTime<Utc>>],
        &c.topic,
        &c.partition,
        &c.offset,
        &feed,
        &description,
        &asset as &[Option<String>],
        &answer,
        &decimals,
        &price,
        &round_id,
        &updated_at as &[Option<DateTime<Utc>>]
    )
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected())
}

/// Stores folded seals (one row per seal record, idempotent by its coordinates).
pub async fn insert_seals(
    tx: &mut Transaction<'_, Postgres>,
    seals: &[(chainfold_domain::seal::Seal, crate::projection::Coordinates)],
) -> Result<(), StoreError> {
    for (seal, at) in seals {
        sqlx::query!(
            "INSERT INTO chain_seal (kafka_topic, kafka_partition, kafka_offset, chain_id,
                 first_block, last_block, through, retracted)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
            &at.topic,
            at.partition,
            at.offset,
            seal.chain_id as i64,
            seal.blocks.map(|b| b.0 as i64),
            seal.blocks.map(|b| b.1 as i64),
            serde_json::to_value(&seal.through).expect("a seal's bounds serialise"),
            seal.retracted
        )
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// Stores each chain's latest head (the last one in the batch per chain wins: heads of one chain
/// share a partition, so batch order is publish order).
pub async fn upsert_heads(
    tx: &mut Transaction<'_, Postgres>,
    heads: &[ChainHead],
) -> Result<(), StoreError> {
    let mut latest: std::collections::BTreeMap<u64, &ChainHead> = Default::default();
    for head in heads {
        latest.insert(head.chain_id, head);
    }
    for head in latest.values() {
        sqlx::query!(
            r#"
            INSERT INTO chain_head (chain_id, name, number, hash, parent_hash, block_time, confirmations, updated_at)
            VALUES ($1, $2, $3, $4, $5, $6, $7, now())
            ON CONFLICT (chain_id) DO UPDATE SET name = EXCLUDED.name, number = EXCLUDED.number,
                hash = EXCLUDED.hash, parent_hash = EXCLUDED.parent_hash,
                block_time = EXCLUDED.block_time, confirmations = EXCLUDED.confirmations,
                updated_at = now()
            "#,
            head.chain_id as i64,
            &head.name,
            head.number as i64,
            hex(&head.hash),
            hex(&head.parent_hash),
            head.timestamp,
            head.confirmations as i64
        )
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// What a set of retractions changed.
#[derive(Debug, Default, Clone)]
pub struct Retracted {
    /// Rows deleted (a retraction of a row never stored deletes nothing).
    pub deleted: u64,
    /// Summaries of the touched wallets and pools as they now stand, and the entities whose
    /// cached summaries must be dropped first (some may have no rows left).
    pub wallets: Vec<WalletSummaryRow>,
    pub pools: Vec<PoolSummaryRow>,
    pub reset_wallets: Vec<(i64, String)>,
    pub reset_pools: Vec<(i64, String)>,
}

/// Deletes the rows the retractions name (by event id and orphaned block hash) and recomputes
/// the summaries of what they touched.
pub async fn retract(
    tx: &mut Transaction<'_, Postgres>,
    rows: &[&Row],
) -> Result<Retracted, StoreError> {
    let mut out = Retracted::default();
    let mut by_table: std::collections::BTreeMap<&'static str, (Vec<String>, Vec<Option<String>>)> =
        Default::default();
    for row in rows {
        let table = match row {
            Row::Lending(_) => "lending_event",
            Row::Swap(_) => "swap",
            Row::PoolSync(_) => "pool_sync",
            Row::Liquidity(_) => "liquidity_event",
            Row::FlashLoan(_) => "flash_loan",
            Row::Oracle(_) => "oracle_update",
            Row::Market(_) => "lending_market_event",
            Row::Transfer(_) => "erc20_transfer",
        };
        let entry = by_table.entry(table).or_default();
        entry.0.push(row.event_id().to_string());
        entry.1.push(row.block_hash().as_ref().map(hex));
    }
    let mut wallets: BTreeSet<(i64, String)> = BTreeSet::new();
    let mut pools: BTreeSet<(i64, String)> = BTreeSet::new();
    for (table, (ids, hashes)) in &by_table {
        if *table == "erc20_transfer" {
            out.deleted += retract_transfers(tx, ids, hashes).await?;
            continue;
        }
        let deleted = delete_retracted(tx, table, ids, hashes).await?;
        out.deleted += deleted.len() as u64;
        for (chain, entity) in deleted {
            match (*table, entity) {
                ("lending_event", Some(w)) => {
                    wallets.insert((chain, w));
                }
                ("swap", Some(p)) => {
                    pools.insert((chain, p));
                }
                _ => {}
            }
        }
    }
    if !wallets.is_empty() {
        out.reset_wallets = wallets.iter().cloned().collect();
        out.wallets = recompute_wallets(tx, &out.reset_wallets).await?;
    }
    if !pools.is_empty() {
        out.reset_pools = pools.iter().cloned().collect();
        out.pools = recompute_pools(tx, &out.reset_pools).await?;
    }
    Ok(out)
}

/// Deletes `table`'s rows of `ids` whose block hash is the retracted one; returns each deleted
/// row's chain and the wallet (`lending_event`) or pool (`swap`) it touched.
async fn delete_retracted(
    tx: &mut Transaction<'_, Postgres>,
    table: &str,
    ids: &[String],
    hashes: &[Option<String>],
) -> Result<Vec<(i64, Option<String>)>, StoreError> {
    // One checked statement per table (table names cannot be bound).
    macro_rules! delete {
        ($table:literal, $entity:literal) => {
            sqlx::query!(
                "DELETE FROM " + $table + " t USING UNNEST($1::text[], $2::text[]) AS r(event_id, block_hash)
                 WHERE t.event_id = r.event_id AND t.block_hash IS NOT DISTINCT FROM r.block_hash
                 RETURNING t.chain_id, " + $entity + r#" AS "entity?""#,
                ids,
                hashes as &[Option<String>]
            )
            .fetch_all(&mut **tx)
            .await?
            .into_iter()
            .map(|r| (r.chain_id, r.entity))
            .collect()
        };
    }
    Ok(match table {
        "lending_event" => delete!("lending_event", "t.wallet"),
        "swap" => delete!("swap", "t.pool"),
        "pool_sync" => delete!("pool_sync", "NULL::text"),
        "liquidity_event" => delete!("liquidity_event", "NULL::text"),
        "flash_loan" => delete!("flash_loan", "NULL::text"),
        "oracle_update" => delete!("oracle_update", "NULL::text"),
        "lending_market_event" => delete!("lending_market_event", "NULL::text"),
        other => unreachable!("no retraction statement for table {other}"),
    })
}

async fn recompute_wallets(
    tx: &mut Transaction<'_, Postgres>,
    wallets: &[(i64, String)],
) -> Result<Vec<WalletSummaryRow>, StoreError> {
    let chains: Vec<i64> = wallets.iter().map(|w| w.0).collect();
    let addrs: Vec<&str> = wallets.iter().map(|w| w.1.as_str()).collect();
    sqlx::query!(
        "DELETE FROM wallet_lending_summary s USING UNNEST($1::int8[], $2::text[]) AS a(chain_id, wallet)
         WHERE s.chain_id = a.chain_id AND s.wallet = a.wallet",
        &chains,
        &addrs as &[&str]
    )
    .execute(&mut **tx)
    .await?;
    let rows = sqlx::query_as!(
        WalletSummaryRow,
        r#"
        INSERT INTO wallet_lending_summary
            (chain_id, wallet, action, event_count, priced_count, amount_usd, first_at, last_at)
        SELECT e.chain_id, e.wallet, e.action, count(*), count(e.amount_usd),
               coalesce(sum(e.amount_usd), 0), min(e.block_time), max(e.block_time)
        FROM lending_event e
        JOIN UNNEST($1::int8[], $2::text[]) AS a(chain_id, wallet)
          ON e.chain_id = a.chain_id AND e.wallet = a.wallet
        GROUP BY e.chain_id, e.wallet, e.action
        RETURNING chain_id, wallet, action, event_count, amount_usd
        "#,
        &chains,
        &addrs as &[&str]
    )
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows)
}

async fn recompute_pools(
    tx: &mut Transaction<'_, Postgres>,
    pools: &[(i64, String)],
) -> Result<Vec<PoolSummaryRow>, StoreError> {
    let chains: Vec<i64> = pools.iter().map(|p| p.0).collect();
    let addrs: Vec<&str> = pools.iter().map(|p| p.1.as_str()).collect();
    sqlx::query!(
        "DELETE FROM pool_summary s USING UNNEST($1::int8[], $2::text[]) AS a(chain_id, pool)
         WHERE s.chain_id = a.chain_id AND s.pool = a.pool",
        &chains,
        &addrs as &[&str]
    )
    .execute(&mut **tx)
    .await?;
    sqlx::query!(
        "DELETE FROM pool_token_volume s USING UNNEST($1::int8[], $2::text[]) AS a(chain_id, pool)
         WHERE s.chain_id = a.chain_id AND s.pool = a.pool",
        &chains,
        &addrs as &[&str]
    )
    .execute(&mut **tx)
    .await?;
    sqlx::query!(
        r#"
        INSERT INTO pool_token_volume (chain_id, pool, token, volume_in, volume_out)
        SELECT chain_id, pool, token, sum(vin), sum(vout) FROM (
            SELECT s.chain_id, s.pool, s.token_in AS token, s.amount_in AS vin, 0::numeric AS vout
            FROM swap s JOIN UNNEST($1::int8[], $2::text[]) AS a(chain_id, pool)
              ON s.chain_id = a.chain_id AND s.pool = a.pool
            WHERE NOT s.reverted
            UNION ALL
            SELECT s.chain_id, s.pool, s.token_out, 0, s.amount_out
            FROM swap s JOIN UNNEST($1::int8[], $2::text[]) AS a(chain_id, pool)
              ON s.chain_id = a.chain_id AND s.pool = a.pool
            WHERE NOT s.reverted
        ) v
        GROUP BY chain_id, pool, token
        "#,
        &chains,
        &addrs as &[&str]
    )
    .execute(&mut **tx)
    .await?;
    let rows = sqlx::query_as!(
        PoolSummaryRow,
        r#"
        INSERT INTO pool_summary (chain_id, pool, protocol, swap_count, reverted_count, first_block, last_block)
        SELECT s.chain_id, s.pool, min(s.protocol), count(*) FILTER (WHERE NOT s.reverted),
               count(*) FILTER (WHERE s.reverted), min(s.block_number), max(s.block_number)
        FROM swap s
        JOIN UNNEST($1::int8[], $2::text[]) AS a(chain_id, pool)
          ON s.chain_id = a.chain_id AND s.pool = a.pool
        GROUP BY s.chain_id, s.pool
        RETURNING chain_id, pool, protocol, swap_count, reverted_count, first_block, last_block
        "#,
        &chains,
        &addrs as &[&str]
    )
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows)
}
