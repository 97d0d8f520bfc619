//! A wallet's credit profile as a fold: the state behind [`crate::credit::activity_features`]
//! and [`crate::credit::positions_at`], advanced one lending event at a time.
//!
//! The scorer keeps one [`CreditProfile`] per wallet in Postgres (`credit_profile`, written in
//! the transaction of the scores it produced) with the sort key of the last event it folded, so
//! rescoring a wallet folds only the events after that key: a cost per event that does not grow
//! with the wallet's history. The from-scratch functions in `credit` fold the same way, so both
//! paths add the same floats in the same order and agree to the last bit.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::credit::{ActivityFeatures, HistoryEvent, PositionFlow};
use crate::envelope::LendingAction;

/// The behaviour part of a profile: what [`ActivityFeatures`] needs, summed event by event.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ActivityFold {
    first: Option<DateTime<Utc>>,
    last: Option<DateTime<Utc>>,
    counts: BTreeMap<LendingAction, u64>,
    usd: BTreeMap<LendingAction, f64>,
    liquidations: u64,
    liquidated_usd: f64,
    last_liquidation: Option<DateTime<Utc>>,
}

impl ActivityFold {
    pub fn apply(&mut self, e: &HistoryEvent) {
        self.first = Some(self.first.map_or(e.at, |f| f.min(e.at)));
        self.last = Some(self.last.map_or(e.at, |l| l.max(e.at)));
        *self.counts.entry(e.action).or_default() += 1;
        if let Some(usd) = e.usd {
            *self.usd.entry(e.action).or_default() += usd;
        }
        if e.action == LendingAction::Liquidation {
            self.liquidations += 1;
            self.liquidated_usd += e.usd.unwrap_or(0.0);
            self.last_liquidation = Some(self.last_liquidation.map_or(e.at, |l| l.max(e.at)));
        }
    }

    /// The features at `now` of the events folded so far; `None` before the first one.
    pub fn features(&self, now: DateTime<Utc>) -> Option<ActivityFeatures> {
        let days = |from: DateTime<Utc>| (now - from).num_seconds() as f64 / 86_400.0;
        let borrowed = self.usd.get(&LendingAction::Borrow).copied().unwrap_or(0.0);
        let repaid = self.usd.get(&LendingAction::Repay).copied().unwrap_or(0.0);
        Some(ActivityFeatures {
            age_days: days(self.first?),
            recency_days: days(self.last?),
            counts: self.counts.clone(),
            usd: self.usd.clone(),
            repay_to_borrow: (borrowed > 0.0).then(|| repaid / borrowed),
            liquidations: self.liquidations,
            days_since_liquidation: self.last_liquidation.map(days),
            liquidated_usd: self.liquidated_usd,
        })
    }
}

/// The position part: principal collateral and debt per reserve, flow by flow.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PositionBook {
    /// reserve → (symbol, collateral, debt), whole tokens; may go negative (repaid interest).
    reserves: BTreeMap<String, (String, f64, f64)>,
}

impl PositionBook {
    pub fn apply(&mut self, f: &PositionFlow) {
        let entry = self
            .reserves
            .entry(f.reserve.clone())
            .or_insert_with(|| (f.symbol.clone(), 0.0, 0.0));
        match f.action {
            LendingAction::Deposit => entry.1 += f.amount,
            LendingAction::Redeem => entry.1 -= f.amount,
            LendingAction::Borrow => entry.2 += f.amount,
            LendingAction::Repay | LendingAction::Liquidation => entry.2 -= f.amount,
        }
        if let Some((reserve, symbol, seized)) = &f.seized {
            let entry = self
                .reserves
                .entry(reserve.clone())
                .or_insert_with(|| (symbol.clone(), 0.0, 0.0));
            entry.1 -= seized;
        }
    }

    /// (reserve, symbol, collateral, debt) of every reserve with a positive balance, sorted by
    /// reserve; a negative balance counts as zero.
    pub fn positions(&self) -> Vec<(String, String, f64, f64)> {
        self.reserves
            .iter()
            .map(|(reserve, (symbol, c, d))| {
                (reserve.clone(), symbol.clone(), c.max(0.0), d.max(0.0))
            })
            .filter(|(_, _, c, d)| *c > 0.0 || *d > 0.0)
            .collect()
    }
}

/// Where a profile stands in a wallet's history: the sort key of the last row folded, in the
/// order the scorer reads `lending_event` (`block_time`, then block, log index and event id,
/// with a missing block or log index after every present one).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct HistoryKey {
    pub at: DateTime<Utc>,
    pub block: i64,
    pub log_index: i64,
    pub event_id: String,
}

impl HistoryKey {
    /// The key of a row; `None` block or log index sort last, as `NULLS LAST` does.
    pub fn new(
        at: DateTime<Utc>,
        block: Option<i64>,
        log_index: Option<i64>,
        event_id: String,
    ) -> HistoryKey {
        HistoryKey {
            at,
            block: block.unwrap_or(i64::MAX),
            log_index: log_index.unwrap_or(i64::MAX),
            event_id,
        }
    }
}

/// A wallet's credit profile: both folds, how many history rows they have taken in and the key
/// of the last one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CreditProfile {
    /// Rows of the wallet's history up to `cursor`, folded or skipped (a row without a usable
    /// action counts here but not in the folds). Stored for inspection (`rows_folded`); whether
    /// a stored profile may be resumed is decided by the wallet's mark, not by this count.
    pub rows: u64,
    pub cursor: Option<HistoryKey>,
    /// The block hash of the cursor's row: a reorg that orphaned any folded row orphaned this
    /// one too (it has the highest block folded), so a stored profile whose cursor row is gone
    /// or moved to another hash is not resumed.
    #[serde(default)]
    pub cursor_block_hash: Option<String>,
    /// The store's mark of the wallet's history when the rows folded were read (see the
    /// scorer's `profiles`): not part of the fold, and kept in its own column, not the state.
    #[serde(skip)]
    pub order_mark: Option<i64>,
    pub activity: ActivityFold,
    pub book: PositionBook,
}

impl CreditProfile {
    /// Folds one history row (its behaviour entry and position flow) with its key. Keys must
    /// come in ascending order; a row at or before the cursor is a replay and is ignored, so
    /// applying a batch twice leaves the profile as applying it once.
    pub fn apply(
        &mut self,
        key: HistoryKey,
        block_hash: Option<&str>,
        row: Option<(&HistoryEvent, &PositionFlow)>,
    ) {
        if self.cursor.as_ref().is_some_and(|c| &key <= c) {
            return;
        }
        if let Some((event, flow)) = row {
            self.activity.apply(event);
            self.book.apply(flow);
        }
        self.rows += 1;
        self.cursor = Some(key);
        self.cursor_block_hash = block_hash.map(str::to_owned);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credit::{activity_features, positions_at};

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(s, 0).expect("in range")
    }

    /// A deterministic pseudo-random history: every action, uneven amounts, some unpriced.
    fn history(n: usize) -> Vec<(HistoryKey, HistoryEvent, PositionFlow)> {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        (0..n)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let action = LendingAction::ALL[(x % 5) as usize];
                let amount = (x % 10_000) as f64 / 7.0;
                let t = at(1_600_000_000 + (i as i64) * 600);
                let reserve = if x % 3 == 0 { "0xusdc" } else { "0xweth" };
                let seized = (action == LendingAction::Liquidation)
                    .then(|| ("0xweth".to_string(), "WETH".to_string(), amount / 3.0));
                (
                    HistoryKey::new(t, Some(i as i64), Some(0), format!("e{i:06}")),
                    HistoryEvent {
                        action,
                        at: t,
                        usd: (x % 4 != 0).then_some(amount * 1.7),
                    },
                    PositionFlow {
                        action,
                        at: t,
                        reserve: reserve.into(),
                        symbol: reserve.trim_start_matches("0x").to_uppercase(),
                        amount,
                        seized,
                    },
                )
            })
            .collect()
    }

    /// The features as defined before the fold existed: straight over the events up to `now`.
    fn reference(history: &[HistoryEvent], now: DateTime<Utc>) -> Option<ActivityFeatures> {
        let known: Vec<&HistoryEvent> = history.iter().filter(|e| e.at <= now).collect();
        let first = known.iter().map(|e| e.at).min()?;
        let last = known.iter().map(|e| e.at).max()?;
        let days = |from: DateTime<Utc>| (now - from).num_seconds() as f64 / 86_400.0;
        let mut f = ActivityFeatures {
            age_days: days(first),
            recency_days: days(last),
            ..ActivityFeatures::default()
        };
        let mut last_liquidation: Option<DateTime<Utc>> = None;
        for e in &known {
            *f.counts.entry(e.action).or_default() += 1;
            if let Some(usd) = e.usd {
                *f.usd.entry(e.action).or_default() += usd;
            }
            if e.action == LendingAction::Liquidation {
                f.liquidations += 1;
                f.liquidated_usd += e.usd.unwrap_or(0.0);
                last_liquidation = Some(last_liquidation.map_or(e.at, |l| l.max(e.at)));
            }
        }
        let borrowed = f.usd.get(&LendingAction::Borrow).copied().unwrap_or(0.0);
        let repaid = f.usd.get(&LendingAction::Repay).copied().unwrap_or(0.0);
        f.repay_to_borrow = (borrowed > 0.0).then(|| repaid / borrowed);
        f.days_since_liquidation = last_liquidation.map(days);
        Some(f)
    }

    #[test]
    fn the_fold_equals_the_from_scratch_features_bit_for_bit() {
        let rows = history(2_000);
        let mut profile = CreditProfile::default();
        for (i, (key, event, flow)) in rows.iter().enumerate() {
            profile.apply(key.clone(), Some("0xb1"), Some((event, flow)));
            if i % 97 == 0 || i + 1 == rows.len() {
                let now = event.at + chrono::Duration::hours(5);
                let events: Vec<HistoryEvent> = rows[..=i].iter().map(|r| r.1.clone()).collect();
                let flows: Vec<PositionFlow> = rows[..=i].iter().map(|r| r.2.clone()).collect();
                assert_eq!(
                    profile.activity.features(now),
                    activity_features(&events, now)
                );
                assert_eq!(profile.activity.features(now), reference(&events, now));
                assert_eq!(profile.book.positions(), positions_at(&flows, now));
            }
        }
        assert_eq!(profile.rows, 2_000);
    }

    #[test]
    fn a_profile_survives_its_stored_form_exactly() {
        let mut profile = CreditProfile::default();
        for (key, event, flow) in history(500) {
            profile.apply(key, Some("0xb1"), Some((&event, &flow)));
        }
        let stored = serde_json::to_value(&profile).expect("serialises");
        let back: CreditProfile = serde_json::from_value(stored).expect("deserialises");
        assert_eq!(back, profile);
        let now = at(1_700_000_000);
        assert_eq!(back.activity.features(now), profile.activity.features(now));
    }

    #[test]
    fn sums_come_back_from_their_text_to_the_bit() {
        // Sums whose shortest text the default float parser reads one ulp off.
        let mut x = 0.0f64;
        for i in 0..20_000 {
            x += (i as f64) * 1.1 / 7.0 + 0.1;
            let text = serde_json::to_string(&x).expect("serialises");
            let back: f64 = serde_json::from_str(&text).expect("parses");
            assert_eq!(back.to_bits(), x.to_bits(), "{text}");
        }
    }

    #[test]
    fn rows_at_or_before_the_cursor_are_not_folded_twice() {
        let rows = history(50);
        let mut once = CreditProfile::default();
        let mut twice = CreditProfile::default();
        for (key, event, flow) in &rows {
            once.apply(key.clone(), None, Some((event, flow)));
        }
        for (key, event, flow) in rows.iter().chain(rows.iter()) {
            twice.apply(key.clone(), None, Some((event, flow)));
        }
        assert_eq!(once, twice);
        assert_eq!(twice.rows, 50);
    }

    #[test]
    fn skipped_rows_count_but_do_not_fold() {
        let mut p = CreditProfile::default();
        p.apply(HistoryKey::new(at(10), None, None, "x".into()), None, None);
        assert_eq!(p.rows, 1);
        assert!(p.activity.features(at(20)).is_none());
        assert!(p.book.positions().is_empty());
    }

    #[test]
    fn missing_blocks_sort_after_present_ones() {
        let with = HistoryKey::new(at(10), Some(5), Some(1), "b".into());
        let without = HistoryKey::new(at(10), None, None, "a".into());
        assert!(with < without);
        assert!(HistoryKey::new(at(9), None, None, "z".into()) < with);
    }
}
