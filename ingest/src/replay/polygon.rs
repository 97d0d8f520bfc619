//! Aave V2 Polygon wallet transactions (`user-wallet-transactions.json`, chain 137).
//!
//! Quirks handled (see `data/README.md`):
//! - records are keyed by `_id.$oid`; `logId` is not unique;
//! - `blockNumber` holds the unix timestamp, not a block: the envelope's block is `None`;
//! - the three `liquidationcall` records carry amount 0 and an empty asset: they are decoded from
//!   their liquidation fields (principal, collateral, prices);
//! - records are replayed in `timestamp` order (stable, so ties keep file order).

use chainfold_domain::envelope::{LendingFlow, Liquidation, Reserve};
use chainfold_domain::{
    DefiEvent, Envelope, EventId, Source, TokenAmount, UsdValue, SCHEMA_VERSION,
};
use chrono::DateTime;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{parse_address, parse_hash, polygon_decimals};
use crate::{Decoded, EventKind, Rejected};

/// Data set name (the shared folder's).
pub const DATASET: &str = "aave-v2-polygon-wallet-txns";
/// Polygon PoS.
pub const CHAIN_ID: u64 = 137;

#[derive(Deserialize)]
struct Oid {
    #[serde(rename = "$oid")]
    oid: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Record {
    #[serde(rename = "_id")]
    id: Oid,
    user_wallet: String,
    tx_hash: String,
    timestamp: i64,
    action: String,
    action_data: ActionData,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct ActionData {
    amount: String,
    asset_symbol: String,
    #[serde(rename = "assetPriceUSD")]
    asset_price_usd: String,
    pool_id: String,
    user_id: String,
    to_id: Option<String>,
    repayer_id: Option<String>,
    caller_id: Option<String>,
    liquidator_id: Option<String>,
    collateral_amount: Option<String>,
    #[serde(rename = "collateralAssetPriceUSD")]
    collateral_asset_price_usd: Option<String>,
    collateral_reserve_id: Option<String>,
    collateral_reserve_symbol: Option<String>,
    principal_amount: Option<String>,
    #[serde(rename = "borrowAssetPriceUSD")]
    borrow_asset_price_usd: Option<String>,
    principal_reserve_id: Option<String>,
    principal_reserve_symbol: Option<String>,
}

/// Decodes the JSON array; a record that does not decode becomes a [`Rejected`] with its raw
/// text. Fails only when the file is not a JSON array at all.
pub fn decode(bytes: &[u8], origin: &str) -> anyhow::Result<Vec<Decoded>> {
    let raws: Vec<&RawValue> = serde_json::from_slice(bytes)
        .map_err(|e| anyhow::anyhow!("{origin} is not a JSON array of records: {e}"))?;
    let mut decoded: Vec<(i64, Decoded)> = raws
        .iter()
        .enumerate()
        .map(|(index, raw)| {
            let at = format!("{origin}:{}", index + 1);
            match decode_record(raw.get()) {
                Ok(env) => (env.block_time.map_or(i64::MIN, |t| t.timestamp()), Ok(env)),
                Err(reason) => (
                    i64::MIN,
                    Err(Rejected {
                        kind: EventKind::Lending,
                        reason,
                        origin: at,
                        raw: raw.get().as_bytes().to_vec(),
                    }),
                ),
            }
        })
        .collect();
    // Stable sort: equal timestamps keep file order, so the order is the same on every replay.
    decoded.sort_by_key(|(ts, _)| *ts);
    Ok(decoded.into_iter().map(|(_, d)| d).collect())
}

/// Decodes one record's JSON text.
pub fn decode_record(raw: &str) -> Result<Envelope, String> {
    let rec: Record = serde_json::from_str(raw).map_err(|e| format!("malformed record: {e}"))?;
    let wallet = parse_address("userWallet", &rec.user_wallet)?;
    let tx_hash = parse_hash("txHash", &rec.tx_hash)?;
    let block_time = DateTime::from_timestamp(rec.timestamp, 0)
        .ok_or_else(|| format!("timestamp {} is out of range", rec.timestamp))?;
    let data = &rec.action_data;
    let optional_address = |field: &str,
                            value: &Option<String>|
     -> Result<Option<alloy_primitives::Address>, String> {
        match value.as_deref() {
            None | Some("") => Ok(None),
            Some(text) => parse_address(field, text).map(Some),
        }
    };
    let flow = || -> Result<LendingFlow, String> {
        let reserve = Reserve {
            address: parse_address("actionData.poolId", &data.pool_id)?,
            symbol: data.asset_symbol.clone(),
            decimals: polygon_decimals(&data.asset_symbol),
        };
        if data.asset_symbol.is_empty() {
            return Err("actionData.assetSymbol is empty".into());
        }
        let amount = TokenAmount::parse_integer(&data.amount)
            .map_err(|e| format!("actionData.amount {e}"))?;
        let price = UsdValue::parse(&data.asset_price_usd)
            .map_err(|e| format!("actionData.assetPriceUSD {e}"))?;
        Ok(LendingFlow {
            pool: None,
            protocol: "aave_v2".into(),
            wallet,
            counterparty: None,
            reserve,
            amount,
            price_usd: Some(price),
        })
    };
    let event = match rec.action.as_str() {
        "deposit" => DefiEvent::Deposit(flow()?),
        "borrow" => DefiEvent::Borrow(LendingFlow {
            counterparty: optional_address("actionData.callerId", &data.caller_id)?
                .filter(|a| *a != wallet),
            ..flow()?
        }),
        "repay" => DefiEvent::Repay(LendingFlow {
            counterparty: optional_address("actionData.repayerId", &data.repayer_id)?
                .filter(|a| *a != wallet),
            ..flow()?
        }),
        "redeemunderlying" => {
            // The record is attributed to userWallet; the event's user and recipient may differ
            // from it, and the other one of them is the counterparty.
            let user = optional_address("actionData.userId", &Some(data.user_id.clone()))?;
            let to = optional_address("actionData.toId", &data.to_id)?;
            let counterparty = [user, to].into_iter().flatten().find(|a| *a != wallet);
            DefiEvent::Redeem(LendingFlow {
                counterparty,
                ..flow()?
            })
        }
        "liquidationcall" => {
            DefiEvent::Liquidation(decode_liquidation(wallet, data, optional_address)?)
        }
        other => return Err(format!("unknown action {other:?}")),
    };
    Ok(Envelope {
        schema_version: SCHEMA_VERSION,
        retracted: false,
        event_id: EventId::of_record(CHAIN_ID, DATASET, &rec.id.oid),
        chain_id: CHAIN_ID,
        block: None,
        tx_hash: Some(tx_hash),
        log_index: None,
        block_time: Some(block_time),
        source: Source::Replay {
            dataset: DATASET.into(),
            record: rec.id.oid,
        },
        event,
    })
}

fn decode_liquidation(
    wallet: alloy_primitives::Address,
    data: &ActionData,
    optional_address: impl Fn(
        &str,
        &Option<String>,
    ) -> Result<Option<alloy_primitives::Address>, String>,
) -> Result<Liquidation, String> {
    let required = |field: &str, value: &Option<String>| -> Result<String, String> {
        value
            .clone()
            .filter(|v| !v.is_empty())
            .ok_or_else(|| format!("liquidation record has no actionData.{field}"))
    };
    let collateral_symbol = required("collateralReserveSymbol", &data.collateral_reserve_symbol)?;
    let debt_symbol = required("principalReserveSymbol", &data.principal_reserve_symbol)?;
    Ok(Liquidation {
        pool: None,
        protocol: "aave_v2".into(),
        wallet,
        liquidator: optional_address("actionData.liquidatorId", &data.liquidator_id)?,
        collateral: Reserve {
            address: parse_address(
                "actionData.collateralReserveId",
                &required("collateralReserveId", &data.collateral_reserve_id)?,
            )?,
            decimals: polygon_decimals(&collateral_symbol),
            symbol: collateral_symbol,
        },
        collateral_amount: TokenAmount::parse_integer(&required(
            "collateralAmount",
            &data.collateral_amount,
        )?)
        .map_err(|e| format!("actionData.collateralAmount {e}"))?,
        collateral_price_usd: Some(
            UsdValue::parse(&required(
                "collateralAssetPriceUSD",
                &data.collateral_asset_price_usd,
            )?)
            .map_err(|e| format!("actionData.collateralAssetPriceUSD {e}"))?,
        ),
        debt: Reserve {
            address: parse_address(
                "actionData.principalReserveId",
                &required("principalReserveId", &data.principal_reserve_id)?,
            )?,
            decimals: polygon_decimals(&debt_symbol),
            symbol: debt_symbol,
        },
        debt_covered: TokenAmount::parse_integer(&required(
            "principalAmount",
            &data.principal_amount,
        )?)
        .map_err(|e| format!("actionData.principalAmount {e}"))?,
        debt_price_usd: Some(
            UsdValue::parse(&required(
                "borrowAssetPriceUSD",
                &data.borrow_asset_price_usd,
            )?)
            .map_err(|e| format!("actionData.borrowAssetPriceUSD {e}"))?,
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Real records from the bundled file (exporter metadata fields dropped).
    const LIQUIDATION: &str = r#"{"_id":{"$oid":"681aa3aed6df53021cc5b767"},"userWallet":"0x000006eee6e39015cb523aebdd4d0b1855aba682","network":"polygon","protocol":"aave_v2","txHash":"0xaab882d2bba5eaebe7c7ab078bf3b1d802a50f267dafe4be7693df50fd209723","logId":"0xaab882d2bba5eaebe7c7ab078bf3b1d802a50f267dafe4be7693df50fd209723_LiquidationCall","timestamp":1621433382,"blockNumber":1621433382,"action":"liquidationcall","actionData":{"type":"LiquidationCall","amount":"0","assetSymbol":"","assetPriceUSD":"0","poolId":"","userId":"0x000006eee6e39015cb523aebdd4d0b1855aba682","liquidatorId":"0xdaef1aecb2f456060dcdcb7d704b715ff71c6727","collateralAmount":"385099628754132506","collateralAssetPriceUSD":"2417.768545940003089395802234234159","principalAmount":"875179341","borrowAssetPriceUSD":"1.01321466446499825392069825264885","collateralReserveId":"0x7ceb23fd6bc0add59e62ac25578270cff1b9f619","collateralReserveSymbol":"WETH","principalReserveId":"0xc2132d05d31c914a87c6611c10748aeb04b58e8f","principalReserveSymbol":"USDT"}}"#;
    const DEPOSIT: &str = r#"{"_id":{"$oid":"681d38fed63812d4655f571a"},"userWallet":"0x00000000001accfa9cef68cf5371a23025b6d4b6","network":"polygon","protocol":"aave_v2","txHash":"0x695c69acf608fbf5d38e48ca5535e118cc213a89e3d6d2e66e6b0e3b2e8d4190","logId":"0x695c69acf608fbf5d38e48ca5535e118cc213a89e3d6d2e66e6b0e3b2e8d4190_Deposit","timestamp":1629178166,"blockNumber":1629178166,"action":"deposit","actionData":{"type":"Deposit","amount":"2000000000","assetSymbol":"USDC","assetPriceUSD":"0.9938318274296357543568636362026045","poolId":"0x2791bca1f2de4661ed88a30c99a7a9449aa84174","userId":"0x00000000001accfa9cef68cf5371a23025b6d4b6"}}"#;

    #[test]
    fn a_deposit_decodes_with_its_usd_price_and_no_block() {
        let env = decode_record(DEPOSIT).expect("decodes");
        assert_eq!(
            env.block, None,
            "blockNumber is a timestamp and must not become a block"
        );
        assert_eq!(env.block_time.map(|t| t.timestamp()), Some(1_629_178_166));
        let DefiEvent::Deposit(flow) = &env.event else {
            panic!("not a deposit: {:?}", env.event)
        };
        assert_eq!(flow.reserve.decimals, 6);
        assert_eq!(
            flow.amount_usd().expect("priced").cents().to_string(),
            "1987.66"
        );
    }

    #[test]
    fn a_zero_amount_liquidation_is_decoded_from_its_liquidation_fields() {
        let env = decode_record(LIQUIDATION).expect("decodes");
        let DefiEvent::Liquidation(liq) = &env.event else {
            panic!("not a liquidation")
        };
        assert_eq!(liq.debt.symbol, "USDT");
        assert_eq!(liq.debt.decimals, 6);
        assert_eq!(liq.collateral.symbol, "WETH");
        assert_eq!(liq.debt_covered.to_string(), "875179341");
        // 875.179341 USDT × 1.0132146644… = 886.74…
        assert_eq!(
            liq.amount_usd().expect("priced").cents().to_string(),
            "886.74"
        );
        assert_eq!(
            liq.liquidator.map(|a| a.to_string().to_lowercase()),
            Some("0xdaef1aecb2f456060dcdcb7d704b715ff71c6727".into())
        );
    }

    #[test]
    fn bad_addresses_amounts_and_actions_are_rejected_with_a_reason() {
        let bad_wallet = DEPOSIT.replace(
            "0x00000000001accfa9cef68cf5371a23025b6d4b6\",\"network",
            "0xzz\",\"network",
        );
        assert!(decode_record(&bad_wallet)
            .expect_err("rejected")
            .contains("userWallet"));
        let bad_amount = DEPOSIT.replace("\"2000000000\"", "\"12abc\"");
        assert!(decode_record(&bad_amount)
            .expect_err("rejected")
            .contains("actionData.amount"));
        let bad_action = DEPOSIT.replace("\"action\":\"deposit\"", "\"action\":\"flashloan\"");
        assert!(decode_record(&bad_action)
            .expect_err("rejected")
            .contains("unknown action"));
    }

    #[test]
    fn the_file_is_replayed_in_timestamp_order_and_bad_records_are_kept() {
        let file = format!("[{DEPOSIT},{{\"oops\":1}},{LIQUIDATION}]");
        let decoded = decode(file.as_bytes(), "f.json").expect("array");
        assert_eq!(decoded.len(), 3);
        let rejected: Vec<_> = decoded.iter().filter_map(|d| d.as_ref().err()).collect();
        assert_eq!(rejected.len(), 1);
        assert_eq!(rejected[0].origin, "f.json:2");
        assert_eq!(rejected[0].raw, b"{\"oops\":1}");
    }
}
