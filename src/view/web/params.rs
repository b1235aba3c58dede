//! The runs filter as it appears in a URL, shared by the runs page, `/api/runs`, the
//! exports and the live stream, so a filter copied from one works in the others.
//!
//! `?pipeline_id=&pipeline_execution_id=&flag=&status=&experiment_id=&since=&until=&q=
//! &cursor=&sort=&limit=`. `status` may repeat or be comma-separated; `since`/`until`
//! take RFC 3339 (`2026-11-29T17:00:00Z`) or a duration back from now (`15m`, `24h`,
//! `7d`); `flag` is `project/environment/flag` where each part may use `*` globs, or a
//! single glob matched against the flag key alone.
//!
//! The rule that keeps it right: one parser, and every error names the parameter it is
//! about (a 400 from the API says `"parameter": "since"`).

use chrono::{DateTime, Utc};

use super::error::WebError;

/// The statuses a run can have, in display order.
pub const STATUSES: [&str; 5] = ["running", "passed", "failed", "aborted", "error"];

/// How a runs list is ordered (always newest or largest first, ties by run id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SortKey {
    /// By start time (default).
    #[default]
    Started,
    /// By resilience score.
    Score,
    /// By score − expected.
    Margin,
    /// By run time.
    Duration,
}

impl SortKey {
    /// The name in the URL.
    pub fn as_str(self) -> &'static str {
        match self {
            SortKey::Started => "started",
            SortKey::Score => "score",
            SortKey::Margin => "margin",
            SortKey::Duration => "duration",
        }
    }
}

/// A parsed runs filter, before it becomes the store's query.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunParams {
    /// Exact pipeline id.
    pub pipeline_id: Option<String>,
    /// Exact pipeline execution id.
    pub pipeline_execution_id: Option<String>,
    /// `project/environment/flag` globs, or a key glob.
    pub flag: Option<String>,
    /// Any of these statuses (empty: all).
    pub statuses: Vec<String>,
    /// Exact experiment id.
    pub experiment_id: Option<String>,
    /// Runs started at or after.
    pub since: Option<DateTime<Utc>>,
    /// Runs started before.
    pub until: Option<DateTime<Utc>>,
    /// Free text over ids, summary, log and probe errors.
    pub q: Option<String>,
    /// The opaque keyset cursor of the next page.
    pub cursor: Option<String>,
    /// Order.
    pub sort: SortKey,
    /// Page size, 1-1000 (default 50).
    pub limit: usize,
    /// The raw query pairs, for building links that keep the filter.
    pub raw: Vec<(String, String)>,
}

/// Default page size.
pub const PAGE: usize = 50;

impl RunParams {
    /// Parses a query string (without `?`). `format` and `token` are left to others.
    pub fn parse(query: Option<&str>) -> Result<RunParams, WebError> {
        let pairs: Vec<(String, String)> = query
            .map(|q| {
                form_urlencoded::parse(q.as_bytes())
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect()
            })
            .unwrap_or_default();
        let mut params = RunParams { limit: PAGE, ..RunParams::default() };
        for (key, value) in &pairs {
            let value = value.trim();
            if value.is_empty() {
                continue;
            }
            match key.as_str() {
                "pipeline_id" => params.pipeline_id = Some(value.into()),
                "pipeline_execution_id" => params.pipeline_execution_id = Some(value.into()),
                "flag" => params.flag = Some(flag_glob(value)?),
                "status" => {
                    for status in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                        if !STATUSES.contains(&status) {
                            return Err(WebError::bad(
                                "status",
                                format!("'{status}' is not a status; use one of {}", STATUSES.join(", ")),
                            ));
                        }
                        if !params.statuses.iter().any(|s| s == status) {
                            params.statuses.push(status.into());
                        }
                    }
                }
                "experiment_id" => params.experiment_id = Some(value.into()),
                "since" => params.since = Some(time("since", value)?),
                "until" => params.until = Some(time("until", value)?),
                "q" => params.q = Some(value.into()),
                "cursor" => params.cursor = Some(value.into()),
                "sort" => {
                    params.sort = match value {
                        "started" => SortKey::Started,
                        "score" => SortKey::Score,
                        "margin" => SortKey::Margin,
                        "duration" => SortKey::Duration,
                        other => {
                            return Err(WebError::bad(
                                "sort",
                                format!("'{other}' is not a sort key; use started, score, margin or duration"),
                            ));
                        }
                    }
                }
                "limit" => {
                    params.limit = value
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (1..=1000).contains(n))
                        .ok_or_else(|| WebError::bad("limit", format!("'{value}' is not a page size from 1 to 1000")))?;
                }
                "format" | "token" => {}
                other => {
                    return Err(WebError::bad(
                        "query",
                        format!(
                            "unknown parameter '{other}'; the runs filter takes pipeline_id, pipeline_execution_id, flag, status, experiment_id, since, until, q, cursor, sort, limit"
                        ),
                    ));
                }
            }
        }
        if let (Some(since), Some(until)) = (params.since, params.until)
            && since > until
        {
            return Err(WebError::bad("until", "'until' is before 'since'"));
        }
        params.raw = pairs
            .into_iter()
            .filter(|(k, v)| !v.trim().is_empty() && k != "token")
            .collect();
        Ok(params)
    }

    /// This filter as a query string with `changes` applied (a `None` value removes the
    /// key); `cursor` is always dropped unless set by `changes`.
    pub fn link(&self, changes: &[(&str, Option<&str>)]) -> String {
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
        if query.is_empty() { String::new() } else { format!("?{query}") }
    }

    /// The value of one raw parameter, for refilling the filter form.
    pub fn raw_value(&self, key: &str) -> &str {
        self.raw.iter().find(|(k, _)| k == key).map_or("", |(_, v)| v.as_str())
    }
}

/// Checks a flag filter: one glob, or three `/`-separated globs.
fn flag_glob(value: &str) -> Result<String, WebError> {
    let parts = value.split('/').count();
    if parts != 1 && parts != 3 {
        return Err(WebError::bad(
            "flag",
            format!("'{value}' is neither 'project/environment/flag' nor a single flag key glob"),
        ));
    }
    for part in value.split('/') {
        if part.is_empty() {
            return Err(WebError::bad("flag", format!("'{value}' has an empty part")));
        }
        if let Err(error) = globset::Glob::new(part) {
            return Err(WebError::bad("flag", format!("'{part}' is not a glob: {error}")));
        }
    }
    Ok(value.to_string())
}

/// RFC 3339, or a duration back from now.
pub fn time(parameter: &'static str, value: &str) -> Result<DateTime<Utc>, WebError> {
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
            format!("'{value}' is neither an RFC 3339 time (2026-11-29T17:00:00Z) nor a duration back from now (15m, 24h, 7d)"),
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
        assert_eq!(p.pipeline_id.as_deref(), Some("p1"));
        assert_eq!(p.statuses, ["failed", "error"]);
        assert_eq!(p.sort, SortKey::Margin);
        assert!(p.since.is_some_and(|s| s < Utc::now()));
        let link = p.link(&[("sort", Some("score"))]);
        assert!(link.contains("pipeline_id=p1") && link.contains("sort=score") && !link.contains("cursor"), "{link}");
    }

    #[test]
    fn each_error_names_its_parameter() {
        assert_eq!(parameter("status=done"), "status");
        assert_eq!(parameter("since=yesterday"), "since");
        assert_eq!(parameter("until=2026-13-01"), "until");
        assert_eq!(parameter("sort=name"), "sort");
        assert_eq!(parameter("limit=0"), "limit");
        assert_eq!(parameter("flag=a/b"), "flag");
        assert_eq!(parameter("pipeline=x"), "query");
        assert_eq!(parameter("since=2026-11-29T10:00:00Z&until=2026-11-29T09:00:00Z"), "until");
    }
}
