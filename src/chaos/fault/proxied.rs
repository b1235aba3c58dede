//! `network` and `http` faults: added to chaosgate's fault proxy with a lease.
//!
//! A fault that names a `proxy` URL goes to that standalone `chaosgate proxy` through its
//! control API; otherwise to the proxy embedded in this process. Either way the proxy
//! drops the fault when its lease runs out, so the runner renews it until it reverts it.

use std::sync::Arc;
use std::time::Duration;

use crate::catalog::experiment::{HttpFault, NetworkFault};
use crate::chaos::proxy::{FaultBackend, FaultId, ProxyError, ProxyRegistry};

/// A fault active in a proxy: where it is and its id there.
#[derive(Debug, Clone)]
pub struct ProxyFault {
    /// The embedded registry or the standalone proxy's client.
    pub backend: FaultBackend,
    /// The fault's id in that proxy.
    pub id: FaultId,
}

/// Adds a network fault to its proxy for `lease`.
pub async fn inject_network(
    fault: &NetworkFault,
    embedded: Option<&Arc<ProxyRegistry>>,
    lease: Duration,
) -> Result<ProxyFault, ProxyError> {
    let backend = FaultBackend::select(fault.proxy.as_deref(), embedded)?;
    let id = backend.add_network_fault(fault, lease).await?;
    Ok(ProxyFault { backend, id })
}

/// Adds an HTTP fault to its proxy for `lease`.
pub async fn inject_http(
    fault: &HttpFault,
    embedded: Option<&Arc<ProxyRegistry>>,
    lease: Duration,
) -> Result<ProxyFault, ProxyError> {
    let backend = FaultBackend::select(fault.proxy.as_deref(), embedded)?;
    let id = backend.add_http_fault(fault, lease).await?;
    Ok(ProxyFault { backend, id })
}

/// Extends the fault's lease to `lease` from now.
pub async fn renew(active: &ProxyFault, lease: Duration) -> Result<(), ProxyError> {
    active.backend.renew(active.id, lease).await
}

/// Removes the fault; one that is already gone (lease expired) counts as removed.
pub async fn revert(active: &ProxyFault) -> Result<(), ProxyError> {
    active.backend.remove(active.id).await.map(drop)
}

/// Removes the fault at once when it is in the embedded proxy; `false` when it is in a
/// standalone one (that takes an HTTP call).
pub fn revert_now(active: &ProxyFault) -> bool {
    match &active.backend {
        FaultBackend::Embedded(registry) => {
            registry.remove(active.id);
            true
        }
        FaultBackend::Remote(_) => false,
    }
}
