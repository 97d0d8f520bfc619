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
use sqlx::{PgPool, Row as _};

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

/// Reads and folds the account. `None` when the wallet has no flow in that pool by `block`.
pub async fn account(
    db: &PgPool,
    chain_id: u64,
    pool: Address,
    wallet: Address,
    block: u64,
    time: u64,
) -> Result<Option<Account>, AaveError> {
    let (chain, pool_hex, wallet_hex, at) =
        (chain_id as i64, hex(&pool), hex(&wallet), block as i64);
    // (block, log, order within the log, event): the fold's input in log order.
    let mut events: Vec<((i64, i64, u8), MarketEvent)> = Vec::new();
    let mut symbols: BTreeMap<Address, (String, u8)> = BTreeMap::new();
    // The points whose preceding reserve index the fold needs: (reserve, block, log).
    let mut points: Vec<(String, i64, i32)> = Vec::new();
    let flows = sqlx::query(
        "SELECT action, reserve, symbol, decimals, amount::text AS amount, collateral_reserve,
                collateral_symbol, collateral_decimals, collateral_amount::text AS collateral_amount,
                block_number, log_index
         FROM lending_event
         WHERE chain_id = $1 AND pool = $2 AND wallet = $3 AND block_number <= $4",
    )
    .bind(chain)
    .bind(&pool_hex)
    .bind(&wallet_hex)
    .bind(at)
    .fetch_all(db)
    .await?;
    if flows.is_empty() {
        return Ok(None);
    }
    for r in &flows {
        let action: String = r.try_get("action")?;
        let reserve_text: String = r.try_get("reserve")?;
        let reserve = address(&reserve_text)?;
        let decimals = r.try_get::<i16, _>("decimals")? as u8;
        let amount = u256(&r.try_get::<String, _>("amount")?)?;
        let b: i64 = r.try_get("block_number")?;
        let l = i64::from(
            r.try_get::<Option<i32>, _>("log_index")?
                .unwrap_or_default(),
        );
        symbols.insert(reserve, (r.try_get::<String, _>("symbol")?, decimals));
        points.push((reserve_text, b, l as i32));
        let event = match action.as_str() {
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
                let coll_text: String = r
                    .try_get::<Option<String>, _>("collateral_reserve")?
                    .unwrap_or_default();
                let collateral = address(&coll_text)?;
                let seized = u256(
                    &r.try_get::<Option<String>, _>("collateral_amount")?
                        .unwrap_or_default(),
                )?;
                symbols.insert(
                    collateral,
                    (
                        r.try_get::<Option<String>, _>("collateral_symbol")?
                            .unwrap_or_default(),
                        r.try_get::<Option<i16>, _>("collateral_decimals")?
                            .unwrap_or_default() as u8,
                    ),
                );
                points.push((coll_text, b, l as i32));
                MarketEvent::Liquidation {
                    user: wallet,
                    collateral,
                    seized,
                    debt: reserve,
                    covered: amount,
                }
            }
        };
        events.push(((b, l, 2), event));
    }
    let marks = sqlx::query(
        "SELECT kind, reserve, symbol, decimals, ltv, liquidation_threshold, liquidation_bonus,
                emode_category, amount::text AS amount, block_number, log_index
         FROM lending_market_event
         WHERE chain_id = $1 AND pool = $2 AND block_number <= $4
           AND (kind IN ('reserve_config', 'emode_category', 'emode_asset', 'debt_ceiling',
                         'isolation_debt')
                OR (wallet = $3
                    AND kind IN ('collateral_enabled', 'collateral_disabled', 'user_emode')))",
    )
    .bind(chain)
    .bind(&pool_hex)
    .bind(&wallet_hex)
    .bind(at)
    .fetch_all(db)
    .await?;
    for r in &marks {
        let kind: String = r.try_get("kind")?;
        let reserve = match r.try_get::<Option<String>, _>("reserve")? {
            Some(text) => address(&text)?,
            None => Address::ZERO,
        };
        let decimals = r.try_get::<Option<i16>, _>("decimals")?.unwrap_or_default() as u8;
        let category = r
            .try_get::<Option<i16>, _>("emode_category")?
            .unwrap_or_default() as u8;
        let b: i64 = r.try_get("block_number")?;
        let l = i64::from(
            r.try_get::<Option<i32>, _>("log_index")?
                .unwrap_or_default(),
        );
        let bps = |c: &str| -> Result<u16, AaveError> {
            Ok(r.try_get::<Option<i32>, _>(c)?.unwrap_or_default() as u16)
        };
        let event = match kind.as_str() {
            "reserve_config" => MarketEvent::ReserveConfigured {
                reserve,
                decimals,
                params: ReserveParams {
                    ltv: bps("ltv")?,
                    liquidation_threshold: bps("liquidation_threshold")?,
                    liquidation_bonus: bps("liquidation_bonus")?,
                },
            },
            "emode_category" => MarketEvent::EModeCategory {
                id: category,
                params: ReserveParams {
                    ltv: bps("ltv")?,
                    liquidation_threshold: bps("liquidation_threshold")?,
                    liquidation_bonus: bps("liquidation_bonus")?,
                },
            },
            "emode_asset" => MarketEvent::EModeAsset { reserve, category },
            "debt_ceiling" | "isolation_debt" => {
                let value = u256(
                    &r.try_get::<Option<String>, _>("amount")?
                        .unwrap_or_default(),
                )?;
                if kind == "debt_ceiling" {
                    MarketEvent::DebtCeiling {
                        reserve,
                        ceiling: value,
                    }
                } else {
                    MarketEvent::IsolationDebt {
                        reserve,
                        total: value,
                    }
                }
            }
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
        events.push(((b, l, 1), event));
    }
    // The last index at or before the block, for every reserve the account touched.
    let touched: BTreeSet<String> = points.iter().map(|p| p.0.clone()).collect();
    for reserve in touched {
        points.push((reserve, at + 1, -1));
    }
    let (reserves, blocks, logs): (Vec<String>, Vec<i64>, Vec<i32>) = points.into_iter().fold(
        (Vec::new(), Vec::new(), Vec::new()),
        |mut acc, (r, b, l)| {
            acc.0.push(r);
            acc.1.push(b);
            acc.2.push(l);
            acc
        },
    );
    let updates = sqlx::query(
        "SELECT DISTINCT u.event_id, u.reserve, u.decimals,
                u.liquidity_rate::text AS liquidity_rate,
                u.variable_borrow_rate::text AS variable_borrow_rate,
                u.liquidity_index::text AS liquidity_index,
                u.variable_borrow_index::text AS variable_borrow_index,
                u.block_number, u.log_index, extract(epoch FROM u.block_time)::int8 AS at
         FROM UNNEST($3::text[], $4::int8[], $5::int4[]) AS p(reserve, block_number, log_index)
         CROSS JOIN LATERAL (
             SELECT * FROM lending_market_event m
             WHERE m.chain_id = $1 AND m.pool = $2 AND m.kind = 'reserve_update'
               AND m.reserve = p.reserve
               AND (m.block_number, m.log_index) < (p.block_number, p.log_index)
             ORDER BY m.block_number DESC, m.log_index DESC
             LIMIT 1) u",
    )
    .bind(chain)
    .bind(&pool_hex)
    .bind(&reserves)
    .bind(&blocks)
    .bind(&logs)
    .fetch_all(db)
    .await?;
    for r in &updates {
        let b: i64 = r.try_get("block_number")?;
        let l = i64::from(
            r.try_get::<Option<i32>, _>("log_index")?
                .unwrap_or_default(),
        );
        let updated_at = r
            .try_get::<Option<i64>, _>("at")?
            .ok_or(AaveError::NoTime(b))?;
        let num = |c: &str| -> Result<U256, AaveError> { u256(&r.try_get::<String, _>(c)?) };
        events.push((
            (b, l, 0),
            MarketEvent::ReserveUpdated {
                reserve: address(&r.try_get::<String, _>("reserve")?)?,
                decimals: r.try_get::<i16, _>("decimals")? as u8,
                index: ReserveIndex {
                    liquidity_rate: num("liquidity_rate")?,
                    variable_borrow_rate: num("variable_borrow_rate")?,
                    liquidity_index: num("liquidity_index")?,
                    variable_borrow_index: num("variable_borrow_index")?,
                    updated_at: updated_at as u64,
                },
            },
        ));
    }
    events.sort_by_key(|(k, _)| *k);
    let mut market = Market::default();
    for (_, e) in &events {
        market.apply(e).map_err(AccountError::from)?;
    }
    let held: Vec<String> = symbols.keys().map(hex).collect();
    let prices = sqlx::query(
        "SELECT DISTINCT ON (asset) asset, answer::text AS answer, decimals
         FROM oracle_update
         WHERE chain_id = $1 AND asset = ANY($2) AND block_number <= $3
         ORDER BY asset, block_number DESC, log_index DESC",
    )
    .bind(chain)
    .bind(&held)
    .bind(at)
    .fetch_all(db)
    .await?;
    let mut price: BTreeMap<Address, U256> = BTreeMap::new();
    let mut decimals: BTreeSet<i16> = BTreeSet::new();
    for r in &prices {
        price.insert(
            address(&r.try_get::<String, _>("asset")?)?,
            u256(&r.try_get::<String, _>("answer")?)?,
        );
        decimals.insert(r.try_get("decimals")?);
    }
    if decimals.len() > 1 {
        return Err(AaveError::MixedDecimals(decimals.into_iter().collect()));
    }
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
        base_decimals: decimals.first().map(|d| *d as u8),
        positions,
    }))
}
