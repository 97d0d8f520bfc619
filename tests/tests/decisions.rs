//! Lending decisions acting on-chain, end to end on real components: fixture contracts on anvil
//! → live ingest → Kafka → projector → scorer (position model over the chain's oracle prices)
//! → `requestCredit` → `chainfold.decisions.v1` → `chainfold actuate` → the lending pool's
//! credit line, with the transaction recorded beside the decision.

use std::time::Duration;

use alloy::primitives::{Address, B256, U256};
use alloy::providers::Provider as _;
use chainfold_ingest::rpc::config::ChainsFile;
use chainfold_ingest::rpc::follow::Follower;
use chainfold_scoring::worker::{Config as ScorerConfig, Scorer};
use chainfold_simulate::actuate::{ActuateConfig, Actuator};
use chainfold_simulate::anvil::Anvil;
use chainfold_simulate::contracts::units;
use chainfold_simulate::{Deployment, Sim};
use chainfold_testkit::{data_dir, unique, Isolated};

fn workspace(path: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

async fn project(iso: &Isolated) {
    chainfold_tests::project(iso).await;
}

#[tokio::test]
async fn a_decision_is_scored_requested_published_and_applied_on_the_fixture_pool() {
    let iso = Isolated::new("decide").await;
    let anvil = Anvil::spawn(31337).expect("anvil starts");
    let weth = chainfold_simulate::prices(&data_dir(), "WETH").expect("prices");
    let wbtc = chainfold_simulate::prices(&data_dir(), "WBTC").expect("prices");
    let d = Deployment::deploy(&anvil.http_url(), weth[0], wbtc[0])
        .await
        .expect("fixtures deploy");
    let mut sim = Sim::new(d, weth.clone(), wbtc);
    sim.seed_liquidity().await.expect("liquidity");
    let d = &sim.d;
    // A price path for WETH (recorded hourly prices), then a borrower with 2 WETH of collateral.
    for price in &weth[1..12] {
        d.set_price(&d.weth, *price).await.expect("price");
    }
    let borrower: Address = "0x00000000000000000000000000000000000b0b01"
        .parse()
        .expect("address");
    d.fund(borrower, d.weth.token, units(2.0, 18))
        .await
        .expect("fund");
    d.approve(borrower, d.weth.token, d.lending_pool)
        .await
        .expect("approve");
    d.deposit(borrower, d.weth.token, units(2.0, 18))
        .await
        .expect("deposit");
    // HF = 2 × price × 0.825 / debt = 1.5: a position the model has an opinion about.
    let debt = (1.1 * weth[11]).round();
    d.borrow(borrower, d.usdc.token, units(debt, 6))
        .await
        .expect("borrow");

    // Follow, project, score.
    let toml = d.chains_toml("anvil", &anvil.http_url(), None, 0);
    let chain = ChainsFile::parse(&toml)
        .expect("chains file")
        .chains
        .remove(0);
    let pool = chainfold_platform::postgres::connect_and_migrate(&iso.postgres)
        .await
        .expect("postgres");
    let topics = iso.kafka.topics();
    chainfold_platform::kafka::ensure_topics(&iso.kafka, &topics.all())
        .await
        .expect("topics");
    let producer = chainfold_platform::kafka::producer(&iso.kafka).expect("producer");
    let mut follower = Follower::new(chain, producer.clone(), topics, pool.clone())
        .await
        .expect("follower");
    follower.sync_to_head().await.expect("ingest");
    project(&iso).await;
    let mut scorer_config = ScorerConfig::new(
        iso.kafka.clone(),
        iso.postgres.clone(),
        iso.redis.clone(),
        unique("scorer"),
        iso.group.clone(),
        workspace("scoring/models/position-v1"),
    );
    scorer_config.policy = Some(workspace("scoring/policy.toml"));
    scorer_config.instance_id = Some(unique("scorer-instance"));
    let mut scorer = Scorer::build(scorer_config).await.expect("scorer");
    scorer
        .run_until_idle(Duration::from_secs(3))
        .await
        .expect("scores");
    let wallet = format!("{borrower:#x}");
    let (score, probability): (i32, Option<f64>) = sqlx::query_as(
        "SELECT score, probability_of_liquidation FROM credit_score_latest WHERE chain_id = 31337 AND wallet = $1",
    )
    .bind(&wallet)
    .fetch_one(&pool)
    .await
    .expect("the borrower is scored");
    let p = probability.expect("a priced position gets the position model's probability");
    assert!((0.0..1.0).contains(&p), "{p}");

    // An oracle move beyond the threshold rescores the holder.
    let crash = weth[11] * 0.85;
    d.set_price(&d.weth, crash).await.expect("price");
    follower.sync_to_head().await.expect("ingest");
    project(&iso).await;
    let moved = scorer
        .run_until_idle(Duration::from_secs(3))
        .await
        .expect("rescores");
    assert_eq!(moved.oracle_moves, 1, "{moved:?}");
    assert!(moved.scored >= 1, "{moved:?}");
    let (after, p_after): (i32, Option<f64>) = sqlx::query_as(
        "SELECT score, probability_of_liquidation FROM credit_score_latest WHERE chain_id = 31337 AND wallet = $1",
    )
    .bind(&wallet)
    .fetch_one(&pool)
    .await
    .expect("rescored");
    // HF 1.5 → 1.275 and a fatter tail: more likely to be liquidated, a lower score.
    assert!(p_after.expect("probability") > p, "{p} -> {p_after:?}");
    assert!(after <= score, "{score} -> {after}");

    // The account's health factor is stored with each score: 1.5 at the borrow, then
    // 1.5 × 0.85 after the crash.
    let hfs: Vec<Option<f64>> = sqlx::query_scalar(
        "SELECT health_factor FROM credit_score WHERE chain_id = 31337 AND wallet = $1 ORDER BY id",
    )
    .bind(&wallet)
    .fetch_all(&pool)
    .await
    .expect("health factors");
    let last = hfs
        .last()
        .copied()
        .flatten()
        .expect("a health factor after the crash");
    assert!((last - 1.5 * 0.85).abs() < 0.01, "{hfs:?}");
    assert!(
        hfs.iter().flatten().any(|h| (h - 1.5).abs() < 0.01),
        "{hfs:?}"
    );

    // A borrow in a block that a reorg then orphans: its score is deleted (and recorded as a
    // retraction for subscribers); the latest score is the one before it again.
    let snapshot: U256 = d
        .provider
        .raw_request("evm_snapshot".into(), ())
        .await
        .expect("snapshot");
    d.borrow(borrower, d.usdc.token, units(10.0, 6))
        .await
        .expect("borrow");
    follower.sync_to_head().await.expect("ingest");
    project(&iso).await;
    scorer
        .run_until_idle(Duration::from_secs(3))
        .await
        .expect("scores the borrow");
    let orphan: (i64, String) = sqlx::query_as(
        "SELECT id, event_id FROM credit_score WHERE chain_id = 31337 AND wallet = $1 ORDER BY id DESC LIMIT 1",
    )
    .bind(&wallet)
    .fetch_one(&pool)
    .await
    .expect("the borrow's score");
    let reverted: bool = d
        .provider
        .raw_request("evm_revert".into(), (snapshot,))
        .await
        .expect("revert");
    assert!(reverted);
    for _ in 0..2 {
        let _: String = d
            .provider
            .raw_request("evm_mine".into(), ())
            .await
            .expect("mine");
    }
    follower.sync_to_head().await.expect("ingest the reorg");
    project(&iso).await;
    let undone = scorer
        .run_until_idle(Duration::from_secs(3))
        .await
        .expect("retracts");
    assert_eq!(undone.retracted, 1, "{undone:?}");
    let (left, retracted): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM credit_score WHERE id = $1),
                (SELECT count(*) FROM feed_retraction WHERE feed = 'credit_score' AND retracts = $1
                   AND row->>'event_id' = $2)",
    )
    .bind(orphan.0)
    .bind(&orphan.1)
    .fetch_one(&pool)
    .await
    .expect("counts");
    assert_eq!((left, retracted), (0, 1));
    let latest: i32 = sqlx::query_scalar(
        "SELECT score FROM credit_score_latest WHERE chain_id = 31337 AND wallet = $1",
    )
    .bind(&wallet)
    .fetch_one(&pool)
    .await
    .expect("latest");
    assert_eq!(latest, after);

    // requestCredit → stored and published.
    let decisions_topic = format!(
        "{}{}",
        iso.kafka.topic_prefix,
        chainfold_domain::topics::DECISIONS
    );
    chainfold_platform::kafka::ensure_topics(&iso.kafka, std::slice::from_ref(&decisions_topic))
        .await
        .expect("decisions topic");
    let policy =
        chainfold_store::decisions::load_policy(&workspace("scoring/policy.toml")).expect("policy");
    let schema = chainfold_api::schema::build_with(
        pool.clone(),
        Some(chainfold_api::decisions::DecisionDesk {
            policy: policy.clone(),
            producer: producer.clone(),
            topic: decisions_topic.clone(),
            redis: None,
        }),
    );
    let weth_address = format!("{:#x}", d.weth.token);
    let response = serde_json::to_value(
        schema
            .execute(
                async_graphql::Request::new(format!(
                    r#"mutation {{ requestCredit(chainId: 31337, address: "{wallet}", amountUsd: "500", collateralAsset: "{weth_address}") {{
                        id outcome requiredCollateralRatio collateralUsd score }} }}"#
                ))
                .data(chainfold_api::auth::Caller::Key {
                    id: 0,
                    name: "lender".into(),
                    rate_per_minute: 600,
                }),
            )
            .await,
    )
    .expect("json");
    let decision = &response["data"]["requestCredit"];
    assert_eq!(decision["score"], after, "{response}");
    // The collateral the policy saw is the wallet's 2 WETH at the oracle's price.
    // Exactly: 2 × 10^18 base units × the oracle's answer ÷ 10^8 ÷ 10^18, as a decimal string.
    let collateral: bigdecimal::BigDecimal = decision["collateralUsd"]
        .as_str()
        .expect("a decimal string")
        .parse()
        .expect("decimal");
    let answer: bigdecimal::BigDecimal = chainfold_simulate::contracts::answer(crash)
        .to_string()
        .parse()
        .expect("answer");
    assert_eq!(
        collateral,
        answer * bigdecimal::BigDecimal::from(2) / bigdecimal::BigDecimal::from(100_000_000),
        "{decision}"
    );
    let id = decision["id"].as_str().expect("id").to_owned();
    let outcome = decision["outcome"].as_str().expect("outcome").to_owned();

    // A record that is not a decision goes to the DLQ; the decision after it is applied.
    producer
        .send(
            rdkafka::producer::FutureRecord::to(&decisions_topic)
                .key("junk")
                .payload("{not a decision"),
            Duration::from_secs(10),
        )
        .await
        .expect("publish junk");
    let mut actuator = Actuator::build(ActuateConfig::new(
        iso.kafka.clone(),
        iso.postgres.clone(),
        anvil.http_url(),
        d.lending_pool,
    ))
    .await
    .expect("actuator");
    let done = actuator
        .run_until_idle(Duration::from_secs(3))
        .await
        .expect("actuates");
    assert_eq!((done.applied, done.dead_lettered), (1, 1), "{done:?}");
    let (tx_hash, tx_block): (Option<String>, Option<i64>) =
        sqlx::query_as("SELECT tx_hash, tx_block FROM credit_decision WHERE id = $1")
            .bind(&id)
            .fetch_one(&pool)
            .await
            .expect("decision row");
    let tx_hash: B256 = tx_hash.expect("tx hash recorded").parse().expect("hash");
    let receipt = d
        .provider
        .get_transaction_receipt(tx_hash)
        .await
        .expect("rpc")
        .expect("mined");
    assert!(receipt.status());
    assert_eq!(receipt.block_number.map(|b| b as i64), tx_block);
    let (set, line, ratio, decision_id) = d.credit_line(borrower).await.expect("credit line");
    assert!(set);
    assert_eq!(decision_id, id.parse::<B256>().expect("id"));
    let record: chainfold_domain::decision::DecisionRecord = serde_json::from_value(
        sqlx::query_scalar("SELECT record FROM credit_decision WHERE id = $1")
            .bind(&id)
            .fetch_one(&pool)
            .await
            .expect("record"),
    )
    .expect("record parses");
    let (want_line, want_ratio) = record.on_chain_terms();
    assert_eq!(
        (line, ratio),
        (U256::from(want_line), U256::from(want_ratio))
    );
    let dlq = chainfold_testkit::read_topic(
        &iso.kafka,
        &chainfold_domain::topics::dlq(&decisions_topic),
        1,
        Duration::from_secs(20),
    );
    assert_eq!(dlq, vec![b"{not a decision".to_vec()]);

    // The chain enforces it: the line caps what the wallet may borrow (REJECT: nothing).
    let over = d.borrow(borrower, d.usdc.token, units(100.0, 6)).await;
    let err = format!("{:#}", over.expect_err("beyond the credit line"));
    assert!(
        err.contains("pool: credit line") || err.contains("pool: collateral ratio"),
        "{err}"
    );
    if outcome != "REJECT" {
        assert!(want_line > 0);
    }

    // A restart applies nothing twice.
    drop(actuator);
    let mut again = Actuator::build(ActuateConfig::new(
        iso.kafka.clone(),
        iso.postgres.clone(),
        anvil.http_url(),
        d.lending_pool,
    ))
    .await
    .expect("actuator restarts");
    let replay = again
        .run_until_idle(Duration::from_secs(3))
        .await
        .expect("replays");
    assert_eq!(replay.applied, 0, "{replay:?}");
}

#[tokio::test]
async fn the_actuator_refuses_a_chain_that_is_not_the_simulator() {
    let iso = Isolated::new("actuate-off").await;
    let anvil = Anvil::spawn(1337).expect("anvil starts");
    let err = Actuator::build(ActuateConfig::new(
        iso.kafka.clone(),
        iso.postgres.clone(),
        anvil.http_url(),
        Address::repeat_byte(0x11),
    ))
    .await
    .expect_err("off outside the simulator");
    assert!(
        format!("{err:#}").contains("actuate is off outside the simulator"),
        "{err:#}"
    );
}
