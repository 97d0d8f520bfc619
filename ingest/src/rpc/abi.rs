//! The ABI of every event chainfold watches, as alloy `sol!` types, and the decoding of a raw
//! log into one of them.
//!
//! Aave V2 and V3 share some signatures (`Withdraw`, `LiquidationCall` have the same topic0), so
//! decoding needs to know what kind of contract emitted the log: that comes from the chain's
//! configuration (which addresses are V2 pools, V3 pools, pairs, feeds).

use alloy_primitives::{Log, B256};
use alloy_sol_types::{sol, SolEvent};

sol! {
    /// Uniswap V2 pair (and forks).
    #[derive(Debug, PartialEq, Eq)]
    interface UniswapV2Pair {
        event Swap(address indexed sender, uint256 amount0In, uint256 amount1In, uint256 amount0Out, uint256 amount1Out, address indexed to);
        event Sync(uint112 reserve0, uint112 reserve1);
        event Mint(address indexed sender, uint256 amount0, uint256 amount1);
        event Burn(address indexed sender, uint256 amount0, uint256 amount1, address indexed to);
    }

    /// Uniswap V3 pool.
    #[derive(Debug, PartialEq, Eq)]
    interface UniswapV3Pool {
        event Swap(address indexed sender, address indexed recipient, int256 amount0, int256 amount1, uint160 sqrtPriceX96, uint128 liquidity, int24 tick);
        event Mint(address sender, address indexed owner, int24 indexed tickLower, int24 indexed tickUpper, uint128 amount, uint256 amount0, uint256 amount1);
        event Burn(address indexed owner, int24 indexed tickLower, int24 indexed tickUpper, uint128 amount, uint256 amount0, uint256 amount1);
    }

    /// ERC-20 token. ERC-721 shares the topic0 with a third indexed topic; from a contract
    /// configured as `erc20_token` such a log does not fit and is dead-lettered.
    #[derive(Debug, PartialEq, Eq)]
    interface Erc20 {
        event Transfer(address indexed from, address indexed to, uint256 value);
    }

    /// Aave V2 LendingPool.
    #[derive(Debug, PartialEq, Eq)]
    interface AaveV2LendingPool {
        event Deposit(address indexed reserve, address user, address indexed onBehalfOf, uint256 amount, uint16 indexed referral);
        event Withdraw(address indexed reserve, address indexed user, address indexed to, uint256 amount);
        event Borrow(address indexed reserve, address user, address indexed onBehalfOf, uint256 amount, uint256 borrowRateMode, uint256 borrowRate, uint16 indexed referral);
        event Repay(address indexed reserve, address indexed user, address indexed repayer, uint256 amount);
        event LiquidationCall(address indexed collateralAsset, address indexed debtAsset, address indexed user, uint256 debtToCover, uint256 liquidatedCollateralAmount, address liquidator, bool receiveAToken);
        event FlashLoan(address indexed target, address indexed initiator, address indexed asset, uint256 amount, uint256 premium, uint16 referralCode);
    }

    /// What Aave V2 and V3 pools (and, for the configuration, their configurators) say about
    /// reserves and collateral use; the signatures are the same in both versions.
    #[derive(Debug, PartialEq, Eq)]
    interface AaveReserves {
        event ReserveDataUpdated(address indexed reserve, uint256 liquidityRate, uint256 stableBorrowRate, uint256 variableBorrowRate, uint256 liquidityIndex, uint256 variableBorrowIndex);
        event ReserveUsedAsCollateralEnabled(address indexed reserve, address indexed user);
        event ReserveUsedAsCollateralDisabled(address indexed reserve, address indexed user);
        event CollateralConfigurationChanged(address indexed asset, uint256 ltv, uint256 liquidationThreshold, uint256 liquidationBonus);
    }

    /// Aave V3 efficiency mode (V3.0/3.1): categories and reserves' membership from the
    /// configurator, a user's category from the pool.
    #[derive(Debug, PartialEq, Eq)]
    interface AaveEMode {
        event EModeCategoryAdded(uint8 indexed categoryId, uint256 ltv, uint256 liquidationThreshold, uint256 liquidationBonus, address oracle, string label);
        event EModeAssetCategoryChanged(address indexed asset, uint8 oldCategoryId, uint8 newCategoryId);
        event UserEModeSet(address indexed user, uint8 categoryId);
    }

    /// Aave V3 isolation mode: a reserve's debt ceiling from the configurator, the total debt
    /// its isolated borrowers owe from the pool (both USD with 2 decimals).
    #[derive(Debug, PartialEq, Eq)]
    interface AaveIsolation {
        event DebtCeilingChanged(address indexed asset, uint256 oldDebtCeiling, uint256 newDebtCeiling);
        event IsolationModeTotalDebtUpdated(address indexed asset, uint256 totalDebt);
    }

    /// Aave V3 Pool.
    #[derive(Debug, PartialEq, Eq)]
    interface AaveV3Pool {
        event Supply(address indexed reserve, address user, address indexed onBehalfOf, uint256 amount, uint16 indexed referralCode);
        event Withdraw(address indexed reserve, address indexed user, address indexed to, uint256 amount);
        event Borrow(address indexed reserve, address user, address indexed onBehalfOf, uint256 amount, uint8 interestRateMode, uint256 borrowRate, uint16 indexed referralCode);
        event Repay(address indexed reserve, address indexed user, address indexed repayer, uint256 amount, bool useATokens);
        event LiquidationCall(address indexed collateralAsset, address indexed debtAsset, address indexed user, uint256 debtToCover, uint256 liquidatedCollateralAmount, address liquidator, bool receiveAToken);
        event FlashLoan(address indexed target, address initiator, address indexed asset, uint256 amount, uint8 interestRateMode, uint256 premium, uint16 indexed referralCode);
    }

    /// Chainlink aggregator.
    #[derive(Debug, PartialEq, Eq)]
    interface ChainlinkAggregator {
        event AnswerUpdated(int256 indexed current, uint256 indexed roundId, uint256 updatedAt);
    }

    /// Uniswap V2 factory.
    #[derive(Debug, PartialEq, Eq)]
    interface UniswapV2Factory {
        event PairCreated(address indexed token0, address indexed token1, address pair, uint256 count);
    }

    /// Uniswap V3 factory.
    #[derive(Debug, PartialEq, Eq)]
    interface UniswapV3Factory {
        event PoolCreated(address indexed token0, address indexed token1, uint24 indexed fee, int24 tickSpacing, address pool);
    }
}

/// What kind of factory announces pools (from the chain's configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FactoryKind {
    UniswapV2,
    UniswapV3,
}

impl FactoryKind {
    pub const NAMES: [&'static str; 2] = ["uniswap_v2_factory", "uniswap_v3_factory"];

    pub fn parse(name: &str) -> Option<FactoryKind> {
        Some(match name {
            "uniswap_v2_factory" => FactoryKind::UniswapV2,
            "uniswap_v3_factory" => FactoryKind::UniswapV3,
            _ => return None,
        })
    }

    /// The kind of the contracts it creates.
    pub fn creates(self) -> ContractKind {
        match self {
            FactoryKind::UniswapV2 => ContractKind::UniswapV2Pair,
            FactoryKind::UniswapV3 => ContractKind::UniswapV3Pool,
        }
    }
}

/// A pool a factory announced: (pool, token0, token1).
pub fn decode_creation(
    kind: FactoryKind,
    log: &Log,
) -> Option<(
    alloy_primitives::Address,
    alloy_primitives::Address,
    alloy_primitives::Address,
)> {
    let topics = log.data.topics().iter().copied();
    match kind {
        FactoryKind::UniswapV2 => {
            UniswapV2Factory::PairCreated::decode_raw_log(topics, &log.data.data)
                .ok()
                .map(|e| (e.pair, e.token0, e.token1))
        }
        FactoryKind::UniswapV3 => {
            UniswapV3Factory::PoolCreated::decode_raw_log(topics, &log.data.data)
                .ok()
                .map(|e| (e.pool, e.token0, e.token1))
        }
    }
}

/// What kind of contract emitted a log (from the chain's configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ContractKind {
    UniswapV2Pair,
    UniswapV3Pool,
    AaveV2LendingPool,
    AaveV3Pool,
    ChainlinkAggregator,
    Erc20Token,
}

impl ContractKind {
    /// The names used in `chains.toml`.
    pub const NAMES: [&'static str; 6] = [
        "uniswap_v2_pair",
        "uniswap_v3_pool",
        "aave_v2_lending_pool",
        "aave_v3_pool",
        "chainlink_aggregator",
        "erc20_token",
    ];

    pub fn parse(name: &str) -> Option<ContractKind> {
        Some(match name {
            "uniswap_v2_pair" => ContractKind::UniswapV2Pair,
            "uniswap_v3_pool" => ContractKind::UniswapV3Pool,
            "aave_v2_lending_pool" => ContractKind::AaveV2LendingPool,
            "aave_v3_pool" => ContractKind::AaveV3Pool,
            "chainlink_aggregator" => ContractKind::ChainlinkAggregator,
            "erc20_token" => ContractKind::Erc20Token,
            _ => return None,
        })
    }

    /// The topic its events go to (and its malformed logs' DLQ).
    pub fn topic(self) -> chainfold_domain::TopicKind {
        match self {
            ContractKind::UniswapV2Pair | ContractKind::UniswapV3Pool => {
                chainfold_domain::TopicKind::Amm
            }
            ContractKind::AaveV2LendingPool | ContractKind::AaveV3Pool => {
                chainfold_domain::TopicKind::Lending
            }
            ContractKind::ChainlinkAggregator => chainfold_domain::TopicKind::Oracle,
            ContractKind::Erc20Token => chainfold_domain::TopicKind::Transfers,
        }
    }
}

/// A decoded log of a watched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawEvent {
    V2Swap(UniswapV2Pair::Swap),
    V2Sync(UniswapV2Pair::Sync),
    V2Mint(UniswapV2Pair::Mint),
    V2Burn(UniswapV2Pair::Burn),
    V3Swap(UniswapV3Pool::Swap),
    V3Mint(UniswapV3Pool::Mint),
    V3Burn(UniswapV3Pool::Burn),
    AaveV2Deposit(AaveV2LendingPool::Deposit),
    AaveV2Withdraw(AaveV2LendingPool::Withdraw),
    AaveV2Borrow(AaveV2LendingPool::Borrow),
    AaveV2Repay(AaveV2LendingPool::Repay),
    AaveV2LiquidationCall(AaveV2LendingPool::LiquidationCall),
    AaveV2FlashLoan(AaveV2LendingPool::FlashLoan),
    AaveV3Supply(AaveV3Pool::Supply),
    AaveV3Withdraw(AaveV3Pool::Withdraw),
    AaveV3Borrow(AaveV3Pool::Borrow),
    AaveV3Repay(AaveV3Pool::Repay),
    AaveV3LiquidationCall(AaveV3Pool::LiquidationCall),
    AaveV3FlashLoan(AaveV3Pool::FlashLoan),
    AnswerUpdated(ChainlinkAggregator::AnswerUpdated),
    /// From a V2 or V3 pool: the protocol name comes from the contract kind.
    ReserveDataUpdated(&'static str, AaveReserves::ReserveDataUpdated),
    CollateralEnabled(&'static str, AaveReserves::ReserveUsedAsCollateralEnabled),
    CollateralDisabled(&'static str, AaveReserves::ReserveUsedAsCollateralDisabled),
    CollateralConfigurationChanged(&'static str, AaveReserves::CollateralConfigurationChanged),
    EModeCategoryAdded(&'static str, AaveEMode::EModeCategoryAdded),
    EModeAssetCategoryChanged(&'static str, AaveEMode::EModeAssetCategoryChanged),
    UserEModeSet(&'static str, AaveEMode::UserEModeSet),
    DebtCeilingChanged(&'static str, AaveIsolation::DebtCeilingChanged),
    IsolationModeTotalDebtUpdated(&'static str, AaveIsolation::IsolationModeTotalDebtUpdated),
    Erc20Transfer(Erc20::Transfer),
}

/// Why a log did not decode. `Unwatched` logs are skipped; `Malformed` ones (a watched topic0
/// whose topics or data do not fit the ABI) go to the DLQ with this reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("log has no topics (anonymous events are not watched)")]
    NoTopics,
    #[error("topic0 {topic0} is not a watched event of a {kind:?} contract")]
    Unwatched { kind: ContractKind, topic0: B256 },
    #[error("could not decode {event} log: {reason}")]
    Malformed { event: &'static str, reason: String },
}

fn decode<E: SolEvent>(log: &Log) -> Result<E, DecodeError> {
    E::decode_raw_log(log.data.topics().iter().copied(), &log.data.data).map_err(|e| {
        DecodeError::Malformed {
            event: E::SIGNATURE,
            reason: e.to_string(),
        }
    })
}

/// Decodes `log`, emitted by a contract of `kind`.
pub fn decode_log(kind: ContractKind, log: &Log) -> Result<RawEvent, DecodeError> {
    let topic0 = *log.data.topics().first().ok_or(DecodeError::NoTopics)?;
    macro_rules! by_topic0 {
        ($($event:ty => $variant:ident),+ $(,)?) => {{
            $(if topic0 == <$event>::SIGNATURE_HASH {
                return decode::<$event>(log).map(RawEvent::$variant);
            })+
        }};
    }
    macro_rules! reserves {
        ($protocol:literal) => {{
            if topic0 == AaveReserves::ReserveDataUpdated::SIGNATURE_HASH {
                return decode(log).map(|e| RawEvent::ReserveDataUpdated($protocol, e));
            }
            if topic0 == AaveReserves::ReserveUsedAsCollateralEnabled::SIGNATURE_HASH {
                return decode(log).map(|e| RawEvent::CollateralEnabled($protocol, e));
            }
            if topic0 == AaveReserves::ReserveUsedAsCollateralDisabled::SIGNATURE_HASH {
                return decode(log).map(|e| RawEvent::CollateralDisabled($protocol, e));
            }
            if topic0 == AaveReserves::CollateralConfigurationChanged::SIGNATURE_HASH {
                return decode(log).map(|e| RawEvent::CollateralConfigurationChanged($protocol, e));
            }
            // E-mode is V3's; a V2-signature pool that emits these (the fixture) is read the same.
            if topic0 == AaveEMode::EModeCategoryAdded::SIGNATURE_HASH {
                return decode(log).map(|e| RawEvent::EModeCategoryAdded($protocol, e));
            }
            if topic0 == AaveEMode::EModeAssetCategoryChanged::SIGNATURE_HASH {
                return decode(log).map(|e| RawEvent::EModeAssetCategoryChanged($protocol, e));
            }
            if topic0 == AaveEMode::UserEModeSet::SIGNATURE_HASH {
                return decode(log).map(|e| RawEvent::UserEModeSet($protocol, e));
            }
            if topic0 == AaveIsolation::DebtCeilingChanged::SIGNATURE_HASH {
                return decode(log).map(|e| RawEvent::DebtCeilingChanged($protocol, e));
            }
            if topic0 == AaveIsolation::IsolationModeTotalDebtUpdated::SIGNATURE_HASH {
                return decode(log).map(|e| RawEvent::IsolationModeTotalDebtUpdated($protocol, e));
            }
        }};
    }
    match kind {
        ContractKind::UniswapV2Pair => by_topic0!(
            UniswapV2Pair::Swap => V2Swap,
            UniswapV2Pair::Sync => V2Sync,
            UniswapV2Pair::Mint => V2Mint,
            UniswapV2Pair::Burn => V2Burn,
        ),
        ContractKind::UniswapV3Pool => by_topic0!(
            UniswapV3Pool::Swap => V3Swap,
            UniswapV3Pool::Mint => V3Mint,
            UniswapV3Pool::Burn => V3Burn,
        ),
        ContractKind::AaveV2LendingPool => {
            reserves!("aave_v2");
            by_topic0!(
            AaveV2LendingPool::Deposit => AaveV2Deposit,
            AaveV2LendingPool::Withdraw => AaveV2Withdraw,
            AaveV2LendingPool::Borrow => AaveV2Borrow,
            AaveV2LendingPool::Repay => AaveV2Repay,
            AaveV2LendingPool::LiquidationCall => AaveV2LiquidationCall,
            AaveV2LendingPool::FlashLoan => AaveV2FlashLoan,
            )
        }
        ContractKind::AaveV3Pool => {
            reserves!("aave_v3");
            by_topic0!(
            AaveV3Pool::Supply => AaveV3Supply,
            AaveV3Pool::Withdraw => AaveV3Withdraw,
            AaveV3Pool::Borrow => AaveV3Borrow,
            AaveV3Pool::Repay => AaveV3Repay,
            AaveV3Pool::LiquidationCall => AaveV3LiquidationCall,
            AaveV3Pool::FlashLoan => AaveV3FlashLoan,
            )
        }
        ContractKind::ChainlinkAggregator => by_topic0!(
            ChainlinkAggregator::AnswerUpdated => AnswerUpdated,
        ),
        ContractKind::Erc20Token => by_topic0!(
            Erc20::Transfer => Erc20Transfer,
        ),
    }
    Err(DecodeError::Unwatched { kind, topic0 })
}

#[cfg(test)]
mod tests {
    use alloy_primitives::{address, b256, Address, I256, U256};

    use super::*;

    fn log_of<E: SolEvent>(event: &E) -> Log {
        Log {
            address: Address::repeat_byte(0x99),
            data: event.encode_log_data(),
        }
    }

    #[test]
    fn topic0s_are_the_mainnet_event_signatures() {
        // Values as they appear on mainnet (Etherscan event logs of the canonical contracts).
        assert_eq!(
            UniswapV2Pair::Swap::SIGNATURE_HASH,
            b256!("d78ad95fa46c994b6551d0da85fc275fe613ce37657fb8d5e3d130840159d822")
        );
        assert_eq!(
            UniswapV2Pair::Sync::SIGNATURE_HASH,
            b256!("1c411e9a96e071241c2f21f7726b17ae89e3cab4c78be50e062b03a9fffbbad1")
        );
        assert_eq!(
            UniswapV3Pool::Swap::SIGNATURE_HASH,
            b256!("c42079f94a6350d7e6235f29174924f928cc2ac818eb64fed8004e115fbcca67")
        );
        assert_eq!(
            AaveV2LendingPool::LiquidationCall::SIGNATURE_HASH,
            b256!("e413a321e8681d831f4dbccbca790d2952b56f977908e45be37335533e005286")
        );
        assert_eq!(
            ChainlinkAggregator::AnswerUpdated::SIGNATURE_HASH,
            b256!("0559884fd3a460db3073b7fc896cc77986f16e378210ded43186175bf646fc5f")
        );
    }

    #[test]
    fn reserve_events_have_aaves_mainnet_topic0s_and_decode_from_v2_and_v3_pools() {
        // As on Etherscan for the Aave V2 LendingPool (0x7d2768de…) and its configurator.
        assert_eq!(
            AaveReserves::ReserveDataUpdated::SIGNATURE_HASH,
            b256!("804c9b842b2748a22bb64b345453a3de7ca54a6ca45ce00d415894979e22897a")
        );
        assert_eq!(
            AaveReserves::ReserveUsedAsCollateralEnabled::SIGNATURE_HASH,
            b256!("00058a56ea94653cdf4f152d227ace22d4c00ad99e2a43f58cb7d9e3feb295f2")
        );
        assert_eq!(
            AaveReserves::ReserveUsedAsCollateralDisabled::SIGNATURE_HASH,
            b256!("44c58d81365b66dd4b1a7f36c25aa97b8c71c361ee4937adc1a00000227db5dd")
        );
        let update = AaveReserves::ReserveDataUpdated {
            reserve: Address::repeat_byte(1),
            liquidityRate: U256::from(3u8),
            stableBorrowRate: U256::ZERO,
            variableBorrowRate: U256::from(5u8),
            liquidityIndex: U256::from(7u8),
            variableBorrowIndex: U256::from(9u8),
        };
        assert_eq!(
            decode_log(ContractKind::AaveV2LendingPool, &log_of(&update)),
            Ok(RawEvent::ReserveDataUpdated("aave_v2", update.clone()))
        );
        assert_eq!(
            decode_log(ContractKind::AaveV3Pool, &log_of(&update)),
            Ok(RawEvent::ReserveDataUpdated("aave_v3", update))
        );
        let off = AaveReserves::ReserveUsedAsCollateralDisabled {
            reserve: Address::repeat_byte(1),
            user: Address::repeat_byte(2),
        };
        assert!(matches!(
            decode_log(ContractKind::AaveV2LendingPool, &log_of(&off)),
            Ok(RawEvent::CollateralDisabled("aave_v2", _))
        ));
        // A pair does not emit them: unwatched there.
        assert!(matches!(
            decode_log(ContractKind::UniswapV2Pair, &log_of(&off)),
            Err(DecodeError::Unwatched { .. })
        ));
    }

    #[test]
    fn v2_and_v3_share_withdraw_and_liquidation_so_the_contract_kind_decides() {
        assert_eq!(
            AaveV2LendingPool::Withdraw::SIGNATURE_HASH,
            AaveV3Pool::Withdraw::SIGNATURE_HASH
        );
        assert_eq!(
            AaveV2LendingPool::LiquidationCall::SIGNATURE_HASH,
            AaveV3Pool::LiquidationCall::SIGNATURE_HASH
        );
        assert_ne!(
            AaveV2LendingPool::FlashLoan::SIGNATURE_HASH,
            AaveV3Pool::FlashLoan::SIGNATURE_HASH
        );
        let withdraw = AaveV3Pool::Withdraw {
            reserve: Address::repeat_byte(1),
            user: Address::repeat_byte(2),
            to: Address::repeat_byte(3),
            amount: U256::from(5_u64),
        };
        assert!(matches!(
            decode_log(ContractKind::AaveV3Pool, &log_of(&withdraw)),
            Ok(RawEvent::AaveV3Withdraw(_))
        ));
        assert!(matches!(
            decode_log(ContractKind::AaveV2LendingPool, &log_of(&withdraw)),
            Ok(RawEvent::AaveV2Withdraw(_))
        ));
    }

    #[test]
    fn every_watched_event_round_trips_through_a_raw_log() {
        let liquidation = AaveV2LendingPool::LiquidationCall {
            collateralAsset: address!("7ceb23fd6bc0add59e62ac25578270cff1b9f619"),
            debtAsset: address!("c2132d05d31c914a87c6611c10748aeb04b58e8f"),
            user: address!("000006eee6e39015cb523aebdd4d0b1855aba682"),
            debtToCover: U256::from(875_179_341_u64),
            liquidatedCollateralAmount: U256::from(385_099_628_754_132_506_u64),
            liquidator: address!("daef1aecb2f456060dcdcb7d704b715ff71c6727"),
            receiveAToken: false,
        };
        assert_eq!(
            decode_log(ContractKind::AaveV2LendingPool, &log_of(&liquidation)),
            Ok(RawEvent::AaveV2LiquidationCall(liquidation))
        );
        let swap = UniswapV3Pool::Swap {
            sender: Address::repeat_byte(1),
            recipient: Address::repeat_byte(2),
            amount0: I256::try_from(-1_000_000_i64).expect("fits"),
            amount1: I256::try_from(2_000_i64).expect("fits"),
            sqrtPriceX96: alloy_primitives::aliases::U160::from(1_u64 << 40),
            liquidity: 10_u128.pow(20),
            tick: alloy_primitives::aliases::I24::try_from(-887_000_i32).expect("fits"),
        };
        assert_eq!(
            decode_log(ContractKind::UniswapV3Pool, &log_of(&swap)),
            Ok(RawEvent::V3Swap(swap))
        );
        let sync = UniswapV2Pair::Sync {
            reserve0: alloy_primitives::aliases::U112::from(123_u64),
            reserve1: alloy_primitives::aliases::U112::from(456_u64),
        };
        assert_eq!(
            decode_log(ContractKind::UniswapV2Pair, &log_of(&sync)),
            Ok(RawEvent::V2Sync(sync))
        );
        let answer = ChainlinkAggregator::AnswerUpdated {
            current: I256::try_from(241_776_854_594_i64).expect("fits"),
            roundId: U256::from(7_u64),
            updatedAt: U256::from(1_621_433_382_u64),
        };
        assert_eq!(
            decode_log(ContractKind::ChainlinkAggregator, &log_of(&answer)),
            Ok(RawEvent::AnswerUpdated(answer))
        );
    }

    #[test]
    fn erc20_transfers_decode_and_an_erc721_shaped_transfer_is_malformed() {
        let transfer = Erc20::Transfer {
            from: Address::ZERO,
            to: Address::repeat_byte(7),
            value: U256::MAX,
        };
        let log = log_of(&transfer);
        assert_eq!(
            log.data.topics()[0],
            b256!("ddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef")
        );
        assert_eq!(
            decode_log(ContractKind::Erc20Token, &log),
            Ok(RawEvent::Erc20Transfer(transfer))
        );
        // ERC-721: the token id is a third indexed topic and there is no data.
        let mut topics = log.data.topics().to_vec();
        topics.push(B256::with_last_byte(42));
        let nft = Log {
            address: log.address,
            data: alloy_primitives::LogData::new_unchecked(topics, Default::default()),
        };
        let err = decode_log(ContractKind::Erc20Token, &nft).expect_err("an NFT transfer");
        assert!(
            matches!(
                err,
                DecodeError::Malformed {
                    event: "Transfer(address,address,uint256)",
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(
            ContractKind::parse("erc20_token"),
            Some(ContractKind::Erc20Token)
        );
        assert_eq!(
            ContractKind::Erc20Token.topic(),
            chainfold_domain::TopicKind::Transfers
        );
    }

    #[test]
    fn truncated_data_is_malformed_and_foreign_topics_are_unwatched() {
        let sync = UniswapV2Pair::Sync {
            reserve0: alloy_primitives::aliases::U112::from(1_u64),
            reserve1: alloy_primitives::aliases::U112::from(2_u64),
        };
        let mut log = log_of(&sync);
        let (topics, data) = (log.data.topics().to_vec(), log.data.data.slice(..40));
        log.data = alloy_primitives::LogData::new_unchecked(topics, data);
        let err = decode_log(ContractKind::UniswapV2Pair, &log).expect_err("too short");
        assert!(
            matches!(
                err,
                DecodeError::Malformed {
                    event: "Sync(uint112,uint112)",
                    ..
                }
            ),
            "{err}"
        );
        let err = decode_log(ContractKind::ChainlinkAggregator, &log_of(&sync))
            .expect_err("not a feed event");
        assert!(matches!(err, DecodeError::Unwatched { .. }));
        let empty = Log {
            address: Address::ZERO,
            data: alloy_primitives::LogData::new_unchecked(vec![], Default::default()),
        };
        assert_eq!(
            decode_log(ContractKind::UniswapV2Pair, &empty),
            Err(DecodeError::NoTopics)
        );
    }
}
