//! The transactional outbox (`chainfold_platform::outbox`) on the real Postgres and Apache
//! Kafka: one row per enqueue and topic, every committed output relayed once, in its order, with
//! its `output_id` header and `outputId` field; nothing of a rolled-back transaction; a topic
//! not asked for left pending; rounds smaller than a row still take whole rows.

use std::time::Duration;

use chainfold_platform::outbox::{self, Output, OUTPUT_ID_HEADER};
use chainfold_testkit::Isolated;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use serde_json::{json, Value};

fn output(topic: &str, i: usize) -> Output {
    Output {
        topic: topic.to_owned(),
        key: format!("wallet-{}", i % 7),
        output_id: format!("{topic}:{i}"),
        payload:
            json!({ "n": i, "note": "tab\there, quote \" and backslash \\, é € 😀\nnext line" })
                .into(),
    }
}

/// (key, output_id header, payload) of every record of a one-partition `topic`, in order.
fn read_all(iso: &Isolated, topic: &str, expect: usize) -> Vec<(String, String, Value)> {
    let consumer: BaseConsumer = chainfold_platform::kafka::client_config(&iso.kafka)
        .set("group.id", chainfold_testkit::unique("outbox-reader"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("reader");
    let mut assignment = rdkafka::TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, 0, rdkafka::Offset::Beginning)
        .expect("assignment");
    consumer.assign(&assignment).expect("assign");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut out = Vec::new();
    // Read past `expect` for a moment: a record sent twice would show.
    let mut quiet_until = None;
    while std::time::Instant::now() < deadline {
        if out.len() >= expect {
            let until =
                *quiet_until.get_or_insert(std::time::Instant::now() + Duration::from_secs(1));
            if std::time::Instant::now() > until {
                break;
            }
        }
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            let header = m
                .headers()
                .and_then(|h| h.iter().find(|h| h.key == OUTPUT_ID_HEADER))
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default();
            out.push((
                String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                header,
                serde_json::from_slice(m.payload().unwrap_or_default()).expect("JSON payload"),
            ));
        }
    }
    out
}

/// A migrated database, one-partition topics named `names` (with the pipeline's prefix) and a
/// producer.
async fn setup(
    name: &str,
    names: &[&str],
) -> (
    Isolated,
    sqlx::PgPool,
    rdkafka::producer::FutureProducer,
    Vec<String>,
) {
    let mut iso = Isolated::new(name).await;
    iso.kafka.partitions = 1;
    let pool = chainfold_platform::postgres::connect_and_migrate(&iso.postgres)
        .await
        .expect("postgres");
    let topics: Vec<String> = names
        .iter()
        .map(|n| format!("{}{n}", iso.kafka.topic_prefix))
        .collect();
    chainfold_platform::kafka::ensure_topics(&iso.kafka, &topics)
        .await
        .expect("topics");
    let producer = chainfold_platform::kafka::producer(&iso.kafka).expect("producer");
    (iso, pool, producer, topics)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_outputs_are_relayed_once_in_order_from_one_row_per_enqueue_and_topic() {
    let (iso, pool, producer, topics) = setup("outbox", &["outbox-a", "outbox-b"]).await;
    let [a, b] = [topics[0].clone(), topics[1].clone()];

    // One transaction: 2,500 outputs for `a` and 3 for `b`, interleaved.
    let mut first: Vec<Output> = (0..2_500).map(|i| output(&a, i)).collect();
    first.insert(10, output(&b, 0));
    first.insert(1_000, output(&b, 1));
    first.push(output(&b, 2));
    let mut tx = pool.begin().await.expect("begin");
    outbox::enqueue(&mut tx, &first).await.expect("enqueue");
    tx.commit().await.expect("commit");
    // A transaction that rolls back queues nothing.
    let mut tx = pool.begin().await.expect("begin");
    outbox::enqueue(
        &mut tx,
        &(5_000..5_005).map(|i| output(&a, i)).collect::<Vec<_>>(),
    )
    .await
    .expect("enqueue");
    tx.rollback().await.expect("rollback");
    // A later transaction: a payload that is not an object goes as it is; one that names its
    // own outputId keeps it.
    let mut tx = pool.begin().await.expect("begin");
    let mut own = output(&a, 2_501);
    own.payload = json!({ "outputId": "kept", "n": 2_501 }).into();
    let mut text = output(&a, 2_500);
    text.payload = json!("plain").into();
    outbox::enqueue(&mut tx, &[text, own])
        .await
        .expect("enqueue");
    tx.commit().await.expect("commit");

    let rows: Vec<(String, i32)> =
        sqlx::query_as("SELECT topic, cardinality(output_ids) FROM outbox ORDER BY seq")
            .fetch_all(&pool)
            .await
            .expect("rows");
    assert_eq!(
        rows,
        vec![(a.clone(), 2_500), (b.clone(), 3), (a.clone(), 2)],
        "one row per enqueue and topic"
    );
    assert_eq!(outbox::pending(&pool).await.expect("pending"), 2_505);

    // Rounds of about 1,000 outputs: the 2,500-output row goes whole.
    let sent = outbox::relay(&pool, &producer, std::slice::from_ref(&a), 1_000)
        .await
        .expect("relay");
    assert_eq!(sent, 2_502);
    assert_eq!(
        outbox::pending(&pool).await.expect("pending"),
        3,
        "b is not asked for"
    );
    let sent = outbox::relay(&pool, &producer, std::slice::from_ref(&b), 1)
        .await
        .expect("relay");
    assert_eq!(sent, 3, "rounds of one output still take whole rows");
    assert_eq!(outbox::pending(&pool).await.expect("pending"), 0);
    assert_eq!(
        outbox::relay(&pool, &producer, &[a.clone(), b.clone()], 1_000)
            .await
            .expect("relay"),
        0,
        "nothing left to send"
    );

    let records = read_all(&iso, &a, 2_502);
    assert_eq!(records.len(), 2_502, "every committed output of a once");
    for (i, (key, header, payload)) in records.iter().take(2_500).enumerate() {
        assert_eq!(key, &format!("wallet-{}", i % 7));
        assert_eq!(header, &format!("{a}:{i}"));
        assert_eq!(payload["outputId"], json!(header), "{payload}");
        assert_eq!(payload["n"], json!(i), "in order");
        assert_eq!(
            payload["note"],
            json!("tab\there, quote \" and backslash \\, é € 😀\nnext line")
        );
    }
    assert_eq!(records[2_500].2, json!("plain"));
    assert_eq!(records[2_500].1, format!("{a}:2500"));
    assert_eq!(records[2_501].2["outputId"], json!("kept"));
    let b_records = read_all(&iso, &b, 3);
    let ids: Vec<&str> = b_records.iter().map(|r| r.1.as_str()).collect();
    assert_eq!(
        ids,
        vec![format!("{b}:0"), format!("{b}:1"), format!("{b}:2")]
    );
}

/// The migration to one row per enqueue carries every output still pending in the old
/// one-row-per-output table over, in order, and the relay sends each as it would have.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_pending_at_the_upgrade_are_carried_over_and_relayed() {
    let mut iso = Isolated::new("outbox_upgrade").await;
    iso.kafka.partitions = 1;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(iso.postgres.expose_url())
        .await
        .expect("postgres");
    // The timeline up to the migration before the change.
    let before = sqlx::migrate::Migrator {
        migrations: std::borrow::Cow::Owned(
            chainfold_platform::MIGRATOR
                .migrations
                .iter()
                .filter(|m| m.version < 20261205000033)
                .cloned()
                .collect(),
        ),
        ..sqlx::migrate::Migrator::DEFAULT
    };
    assert!(before.migrations.len() < chainfold_platform::MIGRATOR.migrations.len());
    before
        .run(&pool)
        .await
        .expect("migrations before the change");
    let topic = format!("{}outbox-upgrade", iso.kafka.topic_prefix);
    for i in 0..3 {
        sqlx::query(
            "INSERT INTO outbox (topic, record_key, output_id, payload) VALUES ($1, $2, $3, $4)",
        )
        .bind(&topic)
        .bind(format!("wallet-{i}"))
        .bind(format!("old:{i}"))
        .bind(json!({ "n": i, "outputId": format!("old:{i}") }))
        .execute(&pool)
        .await
        .expect("an old-format output");
    }
    chainfold_platform::MIGRATOR
        .run(&pool)
        .await
        .expect("the rest of the timeline");
    let rows: Vec<(String, Vec<String>)> =
        sqlx::query_as("SELECT topic, output_ids FROM outbox ORDER BY seq")
            .fetch_all(&pool)
            .await
            .expect("rows");
    assert_eq!(
        rows,
        (0..3)
            .map(|i| (topic.clone(), vec![format!("old:{i}")]))
            .collect::<Vec<_>>()
    );
    chainfold_platform::kafka::ensure_topics(&iso.kafka, std::slice::from_ref(&topic))
        .await
        .expect("topic");
    let producer = chainfold_platform::kafka::producer(&iso.kafka).expect("producer");
    assert_eq!(
        outbox::relay(&pool, &producer, std::slice::from_ref(&topic), 100)
            .await
            .expect("relay"),
        3
    );
    let records = read_all(&iso, &topic, 3);
    assert_eq!(records.len(), 3);
    for (i, (key, header, payload)) in records.iter().enumerate() {
        assert_eq!(key, &format!("wallet-{i}"));
        assert_eq!(header, &format!("old:{i}"));
        assert_eq!(payload, &json!({ "n": i, "outputId": format!("old:{i}") }));
    }
}

/// Relays side by side (replicas): a row another relay holds is neither sent nor waited for;
/// the rest go; the held row goes once its holder lets go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_another_relay_holds_is_left_to_it_and_the_rest_go() {
    let (iso, pool, producer, topics) = setup("outbox_side", &["outbox-side"]).await;
    let topic = topics[0].clone();
    for batch in 0..3 {
        let mut tx = pool.begin().await.expect("begin");
        let outputs: Vec<Output> = (batch * 10..batch * 10 + 10)
            .map(|i| output(&topic, i))
            .collect();
        outbox::enqueue(&mut tx, &outputs).await.expect("enqueue");
        tx.commit().await.expect("commit");
    }
    // Another relay holds the first row.
    let mut holder = pool.begin().await.expect("begin");
    sqlx::query("SELECT seq FROM outbox ORDER BY seq LIMIT 1 FOR UPDATE")
        .fetch_one(&mut *holder)
        .await
        .expect("lock");
    let sent = tokio::time::timeout(
        Duration::from_secs(10),
        outbox::relay(&pool, &producer, std::slice::from_ref(&topic), 15),
    )
    .await
    .expect("a held row is not waited for")
    .expect("relay");
    assert_eq!(sent, 20, "the two rows nobody holds");
    assert_eq!(outbox::pending(&pool).await.expect("pending"), 10);
    holder.rollback().await.expect("let go");
    assert_eq!(
        outbox::relay(&pool, &producer, std::slice::from_ref(&topic), 15)
            .await
            .expect("relay"),
        10
    );
    let records = read_all(&iso, &topic, 30);
    let mut ids: Vec<String> = records.into_iter().map(|r| r.1).collect();
    assert_eq!(ids.len(), 30, "each output once");
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 30);
}

/// A writer relays its own rows from the outputs it still holds (`relay_with`), not from
/// what Postgres stores of them, and every other pending row from Postgres, all in `seq` order.
/// Holding a row does not get around the row lock: a row another relay has locked is left to
/// it, and a row already relayed is not sent again from memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writers_own_rows_go_from_memory_and_the_rest_from_postgres() {
    let (iso, pool, producer, topics) = setup("outbox_held", &["outbox-held"]).await;
    let topic = topics[0].clone();
    let batch =
        |from: usize| -> Vec<Output> { (from..from + 10).map(|i| output(&topic, i)).collect() };
    // Another writer's row (0..10), then this writer's (10..20), then another's (20..30).
    let mut held = None;
    for from in [0, 10, 20] {
        let mut tx = pool.begin().await.expect("begin");
        let outputs = batch(from);
        let queued = outbox::enqueue(&mut tx, &outputs).await.expect("enqueue");
        tx.commit().await.expect("commit");
        if from == 10 {
            held = Some(outbox::Held::new(queued, outputs));
        }
    }
    let held = held.expect("held");
    assert!(!held.is_empty());
    // What Postgres stores of the held row is changed: only a relay that reads it would send it.
    let changed = sqlx::query(
        "UPDATE outbox SET payloads = array_fill('\"stored copy\"'::text, ARRAY[10])
         WHERE output_ids[1] = $1",
    )
    .bind(format!("{topic}:10"))
    .execute(&pool)
    .await
    .expect("update");
    assert_eq!(changed.rows_affected(), 1);

    // Another relay holds the writer's row: the rows before and after it go, it stays.
    let mut holder = pool.begin().await.expect("begin");
    sqlx::query("SELECT seq FROM outbox WHERE output_ids[1] = $1 FOR UPDATE")
        .bind(format!("{topic}:10"))
        .fetch_one(&mut *holder)
        .await
        .expect("lock");
    let no_sources = outbox::Sources::default();
    let relay = async || {
        outbox::relay_with(
            &pool,
            &producer,
            std::slice::from_ref(&topic),
            15,
            &held,
            &no_sources,
        )
        .await
        .expect("relay")
    };
    let sent = relay().await;
    assert_eq!(sent, 20, "the two rows nobody holds");
    holder.rollback().await.expect("let go");
    let sent = relay().await;
    assert_eq!(sent, 10, "the writer's row, once its lock is let go");
    assert_eq!(outbox::pending(&pool).await.expect("pending"), 0);
    // Relayed and deleted: holding it sends nothing again.
    let sent = relay().await;
    assert_eq!(sent, 0);

    let records = read_all(&iso, &topic, 30);
    let order: Vec<usize> = [0..10, 20..30, 10..20].into_iter().flatten().collect();
    assert_eq!(records.len(), 30, "each output once");
    for ((key, header, payload), i) in records.iter().zip(order) {
        assert_eq!(header, &format!("{topic}:{i}"));
        assert_eq!(key, &format!("wallet-{}", i % 7));
        let mut expected = match output(&topic, i).payload {
            outbox::Payload::Json(v) => v,
            _ => unreachable!("JSON payloads"),
        };
        expected["outputId"] = json!(format!("{topic}:{i}"));
        assert_eq!(
            payload, &expected,
            "record {i} as written, never the stored copy"
        );
    }
}

/// The records of `test_sourced`, a writer's own table for `sourced_rows_…` below: the body of
/// each output id, `None` when its row is gone.
fn rebuild_test_rows<'a>(pool: &'a sqlx::PgPool, ids: &'a [String]) -> outbox::Rebuilding<'a> {
    Box::pin(async move {
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT id, body FROM test_sourced WHERE id = ANY($1)")
                .bind(ids)
                .fetch_all(pool)
                .await?;
        let rows: std::collections::HashMap<String, String> = rows.into_iter().collect();
        Ok(ids.iter().map(|id| rows.get(id).cloned()).collect())
    })
}

/// Outputs whose content their writer stores in its own rows ([`outbox::Payload::Sourced`])
/// are queued without their payloads: the row names the source. A relay that does not hold them
/// rebuilds them from the source's rows, in their order, and leaves out a row deleted since (a
/// retraction); a relay that does not know the source refuses with a clear error and leaves the
/// row in place. Plain outputs of the same enqueue keep their payloads in a row of their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sourced_rows_hold_no_payloads_and_a_relay_rebuilds_them_or_refuses_clearly() {
    let (iso, pool, producer, topics) = setup("outbox_sourced", &["outbox-sourced"]).await;
    let topic = topics[0].clone();
    sqlx::query("CREATE TABLE test_sourced (id TEXT PRIMARY KEY, body TEXT NOT NULL)")
        .execute(&pool)
        .await
        .expect("table");
    let body = |i: usize| {
        format!(
            r#"{{"n":{i},"outputId":"{topic}:{i}","pad":"{}"}}"#,
            "x".repeat(500)
        )
    };
    let mut outputs: Vec<Output> = (0..10)
        .map(|i| Output {
            topic: topic.clone(),
            key: format!("wallet-{}", i % 3),
            output_id: format!("{topic}:{i}"),
            payload: outbox::Payload::Sourced {
                text: body(i).into(),
                source: "test_rows",
            },
        })
        .collect();
    outputs.push(output(&topic, 10));
    let mut tx = pool.begin().await.expect("begin");
    for i in 0..10 {
        sqlx::query("INSERT INTO test_sourced VALUES ($1, $2)")
            .bind(format!("{topic}:{i}"))
            .bind(body(i))
            .execute(&mut *tx)
            .await
            .expect("source row");
    }
    outbox::enqueue(&mut tx, &outputs).await.expect("enqueue");
    tx.commit().await.expect("commit");

    let rows: Vec<(Option<String>, i32, i32, i64)> = sqlx::query_as(
        "SELECT source, cardinality(output_ids), cardinality(payloads), pg_column_size(payloads)::int8
         FROM outbox ORDER BY seq",
    )
    .fetch_all(&pool)
    .await
    .expect("rows");
    assert_eq!(
        rows.len(),
        2,
        "a row for the sourced outputs, one for the plain one"
    );
    assert_eq!(
        (rows[0].0.as_deref(), rows[0].1, rows[0].2),
        (Some("test_rows"), 10, 0)
    );
    assert!(rows[0].3 < 100, "no payload stored: {} bytes", rows[0].3);
    assert_eq!((rows[1].0.as_deref(), rows[1].1, rows[1].2), (None, 1, 1));

    // A relay without the source refuses, naming it, and sends nothing.
    let err = outbox::relay(&pool, &producer, std::slice::from_ref(&topic), 100)
        .await
        .expect_err("a source this relay does not know");
    let err = format!("{err:#}");
    assert!(
        err.contains("test_rows") && err.contains("cannot rebuild"),
        "{err}"
    );
    assert_eq!(outbox::pending(&pool).await.expect("pending"), 11);

    // One source row is retracted after the commit: its output is not sent.
    sqlx::query("DELETE FROM test_sourced WHERE id = $1")
        .bind(format!("{topic}:4"))
        .execute(&pool)
        .await
        .expect("retract");
    let sources = outbox::Sources::default().with("test_rows", rebuild_test_rows);
    let sent = outbox::relay_with(
        &pool,
        &producer,
        std::slice::from_ref(&topic),
        100,
        &outbox::Held::default(),
        &sources,
    )
    .await
    .expect("relay");
    assert_eq!(sent, 10, "nine rebuilt records and the plain one");
    assert_eq!(outbox::pending(&pool).await.expect("pending"), 0);

    let records = read_all(&iso, &topic, 10);
    let expected: Vec<usize> = (0..10).filter(|&i| i != 4).chain([10]).collect();
    assert_eq!(records.len(), expected.len(), "each output once");
    for ((key, header, payload), i) in records.iter().zip(expected) {
        assert_eq!(header, &format!("{topic}:{i}"));
        assert_eq!(key, &format!("wallet-{}", i % if i < 10 { 3 } else { 7 }));
        if i < 10 {
            let rebuilt: Value = serde_json::from_str(&body(i)).expect("body");
            assert_eq!(payload, &rebuilt, "record {i} rebuilt from its source row");
        } else {
            assert_eq!(payload["n"], json!(10));
        }
    }
}
