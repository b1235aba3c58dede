//! The folder of proposed flag definitions: each change of a flag becomes one flag
//! change on `flag-changes`.
//!
//! OWNER: helper "flagd-propose".

use std::path::Path;

use tokio_util::sync::CancellationToken;

use super::FlagdError;
use super::approved::ApprovedWatch;
use crate::config::{Config, FlagdConfig};

/// Reads `folder` every `[flagd] scan_interval` and proposes each changed flag, until
/// `shutdown`.
pub async fn run(
    _config: &Config,
    _flagd: &FlagdConfig,
    _folder: &Path,
    _approved: ApprovedWatch,
    shutdown: CancellationToken,
) -> Result<(), FlagdError> {
    shutdown.cancelled().await;
    Ok(())
}
