//! Fault leases: every active fault has an expiry, renewed by its runner; a reaper
//! removes the faults whose lease ran out, so a crashed runner never leaves one behind.
//!
//! The table is the single record of which faults are active. Adding, renewing, removing
//! and reaping happen under its lock, and a fault leaves its target's fault set in the
//! same critical section that removes it from the table.
//!
//! Each fault has an owner (the run that added it). A target belongs to the owner of its
//! unexpired faults: another owner's fault is refused ([`ProxyError::TargetBusy`]) until
//! the last of them is removed or its lease runs out. The check and the insert happen
//! under the same lock, so two owners can never both get in.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::error::{FaultId, ProxyError};
use super::state::{FaultSet, FaultSpec, ProxyFaultStatus, TargetState};

/// The owner of faults added without one (older clients, `curl`): they share it.
pub const ANONYMOUS_OWNER: &str = "anonymous";

/// How often the reaper looks for expired leases.
pub(crate) const REAP_EVERY: Duration = Duration::from_millis(50);

/// The longest lease a fault may take (a day): a runner must come back at least that
/// often, and a lease can never overflow the clock.
pub(crate) const MAX_LEASE: Duration = Duration::from_secs(24 * 3600);

/// One active fault and its lease.
struct Lease {
    target: Arc<TargetState>,
    owner: String,
    fault: FaultSpec,
    expires: Instant,
}

/// The active faults of a registry, by id.
#[derive(Default)]
pub(crate) struct LeaseTable {
    entries: Mutex<HashMap<FaultId, Lease>>,
}

impl std::fmt::Debug for LeaseTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LeaseTable")
    }
}

/// The expiry of a lease taken now, or why the lease is refused.
pub(crate) fn deadline(lease: Duration) -> Result<Instant, ProxyError> {
    let invalid = |message: String| ProxyError::InvalidFault {
        field: "lease".into(),
        message,
    };
    if lease.is_zero() {
        return Err(invalid("must be longer than 0".into()));
    }
    if lease > MAX_LEASE {
        return Err(invalid(format!(
            "{lease:?} is longer than the maximum of {MAX_LEASE:?}"
        )));
    }
    Instant::now()
        .checked_add(lease)
        .ok_or_else(|| invalid("out of the clock's range".into()))
}

impl LeaseTable {
    fn lock(&self) -> MutexGuard<'_, HashMap<FaultId, Lease>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a fault of `owner` and adds it to its target's fault set with `attach`,
    /// under the lock, so no renew or reap sees one without the other.
    ///
    /// Refused with [`ProxyError::TargetBusy`], nothing added, while another owner has
    /// an unexpired fault on the same target.
    pub(crate) fn insert(
        &self,
        id: FaultId,
        target: Arc<TargetState>,
        owner: &str,
        fault: FaultSpec,
        expires: Instant,
        attach: impl FnOnce(&mut FaultSet),
    ) -> Result<(), ProxyError> {
        let mut entries = self.lock();
        let now = Instant::now();
        let holder = entries
            .values()
            .find(|l| Arc::ptr_eq(&l.target, &target) && l.expires > now && l.owner != owner);
        if let Some(holder) = holder {
            return Err(ProxyError::TargetBusy {
                target: target.target.name.clone(),
                owner: holder.owner.clone(),
            });
        }
        target.faults.send_modify(|set| attach(Arc::make_mut(set)));
        entries.insert(
            id,
            Lease {
                target,
                owner: owner.to_string(),
                fault,
                expires,
            },
        );
        Ok(())
    }

    /// The owner holding the target named `name`: the owner of its unexpired faults.
    pub(crate) fn owner_of(&self, name: &str) -> Option<String> {
        let now = Instant::now();
        self.lock()
            .values()
            .find(|l| l.target.target.name == name && l.expires > now)
            .map(|l| l.owner.clone())
    }

    /// Moves the expiry of an active fault; an expired one is removed and refused.
    pub(crate) fn renew(&self, id: FaultId, expires: Instant) -> Result<(), ProxyError> {
        let mut entries = self.lock();
        match entries.get_mut(&id) {
            Some(lease) if lease.expires > Instant::now() => {
                lease.expires = expires;
                Ok(())
            }
            Some(_) => {
                if let Some(lease) = entries.remove(&id) {
                    lease.target.detach(id);
                }
                Err(ProxyError::UnknownFault(id))
            }
            None => Err(ProxyError::UnknownFault(id)),
        }
    }

    /// Removes a fault; false when it was not active.
    pub(crate) fn remove(&self, id: FaultId) -> bool {
        let mut entries = self.lock();
        match entries.remove(&id) {
            Some(lease) => {
                lease.target.detach(id);
                true
            }
            None => false,
        }
    }

    /// Removes every fault whose lease has run out; returns their ids.
    pub(crate) fn reap(&self) -> Vec<FaultId> {
        let now = Instant::now();
        let mut entries = self.lock();
        let expired: Vec<FaultId> = entries
            .iter()
            .filter(|(_, lease)| lease.expires <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in &expired {
            if let Some(lease) = entries.remove(id) {
                lease.target.detach(*id);
            }
        }
        expired
    }

    /// Removes every fault.
    pub(crate) fn clear(&self) {
        let mut entries = self.lock();
        for (id, lease) in entries.drain() {
            lease.target.detach(id);
        }
    }

    /// How many faults have a lease still running.
    pub(crate) fn active_count(&self) -> usize {
        let now = Instant::now();
        self.lock().values().filter(|l| l.expires > now).count()
    }

    /// The unexpired faults on the target named `name`, oldest id first.
    pub(crate) fn on_target(&self, name: &str) -> Vec<ProxyFaultStatus> {
        let now = Instant::now();
        let mut faults: Vec<ProxyFaultStatus> = self
            .lock()
            .iter()
            .filter(|(_, l)| l.target.target.name == name && l.expires > now)
            .map(|(id, l)| ProxyFaultStatus {
                id: *id,
                expires_in_ms: u64::try_from((l.expires - now).as_millis()).unwrap_or(u64::MAX),
                fault: l.fault.clone(),
            })
            .collect();
        faults.sort_by_key(|f| f.id);
        faults
    }
}

/// Reaps expired leases every [`REAP_EVERY`] until the table is gone (its registry
/// dropped) or `cancel`.
pub(crate) async fn reap_every(leases: Weak<LeaseTable>, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(REAP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(leases) = leases.upgrade() else {
            return;
        };
        for id in leases.reap() {
            tracing::info!(fault = %id, "fault lease expired; fault removed");
        }
    }
}
