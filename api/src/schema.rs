//! Schema roots. `main` only mounts these.

use async_graphql::{Context, MergedObject, Object, Schema};
use sqlx::PgPool;

use crate::books::{BookMutation, BookQuery};
use crate::decisions::{DecisionDesk, MutationRoot};
use crate::error::{gql, ApiResult};
use crate::input::parse_address;
use crate::live::{Hub, SubscriptionRoot};
use crate::types::{IdentityScore, LendingAction, LendingSummary, Pool, Wallet};

/// The chainfold schema.
pub type ChainfoldSchema = Schema<Query, Mutation, SubscriptionRoot>;

/// The query root: wallets, pools and credit (`QueryRoot`), risk (`RiskQuery`) and a lender's
/// books (`BookQuery`).
#[derive(MergedObject, Debug, Default)]
pub struct Query(
    QueryRoot,
    crate::collections::CollectionQuery,
    crate::risk::RiskQuery,
    BookQuery,
    crate::aave::AaveQuery,
);

/// The mutation root: credit requests and books (both need an API key).
#[derive(MergedObject, Debug, Default)]
pub struct Mutation(MutationRoot, BookMutation);

/// Deepest query accepted.
pub const MAX_DEPTH: usize = 12;
/// Highest complexity accepted (see [`crate::cost`]: each field counts 1, each field that reads
/// Postgres [`crate::cost::QUERY_COST`], connections multiply their selection by `first`).
pub const MAX_COMPLEXITY: usize = 50_000;

/// Builds the schema over `pool`, with depth and complexity limits (the default is none).
pub fn build(pool: PgPool) -> ChainfoldSchema {
    build_with(pool, None)
}

/// [`build`] with the decision desk `requestCredit` needs (without one it refuses, clearly).
pub fn build_with(pool: PgPool, desk: Option<DecisionDesk>) -> ChainfoldSchema {
    build_full(pool, desk, None)
}

/// [`build_with`] plus the subscription feed hub (`chainfold serve` starts one).
pub fn build_full(pool: PgPool, desk: Option<DecisionDesk>, hub: Option<Hub>) -> ChainfoldSchema {
    let loaders = crate::loaders::Loaders::new(pool.clone());
    build_parts(pool, desk, hub, loaders)
}

/// [`build_full`] with the caller's batch loaders (to read their counters).
pub fn build_parts(
    pool: PgPool,
    desk: Option<DecisionDesk>,
    hub: Option<Hub>,
    loaders: crate::loaders::Loaders,
) -> ChainfoldSchema {
    let builder = Schema::build(Query::default(), Mutation::default(), SubscriptionRoot)
        .data(loaders)
        .data(pool);
    let builder = match desk {
        Some(desk) => builder.data(desk),
        None => builder,
    };
    let builder = match hub {
        Some(hub) => builder.data(hub),
        None => builder,
    };
    builder
        .limit_depth(MAX_DEPTH)
        .limit_complexity(MAX_COMPLEXITY)
        .extension(crate::cost::Metering)
        .finish()
}

/// The schema without a database, for printing SDL.
pub fn sdl() -> String {
    Schema::build(Query::default(), Mutation::default(), SubscriptionRoot)
        .finish()
        .sdl()
}

/// Query root.
#[derive(Debug, Default)]
pub struct QueryRoot;

/// One action of a wallet's summary as served: from its row
/// ([`chainfold_store::lending::SummaryRow`]), or from the JSON of its
/// Redis copy (`chainfold_store::latest`, amounts as decimal strings).
#[derive(serde::Deserialize)]
struct WalletSummary {
    action: String,
    event_count: i64,
    priced_count: i64,
    amount_usd: String,
    first_at: Option<chrono::DateTime<chrono::Utc>>,
    last_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl From<chainfold_store::lending::SummaryRow> for WalletSummary {
    fn from(r: chainfold_store::lending::SummaryRow) -> Self {
        WalletSummary {
            action: r.action,
            event_count: r.event_count,
            priced_count: r.priced_count,
            amount_usd: r.amount_usd,
            first_at: r.first_at,
            last_at: r.last_at,
        }
    }
}

impl From<chainfold_store::pools::PoolSummary> for Pool {
    fn from(r: chainfold_store::pools::PoolSummary) -> Self {
        Pool {
            chain_id: r.chain_id,
            address: r.pool,
            protocol: r.protocol,
            swap_count: r.swap_count,
            reverted_count: r.reverted_count,
            first_block: r.first_block,
            last_block: r.last_block,
            liquidity_cache: Default::default(),
        }
    }
}

#[Object]
impl QueryRoot {
    /// A wallet on a chain: its lending history, score, decisions and watched-token balances;
    /// `null` when chainfold has seen no lending event and no watched-token transfer of it.
    #[graphql(complexity = "crate::cost::QUERY_COST + child_complexity")]
    async fn wallet(
        &self,
        ctx: &Context<'_>,
        chain_id: i64,
        address: String,
    ) -> ApiResult<Option<Wallet>> {
        let address = parse_address(&address).map_err(gql)?;
        let latest = ctx
            .data_unchecked::<crate::loaders::Loaders>()
            .latest
            .clone();
        let rows: Vec<WalletSummary> = match latest {
            // The versioned Redis copy (Postgres on a miss), see `chainfold_store::latest`.
            Some(latest) => {
                let key = (chain_id, address.clone());
                let found = latest
                    .read(
                        chainfold_store::latest::Kind::Wallet,
                        std::slice::from_ref(&key),
                    )
                    .await
                    .map_err(gql)?;
                match found.get(&key).cloned().flatten() {
                    Some(json) => serde_json::from_str(&json)
                        .map_err(|e| gql(sqlx::Error::Decode(Box::new(e))))?,
                    None => Vec::new(),
                }
            }
            None => {
                let pool = ctx.data_unchecked::<PgPool>();
                let rows = chainfold_store::lending::summary(pool, chain_id, &address)
                    .await
                    .map_err(gql)?;
                rows.into_iter().map(WalletSummary::from).collect()
            }
        };
        if rows.is_empty() {
            // A wallet seen only in watched-token transfers is still a wallet (its lending
            // summary empty); one seen nowhere is null.
            let pool = ctx.data_unchecked::<PgPool>();
            let holds = chainfold_store::erc20::holds_any(pool, chain_id, &address)
                .await
                .map_err(gql)?;
            if !holds {
                return Ok(None);
            }
        }
        let first_activity_at = rows.iter().filter_map(|r| r.first_at).min();
        let last_activity_at = rows.iter().filter_map(|r| r.last_at).max();
        let lending_summary = rows
            .into_iter()
            .filter_map(|row| {
                Some(LendingSummary {
                    action: LendingAction::from_db(&row.action)?,
                    count: row.event_count,
                    amount_usd: row.amount_usd,
                    priced_count: row.priced_count,
                })
            })
            .collect();
        Ok(Some(Wallet {
            chain_id,
            address,
            lending_summary: Some(lending_summary),
            first_activity_at,
            last_activity_at,
            alone: true,
        }))
    }

    /// The credit score of an identity: a set of addresses scored as one wallet (their lending
    /// histories merged), computed on request as of the identity's latest event. No proof of
    /// common ownership is asked yet. At most 50 addresses; `null` when none has history.
    #[graphql(complexity = "crate::cost::QUERY_COST + child_complexity")]
    async fn identity_score(
        &self,
        ctx: &Context<'_>,
        chain_id: i64,
        addresses: Vec<String>,
    ) -> ApiResult<Option<IdentityScore>> {
        if addresses.is_empty() || addresses.len() > 50 {
            return Err(gql(crate::error::ApiError::BadUserInput(format!(
                "an identity is 1 to 50 addresses, got {}",
                addresses.len()
            ))));
        }
        let mut parsed = Vec::with_capacity(addresses.len());
        for a in &addresses {
            parsed.push(parse_address(a).map_err(gql)?);
        }
        parsed.sort();
        parsed.dedup();
        let pool = ctx.data_unchecked::<PgPool>();
        let rows = chainfold_store::lending::flows_of(pool, chain_id, &parsed)
            .await
            .map_err(gql)?;
        let history: Vec<chainfold_domain::credit::HistoryEvent> = rows
            .into_iter()
            .filter_map(|(action, at, usd)| {
                Some(chainfold_domain::credit::HistoryEvent {
                    action: chainfold_domain::LendingAction::parse(&action)?,
                    at: at?,
                    usd: usd.and_then(|u| u.to_string().parse().ok()),
                })
            })
            .collect();
        let Some(now) = history.iter().map(|e| e.at).max() else {
            return Ok(None);
        };
        let Some(features) = chainfold_domain::credit::activity_features(&history, now) else {
            return Ok(None);
        };
        let score = chainfold_domain::scorecard::score(&features, None);
        Ok(Some(IdentityScore::new(parsed, score, now)))
    }

    /// A pool's swap summary and liquidity; `null` when chainfold has seen neither a swap
    /// through it nor a `Sync` of its reserves.
    #[graphql(complexity = "crate::cost::QUERY_COST + child_complexity")]
    async fn pool(
        &self,
        ctx: &Context<'_>,
        chain_id: i64,
        address: String,
    ) -> ApiResult<Option<Pool>> {
        let address = parse_address(&address).map_err(gql)?;
        let latest = ctx
            .data_unchecked::<crate::loaders::Loaders>()
            .latest
            .clone();
        if let Some(latest) = latest {
            // The versioned Redis copy (Postgres on a miss), see `chainfold_store::latest`.
            let key = (chain_id, address);
            let found = latest
                .read(
                    chainfold_store::latest::Kind::Pool,
                    std::slice::from_ref(&key),
                )
                .await
                .map_err(gql)?;
            return match found.get(&key).cloned().flatten() {
                Some(json) => serde_json::from_str::<chainfold_store::pools::PoolSummary>(&json)
                    .map(|r| Some(Pool::from(r)))
                    .map_err(|e| gql(sqlx::Error::Decode(Box::new(e)))),
                None => Ok(None),
            };
        }
        let pool = ctx.data_unchecked::<PgPool>();
        let row = chainfold_store::pools::summary(pool, chain_id, &address)
            .await
            .map_err(gql)?;
        Ok(row.map(Pool::from))
    }
}
