//! Batched loading (async-graphql `DataLoader`): a page of wallets asks for its scores and
//! lending summaries in one query each, not one per wallet (no N+1).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_graphql::dataloader::{DataLoader, Loader};
use sqlx::PgPool;

use crate::types::{CreditScore, LendingAction, LendingSummary, ScoreRow};

/// (chain id, lowercase address).
pub type WalletKey = (i64, String);

/// The loaders of one schema, and how many batches they ran (`/metrics`, tests).
#[derive(Clone)]
pub struct Loaders {
    pub scores: Arc<DataLoader<ScoreLoader>>,
    pub summaries: Arc<DataLoader<SummaryLoader>>,
    pub batches: Arc<AtomicU64>,
    /// Where latest scores and wallet summaries are read first (`--redis-reads`).
    pub latest: Option<Arc<Latest>>,
}

/// The Redis copies of the latest scores and wallet summaries ([`chainfold_store::latest`]):
/// read first, Postgres on a miss (which fills the entry through the same versioned write).
pub struct Latest {
    redis: redis::aio::ConnectionManager,
    prefix: String,
    pool: PgPool,
    /// Entries answered from Redis, and misses read from Postgres.
    pub hits: AtomicU64,
    pub misses: AtomicU64,
}

impl std::fmt::Debug for Latest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Latest")
            .field("prefix", &self.prefix)
            .field("hits", &self.hits.load(Ordering::Relaxed))
            .field("misses", &self.misses.load(Ordering::Relaxed))
            .finish()
    }
}

impl Latest {
    pub fn new(redis: redis::aio::ConnectionManager, prefix: String, pool: PgPool) -> Latest {
        Latest {
            redis,
            prefix,
            pool,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// The entries of `keys` (`None`: the entity has none), from Redis where it holds them and
    /// from Postgres for the rest, which are then stored (only those with a value, so queries for
    /// unknown addresses fill nothing). Redis failing is a miss, not an error.
    pub async fn read(
        &self,
        kind: chainfold_store::latest::Kind,
        keys: &[WalletKey],
    ) -> Result<HashMap<WalletKey, Option<String>>, sqlx::Error> {
        use chainfold_store::latest;
        let mut redis = self.redis.clone();
        let cached = match latest::get(&mut redis, &self.prefix, kind, keys).await {
            Ok(found) => found,
            Err(err) => {
                tracing::debug!(%err, "redis read failed; reading Postgres");
                vec![None; keys.len()]
            }
        };
        let mut out = HashMap::with_capacity(keys.len());
        let mut missing = Vec::new();
        for (key, entry) in keys.iter().zip(cached) {
            match entry {
                Some(row) => {
                    out.insert(key.clone(), row);
                }
                None => missing.push(key.clone()),
            }
        }
        self.hits.fetch_add(out.len() as u64, Ordering::Relaxed);
        if missing.is_empty() {
            return Ok(out);
        }
        self.misses
            .fetch_add(missing.len() as u64, Ordering::Relaxed);
        let read = latest::read_postgres(&self.pool, kind, &missing, false).await?;
        let fill: Vec<latest::Entry> = read.iter().filter(|e| e.row.is_some()).cloned().collect();
        if let Err(err) = latest::put(&mut redis, &self.prefix, kind, &fill).await {
            tracing::debug!(%err, "redis fill failed");
        }
        for e in read {
            out.insert((e.chain_id, e.wallet), e.row);
        }
        Ok(out)
    }
}

impl std::fmt::Debug for Loaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loaders")
            .field("batches", &self.batches.load(Ordering::Relaxed))
            .finish()
    }
}

impl Loaders {
    pub fn new(pool: PgPool) -> Loaders {
        Loaders::with_latest(pool, None)
    }

    /// [`Loaders::new`] reading latest scores from Redis first.
    pub fn with_latest(pool: PgPool, latest: Option<Arc<Latest>>) -> Loaders {
        let batches = Arc::new(AtomicU64::new(0));
        Loaders {
            scores: Arc::new(DataLoader::new(
                ScoreLoader {
                    pool: pool.clone(),
                    batches: batches.clone(),
                    latest: latest.clone(),
                },
                tokio::spawn,
            )),
            summaries: Arc::new(DataLoader::new(
                SummaryLoader {
                    pool,
                    batches: batches.clone(),
                },
                tokio::spawn,
            )),
            batches,
            latest,
        }
    }

    /// Batched queries run since start.
    pub fn batches(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }
}

fn split(keys: &[WalletKey]) -> (Vec<i64>, Vec<String>) {
    keys.iter().map(|(c, w)| (*c, w.clone())).unzip()
}

/// Latest credit score per wallet.
#[derive(Debug)]
pub struct ScoreLoader {
    pool: PgPool,
    batches: Arc<AtomicU64>,
    latest: Option<Arc<Latest>>,
}

impl Loader<WalletKey> for ScoreLoader {
    type Value = CreditScore;
    type Error = Arc<sqlx::Error>;

    async fn load(
        &self,
        keys: &[WalletKey],
    ) -> Result<HashMap<WalletKey, CreditScore>, Self::Error> {
        self.batches.fetch_add(1, Ordering::Relaxed);
        if let Some(latest) = &self.latest {
            let rows = latest
                .read(chainfold_store::latest::Kind::Score, keys)
                .await
                .map_err(Arc::new)?;
            let mut out = HashMap::with_capacity(rows.len());
            for (key, row) in rows {
                let Some(json) = row else { continue };
                let row: ScoreRow = serde_json::from_str(&json)
                    .map_err(|e| Arc::new(sqlx::Error::Decode(Box::new(e))))?;
                out.insert(key, CreditScore::from(row));
            }
            return Ok(out);
        }
        let (chains, wallets) = split(keys);
        // Each key's latest row through the (chain_id, wallet, id DESC) index.
        let rows = chainfold_store::scores::latest_of(&self.pool, &chains, &wallets)
            .await
            .map_err(Arc::new)?;
        Ok(rows
            .into_iter()
            .map(|r| ((r.chain_id, r.wallet.clone()), CreditScore::from(r)))
            .collect())
    }
}

/// Per-action lending totals per wallet.
#[derive(Debug)]
pub struct SummaryLoader {
    pool: PgPool,
    batches: Arc<AtomicU64>,
}

impl Loader<WalletKey> for SummaryLoader {
    type Value = Vec<LendingSummary>;
    type Error = Arc<sqlx::Error>;

    async fn load(
        &self,
        keys: &[WalletKey],
    ) -> Result<HashMap<WalletKey, Vec<LendingSummary>>, Self::Error> {
        self.batches.fetch_add(1, Ordering::Relaxed);
        let (chains, wallets) = split(keys);
        let rows = chainfold_store::lending::totals_of(&self.pool, &chains, &wallets)
            .await
            .map_err(Arc::new)?;
        let mut out: HashMap<WalletKey, Vec<LendingSummary>> = HashMap::new();
        for t in rows {
            let (chain, wallet, action, count, priced, usd) = (
                t.chain_id,
                t.wallet,
                t.action,
                t.event_count,
                t.priced_count,
                t.amount_usd,
            );
            let Some(action) = LendingAction::from_db(&action) else {
                continue;
            };
            out.entry((chain, wallet))
                .or_default()
                .push(LendingSummary {
                    action,
                    count,
                    amount_usd: usd,
                    priced_count: priced,
                });
        }
        Ok(out)
    }
}
