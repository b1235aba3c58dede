//! Probes as the operator writes them: the common fields (name, mode, run properties) and
//! one type block (`http`, `tcp`, `command` or `prometheus`), read into [`ProbeType`], one
//! variant per type.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::CommandLine;
use super::file_shape;
use crate::catalog::span::Span;

/// One probe: exactly one of the type blocks must be set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(with = "file_shape::Probe")]
pub struct Probe {
    /// Name, unique within the experiment.
    pub name: String,
    /// When the probe runs.
    pub mode: ProbeMode,
    /// Timing and retry settings.
    #[serde(default)]
    pub run_properties: RunProperties,
    /// What the probe checks, and how it judges it.
    #[serde(flatten)]
    pub probe_type: ProbeType,
}

/// The type of a probe and its settings: the block next to the probe's common fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeType {
    /// An HTTP request and what its response must look like.
    Http(HttpProbe),
    /// A TCP connect.
    Tcp(TcpProbe),
    /// A local command and what its exit code and output must be.
    Command(CommandProbe),
    /// An instant PromQL query compared with a threshold.
    Prometheus(PrometheusProbe),
}

impl ProbeType {
    /// The type names, as written in files and records, in schema order.
    pub const NAMES: [&'static str; 4] = ["http", "tcp", "command", "prometheus"];

    /// The type's name as written in files and records, e.g. `http`.
    pub const fn name(&self) -> &'static str {
        match self {
            ProbeType::Http(_) => "http",
            ProbeType::Tcp(_) => "tcp",
            ProbeType::Command(_) => "command",
            ProbeType::Prometheus(_) => "prometheus",
        }
    }
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
