//! Freeze windows: times (a cron expression and a duration, in a time zone) when a
//! pipeline holds the gated changes of its flags until the window ends.
//!
//! # The rule
//!
//! A window is active at `t` iff some start `s` of its cron expression, read in its time
//! zone, has `s <= t < s + duration`. The duration is absolute time (as Argo CD's sync
//! windows count it): a window spanning a DST change ends one wall-clock hour earlier or
//! later. Starts follow croner's DST rules (OCPS / Vixie cron): a start inside a
//! spring-forward gap happens right after the gap (a freeze is never silently skipped), a
//! fixed start inside the fall-back hour happens once.
//!
//! A change held at `t` waits until the end of the union of the windows active at `t`
//! and every window of the pipeline overlapping or chaining them (one starting at or
//! before the end so far). That search is bounded ([`MAX_LINKS`] starts, [`MAX_SPAN_DAYS`]
//! days): a union still going at the bound ends the hold there, and the worker evaluates
//! the windows again when it resumes. [`check`] refuses windows that would always be
//! active, so the bound is reached only by windows chained for a very long time.

use std::collections::HashMap;
use std::str::FromStr;

use chrono::{DateTime, SecondsFormat, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::problem::{FieldPath, Finding};
use super::span::Span;

/// At most this many starts are chained into one hold (see the module doc).
pub const MAX_LINKS: usize = 10_000;

/// A hold ends at most this many days after it began (see the module doc).
pub const MAX_SPAN_DAYS: i64 = 366;

/// One freeze window of a pipeline (`freeze_windows:`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FreezeWindow {
    /// Name, unique within the pipeline; named in hold records.
    pub name: String,
    /// When the window starts: a 5-field cron expression (minute hour day-of-month month
    /// day-of-week, 0 or 7 = Sunday, names like `FRI` and `JAN` allowed), e.g.
    /// `0 18 * * FRI`.
    pub start: String,
    /// How long it lasts from each start (absolute time, so a window across a DST change
    /// ends one wall-clock hour off).
    pub duration: Span,
    /// IANA time zone the cron expression is read in (default `UTC`).
    #[serde(default = "default_time_zone")]
    pub time_zone: String,
    /// Why, for the records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

fn default_time_zone() -> String {
    "UTC".into()
}

/// A change held by a freeze window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FreezeHold {
    /// The window's name (the first window of the list active at the time asked).
    pub window: String,
    /// When the hold ends: the end of the window and of any window overlapping it.
    pub until: DateTime<Utc>,
    /// One line for the records, e.g. `held by freeze window "weekend" (every Friday at
    /// 18:00 Europe/Berlin, for 63h: no flag changes over the weekend) until
    /// 2026-11-30T08:00:00Z`.
    pub reason: String,
}

/// The hold `windows` put on a change at `at`, if one is active.
///
/// Windows that do not parse (which `chaosgate validate` refuses, see [`check`]) hold
/// nothing.
pub fn held_at(windows: &[FreezeWindow], at: DateTime<Utc>) -> Option<FreezeHold> {
    let schedules: Vec<(&FreezeWindow, Schedule)> = windows
        .iter()
        .filter_map(|w| Schedule::of(w).ok().map(|s| (w, s)))
        .collect();
    let first = schedules
        .iter()
        .find(|(_, s)| s.active_start(at).is_some())?;
    let list: Vec<&Schedule> = schedules.iter().map(|(_, s)| s).collect();
    let union = union_end(&list, at);
    let (until, others) = (union.end, union.taking_part);
    let (window, schedule) = first;
    let chained: Vec<&str> = others
        .iter()
        .map(|&i| schedules[i].0.name.as_str())
        .filter(|name| *name != window.name)
        .collect();
    let with = match chained.as_slice() {
        [] => String::new(),
        names => format!(
            " and the window{} overlapping it ({})",
            if names.len() == 1 { "" } else { "s" },
            names
                .iter()
                .map(|n| format!("\"{n}\""))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let why = window
        .reason
        .as_deref()
        .map(|r| format!(": {r}"))
        .unwrap_or_default();
    Some(FreezeHold {
        window: window.name.clone(),
        until,
        reason: format!(
            "held by freeze window \"{}\" ({}{why}){with} until {}",
            window.name,
            schedule.describe(window),
            until.to_rfc3339_opts(SecondsFormat::Secs, true)
        ),
    })
}

/// Every rule `windows` (a pipeline's `freeze_windows`) breaks, each at its field: the
/// start is a 5-field cron expression that has starts, the time zone an IANA name, the
/// duration above 0s, names are unique, and no window (nor all of them together) is
/// always active.
pub(crate) fn check(windows: &[FreezeWindow]) -> Vec<Finding> {
    let mut out = Vec::new();
    let list = FieldPath::root().key("freeze_windows");
    let mut first: HashMap<&str, usize> = HashMap::new();
    let mut schedules = Vec::new();
    for (i, window) in windows.iter().enumerate() {
        let at = list.index(i);
        if let Some(earlier) = first.get(window.name.as_str()) {
            out.push(Finding::new(
                at.key("name"),
                format!(
                    "duplicate freeze window name '{}' (also {})",
                    window.name,
                    list.index(*earlier)
                ),
            ));
        } else {
            first.insert(&window.name, i);
        }
        let cron = parse_start(&window.start);
        if let Err(message) = &cron {
            out.push(Finding::new(at.key("start"), message.clone()));
        }
        let zone = parse_time_zone(&window.time_zone);
        if let Err(message) = &zone {
            out.push(Finding::new(at.key("time_zone"), message.clone()));
        }
        if window.duration.duration().is_zero() {
            out.push(Finding::new(
                at.key("duration"),
                "a freeze window's duration must be above 0s",
            ));
            continue;
        }
        let (Ok(cron), Ok(zone)) = (cron, zone) else {
            continue;
        };
        let Some(schedule) = Schedule::new(cron, zone, window.duration) else {
            out.push(Finding::new(
                at.key("duration"),
                format!("{} is too long for a freeze window", window.duration),
            ));
            continue;
        };
        let Some(start) = schedule.next_start_after(reference_time()) else {
            out.push(Finding::new(
                at.key("start"),
                format!(
                    "'{}' never starts (no such date in the coming years)",
                    window.start
                ),
            ));
            continue;
        };
        if always_active(&[&schedule], start) {
            out.push(Finding::new(
                at.key("start"),
                format!(
                    "'{}' with duration {} is always active (each start comes before the \
                     last one's window ends): it would hold every gated change forever",
                    window.start, window.duration
                ),
            ));
            continue;
        }
        schedules.push((start, schedule));
    }
    if schedules.len() > 1 && schedules.len() == windows.len() {
        let list_refs: Vec<&Schedule> = schedules.iter().map(|(_, s)| s).collect();
        let earliest = schedules.iter().map(|(s, _)| *s).min();
        if earliest.is_some_and(|start| always_active(&list_refs, start)) {
            out.push(Finding::new(
                list,
                "together these windows are always active (each starts before the others \
                 end): they would hold every gated change forever",
            ));
        }
    }
    out
}

/// `start` as a 5-field cron expression, or why it is not one.
fn parse_start(start: &str) -> Result<Cron, String> {
    let fields = start.split_whitespace().count();
    if fields != 5 {
        return Err(format!(
            "'{start}' has {fields} field{}, a freeze window's start has 5 (minute hour \
             day-of-month month day-of-week, e.g. '0 18 * * FRI')",
            if fields == 1 { "" } else { "s" }
        ));
    }
    CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .build()
        .parse(start)
        .map_err(|e| format!("'{start}' is not a cron expression: {e}"))
}

/// `name` as an IANA time zone, or why it is not one.
fn parse_time_zone(name: &str) -> Result<Tz, String> {
    Tz::from_str(name).map_err(|_| {
        format!("unknown time zone '{name}' (write an IANA name such as Europe/Berlin or UTC)")
    })
}

/// Where [`check`] starts looking for "always active": a fixed time, so `validate` gives
/// the same answer on every run.
fn reference_time() -> DateTime<Utc> {
    DateTime::from_timestamp(1_767_225_600, 0).unwrap_or_default() // 2026-01-01T00:00:00Z
}

/// Whether the union of `schedules` starting at `start` goes on past the bound.
fn always_active(schedules: &[&Schedule], start: DateTime<Utc>) -> bool {
    union_end(schedules, start).bounded
}

/// The end of a union of windows (see [`union_end`]).
struct UnionEnd {
    /// When the last window of the union ends, or the bound.
    end: DateTime<Utc>,
    /// Indices of the windows that took part.
    taking_part: Vec<usize>,
    /// Whether the search stopped at a bound rather than at a break.
    bounded: bool,
}

/// The end of the union of the windows active at `at` and those chaining them. At most
/// [`MAX_LINKS`] steps and [`MAX_SPAN_DAYS`] days.
fn union_end(schedules: &[&Schedule], at: DateTime<Utc>) -> UnionEnd {
    let limit = at + chrono::Duration::days(MAX_SPAN_DAYS);
    let mut end = at;
    let mut taking_part = Vec::new();
    // The first pass asks who is active at `at`; the next ones who covers the end so
    // far (a window starting exactly at it chains, since it is active there).
    for _ in 0..MAX_LINKS {
        let mut next = end;
        for (i, schedule) in schedules.iter().enumerate() {
            if let Some(start) = schedule.active_start(end) {
                next = next.max(start + schedule.duration);
                if !taking_part.contains(&i) {
                    taking_part.push(i);
                }
            }
        }
        if next == end {
            return UnionEnd {
                end,
                taking_part,
                bounded: false,
            };
        }
        end = next;
        if end >= limit {
            return UnionEnd {
                end: limit,
                taking_part,
                bounded: true,
            };
        }
    }
    UnionEnd {
        end,
        taking_part,
        bounded: true,
    }
}

/// A window ready to evaluate: its cron, its time zone, its duration.
struct Schedule {
    cron: Cron,
    zone: Tz,
    duration: chrono::Duration,
}

impl Schedule {
    fn of(window: &FreezeWindow) -> Result<Self, String> {
        let cron = parse_start(&window.start)?;
        let zone = parse_time_zone(&window.time_zone)?;
        if window.duration.duration().is_zero() {
            return Err("zero duration".into());
        }
        Schedule::new(cron, zone, window.duration).ok_or_else(|| "too long".into())
    }

    fn new(cron: Cron, zone: Tz, duration: Span) -> Option<Self> {
        let duration = chrono::Duration::from_std(duration.duration()).ok()?;
        // Far beyond any sensible window; keeps the time arithmetic in range.
        (duration <= chrono::Duration::days(100 * 366)).then_some(Schedule {
            cron,
            zone,
            duration,
        })
    }

    /// The latest start `s <= t` whose window covers `t` (`t < s + duration`).
    fn active_start(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = t.with_timezone(&self.zone);
        let start = self
            .cron
            .find_previous_occurrence(&local, true)
            .ok()?
            .with_timezone(&Utc);
        (start <= t && t < start + self.duration).then_some(start)
    }

    /// The first start after `t`.
    fn next_start_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = t.with_timezone(&self.zone);
        self.cron
            .find_next_occurrence(&local, false)
            .ok()
            .map(|s| s.with_timezone(&Utc))
    }

    /// `every Friday at 18:00 Europe/Berlin, for 63h` (cron text when the pattern is not
    /// one of the common shapes).
    fn describe(&self, window: &FreezeWindow) -> String {
        let when =
            plain_words(&window.start).unwrap_or_else(|| format!("cron '{}'", window.start.trim()));
        format!("{when} {}, for {}", self.zone.name(), window.duration)
    }
}

/// Common cron shapes in words: a fixed time on every day, one weekday, a weekday range
/// or list, or one day of the month. `None` for anything else.
fn plain_words(start: &str) -> Option<String> {
    let fields: Vec<&str> = start.split_whitespace().collect();
    let [minute, hour, dom, month, dow] = fields.as_slice() else {
        return None;
    };
    let minute: u32 = minute.parse().ok().filter(|m| *m < 60)?;
    let hour: u32 = hour.parse().ok().filter(|h| *h < 24)?;
    let time = format!("{hour:02}:{minute:02}");
    if *month != "*" {
        return None;
    }
    match (*dom, *dow) {
        ("*", "*") => Some(format!("every day at {time}")),
        ("*", days) => {
            let words = weekdays(days)?;
            Some(format!("{words} at {time}"))
        }
        (day, "*") => {
            let day: u32 = day.parse().ok().filter(|d| (1..=31).contains(d))?;
            Some(format!("on day {day} of every month at {time}"))
        }
        _ => None,
    }
}

/// `FRI` → `every Friday`, `MON-FRI` → `Monday to Friday`, `SAT,SUN` → `Saturday and
/// Sunday`.
fn weekdays(field: &str) -> Option<String> {
    if let Some((a, b)) = field.split_once('-') {
        return Some(format!("{} to {}", weekday(a)?, weekday(b)?));
    }
    let days: Vec<&str> = field.split(',').map(weekday).collect::<Option<Vec<_>>>()?;
    match days.as_slice() {
        [one] => Some(format!("every {one}")),
        [init @ .., last] => Some(format!("{} and {last}", init.join(", "))),
        [] => None,
    }
}

fn weekday(text: &str) -> Option<&'static str> {
    const NAMES: [(&str, &str); 7] = [
        ("SUN", "Sunday"),
        ("MON", "Monday"),
        ("TUE", "Tuesday"),
        ("WED", "Wednesday"),
        ("THU", "Thursday"),
        ("FRI", "Friday"),
        ("SAT", "Saturday"),
    ];
    let upper = text.to_ascii_uppercase();
    if let Ok(n) = upper.parse::<usize>() {
        return NAMES.get(n % 7).filter(|_| n <= 7).map(|(_, name)| *name);
    }
    NAMES
        .iter()
        .find(|(short, _)| *short == upper)
        .map(|(_, name)| *name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn window(name: &str, start: &str, duration: &str, time_zone: &str) -> FreezeWindow {
        FreezeWindow {
            name: name.into(),
            start: start.into(),
            duration: duration.parse().unwrap(),
            time_zone: time_zone.into(),
            reason: None,
        }
    }

    fn until(windows: &[FreezeWindow], at: &str) -> Option<String> {
        held_at(windows, utc(at)).map(|h| h.until.to_rfc3339_opts(SecondsFormat::Secs, true))
    }

    fn messages(windows: &[FreezeWindow]) -> Vec<String> {
        check(windows)
            .iter()
            .map(|f| format!("{}: {}", f.path, f.message))
            .collect()
    }

    #[test]
    fn a_weekend_window_holds_from_friday_evening_to_monday_morning_in_its_zone() {
        let mut weekend = window("weekend", "0 18 * * FRI", "63h", "Europe/Berlin");
        weekend.reason = Some("no flag changes over the weekend".into());
        let windows = [weekend];
        // Fri 2026-11-27 18:00 CET = 17:00Z; + 63h = Mon 2026-11-30 08:00Z.
        let hold = held_at(&windows, utc("2026-11-28T10:00:00Z")).unwrap();
        assert_eq!(hold.window, "weekend");
        assert_eq!(hold.until, utc("2026-11-30T08:00:00Z"));
        assert_eq!(
            hold.reason,
            "held by freeze window \"weekend\" (every Friday at 18:00 Europe/Berlin, for 63h: \
             no flag changes over the weekend) until 2026-11-30T08:00:00Z"
        );
        // The start is inside, the end is not.
        assert!(until(&windows, "2026-11-27T17:00:00Z").is_some());
        assert_eq!(until(&windows, "2026-11-27T16:59:59Z"), None);
        assert!(until(&windows, "2026-11-30T07:59:59Z").is_some());
        assert_eq!(until(&windows, "2026-11-30T08:00:00Z"), None);
        assert_eq!(until(&windows, "2026-12-02T12:00:00Z"), None);
    }

    #[test]
    fn the_time_zone_defaults_to_utc() {
        let w: FreezeWindow =
            serde_json::from_str(r#"{"name": "n", "start": "0 22 * * *", "duration": "2h"}"#)
                .unwrap();
        assert_eq!(w.time_zone, "UTC");
        let windows = [w];
        assert_eq!(
            until(&windows, "2026-11-30T23:30:00Z").as_deref(),
            Some("2026-12-01T00:00:00Z")
        );
        assert_eq!(until(&windows, "2026-11-30T21:59:00Z"), None);
        assert!(
            held_at(&windows, utc("2026-11-30T22:00:00Z"))
                .unwrap()
                .reason
                .contains("(every day at 22:00 UTC, for 2h)")
        );
    }

    #[test]
    fn a_start_in_the_spring_forward_gap_happens_right_after_it() {
        // Berlin 2026-03-29: 02:00 CET jumps to 03:00 CEST, so 02:30 does not exist.
        let windows = [window("night", "30 2 * * *", "1h", "Europe/Berlin")];
        // The day before: 02:30 CET = 01:30Z.
        assert_eq!(
            until(&windows, "2026-03-28T01:45:00Z").as_deref(),
            Some("2026-03-28T02:30:00Z")
        );
        // The gap day: starts at 03:00 CEST = 01:00Z, ends 02:00Z.
        assert_eq!(until(&windows, "2026-03-29T00:59:00Z"), None);
        assert_eq!(
            until(&windows, "2026-03-29T01:10:00Z").as_deref(),
            Some("2026-03-29T02:00:00Z")
        );
        // The day after: 02:30 CEST = 00:30Z.
        assert_eq!(
            until(&windows, "2026-03-30T00:45:00Z").as_deref(),
            Some("2026-03-30T01:30:00Z")
        );
    }

    #[test]
    fn a_start_in_the_fall_back_hour_happens_once() {
        // Berlin 2026-10-25: 03:00 CEST goes back to 02:00 CET; 02:30 happens twice on the
        // wall clock (00:30Z and 01:30Z). The window starts at the first one only.
        let windows = [window("night", "30 2 * * *", "30m", "Europe/Berlin")];
        assert_eq!(
            until(&windows, "2026-10-25T00:40:00Z").as_deref(),
            Some("2026-10-25T01:00:00Z")
        );
        assert_eq!(until(&windows, "2026-10-25T01:40:00Z"), None);
        // Absolute duration: a window across the change ends an hour earlier on the
        // wall clock (Sat 22:00 CEST + 10h = Sun 07:00 CET).
        let across = [window("over", "0 22 * * SAT", "10h", "Europe/Berlin")];
        assert_eq!(
            until(&across, "2026-10-25T03:00:00Z").as_deref(),
            Some("2026-10-25T06:00:00Z")
        );
        // Daily for 24h is always active in UTC, but the fall-back night has 25 hours in
        // Berlin: 00:00 CEST + 24h = 23:00 CET, an hour before the next start.
        let daily = [window("daily", "0 0 * * *", "24h", "Europe/Berlin")];
        assert!(messages(&daily).is_empty(), "{:?}", messages(&daily));
        assert_eq!(until(&daily, "2026-10-25T22:30:00Z"), None);
        assert_eq!(
            until(&daily, "2026-10-25T21:00:00Z").as_deref(),
            Some("2026-10-25T22:00:00Z")
        );
    }

    #[test]
    fn overlapping_and_chained_windows_hold_until_the_last_one_ends() {
        let windows = [
            window("evening", "0 18 * * *", "4h", "UTC"),
            window("late", "0 21 * * *", "2h", "UTC"),
            // Starts exactly when "late" ends: it chains.
            window("night", "0 23 * * *", "1h", "UTC"),
            window("unrelated", "0 12 * * *", "1h", "UTC"),
        ];
        let hold = held_at(&windows, utc("2026-11-30T19:00:00Z")).unwrap();
        assert_eq!(hold.window, "evening");
        assert_eq!(hold.until, utc("2026-12-01T00:00:00Z"));
        assert!(
            hold.reason.ends_with(
                "and the windows overlapping it (\"late\", \"night\") until 2026-12-01T00:00:00Z"
            ),
            "{}",
            hold.reason
        );
        // Inside only "late": still chained to "night".
        assert_eq!(
            until(&windows, "2026-11-30T22:30:00Z").as_deref(),
            Some("2026-12-01T00:00:00Z")
        );
        assert_eq!(
            until(&windows, "2026-11-30T12:30:00Z").as_deref(),
            Some("2026-11-30T13:00:00Z")
        );
        assert_eq!(until(&windows, "2026-11-30T17:59:00Z"), None);
    }

    #[test]
    fn a_duration_longer_than_the_period_holds_until_the_starts_stop_overlapping() {
        // Every weekday at 09:00 for 30h: Monday's window still runs when Tuesday's
        // starts, ..., Friday's ends Saturday 15:00.
        let windows = [window("week", "0 9 * * MON-FRI", "30h", "UTC")];
        // Mon 2026-11-30 10:00.
        assert_eq!(
            until(&windows, "2026-11-30T10:00:00Z").as_deref(),
            Some("2026-12-05T15:00:00Z")
        );
        // Saturday 14:00 (only Friday's start covers it).
        assert_eq!(
            until(&windows, "2026-12-05T14:00:00Z").as_deref(),
            Some("2026-12-05T15:00:00Z")
        );
        assert_eq!(until(&windows, "2026-12-06T10:00:00Z"), None);
        // Hourly for 90 minutes, but only 01:00 to 05:00: ends 06:30.
        let hourly = [window("h", "0 1-5 * * *", "90m", "UTC")];
        assert_eq!(
            until(&hourly, "2026-11-30T01:10:00Z").as_deref(),
            Some("2026-11-30T06:30:00Z")
        );
    }

    #[test]
    fn validation_names_the_field_of_each_problem() {
        let windows = [
            window("a", "0 18 * * FRY", "1h", "UTC"),
            window("b", "0 18 * *", "1h", "UTC"),
            window("a", "0 18 * * FRI", "1h", "Europe/Berln"),
            window("d", "0 18 * * FRI", "0s", "UTC"),
            window("e", "*/5 * * * *", "5m", "UTC"),
            window("f", "0 0 * * *", "24h", "UTC"),
            window("g", "0 0 30 2 *", "1h", "UTC"),
            window("h", "0 18 * * FRI *", "1h", "UTC"),
        ];
        let found = messages(&windows);
        assert!(
            found[0]
                .starts_with("freeze_windows[0].start: '0 18 * * FRY' is not a cron expression: "),
            "{found:#?}"
        );
        assert_eq!(
            &found[1..],
            [
                "freeze_windows[1].start: '0 18 * *' has 4 fields, a freeze window's start has 5 (minute hour day-of-month month day-of-week, e.g. '0 18 * * FRI')",
                "freeze_windows[2].name: duplicate freeze window name 'a' (also freeze_windows[0])",
                "freeze_windows[2].time_zone: unknown time zone 'Europe/Berln' (write an IANA name such as Europe/Berlin or UTC)",
                "freeze_windows[3].duration: a freeze window's duration must be above 0s",
                "freeze_windows[4].start: '*/5 * * * *' with duration 5m is always active (each start comes before the last one's window ends): it would hold every gated change forever",
                "freeze_windows[5].start: '0 0 * * *' with duration 24h is always active (each start comes before the last one's window ends): it would hold every gated change forever",
                "freeze_windows[6].start: '0 0 30 2 *' never starts (no such date in the coming years)",
                "freeze_windows[7].start: '0 18 * * FRI *' has 6 fields, a freeze window's start has 5 (minute hour day-of-month month day-of-week, e.g. '0 18 * * FRI')",
            ]
        );
        // Just under always: a minute's break every day is a break.
        assert!(messages(&[window("x", "0 0 * * *", "23h59m", "UTC")]).is_empty());
    }

    #[test]
    fn windows_always_active_together_are_refused() {
        let windows = [
            window("day", "0 8 * * *", "12h", "UTC"),
            window("night", "0 20 * * *", "12h", "UTC"),
        ];
        assert_eq!(
            messages(&windows),
            [
                "freeze_windows: together these windows are always active (each starts before the others end): they would hold every gated change forever"
            ]
        );
    }

    #[test]
    fn common_cron_shapes_read_as_words() {
        assert_eq!(
            plain_words("0 18 * * FRI").as_deref(),
            Some("every Friday at 18:00")
        );
        assert_eq!(
            plain_words("30 7 * * 1-5").as_deref(),
            Some("Monday to Friday at 07:30")
        );
        assert_eq!(
            plain_words("0 0 * * sat,sun").as_deref(),
            Some("Saturday and Sunday at 00:00")
        );
        assert_eq!(
            plain_words("0 0 * * 7").as_deref(),
            Some("every Sunday at 00:00")
        );
        assert_eq!(
            plain_words("0 6 1 * *").as_deref(),
            Some("on day 1 of every month at 06:00")
        );
        assert_eq!(plain_words("*/5 * * * *"), None);
        let windows = [window("x", "*/30 9-17 * * *", "10m", "UTC")];
        assert!(
            held_at(&windows, utc("2026-11-30T09:35:00Z"))
                .unwrap()
                .reason
                .contains("(cron '*/30 9-17 * * *' UTC, for 10m)")
        );
    }
}
