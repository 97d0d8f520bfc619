//! Repository tests of the scorer's and the tools' working state on a fresh migrated database
//! per test: credit profiles (`store::profiles`), backtest runs (`store::backtests`), and the
//! liquidity histories the risk worker and the API forecast from (`store::liquidity`).

use chainfold_store::{backtests, liquidity, profiles};
use chrono::{DateTime, Duration, Utc};
use sqlx::PgPool;

fn t(hours: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_700_000_000, 0).expect("a time") + Duration::hours(hours)
}

/// A lending event of `wallet` (reserve 0xr, 6 decimals) at hour `hours`.
async fn lend<'e>(
    db: impl sqlx::PgExecutor<'e>,
    id: &str,
    wallet: &str,
    action: &str,
    amount: i64,
    hours: i64,
) {
    sqlx::query(
        "INSERT INTO lending_event (event_id, chain_id, wallet, action, protocol, reserve, symbol,
             decimals, amount, block_number, block_hash, log_index, block_time, kafka_topic,
             kafka_partition, kafka_offset)
         VALUES ($1, 1, $2, $3, 'aave_v2', '0xr', 'USDC', 6, $4, $5, $6, 0, $7, 't', 0, $5)",
    )
    .bind(id)
    .bind(wallet)
    .bind(action)
    .bind(sqlx::types::BigDecimal::from(amount * 1_000_000))
    .bind(hours)
    .bind(format!("0xb{hours}"))
    .bind(t(hours))
    .execute(db)
    .await
    .expect("lending event");
}

/// Hourly deposits `e{h}` of wallet 0xa for each hour `h` in `hours` (block `h`, hash `0xb{h}`),
/// then `ANALYZE`, so the planner sees the history as it is.
async fn hourly_history(pool: &PgPool, hours: std::ops::RangeInclusive<i64>) {
    sqlx::query(
        "INSERT INTO lending_event (event_id, chain_id, wallet, action, protocol, reserve, symbol,
             decimals, amount, block_number, block_hash, log_index, block_time, kafka_topic,
             kafka_partition, kafka_offset)
         SELECT 'e' || h, 1, '0xa', 'deposit', 'aave_v2', '0xr', 'USDC', 6, 1000000, h,
                '0xb' || h, 0, $1::timestamptz + h * interval '1 hour', 't', 0, h
         FROM generate_series($2::int8, $3::int8) AS h",
    )
    .bind(t(0))
    .bind(hours.start())
    .bind(hours.end())
    .execute(pool)
    .await
    .expect("history");
    sqlx::query("ANALYZE lending_event")
        .execute(pool)
        .await
        .expect("analyze");
}

/// Stores wallet 0xa's profile with its cursor at `event` of hour `hour` (block `hour`, log 0,
/// hash `0xb{hour}`, as [`lend`] and [`hourly_history`] write them), `hour` rows folded.
async fn store_profile(pool: &PgPool, hour: i64, event: &str, state: &str, mark: Option<i64>) {
    let mut tx = pool.begin().await.expect("tx");
    profiles::upsert(
        &mut tx,
        &profiles::NewProfiles {
            chain_id: vec![1],
            wallet: vec!["0xa".to_owned()],
            rows_folded: vec![hour],
            cursor_time: vec![t(hour)],
            cursor_block: vec![hour],
            cursor_log: vec![0],
            cursor_event_id: vec![event.to_owned()],
            cursor_block_hash: vec![Some(format!("0xb{hour}"))],
            state: vec![state.to_owned()],
            order_mark: vec![mark],
        },
    )
    .await
    .expect("upsert");
    tx.commit().await.expect("commit");
}

#[sqlx::test(migrator = "chainfold_platform::MIGRATOR")]
async fn a_profile_is_stored_checked_against_its_cursor_and_forgotten(pool: PgPool) {
    lend(&pool, "e1", "0xa", "deposit", 100, 1).await;
    lend(&pool, "e2", "0xa", "borrow", 40, 2).await;
    lend(&pool, "e3", "0xa", "repay", 10, 3).await;
    let wallets = vec!["0xa".to_owned()];

    // Without a profile: nothing stored, and the history from the start up to `until`.
    let mut conn = pool.acquire().await.expect("conn");
    let none = profiles::stored(&mut conn, &[1], &wallets)
        .await
        .expect("stored");
    assert_eq!((none[0].rows_folded, none[0].stored_mark), (None, None));
    let mark = none[0].mark.expect("a wallet with timed rows has a mark");
    let start = profiles::Cursors {
        time: vec![None],
        block: vec![None],
        log: vec![None],
        event_id: vec![None],
    };
    let all = profiles::history_after(&mut conn, &[1], &wallets, &start, &[t(3)])
        .await
        .expect("history");
    assert_eq!(
        all.iter().map(|r| r.event_id.as_str()).collect::<Vec<_>>(),
        ["e1", "e2", "e3"]
    );
    assert_eq!(all[1].amount, Some(40.0), "whole tokens");
    drop(conn);

    // Stored after e2: the history after the cursor is e3 alone; the cursor row is kept.
    store_profile(&pool, 2, "e2", r#"{"folded": 2}"#, Some(mark)).await;
    let mut conn = pool.acquire().await.expect("conn");
    let stored = profiles::stored(&mut conn, &[1], &wallets)
        .await
        .expect("stored");
    assert_eq!(stored[0].rows_folded, Some(2));
    assert!(stored[0].cursor_kept);
    assert_eq!(
        (stored[0].stored_mark, stored[0].mark),
        (Some(mark), Some(mark))
    );
    let state: Option<serde_json::Value> = stored[0]
        .state
        .as_deref()
        .map(|s| serde_json::from_str(s).expect("json"));
    assert_eq!(state, Some(serde_json::json!({"folded": 2})));
    let after = profiles::Cursors {
        time: vec![Some(t(2))],
        block: vec![Some(2)],
        log: vec![Some(0)],
        event_id: vec![Some("e2".into())],
    };
    let rest = profiles::history_after(&mut conn, &[1], &wallets, &after, &[t(3)])
        .await
        .expect("history");
    assert_eq!(
        rest.iter().map(|r| r.event_id.as_str()).collect::<Vec<_>>(),
        ["e3"]
    );

    // A reorg re-includes e2 in another block: the profile's cursor is no longer in the log.
    sqlx::query("UPDATE lending_event SET block_hash = '0xother' WHERE event_id = 'e2'")
        .execute(&mut *conn)
        .await
        .expect("reorg");
    let stored = profiles::stored(&mut conn, &[1], &wallets)
        .await
        .expect("stored");
    assert!(!stored[0].cursor_kept, "a moved cursor row is not resumed");
    assert_ne!(stored[0].mark, Some(mark), "an update draws a new mark");
    drop(conn);

    let mut tx = pool.begin().await.expect("tx");
    profiles::forget(&mut tx, &[1], &wallets)
        .await
        .expect("forget");
    tx.commit().await.expect("commit");
    let mut conn = pool.acquire().await.expect("conn");
    let gone = profiles::stored(&mut conn, &[1], &wallets)
        .await
        .expect("stored");
    assert_eq!(gone[0].rows_folded, None);
}

/// Index and table rows this database's scans of `lending_event` have read so far (the counts
/// flushed from every backend first, and read afresh).
async fn lending_rows_read(conn: &mut sqlx::PgConnection) -> i64 {
    sqlx::query("SELECT pg_stat_force_next_flush()")
        .execute(&mut *conn)
        .await
        .expect("flush");
    sqlx::query("SELECT pg_stat_clear_snapshot()")
        .execute(&mut *conn)
        .await
        .expect("snapshot");
    sqlx::query_scalar(
        "SELECT (SELECT coalesce(sum(idx_tup_read), 0) FROM pg_stat_user_indexes
                 WHERE relname = 'lending_event')::int8
              + (SELECT coalesce(seq_tup_read, 0) FROM pg_stat_user_tables
                 WHERE relname = 'lending_event')::int8",
    )
    .fetch_one(&mut *conn)
    .await
    .expect("rows read")
}

/// A resumed profile's read costs the rows after its cursor, not the history before it: with
/// 2,000 events before the cursor and 3 after, the read scans a handful of rows.
#[sqlx::test(migrator = "chainfold_platform::MIGRATOR")]
async fn the_history_after_a_cursor_does_not_scan_the_history_before_it(pool: PgPool) {
    // A second wallet, so the table is not one wallet's alone.
    lend(&pool, "other", "0xb", "deposit", 1, 5).await;
    hourly_history(&pool, 1..=2003).await;
    let mut conn = pool.acquire().await.expect("conn");
    let wallets = vec!["0xa".to_owned()];
    let after = profiles::Cursors {
        time: vec![Some(t(2000))],
        block: vec![Some(2000)],
        log: vec![Some(0)],
        event_id: vec![Some("e2000".into())],
    };
    let before = lending_rows_read(&mut conn).await;
    let rest = profiles::history_after(&mut conn, &[1], &wallets, &after, &[t(2003)])
        .await
        .expect("history");
    let read = lending_rows_read(&mut conn).await - before;
    assert_eq!(
        rest.iter().map(|r| r.event_id.as_str()).collect::<Vec<_>>(),
        ["e2001", "e2002", "e2003"]
    );
    assert!(read < 50, "the read scanned {read} rows for 3");
}

/// The wallet's mark (`lending_order`, kept by triggers on `lending_event`) stays while rows are
/// appended after its last key, whatever the path, and is drawn anew by anything else that
/// changes the history: a row at or before the last key, a delete, an update, a truncate.
#[sqlx::test(migrator = "chainfold_platform::MIGRATOR")]
async fn a_wallets_mark_changes_only_when_its_history_changes_behind_its_last_key(pool: PgPool) {
    let mark = |pool: PgPool, wallet: &'static str| async move {
        sqlx::query_scalar::<_, i64>(
            "SELECT mark FROM lending_order WHERE chain_id = 1 AND wallet = $1",
        )
        .bind(wallet)
        .fetch_optional(&pool)
        .await
        .expect("mark")
    };
    let untimed = |id: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query(
                "INSERT INTO lending_event (event_id, chain_id, wallet, action, protocol, reserve,
                     symbol, decimals, amount, kafka_topic, kafka_partition, kafka_offset)
                 VALUES ($1, 1, '0xa', 'deposit', 'aave_v2', '0xr', 'USDC', 6, 1, 't', 0, 0)",
            )
            .bind(id)
            .execute(&pool)
            .await
            .expect("untimed row");
        }
    };
    let run = |sql: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query(sql)
                .execute(&pool)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
    };
    assert_eq!(mark(pool.clone(), "0xa").await, None, "no history, no mark");
    untimed("u1").await;
    assert_eq!(
        mark(pool.clone(), "0xa").await,
        None,
        "a row without a time is never folded"
    );
    lend(&pool, "e2", "0xa", "deposit", 1, 2).await;
    let first = mark(pool.clone(), "0xa").await.expect("a mark");
    lend(&pool, "e3", "0xa", "deposit", 1, 3).await;
    lend(&pool, "b1", "0xb", "deposit", 1, 1).await;
    untimed("u2").await;
    assert_eq!(
        mark(pool.clone(), "0xa").await,
        Some(first),
        "appends keep the mark"
    );
    let (last, block): (String, i64) = sqlx::query_as(
        "SELECT last_event_id, last_block FROM lending_order WHERE chain_id = 1 AND wallet = '0xa'",
    )
    .fetch_one(&pool)
    .await
    .expect("last key");
    assert_eq!((last.as_str(), block), ("e3", 3));

    // A row arriving before the last key (an older block, late).
    lend(&pool, "e1", "0xa", "deposit", 1, 1).await;
    let late = mark(pool.clone(), "0xa").await.expect("a mark");
    assert_ne!(late, first, "a late row draws a new mark");
    let other = mark(pool.clone(), "0xb").await.expect("0xb's mark");

    let mut seen = vec![first, late];
    for (what, change) in [
        (
            "a delete",
            "DELETE FROM lending_event WHERE event_id = 'e2'",
        ),
        (
            "an update",
            "UPDATE lending_event SET amount = 2 WHERE event_id = 'e1'",
        ),
        (
            "a time given to an untimed row",
            "UPDATE lending_event SET block_time = now() WHERE event_id = 'u1'",
        ),
    ] {
        run(change).await;
        let now = mark(pool.clone(), "0xa").await.expect("a mark");
        assert!(!seen.contains(&now), "{what} draws a new mark");
        seen.push(now);
    }
    assert_eq!(
        mark(pool.clone(), "0xb").await,
        Some(other),
        "another wallet keeps its mark"
    );
    let (last,): (String,) = sqlx::query_as(
        "SELECT last_event_id FROM lending_order WHERE chain_id = 1 AND wallet = '0xa'",
    )
    .fetch_one(&pool)
    .await
    .expect("last key");
    assert_eq!(last, "u1", "an update moves the last key forward");

    // A retraction of the last rows moves the last key back to the rows left, so the rows that
    // replace them are appends again.
    run("DELETE FROM lending_event WHERE event_id = 'u1'").await;
    let retracted = mark(pool.clone(), "0xa").await.expect("a mark");
    assert!(!seen.contains(&retracted), "a retraction draws a new mark");
    lend(&pool, "e4", "0xa", "deposit", 1, 4).await;
    assert_eq!(
        mark(pool.clone(), "0xa").await,
        Some(retracted),
        "a row after the rows left is an append"
    );
    run("DELETE FROM lending_event WHERE wallet = '0xb'").await;
    assert_eq!(
        mark(pool.clone(), "0xb").await,
        None,
        "no timed row left, no mark"
    );

    run("TRUNCATE lending_event CASCADE").await;
    assert_eq!(
        mark(pool.clone(), "0xa").await,
        None,
        "a truncate forgets the marks"
    );
    lend(&pool, "e2", "0xa", "deposit", 1, 2).await;
    let again = mark(pool.clone(), "0xa").await.expect("a mark");
    assert!(!seen.contains(&again), "a mark is never drawn twice");
}

/// Two writers appending to one wallet at once, the second's row earlier than the first's and
/// committed after it: the wallet gets a new mark, whether it was known or new. (Compared before
/// taking the wallet's row lock, the second writer saw the key before the first's row and let
/// its own row through unmarked.)
#[sqlx::test(migrator = "chainfold_platform::MIGRATOR")]
async fn concurrent_appends_that_land_out_of_order_draw_a_new_mark(pool: PgPool) {
    let mark = |wallet: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT mark FROM lending_order WHERE chain_id = 1 AND wallet = $1",
            )
            .bind(wallet)
            .fetch_optional(&pool)
            .await
            .expect("mark")
        }
    };
    for wallet in ["0xknown", "0xnew"] {
        if wallet == "0xknown" {
            lend(&pool, "known-first", wallet, "deposit", 1, 1).await;
        }
        let mut first = pool.begin().await.expect("tx");
        lend(
            &mut *first,
            &format!("{wallet}-later"),
            wallet,
            "deposit",
            1,
            20,
        )
        .await;
        let second = {
            let pool = pool.clone();
            tokio::spawn(async move {
                let mut tx = pool.begin().await.expect("tx");
                lend(
                    &mut *tx,
                    &format!("{wallet}-earlier"),
                    wallet,
                    "deposit",
                    1,
                    10,
                )
                .await;
                tx.commit().await.expect("commit");
            })
        };
        // The second writer waits for the first's lock on the wallet.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .fetch_one(&pool)
            .await
            .expect("activity");
            if waiting > 0 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the second writer never waited"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        // The mark the first writer leaves, read in its own transaction (once it commits, the
        // second writer may commit at once).
        let after_first: i64 =
            sqlx::query_scalar("SELECT mark FROM lending_order WHERE chain_id = 1 AND wallet = $1")
                .bind(wallet)
                .fetch_one(&mut *first)
                .await
                .expect("the first writer's mark");
        first.commit().await.expect("commit");
        second.await.expect("second writer");
        let after_second = mark(wallet).await.expect("a mark");
        assert_ne!(
            after_second, after_first,
            "{wallet}: the row landed behind the last key"
        );
    }
}

/// A batch's stored-profile read is one key lookup per wallet: with 2,000 rows of the wallet
/// stored after the profile's cursor (a scorer far behind the projector), it reads a handful of
/// `lending_event` rows, not the rows ahead.
#[sqlx::test(migrator = "chainfold_platform::MIGRATOR")]
async fn the_stored_profile_read_does_not_count_the_rows_ahead(pool: PgPool) {
    hourly_history(&pool, 1..=2001).await;
    store_profile(&pool, 1, "e1", "{}", Some(1)).await;
    let wallets = vec!["0xa".to_owned()];
    let mut conn = pool.acquire().await.expect("conn");
    let before = lending_rows_read(&mut conn).await;
    let stored = profiles::stored(&mut conn, &[1], &wallets)
        .await
        .expect("stored");
    let read = lending_rows_read(&mut conn).await - before;
    assert!(
        stored[0].cursor_kept && stored[0].mark.is_some(),
        "{stored:?}"
    );
    assert!(read < 10, "the read scanned {read} rows");
}

#[sqlx::test(migrator = "chainfold_platform::MIGRATOR")]
async fn a_backtest_run_stores_each_score_once_and_its_counts(pool: PgPool) {
    let log_end = serde_json::json!({"0": 10});
    backtests::start(
        &pool,
        &backtests::NewRun {
            id: "run1",
            label: Some("label"),
            model_version: "v1",
            model_sha256: "sha",
            from_time: t(0),
            to_time: t(10),
            log_end: &log_end,
        },
    )
    .await
    .expect("start");
    let score = backtests::Score {
        chain_id: 1,
        wallet: "0xa",
        event_id: "e1",
        score: 640,
        band: "FAIR",
        probability_of_liquidation: Some(0.25),
        reasons: serde_json::json!([]),
        computed_at: t(1),
        kafka_partition: 0,
        kafka_offset: 3,
    };
    let mut tx = pool.begin().await.expect("tx");
    assert!(backtests::insert_score(&mut tx, "run1", &score)
        .await
        .expect("insert"));
    assert!(
        !backtests::insert_score(&mut tx, "run1", &score)
            .await
            .expect("insert"),
        "a replayed score is not stored twice"
    );
    tx.commit().await.expect("commit");
    backtests::finish(&pool, "run1", 5, 1)
        .await
        .expect("finish");
    let (finished, events, scored): (bool, i64, i64) = sqlx::query_as(
        "SELECT finished_at IS NOT NULL, events_read, scored FROM backtest_run WHERE id = 'run1'",
    )
    .fetch_one(&pool)
    .await
    .expect("run");
    assert_eq!((finished, events, scored), (true, 5, 1));
}

#[sqlx::test(migrator = "chainfold_platform::MIGRATOR")]
async fn liquidity_histories_are_running_totals_and_pool_windows(pool: PgPool) {
    lend(&pool, "e1", "0xa", "deposit", 100, 1).await;
    lend(&pool, "e2", "0xb", "borrow", 40, 2).await;
    lend(&pool, "e3", "0xa", "redeem", 30, 3).await;
    lend(&pool, "e4", "0xb", "repay", 15, 3).await;
    let history = liquidity::reserve_history(&pool, 1, "0xr")
        .await
        .expect("history");
    let points: Vec<(f64, f64)> = history.iter().map(|p| (p.supply, p.debt)).collect();
    // One point per instant: hour 3's redeem and repay are one point.
    assert_eq!(points, vec![(100.0, 0.0), (100.0, 40.0), (70.0, 25.0)]);
    assert!(liquidity::reserve_history(&pool, 1, "0xother")
        .await
        .expect("history")
        .is_empty());

    for (i, hours) in [0i64, 10, 20, 30].into_iter().enumerate() {
        sqlx::query(
            "INSERT INTO pool_sync (event_id, chain_id, block_number, log_index, block_time,
                 kafka_topic, kafka_partition, kafka_offset, pool, protocol, token0, token1,
                 reserve0, reserve1)
             VALUES ($1, 1, $2, 0, $3, 't', 0, $2, '0xp', 'uniswap_v2', '0xt0', '0xt1', $4, 7)",
        )
        .bind(format!("s{i}"))
        .bind(hours)
        .bind(t(hours))
        .bind(sqlx::types::BigDecimal::from(1000 - i as i64))
        .execute(&pool)
        .await
        .expect("sync");
    }
    // Within 15 hours of the latest sync (hour 30): hours 20 and 30 only.
    let window = liquidity::pool_history(&pool, 1, "0xp", 15.0)
        .await
        .expect("history");
    assert_eq!(
        window.iter().map(|p| p.reserve0).collect::<Vec<_>>(),
        vec![998.0, 997.0]
    );
}
