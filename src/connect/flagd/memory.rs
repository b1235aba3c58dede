//! The proposals on `flag-changes` not yet answered, per flag: so a rescan, or a restart,
//! does not produce the same change again while its gate runs.
//!
//! The rule that keeps it right: an id is remembered once Kafka has it (or once it is
//! read back from the topic at start) and forgotten once answered. A change counts as
//! answered when the flag's newest approved-flag record names it (`causation_event_id`)
//! or a change produced after it: the worker answers one flag's changes in the order of
//! its partition, so an answer to a later change means the earlier ones were answered.
//! Once answered, [`super::change::propose`] itself holds the change back (the proposal
//! is served, or was decided), and a change proposed anew later gets the same id again,
//! which must then be produced.
//!
//! After a restart ([`recall`]): the part of `flag-changes` written in the last
//! [`RECALL_WINDOW`] is read (`read_committed`, from the offsets `offsets_for_times`
//! gives, to the end as it stood), and this set's flagd proposals are remembered in order.
//! A proposal older than the window and still unanswered is produced once more after a
//! restart; the worker's ids derive from `event_id`, so it reruns the same execution.
//! A change that is never answered (the worker dead-lettered it) stays remembered until
//! a restart past the window: its proposal is not produced again meanwhile; changing the
//! proposal makes a new change.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};

use super::approved::{Approved, Selection};
use crate::config::Config;
use crate::contract::ValueFormat;

/// How far back [`recall`] reads `flag-changes`: one day.
pub const RECALL_WINDOW: Duration = Duration::from_secs(24 * 60 * 60);

/// The longest [`recall`] waits for the broker, or for the next record, before it gives
/// up and the folder starts without memory.
const RECALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Unanswered proposal ids, per flag key (the flag's name in the set), oldest first.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Pending {
    ids: HashMap<String, Vec<String>>,
}

impl Pending {
    /// Whether `event_id` of `flag` is on the topic and not answered.
    pub fn contains(&self, flag: &str, event_id: &str) -> bool {
        self.ids
            .get(flag)
            .is_some_and(|ids| ids.iter().any(|id| id == event_id))
    }

    /// Remembers `event_id` of `flag`, produced after those remembered.
    pub fn add(&mut self, flag: &str, event_id: &str) {
        let ids = self.ids.entry(flag.to_string()).or_default();
        if !ids.iter().any(|id| id == event_id) {
            ids.push(event_id.to_string());
        }
    }

    /// Forgets each flag's ids up to the one its newest approved record in `set` answers.
    pub fn settle(&mut self, approved: &Approved, set: &Selection) {
        for (flag, ids) in &mut self.ids {
            let Some(record) = approved.flag(set, flag) else {
                continue;
            };
            if let Some(at) = ids.iter().position(|id| *id == record.causation_event_id) {
                ids.drain(..=at);
            }
        }
        self.ids.retain(|_, ids| !ids.is_empty());
    }

    /// How many ids are remembered.
    pub fn len(&self) -> usize {
        self.ids.values().map(Vec::len).sum()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// Reads the proposals of `set` produced on `kafka.topics.flag_changes` in the last
/// [`RECALL_WINDOW`], in the order of each partition. Blocking (run it off the async
/// threads). Errors: the client or the broker's, with the topic; a topic that does not
/// exist yet holds nothing.
pub fn recall(config: &Config, set: &Selection) -> Result<Pending, String> {
    let topic = config.kafka.topics.flag_changes.as_str();
    let mut client = crate::bus::client::client_config(&config.kafka);
    client
        // librdkafka's `assign` needs a group id; this reader never joins or commits.
        .set(
            "group.id",
            format!("{}-flagd-recall", config.kafka.group_id),
        )
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true");
    let consumer: BaseConsumer<EndsQuietly> = client
        .create_with_context(EndsQuietly)
        .map_err(|e| format!("cannot create a consumer of {topic}: {e}"))?;
    let metadata = consumer
        .fetch_metadata(Some(topic), RECALL_TIMEOUT)
        .map_err(|e| format!("cannot read the partitions of {topic}: {e}"))?;
    let partitions = crate::bus::client::partitions_of(&metadata, topic);
    let mut pending = Pending::default();
    if partitions.is_empty() {
        return Ok(pending);
    }
    let since = chrono::Utc::now().timestamp_millis()
        - i64::try_from(RECALL_WINDOW.as_millis()).unwrap_or(i64::MAX);
    let mut times = TopicPartitionList::new();
    for partition in &partitions {
        times
            .add_partition_offset(topic, *partition, Offset::Offset(since))
            .map_err(|e| format!("{topic}/{partition}: {e}"))?;
    }
    let start = consumer
        .offsets_for_times(times, RECALL_TIMEOUT)
        .map_err(|e| format!("cannot find the offsets of {topic} one day back: {e}"))?;
    consumer
        .assign(&start)
        .map_err(|e| format!("cannot read {topic}: {e}"))?;
    let mut open: std::collections::HashSet<i32> = partitions.into_iter().collect();
    let mut progress = std::time::Instant::now();
    while !open.is_empty() {
        if progress.elapsed() > RECALL_TIMEOUT {
            return Err(format!(
                "{topic}: partitions {open:?} not read to their end: nothing read for {RECALL_TIMEOUT:?}"
            ));
        }
        let polled = consumer.poll(Duration::from_millis(500));
        if polled.is_some() {
            progress = std::time::Instant::now();
        }
        match polled {
            None => {}
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                open.remove(&partition);
            }
            Some(Err(e)) => return Err(format!("reading {topic}: {e}")),
            Some(Ok(message)) => {
                let record = crate::bus::record::from_rdkafka(&message);
                // Anything that is not a flag change is the worker's to dead-letter.
                let Ok((_, change)) =
                    crate::contract::flag_change::decode_flag_change(&record, usize::MAX)
                else {
                    continue;
                };
                if change.value_format == Some(ValueFormat::Flagd)
                    && change.project == set.project
                    && change.environment == set.environment
                {
                    pending.add(&change.flag, &change.event_id);
                }
            }
        }
    }
    Ok(pending)
}

/// The recall's consumer context: librdkafka also reports each end of partition (which
/// the recall asks for, to know where the topic ends) as a global error, which
/// rust-rdkafka's default context logs at `error`; these are left out, the rest logged.
struct EndsQuietly;

impl rdkafka::ClientContext for EndsQuietly {
    fn error(&self, error: KafkaError, reason: &str) {
        if !matches!(error, KafkaError::PartitionEOF(_)) {
            tracing::error!(target: "librdkafka", %error, reason, "librdkafka error");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for EndsQuietly {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::approved_flag::approved_flag_example;

    #[test]
    fn an_answer_settles_its_change_and_the_earlier_ones() {
        let set = Selection {
            project: "shop".into(),
            environment: "production".into(),
        };
        let mut pending = Pending::default();
        for id in ["a", "b", "c"] {
            pending.add("checkout-v2", id);
        }
        pending.add("checkout-v2", "b");
        pending.add("other", "x");
        assert_eq!(pending.len(), 4);
        let mut approved = Approved::default();
        let record = crate::contract::ApprovedFlag {
            causation_event_id: "b".into(),
            ..approved_flag_example()
        };
        approved
            .sets
            .entry(set.clone())
            .or_default()
            .insert("checkout-v2".into(), record);
        pending.settle(&approved, &set);
        assert!(!pending.contains("checkout-v2", "a"));
        assert!(!pending.contains("checkout-v2", "b"));
        assert!(pending.contains("checkout-v2", "c"));
        assert!(pending.contains("other", "x"));
        assert_eq!(pending.len(), 2);
    }
}
