//! Flag services in and out: each bridge turns a flag service's changes into flag-change
//! events on `flag-changes`, and applies the worker's flag commands back to the service.
//!
//! One folder per flag service; in each, the mapping between the service's messages and
//! chaosgate's contracts is plain data and functions, apart from the I/O around it. The
//! bridges reuse `bus`'s Kafka client settings, never the worker's internals: they run
//! in their own process (`chaosgate connect ...`), beside the worker.

pub mod alertmanager;
pub mod flagd;
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
