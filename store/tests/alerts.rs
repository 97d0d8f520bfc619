//! Repository tests of `store::alerts` and `store::stress` on a fresh migrated database per test.

use bigdecimal::BigDecimal;
use chainfold_domain::messages::Alert;
use chainfold_domain::risk::{AlertKind, Incident, Severity};
use chainfold_domain::stress::{ExactImpact, ShockRow};
use chainfold_store::{alerts, stress, summary};
use chrono::DateTime;
use sqlx::PgPool;

fn alert(id: &str, kind: AlertKind, block: u64, evidence: serde_json::Value) -> Alert {
    Alert {
        id: id.into(),
        kind,
        severity: Severity::High,
        chain_id: 1,
        block_number: block,
        tx_hashes: vec![format!("0xt{id}")],
        addresses: vec!["0xattacker".into()],
        pools: vec!["0xpool".into()],
        evidence,
        detector_version: "v1".into(),
        source_published_at: None,
        usd: Some(12.5),
        block_time: DateTime::from_timestamp(1_700_000_000 + block as i64 * 12, 0),
    }
}

async fn ids(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar("SELECT id FROM risk_alert ORDER BY id")
        .fetch_all(pool)
        .await
        .expect("read")
}

#[sqlx::test(migrator = "chainfold_platform::MIGRATOR")]
async fn an_alert_is_stored_once_replaced_by_new_evidence_and_dropped_when_not_found(pool: PgPool) {
    let a = alert(
        "a",
        AlertKind::Sandwich,
        10,
        serde_json::json!({"profit": 1}),
    );
    let b = alert(
        "b",
        AlertKind::FlashLoanAttack,
        11,
        serde_json::json!({"loan": 5}),
    );
    let mut tx = pool.begin().await.expect("tx");
    assert!(alerts::insert(&mut tx, &a).await.expect("stored"));
    assert!(
        !alerts::insert(&mut tx, &a).await.expect("stored"),
        "same id: stored once"
    );
    assert!(alerts::insert(&mut tx, &b).await.expect("stored"));
    // Re-evaluated from an earlier block with other evidence: replaced.
    let a2 = alert(
        "a",
        AlertKind::Sandwich,
        9,
        serde_json::json!({"profit": 2}),
    );
    alerts::delete_replaced(&mut tx, std::slice::from_ref(&a2))
        .await
        .expect("deleted");
    assert!(
        alerts::insert(&mut tx, &a2).await.expect("stored"),
        "the new evidence is stored"
    );
    // Blocks 10..=11 evaluated again, only `a` found: `b` goes.
    alerts::delete_unfound_in_blocks(&mut tx, 1, (10, 11), &AlertKind::ALL, &["a".into()])
        .await
        .expect("deleted");
    tx.commit().await.expect("commit");
    assert_eq!(ids(&pool).await, vec!["a".to_owned()]);
    let evidence: serde_json::Value =
        sqlx::query_scalar("SELECT evidence FROM risk_alert WHERE id = 'a'")
            .fetch_one(&pool)
            .await
            .expect("read");
    assert_eq!(evidence["profit"], 2);

    let mut tx = pool.begin().await.expect("tx");
    let window = alerts::in_window(&mut tx, 1_700_000_000, 1_700_000_000 + 3600)
        .await
        .expect("read");
    assert_eq!(window.len(), 1);
    assert_eq!(
        (window[0].kind, window[0].severity),
        (AlertKind::Sandwich, Severity::High)
    );
    assert_eq!(window[0].at, 1_700_000_000 + 9 * 12, "the block time");
    alerts::delete_unfound(&mut tx, &["a".into()], &[])
        .await
        .expect("deleted");
    tx.commit().await.expect("commit");
    assert!(ids(&pool).await.is_empty());
}

#[sqlx::test(migrator = "chainfold_platform::MIGRATOR")]
async fn an_incident_absorbs_the_ones_it_grew_over_and_progress_never_goes_back(pool: PgPool) {
    let incident = |id: &str, members: &[&str]| Incident {
        id: id.into(),
        alert_ids: members.iter().map(|m| (*m).to_owned()).collect(),
        chain_ids: vec![1],
        stages: vec!["exploitation".into()],
        severity: Severity::Critical,
        first_at: 1_700_000_000,
        last_at: 1_700_000_100,
    };
    let mut tx = pool.begin().await.expect("tx");
    alerts::upsert_incident(&mut tx, &incident("x", &["x"]))
        .await
        .expect("stored");
    alerts::upsert_incident(&mut tx, &incident("y", &["y"]))
        .await
        .expect("stored");
    alerts::upsert_incident(&mut tx, &incident("x", &["x", "y"]))
        .await
        .expect("stored");
    let through: alerts::Through = [(("t".to_owned(), 0), 40)].into_iter().collect();
    alerts::save_progress(&mut tx, "g", 1, &through, Some(7))
        .await
        .expect("saved");
    alerts::save_progress(&mut tx, "g", 1, &through, Some(5))
        .await
        .expect("saved");
    tx.commit().await.expect("commit");
    let stored: Vec<(String, Vec<String>)> =
        sqlx::query_as("SELECT id, alert_ids FROM risk_incident ORDER BY id")
            .fetch_all(&pool)
            .await
            .expect("read");
    assert_eq!(
        stored,
        vec![("x".to_owned(), vec!["x".to_owned(), "y".to_owned()])]
    );
    assert_eq!(
        alerts::progress(&pool, "g", 1).await.expect("read"),
        through
    );
    assert!(alerts::progress(&pool, "other", 1)
        .await
        .expect("read")
        .is_empty());
    let last: Option<i64> = sqlx::query_scalar("SELECT last_block FROM risk_progress")
        .fetch_one(&pool)
        .await
        .expect("read");
    assert_eq!(last, Some(7), "the last block never goes back");
}

#[sqlx::test(migrator = "chainfold_platform::MIGRATOR")]
async fn a_stress_run_is_stored_with_its_grid(pool: PgPool) {
    let run = stress::NewRun {
        chain_id: 1,
        as_of_block: Some(42),
        trigger: "manual".into(),
        positions: 3,
        prices: serde_json::json!({"WETH": "2000"}),
        rules: serde_json::json!({"close_factor": 0.5}),
        history_hours: 24,
        paths: 100,
        horizon_hours: 24,
        var95_usd: Some("1234.56".parse().expect("decimal")),
        evar99_usd: None,
        lar95_usd: Some(BigDecimal::from(99)),
        elapsed_ms: 3.5,
    };
    let grid = vec![ShockRow {
        asset: "WETH".into(),
        shock: -0.1,
        correlated: true,
        impact: ExactImpact {
            liquidatable: 2,
            debt_at_risk_usd: "500.5".parse().expect("decimal"),
            bad_debt_usd: BigDecimal::from(0),
        },
    }];
    let mut tx = pool.begin().await.expect("tx");
    let id = stress::insert(&mut tx, &run, &grid).await.expect("stored");
    tx.commit().await.expect("commit");
    let brief = summary::latest_stress(&pool, 1)
        .await
        .expect("read")
        .expect("a run");
    assert_eq!(
        (brief.positions, brief.var95_usd, brief.lar95_usd),
        (3, Some(1234.56), Some(99.0))
    );
    let (liquidatable, at_risk): (i32, BigDecimal) = sqlx::query_as(
        "SELECT liquidatable, debt_at_risk_usd FROM stress_scenario WHERE run_id = $1",
    )
    .bind(id)
    .fetch_one(&pool)
    .await
    .expect("the grid row");
    assert_eq!(
        (liquidatable, at_risk),
        (2, "500.5".parse().expect("decimal"))
    );
}
