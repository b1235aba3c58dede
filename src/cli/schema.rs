//! `chaosgate schema`: prints or writes the published JSON Schemas.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;

use chaosgate::schema;

/// Arguments of `chaosgate schema`.
#[derive(Debug, Args)]
pub struct SchemaArgs {
    /// Schema to print; without it, the names are listed.
    pub name: Option<String>,
    /// Write every schema into this folder instead (as NAME.schema.json).
    #[arg(long, value_name = "DIR", conflicts_with = "name")]
    pub write: Option<PathBuf>,
}

/// Prints one schema, lists them, or writes them all.
pub fn run(args: SchemaArgs) -> anyhow::Result<ExitCode> {
    if let Some(dir) = args.write {
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        for name in schema::NAMES {
            let path = dir.join(schema::file_name(name));
            let text = schema::rendered(name).unwrap_or_default();
            std::fs::write(&path, text)
                .with_context(|| format!("cannot write {}", path.display()))?;
            println!("wrote {}", path.display());
        }
        return Ok(ExitCode::SUCCESS);
    }
    match args.name {
        None => {
            for name in schema::NAMES {
                println!("{name}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(name) => match schema::rendered(&name) {
            Some(text) => {
                print!("{text}");
                Ok(ExitCode::SUCCESS)
            }
            None => bail!(
                "no schema called '{name}' (one of: {})",
                schema::NAMES.join(", ")
            ),
        },
    }
}
