//! The GraphQL API (`chainfold serve`): async-graphql on axum over the Postgres read models.
//!
//! Routes: `POST /graphql` (queries), `GET /` (GraphiQL), `GET /health` (each dependency).
//! The schema is built in [`schema::build`]; `schema.graphql` at the workspace root is generated
//! from it and a test fails when the file is stale.

pub mod decisions;
pub mod error;
pub mod risk;
pub mod schema;
pub mod types;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use async_graphql::http::GraphiQLSource;
use async_graphql_axum::GraphQL;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse};
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
        }
    }
}

#[derive(Clone)]
struct AppState {
    pool: PgPool,
    redis: ConnectionManager,
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
        let pool =
            chainfold_platform::postgres::connect(&config.postgres, Some(config.statement_timeout))
                .await?;
        let redis = chainfold_platform::redis_cache::connect(&config.redis).await?;
        let policy = chainfold_platform::decisions::policy_or_shipped(config.policy.as_deref())?;
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
        let schema = schema::build_with(pool.clone(), Some(desk));
        let router = Router::new()
            .route("/", get(graphiql))
            .route_service("/graphql", GraphQL::new(schema.clone()))
            .route("/health", get(health))
            .layer(tower_http::limit::RequestBodyLimitLayer::new(
                config.max_body_bytes,
            ))
            .with_state(AppState { pool, redis });
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
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown)
            .await
            .context("api server failed")
    }
}

async fn graphiql() -> impl IntoResponse {
    Html(
        GraphiQLSource::build()
            .endpoint("/graphql")
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
