//! The view's SQLite store: the schema, and the connections queries and ingest use.
//!
//! Rule: one writer. Ingest and retention write through [`Store::write`], one
//! transaction at a time; web handlers read through [`Store::read`], off the async
//! runtime. A file store runs in WAL mode, so readers (a small pool of connections) never
//! wait for the writer. A `:memory:` store is one connection behind a mutex: reads and
//! writes take turns, which is what an in-process demo or test needs (SQLite's shared
//! cache would make readers fail with `SQLITE_LOCKED` during a write instead).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::{Connection, OpenFlags};

/// What can go wrong in the view's store and queries.
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    /// SQLite refused an operation.
    #[error("view database {what}: {source}")]
    Sqlite {
        /// What was being done.
        what: String,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// The database file could not be removed or created.
    #[error("view database {path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A stored value no longer decodes (the file was written by another version).
    #[error("view database: stored {what} does not decode: {reason}")]
    Stored {
        /// Which value.
        what: String,
        /// Why.
        reason: String,
    },
    /// A request the queries cannot answer (a malformed cursor, a bad glob).
    #[error("{0}")]
    BadRequest(String),
    /// A blocking task panicked or was cancelled.
    #[error("view query task failed: {0}")]
    Task(String),
}

/// Adds what was being done to a SQLite error.
pub(crate) trait SqliteContext<T> {
    /// Names the operation in the error.
    fn what(self, what: &str) -> Result<T, ViewError>;
}

impl<T> SqliteContext<T> for Result<T, rusqlite::Error> {
    fn what(self, what: &str) -> Result<T, ViewError> {
        self.map_err(|source| ViewError::Sqlite {
            what: what.to_string(),
            source,
        })
    }
}

/// The schema, applied at open (idempotent). Times are milliseconds since the Unix
/// epoch, UTC. `seq` is the live-update sequence number of a row's last change. The
/// pipeline and flag indexes carry status and the sort keys, so counts by status and
/// sorted pages of one pipeline or flag read the index alone; `changes.answered` is kept
/// by ingest so the audit reads only what is still open.
///
/// Ingest cost: an index keyed by a random id (run, execution, command and event ids are
/// UUIDs) costs a page read and write per row once it outgrows the page cache, so such
/// indexes are kept few and small. A run is found by `run_key` ([`run_key`], 8 bytes,
/// with `run_id` compared after) rather than by its 36-character id; `command_steps`
/// holds only the steps of a command whose run has no record yet (a row leaves when its
/// run's record arrives); runs are found by their trigger event through
/// `executions_trigger` (one entry per execution, not per run), and an execution's
/// command through `executions.command_id`.
const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS offsets (
    topic TEXT NOT NULL, partition INTEGER NOT NULL, next_offset INTEGER NOT NULL,
    PRIMARY KEY (topic, partition)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT NOT NULL,
    run_key INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    is_final INTEGER NOT NULL,
    status TEXT NOT NULL,
    pipeline_id TEXT NOT NULL,
    pipeline_execution_id TEXT NOT NULL,
    stage_id TEXT NOT NULL, stage_name TEXT NOT NULL, stage_type TEXT NOT NULL,
    step_id TEXT NOT NULL, step_name TEXT NOT NULL,
    experiment_id TEXT NOT NULL, experiment_name TEXT NOT NULL,
    flag_project TEXT NOT NULL, flag_environment TEXT NOT NULL, flag_key TEXT NOT NULL,
    trigger_event_id TEXT NOT NULL,
    score REAL, expected REAL NOT NULL, margin REAL,
    started_at INTEGER NOT NULL, ended_at INTEGER, duration_seconds REAL,
    probes_passed INTEGER NOT NULL, probes_failed INTEGER NOT NULL,
    summary TEXT,
    faults_not_reverted INTEGER NOT NULL,
    trace_id TEXT,
    topic TEXT NOT NULL, partition INTEGER NOT NULL, "offset" INTEGER NOT NULL,
    headers TEXT NOT NULL,
    value TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS runs_key ON runs (run_key);
CREATE INDEX IF NOT EXISTS runs_started ON runs (started_at DESC, run_id DESC, status);
CREATE INDEX IF NOT EXISTS runs_pipeline ON runs (pipeline_id, started_at DESC, run_id DESC, status, margin, score, duration_seconds);
CREATE INDEX IF NOT EXISTS runs_execution ON runs (pipeline_execution_id, started_at);
CREATE INDEX IF NOT EXISTS runs_flag ON runs (flag_project, flag_environment, flag_key, started_at DESC, run_id DESC, status, margin, score, duration_seconds);
CREATE INDEX IF NOT EXISTS runs_status ON runs (status, started_at DESC, run_id DESC);
CREATE INDEX IF NOT EXISTS runs_experiment ON runs (experiment_id, started_at DESC, run_id DESC);
CREATE INDEX IF NOT EXISTS runs_seq ON runs (seq);
CREATE INDEX IF NOT EXISTS runs_not_reverted ON runs (faults_not_reverted) WHERE faults_not_reverted > 0;

CREATE TABLE IF NOT EXISTS executions (
    pipeline_execution_id TEXT PRIMARY KEY,
    pipeline_id TEXT NOT NULL,
    trigger_event_id TEXT NOT NULL,
    project TEXT NOT NULL, environment TEXT NOT NULL, flag TEXT NOT NULL,
    status TEXT NOT NULL,
    started_at INTEGER NOT NULL,
    ended_at INTEGER,
    command_id TEXT,
    waiting TEXT
);
CREATE INDEX IF NOT EXISTS executions_pipeline ON executions (pipeline_id, started_at DESC);
CREATE INDEX IF NOT EXISTS executions_started ON executions (started_at);
CREATE INDEX IF NOT EXISTS executions_trigger ON executions (trigger_event_id);

CREATE TABLE IF NOT EXISTS commands (
    command_id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    command TEXT NOT NULL, reason TEXT NOT NULL, reason_code TEXT NOT NULL,
    dry_run INTEGER NOT NULL, issued_at INTEGER NOT NULL,
    pipeline_id TEXT, pipeline_execution_id TEXT,
    causation_event_id TEXT NOT NULL,
    project TEXT NOT NULL, environment TEXT NOT NULL, flag TEXT NOT NULL,
    steps TEXT NOT NULL,
    topic TEXT NOT NULL, partition INTEGER NOT NULL, "offset" INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS commands_causation ON commands (causation_event_id);
CREATE INDEX IF NOT EXISTS commands_flag ON commands (project, environment, flag, issued_at DESC);
CREATE INDEX IF NOT EXISTS commands_seq ON commands (seq);
CREATE INDEX IF NOT EXISTS commands_issued ON commands (issued_at);

CREATE TABLE IF NOT EXISTS command_steps (
    command_id TEXT NOT NULL, run_id TEXT NOT NULL, issued_at INTEGER NOT NULL,
    found INTEGER NOT NULL,
    PRIMARY KEY (command_id, run_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS command_steps_run ON command_steps (run_id);
CREATE INDEX IF NOT EXISTS command_steps_missing ON command_steps (issued_at) WHERE found = 0;

CREATE TABLE IF NOT EXISTS changes (
    event_id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    project TEXT NOT NULL, environment TEXT NOT NULL, flag TEXT NOT NULL,
    kind TEXT NOT NULL, from_value TEXT, to_value TEXT,
    actor TEXT, pipeline_id TEXT,
    occurred_at INTEGER NOT NULL,
    answered INTEGER NOT NULL,
    topic TEXT NOT NULL, partition INTEGER NOT NULL, "offset" INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS changes_flag ON changes (project, environment, flag, occurred_at DESC);
CREATE INDEX IF NOT EXISTS changes_unanswered ON changes (occurred_at) WHERE answered = 0;
CREATE INDEX IF NOT EXISTS changes_seq ON changes (seq);

CREATE TABLE IF NOT EXISTS aborts (
    topic TEXT NOT NULL, partition INTEGER NOT NULL, "offset" INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    scope TEXT NOT NULL, id TEXT, reason TEXT, requested_by TEXT,
    at INTEGER NOT NULL,
    PRIMARY KEY (topic, partition, "offset")
);
CREATE INDEX IF NOT EXISTS aborts_id ON aborts (id);
CREATE INDEX IF NOT EXISTS aborts_at ON aborts (at);
CREATE INDEX IF NOT EXISTS aborts_seq ON aborts (seq);

CREATE TABLE IF NOT EXISTS dead_letters (
    topic TEXT NOT NULL, partition INTEGER NOT NULL, "offset" INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    event_id TEXT, error_class TEXT NOT NULL, error_message TEXT NOT NULL,
    source_topic TEXT, source_partition INTEGER, source_offset INTEGER,
    key TEXT, at INTEGER NOT NULL,
    PRIMARY KEY (topic, partition, "offset")
);
CREATE INDEX IF NOT EXISTS dead_letters_event ON dead_letters (event_id);
CREATE INDEX IF NOT EXISTS dead_letters_key ON dead_letters (key);
CREATE INDEX IF NOT EXISTS dead_letters_at ON dead_letters (at);
CREATE INDEX IF NOT EXISTS dead_letters_seq ON dead_letters (seq);

CREATE TABLE IF NOT EXISTS holds (
    hold_id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    is_final INTEGER NOT NULL,
    kind TEXT NOT NULL, status TEXT NOT NULL,
    pipeline_id TEXT NOT NULL, pipeline_execution_id TEXT NOT NULL,
    stage_id TEXT, stage_name TEXT, step_id TEXT, step_name TEXT,
    project TEXT NOT NULL, environment TEXT NOT NULL, flag TEXT NOT NULL,
    trigger_event_id TEXT NOT NULL, change_kind TEXT NOT NULL,
    since INTEGER NOT NULL, until INTEGER, ended_at INTEGER,
    reason TEXT NOT NULL, window_name TEXT,
    decided_by TEXT, decided_at INTEGER, comment TEXT,
    topic TEXT NOT NULL, partition INTEGER NOT NULL, "offset" INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS holds_execution ON holds (pipeline_execution_id, since);
CREATE INDEX IF NOT EXISTS holds_waiting ON holds (since DESC) WHERE is_final = 0;
CREATE INDEX IF NOT EXISTS holds_seq ON holds (seq);
CREATE INDEX IF NOT EXISTS holds_trigger ON holds (trigger_event_id) WHERE is_final = 0;

CREATE TABLE IF NOT EXISTS guards (
    guard_id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    is_final INTEGER NOT NULL,
    status TEXT NOT NULL,
    pipeline_id TEXT NOT NULL, pipeline_execution_id TEXT NOT NULL,
    project TEXT NOT NULL, environment TEXT NOT NULL, flag TEXT NOT NULL,
    trigger_event_id TEXT NOT NULL, enable_command_id TEXT NOT NULL, on_failure TEXT NOT NULL,
    started_at INTEGER NOT NULL, deadline INTEGER NOT NULL, ended_at INTEGER,
    probes TEXT NOT NULL, reason TEXT, command_id TEXT,
    topic TEXT NOT NULL, partition INTEGER NOT NULL, "offset" INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS guards_execution ON guards (pipeline_execution_id, started_at);
CREATE INDEX IF NOT EXISTS guards_watching ON guards (deadline) WHERE is_final = 0;
CREATE INDEX IF NOT EXISTS guards_seq ON guards (seq);

CREATE TABLE IF NOT EXISTS approvals (
    topic TEXT NOT NULL, partition INTEGER NOT NULL, "offset" INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    decision TEXT NOT NULL, pipeline_execution_id TEXT NOT NULL, step TEXT,
    requested_by TEXT, comment TEXT,
    at INTEGER NOT NULL,
    PRIMARY KEY (topic, partition, "offset")
);
CREATE INDEX IF NOT EXISTS approvals_execution ON approvals (pipeline_execution_id);
CREATE INDEX IF NOT EXISTS approvals_at ON approvals (at);

CREATE TABLE IF NOT EXISTS problems (
    topic TEXT NOT NULL, partition INTEGER NOT NULL, "offset" INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    reason TEXT NOT NULL, at INTEGER NOT NULL,
    PRIMARY KEY (topic, partition, "offset")
);
CREATE INDEX IF NOT EXISTS problems_seq ON problems (seq);
CREATE INDEX IF NOT EXISTS problems_at ON problems (at);
"#;

/// The version of [`SCHEMA`], kept in the file's `user_version`. A file of another
/// version is removed at open and rebuilt from the topics (the store is a projection:
/// the topics are the source of truth). Version 3 keys runs by `run_key`; files before it
/// have version 0 (2 was a development version with status-count triggers). Version 4
/// adds hold, guard and approval-request rows and `executions.waiting`.
const SCHEMA_VERSION: i64 = 4;

/// The key a run is indexed by: the 64-bit FNV-1a hash of its id, as SQLite's signed
/// integer. Two ids with one key are told apart by comparing `run_id`; ingest reports
/// the second as an ingest problem rather than overwrite the first.
pub(crate) fn run_key(run_id: &str) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in run_id.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    i64::from_ne_bytes(hash.to_ne_bytes())
}

/// Where the store lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A file (WAL mode), kept across restarts.
    File(PathBuf),
    /// In memory, gone at exit.
    Memory,
}

impl Location {
    /// `:memory:` is memory; anything else a file path.
    pub fn parse(text: &str) -> Location {
        if text == ":memory:" {
            Location::Memory
        } else {
            Location::File(PathBuf::from(text))
        }
    }
}

struct Inner {
    location: Location,
    /// The writer; in memory also the only reader.
    writer: Mutex<Connection>,
    /// Idle reader connections of a file store.
    readers: Mutex<Vec<Connection>>,
}

/// The view's database: cheap to clone, shared by ingest, retention and web handlers.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("location", &self.inner.location)
            .finish()
    }
}

/// The writer's page cache, in KiB (as a negative `cache_size`, SQLite's unit for KiB).
/// 64 MiB: ingest holds no batch in memory (records are written as they are read), which
/// left room under the view's 200 MB RSS bound for 16 MiB more than the 48 it had.
const WRITER_CACHE_KIB: i64 = -64 * 1024;

/// Readers kept open between queries; more are opened (and closed after) under load.
const IDLE_READERS: usize = 4;

fn open_file(path: &Path, flags: OpenFlags) -> Result<Connection, ViewError> {
    let connection =
        Connection::open_with_flags(path, flags).what(&format!("open {}", path.display()))?;
    connection
        .busy_timeout(std::time::Duration::from_secs(10))
        .what("set busy timeout")?;
    Ok(connection)
}

impl Store {
    /// Opens (creating if needed) the store at `location` and applies the schema.
    ///
    /// A file store is put in WAL mode with `synchronous=NORMAL` (a power loss may lose
    /// the last transactions, never corrupt the file; ingest then reads them again from
    /// the stored offsets, which are in the same transactions).
    ///
    /// A file written with another schema version is removed first (ingest then reads
    /// the topics again from their earliest offsets).
    pub fn open(location: &Location) -> Result<Store, ViewError> {
        let writer = match location {
            Location::Memory => Connection::open_in_memory().what("open :memory:")?,
            Location::File(path) => {
                let mut connection = open_file(path, OpenFlags::default())?;
                let (version, tables): (i64, i64) = connection
                    .query_row(
                        "SELECT (SELECT user_version FROM pragma_user_version), \
                         (SELECT count(*) FROM sqlite_schema WHERE type = 'table')",
                        [],
                        |row| Ok((row.get(0)?, row.get(1)?)),
                    )
                    .what("read the schema version")?;
                if tables > 0 && version != SCHEMA_VERSION {
                    tracing::warn!(
                        path = %path.display(),
                        version,
                        expected = SCHEMA_VERSION,
                        "view database of another schema version: removed, rebuilt from the topics"
                    );
                    drop(connection);
                    Store::remove(location)?;
                    connection = open_file(path, OpenFlags::default())?;
                }
                connection
                    .pragma_update(None, "journal_mode", "WAL")
                    .what("set WAL mode")?;
                connection
                    .pragma_update(None, "synchronous", "NORMAL")
                    .what("set synchronous")?;
                // Checkpoint every ~40 MiB of WAL (10,000 pages of 4 KiB) rather than
                // SQLite's 1,000 pages: fewer, larger copies of the pages ingest dirties.
                // (100,000 pages with the WAL cut back to 64 MiB after each checkpoint
                // wrote less but cost more CPU at 1 M runs: longer WAL-index searches on
                // every page read, and the WAL file's blocks allocated again each time.)
                connection
                    .pragma_update(None, "wal_autocheckpoint", 10_000)
                    .what("set the WAL checkpoint")?;
                connection
            }
        };
        // The writer's page cache: ingest inserts into indexes keyed by random ids; 64 MiB
        // keeps their upper levels in memory (SQLite's default is 2 MiB).
        writer
            .pragma_update(None, "cache_size", WRITER_CACHE_KIB)
            .what("set the page cache size")?;
        writer.execute_batch(SCHEMA).what("apply the schema")?;
        writer
            .pragma_update(None, "user_version", SCHEMA_VERSION)
            .what("set the schema version")?;
        Ok(Store {
            inner: Arc::new(Inner {
                location: location.clone(),
                writer: Mutex::new(writer),
                readers: Mutex::new(Vec::new()),
            }),
        })
    }

    /// Removes the file store at `location` (with its WAL and shared-memory files), for
    /// `--rebuild`. A memory location has nothing to remove.
    pub fn remove(location: &Location) -> Result<(), ViewError> {
        let Location::File(path) = location else {
            return Ok(());
        };
        for suffix in ["", "-wal", "-shm"] {
            let mut name = path.as_os_str().to_owned();
            name.push(suffix);
            let file = PathBuf::from(name);
            match std::fs::remove_file(&file) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(ViewError::File { path: file, source }),
            }
        }
        Ok(())
    }

    /// Where the store lives.
    pub(crate) fn location(&self) -> &Location {
        &self.inner.location
    }

    fn writer(&self) -> MutexGuard<'_, Connection> {
        self.inner
            .writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `f` on a reader connection, here on the calling thread (blocking).
    pub fn read_blocking<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, ViewError>,
    ) -> Result<T, ViewError> {
        match &self.inner.location {
            Location::Memory => f(&self.writer()),
            Location::File(path) => {
                let idle = self
                    .inner
                    .readers
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .pop();
                let connection = match idle {
                    Some(connection) => connection,
                    None => open_file(
                        path,
                        OpenFlags::SQLITE_OPEN_READ_ONLY
                            | OpenFlags::SQLITE_OPEN_NO_MUTEX
                            | OpenFlags::SQLITE_OPEN_URI,
                    )?,
                };
                let result = f(&connection);
                let mut readers = self
                    .inner
                    .readers
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                if readers.len() < IDLE_READERS {
                    readers.push(connection);
                }
                result
            }
        }
    }

    /// Runs `f` on a reader connection in a blocking task, so a query never holds up
    /// the async runtime.
    pub async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, ViewError> + Send + 'static,
    ) -> Result<T, ViewError> {
        self.off_runtime(move |store| store.read_blocking(f)).await
    }

    /// Runs `f` with this store in a blocking task.
    async fn off_runtime<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, ViewError> + Send + 'static,
    ) -> Result<T, ViewError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| ViewError::Task(e.to_string()))?
    }

    /// Runs `f` on the writer connection, here on the calling thread (blocking). `f`
    /// opens its own transaction.
    pub(crate) fn write_blocking<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, ViewError>,
    ) -> Result<T, ViewError> {
        f(&mut self.writer())
    }

    /// Runs `f` on the writer connection in a blocking task.
    pub(crate) async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, ViewError> + Send + 'static,
    ) -> Result<T, ViewError> {
        self.off_runtime(move |store| store.write_blocking(f)).await
    }
}

/// Milliseconds since the Unix epoch, as stored.
pub(crate) fn to_millis(at: chrono::DateTime<chrono::Utc>) -> i64 {
    at.timestamp_millis()
}

/// A stored time back as a UTC time (the epoch for a value out of range).
pub(crate) fn from_millis(millis: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_millis(millis).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_keys_are_fnv_1a_and_stable() {
        // FNV-1a 64 reference values: "" is the offset basis, "a" is 0xaf63dc4c8601ec8c.
        assert_eq!(run_key(""), 0xcbf2_9ce4_8422_2325_u64 as i64);
        assert_eq!(run_key("a"), 0xaf63_dc4c_8601_ec8c_u64 as i64);
        assert_ne!(
            run_key("fda1375e-e6d6-55c5-b568-69e603c1490c"),
            run_key("fda1375e-e6d6-55c5-b568-69e603c1490d")
        );
    }

    #[test]
    fn a_file_of_another_schema_version_is_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let location = Location::File(dir.path().join("v.db"));
        {
            let c = Connection::open(dir.path().join("v.db")).unwrap();
            c.execute_batch(
                "CREATE TABLE runs (run_id TEXT PRIMARY KEY); INSERT INTO runs VALUES ('old');",
            )
            .unwrap();
        }
        let store = Store::open(&location).unwrap();
        let (runs, version): (i64, i64) = store
            .read_blocking(|c| {
                c.query_row(
                    "SELECT (SELECT count(*) FROM runs), (SELECT user_version FROM pragma_user_version)",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .what("read")
            })
            .unwrap();
        assert_eq!((runs, version), (0, SCHEMA_VERSION));
    }

    #[test]
    fn a_file_store_is_in_wal_mode_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let location = Location::File(dir.path().join("v.db"));
        let store = Store::open(&location).unwrap();
        store
            .write_blocking(|c| {
                c.execute("INSERT INTO meta (key, value) VALUES ('x', 7)", [])
                    .what("insert")
            })
            .unwrap();
        let mode: String = store
            .read_blocking(|c| {
                c.query_row("PRAGMA journal_mode", [], |r| r.get(0))
                    .what("mode")
            })
            .unwrap();
        assert_eq!(mode, "wal");
        drop(store);
        let store = Store::open(&location).unwrap();
        let x: i64 = store
            .read_blocking(|c| {
                c.query_row("SELECT value FROM meta WHERE key = 'x'", [], |r| r.get(0))
                    .what("read")
            })
            .unwrap();
        assert_eq!(x, 7);
        drop(store);
        Store::remove(&location).unwrap();
        assert!(!dir.path().join("v.db").exists());
    }
}
