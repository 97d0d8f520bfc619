//! Reading envelopes from the log: chainfold's reader of the tagged event (tag first: no
//! buffering) against serde's derived reader of the same bytes (buffers every event), in one
//! run, medians of 5 interleaved rounds.
//!
//! `cargo bench -p chainfold-domain --bench envelope -- [messages]` (default 200,000 swaps,
//! as the dense-chain benchmark publishes them).

use std::time::{Duration, Instant};

use alloy_primitives::{Address, B256, U256};
use chainfold_domain::envelope::{tagged, BlockRef, Source, Swap};
use chainfold_domain::{DefiEvent, Envelope, EventId, TokenAmount, SCHEMA_VERSION};
use chrono::{DateTime, Utc};
use serde::Deserialize;

/// The envelope with the derived, buffering reader of its event: the baseline.
#[derive(Deserialize)]
#[allow(dead_code)] // read to be measured, never looked at
struct BufferedEnvelope {
    schema_version: u16,
    event_id: EventId,
    chain_id: u64,
    block: Option<BlockRef>,
    tx_hash: Option<B256>,
    log_index: Option<u32>,
    block_time: Option<DateTime<Utc>>,
    source: Source,
    event: tagged::Buffered,
    #[serde(default)]
    retracted: bool,
}

fn swap(i: u64) -> Vec<u8> {
    let envelope = Envelope {
        schema_version: SCHEMA_VERSION,
        retracted: false,
        event_id: EventId::of_log(31337, &B256::from(U256::from(i)), (i % 100) as u32),
        chain_id: 31337,
        block: Some(BlockRef {
            number: i / 100,
            hash: Some(B256::from(U256::from(i / 100 + 1))),
        }),
        tx_hash: Some(B256::from(U256::from(i))),
        log_index: Some((i % 100) as u32),
        block_time: DateTime::from_timestamp(1_700_000_000 + (i / 100) as i64, 0),
        source: Source::Rpc,
        event: DefiEvent::Swap(Swap {
            protocol: "uniswap_v2".into(),
            pool: Address::repeat_byte(1),
            sender: Address::repeat_byte(2),
            recipient: Address::repeat_byte(3),
            token_in: Address::repeat_byte(4),
            amount_in: TokenAmount(U256::from(1_000_000_000_000_000_000u128 + u128::from(i))),
            token_out: Address::repeat_byte(5),
            amount_out: TokenAmount(U256::from(2_000_000_000u64 + i)),
            tx_position: (i % 50) as u32,
            trace_address: Vec::new(),
            reverted: false,
            v3: None,
        }),
    };
    serde_json::to_vec(&envelope).expect("encodes")
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let n: u64 = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .and_then(|a| a.parse().ok())
        .unwrap_or(200_000);
    let payloads: Vec<Vec<u8>> = (0..n).map(swap).collect();
    let bytes: usize = payloads.iter().map(Vec::len).sum();
    let (mut fast, mut buffered) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let started = Instant::now();
        for p in &payloads {
            let env = chainfold_domain::envelope::decode_envelope(p).expect("reads");
            std::hint::black_box(env);
        }
        fast.push(started.elapsed());
        let started = Instant::now();
        for p in &payloads {
            let env: BufferedEnvelope = serde_json::from_slice(p).expect("reads");
            std::hint::black_box(env);
        }
        buffered.push(started.elapsed());
    }
    let (f, b) = (median(fast), median(buffered));
    let per = |d: Duration| d.as_secs_f64() * 1e9 / n as f64;
    println!(
        "envelope decode, {n} swap envelopes ({} bytes each on average), medians of 5:",
        bytes / n as usize
    );
    println!(
        "  derived reader (buffers the event)  {:8.0} ns/msg  {:10.0} msg/s",
        per(b),
        n as f64 / b.as_secs_f64()
    );
    println!(
        "  chainfold reader (tag first)        {:8.0} ns/msg  {:10.0} msg/s  = {:.2}x the derived reader's rate",
        per(f),
        n as f64 / f.as_secs_f64(),
        b.as_secs_f64() / f.as_secs_f64()
    );
}
