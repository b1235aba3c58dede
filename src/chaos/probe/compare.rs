//! Typed comparisons of an observed value with an expected one, as LitmusChaos's
//! `comparator` does them: command probes judge their standard output with them and
//! Prometheus probes their sample value.
//!
//! Both sides are read as the comparison's type, and compared exactly (the rules users
//! see are in the README's probe reference):
//!
//! - `int`: decimal text whose value is a whole number, of any size: `42`, `+42`, `042`
//!   (decimal, not octal), `4.2e1` and `42.0` are all 42; `7.5`, `0x2A` and `NaN` are not
//!   integers. Values compare exactly, never through a float, so 2^53 + 1 is not 2^53.
//! - `float`: decimal text compared by its exact decimal value (not rounded to a double),
//!   plus `NaN`, `+Inf` and `-Inf` on the observed side, as Prometheus writes them. NaN
//!   satisfies only `ne`. The expected value must be finite.
//! - Numbers ignore whitespace around them (standard output's line end included).
//! - `string`: byte-wise and case-sensitive. The observed text loses only its trailing
//!   line-end characters (`\n` and `\r`, so `\r\n` too), much as a shell's `$(...)` drops
//!   trailing newlines; the expected text is used as written. `contains` and `matches`
//!   (a regular expression search, not a full match) apply to strings only.
//!
//! An expected value that does not read as the comparison's type (a non-finite float, a
//! bad regular expression, `contains` on numbers) fails every check; `chaosgate validate`
//! refuses it first, reading numbers the same way (`crate::catalog::number`).
//! Regular expressions are compiled once and kept in a small cache, since the same probe
//! is checked again and again.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

use regex::Regex;

use crate::catalog::experiment::{Comparator, Comparison, ValueType};
use crate::catalog::number::{Decimal, Float};

/// Why an observed value did not satisfy a comparison.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub(crate) enum CompareFailure {
    /// The observed value does not read as the comparison's type.
    #[error("{observed:?} is not {kind}")]
    Observed {
        /// The observed text.
        observed: String,
        /// What it should have been, e.g. "an integer".
        kind: &'static str,
    },
    /// The expected value in the probe does not read as the comparison's type.
    #[error("cannot be compared: the expected value {expected:?} is not {kind}")]
    Expected {
        /// The expected text from the probe.
        expected: String,
        /// What it should have been, e.g. "a number".
        kind: &'static str,
    },
    /// `contains` or `matches` used with a number type.
    #[error("'{criteria}' compares strings only, not {value_type}")]
    NotForNumbers {
        /// The comparator's name.
        criteria: &'static str,
        /// The comparison's type name.
        value_type: &'static str,
    },
    /// The expected value of `matches` is not a valid regular expression.
    #[error("{pattern:?} is not a valid regular expression: {reason}")]
    BadRegex {
        /// The pattern from the probe.
        pattern: String,
        /// What the regex parser said.
        reason: String,
    },
    /// Both sides read fine, and the comparison does not hold.
    #[error("{observed} {verb} {expected}")]
    Unmet {
        /// The observed value, as it is shown (strings quoted).
        observed: String,
        /// The negated comparison, e.g. "is not >".
        verb: &'static str,
        /// The expected value, as it is shown.
        expected: String,
    },
}

/// Checks `observed` against `comparison`, by the rules of this module's documentation.
pub(crate) fn compare(observed: &str, comparison: &Comparison) -> Result<(), CompareFailure> {
    match Expected::read(comparison)? {
        Expected::Int(want) => {
            let observed = observed.trim();
            let got = read_int(observed).ok_or_else(|| CompareFailure::Observed {
                observed: observed.to_string(),
                kind: "an integer",
            })?;
            let shown = comparison.value.trim();
            ordered(got.partial_cmp(&want), comparison.criteria, observed, shown)
        }
        Expected::Float(want) => {
            let observed = observed.trim();
            let got = Float::parse(observed).ok_or_else(|| CompareFailure::Observed {
                observed: observed.to_string(),
                kind: "a number",
            })?;
            let shown = comparison.value.trim();
            ordered(got.partial_cmp(&want), comparison.criteria, observed, shown)
        }
        Expected::Text(pattern) => {
            let observed = observed.trim_end_matches(['\n', '\r']);
            compare_strings(observed, &comparison.value, comparison.criteria, pattern)
        }
    }
}

/// Whether `comparison`'s expected value can be compared with anything: it reads as the
/// comparison's type (an `int` a whole number, a `float` a finite number), a `matches`
/// pattern compiles, and `contains`/`matches` are not used with a number type. The
/// runner fails every check of such a probe with this same failure; validation calls it
/// to refuse the probe before a run.
#[cfg(test)]
pub(crate) fn check_expected(comparison: &Comparison) -> Result<(), CompareFailure> {
    Expected::read(comparison).map(|_| ())
}

/// The expected side of a comparison, read once.
enum Expected {
    Int(Decimal),
    Float(Float),
    /// A string; the compiled pattern for `matches`.
    Text(Option<Regex>),
}

impl Expected {
    fn read(comparison: &Comparison) -> Result<Expected, CompareFailure> {
        let number_type = match comparison.value_type {
            ValueType::Int => Some("int"),
            ValueType::Float => Some("float"),
            ValueType::String => None,
        };
        if let (Some(value_type), Comparator::Contains | Comparator::Matches) =
            (number_type, comparison.criteria)
        {
            return Err(CompareFailure::NotForNumbers {
                criteria: comparator_name(comparison.criteria),
                value_type,
            });
        }
        let expected = comparison.value.trim();
        let refused = |kind: &'static str| CompareFailure::Expected {
            expected: comparison.value.clone(),
            kind,
        };
        match comparison.value_type {
            ValueType::Int => read_int(expected)
                .map(Expected::Int)
                .ok_or_else(|| refused("an integer")),
            ValueType::Float => match Float::parse(expected) {
                Some(value @ Float::Finite(_)) => Ok(Expected::Float(value)),
                Some(_) => Err(refused(
                    "a finite number (NaN and infinities cannot be thresholds)",
                )),
                None => Err(refused("a number")),
            },
            ValueType::String if comparison.criteria == Comparator::Matches => {
                let pattern = &comparison.value;
                regex(pattern)
                    .map(|compiled| Expected::Text(Some(compiled)))
                    .map_err(|reason| CompareFailure::BadRegex {
                        pattern: pattern.clone(),
                        reason,
                    })
            }
            ValueType::String => Ok(Expected::Text(None)),
        }
    }
}

/// An integer: decimal text whose exact value is whole (`42`, `042`, `4.2e1`, `42.0`).
fn read_int(text: &str) -> Option<Decimal> {
    Decimal::parse(text).filter(Decimal::is_whole)
}

/// Judges a number comparison from the order of the two sides (`None`: unordered, as
/// NaN is); `shown_*` are the values as written, for the failure text.
fn ordered(
    order: Option<Ordering>,
    criteria: Comparator,
    shown_got: &str,
    shown_want: &str,
) -> Result<(), CompareFailure> {
    let holds = match (criteria, order) {
        (Comparator::Ne, order) => order != Some(Ordering::Equal),
        (_, None) => false,
        (Comparator::Eq, Some(order)) => order.is_eq(),
        (Comparator::Lt, Some(order)) => order.is_lt(),
        (Comparator::Le, Some(order)) => order.is_le(),
        (Comparator::Gt, Some(order)) => order.is_gt(),
        (Comparator::Ge, Some(order)) => order.is_ge(),
        // Refused when the expected side was read.
        (Comparator::Contains | Comparator::Matches, Some(_)) => false,
    };
    if holds {
        Ok(())
    } else {
        Err(CompareFailure::Unmet {
            observed: shown_got.to_string(),
            verb: negated(criteria),
            expected: shown_want.to_string(),
        })
    }
}

fn compare_strings(
    got: &str,
    want: &str,
    criteria: Comparator,
    pattern: Option<Regex>,
) -> Result<(), CompareFailure> {
    let holds = match criteria {
        Comparator::Eq => got == want,
        Comparator::Ne => got != want,
        Comparator::Lt => got < want,
        Comparator::Le => got <= want,
        Comparator::Gt => got > want,
        Comparator::Ge => got >= want,
        Comparator::Contains => got.contains(want),
        Comparator::Matches => pattern.is_some_and(|pattern| pattern.is_match(got)),
    };
    if holds {
        return Ok(());
    }
    let expected = match criteria {
        Comparator::Matches => format!("/{want}/"),
        _ => format!("{want:?}"),
    };
    Err(CompareFailure::Unmet {
        observed: format!("{:?}", shorten(got, 200)),
        verb: negated(criteria),
        expected,
    })
}

/// The comparator as written in catalog files.
fn comparator_name(criteria: Comparator) -> &'static str {
    match criteria {
        Comparator::Eq => "eq",
        Comparator::Ne => "ne",
        Comparator::Lt => "lt",
        Comparator::Le => "le",
        Comparator::Gt => "gt",
        Comparator::Ge => "ge",
        Comparator::Contains => "contains",
        Comparator::Matches => "matches",
    }
}

/// The words for a comparison that did not hold.
fn negated(criteria: Comparator) -> &'static str {
    match criteria {
        Comparator::Eq => "is not ==",
        Comparator::Ne => "is not !=",
        Comparator::Lt => "is not <",
        Comparator::Le => "is not <=",
        Comparator::Gt => "is not >",
        Comparator::Ge => "is not >=",
        Comparator::Contains => "does not contain",
        Comparator::Matches => "does not match",
    }
}

/// At most `max` characters of `text`, with an ellipsis when cut.
pub(super) fn shorten(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

/// Compiled regular expressions by pattern; cleared when it grows past this many.
const REGEX_CACHE_LIMIT: usize = 1024;

static REGEX_CACHE: LazyLock<Mutex<HashMap<String, Regex>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// `pattern` compiled, from the cache when it was compiled before.
pub(super) fn regex(pattern: &str) -> Result<Regex, String> {
    // A poisoned cache only means another thread panicked mid-insert: the map is still
    // usable, so take it back rather than fail every probe from now on.
    let mut cache = REGEX_CACHE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(compiled) = cache.get(pattern) {
        return Ok(compiled.clone());
    }
    let compiled = Regex::new(pattern).map_err(|err| err.to_string())?;
    if cache.len() >= REGEX_CACHE_LIMIT {
        cache.clear();
    }
    cache.insert(pattern.to_string(), compiled.clone());
    Ok(compiled)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmp(value_type: ValueType, criteria: Comparator, value: &str) -> Comparison {
        Comparison {
            value_type,
            criteria,
            value: value.to_string(),
        }
    }

    #[test]
    fn integers_compare_as_numbers_not_text() {
        assert_eq!(
            compare("10\n", &cmp(ValueType::Int, Comparator::Gt, "9")),
            Ok(())
        );
        assert_eq!(
            compare("4.2e1", &cmp(ValueType::Int, Comparator::Eq, "42")),
            Ok(())
        );
        let err = compare("7", &cmp(ValueType::Int, Comparator::Ge, "10")).unwrap_err();
        assert_eq!(err.to_string(), "7 is not >= 10");
        let err = compare("7.5", &cmp(ValueType::Int, Comparator::Eq, "7")).unwrap_err();
        assert_eq!(err.to_string(), "\"7.5\" is not an integer");
    }

    #[test]
    fn floats_and_strings_follow_their_criteria() {
        assert_eq!(
            compare("0.25", &cmp(ValueType::Float, Comparator::Lt, "0.5")),
            Ok(())
        );
        assert_eq!(
            compare("NaN", &cmp(ValueType::Float, Comparator::Ne, "1")),
            Ok(())
        );
        assert_eq!(
            compare("abc", &cmp(ValueType::String, Comparator::Lt, "abd")),
            Ok(())
        );
        let err =
            compare("ready", &cmp(ValueType::String, Comparator::Matches, "^ok")).unwrap_err();
        assert_eq!(err.to_string(), "\"ready\" does not match /^ok/");
        let err = compare("1", &cmp(ValueType::Float, Comparator::Contains, "1")).unwrap_err();
        assert!(matches!(err, CompareFailure::NotForNumbers { .. }));
        let err = compare("x", &cmp(ValueType::String, Comparator::Matches, "(")).unwrap_err();
        assert!(matches!(err, CompareFailure::BadRegex { .. }));
    }

    fn holds(observed: &str, value_type: ValueType, criteria: Comparator, value: &str) -> bool {
        compare(observed, &cmp(value_type, criteria, value)).is_ok()
    }

    #[test]
    fn integers_keep_every_digit() {
        use Comparator::*;
        // 2^53 + 1 and 2^53 are one f64: they used to compare equal.
        assert!(!holds(
            "9007199254740993",
            ValueType::Int,
            Eq,
            "9007199254740992"
        ));
        assert!(holds(
            "9007199254740993",
            ValueType::Int,
            Gt,
            "9007199254740992"
        ));
        assert!(holds(
            "9223372036854775807",
            ValueType::Int,
            Eq,
            "9223372036854775807"
        ));
        assert!(holds(
            "9223372036854775807",
            ValueType::Int,
            Lt,
            "9223372036854775808"
        ));
        assert!(holds(
            "-9223372036854775808",
            ValueType::Int,
            Eq,
            "-9223372036854775808"
        ));
        assert!(holds(
            "18446744073709551616",
            ValueType::Int,
            Gt,
            "18446744073709551615"
        ));
        assert!(holds(
            "9007199254740993.0",
            ValueType::Int,
            Ne,
            "9007199254740992"
        ));
        let err = compare(
            "9007199254740993",
            &cmp(ValueType::Int, Eq, "9007199254740992"),
        );
        assert_eq!(
            err.unwrap_err().to_string(),
            "9007199254740993 is not == 9007199254740992"
        );
    }

    #[test]
    fn integers_are_decimal_text_of_a_whole_value() {
        use Comparator::*;
        for (observed, expected) in [
            ("017", "17"),
            ("+5", "5"),
            ("1e3", "1000"),
            (" 5 \n", "5"),
            ("5.0", "5"),
            ("-0", "0"),
        ] {
            assert!(
                holds(observed, ValueType::Int, Eq, expected),
                "{observed:?}"
            );
        }
        assert!(!holds("017", ValueType::Int, Eq, "15"), "017 is not octal");
        for observed in ["0x10", "7.5", "1_000", "NaN", "+Inf", "5 0", ""] {
            let err = compare(observed, &cmp(ValueType::Int, Eq, "1")).unwrap_err();
            assert!(
                matches!(
                    err,
                    CompareFailure::Observed {
                        kind: "an integer",
                        ..
                    }
                ),
                "{observed:?}: {err}"
            );
        }
        let err = check_expected(&cmp(ValueType::Int, Eq, "0o17")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot be compared: the expected value \"0o17\" is not an integer"
        );
    }

    #[test]
    fn floats_compare_as_exact_decimals() {
        use Comparator::*;
        assert!(!holds("0.10000000000000001", ValueType::Float, Eq, "0.1"));
        assert!(holds("0.10000000000000001", ValueType::Float, Gt, "0.1"));
        assert!(holds("0.1", ValueType::Float, Eq, "1e-1"));
        assert!(holds(
            "9007199254740993",
            ValueType::Float,
            Gt,
            "9007199254740992"
        ));
        assert!(holds("3", ValueType::Float, Eq, "3.0"));
        assert!(holds("+Inf", ValueType::Float, Gt, "1e308"));
        assert!(holds("-Inf", ValueType::Float, Lt, "-1e308"));
        for criteria in [Eq, Lt, Le, Gt, Ge] {
            assert!(
                !holds("NaN", ValueType::Float, criteria, "0"),
                "{criteria:?}"
            );
        }
        assert!(holds("NaN", ValueType::Float, Ne, "0"));
    }

    #[test]
    fn non_finite_expected_floats_are_refused() {
        for value in ["NaN", "nan", "+Inf", "-Inf", "inf", "Infinity"] {
            let comparison = cmp(ValueType::Float, Comparator::Ne, value);
            let err = check_expected(&comparison).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    "cannot be compared: the expected value {value:?} is not a finite number \
                     (NaN and infinities cannot be thresholds)"
                )
            );
            assert_eq!(compare("1", &comparison), Err(err));
        }
        assert_eq!(
            check_expected(&cmp(ValueType::Float, Comparator::Lt, "1e400")),
            Ok(())
        );
    }

    #[test]
    fn strings_compare_exactly_but_for_the_observed_line_ends() {
        use Comparator::*;
        assert!(holds("ok\n", ValueType::String, Eq, "ok"));
        assert!(holds("ok\r\n\n", ValueType::String, Eq, "ok"));
        assert!(holds("  ok\n", ValueType::String, Eq, "  ok"));
        assert!(!holds("  ok\n", ValueType::String, Eq, "ok"));
        assert!(!holds("ok  \n", ValueType::String, Eq, "ok"));
        assert!(!holds("ok", ValueType::String, Eq, " ok "));
        assert!(!holds("OK", ValueType::String, Eq, "ok"));
        assert!(
            !holds("e\u{301}", ValueType::String, Eq, "\u{e9}"),
            "no normalisation"
        );
        assert!(
            holds("10", ValueType::String, Lt, "9"),
            "byte-wise, not numeric"
        );
    }

    #[test]
    fn check_expected_refuses_what_no_observed_value_could_meet() {
        let cases = [
            (
                cmp(ValueType::Int, Comparator::Eq, "ten"),
                "is not an integer",
            ),
            (
                cmp(ValueType::Int, Comparator::Eq, "7.5"),
                "is not an integer",
            ),
            (
                cmp(ValueType::Float, Comparator::Eq, "0,5"),
                "is not a number",
            ),
            (
                cmp(ValueType::Int, Comparator::Contains, "1"),
                "compares strings only",
            ),
            (
                cmp(ValueType::String, Comparator::Matches, "("),
                "not a valid regular",
            ),
        ];
        for (comparison, says) in cases {
            let err = check_expected(&comparison).unwrap_err().to_string();
            assert!(err.contains(says), "{comparison:?}: {err}");
        }
        for fine in [
            cmp(ValueType::Int, Comparator::Le, " 017 "),
            cmp(ValueType::Float, Comparator::Lt, "0.25"),
            cmp(ValueType::String, Comparator::Matches, "^ok$"),
            cmp(ValueType::String, Comparator::Eq, ""),
        ] {
            assert_eq!(check_expected(&fine), Ok(()), "{fine:?}");
        }
    }

    #[test]
    fn long_text_is_shortened_on_a_char_boundary() {
        assert_eq!(shorten("héllo", 2), "hé…");
        assert_eq!(shorten("hé", 2), "hé");
    }
}
