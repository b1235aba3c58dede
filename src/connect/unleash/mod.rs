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
    #[error("cannot listen on {addr} (unleash.webhook.listen): {error}")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// The I/O error (in the message, not a separate source: said once).
        error: std::io::Error,
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

/// Checks `[unleash] actor` against the `createdBy` Unleash writes for the token's changes
/// (its user's email, else its username: `extractUsernameFromUser` in Unleash 7), read
/// from `GET /api/admin/user`.
///
/// A wrong actor breaks the loop guard: chaosgate's own changes would come back as a
/// person's and be gated again (with `hold_while_gating`, a passed flag would stay off),
/// so it stops the start with [`UnleashError::Config`] naming the right value. A token
/// Unleash refuses, or an Unleash that cannot be reached, is logged and the bridges start
/// anyway (commands wait for Unleash, or are dead-lettered while the token is refused).
/// An admin token gets a warning: Unleash records its changes as `admin`, like the UI's
/// default user, whose changes would then pass as chaosgate's.
async fn check_actor(admin: &AdminApi, actor: &str) -> Result<(), UnleashError> {
    match admin.token_actor().await {
        Ok(Some(seen)) if seen == actor => {
            if seen == "admin" {
                tracing::warn!(
                    actor,
                    "unleash.actor is \"admin\": changes made as Unleash's default user admin pass as chaosgate's own and are not gated; give chaosgate a user and a personal access token of its own"
                );
            } else {
                tracing::info!(
                    actor,
                    "Unleash records this token's changes as unleash.actor"
                );
            }
            Ok(())
        }
        Ok(Some(seen)) => Err(UnleashError::Config(format!(
            "unleash.actor = {actor:?}, but Unleash records the changes made with unleash.token as {seen:?} (the token's user's email, else its username): set unleash.actor = {seen:?}; otherwise chaosgate's own changes would be gated again"
        ))),
        Ok(None) => {
            tracing::warn!(
                actor,
                "cannot tell whom Unleash records this token's changes as: check that unleash.actor is the createdBy of chaosgate's changes in Unleash's event log"
            );
            Ok(())
        }
        Err(AdminError::Permanent { reason, .. }) => {
            tracing::error!(error = %reason, "Unleash refuses unleash.token: flag commands will be dead-lettered until it is fixed");
            Ok(())
        }
        Err(AdminError::Transient { reason, .. }) => {
            tracing::warn!(error = %reason, "cannot reach Unleash to check unleash.actor; starting anyway");
            Ok(())
        }
    }
}

/// Runs both bridges until `shutdown` is cancelled or one of them fails (then the other
/// is stopped too and the error returned).
pub async fn run(config: &Config, shutdown: CancellationToken) -> Result<(), UnleashError> {
    let unleash = section(config)?;
    let admin = admin_api(unleash)?;
    // Checked before anything starts, so a missing secret fails at once.
    unleash.webhook_token().map_err(UnleashError::Config)?;
    check_actor(&admin, &unleash.actor).await?;
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
