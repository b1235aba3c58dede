//! Ingest problems, `/problems`: every record the view could not decode (bad bytes, an
//! unknown `specversion` or schema version), with its topic/partition/offset and the
//! reason. Ingest skipped each one and went on.
//!
//! The rule that keeps it right: this lists what ingest stored as a problem, newest
//! first; the records themselves stay on Kafka at the offsets shown.

use axum::extract::{RawQuery, State};
use maud::{Markup, html};

use super::position;
use crate::view::query;
use crate::view::web::WebState;
use crate::view::web::api::{problems_cursor, store_error};
use crate::view::web::error::PageError;
use crate::view::web::layout::{self, Section, when};

/// `GET /problems`.
pub(crate) async fn page(
    State(state): State<WebState>,
    RawQuery(q): RawQuery,
) -> Result<Markup, PageError> {
    let cursor = problems_cursor(q.as_deref())?;
    let page = state
        .query("problems", move |c| query::problems(c, cursor.as_deref()))
        .await
        .map_err(store_error)?;
    let problems = page.items;
    let body = html! {
        h1 { "Ingest problems" }
        p.muted { "Records the view could not read. Each was counted, listed here and skipped; ingest went on. They stay on Kafka at the offsets shown (read them with any Kafka client)." }
        div data-live="problems" {
            @if problems.is_empty() {
                (layout::empty("No problems", html! { "Every record on the topics decoded." }))
            } @else {
                table.data {
                    thead { tr { th { "Topic / partition / offset" } th { "Reason" } th { "Seen" } } }
                    tbody { @for p in &problems { tr {
                        td { (position(&p.position)) } td.small { (p.reason) } td { (when(p.at)) }
                    } } }
                }
                @if let Some(next) = &page.next { div.pager { span {} a.button.ghost href={ "/problems?cursor=" (next) } { "Older →" } } }
            }
        }
    };
    Ok(layout::page("Ingest problems", Section::Problems, body))
}
