//! Reading recorded files the same way everywhere: plain or gzip by extension.

use std::io::Read as _;
use std::path::Path;

use anyhow::Context as _;

/// Reads a file, gunzipping it when its name ends in `.gz`.
pub fn read_maybe_gzip(path: &Path) -> anyhow::Result<Vec<u8>> {
    let raw = std::fs::read(path).with_context(|| format!("could not read {}", path.display()))?;
    if path.extension().is_some_and(|e| e == "gz") {
        let mut out = Vec::with_capacity(raw.len() * 4);
        flate2::read::GzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .with_context(|| format!("could not gunzip {}", path.display()))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}
