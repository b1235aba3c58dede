//! A flag-change goes through a real Kafka broker and comes back equal, in binary and in
//! structured CloudEvents mode.

#[path = "support/kafka.rs"]
mod kafka;

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, Producer};

use chaosgate::bus::record::{from_rdkafka, to_record};
use chaosgate::contract::flag_change::{
    decode_flag_change, flag_change_event, flag_change_example,
};

#[tokio::test]
async fn flag_change_round_trips_through_the_broker_in_both_modes() {
    let servers = kafka::require_broker();
    let topic = kafka::unique_topic("smoke-flag-changes");
    kafka::create_topics(&servers, &[&topic], 1).await;

    let change = flag_change_example();
    let event = flag_change_event(&change, "/flag-service/test");
    let key = change.flag_key();
    let binary = event.to_binary(Some(&key));
    let structured = event.to_structured(Some(&key));

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &servers)
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    for message in [&binary, &structured] {
        producer
            .send(to_record(&topic, message), Duration::from_secs(10))
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    producer.flush(Duration::from_secs(10)).unwrap();

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &servers)
        .set("group.id", kafka::unique_topic("smoke-group"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let mut received = Vec::new();
    while received.len() < 2 {
        let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .expect("no record within 30 s")
            .unwrap();
        received.push(from_rdkafka(&message));
    }

    assert_eq!(received[0], binary, "binary-mode record changed on the way");
    assert_eq!(
        received[1], structured,
        "structured-mode record changed on the way"
    );
    for message in &received {
        assert_eq!(message.key.as_deref(), Some(key.as_bytes()));
        let (decoded_event, decoded) = decode_flag_change(message, 1 << 20).unwrap();
        assert_eq!(decoded, change);
        assert_eq!(decoded_event.id, change.event_id);
        assert_eq!(decoded_event.subject.as_deref(), Some(key.as_str()));
    }
}
