//! `chainfold simulate`: a local chain that behaves like the real one.
//!
//! Fixture contracts (Solidity in `fixtures/contracts`, compiled offline with solc-js into
//! `fixtures/build`) emit the real event signatures: tokens, a Uniswap-V2-style pair with
//! constant-product maths and `Sync`, an Aave-V2-style lending pool with health factors,
//! liquidations and flash loans, and Chainlink-style aggregators. The simulator deploys them on
//! anvil and drives recorded activity through them as transactions:
//! - the swap sequences of the busiest pools in `swaps.csv`, scaled to the fixture pools;
//! - lending flows of the Polygon wallet histories (deposit, borrow, repay, redeem), valued in
//!   USD as recorded and converted at the fixture oracle price;
//! - hourly oracle answers from the recorded WETH and WBTC USD prices (May–June 2022);
//! - scripted scenarios with known labels (flash-loan price manipulation, liquidity drain, oracle
//!   crash with liquidations), written as JSON lines for detectors' tests.
//!
//! - [`anvil`]: starting and talking to anvil; [`contracts`]: the fixture bindings.
//! - [`dense`]: the dense chain of the side-by-side benchmark (one pair, many swaps per block).
//! - [`actuate`]: `chainfold actuate`, lending decisions applied on the fixture pool.
//! - [`mockchain`]: the synthetic JSON-RPC chain of the reliability scenarios.

pub mod actuate;
pub mod anvil;
pub mod contracts;
pub mod dense;
mod drive;
pub mod mockchain;

use std::path::PathBuf;

pub use contracts::Deployment;
pub use drive::{prices, run, Label, Sim, Summary};

/// `chainfold simulate` settings.
#[derive(Debug, Clone, clap::Args)]
pub struct SimulateArgs {
    /// JSON-RPC URL of the local node to drive (anvil). When omitted, anvil is started on a free
    /// loopback port and kept running (until Ctrl-C) so `chainfold ingest rpc` can follow it.
    #[arg(long = "rpc-url", env = "CHAINFOLD_SIM_RPC_URL")]
    pub rpc_url: Option<String>,
    /// Chain id of the node started when no `--rpc-url` is given.
    #[arg(long = "chain-id", default_value_t = 31337)]
    pub chain_id: u64,
    /// Directory holding the recorded data sets (bundled `data/` or `../shared/data`).
    #[arg(long = "data-dir", env = "CHAINFOLD_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
    /// Recorded swaps replayed per pool.
    #[arg(long = "swaps", default_value_t = 200)]
    pub swaps: usize,
    /// How many of the busiest recorded pools to replay (each onto its own fixture pair).
    #[arg(long = "pools", default_value_t = 2)]
    pub pools: usize,
    /// Polygon wallets whose lending histories are replayed.
    #[arg(long = "wallets", default_value_t = 6)]
    pub wallets: usize,
    /// Hourly oracle answers replayed per feed.
    #[arg(long = "price-hours", default_value_t = 120)]
    pub price_hours: usize,
    /// Skip the labelled attack scenarios.
    #[arg(long = "no-scenarios")]
    pub no_scenarios: bool,
    /// Where the scenario labels are written (JSON lines).
    #[arg(long = "labels", default_value = "simulate-labels.jsonl")]
    pub labels: PathBuf,
    /// Where a chains.toml for the deployment is written (for `chainfold ingest rpc`).
    #[arg(long = "chains-out", default_value = "chains.simulate.toml")]
    pub chains_out: PathBuf,
    /// Exit when done even when this process started anvil (the chain goes with it).
    #[arg(long = "exit")]
    pub exit: bool,
}
