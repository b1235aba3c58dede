//! In: the endpoint Unleash's webhook integration posts to, turning each flag event into
//! one flag-change CloudEvent on `kafka.topics.flag_changes`.
//!
//! Served on `[unleash.webhook] listen`:
//! - `POST /unleash/webhook`: the event JSON, as Unleash posts it with no body template
//!   (mapping: [`super::event`]), at most [`MAX_BODY_BYTES`];
//! - `GET /healthz`: 200 `{"status":"ok"}` while the bridges run (no secret needed);
//! - `GET /metrics`: every `chaosgate_*` metric (Prometheus text), with
//!   `chaosgate_unleash_webhooks_total{outcome}`.
//!
//! `Authorization` must be the configured webhook token (`[unleash.webhook] token_file`
//! or `CHAOSGATE_UNLEASH__WEBHOOK__TOKEN`) exactly as Unleash sends the integration's
//! "Authorization" parameter, or `Bearer <token>`; both compared in constant time.
//!
//! | answer | body | outcome | when |
//! |---|---|---|---|
//! | 200 | `{"outcome":"produced","event_id","topic","partition","offset"}` | `produced` | Kafka has the flag change (`acks=all`, idempotent producer) |
//! | 200 | `{"outcome":"duplicate","event_id"}` | `duplicate` | this Unleash event was produced already |
//! | 200 | `{"outcome":"own_change","event_id"}` | `own_change` | `createdBy` is `[unleash] actor`: chaosgate's own change coming back (the loop guard) |
//! | 200 | `{"outcome":"part_of_toggle","event_id"}` | `part_of_toggle` | a strategy event of the transaction that turned the flag on or off (Unleash adds a default strategy when a flag is first turned on): that toggle is the change gated |
//! | 400 | `{"outcome":"rejected","error"}` | `rejected` | the body is not a JSON object |
//! | 401 | `{"outcome":"unauthorized","error"}` | `unauthorized` | `Authorization` missing or wrong |
//! | 413 | `{"outcome":"rejected","error"}` | `rejected` | the body is over [`MAX_BODY_BYTES`] |
//! | 422 | `{"outcome":"rejected","error"}` | `rejected` | a field missing, of the wrong type, or a name chaosgate refuses; `error` names the field |
//! | 422 | `{"outcome":"ignored","error"}` | `ignored` | an event type chaosgate does not map |
//! | 503 | `{"outcome":"failed","error","held_off"}` | `failed` | Kafka did not take the event within [`DELIVERY_TIMEOUT`] (`held_off`: the flag was held off first, see below) |
//! | 503 | `{"outcome":"failed","error"}` | `failed` | the hold could not be set (nothing produced) |
//!
//! The body is read as JSON whatever its `Content-Type`. Every answer but 2xx is logged
//! with its reason. Unleash posts each event once (ky does not retry a POST), waits 10 s
//! for the answer (hence [`DELIVERY_TIMEOUT`]), and records any non-2xx answer as a
//! failed delivery in the integration's event log (`GET /api/admin/addons/{id}/events`;
//! 7.5.1 writes "Webhook request failed with status code: undefined" whatever the
//! status): such an event is not in Kafka unless posted again.
//!
//! Redelivery: the same Unleash event yields one flag change while its id is among the
//! last [`RECENT_IDS`] this process has seen (lost on restart: [`super::recent`]).
//!
//! `hold_while_gating = true`: an `enable` that is not chaosgate's own, whose flag a
//! pipeline of the catalog (`[catalog] path`) routes and gates for `enable` (its
//! `gated_changes`), is turned off through the Admin API *before* the flag change is
//! produced; chaosgate turns it on again when the gate answers `enable`. The off's own
//! echo carries chaosgate's actor and is dropped by the loop guard. The catalog is read
//! once, at start: give the bridge the worker's configuration file, so both read the
//! same catalog. Never held: an unrouted or ungated `enable`, one a `dry_run` pipeline
//! gates (its `enable` command is not applied), a `disable`, an `update`. When the hold
//! cannot be set, nothing is produced (503). When the hold is set but Kafka then does not
//! take the flag change, the flag stays off with no gate to turn it on: the answer is 503
//! with `held_off: true`, and an error log line says to turn it on again in Unleash once
//! Kafka is back (a new change, gated).
//!
//! The rule that keeps it right: a 2xx means Kafka has the flag change (or had it
//! already, or there is none to have); every other answer means it may not, and says so.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use rdkafka::producer::FutureProducer;
use rdkafka::util::Timeout;
use serde_json::json;
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;

use super::event::{self, Refusal};
use super::recent::RecentEvents;
use super::{AdminApi, UnleashError};
use crate::catalog::{Catalog, Unrouted};
use crate::config::{Config, UnleashConfig};
use crate::contract::{ChangeKind, FlagChange};
use crate::gate::decision::{Gating, gating};
use crate::telemetry::{metrics, traces};

/// The path Unleash's webhook integration posts to.
pub const PATH: &str = "/unleash/webhook";

/// The largest body taken, in bytes (256 KiB; a strategy event with its constraints is a
/// few KiB).
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// How many recent event ids the redelivery guard remembers.
pub const RECENT_IDS: usize = 10_000;

/// How long Kafka may take to acknowledge a flag change (librdkafka
/// `message.timeout.ms`, unless `[kafka.properties]` sets it): under the 10 s Unleash
/// waits for an answer (ky's default `timeout`).
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(8);

/// The endpoint's state, shared by every request.
struct Endpoint {
    token: String,
    instance: String,
    source: String,
    actor: String,
    topic: String,
    producer: FutureProducer,
    recent: RecentEvents,
    /// The Admin API, to tell a strategy event that is part of a toggle.
    admin: AdminApi,
    /// With `hold_while_gating`: the Admin API and the catalog that says what is gated.
    hold: Option<(AdminApi, Catalog)>,
}

/// Serves the endpoints on `unleash.webhook.listen` until `shutdown`.
///
/// Errors: the webhook token is not set, the catalog does not load (only with
/// `hold_while_gating`), the producer cannot be created, or the address cannot be bound.
pub async fn serve(
    config: &Config,
    unleash: &UnleashConfig,
    admin: AdminApi,
    shutdown: CancellationToken,
) -> Result<(), UnleashError> {
    let hold = if unleash.hold_while_gating {
        let catalog = Catalog::load(&[&config.catalog.path]).map_err(|problems| {
            let shown: Vec<String> = problems.iter().take(5).map(|p| p.to_string()).collect();
            UnleashError::Config(format!(
                "unleash.hold_while_gating needs the catalog, and {} has {} problems: {}",
                config.catalog.path.display(),
                problems.len(),
                shown.join("; ")
            ))
        })?;
        Some((admin.clone(), catalog))
    } else {
        None
    };
    let instance = unleash.instance_name();
    let endpoint = Arc::new(Endpoint {
        token: unleash.webhook_token().map_err(UnleashError::Config)?,
        source: event::source(&instance),
        instance,
        actor: unleash.actor.clone(),
        topic: config.kafka.topics.flag_changes.clone(),
        producer: producer(config)?,
        recent: RecentEvents::new(RECENT_IDS),
        admin,
        hold,
    });
    let addr = unleash.webhook.listen;
    let (listener, bound) = crate::connect::bind(addr)
        .await
        .map_err(|error| UnleashError::Listen { addr, error })?;
    let app = Router::new()
        .route(PATH, post(webhook))
        .with_state(endpoint.clone());
    tracing::info!(
        addr = %bound,
        path = PATH,
        topic = %endpoint.topic,
        hold_while_gating = endpoint.hold.is_some(),
        "serving the Unleash webhook"
    );
    crate::connect::serve_webhook(listener, app, MAX_BODY_BYTES, shutdown)
        .await
        .map_err(|error| UnleashError::Listen { addr, error })
}

/// The idempotent producer of flag changes: `enable.idempotence=true`, `acks=all`, and
/// [`DELIVERY_TIMEOUT`] unless the operator's properties set `message.timeout.ms`.
fn producer(config: &Config) -> Result<FutureProducer, UnleashError> {
    crate::connect::flag_change_producer(&config.kafka, DELIVERY_TIMEOUT)
        .map_err(|e| UnleashError::Kafka(format!("cannot create the flag-change producer: {e}")))
}

/// An answer with a JSON body, counted under `outcome`.
fn answer(status: StatusCode, outcome: &'static str, body: serde_json::Value) -> Response {
    metrics::unleash_webhook(outcome);
    (status, axum::Json(body)).into_response()
}

/// A refusal: logged at warn with its reason, answered with it.
fn refuse(status: StatusCode, outcome: &'static str, error: &str) -> Response {
    tracing::warn!(outcome, status = status.as_u16(), reason = %error, "Unleash webhook refused");
    answer(
        status,
        outcome,
        json!({ "outcome": outcome, "error": error }),
    )
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
            header::HeaderValue::from_static("Bearer realm=\"chaosgate unleash webhook\""),
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
    let change = match event::flag_change(&body, &endpoint.instance) {
        Ok(change) => change,
        Err(refusal) => return refused(&refusal),
    };
    let event_id = change.event_id.clone();
    let key = change.flag_key();
    if event::is_own(&change, &endpoint.actor) {
        tracing::info!(
            event_id = %event_id,
            flag = %key,
            kind = change.change.kind.as_str(),
            "chaosgate's own change came back from Unleash: not gated again"
        );
        return answer(
            StatusCode::OK,
            "own_change",
            json!({ "outcome": "own_change", "event_id": event_id }),
        );
    }
    let mut claim = endpoint.recent.claim(&event_id).await;
    if *claim {
        tracing::info!(event_id = %event_id, flag = %key, "Unleash event delivered again: already produced");
        return answer(
            StatusCode::OK,
            "duplicate",
            json!({ "outcome": "duplicate", "event_id": event_id }),
        );
    }
    if let Some(group) = event::strategy_group(&body) {
        match endpoint.admin.events_in_group(&group).await {
            Ok(events) if event::is_part_of_toggle(&events, &change) => {
                *claim = true;
                tracing::info!(
                    event_id = %event_id,
                    flag = %key,
                    group = %group,
                    "strategy change made with turning the flag on or off: that change is the one gated"
                );
                return answer(
                    StatusCode::OK,
                    "part_of_toggle",
                    json!({ "outcome": "part_of_toggle", "event_id": event_id }),
                );
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(
                event_id = %event_id,
                flag = %key,
                group = %group,
                error = %error,
                "cannot read the strategy change's transaction group from Unleash: it is gated on its own"
            ),
        }
    }
    let held = match hold(&endpoint, &change).await {
        Ok(held) => held,
        Err(reason) => {
            tracing::error!(event_id = %event_id, flag = %key, reason = %reason, "cannot hold the flag off while it is gated: no flag change produced");
            let error = format!("cannot hold the flag off while it is gated: {reason}");
            return answer(
                StatusCode::SERVICE_UNAVAILABLE,
                "failed",
                json!({ "outcome": "failed", "error": error }),
            );
        }
    };
    match produce(&endpoint, &change).await {
        Ok((partition, offset)) => {
            *claim = true;
            tracing::info!(
                event_id = %event_id,
                flag = %key,
                kind = change.change.kind.as_str(),
                held,
                partition,
                offset,
                "flag change produced"
            );
            answer(
                StatusCode::OK,
                "produced",
                json!({
                    "outcome": "produced",
                    "event_id": event_id,
                    "topic": endpoint.topic,
                    "partition": partition,
                    "offset": offset,
                }),
            )
        }
        Err(reason) => {
            if held {
                tracing::error!(
                    event_id = %event_id,
                    flag = %key,
                    reason = %reason,
                    "the flag is held OFF in Unleash but its flag change did not reach Kafka, so \
                     no gate will turn it on: turn it on again in Unleash once Kafka is back \
                     (that is a new change, and is gated)"
                );
            } else {
                tracing::error!(event_id = %event_id, flag = %key, reason = %reason, "the flag change did not reach Kafka");
            }
            let error = format!("Kafka did not take the flag change: {reason}");
            answer(
                StatusCode::SERVICE_UNAVAILABLE,
                "failed",
                json!({ "outcome": "failed", "error": error, "held_off": held }),
            )
        }
    }
}

fn too_large() -> Response {
    let reason = format!("the body is larger than {MAX_BODY_BYTES} bytes");
    refuse(StatusCode::PAYLOAD_TOO_LARGE, "rejected", &reason)
}

fn refused(refusal: &Refusal) -> Response {
    let status = StatusCode::from_u16(refusal.status()).unwrap_or(StatusCode::BAD_REQUEST);
    refuse(status, refusal.outcome(), refusal.reason())
}

/// Whether `headers` carry `token` as `Authorization: <token>` or `Bearer <token>`,
/// compared in constant time (for equal lengths); else why not.
fn authorized(headers: &HeaderMap, token: &str) -> Result<(), &'static str> {
    let Some(presented) = headers.get(header::AUTHORIZATION) else {
        return Err(
            "no Authorization header: set the webhook integration's Authorization to the webhook token",
        );
    };
    let presented = presented.as_bytes();
    let bare = presented
        .strip_prefix(b"Bearer ")
        .filter(|_| !token.starts_with("Bearer "))
        .unwrap_or(presented);
    if bool::from(bare.ct_eq(token.as_bytes())) {
        Ok(())
    } else {
        Err("the Authorization header is not the webhook token")
    }
}

/// With `hold_while_gating`, turns `change`'s flag off when it is a gated `enable`
/// (see the module doc); whether it did. Errors: the Admin API's answer.
async fn hold(endpoint: &Endpoint, change: &FlagChange) -> Result<bool, String> {
    let Some((admin, catalog)) = &endpoint.hold else {
        return Ok(false);
    };
    if !is_held(catalog, change) {
        return Ok(false);
    }
    admin
        .set_enabled(&change.project, &change.environment, &change.flag, false)
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!(
        event_id = %change.event_id,
        flag = %change.flag_key(),
        "flag held off in Unleash while its gate runs"
    );
    Ok(true)
}

/// Whether `change` is an `enable` a pipeline of `catalog` routes and gates: what
/// `hold_while_gating` holds off. Not under a `dry_run` pipeline: its `enable` command is
/// not applied, so a held flag would stay off.
fn is_held(catalog: &Catalog, change: &FlagChange) -> bool {
    if change.change.kind != ChangeKind::Enable {
        return false;
    }
    let Some(pipeline) = catalog.pipeline_for(&change.project, &change.environment, &change.flag)
    else {
        return false;
    };
    !pipeline.dry_run && gating(change, Some(pipeline), Unrouted::Enable) == Gating::Gate
}

/// Produces `change` as a binary-mode CloudEvent keyed by its flag, waiting for the
/// delivery report: the partition and offset, or why Kafka does not have it.
async fn produce(endpoint: &Endpoint, change: &FlagChange) -> Result<(i32, i64), String> {
    let event = crate::contract::flag_change::flag_change_event(change, &endpoint.source);
    let key = change.flag_key();
    let mut message = event.to_binary(Some(&key));
    {
        // The trace context of a `send` span, as the worker's outputs carry, so the
        // worker's `process` span of this change continues the webhook's trace.
        let _webhook =
            tracing::info_span!("unleash webhook", event_id = %change.event_id).entered();
        traces::inject_send(&endpoint.topic, &mut message.headers);
    }
    let record = crate::bus::record::to_record(&endpoint.topic, &message);
    endpoint
        .producer
        .send(record, Timeout::After(DELIVERY_TIMEOUT))
        .await
        .map(|delivery| (delivery.partition, delivery.offset))
        .map_err(|(error, _)| format!("{} ({error})", endpoint.topic))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, value.parse().unwrap());
        headers
    }

    #[test]
    fn the_token_raw_or_as_bearer_and_nothing_else() {
        assert!(authorized(&with("s3cret"), "s3cret").is_ok());
        assert!(authorized(&with("Bearer s3cret"), "s3cret").is_ok());
        assert!(authorized(&with("s3cret "), "s3cret").is_err());
        assert!(authorized(&with("Bearer s3cre"), "s3cret").is_err());
        assert!(authorized(&with("bearer s3cret"), "s3cret").is_err());
        assert!(authorized(&HeaderMap::new(), "s3cret").is_err());
        // A token that itself starts with "Bearer " is matched whole.
        assert!(authorized(&with("Bearer x"), "Bearer x").is_ok());
        assert!(authorized(&with("x"), "Bearer x").is_err());
    }

    #[test]
    fn only_routed_gated_enables_are_held() {
        use crate::catalog::pipeline::pipeline_example;
        use crate::contract::flag_change::flag_change_example;
        let experiment = crate::catalog::experiment::experiment_example();
        let catalog = Catalog::from_parts(vec![pipeline_example()], vec![experiment.clone()])
            .unwrap_or_else(|p| panic!("{p:?}"));
        // The example pipeline routes shop/production/checkout-* and gates enable, update.
        let mut change = flag_change_example();
        assert!(is_held(&catalog, &change));
        change.change.kind = ChangeKind::Update;
        assert!(!is_held(&catalog, &change), "an update is not held");
        change.change.kind = ChangeKind::Disable;
        assert!(!is_held(&catalog, &change));
        let mut unrouted = flag_change_example();
        unrouted.flag = "search-v2".into();
        assert!(!is_held(&catalog, &unrouted), "no route takes it");
        let mut dry_run = pipeline_example();
        dry_run.dry_run = true;
        let catalog = Catalog::from_parts(vec![dry_run], vec![experiment.clone()])
            .unwrap_or_else(|p| panic!("{p:?}"));
        assert!(!is_held(&catalog, &flag_change_example()), "a dry run");
        let mut updates_only = pipeline_example();
        updates_only.gated_changes = vec![crate::catalog::pipeline::GatedChange::Update];
        let catalog = Catalog::from_parts(vec![updates_only], vec![experiment])
            .unwrap_or_else(|p| panic!("{p:?}"));
        assert!(
            !is_held(&catalog, &flag_change_example()),
            "enable not gated"
        );
    }
}
