//! Pool analytics, pure: depth within a price bound, TVL, oracle deviation and a robust anomaly
//! score of reserve-ratio changes, for Uniswap-V2-style (constant product) pools.

/// Amount of the input token (whole units) that moves a constant-product pool's price by
/// `bound` (0.02 = 2%), fee ignored: with reserves (x, y), selling dx of x moves the price x/y…
/// to y/x · x²/(x+dx)², so dx = x · (1/√(1−bound) − 1).
pub fn depth_in(reserve_in: f64, bound: f64) -> f64 {
    if reserve_in <= 0.0 || !(0.0..1.0).contains(&bound) {
        return 0.0;
    }
    reserve_in * (1.0 / (1.0 - bound).sqrt() - 1.0)
}

/// USD tradable within ±`bound` of the current price: the token0 that moves the price down by
/// `bound` plus the token1 that moves it up by `bound`, each at its USD price.
pub fn depth_usd(reserve0: f64, price0: f64, reserve1: f64, price1: f64, bound: f64) -> f64 {
    depth_in(reserve0, bound) * price0 + depth_in(reserve1, bound) * price1
}

/// Robust z-score of `x` against `history`: (x − median) / (1.4826 · MAD); `None` with fewer
/// than 5 points or no spread.
pub fn robust_z(x: f64, history: &[f64]) -> Option<f64> {
    if history.len() < 5 {
        return None;
    }
    let m = median_of(history);
    let mad = median_of(&history.iter().map(|h| (h - m).abs()).collect::<Vec<_>>());
    (mad > 0.0).then(|| (x - m) / (1.4826 * mad))
}

/// The anomaly score of a pool's latest reserve-ratio change: |robust z| of the last log change
/// of reserve1/reserve0 against the changes before it (oldest first).
pub fn ratio_anomaly(ratios: &[f64]) -> Option<f64> {
    let changes: Vec<f64> = ratios
        .windows(2)
        .filter(|w| w[0] > 0.0 && w[1] > 0.0)
        .map(|w| (w[1] / w[0]).ln())
        .collect();
    let (last, before) = changes.split_last()?;
    robust_z(*last, before).map(f64::abs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_moves_the_price_by_the_bound() {
        // 100 ETH / 200,000 USDC: selling dx ETH leaves price' = 200000·100 / (100+dx)².
        let dx = depth_in(100.0, 0.02);
        let price_before = 200_000.0 / 100.0;
        let price_after = 200_000.0 * 100.0 / (100.0 + dx).powi(2);
        assert!((price_after / price_before - 0.98).abs() < 1e-12);
        // Both sides at $2,000 / $1: the two sides are worth the same.
        let usd = depth_usd(100.0, 2000.0, 200_000.0, 1.0, 0.02);
        assert!((usd - 2.0 * dx * 2000.0).abs() < 1e-6);
        assert_eq!(depth_in(0.0, 0.02), 0.0);
        assert_eq!(depth_in(100.0, 1.5), 0.0);
    }

    #[test]
    fn a_jump_in_the_ratio_is_an_anomaly_and_noise_is_not() {
        let mut ratios: Vec<f64> = (0..50)
            .map(|i| 2000.0 * (1.0 + 0.001 * ((i * 7 % 5) as f64 - 2.0)))
            .collect();
        let calm = ratio_anomaly(&ratios).expect("score");
        assert!(calm < 3.0, "{calm}");
        ratios.push(ratios[49] * 0.8);
        let jump = ratio_anomaly(&ratios).expect("score");
        assert!(jump > 10.0, "{jump}");
        assert!(
            robust_z(1.0, &[1.0, 1.0, 1.0, 1.0, 1.0]).is_none(),
            "no spread"
        );
    }
}

/// Least-squares line through `(x, y)` points evaluated at `at`; `None` with fewer than three
/// points or no spread in x.
pub fn linear_forecast(points: &[(f64, f64)], at: f64) -> Option<f64> {
    if points.len() < 3 {
        return None;
    }
    let n = points.len() as f64;
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if sxx <= 0.0 {
        return None;
    }
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    Some(my + sxy / sxx * (at - mx))
}

/// A forecast liquidity shortage of a lending reserve, with what to do about it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Shortage {
    pub utilisation_now: f64,
    pub utilisation_forecast: f64,
    /// Hours ahead the forecast is for.
    pub horizon_hours: f64,
    pub bound: f64,
    /// Whole tokens to supply so the forecast utilisation comes back to `target`.
    pub provision: f64,
    pub target: f64,
}

/// Forecasts a reserve's utilisation (debt / supply) `horizon_hours` ahead from its history
/// `(hours, supply, debt)` (oldest first; supply and debt each on a least-squares trend) and
/// reports a shortage when the forecast reaches `bound`, recommending the supply that brings
/// it back to `target`. Needs at least three points spanning an hour.
pub fn utilisation_shortage(
    history: &[(f64, f64, f64)],
    horizon_hours: f64,
    bound: f64,
    target: f64,
) -> Option<Shortage> {
    let (first, last) = (history.first()?, history.last()?);
    if last.0 - first.0 < 1.0 || last.1 <= 0.0 {
        return None;
    }
    let at = last.0 + horizon_hours;
    let supply: Vec<(f64, f64)> = history.iter().map(|h| (h.0, h.1)).collect();
    let debt: Vec<(f64, f64)> = history.iter().map(|h| (h.0, h.2)).collect();
    let supply_f = linear_forecast(&supply, at)?.max(0.0);
    let debt_f = linear_forecast(&debt, at)?.max(0.0);
    let forecast = if supply_f > 0.0 {
        debt_f / supply_f
    } else {
        f64::INFINITY
    };
    (forecast >= bound).then(|| Shortage {
        utilisation_now: last.2 / last.1,
        utilisation_forecast: forecast.min(1e6),
        horizon_hours,
        bound,
        provision: (debt_f / target - supply_f).max(0.0),
        target,
    })
}

#[cfg(test)]
mod forecast_tests {
    use super::*;

    #[test]
    fn a_line_is_extrapolated_exactly() {
        let points = [(0.0, 1.0), (1.0, 3.0), (2.0, 5.0)];
        assert!((linear_forecast(&points, 5.0).expect("forecast") - 11.0).abs() < 1e-12);
        assert!(linear_forecast(&points[..2], 5.0).is_none());
        assert!(linear_forecast(&[(1.0, 1.0), (1.0, 2.0), (1.0, 3.0)], 5.0).is_none());
    }

    #[test]
    fn rising_borrowing_forecasts_a_shortage_with_the_supply_to_add() {
        // Supply flat at 1,000; debt 500, 600, 700, 800 over 3 hours: in 2 hours 1,000 debt,
        // utilisation 100% ≥ 90% → supply 1000 / 0.8 − 1000 = 250 to get back to 80%.
        let history = [
            (0.0, 1000.0, 500.0),
            (1.0, 1000.0, 600.0),
            (2.0, 1000.0, 700.0),
            (3.0, 1000.0, 800.0),
        ];
        let s = utilisation_shortage(&history, 2.0, 0.9, 0.8).expect("shortage");
        assert!((s.utilisation_now - 0.8).abs() < 1e-12);
        assert!((s.utilisation_forecast - 1.0).abs() < 1e-12);
        assert!((s.provision - 250.0).abs() < 1e-9);
        // Flat borrowing: no shortage; less than an hour of history: no forecast.
        let flat = [
            (0.0, 1000.0, 500.0),
            (1.0, 1000.0, 500.0),
            (2.0, 1000.0, 500.0),
        ];
        assert!(utilisation_shortage(&flat, 2.0, 0.9, 0.8).is_none());
        let short = [
            (0.0, 1000.0, 500.0),
            (0.2, 1000.0, 900.0),
            (0.4, 1000.0, 990.0),
        ];
        assert!(utilisation_shortage(&short, 2.0, 0.9, 0.8).is_none());
    }
}

/// A forecast shortage of an AMM pool's depth, with the liquidity that would restore it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DepthShortage {
    /// Depth now and forecast, in the unit of the history (the caller's: token0 base units).
    pub depth_now: f64,
    pub depth_forecast: f64,
    /// The window's median depth, the reference the bound and target are shares of.
    pub depth_reference: f64,
    pub horizon_hours: f64,
    pub bound: f64,
    pub target: f64,
    /// Share of the current reserves to add (both tokens, at the current ratio) so the
    /// forecast depth comes back to `target` × reference. Depth is proportional to reserves at
    /// a given price, so this is (target · reference − forecast) / now.
    pub add_share: f64,
}

/// Depth of a constant-product pool within ±`bound` of its price, in token0 base units: selling
/// token0 moves the price down by `bound`, buying it with token1 moves it up, and at the pool's
/// own price the token1 side is worth as much as `depth_in(reserve0)`, so both sides together are
/// 2 · depth_in(reserve0). Price moves do not change it; liquidity added or pulled does.
pub fn depth_token0(reserve0: f64, bound: f64) -> f64 {
    2.0 * depth_in(reserve0, bound)
}

/// The median of a non-empty slice.
fn median_of(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The depth forecast `hours` after the last point of `history` (`(hours, depth)`, oldest first,
/// on a least-squares trend, never below zero); `None` with fewer than three points or less than
/// an hour of history.
pub fn depth_forecast(history: &[(f64, f64)], hours: f64) -> Option<f64> {
    let (first, last) = (history.first()?, history.last()?);
    if last.0 - first.0 < 1.0 {
        return None;
    }
    linear_forecast(history, last.0 + hours).map(|d| d.max(0.0))
}

/// Forecasts a pool's depth `horizon_hours` ahead from its history (`(hours, depth)`, oldest
/// first) and reports a shortage when the forecast falls below `bound` × the window's median
/// depth, recommending the liquidity that brings it back to `target` × that median.
pub fn depth_shortage(
    history: &[(f64, f64)],
    horizon_hours: f64,
    bound: f64,
    target: f64,
) -> Option<DepthShortage> {
    let forecast = depth_forecast(history, horizon_hours)?;
    let now = history.last()?.1;
    let reference = median_of(&history.iter().map(|h| h.1).collect::<Vec<_>>());
    if reference <= 0.0 || forecast >= bound * reference {
        return None;
    }
    Some(DepthShortage {
        depth_now: now,
        depth_forecast: forecast,
        depth_reference: reference,
        horizon_hours,
        bound,
        target,
        add_share: if now > 0.0 {
            (target * reference - forecast).max(0.0) / now
        } else {
            f64::INFINITY
        },
    })
}

#[cfg(test)]
mod depth_forecast_tests {
    use super::*;

    #[test]
    fn depth_in_token0_counts_both_sides_at_the_pool_price() {
        // 100 ETH / 200,000 USDC at $2,000: depth_usd with both sides priced by the pool equals
        // depth_token0 × the ETH price.
        let usd = depth_usd(100.0, 2000.0, 200_000.0, 1.0, 0.02);
        assert!((depth_token0(100.0, 0.02) * 2000.0 - usd).abs() < 1e-6);
    }

    #[test]
    fn liquidity_being_pulled_forecasts_a_shortage_with_the_liquidity_to_add() {
        // Depth 100, 90, 80, 70, 60 over 4 hours: in 2 hours 40, below 0.5 × median 80 = 40?
        // 40 is not below 40: no shortage at 2 h; at 3 h the forecast is 30 → shortage.
        let history = [
            (0.0, 100.0),
            (1.0, 90.0),
            (2.0, 80.0),
            (3.0, 70.0),
            (4.0, 60.0),
        ];
        assert!((depth_forecast(&history, 2.0).expect("forecast") - 40.0).abs() < 1e-9);
        assert!(depth_shortage(&history, 2.0, 0.5, 0.8).is_none());
        let s = depth_shortage(&history, 3.0, 0.5, 0.8).expect("shortage");
        assert!((s.depth_forecast - 30.0).abs() < 1e-9);
        assert!((s.depth_reference - 80.0).abs() < 1e-12);
        // Back to 0.8 × 80 = 64 from a forecast of 30: add 34 of the 60 now, 56.7% of reserves.
        assert!((s.add_share - 34.0 / 60.0).abs() < 1e-12);
        // A cliff (90% pulled at once) forecasts a floor at zero, and a shortage.
        let cliff = [(0.0, 100.0), (1.0, 100.0), (2.0, 100.0), (3.0, 10.0)];
        let s = depth_shortage(&cliff, 6.0, 0.5, 0.8).expect("shortage");
        assert_eq!(s.depth_forecast, 0.0);
        assert!((s.add_share - 8.0).abs() < 1e-12, "{}", s.add_share);
    }

    #[test]
    fn steady_or_growing_depth_and_short_histories_raise_nothing() {
        let steady = [(0.0, 100.0), (1.0, 101.0), (2.0, 99.0), (3.0, 100.0)];
        assert!(depth_shortage(&steady, 6.0, 0.5, 0.8).is_none());
        let growing = [(0.0, 50.0), (1.0, 70.0), (2.0, 90.0)];
        assert!(depth_shortage(&growing, 6.0, 0.5, 0.8).is_none());
        let short = [(0.0, 100.0), (0.3, 50.0), (0.6, 10.0)];
        assert!(depth_forecast(&short, 1.0).is_none());
        assert!(depth_shortage(&short, 1.0, 0.5, 0.8).is_none());
    }
}
