//! The flag ledger, `/flags/{project}/{environment}/{flag}`: every change of one flag,
//! newest first, each with the runs it triggered and the command that answered it (and
//! any dead letter): the page that answers "why is this flag off?". `/flags` lists the
//! flags with their last command.
//!
//! The rule that keeps it right: entries are keyed by the change's event id, as the
//! records link them (`trigger_event_id`, `causation_event_id`), never by time.

use axum::extract::{Path, State};
use maud::{Markup, html};

use super::execution::{command, dead_letters, trigger};
use super::flag_href;
use crate::view::model::FlagLedger;
use crate::view::query;
use crate::view::web::WebState;
use crate::view::web::api::store_error;
use crate::view::web::error::PageError;
use crate::view::web::index;
use crate::view::web::layout::{self, Section, badge, when};

/// `GET /flags/{project}/{environment}/{flag}`.
pub(crate) async fn page(
    State(state): State<WebState>,
    Path((project, environment, flag)): Path<(String, String, String)>,
) -> Result<Markup, PageError> {
    let ledger = state
        .query("flag_ledger", move |c| {
            query::flag_ledger(c, &project, &environment, &flag)
        })
        .await
        .map_err(store_error)?;
    let title = format!("{}/{}/{}", ledger.project, ledger.environment, ledger.flag);
    Ok(layout::page(&title, Section::Flags, body(&ledger)))
}

fn body(ledger: &FlagLedger) -> Markup {
    let current = ledger
        .entries
        .iter()
        .find_map(|e| e.guard_command.as_ref().or(e.command.as_ref()));
    html! {
        div.crumbs { a href="/flags" { "Flags" } " › " (ledger.project) " › " (ledger.environment) }
        div.header-row {
            h1 { span.muted { (ledger.project) "/" (ledger.environment) "/" } (ledger.flag) }
            @if let Some(c) = current { span.muted { "last command" } (badge(&c.command)) span.muted.small { (c.reason_code) } }
        }
        p.muted { "Every change of this flag, newest first: what changed, the chaos runs it triggered, and the command the gate sent. "
            a href={ "/runs?flag=" (super::segment(&ledger.project)) "/" (super::segment(&ledger.environment)) "/" (super::segment(&ledger.flag)) } { "All its runs in the table" } "." }
        div data-live="ledger" {
            @if ledger.entries.is_empty() {
                (layout::empty("No changes of this flag", html! { "Nothing on the topics names this flag (check the spelling: project/environment/flag)." }))
            }
            @for entry in &ledger.entries {
                div.panel style="margin-bottom:14px" {
                    div.grid.cols-2 {
                        div { b { "Change" } (trigger(entry.change.as_ref(), &entry.event_id)) }
                        div { b { "Command" } (command(entry.command.as_ref())) }
                    }
                    @if let Some(g) = &entry.guard_command {
                        div.panel.guard style="margin-top:10px" {
                            b { "Then its guard fired " } (badge(&g.command)) " " span.muted.small { (g.reason_code) " · " (when(g.issued_at)) }
                            p style="margin-bottom:0" { (g.reason) }
                        }
                    }
                    @if !entry.runs.is_empty() {
                        div style="margin-top:10px" { b { "Runs" } (super::runs::table_of_one_flag(&entry.runs)) }
                    } @else {
                        p.muted.small { "No chaos runs for this change (a disable request, no pipeline, or a rejected change)." }
                    }
                    @if !entry.dead_letters.is_empty() { div style="margin-top:10px" { b { "Dead letters" } (dead_letters(&entry.dead_letters)) } }
                }
            }
        }
    }
}

/// `GET /flags`.
pub(crate) async fn index(State(state): State<WebState>) -> Result<Markup, PageError> {
    let flags = state
        .query("flags", index::flags)
        .await
        .map_err(store_error)?;
    let body = html! {
        h1 { "Flags " span.sub { (flags.len()) " seen on the topics" } }
        div data-live="flags" {
            @if flags.is_empty() {
                (layout::empty("No flags yet", html! { "Flags appear when a flag-change or a flag command is on the topics." }))
            } @else {
                table.data {
                    thead { tr { th { "Flag" } th.num { "Changes" } th { "Last command" } th { "Reason" } th { "Last activity" } } }
                    tbody { @for f in &flags { tr {
                        td { a.mono href=(flag_href(&f.project, &f.environment, &f.flag)) { span.muted { (f.project) "/" (f.environment) "/" } (f.flag) } }
                        td.num { (f.changes) }
                        td { @match &f.last_command { Some(c) => (badge(c)), None => span.muted { "none yet" } } }
                        td.muted { (f.last_reason_code.as_deref().unwrap_or_default()) }
                        td { (when(f.last_at)) }
                    } } }
                }
            }
        }
    };
    Ok(layout::page("Flags", Section::Flags, body))
}
