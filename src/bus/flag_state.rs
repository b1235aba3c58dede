//! The flag-state reader: every worker reads the whole compacted flag-state topic and
//! keeps the newest record of each flag (see [`crate::contract::flag_state`]).
//!
//! The worker that owns a flag's partition of `flag-changes` keeps what the flag is owed
//! (a parked execution, a guard) in its own loop; this reader is how a new owner learns
//! it after a restart or a rebalance. The rule that keeps it right: a partition's owed
//! states are taken only once the reader has read the topic up to where it ended *after*
//! the partition's committed offsets were read ([`FlagStates::read_up_to_now`]). Every
//! transaction that wrote a state of the partition's flags also committed offsets of the
//! partition, and reading committed offsets waits for such transactions to end, so by
//! then every state they wrote is in the topic and, after the barrier, in this reader.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use tokio_util::sync::CancellationToken;

use crate::contract::flag_state::{FLAG_STATE_TYPE, Owed};
use crate::contract::{CloudEvent, FlagState};

use super::follow::{self, Follower};

/// The longest [`FlagStates::caught_up`] and [`FlagStates::read_up_to_now`] wait.
pub(crate) const CATCH_UP_LIMIT: Duration = Duration::from_secs(10);

/// The newest flag-state record of each flag, as read so far.
#[derive(Debug, Clone)]
pub(crate) struct FlagStates {
    inner: Arc<Mutex<Read>>,
    caught_up: Arc<tokio::sync::watch::Sender<bool>>,
    /// Set when the backlog was read whole (not just waited for).
    read_whole: Arc<std::sync::atomic::AtomicBool>,
    client: ClientConfig,
    topic: String,
}

#[derive(Debug, Default)]
struct Read {
    by_flag: HashMap<String, FlagState>,
    /// The next offset to read, by partition.
    next: HashMap<i32, i64>,
}

impl FlagStates {
    /// An empty store for `topic`, read with `client`'s settings.
    pub(crate) fn new(client: ClientConfig, topic: String) -> Self {
        FlagStates {
            inner: Arc::default(),
            caught_up: Arc::new(tokio::sync::watch::Sender::new(false)),
            read_whole: Arc::default(),
            client,
            topic,
        }
    }

    /// What flags of `flag_changes_partition` are owed now (never `idle` ones).
    pub(crate) fn owed_in(&self, flag_changes_partition: i32) -> Vec<FlagState> {
        let Ok(read) = self.inner.lock() else {
            return Vec::new();
        };
        read.by_flag
            .values()
            .filter(|s| {
                s.source_partition == flag_changes_partition && !matches!(s.owed, Owed::Idle)
            })
            .cloned()
            .collect()
    }

    /// The approval hold `execution_id` waits at (its `stage-id/step-id`), if the topic
    /// says it waits at one.
    pub(crate) fn waiting_for_approval(&self, execution_id: &str) -> Option<String> {
        let read = self.inner.lock().ok()?;
        read.by_flag.values().find_map(|s| match &s.owed {
            Owed::Waiting(waiting)
                if waiting.hold.pipeline_execution_id == execution_id
                    && waiting.hold.kind == crate::contract::HoldKind::Approval =>
            {
                waiting.hold.place()
            }
            _ => None,
        })
    }

    /// Resolves once the topic's backlog at start is read (or after [`CATCH_UP_LIMIT`],
    /// or when the topic cannot be read).
    pub(crate) async fn caught_up(&self) {
        let mut ready = self.caught_up.subscribe();
        let _ = ready.wait_for(|caught_up| *caught_up).await;
    }

    /// Resolves once every record committed to the topic before the call is read: each
    /// partition read up to its high watermark of now, less its last transaction marker
    /// (every flag-state record is written in a transaction, whose commit marker takes the
    /// last offset). Gives up after [`CATCH_UP_LIMIT`] with a warning (a partition ending
    /// in an aborted transaction's records never shows them).
    pub(crate) async fn read_up_to_now(&self) {
        let started = Instant::now();
        let client = self.client.clone();
        let topic = self.topic.clone();
        let marks = tokio::task::spawn_blocking(move || follow::watermarks(&client, &topic))
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
        let marks = match marks {
            Ok(marks) => marks,
            Err(error) => {
                tracing::warn!(%error, topic = %self.topic, "cannot read the flag-state topic's end offsets; taking the partition's owed states as read so far");
                return;
            }
        };
        loop {
            let behind: Vec<i32> = {
                let Ok(read) = self.inner.lock() else {
                    return;
                };
                marks
                    .iter()
                    .filter(|(partition, (low, high))| {
                        let next = read.next.get(partition).copied().unwrap_or(*low);
                        high > low && next + 1 < *high
                    })
                    .map(|(partition, _)| *partition)
                    .collect()
            };
            if behind.is_empty() {
                return;
            }
            if started.elapsed() >= CATCH_UP_LIMIT {
                tracing::warn!(topic = %self.topic, partitions = ?behind, "the flag-state topic was not read up to its end within {CATCH_UP_LIMIT:?}; going on with what was read");
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn mark_caught_up(&self) {
        self.caught_up.send_replace(true);
    }

    /// Whether every partition of the topic was read to its end at start (not merely
    /// waited for: [`FlagStates::caught_up`] also resolves when the topic cannot be read).
    pub(crate) fn read_all(&self) -> bool {
        self.read_whole.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Whether the topic's backlog at start has been read (see [`FlagStates::caught_up`]).
    pub(crate) fn is_caught_up(&self) -> bool {
        *self.caught_up.borrow()
    }

    fn insert(&self, state: Option<FlagState>, key: Option<String>, partition: i32, offset: i64) {
        if let Ok(mut read) = self.inner.lock() {
            match (state, key) {
                (Some(state), _) => {
                    read.by_flag.insert(state.flag_key(), state);
                }
                (None, Some(key)) => {
                    read.by_flag.remove(&key);
                }
                (None, None) => {}
            }
            read.next.insert(partition, offset + 1);
        }
    }
}

/// Reads the flag-state topic until `stop` fires into `states`; marks it caught up (see
/// [`FlagStates::caught_up`]). A record that is not a flag-state record is logged and
/// skipped; a tombstone removes its flag.
pub(crate) async fn listen(states: FlagStates, stop: CancellationToken) {
    let reader = Follower {
        client: states.client.clone(),
        topic: states.topic.clone(),
        label: "chaosgate-flag-state-reader",
        catch_up_limit: CATCH_UP_LIMIT,
        transactional: true,
    };
    let topic = states.topic.clone();
    reader
        .follow(
            &stop,
            |whole| {
                states
                    .read_whole
                    .store(whole, std::sync::atomic::Ordering::Release);
                states.mark_caught_up();
            },
            |read| {
            let key = read
                .message
                .key
                .as_deref()
                .and_then(|k| std::str::from_utf8(k).ok())
                .map(String::from);
            let state = if read.message.value.is_none() {
                None
            } else {
                match CloudEvent::decode(&read.message)
                    .map_err(|e| e.to_string())
                    .and_then(|event| {
                        if event.event_type == FLAG_STATE_TYPE {
                            serde_json::from_value::<FlagState>(event.data).map_err(|e| e.to_string())
                        } else {
                            Err(format!("type '{}' is not {FLAG_STATE_TYPE}", event.event_type))
                        }
                    }) {
                    Ok(state) => Some(state),
                    Err(error) => {
                        tracing::warn!(%error, %topic, partition = read.partition, offset = read.offset, "ignored a record of the flag-state topic: not a flag-state record");
                        None
                    }
                }
            };
            let tombstone = read.message.value.is_none();
            states.insert(state, key.filter(|_| tombstone), read.partition, read.offset);
        })
        .await;
    states.mark_caught_up();
}
