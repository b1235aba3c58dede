//! What ingest has done so far: the last committed sequence number (live updates wait
//! on it), whether it caught up, counts, lag per partition, and why it stopped.
//!
//! Rule: only ingest writes it, after a batch commits, so a reader never sees a row
//! counted or a sequence number published before its transaction committed.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;

/// One partition's lag behind its high watermark.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionLag {
    /// Topic.
    pub(crate) topic: String,
    /// Partition.
    pub(crate) partition: i32,
    /// The next offset the view will read.
    pub(crate) next_offset: i64,
    /// The broker's high watermark when last asked.
    pub(crate) high_watermark: i64,
    /// `high_watermark - next_offset` (at least 0; transaction markers count).
    pub(crate) lag: i64,
}

pub(super) struct StatusInner {
    pub(super) seq: watch::Sender<u64>,
    pub(super) caught_up: AtomicBool,
    pub(super) records: AtomicU64,
    pub(super) rows: AtomicU64,
    pub(super) problems: AtomicU64,
    pub(super) batches: AtomicU64,
    pub(super) lag: Mutex<Vec<PartitionLag>>,
    pub(super) failed: Mutex<Option<String>>,
}

/// What ingest has done so far; cheap to clone, read by `/readyz`, `/metrics` and SSE.
#[derive(Clone)]
pub struct IngestStatus {
    pub(super) inner: Arc<StatusInner>,
}

impl std::fmt::Debug for IngestStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngestStatus")
            .field("seq", &*self.inner.seq.borrow())
            .field("caught_up", &self.caught_up())
            .finish()
    }
}

impl Default for IngestStatus {
    fn default() -> Self {
        IngestStatus::new(0)
    }
}

impl IngestStatus {
    /// A status whose last committed sequence number is `seq`.
    pub(crate) fn new(seq: u64) -> IngestStatus {
        IngestStatus {
            inner: Arc::new(StatusInner {
                seq: watch::Sender::new(seq),
                caught_up: AtomicBool::new(false),
                records: AtomicU64::new(0),
                rows: AtomicU64::new(0),
                problems: AtomicU64::new(0),
                batches: AtomicU64::new(0),
                lag: Mutex::new(Vec::new()),
                failed: Mutex::new(None),
            }),
        }
    }

    /// The last committed sequence number, updated after each batch commits.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.seq.subscribe()
    }

    /// The last committed sequence number now.
    pub(crate) fn seq(&self) -> u64 {
        *self.inner.seq.borrow()
    }

    /// Whether ingest has reached, on every partition, the high watermark it saw when
    /// it started (for `/readyz`). Stays true once reached.
    pub fn caught_up(&self) -> bool {
        self.inner.caught_up.load(Ordering::Acquire)
    }

    /// Records read from Kafka (rows and problems alike) since start.
    pub fn records(&self) -> u64 {
        self.inner.records.load(Ordering::Relaxed)
    }

    /// Rows inserted or replaced since start.
    pub(crate) fn rows(&self) -> u64 {
        self.inner.rows.load(Ordering::Relaxed)
    }

    /// Records that could not be read since start.
    pub fn problems(&self) -> u64 {
        self.inner.problems.load(Ordering::Relaxed)
    }

    /// Transactions committed since start.
    pub(crate) fn batches(&self) -> u64 {
        self.inner.batches.load(Ordering::Relaxed)
    }

    /// Lag per partition, as last measured (every few seconds).
    pub(crate) fn lag(&self) -> Vec<PartitionLag> {
        self.inner.lag.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Why ingest stopped, if it stopped on an error (the store refused a write).
    pub fn failed(&self) -> Option<String> {
        self.inner.failed.lock().ok().and_then(|f| f.clone())
    }

    /// Waits until caught up (`true`), ingest failed or `timeout` passed (`false`).
    pub async fn wait_caught_up(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.caught_up() {
            if self.failed().is_some() || Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }
}
