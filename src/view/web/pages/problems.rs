//! Ingest problems, `/problems`: every record the view could not decode (bad bytes, an
//! unknown `specversion` or schema version), with its topic/partition/offset and the
//! reason. Ingest skipped each one and went on.
//!
//! The rule that keeps it right: this lists what ingest stored as a problem, newest
//! first; the records themselves stay on Kafka at the offsets shown.

use axum::extract::State;
use maud::{Markup, html};

use super::position;
use crate::view::query;
use crate::view::web::WebState;
use crate::view::web::api::store_error;
use crate::view::web::error::PageError;
use crate::view::web::layout::{self, Section, when};

/// `GET /problems`.
pub async fn page(State(state): State<WebState>) -> Result<Markup, PageError> {
    let problems = state.query("problems", |c| query::problems(c, 500)).await.map_err(store_error)?;
    let body = html! {
        h1 { "Ingest problems " span.sub { (problems.len()) " records skipped" } }
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
            }
        }
    };
    Ok(layout::page("Ingest problems", Section::Problems, body))
}
