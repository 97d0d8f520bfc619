//! What a GraphQL operation may cost, over HTTP and WebSocket alike.
//!
//! - **Static** (before anything runs, `limit_complexity`): every field that reads Postgres costs
//!   [`QUERY_COST`] plus its selection; a connection costs [`QUERY_COST`] plus its selection
//!   times its page size, counted as at least 1 (`first: 0` still runs the query) and at most
//!   1000. Aliases count once per alias: 500 aliases of `wallet { creditScore }` are 500 reads.
//! - **At run time** ([`Metering`], one per operation): at most [`MAX_COUNTS`] `totalCount`s per
//!   operation (each is a `count(*)` over a filtered table, refused before it runs), and, for
//!   operations that arrive
//!   over a WebSocket, the same per-key (or per-IP) rate limit as HTTP requests, per-key caps on
//!   open subscriptions and connections ([`WsLimits`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextPrepareRequest, NextSubscribe,
};
use async_graphql::futures_util::stream::{self, BoxStream, StreamExt as _};
use async_graphql::{Request, Response, ServerError, ServerResult};

use crate::auth::{Bucket, RateLimiter};

/// Static complexity of a field that reads Postgres (the rest of the selection adds to it).
pub const QUERY_COST: usize = 10;
/// `totalCount`s one operation may ask for.
pub const MAX_COUNTS: u32 = 4;

/// The complexity of a connection field: one read plus its page of selections.
pub fn connection(first: Option<i32>, child_complexity: usize) -> usize {
    let first = first.unwrap_or(100).clamp(1, 1000) as usize;
    QUERY_COST.saturating_add(first.saturating_mul(child_complexity))
}

/// Limits on WebSocket use, shared by every connection of a server.
#[derive(Debug)]
pub struct WsLimits {
    pub limiter: Arc<RateLimiter>,
    pub max_connections: usize,
    pub max_subscriptions: usize,
    connections: Mutex<HashMap<Bucket, usize>>,
    subscriptions: Arc<Mutex<HashMap<Bucket, usize>>>,
}

impl WsLimits {
    pub fn new(
        limiter: Arc<RateLimiter>,
        max_connections: usize,
        max_subscriptions: usize,
    ) -> Self {
        WsLimits {
            limiter,
            max_connections,
            max_subscriptions,
            connections: Mutex::default(),
            subscriptions: Arc::default(),
        }
    }

    /// Opens a connection slot for `bucket`; the slot is freed when the returned session drops.
    pub fn open(
        self: &Arc<Self>,
        bucket: Bucket,
        rate_per_minute: u32,
    ) -> Result<WsSession, String> {
        let mut open = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(bucket).or_default();
        if *n >= self.max_connections {
            return Err(format!(
                "too many WebSocket connections for this key or address (at most {}): close one first",
                self.max_connections
            ));
        }
        *n += 1;
        Ok(WsSession {
            limits: self.clone(),
            bucket,
            rate_per_minute,
        })
    }

    /// Open connections of `bucket` (tests, metrics).
    pub fn connections_of(&self, bucket: Bucket) -> usize {
        self.connections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&bucket)
            .copied()
            .unwrap_or(0)
    }
}

/// One WebSocket connection's standing, in its session data: its operations are metered.
#[derive(Debug)]
pub struct WsSession {
    limits: Arc<WsLimits>,
    bucket: Bucket,
    rate_per_minute: u32,
}

impl Drop for WsSession {
    fn drop(&mut self) {
        let mut open = self
            .limits
            .connections
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.bucket) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.bucket);
            }
        }
    }
}

/// Frees a subscription slot when its stream is dropped (client stopped, connection closed).
struct SubscriptionSlot {
    subscriptions: Arc<Mutex<HashMap<Bucket, usize>>>,
    bucket: Bucket,
}

impl Drop for SubscriptionSlot {
    fn drop(&mut self) {
        let mut open = self.subscriptions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.bucket) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.bucket);
            }
        }
    }
}

fn refusal(code: &str, message: String) -> ServerError {
    let mut error = ServerError::new(message, None);
    error
        .extensions
        .get_or_insert_with(Default::default)
        .set("code", code);
    error
}

/// The run-time half of the cost model (see the module doc).
#[derive(Debug, Default, Clone, Copy)]
pub struct Metering;

impl ExtensionFactory for Metering {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(OperationMeter)
    }
}

#[derive(Debug, Default)]
struct OperationMeter;

/// The `totalCount`s an operation has left, in its request data; a collection charges one
/// before it counts ([`charge_count`]).
#[derive(Debug)]
pub struct CountBudget(AtomicU32);

/// Charges one `totalCount` to the operation, or refuses with `QUERY_TOO_COMPLEX` before the
/// count runs.
pub fn charge_count(ctx: &async_graphql::Context<'_>) -> Result<(), async_graphql::Error> {
    let Some(budget) = ctx.data_opt::<CountBudget>() else {
        return Ok(());
    };
    if budget.0.fetch_add(1, Ordering::Relaxed) >= MAX_COUNTS {
        use async_graphql::ErrorExtensions as _;
        return Err(async_graphql::Error::new(format!(
            "an operation may ask for totalCount at most {MAX_COUNTS} times (each counts every matching row): drop some, or count in fewer operations"
        ))
        .extend_with(|_, e| e.set("code", "QUERY_TOO_COMPLEX")));
    }
    Ok(())
}

#[async_graphql::async_trait::async_trait]
impl Extension for OperationMeter {
    async fn prepare_request(
        &self,
        ctx: &ExtensionContext<'_>,
        request: Request,
        next: NextPrepareRequest<'_>,
    ) -> ServerResult<Request> {
        // HTTP requests were admitted (and charged) by the handler; WebSocket operations are
        // charged here, one token each, from the same bucket.
        if let Some(session) = ctx.data_opt::<WsSession>() {
            if let Err(wait) = session
                .limits
                .limiter
                .check(session.bucket, session.rate_per_minute)
            {
                return Err(refusal(
                    "RATE_LIMITED",
                    format!(
                        "rate limit of {} operations per minute reached; retry in {wait}s",
                        session.rate_per_minute
                    ),
                ));
            }
        }
        next.run(ctx, request.data(CountBudget(AtomicU32::new(0))))
            .await
    }

    fn subscribe<'s>(
        &self,
        ctx: &ExtensionContext<'_>,
        inner: BoxStream<'s, Response>,
        next: NextSubscribe<'_>,
    ) -> BoxStream<'s, Response> {
        let Some(session) = ctx.data_opt::<WsSession>() else {
            return next.run(ctx, inner);
        };
        let subscriptions = session.limits.subscriptions.clone();
        let max = session.limits.max_subscriptions;
        let slot = {
            let mut open = subscriptions.lock().unwrap_or_else(|e| e.into_inner());
            let n = open.entry(session.bucket).or_default();
            if *n >= max {
                None
            } else {
                *n += 1;
                Some(SubscriptionSlot {
                    subscriptions: subscriptions.clone(),
                    bucket: session.bucket,
                })
            }
        };
        let Some(slot) = slot else {
            let error = refusal(
                "TOO_MANY_SUBSCRIPTIONS",
                format!("this key has {max} subscriptions open, the most allowed: stop one first"),
            );
            return stream::once(async move { Response::from_errors(vec![error]) }).boxed();
        };
        next.run(ctx, inner)
            .map(move |response| {
                let _held = &slot;
                response
            })
            .boxed()
    }
}
