//! `chainfold rebuild`: every read model and derived table refolded from the Kafka log.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;

/// `chainfold rebuild` settings: the projector's, plus the groups and models of the derived
/// roles it reruns.
#[derive(Debug, Clone, clap::Args)]
pub struct RebuildConfig {
    #[command(flatten)]
    pub projector: chainfold_projector::Config,
    /// The scorer's consumer group (its offsets are forgotten and its scores recomputed).
    #[arg(long = "scorer-group", default_value = "chainfold-scorer")]
    pub scorer_group: String,
    /// The risk worker's consumer group.
    #[arg(long = "risk-group", default_value = "chainfold-risk")]
    pub risk_group: String,
    /// The position model the scores are recomputed with.
    #[arg(
        long = "model-dir",
        env = "CHAINFOLD_MODEL_DIR",
        default_value = "scoring/models/position-v1"
    )]
    pub model_dir: PathBuf,
    /// The swap anomaly model of the risk worker.
    #[arg(
        long = "anomaly-model-dir",
        env = "CHAINFOLD_ANOMALY_MODEL_DIR",
        default_value = "scoring/models/pool-anomaly-v1"
    )]
    pub anomaly_model_dir: PathBuf,
    /// Hourly USD price history the stress test bootstraps from.
    #[arg(
        long = "prices-dir",
        env = "CHAINFOLD_PRICES_DIR",
        default_value = "data/aave-v2-eth-bhemen/usd_prices"
    )]
    pub prices_dir: PathBuf,
    /// Only the projector's read models (the derived tables are left as they are).
    #[arg(long = "read-models-only")]
    pub read_models_only: bool,
}

/// `chainfold rebuild`: with the pipeline lock held exclusively (no projector, scorer or risk
/// worker may run), empties the read models and the derived tables, forgets the groups'
/// offsets, then folds, scores and evaluates the whole log again in this process.
pub async fn run(config: RebuildConfig) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let _pipeline = chainfold_platform::lease::take_pipeline(&config.projector.postgres)
        .await
        .context("could not start the rebuild")?;
    let kafka = config.projector.kafka.clone();
    let (postgres, redis) = (
        config.projector.postgres.clone(),
        config.projector.redis.clone(),
    );
    let mut app = chainfold_projector::App::build(config.projector.clone())
        .await
        .context("could not start projector")?;
    if !config.read_models_only {
        // Outputs committed and not relayed yet go out first: they are records of the log.
        let producer = chainfold_platform::kafka::producer(&kafka)?;
        let derived: Vec<String> = [
            chainfold_domain::topics::SCORES,
            chainfold_domain::topics::DECISIONS,
            chainfold_domain::topics::RISK,
        ]
        .iter()
        .map(|t| format!("{}{t}", kafka.topic_prefix))
        .collect();
        chainfold_platform::kafka::ensure_topics(&kafka, &derived).await?;
        chainfold_platform::outbox::relay_with(
            app.pool(),
            &producer,
            &derived,
            1000,
            &chainfold_platform::outbox::Held::default(),
            &chainfold_scoring::worker::sources(),
        )
        .await?;
        let mut tx = app.pool().begin().await?;
        chainfold_store::summary::empty_derived(&mut tx).await?;
        for group in [&config.scorer_group, &config.risk_group] {
            chainfold_platform::offsets::forget(&mut tx, group).await?;
        }
        tx.commit()
            .await
            .context("could not empty the derived tables")?;
    }
    app.reset().await?;
    let outcome = app
        .run_until_caught_up_or(chainfold_platform::shutdown_signal())
        .await?;
    println!(
        "rebuild: folded {} events from the log ({} dead-lettered)",
        outcome.stored, outcome.dead_lettered
    );
    if config.read_models_only {
        return Ok(());
    }
    let mut scorer_config = chainfold_scoring::worker::Config::new(
        kafka.clone(),
        postgres.clone(),
        redis.clone(),
        config.scorer_group.clone(),
        config.projector.group.clone(),
        config.model_dir.clone(),
    );
    scorer_config.instance_id = Some(format!("{}-rebuild", config.scorer_group));
    let mut scorer = chainfold_scoring::worker::Scorer::build(scorer_config)
        .await
        .context("could not start the scorer")?;
    let scored = scorer.run_until_idle(Duration::from_secs(3)).await?;
    let mut risk_config =
        chainfold_risk::worker::RiskConfig::new(kafka, postgres, redis, config.risk_group.clone());
    risk_config.projector_group = config.projector.group.clone();
    risk_config.instance_id = Some(format!("{}-rebuild", config.risk_group));
    risk_config.anomaly_model_dir = Some(config.anomaly_model_dir.clone());
    risk_config.prices_dir = config.prices_dir.clone();
    let risk = chainfold_risk::worker::RiskWorker::build(risk_config)
        .await
        .context("could not start the risk worker")?
        .run_until_idle(Duration::from_secs(3))
        .await?;
    println!(
        "rebuild: {} scores, {} decisions; {} blocks evaluated, {} alerts, {} stress runs, in {:.1}s",
        scored.scored,
        scored.decisions,
        risk.blocks,
        risk.sandwiches + risk.flash_loan_attacks + risk.drains + risk.shortages + risk.anomalies,
        risk.stress_runs,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
