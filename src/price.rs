//! The price table (SPEC §7): cost of a record that does not carry its own.
//!
//! Prices are configured in USD per million tokens and kept as integer nano-USD per token, so
//! cost is computed in integers and rounded once, half up, to micro-USD per record. A provider
//! multiplier is kept in parts per million. Costs sent in another currency are converted with
//! exchange rates kept as integer pico-USD per unit (12 decimals, parsed from decimal text: no
//! float touches money): micro-USD = amount × rate, rounded once, half up. Pure: no I/O.
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
    /// pico-USD per unit of each currency (ISO 4217 code).
    rates_pico: HashMap<String, u128>,
}

/// Decimals of an exchange rate (pico-USD per unit).
pub const RATE_DECIMALS: u32 = 12;
/// Decimals of an amount in another currency.
pub const AMOUNT_DECIMALS: u32 = 9;

/// An ISO 4217 code from what a record or the config says: three ASCII letters, any case;
/// `RMB` (the seeds' name for the yuan) is `CNY`.
pub fn currency_code(s: &str) -> Option<String> {
    let s = s.trim();
    if s.len() != 3 || !s.bytes().all(|b| b.is_ascii_alphabetic()) {
        return None;
    }
    let code = s.to_ascii_uppercase();
    Some(if code == "RMB" {
        "CNY".to_string()
    } else {
        code
    })
}

/// A non-negative plain decimal (`12`, `0.138`, `.5` refused) as an integer of `10^-scale`
/// units; `None` for anything else (sign, exponent, more than `scale` decimals, too large).
pub fn parse_decimal(s: &str, scale: u32) -> Option<u128> {
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    let digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !digits(whole) || !digits(frac) || (s.contains('.') && frac.is_empty()) {
        return None;
    }
    let frac = frac.trim_end_matches('0');
    if frac.len() > scale as usize || whole.len() > 24 {
        return None;
    }
    let unit = 10u128.pow(scale);
    let w: u128 = whole.parse().ok()?;
    let f: u128 = if frac.is_empty() {
        0
    } else {
        frac.parse::<u128>().ok()? * 10u128.pow(scale - frac.len() as u32)
    };
    w.checked_mul(unit)?.checked_add(f)
}

impl PriceTable {
    /// Builds a table. `multipliers` maps a provider to a factor (1.0 = list price).
    pub fn new(
        models: HashMap<String, ModelPrice>,
        multipliers: HashMap<String, f64>,
    ) -> Result<Self, String> {
        Self::with_rates(models, multipliers, HashMap::new())
    }

    /// [`PriceTable::new`] with exchange rates: currency code → USD per unit as decimal text
    /// (at most [`RATE_DECIMALS`] decimals).
    pub fn with_rates(
        models: HashMap<String, ModelPrice>,
        multipliers: HashMap<String, f64>,
        rates: HashMap<String, String>,
    ) -> Result<Self, String> {
        let mut rates_pico = HashMap::new();
        for (name, text) in rates {
            let code = currency_code(&name).ok_or_else(|| {
                format!("exchange_rates.{name}: not an ISO 4217 code like CNY or EUR")
            })?;
            let rate = parse_decimal(&text, RATE_DECIMALS)
                .filter(|r| *r > 0 && *r <= 1_000_000 * 10u128.pow(RATE_DECIMALS))
                .ok_or_else(|| {
                    format!(
                        "exchange_rates.{name}: {text} is not a rate in USD per unit between \
                         0.000000000001 and 1000000 (plain decimal, at most 12 decimals)"
                    )
                })?;
            rates_pico.insert(code, rate);
        }
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
            rates_pico,
        })
    }

    /// `amount` (plain decimal text) of `currency` (an ISO code from [`currency_code`]) in
    /// micro-USD, rounded half up; USD needs no rate. The error names the field at fault.
    pub fn convert_micros(
        &self,
        amount: &str,
        currency: &str,
    ) -> Result<u64, (&'static str, String)> {
        let units = parse_decimal(amount, AMOUNT_DECIMALS).ok_or_else(|| {
            (
                "cost",
                format!("{amount:?} is not a non-negative decimal amount (at most 9 decimals)"),
            )
        })?;
        let rate = match currency {
            "USD" => 10u128.pow(RATE_DECIMALS),
            c => *self.rates_pico.get(c).ok_or_else(|| {
                (
                    "currency",
                    format!("{c} has no exchange rate (pricing.exchange_rates)"),
                )
            })?,
        };
        // units × rate is in 10^-(9+12) USD; micro-USD is 10^-6.
        let div = 10u128.pow(AMOUNT_DECIMALS + RATE_DECIMALS - 6);
        let micros = units
            .checked_mul(rate)
            .map(|p| (p + div / 2) / div)
            .and_then(|m| u64::try_from(m).ok())
            .ok_or_else(|| ("cost", format!("{amount} {currency} is too large")))?;
        Ok(micros)
    }

    /// The exchange rates as exact decimals in USD per unit, by code.
    pub fn exchange_rates(&self) -> Vec<(String, String)> {
        let mut v: Vec<_> = self
            .rates_pico
            .iter()
            .map(|(c, r)| (c.clone(), decimal(*r, RATE_DECIMALS)))
            .collect();
        v.sort();
        v
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

    /// Exchange rates and amounts are decimals read into integers: no float rounding, half up
    /// once at the micro-USD; `RMB` is `CNY`; what cannot be read names its field.
    #[test]
    fn other_currencies_convert_exactly() {
        assert_eq!(parse_decimal("0.138", 12), Some(138_000_000_000));
        assert_eq!(parse_decimal("12", 3), Some(12_000));
        assert_eq!(
            parse_decimal("1.50", 1),
            Some(15),
            "trailing zeros are not decimals"
        );
        for bad in ["", "-1", "1e3", ".5", "5.", "1.2345", " 1", "0x10"] {
            assert_eq!(parse_decimal(bad, 3), None, "{bad:?}");
        }
        assert_eq!(currency_code("rmb").as_deref(), Some("CNY"));
        assert_eq!(currency_code(" eur ").as_deref(), Some("EUR"));
        assert_eq!(currency_code("EURO"), None);
        let rates = [("RMB".to_string(), "0.138".to_string())].into();
        let t = PriceTable::with_rates(HashMap::new(), HashMap::new(), rates).expect("valid");
        assert_eq!(
            t.exchange_rates(),
            [("CNY".to_string(), "0.138".to_string())]
        );
        assert_eq!(t.convert_micros("12.5", "CNY"), Ok(1_725_000));
        // 0.000003624 CNY is 0.500112 µUSD (→ 1), 0.000003623 CNY 0.499974 µUSD (→ 0).
        assert_eq!(t.convert_micros("0.000003624", "CNY"), Ok(1));
        assert_eq!(t.convert_micros("0.000003623", "CNY"), Ok(0));
        assert_eq!(t.convert_micros("2.5", "USD"), Ok(2_500_000));
        assert_eq!(
            t.convert_micros("1", "JPY").map_err(|e| e.0),
            Err("currency")
        );
        assert_eq!(
            t.convert_micros("1.0000000001", "CNY").map_err(|e| e.0),
            Err("cost")
        );
        for bad in [
            ("X", "0.1"),
            ("CNY", "0"),
            ("CNY", "1e-3"),
            ("CNY", "0.0000000000001"),
        ] {
            let rates = [(bad.0.to_string(), bad.1.to_string())].into();
            assert!(
                PriceTable::with_rates(HashMap::new(), HashMap::new(), rates).is_err(),
                "{bad:?}"
            );
        }
    }

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
