//! The API's push side and access control over real connections: subscriptions over
//! WebSocket (graphql-transport-ws and the legacy graphql-ws) fed by what Postgres commits,
//! resumed after a disconnect with no gap and no duplicate; API keys, books owned by keys,
//! per-IP and per-key rate limits; `/metrics`.

use std::time::Duration;

use chainfold_testkit::Isolated;
use futures::{SinkExt as _, StreamExt as _};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const WALLET: &str = "0x00000000000000000000000000000000000000a1";
const OTHER: &str = "0x00000000000000000000000000000000000000b2";

/// Stores a score row the way the scorer does (one INSERT statement, committed).
async fn store_scores(pool: &sqlx::PgPool, rows: &[(&str, i32)]) {
    let wallets: Vec<String> = rows.iter().map(|r| r.0.to_owned()).collect();
    let scores: Vec<i32> = rows.iter().map(|r| r.1).collect();
    let events: Vec<String> = rows
        .iter()
        .map(|_| chainfold_testkit::unique("event"))
        .collect();
    sqlx::query(
        "INSERT INTO credit_score (chain_id, wallet, score, band, reasons, model_version,
                                   model_sha256, event_id, kafka_topic, kafka_partition,
                                   kafka_offset, projector_next_offset)
         SELECT 137, w, s, 'FAIR', '[]', 'test', 'sha', e, 'chainfold.lending.v1', 0, 0, 0
         FROM UNNEST($1::text[], $2::int4[], $3::text[]) AS t(w, s, e)",
    )
    .bind(&wallets)
    .bind(&scores)
    .bind(&events)
    .execute(pool)
    .await
    .expect("scores stored");
}

async fn connect(port: u16, protocol: &str) -> Ws {
    let mut request = format!("ws://127.0.0.1:{port}/graphql")
        .into_client_request()
        .expect("request");
    request.headers_mut().insert(
        "sec-websocket-protocol",
        protocol.parse().expect("protocol header"),
    );
    let (ws, response) = tokio_tungstenite::connect_async(request)
        .await
        .expect("websocket connects");
    assert_eq!(
        response
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok()),
        Some(protocol)
    );
    ws
}

async fn send(ws: &mut Ws, message: Value) {
    ws.send(Message::Text(message.to_string().into()))
        .await
        .expect("send");
}

/// The next JSON message that is not a keep-alive, within 10 s.
async fn next(ws: &mut Ws) -> Value {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a message within 10 s")
            .expect("socket open")
            .expect("frame");
        if let Message::Text(text) = message {
            let value: Value = serde_json::from_str(&text).expect("json");
            if value["type"] != "ka" && value["type"] != "ping" {
                return value;
            }
        }
    }
}

/// Nothing but keep-alives for `wait`.
async fn quiet(ws: &mut Ws, wait: Duration) {
    let end = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(end, ws.next()).await {
            Err(_) => return,
            Ok(Some(Ok(Message::Text(text)))) => {
                let value: Value = serde_json::from_str(&text).expect("json");
                assert!(
                    value["type"] == "ka" || value["type"] == "ping",
                    "unexpected {value}"
                );
            }
            Ok(other) => panic!("unexpected {other:?}"),
        }
    }
}

/// Opens a graphql-transport-ws subscription with `key`; returns the socket after the ack.
async fn subscribe(port: u16, key: &str, query: &str) -> Ws {
    let mut ws = connect(port, "graphql-transport-ws").await;
    send(
        &mut ws,
        json!({"type": "connection_init", "payload": {"apiKey": key}}),
    )
    .await;
    assert_eq!(next(&mut ws).await["type"], "connection_ack");
    send(
        &mut ws,
        json!({"type": "subscribe", "id": "1", "payload": {"query": query}}),
    )
    .await;
    ws
}

/// The error code of a refused subscription: an `error` message, or a `next` carrying errors.
fn error_code(message: &Value) -> Option<String> {
    let errors = match message["type"].as_str() {
        Some("error") => &message["payload"],
        Some("next") => &message["payload"]["errors"],
        _ => return None,
    };
    errors[0]["extensions"]["code"].as_str().map(str::to_owned)
}

/// The score update of a `next` message: (cursor, wallet, score).
fn update(message: &Value) -> (String, String, i64) {
    assert_eq!(message["type"], "next", "{message}");
    let u = &message["payload"]["data"]["scoreUpdated"];
    (
        u["cursor"].as_str().expect("cursor").to_owned(),
        u["wallet"].as_str().expect("wallet").to_owned(),
        u["score"]["score"].as_i64().expect("score"),
    )
}

async fn start_api(iso: &Isolated, public_rate: u32) -> (u16, sqlx::PgPool) {
    let mut config = chainfold_api::Config::new(
        iso.postgres.clone(),
        iso.redis.clone(),
        "127.0.0.1:0".parse().expect("addr"),
    );
    config.kafka = iso.kafka.clone();
    config.public_rate_per_minute = public_rate;
    let app = chainfold_api::App::build(config).await.expect("api starts");
    let port = app.port();
    tokio::spawn(app.run_until_stopped(std::future::pending()));
    let pool = chainfold_platform::postgres::connect_and_migrate(&iso.postgres)
        .await
        .expect("postgres");
    (port, pool)
}

async fn post(port: u16, key: Option<&str>, query: &str) -> (u16, Value) {
    let client = reqwest::Client::new();
    let mut request = client
        .post(format!("http://127.0.0.1:{port}/graphql"))
        .json(&json!({ "query": query }));
    if let Some(key) = key {
        request = request.header("x-api-key", key);
    }
    let response = request.send().await.expect("http");
    let status = response.status().as_u16();
    (status, response.json().await.expect("json body"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_resumes_after_a_disconnect_with_no_gap_and_no_duplicate() {
    let iso = Isolated::new("subs").await;
    let (port, pool) = start_api(&iso, 600).await;
    let (_, key) = chainfold_api::auth::create_key(&pool, "lender", 600)
        .await
        .expect("key");
    let query = format!(
        r#"subscription {{ scoreUpdated(chainId: 137, wallets: ["{WALLET}"]) {{ cursor wallet score {{ score band }} }} }}"#
    );
    let mut ws = subscribe(port, &key, &query).await;
    // Give the server a moment to register the subscription before the first commit.
    tokio::time::sleep(Duration::from_millis(300)).await;
    store_scores(&pool, &[(WALLET, 610), (OTHER, 400)]).await;
    let first = update(&next(&mut ws).await);
    assert_eq!((first.1.as_str(), first.2), (WALLET, 610));
    quiet(&mut ws, Duration::from_millis(500)).await; // OTHER is filtered out
    drop(ws);

    // While disconnected: two scores of the wallet (one statement), one of another wallet.
    store_scores(&pool, &[(WALLET, 620), (OTHER, 410), (WALLET, 630)]).await;
    let resumed = format!(
        r#"subscription {{ scoreUpdated(chainId: 137, wallets: ["{WALLET}"], after: "{}") {{ cursor wallet score {{ score }} }} }}"#,
        first.0
    );
    let mut ws = subscribe(port, &key, &resumed).await;
    let missed: Vec<_> = vec![update(&next(&mut ws).await), update(&next(&mut ws).await)];
    assert_eq!(
        missed.iter().map(|m| m.2).collect::<Vec<_>>(),
        vec![620, 630],
        "{missed:?}"
    );
    // Then live, in cursor order, nothing twice.
    store_scores(&pool, &[(WALLET, 640)]).await;
    let live = update(&next(&mut ws).await);
    assert_eq!(live.2, 640);
    let cursors: Vec<i64> = [&first, &missed[0], &missed[1], &live]
        .iter()
        .map(|u| u.0.parse().expect("numeric cursor"))
        .collect();
    assert!(cursors.windows(2).all(|w| w[0] < w[1]), "{cursors:?}");
    quiet(&mut ws, Duration::from_millis(500)).await;

    // The legacy graphql-ws protocol gets the same feed.
    let mut legacy = connect(port, "graphql-ws").await;
    send(
        &mut legacy,
        json!({"type": "connection_init", "payload": {"apiKey": key}}),
    )
    .await;
    assert_eq!(next(&mut legacy).await["type"], "connection_ack");
    send(
        &mut legacy,
        json!({"type": "start", "id": "7", "payload": {"query": format!(
            r#"subscription {{ scoreUpdated(wallets: ["{WALLET}"], after: "{}") {{ cursor score {{ score }} }} }}"#,
            missed[1].0
        )}}),
    )
    .await;
    let data = next(&mut legacy).await;
    assert_eq!(data["type"], "data", "{data}");
    assert_eq!(data["id"], "7");
    assert_eq!(
        data["payload"]["data"]["scoreUpdated"]["score"]["score"],
        640
    );

    // /metrics counts the open subscriptions.
    let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let active: i64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("chainfold_subscriptions_active "))
        .expect("active gauge")
        .parse()
        .expect("number");
    assert_eq!(active, 2, "{metrics}");
    assert!(metrics.contains("chainfold_kafka_up 1"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_guard_mutations_subscriptions_and_books_and_rate_limits_refuse() {
    let iso = Isolated::new("keys").await;
    let (port, pool) = start_api(&iso, 5).await;
    let (_, key_a) = chainfold_api::auth::create_key(&pool, "lender a", 600)
        .await
        .expect("key");
    let (id_b, key_b) = chainfold_api::auth::create_key(&pool, "lender b", 4)
        .await
        .expect("key");
    let create = format!(
        r#"mutation {{ createBook(name: "watch", wallets: [{{chainId: 137, address: "{WALLET}"}}]) {{ id name wallets {{ chainId address }} }} }}"#
    );
    // A mutation without a key is refused, naming what it needs.
    let (status, body) = post(port, None, &create).await;
    assert_eq!(status, 200);
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "UNAUTHENTICATED",
        "{body}"
    );
    // An unknown key is refused outright.
    let (status, body) = post(port, Some("cf_not_a_key"), "{ books { id } }").await;
    assert_eq!(status, 401, "{body}");
    // With a key: the book is created and listed for its owner only.
    let (_, body) = post(port, Some(&key_a), &create).await;
    let book = body["data"]["createBook"]["id"]
        .as_str()
        .expect("book id")
        .to_owned();
    assert_eq!(
        body["data"]["createBook"]["wallets"][0]["address"], WALLET,
        "{body}"
    );
    let (_, body) = post(port, Some(&key_b), "{ books { id } }").await;
    assert_eq!(body["data"]["books"], json!([]), "{body}");
    let (_, body) = post(
        port,
        Some(&key_b),
        &format!(r#"{{ book(id: "{book}") {{ id }} }}"#),
    )
    .await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "NOT_FOUND",
        "{body}"
    );

    // Subscriptions: none without a key; another key's book is not found; the owner's book
    // delivers its wallets' scores.
    let by_book = format!(
        r#"subscription {{ scoreUpdated(book: "{book}") {{ wallet score {{ score }} }} }}"#
    );
    let mut anonymous = connect(port, "graphql-transport-ws").await;
    send(&mut anonymous, json!({"type": "connection_init"})).await;
    assert_eq!(next(&mut anonymous).await["type"], "connection_ack");
    send(
        &mut anonymous,
        json!({"type": "subscribe", "id": "1", "payload": {"query": by_book}}),
    )
    .await;
    let refused = next(&mut anonymous).await;
    assert_eq!(
        error_code(&refused).as_deref(),
        Some("UNAUTHENTICATED"),
        "{refused}"
    );
    let mut other = subscribe(port, &key_b, &by_book).await;
    let refused = next(&mut other).await;
    assert_eq!(
        error_code(&refused).as_deref(),
        Some("NOT_FOUND"),
        "{refused}"
    );
    let mut owner = subscribe(port, &key_a, &by_book).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    store_scores(&pool, &[(OTHER, 500), (WALLET, 700)]).await;
    let got = next(&mut owner).await;
    assert_eq!(
        got["payload"]["data"]["scoreUpdated"]["wallet"], WALLET,
        "{got}"
    );

    // Rate limits: key b has 4 operations a minute, three spent above (two requests and one
    // subscription over its WebSocket: WebSocket operations are metered like requests);
    // anonymous callers 5 per IP, which the two anonymous requests above began to spend.
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(post(port, Some(&key_b), "{ books { id } }").await.0);
    }
    assert_eq!(statuses, vec![200, 429, 429], "key b: {statuses:?}");
    let (status, body) = post(port, Some(&key_b), "{ books { id } }").await;
    assert_eq!(
        (status, &body["errors"][0]["extensions"]["code"]),
        (429, &json!("RATE_LIMITED"))
    );
    // Key a is unaffected by key b's budget.
    assert_eq!(post(port, Some(&key_a), "{ books { id } }").await.0, 200);
    let mut anonymous_statuses = Vec::new();
    for _ in 0..5 {
        anonymous_statuses.push(
            post(port, None, "{ alerts(chainId: 1) { totalCount } }")
                .await
                .0,
        );
    }
    assert!(anonymous_statuses.contains(&429), "{anonymous_statuses:?}");

    // A revoked key is refused as soon as the API hears of it (its lookups are cached; the
    // revocation's NOTIFY evicts the key), well before the cache's 30 s expiry.
    // (Still known before: its budget is spent, so 429, not 401.)
    assert_eq!(post(port, Some(&key_b), "{ books { id } }").await.0, 429);
    assert!(chainfold_api::auth::revoke_key(&pool, id_b)
        .await
        .expect("revoke"));
    let revoked = std::time::Instant::now();
    loop {
        let status = post(port, Some(&key_b), "{ books { id } }").await.0;
        if status == 401 {
            break;
        }
        assert!(
            revoked.elapsed() < Duration::from_secs(2),
            "a revoked key still answered {status} after 2 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The repeated requests of one key were answered from the cache.
    let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let hits: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("chainfold_api_key_cache_hits_total "))
        .expect("cache hits counter")
        .parse()
        .expect("number");
    assert!(hits > 0, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analysts_read_finalized_views_and_as_of_functions_and_cannot_write() {
    let iso = Isolated::new("analyst").await;
    let pool = chainfold_platform::postgres::connect_and_migrate(&iso.postgres)
        .await
        .expect("postgres");
    // Deposit 100 at block 10, borrow 40 at 20, repay 10 at 30; head 35 with 10 confirmations:
    // blocks up to 25 are final.
    for (id, action, amount, block) in [
        ("e1", "deposit", 100, 10i64),
        ("e2", "borrow", 40, 20),
        ("e3", "repay", 10, 30),
    ] {
        sqlx::query(
            "INSERT INTO lending_event (event_id, chain_id, wallet, action, protocol, reserve, symbol,
                 decimals, amount, block_number, kafka_topic, kafka_partition, kafka_offset)
             VALUES ($1, 31337, $2, $3, 'aave_v2', '0xr', 'USDC', 6, $4, $5, 't', 0, 0)",
        )
        .bind(id)
        .bind(WALLET)
        .bind(action)
        .bind(bigdecimal::BigDecimal::from(amount))
        .bind(block)
        .execute(&pool)
        .await
        .expect("event");
    }
    sqlx::query(
        "INSERT INTO chain_head (chain_id, name, number, hash, parent_hash, confirmations)
         VALUES (31337, 'anvil', 35, '0xh', '0xp', 10)",
    )
    .execute(&pool)
    .await
    .expect("head");
    let finalized: Vec<String> = sqlx::query_scalar(
        "SELECT event_id FROM lending_event_finalized WHERE chain_id = 31337 ORDER BY event_id",
    )
    .fetch_all(&pool)
    .await
    .expect("finalized");
    assert_eq!(finalized, vec!["e1", "e2"]);
    let as_of = |block: i64| {
        let pool = pool.clone();
        async move {
            sqlx::query_as::<_, (f64, f64)>(
                "SELECT collateral::float8, variable_debt::float8 FROM lending_position_as_of(31337, $1)
                 WHERE wallet = $2",
            )
            .bind(block)
            .bind(WALLET)
            .fetch_one(&pool)
            .await
            .expect("position")
        }
    };
    assert_eq!(as_of(20).await, (100.0, 40.0));
    assert_eq!(as_of(30).await, (100.0, 30.0));

    // The analyst role reads, and is refused every write and the key table.
    let mut conn = pool.acquire().await.expect("connection");
    sqlx::query("SET ROLE chainfold_analyst")
        .execute(&mut *conn)
        .await
        .expect("set role");
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM lending_event")
        .fetch_one(&mut *conn)
        .await
        .expect("analyst reads");
    assert_eq!(n, 3);
    // The score views too (a migration made them again), with the reasons as `json`.
    for view in ["credit_score_latest", "credit_score_finalized"] {
        sqlx::query_scalar::<_, Option<String>>(&format!("SELECT max(reasons->>0) FROM {view}"))
            .fetch_one(&mut *conn)
            .await
            .unwrap_or_else(|err| panic!("analyst reads {view}: {err}"));
    }
    for statement in [
        "DELETE FROM lending_event",
        "UPDATE credit_score SET score = 850",
        "INSERT INTO book (api_key_id, name) VALUES (1, 'x')",
        "SELECT count(*) FROM api_key",
    ] {
        let err = sqlx::query(statement)
            .execute(&mut *conn)
            .await
            .expect_err(statement);
        let code = err
            .as_database_error()
            .and_then(|e| e.code())
            .map(|c| c.into_owned());
        assert_eq!(code.as_deref(), Some("42501"), "{statement}: {err}");
    }
    sqlx::query("RESET ROLE")
        .execute(&mut *conn)
        .await
        .expect("reset");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_updates_are_pushed_per_sync_and_resume_by_cursor() {
    let iso = Isolated::new("poolsub").await;
    let (port, pool) = start_api(&iso, 600).await;
    let (_, key) = chainfold_api::auth::create_key(&pool, "desk", 600)
        .await
        .expect("key");
    let pair = "0x00000000000000000000000000000000000000c3";
    let other = "0x00000000000000000000000000000000000000d4";
    // Syncs of two pools, committed as the projector commits them.
    let syncs = |rows: Vec<(&'static str, i64, i64)>| {
        let pool = pool.clone();
        async move {
            for (p, r0, r1) in rows {
                sqlx::query(
                    "INSERT INTO pool_sync (event_id, chain_id, pool, protocol, token0, token1,
                         reserve0, reserve1, block_number, kafka_topic, kafka_partition, kafka_offset)
                     VALUES ($1, 31337, $2, 'uniswap_v2', '0xt0', '0xt1', $3, $4, 7, 't', 0, 0)",
                )
                .bind(chainfold_testkit::unique("sync"))
                .bind(p)
                .bind(bigdecimal::BigDecimal::from(r0))
                .bind(bigdecimal::BigDecimal::from(r1))
                .execute(&pool)
                .await
                .expect("sync");
            }
        }
    };
    let query = format!(
        r#"subscription {{ poolUpdated(pools: ["{pair}"]) {{ cursor pool reserves blockNumber }} }}"#
    );
    let mut ws = subscribe(port, &key, &query).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    syncs(vec![(other, 1, 1), (pair, 1000, 2000)]).await;
    let got = next(&mut ws).await;
    let u = &got["payload"]["data"]["poolUpdated"];
    assert_eq!(u["pool"], pair, "{got}");
    assert_eq!(u["reserves"], json!(["1000", "2000"]));
    let cursor = u["cursor"].as_str().expect("cursor").to_owned();
    drop(ws);
    syncs(vec![(pair, 900, 2100), (other, 2, 2)]).await;
    let resumed = format!(
        r#"subscription {{ poolUpdated(pools: ["{pair}"], after: "{cursor}") {{ reserves }} }}"#
    );
    let mut ws = subscribe(port, &key, &resumed).await;
    let got = next(&mut ws).await;
    assert_eq!(
        got["payload"]["data"]["poolUpdated"]["reserves"],
        json!(["900", "2100"]),
        "{got}"
    );
    quiet(&mut ws, Duration::from_millis(500)).await;
}

/// Stores one score row per (wallet, health factor), one committed statement each.
async fn store_health(pool: &sqlx::PgPool, rows: &[(&str, Option<f64>)]) {
    for (wallet, hf) in rows {
        sqlx::query(
            "INSERT INTO credit_score (chain_id, wallet, score, band, reasons, model_version,
                                       model_sha256, event_id, kafka_topic, kafka_partition,
                                       kafka_offset, projector_next_offset, health_factor)
             VALUES (137, $1, 600, 'FAIR', '[]', 'test', 'sha', $2, 'chainfold.lending.v1', 0, 0, 0, $3)",
        )
        .bind(wallet)
        .bind(chainfold_testkit::unique("event"))
        .bind(hf)
        .execute(pool)
        .await
        .expect("score stored");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_factor_thresholds_are_evaluated_on_the_server_and_deleted_scores_are_retracted() {
    let iso = Isolated::new("hfbelow").await;
    let (port, pool) = start_api(&iso, 600).await;
    let (_, key) = chainfold_api::auth::create_key(&pool, "desk", 600)
        .await
        .expect("key");
    // WALLET is already under the line when the lender subscribes; OTHER is above it.
    store_health(&pool, &[(WALLET, Some(1.05)), (OTHER, Some(1.6))]).await;
    let query = format!(
        r#"subscription {{ healthFactorBelow(chainId: 137, threshold: 1.1, hysteresis: 0.1, wallets: ["{WALLET}", "{OTHER}"]) {{ cursor wallet state healthFactor threshold }} }}"#
    );
    let mut ws = subscribe(port, &key, &query).await;
    let alert = |m: &Value| {
        assert_eq!(m["type"], "next", "{m}");
        let a = &m["payload"]["data"]["healthFactorBelow"];
        (
            a["wallet"].as_str().expect("wallet").to_owned(),
            a["state"].as_str().expect("state").to_owned(),
            a["healthFactor"].as_f64(),
        )
    };
    assert_eq!(
        alert(&next(&mut ws).await),
        (WALLET.to_owned(), "BELOW".to_owned(), Some(1.05))
    );
    quiet(&mut ws, Duration::from_millis(300)).await;
    // OTHER crosses down; WALLET rises into the hysteresis band (nothing), then out of it.
    store_health(&pool, &[(OTHER, Some(1.08))]).await;
    assert_eq!(
        alert(&next(&mut ws).await),
        (OTHER.to_owned(), "BELOW".to_owned(), Some(1.08))
    );
    store_health(&pool, &[(WALLET, Some(1.15)), (OTHER, Some(1.02))]).await;
    store_health(&pool, &[(WALLET, Some(1.25))]).await;
    assert_eq!(
        alert(&next(&mut ws).await),
        (WALLET.to_owned(), "RECOVERED".to_owned(), Some(1.25))
    );
    quiet(&mut ws, Duration::from_millis(300)).await;
    // Repaid: no debt, no health factor — recovered.
    store_health(&pool, &[(OTHER, None)]).await;
    assert_eq!(
        alert(&next(&mut ws).await),
        (OTHER.to_owned(), "RECOVERED".to_owned(), None)
    );

    // A score deleted (as the scorer does for an orphaned event) is retracted to subscribers.
    let query = format!(
        r#"subscription {{ scoreUpdated(wallets: ["{OTHER}"]) {{ cursor retracted retracts score {{ healthFactor }} }} }}"#
    );
    let mut scores = subscribe(port, &key, &query).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    store_health(&pool, &[(OTHER, Some(1.3))]).await;
    let sent = next(&mut scores).await;
    let sent = &sent["payload"]["data"]["scoreUpdated"];
    assert_eq!(sent["retracted"], false, "{sent}");
    let cursor: i64 = sent["cursor"]
        .as_str()
        .expect("cursor")
        .parse()
        .expect("number");
    sqlx::query("DELETE FROM credit_score WHERE id = $1")
        .bind(cursor)
        .execute(&pool)
        .await
        .expect("delete");
    let undone = next(&mut scores).await;
    let undone = &undone["payload"]["data"]["scoreUpdated"];
    assert_eq!(undone["retracted"], true, "{undone}");
    assert_eq!(undone["retracts"], cursor.to_string());
    assert_eq!(undone["score"]["healthFactor"], 1.3);
    assert!(
        undone["cursor"]
            .as_str()
            .expect("cursor")
            .parse::<i64>()
            .expect("n")
            > cursor
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_queries_and_responses_are_refused_with_the_limit_named() {
    let iso = Isolated::new("limits").await;
    let mut config = chainfold_api::Config::new(
        iso.postgres.clone(),
        iso.redis.clone(),
        "127.0.0.1:0".parse().expect("addr"),
    );
    config.kafka = iso.kafka.clone();
    config.max_response_bytes = 4096;
    let app = chainfold_api::App::build(config).await.expect("api starts");
    let port = app.port();
    tokio::spawn(app.run_until_stopped(std::future::pending()));
    let pool = chainfold_platform::postgres::connect_and_migrate(&iso.postgres)
        .await
        .expect("postgres");
    let wallets: Vec<String> = (0..60).map(|i| format!("0x{i:040x}")).collect();
    let rows: Vec<(&str, i32)> = wallets.iter().map(|w| (w.as_str(), 600)).collect();
    store_scores(&pool, &rows).await;

    // A small page fits; the whole set does not.
    let (status, body) = post(
        port,
        None,
        "{ scores(first: 2) { edges { node { wallet score } } } }",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        body["data"]["scores"]["edges"].as_array().map(Vec::len),
        Some(2),
        "{body}"
    );
    let (_, body) = post(
        port,
        None,
        "{ scores(first: 1000) { totalCount edges { cursor node { wallet score band modelVersion modelSha256 eventId } } } }",
    )
    .await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "RESPONSE_TOO_LARGE",
        "{body}"
    );
    assert!(body["errors"][0]["message"]
        .as_str()
        .expect("message")
        .contains("over the limit of 4096"));
    assert_eq!(body["data"], Value::Null);

    // Too complex (a nested connection multiplies), and too deep: refused before any SQL runs.
    let (_, body) = post(
        port,
        None,
        "{ wallets(first: 1000) { edges { node { address events(first: 1000) { edges { node { eventId amount } } } } } } }",
    )
    .await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "QUERY_TOO_COMPLEX",
        "{body}"
    );
    assert!(body["errors"][0]["message"]
        .as_str()
        .expect("message")
        .contains("over 50000"));
    let deep = format!(
        "{{ __schema {{ types {{ fields {{ type {{ {} name {} }} }} }} }} }}",
        "ofType { ".repeat(9),
        "} ".repeat(9)
    );
    let (_, body) = post(port, None, &deep).await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "QUERY_TOO_DEEP",
        "{body}"
    );
    assert!(body["errors"][0]["message"]
        .as_str()
        .expect("message")
        .contains("deeper than 12"));
}

/// Reads frames until the server closes: the close frame, if one came (`None` when the
/// connection just ended).
async fn closed(ws: &mut Ws) -> Option<tokio_tungstenite::tungstenite::protocol::CloseFrame> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("closed within 10 s")
        {
            Some(Ok(Message::Close(frame))) => return frame,
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abusive_numbers_counts_aliases_and_websockets_get_a_clear_error_and_the_api_stays_up() {
    let iso = Isolated::new("abuse").await;
    let mut config = chainfold_api::Config::new(
        iso.postgres.clone(),
        iso.redis.clone(),
        "127.0.0.1:0".parse().expect("addr"),
    );
    config.kafka = iso.kafka.clone();
    config.max_body_bytes = 1024 * 1024;
    config.max_ws_connections = 2;
    config.max_subscriptions = 2;
    config.max_ws_message_bytes = 4096;
    let app = chainfold_api::App::build(config).await.expect("api starts");
    let port = app.port();
    tokio::spawn(app.run_until_stopped(std::future::pending()));
    let pool = chainfold_platform::postgres::connect_and_migrate(&iso.postgres)
        .await
        .expect("postgres");
    let alive = || async {
        let (status, body) = post(port, None, "{ scores(first: 1) { edges { cursor } } }").await;
        assert_eq!(status, 200, "the API still answers: {body}");
    };

    // The number that grew the API to 8 GB: refused at once, naming the bound, as a string or
    // a number literal, in a filter of any collection.
    for (filter, bound) in [
        (
            r#"lendingEvents(chainId: 137, where: {amountUsd_gt: "1e-9000000000"}, first: 1)"#,
            "digits after the decimal point",
        ),
        (
            r#"lendingEvents(where: {amount_gte: "9e9000000000"})"#,
            "digits before the decimal point",
        ),
        (
            r#"swaps(where: {amountIn_lt: "1e-9000000000"})"#,
            "digits after the decimal point",
        ),
    ] {
        let (status, body) = tokio::time::timeout(
            Duration::from_secs(10),
            post(port, None, &format!("{{ {filter} {{ totalCount }} }}")),
        )
        .await
        .expect("answered, not computed for ever");
        assert_eq!(status, 200);
        let message = body["errors"][0]["message"].as_str().unwrap_or_default();
        assert!(message.contains(bound), "{filter}: {body}");
        assert_eq!(body["data"], Value::Null, "{body}");
    }
    let digits = format!(
        r#"{{ lendingEvents(where: {{amount_gt: "{}"}}) {{ totalCount }} }}"#,
        "9".repeat(5000)
    );
    let (_, body) = post(port, None, &digits).await;
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("longer than 200 characters"),
        "{body}"
    );
    alive().await;

    // totalCount is charged even on an empty page: four are answered, the fifth is refused
    // before its count runs.
    let counts = |n: usize| {
        let fields: String = (0..n)
            .map(|i| format!("c{i}: lendingEvents(chainId: 137, first: 0) {{ totalCount }} "))
            .collect();
        format!("{{ {fields} }}")
    };
    let (_, body) = post(port, None, &counts(4)).await;
    assert_eq!(body["data"]["c3"]["totalCount"], 0, "{body}");
    let (_, body) = post(port, None, &counts(5)).await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "QUERY_TOO_COMPLEX",
        "{body}"
    );
    assert!(body["errors"][0]["message"]
        .as_str()
        .unwrap_or_default()
        .contains("at most 4"));

    // Aliases are counted once each: ten wallet reads pass, three thousand do not.
    let aliases = |n: usize| {
        let fields: String = (0..n)
            .map(|i| {
                format!("w{i}: wallet(chainId: 137, address: $a) {{ creditScore {{ score }} }} ")
            })
            .collect();
        format!("query($a: String!) {{ {fields} }}")
    };
    let client = reqwest::Client::new();
    let aliased = |n: usize| {
        client
            .post(format!("http://127.0.0.1:{port}/graphql"))
            .json(&json!({"query": aliases(n), "variables": {"a": WALLET}}))
            .send()
    };
    let body: Value = aliased(10).await.expect("http").json().await.expect("json");
    assert!(body["errors"].is_null(), "{body}");
    assert_eq!(
        body["data"]["w9"],
        Value::Null,
        "an unknown wallet is null: {body}"
    );
    let body: Value = aliased(3000)
        .await
        .expect("http")
        .json()
        .await
        .expect("json");
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "QUERY_TOO_COMPLEX",
        "{body}"
    );
    alive().await;

    // WebSockets: at most two connections per key and two subscriptions per key, over all its
    // connections; another key is unaffected; a closed connection frees its slot.
    let (_, key) = chainfold_api::auth::create_key(&pool, "greedy", 600)
        .await
        .expect("key");
    let (_, other_key) = chainfold_api::auth::create_key(&pool, "other", 600)
        .await
        .expect("key");
    let feed = format!(
        r#"subscription {{ scoreUpdated(chainId: 137, wallets: ["{WALLET}"]) {{ wallet score {{ score }} }} }}"#
    );
    let mut first = subscribe(port, &key, &feed).await;
    let mut second = subscribe(port, &key, &feed).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    send(
        &mut second,
        json!({"type": "subscribe", "id": "2", "payload": {"query": feed}}),
    )
    .await;
    let refused = next(&mut second).await;
    assert_eq!(
        error_code(&refused).as_deref(),
        Some("TOO_MANY_SUBSCRIPTIONS"),
        "{refused}"
    );
    assert_eq!(refused["id"], "2");
    let done = next(&mut second).await;
    assert_eq!(
        (&done["type"], &done["id"]),
        (&json!("complete"), &json!("2"))
    );
    let mut third = connect(port, "graphql-transport-ws").await;
    send(
        &mut third,
        json!({"type": "connection_init", "payload": {"apiKey": key}}),
    )
    .await;
    let frame = closed(&mut third)
        .await
        .expect("a close frame with the reason");
    assert!(
        frame.reason.contains("too many WebSocket connections"),
        "{frame:?}"
    );
    // The two open subscriptions still deliver, and another key is not capped.
    let mut others = subscribe(port, &other_key, &feed).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    store_scores(&pool, &[(WALLET, 640)]).await;
    for ws in [&mut first, &mut second, &mut others] {
        let got = next(ws).await;
        assert_eq!(
            got["payload"]["data"]["scoreUpdated"]["score"]["score"], 640,
            "{got}"
        );
    }
    drop(first);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let mut again = connect(port, "graphql-transport-ws").await;
        send(
            &mut again,
            json!({"type": "connection_init", "payload": {"apiKey": key}}),
        )
        .await;
        let reply = tokio::time::timeout(Duration::from_secs(5), again.next())
            .await
            .expect("a reply");
        if matches!(&reply, Some(Ok(Message::Text(t))) if t.contains("connection_ack")) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slot was never freed: {reply:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A message over the size limit is not read: that connection is closed with 1009 ("message
    // too big") and the limit; the server and the key's other connections carry on.
    let mut big = subscribe(port, &other_key, &feed).await;
    let padding = " ".repeat(8000);
    send(
        &mut big,
        json!({"type": "subscribe", "id": "9", "payload": {"query": format!("{feed}{padding}")}}),
    )
    .await;
    let frame = closed(&mut big).await.expect("a close frame");
    assert_eq!(u16::from(frame.code), 1009, "{frame:?}");
    assert!(frame.reason.contains("at most 4096 bytes"), "{frame:?}");
    store_scores(&pool, &[(WALLET, 650)]).await;
    let got = next(&mut second).await;
    assert_eq!(
        got["payload"]["data"]["scoreUpdated"]["score"]["score"], 650,
        "{got}"
    );
    alive().await;
}
