//! Pure folds: an [`Envelope`] becomes the rows of the read models it touches.
//!
//! No clock, I/O or randomness: the same log always yields the same rows, which is what makes
//! the read models disposable (drop them, replay the log, get them back exactly). Aggregation
//! into summaries happens in the projector's SQL, only over rows that were newly inserted, so a
//! replayed event never counts twice.

use std::collections::BTreeMap;

use alloy_primitives::{Address, B256};
use bigdecimal::BigDecimal;
use chrono::{DateTime, Utc};

use crate::amount::{TokenAmount, UsdValue};
use crate::envelope::{
    CollateralUse, DefiEvent, Envelope, EventId, FlashLoan, LendingAction, LiquidityChange,
    OracleUpdate, PoolSync, ReserveConfig, ReserveUpdate, TopicKind, V3State, SCHEMA_VERSION,
};

/// Why an event cannot be folded. Every variant is deterministic: folding the same event again
/// fails the same way, so the projector dead-letters it and moves on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FoldError {
    #[error("unsupported schema version {0} (this build folds version {SCHEMA_VERSION})")]
    UnsupportedSchema(u16),
    #[error("{kind} event does not belong on the {expected} topic")]
    WrongTopic {
        kind: &'static str,
        expected: &'static str,
    },
    #[error("reserve {symbol} declares {decimals} decimals (at most 77 fit NUMERIC(78,0))")]
    ImpossibleDecimals { symbol: String, decimals: u8 },
    /// The protocol tables keep `log_index` as INTEGER; only `erc20_transfer` (and the ingest's
    /// own journal) take the whole u32 range. Refused rather than wrapped to a negative index.
    #[error("log index {0} does not fit this read model's INTEGER log_index (only transfers take up to 2^32-1)")]
    LogIndexTooLarge(u32),
}

/// The largest decimals a token can declare and still have its amounts fit `NUMERIC(78,0)`.
const MAX_DECIMALS: u8 = 77;

/// One row of `lending_event` (and, for liquidations, of `liquidation`).
#[derive(Debug, Clone, PartialEq)]
pub struct LendingRow {
    pub event_id: EventId,
    pub chain_id: u64,
    pub wallet: Address,
    pub action: LendingAction,
    pub protocol: String,
    /// The reserve the amount is in: the debt reserve for a liquidation.
    pub reserve: Address,
    pub symbol: String,
    pub decimals: u8,
    pub amount: TokenAmount,
    pub price_usd: Option<UsdValue>,
    pub amount_usd: Option<UsdValue>,
    pub counterparty: Option<Address>,
    pub block_number: Option<u64>,
    pub block_hash: Option<B256>,
    pub tx_hash: Option<B256>,
    pub log_index: Option<u32>,
    pub block_time: Option<DateTime<Utc>>,
    pub liquidation: Option<LiquidationDetail>,
    /// The lending pool that emitted it, where the source says (RPC logs).
    pub pool: Option<Address>,
}

/// The collateral side of a liquidation, stored in `liquidation`.
#[derive(Debug, Clone, PartialEq)]
pub struct LiquidationDetail {
    pub liquidator: Option<Address>,
    pub collateral_reserve: Address,
    pub collateral_symbol: String,
    pub collateral_decimals: u8,
    pub collateral_amount: TokenAmount,
    pub collateral_price_usd: Option<UsdValue>,
    pub collateral_usd: Option<UsdValue>,
}

/// One row of `swap`.
#[derive(Debug, Clone, PartialEq)]
pub struct SwapRow {
    pub event_id: EventId,
    pub chain_id: u64,
    pub pool: Address,
    pub protocol: String,
    pub block_number: Option<u64>,
    pub block_hash: Option<B256>,
    pub tx_hash: Option<B256>,
    pub tx_position: u32,
    pub trace_address: Vec<u32>,
    pub log_index: Option<u32>,
    pub block_time: Option<DateTime<Utc>>,
    pub sender: Address,
    pub recipient: Address,
    pub token_in: Address,
    pub amount_in: TokenAmount,
    pub token_out: Address,
    pub amount_out: TokenAmount,
    pub reverted: bool,
    /// Pool state after a Uniswap V3 swap.
    pub v3: Option<V3State>,
}

fn check_version(env: &Envelope) -> Result<(), FoldError> {
    if env.schema_version != SCHEMA_VERSION {
        return Err(FoldError::UnsupportedSchema(env.schema_version));
    }
    Ok(())
}

fn check_decimals(symbol: &str, decimals: u8) -> Result<(), FoldError> {
    if decimals > MAX_DECIMALS {
        return Err(FoldError::ImpossibleDecimals {
            symbol: symbol.to_owned(),
            decimals,
        });
    }
    Ok(())
}

/// Folds a lending event into its `lending_event` row.
pub fn lending_row(env: &Envelope) -> Result<LendingRow, FoldError> {
    check_version(env)?;
    let action = env.event.lending_action().ok_or(FoldError::WrongTopic {
        kind: env.event.kind_name(),
        expected: "lending_event",
    })?;
    let base = |wallet: Address, protocol: &str| LendingRow {
        event_id: env.event_id,
        chain_id: env.chain_id,
        wallet,
        action,
        protocol: protocol.to_owned(),
        reserve: Address::ZERO,
        symbol: String::new(),
        decimals: 0,
        amount: TokenAmount::ZERO,
        price_usd: None,
        amount_usd: None,
        counterparty: None,
        block_number: env.block.map(|b| b.number),
        block_hash: env.block.and_then(|b| b.hash),
        tx_hash: env.tx_hash,
        log_index: env.log_index,
        block_time: env.block_time,
        liquidation: None,
        pool: None,
    };
    match &env.event {
        DefiEvent::Deposit(flow)
        | DefiEvent::Borrow(flow)
        | DefiEvent::Repay(flow)
        | DefiEvent::Redeem(flow) => {
            check_decimals(&flow.reserve.symbol, flow.reserve.decimals)?;
            Ok(LendingRow {
                reserve: flow.reserve.address,
                symbol: flow.reserve.symbol.clone(),
                decimals: flow.reserve.decimals,
                amount: flow.amount,
                price_usd: flow.price_usd.clone(),
                amount_usd: flow.amount_usd(),
                counterparty: flow.counterparty,
                pool: flow.pool,
                ..base(flow.wallet, &flow.protocol)
            })
        }
        DefiEvent::Liquidation(liq) => {
            check_decimals(&liq.debt.symbol, liq.debt.decimals)?;
            check_decimals(&liq.collateral.symbol, liq.collateral.decimals)?;
            Ok(LendingRow {
                reserve: liq.debt.address,
                symbol: liq.debt.symbol.clone(),
                decimals: liq.debt.decimals,
                amount: liq.debt_covered,
                price_usd: liq.debt_price_usd.clone(),
                amount_usd: liq.amount_usd(),
                counterparty: liq.liquidator,
                liquidation: Some(LiquidationDetail {
                    liquidator: liq.liquidator,
                    collateral_reserve: liq.collateral.address,
                    collateral_symbol: liq.collateral.symbol.clone(),
                    collateral_decimals: liq.collateral.decimals,
                    collateral_amount: liq.collateral_amount,
                    collateral_price_usd: liq.collateral_price_usd.clone(),
                    collateral_usd: liq
                        .collateral_price_usd
                        .as_ref()
                        .map(|p| UsdValue::of(&liq.collateral_amount, liq.collateral.decimals, p)),
                }),
                pool: liq.pool,
                ..base(liq.wallet, &liq.protocol)
            })
        }
        _ => unreachable!("lending_action() returned None for the other events above"),
    }
}

/// Folds an AMM event into its `swap` row.
pub fn swap_row(env: &Envelope) -> Result<SwapRow, FoldError> {
    check_version(env)?;
    let DefiEvent::Swap(swap) = &env.event else {
        return Err(FoldError::WrongTopic {
            kind: env.event.kind_name(),
            expected: "swap",
        });
    };
    Ok(SwapRow {
        event_id: env.event_id,
        chain_id: env.chain_id,
        pool: swap.pool,
        protocol: swap.protocol.clone(),
        block_number: env.block.map(|b| b.number),
        block_hash: env.block.and_then(|b| b.hash),
        tx_hash: env.tx_hash,
        tx_position: swap.tx_position,
        trace_address: swap.trace_address.clone(),
        log_index: env.log_index,
        block_time: env.block_time,
        sender: swap.sender,
        recipient: swap.recipient,
        token_in: swap.token_in,
        amount_in: swap.amount_in,
        token_out: swap.token_out,
        amount_out: swap.amount_out,
        reverted: swap.reverted,
        v3: swap.v3.clone(),
    })
}

/// Where an event sits on its chain: the columns every live read-model row carries.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRef {
    pub event_id: EventId,
    pub chain_id: u64,
    pub block_number: Option<u64>,
    pub block_hash: Option<B256>,
    pub tx_hash: Option<B256>,
    pub log_index: Option<u32>,
    pub block_time: Option<DateTime<Utc>>,
}

impl EventRef {
    pub fn of(env: &Envelope) -> Self {
        EventRef {
            event_id: env.event_id,
            chain_id: env.chain_id,
            block_number: env.block.map(|b| b.number),
            block_hash: env.block.and_then(|b| b.hash),
            tx_hash: env.tx_hash,
            log_index: env.log_index,
            block_time: env.block_time,
        }
    }
}

/// One row of `pool_sync` (the `pool_state` view keeps the latest per pool).
#[derive(Debug, Clone, PartialEq)]
pub struct PoolSyncRow {
    pub at: EventRef,
    pub sync: PoolSync,
}

/// One row of `liquidity_event`.
#[derive(Debug, Clone, PartialEq)]
pub struct LiquidityRow {
    pub at: EventRef,
    pub change: LiquidityChange,
}

/// One row of `flash_loan`.
#[derive(Debug, Clone, PartialEq)]
pub struct FlashLoanRow {
    pub at: EventRef,
    pub loan: FlashLoan,
}

/// One row of `oracle_update` (the `oracle_price` view keeps the latest per feed).
#[derive(Debug, Clone, PartialEq)]
pub struct OracleRow {
    pub at: EventRef,
    pub update: OracleUpdate,
    pub price: BigDecimal,
}

/// One row of `lending_market_event`: what a lending pool says about a reserve or about a
/// wallet's collateral use, which positions are computed from (see [`crate::aave`]).
#[derive(Debug, Clone, PartialEq)]
pub struct MarketRow {
    pub at: EventRef,
    pub change: MarketChange,
}

/// The lending-pool events that are not money flows.
#[derive(Debug, Clone, PartialEq)]
pub enum MarketChange {
    Reserve(ReserveUpdate),
    Config(ReserveConfig),
    Collateral(CollateralUse),
    EMode(crate::envelope::EModeChange),
    Isolation(crate::envelope::IsolationChange),
}

/// An event folded into the row of its read model.
#[derive(Debug, Clone, PartialEq)]
pub enum Row {
    Lending(Box<LendingRow>),
    Swap(Box<SwapRow>),
    PoolSync(Box<PoolSyncRow>),
    Liquidity(Box<LiquidityRow>),
    FlashLoan(Box<FlashLoanRow>),
    Oracle(Box<OracleRow>),
    Market(Box<MarketRow>),
    Transfer(Box<TransferRow>),
}

/// One row of `erc20_transfer` (and a change to two `erc20_balance` rows).
#[derive(Debug, Clone, PartialEq)]
pub struct TransferRow {
    pub at: EventRef,
    pub transfer: crate::envelope::Erc20Transfer,
}

impl Row {
    pub fn event_id(&self) -> EventId {
        match self {
            Row::Lending(r) => r.event_id,
            Row::Swap(r) => r.event_id,
            Row::PoolSync(r) => r.at.event_id,
            Row::Liquidity(r) => r.at.event_id,
            Row::FlashLoan(r) => r.at.event_id,
            Row::Oracle(r) => r.at.event_id,
            Row::Market(r) => r.at.event_id,
            Row::Transfer(r) => r.at.event_id,
        }
    }

    pub fn block_hash(&self) -> Option<B256> {
        match self {
            Row::Lending(r) => r.block_hash,
            Row::Swap(r) => r.block_hash,
            Row::PoolSync(r) => r.at.block_hash,
            Row::Liquidity(r) => r.at.block_hash,
            Row::FlashLoan(r) => r.at.block_hash,
            Row::Oracle(r) => r.at.block_hash,
            Row::Market(r) => r.at.block_hash,
            Row::Transfer(r) => r.at.block_hash,
        }
    }
}

/// Folds an event read from `topic` into its row. An event on the wrong topic, of a schema
/// version this build does not know, or with impossible decimals is refused.
pub fn fold(env: &Envelope, topic: TopicKind) -> Result<Row, FoldError> {
    check_version(env)?;
    if env.event.topic() != topic {
        return Err(FoldError::WrongTopic {
            kind: env.event.kind_name(),
            expected: topic.name(),
        });
    }
    let at = || EventRef::of(env);
    if let Some(index) = env.log_index.filter(|i| *i > i32::MAX as u32) {
        if !matches!(env.event, DefiEvent::Transfer(_)) {
            return Err(FoldError::LogIndexTooLarge(index));
        }
    }
    Ok(match &env.event {
        DefiEvent::Transfer(t) => Row::Transfer(Box::new(TransferRow {
            at: at(),
            transfer: t.clone(),
        })),
        DefiEvent::Swap(_) => Row::Swap(Box::new(swap_row(env)?)),
        DefiEvent::PoolSync(sync) => Row::PoolSync(Box::new(PoolSyncRow {
            at: at(),
            sync: sync.clone(),
        })),
        DefiEvent::Liquidity(change) => Row::Liquidity(Box::new(LiquidityRow {
            at: at(),
            change: change.clone(),
        })),
        DefiEvent::FlashLoan(loan) => {
            check_decimals(&loan.asset.symbol, loan.asset.decimals)?;
            Row::FlashLoan(Box::new(FlashLoanRow {
                at: at(),
                loan: loan.clone(),
            }))
        }
        DefiEvent::OracleUpdate(update) => {
            check_decimals(&update.description, update.decimals)?;
            Row::Oracle(Box::new(OracleRow {
                at: at(),
                price: update.price(),
                update: update.clone(),
            }))
        }
        DefiEvent::Deposit(_)
        | DefiEvent::Borrow(_)
        | DefiEvent::Repay(_)
        | DefiEvent::Redeem(_)
        | DefiEvent::Liquidation(_) => Row::Lending(Box::new(lending_row(env)?)),
        DefiEvent::ReserveUpdate(u) => market(env, &u.reserve, MarketChange::Reserve(u.clone()))?,
        DefiEvent::ReserveConfig(c) => market(env, &c.reserve, MarketChange::Config(c.clone()))?,
        DefiEvent::CollateralUse(c) => {
            market(env, &c.reserve, MarketChange::Collateral(c.clone()))?
        }
        DefiEvent::EMode(e) => {
            if let crate::envelope::EModeKind::Asset { reserve } = &e.change {
                check_decimals(&reserve.symbol, reserve.decimals)?;
            }
            Row::Market(Box::new(MarketRow {
                at: EventRef::of(env),
                change: MarketChange::EMode(e.clone()),
            }))
        }
        DefiEvent::Isolation(i) => market(env, &i.reserve, MarketChange::Isolation(i.clone()))?,
    })
}

fn market(
    env: &Envelope,
    reserve: &crate::envelope::Reserve,
    change: MarketChange,
) -> Result<Row, FoldError> {
    check_decimals(&reserve.symbol, reserve.decimals)?;
    Ok(Row::Market(Box::new(MarketRow {
        at: EventRef::of(env),
        change,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{BlockRef, Liquidation, Reserve, Source, Swap};

    fn reserve(symbol: &str, decimals: u8) -> Reserve {
        Reserve {
            address: Address::repeat_byte(decimals),
            symbol: symbol.into(),
            decimals,
        }
    }

    fn envelope(event: DefiEvent) -> Envelope {
        Envelope {
            schema_version: SCHEMA_VERSION,
            retracted: false,
            event_id: EventId::of_record(137, "t", "1"),
            chain_id: 137,
            block: Some(BlockRef {
                number: 7,
                hash: None,
            }),
            tx_hash: None,
            log_index: None,
            block_time: None,
            source: Source::Rpc,
            event,
        }
    }

    #[test]
    fn only_transfers_take_log_indexes_beyond_i32() {
        let transfer = DefiEvent::Transfer(crate::envelope::Erc20Transfer {
            token: Address::repeat_byte(0x70),
            from: Address::ZERO,
            to: Address::repeat_byte(0x71),
            value: TokenAmount(alloy_primitives::U256::MAX),
            metadata: Default::default(),
        });
        let mut env = envelope(transfer);
        env.log_index = Some(0xffff_fffc);
        let Row::Transfer(row) = fold(&env, TopicKind::Transfers).expect("a transfer folds") else {
            panic!("a transfer row")
        };
        assert_eq!(row.at.log_index, Some(0xffff_fffc));
        assert!(matches!(
            fold(&env, TopicKind::Lending),
            Err(FoldError::WrongTopic { .. })
        ));
        let mut lending = envelope(liquidation());
        lending.log_index = Some(i32::MAX as u32);
        assert!(fold(&lending, TopicKind::Lending).is_ok());
        lending.log_index = Some(i32::MAX as u32 + 1);
        assert_eq!(
            fold(&lending, TopicKind::Lending),
            Err(FoldError::LogIndexTooLarge(2_147_483_648))
        );
    }

    fn liquidation() -> DefiEvent {
        DefiEvent::Liquidation(Liquidation {
            pool: None,
            protocol: "aave_v2".into(),
            wallet: Address::repeat_byte(0xaa),
            liquidator: Some(Address::repeat_byte(0xbb)),
            collateral: reserve("WETH", 18),
            collateral_amount: TokenAmount::parse_integer("500000000000000000").expect("valid"),
            collateral_price_usd: Some(UsdValue::parse("2000").expect("valid")),
            debt: reserve("USDT", 6),
            debt_covered: TokenAmount::parse_integer("952380952").expect("valid"),
            debt_price_usd: Some(UsdValue::parse("1.0").expect("valid")),
        })
    }

    #[test]
    fn a_liquidation_counts_the_debt_covered_in_usd() {
        let row = lending_row(&envelope(liquidation())).expect("folds");
        assert_eq!(row.action, LendingAction::Liquidation);
        assert_eq!(row.wallet, Address::repeat_byte(0xaa));
        assert_eq!(row.symbol, "USDT");
        assert_eq!(
            row.amount_usd.expect("priced").cents().to_string(),
            "952.38"
        );
        let detail = row.liquidation.expect("has collateral side");
        assert_eq!(
            detail.collateral_usd.expect("priced").cents().to_string(),
            "1000.00"
        );
        assert_eq!(row.block_number, Some(7));
    }

    #[test]
    fn unknown_schema_versions_are_rejected() {
        let mut env = envelope(liquidation());
        env.schema_version = 99;
        assert_eq!(lending_row(&env), Err(FoldError::UnsupportedSchema(99)));
    }

    #[test]
    fn a_swap_on_the_lending_path_is_rejected_and_vice_versa() {
        let swap = DefiEvent::Swap(Swap {
            protocol: "uniswap_v2".into(),
            pool: Address::repeat_byte(1),
            sender: Address::repeat_byte(2),
            recipient: Address::repeat_byte(3),
            token_in: Address::repeat_byte(4),
            amount_in: TokenAmount::parse_integer("10").expect("valid"),
            token_out: Address::repeat_byte(5),
            amount_out: TokenAmount::parse_integer("9").expect("valid"),
            tx_position: 0,
            trace_address: vec![0, 1],
            reverted: false,
            v3: None,
        });
        assert!(matches!(
            lending_row(&envelope(swap.clone())),
            Err(FoldError::WrongTopic { .. })
        ));
        assert!(matches!(
            swap_row(&envelope(liquidation())),
            Err(FoldError::WrongTopic { .. })
        ));
        let row = swap_row(&envelope(swap)).expect("folds");
        assert_eq!(row.trace_address, vec![0, 1]);
    }

    #[test]
    fn fold_routes_by_topic_and_refuses_events_on_the_wrong_one() {
        let sync = DefiEvent::PoolSync(crate::envelope::PoolSync {
            protocol: "uniswap_v2".into(),
            pool: Address::repeat_byte(7),
            token0: Address::repeat_byte(1),
            token1: Address::repeat_byte(2),
            reserve0: TokenAmount::parse_integer("1000").expect("valid"),
            reserve1: TokenAmount::parse_integer("2000").expect("valid"),
        });
        let env = envelope(sync);
        let Row::PoolSync(row) = fold(&env, TopicKind::Amm).expect("folds") else {
            panic!("a sync folds into a pool_sync row")
        };
        assert_eq!(row.at.block_number, Some(7));
        assert_eq!(row.sync.reserve1.to_string(), "2000");
        assert_eq!(
            fold(&env, TopicKind::Lending),
            Err(FoldError::WrongTopic {
                kind: "pool_sync",
                expected: "chainfold.lending.v1"
            })
        );
        assert!(matches!(
            fold(&envelope(liquidation()), TopicKind::Lending),
            Ok(Row::Lending(_))
        ));
    }

    #[test]
    fn impossible_decimals_are_rejected() {
        let DefiEvent::Liquidation(mut liq) = liquidation() else {
            unreachable!()
        };
        liq.debt.decimals = 200;
        let err = lending_row(&envelope(DefiEvent::Liquidation(liq))).expect_err("rejected");
        assert!(matches!(
            err,
            FoldError::ImpossibleDecimals { decimals: 200, .. }
        ));
    }
}

/// How a batch of new lending rows advances one wallet's summary for one action.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LendingSummaryDelta {
    pub event_count: u64,
    /// Events with a USD value (the others add to the count only).
    pub priced_count: u64,
    pub amount_usd: BigDecimal,
    pub first_at: Option<DateTime<Utc>>,
    pub last_at: Option<DateTime<Utc>>,
}

/// Summarises new lending rows per (chain, wallet, action). Callers pass only rows that were
/// newly stored, so replayed events never count twice.
pub fn summarise_lending<'a>(
    rows: impl IntoIterator<Item = &'a LendingRow>,
) -> BTreeMap<(u64, Address, LendingAction), LendingSummaryDelta> {
    let mut out: BTreeMap<(u64, Address, LendingAction), LendingSummaryDelta> = BTreeMap::new();
    for row in rows {
        let delta = out
            .entry((row.chain_id, row.wallet, row.action))
            .or_default();
        delta.event_count += 1;
        if let Some(usd) = &row.amount_usd {
            delta.priced_count += 1;
            delta.amount_usd += &usd.0;
        }
        if let Some(at) = row.block_time {
            delta.first_at = Some(delta.first_at.map_or(at, |f| f.min(at)));
            delta.last_at = Some(delta.last_at.map_or(at, |l| l.max(at)));
        }
    }
    out
}

/// How a batch of new swaps advances one pool's summary.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PoolSummaryDelta {
    pub protocol: String,
    pub swap_count: u64,
    pub reverted_count: u64,
    pub first_block: Option<u64>,
    pub last_block: Option<u64>,
    /// Per token: raw units into the pool and out of it, successful swaps only. Sums of U256
    /// can exceed 256 bits, hence BigDecimal.
    pub volumes: BTreeMap<Address, (BigDecimal, BigDecimal)>,
}

/// Summarises new swap rows per (chain, pool). Reverted swaps count in `reverted_count` and
/// the block range, never in volumes or `swap_count`.
pub fn summarise_swaps<'a>(
    rows: impl IntoIterator<Item = &'a SwapRow>,
) -> BTreeMap<(u64, Address), PoolSummaryDelta> {
    let mut out: BTreeMap<(u64, Address), PoolSummaryDelta> = BTreeMap::new();
    for row in rows {
        let delta = out.entry((row.chain_id, row.pool)).or_default();
        if delta.protocol.is_empty() {
            delta.protocol.clone_from(&row.protocol);
        }
        if let Some(block) = row.block_number {
            delta.first_block = Some(delta.first_block.map_or(block, |f| f.min(block)));
            delta.last_block = Some(delta.last_block.map_or(block, |l| l.max(block)));
        }
        if row.reverted {
            delta.reverted_count += 1;
            continue;
        }
        delta.swap_count += 1;
        delta.volumes.entry(row.token_in).or_default().0 += row.amount_in.to_decimal();
        delta.volumes.entry(row.token_out).or_default().1 += row.amount_out.to_decimal();
    }
    out
}

#[cfg(test)]
mod summary_tests {
    use super::*;

    fn lending(wallet: u8, action: LendingAction, usd: Option<&str>, at: i64) -> LendingRow {
        LendingRow {
            event_id: EventId::of_record(1, "t", &format!("{wallet}{at}")),
            chain_id: 1,
            wallet: Address::repeat_byte(wallet),
            action,
            protocol: "aave_v2".into(),
            reserve: Address::ZERO,
            symbol: "USDC".into(),
            decimals: 6,
            amount: TokenAmount::ZERO,
            price_usd: None,
            amount_usd: usd.map(|u| UsdValue::parse(u).expect("valid")),
            counterparty: None,
            block_number: None,
            block_hash: None,
            tx_hash: None,
            log_index: None,
            block_time: DateTime::from_timestamp(at, 0),
            liquidation: None,
            pool: None,
        }
    }

    #[test]
    fn lending_summary_counts_sums_and_spans_per_wallet_and_action() {
        let rows = [
            lending(1, LendingAction::Deposit, Some("10.50"), 200),
            lending(1, LendingAction::Deposit, Some("0.25"), 100),
            lending(1, LendingAction::Deposit, None, 300),
            lending(2, LendingAction::Borrow, Some("5"), 50),
        ];
        let summary = summarise_lending(&rows);
        let d = &summary[&(1, Address::repeat_byte(1), LendingAction::Deposit)];
        assert_eq!((d.event_count, d.priced_count), (3, 2));
        assert_eq!(d.amount_usd.to_string(), "10.75");
        assert_eq!(d.first_at.map(|t| t.timestamp()), Some(100));
        assert_eq!(d.last_at.map(|t| t.timestamp()), Some(300));
        assert_eq!(summary.len(), 2);
    }

    #[test]
    fn reverted_swaps_move_no_volume() {
        let swap = |reverted: bool, block: u64| SwapRow {
            event_id: EventId::of_record(1, "s", &format!("{reverted}{block}")),
            chain_id: 1,
            pool: Address::repeat_byte(9),
            protocol: "uniswap_v2".into(),
            block_number: Some(block),
            block_hash: None,
            tx_hash: None,
            tx_position: 0,
            trace_address: vec![],
            log_index: None,
            block_time: None,
            sender: Address::ZERO,
            recipient: Address::ZERO,
            token_in: Address::repeat_byte(1),
            amount_in: TokenAmount::parse_integer("100").expect("valid"),
            token_out: Address::repeat_byte(2),
            amount_out: TokenAmount::parse_integer("90").expect("valid"),
            reverted,
            v3: None,
        };
        let summary = summarise_swaps(&[swap(false, 10), swap(true, 12), swap(false, 11)]);
        let d = &summary[&(1, Address::repeat_byte(9))];
        assert_eq!((d.swap_count, d.reverted_count), (2, 1));
        assert_eq!((d.first_block, d.last_block), (Some(10), Some(12)));
        assert_eq!(d.volumes[&Address::repeat_byte(1)].0.to_string(), "200");
        assert_eq!(d.volumes[&Address::repeat_byte(2)].1.to_string(), "180");
    }
}
