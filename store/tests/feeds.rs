//! Repository tests of `store::feeds` (and the API's point reads of scores, totals and heads)
//! on a fresh migrated database per test.

use chainfold_store::scores::{self, NewScore, NewScores};
use chainfold_store::{blocks, feeds};
use chrono::DateTime;
use sqlx::PgPool;

fn score(wallet: &str, event: &str, value: i32, block: i64) -> NewScore {
    NewScore {
        chain_id: 1,
        wallet: wallet.into(),
        score: value,
        band: "FAIR".into(),
        probability_of_liquidation: None,
        reasons: "[]".to_owned(),
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
async fn the_score_feed_gives_rows_and_retractions_in_sequence_and_latest_reads_agree(
    pool: PgPool,
) {
    assert_eq!(feeds::positions(&pool).await.expect("positions"), [0; 4]);
    assert_eq!(scores::last_id(&pool).await.expect("last"), 0);
    let batch: NewScores = [
        score("0xa", "e1", 610, 1),
        score("0xb", "e2", 620, 2),
        score("0xa", "e3", 630, 3),
    ]
    .into_iter()
    .collect();
    let mut tx = pool.begin().await.expect("tx");
    scores::insert(&mut tx, "v1", "sha", &batch)
        .await
        .expect("stored");
    tx.commit().await.expect("commit");
    let last = scores::last_id(&pool).await.expect("last");

    // Filtered by wallet, from the start.
    let a: Vec<i32> = feeds::scores(&pool, 0, None, Some(1), Some(&["0xa".into()]), 10)
        .await
        .expect("feed")
        .into_iter()
        .map(|s| s.row.score)
        .collect();
    assert_eq!(a, vec![610, 630]);
    // The latest of each wallet, at the latest id and before it.
    let latest = scores::latest_of(
        &pool,
        &[1, 1, 1],
        &["0xa".into(), "0xb".into(), "0xc".into()],
    )
    .await
    .expect("latest");
    let mut got: Vec<(String, i32)> = latest.into_iter().map(|r| (r.wallet, r.score)).collect();
    got.sort();
    assert_eq!(got, vec![("0xa".into(), 630), ("0xb".into(), 620)]);
    let before: Vec<(String, i32)> = scores::latest_at(&pool, last - 1, Some(1), None)
        .await
        .expect("latest at")
        .into_iter()
        .map(|r| (r.wallet, r.score))
        .collect();
    assert_eq!(before, vec![("0xa".into(), 610), ("0xb".into(), 620)]);

    // A retraction comes after the rows, carrying the deleted row's last state.
    let mut tx = pool.begin().await.expect("tx");
    scores::retract(&mut tx, &[1], &["e3".into()], &[3])
        .await
        .expect("retracted");
    tx.commit().await.expect("commit");
    let feed = feeds::scores(&pool, last, None, None, None, 10)
        .await
        .expect("feed");
    assert_eq!(
        feed.len(),
        1,
        "only the retraction is after {last}: {feed:?}"
    );
    assert!(feed[0].retracted);
    assert_eq!(
        (feed[0].row.wallet.as_str(), feed[0].row.score),
        ("0xa", 630)
    );
    assert_eq!(feed[0].retracts, Some(last));
    let [scores_at, ..] = feeds::positions(&pool).await.expect("positions");
    assert_eq!(
        scores_at, feed[0].row.id,
        "the feed stands at the retraction"
    );
    // `upto` bounds the stretch, `limit` the page.
    assert_eq!(
        feeds::scores(&pool, 0, Some(last - 1), None, None, 10)
            .await
            .expect("feed")
            .len(),
        2
    );
    assert_eq!(
        feeds::scores(&pool, 0, None, None, None, 1)
            .await
            .expect("feed")
            .len(),
        1
    );
}

#[sqlx::test(migrator = "chainfold_platform::MIGRATOR")]
async fn heads_and_block_hashes_are_read_per_chain(pool: PgPool) {
    assert!(blocks::heads(&pool).await.expect("heads").is_empty());
    assert_eq!(blocks::head_of(&pool, 1).await.expect("head"), None);
    sqlx::query(
        "INSERT INTO chain_head (chain_id, name, number, hash, parent_hash, confirmations)
         VALUES (1, 'one', 100, '0xh100', '0xh99', 12), (5, 'five', 7, '0xf7', '0xf6', 2)",
    )
    .execute(&pool)
    .await
    .expect("heads");
    let heads = blocks::heads(&pool).await.expect("heads");
    assert_eq!(
        heads
            .iter()
            .map(|h| (h.chain_id, h.number, h.confirmations))
            .collect::<Vec<_>>(),
        vec![(1, 100, 12), (5, 7, 2)]
    );
    assert_eq!(blocks::head_of(&pool, 5).await.expect("head"), Some((7, 2)));
    assert_eq!(
        blocks::number_of_hash(&pool, 1, "0xunknown")
            .await
            .expect("lookup"),
        None,
        "a hash never indexed has no number"
    );
    assert_eq!(
        blocks::number_of_hash(&pool, 1, "0xh100")
            .await
            .expect("lookup"),
        Some(100)
    );
    assert_eq!(
        blocks::number_of_hash(&pool, 5, "0xh100")
            .await
            .expect("lookup"),
        None,
        "hashes are per chain"
    );
}
