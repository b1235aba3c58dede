//! librdkafka's mock cluster in the test process, for tests that break Kafka on purpose:
//! request errors, slow answers to one kind of request, brokers down and up. The worker
//! under test runs as the real `chaosgate run` process and reaches the mock over TCP.
//!
//! What the mock does not model (librdkafka 2.12 `rdkafka_mock_handlers.c`), and what the
//! tests must account for:
//! - `EndTxn` only checks the producer id and epoch: nothing is committed or aborted, no
//!   control records are written, so a record produced in an aborted transaction stays
//!   visible to a `read_committed` reader. Any abort after records reached the broker
//!   therefore shows as a duplicate here: "exactly once" checks on the mock are stricter
//!   than on a real broker.
//! - `TxnOffsetCommit` answers without storing the offsets, so a worker started again
//!   begins from the offsets committed outside transactions (none, unless the test
//!   commits some with a plain consumer).
//! - `OffsetFetch` answers up to version 6 (no `RequireStable`), so
//!   `UNSTABLE_OFFSET_COMMIT` comes only from injected errors.

#![allow(dead_code)]

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, DefaultProducerContext, Producer};
use rdkafka::types::RDKafkaRespErr;

use super::worker::Topics;

/// A mock cluster owned by a producer created with `test.mock.num.brokers` (so its raw
/// handle is reachable for the calls rust-rdkafka does not wrap).
pub struct Mock {
    owner: BaseProducer<DefaultProducerContext>,
}

impl Mock {
    /// Starts a mock cluster of `brokers` brokers (ids 1..=brokers).
    pub fn start(brokers: i32) -> Mock {
        let owner: BaseProducer<DefaultProducerContext> = ClientConfig::new()
            .set("test.mock.num.brokers", brokers.to_string())
            .create()
            .expect("mock cluster");
        Mock { owner }
    }

    /// The safe wrapper, for the calls rust-rdkafka has.
    pub fn cluster(&self) -> MockCluster<'_, DefaultProducerContext> {
        self.owner
            .client()
            .mock_cluster()
            .expect("the producer owns a mock cluster")
    }

    /// Its `bootstrap.servers`.
    pub fn servers(&self) -> String {
        self.cluster().bootstrap_servers()
    }

    /// Creates the five topics of a test with `partitions` partitions each.
    pub fn create_topics(&self, topics: &Topics, partitions: i32) {
        let cluster = self.cluster();
        for topic in topics.all() {
            cluster
                .create_topic(topic, partitions, 1)
                .unwrap_or_else(|e| panic!("creating {topic} on the mock cluster: {e}"));
        }
    }

    /// Makes the next `count` requests of `api_key` to broker `broker` succeed only after
    /// `rtt` (librdkafka's `rd_kafka_mock_broker_push_request_error_rtts`).
    pub fn slow_requests(&self, broker: i32, api_key: i16, count: usize, rtt: Duration) {
        let cluster = self.mock_ptr();
        let rtt_ms = i32::try_from(rtt.as_millis()).expect("rtt in ms");
        for _ in 0..count {
            // SAFETY: a live mock cluster handle (owned by `self.owner`); one (error, rtt)
            // pair of C ints follows `cnt = 1`, as the variadic signature expects.
            let err = unsafe {
                rdkafka::bindings::rd_kafka_mock_broker_push_request_error_rtts(
                    cluster,
                    broker,
                    api_key,
                    1,
                    RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR as i32,
                    rtt_ms,
                )
            };
            assert_eq!(
                err,
                RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR,
                "pushing a slow answer"
            );
        }
    }

    fn mock_ptr(&self) -> *mut rdkafka::bindings::rd_kafka_mock_cluster_t {
        // SAFETY: the producer's own handle; it was created with a mock cluster.
        let cluster = unsafe {
            rdkafka::bindings::rd_kafka_handle_mock_cluster(self.owner.client().native_ptr())
        };
        assert!(!cluster.is_null(), "no mock cluster");
        cluster
    }
}
