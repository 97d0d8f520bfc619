//! The group member every consuming role reads through (`platform::member`), on Apache Kafka
//! and Postgres: it reads from the offset Postgres holds (never Kafka's), a member whose claim
//! was overtaken cannot commit, and an offset outside the log is refused with the reason.

use std::time::Duration;

use chainfold_platform::member::{LogReset, LogTruncated, Member};
use chainfold_platform::offsets::{self, OffsetError};
use chainfold_testkit::{unique, Isolated};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::FutureRecord;
use rdkafka::{Offset, TopicPartitionList};

/// A one-partition topic of `iso` holding `n` records (payload = their index).
async fn topic_with(iso: &Isolated, n: usize) -> String {
    let topic = format!("{}member", iso.kafka.topic_prefix);
    let mut one = iso.kafka.clone();
    one.partitions = 1;
    chainfold_platform::kafka::ensure_topics(&one, std::slice::from_ref(&topic))
        .await
        .expect("topic");
    let producer = chainfold_platform::kafka::producer(&iso.kafka).expect("producer");
    for i in 0..n {
        let payload = i.to_string();
        producer
            .send(
                FutureRecord::<str, str>::to(&topic).payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("produce");
    }
    topic
}

async fn pool(iso: &Isolated) -> sqlx::PgPool {
    chainfold_platform::postgres::connect_and_migrate(&iso.postgres)
        .await
        .expect("postgres")
}

/// Receives until `n` records arrived or 30 s passed.
async fn receive_n(member: &mut Member, n: usize) -> anyhow::Result<Vec<i64>> {
    let mut offsets = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while offsets.len() < n && std::time::Instant::now() < deadline {
        let batch = member
            .receive(
                n - offsets.len(),
                Duration::from_millis(500),
                Duration::from_millis(50),
            )
            .await?;
        offsets.extend(batch.messages.iter().map(|m| m.offset));
    }
    Ok(offsets)
}

#[tokio::test]
async fn a_member_reads_from_the_offset_in_postgres_not_the_one_in_kafka() {
    let iso = Isolated::new("member_seek").await;
    let topic = topic_with(&iso, 100).await;
    let pool = pool(&iso).await;
    // Kafka's own committed offset for the group says 80 (a projector committed it before a
    // rebuild); Postgres says 10.
    let committer: BaseConsumer =
        chainfold_platform::kafka::consumer_config(&iso.kafka, &iso.group)
            .create()
            .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, Offset::Offset(80))
        .expect("tpl");
    committer
        .commit(&tpl, CommitMode::Sync)
        .expect("commit 80 to Kafka");
    drop(committer);
    offsets::claim(&pool, &iso.group, "earlier", &[(topic.clone(), 0)])
        .await
        .expect("claim");
    sqlx::query("UPDATE consumer_offset SET next_offset = 10 WHERE group_id = $1")
        .bind(&iso.group)
        .execute(&pool)
        .await
        .expect("offset 10");

    let mut member = Member::join(
        &iso.kafka,
        pool.clone(),
        &iso.group,
        &unique("m"),
        &[&topic],
    )
    .expect("join");
    let read = receive_n(&mut member, 90).await.expect("receive");
    assert_eq!(
        read,
        (10..100).collect::<Vec<i64>>(),
        "every record from offset 10, in order, once"
    );
}

#[tokio::test]
async fn a_member_whose_claim_was_overtaken_cannot_commit() {
    let iso = Isolated::new("member_fence").await;
    let topic = topic_with(&iso, 20).await;
    let pool = pool(&iso).await;
    let mut member = Member::join(
        &iso.kafka,
        pool.clone(),
        &iso.group,
        &unique("m"),
        &[&topic],
    )
    .expect("join");
    let mut batch = member
        .receive(10, Duration::from_secs(30), Duration::from_millis(50))
        .await
        .expect("receive");
    while batch.messages.len() < 10 {
        let more = member
            .receive(
                10 - batch.messages.len(),
                Duration::from_secs(5),
                Duration::from_millis(50),
            )
            .await
            .expect("receive");
        batch.messages.extend(more.messages);
        batch.advances.extend(more.advances);
    }
    let advances: Vec<_> = {
        let first = batch.advances.first().expect("an advance").clone();
        let last = batch.advances.last().expect("an advance").clone();
        vec![offsets::Advance {
            to: last.to,
            ..first
        }]
    };
    // Another member claims the partition (a rebalance gave it away) before this one commits.
    offsets::claim(&pool, &iso.group, "newer", &[(topic.clone(), 0)])
        .await
        .expect("claim");
    let mut tx = pool.begin().await.expect("tx");
    let refused = offsets::advance(&mut tx, &iso.group, &advances).await;
    drop(tx);
    let Err(OffsetError::Fenced(fenced)) = refused else {
        panic!("the commit of an overtaken member must be fenced, got {refused:?}")
    };
    assert_eq!(fenced.partitions, vec![(topic.clone(), 0)]);
    let (next, _, owner) = offsets::stored(&pool, &iso.group, &topic, 0)
        .await
        .expect("stored")
        .expect("row");
    assert_eq!(next, 0, "nothing the fenced member read is stored");
    assert_eq!(owner.as_deref(), Some("newer"));
    // Kafka no longer assigns it elsewhere here (one member), so it is claimed back and read
    // again from what Postgres holds.
    member.recover(&fenced).await.expect("recover");
    let again = receive_n(&mut member, 20).await.expect("receive again");
    assert_eq!(again, (0..20).collect::<Vec<i64>>());
}

#[tokio::test]
async fn an_offset_outside_the_log_is_refused_with_the_reason() {
    let iso = Isolated::new("member_outside").await;
    let topic = topic_with(&iso, 10).await;
    let pool = pool(&iso).await;
    // Records 0..5 deleted (as retention or kafka-delete-records would): a group that has
    // folded nothing cannot rebuild from this log.
    let admin: AdminClient<DefaultClientContext> =
        chainfold_platform::kafka::client_config(&iso.kafka)
            .create()
            .expect("admin");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, Offset::Offset(5))
        .expect("tpl");
    admin
        .delete_records(&tpl, &AdminOptions::new())
        .await
        .expect("delete records");
    let mut member = Member::join(
        &iso.kafka,
        pool.clone(),
        &iso.group,
        &unique("m"),
        &[&topic],
    )
    .expect("join");
    let err = receive_n(&mut member, 1).await.expect_err("refused");
    let truncated = err
        .downcast_ref::<LogTruncated>()
        .unwrap_or_else(|| panic!("LogTruncated, got {err:#}"));
    assert!(
        truncated.0.contains("must read from 0, log starts at 5"),
        "{truncated}"
    );

    // Postgres ahead of the log's end: the broker was reset under the read models.
    let group = unique("ahead");
    offsets::claim(&pool, &group, "earlier", &[(topic.clone(), 0)])
        .await
        .expect("claim");
    sqlx::query("UPDATE consumer_offset SET next_offset = 500 WHERE group_id = $1")
        .bind(&group)
        .execute(&pool)
        .await
        .expect("offset 500");
    let mut member = Member::join(&iso.kafka, pool, &group, &unique("m"), &[&topic]).expect("join");
    let err = receive_n(&mut member, 1).await.expect_err("refused");
    assert!(
        err.downcast_ref::<LogReset>().is_some(),
        "LogReset, got {err:#}"
    );
}

/// Watermarks asked of a topic created an instant earlier (the moment a broker may still
/// answer `NotLeaderForPartition`) arrive once the leader is known; a partition that never
/// exists is refused after the patience, naming it.
#[tokio::test]
async fn watermarks_wait_out_a_moving_leader_and_name_a_partition_that_never_appears() {
    let iso = Isolated::new("member_marks").await;
    let topic = topic_with(&iso, 7).await;
    let probe: BaseConsumer = chainfold_platform::kafka::client_config(&iso.kafka)
        .create()
        .expect("probe");
    let marks = tokio::task::spawn_blocking({
        let topic = topic.clone();
        move || {
            chainfold_platform::kafka::partition_watermarks(
                &probe,
                &topic,
                0,
                Duration::from_secs(30),
            )
            .map(|m| (m, probe))
        }
    })
    .await
    .expect("task");
    let (marks, probe) = marks.expect("watermarks of a fresh topic");
    assert_eq!(marks, (0, 7));

    let started = std::time::Instant::now();
    let err = tokio::task::spawn_blocking(move || {
        chainfold_platform::kafka::partition_watermarks(&probe, &topic, 3, Duration::from_secs(2))
    })
    .await
    .expect("task")
    .expect_err("partition 3 of a one-partition topic");
    let text = format!("{err:#}");
    assert!(text.contains("member/3 within 2s"), "{text}");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "gave up at once"
    );
}

/// What the projector's writes in flight rely on to commit in order: a batch's offsets are a
/// compare-and-set from where the batch before it ends, checked against what is committed. A
/// later batch that advances while the earlier one is still open is refused
/// ([`OffsetError::Fenced`]: it does not wait on it), which is why the projector gives the next
/// write its turn only once the previous one has committed; after that commit it advances, and
/// after a rollback it is refused and nothing moves.
#[tokio::test]
async fn a_batch_advances_only_from_where_the_committed_batch_before_it_ends() {
    let iso = Isolated::new("member_order").await;
    let pool = pool(&iso).await;
    let topic = unique("ordered");
    let claims = offsets::claim(&pool, &iso.group, "writer", &[(topic.clone(), 0)])
        .await
        .expect("claim");
    let epoch = claims[0].1.epoch;
    let advance = |from: i64, to: i64| offsets::Advance {
        topic: topic.clone(),
        partition: 0,
        epoch,
        from,
        to,
    };
    let stored = || async {
        offsets::stored(&pool, &iso.group, &topic, 0)
            .await
            .expect("stored")
            .expect("row")
            .0
    };
    let try_advance = |a: offsets::Advance| {
        let (pool, group) = (pool.clone(), iso.group.clone());
        async move {
            let mut tx = pool.begin().await.expect("begin");
            let result = offsets::advance(&mut tx, &group, std::slice::from_ref(&a)).await;
            if result.is_ok() {
                tx.commit().await.expect("commit");
            }
            result
        }
    };

    for earlier_commits in [true, false] {
        let start = stored().await;
        let first = advance(start, start + 10);
        let second = advance(start + 10, start + 20);
        let mut earlier = pool.begin().await.expect("begin");
        offsets::advance(&mut earlier, &iso.group, std::slice::from_ref(&first))
            .await
            .expect("the earlier batch advances");
        // While the earlier batch is open, the later one's advance is refused at once.
        let refused = tokio::time::timeout(Duration::from_secs(5), try_advance(second.clone()))
            .await
            .expect("refused without waiting on the open transaction");
        assert!(
            matches!(refused, Err(OffsetError::Fenced(_))),
            "an advance from an offset not yet committed is refused, got {refused:?}"
        );
        if earlier_commits {
            earlier.commit().await.expect("commit");
            try_advance(second)
                .await
                .expect("after the earlier commit the later batch advances");
            assert_eq!(stored().await, start + 20);
        } else {
            earlier.rollback().await.expect("rollback");
            let refused = try_advance(second).await;
            assert!(
                matches!(refused, Err(OffsetError::Fenced(_))),
                "without the earlier batch the later one is refused, got {refused:?}"
            );
            assert_eq!(stored().await, start, "nothing moved");
        }
    }
}
