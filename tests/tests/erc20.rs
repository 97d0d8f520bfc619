//! ERC-20 transfers (issue 15): fixture tokens on anvil → live ingest (contract kind
//! `erc20_token`) → Kafka (`chainfold.transfers.v1`) → projector → `erc20_transfer`,
//! `erc20_balance`, `erc20_token`. A reorg orphans transfers after the ingest has published them;
//! afterwards every transfer row equals the canonical chain's `Transfer` logs and every balance
//! equals the token's own `balanceOf`, including a 2^256-1 mint. A token whose name has a NUL
//! byte and whose symbol is empty is indexed all the same (name stored without the NUL, symbol
//! NULL).

use std::collections::BTreeMap;

use alloy::primitives::{Address, U256};
use alloy::providers::Provider as _;
use alloy::rpc::types::Filter;
use alloy::sol_types::SolEvent as _;
use chainfold_simulate::contracts::FixtureToken;
use chainfold_simulate::Deployment;
use chainfold_testkit::Isolated;

const HOSTILE_NAME: &str =
    "Tok\u{0}en \u{1f9ea} 'quoted' \\slash\\ \u{fc}n\u{ef}cod\u{e9}\ttab\nnewline";

async fn transfer(d: &Deployment, token: Address, from: Address, to: Address, value: U256) {
    d.confirm(
        FixtureToken::new(token, &d.provider)
            .transfer(to, value)
            .from(from)
            .into_transaction_request(),
    )
    .await
    .expect("transfer");
}

async fn mine(d: &Deployment, blocks: u64) {
    for _ in 0..blocks {
        let _: serde_json::Value = d
            .provider
            .raw_request("evm_mine".into(), ())
            .await
            .expect("mine");
    }
}

#[tokio::test]
async fn transfers_and_balances_equal_the_canonical_chain_after_a_reorg_with_hostile_metadata() {
    let iso = Isolated::new("erc20").await;
    let (anvil, d, _, _) = chainfold_tests::fixtures(31337).await;
    let hostile =
        FixtureToken::deploy_builder(&d.provider, HOSTILE_NAME.to_owned(), String::new(), 18)
            .from(d.deployer)
            .deploy()
            .await
            .expect("hostile token deploys");
    let tokens = [d.usdc.token, d.weth.token, hostile];
    let wallets: Vec<Address> = (0..5).map(|i| Address::repeat_byte(0x10 + i)).collect();
    for (i, w) in wallets.iter().enumerate() {
        d.fund(
            *w,
            d.usdc.token,
            U256::from(1_000_000_000u64 * (i as u64 + 1)),
        )
        .await
        .expect("fund");
        d.fund(*w, d.weth.token, U256::from(10u64).pow(U256::from(18)))
            .await
            .expect("fund");
    }
    // The largest amount a uint256 holds, minted and moved on (NUMERIC(78,0) must take it).
    d.fund(wallets[0], hostile, U256::MAX).await.expect("mint");
    transfer(
        &d,
        hostile,
        wallets[0],
        wallets[1],
        U256::MAX - U256::from(1u64),
    )
    .await;
    for round in 0..20u64 {
        let (a, b) = (
            wallets[(round % 5) as usize],
            wallets[((round * 3 + 1) % 5) as usize],
        );
        transfer(&d, d.usdc.token, a, b, U256::from(1_000 + round)).await;
        transfer(&d, d.weth.token, b, a, U256::from(7 * round + 1)).await;
    }
    // WBTC is no watched contract, but wallet 4 is a watched wallet: its WBTC transfers in and
    // out are indexed, the others' are not.
    let wbtc = d.wbtc.token;
    d.fund(wallets[4], wbtc, U256::from(50_000u64))
        .await
        .expect("fund");
    transfer(&d, wbtc, wallets[4], wallets[0], U256::from(20_000u64)).await;
    d.fund(wallets[2], wbtc, U256::from(7_000u64))
        .await
        .expect("fund");
    transfer(&d, wbtc, wallets[2], wallets[3], U256::from(3_000u64)).await;
    // A transfer to oneself: its two legs cancel.
    transfer(&d, d.usdc.token, wallets[2], wallets[2], U256::from(5u64)).await;

    let mut toml = format!(
        "[[chain]]\nchain_id = 31337\nname = \"anvil\"\nrpc_url = \"{}\"\nconfirmations = 2\nstart_block = 0\npoll_interval = \"100ms\"\nwatch_wallets = [\"{:#x}\"]\n",
        anvil.http_url(),
        wallets[4]
    );
    for token in tokens {
        toml.push_str(&format!(
            "\n[[chain.contract]]\naddress = \"{token:#x}\"\nkind = \"erc20_token\"\n"
        ));
    }
    let mut follower = chainfold_tests::follower(&iso, &toml).await;
    let pool = chainfold_platform::postgres::connect_and_migrate(&iso.postgres)
        .await
        .expect("postgres");
    follower.sync_to_head().await.expect("sync");

    // Transfers the ingest publishes, then a reorg replaces them with others.
    let snapshot: U256 = d
        .provider
        .raw_request("evm_snapshot".into(), ())
        .await
        .expect("snapshot");
    for i in 0..6u64 {
        transfer(
            &d,
            d.usdc.token,
            wallets[3],
            wallets[4],
            U256::from(900_000 + i),
        )
        .await;
    }
    transfer(&d, hostile, wallets[1], wallets[4], U256::from(12_345u64)).await;
    follower
        .sync_to_head()
        .await
        .expect("sync before the reorg");
    let orphaned: i64 = {
        let projector = chainfold_tests::project(&iso).await;
        let n = sqlx::query_scalar(
            "SELECT count(*) FROM erc20_transfer WHERE value >= 900000 AND value < 900006",
        )
        .fetch_one(&pool)
        .await
        .expect("count");
        drop(projector);
        n
    };
    assert!(
        orphaned > 0,
        "the orphaned transfers were projected before the reorg"
    );
    let reverted: bool = d
        .provider
        .raw_request("evm_revert".into(), (snapshot,))
        .await
        .expect("revert");
    assert!(reverted);
    for i in 0..9u64 {
        transfer(&d, d.weth.token, wallets[4], wallets[0], U256::from(31 + i)).await;
    }
    mine(&d, 3).await;
    follower.sync_to_head().await.expect("sync after the reorg");
    assert!(
        follower
            .stats
            .reorgs
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
    drop(chainfold_tests::project(&iso).await);

    // Every Transfer log of the canonical chain, and nothing else, is a row.
    let head = d.provider.get_block_number().await.expect("head");
    let logs = d
        .provider
        .get_logs(
            &Filter::new()
                .address(tokens.to_vec())
                .event_signature(FixtureToken::Transfer::SIGNATURE_HASH)
                .from_block(0)
                .to_block(head),
        )
        .await
        .expect("logs");
    let mut expected: Vec<String> = logs
        .iter()
        .map(|log| {
            let t = FixtureToken::Transfer::decode_log_data(log.data()).expect("a transfer");
            format!(
                "{}:{}:{:#x}:{:#x}:{:#x}:{}",
                log.block_number.expect("mined"),
                log.log_index.expect("mined"),
                log.address(),
                t.from,
                t.to,
                t.value
            )
        })
        .collect();
    expected.sort();
    let mut stored: Vec<String> = sqlx::query_scalar(
        "SELECT block_number || ':' || log_index || ':' || token || ':' || from_address || ':'
                || to_address || ':' || value::text
         FROM erc20_transfer WHERE token <> $1",
    )
    .bind(format!("{wbtc:#x}"))
    .fetch_all(&pool)
    .await
    .expect("transfers");
    stored.sort();
    assert_eq!(
        stored.len(),
        expected.len(),
        "one row per canonical transfer"
    );
    assert_eq!(stored, expected);
    let orphans: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM erc20_transfer WHERE value >= 900000 AND value < 900006",
    )
    .fetch_one(&pool)
    .await
    .expect("orphans");
    assert_eq!(orphans, 0, "the reorg's orphaned transfers are retracted");

    // Of WBTC, exactly the watched wallet's transfers: the two that name it, not the two that
    // do not.
    let watched = d
        .provider
        .get_logs(
            &Filter::new()
                .address(wbtc)
                .event_signature(FixtureToken::Transfer::SIGNATURE_HASH)
                .from_block(0)
                .to_block(head),
        )
        .await
        .expect("logs");
    let mut expected: Vec<String> = watched
        .iter()
        .filter_map(|log| {
            let t = FixtureToken::Transfer::decode_log_data(log.data()).expect("a transfer");
            (t.from == wallets[4] || t.to == wallets[4]).then(|| {
                format!(
                    "{}:{}:{:#x}:{:#x}:{}",
                    log.block_number.expect("mined"),
                    log.log_index.expect("mined"),
                    t.from,
                    t.to,
                    t.value
                )
            })
        })
        .collect();
    expected.sort();
    assert_eq!(watched.len(), 4);
    assert_eq!(expected.len(), 2);
    let mut stored: Vec<String> = sqlx::query_scalar(
        "SELECT block_number || ':' || log_index || ':' || from_address || ':' || to_address
                || ':' || value::text
         FROM erc20_transfer WHERE token = $1",
    )
    .bind(format!("{wbtc:#x}"))
    .fetch_all(&pool)
    .await
    .expect("wbtc transfers");
    stored.sort();
    assert_eq!(stored, expected);

    // Every balance equals balanceOf at the head; the zero address holds minus the supply.
    // (Of WBTC only the watched wallet's own balance is whole.)
    let balances: Vec<(String, String, String)> =
        sqlx::query_as("SELECT token, holder, balance::text FROM erc20_balance")
            .fetch_all(&pool)
            .await
            .expect("balances");
    let mut by_token: BTreeMap<Address, usize> = BTreeMap::new();
    for (token, holder, balance) in &balances {
        let token: Address = token.parse().expect("address");
        let holder: Address = holder.parse().expect("address");
        if token == wbtc && holder != wallets[4] {
            continue;
        }
        let contract = FixtureToken::new(token, &d.provider);
        let want = if holder == Address::ZERO {
            format!("-{}", contract.totalSupply().call().await.expect("supply"))
        } else {
            contract
                .balanceOf(holder)
                .call()
                .await
                .expect("balance")
                .to_string()
        };
        assert_eq!(balance, &want, "{holder:#x} in {token:#x}");
        *by_token.entry(token).or_default() += 1;
    }
    // Wallets 0..5 and the zero address hold each token (wallet 0 may be emptied of the hostile
    // one but its row stays while it has transfers).
    assert_eq!(by_token.get(&d.usdc.token), Some(&6));
    assert_eq!(by_token.get(&hostile), Some(&3));
    let max: String =
        sqlx::query_scalar("SELECT max(value)::text FROM erc20_transfer WHERE token = $1")
            .bind(format!("{hostile:#x}"))
            .fetch_one(&pool)
            .await
            .expect("max");
    assert_eq!(max, U256::MAX.to_string());

    // Metadata as each token said it, read once: the NUL removed, an empty symbol NULL.
    type TokenRow = (String, Option<String>, Option<String>, Option<i16>);
    let meta: Vec<TokenRow> =
        sqlx::query_as("SELECT token, name, symbol, decimals FROM erc20_token ORDER BY token")
            .fetch_all(&pool)
            .await
            .expect("tokens");
    let of = |t: Address| {
        meta.iter()
            .find(|m| m.0 == format!("{t:#x}"))
            .cloned()
            .expect("a token row")
    };
    assert_eq!(
        meta.len(),
        4,
        "three watched tokens and WBTC, met through the watched wallet"
    );
    assert_eq!(of(wbtc).2.as_deref(), Some("WBTC"));
    assert_eq!(
        of(hostile).1.as_deref(),
        Some(&*HOSTILE_NAME.replace('\0', ""))
    );
    assert_eq!(of(hostile).2, None);
    assert_eq!(of(hostile).3, Some(18));
    assert_eq!(of(d.usdc.token).2.as_deref(), Some("USDC"));
    assert_eq!(of(d.usdc.token).3, Some(6));

    // GraphQL: a wallet's balances, exact, with the token's metadata as stored.
    let schema = chainfold_api::schema::build(pool.clone());
    let response = serde_json::to_value(
        schema
            .execute(format!(
                r#"{{ wallet(chainId: 31337, address: "{:#x}") {{ tokenBalances {{ token name symbol decimals balance transfers }} }} }}"#,
                wallets[1]
            ))
            .await,
    )
    .expect("json");
    let listed = response["data"]["wallet"]["tokenBalances"]
        .as_array()
        .unwrap_or_else(|| panic!("{response}"));
    assert_eq!(listed.len(), 3, "{response}");
    assert!(listed.iter().all(|e| e["token"] != format!("{wbtc:#x}")));
    for entry in listed {
        let token: Address = entry["token"]
            .as_str()
            .expect("token")
            .parse()
            .expect("address");
        let want = FixtureToken::new(token, &d.provider)
            .balanceOf(wallets[1])
            .call()
            .await
            .expect("balance");
        assert_eq!(entry["balance"], want.to_string(), "{entry}");
    }
    let hostile_entry = listed
        .iter()
        .find(|e| e["token"] == format!("{hostile:#x}"))
        .expect("the hostile token is listed");
    assert_eq!(hostile_entry["symbol"], serde_json::Value::Null);
    assert_eq!(
        hostile_entry["balance"],
        (U256::MAX - U256::from(1u64)).to_string()
    );

    // A replay of the log rebuilds the same three tables.
    let fresh = Isolated::new("erc20_rebuild").await;
    let rebuilt = {
        let mut projector = chainfold_projector::App::build(chainfold_projector::Config::new(
            iso.kafka.clone(),
            fresh.postgres.clone(),
            fresh.redis.clone(),
            fresh.group.clone(),
        ))
        .await
        .expect("projector");
        projector.run_until_caught_up().await.expect("project");
        projector.pool().clone()
    };
    for table in ["erc20_transfer", "erc20_balance", "erc20_token"] {
        let without = chainfold_testkit::rebuilt_tables()
            .into_iter()
            .find(|(t, _)| *t == table)
            .expect("in the fingerprint")
            .1;
        assert_eq!(
            chainfold_testkit::fingerprint_rows(&pool, table, &without).await,
            chainfold_testkit::fingerprint_rows(&rebuilt, table, &without).await,
            "{table} rebuilt from the log"
        );
    }
    fresh.drop_database().await;
    iso.drop_database().await;
}
