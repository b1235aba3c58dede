//! Delivering one notification to one receiver: the POST, its headers, and the tries.
//!
//! Headers (docs/notifications.md): `Idempotency-Key: "<key>"` (an RFC 8941 sf-string,
//! quoted, per draft-ietf-httpapi-idempotency-key-header), `webhook-id: <key>`,
//! `webhook-timestamp: <unix seconds of this try>` and, with a secret,
//! `webhook-signature: v1,<base64 HMAC-SHA256(secret, "<id>.<timestamp>.<body>")>`
//! (Standard Webhooks). The key and the body are the same on every try.
//!
//! The rule of tries: a 2xx is delivered; no connection, a timeout, 408, 429 and 5xx are
//! tried again after an exponential backoff with jitter (1 s doubling to 5 min), or the
//! receiver's `Retry-After` when longer, until the receiver's `max_elapsed` has passed
//! since the first try: then it is given up. Any other answer (3xx: redirects are not
//! followed; 4xx: 400, 401, 403, 404, 410...) will not heal by trying again and is given
//! up at once. Given up means an error log line and the `given_up` count; the record's
//! offset then moves on. The URL, a secret, is never in a log line or an error.
//!
//! A Slack-compatible receiver is sent one message at a time, at most one a second
//! ([`SLACK_SPACING`]), which keeps to Slack's rate limit and the order of events.

use std::time::{Duration, Instant};

use base64::Engine as _;
use reqwest::StatusCode;
use tokio_util::sync::CancellationToken;

use super::event::{Notification, key};
use super::message;
use crate::config::ReceiverKind;
use crate::connect::retry::{backoff, next_wait, retry_after_of};
use crate::telemetry::metrics;

/// The first wait after a failed try.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest wait between two tries (unless `Retry-After` asks for longer).
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// A Slack-compatible receiver gets at most one message per this (Slack: "no more than
/// one message per second" per incoming webhook; its consumer delivers one at a time).
pub const SLACK_SPACING: Duration = Duration::from_secs(1);
/// How much of a refusing answer's body is logged.
const SHOWN_BODY: usize = 200;

/// A receiver, ready to send to.
pub struct Receiver {
    /// Its configured name.
    pub name: String,
    /// Its message format.
    pub kind: ReceiverKind,
    /// Its URL (a secret).
    pub url: reqwest::Url,
    /// The Standard Webhooks signing secret, when configured.
    pub secret: Option<Vec<u8>>,
    /// How long one notification is tried.
    pub max_elapsed: Duration,
    /// The HTTP client, with the receiver's timeout.
    pub http: reqwest::Client,
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl Receiver {
    /// A client for a receiver with a per-request `timeout` (connect included), which
    /// follows no redirect. Errors: the HTTP client cannot be built.
    pub fn client(timeout: Duration) -> Result<reqwest::Client, String> {
        reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("chaosgate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("HTTP client: {e}"))
    }
}

/// How a delivery ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// The receiver answered 2xx.
    Delivered,
    /// Refused for good, or `max_elapsed` passed: logged and counted.
    GivenUp,
    /// The notifier is stopping: not finished, delivered again after a restart.
    Cancelled,
}

/// One try's failure.
enum Failure {
    /// May succeed later; with the receiver's `Retry-After`.
    Transient(String, Option<Duration>),
    /// Will not.
    Permanent(String),
}

/// Delivers `notification` to `receiver`, trying until delivered, given up, or
/// `shutdown`.
pub async fn deliver(
    receiver: &Receiver,
    notification: &Notification,
    shutdown: &CancellationToken,
) -> Delivery {
    let key = key(&receiver.name, notification.kind, &notification.source_id);
    let (body, content_type) = message::body(receiver.kind, notification, &key);
    let event = notification.kind.as_str();
    let flag = notification.facts.flag.path();
    let started = Instant::now();
    let mut delays = backoff(FIRST_BACKOFF, MAX_BACKOFF);
    let mut tries: u32 = 0;
    loop {
        tries += 1;
        let result = tokio::select! {
            biased;
            () = shutdown.cancelled() => return Delivery::Cancelled,
            result = post(receiver, &key, &body, content_type) => result,
        };
        let (why, retry_after) = match result {
            Ok(()) => {
                tracing::info!(receiver = %receiver.name, event, %flag, %key, tries, "notification delivered");
                metrics::notification(&receiver.name, event, "delivered");
                if receiver.kind == ReceiverKind::Slack {
                    tokio::select! {
                        () = shutdown.cancelled() => {}
                        () = tokio::time::sleep(SLACK_SPACING) => {}
                    }
                }
                return Delivery::Delivered;
            }
            Err(Failure::Permanent(why)) => {
                tracing::error!(receiver = %receiver.name, event, %flag, %key, tries, error = %why, "notification given up: the receiver refuses it");
                metrics::notification(&receiver.name, event, "given_up");
                return Delivery::GivenUp;
            }
            Err(Failure::Transient(why, retry_after)) => (why, retry_after),
        };
        let wait = next_wait(&mut delays, MAX_BACKOFF, retry_after);
        if started.elapsed() + wait > receiver.max_elapsed {
            tracing::error!(receiver = %receiver.name, event, %flag, %key, tries, error = %why, max_elapsed = ?receiver.max_elapsed, "notification given up: still failing after max_elapsed");
            metrics::notification(&receiver.name, event, "given_up");
            return Delivery::GivenUp;
        }
        tracing::warn!(receiver = %receiver.name, event, %flag, %key, tries, retry_in = ?wait, error = %why, "notification not delivered yet; trying again");
        metrics::notification(&receiver.name, event, "retried");
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return Delivery::Cancelled,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// One POST of `body`, classified.
async fn post(
    receiver: &Receiver,
    key: &str,
    body: &[u8],
    content_type: &str,
) -> Result<(), Failure> {
    let timestamp = chrono::Utc::now().timestamp().to_string();
    let mut request = receiver
        .http
        .post(receiver.url.clone())
        .header(reqwest::header::CONTENT_TYPE, content_type)
        .header("idempotency-key", format!("\"{key}\""))
        .header("webhook-id", key)
        .header("webhook-timestamp", &timestamp);
    if let Some(secret) = &receiver.secret {
        request = request.header(
            "webhook-signature",
            signature(secret, key, &timestamp, body),
        );
    }
    let response = request.body(body.to_vec()).send().await.map_err(|e| {
        let what = if e.is_timeout() {
            "timed out"
        } else if e.is_connect() {
            "could not connect"
        } else {
            "failed"
        };
        // `without_url`: the URL is the receiver's secret.
        Failure::Transient(format!("POST {what}: {}", e.without_url()), None)
    })?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let retry_after = retry_after_of(&response);
    let answer = response.text().await.unwrap_or_default();
    let shown: String = answer.chars().take(SHOWN_BODY).collect();
    let why = format!("answered {status}: {}", shown.trim());
    if status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
    {
        Err(Failure::Transient(why, retry_after))
    } else {
        Err(Failure::Permanent(why))
    }
}

/// The Standard Webhooks signature: `v1,` and the base64 of HMAC-SHA256 over
/// `<id>.<timestamp>.<body>` with `secret`.
pub fn signature(secret: &[u8], id: &str, timestamp: &str, body: &[u8]) -> String {
    use aws_lc_rs::hmac;
    let signing = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let mut context = hmac::Context::with_key(&signing);
    context.update(id.as_bytes());
    context.update(b".");
    context.update(timestamp.as_bytes());
    context.update(b".");
    context.update(body);
    let tag = context.sign();
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(tag.as_ref())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_the_standard_webhooks_example() {
        // The example of the Standard Webhooks spec (its reference libraries' tests):
        // secret whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw.
        let secret = base64::engine::general_purpose::STANDARD
            .decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            .unwrap();
        assert_eq!(
            signature(
                &secret,
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                "1614265330",
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }
}
