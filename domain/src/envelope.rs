//! The envelope every event travels in, and the typed events inside it.

use std::fmt;

use alloy_primitives::{keccak256, Address, B256};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::amount::{TokenAmount, UsdValue};

/// Version of the payload below. Bump on a breaking change; consumers dead-letter versions they
/// do not know rather than guess.
pub const SCHEMA_VERSION: u16 = 1;

/// Deterministic identity of an event: the same on every replay of the same source, so upserts
/// keyed by it make replays harmless.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventId(pub B256);

impl EventId {
    /// `keccak256(chain_id ‖ tx_hash ‖ log_index)`: the identity of an on-chain log.
    pub fn of_log(chain_id: u64, tx_hash: &B256, log_index: u32) -> Self {
        let mut buf = Vec::with_capacity(8 + 32 + 4);
        buf.extend_from_slice(&chain_id.to_be_bytes());
        buf.extend_from_slice(tx_hash.as_slice());
        buf.extend_from_slice(&log_index.to_be_bytes());
        EventId(keccak256(&buf))
    }

    /// `keccak256(chain_id ‖ dataset ‖ 0 ‖ record key)`: the identity of a recorded row whose
    /// source gives no log index (the record key is whatever the source guarantees unique).
    pub fn of_record(chain_id: u64, dataset: &str, record_key: &str) -> Self {
        let mut buf = Vec::with_capacity(8 + dataset.len() + 1 + record_key.len());
        buf.extend_from_slice(&chain_id.to_be_bytes());
        buf.extend_from_slice(dataset.as_bytes());
        buf.push(0);
        buf.extend_from_slice(record_key.as_bytes());
        EventId(keccak256(&buf))
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A block by number and, where the source knows it, hash (graph-node's `BlockPtr`). Recorded
/// sources often know only the number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BlockRef {
    pub number: u64,
    pub hash: Option<B256>,
}

/// Where an event came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Source {
    /// Decoded from a log read over JSON-RPC.
    Rpc,
    /// Replayed from a recorded data set; `record` is the row's key in that data set.
    Replay { dataset: String, record: String },
}

/// One normalised chain event as published to Kafka. Immutable once published.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub schema_version: u16,
    pub event_id: EventId,
    pub chain_id: u64,
    /// `None` where the source records no block (the Polygon export's `blockNumber` is a
    /// timestamp, the RPI liquidations have none): never invented.
    pub block: Option<BlockRef>,
    /// `None` where the source records no transaction (RPI liquidations).
    pub tx_hash: Option<B256>,
    /// `None` where the source records no log index (recorded exports).
    pub log_index: Option<u32>,
    /// `None` where the source records no time (mev-inspect swaps carry only block numbers).
    pub block_time: Option<DateTime<Utc>>,
    pub source: Source,
    pub event: DefiEvent,
}

impl Envelope {
    /// The entity whose order matters, used as the Kafka key: the wallet for lending events,
    /// the pool for AMM events.
    pub fn partition_key(&self) -> Address {
        self.event.partition_key()
    }
}

/// A typed DeFi event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum DefiEvent {
    Deposit(LendingFlow),
    Borrow(LendingFlow),
    Repay(LendingFlow),
    /// Aave V2 `RedeemUnderlying` / `Withdraw`.
    Redeem(LendingFlow),
    Liquidation(Liquidation),
    Swap(Swap),
}

impl DefiEvent {
    /// The wallet (lending) or pool (AMM) the event belongs to.
    pub fn partition_key(&self) -> Address {
        match self {
            DefiEvent::Deposit(f)
            | DefiEvent::Borrow(f)
            | DefiEvent::Repay(f)
            | DefiEvent::Redeem(f) => f.wallet,
            DefiEvent::Liquidation(l) => l.wallet,
            DefiEvent::Swap(s) => s.pool,
        }
    }

    /// The lending action, or `None` for AMM events.
    pub fn lending_action(&self) -> Option<LendingAction> {
        Some(match self {
            DefiEvent::Deposit(_) => LendingAction::Deposit,
            DefiEvent::Borrow(_) => LendingAction::Borrow,
            DefiEvent::Repay(_) => LendingAction::Repay,
            DefiEvent::Redeem(_) => LendingAction::Redeem,
            DefiEvent::Liquidation(_) => LendingAction::Liquidation,
            DefiEvent::Swap(_) => return None,
        })
    }
}

/// The five lending actions the read models count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LendingAction {
    Deposit,
    Borrow,
    Repay,
    Redeem,
    Liquidation,
}

impl LendingAction {
    pub const ALL: [LendingAction; 5] = [
        LendingAction::Deposit,
        LendingAction::Borrow,
        LendingAction::Repay,
        LendingAction::Redeem,
        LendingAction::Liquidation,
    ];

    /// The name stored in Postgres (`lending_event.action`).
    pub fn as_str(self) -> &'static str {
        match self {
            LendingAction::Deposit => "deposit",
            LendingAction::Borrow => "borrow",
            LendingAction::Repay => "repay",
            LendingAction::Redeem => "redeem",
            LendingAction::Liquidation => "liquidation",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        LendingAction::ALL.into_iter().find(|a| a.as_str() == text)
    }
}

/// A lending-market reserve (the underlying token).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Reserve {
    pub address: Address,
    pub symbol: String,
    pub decimals: u8,
}

/// Deposit, borrow, repay or redeem of one reserve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LendingFlow {
    /// `aave_v2`, `aave_v3`, …
    pub protocol: String,
    /// The wallet whose position the event changes (the key of the lending topic).
    pub wallet: Address,
    /// The other party where the event names one (repayer, redeem recipient, borrow caller).
    pub counterparty: Option<Address>,
    pub reserve: Reserve,
    pub amount: TokenAmount,
    /// USD price of one whole token at the event, where the source gives one.
    pub price_usd: Option<UsdValue>,
}

/// A liquidation of `wallet`: a liquidator repaid `debt_covered` of the debt reserve and seized
/// `collateral_amount` of the collateral reserve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Liquidation {
    pub protocol: String,
    /// The liquidated borrower.
    pub wallet: Address,
    pub liquidator: Option<Address>,
    pub collateral: Reserve,
    pub collateral_amount: TokenAmount,
    pub collateral_price_usd: Option<UsdValue>,
    pub debt: Reserve,
    pub debt_covered: TokenAmount,
    pub debt_price_usd: Option<UsdValue>,
}

/// One swap through one pool (a multi-hop trade is one `Swap` per hop).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Swap {
    /// `uniswap_v2`, `uniswap_v3`, `balancer_v1`, `curve`, `0x`, `bancor`.
    pub protocol: String,
    pub pool: Address,
    pub sender: Address,
    pub recipient: Address,
    pub token_in: Address,
    pub amount_in: TokenAmount,
    pub token_out: Address,
    pub amount_out: TokenAmount,
    /// Position of the transaction in its block.
    pub tx_position: u32,
    /// Call path inside the transaction (recorded from traces); empty for log-decoded swaps.
    pub trace_address: Vec<u32>,
    /// The call reverted: the swap is kept for the record but moves no volume.
    pub reverted: bool,
}

impl LendingFlow {
    /// USD value at the event, where a price is known.
    pub fn amount_usd(&self) -> Option<UsdValue> {
        self.price_usd
            .as_ref()
            .map(|p| UsdValue::of(&self.amount, self.reserve.decimals, p))
    }
}

impl Liquidation {
    /// USD value of the debt covered: `debt_covered / 10^decimals(debt) × debt price`.
    pub fn amount_usd(&self) -> Option<UsdValue> {
        self.debt_price_usd
            .as_ref()
            .map(|p| UsdValue::of(&self.debt_covered, self.debt.decimals, p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Envelope {
        Envelope {
            schema_version: SCHEMA_VERSION,
            event_id: EventId::of_record(137, "polygon", "681d38fed63812d4655f571a"),
            chain_id: 137,
            block: None,
            tx_hash: Some(B256::repeat_byte(0xab)),
            log_index: None,
            block_time: DateTime::from_timestamp(1_629_178_166, 0),
            source: Source::Replay {
                dataset: "polygon".into(),
                record: "681d".into(),
            },
            event: DefiEvent::Deposit(LendingFlow {
                protocol: "aave_v2".into(),
                wallet: Address::repeat_byte(0x11),
                counterparty: None,
                reserve: Reserve {
                    address: Address::repeat_byte(0x22),
                    symbol: "USDC".into(),
                    decimals: 6,
                },
                amount: TokenAmount::parse_integer("2000000000").expect("valid"),
                price_usd: Some(UsdValue::parse("0.99").expect("valid")),
            }),
        }
    }

    #[test]
    fn envelope_round_trips_through_json() {
        let env = sample();
        let json = serde_json::to_vec(&env).expect("serialise");
        let back: Envelope = serde_json::from_slice(&json).expect("deserialise");
        assert_eq!(back, env);
        let text = String::from_utf8(json).expect("utf8");
        assert!(text.contains("\"type\":\"deposit\""), "{text}");
        assert!(text.contains("\"amount\":\"2000000000\""), "{text}");
    }

    #[test]
    fn event_ids_are_deterministic_and_distinct() {
        let tx = B256::repeat_byte(1);
        assert_eq!(EventId::of_log(1, &tx, 3), EventId::of_log(1, &tx, 3));
        assert_ne!(EventId::of_log(1, &tx, 3), EventId::of_log(1, &tx, 4));
        assert_ne!(EventId::of_log(1, &tx, 3), EventId::of_log(137, &tx, 3));
        assert_ne!(
            EventId::of_record(1, "a", "bc"),
            EventId::of_record(1, "ab", "c")
        );
    }

    #[test]
    fn lending_events_are_keyed_by_wallet() {
        let env = sample();
        assert_eq!(env.partition_key(), Address::repeat_byte(0x11));
        assert_eq!(env.event.lending_action(), Some(LendingAction::Deposit));
    }
}
