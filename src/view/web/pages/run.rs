//! A run's page, `/runs/{run_id}`: the score against expected with the weighted formula
//! per fault (weight × probe %), the assertion and its result, each fault on a small
//! timeline with its inject and revert times and whether it was reverted, each probe
//! (type, mode, verdict, attempts, last error), the run's log, the raw CloudEvent with
//! its headers, its Kafka topic/partition/offset, a trace link, and the other attempts.
//!
//! The rule that keeps it right: the formula is laid out from the record's own faults
//! and its total is the record's `resilience_score`; the page never recomputes a score
//! that could disagree with the gate's.

use axum::extract::{Path, State};
use chrono::Utc;
use maud::{Markup, html};

use super::{flag_link, position, verdict};
use crate::contract::{RunRecord, RunStatus};
use crate::view::model::RunDetail;
use crate::view::query;
use crate::view::web::WebState;
use crate::view::web::api::{store_error, trace_link};
use crate::view::web::error::{PageError, WebError};
use crate::view::web::layout::{self, Section, badge, duration, number, short_id, when, when_opt};
use crate::view::web::svg::{self, FaultSpan, ProbeSpan};

/// `GET /runs/{run_id}`.
pub(crate) async fn page(
    State(state): State<WebState>,
    Path(run_id): Path<String>,
) -> Result<Markup, PageError> {
    let id = run_id.clone();
    let detail = state
        .query("run", move |c| query::run(c, &id))
        .await
        .map_err(store_error)?
        .ok_or_else(|| {
            WebError::NotFound(format!(
                "no run '{run_id}' (yet): it appears once its record is ingested"
            ))
        })?;
    let trace = trace_link(&state, detail.run.trace_id.as_deref());
    let title = format!(
        "Run {}",
        detail.run.run_id.get(..8).unwrap_or(&detail.run.run_id)
    );
    Ok(layout::page(
        &title,
        Section::Runs,
        body(&detail, trace.as_deref()),
    ))
}

fn body(detail: &RunDetail, trace: Option<&str>) -> Markup {
    let row = &detail.run;
    let record = &detail.record;
    let running = row.status == RunStatus::Running;
    html! {
        div data-live="run" data-stream={ "/api/stream?pipeline_execution_id=" (super::segment(&row.pipeline_execution_id)) } {
            div.crumbs {
                a href={ "/pipelines/" (super::segment(&row.pipeline_id)) } { (row.pipeline_id) } " › "
                a href={ "/executions/" (row.pipeline_execution_id) } { "execution " (short_id(&row.pipeline_execution_id)) } " › "
                (row.stage_name) " › " (row.step_name)
            }
            div.header-row {
                h1 { "Run " span.mono #run-id { (row.run_id) } }
                span #run-status { (badge(row.status.as_str())) }
                span.muted { "attempt " (row.attempt) }
            }
            @if let Some(summary) = &row.summary { p #summary { (summary) } }
            div.grid.cols-2 {
                (score_panel(detail))
                div.panel {
                    table.kv {
                        tr { th { "Pipeline" } td { a href={ "/pipelines/" (super::segment(&row.pipeline_id)) } { (row.pipeline_id) } } }
                        tr { th { "Execution" } td { a.mono href={ "/executions/" (row.pipeline_execution_id) } { (row.pipeline_execution_id) } } }
                        tr { th { "Stage / step" } td { (row.stage_name) " (" (row.stage_type) ") / " (row.step_name) } }
                        tr { th { "Experiment" } td { (row.experiment_name) " " span.muted.mono { (row.experiment_id) } } }
                        tr { th { "Flag" } td { (flag_link(row)) } }
                        tr { th { "Trigger" } td {
                            @if let Some(kind) = record.trigger_change_kind { b { (kind.as_str()) } " " }
                            @if let Some(actor) = &record.trigger_actor { "by " (actor) " · " }
                            span.mono.small { (row.trigger_event_id) }
                        } }
                        tr { th { "Started" } td { (when(row.started_at)) } }
                        tr { th { "Ended" } td { (when_opt(row.ended_at)) } }
                        tr { th { "Duration" } td { (duration(row.duration_seconds, running.then_some(row.started_at))) } }
                        tr { th { "Probes" } td { span style="color:var(--passed)" { (row.probes_passed) " passed" } ", " span style=(if row.probes_failed > 0 { "color:var(--failed)" } else { "" }) { (row.probes_failed) " failed" } } }
                        tr { th { "Kafka" } td { (position(&row.position)) } }
                        tr { th { "Trace" } td {
                            @match (trace, &row.trace_id) {
                                (Some(url), _) => a href=(url) target="_blank" rel="noopener" { "open trace " span.mono { (row.trace_id.as_deref().unwrap_or_default()) } },
                                (None, Some(id)) => { span.mono { (id) } span.muted.small { " (set [view] trace_url for a link)" } },
                                (None, None) => span.muted { "no trace id on this record" },
                            }
                        } }
                    }
                }
            }
            h2 { "Faults" }
            (faults(record, running))
            h2 { "Probes" }
            (probes(record))
            @if detail.attempts.len() > 1 {
                h2 { "Attempts of this step" }
                (super::runs::table(&detail.attempts, None))
            }
            h2 { "Log" }
            @if record.log.is_empty() { (layout::empty("No log lines", html! { "The record carries no log." })) }
            @else { pre.log #log { @for line in &record.log { (line) "\n" } } }
            h2 { "Raw CloudEvent" }
            div.grid.cols-2 {
                div.panel {
                    b { "Headers" }
                    table.kv.mono #headers { @for (name, value) in &detail.headers { tr { th { (name) } td { (value) } } } }
                }
                div {
                    @match serde_json::from_str::<serde_json::Value>(&detail.value) {
                        Ok(value) => (layout::raw_json(&value)),
                        Err(_) => pre.raw { (detail.value) },
                    }
                }
            }
        }
    }
}

fn score_panel(detail: &RunDetail) -> Markup {
    let row = &detail.run;
    let record = &detail.record;
    let class = match row.score {
        Some(s) if s >= row.expected => "big-score passed",
        Some(_) => "big-score failed",
        None => "big-score",
    };
    let weights: u32 = record.faults.iter().map(|f| u32::from(f.weight)).sum();
    let points: f64 = record
        .faults
        .iter()
        .map(|f| f64::from(f.weight) * f.probe_success_percentage)
        .sum();
    html! {
        div.panel #score-panel {
            div.header-row {
                span class=(class) #score { @match row.score { Some(s) => (number(s)), None => "–" } }
                span.muted { "resilience score, expected ≥ " b #expected { (number(row.expected)) } }
            }
            @if !record.faults.is_empty() {
                table.formula {
                    tr { th { "fault" } th { "weight" } th { "×" } th { "probes passed" } th { "=" } th { "points" } }
                    @for fault in &record.faults {
                        tr { td { (fault.name) } td.num { (fault.weight) } td { "×" } td.num { (number(fault.probe_success_percentage)) " %" } td { "=" } td.num { (number(f64::from(fault.weight) * fault.probe_success_percentage)) } }
                    }
                    tr { td colspan="6" { span.muted { "score = Σ points / Σ weights = " (number(points)) " / " (weights) }
                        @if weights > 0 { " = " b { (number(points / f64::from(weights))) } } } }
                }
            }
            p {
                b { "Assertion: " }
                @match &record.assertion {
                    None => span.muted { "none on this step" },
                    Some(a) => {
                        code { (a.expression) } " → "
                        @match (a.result, &a.error) {
                            (Some(true), _) => (badge("passed")),
                            (Some(false), _) => (badge("failed")),
                            (None, Some(e)) => { (badge("error")) " " span.muted { (e) } },
                            (None, None) => span.muted { "not evaluated" },
                        }
                    }
                }
            }
        }
    }
}

fn faults(record: &RunRecord, running: bool) -> Markup {
    if record.faults.is_empty() {
        return layout::empty("No faults", html! { "This experiment injected no faults." });
    }
    let to = record.ended_at.unwrap_or_else(|| {
        if running {
            Utc::now()
        } else {
            record.started_at
        }
    });
    let probes: Vec<ProbeSpan> = record
        .probes
        .iter()
        .filter_map(|p| {
            Some(ProbeSpan {
                name: p.name.clone(),
                first_check_at: p.first_check_at?,
                last_check_at: p.last_check_at?,
                passed: p.verdict == crate::contract::Verdict::Passed,
            })
        })
        .collect();
    let spans: Vec<FaultSpan> = record
        .faults
        .iter()
        .map(|f| FaultSpan {
            name: f.name.clone(),
            started_at: f.started_at,
            ended_at: f.ended_at,
            reverted: f.reverted,
        })
        .collect();
    html! {
        div.panel { (svg::timeline(record.started_at, to, &spans, &probes)) }
        table.data #faults style="margin-top:10px" {
            thead { tr { th { "Fault" } th { "Kind" } th.num { "Weight" } th { "Verdict" } th.num { "Probes passed" } th { "Injected" } th { "Reverted at" } th { "Reverted" } th { "Error" } } }
            tbody { @for f in &record.faults { tr {
                td { (f.name) } td { (f.kind) } td.num { (f.weight) } td { (badge(verdict(f.verdict))) }
                td.num { (number(f.probe_success_percentage)) " %" }
                td { @match f.started_at { Some(t) => span.mono { (t.format("%H:%M:%S%.3f")) }, None => span.muted { "never" } } }
                td { @match f.ended_at { Some(t) => span.mono { (t.format("%H:%M:%S%.3f")) }, None => span.muted { "–" } } }
                td { @if f.reverted { span style="color:var(--passed)" { "yes" } } @else if f.started_at.is_some() { b style="color:var(--failed)" { "NO" } } @else { span.muted { "n/a" } } }
                td.small { @if let Some(e) = &f.error { (e) } }
            } } }
        }
    }
}

fn probes(record: &RunRecord) -> Markup {
    if record.probes.is_empty() {
        return layout::empty(
            "No probes",
            html! { "This experiment has no probes, or the run ended before they ran." },
        );
    }
    html! {
        table.data #probes {
            thead { tr { th { "Probe" } th { "Type" } th { "Mode" } th { "Verdict" } th.num { "Attempts" } th { "Checked" } th { "Last error" } } }
            tbody { @for p in &record.probes { tr data-probe=(p.name) {
                td { (p.name) } td { (p.probe_type) } td { (p.mode) }
                td.verdict { (badge(verdict(p.verdict))) } td.num { (p.attempts) }
                td.nowrap { @match (p.first_check_at, p.last_check_at) {
                    (Some(a), Some(b)) => span.mono { (a.format("%H:%M:%S%.3f")) " – " (b.format("%H:%M:%S%.3f")) },
                    _ => span.muted { "–" },
                } }
                td.small { @match &p.last_error { Some(e) => span.mono { (e) }, None => span.muted { "–" } } }
            } } }
        }
    }
}
