//! Plumbing every role shares: config groups, telemetry, Kafka (topics, producer, consumer,
//! dead letters), Postgres (pool and the one migration timeline), Redis, onnxruntime loading,
//! reading recorded files, and the shutdown signal. Roles depend on this crate and on `domain`,
//! never on each other.
//!
//! - [`config`]: the command-line and environment groups every role takes (Kafka, Postgres,
//!   Redis), each value checked with a clear error.
//! - [`telemetry`]: logging; [`files`]: recorded files, gzipped or not; [`onnx`]: loading
//!   onnxruntime; [`failpoint`]: crash points the fault tests arm.
//! - [`kafka`]: topics, producer and consumer settings, watermarks; [`dlq`]: dead letters with
//!   their reason.
//! - [`postgres`]: the pool and the one migration timeline ([`MIGRATOR`]); [`redis_cache`]:
//!   the Redis connection and key names.
//! - [`member`]: a consumer-group member whose offsets live in Postgres ([`offsets`]), fenced by
//!   epoch; [`worker`]: the one batch loop of the projector, scorer, risk worker and actuator.
//! - [`outbox`]: outputs written with the rows and relayed to Kafka after the commit;
//!   [`lease`]: Postgres advisory-lock leases (one ingest leader per chain, the rebuild lock).

pub mod config;
pub mod dlq;
pub mod failpoint;
pub mod files;
pub mod kafka;
pub mod lease;
pub mod member;
pub mod offsets;
pub mod onnx;
pub mod outbox;
pub mod postgres;
pub mod redis_cache;
pub mod telemetry;
pub mod worker;

pub use postgres::MIGRATOR;

/// Resolves when the process is asked to stop (Ctrl-C or SIGTERM). Roles finish the batch in
/// hand and commit before returning.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sig) => {
                sig.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutdown requested");
}
