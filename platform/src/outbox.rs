//! The transactional outbox: how a role publishes derived records (scores, decisions, alerts)
//! to Kafka exactly when the Postgres rows they describe commit.
//!
//! A role writes [`Output`]s with [`enqueue`] in the transaction of its rows (and of its
//! offsets), one row per call and topic holding that call's outputs in order; after the commit,
//! [`relay`] publishes them: it locks pending rows with
//! `FOR UPDATE SKIP LOCKED` (replicas relay side by side without sending a row twice at once),
//! sends them with the idempotent `acks=all` producer, waits for every acknowledgement and only
//! then deletes them in the same transaction. A crash before the commit loses nothing (the rows
//! are still there, the next relay sends them); a crash after the acknowledgement and before
//! the delete sends them again, so readers de-duplicate by `output_id` (header and payload).
//!
//! A writer whose own rows hold a record's content whole (the scorer's `credit_score`) queues
//! it as [`Payload::Sourced`]: the outbox row then keeps the outputs' keys and ids and the name
//! of their source, not the payloads, and a relay that did not get the payloads from their
//! writer ([`Held`]) rebuilds them from the source's rows ([`Sources`]).
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
    /// The record.
    pub payload: Payload,
}

/// What an [`Output`] publishes.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    /// A JSON value; `outputId` is added to it when it is an object without one.
    Json(serde_json::Value),
    /// JSON text published as it is: the writer has put the output's `outputId` in it (a role
    /// that serializes its record once, straight from its type). Shared, so a writer that also
    /// keeps the text for itself (the scorer's Redis copies) holds it once.
    Text(std::sync::Arc<str>),
    /// JSON text as [`Payload::Text`], whose content the writer also stores in its own rows,
    /// committed in the same transaction: the outbox row names `source` instead of holding the
    /// text, and a relay rebuilds the text from the source's rows ([`Sources`]) when its writer
    /// does not relay it from memory ([`Held`]).
    Sourced {
        text: std::sync::Arc<str>,
        /// The name a relay's [`Sources`] knows the rebuild by.
        source: &'static str,
    },
}

impl Payload {
    /// The source a [`Payload::Sourced`] names.
    fn source(&self) -> Option<&'static str> {
        match self {
            Payload::Sourced { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Rebuilds the payloads of outputs stored in a writer's own rows: for each output id in
/// order, its record's JSON text exactly as the writer queued it, or `None` when the row is
/// gone (a reorg retracted it after its commit; that output is not sent).
pub type Rebuild = for<'a> fn(&'a PgPool, &'a [String]) -> Rebuilding<'a>;

/// What a [`Rebuild`] returns.
pub type Rebuilding<'a> = std::pin::Pin<
    Box<dyn std::future::Future<Output = anyhow::Result<Vec<Option<String>>>> + Send + 'a>,
>;

/// The rebuilds a relay knows, by source name (see [`Payload::Sourced`]). A relay that meets
/// a row whose source it does not know fails with a clear error and leaves the row in place.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    known: Vec<(&'static str, Rebuild)>,
}

impl Sources {
    /// These sources and `name`, rebuilt by `rebuild`.
    pub fn with(mut self, name: &'static str, rebuild: Rebuild) -> Sources {
        self.known.push((name, rebuild));
        self
    }

    fn get(&self, name: &str) -> Option<Rebuild> {
        self.known.iter().find(|(n, _)| *n == name).map(|(_, r)| *r)
    }
}

impl From<serde_json::Value> for Payload {
    fn from(value: serde_json::Value) -> Self {
        Payload::Json(value)
    }
}

/// Queues `outputs` in `tx` (published by [`relay`] after the commit): one row per topic and
/// source, holding those outputs in their order (a [`Payload::Sourced`] row without payloads).
/// Returns which row holds which outputs, for a writer that keeps them to relay from memory
/// ([`Held`]).
///
/// The rows go in one binary `COPY`, built in a buffer of exactly their size: a scoring batch's
/// row holds ~10 MB of payloads, and binding them as three array parameters copied them twice
/// more, each time through a buffer grown by doubling (~10 % of the scorer's CPU in the
/// many-wallets profile, BENCHMARKS.md). Their `seq`s are drawn first (the column's own
/// sequence), so the writer knows its rows.
pub async fn enqueue(
    tx: &mut Transaction<'_, Postgres>,
    outputs: &[Output],
) -> Result<Queued, sqlx::Error> {
    let mut topics: Vec<(&str, Option<&'static str>)> = Vec::new();
    for o in outputs {
        let row = (o.topic.as_str(), o.payload.source());
        if !topics.contains(&row) {
            topics.push(row);
        }
    }
    if topics.is_empty() {
        return Ok(Queued::default());
    }
    let mut seqs = sqlx::query_scalar!(
        r#"SELECT nextval(pg_get_serial_sequence('outbox', 'seq')) AS "seq!"
           FROM generate_series(1, $1::int4)"#,
        topics.len() as i32
    )
    .fetch_all(&mut **tx)
    .await?;
    seqs.sort_unstable();
    let mut queued = Queued::default();
    let rows: Vec<OutboxRow<'_>> = topics
        .into_iter()
        .zip(seqs)
        .map(|((topic, source), seq)| {
            let mine: Vec<usize> = (0..outputs.len())
                .filter(|&i| outputs[i].topic == topic && outputs[i].payload.source() == source)
                .collect();
            let row = OutboxRow {
                seq,
                topic,
                keys: mine.iter().map(|&i| outputs[i].key.as_str()).collect(),
                ids: mine
                    .iter()
                    .map(|&i| outputs[i].output_id.as_str())
                    .collect(),
                payloads: match source {
                    Some(_) => Vec::new(),
                    None => mine.iter().map(|&i| payload_text(&outputs[i])).collect(),
                },
                source,
            };
            queued.rows.push((seq, mine));
            row
        })
        .collect();
    let data = binary_copy(&rows)?;
    let mut copy = tx
        .copy_in_raw(
            "COPY outbox (seq, topic, record_keys, output_ids, payloads, source)
             FROM STDIN (FORMAT binary)",
        )
        .await?;
    // In pieces: each `send` is written to the connection's buffer and flushed, so whole, a
    // batch's ~10 MB grew that buffer to its size first (fresh pages the kernel zeroes).
    for piece in data.chunks(1 << 16) {
        if let Err(err) = copy.send(piece).await {
            let _ = copy.abort("send failed").await;
            return Err(err);
        }
    }
    copy.finish().await?;
    Ok(queued)
}

/// The rows an [`enqueue`] wrote: each row's `seq` and the indexes of the outputs it holds, in
/// their order.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Queued {
    rows: Vec<(i64, Vec<usize>)>,
}

/// Outputs their writer queued and still holds after its commit. [`relay_with`] sends a held
/// row's records from these instead of reading them back from Postgres (or rebuilding them from
/// their source); the row itself is locked, sent and deleted exactly as any other (a row another
/// relay took is not sent again).
#[derive(Debug, Default)]
pub struct Held {
    rows: std::collections::HashMap<i64, Vec<Output>>,
}

impl Held {
    /// The outputs of `queued`'s rows: `outputs` is what was passed to the [`enqueue`] that
    /// returned it.
    pub fn new(queued: Queued, outputs: Vec<Output>) -> Held {
        let mut slots: Vec<Option<Output>> = outputs.into_iter().map(Some).collect();
        let rows = queued
            .rows
            .into_iter()
            .map(|(seq, indexes)| {
                let held = indexes
                    .into_iter()
                    .filter_map(|i| slots.get_mut(i).and_then(Option::take))
                    .collect();
                (seq, held)
            })
            .collect();
        Held { rows }
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

/// One outbox row to copy: a topic and its outputs in order (no payloads when a source keeps
/// them).
struct OutboxRow<'a> {
    seq: i64,
    topic: &'a str,
    keys: Vec<&'a str>,
    ids: Vec<&'a str>,
    payloads: Vec<std::borrow::Cow<'a, str>>,
    source: Option<&'a str>,
}

/// `text`'s type oid, which each element of a binary `text[]` names.
const TEXT_OID: u32 = 25;

/// The rows in `COPY … (FORMAT binary)` form: the signature, then per row its six fields (an
/// `int8`, a `text`, three one-dimensional `text[]` without NULLs and a nullable `text`, each
/// length-prefixed, NULL as length -1), then the trailer. The buffer is sized exactly before
/// anything is written.
fn binary_copy(rows: &[OutboxRow<'_>]) -> Result<Vec<u8>, sqlx::Error> {
    fn array_len<S: AsRef<str>>(items: &[S]) -> usize {
        20 + items.iter().map(|i| 4 + i.as_ref().len()).sum::<usize>()
    }
    fn len32(n: usize) -> Result<i32, sqlx::Error> {
        i32::try_from(n).map_err(|_| {
            sqlx::Error::Protocol(format!("an outbox field of {n} bytes is over 2 GiB"))
        })
    }
    fn array<S: AsRef<str>>(out: &mut Vec<u8>, items: &[S]) -> Result<(), sqlx::Error> {
        out.extend_from_slice(&len32(array_len(items))?.to_be_bytes());
        out.extend_from_slice(&1i32.to_be_bytes()); // dimensions
        out.extend_from_slice(&0i32.to_be_bytes()); // no NULLs
        out.extend_from_slice(&TEXT_OID.to_be_bytes());
        out.extend_from_slice(&len32(items.len())?.to_be_bytes());
        out.extend_from_slice(&1i32.to_be_bytes()); // lower bound
        for item in items {
            out.extend_from_slice(&len32(item.as_ref().len())?.to_be_bytes());
            out.extend_from_slice(item.as_ref().as_bytes());
        }
        Ok(())
    }
    const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";
    let size = SIGNATURE.len()
        + 8
        + rows
            .iter()
            .map(|r| {
                2 + 4
                    + 8
                    + 4
                    + r.topic.len()
                    + 3 * 4
                    + array_len(&r.keys)
                    + array_len(&r.ids)
                    + array_len(&r.payloads)
                    + 4
                    + r.source.map_or(0, str::len)
            })
            .sum::<usize>()
        + 2;
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(SIGNATURE);
    out.extend_from_slice(&0i32.to_be_bytes()); // flags
    out.extend_from_slice(&0i32.to_be_bytes()); // header extension
    for r in rows {
        out.extend_from_slice(&6i16.to_be_bytes());
        out.extend_from_slice(&8i32.to_be_bytes());
        out.extend_from_slice(&r.seq.to_be_bytes());
        out.extend_from_slice(&len32(r.topic.len())?.to_be_bytes());
        out.extend_from_slice(r.topic.as_bytes());
        array(&mut out, &r.keys)?;
        array(&mut out, &r.ids)?;
        array(&mut out, &r.payloads)?;
        match r.source {
            Some(source) => {
                out.extend_from_slice(&len32(source.len())?.to_be_bytes());
                out.extend_from_slice(source.as_bytes());
            }
            None => out.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }
    out.extend_from_slice(&(-1i16).to_be_bytes());
    debug_assert_eq!(out.len(), size, "the buffer was sized exactly");
    Ok(out)
}

/// The record relayed for `output`: a JSON object gets `outputId` among its keys (sorted, as
/// every serialized `Value` object; written in place, the object is not copied), other
/// values go as they are.
fn payload_text(output: &Output) -> std::borrow::Cow<'_, str> {
    use std::borrow::Cow;
    Cow::Owned(match &output.payload {
        Payload::Json(serde_json::Value::Object(fields)) if !fields.contains_key("outputId") => {
            serde_json::to_string(&WithOutputId {
                fields,
                id: &output.output_id,
            })
            .unwrap_or_else(|_| unreachable!("a JSON object and a string serialize"))
        }
        Payload::Json(payload) => payload.to_string(),
        Payload::Text(text) | Payload::Sourced { text, .. } => return Cow::Borrowed(&**text),
    })
}

/// An object's fields with `outputId` merged in key order.
struct WithOutputId<'a> {
    fields: &'a serde_json::Map<String, serde_json::Value>,
    id: &'a str,
}

impl serde::Serialize for WithOutputId<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        const KEY: &str = "outputId";
        let mut map = serializer.serialize_map(Some(self.fields.len() + 1))?;
        let mut pending = true;
        for (key, value) in self.fields {
            if pending && key.as_str() > KEY {
                map.serialize_entry(KEY, self.id)?;
                pending = false;
            }
            map.serialize_entry(key, value)?;
        }
        if pending {
            map.serialize_entry(KEY, self.id)?;
        }
        map.end()
    }
}

/// Publishes pending outputs (rounds of about `limit`, until none is left) whose topic is one
/// of `topics`; returns how many were sent.
pub async fn relay(
    pool: &PgPool,
    producer: &FutureProducer,
    topics: &[String],
    limit: i64,
) -> anyhow::Result<u64> {
    relay_with(
        pool,
        producer,
        topics,
        limit,
        &Held::default(),
        &Sources::default(),
    )
    .await
}

/// [`relay`], sending the rows `held` names from the outputs it holds (the writer's own rows,
/// just committed) rather than from what Postgres stores of them: the same records, without
/// reading their payloads back. Rows of [`Payload::Sourced`] outputs it does not hold are
/// rebuilt by `sources`.
pub async fn relay_with(
    pool: &PgPool,
    producer: &FutureProducer,
    topics: &[String],
    limit: i64,
    held: &Held,
    sources: &Sources,
) -> anyhow::Result<u64> {
    let mut sent = 0;
    loop {
        let Some(round) = relay_round(pool, producer, topics, limit, held, sources).await? else {
            return Ok(sent);
        };
        sent += round;
    }
}

/// One round: picks the oldest pending rows of `topics` (at least one) until they hold `limit`
/// outputs, locks those no other relay holds, sends their outputs in order (a row in `held`
/// from its held outputs, a row naming a source from its rebuilt payloads), waits for every
/// acknowledgement and deletes the rows, in one transaction. Returns how many outputs it sent,
/// or `None` when it took no row (a row whose records were all retracted sends none and is
/// still taken). Only the rows it sends are locked, so a relay beside it takes the rows after
/// them, not rows this one leaves for later.
async fn relay_round(
    pool: &PgPool,
    producer: &FutureProducer,
    topics: &[String],
    limit: i64,
    held: &Held,
    sources: &Sources,
) -> anyhow::Result<Option<u64>> {
    let limit = limit.max(1);
    let mut tx = pool
        .begin()
        .await
        .context("could not start an outbox relay")?;
    // Every row holds at least one output, so `limit` rows are always enough. A held row's
    // count is the outputs held (its `output_ids` is not decompressed to count them).
    let held_seqs: Vec<i64> = held.rows.keys().copied().collect();
    let oldest = sqlx::query!(
        r#"SELECT seq, CASE WHEN seq = ANY($3) THEN NULL ELSE cardinality(output_ids) END
                  AS "outputs?"
           FROM outbox WHERE topic = ANY($1) ORDER BY seq LIMIT $2"#,
        topics,
        limit,
        &held_seqs
    )
    .fetch_all(&mut *tx)
    .await
    .context("could not read the outbox")?;
    let mut picked = Vec::new();
    let mut outputs = 0i64;
    for row in oldest {
        if outputs >= limit {
            break;
        }
        let count = match (row.outputs, held.rows.get(&row.seq)) {
            (Some(n), _) => i64::from(n),
            (None, Some(held)) => held.len() as i64,
            (None, None) => anyhow::bail!("outbox row {} was counted without its outputs", row.seq),
        };
        picked.push(row.seq);
        outputs += count;
    }
    if picked.is_empty() {
        return Ok(None);
    }
    let mine: Vec<i64> = picked
        .iter()
        .copied()
        .filter(|seq| held.rows.contains_key(seq))
        .collect();
    // A held row's arrays are not read (NULL here): its outputs are in `held`.
    let rows = sqlx::query!(
        r#"SELECT seq, topic, source,
                  CASE WHEN seq = ANY($2) THEN NULL ELSE record_keys END AS "record_keys?",
                  CASE WHEN seq = ANY($2) THEN NULL ELSE output_ids END AS "output_ids?",
                  CASE WHEN seq = ANY($2) THEN NULL ELSE payloads END AS "payloads?"
           FROM outbox
           WHERE seq = ANY($1) ORDER BY seq FOR UPDATE SKIP LOCKED"#,
        &picked,
        &mine
    )
    .fetch_all(&mut *tx)
    .await
    .context("could not read the outbox")?;
    if rows.is_empty() {
        // Another relay holds them (or has sent them since): nothing for this one now.
        return Ok(None);
    }
    let seqs: Vec<i64> = rows.iter().map(|r| r.seq).collect();
    // The payloads of rows that name their source, rebuilt from its rows (`None`: retracted).
    let mut rebuilt: std::collections::HashMap<i64, Vec<Option<String>>> =
        std::collections::HashMap::new();
    for row in &rows {
        let (Some(source), Some(ids)) = (&row.source, &row.output_ids) else {
            continue;
        };
        let rebuild = sources.get(source).with_context(|| {
            format!(
                "outbox row {} of {} names its records' source `{source}` instead of holding \
                 them, and this relay cannot rebuild them: relay {} with the role that writes \
                 them",
                row.seq, row.topic, row.topic
            )
        })?;
        let payloads = rebuild(pool, ids)
            .await
            .with_context(|| format!("could not rebuild outbox row {} from `{source}`", row.seq))?;
        anyhow::ensure!(
            payloads.len() == ids.len(),
            "`{source}` rebuilt {} records for outbox row {}, which holds {}",
            payloads.len(),
            row.seq,
            ids.len()
        );
        let gone = payloads.iter().filter(|p| p.is_none()).count();
        if gone > 0 {
            tracing::warn!(
                seq = row.seq,
                source = %source,
                gone,
                "outputs whose rows were retracted since their commit are not sent"
            );
        }
        rebuilt.insert(row.seq, payloads);
    }
    let mut deliveries = Vec::with_capacity(usize::try_from(outputs).unwrap_or_default());
    let queue = |topic: &str, key: &str, output_id: &str, body: &str| {
        let headers = OwnedHeaders::new().insert(Header {
            key: OUTPUT_ID_HEADER,
            value: Some(output_id),
        });
        let record = FutureRecord::to(topic)
            .key(key)
            .payload(body)
            .headers(headers);
        producer
            .send_result(record)
            .map_err(|(e, _)| e)
            .with_context(|| format!("could not queue output {output_id} for {topic}"))
    };
    for row in &rows {
        if let Some(outputs) = held.rows.get(&row.seq) {
            for o in outputs {
                let delivery = queue(&row.topic, &o.key, &o.output_id, &payload_text(o))?;
                deliveries.push((delivery, o.output_id.as_str(), &row.topic));
            }
            continue;
        }
        let (Some(keys), Some(ids), Some(payloads)) =
            (&row.record_keys, &row.output_ids, &row.payloads)
        else {
            anyhow::bail!("outbox row {} was read without its outputs", row.seq);
        };
        if let Some(payloads) = rebuilt.get(&row.seq) {
            for ((key, output_id), body) in keys.iter().zip(ids).zip(payloads) {
                if let Some(body) = body {
                    let delivery = queue(&row.topic, key, output_id, body)?;
                    deliveries.push((delivery, &output_id[..], &row.topic));
                }
            }
            continue;
        }
        for ((key, output_id), body) in keys.iter().zip(ids).zip(payloads) {
            let delivery = queue(&row.topic, key, output_id, body)?;
            deliveries.push((delivery, &output_id[..], &row.topic));
        }
    }
    let sent = deliveries.len() as u64;
    for (delivery, output_id, topic) in deliveries {
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
    sqlx::query!("DELETE FROM outbox WHERE seq = ANY($1)", &seqs)
        .execute(&mut *tx)
        .await
        .context("could not clear relayed outputs")?;
    tx.commit()
        .await
        .context("could not clear relayed outputs")?;
    Ok(Some(sent))
}

/// How long a committed outbox row may wait before a relay with nothing else to do takes it:
/// its writer relays it right after the commit, so a row this old was left behind (the
/// writer's relay failed after the commit, or the writer died).
pub const ABANDONED_AFTER: std::time::Duration = std::time::Duration::from_secs(10);

/// Whether `topics` have a row older than `after` still waiting: one its writer did not relay.
/// A worker with nothing to do checks this before relaying (see [`relay`]), so rows a failed
/// relay left do not wait for the next batch to commit (on a quiet stream it may never come),
/// while rows their writers are relaying are left to them.
pub async fn abandoned(
    pool: &PgPool,
    topics: &[String],
    after: std::time::Duration,
) -> Result<bool, sqlx::Error> {
    let seconds = after.as_secs_f64();
    sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM outbox WHERE topic = ANY($1)
                            AND created_at < now() - make_interval(secs => $2)) AS "abandoned!""#,
        topics,
        seconds
    )
    .fetch_one(pool)
    .await
}

/// Outputs still waiting to be relayed (all topics).
pub async fn pending(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT coalesce(sum(cardinality(output_ids)), 0)::int8 AS "n!" FROM outbox"#
    )
    .fetch_one(pool)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn output(payload: Payload) -> Output {
        Output {
            topic: "t".into(),
            key: "k".into(),
            output_id: "score:1:0xa:e\"1".into(),
            payload,
        }
    }

    #[test]
    fn output_id_is_merged_as_inserting_it_into_the_object_would() {
        for payload in [
            json!({}),
            json!({ "a": 1, "z": [1, 2] }),
            json!({ "chainId": 1, "score": 700, "wallet": "0xa" }),
            json!({ "outputI": 1, "outputIdx": 2, "output": { "nested": true } }),
            json!({ "Zeta": "upper first", "éclair": "non-ascii after", "p": 0.1 }),
        ] {
            let mut expected = payload.clone();
            expected
                .as_object_mut()
                .expect("an object")
                .insert("outputId".into(), "score:1:0xa:e\"1".into());
            assert_eq!(
                payload_text(&output(payload.into())),
                expected.to_string(),
                "byte for byte"
            );
        }
    }

    #[test]
    fn rows_are_copied_in_postgres_binary_form_in_a_buffer_of_their_size() {
        let rows = [
            OutboxRow {
                seq: 7,
                topic: "t",
                keys: vec!["k", ""],
                ids: vec!["a", "é"],
                payloads: vec!["{}".into(), "x\ty".into()],
                source: None,
            },
            OutboxRow {
                seq: 1 << 40,
                topic: "u",
                keys: vec!["k"],
                ids: vec!["b"],
                payloads: Vec::new(),
                source: Some("rows"),
            },
        ];
        let data = binary_copy(&rows).expect("copy");
        assert_eq!(data.capacity(), data.len(), "sized exactly, never grown");
        let mut expected: Vec<u8> = b"PGCOPY\n\xff\r\n\0".to_vec();
        expected.extend([0, 0, 0, 0, 0, 0, 0, 0]);
        let text_array = |items: &[&str]| {
            let mut a = Vec::new();
            let len: usize = 20 + items.iter().map(|i| 4 + i.len()).sum::<usize>();
            a.extend((len as i32).to_be_bytes());
            a.extend(1i32.to_be_bytes());
            a.extend(0i32.to_be_bytes());
            a.extend(25u32.to_be_bytes());
            a.extend((items.len() as i32).to_be_bytes());
            a.extend(1i32.to_be_bytes());
            for i in items {
                a.extend((i.len() as i32).to_be_bytes());
                a.extend(i.as_bytes());
            }
            a
        };
        expected.extend(6i16.to_be_bytes());
        expected.extend(8i32.to_be_bytes());
        expected.extend([0, 0, 0, 0, 0, 0, 0, 7]);
        expected.extend(1i32.to_be_bytes());
        expected.extend(b"t");
        expected.extend(text_array(&["k", ""]));
        expected.extend(text_array(&["a", "é"]));
        expected.extend(text_array(&["{}", "x\ty"]));
        expected.extend((-1i32).to_be_bytes());
        expected.extend(6i16.to_be_bytes());
        expected.extend(8i32.to_be_bytes());
        expected.extend([0, 0, 1, 0, 0, 0, 0, 0]);
        expected.extend(1i32.to_be_bytes());
        expected.extend(b"u");
        expected.extend(text_array(&["k"]));
        expected.extend(text_array(&["b"]));
        expected.extend(text_array(&[]));
        expected.extend(4i32.to_be_bytes());
        expected.extend(b"rows");
        expected.extend((-1i16).to_be_bytes());
        assert_eq!(data, expected);
    }

    #[test]
    fn other_payloads_go_as_they_are() {
        let own = json!({ "outputId": "theirs", "n": 1 });
        assert_eq!(payload_text(&output(own.clone().into())), own.to_string());
        assert_eq!(payload_text(&output(json!([1, 2]).into())), "[1,2]");
        let text: std::sync::Arc<str> = r#"{"b":1,"a":2,"outputId":"x"}"#.into();
        assert_eq!(payload_text(&output(Payload::Text(text.clone()))), &*text);
    }
}
