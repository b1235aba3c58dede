//! Ingest problems: the records ingest could not read, newest first, a page at a time.
//!
//! Rule: pages go by sequence number (the cursor is the last one shown), so a problem
//! stored meanwhile never shifts a page.

use rusqlite::{Connection, params};

use super::runs::position_at;
use crate::view::model::{IngestProblem, Page};
use crate::view::store::{SqliteContext, ViewError, from_millis};

/// Problems per page.
const PROBLEMS_PAGE: usize = 100;

/// Ingest problems, newest first, [`PROBLEMS_PAGE`] a page; `cursor` is the `next` of the
/// page before (a sequence number).
pub fn problems(c: &Connection, cursor: Option<&str>) -> Result<Page<IngestProblem>, ViewError> {
    let before = match cursor {
        None => i64::MAX,
        Some(text) => text
            .parse::<i64>()
            .map_err(|_| ViewError::BadRequest(format!("cursor '{text}' is not a number")))?,
    };
    let mut statement = c
        .prepare_cached(
            "SELECT topic, partition, \"offset\", reason, at, seq FROM problems \
             WHERE seq < ? ORDER BY seq DESC LIMIT ?",
        )
        .what("prepare problems")?;
    let mut items = statement
        .query_map(
            params![before, i64::try_from(PROBLEMS_PAGE + 1).unwrap_or(i64::MAX)],
            |row| {
                Ok(IngestProblem {
                    position: position_at(row, 0)?,
                    reason: row.get(3)?,
                    at: from_millis(row.get(4)?),
                    seq: row.get(5)?,
                })
            },
        )
        .what("query problems")?
        .collect::<Result<Vec<_>, _>>()
        .what("read problems")?;
    let next = if items.len() > PROBLEMS_PAGE {
        items.truncate(PROBLEMS_PAGE);
        items.last().map(|p| p.seq.to_string())
    } else {
        None
    };
    Ok(Page { items, next })
}
