//! `chaosgate approve` and `chaosgate reject`: answer a pipeline execution waiting at an
//! `approval` step, by sending an approval request on the control topic.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use chaosgate::bus::control_request::send_approval;
use chaosgate::config::Config;
use chaosgate::contract::{ApprovalDecision, ApprovalRequest};

/// Arguments of `chaosgate approve` and `chaosgate reject`.
#[derive(Debug, Args)]
pub struct ApprovalArgs {
    /// The waiting execution: `pipeline_execution_id` of its hold record (the view shows
    /// it on the execution's page and in the list of executions waiting for approval).
    pub execution_id: String,
    /// `stage-id/step-id` of the approval step; when given, the request counts only if the
    /// execution waits at that step.
    #[arg(long)]
    pub step: Option<String>,
    /// Who decides, recorded as `decided_by` (default: $USER).
    #[arg(long = "by", env = "USER")]
    pub by: Option<String>,
    /// Why, recorded with the decision.
    #[arg(long)]
    pub comment: Option<String>,
    /// Configuration file (TOML), the worker's: its [kafka] section counts.
    #[arg(long, short, env = "CHAOSGATE_CONFIG", default_value_os_t = crate::default_config())]
    pub config: PathBuf,
}

/// Sends the request and says where it went; exit 0 once Kafka has it.
pub fn run(decision: ApprovalDecision, args: ApprovalArgs) -> anyhow::Result<ExitCode> {
    let config = Config::load(&args.config, std::env::vars())
        .with_context(|| format!("cannot load {}", args.config.display()))?;
    let request = ApprovalRequest {
        decision,
        pipeline_execution_id: args.execution_id.clone(),
        step: args.step,
        requested_by: args.by,
        comment: args.comment,
    };
    let topic = config.kafka.topics.control.clone();
    let (partition, offset) =
        super::runtime()?.block_on(send_approval(&config.kafka, &topic, &request))?;
    let verb = match decision {
        ApprovalDecision::Approve => "approve",
        ApprovalDecision::Reject => "reject",
    };
    println!(
        "{verb} request for execution {} sent ({topic} partition {partition} offset {offset}).",
        args.execution_id
    );
    println!(
        "It counts if the execution waits at an approval step (see its hold record in the view, or the worker's log: \"hold ended\"); otherwise the worker logs it as ignored."
    );
    Ok(ExitCode::SUCCESS)
}
