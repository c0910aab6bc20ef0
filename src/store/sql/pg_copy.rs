//! The PostgreSQL side of a usage export: `COPY (SELECT …) TO STDOUT`, its rows read straight
//! from the wire bytes.
//!
//! Through sqlx's typed rows, every row became a `PgRow` and every value went through a type
//! check and a decode; here a row is one line of text, its fields borrowed in place.
//!
//! `COPY` takes no bind parameters, and filter values are never spliced into SQL: each value is
//! bound to a transaction-local setting (`SELECT set_config('gatemeter.export_0', $1, true)`)
//! and the query reads it back with `current_setting('gatemeter.export_0')` (a stable function,
//! so index conditions use it like a parameter). The settings end with the transaction.
//!
//! Text format (PostgreSQL docs, "COPY … File Formats"): one row per line, fields separated by
//! tabs, `\N` for NULL; in a value, backslash, backspace, form feed, newline, carriage return,
//! tab and vertical tab are written as `\\`, `\b`, `\f`, `\n`, `\r`, `\t`, `\v` (other bytes as
//! they are, in the client encoding: UTF-8 for sqlx). The text format costs the server less
//! than the binary one (no per-value send buffers, fewer bytes on the wire: 0.82 s → 0.75 s of
//! server CPU for a million rows). The server sends each row in a message of its own
//! (`CopySendEndOfRow`); the reader takes several rows per message, but a row cut across two
//! messages fails the export ("COPY row without its newline"), never gives a wrong row.

use bytes::Bytes;
use futures_util::TryStreamExt;
use sqlx::postgres::PgConnection;
use sqlx::{Connection, QueryBuilder};
use tokio::sync::mpsc;

use super::query::{
    ExportEnd, Exported, LogFilter, Param, RowEncoder, USAGE_COLUMN_COUNT, USAGE_COLUMNS,
    USAGE_TEXT_COLUMNS, UsageRow, filter_terms,
};

/// The two statements of an export: the query binding every value (the limit's too) to a
/// setting, and the `COPY` reading them.
fn statements(filter: &LogFilter, limit: i64) -> (QueryBuilder<'static, sqlx::Postgres>, String) {
    // No JIT: compiling this query's expressions took ~6 % of the server's time for a million
    // rows, and the time goes to sending rows, not to evaluating expressions.
    let mut set = QueryBuilder::new("SELECT set_config('jit', 'off', true)");
    let mut copy = format!("COPY (SELECT {USAGE_COLUMNS} FROM request_log WHERE 1=1");
    let mut n = 0;
    let mut setting = |set: &mut QueryBuilder<'static, sqlx::Postgres>, value: String| {
        let name = format!("gatemeter.export_{n}");
        n += 1;
        set.push(format!(", set_config('{name}', "))
            .push_bind(value)
            .push(", true)");
        format!("current_setting('{name}')")
    };
    for (sql, p) in filter_terms(filter) {
        copy.push_str(sql);
        match p {
            Param::None => {}
            Param::Int(v) => {
                copy.push_str(&setting(&mut set, v.to_string()));
                copy.push_str("::bigint");
            }
            Param::Text(v) => copy.push_str(&setting(&mut set, v.to_string())),
        }
    }
    copy.push_str(" ORDER BY ts_ms DESC, id DESC LIMIT ");
    copy.push_str(&setting(&mut set, limit.to_string()));
    copy.push_str("::bigint) TO STDOUT (FORMAT text)");
    (set, copy)
}

/// See [`super::SqlLog::export_usage`]. On anything but [`ExportEnd::Done`] the caller must
/// close `conn` (a COPY may still be sending).
pub(super) async fn export<E: RowEncoder>(
    conn: &mut PgConnection,
    filter: &LogFilter,
    limit: i64,
    mut encoder: E,
    out: &mpsc::Sender<Bytes>,
) -> Exported<E> {
    let mut rows = 0u64;
    let end = match copy_rows(conn, filter, limit, &mut encoder, out, &mut rows).await {
        Ok(end) => end,
        Err(e) => ExportEnd::Failed(e),
    };
    Exported { encoder, rows, end }
}

async fn copy_rows<E: RowEncoder>(
    conn: &mut PgConnection,
    filter: &LogFilter,
    limit: i64,
    encoder: &mut E,
    out: &mpsc::Sender<Bytes>,
    rows: &mut u64,
) -> Result<ExportEnd, String> {
    let (mut set, copy) = statements(filter, limit);
    let mut tx = conn.begin().await.map_err(|e| e.to_string())?;
    set.build()
        .execute(&mut *tx)
        .await
        .map_err(|e| e.to_string())?;
    let mut reader = TextRows::default();
    {
        let mut stream = tx.copy_out_raw(&copy).await.map_err(|e| e.to_string())?;
        while let Some(msg) = stream.try_next().await.map_err(|e| e.to_string())? {
            let mut buf: &[u8] = &msg;
            while let Some(row) = reader.next_row(&mut buf)? {
                *rows += 1;
                match encoder.row(&row) {
                    Ok(None) => {}
                    Ok(Some(chunk)) => {
                        if out.send(chunk).await.is_err() {
                            return Ok(ExportEnd::ReceiverGone);
                        }
                    }
                    Err(e) => return Err(e.to_string()),
                }
            }
        }
    }
    tx.commit().await.map_err(|e| e.to_string())?;
    Ok(ExportEnd::Done)
}

/// Columns of `SELECT USAGE_COLUMNS`.
const COLUMNS: usize = USAGE_COLUMN_COUNT;
/// Indexes of its text columns; the others are `bigint`.
const TEXT_COLUMNS: [usize; 7] = USAGE_TEXT_COLUMNS;

/// Reads rows of COPY's text format; keeps a scratch buffer for values with escapes.
#[derive(Debug, Default)]
struct TextRows {
    scratch: Vec<u8>,
}

impl TextRows {
    /// The next row in `buf`, advancing it past the row's newline; `None` when `buf` is used up.
    fn next_row<'m: 's, 's>(
        &'s mut self,
        buf: &mut &'m [u8],
    ) -> Result<Option<UsageRow<'s>>, String> {
        if buf.is_empty() {
            return Ok(None);
        }
        let rest: &'m [u8] = buf;
        // One vectorised pass finds the row's tabs, its newline, and which fields hold a
        // backslash (an escape, or `\N`); escapes never leave a raw tab or newline in a value.
        let mut bounds = [(0usize, 0usize); COLUMNS];
        let mut escaped = [false; COLUMNS];
        let (mut n, mut from) = (0, 0);
        let mut marks = memchr::memchr3_iter(b'\t', b'\n', b'\\', rest);
        let end = loop {
            let at = marks.next().ok_or("COPY row without its newline")?;
            match rest[at] {
                b'\\' => escaped[n] = true,
                b'\t' if n + 1 < COLUMNS => {
                    bounds[n] = (from, at);
                    (n, from) = (n + 1, at + 1);
                }
                b'\t' => return Err("COPY row with too many fields".into()),
                _ if n + 1 < COLUMNS => return Err("COPY row with too few fields".into()),
                _ => {
                    bounds[n] = (from, at);
                    break at;
                }
            }
        };
        *buf = &rest[end + 1..];
        // The whole row is checked once; its fields, cut at ASCII tabs, are UTF-8 then too.
        let line =
            std::str::from_utf8(&rest[..end]).map_err(|e| format!("COPY row is not UTF-8: {e}"))?;
        let mut fields: [&'m str; COLUMNS] = [""; COLUMNS];
        for (f, &(a, b)) in fields.iter_mut().zip(&bounds) {
            *f = line
                .get(a..b)
                .ok_or("COPY field not on a character boundary")?;
        }
        // Values with escapes are unescaped into the scratch buffer first; then every value is
        // borrowed, from the row or from the scratch buffer.
        self.scratch.clear();
        let mut unescaped = [None; COLUMNS];
        for i in TEXT_COLUMNS {
            let f = fields[i].as_bytes();
            if escaped[i] && f != NULL {
                let from = self.scratch.len();
                unescape(f, &mut self.scratch)?;
                unescaped[i] = Some((from, self.scratch.len()));
            }
        }
        let scratch = &self.scratch;
        let text = |i: usize| -> Result<Option<&'s str>, String> {
            match unescaped[i] {
                _ if fields[i].as_bytes() == NULL => Ok(None),
                Some((from, to)) => std::str::from_utf8(&scratch[from..to])
                    .map(Some)
                    .map_err(|e| format!("COPY text field is not UTF-8: {e}")),
                None => Ok(Some(fields[i])),
            }
        };
        let int = |i: usize| int(fields[i].as_bytes());
        Ok(Some(UsageRow {
            timestamp_ms: int(0)?,
            user: text(1)?,
            key: text(2)?,
            provider: text(3)?.unwrap_or_default(),
            model: text(4)?.unwrap_or_default(),
            original_model: text(5)?,
            endpoint: text(6)?.unwrap_or_default(),
            status: int(7)?,
            tokens: [int(8)?, int(9)?, int(10)?, int(11)?, int(12)?],
            cost_micros: int(13)?,
            duration_ms: int(14)?,
            session_id: text(15)?,
            retry_count: int(16)?,
        }))
    }
}

/// How the text format writes NULL.
const NULL: &[u8] = b"\\N";

/// Appends the value of `field` (escapes resolved) to `out`.
fn unescape(field: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    let mut bytes = field.iter();
    while let Some(&b) = bytes.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        out.push(match bytes.next() {
            Some(b'\\') => b'\\',
            Some(b'b') => 0x08,
            Some(b'f') => 0x0c,
            Some(b'n') => b'\n',
            Some(b'r') => b'\r',
            Some(b't') => b'\t',
            Some(b'v') => 0x0b,
            Some(c) => return Err(format!("COPY escape \\{} not expected", char::from(*c))),
            None => return Err("COPY value ends in a backslash".into()),
        });
    }
    Ok(())
}

/// A `bigint` field (NOT NULL columns only): an optional `-` and decimal digits.
fn int(field: &[u8]) -> Result<i64, String> {
    let bad = || format!("COPY bigint field {:?}", String::from_utf8_lossy(field));
    let (neg, digits) = match field.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, field),
    };
    if digits.is_empty() {
        return Err(bad());
    }
    // Up to 18 digits cannot overflow.
    if digits.len() <= 18 {
        let mut v: i64 = 0;
        for &d in digits {
            let d = d.wrapping_sub(b'0');
            if d > 9 {
                return Err(bad());
            }
            v = v * 10 + i64::from(d);
        }
        return Ok(if neg { -v } else { v });
    }
    // Accumulated negative, so that i64::MIN fits.
    let mut v: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return Err(bad());
        }
        v = v
            .checked_mul(10)
            .and_then(|v| v.checked_sub(i64::from(d - b'0')))
            .ok_or_else(bad)?;
    }
    if neg {
        Ok(v)
    } else {
        v.checked_neg().ok_or_else(bad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A value as PostgreSQL's text COPY writes it (`CopyAttributeOutText`).
    fn escape(v: &str) -> Vec<u8> {
        let mut out = Vec::new();
        for &b in v.as_bytes() {
            match b {
                b'\\' => out.extend_from_slice(b"\\\\"),
                0x08 => out.extend_from_slice(b"\\b"),
                0x0c => out.extend_from_slice(b"\\f"),
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                b'\t' => out.extend_from_slice(b"\\t"),
                0x0b => out.extend_from_slice(b"\\v"),
                _ => out.push(b),
            }
        }
        out
    }

    /// One message per row, like the server sends them.
    fn copy_text(rows: &[([Option<&str>; 7], [i64; 10])]) -> Vec<Vec<u8>> {
        rows.iter()
            .map(|(texts, ints)| {
                let mut fields: Vec<Vec<u8>> = ints.iter().map(|v| v.to_string().into()).collect();
                for (at, t) in TEXT_COLUMNS.iter().zip(texts) {
                    fields.insert(*at, t.map_or(NULL.to_vec(), escape));
                }
                let mut line = fields.join(&b'\t');
                line.push(b'\n');
                line
            })
            .collect()
    }

    fn read_all(msgs: &[Vec<u8>]) -> Result<Vec<String>, String> {
        let mut reader = TextRows::default();
        let mut out = Vec::new();
        for m in msgs {
            let mut buf: &[u8] = m;
            while let Some(r) = reader.next_row(&mut buf)? {
                out.push(format!("{r:?}"));
            }
        }
        Ok(out)
    }

    #[test]
    fn rows_nulls_escapes_and_extreme_numbers_are_read_exactly() {
        let hostile = "=1+2,\t\"q\"\r\n\\N \\\\ \u{8}\u{b}\u{c}\u{1} ✓ 日本\\";
        let msgs = copy_text(&[
            (
                [
                    Some(hostile),
                    None,
                    Some("p"),
                    Some("m"),
                    None,
                    Some("/e"),
                    None,
                ],
                [-5, 502, 1, 2, 3, 4, 5, i64::MIN, i64::MAX, 2],
            ),
            (
                [
                    Some(""),
                    Some("\\N"),
                    Some(""),
                    Some("m2"),
                    Some("o"),
                    Some(""),
                    Some("s"),
                ],
                [1_700_000_000_000, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            ),
        ]);
        let mut reader = TextRows::default();
        let mut buf: &[u8] = &msgs[0];
        let row = reader.next_row(&mut buf).expect("valid").expect("a row");
        assert_eq!(
            row,
            UsageRow {
                timestamp_ms: -5,
                user: Some(hostile),
                key: None,
                provider: "p",
                model: "m",
                original_model: None,
                endpoint: "/e",
                status: 502,
                tokens: [1, 2, 3, 4, 5],
                cost_micros: i64::MIN,
                duration_ms: i64::MAX,
                session_id: None,
                retry_count: 2,
            }
        );
        assert!(reader.next_row(&mut buf).expect("end").is_none());
        let mut buf: &[u8] = &msgs[1];
        let row = reader.next_row(&mut buf).expect("valid").expect("a row");
        // The text `\N` is not NULL; an empty value is empty.
        assert_eq!((row.user, row.key), (Some(""), Some("\\N")));
        assert_eq!(row.session_id, Some("s"));
        // Several rows in one message are read too.
        assert_eq!(read_all(&[msgs.concat()]).expect("one message").len(), 2);
    }

    #[test]
    fn damaged_rows_are_refused() {
        let good = copy_text(&[([Some("u"); 7], [7; 10])]).remove(0);
        assert_eq!(
            read_all(std::slice::from_ref(&good)).expect("valid").len(),
            1
        );
        // Every truncation fails (never a wrong row).
        for cut in 1..good.len() {
            assert!(read_all(&[good[..cut].to_vec()]).is_err(), "cut at {cut}");
        }
        let bad = |from: &[u8], to: &[u8]| {
            let s = String::from_utf8_lossy(&good).replacen(
                std::str::from_utf8(from).expect("utf-8"),
                std::str::from_utf8(to).expect("utf-8"),
                1,
            );
            read_all(&[s.into_bytes()])
        };
        assert!(bad(b"u\t", b"u\tu\t").is_err(), "too many fields");
        assert!(bad(b"7\t", b"\\N\t").is_err(), "NULL bigint");
        assert!(bad(b"7\t", b"x\t").is_err(), "not a number");
        assert!(bad(b"7\t", b"-\t").is_err(), "a sign alone");
        assert!(bad(b"7\t", b"9223372036854775808\t").is_err(), "overflow");
        assert!(bad(b"u\t", b"u\\q\t").is_err(), "unknown escape");
        assert!(read_all(&[b"\xff".to_vec()]).is_err());
        let mut invalid = good.clone();
        invalid[good.iter().position(|&b| b == b'u').expect("a u")] = 0xff;
        assert!(read_all(&[invalid]).is_err(), "not UTF-8");
        assert_eq!(int(b"-9223372036854775808"), Ok(i64::MIN));
        assert_eq!(int(b"9223372036854775807"), Ok(i64::MAX));
        assert!(int(b"").is_err());
        // Around the 18-digit fast path.
        assert_eq!(int(b"999999999999999999"), Ok(999_999_999_999_999_999));
        assert_eq!(int(b"-999999999999999999"), Ok(-999_999_999_999_999_999));
        assert_eq!(int(b"1000000000000000000"), Ok(1_000_000_000_000_000_000));
        assert_eq!(int(b"-0"), Ok(0));
        assert!(int(b"12a4").is_err());
        assert!(int(b"1/").is_err(), "a byte just below '0'");
        assert!(int(b"1:").is_err(), "a byte just above '9'");
        assert!(int(b"--1").is_err());
    }
}
