//! Kafka client settings built from the configuration: bootstrap servers, chaosgate's
//! defaults, and the operator's pass-through librdkafka properties (security settings
//! included), which win over the defaults.

use rdkafka::ClientConfig;

use crate::config::KafkaConfig;

/// librdkafka settings chaosgate changes from librdkafka's defaults, and why.
const DEFAULTS: &[(&str, &str)] = &[
    // The worker's records, commands and transaction requests are small and each waits on
    // the one before: with Nagle's algorithm a small write behind an unacknowledged one
    // waits for the peer's delayed ACK (40 ms on Linux), which showed as the gate
    // overhead's p99.
    ("socket.nagle.disable", "true"),
    // librdkafka doubles the wait before reconnecting to a broker after each failed try,
    // up to `reconnect.backoff.max.ms` (10,000 by default, then -25 % to +50 % jitter:
    // CONFIGURATION.md), so after a broker restart or a spell of resets the worker could
    // sit up to 15 s with the broker back and its partitions unfetched (the soak saw 5 s
    // between the group's assignment and the first fetch). Java clients cap it at 1,000
    // (KIP-144); so does chaosgate: at most one connection attempt a second per broker.
    ("reconnect.backoff.max.ms", "1000"),
];

/// A client configuration with the bootstrap servers, chaosgate's defaults and every
/// pass-through property.
pub(crate) fn client_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &kafka.bootstrap_servers);
    for (key, value) in DEFAULTS {
        config.set(*key, *value);
    }
    for (key, value) in &kafka.properties {
        config.set(key, value);
    }
    config
}

/// The partition ids `metadata` gives for `topic`: none when the topic is absent or the
/// broker reported an error for it (e.g. not created yet).
pub(crate) fn partitions_of(metadata: &rdkafka::metadata::Metadata, topic: &str) -> Vec<i32> {
    metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect()
}
