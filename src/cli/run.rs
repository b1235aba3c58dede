//! `chaosgate run`: the worker.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use chaosgate::config::Config;

/// Arguments of `chaosgate run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Configuration file (TOML); `CHAOSGATE_...` variables override its keys.
    #[arg(long, short, env = "CHAOSGATE_CONFIG", default_value_os_t = crate::default_config())]
    pub config: PathBuf,
}

/// Loads the configuration; the worker itself is not implemented yet.
pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let _config = Config::load(&args.config, std::env::vars())
        .with_context(|| "the configuration is not usable")?;
    eprintln!("chaosgate run: the worker is not yet implemented (configuration is valid)");
    Ok(ExitCode::from(2))
}
