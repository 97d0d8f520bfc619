//! `chainfold ingest`: recorded data replayed, or EVM chains followed over JSON-RPC, into Kafka.

use std::path::PathBuf;

use chainfold_ingest::replay::Dataset;
use chainfold_platform::config::KafkaArgs;

use super::IngestCommand;

pub async fn run(command: IngestCommand) -> anyhow::Result<()> {
    match command {
        IngestCommand::Replay(config) => {
            let summary = replay(&config).await?;
            println!("{}", describe_replay(&summary));
            Ok(())
        }
        IngestCommand::Rpc(args) => {
            chainfold_ingest::rpc::run(&args, chainfold_platform::shutdown_signal()).await
        }
    }
}

/// `chainfold ingest replay` settings.
#[derive(Debug, Clone, clap::Args)]
pub struct ReplayConfig {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Data sets to replay (repeatable); all three when omitted.
    #[arg(long = "dataset", value_enum)]
    pub datasets: Vec<Dataset>,
    /// Directory holding the data sets: the bundled `data/` or `../shared/data`.
    #[arg(long = "data-dir", env = "CHAINFOLD_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
}

pub async fn replay(
    config: &ReplayConfig,
) -> anyhow::Result<chainfold_ingest::publish::PublishSummary> {
    let datasets = if config.datasets.is_empty() {
        Dataset::ALL.to_vec()
    } else {
        config.datasets.clone()
    };
    let topics = config.kafka.topics();
    chainfold_platform::kafka::ensure_topics(&config.kafka, &topics.all()).await?;
    let producer = chainfold_platform::kafka::producer(&config.kafka)?;
    let mut items = Vec::new();
    for dataset in datasets {
        let decoded = dataset.decode_dir(&config.data_dir)?;
        tracing::info!(dataset = dataset.name(), records = decoded.len(), "decoded");
        items.extend(decoded);
    }
    let summary =
        chainfold_ingest::publish::publish_all(&producer, &topics, items, |published, elapsed| {
            tracing::info!(
                published,
                rate = format!("{:.0}/s", published as f64 / elapsed.as_secs_f64()),
                "replaying"
            );
        })
        .await?;
    Ok(summary)
}

pub fn describe_replay(summary: &chainfold_ingest::publish::PublishSummary) -> String {
    format!(
        "replay: published {} events ({} lending, {} amm) in {:.2}s = {:.0} events/s; {} records dead-lettered",
        summary.published(),
        summary.lending,
        summary.amm,
        summary.elapsed.as_secs_f64(),
        summary.rate(),
        summary.dead_lettered
    )
}
