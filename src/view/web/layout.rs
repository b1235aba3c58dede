//! The frame every page shares (nav bar, stylesheet, script) and the small pieces the
//! pages repeat: status badges, relative + absolute times, durations, the score bar,
//! empty states.
//!
//! The rule that keeps it right: pages never write raw HTML strings; everything goes
//! through `maud`, which escapes every value, so a flag key or a log line can never
//! inject markup.

use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, html};

/// The stylesheet, served at `/static/view.css`.
pub(crate) const CSS: &str = include_str!("static/view.css");
/// The script (live updates, ticking times), served at `/static/view.js`.
pub(crate) const JS: &str = include_str!("static/view.js");

/// Which nav entry is highlighted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Section {
    /// `/`
    Overview,
    /// `/runs` and a run's page.
    Runs,
    /// `/executions/...`, `/pipelines/...`.
    Pipelines,
    /// `/flags/...`.
    Flags,
    /// `/problems`.
    Problems,
}

/// A whole HTML page: `title` in the tab, `body` inside `<main>`.
pub(crate) fn page(title: &str, section: Section, body: Markup) -> Markup {
    let nav = |href: &str, label: &str, this: Section| {
        html! { a href=(href) class=@if section == this { "active" } { (label) } }
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · chaosgate view" }
                link rel="stylesheet" href="/static/view.css";
            }
            body {
                nav.top {
                    a.brand href="/" { "chaos" span { "gate" } " view" }
                    (nav("/", "Overview", Section::Overview))
                    (nav("/runs", "Runs", Section::Runs))
                    (nav("/pipelines", "Pipelines", Section::Pipelines))
                    (nav("/flags", "Flags", Section::Flags))
                    (nav("/problems", "Ingest problems", Section::Problems))
                    span.spacer {}
                    span #live .live { i {} span { "static" } }
                }
                main { (body) }
                footer { "chaosgate view · read-only · " a href="/api/runs" { "JSON API" } " · " a href="/metrics" { "metrics" } }
                script src="/static/view.js" {}
            }
        }
    }
}

/// A status or verdict as a coloured badge (`passed`, `failed`, `error`, `aborted`,
/// `running`, `skipped`, `enable`, `disable`).
pub(crate) fn badge(status: &str) -> Markup {
    html! { span class={ "badge " (status) } { (status) } }
}

/// A time as "5 min ago" (ticking, from `data-at`) with the absolute UTC time beside it
/// and in the tooltip.
pub(crate) fn when(at: DateTime<Utc>) -> Markup {
    let iso = at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    html! {
        span.nowrap title=(iso) {
            span data-at=(iso) { (ago(Utc::now() - at)) }
            " "
            span.muted.small { (at.format("%Y-%m-%d %H:%M:%S")) }
        }
    }
}

/// [`when`] on two lines (relative above, absolute below), for narrow table cells.
pub(crate) fn when_stacked(at: DateTime<Utc>) -> Markup {
    let iso = at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    html! {
        span.nowrap title=(iso) {
            span data-at=(iso) { (ago(Utc::now() - at)) }
            br;
            span.muted.small { (at.format("%Y-%m-%d %H:%M:%S")) }
        }
    }
}

/// An optional time, or a dash.
pub(crate) fn when_opt(at: Option<DateTime<Utc>>) -> Markup {
    match at {
        Some(at) => when(at),
        None => html! { span.muted { "–" } },
    }
}

/// "just now", "42 s ago", "5 min ago", "3 h ago", "2 d ago" (same wording as the script).
pub(crate) fn ago(elapsed: chrono::TimeDelta) -> String {
    let s = elapsed.num_seconds().max(0);
    match s {
        0..5 => "just now".into(),
        5..60 => format!("{s} s ago"),
        60..3600 => format!("{} min ago", s / 60),
        3600..86400 => format!("{} h ago", s / 3600),
        _ => format!("{} d ago", s / 86400),
    }
}

/// A duration in seconds as "850 ms", "12.3 s", "4 min 5 s".
pub(crate) fn seconds(value: f64) -> String {
    if value < 1.0 {
        format!("{:.0} ms", value * 1000.0)
    } else if value < 60.0 {
        format!("{value:.1} s")
    } else {
        let whole = value.round() as u64;
        if whole < 3600 {
            format!("{} min {} s", whole / 60, whole % 60)
        } else {
            format!("{} h {} min", whole / 3600, (whole % 3600) / 60)
        }
    }
}

/// A run's duration; a running run's elapsed time ticks in the browser.
pub(crate) fn duration(
    duration_seconds: Option<f64>,
    running_since: Option<DateTime<Utc>>,
) -> Markup {
    match (duration_seconds, running_since) {
        (Some(d), _) => html! { (seconds(d)) },
        (None, Some(since)) => {
            let iso = since.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            html! { span.muted data-since=(iso) { (seconds((Utc::now() - since).num_milliseconds().max(0) as f64 / 1000.0)) } }
        }
        (None, None) => html! { span.muted { "–" } },
    }
}

/// Score against expected: a small bar with the threshold marked, then "72.5 / 80".
pub(crate) fn score(score: Option<f64>, expected: f64) -> Markup {
    let below = score.is_some_and(|s| s < expected);
    html! {
        span.score {
            span class=@if below { "scorebar below" } @else { "scorebar" } {
                @if let Some(s) = score {
                    span.fill style={ "width:" (format!("{:.1}", s.clamp(0.0, 100.0))) "%" } {}
                }
                span.mark style={ "left:" (format!("{:.1}", expected.clamp(0.0, 100.0))) "%" } title={ "expected " (number(expected)) } {}
            }
            span.mono {
                @match score { Some(s) => (number(s)), None => span.muted { "–" } }
                span.muted { " / " (number(expected)) }
            }
        }
    }
}

/// A score or percentage without trailing zeros: 80, 72.5, 66.67.
pub(crate) fn number(value: f64) -> String {
    let text = format!("{value:.2}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// An empty state: a headline and a hint of what would fill it.
pub(crate) fn empty(headline: &str, hint: Markup) -> Markup {
    html! { div.empty { b { (headline) } (hint) } }
}

/// The first 8 characters of an id, the whole id in the tooltip.
pub(crate) fn short_id(id: &str) -> Markup {
    html! { span.mono title=(id) { (id.get(..8).unwrap_or(id)) } }
}

/// Pretty-printed JSON in a dark block.
pub(crate) fn raw_json(value: &serde_json::Value) -> Markup {
    let text =
        serde_json::to_string_pretty(value).unwrap_or_else(|e| format!("(cannot print: {e})"));
    html! { pre.raw { (text) } }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_durations_read_well() {
        assert_eq!(number(80.0), "80");
        assert_eq!(number(72.5), "72.5");
        assert_eq!(number(66.666), "66.67");
        assert_eq!(seconds(0.25), "250 ms");
        assert_eq!(seconds(12.34), "12.3 s");
        assert_eq!(seconds(245.0), "4 min 5 s");
        assert_eq!(ago(chrono::TimeDelta::seconds(300)), "5 min ago");
    }

    #[test]
    fn values_are_escaped() {
        let page = page("<x>", Section::Runs, html! { (badge("<script>")) });
        assert!(!page.into_string().contains("<script>"));
    }
}
