//! The approved configuration: the newest approved-flag record of every flag, read from
//! the compacted approved-flags topic (`kafka.topics.approved_flags`) and followed.
//!
//! Every replica reads the topic the same way: `read_committed` (a record of an aborted
//! transaction is never seen), every partition assigned by the reader itself (no
//! consumer group, no committed offsets), each from its beginning. So every replica holds
//! the same records and, the newest record of a key winning, the same configuration:
//! what the flag commands committed so far, rebuilt from Kafka after any restart.
//!
//! Rule: only a servable definition is ever held. A record that does not decode (not an
//! approved-flag CloudEvent, a key that is not its `project/environment/flag`) or whose
//! `definition` flagd's providers would reject ([`servable`]) is logged with its
//! topic/partition/offset and skipped; the flag keeps its previous definition. A record
//! with no value (a tombstone, as compaction uses) removes its key's flag.
//!
//! [`Approved::document`] renders one set as flagd's flag configuration
//! (`{"flags": {...}}`, keys sorted at every level) with a version (its strong ETag),
//! so equal configurations give equal bytes and equal ETags on every replica.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde_json::{Map, Value};
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::FlagdError;
use crate::config::{Config, FlagdConfig, KafkaConfig};
use crate::contract::approved_flag::APPROVED_FLAG_TYPE;
use crate::contract::flag_change::{KEY_RULE, is_key_name};
use crate::contract::{ApprovedFlag, CloudEvent, KafkaMessage};

/// How long one poll waits for a record (also how soon shutdown is noticed).
const POLL: Duration = Duration::from_millis(100);
/// How often the topic's partitions are looked up again (partitions added later).
const METADATA_EVERY: Duration = Duration::from_secs(10);
/// Time allowed for a metadata or watermark request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The first and the longest wait after a Kafka error (doubling in between).
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// One flag set: a project and an environment.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Selection {
    /// Project.
    pub project: String,
    /// Environment.
    pub environment: String,
}

impl Selection {
    /// The set `[flagd]` proposes to and serves by default.
    pub fn of(flagd: &FlagdConfig) -> Selection {
        Selection {
            project: flagd.project.clone(),
            environment: flagd.environment.clone(),
        }
    }

    /// The set a flagd selector names: empty = `default`; `PROJECT/ENVIRONMENT` (two key
    /// names) = that set. Anything else is an error naming the accepted forms (the sync
    /// service answers it with `INVALID_ARGUMENT`, `GET /flags.json` with 400).
    pub fn from_selector(selector: &str, default: &Selection) -> Result<Selection, String> {
        let selector = selector.trim();
        if selector.is_empty() {
            return Ok(default.clone());
        }
        match selector.split_once('/') {
            Some((project, environment)) if is_key_name(project) && is_key_name(environment) => {
                Ok(Selection {
                    project: project.to_string(),
                    environment: environment.to_string(),
                })
            }
            _ => Err(format!(
                "selector {selector:?} is not one chaosgate serves: use an empty selector for \
                 {default} or PROJECT/ENVIRONMENT (each a key name: {KEY_RULE})"
            )),
        }
    }
}

impl std::fmt::Display for Selection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.project, self.environment)
    }
}

/// Everything approved so far: per set, per flag key, the newest record.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Approved {
    /// The newest approved record of each flag, per set.
    pub sets: BTreeMap<Selection, BTreeMap<String, ApprovedFlag>>,
}

/// One set rendered as flagd's flag configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    /// `{"flags":{KEY:DEFINITION,...}}`, compact JSON, keys sorted at every level: what
    /// flagd's file/HTTP sources and the providers' `flag_configuration` parse
    /// (<https://flagd.dev/schema/v0/flags.json>). A set with nothing approved is
    /// `{"flags":{}}`.
    pub json: String,
    /// Its strong HTTP entity tag, quotes included (`"` + 32 hex digits + `"`): a
    /// name-based UUID (v5, SHA-1) of `json`, so equal documents have equal tags on
    /// every replica and across restarts.
    pub etag: String,
}

impl Approved {
    /// The newest approved record of one flag.
    pub fn flag(&self, set: &Selection, flag: &str) -> Option<&ApprovedFlag> {
        self.sets.get(set).and_then(|flags| flags.get(flag))
    }

    /// `set` rendered as flagd's flag configuration, with its ETag.
    pub fn document(&self, set: &Selection) -> Document {
        let mut flags = Map::new();
        for (key, record) in self.sets.get(set).into_iter().flatten() {
            flags.insert(key.clone(), sorted(&record.definition));
        }
        let mut root = Map::new();
        root.insert("flags".into(), Value::Object(flags));
        let json = Value::Object(root).to_string();
        let etag = format!(
            "\"{}\"",
            uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, json.as_bytes()).simple()
        );
        Document { json, etag }
    }

    /// Applies one record: `Some` sets its flag, `None` (a tombstone) removes it.
    /// Returns whether anything changed.
    fn apply(&mut self, set: Selection, flag: String, record: Option<ApprovedFlag>) -> bool {
        match record {
            Some(record) => {
                let flags = self.sets.entry(set).or_default();
                if flags.get(&flag) == Some(&record) {
                    return false;
                }
                flags.insert(flag, record);
                true
            }
            None => {
                let Some(flags) = self.sets.get_mut(&set) else {
                    return false;
                };
                let removed = flags.remove(&flag).is_some();
                if flags.is_empty() {
                    self.sets.remove(&set);
                }
                removed
            }
        }
    }
}

/// `value` with the keys of every object sorted (serde_json keeps insertion order here).
fn sorted(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            Value::Object(
                keys.into_iter()
                    .map(|k| (k.clone(), sorted(&map[k])))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

/// Whether flagd's providers accept `definition` as one flag; `Err` names what they would
/// reject. Rules (flags.json's `flag` and flagd-evaluation-engine 0.1's `FeatureFlag`,
/// which parses every flag of a payload and drops the WHOLE payload on one failure): an
/// object; `state` `ENABLED` or `DISABLED`; `variants` a non-empty object; a string
/// `defaultVariant` naming one of them (the schema allows null, the Rust provider does
/// not); `metadata`, when present, an object; no `{"$ref": NAME}` in `targeting` (the
/// served document has no `$evaluators`: definitions come self-contained).
pub fn servable(definition: &Value) -> Result<(), String> {
    let Some(flag) = definition.as_object() else {
        return Err("definition is not a JSON object".into());
    };
    match flag.get("state").and_then(Value::as_str) {
        Some("ENABLED" | "DISABLED") => {}
        _ => return Err("state is not \"ENABLED\" or \"DISABLED\"".into()),
    }
    let Some(variants) = flag.get("variants").and_then(Value::as_object) else {
        return Err("variants is missing or not an object".into());
    };
    if variants.is_empty() {
        return Err("variants is empty".into());
    }
    match flag.get("defaultVariant") {
        Some(Value::String(name)) if variants.contains_key(name) => {}
        Some(Value::String(name)) => {
            return Err(format!("defaultVariant {name:?} names no variant"));
        }
        _ => return Err("defaultVariant is missing or not a string".into()),
    }
    if flag.get("metadata").is_some_and(|m| !m.is_object()) {
        return Err("metadata is not an object".into());
    }
    if flag.get("targeting").is_some_and(has_ref) {
        return Err("targeting has a $ref to an evaluator (definitions must inline them)".into());
    }
    Ok(())
}

fn has_ref(value: &Value) -> bool {
    match value {
        Value::Object(map) => {
            (map.len() == 1 && map.get("$ref").is_some_and(Value::is_string))
                || map.values().any(has_ref)
        }
        Value::Array(items) => items.iter().any(has_ref),
        _ => false,
    }
}

/// Follows the approved configuration: every replica sees the same sequence. The sender
/// lives as long as the reader follows the topic (`has_changed()` errs once it stopped).
pub type ApprovedWatch = watch::Receiver<Arc<Approved>>;

/// Reads the approved-flags topic to its end (as it stood at the call), then keeps
/// following it in a thread until `shutdown`; returns once caught up (or when `shutdown`
/// fires first, with what was read). The watch gets a new value only when a record
/// changed the configuration.
///
/// Kafka errors (broker down, metadata) are logged and retried with backoff
/// (0.1 s doubling to 5 s), never fatal. A topic that does not exist yet counts as empty
/// and is looked up again every 10 s, as are partitions added later (read from their
/// beginning).
///
/// Errors: [`FlagdError::Kafka`] when the consumer cannot be created (a bad librdkafka
/// property in `[kafka.properties]`).
pub async fn follow(
    config: &Config,
    shutdown: CancellationToken,
) -> Result<ApprovedWatch, FlagdError> {
    let consumer: BaseConsumer = consumer_config(&config.kafka)
        .create()
        .map_err(|e| FlagdError::Kafka(format!("cannot create the approved-flags reader: {e}")))?;
    let (sender, receiver) = watch::channel(Arc::new(Approved::default()));
    let (caught_up, on_caught_up) = oneshot::channel();
    let mut reader = Reader {
        consumer,
        topic: config.kafka.topics.approved_flags.clone(),
        sender,
        assigned: BTreeSet::new(),
        targets: None,
        next: HashMap::new(),
        caught_up: Some(caught_up),
        errors: 0,
    };
    let stop = shutdown.clone();
    std::thread::Builder::new()
        .name("flagd-approved".into())
        .spawn(move || reader.run(&stop))
        .map_err(|e| FlagdError::Kafka(format!("cannot start the approved-flags reader: {e}")))?;
    tokio::select! {
        _ = on_caught_up => {}
        () = shutdown.cancelled() => {}
    }
    Ok(receiver)
}

/// The reader's settings: the worker's client settings, `read_committed`, no commits,
/// from the beginning. librdkafka refuses `assign` without a `group.id`
/// (`_UNKNOWN_GROUP`), so one is set (`GROUP_ID-flagd`), but the reader never subscribes
/// or commits: no group is joined, every replica reads every partition.
fn consumer_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut config = crate::bus::client::client_config(kafka);
    config
        .set("group.id", format!("{}-flagd", kafka.group_id))
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false");
    config
}

/// The reading thread's state.
struct Reader {
    consumer: BaseConsumer,
    topic: String,
    sender: watch::Sender<Arc<Approved>>,
    assigned: BTreeSet<i32>,
    /// Partitions still to reach the high watermark they had at start (`None` before
    /// the first metadata answer).
    targets: Option<BTreeMap<i32, i64>>,
    /// Next offset per partition, from the records read.
    next: HashMap<i32, i64>,
    /// Told once caught up.
    caught_up: Option<oneshot::Sender<()>>,
    /// Consecutive Kafka errors (backoff and log rate).
    errors: u32,
}

impl Reader {
    fn run(&mut self, stop: &CancellationToken) {
        let mut last_metadata: Option<Instant> = None;
        while !stop.is_cancelled() {
            let due = match last_metadata {
                None => true,
                Some(t) if self.targets.is_none() => t.elapsed() >= self.backoff(),
                Some(t) => t.elapsed() >= METADATA_EVERY,
            };
            if due {
                last_metadata = Some(Instant::now());
                if let Err(problem) = self.assign_new_partitions() {
                    self.kafka_error(&problem);
                }
            }
            match self.consumer.poll(POLL) {
                None => {}
                Some(Ok(message)) => {
                    self.errors = 0;
                    let (partition, offset) = (message.partition(), message.offset());
                    self.next.insert(partition, offset + 1);
                    let record = crate::bus::record::from_rdkafka(&message);
                    drop(message);
                    self.read(partition, offset, &record);
                }
                Some(Err(err)) => {
                    self.kafka_error(&err.to_string());
                    std::thread::sleep(self.backoff());
                }
            }
            self.check_caught_up();
        }
        tracing::debug!(topic = %self.topic, "approved-flags reader stopped");
    }

    fn backoff(&self) -> Duration {
        let doubled = BACKOFF_FIRST.saturating_mul(1 << self.errors.min(10));
        doubled.min(BACKOFF_MAX)
    }

    fn kafka_error(&mut self, problem: &str) {
        self.errors = self.errors.saturating_add(1);
        if self.errors == 1 || self.errors.is_multiple_of(20) {
            tracing::warn!(topic = %self.topic, errors = self.errors, error = %problem,
                "approved-flags reader: Kafka error, retrying");
        }
    }

    /// Applies one record at `partition`/`offset`, or logs why it is skipped.
    fn read(&mut self, partition: i32, offset: i64, record: &KafkaMessage) {
        crate::telemetry::metrics::flagd_approved_record();
        match decode(record) {
            Ok((set, flag, approved)) => {
                self.sender
                    .send_if_modified(|current| Arc::make_mut(current).apply(set, flag, approved));
            }
            Err(problem) => tracing::warn!(
                topic = %self.topic, partition, offset, problem = %problem,
                "approved-flag record skipped: the flag keeps its previous definition"
            ),
        }
    }

    /// Assigns partitions of the topic not assigned yet, from their beginning; the first
    /// time, notes each one's high watermark as the catch-up target.
    fn assign_new_partitions(&mut self) -> Result<(), String> {
        let metadata = self
            .consumer
            .fetch_metadata(Some(&self.topic), REQUEST_TIMEOUT)
            .map_err(|e| format!("metadata of topic {}: {e}", self.topic))?;
        let mut found = Vec::new();
        for topic in metadata.topics() {
            if let Some(err) = topic.error() {
                tracing::debug!(topic = %self.topic, error = ?err, "approved-flags topic not readable yet");
                continue;
            }
            found.extend(
                topic
                    .partitions()
                    .iter()
                    .map(|p| p.id())
                    .filter(|id| !self.assigned.contains(id)),
            );
        }
        let first = self.targets.is_none();
        let mut targets = BTreeMap::new();
        if !found.is_empty() {
            let mut list = TopicPartitionList::new();
            for partition in &found {
                list.add_partition_offset(&self.topic, *partition, Offset::Beginning)
                    .map_err(|e| format!("assign {}/{partition}: {e}", self.topic))?;
            }
            if first {
                for partition in &found {
                    let (low, high) = self
                        .consumer
                        .fetch_watermarks(&self.topic, *partition, REQUEST_TIMEOUT)
                        .map_err(|e| format!("watermarks of {}/{partition}: {e}", self.topic))?;
                    if high > low {
                        targets.insert(*partition, high);
                    }
                }
            }
            self.consumer
                .incremental_assign(&list)
                .map_err(|e| format!("assign partitions of {}: {e}", self.topic))?;
            tracing::debug!(topic = %self.topic, partitions = ?found, "approved-flags partitions assigned");
            self.assigned.extend(found);
        }
        self.errors = 0;
        if first {
            self.targets = Some(targets);
        }
        Ok(())
    }

    /// Tells [`follow`] once every partition reached the high watermark it had at start.
    fn check_caught_up(&mut self) {
        if self.caught_up.is_none() {
            return;
        }
        let Some(targets) = &mut self.targets else {
            return;
        };
        if !targets.is_empty() {
            let positions = self.consumer.position().ok();
            let next = &self.next;
            let topic = &self.topic;
            targets.retain(|partition, high| {
                let position = positions
                    .as_ref()
                    .and_then(|p| p.find_partition(topic, *partition))
                    .and_then(|e| match e.offset() {
                        Offset::Offset(o) => Some(o),
                        _ => None,
                    })
                    .unwrap_or(-1);
                next.get(partition).copied().unwrap_or(0).max(position) < *high
            });
        }
        if targets.is_empty()
            && let Some(caught_up) = self.caught_up.take()
        {
            let flags: usize = self.sender.borrow().sets.values().map(BTreeMap::len).sum();
            tracing::info!(topic = %self.topic, flags, "approved configuration read to the end of its topic");
            let _ = caught_up.send(());
        }
    }
}

/// One record's set, flag and approved definition (`None`: a tombstone), or why it
/// cannot be applied.
fn decode(record: &KafkaMessage) -> Result<(Selection, String, Option<ApprovedFlag>), String> {
    let key = match &record.key {
        Some(bytes) => {
            std::str::from_utf8(bytes).map_err(|_| "the key is not UTF-8".to_string())?
        }
        None => return Err("the record has no key (expected project/environment/flag)".into()),
    };
    let parts: Vec<&str> = key.split('/').collect();
    let [project, environment, flag] = parts.as_slice() else {
        return Err(format!("key {key:?} is not project/environment/flag"));
    };
    let set = Selection {
        project: (*project).to_string(),
        environment: (*environment).to_string(),
    };
    if record.value.is_none() {
        return Ok((set, (*flag).to_string(), None));
    }
    let event = CloudEvent::decode(record).map_err(|e| format!("not a CloudEvent: {e}"))?;
    if event.event_type != APPROVED_FLAG_TYPE {
        return Err(format!(
            "CloudEvent type {:?} is not {APPROVED_FLAG_TYPE}",
            event.event_type
        ));
    }
    let approved: ApprovedFlag = serde_json::from_value(event.data)
        .map_err(|e| format!("data is not an approved flag v1: {e}"))?;
    if approved.flag_key() != key {
        return Err(format!(
            "key {key:?} differs from the data's {:?}",
            approved.flag_key()
        ));
    }
    servable(&approved.definition).map_err(|e| format!("definition not servable: {e}"))?;
    Ok((set, (*flag).to_string(), Some(approved)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::approved_flag::approved_flag_example;
    use serde_json::json;

    fn set() -> Selection {
        Selection {
            project: "shop".into(),
            environment: "production".into(),
        }
    }

    #[test]
    fn selectors() {
        let default = set();
        assert_eq!(Selection::from_selector("", &default), Ok(default.clone()));
        let other = Selection::from_selector("web/staging", &default).unwrap();
        assert_eq!(other.to_string(), "web/staging");
        for bad in ["web", "a/b/c", "/x", "flagSetId=web", "We b/x"] {
            let err = Selection::from_selector(bad, &default).unwrap_err();
            assert!(err.contains("PROJECT/ENVIRONMENT"), "{bad}: {err}");
        }
    }

    #[test]
    fn document_is_sorted_and_tagged_by_content() {
        let mut a = Approved::default();
        let mut record = approved_flag_example();
        record.definition = json!({"variants": {"on": true, "off": false}, "state": "ENABLED", "defaultVariant": "on"});
        assert!(a.apply(set(), "checkout-v2".into(), Some(record.clone())));
        assert!(!a.apply(set(), "checkout-v2".into(), Some(record.clone())));
        let doc = a.document(&set());
        assert_eq!(
            doc.json,
            r#"{"flags":{"checkout-v2":{"defaultVariant":"on","state":"ENABLED","variants":{"off":false,"on":true}}}}"#
        );
        assert_eq!(doc.etag.len(), 34);
        let mut b = Approved::default();
        record.definition = json!({"defaultVariant": "on", "state": "ENABLED", "variants": {"off": false, "on": true}});
        b.apply(set(), "checkout-v2".into(), Some(record));
        assert_eq!(b.document(&set()), doc);
        assert_eq!(Approved::default().document(&set()).json, r#"{"flags":{}}"#);
        assert!(a.apply(set(), "checkout-v2".into(), None));
        assert_eq!(a.document(&set()).json, r#"{"flags":{}}"#);
    }

    #[test]
    fn servable_rules() {
        let good = json!({"state": "DISABLED", "variants": {"a": "x"}, "defaultVariant": "a",
            "targeting": {"if": [{"==": [{"var": "k"}, 1]}, "a", null]}});
        assert_eq!(servable(&good), Ok(()));
        for (bad, why) in [
            (json!([]), "not a JSON object"),
            (
                json!({"state": "ON", "variants": {"a": 1}, "defaultVariant": "a"}),
                "state",
            ),
            (
                json!({"state": "ENABLED", "variants": {}, "defaultVariant": "a"}),
                "empty",
            ),
            (
                json!({"state": "ENABLED", "variants": {"a": 1}, "defaultVariant": null}),
                "defaultVariant",
            ),
            (
                json!({"state": "ENABLED", "variants": {"a": 1}, "defaultVariant": "b"}),
                "names no variant",
            ),
            (
                json!({"state": "ENABLED", "variants": {"a": 1}, "defaultVariant": "a", "targeting": {"if": [{"$ref": "x"}, "a", "a"]}}),
                "$ref",
            ),
        ] {
            let err = servable(&bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn decode_checks_key_type_and_definition() {
        let record = approved_flag_example();
        let topics = crate::config::Topics::default();
        let message = crate::bus::outputs::approved_flag(&topics, &record).message;
        let (s, flag, got) = decode(&message).unwrap();
        assert_eq!(
            (s, flag.as_str(), got.as_ref()),
            (set(), "checkout-v2", Some(&record))
        );
        let mut wrong_key = message.clone();
        wrong_key.key = Some(b"shop/production/other".to_vec());
        assert!(decode(&wrong_key).unwrap_err().contains("differs"));
        let mut garbage = message.clone();
        garbage.value = Some(b"{not json".to_vec());
        assert!(decode(&garbage).is_err());
        let mut tombstone = message;
        tombstone.value = None;
        assert_eq!(decode(&tombstone).unwrap().2, None);
    }
}
