//! `chainfold apikey`: create or revoke API keys.

use chainfold_platform::config::PostgresArgs;

#[derive(Debug, clap::Subcommand)]
pub enum ApikeyCommand {
    /// Create a key; it is printed once (Postgres keeps only its SHA-256).
    Create(ApikeyCreate),
    /// Revoke a key by its id: it is refused from the next request on.
    Revoke(ApikeyRevoke),
}

/// `chainfold apikey create` settings.
#[derive(Debug, Clone, clap::Args)]
pub struct ApikeyCreate {
    #[command(flatten)]
    pub postgres: PostgresArgs,
    /// Who the key is for (shown in logs and metrics, never secret).
    #[arg(long = "name")]
    pub name: String,
    /// Requests per minute the key may make.
    #[arg(long = "rate-per-minute", default_value_t = 600)]
    pub rate_per_minute: u32,
}

/// `chainfold apikey revoke` settings.
#[derive(Debug, Clone, clap::Args)]
pub struct ApikeyRevoke {
    #[command(flatten)]
    pub postgres: PostgresArgs,
    /// The key's id, as `create` printed it.
    #[arg(long = "id")]
    pub id: i64,
}

pub async fn run(command: ApikeyCommand) -> anyhow::Result<()> {
    match command {
        ApikeyCommand::Create(config) => {
            let pool = chainfold_platform::postgres::connect_and_migrate(&config.postgres).await?;
            let (id, key) =
                chainfold_api::auth::create_key(&pool, &config.name, config.rate_per_minute)
                    .await?;
            eprintln!(
                "apikey: created key {id} for {:?} ({} requests/minute); it is shown once:",
                config.name, config.rate_per_minute
            );
            println!("{key}");
            Ok(())
        }
        ApikeyCommand::Revoke(config) => {
            let pool = chainfold_platform::postgres::connect_and_migrate(&config.postgres).await?;
            anyhow::ensure!(
                chainfold_api::auth::revoke_key(&pool, config.id).await?,
                "no unrevoked API key with id {}",
                config.id
            );
            eprintln!("apikey: revoked key {}", config.id);
            Ok(())
        }
    }
}
