//! Execution tasks under supervision: every task the scheduler starts is joined, and one
//! that panicked comes back as a [`Panicked`] with the ticket it was started with, so its
//! slot, its flag and its offset can be released like an interrupted run's (logged with
//! its ids) instead of leaking for good.

use std::collections::HashMap;
use std::future::Future;

use tokio::task::{Id, JoinSet};

/// A supervised task that panicked (or was cancelled), with its ticket.
#[derive(Debug)]
pub(super) struct Panicked<K> {
    pub(crate) ticket: K,
    pub(crate) message: String,
}

/// Tasks producing `T`, each with a ticket `K` naming its work.
pub(super) struct Supervisor<T, K> {
    tasks: JoinSet<T>,
    tickets: HashMap<Id, K>,
}

impl<T: Send + 'static, K> Supervisor<T, K> {
    pub(crate) fn new() -> Self {
        Supervisor {
            tasks: JoinSet::new(),
            tickets: HashMap::new(),
        }
    }

    /// Starts `task` on the runtime; `ticket` comes back if it panics.
    pub(crate) fn spawn(&mut self, ticket: K, task: impl Future<Output = T> + Send + 'static) {
        let handle = self.tasks.spawn(task);
        self.tickets.insert(handle.id(), ticket);
    }

    /// Tasks not yet joined.
    pub(crate) fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Stops watching the tasks still running; they run on unjoined.
    pub(crate) fn detach_all(&mut self) {
        self.tasks.detach_all();
        self.tickets.clear();
    }

    /// The next task to end: its output, or its ticket when it panicked. Pending forever
    /// while no task runs (for `select!`).
    pub(crate) async fn next(&mut self) -> Result<T, Panicked<K>> {
        loop {
            match self.tasks.join_next_with_id().await {
                Some(Ok((id, output))) => {
                    self.tickets.remove(&id);
                    return Ok(output);
                }
                Some(Err(error)) => {
                    let Some(ticket) = self.tickets.remove(&error.id()) else {
                        continue;
                    };
                    let message = if error.is_panic() {
                        let payload = error.into_panic();
                        payload
                            .downcast_ref::<&str>()
                            .map(|s| (*s).to_string())
                            .or_else(|| payload.downcast_ref::<String>().cloned())
                            .unwrap_or_else(|| "a panic without a message".to_string())
                    } else {
                        "cancelled".to_string()
                    };
                    return Err(Panicked { ticket, message });
                }
                None => std::future::pending::<()>().await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_task_comes_back_with_its_ticket() {
        let mut supervisor: Supervisor<u32, &str> = Supervisor::new();
        supervisor.spawn("fine", async { 1 });
        supervisor.spawn("broken", async { panic!("boom") });
        let mut outputs = Vec::new();
        let mut panicked = Vec::new();
        while supervisor.len() > 0 {
            match supervisor.next().await {
                Ok(output) => outputs.push(output),
                Err(p) => panicked.push((p.ticket, p.message)),
            }
        }
        assert_eq!(outputs, [1]);
        assert_eq!(panicked, [("broken", "boom".to_string())]);
    }
}
