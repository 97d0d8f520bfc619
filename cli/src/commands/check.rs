//! `chainfold check`: a container health check for every role.

use std::time::Duration;

use anyhow::Context as _;
use chainfold_platform::config::{KafkaArgs, PostgresArgs, RedisArgs};
use rdkafka::consumer::{BaseConsumer, Consumer};

/// `chainfold check` settings.
#[derive(Debug, Clone, clap::Args)]
pub struct CheckConfig {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub postgres: PostgresArgs,
    #[command(flatten)]
    pub redis: RedisArgs,
    /// Also require `GET <url>` to answer 200 (the API's `/health`), e.g.
    /// `http://127.0.0.1:8000/health`.
    #[arg(long = "url")]
    pub url: Option<String>,
}

/// `chainfold check`: each dependency answers, or one line naming the first that does not.
pub async fn run(config: &CheckConfig) -> anyhow::Result<()> {
    let timeout = Duration::from_secs(5);
    let mut postgres = config.postgres.clone();
    postgres.max_connections = 1;
    postgres.connect_timeout = timeout;
    let options: sqlx::postgres::PgConnectOptions = postgres
        .expose_url()
        .parse()
        .context("DATABASE_URL is not a valid Postgres URL")?;
    let mut conn = tokio::time::timeout(timeout, sqlx::ConnectOptions::connect(&options))
        .await
        .context("Postgres did not answer within 5 s")?
        .context("could not connect to Postgres")?;
    sqlx::query("SELECT 1")
        .execute(&mut conn)
        .await
        .context("Postgres did not answer a query")?;
    let probe: BaseConsumer = chainfold_platform::kafka::client_config(&config.kafka)
        .create()
        .context("could not create a Kafka client")?;
    tokio::task::spawn_blocking(move || probe.fetch_metadata(None, timeout))
        .await
        .context("Kafka probe panicked")?
        .with_context(|| format!("Kafka at {} did not answer", config.kafka.brokers))?;
    let mut redis = tokio::time::timeout(
        timeout,
        chainfold_platform::redis_cache::connect(&config.redis),
    )
    .await
    .context("Redis did not answer within 5 s")??;
    redis::cmd("PING")
        .query_async::<String>(&mut redis)
        .await
        .context("Redis did not answer PING")?;
    if let Some(url) = &config.url {
        let status = http_status(url, timeout).await?;
        anyhow::ensure!(status == 200, "{url} answered {status}, not 200");
    }
    println!("ok");
    Ok(())
}

/// The status code of a plain `GET` of an `http://host:port/path` URL.
async fn http_status(url: &str, timeout: Duration) -> anyhow::Result<u16> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("{url} is not an http:// URL"))?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let request = format!("GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let answer = tokio::time::timeout(timeout, async {
        let mut stream = tokio::net::TcpStream::connect(host).await?;
        stream.write_all(request.as_bytes()).await?;
        let mut head = vec![0u8; 64];
        let n = stream.read(&mut head).await?;
        head.truncate(n);
        Ok::<_, std::io::Error>(head)
    })
    .await
    .with_context(|| format!("{url} did not answer within {timeout:?}"))?
    .with_context(|| format!("could not GET {url}"))?;
    String::from_utf8_lossy(&answer)
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("{url} did not answer HTTP"))
}
