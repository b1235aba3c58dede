//! Runs: the filtered, keyset-paginated list, its counts by status, and one run in full.
//!
//! Rule: every list is ordered by a total order, `(sort key, run_id)`, and a page's
//! cursor is the last row's pair, so paging never skips nor repeats a row however many
//! rows arrive meanwhile (rows inserted before the cursor show on no page already read).
//! The sort keys of the indexes in [`crate::view::store`] are `started_at` with `run_id`.

use rusqlite::types::Value;
use rusqlite::{Connection, Row, params_from_iter};

use crate::contract::{CloudEvent, KafkaMessage, RunRecord, RunStatus};
use crate::view::model::{
    Direction, KafkaPosition, MAX_PAGE, Page, RunDetail, RunFilter, RunRow, RunSort, StatusCounts,
};
use crate::view::store::{SqliteContext, ViewError, from_millis, run_key, to_millis};

/// Columns read by [`run_row`], in its order.
pub(crate) const RUN_COLUMNS: &str = "run_id, status, attempt, score, expected, margin, \
    pipeline_id, pipeline_execution_id, stage_id, stage_name, stage_type, step_id, step_name, \
    flag_project, flag_environment, flag_key, experiment_id, experiment_name, trigger_event_id, \
    started_at, ended_at, duration_seconds, probes_passed, probes_failed, summary, \
    faults_not_reverted, trace_id, topic, partition, \"offset\", seq";

/// A status as stored (`running`, ...); an unknown text reads as `error`.
pub fn parse_status(text: &str) -> RunStatus {
    match text {
        "running" => RunStatus::Running,
        "passed" => RunStatus::Passed,
        "failed" => RunStatus::Failed,
        "aborted" => RunStatus::Aborted,
        _ => RunStatus::Error,
    }
}

/// The Kafka position in columns `first` (topic), `first + 1` (partition) and
/// `first + 2` (offset) of `row`.
pub(crate) fn position_at(row: &Row<'_>, first: usize) -> rusqlite::Result<KafkaPosition> {
    Ok(KafkaPosition {
        topic: row.get(first)?,
        partition: row.get(first + 1)?,
        offset: row.get(first + 2)?,
    })
}

/// Reads a row selected with [`RUN_COLUMNS`].
pub(crate) fn run_row(row: &Row<'_>) -> rusqlite::Result<RunRow> {
    let status: String = row.get(1)?;
    Ok(RunRow {
        run_id: row.get(0)?,
        status: parse_status(&status),
        attempt: row.get(2)?,
        score: row.get(3)?,
        expected: row.get(4)?,
        margin: row.get(5)?,
        pipeline_id: row.get(6)?,
        pipeline_execution_id: row.get(7)?,
        stage_id: row.get(8)?,
        stage_name: row.get(9)?,
        stage_type: row.get(10)?,
        step_id: row.get(11)?,
        step_name: row.get(12)?,
        flag_project: row.get(13)?,
        flag_environment: row.get(14)?,
        flag_key: row.get(15)?,
        experiment_id: row.get(16)?,
        experiment_name: row.get(17)?,
        trigger_event_id: row.get(18)?,
        started_at: from_millis(row.get(19)?),
        ended_at: row.get::<_, Option<i64>>(20)?.map(from_millis),
        duration_seconds: row.get(21)?,
        probes_passed: row.get(22)?,
        probes_failed: row.get(23)?,
        summary: row.get(24)?,
        faults_not_reverted: row.get(25)?,
        trace_id: row.get(26)?,
        position: position_at(row, 27)?,
        seq: row.get(30)?,
    })
}

/// The SQL expression a sort orders by (runs without a value sort as the smallest).
fn sort_expression(sort: RunSort) -> &'static str {
    match sort {
        RunSort::Start => "started_at",
        RunSort::Score => "IFNULL(score, -1e308)",
        RunSort::Margin => "IFNULL(margin, -1e308)",
        RunSort::Duration => "IFNULL(duration_seconds, -1e308)",
    }
}

/// A page cursor: the last row's sort value and run id, for one sort and direction.
#[derive(Debug, Clone, PartialEq)]
struct Cursor {
    sort: RunSort,
    direction: Direction,
    value: Value,
    run_id: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

impl Cursor {
    fn encode(&self) -> String {
        let value = match &self.value {
            Value::Integer(i) => format!("i{i}"),
            Value::Real(r) => format!("r{r:e}"),
            _ => "n".to_string(),
        };
        let direction = match self.direction {
            Direction::Desc => "d",
            Direction::Asc => "a",
        };
        let text = format!(
            "{}\u{1f}{direction}\u{1f}{value}\u{1f}{}",
            self.sort.as_str(),
            self.run_id
        );
        hex(text.as_bytes())
    }

    fn decode(text: &str, filter: &RunFilter) -> Result<Cursor, ViewError> {
        let bad = || ViewError::BadRequest(format!("cursor '{text}' is not one this view made"));
        let bytes = unhex(text).ok_or_else(bad)?;
        let text = String::from_utf8(bytes).map_err(|_| bad())?;
        let parts: Vec<&str> = text.split('\u{1f}').collect();
        let [sort, direction, value, run_id] = parts.as_slice() else {
            return Err(bad());
        };
        let sort = RunSort::parse(sort).ok_or_else(bad)?;
        let direction = match *direction {
            "d" => Direction::Desc,
            "a" => Direction::Asc,
            _ => return Err(bad()),
        };
        if sort != filter.sort || direction != filter.direction {
            return Err(ViewError::BadRequest(
                "the cursor belongs to another sort order; start from the first page".into(),
            ));
        }
        let value = if let Some(i) = value.strip_prefix('i') {
            Value::Integer(i.parse().map_err(|_| bad())?)
        } else if let Some(r) = value.strip_prefix('r') {
            Value::Real(r.parse().map_err(|_| bad())?)
        } else {
            return Err(bad());
        };
        Ok(Cursor {
            sort,
            direction,
            value,
            run_id: (*run_id).to_string(),
        })
    }
}

/// SQL `WHERE` clauses and their parameters.
#[derive(Debug, Default)]
pub(crate) struct Clauses {
    pub(crate) sql: Vec<String>,
    pub(crate) params: Vec<Value>,
}

impl Clauses {
    fn push(&mut self, sql: impl Into<String>, params: impl IntoIterator<Item = Value>) {
        self.sql.push(sql.into());
        self.params.extend(params);
    }

    pub(crate) fn where_sql(&self) -> String {
        if self.sql.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", self.sql.join(" AND "))
        }
    }
}

fn is_glob(part: &str) -> bool {
    part.contains(['*', '?', '['])
}

/// The clauses of `filter` (without the cursor); `with_status` false leaves out the
/// status clause (for counts by status).
pub(crate) fn filter_clauses(filter: &RunFilter, with_status: bool) -> Clauses {
    let mut clauses = Clauses::default();
    if let Some(pipeline) = &filter.pipeline_id {
        clauses.push("pipeline_id = ?", [Value::Text(pipeline.clone())]);
    }
    if let Some(execution) = &filter.pipeline_execution_id {
        clauses.push(
            "pipeline_execution_id = ?",
            [Value::Text(execution.clone())],
        );
    }
    if let Some(flag) = filter.flag.as_deref().filter(|f| !f.is_empty()) {
        let columns = ["flag_project", "flag_environment", "flag_key"];
        for (column, part) in columns.iter().zip(flag.splitn(3, '/')) {
            if part.is_empty() || part == "*" {
                continue;
            }
            if is_glob(part) {
                clauses.push(format!("{column} GLOB ?"), [Value::Text(part.to_string())]);
            } else {
                clauses.push(format!("{column} = ?"), [Value::Text(part.to_string())]);
            }
        }
    }
    if with_status && !filter.statuses.is_empty() {
        let marks = vec!["?"; filter.statuses.len()].join(", ");
        clauses.push(
            format!("status IN ({marks})"),
            filter
                .statuses
                .iter()
                .map(|s| Value::Text(s.as_str().to_string())),
        );
    }
    if let Some(experiment) = &filter.experiment_id {
        clauses.push("experiment_id = ?", [Value::Text(experiment.clone())]);
    }
    if let Some(since) = filter.since {
        clauses.push("started_at >= ?", [Value::Integer(to_millis(since))]);
    }
    if let Some(until) = filter.until {
        clauses.push("started_at < ?", [Value::Integer(to_millis(until))]);
    }
    if let Some(q) = filter.q.as_deref().map(str::trim).filter(|q| !q.is_empty()) {
        let escaped = q
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_");
        let pattern = Value::Text(format!("%{escaped}%"));
        clauses.push(
            "(value LIKE ? ESCAPE '\\' OR run_id = ? OR pipeline_execution_id = ? \
             OR trigger_event_id = ?)",
            [
                pattern,
                Value::Text(q.to_string()),
                Value::Text(q.to_string()),
                Value::Text(q.to_string()),
            ],
        );
    }
    clauses
}

/// One page of runs matching `filter`, in its order, with the cursor of the next page.
///
/// Errors: [`ViewError::BadRequest`] for a cursor this view did not make or made for
/// another order.
pub fn runs(c: &Connection, filter: &RunFilter) -> Result<Page<RunRow>, ViewError> {
    let limit = filter.limit.clamp(1, MAX_PAGE);
    let mut clauses = filter_clauses(filter, true);
    let key = sort_expression(filter.sort);
    let (cmp, order) = match filter.direction {
        Direction::Desc => ("<", "DESC"),
        Direction::Asc => (">", "ASC"),
    };
    if let Some(cursor) = &filter.cursor {
        let cursor = Cursor::decode(cursor, filter)?;
        clauses.push(
            format!("({key}, run_id) {cmp} (?, ?)"),
            [cursor.value, Value::Text(cursor.run_id)],
        );
    }
    let sql = if filter.sort == RunSort::Start {
        format!(
            "SELECT {RUN_COLUMNS}, {key} FROM runs {} ORDER BY {key} {order}, run_id {order} \
             LIMIT {}",
            clauses.where_sql(),
            limit + 1
        )
    } else {
        // The page's ids first, from an index that carries the sort key (no row is read
        // for the runs that do not make the page), then their rows.
        format!(
            "SELECT {RUN_COLUMNS}, {key} FROM runs WHERE rowid IN (SELECT rowid FROM runs {} \
             ORDER BY {key} {order}, run_id {order} LIMIT {}) ORDER BY {key} {order}, run_id {order}",
            clauses.where_sql(),
            limit + 1
        )
    };
    let mut statement = c.prepare_cached(&sql).what("prepare the run list")?;
    let mut rows = statement
        .query(params_from_iter(clauses.params.iter()))
        .what("list runs")?;
    let mut items = Vec::with_capacity(limit + 1);
    let mut last_key = Value::Null;
    // The query asks for one row more than a page: its presence is what says there is a
    // next page.
    let mut more = false;
    while let Some(row) = rows.next().what("read the run list")? {
        if items.len() == limit {
            more = true;
            break;
        }
        items.push(run_row(row).what("read a run row")?);
        last_key = row.get::<_, Value>(31).what("read the sort key")?;
    }
    let next = match (more, items.last()) {
        (true, Some(last)) => Some(
            Cursor {
                sort: filter.sort,
                direction: filter.direction,
                value: last_key,
                run_id: last.run_id.clone(),
            }
            .encode(),
        ),
        _ => None,
    };
    Ok(Page { items, next })
}

/// Whether `filter` selects every run (no clause; sort, cursor and limit aside).
pub fn filter_is_empty(filter: &RunFilter) -> bool {
    filter_clauses(filter, true).sql.is_empty()
}

/// Runs matching `filter` by status, ignoring its statuses (so each count is what
/// choosing that status would list); the cursor and limit are ignored.
///
/// With no filter at all this reads the whole status index: the runs page keeps that
/// answer a few seconds (`WebState::all_counts`).
pub fn status_counts(c: &Connection, filter: &RunFilter) -> Result<StatusCounts, ViewError> {
    let clauses = filter_clauses(filter, false);
    let sql = format!(
        "SELECT status, count(*) FROM runs {} GROUP BY status",
        clauses.where_sql()
    );
    let mut statement = c.prepare_cached(&sql).what("prepare status counts")?;
    let mut rows = statement
        .query(params_from_iter(clauses.params.iter()))
        .what("count runs")?;
    let mut counts = StatusCounts::default();
    while let Some(row) = rows.next().what("read status counts")? {
        let status: String = row.get(0).what("read a status")?;
        let n: i64 = row.get(1).what("read a count")?;
        counts.add(parse_status(&status), u64::try_from(n).unwrap_or(0));
    }
    Ok(counts)
}

/// Runs selected by `where_sql` (with `params`), ordered by `order`.
pub fn select_runs(
    c: &Connection,
    where_sql: &str,
    params: &[Value],
    order: &str,
) -> Result<Vec<RunRow>, ViewError> {
    let sql = format!("SELECT {RUN_COLUMNS} FROM runs {where_sql} ORDER BY {order}");
    let mut statement = c.prepare_cached(&sql).what("prepare a run query")?;
    let rows = statement
        .query_map(params_from_iter(params.iter()), run_row)
        .what("query runs")?;
    rows.collect::<Result<Vec<_>, _>>().what("read runs")
}

/// One run in full, or `None` when the view has no record of it.
pub fn run(c: &Connection, run_id: &str) -> Result<Option<RunDetail>, ViewError> {
    let mut statement = c
        .prepare_cached(&format!(
            "SELECT {RUN_COLUMNS}, headers, value FROM runs WHERE run_key = ? AND run_id = ?"
        ))
        .what("prepare the run")?;
    let mut rows = statement
        .query(rusqlite::params![run_key(run_id), run_id])
        .what("read the run")?;
    let Some(row) = rows.next().what("read the run")? else {
        return Ok(None);
    };
    let run = run_row(row).what("read the run row")?;
    let headers: String = row.get(31).what("read headers")?;
    let value: String = row.get(32).what("read the value")?;
    drop(rows);
    let headers: Vec<(String, String)> =
        serde_json::from_str(&headers).map_err(|e| ViewError::Stored {
            what: format!("headers of run {run_id}"),
            reason: e.to_string(),
        })?;
    let message = KafkaMessage {
        key: None,
        value: Some(value.clone().into_bytes()),
        headers: headers
            .iter()
            .map(|(n, v)| (n.clone(), v.clone().into_bytes()))
            .collect(),
    };
    let record: RunRecord = CloudEvent::decode(&message)
        .map_err(|e| e.to_string())
        .and_then(|event| serde_json::from_value(event.data).map_err(|e| e.to_string()))
        .map_err(|reason| ViewError::Stored {
            what: format!("record of run {run_id}"),
            reason,
        })?;
    let attempts = select_runs(
        c,
        "WHERE pipeline_execution_id = ? AND stage_id = ? AND step_id = ? AND run_id != ?",
        &[
            Value::Text(run.pipeline_execution_id.clone()),
            Value::Text(run.stage_id.clone()),
            Value::Text(run.step_id.clone()),
            Value::Text(run.run_id.clone()),
        ],
        "started_at, attempt",
    )?;
    Ok(Some(RunDetail {
        run,
        record,
        headers,
        value,
        attempts,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_another_order() {
        let filter = RunFilter::default();
        let cursor = Cursor {
            sort: RunSort::Start,
            direction: Direction::Desc,
            value: Value::Integer(1_700_000_000_000),
            run_id: "r-1".into(),
        };
        assert_eq!(Cursor::decode(&cursor.encode(), &filter).unwrap(), cursor);
        let other = RunFilter {
            sort: RunSort::Score,
            ..RunFilter::default()
        };
        assert!(matches!(
            Cursor::decode(&cursor.encode(), &other),
            Err(ViewError::BadRequest(_))
        ));
        assert!(Cursor::decode("zz", &filter).is_err());
        let real = Cursor {
            sort: RunSort::Score,
            direction: Direction::Desc,
            value: Value::Real(-1e308),
            run_id: "r-2".into(),
        };
        assert_eq!(Cursor::decode(&real.encode(), &other).unwrap(), real);
    }
}
