//! onnxruntime for the ONNX models (credit position model, pool anomaly model), loaded at run
//! time from the path in `ORT_DYLIB_PATH` (the PyPI wheel `scripts/stack up` installs), once per
//! process.

use std::path::PathBuf;
use std::sync::OnceLock;

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
