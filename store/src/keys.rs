//! API keys (`api_key`): only a key's SHA-256 is stored.

use sqlx::PgPool;

/// Stores a key (its hash) named `name` with its rate limit; returns its id.
pub async fn create(
    pool: &PgPool,
    name: &str,
    key_sha256: &str,
    rate_per_minute: i32,
) -> sqlx::Result<i64> {
    sqlx::query_scalar!(
        "INSERT INTO api_key (name, key_sha256, rate_per_minute) VALUES ($1, $2, $3) RETURNING id",
        name,
        key_sha256,
        rate_per_minute
    )
    .fetch_one(pool)
    .await
}

/// Revokes key `id`; `false` when there is no such unrevoked key.
pub async fn revoke(pool: &PgPool, id: i64) -> sqlx::Result<bool> {
    let done = sqlx::query!(
        "UPDATE api_key SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL",
        id
    )
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// The unrevoked key with hash `key_sha256`: (id, name, rate per minute).
pub async fn find(pool: &PgPool, key_sha256: &str) -> sqlx::Result<Option<(i64, String, i32)>> {
    let row = sqlx::query!(
        "SELECT id, name, rate_per_minute FROM api_key WHERE key_sha256 = $1 AND revoked_at IS NULL",
        key_sha256
    )
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|r| (r.id, r.name, r.rate_per_minute)))
}
