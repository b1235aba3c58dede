//! An HTTP fault compiled: which requests it selects (method, path prefix, headers,
//! percentage) and what it does to them (`abort`, `delay`, `modify`).
//!
//! The rule that keeps it right: a fault is checked once, when it is added, and every
//! value the proxy cannot apply is refused there with the field named; a compiled rule
//! cannot fail on a request.

use std::time::Duration;

use bytes::Bytes;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Method, Request, StatusCode};

use super::error::ProxyError;
use crate::catalog::experiment::{HttpAction, HttpFault};

/// An [`HttpFault`] compiled: parsed method, header names and values, status codes.
#[derive(Debug)]
pub(crate) struct HttpRule {
    method: Option<Method>,
    path_prefix: Option<String>,
    headers: Vec<(HeaderName, HeaderValue)>,
    percentage: f64,
    pub action: RuleAction,
}

/// What a selected request gets.
#[derive(Debug)]
pub(crate) enum RuleAction {
    /// Answer at once with this status and body; the upstream is not called.
    Abort { status: StatusCode, body: Bytes },
    /// Wait this long, then go on.
    Delay(Duration),
    /// Change the upstream's answer: status, headers (set), body (replaced).
    Modify {
        status: Option<StatusCode>,
        headers: Vec<(HeaderName, HeaderValue)>,
        body: Option<Bytes>,
    },
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ProxyError {
    ProxyError::InvalidFault {
        field: field.into(),
        message: message.into(),
    }
}

fn compile_status(field: &str, code: u16) -> Result<StatusCode, ProxyError> {
    StatusCode::from_u16(code)
        .ok()
        .filter(|s| s.as_u16() >= 200)
        .ok_or_else(|| {
            invalid(
                field,
                format!("{code} is not a final HTTP status (200-999)"),
            )
        })
}

fn compile_headers<'a>(
    field: &str,
    headers: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> Result<Vec<(HeaderName, HeaderValue)>, ProxyError> {
    headers
        .into_iter()
        .map(|(name, value)| {
            let header = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| invalid(format!("{field}.{name}"), "not a valid header name"))?;
            let value = HeaderValue::from_str(value)
                .map_err(|_| invalid(format!("{field}.{name}"), "not a valid header value"))?;
            Ok((header, value))
        })
        .collect()
}

impl HttpRule {
    /// Checks and compiles a fault; errors name the field.
    pub fn compile(fault: &HttpFault) -> Result<HttpRule, ProxyError> {
        if !(0.0..=1.0).contains(&fault.percentage) {
            return Err(invalid(
                "percentage",
                format!("{} is not between 0.0 and 1.0", fault.percentage),
            ));
        }
        let method = fault
            .matches
            .method
            .as_deref()
            .map(|m| {
                Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                    .map_err(|_| invalid("match.method", format!("'{m}' is not an HTTP method")))
            })
            .transpose()?;
        let headers = compile_headers("match.headers", &fault.matches.headers)?;
        let action = match &fault.action {
            HttpAction::Abort { status, body } => RuleAction::Abort {
                status: compile_status("action.status", *status)?,
                body: Bytes::from(body.clone().unwrap_or_default()),
            },
            HttpAction::Delay { delay } => RuleAction::Delay(delay.duration()),
            HttpAction::Modify {
                status,
                headers,
                body,
            } => RuleAction::Modify {
                status: status
                    .map(|s| compile_status("action.status", s))
                    .transpose()?,
                headers: compile_headers("action.headers", headers)?,
                body: body.clone().map(Bytes::from),
            },
        };
        Ok(HttpRule {
            method,
            path_prefix: fault.matches.path_prefix.clone(),
            headers,
            percentage: fault.percentage,
            action,
        })
    }

    /// Whether the request is one this fault selects (before the percentage).
    pub fn selects<B>(&self, req: &Request<B>) -> bool {
        self.method.as_ref().is_none_or(|m| m == req.method())
            && self
                .path_prefix
                .as_deref()
                .is_none_or(|prefix| req.uri().path().starts_with(prefix))
            && self
                .headers
                .iter()
                .all(|(name, value)| req.headers().get_all(name).iter().any(|v| v == value))
    }

    /// The per-request draw against the percentage.
    pub fn rolls(&self) -> bool {
        self.percentage >= 1.0 || rand::random::<f64>() < self.percentage
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::experiment::HttpMatch;

    fn fault(action: HttpAction, matches: HttpMatch) -> HttpFault {
        HttpFault {
            target: "web".into(),
            proxy: None,
            action,
            matches,
            percentage: 1.0,
        }
    }

    #[test]
    fn rules_select_by_method_path_and_header() {
        let mut matches = HttpMatch {
            method: Some("post".into()),
            path_prefix: Some("/api".into()),
            ..HttpMatch::default()
        };
        matches.headers.insert("X-User".into(), "test".into());
        let rule = HttpRule::compile(&fault(
            HttpAction::Abort {
                status: 503,
                body: None,
            },
            matches,
        ))
        .expect("valid fault");
        let request = |method: &str, path: &str, user: &str| {
            Request::builder()
                .method(method)
                .uri(path)
                .header("x-user", user)
                .body(())
                .expect("request")
        };
        assert!(rule.selects(&request("POST", "/api/pay", "test")));
        assert!(!rule.selects(&request("GET", "/api/pay", "test")));
        assert!(!rule.selects(&request("POST", "/health", "test")));
        assert!(!rule.selects(&request("POST", "/api/pay", "other")));
    }

    #[test]
    fn bad_values_name_their_field() {
        let err = HttpRule::compile(&fault(
            HttpAction::Abort {
                status: 42,
                body: None,
            },
            HttpMatch::default(),
        ))
        .expect_err("status 42");
        assert!(
            matches!(err, ProxyError::InvalidFault { ref field, .. } if field == "action.status")
        );
        let mut headers = std::collections::BTreeMap::new();
        headers.insert("bad header".into(), "x".into());
        let err = HttpRule::compile(&fault(
            HttpAction::Modify {
                status: None,
                headers,
                body: None,
            },
            HttpMatch::default(),
        ))
        .expect_err("bad header name");
        assert!(
            matches!(err, ProxyError::InvalidFault { ref field, .. } if field == "action.headers.bad header")
        );
    }
}
