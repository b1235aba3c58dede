//! Applying one flag command to Unleash: tries, waits between them, and the report of a
//! command that will not be applied.
//!
//! The rule: a command ends applied, reported (error log line, `failed` count, dead
//! letter written) or cancelled, never dropped. Transient failures are tried again with
//! exponential backoff (factor 2, from 250 ms) with jitter, each wait at most
//! `[unleash.commands] max_backoff`, unless Unleash's `Retry-After` asks for longer; a
//! command stops trying only when a newer one for its flag supersedes it or the bridge
//! stops. Permanent failures are not tried again.

use std::time::Duration;

use rdkafka::producer::FutureProducer;
use rdkafka::util::Timeout;
use tokio_util::sync::CancellationToken;

use super::event;
use super::order::{Position, Ticket};
use super::record::{self, NotApplied, Wanted};
use super::strategy;
use super::{AdminApi, AdminError};
use crate::bus::record::to_record;
use crate::connect::retry::next_wait;
use crate::contract::{CommandKind, FlagCommand, KafkaMessage};
use crate::telemetry::metrics;

/// The first wait after a failed try.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// How long one dead letter may wait for the broker before it is tried again.
const DEAD_LETTER_TIMEOUT: Duration = Duration::from_secs(30);

/// What the tasks applying commands share.
pub(super) struct Shared {
    pub(super) admin: AdminApi,
    /// This Unleash server's name in event ids ([`super::event::event_id`]).
    pub(super) instance: String,
    pub(super) producer: FutureProducer,
    pub(super) commands_topic: String,
    pub(super) dead_letter_topic: String,
    pub(super) max_backoff: Duration,
    pub(super) shutdown: CancellationToken,
}

/// How a task applying or reporting a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    /// Applied to Unleash.
    Applied,
    /// Reported: logged, counted and dead-lettered.
    Reported,
    /// Stopped before it finished: superseded, or the bridge is stopping.
    Cancelled,
}

/// Applies one command until it is applied, reported, superseded (`supersede`) or the
/// bridge stops.
pub(super) async fn apply(
    shared: &Shared,
    ticket: &Ticket,
    supersede: &CancellationToken,
) -> Outcome {
    let command = &ticket.command;
    let flag = ticket.flag_key();
    let wanted = match record::wanted(command) {
        Ok(wanted) => wanted,
        Err(why) => {
            log_failed(ticket, &why);
            return report(shared, &ticket.original, ticket.at, &why).await;
        }
    };
    let mut delays = backoff(shared.max_backoff);
    let mut tries: u32 = 0;
    loop {
        tries += 1;
        let result = tokio::select! {
            biased;
            () = supersede.cancelled() => return Outcome::Cancelled,
            result = put(shared, command, &wanted) => result,
        };
        match result {
            Ok(Put::Confirmed) => {
                tracing::info!(
                    command_id = %command.command_id,
                    %flag,
                    causation_event_id = %command.causation_event_id,
                    "confirmed: the gated strategy change is live in Unleash already; nothing to apply"
                );
                metrics::unleash_command("confirmed");
                return Outcome::Applied;
            }
            Ok(Put::Applied) => {
                tracing::info!(
                    command_id = %command.command_id,
                    %flag,
                    command = command.command.as_str(),
                    state = %shown(&wanted),
                    tries,
                    "applied"
                );
                metrics::unleash_command("applied");
                return Outcome::Applied;
            }
            Err(AdminError::Transient {
                reason,
                retry_after,
            }) => {
                let wait = next_wait(&mut delays, shared.max_backoff, retry_after);
                tracing::warn!(
                    command_id = %command.command_id,
                    %flag,
                    command = command.command.as_str(),
                    tries,
                    retry_in = ?wait,
                    error = %reason,
                    "not applied yet; trying again"
                );
                metrics::unleash_command("retried");
                tokio::select! {
                    biased;
                    () = supersede.cancelled() => return Outcome::Cancelled,
                    () = tokio::time::sleep(wait) => {}
                }
            }
            Err(AdminError::Permanent { status, reason }) => {
                let why = record::refused(status, &reason);
                log_failed(ticket, &why);
                return report(shared, &ticket.original, ticket.at, &why).await;
            }
        }
    }
}

/// What [`put`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Put {
    /// Unleash was changed (or already was) as the command wants.
    Applied,
    /// An `enable` of a gated strategy change: that change is live in Unleash already,
    /// and the flag's on/off state is not the gate's to touch.
    Confirmed,
}

/// Makes Unleash what `wanted` says, for `command`'s flag and environment.
///
/// An `enable` answers the change it was gated for. With Unleash the change is live when
/// it is reported, so for a flag turned on, `enable` turns it on (a no-op, or the end of
/// `hold_while_gating`); for a strategy added, updated or removed it is a confirmation,
/// and turning the flag on would be a change nobody made. The command does not carry the
/// change's kind, so the kind is read from Unleash's event log when the causation event
/// is one of this server's (`unleash:<instance>:<id>`).
async fn put(shared: &Shared, command: &FlagCommand, wanted: &Wanted) -> Result<Put, AdminError> {
    let admin = &shared.admin;
    let (project, environment, flag) = (&command.project, &command.environment, &command.flag);
    match wanted {
        Wanted::Enabled(true) if command.command == CommandKind::Enable => {
            if let Some(id) = event::unleash_event(&command.causation_event_id, &shared.instance)
                && admin
                    .event_type(id)
                    .await?
                    .is_some_and(|t| t.starts_with("feature-strategy-"))
            {
                return Ok(Put::Confirmed);
            }
            admin.set_enabled(project, environment, flag, true).await?;
        }
        Wanted::Enabled(on) => admin.set_enabled(project, environment, flag, *on).await?,
        Wanted::Strategy { id, body } => {
            strategy::put_back(admin, project, environment, flag, id, body).await?;
        }
    }
    Ok(Put::Applied)
}

/// `wanted` in a log line: `on`, `off` or `strategy <id>`.
fn shown(wanted: &Wanted) -> String {
    match wanted {
        Wanted::Enabled(true) => "on".into(),
        Wanted::Enabled(false) => "off".into(),
        Wanted::Strategy { id, .. } => format!("strategy {id}"),
    }
}

/// The error line and the `failed` count of a command that will not be applied.
fn log_failed(ticket: &Ticket, why: &NotApplied) {
    tracing::error!(
        command_id = %ticket.command.command_id,
        flag = %ticket.flag_key(),
        command = ticket.command.command.as_str(),
        partition = ticket.at.partition,
        offset = ticket.at.offset,
        error = %why,
        "not applied; reporting it on the dead-letter topic"
    );
    metrics::unleash_command("failed");
}

/// Writes the dead letter of the record at `at`, trying again until the broker has it
/// or the bridge stops (then [`Outcome::Cancelled`]: the record comes again).
pub(super) async fn report(
    shared: &Shared,
    original: &KafkaMessage,
    at: Position,
    why: &NotApplied,
) -> Outcome {
    let letter = record::dead_letter(original, why, &shared.commands_topic, at);
    let mut delays = backoff(shared.max_backoff);
    loop {
        let sent = tokio::select! {
            biased;
            () = shared.shutdown.cancelled() => return Outcome::Cancelled,
            sent = shared.producer.send(
                to_record(&shared.dead_letter_topic, &letter),
                Timeout::After(DEAD_LETTER_TIMEOUT),
            ) => sent,
        };
        match sent {
            Ok(_) => return Outcome::Reported,
            Err((error, _)) => {
                let wait = next_wait(&mut delays, shared.max_backoff, None);
                tracing::warn!(
                    %error,
                    topic = %shared.dead_letter_topic,
                    partition = at.partition,
                    offset = at.offset,
                    retry_in = ?wait,
                    "cannot write the dead letter yet; trying again"
                );
                tokio::select! {
                    biased;
                    () = shared.shutdown.cancelled() => return Outcome::Cancelled,
                    () = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

/// Exponential delays from [`FIRST_BACKOFF`] up to `max`, with jitter
/// ([`crate::connect::retry::backoff`]).
fn backoff(max: Duration) -> impl Iterator<Item = Duration> {
    crate::connect::retry::backoff(FIRST_BACKOFF, max)
}
