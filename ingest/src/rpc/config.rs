//! `chains.toml`: the chains one `chainfold ingest rpc` process follows.
//!
//! ```toml
//! [[chain]]
//! chain_id = 1
//! name = "ethereum"
//! rpc_url = "https://eth-mainnet.example/v2/KEY"   # secret: never logged (see `redacted`)
//! ws_url = "wss://eth-mainnet.example/v2/KEY"      # optional: newHeads push, else polling
//! confirmations = 12      # a block is final this many blocks below the head
//! start_block = 19000000  # where a chain with no checkpoint starts
//!
//! [[chain.contract]]
//! address = "0x87870Bca3F3fD6335C3F4ce8392D69350B4fA4E2"
//! kind = "aave_v3_pool"
//!
//! [[chain.contract]]
//! address = "0x5f4eC3Df9cbd43714FE2740f5E3616155c5b8419"
//! kind = "chainlink_aggregator"
//! asset = "0xC02aaA39b223FE8D0A0e5C4F27eAD9083C756Cc2"   # the token this feed prices
//!
//! [[chain.token]]   # optional: otherwise symbol() and decimals() are read from the chain
//! address = "0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48"
//! symbol = "USDC"
//! decimals = 6
//! ```

use std::path::Path;
use std::time::Duration;

use alloy_primitives::Address;
use anyhow::Context as _;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::abi::{ContractKind, FactoryKind};

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainsFile {
    #[serde(rename = "chain")]
    pub chains: Vec<ChainConfig>,
}

/// One chain to follow.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainConfig {
    pub chain_id: u64,
    pub name: String,
    #[serde(deserialize_with = "secret")]
    pub rpc_url: SecretString,
    #[serde(default, deserialize_with = "optional_secret")]
    pub ws_url: Option<SecretString>,
    #[serde(default)]
    pub confirmations: u64,
    #[serde(default)]
    pub start_block: u64,
    /// Blocks kept (hashes and published events) to detect and undo reorgs; deeper reorgs stop
    /// the chain's follower with an error.
    #[serde(default = "default_reorg_window")]
    pub reorg_window: u64,
    /// Largest `eth_getLogs` range tried in backfill; halved when a provider refuses.
    #[serde(default = "default_max_range")]
    pub max_range: u64,
    /// `eth_getLogs` requests in flight at once during backfill.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// How often to poll for a new head when no WebSocket push arrives, e.g. "1s", "50ms".
    #[serde(default = "default_poll", deserialize_with = "duration")]
    pub poll_interval: Duration,
    #[serde(default, rename = "contract")]
    pub contracts: Vec<ContractConfig>,
    #[serde(default, rename = "token")]
    pub tokens: Vec<TokenConfig>,
    /// Factories whose announced pools are watched from their creation on.
    #[serde(default, rename = "factory")]
    pub factories: Vec<FactoryConfig>,
    /// Wallets whose ERC-20 `Transfer`s in and out are indexed in every token, watched or not
    /// (two topic-filtered `eth_getLogs` per range beside the contracts' own).
    #[serde(default)]
    pub watch_wallets: Vec<Address>,
}

/// A watched factory.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FactoryConfig {
    pub address: Address,
    #[serde(deserialize_with = "factory_kind")]
    pub kind: FactoryKind,
}

fn factory_kind<'de, D: serde::Deserializer<'de>>(d: D) -> Result<FactoryKind, D::Error> {
    let text = String::deserialize(d)?;
    FactoryKind::parse(&text).ok_or_else(|| {
        serde::de::Error::custom(format!(
            "unknown factory kind `{text}` (expected one of: {})",
            FactoryKind::NAMES.join(", ")
        ))
    })
}

fn default_reorg_window() -> u64 {
    128
}
fn default_max_range() -> u64 {
    2000
}
fn default_concurrency() -> usize {
    4
}
fn default_poll() -> Duration {
    Duration::from_secs(1)
}

fn secret<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SecretString, D::Error> {
    String::deserialize(d).map(SecretString::from)
}

fn optional_secret<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<SecretString>, D::Error> {
    Option::<String>::deserialize(d).map(|s| s.map(SecretString::from))
}

fn duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    chainfold_platform::config::parse_duration(&text).map_err(serde::de::Error::custom)
}

/// A watched contract.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContractConfig {
    pub address: Address,
    #[serde(deserialize_with = "contract_kind")]
    pub kind: ContractKind,
    /// For a feed: the token it prices.
    #[serde(default)]
    pub asset: Option<Address>,
    /// For a feed: its description (else read from the feed).
    #[serde(default)]
    pub description: Option<String>,
}

fn contract_kind<'de, D: serde::Deserializer<'de>>(d: D) -> Result<ContractKind, D::Error> {
    let text = String::deserialize(d)?;
    ContractKind::parse(&text).ok_or_else(|| {
        serde::de::Error::custom(format!(
            "unknown contract kind `{text}` (expected one of: {})",
            ContractKind::NAMES.join(", ")
        ))
    })
}

/// Token metadata given in the file instead of read from the chain.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    pub address: Address,
    pub symbol: String,
    pub decimals: u8,
}

impl ChainsFile {
    /// Reads and checks `path`. Errors name the file and what is wrong in it.
    pub fn load(path: &Path) -> anyhow::Result<ChainsFile> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("could not read chains file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("invalid chains file {}", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<ChainsFile> {
        let file: ChainsFile = toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut ids = std::collections::HashSet::new();
        for chain in &file.chains {
            anyhow::ensure!(
                ids.insert(chain.chain_id),
                "chain id {} appears twice",
                chain.chain_id
            );
            anyhow::ensure!(
                !chain.contracts.is_empty() || !chain.factories.is_empty(),
                "chain {} watches no contracts and no factories",
                chain.name
            );
            anyhow::ensure!(
                chain.max_range >= 1,
                "chain {}: max_range must be at least 1",
                chain.name
            );
            anyhow::ensure!(
                chain.concurrency >= 1,
                "chain {}: concurrency must be at least 1",
                chain.name
            );
            anyhow::ensure!(
                chain.reorg_window >= 2,
                "chain {}: reorg_window must be at least 2",
                chain.name
            );
            for url in std::iter::once(&chain.rpc_url).chain(chain.ws_url.as_ref()) {
                url::Url::parse(url.expose_secret()).map_err(|e| {
                    anyhow::anyhow!(
                        "chain {}: invalid URL {}: {e}",
                        chain.name,
                        redacted(url.expose_secret())
                    )
                })?;
            }
        }
        anyhow::ensure!(!file.chains.is_empty(), "no [[chain]] configured");
        Ok(file)
    }
}

/// A URL fit for logs: scheme, host and port only; a path, query or credentials (where
/// providers put API keys) become `…`.
pub fn redacted(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => {
            let host = u.host_str().unwrap_or("?");
            let port = u.port().map(|p| format!(":{p}")).unwrap_or_default();
            let hidden = (u.path() != "/" && !u.path().is_empty())
                || u.query().is_some()
                || !u.username().is_empty()
                || u.password().is_some();
            format!(
                "{}://{host}{port}{}",
                u.scheme(),
                if hidden { "/…" } else { "" }
            )
        }
        Err(_) => "<unparseable URL>".to_owned(),
    }
}

/// `message` with every occurrence of the secret `url` (with or without a trailing slash, or
/// just its path and query) replaced by its redacted form: transport errors quote the URL.
pub fn scrub(message: &str, url: &str) -> String {
    let shown = redacted(url);
    let mut out = message.replace(url, &shown);
    let trimmed = url.trim_end_matches('/');
    if !trimmed.is_empty() {
        out = out.replace(trimmed, &shown);
    }
    if let Ok(parsed) = url::Url::parse(url) {
        let mut secret = parsed.path().to_owned();
        if let Some(q) = parsed.query() {
            secret = format!("{secret}?{q}");
        }
        if secret.len() > 1 {
            out = out.replace(&secret, "/…");
        }
        if let Some(password) = parsed.password() {
            out = out.replace(password, "…");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
        [[chain]]
        chain_id = 31337
        name = "local"
        rpc_url = "http://127.0.0.1:8545"
        ws_url = "ws://127.0.0.1:8545"
        confirmations = 2
        poll_interval = "50ms"

        [[chain.contract]]
        address = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
        kind = "uniswap_v2_pair"

        [[chain.contract]]
        address = "0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512"
        kind = "chainlink_aggregator"
        asset = "0x9fE46736679d2D9a65F0992F2272dE9f3c7fa6e0"

        [[chain.token]]
        address = "0x9fE46736679d2D9a65F0992F2272dE9f3c7fa6e0"
        symbol = "WETH"
        decimals = 18
    "#;

    #[test]
    fn a_chains_file_parses_with_defaults() {
        let file = ChainsFile::parse(FILE).expect("valid");
        let chain = &file.chains[0];
        assert_eq!((chain.chain_id, chain.confirmations), (31337, 2));
        assert_eq!(chain.poll_interval, Duration::from_millis(50));
        assert_eq!(chain.reorg_window, 128);
        assert_eq!(chain.contracts[0].kind, ContractKind::UniswapV2Pair);
        assert_eq!(chain.tokens[0].decimals, 18);
    }

    #[test]
    fn mistakes_are_named() {
        let err = ChainsFile::parse(&FILE.replace("uniswap_v2_pair", "uniswap_v9"))
            .expect_err("unknown kind");
        assert!(
            format!("{err:#}").contains("unknown contract kind `uniswap_v9`"),
            "{err:#}"
        );
        let twice = format!(
            "{FILE}\n{}",
            &FILE[FILE.find("[[chain]]").expect("has chain")..]
        );
        let err = ChainsFile::parse(&twice).expect_err("duplicate");
        assert!(
            format!("{err:#}").contains("chain id 31337 appears twice"),
            "{err:#}"
        );
        let err =
            ChainsFile::parse(&FILE.replace("confirmations", "confirmatons")).expect_err("typo");
        assert!(
            format!("{err:#}").contains("unknown field `confirmatons`"),
            "{err:#}"
        );
    }

    #[test]
    fn the_example_file_parses() {
        let file = ChainsFile::parse(include_str!("../../../chains.example.toml")).expect("valid");
        assert_eq!(file.chains[0].contracts.len(), 4);
        assert_eq!(file.chains[0].factories[0].kind, FactoryKind::UniswapV2);
        assert_eq!(file.chains[0].confirmations, 12);
    }

    #[test]
    fn secrets_in_urls_are_redacted() {
        assert_eq!(
            redacted("https://eth-mainnet.g.alchemy.com/v2/SECRETKEY"),
            "https://eth-mainnet.g.alchemy.com/…"
        );
        assert_eq!(
            redacted("https://user:pw@node.example:8545"),
            "https://node.example:8545/…"
        );
        assert_eq!(redacted("http://127.0.0.1:8545"), "http://127.0.0.1:8545");
        assert!(!redacted("wss://x.example/ws?apikey=SECRET").contains("SECRET"));
        let url = "https://eth.example/v2/SECRETKEY";
        let message = "error sending request for url (https://eth.example/v2/SECRETKEY/): refused; path /v2/SECRETKEY";
        let scrubbed = scrub(message, url);
        assert!(!scrubbed.contains("SECRETKEY"), "{scrubbed}");
        assert!(scrubbed.contains("https://eth.example/…"), "{scrubbed}");
    }
}
