//! The position model (ONNX) served with `ort`: onnxruntime is loaded at run time from the path
//! in `ORT_DYLIB_PATH` (the PyPI wheel `scripts/stack up` installs), once per process.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::Context as _;
use sha2::{Digest, Sha256};

/// Features the position model takes, in order (see `scoring/MODEL_CARD.md`).
pub const POSITION_FEATURES: [&str; 4] = ["log_hf", "vol_7d", "vol_30d", "distance_sigma_30d"];

static RUNTIME: OnceLock<Result<ort::environment::Environment, String>> = OnceLock::new();

/// Loads onnxruntime from `ORT_DYLIB_PATH` (once per process). A missing or wrong library is a
/// clear startup error naming the path and how to get it.
pub fn init_runtime() -> anyhow::Result<&'static ort::environment::Environment> {
    let result = RUNTIME.get_or_init(|| {
        let path = dylib_path().ok_or_else(|| {
            "ORT_DYLIB_PATH is not set: run `scripts/stack up` (installs onnxruntime 1.31.1 from PyPI) and use the path it prints".to_owned()
        })?;
        let builder = ort::init_from(&path)
            .map_err(|e| format!("could not load onnxruntime from {}: {e}", path.display()))?;
        builder
            .with_name("chainfold")
            .build()
            .map_err(|e| format!("could not start onnxruntime from {}: {e}", path.display()))
    });
    result.as_ref().map_err(|e| anyhow::Error::msg(e.clone()))
}

/// `ORT_DYLIB_PATH`, else the path `scripts/stack up` recorded in
/// `$CHAINFOLD_STATE_DIR/ort_dylib_path` (default `~/.local/state/chainfold`).
fn dylib_path() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("ORT_DYLIB_PATH") {
        return Some(PathBuf::from(path));
    }
    let state = std::env::var_os("CHAINFOLD_STATE_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state/chainfold"))
        })?;
    let recorded = std::fs::read_to_string(state.join("ort_dylib_path")).ok()?;
    let path = PathBuf::from(recorded.trim());
    path.exists().then_some(path)
}

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
        let env = init_runtime()?;
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
