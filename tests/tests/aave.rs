//! Aave accounting as the protocol computes it (issue 15): the fixture pool accrues interest
//! over simulated months (rates on every reserve, collateral switched off and on, prices moving,
//! a liquidation); its events go anvil → live ingest → Kafka → projector → Postgres, and at every
//! block of the run chainfold's account (`store::aave::account`, what `aaveAccount` serves)
//! equals the contract's own `getUserAccountData` at that block, field by field, to the wei.
//! Aave V3 e-mode is part of the run: a category is defined, WETH and USDC put in it, Carol
//! enters it (her WETH then counts at the category's threshold), WETH leaves the category and
//! Carol leaves e-mode; chainfold's e-mode category equals the pool's `userEMode` at every block.
//! Aave V3 isolation mode too: WBTC gets a debt ceiling, Dave supplies only WBTC (isolated),
//! borrows and repays USDC, and supplies WETH that may not become collateral beside it; chainfold's
//! isolation state, ceiling and total isolation debt equal the pool's at every block.

use alloy::primitives::{Address, U256};
use alloy::providers::Provider as _;
use chainfold_simulate::contracts::units;
use chainfold_simulate::Deployment;
use chainfold_testkit::Isolated;
use chainfold_tests::{follow_and_project, score_all};

const DAY: u64 = 86_400;

/// `percent` % a year, as a ray.
fn rate(percent: f64) -> U256 {
    U256::from((percent * 1e7) as u128) * U256::from(10u64.pow(18))
}

async fn pass(d: &Deployment, seconds: u64) {
    let _: serde_json::Value = d
        .provider
        .raw_request("evm_increaseTime".into(), (seconds,))
        .await
        .expect("time passes");
}

async fn mine(d: &Deployment) -> u64 {
    let _: serde_json::Value = d
        .provider
        .raw_request("evm_mine".into(), ())
        .await
        .expect("mine");
    d.provider.get_block_number().await.expect("head")
}

async fn supply(d: &Deployment, who: Address, token: Address, amount: U256) -> u64 {
    d.fund(who, token, amount).await.expect("fund");
    d.approve(who, token, d.lending_pool)
        .await
        .expect("approve");
    d.deposit(who, token, amount).await.expect("deposit").1
}

#[tokio::test]
async fn health_factors_equal_get_user_account_data_at_every_block_over_six_months_of_interest() {
    let iso = Isolated::new("aave").await;
    let (anvil, d, weth_usd, wbtc_usd) = chainfold_tests::fixtures(31337).await;
    let (weth, usdc, wbtc) = (d.weth.clone(), d.usdc.clone(), d.wbtc.clone());
    // Rates of the order Aave V2 mainnet quoted: supply below borrow on every reserve.
    for (asset, supply_rate, borrow_rate) in
        [(&weth, 1.8, 3.2), (&usdc, 4.1, 6.7), (&wbtc, 0.4, 2.3)]
    {
        d.set_rates(asset.token, rate(supply_rate), rate(borrow_rate))
            .await
            .expect("rates");
    }
    let (alice, bob, carol) = (
        Address::repeat_byte(0xa1),
        Address::repeat_byte(0xb2),
        Address::repeat_byte(0xc3),
    );
    let liquidator = Address::repeat_byte(0x1d);
    let dave = Address::repeat_byte(0xd4);
    let wallets = [alice, bob, carol, dave];
    let mut blocks = Vec::new();
    // Lenders of USDC and WETH, borrowers against WETH, USDC and WBTC.
    blocks.push(supply(&d, bob, usdc.token, units(50_000.0, 6)).await);
    blocks.push(supply(&d, carol, weth.token, units(40.0, 18)).await);
    blocks.push(supply(&d, carol, wbtc.token, units(1.5, 8)).await);
    blocks.push(supply(&d, alice, weth.token, units(10.0, 18)).await);
    let alice_usd = 10.0 * weth_usd[0] * 0.7;
    blocks.push(
        d.borrow(alice, usdc.token, units(alice_usd, 6))
            .await
            .expect("borrow")
            .1,
    );
    blocks.push(
        d.borrow(bob, weth.token, units(3.0, 18))
            .await
            .expect("borrow")
            .1,
    );
    blocks.push(
        d.borrow(carol, usdc.token, units(20_000.0, 6))
            .await
            .expect("borrow")
            .1,
    );
    for month in 0..6u64 {
        // Thirty days in three steps, with an empty block after each: interest accrues with no
        // event of the pool at all.
        for _ in 0..3 {
            pass(&d, 10 * DAY).await;
            blocks.push(mine(&d).await);
        }
        match month {
            0 => {
                d.fund(alice, usdc.token, units(500.0, 6))
                    .await
                    .expect("fund");
                d.approve(alice, usdc.token, d.lending_pool)
                    .await
                    .expect("approve");
                blocks.push(
                    d.repay(alice, usdc.token, units(500.0, 6))
                        .await
                        .expect("repay")
                        .1,
                );
            }
            1 => {
                // Carol takes her WBTC out of her collateral (still healthy on WETH), then back.
                blocks.push(
                    d.use_as_collateral(carol, wbtc.token, false)
                        .await
                        .expect("off")
                        .1,
                );
                pass(&d, DAY).await;
                blocks.push(
                    d.borrow(bob, weth.token, units(0.5, 18))
                        .await
                        .expect("borrow")
                        .1,
                );
            }
            2 => {
                blocks.push(
                    d.use_as_collateral(carol, wbtc.token, true)
                        .await
                        .expect("on")
                        .1,
                );
                // Aave V3 e-mode: a category holding WETH and USDC; Carol (WETH and WBTC against
                // USDC) enters it.
                blocks.push(
                    d.set_emode_category(1, [9000, 9300, 10200], "ETH-USD demo")
                        .await
                        .expect("category")
                        .1,
                );
                for token in [weth.token, usdc.token] {
                    blocks.push(d.set_asset_emode(token, 1).await.expect("asset").1);
                }
                blocks.push(d.set_user_emode(carol, 1).await.expect("enter").1);
                blocks.push(
                    d.set_price(&wbtc, wbtc_usd[0] * 0.9)
                        .await
                        .expect("price")
                        .1,
                );
                blocks.push(
                    d.withdraw(carol, weth.token, units(5.0, 18))
                        .await
                        .expect("withdraw")
                        .1,
                );
            }
            3 => {
                // Isolation: WBTC gets a $1,000,000.00 debt ceiling, USDC is borrowable in
                // isolation; Dave's only collateral is WBTC.
                blocks.push(
                    d.set_debt_ceiling(wbtc.token, U256::from(100_000_000u64))
                        .await
                        .expect("ceiling")
                        .1,
                );
                blocks.push(
                    d.set_borrowable_in_isolation(usdc.token, true)
                        .await
                        .expect("borrowable")
                        .1,
                );
                blocks.push(supply(&d, dave, wbtc.token, units(0.5, 8)).await);
                blocks.push(
                    d.borrow(dave, usdc.token, units(5_000.0, 6))
                        .await
                        .expect("isolated borrow")
                        .1,
                );
                // Bob repays all his WETH debt with interest (a max repay).
                d.fund(bob, weth.token, units(5.0, 18)).await.expect("fund");
                d.approve(bob, weth.token, d.lending_pool)
                    .await
                    .expect("approve");
                blocks.push(d.repay(bob, weth.token, U256::MAX).await.expect("repay").1);
            }
            4 => {
                blocks.push(supply(&d, alice, weth.token, units(0.25, 18)).await);
                // WETH leaves the category: Carol's WETH counts at its own threshold again.
                blocks.push(d.set_asset_emode(weth.token, 0).await.expect("asset").1);
                // Dave repays part, and supplies WETH, which stays off collateral (isolated).
                d.fund(dave, usdc.token, units(1_000.0, 6))
                    .await
                    .expect("fund");
                d.approve(dave, usdc.token, d.lending_pool)
                    .await
                    .expect("approve");
                blocks.push(
                    d.repay(dave, usdc.token, units(1_000.0, 6))
                        .await
                        .expect("repay")
                        .1,
                );
                blocks.push(supply(&d, dave, weth.token, units(1.0, 18)).await);
            }
            _ => {
                blocks.push(d.set_user_emode(carol, 0).await.expect("leave").1);
                // WETH falls 25%: Alice (borrowed at 70% of her WETH) drops below 1 and is
                // liquidated for half her debt.
                blocks.push(
                    d.set_price(&weth, weth_usd[0] * 0.75)
                        .await
                        .expect("crash")
                        .1,
                );
                let [.., hf] = d
                    .account_data(alice, *blocks.last().expect("block"))
                    .await
                    .expect("hf");
                assert!(hf < U256::from(10u64.pow(18)), "alice still healthy: {hf}");
                let debt = d.debt(alice, usdc.token).await.expect("debt");
                d.fund(liquidator, usdc.token, debt).await.expect("fund");
                d.approve(liquidator, usdc.token, d.lending_pool)
                    .await
                    .expect("approve");
                blocks.push(
                    d.liquidate(
                        liquidator,
                        weth.token,
                        usdc.token,
                        alice,
                        debt / U256::from(2u8),
                    )
                    .await
                    .expect("liquidate")
                    .1,
                );
            }
        }
    }
    pass(&d, 7 * DAY).await;
    blocks.push(mine(&d).await);

    // The whole run through the real path.
    let pool = follow_and_project(&iso, &d.chains_toml("anvil", &anvil.http_url(), None, 0)).await;
    let updates: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM lending_market_event WHERE kind = 'reserve_update'",
    )
    .fetch_one(&pool)
    .await
    .expect("count");
    let stored: Vec<(i64, String, Option<String>)> = sqlx::query_as(
        "SELECT block_number, kind, reserve FROM lending_market_event ORDER BY block_number, log_index",
    )
    .fetch_all(&pool)
    .await
    .expect("rows");
    assert!(
        updates >= 20,
        "{updates} reserve updates stored: {stored:?}"
    );

    let first = blocks[0];
    let last = *blocks.last().expect("blocks");
    let mut compared = 0;
    let mut liquidated_seen = false;
    let mut in_emode = 0;
    let (mut isolated, mut isolation_debt) = (0, U256::ZERO);
    for block in first..=last {
        let time = d
            .provider
            .get_block_by_number(block.into())
            .await
            .expect("block")
            .expect("exists")
            .header
            .timestamp;
        for wallet in wallets {
            let chain = d
                .account_data(wallet, block)
                .await
                .expect("getUserAccountData");
            let ours = chainfold_store::aave::account(
                &pool,
                d.chain_id,
                d.lending_pool,
                wallet,
                block,
                time,
            )
            .await
            .expect("account");
            let Some(ours) = ours else {
                // No flow of this wallet yet: the contract reports an empty account.
                assert_eq!(chain[0], U256::ZERO, "{wallet} at {block}");
                assert_eq!(chain[1], U256::ZERO, "{wallet} at {block}");
                continue;
            };
            let a = ours.data;
            let mine = [
                a.total_collateral_base,
                a.total_debt_base,
                a.available_borrows_base,
                a.current_liquidation_threshold,
                a.ltv,
                a.health_factor,
            ];
            assert_eq!(
                mine, chain,
                "{wallet:#x} at block {block} (t={time}): chainfold {mine:?} vs pool {chain:?}"
            );
            let isolation = d.isolation(wallet, block).await.expect("isolation state");
            assert_eq!(
                ours.isolation
                    .map(|i| (i.reserve, i.debt_ceiling, i.total_debt)),
                isolation,
                "{wallet:#x} at {block}"
            );
            if let Some((_, _, total)) = isolation {
                isolated += 1;
                isolation_debt = isolation_debt.max(total);
            }
            let category = d.user_emode(wallet, block).await.expect("userEMode");
            assert_eq!(ours.emode_category, category, "{wallet:#x} at {block}");
            if category != 0 {
                in_emode += 1;
            }
            assert_eq!(ours.base_decimals, Some(8));
            assert!(ours.unconfigured.is_empty(), "{:?}", ours.unconfigured);
            compared += 1;
            if wallet == alice && block == last {
                liquidated_seen = true;
                // The debt grew with interest: the positions are not principal flows.
                let usdc_debt = ours
                    .positions
                    .iter()
                    .find(|p| p.reserve == usdc.token)
                    .expect("usdc")
                    .debt;
                assert_eq!(usdc_debt, d.debt(alice, usdc.token).await.expect("debt"));
            }
        }
    }
    assert!(liquidated_seen);
    assert!(compared > 60, "only {compared} comparisons");
    assert!(in_emode > 5, "only {in_emode} comparisons in e-mode");
    assert!(isolated > 5, "only {isolated} comparisons in isolation");
    // $5,000 borrowed in isolation: 500000 in the pool's 2-decimal USD.
    assert_eq!(isolation_debt, U256::from(500_000u64));

    // Every flow priced at the oracle round in force at it, exactly.
    let priced: Vec<(
        String,
        String,
        Option<bigdecimal::BigDecimal>,
        Option<String>,
    )> = sqlx::query_as(
        "SELECT wallet, action, oracle_amount_usd, oracle_quote FROM lending_event_oracle
         ORDER BY block_number, log_index",
    )
    .fetch_all(&pool)
    .await
    .expect("priced");
    assert!(priced.iter().all(|p| p.2.is_some()), "{priced:?}");
    let first_alice = priced
        .iter()
        .find(|p| p.0 == format!("{alice:#x}") && p.1 == "deposit")
        .expect("alice's deposit");
    let answer = chainfold_simulate::contracts::answer(weth_usd[0]);
    let expected: bigdecimal::BigDecimal = format!("{answer}e-8").parse().expect("decimal");
    assert_eq!(
        first_alice.2.clone().expect("usd").normalized(),
        (expected * bigdecimal::BigDecimal::from(10)).normalized()
    );
    assert_eq!(first_alice.3.as_deref(), Some("ETH / USD"));

    // The scorer stores the pool's own health factor with every score of these wallets
    // (f64 of the exact value), not the principal-flow estimate.
    score_all(&iso).await;
    let scores: Vec<(String, i64, Option<f64>)> = sqlx::query_as(
        "SELECT wallet, block_number, health_factor FROM credit_score ORDER BY block_number",
    )
    .fetch_all(&pool)
    .await
    .expect("scores");
    let mut checked = 0;
    for (wallet, block, hf) in &scores {
        let wallet: Address = wallet.parse().expect("address");
        if !wallets.contains(&wallet) {
            continue;
        }
        let [.., exact] = d.account_data(wallet, *block as u64).await.expect("pool");
        match hf {
            None => assert_eq!(exact, U256::MAX, "{wallet:#x} at {block}"),
            Some(hf) => {
                let exact: f64 = exact.to_string().parse::<f64>().expect("f64") / 1e18;
                assert!(
                    ((hf - exact) / exact).abs() < 1e-12,
                    "{wallet:#x} at {block}: stored {hf} vs pool {exact}"
                );
                checked += 1;
            }
        }
    }
    assert!(
        checked >= 8,
        "only {checked} scores with a health factor: {scores:?}"
    );

    // The same account through GraphQL: exact integers as decimal strings.
    let schema = chainfold_api::schema::build(pool.clone());
    let ask = |wallet: Address, block: String| {
        format!(
            r#"{{ aaveAccount(chainId: {}, pool: "{:#x}", wallet: "{wallet:#x}"{block}) {{
                block healthFactor totalDebtBase baseDecimals reserves {{ symbol debt collateralEnabled }} }} }}"#,
            d.chain_id, d.lending_pool
        )
    };
    let response = schema.execute(ask(alice, String::new())).await;
    assert!(response.errors.is_empty(), "{:?}", response.errors);
    let data = response.data.into_json().expect("json");
    let account = &data["aaveAccount"];
    let at = account["block"].as_u64().expect("block");
    assert_eq!(at, last, "defaults to the latest block held");
    let [_, debt, .., hf] = d.account_data(alice, last).await.expect("pool");
    assert_eq!(account["healthFactor"], hf.to_string());
    assert_eq!(account["totalDebtBase"], debt.to_string());
    assert_eq!(account["baseDecimals"], 8);
    // Bob repaid everything: no debt, so no health factor (the pool's uint256 max).
    let response = schema.execute(ask(bob, format!(", block: {last}"))).await;
    let data = response.data.into_json().expect("json");
    assert!(data["aaveAccount"]["healthFactor"].is_null(), "{data}");
    // Dave is isolated on WBTC at the end: ceiling $1,000,000, $4,000 of isolation debt left
    // after his $1,000 repayment, as decimal strings; he is in no e-mode category.
    let response = schema
        .execute(format!(
            r#"{{ aaveAccount(chainId: {}, pool: "{:#x}", wallet: "{dave:#x}") {{
                eModeCategory isolation {{ reserve debtCeilingUsd totalDebtUsd }} }} }}"#,
            d.chain_id, d.lending_pool
        ))
        .await;
    assert!(response.errors.is_empty(), "{:?}", response.errors);
    let data = response.data.into_json().expect("json");
    let isolation = &data["aaveAccount"]["isolation"];
    assert_eq!(isolation["reserve"], format!("{:#x}", wbtc.token), "{data}");
    assert_eq!(isolation["debtCeilingUsd"], "1000000");
    assert_eq!(isolation["totalDebtUsd"], "4000");
    assert_eq!(data["aaveAccount"]["eModeCategory"], 0);
    // A wallet the pool never saw is null; a negative block is refused plainly.
    let response = schema
        .execute(ask(Address::repeat_byte(0x55), String::new()))
        .await;
    assert!(response.data.into_json().expect("json")["aaveAccount"].is_null());
    let response = schema.execute(ask(alice, ", block: -1".into())).await;
    assert_eq!(
        response.errors[0].message, "block must not be negative, got -1",
        "{:?}",
        response.errors
    );
    iso.drop_database().await;
}
