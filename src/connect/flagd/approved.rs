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
//! `definition` flagd's providers would reject ([`crate::flagd::definition::servable`]) is logged with its
//! topic/partition/offset and skipped; the flag keeps its previous definition. A record
//! with no value (a tombstone, as compaction uses) removes its key's flag.
//!
//! [`Approved::document`] renders one set as flagd's flag configuration
//! (`{"flags": {...}}`, keys sorted at every level) with a version (its strong ETag),
//! so equal configurations give equal bytes and equal ETags on every replica.

mod reader;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Map, Value};
use tokio::sync::watch;

pub use reader::follow;

use crate::config::FlagdConfig;
use crate::contract::approved_flag::APPROVED_FLAG_TYPE;
use crate::contract::flag_change::{KEY_RULE, is_key_name};
use crate::contract::{ApprovedFlag, CloudEvent, KafkaMessage};
use crate::flagd::definition::{canonical, servable};

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
            flags.insert(key.clone(), canonical(&record.definition));
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

/// Follows the approved configuration: every replica sees the same sequence. The sender
/// lives as long as the reader follows the topic (`has_changed()` errs once it stopped).
pub type ApprovedWatch = watch::Receiver<Arc<Approved>>;

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
