//! Logs: human-readable on a terminal, JSON lines otherwise (or as configured), filtered
//! by `RUST_LOG` syntax.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, TelemetryConfig};

/// Installs the global log subscriber (once; later calls do nothing). `RUST_LOG`, when
/// set, wins over the configured filter.
pub fn init(telemetry: &TelemetryConfig) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .or_else(|| telemetry.log_filter.clone())
        .unwrap_or_else(|| "info".to_string());
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match telemetry.log_format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
    // An already installed subscriber (tests, the demo) is kept.
    let _ = result;
}
