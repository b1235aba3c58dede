//! The approved configuration of `[flagd] project/environment` written to `[flagd] file`
//! (flagd's file source: `--uri file:PATH`), at start and on every change of that set.
//!
//! Rule: the file is replaced atomically, so a reader sees the old document or the new
//! one, never a part: the document goes to a temporary file in the same folder, which is
//! fsynced, renamed over the file, and the folder fsynced (the rename itself survives a
//! crash). The content is [`super::approved::Approved::document`]'s, the bytes
//! `GET /flags.json` serves.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::FlagdError;
use super::approved::{ApprovedWatch, Selection};

/// Wait before writing again after a failed write (a full disk, a folder removed).
const RETRY: Duration = Duration::from_secs(1);

/// Writes `set`'s approved configuration to `path` now and on every change, until
/// `shutdown`.
///
/// Errors: [`FlagdError::Serve`] when the first write fails (a missing folder, no
/// permission), naming the path. A later failure is logged and retried every second
/// until a write succeeds (with the newest document).
pub async fn follow(
    path: &Path,
    mut approved: ApprovedWatch,
    set: Selection,
    shutdown: CancellationToken,
) -> Result<(), FlagdError> {
    let mut written: Option<String> = None;
    loop {
        let document = approved.borrow_and_update().document(&set);
        if written.as_deref() != Some(document.json.as_str()) {
            let target = path.to_path_buf();
            let json = document.json.clone();
            let result = tokio::task::spawn_blocking(move || write_atomically(&target, &json))
                .await
                .map_err(|e| format!("the writing task failed: {e}"))
                .and_then(|r| r);
            match result {
                Ok(()) => {
                    tracing::debug!(path = %path.display(), etag = %document.etag, "approved configuration written");
                    written = Some(document.json);
                }
                Err(problem) if written.is_none() => {
                    return Err(FlagdError::Serve(format!(
                        "flagd.file {}: {problem}",
                        path.display()
                    )));
                }
                Err(problem) => {
                    tracing::warn!(path = %path.display(), problem = %problem, "cannot write the approved configuration; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(RETRY) => continue,
                        () = shutdown.cancelled() => return Ok(()),
                    }
                }
            }
        }
        tokio::select! {
            changed = approved.changed() => if changed.is_err() { return Ok(()) },
            () = shutdown.cancelled() => return Ok(()),
        }
    }
}

/// Replaces `path` with `content`: a temporary file beside it, fsynced, renamed over it,
/// then the folder fsynced. On failure the temporary file is removed and `path` is
/// unchanged; the error names the step.
pub fn write_atomically(path: &Path, content: &str) -> Result<(), String> {
    let folder = match path.parent() {
        Some(folder) if !folder.as_os_str().is_empty() => folder.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let Some(name) = path.file_name() else {
        return Err("not a file path".into());
    };
    let mut temporary = folder.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let written = (|| {
        let mut file = std::fs::File::create(&temporary)
            .map_err(|e| format!("create {}: {e}", temporary.display()))?;
        file.write_all(content.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| format!("write {}: {e}", temporary.display()))?;
        std::fs::rename(&temporary, path)
            .map_err(|e| format!("rename {} over it: {e}", temporary.display()))?;
        temporary = PathBuf::new();
        std::fs::File::open(&folder)
            .and_then(|dir| dir.sync_all())
            .map_err(|e| format!("fsync the folder {}: {e}", folder.display()))
    })();
    if written.is_err() && !temporary.as_os_str().is_empty() {
        let _ = std::fs::remove_file(&temporary);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flags.json");
        write_atomically(&path, "{\"flags\":{}}").unwrap();
        write_atomically(&path, "{\"flags\":{\"a\":1}}").unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"flags\":{\"a\":1}}"
        );
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("flags.json")]);
        let missing = dir.path().join("no/such/flags.json");
        let err = write_atomically(&missing, "{}").unwrap_err();
        assert!(err.contains("create"), "{err}");
    }
}
