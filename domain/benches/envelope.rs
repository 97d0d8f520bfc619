//! Writing and reading envelopes on the log, medians of 5 interleaved rounds in one run:
//! - JSON: chainfold's reader of the tagged event (tag first: no buffering) against serde's
//!   derived reader of the same bytes (buffers every event);
//! - the binary form (`chainfold_domain::codec`, what ingest publishes) against JSON: bytes per
//!   record, encode and decode.
//!
//! `cargo bench -p chainfold-domain --bench envelope -- [messages]` (default 200,000 swaps,
//! as the dense-chain benchmark publishes them).

use std::time::{Duration, Instant};

use alloy_primitives::{Address, B256, U256};
use chainfold_domain::envelope::{tagged, BlockRef, Source, Swap};
use chainfold_domain::{codec, DefiEvent, Envelope, EventId, TokenAmount, SCHEMA_VERSION};
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

fn swap(i: u64) -> Envelope {
    Envelope {
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
    }
}

/// How long `f` takes, once.
fn timed(f: impl FnOnce()) -> Duration {
    let started = Instant::now();
    f();
    started.elapsed()
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
    let envelopes: Vec<Envelope> = (0..n).map(swap).collect();
    let payloads: Vec<Vec<u8>> = envelopes
        .iter()
        .map(|e| serde_json::to_vec(e).expect("encodes"))
        .collect();
    let binaries: Vec<Vec<u8>> = envelopes.iter().map(codec::encode).collect();
    let bytes: usize = payloads.iter().map(Vec::len).sum();
    let binary_bytes: usize = binaries.iter().map(Vec::len).sum();
    let (mut fast, mut buffered) = (Vec::new(), Vec::new());
    let (mut binary_read, mut json_write, mut binary_write) = (Vec::new(), Vec::new(), Vec::new());
    let read = |payloads: &[Vec<u8>]| {
        timed(|| {
            for p in payloads {
                let env = chainfold_domain::envelope::decode_envelope(p).expect("reads");
                std::hint::black_box(env);
            }
        })
    };
    for _ in 0..5 {
        fast.push(read(&payloads));
        buffered.push(timed(|| {
            for p in &payloads {
                let env: BufferedEnvelope = serde_json::from_slice(p).expect("reads");
                std::hint::black_box(env);
            }
        }));
        binary_read.push(read(&binaries));
        json_write.push(timed(|| {
            for e in &envelopes {
                std::hint::black_box(serde_json::to_vec(e).expect("encodes"));
            }
        }));
        binary_write.push(timed(|| {
            for e in &envelopes {
                std::hint::black_box(codec::encode(e));
            }
        }));
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
    let (br, jw, bw) = (
        median(binary_read),
        median(json_write),
        median(binary_write),
    );
    println!(
        "binary form, the same {n} envelopes: {} bytes each on average ({:.2}x JSON's)",
        binary_bytes / n as usize,
        binary_bytes as f64 / bytes as f64
    );
    println!(
        "  read  binary {:6.0} ns/msg vs JSON (tag first) {:6.0} ns/msg = {:.1}x faster",
        per(br),
        per(f),
        f.as_secs_f64() / br.as_secs_f64()
    );
    println!(
        "  write binary {:6.0} ns/msg vs JSON             {:6.0} ns/msg = {:.1}x faster",
        per(bw),
        per(jw),
        jw.as_secs_f64() / bw.as_secs_f64()
    );
}
