//! The HTTP/1.1 server under the router: accepts connections up to a cap, guards each one with
//! header, body and idle timeouts, and shuts down within a deadline whatever clients do.
//!
//! It owns connections, not requests: what a request means is the router's business. Every
//! connection is its own task, so a slow client only ever holds its own connection.
//!
//! - **Header timeout**: a request head must arrive whole within `header_timeout` of its first
//!   byte (of the accept, for a connection's first request).
//! - **Body timeout**: a request body must arrive whole within `body_timeout` of its head; then
//!   the handler's read fails, the answer is 408 and the connection closes.
//! - **Idle timeout**: a keep-alive connection with no request for `idle_timeout` is closed, and
//!   so is one whose client reads nothing of its response for as long.
//! - **Connection cap**: past `max_connections` a connection is answered 503 with
//!   `Connection: close` and `Retry-After`, closed, and counted (`gatemeter_refused_connections`).
//! - **Shutdown**: stop accepting; idle connections close at once; in-flight requests get until
//!   `shutdown_timeout`; then whatever is left is closed.
//! - **TLS** (`listen_tls`): the handshake runs on the connection's own task, within
//!   `header_timeout`; a refused or late one closes the connection and is counted
//!   (`gatemeter_tls_handshake_failures`; a peer hanging up is not). Over the cap a TLS connection is closed unanswered
//!   (a plain-text 503 would be garbage to a TLS client).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{CONNECTION, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;
use tracing::{debug, info, warn};

use crate::health::Health;

/// How the server treats connections (the `server:` section of the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerConfig {
    /// A request head must arrive within this of its first byte.
    pub header_timeout: Duration,
    /// A request body must arrive within this of its head.
    pub body_timeout: Duration,
    /// A keep-alive connection without a request is closed after this.
    pub idle_timeout: Duration,
    /// Connections open at once; more are refused with 503.
    pub max_connections: usize,
    /// At shutdown, in-flight requests get this long before their connections are closed.
    pub shutdown_timeout: Duration,
}

/// TLS on a listener (`listen_tls`, `metrics_listen_tls`): PEM files, read when the server is
/// built (`crate::tls::server_config`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenTls {
    /// The certificate chain, leaf first.
    pub cert_file: std::path::PathBuf,
    /// The leaf's private key.
    pub key_file: std::path::PathBuf,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            shutdown_timeout: Duration::from_secs(20),
        }
    }
}

/// Refusals answered at once (each holds its socket ≤ [`REFUSAL_LINGER`]); past them a refused
/// connection is closed without an answer (and still counted).
const MAX_ANSWERED_REFUSALS: usize = 256;
/// How long a refused connection is given to send its request and read the 503.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);
/// At shutdown, how long a connection between requests has to flush its last response.
const STOP_GRACE: Duration = Duration::from_millis(100);
/// Files the process needs besides its connections (stores, logs, listener).
const RESERVED_FILES: u64 = 64;

/// Raises the soft open-file limit to the hard limit (every connection is a file) and logs
/// both; warns when `max_connections` cannot be reached under the limit.
pub fn raise_file_limit(max_connections: usize) {
    #[cfg(target_os = "linux")]
    {
        use nix::sys::resource::{Resource, getrlimit, setrlimit};
        let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
            Ok(l) => l,
            Err(e) => {
                warn!(error = %e, "Cannot read the open-file limit.");
                return;
            }
        };
        let limit = if soft >= hard {
            info!(limit = soft, "Open-file limit already at its hard limit.");
            soft
        } else {
            match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                Ok(()) => {
                    info!(old = soft, new = hard, "Raised the open-file limit.");
                    hard
                }
                Err(e) => {
                    warn!(soft, hard, error = %e, "Cannot raise the open-file limit.");
                    soft
                }
            }
        };
        if limit < max_connections as u64 + RESERVED_FILES {
            warn!(
                limit,
                max_connections,
                "server.max_connections is above the open-file limit: accepts will fail before the cap refuses."
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = max_connections;
}

/// Serves `router` on `listener` (over TLS with `tls`) until `shutdown` resolves, then closes
/// connections within `config.shutdown_timeout` and returns.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    router: Router,
    config: ServerConfig,
    health: Arc<Health>,
    shutdown: impl Future<Output = ()>,
) {
    let tls = tls.map(TlsAcceptor::from);
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let answered_refusals = Arc::new(Semaphore::new(MAX_ANSWERED_REFUSALS));
    let refusal = Bytes::from(refusal_response());
    let (stop_tx, stop_rx) = watch::channel(());
    let mut http = hyper::server::conn::http1::Builder::new();
    // hyper's own header timer also runs between requests (it would cut idle keep-alive
    // connections at the header timeout); the watchdog in `connection` times both instead.
    http.header_read_timeout(None);
    let mut conns = JoinSet::new();
    let mut shutdown = pin!(shutdown);
    // Refusals since the cap was last reached (0: accepting).
    let mut refused: u64 = 0;
    loop {
        let accepted = tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            a = listener.accept() => a,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            // The peer gave up before the accept: nothing to serve.
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                // Out of files or memory: the sockets waiting in the backlog wait a little.
                warn!(error = %e, "Accept failed; retrying in 100 ms.");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            health.connection_refused();
            if refused == 0 {
                warn!(
                    max_connections = config.max_connections,
                    "Connection limit reached: refusing new connections with 503."
                );
            }
            refused += 1;
            if tls.is_none()
                && let Ok(answer) = answered_refusals.clone().try_acquire_owned()
            {
                conns.spawn(refuse(tcp, refusal.clone(), answer));
            }
            continue;
        };
        if refused > 0 {
            info!(refused, "Accepting connections again.");
            refused = 0;
        }
        let slot = Slot::new(permit, health.clone());
        match &tls {
            None => conns.spawn(connection(
                http.clone(),
                tcp,
                router.clone(),
                config,
                slot,
                stop_rx.clone(),
            )),
            Some(acceptor) => conns.spawn(tls_connection(
                acceptor.clone(),
                http.clone(),
                tcp,
                router.clone(),
                config,
                slot,
                stop_rx.clone(),
            )),
        };
    }
    drop(listener);
    drop(router);
    let _ = stop_tx.send(());
    let drain = async { while conns.join_next().await.is_some() {} };
    if tokio::time::timeout(config.shutdown_timeout, drain)
        .await
        .is_err()
    {
        warn!(
            open = conns.len(),
            "Shutdown deadline reached: closing the remaining connections."
        );
        conns.shutdown().await;
    }
}

/// Errors of one incoming connection, not of the listener.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// The answer to a connection over the cap.
fn refusal_response() -> Vec<u8> {
    let body = r#"{"error":"too_many_connections","message":"the server has reached its connection limit; retry shortly"}"#;
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Answers a connection over the cap with 503: reads what the client sent (so closing does
/// not reset the connection before the answer is read), answers, and waits for the client to
/// close — all within [`REFUSAL_LINGER`].
async fn refuse(mut tcp: TcpStream, answer: Bytes, _permit: OwnedSemaphorePermit) {
    let _ = tokio::time::timeout(REFUSAL_LINGER, async {
        let mut buf = [0u8; 4096];
        // A request head usually comes in one segment; if none comes at all, answer anyway.
        let _ = tokio::time::timeout(REFUSAL_LINGER / 4, tcp.read(&mut buf)).await;
        tcp.write_all(&answer).await?;
        tcp.shutdown().await?;
        while tcp.read(&mut buf).await? > 0 {}
        Ok::<_, io::Error>(())
    })
    .await;
}

/// An open connection's place under the cap, counted in the health gauge while held.
struct Slot {
    _permit: OwnedSemaphorePermit,
    health: Arc<Health>,
}

impl Slot {
    fn new(permit: OwnedSemaphorePermit, health: Arc<Health>) -> Self {
        health.connection_opened();
        Self {
            _permit: permit,
            health,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.health.connection_closed();
    }
}

/// The TLS handshake (within the header timeout, given up at shutdown), then the connection;
/// a handshake that fails or is late is counted and the connection closed.
async fn tls_connection(
    acceptor: TlsAcceptor,
    http: hyper::server::conn::http1::Builder,
    tcp: TcpStream,
    router: Router,
    config: ServerConfig,
    slot: Slot,
    mut stop: watch::Receiver<()>,
) {
    let handshake = tokio::time::timeout(config.header_timeout, acceptor.accept(tcp));
    let stream = tokio::select! {
        r = handshake => match r {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                // rustls' refusals (not TLS, an alert such as the client rejecting the
                // certificate, no common version or cipher) are `InvalidData`; a peer that hangs
                // up (a TCP health check, a client closing as its handshake ends) is not a
                // failed handshake.
                if e.kind() == io::ErrorKind::InvalidData {
                    slot.health.tls_handshake_failed();
                }
                debug!(error = %e, "TLS handshake failed.");
                return;
            }
            Err(_) => {
                slot.health.tls_handshake_failed();
                debug!("TLS handshake did not complete within the header timeout.");
                return;
            }
        },
        _ = stop.changed() => return,
    };
    connection(http, stream, router, config, slot, stop).await;
}

/// Serves one connection until it ends, a timeout expires, or shutdown closes it.
async fn connection<S>(
    http: hyper::server::conn::http1::Builder,
    tcp: S,
    router: Router,
    config: ServerConfig,
    _slot: Slot,
    mut stop: watch::Receiver<()>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let state = Arc::new(ConnState::new(Instant::now()));
    let io = TokioIo::new(WatchedIo {
        tcp,
        state: state.clone(),
    });
    let service = ConnService {
        router,
        state: state.clone(),
        body_timeout: config.body_timeout,
    };
    let mut served = pin!(http.serve_connection(io, service));
    let mut timer = pin!(tokio::time::sleep(recheck_period(&config)));
    let mut stopping = false;
    loop {
        tokio::select! {
            biased;
            r = served.as_mut() => {
                if let Err(e) = r {
                    debug!(error = %e, "Connection ended with an error.");
                }
                return;
            }
            _ = stop.changed(), if !stopping => {
                // The response in flight, if any, is the connection's last; an idle one is
                // closed by hyper once its last response is flushed. A connection between
                // requests (a head still arriving) is closed at the next look, just after.
                stopping = true;
                served.as_mut().graceful_shutdown();
                timer.as_mut().reset(Instant::now() + STOP_GRACE);
            }
            () = timer.as_mut() => {
                if stopping && state.in_flight.load(Relaxed) == 0 {
                    return;
                }
                match state.deadline(&config, Instant::now()) {
                    Ok(next) => timer.as_mut().reset(next),
                    Err(expired) => {
                        debug!(?expired, "Closing a connection.");
                        return;
                    }
                }
            }
        }
    }
}

/// Which timeout closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expired {
    /// A request head did not arrive in time.
    Header,
    /// No request came in time.
    Idle,
    /// The client read nothing of its response for the idle timeout.
    Stalled,
}

/// No time recorded.
const NONE: u64 = u64::MAX;

/// What a connection is doing, written by its reader and service, read by its watchdog (all
/// on the connection's task; atomics only because hyper wants a `Send` service).
#[derive(Debug)]
struct ConnState {
    origin: Instant,
    /// Requests whose response has not finished.
    in_flight: AtomicU32,
    /// Since when (ms after `origin`) the next request head has been arriving; `NONE` when no
    /// byte of it came yet.
    head_ms: AtomicU64,
    /// When the last response finished (ms after `origin`).
    idle_ms: AtomicU64,
    /// Since when a write has been waiting for the client to read; `NONE` when none is.
    write_blocked_ms: AtomicU64,
    /// The current request's body did not arrive in time.
    body_timed_out: AtomicBool,
}

impl ConnState {
    fn new(origin: Instant) -> Self {
        Self {
            origin,
            in_flight: AtomicU32::new(0),
            // A new connection's first head is timed from the accept.
            head_ms: AtomicU64::new(0),
            idle_ms: AtomicU64::new(0),
            write_blocked_ms: AtomicU64::new(NONE),
            body_timed_out: AtomicBool::new(false),
        }
    }

    fn ms(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.origin).as_millis() as u64
    }

    /// Bytes came in: between requests, a new head has begun.
    fn bytes_read(&self) {
        if self.in_flight.load(Relaxed) == 0 && self.head_ms.load(Relaxed) == NONE {
            self.head_began(Instant::now());
        }
    }

    fn head_began(&self, now: Instant) {
        self.head_ms.store(self.ms(now), Relaxed);
    }

    /// A write returned: `Pending` means the client's window is full (a clock read only then).
    fn write_polled<T>(&self, r: &Poll<T>) {
        let blocked = self.write_blocked_ms.load(Relaxed);
        match r {
            Poll::Pending if blocked == NONE => self.write_blocked(Instant::now()),
            Poll::Ready(_) if blocked != NONE => self.write_blocked_ms.store(NONE, Relaxed),
            _ => {}
        }
    }

    fn write_blocked(&self, now: Instant) {
        self.write_blocked_ms.store(self.ms(now), Relaxed);
    }

    fn request_started(&self) {
        self.body_timed_out.store(false, Relaxed);
        self.in_flight.fetch_add(1, Relaxed);
    }

    fn request_ended(&self, now: Instant) {
        self.idle_ms.store(self.ms(now), Relaxed);
        self.head_ms.store(NONE, Relaxed);
        self.in_flight.fetch_sub(1, Relaxed);
    }

    /// When to look again, or which timeout has expired. A request being served is not timed
    /// here (its body is, by [`TimedBody`]).
    ///
    /// The watchdog looks again at least every `min(header, idle)`: no deadline is ever set
    /// closer than that to the change that sets it (a response ending, a head beginning), so
    /// it is never missed, though nothing tells the watchdog of the change.
    fn deadline(&self, config: &ServerConfig, now: Instant) -> Result<Instant, Expired> {
        let recheck = now + recheck_period(config);
        let blocked = self.write_blocked_ms.load(Relaxed);
        if blocked != NONE
            && self.origin + Duration::from_millis(blocked) + config.idle_timeout <= now
        {
            return Err(Expired::Stalled);
        }
        if self.in_flight.load(Relaxed) > 0 {
            return Ok(recheck);
        }
        let (since, limit, expired) = match self.head_ms.load(Relaxed) {
            NONE => (
                self.idle_ms.load(Relaxed),
                config.idle_timeout,
                Expired::Idle,
            ),
            head => (head, config.header_timeout, Expired::Header),
        };
        let deadline = self.origin + Duration::from_millis(since) + limit;
        if deadline <= now {
            Err(expired)
        } else {
            Ok(deadline.min(recheck))
        }
    }
}

/// The watchdog's longest sleep.
fn recheck_period(config: &ServerConfig) -> Duration {
    config.header_timeout.min(config.idle_timeout)
}

/// The socket (or its TLS stream), telling the connection's state when bytes arrive.
struct WatchedIo<S> {
    tcp: S,
    state: Arc<ConnState>,
}

impl<S: AsyncRead + Unpin> AsyncRead for WatchedIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.tcp).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.state.bytes_read();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WatchedIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.tcp).poll_write(cx, buf);
        this.state.write_polled(&r);
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.tcp).poll_write_vectored(cx, bufs);
        this.state.write_polled(&r);
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

/// The router behind one connection: times request bodies and marks when responses end.
#[derive(Clone)]
struct ConnService {
    router: Router,
    state: Arc<ConnState>,
    body_timeout: Duration,
}

type ServiceFuture =
    Pin<Box<dyn Future<Output = Result<Response<ResponseBody>, Infallible>> + Send>>;

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = ServiceFuture;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        self.state.request_started();
        // Ends the request when the response body is done, or when this future is dropped.
        let end = RequestEnd(self.state.clone());
        let deadline = Instant::now() + self.body_timeout;
        let req = req.map(|inner| TimedBody {
            inner,
            deadline,
            sleep: None,
            state: self.state.clone(),
        });
        let router = self.router.clone();
        let body_timeout = self.body_timeout;
        Box::pin(async move {
            let resp = match router.oneshot(req).await {
                Ok(r) => r,
                Err(never) => match never {},
            };
            let resp = if end.0.body_timed_out.load(Relaxed) {
                request_timeout(body_timeout)
            } else {
                resp
            };
            Ok(resp.map(|inner| ResponseBody { inner, _end: end }))
        })
    }
}

/// 408 for a body that did not arrive in time; the connection closes after it.
fn request_timeout(limit: Duration) -> axum::response::Response {
    let body = format!(
        r#"{{"error":"body_timeout","message":"the request body did not arrive within {} s"}}"#,
        limit.as_secs()
    );
    let mut resp = Response::new(axum::body::Body::from(body));
    *resp.status_mut() = StatusCode::REQUEST_TIMEOUT;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp.headers_mut()
        .insert(CONNECTION, hyper::header::HeaderValue::from_static("close"));
    resp
}

/// Marks the request ended when dropped.
struct RequestEnd(Arc<ConnState>);

impl Drop for RequestEnd {
    fn drop(&mut self) {
        self.0.request_ended(Instant::now());
    }
}

/// A request body that fails once its deadline passes.
struct TimedBody {
    inner: Incoming,
    deadline: Instant,
    /// Armed only when the body is not all there at once.
    sleep: Option<Pin<Box<Sleep>>>,
    state: Arc<ConnState>,
}

/// The request body did not arrive within `server.body_timeout_secs`.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in time")]
struct BodyTimeout;

impl Body for TimedBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let deadline = this.deadline;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        ready!(sleep.as_mut().poll(cx));
        this.state.body_timed_out.store(true, Relaxed);
        Poll::Ready(Some(Err(BodyTimeout.into())))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that ends its request when hyper is done with it.
struct ResponseBody {
    inner: axum::body::Body,
    _end: RequestEnd,
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ServerConfig {
        ServerConfig {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            ..ServerConfig::default()
        }
    }

    #[test]
    fn heads_are_timed_from_their_first_byte_and_idle_from_the_last_response() {
        let c = config();
        let t0 = Instant::now();
        let s = ConnState::new(t0);
        // First request: the header timeout runs from the accept.
        assert_eq!(s.deadline(&c, t0), Ok(t0 + c.header_timeout));
        assert!(matches!(
            s.deadline(&c, t0 + c.header_timeout),
            Err(Expired::Header)
        ));
        s.request_started();
        let later = t0 + Duration::from_secs(100);
        assert_eq!(s.deadline(&c, later), Ok(later + c.header_timeout));
        let ended = t0 + Duration::from_secs(5);
        s.request_ended(ended);
        // Idle: looked at again every 10 s (the shorter timeout) until 60 s have passed.
        assert_eq!(s.deadline(&c, ended), Ok(ended + c.header_timeout));
        let nearly = ended + c.idle_timeout - Duration::from_secs(1);
        assert_eq!(s.deadline(&c, nearly), Ok(ended + c.idle_timeout));
        assert_eq!(s.deadline(&c, ended + c.idle_timeout), Err(Expired::Idle));
        // Bytes of the next head: the header timeout from then.
        let head = ended + Duration::from_secs(20);
        s.head_began(head);
        assert_eq!(s.deadline(&c, head), Ok(head + c.header_timeout));
        // A client that reads nothing of a streamed response is cut after the idle timeout.
        s.request_started();
        s.write_blocked(head);
        assert!(
            s.deadline(&c, head + c.idle_timeout - Duration::from_secs(1))
                .is_ok()
        );
        assert_eq!(s.deadline(&c, head + c.idle_timeout), Err(Expired::Stalled));
    }
}
