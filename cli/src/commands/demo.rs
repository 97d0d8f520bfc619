//! `chainfold demo`: everything in one process on the bundled data: replay, a simulated chain
//! followed live, project, score, detect, decide and actuate, then serve.

use anyhow::Context as _;
use chainfold_platform::config::{PostgresArgs, RedisArgs};

use super::ingest::{describe_replay, replay, ReplayConfig};

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

pub async fn run(config: DemoConfig) -> anyhow::Result<()> {
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
    let counts = chainfold_store::summary::read_models(projector.pool())
        .await
        .context("could not count the read models")?;
    println!(
        "read models: {} lending events, {} wallets, {} swaps, {} pools",
        counts.lending_events, counts.wallets, counts.swaps, counts.pools
    );
    if live.is_some() {
        let live_counts = chainfold_store::summary::live(projector.pool(), 31337)
            .await
            .context("could not count the live read models")?;
        println!(
            "live read models (chain 31337): {} pool states, {} lending positions, {} liquidations, {} flash loans, {} oracle feeds; scenario labels in simulate-labels.jsonl",
            live_counts.pool_states,
            live_counts.lending_positions,
            live_counts.liquidations,
            live_counts.flash_loans,
            live_counts.oracle_feeds
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
    let chainfold_store::summary::ScoreCounts { wallets, priced } =
        chainfold_store::summary::scores(scorer.pool()).await?;
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
async fn demo_risk(config: &DemoConfig) -> anyhow::Result<chainfold_risk::worker::RiskWorker> {
    let mut risk_config = chainfold_risk::worker::RiskConfig::new(
        config.replay.kafka.clone(),
        config.postgres.clone(),
        config.redis.clone(),
        "chainfold-risk".into(),
    );
    risk_config.projector_group = config.group.clone();
    risk_config.instance_id = Some("chainfold-demo-risk".into());
    risk_config.prices_dir = config.replay.data_dir.join("aave-v2-eth-bhemen/usd_prices");
    risk_config.anomaly_model_dir = Some("scoring/models/pool-anomaly-v1".into());
    let mut worker = chainfold_risk::worker::RiskWorker::build(risk_config)
        .await
        .context("could not start the risk worker")?;
    let started = std::time::Instant::now();
    let o = worker
        .run_until_idle(std::time::Duration::from_secs(2))
        .await?;
    let by_kind = chainfold_store::summary::alerts_by_kind(worker.pool()).await?;
    let stress = chainfold_store::summary::latest_stress(worker.pool(), 31337).await?;
    println!(
        "risk: {} blocks checked in {:.1}s; alerts stored: {}{}",
        o.blocks,
        started.elapsed().as_secs_f64(),
        by_kind
            .iter()
            .map(|(k, n)| format!("{n} {k}"))
            .collect::<Vec<_>>()
            .join(", "),
        stress.map_or(String::new(), |s| format!(
            "; stress (chain 31337): {} positions, VaR95 ${:.0}, LaR95 ${:.0}, {:.0} ms",
            s.positions,
            s.var95_usd.unwrap_or(0.0),
            s.lar95_usd.unwrap_or(0.0),
            s.elapsed_ms
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
    let borrower = chainfold_store::summary::riskiest_borrower(pool, 31337).await?;
    let Some(wallet) = borrower else {
        println!("decide: no priced borrower on the demo chain");
        return Ok(());
    };
    let policy = chainfold_store::decisions::policy_or_shipped(None)?;
    let nonce = chrono::Utc::now().timestamp_micros().to_string();
    let record = chainfold_store::decisions::decide_request(
        pool,
        &policy,
        &chainfold_store::decisions::CreditRequest {
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
    chainfold_store::decisions::store_with_output(pool, &topic, &record).await?;
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
    let tx = chainfold_store::decisions::applied_in(pool, &record.id).await?;
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
