//! The text exposition encoder shared by every `/metrics` renderer: family headers (`# HELP`,
//! `# TYPE`, OpenMetrics `# UNIT`), samples, classic histograms, label escaping, and values
//! (money printed from integer micro-USD as an exact decimal).
//!
//! It knows the formats, not the families: which families exist and what they hold is
//! `crate::export::prometheus` and `crate::claude_code::render`. No I/O.

use std::fmt::Write as _;

use crate::catalog::{Kind, Metric};

/// A sample value.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Value {
    U(u64),
    I(i64),
    F(f64),
    /// Integer micro-units printed as an exact decimal.
    Micros(u64),
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Value::U(v) => write!(f, "{v}"),
            Value::I(v) => write!(f, "{v}"),
            Value::F(v) if v.is_nan() => f.write_str("NaN"),
            Value::F(v) if v.is_infinite() => f.write_str(if v > 0.0 { "+Inf" } else { "-Inf" }),
            Value::F(v) => write!(f, "{v}"),
            Value::Micros(v) => {
                let (whole, frac) = (v / 1_000_000, v % 1_000_000);
                if frac == 0 {
                    write!(f, "{whole}")
                } else {
                    let s = format!("{frac:06}");
                    write!(f, "{whole}.{}", s.trim_end_matches('0'))
                }
            }
        }
    }
}

/// Text exposition writer.
pub(crate) struct Encoder {
    out: String,
    openmetrics: bool,
    samples: u64,
}

/// The value at `i`, 0 when absent (counter arrays indexed by a label enum).
pub(crate) fn at(v: &[u64], i: usize) -> u64 {
    v.get(i).copied().unwrap_or(0)
}

/// The value at `[i][j]`, 0 when absent.
pub(crate) fn at2(v: &[Vec<u64>], i: usize, j: usize) -> u64 {
    v.get(i).map_or(0, |r| at(r, j))
}

fn escape_label(v: &str, out: &mut String) {
    for ch in v.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

impl Encoder {
    /// An empty exposition, in OpenMetrics when `openmetrics`, else Prometheus text 0.0.4.
    pub(crate) fn new(openmetrics: bool) -> Self {
        Self {
            out: String::with_capacity(64 * 1024),
            openmetrics,
            samples: 0,
        }
    }

    /// Samples (series) written so far.
    pub(crate) fn samples(&self) -> u64 {
        self.samples
    }

    /// The finished text (with OpenMetrics' `# EOF`).
    pub(crate) fn finish(mut self) -> String {
        if self.openmetrics {
            self.out.push_str("# EOF\n");
        }
        self.out
    }

    pub(crate) fn header(&mut self, m: &Metric) {
        let name = if self.openmetrics || m.kind != Kind::Counter {
            m.name.to_string()
        } else {
            format!("{}_total", m.name)
        };
        let kind = match m.kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        let help = m.help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
        if self.openmetrics
            && let Some(unit) = m.unit
        {
            let _ = writeln!(self.out, "# UNIT {name} {unit}");
        }
    }

    pub(crate) fn line(
        &mut self,
        name: &str,
        suffix: &str,
        names: &[&str],
        values: &[&str],
        extra: Option<(&str, &str)>,
        v: Value,
    ) {
        self.samples += 1;
        self.out.push_str(name);
        self.out.push_str(suffix);
        if !names.is_empty() || extra.is_some() {
            self.out.push('{');
            let mut first = true;
            for (n, val) in names.iter().zip(values).map(|(n, v)| (*n, *v)).chain(extra) {
                if !first {
                    self.out.push(',');
                }
                first = false;
                self.out.push_str(n);
                self.out.push_str("=\"");
                escape_label(val, &mut self.out);
                self.out.push('"');
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {v}");
    }

    /// One counter or gauge sample; `labels` follow the family's label names.
    pub(crate) fn sample(&mut self, m: &Metric, labels: &[&str], v: Value) {
        debug_assert_eq!(labels.len(), m.labels.len(), "{}", m.name);
        let suffix = if m.kind == Kind::Counter {
            "_total"
        } else {
            ""
        };
        self.line(m.name, suffix, m.labels, labels, None, v);
    }

    /// One histogram series from cumulative bucket counts (`cumulative[i]` = count ≤ `bounds[i]`).
    pub(crate) fn histogram(
        &mut self,
        m: &Metric,
        labels: &[&str],
        bounds: &[f64],
        cumulative: &[u64],
        count: u64,
        sum: Value,
    ) {
        for (b, n) in bounds.iter().zip(cumulative) {
            let le = format!("{b}");
            self.line(
                m.name,
                "_bucket",
                m.labels,
                labels,
                Some(("le", &le)),
                Value::U((*n).min(count)),
            );
        }
        self.line(
            m.name,
            "_bucket",
            m.labels,
            labels,
            Some(("le", "+Inf")),
            Value::U(count),
        );
        self.line(m.name, "_sum", m.labels, labels, None, sum);
        self.line(m.name, "_count", m.labels, labels, None, Value::U(count));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micros_print_exactly() {
        assert_eq!(Value::Micros(214_380).to_string(), "0.21438");
        assert_eq!(Value::Micros(3_000_000).to_string(), "3");
        assert_eq!(Value::Micros(1).to_string(), "0.000001");
        assert_eq!(Value::Micros(12_345_678_901).to_string(), "12345.678901");
    }

    #[test]
    fn label_values_are_escaped() {
        let mut s = String::new();
        escape_label("a\"b\\c\nd", &mut s);
        assert_eq!(s, "a\\\"b\\\\c\\nd");
    }
}
