//! One probe run: resolve, connect, (TLS), send the request and read the answer's head — or
//! only connect for `tcp://` — all within the probe's timeout, into a [`ProbeResult`].
//!
//! A fresh connection per run (a probe measures what a new client meets: DNS, TCP, TLS,
//! first byte), HTTP/1.1 over hyper, rustls from `crate::tls`. The answer's body is not read.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::Request;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::{Method, ProbeConfig, ProbeOutcome, ProbeResult, Target};
use crate::clock::now_ms;
use crate::record::scrub::{REDACTED, scrub};

/// A failed step: its outcome and what to say.
type Failure = (ProbeOutcome, String);

/// Runs `cfg` once. `tls` is the client configuration of an `https` probe.
pub async fn run(cfg: &ProbeConfig, tls: Option<&Arc<rustls::ClientConfig>>) -> ProbeResult {
    let ts_ms = now_ms();
    let started = Instant::now();
    let checked = tokio::time::timeout(cfg.timeout, check(&cfg.target, tls)).await;
    let latency_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let (outcome, status, error) = match checked {
        Ok(Ok(status)) => match &cfg.target {
            Target::Http { expect_status, .. } if !expected(expect_status, status) => (
                ProbeOutcome::Fail,
                status,
                Some(format!(
                    "unexpected status {status} (expected {})",
                    expectation(expect_status)
                )),
            ),
            _ => (ProbeOutcome::Ok, status, None),
        },
        Ok(Err((outcome, message))) => (outcome, 0, Some(message)),
        Err(_) => (
            ProbeOutcome::Timeout,
            0,
            Some(format!("timed out after {} ms", cfg.timeout.as_millis())),
        ),
    };
    ProbeResult {
        ts_ms,
        probe: cfg.name.clone(),
        provider: cfg.provider.clone(),
        outcome,
        status,
        latency_ms,
        error: error.map(|e| redact(&cfg.target, &e)),
    }
}

/// Whether `status` counts as up: one of `expect`, or any 2xx/3xx when `expect` is empty.
fn expected(expect: &[u16], status: u16) -> bool {
    if expect.is_empty() {
        (200..400).contains(&status)
    } else {
        expect.contains(&status)
    }
}

fn expectation(expect: &[u16]) -> String {
    if expect.is_empty() {
        "2xx or 3xx".into()
    } else {
        expect
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The error text with every configured header value cut out, then scrubbed of anything that
/// looks like a secret.
fn redact(target: &Target, text: &str) -> String {
    let mut text = text.to_string();
    if let Target::Http { headers, .. } = target {
        for (_, v) in headers {
            if !v.0.is_empty() {
                text = text.replace(&v.0, REDACTED);
            }
        }
    }
    scrub(&text).unwrap_or(text)
}

/// The HTTP status (0 for TCP), or why the run failed.
async fn check(target: &Target, tls: Option<&Arc<rustls::ClientConfig>>) -> Result<u16, Failure> {
    match target {
        Target::Tcp { host, port } => connect(host, *port).await.map(|_| 0),
        Target::Http {
            url,
            method,
            headers,
            ..
        } => {
            let host = url.host().unwrap_or_default();
            let https = url.scheme_str() == Some("https");
            let port = url.port_u16().unwrap_or(if https { 443 } else { 80 });
            let tcp = connect(host, port).await?;
            let req = request(url, *method, headers)?;
            match tls {
                Some(config) if https => {
                    // `[::1]` as written in a URL is the address `::1`.
                    let name = host
                        .trim_start_matches('[')
                        .trim_end_matches(']')
                        .to_string();
                    let name = ServerName::try_from(name).map_err(|e| {
                        (
                            ProbeOutcome::Tls,
                            format!("{host:?} is not a TLS server name: {e}"),
                        )
                    })?;
                    let stream = tokio_rustls::TlsConnector::from(config.clone())
                        .connect(name, tcp)
                        .await
                        .map_err(|e| {
                            (ProbeOutcome::Tls, format!("TLS handshake: {}", chain(&e)))
                        })?;
                    exchange(stream, req).await
                }
                _ => exchange(tcp, req).await,
            }
        }
    }
}

/// Resolves and connects, telling a name that does not resolve and a refusal from the rest.
async fn connect(host: &str, port: u16) -> Result<TcpStream, Failure> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<_> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| (ProbeOutcome::Dns, format!("cannot resolve {host}: {e}")))?
        .collect();
    let mut last = (ProbeOutcome::Dns, format!("{host} has no address"));
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(s) => return Ok(s),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                last = (
                    ProbeOutcome::Refused,
                    format!("connection refused by {addr}"),
                );
            }
            Err(e) => last = (ProbeOutcome::Error, format!("connect to {addr}: {e}")),
        }
    }
    Err(last)
}

fn request(
    url: &hyper::Uri,
    method: Method,
    headers: &[(String, super::Secret)],
) -> Result<Request<Empty<Bytes>>, Failure> {
    let path = url.path_and_query().map_or("/", |p| p.as_str());
    let mut b = Request::builder()
        .method(match method {
            Method::Get => hyper::Method::GET,
            Method::Head => hyper::Method::HEAD,
        })
        .uri(path)
        .header(
            hyper::header::HOST,
            url.authority().map_or("", |a| a.as_str()),
        )
        .header(
            hyper::header::USER_AGENT,
            concat!("gatemeter-probe/", env!("CARGO_PKG_VERSION")),
        );
    for (name, value) in headers {
        b = b.header(name.as_str(), value.0.as_str());
    }
    b.body(Empty::new())
        .map_err(|e| (ProbeOutcome::Error, format!("request: {e}")))
}

/// Sends `req` on `io` (HTTP/1.1) and returns the answer's status.
async fn exchange<S>(io: S, req: Request<Empty<Bytes>>) -> Result<u16, Failure>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| (ProbeOutcome::Error, format!("HTTP: {}", chain(&e))))?;
    // The connection is driven until the head arrives; dropping it closes the socket.
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let answer = sender.send_request(req).await;
    driver.abort();
    let resp = answer.map_err(|e| (ProbeOutcome::Error, format!("HTTP: {}", chain(&e))))?;
    Ok(resp.status().as_u16())
}

/// An error and its sources, `a: b: c`.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        let t = inner.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_statuses() {
        assert!(expected(&[], 200) && expected(&[], 302) && !expected(&[], 404));
        assert!(expected(&[401], 401) && !expected(&[401], 200));
        assert_eq!(expectation(&[200, 204]), "200, 204");
        assert_eq!(expectation(&[]), "2xx or 3xx");
    }

    #[test]
    fn header_values_and_secret_looking_text_are_redacted() {
        let target = Target::Http {
            url: "http://h/".parse().expect("url"),
            method: Method::Get,
            expect_status: vec![],
            headers: vec![(
                "x-custom".into(),
                super::super::Secret("canary-4242".into()),
            )],
            ca_file: None,
        };
        let t = redact(&target, "echoed canary-4242 and api_key=abcdef123");
        assert!(
            !t.contains("canary-4242") && !t.contains("abcdef123"),
            "{t}"
        );
    }
}
