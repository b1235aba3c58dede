//! Driving a run's faults: inject (a guarded kind only once its guard process holds the
//! revert), renew the leases of proxied ones and the guards of the others, revert (a
//! failed revert is retried with backoff until the fault's lease: [`super::revert`]), and
//! [`InjectedFaults`], which reverts
//! whatever is still active when the run is dropped or panics.
//!
//! The rule between the runner and a fault's guard ([`fault::guard`]): the guard is told
//! `done` only after the runner's own revert succeeded ([`InjectedFaults::finish`]);
//! every other way an entry goes (a revert given up, the runner dropped) drops the guard
//! handle without `done`, and the guard reverts the fault itself.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use chrono::Utc;
use tokio::time::Instant;
use tracing::Instrument;

use super::progress::ProgressEvent;
use super::revert;
use super::state::{Run, Stop};
use crate::chaos::fault::guard::{self, Guard};
use crate::chaos::fault::{self, FaultError, FaultSetup, Injected};
use crate::chaos::proxy::ProxyError;
use crate::telemetry::{metrics, traces};

/// Faults injected and not yet reverted, each with its guard when it has one. Dropping it
/// reverts them in the background (a guarded one by its guard): the last line of defence
/// when the runner is dropped or panics.
#[derive(Default)]
pub(super) struct InjectedFaults {
    faults: Mutex<Vec<InjectedFault>>,
}

/// One injected fault; `reverting` once its revert has begun (no more lease renewals;
/// its guard is still renewed: the runner lives).
pub(super) struct InjectedFault {
    index: usize,
    injected: Injected,
    reverting: bool,
    guard: Option<Guard>,
}

impl InjectedFaults {
    pub(super) fn list(&self) -> std::sync::MutexGuard<'_, Vec<InjectedFault>> {
        self.faults
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(super) fn add(&self, index: usize, injected: Injected, guard: Option<Guard>) {
        self.list().push(InjectedFault {
            index,
            injected,
            reverting: false,
            guard,
        });
    }

    /// Sends `renew` to every guard; returns the faults whose guard is gone or not
    /// reading, with the error.
    fn renew_guards(&self) -> Vec<(usize, std::io::Error)> {
        let mut failed = Vec::new();
        for entry in self.list().iter_mut() {
            let Some(guard) = &entry.guard else {
                continue;
            };
            if let Err(err) = guard.renew() {
                // A guard that stopped reading is dropped: it reverts once it reads again.
                entry.guard = None;
                failed.push((entry.index, err));
            }
        }
        failed
    }

    pub(super) fn contains(&self, index: usize) -> bool {
        self.list().iter().any(|a| a.index == index)
    }

    /// Marks fault `index` as being reverted and returns what to revert.
    pub(super) fn start_revert(&self, index: usize) -> Option<Injected> {
        let mut list = self.list();
        let entry = list.iter_mut().find(|a| a.index == index)?;
        entry.reverting = true;
        Some(entry.injected.clone())
    }

    /// Whether fault `index` is active and not being reverted.
    pub(super) fn is_live(&self, index: usize) -> bool {
        self.list().iter().any(|a| a.index == index && !a.reverting)
    }

    /// Forgets fault `index` once its revert ended. When the runner's own revert
    /// succeeded (`reverted`), its guard is told `done` and exits without reverting;
    /// otherwise the guard is dropped without it and takes the revert over.
    pub(super) fn finish(&self, index: usize, reverted: bool) {
        let mut list = self.list();
        let Some(at) = list.iter().position(|a| a.index == index) else {
            return;
        };
        let entry = list.remove(at);
        drop(list);
        let Some(guard) = entry.guard else {
            return;
        };
        if !reverted {
            tracing::warn!(
                fault = index,
                "the runner gave up a fault's revert; its guard takes the revert over"
            );
        } else if let Err(err) = guard.done() {
            tracing::warn!(error = %err, fault = index,
                "cannot tell a fault's guard 'done'; it may revert the fault once more");
        }
    }

    pub(super) fn leased(&self) -> Vec<(usize, Injected)> {
        self.list()
            .iter()
            .filter(|a| !a.reverting && fault::has_lease(&a.injected))
            .map(|a| (a.index, a.injected.clone()))
            .collect()
    }

    pub(super) fn indices(&self) -> Vec<usize> {
        self.list().iter().map(|a| a.index).collect()
    }
}

impl Drop for InjectedFaults {
    fn drop(&mut self) {
        let left = std::mem::take(&mut *self.list());
        for InjectedFault {
            injected, guard, ..
        } in left
        {
            if guard.is_some() {
                // Dropping the handle closes its pipe: the guard reverts at once.
                tracing::warn!("runner dropped with a fault still active; its guard reverts it");
                continue;
            }
            tracing::warn!(
                "runner dropped with a fault still active; reverting it in the background"
            );
            fault::revert_detached(injected);
        }
    }
}

/// Renews, every third of `lease`, the leases of proxied faults and the guards of the
/// others, until `active` is dropped. The two run side by side, so a slow proxy never
/// delays a guard's renewal past its lease.
pub(super) async fn renew_leases(active: Weak<InjectedFaults>, run: Arc<Run>, lease: Duration) {
    let every = (lease / 3).max(Duration::from_millis(50));
    tokio::join!(
        renew_proxied(active.clone(), run.clone(), lease, every),
        renew_guards(active, run, every)
    );
}

async fn renew_guards(active: Weak<InjectedFaults>, run: Arc<Run>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(failed) = active.upgrade().map(|a| a.renew_guards()) else {
            return;
        };
        for (index, err) in failed {
            // The guard is gone (it may have reverted the fault early) or stopped reading.
            let name = &run.faults[index].name;
            let error = format!(
                "its guard could not be renewed ({err}): a guard that misses the runner for a lease reverts the fault, so it may have ended early"
            );
            run.log(format!("fault {name}: {error}"));
            run.tally().faults[index].error.get_or_insert(error);
        }
    }
}

async fn renew_proxied(
    active: Weak<InjectedFaults>,
    run: Arc<Run>,
    lease: Duration,
    every: Duration,
) {
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
                run.tally().faults[index].error.get_or_insert(error);
            } else if live {
                run.log(format!("renew {name} failed (will retry): {err}"));
            }
        }
    }
}

/// Whether a run of these faults needs [`renew_leases`]: a proxied fault, or a guarded
/// one when guards are on.
pub(super) fn needs_renewal(
    faults: &[crate::catalog::experiment::Fault],
    setup: &FaultSetup,
) -> bool {
    faults
        .iter()
        .any(|f| f.kind.is_proxied() || (setup.guard.is_some() && fault::is_guarded(&f.kind)))
}

/// Arms fault `fault`'s guard (when its kind has one and guards are on) with the revert
/// known before the inject; returns that plan and the guard.
async fn arm_guard(
    fault: &crate::catalog::experiment::Fault,
    setup: &FaultSetup,
) -> Result<(Option<Injected>, Option<Guard>), FaultError> {
    let planned = fault::guarded_revert(fault)?;
    let guard = match (&planned, &setup.guard) {
        (Some(plan), Some(program)) => {
            Some(guard::arm(program, &fault.name, plan, setup.lease).await?)
        }
        _ => None,
    };
    Ok((planned, guard))
}

/// Records that fault `f` could not be injected and stops the run.
fn inject_failed(run: &Arc<Run>, f: usize, err: &FaultError) {
    let fault = &run.faults[f];
    let error = err.to_string();
    run.tally().faults[f].error = Some(error.clone());
    run.log(format!("inject {} failed: {error}", fault.name));
    run.emit(ProgressEvent::FaultFailed {
        fault: fault.name.clone(),
        error: error.clone(),
    });
    run.stop_with(Stop::FaultError(format!(
        "fault '{}' could not be injected: {error}",
        fault.name
    )));
}

/// After an inject that failed or was cut off: keeps what may need reverting (with the
/// guard), or, when it left nothing behind, tells the guard `done`.
fn keep_cleanup(
    active: &InjectedFaults,
    fault: &crate::catalog::experiment::Fault,
    f: usize,
    guard: Option<Guard>,
) {
    match fault::after_failed_inject(fault) {
        Some(cleanup) => active.add(f, cleanup, guard),
        None => {
            if let Some(guard) = guard
                && let Err(err) = guard.done()
            {
                tracing::warn!(error = %err, fault = %fault.name,
                    "cannot tell a fault's guard 'done' after a failed inject");
            }
        }
    }
}

/// Injects fault `f`; returns when it is due to be reverted, or `None` when it could not
/// be injected or the run stopped meanwhile. A guarded kind is injected only once its
/// guard holds the revert: a guard that cannot be armed is an inject error.
pub(super) async fn inject_fault(
    run: &Arc<Run>,
    active: &InjectedFaults,
    setup: &FaultSetup,
    f: usize,
) -> Option<Instant> {
    let fault = &run.faults[f];
    let (planned, guard) = match arm_guard(fault, setup).await {
        Ok(armed) => armed,
        Err(err) => {
            inject_failed(run, f, &err);
            return None;
        }
    };
    let outcome = run
        .stop
        .run_until_cancelled(fault::inject(fault, setup, planned.as_ref()).instrument(
            traces::fault_span(&run.span, "inject", &fault.name, fault.kind.name()),
        ))
        .await;
    match outcome {
        Some(Ok(injected)) => {
            metrics::fault_injected();
            let now = Utc::now();
            let end = Instant::now() + fault.duration.duration();
            active.add(f, injected, guard);
            let description = fault::describe(fault);
            run.tally().faults[f].started_at = Some(now);
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
        Some(Err(FaultError::Proxy(ProxyError::TargetBusy { target, owner }))) => {
            // Another run held the target in its proxy for all of `target_wait`: the
            // run is aborted as for a busy in-process target, the fault not in error.
            let waited = setup.ownership.target_wait.unwrap_or_default();
            let held = format!("proxy:{target} (held by {owner} in its proxy)");
            run.stop_with(Stop::TargetsBusy(waited, vec![held]));
            None
        }
        Some(Err(err)) => {
            keep_cleanup(active, fault, f, guard);
            inject_failed(run, f, &err);
            None
        }
        None => {
            // Cut off mid-inject: undo whatever part of it may have happened.
            keep_cleanup(active, fault, f, guard);
            None
        }
    }
}

/// Reverts fault `f`, whatever the run's state: a failed revert is retried with backoff
/// until it succeeds or the fault's lease has passed since its first failure (see
/// [`super::revert`]). When it gives up, the fault is handed over (a proxy fault ends with
/// its proxy lease, a guarded one is reverted by its guard), the record names it with
/// `reverted: false` and the error, and the run stops with `error`.
pub(super) async fn revert_fault(run: &Arc<Run>, active: &InjectedFaults, f: usize) {
    let Some(injected) = active.start_revert(f) else {
        return;
    };
    let fault = &run.faults[f];
    let kind = fault.kind.name();
    let span = traces::fault_span(&run.span, "revert", &fault.name, kind);
    let outcome = revert::until_lease(run, &fault.name, kind, &injected, &span).await;
    // The guard is told `done` only after the runner's own revert succeeded; on give-up
    // it takes the fault over.
    active.finish(f, outcome.is_ok());
    let error = match &outcome {
        Ok(1) => {
            run.log(format!("revert {}", fault.name));
            None
        }
        Ok(tries) => {
            run.log(format!("revert {} (after {tries} tries)", fault.name));
            None
        }
        Err(gave_up) => {
            let e = format!(
                "revert failed {} times over {:.1}s (retried until the fault's lease, {}), last error: {}",
                gave_up.tries,
                gave_up.for_how_long.as_secs_f64(),
                crate::catalog::Span(run.lease),
                gave_up.error
            );
            tracing::error!(parent: &span, fault = %fault.name, kind, error = %e, "revert given up at the fault's lease; the fault may still be active");
            run.log(format!(
                "revert {} FAILED: {e}; handed over to its lease or guard",
                fault.name
            ));
            Some(e)
        }
    };
    {
        let mut tallies = run.tally();
        let entry = &mut tallies.faults[f];
        if entry.started_at.is_some() {
            metrics::fault_reverted();
        }
        entry.ended_at = Some(Utc::now());
        entry.reverted = error.is_none();
        if let Some(e) = &error {
            entry.error = Some(match entry.error.take() {
                // An inject that failed first: both are part of the story.
                Some(earlier) => format!("{earlier}; then {e}"),
                None => e.clone(),
            });
        }
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
