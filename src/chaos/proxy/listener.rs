//! A target's listener: accepts connections, turns away those a `refuse` toxic hits,
//! counts them, and serves each on its own task as the target's protocol says (the
//! byte pump of `tcp`, or the HTTP proxy of `http`).
//!
//! The rule that keeps it right: this is the only place that chooses between TCP and
//! HTTP, so neither connection module needs the other.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::http;
use super::settings::ProxyProtocol;
use super::state::TargetState;
use super::tcp;
use super::toxic;

/// Accepts connections on `listener` until `cancel`, each served on its own task.
pub(crate) async fn serve_listener(
    listener: TcpListener,
    target: Arc<TargetState>,
    cancel: CancellationToken,
    tasks: TaskTracker,
) {
    let http_shared = match target.target.protocol {
        ProxyProtocol::Http => Some(http::HttpProxyState::new(Arc::clone(&target))),
        ProxyProtocol::Tcp => None,
    };
    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let client = match accepted {
            Ok((client, _)) => client,
            Err(err) => {
                // Out of descriptors and the like: wait a little rather than spin.
                tracing::warn!(target_name = %target.target.name, error = %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        target.connections_total.fetch_add(1, Ordering::Relaxed);
        let seed = rand::random::<u64>();
        let faults = target.faults.subscribe();
        if toxic::refuses(&faults.borrow(), seed) {
            target.connections_refused.fetch_add(1, Ordering::Relaxed);
            let _ = client.set_zero_linger();
            drop(client);
            continue;
        }
        let open = OpenConnection::new(Arc::clone(&target));
        let cancel = cancel.clone();
        match &http_shared {
            Some(shared) => {
                let shared = Arc::clone(shared);
                tasks.spawn(async move {
                    let _open = open;
                    http::serve_connection(client, shared, faults, seed, cancel).await;
                });
            }
            None => {
                let target = Arc::clone(&target);
                tasks.spawn(async move {
                    let _open = open;
                    tcp::serve_connection(client, &target, faults, seed, cancel).await;
                });
            }
        }
    }
}

/// Counts a connection as open while it lives.
struct OpenConnection(Arc<TargetState>);

impl OpenConnection {
    fn new(target: Arc<TargetState>) -> OpenConnection {
        target.connections_open.fetch_add(1, Ordering::Relaxed);
        OpenConnection(target)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.connections_open.fetch_sub(1, Ordering::Relaxed);
    }
}
