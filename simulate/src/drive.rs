//! Driving recorded activity and the labelled scenarios through a deployment.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::Path;

use alloy::primitives::{Address, B256, U256};
use anyhow::Context as _;
use chainfold_domain::{DefiEvent, Envelope};
use chainfold_ingest::replay::{read_maybe_gzip, Dataset};
use serde::Serialize;

use crate::contracts::{units, Deployment};
use crate::SimulateArgs;

/// A scenario with a known label, for detectors' tests.
#[derive(Debug, Clone, Serialize)]
pub struct Label {
    /// `flash_loan_attack`, `liquidity_drain`, `oracle_crash`.
    pub kind: String,
    pub chain_id: u64,
    /// First and last block of the scenario's transactions.
    pub from_block: u64,
    pub to_block: u64,
    pub transactions: Vec<B256>,
    pub addresses: Vec<Address>,
    pub pools: Vec<Address>,
    /// What the scenario did, in numbers (loan, profit, share drained, price drop…).
    pub details: serde_json::Value,
}

/// What a simulation did.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub rpc_url: String,
    pub swaps: u64,
    pub lending: u64,
    pub oracle_updates: u64,
    /// Recorded actions the fixture refused (a borrow beyond LTV, a withdrawal that would
    /// liquidate): skipped, as the real protocol would revert them.
    pub refused: u64,
    pub labels: Vec<Label>,
    pub last_block: u64,
    pub chains_file: String,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "simulate: {} swaps, {} lending actions, {} oracle updates ({} recorded actions refused by the fixtures), {} labelled scenarios; chain at block {} on {}; follow it with `chainfold ingest rpc --chains {}`",
            self.swaps, self.lending, self.oracle_updates, self.refused, self.labels.len(), self.last_block, self.rpc_url, self.chains_file
        )
    }
}

/// Recorded hourly USD prices of `symbol` (bundled subset or `../shared/data`).
pub fn prices(data_dir: &Path, symbol: &str) -> anyhow::Result<Vec<f64>> {
    let path = data_dir.join(format!("aave-v2-eth-bhemen/usd_prices/{symbol}_usd.csv.gz"));
    let bytes = read_maybe_gzip(&path)?;
    let mut reader = csv::Reader::from_reader(bytes.as_slice());
    let mut out = Vec::new();
    for row in reader.records() {
        let row = row.with_context(|| format!("reading {}", path.display()))?;
        if let Some(price) = row.get(2).and_then(|p| p.parse::<f64>().ok()) {
            out.push(price);
        }
    }
    anyhow::ensure!(!out.is_empty(), "no prices in {}", path.display());
    Ok(out)
}

fn f64_of(amount: &chainfold_domain::TokenAmount) -> f64 {
    amount.to_string().parse().unwrap_or(0.0)
}

/// Deploys the fixtures and drives everything `args` asks for. Starts anvil when no
/// `--rpc-url` is given.
pub async fn run(args: &SimulateArgs) -> anyhow::Result<Summary> {
    let spawned = match &args.rpc_url {
        Some(_) => None,
        None => Some(crate::anvil::Anvil::spawn(args.chain_id)?),
    };
    let rpc_url = args
        .rpc_url
        .clone()
        .or_else(|| spawned.as_ref().map(|a| a.http_url()))
        .context("no node")?;
    let ws_url = spawned.as_ref().map(|a| a.ws_url());
    let weth_prices = prices(&args.data_dir, "WETH")?;
    let wbtc_prices = prices(&args.data_dir, "WBTC")?;
    let deployment = Deployment::deploy(&rpc_url, weth_prices[0], wbtc_prices[0]).await?;
    let mut summary = Summary {
        rpc_url: rpc_url.clone(),
        ..Summary::default()
    };
    std::fs::write(
        &args.chains_out,
        deployment.chains_toml("simulated", &rpc_url, ws_url.as_deref(), 2),
    )
    .with_context(|| format!("could not write {}", args.chains_out.display()))?;
    summary.chains_file = args.chains_out.display().to_string();
    let mut sim = Sim::new(deployment, weth_prices, wbtc_prices);
    sim.seed_liquidity().await?;
    sim.drive_recorded(args, &mut summary).await?;
    if !args.no_scenarios {
        summary.labels.push(sim.flash_loan_attack().await?);
        summary.labels.push(sim.liquidity_drain().await?);
        summary.labels.push(sim.oracle_crash().await?);
        let mut file = std::fs::File::create(&args.labels)
            .with_context(|| format!("could not write {}", args.labels.display()))?;
        for label in &summary.labels {
            writeln!(file, "{}", serde_json::to_string(label)?)?;
        }
    }
    summary.last_block = alloy::providers::Provider::get_block_number(&sim.d.provider).await?;
    if let (Some(anvil), false) = (&spawned, args.exit) {
        println!("{summary}");
        println!(
            "anvil (pid {}) keeps running on {}; Ctrl-C stops it",
            anvil.pid(),
            anvil.http_url()
        );
        let _ = tokio::signal::ctrl_c().await;
    }
    Ok(summary)
}

/// A deployment with the simulator's bookkeeping.
#[derive(Debug)]
pub struct Sim {
    pub d: Deployment,
    weth_prices: Vec<f64>,
    wbtc_prices: Vec<f64>,
    weth_usd: f64,
    lp: Address,
    funded: HashMap<Address, ()>,
}

impl Sim {
    pub fn new(d: Deployment, weth_prices: Vec<f64>, wbtc_prices: Vec<f64>) -> Sim {
        let weth_usd = weth_prices[0];
        // A fixed, recognisable liquidity provider.
        let lp = Address::repeat_byte(0x1f);
        Sim {
            d,
            weth_prices,
            wbtc_prices,
            weth_usd,
            lp,
            funded: HashMap::new(),
        }
    }

    /// Gas money, big token balances and router/pool approvals, once per actor.
    async fn actor(&mut self, who: Address) -> anyhow::Result<()> {
        if self.funded.contains_key(&who) {
            return Ok(());
        }
        for asset in [
            self.d.weth.clone(),
            self.d.usdc.clone(),
            self.d.wbtc.clone(),
        ] {
            self.d
                .fund(who, asset.token, units(1e9, asset.decimals))
                .await?;
            self.d.approve(who, asset.token, self.d.router).await?;
            self.d
                .approve(who, asset.token, self.d.lending_pool)
                .await?;
        }
        for pair in self.d.pairs.clone() {
            self.d.approve(who, pair, self.d.router).await?;
        }
        self.funded.insert(who, ());
        Ok(())
    }

    /// Deep WETH/USDC and WBTC/WETH pairs at the oracle prices, and lending liquidity. (The small
    /// WETH/USDC pair is seeded, mispriced, by the flash-loan scenario.)
    pub async fn seed_liquidity(&mut self) -> anyhow::Result<()> {
        let lp = self.lp;
        self.actor(lp).await?;
        let (weth, usdc, wbtc) = (
            self.d.weth.clone(),
            self.d.usdc.clone(),
            self.d.wbtc.clone(),
        );
        let p = self.weth_usd;
        let btc_in_eth = self.wbtc_prices[0] / p;
        for (pair, a_amount, a, b_amount, b) in [
            (self.d.pairs[0], 2_000.0, &weth, 2_000.0 * p, &usdc),
            (self.d.pairs[2], 100.0, &wbtc, 100.0 * btc_in_eth, &weth),
        ] {
            let (_, _, token0) = self.d.reserves(pair).await?;
            let (x, y) = (units(a_amount, a.decimals), units(b_amount, b.decimals));
            let (amount0, amount1) = if token0 == a.token { (x, y) } else { (y, x) };
            self.d.add_liquidity(lp, pair, amount0, amount1).await?;
        }
        for asset in [&weth, &usdc, &wbtc] {
            let amount = match asset.symbol.as_str() {
                "WETH" => 5_000.0,
                "USDC" => 10_000_000.0,
                _ => 300.0,
            };
            self.d
                .deposit(lp, asset.token, units(amount, asset.decimals))
                .await?;
        }
        Ok(())
    }

    /// Recorded swaps, lending flows and oracle answers, interleaved as they would be on a chain.
    async fn drive_recorded(
        &mut self,
        args: &SimulateArgs,
        summary: &mut Summary,
    ) -> anyhow::Result<()> {
        let swaps = self.recorded_swaps(&args.data_dir, args.pools, args.swaps)?;
        let lending = recorded_lending(&args.data_dir, args.wallets)?;
        let hours = args.price_hours.min(self.weth_prices.len());
        let steps = swaps.len().max(lending.len()).max(hours);
        let (mut s, mut l, mut h) = (0, 0, 0);
        for step in 0..steps {
            if s < swaps.len() && s * steps <= step * swaps.len() {
                let (pool_index, who, token0_in, fraction) = swaps[s];
                s += 1;
                let pair = self.d.pairs[pool_index % 2];
                self.actor(who).await?;
                let (r0, r1, token0) = self.d.reserves(pair).await?;
                let token1 = if token0 == self.d.weth.token {
                    self.d.usdc.token
                } else {
                    self.d.weth.token
                };
                let (token_in, reserve_in) = if token0_in {
                    (token0, r0)
                } else {
                    (token1, r1)
                };
                let amount =
                    reserve_in * U256::from((fraction * 1e6) as u64) / U256::from(1_000_000u64);
                match self.d.swap(who, pair, token_in, amount).await {
                    Ok(_) => summary.swaps += 1,
                    Err(err) => {
                        tracing::debug!(%err, "swap refused");
                        summary.refused += 1;
                    }
                }
            }
            if l < lending.len() && l * steps <= step * lending.len() {
                let env = &lending[l];
                l += 1;
                match self.lend(env).await {
                    Ok(true) => summary.lending += 1,
                    Ok(false) => {}
                    Err(err) => {
                        tracing::debug!(%err, "lending action refused");
                        summary.refused += 1;
                    }
                }
            }
            if h < hours && h * steps <= step * hours {
                self.weth_usd = self.weth_prices[h];
                let (weth, wbtc) = (self.d.weth.clone(), self.d.wbtc.clone());
                self.d.set_price(&weth, self.weth_prices[h]).await?;
                if let Some(btc) = self.wbtc_prices.get(h) {
                    self.d.set_price(&wbtc, *btc).await?;
                    summary.oracle_updates += 1;
                }
                summary.oracle_updates += 1;
                h += 1;
            }
        }
        Ok(())
    }

    /// The busiest recorded pools' swaps: (pool index, trader, token0 in?, share of the input
    /// reserve). Each recorded amount is scaled by the pool's median input amount so the median
    /// swap moves 0.2% of the fixture reserve (capped at 3%).
    fn recorded_swaps(
        &self,
        data_dir: &Path,
        pools: usize,
        per_pool: usize,
    ) -> anyhow::Result<Vec<(usize, Address, bool, f64)>> {
        let decoded = Dataset::Swaps.decode_dir(data_dir)?;
        let mut by_pool: HashMap<Address, Vec<chainfold_domain::Swap>> = HashMap::new();
        for env in decoded.into_iter().flatten() {
            if let DefiEvent::Swap(swap) = env.event {
                if !swap.reverted && swap.protocol == "uniswap_v2" {
                    by_pool.entry(swap.pool).or_default().push(swap);
                }
            }
        }
        let mut busiest: Vec<(Address, Vec<chainfold_domain::Swap>)> =
            by_pool.into_iter().collect();
        busiest.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.cmp(&b.0)));
        let mut out = Vec::new();
        for (index, (_, swaps)) in busiest.into_iter().take(pools).enumerate() {
            let mut medians: HashMap<Address, f64> = HashMap::new();
            for token in swaps.iter().map(|s| s.token_in) {
                if medians.contains_key(&token) {
                    continue;
                }
                let mut amounts: Vec<f64> = swaps
                    .iter()
                    .filter(|s| s.token_in == token)
                    .map(|s| f64_of(&s.amount_in))
                    .collect();
                amounts.sort_by(f64::total_cmp);
                medians.insert(token, amounts[amounts.len() / 2].max(1.0));
            }
            for swap in swaps.into_iter().take(per_pool) {
                let fraction = (f64_of(&swap.amount_in) / medians[&swap.token_in] * 0.002)
                    .clamp(0.00001, 0.03);
                // The recorded pair's token0 is the lower address, as in Uniswap V2.
                let token0_in = swap.token_in < swap.token_out;
                out.push((index, swap.sender, token0_in, fraction));
            }
        }
        Ok(out)
    }

    /// One recorded lending action on the fixture pool, valued in USD as recorded. Returns
    /// false for actions the fixtures do not model (liquidations are scripted instead).
    async fn lend(&mut self, env: &Envelope) -> anyhow::Result<bool> {
        let (flow, kind) = match &env.event {
            DefiEvent::Deposit(f) => (f, 0),
            DefiEvent::Borrow(f) => (f, 1),
            DefiEvent::Repay(f) => (f, 2),
            DefiEvent::Redeem(f) => (f, 3),
            _ => return Ok(false),
        };
        let Some(usd) = flow.amount_usd() else {
            return Ok(false);
        };
        let usd: f64 = usd.0.to_string().parse().unwrap_or(0.0);
        let asset = match flow.reserve.symbol.as_str() {
            "USDC" | "USDT" | "DAI" => self.d.usdc.clone(),
            "WBTC" => self.d.wbtc.clone(),
            _ => self.d.weth.clone(),
        };
        let price = match asset.symbol.as_str() {
            "USDC" => 1.0,
            "WETH" => self.weth_usd,
            _ => self.wbtc_prices[0],
        };
        let amount = units(usd / price, asset.decimals);
        if amount.is_zero() {
            return Ok(false);
        }
        let who = flow.wallet;
        self.actor(who).await?;
        match kind {
            0 => self.d.deposit(who, asset.token, amount).await?,
            1 => self.d.borrow(who, asset.token, amount).await?,
            2 => {
                let owed = self.d.debt(who, asset.token).await?;
                if owed.is_zero() {
                    return Ok(false);
                }
                self.d.repay(who, asset.token, amount.min(owed)).await?
            }
            _ => self.d.withdraw(who, asset.token, amount).await?,
        };
        Ok(true)
    }

    /// A flash loan of USDC, dumped into the deep pair and bought back on the small mispriced
    /// pair, repaid in the same transaction with profit left to the attacker.
    pub async fn flash_loan_attack(&mut self) -> anyhow::Result<Label> {
        let attacker_eoa = Address::repeat_byte(0xa7);
        self.d
            .fund(attacker_eoa, self.d.usdc.token, U256::ZERO)
            .await?;
        let contract = self.d.deploy_attacker(attacker_eoa).await?;
        let (pair_a, pair_b) = (self.d.pairs[0], self.d.pairs[1]);
        // Setup: the small pair gets liquidity at 1.5x the deep pair's current WETH price.
        let (a0, a1, a_token0) = self.d.reserves(pair_a).await?;
        let (a_weth, a_usdc) = if a_token0 == self.d.weth.token {
            (a0, a1)
        } else {
            (a1, a0)
        };
        let spot = a_usdc.to_string().parse::<f64>().unwrap_or(0.0)
            / 1e6
            / (a_weth.to_string().parse::<f64>().unwrap_or(1.0) / 1e18);
        let (weth_seed, usdc_seed) = (units(50.0, 18), units(50.0 * spot * 1.5, 6));
        let (b_amount0, b_amount1) = if a_token0 == self.d.weth.token {
            (weth_seed, usdc_seed)
        } else {
            (usdc_seed, weth_seed)
        };
        let lp = self.lp;
        let (setup_tx, _) = self
            .d
            .add_liquidity(lp, pair_b, b_amount0, b_amount1)
            .await?;
        let (r0, r1, token0) = self.d.reserves(pair_b).await?;
        let weth_b = if token0 == self.d.weth.token { r0 } else { r1 };
        // A loan worth a fifth of the small pair's WETH: about 20% profit on its 1.5x mispricing.
        let weth_b_whole: f64 = weth_b.to_string().parse::<f64>().unwrap_or(0.0) / 1e18;
        let loan = units(weth_b_whole * 0.2 * spot, 6);
        tracing::debug!(pair_b = ?self.d.reserves(pair_b).await?, pair_a = ?self.d.reserves(pair_a).await?, %loan, "flash-loan scenario");
        let before = self.d.balance(self.d.usdc.token, attacker_eoa).await?;
        let price_before = self.d.reserves(pair_a).await?;
        let (tx, block) = self
            .d
            .attack(
                attacker_eoa,
                contract,
                self.d.usdc.token,
                loan,
                pair_a,
                pair_b,
            )
            .await?;
        let after = self.d.balance(self.d.usdc.token, attacker_eoa).await?;
        let price_after = self.d.reserves(pair_a).await?;
        let profit = after.saturating_sub(before);
        Ok(Label {
            kind: "flash_loan_attack".into(),
            chain_id: self.d.chain_id,
            from_block: block.saturating_sub(2),
            to_block: block,
            transactions: vec![setup_tx, tx],
            addresses: vec![attacker_eoa, contract],
            pools: vec![pair_a, pair_b, self.d.lending_pool],
            details: serde_json::json!({
                "attack_tx": format!("{tx:#x}"),
                "attack_block": block,
                "asset": format!("{:#x}", self.d.usdc.token),
                "loan": loan.to_string(),
                "profit": profit.to_string(),
                "profit_share_of_loan": profit.to_string().parse::<f64>().unwrap_or(0.0) / loan.to_string().parse::<f64>().unwrap_or(1.0),
                "pair_a_reserves_before": [price_before.0.to_string(), price_before.1.to_string()],
                "pair_a_reserves_after": [price_after.0.to_string(), price_after.1.to_string()],
            }),
        })
    }

    /// The liquidity provider pulls 90% of its liquidity from the deep pair in one transaction.
    pub async fn liquidity_drain(&mut self) -> anyhow::Result<Label> {
        let pair = self.d.pairs[0];
        let lp_tokens = self.d.lp_balance(pair, self.lp).await?;
        let burn = lp_tokens * U256::from(9u8) / U256::from(10u8);
        let before = self.d.reserves(pair).await?;
        let (tx, block) = self.d.remove_liquidity(self.lp, pair, burn).await?;
        let after = self.d.reserves(pair).await?;
        Ok(Label {
            kind: "liquidity_drain".into(),
            chain_id: self.d.chain_id,
            from_block: block,
            to_block: block,
            transactions: vec![tx],
            addresses: vec![self.lp],
            pools: vec![pair],
            details: serde_json::json!({
                "share_of_lp_tokens_burned": 0.9,
                "reserves_before": [before.0.to_string(), before.1.to_string()],
                "reserves_after": [after.0.to_string(), after.1.to_string()],
            }),
        })
    }

    /// Three borrowers at a health factor near 1.2, then WETH's oracle answer drops 35%, then a
    /// liquidator repays half of each debt.
    pub async fn oracle_crash(&mut self) -> anyhow::Result<Label> {
        let weth = self.d.weth.clone();
        let usdc = self.d.usdc.clone();
        let first_price = self.d.price(&weth).await?;
        let mut txs = Vec::new();
        let mut addresses = Vec::new();
        let mut first_block = u64::MAX;
        let borrowers: Vec<Address> = (0..3u8).map(|i| Address::repeat_byte(0xb0 + i)).collect();
        for (i, who) in borrowers.iter().enumerate() {
            self.actor(*who).await?;
            let eth = 10.0 + i as f64 * 5.0;
            let (tx, block) = self.d.deposit(*who, weth.token, units(eth, 18)).await?;
            first_block = first_block.min(block);
            txs.push(tx);
            // Borrow to a health factor of about 1.2 (liquidation threshold 82.5%).
            let usd = eth * first_price * 0.825 / 1.2;
            txs.push(self.d.borrow(*who, usdc.token, units(usd, 6)).await?.0);
            addresses.push(*who);
        }
        let crashed = first_price * 0.65;
        let (crash_tx, _) = self.d.set_price(&weth, crashed).await?;
        self.weth_usd = crashed;
        txs.push(crash_tx);
        let liquidator = Address::repeat_byte(0x1d);
        self.actor(liquidator).await?;
        addresses.push(liquidator);
        let mut last_block = 0;
        let mut liquidated = 0;
        for who in &borrowers {
            let hf = self.d.health_factor(*who).await?;
            if hf >= U256::from(10u128.pow(18)) {
                continue;
            }
            let debt = self.d.debt(*who, usdc.token).await?;
            let (tx, block) = self
                .d
                .liquidate(
                    liquidator,
                    weth.token,
                    usdc.token,
                    *who,
                    debt / U256::from(2u8),
                )
                .await?;
            txs.push(tx);
            last_block = block;
            liquidated += 1;
        }
        anyhow::ensure!(liquidated > 0, "the oracle crash liquidated nobody");
        Ok(Label {
            kind: "oracle_crash".into(),
            chain_id: self.d.chain_id,
            from_block: first_block,
            to_block: last_block,
            transactions: txs,
            addresses,
            pools: vec![self.d.lending_pool, weth.feed],
            details: serde_json::json!({
                "feed": format!("{:#x}", weth.feed),
                "price_before": first_price,
                "price_after": crashed,
                "liquidations": liquidated,
            }),
        })
    }
}

/// The Polygon wallets with the longest histories, their events in time order.
fn recorded_lending(data_dir: &Path, wallets: usize) -> anyhow::Result<Vec<Envelope>> {
    let decoded: Vec<Envelope> = Dataset::Polygon
        .decode_dir(data_dir)?
        .into_iter()
        .flatten()
        .collect();
    let mut counts: HashMap<Address, usize> = HashMap::new();
    for env in &decoded {
        *counts.entry(env.partition_key()).or_default() += 1;
    }
    let mut ranked: Vec<(Address, usize)> = counts.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let chosen: std::collections::HashSet<Address> =
        ranked.into_iter().take(wallets).map(|w| w.0).collect();
    let mut out: Vec<Envelope> = decoded
        .into_iter()
        .filter(|e| chosen.contains(&e.partition_key()))
        .collect();
    out.sort_by_key(|e| (e.block_time, e.event_id));
    Ok(out)
}
