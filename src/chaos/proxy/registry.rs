//! The running proxy targets and the leased faults on them.
//!
//! [`ProxyRegistry::start`] opens one listener per target. Each target publishes its
//! active faults through a `watch` channel: open connections see a fault added or
//! removed on their next chunk, and new connections see the current set. The lease
//! table (`lease`) is the record of what is active; the reaper removes what expired.
//!
//! The rule that keeps it right: the registry sits above the proxy's other modules
//! (listener, lease, toxic, state, ...) and none of them imports it; what they share
//! lives in `state`.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::error::{FaultId, ProxyError};
use super::lease::{self, ANONYMOUS_OWNER, LeaseTable};
use super::listener;
use super::rule::HttpRule;
use super::settings::{ProxyProtocol, ProxyTarget};
use super::state::{FaultSpec, TargetState, TargetStatus};
use super::toxic;
use crate::catalog::experiment::{HttpFault, NetworkFault};

/// How long [`ProxyRegistry::shutdown`] waits for open connections to close.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

/// The running proxy targets and their leased faults. Share it as `Arc<ProxyRegistry>`.
///
/// Dropping the last handle stops the listeners; [`ProxyRegistry::shutdown`] also waits
/// for them and for open connections to close.
#[derive(Debug)]
pub struct ProxyRegistry {
    targets: Vec<Arc<TargetState>>,
    leases: Arc<LeaseTable>,
    next_id: AtomicU64,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

impl ProxyRegistry {
    /// Opens one listener per target and starts the lease reaper.
    ///
    /// Fails, with nothing left running, when two targets share a name or a listen
    /// address cannot be bound.
    pub async fn start(targets: &[ProxyTarget]) -> Result<Arc<ProxyRegistry>, ProxyError> {
        let mut names = HashSet::new();
        for target in targets {
            if !names.insert(target.name.as_str()) {
                return Err(ProxyError::DuplicateTarget(target.name.clone()));
            }
        }
        let mut bound = Vec::with_capacity(targets.len());
        for target in targets {
            let bind_error = |source| ProxyError::Bind {
                target: target.name.clone(),
                listen: target.listen,
                source,
            };
            let listener = TcpListener::bind(target.listen).await.map_err(bind_error)?;
            let listen = listener.local_addr().map_err(bind_error)?;
            let state = TargetState::new(ProxyTarget {
                listen,
                ..target.clone()
            });
            bound.push((listener, Arc::new(state)));
        }
        let cancel = CancellationToken::new();
        let tasks = TaskTracker::new();
        let mut states = Vec::with_capacity(bound.len());
        for (listener, state) in bound {
            tracing::info!(
                target_name = %state.target.name,
                listen = %state.target.listen,
                upstream = %state.target.upstream,
                protocol = %state.target.protocol,
                "proxy target listening"
            );
            tasks.spawn(listener::serve_listener(
                listener,
                Arc::clone(&state),
                cancel.clone(),
                tasks.clone(),
            ));
            states.push(state);
        }
        let registry = Arc::new(ProxyRegistry {
            targets: states,
            leases: Arc::new(LeaseTable::default()),
            next_id: AtomicU64::new((rand::random::<u64>() >> 12) | 1),
            cancel: cancel.clone(),
            tasks,
        });
        tokio::spawn(lease::reap_every(Arc::downgrade(&registry.leases), cancel));
        Ok(registry)
    }

    /// The targets with their active faults and connection counters.
    pub fn targets(&self) -> Vec<TargetStatus> {
        self.targets
            .iter()
            .map(|t| {
                let name = &t.target.name;
                t.status(self.leases.owner_of(name), self.leases.on_target(name))
            })
            .collect()
    }

    /// Adds a network toxic to `target` for `lease`, as [`ANONYMOUS_OWNER`]; see
    /// [`Self::add_network_fault_as`].
    pub fn add_network_fault(
        &self,
        target: &str,
        fault: &NetworkFault,
        lease: Duration,
    ) -> Result<FaultId, ProxyError> {
        self.add_network_fault_as(target, ANONYMOUS_OWNER, fault, lease)
    }

    /// Adds an HTTP fault to `target` for `lease`, as [`ANONYMOUS_OWNER`]; see
    /// [`Self::add_http_fault_as`].
    pub fn add_http_fault(
        &self,
        target: &str,
        fault: &HttpFault,
        lease: Duration,
    ) -> Result<FaultId, ProxyError> {
        self.add_http_fault_as(target, ANONYMOUS_OWNER, fault, lease)
    }

    /// Adds a network toxic of `owner` to `target` for `lease`; it applies to open
    /// connections from their next chunk on, and to new ones.
    ///
    /// [`ProxyError::TargetBusy`] while another owner has a fault on `target`.
    pub fn add_network_fault_as(
        &self,
        target: &str,
        owner: &str,
        fault: &NetworkFault,
        lease: Duration,
    ) -> Result<FaultId, ProxyError> {
        toxic::validate(fault)?;
        let state = self.target(target)?;
        let expires = lease::deadline(lease)?;
        let id = self.next_id();
        let network = fault.clone();
        self.leases.insert(
            id,
            Arc::clone(state),
            owner,
            FaultSpec::Network(fault.clone()),
            expires,
            |set| set.network.push((id, network)),
        )?;
        tracing::info!(fault = %id, target_name = target, owner, toxic = ?fault.toxic, "network fault added");
        Ok(id)
    }

    /// Adds an HTTP fault of `owner` to the HTTP target `target` for `lease`;
    /// [`ProxyError::TargetBusy`] while another owner has a fault on `target`.
    pub fn add_http_fault_as(
        &self,
        target: &str,
        owner: &str,
        fault: &HttpFault,
        lease: Duration,
    ) -> Result<FaultId, ProxyError> {
        let rule = Arc::new(HttpRule::compile(fault)?);
        let state = self.target(target)?;
        if state.target.protocol != ProxyProtocol::Http {
            return Err(ProxyError::WrongProtocol {
                target: target.to_string(),
                protocol: state.target.protocol,
            });
        }
        let expires = lease::deadline(lease)?;
        let id = self.next_id();
        self.leases.insert(
            id,
            Arc::clone(state),
            owner,
            FaultSpec::Http(fault.clone()),
            expires,
            |set| set.http.push((id, rule)),
        )?;
        tracing::info!(fault = %id, target_name = target, owner, action = ?fault.action, "http fault added");
        Ok(id)
    }

    /// Extends the lease of an active fault to `lease` from now; an unknown, removed or
    /// expired fault is an error (the runner must add it again).
    pub fn renew(&self, id: FaultId, lease: Duration) -> Result<(), ProxyError> {
        let expires = lease::deadline(lease)?;
        self.leases.renew(id, expires)
    }

    /// Removes a fault; false when it was not active.
    pub fn remove(&self, id: FaultId) -> bool {
        let removed = self.leases.remove(id);
        if removed {
            tracing::info!(fault = %id, "fault removed");
        }
        removed
    }

    /// How many faults are active (lease not expired).
    pub fn active_fault_count(&self) -> usize {
        self.leases.active_count()
    }

    /// Stops the listeners, drops every fault, and waits (up to 5 s) for open
    /// connections to close. Calling it again does nothing more.
    pub async fn shutdown(&self) {
        self.cancel.cancel();
        self.leases.clear();
        self.tasks.close();
        if tokio::time::timeout(SHUTDOWN_WAIT, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("proxy connections still open after {SHUTDOWN_WAIT:?}; leaving them");
        }
    }

    fn target(&self, name: &str) -> Result<&Arc<TargetState>, ProxyError> {
        self.targets
            .iter()
            .find(|t| t.target.name == name)
            .ok_or_else(|| ProxyError::UnknownTarget(name.to_string()))
    }

    fn next_id(&self) -> FaultId {
        FaultId(self.next_id.fetch_add(1, Ordering::Relaxed))
    }
}

impl Drop for ProxyRegistry {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}
