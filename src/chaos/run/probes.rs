//! Checking a run's probes: once (after `initial_delay`), or on a polling grid while a
//! window is open; each check runs in a task of its own, so a panic or a hang is a failed
//! check, never a lost revert.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::state::{AbortOnDrop, Run, mode_name};
use crate::chaos::probe::{self, Check};
use crate::telemetry::traces;

/// Checks each probe in `probes` once (after its initial delay), all at the same time.
pub(super) async fn check_once(run: &Arc<Run>, probes: &[usize], phase: usize) {
    if probes.is_empty() {
        return;
    }
    let mut set = JoinSet::new();
    for p in probes {
        let run = run.clone();
        let p = *p;
        set.spawn(async move {
            let delay = run.probes[p].run_properties.initial_delay.duration();
            tokio::time::sleep(delay).await;
            let check = isolated_check(&run, p).await;
            run.record_check(p, phase, &check, false);
        });
    }
    run.stop.run_until_cancelled(join_all(&mut set)).await;
}

/// Waits for every task of `set`.
pub(super) async fn join_all(set: &mut JoinSet<()>) {
    while set.join_next().await.is_some() {}
}

/// A polling probe's window: when it opened, when it is due to close if that is known
/// (an `on_chaos` window at the first revert), and the token that closes it.
pub(super) struct Window {
    pub(super) opened: Instant,
    pub(super) closes: Option<Instant>,
    pub(super) closed: CancellationToken,
}

/// Checks probe `p` every polling interval while `window` is open.
///
/// The schedule's ticks are the window's opening + `initial_delay` + k intervals, however
/// late this task got to run. A check starts only while the window is open and before it
/// is due to close (a tick at its end would race the revert), and counts only when the
/// window is still open as it ends, passed or failed (else [`Run::record_late`]): for
/// `on_chaos`, a check that ends after the window closed may have looked at the target
/// during the revert. A window that closes before the first tick gets no check: the
/// verdict then says the probe could not check inside it.
pub(super) async fn poll_probe(run: Arc<Run>, p: usize, phase: usize, window: Window) {
    let properties = &run.probes[p].run_properties;
    let every = properties.polling_interval.duration();
    let mut tick = window.opened + properties.initial_delay.duration();
    let due = |tick: Instant| window.closes.is_none_or(|closes| tick < closes);
    let mut open = due(tick)
        && window
            .closed
            .run_until_cancelled(tokio::time::sleep_until(tick))
            .await
            .is_some();
    while open && !run.stop.is_cancelled() {
        let check = isolated_check(&run, p).await;
        if window.closed.is_cancelled() {
            run.record_late(p, phase, &check);
            break;
        }
        run.record_check(p, phase, &check, true);
        tick = next_tick(tick, every, Instant::now());
        open = due(tick)
            && window
                .closed
                .run_until_cancelled(tokio::time::sleep_until(tick))
                .await
                .is_some();
    }
    let tally = run.tally().probes[p]
        .by_phase
        .get(&phase)
        .copied()
        .unwrap_or_default();
    let name = &run.probes[p].name;
    let mode = mode_name(run.probes[p].mode);
    run.log(format!(
        "probe {name} ({mode}) {} of {} checks passed",
        tally.checks - tally.failed,
        tally.checks
    ));
}

/// The tick after `last` on a polling schedule (`last` + k x `every`) to check at next.
///
/// Normally the next one. A tick already past is still checked, at once, unless the
/// tick after it is due too: ticks a whole interval late are dropped, not made up for,
/// and the schedule keeps its start-to-start grid (a slow check never shifts it).
pub(crate) fn next_tick(last: Instant, every: Duration, now: Instant) -> Instant {
    let next = last + every;
    if next + every > now || every.is_zero() {
        return next;
    }
    let missed = (now - next).as_nanos() / every.as_nanos();
    next + every * u32::try_from(missed).unwrap_or(u32::MAX)
}

/// One check of probe `p` in a task of its own: a panic or a hang is a failed check.
pub(super) async fn isolated_check(run: &Arc<Run>, p: usize) -> Check {
    let properties = &run.probes[p].run_properties;
    let limit = (properties.timeout.duration() + properties.interval.duration())
        * properties.attempts.max(1)
        + Duration::from_secs(5);
    let panics = run.panic_probe.as_deref() == Some(run.probes[p].name.as_str());
    let started = Instant::now();
    let probe = &run.probes[p];
    let span = traces::probe_span(&run.span, &probe.name, probe.probe_type.name(), probe.mode);
    let task_run = run.clone();
    let mut task = AbortOnDrop(tokio::spawn(async move {
        let probe = &task_run.probes[p];
        if panics {
            panic!("test hook: probe '{}' panics", probe.name);
        }
        probe::check(probe).instrument(span).await
    }));
    let failed = |error: String| Check {
        passed: false,
        attempts: 1,
        error: Some(error),
        took: started.elapsed(),
    };
    match tokio::time::timeout(limit, &mut task.0).await {
        Ok(Ok(check)) => check,
        Ok(Err(join)) if join.is_panic() => {
            let payload = join.into_panic();
            let message = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "no message".to_string());
            failed(format!("the probe check panicked: {message}"))
        }
        Ok(Err(_)) => failed("the probe check was cancelled".to_string()),
        Err(_) => failed(format!("the probe check did not finish within {limit:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn polling_keeps_its_grid_and_drops_ticks_a_whole_interval_late() {
        let start = Instant::now();
        let second = Duration::from_secs(1);
        let at = |ms: u64| start + Duration::from_millis(ms);
        // On time, or a little late: the next tick on the grid, never shifted.
        assert_eq!(next_tick(start, second, at(300)), at(1_000));
        assert_eq!(next_tick(start, second, at(1_400)), at(1_000));
        // A check that ran past the next tick and the one after: the latest due tick.
        assert_eq!(next_tick(start, second, at(2_000)), at(2_000));
        assert_eq!(next_tick(start, second, at(3_700)), at(3_000));
    }
}
