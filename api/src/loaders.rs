//! Batched loading (async-graphql `DataLoader`): a page of wallets asks for its scores and
//! lending summaries in one query each, not one per wallet (no N+1).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_graphql::dataloader::{DataLoader, Loader};
use bigdecimal::BigDecimal;
use sqlx::PgPool;

use crate::types::{CreditScore, LendingAction, LendingSummary, ScoreRow, SCORE_COLUMNS};

/// (chain id, lowercase address).
pub type WalletKey = (i64, String);

/// The loaders of one schema, and how many batches they ran (`/metrics`, tests).
#[derive(Clone)]
pub struct Loaders {
    pub scores: Arc<DataLoader<ScoreLoader>>,
    pub summaries: Arc<DataLoader<SummaryLoader>>,
    pub batches: Arc<AtomicU64>,
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
        let batches = Arc::new(AtomicU64::new(0));
        Loaders {
            scores: Arc::new(DataLoader::new(
                ScoreLoader {
                    pool: pool.clone(),
                    batches: batches.clone(),
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
}

impl Loader<WalletKey> for ScoreLoader {
    type Value = CreditScore;
    type Error = Arc<sqlx::Error>;

    async fn load(
        &self,
        keys: &[WalletKey],
    ) -> Result<HashMap<WalletKey, CreditScore>, Self::Error> {
        self.batches.fetch_add(1, Ordering::Relaxed);
        let (chains, wallets) = split(keys);
        // Each key's latest row through the (chain_id, wallet, id DESC) index.
        let rows: Vec<ScoreRow> = sqlx::query_as(&format!(
            "SELECT s.* FROM UNNEST($1::int8[], $2::text[]) AS k(c, w)
             CROSS JOIN LATERAL (SELECT {SCORE_COLUMNS} FROM credit_score
                                 WHERE chain_id = k.c AND wallet = k.w ORDER BY id DESC LIMIT 1) s"
        ))
        .bind(&chains)
        .bind(&wallets)
        .fetch_all(&self.pool)
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
        type Row = (i64, String, String, i64, i64, BigDecimal);
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT s.chain_id, s.wallet, s.action, s.event_count, s.priced_count, s.amount_usd
             FROM wallet_lending_summary s
             JOIN UNNEST($1::int8[], $2::text[]) AS k(c, w) ON s.chain_id = k.c AND s.wallet = k.w
             ORDER BY s.chain_id, s.wallet,
                      array_position(ARRAY['deposit','borrow','repay','redeem','liquidation'], s.action)",
        )
        .bind(&chains)
        .bind(&wallets)
        .fetch_all(&self.pool)
        .await
        .map_err(Arc::new)?;
        let mut out: HashMap<WalletKey, Vec<LendingSummary>> = HashMap::new();
        for (chain, wallet, action, count, priced, usd) in rows {
            let Some(action) = LendingAction::from_db(&action) else {
                continue;
            };
            out.entry((chain, wallet))
                .or_default()
                .push(LendingSummary {
                    action,
                    count,
                    amount_usd: usd.to_plain_string(),
                    priced_count: priced,
                });
        }
        Ok(out)
    }
}
