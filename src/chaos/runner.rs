//! The experiment runner: injects an experiment's faults, runs its probes by mode, always
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
//! - `continuous` probes are checked from the phase start to its end;
//! - `sot` and `edge` probes are checked once, before the faults are injected;
//! - the faults are injected; `on_chaos` probes are checked while they are active;
//! - the faults are reverted; `eot` and `edge` probes are checked once more.
//!
//! Every check waits `initial_delay` first (for polling modes, only before the first
//! check). Polling modes (`continuous`, `on_chaos`) check every `polling_interval`, start
//! to start on a fixed grid (window opening + `initial_delay` + k intervals): a check that
//! starts late does not shift the ones after it, and a tick missed by a whole interval (a
//! check that ran longer) is dropped, not made up for. They always check at least once,
//! even when `initial_delay` outlasts their window. A polling probe passes a phase when
//! all its checks passed; an `edge` probe when both its checks passed. Each check runs in
//! its own task: a panic there is a failed check, never a lost revert.
//!
//! # Verdict and score
//!
//! The engine's own verdict (the pipeline step compares the score with its expectation
//! separately) is, in this order:
//! - `error` when the experiment is invalid or a fault could not be injected or reverted;
//! - `aborted` when the cancellation token fired or the experiment `timeout` ran out;
//! - `failed` when any probe failed (or a `stop_on_failure` probe stopped the run);
//! - `passed` otherwise: every probe check that ran passed.
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
//! inject may have half-applied. A failed revert is retried twice. The experiment
//! `timeout` starts once the targets are locked and bounds injects, probes and waits;
//! reverts still run after it fired. Proxy faults are leased and their lease renewed
//! every third of it until they are reverted, so a runner that dies leaves nothing behind.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::catalog::experiment::{Experiment, Fault, FaultExecution, Probe, ProbeMode};
use crate::chaos::fault::{self, FaultError, FaultSetup, Injected};
use crate::chaos::probe::{self, Check};
use crate::chaos::proxy::{ProxyError, ProxyRegistry};
use crate::chaos::score;
use crate::chaos::target_lock::TargetLocks;
use crate::contract::run_record::{FaultResult, ProbeResult, RunStatus, Verdict};
use crate::telemetry::{metrics, traces};

/// Lease of proxy faults when the caller sets none.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(10);

/// How often a failed revert is tried in all.
const REVERT_TRIES: u32 = 3;

/// Everything a run needs besides the experiment.
#[derive(Debug, Clone)]
pub struct RunContext {
    /// The fault proxy embedded in this process, for network and HTTP faults that name
    /// no standalone `proxy`.
    pub proxy: Option<Arc<ProxyRegistry>>,
    /// Lease of faults in chaosgate's proxies; renewed every third of it.
    pub lease: Duration,
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
    /// Test hook: checks of the probe with this name panic inside their task.
    #[doc(hidden)]
    pub panic_probe: Option<String>,
}

/// How long a run waits for busy targets by default ([`RunContext::target_wait`]).
pub const DEFAULT_TARGET_WAIT: Duration = Duration::from_secs(600);

impl Default for RunContext {
    fn default() -> Self {
        RunContext {
            proxy: None,
            lease: DEFAULT_LEASE,
            cancel: CancellationToken::new(),
            progress: None,
            targets: TargetLocks::shared(),
            target_wait: Some(DEFAULT_TARGET_WAIT),
            targets_granted: CancellationToken::new(),
            panic_probe: None,
        }
    }
}

/// The outcome of one experiment, in the shape the experiment-run record needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExperimentResult {
    /// Experiment id.
    pub experiment_id: String,
    /// Experiment name (the id when it has none).
    pub experiment_name: String,
    /// The engine's verdict: `passed`, `failed`, `aborted` or `error` (see the module doc).
    pub verdict: RunStatus,
    /// Resilience score 0-100, for `passed` and `failed` runs.
    pub resilience_score: Option<f64>,
    /// One entry per fault, in file order.
    pub faults: Vec<FaultResult>,
    /// One entry per probe, in file order.
    pub probes: Vec<ProbeResult>,
    /// Probes whose verdict is `passed`.
    pub probes_passed: u32,
    /// Probes whose verdict is `failed`.
    pub probes_failed: u32,
    /// When the run was asked for (before waiting for its targets).
    pub started_at: DateTime<Utc>,
    /// When the last revert was done.
    pub ended_at: DateTime<Utc>,
    /// From `started_at` to `ended_at`, in seconds.
    pub duration_seconds: f64,
    /// Time spent waiting for another experiment on the same target, in seconds.
    pub waited_for_target_seconds: f64,
    /// Why the run ended as it did, in one line.
    pub summary: String,
    /// Short human-readable log, one `HH:MM:SS text` line per event (UTC).
    pub log: Vec<String>,
}

/// One live progress event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Progress {
    /// When it happened.
    pub at: DateTime<Utc>,
    /// What happened.
    pub event: ProgressEvent,
}

/// What a progress event reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ProgressEvent {
    /// Another experiment holds one of these targets; this one waits.
    WaitingForTargets {
        /// The target keys.
        targets: Vec<String>,
    },
    /// The targets are held; the experiment starts.
    Started {
        /// Experiment id.
        experiment: String,
    },
    /// A fault is active until `until`.
    FaultInjected {
        /// Fault name.
        fault: String,
        /// What it does.
        description: String,
        /// When it is due to be reverted.
        until: DateTime<Utc>,
    },
    /// A fault could not be injected.
    FaultFailed {
        /// Fault name.
        fault: String,
        /// Why.
        error: String,
    },
    /// A fault was reverted (or reverting it failed).
    FaultReverted {
        /// Fault name.
        fault: String,
        /// Why the revert failed, if it did.
        error: Option<String>,
    },
    /// A probe was checked once.
    ProbeChecked {
        /// Probe name.
        probe: String,
        /// Its mode.
        mode: ProbeMode,
        /// Whether the check passed.
        passed: bool,
        /// Attempts the check made.
        attempts: u32,
        /// How long the check took, in milliseconds (so `at` minus this is its start).
        took_ms: f64,
        /// Why it failed.
        error: Option<String>,
    },
    /// The run is ending early.
    Stopping {
        /// Why.
        reason: String,
    },
}

/// Why a run ended before its schedule did.
#[derive(Debug, Clone, PartialEq)]
enum Stop {
    Cancelled,
    TimedOut(Duration),
    /// Waited this long for these targets, held by other experiments, and gave up.
    TargetsBusy(Duration, Vec<String>),
    ProbeFailed(String),
    FaultError(String),
}

impl Stop {
    fn describe(&self) -> String {
        match self {
            Stop::Cancelled => "cancelled".to_string(),
            Stop::TimedOut(after) => format!("timed out after {}", crate::catalog::Span(*after)),
            Stop::TargetsBusy(after, targets) => format!(
                "waited {} for target {}, held by another experiment (worker.target_wait); \
                 nothing was injected",
                crate::catalog::Span(*after),
                targets.join(", ")
            ),
            Stop::ProbeFailed(name) => format!("probe '{name}' failed and has stop_on_failure"),
            Stop::FaultError(message) => message.clone(),
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct PhaseTally {
    checks: u32,
    failed: u32,
}

#[derive(Debug, Default)]
struct ProbeLedger {
    by_phase: HashMap<usize, PhaseTally>,
    attempts: u32,
    last_error: Option<String>,
    first_check_at: Option<DateTime<Utc>>,
    last_check_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Default)]
struct FaultLedger {
    started_at: Option<DateTime<Utc>>,
    ended_at: Option<DateTime<Utc>>,
    reverted: bool,
    error: Option<String>,
    phase_started: bool,
    phase_completed: bool,
}

#[derive(Debug, Default)]
struct Ledger {
    probes: Vec<ProbeLedger>,
    faults: Vec<FaultLedger>,
    log: Vec<String>,
    stop: Option<Stop>,
    phases_started: Vec<usize>,
}

/// State shared by the run and its probe tasks.
struct Run {
    faults: Vec<Fault>,
    probes: Vec<Probe>,
    ledger: Mutex<Ledger>,
    progress: Option<UnboundedSender<Progress>>,
    stop: CancellationToken,
    panic_probe: Option<String>,
    /// The caller's span (the worker's step span): parent of fault and probe spans.
    span: tracing::Span,
}

fn clock(at: DateTime<Utc>) -> String {
    at.format("%H:%M:%S").to_string()
}

impl Run {
    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn emit(&self, event: ProgressEvent) {
        if let Some(progress) = &self.progress {
            let _ = progress.send(Progress {
                at: Utc::now(),
                event,
            });
        }
    }

    fn log(&self, line: impl std::fmt::Display) {
        let line = format!("{} {line}", clock(Utc::now()));
        tracing::debug!(target: "chaosgate::run", parent: &self.span, "{line}");
        self.ledger().log.push(line);
    }

    /// Ends the run early for `reason`, unless it is already ending for another.
    fn stop_with(&self, reason: Stop) {
        let first = {
            let mut ledger = self.ledger();
            if ledger.stop.is_none() {
                ledger.stop = Some(reason.clone());
                true
            } else {
                false
            }
        };
        if first {
            let text = reason.describe();
            self.log(format!("stopping: {text}"));
            self.emit(ProgressEvent::Stopping { reason: text });
        }
        self.stop.cancel();
    }

    fn record_check(&self, p: usize, phase: usize, check: &Check, polling: bool) {
        let probe = &self.probes[p];
        let first_failure = {
            let mut ledger = self.ledger();
            let entry = &mut ledger.probes[p];
            let tally = entry.by_phase.entry(phase).or_default();
            tally.checks += 1;
            let first_failure = !check.passed && tally.failed == 0;
            if !check.passed {
                tally.failed += 1;
                entry.last_error = Some(
                    check
                        .error
                        .clone()
                        .unwrap_or_else(|| "the check failed".to_string()),
                );
            }
            entry.attempts += check.attempts;
            let ended = Utc::now();
            let started = chrono::Duration::from_std(check.took)
                .ok()
                .and_then(|took| ended.checked_sub_signed(took))
                .unwrap_or(ended);
            entry.first_check_at = Some(entry.first_check_at.map_or(started, |t| t.min(started)));
            entry.last_check_at = Some(entry.last_check_at.map_or(ended, |t| t.max(ended)));
            first_failure
        };
        let mode = mode_name(probe.mode);
        if !polling {
            match (&check.passed, &check.error) {
                (true, _) => self.log(format!("probe {} ({mode}) passed", probe.name)),
                (false, Some(e)) => self.log(format!("probe {} ({mode}) failed: {e}", probe.name)),
                (false, None) => self.log(format!("probe {} ({mode}) failed", probe.name)),
            }
        } else if first_failure {
            let error = check.error.as_deref().unwrap_or("the check failed");
            self.log(format!("probe {} ({mode}) failed: {error}", probe.name));
        }
        self.emit(ProgressEvent::ProbeChecked {
            probe: probe.name.clone(),
            mode: probe.mode,
            passed: check.passed,
            attempts: check.attempts,
            took_ms: check.took.as_secs_f64() * 1_000.0,
            error: if check.passed {
                None
            } else {
                check.error.clone()
            },
        });
        if !check.passed && probe.run_properties.stop_on_failure {
            self.stop_with(Stop::ProbeFailed(probe.name.clone()));
        }
    }
}

fn mode_name(mode: ProbeMode) -> &'static str {
    match mode {
        ProbeMode::Sot => "sot",
        ProbeMode::Eot => "eot",
        ProbeMode::Edge => "edge",
        ProbeMode::Continuous => "continuous",
        ProbeMode::OnChaos => "on_chaos",
    }
}

/// Aborts a task when dropped, so nothing a run started outlives it.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Faults injected and not yet reverted. Dropping it reverts them in the background:
/// the last line of defence when the runner is dropped or panics.
#[derive(Default)]
struct ActiveFaults {
    faults: Mutex<Vec<ActiveFault>>,
}

/// One injected fault; `reverting` once its revert has begun (no more lease renewals).
struct ActiveFault {
    index: usize,
    injected: Injected,
    reverting: bool,
}

impl ActiveFaults {
    fn list(&self) -> std::sync::MutexGuard<'_, Vec<ActiveFault>> {
        self.faults
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn add(&self, index: usize, injected: Injected) {
        self.list().push(ActiveFault {
            index,
            injected,
            reverting: false,
        });
    }

    fn contains(&self, index: usize) -> bool {
        self.list().iter().any(|a| a.index == index)
    }

    /// Marks fault `index` as being reverted and returns what to revert.
    fn start_revert(&self, index: usize) -> Option<Injected> {
        let mut list = self.list();
        let entry = list.iter_mut().find(|a| a.index == index)?;
        entry.reverting = true;
        Some(entry.injected.clone())
    }

    /// Whether fault `index` is active and not being reverted.
    fn is_live(&self, index: usize) -> bool {
        self.list().iter().any(|a| a.index == index && !a.reverting)
    }

    fn remove(&self, index: usize) {
        self.list().retain(|a| a.index != index);
    }

    fn leased(&self) -> Vec<(usize, Injected)> {
        self.list()
            .iter()
            .filter(|a| !a.reverting && fault::has_lease(&a.injected))
            .map(|a| (a.index, a.injected.clone()))
            .collect()
    }

    fn indices(&self) -> Vec<usize> {
        self.list().iter().map(|a| a.index).collect()
    }
}

impl Drop for ActiveFaults {
    fn drop(&mut self) {
        let left = std::mem::take(&mut *self.list());
        for ActiveFault { injected, .. } in left {
            tracing::warn!(
                "runner dropped with a fault still active; reverting it in the background"
            );
            fault::revert_detached(injected);
        }
    }
}

/// Which faults and probes one phase runs.
#[derive(Debug, Clone, PartialEq)]
struct PhasePlan {
    faults: Vec<usize>,
    probes: Vec<usize>,
}

/// The probes (by index) that judge `fault`: its `probes` list, or all of them.
fn judges(experiment: &Experiment, fault: &Fault) -> Vec<usize> {
    match &fault.probes {
        None => (0..experiment.probes.len()).collect(),
        Some(names) => experiment
            .probes
            .iter()
            .enumerate()
            .filter(|(_, p)| names.contains(&p.name))
            .map(|(i, _)| i)
            .collect(),
    }
}

fn plan(experiment: &Experiment) -> Vec<PhasePlan> {
    if experiment.faults.is_empty() {
        return vec![PhasePlan {
            faults: Vec::new(),
            probes: (0..experiment.probes.len()).collect(),
        }];
    }
    match experiment.execution {
        FaultExecution::Serial => experiment
            .faults
            .iter()
            .enumerate()
            .map(|(i, f)| PhasePlan {
                faults: vec![i],
                probes: judges(experiment, f),
            })
            .collect(),
        FaultExecution::Parallel => {
            let mut probes: Vec<usize> = experiment
                .faults
                .iter()
                .flat_map(|f| judges(experiment, f))
                .collect();
            probes.sort_unstable();
            probes.dedup();
            vec![PhasePlan {
                faults: (0..experiment.faults.len()).collect(),
                probes,
            }]
        }
    }
}

/// Problems that keep an experiment from running at all.
pub fn check_experiment(experiment: &Experiment) -> Result<(), String> {
    let mut problems = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for f in &experiment.faults {
        if !seen.insert(format!("fault:{}", f.name)) {
            problems.push(format!("fault name '{}' is used twice", f.name));
        }
        if f.kind().is_none() {
            problems.push(format!(
                "fault '{}' must have exactly one of network, http, toxiproxy, process, command",
                f.name
            ));
        }
        if !(1..=10).contains(&f.weight) {
            problems.push(format!(
                "fault '{}' has weight {}, not 1 to 10",
                f.name, f.weight
            ));
        }
        for name in f.probes.iter().flatten() {
            if !experiment.probes.iter().any(|p| &p.name == name) {
                problems.push(format!("fault '{}' names unknown probe '{name}'", f.name));
            }
        }
    }
    for p in &experiment.probes {
        if !seen.insert(format!("probe:{}", p.name)) {
            problems.push(format!("probe name '{}' is used twice", p.name));
        }
        if p.probe_type().is_none() {
            problems.push(format!(
                "probe '{}' must have exactly one of http, tcp, command, prometheus",
                p.name
            ));
        }
        let polling = matches!(p.mode, ProbeMode::Continuous | ProbeMode::OnChaos);
        if polling && p.run_properties.polling_interval.duration().is_zero() {
            problems.push(format!(
                "probe '{}' needs a polling_interval above 0",
                p.name
            ));
        }
    }
    if experiment.faults.is_empty() && experiment.probes.is_empty() {
        problems.push("the experiment has neither faults nor probes".to_string());
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// Runs `experiment` to the end (or until stopped) and returns its result.
///
/// Never panics on a bad experiment or a failing backend: those end as `error`.
pub async fn run_experiment(experiment: &Experiment, context: &RunContext) -> ExperimentResult {
    let started_at = Utc::now();
    let stop = context.cancel.child_token();
    let run = Arc::new(Run {
        faults: experiment.faults.clone(),
        probes: experiment.probes.clone(),
        ledger: Mutex::new(Ledger {
            probes: experiment
                .probes
                .iter()
                .map(|_| ProbeLedger::default())
                .collect(),
            faults: experiment
                .faults
                .iter()
                .map(|_| FaultLedger::default())
                .collect(),
            ..Ledger::default()
        }),
        progress: context.progress.clone(),
        stop: stop.clone(),
        panic_probe: context.panic_probe.clone(),
        span: tracing::Span::current(),
    });
    if let Err(problem) = check_experiment(experiment) {
        run.log(format!("cannot run: {problem}"));
        return finish(experiment, &run, started_at, Duration::ZERO, Some(problem));
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
                return finish(experiment, &run, started_at, wait_started.elapsed(), None);
            }
        },
        None => lock.await,
    };
    let waited = wait_started.elapsed();
    if guard.is_none() {
        run.stop_with(Stop::Cancelled);
        return finish(experiment, &run, started_at, waited, None);
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

    let active = Arc::new(ActiveFaults::default());
    // Only faults in chaosgate's proxies carry a lease; without one there is nothing to
    // renew (and ten thousand idle renewal loops would wake every few seconds for nothing).
    let leased = experiment
        .faults
        .iter()
        .any(|f| f.network.is_some() || f.http.is_some());
    let _renewal = leased.then(|| {
        AbortOnDrop(tokio::spawn(renew_leases(
            Arc::downgrade(&active),
            run.clone(),
            context.lease,
        )))
    });
    let setup = FaultSetup {
        proxy: context.proxy.clone(),
        lease: context.lease,
    };
    for (index, phase) in plan(experiment).iter().enumerate() {
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
    finish(experiment, &run, started_at, waited, None)
}

async fn renew_leases(active: Weak<ActiveFaults>, run: Arc<Run>, lease: Duration) {
    let every = (lease / 3).max(Duration::from_millis(50));
    loop {
        tokio::time::sleep(every).await;
        let Some(leased) = active.upgrade().map(|a| a.leased()) else {
            return;
        };
        for (index, injected) in leased {
            let Err(err) = fault::renew(&injected, lease).await else {
                continue;
            };
            let name = &run.faults[index].name;
            let lapsed = matches!(err, FaultError::Proxy(ProxyError::UnknownFault(_)));
            let live = active.upgrade().is_some_and(|a| a.is_live(index));
            if lapsed && live {
                // The proxy dropped it: the fault was not active for its whole duration.
                let error = format!("its lease lapsed before it was renewed: {err}");
                run.log(format!("fault {name}: {error}"));
                run.ledger().faults[index].error.get_or_insert(error);
            } else if live {
                run.log(format!("renew {name} failed (will retry): {err}"));
            }
        }
    }
}

async fn run_phase(
    run: &Arc<Run>,
    active: &Arc<ActiveFaults>,
    setup: &FaultSetup,
    index: usize,
    phase: &PhasePlan,
) {
    let stop = run.stop.clone();
    {
        let mut ledger = run.ledger();
        ledger.phases_started.push(index);
        for f in &phase.faults {
            ledger.faults[*f].phase_started = true;
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
    for p in with_mode(&[ProbeMode::Continuous]) {
        let window = (phase_started, phase_window.clone());
        continuous.spawn(poll_probe(run.clone(), p, index, window));
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
            for p in with_mode(&[ProbeMode::OnChaos]) {
                let window = (chaos_started, chaos_window.clone());
                on_chaos.spawn(poll_probe(run.clone(), p, index, window));
            }
            ends.sort();
            let last = ends.len().saturating_sub(1);
            for (i, (end, f)) in ends.into_iter().enumerate() {
                if stop
                    .run_until_cancelled(tokio::time::sleep_until(end))
                    .await
                    .is_none()
                {
                    break;
                }
                if i == last {
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
        let mut ledger = run.ledger();
        for f in &phase.faults {
            ledger.faults[*f].phase_completed = true;
        }
    }
}

async fn join_all(set: &mut JoinSet<()>) {
    while set.join_next().await.is_some() {}
}

/// Injects fault `f`; returns when it is due to be reverted, or `None` when it could not
/// be injected or the run stopped meanwhile.
async fn inject_fault(
    run: &Arc<Run>,
    active: &ActiveFaults,
    setup: &FaultSetup,
    f: usize,
) -> Option<Instant> {
    let fault = &run.faults[f];
    let outcome = run
        .stop
        .run_until_cancelled(fault::inject(fault, setup).instrument(traces::fault_span(
            &run.span,
            "inject",
            &fault.name,
            fault.kind().map_or("unknown", |k| k.as_str()),
        )))
        .await;
    match outcome {
        Some(Ok(injected)) => {
            metrics::fault_injected();
            let now = Utc::now();
            let end = Instant::now() + fault.duration.duration();
            active.add(f, injected);
            let description = fault::describe(fault);
            run.ledger().faults[f].started_at = Some(now);
            run.log(format!("inject {} ({description})", fault.name));
            let until =
                now + chrono::Duration::from_std(fault.duration.duration()).unwrap_or_default();
            run.emit(ProgressEvent::FaultInjected {
                fault: fault.name.clone(),
                description,
                until,
            });
            Some(end)
        }
        Some(Err(err)) => {
            let error = err.to_string();
            run.ledger().faults[f].error = Some(error.clone());
            run.log(format!("inject {} failed: {error}", fault.name));
            run.emit(ProgressEvent::FaultFailed {
                fault: fault.name.clone(),
                error: error.clone(),
            });
            if let Some(cleanup) = fault::after_failed_inject(fault) {
                active.add(f, cleanup);
            }
            run.stop_with(Stop::FaultError(format!(
                "fault '{}' could not be injected: {error}",
                fault.name
            )));
            None
        }
        None => {
            // Cut off mid-inject: undo whatever part of it may have happened.
            if let Some(cleanup) = fault::after_failed_inject(fault) {
                active.add(f, cleanup);
            }
            None
        }
    }
}

/// Reverts fault `f` (retrying a failed revert), whatever the run's state.
async fn revert_fault(run: &Arc<Run>, active: &ActiveFaults, f: usize) {
    let Some(injected) = active.start_revert(f) else {
        return;
    };
    let fault = &run.faults[f];
    let span = traces::fault_span(
        &run.span,
        "revert",
        &fault.name,
        fault.kind().map_or("unknown", |k| k.as_str()),
    );
    let mut outcome = fault::revert(&injected).instrument(span.clone()).await;
    for attempt in 1..REVERT_TRIES {
        if outcome.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250 * u64::from(attempt))).await;
        outcome = fault::revert(&injected).instrument(span.clone()).await;
    }
    active.remove(f);
    let error = outcome.err().map(|e| e.to_string());
    {
        let mut ledger = run.ledger();
        let entry = &mut ledger.faults[f];
        if entry.started_at.is_some() {
            metrics::fault_reverted();
        }
        entry.ended_at = Some(Utc::now());
        entry.reverted = error.is_none();
        if let Some(e) = &error {
            entry
                .error
                .get_or_insert_with(|| format!("revert failed: {e}"));
        }
    }
    match &error {
        None => run.log(format!("revert {}", fault.name)),
        Some(e) => run.log(format!("revert {} FAILED: {e}", fault.name)),
    }
    run.emit(ProgressEvent::FaultReverted {
        fault: fault.name.clone(),
        error: error.clone(),
    });
    if let Some(e) = error {
        run.stop_with(Stop::FaultError(format!(
            "fault '{}' could not be reverted: {e}",
            fault.name
        )));
    }
}

/// Checks each probe in `probes` once (after its initial delay), all at the same time.
async fn check_once(run: &Arc<Run>, probes: &[usize], phase: usize) {
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

/// Checks probe `p` every polling interval until `window` closes (at least once).
///
/// `window` is when the window opened and the token that closes it: the schedule's ticks
/// are its opening + `initial_delay` + k intervals, however late this task got to run.
async fn poll_probe(run: Arc<Run>, p: usize, phase: usize, window: (Instant, CancellationToken)) {
    let (opened, window) = window;
    let properties = &run.probes[p].run_properties;
    let every = properties.polling_interval.duration();
    let mut tick = opened + properties.initial_delay.duration();
    tokio::time::sleep_until(tick).await;
    loop {
        let check = isolated_check(&run, p).await;
        run.record_check(p, phase, &check, true);
        if window.is_cancelled() || run.stop.is_cancelled() {
            break;
        }
        tick = next_tick(tick, every, Instant::now());
        if window
            .run_until_cancelled(tokio::time::sleep_until(tick))
            .await
            .is_none()
        {
            break;
        }
    }
    let tally = run.ledger().probes[p]
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
fn next_tick(last: Instant, every: Duration, now: Instant) -> Instant {
    let next = last + every;
    if next + every > now || every.is_zero() {
        return next;
    }
    let missed = (now - next).as_nanos() / every.as_nanos();
    next + every * u32::try_from(missed).unwrap_or(u32::MAX)
}

/// One check of probe `p` in a task of its own: a panic or a hang is a failed check.
async fn isolated_check(run: &Arc<Run>, p: usize) -> Check {
    let properties = &run.probes[p].run_properties;
    let limit = (properties.timeout.duration() + properties.interval.duration())
        * properties.attempts.max(1)
        + Duration::from_secs(5);
    let panics = run.panic_probe.as_deref() == Some(run.probes[p].name.as_str());
    let started = Instant::now();
    let probe = &run.probes[p];
    let probe_type = probe.probe_type().map_or("unknown", |t| t.as_str());
    let span = traces::probe_span(&run.span, &probe.name, probe_type, probe.mode);
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

/// A probe's outcome in one phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PhaseOutcome {
    NotRun,
    Incomplete,
    Failed,
    Passed,
}

fn phase_outcome(probe: &Probe, tally: Option<&PhaseTally>) -> PhaseOutcome {
    let Some(tally) = tally.filter(|t| t.checks > 0) else {
        return PhaseOutcome::NotRun;
    };
    let needed = if probe.mode == ProbeMode::Edge { 2 } else { 1 };
    if tally.failed > 0 {
        PhaseOutcome::Failed
    } else if tally.checks < needed {
        PhaseOutcome::Incomplete
    } else {
        PhaseOutcome::Passed
    }
}

fn finish(
    experiment: &Experiment,
    run: &Run,
    started_at: DateTime<Utc>,
    waited: Duration,
    invalid: Option<String>,
) -> ExperimentResult {
    let phases = if invalid.is_some() {
        Vec::new()
    } else {
        plan(experiment)
    };
    let ledger = run.ledger();
    let stop = ledger.stop.clone();
    let aborted = matches!(
        stop,
        Some(Stop::Cancelled | Stop::TimedOut(_) | Stop::TargetsBusy(..))
    );

    let probes: Vec<ProbeResult> = experiment
        .probes
        .iter()
        .enumerate()
        .map(|(p, probe)| {
            let entry = &ledger.probes[p];
            let outcomes: Vec<PhaseOutcome> = ledger
                .phases_started
                .iter()
                .filter(|ph| phases[**ph].probes.contains(&p))
                .map(|ph| phase_outcome(probe, entry.by_phase.get(ph)))
                .collect();
            let verdict = if invalid.is_some() {
                Verdict::Error
            } else if outcomes.contains(&PhaseOutcome::Failed) {
                Verdict::Failed
            } else if !outcomes.is_empty() && outcomes.iter().all(|o| *o == PhaseOutcome::Passed) {
                Verdict::Passed
            } else if outcomes.iter().all(|o| *o == PhaseOutcome::NotRun) {
                Verdict::Skipped
            } else {
                Verdict::Aborted
            };
            ProbeResult {
                name: probe.name.clone(),
                probe_type: probe
                    .probe_type()
                    .map_or("unknown", |t| t.as_str())
                    .to_string(),
                mode: mode_name(probe.mode).to_string(),
                verdict,
                attempts: entry.attempts,
                last_error: entry.last_error.clone(),
                first_check_at: entry.first_check_at,
                last_check_at: entry.last_check_at,
            }
        })
        .collect();

    let faults: Vec<FaultResult> = experiment
        .faults
        .iter()
        .enumerate()
        .map(|(f, fault)| {
            let entry = &ledger.faults[f];
            let phase = phases.iter().position(|ph| ph.faults.contains(&f));
            let judged: Vec<usize> = phase.map(|_| judges(experiment, fault)).unwrap_or_default();
            let passed = judged
                .iter()
                .filter(|p| {
                    phase.is_some_and(|ph| {
                        phase_outcome(
                            &experiment.probes[**p],
                            ledger.probes[**p].by_phase.get(&ph),
                        ) == PhaseOutcome::Passed
                    })
                })
                .count();
            let pct = if entry.started_at.is_some() {
                score::probe_success_percentage(passed, judged.len())
            } else {
                0.0
            };
            let verdict = if invalid.is_some() || entry.error.is_some() {
                Verdict::Error
            } else if entry.started_at.is_none() {
                Verdict::Skipped
            } else if !entry.phase_completed && aborted {
                Verdict::Aborted
            } else if pct >= 100.0 {
                Verdict::Passed
            } else {
                Verdict::Failed
            };
            FaultResult {
                name: fault.name.clone(),
                kind: fault.kind().map_or("unknown", |k| k.as_str()).to_string(),
                weight: fault.weight,
                verdict,
                probe_success_percentage: pct,
                started_at: entry.started_at,
                ended_at: entry.ended_at,
                reverted: entry.reverted,
                error: entry.error.clone(),
            }
        })
        .collect();

    let count = |v: Verdict| probes.iter().filter(|p| p.verdict == v).count();
    let probes_passed = count(Verdict::Passed);
    let probes_failed = count(Verdict::Failed);
    let fault_error = faults
        .iter()
        .find_map(|f| f.error.as_ref().map(|e| (f.name.clone(), e)));
    let verdict = if invalid.is_some() || fault_error.is_some() {
        RunStatus::Error
    } else if aborted {
        RunStatus::Aborted
    } else if probes_failed > 0 || matches!(stop, Some(Stop::ProbeFailed(_))) {
        RunStatus::Failed
    } else {
        RunStatus::Passed
    };
    let resilience_score = match verdict {
        RunStatus::Passed | RunStatus::Failed if faults.is_empty() => {
            Some(score::probe_success_percentage(probes_passed, probes.len()))
        }
        RunStatus::Passed | RunStatus::Failed => score::resilience_score(
            &faults
                .iter()
                .map(|f| (f.weight, f.probe_success_percentage))
                .collect::<Vec<_>>(),
        ),
        _ => None,
    };
    let tally = format!("{probes_passed} of {} probes passed", probes.len());
    let summary = match (&verdict, &invalid, &fault_error, &stop) {
        (_, Some(problem), _, _) => format!("error: invalid experiment: {problem}"),
        (_, _, Some((name, e)), _) => format!("error: fault '{name}': {e}"),
        (RunStatus::Aborted, _, _, Some(reason)) => format!("aborted: {}", reason.describe()),
        (_, _, _, Some(Stop::ProbeFailed(name))) => format!(
            "failed: probe '{name}' failed and has stop_on_failure; score {} ({tally})",
            resilience_score.unwrap_or(0.0)
        ),
        _ => format!(
            "{}: score {} ({tally})",
            verdict.as_str(),
            resilience_score.unwrap_or(0.0)
        ),
    };
    let ended_at = Utc::now();
    let mut log = ledger.log.clone();
    log.push(format!("{} end: {summary}", clock(ended_at)));
    ExperimentResult {
        experiment_id: experiment.id.clone(),
        experiment_name: experiment
            .name
            .clone()
            .unwrap_or_else(|| experiment.id.clone()),
        verdict,
        resilience_score,
        faults,
        probes,
        probes_passed: u32::try_from(probes_passed).unwrap_or(u32::MAX),
        probes_failed: u32::try_from(probes_failed).unwrap_or(u32::MAX),
        started_at,
        ended_at,
        duration_seconds: (ended_at - started_at).num_milliseconds() as f64 / 1000.0,
        waited_for_target_seconds: score::round2(waited.as_secs_f64()),
        summary,
        log,
    }
}

/// Raises this process's soft limit of open files to its hard limit and returns the new
/// soft limit.
///
/// A worker running thousands of experiments holds a socket per probe request in flight
/// (up to 512), idle pooled connections and the pipes of up to 128 running commands, well
/// past the usual soft limit of 1,024; the hard limit is what the operator allowed.
pub fn raise_open_files_limit() -> std::io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    Ok(limit.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_open_files_limit_reaches_the_hard_limit() {
        let raised = raise_open_files_limit().unwrap();
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit only writes the struct passed to it.
        assert_eq!(
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
            0
        );
        assert_eq!((raised, limit.rlim_cur), (limit.rlim_max, limit.rlim_max));
    }

    #[test]
    fn polling_keeps_its_grid_and_drops_ticks_a_whole_interval_late() {
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
