//! The client side of gatemeter's HTTP API: used by the tools and the tests; nothing in the
//! server imports it.
//!
//! - [`open`], [`connect`], [`exchange`]: one HTTP/1.1 keep-alive connection over hyper's
//!   low-level client (a `TcpStream`, no pool), as loadgen and demo drive it.
//! - [`Target`]: a resolved `http://host:port`.
//! - [`Client`]: one request at a time by URL, on a fresh connection (tests, one-off calls).
//! - [`exposition`]: the Prometheus text exposition parser.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

pub mod exposition;

/// The sending half of one HTTP/1.1 client connection.
pub type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// hyper's driver of one client connection (it does the actual reads and writes); whoever opens
/// a connection must poll it.
pub type Driver = hyper::client::conn::http1::Connection<TokioIo<TcpStream>, Full<Bytes>>;

/// Why a request could not be made or answered.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The target or URL is not `http://host:port[/path]`.
    #[error("target {target:?} is not usable: {reason}")]
    InvalidTarget {
        /// The target as given.
        target: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A header name or value is not valid HTTP.
    #[error("invalid header {name:?}")]
    InvalidHeader {
        /// The header's name.
        name: String,
    },
    /// A TCP connection could not be made.
    #[error("cannot connect to {addr}")]
    Connect {
        /// The address tried.
        addr: SocketAddr,
        /// The socket error.
        source: std::io::Error,
    },
    /// The HTTP exchange failed below the status line.
    #[error("HTTP exchange with {addr} failed")]
    Http {
        /// The server's address.
        addr: SocketAddr,
        /// hyper's error.
        source: hyper::Error,
    },
}

/// Opens one HTTP/1.1 keep-alive connection; the caller must poll the driver.
pub async fn open(addr: SocketAddr) -> Result<(Sender, Driver), ClientError> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|source| ClientError::Connect { addr, source })?;
    stream
        .set_nodelay(true)
        .map_err(|source| ClientError::Connect { addr, source })?;
    hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|source| ClientError::Http { addr, source })
}

/// Opens one HTTP/1.1 keep-alive connection; its driver runs in its own task.
pub async fn connect(addr: SocketAddr) -> Result<Sender, ClientError> {
    let (sender, driver) = open(addr).await?;
    tokio::spawn(async move {
        if let Err(e) = driver.await {
            tracing::debug!(error = %e, "Client connection ended with an error.");
        }
    });
    Ok(sender)
}

/// A `POST /v1/events` request.
pub fn events_request(
    host: &HeaderValue,
    content_type: &'static str,
    body: Bytes,
) -> Request<Full<Bytes>> {
    post_request(host, "/v1/events", content_type, body)
}

/// A `POST` of `body` to `path` (`/v1/events`, `/v1/logs`, `/v1/metrics`, ...).
pub fn post_request(
    host: &HeaderValue,
    path: &'static str,
    content_type: &'static str,
    body: Bytes,
) -> Request<Full<Bytes>> {
    let mut req = Request::new(Full::new(body));
    *req.method_mut() = Method::POST;
    *req.uri_mut() = Uri::from_static(path);
    let h = req.headers_mut();
    h.insert(header::HOST, host.clone());
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    req
}

/// Sends a request and reads the whole answer.
pub async fn exchange(
    sender: &mut Sender,
    req: Request<Full<Bytes>>,
) -> Result<(StatusCode, Bytes), hyper::Error> {
    sender.ready().await?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    // Answers are small and usually one frame: keep that frame rather than collecting a list.
    let mut body = resp.into_body();
    let mut first = Bytes::new();
    let mut joined: Option<Vec<u8>> = None;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        match &mut joined {
            Some(v) => v.extend_from_slice(&data),
            None if first.is_empty() => first = data,
            None => {
                let mut v = first.to_vec();
                v.extend_from_slice(&data);
                joined = Some(v);
            }
        }
    }
    Ok((status, joined.map_or(first, Bytes::from)))
}

/// The unsigned integer after `key` (a quoted JSON key) and a colon in an answer, e.g.
/// `"accepted": 12`, without parsing the whole JSON.
pub fn scan_u64(body: &[u8], key: &[u8]) -> Option<u64> {
    let at = body.windows(key.len()).position(|w| w == key)? + key.len();
    let rest = &body[at..];
    let rest = &rest[rest.iter().position(|b| !b.is_ascii_whitespace())?..];
    let rest = rest.strip_prefix(b":")?;
    let start = rest.iter().position(|b| !b.is_ascii_whitespace())?;
    let digits = rest[start..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    if digits == 0 {
        return None;
    }
    std::str::from_utf8(&rest[start..start + digits])
        .ok()?
        .parse()
        .ok()
}

/// A parsed and resolved `http://host:port` target.
#[derive(Debug, Clone)]
pub struct Target {
    /// As given, without a trailing slash (for messages).
    pub base: String,
    /// The first address the host resolved to.
    pub addr: SocketAddr,
    /// The `Host` header: `host:port`.
    pub host: HeaderValue,
}

impl Target {
    /// Parses `http://host:port[/]` (port 80 when absent) and resolves the host.
    pub async fn resolve(target: &str) -> Result<Self, ClientError> {
        let bad = |reason: &str| ClientError::InvalidTarget {
            target: target.to_string(),
            reason: reason.to_string(),
        };
        let authority = parse_authority(target).map_err(|r| bad(&r))?;
        let addr = tokio::net::lookup_host(authority.as_str())
            .await
            .map_err(|e| bad(&format!("cannot resolve {authority}: {e}")))?
            .next()
            .ok_or_else(|| bad(&format!("{authority} resolves to no address")))?;
        let host = HeaderValue::from_str(&authority)
            .map_err(|_| bad("the host is not a valid header value"))?;
        Ok(Self {
            base: target.trim_end_matches('/').to_string(),
            addr,
            host,
        })
    }
}

/// `host:port` from `http://host:port[/]` (port 80 when absent).
fn parse_authority(target: &str) -> Result<String, String> {
    let rest = match target.trim().split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
        Some((scheme, _)) => {
            return Err(format!(
                "scheme {scheme:?} is not supported; use http://host:port"
            ));
        }
        None => return Err("expected http://host:port".to_string()),
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.is_empty() {
        return Err("the host is missing".to_string());
    }
    if authority.contains(['/', '?', '#', '@']) {
        return Err("give only http://host:port, without a path, query or credentials".to_string());
    }
    let has_port = match authority.rfind(']') {
        Some(close) => authority[close + 1..].starts_with(':'),
        None => authority.contains(':'),
    };
    if has_port {
        let port = &authority[authority.rfind(':').map_or(0, |i| i + 1)..];
        if port.parse::<u16>().is_err() {
            return Err(format!("port {port:?} is not a number 0-65535"));
        }
        Ok(authority.to_string())
    } else {
        Ok(format!("{authority}:80"))
    }
}

/// Makes requests by URL (`http://host:port/path?query`), each on a fresh connection.
#[derive(Debug, Clone, Default)]
pub struct Client;

impl Client {
    /// A client.
    pub fn new() -> Self {
        Self
    }

    /// A `GET` of `url`.
    pub fn get(&self, url: impl AsRef<str>) -> RequestBuilder {
        RequestBuilder::new(Method::GET, url.as_ref())
    }

    /// A `POST` to `url`.
    pub fn post(&self, url: impl AsRef<str>) -> RequestBuilder {
        RequestBuilder::new(Method::POST, url.as_ref())
    }
}

/// A request being put together; [`RequestBuilder::send`] sends it.
#[derive(Debug)]
pub struct RequestBuilder {
    method: Method,
    url: String,
    headers: HeaderMap,
    body: Bytes,
    invalid_header: Option<String>,
}

impl RequestBuilder {
    fn new(method: Method, url: &str) -> Self {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        Self {
            method,
            url: url.to_string(),
            headers,
            body: Bytes::new(),
            invalid_header: None,
        }
    }

    /// Sets a header (replacing one of the same name).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        match (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            (Ok(n), Ok(v)) => {
                self.headers.insert(n, v);
            }
            _ => self.invalid_header = Some(name.to_string()),
        }
        self
    }

    /// Sets `Authorization: Bearer {token}`.
    pub fn bearer_auth(self, token: &str) -> Self {
        self.header("authorization", &format!("Bearer {token}"))
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    /// Connects, sends the request and reads the answer's head; the body is read by
    /// [`Response::bytes`] or [`Response::text`].
    pub async fn send(self) -> Result<Response, ClientError> {
        if let Some(name) = self.invalid_header {
            return Err(ClientError::InvalidHeader { name });
        }
        let bad = |reason: &str| ClientError::InvalidTarget {
            target: self.url.clone(),
            reason: reason.to_string(),
        };
        let after_scheme = self.url.find("://").map_or(0, |i| i + 3);
        let path_at = self.url[after_scheme..]
            .find('/')
            .map_or(self.url.len(), |i| after_scheme + i);
        let target = Target::resolve(&self.url[..path_at]).await?;
        let path = match &self.url[path_at..] {
            "" => "/".to_string(),
            p => percent_encode_for_uri(p),
        };
        let uri: Uri = path.parse().map_err(|_| bad("the path is not valid"))?;
        let mut req = Request::new(Full::new(self.body));
        *req.method_mut() = self.method;
        *req.uri_mut() = uri;
        *req.headers_mut() = self.headers;
        req.headers_mut().insert(header::HOST, target.host.clone());
        let addr = target.addr;
        let mut sender = connect(addr).await?;
        let http = |source| ClientError::Http { addr, source };
        sender.ready().await.map_err(http)?;
        let resp = sender.send_request(req).await.map_err(http)?;
        Ok(Response { addr, inner: resp })
    }
}

/// `%XX` for the bytes a URL may not hold as they are (spaces, quotes, non-ASCII, ...), as a
/// browser sends them; everything else is kept.
fn percent_encode_for_uri(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for b in path.bytes() {
        if b <= b' ' || b >= 0x7f || b"\"<>\\^`{|}".contains(&b) {
            out.push_str(&format!("%{b:02X}"));
        } else {
            out.push(char::from(b));
        }
    }
    out
}

/// An answer whose body is still to be read.
#[derive(Debug)]
pub struct Response {
    addr: SocketAddr,
    inner: hyper::Response<Incoming>,
}

impl Response {
    /// The status.
    pub fn status(&self) -> StatusCode {
        self.inner.status()
    }

    /// The headers.
    pub fn headers(&self) -> &HeaderMap {
        self.inner.headers()
    }

    /// Reads the whole body.
    pub async fn bytes(self) -> Result<Bytes, ClientError> {
        let addr = self.addr;
        let body = self.inner.into_body().collect().await;
        body.map(|b| b.to_bytes())
            .map_err(|source| ClientError::Http { addr, source })
    }

    /// Reads the whole body as text (invalid UTF-8 replaced).
    pub async fn text(self) -> Result<String, ClientError> {
        let bytes = self.bytes().await?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_authority() {
        assert_eq!(
            parse_authority("http://127.0.0.1:4318").ok().as_deref(),
            Some("127.0.0.1:4318")
        );
        assert_eq!(
            parse_authority("http://localhost:4318/").ok().as_deref(),
            Some("localhost:4318")
        );
        assert_eq!(
            parse_authority("http://[::1]:9000").ok().as_deref(),
            Some("[::1]:9000")
        );
        assert_eq!(
            parse_authority("http://example.com").ok().as_deref(),
            Some("example.com:80")
        );
        for bad in [
            "https://x:1",
            "127.0.0.1:4318",
            "http://x:1/v1/events",
            "http://",
            "http://x:port",
        ] {
            assert!(parse_authority(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn accepted_count_is_scanned() {
        assert_eq!(
            scan_u64(
                br#"{"accepted":100,"rejected":0,"errors":[]}"#,
                b"\"accepted\""
            ),
            Some(100)
        );
        assert_eq!(scan_u64(br#"{"accepted" : 7}"#, b"\"accepted\""), Some(7));
        assert_eq!(scan_u64(br#"{"rejected":0}"#, b"\"accepted\""), None);
    }

    #[test]
    fn bytes_not_allowed_in_a_uri_are_encoded() {
        assert_eq!(
            percent_encode_for_uri("/api/v1/logs?user=a b&x=\"ü\""),
            "/api/v1/logs?user=a%20b&x=%22%C3%BC%22"
        );
        assert_eq!(percent_encode_for_uri("/metrics"), "/metrics");
    }
}
