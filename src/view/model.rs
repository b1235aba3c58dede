//! The rows the view's queries return: plain, serialisable data shaped for pages and the
//! JSON API, and the filter that selects runs.
//!
//! Rule: these types carry what was committed on the topics and nothing invented; a value
//! the records do not have (a score while running, a command not yet issued) is `None`,
//! never a default that could be mistaken for data. Times are UTC.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::contract::{RunRecord, RunStatus, StepSummary};

mod holds;

pub use holds::{ApprovalRow, GuardRow, HoldRow};

/// Where a record sits on Kafka.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KafkaPosition {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub(crate) partition: i32,
    /// Offset of the record.
    pub offset: i64,
}

/// One run as listed: the newest record of its `run_id` (see the upsert rule in
/// [`crate::view::ingest`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunRow {
    /// Deterministic run id.
    pub run_id: String,
    /// `running`, `passed`, `failed`, `aborted` or `error`.
    pub status: RunStatus,
    /// 1 for the first try of the execution; higher after a crash or rebalance.
    pub(crate) attempt: u32,
    /// Resilience score, 0-100 (absent while running or on error).
    pub score: Option<f64>,
    /// Score the step requires.
    pub(crate) expected: f64,
    /// `score - expected` (absent without a score).
    pub margin: Option<f64>,
    /// Pipeline id.
    pub pipeline_id: String,
    /// Pipeline execution id.
    pub pipeline_execution_id: String,
    /// Stage id.
    pub(crate) stage_id: String,
    /// Stage name.
    pub(crate) stage_name: String,
    /// Stage type: `feature_flag`, `deploy` or `custom`.
    pub(crate) stage_type: String,
    /// Step id.
    pub(crate) step_id: String,
    /// Step name.
    pub(crate) step_name: String,
    /// Flag project.
    pub(crate) flag_project: String,
    /// Flag environment.
    pub(crate) flag_environment: String,
    /// Flag key.
    pub(crate) flag_key: String,
    /// Experiment id.
    pub(crate) experiment_id: String,
    /// Experiment name.
    pub(crate) experiment_name: String,
    /// `event_id` of the flag-change that triggered the run.
    pub(crate) trigger_event_id: String,
    /// When the run started.
    pub(crate) started_at: DateTime<Utc>,
    /// When it ended (absent while running).
    pub(crate) ended_at: Option<DateTime<Utc>>,
    /// Run time in seconds (absent while running).
    pub(crate) duration_seconds: Option<f64>,
    /// Probes that passed.
    pub(crate) probes_passed: u32,
    /// Probes that failed.
    pub(crate) probes_failed: u32,
    /// One line: why the run ended as it did.
    pub(crate) summary: Option<String>,
    /// Faults injected and not reverted (0 on a healthy record).
    pub(crate) faults_not_reverted: u32,
    /// W3C trace id (32 hex digits): the record's `trace_id`, else its `traceparent`.
    pub trace_id: Option<String>,
    /// Where the record shown was read.
    pub position: KafkaPosition,
    /// Live-update sequence number of the last change to this row.
    pub(crate) seq: i64,
}

/// One run in full: its row, the record as decoded, the CloudEvent as received, and the
/// other attempts of the same step in the same execution.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunDetail {
    /// The row.
    pub run: RunRow,
    /// The record: faults, probes, assertion and log.
    pub record: RunRecord,
    /// The record's Kafka headers as received (values as UTF-8, lossy).
    pub headers: Vec<(String, String)>,
    /// The record's value as received (the data in binary mode, the whole event in
    /// structured mode), as UTF-8 (lossy).
    pub(crate) value: String,
    /// The other runs of this step in this execution (earlier attempts and retries), in
    /// start order.
    pub attempts: Vec<RunRow>,
}

/// A flag-change as read from `flag-changes`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChangeRow {
    /// The change's `event_id`.
    pub event_id: String,
    /// Flag project.
    pub(crate) project: String,
    /// Flag environment.
    pub(crate) environment: String,
    /// Flag key.
    pub(crate) flag: String,
    /// `enable`, `disable` or `update`.
    pub kind: String,
    /// Value before (any JSON).
    pub from: Option<serde_json::Value>,
    /// Value after (any JSON).
    pub to: Option<serde_json::Value>,
    /// Who made the change.
    pub actor: Option<String>,
    /// Pipeline the change asked for, if it named one.
    pub(crate) pipeline_id: Option<String>,
    /// When the change was made.
    pub(crate) occurred_at: DateTime<Utc>,
    /// Where it was read.
    pub(crate) position: KafkaPosition,
    /// Live-update sequence number.
    pub(crate) seq: i64,
}

/// A flag command as read from `flag-commands`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CommandRow {
    /// Command id.
    pub command_id: String,
    /// `enable`, `disable` or `revert`.
    pub command: String,
    /// Why, for people.
    pub reason: String,
    /// Why, for machines (`passed`, `failed`, `aborted`, `requested`, ...).
    pub reason_code: String,
    /// The command is advice only (dry-run pipeline).
    pub(crate) dry_run: bool,
    /// When it was issued.
    pub(crate) issued_at: DateTime<Utc>,
    /// Pipeline, if the change was gated.
    pub(crate) pipeline_id: Option<String>,
    /// Execution, if the change was gated.
    pub(crate) pipeline_execution_id: Option<String>,
    /// The flag-change it answers.
    pub(crate) causation_event_id: String,
    /// Flag project.
    pub(crate) project: String,
    /// Flag environment.
    pub(crate) environment: String,
    /// Flag key.
    pub(crate) flag: String,
    /// Per chaos step: its last run and outcome.
    pub steps: Vec<StepSummary>,
    /// Where it was read.
    pub(crate) position: KafkaPosition,
    /// Live-update sequence number.
    pub(crate) seq: i64,
}

/// A kill-switch abort request read from `chaosgate-control`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct AbortRow {
    /// `run`, `pipeline_execution` or `all`.
    pub(crate) scope: String,
    /// The run or execution id (absent for `all`).
    pub(crate) id: Option<String>,
    /// Why.
    pub(crate) reason: Option<String>,
    /// Who asked.
    pub(crate) requested_by: Option<String>,
    /// The CloudEvent `time` (else when the view read it).
    pub(crate) at: DateTime<Utc>,
    /// Where it was read.
    pub(crate) position: KafkaPosition,
    /// Live-update sequence number.
    pub(crate) seq: i64,
}

/// A dead letter read from `flag-changes-dlq`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct DeadLetterRow {
    /// The original event's id (`ce_id`, or `event_id` in its data), when readable.
    pub(crate) event_id: Option<String>,
    /// Error class (`undecodable`, `schema_violation`, ...).
    pub(crate) error_class: String,
    /// Error message.
    pub(crate) error_message: String,
    /// Where the original was read.
    pub(crate) source: Option<KafkaPosition>,
    /// The original key (`project/environment/flag` when well formed).
    pub(crate) key: Option<String>,
    /// The record's timestamp (else when the view read it).
    pub(crate) at: DateTime<Utc>,
    /// Where the dead letter was read.
    pub(crate) position: KafkaPosition,
    /// Live-update sequence number.
    pub(crate) seq: i64,
}

/// How a pipeline execution ended, from its flag command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecutionStatus {
    /// No command yet.
    Running,
    /// The command enabled the change.
    Passed,
    /// The pipeline failed.
    Failed,
    /// A run was aborted (kill switch, shutdown).
    Aborted,
}

impl ExecutionStatus {
    /// The status as written in the API.
    pub const fn as_str(self) -> &'static str {
        match self {
            ExecutionStatus::Running => "running",
            ExecutionStatus::Passed => "passed",
            ExecutionStatus::Failed => "failed",
            ExecutionStatus::Aborted => "aborted",
        }
    }

    /// Parses [`ExecutionStatus::as_str`]; anything else is `Running`.
    pub(crate) fn parse(text: &str) -> ExecutionStatus {
        match text {
            "passed" => ExecutionStatus::Passed,
            "failed" => ExecutionStatus::Failed,
            "aborted" => ExecutionStatus::Aborted,
            _ => ExecutionStatus::Running,
        }
    }
}

/// One pipeline execution in a list.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExecutionSummary {
    /// Pipeline execution id.
    pub pipeline_execution_id: String,
    /// Pipeline id.
    pub(crate) pipeline_id: String,
    /// The flag-change that started it.
    pub(crate) trigger_event_id: String,
    /// Flag project.
    pub project: String,
    /// Flag environment.
    pub environment: String,
    /// Flag key.
    pub flag: String,
    /// Outcome so far.
    pub status: ExecutionStatus,
    /// Earliest start of its runs (or its command's time when it had none).
    pub started_at: DateTime<Utc>,
    /// When its command was issued.
    pub ended_at: Option<DateTime<Utc>>,
    /// Its command's id, once issued.
    pub(crate) command_id: Option<String>,
    /// The kind of hold it waits in now (`approval`, `wait`, `freeze`), if any.
    pub waiting: Option<String>,
}

/// One step of an execution with its runs (earlier attempts and retries first; the last
/// is the one that counted).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepRuns {
    /// Step id.
    pub step_id: String,
    /// Step name.
    pub(crate) step_name: String,
    /// Its runs in start order.
    pub runs: Vec<RunRow>,
}

/// One stage of an execution, its steps in the order they ran.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StageRuns {
    /// Stage id.
    pub(crate) stage_id: String,
    /// Stage name.
    pub(crate) stage_name: String,
    /// Stage type.
    pub stage_type: String,
    /// Steps in start order.
    pub steps: Vec<StepRuns>,
}

/// One pipeline execution in full.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExecutionDetail {
    /// The execution.
    pub execution: ExecutionSummary,
    /// The flag-change that triggered it (absent when `flag-changes` no longer has it).
    pub trigger: Option<ChangeRow>,
    /// Stages in the order they ran.
    pub stages: Vec<StageRuns>,
    /// The flag command (absent while running).
    pub command: Option<CommandRow>,
    /// Kill-switch aborts naming this execution or one of its runs, or all runs while it
    /// ran.
    pub(crate) aborts: Vec<AbortRow>,
    /// Dead letters of its trigger event.
    pub(crate) dead_letters: Vec<DeadLetterRow>,
    /// Its holds (approval, wait, freeze window), in the order they began.
    pub holds: Vec<HoldRow>,
    /// The guards after its `enable` (one, or none), in the order they started.
    pub guards: Vec<GuardRow>,
    /// Approve and reject requests naming it, in the order they were sent.
    pub approvals: Vec<ApprovalRow>,
}

/// One change of a flag with what the gate did about it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LedgerEntry {
    /// The change (absent when only its command or runs were read).
    pub change: Option<ChangeRow>,
    /// The flag-change event id this entry is about.
    pub event_id: String,
    /// Runs it triggered, in start order.
    pub runs: Vec<RunRow>,
    /// The command that answered it.
    pub command: Option<CommandRow>,
    /// The command a guard issued later for it (after its `enable`), if one fired.
    pub guard_command: Option<CommandRow>,
    /// Dead letters of the change.
    pub(crate) dead_letters: Vec<DeadLetterRow>,
}

/// Every change of one flag, newest first: the page that answers "why is this flag off?".
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FlagLedger {
    /// Flag project.
    pub(crate) project: String,
    /// Flag environment.
    pub(crate) environment: String,
    /// Flag key.
    pub flag: String,
    /// Newest first (at most [`crate::view::query::LEDGER_LIMIT`]).
    pub entries: Vec<LedgerEntry>,
}

/// One point of a step's margin trend.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct MarginPoint {
    /// The execution.
    pub(crate) pipeline_execution_id: String,
    /// The run.
    pub(crate) run_id: String,
    /// When it started.
    pub(crate) started_at: DateTime<Utc>,
    /// `score - expected` (absent when the run had no score).
    pub(crate) margin: Option<f64>,
    /// The run's status.
    pub(crate) status: RunStatus,
}

/// One step's history in one pipeline.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct StepTrend {
    /// Stage id.
    pub(crate) stage_id: String,
    /// Step id.
    pub(crate) step_id: String,
    /// Step name.
    pub(crate) step_name: String,
    /// Final runs, oldest first.
    pub(crate) points: Vec<MarginPoint>,
    /// Final runs counted.
    pub(crate) runs: u32,
    /// Of which passed.
    pub(crate) passed: u32,
    /// `passed / runs` (0-1; absent without runs).
    pub(crate) pass_rate: Option<f64>,
    /// Margin of the newest run with a score.
    pub(crate) last_margin: Option<f64>,
}

/// A pipeline's trends and last executions.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PipelineSummary {
    /// Pipeline id.
    pub(crate) pipeline_id: String,
    /// Per step (in the order they ran), over its last [`crate::view::query::TREND_RUNS`]
    /// final runs.
    pub(crate) steps: Vec<StepTrend>,
    /// `(stage_id, step_id)` of the steps closest to their threshold (smallest
    /// `last_margin` first).
    pub(crate) tightest: Vec<(String, String)>,
    /// Newest first.
    pub(crate) executions: Vec<ExecutionSummary>,
    /// Its holds still waiting, oldest first.
    pub waiting: Vec<HoldRow>,
}

/// Runs by status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StatusCounts {
    /// Running.
    pub running: u64,
    /// Passed.
    pub passed: u64,
    /// Failed.
    pub failed: u64,
    /// Aborted.
    pub(crate) aborted: u64,
    /// Error.
    pub(crate) error: u64,
    /// All of them.
    pub total: u64,
}

impl StatusCounts {
    /// Adds `n` runs of `status`.
    pub(crate) fn add(&mut self, status: RunStatus, n: u64) {
        match status {
            RunStatus::Running => self.running += n,
            RunStatus::Passed => self.passed += n,
            RunStatus::Failed => self.failed += n,
            RunStatus::Aborted => self.aborted += n,
            RunStatus::Error => self.error += n,
        }
        self.total += n;
    }
}

/// A run that needs a person's look, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct AttentionRow {
    /// The run.
    pub(crate) run: RunRow,
    /// Why, in one sentence.
    pub(crate) why: String,
}

/// One pipeline's last executions as statuses, newest first.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct PipelineStrip {
    /// Pipeline id.
    pub(crate) pipeline_id: String,
    /// Its last 10 executions, newest first.
    pub(crate) executions: Vec<ExecutionSummary>,
}

/// The overview page.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Overview {
    /// Start of the range (inclusive), on runs' `started_at`.
    pub(crate) since: DateTime<Utc>,
    /// End of the range (exclusive).
    pub(crate) until: DateTime<Utc>,
    /// Runs started in the range, by status.
    pub(crate) counts: StatusCounts,
    /// Failed, error and aborted runs in the range, and runs still `running` past their
    /// step's timeout, newest first.
    pub(crate) needs_attention: Vec<AttentionRow>,
    /// Each pipeline's last 10 executions.
    pub(crate) pipelines: Vec<PipelineStrip>,
    /// Holds still waiting (any pipeline), oldest first: what waits for a person now.
    pub waiting: Vec<HoldRow>,
    /// Guards still watching, soonest deadline first.
    pub watching: Vec<GuardRow>,
}

/// The four things the integrity audit looks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// A run still `running` past its step's timeout, with no final record.
    RunningPastTimeout,
    /// A flag command whose steps name a run with no record.
    CommandRunMissing,
    /// A final record with a fault that was injected and not reverted.
    FaultNotReverted,
    /// A flag-change with no command (nor dead letter) after the configured delay.
    ChangeWithoutCommand,
}

impl FindingKind {
    /// Every kind, in the order the audit reports them.
    pub const ALL: [FindingKind; 4] = [
        FindingKind::RunningPastTimeout,
        FindingKind::CommandRunMissing,
        FindingKind::FaultNotReverted,
        FindingKind::ChangeWithoutCommand,
    ];

    /// The kind as written in the API and the metric label.
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            FindingKind::RunningPastTimeout => "running_past_timeout",
            FindingKind::CommandRunMissing => "command_run_missing",
            FindingKind::FaultNotReverted => "fault_not_reverted",
            FindingKind::ChangeWithoutCommand => "change_without_command",
        }
    }
}

/// One thing that does not add up.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditFinding {
    /// What kind of problem.
    pub kind: FindingKind,
    /// The run concerned, if any.
    pub run_id: Option<String>,
    /// The command concerned, if any.
    pub command_id: Option<String>,
    /// The flag-change concerned, if any.
    pub event_id: Option<String>,
    /// The execution concerned, if known.
    pub(crate) pipeline_execution_id: Option<String>,
    /// One sentence saying what is wrong.
    pub message: String,
}

/// A record the view could not read, skipped.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IngestProblem {
    /// Where it is.
    pub position: KafkaPosition,
    /// Why it could not be read.
    pub reason: String,
    /// When the view read it.
    pub(crate) at: DateTime<Utc>,
    /// Live-update sequence number.
    pub(crate) seq: i64,
}

/// What changed, for live updates (`query::changes_since`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ChangeKindRow {
    /// A run row was inserted or replaced.
    Run,
    /// A flag command arrived.
    Command,
    /// A flag-change arrived.
    FlagChange,
    /// An abort request arrived.
    Abort,
    /// A dead letter arrived.
    DeadLetter,
    /// A record could not be read.
    Problem,
    /// A hold row was inserted or replaced.
    Hold,
    /// A guard row was inserted or replaced.
    Guard,
    /// An approve or reject request arrived.
    Approval,
}

/// One live update: which row changed, at which sequence number.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChangeEvent {
    /// Sequence number (SSE event id).
    pub(crate) seq: i64,
    /// What kind of row.
    pub(crate) kind: ChangeKindRow,
    /// Its id: run id, command id, event id, or `topic/partition/offset`.
    pub(crate) id: String,
    /// The execution it belongs to, when known.
    pub(crate) pipeline_execution_id: Option<String>,
    /// The pipeline it belongs to, for `Hold` and `Guard` changes (a run's is in `run`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) pipeline_id: Option<String>,
    /// The run row, for `Run` changes.
    pub(crate) run: Option<RunRow>,
}

/// How runs are ordered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunSort {
    /// By `started_at`.
    #[default]
    Start,
    /// By score (runs without one last in descending order).
    Score,
    /// By `score - expected`.
    Margin,
    /// By duration.
    Duration,
}

impl RunSort {
    /// Parses `start`, `score`, `margin` or `duration`.
    pub(crate) fn parse(text: &str) -> Option<RunSort> {
        match text {
            "start" | "started_at" => Some(RunSort::Start),
            "score" => Some(RunSort::Score),
            "margin" => Some(RunSort::Margin),
            "duration" => Some(RunSort::Duration),
            _ => None,
        }
    }

    /// The name [`RunSort::parse`] reads.
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            RunSort::Start => "start",
            RunSort::Score => "score",
            RunSort::Margin => "margin",
            RunSort::Duration => "duration",
        }
    }
}

/// Sort direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Largest (newest) first.
    #[default]
    Desc,
    /// Smallest (oldest) first.
    Asc,
}

/// Which runs to list. Every field narrows; the default lists all runs, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunFilter {
    /// Exact pipeline id.
    pub pipeline_id: Option<String>,
    /// Exact pipeline execution id.
    pub pipeline_execution_id: Option<String>,
    /// `project/environment/flag`, each part a glob (`*`, `?`); missing parts match all
    /// (`shop` is `shop/*/*`).
    pub flag: Option<String>,
    /// Any of these statuses (empty: all).
    pub statuses: Vec<RunStatus>,
    /// Exact experiment id.
    pub experiment_id: Option<String>,
    /// Started at or after.
    pub since: Option<DateTime<Utc>>,
    /// Started before.
    pub until: Option<DateTime<Utc>>,
    /// Free text, case-insensitive, over the record (summary, log, probe errors, names).
    pub q: Option<String>,
    /// Order.
    pub sort: RunSort,
    /// Direction.
    pub direction: Direction,
    /// Opaque cursor from a previous [`Page::next`].
    pub cursor: Option<String>,
    /// Page size (default 50, at most 500).
    pub limit: usize,
}

impl Default for RunFilter {
    fn default() -> Self {
        RunFilter {
            pipeline_id: None,
            pipeline_execution_id: None,
            flag: None,
            statuses: Vec::new(),
            experiment_id: None,
            since: None,
            until: None,
            q: None,
            sort: RunSort::Start,
            direction: Direction::Desc,
            cursor: None,
            limit: DEFAULT_PAGE,
        }
    }
}

/// Runs per page unless asked otherwise.
pub(crate) const DEFAULT_PAGE: usize = 50;
/// Most runs per page.
pub(crate) const MAX_PAGE: usize = 500;

/// One page of a keyset-paginated list.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Page<T> {
    /// The items.
    pub items: Vec<T>,
    /// Cursor of the next page (`None` on the last).
    pub next: Option<String>,
}
