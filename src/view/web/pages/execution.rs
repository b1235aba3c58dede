//! One pipeline execution, `/executions/{pipeline_execution_id}`: the trigger (flag,
//! `from → to`, actor, time), the stages and steps in order with each run and attempt,
//! the flag command with its reason, and any kill-switch abort or dead letter of it.
//! Harness's "View Detailed Execution", for one flag change.
//!
//! The rule that keeps it right: the execution's status is the one its command set
//! (`running` until the command arrives), as the model says; the page does not infer it.

use axum::extract::{Path, State};
use maud::{Markup, html};

use super::{flag_href, position};
use crate::view::model::{ChangeRow, CommandRow, ExecutionDetail};
use crate::view::query;
use crate::view::web::WebState;
use crate::view::web::api::store_error;
use crate::view::web::error::{PageError, WebError};
use crate::view::web::layout::{self, Section, badge, duration, score, short_id, when, when_opt};

/// `GET /executions/{pipeline_execution_id}`.
pub(crate) async fn page(
    State(state): State<WebState>,
    Path(id): Path<String>,
) -> Result<Markup, PageError> {
    let key = id.clone();
    let detail = state
        .query("execution", move |c| query::execution(c, &key))
        .await
        .map_err(store_error)?
        .ok_or_else(|| WebError::NotFound(format!("no pipeline execution '{id}' (yet)")))?;
    let title = format!("Execution {}", id.get(..8).unwrap_or(&id));
    Ok(layout::page(&title, Section::Pipelines, body(&detail)))
}

fn body(detail: &ExecutionDetail) -> Markup {
    let e = &detail.execution;
    html! {
        div data-live="execution" data-stream={ "/api/stream?pipeline_execution_id=" (super::segment(&e.pipeline_execution_id)) } {
            div.crumbs { a href="/pipelines" { "Pipelines" } " › " a href={ "/pipelines/" (super::segment(&e.pipeline_id)) } { (e.pipeline_id) } }
            div.header-row {
                h1 { "Execution " span.mono { (e.pipeline_execution_id) } }
                (badge(e.status.as_str()))
            }
            p.muted {
                "Pipeline " a href={ "/pipelines/" (super::segment(&e.pipeline_id)) } { (e.pipeline_id) }
                " for flag " a.mono href=(flag_href(&e.project, &e.environment, &e.flag)) { (e.project) "/" (e.environment) "/" (e.flag) }
                " · started " (when(e.started_at))
                @if let Some(end) = e.ended_at { " · decided " (when(end)) }
                " · " a href={ "/runs?pipeline_execution_id=" (e.pipeline_execution_id) } { "its runs in the table" }
            }
            div.grid.cols-2 {
                div.panel { h2 style="margin-top:0" { "Trigger" } (trigger(detail.trigger.as_ref(), &e.trigger_event_id)) }
                div.panel { h2 style="margin-top:0" { "Flag command" } (command(detail.command.as_ref())) }
            }
            h2 { "Stages and steps" }
            @if detail.stages.is_empty() {
                (layout::empty("No runs", html! { "This execution ran no chaos step (yet)." }))
            }
            @for stage in &detail.stages {
                div.panel style="margin-bottom:12px" {
                    b { (stage.stage_name) } span.muted { " · " (stage.stage_type) " · " span.mono { (stage.stage_id) } }
                    table.data style="margin-top:8px" {
                        thead { tr { th { "Step" } th { "Run" } th.num { "Attempt" } th { "Status" } th { "Score / expected" } th { "Started" } th.num { "Duration" } th { "Summary" } } }
                        tbody {
                            @for step in &stage.steps {
                                @for (i, run) in step.runs.iter().enumerate() {
                                    tr data-row=(run.run_id) {
                                        td { @if i == 0 { b { (step.step_name) } } @else { span.muted.small { "earlier attempt" } } }
                                        td { a href={ "/runs/" (run.run_id) } { (short_id(&run.run_id)) } }
                                        td.num { (run.attempt) }
                                        td { (badge(run.status.as_str())) }
                                        td { (score(run.score, run.expected)) }
                                        td { (when(run.started_at)) }
                                        td.num { (duration(run.duration_seconds, (run.ended_at.is_none()).then_some(run.started_at))) }
                                        td.small { (run.summary.as_deref().unwrap_or_default()) }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            @if !detail.aborts.is_empty() {
                h2 { "Kill-switch aborts" }
                table.data {
                    thead { tr { th { "At" } th { "Scope" } th { "Id" } th { "Reason" } th { "Requested by" } th { "Kafka" } } }
                    tbody { @for a in &detail.aborts { tr {
                        td { (when(a.at)) } td { (a.scope) } td.mono { (a.id.as_deref().unwrap_or("all")) }
                        td { (a.reason.as_deref().unwrap_or_default()) } td { (a.requested_by.as_deref().unwrap_or_default()) } td { (position(&a.position)) }
                    } } }
                }
            }
            @if !detail.dead_letters.is_empty() {
                h2 { "Dead letters of the trigger" }
                (dead_letters(&detail.dead_letters))
            }
        }
    }
}

/// A dead-letter table.
pub(crate) fn dead_letters(rows: &[crate::view::model::DeadLetterRow]) -> Markup {
    html! {
        table.data {
            thead { tr { th { "At" } th { "Error" } th { "Message" } th { "Source" } th { "Kafka" } } }
            tbody { @for d in rows { tr {
                td { (when(d.at)) } td { (badge("error")) " " (d.error_class) } td.small { (d.error_message) }
                td { @if let Some(s) = &d.source { (position(s)) } } td { (position(&d.position)) }
            } } }
        }
    }
}

/// A flag change: kind, `from → to`, actor, time.
pub(crate) fn trigger(change: Option<&ChangeRow>, event_id: &str) -> Markup {
    match change {
        None => {
            html! { p.muted { "The flag-change " span.mono { (event_id) } " is not on the flag-changes topic (any more)." } }
        }
        Some(c) => html! {
            table.kv {
                tr { th { "Change" } td { b { (c.kind) } " " code { (json_text(c.from.as_ref())) } " → " code { (json_text(c.to.as_ref())) } } }
                tr { th { "Flag" } td { a.mono href=(flag_href(&c.project, &c.environment, &c.flag)) { (c.project) "/" (c.environment) "/" (c.flag) } } }
                tr { th { "Actor" } td { (c.actor.as_deref().unwrap_or("–")) } }
                tr { th { "Occurred" } td { (when(c.occurred_at)) } }
                tr { th { "Event id" } td.mono { (c.event_id) } }
                @if let Some(p) = &c.pipeline_id { tr { th { "Asked for pipeline" } td { (p) } } }
                tr { th { "Kafka" } td { (position(&c.position)) } }
            }
        },
    }
}

/// A flag command: command, reason, steps.
pub(crate) fn command(command: Option<&CommandRow>) -> Markup {
    match command {
        None => html! { p.muted { "No command yet: the pipeline is still running." } },
        Some(c) => html! {
            div.header-row { span.command { (badge(&c.command)) } @if c.dry_run { span.badge.aborted { "dry run: advice only" } } span.muted { (c.reason_code) } }
            p { (c.reason) }
            table.kv {
                tr { th { "Issued" } td { (when_opt(Some(c.issued_at))) } }
                tr { th { "Command id" } td.mono { (c.command_id) } }
                tr { th { "Kafka" } td { (position(&c.position)) } }
            }
            @if !c.steps.is_empty() {
                table.data style="margin-top:8px" {
                    thead { tr { th { "Step" } th { "Status" } th { "Score / expected" } th { "Summary" } } }
                    tbody { @for s in &c.steps { tr {
                        td { a href={ "/runs/" (s.run_id) } { (s.stage_id) " / " (s.step_id) } }
                        td { (badge(s.status.as_str())) }
                        td { (score(s.resilience_score, s.expected_resilience_score)) }
                        td.small { (s.summary) }
                    } } }
                }
            }
        },
    }
}

fn json_text(value: Option<&serde_json::Value>) -> String {
    value.map_or_else(|| "–".to_string(), |v| v.to_string())
}
