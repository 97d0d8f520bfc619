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
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        let n = v.len();
        if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        }
    };
    let m = median(&mut history.to_vec());
    let mad = median(&mut history.iter().map(|h| (h - m).abs()).collect());
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
