//! Repository tests of `store::seals` and `store::attestations` on a fresh migrated database
//! per test.

use chainfold_domain::credit::Attestation;
use chainfold_store::{attestations, seals};
use chrono::DateTime;
use sqlx::PgPool;

async fn seal(pool: &PgPool, offset: i64, blocks: (i64, i64), through: serde_json::Value) {
    sqlx::query(
        "INSERT INTO chain_seal (kafka_topic, kafka_partition, kafka_offset, chain_id, first_block,
                                 last_block, through, retracted)
         VALUES ('seals', 0, $1, 1, $2, $3, $4, false)",
    )
    .bind(offset)
    .bind(blocks.0)
    .bind(blocks.1)
    .bind(through)
    .execute(pool)
    .await
    .expect("seal stored");
}

fn bound(partition: i32, next: i64) -> serde_json::Value {
    serde_json::json!({"topic": "lending", "partition": partition, "next_offset": next})
}

#[sqlx::test(migrator = "chainfold_platform::MIGRATOR")]
async fn a_block_or_record_is_whole_once_a_seal_covers_it_with_every_earlier_bound(pool: PgPool) {
    seal(
        &pool,
        0,
        (1, 10),
        serde_json::json!([bound(0, 5), bound(1, 3)]),
    )
    .await;
    seal(&pool, 1, (11, 20), serde_json::json!([bound(0, 9)])).await;
    assert!(seals::covers_block(&pool, 1, 20).await.expect("read"));
    assert!(!seals::covers_block(&pool, 1, 21).await.expect("read"));
    let mut to_15 = seals::bounds_to_block(&pool, 1, 15).await.expect("read");
    to_15.sort();
    assert_eq!(
        to_15,
        vec![("lending".into(), 0, 9), ("lending".into(), 1, 3)]
    );

    // Record 6 of partition 0 is first held by the second seal; its bound includes the first's.
    let first = seals::first_holding(&pool, 1, "lending", 0, 6)
        .await
        .expect("read");
    assert_eq!(first, Some(("seals".to_owned(), 0, 1)));
    let mut through = seals::bounds_through_seal(&pool, 1, &first.expect("a seal"))
        .await
        .expect("read");
    through.sort();
    assert_eq!(
        through,
        vec![("lending".into(), 0, 9), ("lending".into(), 1, 3)]
    );
    assert_eq!(
        seals::first_holding(&pool, 1, "lending", 0, 9)
            .await
            .expect("read"),
        None
    );
}

#[sqlx::test(migrator = "chainfold_platform::MIGRATOR")]
async fn an_attestation_is_stored_once_and_read_back_per_wallet(pool: PgPool) {
    let wallet = "0x00000000000000000000000000000000000000aa";
    let a = Attestation {
        schema_version: chainfold_domain::SCHEMA_VERSION,
        chain_id: 1,
        wallet: wallet.parse().expect("address"),
        kind: "kyc".into(),
        value: 0.5,
        issuer: "0xissuer".into(),
        issued_at: DateTime::from_timestamp(1_700_000_000, 0).expect("a time"),
        expires_at: DateTime::from_timestamp(1_800_000_000, 0).expect("a time"),
        signature: Some("0xsig".into()),
    };
    let mut tx = pool.begin().await.expect("tx");
    attestations::insert(&mut tx, &a, 0, 7)
        .await
        .expect("stored");
    attestations::insert(&mut tx, &a, 0, 8)
        .await
        .expect("stored again");
    tx.commit().await.expect("commit");
    let read = attestations::of_wallets(&pool, &[1, 1], &[wallet.into(), "0xbb".into()])
        .await
        .expect("read");
    assert_eq!(read.len(), 1, "the wallet without attestations is absent");
    assert_eq!(
        read[&(1, wallet.to_owned())],
        vec![a],
        "stored once, read back equal"
    );
}
