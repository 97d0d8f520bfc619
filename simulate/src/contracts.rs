//! Bindings of the compiled fixture contracts and a deployment of them.

use alloy::primitives::{Address, B256, I256, U256};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::rpc::types::TransactionRequest;
use anyhow::Context as _;

alloy::sol!(
    #[sol(rpc)]
    FixtureToken,
    "../fixtures/build/FixtureToken.json"
);
alloy::sol!(
    #[sol(rpc)]
    FixtureAggregator,
    "../fixtures/build/FixtureAggregator.json"
);
alloy::sol!(
    #[sol(rpc)]
    FixturePair,
    "../fixtures/build/FixturePair.json"
);
alloy::sol!(
    #[sol(rpc)]
    FixtureRouter,
    "../fixtures/build/FixtureRouter.json"
);
alloy::sol!(
    #[sol(rpc)]
    FixtureLendingPool,
    "../fixtures/build/FixtureLendingPool.json"
);
alloy::sol!(
    #[sol(rpc)]
    FixtureFlashAttacker,
    "../fixtures/build/FixtureFlashAttacker.json"
);

alloy::sol!(
    #[sol(rpc)]
    FixtureBadEmitter,
    "../fixtures/build/FixtureBadEmitter.json"
);

alloy::sol!(
    #[sol(rpc)]
    FixtureV3Events,
    "../fixtures/build/FixtureV3Events.json"
);
alloy::sol!(
    #[sol(rpc)]
    FixtureAaveV3Events,
    "../fixtures/build/FixtureAaveV3Events.json"
);

alloy::sol!(
    #[sol(rpc)]
    FixtureDensePair,
    "../fixtures/build/FixtureDensePair.json"
);

alloy::sol!(
    #[sol(rpc)]
    FixtureFactory,
    "../fixtures/build/FixtureFactory.json"
);

/// A fixture token and its oracle.
#[derive(Debug, Clone)]
pub struct Asset {
    pub symbol: String,
    pub decimals: u8,
    pub token: Address,
    pub feed: Address,
}

/// Everything deployed, with the accounts that act.
#[derive(Debug, Clone)]
pub struct Deployment {
    pub provider: DynProvider,
    pub chain_id: u64,
    pub deployer: Address,
    pub weth: Asset,
    pub usdc: Asset,
    pub wbtc: Asset,
    /// WETH/USDC pairs (the first is the deep one; the second is the small one the flash-loan
    /// scenario exploits) and a WBTC/WETH pair.
    pub pairs: Vec<Address>,
    pub router: Address,
    pub lending_pool: Address,
}

/// 8-decimal USD answer for a price.
pub fn answer(price_usd: f64) -> I256 {
    I256::try_from((price_usd * 1e8).round() as i128).unwrap_or(I256::ONE)
}

/// `amount` whole tokens in base units (`amount × 10^decimals`), rounded down.
pub fn units(amount: f64, decimals: u8) -> U256 {
    let scaled = amount * 10f64.powi(i32::from(decimals));
    if !scaled.is_finite() || scaled <= 0.0 {
        return U256::ZERO;
    }
    U256::from(scaled as u128)
}

impl Deployment {
    /// Connects to `rpc_url` (anvil: unlocked dev accounts, auto-impersonation) and deploys the
    /// fixtures with initial oracle prices.
    pub async fn deploy(rpc_url: &str, weth_usd: f64, wbtc_usd: f64) -> anyhow::Result<Deployment> {
        // Nonces are read from the node for every transaction: a transaction the node refuses
        // (a recorded borrow beyond the fixture's LTV) must not leave a cached nonce gap.
        let provider = ProviderBuilder::new()
            .disable_recommended_fillers()
            .with_gas_estimation()
            .with_simple_nonce_management()
            .fetch_chain_id()
            .connect_http(rpc_url.parse().context("invalid --rpc-url")?)
            .erased();
        let chain_id = provider
            .get_chain_id()
            .await
            .context("node not reachable")?;
        let accounts = provider.get_accounts().await?;
        let deployer = *accounts.first().context("node has no unlocked accounts")?;
        let mut assets = Vec::new();
        for (symbol, decimals, price, desc) in [
            ("WETH", 18u8, weth_usd, "ETH / USD"),
            ("USDC", 6, 1.0, "USDC / USD"),
            ("WBTC", 8, wbtc_usd, "BTC / USD"),
        ] {
            let token = FixtureToken::deploy_builder(
                &provider,
                format!("Fixture {symbol}"),
                symbol.to_owned(),
                decimals,
            )
            .from(deployer)
            .deploy()
            .await
            .with_context(|| format!("deploying {symbol}"))?;
            let feed =
                FixtureAggregator::deploy_builder(&provider, 8, desc.to_owned(), answer(price))
                    .from(deployer)
                    .deploy()
                    .await
                    .with_context(|| format!("deploying the {desc} feed"))?;
            assets.push(Asset {
                symbol: symbol.to_owned(),
                decimals,
                token,
                feed,
            });
        }
        let (weth, usdc, wbtc) = (assets[0].clone(), assets[1].clone(), assets[2].clone());
        let router = FixtureRouter::deploy_builder(&provider)
            .from(deployer)
            .deploy()
            .await?;
        let mut pairs = Vec::new();
        for (a, b) in [(&weth, &usdc), (&weth, &usdc), (&wbtc, &weth)] {
            pairs.push(
                FixturePair::deploy_builder(&provider, a.token, b.token)
                    .from(deployer)
                    .deploy()
                    .await?,
            );
        }
        let lending_pool = FixtureLendingPool::deploy_builder(&provider)
            .from(deployer)
            .deploy()
            .await?;
        let deployment = Deployment {
            provider,
            chain_id,
            deployer,
            weth,
            usdc,
            wbtc,
            pairs,
            router,
            lending_pool,
        };
        let pool = FixtureLendingPool::new(lending_pool, &deployment.provider);
        // (ltv, liquidation threshold, bonus) in basis points, Aave V2's WETH/USDC/WBTC values.
        for (asset, ltv, lt, bonus) in [
            (&deployment.weth, 8000u16, 8250u16, 10500u16),
            (&deployment.usdc, 8000, 8500, 10500),
            (&deployment.wbtc, 7000, 7500, 11000),
        ] {
            deployment
                .confirm(
                    pool.addReserve(asset.token, asset.feed, ltv, lt, bonus)
                        .from(deployer)
                        .into_transaction_request(),
                )
                .await?;
        }
        Ok(deployment)
    }

    /// Sends a transaction and waits for its receipt (anvil automines one block per
    /// transaction). A transaction the node refuses (it would revert) is an error with the reason.
    pub async fn confirm(&self, mut tx: TransactionRequest) -> anyhow::Result<(B256, u64)> {
        // The node's estimate is exact for the outer call; contracts that call out (router,
        // pool, attacker) lose 1/64 of the gas per call (EIP-150), so add a margin.
        let estimate = self.provider.estimate_gas(tx.clone()).await?;
        tx.gas = Some(estimate + estimate / 3);
        let pending = self.provider.send_transaction(tx).await?;
        let hash = *pending.tx_hash();
        let receipt = loop {
            if let Some(r) = self.provider.get_transaction_receipt(hash).await? {
                break r;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        };
        anyhow::ensure!(receipt.status(), "transaction {hash} reverted");
        Ok((hash, receipt.block_number.unwrap_or_default()))
    }

    /// Gives `who` gas money (anvil_setBalance) and `amount` of `token`.
    pub async fn fund(&self, who: Address, token: Address, amount: U256) -> anyhow::Result<()> {
        let _: serde_json::Value = self
            .provider
            .raw_request("anvil_setBalance".into(), (who, U256::from(10u128.pow(21))))
            .await?;
        if !amount.is_zero() {
            let t = FixtureToken::new(token, &self.provider);
            self.confirm(
                t.mint(who, amount)
                    .from(self.deployer)
                    .into_transaction_request(),
            )
            .await?;
        }
        Ok(())
    }

    /// Lets `spender` move all of `who`'s `token`.
    pub async fn approve(
        &self,
        who: Address,
        token: Address,
        spender: Address,
    ) -> anyhow::Result<()> {
        let t = FixtureToken::new(token, &self.provider);
        self.confirm(
            t.approve(spender, U256::MAX)
                .from(who)
                .into_transaction_request(),
        )
        .await?;
        Ok(())
    }

    /// A swap through the router; returns (tx hash, block).
    pub async fn swap(
        &self,
        who: Address,
        pair: Address,
        token_in: Address,
        amount_in: U256,
    ) -> anyhow::Result<(B256, u64)> {
        let router = FixtureRouter::new(self.router, &self.provider);
        self.confirm(
            router
                .swapExactIn(pair, token_in, amount_in, U256::ZERO, who)
                .from(who)
                .into_transaction_request(),
        )
        .await
    }

    /// The router's quote for a swap.
    pub async fn quote(
        &self,
        pair: Address,
        token_in: Address,
        amount_in: U256,
    ) -> anyhow::Result<U256> {
        let router = FixtureRouter::new(self.router, &self.provider);
        Ok(router.quote(pair, token_in, amount_in).call().await?)
    }

    pub async fn reserves(&self, pair: Address) -> anyhow::Result<(U256, U256, Address)> {
        let p = FixturePair::new(pair, &self.provider);
        let r = p.getReserves().call().await?;
        let token0 = p.token0().call().await?;
        Ok((U256::from(r._0), U256::from(r._1), token0))
    }

    /// The pair's (token0, token1).
    pub async fn tokens(&self, pair: Address) -> anyhow::Result<(Address, Address)> {
        let p = FixturePair::new(pair, &self.provider);
        Ok((p.token0().call().await?, p.token1().call().await?))
    }

    pub async fn add_liquidity(
        &self,
        who: Address,
        pair: Address,
        amount0: U256,
        amount1: U256,
    ) -> anyhow::Result<(B256, u64)> {
        let router = FixtureRouter::new(self.router, &self.provider);
        self.confirm(
            router
                .addLiquidity(pair, amount0, amount1, who)
                .from(who)
                .into_transaction_request(),
        )
        .await
    }

    pub async fn remove_liquidity(
        &self,
        who: Address,
        pair: Address,
        liquidity: U256,
    ) -> anyhow::Result<(B256, u64)> {
        let router = FixtureRouter::new(self.router, &self.provider);
        self.confirm(
            router
                .removeLiquidity(pair, liquidity, who)
                .from(who)
                .into_transaction_request(),
        )
        .await
    }

    pub async fn lp_balance(&self, pair: Address, who: Address) -> anyhow::Result<U256> {
        Ok(FixturePair::new(pair, &self.provider)
            .balanceOf(who)
            .call()
            .await?)
    }

    pub async fn set_price(&self, asset: &Asset, price_usd: f64) -> anyhow::Result<(B256, u64)> {
        let feed = FixtureAggregator::new(asset.feed, &self.provider);
        self.confirm(
            feed.submit(answer(price_usd))
                .from(self.deployer)
                .into_transaction_request(),
        )
        .await
    }

    /// The feed's current answer in USD.
    pub async fn price(&self, asset: &Asset) -> anyhow::Result<f64> {
        let feed = FixtureAggregator::new(asset.feed, &self.provider);
        let answer = feed.latestAnswer().call().await?;
        Ok(answer.to_string().parse::<f64>().unwrap_or(0.0) / 1e8)
    }

    fn pool(&self) -> FixtureLendingPool::FixtureLendingPoolInstance<&DynProvider> {
        FixtureLendingPool::new(self.lending_pool, &self.provider)
    }

    pub async fn deposit(
        &self,
        who: Address,
        token: Address,
        amount: U256,
    ) -> anyhow::Result<(B256, u64)> {
        self.confirm(
            self.pool()
                .deposit(token, amount, who, 0)
                .from(who)
                .into_transaction_request(),
        )
        .await
    }

    pub async fn borrow(
        &self,
        who: Address,
        token: Address,
        amount: U256,
    ) -> anyhow::Result<(B256, u64)> {
        self.confirm(
            self.pool()
                .borrow(token, amount, U256::from(2u8), 0, who)
                .from(who)
                .into_transaction_request(),
        )
        .await
    }

    pub async fn repay(
        &self,
        who: Address,
        token: Address,
        amount: U256,
    ) -> anyhow::Result<(B256, u64)> {
        self.confirm(
            self.pool()
                .repay(token, amount, U256::from(2u8), who)
                .from(who)
                .into_transaction_request(),
        )
        .await
    }

    pub async fn withdraw(
        &self,
        who: Address,
        token: Address,
        amount: U256,
    ) -> anyhow::Result<(B256, u64)> {
        self.confirm(
            self.pool()
                .withdraw(token, amount, who)
                .from(who)
                .into_transaction_request(),
        )
        .await
    }

    pub async fn liquidate(
        &self,
        liquidator: Address,
        collateral: Address,
        debt: Address,
        user: Address,
        cover: U256,
    ) -> anyhow::Result<(B256, u64)> {
        self.confirm(
            self.pool()
                .liquidationCall(collateral, debt, user, cover, false)
                .from(liquidator)
                .into_transaction_request(),
        )
        .await
    }

    /// Sets a reserve's yearly liquidity and variable borrow rates (rays; 0.05e27 = 5%).
    pub async fn set_rates(
        &self,
        token: Address,
        liquidity_rate: U256,
        variable_borrow_rate: U256,
    ) -> anyhow::Result<(B256, u64)> {
        self.confirm(
            self.pool()
                .setReserveRates(token, liquidity_rate, variable_borrow_rate)
                .from(self.deployer)
                .into_transaction_request(),
        )
        .await
    }

    /// Turns the use of `who`'s deposit of `token` as collateral on or off.
    pub async fn use_as_collateral(
        &self,
        who: Address,
        token: Address,
        enabled: bool,
    ) -> anyhow::Result<(B256, u64)> {
        self.confirm(
            self.pool()
                .setUserUseReserveAsCollateral(token, enabled)
                .from(who)
                .into_transaction_request(),
        )
        .await
    }

    /// Defines Aave V3 e-mode category `id` (LTV, threshold, bonus in basis points).
    pub async fn set_emode_category(
        &self,
        id: u8,
        params: [u16; 3],
        label: &str,
    ) -> anyhow::Result<(B256, u64)> {
        self.confirm(
            self.pool()
                .setEModeCategory(id, params[0], params[1], params[2], label.to_owned())
                .from(self.deployer)
                .into_transaction_request(),
        )
        .await
    }

    /// Puts the reserve `token` in e-mode category `id` (0: none).
    pub async fn set_asset_emode(&self, token: Address, id: u8) -> anyhow::Result<(B256, u64)> {
        self.confirm(
            self.pool()
                .setAssetEModeCategory(token, id)
                .from(self.deployer)
                .into_transaction_request(),
        )
        .await
    }

    /// `who` enters e-mode category `id` (0 leaves it).
    pub async fn set_user_emode(&self, who: Address, id: u8) -> anyhow::Result<(B256, u64)> {
        self.confirm(
            self.pool()
                .setUserEMode(id)
                .from(who)
                .into_transaction_request(),
        )
        .await
    }

    /// Sets `token`'s Aave V3 debt ceiling (USD, 2 decimals; 0: not isolated).
    pub async fn set_debt_ceiling(
        &self,
        token: Address,
        ceiling: U256,
    ) -> anyhow::Result<(B256, u64)> {
        self.confirm(
            self.pool()
                .setDebtCeiling(token, ceiling)
                .from(self.deployer)
                .into_transaction_request(),
        )
        .await
    }

    /// Lets isolated users borrow `token` (or not).
    pub async fn set_borrowable_in_isolation(
        &self,
        token: Address,
        borrowable: bool,
    ) -> anyhow::Result<(B256, u64)> {
        self.confirm(
            self.pool()
                .setBorrowableInIsolation(token, borrowable)
                .from(self.deployer)
                .into_transaction_request(),
        )
        .await
    }

    /// The pool's isolation view of `user` at `block`: `Some((isolated collateral, its ceiling,
    /// its total isolation debt))`, `None` when not isolated.
    pub async fn isolation(
        &self,
        user: Address,
        block: u64,
    ) -> anyhow::Result<Option<(Address, U256, U256)>> {
        let state = self
            .pool()
            .isolationModeState(user)
            .block(block.into())
            .call()
            .await?;
        if !state.active {
            return Ok(None);
        }
        let total = self
            .pool()
            .isolationModeTotalDebt(state.asset)
            .block(block.into())
            .call()
            .await?;
        Ok(Some((state.asset, state.ceiling, total)))
    }

    /// `user`'s e-mode category at `block`.
    pub async fn user_emode(&self, user: Address, block: u64) -> anyhow::Result<u8> {
        Ok(self
            .pool()
            .userEMode(user)
            .block(block.into())
            .call()
            .await?)
    }

    /// The pool's `getUserAccountData(user)` at `block`: (total collateral, total debt,
    /// available borrows, liquidation threshold, LTV, health factor).
    pub async fn account_data(&self, user: Address, block: u64) -> anyhow::Result<[U256; 6]> {
        let r = self
            .pool()
            .getUserAccountData(user)
            .block(block.into())
            .call()
            .await?;
        Ok([
            r.totalCollateralBase,
            r.totalDebtBase,
            r.availableBorrowsBase,
            r.currentLiquidationThreshold,
            r.ltv,
            r.healthFactor_,
        ])
    }

    pub async fn health_factor(&self, user: Address) -> anyhow::Result<U256> {
        Ok(self.pool().healthFactor(user).call().await?)
    }

    /// The credit line `chainfold actuate` set for `user`: (set, line in 8-decimal USD,
    /// collateral ratio in basis points, decision id).
    pub async fn credit_line(&self, user: Address) -> anyhow::Result<(bool, U256, U256, B256)> {
        let c = self.pool().creditLines(user).call().await?;
        Ok((c.set, c.line, c.collateralRatioBps, c.decisionId))
    }

    pub async fn debt(&self, user: Address, token: Address) -> anyhow::Result<U256> {
        Ok(self.pool().debtOf(user, token).call().await?)
    }

    /// Deploys an attacker contract owned by `who`.
    pub async fn deploy_attacker(&self, who: Address) -> anyhow::Result<Address> {
        Ok(
            FixtureFlashAttacker::deploy_builder(&self.provider, self.lending_pool, self.router)
                .from(who)
                .deploy()
                .await?,
        )
    }

    pub async fn attack(
        &self,
        who: Address,
        attacker: Address,
        asset: Address,
        amount: U256,
        pair_a: Address,
        pair_b: Address,
    ) -> anyhow::Result<(B256, u64)> {
        let a = FixtureFlashAttacker::new(attacker, &self.provider);
        self.confirm(
            a.attack(asset, amount, pair_a, pair_b)
                .from(who)
                .into_transaction_request(),
        )
        .await
    }

    pub async fn balance(&self, token: Address, who: Address) -> anyhow::Result<U256> {
        Ok(FixtureToken::new(token, &self.provider)
            .balanceOf(who)
            .call()
            .await?)
    }

    /// Deploys a contract that emits a `Sync` with undecodable data, and makes it emit one.
    pub async fn emit_bad_sync(&self) -> anyhow::Result<(Address, B256)> {
        let bad = FixtureBadEmitter::deploy_builder(&self.provider)
            .from(self.deployer)
            .deploy()
            .await?;
        let c = FixtureBadEmitter::new(bad, &self.provider);
        let (tx, _) = self
            .confirm(
                c.emitBadSync()
                    .from(self.deployer)
                    .into_transaction_request(),
            )
            .await?;
        Ok((bad, tx))
    }

    /// Deploys the V3 event emitters: a Uniswap-V3-style pool over WETH/USDC and an Aave-V3-style
    /// pool. Returns (v3 pool, aave v3 pool).
    pub async fn deploy_v3_emitters(&self) -> anyhow::Result<(Address, Address)> {
        let pool =
            FixtureV3Events::deploy_builder(&self.provider, self.usdc.token, self.weth.token)
                .from(self.deployer)
                .deploy()
                .await?;
        let aave = FixtureAaveV3Events::deploy_builder(&self.provider)
            .from(self.deployer)
            .deploy()
            .await?;
        Ok((pool, aave))
    }

    /// Deploys a Uniswap-V2-style factory.
    pub async fn deploy_factory(&self) -> anyhow::Result<Address> {
        Ok(FixtureFactory::deploy_builder(&self.provider)
            .from(self.deployer)
            .deploy()
            .await?)
    }

    /// Creates a pair through `factory`; returns the pair's address.
    pub async fn create_pair(
        &self,
        factory: Address,
        a: Address,
        b: Address,
    ) -> anyhow::Result<Address> {
        let f = FixtureFactory::new(factory, &self.provider);
        self.confirm(
            f.createPair(a, b)
                .from(self.deployer)
                .into_transaction_request(),
        )
        .await?;
        Ok(f.getPair(a, b).call().await?)
    }

    /// A chains.toml for `chainfold ingest rpc` that follows this deployment.
    pub fn chains_toml(
        &self,
        name: &str,
        rpc_url: &str,
        ws_url: Option<&str>,
        confirmations: u64,
    ) -> String {
        let mut out = format!(
            "# Written by `chainfold simulate`: the fixture deployment on a local anvil.\n[[chain]]\nchain_id = {}\nname = \"{name}\"\nrpc_url = \"{rpc_url}\"\n",
            self.chain_id
        );
        if let Some(ws) = ws_url {
            out.push_str(&format!("ws_url = \"{ws}\"\n"));
        }
        out.push_str(&format!(
            "confirmations = {confirmations}\nstart_block = 0\npoll_interval = \"100ms\"\n"
        ));
        for pair in &self.pairs {
            out.push_str(&format!(
                "\n[[chain.contract]]\naddress = \"{pair:#x}\"\nkind = \"uniswap_v2_pair\"\n"
            ));
        }
        out.push_str(&format!(
            "\n[[chain.contract]]\naddress = \"{:#x}\"\nkind = \"aave_v2_lending_pool\"\n",
            self.lending_pool
        ));
        for asset in [&self.weth, &self.usdc, &self.wbtc] {
            out.push_str(&format!(
                "\n[[chain.contract]]\naddress = \"{:#x}\"\nkind = \"chainlink_aggregator\"\nasset = \"{:#x}\"\n",
                asset.feed, asset.token
            ));
        }
        out
    }
}
