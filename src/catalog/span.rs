//! Durations as catalog files write them: `200ms`, `30s`, `5m`, `1h`, or `1m30s`.
//!
//! A dedicated type (rather than humantime) keeps the accepted grammar small, lets the
//! JSON Schema carry the exact pattern, and makes a bad duration a schema error that is
//! reported together with every other problem in the file.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The regular expression every duration string must match (also used by the schema).
pub(crate) const SPAN_PATTERN: &str = r"^([0-9]+(ms|s|m|h))+$";

/// A non-negative duration written as a sequence of `<integer><unit>` parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Span(pub Duration);

/// Why a duration string was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("'{text}' is not a duration (write e.g. 200ms, 30s, 5m, 1h or 1m30s)")]
pub struct SpanError {
    /// The text as written.
    pub(crate) text: String,
}

impl Span {
    /// A span of whole milliseconds.
    pub const fn from_millis(ms: u64) -> Self {
        Span(Duration::from_millis(ms))
    }

    /// The duration this span stands for.
    pub const fn duration(self) -> Duration {
        self.0
    }
}

impl FromStr for Span {
    type Err = SpanError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = || SpanError {
            text: text.to_string(),
        };
        if text.is_empty() {
            return Err(err());
        }
        let mut total = Duration::ZERO;
        let mut rest = text;
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return Err(err());
            }
            let value: u64 = rest[..digits].parse().map_err(|_| err())?;
            rest = &rest[digits..];
            let (unit, len) = if rest.starts_with("ms") {
                (Duration::from_millis(1), 2)
            } else if rest.starts_with('s') {
                (Duration::from_secs(1), 1)
            } else if rest.starts_with('m') {
                (Duration::from_secs(60), 1)
            } else if rest.starts_with('h') {
                (Duration::from_secs(3600), 1)
            } else {
                return Err(err());
            };
            rest = &rest[len..];
            let part = unit
                .checked_mul(u32::try_from(value).map_err(|_| err())?)
                .ok_or_else(err)?;
            total = total.checked_add(part).ok_or_else(err)?;
        }
        Ok(Span(total))
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms == 0 {
            return f.write_str("0s");
        }
        let (h, rem) = (ms / 3_600_000, ms % 3_600_000);
        let (m, rem) = (rem / 60_000, rem % 60_000);
        let (s, ms) = (rem / 1000, rem % 1000);
        for (value, unit) in [(h, "h"), (m, "m"), (s, "s"), (ms, "ms")] {
            if value > 0 {
                write!(f, "{value}{unit}")?;
            }
        }
        Ok(())
    }
}

impl Serialize for Span {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Span {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": SPAN_PATTERN,
            "description": "A duration: integer parts with units ms, s, m, h (e.g. 200ms, 30s, 1m30s).",
            "examples": ["200ms", "30s", "1m30s"]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_round_trip() {
        for (text, ms) in [
            ("200ms", 200),
            ("30s", 30_000),
            ("1m30s", 90_000),
            ("1h", 3_600_000),
        ] {
            let span: Span = text.parse().unwrap();
            assert_eq!(span.0.as_millis(), ms);
            assert_eq!(span.to_string(), text);
        }
    }

    #[test]
    fn refuses_what_is_not_a_duration() {
        for text in ["", "10", "ms", "1.5s", "10 s", "-1s", "3d"] {
            assert!(text.parse::<Span>().is_err(), "{text} should be refused");
        }
    }
}
