//! Driving a run's faults: inject, renew the leases of proxied ones, revert (a failed
//! revert is retried with backoff until the fault's lease: [`super::revert`]), and [`InjectedFaults`], the guard that reverts
//! whatever is still active when the run is dropped or panics.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use chrono::Utc;
use tokio::time::Instant;
use tracing::Instrument;

use super::progress::ProgressEvent;
use super::revert;
use super::state::{Run, Stop};
use crate::chaos::fault::{self, FaultError, FaultSetup, Injected};
use crate::chaos::proxy::ProxyError;
use crate::telemetry::{metrics, traces};

/// Faults injected and not yet reverted. Dropping it reverts them in the background:
/// the last line of defence when the runner is dropped or panics.
#[derive(Default)]
pub(super) struct InjectedFaults {
    faults: Mutex<Vec<InjectedFault>>,
}

/// One injected fault; `reverting` once its revert has begun (no more lease renewals).
pub(super) struct InjectedFault {
    index: usize,
    injected: Injected,
    reverting: bool,
}

impl InjectedFaults {
    pub(super) fn list(&self) -> std::sync::MutexGuard<'_, Vec<InjectedFault>> {
        self.faults
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(super) fn add(&self, index: usize, injected: Injected) {
        self.list().push(InjectedFault {
            index,
            injected,
            reverting: false,
        });
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

    pub(super) fn remove(&self, index: usize) {
        self.list().retain(|a| a.index != index);
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
        for InjectedFault { injected, .. } in left {
            tracing::warn!(
                "runner dropped with a fault still active; reverting it in the background"
            );
            fault::revert_detached(injected);
        }
    }
}

pub(super) async fn renew_leases(active: Weak<InjectedFaults>, run: Arc<Run>, lease: Duration) {
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
                run.tally().faults[index].error.get_or_insert(error);
            } else if live {
                run.log(format!("renew {name} failed (will retry): {err}"));
            }
        }
    }
}

/// Injects fault `f`; returns when it is due to be reverted, or `None` when it could not
/// be injected or the run stopped meanwhile.
pub(super) async fn inject_fault(
    run: &Arc<Run>,
    active: &InjectedFaults,
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
            fault.kind.name(),
        )))
        .await;
    match outcome {
        Some(Ok(injected)) => {
            metrics::fault_injected();
            let now = Utc::now();
            let end = Instant::now() + fault.duration.duration();
            active.add(f, injected);
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
            let error = err.to_string();
            run.tally().faults[f].error = Some(error.clone());
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
    // GUARD-JOIN (issue 13 point 1, branch `guard`): on success, tell the fault's guard
    // it is done before the entry goes, e.g. `if outcome.is_ok() { active.reverted(f) }`.
    // On give-up the entry (and its guard handle) is dropped without "done": the guard
    // takes the fault over.
    active.remove(f);
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
