//! Sending a control request: what `chaosgate approve` and `chaosgate reject` do, so an
//! operator answers an approval step without writing a CloudEvent by hand.
//!
//! The request goes to the control topic (`kafka.topics.control`) as a binary-mode
//! CloudEvent of type [`APPROVAL_REQUEST_TYPE`], keyed by the execution id, with an
//! idempotent producer (`acks=all`); sending returns once Kafka has it. Who may send one
//! is who may write the topic (Kafka ACLs).

use std::time::Duration;

use chrono::Utc;
use rdkafka::producer::FutureProducer;

use crate::config::KafkaConfig;
use crate::contract::control::APPROVAL_REQUEST_TYPE;
use crate::contract::{ApprovalRequest, CloudEvent};

use super::record::to_record;

/// How long a send may take before it is given up.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a request was not sent.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The producer could not be created from the configuration.
    #[error("cannot create a Kafka producer: {0}")]
    Client(rdkafka::error::KafkaError),
    /// Kafka did not take the record within the send timeout.
    #[error("Kafka ({servers}) did not take the request on topic {topic}: {error}")]
    Delivery {
        /// `kafka.bootstrap_servers`.
        servers: String,
        /// The control topic.
        topic: String,
        /// librdkafka's error.
        error: rdkafka::error::KafkaError,
    },
}

/// Where the flag-state topic says execution `execution_id` waits for approval:
/// `Some(Some("stage-id/step-id"))`, `Some(None)` when it does not, `None` when the topic
/// could not be read within [`super::flag_state::CATCH_UP_LIMIT`].
pub async fn waiting_for_approval(
    kafka: &KafkaConfig,
    flag_state_topic: &str,
    execution_id: &str,
) -> Option<Option<String>> {
    let states = super::flag_state::FlagStates::new(
        super::client::client_config(kafka),
        flag_state_topic.to_string(),
    );
    let stop = tokio_util::sync::CancellationToken::new();
    let reader = tokio::spawn(super::flag_state::listen(states.clone(), stop.clone()));
    let limit = super::flag_state::CATCH_UP_LIMIT + Duration::from_secs(1);
    let read = tokio::time::timeout(limit, states.caught_up())
        .await
        .is_ok()
        && states.read_all();
    stop.cancel();
    let _ = reader.await;
    read.then(|| states.waiting_for_approval(execution_id))
}

/// Sends `request` on the control topic `topic`; returns its (partition, offset).
pub async fn send_approval(
    kafka: &KafkaConfig,
    topic: &str,
    request: &ApprovalRequest,
) -> Result<(i32, i64), SendError> {
    let mut client = super::client::client_config(kafka);
    client
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "0")
        .set("message.timeout.ms", SEND_TIMEOUT.as_millis().to_string());
    let producer: FutureProducer = client.create().map_err(SendError::Client)?;
    let event = CloudEvent {
        id: uuid::Uuid::new_v4().to_string(),
        source: "/chaosgate/cli".to_string(),
        event_type: APPROVAL_REQUEST_TYPE.to_string(),
        time: Some(Utc::now()),
        subject: Some(request.pipeline_execution_id.clone()),
        extensions: Default::default(),
        data: serde_json::to_value(request).unwrap_or_default(),
    };
    let message = event.to_binary(Some(&request.pipeline_execution_id));
    producer
        .send(to_record(topic, &message), SEND_TIMEOUT)
        .await
        .map(|delivered| (delivered.partition, delivered.offset))
        .map_err(|(error, _)| SendError::Delivery {
            servers: kafka.bootstrap_servers.clone(),
            topic: topic.to_string(),
            error,
        })
}
