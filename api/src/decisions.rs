//! Lending decisions in the API: the `requestCredit` mutation and `Wallet.decisions`.

use async_graphql::{Context, Enum, Object, SimpleObject};
use chainfold_domain::decision::{DecisionRecord, Outcome, Policy, Trigger};
use chrono::{DateTime, Utc};
use rdkafka::producer::FutureProducer;
use sqlx::PgPool;

use crate::error::{gql, ApiError, ApiResult};
use crate::input::{decimal_text, parse_address};
use crate::types::ScoreBand;

/// What `requestCredit` needs besides Postgres: the policy and where decisions are published.
#[derive(Clone)]
pub struct DecisionDesk {
    pub policy: Policy,
    pub producer: FutureProducer,
    /// `<prefix>chainfold.decisions.v1`
    pub topic: String,
    pub redis: Option<(redis::aio::ConnectionManager, String)>,
}

impl std::fmt::Debug for DecisionDesk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecisionDesk")
            .field("policy", &self.policy.version)
            .field("topic", &self.topic)
            .finish()
    }
}

/// APPROVE, REJECT or ADJUST_COLLATERAL.
#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
pub enum DecisionOutcome {
    Approve,
    Reject,
    AdjustCollateral,
}

/// Why a decision was made.
#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
pub enum DecisionTrigger {
    /// A lender asked (`requestCredit`).
    Request,
    /// The wallet's score crossed into another band: its last request decided again.
    BandChange,
}

/// A lending decision with every input the policy saw.
#[derive(SimpleObject, Debug, Clone)]
pub struct CreditDecision {
    pub id: String,
    pub chain_id: i64,
    pub wallet: String,
    pub trigger: DecisionTrigger,
    /// For a band change: the request decided again.
    pub request_id: Option<String>,
    pub outcome: DecisionOutcome,
    /// Collateral USD required per USD lent, a decimal string of whole basis points (1 / the
    /// effective LTV, rounded up); null on REJECT.
    pub required_collateral_ratio: Option<String>,
    /// `amountUsd` × `requiredCollateralRatio`, exact (decimal string); null on REJECT.
    pub required_collateral_usd: Option<String>,
    pub reason: String,
    pub policy_version: String,
    /// The amount asked, exact (decimal string).
    pub amount_usd: String,
    pub collateral_asset: String,
    /// The wallet's collateral in the asset (USD, exact decimal string: base units × oracle
    /// price) the policy saw; null when unpriced.
    pub collateral_usd: Option<String>,
    pub collateral_daily_volatility: Option<f64>,
    pub score: i32,
    pub band: ScoreBand,
    pub probability_of_default: Option<f64>,
    pub model_version: String,
    /// The event of the score the decision used.
    pub score_event_id: String,
    pub decided_at: DateTime<Utc>,
    /// Set once `chainfold actuate` has applied the decision on-chain.
    pub tx_hash: Option<String>,
    pub tx_block: Option<i64>,
    pub actuation_error: Option<String>,
}

impl CreditDecision {
    pub fn new(
        r: DecisionRecord,
        tx_hash: Option<String>,
        tx_block: Option<i64>,
        actuation_error: Option<String>,
    ) -> Self {
        use chainfold_domain::scorecard::Band;
        let d = r.decision;
        CreditDecision {
            id: r.id,
            chain_id: r.chain_id as i64,
            wallet: r.wallet,
            trigger: match r.trigger {
                Trigger::Request => DecisionTrigger::Request,
                Trigger::BandChange => DecisionTrigger::BandChange,
            },
            request_id: r.request_id,
            outcome: match d.outcome {
                Outcome::Approve => DecisionOutcome::Approve,
                Outcome::Reject => DecisionOutcome::Reject,
                Outcome::AdjustCollateral => DecisionOutcome::AdjustCollateral,
            },
            required_collateral_ratio: d.required_collateral_ratio.as_ref().map(decimal_text),
            required_collateral_usd: d.required_collateral_usd.as_ref().map(decimal_text),
            reason: d.reason,
            policy_version: d.policy_version,
            amount_usd: decimal_text(&d.request.amount_usd),
            collateral_asset: r.collateral_asset,
            collateral_usd: d.request.collateral_usd.as_ref().map(decimal_text),
            collateral_daily_volatility: d.request.collateral_daily_volatility,
            score: d.request.score,
            band: match d.request.band {
                Band::Excellent => ScoreBand::Excellent,
                Band::Good => ScoreBand::Good,
                Band::Fair => ScoreBand::Fair,
                Band::Poor => ScoreBand::Poor,
                Band::VeryPoor => ScoreBand::VeryPoor,
            },
            probability_of_default: d.request.probability_of_liquidation,
            model_version: r.model_version,
            score_event_id: r.score_event_id,
            decided_at: r.decided_at,
            tx_hash,
            tx_block,
            actuation_error,
        }
    }
}

/// A wallet's decisions, newest first.
pub async fn of_wallet(
    pool: &PgPool,
    chain_id: i64,
    wallet: &str,
    limit: i64,
) -> ApiResult<Vec<CreditDecision>> {
    let rows = chainfold_store::decisions::of_wallet(pool, chain_id, wallet, limit)
        .await
        .map_err(gql)?;
    rows.into_iter()
        .map(|d| {
            let (tx, block, error) = (d.tx_hash, d.tx_block, d.actuation_error);
            let record: DecisionRecord = serde_json::from_value(d.record).map_err(|e| {
                tracing::error!(%e, "stored decision does not parse");
                async_graphql::Error::new("internal error")
            })?;
            Ok(CreditDecision::new(record, tx, block, error))
        })
        .collect()
}

/// Mutation root.
#[derive(Debug, Default)]
pub struct MutationRoot;

#[Object]
impl MutationRoot {
    /// Decides a credit request against the wallet's latest score with the decision policy
    /// (`scoring/policy.toml`): APPROVE, REJECT or ADJUST_COLLATERAL with the collateral ratio
    /// required. `collateralAsset` is a reserve address or symbol; the wallet's collateral in it
    /// is read from its positions unless `collateralUsd` states it. The decision is stored,
    /// published on `chainfold.decisions.v1` (which `chainfold actuate` applies on-chain) and
    /// returned. `amountUsd` and `collateralUsd` are decimal strings (`"1000"`, `"2500.75"`),
    /// kept exact.
    async fn request_credit(
        &self,
        ctx: &Context<'_>,
        chain_id: i64,
        address: String,
        amount_usd: String,
        collateral_asset: String,
        collateral_usd: Option<String>,
    ) -> ApiResult<CreditDecision> {
        use chainfold_domain::decision::parse_usd;
        let wallet = parse_address(&address).map_err(gql)?;
        let bad = |m: String| gql(ApiError::BadUserInput(m));
        let amount_usd = parse_usd(&amount_usd).map_err(|e| bad(format!("amountUsd: {e}")))?;
        let cap = bigdecimal::BigDecimal::from(1_000_000_000_000i64);
        if amount_usd.sign() != bigdecimal::num_bigint::Sign::Plus || amount_usd > cap {
            return Err(bad(format!(
                "amountUsd must be a positive amount up to 1e12, got {amount_usd}"
            )));
        }
        let collateral_usd = collateral_usd
            .as_deref()
            .map(parse_usd)
            .transpose()
            .map_err(|e| bad(format!("collateralUsd: {e}")))?;
        let asset = collateral_asset.trim();
        if asset.is_empty() || asset.len() > 64 {
            return Err(bad("collateralAsset must be a symbol or an address".into()));
        }
        crate::auth::caller(ctx).key_id("requestCredit")?;
        let Some(desk) = ctx.data_opt::<DecisionDesk>() else {
            return Err(bad(
                "this API serves no decisions (no policy configured)".into()
            ));
        };
        let pool = ctx.data_unchecked::<PgPool>();
        let internal = |e: anyhow::Error| {
            tracing::error!(error = %format!("{e:#}"), "requestCredit failed");
            async_graphql::Error::new("internal error")
        };
        let nonce = format!("{}", Utc::now().timestamp_nanos_opt().unwrap_or_default());
        let record = chainfold_store::decisions::decide_request(
            pool,
            &desk.policy,
            &chainfold_store::decisions::CreditRequest {
                chain_id: chain_id as u64,
                wallet: &wallet,
                amount_usd,
                collateral_asset: asset,
                collateral_usd,
                nonce: &nonce,
            },
        )
        .await
        .map_err(internal)?
        .map_err(bad)?;
        // The decision and its Kafka record commit together (outbox); the relay then publishes
        // it, and a crash in between leaves it queued for the next relay, never lost.
        chainfold_store::decisions::store_with_output(pool, &desk.topic, &record)
            .await
            .map_err(internal)?;
        chainfold_platform::outbox::relay(
            pool,
            &desk.producer,
            std::slice::from_ref(&desk.topic),
            500,
        )
        .await
        .map_err(internal)?;
        if let Some((conn, prefix)) = desk.redis.clone().as_mut() {
            chainfold_store::decisions::announce(conn, prefix, &record).await;
        }
        Ok(CreditDecision::new(record, None, None, None))
    }
}
