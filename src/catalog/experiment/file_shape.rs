//! The JSON Schema shape of a fault and a probe: the common fields and every kind block
//! as an optional field, exactly as an operator writes them.
//!
//! The typed [`super::Fault`] and [`super::Probe`] read the kind block into an enum (one
//! variant per kind, `#[serde(flatten)]`); schemars would describe that as a `oneOf` under
//! `unevaluatedProperties: false`, whose errors cannot say "unknown fault kind" or point
//! at the field that is wrong. So the published schema keeps this shape (the same YAML),
//! and `catalog::validate` reports "no kind" and "several kinds" with the fault's name.
//! These structs exist for the schema only: nothing reads data into them.

#![allow(dead_code)]

use schemars::JsonSchema;

use super::{
    CommandFault, CommandProbe, HttpFault, HttpProbe, NetworkFault, ProbeMode, ProcessFault,
    PrometheusProbe, RunProperties, TcpProbe, ToxiproxyFault,
};
use crate::catalog::span::Span;

/// One fault: exactly one of the kind blocks must be set.
#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Fault")]
pub(super) struct Fault {
    /// Name, unique within the experiment.
    name: String,
    /// Weight in the resilience score, 1 to 10.
    #[schemars(range(min = 1, max = 10))]
    weight: u8,
    /// How long the fault stays active.
    duration: Span,
    /// Names of the probes that judge this fault (default: all probes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    probes: Option<Vec<String>>,
    /// Network toxic in chaosgate's TCP fault proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    network: Option<NetworkFault>,
    /// HTTP fault in chaosgate's HTTP fault proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    http: Option<HttpFault>,
    /// Toxic on an external Toxiproxy server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    toxiproxy: Option<ToxiproxyFault>,
    /// Signal to a local process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    process: Option<ProcessFault>,
    /// Operator-supplied inject and revert commands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    command: Option<CommandFault>,
}

/// One probe: exactly one of the type blocks must be set.
#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Probe")]
pub(super) struct Probe {
    /// Name, unique within the experiment.
    name: String,
    /// When the probe runs.
    mode: ProbeMode,
    /// Timing and retry settings.
    #[serde(default)]
    run_properties: RunProperties,
    #[serde(flatten)]
    types: ProbeTypeBlocks,
}

/// A probe's type blocks, of which exactly one must be set (experiment and guard probes).
#[derive(JsonSchema)]
pub(crate) struct ProbeTypeBlocks {
    /// An HTTP request and what its response must look like.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    http: Option<HttpProbe>,
    /// A TCP connect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tcp: Option<TcpProbe>,
    /// A local command and what its exit code and output must be.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    command: Option<CommandProbe>,
    /// An instant PromQL query compared with a threshold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    prometheus: Option<PrometheusProbe>,
}
