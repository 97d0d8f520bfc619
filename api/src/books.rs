//! Books: a lender's watch lists of wallets, owned by an API key. A key sees, changes and
//! subscribes to its own books only; another key's book is answered as not found.

use async_graphql::{Context, InputObject, Object, SimpleObject, ID};
use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::auth::caller;
use crate::error::{gql, ApiError, ApiResult};
use crate::input::parse_address;

/// Most wallets one book holds.
pub const MAX_BOOK_WALLETS: usize = 10_000;

/// A wallet on a chain.
#[derive(InputObject, SimpleObject, Debug, Clone, PartialEq, Eq)]
#[graphql(input_name = "BookWalletInput")]
pub struct BookWallet {
    pub chain_id: i64,
    pub address: String,
}

/// A lender's watch list.
#[derive(SimpleObject, Debug, Clone)]
pub struct Book {
    pub id: ID,
    pub name: String,
    pub wallets: Vec<BookWallet>,
    pub created_at: DateTime<Utc>,
}

fn book_id(id: &ID) -> ApiResult<i64> {
    id.parse::<i64>().map_err(|_| {
        gql(ApiError::BadUserInput(format!(
            "{:?} is not a book id",
            id.as_str()
        )))
    })
}

fn not_found(id: &ID) -> async_graphql::Error {
    use async_graphql::ErrorExtensions as _;
    async_graphql::Error::new(format!("no book {} for this API key", id.as_str()))
        .extend_with(|_, e| e.set("code", "NOT_FOUND"))
}

/// The wallets of `book` (on `chain_id`, or all chains) when the key owns it.
pub async fn members(
    pool: &PgPool,
    key_id: i64,
    book: &ID,
    chain_id: Option<i64>,
) -> ApiResult<Vec<String>> {
    let id = book_id(book)?;
    if !chainfold_store::books::owned(pool, id, key_id)
        .await
        .map_err(gql)?
    {
        return Err(not_found(book));
    }
    chainfold_store::books::members(pool, id, chain_id)
        .await
        .map_err(gql)
}

async fn load(pool: &PgPool, key_id: i64, id: Option<i64>) -> ApiResult<Vec<Book>> {
    let (heads, members) = chainfold_store::books::of_key(pool, key_id, id)
        .await
        .map_err(gql)?;
    Ok(heads
        .into_iter()
        .map(
            |chainfold_store::books::BookHead {
                 id,
                 name,
                 created_at,
             }| Book {
                id: ID(id.to_string()),
                name,
                wallets: members
                    .iter()
                    .filter(|m| m.0 == id)
                    .map(|m| BookWallet {
                        chain_id: m.1,
                        address: m.2.clone(),
                    })
                    .collect(),
                created_at,
            },
        )
        .collect())
}

/// Book queries.
#[derive(Debug, Default)]
pub struct BookQuery;

#[Object]
impl BookQuery {
    /// The caller's books (needs an API key).
    #[graphql(complexity = "crate::cost::QUERY_COST + child_complexity")]
    async fn books(&self, ctx: &Context<'_>) -> ApiResult<Vec<Book>> {
        let key = caller(ctx).key_id("books")?;
        load(ctx.data_unchecked::<PgPool>(), key, None).await
    }

    /// One of the caller's books; `NOT_FOUND` for another key's.
    #[graphql(complexity = "crate::cost::QUERY_COST + child_complexity")]
    async fn book(&self, ctx: &Context<'_>, id: ID) -> ApiResult<Book> {
        let key = caller(ctx).key_id("book")?;
        load(ctx.data_unchecked::<PgPool>(), key, Some(book_id(&id)?))
            .await?
            .pop()
            .ok_or_else(|| not_found(&id))
    }
}

/// Book mutations.
#[derive(Debug, Default)]
pub struct BookMutation;

#[Object]
impl BookMutation {
    /// Creates a book of wallets owned by the caller's key (names are unique per key).
    async fn create_book(
        &self,
        ctx: &Context<'_>,
        name: String,
        wallets: Vec<BookWallet>,
    ) -> ApiResult<Book> {
        let key = caller(ctx).key_id("createBook")?;
        let name = name.trim().to_owned();
        if name.is_empty() || name.len() > 200 {
            return Err(gql(ApiError::BadUserInput(
                "a book's name is 1 to 200 characters".into(),
            )));
        }
        let pool = ctx.data_unchecked::<PgPool>();
        let id = chainfold_store::books::create(pool, key, &name)
            .await
            .map_err(gql)?;
        let Some(id) = id else {
            return Err(gql(ApiError::BadUserInput(format!(
                "this key already has a book named {name:?}"
            ))));
        };
        add(ctx, key, ID(id.to_string()), wallets).await
    }

    /// Adds wallets to one of the caller's books (already present ones are kept once).
    async fn add_to_book(
        &self,
        ctx: &Context<'_>,
        book: ID,
        wallets: Vec<BookWallet>,
    ) -> ApiResult<Book> {
        let key = caller(ctx).key_id("addToBook")?;
        add(ctx, key, book, wallets).await
    }
}

/// Adds `wallets` to `book` after checking `key` owns it; the book as it is then.
async fn add(ctx: &Context<'_>, key: i64, book: ID, wallets: Vec<BookWallet>) -> ApiResult<Book> {
    {
        let pool = ctx.data_unchecked::<PgPool>();
        let id = book_id(&book)?;
        members(pool, key, &book, None).await?;
        if wallets.len() > MAX_BOOK_WALLETS {
            return Err(gql(ApiError::BadUserInput(format!(
                "at most {MAX_BOOK_WALLETS} wallets per call"
            ))));
        }
        let mut chains = Vec::with_capacity(wallets.len());
        let mut addresses = Vec::with_capacity(wallets.len());
        for w in &wallets {
            chains.push(w.chain_id);
            addresses.push(parse_address(&w.address).map_err(gql)?);
        }
        chainfold_store::books::add(pool, id, &chains, &addresses)
            .await
            .map_err(gql)?;
        load(pool, key, Some(id))
            .await?
            .pop()
            .ok_or_else(|| not_found(&book))
    }
}
