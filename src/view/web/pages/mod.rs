//! One file per page. Each page handler parses its parameters, asks one or two queries
//! and renders with the pieces in [`super::layout`]; the parts that live updates refresh
//! are marked `data-live` (see `static/view.js`).
//!
//! The rule that keeps it right: pages show the model's values as they are (no second
//! computation of a status or a score), and link every id to its own page.

pub(crate) mod execution;
pub(crate) mod flag;
pub(crate) mod holds;
pub(crate) mod overview;
pub(crate) mod pipeline;
pub(crate) mod problems;
pub(crate) mod run;
pub(crate) mod runs;

use maud::{Markup, html};

use crate::contract::Verdict;
use crate::view::model::{KafkaPosition, RunRow};

/// A verdict's wire name. (`cli::experiment` has the same match as a private
/// `verdict_text`; both belong in `contract` as `Verdict::as_str`, like `RunStatus`'s,
/// left for the contract's owner.)
pub(crate) fn verdict(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Passed => "passed",
        Verdict::Failed => "failed",
        Verdict::Aborted => "aborted",
        Verdict::Error => "error",
        Verdict::Skipped => "skipped",
    }
}

/// `/flags/{project}/{environment}/{flag}` for a run's flag.
pub(crate) fn flag_href(project: &str, environment: &str, flag: &str) -> String {
    format!(
        "/flags/{}/{}/{}",
        segment(project),
        segment(environment),
        segment(flag)
    )
}

/// One path segment, percent-encoded.
pub(crate) fn segment(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// A run's flag as a link to its ledger.
pub(crate) fn flag_link(row: &RunRow) -> Markup {
    html! {
        a.mono href=(flag_href(&row.flag_project, &row.flag_environment, &row.flag_key)) {
            span.muted { (row.flag_project) "/" (row.flag_environment) "/" } (row.flag_key)
        }
    }
}

/// `topic / partition / offset`.
pub(crate) fn position(position: &KafkaPosition) -> Markup {
    html! { span.mono { (position.topic) " / " (position.partition) " / " (position.offset) } }
}
