//! Which flagd definition a flag command approves.
//!
//! The rule (one record per command, on the approved-flags topic):
//! - `enable` (a passed gate, or a change not gated) approves the change's `to`;
//! - `disable` approves the flag as `DISABLED`: the proposal itself when the change was a
//!   `disable`, else the definition served before (`from`), or the proposal when nothing
//!   was served, with `state` set to `DISABLED` ("Disabled flags are treated as if they
//!   don't exist", flagd's flag schema);
//! - `revert` approves `from`, the definition served before the change; a flag that had
//!   none goes back to not existing, served as `DISABLED`;
//! - a dry run's command is advice: the proposal stands, as a change in a webhook flag
//!   service would.

use crate::contract::{
    ApprovedFlag, ChangeKind, CommandKind, FlagChange, FlagCommand, ValueFormat,
};

/// flagd's `state` of a flag that is off.
pub const DISABLED: &str = "DISABLED";

/// The approved-flag record `command` writes for `change`, or `None` when the change's
/// values are not flagd definitions ([`ValueFormat::Flagd`]) or the value the rule picks
/// is not a JSON object (a change no flagd bridge wrote; nothing is approved).
pub fn approved(change: &FlagChange, command: &FlagCommand) -> Option<ApprovedFlag> {
    if change.value_format != Some(ValueFormat::Flagd) {
        return None;
    }
    let from = change.change.from.as_ref().filter(|v| v.is_object());
    let to = change.change.to.as_ref().filter(|v| v.is_object());
    let definition = if command.dry_run {
        to.cloned()
    } else {
        match command.command {
            CommandKind::Enable => to.cloned(),
            CommandKind::Disable if change.change.kind == ChangeKind::Disable => {
                to.or(from).map(disabled)
            }
            CommandKind::Disable => from.or(to).map(disabled),
            CommandKind::Revert => from.cloned().or_else(|| to.map(disabled)),
        }
    }?;
    Some(ApprovedFlag {
        project: change.project.clone(),
        environment: change.environment.clone(),
        flag: change.flag.clone(),
        definition,
        proposed: change.change.to.clone(),
        command: command.command,
        command_id: command.command_id.clone(),
        reason_code: command.reason_code,
        dry_run: command.dry_run,
        causation_event_id: change.event_id.clone(),
        pipeline_id: command.pipeline_id.clone(),
        pipeline_execution_id: command.pipeline_execution_id.clone(),
        approved_at: command.issued_at,
    })
}

/// `definition` with `state` set to `DISABLED`.
pub fn disabled(definition: &serde_json::Value) -> serde_json::Value {
    let mut definition = definition.clone();
    if let Some(object) = definition.as_object_mut() {
        object.insert("state".into(), DISABLED.into());
    }
    definition
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::contract::flag_change::flag_change_example;
    use crate::contract::flag_command::flag_command_example;

    fn def(state: &str, default: &str) -> serde_json::Value {
        json!({"state": state, "variants": {"on": true, "off": false}, "defaultVariant": default})
    }

    fn change(
        kind: ChangeKind,
        from: Option<serde_json::Value>,
        to: serde_json::Value,
    ) -> FlagChange {
        let mut change = flag_change_example();
        change.change.kind = kind;
        change.change.from = from;
        change.change.to = Some(to);
        change.value_format = Some(ValueFormat::Flagd);
        change
    }

    fn command(kind: CommandKind, dry_run: bool) -> FlagCommand {
        let mut command = flag_command_example();
        command.command = kind;
        command.dry_run = dry_run;
        command
    }

    fn served(change: &FlagChange, kind: CommandKind, dry_run: bool) -> Option<serde_json::Value> {
        approved(change, &command(kind, dry_run)).map(|a| a.definition)
    }

    #[test]
    fn each_command_approves_what_the_rule_says() {
        let old = def("ENABLED", "off");
        let new = def("ENABLED", "on");
        let update = change(ChangeKind::Update, Some(old.clone()), new.clone());
        assert_eq!(
            served(&update, CommandKind::Enable, false),
            Some(new.clone())
        );
        assert_eq!(
            served(&update, CommandKind::Revert, false),
            Some(old.clone())
        );
        assert_eq!(
            served(&update, CommandKind::Disable, false),
            Some(def("DISABLED", "off"))
        );
        // A dry run's advice leaves the proposal standing.
        assert_eq!(
            served(&update, CommandKind::Disable, true),
            Some(new.clone())
        );

        let first = change(ChangeKind::Enable, None, new.clone());
        assert_eq!(
            served(&first, CommandKind::Disable, false),
            Some(def("DISABLED", "on"))
        );
        assert_eq!(
            served(&first, CommandKind::Revert, false),
            Some(def("DISABLED", "on"))
        );

        let off = change(ChangeKind::Disable, Some(old), def("DISABLED", "on"));
        assert_eq!(
            served(&off, CommandKind::Disable, false),
            Some(def("DISABLED", "on"))
        );

        let record = approved(&update, &command(CommandKind::Enable, false)).unwrap();
        assert_eq!(record.proposed, Some(new));
        assert_eq!(record.causation_event_id, update.event_id);
        assert_eq!(record.flag_key(), "shop/production/checkout-v2");
    }

    #[test]
    fn a_change_that_is_not_a_flagd_definition_approves_nothing() {
        let mut plain = flag_change_example();
        assert_eq!(served(&plain, CommandKind::Enable, false), None);
        plain.value_format = Some(ValueFormat::Flagd);
        // `to` is `true`, not a definition.
        assert_eq!(served(&plain, CommandKind::Enable, false), None);
    }
}
