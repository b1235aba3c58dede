//! Telemetry beside the pipeline: logs, traces, metrics, the health and metrics HTTP
//! endpoints, and redaction of secrets.
//!
//! Telemetry is a leaf: it uses `contract` and external crates only, so every other
//! module may report through it. Callers hand it plain names and values (a fault's name
//! and kind, a header and its value); its own settings ([`TelemetryConfig`]) are defined
//! here and re-exported by `crate::config`.
//!
//! `chaosgate run` calls [`init`] once, inside its tokio runtime, and keeps the returned
//! [`TelemetryGuard`] until the worker has stopped: dropping it flushes the spans still
//! buffered.

pub mod heartbeat;
pub mod http;
pub mod logs;
pub mod metrics;
pub mod redact;
pub(crate) mod settings;
pub mod traces;

pub use settings::{LogFormat, TelemetryConfig};

use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Why telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The trace exporter could not be set up.
    #[error(transparent)]
    Traces(#[from] traces::TracesError),
    /// Traces were asked for but another subscriber is installed already.
    #[error(
        "telemetry.otlp_endpoint is set but a tracing subscriber is installed already; traces would be lost"
    )]
    AlreadyInstalled,
}

/// Keeps the trace pipeline alive; dropping it flushes and stops the exporter (do so
/// while the tokio runtime still runs).
#[derive(Debug, Default)]
#[must_use = "dropping the guard stops the trace exporter"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Whether spans are exported.
    pub fn traces_enabled(&self) -> bool {
        self.provider.is_some()
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(error) = blocking(|| provider.shutdown())
        {
            tracing::warn!(%error, "cannot shut the trace exporter down cleanly");
        }
    }
}

/// Runs `wait`, which blocks until the exporter thread has talked to the collector. On a
/// multi-thread runtime's worker the runtime is told first, so the gRPC connection's
/// tasks (possibly queued on this very worker) keep running meanwhile.
fn blocking<T>(wait: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(wait)
        }
        _ => wait(),
    }
}

/// Installs logs (see [`logs`]) and, when `otlp_endpoint` is set, the OTLP trace
/// exporter (see [`traces`]), as one global subscriber. Call inside the tokio runtime.
///
/// Without an endpoint an already installed subscriber is kept, as [`logs::init`] does;
/// with one, that is an error, since the spans would go nowhere.
pub fn init(telemetry: &TelemetryConfig) -> Result<TelemetryGuard, TelemetryError> {
    let Some(endpoint) = &telemetry.otlp_endpoint else {
        logs::init(telemetry);
        return Ok(TelemetryGuard::default());
    };
    let (provider, tracer) = traces::pipeline(endpoint)?;
    let spans = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(tracing_subscriber::filter::filter_fn(|metadata| {
            traces::is_exported(metadata)
        }));
    let installed = tracing_subscriber::registry()
        .with(logs::layer(telemetry))
        .with(spans)
        .try_init();
    if installed.is_err() {
        let _ = provider.shutdown();
        return Err(TelemetryError::AlreadyInstalled);
    }
    tracing::info!(
        endpoint = %redact::url(endpoint),
        "exporting traces over OTLP/gRPC"
    );
    Ok(TelemetryGuard {
        provider: Some(provider),
    })
}
