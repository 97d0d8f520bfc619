//! The simulator's labelled attack scenarios detected end to end on real components: anvil →
//! live ingest → Kafka → `chainfold risk` → `risk_alert`, within the attack's block, and no
//! flash-loan or drain alert anywhere else in the simulated activity.

use std::time::Duration;

use bigdecimal::BigDecimal;

use chainfold_risk::worker::{RiskConfig, RiskWorker};
use chainfold_simulate::anvil::Anvil;
use chainfold_simulate::SimulateArgs;
use chainfold_testkit::{data_dir, unique, Isolated};
use chainfold_tests::follow_and_project;

/// A risk worker config of `iso` reading what `iso`'s projector folded.
fn risk_of(iso: &Isolated) -> RiskConfig {
    let mut config = RiskConfig::new(
        iso.kafka.clone(),
        iso.postgres.clone(),
        iso.redis.clone(),
        unique("risk"),
    );
    config.projector_group = iso.group.clone();
    config
}

/// kind, severity, block, transactions, pools, evidence
type AlertRow = (
    String,
    String,
    i64,
    Vec<String>,
    Vec<String>,
    serde_json::Value,
);

#[tokio::test]
async fn flash_loan_attack_and_drain_scenarios_are_detected_in_their_blocks() {
    let iso = Isolated::new("risk-live").await;
    let anvil = Anvil::spawn(31337).expect("anvil starts");
    let dir = std::env::temp_dir().join(unique("risk-live"));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let args = SimulateArgs {
        rpc_url: Some(anvil.http_url()),
        chain_id: 31337,
        data_dir: data_dir(),
        swaps: 60,
        pools: 2,
        wallets: 2,
        price_hours: 24,
        no_scenarios: false,
        labels: dir.join("labels.jsonl"),
        chains_out: dir.join("chains.toml"),
        exit: true,
    };
    let summary = chainfold_simulate::run(&args).await.expect("simulate");
    let label = |kind: &str| {
        summary
            .labels
            .iter()
            .find(|l| l.kind == kind)
            .expect("label")
            .clone()
    };
    let (attack, drain) = (label("flash_loan_attack"), label("liquidity_drain"));

    // The read models the stress test reads (positions, oracle prices) are projected too.
    let pool = follow_and_project(
        &iso,
        &std::fs::read_to_string(&args.chains_out).expect("toml"),
    )
    .await;

    let mut risk_config = RiskConfig::new(
        iso.kafka.clone(),
        iso.postgres.clone(),
        iso.redis.clone(),
        unique("risk"),
    );
    risk_config.projector_group = iso.group.clone();
    risk_config.prices_dir = data_dir().join("aave-v2-eth-bhemen/usd_prices");
    let mut worker = RiskWorker::build(risk_config).await.expect("risk worker");
    let outcome = worker
        .run_until_idle(Duration::from_secs(3))
        .await
        .expect("detects");
    let alerts: Vec<AlertRow> =
        sqlx::query_as(
            "SELECT kind, severity, block_number, tx_hashes, pools, evidence FROM risk_alert ORDER BY seq",
        )
        .fetch_all(&pool)
        .await
        .expect("alerts");

    // The attack: one alert, in the attack's own block, naming its transaction, with the
    // loan's profit above 2%.
    let attack_tx = attack.details["attack_tx"].as_str().expect("tx").to_owned();
    let attack_block = attack.details["attack_block"].as_i64().expect("block");
    let flash: Vec<_> = alerts
        .iter()
        .filter(|a| a.0 == "FLASH_LOAN_ATTACK")
        .collect();
    assert_eq!(flash.len(), 1, "{alerts:?}");
    assert_eq!(outcome.flash_loan_attacks, 1);
    let (_, severity, block, txs, _, evidence) = flash[0];
    assert_eq!((*block, txs.clone()), (attack_block, vec![attack_tx]));
    assert_eq!(severity, "CRITICAL");
    let share = evidence["loan"]["profit_share"].as_f64().expect("share");
    let labelled = attack.details["profit_share_of_loan"]
        .as_f64()
        .expect("labelled share");
    assert!(
        share > 0.02 && (share - labelled).abs() < 0.01,
        "{share} vs {labelled}"
    );

    // The drain: the pool the LP pulled 90% from, in the drain's block.
    let drained = format!("{:#x}", drain.pools[0]);
    let drains: Vec<_> = alerts.iter().filter(|a| a.0 == "LIQUIDITY_DRAIN").collect();
    assert!(
        drains.iter().any(|a| a.2 == drain.to_block as i64
            && a.4 == vec![drained.clone()]
            && a.5["share_lost"].as_f64().expect("share") > 0.85),
        "{drains:?}"
    );
    // The drain is valued: the lost reserve at the token's oracle price, and ranks first by USD.
    let (usd, evidence): (Option<f64>, serde_json::Value) = sqlx::query_as(
        "SELECT usd, evidence FROM risk_alert WHERE kind = 'LIQUIDITY_DRAIN' AND block_number = $1",
    )
    .bind(drain.to_block as i64)
    .fetch_one(&pool)
    .await
    .expect("drain alert");
    let token = evidence["token"].as_str().expect("token").to_owned();
    // At the token's oracle answer in force at the drain's block.
    let (decimals, price): (i16, f64) = sqlx::query_as(
        "SELECT (SELECT decimals FROM lending_event WHERE chain_id = 31337 AND reserve = $1 LIMIT 1),
                (SELECT price::float8 FROM oracle_update WHERE chain_id = 31337 AND asset = $1
                   AND block_number <= $2 ORDER BY block_number DESC, log_index DESC LIMIT 1)",
    )
    .bind(&token)
    .bind(drain.to_block as i64)
    .fetch_one(&pool)
    .await
    .expect("token price");
    let lost =
        evidence["before"].as_f64().expect("before") - evidence["after"].as_f64().expect("after");
    let expected_usd = lost / 10f64.powi(i32::from(decimals)) * price;
    let usd = usd.expect("valued");
    assert!(
        usd > 0.0 && (usd - expected_usd).abs() < 1e-6 * expected_usd,
        "{usd} vs {expected_usd}"
    );
    let ranked = serde_json::to_value(
        chainfold_api::build_schema(pool.clone())
            .execute("{ alerts(chainId: 31337, orderBy: usd, orderDirection: desc, first: 1) { edges { node { kind usd } } } }")
            .await,
    )
    .expect("json");
    assert_eq!(
        ranked["data"]["alerts"]["edges"][0]["node"]["kind"], "LIQUIDITY_DRAIN",
        "{ranked}"
    );

    // The report's scenario table, measured on what this run stored, is the committed one.
    let labels: Vec<serde_json::Value> = summary
        .labels
        .iter()
        .map(|l| serde_json::to_value(l).expect("label json"))
        .collect();
    let results = chainfold_report::measure_scenarios(&pool, &labels)
        .await
        .expect("scenarios");
    assert_eq!(results.len(), 3, "{results:?}");
    assert!(results.iter().all(|r| r.hit), "{results:?}");
    // Every scenario caught in its own block (the crash stressed as of its oracle answer).
    assert!(
        results.iter().all(|r| r.delay_blocks == Some(0)),
        "{results:?}"
    );
    let committed = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scoring/REPORT.md"),
    )
    .expect("report");
    let section = chainfold_report::render_scenarios(&results);
    assert!(
        committed.contains(&section),
        "scoring/REPORT.md's scenario table differs from the measured one:\n{section}"
    );

    // Each oracle round that moved a price ≥ 2% from the last run's prices recomputed the
    // stress test as of its own block, with its inputs stored; one run per such block.
    let runs: Vec<i64> = sqlx::query_scalar(
        "SELECT as_of_block FROM stress_run WHERE chain_id = 31337 AND trigger = 'oracle_move' ORDER BY as_of_block",
    )
    .fetch_all(&pool)
    .await
    .expect("runs");
    assert_eq!(runs.len() as u64, outcome.stress_runs, "{outcome:?}");
    assert!(
        !runs.is_empty() && runs.windows(2).all(|w| w[0] < w[1]),
        "{runs:?}"
    );
    let (run_id, positions, as_of, prices, var95, lar95): (
        i64,
        i32,
        Option<i64>,
        serde_json::Value,
        Option<BigDecimal>,
        Option<BigDecimal>,
    ) = sqlx::query_as(
        "SELECT id, positions, as_of_block, prices, var95_usd, lar95_usd FROM stress_run
             WHERE chain_id = 31337 AND trigger = 'oracle_move' ORDER BY as_of_block DESC LIMIT 1",
    )
    .fetch_one(&pool)
    .await
    .expect("stress run");
    assert!(positions > 0 && as_of.is_some(), "{positions} {as_of:?}");
    let weth_price: BigDecimal = prices["WETH"]
        .as_str()
        .and_then(|p| p.parse().ok())
        .expect("WETH price as a decimal string");
    assert!(weth_price > 0, "{prices}");
    // VaR estimates are stored to the cent.
    for v in [&var95, &lar95] {
        let v = v.as_ref().expect("VaR estimates");
        assert!(v.normalized().fractional_digit_count() <= 2, "{v}");
    }
    // WETH −30% alone, recomputed here from the read models as of the run's block by an
    // independent query: base units, decimals, the oracle's answer and the reserve's configured
    // threshold and bonus, to the last digit.
    let stored: (i32, BigDecimal, BigDecimal) = sqlx::query_as(
        "SELECT liquidatable, debt_at_risk_usd, bad_debt_usd FROM stress_scenario
         WHERE run_id = $1 AND asset = 'WETH' AND NOT correlated AND abs(shock + 0.3) < 1e-9",
    )
    .bind(run_id)
    .fetch_one(&pool)
    .await
    .expect("grid row");
    type Held = (
        String,
        String,
        BigDecimal,
        BigDecimal,
        i16,
        BigDecimal,
        Option<i32>,
        Option<i32>,
    );
    let rows: Vec<Held> = sqlx::query_as(
        "WITH p AS (SELECT * FROM lending_position_as_of(31337, $1))
         SELECT p.wallet, p.symbol, greatest(p.collateral, 0), greatest(p.variable_debt, 0),
                p.decimals::int2,
                (SELECT o.price FROM oracle_update o WHERE o.chain_id = 31337 AND o.asset = p.reserve
                   AND o.block_number <= $1 ORDER BY o.block_number DESC, o.log_index DESC LIMIT 1),
                (SELECT m.liquidation_threshold FROM lending_market_event m
                  WHERE m.reserve = p.reserve AND m.kind = 'reserve_config' AND m.block_number <= $1
                  ORDER BY m.block_number DESC, m.log_index DESC LIMIT 1),
                (SELECT m.liquidation_bonus FROM lending_market_event m
                  WHERE m.reserve = p.reserve AND m.kind = 'reserve_config' AND m.block_number <= $1
                  ORDER BY m.block_number DESC, m.log_index DESC LIMIT 1)
         FROM p WHERE p.wallet IN (SELECT wallet FROM p GROUP BY wallet HAVING sum(variable_debt) > 0)",
    )
    .bind(as_of)
    .fetch_all(&pool)
    .await
    .expect("positions");
    let mut book: std::collections::BTreeMap<String, Vec<chainfold_domain::stress::Exposure>> =
        Default::default();
    let bps = |f: f64| (f * 10_000.0).round() as u32;
    for (wallet, symbol, collateral, debt, decimals, price, threshold, bonus) in rows {
        let whole = |v: BigDecimal| {
            let (units, scale) = v.into_bigint_and_exponent();
            BigDecimal::new(units, scale + i64::from(decimals))
        };
        book.entry(wallet)
            .or_default()
            .push(chainfold_domain::stress::Exposure {
                threshold_bps: threshold.map_or_else(
                    || bps(chainfold_domain::credit::liquidation_threshold(&symbol)),
                    |t| t as u32,
                ),
                bonus_bps: bonus.filter(|b| *b > 0).map_or_else(
                    || bps(chainfold_domain::credit::liquidation_bonus(&symbol)),
                    |b| b as u32,
                ),
                symbol,
                collateral: whole(collateral),
                debt: whole(debt),
                price,
            });
    }
    assert_eq!(book.len(), positions as usize);
    let accounts: Vec<chainfold_domain::stress::Account> = book
        .into_iter()
        .map(|(id, exposures)| chainfold_domain::stress::Account { id, exposures })
        .collect();
    let expected = chainfold_domain::stress::exact_impact(
        &accounts,
        &std::collections::BTreeMap::from([("WETH".to_owned(), -0.3)]),
        &chainfold_domain::stress::LiquidationRules::AAVE_V2,
    );
    assert_eq!(stored.0 as usize, expected.liquidatable);
    assert_eq!(
        stored.1, expected.debt_at_risk_usd,
        "debt at risk to the digit"
    );
    assert_eq!(stored.2, expected.bad_debt_usd, "bad debt to the digit");
    assert!(
        expected.liquidatable > 0,
        "a 30% ETH drop liquidates someone: {expected:?}"
    );

    // The API serves the latest run.
    let schema = chainfold_api::build_schema(pool.clone());
    let response = serde_json::to_value(
        schema
            .execute(
                "{ stress(chainId: 31337) { asOfBlock positions trigger var95Usd evar99Usd lar95Usd
                   scenarios { asset shock correlated liquidatablePositions debtAtRiskUsd badDebtUsd } } }",
            )
            .await,
    )
    .expect("json");
    let stress = &response["data"]["stress"];
    assert_eq!(stress["positions"], positions, "{response}");
    assert_eq!(stress["trigger"], "oracle_move");
    assert!(stress["scenarios"]
        .as_array()
        .expect("scenarios")
        .iter()
        .any(|s| s["asset"] == "WETH"
            && (s["shock"].as_f64().expect("shock") + 0.3).abs() < 1e-9
            && s["correlated"] == false
            && s["liquidatablePositions"] == stored.0
            && s["debtAtRiskUsd"]
                .as_str()
                .and_then(|t| t.parse::<BigDecimal>().ok())
                == Some(stored.1.clone())
            && s["badDebtUsd"]
                .as_str()
                .and_then(|t| t.parse::<BigDecimal>().ok())
                == Some(stored.2.clone())));
    assert!(stress["var95Usd"].is_string(), "{stress}");

    // Pool analytics: the attacked second pair's liquidity valued through the oracles; with
    // oracle prices on both sides the ±2% depth is (1/√0.98 − 1) of the TVL exactly.
    let pair_b = format!("{:#x}", attack.pools[1]);
    let response = serde_json::to_value(
        schema
            .execute(
                format!(
                    r#"{{ pool(chainId: 31337, address: "{pair_b}") {{ liquidity {{
                        tokens reserves priceUsd oracleDeviation tvlUsd depthUsd anomalyScore blockNumber }} }} }}"#
                )
                .as_str(),
            )
            .await,
    )
    .expect("json");
    let liquidity = &response["data"]["pool"]["liquidity"];
    let decimal = |field: &str| -> bigdecimal::BigDecimal {
        liquidity[field]
            .as_str()
            .unwrap_or_else(|| panic!("{field} is a decimal string: {response}"))
            .parse()
            .expect("decimal")
    };
    let (tvl, depth) = (decimal("tvlUsd"), decimal("depthUsd"));
    let tvl_f: f64 = tvl.to_string().parse().expect("f64");
    let depth_f: f64 = depth.to_string().parse().expect("f64");
    assert!(tvl_f > 0.0, "{response}");
    assert!(
        (depth_f - tvl_f * (1.0 / 0.98f64.sqrt() - 1.0)).abs() < 1e-9 * tvl_f,
        "{depth} vs {tvl}"
    );
    // At most 18 decimal places, and the TVL is exact: reserves × oracle prices.
    assert!(depth.fractional_digit_count() <= 18, "{depth}");
    let reserves: Vec<bigdecimal::BigDecimal> = liquidity["reserves"]
        .as_array()
        .expect("reserves")
        .iter()
        .map(|r| r.as_str().expect("string").parse().expect("decimal"))
        .collect();
    let tokens: Vec<String> = liquidity["tokens"]
        .as_array()
        .expect("tokens")
        .iter()
        .map(|t| t.as_str().expect("token").to_owned())
        .collect();
    let mut expected = bigdecimal::BigDecimal::from(0);
    for (token, units) in tokens.iter().zip(&reserves) {
        let (price, decimals): (bigdecimal::BigDecimal, i16) = sqlx::query_as(
            "SELECT o.price, (SELECT decimals FROM lending_event e WHERE e.reserve = o.asset LIMIT 1)
             FROM oracle_price o WHERE o.chain_id = 31337 AND o.asset = $1",
        )
        .bind(token)
        .fetch_one(&pool)
        .await
        .expect("an oracle price and decimals");
        expected += units * price * bigdecimal::BigDecimal::new(1.into(), i64::from(decimals));
    }
    assert_eq!(tvl, expected, "tvlUsd is exact");
    assert!(liquidity["oracleDeviation"]
        .as_f64()
        .expect("deviation")
        .is_finite());
    assert_eq!(liquidity["reserves"].as_array().expect("reserves").len(), 2);
    // Rolling volumes: a window covering everything (the simulation ran within minutes) equals
    // the all-time token volumes; a window of 0 hours is refused.
    let refused = serde_json::to_value(
        schema
            .execute(
                format!(
                    r#"{{ pool(chainId: 31337, address: "{pair_b}") {{ recentVolumes(hours: 0) {{ token }} }} }}"#
                )
                .as_str(),
            )
            .await,
    )
    .expect("json");
    assert!(
        refused["errors"][0]["message"]
            .as_str()
            .expect("hours refused")
            .contains("hours must be between"),
        "{refused}"
    );
    let good = serde_json::to_value(
        schema
            .execute(
                format!(
                    r#"{{ pool(chainId: 31337, address: "{pair_b}") {{
                        tokenVolumes {{ token volumeIn volumeOut netFlow }}
                        recentVolumes(hours: 24) {{ token volumeIn volumeOut netFlow }} }} }}"#
                )
                .as_str(),
            )
            .await,
    )
    .expect("json");
    let p = &good["data"]["pool"];
    assert!(
        !p["recentVolumes"].as_array().expect("recent").is_empty(),
        "{good}"
    );
    assert_eq!(p["recentVolumes"], p["tokenVolumes"], "{good}");

    // A flash loan that arrives after its block's swaps were evaluated (its lending records
    // published later) is still caught: the same events republished AMM first (sealed,
    // projected, evaluated), then the lending ones, whose seal covers the attack's block again.
    let late = Isolated::new("risk-late").await;
    let late_topics = late.kafka.topics();
    chainfold_platform::kafka::ensure_topics(&late.kafka, &late_topics.all())
        .await
        .expect("topics");
    let decode = |records: Vec<Vec<u8>>| -> Vec<chainfold_ingest::Decoded> {
        records
            .iter()
            .map(|r| Ok(chainfold_domain::envelope::decode_envelope(r).expect("envelope")))
            .collect()
    };
    let amm = decode(chainfold_testkit::read_topic(
        &iso.kafka,
        &iso.kafka.topics().amm,
        usize::MAX,
        Duration::from_secs(5),
    ));
    let lending = decode(chainfold_testkit::read_topic(
        &iso.kafka,
        &iso.kafka.topics().lending,
        usize::MAX,
        Duration::from_secs(5),
    ));
    assert!(!amm.is_empty() && !lending.is_empty());
    let late_producer = chainfold_platform::kafka::producer(&late.kafka).expect("producer");
    let mut late_projector = chainfold_projector::App::build(chainfold_projector::Config::new(
        late.kafka.clone(),
        late.postgres.clone(),
        late.redis.clone(),
        late.group.clone(),
    ))
    .await
    .expect("projector");
    chainfold_ingest::publish::publish_all(&late_producer, &late_topics, amm, |_, _| {})
        .await
        .expect("republish AMM");
    late_projector.run_until_caught_up().await.expect("project");
    let mut late_config = RiskConfig::new(
        late.kafka.clone(),
        late.postgres.clone(),
        late.redis.clone(),
        unique("risk-late"),
    );
    late_config.projector_group = late.group.clone();
    let mut late_worker = RiskWorker::build(late_config).await.expect("risk worker");
    let first = late_worker
        .run_until_idle(Duration::from_secs(2))
        .await
        .expect("AMM first");
    assert_eq!(first.flash_loan_attacks, 0, "no loan seen yet: {first:?}");
    chainfold_ingest::publish::publish_all(&late_producer, &late_topics, lending, |_, _| {})
        .await
        .expect("republish lending");
    late_projector.run_until_caught_up().await.expect("project");
    let then = late_worker
        .run_until_idle(Duration::from_secs(2))
        .await
        .expect("lending later");
    assert_eq!(then.flash_loan_attacks, 1, "{then:?}");

    // No drain alert outside the scenarios' blocks.
    let scenario_blocks = attack.from_block..=drain.to_block;
    assert!(
        drains
            .iter()
            .all(|a| scenario_blocks.contains(&(a.2 as u64))),
        "{drains:?}"
    );
}

#[tokio::test]
async fn a_forecast_shortage_is_provisioned_on_the_fixture_pool_only_when_healing_is_on() {
    use alloy::primitives::{Address, U256};
    use alloy::providers::Provider as _;
    use chainfold_simulate::actuate::{ActuateConfig, Actuator};
    use chainfold_simulate::contracts::{units, FixtureLendingPool};
    let iso = Isolated::new("heal").await;
    let anvil = Anvil::spawn(31337).expect("anvil starts");
    let weth = chainfold_simulate::prices(&data_dir(), "WETH").expect("prices");
    let wbtc = chainfold_simulate::prices(&data_dir(), "WBTC").expect("prices");
    let d = chainfold_simulate::Deployment::deploy(&anvil.http_url(), weth[0], wbtc[0])
        .await
        .expect("deploy");
    // 10,000 USDC supplied; a borrower takes 1,000 more every hour for 7 hours (10% → 70%
    // utilisation): the 6-hour forecast crosses 90%.
    let (lp, borrower) = (Address::repeat_byte(0x31), Address::repeat_byte(0x32));
    d.fund(lp, d.usdc.token, units(10_000.0, 6))
        .await
        .expect("fund");
    d.approve(lp, d.usdc.token, d.lending_pool)
        .await
        .expect("approve");
    d.deposit(lp, d.usdc.token, units(10_000.0, 6))
        .await
        .expect("supply");
    d.fund(borrower, d.weth.token, units(10.0, 18))
        .await
        .expect("fund");
    d.approve(borrower, d.weth.token, d.lending_pool)
        .await
        .expect("approve");
    d.deposit(borrower, d.weth.token, units(10.0, 18))
        .await
        .expect("collateral");
    for hour in 0..7 {
        if hour > 0 {
            let _: serde_json::Value = d
                .provider
                .raw_request("evm_increaseTime".into(), (3600u64,))
                .await
                .expect("time passes");
        }
        d.borrow(borrower, d.usdc.token, units(1_000.0, 6))
            .await
            .expect("borrow");
    }
    let pool = follow_and_project(&iso, &d.chains_toml("anvil", &anvil.http_url(), None, 0)).await;
    let mut worker = RiskWorker::build(risk_of(&iso)).await.expect("risk worker");
    let outcome = worker
        .run_until_idle(Duration::from_secs(3))
        .await
        .expect("forecasts");
    assert_eq!(outcome.shortages, 1, "{outcome:?}");
    let evidence: serde_json::Value =
        sqlx::query_scalar("SELECT evidence FROM risk_alert WHERE kind = 'LIQUIDITY_SHORTAGE'")
            .fetch_one(&pool)
            .await
            .expect("alert");
    assert_eq!(
        evidence["recommendation"]["reserve"],
        format!("{:#x}", d.usdc.token)
    );
    let amount = evidence["recommendation"]["amount"]
        .as_f64()
        .expect("amount");
    assert!(amount > 0.0, "{evidence}");

    // Off by default: an actuator without --heal leaves the pool alone.
    let config = |group: &str, heal: bool| {
        let mut c = ActuateConfig::new(
            iso.kafka.clone(),
            iso.postgres.clone(),
            anvil.http_url(),
            d.lending_pool,
        );
        c.group = unique(group);
        c.heal = heal;
        c
    };
    let mut off = Actuator::build(config("actuate-off", false))
        .await
        .expect("actuator");
    let _ = off
        .run_until_idle(Duration::from_secs(2))
        .await
        .expect("runs");
    let acted: i64 = sqlx::query_scalar("SELECT count(*) FROM risk_action")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(acted, 0);
    // With --heal: the recommended USDC is supplied from the actuator's account.
    let mut on = Actuator::build(config("actuate-heal", true))
        .await
        .expect("actuator");
    let healed = on
        .run_until_idle(Duration::from_secs(2))
        .await
        .expect("heals");
    assert_eq!(healed.healed, 1, "{healed:?}");
    let (tx, error): (Option<String>, Option<String>) =
        sqlx::query_as("SELECT tx_hash, error FROM risk_action")
            .fetch_one(&pool)
            .await
            .expect("action");
    assert!(error.is_none() && tx.is_some(), "{error:?}");
    let from = *d
        .provider
        .get_accounts()
        .await
        .expect("accounts")
        .first()
        .expect("account");
    let supplied = FixtureLendingPool::new(d.lending_pool, &d.provider)
        .collateralOf(from, d.usdc.token)
        .call()
        .await
        .expect("collateral");
    assert_eq!(supplied, units(amount, 6) + U256::from(1u8));
}

#[tokio::test]
async fn liquidity_pulled_hour_by_hour_forecasts_a_depth_shortage_with_liquidity_to_add() {
    use alloy::primitives::{Address, U256};
    use alloy::providers::Provider as _;
    use chainfold_simulate::contracts::units;
    let iso = Isolated::new("depth").await;
    let anvil = Anvil::spawn(31337).expect("anvil starts");
    let weth = chainfold_simulate::prices(&data_dir(), "WETH").expect("prices");
    let wbtc = chainfold_simulate::prices(&data_dir(), "WBTC").expect("prices");
    let d = chainfold_simulate::Deployment::deploy(&anvil.http_url(), weth[0], wbtc[0])
        .await
        .expect("deploy");
    // 100 WETH / 100·price USDC, then the LP pulls 20% of its shares every hour for 5 hours:
    // the ±2% depth falls ~20% an hour, so the 6-hour trend reaches zero.
    let (lp, pair) = (Address::repeat_byte(0x41), d.pairs[0]);
    for (token, amount) in [
        (d.weth.token, units(1e6, 18)),
        (d.usdc.token, units(1e12, 6)),
    ] {
        d.fund(lp, token, amount).await.expect("fund");
        d.approve(lp, token, d.router).await.expect("approve");
    }
    d.approve(lp, pair, d.router).await.expect("approve shares");
    let (_, _, token0) = d.reserves(pair).await.expect("reserves");
    let (w, u) = (units(100.0, 18), units(100.0 * weth[0], 6));
    let (a0, a1) = if token0 == d.weth.token {
        (w, u)
    } else {
        (u, w)
    };
    d.add_liquidity(lp, pair, a0, a1).await.expect("liquidity");
    for _ in 0..5 {
        let _: serde_json::Value = d
            .provider
            .raw_request("evm_increaseTime".into(), (3600u64,))
            .await
            .expect("time passes");
        let shares = d.lp_balance(pair, lp).await.expect("shares");
        d.remove_liquidity(lp, pair, shares / U256::from(5u8))
            .await
            .expect("pull");
    }
    let (final0, _, _) = d.reserves(pair).await.expect("reserves after");
    let final0 = final0.to_string().parse::<f64>().expect("reserve0");
    let pool = follow_and_project(&iso, &d.chains_toml("anvil", &anvil.http_url(), None, 0)).await;
    let mut worker = RiskWorker::build(risk_of(&iso)).await.expect("risk worker");
    let outcome = worker
        .run_until_idle(Duration::from_secs(3))
        .await
        .expect("forecasts");
    let pair_hex = format!("{pair:#x}");
    let alerts: Vec<(Vec<String>, serde_json::Value, i64)> = sqlx::query_as(
        "SELECT pools, evidence, block_number FROM risk_alert WHERE kind = 'LIQUIDITY_SHORTAGE'
             ORDER BY block_number DESC",
    )
    .fetch_all(&pool)
    .await
    .expect("alerts");
    // Evaluated hour by hour of the Syncs: one alert per episode, at its first hour.
    assert_eq!(alerts.len(), 1, "{outcome:?} {alerts:?}");
    assert_eq!(alerts[0].0, vec![pair_hex.clone()], "{alerts:?}");
    let (_, evidence, block) = &alerts[0];
    let rec = &evidence["recommendation"];
    assert_eq!(rec["action"], "add_liquidity", "{evidence}");
    let amount = |k: &str| -> f64 { rec[k].as_str().expect("amount").parse().expect("number") };
    // The pool's reserves as of the alert's block (what the forecast saw).
    let (r0, r1): (f64, f64) = sqlx::query_as(
        "SELECT reserve0::float8, reserve1::float8 FROM pool_sync WHERE pool = $1 AND block_number <= $2
         ORDER BY block_number DESC, log_index DESC LIMIT 1",
    )
    .bind(&pair_hex)
    .bind(block)
    .fetch_one(&pool)
    .await
    .expect("reserves at the alert");
    // Both tokens at the pool's ratio then, enough to bring the forecast back to 80% of the
    // window's median depth (add_share of the reserves).
    let share = evidence["forecast"]["add_share"].as_f64().expect("share");
    assert!(share > 0.0, "{evidence}");
    assert!(
        (amount("amount0") - (r0 * share).round()).abs() <= 1.0,
        "{evidence}"
    );
    assert!((amount("amount1") / amount("amount0") - r1 / r0).abs() < 1e-6 * r1 / r0);
    let f = &evidence["forecast"];
    assert!(
        f["depth_forecast"].as_f64().expect("forecast")
            < 0.5 * f["depth_reference"].as_f64().expect("reference"),
        "{f}"
    );

    // The API's forecast for the pool falls hour by hour, and its flat liquidity fields match
    // the nested ones.
    let answer = serde_json::to_value(
        chainfold_api::build_schema(pool.clone())
            .execute(format!(
                "{{ pool(chainId: 31337, address: \"{pair_hex}\") {{ reserves depthUsd tvlUsd
                     liquidity {{ reserves depthUsd tvlUsd }}
                     liquidityForecast(hours: 3) {{ at hoursAhead depth depthUsd utilisation }} }} }}"
            ))
            .await,
    )
    .expect("json");
    let p = &answer["data"]["pool"];
    assert_eq!(p["reserves"], p["liquidity"]["reserves"], "{answer}");
    assert_eq!(p["depthUsd"], p["liquidity"]["depthUsd"], "{answer}");
    let reserve0: f64 = p["reserves"][0]
        .as_str()
        .expect("reserve0")
        .parse()
        .expect("number");
    assert!((reserve0 - final0).abs() <= 1e-9 * final0, "{answer}");
    let points = p["liquidityForecast"].as_array().expect("forecast");
    assert_eq!(points.len(), 3, "{answer}");
    let depths: Vec<f64> = points
        .iter()
        .map(|pt| pt["depth"].as_f64().expect("depth"))
        .collect();
    assert!(depths.windows(2).all(|w| w[1] <= w[0]), "{depths:?}");
    assert!(
        depths[0] < chainfold_domain::pool::depth_token0(r0, 0.02),
        "{depths:?}"
    );
    assert!(points.iter().all(|pt| pt["utilisation"].is_null()));
}
