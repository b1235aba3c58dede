//! Unleash webhook events as flag changes: which event types count, which field becomes
//! which, and why a body is refused. Plain data and functions; the HTTP and Kafka around
//! them are [`super::webhook`]'s.
//!
//! The body is what Unleash's webhook integration posts when it has no body template: the
//! event as JSON (unleash-server 7.5, `dist/lib/addons/webhook.js`, `JSON.stringify(event)`;
//! the event classes in `dist/lib/types/events.js`), e.g.
//! `{"id":13,"type":"feature-environment-enabled","createdBy":"admin",
//! "createdAt":"2026-11-30T08:23:32.086Z","featureName":"checkout-v2","project":"default",
//! "environment":"production","data":null,"preData":null,...}`.
//!
//! | Unleash `type` | `change.kind` | `change.from` | `change.to` |
//! |---|---|---|---|
//! | `feature-environment-enabled` | `enable` | `false` | `true` |
//! | `feature-environment-disabled` | `disable` | `true` | `false` |
//! | `feature-strategy-add`, `-update`, `-remove` | `update` | `preData` | `data` |
//!
//! (`from`/`to` of an `update` are left out when Unleash's `preData`/`data` is absent or
//! `null`: an added strategy has no `preData`, a removed one no `data`.)
//!
//! `project` ← `project`, `environment` ← `environment`, `flag` ← `featureName`, `actor`
//! ← `createdBy`, `occurred_at` ← `createdAt`, `event_id` = `unleash:<instance>:<id>`, so
//! the same Unleash event posted twice is the same flag change.
//!
//! The rule that keeps it right: nothing is guessed. A field that is missing or of the
//! wrong type, a name outside chaosgate's key-name rule, a body that is not a JSON object,
//! or a `type` not in the table is a [`Refusal`] naming the field, never a default.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::contract::flag_change::{KEY_RULE, is_key_name};
use crate::contract::{Change, ChangeKind, FlagChange};

/// The Unleash event types this bridge maps, in the order of the table above: what the
/// webhook integration should be subscribed to.
pub const EVENT_TYPES: [&str; 5] = [
    "feature-environment-enabled",
    "feature-environment-disabled",
    "feature-strategy-add",
    "feature-strategy-update",
    "feature-strategy-remove",
];

/// Why a webhook body yields no flag change. Each carries a one-line reason naming the
/// field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The body is not a JSON object (answered 400, outcome `rejected`).
    NotJson(String),
    /// A JSON event with a field missing, of the wrong type, or breaking the key-name
    /// rule (answered 422, outcome `rejected`).
    Invalid(String),
    /// A JSON event whose `type` is not one of [`EVENT_TYPES`] (answered 422, outcome
    /// `ignored`).
    UnknownType(String),
}

impl Refusal {
    /// The one-line reason.
    pub fn reason(&self) -> &str {
        match self {
            Refusal::NotJson(reason) | Refusal::Invalid(reason) | Refusal::UnknownType(reason) => {
                reason
            }
        }
    }

    /// The HTTP status answered: 400 for a body that is not a JSON object, 422 for a JSON
    /// event that cannot be mapped.
    pub fn status(&self) -> u16 {
        match self {
            Refusal::NotJson(_) => 400,
            Refusal::Invalid(_) | Refusal::UnknownType(_) => 422,
        }
    }

    /// The outcome of the `chaosgate_unleash_webhooks_total` metric: `rejected`, or
    /// `ignored` for an unknown type.
    pub fn outcome(&self) -> &'static str {
        match self {
            Refusal::NotJson(_) | Refusal::Invalid(_) => "rejected",
            Refusal::UnknownType(_) => "ignored",
        }
    }
}

/// The flag change of Unleash event `body` from the server named `instance`
/// ([`crate::config::UnleashConfig::instance_name`]), or why there is none.
pub fn flag_change(body: &[u8], instance: &str) -> Result<FlagChange, Refusal> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| Refusal::NotJson(format!("the body is not JSON: {e}")))?;
    let Value::Object(event) = value else {
        return Err(Refusal::NotJson(format!(
            "the body is JSON {}, not an object (an Unleash event)",
            json_kind(&value)
        )));
    };
    let event_type = text(&event, "type")?;
    let kind = match event_type {
        "feature-environment-enabled" => ChangeKind::Enable,
        "feature-environment-disabled" => ChangeKind::Disable,
        "feature-strategy-add" | "feature-strategy-update" | "feature-strategy-remove" => {
            ChangeKind::Update
        }
        other => {
            return Err(Refusal::UnknownType(format!(
                "type: {} is not an event type chaosgate maps (it maps {}); subscribe the \
                 webhook integration to those only",
                shown(other),
                EVENT_TYPES.join(", ")
            )));
        }
    };
    let id = event
        .get("id")
        .ok_or_else(|| missing("id"))?
        .as_u64()
        .ok_or_else(|| wrong_type(&event, "id", "a whole number, 0 or more"))?;
    let actor = text(&event, "createdBy")?;
    let created_at = text(&event, "createdAt")?;
    let occurred_at = DateTime::parse_from_rfc3339(created_at)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            Refusal::Invalid(format!(
                "createdAt: {} is not an RFC 3339 timestamp ({e})",
                shown(created_at)
            ))
        })?;
    let project = key_name(&event, "project")?;
    let environment = key_name(&event, "environment")?;
    let flag = key_name(&event, "featureName")?;
    let change = match kind {
        ChangeKind::Enable => Change {
            kind,
            from: Some(Value::Bool(false)),
            to: Some(Value::Bool(true)),
        },
        ChangeKind::Disable => Change {
            kind,
            from: Some(Value::Bool(true)),
            to: Some(Value::Bool(false)),
        },
        ChangeKind::Update => Change {
            kind,
            from: present(&event, "preData"),
            to: present(&event, "data"),
        },
    };
    Ok(FlagChange {
        event_id: event_id(instance, id),
        occurred_at,
        project: project.to_string(),
        environment: environment.to_string(),
        flag: flag.to_string(),
        change,
        pipeline_id: None,
        actor: Some(actor.to_string()),
        account: None,
        value_format: None,
    })
}

/// The transaction group of a strategy event (`feature-strategy-add`, `-update`,
/// `-remove`) in `body`: its `groupId` when `groupType` is `transaction`. `None` for
/// other events, or when Unleash wrote no group.
///
/// Why: the first time a flag is turned on in an environment with no strategy, Unleash
/// adds its default strategy in the same transaction and reports both events
/// (`feature-strategy-add`, then `feature-environment-enabled`, one `groupId`). One click
/// must be one gated change, so the strategy event of such a group is not gated on its
/// own ([`is_part_of_toggle`]).
pub fn strategy_group(body: &[u8]) -> Option<String> {
    let event: Value = serde_json::from_slice(body).ok()?;
    let event_type = event.get("type")?.as_str()?;
    if !event_type.starts_with("feature-strategy-")
        || event.get("groupType").and_then(Value::as_str) != Some("transaction")
    {
        return None;
    }
    let group = event.get("groupId")?.as_str()?;
    (!group.is_empty()).then(|| group.to_string())
}

/// Whether `events` (the events of one transaction group, as Unleash's
/// `GET /api/admin/search/events` lists them) turn `change`'s flag on or off in its
/// environment: then `change`, a strategy event of that group, is part of that toggle.
pub fn is_part_of_toggle(events: &[Value], change: &FlagChange) -> bool {
    events.iter().any(|event| {
        matches!(
            event.get("type").and_then(Value::as_str),
            Some("feature-environment-enabled" | "feature-environment-disabled")
        ) && event.get("featureName").and_then(Value::as_str) == Some(change.flag.as_str())
            && event.get("environment").and_then(Value::as_str) == Some(change.environment.as_str())
            && event.get("project").and_then(Value::as_str) == Some(change.project.as_str())
    })
}

/// The flag change's `event_id` for Unleash event `id` of server `instance`:
/// `unleash:<instance>:<id>`.
pub fn event_id(instance: &str, id: u64) -> String {
    format!("unleash:{instance}:{id}")
}

/// The Unleash event id in `event_id` when it is one of server `instance`'s
/// ([`event_id`]'s `unleash:<instance>:<id>`), else `None` (a change from elsewhere).
pub fn unleash_event(event_id: &str, instance: &str) -> Option<u64> {
    event_id
        .strip_prefix("unleash:")?
        .strip_prefix(instance)?
        .strip_prefix(':')?
        .parse()
        .ok()
}

/// Whether `change` was made by chaosgate itself (its `actor` is `own_actor`, the
/// `createdBy` Unleash records for chaosgate's token): the loop guard.
pub fn is_own(change: &FlagChange, own_actor: &str) -> bool {
    change.actor.as_deref() == Some(own_actor)
}

/// The CloudEvent `source` of the flag changes of server `instance`.
pub fn source(instance: &str) -> String {
    format!("/chaosgate/connect/unleash/{instance}")
}

fn missing(field: &str) -> Refusal {
    Refusal::Invalid(format!("{field}: missing"))
}

fn wrong_type(event: &Map<String, Value>, field: &str, expected: &str) -> Refusal {
    let found = event.get(field).map_or("nothing", json_kind);
    Refusal::Invalid(format!("{field}: {found}, expected {expected}"))
}

fn text<'a>(event: &'a Map<String, Value>, field: &str) -> Result<&'a str, Refusal> {
    event
        .get(field)
        .ok_or_else(|| missing(field))?
        .as_str()
        .ok_or_else(|| wrong_type(event, field, "text"))
}

/// `field` as a key name, or a refusal saying which rule it breaks.
fn key_name<'a>(event: &'a Map<String, Value>, field: &str) -> Result<&'a str, Refusal> {
    let name = text(event, field)?;
    if is_key_name(name) {
        return Ok(name);
    }
    Err(Refusal::Invalid(format!(
        "{field}: {} ({} characters) is not a key name: {KEY_RULE}; Unleash also allows \
         ~ ! * ' ( ) and a leading '.' or '-', which chaosgate refuses: rename it in Unleash",
        shown(name),
        name.chars().count()
    )))
}

/// `field`'s value, `None` when absent or `null`.
fn present(event: &Map<String, Value>, field: &str) -> Option<Value> {
    event.get(field).filter(|v| !v.is_null()).cloned()
}

/// `text` as a JSON string cut to 200 characters: one line, whatever it holds.
fn shown(text: &str) -> String {
    let cut: String = text.chars().take(200).collect();
    Value::String(cut).to_string()
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "text",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The body Unleash 7.5.1 posted on this machine for a flag turned on by `admin`.
    const ENABLED: &str = r#"{"id":13,"type":"feature-environment-enabled","createdBy":"admin","createdAt":"2026-11-30T08:23:32.086Z","createdByUserId":-42,"data":null,"preData":null,"tags":[],"featureName":"checkout-v2","project":"default","environment":"production","groupType":"transaction","groupId":"01M8NRTMZQGSGK45ADEB6169F3"}"#;

    fn body(edit: impl FnOnce(&mut Map<String, Value>)) -> Vec<u8> {
        let mut event: Value = serde_json::from_str(ENABLED).unwrap();
        edit(event.as_object_mut().unwrap());
        event.to_string().into_bytes()
    }

    fn invalid(body: &[u8]) -> String {
        match flag_change(body, "u:4242") {
            Err(Refusal::Invalid(reason)) => reason,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_real_enabled_event_maps_field_by_field() {
        let change = flag_change(ENABLED.as_bytes(), "unleash:4242").unwrap();
        assert_eq!(change.event_id, "unleash:unleash:4242:13");
        assert_eq!(change.project, "default");
        assert_eq!(change.environment, "production");
        assert_eq!(change.flag, "checkout-v2");
        assert_eq!(change.flag_key(), "default/production/checkout-v2");
        assert_eq!(change.actor.as_deref(), Some("admin"));
        assert_eq!(
            change.occurred_at.to_rfc3339(),
            "2026-11-30T08:23:32.086+00:00"
        );
        assert_eq!(
            change.change,
            Change {
                kind: ChangeKind::Enable,
                from: Some(json!(false)),
                to: Some(json!(true)),
            }
        );
        assert!(!is_own(&change, "chaosgate"));
        assert!(is_own(&change, "admin"));
    }

    #[test]
    fn disabled_and_strategy_events() {
        let disabled = body(|e| {
            e.insert("type".into(), "feature-environment-disabled".into());
        });
        let change = flag_change(&disabled, "i").unwrap().change;
        assert_eq!(change.kind, ChangeKind::Disable);
        assert_eq!(
            (change.from, change.to),
            (Some(json!(true)), Some(json!(false)))
        );

        let old = json!({"id": "s1", "name": "flexibleRollout", "parameters": {"rollout": "10"}});
        let new = json!({"id": "s1", "name": "flexibleRollout", "parameters": {"rollout": "50"}});
        let (o, n) = (old.clone(), new.clone());
        let update = body(move |e| {
            e.insert("type".into(), "feature-strategy-update".into());
            e.insert("preData".into(), o);
            e.insert("data".into(), n);
        });
        let change = flag_change(&update, "i").unwrap().change;
        assert_eq!(change.kind, ChangeKind::Update);
        assert_eq!(
            (change.from, change.to),
            (Some(old.clone()), Some(new.clone()))
        );

        // An added strategy has no preData (absent), a removed one no data.
        let n = new.clone();
        let add = body(move |e| {
            e.insert("type".into(), "feature-strategy-add".into());
            e.remove("preData");
            e.insert("data".into(), n);
        });
        let change = flag_change(&add, "i").unwrap().change;
        assert_eq!((change.from, change.to), (None, Some(new)));
        let o = old.clone();
        let remove = body(move |e| {
            e.insert("type".into(), "feature-strategy-remove".into());
            e.insert("preData".into(), o);
            e.remove("data");
        });
        let change = flag_change(&remove, "i").unwrap().change;
        assert_eq!((change.from, change.to), (Some(old), None));
    }

    #[test]
    fn a_missing_or_mistyped_field_is_named() {
        for field in [
            "id",
            "createdBy",
            "createdAt",
            "project",
            "environment",
            "featureName",
        ] {
            let reason = invalid(&body(|e| {
                e.remove(field);
            }));
            assert_eq!(reason, format!("{field}: missing"));
        }
        assert_eq!(
            invalid(&body(|e| {
                e.insert("id".into(), "13".into());
            })),
            "id: text, expected a whole number, 0 or more"
        );
        assert_eq!(
            invalid(&body(|e| {
                e.insert("id".into(), json!(-1));
            })),
            "id: a number, expected a whole number, 0 or more"
        );
        assert_eq!(
            invalid(&body(|e| {
                e.insert("featureName".into(), Value::Null);
            })),
            "featureName: null, expected text"
        );
        assert_eq!(
            invalid(&body(|e| {
                e.insert("createdBy".into(), json!({"name": "admin"}));
            })),
            "createdBy: an object, expected text"
        );
        let reason = invalid(&body(|e| {
            e.insert("createdAt".into(), "yesterday".into());
        }));
        assert!(
            reason.starts_with("createdAt: \"yesterday\" is not an RFC 3339 timestamp"),
            "{reason}"
        );
    }

    #[test]
    fn names_unleash_allows_but_chaosgate_refuses() {
        for (field, name) in [
            ("featureName", "new~flag"),
            ("featureName", "(beta)"),
            ("featureName", ".hidden"),
            ("project", "it's"),
            ("environment", "-prod"),
        ] {
            let reason = invalid(&body(|e| {
                e.insert(field.into(), name.into());
            }));
            assert!(
                reason.starts_with(&format!(
                    "{field}: {} ({} characters) is not a key name: 1 to 128",
                    Value::String(name.into()),
                    name.chars().count()
                )),
                "{reason}"
            );
            assert!(reason.contains("Unleash also allows"), "{reason}");
        }
        let reason = invalid(&body(|e| {
            e.insert("featureName".into(), "x\nINFO forged".into());
        }));
        assert!(!reason.contains('\n'), "{reason}");
    }

    #[test]
    fn not_json_and_unknown_types() {
        let refusal = flag_change(b"{\"id\": 1,", "i").unwrap_err();
        assert_eq!((refusal.status(), refusal.outcome()), (400, "rejected"));
        assert!(
            refusal.reason().starts_with("the body is not JSON: "),
            "{refusal:?}"
        );
        let refusal = flag_change(b"[1]", "i").unwrap_err();
        assert_eq!(
            refusal,
            Refusal::NotJson("the body is JSON an array, not an object (an Unleash event)".into())
        );
        let refusal = flag_change(
            &body(|e| {
                e.insert("type".into(), "feature-created".into());
            }),
            "i",
        )
        .unwrap_err();
        assert_eq!((refusal.status(), refusal.outcome()), (422, "ignored"));
        assert!(
            refusal
                .reason()
                .starts_with("type: \"feature-created\" is not an event type chaosgate maps"),
            "{refusal:?}"
        );
        let refusal = flag_change(
            &body(|e| {
                e.remove("type");
            }),
            "i",
        )
        .unwrap_err();
        assert_eq!(refusal, Refusal::Invalid("type: missing".into()));
        assert_eq!((refusal.status(), refusal.outcome()), (422, "rejected"));
    }

    #[test]
    fn a_strategy_event_made_with_a_toggle_is_part_of_it() {
        // As Unleash 7.5.1 wrote them here for one click that turned a flag with no
        // strategy on: the default strategy, then the toggle, one transaction group.
        let strategy = body(|e| {
            e.insert("id".into(), json!(8));
            e.insert("type".into(), json!("feature-strategy-add"));
            e.insert(
                "data".into(),
                json!({"id": "436f", "name": "flexibleRollout"}),
            );
        });
        let group = strategy_group(&strategy).unwrap();
        assert_eq!(group, "01M8NRTMZQGSGK45ADEB6169F3");
        assert_eq!(
            strategy_group(ENABLED.as_bytes()),
            None,
            "not a strategy event"
        );
        let change = flag_change(&strategy, "u:4242").unwrap();
        let toggle: Value = serde_json::from_str(ENABLED).unwrap();
        assert!(is_part_of_toggle(std::slice::from_ref(&toggle), &change));
        let mut elsewhere = toggle.clone();
        elsewhere["environment"] = json!("development");
        assert!(!is_part_of_toggle(&[elsewhere], &change));
        let strategy_only: Value = serde_json::from_slice(&strategy).unwrap();
        assert!(!is_part_of_toggle(&[strategy_only], &change));
        let ungrouped = body(|e| {
            e.insert("type".into(), json!("feature-strategy-update"));
            e.remove("groupType");
        });
        assert_eq!(strategy_group(&ungrouped), None);
    }

    #[test]
    fn an_event_id_of_this_server_gives_unleash_s_id_back() {
        let id = event_id("unleash:4242", 13);
        assert_eq!(unleash_event(&id, "unleash:4242"), Some(13));
        assert_eq!(unleash_event(&id, "unleash"), None, "another server");
        assert_eq!(unleash_event("0b6f3f0e-4d5c", "unleash:4242"), None);
        assert_eq!(
            unleash_event("unleash:unleash:4242:x", "unleash:4242"),
            None
        );
    }
}
