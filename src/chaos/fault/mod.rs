//! Faults: one driver per kind (inject, renew, revert; a revert confirms the fault is
//! gone, or fails), behind one `match` on [`FaultKind`].
//!
//! | kind | driver | leased | revert, and its proof |
//! |---|---|---|---|
//! | `network`, `http` | [`proxied`] | yes | removed from the proxy by id |
//! | `toxiproxy` | [`toxiproxy`] | no | toxics deleted by name, then absent from the proxy's list |
//! | `process` | [`process`] | no | SIGCONT after a `pause`, then the process no longer stopped; a `kill` has nothing to undo |
//! | `command` | [`command`] | no | the revert command exits 0 (the operator's proof) |
//!
//! [`inject`] returns an [`Injected`] value that holds everything [`revert`] needs, so the
//! runner can revert from any exit path, and [`revert_detached`] can still do it from a
//! `Drop` when the runner itself is torn down. Faults in chaosgate's proxies carry a lease
//! that [`renew`] extends; a fault whose lease runs out reverts itself.

pub(crate) mod command;
pub(crate) mod process;
pub(crate) mod proxied;
pub(crate) mod toxiproxy;

use std::sync::Arc;
use std::time::Duration;

use crate::catalog::experiment::{
    CommandLine, Fault, FaultKind, HttpAction, ProcessAction, ProcessFault, Toxic,
};

/// Why a fault could not be injected, renewed or reverted.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FaultError {
    /// chaosgate's fault proxy refused or could not be reached.
    #[error(transparent)]
    Proxy(#[from] crate::chaos::proxy::ProxyError),
    /// A command fault's command failed.
    #[error(transparent)]
    Command(#[from] command::CommandError),
    /// A process fault could not signal its process.
    #[error(transparent)]
    Process(#[from] process::ProcessError),
    /// A Toxiproxy call failed.
    #[error(transparent)]
    Toxiproxy(#[from] toxiproxy::ToxiproxyError),
}

/// An injected fault: what revert needs to undo it.
#[derive(Debug, Clone)]
pub(crate) enum Injected {
    /// A network or HTTP fault in chaosgate's proxy (leased).
    Proxy(proxied::ProxyFault),
    /// Toxics created on a Toxiproxy server.
    Toxiproxy(toxiproxy::Toxics),
    /// Processes signalled (a `pause` is undone with SIGCONT).
    Process(process::Signalled),
    /// A command fault: its revert command.
    Command(CommandLine),
}

/// Where faults are applied and for how long a proxy fault lives without renewal.
#[derive(Debug, Clone)]
pub(crate) struct FaultSetup {
    /// The proxy embedded in this process, for faults that name no `proxy` URL.
    pub(crate) proxy: Option<Arc<crate::chaos::proxy::ProxyRegistry>>,
    /// Lease of proxy faults.
    pub(crate) lease: Duration,
    /// The run's owner id, proxy access and wait for targets other runs hold in a proxy.
    pub(crate) ownership: proxied::Ownership,
}

/// A one-line description of what a fault does, e.g. `network latency 200ms on payments`.
pub(crate) fn describe(fault: &Fault) -> String {
    match &fault.kind {
        FaultKind::Network(f) => format!("network {} on {}", describe_toxic(&f.toxic), f.target),
        FaultKind::Http(f) => {
            let action = match &f.action {
                HttpAction::Abort { status, .. } => format!("abort {status}"),
                HttpAction::Delay { delay } => format!("delay {delay}"),
                HttpAction::Modify { .. } => "modify".to_string(),
            };
            format!("http {action} on {}", f.target)
        }
        FaultKind::Toxiproxy(f) => format!("toxiproxy {} on {}", describe_toxic(&f.toxic), f.proxy),
        FaultKind::Process(f) => describe_process(f),
        FaultKind::Command(f) => format!("command {}", command::program_name(&f.inject)),
    }
}

fn describe_toxic(toxic: &Toxic) -> String {
    match toxic {
        Toxic::Latency { latency, jitter } if jitter.duration().is_zero() => {
            format!("latency {latency}")
        }
        Toxic::Latency { latency, jitter } => format!("latency {latency} +/- {jitter}"),
        Toxic::Bandwidth { rate } => format!("bandwidth {rate} B/s"),
        Toxic::Timeout { .. } => "timeout".to_string(),
        Toxic::ResetPeer { .. } => "reset_peer".to_string(),
        Toxic::SlowClose { delay } => format!("slow_close {delay}"),
        Toxic::LimitData { bytes } => format!("limit_data {bytes} B"),
        Toxic::Refuse => "refuse".to_string(),
    }
}

fn describe_process(f: &ProcessFault) -> String {
    let action = match f.action {
        ProcessAction::Kill => format!("kill {}", f.signal.as_deref().unwrap_or("SIGTERM")),
        ProcessAction::Pause => "pause".to_string(),
    };
    match (&f.pid_file, &f.name) {
        (Some(pid_file), _) => format!("process {action} pid from {pid_file}"),
        (None, Some(name)) => format!("process {action} '{name}'"),
        (None, None) => format!("process {action}"),
    }
}

/// Injects `fault`.
pub(crate) async fn inject(fault: &Fault, setup: &FaultSetup) -> Result<Injected, FaultError> {
    let embedded = setup.proxy.as_ref();
    Ok(match &fault.kind {
        FaultKind::Network(f) => Injected::Proxy(
            proxied::inject_network(f, embedded, &setup.ownership, setup.lease).await?,
        ),
        FaultKind::Http(f) => {
            Injected::Proxy(proxied::inject_http(f, embedded, &setup.ownership, setup.lease).await?)
        }
        FaultKind::Toxiproxy(f) => Injected::Toxiproxy(toxiproxy::inject(&fault.name, f).await?),
        FaultKind::Process(f) => Injected::Process(process::inject(f)?),
        FaultKind::Command(f) => {
            command::run_checked(&f.inject).await?;
            Injected::Command(f.revert.clone())
        }
    })
}

/// What to revert when an inject failed or was interrupted part-way, if anything.
///
/// A command fault's revert command runs even after its inject command failed or was cut
/// off, because the inject may have half-applied (revert commands should be idempotent).
/// Toxiproxy toxics are deleted by their known names (a missing one is fine once the proxy's
/// list of toxics confirms it). Process and
/// proxy injects leave nothing behind when they fail.
pub(crate) fn after_failed_inject(fault: &Fault) -> Option<Injected> {
    match &fault.kind {
        FaultKind::Command(f) => Some(Injected::Command(f.revert.clone())),
        FaultKind::Toxiproxy(f) => Some(Injected::Toxiproxy(toxiproxy::planned(&fault.name, f))),
        FaultKind::Network(_) | FaultKind::Http(_) | FaultKind::Process(_) => None,
    }
}

/// Extends the lease of a proxy fault; other faults have no lease.
pub(crate) async fn renew(injected: &Injected, lease: Duration) -> Result<(), FaultError> {
    match injected {
        Injected::Proxy(active) => Ok(proxied::renew(active, lease).await?),
        Injected::Toxiproxy(_) | Injected::Process(_) | Injected::Command(_) => Ok(()),
    }
}

/// Whether `injected` carries a lease that must be renewed.
pub(crate) fn has_lease(injected: &Injected) -> bool {
    match injected {
        Injected::Proxy(_) => true,
        Injected::Toxiproxy(_) | Injected::Process(_) | Injected::Command(_) => false,
    }
}

/// Reverts an injected fault.
pub(crate) async fn revert(injected: &Injected) -> Result<(), FaultError> {
    match injected {
        Injected::Proxy(active) => Ok(proxied::revert(active).await?),
        Injected::Toxiproxy(toxics) => Ok(toxiproxy::revert(toxics).await?),
        Injected::Process(signalled) => Ok(process::revert(signalled)?),
        Injected::Command(line) => {
            command::run_checked(line).await?;
            Ok(())
        }
    }
}

/// Reverts without waiting, from code that cannot await (a `Drop`).
///
/// In-process undo (SIGCONT, removal from the embedded proxy) happens at once; the rest
/// is spawned on the current Tokio runtime, or on a short-lived thread with its own
/// runtime when there is none.
pub(crate) fn revert_detached(injected: Injected) {
    if let Injected::Proxy(active) = &injected
        && proxied::revert_now(active)
    {
        return;
    }
    if let Injected::Process(signalled) = &injected {
        if let Err(err) = process::revert(signalled) {
            tracing::error!(error = %err, "revert of a process fault failed");
        }
        return;
    }
    let work = async move {
        if let Err(err) = revert(&injected).await {
            tracing::error!(error = %err, "detached revert failed");
        }
    };
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => {
            handle.spawn(work);
        }
        Err(_) => {
            let spawned = std::thread::Builder::new()
                .name("chaosgate-revert".into())
                .spawn(move || {
                    match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(runtime) => runtime.block_on(work),
                        Err(err) => tracing::error!(error = %err, "no runtime to revert a fault"),
                    }
                });
            if let Err(err) = spawned {
                tracing::error!(error = %err, "cannot start a thread to revert a fault");
            }
        }
    }
}
