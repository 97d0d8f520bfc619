//! GraphQL output types over the read models, as plain data (the resolvers of their nested
//! fields are in [`crate::objects`]). Money is a decimal string (`amountUsd`), token amounts are
//! base-unit integer strings: JSON numbers would lose digits.

use async_graphql::{Enum, SimpleObject};
use chrono::{DateTime, Utc};

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

pub(crate) use chainfold_store::scores::ScoreRow;

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
