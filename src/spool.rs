//! Durable acknowledgement (`durability: spool`): a 200 means the records are on local disk.
//!
//! Handlers encode their validated batch into a frame ([`codec`]), reserve room in the
//! pipeline and the spool's byte budget, and hand both to the one writer thread. The writer
//! takes whatever has queued up meanwhile (group commit), appends it to the current segment
//! with one `write` and one `fdatasync`, and only then passes each batch to the pipeline — in
//! spool order, tagged with its position — and answers its handler.
//!
//! A position is a byte offset in the spool's whole history (segments are named by the offset
//! they start at), so positions only grow. The pipeline publishes the highest position the
//! request log has written and the live store has taken ([`Pipeline::confirmed`]); segments
//! wholly below it are deleted, and a caught-up current segment is closed and deleted too.
//!
//! At start, [`Spool::open`] replays every segment left (a crash) into the pipeline before the
//! server answers anyone: the log ignores ids it has (`request_id` is unique; a record without
//! one got one before it was spooled) and the live store gets only what it had not confirmed.
//! A frame cut short or failing its checksum (a write torn by the crash) ends its segment: it
//! was never acknowledged, and is truncated away.

pub mod codec;

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use compact_str::format_compact;
use tokio::sync::{oneshot, watch};

use crate::health::{DropReason, Health};
use crate::pipeline::{Overloaded, Pipeline, Reserved};
use crate::record::{Event, RequestId};

/// Spool settings (`spool:`; used when `durability: spool`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolConfig {
    /// Directory of the segment files (created if missing).
    pub dir: PathBuf,
    /// Most bytes on disk and being written; beyond it ingest answers 503.
    pub max_bytes: u64,
    /// A segment is closed once it holds this many bytes.
    pub segment_bytes: u64,
}

/// Why a batch was not spooled (the handler answers 503 with `Retry-After`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The ingest queue is full.
    #[error("the ingest queue is full")]
    QueueFull,
    /// The server is shutting down.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The spool is at its size cap (the stores are behind).
    #[error("the durable spool is full")]
    Full,
    /// The spool could not write or sync its file.
    #[error("the durable spool could not write to disk")]
    Failed,
}

impl From<Overloaded> for Refusal {
    fn from(o: Overloaded) -> Self {
        match o {
            Overloaded::QueueFull => Self::QueueFull,
            Overloaded::ShuttingDown => Self::ShuttingDown,
        }
    }
}

/// What the replay at start found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Replayed {
    /// Segment files read.
    pub segments: u64,
    /// Events (records and start markers) handed to the pipeline again.
    pub events: u64,
    /// Of those, the events the live store did not hold yet (the rest went to the log only).
    pub live: u64,
    /// Bytes of torn frames cut off.
    pub torn_bytes: u64,
}

struct Append {
    frame: Vec<u8>,
    events: Vec<Event>,
    reserved: Reserved,
    reply: oneshot::Sender<Result<(), Refusal>>,
}

enum Msg {
    Append(Append),
    Close,
}

/// The handlers' side of the spool, cheap to clone.
#[derive(Clone)]
pub struct Spool {
    tx: mpsc::Sender<Msg>,
    pipeline: Pipeline,
    health: Arc<Health>,
    max_bytes: u64,
    thread: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
}

/// How often the idle writer looks for a new checkpoint.
const IDLE_WAKE: Duration = Duration::from_millis(100);

/// Most bytes written in one group.
const MAX_GROUP_BYTES: usize = 64 << 20;

impl Spool {
    /// Opens (creating) the spool directory, replays what a previous run left into `pipeline`
    /// (waiting for room: nothing is served yet), and starts the writer thread.
    ///
    /// A live store that outlives the process (Redis) says up to which position it holds the
    /// deltas ([`LiveStore::spooled_position`](crate::store::LiveStore::spooled_position)):
    /// batches up to there go to the request log only. If it cannot say within
    /// [`LIVE_POSITION_WAIT`], every replayed batch goes to the log only (the live store may
    /// then miss up to a flush interval; counting twice is never risked).
    pub async fn open(
        cfg: &SpoolConfig,
        id: &str,
        pipeline: Pipeline,
        health: Arc<Health>,
    ) -> io::Result<(Self, Replayed)> {
        let dir = cfg.dir.clone();
        fs::create_dir_all(&dir)?;
        let lock = DirLock::take(&dir)?;
        let mut live_from: Option<u64> = None;
        let mut found = Vec::new();
        for entry in fs::read_dir(&dir)? {
            let name = entry?.file_name();
            if let Some(base) = name.to_str().and_then(segment_base) {
                found.push(base);
            }
        }
        found.sort_unstable();
        let mut replayed = Replayed::default();
        let mut segments = VecDeque::new();
        let mut next_base = 0u64;
        for base in found {
            let path = segment_path(&dir, base);
            let data = {
                let path = path.clone();
                tokio::task::spawn_blocking(move || fs::read(path))
                    .await
                    .map_err(io::Error::other)??
            };
            replayed.segments += 1;
            if live_from.is_none() {
                live_from = Some(live_position(&pipeline, id).await);
            }
            let live_from = live_from.unwrap_or(0);
            let mut off = 0usize;
            loop {
                match codec::read_frame(&data[off..]) {
                    codec::Read::End => break,
                    codec::Read::Torn => break,
                    codec::Read::Frame(payload, len) => match codec::decode(payload) {
                        Ok(events) => {
                            off += len;
                            replayed.events += events.len() as u64;
                            if !events.is_empty() {
                                let pos = base + off as u64;
                                if pos > live_from {
                                    replayed.live += events.len() as u64;
                                }
                                pipeline
                                    .submit_replayed(events, pos, pos > live_from)
                                    .await
                                    .map_err(io::Error::other)?;
                            }
                        }
                        Err(e) => {
                            tracing::error!(segment = %path.display(), offset = off, error = %e,
                                "Spool entry unreadable; the rest of its segment is skipped.");
                            break;
                        }
                    },
                }
            }
            if off < data.len() {
                replayed.torn_bytes += (data.len() - off) as u64;
                let f = OpenOptions::new().write(true).open(&path)?;
                f.set_len(off as u64)?;
                f.sync_all()?;
            }
            if off == 0 {
                fs::remove_file(&path)?;
            } else {
                segments.push_back(Segment {
                    base,
                    len: off as u64,
                });
            }
            next_base = next_base.max(base + off as u64);
        }
        let bytes: u64 = segments.iter().map(|s| s.len).sum();
        health.spool.bytes.store(bytes, Relaxed);
        health.spool.replayed.fetch_add(replayed.events, Relaxed);
        if replayed.segments > 0 {
            tracing::info!(
                segments = replayed.segments,
                events = replayed.events,
                to_live_store = replayed.live,
                torn_bytes = replayed.torn_bytes,
                "Spool replayed into the pipeline (records the request log already holds are skipped by id)."
            );
        }
        let current = Current::create(&dir, next_base)?;
        sync_dir(&dir)?;
        let (tx, rx) = mpsc::channel();
        let writer = Writer {
            _lock: lock,
            dir,
            segments,
            current,
            segment_bytes: cfg.segment_bytes,
            health: health.clone(),
            confirmed: pipeline.confirmed(),
            buf: Vec::new(),
        };
        let thread = std::thread::Builder::new()
            .name("gatemeter-spool".into())
            .spawn(move || writer.run(rx))?;
        Ok((
            Self {
                tx,
                pipeline,
                health,
                max_bytes: cfg.max_bytes,
                thread: Arc::new(Mutex::new(Some(thread))),
            },
            replayed,
        ))
    }

    /// Spools `events` and resolves once they are on disk and queued in the pipeline. Records
    /// without a `request_id` get a random UUID first, so a replay cannot count them twice.
    pub async fn submit(&self, mut events: Vec<Event>) -> Result<(), Refusal> {
        let n = events.len();
        if n == 0 {
            return Ok(());
        }
        for e in &mut events {
            if let Event::Finish(r) = e
                && r.request_id.is_none()
            {
                r.request_id = Some(random_id());
            }
        }
        let frame = codec::frame(&events);
        let reserved = self.pipeline.try_reserve(n)?;
        let size = frame.len() as u64;
        let bytes = &self.health.spool.bytes;
        if bytes.fetch_add(size, Relaxed) + size > self.max_bytes {
            bytes.fetch_sub(size, Relaxed);
            self.health.dropped(DropReason::SpoolFull, n as u64);
            return Err(Refusal::Full);
        }
        let (reply, answer) = oneshot::channel();
        let sent = self.tx.send(Msg::Append(Append {
            frame,
            events,
            reserved,
            reply,
        }));
        let answered = match sent {
            Ok(()) => answer.await.ok(),
            Err(_) => {
                bytes.fetch_sub(size, Relaxed);
                None
            }
        };
        // What the writer answers was counted where it happened (writer, pipeline).
        answered.unwrap_or_else(|| {
            self.health.dropped(DropReason::ShuttingDown, n as u64);
            Err(Refusal::ShuttingDown)
        })
    }

    /// What stops the writer at shutdown. Unlike a `Spool`, it holds no pipeline handle, so
    /// the aggregator can finish while it is kept.
    pub fn closer(&self) -> SpoolCloser {
        SpoolCloser {
            tx: self.tx.clone(),
            thread: self.thread.clone(),
        }
    }
}

/// Stops the spool's writer ([`Spool::closer`]).
pub struct SpoolCloser {
    tx: mpsc::Sender<Msg>,
    thread: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
}

impl SpoolCloser {
    /// Stops the writer after the pipeline has finished (graceful shutdown): it deletes what
    /// the last checkpoint confirmed and exits.
    pub async fn close(self) {
        let _ = self.tx.send(Msg::Close);
        let thread = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(t) = thread {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}

/// How long the replay waits for the live store to say which position it holds.
pub const LIVE_POSITION_WAIT: Duration = Duration::from_secs(10);

/// The position up to which the live store holds the spool's deltas: 0 for one that does not
/// outlive the process, everything if it cannot be asked.
async fn live_position(pipeline: &Pipeline, id: &str) -> u64 {
    let deadline = tokio::time::Instant::now() + LIVE_POSITION_WAIT;
    loop {
        match pipeline.store().spooled_position(id).await {
            Ok(pos) => return pos.unwrap_or(0),
            Err(e) if tokio::time::Instant::now() >= deadline => {
                tracing::warn!(error = %e, "Live store unreachable at replay: the spool is replayed into the request log only (live totals may miss up to a flush interval).");
                return u64::MAX;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// The spool's id (`spool.id` in its directory): the live store keeps the spool's position
/// under it. A directory without segment files (a first start, or one whose files were
/// removed) gets a new id, since positions start again from its files: a position stored for
/// an old history must not hide the new one's records.
pub fn id(dir: &Path) -> io::Result<Arc<str>> {
    fs::create_dir_all(dir)?;
    let path = dir.join("spool.id");
    let mut has_segments = false;
    for entry in fs::read_dir(dir)? {
        has_segments |= entry?.file_name().to_str().and_then(segment_base).is_some();
    }
    if has_segments {
        match fs::read_to_string(&path) {
            Ok(text) if !text.trim().is_empty() => return Ok(Arc::from(text.trim())),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    let id = format!("{:016x}", rand::random::<u64>());
    let tmp = dir.join("spool.id.tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(id.as_bytes())?;
    f.sync_all()?;
    fs::rename(&tmp, &path)?;
    sync_dir(dir)?;
    Ok(Arc::from(id))
}

/// A random (version 4) UUID in canonical form (the SQLite log stores it in 16 bytes).
fn random_id() -> RequestId {
    let v: u128 = rand::random();
    let v = (v & !(0xf << 76) & !(0x3 << 62)) | (0x4 << 76) | (0x2 << 62);
    RequestId(format_compact!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        v >> 96,
        (v >> 80) & 0xffff,
        (v >> 64) & 0xffff,
        (v >> 48) & 0xffff,
        v & 0xffff_ffff_ffff
    ))
}

/// File name of the segment starting at spool offset `base`.
fn segment_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:016x}.spool"))
}

/// The start offset a segment file name stands for.
fn segment_base(name: &str) -> Option<u64> {
    let hex = name.strip_suffix(".spool")?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// An exclusive `flock` on `<dir>/lock`: a second server on the same spool directory would
/// replay and delete the first one's segments, so it is refused at start.
struct DirLock {
    #[cfg(target_os = "linux")]
    _lock: nix::fcntl::Flock<File>,
}

impl DirLock {
    fn take(dir: &Path) -> io::Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("lock"))?;
        #[cfg(target_os = "linux")]
        {
            let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
                .map_err(|(_, e)| {
                io::Error::new(
                    io::ErrorKind::WouldBlock,
                    format!("another process uses this spool directory ({e})"),
                )
            })?;
            Ok(Self { _lock: lock })
        }
        #[cfg(not(target_os = "linux"))]
        {
            drop(file);
            Ok(Self {})
        }
    }
}

/// A closed segment: its start offset and length.
#[derive(Debug, Clone, Copy)]
struct Segment {
    base: u64,
    len: u64,
}

/// The segment being appended to.
struct Current {
    base: u64,
    len: u64,
    file: File,
}

impl Current {
    fn create(dir: &Path, base: u64) -> io::Result<Self> {
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(segment_path(dir, base))?;
        Ok(Self { base, len: 0, file })
    }
}

struct Writer {
    /// Held while the writer runs: one server per spool directory.
    _lock: DirLock,
    dir: PathBuf,
    segments: VecDeque<Segment>,
    current: Current,
    segment_bytes: u64,
    health: Arc<Health>,
    confirmed: watch::Receiver<u64>,
    buf: Vec<u8>,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Msg>) {
        let mut group = Vec::new();
        let mut closing = false;
        while !closing {
            match rx.recv_timeout(IDLE_WAKE) {
                Ok(Msg::Append(a)) => group.push(a),
                Ok(Msg::Close) | Err(RecvTimeoutError::Disconnected) => closing = true,
                Err(RecvTimeoutError::Timeout) => {}
            }
            // Group commit: everything that queued up while the last group was being synced.
            let mut size: usize = group.iter().map(|a| a.frame.len()).sum();
            while size < MAX_GROUP_BYTES && !closing {
                match rx.try_recv() {
                    Ok(Msg::Append(a)) => {
                        size += a.frame.len();
                        group.push(a);
                    }
                    Ok(Msg::Close) => closing = true,
                    Err(_) => break,
                }
            }
            if !group.is_empty() {
                self.write(&mut group);
            }
            let confirmed = *self.confirmed.borrow_and_update();
            if let Err(e) = self.checkpoint(confirmed) {
                tracing::warn!(error = %e, "Spool checkpoint failed; retried at the next one.");
            }
        }
        // Batches that arrived after the close: the pipeline is gone, nothing was taken.
        while let Ok(msg) = rx.try_recv() {
            if let Msg::Append(a) = msg {
                self.health
                    .spool
                    .bytes
                    .fetch_sub(a.frame.len() as u64, Relaxed);
                self.health
                    .dropped(DropReason::ShuttingDown, a.events.len() as u64);
                let _ = a.reply.send(Err(Refusal::ShuttingDown));
            }
        }
    }

    /// Appends the group, syncs, then queues each batch and answers its handler.
    fn write(&mut self, group: &mut Vec<Append>) {
        if self.current.len >= self.segment_bytes
            && let Err(e) = self.rotate()
        {
            tracing::warn!(error = %e, "Spool could not start a new segment; writing on.");
        }
        self.buf.clear();
        for a in group.iter() {
            self.buf.extend_from_slice(&a.frame);
        }
        let started = std::time::Instant::now();
        let written = self
            .current
            .file
            .write_all(&self.buf)
            .and_then(|()| self.current.file.sync_data());
        let spool = &self.health.spool;
        spool.syncs.fetch_add(1, Relaxed);
        spool
            .sync_micros
            .fetch_add(started.elapsed().as_micros() as u64, Relaxed);
        match written {
            Ok(()) => {
                let mut end = self.current.base + self.current.len;
                self.current.len += self.buf.len() as u64;
                for a in group.drain(..) {
                    end += a.frame.len() as u64;
                    let n = a.events.len() as u64;
                    let result = a
                        .reserved
                        .submit(a.events, Some(end))
                        .map_err(Refusal::from);
                    if result.is_ok() {
                        spool.records.fetch_add(n, Relaxed);
                    }
                    let _ = a.reply.send(result);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, bytes = self.buf.len(),
                    "Spool write failed; the batches were refused (503) and a new segment is started.");
                for a in group.drain(..) {
                    spool.bytes.fetch_sub(a.frame.len() as u64, Relaxed);
                    self.health
                        .dropped(DropReason::SpoolFailed, a.events.len() as u64);
                    let _ = a.reply.send(Err(Refusal::Failed));
                }
                // What reached the file is past `len`: cut it, then leave the file behind.
                let _ = self.current.file.set_len(self.current.len);
                if let Err(e) = self.rotate() {
                    tracing::error!(error = %e, "Spool could not start a new segment.");
                }
            }
        }
    }

    /// Closes the current segment and starts the next at its end.
    fn rotate(&mut self) -> io::Result<()> {
        let next = Current::create(&self.dir, self.current.base + self.current.len)?;
        sync_dir(&self.dir)?;
        let old = std::mem::replace(&mut self.current, next);
        self.segments.push_back(Segment {
            base: old.base,
            len: old.len,
        });
        Ok(())
    }

    /// Deletes the segments wholly at or below `confirmed`; a current segment it covers is
    /// closed first.
    fn checkpoint(&mut self, confirmed: u64) -> io::Result<()> {
        let c = &self.current;
        if c.len > 0 && confirmed >= c.base + c.len {
            self.rotate()?;
        }
        let mut removed = false;
        while let Some(s) = self.segments.front().copied() {
            if s.base + s.len > confirmed {
                break;
            }
            match fs::remove_file(segment_path(&self.dir, s.base)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            self.segments.pop_front();
            self.health.spool.bytes.fetch_sub(s.len, Relaxed);
            removed = true;
        }
        if removed {
            // Deleted for good: a replay after a crash must not find a confirmed segment.
            sync_dir(&self.dir)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_round_trip() {
        let p = segment_path(Path::new("/d"), 0xabc);
        let name = p.file_name().and_then(|n| n.to_str()).expect("name");
        assert_eq!(name, "0000000000000abc.spool");
        assert_eq!(segment_base(name), Some(0xabc));
        assert_eq!(segment_base("0000000000000abc.tmp"), None);
        assert_eq!(segment_base("abc.spool"), None);
    }

    #[test]
    fn the_id_is_kept_with_the_segments_and_renewed_without_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = id(dir.path()).expect("id");
        assert_eq!(first.len(), 16);
        let second = id(dir.path()).expect("id");
        assert_ne!(first, second, "no segments: a new id");
        fs::write(segment_path(dir.path(), 0), b"").expect("segment");
        assert_eq!(
            id(dir.path()).expect("id"),
            second,
            "kept with its segments"
        );
        assert_eq!(id(dir.path()).expect("id"), second);
        fs::remove_file(segment_path(dir.path(), 0)).expect("rm");
        assert_ne!(id(dir.path()).expect("id"), second, "renewed without them");
    }

    #[test]
    fn random_ids_are_canonical_v4_uuids() {
        let a = random_id();
        let b = random_id();
        assert_ne!(a, b);
        let s = a.as_str();
        assert_eq!(s.len(), 36);
        assert_eq!(&s[14..15], "4");
        assert!(matches!(&s[19..20], "8" | "9" | "a" | "b"), "{s}");
    }
}
