//! A TCP target's connection: connect to the upstream, then pump bytes both ways
//! (through the network toxics) until either side ends it.
//!
//! The rule that keeps it right: a connection that cannot reach its upstream is closed
//! at once (the client sees the upstream's refusal as a closed connection), and a reset
//! asked for by a toxic is a real RST (zero linger) on the side it names.

use std::time::Duration;

use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::pump::run_pumps;
use super::state::{Faults, TargetState};
use super::toxic::Ending;

/// Time allowed to connect to the upstream.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to the upstream and pumps bytes both ways until the connection ends.
pub(crate) async fn serve_connection(
    mut client: TcpStream,
    target: &TargetState,
    faults: Faults,
    seed: u64,
    cancel: CancellationToken,
) {
    let upstream = &target.target.upstream;
    let connected = tokio::select! {
        () = cancel.cancelled() => return,
        connected = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(upstream.as_str())) => connected,
    };
    let mut upstream_stream = match connected {
        Ok(Ok(stream)) => stream,
        Ok(Err(err)) => {
            tracing::debug!(target_name = %target.target.name, %upstream, error = %err, "upstream connect failed");
            return;
        }
        Err(_) => {
            tracing::debug!(target_name = %target.target.name, %upstream, "upstream connect timed out");
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = upstream_stream.set_nodelay(true);
    let ending = {
        let (client_read, client_write) = client.split();
        let (upstream_read, upstream_write) = upstream_stream.split();
        run_pumps(
            client_read,
            client_write,
            upstream_read,
            upstream_write,
            faults,
            seed,
            &cancel,
        )
        .await
    };
    if let Ending::Reset {
        client: reset_client,
        upstream: reset_upstream,
    } = ending
    {
        if reset_client {
            let _ = client.set_zero_linger();
        }
        if reset_upstream {
            let _ = upstream_stream.set_zero_linger();
        }
    }
}
