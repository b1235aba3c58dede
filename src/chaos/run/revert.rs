//! Reverting one fault until it is gone: a failed revert is tried again with backoff
//! ([`FIRST_BACKOFF`], doubling, at most [`MAX_BACKOFF`]) until it succeeds or the
//! fault's lease (`worker.fault_lease`) has passed since its first failure. Every failed
//! try is logged (in the run's log and as a warning, naming the fault, the try and the
//! error) and counted (`chaosgate_fault_revert_failures_total`, by fault kind).
//!
//! The rule: a revert is never cut off by the run's cancellation or timeout; only the
//! lease ends its retries. What is still active then is handed over: a proxy fault ends
//! with its proxy lease, a guarded fault is reverted by its guard, and the record names
//! the fault with `reverted: false`.
//!
//! Reverts in progress are counted process-wide ([`reverts_in_progress`],
//! [`reverts_settled`]), so a shutdown can wait for them within `worker.shutdown_grace`
//! and name those the grace cut off.

use std::collections::BTreeMap;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tracing::Instrument;

use super::state::Run;
use crate::chaos::fault::{self, FaultError, Injected};
use crate::telemetry::metrics;

/// The wait after a revert's first failure; each later wait doubles, up to [`MAX_BACKOFF`].
pub(crate) const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// The longest wait between two tries of a revert.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(4);

/// How a revert that was retried ended.
#[derive(Debug)]
pub(super) struct GaveUp {
    /// The last try's error.
    pub(super) error: FaultError,
    /// Tries made in all.
    pub(super) tries: u32,
    /// From the first failure to the last try.
    pub(super) for_how_long: Duration,
}

/// The wait before the next try, after a try that failed `elapsed` after the first
/// failure, when the previous wait was `previous` (`None` after the first failure);
/// `None` once `lease` has passed: give up. The last wait is cut to end at the lease, so
/// the last try happens when the lease ends.
fn next_wait(previous: Option<Duration>, elapsed: Duration, lease: Duration) -> Option<Duration> {
    let left = lease.checked_sub(elapsed).filter(|left| !left.is_zero())?;
    let wait = previous.map_or(FIRST_BACKOFF, |p| (p * 2).min(MAX_BACKOFF));
    Some(wait.min(left))
}

/// Reverts `injected` (fault `name` of kind `kind`), retrying a failed revert with
/// backoff until it succeeds or `run.lease` has passed since the first failure.
///
/// `Ok(tries)` when it is gone (tries made in all); [`GaveUp`] with the last error when
/// the lease ended the retries. Each failed try is logged in the run's log.
pub(super) async fn until_lease(
    run: &Run,
    name: &str,
    kind: &str,
    injected: &Injected,
    span: &tracing::Span,
) -> Result<u32, GaveUp> {
    let _in_progress = InProgress::begin(name);
    let mut tries = 0;
    let mut first_failure: Option<Instant> = None;
    let mut wait = None;
    loop {
        tries += 1;
        let error = match fault::revert(injected).instrument(span.clone()).await {
            Ok(()) => return Ok(tries),
            Err(error) => error,
        };
        metrics::fault_revert_failed(kind);
        let since = *first_failure.get_or_insert_with(Instant::now);
        let elapsed = since.elapsed();
        let Some(next) = next_wait(wait, elapsed, run.lease) else {
            return Err(GaveUp {
                error,
                tries,
                for_how_long: elapsed,
            });
        };
        tracing::warn!(
            parent: span,
            fault = name,
            kind,
            r#try = tries,
            error = %error,
            retry_in_ms = next.as_millis() as u64,
            "revert failed; trying again"
        );
        run.log(format!(
            "revert {name} failed (try {tries}): {error}; next try in {} ms",
            next.as_millis()
        ));
        tokio::time::sleep(next).await;
        wait = Some(next);
    }
}

/// Reverts in progress in this process, by id: the fault's name.
static IN_PROGRESS: LazyLock<watch::Sender<BTreeMap<u64, String>>> =
    LazyLock::new(|| watch::Sender::new(BTreeMap::new()));
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// One revert in progress, counted until dropped.
struct InProgress(u64);

impl InProgress {
    fn begin(fault: &str) -> InProgress {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        IN_PROGRESS.send_modify(|reverts| {
            reverts.insert(id, fault.to_string());
        });
        InProgress(id)
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        IN_PROGRESS.send_modify(|reverts| {
            reverts.remove(&self.0);
        });
    }
}

/// The names of the faults being reverted in this process now (their retries included).
pub fn reverts_in_progress() -> Vec<String> {
    IN_PROGRESS.borrow().values().cloned().collect()
}

/// Returns once no revert is in progress in this process. Bound it with a timeout: a
/// revert retries until its fault's lease ends.
pub async fn reverts_settled() {
    let mut reverts = IN_PROGRESS.subscribe();
    // The sender is a static: it never closes.
    let _ = reverts.wait_for(BTreeMap::is_empty).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn waits_double_up_to_the_cap_and_the_last_one_ends_at_the_lease() {
        let lease = Duration::from_secs(10);
        let mut elapsed = Duration::ZERO;
        let mut wait = None;
        let mut waits = Vec::new();
        while let Some(next) = next_wait(wait, elapsed, lease) {
            waits.push(next);
            elapsed += next;
            wait = Some(next);
        }
        assert_eq!(
            waits,
            [ms(250), ms(500), ms(1000), ms(2000), ms(4000), ms(2250)]
        );
        assert_eq!(elapsed, lease, "the last try is made when the lease ends");
    }

    #[test]
    fn a_lease_already_over_gives_up_at_once() {
        assert_eq!(next_wait(None, ms(10), ms(10)), None);
        assert_eq!(next_wait(Some(ms(500)), ms(11), ms(10)), None);
        assert_eq!(next_wait(None, ms(0), ms(100)), Some(ms(100)));
    }

    #[tokio::test]
    async fn reverts_in_progress_are_named_until_they_end() {
        let name = format!("fault-{}", std::process::id());
        let revert = InProgress::begin(&name);
        assert!(reverts_in_progress().contains(&name));
        let settled = tokio::spawn(async {
            // Other tests of this binary may be reverting too; they end within seconds.
            tokio::time::timeout(Duration::from_secs(30), reverts_settled()).await
        });
        tokio::time::sleep(ms(50)).await;
        assert!(
            !settled.is_finished(),
            "settled while a revert was in progress"
        );
        drop(revert);
        assert!(!reverts_in_progress().contains(&name));
        assert!(settled.await.expect("join").is_ok());
    }
}
