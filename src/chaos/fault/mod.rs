//! Faults: one driver per kind (inject, renew, revert; a revert confirms the fault is
//! gone, or fails), behind one `match` on [`FaultKind`].
//!
//! | kind | driver | leased | revert, and its proof |
//! |---|---|---|---|
//! | `network`, `http` | [`proxied`] | yes, by the proxy | removed from the proxy by id |
//! | `toxiproxy` | [`toxiproxy`] | yes, by its [`guard`] | toxics deleted by name, then absent from the proxy's list |
//! | `process` | [`process`] | a `pause`: yes, by its [`guard`] | SIGCONT after a `pause`, then the process no longer stopped; a `kill` has nothing to undo |
//! | `command` | [`command`] | yes, by its [`guard`] | the revert command exits 0 (the operator's proof) |
//!
//! [`inject`] returns an [`Injected`] value that holds everything [`revert`] needs, so the
//! runner can revert from any exit path, and [`revert_detached`] can still do it from a
//! `Drop` when the runner itself is torn down. Every fault with something to undo
//! reverts itself when its runner dies: faults in chaosgate's proxies carry a lease that
//! [`renew`] extends (a fault whose lease runs out is dropped by the proxy); the others
//! are held by a [`guard`] process, armed with [`guarded_revert`]'s plan before the fault
//! is injected, renewed on the same schedule, that reverts unless the runner says `done`.

pub(crate) mod command;
pub(crate) mod guard;
pub(crate) mod process;
pub(crate) mod proxied;
pub(crate) mod toxiproxy;

use std::path::PathBuf;
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
    /// The fault's guard could not be armed (the fault was not injected).
    #[error(transparent)]
    Guard(#[from] guard::GuardError),
}

/// An injected fault: what revert needs to undo it.
///
/// A guard receives it as JSON (`{"toxiproxy": {...}}`, `{"process": {...}}`,
/// `{"command": {...}}`); a proxy fault is never handed to a guard and does not serialize.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Injected {
    /// A network or HTTP fault in chaosgate's proxy (leased).
    #[serde(skip)]
    Proxy(proxied::ProxyFault),
    /// Toxics created on a Toxiproxy server.
    Toxiproxy(toxiproxy::Toxics),
    /// Processes signalled (a `pause` is undone with SIGCONT).
    Process(process::Signalled),
    /// A command fault: its revert command.
    Command(CommandLine),
}

/// Where faults are applied and for how long a fault lives without renewal.
#[derive(Debug, Clone)]
pub(crate) struct FaultSetup {
    /// The proxy embedded in this process, for faults that name no `proxy` URL.
    pub(crate) proxy: Option<Arc<crate::chaos::proxy::ProxyRegistry>>,
    /// Lease of proxy faults, and how long a guard waits for a renewal.
    pub(crate) lease: Duration,
    /// The run's owner id, proxy access and wait for targets other runs hold in a proxy.
    pub(crate) ownership: proxied::Ownership,
    /// The chaosgate binary, run as each guarded fault's [`guard`]. `None` only where no
    /// guard is possible (unit tests, whose test binary has no `fault-guard` subcommand):
    /// faults are then injected without a guard and a runner killed mid-fault leaves them.
    pub(crate) guard: Option<PathBuf>,
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

/// What reverts `fault`, known before it is injected: the plan its [`guard`] holds.
///
/// `None` for the kinds no guard holds: proxy faults (leased by their proxy) and a process
/// `kill` (nothing to undo). For a `pause` it resolves the processes (pids and start
/// times) now; [`inject`] then stops exactly those.
pub(crate) fn guarded_revert(fault: &Fault) -> Result<Option<Injected>, FaultError> {
    Ok(match &fault.kind {
        FaultKind::Toxiproxy(f) => Some(Injected::Toxiproxy(toxiproxy::planned(&fault.name, f))),
        FaultKind::Command(f) => Some(Injected::Command(f.revert.clone())),
        FaultKind::Process(f) if f.action == ProcessAction::Pause => {
            Some(Injected::Process(process::resolve(f)?))
        }
        FaultKind::Process(_) | FaultKind::Network(_) | FaultKind::Http(_) => None,
    })
}

/// Whether a fault of this kind is held by a guard ([`guarded_revert`] is `Some`).
pub(crate) fn is_guarded(kind: &FaultKind) -> bool {
    match kind {
        FaultKind::Toxiproxy(_) | FaultKind::Command(_) => true,
        FaultKind::Process(f) => f.action == ProcessAction::Pause,
        FaultKind::Network(_) | FaultKind::Http(_) => false,
    }
}

/// Injects `fault`. `planned` is what [`guarded_revert`] returned for it: a process
/// `pause` stops the processes it names (re-resolved when it is `None`).
pub(crate) async fn inject(
    fault: &Fault,
    setup: &FaultSetup,
    planned: Option<&Injected>,
) -> Result<Injected, FaultError> {
    let embedded = setup.proxy.as_ref();
    Ok(match &fault.kind {
        FaultKind::Network(f) => Injected::Proxy(
            proxied::inject_network(f, embedded, &setup.ownership, setup.lease).await?,
        ),
        FaultKind::Http(f) => {
            Injected::Proxy(proxied::inject_http(f, embedded, &setup.ownership, setup.lease).await?)
        }
        FaultKind::Toxiproxy(f) => Injected::Toxiproxy(toxiproxy::inject(&fault.name, f).await?),
        FaultKind::Process(f) => Injected::Process(match planned {
            Some(Injected::Process(resolved)) => process::signal(f, resolved)?,
            _ => process::signal(f, &process::resolve(f)?)?,
        }),
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
