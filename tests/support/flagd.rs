//! flagd for the tests: flag definitions in flagd's format, flagd-format flag changes, and
//! the approved-flags topic read back.

#![allow(dead_code)]

use std::time::Duration;

use chaosgate::contract::{ApprovedFlag, ChangeKind, CloudEvent, FlagChange, ValueFormat};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// A boolean flagd flag with variants `on` (true) and `off` (false).
pub fn boolean_flag(state: &str, default_variant: &str) -> serde_json::Value {
    serde_json::json!({
        "state": state,
        "variants": { "on": true, "off": false },
        "defaultVariant": default_variant
    })
}

/// A flag change of `flag` in project `test`, environment `test`, whose values are flagd
/// definitions.
pub fn flagd_change(
    flag: &str,
    kind: ChangeKind,
    from: Option<serde_json::Value>,
    to: serde_json::Value,
) -> FlagChange {
    let mut change = super::worker::change(flag, kind, None);
    change.change.from = from;
    change.change.to = Some(to);
    change.value_format = Some(ValueFormat::Flagd);
    change
}

/// Every approved-flag record on `topic` (all partitions), `read_committed`, in offset
/// order per partition, read up to the end as it stands now.
pub fn approved_records(servers: &str, topic: &str) -> Vec<ApprovedFlag> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", servers)
        .set("group.id", super::kafka::unique_topic("approved-reader"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .expect("consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let partitions: Vec<i32> = metadata.topics()[0]
        .partitions()
        .iter()
        .map(|p| p.id())
        .collect();
    let mut assignment = TopicPartitionList::new();
    let mut ends = Vec::new();
    for partition in &partitions {
        assignment
            .add_partition_offset(topic, *partition, Offset::Beginning)
            .expect("assignment");
        let (_, high) = consumer
            .fetch_watermarks(topic, *partition, Duration::from_secs(10))
            .expect("watermarks");
        ends.push((*partition, high));
    }
    consumer.assign(&assignment).expect("assign");
    let mut records = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let done = ends.iter().all(|(partition, high)| {
            let position = consumer
                .position()
                .ok()
                .and_then(|list| {
                    list.find_partition(topic, *partition)
                        .and_then(|p| p.offset().to_raw())
                })
                .unwrap_or(0);
            position >= *high || *high == 0
        });
        if done {
            return records;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "approved-flags not read to its end within 60 s"
        );
        if let Some(message) = consumer.poll(Duration::from_millis(200)) {
            let message = message.expect("a record");
            let record = chaosgate::bus::record::from_rdkafka(&message);
            let event = CloudEvent::decode(&record).expect("a CloudEvent");
            assert_eq!(
                event.event_type,
                chaosgate::contract::approved_flag::APPROVED_FLAG_TYPE
            );
            records.push(serde_json::from_value(event.data).expect("an approved flag"));
        }
    }
}
