//! The query surface against known data: Graph-style filters, ordering and Relay pagination
//! over the replayed Polygon wallets (expected values computed straight from the bundled JSON),
//! batched loading, and time travel (`block`, `finality`, `_meta`, histories) over rows with
//! known blocks.

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr as _;

use bigdecimal::BigDecimal;
use chainfold_ingest::replay::Dataset;
use chainfold_testkit::{data_dir, Isolated};
use serde_json::{json, Value};

async fn query(schema: &chainfold_api::ChainfoldSchema, query: &str) -> Value {
    let response = schema.execute(query).await;
    serde_json::to_value(&response).expect("response serialises")
}

async fn data(schema: &chainfold_api::ChainfoldSchema, q: &str) -> Value {
    let response = query(schema, q).await;
    assert!(response.get("errors").is_none(), "{q}\n{response}");
    response["data"].clone()
}

async fn error(schema: &chainfold_api::ChainfoldSchema, q: &str) -> String {
    let response = query(schema, q).await;
    response["errors"][0]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("{q} should fail: {response}"))
        .to_owned()
}

/// One record of the bundled Polygon file, as the read model names it.
struct Record {
    wallet: String,
    action: &'static str,
    symbol: String,
    amount: BigDecimal,
    usd: BigDecimal,
}

/// The bundled Polygon records, read straight from the JSON (not through the decoder).
fn polygon_records() -> Vec<Record> {
    let path =
        data_dir().join("aave-v2-polygon-wallet-txns/user-wallet-transactions.head1724.json.gz");
    let bytes = chainfold_ingest::replay::read_maybe_gzip(&path).expect("read bundled file");
    let records: Vec<Value> = serde_json::from_slice(&bytes).expect("a JSON array");
    let decimals = |symbol: &str| match symbol {
        "USDC" | "USDT" => 6,
        "WBTC" => 8,
        _ => 18,
    };
    records
        .iter()
        .map(|r| {
            let d = &r["actionData"];
            let text = |v: &Value| v.as_str().expect("string field").to_owned();
            let (action, amount, symbol, price) = match r["action"].as_str().expect("action") {
                "liquidationcall" => (
                    "liquidation",
                    text(&d["principalAmount"]),
                    text(&d["principalReserveSymbol"]),
                    text(&d["borrowAssetPriceUSD"]),
                ),
                other => (
                    match other {
                        "deposit" => "deposit",
                        "borrow" => "borrow",
                        "repay" => "repay",
                        _ => "redeem",
                    },
                    text(&d["amount"]),
                    text(&d["assetSymbol"]),
                    text(&d["assetPriceUSD"]),
                ),
            };
            let amount = BigDecimal::from_str(&amount).expect("amount");
            let usd = &amount / BigDecimal::from(10_u64.pow(decimals(&symbol)))
                * BigDecimal::from_str(&price).expect("price");
            Record {
                wallet: text(&r["userWallet"]).to_ascii_lowercase(),
                action,
                symbol,
                amount,
                usd,
            }
        })
        .collect()
}

fn total(v: &Value, field: &str) -> i64 {
    v[field]["totalCount"].as_i64().expect("totalCount")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graph_style_filters_orderings_and_pages_match_the_bundled_polygon_file() {
    let iso = Isolated::new("api_query").await;
    chainfold_tests::replay_and_project(&iso, Dataset::Polygon).await;
    let pool = chainfold_platform::postgres::connect_and_migrate(&iso.postgres)
        .await
        .expect("postgres");
    let loaders = chainfold_api::loaders::Loaders::new(pool.clone());
    let schema = chainfold_api::schema::build_parts(pool.clone(), None, None, loaders.clone());
    let records = polygon_records();
    let thousand = BigDecimal::from(1000);
    let big = BigDecimal::from(10_000);

    // Comparison and equality on an enum and a decimal.
    let expected = records
        .iter()
        .filter(|r| r.action == "borrow" && r.usd > thousand)
        .count() as i64;
    assert!(expected > 0);
    let got = data(
        &schema,
        r#"{ lendingEvents(chainId: 137, where: {action: BORROW, amountUsd_gt: "1000"}) { totalCount } }"#,
    )
    .await;
    assert_eq!(total(&got, "lendingEvents"), expected);

    // Nested or/and.
    let expected = records
        .iter()
        .filter(|r| r.action == "repay" || (r.action == "deposit" && r.usd >= big))
        .count() as i64;
    let got = data(
        &schema,
        r#"{ lendingEvents(where: {or: [{action: REPAY}, {and: [{action: DEPOSIT}, {amountUsd_gte: "10000"}]}]}) { totalCount } }"#,
    )
    .await;
    assert_eq!(total(&got, "lendingEvents"), expected);

    // _in / _not_in / _starts_with / _not.
    let mut per_wallet: BTreeMap<&str, Vec<&Record>> = BTreeMap::new();
    for r in &records {
        per_wallet.entry(&r.wallet).or_default().push(r);
    }
    let mut busiest: Vec<(&str, usize)> = per_wallet.iter().map(|(w, l)| (*w, l.len())).collect();
    busiest.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let (w1, w2) = (busiest[0].0, busiest[1].0);
    let expected = records
        .iter()
        .filter(|r| (r.wallet == w1 || r.wallet == w2) && r.action != "deposit")
        .count() as i64;
    let got = data(
        &schema,
        &format!(
            r#"{{ lendingEvents(where: {{wallet_in: ["{w1}", "{}"], action_not_in: [DEPOSIT]}}) {{ totalCount }} }}"#,
            w2.to_ascii_uppercase().replace("0X", "0x")
        ),
    )
    .await;
    assert_eq!(total(&got, "lendingEvents"), expected);
    let expected = records
        .iter()
        .filter(|r| r.symbol.starts_with("USD") && r.action != "liquidation")
        .count() as i64;
    let got = data(
        &schema,
        r#"{ lendingEvents(where: {symbol_starts_with: "USD", action_not: LIQUIDATION}) { totalCount } }"#,
    )
    .await;
    assert_eq!(total(&got, "lendingEvents"), expected);

    // Ordering by a decimal and paging through with cursors: every event once, in order.
    let mut want: Vec<BigDecimal> = per_wallet[w1].iter().map(|r| r.amount.clone()).collect();
    want.sort_by(|a, b| b.cmp(a));
    let mut seen = BTreeSet::new();
    let mut amounts = Vec::new();
    let mut after = String::from("null");
    let mut pages = 0;
    loop {
        let got = data(
            &schema,
            &format!(
                r#"{{ lendingEvents(where: {{wallet: "{w1}"}}, orderBy: amount, orderDirection: desc, first: 3, after: {after}) {{
                    totalCount edges {{ cursor node {{ eventId amount }} }} pageInfo {{ hasNextPage endCursor }} }} }}"#
            ),
        )
        .await;
        let page = &got["lendingEvents"];
        assert_eq!(page["totalCount"].as_i64(), Some(want.len() as i64));
        for edge in page["edges"].as_array().expect("edges") {
            assert!(seen.insert(edge["node"]["eventId"].as_str().expect("id").to_owned()));
            amounts.push(
                BigDecimal::from_str(edge["node"]["amount"].as_str().expect("amount"))
                    .expect("decimal"),
            );
        }
        pages += 1;
        if page["pageInfo"]["hasNextPage"] != json!(true) {
            break;
        }
        after = format!("{}", page["pageInfo"]["endCursor"]);
    }
    assert_eq!(amounts, want);
    assert_eq!(pages, want.len().div_ceil(3));

    // A cursor of one ordering is refused by another; first is capped; bad filters are named.
    let got = data(
        &schema,
        r#"{ lendingEvents(first: 1, orderBy: amount) { pageInfo { endCursor } } }"#,
    )
    .await;
    let cursor = got["lendingEvents"]["pageInfo"]["endCursor"].clone();
    let message = error(
        &schema,
        &format!(
            r#"{{ lendingEvents(first: 1, orderBy: blockTime, after: {cursor}) {{ totalCount }} }}"#
        ),
    )
    .await;
    assert!(
        message.contains("belongs to orderBy amount asc"),
        "{message}"
    );
    assert!(error(&schema, "{ swaps(first: 1001) { totalCount } }")
        .await
        .contains("first must be between 0 and 1000"));
    let message = error(
        &schema,
        r#"{ lendingEvents(where: {amount_contains: "1"}) { totalCount } }"#,
    )
    .await;
    assert!(
        message.contains("amount_contains") && message.contains("LendingEvent_filter"),
        "{message}"
    );
    let message = error(
        &schema,
        r#"{ lendingEvents(where: {wallet: "not-an-address"}) { totalCount } }"#,
    )
    .await;
    assert!(message.contains("not 0x-hex"), "{message}");

    // Wallets: aggregate filters, and a page of wallets loads its nested fields in batches.
    let expected = per_wallet
        .values()
        .filter(|l| l.iter().any(|r| r.action == "borrow"))
        .count() as i64;
    let got = data(
        &schema,
        "{ wallets(chainId: 137, where: {borrowCount_gt: 0}) { totalCount } }",
    )
    .await;
    assert_eq!(total(&got, "wallets"), expected);
    let before = loaders.batches();
    let got = data(
        &schema,
        "{ wallets(chainId: 137, first: 50, orderBy: eventCount, orderDirection: desc) { edges { node { address creditScore { score } lendingSummary { action count } } } } }",
    )
    .await;
    let edges = got["wallets"]["edges"].as_array().expect("edges");
    assert_eq!(edges.len(), per_wallet.len());
    assert!(edges.len() > 10);
    for edge in edges {
        let node = &edge["node"];
        let wallet = node["address"].as_str().expect("address");
        let mut want: BTreeMap<String, i64> = BTreeMap::new();
        for r in &per_wallet[wallet] {
            *want.entry(r.action.to_ascii_uppercase()).or_default() += 1;
        }
        let got: BTreeMap<String, i64> = node["lendingSummary"]
            .as_array()
            .expect("summary")
            .iter()
            .map(|s| {
                (
                    s["action"].as_str().expect("action").to_owned(),
                    s["count"].as_i64().expect("count"),
                )
            })
            .collect();
        assert_eq!(got, want, "{wallet}");
    }
    let counts: Vec<usize> = edges
        .iter()
        .map(|e| per_wallet[e["node"]["address"].as_str().expect("address")].len())
        .collect();
    assert!(counts.windows(2).all(|w| w[0] >= w[1]), "{counts:?}");
    // 18 wallets × (score + summary): one batch per loader, not 36 queries.
    let batches = loaders.batches() - before;
    assert_eq!(batches, 2, "{batches} batches for {} wallets", edges.len());
}

const CHAIN: i64 = 424_242;
const W: &str = "0x00000000000000000000000000000000000000a1";
const RESERVE: &str = "0x00000000000000000000000000000000000000e1";
const POOL: &str = "0x00000000000000000000000000000000000000c1";

fn hash(block: i64) -> String {
    format!("0x{block:064x}")
}

/// A chain at head 100 with 10 confirmations (finalized ≤ 90, safe ≤ 95): a deposit at 50, a
/// borrow at 93, a repay at 99; Syncs at 40 and 95; scores at 50, 93 and 99.
async fn known_chain(pool: &sqlx::PgPool) {
    sqlx::query(
        "INSERT INTO chain_head (chain_id, name, number, hash, parent_hash, confirmations)
         VALUES ($1, 'testnet', 100, $2, $3, 10)",
    )
    .bind(CHAIN)
    .bind(hash(100))
    .bind(hash(99))
    .execute(pool)
    .await
    .expect("head");
    for (block, action, amount) in [
        (50, "deposit", 1000),
        (93, "borrow", 400),
        (99, "repay", 100),
    ] {
        sqlx::query(
            "INSERT INTO lending_event (event_id, chain_id, wallet, action, protocol, reserve, symbol,
                 decimals, amount, block_number, block_hash, kafka_topic, kafka_partition, kafka_offset)
             VALUES ($1, $2, $3, $4, 'aave_v2', $5, 'TKN', 0, $6, $7, $8, 't', 0, $7)",
        )
        .bind(format!("ev{block}"))
        .bind(CHAIN)
        .bind(W)
        .bind(action)
        .bind(RESERVE)
        .bind(BigDecimal::from(amount))
        .bind(block)
        .bind(hash(block))
        .execute(pool)
        .await
        .expect("event");
    }
    for (block, r0, r1) in [(40, 10, 20), (95, 11, 19)] {
        sqlx::query(
            "INSERT INTO pool_sync (event_id, chain_id, pool, protocol, token0, token1, reserve0,
                 reserve1, block_number, block_hash, log_index, kafka_topic, kafka_partition, kafka_offset)
             VALUES ($1, $2, $3, 'uniswap_v2', '0x01', '0x02', $4, $5, $6, $7, 0, 't', 0, $6)",
        )
        .bind(format!("sync{block}"))
        .bind(CHAIN)
        .bind(POOL)
        .bind(BigDecimal::from(r0))
        .bind(BigDecimal::from(r1))
        .bind(block)
        .bind(hash(block))
        .execute(pool)
        .await
        .expect("sync");
    }
    for (block, score, hf) in [(50, 700, None), (93, 650, Some(1.5)), (99, 690, Some(1.8))] {
        sqlx::query(
            "INSERT INTO credit_score (chain_id, wallet, score, band, reasons, model_version,
                 model_sha256, event_id, kafka_topic, kafka_partition, kafka_offset,
                 projector_next_offset, block_number, health_factor)
             VALUES ($1, $2, $3, 'GOOD', '[]', 'test', 'sha', $4, 't', 0, 0, 0, $5, $6)",
        )
        .bind(CHAIN)
        .bind(W)
        .bind(score)
        .bind(format!("ev{block}"))
        .bind(block)
        .bind(hf)
        .execute(pool)
        .await
        .expect("score");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_travel_answers_as_of_a_block_number_or_hash_and_finality_hides_what_is_not_deep_enough(
) {
    let iso = Isolated::new("api_time").await;
    let pool = chainfold_platform::postgres::connect_and_migrate(&iso.postgres)
        .await
        .expect("postgres");
    known_chain(&pool).await;
    let schema = chainfold_api::build_schema(pool.clone());
    let position = |args: &str| {
        format!(
            r#"{{ positions(chainId: {CHAIN}, {args}) {{ edges {{ node {{ wallet collateral debt lastBlock }} }} }} }}"#
        )
    };
    let one = |v: &Value| -> (String, String) {
        let node = &v["positions"]["edges"][0]["node"];
        (
            node["collateral"].as_str().expect("collateral").to_owned(),
            node["debt"].as_str().expect("debt").to_owned(),
        )
    };
    let pair = |c: &str, d: &str| (c.to_owned(), d.to_owned());
    assert_eq!(
        one(&data(&schema, &position("first: 5")).await),
        pair("1000", "300")
    );
    assert_eq!(
        one(&data(&schema, &position("block: {number: 60}")).await),
        pair("1000", "0")
    );
    assert_eq!(
        one(&data(&schema, &position("block: {number: 93}")).await),
        pair("1000", "400")
    );
    let by_hash = format!(
        r#"block: {{hash: "{}"}}"#,
        hash(50).to_ascii_uppercase().replace("0X", "0x")
    );
    assert_eq!(
        one(&data(&schema, &position(&by_hash)).await),
        pair("1000", "0")
    );
    assert_eq!(
        one(&data(&schema, &position("finality: FINALIZED")).await),
        pair("1000", "0")
    );
    assert_eq!(
        one(&data(&schema, &position("finality: SAFE")).await),
        pair("1000", "400")
    );
    assert!(error(&schema, &position("block: {number: 101}"))
        .await
        .contains("after chain 424242's indexed head 100"));
    let unknown = format!(r#"block: {{hash: "{}"}}"#, hash(77));
    assert!(error(&schema, &position(&unknown))
        .await
        .contains("is not known on chain"));
    assert!(error(
        &schema,
        r#"{ positions(block: {number: 5}) { totalCount } }"#
    )
    .await
    .contains("needs chainId"));

    // Event collections: rows of later blocks, or not yet final, are left out.
    for (args, count) in [
        ("", 3),
        ("block: {number: 93}", 2),
        ("finality: SAFE", 2),
        ("finality: FINALIZED", 1),
    ] {
        let got = data(
            &schema,
            &format!("{{ lendingEvents(chainId: {CHAIN}, first: 0, {args}) {{ totalCount }} }}"),
        )
        .await;
        assert_eq!(total(&got, "lendingEvents"), count, "{args}");
    }

    // Pool state and history.
    let reserves = |v: &Value| {
        v["poolStates"]["edges"][0]["node"]["reserve0"]
            .as_str()
            .map(str::to_owned)
    };
    let q = |args: &str| {
        format!("{{ poolStates(chainId: {CHAIN}, {args}) {{ edges {{ node {{ pool reserve0 reserve1 blockNumber }} }} }} }}")
    };
    assert_eq!(
        reserves(&data(&schema, &q("first: 1")).await).as_deref(),
        Some("11")
    );
    assert_eq!(
        reserves(&data(&schema, &q("block: {number: 50}")).await).as_deref(),
        Some("10")
    );
    assert_eq!(
        reserves(&data(&schema, &q("finality: FINALIZED")).await).as_deref(),
        Some("10")
    );
    assert_eq!(
        reserves(&data(&schema, &q("block: {number: 39}")).await),
        None
    );
    let got = data(
        &schema,
        &format!(r#"{{ pool(chainId: {CHAIN}, address: "{POOL}") {{ history {{ totalCount edges {{ node {{ blockNumber reserve0 }} }} }} old: history(block: {{number: 50}}) {{ totalCount }} }} }}"#),
    )
    .await;
    assert_eq!(got["pool"]["history"]["totalCount"], 2);
    assert_eq!(
        got["pool"]["history"]["edges"][0]["node"]["blockNumber"],
        95
    );
    assert_eq!(got["pool"]["old"]["totalCount"], 1);

    // Scores as of a block, and the health-factor history of a position.
    let got = data(
        &schema,
        &format!("{{ latest: scores(chainId: {CHAIN}) {{ edges {{ node {{ score healthFactor }} }} }} then: scores(chainId: {CHAIN}, block: {{number: 95}}) {{ edges {{ node {{ score healthFactor }} }} }} early: scores(chainId: {CHAIN}, finality: FINALIZED) {{ edges {{ node {{ score healthFactor }} }} }} }}"),
    )
    .await;
    assert_eq!(
        got["latest"]["edges"][0]["node"],
        json!({"score": 690, "healthFactor": 1.8})
    );
    assert_eq!(
        got["then"]["edges"][0]["node"],
        json!({"score": 650, "healthFactor": 1.5})
    );
    assert_eq!(
        got["early"]["edges"][0]["node"],
        json!({"score": 700, "healthFactor": null})
    );
    let got = data(
        &schema,
        &format!("{{ positions(chainId: {CHAIN}, first: 10) {{ edges {{ node {{ healthFactorHistory {{ edges {{ node {{ healthFactor blockNumber }} }} }} low: healthFactorHistory(where: {{healthFactor_lt: 1.6}}) {{ totalCount }} }} }} }} }}"),
    )
    .await;
    let node = &got["positions"]["edges"][0]["node"];
    assert_eq!(
        node["healthFactorHistory"]["edges"],
        json!([{"node": {"healthFactor": 1.8, "blockNumber": 99}}, {"node": {"healthFactor": 1.5, "blockNumber": 93}}])
    );
    assert_eq!(node["low"]["totalCount"], 1);

    // _meta.
    let got = data(&schema, "{ _meta { chains { chainId head { number hash } finalized { number } safe { number } } } }").await;
    assert_eq!(
        got["_meta"]["chains"],
        json!([{"chainId": CHAIN, "head": {"number": 100, "hash": hash(100)}, "finalized": {"number": 90}, "safe": {"number": 95}}])
    );
}
