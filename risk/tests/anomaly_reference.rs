//! The swap anomaly model in Rust equals the Python pipeline: the same features from the same
//! recorded swaps, and the same scores and labels from onnxruntime on the saved reference batch.

use std::path::Path;

use chainfold_risk::anomaly::{AnomalyModel, FeatureState};
use chainfold_testkit::data_dir;

fn reference() -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scoring/models/pool-anomaly-v1/reference.json");
    serde_json::from_slice(&std::fs::read(path).expect("reference.json")).expect("json")
}

fn rows(reference: &serde_json::Value) -> Vec<[f32; 4]> {
    reference["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            let v: Vec<f32> = serde_json::from_value(r.clone()).expect("row");
            [v[0], v[1], v[2], v[3]]
        })
        .collect()
}

#[test]
fn rust_scores_equal_the_python_reference() {
    let reference = reference();
    let mut model = AnomalyModel::load(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../scoring/models/pool-anomaly-v1"),
    )
    .expect("model");
    let out = model.predict(&rows(&reference)).expect("predict");
    let labels: Vec<i64> = serde_json::from_value(reference["labels"].clone()).expect("labels");
    let scores: Vec<f32> = serde_json::from_value(reference["scores"].clone()).expect("scores");
    assert_eq!(out.len(), labels.len());
    for (i, ((label, score), (want_label, want_score))) in
        out.iter().zip(labels.iter().zip(&scores)).enumerate()
    {
        assert_eq!(label, want_label, "row {i}");
        assert!(
            score.to_bits().abs_diff(want_score.to_bits()) <= 1,
            "row {i}: {score} vs {want_score}"
        );
    }
    assert!(labels.contains(&-1) && labels.contains(&1));
}

#[test]
fn stream_features_equal_the_training_features() {
    // Training takes every 53rd row of the replay-ordered, non-reverted swaps.
    let swaps: Vec<_> = chainfold_ingest::replay::Dataset::Swaps
        .decode_dir(&data_dir())
        .expect("swaps")
        .into_iter()
        .filter_map(Result::ok)
        .collect();
    let legs = chainfold_report::swap_legs(&swaps);
    let mut by_block: std::collections::BTreeMap<u64, Vec<_>> = Default::default();
    for l in legs {
        by_block.entry(l.block).or_default().push(l);
    }
    let mut state = FeatureState::default();
    let mut all = Vec::new();
    for (_, block) in by_block {
        let mut f = state.block_features(1, &block);
        // Training order: (position, trace) within the block, which block_features follows.
        all.extend(f.drain(..).map(|(_, row)| row));
    }
    let want = rows(&reference());
    let sampled: Vec<[f32; 4]> = all.iter().step_by(53).take(128).copied().collect();
    assert_eq!(sampled.len(), 128);
    assert_eq!(sampled, want[..128].to_vec());
}
