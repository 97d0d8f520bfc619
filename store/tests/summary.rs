//! Repository tests of `store::summary` on a real Postgres, a fresh migrated database per test
//! (`#[sqlx::test]`; `DATABASE_URL` names the server).

use chainfold_store::summary::{self, LiveCounts, ReadModelCounts, ScoreCounts};
use sqlx::PgPool;

async fn score(pool: &PgPool, chain_id: i64, wallet: &str, event: &str, p: Option<f64>) {
    sqlx::query(
        "INSERT INTO credit_score (chain_id, wallet, score, band, probability_of_liquidation, reasons,
                                   model_version, model_sha256, event_id, kafka_topic, kafka_partition,
                                   kafka_offset, projector_next_offset)
         VALUES ($1, $2, 600, 'FAIR', $3, '[]', 'v1', 'sha', $4, 't', 0, 0, 0)",
    )
    .bind(chain_id)
    .bind(wallet)
    .bind(p)
    .bind(event)
    .execute(pool)
    .await
    .expect("score stored");
}

async fn decision(pool: &PgPool, id: &str, trigger: &str) {
    sqlx::query(
        "INSERT INTO credit_decision (id, chain_id, wallet, trigger, outcome, amount_usd, collateral_asset,
                                      score, band, reason, policy_version, model_version, score_event_id,
                                      record, decided_at, tx_hash, tx_block)
         VALUES ($1, 31337, '0xaa', $2, 'REJECT', 1000, 'WETH', 400, 'POOR', 'r', 'p1', 'v1', 'e',
                 '{}', now(), CASE WHEN $2 = 'REQUEST' THEN '0xfeed' END,
                 CASE WHEN $2 = 'REQUEST' THEN 7 END)",
    )
    .bind(id)
    .bind(trigger)
    .execute(pool)
    .await
    .expect("decision stored");
}

#[sqlx::test(migrator = "chainfold_platform::MIGRATOR")]
async fn an_empty_database_counts_nothing_and_names_no_borrower(pool: PgPool) {
    assert_eq!(
        summary::read_models(&pool).await.expect("counted"),
        ReadModelCounts {
            lending_events: 0,
            wallets: 0,
            swaps: 0,
            pools: 0
        }
    );
    assert_eq!(
        summary::live(&pool, 31337).await.expect("counted"),
        LiveCounts {
            pool_states: 0,
            lending_positions: 0,
            liquidations: 0,
            flash_loans: 0,
            oracle_feeds: 0
        }
    );
    assert_eq!(
        summary::riskiest_borrower(&pool, 31337)
            .await
            .expect("read"),
        None
    );
    assert_eq!(
        summary::latest_stress(&pool, 31337).await.expect("read"),
        None
    );
    assert!(summary::alerts_by_kind(&pool)
        .await
        .expect("read")
        .is_empty());
}

#[sqlx::test(migrator = "chainfold_platform::MIGRATOR")]
async fn the_riskiest_borrower_is_the_latest_scores_highest_probability_on_its_chain(pool: PgPool) {
    score(&pool, 31337, "0xaa", "e1", Some(0.9)).await;
    // 0xaa's latest score is safer: its earlier 0.9 no longer counts.
    score(&pool, 31337, "0xaa", "e2", Some(0.1)).await;
    score(&pool, 31337, "0xbb", "e3", Some(0.5)).await;
    score(&pool, 31337, "0xcc", "e4", None).await;
    score(&pool, 137, "0xdd", "e5", Some(0.99)).await;
    assert_eq!(
        summary::riskiest_borrower(&pool, 31337)
            .await
            .expect("read")
            .as_deref(),
        Some("0xbb")
    );
    assert_eq!(
        summary::scores(&pool).await.expect("counted"),
        ScoreCounts {
            wallets: 4,
            priced: 3
        }
    );
}

#[sqlx::test(migrator = "chainfold_platform::MIGRATOR")]
async fn emptying_the_derived_tables_keeps_requested_decisions_only(pool: PgPool) {
    score(&pool, 31337, "0xaa", "e1", Some(0.9)).await;
    decision(&pool, "asked", "REQUEST").await;
    decision(&pool, "pushed", "BAND_CHANGE").await;
    sqlx::query(
        "INSERT INTO risk_alert (id, kind, severity, chain_id, block_number, tx_hashes, addresses, pools,
                                 evidence, detector_version)
         VALUES ('a1', 'SANDWICH', 'HIGH', 1, 5, '{}', '{}', '{}', '{}', 'd1'),
                ('a2', 'SANDWICH', 'LOW', 1, 6, '{}', '{}', '{}', '{}', 'd1'),
                ('a3', 'LIQUIDITY_DRAIN', 'CRITICAL', 1, 6, '{}', '{}', '{}', '{}', 'd1')",
    )
    .execute(&pool)
    .await
    .expect("alerts stored");
    assert_eq!(
        summary::alerts_by_kind(&pool).await.expect("read"),
        vec![
            ("LIQUIDITY_DRAIN".to_owned(), 1),
            ("SANDWICH".to_owned(), 2)
        ]
    );
    assert_eq!(
        chainfold_store::decisions::applied_in(&pool, "asked")
            .await
            .expect("read"),
        (Some("0xfeed".to_owned()), Some(7))
    );

    let mut tx = pool.begin().await.expect("begin");
    summary::empty_derived(&mut tx).await.expect("emptied");
    tx.commit().await.expect("commit");

    let left: Vec<String> = sqlx::query_scalar("SELECT id FROM credit_decision ORDER BY id")
        .fetch_all(&pool)
        .await
        .expect("read");
    assert_eq!(left, vec!["asked".to_owned()]);
    assert_eq!(summary::scores(&pool).await.expect("counted").wallets, 0);
    assert!(summary::alerts_by_kind(&pool)
        .await
        .expect("read")
        .is_empty());
}
