//! The view's web face: the HTML pages, the JSON API, exports, live updates (SSE) and the
//! health endpoints, all read-only over the [`Store`] that ingest fills.
//!
//! The rule that keeps it right: every handler only reads (through [`Store::read`]), so
//! nothing a browser or API client sends can change what the view holds; and every
//! route is listed once, in [`router`], which the OpenAPI test compares with
//! `schemas/view-openapi.yaml`.

use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::ingest::IngestStatus;
use super::store::Store;

/// Options of the web layer, from the `[view]` config section.
#[derive(Debug, Clone, Default)]
pub struct WebOptions {
    /// When set, every page and endpoint but `/healthz` needs `Authorization: Bearer
    /// TOKEN` (or the cookie that `?token=TOKEN` sets); otherwise 401.
    pub token: Option<String>,
    /// Link template for a run's trace, with `{trace_id}` filled from the run record
    /// (e.g. `http://jaeger:16686/trace/{trace_id}`); no link when unset.
    pub trace_url: Option<String>,
    /// How long a flag change may wait for its command before the audit reports it.
    pub audit_command_delay: Duration,
}

/// Serves the view on `listener` until `shutdown` is cancelled, then lets open
/// requests finish (live streams end at once).
///
/// Errors: only an I/O error of the listener itself; a failing request gets its own
/// status code and never stops the server.
pub async fn serve(
    listener: TcpListener,
    store: Store,
    ingest: IngestStatus,
    options: WebOptions,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let _ = (listener, store, ingest, options, shutdown);
    todo!("the web layer lands in the next commits")
}
