//! Bounded decimal parsing: every number a user or a log supplies as text goes through
//! [`parse_decimal`] before it becomes a `BigDecimal`.
//!
//! Why: `BigDecimal` holds `1e-9000000000` as two small integers, but the moment it is printed
//! in plain form (to bind it to SQL) or scaled it materialises nine billion digits; one GraphQL
//! filter grew the API to 8 GB that way. The limits are checked on the text, before any digit
//! is expanded: what passes has at most [`MAX_DIGITS`] significant digits, at most
//! [`MAX_SCALE`] digits after the decimal point and at most [`MAX_INTEGER_DIGITS`] before it
//! (room for any `NUMERIC(78,0)` token amount and any 18-digit USD value).

use std::str::FromStr as _;

use bigdecimal::num_bigint::BigInt;
use bigdecimal::BigDecimal;

/// Most significant digits (a U256 has 78).
pub const MAX_DIGITS: usize = 78;
/// Most digits after the decimal point once the exponent is applied.
pub const MAX_SCALE: i64 = 78;
/// Most digits before the decimal point once the exponent is applied.
pub const MAX_INTEGER_DIGITS: i64 = 78;
/// Longest text looked at (a longer one is refused without reading it).
pub const MAX_TEXT: usize = 200;

/// Why a text is not an acceptable number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NumberError {
    #[error("{0:?} is not a decimal number")]
    NotANumber(String),
    #[error("{text:?} is longer than {MAX_TEXT} characters")]
    TooLong { text: String },
    #[error("{0:?} has more than {MAX_DIGITS} significant digits")]
    TooPrecise(String),
    #[error("{0:?} has more than {MAX_SCALE} digits after the decimal point")]
    TooSmall(String),
    #[error("{0:?} has more than {MAX_INTEGER_DIGITS} digits before the decimal point")]
    TooLarge(String),
}

/// Parses plain (`-12.50`) or scientific (`1.5e+16`, `2E-3`) decimal text within the bounds
/// above. `NaN`, `inf`, hex and empty text are not numbers.
pub fn parse_decimal(text: &str) -> Result<BigDecimal, NumberError> {
    if text.len() > MAX_TEXT {
        let shown: String = text.chars().take(24).collect();
        return Err(NumberError::TooLong {
            text: format!("{shown}…"),
        });
    }
    let not = || NumberError::NotANumber(text.to_owned());
    let (mantissa, exponent) = match text.find(['e', 'E']) {
        Some(at) => (&text[..at], Some(&text[at + 1..])),
        None => (text, None),
    };
    let (negative, unsigned) = match mantissa.as_bytes().first() {
        Some(b'-') => (true, &mantissa[1..]),
        Some(b'+') => (false, &mantissa[1..]),
        _ => (false, mantissa),
    };
    let (int_part, frac_part) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    let digits_only = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if !digits_only(int_part)
        || !digits_only(frac_part)
        || (int_part.is_empty() && frac_part.is_empty())
    {
        return Err(not());
    }
    let all: String = [int_part, frac_part].concat();
    let significant = all.trim_start_matches('0');
    let exponent: i64 = match exponent {
        None => 0,
        Some(e) => {
            let (sign, digits) = match e.as_bytes().first() {
                Some(b'-') => (-1, &e[1..]),
                Some(b'+') => (1, &e[1..]),
                _ => (1, e),
            };
            if digits.is_empty() || !digits_only(digits) {
                return Err(not());
            }
            let trimmed = digits.trim_start_matches('0');
            if significant.is_empty() {
                0
            } else if trimmed.len() > 6 {
                // More than 6 exponent digits cannot pass the bounds below whatever the
                // mantissa (it has at most MAX_TEXT digits): refuse without parsing it.
                return Err(if sign < 0 {
                    NumberError::TooSmall(text.to_owned())
                } else {
                    NumberError::TooLarge(text.to_owned())
                });
            } else {
                sign * trimmed.parse::<i64>().unwrap_or(0)
            }
        }
    };
    if significant.is_empty() {
        return Ok(BigDecimal::from(0));
    }
    let trailing_zeros = significant.len() - significant.trim_end_matches('0').len();
    let significant = significant.trim_end_matches('0');
    if significant.len() > MAX_DIGITS {
        return Err(NumberError::TooPrecise(text.to_owned()));
    }
    // value = significant × 10^(trailing_zeros − frac_len + exponent)
    let power = trailing_zeros as i64 - frac_part.len() as i64 + exponent;
    let scale = -power;
    if scale > MAX_SCALE {
        return Err(NumberError::TooSmall(text.to_owned()));
    }
    if significant.len() as i64 + power > MAX_INTEGER_DIGITS {
        return Err(NumberError::TooLarge(text.to_owned()));
    }
    let mut unscaled = BigInt::from_str(significant).map_err(|_| not())?;
    if negative {
        unscaled = -unscaled;
    }
    // A non-negative scale keeps the value exact; a negative one (1e30) is expanded here, at
    // most MAX_INTEGER_DIGITS digits.
    let value = BigDecimal::new(unscaled, scale);
    Ok(if scale < 0 {
        value.with_scale(0)
    } else {
        value
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_scientific_numbers_parse_exactly() {
        let p = |s: &str| parse_decimal(s).expect(s).to_plain_string();
        assert_eq!(p("12.50"), "12.5");
        assert_eq!(p("-0.001"), "-0.001");
        assert_eq!(p("1.5876352345528256e+16"), "15876352345528256");
        assert_eq!(p("2E-3"), "0.002");
        assert_eq!(p("+7"), "7");
        assert_eq!(p(".5"), "0.5");
        assert_eq!(p("0e-999999999999"), "0");
        assert_eq!(p("1e77"), format!("1{}", "0".repeat(77)));
        assert_eq!(
            p("115792089237316195423570985008687907853269984665640564039457584007913129639935"),
            "115792089237316195423570985008687907853269984665640564039457584007913129639935"
        );
    }

    #[test]
    fn an_exponent_that_would_expand_to_billions_of_digits_is_refused_at_once() {
        for text in ["1e-9000000000", "1e-99999999999999999999999", "1e-79"] {
            assert!(
                matches!(parse_decimal(text), Err(NumberError::TooSmall(_))),
                "{text}"
            );
        }
        for text in ["1e9000000000", "1e78", "9".repeat(79).as_str()] {
            assert!(
                matches!(
                    parse_decimal(text),
                    Err(NumberError::TooLarge(_) | NumberError::TooPrecise(_))
                ),
                "{text}"
            );
        }
        assert!(matches!(
            parse_decimal(&format!("0.{}", "1".repeat(79))),
            Err(NumberError::TooPrecise(_) | NumberError::TooSmall(_))
        ));
        assert!(matches!(
            parse_decimal(&"1".repeat(300)),
            Err(NumberError::TooLong { .. })
        ));
    }

    #[test]
    fn things_that_are_not_numbers_say_so() {
        for text in [
            "", "NaN", "inf", "-inf", "0x10", "1.2.3", "1e", "e5", "1e+", "--1", "1,5", " 1",
        ] {
            assert!(
                matches!(parse_decimal(text), Err(NumberError::NotANumber(_))),
                "{text:?}"
            );
        }
    }

    #[test]
    fn every_accepted_number_prints_in_bounded_space() {
        // The property the API relies on: whatever passes prints in a few hundred bytes.
        for text in ["1e-78", "1e77", "123456789e-70", "9.99e76"] {
            let v = parse_decimal(text).expect(text);
            assert!(
                v.to_plain_string().len() <= 2 + (MAX_SCALE + MAX_INTEGER_DIGITS) as usize,
                "{text}"
            );
        }
    }
}
