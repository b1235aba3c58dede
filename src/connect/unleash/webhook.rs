//! In: Unleash webhook events to flag-change events. (Being written: branch unleash-in.)

use tokio_util::sync::CancellationToken;

use super::{AdminApi, UnleashError};
use crate::config::{Config, UnleashConfig};

/// Serves `POST /unleash/webhook` on `unleash.webhook.listen` until `shutdown`.
pub async fn serve(
    _config: &Config,
    _unleash: &UnleashConfig,
    _admin: AdminApi,
    shutdown: CancellationToken,
) -> Result<(), UnleashError> {
    shutdown.cancelled().await;
    Ok(())
}
