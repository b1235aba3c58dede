//! HTTP probes: one request, judged on its status, its response time and its body.
//!
//! Every probe (and the Prometheus probe) goes through one of three shared HTTP clients,
//! so ten thousand experiments share a connection pool instead of building ten thousand.
//! The clients ignore `HTTP_PROXY` and friends: a probe watches the target directly.
//!
//! A probe judges the answer of the URL it was given: by default no redirect is followed
//! (a `302` to a login page is a `302`, not the login page's `200`). With
//! `follow_redirects` it follows at most [`MAX_REDIRECTS`] hops, each to the host and port
//! of the probe's URL; a hop elsewhere fails the attempt, naming where it led, unless
//! `redirect_any_host` is set too. A redirect policy is per client in reqwest, hence one
//! client per [`Redirects`] rule.
//!
//! At most [`MAX_IN_FLIGHT`] probe requests are in flight at once, which bounds the open
//! connections (and so the memory) when thousands of probes fire together; a request
//! over the limit waits for its turn, and that wait counts towards the attempt's timeout
//! (not towards `max_response_ms`).
//!
//! Criteria are judged in this order and the first that fails is reported: status,
//! response time (request sent to body read), `body_contains`, `body_regex`, `json`.
//! Header values never appear in failure texts, and a password in the URL shows as `***`.

use std::sync::LazyLock;
use std::time::{Duration, Instant};

use reqwest::header::{HeaderName, HeaderValue, LOCATION};
use reqwest::redirect::Policy;
use reqwest::{Client, Method, Url};
use tokio::sync::{Semaphore, SemaphorePermit};

use super::compare::{regex, shorten};
use crate::catalog::experiment::{HttpCriteria, HttpProbe, JsonPointerMatch, StatusMatch};

/// At most this much of a response body is read and judged; the rest is not read.
pub(crate) const BODY_LIMIT: usize = 4 * 1024 * 1024;

/// At most this many probe requests (HTTP and Prometheus) are in flight at once.
pub(crate) const MAX_IN_FLIGHT: usize = 512;

static IN_FLIGHT: Semaphore = Semaphore::const_new(MAX_IN_FLIGHT);

/// At most this many redirects are followed by a probe with `follow_redirects`.
pub(crate) const MAX_REDIRECTS: usize = 10;

/// Which redirects a probe request follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Redirects {
    /// None: the answer of the URL itself is judged (the default, and Prometheus's).
    None,
    /// Those to the URL's own host and port (`follow_redirects: true`).
    SameHost,
    /// All (`follow_redirects: true` with `redirect_any_host: true`).
    AnyHost,
}

impl Redirects {
    fn of(probe: &HttpProbe) -> Self {
        match (probe.follow_redirects, probe.redirect_any_host) {
            (false, _) => Redirects::None,
            (true, false) => Redirects::SameHost,
            (true, true) => Redirects::AnyHost,
        }
    }

    fn policy(self) -> Policy {
        match self {
            Redirects::None => Policy::none(),
            Redirects::AnyHost => Policy::limited(MAX_REDIRECTS),
            Redirects::SameHost => Policy::custom(|attempt| {
                let Some(first) = attempt.previous().first() else {
                    return attempt.follow();
                };
                let origin = |url: &Url| {
                    (
                        url.host_str().map(str::to_owned),
                        url.port_or_known_default(),
                    )
                };
                if attempt.previous().len() > MAX_REDIRECTS {
                    attempt.error(format!("more than {MAX_REDIRECTS} redirects"))
                } else if origin(attempt.url()) != origin(first) {
                    let to = shown_url(attempt.url().as_str());
                    attempt.error(format!(
                        "redirected to another host ({to}); set redirect_any_host to follow it"
                    ))
                } else {
                    attempt.follow()
                }
            }),
        }
    }
}

fn build_client(redirects: Redirects) -> Result<Client, String> {
    Client::builder()
        .no_proxy()
        .redirect(redirects.policy())
        .pool_max_idle_per_host(MAX_IN_FLIGHT)
        .tcp_nodelay(true)
        .user_agent(concat!("chaosgate-probe/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|err| super::root_reason(&err))
}

static CLIENTS: LazyLock<[Result<Client, String>; 3]> =
    LazyLock::new(|| [Redirects::None, Redirects::SameHost, Redirects::AnyHost].map(build_client));

/// The shared HTTP client for requests following `redirects`.
pub(crate) fn client(redirects: Redirects) -> Result<&'static Client, String> {
    let index = match redirects {
        Redirects::None => 0,
        Redirects::SameHost => 1,
        Redirects::AnyHost => 2,
    };
    CLIENTS[index]
        .as_ref()
        .map_err(|reason| format!("the HTTP client could not start: {reason}"))
}

/// A turn to send one probe request; hold it until the response is read.
pub(crate) async fn turn() -> Option<SemaphorePermit<'static>> {
    // The semaphore is never closed, so this only fails in theory; go ahead then.
    IN_FLIGHT.acquire().await.ok()
}

/// Why an HTTP probe attempt failed, e.g.
/// "GET http://127.0.0.1:8080/health: status 503 not in [200-299]".
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{method} {url}: {reason}")]
pub(crate) struct HttpFailure {
    /// The request method.
    pub(crate) method: String,
    /// The URL, with any password masked.
    pub(crate) url: String,
    /// What went wrong.
    pub(crate) reason: HttpReason,
}

/// What went wrong with an HTTP probe attempt.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub(crate) enum HttpReason {
    /// The shared HTTP client could not be built.
    #[error("{0}")]
    Client(String),
    /// The method is not a valid HTTP method.
    #[error("not a valid HTTP method")]
    Method,
    /// The URL does not parse.
    #[error("not a valid URL: {0}")]
    Url(String),
    /// A header name is not valid HTTP.
    #[error("header {0:?} is not a valid header name")]
    HeaderName(String),
    /// A header value is not valid HTTP (the value is not shown: it may be a secret).
    #[error("header {0:?} has a value HTTP does not allow")]
    HeaderValue(String),
    /// No response: connection refused, reset, DNS failure, ...
    #[error("{0}")]
    Send(String),
    /// The response body could not be read to the end.
    #[error("reading the body: {0}")]
    Body(String),
    /// The attempt's timeout passed before the response was read.
    #[error("no response within {0} ms")]
    TimedOut(u128),
    /// The status is not among the accepted ones.
    #[error("status {status} not in [{accepted}]{}", not_followed(.location))]
    Status {
        /// The response status.
        status: u16,
        /// The accepted codes and ranges, as written in the probe.
        accepted: String,
        /// For a redirect that was not followed, its `Location` (shortened).
        location: Option<String>,
    },
    /// The response came, but later than `max_response_ms`.
    #[error("response took {took_ms} ms, more than {max_ms} ms")]
    Slow {
        /// Request sent to body read.
        took_ms: u128,
        /// The probe's `max_response_ms`.
        max_ms: u64,
    },
    /// The body does not contain `body_contains`.
    #[error("body does not contain {0:?}")]
    BodyLacks(String),
    /// The body does not match `body_regex`.
    #[error("body does not match /{0}/")]
    BodyMismatch(String),
    /// `body_regex` is not a valid regular expression.
    #[error("{pattern:?} is not a valid regular expression: {reason}")]
    BadRegex {
        /// The pattern from the probe.
        pattern: String,
        /// What the regex parser said.
        reason: String,
    },
    /// The body is not JSON, so `json` cannot be judged.
    #[error("body is not JSON ({0})")]
    NotJson(String),
    /// The JSON body has no value at the pointer.
    #[error("JSON body has nothing at {0:?}")]
    NoValueAt(String),
    /// The value at the pointer differs from the expected one.
    #[error("JSON at {pointer:?} is {found}, expected {expected}")]
    JsonUnequal {
        /// The pointer from the probe.
        pointer: String,
        /// The value found, as the body writes it (layout removed, shortened).
        found: String,
        /// The expected value, as JSON (shortened).
        expected: String,
    },
}

/// One attempt: send the request, read the body, judge the criteria.
pub(super) async fn attempt(probe: &HttpProbe) -> Result<(), HttpFailure> {
    let fail = |reason: HttpReason| HttpFailure {
        method: probe.method.clone(),
        url: shown_url(&probe.url),
        reason,
    };
    let client = client(Redirects::of(probe)).map_err(|reason| fail(HttpReason::Client(reason)))?;
    let method = Method::from_bytes(probe.method.to_ascii_uppercase().as_bytes())
        .map_err(|_| fail(HttpReason::Method))?;
    let url = Url::parse(&probe.url).map_err(|err| fail(HttpReason::Url(err.to_string())))?;
    let mut request = client.request(method, url);
    for (name, value) in &probe.headers {
        let name_ok = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| fail(HttpReason::HeaderName(name.clone())))?;
        let value_ok = HeaderValue::from_str(value)
            .map_err(|_| fail(HttpReason::HeaderValue(name.clone())))?;
        request = request.header(name_ok, value_ok);
    }
    if let Some(body) = &probe.body {
        request = request.body(body.clone());
    }

    let _turn = turn().await;
    let sent = Instant::now();
    let mut response = request
        .send()
        .await
        .map_err(|err| fail(HttpReason::Send(super::root_reason(&err))))?;
    let status = response.status().as_u16();
    let location = response
        .status()
        .is_redirection()
        .then(|| response.headers().get(LOCATION))
        .flatten()
        .map(|value| shorten(&String::from_utf8_lossy(value.as_bytes()), 200));
    let body = read_body(&mut response, BODY_LIMIT)
        .await
        .map_err(|err| fail(HttpReason::Body(super::root_reason(&err))))?
        .bytes;
    let took = sent.elapsed();
    judge(&probe.criteria, status, location, took, &body).map_err(fail)
}

/// A response body read up to a limit.
pub(crate) struct CappedBody {
    /// At most the limit's bytes, from the start of the body.
    pub(crate) bytes: Vec<u8>,
    /// Whether the body went on past the limit (the rest was not read).
    pub(crate) cut: bool,
}

/// Reads `response`'s body chunk by chunk, keeping at most `limit` bytes and reading no
/// further once it has them (the connection is then dropped with the response): a
/// server that sends without end costs a probe `limit` bytes, never more.
pub(crate) async fn read_body(
    response: &mut reqwest::Response,
    limit: usize,
) -> Result<CappedBody, reqwest::Error> {
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = limit - bytes.len();
        if chunk.len() > room {
            bytes.extend_from_slice(&chunk[..room]);
            return Ok(CappedBody { bytes, cut: true });
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(CappedBody { bytes, cut: false })
}

/// The note a failed status gets when it is a redirect the probe did not follow.
fn not_followed(location: &Option<String>) -> String {
    match location {
        Some(to) => format!(" (a redirect to {to}, not followed: see follow_redirects)"),
        None => String::new(),
    }
}

/// Whether a response meets `criteria`; the first unmet criterion otherwise (a status
/// failure carries `location`, the `Location` of a redirect that was not followed).
fn judge(
    criteria: &HttpCriteria,
    status: u16,
    location: Option<String>,
    took: Duration,
    body: &[u8],
) -> Result<(), HttpReason> {
    if !criteria
        .status
        .iter()
        .any(|accepted| accepted.accepts(status))
    {
        return Err(HttpReason::Status {
            status,
            accepted: accepted_statuses(&criteria.status),
            location,
        });
    }
    if let Some(max_ms) = criteria.max_response_ms
        && took > Duration::from_millis(max_ms)
    {
        return Err(HttpReason::Slow {
            took_ms: took.as_millis(),
            max_ms,
        });
    }
    let text = String::from_utf8_lossy(body);
    if let Some(wanted) = &criteria.body_contains
        && !text.contains(wanted.as_str())
    {
        return Err(HttpReason::BodyLacks(wanted.clone()));
    }
    if let Some(pattern) = &criteria.body_regex {
        let compiled = regex(pattern).map_err(|reason| HttpReason::BadRegex {
            pattern: pattern.clone(),
            reason,
        })?;
        if !compiled.is_match(&text) {
            return Err(HttpReason::BodyMismatch(pattern.clone()));
        }
    }
    if let Some(json) = &criteria.json {
        judge_json(json, body)?;
    }
    Ok(())
}

/// Whether the JSON body holds `json.equals` at `json.pointer`, compared exactly (see
/// [`super::json`]: `3` equals `3.0`, `9007199254740993` does not equal
/// `9007199254740992`).
fn judge_json(json: &JsonPointerMatch, body: &[u8]) -> Result<(), HttpReason> {
    let document = super::json::parse(body).map_err(|err| HttpReason::NotJson(err.to_string()))?;
    let found = super::json::lookup(document, &json.pointer)
        .ok_or_else(|| HttpReason::NoValueAt(json.pointer.clone()))?;
    if super::json::equals(found, &json.equals) {
        return Ok(());
    }
    Err(HttpReason::JsonUnequal {
        pointer: json.pointer.clone(),
        found: shorten(&super::json::shown(found), 200),
        expected: shorten(&json.equals.to_string(), 200),
    })
}

/// The accepted statuses as the probe writes them, e.g. `200-299, 404`.
fn accepted_statuses(statuses: &[StatusMatch]) -> String {
    statuses
        .iter()
        .map(|s| match s {
            StatusMatch::Code(code) => code.to_string(),
            StatusMatch::Range(range) => range.clone(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The URL for failure texts: as written, unless it carries a password, which is masked.
pub(crate) fn shown_url(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => match parsed.set_password(Some("***")) {
            Ok(()) => parsed.to_string(),
            Err(()) => "<url with credentials>".to_string(),
        },
        _ => url.to_string(),
    }
}

/// The failure of an attempt cut off after `limit`.
pub(super) fn timed_out(probe: &HttpProbe, limit: Duration) -> HttpFailure {
    HttpFailure {
        method: probe.method.clone(),
        url: shown_url(&probe.url),
        reason: HttpReason::TimedOut(limit.as_millis()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_urls_are_masked() {
        assert_eq!(
            shown_url("http://u:secret@127.0.0.1/x"),
            "http://u:***@127.0.0.1/x"
        );
        assert_eq!(shown_url("http://127.0.0.1:8080"), "http://127.0.0.1:8080");
    }

    #[test]
    fn numbers_in_json_compare_by_value() {
        let json = JsonPointerMatch {
            pointer: "/n".into(),
            equals: serde_json::json!(3.0),
        };
        assert_eq!(judge_json(&json, br#"{"n": 3}"#), Ok(()));
        assert!(judge_json(&json, br#"{"n": 4}"#).is_err());
    }
}
