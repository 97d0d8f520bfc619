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
    assert_eq!(new, [0, 1, 2]);
    let again = scores::insert(&mut tx, "v1", "sha", &batch)
        .await
        .expect("stored");
    assert!(again.is_empty(), "a replay stores nothing: {again:?}");
    // A small batch (the INSERT path) with a stored score, a score held twice and a new one:
    // the positions of the rows stored, the first of the twice-held one.
    let mixed: NewScores = [
        score("0xa", "e2", "POOR", 2),
        score("0xc", "e4", "FAIR", 4),
        score("0xb", "e5", "GOOD", 5),
        score("0xc", "e4", "GOOD", 4),
    ]
    .into_iter()
    .collect();
    let new = scores::insert(&mut tx, "v1", "sha", &mixed)
        .await
        .expect("stored");
    assert_eq!(new, [1, 2]);
    sqlx::query("DELETE FROM credit_score WHERE event_id IN ('e4', 'e5')")
        .execute(&mut *tx)
        .await
        .expect("delete");
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

/// A score with awkward values: floats that only round-trip exactly, no probability, reasons
/// with tabs, quotes, backslashes and newlines, no block, times with nanoseconds (half a
/// microsecond too) and before 2000 and 1970 (negative from either epoch).
fn awkward(i: usize, event: &str) -> NewScore {
    let mut s = score(&format!("0xw{}", i % 9), event, "FAIR", i as i64);
    let (seconds, nanos) = match i % 5 {
        0 => (1_700_000_000 + i as i64, 0),
        1 => (1_700_000_000, 500 + i as u32 * 1_000),
        2 => (1_700_000_000, 999_999_999),
        3 => (900_000_000, 123_456_789),
        _ => (-86_400 * 365, 1_500),
    };
    s.computed_at = DateTime::from_timestamp(seconds, nanos).expect("a time");
    s.probability_of_liquidation = (i % 3 != 0).then_some(0.1 + 0.2 + i as f64 * 1e-17);
    s.health_factor = match i % 4 {
        0 => None,
        1 => Some(f64::INFINITY),
        2 => Some(1.0 / 3.0 + i as f64),
        _ => Some(123_456_789.123_456_78e10),
    };
    // ~1.5 KB each, so a batch of 100 is sent as several of the COPY's 64 KiB pieces.
    let padding = "é\t".repeat(500);
    s.reasons = serde_json::json!([{ "code": "x\ty", "description": format!("a \"b\" \\ c\nd {padding}"), "impact": -(i as i64) }])
    .to_string();
    s.block_number = (i % 5 != 0).then_some(i as i64);
    s
}

#[derive(Debug, PartialEq, sqlx::FromRow)]
struct Stored {
    chain_id: i64,
    wallet: String,
    score: i32,
    band: String,
    probability_of_liquidation: Option<f64>,
    reasons: serde_json::Value,
    computed_at: Option<chrono::DateTime<chrono::Utc>>,
    kafka_topic: String,
    kafka_partition: i32,
    kafka_offset: i64,
    projector_next_offset: i64,
    block_number: Option<i64>,
    health_factor: Option<f64>,
}

async fn stored(pool: &PgPool, prefix: &str) -> Vec<Stored> {
    sqlx::query_as(
        "SELECT chain_id, wallet, score, band, probability_of_liquidation, reasons, computed_at,
                kafka_topic, kafka_partition, kafka_offset, projector_next_offset, block_number,
                health_factor
         FROM credit_score WHERE event_id LIKE $1 || '%' ORDER BY id",
    )
    .bind(prefix)
    .fetch_all(pool)
    .await
    .expect("read")
}

#[sqlx::test(migrator = "chainfold_platform::MIGRATOR")]
async fn a_large_batch_is_copied_with_the_same_values_the_insert_stores_and_replays_skip(
    pool: PgPool,
) {
    const { assert!(scores::COPY_MIN <= 100) };
    // 100 scores, the 8th twice (the first kept): the COPY path.
    let mut copied: Vec<NewScore> = (0..100).map(|i| awkward(i, &format!("c{i}"))).collect();
    let mut twice = copied[7].clone();
    twice.score = 850;
    copied.insert(50, twice);
    let bytes: usize = copied.iter().map(|s| s.reasons.len()).sum();
    assert!(
        bytes > 2 << 16,
        "{bytes} bytes: the COPY is sent in more than two pieces"
    );
    let batch: NewScores = copied.iter().cloned().collect();
    let mut tx = pool.begin().await.expect("tx");
    let new = scores::insert(&mut tx, "v1", "sha", &batch)
        .await
        .expect("stored");
    tx.commit().await.expect("commit");
    assert_eq!(new.len(), 100, "each score once");
    // Ids 1 to 100 without a gap: one COPY of the de-duplicated rows (a COPY that failed, or an
    // INSERT meeting the twice-held score, would have drawn more ids from the sequence).
    let ids: (i64, i64) = sqlx::query_as("SELECT min(id), max(id) FROM credit_score")
        .fetch_one(&pool)
        .await
        .expect("ids");
    assert_eq!(ids, (1, 100));
    // Every position but the twice-held score's second (at 50).
    assert_eq!(new, (0..101).filter(|&i| i != 50).collect::<Vec<_>>());
    // The same scores in small batches: the INSERT path.
    for chunk in (0..100).collect::<Vec<_>>().chunks(10) {
        let batch: NewScores = chunk
            .iter()
            .map(|&i| awkward(i, &format!("i{i}")))
            .collect();
        let mut tx = pool.begin().await.expect("tx");
        assert_eq!(
            scores::insert(&mut tx, "v1", "sha", &batch)
                .await
                .expect("stored")
                .len(),
            chunk.len()
        );
        tx.commit().await.expect("commit");
    }
    let by_copy = stored(&pool, "c").await;
    let by_insert = stored(&pool, "i").await;
    assert_eq!(by_copy.len(), 100);
    assert_eq!(
        by_copy[7].score, 600,
        "the first of a twice-held score is kept"
    );
    // Bit for bit: the floats are compared as f64 (NaN-free here), infinities included; the
    // times to the microsecond.
    for (i, (c, n)) in by_copy.iter().zip(&by_insert).enumerate() {
        assert!(c == n, "score {i}: copied {c:?}, inserted {n:?}");
    }
    assert!(by_copy
        .iter()
        .any(|r| r.health_factor == Some(f64::INFINITY)));

    // A replay of the large batch stores nothing and says so; a batch half stored stores the
    // other half (the COPY fails on the key and the INSERT takes it).
    let mut half: Vec<NewScore> = (50..100).map(|i| awkward(i, &format!("c{i}"))).collect();
    half.extend((100..150).map(|i| awkward(i, &format!("c{i}"))));
    let mut tx = pool.begin().await.expect("tx");
    let again = scores::insert(&mut tx, "v1", "sha", &batch)
        .await
        .expect("stored");
    assert!(again.is_empty(), "{again:?}");
    let half_new = scores::insert(&mut tx, "v1", "sha", &half.iter().cloned().collect())
        .await
        .expect("stored");
    tx.commit().await.expect("commit");
    let events: Vec<&str> = half_new
        .iter()
        .map(|&i| half[i].event_id.as_str())
        .collect();
    let expected: Vec<String> = (100..150).map(|i| format!("c{i}")).collect();
    assert_eq!(
        events,
        expected.iter().map(String::as_str).collect::<Vec<_>>()
    );
    assert_eq!(stored(&pool, "c").await.len(), 150);
}

#[sqlx::test(migrator = "chainfold_platform::MIGRATOR")]
async fn records_come_back_in_the_order_asked_with_missing_and_repeated_keys_as_none(pool: PgPool) {
    let mut with_reasons = score("0xb", "137:0xbb:1", "GOOD", 2);
    with_reasons.reasons =
        r#"[{"code":"AGE","description":"old \"wallet\"","impact":-1.5}]"#.into();
    let batch = [
        score("0xa", "e1", "FAIR", 1),
        with_reasons,
        score("0xc", "e1", "POOR", 3),
    ];
    let mut tx = pool.begin().await.expect("tx");
    let stored = scores::insert(&mut tx, "v1", "sha", &batch.into_iter().collect())
        .await
        .expect("stored");
    tx.commit().await.expect("commit");
    assert_eq!(stored.len(), 3);
    // Asked out of the stored order, one key missing, one key twice, one wallet with another
    // wallet's event id.
    let asked = [
        ("0xc", "e1"),
        ("0xa", "e9"),
        ("0xb", "137:0xbb:1"),
        ("0xa", "e1"),
        ("0xc", "e1"),
        ("0xd", "e1"),
    ];
    let wallets: Vec<String> = asked.iter().map(|a| a.0.to_owned()).collect();
    let events: Vec<String> = asked.iter().map(|a| a.1.to_owned()).collect();
    let found = scores::records(&pool, &[1; 6], &wallets, &events)
        .await
        .expect("read");
    let keys: Vec<Option<(&str, &str, &str)>> = found
        .iter()
        .map(|r| {
            r.as_ref()
                .map(|r| (r.wallet.as_str(), r.event_id.as_str(), r.band.as_str()))
        })
        .collect();
    assert_eq!(
        keys,
        vec![
            Some(("0xc", "e1", "POOR")),
            None,
            Some(("0xb", "137:0xbb:1", "GOOD")),
            Some(("0xa", "e1", "FAIR")),
            None,
            None,
        ]
    );
    // The reasons as the text stored, byte for byte.
    assert_eq!(
        found[2].as_ref().expect("found").reasons,
        r#"[{"code":"AGE","description":"old \"wallet\"","impact":-1.5}]"#
    );
}
