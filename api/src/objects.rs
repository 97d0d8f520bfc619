//! The resolvers of the nested fields of [`Wallet`] and [`Pool`]: what a wallet's or a pool's
//! field reads beyond its own row (its scores, summaries and decisions; a pool's volumes,
//! liquidity and forecasts), through the loaders, the collections and the decision store. The
//! types themselves are plain data in [`crate::types`], so the modules below this one never
//! import it back.

use async_graphql::{ComplexObject, Context};
use bigdecimal::BigDecimal;
use chrono::DateTime;
use sqlx::PgPool;

use crate::error::{gql, ApiError, ApiResult};
use crate::input::{decimal_text, page_size};
use crate::types::*;

#[ComplexObject]
impl Wallet {
    /// One entry per action the wallet has taken (DEPOSIT BORROW REPAY REDEEM LIQUIDATION).
    #[graphql(complexity = "crate::cost::QUERY_COST + child_complexity")]
    async fn lending_summary(&self, ctx: &Context<'_>) -> ApiResult<Vec<LendingSummary>> {
        if let Some(list) = &self.lending_summary {
            return Ok(list.clone());
        }
        let loader = ctx.data_unchecked::<crate::loaders::Loaders>();
        Ok(loader
            .summaries
            .load_one((self.chain_id, self.address.clone()))
            .await?
            .unwrap_or_default())
    }

    /// The latest credit score (`chainfold score`), or null if the wallet was not scored.
    /// Batched: a page of wallets reads all their scores in one query.
    #[graphql(complexity = "crate::cost::QUERY_COST + child_complexity")]
    async fn credit_score(&self, ctx: &Context<'_>) -> ApiResult<Option<CreditScore>> {
        let loader = ctx.data_unchecked::<crate::loaders::Loaders>();
        let key = (self.chain_id, self.address.clone());
        // From Redis a lone key is one GET; from Postgres, waiting to batch it with concurrent
        // requests' keys is worth the millisecond (measured: 3,369 req/s read at once against
        // 6,654 batched).
        if self.alone && loader.latest.is_some() {
            use async_graphql::dataloader::Loader;
            let mut found = loader
                .scores
                .loader()
                .load(std::slice::from_ref(&key))
                .await?;
            return Ok(found.remove(&key));
        }
        Ok(loader.scores.load_one(key).await?)
    }

    /// Every score the wallet has had, newest first unless ordered otherwise.
    #[graphql(complexity = "crate::cost::connection(first, child_complexity)")]
    #[allow(clippy::too_many_arguments)]
    async fn score_history(
        &self,
        ctx: &Context<'_>,
        #[graphql(name = "where")] filter: Option<crate::collection::Where<CreditScore>>,
        order_by: Option<crate::collection::OrderBy<CreditScore>>,
        order_direction: Option<crate::collection::OrderDirection>,
        first: Option<i32>,
        after: Option<String>,
    ) -> ApiResult<crate::collections::Page<CreditScore>> {
        let from =
            crate::collections::of_wallet("credit_score", self.chain_id, self.address.clone());
        crate::collections::collect(
            ctx,
            crate::collections::Args {
                filter: filter.as_ref(),
                order_by,
                order_direction,
                first,
                after: after.as_deref(),
            },
            &from,
            SCORE_COLUMNS,
            |r: ScoreRow| Some(CreditScore::from(r)),
        )
        .await
    }

    /// The wallet's ERC-20 balances in the watched tokens (`erc20_token` contracts), largest
    /// first: exact base units as folded from every `Transfer` in and out (`erc20_balance`).
    #[graphql(complexity = "crate::cost::QUERY_COST + child_complexity")]
    async fn token_balances(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 20)] first: i32,
    ) -> ApiResult<Vec<TokenBalance>> {
        let limit = page_size(Some(first), 20).map_err(gql)?;
        let pool = ctx.data_unchecked::<PgPool>();
        let rows = chainfold_store::erc20::balances(pool, self.chain_id, &self.address, limit)
            .await
            .map_err(gql)?;
        Ok(rows
            .into_iter()
            .map(|b| TokenBalance {
                token: b.token,
                name: b.name,
                symbol: b.symbol,
                decimals: b.decimals.map(i32::from),
                balance: b.balance.to_plain_string(),
                transfers: b.transfers,
            })
            .collect())
    }

    /// The wallet's lending decisions (requested and band-change), newest first.
    #[graphql(complexity = "crate::cost::QUERY_COST + child_complexity")]
    async fn decisions(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 10)] first: i32,
    ) -> ApiResult<Vec<crate::decisions::CreditDecision>> {
        let limit = page_size(Some(first), 10).map_err(gql)?;
        let pool = ctx.data_unchecked::<PgPool>();
        crate::decisions::of_wallet(pool, self.chain_id, &self.address, limit).await
    }

    /// The wallet's lending events, newest first unless ordered otherwise.
    #[graphql(complexity = "crate::cost::connection(first, child_complexity)")]
    #[allow(clippy::too_many_arguments)]
    async fn events(
        &self,
        ctx: &Context<'_>,
        #[graphql(name = "where")] filter: Option<crate::collection::Where<LendingEvent>>,
        order_by: Option<crate::collection::OrderBy<LendingEvent>>,
        order_direction: Option<crate::collection::OrderDirection>,
        first: Option<i32>,
        after: Option<String>,
    ) -> ApiResult<crate::collections::Page<LendingEvent>> {
        let from =
            crate::collections::of_wallet("lending_event", self.chain_id, self.address.clone());
        crate::collections::collect(
            ctx,
            crate::collections::Args {
                filter: filter.as_ref(),
                order_by,
                order_direction,
                first,
                after: after.as_deref(),
            },
            &from,
            crate::collections::EVENT_COLUMNS,
            crate::collections::event_of,
        )
        .await
    }
}

#[ComplexObject]
impl Pool {
    /// Per-token volumes and net flows of the pool's successful swaps in the `hours` before its
    /// latest timed swap (1 and 24 are the usual windows); empty when its swaps carry no time
    /// (recorded mev-inspect swaps).
    #[graphql(complexity = "crate::cost::QUERY_COST + child_complexity")]
    async fn recent_volumes(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 24)] hours: i32,
    ) -> ApiResult<Vec<TokenVolume>> {
        if !(1..=24 * 365).contains(&hours) {
            return Err(gql(ApiError::BadUserInput(format!(
                "hours must be between 1 and 8760, got {hours}"
            ))));
        }
        let pool = ctx.data_unchecked::<PgPool>();
        let rows =
            chainfold_store::pools::recent_token_volumes(pool, self.chain_id, &self.address, hours)
                .await
                .map_err(gql)?;
        Ok(rows
            .into_iter()
            .map(|(token, vin, vout)| TokenVolume {
                token,
                net_flow: (&vin - &vout).to_plain_string(),
                volume_in: vin.to_plain_string(),
                volume_out: vout.to_plain_string(),
            })
            .collect())
    }

    /// Liquidity, value and anomaly of a constant-product pool from its `Sync` reserves; null
    /// for pools without one (recorded swaps carry no reserves).
    #[graphql(complexity = "crate::cost::QUERY_COST + child_complexity")]
    async fn liquidity(&self, ctx: &Context<'_>) -> ApiResult<Option<PoolLiquidity>> {
        self.liquidity_of(ctx).await
    }

    /// Raw reserves (token0, token1) as of the latest `Sync`; null without one.
    #[graphql(complexity = "crate::cost::QUERY_COST + child_complexity")]
    async fn reserves(&self, ctx: &Context<'_>) -> ApiResult<Option<Vec<String>>> {
        Ok(self.liquidity_of(ctx).await?.map(|l| l.reserves))
    }

    /// token0's USD price implied by the pool (see `liquidity.priceUsd`).
    #[graphql(complexity = "crate::cost::QUERY_COST + child_complexity")]
    async fn price_usd(&self, ctx: &Context<'_>) -> ApiResult<Option<String>> {
        Ok(self.liquidity_of(ctx).await?.and_then(|l| l.price_usd))
    }

    /// USD tradable within ±2% of the price (see `liquidity.depthUsd`).
    #[graphql(complexity = "crate::cost::QUERY_COST + child_complexity")]
    async fn depth_usd(&self, ctx: &Context<'_>) -> ApiResult<Option<String>> {
        Ok(self.liquidity_of(ctx).await?.and_then(|l| l.depth_usd))
    }

    /// Reserves at USD prices (see `liquidity.tvlUsd`).
    #[graphql(complexity = "crate::cost::QUERY_COST + child_complexity")]
    async fn tvl_usd(&self, ctx: &Context<'_>) -> ApiResult<Option<String>> {
        Ok(self.liquidity_of(ctx).await?.and_then(|l| l.tvl_usd))
    }

    /// |robust z| of the latest reserve-ratio change (see `liquidity.anomalyScore`).
    #[graphql(complexity = "crate::cost::QUERY_COST + child_complexity")]
    async fn anomaly_score(&self, ctx: &Context<'_>) -> ApiResult<Option<f64>> {
        Ok(self.liquidity_of(ctx).await?.and_then(|l| l.anomaly_score))
    }

    /// The pool's depth forecast for each of the next `hours` hours (1–48) after its latest
    /// `Sync`, from the trend of the 24 h before it; empty without an hour of timed `Sync`s.
    #[graphql(complexity = "crate::cost::QUERY_COST + child_complexity")]
    async fn liquidity_forecast(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 6)] hours: i32,
    ) -> ApiResult<Vec<LiquidityForecastPoint>> {
        use chainfold_domain::pool::{depth_forecast, depth_token0};
        use chainfold_store::liquidity::pool_history;
        if !(1..=48).contains(&hours) {
            return Err(gql(ApiError::BadUserInput(format!(
                "hours must be between 1 and 48, got {hours}"
            ))));
        }
        let pool = ctx.data_unchecked::<PgPool>();
        let rows = pool_history(pool, self.chain_id, &self.address, 24.0)
            .await
            .map_err(gql)?;
        let Some(last) = rows.last() else {
            return Ok(Vec::new());
        };
        let history: Vec<(f64, f64)> = rows
            .iter()
            .map(|r| (r.hours, depth_token0(r.reserve0, 0.02)))
            .collect();
        // USD per token0 base unit, from the current liquidity's valuation.
        let usd_per_unit = self.liquidity_of(ctx).await?.and_then(|l| {
            let now = depth_token0(last.reserve0, 0.02);
            let usd: f64 = l.depth_usd.as_deref()?.parse().ok()?;
            (now > 0.0).then(|| usd / now)
        });
        let start = DateTime::from_timestamp_micros((last.hours * 3600.0 * 1e6).round() as i64)
            .unwrap_or_default();
        Ok((1..=hours)
            .filter_map(|h| {
                let depth = depth_forecast(&history, f64::from(h))?;
                Some(LiquidityForecastPoint {
                    at: start + chrono::Duration::hours(i64::from(h)),
                    hours_ahead: h,
                    depth,
                    depth_usd: usd_per_unit.map(|u| depth * u),
                    utilisation: None,
                })
            })
            .collect())
    }

    /// The pool's reserves after each of its `Sync`s, newest first unless ordered otherwise;
    /// `block` stops at that block.
    #[graphql(complexity = "crate::cost::connection(first, child_complexity)")]
    #[allow(clippy::too_many_arguments)]
    async fn history(
        &self,
        ctx: &Context<'_>,
        #[graphql(name = "where")] filter: Option<
            crate::collection::Where<crate::collections::PoolSyncPoint>,
        >,
        order_by: Option<crate::collection::OrderBy<crate::collections::PoolSyncPoint>>,
        order_direction: Option<crate::collection::OrderDirection>,
        first: Option<i32>,
        after: Option<String>,
        block: Option<crate::collection::BlockHeight>,
    ) -> ApiResult<crate::collections::Page<crate::collections::PoolSyncPoint>> {
        crate::collections::pool_history(
            ctx,
            self.chain_id,
            self.address.clone(),
            crate::collections::Args {
                filter: filter.as_ref(),
                order_by,
                order_direction,
                first,
                after: after.as_deref(),
            },
            block,
        )
        .await
    }

    /// Per-token volumes of the pool's successful swaps.
    #[graphql(complexity = "crate::cost::QUERY_COST + child_complexity")]
    async fn token_volumes(&self, ctx: &Context<'_>) -> ApiResult<Vec<TokenVolume>> {
        let pool = ctx.data_unchecked::<PgPool>();
        let rows = chainfold_store::pools::token_volumes(pool, self.chain_id, &self.address)
            .await
            .map_err(gql)?;
        Ok(rows
            .into_iter()
            .map(|(token, vin, vout)| TokenVolume {
                token,
                net_flow: (&vin - &vout).to_plain_string(),
                volume_in: vin.to_plain_string(),
                volume_out: vout.to_plain_string(),
            })
            .collect())
    }
}

impl Pool {
    /// The pool's liquidity (computed once per `Pool` value, so the flat fields share it).
    async fn liquidity_of(&self, ctx: &Context<'_>) -> ApiResult<Option<PoolLiquidity>> {
        self.liquidity_cache
            .get_or_try_init(|| self.compute_liquidity(ctx))
            .await
            .cloned()
    }

    async fn compute_liquidity(&self, ctx: &Context<'_>) -> ApiResult<Option<PoolLiquidity>> {
        use chainfold_domain::pool::ratio_anomaly;
        let pool = ctx.data_unchecked::<PgPool>();
        type SyncRow = (String, String, BigDecimal, BigDecimal, Option<i64>);
        let syncs: Vec<SyncRow> =
            chainfold_store::pools::latest_reserves(pool, self.chain_id, &self.address, 101)
                .await
                .map_err(gql)?
                .into_iter()
                .map(|r| (r.token0, r.token1, r.reserve0, r.reserve1, r.block_number))
                .collect();
        let Some((token0, token1, r0, r1, block)) = syncs.first().cloned() else {
            return Ok(None);
        };
        // Decimals from the lending reserves, USD from the oracles.
        let meta = |token: String| async move {
            let decimals =
                chainfold_store::lending::reserve_decimals(pool, self.chain_id, &token).await?;
            let price = chainfold_store::prices::oracle_price(pool, self.chain_id, &token).await?;
            Ok::<_, sqlx::Error>((decimals, price))
        };
        let (d0, p0) = meta(token0.clone()).await.map_err(gql)?;
        let (d1, p1) = meta(token1.clone()).await.map_err(gql)?;
        let f = |v: &BigDecimal| v.to_string().parse::<f64>().unwrap_or(0.0);
        let ratios: Vec<f64> = syncs
            .iter()
            .rev()
            .map(|s| {
                if f(&s.2) > 0.0 {
                    f(&s.3) / f(&s.2)
                } else {
                    0.0
                }
            })
            .collect();
        let mut out = PoolLiquidity {
            tokens: vec![token0, token1],
            reserves: vec![r0.to_plain_string(), r1.to_plain_string()],
            price_usd: None,
            oracle_deviation: None,
            tvl_usd: None,
            depth_usd: None,
            anomaly_score: ratio_anomaly(&ratios),
            block_number: block,
        };
        if let (Some(d0), Some(d1)) = (d0, d1) {
            // Whole tokens, exactly: base units × 10^-decimals.
            let w0 = &r0 * BigDecimal::new(1.into(), i64::from(d0));
            let w1 = &r1 * BigDecimal::new(1.into(), i64::from(d1));
            if w0.sign() == bigdecimal::num_bigint::Sign::Plus
                && w1.sign() == bigdecimal::num_bigint::Sign::Plus
            {
                let implied0 = p1.as_ref().map(|p| money(&(&w1 / &w0 * p)));
                let price0 = p0.clone().or(implied0.clone());
                let price1 = p1.clone().or(p0.as_ref().map(|p| money(&(&w0 / &w1 * p))));
                out.oracle_deviation = implied0
                    .as_ref()
                    .zip(p0.as_ref())
                    .map(|(i, o)| f(i) / f(o) - 1.0);
                out.price_usd = implied0.as_ref().map(decimal_text);
                if let (Some(a), Some(b)) = (price0, price1) {
                    let tvl = &w0 * &a + &w1 * &b;
                    // ±2% depth is (1/√0.98 − 1) × the value at the price: irrational, so to
                    // 18 decimal places.
                    out.depth_usd = Some(decimal_text(&money(&(&tvl * depth_factor(0.02)))));
                    out.tvl_usd = Some(decimal_text(&tvl));
                }
            }
        }
        Ok(Some(out))
    }
}

/// `v` rounded to 18 decimal places (a quotient, or a square root, has no exact decimal).
fn money(v: &BigDecimal) -> BigDecimal {
    v.with_scale_round(18, bigdecimal::RoundingMode::HalfEven)
}

/// 1/√(1 − bound) − 1 to 40 digits: the share of a constant-product pool's value that moves
/// its price by `bound` (`domain::pool::depth_in`, in decimals).
fn depth_factor(bound: f64) -> BigDecimal {
    use std::str::FromStr as _;
    let one = BigDecimal::from(1);
    let keep = BigDecimal::from_str(&format!("{}", 1.0 - bound)).unwrap_or_else(|_| one.clone());
    let root = keep.sqrt().unwrap_or_else(|| one.clone()).with_prec(40);
    (&one / root).with_prec(40) - one
}

#[cfg(test)]
mod money_tests {
    use super::*;

    #[test]
    fn the_depth_factor_is_one_over_the_root_of_the_bound_less_one_to_forty_digits() {
        let k = depth_factor(0.02);
        let f: f64 = k.to_string().parse().expect("f64");
        assert!((f - (1.0 / 0.98f64.sqrt() - 1.0)).abs() < 1e-15, "{k}");
        assert!(k.digits() <= 40, "{k}");
        // money() rounds to 18 places and text() writes no exponent or trailing zeros.
        let v: BigDecimal = "1234.50000000000000000049".parse().expect("decimal");
        assert_eq!(decimal_text(&money(&v)), "1234.5");
        assert_eq!(
            decimal_text(&"1e3".parse::<BigDecimal>().expect("decimal")),
            "1000"
        );
    }
}
