//! API keys and rate limits.
//!
//! A key is `cf_` followed by 32 random bytes in hex, shown once by `chainfold apikey create`;
//! Postgres keeps only its SHA-256. Requests carry it as `x-api-key: <key>` or
//! `Authorization: Bearer <key>` (WebSocket clients: `{"apiKey": "<key>"}` in the
//! `connection_init` payload). A key is required for subscriptions, mutations and books; public
//! queries work without one under a per-IP rate limit. Each key has its own per-minute budget.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

use async_graphql::{Context, ErrorExtensions as _};
use sha2::{Digest as _, Sha256};
use sqlx::PgPool;

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// No key: public queries only.
    Anonymous,
    /// A valid, unrevoked key.
    Key {
        id: i64,
        name: String,
        rate_per_minute: u32,
    },
}

impl Caller {
    /// The key's id, or an `UNAUTHENTICATED` error naming what needed it.
    pub fn key_id(&self, what: &str) -> Result<i64, async_graphql::Error> {
        match self {
            Caller::Key { id, .. } => Ok(*id),
            Caller::Anonymous => Err(unauthenticated(what)),
        }
    }
}

/// The caller of a resolver: what the HTTP or WebSocket layer put in the request; an in-process
/// execution without one is anonymous.
pub fn caller<'a>(ctx: &'a Context<'_>) -> &'a Caller {
    ctx.data_opt::<Caller>().unwrap_or(&Caller::Anonymous)
}

/// The error for an operation that needs a key.
pub fn unauthenticated(what: &str) -> async_graphql::Error {
    async_graphql::Error::new(format!(
        "{what} needs an API key: send it as `x-api-key` or `Authorization: Bearer` (WebSocket: `apiKey` in connection_init); create one with `chainfold apikey create --name …`"
    ))
    .extend_with(|_, e| e.set("code", "UNAUTHENTICATED"))
}

/// SHA-256 of a key, lowercase hex: what Postgres stores.
pub fn key_hash(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Creates a key named `name`; returns its id and the key (shown once, never stored).
pub async fn create_key(
    pool: &PgPool,
    name: &str,
    rate_per_minute: u32,
) -> anyhow::Result<(i64, String)> {
    use rand::RngCore as _;
    anyhow::ensure!(!name.trim().is_empty(), "a key needs a --name");
    anyhow::ensure!(rate_per_minute > 0, "--rate-per-minute must be positive");
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    let key = format!(
        "cf_{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    let id =
        chainfold_store::keys::create(pool, name.trim(), &key_hash(&key), rate_per_minute as i32)
            .await?;
    Ok((id, key))
}

/// Revokes a key by id; false when there is no such unrevoked key.
pub async fn revoke_key(pool: &PgPool, id: i64) -> anyhow::Result<bool> {
    Ok(chainfold_store::keys::revoke(pool, id).await?)
}

/// Why a presented key was refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("the API key is not valid (unknown or revoked)")]
    Invalid,
    #[error("could not check the API key")]
    Unavailable,
}

/// The caller a presented key stands for (`None`: anonymous).
pub async fn resolve(pool: &PgPool, key: Option<&str>) -> Result<Caller, KeyError> {
    let Some(key) = key.map(str::trim).filter(|k| !k.is_empty()) else {
        return Ok(Caller::Anonymous);
    };
    lookup(pool, &key_hash(key)).await
}

/// Longest a cached key lookup is trusted without hearing from Postgres.
pub const KEY_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(30);
/// Most key hashes remembered (the cache starts over beyond it).
const KEY_CACHE_SIZE: usize = 10_000;

/// When a key was looked up, and what it was.
type CachedKey = (Instant, Result<Caller, KeyError>);

/// Key lookups remembered per process, so a request does not query Postgres for its key. A
/// change to `api_key` (a revocation) notifies `chainfold_api_key` with the key's hash, and the
/// API's feed listener evicts it at once ([`KeyCache::evict`]); entries also expire after
/// [`KEY_CACHE_TTL`] in case a notification was missed while the listener reconnected.
#[derive(Debug, Default)]
pub struct KeyCache {
    entries: Mutex<HashMap<String, CachedKey>>,
    hits: std::sync::atomic::AtomicU64,
}

impl KeyCache {
    /// [`resolve`] through the cache (unknown and revoked keys are remembered too, so a flood
    /// of bad keys costs one query each per TTL).
    pub async fn resolve(&self, pool: &PgPool, key: Option<&str>) -> Result<Caller, KeyError> {
        let Some(key) = key.map(str::trim).filter(|k| !k.is_empty()) else {
            return Ok(Caller::Anonymous);
        };
        let hash = key_hash(key);
        if let Ok(entries) = self.entries.lock() {
            if let Some((at, known)) = entries.get(&hash) {
                if at.elapsed() < KEY_CACHE_TTL {
                    self.hits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    return known.clone();
                }
            }
        }
        let found = lookup(pool, &hash).await;
        if found != Err(KeyError::Unavailable) {
            if let Ok(mut entries) = self.entries.lock() {
                if entries.len() >= KEY_CACHE_SIZE {
                    entries.clear();
                }
                entries.insert(hash, (Instant::now(), found.clone()));
            }
        }
        found
    }

    /// Forgets a key by its hash (`None`: every key).
    pub fn evict(&self, hash: Option<&str>) {
        if let Ok(mut entries) = self.entries.lock() {
            match hash {
                Some(h) => {
                    entries.remove(h);
                }
                None => entries.clear(),
            }
        }
    }

    /// Lookups answered from the cache since start.
    pub fn hits(&self) -> u64 {
        self.hits.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The caller of a key hash, from Postgres.
async fn lookup(pool: &PgPool, hash: &str) -> Result<Caller, KeyError> {
    let row = chainfold_store::keys::find(pool, hash)
        .await
        .map_err(|err| {
            tracing::error!(error = %err, "api key lookup failed");
            KeyError::Unavailable
        })?;
    let (id, name, rate) = row.ok_or(KeyError::Invalid)?;
    Ok(Caller::Key {
        id,
        name,
        rate_per_minute: rate.max(1) as u32,
    })
}

/// The key a request presents: `x-api-key`, else `Authorization: Bearer`.
pub fn presented_key(headers: &axum::http::HeaderMap) -> Option<String> {
    if let Some(v) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(v.to_owned());
    }
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned)
}

/// What a rate limit is kept per.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Bucket {
    Ip(IpAddr),
    Key(i64),
}

/// Token buckets, one per IP (anonymous) or key: `rate` per minute, bursts up to `rate`.
#[derive(Debug, Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<Bucket, (f64, Instant)>>,
}

impl RateLimiter {
    /// Takes one token from `bucket`; `Err(seconds until one is available)` when empty.
    pub fn check(&self, bucket: Bucket, rate_per_minute: u32) -> Result<(), u64> {
        self.check_at(bucket, rate_per_minute, Instant::now())
    }

    fn check_at(&self, bucket: Bucket, rate_per_minute: u32, now: Instant) -> Result<(), u64> {
        let capacity = f64::from(rate_per_minute.max(1));
        let per_second = capacity / 60.0;
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() > 100_000 {
            // Forget buckets that have refilled: they hold no state worth keeping.
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * per_second < capacity
            });
        }
        let (tokens, at) = buckets.entry(bucket).or_insert((capacity, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * per_second).min(capacity);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - *tokens) / per_second).ceil() as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_bucket_allows_its_rate_then_refuses_until_it_refills() {
        let limiter = RateLimiter::default();
        let t0 = Instant::now();
        let ip = Bucket::Ip("127.0.0.1".parse().expect("ip"));
        for _ in 0..60 {
            assert_eq!(limiter.check_at(ip, 60, t0), Ok(()));
        }
        assert_eq!(limiter.check_at(ip, 60, t0), Err(1));
        // Another bucket is untouched; one second refills one token at 60/min.
        assert_eq!(limiter.check_at(Bucket::Key(1), 60, t0), Ok(()));
        assert_eq!(
            limiter.check_at(ip, 60, t0 + Duration::from_secs(1)),
            Ok(())
        );
        assert!(limiter
            .check_at(ip, 60, t0 + Duration::from_secs(1))
            .is_err());
    }

    #[test]
    fn keys_are_hashed_and_found_in_either_header() {
        assert_eq!(
            key_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let mut h = axum::http::HeaderMap::new();
        assert_eq!(presented_key(&h), None);
        h.insert("authorization", "Bearer cf_1".parse().expect("header"));
        assert_eq!(presented_key(&h).as_deref(), Some("cf_1"));
        h.insert("x-api-key", "cf_2".parse().expect("header"));
        assert_eq!(presented_key(&h).as_deref(), Some("cf_2"));
    }
}
