//! Notifications: the gate's events told to people, through webhooks (a structured
//! CloudEvent) and Slack-compatible incoming webhooks (a readable `text`), as the
//! `[notify]` section of the configuration chooses (docs/notifications.md).
//!
//! Run inside `chaosgate run` beside the worker, and apart from it: each receiver has
//! its own `read_committed` consumer group (`<kafka.group_id>-notify-<name>`) on
//! `flag-commands` and `chaos-experiment-runs`, so notifications come only from what the
//! worker committed, are sent outside its transactions, and a receiver that is slow or
//! down lags only its own group, never the gate ([`consumer`]). Each notification is
//! tried until delivered or given up ([`deliver`]), at least once, with an idempotency
//! key that is the same on every try and redelivery ([`event::key`]).

pub mod consumer;
pub mod deliver;
pub mod event;
pub mod message;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::{Config, ReceiverKind};
use deliver::Receiver;

/// Why the notifier could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// A value of `[notify]` is unusable (a file that cannot be read, say), named by its
    /// key.
    #[error("configuration: {0}")]
    Config(String),
    /// A Kafka client could not be created.
    #[error("Kafka: {0}")]
    Kafka(String),
}

/// The consumers' setups of `config`'s receivers: URLs and secrets read, clients built.
/// Empty without a `[notify]` section or receivers.
///
/// Errors: [`NotifyError::Config`] naming the key (`notify.receivers[1].url_file ...`).
pub fn setups(config: &Config) -> Result<Vec<consumer::Setup>, NotifyError> {
    let Some(notify) = &config.notify else {
        return Ok(Vec::new());
    };
    notify.check().map_err(NotifyError::Config)?;
    let mut setups = Vec::new();
    for (index, receiver) in notify.receivers.iter().enumerate() {
        let url = receiver.url(index).map_err(NotifyError::Config)?;
        let secret = receiver.secret(index).map_err(NotifyError::Config)?;
        let http = Receiver::client(receiver.timeout.duration())
            .map_err(|e| NotifyError::Config(format!("notify.receivers[{index}]: {e}")))?;
        setups.push(consumer::Setup {
            receiver: Arc::new(Receiver {
                name: receiver.name.clone(),
                kind: receiver.kind,
                url,
                secret,
                max_elapsed: receiver.max_elapsed.duration(),
                http,
            }),
            events: receiver.events.clone(),
            view_url: notify.view_url.clone(),
            max_in_flight: match receiver.kind {
                ReceiverKind::Webhook => consumer::MAX_IN_FLIGHT,
                ReceiverKind::Slack => 1,
            },
        });
    }
    Ok(setups)
}

/// Runs one consumer per receiver of `setups`, each in a task of its own, until
/// `shutdown`; returns when all have stopped, with the first error (a consumer that
/// fails does not stop the others).
pub async fn run(
    config: Arc<Config>,
    setups: Vec<consumer::Setup>,
    shutdown: CancellationToken,
) -> Result<(), NotifyError> {
    // The worker creates missing topics at start (`kafka.create_topics`); the consumers
    // subscribe once the topics exist, rather than log that they do not yet.
    let client = crate::bus::client::client_config(&config.kafka);
    crate::bus::startup::ensure_topics(&config, &client, &shutdown)
        .await
        .map_err(|error| NotifyError::Kafka(error.to_string()))?;
    let mut tasks = tokio::task::JoinSet::new();
    for setup in setups {
        let (config, shutdown) = (config.clone(), shutdown.clone());
        tasks.spawn(async move { consumer::run(&config, setup, shutdown).await });
    }
    let mut first = Ok(());
    while let Some(joined) = tasks.join_next().await {
        let result = joined.unwrap_or_else(|error| {
            Err(NotifyError::Kafka(format!(
                "a receiver's consumer failed: {error}"
            )))
        });
        if let Err(error) = result {
            tracing::error!(%error, "a receiver's notifications stopped");
            if first.is_ok() {
                first = Err(error);
            }
        }
    }
    first
}
