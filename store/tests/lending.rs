//! Repository tests of `store::lending` and `store::prices` on a fresh migrated database per
//! test: lending events and oracle rounds written as the projector writes them, read back.

use bigdecimal::BigDecimal;
use chainfold_store::{lending, prices};
use chrono::{DateTime, Utc};
use sqlx::PgPool;

const WETH: &str = "0x00000000000000000000000000000000000000e1";
const USDC: &str = "0x00000000000000000000000000000000000000c1";
const POOL: &str = "0x00000000000000000000000000000000000000b1";

fn at(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_700_000_000 + secs, 0).expect("a time")
}

#[allow(clippy::too_many_arguments)]
async fn flow(
    pool: &PgPool,
    id: &str,
    wallet: &str,
    action: &str,
    (reserve, symbol, decimals): (&str, &str, i16),
    amount: &str,
    price_usd: Option<&str>,
    block: i64,
) {
    sqlx::query(
        "INSERT INTO lending_event (event_id, chain_id, wallet, action, protocol, reserve, symbol,
                                    decimals, amount, price_usd, block_number, log_index,
                                    block_time, kafka_topic, kafka_partition, kafka_offset, pool)
         VALUES ($1, 1, $2, $3, 'aave_v3', $4, $5, $6, $7::numeric, $8::numeric, $9, 0, $10,
                 't', 0, $9, $11)",
    )
    .bind(id)
    .bind(wallet)
    .bind(action)
    .bind(reserve)
    .bind(symbol)
    .bind(decimals)
    .bind(amount)
    .bind(price_usd)
    .bind(block)
    .bind(at(block * 12))
    .bind(POOL)
    .execute(pool)
    .await
    .expect("lending event stored");
}

async fn round(pool: &PgPool, id: &str, asset: &str, price: &str, block: i64) {
    sqlx::query(
        "INSERT INTO oracle_update (event_id, chain_id, feed, description, asset, answer, decimals,
                                    price, round_id, updated_at, block_number, log_index,
                                    block_time, kafka_topic, kafka_partition, kafka_offset)
         VALUES ($1, 1, 'feed-' || $2, 'ETH / USD', $2, ($3::numeric * 1e8)::numeric(78,0), 8,
                 $3::numeric, $4, $5, $4, 0, $5, 'o', 0, $4)",
    )
    .bind(id)
    .bind(asset)
    .bind(price)
    .bind(block)
    .bind(at(block * 12))
    .execute(pool)
    .await
    .expect("oracle round stored");
}

#[sqlx::test(migrator = "chainfold_platform::MIGRATOR")]
async fn debtors_are_the_wallets_with_debt_priced_by_their_oracle_else_their_events(pool: PgPool) {
    let weth = (WETH, "WETH", 18);
    let usdc = (USDC, "USDC", 6);
    flow(
        &pool,
        "a1",
        "0xa",
        "deposit",
        weth,
        "10000000000000000000",
        None,
        1,
    )
    .await;
    flow(
        &pool,
        "a2",
        "0xa",
        "borrow",
        usdc,
        "1000000000",
        Some("1.0"),
        2,
    )
    .await;
    flow(&pool, "b1", "0xb", "deposit", weth, "5", None, 2).await;
    round(&pool, "r1", WETH, "2000", 1).await;

    let now = lending::debtor_positions(&pool, 1, None)
        .await
        .expect("read");
    assert_eq!(
        now.len(),
        2,
        "the depositor without debt is no debtor: {now:?}"
    );
    let (usdc_row, weth_row) = (&now[0], &now[1]);
    let keys: Vec<(&str, &str)> = now
        .iter()
        .map(|p| (p.wallet.as_str(), p.symbol.as_str()))
        .collect();
    assert_eq!(
        keys,
        vec![("0xa", "USDC"), ("0xa", "WETH")],
        "by wallet and symbol"
    );
    assert_eq!(
        weth_row.collateral,
        "10000000000000000000"
            .parse::<BigDecimal>()
            .expect("decimal")
    );
    assert_eq!(
        weth_row.price,
        Some(BigDecimal::from(2000)),
        "the oracle's price"
    );
    assert_eq!(usdc_row.debt, BigDecimal::from(1_000_000_000));
    assert_eq!(
        usdc_row.price,
        Some("1.0".parse().expect("decimal")),
        "the event's price, no oracle"
    );
    assert_eq!((weth_row.decimals, usdc_row.decimals), (18, 6));
    assert_eq!(
        weth_row.liquidation_threshold, None,
        "no configuration in the log"
    );
    // As of block 1 the wallet had not borrowed yet: no debtor.
    assert!(lending::debtor_positions(&pool, 1, Some(1))
        .await
        .expect("read")
        .is_empty());

    let known = lending::wallets_with_history(
        &pool,
        &[1, 1, 2],
        &["0xa".into(), "0xc".into(), "0xa".into()],
    )
    .await
    .expect("read");
    assert_eq!(known, [(1, "0xa".to_owned())].into_iter().collect());
    let pools = lending::latest_pools(&pool, &[1], &["0xb".into()])
        .await
        .expect("read");
    assert_eq!(pools, vec![(1, "0xb".to_owned(), POOL.to_owned())]);
    assert_eq!(
        lending::reserve_decimals(&pool, 1, USDC)
            .await
            .expect("read"),
        Some(6)
    );
    assert_eq!(
        lending::reserve_decimals(&pool, 1, POOL)
            .await
            .expect("read"),
        None
    );
}

/// WETH's price window on chain 1: (oracle rounds, lending points).
async fn window(
    pool: &PgPool,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
) -> sqlx::Result<(Vec<prices::PricePoint>, Vec<prices::PricePoint>)> {
    Ok((
        prices::oracle_window(pool, 1, WETH, since).await?,
        prices::lending_window(pool, 1, WETH, since, until).await?,
    ))
}

#[sqlx::test(migrator = "chainfold_platform::MIGRATOR")]
async fn a_price_window_starts_with_the_price_in_force_and_a_token_reads_as_of_its_block(
    pool: PgPool,
) {
    for (id, price, block) in [("r1", "1900", 1), ("r2", "2000", 10), ("r3", "2100", 20)] {
        round(&pool, id, WETH, price, block).await;
    }
    flow(
        &pool,
        "e1",
        "0xa",
        "deposit",
        (WETH, "WETH", 18),
        "1",
        Some("1950"),
        5,
    )
    .await;
    let (oracle, lending) = window(&pool, Some(at(10 * 12)), None).await.expect("read");
    let seen: Vec<(Option<i64>, f64)> = oracle.iter().map(|p| (p.1, p.2)).collect();
    assert_eq!(
        seen,
        vec![(Some(1), 1900.0), (Some(10), 2000.0), (Some(20), 2100.0)]
    );
    assert_eq!(
        lending.iter().map(|p| p.2).collect::<Vec<_>>(),
        vec![1950.0]
    );
    // Lending points up to `until` only (oracle rounds all: their existence picks the kind).
    let (all_rounds, before) = window(&pool, Some(at(0)), Some(at(5 * 12 - 1)))
        .await
        .expect("read");
    assert!(all_rounds.len() >= 3, "{all_rounds:?}");
    assert!(before.is_empty(), "{before:?}");
    let (_, upto) = window(&pool, Some(at(0)), Some(at(5 * 12)))
        .await
        .expect("read");
    assert_eq!(upto.iter().map(|p| p.2).collect::<Vec<_>>(), vec![1950.0]);
    // Points of one time come in event order whatever order they were stored in, and a point
    // without a block reads as one (the arrays keep their NULLs in place).
    for (id, price) in [("e7", "1970"), ("e6", "1960"), ("e8", "1980")] {
        flow(
            &pool,
            id,
            "0xa",
            "deposit",
            (WETH, "WETH", 18),
            "1",
            Some(price),
            30,
        )
        .await;
    }
    sqlx::query("UPDATE lending_event SET block_number = NULL WHERE event_id = 'e8'")
        .execute(&pool)
        .await
        .expect("unblocked");
    let (_, same_time) = window(&pool, Some(at(6 * 12)), None).await.expect("read");
    assert_eq!(
        same_time.iter().map(|p| (p.1, p.2)).collect::<Vec<_>>(),
        vec![
            (Some(5), 1950.0),
            (Some(30), 1960.0),
            (Some(30), 1970.0),
            (None, 1980.0)
        ]
    );
    // Without a window start nothing is compared with it: nothing read.
    let (none, _) = window(&pool, None, None).await.expect("read");
    assert!(none.is_empty());

    assert_eq!(
        prices::token_at(&pool, 1, WETH, 15).await.expect("read"),
        (Some(18), Some(2000.0))
    );
    assert_eq!(
        prices::token_at(&pool, 1, USDC, 15).await.expect("read"),
        (None, None)
    );
    assert_eq!(
        prices::oracle_price(&pool, 1, WETH).await.expect("read"),
        Some(BigDecimal::from(2100))
    );
}

#[sqlx::test(migrator = "chainfold_platform::MIGRATOR")]
async fn the_price_change_mark_moves_with_what_can_change_kept_points_and_not_with_inserts(
    pool: PgPool,
) {
    let mark = || async { prices::change_mark(&pool).await.expect("mark") };
    let start = mark().await;
    assert_eq!(start, (0, None));
    for (id, block) in [("e1", 1), ("e2", 2), ("e3", 3)] {
        let weth = (WETH, "WETH", 18);
        flow(&pool, id, "0xa", "deposit", weth, "1", Some("2000"), block).await;
    }
    round(&pool, "r1", WETH, "2000", 1).await;
    let seal = |offset: i64, retracted: bool| {
        let pool = pool.clone();
        async move {
            sqlx::query(
                "INSERT INTO chain_seal (kafka_topic, kafka_partition, kafka_offset, chain_id,
                                         first_block, last_block, through, retracted)
                 VALUES ('seals', 0, $1, 1, 1, 3, '[]', $2)",
            )
            .bind(offset)
            .bind(retracted)
            .execute(&pool)
            .await
            .expect("seal");
        }
    };
    seal(0, false).await;
    assert_eq!(mark().await, start, "inserts and a plain seal leave it");
    // What the points after `from` read: from `from` on, nothing before it.
    let after = prices::lending_from(&pool, 1, WETH, at(2 * 12), None)
        .await
        .expect("read");
    assert_eq!(
        after.iter().map(|p| p.1).collect::<Vec<_>>(),
        vec![Some(2), Some(3)]
    );
    let upto = prices::lending_from(&pool, 1, WETH, at(2 * 12), Some(at(2 * 12)))
        .await
        .expect("read");
    assert_eq!(upto.iter().map(|p| p.1).collect::<Vec<_>>(), vec![Some(2)]);
    // A window started earlier, up to the kept points (a point at `below` is theirs).
    let gap = prices::lending_gap(&pool, 1, WETH, at(2 * 12), at(3 * 12))
        .await
        .expect("read");
    assert_eq!(
        gap.iter().map(|p| p.1).collect::<Vec<_>>(),
        vec![Some(1), Some(2)]
    );

    let mut last = start;
    for (what, change) in [
        (
            "a retraction",
            "DELETE FROM lending_event WHERE event_id = 'e3'",
        ),
        (
            "an update",
            "UPDATE lending_event SET price_usd = 1 WHERE event_id = 'e2'",
        ),
        (
            "an oracle retraction",
            "DELETE FROM oracle_update WHERE event_id = 'r1'",
        ),
        ("a rebuild", "TRUNCATE lending_event, chain_seal"),
    ] {
        sqlx::query(change).execute(&pool).await.expect(what);
        let now = mark().await;
        assert!(
            now.0 > last.0 && now.1 > last.1,
            "{what}: {last:?} → {now:?}"
        );
        last = now;
    }
    seal(1, true).await;
    let now = mark().await;
    assert!(
        now.0 > last.0,
        "a reorg's retraction seal: {last:?} → {now:?}"
    );
    // A change rolled back leaves it as it was.
    let mut tx = pool.begin().await.expect("tx");
    sqlx::query("DELETE FROM lending_event")
        .execute(&mut *tx)
        .await
        .expect("delete");
    tx.rollback().await.expect("rollback");
    assert_eq!(mark().await, now);
    // Cut back once it holds more than asked, to the last ids; the mark then moves (once).
    for _ in 0..30 {
        sqlx::query("DELETE FROM lending_event WHERE false")
            .execute(&pool)
            .await
            .expect("a statement deleting nothing still notes one");
    }
    let many = mark().await;
    assert_eq!(many.0, now.0 + 30, "{now:?} → {many:?}");
    assert_eq!(
        prices::prune_changes(&pool, 100, 5).await.expect("prune"),
        0
    );
    let deleted = prices::prune_changes(&pool, 20, 5).await.expect("prune");
    let cut = mark().await;
    assert_eq!((cut.0, cut.1), (5, many.1), "{deleted} deleted");
    assert_eq!(deleted as i64, many.0 - 5);
}
