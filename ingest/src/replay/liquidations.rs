//! Aave V2 Ethereum liquidation calls (`liquidations.csv` with `tokens.csv`, chain 1).
//!
//! Quirks handled:
//! - two collections with different units are concatenated. Raw form: amounts in base units,
//!   ETH prices in wei per whole token. Normalised form (a `.` or `e` in an amount): amounts in
//!   whole tokens, ETH prices in ETH. Both become the same typed event in base units;
//! - no transaction hash or block: identity is (user, timestamp, collateral, principal) plus the
//!   occurrence number, since 35 rows repeat that key (7 are full duplicates: kept, as the source
//!   lists them twice);
//! - a USD price left empty is derived from the row's ETH prices over its USDT/ETH price
//!   (USDT taken as 1 USD; WETH is 1 ETH); where neither exists the event carries no price;
//! - reserves are resolved by (market, symbol) through `tokens.csv`; a symbol it does not list
//!   (UST) is rejected to the DLQ with that reason.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use alloy_primitives::Address;
use bigdecimal::BigDecimal;
use chainfold_domain::envelope::{Liquidation, Reserve};
use chainfold_domain::{
    DefiEvent, Envelope, EventId, Source, TokenAmount, UsdValue, SCHEMA_VERSION,
};
use chrono::DateTime;

use super::{csv_rows, parse_address};
use crate::{Decoded, EventKind, Rejected};

/// Data set name (the shared folder's).
pub const DATASET: &str = "aave-v2-eth-liquidations-rpi";
/// Ethereum mainnet.
pub const CHAIN_ID: u64 = 1;

/// `tokens.csv` beside the liquidations file (bundled gzip or plain).
pub fn tokens_path(liquidations: &Path) -> PathBuf {
    let dir = liquidations.parent().unwrap_or(Path::new("."));
    let gz = dir.join("tokens.csv.gz");
    if gz.is_file() {
        gz
    } else {
        dir.join("tokens.csv")
    }
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct TokenRow {
    decimals: String,
    id: String,
    pool: String,
    symbol: String,
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Row {
    collateral_amount: String,
    collateral_reserve: String,
    pool: String,
    principal_amount: String,
    principal_reserve: String,
    timestamp: String,
    user: String,
    #[serde(rename = "priceUSDTCollateral")]
    price_usdt_eth: String,
    #[serde(rename = "reservePriceETHPrincipal")]
    principal_price_eth: String,
    #[serde(rename = "reservePriceUSDPrincipal")]
    principal_price_usd: String,
    #[serde(rename = "reservePriceETHCollateral")]
    collateral_price_eth: String,
    #[serde(rename = "reservePriceUSDCollateral")]
    collateral_price_usd: String,
    liquidator: String,
}

/// Reserves by (market, symbol).
type Reserves = HashMap<(Address, String), Reserve>;

fn load_reserves(tokens: &[u8]) -> anyhow::Result<Reserves> {
    let mut reader = csv::Reader::from_reader(tokens);
    let mut reserves = Reserves::new();
    for (index, row) in reader.deserialize::<TokenRow>().enumerate() {
        let row = row.map_err(|e| anyhow::anyhow!("tokens.csv row {}: {e}", index + 2))?;
        let market = parse_address("pool", &row.pool).map_err(anyhow::Error::msg)?;
        // `id` is the underlying address followed by the market address.
        let address = parse_address("id", row.id.get(..42).unwrap_or_default())
            .map_err(anyhow::Error::msg)?;
        let decimals = row.decimals.parse::<u8>().map_err(|_| {
            anyhow::anyhow!("tokens.csv row {}: decimals {:?}", index + 2, row.decimals)
        })?;
        reserves.insert(
            (market, row.symbol.clone()),
            Reserve {
                address,
                symbol: row.symbol,
                decimals,
            },
        );
    }
    Ok(reserves)
}

/// Decodes the liquidations in file order (which the source sorted by nothing in particular;
/// each event is keyed by its wallet, so per-wallet order is what Kafka preserves).
pub fn decode(bytes: &[u8], tokens: &[u8], origin: &str) -> anyhow::Result<Vec<Decoded>> {
    let reserves = load_reserves(tokens)?;
    let mut seen: HashMap<String, u32> = HashMap::new();
    Ok(csv_rows::<Row>(bytes, origin, EventKind::Lending)?
        .into_iter()
        .map(|row| {
            let r = row?;
            let key = format!(
                "{}:{}:{}:{}",
                r.row.user.to_lowercase(),
                r.row.timestamp,
                r.row.collateral_reserve,
                r.row.principal_reserve
            );
            let occurrence = seen.entry(key.clone()).or_insert(0);
            *occurrence += 1;
            decode_row(&r.row, &reserves, &format!("{key}:{occurrence}")).map_err(|reason| {
                Rejected {
                    kind: EventKind::Lending,
                    reason,
                    origin: r.origin,
                    raw: r.raw,
                }
            })
        })
        .collect())
}

fn decode_row(row: &Row, reserves: &Reserves, record: &str) -> Result<Envelope, String> {
    let market = parse_address("pool", &row.pool)?;
    let wallet = parse_address("user", &row.user)?;
    let liquidator = match row.liquidator.trim() {
        "" => None,
        text => Some(parse_address("liquidator", text)?),
    };
    let reserve = |symbol: &str| {
        reserves
            .get(&(market, symbol.to_owned()))
            .cloned()
            .ok_or_else(|| {
                format!(
                    "unknown reserve symbol {symbol:?} in market {market:#x} (not in tokens.csv)"
                )
            })
    };
    let collateral = reserve(&row.collateral_reserve)?;
    let debt = reserve(&row.principal_reserve)?;
    let normalised = [&row.collateral_amount, &row.principal_amount]
        .iter()
        .any(|a| a.contains('.') || a.contains('e') || a.contains('E'));
    let amount = |field: &str, text: &str, decimals: u8| {
        if normalised {
            TokenAmount::parse_scaled(text, decimals)
        } else {
            TokenAmount::parse_exact(text)
        }
        .map_err(|e| format!("{field} {e}"))
    };
    let timestamp: i64 = row
        .timestamp
        .trim()
        .parse()
        .map_err(|_| format!("timestamp {:?} is not an integer", row.timestamp))?;
    let block_time = DateTime::from_timestamp(timestamp, 0)
        .ok_or_else(|| format!("timestamp {timestamp} is out of range"))?;
    let usdt_eth = optional_decimal("priceUSDTCollateral", &row.price_usdt_eth)?;
    // One ETH in the row's ETH-price unit: wei in the raw form, ether in the normalised one.
    let one_eth = if normalised {
        BigDecimal::from(1)
    } else {
        BigDecimal::from(1_000_000_000_000_000_000_u64)
    };
    let price = |usd_field: &str,
                 usd: &str,
                 eth_field: &str,
                 eth: &str,
                 symbol: &str|
     -> Result<Option<UsdValue>, String> {
        if let Some(value) = optional_decimal(usd_field, usd)? {
            return Ok(Some(UsdValue(value)));
        }
        let eth_price = match optional_decimal(eth_field, eth)? {
            Some(p) => Some(p),
            None if symbol == "WETH" => Some(one_eth.clone()),
            None => None,
        };
        Ok(match (eth_price, &usdt_eth) {
            (Some(p), Some(usdt)) if usdt > &BigDecimal::from(0) => {
                Some(UsdValue((p / usdt).with_prec(34).normalized()))
            }
            _ => None,
        })
    };
    Ok(Envelope {
        schema_version: SCHEMA_VERSION,
        retracted: false,
        event_id: EventId::of_record(CHAIN_ID, DATASET, record),
        chain_id: CHAIN_ID,
        block: None,
        tx_hash: None,
        log_index: None,
        block_time: Some(block_time),
        source: Source::Replay {
            dataset: DATASET.into(),
            record: record.to_owned(),
        },
        event: DefiEvent::Liquidation(Liquidation {
            pool: None,
            protocol: "aave_v2".into(),
            wallet,
            liquidator,
            collateral_amount: amount(
                "collateralAmount",
                &row.collateral_amount,
                collateral.decimals,
            )?,
            collateral_price_usd: price(
                "reservePriceUSDCollateral",
                &row.collateral_price_usd,
                "reservePriceETHCollateral",
                &row.collateral_price_eth,
                &collateral.symbol,
            )?,
            debt_covered: amount("principalAmount", &row.principal_amount, debt.decimals)?,
            debt_price_usd: price(
                "reservePriceUSDPrincipal",
                &row.principal_price_usd,
                "reservePriceETHPrincipal",
                &row.principal_price_eth,
                &debt.symbol,
            )?,
            collateral,
            debt,
        }),
    })
}

fn optional_decimal(field: &str, text: &str) -> Result<Option<BigDecimal>, String> {
    match text.trim() {
        "" => Ok(None),
        t => UsdValue::parse(t)
            .map(|v| Some(v.0))
            .map_err(|e| format!("{field} {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKENS: &str = "borrowingEnabled,decimals,id,pool,reserveLiquidationBonus,reserveLiquidationThreshold,stableBorrowRateEnabled,symbol,usageAsCollateralEnabled
True,6,0xdac17f958d2ee523a2206206994597c13d831ec70xb53c1a33016b2dc2ff3653530bff1848a515c8c5,0xb53c1a33016b2dc2ff3653530bff1848a515c8c5,0.0,0.0,False,USDT,False
True,18,0xc02aaa39b223fe8d0a0e5c4f27ead9083c756cc20xb53c1a33016b2dc2ff3653530bff1848a515c8c5,0xb53c1a33016b2dc2ff3653530bff1848a515c8c5,10500.0,8250.0,True,WETH,True
True,18,0x514910771af9ca656af840dff83e8264ecf986ca0xb53c1a33016b2dc2ff3653530bff1848a515c8c5,0xb53c1a33016b2dc2ff3653530bff1848a515c8c5,11000.0,7500.0,True,LINK,True
True,6,0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb480xb53c1a33016b2dc2ff3653530bff1848a515c8c5,0xb53c1a33016b2dc2ff3653530bff1848a515c8c5,10450.0,8500.0,True,USDC,True
";
    const HEADER: &str = "collateralAmount,collateralReserve,pool,principalAmount,principalReserve,timestamp,user,type,priceUSDTCollateral,reservePriceETHPrincipal,reservePriceUSDPrincipal,reservePriceETHCollateral,reservePriceUSDCollateral,amountUSDPincipal,amountUSDCollateral,liquidator,amountETHPincipal,amountETHCollateral,amountUSDPrincipal,principalCollateralStability,principalStability,collateralStability";
    // Real rows: raw units (WETH collateral, USDT debt); raw units with an empty WETH USD price;
    // decimal-normalised units.
    const RAW: &str = "6392297846520026921,WETH,0xb53c1a33016b2dc2ff3653530bff1848a515c8c5,13225996607,USDT,1621661564,0x01acb3804ba9c42111c6e9c127831eb486ca1ac7,liquidation,460298221137405.0,460298221137405.0,1.0,,,13225996607.0,,,,,,,,";
    const WETH_DEBT: &str = "248599969478657568448,LINK,0xb53c1a33016b2dc2ff3653530bff1848a515c8c5,2250946262227300101,WETH,1621755600,0xe0255bf95ea915474188f3609f329047d9fc7a5f,liquidation,461450000000000.0,,,9959940436205884.0,21.58400787995641,,5.365783700184267e+21,,,,,,,";

    fn liquidation(decoded: &Decoded) -> &Liquidation {
        match &decoded.as_ref().expect("decodes").event {
            DefiEvent::Liquidation(l) => l,
            other => panic!("not a liquidation: {other:?}"),
        }
    }

    #[test]
    fn raw_unit_rows_decode_to_base_units_with_usd() {
        let csv = format!("{HEADER}\n{RAW}\n");
        let decoded =
            decode(csv.as_bytes(), TOKENS.as_bytes(), "liquidations.csv").expect("decodes");
        let liq = liquidation(&decoded[0]);
        assert_eq!(liq.debt.symbol, "USDT");
        assert_eq!(liq.debt_covered.to_string(), "13225996607");
        assert_eq!(
            liq.amount_usd().expect("priced").cents().to_string(),
            "13226.00"
        );
        assert_eq!(liq.collateral_amount.to_string(), "6392297846520026921");
        // WETH collateral with no USD price: 1 ETH / (USDT price in ETH) = 1e18 / 460298221137405
        let weth = liq.collateral_price_usd.as_ref().expect("derived");
        assert_eq!(weth.cents().to_string(), "2172.50");
    }

    #[test]
    fn an_empty_weth_debt_price_is_derived_from_the_usdt_price() {
        let csv = format!("{HEADER}\n{WETH_DEBT}\n");
        let decoded =
            decode(csv.as_bytes(), TOKENS.as_bytes(), "liquidations.csv").expect("decodes");
        let liq = liquidation(&decoded[0]);
        // 2.2509… WETH × (1e18 / 4.6145e14) USD = 4877.985…
        assert_eq!(
            liq.amount_usd().expect("priced").cents().to_string(),
            "4877.99"
        );
    }

    #[test]
    fn normalised_rows_become_the_same_base_units() {
        let normalised = "1.046086896423974,WETH,0xb53c1a33016b2dc2ff3653530bff1848a515c8c5,2598.419589,USDC,1628000000,0x01acb3804ba9c42111c6e9c127831eb486ca1ac7,liquidation,0.00034101520977967,0.000341,0.9998772211441046,,,,,0x1111111111111111111111111111111111111111,,,,,,";
        let csv = format!("{HEADER}\n{normalised}\n");
        let decoded =
            decode(csv.as_bytes(), TOKENS.as_bytes(), "liquidations.csv").expect("decodes");
        let liq = liquidation(&decoded[0]);
        assert_eq!(liq.debt_covered.to_string(), "2598419589");
        assert_eq!(liq.collateral_amount.to_string(), "1046086896423974000");
        assert!(liq.liquidator.is_some());
    }

    #[test]
    fn repeated_keys_get_distinct_ids_and_unknown_symbols_are_rejected() {
        let ust = RAW.replace(",USDT,", ",UST,");
        let csv = format!("{HEADER}\n{RAW}\n{RAW}\n{ust}\n");
        let decoded =
            decode(csv.as_bytes(), TOKENS.as_bytes(), "liquidations.csv").expect("decodes");
        let a = decoded[0].as_ref().expect("first").event_id;
        let b = decoded[1].as_ref().expect("second").event_id;
        assert_ne!(a, b, "a duplicated row is a second event, not the same one");
        let rejected = decoded[2].as_ref().expect_err("UST is not in tokens.csv");
        assert!(
            rejected.reason.contains("unknown reserve symbol \"UST\""),
            "{}",
            rejected.reason
        );
        assert_eq!(rejected.origin, "liquidations.csv:4");
    }
}
