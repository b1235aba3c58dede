//! In: the endpoint Prometheus Alertmanager's webhook receiver posts to, turning each
//! firing alert a rule matches into one `disable` flag change per flag of the rule on
//! `kafka.topics.flag_changes` (the worker passes a `disable` on at once, as a
//! `requested` change: never gated).
//!
//! Served on `[alertmanager] listen`:
//! - `POST /alertmanager/webhook`: the notification JSON (payload version 4, mapping:
//!   [`super::mapping`]), at most [`MAX_BODY_BYTES`];
//! - `GET /healthz`: 200 `{"status":"ok"}` while the receiver runs (no token needed);
//! - `GET /metrics`: every `chaosgate_*` metric (Prometheus text), with
//!   `chaosgate_alertmanager_alerts_total{outcome}`.
//!
//! `Authorization` must carry the configured token as `Bearer <token>` (Alertmanager's
//! `http_config.authorization`) or as the password of `Basic` (its `basic_auth`; the
//! user name is not checked), compared in constant time.
//!
//! | answer | `outcome` | when |
//! |---|---|---|
//! | 200 | `produced` | Kafka has every flag change the notification asks for (`acks=all`, idempotent producer); `changes` lists each with its partition and offset |
//! | 200 | `duplicate` | every one was produced already (Alertmanager repeats a notification) |
//! | 200 | `ignored` | no firing alert turns a flag off (resolved or unmatched alerts, or a label naming a flag the rule does not allow) |
//! | 400 | `rejected` | the body is not a notification; `error` names the field |
//! | 401 | `unauthorized` | `Authorization` missing or not the token |
//! | 413 | `rejected` | the body is over [`MAX_BODY_BYTES`] |
//! | 503 | `failed` | Kafka did not take one of the flag changes within [`DELIVERY_TIMEOUT`] |
//!
//! Alertmanager retries a 5xx and a connection error (backoff from 500 ms, until the
//! group's `group_interval`) and sends a firing group again at every `group_interval`
//! while the notification failed, so a 503 is delivered again; it does not retry a 4xx
//! (its log says "unexpected status code 401"), so a wrong token or body is not hammered.
//!
//! The rule that keeps it right: a 2xx means Kafka has every flag change the notification
//! asks for (or had it already); a 503 means one may be missing, and the changes that
//! did reach Kafka are duplicates when the notification comes again. Redelivery: the same
//! flag change (same event id, [`super::mapping::event_id`]) is produced once while its
//! id is among the last [`RECENT_IDS`] this process has seen; after that, or a restart,
//! it is produced again with the same event id, which the worker answers with the same
//! command id.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine as _;
use rdkafka::producer::FutureProducer;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;

use super::AlertmanagerError;
use super::mapping::{self, Verdict};
use super::payload::{self, Alert};
use crate::config::{AlertmanagerConfig, AlertmanagerRule, Config};
use crate::connect::unleash::recent::RecentEvents;
use crate::contract::FlagChange;
use crate::telemetry::{metrics, traces};

/// The path Alertmanager's webhook posts to (`webhook_configs[].url`).
pub const PATH: &str = "/alertmanager/webhook";

/// The largest body taken, in bytes (1 MiB: a group of a few hundred alerts).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// How many recent event ids the redelivery guard remembers.
pub const RECENT_IDS: usize = 10_000;

/// How long Kafka may take to acknowledge a flag change (librdkafka
/// `message.timeout.ms`, unless `[kafka.properties]` sets it). Alertmanager waits as
/// long as its webhook's `timeout` (none by default).
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(8);

/// The endpoint's state, shared by every request.
struct Endpoint {
    token: String,
    rules: Vec<AlertmanagerRule>,
    topic: String,
    producer: FutureProducer,
    recent: RecentEvents,
}

/// Serves the endpoints on `alertmanager.listen` until `shutdown`.
///
/// Errors: the token is not set, a rule is unusable (each naming its key), the producer
/// cannot be created, or the address cannot be bound.
pub async fn serve(
    config: &Config,
    section: &AlertmanagerConfig,
    shutdown: CancellationToken,
) -> Result<(), AlertmanagerError> {
    let token = section.token().map_err(AlertmanagerError::Config)?;
    let rules = section
        .resolved_rules()
        .map_err(AlertmanagerError::Config)?;
    let producer =
        crate::connect::flag_change_producer(&config.kafka, DELIVERY_TIMEOUT).map_err(|e| {
            AlertmanagerError::Kafka(format!("cannot create the flag-change producer: {e}"))
        })?;
    let endpoint = Arc::new(Endpoint {
        token,
        rules,
        topic: config.kafka.topics.flag_changes.clone(),
        producer,
        recent: RecentEvents::new(RECENT_IDS),
    });
    let addr = section.listen;
    let (listener, bound) = crate::connect::bind(addr)
        .await
        .map_err(|error| AlertmanagerError::Listen { addr, error })?;
    let app = Router::new()
        .route(PATH, post(webhook))
        .with_state(endpoint.clone());
    tracing::info!(
        addr = %bound,
        path = PATH,
        topic = %endpoint.topic,
        rules = endpoint.rules.len(),
        "serving the Alertmanager webhook"
    );
    crate::connect::serve_webhook(listener, app, MAX_BODY_BYTES, shutdown)
        .await
        .map_err(|error| AlertmanagerError::Listen { addr, error })
}

/// A refusal of the whole request: logged at warn with its reason, counted once under
/// `outcome`, answered with it.
fn refuse(status: StatusCode, outcome: &'static str, error: &str) -> Response {
    tracing::warn!(outcome, status = status.as_u16(), reason = %error, "Alertmanager webhook refused");
    metrics::alertmanager_alert(outcome);
    let body = json!({ "outcome": outcome, "error": error });
    (status, axum::Json(body)).into_response()
}

/// What became of one alert of a notification (the `outcome` label of
/// `chaosgate_alertmanager_alerts_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AlertOutcome {
    /// Kafka has all its flag changes, at least one produced now.
    Produced,
    /// All its flag changes were produced already.
    Duplicate,
    /// Resolved: nothing to do.
    Resolved,
    /// Firing, but no rule matches.
    Unmatched,
    /// Its rule takes the flag from a label, which names none the rule allows.
    NotAllowed,
    /// Kafka did not take one of its flag changes.
    Failed,
}

impl AlertOutcome {
    const fn as_str(self) -> &'static str {
        match self {
            AlertOutcome::Produced => "produced",
            AlertOutcome::Duplicate => "duplicate",
            AlertOutcome::Resolved => "resolved",
            AlertOutcome::Unmatched => "unmatched",
            AlertOutcome::NotAllowed => "not_allowed",
            AlertOutcome::Failed => "failed",
        }
    }
}

/// One flag change a notification asks for, and what became of it.
struct Planned {
    change: FlagChange,
    /// Index of the alert in the notification.
    alert: usize,
    outcome: Result<Option<(i32, i64)>, String>,
}

async fn webhook(
    State(endpoint): State<Arc<Endpoint>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if let Err(reason) = authorized(&headers, &endpoint.token) {
        let mut response = refuse(StatusCode::UNAUTHORIZED, "unauthorized", reason);
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer realm=\"chaosgate alertmanager webhook\""),
        );
        return response;
    }
    let body = match body {
        Ok(body) if body.len() <= MAX_BODY_BYTES => body,
        Ok(_) => return too_large(),
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return too_large();
        }
        Err(rejection) => {
            let reason = format!("cannot read the body: {}", rejection.body_text());
            return refuse(StatusCode::BAD_REQUEST, "rejected", &reason);
        }
    };
    let notification = match payload::parse(&body) {
        Ok(notification) => notification,
        Err(reason) => return refuse(StatusCode::BAD_REQUEST, "rejected", &reason),
    };
    if notification.version.as_deref().is_some_and(|v| v != "4") {
        tracing::warn!(version = ?notification.version, "an Alertmanager payload version other than 4: read as version 4");
    }
    if notification.truncated_alerts > 0 {
        tracing::warn!(
            receiver = %notification.receiver,
            truncated = notification.truncated_alerts,
            "Alertmanager left alerts out of this notification (webhook max_alerts): they turn no flag off"
        );
    }
    let alerts = &notification.alerts;
    // Per alert: its outcome when no flag change decides it; the changes, keyed by event
    // id (sorted: claims are taken in one order, so two deliveries of overlapping
    // notifications cannot wait on each other).
    let mut verdicts: Vec<Option<AlertOutcome>> = Vec::with_capacity(alerts.len());
    let mut planned: BTreeMap<String, Planned> = BTreeMap::new();
    for (index, alert) in alerts.iter().enumerate() {
        match mapping::verdict(alert, &endpoint.rules) {
            Verdict::Resolved => verdicts.push(Some(AlertOutcome::Resolved)),
            Verdict::Unmatched => {
                tracing::info!(
                    alertname = alert.name(),
                    fingerprint = %alert.fingerprint,
                    labels = ?alert.labels,
                    "firing alert matches no alertmanager.rules: no flag turned off"
                );
                verdicts.push(Some(AlertOutcome::Unmatched));
            }
            Verdict::Disable(rule) => {
                let (flags, refused) = mapping::flags(alert, rule);
                if let Some(why) = refused {
                    tracing::warn!(
                        alertname = alert.name(),
                        fingerprint = %alert.fingerprint,
                        rule = rule.index,
                        reason = %why,
                        "the flag an alert's label names is not turned off"
                    );
                }
                if flags.is_empty() {
                    verdicts.push(Some(AlertOutcome::NotAllowed));
                    continue;
                }
                verdicts.push(None);
                for flag in &flags {
                    let change = mapping::flag_change(&notification.receiver, alert, flag);
                    planned.entry(change.event_id.clone()).or_insert(Planned {
                        change,
                        alert: index,
                        outcome: Ok(None),
                    });
                }
            }
        }
    }
    let mut claims = Vec::with_capacity(planned.len());
    for event_id in planned.keys() {
        claims.push(endpoint.recent.claim(event_id).await);
    }
    let fresh: Vec<&mut Planned> = planned
        .values_mut()
        .zip(claims.iter())
        .filter(|(_, claim)| !***claim)
        .map(|(planned, _)| planned)
        .collect();
    produce(&endpoint, alerts, fresh).await;
    for (planned, claim) in planned.values().zip(claims.iter_mut()) {
        if matches!(planned.outcome, Ok(Some(_))) {
            **claim = true;
        }
    }
    drop(claims);
    answer(&endpoint, alerts, &verdicts, &planned)
}

/// Produces each of `fresh` at once and waits for every delivery report, recording each
/// outcome (partition and offset, or why Kafka does not have it).
async fn produce(endpoint: &Endpoint, alerts: &[Alert], fresh: Vec<&mut Planned>) {
    let messages: Vec<_> = fresh
        .iter()
        .map(|planned| {
            let event =
                crate::contract::flag_change::flag_change_event(&planned.change, mapping::SOURCE);
            let mut message = event.to_binary(Some(&planned.change.flag_key()));
            // The trace context of a `send` span, so the worker's `process` span of this
            // change continues the webhook's trace.
            let _webhook = tracing::info_span!(
                "alertmanager webhook",
                event_id = %planned.change.event_id
            )
            .entered();
            traces::inject_send(&endpoint.topic, &mut message.headers);
            message
        })
        .collect();
    let mut deliveries = Vec::with_capacity(messages.len());
    for message in &messages {
        let record = crate::bus::record::to_record(&endpoint.topic, message);
        deliveries.push(
            endpoint
                .producer
                .send_result(record)
                .map_err(|(error, _)| error),
        );
    }
    for (planned, delivery) in fresh.into_iter().zip(deliveries) {
        let result = match delivery {
            Ok(future) => match future.await {
                Ok(Ok(delivery)) => Ok(Some((delivery.partition, delivery.offset))),
                Ok(Err((error, _))) => Err(error.to_string()),
                Err(_) => Err("the producer was dropped".to_string()),
            },
            Err(error) => Err(error.to_string()),
        };
        let change = &planned.change;
        let alert = &alerts[planned.alert];
        match &result {
            Ok(Some((partition, offset))) => tracing::info!(
                event_id = %change.event_id,
                flag = %change.flag_key(),
                partition,
                offset,
                reason = %mapping::reason(alert),
                "disable requested by an alert: flag change produced"
            ),
            Err(error) => tracing::error!(
                event_id = %change.event_id,
                flag = %change.flag_key(),
                error = %error,
                reason = %mapping::reason(alert),
                "the flag change did not reach Kafka: Alertmanager sends the notification again"
            ),
            Ok(None) => {}
        }
        planned.outcome = result.map_err(|error| format!("{} ({error})", endpoint.topic));
    }
}

/// The answer, with each alert counted under its outcome.
fn answer(
    endpoint: &Endpoint,
    alerts: &[Alert],
    verdicts: &[Option<AlertOutcome>],
    planned: &BTreeMap<String, Planned>,
) -> Response {
    let mut reports = Vec::with_capacity(alerts.len());
    let (mut produced, mut failed, mut duplicate) = (false, false, false);
    for (index, (alert, verdict)) in alerts.iter().zip(verdicts).enumerate() {
        let changes: Vec<&Planned> = planned.values().filter(|p| p.alert == index).collect();
        let outcome = match verdict {
            Some(outcome) => *outcome,
            None if changes.iter().any(|p| p.outcome.is_err()) => AlertOutcome::Failed,
            None if changes.iter().any(|p| matches!(p.outcome, Ok(Some(_)))) => {
                AlertOutcome::Produced
            }
            None => AlertOutcome::Duplicate,
        };
        match outcome {
            AlertOutcome::Failed => failed = true,
            AlertOutcome::Produced => produced = true,
            AlertOutcome::Duplicate => duplicate = true,
            _ => {}
        }
        if outcome == AlertOutcome::Duplicate {
            tracing::info!(
                alertname = alert.name(),
                fingerprint = %alert.fingerprint,
                "alert delivered again: its flag changes were produced already"
            );
        }
        metrics::alertmanager_alert(outcome.as_str());
        let changes: Vec<Value> = changes
            .iter()
            .map(|p| {
                let mut report = json!({
                    "flag": p.change.flag_key(),
                    "event_id": p.change.event_id,
                });
                match &p.outcome {
                    Ok(Some((partition, offset))) => {
                        report["outcome"] = "produced".into();
                        report["topic"] = endpoint.topic.clone().into();
                        report["partition"] = (*partition).into();
                        report["offset"] = (*offset).into();
                    }
                    Ok(None) => report["outcome"] = "duplicate".into(),
                    Err(error) => {
                        report["outcome"] = "failed".into();
                        report["error"] = error.clone().into();
                    }
                }
                report
            })
            .collect();
        reports.push(json!({
            "alertname": alert.name(),
            "fingerprint": alert.fingerprint,
            "outcome": outcome.as_str(),
            "changes": changes,
        }));
    }
    let (status, outcome) = if failed {
        (StatusCode::SERVICE_UNAVAILABLE, "failed")
    } else if produced {
        (StatusCode::OK, "produced")
    } else if duplicate {
        (StatusCode::OK, "duplicate")
    } else {
        (StatusCode::OK, "ignored")
    };
    let mut body = json!({ "outcome": outcome, "alerts": reports });
    if failed {
        body["error"] = "Kafka did not take every flag change: send the notification again".into();
    }
    (status, axum::Json(body)).into_response()
}

fn too_large() -> Response {
    let reason = format!("the body is larger than {MAX_BODY_BYTES} bytes");
    refuse(StatusCode::PAYLOAD_TOO_LARGE, "rejected", &reason)
}

/// Whether `headers` carry `token` as `Authorization: Bearer <token>` or as the password
/// of `Authorization: Basic <base64(user:password)>` (RFC 6750, RFC 7617), compared in
/// constant time (for equal lengths); else why not.
fn authorized(headers: &HeaderMap, token: &str) -> Result<(), &'static str> {
    let Some(presented) = headers.get(header::AUTHORIZATION) else {
        return Err(
            "no Authorization header: set the webhook's http_config.authorization.credentials_file to the token file",
        );
    };
    let presented = presented.as_bytes();
    let matches = |candidate: &[u8]| bool::from(candidate.ct_eq(token.as_bytes()));
    if let Some(bearer) = presented.strip_prefix(b"Bearer ") {
        return if matches(bearer) {
            Ok(())
        } else {
            Err("the Bearer token is not the configured one (alertmanager.token or token_file)")
        };
    }
    if let Some(basic) = presented.strip_prefix(b"Basic ") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(basic)
            .map_err(|_| "the Basic credentials are not base64")?;
        let password = decoded
            .iter()
            .position(|&b| b == b':')
            .map(|colon| &decoded[colon + 1..])
            .ok_or("the Basic credentials have no ':' between user and password")?;
        return if matches(password) {
            Ok(())
        } else {
            Err("the Basic password is not the configured token (alertmanager.token or token_file)")
        };
    }
    Err("the Authorization header is neither Bearer nor Basic")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, value.parse().unwrap());
        headers
    }

    fn basic(user_password: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(user_password)
        )
    }

    #[test]
    fn the_token_as_bearer_or_basic_password_and_nothing_else() {
        assert!(authorized(&with("Bearer s3cret"), "s3cret").is_ok());
        assert!(authorized(&with(&basic("alertmanager:s3cret")), "s3cret").is_ok());
        assert!(authorized(&with(&basic(":s3cret")), "s3cret").is_ok());
        assert!(authorized(&with(&basic("s3cret:")), "s3cret").is_err());
        assert!(authorized(&with(&basic("s3cret")), "s3cret").is_err());
        assert!(authorized(&with("Basic !!!"), "s3cret").is_err());
        assert!(authorized(&with("s3cret"), "s3cret").is_err(), "no scheme");
        assert!(authorized(&with("Bearer s3cre"), "s3cret").is_err());
        assert!(authorized(&with("Bearer s3cret "), "s3cret").is_err());
        assert!(authorized(&with("bearer s3cret"), "s3cret").is_err());
        assert!(authorized(&HeaderMap::new(), "s3cret").is_err());
    }
}
