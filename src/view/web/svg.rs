//! Charts drawn on the server as inline SVG: a run's fault timeline and a step's trend
//! of score − expected. No script and no chart library; the browser only displays them.
//!
//! The rule that keeps it right: every coordinate comes from a plain scale function
//! with its domain clamped, so an empty series or a zero-length run draws an empty
//! chart instead of NaN, and every label goes through `maud`, which escapes it.

use chrono::{DateTime, Utc};
use maud::{Markup, html};

/// One bar of the fault timeline.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FaultSpan {
    /// Fault name.
    pub(crate) name: String,
    /// When it was injected (none: never injected).
    pub(crate) started_at: Option<DateTime<Utc>>,
    /// When it was reverted (none: still active, or the revert failed).
    pub(crate) ended_at: Option<DateTime<Utc>>,
    /// Whether the revert was confirmed.
    pub(crate) reverted: bool,
}

/// One probe's checking window on the timeline.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ProbeSpan {
    /// Probe name.
    pub(crate) name: String,
    /// When its first check started.
    pub(crate) first_check_at: DateTime<Utc>,
    /// When its last check ended.
    pub(crate) last_check_at: DateTime<Utc>,
    /// Whether it passed.
    pub(crate) passed: bool,
}

const WIDTH: f64 = 640.0;
const LABEL: f64 = 150.0;
const ROW: f64 = 24.0;

/// The faults of one run (thick bars: inject to revert) and its probes' checking windows
/// (thin bars, green passed, red failed) on a time axis from `from` to `to` (a running
/// run: now).
pub(crate) fn timeline(
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    faults: &[FaultSpan],
    probes: &[ProbeSpan],
) -> Markup {
    let total = ((to - from).num_milliseconds() as f64 / 1000.0).max(0.001);
    let x = |at: DateTime<Utc>| {
        let s = (at - from).num_milliseconds() as f64 / 1000.0;
        LABEL + (s / total).clamp(0.0, 1.0) * (WIDTH - LABEL - 10.0)
    };
    let height = ROW * (faults.len() + probes.len()) as f64 + 28.0;
    html! {
        svg.timeline width=(WIDTH) height=(height) viewBox={ "0 0 " (WIDTH) " " (height) } role="img" aria-label="fault timeline" {
            line x1=(LABEL) x2=(WIDTH - 10.0) y1=(height - 20.0) y2=(height - 20.0) stroke="#cfd5de" {}
            text x=(LABEL) y=(height - 6.0) { "0 s" }
            text x=(WIDTH - 10.0) y=(height - 6.0) text-anchor="end" { (format!("{total:.1} s")) }
            @for (i, fault) in faults.iter().enumerate() {
                @let y = ROW * i as f64 + 4.0;
                text x="0" y=(y + 13.0) { (fault.name) }
                @match fault.started_at {
                    Some(start) => {
                        @let x1 = x(start);
                        @let x2 = x(fault.ended_at.unwrap_or(to)).max(x1 + 3.0);
                        @let colour = if fault.reverted { "#e2674a" } else { "#c8322c" };
                        rect x=(x1) y=(y) width=(x2 - x1) height="16" rx="3" fill=(colour) opacity="0.85" {
                            title { (fault.name) ": injected " (start.format("%H:%M:%S%.3f"))
                                @if let Some(end) = fault.ended_at { ", reverted " (end.format("%H:%M:%S%.3f")) }
                                @else { ", not reverted" } }
                        }
                        @if !fault.reverted {
                            text x=(x2 + 4.0) y=(y + 13.0) fill="#c8322c" { "not reverted" }
                        }
                    }
                    None => { text x=(LABEL) y=(y + 13.0) { "never injected" } }
                }
            }
            @for (i, probe) in probes.iter().enumerate() {
                @let y = ROW * (faults.len() + i) as f64 + 4.0;
                @let x1 = x(probe.first_check_at);
                @let x2 = x(probe.last_check_at).max(x1 + 3.0);
                text x="0" y=(y + 13.0) fill="#667085" { "probe " (probe.name) }
                rect x=(x1) y=(y + 5.0) width=(x2 - x1) height="6" rx="3" fill=(if probe.passed { "#1f9254" } else { "#c8322c" }) {
                    title { (probe.name) ": checked " (probe.first_check_at.format("%H:%M:%S%.3f")) " – " (probe.last_check_at.format("%H:%M:%S%.3f")) }
                }
            }
        }
    }
}

/// One point of a step's trend: an execution's margin (score − expected).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TrendPoint {
    /// When the run started.
    pub(crate) at: DateTime<Utc>,
    /// Score − expected (negative: below the threshold).
    pub(crate) margin: f64,
    /// Where the point links (the run's page).
    pub(crate) href: String,
}

/// Score − expected across executions, oldest left; the zero line is the threshold.
pub(crate) fn trend(points: &[TrendPoint]) -> Markup {
    const W: f64 = 560.0;
    const H: f64 = 130.0;
    const PAD: f64 = 30.0;
    let top = points.iter().map(|p| p.margin).fold(10.0_f64, f64::max);
    let bottom = points.iter().map(|p| p.margin).fold(-10.0_f64, f64::min);
    let y = |m: f64| PAD / 2.0 + (top - m) / (top - bottom) * (H - PAD);
    let step = if points.len() > 1 {
        (W - PAD - 10.0) / (points.len() - 1) as f64
    } else {
        0.0
    };
    let x = |i: usize| PAD + step * i as f64;
    let path: Vec<String> = points
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{:.1},{:.1}", x(i), y(p.margin)))
        .collect();
    html! {
        svg.trend width=(W) height=(H) viewBox={ "0 0 " (W) " " (H) } role="img" aria-label="score minus expected" {
            line x1=(PAD) x2=(W - 10.0) y1=(y(0.0)) y2=(y(0.0)) stroke="#1d2330" stroke-dasharray="4 3" {}
            text x="2" y=(y(0.0) + 4.0) { "0" }
            text x=(W - 10.0) y=(y(0.0) - 4.0) text-anchor="end" { "expected" }
            @if y(0.0) - y(top) >= 12.0 { text x="2" y=(y(top) + 4.0) { (format!("+{top:.0}")) } }
            @if y(bottom) - y(0.0) >= 12.0 { text x="2" y=(y(bottom) + 4.0) { (format!("{bottom:.0}")) } }
            @if points.len() > 1 {
                polyline points=(path.join(" ")) fill="none" stroke="#3b6fd8" stroke-width="1.5" {}
            }
            @for (i, p) in points.iter().enumerate() {
                a href=(p.href) {
                    circle cx=(x(i)) cy=(y(p.margin)) r="4" fill=(if p.margin >= 0.0 { "#1f9254" } else { "#c8322c" }) {
                        title { (p.at.format("%Y-%m-%d %H:%M")) ": " (format!("{:+.1}", p.margin)) }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_trend_and_a_zero_length_run_draw_without_nan() {
        assert!(!trend(&[]).into_string().contains("NaN"));
        let at = Utc::now();
        let fault = FaultSpan {
            name: "<lag>".into(),
            started_at: Some(at),
            ended_at: Some(at),
            reverted: false,
        };
        let probe = ProbeSpan {
            name: "p".into(),
            first_check_at: at,
            last_check_at: at,
            passed: true,
        };
        let svg = timeline(at, at, &[fault], &[probe]).into_string();
        assert!(!svg.contains("NaN"));
        assert!(svg.contains("&lt;lag&gt;"), "{svg}");
        assert!(svg.contains("not reverted"));
    }
}
