//! The soak: chaosgate against itself. The real `chaosgate run` worker reaches its own
//! broker only through chaosgate's fault proxy ([`proxied_kafka`]); a driver cycles
//! faults on that path (latency with jitter, a bandwidth limit, connection resets, a
//! blackhole) and kills the broker and the worker, while a producer sends a steady
//! stream of flag changes over many flags, each gated by a small real experiment (a
//! short `command` fault and a `tcp` probe).
//!
//! The rule that keeps it right: everything is judged at the end, from outside, by a
//! `read_committed` reader on the broker's direct listener, against what the producer
//! sent: every event exactly one command, in per-flag order; every gated step exactly
//! one final record (an attempt cut off may also end `aborted`, before the one that
//! counts); no experiment's fault left active; every event answered within
//! [`ANSWER_BOUND`] of fault-free time (time with a fault active, or the broker down, is
//! not counted).

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::producer::FutureProducer;

use chaosgate::bus::record::to_record;
use chaosgate::catalog::experiment::{Direction, NetworkFault, Toxic};
use chaosgate::catalog::span::Span;
use chaosgate::contract::flag_change::flag_change_event;
use chaosgate::contract::{ChangeKind, RunStatus};

use super::proxied_kafka::{self, ProxiedKafka};
use super::worker::{self, Harness, Listener, Settings, change, experiment_yaml, pipeline_yaml};

/// The longest an event may wait for its command, fault time not counted.
pub const ANSWER_BOUND: Duration = Duration::from_secs(30);

/// How long to wait, after the last fault cleared, for the last commands before the
/// soak reports the events still unanswered.
const FINAL_WAIT: Duration = Duration::from_secs(120);

/// What a soak runs.
#[derive(Debug, Clone)]
pub struct Plan {
    /// How long the driver cycles faults (and the producer sends).
    pub duration: Duration,
    /// Flags, each with its own pipeline and experiment.
    pub flags: usize,
    /// Flag changes sent per second.
    pub events_per_second: f64,
    /// The worker's `max_in_flight`.
    pub max_in_flight: usize,
}

/// One disruption the driver caused: what, and from when to when (the end is when the
/// path was whole again: the toxic removed, the broker taking records, the worker
/// respawned).
#[derive(Debug, Clone)]
pub struct Window {
    pub kind: &'static str,
    pub start: Instant,
    pub end: Instant,
}

/// One flag change the producer sent.
#[derive(Debug, Clone)]
struct Sent {
    event_id: String,
    flag: String,
    gated: bool,
    at: Instant,
    /// Where it landed (partition, offset), once the broker took it.
    landed: Option<(i32, i64)>,
}

/// What a soak found.
#[derive(Debug, Default)]
pub struct Report {
    pub events: usize,
    pub gated: usize,
    /// Disruptions by kind.
    pub faults: BTreeMap<&'static str, usize>,
    /// Experiment runs started (`running` records seen).
    pub runs_started: usize,
    /// Longest time with events waiting and no new command.
    pub longest_gap: Duration,
    /// The longest an event waited for its command, time under faults not counted, and
    /// that event.
    pub worst_answer: Duration,
    pub worst_answer_event: String,
    /// The longest an event waited for its command, faults included.
    pub worst_wall: Duration,
    /// How long each broker restart took to take records again.
    pub broker_restarts: Vec<Duration>,
    /// The disruptions in order, seconds from the start.
    pub timeline: String,
    /// Every broken invariant, one line each.
    pub violations: Vec<String>,
    /// Worker logs and process states, when something broke.
    pub diagnostics: String,
}

impl Report {
    /// The figures, one per line.
    pub fn summary(&self) -> String {
        let faults: Vec<String> = self
            .faults
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        let mut text = format!(
            "events {} ({} gated, {} experiment runs started)\nfaults injected: {} ({})\nlongest gap with events waiting: {:.1} s\nworst answer time, fault time not counted: {:.1} s (event {}); faults included: {:.1} s\nbroker restarts took: {:?}\ntimeline:\n{}",
            self.events,
            self.gated,
            self.runs_started,
            self.faults.values().sum::<usize>(),
            faults.join(", "),
            self.longest_gap.as_secs_f64(),
            self.worst_answer.as_secs_f64(),
            self.worst_answer_event,
            self.worst_wall.as_secs_f64(),
            self.broker_restarts,
            self.timeline
        );
        let _ = writeln!(text, "violations: {}", self.violations.len());
        for violation in self.violations.iter().take(40) {
            let _ = writeln!(text, "  {violation}");
        }
        text
    }
}

fn flag_name(i: usize) -> String {
    format!("soak-{i:02}")
}

/// Runs a soak as `plan` says and reports what it found.
pub async fn run(plan: Plan) -> Report {
    let mut kafka = ProxiedKafka::start().await;
    let h = Harness::new(&kafka.direct, "soak", 3).await;
    let up = Listener::start().await;
    for i in 0..plan.flags {
        let flag = flag_name(i);
        h.catalog_file(
            &format!("exp-{flag}.yaml"),
            &experiment_yaml(&format!("exp-{flag}"), "1s", &h.marker(&flag), &up.address),
        );
        h.catalog_file(
            &format!("pipe-{flag}.yaml"),
            &pipeline_yaml(
                &format!("gate-{flag}"),
                Some(&flag),
                &[&format!("exp-{flag}")],
            ),
        );
    }
    let settings = Settings {
        max_in_flight: plan.max_in_flight,
        shutdown_grace: "10s",
        ..Settings::default()
    };
    // The worker bootstraps through the proxy; everything else in the config as the
    // other worker tests have it.
    let config = h.config("w", &settings);
    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(
        &config,
        text.replace(
            &format!("bootstrap_servers = \"{}\"", kafka.direct),
            &format!("bootstrap_servers = \"{}\"", kafka.proxied),
        ),
    )
    .expect("config");
    let collector = h.collect();
    let mut worker = h.spawn("w", &config);

    let began = Instant::now();
    let sent: Arc<Mutex<Vec<Sent>>> = Arc::default();
    let stop = tokio_util::sync::CancellationToken::new();
    let producer = tokio::spawn(produce(
        kafka.direct.clone(),
        h.topics.flag_changes.clone(),
        plan.clone(),
        sent.clone(),
        stop.clone(),
    ));

    let mut report = Report::default();
    let mut windows: Vec<Window> = Vec::new();
    drive(
        &plan,
        began,
        &mut kafka,
        &h,
        &config,
        &mut worker,
        &mut windows,
        &mut report,
    )
    .await;
    stop.cancel();
    let _ = producer.await;
    let cleared = Instant::now();

    // Wait for the last commands (bounded: what is missing is reported, not waited for).
    let ids: Vec<String> = sent
        .lock()
        .expect("sent")
        .iter()
        .map(|s| s.event_id.clone())
        .collect();
    while cleared.elapsed() < FINAL_WAIT && !collector.snapshot().all_commanded(&ids) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Time for a duplicate to show up, if there is one.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let out = collector.snapshot();
    let sent = sent.lock().expect("sent").clone();
    judge(&out, &sent, &windows, &h, began, &mut report);
    if let Some(status) = worker.wait_exit(Duration::ZERO).await {
        report.violations.push(format!(
            "the worker exited by itself before the end: {}",
            worker::diagnose::exit_text(status)
        ));
    }
    if !report.violations.is_empty() {
        report.diagnostics = format!(
            "{}\n--- soak broker log (last 30 lines)\n{}\n{}\n",
            h.log_tails(),
            kafka.broker_tail(30),
            keep_logs(h.dir.path())
        );
    }
    report
}

/// Copies the workers' whole logs out of the harness's temporary folder, which goes
/// when the soak ends (unless `WORKER_TEST_KEEP` is set), so a broken bound can be traced
/// afterwards; says where they went.
fn keep_logs(from: &std::path::Path) -> String {
    let to = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "soak-logs-{}",
        chrono::Utc::now().format("%Y%m%dT%H%M%S")
    ));
    let copied = std::fs::create_dir_all(&to).and_then(|()| {
        let mut copied = 0;
        for entry in std::fs::read_dir(from)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "log")
                && let Some(name) = path.file_name()
            {
                std::fs::copy(&path, to.join(name))?;
                copied += 1;
            }
        }
        Ok(copied)
    });
    match copied {
        Ok(n) => format!("--- {n} whole worker logs kept in {}", to.display()),
        Err(err) => format!(
            "--- could not keep the worker logs in {}: {err}",
            to.display()
        ),
    }
}

/// Sends `plan.events_per_second` flag changes a second, round-robin over the flags
/// (every tenth a `disable`, which runs no experiment), until `stop`. Sends are queued
/// in order without waiting for each delivery, so a broker restart delays the stream
/// but does not reorder it (idempotent producer).
async fn produce(
    servers: String,
    topic: String,
    plan: Plan,
    sent: Arc<Mutex<Vec<Sent>>>,
    stop: tokio_util::sync::CancellationToken,
) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &servers)
        .set("enable.idempotence", "true")
        .set("linger.ms", "0")
        .set("message.timeout.ms", "600000")
        .create()
        .expect("soak producer");
    let period = Duration::from_secs_f64(1.0 / plan.events_per_second);
    let mut tick = tokio::time::interval(period);
    let mut deliveries = Vec::new();
    let mut n = 0usize;
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let flag = flag_name(n % plan.flags);
        let kind = match n / plan.flags % 3 {
            _ if n % 10 == 9 => ChangeKind::Disable,
            0 => ChangeKind::Enable,
            1 => ChangeKind::Update,
            _ => ChangeKind::Enable,
        };
        let event = change(&flag, kind, None);
        let message =
            flag_change_event(&event, "/flag-service/soak").to_binary(Some(&event.flag_key()));
        let index = {
            let mut sent = sent.lock().expect("sent");
            sent.push(Sent {
                event_id: event.event_id.clone(),
                flag,
                gated: kind != ChangeKind::Disable,
                at: Instant::now(),
                landed: None,
            });
            sent.len() - 1
        };
        match producer.send_result(to_record(&topic, &message)) {
            Ok(delivery) => {
                let sent = sent.clone();
                deliveries.push(tokio::spawn(async move {
                    if let Ok(Ok(landed)) = delivery.await {
                        sent.lock().expect("sent")[index].landed =
                            Some((landed.partition, landed.offset));
                    }
                }));
            }
            Err((e, _)) => panic!("cannot queue flag change {n}: {e}"),
        }
        n += 1;
    }
    for delivery in deliveries {
        let _ = delivery.await;
    }
}

/// A network toxic on the worker's path to the broker.
fn toxic(toxic: Toxic) -> NetworkFault {
    NetworkFault {
        target: proxied_kafka::TARGET.into(),
        proxy: None,
        toxic,
        direction: Direction::Both,
        toxicity: 1.0,
    }
}

fn span(ms: u64) -> Span {
    Span(Duration::from_millis(ms))
}

/// Cycles the disruptions until `plan.duration` has passed since `began` (a step that
/// would end after it is not started), each followed by a calm spell.
#[allow(clippy::too_many_arguments)]
async fn drive(
    plan: &Plan,
    began: Instant,
    kafka: &mut ProxiedKafka,
    h: &Harness,
    config: &std::path::Path,
    worker: &mut worker::Worker,
    windows: &mut Vec<Window>,
    report: &mut Report,
) {
    enum Step {
        Toxic(&'static str, Toxic, Duration),
        KillBroker,
        KillWorker,
        Calm(Duration),
    }
    let cycle = [
        Step::Calm(Duration::from_secs(10)),
        Step::Toxic(
            "latency 200 ms ± 50 ms",
            Toxic::Latency {
                latency: span(200),
                jitter: span(50),
            },
            Duration::from_secs(20),
        ),
        Step::Calm(Duration::from_secs(10)),
        Step::KillWorker,
        Step::Calm(Duration::from_secs(15)),
        Step::Toxic(
            "bandwidth 20 kB/s",
            Toxic::Bandwidth { rate: 20_000 },
            Duration::from_secs(20),
        ),
        Step::Calm(Duration::from_secs(10)),
        Step::Toxic(
            "connection resets",
            Toxic::ResetPeer { after: span(0) },
            Duration::from_secs(3),
        ),
        Step::Calm(Duration::from_secs(10)),
        Step::Toxic(
            "blackhole 10 s",
            Toxic::Timeout { after: span(0) },
            Duration::from_secs(10),
        ),
        Step::Calm(Duration::from_secs(15)),
        Step::KillBroker,
        Step::Calm(Duration::from_secs(10)),
    ];
    let deadline = began + plan.duration;
    let mut timeline = String::new();
    let mut cycles = 0;
    'cycles: loop {
        cycles += 1;
        for step in &cycle {
            let needs = match step {
                Step::Toxic(_, _, hold) | Step::Calm(hold) => *hold,
                Step::KillBroker => Duration::from_secs(40),
                Step::KillWorker => Duration::from_secs(5),
            };
            if Instant::now() + needs > deadline {
                break 'cycles;
            }
            // A worker that died by itself is a finding; it is restarted so the soak
            // goes on.
            if let Some(status) = worker.wait_exit(Duration::ZERO).await {
                report.violations.push(format!(
                    "the worker exited by itself at {:.0} s: {}",
                    began.elapsed().as_secs_f64(),
                    worker::diagnose::exit_text(status)
                ));
                *worker = h.spawn("w", config);
            }
            let start = Instant::now();
            let kind = match step {
                Step::Calm(hold) => {
                    // After the first cycle the calm spells vary (half to one and a half
                    // times), so the kills and toxics meet the worker in other phases
                    // of its work each time.
                    let hold = if cycles == 1 {
                        *hold
                    } else {
                        hold.mul_f64(rand::random_range(0.5..1.5))
                    };
                    tokio::time::sleep(hold).await;
                    continue;
                }
                Step::Toxic(name, toxic_kind, hold) => {
                    let lease = *hold + Duration::from_secs(30);
                    let id = kafka
                        .control
                        .add_network_fault(proxied_kafka::TARGET, &toxic(toxic_kind.clone()), lease)
                        .await
                        .unwrap_or_else(|e| panic!("add fault {name}: {e}"));
                    tokio::time::sleep(*hold).await;
                    let removed = kafka
                        .control
                        .remove(id)
                        .await
                        .unwrap_or_else(|e| panic!("remove fault {name}: {e}"));
                    assert!(removed, "fault {name} was gone before its removal");
                    *name
                }
                Step::KillBroker => {
                    kafka.kill_broker();
                    let took = kafka.start_broker().await;
                    report.broker_restarts.push(took);
                    "broker SIGKILL and restart"
                }
                Step::KillWorker => {
                    worker.kill();
                    *worker = h.spawn("w", config);
                    "worker SIGKILL and restart"
                }
            };
            let end = Instant::now();
            let _ = writeln!(
                timeline,
                "  {:6.1} s - {:6.1} s  {kind}",
                (start - began).as_secs_f64(),
                (end - began).as_secs_f64()
            );
            *report.faults.entry(kind).or_default() += 1;
            windows.push(Window { kind, start, end });
        }
    }
    report.timeline = timeline;
}

/// Time within `from..to` that some window covers.
fn covered(windows: &[Window], from: Instant, to: Instant) -> Duration {
    let mut total = Duration::ZERO;
    let mut reached = from;
    for window in windows {
        let start = window.start.max(reached);
        let end = window.end.min(to);
        if end > start {
            total += end - start;
            reached = end;
        }
    }
    total
}

/// Checks every invariant against what the reader saw; fills `report`.
fn judge(
    out: &worker::Outputs,
    sent: &[Sent],
    windows: &[Window],
    h: &Harness,
    began: Instant,
    report: &mut Report,
) {
    let at = |t: Instant| t.saturating_duration_since(began).as_secs_f64();
    report.events = sent.len();
    report.gated = sent.iter().filter(|s| s.gated).count();
    report.runs_started = out
        .runs
        .iter()
        .filter(|r| r.value.status == RunStatus::Running)
        .count();
    let violations = &mut report.violations;
    for garbage in &out.garbage {
        violations.push(format!("undecodable output: {garbage}"));
    }
    // Every event exactly one command.
    let mut first_command: HashMap<&str, Instant> = HashMap::new();
    let mut commands_of: HashMap<&str, usize> = HashMap::new();
    for command in &out.commands {
        let id = command.value.causation_event_id.as_str();
        *commands_of.entry(id).or_default() += 1;
        first_command.entry(id).or_insert(command.seen);
    }
    for s in sent {
        let n = commands_of.get(s.event_id.as_str()).copied().unwrap_or(0);
        if n != 1 {
            violations.push(format!(
                "event {} ({}, sent at {:.1} s, landed {:?}): {n} commands",
                s.event_id,
                s.flag,
                at(s.at),
                s.landed
            ));
        }
    }
    // In per-flag order: a flag's commands answer its events in the order they landed.
    let mut by_flag: BTreeMap<&str, Vec<&Sent>> = BTreeMap::new();
    for s in sent {
        by_flag.entry(s.flag.as_str()).or_default().push(s);
    }
    for (flag, events) in &mut by_flag {
        events.sort_by_key(|s| s.landed.map_or((i32::MAX, i64::MAX), |l| l));
        let expected: Vec<&str> = events.iter().map(|s| s.event_id.as_str()).collect();
        // The reader's order within the flag's partition is the topic's order.
        let mut seen = Vec::new();
        for command in &out.commands {
            let id = command.value.causation_event_id.as_str();
            if expected.contains(&id) && !seen.contains(&id) {
                seen.push(id);
            }
        }
        let answered: Vec<&str> = expected
            .iter()
            .copied()
            .filter(|id| seen.contains(id))
            .collect();
        if seen != answered {
            violations.push(format!(
                "flag {flag}: commands out of order: sent {expected:?}, answered {seen:?}"
            ));
        }
    }
    // Every gated step exactly one final record: each run ends once, and each gated
    // event has one `passed` run; any other final run of it is an earlier attempt
    // cut off (`aborted`).
    let mut finals_by_run: HashMap<&str, usize> = HashMap::new();
    for run in &out.runs {
        if run.value.status != RunStatus::Running {
            *finals_by_run.entry(run.value.run_id.as_str()).or_default() += 1;
        }
    }
    for (run_id, n) in &finals_by_run {
        if *n != 1 {
            violations.push(format!("run {run_id}: {n} final records"));
        }
    }
    for s in sent.iter().filter(|s| s.gated) {
        let finals = out.final_runs_for(&s.event_id);
        let passed: Vec<_> = finals
            .iter()
            .filter(|r| r.status == RunStatus::Passed)
            .collect();
        let others: Vec<String> = finals
            .iter()
            .filter(|r| {
                r.status != RunStatus::Passed
                    && (r.status != RunStatus::Aborted
                        || passed.first().is_none_or(|p| r.attempt >= p.attempt))
            })
            .map(|r| format!("attempt {} {}", r.attempt, r.status.as_str()))
            .collect();
        if passed.len() != 1 || !others.is_empty() {
            violations.push(format!(
                "event {} ({}): {} passed final records, other finals {others:?}",
                s.event_id,
                s.flag,
                passed.len()
            ));
        }
    }
    for s in sent.iter().filter(|s| !s.gated) {
        if !out.runs_for(&s.event_id).is_empty() {
            violations.push(format!(
                "disable {} ({}) ran an experiment",
                s.event_id, s.flag
            ));
        }
    }
    // No fault of any experiment left active.
    let markers = h.active_markers();
    if !markers.is_empty() {
        violations.push(format!("experiment faults left active: {markers:?}"));
    }
    // Answered within the bound, time under faults not counted.
    let mut answers: Vec<(Duration, Duration, &Sent)> = Vec::new();
    for s in sent {
        if let Some(&seen) = first_command.get(s.event_id.as_str()) {
            let wall = seen.saturating_duration_since(s.at);
            let fault_free = wall.saturating_sub(covered(windows, s.at, seen));
            answers.push((fault_free, wall, s));
        }
    }
    answers.sort_by_key(|a| std::cmp::Reverse(a.0));
    if let Some((worst, _, s)) = answers.first() {
        report.worst_answer = *worst;
        report.worst_answer_event =
            format!("{} ({}, sent at {:.1} s)", s.event_id, s.flag, at(s.at));
    }
    report.worst_wall = answers.iter().map(|a| a.1).max().unwrap_or_default();
    for (fault_free, wall, s) in answers.iter().take_while(|a| a.0 > ANSWER_BOUND).take(20) {
        violations.push(format!(
            "event {} ({}, sent at {:.1} s): answered after {:.1} s without faults ({:.1} s in all)",
            s.event_id,
            s.flag,
            at(s.at),
            fault_free.as_secs_f64(),
            wall.as_secs_f64()
        ));
    }
    // The longest gap: no new command while some event waited.
    let mut seen_times: Vec<Instant> = first_command.values().copied().collect();
    seen_times.sort();
    let mut longest = Duration::ZERO;
    let mut previous = sent.first().map_or(began, |s| s.at);
    for &t in &seen_times {
        let waiting = sent.iter().any(|s| {
            s.at <= previous
                && first_command
                    .get(s.event_id.as_str())
                    .is_none_or(|&c| c >= t)
        });
        if waiting {
            longest = longest.max(t.saturating_duration_since(previous));
        }
        previous = previous.max(t);
    }
    report.longest_gap = longest;
}
