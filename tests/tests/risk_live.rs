//! The simulator's labelled attack scenarios detected end to end on real components: anvil →
//! live ingest → Kafka → `chainfold risk` → `risk_alert`, within the attack's block, and no
//! flash-loan or drain alert anywhere else in the simulated activity.

use std::time::Duration;

use chainfold_ingest::rpc::config::ChainsFile;
use chainfold_ingest::rpc::follow::Follower;
use chainfold_scoring::risk::{RiskConfig, RiskWorker};
use chainfold_simulate::anvil::Anvil;
use chainfold_simulate::SimulateArgs;
use chainfold_testkit::{data_dir, unique, Isolated};

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

    let chain = ChainsFile::parse(&std::fs::read_to_string(&args.chains_out).expect("toml"))
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
    let mut follower = Follower::new(chain, producer, topics, pool.clone())
        .await
        .expect("follower");
    follower.sync_to_head().await.expect("ingest");

    let mut worker = RiskWorker::build(RiskConfig::new(
        iso.kafka.clone(),
        iso.postgres.clone(),
        iso.redis.clone(),
        unique("risk"),
    ))
    .await
    .expect("risk worker");
    let outcome = worker
        .run_until_idle(Duration::from_secs(3))
        .await
        .expect("detects");
    let alerts: Vec<(String, String, i64, Vec<String>, Vec<String>, serde_json::Value)> =
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
    // No drain alert outside the scenarios' blocks.
    let scenario_blocks = attack.from_block..=drain.to_block;
    assert!(
        drains
            .iter()
            .all(|a| scenario_blocks.contains(&(a.2 as u64))),
        "{drains:?}"
    );
}
