//! Credit features on real records: the Polygon wallet histories (bundled), checked against
//! counts and times taken straight from the JSON file. No services.

use std::collections::BTreeMap;

use chainfold_domain::credit::{activity_features, HistoryEvent};
use chainfold_domain::{Envelope, LendingAction};
use chainfold_ingest::replay::{read_maybe_gzip, Dataset};
use chainfold_testkit::data_dir;

const LIQUIDATED: &str = "0x000006eee6e39015cb523aebdd4d0b1855aba682";

#[test]
fn activity_features_of_the_polygon_wallets_match_the_raw_records() {
    let envelopes: Vec<Envelope> = Dataset::Polygon
        .decode_dir(&data_dir())
        .expect("bundled data")
        .into_iter()
        .flatten()
        .collect();
    let mut histories: BTreeMap<String, Vec<HistoryEvent>> = BTreeMap::new();
    for env in &envelopes {
        if let Some(event) = HistoryEvent::of(env) {
            histories
                .entry(format!("{:#x}", env.partition_key()))
                .or_default()
                .push(event);
        }
    }
    // Independently: counts per action and first/last timestamps per wallet from the JSON.
    let raw = read_maybe_gzip(
        &data_dir().join("aave-v2-polygon-wallet-txns/user-wallet-transactions.head1724.json.gz"),
    )
    .expect("read");
    let records: Vec<serde_json::Value> = serde_json::from_slice(&raw).expect("json");
    let mut expected: BTreeMap<String, (BTreeMap<String, u64>, i64, i64)> = BTreeMap::new();
    for r in &records {
        let wallet = r["userWallet"].as_str().expect("wallet").to_lowercase();
        let action = match r["action"].as_str().expect("action") {
            "redeemunderlying" => "redeem",
            "liquidationcall" => "liquidation",
            other => other,
        }
        .to_owned();
        let at = r["timestamp"].as_i64().expect("timestamp");
        let entry = expected
            .entry(wallet)
            .or_insert_with(|| (BTreeMap::new(), i64::MAX, i64::MIN));
        *entry.0.entry(action).or_default() += 1;
        entry.1 = entry.1.min(at);
        entry.2 = entry.2.max(at);
    }
    assert_eq!(histories.len(), expected.len());
    for (wallet, history) in &histories {
        let (counts, first, last) = &expected[wallet];
        let now = chrono::DateTime::from_timestamp(*last, 0).expect("time");
        let f = activity_features(history, now).expect("history");
        for (action, count) in counts {
            let action = LendingAction::parse(action).expect("known action");
            assert_eq!(
                f.counts.get(&action).copied().unwrap_or(0),
                *count,
                "{wallet} {action:?}"
            );
        }
        assert_eq!(f.age_days, (last - first) as f64 / 86_400.0, "{wallet}");
        assert_eq!(f.recency_days, 0.0);
    }
    let liquidated = activity_features(
        &histories[LIQUIDATED],
        chrono::DateTime::from_timestamp(expected[LIQUIDATED].2, 0).expect("time"),
    )
    .expect("history");
    assert_eq!(liquidated.liquidations, 3);
    assert!(liquidated.days_since_liquidation.is_some());
    let never: usize = histories
        .iter()
        .filter(|(w, h)| {
            *w != LIQUIDATED && h.iter().all(|e| e.action != LendingAction::Liquidation)
        })
        .count();
    assert!(
        never > 0,
        "there are never-liquidated wallets to compare with"
    );

    // The scorecard: the wallet with three liquidations scores below every never-liquidated
    // wallet of similar activity (event count within a factor of two), and says why.
    let at_end = |w: &str| {
        let f = activity_features(
            &histories[w],
            chrono::DateTime::from_timestamp(expected[w].2, 0).expect("time"),
        )
        .expect("history");
        chainfold_domain::scorecard::score(&f, None)
    };
    let bad = at_end(LIQUIDATED);
    assert_eq!(bad.reasons[0].code, "LIQUIDATION_HISTORY", "{bad:?}");
    let size = histories[LIQUIDATED].len();
    let mut peers = 0;
    for (wallet, history) in &histories {
        let liquidated = history
            .iter()
            .any(|e| e.action == LendingAction::Liquidation);
        if liquidated || history.len() * 2 < size || history.len() > size * 2 {
            continue;
        }
        let peer = at_end(wallet);
        assert!(
            bad.score < peer.score,
            "{LIQUIDATED} {} vs {wallet} {}",
            bad.score,
            peer.score
        );
        peers += 1;
    }
    assert!(peers >= 1, "no peer of similar activity");
    eprintln!(
        "{LIQUIDATED}: {} ({:?}); {peers} peers all higher",
        bad.score, bad.band
    );
}
