//! The optional bearer token in front of every page and endpoint.
//!
//! When `[view] token` is set, a request passes with `Authorization: Bearer TOKEN`, or
//! with the cookie `chaosgate_view_token=TOKEN`. A browser gets that cookie by opening
//! any page once with `?token=TOKEN`: the view sets the cookie (HttpOnly,
//! SameSite=Strict) and redirects to the same address without the token, so it does not
//! stay in the address bar or the history. Anything else gets 401 (JSON for API
//! clients, a short page with a token form for browsers).
//!
//! Open without a token: `/healthz` and `/readyz` (liveness and readiness probes carry
//! no data beyond ingest progress) and the stylesheet and script.
//!
//! The rule that keeps it right: the check is one middleware on the whole router, so a
//! new route is protected without anyone remembering to; tokens are compared in
//! constant time.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;

use super::layout;

/// The cookie that carries the token for browsers.
pub(crate) const COOKIE: &str = "chaosgate_view_token";

/// Paths that need no token.
const OPEN: [&str; 4] = ["/healthz", "/readyz", "/static/view.css", "/static/view.js"];

/// The token the view expects, if any.
#[derive(Debug, Clone, Default)]
pub(crate) struct Token(pub Option<Arc<str>>);

/// Middleware: lets the request through when no token is configured, the path is open,
/// or the request carries the token; otherwise 401.
pub(crate) async fn require(State(token): State<Token>, request: Request, next: Next) -> Response {
    let Some(expected) = token.0.as_deref() else {
        return next.run(request).await;
    };
    if OPEN.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    if let Some(given) = query_token(request.uri()) {
        if same(given.as_bytes(), expected.as_bytes()) {
            return with_cookie(request.uri(), expected);
        }
        return unauthorized(request.headers(), "the token given with ?token= is wrong");
    }
    match presented(request.headers()) {
        Some(given) if same(given.as_bytes(), expected.as_bytes()) => next.run(request).await,
        Some(_) => unauthorized(request.headers(), "the bearer token is wrong"),
        None => unauthorized(
            request.headers(),
            "this view needs a token: send 'Authorization: Bearer TOKEN' (or open any page once with ?token=TOKEN)",
        ),
    }
}

/// The token from `Authorization: Bearer` or from the cookie.
fn presented(headers: &HeaderMap) -> Option<String> {
    if let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let (scheme, token) = value.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_string());
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_string())
}

fn query_token(uri: &Uri) -> Option<String> {
    form_urlencoded::parse(uri.query()?.as_bytes())
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned())
}

/// Sets the cookie and redirects to the same address without `token`.
fn with_cookie(uri: &Uri, token: &str) -> Response {
    let rest: Vec<(String, String)> = uri
        .query()
        .map(|q| {
            form_urlencoded::parse(q.as_bytes())
                .filter(|(k, _)| k != "token")
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        })
        .unwrap_or_default();
    let mut location = uri.path().to_string();
    if !rest.is_empty() {
        location.push('?');
        location.push_str(
            &form_urlencoded::Serializer::new(String::new())
                .extend_pairs(rest)
                .finish(),
        );
    }
    let mut response = Redirect::to(&location).into_response();
    let cookie = format!("{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict");
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

fn unauthorized(headers: &HeaderMap, why: &str) -> Response {
    let browser = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"));
    let mut response = if browser {
        let page = layout::page(
            "Token needed",
            layout::Section::Overview,
            html! {
                h1 { "A token is needed" }
                p.muted { (why) }
                form.filters method="get" {
                    label { "Token" input.wide type="password" name="token" autofocus; }
                    button type="submit" { "Open" }
                }
            },
        );
        (StatusCode::UNAUTHORIZED, page).into_response()
    } else {
        let body = serde_json::json!({ "error": why, "status": 401 });
        Response::builder()
            .status(StatusCode::UNAUTHORIZED)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .unwrap_or_else(|_| StatusCode::UNAUTHORIZED.into_response())
    };
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"chaosgate view\""),
    );
    response
}

/// Compares in time independent of where the first difference is.
fn same(a: &[u8], b: &[u8]) -> bool {
    subtle::ConstantTimeEq::ct_eq(a, b).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_bearer_and_cookie() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer s3cret"),
        );
        assert_eq!(presented(&headers).as_deref(), Some("s3cret"));
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=b; chaosgate_view_token=s3cret"),
        );
        assert_eq!(presented(&headers).as_deref(), Some("s3cret"));
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"abcd"));
    }
}
