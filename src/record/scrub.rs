//! Secret-looking values in free text (SPEC §9), replaced by [`REDACTED`] when a record is
//! validated, so that no sink (request log, OTLP export, query API, CSV) ever sees them. The
//! fields scanned: `error`, `block_reason`, `user_agent`, and `endpoint` when it has a query.
//!
//! Patterns (ASCII, case-insensitive where marked):
//! - API keys by prefix: `sk-…` (OpenAI, Anthropic `sk-ant-…`) and `AIza…` (Google), at a word
//!   start and followed by at least [`MIN_KEY_TAIL`] key characters (`A-Z a-z 0-9 - _`);
//! - bearer tokens: `Bearer <token>` (any case), the token redacted, the scheme kept;
//! - pairs `name=value` and `name: value` (also quoted, as in JSON) whose name ends in a secret
//!   word — `key`, `apikey`, `token`, `password`, `passwd`, `pwd`, `secret`, `authorization`,
//!   `cookie`, `credential(s)`, `signature`, `sig`, as the last `-`/`_`/`.` part or the camel-case
//!   tail (`apiKey`, `accessToken`): `x-api-key: …`, `api_key=…`, `?key=…`,
//!   `"password":"…"`, `Authorization: Bearer …`. The value (up to a space, `&`, `,`, `;`, a quote
//!   or a closing bracket) is redacted, the name kept.
//!
//! Cheap by construction: one pass over the bytes with a 256-entry table of the bytes a pattern
//! can hinge on (`-`, `=`, `:`, `I`, `r`, `R`); nothing is allocated unless something is found.
//! Pure: no I/O.

/// What a secret is replaced by.
pub const REDACTED: &str = "[REDACTED]";

/// Key characters an `sk-` / `AIza` prefix must be followed by to count as a key.
pub const MIN_KEY_TAIL: usize = 4;

/// The bytes a pattern hinges on: `sk-` (its `-`), `AIza` (its `I`), `bearer` (its last `r`),
/// pairs (`=` and `:`).
const TRIGGER: [bool; 256] = {
    let mut t = [false; 256];
    t[b'-' as usize] = true;
    t[b'=' as usize] = true;
    t[b':' as usize] = true;
    t[b'I' as usize] = true;
    t[b'r' as usize] = true;
    t[b'R' as usize] = true;
    t
};

/// Words whose pairs carry a secret (lower case; the last part of a pair's name).
const SECRET_WORDS: &[&str] = &[
    "key",
    "apikey",
    "token",
    "password",
    "passwd",
    "pwd",
    "secret",
    "authorization",
    "cookie",
    "credential",
    "credentials",
    "signature",
    "sig",
];

/// Camel-case tails of secret names (`apiKey`, `accessToken`, `clientSecret`).
const CAMEL_TAILS: &[&str] = &["Key", "Token", "Secret", "Password"];

fn is_key_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

fn is_name_char(b: u8) -> bool {
    is_key_char(b) || b == b'.'
}

/// Ends a pair's value.
fn is_value_stop(b: u8) -> bool {
    b.is_ascii_whitespace()
        || matches!(
            b,
            b'&' | b',' | b';' | b'"' | b'\'' | b')' | b']' | b'}' | b'<' | b'>'
        )
}

/// A bearer token's characters (RFC 6750 `b64token`).
fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/' | b'=')
}

/// `at` starts a word: the text starts there or the byte before is not a word character.
fn word_start(b: &[u8], at: usize) -> bool {
    at == 0 || !(b[at - 1].is_ascii_alphanumeric() || b[at - 1] == b'_')
}

/// The end of the run of bytes from `from` that satisfy `f`.
fn run(b: &[u8], from: usize, f: impl Fn(u8) -> bool) -> usize {
    let mut i = from;
    while i < b.len() && f(b[i]) {
        i += 1;
    }
    i
}

fn secret_name(name: &[u8]) -> bool {
    // Spaces and control characters around a name do not make it another name: a gateway
    // that forwards raw header names may send `x-api-key ` or `api-key\t`.
    let blank = |c: &u8| *c <= b' ' || *c == 0x7f;
    let start = name.iter().position(|c| !blank(c)).unwrap_or(name.len());
    let end = name
        .iter()
        .rposition(|c| !blank(c))
        .map_or(start, |i| i + 1);
    let name = &name[start..end];
    let last = name
        .rsplit(|&c| matches!(c, b'-' | b'_' | b'.'))
        .next()
        .unwrap_or(name);
    SECRET_WORDS
        .iter()
        .any(|w| last.eq_ignore_ascii_case(w.as_bytes()))
        || CAMEL_TAILS.iter().any(|t| {
            name.len() > t.len()
                && name.ends_with(t.as_bytes())
                && name[name.len() - t.len() - 1].is_ascii_lowercase()
        })
}

/// Whether a field, header or parameter called `name` holds a secret (any case): its last
/// `-`/`_`/`.` part is a secret word (`x-api-key`, `proxy-authorization`, `access_token`,
/// `set-cookie`) or it ends in a camel-case secret tail (`apiKey`, `clientSecret`).
pub fn is_secret_name(name: &str) -> bool {
    secret_name(name.as_bytes())
}

/// A URL (PostgreSQL, Redis, HTTP) without its credentials, for logs and `Debug`: the user part
/// (`user:password@`) becomes `***@`, and the value of a `password=` or key-like query
/// parameter (`key=`, `api_key=`, `access_token=`: [`is_secret_name`]) becomes `***`.
pub fn redact_url(url: &str) -> String {
    let url = match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}***{}", &url[..s + 3], &url[at..]),
        _ => url.to_string(),
    };
    let Some((base, query)) = url.split_once('?') else {
        return url;
    };
    let params: Vec<String> = query
        .split('&')
        .map(|p| match p.split_once('=') {
            Some((name, _)) if name == "password" || is_secret_name(name) => format!("{name}=***"),
            _ => p.to_string(),
        })
        .collect();
    format!("{base}?{}", params.join("&"))
}

/// The secret span a pattern finds at trigger byte `i`, if any.
fn span_at(b: &[u8], i: usize) -> Option<(usize, usize)> {
    match b[i] {
        b'-' if i >= 2 && &b[i - 2..i] == b"sk" && word_start(b, i - 2) => {
            let end = run(b, i + 1, is_key_char);
            (end - (i + 1) >= MIN_KEY_TAIL).then_some((i - 2, end))
        }
        b'I' if i >= 1
            && b[i - 1] == b'A'
            && b[i + 1..].starts_with(b"za")
            && word_start(b, i - 1) =>
        {
            let end = run(b, i + 3, is_key_char);
            (end - (i + 3) >= MIN_KEY_TAIL).then_some((i - 1, end))
        }
        b'r' | b'R'
            if i >= 5 && b[i - 5..=i].eq_ignore_ascii_case(b"bearer") && word_start(b, i - 5) =>
        {
            let start = run(b, i + 1, |c| c == b' ' || c == b'\t');
            let end = run(b, start, is_token_char);
            (start > i + 1 && end > start).then_some((start, end))
        }
        b'=' | b':' => pair_value(b, i),
        _ => None,
    }
}

/// The value of a `name=value` / `name: value` pair at separator `i` whose name is secret.
fn pair_value(b: &[u8], i: usize) -> Option<(usize, usize)> {
    // The name: back over spaces and one closing quote.
    let mut end = i;
    while end > 0 && b[end - 1] == b' ' {
        end -= 1;
    }
    if end > 0 && matches!(b[end - 1], b'"' | b'\'') {
        end -= 1;
    }
    let mut start = end;
    while start > 0 && is_name_char(b[start - 1]) {
        start -= 1;
    }
    if start == end || !secret_name(&b[start..end]) {
        return None;
    }
    // The value: past spaces, one opening quote and an authorization scheme.
    let mut v = run(b, i + 1, |c| c == b' ' || c == b'\t');
    if v < b.len() && matches!(b[v], b'"' | b'\'') {
        v += 1;
    }
    for scheme in [&b"bearer"[..], &b"basic"[..], &b"token"[..]] {
        let after = v + scheme.len();
        if after < b.len() && b[v..after].eq_ignore_ascii_case(scheme) && b[after] == b' ' {
            v = run(b, after, |c| c == b' ');
            break;
        }
    }
    if b[v..].starts_with(REDACTED.as_bytes()) {
        return None; // scrubbed already (a record read back from another gatemeter)
    }
    let end = run(b, v, |c| !is_value_stop(c));
    (end > v).then_some((v, end))
}

/// `text` with every secret-looking value replaced by [`REDACTED`]; `None` when there is none
/// (the common case, which allocates nothing).
pub fn scrub(text: &str) -> Option<String> {
    let b = text.as_bytes();
    let mut spans: Vec<(usize, usize)> = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if TRIGGER[b[i] as usize]
            && let Some((s, e)) = span_at(b, i)
        {
            match spans.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => spans.push((s, e)),
            }
            // Everything up to the span's end is redacted: nothing there needs a second look.
            i = e.max(i + 1);
            continue;
        }
        i += 1;
    }
    if spans.is_empty() {
        return None;
    }
    // Spans start at ASCII bytes and end before ASCII bytes or at the end: char boundaries.
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for (s, e) in spans {
        out.push_str(&text[at..s]);
        out.push_str(REDACTED);
        at = e;
    }
    out.push_str(&text[at..]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(t: &str) -> String {
        scrub(t).unwrap_or_else(|| t.to_string())
    }

    #[test]
    fn keys_by_prefix() {
        assert_eq!(
            s("invalid x-api-key sk-canary-789"),
            "invalid x-api-key [REDACTED]"
        );
        assert_eq!(
            s("key sk-ant-api03-AbC_dEf-123 revoked"),
            "key [REDACTED] revoked"
        );
        assert_eq!(s("(AIzaSyA1234567890abcdef)"), "([REDACTED])");
        // Not at a word start, or too short: prose.
        assert_eq!(
            s("a task-runner and risk-free sk-1"),
            "a task-runner and risk-free sk-1"
        );
        assert_eq!(scrub("AIza"), None);
    }

    #[test]
    fn bearer_tokens() {
        assert_eq!(s("got Bearer abc.def from"), "got Bearer [REDACTED] from");
        assert_eq!(s("BEARER eyJhbGci.eyJzdWIi.SflKx"), "BEARER [REDACTED]");
        assert_eq!(s("bearer\tx+y/z=="), "bearer\t[REDACTED]");
        assert_eq!(scrub("the bearer"), None);
        assert_eq!(scrub("forbearer x"), None);
    }

    #[test]
    fn pairs() {
        assert_eq!(s("x-api-key: abc123"), "x-api-key: [REDACTED]");
        assert_eq!(s("api_key=zzz&user=ann"), "api_key=[REDACTED]&user=ann");
        assert_eq!(
            s("GET /v1beta/models/g:generateContent?key=AIzaSy0000&alt=sse"),
            "GET /v1beta/models/g:generateContent?key=[REDACTED]&alt=sse"
        );
        assert_eq!(
            s(r#"{"password": "hunter2", "user": "ann"}"#),
            r#"{"password": "[REDACTED]", "user": "ann"}"#
        );
        assert_eq!(s("token=t0k; path=/"), "token=[REDACTED]; path=/");
        assert_eq!(
            s("Authorization: Bearer abc.def"),
            "Authorization: Bearer [REDACTED]"
        );
        assert_eq!(
            s("authorization=Basic dXNlcjpwYXNz"),
            "authorization=Basic [REDACTED]"
        );
        assert_eq!(
            s("apiKey=1 accessToken: 2"),
            "apiKey=[REDACTED] accessToken: [REDACTED]"
        );
        assert_eq!(s("client_secret = 's3'"), "client_secret = '[REDACTED]'");
        // Not secret names, or no value.
        for t in [
            "monkey=banana",
            "status: 500",
            "https://x.test/a?b=c",
            "password=",
            "keyboard: qwerty",
        ] {
            assert_eq!(scrub(t), None, "{t}");
        }
    }

    /// Spaces and control characters around a name (raw header names a gateway forwarded)
    /// do not hide it; inside a name they do not make one.
    #[test]
    fn names_with_blanks_around_them_are_still_secret() {
        for name in [
            "x-api-key ",
            " Authorization",
            "api-key\t",
            "x-api-key\0",
            "cookie\r\n",
            "\u{7f}apiKey",
        ] {
            assert!(is_secret_name(name), "{name:?}");
        }
        for name in ["", " ", "\0", "x-api-key-id", "monkey "] {
            assert!(!is_secret_name(name), "{name:?}");
        }
    }

    #[test]
    fn overlapping_patterns_redact_once_and_keep_utf8() {
        assert_eq!(s("x-api-key: sk-canary-789 é"), "x-api-key: [REDACTED] é");
        assert_eq!(
            s("é api_key=sk-aaaa, Bearer sk-bbbbb"),
            "é api_key=[REDACTED], Bearer [REDACTED]"
        );
        assert_eq!(s("ß key=ü"), "ß key=[REDACTED]");
    }

    /// A record read back from another gatemeter is validated again: scrubbing is idempotent.
    #[test]
    fn scrubbed_text_scrubs_to_itself() {
        let once = s("x-api-key: sk-aaaa Bearer t.t api_key=z \"password\":\"p\" AIzaAAAA");
        assert_eq!(s(&once), once);
        assert!(!once.contains("sk-aaaa") && !once.contains("t.t") && !once.contains("AIzaAAAA"));
    }

    #[test]
    fn plain_text_allocates_nothing() {
        for t in [
            "",
            "upstream timeout",
            "Mozilla/5.0 (X11; Linux x86_64) rv:120.0",
            "/v1/messages",
        ] {
            assert_eq!(scrub(t), None, "{t}");
        }
    }
}
