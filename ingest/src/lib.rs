//! Ingest: turns chain data into [`Envelope`](chainfold_domain::Envelope)s on Kafka.
//!
//! - [`replay`]: recorded data sets (Aave V2 Polygon wallet transactions, mev-inspect DEX swaps,
//!   Aave V2 Ethereum liquidations) decoded into typed events. Records that cannot be decoded
//!   go to the dead-letter topic with the reason and the raw record; the replay goes on.
//! - [`publish`]: encoding (JSON) and the Kafka producer loop with progress and a summary.
//! - [`rpc`]: `chainfold ingest rpc`, the JSON-RPC follower (alloy): watched contracts' logs
//!   decoded and normalised, reorgs retracted, blocks sealed, one leader per chain.

pub mod publish;
pub mod replay;
pub mod rpc;

/// A record that could not become an event: what was wrong, the raw record, where it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// Which event topic the record was meant for.
    pub kind: EventKind,
    pub reason: String,
    /// `file:row` of the record.
    pub origin: String,
    /// The record's raw text, unchanged.
    pub raw: Vec<u8>,
}

/// Which event topic a record belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    Lending,
    Amm,
}

/// What a decoder yields per record.
pub type Decoded = Result<chainfold_domain::Envelope, Rejected>;
