//! The experiment run: injects an experiment's faults, runs its probes by mode, always
//! reverts, and scores the result.
//!
//! # Schedule
//!
//! An experiment runs as phases. `serial` execution (the default) has one phase per fault,
//! judged by that fault's probes (`fault.probes`, default all); `parallel` has one phase
//! with every fault, injected one after another at its start and each reverted when its
//! own `duration` is up; an experiment without faults has one phase with every probe.
//! Within a phase:
//!
//! - `continuous` probes are checked from the phase start to its end (once, in an
//!   experiment without faults: its one phase has no length of its own);
//! - `sot` and `edge` probes are checked once, before the faults are injected;
//! - the faults are injected; `on_chaos` probes are checked while they are all active
//!   (the window closes before the first revert begins);
//! - the faults are reverted; `eot` and `edge` probes are checked once more.
//!
//! Every check waits `initial_delay` first (for polling modes, only before the first
//! check). Polling modes (`continuous`, `on_chaos`) check every `polling_interval`, start
//! to start on a fixed grid (window opening + `initial_delay` + k intervals): a check that
//! starts late does not shift the ones after it, and a tick missed by a whole interval (a
//! check that ran longer) is dropped, not made up for.
//!
//! A check counts only for its window: a polling check starts only while its window is
//! open and counts, passed or failed, only if the window is still open when it ends (one
//! that ends later may have looked at the target during the revert). A probe with no check inside its window
//! in a phase that ran to its end is `error`, never a pass, and so is the run (validation
//! refuses the timings that cause it: `catalog::rules`). A polling probe passes a phase
//! when all its checks passed; an `edge` probe when both its checks passed. Each check
//! runs in its own task: a panic there is a failed check, never a lost revert.
//!
//! # Verdict and score
//!
//! The engine's own verdict (the pipeline step compares the score with its expectation
//! separately) is, in this order:
//! - `error` when the experiment is invalid, a fault could not be injected or its revert
//!   not confirmed, or what an earlier attempt may have left could not be reverted (the
//!   summary names the fault that may still be active);
//! - `aborted` when the cancellation token fired or the experiment `timeout` ran out;
//! - `failed` when any probe failed (or a `stop_on_failure` probe stopped the run);
//! - `error` when a probe had no check inside its window;
//! - `passed` otherwise: every probe checked inside its window, and every check passed.
//!
//! The score (see [`crate::chaos::score`]) is given for `passed` and `failed` runs only.
//! A fault that never ran (a run stopped early) counts 0 %.
//!
//! # Safety
//!
//! Every injected fault is reverted on every exit path: after its duration, on a probe
//! failure with `stop_on_failure`, on a fault error, on timeout, on cancellation (the run
//! stops within a second: waits, probe checks and injects are cut short, reverts are
//! not), and when the runner itself is dropped or panics (a guard reverts from `Drop`).
//! A command fault's revert also runs after its inject failed or was cut off, since the
//! inject may have half-applied. A failed revert is retried with backoff until the fault's
//! lease has passed since its first failure ([`revert`]). A run that is the next attempt
//! of an interrupted one first reverts what that attempt may have left ([`leftovers`]).
//! The experiment `timeout` starts once the targets are locked and bounds injects, probes and waits;
//! reverts still run after it fired. Proxy faults are leased and their lease renewed
//! every third of it until they are reverted; `toxiproxy`, `command` and process `pause`
//! faults are held by a guard process renewed on the same schedule
//! ([`crate::chaos::fault`]), so a runner that dies leaves nothing behind.

//!
//! # Map
//!
//! - [`plan`]: which faults and probes each phase runs;
//! - [`state`]: the run's shared state (tallies, log, why it stopped) and its progress
//!   events;
//! - [`faults`]: inject, lease renewal and revert, and the guard that reverts from `Drop`;
//! - [`revert`]: one fault's revert, retried with backoff until its lease, and the reverts
//!   in progress a shutdown waits for;
//! - [`leftovers`]: what an interrupted earlier attempt may have left, reverted first;
//! - [`probes`]: checking probes once or on a polling grid, each check in its own task;
//! - [`verdict`]: the probes', faults' and run's verdicts, the score, the summary;
//! - [`progress`]: the result and the live progress types callers see.

mod faults;
mod leftovers;
mod plan;
mod probes;
mod progress;
mod revert;
mod state;
mod verdict;

pub use progress::{ExperimentResult, Progress, ProgressEvent};
// A pipeline guard's probes keep the experiments' polling grid (`gate::guard`).
pub(crate) use probes::next_tick;
pub use revert::{reverts_in_progress, reverts_settled};

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::catalog::experiment::{Experiment, Fault, ProbeMode};
use crate::catalog::rules;
use crate::chaos::fault::FaultSetup;
use crate::chaos::fault::proxied::{BusyReport, Ownership, owner_id};
use crate::chaos::proxy::{ProxyAccess, ProxyRegistry};
use crate::chaos::target_lock::TargetLocks;
use faults::{InjectedFaults, inject_fault, needs_renewal, renew_leases, revert_fault};
use plan::PhasePlan;
use probes::{Window, check_once, join_all, poll_probe};
use state::{AbortOnDrop, Run, Stop};

/// Lease of proxy faults when the caller sets none.
pub(crate) const DEFAULT_LEASE: Duration = Duration::from_secs(10);

/// The shortest lease a worker (`worker.fault_lease`) or `experiment run --lease` takes:
/// leases are renewed every third of themselves, and a shorter one would let a fault
/// revert itself (its guard giving up on the runner) before its first renewal arrives on
/// a loaded machine.
pub const MIN_LEASE: Duration = Duration::from_millis(500);

/// Everything a run needs besides the experiment.
#[derive(Debug, Clone)]
pub struct RunContext {
    /// The fault proxy embedded in this process, for network and HTTP faults that name
    /// no standalone `proxy`.
    pub proxy: Option<Arc<ProxyRegistry>>,
    /// The token and CA with which faults reach standalone proxies.
    pub proxy_access: ProxyAccess,
    /// Lease of faults in chaosgate's proxies, and how long a fault's guard waits for a
    /// renewal; renewed every third of it.
    pub lease: Duration,
    /// The chaosgate binary, started as the guard of each `toxiproxy`, `command` and
    /// process `pause` fault (`chaosgate fault-guard`), which reverts it if this runner
    /// dies. Callers set it to `std::env::current_exe()`; `None` (the default) only where
    /// no guard is possible, such as unit tests: those faults then have no guard.
    pub guard: Option<std::path::PathBuf>,
    /// Cancelling it aborts the run within a second (faults reverted, verdict `aborted`).
    pub cancel: CancellationToken,
    /// Receives live progress (fault timeline, probe checks) while the run goes on.
    pub progress: Option<UnboundedSender<Progress>>,
    /// Locks that keep two experiments on one target apart.
    pub targets: TargetLocks,
    /// The longest a run waits for targets held by other experiments (granted first come,
    /// first served) before it gives up, `aborted`, naming them; nothing is injected then.
    /// `None`: no bound. Default [`DEFAULT_TARGET_WAIT`].
    pub target_wait: Option<Duration>,
    /// Cancelled by the run once it holds its targets (at once when none is busy): a
    /// step's `timeout` counts from then, so time queued behind another flag's experiment
    /// is not the experiment's.
    pub targets_granted: CancellationToken,
    /// The attempt before this one, when an earlier attempt of the same event may have
    /// left faults active (it was cut off): once the run holds its targets, it reverts
    /// whatever of its faults that attempt may have left before it injects anything
    /// (see [`leftovers`]). `None` (the default): a first attempt.
    pub previous_attempt: Option<u32>,
    /// Test hook: checks of the probe with this name panic inside their task.
    #[doc(hidden)]
    pub panic_probe: Option<String>,
}

/// How long a run waits for busy targets by default ([`RunContext::target_wait`]).
pub(crate) const DEFAULT_TARGET_WAIT: Duration = Duration::from_secs(600);

impl Default for RunContext {
    fn default() -> Self {
        RunContext {
            proxy: None,
            proxy_access: ProxyAccess::default(),
            lease: DEFAULT_LEASE,
            guard: None,
            cancel: CancellationToken::new(),
            progress: None,
            targets: TargetLocks::shared(),
            target_wait: Some(DEFAULT_TARGET_WAIT),
            targets_granted: CancellationToken::new(),
            previous_attempt: None,
            panic_probe: None,
        }
    }
}

/// Runs `experiment` to the end (or until stopped) and returns its result.
///
/// Never panics on a bad experiment or a failing backend: those end as `error`.
pub async fn run_experiment(experiment: &Experiment, context: &RunContext) -> ExperimentResult {
    let started_at = Utc::now();
    let stop = context.cancel.child_token();
    let run = Arc::new(Run::new(experiment, context, stop.clone()));
    let problems = rules::check_experiment(experiment);
    if !problems.is_empty() {
        let lines: Vec<String> = problems.iter().map(rules::line).collect();
        let problem = lines.join("; ");
        run.log(format!("cannot run: {problem}"));
        let mut result =
            verdict::result(experiment, &run, started_at, Duration::ZERO, Some(problem));
        result.problems = lines;
        return result;
    }
    // Record a cancellation the moment it happens.
    let _watch_cancel = AbortOnDrop(tokio::spawn({
        let run = run.clone();
        let cancel = context.cancel.clone();
        async move {
            cancel.cancelled().await;
            run.stop_with(Stop::Cancelled);
        }
    }));

    let keys: Vec<String> = experiment
        .faults
        .iter()
        .filter_map(Fault::target_key)
        .collect();
    let wait_started = Instant::now();
    let busy: Vec<String> = keys
        .iter()
        .filter(|k| context.targets.is_held(k))
        .cloned()
        .collect();
    if !busy.is_empty() {
        run.log(format!("waiting for target {}", busy.join(", ")));
        run.emit(ProgressEvent::WaitingForTargets {
            targets: busy.clone(),
        });
    }
    let lock = stop.run_until_cancelled(context.targets.lock(&keys));
    let guard = match context.target_wait {
        Some(limit) => match tokio::time::timeout(limit, lock).await {
            Ok(guard) => guard,
            Err(_) => {
                // A target taken between the look and the lock is busy too.
                let named = if busy.is_empty() { keys } else { busy };
                run.stop_with(Stop::TargetsBusy(limit, named));
                return verdict::result(experiment, &run, started_at, wait_started.elapsed(), None);
            }
        },
        None => lock.await,
    };
    let waited = wait_started.elapsed();
    if guard.is_none() {
        run.stop_with(Stop::Cancelled);
        return verdict::result(experiment, &run, started_at, waited, None);
    }
    context.targets_granted.cancel();
    if waited >= Duration::from_millis(10) {
        run.log(format!("targets free after {:.1}s", waited.as_secs_f64()));
    }

    let _timer = experiment.timeout.map(|limit| {
        let run = run.clone();
        AbortOnDrop(tokio::spawn(async move {
            tokio::time::sleep(limit.duration()).await;
            run.stop_with(Stop::TimedOut(limit.duration()));
        }))
    });
    run.log(format!("start {}", experiment.id));
    run.emit(ProgressEvent::Started {
        experiment: experiment.id.clone(),
    });
    if let Some(previous) = context.previous_attempt
        && !stop.is_cancelled()
        && !leftovers::revert_leftovers(&run, previous).await
    {
        drop(guard);
        return verdict::result(experiment, &run, started_at, waited, None);
    }

    let active = Arc::new(InjectedFaults::default());
    // A standalone proxy grants a target to one run at a time; a busy one is waited for
    // within the same `target_wait`, and reported as the target lock's wait is.
    let on_busy = BusyReport(Arc::new({
        let run = run.clone();
        move |target: &str, owner: &str| {
            run.log(format!(
                "waiting for target proxy:{target}, held by {owner} in its proxy"
            ));
            run.emit(ProgressEvent::WaitingForTargets {
                targets: vec![format!("proxy:{target}")],
            });
        }
    }));
    let setup = FaultSetup {
        proxy: context.proxy.clone(),
        lease: context.lease,
        ownership: Ownership {
            owner: owner_id(&experiment.id),
            access: context.proxy_access.clone(),
            target_wait: context.target_wait,
            on_busy: Some(on_busy),
        },
        guard: context.guard.clone(),
    };
    // Only proxied and guarded faults carry a lease; without one there is nothing to
    // renew (and ten thousand idle renewal loops would wake every few seconds for nothing).
    let leased = needs_renewal(&experiment.faults, &setup);
    let _renewal = leased.then(|| {
        AbortOnDrop(tokio::spawn(renew_leases(
            Arc::downgrade(&active),
            run.clone(),
            context.lease,
        )))
    });
    for (index, phase) in plan::plan(experiment).iter().enumerate() {
        if stop.is_cancelled() {
            break;
        }
        run_phase(&run, &active, &setup, index, phase).await;
    }
    // Nothing should be left, but a revert is never skipped.
    for index in active.indices() {
        revert_fault(&run, &active, index).await;
    }
    drop(guard);
    if stop.is_cancelled() {
        // Only the cancellation token stops a run without giving a reason first.
        run.stop_with(Stop::Cancelled);
    }
    verdict::result(experiment, &run, started_at, waited, None)
}

async fn run_phase(
    run: &Arc<Run>,
    active: &Arc<InjectedFaults>,
    setup: &FaultSetup,
    index: usize,
    phase: &PhasePlan,
) {
    let stop = run.stop.clone();
    {
        let mut tallies = run.tally();
        tallies.phases_started.push(index);
        for f in &phase.faults {
            tallies.faults[*f].phase_started = true;
        }
    }
    let with_mode = |modes: &[ProbeMode]| -> Vec<usize> {
        phase
            .probes
            .iter()
            .copied()
            .filter(|p| modes.contains(&run.probes[*p].mode))
            .collect()
    };

    let phase_window = stop.child_token();
    let phase_started = Instant::now();
    let mut continuous = JoinSet::new();
    if phase.faults.is_empty() {
        // No faults: the phase has no length of its own, so continuous probes check once.
        check_once(run, &with_mode(&[ProbeMode::Continuous]), index).await;
    } else {
        for p in with_mode(&[ProbeMode::Continuous]) {
            let window = Window {
                opened: phase_started,
                closes: None,
                closed: phase_window.clone(),
            };
            continuous.spawn(poll_probe(run.clone(), p, index, window));
        }
    }
    check_once(run, &with_mode(&[ProbeMode::Sot, ProbeMode::Edge]), index).await;

    let chaos_window = stop.child_token();
    let mut on_chaos = JoinSet::new();
    if !stop.is_cancelled() {
        let mut ends = Vec::new();
        for f in &phase.faults {
            match inject_fault(run, active, setup, *f).await {
                Some(end) => ends.push((end, *f)),
                None => break,
            }
        }
        if !stop.is_cancelled() {
            let chaos_started = Instant::now();
            ends.sort();
            // The window closes when the first fault is due to be reverted.
            let closes = ends.first().map(|(end, _)| *end);
            for p in with_mode(&[ProbeMode::OnChaos]) {
                let window = Window {
                    opened: chaos_started,
                    closes,
                    closed: chaos_window.clone(),
                };
                on_chaos.spawn(poll_probe(run.clone(), p, index, window));
            }
            for (i, (end, f)) in ends.into_iter().enumerate() {
                if stop
                    .run_until_cancelled(tokio::time::sleep_until(end))
                    .await
                    .is_none()
                {
                    break;
                }
                // The window is while every fault of the phase is active: it closes
                // before the first revert begins.
                if i == 0 {
                    chaos_window.cancel();
                }
                revert_fault(run, active, f).await;
            }
        }
    }
    chaos_window.cancel();
    for f in &phase.faults {
        if active.contains(*f) {
            revert_fault(run, active, *f).await;
        }
    }
    stop.run_until_cancelled(join_all(&mut on_chaos)).await;
    drop(on_chaos);
    if !stop.is_cancelled() {
        check_once(run, &with_mode(&[ProbeMode::Eot, ProbeMode::Edge]), index).await;
    }
    phase_window.cancel();
    stop.run_until_cancelled(join_all(&mut continuous)).await;
    if !stop.is_cancelled() {
        let mut tallies = run.tally();
        tallies.phases_completed.push(index);
        for f in &phase.faults {
            tallies.faults[*f].phase_completed = true;
        }
    }
}
