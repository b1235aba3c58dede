//! The byte pump between a client and its upstream (or, on an HTTP target, the HTTP
//! proxy's end of an in-memory pipe).
//!
//! Each direction runs in one of two modes. With no toxic on it, the fast path reads
//! into a buffer (16 KiB, growing to 256 KiB under bulk transfer) and writes it
//! straight on, checking the target's fault set with one atomic load per chunk (as fast as `copy_bidirectional`). Once a toxic applies,
//! the toxic path takes over: chunks are stamped when read and queued, and written when
//! their latency and bandwidth allow, so latency shifts a stream rather than slowing it.
//! When the last toxic goes and the queue is empty, the direction returns to the fast
//! path. Toxics that end a connection (`reset_peer`, `timeout` with `after`) run on a
//! third future per connection that only wakes when the fault set changes or a timer
//! fires.
//!
//! A `timeout` toxic holds the data (the proxy stops reading, so the sender's kernel
//! buffers fill as in a real blackhole). When the fault is removed the held bytes flow
//! again in order and the connection resumes; with `after` set, the connection is
//! closed that long after the toxic first applied to it.

use std::collections::VecDeque;
use std::io;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use super::state::Faults;
use super::toxic::{Chunk, ConnectionTimers, Ending, Flow, FlowToxics, Plan};

/// First size of a direction's read buffer: small, so idle connections cost little.
const FIRST_CHUNK: usize = 16 * 1024;

/// Largest read buffer: a bulk transfer grows its buffer to this size (doubling each
/// time a read fills it), so it takes few system calls.
const CHUNK: usize = 256 * 1024;

/// Chunks a toxic direction holds before it stops reading (back-pressure).
const QUEUE_LIMIT: usize = 64;

/// How one direction's pump stopped.
enum PumpEnd {
    /// End of stream passed on.
    Eof,
    /// A toxic asks for the connection to close.
    Close,
}

/// Pumps both directions and watches the connection's timers until the connection ends.
pub(crate) async fn run_pumps<CR, CW, UR, UW>(
    client_read: CR,
    client_write: CW,
    upstream_read: UR,
    upstream_write: UW,
    faults: Faults,
    seed: u64,
    cancel: &CancellationToken,
) -> Ending
where
    CR: AsyncRead + Unpin,
    CW: AsyncWrite + Unpin,
    UR: AsyncRead + Unpin,
    UW: AsyncWrite + Unpin,
{
    let up = pump(
        client_read,
        upstream_write,
        faults.clone(),
        Flow::Upstream,
        seed,
    );
    let down = pump(
        upstream_read,
        client_write,
        faults.clone(),
        Flow::Downstream,
        seed,
    );
    let timers = watch_timers(faults, seed);
    tokio::pin!(up, down, timers);
    let (mut up_done, mut down_done) = (false, false);
    let on_error = |err: io::Error| match err.kind() {
        io::ErrorKind::ConnectionReset => Ending::Reset {
            client: true,
            upstream: true,
        },
        _ => Ending::Closed,
    };
    loop {
        tokio::select! {
            ending = &mut timers => return ending,
            () = cancel.cancelled() => return Ending::Cancelled,
            end = &mut up, if !up_done => match end {
                Ok(PumpEnd::Eof) => up_done = true,
                Ok(PumpEnd::Close) => return Ending::Closed,
                Err(err) => return on_error(err),
            },
            end = &mut down, if !down_done => match end {
                Ok(PumpEnd::Eof) => down_done = true,
                Ok(PumpEnd::Close) => return Ending::Closed,
                Err(err) => return on_error(err),
            },
        }
        if up_done && down_done {
            return Ending::Finished;
        }
    }
}

/// Copies one direction, straight through while no toxic applies to it.
async fn pump<R, W>(
    mut reader: R,
    mut writer: W,
    mut faults: Faults,
    flow: Flow,
    seed: u64,
) -> io::Result<PumpEnd>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut toxics = FlowToxics::new(flow, seed);
    toxics.update(&faults.borrow_and_update());
    let mut buf = vec![0u8; FIRST_CHUNK];
    let mut queue = VecDeque::new();
    loop {
        if toxics.is_idle() {
            let n = reader.read(&mut buf).await?;
            if n == buf.len() && n < CHUNK {
                buf.resize(n * 2, 0);
            }
            if faults.has_changed().unwrap_or(false) {
                toxics.update(&faults.borrow_and_update());
            }
            if n == 0 {
                return finish(&mut writer, &toxics).await;
            }
            if toxics.is_idle() {
                writer.write_all(&buf[..n]).await?;
                continue;
            }
            queue.push_back(Chunk::new(Bytes::copy_from_slice(&buf[..n])));
        }
        match toxic_pump(
            &mut reader,
            &mut writer,
            &mut faults,
            &mut toxics,
            &mut queue,
        )
        .await?
        {
            ToxicEnd::Resume => {}
            ToxicEnd::Eof => return finish(&mut writer, &toxics).await,
            ToxicEnd::Close => return Ok(PumpEnd::Close),
        }
    }
}

/// Passes the end of stream on, after the `slow_close` delay if one applies.
async fn finish<W: AsyncWrite + Unpin>(writer: &mut W, toxics: &FlowToxics) -> io::Result<PumpEnd> {
    let delay = toxics.slow_close();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    // The peer may be gone already; the end of stream is passed on either way.
    let _ = writer.shutdown().await;
    Ok(PumpEnd::Eof)
}

/// How the toxic path stopped.
enum ToxicEnd {
    /// No toxic left and nothing queued: back to the fast path.
    Resume,
    /// End of stream read and everything queued written.
    Eof,
    /// A toxic asks for the connection to close.
    Close,
}

/// Reads, queues and writes chunks under the toxics until they are all gone.
async fn toxic_pump<R, W>(
    reader: &mut R,
    writer: &mut W,
    faults: &mut Faults,
    toxics: &mut FlowToxics,
    queue: &mut VecDeque<Chunk>,
) -> io::Result<ToxicEnd>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut incoming = BytesMut::new();
    let mut eof = false;
    let mut watching = true;
    loop {
        if queue.is_empty() {
            if eof {
                return Ok(ToxicEnd::Eof);
            }
            if toxics.is_idle() {
                return Ok(ToxicEnd::Resume);
            }
        }
        let plan = match queue.front() {
            Some(chunk) if !toxics.blackhole() => Some(toxics.plan(chunk)),
            _ => None,
        };
        let (write_at, piece) = match (plan, queue.front()) {
            (Some(Plan::Close), _) => return Ok(ToxicEnd::Close),
            (Some(Plan::Write { at, max }), Some(chunk)) => {
                (Some(at), chunk.data.slice(chunk.pos..chunk.pos + max))
            }
            _ => (None, Bytes::new()),
        };
        let can_read = !eof && !toxics.blackhole() && queue.len() < QUEUE_LIMIT;
        if can_read && incoming.capacity() < FIRST_CHUNK / 4 {
            incoming.reserve(FIRST_CHUNK);
        }
        tokio::select! {
            biased;
            changed = faults.changed(), if watching => match changed {
                Ok(()) => toxics.update(&faults.borrow_and_update()),
                Err(_) => watching = false,
            },
            written = write_piece(writer, write_at, &piece), if write_at.is_some() => {
                let (n, started) = written?;
                if let Some(head) = queue.front_mut() {
                    head.pos += n;
                    if head.pos == head.data.len() {
                        queue.pop_front();
                    }
                }
                if toxics.wrote(n, started) {
                    return Ok(ToxicEnd::Close);
                }
            },
            read = reader.read_buf(&mut incoming), if can_read => {
                if read? == 0 {
                    eof = true;
                } else {
                    queue.push_back(Chunk::new(incoming.split().freeze()));
                }
            },
            else => return Ok(ToxicEnd::Close),
        }
    }
}

/// Writes (part of) `piece` once `at` has come; the bytes written and when writing began.
async fn write_piece<W: AsyncWrite + Unpin>(
    writer: &mut W,
    at: Option<Instant>,
    piece: &Bytes,
) -> io::Result<(usize, Instant)> {
    if let Some(at) = at {
        sleep_until(at).await;
    }
    let started = Instant::now();
    let n = writer.write(piece).await?;
    if n == 0 {
        return Err(io::ErrorKind::WriteZero.into());
    }
    Ok((n, started))
}

/// Waits for the toxics that end the whole connection; never returns while none apply.
async fn watch_timers(mut faults: Faults, seed: u64) -> Ending {
    let mut timers = ConnectionTimers::new(seed);
    let mut watching = true;
    loop {
        let next = timers.next(&faults.borrow_and_update(), Instant::now());
        let (at, ending) = next.unwrap_or((Instant::now(), Ending::Finished));
        tokio::select! {
            changed = faults.changed(), if watching => {
                if changed.is_err() {
                    watching = false;
                }
            },
            () = sleep_until(at), if next.is_some() => return ending,
            else => std::future::pending::<()>().await,
        }
    }
}
