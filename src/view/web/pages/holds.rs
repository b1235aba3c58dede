//! The parts of pages that show what waits and what watches: an execution's holds
//! (approval, wait, freeze window) with the approve or reject requests naming it, its
//! guard after the `enable`, and the "waiting now" list of the overview and a pipeline's
//! page, which gives the execution id an approve request must name.
//!
//! The rule that keeps it right: statuses, times and reasons are the hold and guard
//! records' own (their newest record per id); the page adds only the request a person
//! would send, built from the ids the record carries.

use chrono::Utc;
use maud::{Markup, html};

use super::{flag_href, position, verdict};
use crate::contract::control::APPROVAL_REQUEST_TYPE;
use crate::view::model::{ApprovalRow, GuardRow, HoldRow};
use crate::view::web::layout::{self, badge, short_id, when, when_opt, when_stacked};

/// Time left until `until`, e.g. `in 3 h 12 min`, or `due now` once past.
fn left(until: chrono::DateTime<Utc>) -> String {
    let s = (until - Utc::now()).num_seconds();
    if s <= 0 {
        return "due now".into();
    }
    let (d, h, m) = (s / 86_400, (s % 86_400) / 3600, (s % 3600) / 60);
    match (d, h) {
        (0, 0) => format!("in {} min", m.max(1)),
        (0, h) => format!("in {h} h {m} min"),
        (d, h) => format!("in {d} d {h} h"),
    }
}

/// The JSON data of an approve request for `hold` (the CloudEvent
/// `dev.chaosgate.control.approval.v1` on `chaosgate-control`).
pub(crate) fn approve_request(hold: &HoldRow) -> String {
    let mut data = serde_json::json!({
        "decision": "approve",
        "pipeline_execution_id": hold.pipeline_execution_id,
    });
    if let (Some(stage), Some(step)) = (&hold.stage_id, &hold.step_id) {
        data["step"] = format!("{stage}/{step}").into();
    }
    data["requested_by"] = "you@example.com".into();
    data["comment"] = "why you approve".into();
    serde_json::to_string_pretty(&data).unwrap_or_else(|_| data.to_string())
}

/// When a hold or guard ends by itself: the UTC time, and how long until then while it
/// is still open.
fn until_cell(until: Option<chrono::DateTime<Utc>>, open: bool) -> Markup {
    html! {
        @match until {
            Some(u) => {
                span.nowrap title=(u.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)) { (u.format("%Y-%m-%d %H:%M")) " UTC" }
                @if open { br; span.small.muted { (left(u)) } }
            }
            None => span.muted { "–" },
        }
    }
}

/// An execution's holds in the order they began, and the approve or reject requests that
/// named it.
pub(crate) fn execution_holds(holds: &[HoldRow], approvals: &[ApprovalRow]) -> Markup {
    html! {
        @if !holds.is_empty() {
            h2 #holds { "Holds" }
            table.data #hold-table {
                thead { tr { th { "Kind" } th { "Where" } th { "Status" } th { "Since" } th { "Until" } th { "Ended" } th { "Reason" } th { "Decided by" } th { "Comment" } } }
                tbody { @for h in holds { tr data-row=(h.hold_id) data-hold=(h.kind) {
                    td { span class={ "kind " (h.kind) } { (h.kind) } }
                    td.nowrap { (h.place()) }
                    td { (badge(&h.status)) }
                    td { (when_stacked(h.since)) }
                    td { (until_cell(h.until, h.status == "waiting")) }
                    td { (when_opt(h.ended_at)) }
                    td.small.why { (h.reason) }
                    td { @match &h.decided_by { Some(who) => { (who) @if let Some(at) = h.decided_at { br; span.small.muted { (at.format("%Y-%m-%d %H:%M:%S")) } } }, None => span.muted { "–" } } }
                    td.small { (h.comment.as_deref().unwrap_or("–")) }
                } } }
            }
            @for h in holds.iter().filter(|h| h.status == "waiting" && h.kind == "approval") {
                (approve_hint(h))
            }
        }
        @if !approvals.is_empty() {
            h2 { "Approval requests naming it" }
            p.small.muted { "As read from the control topic; the worker acts on the first valid one while the execution waits at an approval, and logs and ignores the others." }
            table.data #approval-table {
                thead { tr { th { "Sent" } th { "Decision" } th { "Step" } th { "By" } th { "Comment" } th { "Kafka" } } }
                tbody { @for a in approvals { tr {
                    td { (when(a.at)) }
                    td { span class={ "badge " (if a.decision == "approve" { "approved" } else { "rejected" }) } { (a.decision) } }
                    td.mono { (a.step.as_deref().unwrap_or("any")) }
                    td { (a.requested_by.as_deref().unwrap_or("–")) }
                    td.small { (a.comment.as_deref().unwrap_or("–")) }
                    td { (position(&a.position)) }
                } } }
            }
        }
    }
}

/// The `chaosgate approve` command line that answers `hold` (`reject` takes the same).
pub(crate) fn approve_command(hold: &HoldRow) -> String {
    let step = match (&hold.stage_id, &hold.step_id) {
        (Some(stage), Some(step)) => format!(" --step {stage}/{step}"),
        _ => String::new(),
    };
    format!(
        "chaosgate approve {}{step} --comment \"why you approve\"",
        hold.pipeline_execution_id
    )
}

/// How to answer a waiting approval: the execution id, the command line, and the
/// request's data for those who write it to Kafka themselves.
fn approve_hint(hold: &HoldRow) -> Markup {
    let command = approve_command(hold);
    let request = approve_request(hold);
    html! {
        div.panel.ask #approve-hint {
            b { "Waiting for a person" }
            p.small {
                "Approve or reject execution "
                code.copyable data-copy=(hold.pipeline_execution_id) { (hold.pipeline_execution_id) }
                " with the worker's configuration (click to copy; " code { "chaosgate reject" } " takes the same arguments):"
            }
            pre.raw.request #approve-command data-copy=(command) { (command) }
            p.small {
                "Or write the request yourself: a CloudEvent of type " code { (APPROVAL_REQUEST_TYPE) }
                " on the control topic (" code { "chaosgate-control" } " by default) with this data ("
                code { "decision" } " " code { "approve" } " or " code { "reject" } "):"
            }
            pre.raw.request data-copy=(request) { (request) }
        }
    }
}

/// The guards after an execution's `enable`: status, deadline, probes, reason, and the
/// command a fired guard issued.
pub(crate) fn execution_guards(guards: &[GuardRow]) -> Markup {
    html! {
        @for g in guards {
            h2 #guard { "Guard after the enable" }
            div.panel.guard data-row=(g.guard_id) {
                div.header-row {
                    (badge(&g.status))
                    span.muted { "watches the flag after enable " span.mono { (short_id(&g.enable_command_id)) } "; on a failure it issues " b { (g.on_failure) } }
                }
                @if let Some(reason) = &g.reason { p { (reason) } }
                table.kv {
                    tr { th { "Started" } td { (when(g.started_at)) } }
                    tr { th { "Deadline" } td { (until_cell(Some(g.deadline), g.status == "watching")) } }
                    tr { th { "Ended" } td { (when_opt(g.ended_at)) } }
                    @if let Some(command) = &g.command_id {
                        tr { th { "Command issued" } td { span.mono #guard-command { (command) } " " (badge(&g.on_failure)) " · " a href=(flag_href(&g.project, &g.environment, &g.flag)) { "the flag's ledger" } } }
                        @match &g.command {
                            Some(c) => {
                                tr { th { "Issued" } td { (when(c.issued_at)) " " span.muted.small { (c.reason_code) } } }
                                tr { th { "Its Kafka record" } td { (position(&c.position)) } }
                            }
                            None => tr { th { "" } td.small.muted { "not on flag-commands (yet)" } },
                        }
                    }
                    tr { th { "Guard id" } td.mono { (g.guard_id) } }
                    tr { th { "Kafka" } td { (position(&g.position)) } }
                }
                @if g.probes.is_empty() {
                    p.small.muted { "No probe results yet (a guard reports its probes when it ends)." }
                } @else {
                    table.data style="margin-top:8px" {
                        thead { tr { th { "Probe" } th { "Type" } th { "Mode" } th { "Verdict" } th.num { "Attempts" } th { "Last failure" } th { "Last check" } } }
                        tbody { @for p in &g.probes { tr data-probe=(p.name) {
                            td { (p.name) } td { (p.probe_type) } td { (p.mode) }
                            td { (badge(verdict(p.verdict))) }
                            td.num { (p.attempts) }
                            td.small { (p.last_error.as_deref().unwrap_or("–")) }
                            td { (when_opt(p.last_check_at)) }
                        } } }
                    }
                }
            }
        }
    }
}

/// What waits now: each waiting hold with its execution id (the one an approve request
/// names), its flag, since when and until when. `pipeline` hides the pipeline column.
pub(crate) fn waiting_list(holds: &[HoldRow], with_pipeline: bool) -> Markup {
    html! {
        @if holds.is_empty() {
            div.ok-note #waiting-none { "Nothing waits: no execution is held by an approval, a wait step or a freeze window." }
        } @else {
            table.data #waiting {
                thead { tr {
                    th { "Waits for" }
                    @if with_pipeline { th { "Pipeline" } }
                    th { "Flag" } th { "Execution (approve with this id)" } th { "Since" } th { "Until" } th { "Why" }
                } }
                tbody { @for h in holds { tr data-row=(h.hold_id) data-hold=(h.kind) {
                    td.nowrap { span class={ "kind " (h.kind) } { (h.kind) } br; span.small.muted { (h.place()) } }
                    @if with_pipeline { td { a href={ "/pipelines/" (super::segment(&h.pipeline_id)) } { (h.pipeline_id) } } }
                    td { a.mono href=(flag_href(&h.project, &h.environment, &h.flag)) { span.muted { (h.project) "/" (h.environment) "/" } (h.flag) } br; span.small.muted { (h.change_kind) } }
                    td { a.mono href={ "/executions/" (h.pipeline_execution_id) } { (h.pipeline_execution_id) } }
                    td { (when_stacked(h.since)) }
                    td.nowrap { (until_cell(h.until, true)) }
                    td.small.why { (h.reason) }
                } } }
            }
        }
    }
}

/// Guards still watching: flag, deadline, execution.
pub(crate) fn watching_list(guards: &[GuardRow]) -> Markup {
    html! {
        @if guards.is_empty() {
            (layout::empty("No guard watching", html! { "A guard shows here while it checks a flag after its enable." }))
        } @else {
            table.data #watching {
                thead { tr { th { "Flag" } th { "Pipeline" } th { "Execution" } th { "Deadline" } th { "On failure" } } }
                tbody { @for g in guards { tr data-row=(g.guard_id) {
                    td { a.mono href=(flag_href(&g.project, &g.environment, &g.flag)) { (g.project) "/" (g.environment) "/" (g.flag) } }
                    td { a href={ "/pipelines/" (super::segment(&g.pipeline_id)) } { (g.pipeline_id) } }
                    td { a href={ "/executions/" (g.pipeline_execution_id) } { (short_id(&g.pipeline_execution_id)) } }
                    td { (until_cell(Some(g.deadline), true)) }
                    td { (badge(&g.on_failure)) }
                } } }
            }
        }
    }
}
