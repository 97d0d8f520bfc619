//! The GraphQL API (`chainfold serve`): async-graphql on axum over the Postgres read models.
//!
//! Routes: `POST /graphql` (queries and mutations), `GET /graphql` upgraded to a WebSocket
//! (subscriptions, `graphql-transport-ws` and the legacy `graphql-ws`), `GET /` (GraphiQL),
//! `GET /health` (each dependency), `GET /metrics` (Prometheus text), `GET /dashboard` (the
//! lender page).
//! The schema is built in [`schema::build`]; `schema.graphql` at the workspace root is generated
//! from it and a test fails when the file is stale.
//!
//! Modules, each importing only those listed before it (no cycles):
//!
//! - [`error`], [`input`] (addresses, page sizes, money text), [`auth`], [`cost`] (query
//!   complexity and depth limits);
//! - [`types`]: the output types as plain data;
//! - [`loaders`] (batched reads, Redis first), [`collection`] (Graph-style `where`/`orderBy`
//!   turned into bound SQL), [`aave`], [`books`], [`risk`], [`decisions`], [`collections`]
//!   (the paged lists);
//! - [`objects`]: the nested fields of wallets and pools, over all of the above;
//! - [`live`]: subscriptions fed by Postgres `NOTIFY`; [`metrics`]; [`schema`]: the roots.

pub mod aave;
pub mod auth;
pub mod books;
pub mod collection;
pub mod collections;
pub mod cost;
pub mod decisions;
pub mod error;
pub mod input;
pub mod live;
pub mod loaders;
pub mod metrics;
pub mod objects;
pub mod risk;
pub mod schema;
pub mod types;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use std::sync::Arc;

use async_graphql::http::{GraphiQLSource, ALL_WEBSOCKET_PROTOCOLS};
use async_graphql_axum::{GraphQLProtocol, GraphQLRequest, GraphQLResponse, GraphQLWebSocket};
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chainfold_platform::config::{KafkaArgs, PostgresArgs, RedisArgs};
use redis::aio::ConnectionManager;
use sqlx::PgPool;

pub use schema::{build as build_schema, ChainfoldSchema};

/// `chainfold serve` settings.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    #[command(flatten)]
    pub postgres: PostgresArgs,
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Lending decision policy file; the shipped `scoring/policy.toml` (built in) when omitted.
    #[arg(long = "policy", env = "CHAINFOLD_POLICY")]
    pub policy: Option<std::path::PathBuf>,
    /// Address the API listens on; port 0 picks a free port.
    #[arg(
        long = "listen",
        env = "CHAINFOLD_LISTEN",
        default_value = "127.0.0.1:8000"
    )]
    pub listen: SocketAddr,
    /// Longest a single SQL statement may run for one request, e.g. `5s`.
    #[arg(long = "statement-timeout", env = "CHAINFOLD_STATEMENT_TIMEOUT", default_value = "5s", value_parser = chainfold_platform::config::parse_duration)]
    pub statement_timeout: Duration,
    /// Largest accepted request body in bytes (an oversized query is refused with 413).
    #[arg(long = "max-body-bytes", env = "CHAINFOLD_MAX_BODY_BYTES", default_value_t = 64 * 1024)]
    pub max_body_bytes: usize,
    /// Largest response body in bytes; a larger answer is replaced by a `RESPONSE_TOO_LARGE`
    /// error.
    #[arg(long = "max-response-bytes", env = "CHAINFOLD_MAX_RESPONSE_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_response_bytes: usize,
    /// Requests per minute one IP may make without an API key (keys have their own budget,
    /// set by `chainfold apikey create --rate-per-minute`).
    #[arg(
        long = "public-rate-per-minute",
        env = "CHAINFOLD_PUBLIC_RATE_PER_MINUTE",
        default_value_t = 600
    )]
    pub public_rate_per_minute: u32,
    /// Open WebSocket connections one API key (or, without a key, one IP) may hold.
    #[arg(
        long = "max-ws-connections",
        env = "CHAINFOLD_MAX_WS_CONNECTIONS",
        default_value_t = 16
    )]
    pub max_ws_connections: usize,
    /// Open subscriptions one API key may hold over all its connections.
    #[arg(
        long = "max-subscriptions",
        env = "CHAINFOLD_MAX_SUBSCRIPTIONS",
        default_value_t = 256
    )]
    pub max_subscriptions: usize,
    /// Largest WebSocket message accepted, in bytes (a larger one is not read: that connection
    /// is closed with code 1009, "message too big"; the key's other connections carry on).
    #[arg(long = "max-ws-message-bytes", env = "CHAINFOLD_MAX_WS_MESSAGE_BYTES", default_value_t = 64 * 1024)]
    pub max_ws_message_bytes: usize,
    /// Serve wallets' latest scores and lending summaries from Redis first (versioned copies the
    /// scorer and the projector write after each commit; Postgres on a miss). `false` reads
    /// Postgres only.
    #[arg(
        long = "redis-reads",
        env = "CHAINFOLD_REDIS_READS",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub redis_reads: bool,
    /// Consumer groups whose lag `/metrics` reports (comma-separated).
    #[arg(
        long = "metrics-groups",
        env = "CHAINFOLD_METRICS_GROUPS",
        value_delimiter = ',',
        default_value = "chainfold-projector,chainfold-scorer,chainfold-risk"
    )]
    pub metrics_groups: Vec<String>,
}

impl Config {
    pub fn new(postgres: PostgresArgs, redis: RedisArgs, listen: SocketAddr) -> Self {
        Config {
            postgres,
            redis,
            kafka: KafkaArgs::new("127.0.0.1:9092", ""),
            policy: None,
            listen,
            statement_timeout: Duration::from_secs(5),
            max_body_bytes: 64 * 1024,
            max_response_bytes: 4 * 1024 * 1024,
            public_rate_per_minute: 600,
            max_ws_connections: 16,
            max_subscriptions: 256,
            max_ws_message_bytes: 64 * 1024,
            redis_reads: true,
            metrics_groups: ["chainfold-projector", "chainfold-scorer", "chainfold-risk"]
                .map(String::from)
                .to_vec(),
        }
    }
}

#[derive(Clone)]
struct AppState {
    pool: PgPool,
    redis: ConnectionManager,
    schema: ChainfoldSchema,
    limiter: Arc<auth::RateLimiter>,
    keys: Arc<auth::KeyCache>,
    max_response_bytes: usize,
    public_rate: u32,
    metrics: Arc<metrics::Metrics>,
    ws_limits: Arc<cost::WsLimits>,
    max_ws_message_bytes: usize,
}

/// The API's Postgres pool: every statement bounded by `statement_timeout`, and Postgres's plan
/// cache kept. Planning each point read as it runs made it 2.8× slower (`pgbench`, BENCHMARKS.md);
/// a plan cached over an emptied table stays on the index unless the table was analyzed while
/// empty, and that plan lasts until the next autoanalyze, with each statement bounded meanwhile.
pub async fn connect_postgres(config: &Config) -> anyhow::Result<PgPool> {
    chainfold_platform::postgres::connect(&config.postgres, Some(config.statement_timeout)).await
}

/// A bound, not yet serving, API server (binds in `build` so tests can use port 0).
pub struct App {
    listener: tokio::net::TcpListener,
    router: Router,
    schema: ChainfoldSchema,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("addr", &self.listener.local_addr().ok())
            .finish()
    }
}

impl App {
    /// Connects to Postgres (running migrations) and Redis, builds the schema and binds.
    pub async fn build(config: Config) -> anyhow::Result<App> {
        let pool = connect_postgres(&config).await?;
        let redis = chainfold_platform::redis_cache::connect(&config.redis).await?;
        let policy = chainfold_store::decisions::policy_or_shipped(config.policy.as_deref())?;
        let topic = format!(
            "{}{}",
            config.kafka.topic_prefix,
            chainfold_domain::topics::DECISIONS
        );
        // Reads never need Kafka: a broker that is down fails `requestCredit`, not the API.
        if let Err(err) =
            chainfold_platform::kafka::ensure_topics(&config.kafka, std::slice::from_ref(&topic))
                .await
        {
            tracing::warn!(error = %format!("{err:#}"), "decisions topic not ready; requestCredit will fail until the broker answers");
        }
        let desk = decisions::DecisionDesk {
            policy,
            producer: chainfold_platform::kafka::producer(&config.kafka)?,
            topic,
            redis: Some((redis.clone(), config.redis.prefix.clone())),
        };
        let hub = live::Hub::start(pool.clone())
            .await
            .context("could not listen for the subscription feeds")?;
        let latest = config.redis_reads.then(|| {
            Arc::new(loaders::Latest::new(
                redis.clone(),
                config.redis.prefix.clone(),
                pool.clone(),
            ))
        });
        let loaders = loaders::Loaders::with_latest(pool.clone(), latest);
        let schema =
            schema::build_parts(pool.clone(), Some(desk), Some(hub.clone()), loaders.clone());
        let keys = hub.keys();
        let metrics = Arc::new(
            metrics::Metrics::new(hub, config.kafka.clone(), config.metrics_groups.clone())
                .with_loaders(loaders),
        );
        let limiter: Arc<auth::RateLimiter> = Arc::default();
        let ws_limits = Arc::new(cost::WsLimits::new(
            limiter.clone(),
            config.max_ws_connections,
            config.max_subscriptions,
        ));
        let router = Router::new()
            .route("/", get(graphiql))
            .route("/graphql", get(graphql_ws).post(graphql_http))
            .route("/health", get(health))
            .route("/metrics", get(metrics::serve))
            .route("/dashboard", get(dashboard))
            .layer(tower_http::limit::RequestBodyLimitLayer::new(
                config.max_body_bytes,
            ))
            .with_state(AppState {
                pool,
                redis,
                schema: schema.clone(),
                limiter,
                keys,
                max_response_bytes: config.max_response_bytes,
                public_rate: config.public_rate_per_minute,
                metrics,
                ws_limits,
                max_ws_message_bytes: config.max_ws_message_bytes,
            });
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("could not listen on {}", config.listen))?;
        Ok(App {
            listener,
            router,
            schema,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The bound port (useful with port 0).
    pub fn port(&self) -> u16 {
        self.local_addr().port()
    }

    /// The schema, for executing queries in-process.
    pub fn schema(&self) -> &ChainfoldSchema {
        &self.schema
    }

    /// Serves until `shutdown` resolves, finishing in-flight requests.
    pub async fn run_until_stopped(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        tracing::info!(addr = %self.local_addr(), "api listening");
        axum::serve(
            self.listener,
            self.router
                .into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown)
        .await
        .context("api server failed")
    }
}

/// A GraphQL error response outside the schema (auth, rate limit), with a status.
fn refusal(status: StatusCode, code: &str, message: String, retry_after: Option<u64>) -> Response {
    let body = Json(serde_json::json!({
        "errors": [{"message": message, "extensions": {"code": code}}]
    }));
    let mut response = (status, body).into_response();
    if let Some(seconds) = retry_after {
        if let Ok(v) = seconds.to_string().parse() {
            response.headers_mut().insert("retry-after", v);
        }
    }
    response
}

/// Resolves the caller of a request and spends one token of its rate limit.
async fn admit(
    state: &AppState,
    headers: &HeaderMap,
    peer: SocketAddr,
) -> Result<auth::Caller, Response> {
    let presented = auth::presented_key(headers);
    let caller = match state.keys.resolve(&state.pool, presented.as_deref()).await {
        Ok(caller) => caller,
        Err(auth::KeyError::Invalid) => {
            return Err(refusal(
                StatusCode::UNAUTHORIZED,
                "UNAUTHENTICATED",
                auth::KeyError::Invalid.to_string(),
                None,
            ))
        }
        Err(err) => {
            return Err(refusal(
                StatusCode::SERVICE_UNAVAILABLE,
                "INTERNAL",
                err.to_string(),
                None,
            ))
        }
    };
    let (bucket, rate) = match &caller {
        auth::Caller::Anonymous => (auth::Bucket::Ip(peer.ip()), state.public_rate),
        auth::Caller::Key {
            id,
            rate_per_minute,
            ..
        } => (auth::Bucket::Key(*id), *rate_per_minute),
    };
    if let Err(wait) = state.limiter.check(bucket, rate) {
        state.metrics.rate_limited();
        return Err(refusal(
            StatusCode::TOO_MANY_REQUESTS,
            "RATE_LIMITED",
            format!("rate limit of {rate} requests per minute reached; retry in {wait}s"),
            Some(wait),
        ));
    }
    Ok(caller)
}

/// `POST /graphql`: queries and mutations, with the caller (API key or anonymous) in the
/// request's data.
async fn graphql_http(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    request: GraphQLRequest,
) -> Response {
    let started = std::time::Instant::now();
    let caller = match admit(&state, &headers, peer).await {
        Ok(caller) => caller,
        Err(refused) => return refused,
    };
    let request = request.into_inner().data(caller);
    let kind = metrics::operation_kind(&request.query);
    let mut response = state.schema.execute(request).await;
    explain_limits(&mut response);
    state
        .metrics
        .observe_request(kind, response.is_ok(), started.elapsed());
    limited_json(response, state.max_response_bytes)
}

/// async-graphql's refusals of a too deep or too complex query, with the limit and what to do.
fn explain_limits(response: &mut async_graphql::Response) {
    for error in &mut response.errors {
        let (code, message) = match error.message.as_str() {
            "Query is too complex." => (
                "QUERY_TOO_COMPLEX",
                format!(
                    "query is too complex: over {} (each field counts 1; a connection multiplies its selection by its `first`, default 100): select fewer fields or pass a smaller `first`, especially on nested connections",
                    schema::MAX_COMPLEXITY
                ),
            ),
            "Query is nested too deep." => (
                "QUERY_TOO_DEEP",
                format!("query is nested deeper than {} levels", schema::MAX_DEPTH),
            ),
            _ => continue,
        };
        error.message = message;
        error
            .extensions
            .get_or_insert_with(Default::default)
            .set("code", code);
    }
}

/// The response as JSON, serialised once; one larger than `max_bytes` is replaced by a
/// `RESPONSE_TOO_LARGE` error.
fn limited_json(response: async_graphql::Response, max_bytes: usize) -> Response {
    let headers = response.http_headers.clone();
    let body = match serde_json::to_vec(&response) {
        Ok(body) if body.len() <= max_bytes => body,
        Ok(body) => {
            let mut error = async_graphql::ServerError::new(
                format!(
                    "the response would be {} bytes, over the limit of {max_bytes} (--max-response-bytes): ask for fewer rows (`first`) or fields",
                    body.len()
                ),
                None,
            );
            error
                .extensions
                .get_or_insert_with(Default::default)
                .set("code", "RESPONSE_TOO_LARGE");
            return GraphQLResponse::from(async_graphql::Response::from_errors(vec![error]))
                .into_response();
        }
        Err(err) => {
            tracing::error!(error = %err, "could not serialise a response");
            return refusal(
                StatusCode::INTERNAL_SERVER_ERROR,
                "INTERNAL",
                "internal error".into(),
                None,
            );
        }
    };
    let mut out = (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response();
    out.headers_mut().extend(headers);
    out
}

/// `GET /graphql` with a WebSocket upgrade: subscriptions. The key comes in the
/// `connection_init` payload (`{"apiKey": "…"}`) or the upgrade request's headers.
async fn graphql_ws(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    protocol: GraphQLProtocol,
    upgrade: WebSocketUpgrade,
) -> Response {
    let header_caller = match admit(&state, &headers, peer).await {
        Ok(caller) => caller,
        Err(refused) => return refused,
    };
    let schema = state.schema.clone();
    let pool = state.pool.clone();
    let keys = state.keys.clone();
    let limits = state.ws_limits.clone();
    let public_rate = state.public_rate;
    let max_message = state.max_ws_message_bytes;
    upgrade
        .protocols(ALL_WEBSOCKET_PROTOCOLS)
        .max_message_size(max_message)
        .max_frame_size(max_message)
        .on_upgrade(move |socket| async move {
            let (sink, stream) = futures::StreamExt::split(socket);
            let sink = Arc::new(futures::lock::Mutex::new(sink));
            // The transport refuses a message over the size limit as a read error, which ends
            // the GraphQL session; the client is then told why (1009, "message too big").
            let too_big = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let seen = too_big.clone();
            let stream = futures::StreamExt::inspect(stream, move |item| {
                if let Err(err) = item {
                    let text = err.to_string();
                    if text.contains("too long") || text.contains("Space limit") {
                        seen.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            });
            let shared = sink.clone();
            let out = futures::sink::unfold(shared, |shared, message| async move {
                futures::SinkExt::send(&mut *shared.lock().await, message).await?;
                Ok::<_, axum::Error>(shared)
            });
            GraphQLWebSocket::new_with_pair(out, stream, schema, protocol)
                .on_connection_init(move |payload| async move {
                    let key = payload
                        .get("apiKey")
                        .or_else(|| payload.get("x-api-key"))
                        .and_then(|v| v.as_str())
                        .map(str::to_owned);
                    let caller = match key {
                        Some(key) => keys
                            .resolve(&pool, Some(&key))
                            .await
                            .map_err(|e| async_graphql::Error::new(e.to_string()))?,
                        None => header_caller,
                    };
                    // Every operation on this connection is metered like an HTTP request
                    // (cost::Metering), and the connection holds one of its key's slots until
                    // it closes (the session data is dropped with it).
                    let (bucket, rate) = match &caller {
                        auth::Caller::Anonymous => (auth::Bucket::Ip(peer.ip()), public_rate),
                        auth::Caller::Key {
                            id,
                            rate_per_minute,
                            ..
                        } => (auth::Bucket::Key(*id), *rate_per_minute),
                    };
                    let session = limits
                        .open(bucket, rate)
                        .map_err(async_graphql::Error::new)?;
                    let mut data = async_graphql::Data::default();
                    data.insert(caller);
                    data.insert(session);
                    Ok(data)
                })
                .serve()
                .await;
            if too_big.load(std::sync::atomic::Ordering::Relaxed) {
                let close =
                    axum::extract::ws::Message::Close(Some(axum::extract::ws::CloseFrame {
                        code: axum::extract::ws::close_code::SIZE,
                        reason: format!("message too big: at most {max_message} bytes").into(),
                    }));
                let _ = futures::SinkExt::send(&mut *sink.lock().await, close).await;
            }
        })
}

/// `GET /dashboard`: the lender page (one static file; it talks to `/graphql` over HTTP and
/// WebSocket with the key given in its form or `?key=`).
async fn dashboard() -> impl IntoResponse {
    Html(include_str!("../dashboard/index.html"))
}

async fn graphiql() -> impl IntoResponse {
    Html(
        GraphiQLSource::build()
            .endpoint("/graphql")
            .subscription_endpoint("/graphql")
            .title("chainfold GraphiQL")
            .finish(),
    )
}

/// `GET /health`: 200 when Postgres and Redis answer, 503 otherwise, with each one's state.
async fn health(State(state): State<AppState>) -> impl IntoResponse {
    let postgres = match sqlx::query_scalar::<_, i32>("SELECT 1")
        .fetch_one(&state.pool)
        .await
    {
        Ok(_) => "ok".to_owned(),
        Err(err) => format!("error: {err}"),
    };
    let mut redis = state.redis.clone();
    let redis = match redis::cmd("PING").query_async::<String>(&mut redis).await {
        Ok(_) => "ok".to_owned(),
        Err(err) => format!("error: {err}"),
    };
    let healthy = postgres == "ok" && redis == "ok";
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(serde_json::json!({
            "status": if healthy { "ok" } else { "degraded" },
            "dependencies": { "postgres": postgres, "redis": redis },
        })),
    )
}
