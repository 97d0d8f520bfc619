//! `chainfold score`: the credit scorer role, until a shutdown signal.

use anyhow::Context as _;

pub async fn run(config: chainfold_scoring::worker::Config) -> anyhow::Result<()> {
    let worker = chainfold_scoring::worker::Scorer::build(config)
        .await
        .context("could not start scorer")?;
    worker
        .run_until_stopped(chainfold_platform::shutdown_signal())
        .await
}
