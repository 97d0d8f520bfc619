//! Subscriptions: score, alert and decision updates pushed on commit, resumable by cursor.
//!
//! **Feed.** Each pushed table (`credit_score`, `risk_alert`, `credit_decision`, `pool_sync`)
//! notifies
//! `chainfold_<table>` after every insert statement with the range of sequence numbers it
//! inserted (migration `..._live_feeds.sql`); Postgres delivers that only after the commit, in
//! commit order, and the writers' advisory lock makes sequence order commit order. One
//! [`Hub`] per API process listens, reads each new range **once** and routes the rows: a
//! subscription that names wallets (or pools) is filed under each of them, so an update reaches
//! only the subscriptions of its wallet (plus those that watch everything), each through its own
//! bounded inbox. Ten thousand subscribers cost one listener and one query per commit, not ten
//! thousand, and an update costs a lookup, not ten thousand filter calls.
//!
//! **Cursors.** Every update carries `cursor`: its row's sequence number. A subscription with
//! `after: cursor` first pages through Postgres for what it missed (rows after the cursor that
//! match its filter, 500 at a time), then goes live, skipping live rows it already replayed: no
//! gap, no duplicate. A subscriber that falls more than its inbox (4,096 updates) behind catches up
//! from Postgres the same way instead of losing updates.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use async_graphql::{Context, Subscription, ID};
use futures::stream::{BoxStream, StreamExt as _};
use futures::FutureExt as _;
use sqlx::PgPool;
use tokio::sync::mpsc;

use crate::auth::caller;
use crate::decisions::CreditDecision;
use crate::error::{gql, ApiError, ApiResult};
use crate::input::parse_address;
use crate::risk::{alert_of, Alert, AlertKind, Severity};
use crate::types::{CreditScore, ScoreRow};

/// Rows a catch-up query reads at a time.
const CATCH_UP_PAGE: i64 = 500;
/// Updates a slow subscriber may fall behind before it catches up from Postgres.
const INBOX_SIZE: usize = 4096;

/// One subscription's live deliveries: a bounded channel the dispatcher fills, and a flag it
/// raises when the channel was full (the subscriber then catches up from Postgres). Dropping it
/// unregisters the subscription.
struct Inbox<T> {
    rx: mpsc::Receiver<Arc<T>>,
    lagged: Arc<AtomicBool>,
    route: Arc<Route<T>>,
    id: u64,
}

impl<T> Drop for Inbox<T> {
    fn drop(&mut self) {
        self.route.unregister(self.id);
    }
}

/// Who gets a feed's updates. Subscriptions that name their wallets (or pools) are filed under
/// each of them, so an update is offered only to the subscriptions of its key plus those that
/// watch everything: ten thousand single-wallet subscriptions cost one lookup per update, not
/// ten thousand filter calls.
#[derive(Debug)]
struct Route<T> {
    next: AtomicU64,
    table: std::sync::Mutex<RouteTable<T>>,
}

#[derive(Debug)]
struct RouteTable<T> {
    by_key: HashMap<String, Vec<u64>>,
    all: Vec<u64>,
    inboxes: HashMap<u64, Registered<T>>,
}

/// A registered inbox: its sender, its lag flag, the keys it is filed under.
type Registered<T> = (mpsc::Sender<Arc<T>>, Arc<AtomicBool>, Option<Vec<String>>);

impl<T> Default for Route<T> {
    fn default() -> Self {
        Route {
            next: AtomicU64::new(1),
            table: std::sync::Mutex::new(RouteTable {
                by_key: HashMap::new(),
                all: Vec::new(),
                inboxes: HashMap::new(),
            }),
        }
    }
}

impl<T> Route<T> {
    /// A new subscription under `keys` (`None`: every update).
    fn register(self: &Arc<Self>, keys: Option<Vec<String>>) -> Inbox<T> {
        let (tx, rx) = mpsc::channel(INBOX_SIZE);
        let lagged = Arc::new(AtomicBool::new(false));
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut t) = self.table.lock() {
            match &keys {
                None => t.all.push(id),
                Some(keys) => {
                    for k in keys {
                        let list = t.by_key.entry(k.clone()).or_default();
                        if !list.contains(&id) {
                            list.push(id);
                        }
                    }
                }
            }
            t.inboxes.insert(id, (tx, lagged.clone(), keys));
        }
        Inbox {
            rx,
            lagged,
            route: self.clone(),
            id,
        }
    }

    fn unregister(&self, id: u64) {
        if let Ok(mut t) = self.table.lock() {
            let Some((_, _, keys)) = t.inboxes.remove(&id) else {
                return;
            };
            match keys {
                None => t.all.retain(|x| *x != id),
                Some(keys) => {
                    for k in keys {
                        if let Some(list) = t.by_key.get_mut(&k) {
                            list.retain(|x| *x != id);
                            if list.is_empty() {
                                t.by_key.remove(&k);
                            }
                        }
                    }
                }
            }
        }
    }

    /// Offers `item` to the subscriptions filed under `key` and to those of every update. A
    /// full inbox is not waited for: its subscriber is marked lagged and catches up from
    /// Postgres.
    fn deliver(&self, key: &str, item: &Arc<T>) {
        let Ok(t) = self.table.lock() else {
            return;
        };
        let keyed = t.by_key.get(key).map(Vec::as_slice).unwrap_or_default();
        for id in keyed.iter().chain(t.all.iter()) {
            if let Some((tx, lagged, _)) = t.inboxes.get(id) {
                if let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send(item.clone()) {
                    lagged.store(true, Ordering::Relaxed);
                }
            }
        }
    }
}

/// A new credit score of a wallet.
#[derive(async_graphql::SimpleObject, Debug, Clone)]
pub struct ScoreUpdate {
    /// Resume after this update with `after: cursor`.
    pub cursor: String,
    pub chain_id: i64,
    pub wallet: String,
    pub score: CreditScore,
    /// True when a reorg orphaned the score's event: the score (sent earlier with cursor
    /// `retracts`) no longer holds; the wallet's latest score is again the one before it.
    pub retracted: bool,
    /// For a retraction, the cursor of the update it retracts.
    pub retracts: Option<String>,
}

/// A new risk alert.
#[derive(async_graphql::SimpleObject, Debug, Clone)]
pub struct AlertUpdate {
    pub cursor: String,
    pub alert: Alert,
}

/// A new lending decision.
#[derive(async_graphql::SimpleObject, Debug, Clone)]
pub struct DecisionUpdate {
    pub cursor: String,
    pub decision: CreditDecision,
}

/// New reserves of a constant-product pool (a `Sync` folded by the projector).
#[derive(async_graphql::SimpleObject, Debug, Clone)]
pub struct PoolUpdate {
    pub cursor: String,
    pub chain_id: i64,
    pub pool: String,
    pub token0: String,
    pub token1: String,
    /// Raw reserves (base units, integer strings), in token order.
    pub reserves: Vec<String>,
    pub block_number: Option<i64>,
    pub block_time: Option<chrono::DateTime<chrono::Utc>>,
    /// True when a reorg orphaned this `Sync` (sent earlier with cursor `retracts`): the
    /// pool's reserves are again those of the update before it.
    pub retracted: bool,
    /// For a retraction, the cursor of the update it retracts.
    pub retracts: Option<String>,
}

/// Which side of the threshold a wallet's health factor crossed to.
#[derive(async_graphql::Enum, Copy, Clone, Debug, PartialEq, Eq)]
pub enum HealthFactorState {
    /// Below `threshold` (from above, or already below when the subscription started).
    Below,
    /// Back at or above `threshold + hysteresis`, or no debt any more.
    Recovered,
}

/// A wallet's health factor crossed a lender's threshold.
#[derive(async_graphql::SimpleObject, Debug, Clone)]
pub struct HealthFactorAlert {
    /// Resume after this update with `after: cursor` (a score cursor).
    pub cursor: String,
    pub chain_id: i64,
    pub wallet: String,
    pub state: HealthFactorState,
    /// Null when the wallet no longer has debt.
    pub health_factor: Option<f64>,
    pub threshold: f64,
    /// The score whose health factor crossed.
    pub score: CreditScore,
}

/// Per wallet: is its health factor below the threshold now? Decides what to push.
#[derive(Debug)]
struct Threshold {
    threshold: f64,
    hysteresis: f64,
    below: std::collections::HashMap<(i64, String), bool>,
}

impl Threshold {
    /// The alert an update raises, if any: crossing below `threshold` while above, or back to
    /// at least `threshold + hysteresis` (or to no debt) while below. Retractions change nothing.
    fn update(&mut self, u: ScoreUpdate) -> Option<HealthFactorAlert> {
        if u.retracted {
            return None;
        }
        let hf = u.score.health_factor;
        let below = self
            .below
            .entry((u.chain_id, u.wallet.clone()))
            .or_insert(false);
        let state = match (hf, *below) {
            (Some(h), false) if h < self.threshold => HealthFactorState::Below,
            (Some(h), true) if h >= self.threshold + self.hysteresis => {
                HealthFactorState::Recovered
            }
            (None, true) => HealthFactorState::Recovered,
            _ => return None,
        };
        *below = state == HealthFactorState::Below;
        Some(HealthFactorAlert {
            cursor: u.cursor,
            chain_id: u.chain_id,
            wallet: u.wallet,
            state,
            health_factor: hf,
            threshold: self.threshold,
            score: u.score,
        })
    }
}

/// Something a feed carries: its sequence number.
trait Sequenced {
    fn seq(&self) -> i64;
}

impl Sequenced for ScoreUpdate {
    fn seq(&self) -> i64 {
        self.cursor.parse().unwrap_or_default()
    }
}
impl Sequenced for AlertUpdate {
    fn seq(&self) -> i64 {
        self.cursor.parse().unwrap_or_default()
    }
}
impl Sequenced for PoolUpdate {
    fn seq(&self) -> i64 {
        self.cursor.parse().unwrap_or_default()
    }
}
impl Sequenced for DecisionUpdate {
    fn seq(&self) -> i64 {
        self.cursor.parse().unwrap_or_default()
    }
}

/// What a subscriber asked for, applied to live rows and to catch-up queries alike.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub chain_id: Option<i64>,
    /// Wallets (scores, decisions) or `None` for all.
    pub wallets: Option<Vec<String>>,
    /// Alert kinds (stored names).
    pub kinds: Option<Vec<String>>,
    /// Stored severities accepted.
    pub severities: Option<Vec<String>>,
    /// Alerts touching any of these pools.
    pub pools: Option<Vec<String>>,
}

impl Filter {
    fn chain(&self, chain: i64) -> bool {
        self.chain_id.is_none_or(|c| c == chain)
    }
    fn wallet(&self, wallet: &str) -> bool {
        self.wallets
            .as_ref()
            .is_none_or(|w| w.iter().any(|x| x == wallet))
    }
    fn score(&self, u: &ScoreUpdate) -> bool {
        self.chain(u.chain_id) && self.wallet(&u.wallet)
    }
    fn decision(&self, u: &DecisionUpdate) -> bool {
        self.chain(u.decision.chain_id) && self.wallet(&u.decision.wallet)
    }
    fn pool(&self, u: &PoolUpdate) -> bool {
        self.chain(u.chain_id) && self.pools.as_ref().is_none_or(|p| p.contains(&u.pool))
    }
    fn alert(&self, u: &AlertUpdate) -> bool {
        let a = &u.alert;
        self.chain(a.chain_id)
            && self
                .kinds
                .as_ref()
                .is_none_or(|k| k.iter().any(|k| k == a.kind.stored()))
            && self
                .severities
                .as_ref()
                .is_none_or(|s| s.iter().any(|s| crate::risk::severity_of(s) == a.severity))
            && self
                .pools
                .as_ref()
                .is_none_or(|p| p.iter().any(|p| a.pools.contains(p)))
    }
}

/// Score rows after `after` (and at most `upto`) that match `f`, oldest first, with the
/// retractions of deleted ones (`feed_retraction`) in the same sequence order.
async fn fetch_scores(
    pool: &PgPool,
    after: i64,
    upto: Option<i64>,
    f: &Filter,
    limit: i64,
) -> sqlx::Result<Vec<ScoreUpdate>> {
    let rows =
        chainfold_store::feeds::scores(pool, after, upto, f.chain_id, f.wallets.as_deref(), limit)
            .await?;
    Ok(rows
        .into_iter()
        .map(|r| ScoreUpdate {
            cursor: r.row.id.to_string(),
            chain_id: r.row.chain_id,
            wallet: r.row.wallet.clone(),
            score: CreditScore::from(r.row),
            retracted: r.retracted,
            retracts: r.retracts.map(|c| c.to_string()),
        })
        .collect())
}

async fn fetch_alerts(
    pool: &PgPool,
    after: i64,
    upto: Option<i64>,
    f: &Filter,
    limit: i64,
) -> sqlx::Result<Vec<AlertUpdate>> {
    let filter = chainfold_store::feeds::AlertFilter {
        chain_id: f.chain_id,
        kinds: f.kinds.as_deref(),
        severities: f.severities.as_deref(),
        pools: f.pools.as_deref(),
    };
    let rows = chainfold_store::feeds::alerts(pool, after, upto, filter, limit).await?;
    Ok(rows
        .into_iter()
        .map(|r| AlertUpdate {
            cursor: r.0.to_string(),
            alert: alert_of(r),
        })
        .collect())
}

async fn fetch_pools(
    pool: &PgPool,
    after: i64,
    upto: Option<i64>,
    f: &Filter,
    limit: i64,
) -> sqlx::Result<Vec<PoolUpdate>> {
    let rows = chainfold_store::feeds::pool_syncs(
        pool,
        after,
        upto,
        f.chain_id,
        f.pools.as_deref(),
        limit,
    )
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| PoolUpdate {
            cursor: r.seq.to_string(),
            chain_id: r.chain_id,
            pool: r.pool,
            token0: r.token0,
            token1: r.token1,
            reserves: vec![r.reserve0, r.reserve1],
            block_number: r.block_number,
            block_time: r.block_time,
            retracted: r.retracted,
            retracts: r.retracts.map(|c| c.to_string()),
        })
        .collect())
}

async fn fetch_decisions(
    pool: &PgPool,
    after: i64,
    upto: Option<i64>,
    f: &Filter,
    limit: i64,
) -> sqlx::Result<Vec<DecisionUpdate>> {
    let rows = chainfold_store::feeds::decisions(
        pool,
        after,
        upto,
        f.chain_id,
        f.wallets.as_deref(),
        limit,
    )
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|r| {
            let (seq, record, tx, block, error) =
                (r.seq, r.record, r.tx_hash, r.tx_block, r.actuation_error);
            let record = serde_json::from_value(record)
                .map_err(|e| tracing::error!(%e, seq, "stored decision does not parse"))
                .ok()?;
            Some(DecisionUpdate {
                cursor: seq.to_string(),
                decision: CreditDecision::new(record, tx, block, error),
            })
        })
        .collect())
}

/// The process's one listener and the routes of its feeds.
#[derive(Debug, Clone)]
pub struct Hub {
    pool: PgPool,
    scores: Arc<Route<ScoreUpdate>>,
    alerts: Arc<Route<AlertUpdate>>,
    decisions: Arc<Route<DecisionUpdate>>,
    pools: Arc<Route<PoolUpdate>>,
    active: Arc<AtomicI64>,
    delivered: Arc<AtomicI64>,
    keys: Arc<crate::auth::KeyCache>,
}

/// Decrements the active-subscription count when a subscription's stream is dropped.
#[derive(Debug)]
struct ActiveGuard(Arc<AtomicI64>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Hub {
    /// Starts listening (`LISTEN chainfold_credit_score, …`) on a connection of its own.
    pub async fn start(pool: PgPool) -> anyhow::Result<Hub> {
        let mut listener = sqlx::postgres::PgListener::connect_with(&pool).await?;
        listener
            .listen_all([
                "chainfold_credit_score",
                "chainfold_risk_alert",
                "chainfold_credit_decision",
                "chainfold_pool_sync",
                "chainfold_api_key",
            ])
            .await?;
        let hub = Hub {
            pool: pool.clone(),
            scores: Arc::default(),
            alerts: Arc::default(),
            decisions: Arc::default(),
            pools: Arc::default(),
            active: Arc::default(),
            delivered: Arc::default(),
            keys: Arc::default(),
        };
        // Where each feed stands: rows after these are new to this process.
        let mut last: [i64; 4] = chainfold_store::feeds::positions(&pool).await?;
        let feed = hub.clone();
        tokio::spawn(async move {
            loop {
                let note = match listener.recv().await {
                    Ok(note) => note,
                    Err(err) => {
                        // PgListener reconnects on the next recv; what was notified meanwhile
                        // is read by the next notification's range (rows after `last`).
                        tracing::warn!(error = %err, "feed listener lost its connection; reconnecting");
                        // A revocation may have been notified meanwhile.
                        feed.keys.evict(None);
                        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                        continue;
                    }
                };
                if note.channel() == "chainfold_api_key" {
                    feed.keys.evict(Some(note.payload()));
                    continue;
                }
                let hi = note
                    .payload()
                    .split_once(',')
                    .and_then(|(_, hi)| hi.parse::<i64>().ok());
                if let Err(err) = feed.dispatch(note.channel(), &mut last, hi).await {
                    tracing::warn!(error = %err, channel = note.channel(), "feed read failed; the next notification reads it again");
                }
            }
        });
        Ok(hub)
    }

    /// Reads the rows of `channel` after the last dispatched one (up to `hi`) and routes
    /// them. Reading from `last`, not from the notification's `lo`, also picks up rows whose
    /// notification was missed while the listener reconnected.
    async fn dispatch(
        &self,
        channel: &str,
        last: &mut [i64; 4],
        hi: Option<i64>,
    ) -> sqlx::Result<()> {
        let all = Filter::default();
        let limit = i64::MAX;
        match channel {
            "chainfold_credit_score" => {
                for u in fetch_scores(&self.pool, last[0], hi, &all, limit).await? {
                    last[0] = last[0].max(u.seq());
                    let u = Arc::new(u);
                    self.scores.deliver(&u.wallet, &u);
                }
            }
            "chainfold_risk_alert" => {
                for u in fetch_alerts(&self.pool, last[1], hi, &all, limit).await? {
                    last[1] = last[1].max(u.seq());
                    self.alerts.deliver("", &Arc::new(u));
                }
            }
            "chainfold_credit_decision" => {
                for u in fetch_decisions(&self.pool, last[2], hi, &all, limit).await? {
                    last[2] = last[2].max(u.seq());
                    self.decisions
                        .deliver(&u.decision.wallet.clone(), &Arc::new(u));
                }
            }
            "chainfold_pool_sync" => {
                for u in fetch_pools(&self.pool, last[3], hi, &all, limit).await? {
                    last[3] = last[3].max(u.seq());
                    let u = Arc::new(u);
                    self.pools.deliver(&u.pool, &u);
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// The API key cache this listener keeps current.
    pub fn keys(&self) -> Arc<crate::auth::KeyCache> {
        self.keys.clone()
    }

    /// Subscriptions open now.
    pub fn active(&self) -> i64 {
        self.active.load(Ordering::Relaxed)
    }

    /// Updates delivered to subscribers since start.
    pub fn delivered(&self) -> i64 {
        self.delivered.load(Ordering::Relaxed)
    }

    fn guard(&self) -> ActiveGuard {
        self.active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(self.active.clone())
    }
}

type Fetch<T> =
    Arc<dyn Fn(i64) -> futures::future::BoxFuture<'static, sqlx::Result<Vec<T>>> + Send + Sync>;

/// A subscriber's position: what it has been sent, what it still has to catch up on.
struct Resume<T> {
    queue: VecDeque<T>,
    rx: Inbox<T>,
    last: i64,
    catching_up: bool,
    fetch: Fetch<T>,
    keep: Arc<dyn Fn(&T) -> bool + Send + Sync>,
    delivered: Arc<AtomicI64>,
    _guard: ActiveGuard,
}

/// The stream of a subscription: catch-up pages from Postgres after `after` (when given), then
/// live rows from its inbox, skipping what was already sent; a lagging subscriber catches
/// up from Postgres again. Ends when the feed closes or Postgres fails during a catch-up.
fn resumable<T: Sequenced + Clone + Send + Sync + 'static>(
    rx: Inbox<T>,
    after: Option<i64>,
    fetch: Fetch<T>,
    keep: Arc<dyn Fn(&T) -> bool + Send + Sync>,
    hub: &Hub,
) -> BoxStream<'static, T> {
    let state = Resume {
        queue: VecDeque::new(),
        rx,
        last: after.unwrap_or(0),
        catching_up: after.is_some(),
        fetch,
        keep,
        delivered: hub.delivered.clone(),
        _guard: hub.guard(),
    };
    futures::stream::unfold(state, |mut s| async move {
        loop {
            if let Some(item) = s.queue.pop_front() {
                s.last = s.last.max(item.seq());
                s.delivered.fetch_add(1, Ordering::Relaxed);
                return Some((item, s));
            }
            if s.catching_up {
                match (s.fetch)(s.last).await {
                    Ok(page) if page.is_empty() => s.catching_up = false,
                    Ok(page) => s.queue.extend(page),
                    Err(err) => {
                        tracing::warn!(error = %err, "subscription catch-up failed; closing it");
                        return None;
                    }
                }
                continue;
            }
            if s.rx.lagged.swap(false, Ordering::Relaxed) {
                tracing::debug!("subscriber lagged; catching up from Postgres");
                s.catching_up = true;
                continue;
            }
            match s.rx.rx.recv().await {
                Some(item) => {
                    if item.seq() > s.last && (s.keep)(&item) {
                        s.queue.push_back((*item).clone());
                    }
                }
                None => return None,
            }
        }
    })
    .boxed()
}

/// A subscription on one feed: catch-up pages from `fetch` (rows after a sequence number that
/// match `filter`), live rows from `rx` that `keep` accepts.
fn feed<T, F, Fut>(
    hub: &Hub,
    rx: Inbox<T>,
    after: Option<i64>,
    filter: Filter,
    fetch: F,
    keep: fn(&Filter, &T) -> bool,
) -> BoxStream<'static, T>
where
    T: Sequenced + Clone + Send + Sync + 'static,
    F: Fn(PgPool, i64, Filter) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = sqlx::Result<Vec<T>>> + Send + 'static,
{
    let (pool, f) = (hub.pool.clone(), filter.clone());
    let fetch: Fetch<T> = Arc::new(move |last| fetch(pool.clone(), last, f.clone()).boxed());
    resumable(rx, after, fetch, Arc::new(move |u| keep(&filter, u)), hub)
}

/// Parses an optional list of addresses.
fn parse_addresses(list: Option<Vec<String>>) -> ApiResult<Option<Vec<String>>> {
    list.map(|l| {
        l.iter()
            .map(|a| parse_address(a))
            .collect::<Result<Vec<_>, _>>()
            .map_err(gql)
    })
    .transpose()
}

/// Parses a subscription cursor.
fn parse_after(after: Option<String>) -> ApiResult<Option<i64>> {
    after
        .map(|a| {
            a.trim().parse::<i64>().map_err(|_| {
                gql(ApiError::BadUserInput(format!(
                    "after: {a:?} is not a cursor of this subscription"
                )))
            })
        })
        .transpose()
}

/// Wallets named directly and through a book (which must belong to the caller's key).
async fn watched_wallets(
    ctx: &Context<'_>,
    key_id: i64,
    chain_id: Option<i64>,
    wallets: Option<Vec<String>>,
    book: Option<ID>,
) -> ApiResult<Option<Vec<String>>> {
    let mut out = parse_addresses(wallets)?;
    if let Some(book) = book {
        let pool = ctx.data_unchecked::<PgPool>();
        let members = crate::books::members(pool, key_id, &book, chain_id).await?;
        out.get_or_insert_with(Vec::new).extend(members);
    }
    Ok(out)
}

/// The subscription root.
#[derive(Debug, Default)]
pub struct SubscriptionRoot;

#[Subscription]
impl SubscriptionRoot {
    /// New credit scores of the given wallets and/or a book's wallets (all wallets when neither
    /// is given), on a chain or all. Needs an API key. `after`: a cursor from an earlier update;
    /// what was stored after it is replayed first.
    async fn score_updated(
        &self,
        ctx: &Context<'_>,
        chain_id: Option<i64>,
        wallets: Option<Vec<String>>,
        book: Option<ID>,
        after: Option<String>,
    ) -> async_graphql::Result<BoxStream<'static, ScoreUpdate>> {
        let key = caller(ctx).key_id("scoreUpdated")?;
        let after = parse_after(after)?;
        let filter = Filter {
            chain_id,
            wallets: watched_wallets(ctx, key, chain_id, wallets, book).await?,
            ..Filter::default()
        };
        let hub = hub(ctx)?;
        Ok(feed(
            hub,
            hub.scores.register(filter.wallets.clone()),
            after,
            filter,
            |pool, last, f| async move { fetch_scores(&pool, last, None, &f, CATCH_UP_PAGE).await },
            Filter::score,
        ))
    }

    /// Health factors crossing `threshold`, evaluated on the server for the given wallets and/or
    /// a book's (all wallets when neither is given): `BELOW` when a wallet's health factor
    /// drops under it (and at the start, for wallets already under it), `RECOVERED` once it is
    /// back at `threshold + hysteresis` or the debt is gone; no repeats in between. Fed by
    /// the scores the scorer commits. Needs an API key; `after` (a cursor of this feed) resumes
    /// with the state as of that cursor.
    #[allow(clippy::too_many_arguments)]
    async fn health_factor_below(
        &self,
        ctx: &Context<'_>,
        chain_id: Option<i64>,
        threshold: f64,
        #[graphql(default = 0.05)] hysteresis: f64,
        wallets: Option<Vec<String>>,
        book: Option<ID>,
        after: Option<String>,
    ) -> async_graphql::Result<BoxStream<'static, HealthFactorAlert>> {
        let key = caller(ctx).key_id("healthFactorBelow")?;
        if !(threshold.is_finite()
            && threshold > 0.0
            && hysteresis.is_finite()
            && hysteresis >= 0.0)
        {
            return Err(gql(ApiError::BadUserInput(format!(
                "threshold must be > 0 and hysteresis >= 0, got {threshold} and {hysteresis}"
            ))));
        }
        let after = parse_after(after)?;
        let filter = Filter {
            chain_id,
            wallets: watched_wallets(ctx, key, chain_id, wallets, book).await?,
            ..Filter::default()
        };
        let hub = hub(ctx)?;
        // Where the feed starts, and each wallet's latest health factor at that point.
        let start: i64 = match after {
            Some(a) => a,
            None => chainfold_store::scores::last_id(&hub.pool)
                .await
                .map_err(gql)?,
        };
        // Each watched wallet's latest score at that point: one read for the state and for
        // the wallets to report as already below.
        let latest: Vec<ScoreRow> = chainfold_store::scores::latest_at(
            &hub.pool,
            start,
            filter.chain_id,
            filter.wallets.as_deref(),
        )
        .await
        .map_err(gql)?;
        let mut state = Threshold {
            threshold,
            hysteresis,
            below: Default::default(),
        };
        let mut initial = Vec::new();
        for row in latest {
            let below = row.health_factor.is_some_and(|h| h < threshold);
            state
                .below
                .insert((row.chain_id, row.wallet.clone()), below);
            // Wallets already below when a fresh subscription starts are reported first.
            if below && after.is_none() {
                let score = CreditScore::from(row);
                initial.push(HealthFactorAlert {
                    cursor: start.to_string(),
                    chain_id: score.chain_id,
                    wallet: score.wallet.clone(),
                    state: HealthFactorState::Below,
                    health_factor: score.health_factor,
                    threshold,
                    score,
                });
            }
        }
        let state = std::sync::Mutex::new(state);
        let updates = feed(
            hub,
            hub.scores.register(filter.wallets.clone()),
            Some(start),
            filter,
            |pool, last, f| async move { fetch_scores(&pool, last, None, &f, CATCH_UP_PAGE).await },
            Filter::score,
        )
        .filter_map(move |u| {
            let alert = state.lock().ok().and_then(|mut s| s.update(u));
            futures::future::ready(alert)
        });
        Ok(futures::stream::iter(initial).chain(updates).boxed())
    }

    /// New risk alerts by kind, at or above a severity, touching any of the given pools.
    /// Needs an API key; `after` resumes.
    async fn alerts(
        &self,
        ctx: &Context<'_>,
        chain_id: Option<i64>,
        kinds: Option<Vec<AlertKind>>,
        min_severity: Option<Severity>,
        pools: Option<Vec<String>>,
        after: Option<String>,
    ) -> async_graphql::Result<BoxStream<'static, AlertUpdate>> {
        caller(ctx).key_id("alerts (subscription)")?;
        let after = parse_after(after)?;
        let pools = parse_addresses(pools)?;
        let filter = Filter {
            chain_id,
            kinds: kinds.map(|k| k.iter().map(|k| k.stored().to_owned()).collect()),
            severities: min_severity.map(Severity::and_above),
            pools,
            ..Filter::default()
        };
        let hub = hub(ctx)?;
        Ok(feed(
            hub,
            hub.alerts.register(None),
            after,
            filter,
            |pool, last, f| async move { fetch_alerts(&pool, last, None, &f, CATCH_UP_PAGE).await },
            Filter::alert,
        ))
    }

    /// New reserves of the given pools (all pools when omitted), on a chain or all: one update
    /// per `Sync` the projector commits. Needs an API key; `after` resumes.
    async fn pool_updated(
        &self,
        ctx: &Context<'_>,
        chain_id: Option<i64>,
        pools: Option<Vec<String>>,
        after: Option<String>,
    ) -> async_graphql::Result<BoxStream<'static, PoolUpdate>> {
        caller(ctx).key_id("poolUpdated")?;
        let after = parse_after(after)?;
        let filter = Filter {
            chain_id,
            pools: parse_addresses(pools)?,
            ..Filter::default()
        };
        let hub = hub(ctx)?;
        Ok(feed(
            hub,
            hub.pools.register(filter.pools.clone()),
            after,
            filter,
            |pool, last, f| async move { fetch_pools(&pool, last, None, &f, CATCH_UP_PAGE).await },
            Filter::pool,
        ))
    }

    /// New lending decisions (requests and band-change pushes) of the given wallets and/or a
    /// book's. Needs an API key; `after` resumes.
    async fn decisions(
        &self,
        ctx: &Context<'_>,
        chain_id: Option<i64>,
        wallets: Option<Vec<String>>,
        book: Option<ID>,
        after: Option<String>,
    ) -> async_graphql::Result<BoxStream<'static, DecisionUpdate>> {
        let key = caller(ctx).key_id("decisions (subscription)")?;
        let after = parse_after(after)?;
        let filter = Filter {
            chain_id,
            wallets: watched_wallets(ctx, key, chain_id, wallets, book).await?,
            ..Filter::default()
        };
        let hub = hub(ctx)?;
        Ok(feed(
            hub,
            hub.decisions.register(filter.wallets.clone()),
            after,
            filter,
            |pool, last, f| async move { fetch_decisions(&pool, last, None, &f, CATCH_UP_PAGE).await },
            Filter::decision,
        ))
    }
}

fn hub<'a>(ctx: &'a Context<'_>) -> ApiResult<&'a Hub> {
    ctx.data_opt::<Hub>().ok_or_else(|| {
        async_graphql::Error::new("subscriptions are served by `chainfold serve` only")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(seq: i64, hf: Option<f64>, retracted: bool) -> ScoreUpdate {
        ScoreUpdate {
            cursor: seq.to_string(),
            chain_id: 1,
            wallet: "0xaa".into(),
            score: CreditScore {
                cursor: seq.to_string(),
                chain_id: 1,
                wallet: "0xaa".into(),
                score: 600,
                band: crate::types::ScoreBand::Fair,
                probability_of_default: None,
                health_factor: hf,
                reasons: vec![],
                model_version: "m".into(),
                model_sha256: "s".into(),
                computed_at: None,
                event_id: format!("e{seq}"),
                kafka_topic: "t".into(),
                kafka_partition: 0,
                kafka_offset: seq,
                block_number: None,
            },
            retracted,
            retracts: None,
        }
    }

    #[test]
    fn routes_deliver_by_key_flag_full_inboxes_and_forget_dropped_subscriptions() {
        let route: Arc<Route<u32>> = Arc::default();
        let mut a = route.register(Some(vec!["0xaa".into()]));
        let mut all = route.register(None);
        let b = route.register(Some(vec!["0xbb".into(), "0xaa".into()]));
        route.deliver("0xaa", &Arc::new(1));
        route.deliver("0xcc", &Arc::new(2));
        assert_eq!(a.rx.try_recv().ok().as_deref(), Some(&1));
        assert!(a.rx.try_recv().is_err(), "0xcc is not a's");
        assert_eq!(all.rx.try_recv().ok().as_deref(), Some(&1));
        assert_eq!(all.rx.try_recv().ok().as_deref(), Some(&2));
        assert_eq!(route.table.lock().expect("lock").by_key["0xaa"].len(), 2);
        drop(b);
        let t = route.table.lock().expect("lock");
        assert_eq!(t.by_key["0xaa"], vec![a.id]);
        assert!(!t.by_key.contains_key("0xbb"));
        drop(t);
        for i in 0..=INBOX_SIZE as u32 {
            route.deliver("0xaa", &Arc::new(i));
        }
        assert!(
            a.lagged.load(Ordering::Relaxed),
            "a full inbox marks its subscriber lagged"
        );
    }

    #[test]
    fn health_factor_alerts_fire_once_per_crossing_with_hysteresis() {
        let mut t = Threshold {
            threshold: 1.2,
            hysteresis: 0.1,
            below: Default::default(),
        };
        let states: Vec<Option<HealthFactorState>> = [
            (Some(1.5), false),  // above: nothing
            (Some(1.19), false), // crosses below
            (Some(1.1), false),  // still below: no repeat
            (Some(1.25), false), // above threshold but inside the hysteresis band: nothing
            (Some(1.0), true),   // a retraction changes nothing
            (Some(1.3), false),  // recovered (>= 1.2 + 0.1)
            (Some(1.21), false), // above: nothing
            (Some(0.9), false),  // below again
            (None, false),       // debt repaid: recovered
        ]
        .into_iter()
        .enumerate()
        .map(|(i, (hf, r))| t.update(update(i as i64, hf, r)).map(|a| a.state))
        .collect();
        use HealthFactorState::*;
        assert_eq!(
            states,
            vec![
                None,
                Some(Below),
                None,
                None,
                None,
                Some(Recovered),
                None,
                Some(Below),
                Some(Recovered)
            ]
        );
    }
}
