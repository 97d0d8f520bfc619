//! Repository tests of `store::latest`'s Postgres reads on a fresh migrated database per test.

use chainfold_store::latest::{self, Kind, SCORE_COLUMNS};
use sqlx::PgPool;

async fn score(pool: &PgPool, wallet: &str, score: i32) -> i64 {
    sqlx::query_scalar(
        "INSERT INTO credit_score (chain_id, wallet, score, band, probability_of_liquidation, reasons,
                                   model_version, model_sha256, event_id, kafka_topic, kafka_partition,
                                   kafka_offset, projector_next_offset)
         VALUES (1, $1, $2, 'FAIR', 0.1, '[]', 'v1', 'sha', 'e' || $2, 't', 0, 0, 0) RETURNING id",
    )
    .bind(wallet)
    .bind(score)
    .fetch_one(pool)
    .await
    .expect("score stored")
}

#[sqlx::test(migrator = "chainfold_platform::MIGRATOR")]
async fn a_score_entry_is_the_newest_score_with_the_served_columns_and_its_id_as_version(
    pool: PgPool,
) {
    score(&pool, "0xaa", 500).await;
    let newest = score(&pool, "0xaa", 640).await;
    let wallets = [(1, "0xaa".to_owned()), (1, "0xbb".to_owned())];
    let entries = latest::read_postgres(&pool, Kind::Score, &wallets, false)
        .await
        .expect("read");
    assert_eq!(entries.len(), 2);
    assert_eq!(
        (entries[0].wallet.as_str(), entries[0].version),
        ("0xaa", newest)
    );
    let row: serde_json::Value =
        serde_json::from_str(entries[0].row.as_deref().expect("a score")).expect("json");
    assert_eq!(row["score"], 640);
    let mut keys: Vec<&str> = row
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    let mut columns: Vec<&str> = SCORE_COLUMNS.split(", ").collect();
    keys.sort_unstable();
    columns.sort_unstable();
    assert_eq!(
        keys, columns,
        "the entry holds exactly the columns the API serves"
    );
    // A wallet without scores: known to have nothing, version 0 (never stored in Redis).
    assert_eq!((entries[1].version, entries[1].row.as_deref()), (0, None));
}

#[sqlx::test(migrator = "chainfold_platform::MIGRATOR")]
async fn an_empty_summary_gets_a_fresh_version_only_for_a_writer(pool: PgPool) {
    let wallets = [(1, "0xcc".to_owned())];
    for kind in [Kind::Wallet, Kind::Pool] {
        let read = latest::read_postgres(&pool, kind, &wallets, false)
            .await
            .expect("read");
        assert_eq!(
            (read[0].version, read[0].row.as_deref()),
            (0, None),
            "{kind:?}"
        );
        let first = latest::read_postgres(&pool, kind, &wallets, true)
            .await
            .expect("read");
        let second = latest::read_postgres(&pool, kind, &wallets, true)
            .await
            .expect("read");
        assert!(
            first[0].version > 0 && second[0].version > first[0].version,
            "{kind:?}"
        );
        assert_eq!(first[0].row, None);
    }
}
