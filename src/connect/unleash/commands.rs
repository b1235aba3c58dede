//! Out: flag commands applied through the Admin API. (Being written: branch unleash-out.)

use tokio_util::sync::CancellationToken;

use super::{AdminApi, UnleashError};
use crate::config::{Config, UnleashConfig};

/// Consumes `flag-commands` and applies each command until `shutdown`.
pub async fn run(
    _config: &Config,
    _unleash: &UnleashConfig,
    _admin: AdminApi,
    shutdown: CancellationToken,
) -> Result<(), UnleashError> {
    shutdown.cancelled().await;
    Ok(())
}
