//! `chaosgate validate`: checks catalog files and reports every problem.
//!
//! Problems go to standard output, one per line, sorted by file and line, followed by a
//! count; the exit code is 1 when there are any, 0 (with a one-line summary) when there
//! are none, and 2 when a path does not exist.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use clap::Args;

use chaosgate::catalog::Catalog;

/// Arguments of `chaosgate validate`.
#[derive(Debug, Args)]
#[command(
    after_help = "Exit status: 0 when the catalog is valid, 1 when it has problems, 2 when a path does not exist.\n\nExample: chaosgate validate deploy/examples"
)]
pub struct ValidateArgs {
    /// Catalog folders (searched recursively for *.yaml and *.yml) or YAML files.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
}

/// Loads the catalog and prints its problems or a summary.
pub fn run(args: ValidateArgs) -> anyhow::Result<ExitCode> {
    for path in &args.paths {
        if !path.exists() {
            bail!("{}: no such file or folder", path.display());
        }
    }
    match Catalog::load(&args.paths) {
        Ok(catalog) => {
            println!(
                "ok: {}, {} in {}",
                count(catalog.pipelines().count(), "pipeline"),
                count(catalog.experiments().count(), "experiment"),
                count(catalog.file_count(), "file"),
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(problems) => {
            for problem in &problems {
                println!("{problem}");
            }
            let files: BTreeSet<&str> = problems.iter().map(|p| p.file.as_str()).collect();
            println!(
                "{} in {}",
                count(problems.len(), "problem"),
                count(files.len(), "file")
            );
            Ok(ExitCode::from(1))
        }
    }
}

/// "1 file", "3 files".
fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}
