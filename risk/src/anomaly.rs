//! The swap anomaly model (IsolationForest, `scoring/train/anomaly.py`, ONNX) and its features,
//! computed on the stream exactly as the training pipeline computes them on the recorded swaps.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::Path;

use alloy_primitives::Address;
use anyhow::Context as _;
use chainfold_domain::risk::SwapLeg;
use sha2::{Digest, Sha256};

/// Feature names, in the model's order.
pub const ANOMALY_FEATURES: [&str; 4] = ["size", "legs", "pools", "position"];
/// Previous input amounts of a (pool, token) the size feature compares with.
pub const HISTORY: usize = 100;

/// The loaded model with its identity and the training features' medians and MADs.
#[derive(Debug)]
pub struct AnomalyModel {
    session: ort::session::Session,
    /// The model directory's name.
    pub version: String,
    pub sha256: String,
    median: [f64; 4],
    scale: [f64; 4],
}

impl AnomalyModel {
    /// Loads `<dir>/anomaly_model.onnx` and `<dir>/metrics.json`.
    pub fn load(dir: &Path) -> anyhow::Result<AnomalyModel> {
        let env = chainfold_platform::onnx::init_runtime()?;
        let file = dir.join("anomaly_model.onnx");
        let bytes = std::fs::read(&file)
            .with_context(|| format!("could not read model {}", file.display()))?;
        let metrics: serde_json::Value = serde_json::from_slice(
            &std::fs::read(dir.join("metrics.json"))
                .with_context(|| format!("could not read {}/metrics.json", dir.display()))?,
        )?;
        let column = |key: &str| -> anyhow::Result<[f64; 4]> {
            let v: Vec<f64> = serde_json::from_value(metrics[key].clone())
                .with_context(|| format!("metrics.json: {key}"))?;
            v.try_into()
                .map_err(|_| anyhow::anyhow!("metrics.json: {key} needs 4 values"))
        };
        let (median, mad) = (column("feature_median")?, column("feature_mad")?);
        let session = ort::session::Session::builder(env)
            .and_then(|b| b.with_intra_threads(1)?.commit_from_memory(&bytes))
            .map_err(|e| anyhow::anyhow!("could not load model {}: {e}", file.display()))?;
        Ok(AnomalyModel {
            session,
            version: dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            sha256: format!("{:x}", Sha256::digest(&bytes)),
            median,
            // Robust scale; counts with no spread (legs, pools) are measured in units.
            scale: mad.map(|m| if m > 0.0 { 1.4826 * m } else { 1.0 }),
        })
    }

    /// (label, score) per row in one call: label −1 = anomalous; the score is the forest's
    /// decision function (below 0 = anomalous, lower = more).
    pub fn predict(&mut self, rows: &[[f32; 4]]) -> anyhow::Result<Vec<(i64, f32)>> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        let input = ort::value::TensorRef::from_array_view(([rows.len(), 4usize], &flat[..]))
            .map_err(|e| anyhow::anyhow!("bad input tensor: {e}"))?;
        let outputs = self
            .session
            .run(ort::inputs!["X" => input])
            .map_err(|e| anyhow::anyhow!("inference failed: {e}"))?;
        let (_, labels) = outputs["label"]
            .try_extract_tensor::<i64>()
            .map_err(|e| anyhow::anyhow!("unexpected label output: {e}"))?;
        let (_, scores) = outputs["scores"]
            .try_extract_tensor::<f32>()
            .map_err(|e| anyhow::anyhow!("unexpected scores output: {e}"))?;
        anyhow::ensure!(
            labels.len() == rows.len() && scores.len() == rows.len(),
            "expected {} labels and scores",
            rows.len()
        );
        Ok(labels.iter().copied().zip(scores.iter().copied()).collect())
    }

    /// The features furthest from their training medians, in robust units, largest first.
    pub fn contributions(&self, row: &[f32; 4]) -> Vec<(&'static str, f64, f64)> {
        let mut out: Vec<(&'static str, f64, f64)> = (0..4)
            .map(|i| {
                let value = f64::from(row[i]);
                (
                    ANOMALY_FEATURES[i],
                    value,
                    (value - self.median[i]) / self.scale[i],
                )
            })
            .collect();
        out.sort_by(|a, b| b.2.abs().total_cmp(&a.2.abs()));
        out
    }
}

/// The causal state of the size feature: previous input amounts per (chain, pool, token).
#[derive(Debug, Default)]
pub struct FeatureState {
    seen: HashMap<(u64, Address, Address), VecDeque<f64>>,
}

fn median(values: &VecDeque<f64>) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().collect();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

impl FeatureState {
    /// Seeds the previous input amounts of (chain, pool, token), oldest first (the last
    /// [`HISTORY`] swaps before the blocks about to be scored, read from the `swap` read model).
    pub fn seed(&mut self, chain: u64, pool: Address, token_in: Address, amounts: Vec<f64>) {
        let start = amounts.len().saturating_sub(HISTORY);
        self.seen.insert(
            (chain, pool, token_in),
            amounts[start..].iter().copied().collect(),
        );
    }

    /// Features of one block's swaps (any order; computed in transaction order, as trained),
    /// returned with the index of the swap in `swaps` they belong to.
    pub fn block_features(&mut self, chain: u64, swaps: &[SwapLeg]) -> Vec<(usize, [f32; 4])> {
        let mut order: Vec<usize> = (0..swaps.len()).collect();
        order.sort_by(|a, b| {
            (swaps[*a].tx_position, &swaps[*a].trace)
                .cmp(&(swaps[*b].tx_position, &swaps[*b].trace))
        });
        let mut legs: BTreeMap<_, usize> = BTreeMap::new();
        let mut pools: BTreeMap<_, HashSet<Address>> = BTreeMap::new();
        for s in swaps {
            *legs.entry(s.tx_hash).or_default() += 1;
            pools.entry(s.tx_hash).or_default().insert(s.pool);
        }
        let top = swaps.iter().map(|s| s.tx_position).max().unwrap_or(0);
        let mut out = Vec::with_capacity(swaps.len());
        for i in order {
            let s = &swaps[i];
            let previous = self.seen.entry((chain, s.pool, s.token_in)).or_default();
            let size = if previous.len() >= 3 && s.amount_in > 0.0 {
                let m = median(previous);
                if m > 0.0 {
                    (s.amount_in / m).log10()
                } else {
                    0.0
                }
            } else {
                0.0
            };
            previous.push_back(s.amount_in);
            if previous.len() > HISTORY {
                previous.pop_front();
            }
            out.push((
                i,
                [
                    size as f32,
                    legs[&s.tx_hash] as f32,
                    pools[&s.tx_hash].len() as f32,
                    (f64::from(s.tx_position) / (f64::from(top) + 1.0)) as f32,
                ],
            ));
        }
        out
    }
}
