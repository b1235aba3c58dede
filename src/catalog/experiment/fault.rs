//! Faults as the operator writes them: the common fields (name, weight, duration, the
//! probes that judge it) and one kind block (`network`, `http`, `toxiproxy`, `process` or
//! `command`), read into [`FaultKind`], one variant per kind.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::file_shape;
use crate::catalog::span::Span;

/// One fault: exactly one of the kind blocks must be set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(with = "file_shape::Fault")]
pub struct Fault {
    /// Name, unique within the experiment.
    pub(crate) name: String,
    /// Weight in the resilience score, 1 to 10.
    pub(crate) weight: u8,
    /// How long the fault stays active.
    pub duration: Span,
    /// Names of the probes that judge this fault (default: all probes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) probes: Option<Vec<String>>,
    /// What the fault does, and to what.
    #[serde(flatten)]
    pub kind: FaultKind,
}

/// The kind of a fault and its settings: the block next to the fault's common fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// Network toxic in chaosgate's TCP fault proxy.
    Network(NetworkFault),
    /// HTTP fault in chaosgate's HTTP fault proxy.
    Http(HttpFault),
    /// Toxic on an external Toxiproxy server.
    Toxiproxy(ToxiproxyFault),
    /// Signal to a local process.
    Process(ProcessFault),
    /// Operator-supplied inject and revert commands.
    Command(CommandFault),
}

impl FaultKind {
    /// The kind names, as written in files and records, in schema order.
    pub const NAMES: [&'static str; 5] = ["network", "http", "toxiproxy", "process", "command"];

    /// The kind's name as written in files and records, e.g. `toxiproxy`.
    pub(crate) const fn name(&self) -> &'static str {
        match self {
            FaultKind::Network(_) => "network",
            FaultKind::Http(_) => "http",
            FaultKind::Toxiproxy(_) => "toxiproxy",
            FaultKind::Process(_) => "process",
            FaultKind::Command(_) => "command",
        }
    }

    /// Whether the fault lives in one of chaosgate's proxies, which lease it.
    pub(crate) const fn is_proxied(&self) -> bool {
        matches!(self, FaultKind::Network(_) | FaultKind::Http(_))
    }
}

impl Fault {
    /// The name of what this fault acts on; two experiments that share one never overlap.
    /// `None` for a command fault without `target`.
    pub(crate) fn target_key(&self) -> Option<String> {
        match &self.kind {
            FaultKind::Network(f) => Some(format!("proxy:{}", f.target)),
            FaultKind::Http(f) => Some(format!("proxy:{}", f.target)),
            FaultKind::Toxiproxy(f) => Some(format!("toxiproxy:{}/{}", f.api, f.proxy)),
            FaultKind::Process(f) => Some(match (&f.pid_file, &f.name) {
                (Some(pid_file), _) => format!("process:pidfile:{pid_file}"),
                (None, Some(name)) => format!("process:name:{name}"),
                (None, None) => "process:?".to_string(),
            }),
            FaultKind::Command(c) => c.target.as_ref().map(|t| format!("command:{t}")),
        }
    }
}

/// Which way of a proxied connection a toxic acts on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Client to upstream.
    Upstream,
    /// Upstream to client (default: what a client notices first).
    #[default]
    Downstream,
    /// Both ways.
    Both,
}

/// A toxic, as in Toxiproxy, plus `refuse`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Toxic {
    /// Delay every chunk of data by `latency` plus or minus up to `jitter`.
    Latency {
        /// Added delay.
        latency: Span,
        /// Random extra delay, up to this much either way.
        #[serde(default)]
        jitter: Span,
    },
    /// Limit throughput to `rate` bytes per second.
    Bandwidth {
        /// Bytes per second.
        rate: u64,
    },
    /// Stop all data; the connection stays open (closed after `after` when not 0).
    Timeout {
        /// Close the connection after this long; 0 keeps it open until revert.
        #[serde(default)]
        after: Span,
    },
    /// Reset the connection (TCP RST) after `after`.
    ResetPeer {
        /// Delay before the reset.
        #[serde(default)]
        after: Span,
    },
    /// Delay the close of the connection by `delay`.
    SlowClose {
        /// Delay before closing.
        delay: Span,
    },
    /// Close the connection once `bytes` bytes have passed.
    LimitData {
        /// Bytes allowed through.
        bytes: u64,
    },
    /// Close new connections at once.
    Refuse,
}

/// A toxic in chaosgate's own TCP fault proxy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkFault {
    /// Name of a proxy target (configured in the worker or a standalone proxy).
    pub target: String,
    /// Base URL of a standalone proxy's control API; the embedded proxy when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<String>,
    /// What happens to the traffic.
    pub toxic: Toxic,
    /// Which way of the connection is affected.
    #[serde(default)]
    pub direction: Direction,
    /// Share of connections affected, 0.0 to 1.0 (default 1.0).
    #[serde(default = "full_toxicity")]
    #[schemars(range(min = 0, max = 1))]
    pub toxicity: f64,
}

fn full_toxicity() -> f64 {
    1.0
}

/// Which requests an HTTP fault applies to; all present conditions must hold.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpMatch {
    /// Request method, e.g. `GET`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Path prefix, e.g. `/api/pay`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// Header that must be present with this exact value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

/// What an HTTP fault does to a matching request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum HttpAction {
    /// Answer `status` without calling upstream.
    Abort {
        /// Status code to answer.
        status: u16,
        /// Body to answer with.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        body: Option<String>,
    },
    /// Hold the request for `delay` before passing it on.
    Delay {
        /// Added delay.
        delay: Span,
    },
    /// Change upstream's response.
    Modify {
        /// Replace the status code.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        status: Option<u16>,
        /// Set (or replace) these response headers.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        headers: BTreeMap<String, String>,
        /// Replace the body.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        body: Option<String>,
    },
}

/// A fault in chaosgate's HTTP fault proxy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpFault {
    /// Name of an HTTP proxy target.
    pub target: String,
    /// Base URL of a standalone proxy's control API; the embedded proxy when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<String>,
    /// What to do to matching requests.
    pub action: HttpAction,
    /// Which requests are affected (default: all).
    #[serde(default, rename = "match")]
    pub matches: HttpMatch,
    /// Share of matching requests affected, 0.0 to 1.0 (default 1.0).
    #[serde(default = "full_toxicity")]
    #[schemars(range(min = 0, max = 1))]
    pub percentage: f64,
}

/// A toxic on an external Toxiproxy server, created on inject and deleted on revert.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ToxiproxyFault {
    /// Toxiproxy API base URL, e.g. `http://127.0.0.1:8474`.
    pub(crate) api: String,
    /// Name of the existing Toxiproxy proxy.
    pub(crate) proxy: String,
    /// The toxic (`refuse` is not available on Toxiproxy).
    pub(crate) toxic: Toxic,
    /// Which way of the connection is affected.
    #[serde(default)]
    pub(crate) direction: Direction,
    /// Share of connections affected, 0.0 to 1.0 (default 1.0).
    #[serde(default = "full_toxicity")]
    #[schemars(range(min = 0, max = 1))]
    pub(crate) toxicity: f64,
}

/// What to do to a local process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ProcessAction {
    /// Send `signal` once.
    Kill,
    /// SIGSTOP on inject, SIGCONT on revert.
    Pause,
}

/// A signal to a local process found by pid file or exact name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProcessFault {
    /// `kill` or `pause`.
    pub(crate) action: ProcessAction,
    /// Path of a file holding the pid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) pid_file: Option<String>,
    /// Exact process name (as in `/proc/PID/comm`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) name: Option<String>,
    /// Signal for `kill`, e.g. `SIGTERM` (default) or `SIGKILL`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) signal: Option<String>,
}

/// An argument list, run without a shell unless `shell` is set, in a clean environment.
///
/// The command sees only `PATH`, `HOME` and `LANG` (the worker's values, when it has
/// them), the variables named in `env_from_worker` (the worker's values), and `env`
/// (literal values, which win over both): never the rest of the worker's environment,
/// where its own credentials travel (`CHAOSGATE_KAFKA__PROPERTIES__SASL_PASSWORD`).
/// `env` values are taken as written: `${VAR}` is not expanded, so a catalog file cannot
/// pull a worker variable in by accident; `env_from_worker` is the one, explicit, way.
/// Names follow POSIX (`[A-Za-z_][A-Za-z0-9_]*`); `env_from_worker` cannot name a
/// `CHAOSGATE_*` variable (the worker's configuration) nor a name twice or one `env`
/// sets (checked by `catalog::rules`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CommandLine {
    /// Program and arguments; with `shell: true`, one string for `sh -c`.
    pub argv: Vec<String>,
    /// Run through `sh -c`.
    #[serde(default)]
    pub shell: bool,
    /// Kill the command after this long (default 30s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Span>,
    /// Variables the command sees, with literal values (no `${VAR}` expansion); names
    /// `[A-Za-z_][A-Za-z0-9_]*`. They win over `PATH`, `HOME`, `LANG` and
    /// `env_from_worker`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Names of the worker's own variables the command also sees (with the worker's
    /// values; a name the worker does not have is left unset). Never a `CHAOSGATE_*`
    /// name, never one `env` sets, each name once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env_from_worker: Vec<String>,
}

/// Operator-supplied commands that inject and revert a fault.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CommandFault {
    /// Injects the fault; a non-zero exit is a fault error.
    pub(crate) inject: CommandLine,
    /// Reverts it; always run after a successful inject.
    pub(crate) revert: CommandLine,
    /// Name of what the commands act on, so two experiments on it never overlap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) target: Option<String>,
}
