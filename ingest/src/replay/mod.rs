//! Recorded-data replay: the data sets bundled under `data/` (or the full copies in
//! `../shared/data`), decoded into typed events in a deterministic order.

pub mod liquidations;
pub mod polygon;
pub mod swaps;

use std::path::{Path, PathBuf};

use alloy_primitives::{Address, B256};
use anyhow::Context as _;

use crate::{Decoded, EventKind, Rejected};

/// A recorded data set chainfold can replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Dataset {
    /// Aave V2 Polygon wallet transactions (chain 137), `aave-v2-polygon-wallet-txns`.
    Polygon,
    /// mev-inspect decoded DEX swaps (chain 1), `dex-swaps-mev-inspect/swaps.csv`.
    Swaps,
    /// Aave V2 Ethereum liquidation calls (chain 1), `aave-v2-eth-liquidations-rpi`.
    Liquidations,
}

impl Dataset {
    pub const ALL: [Dataset; 3] = [Dataset::Polygon, Dataset::Swaps, Dataset::Liquidations];

    /// Name used in event ids and `source.dataset`: the shared data folder's name.
    pub fn name(self) -> &'static str {
        match self {
            Dataset::Polygon => polygon::DATASET,
            Dataset::Swaps => swaps::DATASET,
            Dataset::Liquidations => liquidations::DATASET,
        }
    }

    /// Candidate files inside a data directory, bundled (gzip) form first, then the shared
    /// layout.
    fn candidates(self, dir: &Path) -> Vec<PathBuf> {
        match self {
            Dataset::Polygon => vec![
                dir.join("aave-v2-polygon-wallet-txns/user-wallet-transactions.head1724.json.gz"),
                dir.join("aave-v2-polygon-wallet-txns/user-wallet-transactions.head1724.json"),
            ],
            Dataset::Swaps => vec![
                dir.join("dex-swaps-mev-inspect/swaps.csv.gz"),
                dir.join("dex-swaps-mev-inspect/swaps.csv"),
            ],
            Dataset::Liquidations => vec![
                dir.join("aave-v2-eth-liquidations-rpi/liquidations.csv.gz"),
                dir.join("aave-v2-eth-liquidations-rpi/liquidations.csv"),
            ],
        }
    }

    /// Finds this data set's file under `dir`.
    pub fn locate(self, dir: &Path) -> anyhow::Result<PathBuf> {
        let candidates = self.candidates(dir);
        candidates
            .iter()
            .find(|p| p.is_file())
            .cloned()
            .with_context(|| {
                format!(
                    "no {} data under {} (looked for {:?})",
                    self.name(),
                    dir.display(),
                    candidates
                )
            })
    }

    /// Reads and decodes the data set found under `dir`, in replay order.
    pub fn decode_dir(self, dir: &Path) -> anyhow::Result<Vec<Decoded>> {
        let path = self.locate(dir)?;
        let bytes = read_maybe_gzip(&path)?;
        let origin = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match self {
            Dataset::Polygon => polygon::decode(&bytes, &origin),
            Dataset::Swaps => swaps::decode(&bytes, &origin),
            Dataset::Liquidations => {
                let tokens_path = liquidations::tokens_path(&path);
                let tokens = read_maybe_gzip(&tokens_path)?;
                liquidations::decode(&bytes, &tokens, &origin)
            }
        }
    }
}

pub use chainfold_platform::files::read_maybe_gzip;

/// One CSV record, deserialised, with where it was and its exact raw bytes.
pub(crate) struct CsvRow<R> {
    pub row: R,
    /// `file:line` of the record.
    pub origin: String,
    /// The record as it stands in the file.
    pub raw: Vec<u8>,
}

/// Reads every record of a CSV file with a header line. A record that does not deserialise
/// into `R` becomes a [`Rejected`] carrying the record's raw bytes, unchanged.
pub(crate) fn csv_rows<R: serde::de::DeserializeOwned>(
    bytes: &[u8],
    origin: &str,
    kind: EventKind,
) -> anyhow::Result<Vec<Result<CsvRow<R>, Rejected>>> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(bytes);
    let headers = reader
        .headers()
        .cloned()
        .map_err(|e| anyhow::anyhow!("{origin}: no header line: {e}"))?;
    let mut out = Vec::new();
    let mut record = csv::StringRecord::new();
    loop {
        let start = reader.position().byte() as usize;
        let line = reader.position().line();
        let at = format!("{origin}:{line}");
        let read = reader.read_record(&mut record);
        let end = reader.position().byte() as usize;
        let raw = || {
            bytes
                .get(start..end)
                .unwrap_or_default()
                .trim_ascii_end()
                .to_vec()
        };
        match read {
            Ok(false) => break,
            Ok(true) => out.push(match record.deserialize::<R>(Some(&headers)) {
                Ok(row) => Ok(CsvRow {
                    row,
                    origin: at,
                    raw: raw(),
                }),
                Err(e) => Err(Rejected {
                    kind,
                    reason: format!("malformed row: {e}"),
                    origin: at,
                    raw: raw(),
                }),
            }),
            Err(e) => out.push(Err(Rejected {
                kind,
                reason: format!("unreadable CSV row: {e}"),
                origin: at,
                raw: raw(),
            })),
        }
    }
    Ok(out)
}

/// Parses a 20-byte hex address, requiring the `0x` prefix and exactly 40 hex digits.
pub(crate) fn parse_address(field: &str, text: &str) -> Result<Address, String> {
    let t = text.trim();
    if t.len() != 42 || !t.starts_with("0x") || !t[2..].bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("{field} {text:?} is not a 20-byte hex address"));
    }
    t.parse()
        .map_err(|_| format!("{field} {text:?} is not a 20-byte hex address"))
}

/// Parses a 32-byte hex hash.
pub(crate) fn parse_hash(field: &str, text: &str) -> Result<B256, String> {
    let t = text.trim();
    if t.len() != 66 || !t.starts_with("0x") {
        return Err(format!("{field} {text:?} is not a 32-byte hex hash"));
    }
    t.parse()
        .map_err(|_| format!("{field} {text:?} is not a 32-byte hex hash"))
}

/// Decimals of an Aave reserve by symbol, as the Polygon export's README gives them.
pub(crate) fn polygon_decimals(symbol: &str) -> u8 {
    match symbol {
        "USDC" | "USDT" => 6,
        "WBTC" => 8,
        _ => 18,
    }
}
