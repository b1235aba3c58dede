//! Moving records between rdkafka's message types and the contract's plain
//! [`KafkaMessage`], so everything above `bus` handles bytes without rdkafka.

use rdkafka::Message;
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{BaseRecord, FutureRecord};
use rdkafka::util::IntoOpaque;

use crate::contract::KafkaMessage;

/// Copies a consumed record into a [`KafkaMessage`].
pub fn from_rdkafka<M: Message>(message: &M) -> KafkaMessage {
    let headers = message
        .headers()
        .map(|headers| {
            headers
                .iter()
                .map(|h| {
                    (
                        h.key.to_string(),
                        h.value.map(<[u8]>::to_vec).unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    KafkaMessage {
        key: message.key().map(<[u8]>::to_vec),
        value: message.payload().map(<[u8]>::to_vec),
        headers,
    }
}

/// The headers of `message` in rdkafka's form.
pub(crate) fn headers_of(message: &KafkaMessage) -> OwnedHeaders {
    message.headers.iter().fold(
        OwnedHeaders::new_with_capacity(message.headers.len()),
        |acc, (key, value)| {
            acc.insert(Header {
                key,
                value: Some(value.as_slice()),
            })
        },
    )
}

/// [`to_base_record`] with a delivery opaque (handed back with the record's delivery
/// report).
pub(crate) fn to_base_record_with<'a, D: IntoOpaque>(
    topic: &'a str,
    message: &'a KafkaMessage,
    opaque: D,
) -> BaseRecord<'a, Vec<u8>, Vec<u8>, D> {
    let mut record = BaseRecord::with_opaque_to(topic, opaque).headers(headers_of(message));
    if let Some(key) = &message.key {
        record = record.key(key);
    }
    if let Some(value) = &message.value {
        record = record.payload(value);
    }
    record
}

/// A record for `topic` carrying `message`'s key, value and headers.
pub fn to_record<'a>(
    topic: &'a str,
    message: &'a KafkaMessage,
) -> FutureRecord<'a, Vec<u8>, Vec<u8>> {
    let mut record = FutureRecord::to(topic).headers(headers_of(message));
    if let Some(key) = &message.key {
        record = record.key(key);
    }
    if let Some(value) = &message.value {
        record = record.payload(value);
    }
    record
}
