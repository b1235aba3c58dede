//! Per-flag order: the events of one flag run one after another, in offset order, while
//! different flags run side by side.
//!
//! Every valid event of a flag, `disable` included, waits for the earlier events of that
//! flag: a `disable` is never gated by chaos, but it must not overtake an earlier `enable`
//! still being gated, or the older command would land last and win.

use std::collections::{HashMap, HashSet, VecDeque};

/// Events waiting for their flag, and the flags that have one in progress.
#[derive(Debug)]
pub(crate) struct FlagQueues<T> {
    busy: HashSet<String>,
    waiting: HashMap<String, VecDeque<T>>,
    waiting_count: usize,
}

impl<T> Default for FlagQueues<T> {
    fn default() -> Self {
        FlagQueues {
            busy: HashSet::new(),
            waiting: HashMap::new(),
            waiting_count: 0,
        }
    }
}

impl<T> FlagQueues<T> {
    /// Takes `event` for `flag`: returns it back when the flag is free (it is now busy),
    /// or queues it behind the flag's earlier events.
    pub(crate) fn admit(&mut self, flag: &str, event: T) -> Option<T> {
        if self.busy.insert(flag.to_string()) {
            return Some(event);
        }
        self.waiting
            .entry(flag.to_string())
            .or_default()
            .push_back(event);
        self.waiting_count += 1;
        None
    }

    /// The flag's event is done: returns its next event (the flag stays busy), or frees it.
    pub(crate) fn release(&mut self, flag: &str) -> Option<T> {
        if let Some(queue) = self.waiting.get_mut(flag)
            && let Some(next) = queue.pop_front()
        {
            if queue.is_empty() {
                self.waiting.remove(flag);
            }
            self.waiting_count -= 1;
            return Some(next);
        }
        self.busy.remove(flag);
        None
    }

    /// Drops every waiting event that `drop` selects (a revoked partition's events).
    /// The flags stay busy until their running event is released.
    pub(crate) fn discard(&mut self, mut drop: impl FnMut(&T) -> bool) {
        for queue in self.waiting.values_mut() {
            let before = queue.len();
            queue.retain(|event| !drop(event));
            self.waiting_count -= before - queue.len();
        }
        self.waiting.retain(|_, queue| !queue.is_empty());
    }

    /// Events waiting behind a busy flag.
    pub(crate) fn waiting(&self) -> usize {
        self.waiting_count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_flag_in_order_others_side_by_side() {
        let mut queues = FlagQueues::default();
        assert_eq!(queues.admit("a", 1), Some(1));
        assert_eq!(queues.admit("b", 2), Some(2));
        assert_eq!(queues.admit("a", 3), None);
        assert_eq!(queues.admit("a", 4), None);
        assert_eq!(queues.waiting(), 2);
        assert_eq!(queues.release("a"), Some(3));
        assert_eq!(queues.release("b"), None);
        assert_eq!(queues.admit("b", 5), Some(5));
        assert_eq!(queues.release("a"), Some(4));
        assert_eq!(queues.release("a"), None);
        assert_eq!(queues.admit("a", 6), Some(6));
        assert_eq!(queues.waiting(), 0);
    }

    #[test]
    fn discarded_events_never_run() {
        let mut queues = FlagQueues::default();
        queues.admit("a", 1);
        queues.admit("a", 2);
        queues.admit("a", 3);
        queues.discard(|e| *e == 2);
        assert_eq!(queues.release("a"), Some(3));
        assert_eq!(queues.release("a"), None);
    }
}
