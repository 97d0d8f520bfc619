//! `aaveAccount`: a wallet's Aave account in one lending pool as the pool's
//! `getUserAccountData` computes it (indices, scaled balances, collateral flags, oracle answers),
//! read back from the read models by [`chainfold_store::aave::account`]. Every money field is
//! an exact integer in a decimal string.

use async_graphql::{Context, Object, SimpleObject};
use chainfold_domain::U256;
use sqlx::PgPool;

use crate::error::{gql, ApiError, ApiResult};
use crate::input::parse_address;

/// Aave queries.
#[derive(Debug, Default)]
pub struct AaveQuery;

/// One reserve of an account, with interest to the account's time.
#[derive(SimpleObject, Debug, Clone)]
pub struct AaveReservePosition {
    pub reserve: String,
    pub symbol: String,
    pub decimals: i32,
    /// Supplied balance with interest (the aToken balance), base units.
    pub collateral: String,
    /// Variable debt with interest (the debt token balance), base units.
    pub debt: String,
    /// Whether the supply counts as collateral (`ReserveUsedAsCollateralEnabled`).
    pub collateral_enabled: bool,
}

/// `getUserAccountData` of a wallet at a block.
#[derive(SimpleObject, Debug, Clone)]
pub struct AaveAccount {
    pub chain_id: i64,
    pub pool: String,
    pub wallet: String,
    pub block: i64,
    /// Unix seconds the interest is accrued to (the block's timestamp).
    pub as_of: i64,
    /// Collateral value in the oracle's base unit (integer; `baseDecimals` decimals).
    pub total_collateral_base: String,
    pub total_debt_base: String,
    pub available_borrows_base: String,
    /// Decimals of the base unit (the price feeds'), where a price was read.
    pub base_decimals: Option<i32>,
    /// Collateral-weighted liquidation threshold, basis points.
    pub liquidation_threshold: String,
    /// Collateral-weighted LTV, basis points.
    pub ltv: String,
    /// Health factor with 18 decimals as an integer string; `null` without debt (the pool
    /// reports the largest uint256 there).
    pub health_factor: Option<String>,
    pub reserves: Vec<AaveReservePosition>,
    /// Reserves whose configuration chainfold has not seen (configured before the ingest's
    /// start block): they count as threshold zero, so the values understate the collateral.
    /// Empty when the account is exact.
    pub unconfigured_reserves: Vec<String>,
    /// The wallet's Aave V3 efficiency-mode category at the block (0: none); collateral of
    /// reserves in it counts with the category's LTV and threshold.
    pub e_mode_category: i32,
    /// Aave V3 isolation mode: set when the wallet's only collateral is a reserve with a debt
    /// ceiling.
    pub isolation: Option<AaveIsolation>,
}

/// A wallet in Aave V3 isolation mode.
#[derive(SimpleObject, Debug, Clone)]
pub struct AaveIsolation {
    /// The isolated collateral reserve.
    pub reserve: String,
    /// Its debt ceiling, USD (a decimal string, 2 decimals as the pool keeps it).
    pub debt_ceiling_usd: String,
    /// What all isolated borrowers against it owe, USD (the pool's running total).
    pub total_debt_usd: String,
}

/// A V3 isolation figure (USD with 2 decimals, an integer on chain) as a decimal string.
fn cents(v: U256) -> String {
    let units: bigdecimal::num_bigint::BigInt = v.to_string().parse().unwrap_or_default();
    crate::input::decimal_text(&bigdecimal::BigDecimal::new(units, 2))
}

fn non_negative(name: &str, value: i64) -> Result<u64, ApiError> {
    u64::try_from(value)
        .map_err(|_| ApiError::BadUserInput(format!("{name} must not be negative, got {value}")))
}

/// The block to answer at and its unix time: the asked block (its time from any row stored at
/// it, or `asOf`), or the latest block chainfold holds for the pool or the chain head.
async fn when(
    db: &PgPool,
    chain_id: i64,
    pool: &str,
    block: Option<u64>,
    as_of: Option<u64>,
) -> ApiResult<Option<(u64, u64)>> {
    let row = chainfold_store::aave::block_and_time(db, chain_id, pool, block.map(|b| b as i64))
        .await
        .map_err(gql)?;
    let Some((block, time)) = row else {
        return Ok(None);
    };
    let time = match (as_of, time) {
        (Some(t), _) => t,
        (None, Some(t)) => t as u64,
        (None, None) => {
            return Err(gql(ApiError::BadUserInput(format!(
                "chainfold holds no event of block {block}, so its time is unknown: pass asOf (unix seconds)"
            ))))
        }
    };
    Ok(Some((block as u64, time)))
}

fn text(v: U256) -> String {
    v.to_string()
}

#[Object]
impl AaveQuery {
    /// A wallet's Aave account in `pool` at `block` (default: the latest block chainfold holds),
    /// exactly as the pool's `getUserAccountData` returns it then. `null` when the wallet has no
    /// supply, borrow, repay, withdrawal or liquidation in that pool by then.
    #[graphql(complexity = "crate::cost::QUERY_COST + child_complexity")]
    async fn aave_account(
        &self,
        ctx: &Context<'_>,
        chain_id: i64,
        pool: String,
        wallet: String,
        block: Option<i64>,
        as_of: Option<i64>,
    ) -> ApiResult<Option<AaveAccount>> {
        let pool = parse_address(&pool).map_err(gql)?;
        let wallet = parse_address(&wallet).map_err(gql)?;
        let chain = non_negative("chainId", chain_id).map_err(gql)?;
        let block = block
            .map(|b| non_negative("block", b))
            .transpose()
            .map_err(gql)?;
        let as_of = as_of
            .map(|t| non_negative("asOf", t))
            .transpose()
            .map_err(gql)?;
        let db = ctx.data_unchecked::<PgPool>();
        let Some((block, time)) = when(db, chain_id, &pool, block, as_of).await? else {
            return Ok(None);
        };
        let parse = |a: &str| -> ApiResult<chainfold_domain::Address> {
            a.parse()
                .map_err(|_| gql(ApiError::BadUserInput(format!("{a:?} is not an address"))))
        };
        let account =
            chainfold_store::aave::account(db, chain, parse(&pool)?, parse(&wallet)?, block, time)
                .await
                .map_err(|e| match e {
                    chainfold_store::aave::AaveError::Sql(e) => gql(e),
                    other => gql(ApiError::Unanswerable(other.to_string())),
                })?;
        Ok(account.map(|a| AaveAccount {
            chain_id,
            pool: pool.clone(),
            wallet: wallet.clone(),
            block: a.block as i64,
            as_of: a.time as i64,
            total_collateral_base: text(a.data.total_collateral_base),
            total_debt_base: text(a.data.total_debt_base),
            available_borrows_base: text(a.data.available_borrows_base),
            base_decimals: a.base_decimals.map(i32::from),
            liquidation_threshold: text(a.data.current_liquidation_threshold),
            ltv: text(a.data.ltv),
            health_factor: (a.data.health_factor != U256::MAX).then(|| text(a.data.health_factor)),
            unconfigured_reserves: a.unconfigured.iter().map(|r| format!("{r:#x}")).collect(),
            e_mode_category: i32::from(a.emode_category),
            isolation: a.isolation.map(|i| AaveIsolation {
                reserve: format!("{:#x}", i.reserve),
                debt_ceiling_usd: cents(i.debt_ceiling),
                total_debt_usd: cents(i.total_debt),
            }),
            reserves: a
                .positions
                .into_iter()
                .map(|p| AaveReservePosition {
                    reserve: format!("{:#x}", p.reserve),
                    symbol: p.symbol,
                    decimals: i32::from(p.decimals),
                    collateral: text(p.collateral),
                    debt: text(p.debt),
                    collateral_enabled: p.collateral_enabled,
                })
                .collect(),
        }))
    }
}
