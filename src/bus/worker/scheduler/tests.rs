//! Unit tests of the scheduler: holds, full books, revoked partitions and run updates,
//! with an empty catalog and no broker.

use super::*;
use crate::bus::flag_state::FlagStates;
use crate::bus::kill_switch::KillSwitch;
use crate::bus::offsets::{Ledger, PartitionOffsets};
use crate::catalog::{Catalog, Unrouted};
use crate::chaos::run::RunContext;
use crate::config::Topics;
use crate::contract::{Change, ChangeKind, FlagChange};
use tokio_util::sync::CancellationToken;

fn pending(offset: i64) -> Pending {
    let change = FlagChange {
        event_id: format!("event-{offset}"),
        occurred_at: chrono::Utc::now(),
        project: "p".into(),
        environment: "e".into(),
        flag: "f".into(),
        change: Change {
            kind: ChangeKind::Enable,
            from: None,
            to: None,
        },
        pipeline_id: None,
        actor: None,
        account: None,
        value_format: None,
    };
    Pending {
        partition: 0,
        epoch: 1,
        offset,
        flag: change.flag_key(),
        change,
        pipeline: None,
        span: tracing::Span::none(),
        execution_id: None,
        kill: CancellationToken::new(),
        resume: None,
    }
}

/// A scheduler with one slot, an empty catalog and partition 0 (epoch 1) assigned,
/// its offsets not read yet; with its ledger and what it hands the committer.
fn one_partition() -> (Scheduler, Ledger, std::sync::mpsc::Receiver<Completion>) {
    let (completions, committed) = std::sync::mpsc::channel();
    let catalog = Catalog::from_parts(Vec::new(), Vec::new()).expect("empty catalog");
    let ledger = Ledger::default();
    let mut scheduler = Scheduler::new(Wiring {
        topics: Arc::new(Topics::default()),
        group: "g".into(),
        max_message_bytes: 1 << 20,
        max_in_flight: 1,
        catalog: Arc::new(catalog),
        unrouted: Unrouted::Enable,
        run: RunContext::default(),
        ledger: ledger.clone(),
        assignment: Arc::new(std::sync::Mutex::new(HashMap::from([(0, 1)]))),
        kill_switch: KillSwitch::default(),
        states: FlagStates::new(rdkafka::ClientConfig::new(), "chaosgate-flag-state".into()),
        owed_events: tokio::sync::mpsc::unbounded_channel().0,
        completions,
    });
    scheduler.rebalance(&RebalanceEvent::Assigned(vec![NewPartition {
        partition: 0,
        epoch: 1,
        interrupt: CancellationToken::new(),
    }]));
    (scheduler, ledger, committed)
}

#[tokio::test]
async fn a_panicking_run_frees_its_slot_and_its_flag_and_keeps_its_offset() {
    let (mut scheduler, ledger, committed) = one_partition();
    scheduler.loaded(Loaded {
        partition: 0,
        epoch: 1,
        offsets: PartitionOffsets::default(),
        owed: Vec::new(),
        end: 0,
    });
    // Offset 0 runs (its flag busy, the one slot taken) and panics; offset 1 of the
    // same flag waits behind it.
    for offset in [0, 1] {
        let book = ledger.lock().get_mut(&0).map(|b| b.offsets.receive(offset));
        assert_eq!(book, Some(Receipt::Process));
    }
    let first = pending(0);
    assert!(scheduler.queues.admit(&first.flag.clone(), first).is_some());
    let ticket = Ticket {
        partition: 0,
        offset: 0,
        flag: "p/e/f".into(),
        execution_id: None,
        attempt: 1,
    };
    scheduler.runs.spawn(ticket, async { panic!("boom") });
    let second = pending(1);
    assert!(
        scheduler
            .queues
            .admit(&second.flag.clone(), second)
            .is_none()
    );

    match scheduler.next_ended().await {
        Err(panicked) => scheduler.panicked(panicked),
        Ok(_) => panic!("the run did not panic"),
    }
    assert_eq!(scheduler.running(), 0, "the slot is free");
    // The flag moved on: offset 1 (not gated) was answered at once.
    let completion = committed.try_recv().expect("offset 1 answered");
    assert_eq!(completion.outputs.len(), 1);
    // Offset 0 stays unfinished: the watermark holds for the next owner.
    assert_eq!(
        ledger.lock().get(&0).map(|b| b.offsets.watermark()),
        Some(0)
    );
}

#[test]
fn records_of_a_full_book_wait_in_order_until_it_has_room() {
    let (mut scheduler, ledger, committed) = one_partition();
    // Every offset its metadata can record is unfinished.
    let mut offsets = PartitionOffsets::default();
    let full = crate::bus::offsets::MAX_PENDING as i64;
    for offset in 0..full {
        offsets.receive(offset);
    }
    scheduler.loaded(Loaded {
        partition: 0,
        epoch: 1,
        offsets,
        owed: Vec::new(),
        end: 0,
    });
    assert!(scheduler.flow().pause.is_empty());
    // Two more records (bad input, dead-lettered once let in) wait, and the partition
    // pauses.
    let bad = || KafkaMessage {
        key: None,
        value: Some(b"not a flag change".to_vec()),
        headers: Vec::new(),
    };
    scheduler.receive(0, full, bad());
    scheduler.receive(0, full + 1, bad());
    assert_eq!(scheduler.flow().pause, [0]);
    assert!(committed.try_recv().is_err(), "nothing was let in");
    // One unfinished offset finishes: the records go in, in order (each is answered at
    // once, so the next fits too), and the partition resumes.
    if let Some(book) = ledger.lock().get_mut(&0) {
        book.offsets.complete(0);
    }
    assert_eq!(scheduler.flow().resume, [0]);
    assert!(committed.try_recv().is_ok(), "offset {full} let in");
    assert!(committed.try_recv().is_ok(), "offset {} let in", full + 1);
    let book = ledger
        .lock()
        .get_mut(&0)
        .map(|b| b.offsets.receive(full + 1));
    assert_eq!(book, Some(Receipt::Skip), "done, in order");
}
