//! Prometheus probes: an instant PromQL query through the HTTP API
//! (`GET {endpoint}/api/v1/query?query=...`) whose single result is compared with a
//! threshold.
//!
//! The query must return exactly one sample: a vector of one series or a scalar. Anything
//! else (no series, several series, a matrix, an error from Prometheus) fails the attempt
//! with a text that names the query and what came back. At most [`ANSWER_LIMIT`] bytes
//! of an answer are read; a longer one fails the attempt, naming the endpoint and limit.

use std::time::Duration;

use reqwest::Url;
use serde::Deserialize;
use serde_json::Value;

use super::compare::{CompareFailure, compare, shorten};
use super::http::{Redirects, client, read_body, shown_url, turn};
use crate::catalog::experiment::PrometheusProbe;

/// The most bytes of a Prometheus answer read: an instant query of one sample answers
/// in well under a kilobyte, so an answer this large is a query that matched far too
/// many series (or not Prometheus), and reading on would only cost memory.
pub(crate) const ANSWER_LIMIT: usize = 1024 * 1024;

/// Why a Prometheus probe attempt failed, e.g.
/// "query 'up{job=\"api\"}' at http://127.0.0.1:9090: returned 0 samples, expected exactly 1".
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("query '{query}' at {endpoint}: {reason}")]
pub(crate) struct PrometheusFailure {
    /// The PromQL query.
    pub(crate) query: String,
    /// The Prometheus base URL, with any password masked.
    pub(crate) endpoint: String,
    /// What went wrong.
    pub(crate) reason: PrometheusReason,
}

/// What went wrong with a Prometheus probe attempt.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub(crate) enum PrometheusReason {
    /// The shared HTTP client could not be built.
    #[error("{0}")]
    Client(String),
    /// The endpoint does not make a valid URL.
    #[error("not a valid endpoint URL: {0}")]
    Url(String),
    /// No answer: connection refused, reset, ...
    #[error("{0}")]
    Send(String),
    /// The answer could not be read to the end.
    #[error("reading the answer: {0}")]
    Body(String),
    /// The answer is longer than [`ANSWER_LIMIT`] (given here); the rest was not read.
    #[error(
        "the answer is over the {0}-byte limit (not read further): the query matches too \
         many series, or this is not Prometheus"
    )]
    TooLarge(usize),
    /// The answer is not the Prometheus API's JSON.
    #[error("HTTP {status}, not a Prometheus API answer: {body}")]
    NotPrometheus {
        /// The HTTP status.
        status: u16,
        /// The start of the body.
        body: String,
    },
    /// Prometheus refused or failed the query.
    #[error("Prometheus answered {error_type}: {error}")]
    Refused {
        /// Prometheus's `errorType`, e.g. `bad_data`.
        error_type: String,
        /// Prometheus's `error` text.
        error: String,
    },
    /// The result is a matrix or a string.
    #[error("returned a {0}, expected a vector of one sample or a scalar")]
    ResultType(String),
    /// Not exactly one series in the vector.
    #[error("returned {count} samples{series}, expected exactly 1")]
    SampleCount {
        /// How many series came back.
        count: usize,
        /// Up to three of them, as " (name{label=\"value\"}, ...)".
        series: String,
    },
    /// The sample is not `[timestamp, "value"]`.
    #[error("returned a malformed sample: {0}")]
    Malformed(String),
    /// The value does not satisfy the comparison.
    #[error("value {0}")]
    Compare(CompareFailure),
    /// The attempt's timeout passed before the answer was read.
    #[error("no answer within {0} ms")]
    TimedOut(u128),
}

/// The envelope of every Prometheus HTTP API answer.
#[derive(Debug, Deserialize)]
struct Answer {
    status: String,
    #[serde(default)]
    data: Option<AnswerData>,
    #[serde(default, rename = "errorType")]
    error_type: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

/// The `data` of an instant query's answer.
#[derive(Debug, Deserialize)]
struct AnswerData {
    #[serde(rename = "resultType")]
    result_type: String,
    result: Value,
}

/// One attempt: run the query, take its one sample, compare it.
pub(super) async fn attempt(probe: &PrometheusProbe) -> Result<(), PrometheusFailure> {
    let fail = |reason: PrometheusReason| PrometheusFailure {
        query: probe.query.clone(),
        endpoint: shown_url(&probe.endpoint),
        reason,
    };
    let client =
        client(Redirects::None).map_err(|reason| fail(PrometheusReason::Client(reason)))?;
    let url = query_url(&probe.endpoint, &probe.query).map_err(fail)?;
    let _turn = turn().await;
    let response = client
        .get(url)
        .send()
        .await
        .map_err(|err| fail(PrometheusReason::Send(super::root_reason(&err))))?;
    let mut response = response;
    let status = response.status().as_u16();
    let body = read_body(&mut response, ANSWER_LIMIT)
        .await
        .map_err(|err| fail(PrometheusReason::Body(super::root_reason(&err))))?;
    if body.cut {
        return Err(fail(PrometheusReason::TooLarge(ANSWER_LIMIT)));
    }
    let value = sample_value(status, &body.bytes).map_err(fail)?;
    compare(&value, &probe.comparison).map_err(|e| fail(PrometheusReason::Compare(e)))
}

/// `{endpoint}/api/v1/query?query={query}`, the query form-encoded.
fn query_url(endpoint: &str, query: &str) -> Result<Url, PrometheusReason> {
    let base = format!("{}/api/v1/query", endpoint.trim_end_matches('/'));
    let mut url = Url::parse(&base).map_err(|err| PrometheusReason::Url(err.to_string()))?;
    url.query_pairs_mut().append_pair("query", query);
    Ok(url)
}

/// The value of the one sample an answer holds, as Prometheus writes it (`"42"`, `"NaN"`).
fn sample_value(status: u16, body: &[u8]) -> Result<String, PrometheusReason> {
    let answer: Answer =
        serde_json::from_slice(body).map_err(|_| PrometheusReason::NotPrometheus {
            status,
            body: shorten(String::from_utf8_lossy(body).trim(), 200),
        })?;
    if answer.status != "success" {
        return Err(PrometheusReason::Refused {
            error_type: answer
                .error_type
                .unwrap_or_else(|| format!("status {}", answer.status)),
            error: answer.error.unwrap_or_default(),
        });
    }
    let data = answer.data.ok_or_else(|| PrometheusReason::NotPrometheus {
        status,
        body: "success without data".to_string(),
    })?;
    match data.result_type.as_str() {
        "scalar" => point_value(&data.result),
        "vector" => {
            let series = data
                .result
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default();
            match series {
                [one] => point_value(one.get("value").unwrap_or(&Value::Null)),
                _ => Err(PrometheusReason::SampleCount {
                    count: series.len(),
                    series: series_names(series),
                }),
            }
        }
        other => Err(PrometheusReason::ResultType(other.to_string())),
    }
}

/// The value of a `[timestamp, "value"]` pair.
fn point_value(point: &Value) -> Result<String, PrometheusReason> {
    match point.as_array().map(Vec::as_slice) {
        Some([_, Value::String(value)]) => Ok(value.clone()),
        _ => Err(PrometheusReason::Malformed(shorten(
            &point.to_string(),
            200,
        ))),
    }
}

/// Up to three series of a vector, as " (name{label=\"value\"}, ...)"; empty for none.
fn series_names(series: &[Value]) -> String {
    if series.is_empty() {
        return String::new();
    }
    let mut names: Vec<String> = series.iter().take(3).map(series_name).collect();
    if series.len() > 3 {
        names.push("…".to_string());
    }
    format!(" ({})", names.join(", "))
}

/// One series as PromQL writes it: `name{label="value",...}`.
fn series_name(series: &Value) -> String {
    let Some(labels) = series.get("metric").and_then(Value::as_object) else {
        return "{}".to_string();
    };
    let name = labels.get("__name__").and_then(Value::as_str).unwrap_or("");
    let rest: Vec<String> = labels
        .iter()
        .filter(|(key, _)| key.as_str() != "__name__")
        .map(|(key, value)| format!("{key}={}", value))
        .collect();
    format!("{name}{{{}}}", rest.join(","))
}

/// The failure of an attempt cut off after `limit`.
pub(super) fn timed_out(probe: &PrometheusProbe, limit: Duration) -> PrometheusFailure {
    PrometheusFailure {
        query: probe.query.clone(),
        endpoint: shown_url(&probe.endpoint),
        reason: PrometheusReason::TimedOut(limit.as_millis()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_is_encoded_after_the_endpoint_path() {
        let url = query_url("http://127.0.0.1:9090/prom/", "rate(x[1m]) > 0").unwrap();
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:9090/prom/api/v1/query?query=rate%28x%5B1m%5D%29+%3E+0"
        );
    }

    #[test]
    fn series_are_named_as_promql_writes_them() {
        let series = serde_json::json!({"metric": {"__name__": "up", "job": "api"}});
        assert_eq!(series_name(&series), "up{job=\"api\"}");
    }
}
