//! `chainfold stress`: the shock grid and Monte Carlo VaR of `domain::stress` on a chain's live
//! lending positions (the `lending_position` read model priced at the latest oracle round, else
//! the latest recorded event price), stored with their inputs in `stress_run` /
//! `stress_scenario`. Price history for betas and bootstrapping: the recorded hourly USD prices
//! (`aave-v2-eth-bhemen/usd_prices/<SYMBOL>_usd.csv.gz`); a held asset without a file (a
//! stablecoin in the bundled subset) does not move.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context as _;
use bigdecimal::BigDecimal;
use chainfold_domain::credit::{liquidation_bonus, liquidation_threshold};
use chainfold_domain::stress::{
    betas, bonus_estimates, default_shocks, monte_carlo, shock_grid, Account, Exposure,
    LiquidationRules, Position, ShockRow, VarResult,
};
use chainfold_platform::config::PostgresArgs;
use serde::Serialize;
use sqlx::PgPool;

/// `chainfold stress` settings.
#[derive(Debug, Clone, clap::Args)]
pub struct StressConfig {
    #[command(flatten)]
    pub postgres: PostgresArgs,
    /// Chain whose positions are stressed.
    #[arg(long = "chain-id")]
    pub chain_id: u64,
    /// Hourly USD price history (`<SYMBOL>_usd.csv[.gz]` files).
    #[arg(
        long = "prices-dir",
        env = "CHAINFOLD_PRICES_DIR",
        default_value = "data/aave-v2-eth-bhemen/usd_prices"
    )]
    pub prices_dir: PathBuf,
    #[arg(long = "paths", default_value_t = 2000)]
    pub paths: usize,
    #[arg(long = "horizon-hours", default_value_t = 24)]
    pub horizon_hours: usize,
    #[arg(long = "seed", default_value_t = 1)]
    pub seed: u64,
}

/// A stored run.
#[derive(Debug, Clone, Serialize)]
pub struct StressRun {
    pub id: i64,
    pub chain_id: u64,
    pub positions: usize,
    pub as_of_block: Option<i64>,
    pub scenarios: Vec<ShockRow>,
    pub var: Option<VarResult>,
    pub elapsed_ms: f64,
}

/// The chain's accounts with debt, priced now, or as of block `as_of` (positions from
/// `lending_position_as_of`, each asset at its last oracle answer at or before the block: what
/// the risk worker stresses, so a run depends on the chain up to its block only). Amounts are
/// exact (base units scaled by the reserve's decimals), prices the oracle's decimals; each
/// reserve's liquidation threshold and bonus are its latest `CollateralConfigurationChanged` at
/// or before the block, or, for a reserve whose configuration the log does not carry, the
/// symbol table's ([`liquidation_threshold`], [`liquidation_bonus`]). Returns the accounts and
/// the prices used.
pub async fn live_positions(
    pool: &PgPool,
    chain_id: u64,
    as_of: Option<i64>,
) -> anyhow::Result<(Vec<Account>, BTreeMap<String, BigDecimal>, Option<i64>)> {
    let rows = chainfold_store::lending::debtor_positions(pool, chain_id as i64, as_of).await?;
    let mut by_wallet: BTreeMap<String, Vec<Exposure>> = BTreeMap::new();
    let mut prices = BTreeMap::new();
    let mut unpriced = std::collections::BTreeSet::new();
    let mut as_of = None;
    for chainfold_store::lending::DebtorPosition {
        wallet,
        symbol,
        collateral,
        debt,
        decimals,
        price,
        liquidation_threshold: threshold,
        liquidation_bonus: bonus,
        block,
    } in rows
    {
        as_of = as_of.max(block);
        let Some(price) = price else {
            unpriced.insert(wallet);
            continue;
        };
        let unit = BigDecimal::new(1.into(), i64::from(decimals));
        prices.insert(symbol.clone(), price.clone());
        by_wallet.entry(wallet).or_default().push(Exposure {
            threshold_bps: threshold
                .and_then(|t| u32::try_from(t).ok())
                .unwrap_or_else(|| bps(liquidation_threshold(&symbol))),
            bonus_bps: bonus
                .and_then(|b| u32::try_from(b).ok())
                .filter(|b| *b > 0)
                .unwrap_or_else(|| bps(liquidation_bonus(&symbol))),
            symbol,
            collateral: collateral * &unit,
            debt: debt * &unit,
            price,
        });
    }
    let accounts = by_wallet
        .into_iter()
        .filter(|(w, _)| !unpriced.contains(w))
        .map(|(id, exposures)| Account { id, exposures })
        .collect();
    Ok((accounts, prices, as_of))
}

/// A fraction of the symbol table in basis points.
fn bps(fraction: f64) -> u32 {
    (fraction * 10_000.0).round() as u32
}

/// A Monte Carlo estimate in USD, rounded to cents for storage and display (finer digits of a
/// sampled percentile would be noise, not precision).
pub fn cents(usd: f64) -> Option<BigDecimal> {
    usd.is_finite().then(|| {
        chainfold_domain::stress::decimal_of(usd)
            .with_scale_round(2, bigdecimal::RoundingMode::HalfEven)
    })
}

/// Hourly log returns per symbol on a common hourly grid (hours where every file has a price).
pub fn hourly_returns(
    dir: &Path,
    symbols: &[String],
) -> anyhow::Result<Vec<BTreeMap<String, f64>>> {
    let mut series: BTreeMap<String, BTreeMap<i64, f64>> = BTreeMap::new();
    for symbol in symbols {
        let candidates = [
            dir.join(format!("{symbol}_usd.csv.gz")),
            dir.join(format!("{symbol}_usd.csv")),
        ];
        let Some(path) = candidates.iter().find(|p| p.is_file()) else {
            continue;
        };
        let bytes = chainfold_platform::files::read_maybe_gzip(path)?;
        let mut reader = csv::Reader::from_reader(bytes.as_slice());
        let mut hours = BTreeMap::new();
        for row in reader.records() {
            let row = row.with_context(|| format!("reading {}", path.display()))?;
            let (Some(ms), Some(price)) = (
                row.get(1).and_then(|t| t.parse::<i64>().ok()),
                row.get(2).and_then(|p| p.parse::<f64>().ok()),
            ) else {
                continue;
            };
            if price > 0.0 {
                hours.insert(ms.div_euclid(3_600_000), price);
            }
        }
        series.insert(symbol.clone(), hours);
    }
    let Some(first) = series.values().next() else {
        return Ok(Vec::new());
    };
    let common: Vec<i64> = first
        .keys()
        .copied()
        .filter(|h| {
            series
                .values()
                .all(|s| s.contains_key(h) && s.contains_key(&(h - 1)))
        })
        .collect();
    Ok(common
        .into_iter()
        .map(|h| {
            series
                .iter()
                .map(|(symbol, s)| (symbol.clone(), (s[&h] / s[&(h - 1)]).ln()))
                .collect()
        })
        .collect())
}

/// Computes and stores a run for `chain_id`.
pub async fn run(pool: &PgPool, config: &StressConfig, trigger: &str) -> anyhow::Result<StressRun> {
    run_as_of(pool, config, trigger, None).await
}

/// [`run`] on the positions and prices as of `block` (now when `None`).
pub async fn run_as_of(
    pool: &PgPool,
    config: &StressConfig,
    trigger: &str,
    block: Option<i64>,
) -> anyhow::Result<StressRun> {
    let started = Instant::now();
    let (accounts, prices, as_of) = live_positions(pool, config.chain_id, block).await?;
    let symbols: Vec<String> = prices.keys().cloned().collect();
    let history = hourly_returns(&config.prices_dir, &symbols)?;
    let mut aligned: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for hour in &history {
        for (s, r) in hour {
            aligned.entry(s.clone()).or_default().push(*r);
        }
    }
    let rules = LiquidationRules::AAVE_V2;
    let scenarios = shock_grid(&accounts, &default_shocks(), &betas(&aligned), &rules);
    let bonus = bonus_estimates(&accounts);
    let positions: Vec<Position> = accounts.iter().map(Account::estimate).collect();
    let var = monte_carlo(
        &positions,
        &history,
        config.horizon_hours,
        config.paths,
        config.seed,
        &bonus,
        &rules,
    );
    let elapsed_ms = started.elapsed().as_secs_f64() * 1e3;
    let mut tx = pool.begin().await?;
    let run = chainfold_store::stress::NewRun {
        chain_id: config.chain_id as i64,
        as_of_block: as_of,
        trigger: trigger.to_owned(),
        positions: positions.len() as i32,
        prices: serde_json::to_value(&prices)?,
        rules: serde_json::to_value(rules)?,
        history_hours: history.len() as i32,
        paths: config.paths as i32,
        horizon_hours: config.horizon_hours as i32,
        var95_usd: var.as_ref().and_then(|v| cents(v.var95_usd)),
        evar99_usd: var.as_ref().and_then(|v| cents(v.evar99_usd)),
        lar95_usd: var.as_ref().and_then(|v| cents(v.lar95_usd)),
        elapsed_ms,
    };
    let id = chainfold_store::stress::insert(&mut tx, &run, &scenarios).await?;
    tx.commit().await?;
    Ok(StressRun {
        id,
        chain_id: config.chain_id,
        positions: positions.len(),
        as_of_block: as_of,
        scenarios,
        var,
        elapsed_ms,
    })
}
