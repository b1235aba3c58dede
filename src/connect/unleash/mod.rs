//! The Unleash bridges, run by `chaosgate connect unleash`:
//!
//! - in ([`webhook`]): Unleash's webhook integration posts each flag event; the bridge
//!   turns it into one flag-change CloudEvent on `flag-changes` and answers 2xx only once
//!   Kafka has it;
//! - out ([`commands`]): a `read_committed` consumer of `flag-commands` applies each
//!   command through the Admin API ([`admin`]).
//!
//! The two meet in Unleash only: chaosgate's own `enable`/`disable` come back as webhook
//! events whose `createdBy` is [`UnleashConfig::actor`], and the webhook side drops them
//! (the loop guard), so a change is gated once.

pub mod admin;
mod apply;
pub mod commands;
pub mod event;
pub mod memory;
pub mod order;
pub mod progress;
pub mod recent;
pub mod record;
pub mod strategy;
pub mod webhook;

use tokio_util::sync::CancellationToken;

use crate::config::{Config, UnleashConfig};
pub use admin::{AdminApi, AdminError};

/// Why the Unleash bridges could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum UnleashError {
    /// The configuration has no `[unleash]` section, or a value in it is unusable.
    #[error("configuration: {0}")]
    Config(String),
    /// A Kafka client could not be created or failed for good.
    #[error("Kafka: {0}")]
    Kafka(String),
    /// The webhook endpoint could not listen.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// The `[unleash]` section of `config`, or [`UnleashError::Config`] naming it.
pub fn section(config: &Config) -> Result<&UnleashConfig, UnleashError> {
    config.unleash.as_ref().ok_or_else(|| {
        UnleashError::Config(
            "no [unleash] section: set at least unleash.url and the tokens (README, \"Connect Unleash\")"
                .into(),
        )
    })
}

/// The Admin API client of `unleash`: its URL, token and request timeout.
pub fn admin_api(unleash: &UnleashConfig) -> Result<AdminApi, UnleashError> {
    let token = unleash.api_token().map_err(UnleashError::Config)?;
    AdminApi::new(&unleash.url, token, unleash.request_timeout.duration())
        .map_err(UnleashError::Config)
}

/// Runs both bridges until `shutdown` is cancelled or one of them fails (then the other
/// is stopped too and the error returned).
pub async fn run(config: &Config, shutdown: CancellationToken) -> Result<(), UnleashError> {
    let unleash = section(config)?;
    let admin = admin_api(unleash)?;
    // Checked before anything starts, so a missing secret fails at once.
    unleash.webhook_token().map_err(UnleashError::Config)?;
    let stop_both = shutdown.child_token();
    let webhook = async {
        let result = webhook::serve(config, unleash, admin.clone(), stop_both.clone()).await;
        stop_both.cancel();
        result
    };
    let commands = async {
        let result = commands::run(config, unleash, admin.clone(), stop_both.clone()).await;
        stop_both.cancel();
        result
    };
    let (webhook, commands) = tokio::join!(webhook, commands);
    webhook.and(commands)
}
