//! The order of flag commands per flag: which command to apply next, which to skip as
//! stale, which running one a newer command supersedes.
//!
//! Commands for one flag (key `project/environment/flag`) are applied one at a time, in
//! the order they are delivered; commands for different flags do not wait for each other.
//!
//! The stale rule that keeps a late `enable` from undoing a newer `disable`: a command
//! is skipped as stale when the bridge has already taken a command for the same flag
//! (applied it, is applying it, or queued it) whose `issued_at` is **later**. On equal
//! `issued_at` the command delivered later wins (it is taken and the earlier one, if
//! still running or queued, is superseded). A command taken while another of its flag is
//! still running (retrying a transient failure, say) supersedes it: the running one is
//! cancelled and counted stale, and the newer one runs next. At most one command per flag
//! waits: a newer arrival supersedes a waiting one too.
//!
//! The memory of what was taken survives a restart, and a partition moving to another
//! bridge of the group: each partition's committed offset carries the newest `issued_at`
//! of the flags read from it ([`super::memory`]), read when the process sees the
//! partition's first record, and the commands after the committed offset are delivered
//! again, so the order is rebuilt from both. (A partition that comes back to a process
//! that had it before keeps that process's memory.)

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use crate::contract::{FlagCommand, KafkaMessage};

/// Where a record was read: partition and offset of the commands topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Position {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
}

/// A valid flag command as read, with the record it came in (kept for a dead letter).
#[derive(Debug, Clone, PartialEq)]
pub struct Ticket {
    /// Where it was read.
    pub at: Position,
    /// The command.
    pub command: FlagCommand,
    /// The record, byte for byte.
    pub original: KafkaMessage,
}

impl Ticket {
    /// The flag's key, `project/environment/flag`.
    pub fn flag_key(&self) -> String {
        flag_key(&self.command)
    }
}

/// `project/environment/flag` of `command`.
pub fn flag_key(command: &FlagCommand) -> String {
    format!(
        "{}/{}/{}",
        command.project, command.environment, command.flag
    )
}

/// What to do when a command arrives ([`Lanes::arrive`]).
#[derive(Debug, Default, PartialEq)]
pub struct Arrival {
    /// Start applying this command now.
    pub start: Option<Ticket>,
    /// Skip this command as stale: the arriving one (older than a command already
    /// taken), or the one that was waiting and the arriving one superseded.
    pub stale: Option<Ticket>,
    /// The running command of this flag is superseded: cancel it (it is stale once it
    /// returns, unless it finished first).
    pub cancel_running: Option<Position>,
}

/// What to do when a flag's running command returns ([`Lanes::finished`]).
#[derive(Debug, Default, PartialEq)]
pub struct Finished {
    /// A newer command superseded the one that returned.
    pub superseded: bool,
    /// Start applying this command (it waited for the one that returned).
    pub start: Option<Ticket>,
}

/// Every flag's order state.
#[derive(Debug, Default)]
pub struct Lanes {
    lanes: HashMap<String, Lane>,
}

#[derive(Debug, Default)]
struct Lane {
    /// `issued_at` of the newest command taken.
    newest: Option<DateTime<Utc>>,
    /// The partition its commands were read from (one per flag: the key decides it).
    partition: Option<i32>,
    /// The command being applied, and whether a newer one superseded it.
    running: Option<(Position, bool)>,
    /// The command that runs once the running one returns.
    waiting: Option<Ticket>,
}

impl Lanes {
    /// A valid, not dry-run command arrives for its flag.
    pub fn arrive(&mut self, ticket: Ticket) -> Arrival {
        let lane = self.lanes.entry(ticket.flag_key()).or_default();
        if lane
            .newest
            .is_some_and(|newest| ticket.command.issued_at < newest)
        {
            return Arrival {
                stale: Some(ticket),
                ..Arrival::default()
            };
        }
        lane.newest = Some(ticket.command.issued_at);
        lane.partition = Some(ticket.at.partition);
        match &mut lane.running {
            None => {
                lane.running = Some((ticket.at, false));
                Arrival {
                    start: Some(ticket),
                    ..Arrival::default()
                }
            }
            Some((running, superseded)) => {
                let cancel_running = (!*superseded).then_some(*running);
                *superseded = true;
                Arrival {
                    stale: lane.waiting.replace(ticket),
                    cancel_running,
                    ..Arrival::default()
                }
            }
        }
    }

    /// The running command of `flag_key`, read at `at`, returned (applied, failed, or
    /// cancelled). Unknown flags or positions change nothing.
    pub fn finished(&mut self, flag_key: &str, at: Position) -> Finished {
        let Some(lane) = self.lanes.get_mut(flag_key) else {
            return Finished::default();
        };
        let superseded = match lane.running {
            Some((running, superseded)) if running == at => superseded,
            _ => return Finished::default(),
        };
        let start = lane.waiting.take();
        lane.running = start.as_ref().map(|t| (t.at, false));
        Finished { superseded, start }
    }

    /// Remembers that a command for `flag_key` issued at `issued_at` was taken before
    /// (from a commit's memory of `partition`): later arrivals older than it are stale.
    /// A newer command already taken is kept.
    pub fn remember(&mut self, flag_key: &str, partition: i32, issued_at: DateTime<Utc>) {
        let lane = self.lanes.entry(flag_key.to_string()).or_default();
        if lane.newest.is_none_or(|newest| newest < issued_at) {
            lane.newest = Some(issued_at);
        }
        lane.partition.get_or_insert(partition);
    }

    /// The newest `issued_at` taken for each flag read from `partition`, newest first.
    pub fn newest_on(&self, partition: i32) -> Vec<(&str, DateTime<Utc>)> {
        let mut newest: Vec<(&str, DateTime<Utc>)> = self
            .lanes
            .iter()
            .filter(|(_, lane)| lane.partition == Some(partition))
            .filter_map(|(key, lane)| Some((key.as_str(), lane.newest?)))
            .collect();
        newest.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        newest
    }

    /// Commands running or waiting, all flags together.
    pub fn busy(&self) -> usize {
        self.lanes
            .values()
            .map(|l| usize::from(l.running.is_some()) + usize::from(l.waiting.is_some()))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::CommandKind;
    use crate::contract::flag_command::flag_command_example;

    fn ticket(offset: i64, flag: &str, kind: CommandKind, second: u32) -> Ticket {
        let mut command = flag_command_example();
        command.flag = flag.into();
        command.command = kind;
        command.issued_at = DateTime::parse_from_rfc3339(&format!("2026-11-30T09:00:{second:02}Z"))
            .unwrap()
            .with_timezone(&Utc);
        Ticket {
            at: Position {
                partition: 0,
                offset,
            },
            command,
            original: KafkaMessage::default(),
        }
    }

    fn at(offset: i64) -> Position {
        Position {
            partition: 0,
            offset,
        }
    }

    #[test]
    fn a_late_enable_older_than_an_applied_disable_is_stale() {
        let mut lanes = Lanes::default();
        let disable = ticket(1, "f", CommandKind::Disable, 20);
        assert_eq!(lanes.arrive(disable.clone()).start, Some(disable.clone()));
        assert_eq!(
            lanes.finished(&disable.flag_key(), at(1)),
            Finished::default()
        );
        let enable = ticket(2, "f", CommandKind::Enable, 10);
        let arrival = lanes.arrive(enable.clone());
        assert_eq!(arrival.stale, Some(enable));
        assert_eq!(arrival.start, None);
        assert_eq!(lanes.busy(), 0);
    }

    #[test]
    fn equal_issued_at_is_taken_in_delivery_order() {
        let mut lanes = Lanes::default();
        let first = ticket(1, "f", CommandKind::Disable, 20);
        lanes.arrive(first.clone());
        lanes.finished(&first.flag_key(), at(1));
        let second = ticket(2, "f", CommandKind::Enable, 20);
        assert_eq!(lanes.arrive(second.clone()).start, Some(second));
    }

    #[test]
    fn a_newer_command_supersedes_the_running_and_the_waiting_one() {
        let mut lanes = Lanes::default();
        let running = ticket(1, "f", CommandKind::Enable, 10);
        lanes.arrive(running.clone());
        let newer = ticket(2, "f", CommandKind::Disable, 11);
        let arrival = lanes.arrive(newer.clone());
        assert_eq!(arrival.cancel_running, Some(at(1)));
        assert_eq!((arrival.start, arrival.stale), (None, None));
        let newest = ticket(3, "f", CommandKind::Enable, 12);
        let arrival = lanes.arrive(newest.clone());
        assert_eq!(arrival.cancel_running, None, "cancelled once already");
        assert_eq!(arrival.stale, Some(newer));
        assert_eq!(lanes.busy(), 2);
        let done = lanes.finished("shop/production/f", at(1));
        assert!(done.superseded);
        assert_eq!(done.start, Some(newest));
        let done = lanes.finished("shop/production/f", at(3));
        assert_eq!(done, Finished::default());
        assert_eq!(lanes.busy(), 0);
    }

    #[test]
    fn an_older_command_behind_a_running_one_is_stale_and_does_not_cancel_it() {
        let mut lanes = Lanes::default();
        lanes.arrive(ticket(1, "f", CommandKind::Disable, 30));
        let older = ticket(2, "f", CommandKind::Enable, 10);
        let arrival = lanes.arrive(older.clone());
        assert_eq!(arrival.stale, Some(older));
        assert_eq!(arrival.cancel_running, None);
        assert!(!lanes.finished("shop/production/f", at(1)).superseded);
    }

    #[test]
    fn a_remembered_command_makes_older_ones_stale_and_is_listed_per_partition() {
        let mut lanes = Lanes::default();
        let remembered = ticket(0, "f", CommandKind::Disable, 20).command.issued_at;
        lanes.remember("shop/production/f", 0, remembered);
        let older = ticket(5, "f", CommandKind::Enable, 10);
        assert_eq!(lanes.arrive(older.clone()).stale, Some(older));
        let same = ticket(6, "f", CommandKind::Disable, 20);
        assert_eq!(lanes.arrive(same.clone()).start, Some(same), "equal: taken");
        let other = ticket(7, "g", CommandKind::Enable, 30);
        lanes.arrive(other);
        assert_eq!(
            lanes.newest_on(0),
            vec![
                (
                    "shop/production/g",
                    ticket(0, "g", CommandKind::Enable, 30).command.issued_at
                ),
                ("shop/production/f", remembered),
            ]
        );
        assert!(lanes.newest_on(1).is_empty());
        lanes.remember("shop/production/g", 0, remembered);
        assert_eq!(
            lanes.newest_on(0)[0].0,
            "shop/production/g",
            "a newer one is kept"
        );
    }

    #[test]
    fn different_flags_do_not_wait_for_each_other() {
        let mut lanes = Lanes::default();
        let a = ticket(1, "a", CommandKind::Enable, 10);
        let b = ticket(2, "b", CommandKind::Enable, 5);
        assert_eq!(lanes.arrive(a.clone()).start, Some(a));
        assert_eq!(lanes.arrive(b.clone()).start, Some(b));
        assert_eq!(lanes.busy(), 2);
        assert_eq!(
            lanes.finished("shop/production/a", at(2)),
            Finished::default(),
            "not a's running command"
        );
    }
}
