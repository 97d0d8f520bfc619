//! The collections of the query root (`wallets`, `positions`, `pools`, `poolStates`, `swaps`,
//! `lendingEvents`, `liquidations`, `scores`, `alerts`, `decisions`) and `_meta`, each with
//! Graph-style `where`, `orderBy`/`orderDirection`, Relay pagination, `totalCount`, and time
//! travel (see [`crate::collection`]).
//!
//! Time travel: `block: {number}` or `block: {hash}` answers as of the end of that block. Event
//! collections keep the rows of blocks at or before it; versioned entities (positions, pool
//! states, scores) are recomputed as of it (`lending_position_as_of`, the last `Sync` at or before
//! it, the last score from an event at or before it). `finality: SAFE | FINALIZED` drops what is
//! not yet that deep: event rows row by row (`chainfold_is_safe` / `chainfold_is_final`), versioned
//! entities by answering as of the chain's safe / finalized block.

use async_graphql::connection::{Connection, Edge, EmptyFields};
use async_graphql::{Context, Object, SimpleObject};
use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgPool, Postgres, QueryBuilder};

use crate::collection::{
    page, BlockHeight, Collection, EnumField, Field, Finality, Kind, OrderBy, OrderDirection,
    PageRequest, Spec, Where,
};
use crate::decisions::CreditDecision;
use crate::error::{gql, ApiError, ApiResult};
use crate::input::{page_size, parse_address};
use crate::risk::{alert_of, Alert, AlertRow, ALERT_COLUMNS};
use crate::types::{CreditScore, LendingAction, LendingEvent, Pool, ScoreRow, Wallet};

/// `totalCount` of a connection (counted only when asked for).
#[derive(SimpleObject, Debug, Clone, Default)]
pub struct Counted {
    /// Rows matching the filter, all pages.
    pub total_count: i64,
}

/// A page of a collection.
pub type Page<T> = Connection<String, T, Counted, EmptyFields>;

macro_rules! f {
    ($name:literal, $sql:literal, $kind:expr) => {
        Field {
            name: $name,
            sql: $sql,
            kind: $kind,
        }
    };
}

static LENDING_ACTION: EnumField = EnumField {
    type_name: "LendingAction",
    register: <LendingAction as async_graphql::InputType>::create_type_info,
    values: &[
        ("DEPOSIT", "deposit"),
        ("BORROW", "borrow"),
        ("REPAY", "repay"),
        ("REDEEM", "redeem"),
        ("LIQUIDATION", "liquidation"),
    ],
};
static SCORE_BAND: EnumField = EnumField {
    type_name: "ScoreBand",
    register: <crate::types::ScoreBand as async_graphql::InputType>::create_type_info,
    values: &[
        ("EXCELLENT", "EXCELLENT"),
        ("GOOD", "GOOD"),
        ("FAIR", "FAIR"),
        ("POOR", "POOR"),
        ("VERY_POOR", "VERY_POOR"),
    ],
};
static ALERT_KIND: EnumField = EnumField {
    type_name: "AlertKind",
    register: <crate::risk::AlertKind as async_graphql::InputType>::create_type_info,
    values: &[
        ("SANDWICH", "SANDWICH"),
        ("FLASH_LOAN_ATTACK", "FLASH_LOAN_ATTACK"),
        ("LIQUIDITY_DRAIN", "LIQUIDITY_DRAIN"),
        ("POOL_ANOMALY", "POOL_ANOMALY"),
        ("LIQUIDITY_SHORTAGE", "LIQUIDITY_SHORTAGE"),
    ],
};
static SEVERITY: EnumField = EnumField {
    type_name: "Severity",
    register: <crate::risk::Severity as async_graphql::InputType>::create_type_info,
    values: &[
        ("LOW", "LOW"),
        ("MEDIUM", "MEDIUM"),
        ("HIGH", "HIGH"),
        ("CRITICAL", "CRITICAL"),
    ],
};
static OUTCOME: EnumField = EnumField {
    type_name: "DecisionOutcome",
    register: <crate::decisions::DecisionOutcome as async_graphql::InputType>::create_type_info,
    values: &[
        ("APPROVE", "APPROVE"),
        ("REJECT", "REJECT"),
        ("ADJUST_COLLATERAL", "ADJUST_COLLATERAL"),
    ],
};
static TRIGGER: EnumField = EnumField {
    type_name: "DecisionTrigger",
    register: <crate::decisions::DecisionTrigger as async_graphql::InputType>::create_type_info,
    values: &[("REQUEST", "REQUEST"), ("BAND_CHANGE", "BAND_CHANGE")],
};

impl Collection for LendingEvent {
    const SPEC: &'static Spec = &Spec {
        filter_type: "LendingEvent_filter",
        order_type: "LendingEvent_orderBy",
        fields: &[
            f!("eventId", "t.event_id", Kind::Text),
            f!("chainId", "t.chain_id", Kind::Int),
            f!("wallet", "t.wallet", Kind::Hex),
            f!("action", "t.action", Kind::Enum(&LENDING_ACTION)),
            f!("protocol", "t.protocol", Kind::Text),
            f!("reserve", "t.reserve", Kind::Hex),
            f!("symbol", "t.symbol", Kind::Text),
            f!("amount", "t.amount", Kind::Numeric),
            f!("amountUsd", "t.amount_usd", Kind::Numeric),
            f!("blockNumber", "t.block_number", Kind::Int),
            f!("blockTime", "t.block_time", Kind::Time),
            f!("txHash", "t.tx_hash", Kind::Hex),
        ],
        key: "t.event_id",
        default_order: Some("blockTime"),
        default_desc: true,
    };
}

impl Collection for CreditScore {
    const SPEC: &'static Spec = &Spec {
        filter_type: "CreditScore_filter",
        order_type: "CreditScore_orderBy",
        fields: &[
            f!("chainId", "t.chain_id", Kind::Int),
            f!("wallet", "t.wallet", Kind::Hex),
            f!("score", "t.score", Kind::Int),
            f!("band", "t.band", Kind::Enum(&SCORE_BAND)),
            f!(
                "probabilityOfDefault",
                "t.probability_of_liquidation",
                Kind::Float
            ),
            f!("healthFactor", "t.health_factor", Kind::Float),
            f!("computedAt", "t.computed_at", Kind::Time),
            f!("blockNumber", "t.block_number", Kind::Int),
            f!("modelVersion", "t.model_version", Kind::Text),
            f!("eventId", "t.event_id", Kind::Text),
        ],
        key: "lpad(t.id::text, 19, '0')",
        default_order: None,
        default_desc: true,
    };
}

impl Collection for Alert {
    const SPEC: &'static Spec = &Spec {
        filter_type: "Alert_filter",
        order_type: "Alert_orderBy",
        fields: &[
            f!("id", "t.id", Kind::Text),
            f!("kind", "t.kind", Kind::Enum(&ALERT_KIND)),
            f!("severity", "t.severity", Kind::Enum(&SEVERITY)),
            f!("chainId", "t.chain_id", Kind::Int),
            f!("blockNumber", "t.block_number", Kind::Int),
            f!("usd", "t.usd", Kind::Float),
            f!("detectedAt", "t.detected_at", Kind::Time),
            f!("detectorVersion", "t.detector_version", Kind::Text),
            f!("pools", "t.pools", Kind::HexList),
            f!("addresses", "t.addresses", Kind::HexList),
            f!("txHashes", "t.tx_hashes", Kind::HexList),
        ],
        key: "lpad(t.seq::text, 19, '0')",
        default_order: None,
        default_desc: true,
    };
}

impl Collection for CreditDecision {
    const SPEC: &'static Spec = &Spec {
        filter_type: "CreditDecision_filter",
        order_type: "CreditDecision_orderBy",
        fields: &[
            f!("id", "t.id", Kind::Text),
            f!("chainId", "t.chain_id", Kind::Int),
            f!("wallet", "t.wallet", Kind::Hex),
            f!("trigger", "t.trigger", Kind::Enum(&TRIGGER)),
            f!("outcome", "t.outcome", Kind::Enum(&OUTCOME)),
            f!("amountUsd", "t.amount_usd", Kind::Float),
            f!("score", "t.score", Kind::Int),
            f!("band", "t.band", Kind::Enum(&SCORE_BAND)),
            f!("policyVersion", "t.policy_version", Kind::Text),
            f!("decidedAt", "t.decided_at", Kind::Time),
            f!("txHash", "t.tx_hash", Kind::Hex),
        ],
        key: "lpad(t.seq::text, 19, '0')",
        default_order: None,
        default_desc: true,
    };
}

impl Collection for Pool {
    const SPEC: &'static Spec = &Spec {
        filter_type: "Pool_filter",
        order_type: "Pool_orderBy",
        fields: &[
            f!("chainId", "t.chain_id", Kind::Int),
            f!("address", "t.pool", Kind::Hex),
            f!("protocol", "t.protocol", Kind::Text),
            f!("swapCount", "t.swap_count", Kind::Int),
            f!("revertedCount", "t.reverted_count", Kind::Int),
            f!("firstBlock", "t.first_block", Kind::Int),
            f!("lastBlock", "t.last_block", Kind::Int),
        ],
        key: "lpad(t.chain_id::text, 19, '0') || ':' || t.pool",
        default_order: Some("swapCount"),
        default_desc: true,
    };
}

/// One swap hop through a pool.
#[derive(SimpleObject, FromRow, Debug, Clone)]
pub struct Swap {
    pub event_id: String,
    pub chain_id: i64,
    pub pool: String,
    pub protocol: String,
    pub block_number: Option<i64>,
    pub tx_hash: Option<String>,
    pub log_index: Option<i32>,
    pub block_time: Option<DateTime<Utc>>,
    pub sender: String,
    pub recipient: String,
    pub token_in: String,
    /// Raw base units, an integer string.
    pub amount_in: String,
    pub token_out: String,
    pub amount_out: String,
    /// The recorded call reverted (the swap moved nothing).
    pub reverted: bool,
}

const SWAP_COLUMNS: &str = "t.event_id, t.chain_id, t.pool, t.protocol, t.block_number, t.tx_hash, t.log_index, t.block_time, t.sender, t.recipient, t.token_in, t.amount_in::text AS amount_in, t.token_out, t.amount_out::text AS amount_out, t.reverted";

impl Collection for Swap {
    const SPEC: &'static Spec = &Spec {
        filter_type: "Swap_filter",
        order_type: "Swap_orderBy",
        fields: &[
            f!("eventId", "t.event_id", Kind::Text),
            f!("chainId", "t.chain_id", Kind::Int),
            f!("pool", "t.pool", Kind::Hex),
            f!("protocol", "t.protocol", Kind::Text),
            f!("blockNumber", "t.block_number", Kind::Int),
            f!("txHash", "t.tx_hash", Kind::Hex),
            f!("logIndex", "t.log_index", Kind::Int),
            f!("blockTime", "t.block_time", Kind::Time),
            f!("sender", "t.sender", Kind::Hex),
            f!("recipient", "t.recipient", Kind::Hex),
            f!("tokenIn", "t.token_in", Kind::Hex),
            f!("amountIn", "t.amount_in", Kind::Numeric),
            f!("tokenOut", "t.token_out", Kind::Hex),
            f!("amountOut", "t.amount_out", Kind::Numeric),
            f!("reverted", "t.reverted", Kind::Bool),
        ],
        key: "t.event_id",
        default_order: Some("blockNumber"),
        default_desc: true,
    };
}

/// A liquidation with both sides.
#[derive(SimpleObject, FromRow, Debug, Clone)]
pub struct Liquidation {
    pub event_id: String,
    pub chain_id: i64,
    /// The liquidated wallet.
    pub wallet: String,
    pub liquidator: Option<String>,
    pub collateral_reserve: Option<String>,
    pub collateral_symbol: Option<String>,
    /// Collateral seized, raw base units.
    pub collateral_amount: Option<String>,
    pub collateral_usd: Option<String>,
    pub debt_reserve: String,
    pub debt_symbol: String,
    /// Debt covered, raw base units.
    pub debt_covered: String,
    pub debt_usd: Option<String>,
    pub block_number: Option<i64>,
    pub block_time: Option<DateTime<Utc>>,
    pub tx_hash: Option<String>,
}

const LIQUIDATION_COLUMNS: &str = "t.event_id, t.chain_id, t.wallet, t.liquidator, t.collateral_reserve, t.collateral_symbol, t.collateral_amount::text AS collateral_amount, t.collateral_usd::text AS collateral_usd, t.debt_reserve, t.debt_symbol, t.debt_covered::text AS debt_covered, t.debt_usd::text AS debt_usd, t.block_number, t.block_time, t.tx_hash";

impl Collection for Liquidation {
    const SPEC: &'static Spec = &Spec {
        filter_type: "Liquidation_filter",
        order_type: "Liquidation_orderBy",
        fields: &[
            f!("eventId", "t.event_id", Kind::Text),
            f!("chainId", "t.chain_id", Kind::Int),
            f!("wallet", "t.wallet", Kind::Hex),
            f!("liquidator", "t.liquidator", Kind::Hex),
            f!("collateralReserve", "t.collateral_reserve", Kind::Hex),
            f!("collateralSymbol", "t.collateral_symbol", Kind::Text),
            f!("collateralAmount", "t.collateral_amount", Kind::Numeric),
            f!("collateralUsd", "t.collateral_usd", Kind::Numeric),
            f!("debtReserve", "t.debt_reserve", Kind::Hex),
            f!("debtSymbol", "t.debt_symbol", Kind::Text),
            f!("debtCovered", "t.debt_covered", Kind::Numeric),
            f!("debtUsd", "t.debt_usd", Kind::Numeric),
            f!("blockNumber", "t.block_number", Kind::Int),
            f!("blockTime", "t.block_time", Kind::Time),
            f!("txHash", "t.tx_hash", Kind::Hex),
        ],
        key: "t.event_id",
        default_order: Some("blockTime"),
        default_desc: true,
    };
}

/// A lending position: one wallet's principal in one reserve (deposits − redeems − seized
/// collateral; borrows − repays − covered debt; no interest index, see `docs/sql.md`).
#[derive(SimpleObject, FromRow, Debug, Clone)]
#[graphql(complex)]
pub struct Position {
    pub chain_id: i64,
    pub protocol: String,
    pub wallet: String,
    pub reserve: String,
    pub symbol: String,
    pub decimals: i16,
    /// Raw base units (negative when repaid interest exceeded principal).
    pub collateral: String,
    pub debt: String,
    /// The block of the position's last change.
    pub last_block: Option<i64>,
}

const POSITION_COLUMNS: &str = "t.chain_id, t.protocol, t.wallet, t.reserve, t.symbol, t.decimals, t.collateral::text AS collateral, t.variable_debt::text AS debt, t.last_block";

impl Collection for Position {
    const SPEC: &'static Spec = &Spec {
        filter_type: "Position_filter",
        order_type: "Position_orderBy",
        fields: &[
            f!("chainId", "t.chain_id", Kind::Int),
            f!("protocol", "t.protocol", Kind::Text),
            f!("wallet", "t.wallet", Kind::Hex),
            f!("reserve", "t.reserve", Kind::Hex),
            f!("symbol", "t.symbol", Kind::Text),
            f!("collateral", "t.collateral", Kind::Numeric),
            f!("debt", "t.variable_debt", Kind::Numeric),
            f!("lastBlock", "t.last_block", Kind::Int),
        ],
        key: "lpad(t.chain_id::text, 19, '0') || ':' || t.wallet || ':' || t.reserve || ':' || t.protocol",
        default_order: Some("debt"),
        default_desc: true,
    };
}

/// A constant-product pool's reserves after its last `Sync` (as of a block, with `block`).
#[derive(SimpleObject, FromRow, Debug, Clone)]
pub struct PoolState {
    pub chain_id: i64,
    pub pool: String,
    pub token0: String,
    pub token1: String,
    /// Raw base units, integer strings.
    pub reserve0: String,
    pub reserve1: String,
    pub block_number: Option<i64>,
}

const POOL_STATE_COLUMNS: &str = "t.chain_id, t.pool, t.token0, t.token1, t.reserve0::text AS reserve0, t.reserve1::text AS reserve1, t.block_number";

impl Collection for PoolState {
    const SPEC: &'static Spec = &Spec {
        filter_type: "PoolState_filter",
        order_type: "PoolState_orderBy",
        fields: &[
            f!("chainId", "t.chain_id", Kind::Int),
            f!("pool", "t.pool", Kind::Hex),
            f!("token0", "t.token0", Kind::Hex),
            f!("token1", "t.token1", Kind::Hex),
            f!("reserve0", "t.reserve0", Kind::Numeric),
            f!("reserve1", "t.reserve1", Kind::Numeric),
            f!("blockNumber", "t.block_number", Kind::Int),
        ],
        key: "lpad(t.chain_id::text, 19, '0') || ':' || t.pool",
        default_order: Some("pool"),
        default_desc: false,
    };
}

impl Collection for Wallet {
    const SPEC: &'static Spec = &Spec {
        filter_type: "Wallet_filter",
        order_type: "Wallet_orderBy",
        fields: &[
            f!("chainId", "t.chain_id", Kind::Int),
            f!("address", "t.wallet", Kind::Hex),
            f!("eventCount", "t.event_count", Kind::Int),
            f!("depositCount", "t.deposit_count", Kind::Int),
            f!("borrowCount", "t.borrow_count", Kind::Int),
            f!("repayCount", "t.repay_count", Kind::Int),
            f!("liquidationCount", "t.liquidation_count", Kind::Int),
            f!("depositUsd", "t.deposit_usd", Kind::Numeric),
            f!("borrowUsd", "t.borrow_usd", Kind::Numeric),
            f!("firstActivityAt", "t.first_at", Kind::Time),
            f!("lastActivityAt", "t.last_at", Kind::Time),
        ],
        key: "lpad(t.chain_id::text, 19, '0') || ':' || t.wallet",
        default_order: Some("lastActivityAt"),
        default_desc: true,
    };
}

/// Per-wallet totals the `wallets` collection filters on.
const WALLETS_FROM: &str = "(SELECT chain_id, wallet,
        sum(event_count)::int8 AS event_count,
        coalesce(sum(event_count) FILTER (WHERE action = 'deposit'), 0)::int8 AS deposit_count,
        coalesce(sum(event_count) FILTER (WHERE action = 'borrow'), 0)::int8 AS borrow_count,
        coalesce(sum(event_count) FILTER (WHERE action = 'repay'), 0)::int8 AS repay_count,
        coalesce(sum(event_count) FILTER (WHERE action = 'liquidation'), 0)::int8 AS liquidation_count,
        coalesce(sum(amount_usd) FILTER (WHERE action = 'deposit'), 0) AS deposit_usd,
        coalesce(sum(amount_usd) FILTER (WHERE action = 'borrow'), 0) AS borrow_usd,
        min(first_at) AS first_at, max(last_at) AS last_at
    FROM wallet_lending_summary";

/// A chain's head and depths (`_meta`).
#[derive(SimpleObject, Debug, Clone)]
pub struct ChainMeta {
    pub chain_id: i64,
    pub name: String,
    pub head: BlockMeta,
    /// The deepest block counted final: `confirmations` below the head.
    pub finalized: BlockNumber,
    /// Half the confirmations below the head.
    pub safe: BlockNumber,
    pub confirmations: i64,
}

/// A block of `_meta`.
#[derive(SimpleObject, Debug, Clone)]
pub struct BlockMeta {
    pub number: i64,
    pub hash: String,
    pub timestamp: Option<DateTime<Utc>>,
}

/// A block number.
#[derive(SimpleObject, Debug, Clone)]
pub struct BlockNumber {
    pub number: i64,
}

/// `_meta`: what chainfold has indexed.
#[derive(SimpleObject, Debug, Clone)]
pub struct Meta {
    /// Chains with a live head (recorded data sets have none: all of it is final).
    pub chains: Vec<ChainMeta>,
}

/// One point of an account's health-factor history: the health factor stored with a score.
#[derive(SimpleObject, FromRow, Debug, Clone)]
pub struct HealthFactorPoint {
    pub health_factor: f64,
    pub block_number: Option<i64>,
    /// The event's time.
    pub computed_at: Option<DateTime<Utc>>,
    /// The event the score (and this health factor) was computed at.
    pub event_id: String,
}

impl Collection for HealthFactorPoint {
    const SPEC: &'static Spec = &Spec {
        filter_type: "HealthFactorPoint_filter",
        order_type: "HealthFactorPoint_orderBy",
        fields: &[
            f!("healthFactor", "t.health_factor", Kind::Float),
            f!("blockNumber", "t.block_number", Kind::Int),
            f!("computedAt", "t.computed_at", Kind::Time),
            f!("eventId", "t.event_id", Kind::Text),
        ],
        key: "lpad(t.id::text, 19, '0')",
        default_order: None,
        default_desc: true,
    };
}

#[async_graphql::ComplexObject]
impl Position {
    /// The account's health factor at each of the wallet's scores on this chain, newest first
    /// unless ordered otherwise. Aave's health factor is the account's (all its reserves), so
    /// the positions of one wallet share it.
    #[graphql(complexity = "crate::cost::connection(first, child_complexity)")]
    async fn health_factor_history(
        &self,
        ctx: &Context<'_>,
        #[graphql(name = "where")] filter: Option<Where<HealthFactorPoint>>,
        order_by: Option<OrderBy<HealthFactorPoint>>,
        order_direction: Option<OrderDirection>,
        first: Option<i32>,
        after: Option<String>,
    ) -> ApiResult<Page<HealthFactorPoint>> {
        let scores = of_wallet("credit_score", self.chain_id, self.wallet.clone());
        let from = move |qb: &mut QueryBuilder<'_, Postgres>| {
            scores(qb);
            qb.push(" AND t.health_factor IS NOT NULL");
        };
        collect(
            ctx,
            Args {
                filter: filter.as_ref(),
                order_by,
                order_direction,
                first,
                after: after.as_deref(),
            },
            &from,
            "t.health_factor, t.block_number, t.computed_at, t.event_id",
            Some,
        )
        .await
    }
}

/// One `Sync` of a pool: its reserves after that log.
#[derive(SimpleObject, FromRow, Debug, Clone)]
pub struct PoolSyncPoint {
    /// Raw base units, integer strings.
    pub reserve0: String,
    pub reserve1: String,
    pub block_number: Option<i64>,
    pub block_time: Option<DateTime<Utc>>,
    pub tx_hash: Option<String>,
    pub log_index: Option<i32>,
}

impl Collection for PoolSyncPoint {
    const SPEC: &'static Spec = &Spec {
        filter_type: "PoolSyncPoint_filter",
        order_type: "PoolSyncPoint_orderBy",
        fields: &[
            f!("reserve0", "t.reserve0", Kind::Numeric),
            f!("reserve1", "t.reserve1", Kind::Numeric),
            f!("blockNumber", "t.block_number", Kind::Int),
            f!("blockTime", "t.block_time", Kind::Time),
            f!("txHash", "t.tx_hash", Kind::Hex),
        ],
        key: "lpad(t.seq::text, 19, '0')",
        default_order: None,
        default_desc: true,
    };
}

/// `pool.history`: the pool's reserves after each of its `Sync`s.
pub async fn pool_history(
    ctx: &Context<'_>,
    chain: i64,
    address: String,
    args: Args<'_, PoolSyncPoint>,
    block: Option<BlockHeight>,
) -> ApiResult<Page<PoolSyncPoint>> {
    let pool = ctx.data_unchecked::<PgPool>();
    let as_of = resolve_as_of(pool, Some(chain), block, None, false)
        .await
        .map_err(gql)?;
    let from = move |qb: &mut QueryBuilder<'_, Postgres>| {
        qb.push("pool_sync t WHERE t.chain_id = ");
        qb.push_bind(chain);
        qb.push(" AND t.pool = ");
        qb.push_bind(address.clone());
        if let Some(b) = as_of.block {
            qb.push(" AND t.block_number <= ");
            qb.push_bind(b);
        }
    };
    collect(
        ctx,
        args,
        &from,
        "t.reserve0::text AS reserve0, t.reserve1::text AS reserve1, t.block_number, t.block_time, t.tx_hash, t.log_index",
        Some,
    )
    .await
}

/// Common arguments: where the rows of a time-travel query stop.
#[derive(Debug, Default, Clone, Copy)]
pub struct AsOf {
    /// Rows of blocks after this are left out / entities are recomputed as of it.
    pub block: Option<i64>,
    pub finality: Finality,
}

/// Resolves `block` and `finality` for a collection on `chain_id`.
pub async fn resolve_as_of(
    pool: &PgPool,
    chain_id: Option<i64>,
    block: Option<BlockHeight>,
    finality: Option<Finality>,
    versioned: bool,
) -> Result<AsOf, ApiError> {
    let finality = finality.unwrap_or_default();
    let needs_chain = block.is_some() || (versioned && finality != Finality::Latest);
    let chain = match (chain_id, needs_chain) {
        (Some(c), _) => c,
        (None, false) => {
            return Ok(AsOf {
                block: None,
                finality,
            })
        }
        (None, true) => return Err(ApiError::BadUserInput(
            "time travel (block, or finality on positions, pool states and scores) needs chainId"
                .into(),
        )),
    };
    let head = chainfold_store::blocks::head_of(pool, chain).await?;
    let mut at = match block {
        None => None,
        Some(BlockHeight {
            number: Some(n),
            hash: None,
        }) => {
            if n < 0 {
                return Err(ApiError::BadUserInput(format!(
                    "block number {n} is negative"
                )));
            }
            Some(n)
        }
        Some(BlockHeight {
            number: None,
            hash: Some(h),
        }) => {
            let h = h.trim().to_ascii_lowercase();
            let n = chainfold_store::blocks::number_of_hash(pool, chain, &h).await?;
            Some(n.ok_or_else(|| {
                ApiError::BadUserInput(format!(
                    "block {h} is not known on chain {chain} (never indexed, or orphaned by a reorg)"
                ))
            })?)
        }
        Some(_) => {
            return Err(ApiError::BadUserInput(
                "block takes a number or a hash, exactly one".into(),
            ))
        }
    };
    if let (Some(n), Some((head, _))) = (at, head) {
        if n > head {
            return Err(ApiError::BadUserInput(format!(
                "block {n} is after chain {chain}'s indexed head {head}"
            )));
        }
    }
    if versioned {
        if let Some((number, confirmations)) = head {
            let depth = match finality {
                Finality::Latest => None,
                Finality::Safe => Some((confirmations + 1) / 2),
                Finality::Finalized => Some(confirmations),
            };
            if let Some(depth) = depth {
                let deepest = number - depth;
                at = Some(at.map_or(deepest, |a| a.min(deepest)));
            }
        }
    }
    Ok(AsOf {
        block: at,
        finality,
    })
}

/// Appends ` AND` conditions for an event collection's chain, block and finality.
fn push_event_scope(
    qb: &mut QueryBuilder<'_, Postgres>,
    chain_id: Option<i64>,
    as_of: AsOf,
    block_col: &str,
) {
    if let Some(c) = chain_id {
        qb.push(" AND t.chain_id = ");
        qb.push_bind(c);
    }
    if let Some(b) = as_of.block {
        qb.push(format_args!(" AND t.{block_col} <= "));
        qb.push_bind(b);
    }
    match as_of.finality {
        Finality::Latest => {}
        Finality::Safe => {
            qb.push(format_args!(
                " AND chainfold_is_safe(t.chain_id, t.{block_col})"
            ));
        }
        Finality::Finalized => {
            qb.push(format_args!(
                " AND chainfold_is_final(t.chain_id, t.{block_col})"
            ));
        }
    }
}

/// The FROM clause of one wallet's rows of `table` (alias `t`).
pub(crate) fn of_wallet(
    table: &'static str,
    chain: i64,
    wallet: String,
) -> impl Fn(&mut QueryBuilder<'_, Postgres>) + Sync {
    move |qb| {
        qb.push(format_args!("{table} t WHERE t.chain_id = "));
        qb.push_bind(chain);
        qb.push(" AND t.wallet = ");
        qb.push_bind(wallet.clone());
    }
}

/// Whether the selection asks for `totalCount`.
fn wants_total(ctx: &Context<'_>) -> bool {
    ctx.look_ahead().field("totalCount").exists()
}

/// The arguments every collection takes, resolved.
#[derive(Debug)]
pub struct Args<'a, C: Collection> {
    pub filter: Option<&'a Where<C>>,
    pub order_by: Option<OrderBy<C>>,
    pub order_direction: Option<OrderDirection>,
    pub first: Option<i32>,
    pub after: Option<&'a str>,
}

/// Reads one page of `C` and maps its rows with `map`.
pub async fn collect<C, R>(
    ctx: &Context<'_>,
    args: Args<'_, C>,
    from: &(dyn Fn(&mut QueryBuilder<'_, Postgres>) + Sync),
    columns: &str,
    map: impl Fn(R) -> Option<C>,
) -> ApiResult<Page<C>>
where
    C: Collection + async_graphql::OutputType,
    R: for<'r> FromRow<'r, sqlx::postgres::PgRow>,
{
    let first = page_size(args.first, 100).map_err(gql)?;
    let pool = ctx.data_unchecked::<PgPool>();
    let total = wants_total(ctx);
    if total {
        crate::cost::charge_count(ctx)?;
    }
    let result = page(
        pool,
        C::SPEC,
        PageRequest {
            filter: args.filter.map(|w| &w.0),
            order: args.order_by.map(|o| o.0),
            direction: args.order_direction,
            first,
            after: args.after,
            total,
        },
        from,
        columns,
    )
    .await
    .map_err(gql)?;
    let mut connection = Connection::with_additional_fields(
        args.after.is_some(),
        result.has_next,
        Counted {
            total_count: result.total.unwrap_or_default(),
        },
    );
    for (row, cursor) in result.rows {
        let r = R::from_row(&row).map_err(|e| gql(ApiError::Internal(e)))?;
        if let Some(node) = map(r) {
            connection.edges.push(Edge::new(cursor, node));
        }
    }
    Ok(connection)
}

#[derive(FromRow)]
pub(crate) struct EventRow {
    event_id: String,
    chain_id: i64,
    wallet: String,
    action: String,
    protocol: String,
    reserve: String,
    symbol: String,
    amount: String,
    amount_usd: Option<String>,
    block_number: Option<i64>,
    block_time: Option<DateTime<Utc>>,
    tx_hash: Option<String>,
}

pub(crate) const EVENT_COLUMNS: &str = "t.event_id, t.chain_id, t.wallet, t.action, t.protocol, t.reserve, t.symbol, t.amount::text AS amount, t.amount_usd::text AS amount_usd, t.block_number, t.block_time, t.tx_hash";

pub(crate) fn event_of(r: EventRow) -> Option<LendingEvent> {
    Some(LendingEvent {
        action: LendingAction::from_db(&r.action)?,
        event_id: r.event_id,
        chain_id: r.chain_id,
        wallet: r.wallet,
        protocol: r.protocol,
        reserve: r.reserve,
        symbol: r.symbol,
        amount: r.amount,
        amount_usd: r.amount_usd,
        block_number: r.block_number,
        block_time: r.block_time,
        tx_hash: r.tx_hash,
    })
}

#[derive(FromRow)]
struct DecisionRow {
    record: serde_json::Value,
    tx_hash: Option<String>,
    tx_block: Option<i64>,
    actuation_error: Option<String>,
}

#[derive(FromRow)]
struct PoolRow {
    chain_id: i64,
    pool: String,
    protocol: String,
    swap_count: i64,
    reverted_count: i64,
    first_block: Option<i64>,
    last_block: Option<i64>,
}

#[derive(FromRow)]
struct WalletRow {
    chain_id: i64,
    wallet: String,
    first_at: Option<DateTime<Utc>>,
    last_at: Option<DateTime<Utc>>,
}

/// Parses an optional address argument.
fn address_arg(a: Option<String>) -> ApiResult<Option<String>> {
    a.map(|a| parse_address(&a).map_err(gql)).transpose()
}

/// The collections of the query root.
#[derive(Debug, Default)]
pub struct CollectionQuery;

#[Object]
impl CollectionQuery {
    /// Wallets with lending history, with per-action counts and USD totals to filter on.
    #[graphql(complexity = "crate::cost::connection(first, child_complexity)")]
    #[allow(clippy::too_many_arguments)]
    async fn wallets(
        &self,
        ctx: &Context<'_>,
        chain_id: Option<i64>,
        #[graphql(name = "where")] filter: Option<Where<Wallet>>,
        order_by: Option<OrderBy<Wallet>>,
        order_direction: Option<OrderDirection>,
        first: Option<i32>,
        after: Option<String>,
    ) -> ApiResult<Page<Wallet>> {
        let from = move |qb: &mut QueryBuilder<'_, Postgres>| {
            qb.push(WALLETS_FROM);
            if let Some(c) = chain_id {
                qb.push(" WHERE chain_id = ");
                qb.push_bind(c);
            }
            qb.push(" GROUP BY chain_id, wallet) t WHERE TRUE");
        };
        collect(
            ctx,
            Args {
                filter: filter.as_ref(),
                order_by,
                order_direction,
                first,
                after: after.as_deref(),
            },
            &from,
            "t.chain_id, t.wallet, t.first_at, t.last_at",
            |r: WalletRow| {
                Some(Wallet {
                    chain_id: r.chain_id,
                    address: r.wallet,
                    lending_summary: None,
                    first_activity_at: r.first_at,
                    last_activity_at: r.last_at,
                    alone: false,
                })
            },
        )
        .await
    }

    /// Lending positions (principal per wallet and reserve); `block`/`finality` recompute
    /// them as of that block (needs `chainId`).
    #[graphql(complexity = "crate::cost::connection(first, child_complexity)")]
    #[allow(clippy::too_many_arguments)]
    async fn positions(
        &self,
        ctx: &Context<'_>,
        chain_id: Option<i64>,
        #[graphql(name = "where")] filter: Option<Where<Position>>,
        order_by: Option<OrderBy<Position>>,
        order_direction: Option<OrderDirection>,
        first: Option<i32>,
        after: Option<String>,
        block: Option<BlockHeight>,
        finality: Option<Finality>,
    ) -> ApiResult<Page<Position>> {
        let pool = ctx.data_unchecked::<PgPool>();
        let as_of = resolve_as_of(pool, chain_id, block, finality, true)
            .await
            .map_err(gql)?;
        let from = move |qb: &mut QueryBuilder<'_, Postgres>| match (chain_id, as_of.block) {
            (Some(c), Some(b)) => {
                qb.push("(SELECT ");
                qb.push_bind(c);
                qb.push("::int8 AS chain_id, * FROM lending_position_as_of(");
                qb.push_bind(c);
                qb.push(", ");
                qb.push_bind(b);
                qb.push(")) t WHERE TRUE");
            }
            _ => {
                qb.push("lending_position t WHERE TRUE");
                if let Some(c) = chain_id {
                    qb.push(" AND t.chain_id = ");
                    qb.push_bind(c);
                }
            }
        };
        collect(
            ctx,
            Args {
                filter: filter.as_ref(),
                order_by,
                order_direction,
                first,
                after: after.as_deref(),
            },
            &from,
            POSITION_COLUMNS,
            Some,
        )
        .await
    }

    /// Constant-product pools' latest reserves; `block`/`finality` give them as of that block
    /// (needs `chainId`).
    #[graphql(complexity = "crate::cost::connection(first, child_complexity)")]
    #[allow(clippy::too_many_arguments)]
    async fn pool_states(
        &self,
        ctx: &Context<'_>,
        chain_id: Option<i64>,
        #[graphql(name = "where")] filter: Option<Where<PoolState>>,
        order_by: Option<OrderBy<PoolState>>,
        order_direction: Option<OrderDirection>,
        first: Option<i32>,
        after: Option<String>,
        block: Option<BlockHeight>,
        finality: Option<Finality>,
    ) -> ApiResult<Page<PoolState>> {
        let pool = ctx.data_unchecked::<PgPool>();
        let as_of = resolve_as_of(pool, chain_id, block, finality, true)
            .await
            .map_err(gql)?;
        let from = move |qb: &mut QueryBuilder<'_, Postgres>| match (chain_id, as_of.block) {
            (Some(c), Some(b)) => {
                qb.push("(SELECT ");
                qb.push_bind(c);
                qb.push("::int8 AS chain_id, * FROM pool_state_as_of(");
                qb.push_bind(c);
                qb.push(", ");
                qb.push_bind(b);
                qb.push(")) t WHERE TRUE");
            }
            _ => {
                qb.push("pool_state t WHERE TRUE");
                if let Some(c) = chain_id {
                    qb.push(" AND t.chain_id = ");
                    qb.push_bind(c);
                }
            }
        };
        collect(
            ctx,
            Args {
                filter: filter.as_ref(),
                order_by,
                order_direction,
                first,
                after: after.as_deref(),
            },
            &from,
            POOL_STATE_COLUMNS,
            Some,
        )
        .await
    }

    /// Pools with swaps, most swaps first unless ordered otherwise.
    #[graphql(complexity = "crate::cost::connection(first, child_complexity)")]
    #[allow(clippy::too_many_arguments)]
    async fn pools(
        &self,
        ctx: &Context<'_>,
        chain_id: Option<i64>,
        #[graphql(name = "where")] filter: Option<Where<Pool>>,
        order_by: Option<OrderBy<Pool>>,
        order_direction: Option<OrderDirection>,
        first: Option<i32>,
        after: Option<String>,
    ) -> ApiResult<Page<Pool>> {
        let from = move |qb: &mut QueryBuilder<'_, Postgres>| {
            qb.push("pool_summary t WHERE TRUE");
            if let Some(c) = chain_id {
                qb.push(" AND t.chain_id = ");
                qb.push_bind(c);
            }
        };
        collect(
            ctx,
            Args {
                filter: filter.as_ref(),
                order_by,
                order_direction,
                first,
                after: after.as_deref(),
            },
            &from,
            "t.chain_id, t.pool, t.protocol, t.swap_count, t.reverted_count, t.first_block, t.last_block",
            |r: PoolRow| {
                Some(Pool {
                    chain_id: r.chain_id,
                    address: r.pool,
                    protocol: r.protocol,
                    swap_count: r.swap_count,
                    reverted_count: r.reverted_count,
                    first_block: r.first_block,
                    last_block: r.last_block,
                    liquidity_cache: Default::default(),
                })
            },
        )
        .await
    }

    /// Swap hops, newest block first unless ordered otherwise.
    #[graphql(complexity = "crate::cost::connection(first, child_complexity)")]
    #[allow(clippy::too_many_arguments)]
    async fn swaps(
        &self,
        ctx: &Context<'_>,
        chain_id: Option<i64>,
        #[graphql(name = "where")] filter: Option<Where<Swap>>,
        order_by: Option<OrderBy<Swap>>,
        order_direction: Option<OrderDirection>,
        first: Option<i32>,
        after: Option<String>,
        block: Option<BlockHeight>,
        finality: Option<Finality>,
    ) -> ApiResult<Page<Swap>> {
        let pool = ctx.data_unchecked::<PgPool>();
        let as_of = resolve_as_of(pool, chain_id, block, finality, false)
            .await
            .map_err(gql)?;
        let from = move |qb: &mut QueryBuilder<'_, Postgres>| {
            qb.push("swap t WHERE TRUE");
            push_event_scope(qb, chain_id, as_of, "block_number");
        };
        collect(
            ctx,
            Args {
                filter: filter.as_ref(),
                order_by,
                order_direction,
                first,
                after: after.as_deref(),
            },
            &from,
            SWAP_COLUMNS,
            Some,
        )
        .await
    }

    /// Lending events (deposits, borrows, repays, redeems, liquidations), newest first unless
    /// ordered otherwise.
    #[graphql(complexity = "crate::cost::connection(first, child_complexity)")]
    #[allow(clippy::too_many_arguments)]
    async fn lending_events(
        &self,
        ctx: &Context<'_>,
        chain_id: Option<i64>,
        #[graphql(name = "where")] filter: Option<Where<LendingEvent>>,
        order_by: Option<OrderBy<LendingEvent>>,
        order_direction: Option<OrderDirection>,
        first: Option<i32>,
        after: Option<String>,
        block: Option<BlockHeight>,
        finality: Option<Finality>,
    ) -> ApiResult<Page<LendingEvent>> {
        let pool = ctx.data_unchecked::<PgPool>();
        let as_of = resolve_as_of(pool, chain_id, block, finality, false)
            .await
            .map_err(gql)?;
        let from = move |qb: &mut QueryBuilder<'_, Postgres>| {
            qb.push("lending_event t WHERE TRUE");
            push_event_scope(qb, chain_id, as_of, "block_number");
        };
        collect(
            ctx,
            Args {
                filter: filter.as_ref(),
                order_by,
                order_direction,
                first,
                after: after.as_deref(),
            },
            &from,
            EVENT_COLUMNS,
            event_of,
        )
        .await
    }

    /// Liquidations with both sides, newest first unless ordered otherwise.
    #[graphql(complexity = "crate::cost::connection(first, child_complexity)")]
    #[allow(clippy::too_many_arguments)]
    async fn liquidations(
        &self,
        ctx: &Context<'_>,
        chain_id: Option<i64>,
        #[graphql(name = "where")] filter: Option<Where<Liquidation>>,
        order_by: Option<OrderBy<Liquidation>>,
        order_direction: Option<OrderDirection>,
        first: Option<i32>,
        after: Option<String>,
        block: Option<BlockHeight>,
        finality: Option<Finality>,
    ) -> ApiResult<Page<Liquidation>> {
        let pool = ctx.data_unchecked::<PgPool>();
        let as_of = resolve_as_of(pool, chain_id, block, finality, false)
            .await
            .map_err(gql)?;
        let from = move |qb: &mut QueryBuilder<'_, Postgres>| {
            qb.push("liquidation t WHERE TRUE");
            push_event_scope(qb, chain_id, as_of, "block_number");
        };
        collect(
            ctx,
            Args {
                filter: filter.as_ref(),
                order_by,
                order_direction,
                first,
                after: after.as_deref(),
            },
            &from,
            LIQUIDATION_COLUMNS,
            Some,
        )
        .await
    }

    /// Each wallet's latest credit score (as of `block`, or the chain's safe / finalized block:
    /// the last score computed from an event at or before it), newest first unless ordered
    /// otherwise. A wallet's every score is `wallet.scoreHistory`.
    #[graphql(complexity = "crate::cost::connection(first, child_complexity)")]
    #[allow(clippy::too_many_arguments)]
    async fn scores(
        &self,
        ctx: &Context<'_>,
        chain_id: Option<i64>,
        #[graphql(name = "where")] filter: Option<Where<CreditScore>>,
        order_by: Option<OrderBy<CreditScore>>,
        order_direction: Option<OrderDirection>,
        first: Option<i32>,
        after: Option<String>,
        block: Option<BlockHeight>,
        finality: Option<Finality>,
    ) -> ApiResult<Page<CreditScore>> {
        let pool = ctx.data_unchecked::<PgPool>();
        let as_of = resolve_as_of(pool, chain_id, block, finality, true)
            .await
            .map_err(gql)?;
        let from = move |qb: &mut QueryBuilder<'_, Postgres>| {
            qb.push("(SELECT DISTINCT ON (chain_id, wallet) * FROM credit_score WHERE TRUE");
            if let Some(c) = chain_id {
                qb.push(" AND chain_id = ");
                qb.push_bind(c);
            }
            if let Some(b) = as_of.block {
                qb.push(" AND block_number <= ");
                qb.push_bind(b);
            }
            qb.push(" ORDER BY chain_id, wallet, id DESC) t WHERE TRUE");
        };
        collect(
            ctx,
            Args {
                filter: filter.as_ref(),
                order_by,
                order_direction,
                first,
                after: after.as_deref(),
            },
            &from,
            crate::types::SCORE_COLUMNS,
            |r: ScoreRow| Some(CreditScore::from(r)),
        )
        .await
    }

    /// Risk alerts, newest first unless ordered otherwise.
    #[graphql(complexity = "crate::cost::connection(first, child_complexity)")]
    #[allow(clippy::too_many_arguments)]
    async fn alerts(
        &self,
        ctx: &Context<'_>,
        chain_id: Option<i64>,
        #[graphql(name = "where")] filter: Option<Where<Alert>>,
        order_by: Option<OrderBy<Alert>>,
        order_direction: Option<OrderDirection>,
        first: Option<i32>,
        after: Option<String>,
        block: Option<BlockHeight>,
        finality: Option<Finality>,
    ) -> ApiResult<Page<Alert>> {
        let pool = ctx.data_unchecked::<PgPool>();
        let as_of = resolve_as_of(pool, chain_id, block, finality, false)
            .await
            .map_err(gql)?;
        let from = move |qb: &mut QueryBuilder<'_, Postgres>| {
            qb.push("risk_alert t WHERE TRUE");
            push_event_scope(qb, chain_id, as_of, "block_number");
        };
        collect(
            ctx,
            Args {
                filter: filter.as_ref(),
                order_by,
                order_direction,
                first,
                after: after.as_deref(),
            },
            &from,
            ALERT_COLUMNS,
            |r: AlertRow| Some(alert_of(r)),
        )
        .await
    }

    /// Lending decisions, newest first unless ordered otherwise.
    #[graphql(complexity = "crate::cost::connection(first, child_complexity)")]
    #[allow(clippy::too_many_arguments)]
    async fn decisions(
        &self,
        ctx: &Context<'_>,
        chain_id: Option<i64>,
        wallet: Option<String>,
        #[graphql(name = "where")] filter: Option<Where<CreditDecision>>,
        order_by: Option<OrderBy<CreditDecision>>,
        order_direction: Option<OrderDirection>,
        first: Option<i32>,
        after: Option<String>,
    ) -> ApiResult<Page<CreditDecision>> {
        let wallet = address_arg(wallet)?;
        let from = move |qb: &mut QueryBuilder<'_, Postgres>| {
            qb.push("credit_decision t WHERE TRUE");
            if let Some(c) = chain_id {
                qb.push(" AND t.chain_id = ");
                qb.push_bind(c);
            }
            if let Some(w) = &wallet {
                qb.push(" AND t.wallet = ");
                qb.push_bind(w.clone());
            }
        };
        collect(
            ctx,
            Args {
                filter: filter.as_ref(),
                order_by,
                order_direction,
                first,
                after: after.as_deref(),
            },
            &from,
            "t.record, t.tx_hash, t.tx_block, t.actuation_error",
            |r: DecisionRow| {
                let record = serde_json::from_value(r.record)
                    .map_err(|e| tracing::error!(%e, "stored decision does not parse"))
                    .ok()?;
                Some(CreditDecision::new(
                    record,
                    r.tx_hash,
                    r.tx_block,
                    r.actuation_error,
                ))
            },
        )
        .await
    }

    /// What chainfold has indexed: each live chain's head, safe and finalized block.
    #[graphql(
        name = "_meta",
        complexity = "crate::cost::QUERY_COST + child_complexity"
    )]
    async fn meta(&self, ctx: &Context<'_>) -> ApiResult<Meta> {
        let pool = ctx.data_unchecked::<PgPool>();
        let rows = chainfold_store::blocks::heads(pool).await.map_err(gql)?;
        Ok(Meta {
            chains: rows
                .into_iter()
                .map(|h| {
                    (
                        h.chain_id,
                        h.name,
                        h.number,
                        h.hash,
                        h.block_time,
                        h.confirmations,
                    )
                })
                .map(
                    |(chain_id, name, number, hash, timestamp, confirmations)| ChainMeta {
                        chain_id,
                        name,
                        head: BlockMeta {
                            number,
                            hash,
                            timestamp,
                        },
                        finalized: BlockNumber {
                            number: (number - confirmations).max(0),
                        },
                        safe: BlockNumber {
                            number: (number - (confirmations + 1) / 2).max(0),
                        },
                        confirmations,
                    },
                )
                .collect(),
        })
    }
}
