//! Freeze windows: times (a cron expression and a duration, in a time zone) when a
//! pipeline holds the gated changes of its flags until the window ends.
//!
//! (Skeleton: the cron evaluation is being written.)

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::span::Span;

/// One freeze window of a pipeline (`freeze_windows:`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FreezeWindow {
    /// Name, unique within the pipeline; named in hold records.
    pub name: String,
    /// When the window starts: a 5-field cron expression (minute hour day-of-month month
    /// day-of-week), e.g. `0 18 * * FRI`.
    pub start: String,
    /// How long it lasts from each start.
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
    /// The window's name.
    pub window: String,
    /// When the hold ends: the end of the window and of any window overlapping it.
    pub until: DateTime<Utc>,
    /// One line for the records.
    pub reason: String,
}

/// The hold `windows` put on a change at `at`, if one is active.
pub fn held_at(windows: &[FreezeWindow], at: DateTime<Utc>) -> Option<FreezeHold> {
    let _ = (windows, at);
    None
}
