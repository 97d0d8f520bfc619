//! Checked inputs and the text of outputs shared by every resolver: addresses, page sizes and
//! money. A leaf: it imports nothing of the API but its error type.

use bigdecimal::BigDecimal;

use crate::error::ApiError;

/// Largest page a connection returns.
pub const MAX_FIRST: i32 = 1000;

/// Parses a 20-byte hex address into its lowercase form, or a `BAD_USER_INPUT` error.
pub fn parse_address(text: &str) -> Result<String, ApiError> {
    let t = text.trim();
    let well_formed =
        t.len() == 42 && t.starts_with("0x") && t[2..].bytes().all(|b| b.is_ascii_hexdigit());
    if !well_formed {
        return Err(ApiError::BadUserInput(format!(
            "{text:?} is not a 20-byte hex address"
        )));
    }
    Ok(t.to_ascii_lowercase())
}

/// Checks `first` against the page bounds.
pub fn page_size(first: Option<i32>, default: i32) -> Result<i64, ApiError> {
    let first = first.unwrap_or(default);
    if !(0..=MAX_FIRST).contains(&first) {
        return Err(ApiError::BadUserInput(format!(
            "first must be between 0 and {MAX_FIRST}, got {first}"
        )));
    }
    Ok(i64::from(first))
}

/// A decimal as GraphQL shows money: no exponent, no trailing zeros.
pub fn decimal_text(v: &BigDecimal) -> String {
    chainfold_domain::decision::plain(v).to_string()
}
