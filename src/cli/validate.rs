//! `chaosgate validate`: checks catalog files and reports every problem.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

/// Arguments of `chaosgate validate`.
#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Catalog folders or YAML files.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
}

/// Not implemented yet.
pub fn run(_args: ValidateArgs) -> anyhow::Result<ExitCode> {
    eprintln!("chaosgate validate: not yet implemented");
    Ok(ExitCode::from(2))
}
