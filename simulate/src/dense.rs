//! The dense chain of the side-by-side benchmark: one Uniswap-V2-style pair
//! (`FixtureDensePair`) that emits `swaps` × (`Sync`, `Swap`) in each of `blocks` blocks, with
//! Uniswap V2's event signatures and plausible constant-product amounts.

use alloy::primitives::aliases::U112;
use alloy::primitives::{Address, U256};
use alloy::providers::{Provider, ProviderBuilder};
use anyhow::Context as _;

use crate::contracts::{FixtureDensePair, FixtureToken};

/// What was built.
#[derive(Debug, Clone)]
pub struct DenseChain {
    pub chain_id: u64,
    pub pair: Address,
    pub token0: Address,
    pub token1: Address,
    /// The block of the pair's deployment (the first block with its logs is the next one).
    pub deployed_at: u64,
    /// The last block with logs.
    pub head: u64,
    pub swaps: u64,
}

/// Deploys two tokens and the pair on the node at `rpc_url` (anvil, automining, unlocked dev
/// accounts) and mines `blocks` blocks of `swaps_per_block` swaps each, one transaction per
/// block. Transactions are sent with explicit nonces and gas and each block mined by
/// `evm_mine`, without waiting for receipts; the head is checked at the end.
pub async fn build(rpc_url: &str, blocks: u64, swaps_per_block: u64) -> anyhow::Result<DenseChain> {
    let provider = ProviderBuilder::new()
        .disable_recommended_fillers()
        .with_gas_estimation()
        .with_simple_nonce_management()
        .fetch_chain_id()
        .connect_http(rpc_url.parse().context("invalid rpc url")?)
        .erased();
    let chain_id = provider
        .get_chain_id()
        .await
        .context("node not reachable")?;
    let from = *provider
        .get_accounts()
        .await?
        .first()
        .context("node has no unlocked accounts")?;
    let a = FixtureToken::deploy_builder(&provider, "Dense WETH".into(), "WETH".into(), 18)
        .from(from)
        .deploy()
        .await?;
    let b = FixtureToken::deploy_builder(&provider, "Dense USDC".into(), "USDC".into(), 6)
        .from(from)
        .deploy()
        .await?;
    // 10,000 WETH (18 decimals) against 30,000,000 USDC (6 decimals), whichever sorts first.
    let (weth, usdc) = (10_000u128 * 10u128.pow(18), 30_000_000u128 * 10u128.pow(6));
    let (r0, r1) = if a < b { (weth, usdc) } else { (usdc, weth) };
    let pair = FixtureDensePair::deploy_builder(&provider, a, b, U112::from(r0), U112::from(r1))
        .from(from)
        .deploy()
        .await?;
    let contract = FixtureDensePair::new(pair, &provider);
    let deployed_at = provider.get_block_number().await?;
    let token0 = contract.token0().call().await?;
    let token1 = contract.token1().call().await?;
    let plain = ProviderBuilder::new()
        .disable_recommended_fillers()
        .connect_http(rpc_url.parse()?);
    let mut nonce = plain.get_transaction_count(from).await?;
    // Gas of one burst, estimated once (every burst of the same size costs about the same).
    let probe = contract
        .burst(U256::from(swaps_per_block), from)
        .from(from)
        .into_transaction_request();
    let gas = plain.estimate_gas(probe).await? * 3 / 2;
    let gas_price = plain.get_gas_price().await? * 2;
    // One block per burst: automine off, each burst sent, then its block mined.
    plain
        .raw_request::<_, ()>("evm_setAutomine".into(), (false,))
        .await
        .context("evm_setAutomine")?;
    for _ in 0..blocks {
        let tx = contract
            .burst(U256::from(swaps_per_block), from)
            .from(from)
            .nonce(nonce)
            .gas(gas)
            .gas_price(gas_price)
            .into_transaction_request();
        // Receipts are not awaited: the head and the log count the benchmark checks confirm
        // every burst landed.
        drop(plain.send_transaction(tx).await?);
        plain
            .raw_request::<_, String>("evm_mine".into(), ())
            .await
            .context("evm_mine")?;
        nonce += 1;
    }
    plain
        .raw_request::<_, ()>("evm_setAutomine".into(), (true,))
        .await
        .context("evm_setAutomine")?;
    let head = plain.get_block_number().await?;
    anyhow::ensure!(
        head == deployed_at + blocks,
        "expected head {} after {blocks} bursts, node is at {head}",
        deployed_at + blocks
    );
    Ok(DenseChain {
        chain_id,
        pair,
        token0,
        token1,
        deployed_at,
        head,
        swaps: blocks * swaps_per_block,
    })
}

/// A chains.toml for `chainfold ingest rpc` that follows the dense pair.
pub fn chains_toml(chain: &DenseChain, rpc_url: &str) -> String {
    format!(
        "[[chain]]\nchain_id = {}\nname = \"dense\"\nrpc_url = \"{rpc_url}\"\nconfirmations = 0\nstart_block = {}\npoll_interval = \"100ms\"\n\n[[chain.contract]]\naddress = \"{:#x}\"\nkind = \"uniswap_v2_pair\"\n",
        chain.chain_id, chain.deployed_at, chain.pair
    )
}
