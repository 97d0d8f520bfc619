//! Lending decisions, stored and published: the inputs a policy needs (the wallet's latest
//! score, its collateral in the requested asset, that asset's volatility) read from the read
//! models, and a decided [`DecisionRecord`] written to Postgres (`credit_decision`, idempotent by
//! id), `chainfold.decisions.v1` (keyed by wallet) and Redis pub/sub (`<prefix>decisions`).
//! The API's `requestCredit` and the scorer's band-change pushes both go through here.

use anyhow::Context as _;
use bigdecimal::BigDecimal;
use chainfold_domain::credit::volatility;
use chainfold_domain::decision::{DecisionRecord, Policy, Request, Trigger};
use chainfold_domain::scorecard::Band;
use chrono::{DateTime, Utc};

use sqlx::PgPool;

/// A wallet's latest stored score, as a decision uses it.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreSnapshot {
    pub score: i32,
    pub band: Band,
    pub probability_of_liquidation: Option<f64>,
    pub event_id: String,
    pub model_version: String,
}

/// The latest score of `wallet` (lower-case hex), if it has one.
pub async fn latest_score(
    pool: &PgPool,
    chain_id: u64,
    wallet: &str,
) -> anyhow::Result<Option<ScoreSnapshot>> {
    let row = sqlx::query!(
        "SELECT score, band, probability_of_liquidation, event_id, model_version
         FROM credit_score WHERE chain_id = $1 AND wallet = $2 ORDER BY id DESC LIMIT 1",
        chain_id as i64,
        wallet
    )
    .fetch_optional(pool)
    .await?;
    row.map(|r| {
        Ok(ScoreSnapshot {
            score: r.score,
            band: serde_json::from_value(serde_json::Value::String(r.band))
                .context("unknown band stored")?,
            probability_of_liquidation: r.probability_of_liquidation,
            event_id: r.event_id,
            model_version: r.model_version,
        })
    })
    .transpose()
}

/// What the wallet holds of `asset` (a reserve address or a symbol) and how volatile it is.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CollateralInputs {
    /// USD value of the wallet's collateral in the asset, exact (base units × price ÷
    /// 10^decimals); `None` when it is unpriced.
    pub collateral_usd: Option<BigDecimal>,
    /// Daily volatility of the asset's USD price from the last 30 days of daily closes (oracle
    /// rounds, else recorded event prices); `None` with fewer than three days.
    pub daily_volatility: Option<f64>,
    /// Whether the chain knows the asset at all (as a reserve or an oracle's asset).
    pub known: bool,
}

/// Reads [`CollateralInputs`] as of now from the read models.
pub async fn collateral_inputs(
    pool: &PgPool,
    chain_id: u64,
    wallet: &str,
    asset: &str,
) -> anyhow::Result<CollateralInputs> {
    // The asset's reserve address(es): by address, or by symbol.
    let reserves: Vec<String> = sqlx::query_scalar!(
        r#"SELECT DISTINCT reserve AS "reserve!" FROM lending_event
           WHERE chain_id = $1 AND (reserve = lower($2) OR upper(symbol) = upper($2))
           UNION
           SELECT DISTINCT asset FROM oracle_update
           WHERE chain_id = $1 AND asset IS NOT NULL AND asset = lower($2)"#,
        chain_id as i64,
        asset
    )
    .fetch_all(pool)
    .await?;
    if reserves.is_empty() {
        return Ok(CollateralInputs::default());
    }
    // Base units, decimals and price per position; the USD value is computed here, exactly
    // (a NUMERIC division in SQL would round to its own scale).
    let held: Vec<(BigDecimal, i16, Option<BigDecimal>)> = sqlx::query!(
        r#"SELECT p.collateral AS "collateral!", p.decimals::int2 AS "decimals!",
                  coalesce(o.price, (SELECT e.price_usd FROM lending_event e
                                     WHERE e.chain_id = p.chain_id AND e.reserve = p.reserve
                                       AND e.price_usd IS NOT NULL
                                     ORDER BY e.block_time DESC NULLS LAST LIMIT 1)) AS "price?"
           FROM lending_position p
           LEFT JOIN oracle_price o ON o.chain_id = p.chain_id AND o.asset = p.reserve
           WHERE p.chain_id = $1 AND p.wallet = $2 AND p.reserve = ANY($3) AND p.collateral > 0"#,
        chain_id as i64,
        wallet,
        &reserves
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|r| (r.collateral, r.decimals, r.price))
    .collect();
    // Unpriced when any held position has no price (as the SQL sum was NULL then).
    let collateral: Option<BigDecimal> =
        held.iter()
            .try_fold(BigDecimal::from(0), |sum, (units, decimals, price)| {
                let price = price.as_ref()?;
                Some(sum + units * price * BigDecimal::new(1.into(), i64::from(*decimals)))
            });
    let collateral = if held.is_empty() {
        None
    } else {
        collateral.map(|c| chainfold_domain::decision::plain(&c))
    };
    let points = price_points(pool, chain_id, &reserves, None).await?;
    let mut closes = std::collections::BTreeMap::new();
    if let Some(last) = points.last().map(|p| p.0) {
        for (t, p) in points
            .iter()
            .filter(|(t, _)| *t > last - chrono::Duration::days(30))
        {
            closes.insert(t.timestamp().div_euclid(86_400), *p);
        }
    }
    let closes: Vec<f64> = closes.into_values().collect();
    Ok(CollateralInputs {
        collateral_usd: collateral.or(Some(BigDecimal::from(0))),
        daily_volatility: (closes.len() >= 3).then(|| volatility(&closes)).flatten(),
        known: true,
    })
}

/// USD prices of the reserves (oracle rounds where the chain has oracles, else the prices
/// recorded with lending events), oldest first, up to `until` when given.
pub async fn price_points(
    pool: &PgPool,
    chain_id: u64,
    reserves: &[String],
    until: Option<DateTime<Utc>>,
) -> anyhow::Result<Vec<(DateTime<Utc>, f64)>> {
    let oracle: Vec<(DateTime<Utc>, f64)> = sqlx::query!(
        r#"SELECT coalesce(updated_at, block_time) AS "at!", price::float8 AS "price!"
           FROM oracle_update
           WHERE chain_id = $1 AND asset = ANY($2) AND coalesce(updated_at, block_time) IS NOT NULL
             AND ($3::timestamptz IS NULL OR coalesce(updated_at, block_time) <= $3)
           ORDER BY block_number, log_index"#,
        chain_id as i64,
        reserves,
        until
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|r| (r.at, r.price))
    .collect();
    if !oracle.is_empty() {
        return Ok(oracle);
    }
    Ok(sqlx::query!(
        r#"SELECT block_time AS "at!", price_usd::float8 AS "price!" FROM lending_event
           WHERE chain_id = $1 AND reserve = ANY($2) AND price_usd IS NOT NULL
             AND block_time IS NOT NULL AND ($3::timestamptz IS NULL OR block_time <= $3)
           ORDER BY block_time"#,
        chain_id as i64,
        reserves,
        until
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|r| (r.at, r.price))
    .collect())
}

/// A lender's request, as `requestCredit` takes it.
#[derive(Debug, Clone, PartialEq)]
pub struct CreditRequest<'a> {
    pub chain_id: u64,
    /// Lower-case hex.
    pub wallet: &'a str,
    pub amount_usd: BigDecimal,
    /// A reserve address or symbol.
    pub collateral_asset: &'a str,
    /// Overrides what the chain says the wallet holds (a lender may state collateral to come).
    pub collateral_usd: Option<BigDecimal>,
    /// Makes two identical requests two decisions.
    pub nonce: &'a str,
}

/// Decides a request against the wallet's latest score with `policy`. The inner error is the
/// caller's mistake (no score, unknown asset), for the API to return as such.
pub async fn decide_request(
    pool: &PgPool,
    policy: &Policy,
    req: &CreditRequest<'_>,
) -> anyhow::Result<Result<DecisionRecord, String>> {
    let CreditRequest {
        chain_id,
        wallet,
        ref amount_usd,
        collateral_asset,
        ref collateral_usd,
        nonce,
    } = *req;
    let Some(score) = latest_score(pool, chain_id, wallet).await? else {
        return Ok(Err(format!(
            "wallet {wallet} has no credit score on chain {chain_id}: it has no lending history chainfold has seen"
        )));
    };
    let inputs = collateral_inputs(pool, chain_id, wallet, collateral_asset).await?;
    if !inputs.known {
        return Ok(Err(format!(
            "collateral asset {collateral_asset:?} is not a reserve or oracle asset on chain {chain_id}"
        )));
    }
    let request = Request {
        score: score.score,
        band: score.band,
        probability_of_liquidation: score.probability_of_liquidation,
        amount_usd: amount_usd.clone(),
        collateral_usd: collateral_usd.clone().or(inputs.collateral_usd),
        collateral_daily_volatility: inputs.daily_volatility,
    };
    let amount = chainfold_domain::decision::plain(amount_usd).to_string();
    let chain = chain_id.to_string();
    Ok(Ok(DecisionRecord {
        id: DecisionRecord::id_of(&["request", &chain, wallet, collateral_asset, &amount, nonce]),
        chain_id,
        wallet: wallet.to_owned(),
        collateral_asset: collateral_asset.to_owned(),
        trigger: Trigger::Request,
        request_id: None,
        score_event_id: score.event_id,
        model_version: score.model_version,
        decided_at: Utc::now(),
        decision: policy.decide(request),
    }))
}

/// Each wallet's latest requested decision (what a band change decides again).
pub async fn latest_requests(
    pool: &PgPool,
    chain_id: u64,
    wallets: &[String],
) -> anyhow::Result<Vec<DecisionRecord>> {
    let rows = sqlx::query_scalar!(
        "SELECT DISTINCT ON (wallet) record FROM credit_decision
         WHERE chain_id = $1 AND wallet = ANY($2) AND trigger = 'REQUEST'
         ORDER BY wallet, seq DESC",
        chain_id as i64,
        wallets
    )
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|v| serde_json::from_value(v).context("stored decision record"))
        .collect()
}

/// The band-change decision for `request` given the wallet's new score.
pub async fn decide_band_change(
    pool: &PgPool,
    policy: &Policy,
    request: &DecisionRecord,
    score: &ScoreSnapshot,
    at: DateTime<Utc>,
) -> anyhow::Result<DecisionRecord> {
    let inputs = collateral_inputs(
        pool,
        request.chain_id,
        &request.wallet,
        &request.collateral_asset,
    )
    .await?;
    let asked = &request.decision.request;
    let decision = policy.decide(Request {
        score: score.score,
        band: score.band,
        probability_of_liquidation: score.probability_of_liquidation,
        amount_usd: asked.amount_usd.clone(),
        collateral_usd: inputs.collateral_usd.or(asked.collateral_usd.clone()),
        collateral_daily_volatility: inputs.daily_volatility,
    });
    Ok(DecisionRecord {
        id: DecisionRecord::id_of(&["band", &request.id, &score.event_id]),
        chain_id: request.chain_id,
        wallet: request.wallet.clone(),
        collateral_asset: request.collateral_asset.clone(),
        trigger: Trigger::BandChange,
        request_id: Some(request.id.clone()),
        score_event_id: score.event_id.clone(),
        model_version: score.model_version.clone(),
        decided_at: at,
        decision,
    })
}

/// Stores `record` (nothing if its id is stored already); `true` when it is new.
pub async fn store<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    record: &DecisionRecord,
) -> anyhow::Result<bool> {
    let d = &record.decision;
    let r = &d.request;
    let enum_text = |v: serde_json::Value| v.as_str().unwrap_or_default().to_owned();
    let inserted = sqlx::query!(
        "INSERT INTO credit_decision (id, chain_id, wallet, trigger, request_id, outcome, amount_usd,
            collateral_asset, collateral_usd, collateral_daily_volatility, required_collateral_ratio,
            required_collateral_usd, score, band, probability_of_liquidation, reason, policy_version,
            model_version, score_event_id, record, decided_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18,
                 $19, $20, $21)
         ON CONFLICT (id) DO NOTHING",
        record.id,
        record.chain_id as i64,
        record.wallet,
        record.trigger.as_str(),
        record.request_id,
        enum_text(serde_json::to_value(d.outcome)?),
        r.amount_usd,
        record.collateral_asset,
        r.collateral_usd,
        r.collateral_daily_volatility,
        d.required_collateral_ratio,
        d.required_collateral_usd,
        r.score,
        enum_text(serde_json::to_value(r.band)?),
        r.probability_of_liquidation,
        d.reason,
        d.policy_version,
        record.model_version,
        record.score_event_id,
        serde_json::to_value(record)?,
        record.decided_at
    )
    .execute(executor)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// A stored decision as an outbox record for `chainfold.decisions.v1` (keyed by wallet, its
/// id as the output id): queued in the decision's transaction, relayed after the commit.
pub fn output(
    topic: &str,
    record: &DecisionRecord,
) -> anyhow::Result<chainfold_platform::outbox::Output> {
    Ok(chainfold_platform::outbox::Output {
        topic: topic.to_owned(),
        key: record.wallet.clone(),
        output_id: record.id.clone(),
        payload: serde_json::to_value(record)?.into(),
    })
}

/// Stores `record` and queues its outbox record in one transaction; `true` when it is new
/// (a decision already stored is neither stored nor queued again).
pub async fn store_with_output(
    pool: &PgPool,
    topic: &str,
    record: &DecisionRecord,
) -> anyhow::Result<bool> {
    let mut tx = pool.begin().await?;
    let new = store(&mut *tx, record).await?;
    if new {
        chainfold_platform::outbox::enqueue(&mut tx, &[output(topic, record)?]).await?;
    }
    tx.commit().await?;
    Ok(new)
}

/// Where the actuator applied a decision: its transaction hash and block (both `None` until it
/// has).
pub async fn applied_in(pool: &PgPool, id: &str) -> sqlx::Result<(Option<String>, Option<i64>)> {
    let r = sqlx::query!(
        "SELECT tx_hash, tx_block FROM credit_decision WHERE id = $1",
        id
    )
    .fetch_one(pool)
    .await?;
    Ok((r.tx_hash, r.tx_block))
}

/// Announces a committed decision on Redis `<prefix>decisions` (best effort: Postgres and the
/// Kafka topic hold it either way).
pub async fn announce(
    redis: &mut redis::aio::ConnectionManager,
    prefix: &str,
    record: &DecisionRecord,
) {
    let Ok(payload) = serde_json::to_string(record) else {
        return;
    };
    let sent: redis::RedisResult<i64> = redis::cmd("PUBLISH")
        .arg(format!("{prefix}decisions"))
        .arg(&payload)
        .query_async(redis)
        .await;
    if let Err(err) = sent {
        tracing::warn!(%err, "could not publish a decision on Redis");
    }
}

/// The policy at `path`, or the built-in shipped policy without one.
pub fn policy_or_shipped(path: Option<&std::path::Path>) -> anyhow::Result<Policy> {
    match path {
        Some(path) => load_policy(path),
        None => Policy::parse(chainfold_domain::decision::SHIPPED_POLICY)
            .map_err(|e| anyhow::anyhow!("the built-in policy: {e}")),
    }
}

/// Reads and checks a policy file.
pub fn load_policy(path: &std::path::Path) -> anyhow::Result<Policy> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("could not read decision policy {}", path.display()))?;
    Policy::parse(&text).map_err(|e| anyhow::anyhow!("decision policy {}: {e}", path.display()))
}

/// A stored decision with where the actuator applied it (or why it could not).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredDecision {
    pub record: serde_json::Value,
    pub tx_hash: Option<String>,
    pub tx_block: Option<i64>,
    pub actuation_error: Option<String>,
}

/// The wallet's decisions, newest first, at most `limit`.
pub async fn of_wallet(
    pool: &PgPool,
    chain_id: i64,
    wallet: &str,
    limit: i64,
) -> sqlx::Result<Vec<StoredDecision>> {
    sqlx::query_as!(
        StoredDecision,
        "SELECT record, tx_hash, tx_block, actuation_error FROM credit_decision
         WHERE chain_id = $1 AND wallet = $2 ORDER BY seq DESC LIMIT $3",
        chain_id,
        wallet,
        limit
    )
    .fetch_all(pool)
    .await
}

/// Whether decision `id` is stored (`None`: not in this database) and the transaction that
/// applied it, if one has.
pub async fn applied_tx(pool: &PgPool, id: &str) -> sqlx::Result<Option<Option<String>>> {
    sqlx::query_scalar!("SELECT tx_hash FROM credit_decision WHERE id = $1", id)
        .fetch_optional(pool)
        .await
}

/// Records that decision `id` was applied in transaction `tx_hash` (at `tx_block`).
pub async fn mark_applied(
    pool: &PgPool,
    id: &str,
    tx_hash: &str,
    tx_block: Option<i64>,
) -> sqlx::Result<()> {
    sqlx::query!(
        "UPDATE credit_decision SET tx_hash = $2, tx_block = $3, actuated_at = now(),
                actuation_error = NULL
         WHERE id = $1",
        id,
        tx_hash,
        tx_block
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Records why decision `id` could not be applied.
pub async fn mark_failed(pool: &PgPool, id: &str, error: &str) -> sqlx::Result<()> {
    sqlx::query!(
        "UPDATE credit_decision SET actuation_error = $2 WHERE id = $1",
        id,
        error
    )
    .execute(pool)
    .await?;
    Ok(())
}
