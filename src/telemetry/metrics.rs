//! Metrics: one process-wide registry of `chaosgate_*` metrics, served at `/metrics`.
//!
//! The worker calls the plain functions below where things happen (an event consumed, a
//! run finished, a transaction committed); [`render`] writes the lot in the Prometheus
//! text exposition (OpenMetrics 1.0 flavour, which Prometheus reads natively).
//!
//! Built on `prometheus-client`, the Prometheus project's own Rust client: typed label
//! sets, no global macros, no protobuf dependency, and maintained alongside the
//! OpenMetrics spec. Label values are closed sets (error classes, commands, reason codes,
//! run statuses, partitions), so the series count stays small.
//!
//! | metric | type | labels | fed by |
//! | --- | --- | --- | --- |
//! | `chaosgate_events_consumed_total` | counter | | [`event_consumed`] |
//! | `chaosgate_events_dead_lettered_total` | counter | `class` | [`dead_lettered`] |
//! | `chaosgate_events_gated_total` | counter | `command`, `reason` | [`event_gated`] |
//! | `chaosgate_runs_total` | counter | `status` | [`run_finished`] |
//! | `chaosgate_resilience_score` | histogram 0..100 | | [`run_finished`] |
//! | `chaosgate_experiment_duration_seconds` | histogram | `status` | [`run_finished`] |
//! | `chaosgate_step_duration_seconds` | histogram | `status` | [`step_finished`] |
//! | `chaosgate_faults_active` | gauge | | [`fault_injected`], [`fault_reverted`] |
//! | `chaosgate_fault_revert_failures_total` | counter | `kind` | [`fault_revert_failed`] |
//! | `chaosgate_runs_in_flight` | gauge | | [`run_started`] (a guard) |
//! | `chaosgate_transaction_commit_seconds` | histogram | | [`commit`] |
//! | `chaosgate_transaction_failures_total` | counter | | [`commit_failed`] |
//! | `chaosgate_consumer_lag` | gauge | `topic`, `partition` | [`consumer_statistics`] |
//! | `chaosgate_kafka_brokers_up` | gauge | | [`consumer_statistics`] |
//! | `chaosgate_unleash_webhooks_total` | counter | `outcome` | [`unleash_webhook`] |
//! | `chaosgate_unleash_commands_total` | counter | `outcome` | [`unleash_command`] |
//! | `chaosgate_flagd_proposals_total` | counter | `outcome` | [`flagd_proposal`] |
//! | `chaosgate_flagd_approved_records_total` | counter | | [`flagd_approved_record`] |
//! | `chaosgate_flagd_sync_streams` | gauge | | [`flagd_sync_stream`] (a guard) |
//! | `chaosgate_alertmanager_alerts_total` | counter | `outcome` | [`alertmanager_alert`] |
//! | `chaosgate_holds_total` | counter | `kind`, `status` | [`hold`] |
//! | `chaosgate_guards_total` | counter | `status` | [`guard`] |
//!
//! The brokers-up count also feeds readiness ([`kafka_brokers_up`]): a worker whose
//! consumer reaches no broker is not ready.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde::Deserialize;

use crate::contract::{CommandKind, ErrorClass, ReasonCode, RunStatus};

/// The `Content-Type` of [`render`]'s output.
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Buckets of the resilience score: 0, 10, ..., 100.
const SCORE_BUCKETS: [f64; 11] = [
    0.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 100.0,
];

/// Buckets of experiment and step durations, in seconds: 1 s to 1 h.
const DURATION_BUCKETS: [f64; 12] = [
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0,
];

/// Buckets of transaction commit latency, in seconds: 1 ms to 30 s.
const COMMIT_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabel {
    class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GatedLabels {
    command: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HoldLabels {
    kind: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartitionLabels {
    topic: String,
    partition: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

/// Every metric of the process, and the registry that renders them.
struct Metrics {
    registry: Registry,
    events_consumed: Counter,
    dead_lettered: Family<ClassLabel, Counter>,
    gated: Family<GatedLabels, Counter>,
    runs: Family<StatusLabel, Counter>,
    score: Histogram,
    experiment_duration: HistogramFamily<StatusLabel>,
    step_duration: HistogramFamily<StatusLabel>,
    faults_active: Gauge,
    revert_failures: Family<KindLabel, Counter>,
    runs_in_flight: Gauge,
    commit_latency: Histogram,
    commit_failures: Counter,
    consumer_lag: Family<PartitionLabels, Gauge>,
    brokers_up: Gauge,
    main_loop_last_tick: Gauge<f64, std::sync::atomic::AtomicU64>,
    unleash_webhooks: Family<OutcomeLabel, Counter>,
    unleash_commands: Family<OutcomeLabel, Counter>,
    flagd_proposals: Family<OutcomeLabel, Counter>,
    flagd_approved_records: Counter,
    flagd_sync_streams: Gauge,
    alertmanager_alerts: Family<OutcomeLabel, Counter>,
    holds: Family<HoldLabels, Counter>,
    guards: Family<StatusLabel, Counter>,
    /// Partitions with a lag gauge, per topic, to drop the ones no longer assigned.
    lag_partitions: Mutex<BTreeMap<String, HashSet<String>>>,
}

impl Metrics {
    fn new() -> Metrics {
        let mut metrics = Metrics {
            events_consumed: Counter::default(),
            dead_lettered: Family::default(),
            gated: Family::default(),
            runs: Family::default(),
            score: Histogram::new(SCORE_BUCKETS),
            experiment_duration: Family::new_with_constructor(duration_histogram),
            step_duration: Family::new_with_constructor(duration_histogram),
            faults_active: Gauge::default(),
            revert_failures: Family::default(),
            runs_in_flight: Gauge::default(),
            commit_latency: Histogram::new(COMMIT_BUCKETS),
            commit_failures: Counter::default(),
            consumer_lag: Family::default(),
            brokers_up: Gauge::default(),
            main_loop_last_tick: Gauge::default(),
            unleash_webhooks: Family::default(),
            unleash_commands: Family::default(),
            flagd_proposals: Family::default(),
            flagd_approved_records: Counter::default(),
            flagd_sync_streams: Gauge::default(),
            alertmanager_alerts: Family::default(),
            holds: Family::default(),
            guards: Family::default(),
            lag_partitions: Mutex::default(),
            registry: Registry::default(),
        };
        // Counters get their `_total` suffix from the encoder.
        metrics.registry.register(
            "chaosgate_events_consumed",
            "Flag-change records read from the flag-changes topic",
            metrics.events_consumed.clone(),
        );
        metrics.registry.register(
            "chaosgate_events_dead_lettered",
            "Flag-change records sent to the dead-letter topic, by error class",
            metrics.dead_lettered.clone(),
        );
        metrics.registry.register(
            "chaosgate_holds",
            "Pipeline holds (approval, wait, freeze) begun (status waiting) and ended, by kind and status",
            metrics.holds.clone(),
        );
        metrics.registry.register(
            "chaosgate_guards",
            "Guards started (status watching) and ended, by status",
            metrics.guards.clone(),
        );
        metrics.registry.register(
            "chaosgate_events_gated",
            "Flag commands issued, by command and reason code",
            metrics.gated.clone(),
        );
        metrics.registry.register(
            "chaosgate_runs",
            "Experiment runs finished, by final status",
            metrics.runs.clone(),
        );
        metrics.registry.register(
            "chaosgate_resilience_score",
            "Resilience score (0-100) of finished experiment runs",
            metrics.score.clone(),
        );
        metrics.registry.register(
            "chaosgate_experiment_duration_seconds",
            "Wall time of one experiment run, by final status",
            metrics.experiment_duration.clone(),
        );
        metrics.registry.register(
            "chaosgate_step_duration_seconds",
            "Wall time of one chaos step, all its attempts included, by final status",
            metrics.step_duration.clone(),
        );
        metrics.registry.register(
            "chaosgate_faults_active",
            "Faults injected and not yet reverted",
            metrics.faults_active.clone(),
        );
        metrics.registry.register(
            "chaosgate_fault_revert_failures",
            "Revert tries that failed (each is retried with backoff until the fault's lease), by fault kind",
            metrics.revert_failures.clone(),
        );
        metrics.registry.register(
            "chaosgate_unleash_webhooks",
            "Unleash webhook requests, by outcome (produced, duplicate, own_change, part_of_toggle, ignored, unauthorized, rejected, failed)",
            metrics.unleash_webhooks.clone(),
        );
        metrics.registry.register(
            "chaosgate_alertmanager_alerts",
            "Alerts the Alertmanager webhook received, by outcome (produced, duplicate, resolved, unmatched, not_allowed, failed; unauthorized and rejected count refused requests)",
            metrics.alertmanager_alerts.clone(),
        );
        metrics.registry.register(
            "chaosgate_unleash_commands",
            "Flag commands handled by the Unleash bridge, by outcome (applied, confirmed, dry_run, stale, retried, failed)",
            metrics.unleash_commands.clone(),
        );
        metrics.registry.register(
            "chaosgate_flagd_proposals",
            "Proposed flagd definitions handled by the flagd bridge, by outcome (produced, invalid, failed)",
            metrics.flagd_proposals.clone(),
        );
        metrics.registry.register(
            "chaosgate_flagd_approved_records",
            "Approved-flag records read by the flagd bridge",
            metrics.flagd_approved_records.clone(),
        );
        metrics.registry.register(
            "chaosgate_flagd_sync_streams",
            "Open flagd.sync.v1 SyncFlags streams",
            metrics.flagd_sync_streams.clone(),
        );
        metrics.registry.register(
            "chaosgate_runs_in_flight",
            "Pipeline executions running now",
            metrics.runs_in_flight.clone(),
        );
        metrics.registry.register(
            "chaosgate_transaction_commit_seconds",
            "Latency of one Kafka transaction commit (records, command and offsets)",
            metrics.commit_latency.clone(),
        );
        metrics.registry.register(
            "chaosgate_transaction_failures",
            "Kafka transactions that failed to commit and were aborted",
            metrics.commit_failures.clone(),
        );
        metrics.registry.register(
            "chaosgate_consumer_lag",
            "Records between the consumer position and the end of each assigned partition (from librdkafka statistics)",
            metrics.consumer_lag.clone(),
        );
        metrics.registry.register(
            "chaosgate_kafka_brokers_up",
            "Kafka brokers the worker's consumer is connected to (from librdkafka statistics)",
            metrics.brokers_up.clone(),
        );
        metrics.registry.register(
            "chaosgate_main_loop_last_tick_seconds",
            "When the worker's consumer loop last went round (Unix seconds); it goes round at least once a second",
            metrics.main_loop_last_tick.clone(),
        );
        metrics
    }
}

/// Brokers in state `UP` in the last consumer statistics; -1 before the first.
static BROKERS_UP: AtomicI64 = AtomicI64::new(-1);

/// How many Kafka brokers the consumer was connected to at its last statistics
/// (`statistics.interval.ms`); `None` before the first statistics arrived.
pub(crate) fn kafka_brokers_up() -> Option<u64> {
    u64::try_from(BROKERS_UP.load(Ordering::Relaxed)).ok()
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The whole registry in the Prometheus text exposition (ends with `# EOF`).
pub(crate) fn render() -> Result<String, std::fmt::Error> {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &METRICS.registry)?;
    Ok(text)
}

/// The worker's consumer loop went round; `unix_seconds` is now, since the Unix epoch.
pub(crate) fn main_loop_tick(unix_seconds: f64) {
    METRICS.main_loop_last_tick.set(unix_seconds);
}

/// A flag-change record was read (call once per record, before decoding it).
pub fn event_consumed() {
    METRICS.events_consumed.inc();
}

/// A flag-change record went to the dead-letter topic (call where the dead letter is
/// built).
pub fn dead_lettered(class: ErrorClass) {
    METRICS
        .dead_lettered
        .get_or_create(&ClassLabel {
            class: class.as_str().to_string(),
        })
        .inc();
}

/// A flag command was issued for an event: gated after its pipeline, or passed on at
/// once (`requested`, `no_pipeline`, `not_gated`). Call once per command, when it is
/// handed to the committer.
pub fn event_gated(command: CommandKind, reason: ReasonCode) {
    METRICS
        .gated
        .get_or_create(&GatedLabels {
            command: command.as_str().to_string(),
            reason: reason_name(reason).to_string(),
        })
        .inc();
}

/// An experiment run reached its final status; `score` is its resilience score when it
/// has one, `duration` its wall time. Call once per final run record (not for `running`).
pub fn run_finished(status: RunStatus, score: Option<f64>, duration: Duration) {
    let label = StatusLabel {
        status: status.as_str().to_string(),
    };
    METRICS.runs.get_or_create(&label).inc();
    if let Some(score) = score.filter(|s| s.is_finite()) {
        METRICS.score.observe(score.clamp(0.0, 100.0));
    }
    METRICS
        .experiment_duration
        .get_or_create(&label)
        .observe(duration.as_secs_f64());
}

/// A chaos step ended with `status` after `duration` (all attempts).
pub fn step_finished(status: RunStatus, duration: Duration) {
    METRICS
        .step_duration
        .get_or_create(&StatusLabel {
            status: status.as_str().to_string(),
        })
        .observe(duration.as_secs_f64());
}

/// A fault was injected (pair with [`fault_reverted`]).
pub fn fault_injected() {
    METRICS.faults_active.inc();
}

/// A fault was reverted, by the runner or by its lease running out.
pub fn fault_reverted() {
    METRICS.faults_active.dec();
}

/// One try to revert a fault of `kind` (`network`, `http`, `toxiproxy`, `process`,
/// `command`) failed; call once per failed try, the retries included.
pub fn fault_revert_failed(kind: &str) {
    METRICS
        .revert_failures
        .get_or_create(&KindLabel {
            kind: kind.to_string(),
        })
        .inc();
}

/// The Unleash webhook endpoint answered one request with `outcome` (`produced`,
/// `duplicate`, `own_change`, `part_of_toggle`, `ignored`, `unauthorized`, `rejected`,
/// `failed`).
pub fn unleash_webhook(outcome: &'static str) {
    METRICS
        .unleash_webhooks
        .get_or_create(&OutcomeLabel {
            outcome: outcome.to_string(),
        })
        .inc();
}

/// The Alertmanager webhook handled one alert with `outcome` (`produced`: its `disable`
/// flag changes are in Kafka; `duplicate`: they were already; `resolved`, `unmatched`:
/// nothing to do; `not_allowed`: its rule takes the flag from a label, which names none
/// the rule allows; `failed`: Kafka did not take one), or refused one request
/// (`unauthorized`, `rejected`), its alerts unread.
pub fn alertmanager_alert(outcome: &'static str) {
    METRICS
        .alertmanager_alerts
        .get_or_create(&OutcomeLabel {
            outcome: outcome.to_string(),
        })
        .inc();
}

/// The Unleash bridge handled one flag command, or one try of it, with `outcome`
/// (`applied`, `confirmed` for an `enable` of a strategy change already live, `dry_run`,
/// `stale`, `retried` per failed transient try, `failed` when it failed for good).
pub fn unleash_command(outcome: &'static str) {
    METRICS
        .unleash_commands
        .get_or_create(&OutcomeLabel {
            outcome: outcome.to_string(),
        })
        .inc();
}

/// The flagd bridge handled one proposed flag definition with `outcome` (`produced`: a
/// flag change is on `flag-changes`; `invalid`: its file was refused; `failed`: Kafka did
/// not take it, tried again on the next scan). Proposals already served, decided or on the
/// topic are not counted.
pub fn flagd_proposal(outcome: &'static str) {
    METRICS
        .flagd_proposals
        .get_or_create(&OutcomeLabel {
            outcome: outcome.to_string(),
        })
        .inc();
}

/// A hold of `kind` (`approval`, `wait`, `freeze`) began (`waiting`) or ended with
/// `status`, as its record says.
pub fn hold(kind: &'static str, status: &'static str) {
    METRICS
        .holds
        .get_or_create(&HoldLabels {
            kind: kind.to_string(),
            status: status.to_string(),
        })
        .inc();
}

/// A guard began (`watching`) or ended with `status`, as its record says.
pub fn guard(status: &'static str) {
    METRICS
        .guards
        .get_or_create(&StatusLabel {
            status: status.to_string(),
        })
        .inc();
}

/// The flagd bridge read one approved-flag record.
pub fn flagd_approved_record() {
    METRICS.flagd_approved_records.inc();
}

/// A `SyncFlags` stream opened; `chaosgate_flagd_sync_streams` counts it until the guard
/// is dropped.
pub fn flagd_sync_stream() -> OpenSyncStream {
    METRICS.flagd_sync_streams.inc();
    OpenSyncStream { _private: () }
}

/// Counts one open `SyncFlags` stream while it lives (see [`flagd_sync_stream`]).
#[derive(Debug)]
pub struct OpenSyncStream {
    _private: (),
}

impl Drop for OpenSyncStream {
    fn drop(&mut self) {
        METRICS.flagd_sync_streams.dec();
    }
}

/// A pipeline execution started; `chaosgate_runs_in_flight` counts it until the guard
/// is dropped (also on panic or early return).
pub fn run_started() -> InFlightRun {
    METRICS.runs_in_flight.inc();
    InFlightRun { _private: () }
}

/// Holds one unit of `chaosgate_runs_in_flight`; see [`run_started`].
#[derive(Debug)]
#[must_use = "the run counts as in flight only while this guard lives"]
pub struct InFlightRun {
    _private: (),
}

impl Drop for InFlightRun {
    fn drop(&mut self) {
        METRICS.runs_in_flight.dec();
    }
}

/// A Kafka transaction committed after `latency` (from `begin_transaction` to the end
/// of `commit_transaction`).
pub fn commit(latency: Duration) {
    METRICS.commit_latency.observe(latency.as_secs_f64());
}

/// A Kafka transaction failed to commit (it was aborted and will be retried).
pub(crate) fn commit_failed() {
    METRICS.commit_failures.inc();
}

/// Why librdkafka statistics could not be used.
#[derive(Debug, thiserror::Error)]
#[error("unreadable librdkafka statistics: {0}")]
pub struct StatisticsError(#[from] serde_json::Error);

#[derive(Deserialize)]
struct Statistics {
    #[serde(default, rename = "type")]
    kind: String,
    #[serde(default)]
    topics: BTreeMap<String, TopicStatistics>,
    #[serde(default)]
    brokers: BTreeMap<String, BrokerStatistics>,
}

#[derive(Deserialize)]
struct BrokerStatistics {
    #[serde(default)]
    state: String,
    /// `configured`, `learned`, `internal` or `logical` (the group coordinator alias).
    #[serde(default)]
    source: String,
}

impl Statistics {
    /// Brokers with a connection up (the logical coordinator alias not counted); `None`
    /// when the statistics list no brokers.
    fn brokers_up(&self) -> Option<i64> {
        if self.brokers.is_empty() {
            return None;
        }
        let up = self
            .brokers
            .values()
            .filter(|b| b.state == "UP" && b.source != "logical" && b.source != "internal")
            .count();
        Some(i64::try_from(up).unwrap_or(i64::MAX))
    }
}

#[derive(Deserialize)]
struct TopicStatistics {
    #[serde(default)]
    partitions: BTreeMap<String, PartitionStatistics>,
}

#[derive(Deserialize)]
struct PartitionStatistics {
    partition: i32,
    #[serde(default = "unknown_lag")]
    consumer_lag: i64,
}

fn unknown_lag() -> i64 {
    -1
}

/// Updates `chaosgate_consumer_lag` from one librdkafka statistics JSON document (the
/// consumer's `statistics.interval.ms` callback: `ClientContext::stats_raw`).
///
/// One gauge per topic and partition whose lag librdkafka knows; partitions it reports
/// with an unknown lag (`-1`: not assigned, or no position yet) lose their gauge, so a
/// revoked partition stops showing. Statistics of a producer are ignored.
pub fn consumer_statistics(json: &[u8]) -> Result<(), StatisticsError> {
    let statistics: Statistics = serde_json::from_slice(json)?;
    if statistics.kind != "consumer" {
        return Ok(());
    }
    if let Some(up) = statistics.brokers_up() {
        BROKERS_UP.store(up, Ordering::Relaxed);
        METRICS.brokers_up.set(up);
    }
    let Ok(mut known) = METRICS.lag_partitions.lock() else {
        return Ok(());
    };
    for (topic, stats) in &statistics.topics {
        let shown = known.entry(topic.clone()).or_default();
        for partition in stats.partitions.values() {
            // -1 is librdkafka's internal "unassigned" partition.
            if partition.partition < 0 {
                continue;
            }
            let labels = PartitionLabels {
                topic: topic.clone(),
                partition: partition.partition.to_string(),
            };
            if partition.consumer_lag >= 0 {
                METRICS
                    .consumer_lag
                    .get_or_create(&labels)
                    .set(partition.consumer_lag);
                shown.insert(labels.partition);
            } else if shown.remove(&labels.partition) {
                METRICS.consumer_lag.remove(&labels);
            }
        }
    }
    Ok(())
}

/// Drops every lag gauge (the consumer left the group).
pub(crate) fn clear_consumer_lag() {
    METRICS.consumer_lag.clear();
    if let Ok(mut known) = METRICS.lag_partitions.lock() {
        known.clear();
    }
}

fn reason_name(reason: ReasonCode) -> &'static str {
    match reason {
        ReasonCode::Passed => "passed",
        ReasonCode::Failed => "failed",
        ReasonCode::Aborted => "aborted",
        ReasonCode::Requested => "requested",
        ReasonCode::NoPipeline => "no_pipeline",
        ReasonCode::NotGated => "not_gated",
        ReasonCode::GuardFired => "guard_fired",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Statistics as librdkafka 2.x emits them for a consumer: trimmed to two topics,
    /// with the internal partition -1 and a partition not assigned to us.
    const CONSUMER_STATISTICS: &str = r#"{
      "name": "chaosgate#consumer-1", "client_id": "chaosgate", "type": "consumer",
      "ts": 5016483227792, "time": 1527060869, "age": 5016483227, "replyq": 0,
      "msg_cnt": 0, "msg_size": 0, "msg_max": 100000, "msg_size_max": 1073741824,
      "brokers": {
        "127.0.0.1:19092/1": {"name": "127.0.0.1:19092/1", "nodeid": 1, "state": "UP",
          "rtt": {"min": 100, "max": 2000, "avg": 500, "p99": 1900, "cnt": 10}}
      },
      "topics": {
        "lag-test-flag-changes": {
          "topic": "lag-test-flag-changes", "age": 5000, "metadata_age": 4000,
          "partitions": {
            "0": {"partition": 0, "broker": 1, "leader": 1, "desired": true,
                  "fetch_state": "active", "query_offset": -1001, "next_offset": 120,
                  "app_offset": 120, "stored_offset": 118, "committed_offset": 100,
                  "eof_offset": 120, "lo_offset": 0, "hi_offset": 142, "ls_offset": 142,
                  "consumer_lag": 22, "consumer_lag_stored": 24, "txmsgs": 0, "rxmsgs": 120},
            "1": {"partition": 1, "broker": 1, "leader": 1, "desired": true,
                  "fetch_state": "active", "app_offset": 7, "committed_offset": 7,
                  "hi_offset": 7, "ls_offset": 7, "consumer_lag": 0, "consumer_lag_stored": 0},
            "2": {"partition": 2, "broker": 1, "leader": 1, "desired": false,
                  "fetch_state": "none", "app_offset": -1001, "committed_offset": -1001,
                  "hi_offset": 55, "ls_offset": 55, "consumer_lag": -1, "consumer_lag_stored": -1},
            "-1": {"partition": -1, "broker": -1, "leader": -1, "desired": false,
                   "fetch_state": "none", "consumer_lag": -1}
          }
        }
      },
      "cgrp": {"state": "up", "join_state": "steady", "assignment_size": 2}
    }"#;

    fn lag_lines(text: &str) -> Vec<String> {
        text.lines()
            .filter(|l| l.starts_with("chaosgate_consumer_lag{topic=\"lag-test-flag-changes\""))
            .map(str::to_string)
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect()
    }

    #[test]
    fn consumer_lag_follows_librdkafka_statistics() {
        consumer_statistics(CONSUMER_STATISTICS.as_bytes()).unwrap();
        let lines = lag_lines(&render().unwrap());
        assert_eq!(
            lines,
            vec![
                "chaosgate_consumer_lag{topic=\"lag-test-flag-changes\",partition=\"0\"} 22",
                "chaosgate_consumer_lag{topic=\"lag-test-flag-changes\",partition=\"1\"} 0",
            ]
        );

        // Partition 0 revoked: librdkafka reports its lag as unknown; its gauge goes.
        let revoked = CONSUMER_STATISTICS.replace("\"consumer_lag\": 22", "\"consumer_lag\": -1");
        consumer_statistics(revoked.as_bytes()).unwrap();
        let lines = lag_lines(&render().unwrap());
        assert_eq!(
            lines,
            vec!["chaosgate_consumer_lag{topic=\"lag-test-flag-changes\",partition=\"1\"} 0"]
        );
    }

    #[test]
    fn brokers_up_counts_connected_brokers_only() {
        let stats = |json: &str| serde_json::from_str::<Statistics>(json).unwrap();
        let up = stats(CONSUMER_STATISTICS);
        assert_eq!(up.brokers_up(), Some(1));
        let down = stats(
            r#"{"type": "consumer", "brokers": {
              "127.0.0.1:19092/bootstrap": {"state": "DOWN", "source": "configured"},
              "127.0.0.1:19092/1": {"state": "CONNECT", "source": "learned"},
              "GroupCoordinator": {"state": "UP", "source": "logical"}}}"#,
        );
        assert_eq!(down.brokers_up(), Some(0));
        assert_eq!(stats(r#"{"type": "consumer"}"#).brokers_up(), None);
    }

    #[test]
    fn producer_statistics_and_garbage_are_told_apart() {
        let producer = CONSUMER_STATISTICS
            .replace("\"type\": \"consumer\"", "\"type\": \"producer\"")
            .replace("lag-test-flag-changes", "lag-test-producer");
        consumer_statistics(producer.as_bytes()).unwrap();
        assert!(!render().unwrap().contains("lag-test-producer"));
        assert!(consumer_statistics(b"{not json").is_err());
    }

    fn sample(text: &str, series: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }

    #[test]
    fn scores_land_in_their_buckets() {
        let before = render().unwrap();
        run_finished(RunStatus::Passed, Some(85.0), Duration::from_secs(12));
        run_finished(RunStatus::Error, None, Duration::from_millis(10));
        let after = render().unwrap();
        let count = "chaosgate_resilience_score_count";
        assert_eq!(sample(&after, count), sample(&before, count) + 1.0);
        let bucket = "chaosgate_resilience_score_bucket{le=\"90.0\"}";
        assert_eq!(sample(&after, bucket), sample(&before, bucket) + 1.0);
        let bucket = "chaosgate_resilience_score_bucket{le=\"80.0\"}";
        assert_eq!(sample(&after, bucket), sample(&before, bucket));
        assert!(
            after.contains("chaosgate_runs_total{status=\"error\"}"),
            "{after}"
        );
    }
}
