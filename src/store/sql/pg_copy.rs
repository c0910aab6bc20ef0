//! The PostgreSQL side of a usage export: `COPY (SELECT …) TO STDOUT (FORMAT binary)`, its rows
//! read straight from the wire bytes.
//!
//! Through sqlx's typed rows, every row became a `PgRow` and every value went through a type
//! check and a decode; here a row is a few length-prefixed fields in one buffer, borrowed as
//! they are.
//!
//! `COPY` takes no bind parameters, and filter values are never spliced into SQL: each value is
//! bound to a transaction-local setting (`SELECT set_config('gatemeter.export_0', $1, true)`)
//! and the query reads it back with `current_setting('gatemeter.export_0')` (a stable function,
//! so index conditions use it like a parameter). The settings end with the transaction.
//!
//! Binary format (PostgreSQL docs, "COPY … File Formats"): an 11-byte signature, a 32-bit flags
//! field, a 32-bit header-extension length and the extension; then per row a 16-bit field
//! count and per field a 32-bit length (−1 for NULL) and the value in the type's binary form
//! (`bigint`: 8 bytes big-endian; `text`: the bytes in the client encoding, UTF-8 for sqlx);
//! a field count of −1 ends the data. The server sends one row per message, the header with
//! the first; the reader does not rely on it.

use bytes::Bytes;
use futures_util::TryStreamExt;
use sqlx::postgres::PgConnection;
use sqlx::{Connection, QueryBuilder};
use tokio::sync::mpsc;

use super::query::{
    ExportEnd, Exported, LogFilter, Param, RowEncoder, USAGE_COLUMNS, UsageRow, filter_terms,
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
    copy.push_str("::bigint) TO STDOUT (FORMAT binary)");
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
    let mut reader = CopyReader::default();
    {
        let mut stream = tx.copy_out_raw(&copy).await.map_err(|e| e.to_string())?;
        while let Some(msg) = stream.try_next().await.map_err(|e| e.to_string())? {
            let mut buf = reader.data(&msg)?;
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
    if !reader.ended {
        return Err("COPY data ended without its trailer".into());
    }
    tx.commit().await.map_err(|e| e.to_string())?;
    Ok(ExportEnd::Done)
}

/// Columns of `SELECT USAGE_COLUMNS`.
const COLUMNS: i16 = 17;

/// The binary COPY signature.
const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";

/// Where a binary COPY stream is: before the header, in the rows, after the trailer.
#[derive(Debug, Default)]
struct CopyReader {
    header: bool,
    ended: bool,
}

impl CopyReader {
    /// The row data of one message (the header, which comes first, removed).
    fn data<'a>(&mut self, msg: &'a [u8]) -> Result<&'a [u8], String> {
        if self.header {
            return Ok(msg);
        }
        let mut buf = msg
            .strip_prefix(SIGNATURE.as_slice())
            .ok_or("COPY data without the binary signature")?;
        let _flags = take::<4>(&mut buf)?;
        let ext = u32::from_be_bytes(take::<4>(&mut buf)?) as usize;
        buf = buf.get(ext..).ok_or("COPY header extension cut short")?;
        self.header = true;
        Ok(buf)
    }

    /// The next row in `buf`, advancing it; `None` when `buf` is used up or at the trailer.
    fn next_row<'a>(&mut self, buf: &mut &'a [u8]) -> Result<Option<UsageRow<'a>>, String> {
        if buf.is_empty() {
            return Ok(None);
        }
        if self.ended {
            return Err("COPY data after its trailer".into());
        }
        match i16::from_be_bytes(take::<2>(buf)?) {
            -1 => {
                self.ended = true;
                if !buf.is_empty() {
                    return Err("COPY data after its trailer".into());
                }
                Ok(None)
            }
            COLUMNS => usage_row(buf).map(Some),
            n => Err(format!("COPY row of {n} fields, expected {COLUMNS}")),
        }
    }
}

/// The fields of one row, after its field count (see [`UsageRow`]'s field order).
fn usage_row<'a>(buf: &mut &'a [u8]) -> Result<UsageRow<'a>, String> {
    Ok(UsageRow {
        timestamp_ms: int(buf)?,
        user: text(buf)?,
        key: text(buf)?,
        provider: text(buf)?.unwrap_or_default(),
        model: text(buf)?.unwrap_or_default(),
        original_model: text(buf)?,
        endpoint: text(buf)?.unwrap_or_default(),
        status: int(buf)?,
        tokens: [int(buf)?, int(buf)?, int(buf)?, int(buf)?, int(buf)?],
        cost_micros: int(buf)?,
        duration_ms: int(buf)?,
        session_id: text(buf)?,
        retry_count: int(buf)?,
    })
}

/// The first `N` bytes of `buf`, advancing it.
fn take<const N: usize>(buf: &mut &[u8]) -> Result<[u8; N], String> {
    let (head, rest) = buf.split_first_chunk::<N>().ok_or("COPY data cut short")?;
    *buf = rest;
    Ok(*head)
}

/// One field: `None` for NULL, else its bytes.
fn field<'a>(buf: &mut &'a [u8]) -> Result<Option<&'a [u8]>, String> {
    let len = i32::from_be_bytes(take::<4>(buf)?);
    if len < 0 {
        return Ok(None);
    }
    let len = len as usize;
    if buf.len() < len {
        return Err("COPY field cut short".into());
    }
    let (value, rest) = buf.split_at(len);
    *buf = rest;
    Ok(Some(value))
}

/// A `bigint` field (NOT NULL columns only).
fn int(buf: &mut &[u8]) -> Result<i64, String> {
    let v = field(buf)?.ok_or("NULL in a bigint column")?;
    let v: [u8; 8] = v
        .try_into()
        .map_err(|_| format!("bigint field of {} bytes", v.len()))?;
    Ok(i64::from_be_bytes(v))
}

/// A `text` field.
fn text<'a>(buf: &mut &'a [u8]) -> Result<Option<&'a str>, String> {
    field(buf)?
        .map(|v| std::str::from_utf8(v).map_err(|e| format!("text field is not UTF-8: {e}")))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A binary COPY stream of `rows` (each field `None` for NULL), header in the first
    /// message like the server sends it.
    fn copy_bytes(rows: &[Vec<Option<Vec<u8>>>]) -> Vec<Vec<u8>> {
        let mut msgs = Vec::new();
        let mut first = SIGNATURE.to_vec();
        first.extend_from_slice(&0u32.to_be_bytes());
        first.extend_from_slice(&3u32.to_be_bytes());
        first.extend_from_slice(b"ext");
        let mut cur = first;
        for r in rows {
            cur.extend_from_slice(&(r.len() as i16).to_be_bytes());
            for f in r {
                match f {
                    None => cur.extend_from_slice(&(-1i32).to_be_bytes()),
                    Some(b) => {
                        cur.extend_from_slice(&(b.len() as i32).to_be_bytes());
                        cur.extend_from_slice(b);
                    }
                }
            }
            msgs.push(std::mem::take(&mut cur));
        }
        cur.extend_from_slice(&(-1i16).to_be_bytes());
        msgs.push(cur);
        msgs
    }

    fn row(texts: [Option<&str>; 7], ints: [i64; 10]) -> Vec<Option<Vec<u8>>> {
        let int = |v: i64| Some(v.to_be_bytes().to_vec());
        let text = |t: Option<&str>| t.map(|t| t.as_bytes().to_vec());
        let mut r = vec![int(ints[0])];
        r.extend(texts[..6].iter().map(|t| text(*t)));
        r.extend(ints[1..].iter().map(|v| int(*v)));
        r.insert(15, text(texts[6]));
        r
    }

    fn read_all(msgs: &[Vec<u8>]) -> Result<Vec<UsageRow<'_>>, String> {
        let mut reader = CopyReader::default();
        let mut out = Vec::new();
        for m in msgs {
            let mut buf = reader.data(m)?;
            while let Some(r) = reader.next_row(&mut buf)? {
                out.push(r);
            }
        }
        if !reader.ended {
            return Err("no trailer".into());
        }
        Ok(out)
    }

    #[test]
    fn rows_nulls_and_hostile_text_are_read_exactly() {
        let hostile = "=1+2, \"q\"\r\n\0nul ✓";
        let msgs = copy_bytes(&[
            row(
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
            row(
                [
                    Some(""),
                    Some("k"),
                    Some(""),
                    Some("m2"),
                    Some("o"),
                    Some(""),
                    Some("s"),
                ],
                [1_700_000_000_000, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            ),
        ]);
        let rows = read_all(&msgs).expect("valid stream");
        assert_eq!(
            rows[0],
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
        assert_eq!(rows[1].user, Some(""));
        assert_eq!(rows[1].session_id, Some("s"));
        assert_eq!(rows.len(), 2);
        // No rows: header and trailer in one message.
        assert_eq!(read_all(&copy_bytes(&[])).expect("empty").len(), 0);
        // Several rows in one message are read too.
        let joined = copy_bytes(&[row([None; 7], [0; 10]), row([None; 7], [1; 10])]).concat();
        assert_eq!(read_all(&[joined]).expect("one message").len(), 2);
    }

    #[test]
    fn damaged_streams_are_refused() {
        let good = copy_bytes(&[row([Some("u"); 7], [7; 10])]);
        // Every truncation of the first message fails, but the one right after the header,
        // which is a valid stream without rows: never a wrong row.
        let body = good[0].clone();
        let header = SIGNATURE.len() + 4 + 4 + 3;
        for cut in 0..body.len() {
            let msgs = vec![body[..cut].to_vec(), good[1].clone()];
            match read_all(&msgs) {
                Ok(rows) => assert!(rows.is_empty() && cut == header, "cut at {cut}"),
                Err(_) => assert_ne!(cut, header),
            }
        }
        // Wrong field count, invalid UTF-8, a NULL bigint, data after the trailer, no trailer.
        let mut r = row([Some("u"); 7], [7; 10]);
        r.pop();
        assert!(read_all(&copy_bytes(&[r])).is_err());
        let mut r = row([Some("u"); 7], [7; 10]);
        r[1] = Some(vec![0xff]);
        assert!(read_all(&copy_bytes(&[r])).is_err());
        let mut r = row([Some("u"); 7], [7; 10]);
        r[0] = None;
        assert!(read_all(&copy_bytes(&[r])).is_err());
        let mut after = good.clone();
        after.push(good[0][good[0].len() - 10..].to_vec());
        assert!(read_all(&after).is_err());
        assert!(read_all(&good[..1]).is_err());
        assert!(read_all(&[b"PGCOPY\n".to_vec()]).is_err());
    }
}
