//! The approved configuration written to a file, atomically, on every change.
//!
//! OWNER: helper "flagd-serve".

use std::path::Path;

use tokio_util::sync::CancellationToken;

use super::FlagdError;
use super::approved::{ApprovedWatch, Selection};

/// Writes `set`'s approved configuration to `path` now and on every change, until
/// `shutdown`.
pub async fn follow(
    _path: &Path,
    _approved: ApprovedWatch,
    _set: Selection,
    shutdown: CancellationToken,
) -> Result<(), FlagdError> {
    shutdown.cancelled().await;
    Ok(())
}
