//! What a committed offset of the commands topic remembers for the stale rule: the
//! newest `issued_at` taken for each flag read from that partition, so a bridge that
//! restarts (or takes the partition over) still skips a late, older command.
//!
//! Text (the commit's metadata): `cgu1;<flag key>=<unix milliseconds>,...`, newest
//! first. Flag keys are `project/environment/flag` of key names (`A-Z a-z 0-9 . _ -`),
//! so they hold no `=`, `,` or `;`. Times are cut to the millisecond: a command issued
//! within the same millisecond as a remembered one counts as equal (taken, not stale).
//!
//! The rule that keeps the text under the broker's `offset.metadata.max.bytes` (4096
//! bytes by default): entries are written newest first while they fit in [`MAX_BYTES`];
//! the oldest flags are left out (their late commands are then judged without memory).

use chrono::{DateTime, TimeZone, Utc};

/// Longest text written.
pub const MAX_BYTES: usize = 3000;
const PREFIX: &str = "cgu1;";

/// The text for `newest` (flag key, newest `issued_at`), newest first, at most
/// [`MAX_BYTES`] long.
pub fn encode(newest: &[(&str, DateTime<Utc>)]) -> String {
    let mut text = PREFIX.to_string();
    for (key, at) in newest {
        let entry = format!("{key}={}", at.timestamp_millis());
        let separator = usize::from(text.len() > PREFIX.len());
        if text.len() + separator + entry.len() > MAX_BYTES {
            break;
        }
        if separator == 1 {
            text.push(',');
        }
        text.push_str(&entry);
    }
    text
}

/// The entries of a text [`encode`] wrote; nothing for any other text (empty, another
/// writer's, or damaged entries, which are skipped).
pub fn decode(text: &str) -> Vec<(String, DateTime<Utc>)> {
    let Some(entries) = text.strip_prefix(PREFIX) else {
        return Vec::new();
    };
    entries
        .split(',')
        .filter_map(|entry| {
            let (key, millis) = entry.split_once('=')?;
            let at = Utc.timestamp_millis_opt(millis.parse().ok()?).single()?;
            (!key.is_empty()).then(|| (key.to_string(), at))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(millis: i64) -> DateTime<Utc> {
        Utc.timestamp_millis_opt(millis).unwrap()
    }

    #[test]
    fn round_trip_and_other_texts_read_as_nothing() {
        let newest = [
            ("shop/production/checkout-v2", at(1_796_000_000_123)),
            ("shop/production/search", at(1_796_000_000_000)),
        ];
        let text = encode(&newest);
        assert_eq!(
            text,
            "cgu1;shop/production/checkout-v2=1796000000123,shop/production/search=1796000000000"
        );
        let read = decode(&text);
        assert_eq!(read.len(), 2);
        assert_eq!(
            read[0],
            ("shop/production/checkout-v2".to_string(), newest[0].1)
        );
        assert_eq!(decode(""), vec![]);
        assert_eq!(decode("cg3;r=1"), vec![], "another writer's");
        assert_eq!(decode("cgu1;a=x,b=5,=7"), vec![("b".to_string(), at(5))]);
        assert_eq!(encode(&[]), "cgu1;");
    }

    #[test]
    fn the_oldest_flags_are_left_out_to_fit() {
        let keys: Vec<String> = (0..100)
            .map(|n| format!("project-{n:03}/production/{}", "f".repeat(40)))
            .collect();
        let newest: Vec<(&str, DateTime<Utc>)> = keys
            .iter()
            .enumerate()
            .map(|(n, key)| (key.as_str(), at(2_000_000_000_000 - n as i64)))
            .collect();
        let text = encode(&newest);
        assert!(text.len() <= MAX_BYTES, "{}", text.len());
        let read = decode(&text);
        assert!(read.len() > 20 && read.len() < 100, "{}", read.len());
        assert_eq!(read[0].0, keys[0], "the newest kept");
    }
}
