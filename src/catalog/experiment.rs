//! Experiments as the operator writes them: faults injected into a target and probes
//! that watch it while they are active.
//!
//! Faults and probes follow the Kubernetes probe style: the kind is given by which one
//! block (`network`, `http`, ...) is present. Commands, URLs and targets come only from
//! these files, never from an event.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::span::Span;

/// One chaos experiment: what to break, for how long, and how to tell it held up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(
    title = "Experiment",
    description = "A chaosgate experiment catalog file.",
    example = experiment_example()
)]
pub struct Experiment {
    /// Must be `experiment`.
    pub kind: ExperimentKindTag,
    /// Unique id, referenced by pipeline steps.
    pub id: String,
    /// Human-readable name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// What this experiment protects against, in one sentence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Whether faults run one after another (default) or all at once.
    #[serde(default)]
    pub execution: FaultExecution,
    /// Upper bound for the whole experiment, probes and reverts included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Span>,
    /// Faults to inject. May be empty for a probe-only experiment.
    #[serde(default)]
    pub faults: Vec<Fault>,
    /// Probes that watch the target.
    #[serde(default)]
    pub probes: Vec<Probe>,
}

/// The literal `experiment`, so a file says what it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExperimentKindTag {
    /// An experiment file.
    Experiment,
}

/// How an experiment's faults are scheduled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FaultExecution {
    /// One fault after another; each fault's probes judge that fault alone.
    #[default]
    Serial,
    /// All faults at once; every probe judges every fault.
    Parallel,
}

/// One fault: exactly one of the kind blocks must be set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// Name, unique within the experiment.
    pub name: String,
    /// Weight in the resilience score, 1 to 10.
    #[schemars(range(min = 1, max = 10))]
    pub weight: u8,
    /// How long the fault stays active.
    pub duration: Span,
    /// Names of the probes that judge this fault (default: all probes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probes: Option<Vec<String>>,
    /// Network toxic in chaosgate's TCP fault proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkFault>,
    /// HTTP fault in chaosgate's HTTP fault proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpFault>,
    /// Toxic on an external Toxiproxy server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub toxiproxy: Option<ToxiproxyFault>,
    /// Signal to a local process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessFault>,
    /// Operator-supplied inject and revert commands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<CommandFault>,
}

/// The kind of a fault, as records and logs name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// [`NetworkFault`].
    Network,
    /// [`HttpFault`].
    Http,
    /// [`ToxiproxyFault`].
    Toxiproxy,
    /// [`ProcessFault`].
    Process,
    /// [`CommandFault`].
    Command,
}

impl FaultKind {
    /// The kind's name as written in files and records.
    pub const fn as_str(self) -> &'static str {
        match self {
            FaultKind::Network => "network",
            FaultKind::Http => "http",
            FaultKind::Toxiproxy => "toxiproxy",
            FaultKind::Process => "process",
            FaultKind::Command => "command",
        }
    }
}

impl Fault {
    /// The kinds whose blocks are set (a valid fault has exactly one).
    pub fn kinds(&self) -> Vec<FaultKind> {
        let mut kinds = Vec::new();
        if self.network.is_some() {
            kinds.push(FaultKind::Network);
        }
        if self.http.is_some() {
            kinds.push(FaultKind::Http);
        }
        if self.toxiproxy.is_some() {
            kinds.push(FaultKind::Toxiproxy);
        }
        if self.process.is_some() {
            kinds.push(FaultKind::Process);
        }
        if self.command.is_some() {
            kinds.push(FaultKind::Command);
        }
        kinds
    }

    /// The fault's kind; `None` unless exactly one block is set.
    pub fn kind(&self) -> Option<FaultKind> {
        match self.kinds().as_slice() {
            [kind] => Some(*kind),
            _ => None,
        }
    }

    /// The name of what this fault acts on; two experiments that share one never overlap.
    pub fn target_key(&self) -> Option<String> {
        if let Some(f) = &self.network {
            return Some(format!("proxy:{}", f.target));
        }
        if let Some(f) = &self.http {
            return Some(format!("proxy:{}", f.target));
        }
        if let Some(f) = &self.toxiproxy {
            return Some(format!("toxiproxy:{}/{}", f.api, f.proxy));
        }
        if let Some(f) = &self.process {
            return Some(match (&f.pid_file, &f.name) {
                (Some(pid_file), _) => format!("process:pidfile:{pid_file}"),
                (None, Some(name)) => format!("process:name:{name}"),
                (None, None) => "process:?".to_string(),
            });
        }
        self.command
            .as_ref()
            .and_then(|c| c.target.clone())
            .map(|t| format!("command:{t}"))
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
    pub api: String,
    /// Name of the existing Toxiproxy proxy.
    pub proxy: String,
    /// The toxic (`refuse` is not available on Toxiproxy).
    pub toxic: Toxic,
    /// Which way of the connection is affected.
    #[serde(default)]
    pub direction: Direction,
    /// Share of connections affected, 0.0 to 1.0 (default 1.0).
    #[serde(default = "full_toxicity")]
    #[schemars(range(min = 0, max = 1))]
    pub toxicity: f64,
}

/// What to do to a local process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProcessAction {
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
    pub action: ProcessAction,
    /// Path of a file holding the pid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_file: Option<String>,
    /// Exact process name (as in `/proc/PID/comm`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Signal for `kill`, e.g. `SIGTERM` (default) or `SIGKILL`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
}

/// An argument list, run without a shell unless `shell` is set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
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
}

/// Operator-supplied commands that inject and revert a fault.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CommandFault {
    /// Injects the fault; a non-zero exit is a fault error.
    pub inject: CommandLine,
    /// Reverts it; always run after a successful inject.
    pub revert: CommandLine,
    /// Name of what the commands act on, so two experiments on it never overlap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// When a probe runs relative to the chaos, as in LitmusChaos.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProbeMode {
    /// Start of test: once before faults are injected.
    Sot,
    /// End of test: once after faults are reverted.
    Eot,
    /// Before and after; passes only when both pass.
    Edge,
    /// Repeatedly, every `polling_interval`, from start to end.
    Continuous,
    /// Repeatedly, every `polling_interval`, while faults are active.
    OnChaos,
}

/// How often and how patiently a probe runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunProperties {
    /// Time allowed for one attempt (default 5s).
    #[serde(default = "default_probe_timeout")]
    pub timeout: Span,
    /// Wait between retries of a failed attempt (default 1s).
    #[serde(default = "default_probe_interval")]
    pub interval: Span,
    /// Attempts before one check counts as failed (default 1).
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    /// Wait before the first check.
    #[serde(default)]
    pub initial_delay: Span,
    /// Wait between checks of `continuous` and `on_chaos` probes (default 2s).
    #[serde(default = "default_polling_interval")]
    pub polling_interval: Span,
    /// End the experiment at once (faults reverted, verdict failed) when this probe fails.
    #[serde(default)]
    pub stop_on_failure: bool,
}

fn default_probe_timeout() -> Span {
    Span::from_millis(5_000)
}
fn default_probe_interval() -> Span {
    Span::from_millis(1_000)
}
fn default_attempts() -> u32 {
    1
}
fn default_polling_interval() -> Span {
    Span::from_millis(2_000)
}

impl Default for RunProperties {
    fn default() -> Self {
        RunProperties {
            timeout: default_probe_timeout(),
            interval: default_probe_interval(),
            attempts: default_attempts(),
            initial_delay: Span::default(),
            polling_interval: default_polling_interval(),
            stop_on_failure: false,
        }
    }
}

/// One probe: exactly one of the type blocks must be set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Probe {
    /// Name, unique within the experiment.
    pub name: String,
    /// When the probe runs.
    pub mode: ProbeMode,
    /// Timing and retry settings.
    #[serde(default)]
    pub run_properties: RunProperties,
    /// An HTTP request and what its response must look like.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpProbe>,
    /// A TCP connect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpProbe>,
    /// A local command and what its exit code and output must be.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<CommandProbe>,
    /// An instant PromQL query compared with a threshold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusProbe>,
}

/// The type of a probe, as records and logs name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProbeType {
    /// [`HttpProbe`].
    Http,
    /// [`TcpProbe`].
    Tcp,
    /// [`CommandProbe`].
    Command,
    /// [`PrometheusProbe`].
    Prometheus,
}

impl ProbeType {
    /// The type's name as written in files and records.
    pub const fn as_str(self) -> &'static str {
        match self {
            ProbeType::Http => "http",
            ProbeType::Tcp => "tcp",
            ProbeType::Command => "command",
            ProbeType::Prometheus => "prometheus",
        }
    }
}

impl Probe {
    /// The types whose blocks are set (a valid probe has exactly one).
    pub fn types(&self) -> Vec<ProbeType> {
        let mut types = Vec::new();
        if self.http.is_some() {
            types.push(ProbeType::Http);
        }
        if self.tcp.is_some() {
            types.push(ProbeType::Tcp);
        }
        if self.command.is_some() {
            types.push(ProbeType::Command);
        }
        if self.prometheus.is_some() {
            types.push(ProbeType::Prometheus);
        }
        types
    }

    /// The probe's type; `None` unless exactly one block is set.
    pub fn probe_type(&self) -> Option<ProbeType> {
        match self.types().as_slice() {
            [t] => Some(*t),
            _ => None,
        }
    }
}

/// An HTTP probe: one request, judged on status, time and body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpProbe {
    /// The URL to call.
    pub url: String,
    /// Request method (default GET).
    #[serde(default = "default_method")]
    pub method: String,
    /// Request headers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Request body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// Follow 3xx redirects (at most 10) and judge the last answer. Default `false`: the
    /// probe judges the answer of `url` itself, a redirect included (`status: [301]`
    /// passes on a URL that answers 301; a `302` to a login page fails `200-299`).
    /// Only redirects to the host and port of `url` are followed unless
    /// `redirect_any_host` is also `true`; one to another host fails the attempt.
    #[serde(default, skip_serializing_if = "is_false")]
    pub follow_redirects: bool,
    /// With `follow_redirects`, also follow redirects to other hosts. Default `false`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub redirect_any_host: bool,
    /// What the response must satisfy.
    #[serde(default)]
    pub criteria: HttpCriteria,
}

fn is_false(value: &bool) -> bool {
    !*value
}

fn default_method() -> String {
    "GET".to_string()
}

/// What an HTTP probe's response must satisfy; all present criteria must hold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpCriteria {
    /// Accepted statuses: codes (`200`) or ranges (`"200-299"`). Default 200-299.
    #[serde(default = "default_statuses")]
    pub status: Vec<StatusMatch>,
    /// The response must arrive within this many milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_response_ms: Option<u64>,
    /// The body must contain this text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_contains: Option<String>,
    /// The body must match this regular expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_regex: Option<String>,
    /// The JSON body at `pointer` must equal `equals`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json: Option<JsonPointerMatch>,
}

impl Default for HttpCriteria {
    fn default() -> Self {
        HttpCriteria {
            status: default_statuses(),
            max_response_ms: None,
            body_contains: None,
            body_regex: None,
            json: None,
        }
    }
}

fn default_statuses() -> Vec<StatusMatch> {
    vec![StatusMatch::Range("200-299".to_string())]
}

/// A status code or an inclusive range written `"low-high"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum StatusMatch {
    /// One status code.
    Code(u16),
    /// An inclusive range such as `"200-299"`.
    Range(#[schemars(regex(pattern = r"^[1-5][0-9][0-9]-[1-5][0-9][0-9]$"))] String),
}

impl StatusMatch {
    /// Whether `status` is accepted; a malformed range accepts nothing.
    pub fn accepts(&self, status: u16) -> bool {
        match self {
            StatusMatch::Code(code) => *code == status,
            StatusMatch::Range(range) => range
                .split_once('-')
                .and_then(|(lo, hi)| Some((lo.parse::<u16>().ok()?, hi.parse::<u16>().ok()?)))
                .is_some_and(|(lo, hi)| (lo..=hi).contains(&status)),
        }
    }
}

/// The value at a JSON pointer must equal a given JSON value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JsonPointerMatch {
    /// RFC 6901 pointer, e.g. `/status`.
    pub pointer: String,
    /// The expected value.
    pub equals: serde_json::Value,
}

/// A TCP probe: connect within the run properties' timeout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TcpProbe {
    /// `host:port` to connect to.
    pub address: String,
}

/// How a probe's observed value is compared with the expected one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Comparator {
    /// Equal.
    Eq,
    /// Not equal.
    Ne,
    /// Less than.
    Lt,
    /// At most.
    Le,
    /// Greater than.
    Gt,
    /// At least.
    Ge,
    /// Contains (string comparisons only).
    Contains,
    /// Matches a regular expression (string comparisons only).
    Matches,
}

/// The type the observed value is compared as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ValueType {
    /// Signed integer.
    Int,
    /// Floating point.
    Float,
    /// Text.
    String,
}

/// A typed comparison, as in LitmusChaos's `comparator`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Comparison {
    /// The type both sides are read as.
    #[serde(rename = "type")]
    pub value_type: ValueType,
    /// The comparison.
    pub criteria: Comparator,
    /// The expected value, as text.
    pub value: String,
}

/// A command probe: run a local command and judge its exit code and output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CommandProbe {
    /// The command to run.
    pub command: CommandLine,
    /// Expected exit code (default 0).
    #[serde(default)]
    pub exit_code: i32,
    /// Comparison applied to the trimmed standard output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout: Option<Comparison>,
}

/// A Prometheus probe: an instant query whose single result is compared with a threshold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PrometheusProbe {
    /// Prometheus base URL, e.g. `http://127.0.0.1:9090`.
    pub endpoint: String,
    /// PromQL instant query; it must return one sample.
    pub query: String,
    /// Comparison of the sample value (type `float` or `int`).
    pub comparison: Comparison,
}

/// The example carried by the schema: checkout under a slow payments dependency.
pub fn experiment_example() -> Experiment {
    Experiment {
        kind: ExperimentKindTag::Experiment,
        id: "payments-latency".into(),
        name: Some("Payments 200 ms slower".into()),
        description: Some(
            "Checkout must keep answering within 300 ms while the payments dependency is 200 ms slower."
                .into(),
        ),
        execution: FaultExecution::Serial,
        timeout: Some(Span::from_millis(120_000)),
        faults: vec![Fault {
            name: "payments-latency".into(),
            weight: 5,
            duration: Span::from_millis(30_000),
            probes: None,
            network: Some(NetworkFault {
                target: "payments".into(),
                proxy: None,
                toxic: Toxic::Latency {
                    latency: Span::from_millis(200),
                    jitter: Span::from_millis(20),
                },
                direction: Direction::Downstream,
                toxicity: 1.0,
            }),
            http: None,
            toxiproxy: None,
            process: None,
            command: None,
        }],
        probes: vec![Probe {
            name: "checkout-fast".into(),
            mode: ProbeMode::OnChaos,
            run_properties: RunProperties {
                polling_interval: Span::from_millis(1_000),
                ..RunProperties::default()
            },
            http: Some(HttpProbe {
                url: "http://127.0.0.1:8080/health".into(),
                method: default_method(),
                headers: BTreeMap::new(),
                body: None,
                follow_redirects: false,
                redirect_any_host: false,
                criteria: HttpCriteria {
                    max_response_ms: Some(300),
                    ..HttpCriteria::default()
                },
            }),
            tcp: None,
            command: None,
            prometheus: None,
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_ranges_accept_what_they_cover() {
        let range = StatusMatch::Range("200-299".into());
        assert!(range.accepts(204));
        assert!(!range.accepts(500));
        assert!(StatusMatch::Code(503).accepts(503));
        assert!(!StatusMatch::Range("2xx".into()).accepts(200));
    }
}
