//! Credit and position features: pure functions over a wallet's history and current holdings
//! (no clock: "now" is an argument, so a backtest computes the same features a live run did).
//!
//! Risk maths here is `f64` on purpose: a health factor or a volatility is an estimate, compared
//! against thresholds, never booked. Money amounts stay exact in the read models.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use crate::envelope::{DefiEvent, Envelope, LendingAction};

/// One reserve of an account, in whole tokens and one price unit (USD, or ETH as Aave V2's
/// oracle quotes). `liquidation_threshold` is a fraction (0.825), 0 when the asset is not used
/// as collateral.
#[derive(Debug, Clone, PartialEq)]
pub struct Holding {
    pub symbol: String,
    pub collateral: f64,
    pub debt: f64,
    pub price: f64,
    pub liquidation_threshold: f64,
}

/// An account's aggregates, Aave's way.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct AccountTotals {
    /// Σ collateral × price.
    pub collateral: f64,
    /// Σ collateral × price × liquidation threshold.
    pub collateral_x_threshold: f64,
    /// Σ debt × price.
    pub debt: f64,
}

impl AccountTotals {
    pub fn of(holdings: &[Holding]) -> AccountTotals {
        holdings.iter().fold(AccountTotals::default(), |mut t, h| {
            let value = h.collateral * h.price;
            t.collateral += value;
            t.collateral_x_threshold += value * h.liquidation_threshold;
            t.debt += h.debt * h.price;
            t
        })
    }

    /// Aave's health factor: Σ collateral·price·LT / Σ debt·price. `None` without debt (Aave
    /// reports the maximum uint there: nothing can be liquidated).
    pub fn health_factor(&self) -> Option<f64> {
        (self.debt > 0.0).then(|| self.collateral_x_threshold / self.debt)
    }
}

/// The health factor after every holding of `symbol` changes price by `shock` (−0.3 = −30%).
pub fn shocked_health_factor(holdings: &[Holding], symbol: &str, shock: f64) -> Option<f64> {
    let shocked: Vec<Holding> = holdings
        .iter()
        .map(|h| {
            let mut h = h.clone();
            if h.symbol == symbol {
                h.price *= 1.0 + shock;
            }
            h
        })
        .collect();
    AccountTotals::of(&shocked).health_factor()
}

/// Herfindahl–Hirschman index of the collateral value shares: 1 = a single asset, 1/n = n
/// equal assets; `None` without collateral.
pub fn collateral_concentration(holdings: &[Holding]) -> Option<f64> {
    let values: Vec<f64> = holdings
        .iter()
        .map(|h| h.collateral * h.price)
        .filter(|v| *v > 0.0)
        .collect();
    let total: f64 = values.iter().sum();
    (total > 0.0).then(|| values.iter().map(|v| (v / total).powi(2)).sum())
}

/// Standard deviation of log returns of a price series (per step of the series).
pub fn volatility(prices: &[f64]) -> Option<f64> {
    let returns: Vec<f64> = prices
        .windows(2)
        .filter(|w| w[0] > 0.0 && w[1] > 0.0)
        .map(|w| (w[1] / w[0]).ln())
        .collect();
    if returns.len() < 2 {
        return None;
    }
    let mean = returns.iter().sum::<f64>() / returns.len() as f64;
    let var = returns.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (returns.len() - 1) as f64;
    Some(var.sqrt())
}

/// One lending event of a wallet's history, as the features need it.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryEvent {
    pub action: LendingAction,
    pub at: DateTime<Utc>,
    /// USD at the event (for a liquidation: the debt covered), where known.
    pub usd: Option<f64>,
}

impl HistoryEvent {
    /// The history entry of a lending envelope with a time; `None` for other events.
    pub fn of(env: &Envelope) -> Option<HistoryEvent> {
        let at = env.block_time?;
        let action = env.event.lending_action()?;
        let usd = match &env.event {
            DefiEvent::Deposit(f)
            | DefiEvent::Borrow(f)
            | DefiEvent::Repay(f)
            | DefiEvent::Redeem(f) => f.amount_usd(),
            DefiEvent::Liquidation(l) => l.amount_usd(),
            _ => None,
        };
        Some(HistoryEvent {
            action,
            at,
            usd: usd.and_then(|u| u.0.to_string().parse().ok()),
        })
    }
}

/// Behaviour features of a wallet at `now`, from its history up to `now`. Each is documented
/// where it is defined; the scorecard turns them into points and reasons.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ActivityFeatures {
    /// Days from the first event to `now`.
    pub age_days: f64,
    /// Days from the last event to `now`.
    pub recency_days: f64,
    /// Events per action.
    pub counts: BTreeMap<LendingAction, u64>,
    /// USD per action (priced events only).
    pub usd: BTreeMap<LendingAction, f64>,
    /// USD repaid / USD borrowed; `None` without borrows.
    pub repay_to_borrow: Option<f64>,
    pub liquidations: u64,
    /// Days since the last liquidation; `None` if never liquidated.
    pub days_since_liquidation: Option<f64>,
    /// Debt covered by liquidations, USD.
    pub liquidated_usd: f64,
}

/// Computes [`ActivityFeatures`] from the events at or before `now` (later ones are ignored, so
/// a replay scores each moment with what was known then). `None` without any such event.
pub fn activity_features(history: &[HistoryEvent], now: DateTime<Utc>) -> Option<ActivityFeatures> {
    let mut fold = crate::profile::ActivityFold::default();
    for e in history.iter().filter(|e| e.at <= now) {
        fold.apply(e);
    }
    fold.features(now)
}

/// Liquidation threshold (fraction) by reserve symbol, where the event log does not carry one:
/// Aave V2's published values (the fixture pool uses the same for WETH/USDC/WBTC); an unknown
/// asset gets 0.65, the lowest of the common collateral, so an unknown is never optimistic.
pub fn liquidation_threshold(symbol: &str) -> f64 {
    match symbol.to_ascii_uppercase().trim_start_matches('W') {
        "ETH" => 0.825,
        "BTC" => 0.75,
        "USDC" | "USDT" => 0.85,
        "DAI" => 0.8,
        "STETH" => 0.75,
        "MATIC" | "AAVE" | "LINK" => 0.65,
        _ => 0.65,
    }
}

/// Liquidation bonus (factor) by reserve symbol: Aave V2's values (the fixture pool uses the
/// same for WETH/USDC/WBTC); an unknown asset gets 1.10, the high end, so bad debt is never
/// understated.
pub fn liquidation_bonus(symbol: &str) -> f64 {
    match symbol.to_ascii_uppercase().trim_start_matches('W') {
        "ETH" | "USDC" | "USDT" | "DAI" => 1.05,
        "STETH" | "LINK" => 1.075,
        _ => 1.10,
    }
}

/// Hours in the model's 30-day window (`scoring/train/train.py`: `HOURS_30D`).
pub const HOURS_30D: f64 = 720.0;

/// The longer of [`hourly_volatility`]'s two windows, in days: no point older than this before
/// `now` moves it.
pub const VOLATILITY_DAYS: i64 = 30;

/// Hourly volatility of log returns over the last 7 and 30 days before `now`, from price points
/// `(time, price)` of the collateral (oracle rounds, or recorded event prices). The points are
/// reduced to daily closes when they span at least three days (the daily standard deviation
/// over √24 is the hourly one under a random walk); otherwise consecutive points are taken as
/// hourly steps (the simulator posts one oracle round per recorded hour). `None` with fewer than
/// three usable prices.
pub fn hourly_volatility(
    points: &[(DateTime<Utc>, f64)],
    now: DateTime<Utc>,
) -> Option<(f64, f64)> {
    // The 30 days up to `now`, by time (a stable sort: points at one time keep their order);
    // the 7 days are its tail.
    let from = now - chrono::Duration::days(VOLATILITY_DAYS);
    let keep = |(t, p): &(DateTime<Utc>, f64)| *t <= now && *t > from && *p > 0.0;
    // The scorer passes its window already cut and sorted (`Visible::volatility_window`): then
    // the filter keeps every point and the sort moves none, so the points are read in place.
    let month: std::borrow::Cow<'_, [(DateTime<Utc>, f64)]> =
        if points.iter().all(keep) && points.is_sorted_by_key(|(t, _)| *t) {
            std::borrow::Cow::Borrowed(points)
        } else {
            let mut month: Vec<(DateTime<Utc>, f64)> =
                points.iter().copied().filter(|p| keep(p)).collect();
            month.sort_by_key(|(t, _)| *t);
            std::borrow::Cow::Owned(month)
        };
    let week_from = now - chrono::Duration::days(7);
    let week = &month[month.partition_point(|(t, _)| *t <= week_from)..];
    let vol = |pts: &[(DateTime<Utc>, f64)]| -> Option<f64> {
        // A day's close is its last point (the points are sorted by time).
        let mut closes: Vec<f64> = Vec::new();
        let mut day = None;
        for (t, p) in pts {
            let d = t.timestamp().div_euclid(86_400);
            match closes.last_mut() {
                Some(close) if day == Some(d) => *close = *p,
                _ => closes.push(*p),
            }
            day = Some(d);
        }
        if closes.len() >= 3 {
            volatility(&closes).map(|d| d / 24f64.sqrt())
        } else {
            let prices: Vec<f64> = pts.iter().map(|(_, p)| *p).collect();
            volatility(&prices)
        }
    };
    let v30 = vol(&month)?;
    let v7 = vol(week).unwrap_or(v30);
    Some((v7, v30))
}

/// Marks over price points sorted by time that let [`hourly_volatility`] be computed over any
/// window of them from the window's days instead of its points ([`DayMarks::hourly_volatility`]):
/// which points end their UTC day, and how many prices are not positive up to each point. A
/// scorer makes them once per reserve and batch and reads many windows of them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DayMarks {
    /// Indexes of the points that are the last of their day (the next point is on a later day,
    /// or there is none), ascending.
    last_of_day: Vec<u32>,
    /// `non_positive[i]`: how many of the first `i` points have a price ≤ 0 (`len() + 1`
    /// entries).
    non_positive: Vec<u32>,
}

impl DayMarks {
    /// The marks of `points`, which must be sorted by time (`None` if they are not, or are more
    /// than `u32::MAX`).
    pub fn of(points: &[(DateTime<Utc>, f64)]) -> Option<DayMarks> {
        if !points.is_sorted_by_key(|(t, _)| *t) || u32::try_from(points.len()).is_err() {
            return None;
        }
        let day = |t: &DateTime<Utc>| t.timestamp().div_euclid(86_400);
        let mut last_of_day = Vec::new();
        let mut non_positive = Vec::with_capacity(points.len() + 1);
        let mut count = 0u32;
        non_positive.push(0);
        for (i, (t, p)) in points.iter().enumerate() {
            if points
                .get(i + 1)
                .is_none_or(|(next, _)| day(next) != day(t))
            {
                last_of_day.push(i as u32);
            }
            count += u32::from(*p <= 0.0 || p.is_nan());
            non_positive.push(count);
        }
        Some(DayMarks {
            last_of_day,
            non_positive,
        })
    }

    /// [`hourly_volatility`]`(points, now)`, the same value to the bit, for `points` the points
    /// these marks were made of or a prefix of them: each window's daily closes are the marked
    /// points inside it and its last point. A window with a price that is not positive (which
    /// [`hourly_volatility`] leaves out) is computed by [`hourly_volatility`] itself.
    pub fn hourly_volatility(
        &self,
        points: &[(DateTime<Utc>, f64)],
        now: DateTime<Utc>,
    ) -> Option<(f64, f64)> {
        let from = now - chrono::Duration::days(VOLATILITY_DAYS);
        let start = points.partition_point(|(t, _)| *t <= from);
        let end = points.partition_point(|(t, _)| *t <= now).max(start);
        let (Some(before), Some(upto)) = (self.non_positive.get(start), self.non_positive.get(end))
        else {
            return hourly_volatility(points, now);
        };
        if upto != before {
            return hourly_volatility(&points[start..end], now);
        }
        let week_from = now - chrono::Duration::days(7);
        let week = points[start..end].partition_point(|(t, _)| *t <= week_from) + start;
        let vol = |from: usize| -> Option<f64> {
            let Some(last) = end.checked_sub(1).filter(|&l| l >= from) else {
                return volatility(&[]);
            };
            let first = self.last_of_day.partition_point(|&j| (j as usize) < from);
            let mut closes: Vec<f64> = self.last_of_day[first..]
                .iter()
                .map(|&j| j as usize)
                .take_while(|&j| j < last)
                .map(|j| points[j].1)
                .collect();
            closes.push(points[last].1);
            if closes.len() >= 3 {
                volatility(&closes).map(|d| d / 24f64.sqrt())
            } else {
                let prices: Vec<f64> = points[from..end].iter().map(|(_, p)| *p).collect();
                volatility(&prices)
            }
        };
        let v30 = vol(start)?;
        let v7 = vol(week).unwrap_or(v30);
        Some((v7, v30))
    }
}

/// The position model's inputs (`scoring/MODEL_CARD.md`), in its order: log health factor,
/// hourly volatility over 7 and 30 days, and the distance to liquidation in 30-day standard
/// deviations (log HF / (σ₃₀ · √720), capped at 50 as in training). `None` without debt.
pub fn position_features(holdings: &[Holding], vol_7d: f64, vol_30d: f64) -> Option<[f32; 4]> {
    let hf = AccountTotals::of(holdings).health_factor()?;
    let log_hf = hf.max(1e-9).ln();
    let distance = if vol_30d > 0.0 {
        (log_hf / (vol_30d * HOURS_30D.sqrt())).min(50.0)
    } else {
        50.0
    };
    Some([
        log_hf as f32,
        vol_7d as f32,
        vol_30d as f32,
        distance as f32,
    ])
}

/// One lending event as the position fold needs it: whole-token amounts per reserve.
#[derive(Debug, Clone, PartialEq)]
pub struct PositionFlow {
    pub action: LendingAction,
    pub at: DateTime<Utc>,
    /// The reserve of `amount` (for a liquidation: the debt reserve).
    pub reserve: String,
    pub symbol: String,
    pub amount: f64,
    /// A liquidation's collateral side: (reserve, symbol, whole tokens seized).
    pub seized: Option<(String, String, f64)>,
}

/// Collateral and debt per reserve from the flows at or before `now` (the read model's
/// `lending_position`, as of a time): deposits − redeems − seized collateral, borrows − repays −
/// covered debt. Principal only; a negative balance (repaid interest) counts as zero.
/// Returns (reserve, symbol, collateral, debt) sorted by reserve.
pub fn positions_at(flows: &[PositionFlow], now: DateTime<Utc>) -> Vec<(String, String, f64, f64)> {
    let mut book = crate::profile::PositionBook::default();
    for f in flows.iter().filter(|f| f.at <= now) {
        book.apply(f);
    }
    book.positions()
}

/// The collateral holding with the largest value: whose price path the position model follows.
pub fn dominant_collateral(holdings: &[Holding]) -> Option<&Holding> {
    holdings
        .iter()
        .filter(|h| h.collateral * h.price > 0.0)
        .max_by(|a, b| (a.collateral * a.price).total_cmp(&(b.collateral * b.price)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic xorshift sequence from `seed` (not zero).
    fn xorshift(mut seed: u64) -> impl FnMut() -> u64 {
        move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        }
    }

    /// Windows over marked points give what `hourly_volatility` gives over the same window,
    /// to the bit: points a few minutes to days apart (several a day, days without any), equal
    /// times, now and then a price that is not positive, every prefix a scorer could see, and
    /// times before, inside and after the points.
    #[test]
    fn day_marks_give_the_volatility_of_the_points_to_the_bit() {
        let mut next = xorshift(0x2545_f491_4f6c_dd1d);
        let start = DateTime::from_timestamp(1_600_000_000, 0).expect("time");
        let mut t = start;
        let mut price = 100.0f64;
        let mut points = Vec::new();
        for _ in 0..3_000 {
            let gap = match next() % 10 {
                0 => 0,
                1 => 86_400 * (1 + next() % 3) as i64,
                _ => (next() % 7_200) as i64,
            };
            t += chrono::Duration::seconds(gap);
            price *= 1.0 + ((next() % 2_001) as f64 - 1_000.0) / 50_000.0;
            let p = if next() % 400 == 0 { 0.0 } else { price };
            points.push((t, p));
        }
        let marks = DayMarks::of(&points).expect("sorted");
        let (mut compared, mut moved, mut fell_back) = (0, 0, 0);
        for end in (0..=points.len()).step_by(37) {
            let prefix = &points[..end];
            for offset_hours in [-50i64, 0, 7, 100, 400, 1_000, 2_000, 3_000, 5_000] {
                let now = start
                    + chrono::Duration::hours(offset_hours)
                    + chrono::Duration::seconds((next() % 3_600) as i64);
                let expected = hourly_volatility(prefix, now);
                assert_eq!(
                    marks.hourly_volatility(prefix, now),
                    expected,
                    "prefix {end}, now {now}"
                );
                compared += 1;
                moved += usize::from(expected.is_some());
                let from = now - chrono::Duration::days(VOLATILITY_DAYS);
                fell_back += usize::from(
                    prefix
                        .iter()
                        .any(|(t, p)| *t > from && *t <= now && *p <= 0.0),
                );
            }
        }
        assert!(moved > compared / 2, "{moved} of {compared}");
        assert!(fell_back > 10, "{fell_back}");
        // Points out of time order get no marks.
        let mut unsorted = points.clone();
        let i = (0..points.len() - 1)
            .find(|&i| points[i].0 < points[i + 1].0)
            .expect("times that move");
        unsorted.swap(i, i + 1);
        assert_eq!(DayMarks::of(&unsorted), None);
    }

    #[test]
    fn position_features_match_the_training_definition() {
        let h = |symbol: &str, collateral: f64, debt: f64, price: f64| Holding {
            symbol: symbol.into(),
            collateral,
            debt,
            price,
            liquidation_threshold: liquidation_threshold(symbol),
        };
        // 1 WETH at 2,000 against 1,000 USDC: HF = 2000·0.825/1000 = 1.65.
        let holdings = [h("WETH", 1.0, 0.0, 2000.0), h("USDC", 0.0, 1000.0, 1.0)];
        let f = position_features(&holdings, 0.01, 0.02).expect("has debt");
        assert!((f64::from(f[0]) - 1.65f64.ln()).abs() < 1e-6);
        let distance = 1.65f64.ln() / (0.02 * 720f64.sqrt());
        assert!((f64::from(f[3]) - distance).abs() < 1e-6, "{f:?}");
        assert_eq!(
            dominant_collateral(&holdings).expect("collateral").symbol,
            "WETH"
        );
        // No debt: no position risk. No volatility: the training cap.
        assert!(position_features(&holdings[..1], 0.01, 0.02).is_none());
        assert_eq!(
            position_features(&holdings, 0.0, 0.0).expect("debt")[3],
            50.0
        );
    }

    #[test]
    fn positions_fold_flows_up_to_now() {
        let t = |h: i64| DateTime::from_timestamp(1_650_000_000 + h * 3600, 0).expect("time");
        let flow = |action, h, reserve: &str, amount, seized| PositionFlow {
            action,
            at: t(h),
            reserve: reserve.into(),
            symbol: reserve.to_uppercase(),
            amount,
            seized,
        };
        let flows = vec![
            flow(LendingAction::Deposit, 0, "weth", 2.0, None),
            flow(LendingAction::Borrow, 1, "usdc", 3000.0, None),
            flow(LendingAction::Repay, 2, "usdc", 500.0, None),
            flow(
                LendingAction::Liquidation,
                3,
                "usdc",
                1000.0,
                Some(("weth".into(), "WETH".into(), 0.6)),
            ),
            flow(LendingAction::Repay, 4, "usdc", 2000.0, None),
        ];
        assert_eq!(
            positions_at(&flows, t(1)),
            vec![
                ("usdc".into(), "USDC".into(), 0.0, 3000.0),
                ("weth".into(), "WETH".into(), 2.0, 0.0)
            ]
        );
        let after = positions_at(&flows, t(3));
        assert_eq!(after[0].3, 1500.0);
        assert!((after[1].2 - 1.4).abs() < 1e-12);
        // Over-repaid (interest): zero debt, and the reserve drops out.
        assert_eq!(positions_at(&flows, t(5)).len(), 1);
    }

    /// The priced points of the `days` up to `now`, sorted by time (stable).
    fn window_of(
        points: &[(DateTime<Utc>, f64)],
        now: DateTime<Utc>,
        days: i64,
    ) -> Vec<(DateTime<Utc>, f64)> {
        let from = now - chrono::Duration::days(days);
        let mut v: Vec<_> = points
            .iter()
            .copied()
            .filter(|(t, p)| *t <= now && *t > from && *p > 0.0)
            .collect();
        v.sort_by_key(|(t, _)| *t);
        v
    }

    /// `hourly_volatility` as first written (each window filtered and sorted on its own, days
    /// through a map): the one-pass version must give the same bits.
    fn hourly_volatility_reference(
        points: &[(DateTime<Utc>, f64)],
        now: DateTime<Utc>,
    ) -> Option<(f64, f64)> {
        let window = |days: i64| window_of(points, now, days);
        let vol = |pts: &[(DateTime<Utc>, f64)]| -> Option<f64> {
            let days: BTreeMap<i64, f64> = pts
                .iter()
                .map(|(t, p)| (t.timestamp().div_euclid(86_400), *p))
                .collect();
            if days.len() >= 3 {
                let closes: Vec<f64> = days.values().copied().collect();
                volatility(&closes).map(|d| d / 24f64.sqrt())
            } else {
                let prices: Vec<f64> = pts.iter().map(|(_, p)| *p).collect();
                volatility(&prices)
            }
        };
        let v30 = vol(&window(30))?;
        let v7 = vol(&window(7)).unwrap_or(v30);
        Some((v7, v30))
    }

    #[test]
    fn one_pass_volatility_gives_the_same_bits_as_the_reference() {
        let t0 = DateTime::from_timestamp(1_650_000_000, 0).expect("in range");
        // A deterministic scramble: times out of order, several points per day, equal times,
        // zero prices, points after `now` and before the windows.
        let mut next = xorshift(0x2545_f491_4f6c_dd1d);
        let mut compared = 0;
        for case in 0..200 {
            let n = (next() % 400) as usize;
            let spread_hours = 1 + next() % 2_000;
            let points: Vec<(DateTime<Utc>, f64)> = (0..n)
                .map(|_| {
                    let t = t0 + chrono::Duration::minutes((next() % (spread_hours * 60)) as i64);
                    let p = if next() % 50 == 0 {
                        0.0
                    } else {
                        50.0 + (next() % 10_000) as f64 / 97.0
                    };
                    (t, p)
                })
                .collect();
            for hours in [0, 24, 100, 24 * 8, 24 * 31, spread_hours as i64] {
                let now = t0 + chrono::Duration::hours(hours);
                let ours = hourly_volatility(&points, now);
                let reference = hourly_volatility_reference(&points, now);
                assert_eq!(
                    ours.map(|(a, b)| (a.to_bits(), b.to_bits())),
                    reference.map(|(a, b)| (a.to_bits(), b.to_bits())),
                    "case {case}, {hours} h"
                );
                compared += usize::from(ours.is_some());
                // The window cut and sorted beforehand, as the scorer passes it: read in place.
                let cut = window_of(&points, now, VOLATILITY_DAYS);
                assert_eq!(
                    hourly_volatility(&cut, now).map(|(a, b)| (a.to_bits(), b.to_bits())),
                    reference.map(|(a, b)| (a.to_bits(), b.to_bits())),
                    "case {case}, {hours} h, cut beforehand"
                );
            }
        }
        assert!(compared > 300, "{compared}");
    }

    #[test]
    fn hourly_volatility_uses_daily_closes_when_it_can() {
        let t0 = DateTime::from_timestamp(1_650_000_000, 0).expect("time");
        // 20 days alternating ×1.1 / ÷1.1 at noon: daily log returns ±ln 1.1.
        let points: Vec<_> = (0..20)
            .map(|d| {
                let p = if d % 2 == 0 { 100.0 } else { 110.0 };
                (t0 + chrono::Duration::days(d), p)
            })
            .collect();
        let now = t0 + chrono::Duration::days(19) + chrono::Duration::hours(1);
        let (v7, v30) = hourly_volatility(&points, now).expect("enough prices");
        let daily = volatility(&points.iter().map(|p| p.1).collect::<Vec<_>>()).expect("vol");
        assert!((v30 - daily / 24f64.sqrt()).abs() < 1e-12);
        assert!(v7 > 0.0);
        // Within one day: consecutive points are the steps.
        let minutes: Vec<_> = [100.0, 101.0, 99.0, 100.5]
            .iter()
            .enumerate()
            .map(|(i, p)| (t0 + chrono::Duration::minutes(i as i64), *p))
            .collect();
        let (_, v) = hourly_volatility(&minutes, t0 + chrono::Duration::hours(1)).expect("vol");
        let steps = volatility(&[100.0, 101.0, 99.0, 100.5]).expect("vol");
        assert!((v - steps).abs() < 1e-12);
        assert!(hourly_volatility(&minutes[..2], t0 + chrono::Duration::hours(1)).is_none());
        // Prices after `now` are not seen.
        assert!(hourly_volatility(&minutes, t0 - chrono::Duration::hours(1)).is_none());
    }

    const CRED: &str = include_str!(
        "../../data/aave-v2-eth-hf-cred-sample/0x01acb3804ba9c42111c6e9c127831eb486ca1ac7.csv"
    );

    /// The Cred sample's per-reserve columns as holdings (balances are whole tokens, prices in
    /// ETH, thresholds a fraction or, in some rows, basis points).
    fn cred_rows() -> Vec<(Vec<Holding>, BTreeMap<String, f64>)> {
        let mut lines = CRED.lines();
        let header: Vec<&str> = lines.next().expect("header").split(',').collect();
        let symbols: Vec<&str> = header
            .iter()
            .filter_map(|c| c.strip_suffix("_LiqThreshold"))
            .collect();
        lines
            .map(|line| {
                let row: BTreeMap<&str, f64> = header
                    .iter()
                    .copied()
                    .zip(line.split(','))
                    .filter_map(|(k, v)| v.parse::<f64>().ok().map(|v| (k, v)))
                    .collect();
                let get = |k: String| row.get(k.as_str()).copied().unwrap_or(0.0);
                let holdings = symbols
                    .iter()
                    .map(|s| {
                        let lt = get(format!("{s}_LiqThreshold"));
                        Holding {
                            symbol: (*s).to_owned(),
                            collateral: get(format!("a{s}_balance")),
                            debt: get(format!("variabledebt{s}")) + get(format!("stabledebt{s}")),
                            price: get(format!("{s}_eth")),
                            liquidation_threshold: if lt > 1.0 { lt / 10_000.0 } else { lt },
                        }
                    })
                    .collect();
                let aggregates = [
                    "sum_total_collateral_eth_x_LT",
                    "total_collateral_eth",
                    "total_debt_eth",
                    "HF",
                ]
                .into_iter()
                .map(|k| (k.to_owned(), get(k.to_owned())))
                .collect();
                (holdings, aggregates)
            })
            .collect()
    }

    fn relative(a: f64, b: f64) -> f64 {
        ((a - b) / b).abs()
    }

    /// Rows where the source's per-reserve aWETH balance disagrees with its own collateral
    /// aggregate by more than 1e-5 relative (up to 1.3e-3): in 24 of these 29 the balance column
    /// is unchanged from the previous weekly snapshot while the aggregate moved, i.e. interest
    /// accrual reached the aggregate and not the column. Found by this test, kept visible.
    const CRED_INCONSISTENT_ROWS: [usize; 29] = [
        16, 20, 37, 38, 39, 40, 41, 45, 46, 47, 48, 49, 50, 51, 52, 53, 58, 62, 63, 64, 65, 66, 67,
        68, 69, 70, 71, 72, 73,
    ];

    #[test]
    fn the_health_factor_formula_reproduces_the_cred_sample_to_1e5_relative() {
        let rows = cred_rows();
        assert_eq!(rows.len(), 75);
        let mut checked = 0;
        for (index, (holdings, published)) in rows.iter().enumerate() {
            let totals = AccountTotals::of(holdings);
            if published["total_debt_eth"] <= 0.0 {
                assert_eq!(totals.health_factor(), None);
                continue;
            }
            // 1. The formula on the source's own aggregates: every row to 1e-5 (3.2e-6 seen).
            let from_aggregates = AccountTotals {
                collateral: published["total_collateral_eth"],
                collateral_x_threshold: published["sum_total_collateral_eth_x_LT"],
                debt: published["total_debt_eth"],
            };
            let hf = from_aggregates.health_factor().expect("has debt");
            assert!(relative(hf, published["HF"]) <= 1e-5, "row {index}: {hf}");
            // 2. From the per-reserve columns (balances × ETH prices × thresholds): the debt in
            // every row to 1e-5; the HF to 1e-5 in the 45 rows where the source agrees with
            // itself, and to 1.5e-3 in the others.
            assert!(
                relative(totals.debt, published["total_debt_eth"]) <= 1e-5,
                "row {index}"
            );
            let hf = totals.health_factor().expect("has debt");
            let tolerance = if CRED_INCONSISTENT_ROWS.contains(&index) {
                1.5e-3
            } else {
                1e-5
            };
            assert!(
                relative(hf, published["HF"]) <= tolerance,
                "row {index}: HF {hf} vs {}",
                published["HF"]
            );
            checked += 1;
        }
        assert_eq!(checked, 74, "every row with debt");
    }

    #[test]
    fn a_collateral_shock_lowers_the_health_factor_proportionally() {
        let holdings = vec![
            Holding {
                symbol: "WETH".into(),
                collateral: 10.0,
                debt: 0.0,
                price: 2000.0,
                liquidation_threshold: 0.825,
            },
            Holding {
                symbol: "USDC".into(),
                collateral: 0.0,
                debt: 12_000.0,
                price: 1.0,
                liquidation_threshold: 0.0,
            },
        ];
        let hf = AccountTotals::of(&holdings).health_factor().expect("debt");
        assert!((hf - 16_500.0 / 12_000.0).abs() < 1e-12);
        let shocked = shocked_health_factor(&holdings, "WETH", -0.3).expect("debt");
        assert!((shocked - hf * 0.7).abs() < 1e-12);
        assert_eq!(collateral_concentration(&holdings), Some(1.0));
    }

    #[test]
    fn volatility_is_the_sample_std_of_log_returns() {
        let v = volatility(&[100.0, 110.0, 99.0, 99.0]).expect("enough points");
        let r = [(1.1f64).ln(), (0.9f64).ln(), 0.0];
        let mean = r.iter().sum::<f64>() / 3.0;
        let expected = (r.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / 2.0).sqrt();
        assert!((v - expected).abs() < 1e-15);
        assert_eq!(volatility(&[1.0, 2.0]), None);
    }

    #[test]
    fn activity_features_only_see_the_past() {
        let t = |d: i64| DateTime::from_timestamp(d * 86_400, 0).expect("valid");
        let history = vec![
            HistoryEvent {
                action: LendingAction::Deposit,
                at: t(0),
                usd: Some(1000.0),
            },
            HistoryEvent {
                action: LendingAction::Borrow,
                at: t(10),
                usd: Some(500.0),
            },
            HistoryEvent {
                action: LendingAction::Repay,
                at: t(20),
                usd: Some(250.0),
            },
            HistoryEvent {
                action: LendingAction::Liquidation,
                at: t(30),
                usd: Some(100.0),
            },
        ];
        let f = activity_features(&history, t(25)).expect("some history");
        assert_eq!((f.age_days, f.recency_days), (25.0, 5.0));
        assert_eq!(f.repay_to_borrow, Some(0.5));
        assert_eq!((f.liquidations, f.days_since_liquidation), (0, None));
        let later = activity_features(&history, t(40)).expect("some history");
        assert_eq!(
            (later.liquidations, later.days_since_liquidation),
            (1, Some(10.0))
        );
        assert_eq!(later.liquidated_usd, 100.0);
        assert!(activity_features(&history, t(-1)).is_none());
    }
}

/// An off-chain signal about a wallet (`chainfold.attestations.v1`, keyed by wallet): a KYC
/// level, an off-chain credit bureau's view, a DAO's reputation. It enters the features only
/// while valid (`issued_at ≤ t < expires_at`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Attestation {
    pub schema_version: u16,
    pub chain_id: u64,
    pub wallet: alloy_primitives::Address,
    /// What is attested, e.g. `kyc`, `bureau_score`.
    pub kind: String,
    /// The issuer's signed assessment in [−1, 1]: −1 strongly negative, 1 strongly positive.
    pub value: f64,
    /// The issuer: for an attestation that counts, the 0x address that signed it.
    pub issuer: String,
    pub issued_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// The issuer's EIP-712 signature (65 bytes `r ‖ s ‖ v`, 0x hex), see [`crate::attest`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

/// Why an attestation is ignored (counted by the scorer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AttestationIssue {
    Malformed,
    Expired,
}

impl Attestation {
    /// Checks the fields that make an attestation usable at all.
    pub fn validate(&self) -> Result<(), String> {
        if self.schema_version != crate::SCHEMA_VERSION {
            return Err(format!(
                "unsupported schema version {}",
                self.schema_version
            ));
        }
        if self.kind.trim().is_empty() || self.issuer.trim().is_empty() {
            return Err("kind and issuer must not be empty".into());
        }
        if !self.value.is_finite() || !(-1.0..=1.0).contains(&self.value) {
            return Err(format!("value must be in [-1, 1], got {}", self.value));
        }
        if self.expires_at <= self.issued_at {
            return Err("expires_at must be after issued_at".into());
        }
        Ok(())
    }

    pub fn active_at(&self, t: DateTime<Utc>) -> bool {
        self.issued_at <= t && t < self.expires_at
    }

    /// Deterministic identity: the same attestation published twice is one.
    pub fn id(&self) -> crate::EventId {
        crate::EventId::of_record(
            self.chain_id,
            "attestation",
            &format!(
                "{:#x}|{}|{}|{}",
                self.wallet,
                self.issuer,
                self.kind,
                self.issued_at.timestamp_micros()
            ),
        )
    }
}

#[cfg(test)]
mod attestation_tests {
    use super::*;

    fn attestation(value: f64, from: i64, to: i64) -> Attestation {
        Attestation {
            schema_version: crate::SCHEMA_VERSION,
            chain_id: 137,
            wallet: alloy_primitives::Address::repeat_byte(1),
            kind: "kyc".into(),
            value,
            issuer: "issuer-a".into(),
            issued_at: DateTime::from_timestamp(from, 0).expect("time"),
            expires_at: DateTime::from_timestamp(to, 0).expect("time"),
            signature: None,
        }
    }

    #[test]
    fn validity_and_activity() {
        let a = attestation(0.5, 100, 200);
        assert!(a.validate().is_ok());
        assert!(a.active_at(DateTime::from_timestamp(150, 0).expect("time")));
        assert!(!a.active_at(DateTime::from_timestamp(200, 0).expect("time")));
        assert!(attestation(1.5, 100, 200).validate().is_err());
        assert!(attestation(0.5, 200, 100).validate().is_err());
        assert!(attestation(f64::NAN, 100, 200).validate().is_err());
        assert_eq!(
            a.id(),
            attestation(0.9, 100, 300).id(),
            "one attestation per wallet, issuer, kind and time"
        );
    }
}
