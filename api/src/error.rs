//! One error type for resolvers, mapped to GraphQL errors with `extensions.code`. Internal
//! details are logged, never returned.

use async_graphql::ErrorExtensions;

/// What a resolver can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request itself is wrong (bad address, `first` too large, bad cursor).
    #[error("{0}")]
    BadUserInput(String),
    /// The read models cannot answer exactly (no oracle price for a held reserve, an account
    /// that overflows 256 bits): said plainly, code `UNANSWERABLE`.
    #[error("{0}")]
    Unanswerable(String),
    /// Anything else: logged with its cause, reported as `internal error`.
    #[error("internal error")]
    Internal(#[from] sqlx::Error),
}

impl ErrorExtensions for ApiError {
    fn extend(&self) -> async_graphql::Error {
        match self {
            ApiError::BadUserInput(message) => async_graphql::Error::new(message.clone())
                .extend_with(|_, e| e.set("code", "BAD_USER_INPUT")),
            ApiError::Unanswerable(message) => async_graphql::Error::new(message.clone())
                .extend_with(|_, e| e.set("code", "UNANSWERABLE")),
            ApiError::Internal(source) => {
                tracing::error!(error = %source, "query failed");
                async_graphql::Error::new("internal error")
                    .extend_with(|_, e| e.set("code", "INTERNAL"))
            }
        }
    }
}

/// Result of a resolver.
pub type ApiResult<T> = Result<T, async_graphql::Error>;

/// Converts anything that becomes an [`ApiError`] into a GraphQL error with its code
/// (async-graphql's blanket `From<Display>` would drop the code).
pub fn gql(err: impl Into<ApiError>) -> async_graphql::Error {
    err.into().extend()
}
