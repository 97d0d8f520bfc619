//! Subcommands and their wiring.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use chainfold_ingest::replay::Dataset;
use chainfold_platform::config::{KafkaArgs, LogArgs, PostgresArgs, RedisArgs};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

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
    Demo(DemoConfig),
    /// Drop and refill every read model and derived table (scores, alerts, incidents, stress
    /// runs, band-change decisions) and the Redis cache from the Kafka log. Refused while a
    /// projector, scorer or risk worker runs against the database.
    Rebuild(RebuildConfig),
    /// Print a topic's records readably (partition, offset, key, headers, payload).
    Tail(TailConfig),
    /// Rescore every wallet a lending event, swap, oracle move or attestation touches (credit
    /// score, band, probability of liquidation, reasons) into Postgres, Redis and
    /// chainfold.scores.v1; push decisions again when a requester's band changes.
    Score(chainfold_scoring::worker::Config),
    /// Replay the lending log and score a time window with a chosen model version into
    /// backtest_run / backtest_score (live scores untouched).
    Backtest(chainfold_scoring::backtest::BacktestConfig),
    /// Detect sandwiches, flash-loan attacks and liquidity drains on the event stream into
    /// risk_alert, chainfold.risk.v1 and Redis.
    Risk(chainfold_scoring::risk::RiskConfig),
    /// Stress-test a chain's live lending positions (shock grid, Monte Carlo VaR) into
    /// stress_run / stress_scenario.
    Stress(chainfold_scoring::stress::StressConfig),
    /// Measure the detectors on recorded data and write scoring/REPORT.md.
    Report(ReportConfig),
    /// Deploy the fixture contracts on a local chain (anvil) and drive recorded activity and
    /// labelled attack scenarios through them as transactions.
    Simulate(chainfold_simulate::SimulateArgs),
    /// Apply lending decisions on the simulator's lending pool (`setCreditLine`), recording each
    /// transaction beside its decision. Refuses chains other than 31337 unless `--live`.
    Actuate(chainfold_simulate::actuate::ActuateConfig),
    /// Create or revoke API keys (needed for subscriptions, mutations and books).
    #[command(subcommand)]
    Apikey(ApikeyCommand),
    /// Exit 0 when Postgres, Kafka and Redis answer (and `--url` answers 200): a container
    /// health check for every role.
    Check(CheckConfig),
}

/// `chainfold rebuild` settings: the projector's, plus the groups and models of the derived
/// roles it reruns.
#[derive(Debug, Clone, clap::Args)]
pub struct RebuildConfig {
    #[command(flatten)]
    pub projector: chainfold_projector::Config,
    /// The scorer's consumer group (its offsets are forgotten and its scores recomputed).
    #[arg(long = "scorer-group", default_value = "chainfold-scorer")]
    pub scorer_group: String,
    /// The risk worker's consumer group.
    #[arg(long = "risk-group", default_value = "chainfold-risk")]
    pub risk_group: String,
    /// The position model the scores are recomputed with.
    #[arg(
        long = "model-dir",
        env = "CHAINFOLD_MODEL_DIR",
        default_value = "scoring/models/position-v1"
    )]
    pub model_dir: PathBuf,
    /// The swap anomaly model of the risk worker.
    #[arg(
        long = "anomaly-model-dir",
        env = "CHAINFOLD_ANOMALY_MODEL_DIR",
        default_value = "scoring/models/pool-anomaly-v1"
    )]
    pub anomaly_model_dir: PathBuf,
    /// Hourly USD price history the stress test bootstraps from.
    #[arg(
        long = "prices-dir",
        env = "CHAINFOLD_PRICES_DIR",
        default_value = "data/aave-v2-eth-bhemen/usd_prices"
    )]
    pub prices_dir: PathBuf,
    /// Only the projector's read models (the derived tables are left as they are).
    #[arg(long = "read-models-only")]
    pub read_models_only: bool,
}

/// `chainfold check` settings.
#[derive(Debug, Clone, clap::Args)]
pub struct CheckConfig {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub postgres: PostgresArgs,
    #[command(flatten)]
    pub redis: RedisArgs,
    /// Also require `GET <url>` to answer 200 (the API's `/health`), e.g.
    /// `http://127.0.0.1:8000/health`.
    #[arg(long = "url")]
    pub url: Option<String>,
}

#[derive(Debug, clap::Subcommand)]
pub enum ApikeyCommand {
    /// Create a key; it is printed once (Postgres keeps only its SHA-256).
    Create(ApikeyCreate),
    /// Revoke a key by its id: it is refused from the next request on.
    Revoke(ApikeyRevoke),
}

/// `chainfold apikey create` settings.
#[derive(Debug, Clone, clap::Args)]
pub struct ApikeyCreate {
    #[command(flatten)]
    pub postgres: PostgresArgs,
    /// Who the key is for (shown in logs and metrics, never secret).
    #[arg(long = "name")]
    pub name: String,
    /// Requests per minute the key may make.
    #[arg(long = "rate-per-minute", default_value_t = 600)]
    pub rate_per_minute: u32,
}

/// `chainfold apikey revoke` settings.
#[derive(Debug, Clone, clap::Args)]
pub struct ApikeyRevoke {
    #[command(flatten)]
    pub postgres: PostgresArgs,
    /// The key's id, as `create` printed it.
    #[arg(long = "id")]
    pub id: i64,
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
    Replay(ReplayConfig),
    /// Follow EVM chains over JSON-RPC (chains.toml) and publish their events, with reorgs
    /// published as retractions.
    Rpc(chainfold_ingest::rpc::RpcArgs),
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

/// `chainfold demo` settings.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoConfig {
    #[command(flatten)]
    pub replay: ReplayConfig,
    #[command(flatten)]
    pub postgres: PostgresArgs,
    #[command(flatten)]
    pub redis: RedisArgs,
    /// Consumer group of the demo's projector.
    #[arg(
        long = "group",
        env = "CHAINFOLD_PROJECTOR_GROUP",
        default_value = "chainfold-projector"
    )]
    pub group: String,
    /// Address the API listens on.
    #[arg(
        long = "listen",
        env = "CHAINFOLD_LISTEN",
        default_value = "127.0.0.1:8000"
    )]
    pub listen: std::net::SocketAddr,
    /// Replay, project and print the summary, then exit instead of serving.
    #[arg(long = "no-serve")]
    pub no_serve: bool,
    /// Skip the live part: a local anvil chain driven by `simulate` and followed by the
    /// JSON-RPC ingest.
    #[arg(long = "no-chain")]
    pub no_chain: bool,
}

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

/// `chainfold tail` settings.
#[derive(Debug, Clone, clap::Args)]
pub struct TailConfig {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Topic to print, e.g. `chainfold.lending.v1` or `chainfold.lending.v1.dlq`.
    pub topic: String,
    /// Print at most this many records, then exit.
    #[arg(long = "limit", short = 'n')]
    pub limit: Option<u64>,
    /// Keep waiting for new records after the end of the topic.
    #[arg(long = "follow", short = 'f')]
    pub follow: bool,
    /// Start at each partition's end instead of its beginning (use with --follow).
    #[arg(long = "from-end")]
    pub from_end: bool,
}

pub async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Ingest(IngestCommand::Replay(config)) => {
            let summary = replay(&config).await?;
            println!("{}", describe_replay(&summary));
            Ok(())
        }
        Command::Ingest(IngestCommand::Rpc(args)) => {
            chainfold_ingest::rpc::run(&args, chainfold_platform::shutdown_signal()).await
        }
        Command::Score(config) => {
            let scorer = chainfold_scoring::worker::Scorer::build(config)
                .await
                .context("could not start scorer")?;
            scorer
                .run_until_stopped(chainfold_platform::shutdown_signal())
                .await
        }
        Command::Stress(config) => {
            let pool = chainfold_platform::postgres::connect_and_migrate(&config.postgres).await?;
            let run = chainfold_scoring::stress::run(&pool, &config, "manual").await?;
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
        Command::Risk(config) => {
            let worker = chainfold_scoring::risk::RiskWorker::build(config)
                .await
                .context("could not start the risk worker")?;
            worker
                .run_until_stopped(chainfold_platform::shutdown_signal())
                .await
        }
        Command::Report(config) => {
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
                    let pool =
                        chainfold_platform::postgres::connect_and_migrate(&config.postgres).await?;
                    Some(chainfold_scoring::report::measure_scenarios(&pool, &labels).await?)
                }
                None => None,
            };
            let md = chainfold_scoring::report::run(
                &config.data_dir,
                Some(&config.anomaly_model_dir),
                scenarios.as_deref(),
                &config.out,
            )?;
            println!("{md}");
            println!("written to {}", config.out.display());
            Ok(())
        }
        Command::Apikey(ApikeyCommand::Create(config)) => {
            let pool = chainfold_platform::postgres::connect_and_migrate(&config.postgres).await?;
            let (id, key) =
                chainfold_api::auth::create_key(&pool, &config.name, config.rate_per_minute)
                    .await?;
            eprintln!(
                "apikey: created key {id} for {:?} ({} requests/minute); it is shown once:",
                config.name, config.rate_per_minute
            );
            println!("{key}");
            Ok(())
        }
        Command::Apikey(ApikeyCommand::Revoke(config)) => {
            let pool = chainfold_platform::postgres::connect_and_migrate(&config.postgres).await?;
            anyhow::ensure!(
                chainfold_api::auth::revoke_key(&pool, config.id).await?,
                "no unrevoked API key with id {}",
                config.id
            );
            eprintln!("apikey: revoked key {}", config.id);
            Ok(())
        }
        Command::Backtest(config) => {
            let summary = chainfold_scoring::backtest::run(&config).await?;
            println!("{summary}");
            Ok(())
        }
        Command::Actuate(config) => {
            let actuator = chainfold_simulate::actuate::Actuator::build(config)
                .await
                .context("could not start actuator")?;
            actuator
                .run_until_stopped(chainfold_platform::shutdown_signal())
                .await
        }
        Command::Simulate(args) => {
            let summary = chainfold_simulate::run(&args).await?;
            println!("{summary}");
            Ok(())
        }
        Command::Project(config) => {
            let app = chainfold_projector::App::build(config)
                .await
                .context("could not start projector")?;
            app.run_until_stopped(chainfold_platform::shutdown_signal())
                .await
        }
        Command::Serve(config) => {
            let app = chainfold_api::App::build(config)
                .await
                .context("could not start api")?;
            app.run_until_stopped(chainfold_platform::shutdown_signal())
                .await
        }
        Command::Rebuild(config) => rebuild(config).await,
        Command::Demo(config) => demo(config).await,
        Command::Check(config) => check(&config).await,
        Command::Tail(config) => tail(config).await,
    }
}

/// `chainfold rebuild`: with the pipeline lock held exclusively (no projector, scorer or risk
/// worker may run), empties the read models and the derived tables, forgets the groups'
/// offsets, then folds, scores and evaluates the whole log again in this process.
async fn rebuild(config: RebuildConfig) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let _pipeline = chainfold_platform::lease::take_pipeline(&config.projector.postgres)
        .await
        .context("could not start the rebuild")?;
    let kafka = config.projector.kafka.clone();
    let (postgres, redis) = (
        config.projector.postgres.clone(),
        config.projector.redis.clone(),
    );
    let mut app = chainfold_projector::App::build(config.projector.clone())
        .await
        .context("could not start projector")?;
    if !config.read_models_only {
        // Outputs committed and not relayed yet go out first: they are records of the log.
        let producer = chainfold_platform::kafka::producer(&kafka)?;
        let derived: Vec<String> = [
            chainfold_domain::topics::SCORES,
            chainfold_domain::topics::DECISIONS,
            chainfold_domain::topics::RISK,
        ]
        .iter()
        .map(|t| format!("{}{t}", kafka.topic_prefix))
        .collect();
        chainfold_platform::kafka::ensure_topics(&kafka, &derived).await?;
        chainfold_platform::outbox::relay(app.pool(), &producer, &derived, 1000).await?;
        let mut tx = app.pool().begin().await?;
        // Requested decisions are inputs (a lender asked); band-change ones derive from scores.
        // TRUNCATE, not DELETE: the tables emptied are not retractions for subscribers.
        sqlx::query(
            "TRUNCATE credit_score, credit_profile, attestation, risk_alert, risk_incident, stress_scenario,
                      stress_run, risk_progress, outbox",
        )
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM credit_decision WHERE trigger = 'BAND_CHANGE'")
            .execute(&mut *tx)
            .await?;
        for group in [&config.scorer_group, &config.risk_group] {
            chainfold_platform::offsets::forget(&mut tx, group).await?;
        }
        tx.commit()
            .await
            .context("could not empty the derived tables")?;
    }
    app.reset().await?;
    let outcome = app
        .run_until_caught_up_or(chainfold_platform::shutdown_signal())
        .await?;
    println!(
        "rebuild: folded {} events from the log ({} dead-lettered)",
        outcome.stored, outcome.dead_lettered
    );
    if config.read_models_only {
        return Ok(());
    }
    let mut scorer_config = chainfold_scoring::worker::Config::new(
        kafka.clone(),
        postgres.clone(),
        redis.clone(),
        config.scorer_group.clone(),
        config.projector.group.clone(),
        config.model_dir.clone(),
    );
    scorer_config.instance_id = Some(format!("{}-rebuild", config.scorer_group));
    let mut scorer = chainfold_scoring::worker::Scorer::build(scorer_config)
        .await
        .context("could not start the scorer")?;
    let scored = scorer.run_until_idle(Duration::from_secs(3)).await?;
    let mut risk_config =
        chainfold_scoring::risk::RiskConfig::new(kafka, postgres, redis, config.risk_group.clone());
    risk_config.projector_group = config.projector.group.clone();
    risk_config.instance_id = Some(format!("{}-rebuild", config.risk_group));
    risk_config.anomaly_model_dir = Some(config.anomaly_model_dir.clone());
    risk_config.prices_dir = config.prices_dir.clone();
    let risk = chainfold_scoring::risk::RiskWorker::build(risk_config)
        .await
        .context("could not start the risk worker")?
        .run_until_idle(Duration::from_secs(3))
        .await?;
    println!(
        "rebuild: {} scores, {} decisions; {} blocks evaluated, {} alerts, {} stress runs, in {:.1}s",
        scored.scored,
        scored.decisions,
        risk.blocks,
        risk.sandwiches + risk.flash_loan_attacks + risk.drains + risk.shortages + risk.anomalies,
        risk.stress_runs,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `chainfold check`: each dependency answers, or one line naming the first that does not.
async fn check(config: &CheckConfig) -> anyhow::Result<()> {
    let timeout = Duration::from_secs(5);
    let mut postgres = config.postgres.clone();
    postgres.max_connections = 1;
    postgres.connect_timeout = timeout;
    let options: sqlx::postgres::PgConnectOptions = postgres
        .expose_url()
        .parse()
        .context("DATABASE_URL is not a valid Postgres URL")?;
    let mut conn = tokio::time::timeout(timeout, sqlx::ConnectOptions::connect(&options))
        .await
        .context("Postgres did not answer within 5 s")?
        .context("could not connect to Postgres")?;
    sqlx::query("SELECT 1")
        .execute(&mut conn)
        .await
        .context("Postgres did not answer a query")?;
    let probe: BaseConsumer = chainfold_platform::kafka::client_config(&config.kafka)
        .create()
        .context("could not create a Kafka client")?;
    tokio::task::spawn_blocking(move || probe.fetch_metadata(None, timeout))
        .await
        .context("Kafka probe panicked")?
        .with_context(|| format!("Kafka at {} did not answer", config.kafka.brokers))?;
    let mut redis = tokio::time::timeout(
        timeout,
        chainfold_platform::redis_cache::connect(&config.redis),
    )
    .await
    .context("Redis did not answer within 5 s")??;
    redis::cmd("PING")
        .query_async::<String>(&mut redis)
        .await
        .context("Redis did not answer PING")?;
    if let Some(url) = &config.url {
        let status = http_status(url, timeout).await?;
        anyhow::ensure!(status == 200, "{url} answered {status}, not 200");
    }
    println!("ok");
    Ok(())
}

/// The status code of a plain `GET` of an `http://host:port/path` URL.
async fn http_status(url: &str, timeout: Duration) -> anyhow::Result<u16> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("{url} is not an http:// URL"))?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let request = format!("GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let answer = tokio::time::timeout(timeout, async {
        let mut stream = tokio::net::TcpStream::connect(host).await?;
        stream.write_all(request.as_bytes()).await?;
        let mut head = vec![0u8; 64];
        let n = stream.read(&mut head).await?;
        head.truncate(n);
        Ok::<_, std::io::Error>(head)
    })
    .await
    .with_context(|| format!("{url} did not answer within {timeout:?}"))?
    .with_context(|| format!("could not GET {url}"))?;
    String::from_utf8_lossy(&answer)
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("{url} did not answer HTTP"))
}

async fn replay(
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

fn describe_replay(summary: &chainfold_ingest::publish::PublishSummary) -> String {
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

async fn demo(config: DemoConfig) -> anyhow::Result<()> {
    let summary = tokio::select! {
        summary = replay(&config.replay) => summary?,
        () = chainfold_platform::shutdown_signal() => anyhow::bail!("stopped during the replay"),
    };
    println!("{}", describe_replay(&summary));
    let live = if config.no_chain {
        None
    } else {
        Some(live_chain(&config).await?)
    };
    let projector_config = chainfold_projector::Config::new(
        config.replay.kafka.clone(),
        config.postgres.clone(),
        config.redis.clone(),
        config.group.clone(),
    );
    let mut projector = chainfold_projector::App::build(projector_config)
        .await
        .context("could not start projector")?;
    let started = std::time::Instant::now();
    let outcome = match projector
        .run_until_caught_up_or(chainfold_platform::shutdown_signal())
        .await
    {
        // The demo's read models are disposable by design: refold them from the new log.
        Err(err)
            if err
                .downcast_ref::<chainfold_projector::LogReset>()
                .is_some() =>
        {
            println!("note: {err:#}; rebuilding the demo's read models");
            projector.reset().await?;
            projector
                .run_until_caught_up_or(chainfold_platform::shutdown_signal())
                .await?
        }
        result => result?,
    };
    let elapsed = started.elapsed();
    println!(
        "project: folded {} new events ({} received, {} dead-lettered) in {:.2}s",
        outcome.stored,
        outcome.received,
        outcome.dead_lettered,
        elapsed.as_secs_f64()
    );
    let counts: (i64, i64, i64, i64) = sqlx_counts(projector.pool()).await?;
    println!(
        "read models: {} lending events, {} wallets, {} swaps, {} pools",
        counts.0, counts.1, counts.2, counts.3
    );
    if live.is_some() {
        let live_counts: (i64, i64, i64, i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM pool_state WHERE chain_id = 31337),
                    (SELECT count(*) FROM lending_position WHERE chain_id = 31337),
                    (SELECT count(*) FROM liquidation WHERE chain_id = 31337),
                    (SELECT count(*) FROM flash_loan WHERE chain_id = 31337),
                    (SELECT count(*) FROM oracle_price WHERE chain_id = 31337)",
        )
        .fetch_one(projector.pool())
        .await
        .context("could not count the live read models")?;
        println!(
            "live read models (chain 31337): {} pool states, {} lending positions, {} liquidations, {} flash loans, {} oracle feeds; scenario labels in simulate-labels.jsonl",
            live_counts.0, live_counts.1, live_counts.2, live_counts.3, live_counts.4
        );
    }
    let mut scorer = demo_score(&config).await?;
    let risk = demo_risk(&config).await?;
    if let Some((anvil, _)) = &live {
        demo_decide(&config, projector.pool(), &anvil.http_url()).await?;
    }
    if config.no_serve {
        return Ok(());
    }
    let mut api_config = chainfold_api::Config::new(config.postgres, config.redis, config.listen);
    api_config.kafka = config.replay.kafka.clone();
    let api = chainfold_api::App::build(api_config)
        .await
        .context("could not start api")?;
    let url = format!("http://{}", api.local_addr());
    println!("\napi: GraphiQL at {url}/ , GraphQL at {url}/graphql , health at {url}/health");
    println!("try:\n  curl -s {url}/graphql -H 'content-type: application/json' \\\n    -d '{{\"query\":\"{{ wallet(chainId: 137, address: \\\"0x000006eee6e39015cb523aebdd4d0b1855aba682\\\") {{ address lendingSummary {{ action count amountUsd }} }} }}\"}}'");
    // A key for the demo's dashboard link (subscriptions need one).
    let (_, key) = chainfold_api::auth::create_key(projector.pool(), "demo", 600).await?;
    println!(
        "dashboard: {url}/dashboard?key={key}&chain=137&wallets=0x000006eee6e39015cb523aebdd4d0b1855aba682,0x000000003ce0cf2c037493b1dc087204bd7f713e"
    );
    println!("Ctrl-C stops the demo (the projector keeps folding new events until then).");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let follower_task = live.map(|(anvil, follower)| {
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let result = follower
                .run(async move {
                    let _ = stop.wait_for(|stop| *stop).await;
                })
                .await;
            drop(anvil);
            result
        })
    });
    let mut scorer_stop = stop_rx.clone();
    let scorer_task = tokio::spawn(async move {
        let scorer = scorer.take_scorer();
        scorer
            .run_until_stopped(async move {
                let _ = scorer_stop.wait_for(|stop| *stop).await;
            })
            .await
    });
    let mut risk_stop = stop_rx.clone();
    let risk_task = tokio::spawn(risk.run_until_stopped(async move {
        let _ = risk_stop.wait_for(|stop| *stop).await;
    }));
    let mut projector_stop = stop_rx.clone();
    let projector_task = tokio::spawn(projector.run_until_stopped(async move {
        let _ = projector_stop.wait_for(|stop| *stop).await;
    }));
    let mut api_stop = stop_rx;
    let api_task = tokio::spawn(api.run_until_stopped(async move {
        let _ = api_stop.wait_for(|stop| *stop).await;
    }));
    chainfold_platform::shutdown_signal().await;
    let _ = stop_tx.send(true);
    api_task.await.context("api task panicked")??;
    projector_task.await.context("projector task panicked")??;
    scorer_task.await.context("scorer task panicked")??;
    risk_task.await.context("risk task panicked")??;
    if let Some(task) = follower_task {
        task.await.context("follower task panicked")??;
    }
    Ok(())
}

/// The demo's scorer, kept for serving.
struct DemoScorer(Option<chainfold_scoring::worker::Scorer>);

impl DemoScorer {
    fn take_scorer(&mut self) -> chainfold_scoring::worker::Scorer {
        self.0.take().expect("the demo scorer is taken once")
    }
}

/// Scores everything the demo published (recorded and live), then keeps the scorer for serving.
async fn demo_score(config: &DemoConfig) -> anyhow::Result<DemoScorer> {
    let mut scorer_config = chainfold_scoring::worker::Config::new(
        config.replay.kafka.clone(),
        config.postgres.clone(),
        config.redis.clone(),
        "chainfold-scorer".into(),
        config.group.clone(),
        "scoring/models/position-v1".into(),
    );
    scorer_config.instance_id = Some("chainfold-demo-scorer".into());
    let mut scorer = chainfold_scoring::worker::Scorer::build(scorer_config)
        .await
        .context("could not start the scorer")?;
    let started = std::time::Instant::now();
    let outcome = scorer
        .run_until_idle(std::time::Duration::from_secs(2))
        .await?;
    let (wallets, priced): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(probability_of_liquidation) FROM credit_score_latest",
    )
    .fetch_one(scorer.pool())
    .await?;
    println!(
        "score: {} new scores in {:.1}s ({} with the position model, {} oracle moves); {wallets} wallets scored, {priced} of them with a probability of liquidation",
        outcome.scored,
        started.elapsed().as_secs_f64(),
        outcome.with_position,
        outcome.oracle_moves
    );
    Ok(DemoScorer(Some(scorer)))
}

/// Runs the detectors over everything the demo published (and recomputes the demo chain's
/// stress test), then keeps the risk worker for serving.
async fn demo_risk(config: &DemoConfig) -> anyhow::Result<chainfold_scoring::risk::RiskWorker> {
    let mut risk_config = chainfold_scoring::risk::RiskConfig::new(
        config.replay.kafka.clone(),
        config.postgres.clone(),
        config.redis.clone(),
        "chainfold-risk".into(),
    );
    risk_config.projector_group = config.group.clone();
    risk_config.instance_id = Some("chainfold-demo-risk".into());
    risk_config.prices_dir = config.replay.data_dir.join("aave-v2-eth-bhemen/usd_prices");
    risk_config.anomaly_model_dir = Some("scoring/models/pool-anomaly-v1".into());
    let mut worker = chainfold_scoring::risk::RiskWorker::build(risk_config)
        .await
        .context("could not start the risk worker")?;
    let started = std::time::Instant::now();
    let o = worker
        .run_until_idle(std::time::Duration::from_secs(2))
        .await?;
    let by_kind: Vec<(String, i64)> =
        sqlx::query_as("SELECT kind, count(*) FROM risk_alert GROUP BY kind ORDER BY kind")
            .fetch_all(worker.pool())
            .await?;
    let stress: Option<(i32, Option<f64>, Option<f64>, f64)> = sqlx::query_as(
        "SELECT positions, var95_usd::float8, lar95_usd::float8, elapsed_ms FROM stress_run WHERE chain_id = 31337 ORDER BY id DESC LIMIT 1",
    )
    .fetch_optional(worker.pool())
    .await?;
    println!(
        "risk: {} blocks checked in {:.1}s; alerts stored: {}{}",
        o.blocks,
        started.elapsed().as_secs_f64(),
        by_kind
            .iter()
            .map(|(k, n)| format!("{n} {k}"))
            .collect::<Vec<_>>()
            .join(", "),
        stress.map_or(String::new(), |(n, var, lar, ms)| format!(
            "; stress (chain 31337): {n} positions, VaR95 ${:.0}, LaR95 ${:.0}, {ms:.0} ms",
            var.unwrap_or(0.0),
            lar.unwrap_or(0.0)
        ))
    );
    Ok(worker)
}

/// On the demo chain: a credit request for the riskiest scored borrower, decided, published and
/// applied on the fixture lending pool by the actuator.
async fn demo_decide(
    config: &DemoConfig,
    pool: &sqlx::PgPool,
    rpc_url: &str,
) -> anyhow::Result<()> {
    let borrower: Option<String> = sqlx::query_scalar(
        "SELECT wallet FROM credit_score_latest WHERE chain_id = 31337 AND probability_of_liquidation IS NOT NULL
         ORDER BY probability_of_liquidation DESC, wallet LIMIT 1",
    )
    .fetch_optional(pool)
    .await?;
    let Some(wallet) = borrower else {
        println!("decide: no priced borrower on the demo chain");
        return Ok(());
    };
    let policy = chainfold_platform::decisions::policy_or_shipped(None)?;
    let nonce = chrono::Utc::now().timestamp_micros().to_string();
    let record = chainfold_platform::decisions::decide_request(
        pool,
        &policy,
        &chainfold_platform::decisions::CreditRequest {
            chain_id: 31337,
            wallet: &wallet,
            amount_usd: 1000.into(),
            collateral_asset: "WETH",
            collateral_usd: None,
            nonce: &nonce,
        },
    )
    .await?
    .map_err(anyhow::Error::msg)?;
    let topic = format!(
        "{}{}",
        config.replay.kafka.topic_prefix,
        chainfold_domain::topics::DECISIONS
    );
    chainfold_platform::kafka::ensure_topics(&config.replay.kafka, std::slice::from_ref(&topic))
        .await?;
    let producer = chainfold_platform::kafka::producer(&config.replay.kafka)?;
    chainfold_platform::decisions::store_with_output(pool, &topic, &record).await?;
    chainfold_platform::outbox::relay(pool, &producer, std::slice::from_ref(&topic), 500).await?;
    let chains = chainfold_ingest::rpc::config::ChainsFile::parse(&std::fs::read_to_string(
        "chains.simulate.toml",
    )?)?;
    let lending_pool = chains
        .chains
        .iter()
        .flat_map(|c| c.contracts.iter())
        .find(|c| c.kind == chainfold_ingest::rpc::abi::ContractKind::AaveV2LendingPool)
        .map(|c| c.address)
        .context("chains.simulate.toml names no lending pool")?;
    let mut actuator_config = chainfold_simulate::actuate::ActuateConfig::new(
        config.replay.kafka.clone(),
        config.postgres.clone(),
        rpc_url.to_owned(),
        lending_pool,
    );
    actuator_config.group = "chainfold-demo-actuator".into();
    let mut actuator = chainfold_simulate::actuate::Actuator::build(actuator_config).await?;
    actuator
        .run_until_idle(std::time::Duration::from_secs(2))
        .await?;
    let tx: (Option<String>, Option<i64>) =
        sqlx::query_as("SELECT tx_hash, tx_block FROM credit_decision WHERE id = $1")
            .bind(&record.id)
            .fetch_one(pool)
            .await?;
    println!(
        "decide: {wallet} asks $1,000 against WETH: {:?} (score {}, P(liquidation) {}, {}); actuate: setCreditLine in tx {} (block {})",
        record.decision.outcome,
        record.decision.request.score,
        record
            .decision
            .request
            .probability_of_liquidation
            .map_or("n/a".into(), |p| format!("{:.1}%", p * 100.0)),
        record.decision.reason,
        tx.0.unwrap_or_else(|| "not applied".into()),
        tx.1.unwrap_or_default()
    );
    Ok(())
}

/// The demo's live part: a fresh anvil, the fixtures driven by `simulate`, and a follower that
/// has published the chain up to its head (and keeps following while the demo serves).
async fn live_chain(
    config: &DemoConfig,
) -> anyhow::Result<(
    chainfold_simulate::anvil::Anvil,
    chainfold_ingest::rpc::follow::Follower,
)> {
    let anvil = chainfold_simulate::anvil::Anvil::spawn(31337)?;
    let args = chainfold_simulate::SimulateArgs {
        rpc_url: Some(anvil.http_url()),
        chain_id: 31337,
        data_dir: config.replay.data_dir.clone(),
        swaps: 200,
        pools: 2,
        wallets: 6,
        price_hours: 120,
        no_scenarios: false,
        labels: "simulate-labels.jsonl".into(),
        chains_out: "chains.simulate.toml".into(),
        exit: true,
    };
    let started = std::time::Instant::now();
    let summary = chainfold_simulate::run(&args).await?;
    println!("{summary} ({:.1}s)", started.elapsed().as_secs_f64());
    let pool = chainfold_platform::postgres::connect_and_migrate(&config.postgres).await?;
    // Each demo starts a new local chain under the same id: the previous one's rows go.
    chainfold_ingest::rpc::state::forget_chain(&pool, 31337).await?;
    let toml = std::fs::read_to_string(&args.chains_out)?;
    let chain = chainfold_ingest::rpc::config::ChainsFile::parse(&toml)?
        .chains
        .remove(0);
    let topics = config.replay.kafka.topics();
    let producer = chainfold_platform::kafka::producer(&config.replay.kafka)?;
    let mut follower =
        chainfold_ingest::rpc::follow::Follower::new(chain, producer, topics, pool).await?;
    let started = std::time::Instant::now();
    let reached = follower.sync_to_head().await?;
    let stats = &follower.stats;
    println!(
        "ingest rpc: chain 31337 followed to block {} in {:.1}s: {} logs, {} events published, {} dead-lettered",
        reached.unwrap_or_default(),
        started.elapsed().as_secs_f64(),
        stats.logs.load(std::sync::atomic::Ordering::Relaxed),
        stats.published.load(std::sync::atomic::Ordering::Relaxed),
        stats.dead_lettered.load(std::sync::atomic::Ordering::Relaxed),
    );
    Ok((anvil, follower))
}

async fn sqlx_counts(
    pool: &chainfold_projector::store::PgPoolRef,
) -> anyhow::Result<(i64, i64, i64, i64)> {
    chainfold_projector::store::table_counts(pool)
        .await
        .context("could not count the read models")
}

async fn tail(config: TailConfig) -> anyhow::Result<()> {
    let consumer: BaseConsumer = chainfold_platform::kafka::client_config(&config.kafka)
        .set("group.id", "chainfold-tail")
        .set("enable.auto.commit", "false")
        .create()
        .context("could not create Kafka consumer")?;
    let topic = config.topic.clone();
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let marks = chainfold_platform::kafka::watermarks(&consumer, &topic)?;
        let mut tpl = TopicPartitionList::new();
        for (partition, low, high) in &marks {
            let start = if config.from_end { *high } else { *low };
            tpl.add_partition_offset(&topic, *partition, Offset::Offset(start))
                .context("could not build the assignment")?;
        }
        consumer
            .assign(&tpl)
            .context("could not assign partitions")?;
        let mut remaining: i64 = marks
            .iter()
            .map(|(_, low, high)| if config.from_end { 0 } else { high - low })
            .sum();
        let mut printed = 0u64;
        loop {
            if config.limit.is_some_and(|limit| printed >= limit)
                || (!config.follow && remaining <= 0)
            {
                return Ok(());
            }
            let Some(result) = consumer.poll(Duration::from_millis(500)) else {
                continue;
            };
            let message = result.context("could not read from Kafka")?;
            remaining -= 1;
            printed += 1;
            let key = message
                .key()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .unwrap_or_else(|| "-".into());
            let headers = message
                .headers()
                .map(|hs| {
                    hs.iter()
                        .map(|h| {
                            format!(
                                "{}={}",
                                h.key,
                                h.value
                                    .map(|v| String::from_utf8_lossy(v).into_owned())
                                    .unwrap_or_default()
                            )
                        })
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default();
            let payload = message
                .payload()
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .unwrap_or_default();
            println!(
                "{}/{}@{} key={} {}\n  {}",
                message.topic(),
                message.partition(),
                message.offset(),
                key,
                if headers.is_empty() {
                    String::new()
                } else {
                    format!("[{headers}]")
                },
                payload
            );
        }
    })
    .await
    .context("tail task panicked")?
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
        assert_eq!(config.datasets, vec![Dataset::Swaps]);
        assert_eq!(config.kafka.topics().amm, "t.chainfold.amm.v1");
    }
}
