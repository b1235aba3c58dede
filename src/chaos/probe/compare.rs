//! Typed comparisons of an observed value with an expected one, as LitmusChaos's
//! `comparator` does them: command probes judge their standard output with them and
//! Prometheus probes their sample value.
//!
//! Both sides are read as the comparison's type (`int`, `float` or `string`). Strings
//! order byte-wise; `contains` and `matches` (a regular expression search, not a full
//! match) apply to strings only. Regular expressions are compiled once and kept in a
//! small cache, since the same probe is checked again and again.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

use regex::Regex;

use crate::catalog::experiment::{Comparator, Comparison, ValueType};

/// Why an observed value did not satisfy a comparison.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CompareFailure {
    /// The observed value does not read as the comparison's type.
    #[error("{observed:?} is not {kind}")]
    Observed {
        /// The observed text.
        observed: String,
        /// What it should have been, e.g. "an integer".
        kind: &'static str,
    },
    /// The expected value in the probe does not read as the comparison's type.
    #[error("the expected value {expected:?} is not {kind}")]
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

/// Checks `observed` (surrounding whitespace ignored) against `comparison`.
pub fn compare(observed: &str, comparison: &Comparison) -> Result<(), CompareFailure> {
    let observed = observed.trim();
    let expected = comparison.value.trim();
    match comparison.value_type {
        ValueType::Int => {
            let want = read_int(expected).ok_or_else(|| CompareFailure::Expected {
                expected: comparison.value.clone(),
                kind: "an integer",
            })?;
            let got = read_int(observed).ok_or_else(|| CompareFailure::Observed {
                observed: observed.to_string(),
                kind: "an integer",
            })?;
            ordered(got, want, comparison.criteria, "int")
        }
        ValueType::Float => {
            let want = read_float(expected).ok_or_else(|| CompareFailure::Expected {
                expected: comparison.value.clone(),
                kind: "a number",
            })?;
            let got = read_float(observed).ok_or_else(|| CompareFailure::Observed {
                observed: observed.to_string(),
                kind: "a number",
            })?;
            ordered(got, want, comparison.criteria, "float")
        }
        ValueType::String => compare_strings(observed, expected, comparison.criteria),
    }
}

/// An integer, also when written as a float with no fraction (Prometheus writes `"42"`,
/// but a computed value may come back as `"4.2e1"`).
fn read_int(text: &str) -> Option<i64> {
    if let Ok(value) = text.parse::<i64>() {
        return Some(value);
    }
    let value = text.parse::<f64>().ok()?;
    // i64::MAX as f64 rounds up to 2^63, which no i64 holds: keep strictly below it.
    let in_range = value >= i64::MIN as f64 && value < i64::MAX as f64;
    (value.is_finite() && value.fract() == 0.0 && in_range).then_some(value as i64)
}

/// A float; `NaN` and `+Inf` as Prometheus writes them read too.
fn read_float(text: &str) -> Option<f64> {
    text.parse::<f64>().ok()
}

/// Compares two numbers; `contains`/`matches` are refused.
fn ordered<T: PartialOrd + std::fmt::Display>(
    got: T,
    want: T,
    criteria: Comparator,
    value_type: &'static str,
) -> Result<(), CompareFailure> {
    let holds = match criteria {
        Comparator::Eq => got == want,
        Comparator::Ne => got != want,
        Comparator::Lt => got < want,
        Comparator::Le => got <= want,
        Comparator::Gt => got > want,
        Comparator::Ge => got >= want,
        Comparator::Contains | Comparator::Matches => {
            return Err(CompareFailure::NotForNumbers {
                criteria: comparator_name(criteria),
                value_type,
            });
        }
    };
    if holds {
        Ok(())
    } else {
        Err(CompareFailure::Unmet {
            observed: got.to_string(),
            verb: negated(criteria),
            expected: want.to_string(),
        })
    }
}

fn compare_strings(got: &str, want: &str, criteria: Comparator) -> Result<(), CompareFailure> {
    let holds = match criteria {
        Comparator::Eq => got == want,
        Comparator::Ne => got != want,
        Comparator::Lt => got < want,
        Comparator::Le => got <= want,
        Comparator::Gt => got > want,
        Comparator::Ge => got >= want,
        Comparator::Contains => got.contains(want),
        Comparator::Matches => {
            let pattern = regex(want).map_err(|reason| CompareFailure::BadRegex {
                pattern: want.to_string(),
                reason,
            })?;
            pattern.is_match(got)
        }
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

    #[test]
    fn long_text_is_shortened_on_a_char_boundary() {
        assert_eq!(shorten("héllo", 2), "hé…");
        assert_eq!(shorten("hé", 2), "hé");
    }
}
