//! `chainfold report`: the detectors measured on recorded data, written as Markdown.

use std::path::PathBuf;

use anyhow::Context as _;
use chainfold_platform::config::PostgresArgs;

/// `chainfold report` settings.
#[derive(Debug, Clone, clap::Args)]
pub struct ReportConfig {
    /// Directory holding the recorded data sets (bundled `data/` or `../shared/data`).
    #[arg(long = "data-dir", env = "CHAINFOLD_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
    /// Where the Markdown goes.
    #[arg(long = "out", default_value = "scoring/REPORT.md")]
    pub out: PathBuf,
    /// The swap anomaly model scored over the recorded swaps.
    #[arg(
        long = "anomaly-model-dir",
        default_value = "scoring/models/pool-anomaly-v1"
    )]
    pub anomaly_model_dir: PathBuf,
    /// Labels written by `chainfold simulate` (e.g. `simulate-labels.jsonl` after `chainfold
    /// demo`): adds the scenario table, measured on what `chainfold risk` stored in Postgres.
    #[arg(long = "labels")]
    pub labels: Option<PathBuf>,
    #[command(flatten)]
    pub postgres: PostgresArgs,
}

pub async fn run(config: &ReportConfig) -> anyhow::Result<()> {
    let scenarios = match &config.labels {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("could not read labels {}", path.display()))?;
            let labels = text
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(serde_json::from_str)
                .collect::<Result<Vec<serde_json::Value>, _>>()
                .with_context(|| format!("{} is not JSON lines", path.display()))?;
            let pool = chainfold_platform::postgres::connect_and_migrate(&config.postgres).await?;
            Some(chainfold_report::measure_scenarios(&pool, &labels).await?)
        }
        None => None,
    };
    let md = chainfold_report::run(
        &config.data_dir,
        Some(&config.anomaly_model_dir),
        scenarios.as_deref(),
        &config.out,
    )?;
    println!("{md}");
    println!("written to {}", config.out.display());
    Ok(())
}
