//! The position model (ONNX) served with `ort`: onnxruntime is loaded at run time from the path
//! in `ORT_DYLIB_PATH` (the PyPI wheel `scripts/stack up` installs), once per process.

use std::path::Path;

use anyhow::Context as _;
use sha2::{Digest, Sha256};

/// Features the position model takes, in order (see `scoring/MODEL_CARD.md`).
pub const POSITION_FEATURES: [&str; 4] = ["log_hf", "vol_7d", "vol_30d", "distance_sigma_30d"];

/// A loaded model with its identity (stored with every score).
#[derive(Debug)]
pub struct PositionModel {
    session: ort::session::Session,
    /// `position-v1`: the model directory's name.
    pub version: String,
    /// sha256 of the ONNX file, hex.
    pub sha256: String,
}

impl PositionModel {
    /// Loads `<dir>/position_model.onnx`; `version` is the directory's name.
    pub fn load(dir: &Path) -> anyhow::Result<PositionModel> {
        let env = chainfold_platform::onnx::init_runtime()?;
        let file = dir.join("position_model.onnx");
        let bytes = std::fs::read(&file)
            .with_context(|| format!("could not read model {}", file.display()))?;
        let sha256 = format!("{:x}", Sha256::digest(&bytes));
        let session = ort::session::Session::builder(env)
            .and_then(|b| b.with_intra_threads(1)?.commit_from_memory(&bytes))
            .map_err(|e| anyhow::anyhow!("could not load model {}: {e}", file.display()))?;
        let version = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "unknown".into());
        Ok(PositionModel {
            session,
            version,
            sha256,
        })
    }

    /// P(liquidation within 30 days) per row, in one batched call.
    pub fn predict(&mut self, rows: &[[f32; 4]]) -> anyhow::Result<Vec<f32>> {
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
        let (shape, probabilities) = outputs["probabilities"]
            .try_extract_tensor::<f32>()
            .map_err(|e| anyhow::anyhow!("unexpected model output: {e}"))?;
        anyhow::ensure!(
            shape.len() == 2 && shape[1] == 2,
            "expected probabilities [N, 2], got {shape:?}"
        );
        Ok(probabilities.chunks(2).map(|p| p[1]).collect())
    }
}
