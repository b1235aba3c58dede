//! The redelivery guard: the flag-change event ids the webhook has produced lately, so
//! the same Unleash event posted again (a retry, a replay by hand) yields one flag change.
//!
//! The rule that keeps it right: an id is claimed before its event is produced and marked
//! produced only once Kafka has it; a second delivery of the same id waits for the first
//! to finish (the claim is a per-id lock), then sees it produced (a duplicate) or, when the
//! first failed, tries itself.
//!
//! Limits: the last [`RecentEvents::capacity`] ids (oldest forgotten first), in memory
//! only, so an id is forgotten after that many newer events or a restart, and posted again
//! it is produced again. The worker's own ids derive from `event_id`, so such a second
//! record reruns the same pipeline execution ids rather than a new one.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedMutexGuard;

/// The last few thousand event ids and whether each was produced. Cheap to share behind
/// an [`Arc`].
#[derive(Debug)]
pub struct RecentEvents {
    capacity: usize,
    ids: Mutex<Ids>,
}

#[derive(Debug, Default)]
struct Ids {
    /// Each id's claim: `true` once its event is produced.
    claims: HashMap<String, Arc<tokio::sync::Mutex<bool>>>,
    /// Ids, oldest first.
    order: VecDeque<String>,
}

/// A held claim on one id: deref to whether it was produced; set it `true` once it is.
/// Dropping it lets the next delivery of the id go on.
pub type Claim = OwnedMutexGuard<bool>;

impl RecentEvents {
    /// A guard remembering the last `capacity` ids (at least 1).
    pub fn new(capacity: usize) -> RecentEvents {
        RecentEvents {
            capacity: capacity.max(1),
            ids: Mutex::default(),
        }
    }

    /// How many ids are remembered.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Claims `id`, waiting while another delivery of it holds the claim.
    pub async fn claim(&self, id: &str) -> Claim {
        let slot = {
            let mut ids = self
                .ids
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match ids.claims.get(id) {
                Some(slot) => slot.clone(),
                None => {
                    let slot = Arc::new(tokio::sync::Mutex::new(false));
                    ids.claims.insert(id.to_string(), slot.clone());
                    ids.order.push_back(id.to_string());
                    while ids.order.len() > self.capacity {
                        if let Some(oldest) = ids.order.pop_front() {
                            ids.claims.remove(&oldest);
                        }
                    }
                    slot
                }
            }
        };
        slot.lock_owned().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_second_delivery_waits_for_the_first_and_sees_it_produced() {
        let recent = Arc::new(RecentEvents::new(10));
        let mut first = recent.claim("unleash:u:1").await;
        assert!(!*first);
        let other = recent.clone();
        let second = tokio::spawn(async move { *other.claim("unleash:u:1").await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!second.is_finished(), "the second waits for the first");
        *first = true;
        drop(first);
        assert!(second.await.unwrap(), "then sees it produced");
        // Another id is not held up.
        assert!(!*recent.claim("unleash:u:2").await);
    }

    #[tokio::test]
    async fn a_failed_first_lets_the_next_try_and_old_ids_are_forgotten() {
        let recent = RecentEvents::new(2);
        drop(recent.claim("a").await); // failed: not marked
        let mut again = recent.claim("a").await;
        assert!(!*again);
        *again = true;
        drop(again);
        assert!(*recent.claim("a").await);
        for id in ["b", "c"] {
            *recent.claim(id).await = true;
        }
        assert!(!*recent.claim("a").await, "forgotten after 2 newer ids");
        assert!(*recent.claim("c").await);
    }
}
