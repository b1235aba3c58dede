//! Storing hold records, guard records and approval requests: the rows that say where a
//! pipeline execution waits (an approval, a wait, a freeze window), what a guard watches
//! after an `enable`, and who asked to approve or reject.
//!
//! Rules: per `hold_id` (`guard_id`) the record with the highest `(final over waiting,
//! offset)` wins, so a final status never goes back to `waiting` (`watching`) and a late
//! copy changes nothing; an execution's `waiting` column names the kind of its newest
//! hold still waiting (`NULL` when none), kept in the same transaction as the hold row;
//! a change held is `answered = 2` while it waits, so the audit does not report it.

use rusqlite::{Transaction, params};

use crate::contract::{ApprovalDecision, GuardRecord, HoldRecord};
use crate::view::decode;
use crate::view::store::{SqliteContext, ViewError, to_millis};

/// Where a record was read: topic, partition, offset.
pub(super) type At<'a> = (&'a str, i32, i64);

/// Stores `hold` (read at `at`) with sequence number `seq`; `true` when its row changed.
pub(super) fn write_hold(
    tx: &Transaction<'_>,
    hold: &HoldRecord,
    at: At<'_>,
    seq: i64,
) -> Result<bool, ViewError> {
    let changed = tx
        .prepare_cached(
            "INSERT INTO holds (hold_id, seq, is_final, kind, status, pipeline_id, \
             pipeline_execution_id, stage_id, stage_name, step_id, step_name, project, \
             environment, flag, trigger_event_id, change_kind, since, until, ended_at, reason, \
             window_name, decided_by, decided_at, comment, topic, partition, \"offset\") \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, \
             ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27) \
             ON CONFLICT (hold_id) DO UPDATE SET seq = excluded.seq, \
             is_final = excluded.is_final, kind = excluded.kind, status = excluded.status, \
             stage_id = excluded.stage_id, stage_name = excluded.stage_name, \
             step_id = excluded.step_id, step_name = excluded.step_name, \
             since = excluded.since, until = excluded.until, ended_at = excluded.ended_at, \
             reason = excluded.reason, window_name = excluded.window_name, \
             decided_by = excluded.decided_by, decided_at = excluded.decided_at, \
             comment = excluded.comment, topic = excluded.topic, \
             partition = excluded.partition, \"offset\" = excluded.\"offset\" \
             WHERE (excluded.is_final, excluded.\"offset\") > (holds.is_final, holds.\"offset\")",
        )
        .and_then(|mut s| {
            s.execute(params![
                hold.hold_id,
                seq,
                decode::hold_is_final(hold.status),
                hold.kind.as_str(),
                hold.status.as_str(),
                hold.pipeline_id,
                hold.pipeline_execution_id,
                hold.stage.as_ref().map(|s| &s.id),
                hold.stage.as_ref().map(|s| &s.name),
                hold.step.as_ref().map(|s| &s.id),
                hold.step.as_ref().map(|s| &s.name),
                hold.flag.project,
                hold.flag.environment,
                hold.flag.key,
                hold.trigger_event_id,
                hold.trigger_change_kind.as_str(),
                to_millis(hold.since),
                hold.until.map(to_millis),
                hold.ended_at.map(to_millis),
                hold.reason,
                hold.window,
                hold.decided_by,
                hold.decided_at.map(to_millis),
                hold.comment,
                at.0,
                at.1,
                at.2,
            ])
        })
        .what("upsert a hold")?;
    if changed == 0 {
        return Ok(false);
    }
    // A freeze holds a change before any run: the hold alone makes the execution known.
    super::writer::upsert_execution(
        tx,
        &hold.pipeline_execution_id,
        &hold.pipeline_id,
        &hold.trigger_event_id,
        &hold.flag,
        to_millis(hold.since),
    )?;
    tx.prepare_cached(
        "UPDATE executions SET waiting = (SELECT kind FROM holds \
         WHERE pipeline_execution_id = ?1 AND is_final = 0 ORDER BY since DESC LIMIT 1) \
         WHERE pipeline_execution_id = ?1",
    )
    .and_then(|mut s| s.execute([&hold.pipeline_execution_id]))
    .what("mark an execution waiting")?;
    // A change held is not unanswered while it waits (`answered` 2, which the audit's
    // unanswered-change check skips); once the hold ends the command is due again.
    let sql = if decode::hold_is_final(hold.status) {
        "UPDATE changes SET answered = 0 WHERE event_id = ? AND answered = 2 \
         AND NOT EXISTS (SELECT 1 FROM holds WHERE trigger_event_id = changes.event_id \
         AND is_final = 0)"
    } else {
        "UPDATE changes SET answered = 2 WHERE event_id = ? AND answered = 0"
    };
    tx.prepare_cached(sql)
        .and_then(|mut s| s.execute([&hold.trigger_event_id]))
        .what("mark a held change")?;
    Ok(true)
}

/// Stores `guard` (read at `at`) with sequence number `seq`; `true` when its row changed.
pub(super) fn write_guard(
    tx: &Transaction<'_>,
    guard: &GuardRecord,
    at: At<'_>,
    seq: i64,
) -> Result<bool, ViewError> {
    let probes = serde_json::to_string(&guard.probes).unwrap_or_else(|_| "[]".into());
    let changed = tx
        .prepare_cached(
            "INSERT INTO guards (guard_id, seq, is_final, status, pipeline_id, \
             pipeline_execution_id, project, environment, flag, trigger_event_id, \
             enable_command_id, on_failure, started_at, deadline, ended_at, probes, reason, \
             command_id, topic, partition, \"offset\") \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, \
             ?18, ?19, ?20, ?21) \
             ON CONFLICT (guard_id) DO UPDATE SET seq = excluded.seq, \
             is_final = excluded.is_final, status = excluded.status, \
             started_at = excluded.started_at, deadline = excluded.deadline, \
             ended_at = excluded.ended_at, probes = excluded.probes, reason = excluded.reason, \
             command_id = excluded.command_id, topic = excluded.topic, \
             partition = excluded.partition, \"offset\" = excluded.\"offset\" \
             WHERE (excluded.is_final, excluded.\"offset\") > (guards.is_final, guards.\"offset\")",
        )
        .and_then(|mut s| {
            s.execute(params![
                guard.guard_id,
                seq,
                decode::guard_is_final(guard.status),
                guard.status.as_str(),
                guard.pipeline_id,
                guard.pipeline_execution_id,
                guard.flag.project,
                guard.flag.environment,
                guard.flag.key,
                guard.trigger_event_id,
                guard.enable_command_id,
                guard.on_failure.as_str(),
                to_millis(guard.started_at),
                to_millis(guard.deadline),
                guard.ended_at.map(to_millis),
                probes,
                guard.reason,
                guard.command_id,
                at.0,
                at.1,
                at.2,
            ])
        })
        .what("upsert a guard")?;
    Ok(changed > 0)
}

/// An approve or reject request as stored.
pub(super) struct ApprovalAt<'a> {
    pub(super) decision: ApprovalDecision,
    pub(super) pipeline_execution_id: &'a str,
    pub(super) step: Option<&'a str>,
    pub(super) requested_by: Option<&'a str>,
    pub(super) comment: Option<&'a str>,
    /// The event's time in milliseconds (else the record's timestamp, else now).
    pub(super) at_millis: i64,
}

/// Stores an approve or reject request read at `at` with sequence number `seq`.
pub(super) fn write_approval(
    tx: &Transaction<'_>,
    approval: &ApprovalAt<'_>,
    at: At<'_>,
    seq: i64,
) -> Result<(), ViewError> {
    tx.prepare_cached(
        "INSERT OR REPLACE INTO approvals (topic, partition, \"offset\", seq, decision, \
         pipeline_execution_id, step, requested_by, comment, at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .and_then(|mut s| {
        s.execute(params![
            at.0,
            at.1,
            at.2,
            seq,
            match approval.decision {
                ApprovalDecision::Approve => "approve",
                ApprovalDecision::Reject => "reject",
            },
            approval.pipeline_execution_id,
            approval.step,
            approval.requested_by,
            approval.comment,
            approval.at_millis,
        ])
    })
    .what("store an approval request")?;
    Ok(())
}
