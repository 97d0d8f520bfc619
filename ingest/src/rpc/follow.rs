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

use std::collections::{BTreeMap, HashMap, VecDeque};
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
use super::fetch::{needed_headers, Fetched, Fetcher};
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

/// A record handed to the producer, with the topic and block its seal needs (`None`: a chain
/// head or a dead letter).
type Sent = (DeliveryFuture, Option<(TopicKind, Option<u64>)>);

/// What [`Follower::enqueue`] handed to the producer, awaiting [`Follower::settle`].
struct Enqueued {
    deliveries: Vec<Sent>,
    retract: bool,
    events: u64,
    dead: u64,
}

/// Logs per `eth_getLogs` range the backfill aims at: large enough that a range amortises its
/// round trip, small enough that decode and publish of one range overlap the next fetch.
pub const RANGE_LOGS: usize = 10_000;

/// Blocks near the head processed in one batch when the follower is behind.
const CATCH_UP_BLOCKS: u64 = 128;

/// The span of the first ranges, before any answer has sized one: small, so that a dense chain
/// does not start with a few huge ranges fetched one after another (at `max_range` a dense
/// chain's first range held half of a 4,000-block benchmark, and nothing was published for two
/// seconds); a sparse one doubles from here after each empty answer.
const FIRST_SPAN: u64 = 100;

/// Ranges published and not yet acknowledged and checkpointed, at most.
const RANGES_IN_FLIGHT: usize = 8;

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
    /// Current `eth_getLogs` span: halves on refusal and on large answers, doubles after small
    /// ones (sized so a range holds about [`RANGE_LOGS`] logs).
    span: u64,
    fetch: Fetcher,
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
            Err(err) if attempts < 8 && super::fetch::transient(&err) => {
                attempts += 1;
                let err = scrub(&err.to_string(), secret);
                tracing::warn!(%err, what, retry_in = ?backoff, "RPC call failed; retrying");
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
        let span = chain.max_range.min(FIRST_SPAN);
        let stats = Arc::new(Stats::default());
        let fetch = Fetcher::new(
            http.clone(),
            &secret,
            &chain.name,
            stats.clone(),
            chain.concurrency,
        )
        .watching(&chain.watch_wallets);
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
            fetch,
            stats,
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
                ContractKind::Erc20Token => {
                    let metadata = self.read_erc20_metadata(contract.address).await;
                    self.metadata.erc20.insert(contract.address, metadata);
                }
                ContractKind::AaveV2LendingPool | ContractKind::AaveV3Pool => {}
            }
        }
        Ok(())
    }

    /// Reads a watched token's `name()`, `symbol()` and `decimals()` once. A call that fails or
    /// answers nothing leaves that field empty (stored as NULL); the token's transfers are
    /// indexed all the same. NUL bytes are removed, and said so in the log.
    async fn read_erc20_metadata(&self, token: Address) -> chainfold_domain::TokenMetadata {
        const NAME: [u8; 4] = [0x06, 0xfd, 0xde, 0x03];
        const SYMBOL: [u8; 4] = [0x95, 0xd8, 0x9b, 0x41];
        const DECIMALS: [u8; 4] = [0x31, 0x3c, 0xe5, 0x67];
        let secret = self.chain.rpc_url.expose_secret().to_owned();
        let call = |selector: [u8; 4]| {
            let request = alloy::rpc::types::TransactionRequest::default()
                .to(token)
                .input(alloy_primitives::Bytes::from(selector.to_vec()).into());
            let secret = secret.clone();
            async move {
                with_retry("eth_call", &secret, || std::future::IntoFuture::into_future(self.http.call(request.clone())))
                    .await
                    .map_err(|e| tracing::warn!(token = %token, error = %format!("{e:#}"), "token metadata call failed"))
                    .ok()
            }
        };
        let (name, symbol, decimals) = (call(NAME).await, call(SYMBOL).await, call(DECIMALS).await);
        let (metadata, notes) = super::normalize::token_metadata(
            name.as_ref().map(|b| &b[..]),
            symbol.as_ref().map(|b| &b[..]),
            decimals.as_ref().map(|b| &b[..]),
        );
        for note in notes {
            tracing::warn!(token = %token, "{note}");
        }
        tracing::info!(token = %token, name = ?metadata.name, symbol = ?metadata.symbol, decimals = ?metadata.decimals, "erc20 token metadata");
        metadata
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
        // A block the node announced and then answers `null` for is a replica behind its
        // balancer: asked again (with_retry's backoff) rather than taken as the end of the chain.
        let block = with_retry(
            "eth_getBlockByNumber",
            self.chain.rpc_url.expose_secret(),
            || async {
                self.http
                    .get_block_by_number(BlockNumberOrTag::Number(number))
                    .await?
                    .ok_or(RpcError::NullResp)
            },
        )
        .await
        .with_context(|| format!("chain {}: block {number} not found", self.chain.name))?;
        Ok((
            SeenBlock {
                hash: block.header.hash,
                parent: block.header.parent_hash,
            },
            DateTime::from_timestamp(block.header.timestamp as i64, 0),
        ))
    }

    /// The logs of `addresses` in `[from, to]` (see [`Fetcher::logs`]).
    async fn logs_in_range_for(
        &self,
        addresses: &[Address],
        from: u64,
        to: u64,
    ) -> anyhow::Result<Vec<Log>> {
        self.fetch.logs(addresses, from, to).await
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
            let kind = match self.kinds.get(&log.address()).copied() {
                Some(kind) => kind,
                // A watched wallet's transfer of a token nobody configured: an ERC-20 one has
                // exactly three topics (an ERC-721 one four, not ours to index).
                None if !self.chain.watch_wallets.is_empty()
                    && log.topics().len() == 3
                    && log.topics().first() == Some(&super::fetch::TRANSFER_TOPIC) =>
                {
                    if !self.metadata.erc20.contains_key(&log.address()) {
                        let metadata = self.read_erc20_metadata(log.address()).await;
                        self.metadata.erc20.insert(log.address(), metadata);
                    }
                    ContractKind::Erc20Token
                }
                None => continue,
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
        let sent = self.enqueue(events, dead, retract, head).await?;
        self.settle(sent).await
    }

    /// Hands envelopes (or their retractions), dead letters and an optional chain head to the
    /// producer without waiting for acknowledgements; [`Self::settle`] waits for them. A full
    /// producer queue waits here until acknowledgements make room (back-pressure, not an error).
    async fn enqueue(
        &self,
        events: &[Envelope],
        dead: &[(TopicKind, String, Vec<u8>)],
        retract: bool,
        head: Option<ChainHead>,
    ) -> anyhow::Result<Enqueued> {
        if let Some(lease) = &self.lease {
            lease.ensure_held().await?;
        }
        let mut deliveries: Vec<Sent> = Vec::with_capacity(events.len() + dead.len() + 1);
        if let Some(head) = head {
            // Sent with the block's events and acknowledged together: one round trip.
            let payload = serde_json::to_vec(&head)?;
            let key = self.chain.chain_id.to_string();
            let delivery = self.send(&self.topics.blocks, &key, &payload).await?;
            deliveries.push((delivery, None));
        }
        for env in events {
            let payload = if retract {
                self.topics.payload(&env.retraction())
            } else {
                self.topics.payload(env)
            };
            let key = format!("{:#x}", env.partition_key());
            let kind = env.event.topic();
            let delivery = self.send(self.topics.of(kind), &key, &payload).await?;
            deliveries.push((delivery, Some((kind, env.block.map(|b| b.number)))));
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
        Ok(Enqueued {
            deliveries,
            retract,
            events: events.len() as u64,
            dead: dead.len() as u64,
        })
    }

    /// One record to the producer, waiting while its queue is full.
    async fn send(&self, topic: &str, key: &str, payload: &[u8]) -> anyhow::Result<DeliveryFuture> {
        loop {
            match self
                .producer
                .send_result(FutureRecord::to(topic).key(key).payload(payload))
            {
                Ok(delivery) => return Ok(delivery),
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    _,
                )) => tokio::time::sleep(Duration::from_millis(1)).await,
                Err((err, _)) => {
                    return Err(err)
                        .with_context(|| format!("could not enqueue a record for {topic}"))
                }
            }
        }
    }

    /// Waits for every acknowledgement of `sent`, then publishes the seals of its blocks.
    async fn settle(&self, sent: Enqueued) -> anyhow::Result<()> {
        self.settle_all(vec![sent]).await
    }

    /// [`Self::settle`] for several enqueued sets at once, in order: every acknowledgement
    /// first, then all their seals in one produce (one round trip for a catch-up of many
    /// blocks instead of one per block).
    async fn settle_all(&self, sent: Vec<Enqueued>) -> anyhow::Result<()> {
        let mut seals = Vec::new();
        let mut counts = Vec::with_capacity(sent.len());
        for sent in sent {
            let mut builder = SealBuilder::default();
            for (delivery, sealed) in sent.deliveries {
                let (partition, offset) = crate::publish::await_delivery(delivery).await?;
                if let Some((kind, block)) = sealed {
                    builder.delivered(
                        self.chain.chain_id,
                        block,
                        self.topics.of(kind),
                        partition,
                        offset,
                    );
                }
            }
            seals.extend(builder.seals(sent.retract));
            counts.push((sent.retract, sent.events, sent.dead));
        }
        // The blocks just published are whole below these offsets (domain::seal).
        crate::publish::publish_seals(&self.producer, &self.topics.seals, seals).await?;
        // Published, not yet checkpointed: a crash here republishes (readers key by event id).
        chainfold_platform::failpoint::hit("ingest.after_publish");
        for (retract, events, dead) in counts {
            let counter = if retract {
                &self.stats.retracted
            } else {
                &self.stats.published
            };
            counter.fetch_add(events, Ordering::Relaxed);
            self.stats.dead_lettered.fetch_add(dead, Ordering::Relaxed);
        }
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
    /// used below the reorg window) as a pipeline: `concurrency` ranges (logs, then their
    /// headers in JSON-RPC batches) are fetched ahead while earlier ranges are decoded and
    /// handed to the producer; up to [`RANGES_IN_FLIGHT`] ranges await their acknowledgements
    /// at once, and the checkpoint advances range by range, in order, once a range's every
    /// record is acknowledged.
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
        let mut last_log = Instant::now();
        let mut in_flight: VecDeque<(Fetched, Enqueued)> = VecDeque::new();
        let mut next = start;
        // Where the loop's time goes (logged at the end): waiting for ranges, decoding,
        // handing records to the producer, waiting for acknowledgements and checkpoints.
        let (mut waited, mut decoding, mut producing, mut settling) = (
            Duration::ZERO,
            Duration::ZERO,
            Duration::ZERO,
            Duration::ZERO,
        );
        let mut clock = Instant::now();
        // The span the next range is cut with; adjusted from each answer's size as it arrives.
        let span = Arc::new(AtomicU64::new(self.span));
        'restart: while next <= target {
            // Ranges are cut lazily, so a span change applies to every range not yet requested.
            let addresses = Arc::new(self.addresses.clone());
            let fetch = self.fetch.clone();
            let cut = span.clone();
            let max_range = self.chain.max_range;
            let ranges = futures::stream::unfold(next, move |from| {
                let cut = cut.clone();
                async move {
                    (from <= target).then(|| {
                        let width = cut.load(Ordering::Relaxed).clamp(1, max_range);
                        let to = (from + width - 1).min(target);
                        ((from, to), to + 1)
                    })
                }
            });
            // Each range is its own task, so answers are read and parsed on the runtime's
            // other workers while this loop decodes and publishes an earlier range; the
            // handles abort their fetches when the stream is dropped (an address list grew).
            let mut fetched = Box::pin(
                ranges
                    .map(move |(a, b)| {
                        let (fetch, addresses) = (fetch.clone(), addresses.clone());
                        tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
                            fetch.range(addresses, a, b).await
                        }))
                    })
                    .buffered(self.chain.concurrency),
            );
            while let Some(range) = fetched.next().await {
                let mut range = range.context("range fetch task failed")??;
                waited += clock.elapsed();
                let (a, b) = (range.from, range.to);
                let width = b - a + 1;
                let found = range.logs.len();
                // Pools announced in this range were not in the filter when it and the ranges
                // fetched after it were requested: fetch their logs here, and cut the next
                // ranges again with the grown address list.
                let known = range.addresses;
                self.discover(&range.logs).await?;
                let grown = self.addresses.len() > known;
                if grown {
                    let added = self.addresses[known..].to_vec();
                    let more = self.logs_in_range_for(&added, a, b).await?;
                    let more_headers = self.fetch.headers(&needed_headers(&more, b)).await?;
                    range.headers.extend(more_headers);
                    range.logs.extend(more);
                    range.logs = super::fetch::dedup_sorted(std::mem::take(&mut range.logs));
                }
                let times = range.times();
                let t = Instant::now();
                let (events, dead) = self.normalize_logs(&range.logs, &times).await;
                decoding += t.elapsed();
                let t = Instant::now();
                let sent = self.enqueue(&events, &dead, false, None).await?;
                producing += t.elapsed();
                range.logs = Vec::new();
                in_flight.push_back((range, sent));
                let t = Instant::now();
                if in_flight.len() > RANGES_IN_FLIGHT {
                    // The older half at once (its acknowledgements are the likeliest in).
                    let older = in_flight.len() - RANGES_IN_FLIGHT / 2;
                    let done: Vec<_> = in_flight.drain(..older).collect();
                    self.checkpoint_ranges(done, &bar).await?;
                }
                settling += t.elapsed();
                // Size the next ranges by this answer: about RANGE_LOGS logs each; after a
                // refusal, grow only a quarter at a time.
                let current = span.load(Ordering::Relaxed);
                let sized = if found == 0 {
                    current.saturating_mul(2)
                } else {
                    (u128::from(width) * RANGE_LOGS as u128 / found as u128) as u64
                };
                let refused = self.stats.range_splits.load(Ordering::Relaxed) > 0;
                let sized = if refused && sized > current {
                    current + current / 4 + 1
                } else {
                    sized
                };
                span.store(sized.clamp(1, self.chain.max_range), Ordering::Relaxed);
                next = b + 1;
                if last_log.elapsed() > Duration::from_secs(10) {
                    let done = next - start;
                    tracing::info!(chain = %self.chain.name, block = b, target, blocks_per_s = done as f64 / started.elapsed().as_secs_f64(), span = span.load(Ordering::Relaxed), "backfill progress");
                    last_log = Instant::now();
                }
                clock = Instant::now();
                if grown {
                    continue 'restart;
                }
            }
        }
        let t = Instant::now();
        self.checkpoint_ranges(in_flight.drain(..).collect(), &bar)
            .await?;
        settling += t.elapsed();
        self.span = span.load(Ordering::Relaxed);
        bar.finish_and_clear();
        let (seen, time) = self.header(target).await?;
        self.publish(&[], &[], false, Some(self.head(target, seen, time)))
            .await?;
        tracing::info!(
            chain = %self.chain.name,
            blocks = total,
            secs = started.elapsed().as_secs_f64(),
            waiting_for_ranges_s = waited.as_secs_f64(),
            decoding_s = decoding.as_secs_f64(),
            producing_s = producing.as_secs_f64(),
            settling_s = settling.as_secs_f64(),
            "backfill done"
        );
        Ok(())
    }

    /// Waits for consecutive backfilled ranges' acknowledgements, publishes their seals in one
    /// produce and moves the checkpoint to the last one's last block (by number and hash) in one
    /// commit: one round trip to the broker and one to Postgres for several ranges.
    async fn checkpoint_ranges(
        &mut self,
        ranges: Vec<(Fetched, Enqueued)>,
        bar: &indicatif::ProgressBar,
    ) -> anyhow::Result<()> {
        let mut ends = Vec::with_capacity(ranges.len());
        let mut sent = Vec::with_capacity(ranges.len());
        for (range, enqueued) in ranges {
            let end = match range.headers.get(&range.to) {
                Some(h) => h.seen,
                None => self.header(range.to).await?.0,
            };
            ends.push((range.from, range.to, end));
            sent.push(enqueued);
        }
        let Some(&(_, b, end)) = ends.last() else {
            return Ok(());
        };
        self.settle_all(sent).await?;
        state::advance(
            &self.pool,
            self.chain.chain_id,
            b,
            Some((end, &[])),
            self.chain.reorg_window,
        )
        .await?;
        for (from, to, seen) in ends {
            self.window.insert(to, seen);
            let width = to - from + 1;
            self.stats.blocks.fetch_add(width, Ordering::Relaxed);
            bar.inc(width);
        }
        self.window = self
            .window
            .split_off(&b.saturating_sub(self.chain.reorg_window));
        self.checkpoint = Some(b);
        Ok(())
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
        let mut logs = Vec::new();
        for base in self.fetch.filters(&self.addresses) {
            let filter = base.at_block_hash(seen.hash);
            logs.extend(
                with_retry("eth_getLogs", self.chain.rpc_url.expose_secret(), || {
                    super::wire::get_logs(&self.http, &filter)
                })
                .await?,
            );
        }
        let known = self.addresses.len();
        self.discover(&logs).await?;
        if self.addresses.len() > known {
            let added = Filter::new()
                .address(self.addresses[known..].to_vec())
                .at_block_hash(seen.hash);
            logs.extend(
                with_retry("eth_getLogs", self.chain.rpc_url.expose_secret(), || {
                    super::wire::get_logs(&self.http, &added)
                })
                .await?,
            );
        }
        let logs = super::fetch::dedup_sorted(logs);
        let times = HashMap::from([(seen.hash, time.unwrap_or_default())]);
        let (events, dead) = self.normalize_logs(&logs, &times).await;
        state::pend(
            &self.pool,
            self.chain.chain_id,
            &events.iter().collect::<Vec<_>>(),
        )
        .await?;
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

    /// Processes consecutive blocks `[from, to]` near the head at once, when the follower is
    /// more than one block behind: their headers in JSON-RPC batches, their logs in one range,
    /// every block's events and head published together and remembered in one transaction.
    /// Each header must extend the one before it (the first, the block we hold), and each log
    /// must carry its block's hash: a chain that changed between the calls is handled block by
    /// block instead. Returns the blocks processed (0 with nothing done: `from`'s parent is not
    /// the block we hold, a reorg) .
    async fn process_blocks(&mut self, from: u64, to: u64) -> anyhow::Result<u64> {
        let started = Instant::now();
        let numbers: Vec<u64> = (from..=to).collect();
        let headers = self.fetch.headers(&numbers).await?;
        let t_headers = started.elapsed();
        let mut linked = Vec::with_capacity(numbers.len());
        let mut parent = self.window.get(&from.wrapping_sub(1)).map(|b| b.hash);
        for n in &numbers {
            let Some(h) = headers.get(n).copied() else {
                break;
            };
            if parent.is_some_and(|p| p != h.seen.parent) {
                break;
            }
            parent = Some(h.seen.hash);
            linked.push((*n, h));
        }
        if linked.is_empty() {
            return Ok(0);
        }
        let last = linked.last().map_or(from, |(n, _)| *n);
        let known = self.addresses.len();
        let mut logs = self
            .logs_in_range_for(&self.addresses.clone(), from, last)
            .await?;
        self.discover(&logs).await?;
        if self.addresses.len() > known {
            let added = self.addresses[known..].to_vec();
            // With watched wallets the second read answers their transfers again: keep each once
            // (a repeated log would be a repeated event id in one journal insert).
            logs.extend(self.logs_in_range_for(&added, from, last).await?);
            logs = super::fetch::dedup_sorted(logs);
        }
        let hashes: HashMap<u64, B256> = linked.iter().map(|(n, h)| (*n, h.seen.hash)).collect();
        let consistent = logs.iter().all(|l| {
            l.block_number
                .and_then(|n| hashes.get(&n))
                .is_some_and(|h| l.block_hash == Some(*h))
        });
        if !consistent {
            tracing::debug!(
                from,
                to = last,
                "logs and headers disagree (the chain moved); block by block"
            );
            return Ok(u64::from(self.process_block(from).await?));
        }
        let times: HashMap<B256, DateTime<Utc>> = linked
            .iter()
            .filter_map(|(_, h)| h.time.map(|t| (h.seen.hash, t)))
            .collect();
        let mut by_block: BTreeMap<u64, Vec<Log>> = BTreeMap::new();
        for log in logs {
            by_block
                .entry(log.block_number.unwrap_or_default())
                .or_default()
                .push(log);
        }
        let mut normalized = Vec::with_capacity(linked.len());
        for (n, _) in &linked {
            let logs = by_block.remove(n).unwrap_or_default();
            normalized.push(self.normalize_logs(&logs, &times).await);
        }
        let t_logs = started.elapsed();
        let all: Vec<&Envelope> = normalized.iter().flat_map(|(e, _)| e).collect();
        state::pend(&self.pool, self.chain.chain_id, &all).await?;
        let t_pend = started.elapsed();
        let mut remembered = Vec::with_capacity(linked.len());
        let mut sent = Vec::with_capacity(linked.len());
        for ((n, h), (events, dead)) in linked.iter().zip(normalized) {
            sent.push(
                self.enqueue(&events, &dead, false, Some(self.head(*n, h.seen, h.time)))
                    .await?,
            );
            remembered.push((*n, h.seen, events));
        }
        let t_enqueue = started.elapsed();
        self.settle_all(sent).await?;
        let t_settle = started.elapsed();
        let journal: Vec<(u64, SeenBlock, &[Envelope])> = remembered
            .iter()
            .map(|(n, seen, events)| (*n, *seen, events.as_slice()))
            .collect();
        state::advance_blocks(
            &self.pool,
            self.chain.chain_id,
            &journal,
            self.chain.reorg_window,
        )
        .await?;
        for (n, seen, _) in &journal {
            self.window.insert(*n, *seen);
        }
        let floor = last.saturating_sub(self.chain.reorg_window);
        self.window = self.window.split_off(&(floor + 1));
        self.checkpoint = Some(last);
        let done = journal.len() as u64;
        tracing::debug!(
            from,
            to = last,
            headers_ms = t_headers.as_secs_f64() * 1e3,
            logs_ms = (t_logs - t_headers).as_secs_f64() * 1e3,
            pend_ms = (t_pend - t_logs).as_secs_f64() * 1e3,
            enqueue_ms = (t_enqueue - t_pend).as_secs_f64() * 1e3,
            settle_ms = (t_settle - t_enqueue).as_secs_f64() * 1e3,
            journal_ms = (started.elapsed() - t_settle).as_secs_f64() * 1e3,
            "caught up"
        );
        self.stats.blocks.fetch_add(done, Ordering::Relaxed);
        Ok(done)
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
        // Events a killed or failed pass published without checkpointing them: their blocks may
        // have been orphaned since, so they are retracted before anything else is published (the
        // pass below publishes the canonical ones again).
        let pending = state::pending(&self.pool, self.chain.chain_id).await?;
        if !pending.is_empty() {
            tracing::warn!(chain = %self.chain.name, events = pending.len(), "retracting events published and never checkpointed");
            self.publish(&pending, &[], true, None).await?;
            state::clear_pending(&self.pool, self.chain.chain_id).await?;
        }
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
            // Behind by more than a block (a restart, a slow pass, the tail of a backfill):
            // catch up in batches; at the head, block by block.
            let processed = if latest > number {
                let to = latest.min(number + CATCH_UP_BLOCKS - 1);
                self.process_blocks(number, to).await?
            } else {
                u64::from(self.process_block(number).await?)
            };
            if processed > 0 {
                number += processed;
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
