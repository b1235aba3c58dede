//! Read-only queries over the view's store, one function per page or API answer. Each
//! takes a `&Connection` (see [`crate::view::store::Store::read`]) and returns rows of
//! [`crate::view::model`].
//!
//! Rule: a query reads only through an index (see the schema in
//! [`crate::view::store`]) and returns a bounded number of rows, so its time does not
//! grow with the history stored.

mod execution;
mod holds;
mod ledger;
mod live;
mod overview;
mod pipeline;
mod problems;
mod rows;
mod runs;

pub use execution::{execution, latest_execution};
pub use holds::{WAITING_LIMIT, waiting, watching};
pub use ledger::{LEDGER_LIMIT, flag_ledger};
pub use live::changes_since;
pub use overview::overview;
pub use pipeline::{TREND_RUNS, pipeline};
pub use problems::problems;
pub use runs::{filter_is_empty, run, runs, status_counts};
pub use runs::{parse_status, select_runs};
