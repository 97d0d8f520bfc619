//! Outbox rows as a writer whose relay failed after its commit leaves them, for the tests of
//! the idle relay (`outbox::ABANDONED_AFTER`).

use chainfold_platform::outbox::{self, Output};
use sqlx::PgPool;

/// Leaves `output` in the outbox (committed, not relayed), then checks that `idle_step` (one
/// step of a worker that receives nothing; it returns what it received) leaves the row while
/// it is fresh (its writer's to relay) and relays it once it has waited past
/// `ABANDONED_AFTER`.
pub async fn left_behind_goes_when_idle(
    pool: &PgPool,
    output: Output,
    mut idle_step: impl AsyncFnMut() -> u64,
) {
    let mut tx = pool.begin().await.expect("tx");
    outbox::enqueue(&mut tx, &[output]).await.expect("enqueue");
    tx.commit().await.expect("commit");
    let pending = async || outbox::pending(pool).await.expect("pending");
    assert_eq!(pending().await, 1);
    assert_eq!(idle_step().await, 0, "nothing was there to process");
    assert_eq!(pending().await, 1, "a fresh row is left to its writer");
    // Older than a writer's relay ever takes: abandoned.
    sqlx::query("UPDATE outbox SET created_at = now() - interval '1 minute'")
        .execute(pool)
        .await
        .expect("age the row");
    assert_eq!(idle_step().await, 0, "nothing was there to process");
    assert_eq!(pending().await, 0, "the idle worker relayed what was left");
}
