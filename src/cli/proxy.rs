//! `chaosgate proxy`: a standalone fault proxy with an HTTP control API.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

/// Arguments of `chaosgate proxy`.
#[derive(Debug, Args)]
pub struct ProxyArgs {
    /// Proxy configuration file (TOML): targets and the control API address.
    #[arg(long, short)]
    pub config: PathBuf,
}

/// Not implemented yet.
pub fn run(_args: ProxyArgs) -> anyhow::Result<ExitCode> {
    eprintln!("chaosgate proxy: not yet implemented");
    Ok(ExitCode::from(2))
}
