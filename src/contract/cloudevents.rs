//! CloudEvents 1.0 over Kafka (the Kafka protocol binding), written out by hand because
//! the `cloudevents-sdk` crate does not build against rdkafka 0.39.
//!
//! Outputs use binary mode: attributes in `ce_*` headers, the JSON data as the value.
//! Inputs are accepted in binary and in structured mode (`application/cloudevents+json`,
//! the whole event as the value). The types here know nothing of rdkafka: a Kafka record
//! is plain bytes in [`KafkaMessage`], so the mapping is tested without a broker.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::Value;

/// The only CloudEvents version chaosgate reads and writes.
pub(crate) const SPEC_VERSION: &str = "1.0";
/// `content-type` of a structured-mode event.
pub(crate) const STRUCTURED_CONTENT_TYPE: &str = "application/cloudevents+json";
/// `content-type` of the data chaosgate writes.
pub(crate) const JSON_CONTENT_TYPE: &str = "application/json";
/// The header that carries the content type in the Kafka binding.
pub(crate) const CONTENT_TYPE_HEADER: &str = "content-type";

/// A Kafka record as bytes: what is produced and what was consumed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KafkaMessage {
    /// Record key.
    pub key: Option<Vec<u8>>,
    /// Record value.
    pub value: Option<Vec<u8>>,
    /// Record headers, in order.
    pub headers: Vec<(String, Vec<u8>)>,
}

impl KafkaMessage {
    /// Its size in bytes: key, value, and every header's name and value.
    pub fn size(&self) -> usize {
        self.key.as_ref().map_or(0, Vec::len)
            + self.value.as_ref().map_or(0, Vec::len)
            + self
                .headers
                .iter()
                .map(|(n, v)| n.len() + v.len())
                .sum::<usize>()
    }

    /// The first header with this name (case-insensitive, as the binding says).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }
}

/// A CloudEvent whose data is JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct CloudEvent {
    /// `id`.
    pub id: String,
    /// `source` (a URI-reference).
    pub source: String,
    /// `type`.
    pub event_type: String,
    /// `time`.
    pub time: Option<DateTime<Utc>>,
    /// `subject`.
    pub subject: Option<String>,
    /// Extension attributes (string-valued), e.g. `partitionkey`.
    pub extensions: BTreeMap<String, String>,
    /// The data.
    pub data: Value,
}

/// Why a Kafka record is not a CloudEvent chaosgate can read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CloudEventError {
    /// A required attribute is absent.
    #[error("CloudEvent attribute '{0}' is missing")]
    MissingAttribute(String),
    /// An attribute is present but wrong.
    #[error("CloudEvent attribute '{name}' is malformed: {reason}")]
    MalformedAttribute {
        /// The attribute (header name in binary mode).
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `specversion` is not `1.0`.
    #[error("CloudEvent specversion '{0}' is not supported (only 1.0)")]
    UnsupportedSpecVersion(String),
    /// The data (binary) or the event (structured) is not JSON.
    #[error("{what} is not valid JSON: {reason}")]
    NotJson {
        /// `value` or `data`.
        what: String,
        /// The parser's message, with line and column.
        reason: String,
    },
    /// The content type is neither JSON nor structured CloudEvents JSON.
    #[error(
        "content-type '{0}' is not supported (use application/json or application/cloudevents+json)"
    )]
    UnsupportedContentType(String),
}

impl CloudEvent {
    /// Encodes in binary mode with `key` as the record key.
    pub fn to_binary(&self, key: Option<&str>) -> KafkaMessage {
        self.to_binary_with_data(self.data.to_string().into_bytes(), key)
    }

    /// Encodes in binary mode with `data`, JSON already serialised, as the value in place
    /// of [`CloudEvent::data`]: what chaosgate writes serialises straight to bytes.
    pub(crate) fn to_binary_with_data(&self, data: Vec<u8>, key: Option<&str>) -> KafkaMessage {
        let mut headers: Vec<(String, Vec<u8>)> = vec![
            ("ce_specversion".into(), SPEC_VERSION.into()),
            ("ce_id".into(), self.id.clone().into_bytes()),
            ("ce_source".into(), self.source.clone().into_bytes()),
            ("ce_type".into(), self.event_type.clone().into_bytes()),
        ];
        if let Some(time) = self.time {
            let text = time.to_rfc3339_opts(SecondsFormat::Millis, true);
            headers.push(("ce_time".into(), text.into_bytes()));
        }
        if let Some(subject) = &self.subject {
            headers.push(("ce_subject".into(), subject.clone().into_bytes()));
        }
        for (name, value) in &self.extensions {
            headers.push((format!("ce_{name}"), value.clone().into_bytes()));
        }
        headers.push((CONTENT_TYPE_HEADER.into(), JSON_CONTENT_TYPE.into()));
        KafkaMessage {
            key: key.map(|k| k.as_bytes().to_vec()),
            value: Some(data),
            headers,
        }
    }

    /// Encodes in structured mode (used by tests and by producers that prefer it).
    pub fn to_structured(&self, key: Option<&str>) -> KafkaMessage {
        let mut event = serde_json::Map::new();
        event.insert("specversion".into(), SPEC_VERSION.into());
        event.insert("id".into(), self.id.clone().into());
        event.insert("source".into(), self.source.clone().into());
        event.insert("type".into(), self.event_type.clone().into());
        if let Some(time) = self.time {
            event.insert(
                "time".into(),
                time.to_rfc3339_opts(SecondsFormat::Millis, true).into(),
            );
        }
        if let Some(subject) = &self.subject {
            event.insert("subject".into(), subject.clone().into());
        }
        for (name, value) in &self.extensions {
            event.insert(name.clone(), value.clone().into());
        }
        event.insert("datacontenttype".into(), JSON_CONTENT_TYPE.into());
        event.insert("data".into(), self.data.clone());
        KafkaMessage {
            key: key.map(|k| k.as_bytes().to_vec()),
            value: Some(Value::Object(event).to_string().into_bytes()),
            headers: vec![(CONTENT_TYPE_HEADER.into(), STRUCTURED_CONTENT_TYPE.into())],
        }
    }

    /// Decodes a record in either mode, chosen by its `content-type` header.
    pub fn decode(message: &KafkaMessage) -> Result<CloudEvent, CloudEventError> {
        let content_type = match message.header(CONTENT_TYPE_HEADER) {
            Some(bytes) => Some(header_text(CONTENT_TYPE_HEADER, bytes)?),
            None => None,
        };
        match content_type {
            Some(ct) if media_type(&ct).starts_with("application/cloudevents") => {
                if media_type(&ct) != STRUCTURED_CONTENT_TYPE {
                    return Err(CloudEventError::UnsupportedContentType(ct));
                }
                decode_structured(message)
            }
            Some(ct) if !is_json(&ct) => Err(CloudEventError::UnsupportedContentType(ct)),
            _ => decode_binary(message),
        }
    }
}

fn media_type(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

fn is_json(content_type: &str) -> bool {
    let media = media_type(content_type);
    media == "application/json" || media.ends_with("+json")
}

fn header_text(name: &str, bytes: &[u8]) -> Result<String, CloudEventError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| CloudEventError::MalformedAttribute {
        name: name.to_string(),
        reason: "not UTF-8".into(),
    })
}

fn parse_time(name: &str, text: &str) -> Result<DateTime<Utc>, CloudEventError> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| CloudEventError::MalformedAttribute {
            name: name.to_string(),
            reason: format!("'{text}' is not an RFC 3339 timestamp ({e})"),
        })
}

fn non_empty(name: &str, text: String) -> Result<String, CloudEventError> {
    if text.is_empty() {
        Err(CloudEventError::MalformedAttribute {
            name: name.to_string(),
            reason: "empty".into(),
        })
    } else {
        Ok(text)
    }
}

fn decode_binary(message: &KafkaMessage) -> Result<CloudEvent, CloudEventError> {
    let required = |attr: &str| -> Result<String, CloudEventError> {
        let header = format!("ce_{attr}");
        let bytes = message
            .header(&header)
            .ok_or_else(|| CloudEventError::MissingAttribute(header.clone()))?;
        non_empty(&header, header_text(&header, bytes)?)
    };
    let spec = required("specversion")?;
    if spec != SPEC_VERSION {
        return Err(CloudEventError::UnsupportedSpecVersion(spec));
    }
    let id = required("id")?;
    let source = required("source")?;
    let event_type = required("type")?;
    let mut time = None;
    let mut subject = None;
    let mut extensions = BTreeMap::new();
    for (name, bytes) in &message.headers {
        let Some(attr) = name.strip_prefix("ce_") else {
            continue;
        };
        match attr {
            "specversion" | "id" | "source" | "type" => {}
            "time" => time = Some(parse_time(name, &header_text(name, bytes)?)?),
            "subject" => subject = Some(header_text(name, bytes)?),
            _ => {
                extensions.insert(attr.to_string(), header_text(name, bytes)?);
            }
        }
    }
    let value = message
        .value
        .as_deref()
        .ok_or_else(|| CloudEventError::NotJson {
            what: "value".into(),
            reason: "the record has no value".into(),
        })?;
    let data = serde_json::from_slice(value).map_err(|e| CloudEventError::NotJson {
        what: "value".into(),
        reason: e.to_string(),
    })?;
    Ok(CloudEvent {
        id,
        source,
        event_type,
        time,
        subject,
        extensions,
        data,
    })
}

fn decode_structured(message: &KafkaMessage) -> Result<CloudEvent, CloudEventError> {
    let value = message
        .value
        .as_deref()
        .ok_or_else(|| CloudEventError::NotJson {
            what: "value".into(),
            reason: "the record has no value".into(),
        })?;
    let event: Value = serde_json::from_slice(value).map_err(|e| CloudEventError::NotJson {
        what: "value".into(),
        reason: e.to_string(),
    })?;
    let Value::Object(mut event) = event else {
        return Err(CloudEventError::NotJson {
            what: "value".into(),
            reason: "a structured CloudEvent must be a JSON object".into(),
        });
    };
    let mut string_attr = |name: &str, required: bool| -> Result<Option<String>, CloudEventError> {
        match event.remove(name) {
            Some(Value::String(s)) => non_empty(name, s).map(Some),
            Some(other) => Err(CloudEventError::MalformedAttribute {
                name: name.to_string(),
                reason: format!("expected a string, found {other}"),
            }),
            None if required => Err(CloudEventError::MissingAttribute(name.to_string())),
            None => Ok(None),
        }
    };
    let spec = string_attr("specversion", true)?.unwrap_or_default();
    if spec != SPEC_VERSION {
        return Err(CloudEventError::UnsupportedSpecVersion(spec));
    }
    let id = string_attr("id", true)?.unwrap_or_default();
    let source = string_attr("source", true)?.unwrap_or_default();
    let event_type = string_attr("type", true)?.unwrap_or_default();
    let time = string_attr("time", false)?
        .map(|t| parse_time("time", &t))
        .transpose()?;
    let subject = string_attr("subject", false)?;
    if let Some(ct) = string_attr("datacontenttype", false)?
        && !is_json(&ct)
    {
        return Err(CloudEventError::UnsupportedContentType(ct));
    }
    let data = match (event.remove("data"), event.remove("data_base64")) {
        (Some(data), _) => data,
        (None, Some(_)) => {
            return Err(CloudEventError::MalformedAttribute {
                name: "data_base64".into(),
                reason: "binary data is not supported; send JSON in 'data'".into(),
            });
        }
        (None, None) => return Err(CloudEventError::MissingAttribute("data".into())),
    };
    let extensions = event
        .into_iter()
        .filter_map(|(k, v)| match v {
            Value::String(s) => Some((k, s)),
            Value::Number(n) => Some((k, n.to_string())),
            Value::Bool(b) => Some((k, b.to_string())),
            _ => None,
        })
        .collect();
    Ok(CloudEvent {
        id,
        source,
        event_type,
        time,
        subject,
        extensions,
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CloudEvent {
        CloudEvent {
            id: "e-1".into(),
            source: "/flags/shop".into(),
            event_type: "dev.chaosgate.flag.change.v1".into(),
            time: Some(parse_time("time", "2026-11-27T09:30:00.123Z").unwrap()),
            subject: Some("shop/production/checkout-v2".into()),
            extensions: BTreeMap::from([("partitionkey".to_string(), "k".to_string())]),
            data: serde_json::json!({"a": 1}),
        }
    }

    #[test]
    fn binary_round_trip() {
        let event = sample();
        let message = event.to_binary(Some("k"));
        assert_eq!(
            message.header("content-type"),
            Some(&b"application/json"[..])
        );
        assert_eq!(message.header("ce_id"), Some(&b"e-1"[..]));
        assert_eq!(CloudEvent::decode(&message).unwrap(), event);
    }

    #[test]
    fn structured_round_trip() {
        let event = sample();
        let message = event.to_structured(Some("k"));
        assert_eq!(CloudEvent::decode(&message).unwrap(), event);
    }

    #[test]
    fn binary_missing_and_malformed_attributes_are_named() {
        let mut message = sample().to_binary(None);
        message.headers.retain(|(n, _)| n != "ce_source");
        assert_eq!(
            CloudEvent::decode(&message),
            Err(CloudEventError::MissingAttribute("ce_source".into()))
        );

        let mut message = sample().to_binary(None);
        for (n, v) in &mut message.headers {
            if n == "ce_time" {
                *v = b"yesterday".to_vec();
            }
        }
        let err = CloudEvent::decode(&message).unwrap_err();
        assert!(err.to_string().contains("'ce_time' is malformed"), "{err}");

        let mut message = sample().to_binary(None);
        for (n, v) in &mut message.headers {
            if n == "ce_specversion" {
                *v = b"0.3".to_vec();
            }
        }
        assert_eq!(
            CloudEvent::decode(&message),
            Err(CloudEventError::UnsupportedSpecVersion("0.3".into()))
        );

        let mut message = sample().to_binary(None);
        message.value = Some(b"{not json".to_vec());
        let err = CloudEvent::decode(&message).unwrap_err();
        assert!(
            err.to_string().starts_with("value is not valid JSON"),
            "{err}"
        );
    }

    #[test]
    fn structured_missing_and_malformed_attributes_are_named() {
        let message = |body: &str| KafkaMessage {
            key: None,
            value: Some(body.as_bytes().to_vec()),
            headers: vec![("content-type".into(), STRUCTURED_CONTENT_TYPE.into())],
        };
        assert_eq!(
            CloudEvent::decode(&message(
                r#"{"specversion":"1.0","source":"s","type":"t","data":{}}"#
            )),
            Err(CloudEventError::MissingAttribute("id".into()))
        );
        let err = CloudEvent::decode(&message(
            r#"{"specversion":"1.0","id":5,"source":"s","type":"t","data":{}}"#,
        ))
        .unwrap_err();
        assert!(err.to_string().contains("'id' is malformed"), "{err}");
        assert_eq!(
            CloudEvent::decode(&message(
                r#"{"specversion":"1.0","id":"i","source":"s","type":"t"}"#
            )),
            Err(CloudEventError::MissingAttribute("data".into()))
        );
        let err = CloudEvent::decode(&message("[1,2]")).unwrap_err();
        assert!(err.to_string().contains("must be a JSON object"), "{err}");
    }

    #[test]
    fn other_content_types_are_refused() {
        let mut message = sample().to_binary(None);
        for (n, v) in &mut message.headers {
            if n == "content-type" {
                *v = b"application/avro".to_vec();
            }
        }
        assert_eq!(
            CloudEvent::decode(&message),
            Err(CloudEventError::UnsupportedContentType(
                "application/avro".into()
            ))
        );
    }
}
