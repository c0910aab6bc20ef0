//! Fast path for the common shape of a record: a flat JSON object of plain strings, integers,
//! decimals, booleans and nulls (plus `provider_chain`, an array of strings).
//!
//! The scanner either produces exactly the [`RawRecord`] serde would, or gives up (`None`) and
//! the caller parses the same bytes with serde — which also produces every error message. It
//! gives up on anything unusual: escape sequences, control characters, numbers that are not
//! plain integers where integers are expected, nested values under unknown keys, a wrong type.
//! Which fields exist and of what type comes from the one list in `raw_record!` (through
//! [`Scan`]), so a field added there is read by both paths. `tests::agrees_with_serde` checks the
//! two paths against each other.

use compact_str::CompactString;

use super::{Field, RawAmount, RawCost, RawRecord, RawTime};

/// Bytes the scanner will not take inside a string: the closing quote, a backslash (escapes go
/// to serde), C0 controls and DEL. Because of this table, every string of a scanned record is
/// free of control characters, which validation relies on (`Source::Scanner`).
static STOP: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 0x20 {
        t[c] = true;
        c += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t[0x7f] = true;
    t
};

/// Index of the first [`STOP`] byte, eight bytes at a time (SWAR): a byte is flagged when it is
/// below 0x20 or equal to `"`, `\\` or DEL. The borrow of the subtraction can only flag bytes
/// *after* a true hit, so the lowest flagged byte is exact.
fn stop_position(b: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let mut chunks = b.chunks_exact(8);
    let mut at = 0;
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_le_bytes(word);
        let hits = (x.wrapping_sub(ONES * 0x20) & !x & HIGH)
            | zero(x ^ (ONES * u64::from(b'"')))
            | zero(x ^ (ONES * u64::from(b'\\')))
            | zero(x ^ (ONES * 0x7f));
        if hits != 0 {
            return Some(at + (hits.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&c| STOP[usize::from(c)])
        .map(|p| at + p)
}

/// A key as last seen, with the field it names (`None`: an unknown key).
type Seen<'a> = Option<(&'a str, Option<Field>)>;

/// A cursor over the input.
pub(super) struct Scanner<'a> {
    b: &'a [u8],
    s: &'a str,
    i: usize,
    /// For each key, the key that followed it last time (slot 0: the first key of a record;
    /// slot `f + 1`: after field `f`; the last slot: after an unknown key). A gateway writes
    /// its records with one serializer, so the next key is almost always the one that followed
    /// the same key before — also when optional fields come and go — and is then matched with
    /// one comparison instead of a scan and a lookup.
    next: Vec<Seen<'a>>,
}

/// `a == b` for slices of equal length, without a `memcmp` call for the short lengths of
/// keys: two overlapping word loads cover 4 to 16 bytes.
#[inline]
fn same(a: &[u8], b: &[u8]) -> bool {
    debug_assert_eq!(a.len(), b.len());
    let n = a.len();
    let word = |s: &[u8], at: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&s[at..at + 8]);
        u64::from_le_bytes(w)
    };
    let half = |s: &[u8], at: usize| {
        let mut w = [0u8; 4];
        w.copy_from_slice(&s[at..at + 4]);
        u32::from_le_bytes(w)
    };
    match n {
        8..=16 => word(a, 0) == word(b, 0) && word(a, n - 8) == word(b, n - 8),
        4..=7 => half(a, 0) == half(b, 0) && half(a, n - 4) == half(b, n - 4),
        _ => a == b,
    }
}

/// The [`Scanner::next`] slot of the key after `prev`.
fn slot(prev: Option<Option<Field>>) -> usize {
    match prev {
        None => 0,
        Some(Some(f)) => f as usize + 1,
        Some(None) => Field::COUNT + 1,
    }
}

impl<'a> Scanner<'a> {
    fn ws(&mut self) {
        while let Some(c) = self.b.get(self.i) {
            if !matches!(c, b' ' | b'\n' | b'\r' | b'\t') {
                break;
            }
            self.i += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        if self.peek() == Some(c) {
            self.i += 1;
            Some(())
        } else {
            None
        }
    }

    fn literal(&mut self, lit: &[u8]) -> Option<()> {
        if self.b.get(self.i..self.i + lit.len()) == Some(lit) {
            self.i += lit.len();
            Some(())
        } else {
            None
        }
    }

    /// A string without escapes or control characters; the slice between the quotes.
    fn string(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let start = self.i;
        let rest = self.b.get(start..)?;
        let len = stop_position(rest)?;
        if rest[len] != b'"' {
            return None;
        }
        self.i = start + len + 1;
        // Quotes are ASCII, so both ends are char boundaries of the (valid UTF-8) input.
        self.s.get(start..start + len)
    }

    /// The key after `prev` (`None` at the start of a record), and the field it names.
    fn key(&mut self, prev: Option<Option<Field>>) -> Option<Option<Field>> {
        let slot = slot(prev);
        if let Some(Some((key, field))) = self.next.get(slot).copied() {
            let at = self.i;
            let end = at + 1 + key.len();
            if self.b.get(at) == Some(&b'"')
                && self.b.get(end) == Some(&b'"')
                && same(&self.b[at + 1..end], key.as_bytes())
            {
                self.i = end + 1;
                return Some(field);
            }
        }
        let key = self.string()?;
        let field = Field::of(key);
        if let Some(seen) = self.next.get_mut(slot) {
            *seen = Some((key, field));
        }
        Some(field)
    }

    /// The raw text of a JSON number, checked against the JSON grammar.
    fn number(&mut self) -> Option<&'a str> {
        let start = self.i;
        self.eat(b'-');
        match self.peek()? {
            b'0' => self.i += 1,
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.eat(b'.').is_some() {
            let d = self.i;
            self.digits();
            if self.i == d {
                return None;
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            let d = self.i;
            self.digits();
            if self.i == d {
                return None;
            }
        }
        self.s.get(start..self.i)
    }

    fn digits(&mut self) {
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.i += 1;
        }
    }

    fn null(&mut self) -> bool {
        self.literal(b"null").is_some()
    }

    fn opt_string(&mut self) -> Option<Option<CompactString>> {
        if self.null() {
            return Some(None);
        }
        Some(Some(CompactString::from(self.string()?)))
    }

    /// A non-negative integer written without sign, fraction, exponent or leading zero, read in
    /// one pass; `None` (position unspecified) for anything else or beyond 64 bits.
    fn uint(&mut self) -> Option<u64> {
        let start = self.i;
        let mut v: u64 = 0;
        while let Some(&c) = self.b.get(self.i) {
            if !c.is_ascii_digit() {
                break;
            }
            v = v.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
            self.i += 1;
        }
        let digits = self.i - start;
        if digits == 0
            || (digits > 1 && self.b[start] == b'0')
            || matches!(self.peek(), Some(b'.' | b'e' | b'E'))
        {
            return None;
        }
        Some(v)
    }

    /// A non-negative integer (see [`Self::uint`]) within `max`.
    fn opt_uint(&mut self, max: u64) -> Option<Option<u64>> {
        if self.null() {
            return Some(None);
        }
        let v = self.uint()?;
        (v <= max).then_some(Some(v))
    }

    fn opt_bool(&mut self) -> Option<Option<bool>> {
        if self.null() {
            Some(None)
        } else if self.literal(b"true").is_some() {
            Some(Some(true))
        } else if self.literal(b"false").is_some() {
            Some(Some(false))
        } else {
            None
        }
    }

    /// A non-negative number as serde_json hands it to a visitor: integers through `u64`,
    /// others through `f64`. Negative numbers (always invalid here) and integers beyond 64
    /// bits are left to serde.
    fn plain_number(&mut self) -> Option<f64> {
        let start = self.i;
        if let Some(v) = self.uint() {
            return Some(v as f64);
        }
        self.i = start;
        let n = self.number()?;
        if n.starts_with('-') || n.bytes().all(|c| c.is_ascii_digit()) {
            // Negative, a leading zero, or an integer beyond 64 bits.
            return None;
        }
        // Beyond f64's range serde refuses the number (fuzz finding): leave it to serde.
        n.parse().ok().filter(|v: &f64| v.is_finite())
    }

    fn opt_time(&mut self) -> Option<Option<RawTime>> {
        match self.peek()? {
            b'n' => self.null().then_some(None),
            b'"' => Some(Some(RawTime::Text(CompactString::from(self.string()?)))),
            _ => Some(Some(RawTime::Millis(self.plain_number()?))),
        }
    }

    fn opt_cost(&mut self) -> Option<Option<RawCost>> {
        match self.peek()? {
            b'n' => self.null().then_some(None),
            b'"' => Some(Some(RawCost::Usd(self.string()?.trim().parse().ok()?))),
            _ => Some(Some(RawCost::Usd(self.plain_number()?))),
        }
    }

    fn opt_strings(&mut self) -> Option<Option<Vec<CompactString>>> {
        if self.null() {
            return Some(None);
        }
        self.eat(b'[')?;
        let mut out = Vec::new();
        self.ws();
        if self.eat(b']').is_some() {
            return Some(Some(out));
        }
        loop {
            self.ws();
            out.push(CompactString::from(self.string()?));
            self.ws();
            if self.eat(b',').is_none() {
                self.eat(b']')?;
                return Some(Some(out));
            }
        }
    }

    /// Skips a scalar value of an unknown field; nested values are left to serde, and so is a
    /// number beyond f64's range, which serde refuses (`1e400`: found by `fuzz/record_fast_path`).
    fn skip_scalar(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(drop),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => self
                .number()
                .filter(|n| n.parse::<f64>().is_ok_and(f64::is_finite))
                .map(drop),
        }
    }

    fn record(&mut self) -> Option<RawRecord> {
        let mut r = RawRecord::default();
        self.ws();
        self.eat(b'{')?;
        self.ws();
        if self.eat(b'}').is_some() {
            return Some(r);
        }
        let mut prev = None;
        loop {
            self.ws();
            let field = self.key(prev)?;
            prev = Some(field);
            self.ws();
            self.eat(b':')?;
            self.ws();
            match field {
                Some(f) => r.scan_field(f, self)?,
                None => self.skip_scalar()?,
            }
            self.ws();
            if self.eat(b',').is_none() {
                self.eat(b'}')?;
                return Some(r);
            }
        }
    }
}

/// A field type the scanner can read: `Some(None)` for `null`, `None` to give up.
pub(super) trait Scan: Sized {
    fn scan(s: &mut Scanner<'_>) -> Option<Option<Self>>;
}

impl Scan for CompactString {
    #[inline]
    fn scan(s: &mut Scanner<'_>) -> Option<Option<Self>> {
        s.opt_string()
    }
}

impl Scan for u64 {
    #[inline]
    fn scan(s: &mut Scanner<'_>) -> Option<Option<Self>> {
        s.opt_uint(u64::MAX)
    }
}

impl Scan for f64 {
    #[inline]
    fn scan(s: &mut Scanner<'_>) -> Option<Option<Self>> {
        if s.null() {
            return Some(None);
        }
        Some(Some(s.plain_number()?))
    }
}

impl Scan for u32 {
    #[inline]
    fn scan(s: &mut Scanner<'_>) -> Option<Option<Self>> {
        Some(s.opt_uint(u64::from(u32::MAX))?.map(|v| v as u32))
    }
}

impl Scan for u16 {
    #[inline]
    fn scan(s: &mut Scanner<'_>) -> Option<Option<Self>> {
        Some(s.opt_uint(u64::from(u16::MAX))?.map(|v| v as u16))
    }
}

impl Scan for bool {
    #[inline]
    fn scan(s: &mut Scanner<'_>) -> Option<Option<Self>> {
        s.opt_bool()
    }
}

impl Scan for RawTime {
    #[inline]
    fn scan(s: &mut Scanner<'_>) -> Option<Option<Self>> {
        s.opt_time()
    }
}

impl Scan for RawCost {
    #[inline]
    fn scan(s: &mut Scanner<'_>) -> Option<Option<Self>> {
        s.opt_cost()
    }
}

impl Scan for RawAmount {
    #[inline]
    fn scan(s: &mut Scanner<'_>) -> Option<Option<Self>> {
        match s.peek()? {
            b'n' => s.null().then_some(None),
            b'"' => Some(Some(RawAmount(CompactString::from(s.string()?.trim())))),
            _ => {
                // As serde hands it over: integers through u64, others through f64.
                let start = s.i;
                if let Some(v) = s.uint() {
                    return Some(Some(RawAmount(compact_str::format_compact!("{v}"))));
                }
                s.i = start;
                let v = s.plain_number()?;
                Some(Some(RawAmount(compact_str::format_compact!("{v}"))))
            }
        }
    }
}

impl Scan for Vec<CompactString> {
    #[inline]
    fn scan(s: &mut Scanner<'_>) -> Option<Option<Self>> {
        s.opt_strings()
    }
}

/// The `request` object: only `null` is read here; an object goes to serde.
impl Scan for serde_json::Value {
    #[inline]
    fn scan(s: &mut Scanner<'_>) -> Option<Option<Self>> {
        s.literal(b"null").map(|()| None)
    }
}

/// One record object filling the whole input (surrounding whitespace allowed).
pub(super) fn object(json: &str) -> Option<RawRecord> {
    let mut s = Scanner {
        b: json.as_bytes(),
        s: json,
        i: 0,
        next: vec![None; Field::COUNT + 2],
    };
    let r = s.record()?;
    s.ws();
    (s.i == s.b.len()).then_some(r)
}

/// A JSON array of record objects filling the whole input; each is handed to `each`.
pub(super) fn array(json: &str, mut each: impl FnMut(RawRecord)) -> Option<()> {
    let mut s = Scanner {
        b: json.as_bytes(),
        s: json,
        i: 0,
        next: vec![None; Field::COUNT + 2],
    };
    s.ws();
    s.eat(b'[')?;
    s.ws();
    if s.eat(b']').is_none() {
        loop {
            each(s.record()?);
            s.ws();
            if s.eat(b',').is_none() {
                s.eat(b']')?;
                break;
            }
        }
    }
    s.ws();
    (s.i == s.b.len()).then_some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fast(json: &str) -> Option<String> {
        object(json).map(|r| format!("{r:?}"))
    }

    /// Where the fast path answers, it must answer exactly as serde does.
    fn check(json: &str) {
        if let Some((fast, serde)) = crate::record::fast_and_serde(json) {
            assert_eq!(
                Some(fast),
                serde,
                "fast path disagrees with serde on {json}"
            );
        }
    }

    #[test]
    fn agrees_with_serde() {
        let values = [
            r#""text""#,
            r#""""#,
            r#""é ünï""#,
            r#""a\"b""#,
            r#""a\u0041""#,
            "0",
            "7",
            "42",
            "-1",
            "1.5",
            "1e3",
            "1E+2",
            "-0",
            "007",
            "18446744073709551615",
            "18446744073709551616",
            "65535",
            "65536",
            "4294967296",
            "true",
            "false",
            "null",
            "[]",
            r#"["a","b"]"#,
            r#"["a",1]"#,
            "{}",
            r#"{"x":1}"#,
            r#""0.001234""#,
            r#"" 0.5 ""#,
            "0.000001",
            "1700000000000",
            "1.7e12",
            "-5",
            "3.0",
            // Beyond f64: serde refuses them, so the fast path must not answer (fuzz finding).
            "2222222222222222222e22222222",
            "-1e999",
            "1e-400",
            "99999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999",
        ];
        let fields = [
            "request_id",
            "timestamp",
            "namespace",
            "model",
            "status",
            "duration_ms",
            "ttfb_ms",
            "input_tokens",
            "cost_usd",
            "retry_count",
            "provider_chain",
            "is_streaming",
            "messages_count",
            "cost",
            "currency",
            "provider_request_id",
            "unknown",
            "error",
        ];
        let mut agreed = 0;
        for f in fields {
            for v in values {
                for json in [
                    format!(r#"{{"{f}":{v}}}"#),
                    format!(" {{ \"model\" : \"m\" ,\n\t\"{f}\" :{v} , \"status\":200 }} "),
                    format!(r#"{{"{f}":{v},"{f}":{v}}}"#),
                ] {
                    check(&json);
                    agreed += usize::from(fast(&json).is_some());
                }
            }
        }
        assert!(
            agreed > 300,
            "the fast path should take most plain inputs ({agreed})"
        );
        for bad in [
            "",
            "{",
            "{\"a\"}",
            "{\"a\":}",
            "{\"a\":1,}",
            "{} x",
            "[]",
            "{\"a\":1 \"b\":2}",
            "{\"a\":tru}",
        ] {
            assert_eq!(fast(bad), None, "{bad}");
        }
    }

    #[test]
    fn arrays_match_serde_record_by_record() {
        let json = r#" [ {"model":"m","status":200,"duration_ms":5,"cost_usd":0.25,"provider_chain":["a","b"]} ,
            {"model":"n","status":500,"duration_ms":7,"x":"y","timestamp":"2025-01-01T00:00:00Z"} ] "#;
        let mut got = Vec::new();
        array(json, |r| got.push(format!("{r:?}"))).expect("fast path");
        let want: Vec<String> = serde_json::from_str::<Vec<RawRecord>>(json)
            .expect("serde")
            .iter()
            .map(|r| format!("{r:?}"))
            .collect();
        assert_eq!(got, want);
        assert!(
            array("[{\"x\":[1]}]", |_| {}).is_none(),
            "nested unknown values go to serde"
        );
        assert!(array("[]", |_| {}).is_some());
    }

    /// Key prediction must never read a key as the one predicted unless it is exactly that key:
    /// prefixes, extensions, reordering, fewer or more keys, unknown keys in between.
    #[test]
    fn predicted_key_order_matches_serde() {
        let json = r#"[
            {"model":"a","status":200,"duration_ms":1,"user":"u","x":1},
            {"model":"b","status":201,"duration_ms":2,"user":"v","x":2},
            {"modelx":"c","status":202,"duration_ms":3,"use":"w","x":3},
            {"mode":"d","model":"e","duration_ms":4,"status":203},
            {"status":204,"model":"f"},
            {"status":205,"model":"g","duration_ms":6,"user":"z","x":7,"ttfb_ms":1,"error":"e"},
            {"status":206,"model":"h","duration_ms":7,"user":"y","y":8,"ttfb_ms":2},
            {},
            {"model":"i"}
        ]"#;
        let mut got = Vec::new();
        array(json, |r| got.push(format!("{r:?}"))).expect("fast path");
        let want: Vec<String> = serde_json::from_str::<Vec<RawRecord>>(json)
            .expect("serde")
            .iter()
            .map(|r| format!("{r:?}"))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn same_compares_every_byte() {
        for n in 0..40 {
            let a: Vec<u8> = (0..n).map(|i| b'a' + (i % 26) as u8).collect();
            assert!(same(&a, &a.clone()), "{n}");
            for at in 0..n {
                let mut b = a.clone();
                b[at] ^= 1;
                assert!(!same(&a, &b), "len {n}, byte {at}");
            }
        }
    }

    #[test]
    fn stop_position_finds_the_first_stop_byte() {
        // Every position in words and tails, every kind of stop byte, with plain bytes
        // (ASCII, high bytes, 0x20 and 0x7e next to the stop values) around it.
        for len in 0..40 {
            for at in 0..=len {
                for stop in [b'"', b'\\', 0, 0x1f, 0x7f, b'\n'] {
                    let mut b: Vec<u8> = (0..len)
                        .map(|i| [b'a', 0x20, 0x7e, 0xc3, 0xff][i % 5])
                        .collect();
                    let want = (at < len).then(|| {
                        b[at] = stop;
                        at
                    });
                    assert_eq!(stop_position(&b), want, "len {len} at {at} stop {stop:#x}");
                    // Stop bytes after the first do not change the answer.
                    if at + 1 < len {
                        b[at + 1] = b'"';
                        assert_eq!(stop_position(&b), want);
                    }
                }
            }
        }
    }

    #[test]
    fn control_characters_and_del_are_left_to_serde() {
        for c in ['\u{1}', '\t', '\u{7f}'] {
            assert_eq!(fast(&format!("{{\"model\":\"a{c}b\"}}")), None, "{c:?}");
        }
        assert!(
            fast("{\"model\":\"a\u{80}b\"}").is_some(),
            "non-ASCII is plain text"
        );
    }
}
