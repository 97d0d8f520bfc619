//! Whole-pipeline tests live in `tests/`, the benchmarks in `benches/`; this library holds what
//! several of them share.

use chainfold_ingest::replay::Dataset;
use chainfold_testkit::{data_dir, Isolated};

/// Publishes a bundled data set to `iso`'s topics and folds it with a projector of `iso`'s
/// group until it has caught up.
pub async fn replay_and_project(iso: &Isolated, dataset: Dataset) {
    let topics = iso.kafka.topics();
    chainfold_platform::kafka::ensure_topics(&iso.kafka, &topics.all())
        .await
        .expect("topics");
    let producer = chainfold_platform::kafka::producer(&iso.kafka).expect("producer");
    let items = dataset.decode_dir(&data_dir()).expect("bundled data");
    chainfold_ingest::publish::publish_all(&producer, &topics, items, |_, _| {})
        .await
        .expect("publish");
    let mut projector = chainfold_projector::App::build(chainfold_projector::Config::new(
        iso.kafka.clone(),
        iso.postgres.clone(),
        iso.redis.clone(),
        iso.group.clone(),
    ))
    .await
    .expect("projector");
    projector.run_until_caught_up().await.expect("project");
}
