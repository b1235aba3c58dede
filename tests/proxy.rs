//! chaosgate's fault proxies under real traffic on 127.0.0.1: a real echo server and a
//! real HTTP server as upstreams, real clients (TCP sockets, reqwest), the embedded
//! registry, and the standalone `chaosgate proxy` binary driven through its control API.

use std::future::Future;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::routing::{any, get, post};
use bytes::Bytes;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use chaosgate::catalog::Span;
use chaosgate::catalog::experiment::{
    Direction, HttpAction, HttpFault, HttpMatch, NetworkFault, Toxic,
};
use chaosgate::chaos::proxy::{
    FaultBackend, FaultId, ProxyAccess, ProxyClient, ProxyError, ProxyProtocol, ProxyRegistry,
    ProxyTarget,
};

/// Outer bound on every wait: a bug fails the test instead of hanging it.
const WAIT: Duration = Duration::from_secs(20);

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, fut).await {
        Ok(value) => value,
        Err(_) => panic!("{what}: no result within {WAIT:?}"),
    }
}

fn ms(n: u64) -> Span {
    Span::from_millis(n)
}

/// An upstream echo server; `received` counts the bytes it got.
struct Echo {
    addr: SocketAddr,
    received: Arc<AtomicU64>,
}

async fn echo_server() -> Echo {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
    let addr = listener.local_addr().expect("echo addr");
    let received = Arc::new(AtomicU64::new(0));
    let count = Arc::clone(&received);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let count = Arc::clone(&count);
            tokio::spawn(async move {
                let _ = socket.set_nodelay(true);
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            count.fetch_add(n as u64, Ordering::SeqCst);
                            if socket.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = socket.shutdown().await;
            });
        }
    });
    Echo { addr, received }
}

fn target(name: &str, upstream: SocketAddr, protocol: ProxyProtocol) -> ProxyTarget {
    ProxyTarget {
        name: name.into(),
        listen: "127.0.0.1:0".parse().expect("addr"),
        upstream: upstream.to_string(),
        protocol,
    }
}

/// A registry with one TCP target `echo` in front of a fresh echo server.
async fn tcp_proxy() -> (Arc<ProxyRegistry>, SocketAddr, Echo) {
    let echo = echo_server().await;
    let registry = ProxyRegistry::start(&[target("echo", echo.addr, ProxyProtocol::Tcp)])
        .await
        .expect("start proxy");
    let listen = registry.targets()[0].listen;
    (registry, listen, echo)
}

fn network(toxic: Toxic, direction: Direction, toxicity: f64) -> NetworkFault {
    NetworkFault {
        target: "echo".into(),
        proxy: None,
        toxic,
        direction,
        toxicity,
    }
}

fn latency(millis: u64, jitter: u64) -> Toxic {
    Toxic::Latency {
        latency: ms(millis),
        jitter: ms(jitter),
    }
}

const LEASE: Duration = Duration::from_secs(60);

async fn connect(addr: SocketAddr) -> TcpStream {
    let stream = within("connect", TcpStream::connect(addr))
        .await
        .expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    stream
}

/// One 64-byte request/response through the echo server; its duration.
async fn round_trip(stream: &mut TcpStream) -> Duration {
    let msg = [7u8; 64];
    let mut back = [0u8; 64];
    let start = Instant::now();
    within("round trip", async {
        stream.write_all(&msg).await.expect("write");
        stream.read_exact(&mut back).await.expect("read echo");
    })
    .await;
    start.elapsed()
}

async fn round_trips(stream: &mut TcpStream, n: usize) -> Vec<Duration> {
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        samples.push(round_trip(stream).await);
    }
    samples
}

fn median(samples: &[Duration]) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    sorted[sorted.len() / 2]
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Reads until end of stream or an error; the bytes and how it ended.
async fn read_to_end(stream: &mut TcpStream) -> (Vec<u8>, std::io::Result<()>) {
    let mut data = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) => return (data, Ok(())),
            Ok(n) => data.extend_from_slice(&buf[..n]),
            Err(err) => return (data, Err(err)),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pass_through_keeps_bytes_identical_on_many_connections() {
    let (registry, listen, _echo) = tcp_proxy().await;
    let mut clients = Vec::new();
    for c in 0..32u64 {
        clients.push(tokio::spawn(async move {
            let stream = connect(listen).await;
            let (mut read, mut write) = stream.into_split();
            // 512 KiB of bytes that differ per connection.
            let sent: Vec<u8> = (0..512 * 1024u64)
                .map(|i| (i.wrapping_mul(31).wrapping_add(c * 7) % 251) as u8)
                .collect();
            let to_send = sent.clone();
            let writer = tokio::spawn(async move {
                write.write_all(&to_send).await.expect("write");
                write.shutdown().await.expect("half close");
            });
            let mut got = Vec::new();
            read.read_to_end(&mut got).await.expect("read back");
            writer.await.expect("writer");
            assert!(got == sent, "connection {c}: echoed bytes differ");
        }));
    }
    for client in clients {
        within("32 echo clients", client).await.expect("client");
    }
    let status = &registry.targets()[0];
    assert_eq!(status.connections_total, 32);
    registry.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_adds_its_value_at_p50() {
    let (registry, listen, _echo) = tcp_proxy().await;
    let mut stream = connect(listen).await;
    let base = median(&round_trips(&mut stream, 40).await);
    let id = registry
        .add_network_fault(
            "echo",
            &network(latency(50, 0), Direction::Downstream, 1.0),
            LEASE,
        )
        .expect("add latency");
    let slow = median(&round_trips(&mut stream, 40).await);
    let added = millis(slow) - millis(base);
    eprintln!(
        "latency 50 ms: added p50 {added:.2} ms (base p50 {:.3} ms)",
        millis(base)
    );
    assert!(
        (45.0..=55.0).contains(&added),
        "added latency at p50 {added:.2} ms, configured 50 ms (base {:.2} ms)",
        millis(base)
    );
    assert!(registry.remove(id));
    registry.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jitter_stays_within_its_bounds() {
    let (registry, listen, _echo) = tcp_proxy().await;
    let mut stream = connect(listen).await;
    let base = median(&round_trips(&mut stream, 20).await);
    registry
        .add_network_fault(
            "echo",
            &network(latency(40, 20), Direction::Downstream, 1.0),
            LEASE,
        )
        .expect("add jitter");
    let samples = round_trips(&mut stream, 60).await;
    let added: Vec<f64> = samples.iter().map(|s| millis(*s) - millis(base)).collect();
    let low = added.iter().copied().fold(f64::MAX, f64::min);
    let high = added.iter().copied().fold(f64::MIN, f64::max);
    // The proxy never delivers early; a loaded machine can only add, so a couple of
    // late outliers are tolerated above the upper bound.
    assert!(
        low >= 18.0,
        "smallest added latency {low:.2} ms, bound 40 - 20 ms"
    );
    let late = added.iter().filter(|a| **a > 65.0).count();
    assert!(
        late <= 2,
        "{late} of 60 samples above 40 + 20 ms: {added:?}"
    );
    assert!(
        high - low >= 10.0,
        "jitter spread only {:.2} ms",
        high - low
    );
    // The median of 60 uniform draws over 40 ms varies by about 2 ms (one sigma) on
    // its own; the +/- 5 ms precision is checked without jitter above.
    let p50 = millis(median(&samples)) - millis(base);
    assert!(
        (30.0..=50.0).contains(&p50),
        "p50 added {p50:.2} ms, configured 40 ms"
    );
    registry.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bandwidth_is_within_ten_percent() {
    let (registry, listen, _echo) = tcp_proxy().await;
    registry
        .add_network_fault(
            "echo",
            &network(
                Toxic::Bandwidth { rate: 200_000 },
                Direction::Downstream,
                1.0,
            ),
            LEASE,
        )
        .expect("add bandwidth");
    let stream = connect(listen).await;
    let (mut read, mut write) = stream.into_split();
    const TOTAL: usize = 400_000;
    let start = Instant::now();
    let writer = tokio::spawn(async move {
        write.write_all(&vec![1u8; TOTAL]).await.expect("write");
        write
    });
    let mut got = vec![0u8; TOTAL];
    within("400 KB at 200 KB/s", read.read_exact(&mut got))
        .await
        .expect("read");
    let elapsed = start.elapsed().as_secs_f64();
    let rate = TOTAL as f64 / elapsed;
    eprintln!("bandwidth 200000 B/s: measured {rate:.0} B/s over {elapsed:.2} s");
    assert!(
        (180_000.0..=220_000.0).contains(&rate),
        "measured {rate:.0} B/s over {elapsed:.2} s, configured 200000 B/s"
    );
    drop(writer.await.expect("writer"));
    registry.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_blackholes_data_and_resumes_when_removed() {
    let (registry, listen, echo) = tcp_proxy().await;
    let mut stream = connect(listen).await;
    round_trip(&mut stream).await;
    let id = registry
        .add_network_fault(
            "echo",
            &network(Toxic::Timeout { after: ms(0) }, Direction::Both, 1.0),
            LEASE,
        )
        .expect("add timeout");
    stream
        .write_all(b"ping")
        .await
        .expect("write into the blackhole");
    let mut buf = [0u8; 4];
    let read = tokio::time::timeout(Duration::from_millis(500), stream.read(&mut buf)).await;
    assert!(read.is_err(), "expected no data and no close, got {read:?}");
    assert_eq!(
        echo.received.load(Ordering::SeqCst),
        64,
        "upstream got the held bytes"
    );
    // Removing the fault lets the held bytes through: the connection resumes.
    assert!(registry.remove(id));
    within("held bytes after removal", stream.read_exact(&mut buf))
        .await
        .expect("read after removal");
    assert_eq!(&buf, b"ping");
    round_trip(&mut stream).await;

    // With `after`, the connection is closed that long after the toxic applied.
    registry
        .add_network_fault(
            "echo",
            &network(
                Toxic::Timeout { after: ms(300) },
                Direction::Downstream,
                1.0,
            ),
            LEASE,
        )
        .expect("add timeout with after");
    let mut stream = connect(listen).await;
    let start = Instant::now();
    stream.write_all(b"ping").await.expect("write");
    let (data, _) = within("close after 300 ms", read_to_end(&mut stream)).await;
    let elapsed = start.elapsed();
    assert!(data.is_empty(), "data came through a blackhole: {data:?}");
    assert!(
        elapsed >= Duration::from_millis(280) && elapsed < Duration::from_secs(3),
        "closed after {elapsed:?}, configured 300 ms"
    );
    registry.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_peer_is_seen_as_connection_reset() {
    let (registry, listen, _echo) = tcp_proxy().await;
    registry
        .add_network_fault(
            "echo",
            &network(
                Toxic::ResetPeer { after: ms(300) },
                Direction::Downstream,
                1.0,
            ),
            LEASE,
        )
        .expect("add reset_peer");
    let mut stream = connect(listen).await;
    let start = Instant::now();
    round_trip(&mut stream).await;
    let mut buf = [0u8; 16];
    let read = within("reset", stream.read(&mut buf)).await;
    let elapsed = start.elapsed();
    let err = read.expect_err("a reset, not data or end of stream");
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
    assert!(
        elapsed >= Duration::from_millis(280),
        "reset after {elapsed:?}, configured 300 ms"
    );
    registry.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_data_closes_after_its_bytes() {
    let (registry, listen, _echo) = tcp_proxy().await;
    registry
        .add_network_fault(
            "echo",
            &network(Toxic::LimitData { bytes: 1000 }, Direction::Downstream, 1.0),
            LEASE,
        )
        .expect("add limit_data");
    let mut stream = connect(listen).await;
    stream.write_all(&[3u8; 5000]).await.expect("write");
    let (data, _) = within("limit_data close", read_to_end(&mut stream)).await;
    assert_eq!(data.len(), 1000, "bytes through a 1000-byte limit");
    registry.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_close_delays_the_end_of_stream() {
    let (registry, listen, _echo) = tcp_proxy().await;
    let close_time = |mut stream: TcpStream| async move {
        round_trip(&mut stream).await;
        let start = Instant::now();
        stream.shutdown().await.expect("half close");
        let (data, end) = within("end of stream", read_to_end(&mut stream)).await;
        assert!(
            data.is_empty() && end.is_ok(),
            "clean end expected: {data:?} {end:?}"
        );
        start.elapsed()
    };
    let plain = close_time(connect(listen).await).await;
    assert!(
        plain < Duration::from_millis(150),
        "close without fault took {plain:?}"
    );
    registry
        .add_network_fault(
            "echo",
            &network(
                Toxic::SlowClose { delay: ms(400) },
                Direction::Downstream,
                1.0,
            ),
            LEASE,
        )
        .expect("add slow_close");
    let slow = close_time(connect(listen).await).await;
    assert!(
        slow >= Duration::from_millis(390) && slow < Duration::from_secs(3),
        "close with slow_close 400 ms took {slow:?}"
    );
    registry.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuse_closes_new_connections_only() {
    let (registry, listen, _echo) = tcp_proxy().await;
    let mut open = connect(listen).await;
    round_trip(&mut open).await;
    let id = registry
        .add_network_fault("echo", &network(Toxic::Refuse, Direction::Both, 1.0), LEASE)
        .expect("add refuse");
    // The connect itself may already see the reset.
    let read = within("refused connection", async {
        let mut refused = TcpStream::connect(listen).await?;
        let _ = refused.write_all(b"hello").await;
        let mut buf = [0u8; 8];
        refused.read(&mut buf).await
    })
    .await;
    assert!(
        matches!(read, Ok(0)) || read.is_err(),
        "a refused connection must end at once, got {read:?}"
    );
    round_trip(&mut open).await;
    assert!(registry.targets()[0].connections_refused >= 1);
    assert!(registry.remove(id));
    let mut again = connect(listen).await;
    round_trip(&mut again).await;
    registry.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direction_is_respected() {
    let (registry, listen, echo) = tcp_proxy().await;
    // Upstream blackhole: the upstream never sees the client's bytes.
    let id = registry
        .add_network_fault(
            "echo",
            &network(Toxic::Timeout { after: ms(0) }, Direction::Upstream, 1.0),
            LEASE,
        )
        .expect("add upstream timeout");
    let mut stream = connect(listen).await;
    stream.write_all(b"ping").await.expect("write");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        echo.received.load(Ordering::SeqCst),
        0,
        "upstream got data through an upstream blackhole"
    );
    assert!(registry.remove(id));
    drop(stream);

    // Downstream blackhole: the upstream gets the bytes, the client gets nothing back.
    registry
        .add_network_fault(
            "echo",
            &network(Toxic::Timeout { after: ms(0) }, Direction::Downstream, 1.0),
            LEASE,
        )
        .expect("add downstream timeout");
    let before = echo.received.load(Ordering::SeqCst);
    let mut stream = connect(listen).await;
    stream.write_all(b"pong").await.expect("write");
    let mut buf = [0u8; 4];
    let read = tokio::time::timeout(Duration::from_millis(300), stream.read(&mut buf)).await;
    assert!(
        read.is_err(),
        "client got {read:?} through a downstream blackhole"
    );
    assert!(
        echo.received.load(Ordering::SeqCst) >= before + 4,
        "upstream did not get the bytes sent upstream"
    );
    registry.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toxicity_half_hits_about_half_of_the_connections() {
    let (registry, listen, _echo) = tcp_proxy().await;
    // A hit connection gets 10 of its 64 bytes back: no timing involved.
    registry
        .add_network_fault(
            "echo",
            &network(Toxic::LimitData { bytes: 10 }, Direction::Downstream, 0.5),
            LEASE,
        )
        .expect("add limit_data at 0.5");
    let mut tasks = Vec::new();
    for _ in 0..200 {
        tasks.push(tokio::spawn(async move {
            let mut stream = connect(listen).await;
            stream.write_all(&[9u8; 64]).await.expect("write");
            stream.shutdown().await.expect("half close");
            read_to_end(&mut stream).await.0.len()
        }));
    }
    let mut hit = 0;
    for task in tasks {
        match within("toxicity client", task).await.expect("client") {
            10 => hit += 1,
            64 => {}
            other => panic!("a connection got {other} bytes back, expected 10 or 64"),
        }
    }
    eprintln!("toxicity 0.5: {hit} of 200 connections hit");
    assert!(
        (60..=140).contains(&hit),
        "{hit} of 200 connections hit at toxicity 0.5"
    );
    registry.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_apply_and_lift_mid_connection() {
    let (registry, listen, _echo) = tcp_proxy().await;
    let mut stream = connect(listen).await;
    assert!(round_trip(&mut stream).await < Duration::from_millis(50));
    let id = registry
        .add_network_fault(
            "echo",
            &network(latency(100, 0), Direction::Both, 1.0),
            LEASE,
        )
        .expect("add latency");
    // Both ways: 100 ms up and 100 ms down.
    let slow = round_trip(&mut stream).await;
    assert!(
        slow >= Duration::from_millis(195),
        "round trip with 2 x 100 ms: {slow:?}"
    );
    assert!(registry.remove(id));
    let fast = median(&round_trips(&mut stream, 5).await);
    assert!(
        fast < Duration::from_millis(50),
        "round trip after removal: {fast:?}"
    );
    assert_eq!(registry.active_fault_count(), 0);
    registry.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unrenewed_lease_expires_within_lease_plus_one_second() {
    let (registry, listen, _echo) = tcp_proxy().await;
    let mut stream = connect(listen).await;
    let lease = Duration::from_millis(500);
    let added = Instant::now();
    let id = registry
        .add_network_fault(
            "echo",
            &network(latency(100, 0), Direction::Downstream, 1.0),
            lease,
        )
        .expect("add latency");
    assert!(round_trip(&mut stream).await >= Duration::from_millis(95));
    let back = within("traffic back to normal", async {
        loop {
            if round_trip(&mut stream).await < Duration::from_millis(50) {
                return added.elapsed();
            }
        }
    })
    .await;
    eprintln!("lease 500 ms not renewed: traffic normal after {back:?}");
    assert!(
        back <= lease + Duration::from_secs(1),
        "normal after {back:?}, lease {lease:?}"
    );
    assert!(
        back >= lease - Duration::from_millis(50),
        "expired early, after {back:?}"
    );
    assert_eq!(registry.active_fault_count(), 0);
    assert!(matches!(
        registry.renew(id, lease),
        Err(ProxyError::UnknownFault(_))
    ));

    // A renewed lease keeps the fault well past its first expiry.
    let id = registry
        .add_network_fault(
            "echo",
            &network(latency(100, 0), Direction::Downstream, 1.0),
            Duration::from_millis(300),
        )
        .expect("add latency");
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        registry
            .renew(id, Duration::from_millis(300))
            .expect("renew");
    }
    assert_eq!(registry.active_fault_count(), 1);
    assert!(round_trip(&mut stream).await >= Duration::from_millis(95));
    registry.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_refuses_what_it_cannot_apply() {
    let (registry, _listen, echo) = tcp_proxy().await;
    let err = registry
        .add_network_fault("nope", &network(Toxic::Refuse, Direction::Both, 1.0), LEASE)
        .expect_err("unknown target");
    assert!(matches!(err, ProxyError::UnknownTarget(ref name) if name == "nope"));
    let err = registry
        .add_network_fault("echo", &network(Toxic::Refuse, Direction::Both, 1.5), LEASE)
        .expect_err("toxicity 1.5");
    assert!(matches!(err, ProxyError::InvalidFault { ref field, .. } if field == "toxicity"));
    let err = registry
        .add_network_fault(
            "echo",
            &network(Toxic::Refuse, Direction::Both, 1.0),
            Duration::ZERO,
        )
        .expect_err("zero lease");
    assert!(matches!(err, ProxyError::InvalidFault { ref field, .. } if field == "lease"));
    let err = registry
        .add_http_fault(
            "echo",
            &http_fault(
                HttpAction::Delay { delay: ms(1) },
                HttpMatch::default(),
                1.0,
            ),
            LEASE,
        )
        .expect_err("http fault on a tcp target");
    assert!(matches!(err, ProxyError::WrongProtocol { .. }), "{err}");
    assert!(!registry.remove(FaultId(1)));
    assert!(matches!(
        registry.renew(FaultId(1), LEASE),
        Err(ProxyError::UnknownFault(_))
    ));

    let twice = [
        target("a", echo.addr, ProxyProtocol::Tcp),
        target("a", echo.addr, ProxyProtocol::Tcp),
    ];
    assert!(matches!(
        ProxyRegistry::start(&twice).await,
        Err(ProxyError::DuplicateTarget(_))
    ));
    let taken = ProxyTarget {
        listen: registry.targets()[0].listen,
        ..target("b", echo.addr, ProxyProtocol::Tcp)
    };
    let err = ProxyRegistry::start(&[taken])
        .await
        .expect_err("address in use");
    assert!(err.to_string().contains("proxy target 'b'"), "{err}");

    // Shutdown closes the listener.
    let listen = registry.targets()[0].listen;
    registry.shutdown().await;
    assert!(
        TcpStream::connect(listen).await.is_err(),
        "listener still open after shutdown"
    );
}

// ---------------------------------------------------------------------------------
// HTTP

fn http_fault(action: HttpAction, matches: HttpMatch, percentage: f64) -> HttpFault {
    HttpFault {
        target: "web".into(),
        proxy: None,
        action,
        matches,
        percentage,
    }
}

/// A real HTTP upstream; `hits` counts the requests it served.
async fn http_upstream() -> (SocketAddr, Arc<AtomicU64>) {
    let hits = Arc::new(AtomicU64::new(0));
    let app = axum::Router::new()
        .route(
            "/hello",
            get(|State(hits): State<Arc<AtomicU64>>| async move {
                hits.fetch_add(1, Ordering::SeqCst);
                ([("x-upstream", "yes")], "hello")
            }),
        )
        .route(
            "/echo",
            post(
                |State(hits): State<Arc<AtomicU64>>, body: Bytes| async move {
                    hits.fetch_add(1, Ordering::SeqCst);
                    body
                },
            ),
        )
        .route(
            "/api/{*rest}",
            any(|State(hits): State<Arc<AtomicU64>>| async move {
                hits.fetch_add(1, Ordering::SeqCst);
                "api"
            }),
        )
        .with_state(Arc::clone(&hits));
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind http upstream");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, hits)
}

struct HttpSetup {
    registry: Arc<ProxyRegistry>,
    base: String,
    hits: Arc<AtomicU64>,
    client: reqwest::Client,
}

async fn http_proxy() -> HttpSetup {
    let (upstream, hits) = http_upstream().await;
    let registry = ProxyRegistry::start(&[target("web", upstream, ProxyProtocol::Http)])
        .await
        .expect("start http proxy");
    let base = format!("http://{}", registry.targets()[0].listen);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    HttpSetup {
        registry,
        base,
        hits,
        client,
    }
}

impl HttpSetup {
    async fn get(&self, path: &str) -> (u16, String, reqwest::header::HeaderMap) {
        within("http get", async {
            let response = self
                .client
                .get(format!("{}{path}", self.base))
                .send()
                .await
                .expect("get");
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            (status, response.text().await.expect("body"), headers)
        })
        .await
    }
}

/// Sends one HTTP/1.1 request on a raw socket and reads one response (Content-Length
/// framed): its status and body. The socket stays open for the next request.
async fn raw_request(stream: &mut TcpStream, path: &str) -> (u16, String) {
    within("raw HTTP request", async {
        let request = format!("GET {path} HTTP/1.1\r\nhost: test\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .expect("write request");
        let mut data = Vec::new();
        let mut buf = [0u8; 4096];
        let head_end = loop {
            if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            let n = stream.read(&mut buf).await.expect("read response");
            assert!(n > 0, "connection closed before a response");
            data.extend_from_slice(&buf[..n]);
        };
        let head = String::from_utf8_lossy(&data[..head_end]).to_ascii_lowercase();
        let status: u16 = head[9..12].parse().expect("status code");
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map(|v| v.trim().parse().expect("content-length"))
            .expect("a content-length header");
        while data.len() < head_end + length {
            let n = stream.read(&mut buf).await.expect("read body");
            assert!(n > 0, "connection closed inside a body");
            data.extend_from_slice(&buf[..n]);
        }
        (
            status,
            String::from_utf8_lossy(&data[head_end..head_end + length]).into_owned(),
        )
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_pass_through_reuses_the_keep_alive_connection() {
    let web = http_proxy().await;
    for _ in 0..10 {
        let (status, body, headers) = web.get("/hello").await;
        assert_eq!((status, body.as_str()), (200, "hello"));
        assert_eq!(
            headers.get("x-upstream").map(|v| v.as_bytes()),
            Some(&b"yes"[..])
        );
        // Lets reqwest put the connection back in its pool before the next request.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = &web.registry.targets()[0];
    assert_eq!(
        status.connections_total, 1,
        "10 requests should share one keep-alive connection"
    );
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    let echoed = within("post echo", async {
        web.client
            .post(format!("{}/echo", web.base))
            .body(payload.clone())
            .send()
            .await
            .expect("post")
            .bytes()
            .await
            .expect("body")
    })
    .await;
    assert!(
        echoed.as_ref() == payload.as_slice(),
        "POST body changed on the way"
    );
    assert_eq!(web.hits.load(Ordering::SeqCst), 11);
    // Three requests on one raw socket: each answered, the socket kept open.
    let mut stream = connect(web.registry.targets()[0].listen).await;
    for _ in 0..3 {
        assert_eq!(
            raw_request(&mut stream, "/hello").await,
            (200, "hello".to_string())
        );
    }
    web.registry.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_abort_answers_without_calling_upstream() {
    let web = http_proxy().await;
    let matches = HttpMatch {
        path_prefix: Some("/api".into()),
        ..HttpMatch::default()
    };
    web.registry
        .add_http_fault(
            "web",
            &http_fault(
                HttpAction::Abort {
                    status: 503,
                    body: Some("down for chaos".into()),
                },
                matches,
                1.0,
            ),
            LEASE,
        )
        .expect("add abort");
    let (status, body, _) = web.get("/api/pay").await;
    assert_eq!((status, body.as_str()), (503, "down for chaos"));
    assert_eq!(
        web.hits.load(Ordering::SeqCst),
        0,
        "an aborted request reached upstream"
    );
    let (status, body, _) = web.get("/hello").await;
    assert_eq!(
        (status, body.as_str()),
        (200, "hello"),
        "a request outside the path prefix"
    );
    // An aborted request keeps its connection alive for the next one.
    let mut stream = connect(web.registry.targets()[0].listen).await;
    assert_eq!(
        raw_request(&mut stream, "/api/x").await,
        (503, "down for chaos".to_string())
    );
    assert_eq!(
        raw_request(&mut stream, "/hello").await,
        (200, "hello".to_string())
    );
    web.registry.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_delay_applies_to_the_matching_method_only() {
    let web = http_proxy().await;
    let matches = HttpMatch {
        method: Some("POST".into()),
        ..HttpMatch::default()
    };
    web.registry
        .add_http_fault(
            "web",
            &http_fault(HttpAction::Delay { delay: ms(300) }, matches, 1.0),
            LEASE,
        )
        .expect("add delay");
    let start = Instant::now();
    let echoed = within("delayed post", async {
        web.client
            .post(format!("{}/echo", web.base))
            .body("abc")
            .send()
            .await
            .expect("post")
            .text()
            .await
            .expect("body")
    })
    .await;
    let post = start.elapsed();
    assert_eq!(echoed, "abc");
    assert!(
        post >= Duration::from_millis(295),
        "POST took {post:?} with a 300 ms delay"
    );
    let start = Instant::now();
    let (status, _, _) = web.get("/hello").await;
    assert_eq!(status, 200);
    assert!(
        start.elapsed() < Duration::from_millis(200),
        "GET was delayed: {:?}",
        start.elapsed()
    );
    web.registry.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_modify_changes_status_headers_and_body() {
    let web = http_proxy().await;
    let mut headers = std::collections::BTreeMap::new();
    headers.insert("x-fault".to_string(), "injected".to_string());
    web.registry
        .add_http_fault(
            "web",
            &http_fault(
                HttpAction::Modify {
                    status: Some(500),
                    headers,
                    body: Some("broken".into()),
                },
                HttpMatch::default(),
                1.0,
            ),
            LEASE,
        )
        .expect("add modify");
    let (status, body, headers) = web.get("/hello").await;
    assert_eq!((status, body.as_str()), (500, "broken"));
    assert_eq!(
        headers.get("x-fault").map(|v| v.as_bytes()),
        Some(&b"injected"[..])
    );
    assert_eq!(
        headers.get("x-upstream").map(|v| v.as_bytes()),
        Some(&b"yes"[..])
    );
    assert_eq!(
        headers.get("content-length").map(|v| v.as_bytes()),
        Some(&b"6"[..])
    );
    assert_eq!(web.hits.load(Ordering::SeqCst), 1, "modify calls upstream");
    web.registry.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_header_filter_selects_requests() {
    let web = http_proxy().await;
    let mut matches = HttpMatch::default();
    matches.headers.insert("x-user".into(), "canary".into());
    web.registry
        .add_http_fault(
            "web",
            &http_fault(
                HttpAction::Abort {
                    status: 418,
                    body: None,
                },
                matches,
                1.0,
            ),
            LEASE,
        )
        .expect("add abort");
    let canary = within("canary request", async {
        web.client
            .get(format!("{}/hello", web.base))
            .header("x-user", "canary")
            .send()
            .await
            .expect("get")
            .status()
            .as_u16()
    })
    .await;
    assert_eq!(canary, 418);
    let (status, _, _) = web.get("/hello").await;
    assert_eq!(status, 200);
    web.registry.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_percentage_hits_about_its_share() {
    let web = http_proxy().await;
    web.registry
        .add_http_fault(
            "web",
            &http_fault(
                HttpAction::Abort {
                    status: 500,
                    body: None,
                },
                HttpMatch::default(),
                0.5,
            ),
            LEASE,
        )
        .expect("add abort at 50 %");
    let mut aborted = 0;
    for _ in 0..200 {
        if web.get("/hello").await.0 == 500 {
            aborted += 1;
        }
    }
    assert!(
        (60..=140).contains(&aborted),
        "{aborted} of 200 requests aborted at 50 %"
    );
    web.registry.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_toxics_apply_to_http_targets() {
    let web = http_proxy().await;
    web.get("/hello").await;
    let start = Instant::now();
    web.get("/hello").await;
    let base = start.elapsed();
    let fault = NetworkFault {
        target: "web".into(),
        ..network(latency(100, 0), Direction::Downstream, 1.0)
    };
    web.registry
        .add_network_fault("web", &fault, LEASE)
        .expect("add latency");
    let start = Instant::now();
    let (status, _, _) = web.get("/hello").await;
    let slow = start.elapsed();
    assert_eq!(status, 200);
    assert!(
        slow >= base + Duration::from_millis(90),
        "{slow:?} with 100 ms latency (base {base:?})"
    );
    web.registry.shutdown().await;
}

// ---------------------------------------------------------------------------------
// The standalone `chaosgate proxy` binary

#[path = "support/standalone_proxy.rs"]
mod standalone_proxy;

use standalone_proxy::{KillOnDrop as Child, Standalone};

/// Starts `chaosgate proxy` with `targets` (TOML), its control API on a free loopback
/// port, and reads the addresses it prints.
async fn standalone(targets: &str) -> Standalone {
    standalone_proxy::start_in_temp(&format!("control_listen = \"127.0.0.1:0\"\n{targets}"), &[])
        .await
}

/// Raw control API call: status and JSON body.
async fn call(
    method: reqwest::Method,
    url: String,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    within("control API call", async {
        let mut request = reqwest::Client::new().request(method, url);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("control API reachable");
        let status = response.status().as_u16();
        let text = response.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
        )
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_proxy_is_driven_through_its_control_api() {
    let echo = echo_server().await;
    let (web_upstream, _hits) = http_upstream().await;
    let proxy = standalone(&format!(
        "[[targets]]\nname = \"echo\"\nlisten = \"127.0.0.1:0\"\nupstream = \"{}\"\n\n\
         [[targets]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\nupstream = \"{}\"\nprotocol = \"http\"\n",
        echo.addr, web_upstream
    ))
    .await;
    let client = ProxyClient::new(&proxy.control).expect("client");
    within("health", client.health()).await.expect("healthy");
    let targets = within("targets", client.targets()).await.expect("targets");
    assert_eq!(targets.len(), 2);
    assert_eq!(targets[1].protocol, ProxyProtocol::Http);

    // Through FaultBackend, as the engine will call it.
    let backend = FaultBackend::select(
        Some(&proxy.control),
        None,
        &ProxyAccess::default(),
        "tests/proxy",
    )
    .expect("remote backend");
    let mut stream = connect(proxy.listen("echo")).await;
    assert!(round_trip(&mut stream).await < Duration::from_millis(50));
    let id = within(
        "add",
        backend.add_network_fault(&network(latency(100, 0), Direction::Downstream, 1.0), LEASE),
    )
    .await
    .expect("add latency");
    assert!(round_trip(&mut stream).await >= Duration::from_millis(95));
    let listed = within("targets", client.targets()).await.expect("targets");
    assert_eq!(listed[0].faults.len(), 1);
    assert_eq!(listed[0].faults[0].id, id);
    within("renew", backend.renew(id, LEASE))
        .await
        .expect("renew");
    assert!(within("remove", backend.remove(id)).await.expect("remove"));
    assert!(
        !within("remove again", backend.remove(id))
            .await
            .expect("remove again")
    );
    assert!(round_trip(&mut stream).await < Duration::from_millis(50));
    assert!(matches!(
        within("renew removed", client.renew(id, LEASE)).await,
        Err(ProxyError::UnknownFault(_))
    ));

    // An HTTP fault through the API, seen by a real HTTP client.
    let abort = HttpFault {
        proxy: Some(proxy.control.clone()),
        ..http_fault(
            HttpAction::Abort {
                status: 503,
                body: None,
            },
            HttpMatch::default(),
            1.0,
        )
    };
    let id = within("add http", backend.add_http_fault(&abort, LEASE))
        .await
        .expect("add abort");
    let status = within("aborted get", async {
        reqwest::get(format!("http://{}/hello", proxy.listen("web")))
            .await
            .expect("get")
            .status()
            .as_u16()
    })
    .await;
    assert_eq!(status, 503);
    assert!(within("remove", client.remove(id)).await.expect("remove"));

    // Errors are JSON and name what is wrong.
    let base = &proxy.control;
    let (status, body) = call(
        reqwest::Method::POST,
        format!("{base}/targets/nope/faults"),
        Some(serde_json::json!({"network": {"toxic": {"type": "refuse"}}, "lease_ms": 1000})),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("unknown_target"))
    );
    let (status, body) = call(
        reqwest::Method::POST,
        format!("{base}/targets/echo/faults"),
        Some(serde_json::json!({"network": {"toxic": {"type": "refuse"}, "toxicty": 1.0}, "lease_ms": 1000})),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["field"].as_str(), Some("network.toxicty"), "{body}");
    let (status, body) = call(
        reqwest::Method::POST,
        format!("{base}/targets/echo/faults"),
        Some(serde_json::json!({"network": {"toxic": {"type": "refuse"}, "toxicity": 2.0}, "lease_ms": 1000})),
    )
    .await;
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("toxicity")),
        "{body}"
    );
    let (status, body) = call(
        reqwest::Method::DELETE,
        format!("{base}/faults/12345"),
        None,
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("unknown_fault"))
    );
    let (status, body) = call(
        reqwest::Method::PUT,
        format!("{base}/faults/12345/lease"),
        Some(serde_json::json!({"lease_ms": 1000})),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("unknown_fault"))
    );
    let (status, _) = call(reqwest::Method::GET, format!("{base}/nowhere"), None).await;
    assert_eq!(status, 404);
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_of_a_killed_runner_expires_within_lease_plus_one_second() {
    let echo = echo_server().await;
    let proxy = standalone(&format!(
        "[[targets]]\nname = \"echo\"\nlisten = \"127.0.0.1:0\"\nupstream = \"{}\"\n",
        echo.addr
    ))
    .await;
    // The runner: a separate process that adds a 1 s lease fault and renews it every
    // 200 ms, as a worker does, until it is killed.
    let script = r#"
        set -e
        out=$(curl -sf -X POST -H 'content-type: application/json' \
            -d '{"network": {"toxic": {"type": "latency", "latency": "100ms"}}, "lease_ms": 1000}' \
            "$BASE/targets/echo/faults")
        id=$(echo "$out" | sed 's/.*"id":\([0-9]*\).*/\1/')
        echo "$id"
        while true; do
            curl -sf -X PUT -H 'content-type: application/json' -d '{"lease_ms": 1000}' \
                "$BASE/faults/$id/lease" > /dev/null
            sleep 0.2
        done
    "#;
    let mut runner = tokio::process::Command::new("sh");
    runner
        .arg("-c")
        .arg(script)
        .env("BASE", &proxy.control)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .process_group(0)
        .kill_on_drop(true);
    let mut runner = runner.spawn().expect("spawn runner");
    let runner_out = runner.stdout.take().expect("runner stdout");
    let runner = Child(runner);
    let id_line = within(
        "runner adds its fault",
        BufReader::new(runner_out).lines().next_line(),
    )
    .await
    .expect("runner stdout")
    .expect("fault id");
    let id: u64 = id_line.trim().parse().expect("numeric fault id");

    // Renewed: the fault outlives its 1 s lease.
    let mut stream = connect(proxy.listen("echo")).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        round_trip(&mut stream).await >= Duration::from_millis(95),
        "renewed fault not active"
    );
    let client = ProxyClient::new(&proxy.control).expect("client");
    let listed = within("targets", client.targets()).await.expect("targets");
    assert_eq!(
        listed[0].faults.iter().map(|f| f.id.0).collect::<Vec<_>>(),
        vec![id]
    );

    // SIGKILL the runner (and its curl): nobody renews any more.
    let pid = runner.0.id().expect("runner pid") as i32;
    // SAFETY: kill(2) has no memory effects; the group is the runner's own.
    assert_eq!(unsafe { libc::kill(-pid, libc::SIGKILL) }, 0);
    let killed = Instant::now();
    let back = within("traffic back to normal", async {
        loop {
            if round_trip(&mut stream).await < Duration::from_millis(50) {
                return killed.elapsed();
            }
        }
    })
    .await;
    eprintln!("runner SIGKILLed, lease 1 s: traffic normal after {back:?}");
    assert!(
        back <= Duration::from_secs(2),
        "traffic normal {back:?} after SIGKILL, lease 1 s"
    );
    let listed = within("targets", client.targets()).await.expect("targets");
    assert!(
        listed[0].faults.is_empty(),
        "fault still listed: {:?}",
        listed[0].faults
    );
    drop(runner);
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_proxy_rejects_unknown_keys_naming_file_and_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("bad.toml");
    std::fs::write(
        &config,
        "control_listen = \"127.0.0.1:0\"\n[[targets]]\nname = \"db\"\nlisten = \"127.0.0.1:0\"\nupstream = \"127.0.0.1:1\"\nlatencyy = 5\n",
    )
    .expect("write config");
    let output = within(
        "bad config run",
        standalone_proxy::command(&config, &[]).output(),
    )
    .await
    .expect("run chaosgate proxy");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "accepted a bad config");
    assert!(stderr.contains("bad.toml"), "file not named: {stderr}");
    assert!(stderr.contains("latencyy"), "key not named: {stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_proxy_stops_cleanly_on_sigterm() {
    let echo = echo_server().await;
    let mut proxy = standalone(&format!(
        "[[targets]]\nname = \"echo\"\nlisten = \"127.0.0.1:0\"\nupstream = \"{}\"\n",
        echo.addr
    ))
    .await;
    let listen = proxy.listen("echo");
    let mut stream = connect(listen).await;
    round_trip(&mut stream).await;
    let pid = proxy.child.0.id().expect("pid") as i32;
    // SAFETY: kill(2) has no memory effects.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = within("exit after SIGTERM", proxy.child.0.wait())
        .await
        .expect("wait");
    assert!(status.success(), "exit status {status}");
    assert!(
        TcpStream::connect(listen).await.is_err(),
        "listener open after exit"
    );
    let (data, _) = within("open connection closed", read_to_end(&mut stream)).await;
    assert!(data.is_empty());
}
