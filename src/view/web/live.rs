//! Live updates: `GET /api/stream` sends a server-sent event for every row ingest
//! changes, in order. Event name `change`, event `id` the change's sequence number,
//! data the change as JSON (`{"seq", "kind", "id", "pipeline_execution_id", "run"}`).
//!
//! A client that reconnects sends `Last-Event-ID` (browsers do it by themselves) and gets
//! every change after it, so nothing is missed; without it the stream starts at the
//! newest change (`?after=SEQ` does the same as the header, for scripts). Optional
//! narrowing: `?pipeline_id=`, `?pipeline_execution_id=`, `?run_id=` (other kinds of
//! change pass only when they name that execution). A comment every 15 s keeps proxies
//! from closing an idle stream.
//!
//! The rule that keeps it right: the stream reads changes from the store by sequence
//! number, woken by ingest's watch channel; the channel only says "something new", the
//! store says what, so a slow client that misses wake-ups still gets every change.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::response::Response;
use axum::response::sse::{Event, KeepAlive, Sse};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::WebState;
use super::api::store_error;
use super::error::{ApiError, WebError};
use crate::view::model::ChangeEvent;
use crate::view::query;

/// Changes read per query.
const BATCH: usize = 500;

/// Which changes a stream passes.
#[derive(Debug, Clone, Default, PartialEq)]
struct Narrow {
    pipeline_id: Option<String>,
    pipeline_execution_id: Option<String>,
    run_id: Option<String>,
}

impl Narrow {
    fn passes(&self, change: &ChangeEvent) -> bool {
        if let Some(run_id) = &self.run_id
            && change.run.as_ref().is_none_or(|r| &r.run_id != run_id)
        {
            return false;
        }
        if let Some(execution) = &self.pipeline_execution_id
            && change.pipeline_execution_id.as_ref() != Some(execution)
        {
            return false;
        }
        if let Some(pipeline) = &self.pipeline_id
            && change.pipeline_id.as_ref() != Some(pipeline)
            && change
                .run
                .as_ref()
                .is_none_or(|r| &r.pipeline_id != pipeline)
        {
            return false;
        }
        true
    }
}

/// `GET /api/stream`.
pub(crate) async fn stream(
    State(state): State<WebState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let mut narrow = Narrow::default();
    let mut after: Option<i64> = None;
    for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        let value = value.into_owned();
        match key.as_ref() {
            "pipeline_id" => narrow.pipeline_id = Some(value),
            "pipeline_execution_id" => narrow.pipeline_execution_id = Some(value),
            "run_id" => narrow.run_id = Some(value),
            "after" => after = Some(sequence("after", &value)?),
            "token" => {}
            other => {
                return Err(WebError::bad(
                    "query",
                    format!("unknown parameter '{other}'; the stream takes after, pipeline_id, pipeline_execution_id, run_id"),
                )
                .into());
            }
        }
    }
    if let Some(last) = headers.get("last-event-id") {
        let text = last.to_str().unwrap_or_default();
        after = Some(sequence("Last-Event-ID", text)?);
    }
    let mut wake = state.ingest.subscribe();
    let mut seq = match after {
        Some(seq) => seq,
        None => i64::try_from(*wake.borrow_and_update()).unwrap_or(i64::MAX),
    };
    let (tx, rx) = mpsc::channel::<Result<Event, Infallible>>(64);
    tokio::spawn(async move {
        // Say where the stream starts, so a client knows it is live.
        let hello = Event::default()
            .event("ready")
            .id(seq.to_string())
            .data(seq.to_string());
        if tx.send(Ok(hello)).await.is_err() {
            return;
        }
        loop {
            let from = seq;
            let changes = match state
                .query("changes_since", move |c| {
                    query::changes_since(c, from, BATCH)
                })
                .await
                .map_err(store_error)
            {
                Ok(changes) => changes,
                Err(error) => {
                    let event = Event::default().event("error").data(error.to_string());
                    let _ = tx.send(Ok(event)).await;
                    return;
                }
            };
            let full = changes.len() >= BATCH;
            for change in changes {
                seq = seq.max(change.seq);
                if !narrow.passes(&change) {
                    continue;
                }
                let data = serde_json::to_string(&change).unwrap_or_default();
                let event = Event::default()
                    .event("change")
                    .id(change.seq.to_string())
                    .data(data);
                if tx.send(Ok(event)).await.is_err() {
                    return;
                }
            }
            if full {
                continue;
            }
            tokio::select! {
                changed = wake.changed() => if changed.is_err() { return },
                () = state.shutdown.cancelled() => return,
                () = tx.closed() => return,
            }
        }
    });
    let sse = Sse::new(ReceiverStream::new(rx))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)));
    Ok(sse.into_response())
}

fn sequence(parameter: &'static str, value: &str) -> Result<i64, WebError> {
    value
        .trim()
        .parse::<i64>()
        .ok()
        .filter(|n| *n >= 0)
        .ok_or_else(|| {
            WebError::bad(
                parameter,
                format!("'{value}' is not a sequence number (an event id this stream sent)"),
            )
        })
}
