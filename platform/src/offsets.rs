//! Kafka offsets stored in Postgres as fenced claims (migration `..._replicas.sql`).
//!
//! A consumer that is assigned partitions [`claim`]s them: each claim raises the partition's
//! `epoch`. A batch's offsets are then written with [`advance`] inside the transaction of the
//! rows they cover, as a compare-and-set on (epoch, offset at the batch's start). A member that
//! lost the partition to a newer claim, or whose offset is not what Postgres holds (a commit
//! lost in a crash, a rebuild), gets [`Fenced`] and its transaction rolls back: nothing it
//! folded is stored, so nothing is doubled, and nothing acknowledged is skipped.

use sqlx::{PgPool, Postgres, Transaction};

/// One partition's claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    /// The next offset to read (0 for a partition never folded).
    pub next_offset: i64,
    pub epoch: i64,
}

/// One partition's advance within a batch: from `from` (the offset stored before) to `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advance {
    pub topic: String,
    pub partition: i32,
    pub epoch: i64,
    pub from: i64,
    pub to: i64,
}

/// The compare-and-set of some partitions' offsets failed: another member claimed them since
/// (`epoch` moved) or the stored offset is not where this member's batch began.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("offsets of {} were claimed by another member or moved since this batch began", .partitions.iter().map(|(t, p)| format!("{t}/{p}")).collect::<Vec<_>>().join(", "))]
pub struct Fenced {
    pub partitions: Vec<(String, i32)>,
}

/// Errors of the offset store.
#[derive(Debug, thiserror::Error)]
pub enum OffsetError {
    #[error(transparent)]
    Fenced(#[from] Fenced),
    #[error("could not read or write consumer offsets")]
    Postgres(#[from] sqlx::Error),
}

/// Claims `partitions` for `owner` in `group`: raises each one's epoch (creating the row at
/// offset 0 for a partition never seen) and returns the claims.
pub async fn claim(
    pool: &PgPool,
    group: &str,
    owner: &str,
    partitions: &[(String, i32)],
) -> Result<Vec<((String, i32), Claim)>, sqlx::Error> {
    if partitions.is_empty() {
        return Ok(Vec::new());
    }
    let topics: Vec<&str> = partitions.iter().map(|(t, _)| t.as_str()).collect();
    let ids: Vec<i32> = partitions.iter().map(|(_, p)| *p).collect();
    let rows = sqlx::query!(
        r#"
        INSERT INTO consumer_offset AS c (group_id, topic, partition_id, next_offset, epoch, owner)
        SELECT $1, t, p, 0, 1, $2 FROM UNNEST($3::text[], $4::int4[]) AS u(t, p)
        ON CONFLICT (group_id, topic, partition_id) DO UPDATE SET
            epoch = c.epoch + 1, owner = EXCLUDED.owner, updated_at = now()
        RETURNING topic, partition_id, next_offset, epoch
        "#,
        group,
        owner,
        &topics as &[&str],
        &ids
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            (
                (r.topic, r.partition_id),
                Claim {
                    next_offset: r.next_offset,
                    epoch: r.epoch,
                },
            )
        })
        .collect())
}

/// Writes `advances` in `tx` as one compare-and-set; [`Fenced`] names the partitions whose
/// epoch or starting offset did not match (the caller must roll back).
pub async fn advance(
    tx: &mut Transaction<'_, Postgres>,
    group: &str,
    advances: &[Advance],
) -> Result<(), OffsetError> {
    if advances.is_empty() {
        return Ok(());
    }
    let topics: Vec<&str> = advances.iter().map(|a| a.topic.as_str()).collect();
    let partitions: Vec<i32> = advances.iter().map(|a| a.partition).collect();
    let epochs: Vec<i64> = advances.iter().map(|a| a.epoch).collect();
    let from: Vec<i64> = advances.iter().map(|a| a.from).collect();
    let to: Vec<i64> = advances.iter().map(|a| a.to).collect();
    let moved: Vec<(String, i32)> = sqlx::query!(
        r#"
        UPDATE consumer_offset AS c SET next_offset = u.next, updated_at = now()
        FROM UNNEST($2::text[], $3::int4[], $4::int8[], $5::int8[], $6::int8[])
             AS u(topic, partition_id, epoch, prev, next)
        WHERE c.group_id = $1 AND c.topic = u.topic AND c.partition_id = u.partition_id
          AND c.epoch = u.epoch AND c.next_offset = u.prev
        RETURNING c.topic, c.partition_id
        "#,
        group,
        &topics as &[&str],
        &partitions,
        &epochs,
        &from,
        &to
    )
    .fetch_all(&mut **tx)
    .await?
    .into_iter()
    .map(|r| (r.topic, r.partition_id))
    .collect();
    if moved.len() == advances.len() {
        return Ok(());
    }
    let partitions = advances
        .iter()
        .map(|a| (a.topic.clone(), a.partition))
        .filter(|key| !moved.contains(key))
        .collect();
    Err(Fenced { partitions }.into())
}

/// The stored row of one partition: (next offset, epoch, owner).
pub async fn stored(
    pool: &PgPool,
    group: &str,
    topic: &str,
    partition: i32,
) -> Result<Option<(i64, i64, Option<String>)>, sqlx::Error> {
    Ok(sqlx::query!(
        "SELECT next_offset, epoch, owner FROM consumer_offset
         WHERE group_id = $1 AND topic = $2 AND partition_id = $3",
        group,
        topic,
        partition
    )
    .fetch_optional(pool)
    .await?
    .map(|r| (r.next_offset, r.epoch, r.owner)))
}

/// Every stored next offset of `group`: ((topic, partition), next offset).
pub async fn load(pool: &PgPool, group: &str) -> Result<Vec<((String, i32), i64)>, sqlx::Error> {
    let rows = sqlx::query!(
        "SELECT topic, partition_id, next_offset FROM consumer_offset WHERE group_id = $1",
        group
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| ((r.topic, r.partition_id), r.next_offset))
        .collect())
}

/// Forgets `group`'s offsets (in `tx`), so its next claims start from the log's beginning.
/// Members still running are fenced by their next commit (the rows are gone).
pub async fn forget(tx: &mut Transaction<'_, Postgres>, group: &str) -> Result<u64, sqlx::Error> {
    Ok(
        sqlx::query!("DELETE FROM consumer_offset WHERE group_id = $1", group)
            .execute(&mut **tx)
            .await?
            .rows_affected(),
    )
}
