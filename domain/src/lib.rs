//! chainfold's vocabulary: the [`Envelope`] every event travels in, typed DeFi events, exact
//! token amounts and USD values, Kafka topic names, and the pure folds the projector applies.
//!
//! Layout:
//! - [`aave`]: Aave V2/V3 accounting in exact integers (indices, scaled balances, the health
//!   factor as `getUserAccountData` computes it) as a fold over the pool's events.
//! - [`amount`]: `TokenAmount` (U256, decimal string on the wire, `NUMERIC(78,0)` in Postgres)
//!   and `UsdValue` (exact decimal). Money is never `f64`.
//! - [`codec`]: the envelope's compact binary form on the log (JSON records stay readable).
//! - [`envelope`]: `Envelope`, `EventId`, `BlockRef`, `Source`, `DefiEvent` and the event payloads.
//! - [`number`]: bounded decimal parsing for every number a user or a log supplies as text.
//! - [`seal`]: seals, which tell a consumer of many partitions that a chain's blocks are whole.
//! - [`topics`]: Kafka topic names, one place.
//! - [`attest`]: EIP-712 signatures of attestations and the issuer allow-list check.
//! - [`credit`]: health factor (Aave's formula), shocks, concentration, volatility, and a
//!   wallet's activity features: the scoring inputs, pure and clock-free.
//! - [`profile`]: a wallet's credit profile as an incremental fold (activity and positions), so
//!   the scorer folds each event once instead of re-reading the wallet's history.
//! - [`messages`]: the derived topics' messages, typed (scores, alerts).
//! - [`risk`]: the attack detectors, alert kinds and severities, incident correlation.
//! - [`decision`]: lending decisions (approve, reject, adjust collateral) from a score and a
//!   policy; [`scorecard`]: the score and its reasons from features and attestations.
//! - [`pool`]: AMM pool maths (constant-product and V3 prices, depth); [`stress`]: shock grids
//!   and VaR over positions, in exact decimals.
//! - [`fold`]: pure functions from events to read-model rows (no clock, I/O or randomness), so a
//!   replay of the log rebuilds identical read models.
//!
//! This crate has no tokio, sqlx or rdkafka on purpose: everything here is unit-tested without
//! services.

pub mod aave;
pub mod amount;
pub mod attest;
pub mod codec;
pub mod credit;
pub mod decision;
pub mod envelope;
pub mod fold;
pub mod messages;
pub mod number;
pub mod pool;
pub mod profile;
pub mod risk;
pub mod scorecard;
pub mod seal;
pub mod stress;
pub mod topics;

pub use alloy_primitives::{Address, B256, U256};
pub use amount::{AmountError, TokenAmount, UsdValue};
pub use envelope::{
    BlockRef, ChainHead, CollateralUse, DefiEvent, EModeChange, EModeKind, Envelope, Erc20Transfer,
    EventId, FlashLoan, IsolationChange, IsolationKind, LendingAction, LendingFlow, Liquidation,
    LiquidityChange, LiquidityKind, OracleUpdate, PoolSync, Reserve, ReserveConfig, ReserveUpdate,
    Source, Swap, TokenMetadata, TopicKind, V3State, SCHEMA_VERSION,
};
