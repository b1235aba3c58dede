//! The `chaosgate` command line: the worker, and the tools around it.

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Gates feature-flag changes on chaos experiments, over Kafka.
///
/// Flag services publish flag-change events; chaosgate runs each pipeline stage's chaos
/// steps, publishes experiment-run records and emits a flag `enable` or `disable` command.
#[derive(Debug, Parser)]
#[command(name = "chaosgate", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the worker: consume flag changes, run chaos steps, emit records and commands.
    Run(cli::run::RunArgs),
    /// The embedded demo: an in-process Kafka, a demo service behind the fault proxy, the
    /// worker with the example catalog, and two flag changes (one passes, one fails).
    Demo(cli::demo::DemoArgs),
    /// Check catalog folders or files (pipelines and experiments); report every problem.
    Validate(cli::validate::ValidateArgs),
    /// Print a JSON Schema (flag-change, experiment-run, pipeline-hold, guard-run,
    /// flag-command, approved-flag, flag-state, dead-letter, abort-request,
    /// approval-request, pipeline, experiment, config), or list them.
    Schema(cli::schema::SchemaArgs),
    /// Run a standalone fault proxy beside a target, with an HTTP control API.
    Proxy(cli::proxy::ProxyArgs),
    /// The chaos experiments view: reads the committed topics into SQLite and serves
    /// pages and a JSON API; `view check` gates a CI job on a pipeline's last execution.
    View(cli::view::ViewArgs),
    /// Work with experiments on this machine.
    #[command(subcommand)]
    Experiment(ExperimentCommand),
    /// Bridges to flag services: their changes in, chaosgate's flag commands out.
    #[command(subcommand)]
    Connect(cli::connect::ConnectCommand),
    /// Approve a pipeline execution waiting at an `approval` step (sends an approval
    /// request on the control topic).
    Approve(cli::approve::ApprovalArgs),
    /// Reject a pipeline execution waiting at an `approval` step: the step fails and its
    /// failure strategy applies.
    Reject(cli::approve::ApprovalArgs),
    /// Print the version and the contract versions.
    Version,
    /// The guard of one injected fault, started by the runner (not for use by hand).
    #[command(name = "fault-guard", hide = true)]
    FaultGuard(cli::fault_guard::FaultGuardArgs),
}

#[derive(Debug, Subcommand)]
enum ExperimentCommand {
    /// Run one experiment here and report its resilience score.
    Run(cli::experiment::ExperimentRunArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A container's first process that injects faults runs the runner as its child, so
    // a SIGKILLed runner does not take its faults' guards with it.
    if matches!(
        cli.command,
        Command::Run(_) | Command::Demo(_) | Command::Experiment(_)
    ) && cli::first_process::is_first_process()
    {
        return match cli::first_process::supervise() {
            Ok(code) => code,
            Err(err) => {
                eprintln!("chaosgate: error: {err:#}");
                ExitCode::from(2)
            }
        };
    }
    let result = match cli.command {
        Command::Run(args) => cli::run::run(args),
        Command::Demo(args) => cli::demo::run(args),
        Command::Validate(args) => cli::validate::run(args),
        Command::Schema(args) => cli::schema::run(args),
        Command::Proxy(args) => cli::proxy::run(args),
        Command::View(args) => cli::view::run(args),
        Command::Experiment(ExperimentCommand::Run(args)) => cli::experiment::run(args),
        Command::FaultGuard(args) => cli::fault_guard::run(args),
        Command::Connect(command) => cli::connect::run(command),
        Command::Approve(args) => {
            cli::approve::run(chaosgate::contract::ApprovalDecision::Approve, args)
        }
        Command::Reject(args) => {
            cli::approve::run(chaosgate::contract::ApprovalDecision::Reject, args)
        }
        Command::Version => {
            println!("chaosgate {}", env!("CARGO_PKG_VERSION"));
            println!(
                "contracts: flag-change v1, experiment-run v1, flag-command v1, pipeline-hold v1, guard-run v1, approved-flag v1, flag-state v1, abort-request v1, approval-request v1, CloudEvents 1.0 (Kafka binding)"
            );
            Ok(ExitCode::SUCCESS)
        }
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("chaosgate: error: {err:#}");
            ExitCode::from(2)
        }
    }
}

/// The default config path, also settable with `CHAOSGATE_CONFIG`.
fn default_config() -> PathBuf {
    PathBuf::from("chaosgate.toml")
}
