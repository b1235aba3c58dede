//! TCP probes: the target passes when a TCP connection to `address` opens within the
//! attempt's timeout. The connection is closed at once; nothing is sent.

use std::time::Duration;

use tokio::net::TcpStream;

use crate::catalog::experiment::TcpProbe;

/// Why a TCP probe attempt failed, e.g. "connect 127.0.0.1:9: connection refused".
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("connect {address}: {reason}")]
pub(crate) struct TcpFailure {
    /// The address as the probe names it.
    pub(crate) address: String,
    /// What went wrong.
    pub(crate) reason: String,
}

/// One attempt: connect, then close.
pub(super) async fn attempt(probe: &TcpProbe) -> Result<(), TcpFailure> {
    match TcpStream::connect(probe.address.as_str()).await {
        Ok(stream) => {
            drop(stream);
            Ok(())
        }
        Err(err) => Err(TcpFailure {
            address: probe.address.clone(),
            reason: super::io_reason(&err),
        }),
    }
}

/// The failure of an attempt cut off after `limit`.
pub(super) fn timed_out(probe: &TcpProbe, limit: Duration) -> TcpFailure {
    TcpFailure {
        address: probe.address.clone(),
        reason: format!("not connected within {} ms", limit.as_millis()),
    }
}
