//! `chainfold risk`: the risk worker role, until a shutdown signal.

use anyhow::Context as _;

pub async fn run(config: chainfold_scoring::risk::RiskConfig) -> anyhow::Result<()> {
    let worker = chainfold_scoring::risk::RiskWorker::build(config)
        .await
        .context("could not start risk")?;
    worker
        .run_until_stopped(chainfold_platform::shutdown_signal())
        .await
}
