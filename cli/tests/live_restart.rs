//! `chainfold ingest rpc` killed mid-backfill and started again: no gap, no duplicate row.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use alloy::primitives::{Address, U256};
use chainfold_simulate::anvil::Anvil;
use chainfold_simulate::contracts::units;
use chainfold_simulate::Deployment;
use chainfold_testkit::{data_dir, Isolated};

fn ingest(iso: &Isolated, chains: &std::path::Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_chainfold"));
    command
        .args(["ingest", "rpc", "--until-head", "--chains"])
        .arg(chains)
        .env("CHAINFOLD_KAFKA_BROKERS", &iso.kafka.brokers)
        .env("CHAINFOLD_TOPIC_PREFIX", &iso.kafka.topic_prefix)
        .env("DATABASE_URL", iso.postgres.expose_url())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

#[tokio::test]
async fn a_restart_mid_backfill_resumes_without_gap_or_duplicate() {
    let iso = Isolated::new("live_restart").await;
    let anvil = Anvil::spawn(31337).expect("anvil");
    let weth = chainfold_simulate::prices(&data_dir(), "WETH").expect("prices");
    let d = Deployment::deploy(&anvil.http_url(), weth[0], 30_000.0)
        .await
        .expect("deploy");
    let lp = Address::repeat_byte(0x50);
    d.fund(lp, d.weth.token, units(1e4, 18))
        .await
        .expect("fund");
    d.fund(lp, d.usdc.token, units(1e9, 6)).await.expect("fund");
    for token in [d.weth.token, d.usdc.token] {
        d.approve(lp, token, d.router).await.expect("approve");
    }
    let (_, _, token0) = d.reserves(d.pairs[0]).await.expect("reserves");
    let (w, u) = (units(1000.0, 18), units(1000.0 * weth[0], 6));
    let (a0, a1) = if token0 == d.weth.token {
        (w, u)
    } else {
        (u, w)
    };
    d.add_liquidity(lp, d.pairs[0], a0, a1)
        .await
        .expect("liquidity");
    let swaps = 150u64;
    let mut swap_blocks = Vec::new();
    for i in 0..swaps {
        let (_, block) = d
            .swap(lp, d.pairs[0], d.usdc.token, U256::from(1_000_000 + i))
            .await
            .expect("swap");
        swap_blocks.push(block as i64);
    }
    let chains =
        std::env::temp_dir().join(format!("{}.toml", chainfold_testkit::unique("restart")));
    // Two blocks per eth_getLogs range, one range at a time: ~75 checkpoints to stop between.
    let toml = d.chains_toml("anvil", &anvil.http_url(), None, 2).replace(
        "poll_interval",
        "max_range = 2\nconcurrency = 1\nreorg_window = 2\npoll_interval",
    );
    std::fs::write(&chains, toml).expect("write");
    let pool = sqlx::PgPool::connect(iso.postgres.expose_url())
        .await
        .expect("postgres");

    let mut first = ingest(&iso, &chains).spawn().expect("start ingest");
    let started = Instant::now();
    let stopped_at = loop {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "ingest made no progress"
        );
        assert!(
            first.try_wait().expect("poll").is_none(),
            "ingest finished before it could be killed"
        );
        let at: Option<i64> =
            sqlx::query_scalar("SELECT block_number FROM ingest_checkpoint WHERE chain_id = 31337")
                .fetch_optional(&pool)
                .await
                .unwrap_or(None);
        if let Some(at) = at.filter(|b| *b >= swap_blocks[40]) {
            first.kill().expect("kill -9");
            let _ = first.wait();
            break at;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        stopped_at < swap_blocks[swaps as usize - 1],
        "killed mid-backfill"
    );

    let output = ingest(&iso, &chains).output().expect("restart ingest");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let mut projector = chainfold_projector::App::build(chainfold_projector::Config::new(
        iso.kafka.clone(),
        iso.postgres.clone(),
        iso.redis.clone(),
        iso.group.clone(),
    ))
    .await
    .expect("projector");
    projector.run_until_caught_up().await.expect("project");
    // Exactly one row per swap transaction, in exactly the blocks the swaps were mined in.
    let blocks: Vec<i64> = sqlx::query_scalar(
        "SELECT block_number FROM swap WHERE recipient = $1 ORDER BY block_number",
    )
    .bind(format!("{lp:#x}"))
    .fetch_all(&pool)
    .await
    .expect("rows");
    assert_eq!(blocks, swap_blocks);
    let syncs: i64 = sqlx::query_scalar("SELECT count(*) FROM pool_sync")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(
        syncs,
        swaps as i64 + 1,
        "one Sync per swap and one for the liquidity"
    );
}
