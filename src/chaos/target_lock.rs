//! Target locks: two experiments that touch the same target never overlap.
//!
//! Each target key ([`Fault::target_key`](crate::catalog::experiment::Fault::target_key))
//! has one fair (first come, first served) lock. An experiment takes all of its targets'
//! locks in sorted order, so two experiments sharing several targets cannot deadlock, and
//! holds them until its last fault is reverted. The locks are per process: runners in
//! other processes (another worker, `chaosgate experiment run`) are not seen.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::OwnedMutexGuard;

/// The set of target locks; clones share the same locks.
#[derive(Debug, Clone, Default)]
pub struct TargetLocks {
    locks: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

/// Held while an experiment runs; dropping it lets the next experiment on its targets go.
#[derive(Debug)]
pub(crate) struct TargetGuard {
    _held: Vec<OwnedMutexGuard<()>>,
}

impl TargetLocks {
    /// A new, independent set of locks (tests; a process normally uses [`Self::shared`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// The process-wide set of locks, shared by every runner in this process.
    pub(crate) fn shared() -> Self {
        static SHARED: OnceLock<TargetLocks> = OnceLock::new();
        SHARED.get_or_init(TargetLocks::new).clone()
    }

    fn lock_for(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self
            .locks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        map.entry(key.to_string()).or_default().clone()
    }

    /// Waits until every key in `keys` is free, then holds them all.
    ///
    /// Keys are deduplicated and taken in sorted order. Dropping the returned future while
    /// it waits releases whatever it had taken.
    pub(crate) async fn lock(&self, keys: &[String]) -> TargetGuard {
        let mut keys = keys.to_vec();
        keys.sort();
        keys.dedup();
        let mut held = Vec::with_capacity(keys.len());
        for key in &keys {
            held.push(self.lock_for(key).lock_owned().await);
        }
        TargetGuard { _held: held }
    }

    /// Whether `key` is held by a running experiment right now.
    pub(crate) fn is_held(&self, key: &str) -> bool {
        self.lock_for(key).try_lock().is_err()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_shared_target_waits_and_others_do_not() {
        let locks = TargetLocks::new();
        let a = locks.lock(&["proxy:db".into(), "proxy:api".into()]).await;
        assert!(locks.is_held("proxy:api") && locks.is_held("proxy:db"));
        // A disjoint target is free at once.
        let disjoint = ["proxy:x".to_string()];
        let other = tokio::time::timeout(Duration::from_millis(100), locks.lock(&disjoint));
        assert!(other.await.is_ok());
        // A shared one waits until `a` is dropped.
        let waiting = tokio::spawn({
            let locks = locks.clone();
            async move { locks.lock(&["proxy:db".into()]).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiting.is_finished());
        drop(a);
        let granted = tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .unwrap()
            .unwrap();
        assert!(locks.is_held("proxy:db"));
        drop(granted);
        assert!(!locks.is_held("proxy:db"));
    }

    #[tokio::test]
    async fn waiters_for_a_target_get_it_first_come_first_served() {
        let locks = TargetLocks::new();
        let held = locks.lock(&["command:db".into()]).await;
        let order = std::sync::Arc::new(Mutex::new(Vec::new()));
        let mut waiters = Vec::new();
        for waiter in 0..5 {
            let (locks, order) = (locks.clone(), order.clone());
            waiters.push(tokio::spawn(async move {
                let _guard = locks.lock(&["command:db".into()]).await;
                order.lock().unwrap().push(waiter);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }));
            // Each waiter queues before the next one asks.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(held);
        for waiter in waiters {
            waiter.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), [0, 1, 2, 3, 4]);
    }
}
