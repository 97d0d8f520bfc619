//! Exact money types.
//!
//! Token amounts are raw base units (`U256`), written as decimal strings on the wire so a person
//! can read them in `chainfold tail`, and stored as `NUMERIC(78,0)`. USD values are arbitrary
//! precision decimals ([`bigdecimal::BigDecimal`]): recorded prices carry up to 34 significant
//! digits, more than `rust_decimal` holds.

use std::fmt;
use std::str::FromStr;

use alloy_primitives::U256;
use bigdecimal::{BigDecimal, RoundingMode};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a textual amount or price could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    #[error("{0:?} is not a number")]
    NotANumber(String),
    #[error("{0:?} is negative")]
    Negative(String),
    #[error("{0:?} is not a whole number of base units")]
    Fractional(String),
    #[error("{0:?} does not fit in 256 bits")]
    TooLarge(String),
    #[error(transparent)]
    OutOfBounds(crate::number::NumberError),
}

/// Fractional digits kept in stored USD values (half-even rounding). Far below a cent, so sums
/// over millions of events stay exact to the cent.
pub const USD_SCALE: i64 = 18;

/// A token amount in raw base units (wei for 18-decimal tokens).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct TokenAmount(pub U256);

impl TokenAmount {
    pub const ZERO: TokenAmount = TokenAmount(U256::ZERO);

    /// Parses a plain base-10 integer (`"2000000000"`).
    pub fn parse_integer(text: &str) -> Result<Self, AmountError> {
        let trimmed = text.trim();
        if trimmed.starts_with('-') {
            return Err(AmountError::Negative(text.to_owned()));
        }
        if trimmed.is_empty() || !trimmed.bytes().all(|b| b.is_ascii_digit()) {
            return Err(AmountError::NotANumber(text.to_owned()));
        }
        U256::from_str_radix(trimmed, 10)
            .map(TokenAmount)
            .map_err(|_| AmountError::TooLarge(text.to_owned()))
    }

    /// Parses any decimal notation that denotes a whole number, including the float forms
    /// recorded by exporters (`"1.5876352345528256e+16"`, `"4633409736990203.0"`), to the exact
    /// integer the text denotes. `"1.5e-3"` is an error, not a rounding.
    pub fn parse_exact(text: &str) -> Result<Self, AmountError> {
        let trimmed = text.trim();
        if let Ok(amount) = Self::parse_integer(trimmed) {
            return Ok(amount);
        }
        let value = parse_decimal(trimmed)?;
        Self::from_whole_decimal(&value, text)
    }

    /// Parses a decimal-normalised amount (`"1.046086896423974"` WETH) into base units:
    /// `text × 10^decimals`, rounded half-even to a whole unit (the recorded text was already
    /// rounded by the exporter, so no exactness is lost that was still there).
    pub fn parse_scaled(text: &str, decimals: u8) -> Result<Self, AmountError> {
        let value = parse_decimal(text.trim())?;
        let scaled = (value * BigDecimal::new(1.into(), -i64::from(decimals)))
            .with_scale_round(0, RoundingMode::HalfEven);
        Self::from_whole_decimal(&scaled, text)
    }

    fn from_whole_decimal(value: &BigDecimal, text: &str) -> Result<Self, AmountError> {
        if value.sign() == bigdecimal::num_bigint::Sign::Minus {
            return Err(AmountError::Negative(text.to_owned()));
        }
        if !value.is_integer() {
            return Err(AmountError::Fractional(text.to_owned()));
        }
        let digits = value.with_scale(0).to_string();
        U256::from_str_radix(&digits, 10)
            .map(TokenAmount)
            .map_err(|_| AmountError::TooLarge(text.to_owned()))
    }

    /// The amount in whole tokens, exactly: `self / 10^decimals`.
    pub fn to_units(&self, decimals: u8) -> BigDecimal {
        let digits = self.0.to_string();
        let int = BigDecimal::from_str(&digits).expect("U256 prints as a decimal integer");
        int * BigDecimal::new(1.into(), i64::from(decimals))
    }

    /// The amount as an exact decimal integer, for binding to `NUMERIC(78,0)`.
    pub fn to_decimal(&self) -> BigDecimal {
        BigDecimal::from_str(&self.0.to_string()).expect("U256 prints as a decimal integer")
    }
}

impl fmt::Display for TokenAmount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl Serialize for TokenAmount {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for TokenAmount {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        TokenAmount::parse_integer(&text).map_err(serde::de::Error::custom)
    }
}

/// An exact, non-negative USD amount or price.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct UsdValue(pub BigDecimal);

impl UsdValue {
    /// Parses a price as recorded (`"0.9938318274296357543568636362026045"`, `"2.06891441e+19"`).
    pub fn parse(text: &str) -> Result<Self, AmountError> {
        let value = parse_decimal(text.trim())?;
        if value.sign() == bigdecimal::num_bigint::Sign::Minus {
            return Err(AmountError::Negative(text.to_owned()));
        }
        Ok(UsdValue(value.normalized()))
    }

    /// `amount / 10^decimals × price`, rounded half-even to [`USD_SCALE`] digits.
    pub fn of(amount: &TokenAmount, decimals: u8, price: &UsdValue) -> UsdValue {
        UsdValue(
            (amount.to_units(decimals) * &price.0)
                .with_scale_round(USD_SCALE, RoundingMode::HalfEven),
        )
    }

    /// Rounded to whole cents (half-even), for display and comparisons "to the cent".
    pub fn cents(&self) -> BigDecimal {
        self.0.with_scale_round(2, RoundingMode::HalfEven)
    }
}

impl fmt::Display for UsdValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.to_plain_string())
    }
}

impl Serialize for UsdValue {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for UsdValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        UsdValue::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Parses decimal text in plain or scientific notation within the bounds of
/// [`crate::number`] (a recorded or published number cannot expand into billions of digits).
fn parse_decimal(text: &str) -> Result<BigDecimal, AmountError> {
    crate::number::parse_decimal(text).map_err(|err| match err {
        crate::number::NumberError::NotANumber(_) => AmountError::NotANumber(text.to_owned()),
        crate::number::NumberError::TooLarge(_) | crate::number::NumberError::TooPrecise(_) => {
            AmountError::TooLarge(text.to_owned())
        }
        other => AmountError::OutOfBounds(other),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_notation_parses_to_the_exact_integer_it_denotes() {
        let a = TokenAmount::parse_exact("1.5876352345528256e+16").expect("valid");
        assert_eq!(a.to_string(), "15876352345528256");
        let b = TokenAmount::parse_exact("7.713119002506758e+30").expect("valid");
        assert_eq!(b.to_string(), "7713119002506758000000000000000");
        let c = TokenAmount::parse_exact("4633409736990203.0").expect("valid");
        assert_eq!(c.to_string(), "4633409736990203");
    }

    #[test]
    fn fractional_negative_and_garbage_amounts_are_rejected() {
        assert!(matches!(
            TokenAmount::parse_exact("1.5e-3"),
            Err(AmountError::Fractional(_))
        ));
        assert!(matches!(
            TokenAmount::parse_exact("-5"),
            Err(AmountError::Negative(_))
        ));
        assert!(matches!(
            TokenAmount::parse_exact("NaN"),
            Err(AmountError::NotANumber(_))
        ));
        assert!(matches!(
            TokenAmount::parse_exact(""),
            Err(AmountError::NotANumber(_))
        ));
        assert!(matches!(
            TokenAmount::parse_exact("1e80"),
            Err(AmountError::TooLarge(_))
        ));
    }

    #[test]
    fn scaled_amounts_become_base_units() {
        let weth = TokenAmount::parse_scaled("1.046086896423974", 18).expect("valid");
        assert_eq!(weth.to_string(), "1046086896423974000");
        let usdc = TokenAmount::parse_scaled("2598.419589", 6).expect("valid");
        assert_eq!(usdc.to_string(), "2598419589");
    }

    #[test]
    fn usd_value_is_amount_over_decimals_times_price() {
        let amount = TokenAmount::parse_integer("2000000000").expect("valid");
        let price = UsdValue::parse("0.9938318274296357543568636362026045").expect("valid");
        let usd = UsdValue::of(&amount, 6, &price);
        assert_eq!(usd.to_string(), "1987.663654859271508714");
        assert_eq!(usd.cents().to_string(), "1987.66");
    }

    #[test]
    fn amounts_round_trip_as_decimal_strings() {
        let amount = TokenAmount::parse_integer("145000000000000000000").expect("valid");
        let json = serde_json::to_string(&amount).expect("serialise");
        assert_eq!(json, "\"145000000000000000000\"");
        let back: TokenAmount = serde_json::from_str(&json).expect("deserialise");
        assert_eq!(back, amount);
        let usd: UsdValue = serde_json::from_str("\"1.25\"").expect("deserialise");
        assert_eq!(serde_json::to_string(&usd).expect("serialise"), "\"1.25\"");
    }
}
