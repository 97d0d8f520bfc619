//! `chainfold actuate`: the actuator role, until a shutdown signal.

use anyhow::Context as _;

pub async fn run(config: chainfold_simulate::actuate::ActuateConfig) -> anyhow::Result<()> {
    let worker = chainfold_simulate::actuate::Actuator::build(config)
        .await
        .context("could not start actuator")?;
    worker
        .run_until_stopped(chainfold_platform::shutdown_signal())
        .await
}
