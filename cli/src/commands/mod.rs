//! The subcommands: their command line and, one module each, their wiring.
//!
//! Roles (`project`, `serve`, `score`, `risk`, `actuate`, `ingest`) build their crate's worker
//! and run it until a shutdown signal; tools (`stress`, `report`, `backtest`, `simulate`,
//! `apikey`, `tail`, `check`, `rebuild`) run once. `demo` wires everything in one process.

mod actuate;
mod apikey;
mod backtest;
mod check;
mod demo;
mod ingest;
mod project;
mod rebuild;
mod report;
mod risk;
mod score;
mod serve;
mod simulate;
mod stress;
mod tail;

use chainfold_platform::config::LogArgs;

/// chainfold: DeFi chain events into real-time liquidity, credit and risk intelligence.
#[derive(Debug, clap::Parser)]
#[command(
    name = "chainfold",
    version,
    about = "chainfold: DeFi chain events into real-time liquidity, credit and risk intelligence"
)]
pub struct Cli {
    #[command(flatten)]
    pub log: LogArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Read chain data and publish typed events to Kafka.
    #[command(subcommand)]
    Ingest(IngestCommand),
    /// Fold the Kafka event topics into the Postgres read models and Redis caches.
    Project(chainfold_projector::Config),
    /// Serve the GraphQL API (GraphiQL at /, POST /graphql, GET /health).
    Serve(chainfold_api::Config),
    /// Everything in one process on the bundled data: replay, project, then serve.
    Demo(demo::DemoConfig),
    /// Drop and refill every read model and derived table (scores, alerts, incidents, stress
    /// runs, band-change decisions) and the Redis cache from the Kafka log. Refused while a
    /// projector, scorer or risk worker runs against the database.
    Rebuild(rebuild::RebuildConfig),
    /// Print a topic's records readably (partition, offset, key, headers, payload).
    Tail(tail::TailConfig),
    /// Rescore every wallet a lending event, swap, oracle move or attestation touches (credit
    /// score, band, probability of liquidation, reasons) into Postgres, Redis and
    /// chainfold.scores.v1; push decisions again when a requester's band changes.
    Score(chainfold_scoring::worker::Config),
    /// Replay the lending log and score a time window with a chosen model version into
    /// backtest_run / backtest_score (live scores untouched).
    Backtest(chainfold_scoring::backtest::BacktestConfig),
    /// Detect sandwiches, flash-loan attacks and liquidity drains on the event stream into
    /// risk_alert, chainfold.risk.v1 and Redis.
    Risk(chainfold_risk::worker::RiskConfig),
    /// Stress-test a chain's live lending positions (shock grid, Monte Carlo VaR) into
    /// stress_run / stress_scenario.
    Stress(chainfold_risk::stress::StressConfig),
    /// Measure the detectors on recorded data and write scoring/REPORT.md.
    Report(report::ReportConfig),
    /// Deploy the fixture contracts on a local chain (anvil) and drive recorded activity and
    /// labelled attack scenarios through them as transactions.
    Simulate(chainfold_simulate::SimulateArgs),
    /// Apply lending decisions on the simulator's lending pool (`setCreditLine`), recording each
    /// transaction beside its decision. Refuses chains other than 31337 unless `--live`.
    Actuate(chainfold_simulate::actuate::ActuateConfig),
    /// Create or revoke API keys (needed for subscriptions, mutations and books).
    #[command(subcommand)]
    Apikey(apikey::ApikeyCommand),
    /// Exit 0 when Postgres, Kafka and Redis answer (and `--url` answers 200): a container
    /// health check for every role.
    Check(check::CheckConfig),
}

impl Command {
    /// Role name for telemetry.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Ingest(_) => "ingest",
            Command::Project(_) => "project",
            Command::Serve(_) => "serve",
            Command::Demo(_) => "demo",
            Command::Rebuild(_) => "rebuild",
            Command::Tail(_) => "tail",
            Command::Check(_) => "check",
            Command::Simulate(_) => "simulate",
            Command::Score(_) => "score",
            Command::Backtest(_) => "backtest",
            Command::Report(_) => "report",
            Command::Risk(_) => "risk",
            Command::Stress(_) => "stress",
            Command::Actuate(_) => "actuate",
            Command::Apikey(_) => "apikey",
        }
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum IngestCommand {
    /// Replay recorded data sets into Kafka.
    Replay(ingest::ReplayConfig),
    /// Follow EVM chains over JSON-RPC (chains.toml) and publish their events, with reorgs
    /// published as retractions.
    Rpc(chainfold_ingest::rpc::RpcArgs),
}

/// Runs one subcommand to its end.
pub async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Ingest(command) => ingest::run(command).await,
        Command::Project(config) => project::run(config).await,
        Command::Serve(config) => serve::run(config).await,
        Command::Demo(config) => demo::run(config).await,
        Command::Rebuild(config) => rebuild::run(config).await,
        Command::Tail(config) => tail::run(config).await,
        Command::Score(config) => score::run(config).await,
        Command::Backtest(config) => backtest::run(&config).await,
        Command::Risk(config) => risk::run(config).await,
        Command::Stress(config) => stress::run(&config).await,
        Command::Report(config) => report::run(&config).await,
        Command::Simulate(args) => simulate::run(&args).await,
        Command::Actuate(config) => actuate::run(config).await,
        Command::Apikey(command) => apikey::run(command).await,
        Command::Check(config) => check::run(&config).await,
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory as _, Parser as _};

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn a_broken_config_is_refused_with_a_reason() {
        let err = Cli::try_parse_from(["chainfold", "project", "--batch-wait", "5 parsecs"])
            .expect_err("refused");
        assert!(err.to_string().contains("batch-wait"), "{err}");
        let err = Cli::try_parse_from(["chainfold", "serve", "--listen", "not-an-address"])
            .expect_err("refused");
        assert!(err.to_string().contains("listen"), "{err}");
    }

    #[test]
    fn flags_reach_the_role_config() {
        let cli = Cli::try_parse_from([
            "chainfold",
            "ingest",
            "replay",
            "--dataset",
            "swaps",
            "--topic-prefix",
            "t.",
        ])
        .expect("parses");
        let Command::Ingest(IngestCommand::Replay(config)) = cli.command else {
            panic!("not replay")
        };
        assert_eq!(
            config.datasets,
            vec![chainfold_ingest::replay::Dataset::Swaps]
        );
        assert_eq!(config.kafka.topics().amm, "t.chainfold.amm.v1");
    }
}
