//! Driving a run's faults: inject, renew the leases of proxied ones, revert (a failed
//! revert is tried [`REVERT_TRIES`] times), and [`InjectedFaults`], the guard that reverts
//! whatever is still active when the run is dropped or panics.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use chrono::Utc;
use tokio::time::Instant;
use tracing::Instrument;

use super::progress::ProgressEvent;
use super::state::{Run, Stop};
use crate::chaos::fault::{self, FaultError, FaultSetup, Injected};
use crate::chaos::proxy::ProxyError;
use crate::telemetry::{metrics, traces};

/// How often a failed revert is tried in all.
pub(super) const REVERT_TRIES: u32 = 3;

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

/// Reverts fault `f` (retrying a failed revert), whatever the run's state.
pub(super) async fn revert_fault(run: &Arc<Run>, active: &InjectedFaults, f: usize) {
    let Some(injected) = active.start_revert(f) else {
        return;
    };
    let fault = &run.faults[f];
    let span = traces::fault_span(&run.span, "revert", &fault.name, fault.kind.name());
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
        let mut tallies = run.tally();
        let entry = &mut tallies.faults[f];
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
