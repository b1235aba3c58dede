//! The runs filter as it appears in a URL, shared by the runs page, `/api/runs`, the
//! exports and the live stream, so a filter copied from one works in the others.
//!
//! `?pipeline_id=&pipeline_execution_id=&flag=&status=&experiment_id=&since=&until=&q=
//! &cursor=&sort=&order=&limit=`. `status` may repeat or be comma-separated; `since`/`until`
//! take RFC 3339 (`2026-11-29T17:00:00Z`) or a duration back from now (`15m`, `24h`,
//! `7d`); `flag` is `project/environment/flag`, each part a glob (`*`, `?`), missing
//! parts matching all (`shop` is `shop/*/*`); `sort` is `start` (default), `score`,
//! `margin` or `duration`, `order` is `desc` (default) or `asc`; `limit` 1-500 (50).
//!
//! The rule that keeps it right: one parser, and every error names the parameter it is
//! about (a 400 from the API says `"parameter": "since"`).

use chrono::{DateTime, Utc};

use super::error::WebError;
use crate::contract::RunStatus;
use crate::view::model::{DEFAULT_PAGE, Direction, MAX_PAGE, RunFilter, RunSort};

/// The statuses a run can have, in display order.
pub(crate) const STATUSES: [&str; 5] = ["running", "passed", "failed", "aborted", "error"];

/// A parsed runs filter: the store's [`RunFilter`] plus the raw pairs, for links that
/// keep the filter.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct RunParams {
    /// What the store is asked.
    pub(crate) filter: RunFilter,
    /// The raw query pairs (empty values and `token` left out).
    pub(crate) raw: Vec<(String, String)>,
}

impl RunParams {
    /// Parses a query string (without `?`). `format` and `token` are left to others.
    pub(crate) fn parse(query: Option<&str>) -> Result<RunParams, WebError> {
        let pairs: Vec<(String, String)> = query
            .map(|q| {
                form_urlencoded::parse(q.as_bytes())
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect()
            })
            .unwrap_or_default();
        let mut filter = RunFilter {
            limit: DEFAULT_PAGE,
            ..RunFilter::default()
        };
        for (key, value) in &pairs {
            let value = value.trim();
            if value.is_empty() {
                continue;
            }
            match key.as_str() {
                "pipeline_id" => filter.pipeline_id = Some(value.into()),
                "pipeline_execution_id" => filter.pipeline_execution_id = Some(value.into()),
                "flag" => filter.flag = Some(flag_glob(value)?),
                "status" => {
                    for status in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                        let parsed = status_of(status).ok_or_else(|| {
                            WebError::bad(
                                "status",
                                format!(
                                    "'{status}' is not a status; use one of {}",
                                    STATUSES.join(", ")
                                ),
                            )
                        })?;
                        if !filter.statuses.contains(&parsed) {
                            filter.statuses.push(parsed);
                        }
                    }
                }
                "experiment_id" => filter.experiment_id = Some(value.into()),
                "since" => filter.since = Some(time("since", value)?),
                "until" => filter.until = Some(time("until", value)?),
                "q" => filter.q = Some(value.into()),
                "cursor" => filter.cursor = Some(value.into()),
                "sort" => {
                    filter.sort = RunSort::parse(value).ok_or_else(|| {
                        WebError::bad(
                            "sort",
                            format!(
                                "'{value}' is not a sort key; use start, score, margin or duration"
                            ),
                        )
                    })?;
                }
                "order" => {
                    filter.direction = match value {
                        "desc" => Direction::Desc,
                        "asc" => Direction::Asc,
                        other => {
                            return Err(WebError::bad(
                                "order",
                                format!("'{other}' is not an order; use desc or asc"),
                            ));
                        }
                    };
                }
                "limit" => {
                    filter.limit = value
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (1..=MAX_PAGE).contains(n))
                        .ok_or_else(|| {
                            WebError::bad(
                                "limit",
                                format!("'{value}' is not a page size from 1 to {MAX_PAGE}"),
                            )
                        })?;
                }
                "format" | "token" => {}
                other => {
                    return Err(WebError::bad(
                        "query",
                        format!(
                            "unknown parameter '{other}'; the runs filter takes pipeline_id, pipeline_execution_id, flag, status, experiment_id, since, until, q, cursor, sort, order, limit, format"
                        ),
                    ));
                }
            }
        }
        if let (Some(since), Some(until)) = (filter.since, filter.until)
            && since > until
        {
            return Err(WebError::bad("until", "'until' is before 'since'"));
        }
        let raw = pairs
            .into_iter()
            .filter(|(k, v)| !v.trim().is_empty() && k != "token")
            .collect();
        Ok(RunParams { filter, raw })
    }

    /// This filter as a query string with `changes` applied (a `None` value removes the
    /// key); `cursor` is always dropped unless set by `changes`.
    pub(crate) fn link(&self, changes: &[(&str, Option<&str>)]) -> String {
        let mut out = form_urlencoded::Serializer::new(String::new());
        for (key, value) in &self.raw {
            if key == "cursor" || changes.iter().any(|(k, _)| k == key) {
                continue;
            }
            out.append_pair(key, value);
        }
        for (key, value) in changes {
            if let Some(value) = value {
                out.append_pair(key, value);
            }
        }
        let query = out.finish();
        if query.is_empty() {
            String::new()
        } else {
            format!("?{query}")
        }
    }

    /// The value of one raw parameter, for refilling the filter form.
    pub(crate) fn raw_value(&self, key: &str) -> &str {
        self.raw
            .iter()
            .find(|(k, _)| k == key)
            .map_or("", |(_, v)| v.as_str())
    }
}

/// A status by its wire name.
pub(crate) fn status_of(name: &str) -> Option<RunStatus> {
    [
        RunStatus::Running,
        RunStatus::Passed,
        RunStatus::Failed,
        RunStatus::Aborted,
        RunStatus::Error,
    ]
    .into_iter()
    .find(|s| s.as_str() == name)
}

/// Checks a flag filter: `project[/environment[/flag]]`, each part a glob.
fn flag_glob(value: &str) -> Result<String, WebError> {
    if value.split('/').count() > 3 {
        return Err(WebError::bad(
            "flag",
            format!("'{value}' has more than three parts; use project/environment/flag"),
        ));
    }
    for part in value.split('/') {
        if part.is_empty() {
            return Err(WebError::bad(
                "flag",
                format!("'{value}' has an empty part"),
            ));
        }
        if let Err(error) = globset::Glob::new(part) {
            return Err(WebError::bad(
                "flag",
                format!("'{part}' is not a glob: {error}"),
            ));
        }
    }
    Ok(value.to_string())
}

/// RFC 3339, or a duration back from now.
pub(crate) fn time(parameter: &'static str, value: &str) -> Result<DateTime<Utc>, WebError> {
    if let Ok(at) = DateTime::parse_from_rfc3339(value) {
        return Ok(at.with_timezone(&Utc));
    }
    match humantime::parse_duration(value) {
        Ok(back) => chrono::TimeDelta::from_std(back)
            .ok()
            .and_then(|back| Utc::now().checked_sub_signed(back))
            .ok_or_else(|| WebError::bad(parameter, format!("'{value}' reaches too far back"))),
        Err(_) => Err(WebError::bad(
            parameter,
            format!(
                "'{value}' is neither an RFC 3339 time (2026-11-29T17:00:00Z) nor a duration back from now (15m, 24h, 7d)"
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parameter(query: &str) -> &'static str {
        match RunParams::parse(Some(query)) {
            Err(WebError::BadParameter { parameter, .. }) => parameter,
            other => panic!("expected a bad parameter for {query}: {other:?}"),
        }
    }

    #[test]
    fn parses_a_full_filter_and_keeps_it_in_links() {
        let p = RunParams::parse(Some("pipeline_id=p1&status=failed,error&status=failed&flag=demo/*/checkout-*&since=24h&sort=margin&cursor=abc")).expect("parse");
        assert_eq!(p.filter.pipeline_id.as_deref(), Some("p1"));
        assert_eq!(p.filter.statuses, [RunStatus::Failed, RunStatus::Error]);
        assert_eq!(p.filter.sort, RunSort::Margin);
        assert!(p.filter.since.is_some_and(|s| s < Utc::now()));
        let link = p.link(&[("sort", Some("score"))]);
        assert!(
            link.contains("pipeline_id=p1")
                && link.contains("sort=score")
                && !link.contains("cursor"),
            "{link}"
        );
    }

    #[test]
    fn each_error_names_its_parameter() {
        assert_eq!(parameter("status=done"), "status");
        assert_eq!(parameter("since=yesterday"), "since");
        assert_eq!(parameter("until=2026-13-01"), "until");
        assert_eq!(parameter("sort=name"), "sort");
        assert_eq!(parameter("limit=0"), "limit");
        assert_eq!(parameter("flag=a/b/c/d"), "flag");
        assert_eq!(parameter("order=up"), "order");
        assert_eq!(parameter("pipeline=x"), "query");
        assert_eq!(
            parameter("since=2026-11-29T10:00:00Z&until=2026-11-29T09:00:00Z"),
            "until"
        );
    }
}
