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

/// A second single-node broker of our own (own ports, own data dir), so stopping it
/// disturbs no other test. Stopped and deleted when dropped.
pub struct OwnBroker {
    port: u16,
    controller_port: u16,
    dir: tempfile::TempDir,
}

impl OwnBroker {
    fn free_port() -> u16 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("address").port()
    }

    pub async fn start() -> OwnBroker {
        let broker = OwnBroker {
            port: Self::free_port(),
            controller_port: Self::free_port(),
            dir: tempfile::Builder::new()
                .prefix("chaosgate-outage-broker-")
                .tempdir()
                .expect("temp dir"),
        };
        broker.script("start").await;
        broker
    }

    pub fn servers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn command(&self, action: &str) -> std::process::Command {
        let mut command = std::process::Command::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/local/kafka.sh"
        ));
        command
            .arg(action)
            .env("KAFKA_PORT", self.port.to_string())
            .env("KAFKA_CONTROLLER_PORT", self.controller_port.to_string())
            .env("KAFKA_RUN_DIR", self.dir.path())
            .env_remove("KAFKA_SASL_PORT")
            .env("KAFKA_HEAP_OPTS", "-Xms128m -Xmx512m");
        command
    }

    /// Runs `kafka.sh ACTION` for this broker and fails the test when it fails.
    pub async fn script(&self, action: &str) {
        let mut command = self.command(action);
        let output = tokio::task::spawn_blocking(move || command.output())
            .await
            .expect("join")
            .expect("run kafka.sh");
        assert!(
            output.status.success(),
            "kafka.sh {action} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        let _ = self.command("clean").output();
    }
}
