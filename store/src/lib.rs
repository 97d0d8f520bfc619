//! The roles' SQL: one module per read model, with typed rows, used by the projector, the
//! scorer, the risk worker, the actuator, stress, the report, the API and the tools, so each
//! statement has one home. Elsewhere: the follower's own state (`ingest/src/rpc/state.rs`,
//! compile-time checked in place) and platform's plumbing tables; and the collection engine
//! (`api/src/collection.rs`), the one place SQL is built at run time.
//!
//! Every fixed statement here is `sqlx::query!` (or `query_as!`/`query_scalar!`), checked at
//! compile time against the descriptions in the workspace's `.sqlx/` (`store/.env` sets
//! `SQLX_OFFLINE=true`): after changing a statement or a migration, run `scripts/sqlx-prepare`
//! and commit `.sqlx/`; CI runs it with `--check`. The exceptions are the `COPY … FROM STDIN`
//! texts and the copy's probe of any table, in [`projection::copy`].
//!
//! - [`aave`]: an Aave account read back and folded as the pool's `getUserAccountData` does.
//! - [`alerts`]: risk alerts and incidents (stored, replaced, correlated) and the risk
//!   groups' progress.
//! - [`attestations`]: signed attestations, stored and read per wallet.
//! - [`backtests`]: backtest runs and the scores they computed.
//! - [`blocks`]: a block range's swaps, syncs and flash loans, pool states, what a stretch of
//!   the log touched (the risk worker's reads).
//! - [`books`]: lenders' books of wallets.
//! - [`decisions`]: lending decisions: their inputs read, decided records stored and published.
//! - [`erc20`]: watched tokens' balances.
//! - [`feeds`]: the API's subscription feeds (rows and retractions after a position).
//! - [`keys`]: API keys (hashes), created, revoked, found.
//! - [`latest`]: the API's hottest reads kept in Redis, versioned in commit order.
//! - [`lending`]: lending histories and summaries, pools, reserve decimals, the chain's priced
//!   debtors.
//! - [`liquidity`]: reserve and pool liquidity histories (risk alerts, API forecasts).
//! - [`pools`]: AMM pools' summaries, volumes and reserves.
//! - [`prices`]: USD prices from oracle rounds and lending events.
//! - [`profiles`]: credit profiles (the fold's state per wallet) and the history after them.
//! - [`projection`]: the projector's batch writes of every read model the log folds into,
//!   retractions, and the rebuild's reset.
//! - [`scores`]: credit scores: the scorer's inserts and retractions, the bands it compares.
//! - [`seals`]: the chain seals consumers wait for before reading a stretch as whole.
//! - [`stress`]: stress runs and their shock grids.
//! - [`summary`]: what the read models and derived tables hold, counted (demo, rebuild, tools).

pub mod aave;
pub mod alerts;
pub mod attestations;
pub mod backtests;
pub mod blocks;
pub mod books;
pub mod decisions;
pub mod erc20;
pub mod feeds;
pub mod keys;
pub mod latest;
pub mod lending;
pub mod liquidity;
pub mod pools;
pub mod prices;
pub mod profiles;
pub mod projection;
pub mod scores;
pub mod seals;
pub mod stress;
pub mod summary;
