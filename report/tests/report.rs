//! The detector report on the bundled data: what it lists holds up, and the committed
//! `scoring/REPORT.md` is what the command writes today (`chainfold report` regenerates it).

use std::path::Path;

use chainfold_domain::risk::PUBLIC_ROUTERS;
use chainfold_report as report;

fn data() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../data")
}

#[test]
fn every_listed_sandwich_is_backed_by_its_swaps() {
    let measured = report::measure(&data()).expect("report");
    assert!(!measured.sandwiches.is_empty());
    let swaps: Vec<_> = chainfold_ingest::replay::Dataset::Swaps
        .decode_dir(&data())
        .expect("swaps")
        .into_iter()
        .filter_map(Result::ok)
        .collect();
    let legs = report::swap_legs(&swaps);
    assert_eq!(measured.swaps, legs.len());
    for s in &measured.sandwiches {
        let front = legs
            .iter()
            .find(|l| l.tx_hash == s.front_tx && l.pool == s.pool)
            .expect("front-run swap");
        let back = legs
            .iter()
            .find(|l| l.tx_hash == s.back_tx && l.pool == s.pool)
            .expect("back-run swap");
        assert_eq!((front.block, back.block), (s.block, s.block));
        assert!(front.tx_position < back.tx_position);
        assert_eq!(front.recipient, back.sender);
        assert_eq!(
            (back.token_in, back.token_out),
            (front.token_out, front.token_in)
        );
        assert!(s.profit > 0.0 && !PUBLIC_ROUTERS.contains(&s.sandwicher));
        for v in &s.victim_txs {
            let victim = legs
                .iter()
                .find(|l| l.tx_hash == *v && l.pool == s.pool)
                .expect("victim swap");
            assert!(
                front.tx_position < victim.tx_position && victim.tx_position < back.tx_position
            );
            assert_eq!(victim.token_in, front.token_in);
        }
    }
    let in_sandwich = legs
        .iter()
        .filter(|l| {
            measured
                .sandwiches
                .iter()
                .any(|s| s.front_tx == l.tx_hash || s.back_tx == l.tx_hash)
        })
        .count();
    assert_eq!(measured.benign_swaps, legs.len() - in_sandwich);
    // The identity holds exactly where the row's prices and bonus are the protocol's.
    let b = &measured.bonus;
    assert!(b.checked * 10 > b.rows * 9, "{b:?}");
    assert!(b.median_error < 1e-9, "{b:?}");
}

#[test]
fn the_committed_report_is_current() {
    let measured = report::measure_with(
        &data(),
        Some(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../scoring/models/pool-anomaly-v1")),
    )
    .expect("report");
    let anomaly = measured.anomaly.as_ref().expect("anomaly section");
    let metrics: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../scoring/models/pool-anomaly-v1/metrics.json"),
        )
        .expect("metrics"),
    )
    .expect("json");
    // Offline, block by block in order: exactly what training flagged.
    assert_eq!(
        anomaly.flagged as u64,
        metrics["flagged"].as_u64().expect("flagged")
    );
    assert_eq!(
        anomaly.flagged,
        anomaly.sandwich_legs_flagged + anomaly.flagged_outside_sandwiches
    );
    let rendered = report::render(&measured, Path::new("data"));
    let committed =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../scoring/REPORT.md"))
            .expect("scoring/REPORT.md");
    // The scenario table comes from a demo's database (`--labels`); the end-to-end test
    // `tests/tests/risk_live.rs` checks it. Everything before it is measured here.
    let (measured_part, scenarios) = committed
        .split_once(report::SCENARIO_HEADER)
        .map_or((committed.as_str(), None), |(a, b)| (a, Some(b)));
    assert!(
        measured_part.trim_end() == rendered.trim_end(),
        "scoring/REPORT.md is stale: run `cargo run -- report --labels simulate-labels.jsonl` after `cargo run -- demo --no-serve` from the workspace root"
    );
    assert!(
        scenarios.is_some(),
        "scoring/REPORT.md has no scenario table: regenerate it with --labels"
    );
}
