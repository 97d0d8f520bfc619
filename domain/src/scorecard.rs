//! The wallet credit score: a points scorecard over the position model's probability of
//! liquidation and the wallet's behaviour, so that every score decomposes into signed reasons.
//!
//! score = clamp(600 + Σ impact, 300, 850), each impact documented below; bands as consumer
//! credit scores use them (Excellent ≥ 750, Good ≥ 670, Fair ≥ 580, Poor ≥ 500, Very poor).

use serde::{Deserialize, Serialize};

use crate::credit::{ActivityFeatures, Attestation};
use crate::envelope::LendingAction;

pub const BASE: f64 = 600.0;
pub const MIN_SCORE: i32 = 300;
pub const MAX_SCORE: i32 = 850;

/// Score bands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Band {
    Excellent,
    Good,
    Fair,
    Poor,
    VeryPoor,
}

impl Band {
    /// Every band, best first.
    pub const ALL: [Band; 5] = [
        Band::Excellent,
        Band::Good,
        Band::Fair,
        Band::Poor,
        Band::VeryPoor,
    ];

    pub fn of(score: i32) -> Band {
        match score {
            750.. => Band::Excellent,
            670..=749 => Band::Good,
            580..=669 => Band::Fair,
            500..=579 => Band::Poor,
            _ => Band::VeryPoor,
        }
    }

    /// The band's name as it is serialized and stored (`EXCELLENT` … `VERY_POOR`).
    pub fn name(self) -> &'static str {
        match self {
            Band::Excellent => "EXCELLENT",
            Band::Good => "GOOD",
            Band::Fair => "FAIR",
            Band::Poor => "POOR",
            Band::VeryPoor => "VERY_POOR",
        }
    }

    /// The band a stored name ([`Band::name`]) names.
    pub fn from_name(name: &str) -> Option<Band> {
        Band::ALL.into_iter().find(|b| b.name() == name)
    }
}

/// One reason: a code, what it means for this wallet, and its signed impact in points.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reason {
    pub code: String,
    pub description: String,
    pub impact: f64,
}

/// A computed score with all its reasons (largest |impact| first).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Score {
    pub score: i32,
    pub band: Band,
    /// P(liquidation within 30 days) of the wallet's current position, when it has debt.
    pub probability_of_liquidation: Option<f64>,
    pub reasons: Vec<Reason>,
}

/// Scores a wallet from its activity features and, when it has debt, the position model's
/// probability of liquidation within 30 days.
pub fn score(activity: &ActivityFeatures, probability_of_liquidation: Option<f64>) -> Score {
    score_with(activity, probability_of_liquidation, &[])
}

/// [`score`] with the off-chain attestations valid at the features' time: each adds 50 × its
/// value (in [−1, 1]) as an `ATTESTATION` reason; together at most ±100.
pub fn score_with(
    activity: &ActivityFeatures,
    probability_of_liquidation: Option<f64>,
    attestations: &[&Attestation],
) -> Score {
    let mut reasons = Vec::new();
    let mut budget = 100.0_f64;
    for a in attestations {
        let impact = (50.0 * a.value).clamp(-budget, budget);
        budget -= impact.abs();
        reasons.push(Reason {
            code: "ATTESTATION".into(),
            description: format!("{} from {} ({:+.2})", a.kind, a.issuer, a.value),
            impact,
        });
    }
    // Position: −300 points per unit of probability above 10% (+30 at 0%): the model's view of
    // the next 30 days dominates everything else.
    if let Some(p) = probability_of_liquidation {
        reasons.push(Reason {
            code: "LIQUIDATION_RISK".into(),
            description: format!(
                "{:.0}% probability of liquidation within 30 days",
                p * 100.0
            ),
            impact: -300.0 * (p - 0.1),
        });
    }
    // Liquidation history: −60 per liquidation (at most three count), fading with a one-year
    // time constant since the last one.
    if activity.liquidations > 0 {
        let fade = activity
            .days_since_liquidation
            .map_or(1.0, |d| (-d / 365.0).exp());
        reasons.push(Reason {
            code: "LIQUIDATION_HISTORY".into(),
            description: format!(
                "liquidated {} time(s), last {:.0} days ago (${:.0} of debt covered)",
                activity.liquidations,
                activity.days_since_liquidation.unwrap_or(0.0),
                activity.liquidated_usd
            ),
            impact: -60.0 * activity.liquidations.min(3) as f64 * fade,
        });
    }
    // Repayment: repaid/borrowed ≥ 0.9 → +60, ≥ 0.5 → +20, below → −40.
    if let Some(ratio) = activity.repay_to_borrow {
        let impact = if ratio >= 0.9 {
            60.0
        } else if ratio >= 0.5 {
            20.0
        } else {
            -40.0
        };
        reasons.push(Reason {
            code: "REPAYMENT".into(),
            description: format!("repaid {:.0}% of the USD borrowed", ratio * 100.0),
            impact,
        });
    }
    // History length: +40 per year of activity, at most +80.
    reasons.push(Reason {
        code: "HISTORY_LENGTH".into(),
        description: format!("active for {:.0} days", activity.age_days),
        impact: 40.0 * (activity.age_days / 365.0).min(2.0),
    });
    // Recency: silent for more than 180 days → −20.
    if activity.recency_days > 180.0 {
        reasons.push(Reason {
            code: "INACTIVE".into(),
            description: format!("no activity for {:.0} days", activity.recency_days),
            impact: -20.0,
        });
    }
    // Volume: +10 per decade of USD deposited above $1,000, at most +40.
    let deposited = activity
        .usd
        .get(&LendingAction::Deposit)
        .copied()
        .unwrap_or(0.0);
    if deposited > 1_000.0 {
        reasons.push(Reason {
            code: "DEPOSIT_VOLUME".into(),
            description: format!("${deposited:.0} deposited"),
            impact: (10.0 * (deposited / 1_000.0).log10()).min(40.0),
        });
    }
    reasons.sort_by(|a, b| b.impact.abs().total_cmp(&a.impact.abs()));
    let total: f64 = BASE + reasons.iter().map(|r| r.impact).sum::<f64>();
    let score = (total.round() as i32).clamp(MIN_SCORE, MAX_SCORE);
    Score {
        score,
        band: Band::of(score),
        probability_of_liquidation,
        reasons,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn activity(
        liquidations: u64,
        repay_to_borrow: Option<f64>,
        age_days: f64,
    ) -> ActivityFeatures {
        ActivityFeatures {
            age_days,
            recency_days: 3.0,
            liquidations,
            days_since_liquidation: (liquidations > 0).then_some(30.0),
            liquidated_usd: 1_000.0 * liquidations as f64,
            repay_to_borrow,
            usd: [(LendingAction::Deposit, 100_000.0)].into_iter().collect(),
            ..ActivityFeatures::default()
        }
    }

    #[test]
    fn a_band_s_name_is_its_serialized_name_and_finds_it_again() {
        assert_eq!(Band::ALL.len(), 5);
        for band in Band::ALL {
            assert_eq!(
                serde_json::to_value(band).expect("serializes"),
                serde_json::json!(band.name())
            );
            assert_eq!(Band::from_name(band.name()), Some(band));
        }
        assert_eq!(Band::from_name("good"), None);
        assert_eq!(Band::from_name("VERYPOOR"), None);
    }

    #[test]
    fn the_score_is_the_base_plus_its_reasons_and_bands_follow() {
        let s = score(&activity(0, Some(1.0), 365.0), Some(0.1));
        let sum: f64 = s.reasons.iter().map(|r| r.impact).sum();
        assert_eq!(s.score, (BASE + sum).round() as i32);
        // 600 + 0 (risk at 10%) + 60 (repaid) + 40 (a year) + 20 (100k deposited) = 720.
        assert_eq!(s.score, 720);
        assert_eq!(s.band, Band::Good);
        assert!(s
            .reasons
            .windows(2)
            .all(|w| w[0].impact.abs() >= w[1].impact.abs()));
    }

    #[test]
    fn liquidations_and_risk_lower_the_score_and_name_themselves() {
        let clean = score(&activity(0, Some(1.0), 365.0), None);
        let liquidated = score(&activity(3, Some(1.0), 365.0), None);
        assert!(liquidated.score < clean.score);
        assert_eq!(liquidated.reasons[0].code, "LIQUIDATION_HISTORY");
        assert!(liquidated.reasons[0].impact < 0.0);
        let risky = score(&activity(0, Some(1.0), 365.0), Some(0.9));
        assert_eq!(risky.reasons[0].code, "LIQUIDATION_RISK");
        assert_eq!(risky.reasons[0].impact, -240.0);
        assert_eq!(Band::of(300), Band::VeryPoor);
        assert_eq!(Band::of(850), Band::Excellent);
    }
}
