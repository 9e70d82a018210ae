//! Resource quantities as the API writes them (`250m`, `1Gi`, `129e6`, `2`): one parser for
//! every component that reads them (the scheduler fits requests, the HPA compares usage), so
//! they agree on which suffixes exist and on what bad input is.
//!
//! The grammar is upstream's `resource.Quantity`: a signed decimal number, then one suffix —
//! binary SI (`Ki` `Mi` `Gi` `Ti` `Pi` `Ei`), decimal SI (`n` `u` `m` `` `k` `M` `G` `T` `P`
//! `E`), or a decimal exponent (`e3`, `E-2`). Values are held as `f64`, which is exact for
//! every request and capacity a node can have; callers round as their upstream does.

use std::str::FromStr;

/// Why a string is not a quantity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    #[error("{0:?} has no number (quantities look like 250m, 1Gi or 2)")]
    Number(String),
    #[error(
        "{quantity:?}: unknown suffix {suffix:?} (Ki..Ei, n, u, m, k..E, or an exponent such as e3)"
    )]
    Suffix { quantity: String, suffix: String },
    #[error("{0:?} is out of range")]
    Range(String),
}

/// A parsed quantity: its value in base units (cores, bytes, a count), always finite.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct ParsedQuantity(f64);

impl ParsedQuantity {
    /// Parses `q` (surrounding whitespace ignored).
    pub fn parse(q: &str) -> Result<ParsedQuantity, QuantityError> {
        let q = q.trim();
        let idx = q
            .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
            .unwrap_or(q.len());
        let (num, suffix) = q.split_at(idx);
        let n: f64 = num
            .parse()
            .map_err(|_| QuantityError::Number(q.to_string()))?;
        let mult = multiplier(suffix).ok_or_else(|| QuantityError::Suffix {
            quantity: q.to_string(),
            suffix: suffix.to_string(),
        })?;
        let v = n * mult;
        if v.is_finite() {
            Ok(ParsedQuantity(v))
        } else {
            Err(QuantityError::Range(q.to_string()))
        }
    }

    /// The value in base units (`"1500m"` → 1.5).
    pub fn value(self) -> f64 {
        self.0
    }

    /// The value in thousandths (`"1500m"` → 1500.0): millicores for CPU.
    pub fn milli(self) -> f64 {
        self.0 * 1000.0
    }

    pub fn is_negative(self) -> bool {
        self.0 < 0.0
    }
}

impl FromStr for ParsedQuantity {
    type Err = QuantityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ParsedQuantity::parse(s)
    }
}

/// What a suffix multiplies by; None for no suffix the API accepts. `E` alone is exa; `E`
/// or `e` followed by a signed integer is an exponent.
fn multiplier(suffix: &str) -> Option<f64> {
    Some(match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0f64.powi(4),
        "Pi" => 1024.0f64.powi(5),
        "Ei" => 1024.0f64.powi(6),
        s if s.starts_with(['e', 'E']) => 10f64.powi(s[1..].parse().ok()?),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn v(q: &str) -> f64 {
        ParsedQuantity::parse(q).unwrap().value()
    }

    fn m(q: &str) -> f64 {
        ParsedQuantity::parse(q).unwrap().milli()
    }

    #[test]
    fn cpu_in_millicores() {
        assert_eq!(m("1"), 1000.0);
        assert_eq!(m("250m"), 250.0);
        assert_eq!(m("0.5"), 500.0);
        assert_eq!(m("32"), 32_000.0);
        assert_eq!(m("12345678n").round(), 12.0);
        assert_eq!(m("1500u").round(), 2.0);
    }

    #[test]
    fn decimal_suffixes_k_to_e() {
        assert_eq!(v("1k"), 1e3);
        assert_eq!(v("1M"), 1e6);
        assert_eq!(v("2G"), 2e9);
        assert_eq!(v("1T"), 1e12);
        assert_eq!(v("3P"), 3e15);
        assert_eq!(v("1E"), 1e18);
        assert_eq!(v("110"), 110.0);
        assert_eq!(v("128974848"), 128_974_848.0);
    }

    #[test]
    fn binary_suffixes_ki_to_ei() {
        assert_eq!(v("4Ki"), 4096.0);
        assert_eq!(v("1Mi"), 1_048_576.0);
        assert_eq!(v("256Gi"), (256u64 << 30) as f64);
        assert_eq!(v("1Ti"), (1u64 << 40) as f64);
        assert_eq!(v("1Pi"), (1u64 << 50) as f64);
        assert_eq!(v("2Ei"), (1u64 << 61) as f64);
    }

    #[test]
    fn exponents_as_the_api_accepts_them() {
        assert_eq!(v("129e6"), 129_000_000.0);
        assert_eq!(v("1e3"), 1000.0);
        assert_eq!(v("1E3"), 1000.0);
        assert_eq!(v("5e-3"), 0.005);
        assert_eq!(v("2e+2"), 200.0);
    }

    #[test]
    fn signs_and_whitespace() {
        assert_eq!(v(" 2Gi "), (2u64 << 30) as f64);
        assert_eq!(v("+1"), 1.0);
        assert!(ParsedQuantity::parse("-1").unwrap().is_negative());
        assert!(!ParsedQuantity::parse("0").unwrap().is_negative());
        assert_eq!("250m".parse::<ParsedQuantity>().unwrap().milli(), 250.0);
    }

    #[test]
    fn bad_input_is_a_typed_error() {
        assert!(matches!(
            ParsedQuantity::parse("lots"),
            Err(QuantityError::Number(_))
        ));
        assert!(matches!(
            ParsedQuantity::parse(""),
            Err(QuantityError::Number(_))
        ));
        assert!(matches!(
            ParsedQuantity::parse("x"),
            Err(QuantityError::Number(_))
        ));
        assert!(matches!(
            ParsedQuantity::parse("1.2.3"),
            Err(QuantityError::Number(_))
        ));
        assert_eq!(
            ParsedQuantity::parse("1Zi"),
            Err(QuantityError::Suffix {
                quantity: "1Zi".into(),
                suffix: "Zi".into()
            })
        );
        assert!(matches!(
            ParsedQuantity::parse("1KiB"),
            Err(QuantityError::Suffix { .. })
        ));
        assert!(matches!(
            ParsedQuantity::parse("1e"),
            Err(QuantityError::Suffix { .. })
        ));
        assert!(matches!(
            ParsedQuantity::parse("1e999"),
            Err(QuantityError::Range(_))
        ));
        assert!(matches!(
            ParsedQuantity::parse("10e308"),
            Err(QuantityError::Range(_))
        ));
    }
}
