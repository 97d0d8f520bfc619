//! Repository tests of `store::pools` and `store::erc20` on a fresh migrated database per test.

use bigdecimal::BigDecimal;
use chainfold_store::{erc20, pools};
use sqlx::PgPool;

const POOL: &str = "0x00000000000000000000000000000000000000b1";

async fn exec(pool: &PgPool, sql: &str) {
    sqlx::query(sql)
        .execute(pool)
        .await
        .expect("fixture stored");
}

#[sqlx::test(migrator = "chainfold_platform::MIGRATOR")]
async fn a_pool_seen_only_through_syncs_reads_as_zero_swaps_with_its_latest_reserves_first(
    pool: PgPool,
) {
    assert_eq!(pools::summary(&pool, 1, POOL).await.expect("read"), None);
    for (block, r0) in [(5, 100), (7, 90)] {
        sqlx::query(
            "INSERT INTO pool_sync (event_id, chain_id, pool, protocol, token0, token1, reserve0,
                                    reserve1, block_number, log_index, kafka_topic,
                                    kafka_partition, kafka_offset)
             VALUES ('s' || $1, 1, $3, 'uniswap_v2', '0xt0', '0xt1', $2, 1000, $1, 0, 's', 0, $1)",
        )
        .bind(block)
        .bind(r0)
        .bind(POOL)
        .execute(&pool)
        .await
        .expect("sync stored");
    }
    let summary = pools::summary(&pool, 1, POOL)
        .await
        .expect("read")
        .expect("a pool");
    assert_eq!((summary.swap_count, summary.first_block), (0, None));
    assert_eq!(summary.protocol, "uniswap_v2");
    let reserves = pools::latest_reserves(&pool, 1, POOL, 1)
        .await
        .expect("read");
    assert_eq!(reserves.len(), 1);
    assert_eq!(
        (reserves[0].block_number, reserves[0].reserve0.clone()),
        (Some(7), BigDecimal::from(90))
    );

    exec(
        &pool,
        "INSERT INTO pool_summary (chain_id, pool, protocol, swap_count, reverted_count, first_block, last_block)
         VALUES (1, '0x00000000000000000000000000000000000000b1', 'uniswap_v2', 3, 1, 5, 7)",
    )
    .await;
    let summary = pools::summary(&pool, 1, POOL)
        .await
        .expect("read")
        .expect("a pool");
    assert_eq!(
        (
            summary.swap_count,
            summary.reverted_count,
            summary.last_block
        ),
        (3, 1, Some(7))
    );

    exec(
        &pool,
        "INSERT INTO pool_token_volume (chain_id, pool, token, volume_in, volume_out)
         VALUES (1, '0x00000000000000000000000000000000000000b1', '0xt1', 5, 6),
                (1, '0x00000000000000000000000000000000000000b1', '0xt0', 7, 8)",
    )
    .await;
    let volumes = pools::token_volumes(&pool, 1, POOL).await.expect("read");
    assert_eq!(
        volumes,
        vec![
            ("0xt0".to_owned(), BigDecimal::from(7), BigDecimal::from(8)),
            ("0xt1".to_owned(), BigDecimal::from(5), BigDecimal::from(6))
        ]
    );
    assert!(pools::recent_token_volumes(&pool, 1, POOL, 24)
        .await
        .expect("read")
        .is_empty());
}

#[sqlx::test(migrator = "chainfold_platform::MIGRATOR")]
async fn balances_come_largest_first_with_what_is_known_of_each_token(pool: PgPool) {
    assert!(!erc20::holds_any(&pool, 1, "0xh").await.expect("read"));
    exec(
        &pool,
        "INSERT INTO erc20_balance (chain_id, token, holder, balance, transfers)
         VALUES (1, '0xsmall', '0xh', 5, 1), (1, '0xbig', '0xh', 115792089237316195423570985008687907853269984665640564039457584007913129639935, 2)",
    )
    .await;
    exec(
        &pool,
        "INSERT INTO erc20_token (chain_id, token, name, symbol, decimals) VALUES (1, '0xbig', 'Big', 'BIG', 18)",
    )
    .await;
    assert!(erc20::holds_any(&pool, 1, "0xh").await.expect("read"));
    let balances = erc20::balances(&pool, 1, "0xh", 10).await.expect("read");
    let order: Vec<&str> = balances.iter().map(|b| b.token.as_str()).collect();
    assert_eq!(order, vec!["0xbig", "0xsmall"]);
    assert_eq!(balances[0].balance.to_string().len(), 78, "2^256-1 exactly");
    assert_eq!(
        (balances[0].symbol.as_deref(), balances[0].decimals),
        (Some("BIG"), Some(18))
    );
    assert_eq!(
        (balances[1].symbol.as_deref(), balances[1].transfers),
        (None, 1)
    );
    assert_eq!(
        erc20::balances(&pool, 1, "0xh", 1)
            .await
            .expect("read")
            .len(),
        1
    );
}
