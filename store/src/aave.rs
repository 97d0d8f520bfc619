//! An Aave account read back from the read models and folded with [`chainfold_domain::aave`]:
//! the wallet's money flows in one pool (`lending_event`), its collateral-use changes and the
//! pool's reserve configurations (`lending_market_event`), for every flow the reserve index the
//! pool published just before it, the last index at or before the block, and the oracle answer
//! in force there. The result is what the pool's `getUserAccountData` returns at that block.

use std::collections::{BTreeMap, BTreeSet};

use chainfold_domain::aave::{
    AccountData, AccountError, Market, MarketEvent, ReserveIndex, ReserveParams,
};
use chainfold_domain::{Address, U256};
use sqlx::PgPool;

/// Why an account could not be read.
#[derive(Debug, thiserror::Error)]
pub enum AaveError {
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
    #[error(transparent)]
    Account(#[from] AccountError),
    #[error("stored value {0:?} is not an unsigned 256-bit integer")]
    BadNumber(String),
    #[error("reserve update at block {0} has no block time")]
    NoTime(i64),
    #[error("the account's price feeds disagree on decimals ({0:?}): no common base unit")]
    MixedDecimals(Vec<i16>),
}

/// One reserve of the account, balances with interest at the account's time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub reserve: Address,
    pub symbol: String,
    pub decimals: u8,
    pub collateral: U256,
    pub debt: U256,
    pub collateral_enabled: bool,
}

/// `getUserAccountData` of `wallet` at `block` (unix time `time`), with its positions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub block: u64,
    pub time: u64,
    pub data: AccountData,
    /// The decimals of the oracle answers the base values are in.
    pub base_decimals: Option<u8>,
    pub positions: Vec<Position>,
    /// Reserves of the account whose configuration (`CollateralConfigurationChanged`) chainfold
    /// has not seen (it was emitted before the ingest's start block): they count as threshold
    /// zero, so the account data understates the collateral. Empty when exact.
    pub unconfigured: Vec<Address>,
    /// The wallet's Aave V3 e-mode category at the block (0: none).
    pub emode_category: u8,
    /// Aave V3 isolation mode at the block: the isolated collateral, its ceiling and the total
    /// its isolated borrowers owe; `None` when the wallet is not isolated.
    pub isolation: Option<chainfold_domain::aave::Isolation>,
}

fn u256(text: &str) -> Result<U256, AaveError> {
    U256::from_str_radix(text, 10).map_err(|_| AaveError::BadNumber(text.to_owned()))
}

fn address(text: &str) -> Result<Address, AaveError> {
    text.parse()
        .map_err(|_| AaveError::BadNumber(text.to_owned()))
}

fn hex(a: &Address) -> String {
    format!("{a:#x}")
}

/// A fold input's place in the log: (block, log, order within the log: reserve updates, then
/// configuration and collateral-use marks, then the wallet's flows).
type Place = (i64, i64, u8);

/// What the account's reads collect before the fold.
#[derive(Default)]
struct Inputs {
    events: Vec<(Place, MarketEvent)>,
    /// Each reserve's symbol and decimals.
    symbols: BTreeMap<Address, (String, u8)>,
    /// The points whose preceding reserve index the fold needs: (reserve, block, log).
    points: Vec<(String, i64, i32)>,
}

/// Reads and folds the account. `None` when the wallet has no flow in that pool by `block`.
pub async fn account(
    db: &PgPool,
    chain_id: u64,
    pool: Address,
    wallet: Address,
    block: u64,
    time: u64,
) -> Result<Option<Account>, AaveError> {
    let (chain, pool_hex, at) = (chain_id as i64, hex(&pool), block as i64);
    let mut inputs = Inputs::default();
    if !read_flows(db, &mut inputs, chain, &pool_hex, wallet, at).await? {
        return Ok(None);
    }
    read_marks(db, &mut inputs, chain, &pool_hex, wallet, at).await?;
    read_reserve_updates(db, &mut inputs, chain, &pool_hex, at).await?;
    let Inputs {
        mut events,
        symbols,
        ..
    } = inputs;
    events.sort_by_key(|(k, _)| *k);
    let mut market = Market::default();
    for (_, e) in &events {
        market.apply(e).map_err(AccountError::from)?;
    }
    let (price, base_decimals) = read_prices(db, chain, &symbols, at).await?;
    let data = market.account(wallet, time, |a| price.get(&a).copied())?;
    let positions: Vec<Position> = market
        .balances(wallet, time)
        .map_err(AccountError::from)?
        .into_iter()
        .map(|(reserve, collateral, debt)| {
            let (symbol, decimals) = symbols.get(&reserve).cloned().unwrap_or_default();
            Position {
                reserve,
                symbol,
                decimals,
                collateral,
                debt,
                collateral_enabled: market.positions[&(wallet, reserve)].collateral_enabled,
            }
        })
        .collect();
    let unconfigured = positions
        .iter()
        .map(|p: &Position| p.reserve)
        .filter(|r| market.reserves.get(r).is_none_or(|s| s.params.is_none()))
        .collect();
    Ok(Some(Account {
        block,
        time,
        data,
        unconfigured,
        emode_category: market.user_category.get(&wallet).copied().unwrap_or(0),
        isolation: market.isolation(wallet),
        base_decimals,
        positions,
    }))
}

/// The wallet's money flows in the pool up to block `at` (`lending_event`); `false` when it has
/// none.
async fn read_flows(
    db: &PgPool,
    inputs: &mut Inputs,
    chain: i64,
    pool_hex: &str,
    wallet: Address,
    at: i64,
) -> Result<bool, AaveError> {
    let flows = sqlx::query!(
        r#"SELECT action, reserve, symbol, decimals, amount::text AS "amount!", collateral_reserve,
                  collateral_symbol, collateral_decimals,
                  collateral_amount::text AS "collateral_amount?",
                  block_number AS "block_number!",
                  log_index AS "log_index?"
           FROM lending_event
           WHERE chain_id = $1 AND pool = $2 AND wallet = $3 AND block_number <= $4"#,
        chain,
        pool_hex,
        hex(&wallet),
        at
    )
    .fetch_all(db)
    .await?;
    for r in &flows {
        let reserve = address(&r.reserve)?;
        let decimals = r.decimals as u8;
        let amount = u256(&r.amount)?;
        let (b, l) = (r.block_number, r.log_index.unwrap_or_default());
        inputs.symbols.insert(reserve, (r.symbol.clone(), decimals));
        inputs.points.push((r.reserve.clone(), b, l));
        let event = match r.action.as_str() {
            "deposit" => MarketEvent::Supply {
                user: wallet,
                reserve,
                decimals,
                amount,
            },
            "redeem" => MarketEvent::Withdraw {
                user: wallet,
                reserve,
                amount,
            },
            "borrow" => MarketEvent::Borrow {
                user: wallet,
                reserve,
                decimals,
                amount,
            },
            "repay" => MarketEvent::Repay {
                user: wallet,
                reserve,
                amount,
            },
            _ => {
                let coll_text = r.collateral_reserve.clone().unwrap_or_default();
                let collateral = address(&coll_text)?;
                let seized = u256(r.collateral_amount.as_deref().unwrap_or_default())?;
                inputs.symbols.insert(
                    collateral,
                    (
                        r.collateral_symbol.clone().unwrap_or_default(),
                        r.collateral_decimals.unwrap_or_default() as u8,
                    ),
                );
                inputs.points.push((coll_text, b, l));
                MarketEvent::Liquidation {
                    user: wallet,
                    collateral,
                    seized,
                    debt: reserve,
                    covered: amount,
                }
            }
        };
        inputs.events.push(((b, i64::from(l), 2), event));
    }
    Ok(!flows.is_empty())
}

/// The pool's reserve configurations, e-mode categories and isolation figures, and the wallet's
/// collateral-use and e-mode choices, up to block `at` (`lending_market_event`).
async fn read_marks(
    db: &PgPool,
    inputs: &mut Inputs,
    chain: i64,
    pool_hex: &str,
    wallet: Address,
    at: i64,
) -> Result<(), AaveError> {
    let marks = sqlx::query!(
        r#"SELECT kind, reserve, decimals, ltv, liquidation_threshold, liquidation_bonus,
                  emode_category, amount::text AS "amount?", block_number AS "block_number!",
                  log_index AS "log_index?"
           FROM lending_market_event
           WHERE chain_id = $1 AND pool = $2 AND block_number <= $4
             AND (kind IN ('reserve_config', 'emode_category', 'emode_asset', 'debt_ceiling',
                           'isolation_debt')
                  OR (wallet = $3
                      AND kind IN ('collateral_enabled', 'collateral_disabled', 'user_emode')))"#,
        chain,
        pool_hex,
        hex(&wallet),
        at
    )
    .fetch_all(db)
    .await?;
    for r in marks {
        let reserve = match &r.reserve {
            Some(text) => address(text)?,
            None => Address::ZERO,
        };
        let decimals = r.decimals.unwrap_or_default() as u8;
        let category = r.emode_category.unwrap_or_default() as u8;
        let bps = |v: Option<i32>| v.unwrap_or_default() as u16;
        let params = ReserveParams {
            ltv: bps(r.ltv),
            liquidation_threshold: bps(r.liquidation_threshold),
            liquidation_bonus: bps(r.liquidation_bonus),
        };
        let event = match r.kind.as_str() {
            "reserve_config" => MarketEvent::ReserveConfigured {
                reserve,
                decimals,
                params,
            },
            "emode_category" => MarketEvent::EModeCategory {
                id: category,
                params,
            },
            "emode_asset" => MarketEvent::EModeAsset { reserve, category },
            "debt_ceiling" => MarketEvent::DebtCeiling {
                reserve,
                ceiling: u256(r.amount.as_deref().unwrap_or_default())?,
            },
            "isolation_debt" => MarketEvent::IsolationDebt {
                reserve,
                total: u256(r.amount.as_deref().unwrap_or_default())?,
            },
            "user_emode" => MarketEvent::UserEMode {
                user: wallet,
                category,
            },
            other => MarketEvent::CollateralUse {
                user: wallet,
                reserve,
                enabled: other == "collateral_enabled",
            },
        };
        let l = i64::from(r.log_index.unwrap_or_default());
        inputs.events.push(((r.block_number, l, 1), event));
    }
    Ok(())
}

/// For every point, the reserve index the pool published just before it, and for every reserve
/// the account touched, the last index at or before block `at`.
async fn read_reserve_updates(
    db: &PgPool,
    inputs: &mut Inputs,
    chain: i64,
    pool_hex: &str,
    at: i64,
) -> Result<(), AaveError> {
    let touched: BTreeSet<String> = inputs.points.iter().map(|p| p.0.clone()).collect();
    let mut reserves = Vec::new();
    let mut blocks = Vec::new();
    let mut logs = Vec::new();
    for (r, b, l) in inputs
        .points
        .iter()
        .cloned()
        .chain(touched.into_iter().map(|r| (r, at + 1, -1)))
    {
        reserves.push(r);
        blocks.push(b);
        logs.push(l);
    }
    let updates = sqlx::query!(
        r#"SELECT DISTINCT u.event_id, u.reserve AS "reserve!", u.decimals AS "decimals!",
                  u.liquidity_rate::text AS "liquidity_rate!",
                  u.variable_borrow_rate::text AS "variable_borrow_rate!",
                  u.liquidity_index::text AS "liquidity_index!",
                  u.variable_borrow_index::text AS "variable_borrow_index!",
                  u.block_number AS "block_number!", u.log_index AS "log_index?",
                  extract(epoch FROM u.block_time)::int8 AS "at?"
           FROM UNNEST($3::text[], $4::int8[], $5::int4[]) AS p(reserve, block_number, log_index)
           CROSS JOIN LATERAL (
               SELECT * FROM lending_market_event m
               WHERE m.chain_id = $1 AND m.pool = $2 AND m.kind = 'reserve_update'
                 AND m.reserve = p.reserve
                 AND (m.block_number, m.log_index) < (p.block_number, p.log_index)
               ORDER BY m.block_number DESC, m.log_index DESC
               LIMIT 1) u"#,
        chain,
        pool_hex,
        &reserves,
        &blocks,
        &logs
    )
    .fetch_all(db)
    .await?;
    for r in updates {
        let b = r.block_number;
        let updated_at = r.at.ok_or(AaveError::NoTime(b))?;
        inputs.events.push((
            (b, i64::from(r.log_index.unwrap_or_default()), 0),
            MarketEvent::ReserveUpdated {
                reserve: address(&r.reserve)?,
                decimals: r.decimals as u8,
                index: ReserveIndex {
                    liquidity_rate: u256(&r.liquidity_rate)?,
                    variable_borrow_rate: u256(&r.variable_borrow_rate)?,
                    liquidity_index: u256(&r.liquidity_index)?,
                    variable_borrow_index: u256(&r.variable_borrow_index)?,
                    updated_at: updated_at as u64,
                },
            },
        ));
    }
    Ok(())
}

/// The oracle answer in force at block `at` for each held reserve, and the answers' common
/// decimals (an error if they differ: no common base unit).
async fn read_prices(
    db: &PgPool,
    chain: i64,
    symbols: &BTreeMap<Address, (String, u8)>,
    at: i64,
) -> Result<(BTreeMap<Address, U256>, Option<u8>), AaveError> {
    let held: Vec<String> = symbols.keys().map(hex).collect();
    let prices = sqlx::query!(
        r#"SELECT DISTINCT ON (asset) asset AS "asset!", answer::text AS "answer!",
                  decimals AS "decimals!"
           FROM oracle_update
           WHERE chain_id = $1 AND asset = ANY($2) AND block_number <= $3
           ORDER BY asset, block_number DESC, log_index DESC"#,
        chain,
        &held,
        at
    )
    .fetch_all(db)
    .await?;
    let mut price: BTreeMap<Address, U256> = BTreeMap::new();
    let mut decimals: BTreeSet<i16> = BTreeSet::new();
    for r in prices {
        price.insert(address(&r.asset)?, u256(&r.answer)?);
        decimals.insert(r.decimals);
    }
    if decimals.len() > 1 {
        return Err(AaveError::MixedDecimals(decimals.into_iter().collect()));
    }
    Ok((price, decimals.first().map(|d| *d as u8)))
}

/// The block an account is read at (`block`, else the pool's or the chain's latest) and its
/// unix time where chainfold holds an event of it (the chain head, a market or lending event,
/// an oracle round); `None` when there is no block at all.
pub async fn block_and_time(
    db: &PgPool,
    chain_id: i64,
    pool: &str,
    block: Option<i64>,
) -> sqlx::Result<Option<(i64, Option<i64>)>> {
    let row = sqlx::query!(
        r#"WITH target AS (
               SELECT coalesce($3, greatest(
                   (SELECT max(block_number) FROM lending_market_event WHERE chain_id = $1 AND pool = $2),
                   (SELECT number FROM chain_head WHERE chain_id = $1))) AS block
           )
           SELECT t.block AS "block?", extract(epoch FROM coalesce(
               (SELECT block_time FROM chain_head WHERE chain_id = $1 AND number = t.block),
               (SELECT block_time FROM lending_market_event WHERE chain_id = $1 AND block_number = t.block LIMIT 1),
               (SELECT block_time FROM lending_event WHERE chain_id = $1 AND block_number = t.block LIMIT 1),
               (SELECT block_time FROM oracle_update WHERE chain_id = $1 AND block_number = t.block LIMIT 1)))::int8
               AS "time?"
           FROM target t"#,
        chain_id,
        pool,
        block
    )
    .fetch_optional(db)
    .await?;
    Ok(row.and_then(|r| Some((r.block?, r.time))))
}
