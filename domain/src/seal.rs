//! Seals: how a consumer of several partitions knows a stretch of a chain is complete.
//!
//! A chain's events travel on many partitions (lending keyed by wallet, AMM by pool), so no
//! partition alone says "block N is all here". After the events of some blocks are acknowledged
//! by the broker, the publisher (`ingest rpc`, `ingest replay`) sends a [`Seal`] on
//! `chainfold.seals.v1`, keyed by chain id: every event of `chain_id` in `blocks` (or, for
//! recorded data without block numbers, every event published before the seal) lies below
//! `through` in its partition. A consumer that waits until the projector has folded past
//! `through` can read those blocks from the read models whole, whichever replica owns which
//! partition (`chainfold risk` does).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::SCHEMA_VERSION;

/// One partition's bound in a seal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Through {
    pub topic: String,
    pub partition: i32,
    /// The offset after the last sealed record of the chain in this partition.
    pub next_offset: i64,
}

/// A chain's events in `blocks` are published and acknowledged below `through`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seal {
    pub schema_version: u16,
    pub chain_id: u64,
    /// First and last block sealed; `None` when the sealed events carry no block numbers.
    pub blocks: Option<(u64, u64)>,
    pub through: Vec<Through>,
    /// The sealed events are retractions (a reorg orphaned these blocks).
    pub retracted: bool,
}

/// Collects acknowledged deliveries and makes one seal per chain.
#[derive(Debug, Default, Clone)]
pub struct SealBuilder {
    chains: BTreeMap<u64, Pending>,
}

#[derive(Debug, Default, Clone)]
struct Pending {
    blocks: Option<(u64, u64)>,
    through: BTreeMap<(String, i32), i64>,
}

impl SealBuilder {
    /// Records an acknowledged event of `chain_id` at `topic`/`partition`/`offset`.
    pub fn delivered(
        &mut self,
        chain_id: u64,
        block: Option<u64>,
        topic: &str,
        partition: i32,
        offset: i64,
    ) {
        let pending = self.chains.entry(chain_id).or_default();
        let next = pending
            .through
            .entry((topic.to_owned(), partition))
            .or_insert(0);
        *next = (*next).max(offset + 1);
        if let Some(b) = block {
            pending.blocks = Some(match pending.blocks {
                None => (b, b),
                Some((lo, hi)) => (lo.min(b), hi.max(b)),
            });
        }
    }

    /// Widens the block range of `chain_id`'s seal to cover `from..=to` (a backfill range whose
    /// blocks held no event still counts as seen).
    pub fn cover(&mut self, chain_id: u64, from: u64, to: u64) {
        if let Some(pending) = self.chains.get_mut(&chain_id) {
            pending.blocks = Some(match pending.blocks {
                None => (from, to),
                Some((lo, hi)) => (lo.min(from), hi.max(to)),
            });
        }
    }

    /// The seals of everything recorded, one per chain, in chain order.
    pub fn seals(self, retracted: bool) -> Vec<Seal> {
        self.chains
            .into_iter()
            .map(|(chain_id, pending)| Seal {
                schema_version: SCHEMA_VERSION,
                chain_id,
                blocks: pending.blocks,
                through: pending
                    .through
                    .into_iter()
                    .map(|((topic, partition), next_offset)| Through {
                        topic,
                        partition,
                        next_offset,
                    })
                    .collect(),
                retracted,
            })
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.chains.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seal_bounds_each_partition_after_its_last_record_and_spans_the_blocks_seen() {
        let mut b = SealBuilder::default();
        b.delivered(1, Some(10), "amm", 0, 5);
        b.delivered(1, Some(12), "amm", 0, 3);
        b.delivered(1, Some(11), "lending", 2, 40);
        b.delivered(137, None, "lending", 2, 41);
        let seals = b.seals(false);
        assert_eq!(seals.len(), 2);
        assert_eq!(seals[0].chain_id, 1);
        assert_eq!(seals[0].blocks, Some((10, 12)));
        assert_eq!(
            seals[0].through,
            vec![
                Through {
                    topic: "amm".into(),
                    partition: 0,
                    next_offset: 6
                },
                Through {
                    topic: "lending".into(),
                    partition: 2,
                    next_offset: 41
                },
            ]
        );
        assert_eq!(
            seals[1].blocks, None,
            "recorded events without blocks seal no block range"
        );
        assert_eq!(seals[1].through[0].next_offset, 42);
    }
}
