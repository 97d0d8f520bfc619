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
async fn lend(pool: &PgPool, id: &str, wallet: &str, action: &str, amount: i64, hours: i64) {
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
    .execute(pool)
    .await
    .expect("lending event");
}

#[sqlx::test(migrator = "chainfold_platform::MIGRATOR")]
async fn a_profile_is_stored_checked_against_its_cursor_and_forgotten(pool: PgPool) {
    lend(&pool, "e1", "0xa", "deposit", 100, 1).await;
    lend(&pool, "e2", "0xa", "borrow", 40, 2).await;
    lend(&pool, "e3", "0xa", "repay", 10, 3).await;
    let wallets = vec!["0xa".to_owned()];

    // Without a profile: nothing stored, and the history from the start up to `until`.
    let mut conn = pool.acquire().await.expect("conn");
    let none = profiles::stored(&mut conn, &[1], &wallets, &[t(2)])
        .await
        .expect("stored");
    assert_eq!(none[0].rows_folded, None);
    assert_eq!((none[0].events, none[0].beyond), (0, 1), "{none:?}");
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
    let mut tx = pool.begin().await.expect("tx");
    profiles::upsert(
        &mut tx,
        &profiles::NewProfiles {
            chain_id: vec![1],
            wallet: wallets.clone(),
            rows_folded: vec![2],
            cursor_time: vec![t(2)],
            cursor_block: vec![2],
            cursor_log: vec![0],
            cursor_event_id: vec!["e2".into()],
            cursor_block_hash: vec![Some("0xb2".into())],
            state: vec![r#"{"folded": 2}"#.to_owned()],
        },
    )
    .await
    .expect("upsert");
    tx.commit().await.expect("commit");
    let mut conn = pool.acquire().await.expect("conn");
    let stored = profiles::stored(&mut conn, &[1], &wallets, &[t(3)])
        .await
        .expect("stored");
    assert_eq!(stored[0].rows_folded, Some(2));
    assert!(stored[0].cursor_kept);
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
    let stored = profiles::stored(&mut conn, &[1], &wallets, &[t(3)])
        .await
        .expect("stored");
    assert!(!stored[0].cursor_kept, "a moved cursor row is not resumed");
    drop(conn);

    let mut tx = pool.begin().await.expect("tx");
    profiles::forget(&mut tx, &[1], &wallets)
        .await
        .expect("forget");
    tx.commit().await.expect("commit");
    let mut conn = pool.acquire().await.expect("conn");
    let gone = profiles::stored(&mut conn, &[1], &wallets, &[t(3)])
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
    sqlx::query(
        "INSERT INTO lending_event (event_id, chain_id, wallet, action, protocol, reserve, symbol,
             decimals, amount, block_number, block_hash, log_index, block_time, kafka_topic,
             kafka_partition, kafka_offset)
         SELECT 'e' || h, 1, '0xa', 'deposit', 'aave_v2', '0xr', 'USDC', 6, 1000000, h,
                '0xb' || h, 0, $1::timestamptz + h * interval '1 hour', 't', 0, h
         FROM generate_series(1, 2003) AS h",
    )
    .bind(t(0))
    .execute(&pool)
    .await
    .expect("history");
    // A second wallet, so the table is not one wallet's alone.
    lend(&pool, "other", "0xb", "deposit", 1, 5).await;
    sqlx::query("ANALYZE lending_event")
        .execute(&pool)
        .await
        .expect("analyze");
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
