//! EVM logs read over JSON-RPC with alloy: `chainfold ingest rpc`.
//!
//! - [`config`]: `chains.toml` (chains, endpoints, confirmations, watched contracts).
//! - [`abi`]: alloy `sol!` types of every watched event and raw-log decoding.
//! - [`normalize`]: decoded logs → the same envelopes and topics as the replay path.
//! - [`follow`]: one chain's follower (adaptive backfill, head following, reorgs, checkpoints).
//! - [`state`]: the follower's durable state in Postgres.
//! - [`wire`]: `eth_getLogs` answers read in one pass.

pub mod abi;
pub mod config;
pub mod fetch;
pub mod follow;
pub mod normalize;
pub mod state;
pub mod wire;

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
    /// How often a standby checks whether the chain's leader is gone. One process per chain
    /// leads (a Postgres advisory lock, `ingest:<chain id>`); others wait and take over.
    #[arg(long = "standby-poll", env = "CHAINFOLD_INGEST_STANDBY_POLL", default_value = "1s", value_parser = chainfold_platform::config::parse_duration)]
    pub standby_poll: std::time::Duration,
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
    let holder = chainfold_platform::lease::holder_name("ingest");
    if args.until_head {
        for chain in file.chains {
            let lease = lease_of(args, chain.chain_id, &holder).await?;
            let mut f =
                follow::Follower::new(chain, producer.clone(), topics.clone(), pool.clone())
                    .await?
                    .with_lease(lease.clone());
            let reached = f.sync_to_head().await?;
            tracing::info!(chain_id = f.chain_id(), block = ?reached, "reached head");
            drop(f);
            if let Ok(lease) = std::sync::Arc::try_unwrap(lease) {
                lease.release().await;
            }
        }
        return Ok(());
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    for chain in file.chains {
        let mut stop = stop_rx.clone();
        let (args, holder, producer, topics, pool) = (
            args.clone(),
            holder.clone(),
            producer.clone(),
            topics.clone(),
            pool.clone(),
        );
        tasks.spawn(async move {
            let id = chain.chain_id;
            loop {
                // A standby waits here (until shutdown) while another process leads this chain.
                let lease = tokio::select! {
                    lease = lease_of(&args, id, &holder) => lease?,
                    _ = stop.wait_for(|s| *s) => return Ok(()),
                };
                // The state is loaded once leading: the previous leader advanced it until it
                // stopped.
                let f = follow::Follower::new(chain.clone(), producer.clone(), topics.clone(), pool.clone())
                    .await
                    .with_context(|| format!("chain {id}"))?
                    .with_lease(lease);
                let mut stopped = stop.clone();
                let result = f
                    .run(async move {
                        let _ = stopped.wait_for(|s| *s).await;
                    })
                    .await;
                match result {
                    // The lease's session ended (Postgres restarted, a network cut): stand by
                    // again; whoever holds the lease now leads.
                    Err(err) if err.downcast_ref::<chainfold_platform::lease::LeaseLost>().is_some() => {
                        tracing::warn!(chain_id = id, error = %err, "lost the ingest lease; standing by");
                        tokio::time::sleep(args.standby_poll).await;
                    }
                    other => return other.with_context(|| format!("chain {id}")),
                }
            }
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

/// Waits for and takes the lease of `chain_id` (`ingest:<chain id>`).
async fn lease_of(
    args: &RpcArgs,
    chain_id: u64,
    holder: &str,
) -> anyhow::Result<std::sync::Arc<chainfold_platform::lease::Lease>> {
    let lease = chainfold_platform::lease::Lease::acquire(
        &args.postgres,
        &format!("ingest:{chain_id}"),
        holder,
        args.standby_poll,
    )
    .await
    .with_context(|| format!("chain {chain_id}: could not take the ingest lease"))?;
    Ok(std::sync::Arc::new(lease))
}
