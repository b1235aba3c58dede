//! `chaosgate experiment run`: runs one experiment on this machine.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

/// Arguments of `chaosgate experiment run`.
#[derive(Debug, Args)]
pub struct ExperimentRunArgs {
    /// An experiment file, or a catalog folder with `--experiment`.
    pub path: PathBuf,
    /// Id of the experiment to run when PATH is a folder.
    #[arg(long)]
    pub experiment: Option<String>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Not implemented yet.
pub fn run(_args: ExperimentRunArgs) -> anyhow::Result<ExitCode> {
    eprintln!("chaosgate experiment run: not yet implemented");
    Ok(ExitCode::from(2))
}
