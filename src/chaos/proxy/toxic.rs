//! Network toxics as one connection sees them.
//!
//! Whether a fault hits a connection is decided once per connection (its `toxicity` is a
//! share of connections): the roll is a hash of the connection's random seed and the
//! fault id, so both directions and the connection's timers agree without sharing state.
//! [`FlowToxics`] is what the active faults do to the chunks of one direction;
//! [`ConnectionTimers`] holds the toxics that end a whole connection (`reset_peer`,
//! `timeout` with `after`).

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::error::{FaultId, ProxyError};
use super::state::FaultSet;
use crate::catalog::experiment::{Direction, NetworkFault, Toxic};

/// Largest piece written at once under a bandwidth limit: 1/50 s of data, so the pace
/// is smooth to 20 ms.
const BANDWIDTH_SLICES_PER_SECOND: u64 = 50;

/// How late a bandwidth-limited write may be and still count from its planned time;
/// later than this, the direction was idle and the pace starts again from now.
const BANDWIDTH_CATCH_UP: Duration = Duration::from_millis(100);

/// One direction of a proxied connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    /// Client to upstream.
    Upstream,
    /// Upstream to client.
    Downstream,
}

impl Flow {
    /// Whether a fault written with `direction` acts on this flow.
    fn affected_by(self, direction: Direction) -> bool {
        matches!(
            (direction, self),
            (Direction::Both, _)
                | (Direction::Upstream, Flow::Upstream)
                | (Direction::Downstream, Flow::Downstream)
        )
    }
}

/// How a connection ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    /// Both directions reached end of stream.
    Finished,
    /// Closed by a toxic (`limit_data`, `timeout` with `after`) or an I/O error.
    Closed,
    /// Reset (RST): the client side, the upstream side, or both.
    Reset {
        /// Reset the client's socket.
        client: bool,
        /// Reset the upstream socket.
        upstream: bool,
    },
    /// The proxy is shutting down.
    Cancelled,
}

/// Checks the values of a network fault that the proxy cannot apply.
pub(crate) fn validate(fault: &NetworkFault) -> Result<(), ProxyError> {
    if !(0.0..=1.0).contains(&fault.toxicity) {
        return Err(ProxyError::InvalidFault {
            field: "toxicity".into(),
            message: format!("{} is not between 0.0 and 1.0", fault.toxicity),
        });
    }
    if let Toxic::Bandwidth { rate: 0 } = fault.toxic {
        return Err(ProxyError::InvalidFault {
            field: "toxic.rate".into(),
            message: "must be at least 1 byte per second (use `timeout` to stop data)".into(),
        });
    }
    Ok(())
}

/// Whether the fault `id` with `toxicity` hits the connection with `seed`.
pub(crate) fn hits(seed: u64, id: FaultId, toxicity: f64) -> bool {
    if toxicity >= 1.0 {
        return true;
    }
    // splitmix64 of the pair: a well-mixed, reproducible roll in [0, 1).
    let mut z = seed ^ id.0.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    let roll = (z >> 11) as f64 / (1u64 << 53) as f64;
    roll < toxicity
}

/// Whether an active `refuse` fault turns away the new connection with `seed`.
pub(crate) fn refuses(set: &FaultSet, seed: u64) -> bool {
    set.network
        .iter()
        .any(|(id, f)| matches!(f.toxic, Toxic::Refuse) && hits(seed, *id, f.toxicity))
}

/// A chunk of bytes read from one side, waiting to be written to the other.
#[derive(Debug)]
pub(crate) struct Chunk {
    /// The bytes.
    pub data: Bytes,
    /// How many of them are already written.
    pub pos: usize,
    /// When they were read.
    stamp: Instant,
    /// This chunk's jitter draw, in [-1, 1).
    jitter: f64,
}

impl Chunk {
    /// A chunk read just now.
    pub fn new(data: Bytes) -> Chunk {
        Chunk {
            data,
            pos: 0,
            stamp: Instant::now(),
            jitter: rand::random::<f64>() * 2.0 - 1.0,
        }
    }
}

/// What to do with the chunk at the head of a direction's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Plan {
    /// Write at most `max` bytes, not before `at`.
    Write {
        /// Earliest write time.
        at: Instant,
        /// Most bytes to write now.
        max: usize,
    },
    /// A `limit_data` toxic has let its bytes through: close the connection.
    Close,
}

/// A `limit_data` toxic's count on one direction of one connection.
#[derive(Debug)]
struct Limit {
    id: FaultId,
    bytes: u64,
    passed: u64,
}

/// What the active faults do to one direction of one connection.
#[derive(Debug)]
pub(crate) struct FlowToxics {
    flow: Flow,
    seed: u64,
    latency: Duration,
    jitter: Duration,
    rate: Option<u64>,
    next_send: Option<Instant>,
    blackhole: bool,
    slow_close: Duration,
    limits: Vec<Limit>,
}

impl FlowToxics {
    /// No toxic yet, for the connection with `seed`.
    pub fn new(flow: Flow, seed: u64) -> FlowToxics {
        FlowToxics {
            flow,
            seed,
            latency: Duration::ZERO,
            jitter: Duration::ZERO,
            rate: None,
            next_send: None,
            blackhole: false,
            slow_close: Duration::ZERO,
            limits: Vec::new(),
        }
    }

    /// Recomputes the toxics from the active faults; `limit_data` counts carry over.
    pub fn update(&mut self, set: &FaultSet) {
        self.latency = Duration::ZERO;
        self.jitter = Duration::ZERO;
        self.rate = None;
        self.blackhole = false;
        self.slow_close = Duration::ZERO;
        let mut limits = Vec::new();
        for (id, fault) in &set.network {
            if !self.flow.affected_by(fault.direction) || !hits(self.seed, *id, fault.toxicity) {
                continue;
            }
            match &fault.toxic {
                Toxic::Latency { latency, jitter } => {
                    self.latency += latency.duration();
                    self.jitter += jitter.duration();
                }
                Toxic::Bandwidth { rate } => {
                    self.rate = Some(self.rate.map_or(*rate, |r| r.min(*rate)));
                }
                Toxic::Timeout { .. } => self.blackhole = true,
                Toxic::SlowClose { delay } => {
                    self.slow_close = self.slow_close.max(delay.duration())
                }
                Toxic::LimitData { bytes } => {
                    let passed = self
                        .limits
                        .iter()
                        .find(|l| l.id == *id)
                        .map_or(0, |l| l.passed);
                    limits.push(Limit {
                        id: *id,
                        bytes: *bytes,
                        passed,
                    });
                }
                Toxic::ResetPeer { .. } | Toxic::Refuse => {}
            }
        }
        self.limits = limits;
        if self.rate.is_none() {
            self.next_send = None;
        }
    }

    /// Whether no toxic touches the chunks (the fast path may copy straight through).
    pub fn is_idle(&self) -> bool {
        self.latency.is_zero()
            && self.jitter.is_zero()
            && self.rate.is_none()
            && !self.blackhole
            && self.limits.is_empty()
    }

    /// Whether data is held (a `timeout` toxic).
    pub fn blackhole(&self) -> bool {
        self.blackhole
    }

    /// How long to hold the end of stream before passing it on (`slow_close`).
    pub fn slow_close(&self) -> Duration {
        self.slow_close
    }

    /// When and how much of `chunk` to write next.
    pub fn plan(&self, chunk: &Chunk) -> Plan {
        let mut max = chunk.data.len() - chunk.pos;
        for limit in &self.limits {
            let remaining = limit.bytes.saturating_sub(limit.passed);
            if remaining == 0 {
                return Plan::Close;
            }
            max = max.min(usize::try_from(remaining).unwrap_or(usize::MAX));
        }
        let mut at = chunk.stamp;
        if !self.latency.is_zero() || !self.jitter.is_zero() {
            let delay = self.latency.as_secs_f64() + self.jitter.as_secs_f64() * chunk.jitter;
            at += Duration::from_secs_f64(delay.max(0.0));
        }
        if let Some(rate) = self.rate {
            if let Some(next) = self.next_send {
                at = at.max(next);
            }
            let slice = (rate / BANDWIDTH_SLICES_PER_SECOND).max(1);
            max = max.min(usize::try_from(slice).unwrap_or(usize::MAX));
        }
        Plan::Write { at, max }
    }

    /// Records `n` bytes written from `started`; true when a `limit_data` toxic is spent.
    pub fn wrote(&mut self, n: usize, started: Instant) -> bool {
        if let Some(rate) = self.rate {
            // Keep the pace from the planned time when the write is only a little late
            // (timer lateness must not add up); after a real pause, start afresh.
            let from = match self.next_send {
                Some(next) if started.saturating_duration_since(next) < BANDWIDTH_CATCH_UP => next,
                _ => started,
            };
            let nanos = (n as u128 * 1_000_000_000) / u128::from(rate);
            self.next_send =
                Some(from + Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX)));
        }
        let mut spent = false;
        for limit in &mut self.limits {
            limit.passed += n as u64;
            spent |= limit.passed >= limit.bytes;
        }
        spent
    }
}

/// The toxics that end a whole connection at a set time after they first apply to it.
#[derive(Debug)]
pub(crate) struct ConnectionTimers {
    seed: u64,
    first_seen: HashMap<FaultId, Instant>,
}

impl ConnectionTimers {
    /// No timer yet, for the connection with `seed`.
    pub fn new(seed: u64) -> ConnectionTimers {
        ConnectionTimers {
            seed,
            first_seen: HashMap::new(),
        }
    }

    /// The earliest ending the active faults call for, and when.
    pub fn next(&mut self, set: &FaultSet, now: Instant) -> Option<(Instant, Ending)> {
        self.first_seen
            .retain(|id, _| set.network.iter().any(|(active, _)| active == id));
        let mut next: Option<(Instant, Ending)> = None;
        for (id, fault) in &set.network {
            let (after, ending) = match &fault.toxic {
                Toxic::ResetPeer { after } => (
                    after.duration(),
                    Ending::Reset {
                        client: Flow::Downstream.affected_by(fault.direction),
                        upstream: Flow::Upstream.affected_by(fault.direction),
                    },
                ),
                Toxic::Timeout { after } if !after.duration().is_zero() => {
                    (after.duration(), Ending::Closed)
                }
                _ => continue,
            };
            if !hits(self.seed, *id, fault.toxicity) {
                continue;
            }
            let at = *self.first_seen.entry(*id).or_insert(now) + after;
            if next.is_none_or(|(earliest, _)| at < earliest) {
                next = Some((at, ending));
            }
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Span;

    fn fault(toxic: Toxic, direction: Direction, toxicity: f64) -> NetworkFault {
        NetworkFault {
            target: "t".into(),
            proxy: None,
            toxic,
            direction,
            toxicity,
        }
    }

    #[test]
    fn toxicity_hits_about_its_share_of_connections() {
        let hit = (0..10_000u64)
            .filter(|seed| hits(seed.wrapping_mul(0x2545_F491_4F6C_DD1D), FaultId(7), 0.3))
            .count();
        assert!((2_700..3_300).contains(&hit), "{hit} of 10000 hit at 0.3");
        assert!(hits(1, FaultId(1), 1.0));
        assert!(!(0..1000).any(|s| hits(s, FaultId(1), 0.0)));
    }

    #[test]
    fn direction_picks_the_flow() {
        let mut set = FaultSet::default();
        let latency = Toxic::Latency {
            latency: Span::from_millis(10),
            jitter: Span::default(),
        };
        set.network
            .push((FaultId(1), fault(latency, Direction::Upstream, 1.0)));
        let mut up = FlowToxics::new(Flow::Upstream, 1);
        let mut down = FlowToxics::new(Flow::Downstream, 1);
        up.update(&set);
        down.update(&set);
        assert!(!up.is_idle());
        assert!(down.is_idle());
    }

    #[test]
    fn limit_data_counts_and_closes() {
        let mut set = FaultSet::default();
        set.network.push((
            FaultId(1),
            fault(Toxic::LimitData { bytes: 10 }, Direction::Both, 1.0),
        ));
        let mut flow = FlowToxics::new(Flow::Downstream, 1);
        flow.update(&set);
        let chunk = Chunk::new(Bytes::from_static(&[0; 25]));
        assert!(matches!(flow.plan(&chunk), Plan::Write { max: 10, .. }));
        assert!(flow.wrote(10, Instant::now()));
        assert_eq!(flow.plan(&chunk), Plan::Close);
    }
}
