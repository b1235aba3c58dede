//! flagd's gRPC sync service (`flagd.sync.v1.FlagSyncService`, flagd-schemas protobuf
//! v0.6.4, vendored in `proto/`): the source flagd (`--uri grpc://HOST:PORT`) and the
//! OpenFeature SDKs' flagd providers in in-process mode read.
//!
//! - `SyncFlags`: sends the selected set's document ([`super::approved::Approved::document`]) at once
//!   (providers give up after 5 s without a first message; an empty set is
//!   `{"flags":{}}`), then again on every change of THAT set, each message a full
//!   replacement. The stream ends when the client goes or the bridge shuts down.
//! - `FetchAllFlags`: the same document, once (flagd uses it to re-sync).
//! - `GetMetadata` (deprecated): an empty Struct.
//!
//! Selector (`SyncFlagsRequest.selector`, a provider's `selector` option or flagd's
//! `--sources` `selector`): empty = `[flagd] project/environment`; `PROJECT/ENVIRONMENT`
//! = that set; anything else is refused with `INVALID_ARGUMENT` naming these forms.
//!
//! Rule: every open stream ends when `shutdown` fires. tonic's graceful shutdown waits
//! for open streams, and a sync stream never ends by itself, so each stream's task
//! selects on the shutdown token.

use std::net::SocketAddr;
use std::pin::Pin;

use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::FlagdError;
use super::approved::{ApprovedWatch, Selection};

/// The generated `flagd.sync.v1` messages and server (`build.rs`).
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
mod proto {
    tonic::include_proto!("flagd.sync.v1");
}

use proto::flag_sync_service_server::{FlagSyncService, FlagSyncServiceServer};
use proto::{
    FetchAllFlagsRequest, FetchAllFlagsResponse, GetMetadataRequest, GetMetadataResponse,
    SyncFlagsRequest, SyncFlagsResponse,
};

/// Messages a stream may have waiting for a slow client before it waits in turn (each
/// is a full document, so only the newest matters).
const STREAM_BUFFER: usize = 4;

/// Serves `SyncFlags`, `FetchAllFlags` and `GetMetadata` on `listen` until `shutdown`,
/// ending open streams then.
///
/// Errors: [`FlagdError::Listen`] when `listen` cannot be bound, [`FlagdError::Serve`]
/// when the server fails.
pub async fn serve(
    listen: SocketAddr,
    approved: ApprovedWatch,
    default: Selection,
    shutdown: CancellationToken,
) -> Result<(), FlagdError> {
    let (listener, bound) = super::bind("flagd.sync_listen", listen).await?;
    tracing::info!(addr = %bound, default = %default, "serving flagd.sync.v1.FlagSyncService");
    let service = SyncService {
        approved,
        default,
        shutdown: shutdown.clone(),
    };
    tonic::transport::Server::builder()
        .add_service(FlagSyncServiceServer::new(service))
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener),
            shutdown.cancelled_owned(),
        )
        .await
        .map_err(|e| FlagdError::Serve(format!("flagd sync service on {bound}: {e}")))
}

struct SyncService {
    approved: ApprovedWatch,
    default: Selection,
    shutdown: CancellationToken,
}

impl SyncService {
    fn selection(&self, selector: &str) -> Result<Selection, Status> {
        Selection::from_selector(selector, &self.default).map_err(Status::invalid_argument)
    }
}

type SyncStream = Pin<Box<dyn Stream<Item = Result<SyncFlagsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl FlagSyncService for SyncService {
    type SyncFlagsStream = SyncStream;

    async fn sync_flags(
        &self,
        request: Request<SyncFlagsRequest>,
    ) -> Result<Response<SyncStream>, Status> {
        let peer = request.remote_addr();
        let request = request.into_inner();
        let set = self.selection(&request.selector)?;
        tracing::info!(?peer, provider_id = %request.provider_id, set = %set, "SyncFlags stream opened");
        let (out, stream) = mpsc::channel(STREAM_BUFFER);
        tokio::spawn(stream_set(
            self.approved.clone(),
            set,
            out,
            self.shutdown.clone(),
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(stream))))
    }

    async fn fetch_all_flags(
        &self,
        request: Request<FetchAllFlagsRequest>,
    ) -> Result<Response<FetchAllFlagsResponse>, Status> {
        let set = self.selection(&request.into_inner().selector)?;
        let document = self.approved.borrow().document(&set);
        Ok(Response::new(FetchAllFlagsResponse {
            flag_configuration: document.json,
        }))
    }

    async fn get_metadata(
        &self,
        _request: Request<GetMetadataRequest>,
    ) -> Result<Response<GetMetadataResponse>, Status> {
        Ok(Response::new(GetMetadataResponse {
            metadata: Some(prost_types::Struct::default()),
        }))
    }
}

/// Sends `set`'s document now and after every change of it, until the client goes, the
/// approved configuration stops being followed, or `shutdown`.
async fn stream_set(
    mut approved: ApprovedWatch,
    set: Selection,
    out: mpsc::Sender<Result<SyncFlagsResponse, Status>>,
    shutdown: CancellationToken,
) {
    let _open = crate::telemetry::metrics::flagd_sync_stream();
    let mut sent: Option<String> = None;
    loop {
        let document = approved.borrow_and_update().document(&set);
        if sent.as_deref() != Some(document.json.as_str()) {
            let message = SyncFlagsResponse {
                flag_configuration: document.json.clone(),
                sync_context: None,
            };
            tokio::select! {
                result = out.send(Ok(message)) => if result.is_err() { break },
                () = shutdown.cancelled() => break,
            }
            tracing::debug!(set = %set, etag = %document.etag, "SyncFlags: configuration sent");
            sent = Some(document.json);
        }
        tokio::select! {
            changed = approved.changed() => if changed.is_err() { break },
            () = out.closed() => break,
            () = shutdown.cancelled() => break,
        }
    }
    tracing::debug!(set = %set, "SyncFlags stream ended");
}
