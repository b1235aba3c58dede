//! Which alerts turn which flags off: each firing alert that a rule matches becomes one
//! `disable` flag change per flag of the rule.
//!
//! The rules that keep it right:
//! - the first rule whose labels the alert carries (all of them, equal) decides; the
//!   flags come from that rule, or from a label of the alert the rule names, and then
//!   only within the rule's `allowed` globs ([`flags`]);
//! - only an alert whose own `status` is `firing` acts; a resolved one does nothing
//!   (turning the flag on again is a person's decision, gated like any `enable`);
//! - the flag change's `event_id` is a function of the alert's `fingerprint`, its
//!   `startsAt` and the flag, so the same alert posted again (Alertmanager's retries,
//!   its `group_interval` and `repeat_interval` repeats, a second receiver) yields the
//!   same event, and the worker, which derives every id from the event id, the same
//!   command id; the same alert firing again later (a new `startsAt`) is a new change.

use chrono::SecondsFormat;
use uuid::Uuid;

use super::payload::{Alert, AlertStatus};
use crate::config::{AlertmanagerRule, FlagRef};
use crate::contract::{Change, ChangeKind, FlagChange};

/// The CloudEvent `source` of the flag changes this receiver produces.
pub const SOURCE: &str = "/chaosgate/connect/alertmanager";

/// What one alert of a notification comes to.
#[derive(Debug, Clone, Copy)]
pub enum Verdict<'a> {
    /// A firing alert `rule` matches: turn its flags off.
    Disable(&'a AlertmanagerRule),
    /// A resolved alert: nothing to do.
    Resolved,
    /// A firing alert no rule matches: nothing to do.
    Unmatched,
}

/// What `alert` comes to under `rules` (see the module doc).
pub fn verdict<'a>(alert: &Alert, rules: &'a [AlertmanagerRule]) -> Verdict<'a> {
    if alert.status == AlertStatus::Resolved {
        return Verdict::Resolved;
    }
    rules
        .iter()
        .find(|rule| {
            rule.labels
                .iter()
                .all(|(name, value)| alert.labels.get(name) == Some(value))
        })
        .map_or(Verdict::Unmatched, Verdict::Disable)
}

/// The flags firing `alert` turns off under `rule`: the rule's `flags`, then the flag
/// its `flags_from_label` label names, when the rule allows it; and why the label's flag
/// is not among them, when the rule has `flags_from_label` and it is not.
pub fn flags(alert: &Alert, rule: &AlertmanagerRule) -> (Vec<FlagRef>, Option<String>) {
    let mut flags = rule.flags.clone();
    let Some(from_label) = &rule.from_label else {
        return (flags, None);
    };
    match from_label.flag(&alert.labels) {
        Ok(flag) => {
            if !flags.contains(&flag) {
                flags.push(flag);
            }
            (flags, None)
        }
        Err(why) => (flags, Some(why)),
    }
}

/// `alertmanager:` + UUIDv5 (in a namespace of chaosgate's Alertmanager receiver) of the
/// alert's fingerprint, its `startsAt` (RFC 3339 with nanoseconds, UTC) and the flag key,
/// one per line.
pub fn event_id(alert: &Alert, flag: &FlagRef) -> String {
    let namespace = Uuid::new_v5(
        &Uuid::NAMESPACE_URL,
        b"https://chaosgate.dev/connect/alertmanager/alert",
    );
    let name = format!(
        "{}\n{}\n{}",
        alert.fingerprint,
        alert.starts_at.to_rfc3339_opts(SecondsFormat::Nanos, true),
        flag.key()
    );
    format!("alertmanager:{}", Uuid::new_v5(&namespace, name.as_bytes()))
}

/// Who asks for the change: `alertmanager:<receiver>/<alertname>`.
pub fn actor(receiver: &str, alert: &Alert) -> String {
    format!("alertmanager:{receiver}/{}", alert.name())
}

/// Why, in words: `alert CheckoutErrors (fingerprint e89145d969cdbe93) firing since
/// 2026-11-30T12:35:19Z: checkout error rate 7%` (the `summary` annotation, when there
/// is one).
pub fn reason(alert: &Alert) -> String {
    let mut text = format!(
        "alert {} (fingerprint {}) firing since {}",
        alert.name(),
        alert.fingerprint,
        alert.starts_at.to_rfc3339_opts(SecondsFormat::Secs, true)
    );
    if let Some(summary) = alert.annotations.get("summary") {
        text.push_str(": ");
        text.push_str(summary);
    }
    text
}

/// The `disable` of `flag` that firing `alert`, posted to `receiver`, asks for. It
/// `occurred_at` the alert's `startsAt`, so the same alert always yields the same event.
pub fn flag_change(receiver: &str, alert: &Alert, flag: &FlagRef) -> FlagChange {
    FlagChange {
        event_id: event_id(alert, flag),
        occurred_at: alert.starts_at,
        project: flag.project.clone(),
        environment: flag.environment.clone(),
        flag: flag.flag.clone(),
        change: Change {
            kind: ChangeKind::Disable,
            from: None,
            to: Some(serde_json::Value::Bool(false)),
        },
        pipeline_id: None,
        actor: Some(actor(receiver, alert)),
        account: None,
        value_format: None,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn alert(status: AlertStatus, labels: &[(&str, &str)]) -> Alert {
        Alert {
            status,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            annotations: BTreeMap::from([("summary".into(), "error rate 7%".into())]),
            starts_at: "2026-11-30T12:35:19.107181749Z".parse().unwrap(),
            fingerprint: "e89145d969cdbe93".into(),
        }
    }

    fn flag(name: &str) -> FlagRef {
        FlagRef {
            project: "shop".into(),
            environment: "production".into(),
            flag: name.into(),
        }
    }

    fn rule(index: usize, labels: &[(&str, &str)], flags: &[&str]) -> AlertmanagerRule {
        AlertmanagerRule {
            index,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            flags: flags.iter().map(|f| flag(f)).collect(),
            from_label: None,
        }
    }

    fn decided_by(verdict: Verdict<'_>) -> Option<usize> {
        match verdict {
            Verdict::Disable(rule) => Some(rule.index),
            _ => None,
        }
    }

    #[test]
    fn the_first_rule_whose_labels_all_match_decides_and_only_firing_alerts_act() {
        let rules = [
            rule(
                0,
                &[("alertname", "CheckoutErrors"), ("severity", "page")],
                &["a"],
            ),
            rule(1, &[("alertname", "CheckoutErrors")], &["b"]),
            rule(2, &[], &["c"]),
        ];
        let page = alert(
            AlertStatus::Firing,
            &[("alertname", "CheckoutErrors"), ("severity", "page")],
        );
        assert_eq!(decided_by(verdict(&page, &rules)), Some(0));
        let warn = alert(
            AlertStatus::Firing,
            &[("alertname", "CheckoutErrors"), ("severity", "warning")],
        );
        assert_eq!(decided_by(verdict(&warn, &rules)), Some(1));
        let other = alert(AlertStatus::Firing, &[("alertname", "Other")]);
        assert_eq!(decided_by(verdict(&other, &rules)), Some(2));
        assert!(matches!(verdict(&other, &rules[..2]), Verdict::Unmatched));
        let resolved = alert(AlertStatus::Resolved, &[("alertname", "CheckoutErrors")]);
        assert!(matches!(verdict(&resolved, &rules), Verdict::Resolved));
    }

    #[test]
    fn a_label_names_a_flag_only_within_the_allowed_globs() {
        let section: crate::config::AlertmanagerConfig = toml::from_str(
            r#"
token = "t"
project = "shop"
environment = "production"
[[rules]]
match = { severity = "page" }
flags = ["always"]
flags_from_label = "flag"
allowed = ["shop/production/checkout-*", "shop/staging/*"]
"#,
        )
        .unwrap();
        let rules = section.resolved_rules().unwrap();
        let names = |labels: &[(&str, &str)]| {
            let (flags, refused) = flags(&alert(AlertStatus::Firing, labels), &rules[0]);
            let keys: Vec<String> = flags.iter().map(FlagRef::key).collect();
            (keys, refused)
        };
        let (keys, refused) = names(&[("severity", "page"), ("flag", "checkout-v2")]);
        assert_eq!(
            keys,
            ["shop/production/always", "shop/production/checkout-v2"]
        );
        assert_eq!(refused, None);
        let (keys, _) = names(&[("flag", "staging/search-v2")]);
        assert_eq!(keys[1], "shop/staging/search-v2");
        for (label, why) in [
            ("search-v2", "no allowed glob"),
            (
                "shop/production/checkout-v2/x",
                "not \"project/environment/flag\"",
            ),
            ("other/production/checkout-v2", "no allowed glob"),
            ("bad name", "not a key name"),
        ] {
            let (keys, refused) = names(&[("flag", label)]);
            assert_eq!(keys, ["shop/production/always"], "{label}");
            let refused = refused.unwrap_or_default();
            assert!(refused.contains(why), "{label}: {refused}");
        }
        let (_, refused) = names(&[("severity", "page")]);
        assert!(refused.unwrap_or_default().contains("no label \"flag\""));
    }

    #[test]
    fn the_event_id_is_the_alert_episode_and_the_flag() {
        let firing = alert(AlertStatus::Firing, &[("alertname", "CheckoutErrors")]);
        let id = event_id(&firing, &flag("a"));
        assert!(id.starts_with("alertmanager:"), "{id}");
        assert_eq!(
            id,
            event_id(&firing.clone(), &flag("a")),
            "same alert, same id"
        );
        assert_ne!(id, event_id(&firing, &flag("b")), "another flag");
        let mut again = firing.clone();
        again.starts_at = "2026-11-30T12:35:19.107181750Z".parse().unwrap();
        assert_ne!(id, event_id(&again, &flag("a")), "a new episode (startsAt)");
        let mut other = firing.clone();
        other.fingerprint = "0000000000000001".into();
        assert_ne!(id, event_id(&other, &flag("a")), "another alert");
    }

    #[test]
    fn the_change_is_a_disable_by_the_alert() {
        let firing = alert(AlertStatus::Firing, &[("alertname", "CheckoutErrors")]);
        let change = flag_change("chaosgate", &firing, &flag("checkout-v2"));
        assert_eq!(change.change.kind, ChangeKind::Disable);
        assert_eq!(change.flag_key(), "shop/production/checkout-v2");
        assert_eq!(
            change.actor.as_deref(),
            Some("alertmanager:chaosgate/CheckoutErrors")
        );
        assert_eq!(change.occurred_at, firing.starts_at);
        assert_eq!(
            reason(&firing),
            "alert CheckoutErrors (fingerprint e89145d969cdbe93) firing since 2026-11-30T12:35:19Z: error rate 7%"
        );
    }
}
