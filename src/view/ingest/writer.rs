//! The writer side of ingest: one batch of records, one SQLite transaction (rows,
//! ingest problems, the partitions' next offsets and the last sequence number). Records
//! are written as they are read, inside the open transaction ([`Batch`]).
//!
//! Rules: the offsets are in the same transaction as the rows, so a record is applied
//! once, never twice, never skipped; per `run_id` the record with the highest
//! `(attempt, final over running, offset)` wins; a record that does not decode becomes
//! an ingest problem, never an error. Hold, guard and approval rows are written by
//! [`super::holds`].

use std::collections::HashMap;

use chrono::Utc;
use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::holds;
use crate::contract::run_record::FlagRef;
use crate::contract::{CommandKind, KafkaMessage, ReasonCode};
use crate::view::decode::{self, Decoded, TopicRole};
use crate::view::store::{SqliteContext, ViewError, run_key, to_millis};

/// A record read, waiting for its batch to commit.
pub(super) struct Pending {
    pub(super) role: TopicRole,
    pub(super) topic: String,
    pub(super) partition: i32,
    pub(super) offset: i64,
    pub(super) timestamp: Option<i64>,
    pub(super) message: KafkaMessage,
}

/// One open ingest transaction: records are written as they are read (so a batch is
/// never held in memory), and the partitions' next offsets and the last sequence number
/// are written at [`Batch::commit`], in the same transaction.
pub(super) struct Batch<'c> {
    tx: Transaction<'c>,
    seq: i64,
    now: i64,
    records: usize,
    rows: u64,
    problems: u64,
    offsets: HashMap<(String, i32), i64>,
    /// Executions written from run records in this transaction, with the earliest start.
    started: HashMap<String, i64>,
}

/// What a committed batch did.
pub(super) struct Applied {
    /// Records read.
    pub(super) records: u64,
    /// Rows inserted or replaced.
    pub(super) rows: u64,
    /// Records stored as ingest problems.
    pub(super) problems: u64,
    /// The next offset of each partition the batch read.
    pub(super) offsets: HashMap<(String, i32), i64>,
    /// The last sequence number used.
    pub(super) seq: i64,
}

impl<'c> Batch<'c> {
    /// Begins a transaction; rows get sequence numbers after `seq`.
    pub(super) fn begin(c: &'c mut Connection, seq: i64) -> Result<Batch<'c>, ViewError> {
        Ok(Batch {
            tx: c.transaction().what("begin an ingest transaction")?,
            seq,
            now: to_millis(Utc::now()),
            records: 0,
            rows: 0,
            problems: 0,
            offsets: HashMap::new(),
            started: HashMap::new(),
        })
    }

    /// Records written so far.
    pub(super) fn records(&self) -> usize {
        self.records
    }

    /// Writes one record: its row, or an ingest problem.
    pub(super) fn apply(&mut self, pending: &Pending) -> Result<(), ViewError> {
        let position = (&pending.topic, pending.partition, pending.offset);
        let written = match decode::decode(pending.role, &pending.message) {
            Ok(decoded) => write_row(
                &self.tx,
                decoded,
                pending,
                self.seq + 1,
                self.now,
                &mut self.started,
            )?,
            Err(reason) => Written::Problem(reason),
        };
        match written {
            Written::Row => {
                self.seq += 1;
                self.rows += 1;
            }
            Written::Unchanged => {}
            Written::Problem(reason) => {
                self.seq += 1;
                self.problems += 1;
                self.tx
                    .prepare_cached(
                        "INSERT OR REPLACE INTO problems (topic, partition, \"offset\", seq, reason, at) \
                         VALUES (?, ?, ?, ?, ?, ?)",
                    )
                    .and_then(|mut s| {
                        s.execute(params![
                            position.0, position.1, position.2, self.seq, reason, self.now
                        ])
                    })
                    .what("store an ingest problem")?;
            }
        }
        self.records += 1;
        self.offsets.insert(
            (pending.topic.clone(), pending.partition),
            pending.offset + 1,
        );
        Ok(())
    }

    /// Writes the next offsets and the last sequence number, and commits.
    pub(super) fn commit(self) -> Result<Applied, ViewError> {
        {
            let mut statement = self
                .tx
                .prepare_cached(
                    "INSERT INTO offsets (topic, partition, next_offset) VALUES (?, ?, ?) \
                     ON CONFLICT (topic, partition) DO UPDATE SET next_offset = excluded.next_offset",
                )
                .what("prepare offsets")?;
            for ((topic, partition), next) in &self.offsets {
                statement
                    .execute(params![topic, partition, next])
                    .what("store an offset")?;
            }
        }
        self.tx
            .execute(
                "INSERT INTO meta (key, value) VALUES ('seq', ?) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [self.seq],
            )
            .what("store the sequence number")?;
        self.tx.commit().what("commit an ingest transaction")?;
        Ok(Applied {
            records: self.records as u64,
            rows: self.rows,
            problems: self.problems,
            offsets: self.offsets,
            seq: self.seq,
        })
    }
}

fn headers_json(message: &KafkaMessage) -> String {
    let headers: Vec<(String, String)> = message
        .headers
        .iter()
        .map(|(n, v)| (n.clone(), String::from_utf8_lossy(v).into_owned()))
        .collect();
    serde_json::to_string(&headers).unwrap_or_else(|_| "[]".into())
}

fn execution_status(reason: ReasonCode, command: CommandKind) -> &'static str {
    match reason {
        ReasonCode::Passed => "passed",
        ReasonCode::Failed => "failed",
        ReasonCode::Aborted => "aborted",
        _ if command == CommandKind::Enable => "passed",
        _ => "failed",
    }
}

/// Makes execution `id` known (`running` until its command), or moves its start earlier
/// to `started` (ms) when this record began before what was stored.
pub(super) fn upsert_execution(
    tx: &Transaction<'_>,
    id: &str,
    pipeline_id: &str,
    trigger_event_id: &str,
    flag: &FlagRef,
    started: i64,
) -> Result<(), ViewError> {
    tx.prepare_cached(
        "INSERT INTO executions (pipeline_execution_id, pipeline_id, trigger_event_id, \
         project, environment, flag, status, started_at) \
         VALUES (?, ?, ?, ?, ?, ?, 'running', ?) \
         ON CONFLICT (pipeline_execution_id) DO UPDATE \
         SET started_at = min(started_at, excluded.started_at)",
    )
    .and_then(|mut s| {
        s.execute(params![
            id,
            pipeline_id,
            trigger_event_id,
            flag.project,
            flag.environment,
            flag.key,
            started,
        ])
    })
    .what("upsert an execution")?;
    Ok(())
}

/// What writing one record did.
enum Written {
    /// A row was inserted or replaced.
    Row,
    /// Nothing changed: a late `running` record after a final one, say.
    Unchanged,
    /// The record cannot be stored, for this reason (an ingest problem).
    Problem(String),
}

/// Writes one decoded record with sequence number `seq`.
///
/// `started`: the executions this transaction already wrote from a run record, with the
/// earliest start it gave each; a run of one of them starting no earlier needs no
/// execution upsert (the four runs of an execution usually come in one transaction).
fn write_row(
    tx: &Transaction<'_>,
    decoded: Decoded,
    pending: &Pending,
    seq: i64,
    now: i64,
    started: &mut HashMap<String, i64>,
) -> Result<Written, ViewError> {
    let (topic, partition, offset) = (&pending.topic, pending.partition, pending.offset);
    match decoded {
        Decoded::Run(run) => {
            let r = &run.record;
            let value = String::from_utf8_lossy(pending.message.value.as_deref().unwrap_or(&[]))
                .into_owned();
            let key = run_key(&r.run_id);
            let not_reverted = r
                .faults
                .iter()
                .filter(|f| !f.reverted && f.started_at.is_some())
                .count() as i64;
            let changed = tx
                .prepare_cached(
                    "INSERT INTO runs (run_id, run_key, seq, attempt, is_final, status, pipeline_id, \
                     pipeline_execution_id, stage_id, stage_name, stage_type, step_id, step_name, \
                     experiment_id, experiment_name, flag_project, flag_environment, flag_key, \
                     trigger_event_id, score, expected, margin, started_at, ended_at, \
                     duration_seconds, probes_passed, probes_failed, summary, faults_not_reverted, \
                     trace_id, topic, partition, \"offset\", headers, value) \
                     VALUES (?1, ?35, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, \
                     ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28, ?29, ?30, ?31, \
                     ?32, ?33, ?34) \
                     ON CONFLICT (run_key) DO UPDATE SET seq = excluded.seq, \
                     attempt = excluded.attempt, is_final = excluded.is_final, \
                     status = excluded.status, pipeline_id = excluded.pipeline_id, \
                     pipeline_execution_id = excluded.pipeline_execution_id, \
                     stage_id = excluded.stage_id, stage_name = excluded.stage_name, \
                     stage_type = excluded.stage_type, step_id = excluded.step_id, \
                     step_name = excluded.step_name, experiment_id = excluded.experiment_id, \
                     experiment_name = excluded.experiment_name, \
                     flag_project = excluded.flag_project, \
                     flag_environment = excluded.flag_environment, flag_key = excluded.flag_key, \
                     trigger_event_id = excluded.trigger_event_id, score = excluded.score, \
                     expected = excluded.expected, margin = excluded.margin, \
                     started_at = excluded.started_at, ended_at = excluded.ended_at, \
                     duration_seconds = excluded.duration_seconds, \
                     probes_passed = excluded.probes_passed, probes_failed = excluded.probes_failed, \
                     summary = excluded.summary, faults_not_reverted = excluded.faults_not_reverted, \
                     trace_id = excluded.trace_id, topic = excluded.topic, \
                     partition = excluded.partition, \"offset\" = excluded.\"offset\", \
                     headers = excluded.headers, value = excluded.value \
                     WHERE runs.run_id = excluded.run_id \
                     AND (excluded.attempt, excluded.is_final, excluded.\"offset\") > \
                     (runs.attempt, runs.is_final, runs.\"offset\")",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        r.run_id,
                        seq,
                        r.attempt,
                        decode::is_final(r.status),
                        r.status.as_str(),
                        r.pipeline_id,
                        r.pipeline_execution_id,
                        r.stage.id,
                        r.stage.name,
                        r.stage.stage_type,
                        r.step.id,
                        r.step.name,
                        r.experiment.id,
                        r.experiment.name,
                        r.flag.project,
                        r.flag.environment,
                        r.flag.key,
                        r.trigger_event_id,
                        r.resilience_score,
                        r.expected_resilience_score,
                        r.resilience_score.map(|s| s - r.expected_resilience_score),
                        to_millis(r.started_at),
                        r.ended_at.map(to_millis),
                        r.duration_seconds,
                        r.probes_passed,
                        r.probes_failed,
                        r.summary,
                        not_reverted,
                        run.trace_id,
                        topic,
                        partition,
                        offset,
                        headers_json(&pending.message),
                        value,
                        key,
                    ])
                })
                .what("upsert a run")?;
            if changed > 0 {
                tx.prepare_cached("DELETE FROM command_steps WHERE run_id = ?")
                    .and_then(|mut s| s.execute([&r.run_id]))
                    .what("remove a command step found")?;
            } else {
                let stored: Option<String> = tx
                    .prepare_cached("SELECT run_id FROM runs WHERE run_key = ?")
                    .and_then(|mut s| s.query_row([key], |row| row.get(0)).optional())
                    .what("read a run by its key")?;
                if let Some(other) = stored.filter(|other| other != &r.run_id) {
                    return Ok(Written::Problem(format!(
                        "run {} has the run_key of the stored run {other} (a 64-bit hash \
                         collision); not stored",
                        r.run_id
                    )));
                }
            }
            let run_started = to_millis(r.started_at);
            if started
                .get(&r.pipeline_execution_id)
                .is_some_and(|earliest| *earliest <= run_started)
            {
                return Ok(if changed > 0 {
                    Written::Row
                } else {
                    Written::Unchanged
                });
            }
            started.insert(r.pipeline_execution_id.clone(), run_started);
            upsert_execution(
                tx,
                &r.pipeline_execution_id,
                &r.pipeline_id,
                &r.trigger_event_id,
                &r.flag,
                run_started,
            )?;
            Ok(if changed > 0 {
                Written::Row
            } else {
                Written::Unchanged
            })
        }
        Decoded::Command(command) => {
            let steps = serde_json::to_string(&command.steps).unwrap_or_else(|_| "[]".into());
            let issued = to_millis(command.issued_at);
            tx.prepare_cached(
                "INSERT OR REPLACE INTO commands (command_id, seq, command, reason, reason_code, \
                 dry_run, issued_at, pipeline_id, pipeline_execution_id, causation_event_id, \
                 project, environment, flag, steps, topic, partition, \"offset\") \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    command.command_id,
                    seq,
                    command.command.as_str(),
                    command.reason,
                    serde_json::to_value(command.reason_code)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default(),
                    command.dry_run,
                    issued,
                    command.pipeline_id,
                    command.pipeline_execution_id,
                    command.causation_event_id,
                    command.project,
                    command.environment,
                    command.flag,
                    steps,
                    topic,
                    partition,
                    offset,
                ])
            })
            .what("store a command")?;
            {
                // A step is open while no run has its key: the index alone answers (the
                // row itself, a random page of the large runs table, is not read). Two
                // run ids with one 64-bit key would hide one open step from the audit.
                let mut statement = tx
                    .prepare_cached(
                        "INSERT OR IGNORE INTO command_steps (command_id, run_id, issued_at, found) \
                         SELECT ?1, ?2, ?3, 0 WHERE NOT EXISTS \
                         (SELECT 1 FROM runs WHERE run_key = ?4)",
                    )
                    .what("prepare command steps")?;
                for step in &command.steps {
                    statement
                        .execute(params![
                            command.command_id,
                            step.run_id,
                            issued,
                            run_key(&step.run_id)
                        ])
                        .what("store a command step")?;
                }
            }
            // A guard's command follows the execution's own (the enable it guards): the
            // guard row names it; the execution keeps its command.
            if let (Some(execution), Some(pipeline), false) = (
                &command.pipeline_execution_id,
                &command.pipeline_id,
                command.reason_code == ReasonCode::GuardFired,
            ) {
                tx.prepare_cached(
                    "INSERT INTO executions (pipeline_execution_id, pipeline_id, trigger_event_id, \
                     project, environment, flag, status, started_at, ended_at, command_id) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8, ?9) \
                     ON CONFLICT (pipeline_execution_id) DO UPDATE SET status = excluded.status, \
                     ended_at = excluded.ended_at, command_id = excluded.command_id",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        execution,
                        pipeline,
                        command.causation_event_id,
                        command.project,
                        command.environment,
                        command.flag,
                        execution_status(command.reason_code, command.command),
                        issued,
                        command.command_id,
                    ])
                })
                .what("finish an execution")?;
            }
            tx.prepare_cached("UPDATE changes SET answered = 1 WHERE event_id = ?")
                .and_then(|mut s| s.execute([&command.causation_event_id]))
                .what("mark a change answered")?;
            Ok(Written::Row)
        }
        Decoded::Change(change) => {
            let json = |v: &Option<serde_json::Value>| v.as_ref().map(|v| v.to_string());
            tx.prepare_cached(
                "INSERT OR REPLACE INTO changes (event_id, seq, project, environment, flag, kind, \
                 from_value, to_value, actor, pipeline_id, occurred_at, answered, topic, \
                 partition, \"offset\") \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, \
                 CASE WHEN EXISTS (SELECT 1 FROM commands WHERE causation_event_id = ?1) \
                 OR EXISTS (SELECT 1 FROM dead_letters WHERE event_id = ?1) THEN 1 \
                 WHEN EXISTS (SELECT 1 FROM holds WHERE trigger_event_id = ?1 AND is_final = 0) \
                 THEN 2 ELSE 0 END, ?12, ?13, ?14)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    change.event_id,
                    seq,
                    change.project,
                    change.environment,
                    change.flag,
                    change.change.kind.as_str(),
                    json(&change.change.from),
                    json(&change.change.to),
                    change.actor,
                    change.pipeline_id,
                    to_millis(change.occurred_at),
                    topic,
                    partition,
                    offset,
                ])
            })
            .what("store a flag-change")?;
            Ok(Written::Row)
        }
        Decoded::DeadLetter(letter) => {
            let (source_topic, source_partition, source_offset) = match &letter.source {
                Some((t, p, o)) => (Some(t.clone()), Some(*p), Some(*o)),
                None => (None, None, None),
            };
            tx.prepare_cached(
                "INSERT OR REPLACE INTO dead_letters (topic, partition, \"offset\", seq, event_id, \
                 error_class, error_message, source_topic, source_partition, source_offset, key, \
                 at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    topic,
                    partition,
                    offset,
                    seq,
                    letter.event_id,
                    letter.error_class,
                    letter.error_message,
                    source_topic,
                    source_partition,
                    source_offset,
                    letter.key,
                    pending.timestamp.unwrap_or(now),
                ])
            })
            .what("store a dead letter")?;
            if let Some(event_id) = &letter.event_id {
                tx.prepare_cached("UPDATE changes SET answered = 1 WHERE event_id = ?")
                    .and_then(|mut s| s.execute([event_id]))
                    .what("mark a change answered")?;
            }
            Ok(Written::Row)
        }
        Decoded::Abort(abort, time) => {
            tx.prepare_cached(
                "INSERT OR REPLACE INTO aborts (topic, partition, \"offset\", seq, scope, id, \
                 reason, requested_by, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    topic,
                    partition,
                    offset,
                    seq,
                    decode::scope_name(abort.scope),
                    abort.id,
                    abort.reason,
                    abort.requested_by,
                    time.map(to_millis).or(pending.timestamp).unwrap_or(now),
                ])
            })
            .what("store an abort request")?;
            Ok(Written::Row)
        }
        Decoded::Hold(hold) => {
            let changed = holds::write_hold(tx, &hold, (topic, partition, offset), seq)?;
            Ok(if changed {
                Written::Row
            } else {
                Written::Unchanged
            })
        }
        Decoded::Guard(guard) => {
            let changed = holds::write_guard(tx, &guard, (topic, partition, offset), seq)?;
            Ok(if changed {
                Written::Row
            } else {
                Written::Unchanged
            })
        }
        Decoded::Approval(approval, time) => {
            let request = holds::ApprovalAt {
                decision: approval.decision,
                pipeline_execution_id: &approval.pipeline_execution_id,
                step: approval.step.as_deref(),
                requested_by: approval.requested_by.as_deref(),
                comment: approval.comment.as_deref(),
                at_millis: time.map(to_millis).or(pending.timestamp).unwrap_or(now),
            };
            holds::write_approval(tx, &request, (topic, partition, offset), seq)?;
            Ok(Written::Row)
        }
    }
}
