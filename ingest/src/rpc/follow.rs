//! Following one chain: backfill over adaptive `eth_getLogs` ranges, then block by block at the
//! head with reorg detection and retractions.
//!
//! Invariants:
//! - The checkpoint only moves after Kafka acknowledged every event up to it, so a restart
//!   resumes at the next block: no gap; what may be sent again is only what was in flight, and
//!   event ids make the projector ignore it.
//! - Blocks within `reorg_window` of the head are processed one at a time (header, then the logs
//!   of exactly that block hash) and remembered with their events. A head whose parent is not the
//!   remembered hash, or a remembered block that is no longer canonical, starts a walk back to the
//!   common ancestor; every event of the orphaned blocks is retracted (newest first), then the
//!   canonical blocks are processed as new.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use alloy::eips::BlockNumberOrTag;
use alloy::providers::{Provider, RootProvider};
use alloy::rpc::types::{Filter, Log};
use alloy::transports::{RpcError, TransportError};
use alloy_primitives::{Address, B256};
use anyhow::Context as _;
use chainfold_domain::{ChainHead, Envelope, Reserve, TopicKind, SCHEMA_VERSION};
use chainfold_platform::dlq::{self, DeadLetter};
use chainfold_platform::kafka::Topics;
use chrono::{DateTime, Utc};
use futures::StreamExt as _;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use secrecy::ExposeSecret;
use sqlx::PgPool;

use super::abi::{decode_creation, decode_log, ContractKind, DecodeError, FactoryKind};
use super::config::{redacted, scrub, ChainConfig};
use super::normalize::{normalize, FeedMeta, LogMeta, Metadata};
use super::state::{self, SeenBlock};
use chainfold_domain::seal::SealBuilder;

alloy::sol! {
    #[sol(rpc)]
    interface IErc20Metadata {
        function symbol() external view returns (string);
        function decimals() external view returns (uint8);
    }
    #[sol(rpc)]
    interface IPairTokens {
        function token0() external view returns (address);
        function token1() external view returns (address);
    }
    #[sol(rpc)]
    interface IFeedMetadata {
        function decimals() external view returns (uint8);
        function description() external view returns (string);
    }
}

/// Counters a follower keeps (read by the CLI, tests and the benchmark).
#[derive(Debug, Default)]
pub struct Stats {
    pub logs: AtomicU64,
    pub published: AtomicU64,
    pub retracted: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub reorgs: AtomicU64,
    pub range_splits: AtomicU64,
    pub blocks: AtomicU64,
}

/// Why a `eth_getLogs` call failed.
enum LogsError {
    /// The provider refused the range (too many results, response too large, range limit).
    Refused(String),
    /// The connection failed or timed out: retry the same range.
    Transport(String),
}

fn classify(err: TransportError, secret: &str) -> LogsError {
    match err {
        RpcError::ErrorResp(payload) => LogsError::Refused(payload.to_string()),
        RpcError::Transport(kind) => LogsError::Transport(scrub(&kind.to_string(), secret)),
        other => LogsError::Transport(scrub(&other.to_string(), secret)),
    }
}

/// One chain's follower.
pub struct Follower {
    chain: ChainConfig,
    http: RootProvider,
    producer: FutureProducer,
    topics: Topics,
    pool: PgPool,
    kinds: HashMap<Address, ContractKind>,
    factories: HashMap<Address, FactoryKind>,
    /// Every address whose logs are fetched: contracts, factories, discovered pools (append-only).
    addresses: Vec<Address>,
    metadata: Metadata,
    checkpoint: Option<u64>,
    window: BTreeMap<u64, SeenBlock>,
    /// Current `eth_getLogs` span: halves on refusal, doubles after small answers.
    span: u64,
    pub stats: Arc<Stats>,
    /// The chain's leader lease, checked before every publish (`ingest rpc`; the demo and
    /// tests follow without one).
    lease: Option<Arc<chainfold_platform::lease::Lease>>,
}

impl std::fmt::Debug for Follower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Follower")
            .field("chain_id", &self.chain.chain_id)
            .field("rpc", &redacted(self.chain.rpc_url.expose_secret()))
            .field("checkpoint", &self.checkpoint)
            .finish()
    }
}

/// Calls `call`, retrying transport errors with backoff. Error texts go through `secret`'s
/// scrubbing: transport errors quote the endpoint URL, which holds the provider key.
async fn with_retry<T, F, Fut>(what: &str, secret: &str, mut call: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, TransportError>>,
{
    let mut backoff = Duration::from_millis(100);
    let mut attempts = 0;
    loop {
        match call().await {
            Ok(value) => return Ok(value),
            Err(RpcError::Transport(err)) if attempts < 8 => {
                attempts += 1;
                let err = scrub(&err.to_string(), secret);
                tracing::warn!(%err, what, retry_in = ?backoff, "RPC transport error; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
            Err(err) => {
                return Err(anyhow::anyhow!(
                    "{what}: {}",
                    scrub(&err.to_string(), secret)
                ))
            }
        }
    }
}

impl Follower {
    /// Connects to the chain's HTTP endpoint, checks its chain id, and loads the durable state
    /// and the metadata of the configured contracts.
    pub async fn new(
        chain: ChainConfig,
        producer: FutureProducer,
        topics: Topics,
        pool: PgPool,
    ) -> anyhow::Result<Follower> {
        let url: url::Url = chain
            .rpc_url
            .expose_secret()
            .parse()
            .with_context(|| format!("chain {}: invalid rpc_url", chain.name))?;
        let http = RootProvider::new_http(url);
        let shown = redacted(chain.rpc_url.expose_secret());
        let secret = chain.rpc_url.expose_secret().to_owned();
        // No retry at start: an unreachable or wrong endpoint is a configuration error.
        let remote_id = http.get_chain_id().await.map_err(|e| {
            anyhow::anyhow!(
                "chain {}: could not reach {shown}: {}",
                chain.name,
                scrub(&e.to_string(), &secret)
            )
        })?;
        anyhow::ensure!(
            remote_id == chain.chain_id,
            "chain {}: {shown} serves chain id {remote_id}, chains.toml says {}",
            chain.name,
            chain.chain_id
        );
        let mut kinds: HashMap<Address, ContractKind> = chain
            .contracts
            .iter()
            .map(|c| (c.address, c.kind))
            .collect();
        let factories: HashMap<Address, FactoryKind> = chain
            .factories
            .iter()
            .map(|f| (f.address, f.kind))
            .collect();
        let mut addresses: Vec<Address> = chain.contracts.iter().map(|c| c.address).collect();
        addresses.extend(chain.factories.iter().map(|f| f.address));
        let discovered = state::load_discovered(&pool, chain.chain_id).await?;
        let mut pairs = HashMap::new();
        for d in &discovered {
            let kind = if d.v3 {
                ContractKind::UniswapV3Pool
            } else {
                ContractKind::UniswapV2Pair
            };
            if kinds.insert(d.address, kind).is_none() {
                addresses.push(d.address);
            }
            pairs.insert(d.address, (d.token0, d.token1));
        }
        let genesis: Option<alloy::rpc::types::Block> =
            with_retry("eth_getBlockByNumber(0)", &secret, || async {
                http.get_block_by_number(BlockNumberOrTag::Number(0)).await
            })
            .await?;
        let genesis = genesis.with_context(|| format!("chain {}: no genesis block", chain.name))?;
        state::check_genesis(&pool, chain.chain_id, genesis.header.hash).await?;
        let checkpoint = state::load_checkpoint(&pool, chain.chain_id).await?;
        let window = state::load_window(&pool, chain.chain_id).await?;
        let span = chain.max_range;
        let mut follower = Follower {
            chain,
            http,
            producer,
            topics,
            pool,
            kinds,
            factories,
            addresses,
            metadata: Metadata {
                pairs,
                ..Metadata::default()
            },
            checkpoint,
            window,
            span,
            stats: Arc::new(Stats::default()),
            lease: None,
        };
        follower.load_metadata().await?;
        tracing::info!(chain = %follower.chain.name, rpc = %shown, checkpoint = ?follower.checkpoint, "following chain");
        Ok(follower)
    }

    pub fn chain_id(&self) -> u64 {
        self.chain.chain_id
    }

    /// Reads the checkpoint and the reorg window back from Postgres (after a failed pass).
    async fn reload_state(&mut self) -> anyhow::Result<()> {
        self.checkpoint = state::load_checkpoint(&self.pool, self.chain.chain_id).await?;
        self.window = state::load_window(&self.pool, self.chain.chain_id).await?;
        Ok(())
    }

    /// Publishes only while `lease` is held: a follower whose lease session ended stops with
    /// [`chainfold_platform::lease::LeaseLost`] before its next publish.
    pub fn with_lease(mut self, lease: Arc<chainfold_platform::lease::Lease>) -> Self {
        self.lease = Some(lease);
        self
    }

    /// The last block published, if any.
    pub fn checkpoint(&self) -> Option<u64> {
        self.checkpoint
    }

    async fn load_metadata(&mut self) -> anyhow::Result<()> {
        for token in &self.chain.tokens {
            self.metadata.tokens.insert(
                token.address,
                Reserve {
                    address: token.address,
                    symbol: token.symbol.clone(),
                    decimals: token.decimals,
                },
            );
        }
        for contract in self.chain.contracts.clone() {
            match contract.kind {
                ContractKind::UniswapV2Pair | ContractKind::UniswapV3Pool => {
                    let pair = IPairTokens::new(contract.address, &self.http);
                    let secret = self.chain.rpc_url.expose_secret();
                    let token0 = pair.token0().call().await.map_err(|e| {
                        anyhow::anyhow!(
                            "pool {:#x}: token0() failed: {}",
                            contract.address,
                            scrub(&e.to_string(), secret)
                        )
                    })?;
                    let token1 = pair.token1().call().await.map_err(|e| {
                        anyhow::anyhow!(
                            "pool {:#x}: token1() failed: {}",
                            contract.address,
                            scrub(&e.to_string(), secret)
                        )
                    })?;
                    self.metadata
                        .pairs
                        .insert(contract.address, (token0, token1));
                }
                ContractKind::ChainlinkAggregator => {
                    let feed = IFeedMetadata::new(contract.address, &self.http);
                    let decimals = feed.decimals().call().await.map_err(|e| {
                        anyhow::anyhow!(
                            "feed {:#x}: decimals() failed: {}",
                            contract.address,
                            scrub(&e.to_string(), self.chain.rpc_url.expose_secret())
                        )
                    })?;
                    let description = match contract.description.clone() {
                        Some(d) => d,
                        None => feed.description().call().await.unwrap_or_default(),
                    };
                    self.metadata.feeds.insert(
                        contract.address,
                        FeedMeta {
                            description,
                            decimals,
                            asset: contract.asset,
                        },
                    );
                }
                ContractKind::AaveV2LendingPool | ContractKind::AaveV3Pool => {}
            }
        }
        Ok(())
    }

    /// Reads `symbol()`/`decimals()` of tokens not known yet. A token that has none stays
    /// unknown, and the events needing it are dead-lettered with the reason.
    async fn resolve_tokens(&mut self, tokens: impl IntoIterator<Item = Address>) {
        for token in tokens {
            if self.metadata.tokens.contains_key(&token) {
                continue;
            }
            let erc20 = IErc20Metadata::new(token, &self.http);
            let (symbol, decimals) = (erc20.symbol().call().await, erc20.decimals().call().await);
            match (symbol, decimals) {
                (Ok(symbol), Ok(decimals)) => {
                    self.metadata.tokens.insert(
                        token,
                        Reserve {
                            address: token,
                            symbol,
                            decimals,
                        },
                    );
                }
                (s, d) => {
                    tracing::warn!(token = %token, symbol_err = ?s.err().map(|e| e.to_string()), decimals_err = ?d.err().map(|e| e.to_string()), "token metadata unavailable")
                }
            }
        }
    }

    async fn latest(&self) -> anyhow::Result<u64> {
        with_retry(
            "eth_blockNumber",
            self.chain.rpc_url.expose_secret(),
            || self.http.get_block_number(),
        )
        .await
    }

    async fn header(&self, number: u64) -> anyhow::Result<(SeenBlock, Option<DateTime<Utc>>)> {
        let block = with_retry(
            "eth_getBlockByNumber",
            self.chain.rpc_url.expose_secret(),
            || async {
                self.http
                    .get_block_by_number(BlockNumberOrTag::Number(number))
                    .await
            },
        )
        .await?
        .with_context(|| format!("chain {}: block {number} not found", self.chain.name))?;
        Ok((
            SeenBlock {
                hash: block.header.hash,
                parent: block.header.parent_hash,
            },
            DateTime::from_timestamp(block.header.timestamp as i64, 0),
        ))
    }

    /// The logs of watched contracts in `[from, to]`, splitting the range while the provider
    /// refuses it.
    async fn logs_in_range(&self, from: u64, to: u64) -> anyhow::Result<Vec<Log>> {
        self.logs_in_range_for(&self.addresses, from, to).await
    }

    /// [`Self::logs_in_range`] for some of the addresses.
    async fn logs_in_range_for(
        &self,
        addresses: &[Address],
        from: u64,
        to: u64,
    ) -> anyhow::Result<Vec<Log>> {
        let mut pending = vec![(from, to)];
        let mut out = Vec::new();
        let mut transport_failures = 0;
        while let Some((a, b)) = pending.pop() {
            let filter = Filter::new()
                .address(addresses.to_vec())
                .from_block(a)
                .to_block(b);
            match self
                .http
                .get_logs(&filter)
                .await
                .map_err(|e| classify(e, self.chain.rpc_url.expose_secret()))
            {
                Ok(logs) => out.extend(logs),
                Err(LogsError::Refused(reason)) if a < b => {
                    let mid = a + (b - a) / 2;
                    self.stats.range_splits.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(from = a, to = b, %reason, "provider refused the range; halving");
                    // Pushed high half first so the low half is fetched first.
                    pending.push((mid + 1, b));
                    pending.push((a, mid));
                }
                Err(LogsError::Refused(reason)) => {
                    anyhow::bail!(
                        "chain {}: eth_getLogs refused even block {a}: {reason}",
                        self.chain.name
                    )
                }
                Err(LogsError::Transport(reason)) => {
                    transport_failures += 1;
                    anyhow::ensure!(
                        transport_failures <= 8,
                        "chain {}: eth_getLogs kept failing: {reason}",
                        self.chain.name
                    );
                    tracing::warn!(%reason, "eth_getLogs transport error; retrying");
                    tokio::time::sleep(Duration::from_millis(100 << transport_failures.min(6)))
                        .await;
                    pending.push((a, b));
                }
            }
        }
        out.sort_by_key(|l| (l.block_number, l.log_index));
        Ok(out)
    }

    /// Starts watching the pools that watched factories announce in `logs`.
    async fn discover(&mut self, logs: &[Log]) -> anyhow::Result<()> {
        for log in logs {
            let Some(kind) = self.factories.get(&log.address()).copied() else {
                continue;
            };
            let Some((pool, token0, token1)) = decode_creation(kind, &log.inner) else {
                tracing::warn!(factory = %log.address(), "factory log is not a pool creation; ignored");
                continue;
            };
            if self.kinds.contains_key(&pool) {
                continue;
            }
            let created = state::Discovered {
                address: pool,
                v3: kind == FactoryKind::UniswapV3,
                token0,
                token1,
                created_block: log.block_number.unwrap_or_default(),
            };
            state::save_discovered(&self.pool, self.chain.chain_id, &created).await?;
            self.kinds.insert(pool, kind.creates());
            self.metadata.pairs.insert(pool, (token0, token1));
            self.addresses.push(pool);
            tracing::info!(chain = %self.chain.name, %pool, block = created.created_block, "factory announced a pool; watching it");
        }
        Ok(())
    }

    /// Decodes and normalises logs; what cannot be becomes a dead letter (topic, reason, raw).
    async fn normalize_logs(
        &mut self,
        logs: &[Log],
        times: &HashMap<B256, DateTime<Utc>>,
    ) -> (Vec<Envelope>, Vec<(TopicKind, String, Vec<u8>)>) {
        let mut decoded = Vec::with_capacity(logs.len());
        let mut dead = Vec::new();
        let mut needed = Vec::new();
        for log in logs {
            self.stats.logs.fetch_add(1, Ordering::Relaxed);
            let Some(kind) = self.kinds.get(&log.address()).copied() else {
                continue;
            };
            match decode_log(kind, &log.inner) {
                Ok(raw) => {
                    needed.extend(raw.tokens());
                    decoded.push((kind, log, raw));
                }
                Err(DecodeError::Unwatched { .. } | DecodeError::NoTopics) => {}
                Err(err) => dead.push((kind.topic(), err.to_string(), raw_log(log))),
            }
        }
        self.resolve_tokens(needed).await;
        let mut out = Vec::with_capacity(decoded.len());
        for (kind, log, raw) in decoded {
            let (Some(block_number), Some(block_hash), Some(tx_hash), Some(log_index)) = (
                log.block_number,
                log.block_hash,
                log.transaction_hash,
                log.log_index,
            ) else {
                dead.push((
                    kind.topic(),
                    "pending log without block, transaction or index".into(),
                    raw_log(log),
                ));
                continue;
            };
            let meta = LogMeta {
                chain_id: self.chain.chain_id,
                address: log.address(),
                block_number,
                block_hash,
                block_time: log
                    .block_timestamp
                    .and_then(|t| DateTime::from_timestamp(t as i64, 0))
                    .or_else(|| times.get(&block_hash).copied()),
                tx_hash,
                tx_index: log.transaction_index.unwrap_or_default() as u32,
                log_index: log_index as u32,
            };
            match normalize(raw, &meta, &self.metadata) {
                Ok(env) => out.push(env),
                Err(reason) => dead.push((kind.topic(), reason, raw_log(log))),
            }
        }
        (out, dead)
    }

    /// Sends envelopes (or their retractions) and dead letters, and waits for every
    /// acknowledgement.
    async fn publish(
        &self,
        events: &[Envelope],
        dead: &[(TopicKind, String, Vec<u8>)],
        retract: bool,
        head: Option<ChainHead>,
    ) -> anyhow::Result<()> {
        if let Some(lease) = &self.lease {
            lease.ensure_held().await?;
        }
        // Each send with the topic and block its seal needs (None: a head or a dead letter).
        type Sent<'t> = (DeliveryFuture, Option<(&'t str, Option<u64>)>);
        let mut deliveries: Vec<Sent<'_>> = Vec::with_capacity(events.len() + dead.len() + 1);
        if let Some(head) = head {
            // Sent with the block's events and acknowledged together: one round trip.
            let payload = serde_json::to_vec(&head)?;
            let key = self.chain.chain_id.to_string();
            deliveries.push((
                self.producer
                    .send_result(
                        FutureRecord::to(&self.topics.blocks)
                            .key(&key)
                            .payload(&payload),
                    )
                    .map_err(|(e, _)| e)
                    .context("could not enqueue a chain head")?,
                None,
            ));
        }
        for env in events {
            let env = if retract {
                env.retraction()
            } else {
                env.clone()
            };
            let payload = crate::publish::encode(&env);
            let key = format!("{:#x}", env.partition_key());
            let topic = self.topics.of(env.event.topic());
            let record = FutureRecord::to(topic).key(&key).payload(&payload);
            let delivery = self
                .producer
                .send_result(record)
                .map_err(|(e, _)| e)
                .with_context(|| format!("could not enqueue a record for {topic}"))?;
            deliveries.push((delivery, Some((topic, env.block.map(|b| b.number)))));
        }
        for (kind, reason, raw) in dead {
            let origin = format!("chain {} log", self.chain.chain_id);
            deliveries.push((
                dlq::enqueue(
                    &self.producer,
                    &DeadLetter {
                        topic: self.topics.of(*kind),
                        stage: "ingest",
                        reason,
                        origin: &origin,
                        key: None,
                        payload: raw,
                    },
                )?,
                None,
            ));
        }
        let mut seals = SealBuilder::default();
        for (delivery, sealed) in deliveries {
            let (partition, offset) = crate::publish::await_delivery(delivery).await?;
            if let Some((topic, block)) = sealed {
                seals.delivered(self.chain.chain_id, block, topic, partition, offset);
            }
        }
        // The blocks just published are whole below these offsets (domain::seal).
        crate::publish::publish_seals(&self.producer, &self.topics.seals, seals.seals(retract))
            .await?;
        // Published, not yet checkpointed: a crash here republishes (readers key by event id).
        chainfold_platform::failpoint::hit("ingest.after_publish");
        let counter = if retract {
            &self.stats.retracted
        } else {
            &self.stats.published
        };
        counter.fetch_add(events.len() as u64, Ordering::Relaxed);
        self.stats
            .dead_lettered
            .fetch_add(dead.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    fn head(&self, number: u64, seen: SeenBlock, time: Option<DateTime<Utc>>) -> ChainHead {
        ChainHead {
            schema_version: SCHEMA_VERSION,
            chain_id: self.chain.chain_id,
            name: self.chain.name.clone(),
            number,
            hash: seen.hash,
            parent_hash: seen.parent,
            timestamp: time,
            confirmations: self.chain.confirmations,
        }
    }

    /// Publishes every block up to `target` over `eth_getLogs` ranges (no reorg tracking: only
    /// used below the reorg window), `concurrency` ranges in flight, in order.
    async fn backfill(&mut self, target: u64) -> anyhow::Result<()> {
        let start = self.checkpoint.map_or(self.chain.start_block, |c| c + 1);
        if start > target {
            return Ok(());
        }
        let total = target - start + 1;
        let bar = indicatif::ProgressBar::new(total).with_style(
            indicatif::ProgressStyle::with_template(
                "{prefix} backfill [{bar:30}] {pos}/{len} blocks {per_sec} ETA {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_prefix(self.chain.name.clone());
        let started = Instant::now();
        let mut next = start;
        let mut last_log = Instant::now();
        while next <= target {
            // `concurrency` consecutive ranges of the current span, fetched at once, handled in order.
            let mut ranges = Vec::new();
            let mut from = next;
            while ranges.len() < self.chain.concurrency && from <= target {
                let to = (from + self.span - 1).min(target);
                ranges.push((from, to));
                from = to + 1;
            }
            let this = &*self;
            let fetched: Vec<anyhow::Result<Vec<Log>>> = futures::stream::iter(ranges.clone())
                .map(|(a, b)| this.logs_in_range(a, b))
                .buffered(self.chain.concurrency)
                .collect()
                .await;
            let splits_before = self.stats.range_splits.load(Ordering::Relaxed);
            let known_at_fetch = self.addresses.len();
            for ((a, b), logs) in ranges.into_iter().zip(fetched) {
                let mut logs = logs?;
                // Pools announced in this range or an earlier one of this batch were not in the
                // filter when the range was fetched: fetch their logs now.
                self.discover(&logs).await?;
                if self.addresses.len() > known_at_fetch {
                    let added = self.addresses[known_at_fetch..].to_vec();
                    logs.extend(self.logs_in_range_for(&added, a, b).await?);
                    logs.sort_by_key(|l| (l.block_number, l.log_index));
                }
                let times = self.block_times(&logs).await?;
                let (events, dead) = self.normalize_logs(&logs, &times).await;
                self.publish(&events, &dead, false, None).await?;
                // The checkpoint names the range's last block by number and hash.
                let (end, _) = self.header(b).await?;
                state::advance(
                    &self.pool,
                    self.chain.chain_id,
                    b,
                    Some((end, &[])),
                    self.chain.reorg_window,
                )
                .await?;
                self.window.insert(b, end);
                self.window = self
                    .window
                    .split_off(&b.saturating_sub(self.chain.reorg_window));
                self.checkpoint = Some(b);
                self.stats.blocks.fetch_add(b - a + 1, Ordering::Relaxed);
                bar.inc(b - a + 1);
                // Grow after small answers, down to one block after refusals.
                if logs.len() < 1000 {
                    self.span = (self.span * 2).min(self.chain.max_range);
                }
            }
            if self.stats.range_splits.load(Ordering::Relaxed) > splits_before {
                self.span = (self.span / 2).max(1);
            }
            next = self.checkpoint.map_or(start, |c| c + 1);
            if last_log.elapsed() > Duration::from_secs(10) {
                let done = next - start;
                tracing::info!(chain = %self.chain.name, block = next - 1, target, blocks_per_s = done as f64 / started.elapsed().as_secs_f64(), "backfill progress");
                last_log = Instant::now();
            }
        }
        bar.finish_and_clear();
        let (seen, time) = self.header(target).await?;
        self.publish(&[], &[], false, Some(self.head(target, seen, time)))
            .await?;
        tracing::info!(chain = %self.chain.name, blocks = total, secs = started.elapsed().as_secs_f64(), "backfill done");
        Ok(())
    }

    /// Timestamps of the blocks of logs that lack `blockTimestamp`, read concurrently.
    async fn block_times(&self, logs: &[Log]) -> anyhow::Result<HashMap<B256, DateTime<Utc>>> {
        let mut wanted: HashMap<B256, u64> = HashMap::new();
        for log in logs {
            if log.block_timestamp.is_none() {
                if let (Some(hash), Some(number)) = (log.block_hash, log.block_number) {
                    wanted.insert(hash, number);
                }
            }
        }
        let headers: Vec<anyhow::Result<(B256, Option<DateTime<Utc>>)>> =
            futures::stream::iter(wanted)
                .map(|(hash, number)| async move {
                    self.header(number).await.map(|(_, time)| (hash, time))
                })
                .buffer_unordered(self.chain.concurrency * 4)
                .collect()
                .await;
        let mut times = HashMap::new();
        for header in headers {
            if let (hash, Some(time)) = header? {
                times.insert(hash, time);
            }
        }
        Ok(times)
    }

    /// Processes one block at the head: its header, then the logs of exactly that hash.
    /// Returns `false` (and processes nothing) when its parent is not the block we hold: a reorg.
    async fn process_block(&mut self, number: u64) -> anyhow::Result<bool> {
        let (seen, time) = self.header(number).await?;
        if let Some(prev) = self.window.get(&(number.wrapping_sub(1))) {
            if prev.hash != seen.parent {
                return Ok(false);
            }
        }
        let filter = Filter::new()
            .address(self.addresses.clone())
            .at_block_hash(seen.hash);
        let mut logs = with_retry("eth_getLogs", self.chain.rpc_url.expose_secret(), || {
            self.http.get_logs(&filter)
        })
        .await?;
        let known = self.addresses.len();
        self.discover(&logs).await?;
        if self.addresses.len() > known {
            let added = Filter::new()
                .address(self.addresses[known..].to_vec())
                .at_block_hash(seen.hash);
            logs.extend(
                with_retry("eth_getLogs", self.chain.rpc_url.expose_secret(), || {
                    self.http.get_logs(&added)
                })
                .await?,
            );
        }
        logs.sort_by_key(|l| l.log_index);
        let times = HashMap::from([(seen.hash, time.unwrap_or_default())]);
        let (events, dead) = self.normalize_logs(&logs, &times).await;
        self.publish(&events, &dead, false, Some(self.head(number, seen, time)))
            .await?;
        state::advance(
            &self.pool,
            self.chain.chain_id,
            number,
            Some((seen, &events)),
            self.chain.reorg_window,
        )
        .await?;
        self.window.insert(number, seen);
        let floor = number.saturating_sub(self.chain.reorg_window);
        self.window = self.window.split_off(&(floor + 1));
        self.checkpoint = Some(number);
        self.stats.blocks.fetch_add(1, Ordering::Relaxed);
        Ok(true)
    }

    /// Walks back from `from` to the newest block we hold that is still canonical, retracts the
    /// events of every block above it and rewinds the checkpoint there.
    async fn handle_reorg(&mut self, from: u64) -> anyhow::Result<()> {
        let mut number = from;
        let ancestor = loop {
            let Some(ours) = self.window.get(&number).copied() else {
                anyhow::bail!(
                    "chain {}: reorg deeper than the {}-block window (no common ancestor at or above block {number}); raise reorg_window and rebuild",
                    self.chain.name,
                    self.chain.reorg_window
                );
            };
            let (canonical, _) = self.header(number).await?;
            if canonical.hash == ours.hash {
                break (number, ours.hash);
            }
            number = number.checked_sub(1).context("reorg reached block 0")?;
        };
        let orphaned = state::orphaned_events(&self.pool, self.chain.chain_id, ancestor.0).await?;
        let depth = self
            .checkpoint
            .unwrap_or(ancestor.0)
            .saturating_sub(ancestor.0);
        tracing::warn!(chain = %self.chain.name, ancestor = ancestor.0, depth, retracted = orphaned.len(), "reorg: retracting orphaned events");
        let events: Vec<Envelope> = orphaned.into_iter().map(|(_, env)| env).collect();
        self.publish(&events, &[], true, None).await?;
        state::rewind(&self.pool, self.chain.chain_id, ancestor.0, ancestor.1).await?;
        self.window = self.window.split_off(&0);
        self.window.retain(|n, _| *n <= ancestor.0);
        self.checkpoint = Some(ancestor.0);
        self.stats.reorgs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// One pass: backfill below the reorg window, then process blocks one by one up to the
    /// current head, handling reorgs. Returns the block reached.
    pub async fn sync_to_head(&mut self) -> anyhow::Result<Option<u64>> {
        let latest = self.latest().await?;
        // A held block that is no longer canonical (the chain was reset below or at our tip).
        if let Some((&tip, held)) = self.window.last_key_value() {
            // Only when the chain did not move past our tip: otherwise the next block's parent
            // check sees any change, without this extra call on the hot path.
            let probe = tip.min(latest);
            if latest <= tip {
                if let Some(ours) = self.window.get(&probe).copied() {
                    let (canonical, _) = self.header(probe).await?;
                    if canonical.hash != ours.hash {
                        let _ = held;
                        self.handle_reorg(probe).await?;
                    }
                }
            }
        }
        let backfill_to = latest.saturating_sub(self.chain.reorg_window);
        let resume = self.checkpoint.map_or(self.chain.start_block, |c| c + 1);
        if resume <= backfill_to && self.chain.start_block <= backfill_to {
            self.backfill(backfill_to).await?;
        }
        let mut number = self.checkpoint.map_or(self.chain.start_block, |c| c + 1);
        while number <= latest {
            if self.process_block(number).await? {
                number += 1;
            } else {
                self.handle_reorg(number - 1).await?;
                number = self.checkpoint.map_or(self.chain.start_block, |c| c + 1);
            }
        }
        Ok(self.checkpoint)
    }

    /// Follows the chain until `shutdown` resolves: a pass per new head (pushed over WebSocket
    /// when `ws_url` is set and connects, else polled every `poll_interval`).
    pub async fn run(
        mut self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        tokio::pin!(shutdown);
        let mut heads = self.subscribe_heads().await;
        let mut backoff = Duration::from_millis(200);
        loop {
            match self.sync_to_head().await {
                Ok(_) => backoff = Duration::from_millis(200),
                // Postgres or the broker went away mid-pass: what was published and not
                // checkpointed is published again from the stored checkpoint (readers key by
                // event id); a lost lease is not retried.
                Err(err)
                    if chainfold_platform::member::is_transient(&err)
                        && err
                            .downcast_ref::<chainfold_platform::lease::LeaseLost>()
                            .is_none() =>
                {
                    tracing::warn!(chain = %self.chain.name, error = %format!("{err:#}"), retry_in = ?backoff, "follow pass failed; retrying from the stored checkpoint");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    if let Err(err) = self.reload_state().await {
                        tracing::warn!(error = %format!("{err:#}"), "could not reload the follower's state yet");
                    }
                    continue;
                }
                Err(err) => return Err(err),
            }
            let wake = async {
                match heads.as_mut() {
                    Some(stream) => {
                        if tokio::time::timeout(self.chain.poll_interval * 10, stream.next())
                            .await
                            .is_ok_and(|h| h.is_none())
                        {
                            return false;
                        }
                        true
                    }
                    None => {
                        tokio::time::sleep(self.chain.poll_interval).await;
                        true
                    }
                }
            };
            tokio::select! {
                () = &mut shutdown => break,
                alive = wake => if !alive {
                    tracing::warn!(chain = %self.chain.name, "WebSocket head subscription ended; polling");
                    heads = None;
                },
            }
        }
        tracing::info!(chain = %self.chain.name, checkpoint = ?self.checkpoint, "follower stopped");
        Ok(())
    }

    async fn subscribe_heads(
        &self,
    ) -> Option<std::pin::Pin<Box<dyn futures::Stream<Item = alloy::rpc::types::Header> + Send>>>
    {
        let ws = self.chain.ws_url.as_ref()?;
        let shown = redacted(ws.expose_secret());
        let connect = alloy::providers::WsConnect::new(ws.expose_secret().to_owned());
        match alloy::providers::ProviderBuilder::new()
            .disable_recommended_fillers()
            .connect_ws(connect)
            .await
        {
            Ok(provider) => match provider.subscribe_blocks().await {
                Ok(sub) => {
                    tracing::info!(chain = %self.chain.name, ws = %shown, "head subscription over WebSocket");
                    // Keep the provider alive as long as the stream.
                    let stream = sub.into_stream();
                    Some(Box::pin(futures::stream::unfold(
                        (provider, stream),
                        |(provider, mut stream)| async move {
                            stream.next().await.map(|h| (h, (provider, stream)))
                        },
                    )))
                }
                Err(err) => {
                    let err = scrub(&err.to_string(), ws.expose_secret());
                    tracing::warn!(chain = %self.chain.name, ws = %shown, %err, "newHeads subscription refused; polling");
                    None
                }
            },
            Err(err) => {
                let err = scrub(&err.to_string(), ws.expose_secret());
                tracing::warn!(chain = %self.chain.name, ws = %shown, %err, "WebSocket connect failed; polling");
                None
            }
        }
    }
}

fn raw_log(log: &Log) -> Vec<u8> {
    serde_json::to_vec(log).unwrap_or_default()
}
