//! The telemetry settings: the `[telemetry]` table of the worker's configuration (log
//! format and filter, the OTLP endpoint for traces).
//!
//! They are defined here, beside the code that reads them, so telemetry depends on no
//! other module of the crate but `contract`; `crate::config` re-exports them as part of
//! the whole configuration (and its JSON Schema).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Log format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable on a terminal, JSON lines otherwise.
    #[default]
    Auto,
    /// Human-readable.
    Text,
    /// JSON lines.
    Json,
}

/// Logs and traces.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// OTLP endpoint for traces, e.g. `http://127.0.0.1:4317`; no traces when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otlp_endpoint: Option<String>,
    /// Log format.
    #[serde(default)]
    pub log_format: LogFormat,
    /// Log filter in `RUST_LOG` syntax (default `info`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_filter: Option<String>,
}
