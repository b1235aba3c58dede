//! `GET /flags.json` (the approved configuration, with `ETag`), `/healthz`, `/metrics`.
//!
//! OWNER: helper "flagd-serve".

use std::net::SocketAddr;

use tokio_util::sync::CancellationToken;

use super::FlagdError;
use super::approved::{ApprovedWatch, Selection};

/// Serves the HTTP endpoints on `listen` until `shutdown`.
pub async fn serve(
    _listen: SocketAddr,
    _approved: ApprovedWatch,
    _default: Selection,
    shutdown: CancellationToken,
) -> Result<(), FlagdError> {
    shutdown.cancelled().await;
    Ok(())
}
