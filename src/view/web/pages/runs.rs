//! The runs page, `/runs?<filter>`: every run as a table row, filtered by pipeline,
//! execution, flag glob, status (with counts), experiment, time range and free text,
//! sortable by start, score, margin and duration, 50 a page with a keyset "next" link.
//! The filter lives in the URL, so a view can be shared.
//!
//! The rule that keeps it right: the page reads the same [`RunParams`] as `/api/runs`
//! and the exports, so the table, the API and the CSV always list the same runs.

use axum::extract::{RawQuery, State};
use maud::{Markup, html};

use super::flag_link;
use crate::contract::RunStatus;
use crate::view::model::{RunFilter, RunRow, RunSort, StatusCounts};
use crate::view::query;
use crate::view::web::WebState;
use crate::view::web::api::{run_page, store_error};
use crate::view::web::error::PageError;
use crate::view::web::layout::{self, Section, badge, duration, score, short_id, when_stacked};
use crate::view::web::params::{RunParams, STATUSES};

/// `GET /runs`.
pub(crate) async fn page(
    State(state): State<WebState>,
    RawQuery(query): RawQuery,
) -> Result<Markup, PageError> {
    let params = RunParams::parse(query.as_deref())?;
    let rows = run_page(&state, &params.filter).await?;
    let counts_filter = RunFilter {
        statuses: Vec::new(),
        cursor: None,
        ..params.filter.clone()
    };
    let unfiltered = query::filter_is_empty(&counts_filter);
    let counts = if unfiltered {
        state.all_counts().await
    } else {
        state
            .query("status_counts", move |c| {
                query::status_counts(c, &counts_filter)
            })
            .await
    }
    .map_err(store_error)?;
    let body = html! {
        h1 data-live="runs-head" { "Runs " span.sub { (counts.total) " matching the filter" } }
        (filter_form(&params))
        div data-live="runs" {
            (status_chips(&params, &counts))
            @if rows.items.is_empty() {
                (layout::empty("No runs match this filter", html! {
                    "Runs appear here as the worker publishes them. "
                    @if !params.raw.is_empty() { a href="/runs" { "Clear the filter" } "." }
                }))
            } @else {
                (table(&rows.items, Some(&params)))
            }
            div.pager {
                span {
                    @if params.filter.cursor.is_some() { a href={ "/runs" (params.link(&[])) } { "← First page" } }
                }
                span.small { "Export this filter: "
                    a href={ "/api/runs.csv" (params.link(&[])) } { "CSV" } " · "
                    a href={ "/api/runs.ndjson" (params.link(&[])) } { "NDJSON" } " · "
                    a href={ "/api/runs" (params.link(&[])) } { "JSON" }
                }
                span {
                    @if let Some(next) = &rows.next {
                        a.button.ghost #next href={ "/runs" (params.link(&[("cursor", Some(next))])) } { "Next " (params.filter.limit) " →" }
                    }
                }
            }
        }
    };
    Ok(layout::page("Runs", Section::Runs, body))
}

fn filter_form(params: &RunParams) -> Markup {
    let value = |key: &str| params.raw_value(key).to_string();
    let ranges = [
        ("", "any time"),
        ("15m", "last 15 min"),
        ("1h", "last hour"),
        ("24h", "last 24 h"),
        ("7d", "last 7 days"),
        ("30d", "last 30 days"),
    ];
    let since = value("since");
    let custom_since = !since.is_empty() && !ranges.iter().any(|(v, _)| *v == since);
    html! {
        form.filters #filters method="get" action="/runs" {
            label { "Pipeline ID" input name="pipeline_id" value=(value("pipeline_id")) placeholder="checkout-rollout"; }
            label { "Execution ID" input name="pipeline_execution_id" value=(value("pipeline_execution_id")) placeholder="uuid"; }
            label { "Flag (glob)" input name="flag" value=(value("flag")) placeholder="project/env/flag-*"; }
            label { "Experiment" input name="experiment_id" value=(value("experiment_id")); }
            label { "Started"
                select name="since" {
                    @for (v, label) in ranges { option value=(v) selected[since == v] { (label) } }
                    @if custom_since { option value=(since) selected { "since " (since) } }
                }
            }
            label { "Until" input name="until" value=(value("until")) placeholder="RFC 3339 or 1h"; }
            label { "Text" input.wide name="q" value=(value("q")) placeholder="summary, log, errors"; }
            label { "Sort"
                select name="sort" {
                    @for (v, label) in [("start", "start"), ("score", "score"), ("margin", "margin (score − expected)"), ("duration", "duration")] {
                        option value=(v) selected[params.filter.sort.as_str() == v] { (label) }
                    }
                }
            }
            @for status in params.filter.statuses.iter() { input type="hidden" name="status" value=(status.as_str()); }
            button type="submit" { "Filter" }
            @if !params.raw.is_empty() { a.button.ghost href="/runs" { "Clear" } }
        }
    }
}

fn status_chips(params: &RunParams, counts: &StatusCounts) -> Markup {
    let count = |s: &str| match s {
        "running" => counts.running,
        "passed" => counts.passed,
        "failed" => counts.failed,
        "aborted" => counts.aborted,
        _ => counts.error,
    };
    let chosen: Vec<&str> = params.filter.statuses.iter().map(|s| s.as_str()).collect();
    html! {
        div.chips #status-chips {
            a.chip.on[chosen.is_empty()] href={ "/runs" (params.link(&[("status", None)])) } { "all" b { (counts.total) } }
            @for status in STATUSES {
                @let on = chosen.contains(&status);
                @let others: Vec<&str> = if on { chosen.iter().copied().filter(|s| *s != status).collect() } else { chosen.iter().copied().chain([status]).collect() };
                @let joined = others.join(",");
                a class={ "chip" @if on { " on" } } href={ "/runs" (params.link(&[("status", if joined.is_empty() { None } else { Some(joined.as_str()) })])) } {
                    span class={ "badge " (status) } { (status) } b { (count(status)) }
                }
            }
        }
    }
}

/// The runs table; with `params`, the sortable headers link to the same filter sorted.
pub(crate) fn table(rows: &[RunRow], params: Option<&RunParams>) -> Markup {
    table_with(rows, params, true)
}

/// [`table`] without the flag column, for a page about one flag (its ledger), where
/// every row names the same flag.
pub(crate) fn table_of_one_flag(rows: &[RunRow]) -> Markup {
    table_with(rows, None, false)
}

fn table_with(rows: &[RunRow], params: Option<&RunParams>, flag: bool) -> Markup {
    let sort_header = |label: &str, key: RunSort| -> Markup {
        match params {
            Some(p) => html! {
                a.sorted[p.filter.sort == key] href={ "/runs" (p.link(&[("sort", Some(key.as_str()))])) } title={ "sort by " (key.as_str()) } {
                    (label) @if p.filter.sort == key { " ↓" }
                }
            },
            None => html! { (label) },
        }
    };
    html! {
        table.data.runs {
            thead { tr {
                th { "Run" } th { "Status" } th { (sort_header("Score / expected", RunSort::Score)) }
                th.num { (sort_header("Margin", RunSort::Margin)) }
                th { "Pipeline" } th { "Stage / step" } @if flag { th { "Flag" } } th { "Experiment" } th.num { "Attempt" }
                th { (sort_header("Started", RunSort::Start)) } th.num { (sort_header("Duration", RunSort::Duration)) }
            } }
            tbody {
                @for row in rows { (table_row(row, flag)) }
            }
        }
    }
}

fn table_row(row: &RunRow, flag: bool) -> Markup {
    let running = row.status == RunStatus::Running;
    html! {
        tr data-row=(row.run_id) data-status=(row.status.as_str()) {
            td { a.run-link href={ "/runs/" (row.run_id) } { (short_id(&row.run_id)) } }
            td { (badge(row.status.as_str())) }
            td { (score(row.score, row.expected)) }
            td.num { @match row.margin { Some(m) => span style=(if m < 0.0 { "color:var(--failed)" } else { "" }) { (format!("{m:+.1}")) }, None => span.muted { "–" } } }
            td.nowrap { a href={ "/pipelines/" (super::segment(&row.pipeline_id)) } { (row.pipeline_id) } br;
                 a.small.muted href={ "/executions/" (row.pipeline_execution_id) } { "exec " (short_id(&row.pipeline_execution_id)) } }
            td { (row.stage_name) span.muted { " / " } (row.step_name) }
            @if flag { td.nowrap { (flag_link(row)) } }
            td { span title=(row.experiment_id) { (row.experiment_name) } }
            td.num { (row.attempt) }
            td { (when_stacked(row.started_at)) }
            td.num { (duration(row.duration_seconds, running.then_some(row.started_at))) }
        }
    }
}
