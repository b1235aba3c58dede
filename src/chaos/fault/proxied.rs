//! `network` and `http` faults: added to chaosgate's fault proxy with a lease.
//!
//! A fault that names a `proxy` URL goes to that standalone `chaosgate proxy` through its
//! control API (with the process's [`ProxyAccess`]: token, CA); otherwise to the proxy
//! embedded in this process. Either way the proxy drops the fault when its lease runs
//! out, so the runner renews it until it reverts it.
//!
//! The proxy grants a target to one owner (run) at a time. A fault refused because
//! another run holds its target ([`ProxyError::TargetBusy`], 409 from a standalone proxy)
//! is tried again with backoff for up to the run's `target_wait`, as a run waits for the
//! in-process target lock; the first refusal is reported once through [`Ownership`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::catalog::experiment::{HttpFault, NetworkFault};
use crate::chaos::proxy::{FaultBackend, FaultId, ProxyAccess, ProxyError, ProxyRegistry};

/// First pause before a busy target is asked again; it doubles up to [`BUSY_BACKOFF_MAX`].
const BUSY_BACKOFF_FIRST: Duration = Duration::from_millis(100);

/// Longest pause between two asks for a busy target.
const BUSY_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// What [`BusyReport`] calls: `(target, owner)`.
type OnBusy = dyn Fn(&str, &str) + Send + Sync;

/// Called once when a fault's target is held by another owner: `(target, owner)`.
#[derive(Clone)]
pub(crate) struct BusyReport(pub(crate) Arc<OnBusy>);

impl fmt::Debug for BusyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BusyReport")
    }
}

/// For whom a run adds proxy faults, how it reaches standalone proxies, and how long it
/// waits for a target another owner holds.
#[derive(Debug, Clone, Default)]
pub(crate) struct Ownership {
    /// The run's owner id, unique per run (see [`owner_id`]).
    pub(crate) owner: String,
    /// Token and CA for standalone proxies.
    pub(crate) access: ProxyAccess,
    /// The longest the run waits for a busy target; `None`: no bound.
    pub(crate) target_wait: Option<Duration>,
    /// Told once per fault when its target is busy.
    pub(crate) on_busy: Option<BusyReport>,
}

/// A run-unique owner id: the host, the process and a random part, with the experiment's
/// id for people reading a 409 (`HOST/PID/EXPERIMENT/RANDOM`).
pub(crate) fn owner_id(experiment: &str) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".to_string());
    let random = uuid::Uuid::new_v4().simple().to_string();
    let experiment: String = experiment.chars().take(120).collect();
    format!(
        "{host}/{}/{experiment}/{}",
        std::process::id(),
        &random[..12]
    )
}

/// A fault active in a proxy: where it is and its id there.
#[derive(Debug, Clone)]
pub(crate) struct ProxyFault {
    /// The embedded registry or the standalone proxy's client.
    pub(crate) backend: FaultBackend,
    /// The fault's id in that proxy.
    pub(crate) id: FaultId,
}

/// Adds a network fault to its proxy for `lease`, waiting while its target is busy.
pub(crate) async fn inject_network(
    fault: &NetworkFault,
    embedded: Option<&Arc<ProxyRegistry>>,
    ownership: &Ownership,
    lease: Duration,
) -> Result<ProxyFault, ProxyError> {
    let backend = select(fault.proxy.as_deref(), embedded, ownership)?;
    let id = while_busy(ownership, || backend.add_network_fault(fault, lease)).await?;
    Ok(ProxyFault { backend, id })
}

/// Adds an HTTP fault to its proxy for `lease`, waiting while its target is busy.
pub(crate) async fn inject_http(
    fault: &HttpFault,
    embedded: Option<&Arc<ProxyRegistry>>,
    ownership: &Ownership,
    lease: Duration,
) -> Result<ProxyFault, ProxyError> {
    let backend = select(fault.proxy.as_deref(), embedded, ownership)?;
    let id = while_busy(ownership, || backend.add_http_fault(fault, lease)).await?;
    Ok(ProxyFault { backend, id })
}

/// The standalone proxy at `proxy`, else the embedded one, for the run's owner.
fn select(
    proxy: Option<&str>,
    embedded: Option<&Arc<ProxyRegistry>>,
    ownership: &Ownership,
) -> Result<FaultBackend, ProxyError> {
    FaultBackend::select(proxy, embedded, &ownership.access, &ownership.owner)
}

/// Calls `add` until it is not refused as [`ProxyError::TargetBusy`], pausing with
/// backoff (jittered, doubling from 100 ms to 2 s) in between; after
/// `ownership.target_wait`, the last refusal is the answer.
async fn while_busy<F, Fut>(ownership: &Ownership, add: F) -> Result<FaultId, ProxyError>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<FaultId, ProxyError>>,
{
    let started = Instant::now();
    let mut backoff = BUSY_BACKOFF_FIRST;
    let mut told = false;
    loop {
        let err = match add().await {
            Err(err @ ProxyError::TargetBusy { .. }) => err,
            other => return other,
        };
        if let (false, ProxyError::TargetBusy { target, owner }) = (told, &err) {
            told = true;
            tracing::info!(target_name = %target, %owner, "proxy target busy; waiting");
            if let Some(report) = &ownership.on_busy {
                (report.0)(target, owner);
            }
        }
        let pause = jittered(backoff);
        let pause = match ownership.target_wait {
            Some(limit) => match limit.checked_sub(started.elapsed()) {
                Some(left) if !left.is_zero() => pause.min(left),
                _ => return Err(err),
            },
            None => pause,
        };
        tokio::time::sleep(pause).await;
        backoff = (backoff * 2).min(BUSY_BACKOFF_MAX);
    }
}

/// `pause` less up to a quarter, at random, so runners waiting on one target do not ask
/// in step.
fn jittered(pause: Duration) -> Duration {
    pause.mul_f64(1.0 - rand::random::<f64>() * 0.25)
}

/// Extends the fault's lease to `lease` from now.
pub(crate) async fn renew(active: &ProxyFault, lease: Duration) -> Result<(), ProxyError> {
    active.backend.renew(active.id, lease).await
}

/// Removes the fault; one that is already gone (lease expired) counts as removed.
pub(crate) async fn revert(active: &ProxyFault) -> Result<(), ProxyError> {
    active.backend.remove(active.id).await.map(drop)
}

/// Removes the fault at once when it is in the embedded proxy; `false` when it is in a
/// standalone one (that takes an HTTP call).
pub(crate) fn revert_now(active: &ProxyFault) -> bool {
    match &active.backend {
        FaultBackend::Embedded(registry, _) => {
            registry.remove(active.id);
            true
        }
        FaultBackend::Remote(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn busy() -> ProxyError {
        ProxyError::TargetBusy {
            target: "db".into(),
            owner: "other-run".into(),
        }
    }

    #[tokio::test]
    async fn a_busy_target_is_asked_again_until_free_and_reported_once() {
        let told = Arc::new(Mutex::new(Vec::new()));
        let ownership = Ownership {
            target_wait: Some(Duration::from_secs(30)),
            on_busy: Some(BusyReport(Arc::new({
                let told = told.clone();
                move |target: &str, owner: &str| {
                    told.lock().unwrap().push(format!("{target} {owner}"));
                }
            }))),
            ..Ownership::default()
        };
        let calls = AtomicU32::new(0);
        let id = while_busy(&ownership, || async {
            if calls.fetch_add(1, Ordering::SeqCst) < 3 {
                Err(busy())
            } else {
                Ok(FaultId(7))
            }
        })
        .await
        .expect("granted once free");
        assert_eq!(id, FaultId(7));
        assert_eq!(calls.load(Ordering::SeqCst), 4);
        assert_eq!(*told.lock().unwrap(), ["db other-run"]);
    }

    #[tokio::test]
    async fn the_wait_ends_with_the_refusal_after_target_wait() {
        let ownership = Ownership {
            target_wait: Some(Duration::from_millis(300)),
            ..Ownership::default()
        };
        let started = std::time::Instant::now();
        let err = while_busy(&ownership, || async { Err(busy()) })
            .await
            .expect_err("never free");
        assert!(matches!(err, ProxyError::TargetBusy { .. }), "{err}");
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(300), "{waited:?}");
        assert!(waited < Duration::from_secs(10), "{waited:?}");
        // Other errors end at once.
        let err = while_busy(&ownership, || async {
            Err(ProxyError::UnknownTarget("x".into()))
        })
        .await
        .expect_err("unknown");
        assert!(matches!(err, ProxyError::UnknownTarget(_)));
    }

    #[test]
    fn owner_ids_are_unique_per_run_and_name_the_experiment() {
        let a = owner_id("db-latency");
        let b = owner_id("db-latency");
        assert_ne!(a, b);
        assert!(a.contains("/db-latency/"), "{a}");
        assert!(a.contains(&format!("/{}/", std::process::id())), "{a}");
    }
}
