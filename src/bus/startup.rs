//! Start-up: the cluster is reachable, accepts our credentials and has the topics (created
//! when `kafka.create_topics` is set), and this instance knows its stable ids.
//!
//! The rule: an unreachable cluster is waited for (with backoff, until shutdown), but a
//! cluster that refuses us or lacks a topic stops the worker at once with an error that
//! names the servers and the topics, before anything is consumed.

use std::sync::Mutex;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// Why the worker could not start on the cluster.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// A Kafka client could not be created from the configuration.
    #[error("invalid Kafka client configuration: {0}")]
    Client(KafkaError),
    /// Topics the worker needs do not exist.
    #[error(
        "topics missing on the cluster at {servers}: {topics} (create them, or set kafka.create_topics = true)"
    )]
    MissingTopics {
        /// `kafka.bootstrap_servers`.
        servers: String,
        /// The missing topics, comma-separated (with why one could not be created).
        topics: String,
    },
    /// The cluster refused us (authentication, authorization).
    #[error("Kafka refused the connection at {servers}: {message}")]
    Refused {
        /// `kafka.bootstrap_servers`.
        servers: String,
        /// What the client said.
        message: String,
    },
}

/// Checks the topics exist, creating them when `kafka.create_topics` is set. Waits for an
/// unreachable cluster (with backoff) until `shutdown` fires, which ends the wait early.
pub(crate) async fn ensure_topics(
    config: &Config,
    client: &ClientConfig,
    shutdown: &CancellationToken,
) -> Result<(), StartupError> {
    let topics = &config.kafka.topics;
    let wanted = [
        topics.flag_changes.as_str(),
        topics.runs.as_str(),
        topics.commands.as_str(),
        topics.dead_letter.as_str(),
        topics.control.as_str(),
        topics.approved_flags.as_str(),
        topics.flag_state.as_str(),
    ];
    let servers = config.kafka.bootstrap_servers.clone();
    let probe: BaseConsumer<RefusalWatch> = client
        .create_with_context(RefusalWatch::default())
        .map_err(StartupError::Client)?;
    let metadata = {
        let mut delays = backon::BackoffBuilder::build(
            backon::ExponentialBuilder::default()
                .with_jitter()
                .with_max_delay(Duration::from_secs(10))
                .without_max_times(),
        );
        loop {
            match tokio::task::block_in_place(|| probe.fetch_metadata(None, Duration::from_secs(5)))
            {
                Ok(metadata) => break metadata,
                Err(error) if is_refusal(&error) => {
                    return Err(StartupError::Refused {
                        servers,
                        message: error.to_string(),
                    });
                }
                // A refused login fails the fetch as a transport failure; the reason
                // comes as an error event.
                Err(_)
                    if let Some(message) = tokio::task::block_in_place(|| {
                        let _ = probe.poll(Duration::from_millis(50));
                        probe.context().refusal()
                    }) =>
                {
                    return Err(StartupError::Refused { servers, message });
                }
                Err(error) => {
                    let wait = delays.next().unwrap_or(Duration::from_secs(10));
                    tracing::warn!(%error, %servers, ?wait, "Kafka not reachable yet; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = shutdown.cancelled() => return Ok(()),
                    }
                }
            }
        }
    };
    let missing: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|t| {
            !metadata
                .topics()
                .iter()
                .any(|m| m.name() == *t && m.error().is_none())
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !config.kafka.create_topics {
        return Err(StartupError::MissingTopics {
            servers,
            topics: missing.join(", "),
        });
    }
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        client.create().map_err(StartupError::Client)?;
    let new: Vec<rdkafka::admin::NewTopic> = missing
        .iter()
        .map(|t| {
            let topic = rdkafka::admin::NewTopic::new(
                t,
                config.kafka.topic_partitions,
                rdkafka::admin::TopicReplication::Fixed(-1),
            );
            // The newest approved definition and state of each flag are kept for ever.
            if *t == topics.approved_flags || *t == topics.flag_state {
                topic.set("cleanup.policy", "compact")
            } else {
                topic
            }
        })
        .collect();
    let results = admin
        .create_topics(&new, &rdkafka::admin::AdminOptions::new())
        .await
        .map_err(StartupError::Client)?;
    for result in results {
        match result {
            Ok(topic) => tracing::info!(%topic, "topic created"),
            Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(StartupError::MissingTopics {
                    servers,
                    topics: format!("{topic} (cannot create: {code})"),
                });
            }
        }
    }
    Ok(())
}

/// A client context that remembers the cluster refusing us (a failed SASL login, say):
/// librdkafka reports it as an error event, served by polling, while the call that
/// met it fails as a mere transport failure.
#[derive(Default)]
struct RefusalWatch {
    refusal: Mutex<Option<String>>,
}

impl RefusalWatch {
    fn refusal(&self) -> Option<String> {
        self.refusal.lock().ok().and_then(|r| r.clone())
    }
}

impl ClientContext for RefusalWatch {
    fn error(&self, error: KafkaError, reason: &str) {
        if is_refusal(&error) {
            if let Ok(mut refusal) = self.refusal.lock() {
                *refusal = Some(reason.to_string());
            }
        } else {
            tracing::warn!(%error, reason, "Kafka client error");
        }
    }
}

impl ConsumerContext for RefusalWatch {}

fn is_refusal(error: &KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as Code;
    matches!(
        error.rdkafka_error_code(),
        Some(
            Code::Authentication
                | Code::SaslAuthenticationFailed
                | Code::TopicAuthorizationFailed
                | Code::GroupAuthorizationFailed
                | Code::ClusterAuthorizationFailed
                | Code::InvalidArgument
        )
    )
}

/// This instance's transactional id: `kafka.transactional_id`, else
/// `<kafka.transactional_id_prefix>-<instance id>`, the instance id being
/// `worker.instance_id` or the host name. It is also the consumer's `group.instance.id`
/// under static membership, so both stay stable across restarts of one instance.
pub(crate) fn transactional_id(config: &Config) -> String {
    config.kafka.transactional_id.clone().unwrap_or_else(|| {
        let instance = config.worker.instance_id.clone().unwrap_or_else(host_name);
        format!("{}-{instance}", config.kafka.transactional_id_prefix)
    })
}

/// `$HOSTNAME`, else `/etc/hostname`, else `worker`.
fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_transactional_id_names_the_instance() {
        let text = "[kafka]\nbootstrap_servers = \"b:9092\"\ntransactional_id_prefix = \"cg\"\n\
                    [catalog]\npath = \"c\"\n[worker]\ninstance_id = \"host-2\"\n";
        let config = Config::parse(text, "c.toml", Vec::new()).expect("config");
        assert_eq!(transactional_id(&config), "cg-host-2");
        let explicit = text.replace(
            "transactional_id_prefix = \"cg\"",
            "transactional_id = \"mine\"",
        );
        let config = Config::parse(&explicit, "c.toml", Vec::new()).expect("config");
        assert_eq!(transactional_id(&config), "mine");
    }
}
