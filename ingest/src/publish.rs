//! Publishing envelopes to Kafka.
//!
//! Encoding is JSON: `chainfold tail` and any Kafka tool show records as they are, the schema is
//! the serde derive in `domain` (one source of truth), and on this machine the broker, not JSON,
//! is the ceiling (see BENCHMARKS.md). Keys are the partition entity as lowercase hex (wallet for
//! lending, pool for AMM) so per-entity order holds.
//!
//! Event records carry no Kafka headers: the envelope already holds schema version, event id and
//! type. Dead letters keep their reason headers.
//!
//! After the events are acknowledged, one seal per chain (`domain::seal`) says below which
//! offsets they all lie, so consumers of many partitions (the risk worker) know when a chain's
//! blocks are whole.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chainfold_domain::seal::{Seal, SealBuilder};
use chainfold_domain::{Envelope, TopicKind};
use chainfold_platform::dlq::{self, DeadLetter};
use chainfold_platform::kafka::Topics;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};

use crate::{Decoded, EventKind};

/// Most sends awaiting their acknowledgement at once; bounds memory, keeps the pipe full.
const IN_FLIGHT: usize = 20_000;

/// A send awaiting its acknowledgement, with what its seal needs: (chain, block, topic) for an
/// event, `None` for a dead letter.
type Sent<'t> = (DeliveryFuture, Option<(u64, Option<u64>, &'t str)>);

/// What a publish run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishSummary {
    pub lending: u64,
    pub amm: u64,
    pub oracle: u64,
    pub transfers: u64,
    pub dead_lettered: u64,
    pub elapsed: Duration,
}

impl PublishSummary {
    pub fn published(&self) -> u64 {
        self.lending + self.amm + self.oracle + self.transfers
    }

    /// Events per second over the whole run.
    pub fn rate(&self) -> f64 {
        self.published() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// An envelope in the compact binary form ([`chainfold_domain::codec`]): the ingest journal's
/// form. What goes to Kafka is [`Topics::payload`], binary unless `--envelope-json`.
pub fn encode(env: &Envelope) -> Vec<u8> {
    chainfold_domain::codec::encode(env)
}

/// Publishes decoded items in order: events to their topic, rejected records to the topic's DLQ
/// with the reason. Waits for every acknowledgement before returning. `progress` is called about
/// once a second with the count so far.
pub async fn publish_all(
    producer: &FutureProducer,
    topics: &Topics,
    items: impl IntoIterator<Item = Decoded>,
    mut progress: impl FnMut(u64, Duration),
) -> anyhow::Result<PublishSummary> {
    let started = Instant::now();
    let mut summary = PublishSummary::default();
    let mut in_flight: VecDeque<Sent<'_>> = VecDeque::with_capacity(IN_FLIGHT);
    let mut seals = SealBuilder::default();
    let mut last_report = Instant::now();
    for item in items {
        match item {
            Ok(env) => {
                let kind = env.event.topic();
                let topic = topics.of(kind);
                let counter = match kind {
                    TopicKind::Lending => &mut summary.lending,
                    TopicKind::Amm => &mut summary.amm,
                    TopicKind::Oracle => &mut summary.oracle,
                    TopicKind::Transfers => &mut summary.transfers,
                };
                let payload = topics.payload(&env);
                let key = format!("{:#x}", env.partition_key());
                let sealed = Some((env.chain_id, env.block.map(|b| b.number), topic));
                let mut record = FutureRecord::to(topic).key(&key).payload(&payload);
                loop {
                    match producer.send_result(record) {
                        Ok(delivery) => {
                            in_flight.push_back((delivery, sealed));
                            break;
                        }
                        Err((
                            KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull),
                            returned,
                        )) => {
                            // The local queue is full: wait for the oldest send, then retry.
                            record = returned;
                            match in_flight.pop_front() {
                                Some(oldest) => acknowledged(oldest, &mut seals).await?,
                                None => tokio::time::sleep(Duration::from_millis(10)).await,
                            }
                        }
                        Err((err, _)) => {
                            return Err(err)
                                .with_context(|| format!("could not enqueue a record for {topic}"))
                        }
                    }
                }
                *counter += 1;
                if in_flight.len() >= IN_FLIGHT {
                    if let Some(oldest) = in_flight.pop_front() {
                        acknowledged(oldest, &mut seals).await?;
                    }
                }
            }
            Err(rejected) => {
                let topic = match rejected.kind {
                    EventKind::Lending => &topics.lending,
                    EventKind::Amm => &topics.amm,
                };
                let delivery = dlq::enqueue(
                    producer,
                    &DeadLetter {
                        topic,
                        stage: "ingest",
                        reason: &rejected.reason,
                        origin: &rejected.origin,
                        key: None,
                        payload: &rejected.raw,
                    },
                )?;
                in_flight.push_back((delivery, None));
                summary.dead_lettered += 1;
            }
        }
        if last_report.elapsed() >= Duration::from_secs(1) {
            progress(summary.published(), started.elapsed());
            last_report = Instant::now();
        }
    }
    for sent in in_flight {
        acknowledged(sent, &mut seals).await?;
    }
    publish_seals(producer, &topics.seals, seals.seals(false)).await?;
    summary.elapsed = started.elapsed();
    Ok(summary)
}

/// Waits for one send and records it for its chain's seal.
async fn acknowledged((delivery, sealed): Sent<'_>, seals: &mut SealBuilder) -> anyhow::Result<()> {
    let (partition, offset) = await_delivery(delivery).await?;
    if let Some((chain, block, topic)) = sealed {
        seals.delivered(chain, block, topic, partition, offset);
    }
    Ok(())
}

/// Sends `seals` (keyed by chain id) and waits for their acknowledgement.
pub async fn publish_seals(
    producer: &FutureProducer,
    topic: &str,
    seals: Vec<Seal>,
) -> anyhow::Result<()> {
    let mut deliveries = Vec::with_capacity(seals.len());
    for seal in &seals {
        let payload = serde_json::to_vec(seal).expect("a seal always serialises");
        let key = seal.chain_id.to_string();
        deliveries.push(
            producer
                .send_result(FutureRecord::to(topic).key(&key).payload(&payload))
                .map_err(|(e, _)| e)
                .context("could not enqueue a seal")?,
        );
    }
    for delivery in deliveries {
        await_delivery(delivery).await?;
    }
    Ok(())
}

/// Waits for a send's acknowledgement: where the record landed.
pub(crate) async fn await_delivery(delivery: DeliveryFuture) -> anyhow::Result<(i32, i64)> {
    match delivery.await {
        Ok(Ok(delivered)) => Ok((delivered.partition, delivered.offset)),
        Ok(Err((err, _))) => Err(err).context("the broker rejected a record"),
        Err(_) => anyhow::bail!("the producer was dropped before a record was acknowledged"),
    }
}
