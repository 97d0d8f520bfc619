//! `chainfold project`: the projector role, until a shutdown signal.

use anyhow::Context as _;

pub async fn run(config: chainfold_projector::Config) -> anyhow::Result<()> {
    let worker = chainfold_projector::App::build(config)
        .await
        .context("could not start projector")?;
    worker
        .run_until_stopped(chainfold_platform::shutdown_signal())
        .await
}
