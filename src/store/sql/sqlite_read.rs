//! Reads on SQLite through its C API (`sqlite_raw.rs`): the analytics queries' rollup and raw
//! rows, stepped on a blocking thread with the values read in place, instead of through sqlx's
//! worker thread, which copies each value and hands each row over a channel (most of a
//! leaderboard's time when it reads thousands of rows, and far more on a loaded machine).

use std::ffi::c_int;

use sqlx::SqlitePool;

use super::sqlite_raw::{Statement, with_handle};
use super::unavailable;
use crate::store::StoreError;

/// A bound value, owned so it can move to the blocking thread.
#[derive(Debug, Clone)]
pub(super) enum Owned {
    /// An integer.
    Int(i64),
    /// Text.
    Text(String),
    /// SQL NULL.
    Null,
}

/// Runs `sql` with `binds` as parameters 1, 2, … (in the order their names first appear in the
/// SQL) and reads each row with `row`.
pub(super) async fn rows<T, F>(
    pool: &SqlitePool,
    sql: String,
    binds: Vec<Owned>,
    row: F,
) -> Result<Vec<T>, StoreError>
where
    F: Fn(&Statement<'_>) -> Result<T, String> + Send + 'static,
    T: Send + 'static,
{
    let conn = pool.acquire().await.map_err(unavailable)?;
    with_handle(conn, move |db| {
        let db = db?;
        let mut stmt = db.prepare(&sql)?;
        bind_all(&mut stmt, &binds)?;
        let mut out = Vec::new();
        while stmt.step()? {
            out.push(row(&stmt)?);
        }
        Ok::<_, String>(out)
    })
    .await?
    .map_err(unavailable)
}

/// Binds `values` to parameters 1, 2, …; the number bound.
pub(super) fn bind_all(stmt: &mut Statement<'_>, values: &[Owned]) -> Result<c_int, String> {
    let mut at: c_int = 0;
    for v in values {
        at += 1;
        match v {
            Owned::Int(v) => stmt.bind_int(at, *v)?,
            Owned::Text(v) => stmt.bind_text(at, v)?,
            Owned::Null => stmt.bind_null(at)?,
        }
    }
    Ok(at)
}

/// Column `col` as UTF-8 text (`None` for NULL).
pub(super) fn text<'s>(stmt: &'s Statement<'_>, col: c_int) -> Result<Option<&'s str>, String> {
    stmt.text_bytes(col)?
        .map(|b| std::str::from_utf8(b).map_err(|e| format!("column {col}: {e}")))
        .transpose()
}
