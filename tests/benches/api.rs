//! API benchmark against a separate `chainfold serve` process (the release binary), all figures
//! from one run on the replayed Polygon data:
//!
//! 1. Point query under wrk (`wrk -t2 -c32 -d10s --latency`, POST with an API key):
//!    `wallet(chainId: 137, address) { lendingSummary { … } creditScore { score band } }`;
//!    p50/p99 and req/s, beside `GET /health` (one `SELECT 1` and one Redis `PING`) under the
//!    same load as the baseline, against two servers: the default one (latest scores and
//!    summaries read from Redis) and one started with `--redis-reads false` (Postgres only).
//!    Three rounds of the three, interleaved; medians.
//! 2. Commit → subscriber latency: one `scoreUpdated` subscriber over WebSocket; a score row
//!    inserted and committed N times (default 300); from sending the INSERT to the update
//!    arriving. Baseline in the same run: a bare Postgres `LISTEN` receiving a `pg_notify`
//!    committed the same way.
//! 3. 10,000 open subscriptions (100 WebSocket connections × 100 `scoreUpdated` subscriptions,
//!    one wallet each): the server's RSS before and after, and the commit → subscriber latency
//!    again with all of them open.
//!
//! `cargo build --release -p chainfold-cli && cargo bench -p chainfold-tests --bench api -- [N]`
//! (needs `wrk`: `apt-get install wrk`; services as for the tests).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chainfold_ingest::replay::Dataset;
use chainfold_testkit::Isolated;
use futures::{SinkExt as _, StreamExt as _};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const WALLET: &str = "0x000006eee6e39015cb523aebdd4d0b1855aba682";

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// The server process, killed on drop.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS");
    kb / 1024.0
}

/// wrk's p50, p99 (ms) and requests/s with 32 connections.
fn wrk(url: &str, script: &std::path::Path) -> (f64, f64, f64) {
    wrk_with(32, url, script)
}

/// wrk's p50, p99 (ms) and requests/s with `connections` connections.
fn wrk_with(connections: usize, url: &str, script: &std::path::Path) -> (f64, f64, f64) {
    let out = Command::new("wrk")
        .args([
            "-t2",
            &format!("-c{connections}"),
            "-d10s",
            "--latency",
            "-s",
        ])
        .arg(script)
        .arg(url)
        .output()
        .expect("wrk runs (apt-get install wrk)");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let ms = |label: &str| -> f64 {
        let v = text
            .lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .unwrap_or_else(|| panic!("no {label} in wrk output:\n{text}"))
            .trim()
            .to_owned();
        if let Some(us) = v.strip_suffix("us") {
            us.parse::<f64>().expect("us") / 1000.0
        } else if let Some(ms) = v.strip_suffix("ms") {
            ms.parse().expect("ms")
        } else if let Some(s) = v.strip_suffix('s') {
            s.parse::<f64>().expect("s") * 1000.0
        } else {
            panic!("latency {v}")
        }
    };
    let rps: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .expect("Requests/sec")
        .trim()
        .parse()
        .expect("rps");
    assert!(
        !text.contains("Non-2xx"),
        "wrk saw non-2xx answers:\n{text}"
    );
    (ms("50%"), ms("99%"), rps)
}

async fn ws_connect(port: u16, key: &str) -> Ws {
    let mut request = format!("ws://127.0.0.1:{port}/graphql")
        .into_client_request()
        .expect("request");
    request.headers_mut().insert(
        "sec-websocket-protocol",
        "graphql-transport-ws".parse().expect("header"),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.expect("ws");
    ws.send(Message::Text(
        json!({"type": "connection_init", "payload": {"apiKey": key}})
            .to_string()
            .into(),
    ))
    .await
    .expect("init");
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) if t.contains("connection_ack") => return ws,
            Some(Ok(Message::Close(frame))) => {
                panic!("the server refused the connection: {frame:?}")
            }
            Some(Ok(_)) => {}
            Some(Err(err)) => panic!("websocket: {err}"),
            None => panic!("the server closed the connection before its ack"),
        }
    }
}

async fn subscribe(ws: &mut Ws, id: usize, wallet: &str) {
    let query = format!(
        r#"subscription {{ scoreUpdated(chainId: 137, wallets: ["{wallet}"]) {{ cursor score {{ score }} }} }}"#
    );
    ws.send(Message::Text(
        json!({"type": "subscribe", "id": id.to_string(), "payload": {"query": query}})
            .to_string()
            .into(),
    ))
    .await
    .expect("subscribe");
}

async fn insert_score(pool: &sqlx::PgPool, wallet: &str, score: i32) {
    sqlx::query(
        "INSERT INTO credit_score (chain_id, wallet, score, band, reasons, model_version,
             model_sha256, event_id, kafka_topic, kafka_partition, kafka_offset, projector_next_offset)
         VALUES (137, $1, $2, 'FAIR', '[]', 'bench', 'sha', $3, 'bench', 0, 0, 0)",
    )
    .bind(wallet)
    .bind(score)
    .bind(chainfold_testkit::unique("bench"))
    .execute(pool)
    .await
    .expect("score");
}

/// Commit → received latencies (ms) of `n` score rows for WALLET on `ws`.
async fn push_latency(pool: &sqlx::PgPool, ws: &mut Ws, n: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let started = Instant::now();
        insert_score(pool, WALLET, 300 + (i % 500) as i32).await;
        loop {
            let message = tokio::time::timeout(Duration::from_secs(10), ws.next())
                .await
                .expect("update within 10 s")
                .expect("open")
                .expect("frame");
            if let Message::Text(t) = message {
                if t.contains("\"next\"") {
                    break;
                }
            }
        }
        out.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    out
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(300);
    let iso = Isolated::new("bench-api").await;
    // The Polygon histories, replayed and projected: the point query reads real rows.
    chainfold_tests::replay_and_project(&iso, Dataset::Polygon).await;
    let pool = chainfold_platform::postgres::connect_and_migrate(&iso.postgres)
        .await
        .expect("pg");
    insert_score(&pool, WALLET, 505).await;
    let (_, key) = chainfold_api::auth::create_key(&pool, "bench", u32::MAX / 2)
        .await
        .expect("key");

    // The server: the release binary, its own process.
    let binary = std::path::PathBuf::from(
        std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into()),
    )
    .join("release/chainfold");
    assert!(
        binary.exists(),
        "{} missing: cargo build --release -p chainfold-cli",
        binary.display()
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("port")
        .local_addr()
        .expect("addr")
        .port();
    let base = chainfold_testkit::database_url();
    let database_url = format!(
        "{}/{}",
        base.rsplit_once('/').expect("db path").0,
        iso.database
    );
    let serve = |port: u16, redis_reads: bool| {
        Command::new(&binary)
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--redis-reads",
                &redis_reads.to_string(),
                // Section 3 opens 10,000 subscriptions over 100 connections with one key, beside
                // section 2's connection and subscription: the per-key caps (16 connections,
                // 256 subscriptions by default) are raised so the benchmark measures the
                // server's capacity, not its caps.
                "--max-ws-connections",
                "101",
                "--max-subscriptions",
                "10001",
            ])
            .env("DATABASE_URL", &database_url)
            .env(
                "CHAINFOLD_KAFKA_BROKERS",
                chainfold_testkit::kafka_brokers(),
            )
            .env("CHAINFOLD_TOPIC_PREFIX", &iso.kafka.topic_prefix)
            .env("CHAINFOLD_REDIS_PREFIX", &iso.redis.prefix)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("chainfold serve starts")
    };
    let server = Server(serve(port, true));
    let pid = server.0.id();
    let direct_port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("port")
        .local_addr()
        .expect("addr")
        .port();
    let _direct = Server(serve(direct_port, false));
    let health = format!("http://127.0.0.1:{port}/health");
    for p in [port, direct_port] {
        for _ in 0..100 {
            if reqwest::get(format!("http://127.0.0.1:{p}/health"))
                .await
                .is_ok()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let idle_rss = rss_mib(pid);

    // 1. Point query vs /health under wrk.
    let dir = std::env::temp_dir().join(chainfold_testkit::unique("wrk"));
    std::fs::create_dir_all(&dir).expect("dir");
    let query = format!(
        r#"{{ wallet(chainId: 137, address: \"{WALLET}\") {{ lendingSummary {{ action count amountUsd }} creditScore {{ score band }} }} }}"#
    );
    let body = format!(r#"{{"query":"{query}"}}"#);
    for p in [port, direct_port] {
        let check: Value = reqwest::Client::new()
            .post(format!("http://127.0.0.1:{p}/graphql"))
            .header("content-type", "application/json")
            .header("x-api-key", &key)
            .body(body.clone())
            .send()
            .await
            .expect("query")
            .json()
            .await
            .expect("json");
        assert_eq!(
            check["data"]["wallet"]["creditScore"]["score"], 505,
            "{check}"
        );
    }
    let post = dir.join("post.lua");
    std::fs::write(
        &post,
        format!(
            "wrk.method = \"POST\"\nwrk.body = [[{body}]]\nwrk.headers[\"Content-Type\"] = \"application/json\"\nwrk.headers[\"x-api-key\"] = \"{key}\"\n"
        ),
    )
    .expect("script");
    let get = dir.join("get.lua");
    std::fs::write(&get, "wrk.method = \"GET\"\n").expect("script");
    let (mut hs, mut qs, mut ds) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..3 {
        hs.push(wrk(&health, &get));
        qs.push(wrk(&format!("http://127.0.0.1:{port}/graphql"), &post));
        ds.push(wrk(
            &format!("http://127.0.0.1:{direct_port}/graphql"),
            &post,
        ));
    }
    let med = |v: &[(f64, f64, f64)]| {
        (
            median(v.iter().map(|x| x.0).collect()),
            median(v.iter().map(|x| x.1).collect()),
            median(v.iter().map(|x| x.2).collect()),
        )
    };
    let ((h50, h99, hrps), (q50, q99, qrps), (d50, d99, drps)) = (med(&hs), med(&qs), med(&ds));
    // Latency at a load below saturation: wrk keeps `c` requests in flight, so fewer
    // connections trade throughput for queueing delay. Each row: the point query from Redis and
    // /health at the same concurrency, interleaved, medians of 3.
    let mut at_load = Vec::new();
    for c in [8, 16] {
        let (mut h, mut q) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            h.push(wrk_with(c, &health, &get));
            q.push(wrk_with(
                c,
                &format!("http://127.0.0.1:{port}/graphql"),
                &post,
            ));
        }
        at_load.push((c, med(&q), med(&h)));
    }
    let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let hits = metrics
        .lines()
        .find_map(|l| l.strip_prefix("chainfold_api_redis_reads_total{result=\"hit\"} "))
        .unwrap_or("?")
        .to_owned();
    // A filtered, ordered collection page (Graph-style where, keyset order, totalCount).
    let collection = json!({ "query": format!(
        r#"{{ lendingEvents(chainId: 137, where: {{wallet: "{WALLET}", action_in: [DEPOSIT, BORROW], amountUsd_gt: "1"}}, orderBy: amountUsd, orderDirection: desc, first: 20) {{ totalCount edges {{ cursor node {{ eventId action amountUsd blockTime }} }} }} }}"#
    )})
    .to_string();
    let check: Value = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/graphql"))
        .header("x-api-key", &key)
        .header("content-type", "application/json")
        .body(collection.clone())
        .send()
        .await
        .expect("query")
        .json()
        .await
        .expect("json");
    assert!(
        check["data"]["lendingEvents"]["totalCount"].as_i64() > Some(0),
        "{check}"
    );
    let filtered = dir.join("collection.lua");
    std::fs::write(
        &filtered,
        format!(
            "wrk.method = \"POST\"\nwrk.body = [[{collection}]]\nwrk.headers[\"Content-Type\"] = \"application/json\"\nwrk.headers[\"x-api-key\"] = \"{key}\"\n"
        ),
    )
    .expect("script");
    let (c50, c99, crps) = wrk(&format!("http://127.0.0.1:{port}/graphql"), &filtered);
    let loaded_rss = rss_mib(pid);
    println!(
        "point query (wrk -t2 -c32 -d10s, medians of 3): Redis reads p50 {q50:.2} ms, p99 {q99:.2} ms, {qrps:.0} req/s ({hits} Redis hits); Postgres only p50 {d50:.2} ms, p99 {d99:.2} ms, {drps:.0} req/s; /health baseline p50 {h50:.2} ms, p99 {h99:.2} ms, {hrps:.0} req/s; ratio req/s to /health {:.2}x (Redis) and {:.2}x (Postgres)",
        qrps / hrps,
        drps / hrps
    );
    for (c, (q50, q99, qrps), (h50, h99, hrps)) in &at_load {
        println!(
            "point query at {c} connections (medians of 3): Redis reads p50 {q50:.2} ms, p99 {q99:.2} ms, {qrps:.0} req/s; /health p50 {h50:.2} ms, p99 {h99:.2} ms, {hrps:.0} req/s; ratio {:.2}x",
            qrps / hrps
        );
    }
    println!(
        "filtered collection page (where + orderBy + totalCount, first 20): p50 {c50:.2} ms, p99 {c99:.2} ms, {crps:.0} req/s; ratio req/s to /health {:.2}x",
        crps / hrps
    );

    // 2. Commit → subscriber, against a bare LISTEN/NOTIFY.
    let mut listener = sqlx::postgres::PgListener::connect_with(&pool)
        .await
        .expect("listener");
    listener.listen("bench_channel").await.expect("listen");
    let mut bare = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        sqlx::query("SELECT pg_notify('bench_channel', 'x')")
            .execute(&pool)
            .await
            .expect("notify");
        listener.recv().await.expect("notification");
        bare.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    let mut ws = ws_connect(port, &key).await;
    subscribe(&mut ws, 0, WALLET).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let one = push_latency(&pool, &mut ws, n).await;
    println!(
        "commit → subscriber ({n} updates, 1 subscription): p50 {:.2} ms, p99 {:.2} ms; bare LISTEN/NOTIFY p50 {:.2} ms, p99 {:.2} ms; ratio p50 {:.2}x",
        percentile(one.clone(), 0.5),
        percentile(one.clone(), 0.99),
        percentile(bare.clone(), 0.5),
        percentile(bare.clone(), 0.99),
        percentile(one.clone(), 0.5) / percentile(bare.clone(), 0.5)
    );

    // 3. 10,000 subscriptions.
    let before = rss_mib(pid);
    let mut sockets = Vec::with_capacity(100);
    for c in 0..100 {
        let mut s = ws_connect(port, &key).await;
        for i in 0..100 {
            subscribe(&mut s, i, &format!("0x{:040x}", c * 100 + i + 1)).await;
        }
        sockets.push(s);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let active: i64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("chainfold_subscriptions_active "))
        .and_then(|v| v.parse().ok())
        .expect("active");
    let after = rss_mib(pid);
    let crowded = push_latency(&pool, &mut ws, n.min(100)).await;
    println!(
        "{active} open subscriptions: server RSS {after:.1} MiB (idle {idle_rss:.1}, after wrk {loaded_rss:.1}, before the 10,000 {before:.1}: {:.1} KiB per subscription); commit → subscriber with them open p50 {:.2} ms, p99 {:.2} ms",
        (after - before) * 1024.0 / (active - 1).max(1) as f64,
        percentile(crowded.clone(), 0.5),
        percentile(crowded, 0.99)
    );
    drop(sockets);
    drop(server);
}
