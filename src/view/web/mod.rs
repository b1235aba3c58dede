//! The view's web face: the HTML pages, the JSON API, exports, live updates (SSE) and the
//! health endpoints, all read-only over the [`Store`] that ingest fills.
//!
//! The rule that keeps it right: every handler only reads (through [`WebState::query`],
//! which also times the query for `/metrics`), so nothing a browser or API client sends
//! can change what the view holds; and every route is listed once, in [`routes`], which
//! builds the router and which the OpenAPI test compares with `schemas/view-openapi.yaml`.

pub(crate) mod api;
pub(crate) mod auth;
pub(crate) mod error;
pub(crate) mod export;
pub(crate) mod health;
pub(crate) mod index;
pub(crate) mod layout;
pub(crate) mod live;
pub(crate) mod pages;
pub(crate) mod params;
pub(crate) mod svg;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::{MethodRouter, get};
use rusqlite::Connection;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::audit::AuditSettings;
use super::ingest::IngestStatus;
use super::store::{Store, ViewError};

/// Options of the web layer, from the `[view]` config section.
#[derive(Debug, Clone, Default)]
pub struct WebOptions {
    /// When set, every page and endpoint but `/healthz` and `/readyz` needs
    /// `Authorization: Bearer TOKEN` (or the cookie that `?token=TOKEN` sets); else 401.
    pub token: Option<String>,
    /// Link template for a run's trace, with `{trace_id}` filled from the run record
    /// (e.g. `http://127.0.0.1:16686/trace/{trace_id}`); no link when unset.
    pub trace_url: Option<String>,
    /// What the integrity audit needs: the command delay and the steps' timeouts.
    pub audit: AuditSettings,
}

/// What every handler reads from. Cheap to clone.
#[derive(Clone)]
pub struct WebState {
    /// The database ingest fills.
    pub(crate) store: Store,
    /// Ingest progress: live-update sequence, catch-up, lag.
    pub(crate) ingest: IngestStatus,
    /// Options.
    pub(crate) options: Arc<WebOptions>,
    /// Metrics of the web layer (query times).
    pub(crate) metrics: Arc<health::WebMetrics>,
    /// Cancelled at shutdown: live streams end.
    pub(crate) shutdown: CancellationToken,
    /// The counts by status of all runs, as last counted (see [`WebState::all_counts`]).
    all_counts: Arc<std::sync::Mutex<Option<CountedAll>>>,
}

/// The counts of all runs at one ingest sequence number, and how long they took.
#[derive(Debug, Clone, Copy)]
struct CountedAll {
    seq: u64,
    at: Instant,
    took: std::time::Duration,
    counts: crate::view::model::StatusCounts,
}

/// Counts of all runs that took longer than this to count are reused for
/// [`ALL_COUNTS_REUSE`] even while rows arrive (a million runs take about 0.1 s).
const ALL_COUNTS_SLOW: std::time::Duration = std::time::Duration::from_millis(20);
/// How long slow counts of all runs are reused.
const ALL_COUNTS_REUSE: std::time::Duration = std::time::Duration::from_secs(5);

impl WebState {
    /// A state over `store` and `ingest`.
    pub(crate) fn new(
        store: Store,
        ingest: IngestStatus,
        options: WebOptions,
        shutdown: CancellationToken,
    ) -> WebState {
        WebState {
            store,
            ingest,
            options: Arc::new(options),
            metrics: Arc::new(health::WebMetrics::default()),
            shutdown,
            all_counts: Arc::new(std::sync::Mutex::new(None)),
        }
    }

    /// The counts by status of all runs (the unfiltered runs page). Rule: exact while no
    /// row arrived since they were counted; when counting took over
    /// [`ALL_COUNTS_SLOW`] (a large store), reused for up to [`ALL_COUNTS_REUSE`] even
    /// as rows arrive, so a busy page does not read the whole status index per request.
    pub(crate) async fn all_counts(&self) -> Result<crate::view::model::StatusCounts, ViewError> {
        let seq = self.ingest.seq();
        let cached = self
            .all_counts
            .lock()
            .ok()
            .and_then(|cached| *cached)
            .filter(|c| {
                c.seq == seq || (c.took > ALL_COUNTS_SLOW && c.at.elapsed() < ALL_COUNTS_REUSE)
            });
        if let Some(cached) = cached {
            return Ok(cached.counts);
        }
        let started = Instant::now();
        let counts = self
            .query("status_counts", |c| {
                crate::view::query::status_counts(c, &crate::view::model::RunFilter::default())
            })
            .await?;
        if let Ok(mut cached) = self.all_counts.lock() {
            *cached = Some(CountedAll {
                seq,
                at: Instant::now(),
                took: started.elapsed(),
                counts,
            });
        }
        Ok(counts)
    }

    /// Runs a read query off the async runtime and records its time under `name`
    /// (`chaosgate_view_query_seconds{query=name}`).
    pub(crate) async fn query<T: Send + 'static>(
        &self,
        name: &'static str,
        f: impl FnOnce(&Connection) -> Result<T, ViewError> + Send + 'static,
    ) -> Result<T, ViewError> {
        let started = Instant::now();
        let result = self.store.read(f).await;
        self.metrics.observe_query(name, started.elapsed());
        result
    }
}

/// Every route, once: path and handlers. [`router`] is built from it, and the OpenAPI
/// test checks that `schemas/view-openapi.yaml` describes each path.
pub fn routes() -> Vec<(&'static str, MethodRouter<WebState>)> {
    vec![
        ("/", get(pages::overview::page)),
        ("/runs", get(pages::runs::page)),
        ("/runs/{run_id}", get(pages::run::page)),
        (
            "/executions/{pipeline_execution_id}",
            get(pages::execution::page),
        ),
        ("/pipelines", get(pages::pipeline::index)),
        ("/pipelines/{pipeline_id}", get(pages::pipeline::page)),
        ("/flags", get(pages::flag::index)),
        (
            "/flags/{project}/{environment}/{flag}",
            get(pages::flag::page),
        ),
        ("/problems", get(pages::problems::page)),
        ("/api/overview", get(api::overview)),
        ("/api/runs", get(api::runs)),
        ("/api/runs.csv", get(api::runs_csv)),
        ("/api/runs.ndjson", get(api::runs_ndjson)),
        ("/api/runs/{run_id}", get(api::run)),
        (
            "/api/executions/{pipeline_execution_id}",
            get(api::execution),
        ),
        ("/api/flags/{project}/{environment}/{flag}", get(api::flag)),
        ("/api/pipelines/{pipeline_id}", get(api::pipeline)),
        ("/api/audit", get(api::audit)),
        ("/api/problems", get(api::problems)),
        ("/api/stream", get(live::stream)),
        ("/healthz", get(health::healthz)),
        ("/readyz", get(health::readyz)),
        ("/metrics", get(health::metrics)),
        (
            "/static/view.css",
            get(|| async {
                (
                    [
                        (header::CONTENT_TYPE, "text/css; charset=utf-8"),
                        (header::CACHE_CONTROL, "max-age=300"),
                    ],
                    layout::CSS,
                )
                    .into_response()
            }),
        ),
        (
            "/static/view.js",
            get(|| async {
                (
                    [
                        (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
                        (header::CACHE_CONTROL, "max-age=300"),
                    ],
                    layout::JS,
                )
                    .into_response()
            }),
        ),
    ]
}

/// The whole application: [`routes`] behind the token check, unknown paths 404.
pub(crate) fn router(state: WebState) -> Router {
    let token = auth::Token(state.options.token.as_deref().map(Arc::from));
    let mut router = Router::new();
    for (path, handler) in routes() {
        router = router.route(path, handler);
    }
    router
        .fallback(api::not_found)
        .layer(axum::middleware::from_fn_with_state(token, auth::require))
        .with_state(state)
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
    let state = WebState::new(store, ingest, options, shutdown.clone());
    let app = router(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}
