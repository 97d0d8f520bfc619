//! Risk in the API: `alerts` (what `chainfold risk` detected) and `stress` (the latest stress
//! run of a chain).

use async_graphql::{Context, Enum, Json, Object, SimpleObject};
use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::error::{gql, ApiResult};
use crate::input::{decimal_text, page_size};

// One variant per `chainfold_domain::risk::AlertKind`.
/// What an alert is about.
#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
#[graphql(remote = "chainfold_domain::risk::AlertKind")]
pub enum AlertKind {
    Sandwich,
    FlashLoanAttack,
    LiquidityDrain,
    PoolAnomaly,
    LiquidityShortage,
}

impl AlertKind {
    /// The name stored in `risk_alert.kind`.
    pub(crate) fn stored(self) -> &'static str {
        chainfold_domain::risk::AlertKind::from(self).as_str()
    }

    /// A stored kind (the table's CHECK admits only the five).
    fn of(stored: &str) -> AlertKind {
        stored
            .parse::<chainfold_domain::risk::AlertKind>()
            .map_or(AlertKind::LiquidityShortage, AlertKind::from)
    }
}

// One variant per `chainfold_domain::risk::Severity`.
/// How bad.
#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
#[graphql(remote = "chainfold_domain::risk::Severity")]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

/// One detection with its evidence.
#[derive(SimpleObject, Debug, Clone)]
pub struct Alert {
    pub id: String,
    /// The alert's number in the `alerts` feed (`after` resumes from it).
    pub cursor: String,
    pub kind: AlertKind,
    pub severity: Severity,
    pub chain_id: i64,
    pub block_number: i64,
    pub tx_hashes: Vec<String>,
    pub addresses: Vec<String>,
    pub pools: Vec<String>,
    /// The detector's numbers (loan, profit, price moves, reserves, victims …).
    pub evidence: Json<serde_json::Value>,
    pub detector_version: String,
    pub detected_at: DateTime<Utc>,
    /// What the alert is worth in USD where the detector could value it (a drain's lost
    /// reserve at the oracle price).
    pub usd: Option<f64>,
}

/// One shock of the stress grid.
#[derive(SimpleObject, Debug, Clone)]
pub struct StressScenario {
    pub asset: String,
    /// −0.05 … −0.5.
    pub shock: f64,
    /// Other assets moved by their historical beta to `asset`.
    pub correlated: bool,
    pub liquidatable_positions: i32,
    /// Exact USD (a decimal string): close factor × debt of the liquidatable positions.
    pub debt_at_risk_usd: String,
    /// Exact USD (a decimal string): debt no collateral covers after the liquidation bonus.
    pub bad_debt_usd: String,
}

/// A chain's latest stress run.
#[derive(SimpleObject, Debug, Clone)]
pub struct Stress {
    pub computed_at: DateTime<Utc>,
    /// The positions are as of this block.
    pub as_of_block: Option<i64>,
    pub trigger: String,
    pub positions: i32,
    /// Prices used, by symbol.
    pub prices: Json<serde_json::Value>,
    pub scenarios: Vec<StressScenario>,
    /// 24 h bad-debt VaR at 95%, extreme VaR at 99%, liquidations at risk at 95%: Monte Carlo
    /// estimates in USD, decimal strings rounded to cents.
    pub var95_usd: Option<String>,
    pub evar99_usd: Option<String>,
    pub lar95_usd: Option<String>,
    pub elapsed_ms: f64,
}

/// Alerts merged by shared actors or transactions (`chainfold risk`).
#[derive(SimpleObject, Debug, Clone)]
pub struct Incident {
    /// Its earliest alert's id.
    pub id: String,
    pub alert_ids: Vec<String>,
    pub chain_ids: Vec<i64>,
    /// `preparation`, `exploitation` (Forta's attack stages the members show).
    pub stages: Vec<String>,
    pub severity: Severity,
    pub first_at: DateTime<Utc>,
    pub last_at: DateTime<Utc>,
}

/// Risk queries.
#[derive(Debug, Default)]
pub struct RiskQuery;

pub(crate) use chainfold_store::feeds::{AlertRow, ALERT_COLUMNS};

#[Object]
impl RiskQuery {
    /// Incidents that involve a chain, latest first (at most 200).
    #[graphql(complexity = "crate::cost::QUERY_COST + child_complexity")]
    async fn incidents(
        &self,
        ctx: &Context<'_>,
        chain_id: i64,
        #[graphql(default = 20)] first: i32,
    ) -> ApiResult<Vec<Incident>> {
        let limit = page_size(Some(first.min(200)), 20).map_err(gql)?;
        let pool = ctx.data_unchecked::<PgPool>();
        let rows = chainfold_store::alerts::incidents_of_chain(pool, chain_id, limit)
            .await
            .map_err(gql)?;
        Ok(rows
            .into_iter()
            .map(|r| Incident {
                id: r.id,
                alert_ids: r.alert_ids,
                chain_ids: r.chain_ids,
                stages: r.stages,
                severity: severity_of(&r.severity),
                first_at: r.first_at,
                last_at: r.last_at,
            })
            .collect())
    }

    /// The latest stress run of a chain (`chainfold stress`, or the risk worker after an oracle
    /// move); null when none ran.
    #[graphql(complexity = "crate::cost::QUERY_COST + child_complexity")]
    async fn stress(&self, ctx: &Context<'_>, chain_id: i64) -> ApiResult<Option<Stress>> {
        let pool = ctx.data_unchecked::<PgPool>();
        let Some((run, grid)) = chainfold_store::stress::latest(pool, chain_id)
            .await
            .map_err(gql)?
        else {
            return Ok(None);
        };
        Ok(Some(Stress {
            computed_at: run.computed_at,
            as_of_block: run.as_of_block,
            trigger: run.trigger,
            positions: run.positions,
            prices: Json(run.prices),
            scenarios: grid
                .into_iter()
                .map(|s| StressScenario {
                    asset: s.asset,
                    shock: s.shock,
                    correlated: s.correlated,
                    liquidatable_positions: s.liquidatable,
                    debt_at_risk_usd: decimal_text(&s.debt_at_risk_usd),
                    bad_debt_usd: decimal_text(&s.bad_debt_usd),
                })
                .collect(),
            var95_usd: run.var95_usd.as_ref().map(decimal_text),
            evar99_usd: run.evar99_usd.as_ref().map(decimal_text),
            lar95_usd: run.lar95_usd.as_ref().map(decimal_text),
            elapsed_ms: run.elapsed_ms,
        }))
    }
}

/// An alert from its stored row.
pub(crate) fn alert_of(r: AlertRow) -> Alert {
    Alert {
        cursor: r.0.to_string(),
        id: r.1,
        kind: AlertKind::of(&r.2),
        severity: severity_of(&r.3),
        chain_id: r.4,
        block_number: r.5,
        tx_hashes: r.6,
        addresses: r.7,
        pools: r.8,
        evidence: Json(r.9),
        detector_version: r.10,
        detected_at: r.11,
        usd: r.12,
    }
}

impl Severity {
    /// The stored severities at or above this one.
    pub(crate) fn and_above(self) -> Vec<String> {
        let least = chainfold_domain::risk::Severity::from(self);
        chainfold_domain::risk::Severity::ALL
            .into_iter()
            .filter(|s| *s >= least)
            .map(|s| s.as_str().to_owned())
            .collect()
    }
}

/// A stored severity (the table's CHECK admits only the four).
pub(crate) fn severity_of(stored: &str) -> Severity {
    stored
        .parse::<chainfold_domain::risk::Severity>()
        .map_or(Severity::Low, Severity::from)
}
