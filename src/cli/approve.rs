//! `chaosgate approve` and `chaosgate reject`: answer a pipeline execution waiting at an
//! `approval` step, by sending an approval request on the control topic.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use chaosgate::bus::control_request::{send_approval, waiting_for_approval};
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
    /// Send even when the flag-state topic does not show the execution waiting at an
    /// approval step (by default nothing is sent then, exit 1: a request counts only for
    /// a hold that began before it was sent).
    #[arg(long)]
    pub force: bool,
    /// Configuration file (TOML), the worker's: its [kafka] section counts.
    #[arg(long, short, env = "CHAOSGATE_CONFIG", default_value_os_t = crate::default_config())]
    pub config: PathBuf,
}

/// Checks that the execution waits at an approval step (the flag-state topic; exit 1 when
/// it does not, unless `--force`), sends the request and says where it went; exit 0 once
/// Kafka has it.
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
    let runtime = super::runtime()?;
    let state_topic = &config.kafka.topics.flag_state;
    if !args.force {
        let waits = runtime.block_on(waiting_for_approval(
            &config.kafka,
            state_topic,
            &args.execution_id,
        ));
        match (waits, &request.step) {
            (Some(None), _) => {
                eprintln!(
                    "chaosgate: execution {} is not waiting at an approval step (topic {state_topic}): nothing sent. A request counts only for a hold that began before it; --force sends it anyway.",
                    args.execution_id
                );
                return Ok(ExitCode::from(1));
            }
            (Some(Some(place)), Some(step)) if place != *step => {
                eprintln!(
                    "chaosgate: execution {} waits at step {place}, not {step}: nothing sent.",
                    args.execution_id
                );
                return Ok(ExitCode::from(1));
            }
            (None, _) => eprintln!(
                "chaosgate: warning: cannot read {state_topic} to check that the execution waits; sending anyway"
            ),
            _ => {}
        }
    }
    let (partition, offset) = runtime.block_on(send_approval(&config.kafka, &topic, &request))?;
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
