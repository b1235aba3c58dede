//! What goes wrong serving a request, and how each case answers: a bad parameter is 400
//! naming the parameter, an unknown id is 404 naming what was looked for, a store
//! failure is 500 with the store's message. API routes answer JSON
//! (`{"error": "...", "parameter": "since", "status": 400}`), pages answer a page.
//!
//! The rule that keeps it right: handlers return `Result<_, WebError>` and never build
//! an error response themselves, so every error has the same shape.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maud::html;

use super::layout;
use crate::view::store::ViewError;

/// One failed request.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WebError {
    /// A query or path parameter is malformed.
    #[error("parameter '{parameter}': {message}")]
    BadParameter {
        /// The parameter's name, as in the URL.
        parameter: &'static str,
        /// What is wrong and what would be right.
        message: String,
    },
    /// Nothing has this id.
    #[error("{0}")]
    NotFound(String),
    /// The store failed.
    #[error("the view's store failed: {0}")]
    Store(#[from] ViewError),
}

impl WebError {
    /// A bad-parameter error.
    pub(crate) fn bad(parameter: &'static str, message: impl Into<String>) -> WebError {
        WebError::BadParameter {
            parameter,
            message: message.into(),
        }
    }

    /// The HTTP status.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            WebError::BadParameter { .. } => StatusCode::BAD_REQUEST,
            WebError::NotFound(_) => StatusCode::NOT_FOUND,
            WebError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The JSON answer.
    pub(crate) fn json(&self) -> Response {
        let parameter = match self {
            WebError::BadParameter { parameter, .. } => Some(*parameter),
            _ => None,
        };
        let body = serde_json::json!({
            "error": self.to_string(),
            "parameter": parameter,
            "status": self.status().as_u16(),
        });
        (self.status(), Json(body)).into_response()
    }

    /// The HTML answer.
    pub(crate) fn page(&self) -> Response {
        let title = match self {
            WebError::BadParameter { .. } => "Bad request",
            WebError::NotFound(_) => "Not found",
            WebError::Store(_) => "Store error",
        };
        let page = layout::page(
            title,
            layout::Section::Overview,
            html! {
                h1 { (title) }
                div.finding { (self.to_string()) }
                p { a href="/" { "Back to the overview" } }
            },
        );
        (self.status(), page).into_response()
    }
}

/// An error that answers JSON (API routes).
#[derive(Debug)]
pub(crate) struct ApiError(pub WebError);

impl<E: Into<WebError>> From<E> for ApiError {
    fn from(error: E) -> Self {
        ApiError(error.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.0.json()
    }
}

/// An error that answers a page (HTML routes).
#[derive(Debug)]
pub(crate) struct PageError(pub WebError);

impl<E: Into<WebError>> From<E> for PageError {
    fn from(error: E) -> Self {
        PageError(error.into())
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        self.0.page()
    }
}
