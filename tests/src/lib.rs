//! Whole-pipeline tests live in `tests/`, the benchmarks in `benches/`; this library holds what
//! several of them share.

use std::time::Duration;

use chainfold_ingest::replay::Dataset;
use chainfold_testkit::{data_dir, Isolated};

/// Publishes a bundled data set to `iso`'s topics and folds it with a projector of `iso`'s
/// group until it has caught up.
pub async fn replay_and_project(iso: &Isolated, dataset: Dataset) {
    let items = dataset.decode_dir(&data_dir()).expect("bundled data");
    publish_and_project(iso, items).await;
}

/// Publishes `items` (decoded events, as a replay yields them) to `iso`'s topics and folds them
/// with a projector of `iso`'s group until it has caught up.
pub async fn publish_and_project(
    iso: &Isolated,
    items: impl IntoIterator<Item = chainfold_ingest::Decoded>,
) {
    let topics = iso.kafka.topics();
    chainfold_platform::kafka::ensure_topics(&iso.kafka, &topics.all())
        .await
        .expect("topics");
    let producer = chainfold_platform::kafka::producer(&iso.kafka).expect("producer");
    chainfold_ingest::publish::publish_all(&producer, &topics, items, |_, _| {})
        .await
        .expect("publish");
    let mut projector = chainfold_projector::App::build(chainfold_projector::Config::new(
        iso.kafka.clone(),
        iso.postgres.clone(),
        iso.redis.clone(),
        iso.group.clone(),
    ))
    .await
    .expect("projector");
    projector.run_until_caught_up().await.expect("project");
}

/// A scorer of a new group over `iso`'s topics, with the shipped model and policy, run until it
/// has scored everything there is (it has caught up with `iso`'s projector group).
pub async fn score_all(iso: &Isolated) -> chainfold_scoring::worker::Scorer {
    let scoring = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scoring");
    let mut config = chainfold_scoring::worker::Config::new(
        iso.kafka.clone(),
        iso.postgres.clone(),
        iso.redis.clone(),
        chainfold_testkit::unique("scorer"),
        iso.group.clone(),
        scoring.join("models/position-v1"),
    );
    config.policy = Some(scoring.join("policy.toml"));
    let mut scorer = chainfold_scoring::worker::Scorer::build(config)
        .await
        .expect("scorer");
    scorer
        .run_until_idle(Duration::from_secs(5))
        .await
        .expect("scores");
    scorer
}

/// A projector of `iso`'s group run until it has caught up with the log (within 2 minutes).
pub async fn project(iso: &Isolated) -> chainfold_projector::App {
    let mut app = chainfold_projector::App::build(chainfold_projector::Config::new(
        iso.kafka.clone(),
        iso.postgres.clone(),
        iso.redis.clone(),
        iso.group.clone(),
    ))
    .await
    .expect("projector starts");
    tokio::time::timeout(Duration::from_secs(120), app.run_until_caught_up())
        .await
        .expect("projector catches up within 2 minutes")
        .expect("projector runs");
    app
}

/// A fresh anvil of `chain_id` with the fixtures deployed at the bundled data's first WETH and
/// WBTC prices; the anvil (it stops when dropped), the deployment and both price series.
pub async fn fixtures(
    chain_id: u64,
) -> (
    chainfold_simulate::anvil::Anvil,
    chainfold_simulate::Deployment,
    Vec<f64>,
    Vec<f64>,
) {
    let anvil = chainfold_simulate::anvil::Anvil::spawn(chain_id).expect("anvil starts");
    let weth = chainfold_simulate::prices(&data_dir(), "WETH").expect("prices");
    let wbtc = chainfold_simulate::prices(&data_dir(), "WBTC").expect("prices");
    let d = chainfold_simulate::Deployment::deploy(&anvil.http_url(), weth[0], wbtc[0])
        .await
        .expect("fixtures deploy");
    (anvil, d, weth, wbtc)
}

/// A live-ingest follower of the chain of `toml` (a chains.toml with one chain) into `iso`'s
/// topics, with its database migrated.
pub async fn follower(iso: &Isolated, toml: &str) -> chainfold_ingest::rpc::follow::Follower {
    let chain = chainfold_ingest::rpc::config::ChainsFile::parse(toml)
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
    chainfold_ingest::rpc::follow::Follower::new(chain, producer, topics, pool)
        .await
        .expect("follower starts")
}

/// Follows the chain of `toml` (a chains.toml with one chain) to its head into `iso`'s topics
/// with live ingest and projects everything with `iso`'s group; the Postgres pool.
pub async fn follow_and_project(iso: &Isolated, toml: &str) -> sqlx::PgPool {
    follower(iso, toml)
        .await
        .sync_to_head()
        .await
        .expect("ingest");
    let pool = chainfold_platform::postgres::connect_and_migrate(&iso.postgres)
        .await
        .expect("postgres");
    let mut projector = chainfold_projector::App::build(chainfold_projector::Config::new(
        iso.kafka.clone(),
        iso.postgres.clone(),
        iso.redis.clone(),
        iso.group.clone(),
    ))
    .await
    .expect("projector");
    projector.run_until_caught_up().await.expect("project");
    pool
}
