//! `chainfold simulate`: the fixture contracts on a local chain, driven with recorded activity
//! and labelled attack scenarios.

pub async fn run(args: &chainfold_simulate::SimulateArgs) -> anyhow::Result<()> {
    let summary = chainfold_simulate::run(args).await?;
    println!("{summary}");
    Ok(())
}
