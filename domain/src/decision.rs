//! Lending decisions: a policy (a versioned config file) turns a score, the probability of
//! liquidation, the requested amount and the collateral's volatility into APPROVE, REJECT or
//! ADJUST_COLLATERAL with the collateral ratio required. Pure; every decision carries its inputs
//! and the policy version.

use serde::{Deserialize, Serialize};

use crate::scorecard::Band;

/// The policy, as written in its TOML file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    pub version: String,
    /// Below this score: REJECT.
    pub min_score: i32,
    /// Above this probability of liquidation within 30 days: REJECT.
    pub max_probability_of_liquidation: f64,
    /// Daily volatility of the collateral at which the tiers' LTVs apply as written; a more
    /// volatile collateral gets proportionally less (a less volatile one never more).
    pub reference_daily_volatility: f64,
    /// Daily volatility assumed when the collateral's is unknown.
    pub unknown_daily_volatility: f64,
    #[serde(rename = "tier")]
    pub tiers: Vec<Tier>,
}

/// Largest loan-to-value per band.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tier {
    pub band: Band,
    pub max_ltv: f64,
}

/// What a decision was made from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub score: i32,
    pub band: Band,
    pub probability_of_liquidation: Option<f64>,
    pub amount_usd: f64,
    /// USD of collateral the borrower offers; `None` = not stated.
    pub collateral_usd: Option<f64>,
    pub collateral_daily_volatility: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Outcome {
    Approve,
    Reject,
    AdjustCollateral,
}

/// A decision with everything needed to audit it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub outcome: Outcome,
    /// Collateral USD required per USD lent (1 / effective LTV); `None` on REJECT.
    pub required_collateral_ratio: Option<f64>,
    pub required_collateral_usd: Option<f64>,
    pub reason: String,
    pub policy_version: String,
    pub request: Request,
}

impl Policy {
    /// Parses and checks a policy file's text.
    pub fn parse(text: &str) -> Result<Policy, String> {
        let policy: Policy = toml_like(text)?;
        if policy.tiers.is_empty() {
            return Err("a policy needs at least one [[tier]]".into());
        }
        for tier in &policy.tiers {
            if !(tier.max_ltv > 0.0 && tier.max_ltv < 1.0) {
                return Err(format!(
                    "tier {:?}: max_ltv must be in (0, 1), got {}",
                    tier.band, tier.max_ltv
                ));
            }
        }
        if policy.reference_daily_volatility <= 0.0 || policy.unknown_daily_volatility <= 0.0 {
            return Err("volatilities must be positive".into());
        }
        Ok(policy)
    }

    /// Decides a request.
    pub fn decide(&self, request: Request) -> Decision {
        let reject = |reason: String| Decision {
            outcome: Outcome::Reject,
            required_collateral_ratio: None,
            required_collateral_usd: None,
            reason,
            policy_version: self.version.clone(),
            request: request.clone(),
        };
        if request.amount_usd <= 0.0 {
            return reject("the requested amount must be positive".into());
        }
        if request.score < self.min_score {
            return reject(format!(
                "score {} is below the policy minimum {}",
                request.score, self.min_score
            ));
        }
        if let Some(p) = request.probability_of_liquidation {
            if p > self.max_probability_of_liquidation {
                return reject(format!(
                    "{:.0}% probability of liquidation exceeds {:.0}%",
                    p * 100.0,
                    self.max_probability_of_liquidation * 100.0
                ));
            }
        }
        let Some(tier) = self.tiers.iter().find(|t| t.band == request.band) else {
            return reject(format!("no tier lends to band {:?}", request.band));
        };
        let volatility = request
            .collateral_daily_volatility
            .unwrap_or(self.unknown_daily_volatility);
        let ltv = tier.max_ltv * (self.reference_daily_volatility / volatility).min(1.0);
        let ratio = 1.0 / ltv;
        let required = request.amount_usd * ratio;
        let (outcome, reason) = match request.collateral_usd {
            Some(offered) if offered >= required => (
                Outcome::Approve,
                format!(
                    "collateral ${offered:.2} covers the required ${required:.2} (LTV {ltv:.2})"
                ),
            ),
            Some(offered) => (
                Outcome::AdjustCollateral,
                format!(
                    "collateral ${offered:.2} is below the required ${required:.2} (LTV {ltv:.2})"
                ),
            ),
            None => (
                Outcome::AdjustCollateral,
                format!("post ${required:.2} of collateral (LTV {ltv:.2})"),
            ),
        };
        Decision {
            outcome,
            required_collateral_ratio: Some(ratio),
            required_collateral_usd: Some(required),
            reason,
            policy_version: self.version.clone(),
            request,
        }
    }
}

fn toml_like(text: &str) -> Result<Policy, String> {
    toml::from_str(text).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = include_str!("../../scoring/policy.toml");

    fn request(score: i32, band: Band, collateral: Option<f64>, vol: Option<f64>) -> Request {
        Request {
            score,
            band,
            probability_of_liquidation: Some(0.05),
            amount_usd: 1_000.0,
            collateral_usd: collateral,
            collateral_daily_volatility: vol,
        }
    }

    #[test]
    fn the_shipped_policy_parses_and_decides() {
        let policy = Policy::parse(POLICY).expect("valid policy");
        let good = policy
            .tiers
            .iter()
            .find(|t| t.band == Band::Good)
            .expect("good tier")
            .max_ltv;
        // Enough collateral at the reference volatility: approved at the tier's LTV.
        let d = policy.decide(request(
            700,
            Band::Good,
            Some(2_000.0),
            Some(policy.reference_daily_volatility),
        ));
        assert_eq!(d.outcome, Outcome::Approve);
        assert!((d.required_collateral_ratio.expect("ratio") - 1.0 / good).abs() < 1e-12);
        assert_eq!(d.policy_version, policy.version);
        // Twice as volatile: half the LTV, twice the collateral; 2,000 no longer covers it.
        let d = policy.decide(request(
            700,
            Band::Good,
            Some(2_000.0),
            Some(2.0 * policy.reference_daily_volatility),
        ));
        assert_eq!(d.outcome, Outcome::AdjustCollateral);
        assert!((d.required_collateral_usd.expect("usd") - 2_000.0 / good).abs() < 1e-9);
        // Low score, or a likely liquidation: rejected, with the reason.
        let d = policy.decide(request(policy.min_score - 1, Band::Poor, Some(1e9), None));
        assert_eq!(d.outcome, Outcome::Reject);
        assert!(
            d.reason.contains("below the policy minimum"),
            "{}",
            d.reason
        );
        let mut risky = request(800, Band::Excellent, Some(1e9), None);
        risky.probability_of_liquidation = Some(0.99);
        assert_eq!(policy.decide(risky).outcome, Outcome::Reject);
    }

    #[test]
    fn a_broken_policy_is_refused_with_the_reason() {
        let err =
            Policy::parse(&POLICY.replace("max_ltv = 0.7", "max_ltv = 1.7")).expect_err("ltv > 1");
        assert!(err.contains("max_ltv must be in (0, 1)"), "{err}");
        let err = Policy::parse(&format!("{POLICY}\nsurprise = 1\n")).expect_err("unknown key");
        assert!(err.contains("surprise"), "{err}");
    }
}
