//! The usage CSV (SPEC §6.4): its columns, one row per request-log entry, and the spreadsheet
//! formula neutralisation OWASP recommends. Pure: no I/O; the HTTP streaming is in
//! `api/logs.rs`.
//!
//! Format: UTF-8 with exactly one byte-order mark, RFC 4180 quoting by the `csv` crate, CRLF
//! line ends. A text cell that starts with `=`, `+`, `-`, `@`, tab or CR gets a leading `'`, so a
//! spreadsheet shows it as text instead of evaluating it; numeric columns are written as plain
//! numbers and never altered. A text cell that already starts with `'` gets one too, so the
//! encoding is reversible: a reader recovers the original by removing one leading `'` from any
//! text cell that has one ([`restore`]). When the row cap cut the export short, the last line is
//! [`truncation_line`] — deliberately not a data row (one field, starting with `#`).

use std::borrow::Cow;

use bytes::Bytes;
use time::OffsetDateTime;
use time::macros::format_description;

use crate::store::sql::{RowEncoder, UsageRow};

/// The UTF-8 byte-order mark, written once at the start.
pub const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Column names, in order.
pub const HEADER: [&str; 18] = [
    "time",
    "user",
    "key",
    "provider",
    "model",
    "original_model",
    "endpoint",
    "status",
    "input_tokens",
    "output_tokens",
    "cache_write_5m_tokens",
    "cache_write_1h_tokens",
    "cache_read_tokens",
    "total_tokens",
    "cost_usd",
    "duration_ms",
    "session_id",
    "retry_count",
];

/// Prefixes a text cell that a spreadsheet would read as a formula with `'` (OWASP CSV
/// injection guidance).
pub fn neutralise(cell: &str) -> Cow<'_, str> {
    match cell.as_bytes().first() {
        Some(b'=' | b'+' | b'-' | b'@' | b'\t' | b'\r' | b'\'') => Cow::Owned(format!("'{cell}")),
        _ => Cow::Borrowed(cell),
    }
}

/// The inverse of [`neutralise`]: the original text of a text cell.
pub fn restore(cell: &str) -> &str {
    cell.strip_prefix('\'').unwrap_or(cell)
}

/// Epoch milliseconds as RFC 3339 UTC with milliseconds.
pub fn format_time(ms: i64) -> String {
    let fmt =
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&fmt).ok())
        .unwrap_or_else(|| ms.to_string())
}

/// [`format_time`] into a stack buffer, without allocating: the export's per-row path. Years
/// 0000–9999 only (every realistic timestamp); `None` outside, where [`format_time`] applies.
pub fn format_time_fast(ms: i64) -> Option<[u8; 24]> {
    let days = ms.div_euclid(86_400_000);
    let in_day = ms.rem_euclid(86_400_000);
    // Civil date from days since 1970-01-01 (H. Hinnant's `civil_from_days`).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    if !(0..=9999).contains(&year) {
        return None;
    }
    let mut b = *b"0000-00-00T00:00:00.000Z";
    let mut put = |at: usize, width: usize, mut v: i64| {
        for i in (at..at + width).rev() {
            // `v % 10` is a digit: the cast cannot truncate.
            b[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, 4, year);
    put(5, 2, month);
    put(8, 2, day);
    put(11, 2, in_day / 3_600_000);
    put(14, 2, in_day / 60_000 % 60);
    put(17, 2, in_day / 1000 % 60);
    put(20, 3, in_day % 1000);
    Some(b)
}

/// Integer micro-USD as an exact decimal (`1234567` → `1.234567`).
pub fn format_micros(m: i64) -> String {
    let sign = if m < 0 { "-" } else { "" };
    let a = m.unsigned_abs();
    format!("{sign}{}.{:06}", a / 1_000_000, a % 1_000_000)
}

/// [`format_micros`] into a stack buffer, without allocating: the export's per-row path.
/// Returns the buffer and where the text starts in it.
pub fn format_micros_fast(m: i64) -> ([u8; 28], usize) {
    let mut b = [b'0'; 28];
    let mut a = m.unsigned_abs();
    // Six fraction digits, the point, then the integer part (at least one digit), right to left.
    let mut at = b.len();
    for _ in 0..6 {
        at -= 1;
        // `a % 10` is a digit: the cast cannot truncate.
        b[at] = b'0' + (a % 10) as u8;
        a /= 10;
    }
    at -= 1;
    b[at] = b'.';
    loop {
        at -= 1;
        b[at] = b'0' + (a % 10) as u8;
        a /= 10;
        if a == 0 {
            break;
        }
    }
    if m < 0 {
        at -= 1;
        b[at] = b'-';
    }
    (b, at)
}

/// Writes one row (field by field: no per-row allocation but for a neutralised cell).
pub fn write_row<W: std::io::Write>(w: &mut csv::Writer<W>, e: &UsageRow<'_>) -> csv::Result<()> {
    let mut n = itoa::Buffer::new();
    let text = |w: &mut csv::Writer<W>, s: Option<&str>| {
        w.write_field(neutralise(s.unwrap_or("")).as_bytes())
    };
    match format_time_fast(e.timestamp_ms) {
        Some(t) => w.write_field(t)?,
        None => w.write_field(format_time(e.timestamp_ms))?,
    }
    text(w, e.user)?;
    text(w, e.key)?;
    text(w, Some(e.provider))?;
    text(w, Some(e.model))?;
    text(w, e.original_model)?;
    text(w, Some(e.endpoint))?;
    w.write_field(n.format(e.status))?;
    for t in e.tokens {
        w.write_field(n.format(t))?;
    }
    w.write_field(n.format(e.tokens.iter().sum::<i64>()))?;
    let (cost, from) = format_micros_fast(e.cost_micros);
    w.write_field(&cost[from..])?;
    w.write_field(n.format(e.duration_ms))?;
    text(w, e.session_id)?;
    w.write_field(n.format(e.retry_count))?;
    w.write_record(None::<&[u8]>)
}

/// A CSV writer with the house settings (RFC 4180 quoting, CRLF).
pub fn writer<W: std::io::Write>(w: W) -> csv::Writer<W> {
    csv::WriterBuilder::new()
        .terminator(csv::Terminator::CRLF)
        .from_writer(w)
}

/// Bytes gathered before a chunk is handed out to the HTTP body.
pub const CHUNK_BYTES: usize = 64 * 1024;

/// The usage CSV of a stream of rows, handed out in chunks of about [`CHUNK_BYTES`]: the BOM
/// and the header first, then one line per row; the last, partial chunk stays inside until
/// [`Encoder::finish`].
#[derive(Debug)]
pub struct Encoder {
    w: csv::Writer<Vec<u8>>,
    handed_out: u64,
}

impl Encoder {
    /// An encoder that has written the BOM and the header.
    pub fn new() -> csv::Result<Self> {
        let mut buf = Vec::with_capacity(CHUNK_BYTES * 2);
        buf.extend_from_slice(BOM);
        let mut w = writer(buf);
        w.write_record(HEADER)?;
        Ok(Self { w, handed_out: 0 })
    }

    /// Bytes of the full chunks handed out so far (the audit trail's size, with the tail).
    pub fn handed_out(&self) -> u64 {
        self.handed_out
    }

    /// Everything written and not yet handed out.
    pub fn finish(self) -> csv::Result<Vec<u8>> {
        self.w
            .into_inner()
            .map_err(|e| csv::Error::from(e.into_error()))
    }
}

impl RowEncoder for Encoder {
    type Error = csv::Error;

    fn row(&mut self, row: &UsageRow<'_>) -> csv::Result<Option<Bytes>> {
        write_row(&mut self.w, row)?;
        // The writer moves its own (8 KiB) buffer into the Vec whenever it fills up.
        if self.w.get_ref().len() < CHUNK_BYTES {
            return Ok(None);
        }
        // A fresh writer per chunk (`csv::Writer` lends no `&mut` to its output); the old one
        // flushes the rest of its buffer into the chunk.
        let full = std::mem::replace(&mut self.w, writer(Vec::with_capacity(CHUNK_BYTES * 2)));
        let full = full
            .into_inner()
            .map_err(|e| csv::Error::from(e.into_error()))?;
        self.handed_out += full.len() as u64;
        Ok(Some(Bytes::from(full)))
    }
}

/// The last line of a capped export: one field, starting with `#`, never a data row.
pub fn truncation_line(cap: u64) -> String {
    format!("# truncated at {cap} rows: more rows match; narrow the filters\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every column of the header but the derived total is a field of the record's table
    /// (its `csv` name), and every field with a `csv` name is a column.
    #[test]
    fn the_header_is_the_field_table() {
        let mut want: Vec<&str> = crate::record::fields::FIELDS
            .iter()
            .filter_map(|f| f.csv)
            .collect();
        want.push("total_tokens");
        let mut got = HEADER.to_vec();
        got.sort_unstable();
        want.sort_unstable();
        assert_eq!(
            got, want,
            "the usage CSV header and record/fields.rs differ"
        );
    }

    #[test]
    fn formula_starts_are_neutralised_and_others_kept() {
        for s in ["=1+1", "+cmd", "-2", "@SUM(A1)", "\tx", "\rx"] {
            assert_eq!(neutralise(s), format!("'{s}"));
        }
        for s in ["", "plain", "a=b", "ünïcode"] {
            assert_eq!(neutralise(s), s);
        }
        for s in ["=1", "'quoted", "''", "plain", "-"] {
            assert_eq!(restore(&neutralise(s)), s);
        }
    }

    #[test]
    fn hostile_rows_reparse_to_the_original() {
        let hostile = "\t=cmd, \"quoted\"\r\nnext line ✓";
        let e = UsageRow {
            timestamp_ms: 0,
            user: Some(hostile),
            key: Some("\rkey"),
            provider: "@p",
            model: "+m",
            original_model: Some("-o"),
            endpoint: "=e",
            status: 200,
            tokens: [1, 2, 3, 4, 5],
            cost_micros: 1,
            duration_ms: 5,
            session_id: Some("'s"),
            retry_count: 0,
        };
        let mut w = writer(Vec::new());
        write_row(&mut w, &e).expect("write");
        let bytes = w.into_inner().expect("flush");
        let mut r = csv::ReaderBuilder::new()
            .has_headers(false)
            .from_reader(bytes.as_slice());
        let row = r.records().next().expect("one row").expect("valid CSV");
        let cells: Vec<&str> = row.iter().collect();
        assert_eq!(cells[1], format!("'{hostile}"));
        assert_eq!(restore(cells[1]), hostile);
        assert_eq!(restore(cells[2]), "\rkey");
        assert_eq!(cells[3..7], ["'@p", "'+m", "'-o", "'=e"]);
        assert_eq!(restore(cells[16]), "'s");
        assert_eq!(
            cells[7..16],
            ["200", "1", "2", "3", "4", "5", "15", "0.000001", "5"]
        );
    }

    #[test]
    fn fast_formats_agree_with_the_slow_ones() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut samples = vec![
            0,
            -1,
            1,
            999,
            -86_400_000,
            951_782_400_000,     // 2000-02-29
            4_107_542_400_000,   // 2100-02-28
            -62_167_219_200_000, // 0000-01-01
            -62_167_219_200_001, // just before year 0
            253_402_300_799_999, // 9999-12-31T23:59:59.999
            253_402_300_800_000, // 10000-01-01
            i64::MIN,
            i64::MAX,
        ];
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Signed, spread over ±2^46 ms (about ±2,200 years around 1970) and full range.
            samples.push((x as i64) >> 17);
            samples.push(x as i64);
        }
        assert!(format_time_fast(-62_167_219_200_000).is_some());
        assert!(format_time_fast(253_402_300_799_999).is_some());
        assert!(format_time_fast(253_402_300_800_000).is_none());
        for ms in samples {
            let slow = format_time(ms);
            match format_time_fast(ms) {
                Some(b) => assert_eq!(std::str::from_utf8(&b).ok(), Some(slow.as_str()), "{ms}"),
                // Outside years 0000–9999 the slow path writes a sign or the raw number.
                None => assert_ne!(slow.len(), 24, "{ms}: {slow}"),
            }
            let (b, from) = format_micros_fast(ms);
            assert_eq!(
                std::str::from_utf8(&b[from..]).ok(),
                Some(format_micros(ms).as_str()),
                "{ms}"
            );
        }
    }

    #[test]
    fn times_and_money_are_exact() {
        assert_eq!(format_time(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_time(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(format_micros(1_234_567), "1.234567");
        assert_eq!(format_micros(5), "0.000005");
    }
}
