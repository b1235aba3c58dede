//! The HTTP/1.1 fault proxy: `abort`, `delay` and `modify` on the requests an
//! HTTP fault's match selects, for its `percentage` of them.
//!
//! Each client connection is served by hyper (keep-alive as the client asks) on one end
//! of an in-memory pipe; the other end is joined to the client's socket by the same pump
//! as the TCP proxy, so network toxics on an HTTP target act on its bytes too. Requests
//! go on to the upstream through a pooled keep-alive client. When several faults match
//! one request, their delays add up, the first `abort` answers, and every `modify`
//! applies in the order the faults were added. Upgrades (WebSocket) are not proxied.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::pump::run_pumps;
use super::rule::RuleAction;
use super::state::{Faults, TargetState};
use super::toxic::Ending;

/// Buffer of the in-memory pipe between the client's socket and hyper.
const PIPE_BUFFER: usize = 64 * 1024;

/// Most request body read (and dropped) before an `abort` answer, so the connection
/// can be kept alive.
const ABORT_DRAIN_LIMIT: usize = 1 << 20;

/// Time allowed to read that body.
const ABORT_DRAIN_TIME: Duration = Duration::from_secs(5);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body of every response the proxy sends.
type ProxyBody = BoxBody<Bytes, BoxError>;

/// The pooled keep-alive client to the upstreams.
type UpstreamClient = Client<HttpConnector, Incoming>;

/// A pooled HTTP/1.1 client for one target's upstream.
fn upstream_client() -> UpstreamClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(10)));
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector)
}

/// What every connection of one HTTP target shares.
pub(crate) struct HttpProxyState {
    target: Arc<TargetState>,
    client: UpstreamClient,
}

impl HttpProxyState {
    /// The shared part of an HTTP target.
    pub fn new(target: Arc<TargetState>) -> Arc<HttpProxyState> {
        Arc::new(HttpProxyState {
            target,
            client: upstream_client(),
        })
    }
}

/// Serves one client connection: hyper on one end of a pipe, the toxic pump between
/// the pipe and the client's socket.
pub(crate) async fn serve_connection(
    mut client: TcpStream,
    shared: Arc<HttpProxyState>,
    faults: Faults,
    seed: u64,
    cancel: CancellationToken,
) {
    let _ = client.set_nodelay(true);
    let (outer, inner) = tokio::io::duplex(PIPE_BUFFER);
    let service = service_fn(move |req| {
        let shared = Arc::clone(&shared);
        async move { Ok::<_, Infallible>(shared.handle(req).await) }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(inner), service);
    // Awaiting by value drops the connection (and its end of the pipe) once it is done.
    let connection = async move {
        if let Err(err) = connection.await {
            tracing::debug!(error = %err, "http proxy connection ended with an error");
        }
    };
    let ending = {
        let (client_read, client_write) = client.split();
        let (outer_read, outer_write) = tokio::io::split(outer);
        let pumps = run_pumps(
            client_read,
            client_write,
            outer_read,
            outer_write,
            faults,
            seed,
            &cancel,
        );
        tokio::pin!(pumps, connection);
        tokio::select! {
            ending = &mut pumps => ending,
            () = &mut connection => (&mut pumps).await,
        }
    };
    if let Ending::Reset { client: true, .. } = ending {
        let _ = client.set_zero_linger();
    }
}

impl HttpProxyState {
    /// Applies the matching faults to one request and answers it.
    async fn handle(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        let set = Arc::clone(&self.target.faults.borrow());
        let mut delay = Duration::ZERO;
        let mut abort = None;
        let mut modify = Vec::new();
        for (_, rule) in &set.http {
            if !rule.selects(&req) || !rule.rolls() {
                continue;
            }
            match &rule.action {
                RuleAction::Delay(d) => delay += *d,
                RuleAction::Abort { status, body } => {
                    abort = abort.or(Some((*status, body.clone())));
                }
                RuleAction::Modify {
                    status,
                    headers,
                    body,
                } => modify.push((status, headers, body)),
            }
        }
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if let Some((status, body)) = abort {
            let drain = Limited::new(req.into_body(), ABORT_DRAIN_LIMIT).collect();
            let _ = tokio::time::timeout(ABORT_DRAIN_TIME, drain).await;
            return text_response(status, body);
        }
        let mut response = self.forward(req).await;
        for (status, headers, body) in modify {
            if let Some(status) = status {
                *response.status_mut() = *status;
            }
            for (name, value) in headers {
                response.headers_mut().insert(name.clone(), value.clone());
            }
            if let Some(body) = body {
                response.headers_mut().remove(header::CONTENT_LENGTH);
                response.headers_mut().remove(header::TRANSFER_ENCODING);
                *response.body_mut() = full(body.clone());
            }
        }
        response
    }

    /// Sends the request on to the upstream; 502 when it cannot be reached.
    async fn forward(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        let upstream = &self.target.target.upstream;
        let (mut parts, body) = req.into_parts();
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        parts.uri = match Uri::try_from(format!("http://{upstream}{path}")) {
            Ok(uri) => uri,
            Err(err) => {
                return text_response(
                    StatusCode::BAD_GATEWAY,
                    Bytes::from(format!(
                        "chaosgate proxy: bad upstream address {upstream}: {err}\n"
                    )),
                );
            }
        };
        strip_hop_headers(&mut parts.headers);
        match self.client.request(Request::from_parts(parts, body)).await {
            Ok(response) => {
                let (mut parts, body) = response.into_parts();
                strip_hop_headers(&mut parts.headers);
                Response::from_parts(parts, body.map_err(BoxError::from).boxed())
            }
            Err(err) => {
                tracing::debug!(%upstream, error = %err, "upstream request failed");
                text_response(
                    StatusCode::BAD_GATEWAY,
                    Bytes::from(format!(
                        "chaosgate proxy: upstream {upstream} failed: {err}\n"
                    )),
                )
            }
        }
    }
}

fn full(body: Bytes) -> ProxyBody {
    Full::new(body).map_err(|never| match never {}).boxed()
}

fn text_response(status: StatusCode, body: Bytes) -> Response<ProxyBody> {
    let has_body = !body.is_empty();
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    if has_body {
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
    }
    response
}

/// Removes the headers that describe one hop, not the message (RFC 9110 section 7.6.1).
fn strip_hop_headers(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
}
