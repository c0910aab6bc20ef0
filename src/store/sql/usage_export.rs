//! The usage export's entry point: one streamed scan of the request log per backend —
//! SQLite stepped through the C API ([`sqlite_export`]), PostgreSQL read from a text `COPY`
//! ([`pg_copy`]). Both sit above [`super::query`], whose filter and encoder seam they share.

use bytes::Bytes;
use tokio::sync::mpsc;

use super::query::{ExportEnd, Exported, LogFilter, RowEncoder};
use super::{Backend, SqlLog, pg_copy, sqlite_export};
use crate::store::StoreError;

impl SqlLog {
    /// Encodes the usage columns of up to `limit` rows matching `filter`, newest first, with
    /// `encoder`, sending each full chunk it hands back to `out` and waiting while `out` is
    /// full: memory stays constant however many rows match. If `out`'s receiver goes away the
    /// query is stopped and its connection freed ([`ExportEnd::ReceiverGone`]).
    ///
    /// SQLite rows are stepped on a blocking thread through the C API (`sql/sqlite_export.rs`);
    /// PostgreSQL rows are read from a text `COPY` (`sql/pg_copy.rs`).
    ///
    /// `Err` only when the export could not run at all and the encoder is lost (the runtime
    /// is shutting down); every other failure is an [`ExportEnd::Failed`].
    pub async fn export_usage<E: RowEncoder>(
        &self,
        filter: &LogFilter,
        limit: u64,
        encoder: E,
        out: mpsc::Sender<Bytes>,
    ) -> Result<Exported<E>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        match self.backend() {
            Backend::Sqlite(pool) => sqlite_export::export(pool, filter, limit, encoder, out).await,
            Backend::Postgres(pool) => Ok(postgres_export(pool, filter, limit, encoder, out).await),
        }
    }
}

/// The PostgreSQL side of [`SqlLog::export_usage`]: `COPY (SELECT …) TO STDOUT` in the binary
/// format on a connection of its own, rows decoded by [`pg_copy`].
async fn postgres_export<E: RowEncoder>(
    pool: &sqlx::PgPool,
    filter: &LogFilter,
    limit: i64,
    encoder: E,
    out: mpsc::Sender<Bytes>,
) -> Exported<E> {
    let mut conn = match pool.acquire().await {
        Ok(c) => c,
        Err(e) => {
            return Exported {
                encoder,
                rows: 0,
                end: ExportEnd::Failed(e.to_string()),
            };
        }
    };
    let exported = pg_copy::export(&mut conn, filter, limit, encoder, &out).await;
    if exported.end != ExportEnd::Done {
        // A COPY cut short leaves rows on their way, which the connection would have to read
        // before its next query: closing it stops the query at once.
        conn.close_on_drop();
    }
    exported
}
