//! The Alertmanager receiver, run by `chaosgate connect alertmanager`: Prometheus
//! Alertmanager's webhook posts alert groups ([`payload`]); each firing alert a configured
//! rule matches becomes an immediate `disable` of the rule's flags ([`mapping`]), produced
//! on `flag-changes` before the webhook is answered 2xx ([`endpoint`]).
//!
//! One way only: Alertmanager never learns what chaosgate did, and a resolved alert turns
//! nothing back on. The worker passes each `disable` on at once as a `requested` change,
//! and the flag service's bridge applies the command.

pub mod endpoint;
pub mod mapping;
pub mod payload;

use tokio_util::sync::CancellationToken;

use crate::config::{AlertmanagerConfig, Config};

/// Why the Alertmanager receiver could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum AlertmanagerError {
    /// The configuration has no `[alertmanager]` section, or a value in it is unusable.
    #[error("configuration: {0}")]
    Config(String),
    /// The Kafka producer could not be created.
    #[error("Kafka: {0}")]
    Kafka(String),
    /// The endpoint could not listen.
    #[error("cannot listen on {addr} (alertmanager.listen): {error}")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// The I/O error (in the message, not a separate source: said once).
        error: std::io::Error,
    },
}

/// The `[alertmanager]` section of `config`, checked: the token is set and every rule
/// is usable; else [`AlertmanagerError::Config`] naming the key.
pub fn section(config: &Config) -> Result<&AlertmanagerConfig, AlertmanagerError> {
    let section = config.alertmanager.as_ref().ok_or_else(|| {
        AlertmanagerError::Config(
            "no [alertmanager] section: set alertmanager.token_file and at least one [[alertmanager.rules]] (docs/alertmanager.md)"
                .into(),
        )
    })?;
    section.token().map_err(AlertmanagerError::Config)?;
    section
        .resolved_rules()
        .map_err(AlertmanagerError::Config)?;
    Ok(section)
}

/// Runs the receiver until `shutdown` is cancelled.
pub async fn run(config: &Config, shutdown: CancellationToken) -> Result<(), AlertmanagerError> {
    let section = section(config)?;
    endpoint::serve(config, section, shutdown).await
}
