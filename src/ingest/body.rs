//! Reading request bodies safely: size limit on the wire and again after decompression
//! (gzip, zstd), so neither a large body nor a compression bomb can exhaust memory.

use std::io::Read;

use axum::body::Body;
use axum::http::{HeaderMap, header};
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};

use crate::api::ApiError;
use crate::health::RequestReject;

/// A body problem and the rejection reason it is counted under.
#[derive(Debug)]
pub struct BodyError {
    /// Counter reason.
    pub reason: RequestReject,
    /// What to answer.
    pub error: ApiError,
}

fn too_large(limit: usize, what: &str) -> BodyError {
    BodyError {
        reason: RequestReject::BodyTooLarge,
        error: ApiError::TooLarge {
            code: "body_too_large",
            message: format!("the {what} exceeds the limit of {limit} bytes"),
        },
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Identity,
    Gzip,
    Zstd,
}

fn encoding(headers: &HeaderMap) -> Result<Encoding, BodyError> {
    let Some(v) = headers.get(header::CONTENT_ENCODING) else {
        return Ok(Encoding::Identity);
    };
    let v = v.to_str().unwrap_or("").trim().to_ascii_lowercase();
    match v.as_str() {
        "" | "identity" => Ok(Encoding::Identity),
        "gzip" | "x-gzip" => Ok(Encoding::Gzip),
        "zstd" => Ok(Encoding::Zstd),
        other => Err(BodyError {
            reason: RequestReject::UnsupportedEncoding,
            error: ApiError::UnsupportedMediaType {
                code: "unsupported_encoding",
                message: format!(
                    "Content-Encoding {other:?} is not supported; use gzip, zstd or none"
                ),
            },
        }),
    }
}

/// Reads the whole body, at most `limit` bytes on the wire and `limit` bytes decompressed.
pub async fn read(body: Body, headers: &HeaderMap, limit: usize) -> Result<Bytes, BodyError> {
    let enc = encoding(headers)?;
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        && len > limit as u64
    {
        return Err(too_large(limit, "body"));
    }
    let raw = match Limited::new(body, limit).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(too_large(limit, "body"));
        }
        Err(e) => {
            return Err(BodyError {
                reason: RequestReject::BodyRead,
                error: ApiError::BadRequest {
                    code: "body_read",
                    message: format!("the body could not be read: {e}"),
                },
            });
        }
    };
    match enc {
        Encoding::Identity => Ok(raw),
        Encoding::Gzip => inflate(flate2::read::MultiGzDecoder::new(&raw[..]), limit, "gzip"),
        Encoding::Zstd => {
            let mut d = zstd::stream::read::Decoder::new(&raw[..])
                .map_err(|e| bad_compression("zstd", &e))?;
            // Refuse frames that ask for a window larger than the body limit could need.
            let window_log = (usize::BITS - limit.leading_zeros()).clamp(10, 27);
            d.window_log_max(window_log)
                .map_err(|e| bad_compression("zstd", &e))?;
            inflate(d, limit, "zstd")
        }
    }
}

fn bad_compression(what: &str, e: &dyn std::fmt::Display) -> BodyError {
    BodyError {
        reason: RequestReject::BadCompression,
        error: ApiError::BadRequest {
            code: "bad_compression",
            message: format!("the {what} body could not be decompressed: {e}"),
        },
    }
}

fn inflate(reader: impl Read, limit: usize, what: &str) -> Result<Bytes, BodyError> {
    let mut out = Vec::new();
    reader
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| bad_compression(what, &e))?;
    if out.len() > limit {
        return Err(too_large(limit, "decompressed body"));
    }
    Ok(Bytes::from(out))
}
