//! Redis: a rebuildable cache written after the Postgres commit, never the source of truth.

use anyhow::Context as _;
use redis::aio::ConnectionManager;

use crate::config::RedisArgs;

/// Opens a reconnecting connection.
pub async fn connect(args: &RedisArgs) -> anyhow::Result<ConnectionManager> {
    let client =
        redis::Client::open(args.expose_url()).context("REDIS_URL is not a valid Redis URL")?;
    tokio::time::timeout(
        std::time::Duration::from_secs(5),
        ConnectionManager::new(client),
    )
    .await
    .context("timed out connecting to Redis (is it running? `scripts/stack up` starts it)")?
    .context("could not connect to Redis")
}

/// Key of a wallet's lending summary hash: `<prefix>wallet:<chain>:<address>`.
pub fn wallet_key(prefix: &str, chain_id: u64, wallet: &str) -> String {
    format!("{prefix}wallet:{chain_id}:{wallet}")
}

/// Key of a pool's summary hash: `<prefix>pool:<chain>:<address>`.
pub fn pool_key(prefix: &str, chain_id: u64, pool: &str) -> String {
    format!("{prefix}pool:{chain_id}:{pool}")
}
