//! The running proxy targets and the leased faults on them.
//!
//! [`ProxyRegistry::start`] opens one listener per target. Each target publishes its
//! active faults through a `watch` channel: open connections see a fault added or
//! removed on their next chunk, and new connections see the current set. The lease
//! table (`lease`) is the record of what is active; the reaper removes what expired.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::http::HttpRule;
use super::lease::{self, LeaseTable};
use super::{FaultId, ProxyError, ProxyProtocol, ProxyTarget, tcp, toxic};
use crate::catalog::experiment::{HttpFault, NetworkFault};

/// How long [`ProxyRegistry::shutdown`] waits for open connections to close.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

/// A fault as added: network or HTTP. Serialised as `{"network": {..}}` or `{"http": {..}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultSpec {
    /// A network toxic.
    Network(NetworkFault),
    /// An HTTP fault.
    Http(HttpFault),
}

/// One active fault on a target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActiveFault {
    /// Its id.
    pub id: FaultId,
    /// Time left on its lease, in milliseconds.
    pub expires_in_ms: u64,
    /// The fault.
    #[serde(flatten)]
    pub fault: FaultSpec,
}

/// A running target as the control API and the engine see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetStatus {
    /// The target's name.
    pub name: String,
    /// The address it listens on (the bound port when the config said 0).
    pub listen: SocketAddr,
    /// Where traffic goes.
    pub upstream: String,
    /// `tcp` or `http`.
    pub protocol: ProxyProtocol,
    /// Its active faults.
    pub faults: Vec<ActiveFault>,
    /// Connections accepted since start.
    pub connections_total: u64,
    /// Connections open now.
    pub connections_open: u64,
    /// New connections closed at once by a `refuse` toxic.
    pub connections_refused: u64,
}

/// The faults active on one target, as its connections read them.
#[derive(Debug, Clone, Default)]
pub(crate) struct FaultSet {
    /// Network toxics, in the order they were added.
    pub network: Vec<(FaultId, NetworkFault)>,
    /// HTTP faults, compiled, in the order they were added.
    pub http: Vec<(FaultId, Arc<HttpRule>)>,
}

/// One running target: its settings, its faults and its counters.
#[derive(Debug)]
pub(crate) struct TargetState {
    /// The target, with the bound listen address.
    pub target: ProxyTarget,
    /// The active faults; connections hold receivers.
    pub faults: watch::Sender<Arc<FaultSet>>,
    /// Connections accepted since start.
    pub connections_total: AtomicU64,
    /// Connections open now.
    pub connections_open: AtomicU64,
    /// Connections refused by a `refuse` toxic.
    pub connections_refused: AtomicU64,
}

impl TargetState {
    fn new(target: ProxyTarget) -> TargetState {
        TargetState {
            target,
            faults: watch::Sender::new(Arc::new(FaultSet::default())),
            connections_total: AtomicU64::new(0),
            connections_open: AtomicU64::new(0),
            connections_refused: AtomicU64::new(0),
        }
    }

    /// Removes fault `id` from the set its connections read.
    pub fn detach(&self, id: FaultId) {
        self.faults.send_if_modified(|set| {
            let has =
                set.network.iter().any(|(f, _)| *f == id) || set.http.iter().any(|(f, _)| *f == id);
            if has {
                let set = Arc::make_mut(set);
                set.network.retain(|(f, _)| *f != id);
                set.http.retain(|(f, _)| *f != id);
            }
            has
        });
    }

    fn status(&self, faults: Vec<ActiveFault>) -> TargetStatus {
        TargetStatus {
            name: self.target.name.clone(),
            listen: self.target.listen,
            upstream: self.target.upstream.clone(),
            protocol: self.target.protocol,
            faults,
            connections_total: self.connections_total.load(Ordering::Relaxed),
            connections_open: self.connections_open.load(Ordering::Relaxed),
            connections_refused: self.connections_refused.load(Ordering::Relaxed),
        }
    }
}

/// The running proxy targets and their leased faults. Share it as `Arc<ProxyRegistry>`.
///
/// Dropping the last handle stops the listeners; [`ProxyRegistry::shutdown`] also waits
/// for them and for open connections to close.
#[derive(Debug)]
pub struct ProxyRegistry {
    targets: Vec<Arc<TargetState>>,
    leases: LeaseTable,
    next_id: AtomicU64,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

impl std::fmt::Debug for LeaseTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LeaseTable")
    }
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
            tasks.spawn(tcp::serve_listener(
                listener,
                Arc::clone(&state),
                cancel.clone(),
                tasks.clone(),
            ));
            states.push(state);
        }
        let registry = Arc::new(ProxyRegistry {
            targets: states,
            leases: LeaseTable::default(),
            next_id: AtomicU64::new((rand::random::<u64>() >> 12) | 1),
            cancel: cancel.clone(),
            tasks,
        });
        tokio::spawn(lease::reap_every(Arc::downgrade(&registry), cancel));
        Ok(registry)
    }

    /// The targets with their active faults and connection counters.
    pub fn targets(&self) -> Vec<TargetStatus> {
        self.targets
            .iter()
            .map(|t| t.status(self.leases.on_target(&t.target.name)))
            .collect()
    }

    /// Adds a network toxic to `target` for `lease`; it applies to open connections
    /// from their next chunk on, and to new ones.
    pub fn add_network_fault(
        &self,
        target: &str,
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
            FaultSpec::Network(fault.clone()),
            expires,
            |set| set.network.push((id, network)),
        );
        tracing::info!(fault = %id, target_name = target, toxic = ?fault.toxic, "network fault added");
        Ok(id)
    }

    /// Adds an HTTP fault to the HTTP target `target` for `lease`.
    pub fn add_http_fault(
        &self,
        target: &str,
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
            FaultSpec::Http(fault.clone()),
            expires,
            |set| set.http.push((id, rule)),
        );
        tracing::info!(fault = %id, target_name = target, action = ?fault.action, "http fault added");
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

    /// Removes expired faults; their ids.
    pub(crate) fn reap(&self) -> Vec<FaultId> {
        self.leases.reap()
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
