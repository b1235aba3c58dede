//! The HTTP/1.1 fault proxy: `abort`, `delay` and `modify` on the requests an
//! HTTP fault's match selects, for its `percentage` of them.
//!
//! Each client connection is served by hyper (keep-alive as the client asks) on one end
//! of an in-memory pipe; the other end is joined to the client's socket by the same pump
//! as the TCP proxy, so network toxics on an HTTP target act on its bytes too. Requests
//! go on to the upstream through a pooled keep-alive client. When several faults match
//! one request, their delays add up, the first `abort` answers, and every `modify`
//! applies in the order the faults were added.
//!
//! The rule that keeps it right: with no fault active the proxy is a faithful HTTP/1.1
//! intermediary (RFC 9112, RFC 9110 section 7.6). A client that half-closes after its
//! request still gets the answer; pipelined requests are answered in order; bodies
//! (chunked or sized, of any length) stream through without being held whole,
//! trailers included; `Expect: 100-continue` gets its `100 Continue` once the upstream
//! is asked for the body; an upgrade (WebSocket) that the upstream accepts with `101`
//! becomes a byte tunnel; only hop-by-hop headers are dropped, and header names keep
//! the case they were written in.

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::upgrade::OnUpgrade;
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncWrite, DuplexStream, WriteHalf};
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
        .http1_preserve_header_case(true)
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
    let tunnel_cancel = cancel.clone();
    let service = service_fn(move |req| {
        let shared = Arc::clone(&shared);
        let cancel = tunnel_cancel.clone();
        async move { Ok::<_, Infallible>(shared.handle(req, cancel).await) }
    });
    // half_close: a client that shuts down its write side after a request still wants
    // the answer (RFC 9112 section 9.6); preserve_header_case: header names go on as
    // written, both ways (with the client's, set in `upstream_client`); with_upgrades:
    // a 101 hands the connection over; no header read timeout: hyper's (30 s by
    // default) also closes a keep-alive connection idle that long, which the upstream
    // may keep, and a client reusing it then fails (the TCP proxy has none either).
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .half_close(true)
        .preserve_header_case(true)
        .serve_connection(TokioIo::new(inner), service)
        .with_upgrades();
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
            PipeWriter::new(outer_write),
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
    /// Applies the matching faults to one request and answers it; an upgrade the
    /// upstream accepts becomes a tunnel that lives until both sides close or `cancel`.
    async fn handle(
        &self,
        mut req: Request<Incoming>,
        cancel: CancellationToken,
    ) -> Response<ProxyBody> {
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
            // A client waiting for `100 Continue` gets the final answer instead and
            // sends no body (RFC 9110 section 10.1.1); hyper then closes the connection.
            if !expects_continue(req.headers()) {
                let drain = Limited::new(req.into_body(), ABORT_DRAIN_LIMIT).collect();
                let _ = tokio::time::timeout(ABORT_DRAIN_TIME, drain).await;
            }
            return text_response(status, body);
        }
        let client_upgrade = upgrade_protocols(req.headers()).map(|_| hyper::upgrade::on(&mut req));
        let mut response = self.forward(req).await;
        let upstream_upgrade = response.extensions_mut().remove::<OnUpgrade>();
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
                response.headers_mut().remove(header::TRAILER);
                *response.body_mut() = full(body.clone());
            }
        }
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            match (client_upgrade, upstream_upgrade) {
                (Some(client), Some(upstream)) => {
                    tokio::spawn(tunnel(client, upstream, cancel));
                }
                _ => {
                    return text_response(
                        StatusCode::BAD_GATEWAY,
                        Bytes::from_static(
                            b"chaosgate proxy: upstream switched protocols without an upgrade asked for\n",
                        ),
                    );
                }
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
        let upgrade = upgrade_protocols(&parts.headers);
        let takes_trailers = accepts_trailers(&parts.headers);
        strip_hop_headers(&mut parts.headers);
        if let Some(protocols) = &upgrade {
            keep_upgrade(&mut parts.headers, protocols);
        }
        if takes_trailers {
            // The proxy passes trailers on, so it may say so for the client (RFC 9110
            // section 10.1.4; `TE` goes with a `te` connection option).
            parts
                .headers
                .insert(header::TE, HeaderValue::from_static("trailers"));
            parts
                .headers
                .append(header::CONNECTION, HeaderValue::from_static("te"));
        }
        match self.client.request(Request::from_parts(parts, body)).await {
            Ok(response) => {
                let (mut parts, body) = response.into_parts();
                let switched = upgrade_protocols(&parts.headers);
                strip_hop_headers(&mut parts.headers);
                if let (Some(protocols), true) = (
                    &switched,
                    parts.status == StatusCode::SWITCHING_PROTOCOLS && upgrade.is_some(),
                ) {
                    keep_upgrade(&mut parts.headers, protocols);
                }
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

/// Joins an upgraded client connection to its upgraded upstream connection, byte for
/// byte both ways, passing each side's end of stream on (as the TCP proxy does).
async fn tunnel(client: OnUpgrade, upstream: OnUpgrade, cancel: CancellationToken) {
    let joined = async {
        let (client, upstream) = tokio::try_join!(client, upstream)?;
        let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
        tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
        Ok::<_, BoxError>(())
    };
    tokio::select! {
        () = cancel.cancelled() => {}
        joined = joined => if let Err(err) = joined {
            tracing::debug!(error = %err, "http proxy upgrade tunnel ended with an error");
        },
    }
}

/// Whether the request waits for `100 Continue` before sending its body.
fn expects_continue(headers: &HeaderMap) -> bool {
    headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// Whether the client's `TE` says it takes trailers in a chunked answer.
fn accepts_trailers(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| {
            let name = token.split(';').next().unwrap_or_default();
            name.trim().eq_ignore_ascii_case("trailers")
        })
}

/// The `Upgrade` values of a message that asks for (or agrees to) an upgrade: it has an
/// `Upgrade` header and `Connection` names it (RFC 9110 section 7.8).
fn upgrade_protocols(headers: &HeaderMap) -> Option<Vec<HeaderValue>> {
    let named = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    let protocols: Vec<HeaderValue> = headers.get_all(header::UPGRADE).iter().cloned().collect();
    (named && !protocols.is_empty()).then_some(protocols)
}

/// Puts back the upgrade headers that [`strip_hop_headers`] removed: an upgrade is the
/// one hop-by-hop exchange the proxy passes on.
fn keep_upgrade(headers: &mut HeaderMap, protocols: &[HeaderValue]) {
    headers.append(header::CONNECTION, HeaderValue::from_static("upgrade"));
    for protocol in protocols {
        headers.append(header::UPGRADE, protocol.clone());
    }
}

/// The proxy's write end of the pipe to hyper. Once hyper has closed the connection
/// (after `Connection: close`, or a request it refused), what the client still sends
/// is dropped instead of failing the pump: the pump then still delivers the rest of
/// hyper's answer to the client.
struct PipeWriter {
    inner: WriteHalf<DuplexStream>,
    closed: bool,
}

impl PipeWriter {
    fn new(inner: WriteHalf<DuplexStream>) -> PipeWriter {
        PipeWriter {
            inner,
            closed: false,
        }
    }

    fn settle(&mut self, polled: Poll<io::Result<()>>) -> Poll<io::Result<()>> {
        match polled {
            Poll::Ready(Err(err)) if err.kind() == io::ErrorKind::BrokenPipe => {
                self.closed = true;
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl AsyncWrite for PipeWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.closed {
            return Poll::Ready(Ok(buf.len()));
        }
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Ready(Err(err)) if err.kind() == io::ErrorKind::BrokenPipe => {
                self.closed = true;
                Poll::Ready(Ok(buf.len()))
            }
            other => other,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.closed {
            return Poll::Ready(Ok(()));
        }
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.settle(polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.closed {
            return Poll::Ready(Ok(()));
        }
        let polled = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.settle(polled)
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
/// `Trailer` is not one of them: it names the trailer fields of the message, and
/// hyper sends trailers only when it is present.
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
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
}
