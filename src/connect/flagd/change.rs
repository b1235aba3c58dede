//! Which flag change a proposed definition makes, if any: the pure decision behind the
//! proposed folder ([`super::proposed`]).
//!
//! The rule: `from` is the definition served now (the newest approved-flag record's
//! `definition`, none when never approved) and `to` is the proposal. Nothing is proposed
//! when `to` equals what is served, or equals the last proposal a command decided (the
//! record's `proposed`: a failed gate is not asked again on every scan). The kind:
//! `enable` when `to` is `ENABLED` and `from` is absent or `DISABLED`; `disable` when
//! `to` is `DISABLED` and `from` is `ENABLED`, or a new flag is proposed `DISABLED`;
//! `update` otherwise. Definitions are compared in their canonical form
//! ([`crate::flagd::definition::canonical`]), so the order of keys in a file never makes
//! a change.
//!
//! The `event_id` is `flagd:` and a UUIDv5 of `project/environment/flag`, `from` and `to`
//! (canonical), so a rescan or a restart derives the same id for the same change.

use serde_json::Value;
use uuid::Uuid;

use crate::contract::{ApprovedFlag, ChangeKind};
use crate::flagd::definition::canonical_text;

/// flagd's `state` of a flag that is on.
pub const ENABLED: &str = "ENABLED";

/// One flag change to propose: its kind, `from`, `to` and derived `event_id`.
#[derive(Debug, Clone, PartialEq)]
pub struct Proposal {
    /// `enable`, `disable` or `update`.
    pub kind: ChangeKind,
    /// The definition served now, if any.
    pub from: Option<Value>,
    /// The proposed definition.
    pub to: Value,
    /// `flagd:` + UUIDv5 of the flag key, `from` and `to`.
    pub event_id: String,
}

/// The change `to` makes to flag `flag_key` (`project/environment/flag`) given its newest
/// approved record `served`, or `None` when there is nothing to decide.
pub fn propose(flag_key: &str, to: &Value, served: Option<&ApprovedFlag>) -> Option<Proposal> {
    let to_text = canonical_text(to);
    if let Some(served) = served {
        let decided = served.proposed.as_ref().map(canonical_text);
        if canonical_text(&served.definition) == to_text || decided.as_deref() == Some(&to_text) {
            return None;
        }
    }
    let from = served.map(|record| record.definition.clone());
    let kind = match (is_enabled(to), from.as_ref().map(is_enabled)) {
        (true, None | Some(false)) => ChangeKind::Enable,
        (false, None | Some(true)) => ChangeKind::Disable,
        _ => ChangeKind::Update,
    };
    let event_id = event_id(flag_key, from.as_ref(), &to_text);
    Some(Proposal {
        kind,
        from,
        to: to.clone(),
        event_id,
    })
}

/// Whether a definition's `state` is `ENABLED`.
pub fn is_enabled(definition: &Value) -> bool {
    definition.get("state").and_then(Value::as_str) == Some(ENABLED)
}

/// `flagd:` + UUIDv5 (in a namespace of chaosgate's flagd proposals) of the flag key, the
/// canonical `from` (`null` when absent) and the canonical `to`, one per line.
fn event_id(flag_key: &str, from: Option<&Value>, to_text: &str) -> String {
    let namespace = Uuid::new_v5(
        &Uuid::NAMESPACE_URL,
        b"https://chaosgate.dev/connect/flagd/proposal",
    );
    let from_text = from.map_or_else(|| "null".to_string(), canonical_text);
    let name = format!("{flag_key}\n{from_text}\n{to_text}");
    format!("flagd:{}", Uuid::new_v5(&namespace, name.as_bytes()))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::contract::approved_flag::approved_flag_example;

    fn def(state: &str, default: &str) -> Value {
        json!({"state": state, "variants": {"on": true, "off": false}, "defaultVariant": default})
    }

    fn served(definition: Value, proposed: Option<Value>) -> ApprovedFlag {
        ApprovedFlag {
            definition,
            proposed,
            ..approved_flag_example()
        }
    }

    const KEY: &str = "shop/prod/checkout";

    #[test]
    fn kinds_follow_the_state_change() {
        let on = def("ENABLED", "on");
        let off = def("DISABLED", "on");
        let kind = |to: &Value, from: Option<&ApprovedFlag>| propose(KEY, to, from).unwrap().kind;
        assert_eq!(kind(&on, None), ChangeKind::Enable);
        assert_eq!(
            kind(&off, None),
            ChangeKind::Disable,
            "a new flag proposed off"
        );
        assert_eq!(
            kind(&on, Some(&served(off.clone(), None))),
            ChangeKind::Enable
        );
        assert_eq!(
            kind(&off, Some(&served(on.clone(), None))),
            ChangeKind::Disable
        );
        let retarget = def("ENABLED", "off");
        assert_eq!(
            kind(&retarget, Some(&served(on.clone(), None))),
            ChangeKind::Update
        );
        let off_other = def("DISABLED", "off");
        assert_eq!(
            kind(&off_other, Some(&served(off.clone(), None))),
            ChangeKind::Update
        );
        let change = propose(KEY, &on, Some(&served(off.clone(), None))).unwrap();
        assert_eq!(change.from, Some(off));
        assert_eq!(change.to, on);
    }

    #[test]
    fn nothing_when_served_or_decided() {
        let on = def("ENABLED", "on");
        let off = def("DISABLED", "on");
        // Served as proposed, keys in another order.
        let reordered: Value = serde_json::from_str(
            r#"{"defaultVariant":"on","variants":{"off":false,"on":true},"state":"ENABLED"}"#,
        )
        .unwrap();
        assert_eq!(propose(KEY, &on, Some(&served(reordered, None))), None);
        // A failed gate: served DISABLED, the proposal it decided stays in the folder.
        assert_eq!(
            propose(KEY, &on, Some(&served(off.clone(), Some(on.clone())))),
            None
        );
        // A new proposal after that is a change again.
        let next = def("ENABLED", "off");
        assert!(propose(KEY, &next, Some(&served(off, Some(on)))).is_some());
    }

    #[test]
    fn the_id_is_the_same_for_the_same_change_only() {
        let on = def("ENABLED", "on");
        let off = def("DISABLED", "on");
        let id = |key: &str, to: &Value, from: Option<&ApprovedFlag>| {
            propose(key, to, from).unwrap().event_id
        };
        let first = id(KEY, &on, None);
        assert!(first.starts_with("flagd:"), "{first}");
        assert_eq!(first, id(KEY, &on, None));
        assert_ne!(first, id("shop/prod/other", &on, None));
        assert_ne!(first, id(KEY, &on, Some(&served(off, None))));
        assert_ne!(first, id(KEY, &def("ENABLED", "off"), None));
    }
}
