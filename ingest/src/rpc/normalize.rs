//! Decoded logs → [`Envelope`]s: the same envelope and topics as the replay path.
//!
//! Pure: everything learned from the chain (token symbols and decimals, a pair's tokens, a feed's
//! decimals) is passed in as [`Metadata`], so this is unit-tested without a node.

use std::collections::HashMap;

use alloy_primitives::{Address, B256, I256, U256};
use chainfold_domain::{
    BlockRef, CollateralUse, DefiEvent, EModeChange, EModeKind, Envelope, Erc20Transfer, EventId,
    FlashLoan, IsolationChange, IsolationKind, LendingFlow, Liquidation, LiquidityChange,
    LiquidityKind, OracleUpdate, PoolSync, Reserve, ReserveConfig, ReserveUpdate, Source, Swap,
    TokenAmount, TokenMetadata, V3State, SCHEMA_VERSION,
};
use chrono::{DateTime, Utc};

use super::abi::RawEvent;

/// Where a log sits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogMeta {
    pub chain_id: u64,
    pub address: Address,
    pub block_number: u64,
    pub block_hash: B256,
    pub block_time: Option<DateTime<Utc>>,
    pub tx_hash: B256,
    pub tx_index: u32,
    pub log_index: u32,
}

/// A price feed's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedMeta {
    pub description: String,
    pub decimals: u8,
    pub asset: Option<Address>,
}

/// What normalising needs to know about contracts, learned from the configuration or the chain.
#[derive(Debug, Clone, Default)]
pub struct Metadata {
    pub tokens: HashMap<Address, Reserve>,
    pub pairs: HashMap<Address, (Address, Address)>,
    pub feeds: HashMap<Address, FeedMeta>,
    /// What each watched ERC-20 token said about itself (read once, at start).
    pub erc20: HashMap<Address, TokenMetadata>,
}

impl Metadata {
    fn token(&self, address: Address) -> Result<Reserve, String> {
        self.tokens
            .get(&address)
            .cloned()
            .ok_or_else(|| format!("unknown token {address:#x}: no symbol/decimals known"))
    }

    fn pair(&self, pool: Address) -> Result<(Address, Address), String> {
        self.pairs
            .get(&pool)
            .copied()
            .ok_or_else(|| format!("unknown pool {pool:#x}: its tokens are not known"))
    }
}

impl RawEvent {
    /// Tokens whose metadata normalising this event needs (lending reserves, flash-loan assets).
    pub fn tokens(&self) -> Vec<Address> {
        match self {
            RawEvent::AaveV2Deposit(e) => vec![e.reserve],
            RawEvent::AaveV2Withdraw(e) => vec![e.reserve],
            RawEvent::AaveV2Borrow(e) => vec![e.reserve],
            RawEvent::AaveV2Repay(e) => vec![e.reserve],
            RawEvent::AaveV2LiquidationCall(e) => vec![e.collateralAsset, e.debtAsset],
            RawEvent::AaveV2FlashLoan(e) => vec![e.asset],
            RawEvent::AaveV3Supply(e) => vec![e.reserve],
            RawEvent::AaveV3Withdraw(e) => vec![e.reserve],
            RawEvent::AaveV3Borrow(e) => vec![e.reserve],
            RawEvent::AaveV3Repay(e) => vec![e.reserve],
            RawEvent::AaveV3LiquidationCall(e) => vec![e.collateralAsset, e.debtAsset],
            RawEvent::AaveV3FlashLoan(e) => vec![e.asset],
            RawEvent::ReserveDataUpdated(_, e) => vec![e.reserve],
            RawEvent::CollateralEnabled(_, e) => vec![e.reserve],
            RawEvent::CollateralDisabled(_, e) => vec![e.reserve],
            RawEvent::CollateralConfigurationChanged(_, e) => vec![e.asset],
            RawEvent::EModeAssetCategoryChanged(_, e) => vec![e.asset],
            RawEvent::DebtCeilingChanged(_, e) => vec![e.asset],
            RawEvent::IsolationModeTotalDebtUpdated(_, e) => vec![e.asset],
            _ => Vec::new(),
        }
    }
}

/// A `string`-returning view's answer as text: the ABI `string` encoding, or (as MKR and SAI
/// answer `symbol()`) a `bytes32` padded with zeros. Invalid UTF-8 is replaced, not refused.
/// `None` when the answer is neither (empty, reverted, or too short).
pub fn decode_text(answer: &[u8]) -> Option<String> {
    use alloy_sol_types::SolValue as _;
    if let Ok(text) = String::abi_decode(answer) {
        return Some(text);
    }
    if let Ok(bytes) = alloy_primitives::Bytes::abi_decode(answer) {
        return Some(String::from_utf8_lossy(&bytes).into_owned());
    }
    if answer.len() == 32 {
        let end = answer.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
        return Some(String::from_utf8_lossy(&answer[..end]).into_owned());
    }
    None
}

/// `decimals()`'s answer: a uint8 in a 32-byte word (some tokens return a uint256; anything
/// above 255 is not a decimals count and is `None`).
pub fn decode_decimals(answer: &[u8]) -> Option<u8> {
    (answer.len() >= 32)
        .then(|| U256::from_be_slice(&answer[..32]))
        .and_then(|v| u8::try_from(v).ok())
}

/// A token's metadata from the answers to `name()`, `symbol()` and `decimals()` (each `None`
/// where the call failed), and a note for each string that had NUL bytes removed.
pub fn token_metadata(
    name: Option<&[u8]>,
    symbol: Option<&[u8]>,
    decimals: Option<&[u8]>,
) -> (TokenMetadata, Vec<String>) {
    let mut notes = Vec::new();
    let mut text = |what: &str, answer: Option<&[u8]>| {
        let (clean, had_nul) = TokenMetadata::clean(&answer.and_then(decode_text)?);
        if had_nul {
            notes.push(format!("{what}() contains NUL bytes: stored without them"));
        }
        clean
    };
    let metadata = TokenMetadata {
        name: text("name", name),
        symbol: text("symbol", symbol),
        decimals: decimals.and_then(decode_decimals),
    };
    (metadata, notes)
}

fn amount(value: U256) -> TokenAmount {
    TokenAmount(value)
}

fn unsigned_abs(value: I256) -> TokenAmount {
    TokenAmount(value.unsigned_abs())
}

fn other(a: Address, b: Address) -> Option<Address> {
    (a != b).then_some(b)
}

/// Turns a decoded log into its envelope. `Err` is the reason it cannot be (unknown metadata),
/// for the dead-letter topic.
pub fn normalize(raw: RawEvent, meta: &LogMeta, md: &Metadata) -> Result<Envelope, String> {
    let pool = meta.address;
    let event = match raw {
        RawEvent::V2Swap(..)
        | RawEvent::V3Swap(..)
        | RawEvent::V2Sync(..)
        | RawEvent::V2Mint(..)
        | RawEvent::V2Burn(..)
        | RawEvent::V3Mint(..)
        | RawEvent::V3Burn(..) => amm_event(raw, pool, md, meta)?,
        RawEvent::AaveV2Deposit(..)
        | RawEvent::AaveV3Supply(..)
        | RawEvent::AaveV2Withdraw(..)
        | RawEvent::AaveV3Withdraw(..)
        | RawEvent::AaveV2Borrow(..)
        | RawEvent::AaveV3Borrow(..)
        | RawEvent::AaveV2Repay(..)
        | RawEvent::AaveV3Repay(..)
        | RawEvent::AaveV2LiquidationCall(..)
        | RawEvent::AaveV3LiquidationCall(..)
        | RawEvent::AaveV2FlashLoan(..)
        | RawEvent::AaveV3FlashLoan(..) => lending_event(raw, pool, md, meta)?,
        RawEvent::ReserveDataUpdated(..)
        | RawEvent::CollateralEnabled(..)
        | RawEvent::CollateralDisabled(..)
        | RawEvent::CollateralConfigurationChanged(..)
        | RawEvent::EModeCategoryAdded(..)
        | RawEvent::EModeAssetCategoryChanged(..)
        | RawEvent::UserEModeSet(..)
        | RawEvent::DebtCeilingChanged(..)
        | RawEvent::IsolationModeTotalDebtUpdated(..) => market_event(raw, pool, md)?,
        RawEvent::Erc20Transfer(..) | RawEvent::AnswerUpdated(..) => {
            feed_or_token_event(raw, pool, md)?
        }
    };
    Ok(Envelope {
        schema_version: SCHEMA_VERSION,
        retracted: false,
        event_id: EventId::of_log(meta.chain_id, &meta.tx_hash, meta.log_index),
        chain_id: meta.chain_id,
        block: Some(BlockRef {
            number: meta.block_number,
            hash: Some(meta.block_hash),
        }),
        tx_hash: Some(meta.tx_hash),
        log_index: Some(meta.log_index),
        block_time: meta.block_time,
        source: Source::Rpc,
        event,
    })
}

/// A Uniswap V2 or V3 pool's swap, sync, mint or burn.
fn amm_event(
    raw: RawEvent,
    pool: Address,
    md: &Metadata,
    meta: &LogMeta,
) -> Result<DefiEvent, String> {
    Ok(match raw {
        RawEvent::V2Swap(e) => {
            let (token0, token1) = md.pair(pool)?;
            let zero_in = e.amount0In >= e.amount1In;
            Swap {
                protocol: "uniswap_v2".into(),
                pool,
                sender: e.sender,
                recipient: e.to,
                token_in: if zero_in { token0 } else { token1 },
                amount_in: amount(if zero_in { e.amount0In } else { e.amount1In }),
                token_out: if zero_in { token1 } else { token0 },
                amount_out: amount(if zero_in { e.amount1Out } else { e.amount0Out }),
                tx_position: meta.tx_index,
                trace_address: Vec::new(),
                reverted: false,
                v3: None,
            }
            .into()
        }
        RawEvent::V3Swap(e) => {
            let (token0, token1) = md.pair(pool)?;
            // V3 amounts are the pool's balance deltas: positive flowed in.
            let zero_in = e.amount0.is_positive();
            Swap {
                protocol: "uniswap_v3".into(),
                pool,
                sender: e.sender,
                recipient: e.recipient,
                token_in: if zero_in { token0 } else { token1 },
                amount_in: unsigned_abs(if zero_in { e.amount0 } else { e.amount1 }),
                token_out: if zero_in { token1 } else { token0 },
                amount_out: unsigned_abs(if zero_in { e.amount1 } else { e.amount0 }),
                tx_position: meta.tx_index,
                trace_address: Vec::new(),
                reverted: false,
                v3: Some(V3State {
                    sqrt_price_x96: amount(U256::from(e.sqrtPriceX96)),
                    liquidity: amount(U256::from(e.liquidity)),
                    tick: e.tick.as_i32(),
                }),
            }
            .into()
        }
        RawEvent::V2Sync(e) => {
            let (token0, token1) = md.pair(pool)?;
            DefiEvent::PoolSync(PoolSync {
                protocol: "uniswap_v2".into(),
                pool,
                token0,
                token1,
                reserve0: amount(U256::from(e.reserve0)),
                reserve1: amount(U256::from(e.reserve1)),
            })
        }
        RawEvent::V2Mint(e) => DefiEvent::Liquidity(LiquidityChange {
            protocol: "uniswap_v2".into(),
            pool,
            kind: LiquidityKind::Mint,
            sender: Some(e.sender),
            owner: None,
            amount0: amount(e.amount0),
            amount1: amount(e.amount1),
            liquidity: None,
            tick_lower: None,
            tick_upper: None,
        }),
        RawEvent::V2Burn(e) => DefiEvent::Liquidity(LiquidityChange {
            protocol: "uniswap_v2".into(),
            pool,
            kind: LiquidityKind::Burn,
            sender: Some(e.sender),
            owner: Some(e.to),
            amount0: amount(e.amount0),
            amount1: amount(e.amount1),
            liquidity: None,
            tick_lower: None,
            tick_upper: None,
        }),
        RawEvent::V3Mint(e) => DefiEvent::Liquidity(LiquidityChange {
            protocol: "uniswap_v3".into(),
            pool,
            kind: LiquidityKind::Mint,
            sender: Some(e.sender),
            owner: Some(e.owner),
            amount0: amount(e.amount0),
            amount1: amount(e.amount1),
            liquidity: Some(amount(U256::from(e.amount))),
            tick_lower: Some(e.tickLower.as_i32()),
            tick_upper: Some(e.tickUpper.as_i32()),
        }),
        RawEvent::V3Burn(e) => DefiEvent::Liquidity(LiquidityChange {
            protocol: "uniswap_v3".into(),
            pool,
            kind: LiquidityKind::Burn,
            sender: None,
            owner: Some(e.owner),
            amount0: amount(e.amount0),
            amount1: amount(e.amount1),
            liquidity: Some(amount(U256::from(e.amount))),
            tick_lower: Some(e.tickLower.as_i32()),
            tick_upper: Some(e.tickUpper.as_i32()),
        }),
        other => return Err(format!("not an AMM event: {other:?}")),
    })
}

/// An Aave V2 or V3 pool's supply, withdrawal, borrow, repay, liquidation or flash loan.
fn lending_event(
    raw: RawEvent,
    pool: Address,
    md: &Metadata,
    meta: &LogMeta,
) -> Result<DefiEvent, String> {
    let flow =
        |protocol: &str, wallet, counterparty, reserve, value| -> Result<LendingFlow, String> {
            Ok(LendingFlow {
                protocol: protocol.to_owned(),
                wallet,
                counterparty,
                reserve: md.token(reserve)?,
                amount: amount(value),
                price_usd: None,
                pool: Some(meta.address),
            })
        };
    Ok(match raw {
        RawEvent::AaveV2Deposit(e) => DefiEvent::Deposit(flow(
            "aave_v2",
            e.onBehalfOf,
            other(e.onBehalfOf, e.user),
            e.reserve,
            e.amount,
        )?),
        RawEvent::AaveV3Supply(e) => DefiEvent::Deposit(flow(
            "aave_v3",
            e.onBehalfOf,
            other(e.onBehalfOf, e.user),
            e.reserve,
            e.amount,
        )?),
        RawEvent::AaveV2Withdraw(e) => DefiEvent::Redeem(flow(
            "aave_v2",
            e.user,
            other(e.user, e.to),
            e.reserve,
            e.amount,
        )?),
        RawEvent::AaveV3Withdraw(e) => DefiEvent::Redeem(flow(
            "aave_v3",
            e.user,
            other(e.user, e.to),
            e.reserve,
            e.amount,
        )?),
        RawEvent::AaveV2Borrow(e) => DefiEvent::Borrow(flow(
            "aave_v2",
            e.onBehalfOf,
            other(e.onBehalfOf, e.user),
            e.reserve,
            e.amount,
        )?),
        RawEvent::AaveV3Borrow(e) => DefiEvent::Borrow(flow(
            "aave_v3",
            e.onBehalfOf,
            other(e.onBehalfOf, e.user),
            e.reserve,
            e.amount,
        )?),
        RawEvent::AaveV2Repay(e) => DefiEvent::Repay(flow(
            "aave_v2",
            e.user,
            other(e.user, e.repayer),
            e.reserve,
            e.amount,
        )?),
        RawEvent::AaveV3Repay(e) => DefiEvent::Repay(flow(
            "aave_v3",
            e.user,
            other(e.user, e.repayer),
            e.reserve,
            e.amount,
        )?),
        RawEvent::AaveV2LiquidationCall(e) => DefiEvent::Liquidation(Liquidation {
            protocol: "aave_v2".into(),
            wallet: e.user,
            liquidator: Some(e.liquidator),
            collateral: md.token(e.collateralAsset)?,
            collateral_amount: amount(e.liquidatedCollateralAmount),
            collateral_price_usd: None,
            debt: md.token(e.debtAsset)?,
            debt_covered: amount(e.debtToCover),
            debt_price_usd: None,
            pool: Some(pool),
        }),
        RawEvent::AaveV3LiquidationCall(e) => DefiEvent::Liquidation(Liquidation {
            protocol: "aave_v3".into(),
            wallet: e.user,
            liquidator: Some(e.liquidator),
            collateral: md.token(e.collateralAsset)?,
            collateral_amount: amount(e.liquidatedCollateralAmount),
            collateral_price_usd: None,
            debt: md.token(e.debtAsset)?,
            debt_covered: amount(e.debtToCover),
            debt_price_usd: None,
            pool: Some(pool),
        }),
        RawEvent::AaveV2FlashLoan(e) => DefiEvent::FlashLoan(FlashLoan {
            protocol: "aave_v2".into(),
            pool,
            target: e.target,
            initiator: e.initiator,
            asset: md.token(e.asset)?,
            amount: amount(e.amount),
            premium: amount(e.premium),
        }),
        RawEvent::AaveV3FlashLoan(e) => DefiEvent::FlashLoan(FlashLoan {
            protocol: "aave_v3".into(),
            pool,
            target: e.target,
            initiator: e.initiator,
            asset: md.token(e.asset)?,
            amount: amount(e.amount),
            premium: amount(e.premium),
        }),
        other => return Err(format!("not a lending flow: {other:?}")),
    })
}

/// An Aave pool's reserve update, collateral use, configuration, e-mode or isolation change.
fn market_event(raw: RawEvent, pool: Address, md: &Metadata) -> Result<DefiEvent, String> {
    Ok(match raw {
        RawEvent::ReserveDataUpdated(protocol, e) => DefiEvent::ReserveUpdate(ReserveUpdate {
            protocol: protocol.into(),
            pool,
            reserve: md.token(e.reserve)?,
            liquidity_rate: amount(e.liquidityRate),
            stable_borrow_rate: amount(e.stableBorrowRate),
            variable_borrow_rate: amount(e.variableBorrowRate),
            liquidity_index: amount(e.liquidityIndex),
            variable_borrow_index: amount(e.variableBorrowIndex),
        }),
        RawEvent::CollateralEnabled(protocol, e) => DefiEvent::CollateralUse(CollateralUse {
            protocol: protocol.into(),
            pool,
            wallet: e.user,
            reserve: md.token(e.reserve)?,
            enabled: true,
        }),
        RawEvent::CollateralDisabled(protocol, e) => DefiEvent::CollateralUse(CollateralUse {
            protocol: protocol.into(),
            pool,
            wallet: e.user,
            reserve: md.token(e.reserve)?,
            enabled: false,
        }),
        RawEvent::CollateralConfigurationChanged(protocol, e) => {
            let bps = |name: &str, value: U256| {
                u16::try_from(value).map_err(|_| {
                    format!("CollateralConfigurationChanged {name} {value} is not basis points")
                })
            };
            DefiEvent::ReserveConfig(ReserveConfig {
                protocol: protocol.into(),
                pool,
                reserve: md.token(e.asset)?,
                ltv: bps("ltv", e.ltv)?,
                liquidation_threshold: bps("liquidationThreshold", e.liquidationThreshold)?,
                liquidation_bonus: bps("liquidationBonus", e.liquidationBonus)?,
            })
        }
        RawEvent::EModeCategoryAdded(protocol, e) => {
            let bps = |name: &str, value: U256| {
                u16::try_from(value)
                    .map_err(|_| format!("EModeCategoryAdded {name} {value} is not basis points"))
            };
            DefiEvent::EMode(EModeChange {
                protocol: protocol.into(),
                pool,
                category: e.categoryId,
                change: EModeKind::Category {
                    ltv: bps("ltv", e.ltv)?,
                    liquidation_threshold: bps("liquidationThreshold", e.liquidationThreshold)?,
                    liquidation_bonus: bps("liquidationBonus", e.liquidationBonus)?,
                    label: e.label.replace('\0', ""),
                },
            })
        }
        RawEvent::EModeAssetCategoryChanged(protocol, e) => DefiEvent::EMode(EModeChange {
            protocol: protocol.into(),
            pool,
            category: e.newCategoryId,
            change: EModeKind::Asset {
                reserve: md.token(e.asset)?,
            },
        }),
        RawEvent::UserEModeSet(protocol, e) => DefiEvent::EMode(EModeChange {
            protocol: protocol.into(),
            pool,
            category: e.categoryId,
            change: EModeKind::User { wallet: e.user },
        }),
        RawEvent::DebtCeilingChanged(protocol, e) => DefiEvent::Isolation(IsolationChange {
            protocol: protocol.into(),
            pool,
            reserve: md.token(e.asset)?,
            kind: IsolationKind::DebtCeiling,
            value: amount(e.newDebtCeiling),
        }),
        RawEvent::IsolationModeTotalDebtUpdated(protocol, e) => {
            DefiEvent::Isolation(IsolationChange {
                protocol: protocol.into(),
                pool,
                reserve: md.token(e.asset)?,
                kind: IsolationKind::TotalDebt,
                value: amount(e.totalDebt),
            })
        }
        other => return Err(format!("not a lending market event: {other:?}")),
    })
}

/// A Chainlink round or an ERC-20 transfer.
fn feed_or_token_event(raw: RawEvent, pool: Address, md: &Metadata) -> Result<DefiEvent, String> {
    Ok(match raw {
        RawEvent::Erc20Transfer(e) => DefiEvent::Transfer(Erc20Transfer {
            token: pool,
            from: e.from,
            to: e.to,
            value: amount(e.value),
            metadata: md.erc20.get(&pool).cloned().unwrap_or_default(),
        }),
        RawEvent::AnswerUpdated(e) => {
            let feed = md
                .feeds
                .get(&pool)
                .ok_or_else(|| format!("unknown feed {pool:#x}: its decimals are not known"))?;
            DefiEvent::OracleUpdate(OracleUpdate {
                feed: pool,
                description: feed.description.clone(),
                asset: feed.asset,
                answer: e
                    .current
                    .to_string()
                    .parse()
                    .map_err(|err| format!("answer {} is not a number: {err}", e.current))?,
                decimals: feed.decimals,
                round_id: amount(e.roundId),
                updated_at: u64::try_from(e.updatedAt)
                    .ok()
                    .and_then(|t| i64::try_from(t).ok())
                    .and_then(|t| DateTime::from_timestamp(t, 0)),
            })
        }
        other => return Err(format!("not an oracle round or a transfer: {other:?}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::abi::{AaveV2LendingPool, UniswapV2Pair, UniswapV3Pool};

    fn meta() -> LogMeta {
        LogMeta {
            chain_id: 31337,
            address: Address::repeat_byte(0x50),
            block_number: 12,
            block_hash: B256::repeat_byte(0xbb),
            block_time: DateTime::from_timestamp(1_700_000_000, 0),
            tx_hash: B256::repeat_byte(0x77),
            tx_index: 3,
            log_index: 9,
        }
    }

    fn metadata() -> Metadata {
        let mut md = Metadata::default();
        md.pairs.insert(
            Address::repeat_byte(0x50),
            (Address::repeat_byte(0x0a), Address::repeat_byte(0x0b)),
        );
        md.tokens.insert(
            Address::repeat_byte(0x0a),
            Reserve {
                address: Address::repeat_byte(0x0a),
                symbol: "USDC".into(),
                decimals: 6,
            },
        );
        md
    }

    #[test]
    fn a_v2_swap_becomes_token_in_and_out_by_direction() {
        let raw = RawEvent::V2Swap(UniswapV2Pair::Swap {
            sender: Address::repeat_byte(1),
            amount0In: U256::ZERO,
            amount1In: U256::from(500_u64),
            amount0Out: U256::from(990_u64),
            amount1Out: U256::ZERO,
            to: Address::repeat_byte(2),
        });
        let env = normalize(raw, &meta(), &metadata()).expect("normalises");
        let DefiEvent::Swap(swap) = &env.event else {
            panic!("a swap")
        };
        assert_eq!(swap.token_in, Address::repeat_byte(0x0b));
        assert_eq!(swap.amount_in.to_string(), "500");
        assert_eq!(swap.token_out, Address::repeat_byte(0x0a));
        assert_eq!(swap.amount_out.to_string(), "990");
        assert_eq!(swap.tx_position, 3);
        assert_eq!(
            env.event_id,
            EventId::of_log(31337, &B256::repeat_byte(0x77), 9)
        );
        assert_eq!(
            env.block.and_then(|b| b.hash),
            Some(B256::repeat_byte(0xbb))
        );
    }

    #[test]
    fn a_v3_swap_takes_the_positive_delta_as_input_and_keeps_the_pool_state() {
        let raw = RawEvent::V3Swap(UniswapV3Pool::Swap {
            sender: Address::repeat_byte(1),
            recipient: Address::repeat_byte(2),
            amount0: I256::try_from(-4_000_i64).expect("fits"),
            amount1: I256::try_from(2_000_i64).expect("fits"),
            sqrtPriceX96: alloy_primitives::aliases::U160::from(1_u64 << 40),
            liquidity: 77,
            tick: alloy_primitives::aliases::I24::try_from(-5_i32).expect("fits"),
        });
        let env = normalize(raw, &meta(), &metadata()).expect("normalises");
        let DefiEvent::Swap(swap) = &env.event else {
            panic!("a swap")
        };
        assert_eq!(
            (swap.token_in, swap.amount_in.to_string()),
            (Address::repeat_byte(0x0b), "2000".into())
        );
        assert_eq!(swap.amount_out.to_string(), "4000");
        let v3 = swap.v3.as_ref().expect("v3 state");
        assert_eq!((v3.tick, v3.liquidity.to_string()), (-5, "77".into()));
    }

    #[test]
    fn lending_events_key_on_the_position_owner_and_unknown_tokens_are_refused() {
        let raw = RawEvent::AaveV2Deposit(AaveV2LendingPool::Deposit {
            reserve: Address::repeat_byte(0x0a),
            user: Address::repeat_byte(0xc1),
            onBehalfOf: Address::repeat_byte(0xc2),
            amount: U256::from(2_000_000_u64),
            referral: 0,
        });
        let env = normalize(raw, &meta(), &metadata()).expect("normalises");
        assert_eq!(env.partition_key(), Address::repeat_byte(0xc2));
        let DefiEvent::Deposit(flow) = &env.event else {
            panic!("a deposit")
        };
        assert_eq!(flow.counterparty, Some(Address::repeat_byte(0xc1)));
        assert_eq!(flow.reserve.symbol, "USDC");
        let unknown = RawEvent::AaveV2Repay(AaveV2LendingPool::Repay {
            reserve: Address::repeat_byte(0xee),
            user: Address::repeat_byte(0xc1),
            repayer: Address::repeat_byte(0xc1),
            amount: U256::from(1_u64),
        });
        let err = normalize(unknown, &meta(), &metadata()).expect_err("unknown token");
        assert!(err.contains("unknown token 0xeeee"), "{err}");
    }

    #[test]
    fn reserve_configurations_are_basis_points_and_anything_larger_is_refused() {
        use crate::rpc::abi::AaveReserves;
        let config = |threshold: u64| {
            RawEvent::CollateralConfigurationChanged(
                "aave_v2",
                AaveReserves::CollateralConfigurationChanged {
                    asset: Address::repeat_byte(0x0a),
                    ltv: U256::from(8000u64),
                    liquidationThreshold: U256::from(threshold),
                    liquidationBonus: U256::from(10500u64),
                },
            )
        };
        let env = normalize(config(8250), &meta(), &metadata()).expect("normalises");
        let DefiEvent::ReserveConfig(c) = &env.event else {
            panic!("a configuration")
        };
        assert_eq!(
            (c.ltv, c.liquidation_threshold, c.liquidation_bonus),
            (8000, 8250, 10500)
        );
        assert_eq!(c.reserve.symbol, "USDC");
        assert_eq!(env.partition_key(), meta().address);
        let err = normalize(config(1 << 20), &meta(), &metadata()).expect_err("too large");
        assert!(
            err.contains("liquidationThreshold 1048576 is not basis points"),
            "{err}"
        );
    }

    #[test]
    fn token_metadata_takes_strings_and_bytes32_strips_nul_and_keeps_empty_as_none() {
        use alloy_sol_types::SolValue as _;
        let string = |s: &str| s.to_owned().abi_encode();
        let mut mkr = [0u8; 32];
        mkr[..3].copy_from_slice(b"MKR");
        let decimals = U256::from(18u64).abi_encode();
        let (md, notes) = token_metadata(
            Some(&string("Tok\0en \u{1f9ea} 'q' \\s\\ tab\tnl\n")),
            Some(&mkr),
            Some(&decimals),
        );
        assert_eq!(
            md.name.as_deref(),
            Some("Token \u{1f9ea} 'q' \\s\\ tab\tnl\n")
        );
        assert_eq!(md.symbol.as_deref(), Some("MKR"));
        assert_eq!(md.decimals, Some(18));
        assert_eq!(
            notes,
            vec!["name() contains NUL bytes: stored without them".to_owned()]
        );
        // An empty symbol, a symbol of NULs only, a failed call and a decimals above 255.
        let big = U256::from(256u64).abi_encode();
        let (md, _) = token_metadata(Some(&string("")), Some(&string("\0\0")), Some(&big));
        assert_eq!(md, TokenMetadata::default());
        let (md, notes) = token_metadata(None, None, None);
        assert_eq!(md, TokenMetadata::default());
        assert!(notes.is_empty());
        assert_eq!(decode_text(&[1, 2, 3]), None);
    }

    #[test]
    fn a_transfer_keys_on_its_token_and_carries_the_tokens_metadata() {
        use crate::rpc::abi::Erc20;
        let mut md = metadata();
        let token = meta().address;
        md.erc20.insert(
            token,
            TokenMetadata {
                name: Some("Fixture".into()),
                symbol: None,
                decimals: Some(6),
            },
        );
        let raw = RawEvent::Erc20Transfer(Erc20::Transfer {
            from: Address::repeat_byte(1),
            to: Address::repeat_byte(2),
            value: U256::MAX,
        });
        let mut at = meta();
        at.log_index = 0xffff_fffc;
        let env = normalize(raw, &at, &md).expect("normalises");
        let DefiEvent::Transfer(t) = &env.event else {
            panic!("a transfer")
        };
        assert_eq!(t.value.0, U256::MAX);
        assert_eq!(t.metadata.decimals, Some(6));
        assert_eq!(env.partition_key(), token);
        assert_eq!(env.log_index, Some(0xffff_fffc));
        assert_eq!(env.event.topic(), chainfold_domain::TopicKind::Transfers);
    }
}
