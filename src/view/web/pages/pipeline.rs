//! A pipeline's page, `/pipelines/{pipeline_id}`: what of it waits now (approvals, waits,
//! freeze windows), its last executions as a status strip and a table, and per step the trend of score − expected across executions (an
//! inline SVG drawn on the server), the pass rate, and the steps closest to their
//! threshold. `/pipelines` lists the pipelines.
//!
//! The rule that keeps it right: margins and pass rates are the model's; the chart only
//! places them.

use axum::extract::{Path, State};
use maud::{Markup, html};

use super::holds;
use crate::view::model::{ExecutionSummary, PipelineSummary};
use crate::view::web::WebState;
use crate::view::web::api::{pipeline_summary, store_error};
use crate::view::web::error::PageError;
use crate::view::web::index;
use crate::view::web::layout::{self, Section, badge, short_id, when, when_opt};
use crate::view::web::svg::{self, TrendPoint};

/// `GET /pipelines/{pipeline_id}`.
pub(crate) async fn page(
    State(state): State<WebState>,
    Path(id): Path<String>,
) -> Result<Markup, PageError> {
    let summary = pipeline_summary(&state, &id).await?;
    Ok(layout::page(
        &format!("Pipeline {id}"),
        Section::Pipelines,
        body(&summary),
    ))
}

/// Executions as coloured squares, newest first, each a link.
pub(crate) fn strip(executions: &[ExecutionSummary]) -> Markup {
    html! {
        span.strip {
            @for e in executions {
                @let status = if e.waiting.is_some() { "waiting" } else { e.status.as_str() };
                a class=(status) href={ "/executions/" (e.pipeline_execution_id) }
                  title={ (status) @if let Some(kind) = &e.waiting { " (" (kind) ")" } " · " (e.project) "/" (e.environment) "/" (e.flag) " · " (e.started_at.format("%Y-%m-%d %H:%M:%S")) } {}
            }
        }
    }
}

fn body(s: &PipelineSummary) -> Markup {
    html! {
        div.crumbs { a href="/pipelines" { "Pipelines" } }
        div.header-row { h1 { "Pipeline " (s.pipeline_id) } (strip(&s.executions.iter().take(10).cloned().collect::<Vec<_>>())) }
        p.muted { a href={ "/runs?pipeline_id=" (super::segment(&s.pipeline_id)) } { "All its runs in the table" } }
        div data-live="pipeline" data-stream={ "/api/stream?pipeline_id=" (super::segment(&s.pipeline_id)) } {
            @if !s.waiting.is_empty() {
                h2 { "Waiting now " span.badge.waiting { (s.waiting.len()) } }
                (holds::waiting_list(&s.waiting, false))
            }
            @if !s.tightest.is_empty() {
                h2 { "Closest to threshold" }
                div.chips {
                    @for (stage, step) in &s.tightest {
                        @let margin = s.steps.iter().find(|t| &t.stage_id == stage && &t.step_id == step).and_then(|t| t.last_margin);
                        span.chip { (stage) " / " b { (step) } @if let Some(m) = margin { " " span style=(if m < 0.0 { "color:var(--failed)" } else { "" }) { (format!("{m:+.1}")) } } }
                    }
                }
            }
            h2 { "Steps: score − expected across executions" }
            @if s.steps.is_empty() { (layout::empty("No final runs yet", html! { "The trend appears once a step has finished." })) }
            div.grid.cols-2 {
                @for t in &s.steps {
                    @let points: Vec<TrendPoint> = t.points.iter().filter_map(|p| p.margin.map(|m| TrendPoint { at: p.started_at, margin: m, href: format!("/runs/{}", p.run_id) })).collect();
                    div.panel {
                        div.header-row {
                            b { (t.step_name) } span.muted.small { (t.stage_id) " / " (t.step_id) }
                        }
                        p.small.muted {
                            "pass rate " b { @match t.pass_rate { Some(r) => (format!("{:.0} %", r * 100.0)), None => "–" } }
                            " (" (t.passed) " of " (t.runs) ") · last margin "
                            b { @match t.last_margin { Some(m) => (format!("{m:+.1}")), None => "–" } }
                        }
                        (svg::trend(&points))
                    }
                }
            }
            h2 { "Executions" }
            @if s.executions.is_empty() { (layout::empty("No executions", html! { "None stored." })) }
            @else {
                table.data {
                    thead { tr { th { "Execution" } th { "Status" } th { "Flag" } th { "Started" } th { "Decided" } } }
                    tbody { @for e in &s.executions { tr data-row=(e.pipeline_execution_id) {
                        td { a href={ "/executions/" (e.pipeline_execution_id) } { (short_id(&e.pipeline_execution_id)) } }
                        td { @match &e.waiting { Some(kind) => span.badge.waiting { "waiting: " (kind) }, None => (badge(e.status.as_str())) } }
                        td { a.mono href=(super::flag_href(&e.project, &e.environment, &e.flag)) { (e.project) "/" (e.environment) "/" (e.flag) } }
                        td { (when(e.started_at)) } td { (when_opt(e.ended_at)) }
                    } } }
                }
            }
        }
    }
}

/// `GET /pipelines`.
pub(crate) async fn index(State(state): State<WebState>) -> Result<Markup, PageError> {
    let pipelines = state
        .query("pipelines", index::pipelines)
        .await
        .map_err(store_error)?;
    let body = html! {
        h1 { "Pipelines " span.sub { (pipelines.len()) " with executions" } }
        div data-live="pipelines" {
            @if pipelines.is_empty() {
                (layout::empty("No pipeline executions yet", html! { "A pipeline shows here after its first gated flag change." }))
            } @else {
                table.data {
                    thead { tr { th { "Pipeline" } th { "Last" } th.num { "Executions" } th.num { "Passed" } th.num { "Failed / aborted" } th.num { "Running" } th { "Last started" } } }
                    tbody { @for p in &pipelines { tr {
                        td { a href={ "/pipelines/" (super::segment(&p.pipeline_id)) } { (p.pipeline_id) } }
                        td { (badge(&p.last_status)) }
                        td.num { (p.executions) } td.num { (p.passed) } td.num { (p.failed) } td.num { (p.running) }
                        td { (when(p.last_started_at)) }
                    } } }
                }
            }
        }
    };
    Ok(layout::page("Pipelines", Section::Pipelines, body))
}
