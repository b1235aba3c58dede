//! The HTTP fault proxy as a faithful HTTP/1.1 intermediary (RFC 9112): with no fault
//! active, half-closed clients, pipelining, `Expect: 100-continue`, chunked and large
//! bodies, upgrades (WebSocket) and `Connection: close` pass through unchanged; with a
//! fault active on a matching request, the fault still applies.
//!
//! Upstreams are real servers on 127.0.0.1 (hyper, and a Python WebSocket echo server);
//! clients are raw sockets, hyper, `curl` and Python's `http.client`.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::wrappers::ReceiverStream;

use chaosgate::catalog::Span;
use chaosgate::catalog::experiment::{
    Direction, HttpAction, HttpFault, HttpMatch, NetworkFault, Toxic,
};
use chaosgate::chaos::proxy::{ProxyProtocol, ProxyRegistry, ProxyTarget};

/// Outer bound on every wait: a bug fails the test instead of hanging it.
const WAIT: Duration = Duration::from_secs(30);

const LEASE: Duration = Duration::from_secs(60);

const MIB: usize = 1 << 20;

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, fut).await {
        Ok(value) => value,
        Err(_) => panic!("{what}: no result within {WAIT:?}"),
    }
}

type TestBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

fn full(body: impl Into<Bytes>) -> TestBody {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed()
}

/// The upstream's routes:
/// - `/hello`: `hello`, with `x-upstream: yes`;
/// - `/echo`: the request body streamed back as it arrives (once its first piece is
///   in), with the request's
///   `transfer-encoding` and `content-length` reported in `x-request-framing`;
/// - `/chunked`: `one,two,three` in three pieces, no length (chunked on the wire);
/// - `/n/K`: `K`, after (4 - K) × 100 ms, so a later request is ready sooner;
/// - `/api/...`: `api`;
/// - `/big`: 4 MiB of [`pattern`];
/// - `/trailers`: see [`trailers`].
async fn route(req: Request<Incoming>, hits: Arc<AtomicU64>) -> Response<TestBody> {
    hits.fetch_add(1, Ordering::SeqCst);
    let path = req.uri().path().to_string();
    if path == "/hello" {
        let mut response = Response::new(full("hello"));
        response
            .headers_mut()
            .insert("x-upstream", "yes".parse().expect("header value"));
        return response;
    }
    if path == "/echo" {
        let framing = match (
            req.headers().get("transfer-encoding"),
            req.headers().get("content-length"),
        ) {
            (Some(te), _) => format!("transfer-encoding: {}", te.to_str().unwrap_or("?")),
            (None, Some(cl)) => format!("content-length: {}", cl.to_str().unwrap_or("?")),
            (None, None) => "none".to_string(),
        };
        // Reading the first piece before answering makes hyper send `100 Continue`
        // to a client that waits for it; the rest streams back as it arrives.
        let mut body = req.into_body();
        let first: Vec<_> = body.frame().await.into_iter().collect();
        let rest = http_body_util::BodyStream::new(body);
        let echo = tokio_stream::StreamExt::chain(tokio_stream::iter(first), rest);
        let mut response = Response::new(StreamBody::new(echo).map_err(Into::into).boxed());
        response
            .headers_mut()
            .insert("x-request-framing", framing.parse().expect("header value"));
        return response;
    }
    if path == "/chunked" {
        let pieces = ["one,", "two,", "three"].map(|p| Ok(Frame::data(Bytes::from(p))));
        let stream = tokio_stream::iter(pieces);
        return Response::new(BodyExt::boxed(StreamBody::new(stream)));
    }
    if let Some(k) = path.strip_prefix("/n/") {
        let k: u64 = k.parse().unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(4u64.saturating_sub(k) * 100)).await;
        return Response::new(full(k.to_string()));
    }
    if path.starts_with("/api/") {
        return Response::new(full("api"));
    }
    if path == "/trailers" {
        return trailers(req).await;
    }
    if path == "/big" {
        return Response::new(full((0..4 * MIB).map(pattern).collect::<Vec<u8>>()));
    }
    let mut response = Response::new(full("not found"));
    *response.status_mut() = StatusCode::NOT_FOUND;
    response
}

/// `/trailers`: reads the whole request and answers, chunked with a `Trailer` header,
/// `te=<the request's TE>; x-sent=<its trailer x-sent>` and the trailer `x-checksum: 42`.
async fn trailers(req: Request<Incoming>) -> Response<TestBody> {
    let te = req
        .headers()
        .get("te")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("none")
        .to_string();
    let collected = req.into_body().collect().await.expect("request body");
    let sent = collected
        .trailers()
        .and_then(|t| t.get("x-sent"))
        .and_then(|v| v.to_str().ok())
        .unwrap_or("none")
        .to_string();
    let mut trailers = hyper::HeaderMap::new();
    trailers.insert("x-checksum", "42".parse().expect("header value"));
    let frames = [
        Ok::<_, Infallible>(Frame::data(Bytes::from(format!("te={te}; x-sent={sent}")))),
        Ok(Frame::trailers(trailers)),
    ];
    let mut response = Response::new(
        StreamBody::new(tokio_stream::iter(frames))
            .map_err(|never| match never {})
            .boxed(),
    );
    response
        .headers_mut()
        .insert("trailer", "x-checksum".parse().expect("header value"));
    response
}

/// A real hyper HTTP/1.1 upstream; the counter of the requests it served.
async fn upstream() -> (SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().expect("upstream addr");
    let hits = Arc::new(AtomicU64::new(0));
    let count = Arc::clone(&hits);
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let count = Arc::clone(&count);
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let count = Arc::clone(&count);
                    async move { Ok::<_, Infallible>(route(req, count).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(socket), service)
                    .await;
            });
        }
    });
    (addr, hits)
}

fn target(upstream: SocketAddr) -> ProxyTarget {
    ProxyTarget {
        name: "web".into(),
        listen: "127.0.0.1:0".parse().expect("addr"),
        upstream: upstream.to_string(),
        protocol: ProxyProtocol::Http,
    }
}

/// An HTTP proxy target `web` in front of `upstream`; the registry and its address.
async fn proxy_to(upstream: SocketAddr) -> (Arc<ProxyRegistry>, SocketAddr) {
    let registry = ProxyRegistry::start(&[target(upstream)])
        .await
        .expect("start http proxy");
    let listen = registry.targets()[0].listen;
    (registry, listen)
}

/// A proxy in front of a fresh hyper upstream.
async fn setup() -> (Arc<ProxyRegistry>, SocketAddr, Arc<AtomicU64>) {
    let (upstream, hits) = upstream().await;
    let (registry, listen) = proxy_to(upstream).await;
    (registry, listen, hits)
}

fn fault(action: HttpAction, path_prefix: &str) -> HttpFault {
    HttpFault {
        target: "web".into(),
        proxy: None,
        action,
        matches: HttpMatch {
            path_prefix: Some(path_prefix.into()),
            ..HttpMatch::default()
        },
        percentage: 1.0,
    }
}

fn abort_503() -> HttpAction {
    HttpAction::Abort {
        status: 503,
        body: Some("injected".into()),
    }
}

async fn connect(addr: SocketAddr) -> TcpStream {
    let stream = within("connect", TcpStream::connect(addr))
        .await
        .expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    stream
}

/// One response read off a raw socket.
#[derive(Debug)]
struct RawResponse {
    status: u16,
    /// Header lines as received: `Name: value`.
    headers: Vec<String>,
    body: Vec<u8>,
    /// Trailer lines of a chunked body, as sent.
    trailers: Vec<String>,
}

impl RawResponse {
    /// The value of header `name` (any case).
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find_map(|h| {
            let (n, value) = h.split_once(':')?;
            n.eq_ignore_ascii_case(name).then_some(value.trim())
        })
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Reads HTTP/1.1 responses off a raw socket, keeping what it read past one response
/// for the next (pipelining).
struct RawReader {
    buf: Vec<u8>,
}

impl RawReader {
    fn new() -> RawReader {
        RawReader { buf: Vec::new() }
    }

    /// Reads more bytes; false at end of stream.
    async fn fill(&mut self, stream: &mut TcpStream) -> bool {
        let mut chunk = vec![0u8; 64 * 1024];
        let n = stream.read(&mut chunk).await.expect("read from proxy");
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    async fn line(&mut self, stream: &mut TcpStream) -> String {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                self.buf.drain(..end + 2);
                return line;
            }
            assert!(self.fill(stream).await, "connection closed inside a head");
        }
    }

    async fn exact(&mut self, stream: &mut TcpStream, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            assert!(self.fill(stream).await, "connection closed inside a body");
        }
        self.buf.drain(..n).collect()
    }

    /// The next response (1xx ones included), framed by content-length or chunked.
    async fn response(&mut self, stream: &mut TcpStream) -> RawResponse {
        let status_line = self.line(stream).await;
        let status: u16 = status_line
            .get(9..12)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("not a status line: {status_line:?}"));
        let mut headers = Vec::new();
        loop {
            let line = self.line(stream).await;
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').expect("header line");
            headers.push(format!("{name}: {}", value.trim()));
        }
        let mut response = RawResponse {
            status,
            headers,
            body: Vec::new(),
            trailers: Vec::new(),
        };
        if status < 200 || status == 204 || status == 304 {
            return response;
        }
        if response.header("transfer-encoding") == Some("chunked") {
            loop {
                let size_line = self.line(stream).await;
                let size =
                    usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
                        .expect("chunk size");
                if size == 0 {
                    loop {
                        let line = self.line(stream).await;
                        if line.is_empty() {
                            break;
                        }
                        response.trailers.push(line.to_ascii_lowercase());
                    }
                    break;
                }
                let data = self.exact(stream, size).await;
                response.body.extend_from_slice(&data);
                assert_eq!(self.exact(stream, 2).await, b"\r\n", "chunk end");
            }
        } else if let Some(length) = response.header("content-length") {
            let length: usize = length.parse().expect("content-length");
            response.body = self.exact(stream, length).await;
        } else {
            while self.fill(stream).await {}
            response.body = std::mem::take(&mut self.buf);
        }
        response
    }

    /// Whether the peer closes the connection with nothing more sent.
    async fn at_end(&mut self, stream: &mut TcpStream) -> bool {
        self.buf.is_empty() && !self.fill(stream).await
    }
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nhost: test\r\n\r\n")
}

/// A raw upstream that answers each request with its head, as received, for a body,
/// and a header written in mixed case; it closes after one answer.
async fn raw_head_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind raw upstream");
    let addr = listener.local_addr().expect("raw upstream addr");
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match socket.read(&mut byte).await {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nX-Mixed-Case: Yes\r\nConnection: close\r\n\r\n",
                    head.len()
                );
                let _ = socket.write_all(answer.as_bytes()).await;
                let _ = socket.write_all(&head).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_names_keep_their_case_both_ways() {
    let (registry, listen) = proxy_to(raw_head_echo().await).await;
    let mut stream = connect(listen).await;
    let request = "GET /case HTTP/1.1\r\nHost: test\r\nX-Request-ID: abc\r\nx-lower: 1\r\n\r\n";
    stream
        .write_all(request.as_bytes())
        .await
        .expect("write request");
    let mut reader = RawReader::new();
    let response = within("answer", reader.response(&mut stream)).await;
    assert!(
        response.headers.iter().any(|h| h == "X-Mixed-Case: Yes"),
        "answer headers: {:?}",
        response.headers
    );
    let seen_upstream = response.text();
    assert!(
        seen_upstream.contains("\r\nX-Request-ID: abc\r\n")
            && seen_upstream.contains("\r\nx-lower: 1\r\n"),
        "the upstream saw: {seen_upstream}"
    );
    registry.shutdown().await;
}

// ---------------------------------------------------------------------------------
// Half-close

/// Sends `request`, shuts down the write side, reads every response until the end.
async fn half_closed_exchange(addr: SocketAddr, request: &str, count: usize) -> Vec<RawResponse> {
    within("half-closed exchange", async {
        let mut stream = connect(addr).await;
        stream
            .write_all(request.as_bytes())
            .await
            .expect("write request");
        stream.shutdown().await.expect("shut down the write side");
        let mut reader = RawReader::new();
        let mut responses = Vec::new();
        for _ in 0..count {
            responses.push(reader.response(&mut stream).await);
        }
        assert!(
            reader.at_end(&mut stream).await,
            "the proxy closes after the last answer"
        );
        responses
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_closed_client_gets_its_answer() {
    let (registry, listen, hits) = setup().await;
    // The race between the request and the FIN lost often before the fix: try many.
    for _ in 0..30 {
        let responses = half_closed_exchange(listen, &get("/hello"), 1).await;
        assert_eq!(responses[0].status, 200);
        assert_eq!(responses[0].text(), "hello");
    }
    assert_eq!(hits.load(Ordering::SeqCst), 30);
    // A body sent before the FIN arrives whole.
    let post = "POST /echo HTTP/1.1\r\nhost: test\r\ncontent-length: 11\r\n\r\nhello world";
    let responses = half_closed_exchange(listen, post, 1).await;
    assert_eq!(
        (responses[0].status, responses[0].text().as_str()),
        (200, "hello world")
    );
    // Two pipelined requests, then the FIN: both answered, in order.
    let two = format!("{}{}", get("/n/1"), get("/n/3"));
    let responses = half_closed_exchange(listen, &two, 2).await;
    let bodies: Vec<String> = responses.iter().map(RawResponse::text).collect();
    assert_eq!(bodies, ["1", "3"]);
    registry.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_closed_client_still_gets_the_fault() {
    let (registry, listen, hits) = setup().await;
    registry
        .add_http_fault("web", &fault(abort_503(), "/api"), LEASE)
        .expect("abort fault");
    registry
        .add_http_fault(
            "web",
            &fault(
                HttpAction::Delay {
                    delay: Span::from_millis(300),
                },
                "/hello",
            ),
            LEASE,
        )
        .expect("delay fault");
    let responses = half_closed_exchange(listen, &get("/api/pay"), 1).await;
    assert_eq!(
        (responses[0].status, responses[0].text().as_str()),
        (503, "injected")
    );
    let started = Instant::now();
    let responses = half_closed_exchange(listen, &get("/hello"), 1).await;
    assert_eq!(
        (responses[0].status, responses[0].text().as_str()),
        (200, "hello")
    );
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "the delay applies to a half-closed client too"
    );
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "the abort never reached the upstream"
    );
    registry.shutdown().await;
}

// ---------------------------------------------------------------------------------
// Pipelining and Connection: close

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order() {
    let (registry, listen, hits) = setup().await;
    let mut stream = connect(listen).await;
    // The first request takes longest upstream; answers still come in request order.
    let pipelined = format!(
        "{}POST /echo HTTP/1.1\r\nhost: test\r\ncontent-length: 4\r\n\r\nbody{}{}",
        get("/n/1"),
        get("/n/2"),
        get("/n/3")
    );
    stream
        .write_all(pipelined.as_bytes())
        .await
        .expect("write pipelined requests");
    let mut reader = RawReader::new();
    let mut bodies = Vec::new();
    for _ in 0..4 {
        let response = within("pipelined response", reader.response(&mut stream)).await;
        assert_eq!(response.status, 200);
        bodies.push(response.text());
    }
    assert_eq!(bodies, ["1", "body", "2", "3"]);
    assert_eq!(registry.targets()[0].connections_total, 1);
    assert_eq!(hits.load(Ordering::SeqCst), 4);

    // With an abort fault on /api, the pipelined /api request alone gets the fault.
    registry
        .add_http_fault("web", &fault(abort_503(), "/api"), LEASE)
        .expect("abort fault");
    let pipelined = format!("{}{}{}", get("/n/3"), get("/api/x"), get("/n/3"));
    stream
        .write_all(pipelined.as_bytes())
        .await
        .expect("write pipelined requests");
    let mut answers = Vec::new();
    for _ in 0..3 {
        let response = within("pipelined response", reader.response(&mut stream)).await;
        answers.push((response.status, response.text()));
    }
    assert_eq!(
        answers,
        [
            (200, "3".to_string()),
            (503, "injected".to_string()),
            (200, "3".to_string())
        ]
    );
    registry.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_close_answers_then_closes() {
    let (registry, listen, hits) = setup().await;
    let mut stream = connect(listen).await;
    let request = "GET /hello HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n";
    stream
        .write_all(request.as_bytes())
        .await
        .expect("write request");
    let mut reader = RawReader::new();
    let response = within("close response", reader.response(&mut stream)).await;
    assert_eq!((response.status, response.text().as_str()), (200, "hello"));
    assert_eq!(response.header("connection"), Some("close"));
    assert!(
        within("end of stream", reader.at_end(&mut stream)).await,
        "the proxy closes the connection after the answer"
    );

    // Pipelined after a `Connection: close` request: that request is the last answered.
    let mut stream = connect(listen).await;
    let pipelined = format!(
        "{}GET /n/2 HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n{}",
        get("/n/1"),
        get("/n/3")
    );
    stream
        .write_all(pipelined.as_bytes())
        .await
        .expect("write pipelined requests");
    let mut reader = RawReader::new();
    let first = within("first", reader.response(&mut stream)).await;
    let second = within("second", reader.response(&mut stream)).await;
    assert_eq!((first.text(), second.text()), ("1".into(), "2".into()));
    assert_eq!(second.header("connection"), Some("close"));
    assert!(within("end of stream", reader.at_end(&mut stream)).await);
    assert_eq!(
        hits.load(Ordering::SeqCst),
        3,
        "/n/3 after the close is not sent"
    );
    registry.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_close_answer_arrives_whole_while_the_client_keeps_sending() {
    let (registry, listen, _) = setup().await;
    for _ in 0..5 {
        let stream = connect(listen).await;
        let (mut read, mut write) = stream.into_split();
        let request = "GET /big HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n";
        write
            .write_all(request.as_bytes())
            .await
            .expect("write request");
        // Bytes after the last request: the proxy's HTTP server is done reading, and
        // may already be gone, when they reach it; they must not cut its answer short.
        let sender = tokio::spawn(async move {
            let junk = vec![b'x'; 64 * 1024];
            for _ in 0..64 {
                if write.write_all(&junk).await.is_err() {
                    break;
                }
            }
            write
        });
        let mut data = Vec::new();
        within("read to the end", read.read_to_end(&mut data))
            .await
            .expect("read the answer");
        let head_end = data
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a response head")
            + 4;
        let body = &data[head_end..];
        assert_eq!(body.len(), 4 * MIB, "the whole 4 MiB answer arrives");
        assert!(body.iter().enumerate().all(|(i, b)| *b == pattern(i)));
        let _ = within("junk sender", sender).await;
    }
    registry.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_connection_stays_open_while_idle() {
    let (registry, listen, hits) = setup().await;
    let mut stream = connect(listen).await;
    let mut reader = RawReader::new();
    stream
        .write_all(get("/hello").as_bytes())
        .await
        .expect("write request");
    let first = within("first answer", reader.response(&mut stream)).await;
    assert_eq!(first.text(), "hello");
    // Longer than hyper's default header read timeout (30 s), which closed idle
    // keep-alive connections that the upstream (here: hyper without a timer) keeps.
    tokio::time::sleep(Duration::from_secs(32)).await;
    stream
        .write_all(get("/hello").as_bytes())
        .await
        .expect("write request after the idle time");
    let second = within("answer after the idle time", reader.response(&mut stream)).await;
    assert_eq!(second.text(), "hello");
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    assert_eq!(registry.targets()[0].connections_total, 1);
    registry.shutdown().await;
}

// ---------------------------------------------------------------------------------
// Expect: 100-continue

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_continue_gets_100_before_the_body_is_sent() {
    let (registry, listen, _) = setup().await;
    let mut stream = connect(listen).await;
    let head =
        "POST /echo HTTP/1.1\r\nhost: test\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\n";
    stream.write_all(head.as_bytes()).await.expect("write head");
    let mut reader = RawReader::new();
    // The body is not sent until the 100 comes: without it, this read would hang.
    let interim = within("100 Continue", reader.response(&mut stream)).await;
    assert_eq!(interim.status, 100);
    stream.write_all(b"hello").await.expect("write body");
    let response = within("final response", reader.response(&mut stream)).await;
    assert_eq!((response.status, response.text().as_str()), (200, "hello"));
    assert_eq!(
        response.header("x-request-framing"),
        Some("content-length: 5")
    );

    // An abort fault answers at once, with no 100 and no body read.
    registry
        .add_http_fault("web", &fault(abort_503(), "/echo"), LEASE)
        .expect("abort fault");
    let mut stream = connect(listen).await;
    stream.write_all(head.as_bytes()).await.expect("write head");
    let mut reader = RawReader::new();
    let response = within("abort response", reader.response(&mut stream)).await;
    assert_eq!(
        (response.status, response.text().as_str()),
        (503, "injected")
    );
    assert!(
        within("end of stream", reader.at_end(&mut stream)).await,
        "with the body never sent, the connection closes after the answer"
    );
    registry.shutdown().await;
}

// ---------------------------------------------------------------------------------
// Chunked bodies

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_bodies_pass_through_both_ways() {
    let (registry, listen, _) = setup().await;
    let mut stream = connect(listen).await;
    let request = "POST /echo HTTP/1.1\r\nhost: test\r\ntransfer-encoding: chunked\r\n\r\n\
                   5\r\nhello\r\n1;ext=1\r\n,\r\n6\r\n world\r\n0\r\n\r\n";
    stream
        .write_all(request.as_bytes())
        .await
        .expect("write chunked request");
    let mut reader = RawReader::new();
    let response = within("echo of a chunked body", reader.response(&mut stream)).await;
    assert_eq!(
        (response.status, response.text().as_str()),
        (200, "hello, world")
    );
    assert_eq!(
        response.header("x-request-framing"),
        Some("transfer-encoding: chunked"),
        "a body of unknown length goes on chunked"
    );
    stream
        .write_all(get("/chunked").as_bytes())
        .await
        .expect("write request");
    let response = within("chunked response", reader.response(&mut stream)).await;
    assert_eq!(response.header("transfer-encoding"), Some("chunked"));
    assert_eq!(response.text(), "one,two,three");

    // Trailers pass both ways: the request's to the upstream, the answer's (announced
    // in `Trailer`) to a client that says `TE: trailers`.
    let request = "POST /trailers HTTP/1.1\r\nhost: test\r\nte: trailers\r\nconnection: te\r\n\
                   trailer: x-sent\r\ntransfer-encoding: chunked\r\n\r\n\
                   2\r\nhi\r\n0\r\nx-sent: yes\r\n\r\n";
    stream
        .write_all(request.as_bytes())
        .await
        .expect("write request with trailers");
    let response = within("answer with trailers", reader.response(&mut stream)).await;
    assert_eq!(response.text(), "te=trailers; x-sent=yes");
    assert_eq!(response.header("trailer"), Some("x-checksum"));
    assert_eq!(response.trailers, ["x-checksum: 42"]);
    registry.shutdown().await;
}

// ---------------------------------------------------------------------------------
// Large bodies, streamed

/// The byte at `i` of a test stream.
fn pattern(i: usize) -> u8 {
    (i % 251) as u8
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_through_without_being_held_whole() {
    const TOTAL: usize = 20 * MIB;
    let (registry, listen, _) = setup().await;
    let stream = connect(listen).await;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("client handshake");
    tokio::spawn(connection);
    let (frames, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
    let request = Request::post("/echo")
        .header("host", "test")
        .body(StreamBody::new(ReceiverStream::new(rx)))
        .expect("request");
    let (received_tx, mut received_rx) = tokio::sync::watch::channel(0usize);
    // Each MiB goes out only once all but one of those before it came back: if any
    // hop held the body whole (or a large part of it), this would stall.
    let writer = tokio::spawn(async move {
        for i in 0..TOTAL / MIB {
            let wanted = i.saturating_sub(1) * MIB;
            let arrived = received_rx.wait_for(|got| *got >= wanted);
            if within("echo of the earlier MiB", arrived).await.is_err() {
                return;
            }
            let data: Vec<u8> = (i * MIB..(i + 1) * MIB).map(pattern).collect();
            if frames
                .send(Ok(Frame::data(Bytes::from(data))))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let response = within("echo response head", sender.send_request(request))
        .await
        .expect("echo response");
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let mut got = 0usize;
    while let Some(frame) = within("echo body", body.frame()).await {
        let frame = frame.expect("body frame");
        if let Some(data) = frame.data_ref() {
            for (k, byte) in data.iter().enumerate() {
                assert_eq!(*byte, pattern(got + k), "byte {} changed", got + k);
            }
            got += data.len();
            received_tx.send_replace(got);
        }
    }
    assert_eq!(got, TOTAL);
    writer.await.expect("writer task");
    registry.shutdown().await;
}

// ---------------------------------------------------------------------------------
// Real clients: curl and Python's http.client

fn have(program: &str) {
    let found = std::process::Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(found, "{program} is needed by this test and was not found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_sends_and_receives_20_mib_with_expect_continue_and_chunked() {
    have("curl");
    let (registry, listen, _) = setup().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let upload = dir.path().join("upload.bin");
    let data: Vec<u8> = (0..20 * MIB).map(pattern).collect();
    std::fs::write(&upload, &data).expect("write upload file");
    let proxied = format!("http://{listen}/echo");
    // The same transfers straight to the upstream are the baseline for the figures.
    let direct = format!("http://{}/echo", registry.targets()[0].upstream);
    let run = |url: &str, extra: &[&str], out: &Path| {
        let mut command = tokio::process::Command::new("curl");
        command
            .args(["--http1.1", "-sS", "-v", "--max-time", "60"])
            // If the 100 never came, curl would wait this long before sending anyway.
            .args(["--expect100-timeout", "25"])
            .args(["--data-binary", &format!("@{}", upload.display())])
            .args(["-H", "Content-Type: application/octet-stream"])
            .args(extra)
            .arg("-o")
            .arg(out)
            .args(["-w", "%{http_code} %{time_total}"])
            .arg(url);
        command.output()
    };
    for (name, extra) in [
        (
            "sized, expect 100-continue",
            &["-H", "Expect: 100-continue"][..],
        ),
        (
            "chunked, expect 100-continue",
            &[
                "-H",
                "Expect: 100-continue",
                "-H",
                "Transfer-Encoding: chunked",
            ][..],
        ),
    ] {
        let mut seconds_via = Vec::new();
        for url in [&direct, &proxied] {
            let out = dir.path().join("echoed.bin");
            let output = within(name, run(url, extra, &out)).await.expect("run curl");
            let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
            let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
            assert!(
                output.status.success(),
                "{name} {url}: curl failed: {stderr}"
            );
            let (code, seconds) = stdout.split_once(' ').expect("curl -w output");
            assert_eq!(code, "200", "{name} {url}: {stderr}");
            assert!(
                stderr.contains("< HTTP/1.1 100 Continue"),
                "{name} {url}: curl saw no 100 Continue: {stderr}"
            );
            let seconds: f64 = seconds.trim().parse().expect("time_total");
            assert!(
                seconds < 25.0,
                "{name} {url}: took {seconds} s: curl waited for a 100 that never came"
            );
            let echoed = std::fs::read(&out).expect("read echoed file");
            assert_eq!(echoed.len(), data.len(), "{name} {url}: echoed length");
            assert!(
                echoed == data,
                "{name} {url}: the 20 MiB changed on the way"
            );
            seconds_via.push(seconds);
        }
        eprintln!(
            "{name}: 20 MiB up and back: straight {:.3} s, through the proxy {:.3} s ({:.2}x)",
            seconds_via[0],
            seconds_via[1],
            seconds_via[1] / seconds_via[0]
        );
    }
    registry.shutdown().await;
}

/// Python's http.client: keep-alive requests on one connection, a chunked upload,
/// `Connection: close`; and a raw socket that pipelines two requests and half-closes.
const PYTHON_CLIENT: &str = r#"
import http.client, json, socket, sys
port = int(sys.argv[1])
out = {}
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
out["keep_alive"] = []
for _ in range(3):
    conn.request("GET", "/hello")
    r = conn.getresponse()
    out["keep_alive"].append([r.status, r.read().decode(), r.getheader("x-upstream")])
conn.request("POST", "/echo", body=iter([b"abc", b"def", b"ghi"]), encode_chunked=True)
r = conn.getresponse()
out["chunked"] = [r.status, r.read().decode(), r.getheader("x-request-framing")]
conn.request("POST", "/echo", body=b"x" * 100000, headers={"Expect": "100-continue"})
r = conn.getresponse()
out["expect"] = [r.status, len(r.read())]
conn.request("GET", "/hello", headers={"Connection": "close"})
r = conn.getresponse()
out["close"] = [r.status, r.read().decode(), r.getheader("connection")]
conn.close()
s = socket.create_connection(("127.0.0.1", port), timeout=20)
s.sendall(b"GET /n/1 HTTP/1.1\r\nHost: t\r\n\r\nGET /n/2 HTTP/1.1\r\nHost: t\r\n\r\n")
s.shutdown(socket.SHUT_WR)
data = b""
while chunk := s.recv(65536):
    data += chunk
answers = data.split(b"HTTP/1.1 ")[1:]
out["pipelined_half_closed"] = ["HTTP/1.1 " + a.split(b"\r\n", 1)[0].decode() for a in answers]
out["pipelined_bodies"] = [a.split(b"\r\n\r\n", 1)[1].decode() for a in answers]
print(json.dumps(out))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_http_client_sees_the_upstream_unchanged() {
    have("python3");
    let (registry, listen, _) = setup().await;
    let output = within(
        "python client",
        tokio::process::Command::new("python3")
            .args(["-c", PYTHON_CLIENT, &listen.port().to_string()])
            .output(),
    )
    .await
    .expect("run python3");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "python client failed: {stderr}");
    let seen: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("python client prints JSON");
    let expected = serde_json::json!({
        "keep_alive": [[200, "hello", "yes"], [200, "hello", "yes"], [200, "hello", "yes"]],
        "chunked": [200, "abcdefghi", "transfer-encoding: chunked"],
        "expect": [200, 100000],
        "close": [200, "hello", "close"],
        "pipelined_half_closed": ["HTTP/1.1 200 OK", "HTTP/1.1 200 OK"],
        "pipelined_bodies": ["1", "2"],
    });
    assert_eq!(seen, expected);
    registry.shutdown().await;
}

// ---------------------------------------------------------------------------------
// Upgrades (WebSocket)

/// Starts the Python WebSocket echo upstream; its address and the child process.
async fn websocket_upstream() -> (SocketAddr, tokio::process::Child) {
    have("python3");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/websocket.py");
    let mut child = tokio::process::Command::new("python3")
        .arg(&script)
        .args(["serve", "0"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the websocket upstream");
    let stdout = child.stdout.take().expect("upstream stdout");
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let line = within("websocket upstream ready", lines.next_line())
        .await
        .expect("read upstream stdout")
        .expect("upstream prints its port");
    let port: u16 = line
        .strip_prefix("listening ")
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("unexpected upstream output {line:?}"));
    (SocketAddr::from(([127, 0, 0, 1], port)), child)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_becomes_a_tunnel_both_ways() {
    let (upstream, _child) = websocket_upstream().await;
    let (registry, listen) = proxy_to(upstream).await;
    let (seen, _) = websocket_talk(listen).await;
    assert_eq!(seen["status"], 101, "{seen}");
    assert_eq!(
        seen["accept_ok"], true,
        "Sec-WebSocket-Accept unchanged: {seen}"
    );
    assert_eq!(seen["upgrade"], "websocket", "{seen}");
    assert_eq!(
        seen["echoes"],
        serde_json::json!([
            "echo: one",
            "echo: two",
            "echo: ".to_string() + &"x".repeat(70_000)
        ]),
    );
    assert_eq!(seen["close_code"], 1000, "{seen}");
    assert_eq!(
        seen["closed_after"], true,
        "the tunnel ends with the upstream"
    );

    // Network toxics act on the tunnel too: 200 ms on every answer, handshake
    // included, makes five exchanges take at least a second.
    let latency = NetworkFault {
        target: "web".into(),
        proxy: None,
        toxic: Toxic::Latency {
            latency: Span::from_millis(200),
            jitter: Span::from_millis(0),
        },
        direction: Direction::Downstream,
        toxicity: 1.0,
    };
    registry
        .add_network_fault("web", &latency, LEASE)
        .expect("latency toxic");
    let (seen, took) = websocket_talk(listen).await;
    assert_eq!(seen["echoes"][0], "echo: one", "{seen}");
    assert!(
        took >= Duration::from_millis(1000),
        "five exchanges under 200 ms latency took {took:?}"
    );
    registry.shutdown().await;
}

/// Runs the WebSocket client through `listen`: what it saw, and how long it took.
async fn websocket_talk(listen: SocketAddr) -> (serde_json::Value, Duration) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/websocket.py");
    let started = Instant::now();
    let output = within(
        "websocket client",
        tokio::process::Command::new("python3")
            .arg(&script)
            .args(["talk", &listen.port().to_string()])
            .output(),
    )
    .await
    .expect("run the websocket client");
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "websocket client failed: {stdout} {stderr}"
    );
    let seen = serde_json::from_str(&stdout).expect("client prints JSON");
    (seen, took)
}
