//! Flag services in and out: each bridge turns a flag service's changes into flag-change
//! events on `flag-changes`, and applies the worker's flag commands back to the service.
//!
//! One folder per flag service; in each, the mapping between the service's messages and
//! chaosgate's contracts is plain data and functions, apart from the I/O around it. The
//! bridges reuse `bus`'s Kafka client settings, never the worker's internals: they run
//! in their own process (`chaosgate connect ...`), beside the worker.

pub mod alertmanager;
pub mod flagd;
pub mod notify;
pub(crate) mod retry;
pub mod unleash;

/// The idempotent producer of flag changes a bridge publishes: the worker's client
/// settings (`bus::client`), `enable.idempotence=true`, `acks=all`, `linger.ms=0`, and
/// `delivery_timeout` as `message.timeout.ms` unless the operator's properties set it.
/// Errors: librdkafka's, when the client cannot be created.
pub(crate) fn flag_change_producer(
    kafka: &crate::config::KafkaConfig,
    delivery_timeout: std::time::Duration,
) -> Result<rdkafka::producer::FutureProducer, rdkafka::error::KafkaError> {
    let mut client = crate::bus::client::client_config(kafka);
    if client.get("message.timeout.ms").is_none() {
        client.set(
            "message.timeout.ms",
            delivery_timeout.as_millis().to_string(),
        );
    }
    client
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "0");
    client.create()
}

/// Binds `addr` for a bridge's endpoint: the listener and the address it got (the port
/// chosen when `addr`'s is 0).
pub(crate) async fn bind(
    addr: std::net::SocketAddr,
) -> std::io::Result<(tokio::net::TcpListener, std::net::SocketAddr)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    Ok((listener, bound))
}

/// Serves a bridge's webhook `app` (its routes, with their state) on `listener` until
/// `shutdown`, beside `GET /healthz` (200 `{"status": "ok"}` while it serves) and
/// `GET /metrics`; a body over `max_body` bytes is refused with 413.
pub(crate) async fn serve_webhook(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    max_body: usize,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    use axum::routing::get;
    let app = app
        .route("/healthz", get(healthz))
        .route("/metrics", get(crate::telemetry::http::metrics_text))
        .layer(axum::extract::DefaultBodyLimit::max(max_body));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

async fn healthz() -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({ "status": "ok" }))
}
