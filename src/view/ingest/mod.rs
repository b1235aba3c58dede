//! Ingest: an exact projection of the committed topics into the store.
//!
//! The view reads `chaos-experiment-runs`, `flag-commands`, `flag-changes`,
//! `flag-changes-dlq` and `chaosgate-control` with `isolation.level=read_committed`, on
//! partitions it assigns itself (no consumer group: every replica reads everything), with
//! the worker's client settings ([`crate::bus::client::client_config`]).
//!
//! Rules that keep it exact:
//! - A batch of rows and the partitions' next offsets are written in ONE SQLite
//!   transaction, and a restart resumes from the stored offsets: a record is applied
//!   once, never twice, never skipped.
//! - Per `run_id` the record with the highest `(attempt, final over running, offset)`
//!   wins: a late `running` never overwrites a final record.
//! - A record that does not decode is counted, stored as an ingest problem (topic,
//!   partition, offset, reason) and skipped; it never stops ingest.
//! - Every applied row gets the next live-update sequence number (`seq`), stored with
//!   the row and published through [`IngestStatus::subscribe`] once committed.
//!
//! Parts: [`status`] (what ingest has done, read by the web layer), `reader` (the
//! Kafka side: assignment, batches, catch-up, lag) and `writer` (one batch, one SQLite
//! transaction).

mod holds;
mod reader;
pub(crate) mod status;
mod writer;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rdkafka::consumer::BaseConsumer;

use crate::config::KafkaConfig;
use crate::view::decode::TopicRole;
use crate::view::store::{SqliteContext, Store, ViewError};

use reader::{Projection, consumer_config};
pub use status::{IngestStatus, PartitionLag};

/// A running ingest: stop it with [`Ingest::stop`].
pub struct Ingest {
    status: IngestStatus,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Result<(), ViewError>>>,
}

impl Ingest {
    /// Its status.
    pub fn status(&self) -> IngestStatus {
        self.status.clone()
    }

    /// Stops after the batch in hand commits, and waits for it.
    pub async fn stop(mut self) -> Result<(), ViewError> {
        self.stop.store(true, Ordering::Release);
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        tokio::task::spawn_blocking(move || thread.join())
            .await
            .map_err(|e| ViewError::Task(e.to_string()))?
            .map_err(|_| ViewError::Task("the ingest thread panicked".into()))?
    }

    /// Whether the ingest thread has ended (on an error: see [`IngestStatus::failed`]).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// The topics the view reads, from the worker's `[kafka.topics]`.
pub(crate) fn topics_of(kafka: &KafkaConfig) -> Vec<(String, TopicRole)> {
    let t = &kafka.topics;
    let mut topics = vec![
        (t.runs.clone(), TopicRole::Runs),
        (t.commands.clone(), TopicRole::Commands),
        (t.flag_changes.clone(), TopicRole::Changes),
        (t.dead_letter.clone(), TopicRole::DeadLetters),
        (t.control.clone(), TopicRole::Control),
    ];
    let mut seen = std::collections::HashSet::new();
    topics.retain(|(name, _)| seen.insert(name.clone()));
    topics
}

/// Starts ingest on its own thread: assigns every partition of the view's topics, from
/// the offsets stored in `store` (the earliest where none is stored).
///
/// Errors: the consumer cannot be created (bad client settings) or the store cannot be
/// read.
pub fn start(kafka: &KafkaConfig, store: Store) -> Result<Ingest, ViewError> {
    let consumer: BaseConsumer = consumer_config(kafka).create().map_err(|e| {
        ViewError::BadRequest(format!("cannot create the view's Kafka consumer: {e}"))
    })?;
    let (offsets, seq) = store.read_blocking(|c| {
        let mut statement = c
            .prepare("SELECT topic, partition, next_offset FROM offsets")
            .what("read stored offsets")?;
        let offsets = statement
            .query_map([], |row| Ok(((row.get(0)?, row.get(1)?), row.get(2)?)))
            .what("read stored offsets")?
            .collect::<Result<HashMap<(String, i32), i64>, _>>()
            .what("read stored offsets")?;
        let seq: i64 = c
            .query_row(
                "SELECT IFNULL((SELECT value FROM meta WHERE key = 'seq'), 0)",
                [],
                |row| row.get(0),
            )
            .what("read the sequence number")?;
        Ok((offsets, seq))
    })?;
    let status = IngestStatus::new(u64::try_from(seq).unwrap_or(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut projection = Projection {
        consumer,
        store,
        status: status.clone(),
        roles: topics_of(kafka).into_iter().collect(),
        next: offsets,
        seq,
        assigned: BTreeMap::new(),
        targets: None,
        errors: 0,
    };
    let thread = {
        let stop = stop.clone();
        let status = status.clone();
        std::thread::Builder::new()
            .name("view-ingest".into())
            .spawn(move || {
                let result = projection.run(&stop);
                if let Err(err) = &result {
                    tracing::error!(error = %err, "view ingest stopped");
                    if let Ok(mut failed) = status.inner.failed.lock() {
                        *failed = Some(err.to_string());
                    }
                }
                result
            })
            .map_err(|e| ViewError::Task(format!("cannot start the ingest thread: {e}")))?
    };
    Ok(Ingest {
        status,
        stop,
        thread: Some(thread),
    })
}
