//! `chaosgate fault-guard` (hidden): the guard process of one injected fault, started by
//! the runner that injects it, never by hand. It holds the fault's revert and runs it
//! unless the runner says `done`; the protocol and its rule are in the library's
//! `chaos::fault::guard` module.

use std::process::ExitCode;

use clap::Args;

/// Arguments of `chaosgate fault-guard`: none; the plan comes on standard input.
#[derive(Debug, Args)]
pub struct FaultGuardArgs {}

/// Runs the guard until `done` or its revert ends.
pub fn run(_args: FaultGuardArgs) -> anyhow::Result<ExitCode> {
    Ok(chaosgate::chaos::run_fault_guard())
}

/// The program a runner starts as fault guard: this very binary.
pub fn program() -> anyhow::Result<std::path::PathBuf> {
    anyhow::Context::context(
        std::env::current_exe(),
        "cannot find the chaosgate binary to run as fault guard",
    )
}
