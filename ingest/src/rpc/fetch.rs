//! The backfill's reads from the node, cheap to clone so fetches run ahead of publishing:
//! `eth_getLogs` over a range (halved while the provider refuses it) and block headers in
//! JSON-RPC batches (one HTTP round trip per [`HEADER_BATCH`] blocks).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use alloy::eips::BlockNumberOrTag;
use alloy::providers::{Provider, RootProvider};
use alloy::rpc::types::{Filter, Log};
use alloy::transports::{RpcError, TransportError};
use alloy_primitives::{Address, B256, U64};
use chrono::{DateTime, Utc};
use futures::StreamExt as _;

use super::config::scrub;
use super::follow::Stats;
use super::state::SeenBlock;

/// Blocks per JSON-RPC batch of `eth_getBlockByNumber`.
pub const HEADER_BATCH: usize = 200;

/// Why a `eth_getLogs` call failed.
enum LogsError {
    /// The provider refused the range (too many results, response too large, range limit).
    Refused(String),
    /// The connection failed or timed out: retry the same range.
    Transport(String),
}

fn classify(err: TransportError, secret: &str) -> LogsError {
    match err {
        RpcError::ErrorResp(payload) if !transient_code(payload.code, &payload.message) => {
            LogsError::Refused(payload.to_string())
        }
        other => LogsError::Transport(scrub(&other.to_string(), secret)),
    }
}

/// A JSON-RPC error a provider gives for a passing condition (its backend failed, it throttles,
/// a replica lags) rather than for the request: worth the same request again after a pause.
fn transient_code(code: i64, message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    code == -32603
        || [
            "rate limit",
            "too many requests",
            "timeout",
            "timed out",
            "unavailable",
            "try again",
            "busy",
            "header not found",
            "unknown block",
        ]
        .iter()
        .any(|t| m.contains(t))
}

/// Whether a failed read is worth retrying as it is: the connection failed or was cut (a
/// truncated body is a transport or a deserialisation error), the node answered `null` where a
/// value was due, or the provider's error is [`transient_code`]. A refusal of the request
/// itself (bad params, a range too large) is not.
pub fn transient(err: &TransportError) -> bool {
    match err {
        RpcError::Transport(_) | RpcError::DeserError { .. } | RpcError::NullResp => true,
        RpcError::ErrorResp(payload) => transient_code(payload.code, &payload.message),
        RpcError::LocalUsageError(e) => e.to_string().ends_with("not found"),
        _ => false,
    }
}

/// The fields of a block the follower uses (the rest of the header is not deserialised).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct HeaderFields {
    hash: B256,
    parent_hash: B256,
    timestamp: U64,
}

/// A header as the follower keeps it.
#[derive(Debug, Clone, Copy)]
pub struct Header {
    pub seen: SeenBlock,
    pub time: Option<DateTime<Utc>>,
}

/// A range read from the node: its logs in chain order, the headers the backfill needs (blocks
/// whose logs carry no `blockTimestamp`, and the range's last block for the checkpoint), and how
/// many of the follower's addresses the filter held.
#[derive(Debug)]
pub struct Fetched {
    pub from: u64,
    pub to: u64,
    pub logs: Vec<Log>,
    pub headers: HashMap<u64, Header>,
    pub addresses: usize,
}

impl Fetched {
    /// Block timestamps by block hash, for the logs without `blockTimestamp`.
    pub fn times(&self) -> HashMap<B256, DateTime<Utc>> {
        self.headers
            .values()
            .filter_map(|h| h.time.map(|t| (h.seen.hash, t)))
            .collect()
    }
}

/// Reads from one chain's HTTP endpoint.
#[derive(Debug, Clone)]
pub struct Fetcher {
    pub http: RootProvider,
    /// The endpoint URL, scrubbed from error texts (it may hold a provider key).
    secret: Arc<str>,
    chain: Arc<str>,
    stats: Arc<Stats>,
    /// Header batches in flight at once.
    concurrency: usize,
    /// Watched wallets as topics: their `Transfer`s in and out of any token are fetched too.
    wallets: Arc<Vec<B256>>,
}

impl Fetcher {
    pub fn new(
        http: RootProvider,
        secret: &str,
        chain: &str,
        stats: Arc<Stats>,
        concurrency: usize,
    ) -> Fetcher {
        Fetcher {
            http,
            secret: secret.into(),
            chain: chain.into(),
            stats,
            concurrency: concurrency.max(1),
            wallets: Arc::new(Vec::new()),
        }
    }

    /// Also fetches every ERC-20 `Transfer` from or to `wallets`, whichever token emits it.
    pub fn watching(mut self, wallets: &[Address]) -> Fetcher {
        self.wallets = Arc::new(wallets.iter().map(|w| w.into_word()).collect());
        self
    }

    /// The filters of one read: the watched contracts' logs, and with watched wallets their
    /// transfers out (topic 1) and in (topic 2) of any token.
    pub fn filters(&self, addresses: &[Address]) -> Vec<Filter> {
        // No address at all would be every log of the chain.
        let mut filters = Vec::new();
        if !addresses.is_empty() {
            filters.push(Filter::new().address(addresses.to_vec()));
        }
        if !self.wallets.is_empty() {
            let transfer = Filter::new().event_signature(TRANSFER_TOPIC);
            filters.push(transfer.clone().topic1(self.wallets.to_vec()));
            filters.push(transfer.topic2(self.wallets.to_vec()));
        }
        filters
    }

    /// The logs of `addresses` in `[from, to]`, splitting the range while the provider refuses
    /// it, sorted by (block, log index).
    pub async fn logs(
        &self,
        addresses: &[Address],
        from: u64,
        to: u64,
    ) -> anyhow::Result<Vec<Log>> {
        let mut out = Vec::new();
        for base in self.filters(addresses) {
            out.extend(self.logs_of(&base, from, to).await?);
        }
        Ok(dedup_sorted(out))
    }

    async fn logs_of(&self, base: &Filter, from: u64, to: u64) -> anyhow::Result<Vec<Log>> {
        let mut pending = vec![(from, to)];
        let mut out = Vec::new();
        let mut transport_failures = 0;
        while let Some((a, b)) = pending.pop() {
            let filter = base.clone().from_block(a).to_block(b);
            match super::wire::get_logs(&self.http, &filter)
                .await
                .map_err(|e| classify(e, &self.secret))
            {
                Ok(logs) => {
                    transport_failures = 0;
                    out.extend(logs)
                }
                Err(LogsError::Refused(reason)) if a < b => {
                    let mid = a + (b - a) / 2;
                    self.stats.range_splits.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(from = a, to = b, %reason, "provider refused the range; halving");
                    // Pushed high half first so the low half is fetched first.
                    pending.push((mid + 1, b));
                    pending.push((a, mid));
                }
                Err(LogsError::Refused(reason)) | Err(LogsError::Transport(reason)) => {
                    transport_failures += 1;
                    anyhow::ensure!(
                        transport_failures <= 8,
                        "chain {}: eth_getLogs of blocks {a}..={b} kept failing: {reason}",
                        self.chain
                    );
                    tracing::warn!(%reason, from = a, to = b, "eth_getLogs failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100 << transport_failures.min(6)))
                        .await;
                    pending.push((a, b));
                }
            }
        }
        out.sort_by_key(|l| (l.block_number, l.log_index));
        Ok(out)
    }

    /// Headers of `numbers`, [`HEADER_BATCH`] per JSON-RPC batch, batches concurrently. A batch
    /// whose transport fails is retried with backoff; a block the node does not have is an error.
    pub async fn headers(&self, numbers: &[u64]) -> anyhow::Result<HashMap<u64, Header>> {
        let batches: Vec<Vec<u64>> = numbers.chunks(HEADER_BATCH).map(<[u64]>::to_vec).collect();
        let answered: Vec<anyhow::Result<Vec<(u64, Header)>>> = futures::stream::iter(batches)
            .map(|batch| self.header_batch(batch))
            .buffer_unordered(self.concurrency)
            .collect()
            .await;
        let mut out = HashMap::with_capacity(numbers.len());
        for batch in answered {
            out.extend(batch?);
        }
        Ok(out)
    }

    async fn header_batch(&self, numbers: Vec<u64>) -> anyhow::Result<Vec<(u64, Header)>> {
        let mut backoff = Duration::from_millis(100);
        let mut attempts = 0;
        loop {
            match self.try_header_batch(&numbers).await {
                Ok(headers) => return Ok(headers),
                Err(err) if attempts < 8 && transient(&err) => {
                    attempts += 1;
                    let err = scrub(&err.to_string(), &self.secret);
                    tracing::warn!(%err, retry_in = ?backoff, "header batch failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
                Err(err) => {
                    anyhow::bail!(
                        "chain {}: eth_getBlockByNumber batch: {}",
                        self.chain,
                        scrub(&err.to_string(), &self.secret)
                    )
                }
            }
        }
    }

    async fn try_header_batch(
        &self,
        numbers: &[u64],
    ) -> Result<Vec<(u64, Header)>, TransportError> {
        let mut batch = alloy::rpc::client::BatchRequest::new(self.http.client());
        let mut waiters = Vec::with_capacity(numbers.len());
        for &n in numbers {
            let waiter: alloy::rpc::client::Waiter<Option<HeaderFields>> = batch.add_call(
                "eth_getBlockByNumber",
                &(BlockNumberOrTag::Number(n), false),
            )?;
            waiters.push((n, waiter));
        }
        batch.send().await?;
        let mut out = Vec::with_capacity(numbers.len());
        for (n, waiter) in waiters {
            let Some(h) = waiter.await? else {
                return Err(RpcError::local_usage_str(&format!("block {n} not found")));
            };
            out.push((
                n,
                Header {
                    seen: SeenBlock {
                        hash: h.hash,
                        parent: h.parent_hash,
                    },
                    time: DateTime::from_timestamp(h.timestamp.to::<u64>() as i64, 0),
                },
            ));
        }
        Ok(out)
    }

    /// Logs of `[from, to]` and the headers the backfill needs for them.
    pub async fn range(
        &self,
        addresses: Arc<Vec<Address>>,
        from: u64,
        to: u64,
    ) -> anyhow::Result<Fetched> {
        let logs = self.logs(&addresses, from, to).await?;
        let headers = self.headers(&needed_headers(&logs, to)).await?;
        Ok(Fetched {
            from,
            to,
            logs,
            headers,
            addresses: addresses.len(),
        })
    }
}

/// `Transfer(address,address,uint256)`, ERC-20's and ERC-721's.
pub const TRANSFER_TOPIC: B256 = B256::new([
    0xdd, 0xf2, 0x52, 0xad, 0x1b, 0xe2, 0xc8, 0x9b, 0x69, 0xc2, 0xb0, 0x68, 0xfc, 0x37, 0x8d, 0xaa,
    0x95, 0x2b, 0xa7, 0xf1, 0x63, 0xc4, 0xa1, 0x16, 0x28, 0xf5, 0x5a, 0x4d, 0xf5, 0x23, 0xb3, 0xef,
]);

/// Logs in chain order, each once (a watched wallet's transfer of a watched token, or a
/// transfer between two watched wallets, answers more than one filter).
pub fn dedup_sorted(mut logs: Vec<Log>) -> Vec<Log> {
    logs.sort_by_key(|l| (l.block_number, l.log_index, l.block_hash));
    logs.dedup_by_key(|l| (l.block_number, l.log_index, l.block_hash));
    logs
}

/// The blocks whose headers a range needs: those of logs without `blockTimestamp` (nodes that
/// predate the field) and `to`, whose hash the checkpoint records.
pub fn needed_headers(logs: &[Log], to: u64) -> Vec<u64> {
    let mut blocks: Vec<u64> = logs
        .iter()
        .filter(|l| l.block_timestamp.is_none())
        .filter_map(|l| l.block_number)
        .collect();
    blocks.push(to);
    blocks.sort_unstable();
    blocks.dedup();
    blocks
}

#[cfg(test)]
mod retry_tests {
    use super::*;

    fn resp(code: i64, message: &str) -> TransportError {
        RpcError::ErrorResp(
            serde_json::from_value(serde_json::json!({"code": code, "message": message}))
                .expect("an error payload"),
        )
    }

    #[test]
    fn passing_provider_errors_are_retried_and_refusals_are_not() {
        assert!(transient(&resp(
            -32603,
            "internal error: upstream unavailable"
        )));
        assert!(transient(&resp(-32005, "rate limit exceeded")));
        assert!(transient(&resp(-32000, "header not found")));
        assert!(transient(&RpcError::NullResp));
        assert!(transient(&RpcError::local_usage_str("block 7 not found")));
        assert!(!transient(&resp(-32602, "invalid params")));
        assert!(!transient(&resp(
            -32005,
            "query returned more than 10000 results"
        )));
        assert!(matches!(
            classify(resp(-32005, "query returned more than 10000 results"), ""),
            LogsError::Refused(_)
        ));
        assert!(matches!(
            classify(resp(-32603, "internal error"), ""),
            LogsError::Transport(_)
        ));
    }
}
