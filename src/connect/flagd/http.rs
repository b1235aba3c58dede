//! The approved configuration over HTTP, on `[flagd] http_listen` (default 0.0.0.0:8016):
//!
//! - `GET /flags.json`: the `[flagd] project/environment` set as flagd's flag
//!   configuration (`{"flags":{...}}`, keys sorted: the same bytes on every replica),
//!   `Content-Type: application/json`, a strong `ETag` and `Cache-Control: no-cache`.
//!   `GET /flags.json?selector=PROJECT/ENVIRONMENT` serves another set (the sync
//!   service's selector forms; an empty `selector` is the default set; anything else is
//!   400 with the accepted forms). A set with nothing approved is `{"flags":{}}`.
//!   `If-None-Match` with the current tag (or `*`; weak tags compare as strong, as RFC 9110
//!   §13.1.2 has it for GET) answers 304 with no body. This is the source flagd's HTTP
//!   sync polls (`--uri http://HOST:8016/flags.json`), which honours ETags.
//! - `GET /healthz`: 200 while the approved-flags topic is followed, else 503.
//! - `GET /metrics`: every `chaosgate_*` metric (Prometheus text).
//!
//! Rule: the body and its ETag come from one [`super::approved::Approved::document`] of one snapshot, so a
//! tag always names the bytes sent with it.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::FlagdError;
use super::approved::{ApprovedWatch, Selection};

/// The path of the approved configuration.
pub const PATH: &str = "/flags.json";

#[derive(Clone)]
struct Endpoint {
    approved: ApprovedWatch,
    default: Selection,
}

/// Serves the HTTP endpoints on `listen` until `shutdown`.
///
/// Errors: [`FlagdError::Listen`] when `listen` cannot be bound or the server fails.
pub async fn serve(
    listen: SocketAddr,
    approved: ApprovedWatch,
    default: Selection,
    shutdown: CancellationToken,
) -> Result<(), FlagdError> {
    let (listener, bound) = super::bind("flagd.http_listen", listen).await?;
    tracing::info!(addr = %bound, path = PATH, default = %default, "serving the approved flagd configuration over HTTP");
    let app = Router::new()
        .route(PATH, get(flags))
        .route("/healthz", get(healthz))
        .route("/metrics", get(crate::telemetry::http::metrics_text))
        .with_state(Endpoint { approved, default });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .map_err(|error| FlagdError::Listen {
            key: "flagd.http_listen",
            addr: listen,
            error,
        })
}

#[derive(Debug, Deserialize)]
struct FlagsQuery {
    #[serde(default)]
    selector: String,
}

async fn flags(
    State(endpoint): State<Endpoint>,
    Query(query): Query<FlagsQuery>,
    headers: HeaderMap,
) -> Response {
    let set = match Selection::from_selector(&query.selector, &endpoint.default) {
        Ok(set) => set,
        Err(problem) => return (StatusCode::BAD_REQUEST, format!("{problem}\n")).into_response(),
    };
    let document = endpoint.approved.borrow().document(&set);
    let Ok(etag) = HeaderValue::from_str(&document.etag) else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let cache = (header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if none_match(&headers, &document.etag) {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag), cache]).into_response();
    }
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (header::ETAG, etag),
            cache,
        ],
        document.json,
    )
        .into_response()
}

/// Whether `If-None-Match` names `etag` (or is `*`): weak comparison, every header line
/// and every comma-separated tag counted.
fn none_match(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .any(|tag| tag == "*" || tag.trim_start_matches("W/") == etag)
}

async fn healthz(State(endpoint): State<Endpoint>) -> Response {
    if endpoint.approved.has_changed().is_ok() {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "the approved-flags topic is no longer followed\n",
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_forms() {
        let tag = "\"abc\"";
        let with = |values: &[&str]| {
            let mut headers = HeaderMap::new();
            for v in values {
                headers.append(header::IF_NONE_MATCH, HeaderValue::from_str(v).unwrap());
            }
            none_match(&headers, tag)
        };
        assert!(with(&["\"abc\""]));
        assert!(with(&["W/\"abc\""]));
        assert!(with(&["\"x\", \"abc\""]));
        assert!(with(&["\"x\"", "\"abc\""]));
        assert!(with(&["*"]));
        assert!(!with(&["\"abcd\""]));
        assert!(!with(&[]));
    }
}
