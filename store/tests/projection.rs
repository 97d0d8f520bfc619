//! Repository tests: the projector's SQL on a real Postgres, a fresh database per test
//! (`#[sqlx::test]` creates and drops it; `DATABASE_URL` names the server).

use chainfold_domain::envelope::{LendingAction, Liquidation, Reserve};
use chainfold_domain::fold::{lending_row, swap_row};
use chainfold_domain::{
    Address, DefiEvent, Envelope, EventId, Source, TokenAmount, UsdValue, SCHEMA_VERSION,
};
use chainfold_store::projection::{self as store, Coordinates};
use sqlx::PgPool;

fn at(offset: i64) -> Coordinates {
    Coordinates {
        topic: "t".into(),
        partition: 0,
        offset,
    }
}

fn liquidation(record: &str, debt_covered: &str) -> Envelope {
    Envelope {
        schema_version: SCHEMA_VERSION,
        retracted: false,
        event_id: EventId::of_record(1, "test", record),
        chain_id: 1,
        block: None,
        tx_hash: None,
        log_index: None,
        block_time: chrono::DateTime::from_timestamp(1_621_433_382, 0),
        source: Source::Replay {
            dataset: "test".into(),
            record: record.into(),
        },
        event: DefiEvent::Liquidation(Liquidation {
            pool: None,
            protocol: "aave_v2".into(),
            wallet: Address::repeat_byte(0xaa),
            liquidator: Some(Address::repeat_byte(0xbb)),
            collateral: Reserve {
                address: Address::repeat_byte(1),
                symbol: "WETH".into(),
                decimals: 18,
            },
            collateral_amount: TokenAmount::parse_integer("385099628754132506").expect("valid"),
            collateral_price_usd: Some(
                UsdValue::parse("2417.768545940003089395802234234159").expect("valid"),
            ),
            debt: Reserve {
                address: Address::repeat_byte(2),
                symbol: "USDT".into(),
                decimals: 6,
            },
            debt_covered: TokenAmount::parse_integer(debt_covered).expect("valid"),
            debt_price_usd: Some(
                UsdValue::parse("1.01321466446499825392069825264885").expect("valid"),
            ),
        }),
    }
}

#[sqlx::test(migrator = "chainfold_platform::MIGRATOR")]
async fn upserting_the_same_lending_events_twice_changes_nothing(pool: PgPool) {
    let rows = vec![
        (
            lending_row(&liquidation("a", "875179341")).expect("folds"),
            at(0),
        ),
        (
            lending_row(&liquidation("b", "1000000")).expect("folds"),
            at(1),
        ),
    ];
    let mut tx = pool.begin().await.expect("tx");
    let (new, summaries) = store::insert_lending(&mut tx, &rows).await.expect("insert");
    tx.commit().await.expect("commit");
    assert_eq!(new, 2);
    assert_eq!(summaries.len(), 1);
    assert_eq!(summaries[0].event_count, 2);
    assert_eq!(summaries[0].action, LendingAction::Liquidation.as_str());

    let mut tx = pool.begin().await.expect("tx");
    let (new, summaries) = store::insert_lending(&mut tx, &rows)
        .await
        .expect("insert again");
    tx.commit().await.expect("commit");
    assert_eq!(
        (new, summaries.len()),
        (0, 0),
        "a replay inserts and summarises nothing"
    );

    let (count, usd): (i64, bigdecimal::BigDecimal) =
        sqlx::query_as("SELECT event_count, amount_usd FROM wallet_lending_summary")
            .fetch_one(&pool)
            .await
            .expect("summary");
    assert_eq!(count, 2);
    // 875.179341 × 1.01321… + 1.0 × 1.01321… = 887.757757…
    assert_eq!(
        usd.with_scale_round(2, bigdecimal::RoundingMode::HalfEven)
            .to_string(),
        "887.76"
    );
    let liquidations: i64 = sqlx::query_scalar("SELECT count(*) FROM liquidation")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(liquidations, 2);
}

#[sqlx::test(migrator = "chainfold_platform::MIGRATOR")]
async fn an_event_twice_in_one_batch_counts_once(pool: PgPool) {
    let row = lending_row(&liquidation("a", "875179341")).expect("folds");
    let rows = vec![(row.clone(), at(0)), (row, at(1))];
    let mut tx = pool.begin().await.expect("tx");
    let (new, summaries) = store::insert_lending(&mut tx, &rows).await.expect("insert");
    tx.commit().await.expect("commit");
    assert_eq!(new, 1);
    assert_eq!(summaries[0].event_count, 1);

    let swaps = sample_swaps();
    let twice: Vec<_> = swaps
        .iter()
        .chain(&swaps)
        .enumerate()
        .map(|(i, e)| (swap_row(e).expect("folds"), at(i as i64)))
        .collect();
    let mut tx = pool.begin().await.expect("tx");
    let (new, pools) = store::insert_swaps(&mut tx, &twice).await.expect("insert");
    tx.commit().await.expect("commit");
    assert_eq!(new, 3);
    assert_eq!((pools[0].swap_count, pools[0].reverted_count), (2, 1));
}

#[sqlx::test(migrator = "chainfold_platform::MIGRATOR")]
async fn swaps_are_idempotent_and_reverted_ones_move_no_volume(pool: PgPool) {
    let decoded = sample_swaps();
    let rows: Vec<_> = decoded
        .iter()
        .enumerate()
        .map(|(i, e)| (swap_row(e).expect("folds"), at(i as i64)))
        .collect();
    for _ in 0..2 {
        let mut tx = pool.begin().await.expect("tx");
        store::insert_swaps(&mut tx, &rows).await.expect("insert");
        tx.commit().await.expect("commit");
    }
    let (swaps, reverted): (i64, i64) =
        sqlx::query_as("SELECT swap_count, reverted_count FROM pool_summary")
            .fetch_one(&pool)
            .await
            .expect("summary");
    assert_eq!((swaps, reverted), (2, 1));
    let volume_in: bigdecimal::BigDecimal =
        sqlx::query_scalar("SELECT volume_in FROM pool_token_volume WHERE token = $1")
            .bind(format!("{:#x}", Address::repeat_byte(4)))
            .fetch_one(&pool)
            .await
            .expect("volume");
    assert_eq!(volume_in.to_string(), "300");
    let trace: Vec<i32> = sqlx::query_scalar("SELECT trace_address FROM swap WHERE event_id = $1")
        .bind(decoded[0].event_id.to_string())
        .fetch_one(&pool)
        .await
        .expect("trace");
    assert_eq!(trace, vec![0, 2]);
}

fn sample_swaps() -> Vec<Envelope> {
    let swap = |record: &str, amount_in: &str, reverted: bool, trace: Vec<u32>| Envelope {
        schema_version: SCHEMA_VERSION,
        retracted: false,
        event_id: EventId::of_record(1, "test-swaps", record),
        chain_id: 1,
        block: Some(chainfold_domain::BlockRef {
            number: 12_634_825,
            hash: None,
        }),
        tx_hash: None,
        log_index: None,
        block_time: None,
        source: Source::Rpc,
        event: DefiEvent::Swap(chainfold_domain::Swap {
            protocol: "uniswap_v2".into(),
            pool: Address::repeat_byte(9),
            sender: Address::repeat_byte(1),
            recipient: Address::repeat_byte(1),
            token_in: Address::repeat_byte(4),
            amount_in: TokenAmount::parse_integer(amount_in).expect("valid"),
            token_out: Address::repeat_byte(5),
            amount_out: TokenAmount::parse_integer("7").expect("valid"),
            tx_position: 3,
            trace_address: trace,
            reverted,
            v3: None,
        }),
    };
    vec![
        swap("x", "100", false, vec![0, 2]),
        swap("y", "200", false, vec![]),
        swap("z", "999", true, vec![1]),
    ]
}

#[sqlx::test(migrator = "chainfold_platform::MIGRATOR")]
async fn an_offset_moves_only_from_where_it_stands_under_the_current_claim(pool: PgPool) {
    use chainfold_platform::offsets::{self, Advance, OffsetError};
    let part = [("t".to_owned(), 0)];
    let claims = offsets::claim(&pool, "g", "a", &part).await.expect("claim");
    let epoch = claims[0].1.epoch;
    assert_eq!(
        claims[0].1.next_offset, 0,
        "a new partition starts at the log's beginning"
    );
    let step = |from, to, epoch| Advance {
        topic: "t".into(),
        partition: 0,
        epoch,
        from,
        to,
    };
    let write = |advance: Advance| {
        let pool = pool.clone();
        async move {
            let mut tx = pool.begin().await.expect("tx");
            let result = offsets::advance(&mut tx, "g", &[advance]).await;
            if result.is_ok() {
                tx.commit().await.expect("commit");
            }
            result
        }
    };
    write(step(0, 10, epoch)).await.expect("first batch");
    // A batch that believes the offset is still 0 (its commit was lost, or another wrote).
    assert!(matches!(
        write(step(0, 4, epoch)).await,
        Err(OffsetError::Fenced(_))
    ));
    write(step(10, 12, epoch)).await.expect("next batch");
    // A newer claim (a rebalance) fences the old epoch.
    let newer = offsets::claim(&pool, "g", "b", &part).await.expect("claim");
    assert_eq!(
        newer[0].1,
        offsets::Claim {
            next_offset: 12,
            epoch: epoch + 1
        }
    );
    assert!(matches!(
        write(step(12, 20, epoch)).await,
        Err(OffsetError::Fenced(_))
    ));
    assert_eq!(
        offsets::load(&pool, "g").await.expect("load"),
        vec![(("t".to_owned(), 0), 12)]
    );
    store::reset(&pool, "g").await.expect("reset");
    assert!(offsets::load(&pool, "g").await.expect("load").is_empty());
}

/// `n` swaps of one pool numbered from `from`, one record each.
fn numbered_swaps(from: usize, n: usize) -> Vec<Envelope> {
    let template = sample_swaps().remove(1);
    (from..from + n)
        .map(|i| Envelope {
            event_id: EventId::of_record(1, "test-swaps", &format!("n{i}")),
            ..template.clone()
        })
        .collect()
}

#[sqlx::test(migrator = "chainfold_platform::MIGRATOR")]
async fn a_large_batch_with_republished_swaps_stores_only_the_new_ones(pool: PgPool) {
    let write = |envelopes: Vec<Envelope>, first_offset: i64| {
        let pool = pool.clone();
        async move {
            let rows: Vec<_> = envelopes
                .iter()
                .enumerate()
                .map(|(i, e)| (swap_row(e).expect("folds"), at(first_offset + i as i64)))
                .collect();
            let mut tx = pool.begin().await.expect("tx");
            let (new, _) = store::insert_swaps(&mut tx, &rows).await.expect("insert");
            tx.commit().await.expect("commit");
            new
        }
    };
    const { assert!(100 >= chainfold_store::projection::copy::COPY_MIN) };
    assert_eq!(write(numbered_swaps(0, 100), 0).await, 100);
    // Ingest restarted and published 50..200 again at new offsets, one of them twice.
    let mut republished = numbered_swaps(50, 150);
    republished.push(republished[120].clone());
    assert_eq!(write(republished, 100).await, 100, "only 100..200 are new");
    // The batches after the conflict probe first; a fresh one is stored whole.
    assert_eq!(write(numbered_swaps(200, 100), 251).await, 100);
    let (rows, counted): (i64, i64) =
        sqlx::query_as("SELECT (SELECT count(*) FROM swap), (SELECT swap_count FROM pool_summary)")
            .fetch_one(&pool)
            .await
            .expect("counts");
    assert_eq!(
        (rows, counted),
        (300, 300),
        "each swap stored and counted once"
    );
}

#[sqlx::test(migrator = "chainfold_platform::MIGRATOR")]
async fn a_copy_probes_only_after_it_meets_a_stored_id(pool: PgPool) {
    use chainfold_store::projection::copy::{copy_new, CopyTable, CopyText, PROBE_AFTER_CONFLICT};
    static T: CopyTable = CopyTable::new("copy_probe_test");
    sqlx::query("CREATE TABLE copy_probe_test (event_id text PRIMARY KEY, n int4 NOT NULL)")
        .execute(&pool)
        .await
        .expect("table");
    let copy = |range: std::ops::Range<usize>| {
        let pool = pool.clone();
        async move {
            let ids: Vec<String> = range.clone().map(|i| format!("e{i}")).collect();
            let mut tx = pool.begin().await.expect("tx");
            let copied = copy_new(
                &mut tx,
                &T,
                &ids,
                "COPY copy_probe_test (event_id, n) FROM STDIN",
                |fresh| {
                    let mut data = CopyText::with_capacity(fresh.len());
                    for &i in fresh {
                        data.plain(&ids[i]).plain(range.start + i);
                        data.end_row();
                    }
                    data
                },
            )
            .await
            .expect("copy");
            tx.commit().await.expect("commit");
            (copied.fresh.len(), copied.probed, copied.conflicted)
        }
    };
    assert_eq!(copy(0..10).await, (10, false, false), "optimistic first");
    assert_eq!(
        copy(5..20).await,
        (10, true, true),
        "conflict: rolled back, probed"
    );
    for i in 0..PROBE_AFTER_CONFLICT {
        let from = 20 + 10 * i as usize;
        assert_eq!(
            copy(from..from + 10).await,
            (10, true, false),
            "probing first"
        );
    }
    let from = 20 + 10 * PROBE_AFTER_CONFLICT as usize;
    assert_eq!(
        copy(from..from + 10).await,
        (10, false, false),
        "optimistic again"
    );
    let (rows, sum): (i64, i64) =
        sqlx::query_as("SELECT count(*), sum(n)::int8 FROM copy_probe_test")
            .fetch_one(&pool)
            .await
            .expect("counts");
    let last = from as i64 + 10;
    assert_eq!((rows, sum), (last, last * (last - 1) / 2), "every id once");
}
