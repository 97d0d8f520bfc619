//! `chainfold stress`: one stress run of a chain's live lending positions.

pub async fn run(config: &chainfold_risk::stress::StressConfig) -> anyhow::Result<()> {
    let pool = chainfold_platform::postgres::connect_and_migrate(&config.postgres).await?;
    let run = chainfold_risk::stress::run(&pool, config, "manual").await?;
    println!(
        "stress run {}: chain {}, {} positions as of block {:?}, {} scenarios, VaR95 ${:.2}, VaR99 ${:.2}, LaR95 ${:.2} in {:.1} ms",
        run.id,
        run.chain_id,
        run.positions,
        run.as_of_block,
        run.scenarios.len(),
        run.var.as_ref().map_or(0.0, |v| v.var95_usd),
        run.var.as_ref().map_or(0.0, |v| v.evar99_usd),
        run.var.as_ref().map_or(0.0, |v| v.lar95_usd),
        run.elapsed_ms
    );
    Ok(())
}
