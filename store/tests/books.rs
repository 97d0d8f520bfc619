//! Repository tests of `store::books` on a fresh migrated database per test.

use chainfold_store::books;
use sqlx::PgPool;

async fn key(pool: &PgPool, name: &str) -> i64 {
    sqlx::query_scalar("INSERT INTO api_key (name, key_sha256) VALUES ($1, $1) RETURNING id")
        .bind(name)
        .fetch_one(pool)
        .await
        .expect("key stored")
}

#[sqlx::test(migrator = "chainfold_platform::MIGRATOR")]
async fn a_book_belongs_to_its_key_keeps_each_wallet_once_and_names_are_unique_per_key(
    pool: PgPool,
) {
    let (alice, bob) = (key(&pool, "alice").await, key(&pool, "bob").await);
    let id = books::create(&pool, alice, "watch")
        .await
        .expect("created")
        .expect("new");
    assert_eq!(
        books::create(&pool, alice, "watch").await.expect("ran"),
        None,
        "same name"
    );
    assert!(
        books::create(&pool, bob, "watch")
            .await
            .expect("ran")
            .is_some(),
        "other key"
    );
    books::add(
        &pool,
        id,
        &[1, 1, 137],
        &["0xb".into(), "0xa".into(), "0xa".into()],
    )
    .await
    .expect("added");
    books::add(&pool, id, &[1], &["0xa".into()])
        .await
        .expect("added again");
    assert!(books::owned(&pool, id, alice).await.expect("read"));
    assert!(!books::owned(&pool, id, bob).await.expect("read"));
    assert_eq!(
        books::members(&pool, id, None).await.expect("read"),
        vec!["0xa", "0xb", "0xa"],
        "by chain, then address; once each"
    );
    assert_eq!(
        books::members(&pool, id, Some(137)).await.expect("read"),
        vec!["0xa"]
    );
    let (heads, wallets) = books::of_key(&pool, alice, None).await.expect("read");
    assert_eq!(
        heads.iter().map(|h| h.name.as_str()).collect::<Vec<_>>(),
        vec!["watch"]
    );
    assert_eq!(wallets.len(), 3);
}

#[sqlx::test(migrator = "chainfold_platform::MIGRATOR")]
async fn a_key_is_found_by_its_hash_until_it_is_revoked_once(pool: PgPool) {
    use chainfold_store::keys;
    let id = keys::create(&pool, "lender", "h1", 120)
        .await
        .expect("created");
    assert_eq!(
        keys::find(&pool, "h1").await.expect("read"),
        Some((id, "lender".to_owned(), 120))
    );
    assert_eq!(keys::find(&pool, "h2").await.expect("read"), None);
    assert!(keys::revoke(&pool, id).await.expect("revoked"));
    assert!(
        !keys::revoke(&pool, id).await.expect("ran"),
        "already revoked"
    );
    assert_eq!(keys::find(&pool, "h1").await.expect("read"), None);
}
