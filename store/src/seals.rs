//! Chain seals (`chain_seal`): the ingest's statements that a chain's blocks up to a height
//! are all in the log, each with the bound (per topic and partition, the next offset) that
//! holds them. Consumers wait for a seal before they read a stretch as whole.

use sqlx::PgPool;

/// (topic, partition, next offset): a bound of the log.
pub type Bound = (String, i32, i64);

/// Whether a folded seal of the chain covers `block`.
pub async fn covers_block(pool: &PgPool, chain_id: i64, block: i64) -> sqlx::Result<bool> {
    sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM chain_seal WHERE chain_id = $1 AND last_block >= $2) AS "e!""#,
        chain_id,
        block
    )
    .fetch_one(pool)
    .await
}

/// The bounds of every folded seal of the chain that starts at or before `block`, the highest
/// per (topic, partition).
pub async fn bounds_to_block(pool: &PgPool, chain_id: i64, block: i64) -> sqlx::Result<Vec<Bound>> {
    let rows = sqlx::query!(
        r#"SELECT t->>'topic' AS "topic!", (t->>'partition')::int4 AS "partition!",
                  max((t->>'next_offset')::int8) AS "next!"
           FROM chain_seal s CROSS JOIN LATERAL jsonb_array_elements(s.through) t
           WHERE s.chain_id = $1 AND s.first_block <= $2
           GROUP BY 1, 2"#,
        chain_id,
        block
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.topic, r.partition, r.next))
        .collect())
}

/// Where the first folded seal of the chain that holds record `offset` of `topic`/`partition`
/// is in the log (its own topic, partition and offset).
pub async fn first_holding(
    pool: &PgPool,
    chain_id: i64,
    topic: &str,
    partition: i32,
    offset: i64,
) -> sqlx::Result<Option<Bound>> {
    let row = sqlx::query!(
        "SELECT kafka_topic, kafka_partition, kafka_offset FROM chain_seal s
         WHERE chain_id = $1 AND EXISTS (
             SELECT 1 FROM jsonb_array_elements(s.through) t
             WHERE t->>'topic' = $2 AND (t->>'partition')::int4 = $3
               AND (t->>'next_offset')::int8 > $4)
         ORDER BY kafka_offset LIMIT 1",
        chain_id,
        topic,
        partition,
        offset
    )
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|r| (r.kafka_topic, r.kafka_partition, r.kafka_offset)))
}

/// The bounds of the seal at `seal` (topic, partition, offset) and every seal before it in its
/// partition, the highest per (topic, partition).
pub async fn bounds_through_seal(
    pool: &PgPool,
    chain_id: i64,
    seal: &Bound,
) -> sqlx::Result<Vec<Bound>> {
    let rows = sqlx::query!(
        r#"SELECT t->>'topic' AS "topic!", (t->>'partition')::int4 AS "partition!",
                  max((t->>'next_offset')::int8) AS "next!"
           FROM chain_seal s CROSS JOIN LATERAL jsonb_array_elements(s.through) t
           WHERE s.chain_id = $1 AND s.kafka_topic = $2 AND s.kafka_partition = $3
             AND s.kafka_offset <= $4
           GROUP BY 1, 2"#,
        chain_id,
        seal.0,
        seal.1,
        seal.2
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.topic, r.partition, r.next))
        .collect())
}
