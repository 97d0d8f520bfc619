//! The compact binary form of an [`Envelope`] on the log, beside the JSON form it replaces for
//! new records (both are read, so a topic written by an older build stays readable).
//!
//! A record in this form starts with [`MAGIC`] (`0xCF`, which no JSON text and no UTF-8 text
//! starts with), then the format byte ([`FORMAT`]), then the envelope's fields in declaration
//! order:
//!
//! - integers: `u8` as one byte, `u16` two bytes little-endian, `u32`/`u64` LEB128 varints,
//!   `i32`/`i64` zigzag varints;
//! - `bool` one byte, 0 or 1; `Option<T>` one byte, 0 (`None`) or 1 then `T`;
//! - `Address` 20 bytes, `B256` 32 bytes, raw;
//! - text: varint byte length, then UTF-8;
//! - `TokenAmount`: one length byte (0–32), then the integer's big-endian bytes without leading
//!   zeros; `UsdValue` and the oracle's `BigDecimal`: their decimal text, as in JSON;
//! - time: seconds since the epoch (zigzag varint), then nanoseconds (varint);
//! - the event: its kind as one byte (1 = deposit … 16 = transfer, [`DefiEvent`]'s order), then
//!   its fields in declaration order.
//!
//! Reading is strict: a truncated record, a byte left over, a flag that is not 0 or 1, an amount
//! longer than 32 bytes, bad UTF-8 or an unknown kind is an error naming what was wrong, so a
//! damaged record is dead-lettered with its reason, never half-read. Why a binary form: on the
//! dense benchmark chain the JSON form was 807 bytes a swap, and writing and reading it took ~10 %
//! of ingest's CPU and ~25 % of the projector's.

use alloy_primitives::{Address, B256, U256};
use bigdecimal::BigDecimal;
use chrono::{DateTime, Utc};

use crate::amount::{TokenAmount, UsdValue};
use crate::envelope::*;

/// The first byte of a binary envelope.
pub const MAGIC: u8 = 0xCF;
/// The layout version after [`MAGIC`]; a reader refuses layouts it does not know.
pub const FORMAT: u8 = 1;

/// Whether a payload is in the binary form (else it is read as JSON).
pub fn is_binary(payload: &[u8]) -> bool {
    payload.first() == Some(&MAGIC)
}

/// The envelope in the binary form.
pub fn encode(env: &Envelope) -> Vec<u8> {
    let mut out = vec![MAGIC, FORMAT];
    out.reserve(254);
    env.schema_version.put(&mut out);
    env.event_id.0.put(&mut out);
    env.chain_id.put(&mut out);
    env.block.put(&mut out);
    env.tx_hash.put(&mut out);
    env.log_index.put(&mut out);
    env.block_time.put(&mut out);
    env.source.put(&mut out);
    env.retracted.put(&mut out);
    env.event.put(&mut out);
    out
}

/// Why a binary payload is not an envelope this build reads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("unsupported binary envelope format {0} (this build reads format {FORMAT})")]
    Format(u8),
    #[error("unsupported schema version {0} (this build reads version {SCHEMA_VERSION})")]
    Version(u16),
    #[error("binary envelope ends early: {0} needs more bytes at byte {1}")]
    Truncated(&'static str, usize),
    #[error("binary envelope has {0} bytes after its event")]
    Trailing(usize),
    #[error("binary envelope: bad {0} at byte {1}")]
    Invalid(&'static str, usize),
    #[error("binary envelope: unknown event kind {0}")]
    Kind(u8),
}

/// Reads a binary envelope (the payload starts with [`MAGIC`]).
pub fn decode(payload: &[u8]) -> Result<Envelope, CodecError> {
    let mut r = Reader {
        bytes: payload,
        at: 0,
    };
    if r.byte("magic")? != MAGIC {
        return Err(CodecError::Invalid("magic byte", 0));
    }
    let format = r.byte("format")?;
    if format != FORMAT {
        return Err(CodecError::Format(format));
    }
    let schema_version = u16::get(&mut r)?;
    if schema_version != SCHEMA_VERSION {
        return Err(CodecError::Version(schema_version));
    }
    let env = Envelope {
        schema_version,
        event_id: EventId(B256::get(&mut r)?),
        chain_id: Wire::get(&mut r)?,
        block: Wire::get(&mut r)?,
        tx_hash: Wire::get(&mut r)?,
        log_index: Wire::get(&mut r)?,
        block_time: Wire::get(&mut r)?,
        source: Wire::get(&mut r)?,
        retracted: Wire::get(&mut r)?,
        event: Wire::get(&mut r)?,
    };
    match payload.len() - r.at {
        0 => Ok(env),
        left => Err(CodecError::Trailing(left)),
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], CodecError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|end| *end <= self.bytes.len())
            .ok_or(CodecError::Truncated(what, self.at))?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    fn byte(&mut self, what: &'static str) -> Result<u8, CodecError> {
        Ok(self.take(1, what)?[0])
    }

    /// A LEB128 varint of at most `bits` bits, in its shortest form (a value has one encoding).
    fn varint(&mut self, bits: u32, what: &'static str) -> Result<u64, CodecError> {
        let start = self.at;
        let mut value = 0u64;
        let mut shift = 0u32;
        loop {
            let b = self.byte(what)?;
            let low = u64::from(b & 0x7f);
            let overlong = shift > 0 && b == 0;
            let overflow = shift >= bits || (bits - shift < 7 && low >> (bits - shift) != 0);
            if overlong || overflow {
                return Err(CodecError::Invalid(what, start));
            }
            value |= low << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
            shift += 7;
        }
    }

    fn text(&mut self, what: &'static str) -> Result<&'a str, CodecError> {
        let len = self.varint(32, what)? as usize;
        let start = self.at;
        std::str::from_utf8(self.take(len, what)?).map_err(|_| CodecError::Invalid(what, start))
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn put_text(out: &mut Vec<u8>, text: &str) {
    put_varint(out, text.len() as u64);
    out.extend_from_slice(text.as_bytes());
}

/// A value's binary form: written by `put`, read back equal by `get`.
trait Wire: Sized {
    fn put(&self, out: &mut Vec<u8>);
    fn get(r: &mut Reader<'_>) -> Result<Self, CodecError>;
}

impl Wire for u8 {
    fn put(&self, out: &mut Vec<u8>) {
        out.push(*self);
    }
    fn get(r: &mut Reader<'_>) -> Result<Self, CodecError> {
        r.byte("u8")
    }
}

impl Wire for u16 {
    fn put(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
    fn get(r: &mut Reader<'_>) -> Result<Self, CodecError> {
        let b = r.take(2, "u16")?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
}

impl Wire for u32 {
    fn put(&self, out: &mut Vec<u8>) {
        put_varint(out, u64::from(*self));
    }
    fn get(r: &mut Reader<'_>) -> Result<Self, CodecError> {
        Ok(r.varint(32, "u32")? as u32)
    }
}

impl Wire for u64 {
    fn put(&self, out: &mut Vec<u8>) {
        put_varint(out, *self);
    }
    fn get(r: &mut Reader<'_>) -> Result<Self, CodecError> {
        r.varint(64, "u64")
    }
}

impl Wire for i32 {
    fn put(&self, out: &mut Vec<u8>) {
        put_varint(out, zigzag(i64::from(*self)));
    }
    fn get(r: &mut Reader<'_>) -> Result<Self, CodecError> {
        let at = r.at;
        i32::try_from(unzigzag(r.varint(32, "i32")?)).map_err(|_| CodecError::Invalid("i32", at))
    }
}

impl Wire for bool {
    fn put(&self, out: &mut Vec<u8>) {
        out.push(u8::from(*self));
    }
    fn get(r: &mut Reader<'_>) -> Result<Self, CodecError> {
        let at = r.at;
        match r.byte("bool")? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(CodecError::Invalid("bool", at)),
        }
    }
}

impl<T: Wire> Wire for Option<T> {
    fn put(&self, out: &mut Vec<u8>) {
        match self {
            None => out.push(0),
            Some(v) => {
                out.push(1);
                v.put(out);
            }
        }
    }
    fn get(r: &mut Reader<'_>) -> Result<Self, CodecError> {
        let at = r.at;
        match r.byte("option flag")? {
            0 => Ok(None),
            1 => T::get(r).map(Some),
            _ => Err(CodecError::Invalid("option flag", at)),
        }
    }
}

impl Wire for Vec<u32> {
    fn put(&self, out: &mut Vec<u8>) {
        put_varint(out, self.len() as u64);
        for v in self {
            v.put(out);
        }
    }
    fn get(r: &mut Reader<'_>) -> Result<Self, CodecError> {
        let n = r.varint(32, "list length")? as usize;
        // Each element takes at least one byte: a length beyond the record is refused before
        // anything is allocated for it.
        if n > r.bytes.len() - r.at {
            return Err(CodecError::Truncated("list", r.at));
        }
        (0..n).map(|_| u32::get(r)).collect()
    }
}

impl Wire for String {
    fn put(&self, out: &mut Vec<u8>) {
        put_text(out, self);
    }
    fn get(r: &mut Reader<'_>) -> Result<Self, CodecError> {
        r.text("text").map(str::to_owned)
    }
}

impl Wire for Address {
    fn put(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.as_slice());
    }
    fn get(r: &mut Reader<'_>) -> Result<Self, CodecError> {
        Ok(Address::from_slice(r.take(20, "address")?))
    }
}

impl Wire for B256 {
    fn put(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.as_slice());
    }
    fn get(r: &mut Reader<'_>) -> Result<Self, CodecError> {
        Ok(B256::from_slice(r.take(32, "hash")?))
    }
}

impl Wire for TokenAmount {
    fn put(&self, out: &mut Vec<u8>) {
        let bytes = self.0.to_be_bytes::<32>();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push((32 - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    fn get(r: &mut Reader<'_>) -> Result<Self, CodecError> {
        let at = r.at;
        let len = usize::from(r.byte("amount length")?);
        if len > 32 {
            return Err(CodecError::Invalid("amount length", at));
        }
        let bytes = r.take(len, "amount")?;
        if bytes.first() == Some(&0) {
            // One integer, one form: a leading zero byte would give a second encoding.
            return Err(CodecError::Invalid("amount (leading zero byte)", at));
        }
        Ok(TokenAmount(U256::from_be_slice(bytes)))
    }
}

impl Wire for UsdValue {
    fn put(&self, out: &mut Vec<u8>) {
        put_text(out, &self.to_string());
    }
    fn get(r: &mut Reader<'_>) -> Result<Self, CodecError> {
        let at = r.at;
        UsdValue::parse(r.text("usd value")?).map_err(|_| CodecError::Invalid("usd value", at))
    }
}

impl Wire for BigDecimal {
    fn put(&self, out: &mut Vec<u8>) {
        put_text(out, &self.to_string());
    }
    fn get(r: &mut Reader<'_>) -> Result<Self, CodecError> {
        let at = r.at;
        crate::number::parse_decimal(r.text("decimal")?)
            .map_err(|_| CodecError::Invalid("decimal", at))
    }
}

impl Wire for DateTime<Utc> {
    fn put(&self, out: &mut Vec<u8>) {
        put_varint(out, zigzag(self.timestamp()));
        put_varint(out, u64::from(self.timestamp_subsec_nanos()));
    }
    fn get(r: &mut Reader<'_>) -> Result<Self, CodecError> {
        let at = r.at;
        let secs = unzigzag(r.varint(64, "time")?);
        let nanos = r.varint(32, "time")? as u32;
        DateTime::from_timestamp(secs, nanos).ok_or(CodecError::Invalid("time", at))
    }
}

impl Wire for Source {
    fn put(&self, out: &mut Vec<u8>) {
        match self {
            Source::Rpc => out.push(0),
            Source::Replay { dataset, record } => {
                out.push(1);
                dataset.put(out);
                record.put(out);
            }
        }
    }
    fn get(r: &mut Reader<'_>) -> Result<Self, CodecError> {
        let at = r.at;
        match r.byte("source")? {
            0 => Ok(Source::Rpc),
            1 => Ok(Source::Replay {
                dataset: Wire::get(r)?,
                record: Wire::get(r)?,
            }),
            _ => Err(CodecError::Invalid("source", at)),
        }
    }
}

/// A field-less enum as one byte, each variant's given. Writing matches every variant, so one
/// added to the enum and not here does not compile.
macro_rules! wire_enum {
    ($ty:ident: $($n:literal => $variant:ident),+ $(,)?) => {
        impl Wire for $ty {
            fn put(&self, out: &mut Vec<u8>) {
                out.push(match self {
                    $($ty::$variant => $n),+
                });
            }
            fn get(r: &mut Reader<'_>) -> Result<Self, CodecError> {
                let at = r.at;
                match r.byte(stringify!($ty))? {
                    $($n => Ok($ty::$variant),)+
                    _ => Err(CodecError::Invalid(stringify!($ty), at)),
                }
            }
        }
    };
}

wire_enum!(LiquidityKind: 0 => Mint, 1 => Burn);
wire_enum!(IsolationKind: 0 => DebtCeiling, 1 => TotalDebt);

/// A struct as its fields in the order given. The reader builds the struct from every listed
/// field, so a field added to the struct and not here does not compile.
macro_rules! wire_struct {
    ($ty:ident { $($field:ident),+ $(,)? }) => {
        impl Wire for $ty {
            fn put(&self, out: &mut Vec<u8>) {
                $(self.$field.put(out);)+
            }
            fn get(r: &mut Reader<'_>) -> Result<Self, CodecError> {
                Ok($ty { $($field: Wire::get(r)?),+ })
            }
        }
    };
}

wire_struct!(BlockRef { number, hash });
wire_struct!(Reserve {
    address,
    symbol,
    decimals
});
wire_struct!(LendingFlow {
    protocol,
    wallet,
    counterparty,
    reserve,
    amount,
    price_usd,
    pool
});
wire_struct!(Liquidation {
    protocol,
    wallet,
    liquidator,
    collateral,
    collateral_amount,
    collateral_price_usd,
    debt,
    debt_covered,
    debt_price_usd,
    pool,
});
wire_struct!(FlashLoan {
    protocol,
    pool,
    target,
    initiator,
    asset,
    amount,
    premium
});
wire_struct!(Swap {
    protocol,
    pool,
    sender,
    recipient,
    token_in,
    amount_in,
    token_out,
    amount_out,
    tx_position,
    trace_address,
    reverted,
    v3,
});
wire_struct!(V3State {
    sqrt_price_x96,
    liquidity,
    tick
});
wire_struct!(PoolSync {
    protocol,
    pool,
    token0,
    token1,
    reserve0,
    reserve1
});
wire_struct!(LiquidityChange {
    protocol,
    pool,
    kind,
    sender,
    owner,
    amount0,
    amount1,
    liquidity,
    tick_lower,
    tick_upper,
});
wire_struct!(OracleUpdate {
    feed,
    description,
    asset,
    answer,
    decimals,
    round_id,
    updated_at
});
wire_struct!(ReserveUpdate {
    protocol,
    pool,
    reserve,
    liquidity_rate,
    stable_borrow_rate,
    variable_borrow_rate,
    liquidity_index,
    variable_borrow_index,
});
wire_struct!(ReserveConfig {
    protocol,
    pool,
    reserve,
    ltv,
    liquidation_threshold,
    liquidation_bonus
});
wire_struct!(CollateralUse {
    protocol,
    pool,
    wallet,
    reserve,
    enabled
});
wire_struct!(EModeChange {
    protocol,
    pool,
    category,
    change
});
wire_struct!(IsolationChange {
    protocol,
    pool,
    reserve,
    kind,
    value
});
wire_struct!(Erc20Transfer {
    token,
    from,
    to,
    value,
    metadata
});
wire_struct!(TokenMetadata {
    name,
    symbol,
    decimals
});

impl Wire for EModeKind {
    fn put(&self, out: &mut Vec<u8>) {
        match self {
            EModeKind::Category {
                ltv,
                liquidation_threshold,
                liquidation_bonus,
                label,
            } => {
                out.push(0);
                ltv.put(out);
                liquidation_threshold.put(out);
                liquidation_bonus.put(out);
                label.put(out);
            }
            EModeKind::Asset { reserve } => {
                out.push(1);
                reserve.put(out);
            }
            EModeKind::User { wallet } => {
                out.push(2);
                wallet.put(out);
            }
        }
    }
    fn get(r: &mut Reader<'_>) -> Result<Self, CodecError> {
        let at = r.at;
        match r.byte("emode change")? {
            0 => Ok(EModeKind::Category {
                ltv: Wire::get(r)?,
                liquidation_threshold: Wire::get(r)?,
                liquidation_bonus: Wire::get(r)?,
                label: Wire::get(r)?,
            }),
            1 => Ok(EModeKind::Asset {
                reserve: Wire::get(r)?,
            }),
            2 => Ok(EModeKind::User {
                wallet: Wire::get(r)?,
            }),
            _ => Err(CodecError::Invalid("emode change", at)),
        }
    }
}

/// The event kinds' bytes, in [`DefiEvent`]'s order. Never renumbered: records on the log keep
/// them.
macro_rules! wire_event {
    ($($n:literal => $variant:ident),+ $(,)?) => {
        impl Wire for DefiEvent {
            fn put(&self, out: &mut Vec<u8>) {
                match self {
                    $(DefiEvent::$variant(e) => {
                        out.push($n);
                        e.put(out);
                    })+
                }
            }
            fn get(r: &mut Reader<'_>) -> Result<Self, CodecError> {
                match r.byte("event kind")? {
                    $($n => Wire::get(r).map(DefiEvent::$variant),)+
                    other => Err(CodecError::Kind(other)),
                }
            }
        }
    };
}

wire_event! {
    1 => Deposit,
    2 => Borrow,
    3 => Repay,
    4 => Redeem,
    5 => Liquidation,
    6 => FlashLoan,
    7 => Swap,
    8 => PoolSync,
    9 => Liquidity,
    10 => OracleUpdate,
    11 => ReserveUpdate,
    12 => ReserveConfig,
    13 => CollateralUse,
    14 => EMode,
    15 => Isolation,
    16 => Transfer,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::decode_envelope;

    fn amount(text: &str) -> TokenAmount {
        TokenAmount::parse_integer(text).expect("valid")
    }

    fn reserve(b: u8) -> Reserve {
        Reserve {
            address: Address::repeat_byte(b),
            symbol: format!("T{b}Ω"),
            decimals: b,
        }
    }

    fn flow(b: u8, full: bool) -> LendingFlow {
        LendingFlow {
            protocol: "aave_v2".into(),
            wallet: Address::repeat_byte(b),
            counterparty: full.then(|| Address::repeat_byte(b + 1)),
            reserve: reserve(b),
            amount: amount("2000000000"),
            price_usd: full
                .then(|| UsdValue::parse("0.9938318274296357543568636362026045").expect("valid")),
            pool: full.then(|| Address::repeat_byte(b + 2)),
        }
    }

    /// One event of every kind, each field set both ways where it can be absent.
    fn events() -> Vec<DefiEvent> {
        let max = TokenAmount(U256::MAX);
        let mut all = Vec::new();
        for full in [false, true] {
            all.push(DefiEvent::Deposit(flow(1, full)));
            all.push(DefiEvent::Borrow(flow(2, full)));
            all.push(DefiEvent::Repay(flow(3, full)));
            all.push(DefiEvent::Redeem(flow(4, full)));
            all.push(DefiEvent::Liquidation(Liquidation {
                protocol: "aave_v3".into(),
                wallet: Address::repeat_byte(5),
                liquidator: full.then(|| Address::repeat_byte(6)),
                collateral: reserve(7),
                collateral_amount: max,
                collateral_price_usd: full
                    .then(|| UsdValue::parse("2.06891441e+19").expect("valid")),
                debt: reserve(8),
                debt_covered: TokenAmount::ZERO,
                debt_price_usd: full.then(|| UsdValue::parse("1").expect("valid")),
                pool: full.then(|| Address::repeat_byte(9)),
            }));
            all.push(DefiEvent::Swap(Swap {
                protocol: "uniswap_v3".into(),
                pool: Address::repeat_byte(10),
                sender: Address::repeat_byte(11),
                recipient: Address::repeat_byte(12),
                token_in: Address::repeat_byte(13),
                amount_in: amount("1"),
                token_out: Address::repeat_byte(14),
                amount_out: amount("340282366920938463463374607431768211456"),
                tx_position: u32::MAX,
                trace_address: if full {
                    vec![0, 127, 128, u32::MAX]
                } else {
                    Vec::new()
                },
                reverted: full,
                v3: full.then(|| V3State {
                    sqrt_price_x96: amount("79228162514264337593543950336"),
                    liquidity: amount("0"),
                    tick: -887272,
                }),
            }));
            all.push(DefiEvent::Liquidity(LiquidityChange {
                protocol: "uniswap_v3".into(),
                pool: Address::repeat_byte(15),
                kind: if full {
                    LiquidityKind::Burn
                } else {
                    LiquidityKind::Mint
                },
                sender: full.then(|| Address::repeat_byte(16)),
                owner: full.then(|| Address::repeat_byte(17)),
                amount0: amount("5"),
                amount1: amount("6"),
                liquidity: full.then(|| amount("7")),
                tick_lower: full.then_some(i32::MIN),
                tick_upper: full.then_some(i32::MAX),
            }));
            all.push(DefiEvent::OracleUpdate(OracleUpdate {
                feed: Address::repeat_byte(18),
                description: "ETH / USD".into(),
                asset: full.then(|| Address::repeat_byte(19)),
                answer: if full {
                    "-184512345678"
                } else {
                    "184512345678"
                }
                .parse()
                .expect("valid"),
                decimals: 8,
                round_id: amount("18446744073709551617"),
                updated_at: full
                    .then(|| DateTime::from_timestamp(1_700_000_000, 123_456_789).expect("valid")),
            }));
            all.push(DefiEvent::Transfer(Erc20Transfer {
                token: Address::repeat_byte(20),
                from: Address::ZERO,
                to: Address::repeat_byte(21),
                value: amount("42"),
                metadata: TokenMetadata {
                    name: full.then(|| "Wrapped Ether".into()),
                    symbol: full.then(|| "WETH".into()),
                    decimals: full.then_some(18),
                },
            }));
        }
        all.push(DefiEvent::FlashLoan(FlashLoan {
            protocol: "aave_v2".into(),
            pool: Address::repeat_byte(22),
            target: Address::repeat_byte(23),
            initiator: Address::repeat_byte(24),
            asset: reserve(25),
            amount: amount("1000000"),
            premium: amount("900"),
        }));
        all.push(DefiEvent::PoolSync(PoolSync {
            protocol: "uniswap_v2".into(),
            pool: Address::repeat_byte(26),
            token0: Address::repeat_byte(27),
            token1: Address::repeat_byte(28),
            reserve0: amount("123456789012345678901234567890"),
            reserve1: TokenAmount::ZERO,
        }));
        all.push(DefiEvent::ReserveUpdate(ReserveUpdate {
            protocol: "aave_v2".into(),
            pool: Address::repeat_byte(29),
            reserve: reserve(30),
            liquidity_rate: amount("1"),
            stable_borrow_rate: amount("2"),
            variable_borrow_rate: amount("3"),
            liquidity_index: amount("1000000000000000000000000000"),
            variable_borrow_index: amount("1000000000000000000000000001"),
        }));
        all.push(DefiEvent::ReserveConfig(ReserveConfig {
            protocol: "aave_v2".into(),
            pool: Address::repeat_byte(31),
            reserve: reserve(32),
            ltv: 8000,
            liquidation_threshold: 8250,
            liquidation_bonus: u16::MAX,
        }));
        for enabled in [false, true] {
            all.push(DefiEvent::CollateralUse(CollateralUse {
                protocol: "aave_v3".into(),
                pool: Address::repeat_byte(33),
                wallet: Address::repeat_byte(34),
                reserve: reserve(35),
                enabled,
            }));
        }
        for change in [
            EModeKind::Category {
                ltv: 9700,
                liquidation_threshold: 9750,
                liquidation_bonus: 10100,
                label: "ETH correlated".into(),
            },
            EModeKind::Asset {
                reserve: reserve(36),
            },
            EModeKind::User {
                wallet: Address::repeat_byte(37),
            },
        ] {
            all.push(DefiEvent::EMode(EModeChange {
                protocol: "aave_v3".into(),
                pool: Address::repeat_byte(38),
                category: 1,
                change,
            }));
        }
        for kind in [IsolationKind::DebtCeiling, IsolationKind::TotalDebt] {
            all.push(DefiEvent::Isolation(IsolationChange {
                protocol: "aave_v3".into(),
                pool: Address::repeat_byte(39),
                reserve: reserve(40),
                kind,
                value: amount("100000000"),
            }));
        }
        all
    }

    fn envelopes() -> Vec<Envelope> {
        events()
            .into_iter()
            .enumerate()
            .map(|(i, event)| {
                let i = i as u64;
                let full = i % 2 == 0;
                Envelope {
                    schema_version: SCHEMA_VERSION,
                    event_id: EventId::of_log(i, &B256::repeat_byte(i as u8), i as u32),
                    chain_id: if full { u64::MAX - i } else { i },
                    block: full.then(|| BlockRef {
                        number: u64::MAX >> i,
                        hash: (i % 4 == 0).then(|| B256::repeat_byte(0xbb)),
                    }),
                    tx_hash: full.then(|| B256::repeat_byte(0xab)),
                    log_index: full.then_some(i as u32 * 1000),
                    block_time: match i % 3 {
                        0 => None,
                        1 => DateTime::from_timestamp(-62_135_596_800, 0),
                        _ => DateTime::from_timestamp(1_629_178_166, 999_999_999),
                    },
                    source: if i % 3 == 0 {
                        Source::Rpc
                    } else {
                        Source::Replay {
                            dataset: "polygon".into(),
                            record: format!("row-{i}"),
                        }
                    },
                    event,
                    retracted: i % 5 == 0,
                }
            })
            .collect()
    }

    #[test]
    fn every_kind_of_event_reads_back_equal_and_as_its_json_form_reads() {
        let all = envelopes();
        let kinds: std::collections::BTreeSet<_> =
            all.iter().map(|e| e.event.kind_name()).collect();
        assert_eq!(kinds.len(), 16, "every kind of event: {kinds:?}");
        for env in &all {
            let binary = encode(env);
            assert!(is_binary(&binary));
            let back = decode_envelope(&binary).expect("binary reads");
            assert_eq!(&back, env);
            let json = serde_json::to_vec(env).expect("serialise");
            assert!(!is_binary(&json));
            assert_eq!(decode_envelope(&json).expect("json reads"), back);
            assert!(
                binary.len() * 2 < json.len(),
                "{}: {} bytes binary, {} JSON",
                env.event.kind_name(),
                binary.len(),
                json.len()
            );
        }
    }

    #[test]
    fn every_cut_of_a_record_is_refused_with_a_reason_and_nothing_is_left_over() {
        for env in envelopes() {
            let binary = encode(&env);
            for cut in 0..binary.len() {
                let err = decode(&binary[..cut]).expect_err("a cut record is refused");
                assert!(
                    matches!(err, CodecError::Truncated(..) | CodecError::Invalid(..)),
                    "cut at {cut}: {err}"
                );
            }
            let mut longer = binary.clone();
            longer.push(0);
            assert_eq!(decode(&longer), Err(CodecError::Trailing(1)));
        }
    }

    #[test]
    fn damaged_bytes_are_refused_or_read_without_panicking() {
        // A fixed pseudo-random walk over single-byte changes of every envelope: each must
        // either be refused with a reason or read as some envelope that reads back equal.
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut refused = 0;
        for env in envelopes() {
            let binary = encode(&env);
            for _ in 0..400 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let mut damaged = binary.clone();
                let at = (seed % damaged.len() as u64) as usize;
                damaged[at] = (seed >> 32) as u8;
                match decode(&damaged) {
                    Ok(read) => assert_eq!(decode(&encode(&read)), Ok(read), "byte {at}"),
                    Err(_) => refused += 1,
                }
            }
        }
        assert!(refused > 1000, "{refused}");
    }

    #[test]
    fn versions_and_forms_it_does_not_know_are_named() {
        let env = &envelopes()[0];
        let mut binary = encode(env);
        binary[1] = 2;
        assert_eq!(
            decode_envelope(&binary).expect_err("refused"),
            "unsupported binary envelope format 2 (this build reads format 1)"
        );
        let mut binary = encode(env);
        binary[2..4].copy_from_slice(&7u16.to_le_bytes());
        assert!(decode_envelope(&binary)
            .expect_err("refused")
            .starts_with("unsupported schema version 7"));
        let mut binary = encode(env);
        let kind_at = binary.len() - encode_event_len(&env.event);
        binary[kind_at] = 200;
        assert_eq!(decode(&binary), Err(CodecError::Kind(200)));
    }

    fn encode_event_len(event: &DefiEvent) -> usize {
        let mut out = Vec::new();
        event.put(&mut out);
        out.len()
    }

    #[test]
    fn a_value_has_one_encoding() {
        // Overlong varints, amounts with a leading zero byte or over 32 bytes, flags that are
        // neither 0 nor 1: all refused, so equal envelopes are equal bytes.
        let mut r = Reader {
            bytes: &[0x80, 0x00],
            at: 0,
        };
        assert!(r.varint(64, "u64").is_err());
        let mut r = Reader {
            bytes: &[0xff, 0xff, 0xff, 0xff, 0x1f],
            at: 0,
        };
        assert!(r.varint(32, "u32").is_err(), "2^35 - 1 is not a u32");
        let mut r = Reader {
            bytes: &[0xff, 0xff, 0xff, 0xff, 0x0f],
            at: 0,
        };
        assert_eq!(r.varint(32, "u32"), Ok(u64::from(u32::MAX)));
        let mut r = Reader {
            bytes: &[0xff; 9].iter().copied().chain([0x01]).collect::<Vec<_>>(),
            at: 0,
        };
        assert_eq!(r.varint(64, "u64"), Ok(u64::MAX));
        let mut r = Reader {
            bytes: &[0xff; 9].iter().copied().chain([0x02]).collect::<Vec<_>>(),
            at: 0,
        };
        assert!(r.varint(64, "u64").is_err(), "2^64 is not a u64");
        for bytes in [&[2u8, 0, 1][..], &[33u8][..]] {
            let mut r = Reader { bytes, at: 0 };
            assert!(TokenAmount::get(&mut r).is_err(), "{bytes:?}");
        }
        let mut r = Reader { bytes: &[2], at: 0 };
        assert!(bool::get(&mut r).is_err());
        let mut r = Reader { bytes: &[2], at: 0 };
        assert!(<Option<u8>>::get(&mut r).is_err());
        for v in [0i32, -1, 1, i32::MIN, i32::MAX] {
            let mut out = Vec::new();
            v.put(&mut out);
            assert_eq!(i32::get(&mut Reader { bytes: &out, at: 0 }), Ok(v));
        }
    }

    #[test]
    fn a_list_longer_than_its_record_is_refused_before_allocating() {
        let mut out = Vec::new();
        put_varint(&mut out, u64::from(u32::MAX));
        assert!(matches!(
            <Vec<u32>>::get(&mut Reader { bytes: &out, at: 0 }),
            Err(CodecError::Truncated(..))
        ));
    }
}
