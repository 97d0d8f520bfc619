//! The lender dashboard in headless Chromium against a running stack: replayed Polygon data,
//! projected and scored by the real scorer, served by the API; the page shows the replayed
//! wallet's stored score, then an alert committed while it is open appears without a reload.

use std::io::BufRead as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use chainfold_ingest::replay::Dataset;
use chainfold_testkit::{unique, Isolated};

const WALLET: &str = "0x000006eee6e39015cb523aebdd4d0b1855aba682";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_a_replayed_score_and_a_pushed_alert() {
    let iso = Isolated::new("dashboard").await;
    chainfold_tests::replay_and_project(&iso, Dataset::Polygon).await;
    let scorer = chainfold_tests::score_all(&iso).await;
    let pool = scorer.pool().clone();
    let (stored, stored_id): (i32, i64) = sqlx::query_as(
        "SELECT score, id FROM credit_score_latest WHERE chain_id = 137 AND wallet = $1",
    )
    .bind(WALLET)
    .fetch_one(&pool)
    .await
    .expect("the wallet was scored");

    let mut api_config = chainfold_api::Config::new(
        iso.postgres.clone(),
        iso.redis.clone(),
        "127.0.0.1:0".parse().expect("addr"),
    );
    api_config.kafka = iso.kafka.clone();
    let app = chainfold_api::App::build(api_config).await.expect("api");
    let port = app.port();
    tokio::spawn(app.run_until_stopped(std::future::pending()));
    let (_, key) = chainfold_api::auth::create_key(&pool, "dashboard", 600)
        .await
        .expect("key");

    let shot = std::env::temp_dir().join(format!("{}.png", unique("dashboard")));
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("browser/dashboard.js");
    let url = format!("http://127.0.0.1:{port}/dashboard?key={key}&chain=137&wallets={WALLET}");
    let mut browser = Command::new("node")
        .arg(&script)
        .args([url.as_str(), "FLASH_LOAN_ATTACK"])
        .arg(&shot)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node runs the browser script");
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    let stdout = browser.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = lines_tx.send(line);
        }
    });
    let ready = next_line(&mut lines).await;
    // The page shows the stored score, and its live feed starts right after that score (no
    // gap between the snapshot and the subscription).
    assert_eq!(
        ready,
        format!("READY {stored} after {stored_id}"),
        "the page shows the stored score and subscribes from its cursor"
    );

    // An alert committed now (as the risk worker stores one) is pushed to the open page.
    sqlx::query(
        "INSERT INTO risk_alert (id, kind, severity, chain_id, block_number, tx_hashes, addresses,
                                 pools, evidence, detector_version)
         VALUES ($1, 'FLASH_LOAN_ATTACK', 'CRITICAL', 137, 1, '{0xabc}', '{}', '{0xdef}', '{}', 'test')",
    )
    .bind(unique("alert"))
    .execute(&pool)
    .await
    .expect("alert");
    let alert = next_line(&mut lines).await;
    assert_eq!(alert, "ALERT FLASH_LOAN_ATTACK CRITICAL");
    let status = browser.wait().expect("browser script ends");
    assert!(status.success());
    assert!(std::fs::metadata(&shot).expect("screenshot").len() > 10_000);
}

/// The browser script's next output line, within 60 s.
async fn next_line(lines: &mut tokio::sync::mpsc::UnboundedReceiver<String>) -> String {
    tokio::time::timeout(Duration::from_secs(60), lines.recv())
        .await
        .expect("the page answers within 60 s")
        .expect("the browser script ended early")
}
