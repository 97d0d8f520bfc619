//! The transactional outbox: how a role publishes derived records (scores, decisions, alerts)
//! to Kafka exactly when the Postgres rows they describe commit.
//!
//! A role writes [`Output`]s with [`enqueue`] in the transaction of its rows (and of its
//! offsets); after the commit, [`relay`] publishes them: it locks pending rows with
//! `FOR UPDATE SKIP LOCKED` (replicas relay side by side without sending a row twice at once),
//! sends them with the idempotent `acks=all` producer, waits for every acknowledgement and only
//! then deletes them in the same transaction. A crash before the commit loses nothing (the rows
//! are still there, the next relay sends them); a crash after the acknowledgement and before
//! the delete sends them again, so readers de-duplicate by `output_id` (header and payload).
//!
//! Why an outbox and not Kafka transactions: the record of truth of a score is its Postgres
//! row, which no Kafka transaction can include; the outbox makes "row committed" and "record
//! will be published" one atomic fact, with the Postgres commit as the only commit point.

use std::time::Duration;

use anyhow::Context as _;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::{PgPool, Postgres, Transaction};

/// Header carrying an output's id on every relayed record.
pub const OUTPUT_ID_HEADER: &str = "output_id";

/// One derived record to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    /// The full topic name (with the deployment's prefix).
    pub topic: String,
    /// The record key (the entity whose order matters: a wallet, a chain).
    pub key: String,
    /// Deterministic id: the same output computed again has the same id.
    pub output_id: String,
    /// The record; `outputId` is added to it when it is an object.
    pub payload: serde_json::Value,
}

/// Queues `outputs` in `tx` (published by [`relay`] after the commit).
pub async fn enqueue(
    tx: &mut Transaction<'_, Postgres>,
    outputs: &[Output],
) -> Result<(), sqlx::Error> {
    if outputs.is_empty() {
        return Ok(());
    }
    let topics: Vec<&str> = outputs.iter().map(|o| o.topic.as_str()).collect();
    let keys: Vec<&str> = outputs.iter().map(|o| o.key.as_str()).collect();
    let ids: Vec<&str> = outputs.iter().map(|o| o.output_id.as_str()).collect();
    let payloads: Vec<serde_json::Value> = outputs
        .iter()
        .map(|o| {
            let mut payload = o.payload.clone();
            if let Some(object) = payload.as_object_mut() {
                object.insert("outputId".into(), o.output_id.clone().into());
            }
            payload
        })
        .collect();
    sqlx::query!(
        "INSERT INTO outbox (topic, record_key, output_id, payload)
         SELECT t, k, i, p
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::jsonb[]) WITH ORDINALITY AS u(t, k, i, p, n)
         ORDER BY n",
        &topics as &[&str],
        &keys as &[&str],
        &ids as &[&str],
        &payloads
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Publishes pending outputs (up to `limit` per round, until none is left) whose topic is one
/// of `topics`; returns how many were sent.
pub async fn relay(
    pool: &PgPool,
    producer: &FutureProducer,
    topics: &[String],
    limit: i64,
) -> anyhow::Result<u64> {
    let mut sent = 0;
    loop {
        let round = relay_round(pool, producer, topics, limit).await?;
        sent += round;
        if round < limit.max(1) as u64 {
            return Ok(sent);
        }
    }
}

async fn relay_round(
    pool: &PgPool,
    producer: &FutureProducer,
    topics: &[String],
    limit: i64,
) -> anyhow::Result<u64> {
    let mut tx = pool
        .begin()
        .await
        .context("could not start an outbox relay")?;
    let rows: Vec<(i64, String, String, String, serde_json::Value)> = sqlx::query!(
        "SELECT seq, topic, record_key, output_id, payload FROM outbox
         WHERE topic = ANY($1) ORDER BY seq LIMIT $2 FOR UPDATE SKIP LOCKED",
        topics,
        limit
    )
    .fetch_all(&mut *tx)
    .await
    .context("could not read the outbox")?
    .into_iter()
    .map(|r| (r.seq, r.topic, r.record_key, r.output_id, r.payload))
    .collect();
    if rows.is_empty() {
        return Ok(0);
    }
    let mut deliveries = Vec::with_capacity(rows.len());
    for (_, topic, key, output_id, payload) in &rows {
        let body = payload.to_string();
        let headers = OwnedHeaders::new().insert(Header {
            key: OUTPUT_ID_HEADER,
            value: Some(output_id.as_str()),
        });
        let record = FutureRecord::to(topic)
            .key(key.as_str())
            .payload(&body)
            .headers(headers);
        deliveries.push(
            producer
                .send_result(record)
                .map_err(|(e, _)| e)
                .with_context(|| format!("could not queue output {output_id} for {topic}"))?,
        );
    }
    for (delivery, (_, topic, _, output_id, _)) in deliveries.into_iter().zip(&rows) {
        match tokio::time::timeout(Duration::from_secs(60), delivery).await {
            Ok(Ok(Ok(_))) => {}
            Ok(Ok(Err((err, _)))) => {
                return Err(err)
                    .with_context(|| format!("the broker refused output {output_id} for {topic}"))
            }
            Ok(Err(_)) => {
                anyhow::bail!("the producer was dropped before output {output_id} was acknowledged")
            }
            Err(_) => {
                anyhow::bail!("output {output_id} for {topic} was not acknowledged within 60 s")
            }
        }
    }
    crate::failpoint::hit("outbox.after_ack");
    let seqs: Vec<i64> = rows.iter().map(|r| r.0).collect();
    sqlx::query!("DELETE FROM outbox WHERE seq = ANY($1)", &seqs)
        .execute(&mut *tx)
        .await
        .context("could not clear relayed outputs")?;
    tx.commit()
        .await
        .context("could not clear relayed outputs")?;
    Ok(rows.len() as u64)
}

/// Outputs still waiting to be relayed (all topics).
pub async fn pending(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(r#"SELECT count(*) AS "n!" FROM outbox"#)
        .fetch_one(pool)
        .await
}
