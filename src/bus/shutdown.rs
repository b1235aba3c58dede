//! Graceful shutdown as one deadline: every step of the worker's stop (interrupt runs,
//! drain them, join the committer, stop the kill switch, leave the group) runs against
//! the same [`Deadline`], set once from `worker.shutdown_grace` when the stop begins.
//!
//! The rule: no step waits on Kafka without the deadline around it. A step cut off is
//! logged by name and abandoned (a blocking call goes on in a blocking thread that the
//! runtime leaves behind at exit); what it did not commit runs again after a restart.

use std::future::Future;
use std::time::{Duration, Instant};

/// The moment the grace period ends.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadline {
    at: Instant,
}

impl Deadline {
    /// A deadline `grace` from now.
    pub(crate) fn after(grace: Duration) -> Self {
        Deadline {
            at: Instant::now() + grace,
        }
    }

    /// Time left (zero once passed).
    pub(crate) fn left(&self) -> Duration {
        self.at.saturating_duration_since(Instant::now())
    }

    /// Runs `work` until it ends or the deadline passes; `None` (and a warning naming
    /// `step`) when it was cut off.
    pub(crate) async fn step<F: Future>(&self, step: &'static str, work: F) -> Option<F::Output> {
        match tokio::time::timeout(self.left(), work).await {
            Ok(output) => Some(output),
            Err(_) => {
                tracing::warn!(step, "shutdown step cut off by worker.shutdown_grace");
                None
            }
        }
    }

    /// Runs the blocking `work` on a blocking thread until it ends or the deadline passes.
    pub(crate) async fn blocking<T: Send + 'static>(
        &self,
        step: &'static str,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        match self.step(step, tokio::task::spawn_blocking(work)).await {
            Some(Ok(output)) => Some(output),
            Some(Err(error)) => {
                tracing::error!(step, %error, "shutdown step failed");
                None
            }
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn steps_share_one_deadline() {
        let deadline = Deadline::after(Duration::from_millis(300));
        let started = Instant::now();
        assert_eq!(deadline.step("quick", async { 7 }).await, Some(7));
        let stuck = deadline
            .blocking("stuck", || std::thread::sleep(Duration::from_millis(800)))
            .await;
        assert_eq!(stuck, None);
        let next = deadline
            .step("after", tokio::time::sleep(Duration::from_secs(5)))
            .await;
        assert_eq!(next, None);
        assert!(
            started.elapsed() < Duration::from_millis(700),
            "{:?}",
            started.elapsed()
        );
    }
}
