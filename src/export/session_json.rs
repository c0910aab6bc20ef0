//! The session request JSON export (SPEC §6.4): one stored request of a session as
//! `{sessionId, sequence, meta: {model, provider, timestamp}, headers, body, specialSettings}`,
//! from the redacted object the log holds (redacted at validation: nothing here removes secrets,
//! nothing here needs to). Pure: no I/O.

use serde_json::{Map, Value, json};

use crate::store::sql::analytics::StoredSessionRequest;

/// The export's file name: `session-{first 8 characters of the id}-seq-{n}-request.json`, the id
/// reduced to characters safe in a file name.
pub fn file_name(session_id: &str, seq: i64) -> String {
    let short: String = session_id
        .chars()
        .take(8)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("session-{short}-seq-{seq}-request.json")
}

/// The export's JSON; `None` when the request has no stored object.
pub fn encode(session_id: &str, seq: i64, r: &StoredSessionRequest) -> Option<Value> {
    let stored: Value = serde_json::from_str(r.request.as_deref()?).ok()?;
    let mut obj = match stored {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    let headers = obj.remove("headers").unwrap_or_else(|| json!({}));
    let body = obj.remove("body").unwrap_or(Value::Null);
    let special = obj
        .remove("specialSettings")
        .or_else(|| obj.remove("special_settings"))
        .unwrap_or(Value::Null);
    let timestamp =
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(r.ts_ms) * 1_000_000)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            });
    Some(json!({
        "sessionId": session_id,
        "sequence": seq,
        "meta": {
            "model": r.model,
            "provider": r.provider,
            "timestamp": timestamp,
            "timestampMs": r.ts_ms,
            "logId": r.id,
            "truncated": r.truncated,
            "originalBytes": r.original_bytes,
        },
        "headers": headers,
        "body": body,
        "specialSettings": special,
        "request": obj,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_and_file_name() {
        let r = StoredSessionRequest {
            id: 7,
            ts_ms: 1_764_909_296_000,
            provider: "anthropic".into(),
            model: "claude".into(),
            request: Some(
                r#"{"headers":{"a":"b"},"body":{"x":1},"specialSettings":[1],"url":"/v1"}"#.into(),
            ),
            truncated: false,
            original_bytes: 60,
        };
        let v = encode("0123456789abcdef", 2, &r).expect("stored");
        assert_eq!(v["sessionId"], "0123456789abcdef");
        assert_eq!(v["sequence"], 2);
        assert_eq!(v["meta"]["timestamp"], "2025-12-05T04:34:56Z");
        assert_eq!(v["headers"]["a"], "b");
        assert_eq!(v["body"]["x"], 1);
        assert_eq!(v["specialSettings"][0], 1);
        assert_eq!(v["request"]["url"], "/v1");
        assert_eq!(
            file_name("0123456789abcdef", 2),
            "session-01234567-seq-2-request.json"
        );
        assert_eq!(file_name("a/b", 1), "session-a_b-seq-1-request.json");
        assert_eq!(
            encode("s", 1, &StoredSessionRequest { request: None, ..r }),
            None
        );
    }
}
