//! `COPY`-style batch writes for the high-volume read models (`swap`, `pool_sync`).
//!
//! A batch of [`COPY_MIN`] rows or more goes in as one `COPY … FROM STDIN` of its rows, each id
//! once, inside a savepoint. `COPY` inserts pages of rows at a time where `INSERT … ON CONFLICT`
//! inserts one row at a time with a speculative index probe each; the statement-level feed
//! triggers fire for it as for an `INSERT`.
//!
//! Idempotence: the projector never sees a Kafka offset twice (the member skips what Postgres
//! already holds), so an event already stored can only come back as a *republished* message
//! (ingest restarted between producing and checkpointing). That is rare, so the write is
//! optimistic: the `COPY` goes first, and only when it fails on the primary key (SQLSTATE 23505)
//! does the batch roll back to the savepoint, probe for the stored ids (one
//! `SELECT event_id … = ANY($1)`) and `COPY` the rest. After a conflict the next
//! [`PROBE_AFTER_CONFLICT`] batches of that table probe first, so a republished stretch costs one
//! failed `COPY`, not one per batch. The probe is not free: on a large table Postgres answers a
//! 5,000-id `= ANY` with a sequential scan (measured: 25 ms at 100k rows, growing with the
//! table), which is why it is not done for every batch.
//!
//! Two members writing one event at once (a rebalance) make the probed `COPY` fail on the
//! primary key too: a deterministic error, so the batch is written again row by row, where the
//! rows take the `INSERT … ON CONFLICT DO NOTHING` path and nothing is dead-lettered.

use std::collections::HashSet;
use std::fmt::{Display, Write as _};
use std::sync::atomic::{AtomicU32, Ordering};

use chrono::{DateTime, Utc};
use sqlx::{Postgres, Transaction};

use crate::projection::StoreError;

/// Batches smaller than this take the `INSERT … ON CONFLICT` path.
pub const COPY_MIN: usize = 64;

/// One `COPY … FROM STDIN` (text format) being built, row by row.
#[derive(Debug, Default)]
pub struct CopyText {
    buf: String,
    first: bool,
}

impl CopyText {
    pub fn with_capacity(rows: usize) -> CopyText {
        CopyText {
            buf: String::with_capacity(rows * 512),
            first: true,
        }
    }

    fn sep(&mut self) {
        if !self.first {
            self.buf.push('\t');
        }
        self.first = false;
    }

    /// A value whose text has no tab, newline, carriage return or backslash (numbers,
    /// addresses and hashes as hex, booleans).
    pub fn plain(&mut self, value: impl Display) -> &mut Self {
        self.sep();
        let _ = write!(self.buf, "{value}");
        self
    }

    /// A value that may need escaping.
    pub fn text(&mut self, value: &str) -> &mut Self {
        self.sep();
        if !value
            .bytes()
            .any(|b| matches!(b, b'\\' | b'\t' | b'\n' | b'\r'))
        {
            self.buf.push_str(value);
            return self;
        }
        for c in value.chars() {
            match c {
                '\\' => self.buf.push_str("\\\\"),
                '\t' => self.buf.push_str("\\t"),
                '\n' => self.buf.push_str("\\n"),
                '\r' => self.buf.push_str("\\r"),
                c => self.buf.push(c),
            }
        }
        self
    }

    pub fn null(&mut self) -> &mut Self {
        self.sep();
        self.buf.push_str("\\N");
        self
    }

    pub fn opt(&mut self, value: Option<impl Display>) -> &mut Self {
        match value {
            Some(v) => self.plain(v),
            None => self.null(),
        }
    }

    /// A float as Postgres reads it back to the same bits (the shortest text that parses to
    /// the same value; the infinities and NaN by Postgres's names); `None` as null.
    pub fn float(&mut self, value: Option<f64>) -> &mut Self {
        match value {
            None => self.null(),
            Some(v) if v.is_nan() => self.plain("NaN"),
            Some(v) if v == f64::INFINITY => self.plain("Infinity"),
            Some(v) if v == f64::NEG_INFINITY => self.plain("-Infinity"),
            // Debug: the shortest round-trip digits, with an exponent where long.
            Some(v) => self.plain(format_args!("{v:?}")),
        }
    }

    pub fn hex(&mut self, value: &impl std::fmt::LowerHex) -> &mut Self {
        self.sep();
        let _ = write!(self.buf, "{value:#x}");
        self
    }

    pub fn opt_hex(&mut self, value: Option<&impl std::fmt::LowerHex>) -> &mut Self {
        match value {
            Some(v) => self.hex(v),
            None => self.null(),
        }
    }

    /// A time as `chrono`'s `%Y-%m-%d %H:%M:%S%.f+00` writes it, without going through its
    /// format parser (which took ~4 % of the projector's CPU in the dense benchmark).
    pub fn time(&mut self, value: Option<DateTime<Utc>>) -> &mut Self {
        match value {
            Some(t) => {
                self.sep();
                push_time(&mut self.buf, t);
                self
            }
            None => self.null(),
        }
    }

    pub fn end_row(&mut self) {
        self.buf.push('\n');
        self.first = true;
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.buf.as_bytes()
    }
}

/// One `COPY … FROM STDIN (FORMAT binary)` being built, row by row: each field is its length
/// and its bytes in Postgres's binary form, so nothing is escaped here or parsed there (a
/// score's ~700 bytes of text cost Postgres more to read than to store, BENCHMARKS.md).
#[derive(Debug, Default)]
pub struct CopyBinary {
    buf: Vec<u8>,
    /// A field was over 2 GiB, or a time out of range (the copy fails rather than send it).
    unfit: bool,
}

/// Postgres's epoch, 2000-01-01 00:00:00 UTC.
const POSTGRES_EPOCH: DateTime<Utc> = DateTime::from_timestamp_nanos(946_684_800_000_000_000);

impl CopyBinary {
    fn field(&mut self, bytes: &[u8]) -> &mut Self {
        match i32::try_from(bytes.len()) {
            Ok(len) => {
                self.buf.extend_from_slice(&len.to_be_bytes());
                self.buf.extend_from_slice(bytes);
            }
            Err(_) => self.unfit = true,
        }
        self
    }

    pub fn null(&mut self) -> &mut Self {
        self.buf.extend_from_slice(&(-1i32).to_be_bytes());
        self
    }

    pub fn int8(&mut self, value: i64) -> &mut Self {
        self.field(&value.to_be_bytes())
    }

    pub fn opt_int8(&mut self, value: Option<i64>) -> &mut Self {
        match value {
            Some(v) => self.int8(v),
            None => self.null(),
        }
    }

    pub fn int4(&mut self, value: i32) -> &mut Self {
        self.field(&value.to_be_bytes())
    }

    /// A `float8`, bit for bit (the infinities and NaN too); `None` as null.
    pub fn float8(&mut self, value: Option<f64>) -> &mut Self {
        match value {
            Some(v) => self.field(&v.to_bits().to_be_bytes()),
            None => self.null(),
        }
    }

    /// A `text` or `json` value (both are their UTF-8 bytes in binary form; Postgres still
    /// checks that `json` parses).
    pub fn text(&mut self, value: &str) -> &mut Self {
        self.field(value.as_bytes())
    }

    /// A `timestamptz` as microseconds from 2000-01-01 UTC, counted as sqlx counts them when it
    /// binds one (below a microsecond cut off toward 2000), so a row copied and a row inserted
    /// hold the same time. (Every `chrono` time counts in an `i64` of microseconds; Postgres
    /// refuses those outside its own range with its error.)
    pub fn time(&mut self, value: Option<DateTime<Utc>>) -> &mut Self {
        let Some(t) = value else {
            return self.null();
        };
        match (t - POSTGRES_EPOCH).num_microseconds() {
            Some(micros) => self.field(&micros.to_be_bytes()),
            None => {
                self.unfit = true;
                self
            }
        }
    }
}

/// Runs `statement`, a `COPY … FROM STDIN (FORMAT binary)` of `fields` columns, with one row
/// per item of `rows`, each row's fields written by `row` in their order. The rows are sent in
/// pieces of about 64 KiB as they are written: Postgres reads one piece while the next is built
/// (a batch built whole first kept the two apart: the scorer's 10,000 scores took ~60 ms to
/// write out before Postgres saw the first), and the one piece's buffer is reused rather than
/// grown to the batch's size.
pub async fn copy_in_binary_rows<T>(
    tx: &mut Transaction<'_, Postgres>,
    statement: &str,
    fields: i16,
    rows: impl IntoIterator<Item = T>,
    mut row: impl FnMut(&mut CopyBinary, T),
) -> Result<(), StoreError> {
    const PIECE: usize = 1 << 16;
    let mut copy = tx.copy_in_raw(statement).await?;
    let mut piece = CopyBinary {
        buf: Vec::with_capacity(PIECE + (PIECE >> 2)),
        unfit: false,
    };
    piece.buf.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
    piece.buf.extend_from_slice(&0i32.to_be_bytes()); // flags
    piece.buf.extend_from_slice(&0i32.to_be_bytes()); // header extension
    let mut rows = rows.into_iter().peekable();
    loop {
        while piece.buf.len() < PIECE {
            let Some(item) = rows.next() else { break };
            piece.buf.extend_from_slice(&fields.to_be_bytes());
            row(&mut piece, item);
        }
        let last = rows.peek().is_none();
        if last {
            piece.buf.extend_from_slice(&(-1i16).to_be_bytes());
        }
        if piece.unfit {
            let _ = copy.abort("a field Postgres cannot hold").await;
            return Err(sqlx::Error::Protocol(
                "a COPY field is over 2 GiB or a time out of range".into(),
            )
            .into());
        }
        if let Err(err) = copy.send(&piece.buf[..]).await {
            let _ = copy.abort("send failed").await;
            return Err(err.into());
        }
        piece.buf.clear();
        if last {
            break;
        }
    }
    copy.finish().await?;
    Ok(())
}

/// Appends `t` as `%Y-%m-%d %H:%M:%S%.f+00`: the fraction left out when zero, else in 3, 6 or 9
/// digits, the fewest that hold it. Years outside 0..=9999 and leap seconds take `chrono`'s
/// formatter, which writes them its own way.
fn push_time(buf: &mut String, t: DateTime<Utc>) {
    use chrono::{Datelike as _, Timelike as _};
    let year = t.year();
    let nanos = t.nanosecond();
    if !(0..=9999).contains(&year) || nanos >= 1_000_000_000 {
        let _ = write!(buf, "{}", t.format("%Y-%m-%d %H:%M:%S%.f+00"));
        return;
    }
    // "YYYY-MM-DD HH:MM:SS", then ".fffffffff" at most, then "+00".
    let mut out = *b"0000-00-00 00:00:00.000000000+00";
    put_digits(&mut out[0..4], year as u32);
    put_digits(&mut out[5..7], t.month());
    put_digits(&mut out[8..10], t.day());
    put_digits(&mut out[11..13], t.hour());
    put_digits(&mut out[14..16], t.minute());
    put_digits(&mut out[17..19], t.second());
    let end = if nanos == 0 {
        19
    } else if nanos % 1_000_000 == 0 {
        put_digits(&mut out[20..23], nanos / 1_000_000);
        23
    } else if nanos % 1_000 == 0 {
        put_digits(&mut out[20..26], nanos / 1_000);
        26
    } else {
        put_digits(&mut out[20..29], nanos);
        29
    };
    out[end..end + 3].copy_from_slice(b"+00");
    buf.push_str(std::str::from_utf8(&out[..end + 3]).expect("ASCII digits and separators"));
}

/// Writes `n`'s last `slot.len()` decimal digits into `slot`, zero-padded.
fn put_digits(slot: &mut [u8], mut n: u32) {
    for d in slot.iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

/// The ids of `ids` already in `table` (its `event_id` primary key). The one runtime statement
/// of the projection: the copy works on any table with an `event_id` key (the tests use one of
/// their own), and a table name cannot be bound.
pub async fn stored_ids(
    tx: &mut Transaction<'_, Postgres>,
    table: &str,
    ids: &[String],
) -> Result<HashSet<String>, StoreError> {
    let found: Vec<String> = sqlx::query_scalar(&format!(
        "SELECT event_id FROM {table} WHERE event_id = ANY($1::text[])"
    ))
    .bind(ids)
    .fetch_all(&mut **tx)
    .await?;
    Ok(found.into_iter().collect())
}

/// Which of `ids` to write: not stored yet, and each id once (a batch can hold a replay).
pub fn new_positions(ids: &[String], stored: &HashSet<String>) -> Vec<usize> {
    let mut seen: HashSet<&str> = HashSet::with_capacity(ids.len());
    ids.iter()
        .enumerate()
        .filter(|(_, id)| !stored.contains(*id) && seen.insert(id.as_str()))
        .map(|(i, _)| i)
        .collect()
}

/// How many batches of a table probe for stored ids before copying, after a `COPY` of that table
/// met a stored id.
pub const PROBE_AFTER_CONFLICT: u32 = 16;

/// A table written with [`copy_new`]: its name and how many more batches probe first.
#[derive(Debug)]
pub struct CopyTable {
    pub name: &'static str,
    probe_next: AtomicU32,
}

impl CopyTable {
    pub const fn new(name: &'static str) -> CopyTable {
        CopyTable {
            name,
            probe_next: AtomicU32::new(0),
        }
    }

    fn take_probe(&self) -> bool {
        self.probe_next
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
    }
}

/// What [`copy_new`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copied {
    /// Positions (in the batch) of the rows written: not stored before, each id once.
    pub fresh: Vec<usize>,
    /// The batch was probed for stored ids (first, or after a conflicting `COPY`).
    pub probed: bool,
    /// A `COPY` was rolled back to the savepoint because an id was stored already.
    pub conflicted: bool,
}

/// Whether `err` is a unique-key violation (SQLSTATE 23505).
pub fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.code().as_deref() == Some("23505"))
}

/// Writes the rows of `ids` not stored in `table` yet (each id once) with `statement`
/// (`COPY … FROM STDIN`), building the data for the positions chosen with `build`. Optimistic:
/// see the module docs.
pub async fn copy_new(
    tx: &mut Transaction<'_, Postgres>,
    table: &CopyTable,
    ids: &[String],
    statement: &str,
    build: impl Fn(&[usize]) -> CopyText,
) -> Result<Copied, StoreError> {
    let none = HashSet::new();
    let mut conflicted = false;
    if !table.take_probe() {
        let fresh = new_positions(ids, &none);
        sqlx::query!("SAVEPOINT chainfold_copy")
            .execute(&mut **tx)
            .await?;
        match copy_in(tx, statement, &build(&fresh)).await {
            Ok(()) => {
                sqlx::query!("RELEASE SAVEPOINT chainfold_copy")
                    .execute(&mut **tx)
                    .await?;
                return Ok(Copied {
                    fresh,
                    probed: false,
                    conflicted: false,
                });
            }
            Err(StoreError::Database(err)) if is_unique_violation(&err) => {
                sqlx::query!("ROLLBACK TO SAVEPOINT chainfold_copy")
                    .execute(&mut **tx)
                    .await?;
                table
                    .probe_next
                    .store(PROBE_AFTER_CONFLICT, Ordering::Relaxed);
                tracing::debug!(
                    table = table.name,
                    "a COPY met stored ids (republished events); probing the next batches first"
                );
                conflicted = true;
            }
            Err(err) => return Err(err),
        }
    }
    let stored = stored_ids(tx, table.name, ids).await?;
    let fresh = new_positions(ids, &stored);
    if !fresh.is_empty() {
        copy_in(tx, statement, &build(&fresh)).await?;
    }
    Ok(Copied {
        fresh,
        probed: true,
        conflicted,
    })
}

/// Runs `statement` (`COPY … FROM STDIN`) with `data`.
pub async fn copy_in(
    tx: &mut Transaction<'_, Postgres>,
    statement: &str,
    data: &CopyText,
) -> Result<(), StoreError> {
    let mut copy = tx.copy_in_raw(statement).await?;
    for chunk in data.as_bytes().chunks(1 << 16) {
        if let Err(err) = copy.send(chunk).await {
            let _ = copy.abort("send failed").await;
            return Err(err.into());
        }
    }
    copy.finish().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_fields_are_length_prefixed_big_endian_and_null_is_minus_one() {
        let mut c = CopyBinary::default();
        c.int8(-2)
            .int4(7)
            .float8(Some(f64::NEG_INFINITY))
            .float8(None)
            .text("é\t")
            .opt_int8(None)
            .time(DateTime::from_timestamp(946_684_801, 1_500));
        let mut expected = Vec::new();
        expected.extend(8i32.to_be_bytes());
        expected.extend((-2i64).to_be_bytes());
        expected.extend(4i32.to_be_bytes());
        expected.extend(7i32.to_be_bytes());
        expected.extend(8i32.to_be_bytes());
        expected.extend(f64::NEG_INFINITY.to_bits().to_be_bytes());
        expected.extend((-1i32).to_be_bytes());
        expected.extend(3i32.to_be_bytes());
        expected.extend("é\t".as_bytes());
        expected.extend((-1i32).to_be_bytes());
        expected.extend(8i32.to_be_bytes());
        expected.extend(1_000_001i64.to_be_bytes());
        assert_eq!(c.buf, expected);
        assert!(!c.unfit);
    }

    #[test]
    fn text_values_are_escaped_and_nulls_marked() {
        let mut c = CopyText::with_capacity(1);
        c.text("a\tb\\c\nd")
            .null()
            .plain(42)
            .opt(None::<u8>)
            .opt(Some(7));
        c.end_row();
        c.plain("x").text("0xab_é").text("r\r");
        c.end_row();
        assert_eq!(
            std::str::from_utf8(c.as_bytes()).expect("COPY text is built from UTF-8 strings"),
            "a\\tb\\\\c\\nd\t\\N\t42\t\\N\t7\nx\t0xab_é\tr\\r\n"
        );
    }

    #[test]
    fn times_are_written_as_chrono_formats_them() {
        use chrono::TimeZone as _;
        let chrono_text = |t: DateTime<Utc>| t.format("%Y-%m-%d %H:%M:%S%.f+00").to_string();
        let mut times: Vec<DateTime<Utc>> = vec![
            Utc.timestamp_opt(0, 0).unwrap(),
            Utc.timestamp_opt(1_700_000_000, 0).unwrap(),
            Utc.timestamp_opt(1_700_000_000, 5_000_000).unwrap(),
            Utc.timestamp_opt(1_700_000_000, 120_000).unwrap(),
            Utc.timestamp_opt(1_700_000_000, 1).unwrap(),
            Utc.timestamp_opt(1_700_000_059, 999_999_999).unwrap(),
            // A leap second and years outside four digits take chrono's own path.
            Utc.timestamp_opt(1_483_228_799, 1_500_000_000).unwrap(),
            Utc.with_ymd_and_hms(-44, 3, 15, 12, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(12_345, 1, 2, 3, 4, 5).unwrap(),
            Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59).unwrap(),
            Utc.with_ymd_and_hms(7, 1, 1, 0, 0, 0).unwrap(),
        ];
        // A spread over the years a chain's blocks carry, with every fraction length.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..5_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let secs = (x % 4_000_000_000) as i64;
            let nanos = match x % 4 {
                0 => 0,
                1 => (x >> 20) as u32 % 1_000 * 1_000_000,
                2 => (x >> 20) as u32 % 1_000_000 * 1_000,
                _ => (x >> 20) as u32 % 1_000_000_000,
            };
            times.push(Utc.timestamp_opt(secs, nanos).unwrap());
        }
        for t in times {
            let mut c = CopyText::with_capacity(1);
            c.time(Some(t));
            assert_eq!(
                std::str::from_utf8(c.as_bytes()).expect("UTF-8"),
                chrono_text(t),
                "{t:?}"
            );
        }
    }

    #[test]
    fn replays_and_stored_rows_are_skipped_once_each() {
        let ids: Vec<String> = ["a", "b", "a", "c", "b"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let stored: HashSet<String> = ["c".to_string()].into_iter().collect();
        assert_eq!(new_positions(&ids, &stored), vec![0, 1]);
    }

    #[test]
    fn floats_keep_their_bits_and_postgres_names() {
        let mut c = CopyText::with_capacity(1);
        c.float(Some(0.1))
            .float(Some(1e-300))
            .float(Some(f64::INFINITY))
            .float(Some(f64::NEG_INFINITY))
            .float(Some(f64::NAN))
            .float(None)
            .float(Some(-2.5e20));
        assert_eq!(
            std::str::from_utf8(c.as_bytes()).expect("COPY text is built from UTF-8 strings"),
            "0.1\t1e-300\tInfinity\t-Infinity\tNaN\t\\N\t-2.5e20"
        );
    }

    #[test]
    fn times_are_utc_with_fractions() {
        let mut c = CopyText::with_capacity(1);
        let t = DateTime::from_timestamp(1_700_000_000, 5_000_000)
            .expect("a 2023 timestamp is in range");
        c.time(Some(t)).time(None);
        assert_eq!(
            std::str::from_utf8(c.as_bytes()).expect("COPY text is built from UTF-8 strings"),
            "2023-11-14 22:13:20.005+00\t\\N"
        );
    }
}
