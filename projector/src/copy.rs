//! `COPY`-style batch writes for the high-volume read models (`swap`, `pool_sync`).
//!
//! A batch of [`COPY_MIN`] rows or more goes in as: one `SELECT event_id … = ANY($1)` for the
//! ids already stored (one index probe each), then one `COPY … FROM STDIN` of the rest, each id
//! once. `COPY` inserts pages of rows at a time where `INSERT … ON CONFLICT` inserts one row at
//! a time with a speculative index probe each; the statement-level feed triggers fire for it as
//! for an `INSERT`. Idempotence is kept: a replayed event is found by the probe and skipped. Two
//! members writing one event at once (a rebalance) make the second `COPY` fail on the primary
//! key: a deterministic error, so the batch is written again row by row, where the rows take the
//! `INSERT … ON CONFLICT DO NOTHING` path and nothing is dead-lettered.

use std::collections::HashSet;
use std::fmt::{Display, Write as _};

use chrono::{DateTime, Utc};
use sqlx::{Postgres, Transaction};

use crate::store::StoreError;

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

    pub fn time(&mut self, value: Option<DateTime<Utc>>) -> &mut Self {
        match value {
            Some(t) => self.plain(t.format("%Y-%m-%d %H:%M:%S%.f+00")),
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

/// The ids of `ids` already in `table` (its `event_id` primary key).
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
    fn text_values_are_escaped_and_nulls_marked() {
        let mut c = CopyText::with_capacity(1);
        c.text("a\tb\\c\nd")
            .null()
            .plain(42)
            .opt(None::<u8>)
            .opt(Some(7));
        c.end_row();
        c.plain("x");
        c.end_row();
        assert_eq!(
            std::str::from_utf8(c.as_bytes()).expect("COPY text is built from UTF-8 strings"),
            "a\\tb\\\\c\\nd\t\\N\t42\t\\N\t7\nx\n"
        );
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
