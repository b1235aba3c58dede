//! Probes: checks that watch the target while faults are active.
//!
//! A probe is judged by [`check`]: one check makes up to `attempts` attempts, each bounded
//! by `timeout`, waiting `interval` after a failed one, and passes as soon as one attempt
//! passes. A connection error, a timeout or a response that misses the criteria is a
//! probe failure with a readable reason, never an engine error. When a probe runs (its
//! mode, `initial_delay`, `polling_interval`, `stop_on_failure`) is the runner's business.
//!
//! Each probe type lives in its own module: [`http`], [`tcp`], [`command`] and
//! [`prometheus`]; [`compare`] holds the typed comparisons the last two share, `json` the
//! HTTP probe's exact JSON equality, and `number` the exact decimal numbers both use.

pub mod command;
pub mod compare;
pub mod http;
pub(crate) mod json;
pub(crate) mod number;
pub mod prometheus;
pub mod tcp;

use std::io;
use std::time::{Duration, Instant};

use tracing::Instrument;

use crate::catalog::experiment::{Probe, ProbeType};

/// The outcome of one check of a probe.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    /// Whether the last attempt met the probe's criteria.
    pub passed: bool,
    /// Attempts made (1 when the first passed).
    pub attempts: u32,
    /// Why the last failed attempt failed (a connection error is a failure, not an error).
    pub error: Option<String>,
    /// Time spent, all attempts included.
    pub took: Duration,
}

/// Checks `probe` once, retrying failed attempts as its run properties say.
///
/// `attempts` is at least 1 (validation refuses 0). Each attempt is cut off after
/// `timeout` (for a command probe, the command's own `timeout` when that is shorter); a
/// command still running then is killed together with the processes it started.
pub async fn check(probe: &Probe) -> Check {
    let started = Instant::now();
    let props = &probe.run_properties;
    let attempts = props.attempts.max(1);
    let limit = attempt_limit(probe);
    let mut last_error = None;
    for attempt in 1..=attempts {
        let outcome = match tokio::time::timeout(limit, attempt_once(&probe.probe_type))
            .instrument(crate::telemetry::traces::probe_attempt_span(attempt))
            .await
        {
            Ok(outcome) => outcome,
            Err(_) => Err(timed_out(&probe.probe_type, limit)),
        };
        match outcome {
            Ok(()) => {
                return Check {
                    passed: true,
                    attempts: attempt,
                    error: None,
                    took: started.elapsed(),
                };
            }
            Err(reason) => last_error = Some(reason),
        }
        if attempt < attempts {
            tokio::time::sleep(props.interval.duration()).await;
        }
    }
    Check {
        passed: false,
        attempts,
        error: last_error,
        took: started.elapsed(),
    }
}

/// One attempt, unbounded in time (the caller bounds it): `Err` says why the target did
/// not meet the criteria (or could not be reached).
///
/// Each type's attempt is boxed: the check future then stays small (a few hundred bytes
/// rather than the largest type's state), which matters with ten thousand probes waiting.
async fn attempt_once(probe_type: &ProbeType) -> Result<(), String> {
    match probe_type {
        ProbeType::Http(http) => Box::pin(http::attempt(http))
            .await
            .map_err(|e| e.to_string()),
        ProbeType::Tcp(tcp) => Box::pin(tcp::attempt(tcp)).await.map_err(|e| e.to_string()),
        ProbeType::Command(command) => Box::pin(command::attempt(command))
            .await
            .map_err(|e| e.to_string()),
        ProbeType::Prometheus(prometheus) => Box::pin(prometheus::attempt(prometheus))
            .await
            .map_err(|e| e.to_string()),
    }
}

/// How long one attempt of `probe` may take.
fn attempt_limit(probe: &Probe) -> Duration {
    let timeout = probe.run_properties.timeout.duration();
    match &probe.probe_type {
        ProbeType::Command(c) => c
            .command
            .timeout
            .map_or(timeout, |own| timeout.min(own.duration())),
        _ => timeout,
    }
}

/// The failure of an attempt cut off after `limit`, in the probe type's words.
fn timed_out(probe_type: &ProbeType, limit: Duration) -> String {
    match probe_type {
        ProbeType::Http(http) => http::timed_out(http, limit).to_string(),
        ProbeType::Tcp(tcp) => tcp::timed_out(tcp, limit).to_string(),
        ProbeType::Command(command) => command::timed_out(command, limit).to_string(),
        ProbeType::Prometheus(prometheus) => prometheus::timed_out(prometheus, limit).to_string(),
    }
}

/// A short reason for an I/O error: "connection refused" rather than
/// "Connection refused (os error 111)".
pub(crate) fn io_reason(err: &io::Error) -> String {
    use io::ErrorKind::*;
    match err.kind() {
        ConnectionRefused | ConnectionReset | ConnectionAborted | NotConnected
        | AddrNotAvailable | TimedOut | HostUnreachable | NetworkUnreachable | BrokenPipe
        | UnexpectedEof => err.kind().to_string(),
        _ => err.to_string(),
    }
}

/// The clearest reason in an error's source chain: the innermost I/O error when there is
/// one (a refused connection), else the innermost message.
pub(crate) fn root_reason(err: &(dyn std::error::Error + 'static)) -> String {
    let mut innermost = err.to_string();
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            return io_reason(io);
        }
        innermost = e.to_string();
        current = e.source();
    }
    innermost
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::experiment::{ProbeMode, RunProperties, TcpProbe};

    #[test]
    fn a_waiting_check_stays_small() {
        // Ten thousand probes each hold one check future: it must not carry the largest
        // probe type's state inline (a command attempt's buffers were 17 KB of it).
        let probe = Probe {
            name: "small".to_string(),
            mode: ProbeMode::Continuous,
            run_properties: RunProperties::default(),
            probe_type: ProbeType::Tcp(TcpProbe {
                address: "127.0.0.1:1".to_string(),
            }),
        };
        let size = std::mem::size_of_val(&check(&probe));
        assert!(size <= 1024, "a check future takes {size} bytes");
    }

    #[test]
    fn io_errors_read_short() {
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert_eq!(io_reason(&refused), "connection refused");
    }
}
