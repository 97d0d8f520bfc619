//! EVM logs read over JSON-RPC with alloy: `chainfold ingest rpc`.
//!
//! - [`config`]: `chains.toml` (chains, endpoints, confirmations, watched contracts).
//! - [`abi`]: alloy `sol!` types of every watched event and raw-log decoding.
//! - [`normalize`]: decoded logs → the same envelopes and topics as the replay path.
//! - [`follow`]: one chain's follower (adaptive backfill, head following, reorgs, checkpoints).
//! - [`state`]: the follower's durable state in Postgres.

pub mod abi;
pub mod config;
pub mod follow;
pub mod normalize;
pub mod state;

use std::path::PathBuf;

use anyhow::Context as _;
use chainfold_platform::config::{KafkaArgs, PostgresArgs};
use chainfold_platform::kafka;

/// `chainfold ingest rpc` settings.
#[derive(Debug, Clone, clap::Args)]
pub struct RpcArgs {
    /// The chains to follow (see `chains.example.toml`).
    #[arg(
        long = "chains",
        env = "CHAINFOLD_CHAINS",
        default_value = "chains.toml"
    )]
    pub chains: PathBuf,
    /// Stop once every chain has reached its head (backfill jobs, tests) instead of following.
    #[arg(long = "until-head")]
    pub until_head: bool,
    /// Drop the ingest state and read-model rows of this chain id (a local chain restarted from
    /// scratch), then exit.
    #[arg(long = "forget-chain")]
    pub forget_chain: Option<u64>,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub postgres: PostgresArgs,
}

/// Follows every configured chain until `shutdown` resolves (or, with `--until-head`, until each
/// reached its head). A chain that fails stops the process with its error.
pub async fn run(
    args: &RpcArgs,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let pool = chainfold_platform::postgres::connect_and_migrate(&args.postgres).await?;
    if let Some(chain_id) = args.forget_chain {
        let rows = state::forget_chain(&pool, chain_id).await?;
        println!("forgot chain {chain_id}: {rows} rows deleted");
        return Ok(());
    }
    let file = config::ChainsFile::load(&args.chains)?;
    let topics = args.kafka.topics();
    kafka::ensure_topics(&args.kafka, &topics.all()).await?;
    let producer = kafka::producer(&args.kafka)?;
    let mut followers = Vec::new();
    for chain in file.chains {
        followers.push(
            follow::Follower::new(chain, producer.clone(), topics.clone(), pool.clone()).await?,
        );
    }
    if args.until_head {
        for mut f in followers {
            let reached = f.sync_to_head().await?;
            tracing::info!(chain_id = f.chain_id(), block = ?reached, "reached head");
        }
        return Ok(());
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    for f in followers {
        let mut stop = stop_rx.clone();
        tasks.spawn(async move {
            let id = f.chain_id();
            f.run(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await
            .with_context(|| format!("chain {id}"))
        });
    }
    tokio::pin!(shutdown);
    let result = tokio::select! {
        () = &mut shutdown => Ok(()),
        Some(joined) = tasks.join_next() => joined.context("follower panicked")?,
    };
    let _ = stop_tx.send(true);
    while let Some(joined) = tasks.join_next().await {
        joined.context("follower panicked")??;
    }
    result
}
