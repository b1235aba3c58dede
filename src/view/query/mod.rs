//! Read-only queries over the view's store, one function per page or API answer. Each
//! takes a `&Connection` (see [`crate::view::store::Store::read`]) and returns rows of
//! [`crate::view::model`].
//!
//! Rule: a query reads only through an index (see the schema in
//! [`crate::view::store`]) and returns a bounded number of rows, so its time does not
//! grow with the history stored.

mod joins;
mod runs;

pub use joins::{
    LEDGER_LIMIT, TREND_RUNS, changes_since, execution, flag_ledger, latest_execution, overview,
    pipeline, problems,
};
pub(crate) use runs::{parse_status, select_runs};
pub use runs::{run, runs, status_counts};
