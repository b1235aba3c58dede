//! Kafka client settings built from the configuration: bootstrap servers plus the
//! operator's pass-through librdkafka properties (security settings included).

use rdkafka::ClientConfig;

use crate::config::KafkaConfig;

/// A client configuration with the bootstrap servers and every pass-through property.
pub fn client_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &kafka.bootstrap_servers);
    for (key, value) in &kafka.properties {
        config.set(key, value);
    }
    config
}
