//! The Prometheus text exposition parser of the client side (loadgen's counter check, the
//! tests' assertions): samples with their labels and value, and the families' types.
//!
//! It reads what `/metrics` writes, in either format: comment lines other than `# TYPE` are
//! skipped, as is a timestamp after the value.

use std::collections::BTreeMap;

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The sample's name (e.g. `x_total`, `y_bucket`).
    pub name: String,
    /// Its labels, unescaped.
    pub labels: BTreeMap<String, String>,
    /// Its value.
    pub value: f64,
    /// Its value as written, for exact decimal reading.
    pub text: String,
}

/// A parsed exposition.
#[derive(Debug, Clone, Default)]
pub struct Exposition {
    /// The samples, in order of appearance.
    pub samples: Vec<Sample>,
    /// Family name → type, in order of appearance.
    pub families: Vec<(String, String)>,
}

/// A line that is not a sample, a comment or blank.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line} of the exposition is not a sample: {text:?}")]
pub struct ExpositionError {
    /// 1-based line number.
    pub line: usize,
    /// The line.
    pub text: String,
}

impl Exposition {
    /// Parses a whole exposition; any line it cannot read is an error.
    pub fn parse(text: &str) -> Result<Self, ExpositionError> {
        let mut out = Self::default();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut it = rest.split_ascii_whitespace();
                if let (Some(name), Some(ty)) = (it.next(), it.next()) {
                    out.families.push((name.to_string(), ty.to_string()));
                    continue;
                }
            } else if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let sample = parse_sample(line).ok_or_else(|| ExpositionError {
                line: i + 1,
                text: line.to_string(),
            })?;
            out.samples.push(sample);
        }
        Ok(out)
    }

    /// The sample with exactly this name and these labels (in any order).
    pub fn find(&self, name: &str, labels: &[(&str, &str)]) -> Option<&Sample> {
        self.samples.iter().find(|s| {
            s.name == name
                && s.labels.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).is_some_and(|have| have == v))
        })
    }

    /// The value of the series with exactly these labels.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.find(name, labels).map(|s| s.value)
    }

    /// Like [`Exposition::get`], but a missing series panics (for tests).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("no sample {name}{labels:?}"))
    }
}

/// `name{label="value",...} value [timestamp]`; label values may hold escaped quotes.
fn parse_sample(line: &str) -> Option<Sample> {
    let name_end = line.find(|c: char| c == '{' || c.is_ascii_whitespace())?;
    let name = &line[..name_end];
    if name.is_empty() {
        return None;
    }
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices().peekable();
        let close;
        loop {
            while chars
                .next_if(|(_, c)| *c == ',' || c.is_ascii_whitespace())
                .is_some()
            {}
            match chars.peek() {
                Some((i, '}')) => {
                    close = *i;
                    break;
                }
                None => return None,
                _ => {}
            }
            let mut key = String::new();
            while let Some((_, c)) = chars.next_if(|(_, c)| *c != '=') {
                key.push(c);
            }
            chars.next()?; // '='
            if chars.next()?.1 != '"' {
                return None;
            }
            let mut value = String::new();
            loop {
                match chars.next()?.1 {
                    '"' => break,
                    '\\' => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        c => value.push(c),
                    },
                    c => value.push(c),
                }
            }
            labels.insert(key.trim().to_string(), value);
        }
        rest = &inner[close + 1..];
    }
    let text = rest.split_ascii_whitespace().next()?;
    let value = match text {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
        text: text.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"# HELP ai_gateway_requests_total Requests completed by the gateway fleet.
# TYPE ai_gateway_requests_total counter
ai_gateway_requests_total 1500
ai_gateway_namespace_requests_total{namespace="a \"quoted\" ns"} 7
gatemeter_tokens_total{type="cache_read"} 1.5e+06
gatemeter_duplicate_records_total 2 1760000000000
model_cost_usd_total{provider="p",model="m"} 1
x_bucket{le="+Inf"} +Inf
"#;

    #[test]
    fn samples_labels_and_families_are_read() {
        let e = Exposition::parse(SAMPLE).expect("parsed");
        assert_eq!(
            e.families,
            [("ai_gateway_requests_total".into(), "counter".into())]
        );
        assert_eq!(e.samples.len(), 6);
        assert_eq!(
            e.get(
                "ai_gateway_namespace_requests_total",
                &[("namespace", "a \"quoted\" ns")]
            ),
            Some(7.0)
        );
        // Label order does not matter; a timestamp is not the value.
        assert_eq!(
            e.get("model_cost_usd_total", &[("model", "m"), ("provider", "p")]),
            Some(1.0)
        );
        assert_eq!(e.get("gatemeter_duplicate_records_total", &[]), Some(2.0));
        let cache = e
            .find("gatemeter_tokens_total", &[("type", "cache_read")])
            .expect("sample");
        assert_eq!((cache.value, cache.text.as_str()), (1.5e6, "1.5e+06"));
        assert_eq!(e.get("x_bucket", &[("le", "+Inf")]), Some(f64::INFINITY));
        assert_eq!(e.get("ai_gateway_requests_total", &[("a", "b")]), None);
    }

    #[test]
    fn unreadable_lines_are_errors() {
        for bad in ["x", "x{a=\"1\" 2", "x{a=1} 2", "x abc", "{a=\"1\"} 2"] {
            assert!(Exposition::parse(bad).is_err(), "{bad}");
        }
    }
}
