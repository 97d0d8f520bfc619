//! Postgres: the pool and the one migration timeline of every read model.

use anyhow::Context as _;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

use crate::config::PostgresArgs;

/// Every read model's migrations, in one timeline (`migrations/` at the workspace root).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Connects, creating the database first if the server has none of that name (a new user's
/// machine has only `postgres`), and runs the migrations.
pub async fn connect_and_migrate(args: &PostgresArgs) -> anyhow::Result<PgPool> {
    connect(args, None).await
}

/// Like [`connect_and_migrate`], for a batch worker whose tables are emptied and filled again
/// while its connections live (the scorer's `credit_score` and `credit_profile`, which
/// `chainfold rebuild` and the benchmarks truncate): every statement is planned for the tables
/// as they are when it runs (`plan_cache_mode = force_custom_plan`). By default Postgres may
/// keep one generic plan for a prepared statement after five executions; one planned while the
/// table was empty reads a wallet's latest score by sorting the whole table (measured: 5.7 s
/// for 1,000 wallets over 100,000 scores, against 5.5 ms with the index) until an autoanalyze
/// invalidates it. A batch worker runs tens of statements per batch, so planning each costs
/// little.
pub async fn connect_replanning(args: &PostgresArgs) -> anyhow::Result<PgPool> {
    connect_with(args, None, true).await
}

/// Like [`connect_and_migrate`], with `statement_timeout` set on every connection (the API uses
/// it so one slow query cannot hold a connection for long).
pub async fn connect(
    args: &PostgresArgs,
    statement_timeout: Option<std::time::Duration>,
) -> anyhow::Result<PgPool> {
    connect_with(args, statement_timeout, false).await
}

async fn connect_with(
    args: &PostgresArgs,
    statement_timeout: Option<std::time::Duration>,
    custom_plans: bool,
) -> anyhow::Result<PgPool> {
    let mut options: PgConnectOptions = args
        .expose_url()
        .parse()
        .context("DATABASE_URL is not a valid Postgres URL")?;
    if custom_plans {
        options = options.options([("plan_cache_mode", "force_custom_plan")]);
    }
    create_database_if_missing(&options).await?;
    let pool = PgPoolOptions::new()
        .after_connect(move |conn, _meta| {
            Box::pin(async move {
                if let Some(timeout) = statement_timeout {
                    let sql = format!("SET statement_timeout = {}", timeout.as_millis());
                    sqlx::Executor::execute(conn, sql.as_str()).await?;
                }
                Ok(())
            })
        })
        .max_connections(args.max_connections)
        .acquire_timeout(args.connect_timeout)
        .connect_with(options.clone())
        .await
        .with_context(|| {
            format!(
                "could not connect to Postgres at {}:{}/{} (is it running? `scripts/stack up` starts it)",
                options.get_host(),
                options.get_port(),
                options.get_database().unwrap_or("postgres")
            )
        })?;
    MIGRATOR
        .run(&pool)
        .await
        .context("could not run migrations")?;
    Ok(pool)
}

/// The tables among `tables` whose planner estimates say "empty" while they hold rows: pages on
/// disk, `reltuples` 0, and live rows counted since. Postgres leaves a table so when a vacuum or
/// analyze runs while its only rows are still being written (a refill after `TRUNCATE`: the
/// first batch's `COPY` has extended the file, its rows are not yet visible), and until the next
/// autoanalyze (up to `autovacuum_naptime` later) every plan over it costs as if it were empty:
/// a wallet's latest score found by walking the primary key backwards, ~1.5 s a batch instead of
/// ~6 ms (BENCHMARKS.md). A legitimately empty table (no live rows) is not listed. An empty
/// `tables` checks every table of the connection's schema.
pub async fn estimated_empty(pool: &PgPool, tables: &[&str]) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_class c
         JOIN pg_stat_user_tables s ON s.relid = c.oid
         WHERE (c.oid IN (SELECT to_regclass(t) FROM unnest($1::text[]) AS t)
                OR (cardinality($1::text[]) = 0 AND c.relkind = 'r'
                    AND c.relnamespace = to_regnamespace(current_schema())))
           AND c.relpages > 0 AND c.reltuples = 0 AND s.n_live_tup > 0
         ORDER BY 1",
    )
    .bind(tables)
    .fetch_all(pool)
    .await
}

/// How often a role that refills its tables runs [`analyze_estimated_empty`] at most (the check
/// reads the cumulative statistics of every table it names, ~1 ms; a projector's backfill runs
/// many batches a second).
pub const ESTIMATES_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Analyzes each of `tables` that [`estimated_empty`] lists, so its plans are made for the rows
/// it holds; returns the tables analyzed. A role that refills its tables calls this between
/// batches (in the background: an `ANALYZE` waits for an autovacuum of the same table).
pub async fn analyze_estimated_empty(pool: &PgPool, tables: &[&str]) -> sqlx::Result<Vec<String>> {
    let empty = estimated_empty(pool, tables).await?;
    for table in &empty {
        let quoted = table.replace('"', "\"\"");
        sqlx::query(&format!("ANALYZE \"{quoted}\""))
            .execute(pool)
            .await?;
    }
    Ok(empty)
}

/// A role's background run of [`analyze_estimated_empty`] over its `tables` (empty: every table
/// of the schema): [`EstimatesCheck::start`] with each batch starts one unless the last is
/// still running or started less than [`ESTIMATES_EVERY`] ago. What it analyzed is logged.
#[derive(Debug)]
pub struct EstimatesCheck {
    tables: &'static [&'static str],
    last: Option<(tokio::task::JoinHandle<()>, std::time::Instant)>,
}

impl EstimatesCheck {
    pub fn new(tables: &'static [&'static str]) -> EstimatesCheck {
        EstimatesCheck { tables, last: None }
    }

    /// Starts a check on `pool` in the background, if one is due.
    pub fn start(&mut self, pool: &PgPool) {
        if self.last.as_ref().is_some_and(|(task, started)| {
            !task.is_finished() || started.elapsed() < ESTIMATES_EVERY
        }) {
            return;
        }
        let (pool, tables) = (pool.clone(), self.tables);
        let task = tokio::spawn(async move {
            match analyze_estimated_empty(&pool, tables).await {
                Ok(analyzed) if !analyzed.is_empty() => {
                    tracing::info!(
                        ?analyzed,
                        "tables estimated empty while holding rows, analyzed"
                    )
                }
                Ok(_) => {}
                Err(err) => tracing::warn!(%err, "could not check the tables' planner estimates"),
            }
        });
        self.last = Some((task, std::time::Instant::now()));
    }
}

async fn create_database_if_missing(options: &PgConnectOptions) -> anyhow::Result<()> {
    let Some(database) = options.get_database() else {
        return Ok(());
    };
    if database == "postgres" {
        return Ok(());
    }
    let admin = options.clone().database("postgres");
    let Ok(mut conn) = sqlx::ConnectOptions::connect(&admin).await else {
        // The real connect below reports the failure with its context.
        return Ok(());
    };
    let exists: bool = sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1) AS "exists!""#,
        database
    )
    .fetch_one(&mut conn)
    .await
    .context("could not look up databases")?;
    if !exists {
        let quoted = database.replace('"', "\"\"");
        // A concurrent creator makes this fail with duplicate_database; the connect still works.
        let _ = sqlx::query(&format!("CREATE DATABASE \"{quoted}\""))
            .execute(&mut conn)
            .await;
        tracing::info!(database, "database created");
    }
    Ok(())
}
