//! What an earlier, interrupted attempt of a run may have left active, reverted before
//! this attempt injects anything.
//!
//! A run cut off hard (the worker SIGKILLed with its guards, the host lost) reverts
//! nothing. When the event runs again as the next attempt, each of its steps' first runs
//! reverts, idempotently, every fault of its experiment that the earlier attempt could
//! have left, once it holds the experiment's targets:
//!
//! | kind | what is done |
//! |---|---|
//! | `command` | the revert command runs (revert commands must be idempotent) |
//! | `toxiproxy` | the fault's toxics are deleted by their known names (absent ones are fine) |
//! | `process` `pause` | the processes the fault's selector selects that are stopped (`T`) get SIGCONT |
//! | `process` `kill` | nothing: a signal cannot be taken back |
//! | `network`, `http` | nothing: the proxy's lease ends them |
//!
//! The rule: a run never injects on top of an unknown state. A revert that still fails
//! when its lease ends (retried as any revert, [`super::revert`]) ends the run `error`,
//! naming the fault, with nothing injected; the step's next run (a retry) tries again.

use crate::catalog::experiment::{Fault, FaultKind, ProcessAction, ProcessFault};
use crate::chaos::fault::process::{self, ProcessError, Signalled};
use crate::chaos::fault::{self, Injected, toxiproxy};
use crate::contract::run_record::PreviousAttemptRevert;
use crate::telemetry::traces;

use super::revert;
use super::state::{Run, Stop};

/// What an earlier attempt may have left of one fault.
#[derive(Debug)]
enum Leftover {
    /// Nothing to undo, and why.
    Nothing(String),
    /// Undo this; the outcome once done.
    Revert(Injected, String),
    /// It cannot be told whether something is left.
    Unknown(String),
}

/// What an earlier attempt may have left of `fault`.
fn leftover(fault: &Fault) -> Leftover {
    match &fault.kind {
        FaultKind::Command(_) => match fault::after_failed_inject(fault) {
            Some(revert) => Leftover::Revert(revert, "revert command exit 0".into()),
            None => Leftover::Nothing("no revert command".into()),
        },
        FaultKind::Toxiproxy(f) => {
            let toxics = toxiproxy::planned(&fault.name, f);
            if toxics.names.is_empty() {
                return Leftover::Nothing("it creates no toxic".into());
            }
            let outcome = format!(
                "toxics {} on {} deleted or absent",
                toxics.names.join(", "),
                toxics.proxy
            );
            Leftover::Revert(Injected::Toxiproxy(toxics), outcome)
        }
        FaultKind::Process(f) if f.action == ProcessAction::Pause => stopped(f),
        FaultKind::Process(_) => Leftover::Nothing("a kill cannot be taken back".into()),
        FaultKind::Network(_) | FaultKind::Http(_) => {
            Leftover::Nothing("left to its proxy lease".into())
        }
    }
}

/// The processes `fault` selects that are stopped now (state `T` in `/proc/PID/stat`).
fn stopped(fault: &ProcessFault) -> Leftover {
    let pids = match process::find(fault) {
        Ok(pids) => pids,
        Err(
            err @ (ProcessError::NotFound(_)
            | ProcessError::PidFile { .. }
            | ProcessError::BadPid { .. }
            | ProcessError::NoSelector),
        ) => return Leftover::Nothing(format!("no process selected: {err}")),
        Err(err) => return Leftover::Unknown(err.to_string()),
    };
    let mut signalled = Signalled {
        action: ProcessAction::Pause,
        pids: Vec::new(),
        start_times: Vec::new(),
    };
    for pid in pids {
        match process::stat(pid) {
            Ok(Some(('T', start))) => {
                signalled.pids.push(pid);
                signalled.start_times.push(start);
            }
            Ok(_) => {}
            Err(err) => return Leftover::Unknown(err.to_string()),
        }
    }
    if signalled.pids.is_empty() {
        return Leftover::Nothing("no selected process stopped".into());
    }
    let list: Vec<String> = signalled.pids.iter().map(i32::to_string).collect();
    let outcome = format!("resumed stopped pid {}", list.join(", "));
    Leftover::Revert(Injected::Process(signalled), outcome)
}

/// Reverts what attempt `previous` may have left of every fault of the run, logging each
/// and keeping each in the run's tallies. When one fails, the run stops (`error`, naming
/// the fault) before anything is injected; returns whether all are known gone.
pub(super) async fn revert_leftovers(run: &Run, previous: u32) -> bool {
    let this = previous + 1;
    let mut all_gone = true;
    for fault in &run.faults {
        let kind = fault.kind.name();
        let (reverted, outcome, error) = match leftover(fault) {
            Leftover::Nothing(why) => (true, format!("nothing to revert: {why}"), None),
            Leftover::Unknown(error) => (false, "cannot tell what is left".into(), Some(error)),
            Leftover::Revert(injected, outcome) => {
                let span = traces::fault_span(&run.span, "revert", &fault.name, kind);
                match revert::until_lease(run, &fault.name, kind, &injected, &span).await {
                    Ok(_) => (true, outcome, None),
                    Err(gave_up) => (
                        false,
                        format!("revert failed {} times", gave_up.tries),
                        Some(gave_up.error.to_string()),
                    ),
                }
            }
        };
        match &error {
            None => run.log(format!(
                "attempt {this}: reverted what attempt {previous} may have left: fault {} ({outcome})",
                fault.name
            )),
            Some(e) => run.log(format!(
                "attempt {this}: could not revert what attempt {previous} may have left: fault {} ({outcome}): {e}",
                fault.name
            )),
        }
        all_gone &= reverted;
        run.tally()
            .previous_attempt_reverts
            .push(PreviousAttemptRevert {
                fault: fault.name.clone(),
                kind: kind.to_string(),
                attempt: previous,
                reverted,
                outcome,
                error,
            });
    }
    if !all_gone {
        run.stop_with(Stop::FaultError(format!(
            "what attempt {previous} may have left could not be reverted; nothing was injected"
        )));
    }
    all_gone
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::experiment::Experiment;

    fn faults(yaml: &str) -> Vec<Fault> {
        let experiment: Experiment = serde_saphyr::from_str(yaml).expect("experiment");
        experiment.faults
    }

    #[test]
    fn each_kind_says_what_it_leaves() {
        let list = faults(
            r#"
kind: experiment
id: leftovers
faults:
  - name: cmd
    weight: 1
    duration: 1s
    command:
      inject: { argv: [touch, /tmp/x] }
      revert: { argv: [rm, -f, /tmp/x] }
  - name: toxic
    weight: 1
    duration: 1s
    toxiproxy:
      api: http://127.0.0.1:1
      proxy: db
      toxic: { type: latency, latency: 100ms }
  - name: gone
    weight: 1
    duration: 1s
    process:
      action: pause
      pid_file: /nonexistent/chaosgate-test.pid
  - name: killed
    weight: 1
    duration: 1s
    process:
      action: kill
      name: no-such-process-chaosgate
probes: []
"#,
        );
        let kinds: Vec<String> = list
            .iter()
            .map(|f| match leftover(f) {
                Leftover::Nothing(why) => format!("nothing: {why}"),
                Leftover::Revert(injected, outcome) => format!("{injected:?} -> {outcome}"),
                Leftover::Unknown(e) => format!("unknown: {e}"),
            })
            .collect();
        assert!(kinds[0].starts_with("Command("), "{}", kinds[0]);
        assert!(
            kinds[0].ends_with("-> revert command exit 0"),
            "{}",
            kinds[0]
        );
        assert!(kinds[1].starts_with("Toxiproxy("), "{}", kinds[1]);
        assert!(kinds[1].contains("deleted or absent"), "{}", kinds[1]);
        assert!(
            kinds[2].starts_with("nothing: no process selected"),
            "{}",
            kinds[2]
        );
        assert_eq!(kinds[3], "nothing: a kill cannot be taken back");
    }
}
