//! Numbers as the exact value their decimal text denotes, so that probe comparisons never
//! go through a binary float: `9007199254740993` is not `9007199254740992` (which are one
//! and the same `f64`), and `0.1` is not `0.10000000000000001`.
//!
//! The rule that keeps it right: a number is held as its sign, its significant digits and
//! a power of ten, normalised (no leading or trailing zero digits, no negative zero), so
//! equal values have equal representations and two values order by comparing those parts,
//! without any arithmetic that could round.

use std::cmp::Ordering;

/// A finite number exactly as its decimal text denotes it: `digits × 10^exponent`,
/// negated when `negative`. Zero has no digits and is never negative.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Decimal {
    negative: bool,
    /// ASCII digits without leading or trailing zeros; empty for zero.
    digits: Vec<u8>,
    exponent: i64,
}

impl Decimal {
    /// Reads decimal text: an optional sign, digits with an optional fraction (`5`, `+5`,
    /// `017`, `-0.25`, `.5`, `5.`) and an optional exponent (`1e3`, `4.2E-1`); leading
    /// zeros are decimal, never octal. `None` for anything else: empty text, surrounding
    /// whitespace, `0x1F`, `1_000`, `NaN`, `inf`, or an exponent beyond `i64`.
    pub(crate) fn parse(text: &str) -> Option<Decimal> {
        let bytes = text.as_bytes();
        let (negative, rest) = match bytes.split_first() {
            Some((b'-', rest)) => (true, rest),
            Some((b'+', rest)) => (false, rest),
            _ => (false, bytes),
        };
        let (mantissa, exponent) = match rest.iter().position(|b| matches!(b, b'e' | b'E')) {
            Some(at) => (&rest[..at], exponent_of(&rest[at + 1..])?),
            None => (rest, 0),
        };
        let (whole, fraction) = match mantissa.iter().position(|&b| b == b'.') {
            Some(at) => (&mantissa[..at], &mantissa[at + 1..]),
            None => (mantissa, &[][..]),
        };
        if whole.is_empty() && fraction.is_empty() {
            return None;
        }
        if !whole.iter().chain(fraction).all(u8::is_ascii_digit) {
            return None;
        }
        let mut digits: Vec<u8> = whole.iter().chain(fraction).copied().collect();
        let leading = digits.iter().take_while(|&&d| d == b'0').count();
        digits.drain(..leading);
        let trailing = digits.iter().rev().take_while(|&&d| d == b'0').count();
        digits.truncate(digits.len() - trailing);
        if digits.is_empty() {
            return Some(Decimal {
                negative: false,
                digits,
                exponent: 0,
            });
        }
        let shift = i64::try_from(trailing).ok()? - i64::try_from(fraction.len()).ok()?;
        Some(Decimal {
            negative,
            digits,
            exponent: exponent.checked_add(shift)?,
        })
    }

    /// Whether the value is a whole number (an integer of any size).
    pub(crate) fn is_whole(&self) -> bool {
        self.exponent >= 0
    }

    /// The exact value of a JSON number as serde_json holds it: an `i64` or `u64` as it
    /// is, an `f64` as the shortest decimal that reads back as the same `f64` (what
    /// Rust and serde_json print for it).
    pub(crate) fn of_json(number: &serde_json::Number) -> Option<Decimal> {
        Decimal::parse(&number.to_string())
    }
}

/// The exponent after `e`: an optional sign and at least one digit, within `i64`.
fn exponent_of(text: &[u8]) -> Option<i64> {
    let digits = match text.split_first() {
        Some((b'-' | b'+', rest)) => rest,
        _ => text,
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(text).ok()?.parse().ok()
}

impl Ord for Decimal {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self.negative, other.negative) {
            (false, true) => Ordering::Greater,
            (true, false) => Ordering::Less,
            (false, false) => magnitude(self, other),
            (true, true) => magnitude(other, self),
        }
    }
}

impl PartialOrd for Decimal {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Compares absolute values: first by the power of ten of the leading digit, then digit
/// by digit (with no trailing zeros, the longer of two equal prefixes is the larger).
fn magnitude(a: &Decimal, b: &Decimal) -> Ordering {
    match (a.digits.is_empty(), b.digits.is_empty()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        (false, false) => {
            let scale = |d: &Decimal| d.digits.len() as i128 + i128::from(d.exponent);
            scale(a)
                .cmp(&scale(b))
                .then_with(|| a.digits.cmp(&b.digits))
        }
    }
}

/// A value read for a `float` comparison: a finite number, an infinity or NaN.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Float {
    /// A finite number, exactly.
    Finite(Decimal),
    /// `+Inf` (`negative: false`) or `-Inf`.
    Infinite {
        /// Whether it is `-Inf`.
        negative: bool,
    },
    /// Not a number: unordered, unequal to everything, itself included (IEEE 754).
    NaN,
}

impl Float {
    /// Decimal text as [`Decimal::parse`] reads it, or `NaN`, `Inf`, `Infinity` in any
    /// case with an optional sign (Prometheus writes `NaN`, `+Inf`, `-Inf`).
    pub(crate) fn parse(text: &str) -> Option<Float> {
        if let Some(value) = Decimal::parse(text) {
            return Some(Float::Finite(value));
        }
        let (negative, word) = match text.as_bytes().first() {
            Some(b'-') => (true, &text[1..]),
            Some(b'+') => (false, &text[1..]),
            _ => (false, text),
        };
        if word.eq_ignore_ascii_case("nan") {
            Some(Float::NaN)
        } else if word.eq_ignore_ascii_case("inf") || word.eq_ignore_ascii_case("infinity") {
            Some(Float::Infinite { negative })
        } else {
            None
        }
    }
}

impl PartialOrd for Float {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        let rank = |value: &Float| match value {
            Float::Infinite { negative: true } => Some(0),
            Float::Finite(_) => Some(1),
            Float::Infinite { negative: false } => Some(2),
            Float::NaN => None,
        };
        match (self, other) {
            (Float::Finite(a), Float::Finite(b)) => Some(a.cmp(b)),
            _ => Some(rank(self)?.cmp(&rank(other)?)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(text: &str) -> Decimal {
        Decimal::parse(text).unwrap_or_else(|| panic!("{text:?} should read as a number"))
    }

    #[test]
    fn equal_values_read_equal_whatever_their_spelling() {
        for (a, b) in [
            ("3", "3.0"),
            ("017", "17"),
            ("+5", "5"),
            ("1e3", "1000"),
            ("4.2e1", "42"),
            ("0.5", ".5"),
            ("5.", "5"),
            ("-0", "0"),
            ("0.000", "0e10"),
            ("1.50", "15E-1"),
        ] {
            assert_eq!(d(a), d(b), "{a} vs {b}");
        }
    }

    #[test]
    fn values_one_double_apart_or_closer_stay_apart() {
        // 2^53 + 1 and 2^53 are the same f64.
        assert!(d("9007199254740993") > d("9007199254740992"));
        assert!(d("0.10000000000000001") > d("0.1"));
        assert!(d("18446744073709551616") > d("18446744073709551615"));
        assert!(d("-9223372036854775808") < d("-9223372036854775807"));
        assert!(d("1e-400") > d("0"));
        assert!(d("-1e-400") < d("0"));
    }

    #[test]
    fn order_follows_sign_then_magnitude() {
        let sorted = [
            "-1e400", "-100", "-99.5", "-1", "-0.01", "0", "0.001", "0.0011", "0.1", "1", "1.01",
            "9", "10", "1e400",
        ];
        for pair in sorted.windows(2) {
            assert!(d(pair[0]) < d(pair[1]), "{} < {}", pair[0], pair[1]);
            assert!(d(pair[1]) > d(pair[0]), "{} > {}", pair[1], pair[0]);
        }
    }

    #[test]
    fn only_decimal_text_reads() {
        for text in [
            "",
            " 5",
            "5 ",
            "-",
            "+",
            ".",
            "e5",
            "1e",
            "1e+",
            "0x1F",
            "0o17",
            "1_000",
            "1,5",
            "5-",
            "--5",
            "NaN",
            "inf",
            "1e99999999999999999999",
        ] {
            assert_eq!(Decimal::parse(text), None, "{text:?}");
        }
    }

    #[test]
    fn whole_numbers_are_those_without_a_fraction_left() {
        assert!(d("42").is_whole());
        assert!(d("4.2e1").is_whole());
        assert!(d("5.0").is_whole());
        assert!(d("0").is_whole());
        assert!(!d("7.5").is_whole());
        assert!(!d("1e-3").is_whole());
    }

    #[test]
    fn json_numbers_keep_their_exact_value() {
        let of = |value: serde_json::Value| match value {
            serde_json::Value::Number(n) => Decimal::of_json(&n).unwrap(),
            other => panic!("{other} is not a number"),
        };
        assert_eq!(of(serde_json::json!(i64::MAX)), d("9223372036854775807"));
        assert_eq!(of(serde_json::json!(i64::MIN)), d("-9223372036854775808"));
        assert_eq!(of(serde_json::json!(u64::MAX)), d("18446744073709551615"));
        assert_eq!(of(serde_json::json!(0.1)), d("0.1"));
        assert_eq!(of(serde_json::json!(1e23)), d("1e23"));
        assert_eq!(of(serde_json::json!(3.0)), d("3"));
    }

    #[test]
    fn floats_order_infinities_around_numbers_and_nan_nowhere() {
        let f = |text: &str| Float::parse(text).unwrap();
        assert!(f("-Inf") < f("-1e400"));
        assert!(f("+Inf") > f("1e400"));
        assert_eq!(f("inf"), f("+Infinity"));
        assert_eq!(f("NaN").partial_cmp(&f("NaN")), None);
        assert_eq!(f("NaN").partial_cmp(&f("1")), None);
        assert_eq!(Float::parse("nanx"), None);
    }
}
