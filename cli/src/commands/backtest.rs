//! `chainfold backtest`: scores a time window of the lending log with a chosen model version.

pub async fn run(config: &chainfold_scoring::backtest::BacktestConfig) -> anyhow::Result<()> {
    let summary = chainfold_scoring::backtest::run(config).await?;
    println!("{summary}");
    Ok(())
}
