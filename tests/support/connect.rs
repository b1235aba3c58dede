//! Starts `chaosgate connect SERVICE` (this build's binary) as a user would, for the
//! bridge tests: its own configuration file and folder, its output to a log file, and
//! none of the test's own `CHAOSGATE_*` and `RUST_LOG` variables (so the configuration
//! file alone decides).

#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Stdio};

/// Spawns `chaosgate connect SERVICE --config CONFIG` in `dir`, stdout and stderr to `log`.
pub fn spawn_connect(service: &str, config: &Path, dir: &Path, log: &Path) -> Child {
    let out = std::fs::File::create(log).expect("bridge log file");
    let err = out.try_clone().expect("bridge log file");
    let mut command = Command::new(env!("CARGO_BIN_EXE_chaosgate"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("CHAOSGATE_") {
            command.env_remove(name);
        }
    }
    command
        .args(["connect", service, "--config"])
        .arg(config)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn chaosgate connect {service}: {e}"))
}
