//! The guard watch: a pipeline's `guard` probes checked after its `enable`, until a probe
//! fails, the guard's deadline passes, or the caller stops it.
//!
//! Each probe is checked by the experiment probe code ([`crate::chaos::probe::check`]:
//! the same criteria, `attempts`, `interval` and `timeout`, the same failure wording), on
//! the experiments' polling grid ([`crate::chaos::run::next_tick`]): the first check at
//! `started_at` plus its `initial_delay` (at once when that has passed, as on a resume
//! after a restart), then every `polling_interval`, start to start. A check starts only
//! before the deadline. The first failed check (every attempt failed) fires the guard;
//! a check still running at the deadline or at `stop` is dropped, not counted.
//!
//! The rule that keeps it cheap for guards that last hours: one future, polled by the
//! caller's task. The probes' loops are polled together inside it (no task or thread per
//! probe beyond what a probe's own check needs, such as a command's child process), and
//! between checks everything sleeps on timers. A panic inside a check is caught and
//! counted as a failed check, as the experiment runner counts one.
//!
//! What the watch returns is scrubbed of secrets as run records are: the process's
//! installed secrets ([`redact::installed`]) plus the credentials of the guard's probes
//! ([`guard::credential_fields`]).

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Mutex, PoisonError};
use std::task::Poll;

use chrono::{DateTime, Utc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::catalog::experiment::Probe;
use crate::catalog::guard::{self, Guard};
use crate::chaos::probe::{self, Check};
use crate::chaos::run::{RunContext, next_tick};
use crate::contract::ProbeResult;
use crate::contract::run_record::Verdict;
use crate::telemetry::redact::{self, Secrets};

/// How a watch ended.
#[derive(Debug, Clone, PartialEq)]
pub struct GuardWatch {
    /// Why it fired, in one line (`guard checkout-errors failed 4 min after enable:
    /// error rate 0.07 > 0.02`: the probe's name, the time from `started_at` to the end
    /// of the failed check in whole minutes, or whole seconds under a minute, and the
    /// check's last error as the probe code words it, secrets masked); `None` when it
    /// expired or was stopped.
    pub fired: Option<String>,
    /// `stop` (or the run context's `cancel`) ended it before a failure or the deadline.
    pub stopped: bool,
    /// One entry per guard probe, in guard order, as run records have them: `failed` for
    /// the probe that fired, `passed` for one whose checks all passed so far, `skipped`
    /// for one not checked yet; `attempts` summed over its checks, `last_error` of its
    /// failed check, the start of its first check and the end of its last.
    pub probes: Vec<ProbeResult>,
    /// When it ended.
    pub ended_at: DateTime<Utc>,
}

/// Checks `guard`'s probes from now until `deadline` (the guard began at `started_at`,
/// which may be long past when a new owner resumes the guard); returns at the first
/// failure, at the deadline (at once if it has passed), or when `stop` or
/// `context.cancel` fires (promptly: a check in progress is dropped). Never panics on a
/// probe; a probe's failure to reach its target is a failed check.
pub async fn watch(
    guard: &Guard,
    started_at: DateTime<Utc>,
    deadline: DateTime<Utc>,
    context: &RunContext,
    stop: &CancellationToken,
) -> GuardWatch {
    let clock = Clock::now();
    let deadline_at = clock.instant(deadline);
    let tallies = Mutex::new(vec![Tally::default(); guard.probes.len()]);
    let mut loops: Vec<Pin<Box<dyn Future<Output = Check> + Send + '_>>> = guard
        .probes
        .iter()
        .enumerate()
        .map(|(p, probe)| {
            let first = clock.instant(started_at) + probe.run_properties.initial_delay.duration();
            Box::pin(probe_loop(probe, p, first, deadline_at, &tallies))
                as Pin<Box<dyn Future<Output = Check> + Send + '_>>
        })
        .collect();
    let first_failure = std::future::poll_fn(|cx| {
        for (p, probe_loop) in loops.iter_mut().enumerate() {
            match std::panic::catch_unwind(AssertUnwindSafe(|| probe_loop.as_mut().poll(cx))) {
                Ok(Poll::Ready(check)) => return Poll::Ready((p, check)),
                Ok(Poll::Pending) => {}
                Err(payload) => return Poll::Ready((p, panicked(p, payload.as_ref(), &tallies))),
            }
        }
        Poll::Pending
    });
    let failure = tokio::select! {
        biased;
        () = stop.cancelled() => None,
        () = context.cancel.cancelled() => None,
        failure = first_failure => Some(failure),
        () = tokio::time::sleep_until(deadline_at) => None,
    };
    drop(loops);
    let ended_at = Utc::now();
    let stopped = failure.is_none() && (stop.is_cancelled() || context.cancel.is_cancelled());
    let secrets = secrets(guard);
    let tallies = tallies.into_inner().unwrap_or_else(PoisonError::into_inner);
    let fired_probe = failure.as_ref().map(|(p, _)| *p);
    let probes: Vec<ProbeResult> = guard
        .probes
        .iter()
        .zip(&tallies)
        .enumerate()
        .map(|(p, (probe, tally))| probe_result(probe, tally, fired_probe == Some(p), &secrets))
        .collect();
    let fired = failure.map(|(p, check)| {
        let probe = &guard.probes[p];
        let at = tallies[p].last_check_at.unwrap_or(ended_at);
        let error = check.error.as_deref().unwrap_or("the check failed");
        let reason = format!(
            "guard {} failed {} after enable: {error}",
            probe.name,
            since(started_at, at)
        );
        let reason = secrets.scrub(&reason).into_owned();
        tracing::info!(probe = %probe.name, %reason, "guard fired");
        reason
    });
    GuardWatch {
        fired,
        stopped,
        probes,
        ended_at,
    }
}

/// One probe's checks so far.
#[derive(Debug, Clone, Default)]
struct Tally {
    checks: u32,
    attempts: u32,
    last_error: Option<String>,
    first_check_at: Option<DateTime<Utc>>,
    last_check_at: Option<DateTime<Utc>>,
}

impl Tally {
    /// Counts `check`, which ended now.
    fn record(&mut self, check: &Check) {
        self.checks += 1;
        self.attempts += check.attempts;
        if !check.passed {
            self.last_error = Some(
                check
                    .error
                    .clone()
                    .unwrap_or_else(|| "the check failed".to_string()),
            );
        }
        let ended = Utc::now();
        let started = chrono::Duration::from_std(check.took)
            .ok()
            .and_then(|took| ended.checked_sub_signed(took))
            .unwrap_or(ended);
        self.first_check_at = Some(self.first_check_at.map_or(started, |t| t.min(started)));
        self.last_check_at = Some(ended);
    }
}

/// Checks `probe` (index `p`) on its polling grid from `first` until a check fails
/// (returned); starts no check at or after `deadline` (then waits forever: the caller's
/// deadline ends the watch).
async fn probe_loop(
    probe: &Probe,
    p: usize,
    first: Instant,
    deadline: Instant,
    tallies: &Mutex<Vec<Tally>>,
) -> Check {
    let every = probe.run_properties.polling_interval.duration();
    let mut tick = first.max(Instant::now());
    while tick < deadline {
        tokio::time::sleep_until(tick).await;
        let check = probe::check(probe).await;
        tallies.lock().unwrap_or_else(PoisonError::into_inner)[p].record(&check);
        if !check.passed {
            return check;
        }
        tick = next_tick(tick, every, Instant::now());
    }
    std::future::pending().await
}

/// The failed check a panic inside probe `p`'s check counts as (recorded in its tally).
fn panicked(p: usize, payload: &(dyn std::any::Any + Send), tallies: &Mutex<Vec<Tally>>) -> Check {
    let message = payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "no message".to_string());
    let check = Check {
        passed: false,
        attempts: 1,
        error: Some(format!("the probe check panicked: {message}")),
        took: std::time::Duration::ZERO,
    };
    tallies.lock().unwrap_or_else(PoisonError::into_inner)[p].record(&check);
    check
}

/// The run record's entry for one guard probe.
fn probe_result(probe: &Probe, tally: &Tally, fired: bool, secrets: &Secrets) -> ProbeResult {
    let verdict = if fired {
        Verdict::Failed
    } else if tally.checks == 0 {
        Verdict::Skipped
    } else {
        Verdict::Passed
    };
    ProbeResult {
        name: probe.name.clone(),
        probe_type: probe.probe_type.name().to_string(),
        mode: "continuous".to_string(),
        verdict,
        attempts: tally.attempts,
        last_error: tally
            .last_error
            .as_deref()
            .map(|error| secrets.scrub(error).into_owned()),
        first_check_at: tally.first_check_at,
        last_check_at: tally.last_check_at,
    }
}

/// The secrets masked in what the watch returns.
fn secrets(guard: &Guard) -> Secrets {
    let mut secrets = redact::installed()
        .map(|installed| (*installed).clone())
        .unwrap_or_default();
    let fields = guard::credential_fields(guard);
    secrets.add_credentials(fields.headers, fields.urls);
    secrets.add_variables(fields.variables);
    secrets
}

/// The time from `start` to `at` as the reason words it: `4 min` (whole minutes), or
/// `12 s` under a minute.
fn since(start: DateTime<Utc>, at: DateTime<Utc>) -> String {
    let seconds = (at - start).num_seconds().max(0);
    if seconds < 60 {
        format!("{seconds} s")
    } else {
        format!("{} min", seconds / 60)
    }
}

/// Wall-clock times mapped onto the monotonic clock the timers use, from one reading.
struct Clock {
    instant: Instant,
    utc: DateTime<Utc>,
}

impl Clock {
    fn now() -> Clock {
        Clock {
            instant: Instant::now(),
            utc: Utc::now(),
        }
    }

    /// The instant of `at` (times before the monotonic clock's origin read as now).
    fn instant(&self, at: DateTime<Utc>) -> Instant {
        match (at - self.utc).to_std() {
            Ok(ahead) => self.instant + ahead,
            Err(_) => (self.utc - at)
                .to_std()
                .ok()
                .and_then(|behind| self.instant.checked_sub(behind))
                .unwrap_or(self.instant),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watch_can_run_in_a_task_of_its_own() {
        fn send<T: Send>(_: &T) {}
        let guard = Guard {
            duration: crate::catalog::Span::from_millis(1_000),
            probes: Vec::new(),
        };
        let (context, stop) = (RunContext::default(), CancellationToken::new());
        send(&watch(&guard, Utc::now(), Utc::now(), &context, &stop));
    }

    #[test]
    fn the_time_since_the_enable_reads_in_whole_minutes_or_seconds() {
        let start = Utc::now();
        let after = |s: i64| start + chrono::Duration::seconds(s);
        assert_eq!(since(start, after(0)), "0 s");
        assert_eq!(since(start, after(59)), "59 s");
        assert_eq!(since(start, after(60)), "1 min");
        assert_eq!(since(start, after(4 * 60 + 59)), "4 min");
        assert_eq!(since(start, after(-3)), "0 s");
    }
}
