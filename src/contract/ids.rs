//! Deterministic ids: every id chaosgate writes is a UUIDv5 derived from the flag-change's
//! `event_id`, so an event processed twice (after a crash or a rebalance) yields the same
//! ids and consumers can deduplicate.

use uuid::Uuid;

/// The namespace all chaosgate ids are derived in.
const NAMESPACE: Uuid = Uuid::from_u128(0x6c1e_5a0b_3f7d_4e0a_9b1c_2d3e_4f5a_6b7c);

fn derive(parts: &[&str]) -> String {
    Uuid::new_v5(&NAMESPACE, parts.join("\u{1f}").as_bytes()).to_string()
}

/// Id of the pipeline execution a flag-change starts.
pub fn pipeline_execution_id(event_id: &str, pipeline_id: &str) -> String {
    derive(&["execution", event_id, pipeline_id])
}

/// Id of one run of one step of one execution: `attempt` counts executions cut off by a
/// crash or a rebalance, `retry` the step's own retries within one execution.
pub fn run_id(
    event_id: &str,
    pipeline_id: &str,
    stage_id: &str,
    step_id: &str,
    attempt: u32,
    retry: u32,
) -> String {
    derive(&[
        "run",
        event_id,
        pipeline_id,
        stage_id,
        step_id,
        &attempt.to_string(),
        &retry.to_string(),
    ])
}

/// Id of the flag command that answers a flag-change.
pub fn command_id(event_id: &str) -> String {
    derive(&["command", event_id])
}

/// Id of a hold of an execution: `place` is `stage-id/step-id` of an approval or wait
/// step, or `freeze`.
pub fn hold_id(pipeline_execution_id: &str, place: &str) -> String {
    derive(&["hold", pipeline_execution_id, place])
}

/// Id of the guard that follows the `enable` command `enable_command_id`.
pub fn guard_id(enable_command_id: &str) -> String {
    derive(&["guard", enable_command_id])
}

/// Id of the command a guard issues when it fires, for the flag-change `event_id` whose
/// `enable` it guards.
pub fn guard_command_id(event_id: &str) -> String {
    derive(&["guard-command", event_id])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_distinct() {
        assert_eq!(command_id("e-1"), command_id("e-1"));
        assert_ne!(command_id("e-1"), command_id("e-2"));
        assert_ne!(
            run_id("e", "p", "s", "t", 1, 0),
            run_id("e", "p", "s", "t", 2, 0)
        );
        assert_ne!(
            run_id("e", "p", "s", "t", 1, 0),
            run_id("e", "p", "s", "t", 1, 1)
        );
        assert_ne!(
            run_id("e", "p", "s", "ta", 1, 0),
            run_id("e", "p", "st", "a", 1, 0)
        );
    }
}
