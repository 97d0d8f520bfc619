//! A synthetic EVM chain served over JSON-RPC, owned outright by the reliability scenarios
//! (`cli/tests/reliability.rs`): it reorganises on request, serves hostile values and misbehaves
//! like a load-balanced provider when told to.
//!
//! Modelled on the chain the public reliability suite of the open indexer benchmark
//! (`enviodev/open-indexer-benchmark`, `reliability/`) describes; written here from that
//! description. Every block's contents derive from its height *and* its epoch (how many times
//! that height has been rewritten), so a row left from an orphaned block holds values that exist
//! nowhere on the canonical chain. Orphaned blocks stay retrievable by hash, as a node serves
//! them after a reorg. One ERC-20 contract emits `Transfer`s; its `name()`/`symbol()`/
//! `decimals()` answer through `eth_call`.
//!
//! The server answers `eth_chainId`, `net_version`, `eth_blockNumber`, `eth_getBlockByNumber`
//! (numbers and the `latest`, `earliest`, `safe`, `finalized` tags), `eth_getBlockByHash`,
//! `eth_getLogs` (ranges up to [`MAX_LOG_RANGE`] blocks, refused above like a public provider,
//! or one block by hash), `eth_call` and batches of them. [`Faults`] switch on errors mid-run.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use alloy::primitives::{keccak256, Address, Bytes, B256, U256};
use alloy::sol_types::SolValue as _;
use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

/// The one contract every scenario indexes.
pub const CONTRACT: Address = Address::new([
    0x5f, 0xbd, 0xb2, 0x31, 0x56, 0x78, 0xaf, 0xec, 0xb3, 0x67, 0xf0, 0x32, 0xd9, 0x3f, 0x64, 0x2f,
    0x64, 0x18, 0x0a, 0xa3,
]);
/// `Transfer(address,address,uint256)`.
pub const TRANSFER_TOPIC: B256 = B256::new([
    0xdd, 0xf2, 0x52, 0xad, 0x1b, 0xe2, 0xc8, 0x9b, 0x69, 0xc2, 0xb0, 0x68, 0xfc, 0x37, 0x8d, 0xaa,
    0x95, 0x2b, 0xa7, 0xf1, 0x63, 0xc4, 0xa1, 0x16, 0x28, 0xf5, 0x5a, 0x4d, 0xf5, 0x23, 0xb3, 0xef,
]);
/// A symbol Postgres `text` cannot hold.
pub const HOSTILE_SYMBOL: &str = "NUL\u{0}TOK";
/// A name with a NUL, an emoji, quotes, backslashes, accents, a tab and a newline.
pub const HOSTILE_NAME: &str =
    "Tok\u{0}en \u{1f9ea} 'quoted' \\slash\\ \u{fc}n\u{ef}cod\u{e9}\ttab\nnewline";
/// A log index near the top of the u32 range, as some chains put on synthetic logs.
pub const LARGE_LOG_INDEX: u64 = 0xffff_fffc;
/// The widest `eth_getLogs` range served.
pub const MAX_LOG_RANGE: u64 = 1000;

/// One log of the contract.
#[derive(Debug, Clone)]
pub struct MockLog {
    pub topics: Vec<B256>,
    pub data: Bytes,
    pub log_index: u64,
    pub tx_hash: B256,
    pub tx_index: u64,
}

/// One block.
#[derive(Debug, Clone)]
pub struct MockBlock {
    pub number: u64,
    pub hash: B256,
    pub parent: B256,
    pub timestamp: u64,
    pub epoch: u64,
    pub logs: Vec<MockLog>,
    /// When it first became the head (what head latency is measured against).
    pub announced: Instant,
}

/// A transfer as a correct indexer stores it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Row {
    pub block: u64,
    pub log_index: u64,
    pub from: Address,
    pub to: Address,
    pub value: U256,
    pub timestamp: u64,
}

/// The chain itself: canonical blocks by height, every block ever built by hash.
#[derive(Debug)]
pub struct MockChain {
    seed: String,
    canonical: Vec<MockBlock>,
    by_hash: HashMap<B256, MockBlock>,
    epochs: HashMap<u64, u64>,
    hostile: HashSet<u64>,
    transfers_per_block: usize,
    /// Blocks below `head - finality` are answered under `finalized` and `safe`.
    pub finality: u64,
    /// The token's metadata is hostile (NUL bytes and the rest).
    pub hostile_metadata: bool,
}

fn digest(parts: &[&dyn std::fmt::Display]) -> B256 {
    let text: Vec<String> = parts.iter().map(|p| p.to_string()).collect();
    keccak256(text.join("|"))
}

fn address_of(word: B256) -> Address {
    Address::from_slice(&word[12..])
}

impl MockChain {
    pub fn new(seed: &str) -> MockChain {
        let mut chain = MockChain {
            seed: seed.to_owned(),
            canonical: Vec::new(),
            by_hash: HashMap::new(),
            epochs: HashMap::new(),
            hostile: HashSet::new(),
            transfers_per_block: 2,
            finality: 64,
            hostile_metadata: false,
        };
        let genesis = chain.build(0, B256::ZERO);
        chain.by_hash.insert(genesis.hash, genesis.clone());
        chain.canonical.push(genesis);
        chain
    }

    pub fn height(&self) -> u64 {
        self.canonical.len() as u64 - 1
    }

    pub fn block(&self, number: u64) -> Option<&MockBlock> {
        self.canonical.get(number as usize)
    }

    /// Marks `height` (not built yet) as carrying a 2^256-1 transfer and a log at
    /// [`LARGE_LOG_INDEX`].
    pub fn hostile_at(&mut self, height: u64) {
        self.hostile.insert(height);
    }

    /// Extends the canonical chain by `count` blocks.
    pub fn append(&mut self, count: u64) {
        for _ in 0..count {
            let parent = self.canonical.last().expect("genesis").hash;
            let block = self.build(self.height() + 1, parent);
            self.by_hash.insert(block.hash, block.clone());
            self.canonical.push(block);
        }
    }

    /// Drops `depth` blocks from the tip and builds `replace_with` new ones at fresh epochs (a
    /// smaller number moves the head backwards). Returns the first height that changed.
    pub fn reorg(&mut self, depth: u64, replace_with: u64) -> u64 {
        assert!(depth >= 1 && depth <= self.height(), "reorg depth {depth}");
        let fork = self.height() - depth + 1;
        for dropped in self.canonical.split_off(fork as usize) {
            *self.epochs.entry(dropped.number).or_default() += 1;
        }
        self.append(replace_with);
        fork
    }

    /// The rows a correct indexer holds for the canonical chain up to `up_to`.
    pub fn expected(&self, up_to: u64) -> Vec<Row> {
        let mut rows = Vec::new();
        for block in self.canonical.iter().take(up_to as usize + 1) {
            for log in &block.logs {
                rows.push(Row {
                    block: block.number,
                    log_index: log.log_index,
                    from: address_of(log.topics[1]),
                    to: address_of(log.topics[2]),
                    value: U256::from_be_slice(&log.data),
                    timestamp: block.timestamp,
                });
            }
        }
        rows
    }

    fn build(&self, number: u64, parent: B256) -> MockBlock {
        let epoch = self.epochs.get(&number).copied().unwrap_or_default();
        let seed = &self.seed;
        let mut block = MockBlock {
            number,
            hash: digest(&[seed, &"block", &number, &epoch, &parent]),
            parent,
            timestamp: 1_700_000_000 + number * 12,
            epoch,
            logs: Vec::new(),
            announced: Instant::now(),
        };
        if number == 0 {
            return block;
        }
        let mut emit = |from: Address, to: Address, value: U256, index: Option<u64>| {
            let position = block.logs.len() as u64;
            block.logs.push(MockLog {
                topics: vec![TRANSFER_TOPIC, from.into_word(), to.into_word()],
                data: Bytes::from(value.to_be_bytes::<32>().to_vec()),
                log_index: index.unwrap_or(position),
                tx_hash: digest(&[seed, &"tx", &number, &epoch, &position]),
                tx_index: position,
            });
        };
        for i in 0..self.transfers_per_block {
            let source = digest(&[seed, &"transfer", &number, &epoch, &i]);
            let other = digest(&[seed, &"counterparty", &number, &epoch, &i]);
            let value =
                U256::from(u64::from_be_bytes(source[..8].try_into().expect("8")) % 1_000_000_000);
            emit(address_of(source), address_of(other), value, None);
        }
        if self.hostile.contains(&number) {
            let to = address_of(digest(&[seed, &"hostile", &number, &epoch]));
            emit(Address::ZERO, to, U256::MAX, None);
            emit(to, Address::ZERO, U256::from(1u64), Some(LARGE_LOG_INDEX));
        }
        block
    }
}

/// What the endpoint does wrong, switched on and off by a scenario.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Shares of requests answered with HTTP 500, HTTP 429 and a JSON-RPC error.
    pub http_500: f64,
    pub http_429: f64,
    pub rpc_error: f64,
    /// Share of `eth_getBlockByNumber` for the newest blocks answered `null`, as a replica
    /// that has not caught up does.
    pub null_recent_block: f64,
    /// Added to every answer.
    pub latency: Duration,
    /// Share of answers cut off mid-body (a truncated response, then a dropped socket).
    pub truncated: f64,
}

/// How many faults the endpoint served, by kind.
#[derive(Debug, Clone, Default)]
pub struct FaultCounts {
    pub http_500: u64,
    pub http_429: u64,
    pub rpc_error: u64,
    pub null_block: u64,
    pub truncated: u64,
    pub requests: u64,
}

impl FaultCounts {
    pub fn total(&self) -> u64 {
        self.http_500 + self.http_429 + self.rpc_error + self.null_block + self.truncated
    }
}

struct Shared {
    chain: Mutex<MockChain>,
    faults: Mutex<Faults>,
    counts: Mutex<FaultCounts>,
    rng: Mutex<u64>,
    chain_id: u64,
}

/// The chain and its JSON-RPC endpoint (served until the last clone is dropped).
#[derive(Clone)]
pub struct Endpoint {
    shared: Arc<Shared>,
    pub addr: SocketAddr,
    _server: Arc<Server>,
}

struct Server(tokio::task::JoinHandle<()>);

impl Drop for Server {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("addr", &self.addr)
            .finish()
    }
}

impl Endpoint {
    /// Serves `chain` as chain `chain_id` on a free loopback port.
    pub async fn serve(chain: MockChain, chain_id: u64) -> anyhow::Result<Endpoint> {
        let shared = Arc::new(Shared {
            chain: Mutex::new(chain),
            faults: Mutex::new(Faults::default()),
            counts: Mutex::new(FaultCounts::default()),
            rng: Mutex::new(0x9e37_79b9_7f4a_7c15),
            chain_id,
        });
        let app = axum::Router::new()
            .route("/", axum::routing::post(handle))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Endpoint {
            shared,
            addr,
            _server: Arc::new(Server(server)),
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Runs `f` on the chain (append, reorg, read).
    pub fn with<T>(&self, f: impl FnOnce(&mut MockChain) -> T) -> T {
        f(&mut self.shared.chain.lock().expect("chain lock"))
    }

    pub fn set_faults(&self, faults: Faults) {
        *self.shared.faults.lock().expect("faults lock") = faults;
    }

    pub fn fault_counts(&self) -> FaultCounts {
        self.shared.counts.lock().expect("counts lock").clone()
    }
}

impl Shared {
    /// A uniform draw in [0, 1) (xorshift; deterministic per endpoint).
    fn draw(&self) -> f64 {
        let mut s = self.rng.lock().expect("rng lock");
        *s ^= *s << 13;
        *s ^= *s >> 7;
        *s ^= *s << 17;
        (*s >> 11) as f64 / (1u64 << 53) as f64
    }
}

async fn handle(State(shared): State<Arc<Shared>>, body: axum::body::Bytes) -> Response {
    let faults = shared.faults.lock().expect("faults lock").clone();
    shared.counts.lock().expect("counts lock").requests += 1;
    if !faults.latency.is_zero() {
        tokio::time::sleep(faults.latency).await;
    }
    let count = |f: fn(&mut FaultCounts) -> &mut u64| {
        *f(&mut shared.counts.lock().expect("counts lock")) += 1;
    };
    if shared.draw() < faults.http_500 {
        count(|c| &mut c.http_500);
        return (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response();
    }
    if shared.draw() < faults.http_429 {
        count(|c| &mut c.http_429);
        return (StatusCode::TOO_MANY_REQUESTS, "rate limited").into_response();
    }
    let request: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return axum::Json(json!({"jsonrpc": "2.0", "id": null,
                "error": {"code": -32700, "message": format!("parse error: {e}")}}))
            .into_response()
        }
    };
    let answer = match request {
        Value::Array(calls) => {
            Value::Array(calls.iter().map(|c| answer(&shared, &faults, c)).collect())
        }
        call => answer(&shared, &faults, &call),
    };
    let text = answer.to_string();
    if shared.draw() < faults.truncated {
        count(|c| &mut c.truncated);
        // Half the body, then the connection drops mid-response.
        let half = text.as_bytes()[..text.len() / 2].to_vec();
        let stream = futures::stream::iter(vec![
            Ok::<_, std::io::Error>(half),
            Err(std::io::Error::other("socket dropped")),
        ]);
        return Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/json")
            .header("content-length", text.len().to_string())
            .body(Body::from_stream(stream))
            .expect("a response");
    }
    ([("content-type", "application/json")], text).into_response()
}

fn hex_u64(v: u64) -> String {
    format!("{v:#x}")
}

fn answer(shared: &Shared, faults: &Faults, call: &Value) -> Value {
    let id = call.get("id").cloned().unwrap_or(Value::Null);
    let method = call.get("method").and_then(Value::as_str).unwrap_or("");
    let params = call.get("params").cloned().unwrap_or(json!([]));
    if shared.draw() < faults.rpc_error {
        shared.counts.lock().expect("counts lock").rpc_error += 1;
        return json!({"jsonrpc": "2.0", "id": id,
            "error": {"code": -32603, "message": "internal error: upstream unavailable"}});
    }
    let result = {
        let chain = shared.chain.lock().expect("chain lock");
        dispatch(&chain, shared, faults, method, &params)
    };
    match result {
        Ok(value) => json!({"jsonrpc": "2.0", "id": id, "result": value}),
        Err((code, message)) => {
            json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
        }
    }
}

type Answer = Result<Value, (i64, String)>;

fn dispatch(
    chain: &MockChain,
    shared: &Shared,
    faults: &Faults,
    method: &str,
    p: &Value,
) -> Answer {
    let bad = |what: &str| (-32602, format!("invalid params: {what}"));
    match method {
        "eth_chainId" => Ok(json!(hex_u64(shared.chain_id))),
        "net_version" => Ok(json!(shared.chain_id.to_string())),
        "eth_blockNumber" => Ok(json!(hex_u64(chain.height()))),
        "eth_getBlockByNumber" => {
            let tag = p
                .get(0)
                .and_then(Value::as_str)
                .ok_or_else(|| bad("block"))?;
            let number = match tag {
                "latest" | "pending" => chain.height(),
                "earliest" => 0,
                "safe" | "finalized" => chain.height().saturating_sub(chain.finality),
                n => u64::from_str_radix(n.trim_start_matches("0x"), 16).map_err(|_| bad(n))?,
            };
            if number + 3 > chain.height() && shared.draw() < faults.null_recent_block {
                shared.counts.lock().expect("counts lock").null_block += 1;
                return Ok(Value::Null);
            }
            Ok(chain.block(number).map(block_json).unwrap_or(Value::Null))
        }
        "eth_getBlockByHash" => {
            let hash: B256 = p
                .get(0)
                .and_then(Value::as_str)
                .and_then(|h| h.parse().ok())
                .ok_or_else(|| bad("hash"))?;
            Ok(chain
                .by_hash
                .get(&hash)
                .map(block_json)
                .unwrap_or(Value::Null))
        }
        "eth_getLogs" => logs(chain, p.get(0).ok_or_else(|| bad("filter"))?),
        "eth_call" => {
            let input = p
                .get(0)
                .and_then(|t| t.get("input").or_else(|| t.get("data")))
                .and_then(Value::as_str)
                .unwrap_or("0x");
            let to = p.get(0).and_then(|t| t.get("to")).and_then(Value::as_str);
            if to.and_then(|t| t.parse::<Address>().ok()) != Some(CONTRACT) {
                return Ok(json!("0x"));
            }
            let (name, symbol) = if chain.hostile_metadata {
                (HOSTILE_NAME, HOSTILE_SYMBOL)
            } else {
                ("Reliability Token", "REL")
            };
            let out = match input.get(..10) {
                Some("0x06fdde03") => name.to_owned().abi_encode(),
                Some("0x95d89b41") => symbol.to_owned().abi_encode(),
                Some("0x313ce567") => U256::from(18u64).abi_encode(),
                _ => return Err((3, "execution reverted".into())),
            };
            Ok(json!(Bytes::from(out)))
        }
        other => Err((-32601, format!("the method {other} does not exist"))),
    }
}

fn logs(chain: &MockChain, filter: &Value) -> Answer {
    let number = |key: &str, default: u64| -> Result<u64, (i64, String)> {
        match filter.get(key).and_then(Value::as_str) {
            None | Some("latest") => Ok(default),
            Some("earliest") => Ok(0),
            Some(n) => u64::from_str_radix(n.trim_start_matches("0x"), 16)
                .map_err(|_| (-32602, format!("invalid {key}"))),
        }
    };
    let blocks: Vec<&MockBlock> =
        if let Some(hash) = filter.get("blockHash").and_then(Value::as_str) {
            let hash: B256 = hash
                .parse()
                .map_err(|_| (-32602, "invalid blockHash".to_owned()))?;
            chain.by_hash.get(&hash).into_iter().collect()
        } else {
            let from = number("fromBlock", chain.height())?;
            let to = number("toBlock", chain.height())?.min(chain.height());
            if to >= from && to - from + 1 > MAX_LOG_RANGE {
                return Err((
                    -32005,
                    format!("query exceeds the max block range {MAX_LOG_RANGE}"),
                ));
            }
            (from..=to).filter_map(|n| chain.block(n)).collect()
        };
    let addresses: Option<Vec<Address>> = match filter.get("address") {
        Some(Value::String(a)) => Some(a.parse().into_iter().collect()),
        Some(Value::Array(list)) => Some(
            list.iter()
                .filter_map(|a| a.as_str()?.parse().ok())
                .collect(),
        ),
        _ => None,
    };
    if addresses.as_ref().is_some_and(|a| !a.contains(&CONTRACT)) {
        return Ok(json!([]));
    }
    let topic0 = filter
        .get("topics")
        .and_then(|t| t.get(0))
        .filter(|t| !t.is_null());
    let wants = |topic: &B256| match topic0 {
        None => true,
        Some(Value::String(t)) => t.parse::<B256>().ok() == Some(*topic),
        Some(Value::Array(ts)) => ts
            .iter()
            .any(|t| t.as_str().and_then(|t| t.parse::<B256>().ok()) == Some(*topic)),
        Some(_) => false,
    };
    let mut out = Vec::new();
    for block in blocks {
        for log in block.logs.iter().filter(|l| wants(&l.topics[0])) {
            out.push(json!({
                "address": CONTRACT,
                "topics": log.topics,
                "data": log.data,
                "blockNumber": hex_u64(block.number),
                "blockHash": block.hash,
                "transactionHash": log.tx_hash,
                "transactionIndex": hex_u64(log.tx_index),
                "logIndex": hex_u64(log.log_index),
                "removed": false,
            }));
        }
    }
    Ok(Value::Array(out))
}

fn block_json(b: &MockBlock) -> Value {
    let zero = B256::ZERO;
    json!({
        "number": hex_u64(b.number),
        "hash": b.hash,
        "parentHash": b.parent,
        "sha3Uncles": "0x1dcc4de8dec75d7aab85b567b6ccd41ad312451b948a7413f0a142fd40d49347",
        "miner": Address::ZERO,
        "stateRoot": zero,
        "transactionsRoot": zero,
        "receiptsRoot": zero,
        "logsBloom": format!("0x{}", "00".repeat(256)),
        "difficulty": "0x0",
        "gasLimit": "0x1c9c380",
        "gasUsed": "0x0",
        "timestamp": hex_u64(b.timestamp),
        "extraData": "0x",
        "mixHash": zero,
        "nonce": "0x0000000000000000",
        "baseFeePerGas": "0x7",
        "size": "0x200",
        "uncles": [],
        "transactions": b.logs.iter().map(|l| l.tx_hash).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reorg_rewrites_blocks_with_other_transfers_and_keeps_orphans_by_hash() {
        let mut chain = MockChain::new("t");
        chain.append(20);
        let before = chain.expected(20);
        let orphan = chain.block(18).expect("built").hash;
        assert_eq!(chain.reorg(3, 3), 18);
        assert_eq!(chain.height(), 20);
        let after = chain.expected(20);
        assert_eq!(
            before[..34],
            after[..34],
            "blocks below the fork are unchanged"
        );
        assert!(
            after[34..].iter().all(|r| !before.contains(r)),
            "new values"
        );
        assert!(chain.by_hash.contains_key(&orphan));
        assert_eq!(chain.reorg(6, 3), 15);
        assert_eq!(chain.height(), 17);
        // The same seed builds the same chain.
        let mut again = MockChain::new("t");
        again.append(20);
        assert_eq!(again.expected(20), before);
    }

    #[test]
    fn a_hostile_block_carries_the_largest_value_and_a_large_log_index() {
        let mut chain = MockChain::new("h");
        chain.hostile_at(3);
        chain.append(4);
        let rows: Vec<Row> = chain
            .expected(4)
            .into_iter()
            .filter(|r| r.block == 3)
            .collect();
        assert_eq!(rows.len(), 4);
        assert_eq!(rows[2].value, U256::MAX);
        assert_eq!(rows[3].log_index, LARGE_LOG_INDEX);
    }
}
