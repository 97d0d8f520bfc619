//! `eth_getLogs` answers read in one pass.
//!
//! alloy's RPC `Log` nests two `#[serde(flatten)]`s (the consensus log inside the RPC log, the
//! topics and data inside the consensus log). serde reads a flattened struct by first copying
//! every key and value of the object into an untyped buffer, then reading the fields from the
//! copy, so each log's strings were allocated twice and parsed twice. A backfill answer holds up
//! to ~10,000 logs. [`WireLog`] reads the same fields straight from the text into the same
//! `Log`, with the same rules: `address`, `topics`, `data`, `blockNumber`, `transactionIndex`
//! and `logIndex` required (the last three may be null), the hashes and `blockTimestamp`
//! optional, `removed` false when absent, other keys ignored. A test holds it to alloy's own
//! reader.

use std::fmt;

use alloy::providers::{Provider as _, RootProvider};
use alloy::rpc::types::{Filter, Log};
use alloy::transports::TransportResult;
use alloy_primitives::{Address, Bytes, LogData, B256, U64};
use serde::de::{Error as _, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

/// `eth_getLogs` of `filter`, read with [`WireLog`]. Errors are the provider's, as from
/// alloy's `get_logs`.
pub async fn get_logs(http: &RootProvider, filter: &Filter) -> TransportResult<Vec<Log>> {
    let logs: Vec<WireLog> = http.raw_request("eth_getLogs".into(), (filter,)).await?;
    Ok(logs.into_iter().map(|l| l.0).collect())
}

/// One log of an `eth_getLogs` answer.
#[derive(Debug, Clone, PartialEq)]
pub struct WireLog(pub Log);

/// The keys of a log object; any other key is skipped.
#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "camelCase")]
enum Key {
    Address,
    Topics,
    Data,
    BlockHash,
    BlockNumber,
    BlockTimestamp,
    TransactionHash,
    TransactionIndex,
    LogIndex,
    Removed,
    #[serde(other)]
    Other,
}

impl<'de> Deserialize<'de> for WireLog {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(LogVisitor)
    }
}

struct LogVisitor;

/// Sets `slot` once; a key given twice is an error, as for a derived reader.
fn once<T, E: serde::de::Error>(
    slot: &mut Option<T>,
    value: T,
    key: &'static str,
) -> Result<(), E> {
    if slot.is_some() {
        return Err(E::duplicate_field(key));
    }
    *slot = Some(value);
    Ok(())
}

impl<'de> Visitor<'de> for LogVisitor {
    type Value = WireLog;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an eth_getLogs log object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<WireLog, A::Error> {
        let mut address: Option<Address> = None;
        let mut topics: Option<Vec<B256>> = None;
        let mut data: Option<Bytes> = None;
        let mut block_hash: Option<Option<B256>> = None;
        let mut block_number: Option<Option<U64>> = None;
        let mut block_timestamp: Option<Option<U64>> = None;
        let mut transaction_hash: Option<Option<B256>> = None;
        let mut transaction_index: Option<Option<U64>> = None;
        let mut log_index: Option<Option<U64>> = None;
        let mut removed: Option<bool> = None;
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                Key::Address => once(&mut address, map.next_value()?, "address")?,
                Key::Topics => once(&mut topics, map.next_value()?, "topics")?,
                Key::Data => once(&mut data, map.next_value()?, "data")?,
                Key::BlockHash => once(&mut block_hash, map.next_value()?, "blockHash")?,
                Key::BlockNumber => once(&mut block_number, map.next_value()?, "blockNumber")?,
                Key::BlockTimestamp => {
                    once(&mut block_timestamp, map.next_value()?, "blockTimestamp")?
                }
                Key::TransactionHash => {
                    once(&mut transaction_hash, map.next_value()?, "transactionHash")?
                }
                Key::TransactionIndex => once(
                    &mut transaction_index,
                    map.next_value()?,
                    "transactionIndex",
                )?,
                Key::LogIndex => once(&mut log_index, map.next_value()?, "logIndex")?,
                Key::Removed => once(&mut removed, map.next_value()?, "removed")?,
                Key::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let address = address.ok_or_else(|| A::Error::missing_field("address"))?;
        let topics = topics.ok_or_else(|| A::Error::missing_field("topics"))?;
        let data = data.ok_or_else(|| A::Error::missing_field("data"))?;
        // alloy requires these three keys (each may be null); the hashes may be left out.
        let block_number = block_number.ok_or_else(|| A::Error::missing_field("blockNumber"))?;
        let transaction_index =
            transaction_index.ok_or_else(|| A::Error::missing_field("transactionIndex"))?;
        let log_index = log_index.ok_or_else(|| A::Error::missing_field("logIndex"))?;
        let number = |q: Option<U64>| q.map(|q| q.to::<u64>());
        Ok(WireLog(Log {
            inner: alloy_primitives::Log {
                address,
                // As alloy reads it: the topic count is not checked here (the decoder does).
                data: LogData::new_unchecked(topics, data),
            },
            block_hash: block_hash.flatten(),
            block_number: number(block_number),
            block_timestamp: number(block_timestamp.flatten()),
            transaction_hash: transaction_hash.flatten(),
            transaction_index: number(transaction_index),
            log_index: number(log_index),
            removed: removed.unwrap_or(false),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alloy_reads(text: &str) -> Result<Vec<Log>, String> {
        serde_json::from_str::<Vec<Log>>(text).map_err(|e| e.to_string())
    }

    fn wire_reads(text: &str) -> Result<Vec<Log>, String> {
        serde_json::from_str::<Vec<WireLog>>(text)
            .map(|v| v.into_iter().map(|l| l.0).collect())
            .map_err(|e| e.to_string())
    }

    const FULL: &str = r#"{"address":"0x5c69bee701ef814a2b6a3edd4b1652cb9cc5aa6f",
        "topics":["0xd78ad95fa46c994b6551d0da85fc275fe613ce37657fb8d5e3d130840159d822",
                  "0x0000000000000000000000007a250d5630b4cf539739df2c5dacb4c659f2488d"],
        "data":"0x00000000000000000000000000000000000000000000000000000000000003e8",
        "blockHash":"0x9b1d4d2f0c5b0f2fb1c0b1a7b6b85f9e3e6d5c4b3a291807f6e5d4c3b2a19081",
        "blockNumber":"0x10d4f","blockTimestamp":"0x65f0c3a1",
        "transactionHash":"0x2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f70819",
        "transactionIndex":"0x3","logIndex":"0x1a","removed":false}"#;

    #[test]
    fn logs_read_as_alloy_reads_them() {
        let cases = [
            format!("[{FULL}]"),
            // A pending log: no block, no transaction; no blockTimestamp, no removed.
            r#"[{"address":"0x0000000000000000000000000000000000000001","topics":[],
                "data":"0x","blockHash":null,"blockNumber":null,"transactionHash":null,
                "transactionIndex":null,"logIndex":null}]"#
                .to_string(),
            // Removed by a reorg, keys in another order, unknown keys skipped.
            r#"[{"removed":true,"logIndex":"0x0","data":"0xdeadbeef","extra":{"a":[1,2]},
                "topics":["0x0000000000000000000000000000000000000000000000000000000000000001"],
                "address":"0x00000000000000000000000000000000000000aa","blockNumber":"0x1",
                "transactionIndex":"0x0"}]"#
                .to_string(),
            // Five topics: alloy reads them unchecked, and so does this.
            format!(
                r#"[{{"address":"0x0000000000000000000000000000000000000001","topics":[{t},{t},{t},{t},{t}],"data":"0x","blockNumber":null,"transactionIndex":null,"logIndex":null}}]"#,
                t = r#""0x0000000000000000000000000000000000000000000000000000000000000002""#
            ),
            format!("[{FULL},{FULL}]"),
            "[]".to_string(),
        ];
        for case in cases {
            let alloy = alloy_reads(&case).expect("alloy reads the case");
            assert_eq!(wire_reads(&case), Ok(alloy), "{case}");
        }
        let full = &wire_reads(&format!("[{FULL}]")).expect("read")[0];
        assert_eq!(full.block_number, Some(0x10d4f));
        assert_eq!(full.block_timestamp, Some(0x65f0c3a1));
        assert_eq!(full.log_index, Some(0x1a));
        assert_eq!(full.topics().len(), 2);
        assert_eq!(full.data().data.len(), 32);
    }

    #[test]
    fn what_alloy_refuses_is_refused() {
        // Each case is a valid log with one thing wrong (the valid one is read, checked below).
        let log = |fields: &str| {
            format!(
                r#"[{{"address":"0x0000000000000000000000000000000000000001","topics":[],"data":"0x","blockNumber":"0x1","transactionIndex":"0x0","logIndex":"0x0"{fields}}}]"#
            )
        };
        assert!(wire_reads(&log("")).is_ok() && alloy_reads(&log("")).is_ok());
        let drop_key = |key: &str| {
            let text = log("");
            let start = text.find(&format!(r#""{key}""#)).expect("key");
            let end = start + text[start..].find(',').unwrap_or(text[start..].len() - 2);
            let mut out = text[..start].to_string() + &text[end..];
            out = out.replace("{,", "{").replace(",,", ",").replace(",}", "}");
            out
        };
        let mut cases: Vec<String> = [
            "address",
            "topics",
            "data",
            "blockNumber",
            "transactionIndex",
        ]
        .iter()
        .map(|k| drop_key(k))
        .collect();
        cases.push(log("").replace(r#","logIndex":"0x0""#, ""));
        cases.extend([
            log("").replace("0x0000000000000000000000000000000000000001", "0x01"),
            log("").replace(r#""data":"0x""#, r#""data":"0xzz""#),
            log("").replace(
                r#""blockNumber":"0x1""#,
                r#""blockNumber":"0x1ffffffffffffffff""#,
            ),
            log(r#","removed":"yes""#),
            log(r#","blockHash":"0x12""#),
            "[42]".to_string(),
        ]);
        for case in &cases {
            // Well-formed JSON each: refused for its content, not its syntax.
            assert!(
                serde_json::from_str::<serde_json::Value>(case).is_ok(),
                "{case}"
            );
            assert!(alloy_reads(case).is_err(), "alloy refuses {case}");
            assert!(wire_reads(case).is_err(), "the wire reader refuses {case}");
        }
        // A key given twice is refused, by alloy's reader as by this one, whether the key is
        // the RPC log's own or the flattened consensus log's.
        for twice in [
            log(r#","logIndex":"0x2""#),
            log(r#","address":"0x0000000000000000000000000000000000000002""#),
        ] {
            assert!(alloy_reads(&twice).is_err(), "alloy refuses {twice}");
            assert!(
                wire_reads(&twice)
                    .expect_err("a key twice")
                    .contains("duplicate field"),
                "{twice}"
            );
        }
    }
}
