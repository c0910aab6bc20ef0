//! The record's `request` object (SPEC §2, §9): headers and body of the gateway request, kept
//! only when `log_store.store_requests` is on, and then with every secret removed **here, at
//! validation**, so the spool, the pipeline, the writers and every export only ever see the
//! redacted form.
//!
//! What is removed (replaced by [`REDACTED`]):
//! - the value of every object member whose name is secret, at any depth and in any case: the
//!   headers of SPEC §9 (`authorization`, `proxy-authorization`, `x-api-key`, `api-key`,
//!   `x-goog-api-key`, `cookie`, `set-cookie`) and fields named like `api_key`, `apiKey`, `token`,
//!   `access_token`, `secret`, `client_secret`, `password`, `credentials`, `signature` (the
//!   scrubber's name rule, [`scrub::is_secret_name`]);
//! - headers given as `[name, value]` pairs or `{"name": …, "value": …}` objects with such a name;
//! - in every string left (URLs, free text, message content): what [`scrub::scrub`] finds —
//!   `?key=…` / `api_key=…` / `access_token=…` pairs, `Bearer …` tokens, `sk-…` / `AIza…` keys.
//!
//! Then the redacted object is serialised and cut to the configured size: a request that does
//! not fit keeps its headers and settings whole and its body as the longest prefix of the body's
//! JSON text that fits (a JSON string), flagged `truncated`. Pure: no I/O.

use serde_json::{Map, Value};

use super::scrub::{self, REDACTED};

/// A request object as stored: redacted JSON text, at most the configured size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRequest {
    /// The redacted object (`headers`, `body`, `specialSettings`, anything else sent), as JSON.
    pub json: String,
    /// Whether the body was cut to fit the size cap.
    pub truncated: bool,
    /// Size of the redacted object's JSON before any cut, in bytes.
    pub original_bytes: u64,
}

/// Redacts `request` and cuts it to `max_bytes` of JSON; `None` when it is not an object.
pub fn keep(mut request: Value, max_bytes: usize) -> Option<StoredRequest> {
    if !request.is_object() {
        return None;
    }
    redact(&mut request);
    let json = request.to_string();
    let original_bytes = json.len() as u64;
    if json.len() <= max_bytes {
        return Some(StoredRequest {
            json,
            truncated: false,
            original_bytes,
        });
    }
    let Value::Object(mut map) = request else {
        return None;
    };
    let body = map.remove("body").map(|b| match b {
        Value::String(s) => s,
        other => other.to_string(),
    });
    map.insert("body".into(), Value::String(String::new()));
    let mut head = Value::Object(map.clone()).to_string();
    if head.len() > max_bytes {
        // Not even the headers fit: only the cut body is kept.
        map = Map::new();
        map.insert("body".into(), Value::String(String::new()));
        head = Value::Object(map.clone()).to_string();
    }
    let room = max_bytes.saturating_sub(head.len());
    let body = body.unwrap_or_default();
    // The prefix is escaped when serialised (quotes, control characters): shrink until it fits.
    let mut end = room.min(body.len());
    loop {
        while !body.is_char_boundary(end) {
            end -= 1;
        }
        let cut = Value::String(body[..end].to_string());
        let len = cut.to_string().len() - 2;
        if len <= room || end == 0 {
            map.insert("body".into(), cut);
            break;
        }
        end = end.saturating_sub((len - room).max(1));
    }
    Some(StoredRequest {
        json: Value::Object(map).to_string(),
        truncated: true,
        original_bytes,
    })
}

/// Removes every secret from `v` in place (see the module's list).
pub fn redact(v: &mut Value) {
    match v {
        Value::Object(map) => {
            // `{"name": "Authorization", "value": "…"}`: a header as an object.
            let named_secret = map
                .get("name")
                .and_then(Value::as_str)
                .is_some_and(scrub::is_secret_name);
            for (k, val) in map.iter_mut() {
                if scrub::is_secret_name(k) || (named_secret && k == "value") {
                    if !val.is_null() {
                        *val = Value::String(REDACTED.into());
                    }
                } else {
                    redact(val);
                }
            }
        }
        Value::Array(items) => {
            // `["x-api-key", "…"]`: a header as a pair.
            if let [Value::String(name), value] = items.as_mut_slice()
                && scrub::is_secret_name(name)
            {
                *value = Value::String(REDACTED.into());
                return;
            }
            for item in items {
                redact(item);
            }
        }
        Value::String(s) => {
            if let Some(clean) = scrub::scrub(s) {
                *s = clean;
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const CANARY: &str = "canary-7f3e9a";

    #[test]
    fn secrets_are_removed_at_any_depth_in_any_case() {
        let req = json!({
            "url": format!("https://api.test/v1/models/g:generateContent?key={CANARY}&alt=sse"),
            "headers": {
                "Authorization": format!("Bearer {CANARY}"),
                "X-Api-Key": CANARY,
                "api-key": CANARY,
                "Cookie": format!("session={CANARY}"),
                "Proxy-Authorization": CANARY,
                "X-Goog-Api-Key": CANARY,
                "content-type": "application/json",
            },
            "body": {
                "model": "m",
                "api_key": CANARY,
                "nested": [{"apiKey": CANARY, "Token": CANARY, "deep": {"client_secret": CANARY,
                    "PASSWORD": CANARY, "access_token": CANARY}}],
                "messages": [{"role": "user", "content": format!("use sk-{CANARY} and Bearer {CANARY}")}],
            },
            "header_pairs": [["authorization", CANARY], ["accept", "*/*"]],
            "header_objects": [{"name": "x-api-key", "value": CANARY}],
        });
        let kept = keep(req, 1 << 20).expect("object");
        assert!(!kept.json.contains(CANARY), "{}", kept.json);
        let v: Value = serde_json::from_str(&kept.json).expect("valid JSON");
        assert_eq!(v["headers"]["content-type"], "application/json");
        assert_eq!(v["headers"]["Authorization"], REDACTED);
        assert_eq!(v["body"]["model"], "m");
        assert_eq!(v["header_pairs"][1][1], "*/*");
        assert!(v["url"].as_str().expect("url").contains("alt=sse"));
        assert!(!kept.truncated);
    }

    #[test]
    fn a_large_request_keeps_its_headers_and_a_cut_body() {
        let body = "é\"x".repeat(10_000);
        let req = json!({"headers": {"accept": "a"}, "body": {"text": body}});
        let kept = keep(req, 1000).expect("object");
        assert!(kept.truncated);
        assert!(kept.json.len() <= 1000, "{}", kept.json.len());
        assert!(kept.original_bytes > 30_000);
        let v: Value = serde_json::from_str(&kept.json).expect("valid JSON");
        assert_eq!(v["headers"]["accept"], "a");
        assert!(
            v["body"]
                .as_str()
                .expect("text")
                .starts_with("{\"text\":\"é")
        );
        assert_eq!(keep(json!("not an object"), 10), None);
    }
}
