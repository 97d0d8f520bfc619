//! Aave V2/V3 accounting as the protocol computes it, in exact integers.
//!
//! A reserve keeps a liquidity index (linear interest at its liquidity rate) and a variable
//! borrow index (interest compounded with Aave's three-term binomial approximation); both are
//! rays (10^27) and both are published in `ReserveDataUpdated` together with the rates in force
//! from that block on. A position is a *scaled* balance: a supply of `amount` adds
//! `rayDiv(amount, liquidityIndex)` to the user's scaled collateral, a borrow adds
//! `rayDiv(amount, variableBorrowIndex)` to the scaled debt, withdrawals, repayments and
//! liquidations subtract the same way; the balance at time `t` is `rayMul(scaled,
//! normalized index at t)`. Collateral counts only while the user's
//! `ReserveUsedAsCollateralEnabled` flag is on and the reserve's liquidation threshold is not
//! zero. The account data is V2's `calculateUserAccountData`, and V3's with efficiency mode:
//! a user in e-mode category `c` has collateral of reserves in `c` weighted with the category's
//! LTV and threshold instead of the reserve's (V3.0/3.1 membership: one category per reserve;
//! category price sources are not modelled). Isolation mode does not change the arithmetic: it
//! changes which borrows and collateral switches the pool accepts (they arrive here as the events
//! they produce); [`Market::isolation`] tells whether a user is isolated (V3's
//! `getIsolationModeState`) with the reserve's ceiling and the total its isolated borrowers owe.
//! Values are in the oracle's base unit,
//! collateral-weighted average LTV and threshold, and the health factor
//! `wadDiv(percentMul(collateral, avgThreshold), debt)`, with Aave's half-up rounding at every
//! step, so the result is the contract's to the last wei.
//!
//! [`Market`] is the fold: apply [`MarketEvent`]s in log order, then ask for an
//! [`AccountData`] at a timestamp with the prices in force. It is pure (no clock, no I/O).

use std::collections::BTreeMap;

use alloy_primitives::{Address, U256};

/// 10^27.
pub const RAY: U256 = U256::from_limbs([11_515_845_246_265_065_472, 54_210_108, 0, 0]);
/// 10^18.
pub const WAD: U256 = U256::from_limbs([1_000_000_000_000_000_000, 0, 0, 0]);
/// Aave's year (365 days).
pub const SECONDS_PER_YEAR: u64 = 365 * 24 * 3600;
const PERCENTAGE_FACTOR: u64 = 10_000;

/// An arithmetic step overflowed 256 bits (the contract would revert there too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("Aave arithmetic overflowed 256 bits")]
pub struct Overflow;

fn mul(a: U256, b: U256) -> Result<U256, Overflow> {
    a.checked_mul(b).ok_or(Overflow)
}

fn add(a: U256, b: U256) -> Result<U256, Overflow> {
    a.checked_add(b).ok_or(Overflow)
}

/// `a × b / RAY`, half up.
pub fn ray_mul(a: U256, b: U256) -> Result<U256, Overflow> {
    Ok(add(mul(a, b)?, RAY / U256::from(2u8))? / RAY)
}

/// `a × RAY / b`, half up. `b` must not be zero.
pub fn ray_div(a: U256, b: U256) -> Result<U256, Overflow> {
    Ok(add(mul(a, RAY)?, b / U256::from(2u8))? / b)
}

/// `a × WAD / b`, half up. `b` must not be zero.
pub fn wad_div(a: U256, b: U256) -> Result<U256, Overflow> {
    Ok(add(mul(a, WAD)?, b / U256::from(2u8))? / b)
}

/// `value × bps / 10 000`, half up; zero when either is zero.
pub fn percent_mul(value: U256, bps: U256) -> Result<U256, Overflow> {
    if value.is_zero() || bps.is_zero() {
        return Ok(U256::ZERO);
    }
    let factor = U256::from(PERCENTAGE_FACTOR);
    Ok(add(mul(value, bps)?, factor / U256::from(2u8))? / factor)
}

/// Linear interest factor over `seconds` at a yearly `rate` (ray): `RAY + rate × seconds / year`.
pub fn linear_interest(rate: U256, seconds: u64) -> Result<U256, Overflow> {
    add(
        mul(rate, U256::from(seconds))? / U256::from(SECONDS_PER_YEAR),
        RAY,
    )
}

/// Aave's compounded interest factor over `seconds` at a yearly `rate` (ray): the binomial
/// expansion of `(1 + rate/year)^seconds` to the third term, with Aave's integer steps.
pub fn compounded_interest(rate: U256, seconds: u64) -> Result<U256, Overflow> {
    if seconds == 0 {
        return Ok(RAY);
    }
    let exp = U256::from(seconds);
    let exp_minus_one = U256::from(seconds - 1);
    let exp_minus_two = U256::from(seconds.saturating_sub(2));
    let per_second = rate / U256::from(SECONDS_PER_YEAR);
    let power_two = ray_mul(per_second, per_second)?;
    let power_three = ray_mul(power_two, per_second)?;
    let second = mul(mul(exp, exp_minus_one)?, power_two)? / U256::from(2u8);
    let third = mul(mul(mul(exp, exp_minus_one)?, exp_minus_two)?, power_three)? / U256::from(6u8);
    add(add(add(RAY, mul(per_second, exp)?)?, second)?, third)
}

/// A reserve's risk parameters, basis points (`CollateralConfigurationChanged`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReserveParams {
    pub ltv: u16,
    pub liquidation_threshold: u16,
    pub liquidation_bonus: u16,
}

/// A reserve's rates and indices as of `updated_at` (`ReserveDataUpdated`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReserveIndex {
    pub liquidity_rate: U256,
    pub variable_borrow_rate: U256,
    pub liquidity_index: U256,
    pub variable_borrow_index: U256,
    /// Unix seconds of the block that published it.
    pub updated_at: u64,
}

impl Default for ReserveIndex {
    fn default() -> Self {
        ReserveIndex {
            liquidity_rate: U256::ZERO,
            variable_borrow_rate: U256::ZERO,
            liquidity_index: RAY,
            variable_borrow_index: RAY,
            updated_at: 0,
        }
    }
}

impl ReserveIndex {
    /// The liquidity index at `now` (`getReserveNormalizedIncome`).
    pub fn normalized_income(&self, now: u64) -> Result<U256, Overflow> {
        if now <= self.updated_at {
            return Ok(self.liquidity_index);
        }
        ray_mul(
            linear_interest(self.liquidity_rate, now - self.updated_at)?,
            self.liquidity_index,
        )
    }

    /// The variable borrow index at `now` (`getReserveNormalizedVariableDebt`).
    pub fn normalized_debt(&self, now: u64) -> Result<U256, Overflow> {
        if now <= self.updated_at {
            return Ok(self.variable_borrow_index);
        }
        ray_mul(
            compounded_interest(self.variable_borrow_rate, now - self.updated_at)?,
            self.variable_borrow_index,
        )
    }
}

/// What the fold knows of a reserve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReserveState {
    pub decimals: u8,
    /// `None` until a configuration event is seen: such a reserve counts as collateral with a
    /// zero threshold (it is not counted), the safe side.
    pub params: Option<ReserveParams>,
    pub index: ReserveIndex,
}

/// One user's position in one reserve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UserReserve {
    pub scaled_collateral: U256,
    pub scaled_debt: U256,
    pub collateral_enabled: bool,
}

/// A lending-pool event as the fold needs it. Amounts are raw base units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarketEvent {
    ReserveUpdated {
        reserve: Address,
        decimals: u8,
        index: ReserveIndex,
    },
    ReserveConfigured {
        reserve: Address,
        decimals: u8,
        params: ReserveParams,
    },
    CollateralUse {
        user: Address,
        reserve: Address,
        enabled: bool,
    },
    Supply {
        user: Address,
        reserve: Address,
        decimals: u8,
        amount: U256,
    },
    Withdraw {
        user: Address,
        reserve: Address,
        amount: U256,
    },
    Borrow {
        user: Address,
        reserve: Address,
        decimals: u8,
        amount: U256,
    },
    Repay {
        user: Address,
        reserve: Address,
        amount: U256,
    },
    Liquidation {
        user: Address,
        collateral: Address,
        seized: U256,
        debt: Address,
        covered: U256,
    },
    /// `EModeCategoryAdded`: category `id`'s LTV, threshold and bonus.
    EModeCategory { id: u8, params: ReserveParams },
    /// `EModeAssetCategoryChanged`: `reserve` is in `category` (0: none).
    EModeAsset { reserve: Address, category: u8 },
    /// `UserEModeSet`: `user` is in `category` (0: none).
    UserEMode { user: Address, category: u8 },
    /// `DebtCeilingChanged`: `reserve`'s debt ceiling (USD, 2 decimals; 0: not isolated).
    DebtCeiling { reserve: Address, ceiling: U256 },
    /// `IsolationModeTotalDebtUpdated`: what isolated borrowers against `reserve` owe.
    IsolationDebt { reserve: Address, total: U256 },
}

/// A user in isolation mode: its only collateral is `reserve`, which has a debt ceiling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Isolation {
    pub reserve: Address,
    /// USD with 2 decimals.
    pub debt_ceiling: U256,
    /// What all isolated borrowers against `reserve` owe, USD with 2 decimals.
    pub total_debt: U256,
}

/// An account as `getUserAccountData` reports it. Values are in the oracle's base unit (the
/// price feeds' scale: 8-decimal USD on V3 and the fixture, wei of ETH on V2 mainnet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccountData {
    pub total_collateral_base: U256,
    pub total_debt_base: U256,
    pub available_borrows_base: U256,
    /// Collateral-weighted average liquidation threshold, basis points.
    pub current_liquidation_threshold: U256,
    /// Collateral-weighted average LTV, basis points.
    pub ltv: U256,
    /// 18 decimals; `U256::MAX` without debt.
    pub health_factor: U256,
}

/// Why an account could not be computed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccountError {
    #[error("no oracle price for reserve {0} at the requested time")]
    NoPrice(Address),
    #[error(transparent)]
    Overflow(#[from] Overflow),
}

/// One lending pool's reserves and positions, folded from its events in log order.
#[derive(Debug, Clone, Default)]
pub struct Market {
    pub reserves: BTreeMap<Address, ReserveState>,
    pub positions: BTreeMap<(Address, Address), UserReserve>,
    /// E-mode categories' parameters by id.
    pub emode_categories: BTreeMap<u8, ReserveParams>,
    /// Each reserve's e-mode category (absent: 0).
    pub reserve_category: BTreeMap<Address, u8>,
    /// Each user's e-mode category (absent: 0).
    pub user_category: BTreeMap<Address, u8>,
    /// Reserves' debt ceilings (absent: 0, not isolated).
    pub debt_ceilings: BTreeMap<Address, U256>,
    /// Isolated reserves' total isolation debt.
    pub isolation_debt: BTreeMap<Address, U256>,
}

impl Market {
    fn reserve(&mut self, reserve: Address, decimals: u8) -> &mut ReserveState {
        let state = self.reserves.entry(reserve).or_default();
        state.decimals = decimals;
        state
    }

    fn index(&self, reserve: Address) -> ReserveIndex {
        self.reserves
            .get(&reserve)
            .map(|r| r.index)
            .unwrap_or_default()
    }

    fn position(&mut self, user: Address, reserve: Address) -> &mut UserReserve {
        self.positions.entry((user, reserve)).or_default()
    }

    /// Applies one event. Amounts are scaled at the reserve's stored index: the pool publishes
    /// `ReserveDataUpdated` with the index it uses before the action's own event, in the same
    /// transaction, so the stored index is the one the contract scaled with.
    pub fn apply(&mut self, event: &MarketEvent) -> Result<(), Overflow> {
        match *event {
            MarketEvent::ReserveUpdated {
                reserve,
                decimals,
                index,
            } => self.reserve(reserve, decimals).index = index,
            MarketEvent::ReserveConfigured {
                reserve,
                decimals,
                params,
            } => self.reserve(reserve, decimals).params = Some(params),
            MarketEvent::CollateralUse {
                user,
                reserve,
                enabled,
            } => self.position(user, reserve).collateral_enabled = enabled,
            MarketEvent::Supply {
                user,
                reserve,
                decimals,
                amount,
            } => {
                self.reserve(reserve, decimals);
                let scaled = ray_div(amount, self.index(reserve).liquidity_index)?;
                let p = self.position(user, reserve);
                p.scaled_collateral = add(p.scaled_collateral, scaled)?;
            }
            MarketEvent::Withdraw {
                user,
                reserve,
                amount,
            } => {
                let scaled = ray_div(amount, self.index(reserve).liquidity_index)?;
                let p = self.position(user, reserve);
                p.scaled_collateral = p.scaled_collateral.saturating_sub(scaled);
            }
            MarketEvent::Borrow {
                user,
                reserve,
                decimals,
                amount,
            } => {
                self.reserve(reserve, decimals);
                let scaled = ray_div(amount, self.index(reserve).variable_borrow_index)?;
                let p = self.position(user, reserve);
                p.scaled_debt = add(p.scaled_debt, scaled)?;
            }
            MarketEvent::Repay {
                user,
                reserve,
                amount,
            } => {
                let scaled = ray_div(amount, self.index(reserve).variable_borrow_index)?;
                let p = self.position(user, reserve);
                p.scaled_debt = p.scaled_debt.saturating_sub(scaled);
            }
            MarketEvent::Liquidation {
                user,
                collateral,
                seized,
                debt,
                covered,
            } => {
                let debt_scaled = ray_div(covered, self.index(debt).variable_borrow_index)?;
                let coll_scaled = ray_div(seized, self.index(collateral).liquidity_index)?;
                let d = self.position(user, debt);
                d.scaled_debt = d.scaled_debt.saturating_sub(debt_scaled);
                let c = self.position(user, collateral);
                c.scaled_collateral = c.scaled_collateral.saturating_sub(coll_scaled);
            }
            MarketEvent::EModeCategory { id, params } => {
                self.emode_categories.insert(id, params);
            }
            MarketEvent::EModeAsset { reserve, category } => {
                self.reserve_category.insert(reserve, category);
            }
            MarketEvent::UserEMode { user, category } => {
                self.user_category.insert(user, category);
            }
            MarketEvent::DebtCeiling { reserve, ceiling } => {
                self.debt_ceilings.insert(reserve, ceiling);
            }
            MarketEvent::IsolationDebt { reserve, total } => {
                self.isolation_debt.insert(reserve, total);
            }
        }
        Ok(())
    }

    /// V3's `getIsolationModeState`: `Some` when `user`'s collateral flag is on for exactly one
    /// reserve and that reserve has a debt ceiling.
    pub fn isolation(&self, user: Address) -> Option<Isolation> {
        let mut enabled = self
            .positions
            .range((user, Address::ZERO)..)
            .take_while(|((u, _), _)| *u == user)
            .filter(|(_, p)| p.collateral_enabled)
            .map(|((_, r), _)| *r);
        let only = enabled.next()?;
        if enabled.next().is_some() {
            return None;
        }
        let ceiling = self.debt_ceilings.get(&only).copied().unwrap_or_default();
        (!ceiling.is_zero()).then(|| Isolation {
            reserve: only,
            debt_ceiling: ceiling,
            total_debt: self.isolation_debt.get(&only).copied().unwrap_or_default(),
        })
    }

    /// The LTV and threshold `user`'s collateral in `reserve` counts with: its e-mode
    /// category's when the user is in the reserve's category, else the reserve's own.
    fn weights(&self, user: Address, reserve: Address, own: ReserveParams) -> ReserveParams {
        let category = self.user_category.get(&user).copied().unwrap_or(0);
        if category != 0 && self.reserve_category.get(&reserve).copied() == Some(category) {
            if let Some(e) = self.emode_categories.get(&category) {
                return *e;
            }
        }
        own
    }

    /// The user's balances at `now`: (reserve, collateral with interest, debt with interest).
    pub fn balances(
        &self,
        user: Address,
        now: u64,
    ) -> Result<Vec<(Address, U256, U256)>, Overflow> {
        let mut out = Vec::new();
        for ((u, reserve), p) in self.positions.range((user, Address::ZERO)..) {
            if *u != user {
                break;
            }
            let index = self.index(*reserve);
            out.push((
                *reserve,
                ray_mul(p.scaled_collateral, index.normalized_income(now)?)?,
                ray_mul(p.scaled_debt, index.normalized_debt(now)?)?,
            ));
        }
        Ok(out)
    }

    /// `getUserAccountData` for `user` at unix time `now`, with `price(reserve)` the oracle's
    /// answer in force then.
    pub fn account(
        &self,
        user: Address,
        now: u64,
        price: impl Fn(Address) -> Option<U256>,
    ) -> Result<AccountData, AccountError> {
        let (mut collateral, mut debt) = (U256::ZERO, U256::ZERO);
        let (mut ltv, mut threshold) = (U256::ZERO, U256::ZERO);
        for ((u, reserve), p) in self.positions.range((user, Address::ZERO)..) {
            if *u != user {
                break;
            }
            let state = self.reserves.get(reserve).copied().unwrap_or_default();
            let params = state.params.unwrap_or_default();
            let counts = p.collateral_enabled && params.liquidation_threshold != 0;
            let borrowing = !p.scaled_debt.is_zero();
            if !counts && !borrowing {
                continue;
            }
            let unit = U256::from(10u8).pow(U256::from(state.decimals));
            let price = price(*reserve).ok_or(AccountError::NoPrice(*reserve))?;
            if counts {
                let balance = ray_mul(p.scaled_collateral, state.index.normalized_income(now)?)?;
                let value = mul(price, balance)? / unit;
                let weights = self.weights(user, *reserve, params);
                collateral = add(collateral, value)?;
                ltv = add(ltv, mul(value, U256::from(weights.ltv))?)?;
                threshold = add(
                    threshold,
                    mul(value, U256::from(weights.liquidation_threshold))?,
                )?;
            }
            if borrowing {
                let balance = ray_mul(p.scaled_debt, state.index.normalized_debt(now)?)?;
                debt = add(debt, mul(price, balance)? / unit)?;
            }
        }
        if !collateral.is_zero() {
            ltv /= collateral;
            threshold /= collateral;
        }
        let borrowable = percent_mul(collateral, ltv)?;
        let health_factor = if debt.is_zero() {
            U256::MAX
        } else {
            wad_div(percent_mul(collateral, threshold)?, debt)?
        };
        Ok(AccountData {
            total_collateral_base: collateral,
            total_debt_base: debt,
            available_borrows_base: borrowable.saturating_sub(debt),
            current_liquidation_threshold: threshold,
            ltv,
            health_factor,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ray(x: f64) -> U256 {
        U256::from((x * 1e18) as u128) * U256::from(1_000_000_000u64)
    }

    #[test]
    fn the_constants_are_powers_of_ten() {
        assert_eq!(RAY, U256::from(10u8).pow(U256::from(27u8)));
        assert_eq!(WAD, U256::from(10u8).pow(U256::from(18u8)));
    }

    #[test]
    fn ray_maths_round_half_up_like_wad_ray_math() {
        // 1.5 wei-rays round up, 1.4999… round down.
        assert_eq!(
            ray_mul(U256::from(3u8), RAY / U256::from(2u8)).expect("fits"),
            U256::from(2u8)
        );
        assert_eq!(
            ray_mul(U256::from(3u8), RAY / U256::from(2u8) - U256::from(1u8)).expect("fits"),
            U256::from(1u8)
        );
        assert_eq!(
            ray_div(U256::from(1u8), U256::from(2u8) * RAY).expect("fits"),
            U256::from(1u8)
        );
        assert_eq!(
            ray_div(U256::from(1u8), U256::from(3u8) * RAY).expect("fits"),
            U256::ZERO
        );
        assert_eq!(
            percent_mul(U256::from(3u8), U256::from(5000u16)).expect("fits"),
            U256::from(2u8)
        );
        assert_eq!(
            percent_mul(U256::ZERO, U256::from(5000u16)).expect("fits"),
            U256::ZERO
        );
        assert_eq!(
            wad_div(U256::from(1u8), U256::from(3u8)).expect("fits"),
            U256::from(333_333_333_333_333_333u64)
        );
        assert_eq!(ray_mul(U256::MAX, U256::from(2u8)), Err(Overflow));
    }

    #[test]
    fn a_year_of_linear_interest_adds_the_rate_and_compounding_adds_a_little_more() {
        let rate = ray(0.05);
        assert_eq!(
            linear_interest(rate, SECONDS_PER_YEAR).expect("fits"),
            RAY + rate
        );
        let compounded = compounded_interest(rate, SECONDS_PER_YEAR).expect("fits");
        // e^0.05 = 1.051271096…; the third-order expansion stops at 1.0512708…
        let as_f64 = compounded.to_string().parse::<f64>().expect("fits") / 1e27;
        assert!((as_f64 - 1.051_270_8).abs() < 1e-6, "{as_f64}");
        assert_eq!(compounded_interest(rate, 0).expect("fits"), RAY);
        // One second: exactly 1 + rate/year (the higher terms vanish).
        assert_eq!(
            compounded_interest(rate, 1).expect("fits"),
            RAY + rate / U256::from(SECONDS_PER_YEAR)
        );
    }

    /// `dollars` in the fixture oracles' 8-decimal base.
    fn usd(dollars: u64) -> U256 {
        U256::from(dollars) * U256::from(100_000_000u64)
    }

    fn setup() -> (Market, Address, Address, Address) {
        let (weth, usdc, user) = (
            Address::repeat_byte(1),
            Address::repeat_byte(2),
            Address::repeat_byte(9),
        );
        let mut m = Market::default();
        for (reserve, decimals, ltv, lt) in [(weth, 18u8, 8000u16, 8250u16), (usdc, 6, 8000, 8500)]
        {
            m.apply(&MarketEvent::ReserveConfigured {
                reserve,
                decimals,
                params: ReserveParams {
                    ltv,
                    liquidation_threshold: lt,
                    liquidation_bonus: 10500,
                },
            })
            .expect("fits");
            m.apply(&MarketEvent::ReserveUpdated {
                reserve,
                decimals,
                index: ReserveIndex {
                    liquidity_rate: ray(0.02),
                    variable_borrow_rate: ray(0.05),
                    updated_at: 1_000,
                    ..ReserveIndex::default()
                },
            })
            .expect("fits");
        }
        (m, weth, usdc, user)
    }

    fn prices(weth: Address) -> impl Fn(Address) -> Option<U256> {
        move |r| {
            Some(U256::from(if r == weth {
                2_000 * 100_000_000u64
            } else {
                100_000_000
            }))
        }
    }

    #[test]
    fn the_health_factor_is_collateral_times_threshold_over_debt_and_falls_as_debt_accrues() {
        let (mut m, weth, usdc, user) = setup();
        m.apply(&MarketEvent::CollateralUse {
            user,
            reserve: weth,
            enabled: true,
        })
        .expect("fits");
        m.apply(&MarketEvent::Supply {
            user,
            reserve: weth,
            decimals: 18,
            amount: WAD * U256::from(10u8),
        })
        .expect("fits");
        m.apply(&MarketEvent::Borrow {
            user,
            reserve: usdc,
            decimals: 6,
            amount: U256::from(10_000_000_000u64),
        })
        .expect("fits");
        let at_once = m.account(user, 1_000, prices(weth)).expect("fits");
        // 10 ETH × $2000 = $20,000 × 0.825 / $10,000 = 1.65.
        assert_eq!(at_once.total_collateral_base, usd(20000));
        assert_eq!(at_once.total_debt_base, usd(10000));
        assert_eq!(
            at_once.health_factor,
            U256::from(1_650_000_000_000_000_000u64)
        );
        assert_eq!(at_once.available_borrows_base, usd(6000));
        let later = m
            .account(user, 1_000 + SECONDS_PER_YEAR, prices(weth))
            .expect("fits");
        assert!(later.total_debt_base > usd(10500));
        assert!(later.total_collateral_base == usd(20400));
        assert!(later.health_factor < at_once.health_factor);
    }

    /// 10 ETH against $10,000 of USDC; in a category holding both at LTV 90% / threshold 93%,
    /// the ETH counts at 0.93 (HF 1.86) instead of 0.825 (1.65). Leaving it, or taking ETH out of
    /// the category, goes back to the reserve's own; a category the user is not in changes
    /// nothing.
    #[test]
    fn e_mode_weights_collateral_of_the_users_category_with_the_categorys_parameters() {
        let (mut m, weth, usdc, user) = setup();
        for e in [
            MarketEvent::CollateralUse {
                user,
                reserve: weth,
                enabled: true,
            },
            MarketEvent::Supply {
                user,
                reserve: weth,
                decimals: 18,
                amount: WAD * U256::from(10u8),
            },
            MarketEvent::Borrow {
                user,
                reserve: usdc,
                decimals: 6,
                amount: U256::from(10_000_000_000u64),
            },
            MarketEvent::EModeCategory {
                id: 1,
                params: ReserveParams {
                    ltv: 9000,
                    liquidation_threshold: 9300,
                    liquidation_bonus: 10100,
                },
            },
            MarketEvent::EModeAsset {
                reserve: weth,
                category: 1,
            },
            MarketEvent::EModeAsset {
                reserve: usdc,
                category: 1,
            },
        ] {
            m.apply(&e).expect("fits");
        }
        let hf = |m: &Market| m.account(user, 1_000, prices(weth)).expect("fits");
        assert_eq!(
            hf(&m).health_factor,
            U256::from(1_650_000_000_000_000_000u64)
        );
        m.apply(&MarketEvent::UserEMode { user, category: 1 })
            .expect("fits");
        let in_mode = hf(&m);
        assert_eq!(
            in_mode.health_factor,
            U256::from(1_860_000_000_000_000_000u64)
        );
        assert_eq!(in_mode.ltv, U256::from(9000u16));
        assert_eq!(in_mode.available_borrows_base, usd(8000));
        m.apply(&MarketEvent::EModeAsset {
            reserve: weth,
            category: 2,
        })
        .expect("fits");
        assert_eq!(
            hf(&m).health_factor,
            U256::from(1_650_000_000_000_000_000u64)
        );
        m.apply(&MarketEvent::EModeAsset {
            reserve: weth,
            category: 1,
        })
        .expect("fits");
        m.apply(&MarketEvent::UserEMode { user, category: 0 })
            .expect("fits");
        assert_eq!(
            hf(&m).health_factor,
            U256::from(1_650_000_000_000_000_000u64)
        );
    }

    #[test]
    fn disabled_collateral_and_unconfigured_reserves_do_not_count() {
        let (mut m, weth, usdc, user) = setup();
        m.apply(&MarketEvent::Supply {
            user,
            reserve: weth,
            decimals: 18,
            amount: WAD,
        })
        .expect("fits");
        m.apply(&MarketEvent::Borrow {
            user,
            reserve: usdc,
            decimals: 6,
            amount: U256::from(100_000_000u64),
        })
        .expect("fits");
        let a = m.account(user, 1_000, prices(weth)).expect("fits");
        assert_eq!(a.total_collateral_base, U256::ZERO);
        assert_eq!(a.health_factor, U256::ZERO);
        let stranger = Address::repeat_byte(0x77);
        let none = m.account(stranger, 1_000, prices(weth)).expect("fits");
        assert_eq!(none.health_factor, U256::MAX);
        // A held reserve without a price is an error, not a guess.
        assert_eq!(
            m.account(user, 1_000, |_| None),
            Err(AccountError::NoPrice(usdc))
        );
    }

    #[test]
    fn scaled_balances_survive_index_changes_and_a_full_repay_clears_the_debt() {
        let (mut m, weth, usdc, user) = setup();
        m.apply(&MarketEvent::Borrow {
            user,
            reserve: usdc,
            decimals: 6,
            amount: U256::from(1_000_000_000u64),
        })
        .expect("fits");
        let t = 1_000 + 90 * 86_400;
        let index = m.reserves[&usdc].index;
        let owed = m.balances(user, t).expect("fits")[0].2;
        assert!(owed > U256::from(1_000_000_000u64));
        // The pool accrues, publishes the new index, then the repay of everything owed.
        m.apply(&MarketEvent::ReserveUpdated {
            reserve: usdc,
            decimals: 6,
            index: ReserveIndex {
                liquidity_index: index.normalized_income(t).expect("fits"),
                variable_borrow_index: index.normalized_debt(t).expect("fits"),
                updated_at: t,
                ..index
            },
        })
        .expect("fits");
        m.apply(&MarketEvent::Repay {
            user,
            reserve: usdc,
            amount: owed,
        })
        .expect("fits");
        assert_eq!(m.positions[&(user, usdc)].scaled_debt, U256::ZERO);
        let _ = weth;
    }
}
