//! Dead letters: a record that cannot be decoded or folded goes to `<topic>.dlq` with its reason,
//! the stage that rejected it and where it came from, and processing goes on. Sends are awaited
//! (the broker acknowledged the dead letter) before the original's offset is committed, so a
//! crash in between replays the original rather than losing it.

use anyhow::Context as _;
use chainfold_domain::topics::{self, headers};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};

/// One record to dead-letter.
#[derive(Debug, Clone)]
pub struct DeadLetter<'a> {
    /// The topic the record belonged (or would have belonged) to; the DLQ is `<topic>.dlq`.
    pub topic: &'a str,
    /// Stage that rejected it: `ingest` or `projector`.
    pub stage: &'a str,
    /// Human-readable reason, e.g. `could not decode record 17: bad address "0xzz"`.
    pub reason: &'a str,
    /// Where it came from: `topic/partition/offset` or `file:row`.
    pub origin: &'a str,
    pub key: Option<&'a [u8]>,
    /// The raw record, unchanged.
    pub payload: &'a [u8],
}

/// Sends `letter` to its DLQ topic and waits for the broker's acknowledgement.
pub async fn send(producer: &FutureProducer, letter: &DeadLetter<'_>) -> anyhow::Result<()> {
    let dlq_topic = topics::dlq(letter.topic);
    let delivery = enqueue(producer, letter)?;
    match delivery.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((err, _))) => {
            Err(err).with_context(|| format!("could not dead-letter a record to {dlq_topic}"))
        }
        Err(_) => anyhow::bail!(
            "the producer was dropped before a dead letter to {dlq_topic} was acknowledged"
        ),
    }
}

/// Queues `letter` for its DLQ topic without waiting; the caller awaits the returned delivery
/// (a replay awaits all its deliveries at the end, so a dead letter does not drain the pipe).
pub fn enqueue(
    producer: &FutureProducer,
    letter: &DeadLetter<'_>,
) -> anyhow::Result<DeliveryFuture> {
    let dlq_topic = topics::dlq(letter.topic);
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: headers::DLQ_REASON,
            value: Some(letter.reason),
        })
        .insert(Header {
            key: headers::DLQ_STAGE,
            value: Some(letter.stage),
        })
        .insert(Header {
            key: headers::DLQ_ORIGIN,
            value: Some(letter.origin),
        });
    let mut record = FutureRecord::<[u8], [u8]>::to(&dlq_topic)
        .payload(letter.payload)
        .headers(headers);
    if let Some(key) = letter.key {
        record = record.key(key);
    }
    let delivery = producer
        .send_result(record)
        .map_err(|(err, _)| err)
        .with_context(|| format!("could not queue a dead letter for {dlq_topic}"))?;
    tracing::warn!(
        topic = letter.topic,
        stage = letter.stage,
        reason = letter.reason,
        origin = letter.origin,
        "record dead-lettered"
    );
    Ok(delivery)
}
