//! Lending decisions: a policy (a versioned config file) turns a score, the probability of
//! liquidation, the requested amount and the collateral's volatility into APPROVE, REJECT or
//! ADJUST_COLLATERAL with the collateral ratio required. Pure; every decision carries its inputs
//! and the policy version.
//!
//! Money is exact: amounts are decimals (strings on the wire and in GraphQL, `NUMERIC` in
//! Postgres). The collateral ratio is a whole number of basis points, rounded up from the
//! policy's LTV (model and volatility maths are `f64`; the ratio they give is fixed to basis
//! points once), so the required collateral is the amount times that ratio exactly, and the
//! terms `chainfold actuate` writes on chain are the same numbers.

use std::str::FromStr as _;

use bigdecimal::{BigDecimal, RoundingMode};
use serde::{Deserialize, Serialize};

use crate::scorecard::Band;

/// The policy shipped in `scoring/policy.toml`, built in: what `serve` and `score` decide with
/// unless `--policy` names another file.
pub const SHIPPED_POLICY: &str = include_str!("../../scoring/policy.toml");

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
    pub amount_usd: BigDecimal,
    /// USD of collateral the borrower offers; `None` = not stated.
    pub collateral_usd: Option<BigDecimal>,
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
    /// Collateral USD required per USD lent (1 / effective LTV, rounded up to a basis point);
    /// `None` on REJECT.
    pub required_collateral_ratio: Option<BigDecimal>,
    /// `amount_usd` × the ratio, exactly.
    pub required_collateral_usd: Option<BigDecimal>,
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
        if request.amount_usd.sign() != bigdecimal::num_bigint::Sign::Plus {
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
        let ratio = ratio_of(ltv);
        let required = plain(&(&request.amount_usd * &ratio));
        let usd = |v: &BigDecimal| v.with_scale_round(2, RoundingMode::HalfUp);
        let (outcome, reason) = match &request.collateral_usd {
            Some(offered) if *offered >= required => (
                Outcome::Approve,
                format!(
                    "collateral ${} covers the required ${} (LTV {ltv:.2})",
                    usd(offered),
                    usd(&required)
                ),
            ),
            Some(offered) => (
                Outcome::AdjustCollateral,
                format!(
                    "collateral ${} is below the required ${} (LTV {ltv:.2})",
                    usd(offered),
                    usd(&required)
                ),
            ),
            None => (
                Outcome::AdjustCollateral,
                format!("post ${} of collateral (LTV {ltv:.2})", usd(&required)),
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

/// 1 / `ltv` as a decimal of whole basis points, rounded up (never less collateral than the
/// LTV asks; the 1e-9 keeps an exact ratio such as 1/0.8 = 1.25 from rounding up to 1.2501).
pub fn ratio_of(ltv: f64) -> BigDecimal {
    let bps = (10_000.0 / ltv - 1e-9).ceil().max(0.0) as u64;
    plain(&BigDecimal::new(bps.into(), 4))
}

/// `v` without trailing zeros and never in exponent form (`1000`, `1.4286`, `0.5`): how an
/// amount is written on the wire, in ids and in GraphQL.
pub fn plain(v: &BigDecimal) -> BigDecimal {
    let n = v.normalized();
    if n.fractional_digit_count() < 0 {
        n.with_scale(0)
    } else {
        n
    }
}

/// A money amount as a caller writes it: a decimal string (`"1000.25"`), refused when it is not
/// a plain non-negative decimal of at most 30 digits before and 18 after the point.
pub fn parse_usd(text: &str) -> Result<BigDecimal, String> {
    let t = text.trim();
    let plain = !t.is_empty()
        && t.chars().all(|c| c.is_ascii_digit() || c == '.')
        && t.matches('.').count() <= 1;
    let (whole, fraction) = t.split_once('.').unwrap_or((t, ""));
    if !plain || whole.len() > 30 || fraction.len() > 18 || whole.is_empty() {
        // Echo a bounded prefix: the input may be any size.
        let shown: String = text.chars().take(40).collect();
        let more = if text.chars().count() > 40 { "…" } else { "" };
        return Err(format!(
            "{shown:?}{more} is not a decimal amount (digits, at most one point, up to 30 digits before it and 18 after)"
        ));
    }
    BigDecimal::from_str(t).map_err(|e| format!("{text:?}: {e}"))
}

/// Why a decision was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Trigger {
    /// A lender asked (`requestCredit`).
    Request,
    /// The wallet's score crossed into another band: its last request is decided again.
    BandChange,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Request => "REQUEST",
            Trigger::BandChange => "BAND_CHANGE",
        }
    }
}

/// A decision as stored and published on `chainfold.decisions.v1`: who, what was asked, the
/// score it was made from, and the decision with its inputs and policy version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DecisionRecord {
    /// `keccak256` of what makes the decision unique (see [`DecisionRecord::id_of`]), hex.
    pub id: String,
    pub chain_id: u64,
    pub wallet: String,
    /// The collateral asset as requested (a token address or symbol).
    pub collateral_asset: String,
    pub trigger: Trigger,
    /// For a band change: the request decided again.
    pub request_id: Option<String>,
    /// The score the decision used: its triggering event and model.
    pub score_event_id: String,
    pub model_version: String,
    pub decided_at: chrono::DateTime<chrono::Utc>,
    pub decision: Decision,
}

impl DecisionRecord {
    /// A decision's id from the parts that make it unique: a request's (chain, wallet, asset,
    /// amount, a caller-given nonce), or a band change's (request id, score event id), so that a
    /// replayed band change is the same decision.
    pub fn id_of(parts: &[&str]) -> String {
        let mut buf = Vec::new();
        for p in parts {
            buf.extend_from_slice(p.as_bytes());
            buf.push(0);
        }
        format!("{}", alloy_primitives::keccak256(&buf))
    }

    /// What the fixture lending pool's `setCreditLine` takes: the debt value cap in the
    /// aggregators' 8 decimals (0 on REJECT: no borrowing) and the collateral ratio in basis
    /// points, rounded up so the chain never asks less than the decision did.
    pub fn on_chain_terms(&self) -> (u128, u64) {
        match self.decision.outcome {
            Outcome::Reject => (0, 0),
            Outcome::Approve | Outcome::AdjustCollateral => {
                let integer = |v: BigDecimal| -> u128 {
                    v.with_scale_round(0, RoundingMode::HalfUp)
                        .to_string()
                        .parse()
                        .unwrap_or(0)
                };
                let line =
                    integer(&self.decision.request.amount_usd * BigDecimal::from(100_000_000));
                let ratio = self
                    .decision
                    .required_collateral_ratio
                    .as_ref()
                    .map_or(0, |r| integer(r * BigDecimal::from(10_000)) as u64);
                (line, ratio)
            }
        }
    }
}

fn toml_like(text: &str) -> Result<Policy, String> {
    toml::from_str(text).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = SHIPPED_POLICY;

    fn request(score: i32, band: Band, collateral: Option<f64>, vol: Option<f64>) -> Request {
        Request {
            score,
            band,
            probability_of_liquidation: Some(0.05),
            amount_usd: BigDecimal::from(1_000),
            collateral_usd: collateral.map(|c| BigDecimal::try_from(c).expect("finite")),
            collateral_daily_volatility: vol,
        }
    }

    fn dec(text: &str) -> BigDecimal {
        BigDecimal::from_str(text).expect("decimal")
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
        assert_eq!(d.required_collateral_ratio, Some(ratio_of(good)));
        assert_eq!(ratio_of(0.7), dec("1.4286"));
        assert_eq!(ratio_of(0.8), dec("1.25"));
        assert_eq!(d.policy_version, policy.version);
        // Twice as volatile: half the LTV, twice the collateral; 2,000 no longer covers it.
        let d = policy.decide(request(
            700,
            Band::Good,
            Some(2_000.0),
            Some(2.0 * policy.reference_daily_volatility),
        ));
        assert_eq!(d.outcome, Outcome::AdjustCollateral);
        assert_eq!(
            d.required_collateral_usd,
            Some(plain(&(BigDecimal::from(1_000) * ratio_of(good / 2.0))))
        );
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
    fn on_chain_terms_follow_the_outcome() {
        let policy = Policy::parse(POLICY).expect("valid policy");
        let mut record = DecisionRecord {
            id: DecisionRecord::id_of(&["1", "0xabc"]),
            chain_id: 31337,
            wallet: "0xabc".into(),
            collateral_asset: "WETH".into(),
            trigger: Trigger::Request,
            request_id: None,
            score_event_id: "0x01".into(),
            model_version: "position-v1".into(),
            decided_at: chrono::DateTime::from_timestamp(1_700_000_000, 0).expect("time"),
            decision: policy.decide(request(
                700,
                Band::Good,
                None,
                Some(policy.reference_daily_volatility),
            )),
        };
        assert_eq!(record.decision.outcome, Outcome::AdjustCollateral);
        // $1,000 at 8 decimals; 1/0.7 = 142.857…% rounds up to 14,286 bp.
        assert_eq!(record.on_chain_terms(), (100_000_000_000, 14_286));
        record.decision = policy.decide(request(300, Band::VeryPoor, None, None));
        assert_eq!(record.on_chain_terms(), (0, 0));
        // Ids differ by any part and are stable.
        assert_eq!(record.id, DecisionRecord::id_of(&["1", "0xabc"]));
        assert_ne!(record.id, DecisionRecord::id_of(&["1", "0xabd"]));
        assert_ne!(
            DecisionRecord::id_of(&["1a", "b"]),
            DecisionRecord::id_of(&["1", "ab"])
        );
        // The Kafka form round-trips.
        let json = serde_json::to_string(&record).expect("json");
        assert!(json.contains("\"trigger\":\"REQUEST\""), "{json}");
        let back: DecisionRecord = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, record);
        // Records stored before amounts were decimals (JSON numbers) still read.
        let old = json.replace("\"amount_usd\":\"1000\"", "\"amount_usd\":1000.5");
        assert_ne!(old, json);
        let back: DecisionRecord = serde_json::from_str(&old).expect("an older record");
        assert_eq!(back.decision.request.amount_usd, dec("1000.5"));
    }

    #[test]
    fn money_is_exact_from_request_to_chain_terms() {
        let policy = Policy::parse(POLICY).expect("valid policy");
        // An amount no f64 holds: 0.1 + 0.2 cents above a round number, at 18 decimals.
        let mut asked = request(
            700,
            Band::Good,
            None,
            Some(policy.reference_daily_volatility),
        );
        asked.amount_usd = parse_usd("123456789012.300000000000000001").expect("decimal");
        let ratio = ratio_of(0.7);
        asked.collateral_usd = Some(&asked.amount_usd * &ratio);
        let d = policy.decide(asked.clone());
        assert_eq!(
            d.required_collateral_usd,
            Some(dec("176370368782.9717800000000000014286"))
        );
        // Offered exactly what is required: approved; one wei-cent less: adjust.
        assert_eq!(d.outcome, Outcome::Approve, "{}", d.reason);
        asked.collateral_usd = Some(&asked.amount_usd * &ratio - dec("0.000000000000000001"));
        assert_eq!(policy.decide(asked).outcome, Outcome::AdjustCollateral);
        for bad in [
            "-1",
            "1e3",
            "",
            "1.2.3",
            "0x10",
            "1234567890123456789012345678901",
            "1.0000000000000000001",
        ] {
            assert!(parse_usd(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_usd(" 42.50 ").expect("ok"), dec("42.5"));
        let huge = parse_usd(&"9".repeat(1_000_000)).expect_err("too long");
        assert!(
            huge.len() < 200,
            "the error echoes a bounded prefix: {}",
            huge.len()
        );
        for (v, text) in [
            ("1000", "1000"),
            ("1e3", "1000"),
            ("1.4286", "1.4286"),
            ("2.50", "2.5"),
        ] {
            assert_eq!(plain(&dec(v)).to_string(), text);
            assert_eq!(
                serde_json::to_string(&plain(&dec(v))).expect("json"),
                format!("\"{text}\"")
            );
        }
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
