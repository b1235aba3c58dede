//! Admission: a consumed record becomes an event waiting for its flag ([`Pending`]), or a
//! dead letter.
//!
//! The rules: bad input never stops the worker (it is dead-lettered with its reason and
//! its offset moves on); an event naming a pipeline the catalog lacks, or one it may not
//! select, is bad input, and so is an unrouted one when the operator says so (the rules
//! are [`crate::gate::selection`]'s); an
//! event is registered with the kill switch from the moment it is read, so an abort also
//! reaches an execution still waiting for its flag or for a slot.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::bus::kill_switch::KillSwitch;
use crate::bus::offsets::Ledger;
use crate::bus::outputs::{self, Output, Source};
use crate::bus::transaction::{Assignment, Completion};
use crate::catalog::{Catalog, Unrouted};
use crate::chaos::run::RunContext;
use crate::config::Topics;
use crate::contract::flag_change::decode_flag_change;
use crate::contract::{FlagChange, KafkaMessage, ids};
use crate::gate::selection;
use crate::telemetry::{metrics, traces};

use super::run_records::EventAt;

/// What the scheduler needs from the worker's wiring.
pub(super) struct Wiring {
    pub(crate) topics: Arc<Topics>,
    pub(crate) group: String,
    pub(crate) max_message_bytes: usize,
    pub(crate) max_in_flight: usize,
    pub(crate) catalog: Arc<Catalog>,
    /// What a change no route takes gets (`worker.unrouted`).
    pub(crate) unrouted: Unrouted,
    pub(crate) run: RunContext,
    pub(crate) ledger: Ledger,
    pub(crate) assignment: Assignment,
    pub(crate) kill_switch: KillSwitch,
    /// What the flags are owed, as the flag-state topic says.
    pub(crate) states: crate::bus::flag_state::FlagStates,
    /// Where holds and guards that end by themselves say so.
    pub(crate) owed_events: tokio::sync::mpsc::UnboundedSender<super::scheduler::OwedEvent>,
    pub(crate) completions: std::sync::mpsc::Sender<Completion>,
}

/// An event read and decoded, waiting for its flag or for a slot.
#[derive(Debug)]
pub(super) struct Pending {
    pub(crate) partition: i32,
    pub(crate) epoch: u64,
    pub(crate) offset: i64,
    pub(crate) flag: String,
    pub(crate) change: FlagChange,
    pub(crate) pipeline: Option<String>,
    /// The event's `process` span: its trace, and the fields of its log lines.
    pub(crate) span: tracing::Span,
    /// The pipeline execution's id (registered with the kill switch).
    pub(crate) execution_id: Option<String>,
    /// Cancelled by an abort request (a child of the partition's interrupt).
    pub(crate) kill: CancellationToken,
    /// A parked execution going on after its hold ended: its event's offset is done
    /// already, and it runs as `attempt` from where it stopped.
    pub(crate) resume: Option<Resuming>,
}

/// A parked execution to run on.
#[derive(Debug)]
pub(super) struct Resuming {
    /// The hold as it ended, and the steps done before it.
    pub(crate) resume: crate::gate::hold::Resume,
    /// The attempt it runs as (one more than the attempt that parked, so a run cut off
    /// now is cleaned up by the next one).
    pub(crate) attempt: u32,
}

impl Pending {
    /// The event and where it was read, for its run records.
    pub(crate) fn at(&self) -> EventAt<'_> {
        EventAt {
            partition: self.partition,
            epoch: self.epoch,
            offset: self.offset,
            change: &self.change,
            pipeline: self.pipeline.as_deref(),
        }
    }
}

/// Decodes and routes the record at `offset` of `partition` (assignment `epoch`): the
/// event, or `Err` with its dead letter. `kill` becomes its execution's kill token.
pub(super) fn admit(
    wiring: &Wiring,
    partition: i32,
    epoch: u64,
    offset: i64,
    message: &KafkaMessage,
    kill: CancellationToken,
) -> Result<Pending, Output> {
    metrics::event_consumed();
    let topics = &wiring.topics;
    let span = traces::process_span(
        &topics.flag_changes,
        partition,
        offset,
        &wiring.group,
        &message.headers,
    );
    let entered = span.enter();
    let selected = decode_flag_change(message, wiring.max_message_bytes).and_then(|(_, change)| {
        let pipeline =
            selection::select(&wiring.catalog, &change, wiring.unrouted)?.map(|p| p.id.clone());
        Ok((change, pipeline))
    });
    let (change, pipeline) = match selected {
        Ok(selected) => selected,
        Err(bad) => {
            tracing::warn!(partition, offset, class = bad.class.as_str(), error = %bad.message, "dead-lettered");
            metrics::dead_lettered(bad.class);
            let source = Source {
                topic: topics.flag_changes.clone(),
                partition,
                offset,
            };
            return Err(outputs::dead_letter(topics, message, &bad, &source));
        }
    };
    traces::record_change(&span, &change, pipeline.as_deref());
    drop(entered);
    let execution_id = pipeline
        .as_ref()
        .map(|id| ids::pipeline_execution_id(&change.event_id, id));
    if let Some(id) = &execution_id {
        wiring
            .kill_switch
            .register(id, kill.clone(), change.occurred_at);
    }
    Ok(Pending {
        partition,
        epoch,
        offset,
        flag: change.flag_key(),
        change,
        pipeline,
        span,
        execution_id,
        kill,
        resume: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::experiment::experiment_example;
    use crate::catalog::pipeline::pipeline_example;
    use crate::contract::ChangeKind;
    use crate::contract::dead_letter::{HEADER_ERROR_CLASS, HEADER_ERROR_MESSAGE};
    use crate::contract::flag_change::{flag_change_event, flag_change_example};

    /// Wiring whose catalog holds the example pipeline (routes `shop`/`production`/
    /// `checkout-*`) and `explicit` (no routes; `allow_explicit` as given).
    fn wiring(unrouted: Unrouted, explicit_allowed: bool) -> Wiring {
        let mut explicit = pipeline_example();
        explicit.id = "explicit".into();
        explicit.routes.clear();
        explicit.allow_explicit = explicit_allowed;
        let catalog = match Catalog::from_parts(
            vec![pipeline_example(), explicit],
            vec![experiment_example()],
        ) {
            Ok(catalog) => catalog,
            Err(problems) => panic!("{problems:?}"),
        };
        Wiring {
            topics: Arc::new(Topics::default()),
            group: "g".into(),
            max_message_bytes: 1 << 20,
            max_in_flight: 1,
            catalog: Arc::new(catalog),
            unrouted,
            run: RunContext::default(),
            ledger: Ledger::default(),
            assignment: Arc::default(),
            kill_switch: KillSwitch::default(),
            states: crate::bus::flag_state::FlagStates::new(
                rdkafka::ClientConfig::new(),
                "chaosgate-flag-state".into(),
            ),
            owed_events: tokio::sync::mpsc::unbounded_channel().0,
            completions: std::sync::mpsc::channel().0,
        }
    }

    /// The example change to `flag`, as the flag service puts it on Kafka.
    fn message(flag: &str, kind: ChangeKind, pipeline_id: Option<&str>) -> KafkaMessage {
        let mut change = flag_change_example();
        change.flag = flag.into();
        change.change.kind = kind;
        change.pipeline_id = pipeline_id.map(str::to_string);
        flag_change_event(&change, "/flag-service/test").to_binary(Some(&change.flag_key()))
    }

    fn header<'m>(output: &'m Output, name: &str) -> Option<&'m str> {
        output
            .message
            .headers
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// The pipeline the record is admitted with, or its dead letter's class and message.
    fn admitted(wiring: &Wiring, message: &KafkaMessage) -> Result<Option<String>, String> {
        match admit(wiring, 0, 1, 7, message, CancellationToken::new()) {
            Ok(pending) => Ok(pending.pipeline),
            Err(output) => {
                assert_eq!(output.topic, wiring.topics.dead_letter);
                Err(format!(
                    "{}: {}",
                    header(&output, HEADER_ERROR_CLASS).unwrap_or("?"),
                    header(&output, HEADER_ERROR_MESSAGE).unwrap_or("?")
                ))
            }
        }
    }

    #[test]
    fn naming_a_pipeline_that_does_not_route_the_flag_is_dead_lettered() {
        let strict = wiring(Unrouted::Enable, false);
        let routed = message("checkout-v2", ChangeKind::Enable, Some("checkout-release"));
        assert_eq!(
            admitted(&strict, &routed),
            Ok(Some("checkout-release".into()))
        );
        let elsewhere = message("search-v2", ChangeKind::Enable, Some("checkout-release"));
        assert_eq!(
            admitted(&strict, &elsewhere),
            Err(
                "pipeline_not_routed: data.pipeline_id: pipeline 'checkout-release' does not \
                 route flag 'shop/production/search-v2' and does not allow explicit selection \
                 (allow_explicit: false)"
                    .into()
            )
        );
        let explicit = message("search-v2", ChangeKind::Update, Some("explicit"));
        assert!(
            admitted(&strict, &explicit)
                .is_err_and(|e| e.starts_with("pipeline_not_routed: ") && e.contains("'explicit'"))
        );
        let open = wiring(Unrouted::Enable, true);
        assert_eq!(admitted(&open, &explicit), Ok(Some("explicit".into())));
    }

    #[test]
    fn an_unrouted_change_is_dead_lettered_when_the_operator_says_so() {
        let unrouted = message("search-v2", ChangeKind::Enable, None);
        for passed_on in [Unrouted::Enable, Unrouted::Disable] {
            assert_eq!(admitted(&wiring(passed_on, false), &unrouted), Ok(None));
        }
        let dead_letter = wiring(Unrouted::DeadLetter, false);
        assert_eq!(
            admitted(&dead_letter, &unrouted),
            Err(
                "unrouted: no pipeline's routes take flag 'shop/production/search-v2' and \
                 worker.unrouted is 'dead_letter'"
                    .into()
            )
        );
        let disable = message("search-v2", ChangeKind::Disable, None);
        assert_eq!(admitted(&dead_letter, &disable), Ok(None));
        let routed = message("checkout-v2", ChangeKind::Enable, None);
        assert_eq!(
            admitted(&dead_letter, &routed),
            Ok(Some("checkout-release".into()))
        );
    }
}
