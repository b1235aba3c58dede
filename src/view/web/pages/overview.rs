//! The overview, `/`: runs by status for a time range (`?since=`, default 24 h; each
//! count links to the runs table with that filter), what needs attention (failed, error
//! and aborted runs, and runs `running` past their step's timeout), what waits now (holds
//! of approvals, wait steps and freeze windows, with the execution id an approve request
//! names) and which guards watch, each pipeline's
//! last 10 executions as a status strip, and the integrity audit's findings.
//!
//! The rule that keeps it right: the counts and lists are the overview query's; the
//! audit is the same call as `/api/audit`.

use axum::extract::{RawQuery, State};
use maud::{Markup, html};

use super::holds;
use super::pipeline::strip;
use crate::view::model::{AuditFinding, Overview};
use crate::view::web::WebState;
use crate::view::web::api::{finding_counts, findings, overview_of, range};
use crate::view::web::error::PageError;
use crate::view::web::layout::{self, Section, badge, score, short_id, when};

/// `GET /`.
pub(crate) async fn page(
    State(state): State<WebState>,
    RawQuery(q): RawQuery,
) -> Result<Markup, PageError> {
    let (since, until) = range(q.as_deref())?;
    let chosen = form_urlencoded::parse(q.unwrap_or_default().as_bytes())
        .find(|(k, _)| k == "since")
        .map_or_else(|| "24h".to_string(), |(_, v)| v.into_owned());
    let overview = overview_of(&state, since, until).await?;
    let findings = findings(&state).await?;
    let total: u64 = finding_counts(&state).await?.iter().map(|(_, n)| n).sum();
    Ok(layout::page(
        "Overview",
        Section::Overview,
        body(&overview, &findings, total, &chosen),
    ))
}

fn body(o: &Overview, findings: &[AuditFinding], total: u64, chosen: &str) -> Markup {
    let counts = [
        ("running", o.counts.running),
        ("passed", o.counts.passed),
        ("failed", o.counts.failed),
        ("aborted", o.counts.aborted),
        ("error", o.counts.error),
    ];
    html! {
        div.toolbar {
            h1 { "Overview " span.sub { "runs started since " (o.since.format("%Y-%m-%d %H:%M")) " UTC" } }
            div.chips {
                @for r in ["1h", "24h", "7d", "30d"] { a.chip.on[chosen == r] href={ "/?since=" (r) } { "last " (r) } }
            }
        }
        div data-live="overview" {
            div.grid.cols-5 #counts {
                @for (status, n) in counts {
                    a class={ "stat " (status) } href={ "/runs?status=" (status) "&since=" (chosen) } style="color:inherit;text-decoration:none" {
                        div.n { (n) } div.l { (status) }
                    }
                }
            }
            div {
                    h2 { "Needs attention" }
                    @if o.needs_attention.is_empty() {
                        div.ok-note { "Nothing failed, errored or was aborted in this range, and no run is overdue." }
                    } @else {
                        table.data {
                            thead { tr { th { "Run" } th { "Status" } th { "Pipeline / step" } th { "Score" } th { "Why" } th { "Started" } } }
                            tbody { @for a in o.needs_attention.iter().take(20) { tr data-row=(a.run.run_id) {
                                td { a href={ "/runs/" (a.run.run_id) } { (short_id(&a.run.run_id)) } }
                                td { (badge(a.run.status.as_str())) }
                                td.nowrap { a href={ "/pipelines/" (super::segment(&a.run.pipeline_id)) } { (a.run.pipeline_id) } span.muted { " / " (a.run.step_name) } }
                                td { (score(a.run.score, a.run.expected)) }
                                td.small { (a.why) }
                                td { (when(a.run.started_at)) }
                            } } }
                        }
                        @if o.needs_attention.len() > 20 { p.small { a href={ "/runs?status=failed,error,aborted&since=" (chosen) } { "all " (o.needs_attention.len()) " →" } } }
                    }
            }
            div #waiting-now {
                h2 { "Waiting now " @if !o.waiting.is_empty() { span.badge.waiting #waiting-count { (o.waiting.len()) } } }
                (holds::waiting_list(&o.waiting, true))
            }
            @if !o.watching.is_empty() {
                div #watching-now {
                    h2 { "Guards watching " span.badge.watching { (o.watching.len()) } }
                    (holds::watching_list(&o.watching))
                }
            }
            div.grid.cols-2 {
                div {
                    h2 { "Pipelines: last 10 executions" }
                    @if o.pipelines.is_empty() {
                        (layout::empty("No pipeline executions yet", html! { "Start the worker and change a flag: its pipeline shows here." }))
                    } @else {
                        table.data {
                            thead { tr { th { "Pipeline" } th { "Newest → oldest" } th { "Last" } } }
                            tbody { @for p in &o.pipelines { tr {
                                td { a href={ "/pipelines/" (super::segment(&p.pipeline_id)) } { (p.pipeline_id) } }
                                td { (strip(&p.executions)) }
                                td { @if let Some(e) = p.executions.first() { (when(e.started_at)) } }
                            } } }
                        }
                    }
                }
                div {
                    h2 { "Integrity audit" }
                    @if findings.is_empty() {
                        div.ok-note #audit-ok { "Everything adds up: no overdue run, no command naming a missing run, every fault reverted, every change answered." }
                    } @else {
                        @for f in findings.iter().take(12) {
                            div.finding {
                                b { (f.kind.as_str()) } " · " (f.message)
                                @if let Some(run) = &f.run_id { " · " a href={ "/runs/" (run) } { "run " (short_id(run)) } }
                                @if let Some(e) = &f.pipeline_execution_id { " · " a href={ "/executions/" (e) } { "execution" } }
                            }
                        }
                        @if total > 12 { p.small { a href="/api/audit" { "all " (total) " findings (JSON) →" } } }
                    }
                }
            }
        }
    }
}
