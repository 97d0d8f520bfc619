//! Kafka topic names, in one place (vector's STYLE.md). Every topic has a `.dlq` sibling that
//! receives what could not be decoded or folded, with the reason in its headers.
//!
//! Names are versioned (`.v1`): a breaking change to the envelope publishes to a new topic
//! instead of confusing old consumers.

/// Lending events (deposit, borrow, repay, redeem, liquidation), keyed by wallet.
pub const LENDING: &str = "chainfold.lending.v1";
/// AMM events (swaps), keyed by pool.
pub const AMM: &str = "chainfold.amm.v1";
/// Oracle price updates (Chainlink `AnswerUpdated`), keyed by feed.
pub const ORACLE: &str = "chainfold.oracle.v1";
/// ERC-20 transfers of watched tokens, keyed by the token.
pub const TRANSFERS: &str = "chainfold.transfers.v1";
/// Chain heads as the live ingest processes them, keyed by chain id (not an event topic: no
/// DLQ; the projector keeps the last head per chain for finality).
pub const BLOCKS: &str = "chainfold.blocks.v1";
/// Seals (`domain::seal`): after a chain's events are acknowledged, the publisher says which
/// blocks are complete below which offsets, keyed by chain id; the risk worker reads them.
pub const SEALS: &str = "chainfold.seals.v1";
/// Wallet credit scores as the scorer computes them, keyed by wallet.
pub const SCORES: &str = "chainfold.scores.v1";
/// Off-chain attestations about wallets, keyed by wallet.
pub const ATTESTATIONS: &str = "chainfold.attestations.v1";
/// Lending decisions (on request and when a requester's score crosses its band), keyed by
/// wallet; `chainfold actuate` applies them on-chain.
pub const DECISIONS: &str = "chainfold.decisions.v1";
/// Risk alerts (sandwiches, flash-loan attacks, drains, …), keyed by chain id.
pub const RISK: &str = "chainfold.risk.v1";
/// Suffix of a topic's dead-letter sibling.
pub const DLQ_SUFFIX: &str = ".dlq";

/// The dead-letter topic of `topic`.
pub fn dlq(topic: &str) -> String {
    format!("{topic}{DLQ_SUFFIX}")
}

/// Header names of dead-letter records (event records carry none: see `ingest::publish`).
pub mod headers {
    /// On a DLQ record: why it was dead-lettered.
    pub const DLQ_REASON: &str = "dlq_reason";
    /// On a DLQ record: the stage that rejected it (`ingest`, `projector`).
    pub const DLQ_STAGE: &str = "dlq_stage";
    /// On a DLQ record: where the original came from (`topic/partition/offset` or a file row).
    pub const DLQ_ORIGIN: &str = "dlq_origin";
}
