//! Soak, chaosgate against itself (3 minutes): the real worker reaches its broker only
//! through chaosgate's own fault proxy, which cycles latency with jitter, a bandwidth
//! limit, connection resets and a 10 s blackhole, while the broker and the worker are
//! SIGKILLed and restarted, under a steady stream of gated flag changes over 50 flags.
//! A `read_committed` reader then checks exactly-once, per-flag order, one final record
//! per step, no experiment fault left active, and every answer within 30 s of
//! fault-free time. `cargo bench --bench soak` runs the same for longer.

#[path = "support/kafka.rs"]
mod kafka;
#[path = "support/proxied_kafka.rs"]
mod proxied_kafka;
#[path = "support/soak.rs"]
mod soak;
#[path = "support/worker.rs"]
mod worker;

use std::time::Duration;

use worker::diagnose;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_kafka_faults_broker_and_worker_kills_every_event_is_answered_once_in_order() {
    let report = soak::run(soak::Plan {
        // 3 minutes: one whole cycle of faults; SOAK_SECS sets another length.
        duration: Duration::from_secs(
            std::env::var("SOAK_SECS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(180),
        ),
        flags: 50,
        events_per_second: 2.0,
        max_in_flight: 8,
    })
    .await;
    println!("{}", report.summary());
    assert!(
        report.faults.len() >= 6 || std::env::var_os("SOAK_SECS").is_some(),
        "the soak did not get through one whole cycle of faults:\n{}",
        report.summary()
    );
    assert!(
        report.violations.is_empty(),
        "{}\n{}",
        report.summary(),
        report.diagnostics
    );
}

// The failure report's log reading (tests/support/diagnose.rs), checked on sample lines.

#[test]
fn targets_are_read_past_span_fields() {
    assert_eq!(
        diagnose::target_of(
            "2026-11-29T17:00:00.1Z  WARN chaosgate::bus::worker: consume failed; retrying error=Message consumption error: BrokerTransportFailure"
        ),
        Some("chaosgate::bus::worker")
    );
    assert_eq!(
        diagnose::target_of(
            "2026-11-29T17:00:00.1Z  INFO process{flag=a: b pipeline_id=p}:step{run_id=r}: chaosgate::gate::executor: run finished status=passed"
        ),
        Some("chaosgate::gate::executor")
    );
    assert_eq!(
        diagnose::target_of(
            "2026-11-29T17:00:00.1Z ERROR librdkafka: librdkafka: FAIL [thrd:127.0.0.1:1/1]: Connect failed"
        ),
        Some("librdkafka")
    );
    assert_eq!(
        diagnose::target_of("thread 'main' panicked at src/x.rs:1:1:"),
        None
    );
}

#[test]
fn librdkafka_runs_fold_and_chaosgate_lines_stay() {
    let log = "\
T1 ERROR rdkafka::client: librdkafka: Global error: BrokerTransportFailure (Local: Broker transport failure): x
T2 ERROR rdkafka::client: librdkafka: Global error: BrokerTransportFailure (Local: Broker transport failure): y
T3  WARN chaosgate::bus::worker: consume failed; retrying error=BrokerTransportFailure
T4 ERROR rdkafka::client: librdkafka: Global error: BrokerTransportFailure (Local: Broker transport failure): z
";
    let (tail, librdkafka) = diagnose::folded_tail(log, 10);
    assert_eq!(librdkafka, 3);
    assert!(tail.contains("consume failed"), "{tail}");
    assert!(
        tail.contains("[2 lines of rdkafka::client Global since T1"),
        "{tail}"
    );
    assert_eq!(tail.lines().count(), 4, "{tail}");
}
