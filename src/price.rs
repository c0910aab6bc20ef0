//! The price table (SPEC §7): cost of a record that does not carry its own.
//!
//! Prices are configured in USD per million tokens and kept as integer nano-USD per token, so
//! cost is computed in integers and rounded once, half up, to micro-USD per record. A provider
//! multiplier is kept in parts per million. Pure: no I/O.
//!
//! [`Tokens`], the token buckets a price applies to, is declared here (below the record, which
//! re-exports it) so that imports run one way: `record` → `price`.

use std::collections::HashMap;

/// Token counts by bucket; the buckets are disjoint (Anthropic-style).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tokens {
    /// Plain input tokens.
    pub input: u64,
    /// Output tokens.
    pub output: u64,
    /// Cache writes, 5 minute TTL.
    pub cache_write_5m: u64,
    /// Cache writes, 1 hour TTL.
    pub cache_write_1h: u64,
    /// Cache reads.
    pub cache_read: u64,
}

/// Names of the token types, in the order of [`Tokens::as_array`].
pub const TOKEN_TYPES: [&str; 5] = [
    "input",
    "output",
    "cache_write_5m",
    "cache_write_1h",
    "cache_read",
];

impl Tokens {
    /// The counts in the order of [`TOKEN_TYPES`].
    pub fn as_array(&self) -> [u64; 5] {
        [
            self.input,
            self.output,
            self.cache_write_5m,
            self.cache_write_1h,
            self.cache_read,
        ]
    }

    /// Adds another set of counts.
    pub fn add(&mut self, o: &Tokens) {
        self.input += o.input;
        self.output += o.output;
        self.cache_write_5m += o.cache_write_5m;
        self.cache_write_1h += o.cache_write_1h;
        self.cache_read += o.cache_read;
    }

    /// All prompt-side tokens (input plus cache reads and writes).
    pub fn prompt_total(&self) -> u64 {
        self.input + self.cache_write_5m + self.cache_write_1h + self.cache_read
    }

    /// Every token of the request.
    pub fn total(&self) -> u64 {
        self.prompt_total() + self.output
    }
}

/// Prices of one model, nano-USD per token (= thousandths of USD per million tokens).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ModelPrice {
    /// Plain input tokens.
    pub input: u64,
    /// Output tokens.
    pub output: u64,
    /// Cache writes with a 5 minute TTL.
    pub cache_write_5m: u64,
    /// Cache writes with a 1 hour TTL.
    pub cache_write_1h: u64,
    /// Cache reads.
    pub cache_read: u64,
}

impl ModelPrice {
    /// Converts USD-per-million-token prices; rejects negative, non-finite or sub-milli-USD precision loss.
    pub fn from_usd_per_mtok(
        input: f64,
        output: f64,
        cache_write_5m: f64,
        cache_write_1h: f64,
        cache_read: f64,
    ) -> Result<Self, String> {
        let conv = |name: &str, v: f64| -> Result<u64, String> {
            if !v.is_finite() || !(0.0..=1_000_000.0).contains(&v) {
                return Err(format!(
                    "{name}: {v} is not a price between 0 and 1000000 USD per million tokens"
                ));
            }
            let nano = (v * 1000.0).round();
            if (nano / 1000.0 - v).abs() > 1e-9 {
                return Err(format!(
                    "{name}: {v} has more than 3 decimals (USD per million tokens)"
                ));
            }
            Ok(nano as u64)
        };
        Ok(Self {
            input: conv("input", input)?,
            output: conv("output", output)?,
            cache_write_5m: conv("cache_write_5m", cache_write_5m)?,
            cache_write_1h: conv("cache_write_1h", cache_write_1h)?,
            cache_read: conv("cache_read", cache_read)?,
        })
    }

    fn nano_usd(&self, t: &Tokens) -> u128 {
        u128::from(t.input) * u128::from(self.input)
            + u128::from(t.output) * u128::from(self.output)
            + u128::from(t.cache_write_5m) * u128::from(self.cache_write_5m)
            + u128::from(t.cache_write_1h) * u128::from(self.cache_write_1h)
            + u128::from(t.cache_read) * u128::from(self.cache_read)
    }
}

/// A model's name and its prices as decimals in USD per million tokens (see
/// [`PriceTable::describe`]).
pub type ModelPrices = (String, [String; 5]);

/// Model prices plus per-provider multipliers.
#[derive(Debug, Clone, Default)]
pub struct PriceTable {
    models: HashMap<String, ModelPrice>,
    /// Model names sorted longest first, for prefix matching of dated model ids.
    by_length: Vec<String>,
    multipliers_ppm: HashMap<String, u64>,
}

impl PriceTable {
    /// Builds a table. `multipliers` maps a provider to a factor (1.0 = list price).
    pub fn new(
        models: HashMap<String, ModelPrice>,
        multipliers: HashMap<String, f64>,
    ) -> Result<Self, String> {
        let mut multipliers_ppm = HashMap::new();
        for (provider, m) in multipliers {
            if !m.is_finite() || !(0.0..=1000.0).contains(&m) {
                return Err(format!(
                    "provider_multipliers.{provider}: {m} is not between 0 and 1000"
                ));
            }
            multipliers_ppm.insert(provider, (m * 1e6).round() as u64);
        }
        let mut by_length: Vec<String> = models.keys().cloned().collect();
        by_length.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        Ok(Self {
            models,
            by_length,
            multipliers_ppm,
        })
    }

    /// Every configured model with its prices as exact decimals in USD per million tokens
    /// (input, output, cache write 5m, cache write 1h, cache read), by name; and every provider
    /// multiplier as an exact decimal: what `check-config` prints.
    pub fn describe(&self) -> (Vec<ModelPrices>, Vec<(String, String)>) {
        let usd = |nano: u64| decimal(u128::from(nano), 3);
        let mut models: Vec<_> = self
            .models
            .iter()
            .map(|(name, p)| {
                let prices = [
                    p.input,
                    p.output,
                    p.cache_write_5m,
                    p.cache_write_1h,
                    p.cache_read,
                ];
                (name.clone(), prices.map(usd))
            })
            .collect();
        models.sort();
        let mut multipliers: Vec<_> = self
            .multipliers_ppm
            .iter()
            .map(|(p, ppm)| (p.clone(), decimal(u128::from(*ppm), 6)))
            .collect();
        multipliers.sort();
        (models, multipliers)
    }

    /// The price of a model: an exact name, else the longest configured name the model starts
    /// with (so `claude-sonnet-4-5` prices `claude-sonnet-4-5-20250929`).
    pub fn lookup(&self, model: &str) -> Option<&ModelPrice> {
        if let Some(p) = self.models.get(model) {
            return Some(p);
        }
        self.by_length
            .iter()
            .find(|name| model.starts_with(name.as_str()))
            .and_then(|name| self.models.get(name))
    }

    /// Cost in micro-USD, rounded half up, or `None` when the model is not priced.
    pub fn cost_micros(&self, provider: &str, model: &str, tokens: &Tokens) -> Option<u64> {
        let price = self.lookup(model)?;
        let mut nano = price.nano_usd(tokens);
        if let Some(ppm) = self.multipliers_ppm.get(provider) {
            nano = (nano * u128::from(*ppm) + 500_000) / 1_000_000;
        }
        Some(u64::try_from((nano + 500) / 1000).unwrap_or(u64::MAX))
    }
}

/// `v / 10^scale` as an exact decimal without trailing zeros (`3000`, 3 → `3`; `75`, 3 → `0.075`).
fn decimal(v: u128, scale: u32) -> String {
    let unit = 10u128.pow(scale);
    let (whole, frac) = (v / unit, v % unit);
    if frac == 0 {
        return whole.to_string();
    }
    let frac = format!("{frac:0width$}", width = scale as usize);
    format!("{whole}.{}", frac.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> PriceTable {
        let mut models = HashMap::new();
        models.insert(
            "claude-sonnet-4-5".to_string(),
            ModelPrice::from_usd_per_mtok(3.0, 15.0, 3.75, 6.0, 0.30).expect("valid"),
        );
        models.insert(
            "claude".to_string(),
            ModelPrice::from_usd_per_mtok(1.0, 1.0, 1.0, 1.0, 1.0).expect("valid"),
        );
        let mut mult = HashMap::new();
        mult.insert("reseller".to_string(), 1.1);
        PriceTable::new(models, mult).expect("valid")
    }

    #[test]
    fn exact_integer_cost() {
        let t = Tokens {
            input: 1000,
            output: 500,
            cache_write_5m: 2000,
            cache_write_1h: 0,
            cache_read: 10_000,
        };
        // 1000*3 + 500*15 + 2000*3.75 + 10000*0.3 = 3000 + 7500 + 7500 + 3000 = 21000 micro-USD
        assert_eq!(
            table().cost_micros("anthropic", "claude-sonnet-4-5", &t),
            Some(21_000)
        );
        assert_eq!(
            table().cost_micros("reseller", "claude-sonnet-4-5", &t),
            Some(23_100)
        );
    }

    #[test]
    fn longest_prefix_wins_and_unknown_is_none() {
        let t = Tokens {
            input: 1_000_000,
            ..Tokens::default()
        };
        assert_eq!(
            table().cost_micros("a", "claude-sonnet-4-5-20250929", &t),
            Some(3_000_000)
        );
        assert_eq!(
            table().cost_micros("a", "claude-haiku", &t),
            Some(1_000_000)
        );
        assert_eq!(table().cost_micros("a", "gpt-4o", &t), None);
    }

    #[test]
    fn rounds_half_up_once() {
        let t = Tokens {
            cache_read: 5,
            ..Tokens::default()
        };
        // 5 * 0.3 = 1.5 micro-USD -> 2
        assert_eq!(table().cost_micros("a", "claude-sonnet-4-5", &t), Some(2));
    }

    #[test]
    fn rejects_bad_prices() {
        assert!(ModelPrice::from_usd_per_mtok(-1.0, 0.0, 0.0, 0.0, 0.0).is_err());
        assert!(ModelPrice::from_usd_per_mtok(0.0001, 0.0, 0.0, 0.0, 0.0).is_err());
        assert!(ModelPrice::from_usd_per_mtok(f64::NAN, 0.0, 0.0, 0.0, 0.0).is_err());
    }
}
