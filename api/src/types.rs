//! GraphQL output types over the read models. Money is a decimal string (`amountUsd`), token
//! amounts are base-unit integer strings: JSON numbers would lose digits.

use async_graphql::{ComplexObject, Context, Enum, SimpleObject};
use bigdecimal::BigDecimal;
use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::error::{gql, ApiError, ApiResult};

/// Largest page a connection returns.
pub const MAX_FIRST: i32 = 1000;

/// A lending action, as the read models count them.
#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
pub enum LendingAction {
    Deposit,
    Borrow,
    Repay,
    Redeem,
    Liquidation,
}

impl From<chainfold_domain::LendingAction> for LendingAction {
    fn from(action: chainfold_domain::LendingAction) -> Self {
        match action {
            chainfold_domain::LendingAction::Deposit => LendingAction::Deposit,
            chainfold_domain::LendingAction::Borrow => LendingAction::Borrow,
            chainfold_domain::LendingAction::Repay => LendingAction::Repay,
            chainfold_domain::LendingAction::Redeem => LendingAction::Redeem,
            chainfold_domain::LendingAction::Liquidation => LendingAction::Liquidation,
        }
    }
}

impl LendingAction {
    /// From the name stored in `lending_event.action`.
    pub fn from_db(text: &str) -> Option<Self> {
        chainfold_domain::LendingAction::parse(text).map(Self::from)
    }
}

/// Per-action totals of a wallet.
#[derive(SimpleObject, Debug, Clone)]
pub struct LendingSummary {
    pub action: LendingAction,
    /// Number of events.
    pub count: i64,
    /// USD total at event prices, a decimal string.
    pub amount_usd: String,
    /// Events that had a USD price (the rest count but add no USD).
    pub priced_count: i64,
}

/// A wallet's lending history on one chain.
#[derive(SimpleObject, Debug, Clone)]
#[graphql(complex)]
pub struct Wallet {
    pub chain_id: i64,
    /// Lowercase 0x-hex address.
    pub address: String,
    /// Filled when the query already read it (`wallet`); else loaded in batches.
    #[graphql(skip)]
    pub lending_summary: Option<Vec<LendingSummary>>,
    pub first_activity_at: Option<DateTime<Utc>>,
    pub last_activity_at: Option<DateTime<Utc>>,
    /// The only wallet of its query (the root `wallet` field): with Redis reads its score is read
    /// at once rather than through the batching loader, whose wait for more keys (1 ms) would be
    /// all delay (measured: p50 1.75 → 0.82 ms at 8 connections).
    #[graphql(skip)]
    pub alone: bool,
}

/// One lending event.
#[derive(SimpleObject, Debug, Clone)]
pub struct LendingEvent {
    pub event_id: String,
    pub chain_id: i64,
    pub wallet: String,
    pub action: LendingAction,
    pub protocol: String,
    /// Reserve (underlying token) address; for a liquidation, the debt reserve.
    pub reserve: String,
    pub symbol: String,
    /// Raw base units, an integer string.
    pub amount: String,
    /// USD value at the event (for a liquidation, the debt covered), a decimal string.
    pub amount_usd: Option<String>,
    pub block_number: Option<i64>,
    pub block_time: Option<DateTime<Utc>>,
    pub tx_hash: Option<String>,
}

/// Checks `first` against the page bounds.
pub fn page_size(first: Option<i32>, default: i32) -> Result<i64, ApiError> {
    let first = first.unwrap_or(default);
    if !(0..=MAX_FIRST).contains(&first) {
        return Err(ApiError::BadUserInput(format!(
            "first must be between 0 and {MAX_FIRST}, got {first}"
        )));
    }
    Ok(i64::from(first))
}

/// Score bands.
#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
pub enum ScoreBand {
    Excellent,
    Good,
    Fair,
    Poor,
    VeryPoor,
}

/// One signed reason of a score.
#[derive(SimpleObject, Debug, Clone)]
pub struct ScoreReason {
    /// LIQUIDATION_RISK, LIQUIDATION_HISTORY, REPAYMENT, HISTORY_LENGTH, INACTIVE, DEPOSIT_VOLUME.
    pub code: String,
    pub description: String,
    /// Points this reason adds to (or takes from) the base of 600.
    pub impact: f64,
}

/// A wallet's credit score as computed at one of its events (see `scoring/MODEL_CARD.md` and
/// `domain/src/scorecard.rs`).
#[derive(SimpleObject, Debug, Clone)]
pub struct CreditScore {
    /// The score's number in the `scoreUpdated` feed: subscribe with `after` set to it to get
    /// every score stored since (no gap between a query and a subscription).
    pub cursor: String,
    pub chain_id: i64,
    pub wallet: String,
    /// 300–850.
    pub score: i32,
    pub band: ScoreBand,
    /// P(liquidation within 30 days) of the wallet's position (the position model), null when
    /// it has no debt or its position cannot be priced.
    pub probability_of_default: Option<f64>,
    /// The account's health factor at the score's event (collateral × liquidation threshold /
    /// debt at the oracle prices then); null without debt or when a reserve had no price.
    pub health_factor: Option<f64>,
    /// Largest |impact| first.
    pub reasons: Vec<ScoreReason>,
    pub model_version: String,
    pub model_sha256: String,
    /// The triggering event's time: the "now" of the features.
    pub computed_at: Option<DateTime<Utc>>,
    /// Provenance: the event that triggered the score and where it sits in Kafka and on chain.
    pub event_id: String,
    pub kafka_topic: String,
    pub kafka_partition: i32,
    pub kafka_offset: i64,
    pub block_number: Option<i64>,
}

/// A set of addresses scored as one wallet, on request.
#[derive(SimpleObject, Debug, Clone)]
pub struct IdentityScore {
    /// The identity's addresses, lowercase, sorted, without duplicates.
    pub addresses: Vec<String>,
    pub score: i32,
    pub band: ScoreBand,
    pub reasons: Vec<ScoreReason>,
    /// The identity's latest event: the "now" of the features.
    pub computed_at: DateTime<Utc>,
    /// The scorecard that computed it (behaviour only, like the stored scores today).
    pub scorecard_version: String,
}

impl IdentityScore {
    pub fn new(
        addresses: Vec<String>,
        score: chainfold_domain::scorecard::Score,
        at: DateTime<Utc>,
    ) -> Self {
        use chainfold_domain::scorecard::Band;
        IdentityScore {
            addresses,
            score: score.score,
            band: match score.band {
                Band::Excellent => ScoreBand::Excellent,
                Band::Good => ScoreBand::Good,
                Band::Fair => ScoreBand::Fair,
                Band::Poor => ScoreBand::Poor,
                Band::VeryPoor => ScoreBand::VeryPoor,
            },
            reasons: score
                .reasons
                .into_iter()
                .map(|r| ScoreReason {
                    code: r.code,
                    description: r.description,
                    impact: r.impact,
                })
                .collect(),
            computed_at: at,
            scorecard_version: "scorecard-v1".into(),
        }
    }
}

/// A `credit_score` row as the API reads it: from Postgres, or as JSON from its Redis copy
/// (`chainfold_store::latest`, whose `SCORE_COLUMNS` are these).
#[derive(sqlx::FromRow, serde::Deserialize)]
pub(crate) struct ScoreRow {
    pub(crate) id: i64,
    pub(crate) chain_id: i64,
    pub(crate) wallet: String,
    score: i32,
    pub(crate) health_factor: Option<f64>,
    band: String,
    probability_of_liquidation: Option<f64>,
    reasons: serde_json::Value,
    model_version: String,
    model_sha256: String,
    computed_at: Option<DateTime<Utc>>,
    event_id: String,
    kafka_topic: String,
    kafka_partition: i32,
    kafka_offset: i64,
    block_number: Option<i64>,
}

pub(crate) const SCORE_COLUMNS: &str = chainfold_store::latest::SCORE_COLUMNS;

impl From<ScoreRow> for CreditScore {
    fn from(row: ScoreRow) -> Self {
        let band = match row.band.as_str() {
            "EXCELLENT" => ScoreBand::Excellent,
            "GOOD" => ScoreBand::Good,
            "FAIR" => ScoreBand::Fair,
            "POOR" => ScoreBand::Poor,
            _ => ScoreBand::VeryPoor,
        };
        let reasons = row
            .reasons
            .as_array()
            .map(|list| {
                list.iter()
                    .map(|r| ScoreReason {
                        code: r["code"].as_str().unwrap_or_default().to_owned(),
                        description: r["description"].as_str().unwrap_or_default().to_owned(),
                        impact: r["impact"].as_f64().unwrap_or_default(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        CreditScore {
            cursor: row.id.to_string(),
            chain_id: row.chain_id,
            wallet: row.wallet,
            score: row.score,
            band,
            probability_of_default: row.probability_of_liquidation,
            health_factor: row.health_factor,
            reasons,
            model_version: row.model_version,
            model_sha256: row.model_sha256,
            computed_at: row.computed_at,
            event_id: row.event_id,
            kafka_topic: row.kafka_topic,
            kafka_partition: row.kafka_partition,
            kafka_offset: row.kafka_offset,
            block_number: row.block_number,
        }
    }
}

#[ComplexObject]
impl Wallet {
    /// One entry per action the wallet has taken (DEPOSIT BORROW REPAY REDEEM LIQUIDATION).
    #[graphql(complexity = "crate::cost::QUERY_COST + child_complexity")]
    async fn lending_summary(&self, ctx: &Context<'_>) -> ApiResult<Vec<LendingSummary>> {
        if let Some(list) = &self.lending_summary {
            return Ok(list.clone());
        }
        let loader = ctx.data_unchecked::<crate::loaders::Loaders>();
        Ok(loader
            .summaries
            .load_one((self.chain_id, self.address.clone()))
            .await?
            .unwrap_or_default())
    }

    /// The latest credit score (`chainfold score`), or null if the wallet was not scored.
    /// Batched: a page of wallets reads all their scores in one query.
    #[graphql(complexity = "crate::cost::QUERY_COST + child_complexity")]
    async fn credit_score(&self, ctx: &Context<'_>) -> ApiResult<Option<CreditScore>> {
        let loader = ctx.data_unchecked::<crate::loaders::Loaders>();
        let key = (self.chain_id, self.address.clone());
        // From Redis a lone key is one GET; from Postgres, waiting to batch it with concurrent
        // requests' keys is worth the millisecond (measured: 3,369 req/s read at once against
        // 6,654 batched).
        if self.alone && loader.latest.is_some() {
            use async_graphql::dataloader::Loader;
            let mut found = loader
                .scores
                .loader()
                .load(std::slice::from_ref(&key))
                .await?;
            return Ok(found.remove(&key));
        }
        Ok(loader.scores.load_one(key).await?)
    }

    /// Every score the wallet has had, newest first unless ordered otherwise.
    #[graphql(complexity = "crate::cost::connection(first, child_complexity)")]
    #[allow(clippy::too_many_arguments)]
    async fn score_history(
        &self,
        ctx: &Context<'_>,
        #[graphql(name = "where")] filter: Option<crate::collection::Where<CreditScore>>,
        order_by: Option<crate::collection::OrderBy<CreditScore>>,
        order_direction: Option<crate::collection::OrderDirection>,
        first: Option<i32>,
        after: Option<String>,
    ) -> ApiResult<crate::collections::Page<CreditScore>> {
        let from =
            crate::collections::of_wallet("credit_score", self.chain_id, self.address.clone());
        crate::collections::collect(
            ctx,
            crate::collections::Args {
                filter: filter.as_ref(),
                order_by,
                order_direction,
                first,
                after: after.as_deref(),
            },
            &from,
            SCORE_COLUMNS,
            |r: ScoreRow| Some(CreditScore::from(r)),
        )
        .await
    }

    /// The wallet's ERC-20 balances in the watched tokens (`erc20_token` contracts), largest
    /// first: exact base units as folded from every `Transfer` in and out (`erc20_balance`).
    #[graphql(complexity = "crate::cost::QUERY_COST + child_complexity")]
    async fn token_balances(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 20)] first: i32,
    ) -> ApiResult<Vec<TokenBalance>> {
        let limit = page_size(Some(first), 20).map_err(gql)?;
        let pool = ctx.data_unchecked::<PgPool>();
        type Row = (
            String,
            Option<String>,
            Option<String>,
            Option<i16>,
            BigDecimal,
            i64,
        );
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT b.token, t.name, t.symbol, t.decimals, b.balance, b.transfers
             FROM erc20_balance b
             LEFT JOIN erc20_token t USING (chain_id, token)
             WHERE b.chain_id = $1 AND b.holder = $2
             ORDER BY b.balance DESC, b.token LIMIT $3",
        )
        .bind(self.chain_id)
        .bind(&self.address)
        .bind(limit)
        .fetch_all(pool)
        .await
        .map_err(gql)?;
        Ok(rows
            .into_iter()
            .map(
                |(token, name, symbol, decimals, balance, transfers)| TokenBalance {
                    token,
                    name,
                    symbol,
                    decimals: decimals.map(i32::from),
                    balance: balance.to_plain_string(),
                    transfers,
                },
            )
            .collect())
    }

    /// The wallet's lending decisions (requested and band-change), newest first.
    #[graphql(complexity = "crate::cost::QUERY_COST + child_complexity")]
    async fn decisions(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 10)] first: i32,
    ) -> ApiResult<Vec<crate::decisions::CreditDecision>> {
        let limit = page_size(Some(first), 10).map_err(gql)?;
        let pool = ctx.data_unchecked::<PgPool>();
        crate::decisions::of_wallet(pool, self.chain_id, &self.address, limit).await
    }

    /// The wallet's lending events, newest first unless ordered otherwise.
    #[graphql(complexity = "crate::cost::connection(first, child_complexity)")]
    #[allow(clippy::too_many_arguments)]
    async fn events(
        &self,
        ctx: &Context<'_>,
        #[graphql(name = "where")] filter: Option<crate::collection::Where<LendingEvent>>,
        order_by: Option<crate::collection::OrderBy<LendingEvent>>,
        order_direction: Option<crate::collection::OrderDirection>,
        first: Option<i32>,
        after: Option<String>,
    ) -> ApiResult<crate::collections::Page<LendingEvent>> {
        let from =
            crate::collections::of_wallet("lending_event", self.chain_id, self.address.clone());
        crate::collections::collect(
            ctx,
            crate::collections::Args {
                filter: filter.as_ref(),
                order_by,
                order_direction,
                first,
                after: after.as_deref(),
            },
            &from,
            crate::collections::EVENT_COLUMNS,
            crate::collections::event_of,
        )
        .await
    }
}

/// An AMM pool's swap summary.
#[derive(SimpleObject, Debug, Clone)]
#[graphql(complex)]
pub struct Pool {
    pub chain_id: i64,
    /// Lowercase 0x-hex address.
    pub address: String,
    /// `uniswap_v2`, `uniswap_v3`, `balancer_v1`, `curve`, `0x`, `bancor`.
    pub protocol: String,
    /// Successful swaps.
    pub swap_count: i64,
    /// Swaps whose call reverted (recorded, moving no volume).
    pub reverted_count: i64,
    pub first_block: Option<i64>,
    pub last_block: Option<i64>,
    /// The pool's liquidity, computed once per request for the fields that read it.
    #[graphql(skip)]
    pub liquidity_cache: std::sync::Arc<tokio::sync::OnceCell<Option<PoolLiquidity>>>,
}

/// A wallet's balance of one watched ERC-20 token.
#[derive(SimpleObject, Debug, Clone)]
pub struct TokenBalance {
    /// The token contract (lowercase hex).
    pub token: String,
    /// As the token answered `name()`/`symbol()`/`decimals()` (null where it did not).
    pub name: Option<String>,
    pub symbol: Option<String>,
    pub decimals: Option<i32>,
    /// Base units, an integer string (divide by 10^decimals).
    pub balance: String,
    /// Transfers in and out counted into it.
    pub transfers: i64,
}

/// One point of a pool's liquidity forecast.
#[derive(SimpleObject, Debug, Clone)]
pub struct LiquidityForecastPoint {
    /// When: the pool's latest `Sync` plus `hoursAhead`.
    pub at: DateTime<Utc>,
    pub hours_ahead: i32,
    /// Depth within ±2% of the price in token0 base units (both sides at the pool's price),
    /// on the least-squares trend of the last 24 h of `Sync`s; never below 0.
    pub depth: f64,
    /// `depth` at token0's USD price (oracle, else implied by the pool); null when unpriced.
    pub depth_usd: Option<f64>,
    /// Lending utilisation; always null for an AMM pool (lending reserves' utilisation
    /// forecasts are in their `LIQUIDITY_SHORTAGE` alerts).
    pub utilisation: Option<f64>,
}

/// Raw units of one token that flowed into and out of a pool.
#[derive(SimpleObject, Debug, Clone)]
pub struct TokenVolume {
    pub token: String,
    /// Base units sold to the pool, an integer string.
    pub volume_in: String,
    /// Base units bought from the pool, an integer string.
    pub volume_out: String,
    /// `volumeIn - volumeOut`, an integer string (negative when the pool lost the token).
    pub net_flow: String,
}

#[ComplexObject]
impl Pool {
    /// Per-token volumes and net flows of the pool's successful swaps in the `hours` before its
    /// latest timed swap (1 and 24 are the usual windows); empty when its swaps carry no time
    /// (recorded mev-inspect swaps).
    #[graphql(complexity = "crate::cost::QUERY_COST + child_complexity")]
    async fn recent_volumes(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 24)] hours: i32,
    ) -> ApiResult<Vec<TokenVolume>> {
        if !(1..=24 * 365).contains(&hours) {
            return Err(gql(ApiError::BadUserInput(format!(
                "hours must be between 1 and 8760, got {hours}"
            ))));
        }
        let pool = ctx.data_unchecked::<PgPool>();
        let rows: Vec<(String, BigDecimal, BigDecimal)> = sqlx::query_as(
            "WITH latest AS (SELECT max(block_time) AS t FROM swap
                             WHERE chain_id = $1 AND pool = $2 AND NOT reverted),
                  recent AS (SELECT s.* FROM swap s, latest
                             WHERE s.chain_id = $1 AND s.pool = $2 AND NOT s.reverted
                               AND s.block_time > latest.t - make_interval(hours => $3))
             SELECT token, sum(vin), sum(vout) FROM (
                 SELECT token_in AS token, amount_in AS vin, 0::numeric AS vout FROM recent
                 UNION ALL
                 SELECT token_out, 0, amount_out FROM recent) t
             GROUP BY token ORDER BY token",
        )
        .bind(self.chain_id)
        .bind(&self.address)
        .bind(hours)
        .fetch_all(pool)
        .await
        .map_err(gql)?;
        Ok(rows
            .into_iter()
            .map(|(token, vin, vout)| TokenVolume {
                token,
                net_flow: (&vin - &vout).to_plain_string(),
                volume_in: vin.to_plain_string(),
                volume_out: vout.to_plain_string(),
            })
            .collect())
    }

    /// Liquidity, value and anomaly of a constant-product pool from its `Sync` reserves; null
    /// for pools without one (recorded swaps carry no reserves).
    #[graphql(complexity = "crate::cost::QUERY_COST + child_complexity")]
    async fn liquidity(&self, ctx: &Context<'_>) -> ApiResult<Option<PoolLiquidity>> {
        self.liquidity_of(ctx).await
    }

    /// Raw reserves (token0, token1) as of the latest `Sync`; null without one.
    #[graphql(complexity = "crate::cost::QUERY_COST + child_complexity")]
    async fn reserves(&self, ctx: &Context<'_>) -> ApiResult<Option<Vec<String>>> {
        Ok(self.liquidity_of(ctx).await?.map(|l| l.reserves))
    }

    /// token0's USD price implied by the pool (see `liquidity.priceUsd`).
    #[graphql(complexity = "crate::cost::QUERY_COST + child_complexity")]
    async fn price_usd(&self, ctx: &Context<'_>) -> ApiResult<Option<String>> {
        Ok(self.liquidity_of(ctx).await?.and_then(|l| l.price_usd))
    }

    /// USD tradable within ±2% of the price (see `liquidity.depthUsd`).
    #[graphql(complexity = "crate::cost::QUERY_COST + child_complexity")]
    async fn depth_usd(&self, ctx: &Context<'_>) -> ApiResult<Option<String>> {
        Ok(self.liquidity_of(ctx).await?.and_then(|l| l.depth_usd))
    }

    /// Reserves at USD prices (see `liquidity.tvlUsd`).
    #[graphql(complexity = "crate::cost::QUERY_COST + child_complexity")]
    async fn tvl_usd(&self, ctx: &Context<'_>) -> ApiResult<Option<String>> {
        Ok(self.liquidity_of(ctx).await?.and_then(|l| l.tvl_usd))
    }

    /// |robust z| of the latest reserve-ratio change (see `liquidity.anomalyScore`).
    #[graphql(complexity = "crate::cost::QUERY_COST + child_complexity")]
    async fn anomaly_score(&self, ctx: &Context<'_>) -> ApiResult<Option<f64>> {
        Ok(self.liquidity_of(ctx).await?.and_then(|l| l.anomaly_score))
    }

    /// The pool's depth forecast for each of the next `hours` hours (1–48) after its latest
    /// `Sync`, from the trend of the 24 h before it; empty without an hour of timed `Sync`s.
    #[graphql(complexity = "crate::cost::QUERY_COST + child_complexity")]
    async fn liquidity_forecast(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 6)] hours: i32,
    ) -> ApiResult<Vec<LiquidityForecastPoint>> {
        use chainfold_domain::pool::{depth_forecast, depth_token0};
        use chainfold_store::liquidity::pool_history;
        if !(1..=48).contains(&hours) {
            return Err(gql(ApiError::BadUserInput(format!(
                "hours must be between 1 and 48, got {hours}"
            ))));
        }
        let pool = ctx.data_unchecked::<PgPool>();
        let rows = pool_history(pool, self.chain_id, &self.address, 24.0)
            .await
            .map_err(gql)?;
        let Some(last) = rows.last() else {
            return Ok(Vec::new());
        };
        let history: Vec<(f64, f64)> = rows
            .iter()
            .map(|r| (r.hours, depth_token0(r.reserve0, 0.02)))
            .collect();
        // USD per token0 base unit, from the current liquidity's valuation.
        let usd_per_unit = self.liquidity_of(ctx).await?.and_then(|l| {
            let now = depth_token0(last.reserve0, 0.02);
            let usd: f64 = l.depth_usd.as_deref()?.parse().ok()?;
            (now > 0.0).then(|| usd / now)
        });
        let start = DateTime::from_timestamp_micros((last.hours * 3600.0 * 1e6).round() as i64)
            .unwrap_or_default();
        Ok((1..=hours)
            .filter_map(|h| {
                let depth = depth_forecast(&history, f64::from(h))?;
                Some(LiquidityForecastPoint {
                    at: start + chrono::Duration::hours(i64::from(h)),
                    hours_ahead: h,
                    depth,
                    depth_usd: usd_per_unit.map(|u| depth * u),
                    utilisation: None,
                })
            })
            .collect())
    }

    /// The pool's reserves after each of its `Sync`s, newest first unless ordered otherwise;
    /// `block` stops at that block.
    #[graphql(complexity = "crate::cost::connection(first, child_complexity)")]
    #[allow(clippy::too_many_arguments)]
    async fn history(
        &self,
        ctx: &Context<'_>,
        #[graphql(name = "where")] filter: Option<
            crate::collection::Where<crate::collections::PoolSyncPoint>,
        >,
        order_by: Option<crate::collection::OrderBy<crate::collections::PoolSyncPoint>>,
        order_direction: Option<crate::collection::OrderDirection>,
        first: Option<i32>,
        after: Option<String>,
        block: Option<crate::collection::BlockHeight>,
    ) -> ApiResult<crate::collections::Page<crate::collections::PoolSyncPoint>> {
        crate::collections::pool_history(
            ctx,
            self.chain_id,
            self.address.clone(),
            crate::collections::Args {
                filter: filter.as_ref(),
                order_by,
                order_direction,
                first,
                after: after.as_deref(),
            },
            block,
        )
        .await
    }

    /// Per-token volumes of the pool's successful swaps.
    #[graphql(complexity = "crate::cost::QUERY_COST + child_complexity")]
    async fn token_volumes(&self, ctx: &Context<'_>) -> ApiResult<Vec<TokenVolume>> {
        let pool = ctx.data_unchecked::<PgPool>();
        let rows: Vec<(String, BigDecimal, BigDecimal)> = sqlx::query_as(
            "SELECT token, volume_in, volume_out FROM pool_token_volume WHERE chain_id = $1 AND pool = $2 ORDER BY token",
        )
        .bind(self.chain_id)
        .bind(&self.address)
        .fetch_all(pool)
        .await
        .map_err(gql)?;
        Ok(rows
            .into_iter()
            .map(|(token, vin, vout)| TokenVolume {
                token,
                net_flow: (&vin - &vout).to_plain_string(),
                volume_in: vin.to_plain_string(),
                volume_out: vout.to_plain_string(),
            })
            .collect())
    }
}

impl Pool {
    /// The pool's liquidity (computed once per `Pool` value, so the flat fields share it).
    async fn liquidity_of(&self, ctx: &Context<'_>) -> ApiResult<Option<PoolLiquidity>> {
        self.liquidity_cache
            .get_or_try_init(|| self.compute_liquidity(ctx))
            .await
            .cloned()
    }

    async fn compute_liquidity(&self, ctx: &Context<'_>) -> ApiResult<Option<PoolLiquidity>> {
        use chainfold_domain::pool::ratio_anomaly;
        let pool = ctx.data_unchecked::<PgPool>();
        type SyncRow = (String, String, BigDecimal, BigDecimal, Option<i64>);
        let syncs: Vec<SyncRow> = sqlx::query_as(
            "SELECT token0, token1, reserve0, reserve1, block_number FROM pool_sync
             WHERE chain_id = $1 AND pool = $2 ORDER BY block_number DESC, log_index DESC LIMIT 101",
        )
        .bind(self.chain_id)
        .bind(&self.address)
        .fetch_all(pool)
        .await
        .map_err(gql)?;
        let Some((token0, token1, r0, r1, block)) = syncs.first().cloned() else {
            return Ok(None);
        };
        // Decimals from the lending reserves, USD from the oracles.
        let meta = |token: String| async move {
            let decimals: Option<i16> = sqlx::query_scalar(
                "SELECT decimals FROM lending_event WHERE chain_id = $1 AND reserve = $2 LIMIT 1",
            )
            .bind(self.chain_id)
            .bind(&token)
            .fetch_optional(pool)
            .await?;
            let price: Option<BigDecimal> = sqlx::query_scalar(
                "SELECT price FROM oracle_price WHERE chain_id = $1 AND asset = $2",
            )
            .bind(self.chain_id)
            .bind(&token)
            .fetch_optional(pool)
            .await?;
            Ok::<_, sqlx::Error>((decimals, price))
        };
        let (d0, p0) = meta(token0.clone()).await.map_err(gql)?;
        let (d1, p1) = meta(token1.clone()).await.map_err(gql)?;
        let f = |v: &BigDecimal| v.to_string().parse::<f64>().unwrap_or(0.0);
        let ratios: Vec<f64> = syncs
            .iter()
            .rev()
            .map(|s| {
                if f(&s.2) > 0.0 {
                    f(&s.3) / f(&s.2)
                } else {
                    0.0
                }
            })
            .collect();
        let mut out = PoolLiquidity {
            tokens: vec![token0, token1],
            reserves: vec![r0.to_plain_string(), r1.to_plain_string()],
            price_usd: None,
            oracle_deviation: None,
            tvl_usd: None,
            depth_usd: None,
            anomaly_score: ratio_anomaly(&ratios),
            block_number: block,
        };
        if let (Some(d0), Some(d1)) = (d0, d1) {
            // Whole tokens, exactly: base units × 10^-decimals.
            let w0 = &r0 * BigDecimal::new(1.into(), i64::from(d0));
            let w1 = &r1 * BigDecimal::new(1.into(), i64::from(d1));
            if w0.sign() == bigdecimal::num_bigint::Sign::Plus
                && w1.sign() == bigdecimal::num_bigint::Sign::Plus
            {
                let implied0 = p1.as_ref().map(|p| money(&(&w1 / &w0 * p)));
                let price0 = p0.clone().or(implied0.clone());
                let price1 = p1.clone().or(p0.as_ref().map(|p| money(&(&w0 / &w1 * p))));
                out.oracle_deviation = implied0
                    .as_ref()
                    .zip(p0.as_ref())
                    .map(|(i, o)| f(i) / f(o) - 1.0);
                out.price_usd = implied0.as_ref().map(decimal_text);
                if let (Some(a), Some(b)) = (price0, price1) {
                    let tvl = &w0 * &a + &w1 * &b;
                    // ±2% depth is (1/√0.98 − 1) × the value at the price: irrational, so to
                    // 18 decimal places.
                    out.depth_usd = Some(decimal_text(&money(&(&tvl * depth_factor(0.02)))));
                    out.tvl_usd = Some(decimal_text(&tvl));
                }
            }
        }
        Ok(Some(out))
    }
}

/// `v` rounded to 18 decimal places (a quotient, or a square root, has no exact decimal).
fn money(v: &BigDecimal) -> BigDecimal {
    v.with_scale_round(18, bigdecimal::RoundingMode::HalfEven)
}

/// A decimal as GraphQL shows money: no exponent, no trailing zeros.
pub(crate) fn decimal_text(v: &BigDecimal) -> String {
    chainfold_domain::decision::plain(v).to_string()
}

/// 1/√(1 − bound) − 1 to 40 digits: the share of a constant-product pool's value that moves
/// its price by `bound` (`domain::pool::depth_in`, in decimals).
fn depth_factor(bound: f64) -> BigDecimal {
    use std::str::FromStr as _;
    let one = BigDecimal::from(1);
    let keep = BigDecimal::from_str(&format!("{}", 1.0 - bound)).unwrap_or_else(|_| one.clone());
    let root = keep.sqrt().unwrap_or_else(|| one.clone()).with_prec(40);
    (&one / root).with_prec(40) - one
}

/// A constant-product pool's liquidity as of its latest `Sync`, valued through the chain's
/// oracle prices (`domain/src/pool.rs`).
#[derive(SimpleObject, Debug, Clone)]
pub struct PoolLiquidity {
    /// token0, token1 (lowercase hex).
    pub tokens: Vec<String>,
    /// Raw reserves (base units, integer strings), in token order.
    pub reserves: Vec<String>,
    /// token0's USD price implied by the pool (reserve ratio × token1's oracle price), a decimal
    /// string to 18 places; null when token1 has no oracle price or a decimals unknown.
    pub price_usd: Option<String>,
    /// implied / oracle − 1 for token0, where both exist: how far the pool is off the oracle.
    pub oracle_deviation: Option<f64>,
    /// Reserves at USD prices (oracle, else implied by the pool from the other token), a
    /// decimal string: exact reserves × oracle prices (an implied price is to 18 places).
    pub tvl_usd: Option<String>,
    /// USD tradable within ±2% of the current price (both directions, fee ignored), a decimal
    /// string to 18 places.
    pub depth_usd: Option<String>,
    /// |robust z| of the latest reserve-ratio change against the pool's previous 100 changes.
    pub anomaly_score: Option<f64>,
    pub block_number: Option<i64>,
}

#[cfg(test)]
mod money_tests {
    use super::*;

    #[test]
    fn the_depth_factor_is_one_over_the_root_of_the_bound_less_one_to_forty_digits() {
        let k = depth_factor(0.02);
        let f: f64 = k.to_string().parse().expect("f64");
        assert!((f - (1.0 / 0.98f64.sqrt() - 1.0)).abs() < 1e-15, "{k}");
        assert!(k.digits() <= 40, "{k}");
        // money() rounds to 18 places and text() writes no exponent or trailing zeros.
        let v: BigDecimal = "1234.50000000000000000049".parse().expect("decimal");
        assert_eq!(decimal_text(&money(&v)), "1234.5");
        assert_eq!(
            decimal_text(&"1e3".parse::<BigDecimal>().expect("decimal")),
            "1000"
        );
    }
}
