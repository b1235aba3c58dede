//! Export of any runs filter as CSV or NDJSON: `/api/runs.csv`, `/api/runs.ndjson`, or
//! `/api/runs?format=csv|ndjson`. All matching runs, not one page: the export walks the
//! keyset pages and streams each as it is read, so memory stays one page whatever the
//! size.
//!
//! CSV: RFC 4180 (quoted when needed, `""` inside quotes, CRLF line ends), one header
//! line with the columns in [`COLUMNS`]; text cells starting with `=`, `+`, `-` or `@`
//! get a leading `'` so a spreadsheet does not run them as formulas (OWASP "CSV
//! injection"). NDJSON: one run row as JSON per line (`application/x-ndjson`).
//!
//! The rule that keeps it right: both formats are made from the same row values the
//! JSON API returns, so an export never disagrees with `/api/runs`.

use axum::body::Body;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::WebState;
use super::error::WebError;
use super::params::RunParams;
use crate::view::model::MAX_PAGE;

/// The two export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// Comma-separated values with a header line.
    Csv,
    /// One JSON object per line.
    Ndjson,
}

impl Format {
    /// From `?format=` (`json` is the plain API and returns `None`).
    pub(crate) fn parse(value: &str) -> Result<Option<Format>, WebError> {
        match value {
            "" | "json" => Ok(None),
            "csv" => Ok(Some(Format::Csv)),
            "ndjson" => Ok(Some(Format::Ndjson)),
            other => Err(WebError::bad(
                "format",
                format!("'{other}' is not a format; use json, csv or ndjson"),
            )),
        }
    }
}

/// The CSV columns: dotted paths into a run row's JSON (as `/api/runs` returns it).
pub(crate) const COLUMNS: [&str; 26] = [
    "run_id",
    "status",
    "attempt",
    "score",
    "expected",
    "margin",
    "pipeline_id",
    "pipeline_execution_id",
    "stage_id",
    "step_id",
    "experiment_id",
    "flag_project",
    "flag_environment",
    "flag_key",
    "trigger_event_id",
    "started_at",
    "ended_at",
    "duration_seconds",
    "probes_passed",
    "probes_failed",
    "faults_not_reverted",
    "summary",
    "trace_id",
    "position.topic",
    "position.partition",
    "position.offset",
];

/// The header line.
pub(crate) fn csv_header() -> String {
    let mut line = COLUMNS.join(",");
    line.push_str("\r\n");
    line
}

/// One row as a CSV line: each column looked up by its dotted path (missing: empty).
pub(crate) fn csv_line(row: &Value) -> String {
    let cells: Vec<String> = COLUMNS
        .iter()
        .map(|path| {
            let cell = path.split('.').try_fold(row, |v, key| v.get(key));
            csv_cell(cell.unwrap_or(&Value::Null))
        })
        .collect();
    let mut line = cells.join(",");
    line.push_str("\r\n");
    line
}

fn csv_cell(value: &Value) -> String {
    let text = match value {
        Value::Null => return String::new(),
        Value::String(s) => {
            if s.starts_with(['=', '+', '-', '@']) {
                format!("'{s}")
            } else {
                s.clone()
            }
        }
        Value::Bool(_) | Value::Number(_) => value.to_string(),
        other => other.to_string(),
    };
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}

/// Streams every run matching `params` in `format`.
pub(crate) fn stream(state: WebState, params: RunParams, format: Format) -> Response {
    let (tx, rx) = mpsc::channel::<Result<String, std::io::Error>>(4);
    tokio::spawn(async move {
        if format == Format::Csv && tx.send(Ok(csv_header())).await.is_err() {
            return;
        }
        let mut filter = params.filter;
        filter.limit = MAX_PAGE;
        loop {
            let page = match super::api::run_page(&state, &filter).await {
                Ok(page) => page,
                Err(error) => {
                    let _ = tx.send(Err(std::io::Error::other(error.to_string()))).await;
                    return;
                }
            };
            let mut chunk = String::new();
            for row in &page.items {
                let row = serde_json::to_value(row).unwrap_or_default();
                let row = &row;
                match format {
                    Format::Csv => chunk.push_str(&csv_line(row)),
                    Format::Ndjson => {
                        chunk.push_str(&row.to_string());
                        chunk.push('\n');
                    }
                }
            }
            if tx.send(Ok(chunk)).await.is_err() {
                return;
            }
            match page.next {
                Some(next) => filter.cursor = Some(next),
                None => return,
            }
        }
    });
    let (content_type, name) = match format {
        Format::Csv => ("text/csv; charset=utf-8", "runs.csv"),
        Format::Ndjson => ("application/x-ndjson", "runs.ndjson"),
    };
    let body = Body::from_stream(ReceiverStream::new(rx));
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, content_type.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("inline; filename=\"{name}\""),
            ),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_and_defuses_formulas() {
        assert_eq!(csv_cell(&Value::String("a,b".into())), "\"a,b\"");
        assert_eq!(
            csv_cell(&Value::String("say \"hi\"".into())),
            "\"say \"\"hi\"\"\""
        );
        assert_eq!(csv_cell(&Value::String("=cmd()".into())), "'=cmd()");
        assert_eq!(csv_cell(&serde_json::json!(-5.5)), "-5.5");
        assert_eq!(csv_cell(&Value::Null), "");
    }
}
