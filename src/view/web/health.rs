//! The view's operations endpoints: `/healthz`, `/readyz`, `/metrics`.
//!
//! - `/healthz`: 200 `ok` while the process serves HTTP (liveness). No token needed.
//! - `/readyz`: 200 once ingest has caught up with the high watermarks it saw at start
//!   (so a fresh replica takes traffic only when its pages are complete), else 503;
//!   both as JSON with the lag and, when not ready, why. No token needed.
//! - `/metrics`: Prometheus text exposition (prometheus-client): ingest lag and
//!   progress, rows per table, query time per query, and the integrity audit's
//!   findings per kind (`chaosgate_view_audit_findings{kind}`), computed at scrape.
//!
//! The rule that keeps it right: readiness and the ingest metrics come from
//! [`IngestStatus`] (what ingest itself committed), never from a guess here.

use std::sync::Mutex;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde_json::json;

use super::WebState;
use super::index;
use crate::view::model::FindingKind;

/// A query name label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueryLabel {
    query: String,
}

/// A table label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TableLabel {
    table: String,
}

/// An audit finding kind label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

/// Audit findings per kind, as last counted.
type FindingCounts = Vec<(FindingKind, u64)>;

/// Metrics the web layer keeps between scrapes.
#[derive(Debug)]
pub(crate) struct WebMetrics {
    query_seconds: Family<QueryLabel, Histogram>,
    /// Last audit result, to answer scrapes that come faster than the audit is worth.
    audit_cache: Mutex<Option<(std::time::Instant, FindingCounts)>>,
}

impl Default for WebMetrics {
    fn default() -> Self {
        WebMetrics {
            query_seconds: Family::new_with_constructor(|| {
                Histogram::new([
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                ])
            }),
            audit_cache: Mutex::new(None),
        }
    }
}

impl WebMetrics {
    /// Records one query's time.
    pub(crate) fn observe_query(&self, name: &str, took: Duration) {
        self.query_seconds
            .get_or_create(&QueryLabel {
                query: name.to_string(),
            })
            .observe(took.as_secs_f64());
    }
}

/// `GET /healthz`.
pub(crate) async fn healthz() -> &'static str {
    "ok"
}

/// `GET /readyz`.
pub(crate) async fn readyz(State(state): State<WebState>) -> Response {
    let ingest = &state.ingest;
    let failed = ingest.failed();
    let ready = ingest.caught_up() && failed.is_none();
    let partitions = ingest.lag();
    let lag: i64 = partitions.iter().map(|p| p.lag).sum();
    let mut reasons = Vec::new();
    if let Some(why) = &failed {
        reasons.push(format!("ingest stopped: {why}"));
    }
    if !ingest.caught_up() {
        let behind: Vec<String> = partitions
            .iter()
            .filter(|p| p.lag > 0)
            .map(|p| format!("{}/{}: {} to go", p.topic, p.partition, p.lag))
            .collect();
        reasons.push(format!(
            "ingest has not caught up with the high watermarks seen at start ({} records to go{}{})",
            lag,
            if behind.is_empty() { "" } else { ": " },
            behind.join(", ")
        ));
    }
    let body = json!({
        "ready": ready,
        "caught_up": ingest.caught_up(),
        "lag_records": lag,
        "partitions": partitions,
        "seq": ingest.seq(),
        "reasons": reasons,
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// `GET /metrics`.
pub(crate) async fn metrics(State(state): State<WebState>) -> Response {
    let rows = state.query("row_counts", index::row_counts).await;
    let findings = audit_counts(&state).await;
    let mut registry = Registry::with_prefix("chaosgate_view");
    registry.register(
        "query_seconds",
        "Time of the view's read queries, by query",
        state.metrics.query_seconds.clone(),
    );
    let ingest = &state.ingest;
    let lag = Gauge::<i64>::default();
    lag.set(ingest.lag().iter().map(|p| p.lag).sum());
    registry.register(
        "ingest_lag_records",
        "Records between the stored offsets and the high watermarks",
        lag,
    );
    let caught_up = Gauge::<i64>::default();
    caught_up.set(i64::from(ingest.caught_up()));
    registry.register(
        "ingest_caught_up",
        "1 once ingest caught up with the high watermarks seen at start",
        caught_up,
    );
    registry.register(
        "ingest_records",
        "Records ingest applied",
        ConstCounter::new(ingest.records()),
    );
    registry.register(
        "ingest_problems",
        "Records ingest could not decode and skipped (listed on /problems)",
        ConstCounter::new(ingest.problems()),
    );
    registry.register(
        "ingest_rows",
        "Rows ingest inserted or replaced",
        ConstCounter::new(ingest.rows()),
    );
    registry.register(
        "ingest_batches",
        "SQLite transactions ingest committed (rows and offsets together)",
        ConstCounter::new(ingest.batches()),
    );
    let table_rows = Family::<TableLabel, Gauge<i64>>::default();
    if let Ok(rows) = &rows {
        for (table, n) in rows {
            table_rows
                .get_or_create(&TableLabel {
                    table: table.clone(),
                })
                .set(*n);
        }
    }
    registry.register("rows", "Rows stored, by table", table_rows);
    let audit_findings = Family::<KindLabel, Gauge<i64>>::default();
    for (kind, n) in findings.iter().flatten() {
        audit_findings
            .get_or_create(&KindLabel {
                kind: kind.as_str().to_string(),
            })
            .set(i64::try_from(*n).unwrap_or(i64::MAX));
    }
    registry.register(
        "audit_findings",
        "Integrity audit findings now, by kind (see /api/audit)",
        audit_findings,
    );
    let mut text = String::new();
    if let Err(error) = prometheus_client::encoding::text::encode(&mut text, &registry) {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode metrics: {error}"),
        )
            .into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// Findings per kind, re-run at most every 10 s.
async fn audit_counts(state: &WebState) -> Option<FindingCounts> {
    if let Ok(cache) = state.metrics.audit_cache.lock()
        && let Some((at, counts)) = cache.as_ref()
        && at.elapsed() < Duration::from_secs(10)
    {
        return Some(counts.clone());
    }
    let counts: FindingCounts = super::api::finding_counts(state).await.ok()?;
    if let Ok(mut cache) = state.metrics.audit_cache.lock() {
        *cache = Some((std::time::Instant::now(), counts.clone()));
    }
    Some(counts)
}
