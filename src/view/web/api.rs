//! The JSON API: the same data as the pages, for scripts and dashboards. Every route is
//! `GET`, read-only, and answers `application/json`; errors are
//! `{"error": "...", "parameter": "since" | null, "status": 400}` (see [`WebError`]).
//!
//! - `/api/runs?<filter>` → `{"runs": [RunRow], "next": "<cursor>" | null}`; with
//!   `format=csv|ndjson` (or `/api/runs.csv`, `/api/runs.ndjson`) every matching run as
//!   an export.
//! - `/api/runs/{run_id}` → the run in full (record, headers, raw value, attempts) plus
//!   `trace_url` when `[view] trace_url` is set.
//! - `/api/executions/{id}`, `/api/flags/{project}/{environment}/{flag}`,
//!   `/api/pipelines/{id}`, `/api/overview?since=`, `/api/audit`, `/api/problems`.
//!
//! The rule that keeps it right: handlers parse (errors name the parameter), ask one
//! query, and serialise the model type as it is; nothing is computed here that a page
//! would compute differently.

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::Uri;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde_json::{Value, json};

use super::WebState;
use super::error::{ApiError, WebError};
use super::export::{self, Format};
use super::params::{self, RunParams};
use crate::view::audit;
use crate::view::model::{Page, RunFilter, RunRow};
use crate::view::query;
use crate::view::store::ViewError;

/// One page of runs for `filter` (shared by the page, the API and the exports).
pub(crate) async fn run_page(
    state: &WebState,
    filter: &RunFilter,
) -> Result<Page<RunRow>, WebError> {
    let filter = filter.clone();
    state
        .query("runs", move |c| query::runs(c, &filter))
        .await
        .map_err(store_error)
}

/// Turns the store's "bad request" (a malformed cursor, a bad glob) into a 400 naming
/// the parameter.
pub(crate) fn store_error(error: ViewError) -> WebError {
    match error {
        ViewError::BadRequest(message) => {
            let parameter = if message.contains("cursor") {
                "cursor"
            } else if message.contains("flag") || message.contains("glob") {
                "flag"
            } else {
                "query"
            };
            WebError::bad(parameter, message)
        }
        other => WebError::Store(other),
    }
}

/// `GET /api/runs`.
pub(crate) async fn runs(
    State(state): State<WebState>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let params = RunParams::parse(query.as_deref())?;
    if let Some(format) = Format::parse(params.raw_value("format"))? {
        return Ok(export::stream(state, params, format));
    }
    let page = run_page(&state, &params.filter).await?;
    Ok(Json(json!({ "runs": page.items, "next": page.next })).into_response())
}

/// `GET /api/runs.csv`.
pub(crate) async fn runs_csv(
    State(state): State<WebState>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let params = RunParams::parse(query.as_deref())?;
    Ok(export::stream(state, params, Format::Csv))
}

/// `GET /api/runs.ndjson`.
pub(crate) async fn runs_ndjson(
    State(state): State<WebState>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let params = RunParams::parse(query.as_deref())?;
    Ok(export::stream(state, params, Format::Ndjson))
}

/// The trace link of a run, from the `trace_url` template.
pub(crate) fn trace_link(state: &WebState, trace_id: Option<&str>) -> Option<String> {
    let template = state.options.trace_url.as_deref()?;
    let trace_id = trace_id?;
    Some(template.replace("{trace_id}", trace_id))
}

/// `GET /api/runs/{run_id}`.
pub(crate) async fn run(
    State(state): State<WebState>,
    Path(run_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = run_id.clone();
    let detail = state
        .query("run", move |c| query::run(c, &id))
        .await
        .map_err(store_error)?
        .ok_or_else(|| WebError::NotFound(format!("no run '{run_id}'")))?;
    let trace_url = trace_link(&state, detail.run.trace_id.as_deref());
    let mut value = serde_json::to_value(&detail).unwrap_or_default();
    if let Some(object) = value.as_object_mut() {
        object.insert("trace_url".into(), json!(trace_url));
    }
    Ok(Json(value))
}

/// `GET /api/executions/{pipeline_execution_id}`.
pub(crate) async fn execution(
    State(state): State<WebState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let key = id.clone();
    let detail = state
        .query("execution", move |c| query::execution(c, &key))
        .await
        .map_err(store_error)?
        .ok_or_else(|| WebError::NotFound(format!("no pipeline execution '{id}'")))?;
    Ok(Json(serde_json::to_value(&detail).unwrap_or_default()))
}

/// `GET /api/flags/{project}/{environment}/{flag}`.
pub(crate) async fn flag(
    State(state): State<WebState>,
    Path((project, environment, flag)): Path<(String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    let ledger = state
        .query("flag_ledger", move |c| {
            query::flag_ledger(c, &project, &environment, &flag)
        })
        .await
        .map_err(store_error)?;
    Ok(Json(serde_json::to_value(&ledger).unwrap_or_default()))
}

/// `GET /api/pipelines/{pipeline_id}`.
pub(crate) async fn pipeline(
    State(state): State<WebState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let summary = pipeline_summary(&state, &id).await?;
    Ok(Json(serde_json::to_value(&summary).unwrap_or_default()))
}

/// A pipeline's summary; 404 when the view has no execution of it.
pub(crate) async fn pipeline_summary(
    state: &WebState,
    id: &str,
) -> Result<crate::view::model::PipelineSummary, WebError> {
    let key = id.to_string();
    let summary = state
        .query("pipeline", move |c| query::pipeline(c, &key))
        .await
        .map_err(store_error)?;
    if summary.executions.is_empty() && summary.steps.is_empty() {
        return Err(WebError::NotFound(format!(
            "no executions of pipeline '{id}' (yet)"
        )));
    }
    Ok(summary)
}

/// The overview's time range from `?since=` (default 24 h back) and `?until=`.
pub(crate) fn range(
    query: Option<&str>,
) -> Result<(chrono::DateTime<Utc>, chrono::DateTime<Utc>), WebError> {
    let mut since = Utc::now() - chrono::TimeDelta::hours(24);
    let mut until = Utc::now() + chrono::TimeDelta::minutes(1);
    for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match key.as_ref() {
            "since" if !value.is_empty() => since = params::time("since", &value)?,
            "until" if !value.is_empty() => until = params::time("until", &value)?,
            "since" | "until" | "token" => {}
            other => {
                return Err(WebError::bad(
                    "query",
                    format!("unknown parameter '{other}'; this takes since and until"),
                ));
            }
        }
    }
    if since > until {
        return Err(WebError::bad("until", "'until' is before 'since'"));
    }
    Ok((since, until))
}

/// `GET /api/overview?since=&until=`.
pub(crate) async fn overview(
    State(state): State<WebState>,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let (since, until) = range(q.as_deref())?;
    let overview = overview_of(&state, since, until).await?;
    Ok(Json(serde_json::to_value(&overview).unwrap_or_default()))
}

/// The overview of runs started in `[since, until)` (shared by `/` and `/api/overview`).
pub(crate) async fn overview_of(
    state: &WebState,
    since: chrono::DateTime<Utc>,
    until: chrono::DateTime<Utc>,
) -> Result<crate::view::model::Overview, WebError> {
    let options = state.options.clone();
    state
        .query("overview", move |c| {
            query::overview(c, since, until, &options.audit)
        })
        .await
        .map_err(store_error)
}

/// The integrity audit's findings now (shared by `/`, `/api/audit`).
pub(crate) async fn findings(
    state: &WebState,
) -> Result<Vec<crate::view::model::AuditFinding>, WebError> {
    let options = state.options.clone();
    state
        .query("audit", move |c| {
            audit::findings(c, Utc::now(), &options.audit)
        })
        .await
        .map_err(store_error)
}

/// The integrity audit's counts per kind now (exact, while [`findings`] lists at most
/// [`audit::LISTED_PER_KIND`] of each).
pub(crate) async fn finding_counts(
    state: &WebState,
) -> Result<Vec<(crate::view::model::FindingKind, u64)>, WebError> {
    let options = state.options.clone();
    state
        .query("audit_counts", move |c| {
            audit::counts(c, Utc::now(), &options.audit)
        })
        .await
        .map_err(store_error)
}

/// `GET /api/audit` → `{"findings": [...], "counts": {kind: n}}` (at most
/// [`audit::LISTED_PER_KIND`] findings of each kind listed; the counts are whole).
pub(crate) async fn audit(State(state): State<WebState>) -> Result<Json<Value>, ApiError> {
    let findings = findings(&state).await?;
    let mut counts = serde_json::Map::new();
    for (kind, n) in finding_counts(&state).await? {
        counts.insert(kind.as_str().into(), json!(n));
    }
    Ok(Json(json!({ "findings": findings, "counts": counts })))
}

/// `GET /api/problems?cursor=` → `{"problems": [...], "next": "<cursor>" | null}`
/// (newest first).
pub(crate) async fn problems(
    State(state): State<WebState>,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let cursor = problems_cursor(q.as_deref())?;
    let page = state
        .query("problems", move |c| query::problems(c, cursor.as_deref()))
        .await
        .map_err(store_error)?;
    Ok(Json(json!({ "problems": page.items, "next": page.next })))
}

/// The `cursor` of a problems page (the only parameter it takes).
pub(crate) fn problems_cursor(query: Option<&str>) -> Result<Option<String>, WebError> {
    let mut cursor = None;
    for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match key.as_ref() {
            "cursor" if !value.is_empty() => cursor = Some(value.into_owned()),
            "cursor" | "token" => {}
            other => {
                return Err(WebError::bad(
                    "query",
                    format!("unknown parameter '{other}'; this takes cursor"),
                ));
            }
        }
    }
    Ok(cursor)
}

/// Unknown paths: 404 in JSON under `/api/`, a page elsewhere.
pub(crate) async fn not_found(uri: Uri) -> Response {
    let error = WebError::NotFound(format!("no page or endpoint at {}", uri.path()));
    if uri.path().starts_with("/api/") {
        error.json()
    } else {
        error.page()
    }
}
