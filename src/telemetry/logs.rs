//! Logs: human-readable on a terminal, JSON lines otherwise (or as configured), filtered
//! by `RUST_LOG` syntax.
//!
//! In JSON, each line carries the fields of the spans it happened in (`spans`), so a log
//! line inside a flag-change's `process` span names its flag, pipeline and execution.

use std::io::IsTerminal;

use tracing::Subscriber;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{LogFormat, TelemetryConfig};

/// The log filter: `RUST_LOG` when set, else the configured one, else `info`.
pub fn filter(telemetry: &TelemetryConfig) -> EnvFilter {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .or_else(|| telemetry.log_filter.clone())
        .unwrap_or_else(|| "info".to_string());
    EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Whether lines are JSON: as configured, or when stderr is not a terminal.
pub fn is_json(telemetry: &TelemetryConfig) -> bool {
    match telemetry.log_format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    }
}

/// The log layer on stderr, with its own filter, for a subscriber that may carry other
/// layers (traces).
pub fn layer<S>(telemetry: &TelemetryConfig) -> Box<dyn Layer<S> + Send + Sync + 'static>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    // Colours only on a terminal: text logs redirected to a file stay greppable.
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let filter = filter(telemetry);
    if is_json(telemetry) {
        fmt.json().flatten_event(true).with_filter(filter).boxed()
    } else {
        fmt.with_filter(filter).boxed()
    }
}

/// Installs the global log subscriber, logs only (once; later calls do nothing).
/// `RUST_LOG`, when set, wins over the configured filter. For logs and traces together
/// use [`super::init`].
pub fn init(telemetry: &TelemetryConfig) {
    // An already installed subscriber (tests, the demo) is kept.
    let _ = tracing_subscriber::registry()
        .with(layer(telemetry))
        .try_init();
}
