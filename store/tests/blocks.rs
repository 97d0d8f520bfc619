//! Repository tests of `store::blocks` on a fresh migrated database per test.

use chainfold_store::blocks;
use chrono::DateTime;
use sqlx::PgPool;

const POOL: &str = "0x00000000000000000000000000000000000000b1";

async fn sync(pool: &PgPool, block: i64, log: i32, tx: Option<&str>, r0: i64, r1: i64) {
    sqlx::query(
        "INSERT INTO pool_sync (event_id, chain_id, pool, protocol, token0, token1, reserve0,
                                reserve1, block_number, log_index, tx_hash, block_time,
                                kafka_topic, kafka_partition, kafka_offset)
         VALUES ('s' || $1 || '-' || $2, 1, $7, 'uniswap_v2', '0xt0', '0xt1', $4, $5, $1, $2, $3,
                 $6, 's', 0, $1 * 10 + $2)",
    )
    .bind(block)
    .bind(log)
    .bind(tx)
    .bind(r0)
    .bind(r1)
    .bind(DateTime::from_timestamp(1_700_000_000 + block * 3600, 0))
    .bind(POOL)
    .execute(pool)
    .await
    .expect("sync stored");
}

async fn swap(pool: &PgPool, block: i64, position: i32, amount_in: i64, reverted: bool) {
    sqlx::query(
        "INSERT INTO swap (event_id, chain_id, pool, protocol, tx_hash, tx_position, trace_address,
                           sender, recipient, token_in, amount_in, token_out, amount_out, reverted,
                           block_number, log_index, kafka_topic, kafka_partition, kafka_offset)
         VALUES ('w' || $1 || '-' || $2, 1, $5, 'uniswap_v2', '0xtx' || $2, $2, '{}', '0xs', '0xr',
                 '0xt0', $3, '0xt1', 1, $4, $1, $2, 'w', 0, $1 * 10 + $2)",
    )
    .bind(block)
    .bind(position)
    .bind(amount_in)
    .bind(reverted)
    .bind(POOL)
    .execute(pool)
    .await
    .expect("swap stored");
}

#[sqlx::test(migrator = "chainfold_platform::MIGRATOR")]
async fn a_block_range_reads_its_rows_in_chain_order_and_pool_states_start_before_it(pool: PgPool) {
    sync(&pool, 1, 0, Some("0xa"), 100, 100).await;
    sync(&pool, 3, 0, Some("0xb"), 90, 110).await;
    sync(&pool, 3, 1, Some("0xc"), 80, 120).await;
    sync(&pool, 4, 0, None, 70, 130).await;
    swap(&pool, 3, 2, 7, false).await;
    swap(&pool, 3, 1, 5, false).await;
    swap(&pool, 3, 0, 9, true).await;

    let swaps = blocks::swaps(&pool, 1, 2, 4).await.expect("read");
    let order: Vec<(i32, f64)> = swaps.iter().map(|s| (s.tx_position, s.amount_in)).collect();
    assert_eq!(
        order,
        vec![(1, 5.0), (2, 7.0)],
        "reverted swaps left out, chain order"
    );
    let syncs = blocks::syncs(&pool, 1, 2, 4).await.expect("read");
    assert_eq!(syncs.len(), 3);
    assert_eq!(syncs[2].tx_hash, None);
    assert!(blocks::flash_loans(&pool, 1, 0, 9)
        .await
        .expect("read")
        .is_empty());

    let (before, within) = blocks::pool_states(&pool, 1, &[POOL.to_owned()], 2, 4)
        .await
        .expect("read");
    assert_eq!(before.len(), 1);
    assert_eq!((before[0].block_number, before[0].reserve0), (1, 100.0));
    let ends: Vec<(i64, f64)> = within
        .iter()
        .map(|s| (s.block_number, s.reserve0))
        .collect();
    assert_eq!(ends, vec![(3, 80.0), (4, 70.0)], "each block's last state");
    assert_eq!(
        blocks::pool_tokens(&pool, 1, POOL).await.expect("read"),
        Some(("0xt0".to_owned(), "0xt1".to_owned()))
    );

    // Offsets 30..32 of the sync partition: the pool, at the hour of block 3.
    let touched = blocks::touched_pools(&pool, 1, &[("s".to_owned(), 0, 30, 32)])
        .await
        .expect("read");
    let hour = (1_700_000_000 + 3 * 3600) / 3600;
    assert_eq!(touched, vec![(POOL.to_owned(), vec![hour])]);

    let seeds = blocks::swap_inputs_before(&pool, 1, 4, &[POOL.to_owned()], &["0xt0".into()], 1)
        .await
        .expect("read");
    assert_eq!(
        seeds,
        vec![(POOL.to_owned(), "0xt0".to_owned(), vec![7.0])],
        "the last one"
    );
}
