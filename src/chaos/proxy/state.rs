//! The data the proxy modules share: a running target ([`TargetState`]), the faults
//! active on it ([`FaultSet`]), and how they are reported ([`TargetStatus`],
//! [`ProxyFaultStatus`]).
//!
//! The rule that keeps it right: this is a leaf. The connection code (`pump`, `tcp`,
//! `http`), the toxics and the lease table read and change this data; none of them
//! imports another to reach it, and `registry`, which ties them together, sits above
//! them all.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::error::FaultId;
use super::rule::HttpRule;
use super::settings::{ProxyProtocol, ProxyTarget};
use crate::catalog::experiment::{HttpFault, NetworkFault};

/// The faults a connection reads.
pub(crate) type Faults = watch::Receiver<Arc<FaultSet>>;

/// A fault as added: network or HTTP. Serialised as `{"network": {..}}` or `{"http": {..}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum FaultSpec {
    /// A network toxic.
    Network(NetworkFault),
    /// An HTTP fault.
    Http(HttpFault),
}

/// One active fault on a target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProxyFaultStatus {
    /// Its id.
    pub id: FaultId,
    /// Time left on its lease, in milliseconds.
    pub(crate) expires_in_ms: u64,
    /// The fault.
    #[serde(flatten)]
    pub(crate) fault: FaultSpec,
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
    /// The owner (run) whose faults are on it; no other owner may add one meanwhile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Its active faults.
    pub faults: Vec<ProxyFaultStatus>,
    /// Connections accepted since start.
    pub connections_total: u64,
    /// Connections open now.
    pub(crate) connections_open: u64,
    /// New connections closed at once by a `refuse` toxic.
    pub connections_refused: u64,
}

/// The faults active on one target, as its connections read them.
#[derive(Debug, Clone, Default)]
pub(crate) struct FaultSet {
    /// Network toxics, in the order they were added.
    pub(crate) network: Vec<(FaultId, NetworkFault)>,
    /// HTTP faults, compiled, in the order they were added.
    pub(crate) http: Vec<(FaultId, Arc<HttpRule>)>,
}

/// One running target: its settings, its faults and its counters.
#[derive(Debug)]
pub(crate) struct TargetState {
    /// The target, with the bound listen address.
    pub(crate) target: ProxyTarget,
    /// The active faults; connections hold receivers.
    pub(crate) faults: watch::Sender<Arc<FaultSet>>,
    /// Connections accepted since start.
    pub(crate) connections_total: AtomicU64,
    /// Connections open now.
    pub(crate) connections_open: AtomicU64,
    /// Connections refused by a `refuse` toxic.
    pub(crate) connections_refused: AtomicU64,
}

impl TargetState {
    /// A target with no fault and no connection yet.
    pub(crate) fn new(target: ProxyTarget) -> TargetState {
        TargetState {
            target,
            faults: watch::Sender::new(Arc::new(FaultSet::default())),
            connections_total: AtomicU64::new(0),
            connections_open: AtomicU64::new(0),
            connections_refused: AtomicU64::new(0),
        }
    }

    /// Removes fault `id` from the set its connections read.
    pub(crate) fn detach(&self, id: FaultId) {
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

    /// Its status, with `faults` and their `owner` (the lease table's record of them).
    pub(crate) fn status(
        &self,
        owner: Option<String>,
        faults: Vec<ProxyFaultStatus>,
    ) -> TargetStatus {
        TargetStatus {
            name: self.target.name.clone(),
            listen: self.target.listen,
            upstream: self.target.upstream.clone(),
            protocol: self.target.protocol,
            owner,
            faults,
            connections_total: self.connections_total.load(Ordering::Relaxed),
            connections_open: self.connections_open.load(Ordering::Relaxed),
            connections_refused: self.connections_refused.load(Ordering::Relaxed),
        }
    }
}
