//! The messages of the derived topics, typed: what the scorer publishes on
//! `chainfold.scores.v1` ([`ScoreMessage`]) and the risk worker on `chainfold.risk.v1`
//! ([`Alert`]); `chainfold.decisions.v1` carries [`crate::decision::DecisionRecord`]. Producers
//! build these and consumers parse them, so a field renamed on one side fails to compile on the
//! other.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::risk::{AlertKind, Severity};
use crate::scorecard::{Band, Reason};

/// Where a score came from: the triggering event's position in the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Provenance {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub block_number: Option<i64>,
}

/// One credit score, as published on `chainfold.scores.v1` (keyed by wallet).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScoreMessage {
    pub chain_id: u64,
    pub wallet: String,
    pub score: i32,
    pub band: Band,
    pub probability_of_liquidation: Option<f64>,
    /// Largest |impact| first.
    pub reasons: Vec<Reason>,
    pub model_version: String,
    pub model_sha256: String,
    /// The triggering event's time: what the features saw as "now".
    pub computed_at: DateTime<Utc>,
    pub event_id: String,
    pub provenance: Provenance,
}

/// One alert as stored in `risk_alert` and published on `chainfold.risk.v1` (keyed by chain).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    pub id: String,
    pub kind: AlertKind,
    pub severity: Severity,
    pub chain_id: u64,
    pub block_number: u64,
    pub tx_hashes: Vec<String>,
    pub addresses: Vec<String>,
    pub pools: Vec<String>,
    /// The detector's numbers (loan, profit, price moves, reserves, victims …).
    pub evidence: serde_json::Value,
    pub detector_version: String,
    pub source_published_at: Option<DateTime<Utc>>,
    /// What the alert is worth in USD where it can be valued (a drain's lost reserve).
    pub usd: Option<f64>,
    /// The time of the alert's block (incidents are correlated by it).
    pub block_time: Option<DateTime<Utc>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_score_message_has_the_wire_names_consumers_read_and_parses_back() {
        let message = ScoreMessage {
            chain_id: 137,
            wallet: "0xaa".into(),
            score: 612,
            band: Band::Fair,
            probability_of_liquidation: Some(0.25),
            reasons: vec![Reason {
                code: "LIQUIDATION_HISTORY".into(),
                description: "was liquidated".into(),
                impact: -40.0,
            }],
            model_version: "position-v1".into(),
            model_sha256: "ab".into(),
            computed_at: DateTime::from_timestamp(1_700_000_000, 0).expect("a time"),
            event_id: "0x01".into(),
            provenance: Provenance {
                topic: "chainfold.lending.v1".into(),
                partition: 3,
                offset: 42,
                block_number: Some(9),
            },
        };
        let json = serde_json::to_value(&message).expect("serialises");
        assert_eq!(json["chainId"], 137);
        assert_eq!(json["band"], "FAIR");
        assert_eq!(json["probabilityOfLiquidation"], 0.25);
        assert_eq!(json["reasons"][0]["code"], "LIQUIDATION_HISTORY");
        assert_eq!(json["provenance"]["blockNumber"], 9);
        assert_eq!(json["modelSha256"], "ab");
        let back: ScoreMessage = serde_json::from_value(json).expect("parses");
        assert_eq!(back, message);
    }

    #[test]
    fn an_alert_carries_its_kind_and_severity_by_their_stored_names() {
        let alert = Alert {
            id: "a".into(),
            kind: AlertKind::FlashLoanAttack,
            severity: Severity::Critical,
            chain_id: 1,
            block_number: 5,
            tx_hashes: vec!["0x1".into()],
            addresses: vec![],
            pools: vec![],
            evidence: serde_json::json!({"loan": 1}),
            detector_version: crate::risk::DETECTOR_VERSION.into(),
            source_published_at: None,
            usd: Some(10.5),
            block_time: None,
        };
        let json = serde_json::to_value(&alert).expect("serialises");
        assert_eq!(json["kind"], "FLASH_LOAN_ATTACK");
        assert_eq!(json["severity"], "CRITICAL");
        assert_eq!(json["detectorVersion"], "detectors-v1");
        assert_eq!(
            serde_json::from_value::<Alert>(json).expect("parses"),
            alert
        );
    }
}
