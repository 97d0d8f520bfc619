//! mev-inspect decoded DEX swaps (`swaps.csv`, Ethereum mainnet, June 2021).
//!
//! Quirks handled:
//! - amounts, block numbers and transaction positions are written as floats
//!   (`1.5876352345528256e+16`, `12634825.0`): each is parsed to the exact integer it denotes, and
//!   a value that does not denote a whole number is rejected rather than rounded;
//! - rows are grouped by exporter batch, not block: they are replayed ordered by
//!   (block, transaction position, trace address);
//! - reverted swaps (`error` set) are kept and marked, so they count in no volume;
//! - identity is (transaction hash, trace address), unique in the file.

use chainfold_domain::envelope::Swap;
use chainfold_domain::{
    BlockRef, DefiEvent, Envelope, EventId, Source, TokenAmount, SCHEMA_VERSION,
};

use super::{csv_rows, parse_address, parse_hash};
use crate::{Decoded, EventKind, Rejected};

/// Data set name (the shared folder's).
pub const DATASET: &str = "dex-swaps-mev-inspect";
/// Ethereum mainnet.
pub const CHAIN_ID: u64 = 1;

#[derive(Debug, serde::Deserialize)]
struct Row {
    abi_name: String,
    transaction_hash: String,
    block_number: String,
    protocol: String,
    contract_address: String,
    from_address: String,
    to_address: String,
    token_in_address: String,
    token_in_amount: String,
    token_out_address: String,
    token_out_amount: String,
    trace_address: String,
    error: String,
    transaction_position: String,
}

/// Decodes the CSV; rows that do not decode become [`Rejected`] (with the raw CSV record) and
/// are emitted first, the swaps after them in chain order.
pub fn decode(bytes: &[u8], origin: &str) -> anyhow::Result<Vec<Decoded>> {
    let mut swaps: Vec<Envelope> = Vec::new();
    let mut rejected: Vec<Decoded> = Vec::new();
    for row in csv_rows::<Row>(bytes, origin, EventKind::Amm)? {
        match row.and_then(|r| {
            decode_row(&r.row).map_err(|reason| Rejected {
                kind: EventKind::Amm,
                reason,
                origin: r.origin,
                raw: r.raw,
            })
        }) {
            Ok(env) => swaps.push(env),
            Err(rejected_row) => rejected.push(Err(rejected_row)),
        }
    }
    swaps.sort_by_cached_key(order_key);
    Ok(rejected
        .into_iter()
        .chain(swaps.into_iter().map(Ok))
        .collect())
}

fn order_key(env: &Envelope) -> (u64, u32, Vec<u32>) {
    match &env.event {
        DefiEvent::Swap(s) => (
            env.block.map_or(0, |b| b.number),
            s.tx_position,
            s.trace_address.clone(),
        ),
        _ => (0, 0, Vec::new()),
    }
}

fn decode_row(row: &Row) -> Result<Envelope, String> {
    let tx_hash = parse_hash("transaction_hash", &row.transaction_hash)?;
    let block = whole_u64("block_number", &row.block_number)?;
    let tx_position = u32::try_from(whole_u64(
        "transaction_position",
        &row.transaction_position,
    )?)
    .map_err(|_| {
        format!(
            "transaction_position {:?} is too large",
            row.transaction_position
        )
    })?;
    let trace_address = parse_trace_address(&row.trace_address)?;
    let amount = |field: &str, text: &str| {
        TokenAmount::parse_exact(text).map_err(|e| format!("{field} {e}"))
    };
    let protocol = match (row.protocol.as_str(), row.abi_name.as_str()) {
        ("", "UniswapV2Pair") => "uniswap_v2".to_owned(),
        ("", "UniswapV3Pool") => "uniswap_v3".to_owned(),
        ("", abi) => format!("unknown:{abi}"),
        (protocol, _) => protocol.to_owned(),
    };
    let trace_key = trace_address
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(".");
    let record = format!("{}:{trace_key}", row.transaction_hash.to_lowercase());
    Ok(Envelope {
        schema_version: SCHEMA_VERSION,
        retracted: false,
        event_id: EventId::of_record(CHAIN_ID, DATASET, &record),
        chain_id: CHAIN_ID,
        block: Some(BlockRef {
            number: block,
            hash: None,
        }),
        tx_hash: Some(tx_hash),
        log_index: None,
        block_time: None,
        source: Source::Replay {
            dataset: DATASET.into(),
            record,
        },
        event: DefiEvent::Swap(Swap {
            protocol,
            pool: parse_address("contract_address", &row.contract_address)?,
            sender: parse_address("from_address", &row.from_address)?,
            recipient: parse_address("to_address", &row.to_address)?,
            token_in: parse_address("token_in_address", &row.token_in_address)?,
            amount_in: amount("token_in_amount", &row.token_in_amount)?,
            token_out: parse_address("token_out_address", &row.token_out_address)?,
            amount_out: amount("token_out_amount", &row.token_out_amount)?,
            tx_position,
            trace_address,
            reverted: !row.error.trim().is_empty(),
            v3: None,
        }),
    })
}

/// A float-written whole number (`"12634825.0"`) as an exact `u64`.
fn whole_u64(field: &str, text: &str) -> Result<u64, String> {
    let amount = TokenAmount::parse_exact(text).map_err(|e| format!("{field} {e}"))?;
    u64::try_from(amount.0).map_err(|_| format!("{field} {text:?} is too large"))
}

/// `"[0, 1, 3]"` → `[0, 1, 3]`; `"[]"` → `[]`.
fn parse_trace_address(text: &str) -> Result<Vec<u32>, String> {
    let inner = text
        .trim()
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .ok_or_else(|| format!("trace_address {text:?} is not a bracketed list"))?;
    if inner.trim().is_empty() {
        return Ok(Vec::new());
    }
    inner
        .split(',')
        .map(|part| {
            part.trim()
                .parse::<u32>()
                .map_err(|_| format!("trace_address {text:?} has a non-integer element"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "created_at,abi_name,transaction_hash,block_number,protocol,contract_address,from_address,to_address,token_in_address,token_in_amount,token_out_address,token_out_amount,trace_address,error,transaction_position";
    // Real rows of swaps.csv (the second and third are two hops of one transaction, file order
    // reversed against trace order).
    const ROWS: &str = r#"2022-01-13 21:36:42.787271,UniswapV2Pair,0xbd8b69296a7d9a519441f5524fc9d9b73f564f82b987e17d5ca58317229855cb,12634825.0,,0xa3f0ce68043fb50613f61a444afd5ad1fe712607,0x1d6e8bac6ea3730825bde4b005ed7b2b39a2932d,0x1d6e8bac6ea3730825bde4b005ed7b2b39a2932d,0x73cd0f2fc19de23de7b6709c64b2fa64a70eaafc,7.713119002506758e+30,0xc02aaa39b223fe8d0a0e5c4f27ead9083c756cc2,5.5478830511650344e+16,[4],,5.0
2022-01-13 21:36:42.787271,UniswapV2Pair,0xccdb6dbb4f28476d7d8ebb9fe234f71341224ec9cc41a42b9310efeedc6c1939,12634825.0,,0x47b4110d6bdf595e4327c4a9b49615abe96aeb30,0x9b202019923f39d384537f577678c892ef4b9d7f,0x7a250d5630b4cf539739df2c5dacb4c659f2488d,0xea1a5640cde69becbe2782d5531e96a5f918604a,1.33742e+18,0xc02aaa39b223fe8d0a0e5c4f27ead9083c756cc2,4.222905333035355e+16,"[0, 1, 3]",,195.0
2022-01-13 21:36:42.787271,UniswapV2Pair,0xccdb6dbb4f28476d7d8ebb9fe234f71341224ec9cc41a42b9310efeedc6c1939,12634825.0,,0x47b4110d6bdf595e4327c4a9b49615abe96aeb30,0x9b202019923f39d384537f577678c892ef4b9d7f,0x7a250d5630b4cf539739df2c5dacb4c659f2488d,0xea1a5640cde69becbe2782d5531e96a5f918604a,1.33742e+18,0xc02aaa39b223fe8d0a0e5c4f27ead9083c756cc2,4633409736990203.0,[3],,195.0"#;

    fn swaps(decoded: &[Decoded]) -> Vec<&Swap> {
        decoded
            .iter()
            .filter_map(|d| match d.as_ref().ok().map(|e| &e.event) {
                Some(DefiEvent::Swap(s)) => Some(s),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn float_amounts_become_exact_integers_and_rows_sort_by_chain_order() {
        let csv = format!("{HEADER}\n{ROWS}\n");
        let decoded = decode(csv.as_bytes(), "swaps.csv").expect("a CSV with a header");
        let swaps = swaps(&decoded);
        assert_eq!(swaps.len(), 3);
        assert_eq!(swaps[0].tx_position, 5);
        assert_eq!(
            swaps[0].amount_in.to_string(),
            "7713119002506758000000000000000"
        );
        assert_eq!(swaps[0].amount_out.to_string(), "55478830511650344");
        assert_eq!(swaps[0].protocol, "uniswap_v2");
        assert_eq!(swaps[1].trace_address, vec![0, 1, 3]);
        assert_eq!(swaps[2].trace_address, vec![3]);
        assert_eq!(swaps[2].amount_out.to_string(), "4633409736990203");
    }

    #[test]
    fn reverted_swaps_are_kept_and_marked() {
        let reverted = ROWS
            .lines()
            .next()
            .expect("row")
            .replace(",[4],,5.0", ",[4],Reverted,5.0");
        let decoded = decode(format!("{HEADER}\n{reverted}\n").as_bytes(), "swaps.csv")
            .expect("a CSV with a header");
        let swaps = swaps(&decoded);
        assert_eq!(swaps.len(), 1);
        assert!(swaps[0].reverted);
    }

    #[test]
    fn malformed_rows_are_rejected_with_reason_and_raw_line() {
        let bad = ROWS
            .lines()
            .next()
            .expect("row")
            .replace("7.713119002506758e+30", "1.5e-3");
        let decoded = decode(format!("{HEADER}\n{bad}\n").as_bytes(), "swaps.csv")
            .expect("a CSV with a header");
        let rejected = decoded[0].as_ref().expect_err("rejected");
        assert!(
            rejected.reason.contains("token_in_amount"),
            "{}",
            rejected.reason
        );
        assert_eq!(rejected.origin, "swaps.csv:2");
        assert_eq!(
            rejected.raw,
            bad.as_bytes(),
            "the dead letter holds the record exactly as in the file"
        );
    }
}
