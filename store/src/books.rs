//! Lenders' books (`book`, `book_wallet`): named lists of wallets an API key follows.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

/// Whether book `id` exists and belongs to API key `key_id`.
pub async fn owned(pool: &PgPool, id: i64, key_id: i64) -> sqlx::Result<bool> {
    Ok(sqlx::query_scalar!(
        "SELECT id FROM book WHERE id = $1 AND api_key_id = $2",
        id,
        key_id
    )
    .fetch_optional(pool)
    .await?
    .is_some())
}

/// The wallets of book `id` (on `chain_id`, or every chain), by chain and address.
pub async fn members(pool: &PgPool, id: i64, chain_id: Option<i64>) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar!(
        "SELECT wallet FROM book_wallet WHERE book_id = $1 AND ($2::int8 IS NULL OR chain_id = $2)
         ORDER BY chain_id, wallet",
        id,
        chain_id
    )
    .fetch_all(pool)
    .await
}

/// A book's name and creation time.
#[derive(Debug, Clone, PartialEq)]
pub struct BookHead {
    pub id: i64,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

/// The books of API key `key_id` (only book `id` when given), by id, with their wallets as
/// (book, chain, address) by book, chain and address.
pub async fn of_key(
    pool: &PgPool,
    key_id: i64,
    id: Option<i64>,
) -> sqlx::Result<(Vec<BookHead>, Vec<(i64, i64, String)>)> {
    let heads = sqlx::query_as!(
        BookHead,
        "SELECT id, name, created_at FROM book WHERE api_key_id = $1 AND ($2::int8 IS NULL OR id = $2)
         ORDER BY id",
        key_id,
        id
    )
    .fetch_all(pool)
    .await?;
    let ids: Vec<i64> = heads.iter().map(|h| h.id).collect();
    let wallets = sqlx::query!(
        "SELECT book_id, chain_id, wallet FROM book_wallet WHERE book_id = ANY($1)
         ORDER BY book_id, chain_id, wallet",
        &ids
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|r| (r.book_id, r.chain_id, r.wallet))
    .collect();
    Ok((heads, wallets))
}

/// Creates book `name` for API key `key_id`; `None` when the key has a book of that name.
pub async fn create(pool: &PgPool, key_id: i64, name: &str) -> sqlx::Result<Option<i64>> {
    sqlx::query_scalar!(
        "INSERT INTO book (api_key_id, name) VALUES ($1, $2)
         ON CONFLICT (api_key_id, name) DO NOTHING RETURNING id",
        key_id,
        name
    )
    .fetch_optional(pool)
    .await
}

/// Adds wallets (aligned `chains`/`wallets`) to book `id`; ones it holds stay once.
pub async fn add(pool: &PgPool, id: i64, chains: &[i64], wallets: &[String]) -> sqlx::Result<()> {
    sqlx::query!(
        "INSERT INTO book_wallet (book_id, chain_id, wallet)
         SELECT $1, c, w FROM UNNEST($2::int8[], $3::text[]) AS t(c, w)
         ON CONFLICT DO NOTHING",
        id,
        chains,
        wallets
    )
    .execute(pool)
    .await?;
    Ok(())
}
