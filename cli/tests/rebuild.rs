//! `chainfold rebuild` refuses to run beside a live role, and rebuilds every read model and
//! derived table (scores, alerts, incidents, stress runs) exactly from the log.

use std::process::Command;
use std::time::Duration;

use chainfold_ingest::replay::Dataset;
use chainfold_testkit::{data_dir, unique, Isolated};

fn rebuild(iso: &Isolated, scorer: &str, risk: &str) -> std::process::Output {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    Command::new(env!("CARGO_BIN_EXE_chainfold"))
        .args([
            "rebuild",
            "--group",
            &iso.group,
            "--scorer-group",
            scorer,
            "--risk-group",
            risk,
        ])
        .env("CHAINFOLD_KAFKA_BROKERS", &iso.kafka.brokers)
        .env("CHAINFOLD_TOPIC_PREFIX", &iso.kafka.topic_prefix)
        .env("DATABASE_URL", iso.postgres.expose_url())
        .env("REDIS_URL", iso.redis.expose_url())
        .env("CHAINFOLD_REDIS_PREFIX", &iso.redis.prefix)
        .env("RUST_LOG", "warn")
        .current_dir(root)
        .output()
        .expect("run chainfold rebuild")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_waits_for_no_role_and_refolds_every_derived_table_exactly() {
    let iso = Isolated::new("rebuild").await;
    let topics = iso.kafka.topics();
    chainfold_platform::kafka::ensure_topics(&iso.kafka, &topics.all())
        .await
        .expect("topics");
    let producer = chainfold_platform::kafka::producer(&iso.kafka).expect("producer");
    for dataset in [Dataset::Polygon, Dataset::Swaps] {
        let items = dataset.decode_dir(&data_dir()).expect("data");
        chainfold_ingest::publish::publish_all(&producer, &topics, items, |_, _| {})
            .await
            .expect("publish");
    }
    let (scorer_group, risk_group) = (unique("rebuild-scorer"), unique("rebuild-risk"));
    let models = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scoring/models");
    let mut projector = chainfold_projector::App::build(chainfold_projector::Config::new(
        iso.kafka.clone(),
        iso.postgres.clone(),
        iso.redis.clone(),
        iso.group.clone(),
    ))
    .await
    .expect("projector");
    projector.run_until_caught_up().await.expect("project");
    let pool = projector.pool().clone();
    {
        let mut scorer =
            chainfold_scoring::worker::Scorer::build(chainfold_scoring::worker::Config::new(
                iso.kafka.clone(),
                iso.postgres.clone(),
                iso.redis.clone(),
                scorer_group.clone(),
                iso.group.clone(),
                models.join("position-v1"),
            ))
            .await
            .expect("scorer");
        scorer
            .run_until_idle(Duration::from_secs(3))
            .await
            .expect("score");
        let mut risk = chainfold_risk::worker::RiskConfig::new(
            iso.kafka.clone(),
            iso.postgres.clone(),
            iso.redis.clone(),
            risk_group.clone(),
        );
        risk.projector_group = iso.group.clone();
        risk.anomaly_model_dir = Some(models.join("pool-anomaly-v1"));
        chainfold_risk::worker::RiskWorker::build(risk)
            .await
            .expect("risk")
            .run_until_idle(Duration::from_secs(3))
            .await
            .expect("risk");
    }
    let before = chainfold_testkit::fingerprints(&pool).await;
    let counted = |table: &str| before.iter().find(|f| f.0 == table).map_or(0, |f| f.1);
    assert!(
        counted("credit_score") > 1000 && counted("risk_alert") > 100,
        "{before:?}"
    );

    // A projector of the database is running: refused, with the reason, nothing touched.
    let refused = rebuild(&iso, &scorer_group, &risk_group);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("are running against this database"),
        "{stderr}"
    );
    assert_eq!(chainfold_testkit::fingerprints(&pool).await, before);

    drop(projector);
    let done = rebuild(&iso, &scorer_group, &risk_group);
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let stdout = String::from_utf8_lossy(&done.stdout);
    assert!(stdout.contains("rebuild: folded"), "{stdout}");
    // Scores, alerts and their incidents were emptied and recomputed: the same rows again.
    let emptied: i64 = sqlx::query_scalar("SELECT min(id) FROM credit_score")
        .fetch_one(&pool)
        .await
        .expect("ids");
    assert!(
        emptied > counted("credit_score") as i64,
        "scores were recomputed, not kept"
    );
    assert_eq!(chainfold_testkit::fingerprints(&pool).await, before);
}
