//! The real Kafka broker tests run against: `KAFKA_BOOTSTRAP_SERVERS`, or the local broker
//! that `deploy/local/kafka.sh start` runs on 127.0.0.1:19092. No broker is a test failure.

#![allow(dead_code)]

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};

/// The broker's bootstrap servers.
pub fn bootstrap() -> String {
    std::env::var("KAFKA_BOOTSTRAP_SERVERS").unwrap_or_else(|_| "127.0.0.1:19092".to_string())
}

/// Panics with instructions when no broker answers within 15 s.
pub fn require_broker() -> String {
    let servers = bootstrap();
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &servers)
        .create()
        .expect("create probe consumer");
    if let Err(e) = consumer.fetch_metadata(None, Duration::from_secs(15)) {
        panic!(
            "no Kafka broker at {servers} ({e}); start one with `deploy/local/kafka.sh start` \
             or set KAFKA_BOOTSTRAP_SERVERS"
        );
    }
    servers
}

/// A topic name no other test run uses.
pub fn unique_topic(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// Creates `topics` with `partitions` partitions each and waits for them.
pub async fn create_topics(servers: &str, topics: &[&str], partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", servers)
        .create()
        .expect("create admin client");
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1)))
        .collect();
    let results = admin
        .create_topics(
            &new,
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .expect("create topics");
    for result in results {
        if let Err((topic, code)) = result {
            assert_eq!(
                code,
                rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists,
                "creating {topic}"
            );
        }
    }
}
