//! `chaosgate validate .` with the real binary on a catalog folder of the test's own files.

use std::process::Command;

/// Writes `files` (path in the catalog, text) into a new catalog folder and runs
/// `chaosgate validate .` there; returns the exit code and the output lines.
pub fn validate_files(files: &[(&str, &str)]) -> (i32, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    let output = Command::new(env!("CARGO_BIN_EXE_chaosgate"))
        .args(["validate", "."])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    (
        output.status.code().unwrap_or(-1),
        stdout.lines().map(str::to_string).collect(),
    )
}
