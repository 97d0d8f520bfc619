//! `chainfold serve`: the GraphQL API, until a shutdown signal.

use anyhow::Context as _;

pub async fn run(config: chainfold_api::Config) -> anyhow::Result<()> {
    let worker = chainfold_api::App::build(config)
        .await
        .context("could not start api")?;
    worker
        .run_until_stopped(chainfold_platform::shutdown_signal())
        .await
}
