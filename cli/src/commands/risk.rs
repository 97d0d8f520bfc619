//! `chainfold risk`: the risk worker role, until a shutdown signal.

use anyhow::Context as _;

pub async fn run(config: chainfold_risk::worker::RiskConfig) -> anyhow::Result<()> {
    let worker = chainfold_risk::worker::RiskWorker::build(config)
        .await
        .context("could not start the risk worker")?;
    worker
        .run_until_stopped(chainfold_platform::shutdown_signal())
        .await
}
