//! The database backup export (SPEC §6.4): a producer of the dump's bytes, handed to the API as a
//! bounded stream of [`Piece`]s that ends with how the dump ended.
//!
//! - PostgreSQL: `pg_dump --format=custom` as a child process (found at `backup.pg_dump_path`, on
//!   `PATH`, or under `/usr/lib/postgresql/*/bin`), its standard output read on a thread of its
//!   own in 64 KiB pieces; its exit status and the gist of its standard error (secrets scrubbed)
//!   end the stream. Without the log, the data of the request-log and rollup tables is left out
//!   (`--exclude-table-data`; SQLite: emptied in the snapshot). The password of the URL goes to `PGPASSWORD`, never to the command
//!   line (`/proc/*/cmdline` is world-readable).
//! - SQLite: `VACUUM INTO` a temporary file beside the database (an online, consistent snapshot;
//!   the writer goes on), then that file, removed afterwards whatever happens.
//!
//! Dropping the [`Dump`] (the client went away) kills `pg_dump` at once (SIGKILL, then reaped by
//! its reading thread) and removes the temporary file. Nothing here speaks HTTP.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::record::scrub;
use crate::store::sql::{LOG_TABLES, SqlBackend, SqlLog};

/// Settings of the backup export (`backup:`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackupConfig {
    /// `pg_dump` to run; `None`: found on `PATH` or under `/usr/lib/postgresql/*/bin`.
    pub pg_dump_path: Option<PathBuf>,
}

/// Size of one piece read from the dump.
const PIECE: usize = 64 * 1024;

/// Most bytes of `pg_dump`'s standard error kept for the error message.
const STDERR_GIST: usize = 2048;

/// What the producer sends: bytes of the dump, then exactly one end.
#[derive(Debug)]
pub enum Piece {
    /// The next bytes of the dump.
    Bytes(Bytes),
    /// The dump is complete (`Ok`) or failed (`Err`: why, for the caller; secrets removed).
    End(Result<(), String>),
}

/// Why a backup could not start.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// `pg_dump` is not where it was looked for.
    #[error("{0}")]
    Missing(String),
    /// It could not be started or prepared.
    #[error("{0}")]
    Failed(String),
}

/// A running dump: its pieces, and what must be undone if it is dropped before its end.
pub struct Dump {
    /// Pieces in order; the last is [`Piece::End`] unless the producer died.
    pub pieces: mpsc::Receiver<Piece>,
    /// `pg_dump`, killed on drop.
    _child: Option<KillOnDrop>,
    /// The SQLite snapshot, removed on drop.
    _file: Option<RemoveOnDrop>,
}

/// The `pg_dump` to run: the configured path, else `pg_dump` on `PATH`, else the newest under
/// `/usr/lib/postgresql/*/bin`.
pub fn pg_dump_path(cfg: &BackupConfig) -> Result<PathBuf, BackupError> {
    if let Some(p) = &cfg.pg_dump_path {
        return if p.is_file() {
            Ok(p.clone())
        } else {
            Err(BackupError::Missing(format!(
                "pg_dump not found at {} (backup.pg_dump_path)",
                p.display()
            )))
        };
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("pg_dump"))
        .find(|p| p.is_file());
    if let Some(p) = on_path {
        return Ok(p);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let p = e.path().join("bin/pg_dump");
            p.is_file().then_some((v, p))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, p)| p).ok_or_else(|| {
        BackupError::Missing(
            "pg_dump not found on PATH nor under /usr/lib/postgresql/*/bin \
             (install the PostgreSQL client or set backup.pg_dump_path)"
                .into(),
        )
    })
}

/// Starts the backup of `log`'s database; `include_log: false` leaves out [`LOG_TABLES`]' data.
pub async fn start(
    log: &SqlLog,
    cfg: &BackupConfig,
    include_log: bool,
) -> Result<Dump, BackupError> {
    match log.location() {
        SqlBackend::Postgres { url } => start_pg_dump(&pg_dump_path(cfg)?, url, include_log),
        SqlBackend::Sqlite { path } => Ok(start_snapshot(log.clone(), path, include_log)),
    }
}

/// `url` without its password (in the user part or a `password=` parameter), and the password
/// (percent-decoded).
fn split_password(url: &str) -> (String, Option<String>) {
    let (url, in_user) = split_user_password(url);
    let Some((base, query)) = url.split_once('?') else {
        return (url, in_user);
    };
    let mut password = in_user;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|p| match p.strip_prefix("password=") {
            Some(v) => {
                password = Some(percent_decode(v));
                false
            }
            None => true,
        })
        .collect();
    let url = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    (url, password)
}

/// `url` without the password of its user part, and that password (percent-decoded).
fn split_user_password(url: &str) -> (String, Option<String>) {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return (url.to_string(), None);
    };
    let rest = &url[scheme_end..];
    let auth_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let Some(at) = rest[..auth_end].rfind('@') else {
        return (url.to_string(), None);
    };
    let Some(colon) = rest[..at].find(':') else {
        return (url.to_string(), None);
    };
    let password = percent_decode(&rest[colon + 1..at]);
    let stripped = format!("{}{}{}", &url[..scheme_end], &rest[..colon], &rest[at..]);
    (stripped, Some(password))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Some(v) = std::str::from_utf8(&b[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Kills the child when dropped (the thread reading its output reaps it).
struct KillOnDrop(Arc<Mutex<Child>>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let mut child = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if matches!(child.try_wait(), Ok(None)) {
            let _ = child.kill();
        }
    }
}

fn start_pg_dump(bin: &Path, url: &str, include_log: bool) -> Result<Dump, BackupError> {
    let (url, password) = split_password(url);
    let mut cmd = Command::new(bin);
    cmd.arg("--format=custom")
        .arg("--no-password")
        .arg(format!("--dbname={url}"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("PGCONNECT_TIMEOUT", "10");
    if let Some(p) = password {
        cmd.env("PGPASSWORD", p);
    }
    if !include_log {
        for t in LOG_TABLES {
            cmd.arg(format!("--exclude-table-data={t}"));
        }
    }
    let mut child = cmd.spawn().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            BackupError::Missing(format!("pg_dump not found at {}", bin.display()))
        }
        _ => BackupError::Failed(format!("cannot run {}: {e}", bin.display())),
    })?;
    let (Some(mut stdout), Some(mut stderr)) = (child.stdout.take(), child.stderr.take()) else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(BackupError::Failed("pg_dump's output is not piped".into()));
    };
    let child = Arc::new(Mutex::new(child));
    let (tx, rx) = mpsc::channel(4);
    let errors = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = (&mut stderr).take(64 * 1024).read_to_end(&mut text);
        // Drain the rest so pg_dump never blocks on a full pipe.
        let _ = std::io::copy(&mut stderr, &mut std::io::sink());
        gist(&String::from_utf8_lossy(&text))
    });
    let reaper = child.clone();
    let spawned = std::thread::Builder::new()
        .name("pg_dump".into())
        .spawn(move || {
            let mut sent_all = true;
            let mut buf = vec![0u8; PIECE];
            let read_error = loop {
                match stdout.read(&mut buf) {
                    Ok(0) => break None,
                    Ok(n) => {
                        if tx
                            .blocking_send(Piece::Bytes(Bytes::copy_from_slice(&buf[..n])))
                            .is_err()
                        {
                            sent_all = false;
                            break None;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => break Some(e.to_string()),
                }
            };
            drop(stdout);
            let status = loop {
                {
                    let mut c = reaper.lock().unwrap_or_else(|p| p.into_inner());
                    if !sent_all {
                        let _ = c.kill();
                    }
                    match c.try_wait() {
                        Ok(Some(s)) => break Ok(s),
                        Ok(None) => {}
                        Err(e) => break Err(e.to_string()),
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            };
            let stderr = errors.join().unwrap_or_default();
            let end = match (status, read_error) {
                (_, Some(e)) => Err(format!("reading pg_dump's output failed: {e}")),
                (Ok(s), None) if s.success() => Ok(()),
                (Ok(s), None) => Err(format!("pg_dump failed ({s}): {stderr}")),
                (Err(e), None) => Err(format!("pg_dump could not be waited for: {e}")),
            };
            let _ = tx.blocking_send(Piece::End(end));
        });
    if let Err(e) = spawned {
        let mut c = child.lock().unwrap_or_else(|p| p.into_inner());
        let _ = c.kill();
        let _ = c.wait();
        return Err(BackupError::Failed(format!("cannot start a thread: {e}")));
    }
    Ok(Dump {
        pieces: rx,
        _child: Some(KillOnDrop(child)),
        _file: None,
    })
}

/// The first lines of `pg_dump`'s standard error, at most [`STDERR_GIST`] bytes, scrubbed.
fn gist(text: &str) -> String {
    let mut t = text.trim().replace('\n', "; ");
    if t.len() > STDERR_GIST {
        let mut end = STDERR_GIST;
        while !t.is_char_boundary(end) {
            end -= 1;
        }
        t.truncate(end);
        t.push('…');
    }
    if t.is_empty() {
        t = "no error output".into();
    }
    scrub::scrub(&t).unwrap_or(t)
}

/// Removes a file when dropped.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn start_snapshot(log: SqlLog, db: &Path, include_log: bool) -> Dump {
    let name = db
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "requests.db".into());
    let tmp = db.with_file_name(format!(".{name}.backup-{:016x}.tmp", rand::random::<u64>()));
    let (tx, rx) = mpsc::channel(4);
    let path = tmp.clone();
    tokio::spawn(async move {
        let end = match log.snapshot_into(&path, include_log).await {
            Err(e) => Err(format!("the SQLite snapshot failed: {e}")),
            Ok(()) => send_file(&path, &tx).await,
        };
        // Gone when the client went away: nothing more to say.
        let _ = tx.send(Piece::End(end)).await;
    });
    Dump {
        pieces: rx,
        _child: None,
        _file: Some(RemoveOnDrop(tmp)),
    }
}

/// Sends the file at `path` in pieces; `Ok` also when the receiver left (nobody to tell).
async fn send_file(path: &Path, tx: &mpsc::Sender<Piece>) -> Result<(), String> {
    use tokio::io::AsyncReadExt;
    let mut f = tokio::fs::File::open(path)
        .await
        .map_err(|e| format!("cannot open the snapshot: {e}"))?;
    loop {
        let mut buf = vec![0u8; PIECE];
        let n = f
            .read(&mut buf)
            .await
            .map_err(|e| format!("cannot read the snapshot: {e}"))?;
        if n == 0 {
            return Ok(());
        }
        buf.truncate(n);
        if tx.send(Piece::Bytes(Bytes::from(buf))).await.is_err() {
            return Ok(());
        }
    }
}

/// The backup's file name for a start at `ms`: `backup_YYYY-MM-DDTHH-mm-ss.dump` (UTC).
pub fn file_name(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "backup_{:04}-{:02}-{:02}T{:02}-{:02}-{:02}.dump",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_leaves_the_url() {
        assert_eq!(
            split_password("postgres://gm:s%40cr%3At@db:5432/logs?sslmode=require"),
            (
                "postgres://gm@db:5432/logs?sslmode=require".to_string(),
                Some("s@cr:t".to_string())
            )
        );
        assert_eq!(
            split_password("postgres://postgres@127.0.0.1:5/gm"),
            ("postgres://postgres@127.0.0.1:5/gm".to_string(), None)
        );
        assert_eq!(
            split_password("postgres://gm@db/logs?sslmode=disable&password=p%26w"),
            (
                "postgres://gm@db/logs?sslmode=disable".to_string(),
                Some("p&w".to_string())
            )
        );
        assert_eq!(
            split_password("postgres://gm@db/logs?password=x"),
            ("postgres://gm@db/logs".to_string(), Some("x".to_string()))
        );
    }

    #[test]
    fn names_and_gists() {
        assert_eq!(
            file_name(1_764_909_296_000),
            "backup_2025-12-05T04-34-56.dump"
        );
        assert_eq!(
            gist("pg_dump: error: password=hunter2 failed\nmore\n"),
            "pg_dump: error: password=[REDACTED] failed; more"
        );
    }

    #[test]
    fn a_configured_path_that_does_not_exist_is_named() {
        let cfg = BackupConfig {
            pg_dump_path: Some("/nonexistent/pg_dump".into()),
        };
        let err = pg_dump_path(&cfg).expect_err("missing");
        assert!(err.to_string().contains("/nonexistent/pg_dump"), "{err}");
    }
}
