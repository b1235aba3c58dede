//! Waiting between tries of an HTTP delivery that failed transiently, shared by the
//! bridges and the notifier: exponential backoff with jitter, and the server's
//! `Retry-After`.
//!
//! The rule: a wait is the next backoff delay (factor 2 from a first delay, full jitter,
//! capped at a maximum), or the server's `Retry-After` when it asks for longer (RFC 9110
//! section 10.2.3; Slack's incoming webhooks answer 429 with one, and keep sending faster
//! than it asks and the app may be disabled).

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

/// Exponential delays (factor 2) from `first` (at most `max`) up to `max`, with jitter,
/// without end.
pub(crate) fn backoff(first: Duration, max: Duration) -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_jitter()
        .with_min_delay(first.min(max))
        .with_max_delay(max)
        .without_max_times()
        .build()
}

/// The wait before the next try: the next backoff delay, at most `max`, or
/// `retry_after` when the server asked for longer.
pub(crate) fn next_wait(
    delays: &mut impl Iterator<Item = Duration>,
    max: Duration,
    retry_after: Option<Duration>,
) -> Duration {
    let delay = delays.next().unwrap_or(max).min(max);
    retry_after.map_or(delay, |asked| asked.max(delay))
}

/// `Retry-After` as delay-seconds or an HTTP-date (RFC 9110 section 10.2.3); a date in
/// the past is no wait; anything else is `None`.
pub(crate) fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let wait = date.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(wait.to_std().unwrap_or(Duration::ZERO))
}

/// The `Retry-After` of `response`, when it has a readable one.
pub(crate) fn retry_after_of(response: &reqwest::Response) -> Option<Duration> {
    response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIRST: Duration = Duration::from_millis(250);

    #[test]
    fn waits_grow_to_the_cap_with_jitter_and_honour_retry_after() {
        let max = Duration::from_secs(2);
        let mut delays = backoff(FIRST, max);
        let waits: Vec<Duration> = (0..12).map(|_| next_wait(&mut delays, max, None)).collect();
        assert!(waits.iter().all(|w| *w <= max), "{waits:?}");
        assert!(waits[0] >= FIRST, "{waits:?}");
        assert!(waits[11] >= Duration::from_secs(1), "grows: {waits:?}");
        let distinct: std::collections::HashSet<_> = waits[..4].iter().collect();
        assert!(distinct.len() > 1, "jitter: {waits:?}");
        assert_eq!(
            next_wait(&mut delays, max, Some(Duration::from_secs(7))),
            Duration::from_secs(7)
        );
        let mut fresh = backoff(FIRST, max);
        assert!(next_wait(&mut fresh, max, Some(Duration::ZERO)) >= FIRST);
    }

    #[test]
    fn retry_after_in_seconds_and_as_a_date() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
