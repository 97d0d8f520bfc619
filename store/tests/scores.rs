//! Repository tests of `store::scores` on a fresh migrated database per test.

use chainfold_store::scores::{self, NewScore, NewScores};
use chrono::DateTime;
use sqlx::PgPool;

fn score(wallet: &str, event: &str, band: &str, block: i64) -> NewScore {
    NewScore {
        chain_id: 1,
        wallet: wallet.into(),
        score: 600,
        band: band.into(),
        probability_of_liquidation: None,
        reasons: serde_json::json!([]),
        computed_at: DateTime::from_timestamp(1_700_000_000 + block, 0).expect("a time"),
        event_id: event.into(),
        kafka_topic: "t".into(),
        kafka_partition: 0,
        kafka_offset: block,
        projector_next_offset: block + 1,
        block_number: Some(block),
        health_factor: Some(1.5),
    }
}

#[sqlx::test(migrator = "chainfold_platform::MIGRATOR")]
async fn a_replayed_score_is_not_stored_twice_and_a_retraction_removes_only_its_block(
    pool: PgPool,
) {
    let batch: NewScores = [
        score("0xa", "e1", "FAIR", 1),
        score("0xa", "e2", "POOR", 2),
        score("0xb", "e3", "GOOD", 3),
    ]
    .into_iter()
    .collect();
    let mut tx = pool.begin().await.expect("tx");
    let new = scores::insert(&mut tx, "v1", "sha", &batch)
        .await
        .expect("stored");
    assert_eq!(new.len(), 3);
    let again = scores::insert(&mut tx, "v1", "sha", &batch)
        .await
        .expect("stored");
    assert!(again.is_empty(), "a replay stores nothing: {again:?}");
    tx.commit().await.expect("commit");

    let bands = scores::latest_bands(
        &pool,
        &[1, 1, 1],
        &["0xa".into(), "0xb".into(), "0xc".into()],
    )
    .await
    .expect("read");
    assert_eq!(
        bands,
        vec![
            (1, "0xa".to_owned(), "POOR".to_owned()),
            (1, "0xb".to_owned(), "GOOD".to_owned())
        ]
    );

    let mut tx = pool.begin().await.expect("tx");
    // e2 retracted at another block (its canonical copy): nothing goes; at its block: it goes.
    let none = scores::retract(&mut tx, &[1], &["e2".into()], &[9])
        .await
        .expect("deleted");
    assert!(none.is_empty());
    let gone = scores::retract(&mut tx, &[1], &["e2".into()], &[2])
        .await
        .expect("deleted");
    assert_eq!(gone, vec![(1, "0xa".to_owned())]);
    tx.commit().await.expect("commit");
    let bands = scores::latest_bands(&pool, &[1], &["0xa".into()])
        .await
        .expect("read");
    assert_eq!(
        bands,
        vec![(1, "0xa".to_owned(), "FAIR".to_owned())],
        "the earlier score is latest again"
    );
}
