//! Leases: one leader per named job across processes (one `ingest rpc` per chain), as a Postgres
//! advisory lock held by a connection of the leader's own.
//!
//! [`Lease::acquire`] waits until the lock is free; Postgres releases it the moment the holder's
//! session ends (process killed, connection lost), so a standby takes over within its poll
//! interval. The holder calls [`Lease::ensure_held`] before each step that must not run twice
//! at once (publishing a block): a leader whose lock connection broke stops there instead of
//! publishing beside its successor.

use std::time::Duration;

use anyhow::Context as _;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions as _, Connection as _, PgConnection};
use tokio::sync::Mutex;

use crate::config::PostgresArgs;

/// First key of every chainfold advisory lock (`pg_advisory_lock(int4, int4)`): "cf" in ASCII.
const LOCK_SPACE: i32 = 0x6366;

/// A held lease.
#[derive(Debug)]
pub struct Lease {
    name: String,
    holder: String,
    key: i32,
    connection: Mutex<PgConnection>,
}

/// The lease's connection or lock is gone: another process may be leader now.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "lost the lease {name} (its Postgres session ended); stopping so that only one process leads"
)]
pub struct LeaseLost {
    pub name: String,
}

impl Lease {
    /// Waits until `name` is free, then holds it as `holder`. Logs once while waiting.
    pub async fn acquire(
        postgres: &PostgresArgs,
        name: &str,
        holder: &str,
        poll: Duration,
    ) -> anyhow::Result<Lease> {
        let (mut connection, key) = lock_connection(postgres, name).await?;
        let mut waiting = false;
        loop {
            let got: bool = sqlx::query_scalar!(
                r#"SELECT pg_try_advisory_lock($1, $2) AS "got!""#,
                LOCK_SPACE,
                key
            )
            .fetch_one(&mut connection)
            .await
            .context("could not try the lease lock")?;
            if got {
                break;
            }
            if !waiting {
                let current: Option<String> =
                    sqlx::query_scalar!("SELECT holder FROM role_lease WHERE lease = $1", name)
                        .fetch_optional(&mut connection)
                        .await
                        .unwrap_or(None);
                tracing::info!(lease = name, holder = ?current, "another process leads; standing by");
                waiting = true;
            }
            tokio::time::sleep(poll).await;
        }
        sqlx::query!(
            "INSERT INTO role_lease (lease, holder) VALUES ($1, $2)
             ON CONFLICT (lease) DO UPDATE SET holder = EXCLUDED.holder, acquired_at = now()",
            name,
            holder
        )
        .execute(&mut connection)
        .await
        .context("could not record the lease holder")?;
        tracing::info!(lease = name, holder, "lease acquired");
        Ok(Lease {
            name: name.to_owned(),
            holder: holder.to_owned(),
            key,
            connection: Mutex::new(connection),
        })
    }

    /// Fails with [`LeaseLost`] unless this lease's session still holds the lock.
    pub async fn ensure_held(&self) -> anyhow::Result<()> {
        let mut connection = self.connection.lock().await;
        let held: Result<bool, sqlx::Error> = sqlx::query_scalar!(
            r#"SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory'
                 AND classid = $1::int8::oid AND objid = $2::int8::oid AND objsubid = 2
                 AND pid = pg_backend_pid() AND granted) AS "held!""#,
            i64::from(LOCK_SPACE),
            i64::from(self.key as u32)
        )
        .fetch_one(&mut *connection)
        .await;
        match held {
            Ok(true) => Ok(()),
            _ => Err(LeaseLost {
                name: self.name.clone(),
            }
            .into()),
        }
    }

    /// The lease's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Who holds it (this process).
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// Gives the lease up now (a standby takes it within its poll interval).
    pub async fn release(self) {
        let mut connection = self.connection.into_inner();
        let _ = sqlx::query_scalar!("SELECT pg_advisory_unlock($1, $2)", LOCK_SPACE, self.key)
            .fetch_one(&mut connection)
            .await;
        let _ = connection.close().await;
    }
}

/// `<name>@<hostname>/<pid>`: who holds a lease, for the logs and `role_lease`.
pub fn holder_name(role: &str) -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned());
    format!("{role}@{host}/{}", std::process::id())
}

/// Set while this process holds the pipeline exclusively (`chainfold rebuild`): the roles it runs
/// itself then skip the shared hold they would otherwise wait for.
static PIPELINE_HELD_HERE: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// The lock every role that writes derived state (projector, scorer, risk worker) holds shared
/// for its lifetime, and `chainfold rebuild` takes exclusively: a rebuild cannot run beside a
/// live role, and a role started during a rebuild waits for it.
#[derive(Debug)]
pub struct PipelineGuard {
    _connection: Option<PgConnection>,
}

const PIPELINE: &str = "chainfold-pipeline";

/// A connection of its own (the lock lives and dies with its session) and the lock's key.
async fn lock_connection(
    postgres: &PostgresArgs,
    name: &str,
) -> anyhow::Result<(PgConnection, i32)> {
    let options: PgConnectOptions = postgres
        .expose_url()
        .parse()
        .context("DATABASE_URL is not a valid Postgres URL")?;
    let mut connection = options
        .connect()
        .await
        .context("could not connect to Postgres for an advisory lock")?;
    let key: i32 = sqlx::query_scalar!(r#"SELECT hashtext($1) AS "key!""#, name)
        .fetch_one(&mut connection)
        .await
        .context("could not compute the lock key")?;
    Ok((connection, key))
}

/// Holds the pipeline lock shared (waiting, with one log line, while a rebuild holds it).
pub async fn hold_pipeline(postgres: &PostgresArgs) -> anyhow::Result<PipelineGuard> {
    if PIPELINE_HELD_HERE.load(std::sync::atomic::Ordering::SeqCst) {
        return Ok(PipelineGuard { _connection: None });
    }
    let (mut connection, key) = lock_connection(postgres, PIPELINE).await?;
    let got: bool = sqlx::query_scalar!(
        r#"SELECT pg_try_advisory_lock_shared($1, $2) AS "got!""#,
        LOCK_SPACE,
        key
    )
    .fetch_one(&mut connection)
    .await
    .context("could not take the pipeline lock")?;
    if !got {
        tracing::info!("a rebuild is running; waiting for it to finish");
        sqlx::query!("SELECT pg_advisory_lock_shared($1, $2)", LOCK_SPACE, key)
            .execute(&mut connection)
            .await
            .context("could not take the pipeline lock")?;
    }
    Ok(PipelineGuard {
        _connection: Some(connection),
    })
}

/// Takes the pipeline lock exclusively for a rebuild, or says how many roles are running.
pub async fn take_pipeline(postgres: &PostgresArgs) -> anyhow::Result<PipelineGuard> {
    let (mut connection, key) = lock_connection(postgres, PIPELINE).await?;
    let got: bool = sqlx::query_scalar!(
        r#"SELECT pg_try_advisory_lock($1, $2) AS "got!""#,
        LOCK_SPACE,
        key
    )
    .fetch_one(&mut connection)
    .await
    .context("could not take the pipeline lock")?;
    if !got {
        let holders: i64 = sqlx::query_scalar!(
            r#"SELECT count(*) AS "n!" FROM pg_locks WHERE locktype = 'advisory'
               AND classid = $1::int8::oid AND objid = $2::int8::oid AND objsubid = 2 AND granted"#,
            i64::from(LOCK_SPACE),
            i64::from(key as u32)
        )
        .fetch_one(&mut connection)
        .await
        .unwrap_or(0);
        anyhow::bail!(
            "{holders} projector, scorer or risk process(es) are running against this database: stop them before rebuilding (a rebuild beside live roles would fold the log twice into tables it is emptying)"
        );
    }
    PIPELINE_HELD_HERE.store(true, std::sync::atomic::Ordering::SeqCst);
    Ok(PipelineGuard {
        _connection: Some(connection),
    })
}
