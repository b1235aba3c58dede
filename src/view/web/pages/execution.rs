//! One pipeline execution, `/executions/{pipeline_execution_id}`: the trigger (flag,
//! `from → to`, actor, time), the stages and steps in order with each run and attempt,
//! the flag command with its reason, and any kill-switch abort or dead letter of it.
//! Harness's "View Detailed Execution", for one flag change.
//!
//! The rule that keeps it right: the execution's status is the one its command set
//! (`running` until the command arrives), as the model says; the page does not infer it.

use axum::extract::{Path, State};
use maud::{Markup, html};

use super::{flag_href, holds, position};
use crate::view::model::{ChangeRow, CommandRow, ExecutionDetail, HoldRow, StepRuns};
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
                // A waiting execution has no command yet ("running"); it runs nothing.
                @match &e.waiting {
                    Some(kind) => span.badge.waiting #waiting-badge { "waiting: " (kind) },
                    None => (badge(e.status.as_str())),
                }
                // The pipeline passed, but its guard took the change back afterwards.
                @for guard in detail.guards.iter().filter(|g| g.status == "fired") {
                    a.badge.failed #guard-fired-badge href="#guard" title=(guard.reason.as_deref().unwrap_or_default()) {
                        "guard fired: " (guard.on_failure)
                    }
                }
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
                div.panel { h2 style="margin-top:0" { "Flag command" }
                    @match (&detail.command, &e.waiting) {
                        (None, Some(kind)) => p.muted { "No command yet: the execution waits (" (kind) "), holding no Kafka resource; the command comes once the hold ends." },
                        _ => (command(detail.command.as_ref())),
                    }
                }
            }
            @if let Some(freeze) = detail.holds.iter().find(|h| h.kind == "freeze") {
                (freeze_note(freeze))
            }
            h2 { "Stages and steps" }
            @let stages = stage_items(detail);
            @if stages.is_empty() {
                @if e.waiting.as_deref() == Some("freeze") {
                    (layout::empty("No runs yet", html! { "A freeze window holds the change: the pipeline runs from its first stage once the window ends." }))
                } @else {
                    (layout::empty("No runs", html! { "This execution ran no chaos step (yet)." }))
                }
            }
            @for (stage, items) in &stages {
                div.panel style="margin-bottom:12px" {
                    b { (stage.name) } span.muted { " · " (stage.stage_type) " · " span.mono { (stage.id) } }
                    table.data style="margin-top:8px" {
                        thead { tr { th { "Step" } th { "Run" } th.num { "Attempt" } th { "Status" } th { "Score / expected" } th { "Started" } th.num { "Duration" } th { "Summary" } } }
                        tbody {
                            @for item in items {
                                @match item {
                                    Item::Step(step) => {
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
                                    Item::Hold(h) => {
                                        tr.hold-row data-row={ "step-" (h.hold_id) } {
                                            td { b { (h.step_name.as_deref().or(h.step_id.as_deref()).unwrap_or_default()) } }
                                            td { span class={ "kind " (h.kind) } { (h.kind) } }
                                            td.num { span.muted { "–" } }
                                            td { (badge(&h.status)) }
                                            td.small { @if let Some(u) = h.until { "until " (u.format("%Y-%m-%d %H:%M")) " UTC" } }
                                            td { (when(h.since)) }
                                            td.num { (duration(h.ended_at.map(|e| (e - h.since).num_milliseconds() as f64 / 1000.0), h.ended_at.is_none().then_some(h.since))) }
                                            td.small { (h.reason) @if let Some(who) = &h.decided_by { br; span.muted { "by " (who) } } }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            (holds::execution_holds(&detail.holds, &detail.approvals))
            (holds::execution_guards(&detail.guards))
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

/// A stage as the page shows it.
struct StageHead {
    id: String,
    name: String,
    stage_type: String,
}

/// One row group of a stage: a step with its runs, or an approval or wait hold.
enum Item<'a> {
    Step(&'a StepRuns),
    Hold(&'a HoldRow),
}

/// Items of one stage with the time each began.
type Timed<'a> = Vec<(chrono::DateTime<chrono::Utc>, Item<'a>)>;

/// The stages in the order they began, each with its steps' runs and its holds in time
/// order (a stage that only waited, say for an approval, has holds alone). Freeze holds
/// are before any stage and not here.
fn stage_items(detail: &ExecutionDetail) -> Vec<(StageHead, Vec<Item<'_>>)> {
    let mut stages: Vec<(StageHead, Timed<'_>)> = detail
        .stages
        .iter()
        .map(|stage| {
            let items = stage
                .steps
                .iter()
                .filter_map(|step| Some((step.runs.first()?.started_at, Item::Step(step))))
                .collect();
            let head = StageHead {
                id: stage.stage_id.clone(),
                name: stage.stage_name.clone(),
                stage_type: stage.stage_type.clone(),
            };
            (head, items)
        })
        .collect();
    for hold in &detail.holds {
        let Some(stage_id) = &hold.stage_id else {
            continue;
        };
        let at = match stages.iter().position(|(s, _)| &s.id == stage_id) {
            Some(i) => i,
            None => {
                stages.push((
                    StageHead {
                        id: stage_id.clone(),
                        name: hold.stage_name.clone().unwrap_or_else(|| stage_id.clone()),
                        stage_type: String::from("waiting"),
                    },
                    Vec::new(),
                ));
                stages.len() - 1
            }
        };
        stages[at].1.push((hold.since, Item::Hold(hold)));
    }
    let start = |items: &Timed<'_>| items.iter().map(|(t, _)| *t).min();
    stages.sort_by_key(|(_, items)| start(items));
    stages
        .into_iter()
        .map(|(head, mut items)| {
            items.sort_by_key(|(t, _)| *t);
            (head, items.into_iter().map(|(_, item)| item).collect())
        })
        .collect()
}

/// The freeze window that held the change before any stage.
fn freeze_note(hold: &HoldRow) -> Markup {
    html! {
        div.panel.freeze #freeze-note style="margin-top:14px" {
            div.header-row {
                span.kind.freeze { "freeze" } (badge(&hold.status))
                b { (hold.window.as_deref().unwrap_or("freeze window")) }
                span.muted.small { "since " (hold.since.format("%Y-%m-%d %H:%M")) " UTC"
                    @if let Some(u) = hold.until { " · until " (u.format("%Y-%m-%d %H:%M")) " UTC" } }
            }
            p.small style="margin-bottom:0" { (hold.reason) }
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
