//! The bytes a receiver gets for one notification: a structured-mode CloudEvent for a
//! `webhook` receiver, a `{"text": ...}` message for a Slack-compatible one.
//!
//! The rule that keeps retries safe: a notification's body is the same on every try and
//! after every redelivery (it depends only on the source record and the receiver), so
//! a receiver that keys on `Idempotency-Key` / `webhook-id` never sees one key with two
//! payloads (the IETF draft's 422 case). Only `webhook-timestamp` and the signature change
//! per try.
//!
//! The Slack text uses only what Slack, Mattermost and Discord's `/slack` endpoint all
//! render: plain lines, `` `code` ``, `<url|label>` links, with `&`, `<`, `>` escaped
//! (Slack's "Formatting text for app surfaces"); no `*bold*`, which Mattermost shows as is.

use serde_json::json;

use super::event::Notification;
use crate::config::{EventKind, ReceiverKind};

/// The CloudEvent `source` of notifications.
pub const SOURCE: &str = "/chaosgate/notify";

/// The CloudEvent type of a notification of `kind`:
/// `dev.chaosgate.notification.<kind>.v1`.
pub fn event_type(kind: EventKind) -> String {
    format!("dev.chaosgate.notification.{}.v1", kind.as_str())
}

/// The body and its content type for a receiver of `kind`, with `key` as the
/// notification's id.
pub fn body(kind: ReceiverKind, notification: &Notification, key: &str) -> (Vec<u8>, &'static str) {
    match kind {
        ReceiverKind::Webhook => (
            cloud_event(notification, key).to_string().into_bytes(),
            "application/cloudevents+json",
        ),
        ReceiverKind::Slack => (
            json!({ "text": slack_text(notification) })
                .to_string()
                .into_bytes(),
            "application/json",
        ),
    }
}

/// The structured-mode CloudEvent (JSON) of `notification`: `id` = `key`, `subject` =
/// the flag (`project/environment/key`), `time` = the source record's, `data` = the
/// facts.
pub fn cloud_event(notification: &Notification, key: &str) -> serde_json::Value {
    let mut event = json!({
        "specversion": "1.0",
        "id": key,
        "source": SOURCE,
        "type": event_type(notification.kind),
        "subject": notification.facts.flag.path(),
        "datacontenttype": "application/json",
        "data": notification.facts,
    });
    if let (Some(time), Some(object)) = (notification.time, event.as_object_mut()) {
        object.insert(
            "time".into(),
            time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                .into(),
        );
    }
    event
}

/// `text` with Slack's three control characters escaped.
fn escaped(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The readable message: a headline naming the event and the flag, the reason, the
/// pipeline, and the link to the execution in the view.
pub fn slack_text(notification: &Notification) -> String {
    let facts = &notification.facts;
    let flag = format!("`{}`", escaped(&facts.flag.path()));
    let headline = match notification.kind {
        EventKind::CommandIssued => format!(
            ":information_source: chaosgate issued `{}` for {flag}{}",
            escaped(facts.command.as_deref().unwrap_or("a command")),
            if facts.dry_run { " (dry run)" } else { "" }
        ),
        EventKind::StepFailed => format!(
            ":red_circle: chaosgate: step `{}` {} for {flag}",
            escaped(facts.step.as_deref().unwrap_or("?")),
            escaped(facts.status.as_deref().unwrap_or("failed"))
        ),
        EventKind::GuardFired => format!(":rotating_light: chaosgate: guard fired for {flag}"),
        EventKind::ApprovalNeeded => format!(":raised_hand: chaosgate: approval needed for {flag}"),
        EventKind::FaultNotReverted => format!(
            ":warning: chaosgate: fault not reverted ({}) for {flag}",
            escaped(&facts.faults.join(", "))
        ),
    };
    let mut lines = vec![headline, escaped(&facts.reason)];
    if let Some(pipeline) = &facts.pipeline_id {
        lines.push(format!("pipeline `{}`", escaped(pipeline)));
    }
    if let Some(link) = &facts.link {
        lines.push(format!(
            "<{}|Open the execution in the chaos experiments view>",
            link.replace('|', "%7C").replace('>', "%3E")
        ));
    }
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connect::notify::event::{Facts, FlagFacts};

    fn notification() -> Notification {
        Notification {
            kind: EventKind::StepFailed,
            source_id: "r-1".into(),
            time: None,
            facts: Facts {
                event: EventKind::StepFailed,
                flag: FlagFacts {
                    project: "shop".into(),
                    environment: "production".into(),
                    key: "checkout".into(),
                },
                pipeline_id: Some("risky-gate".into()),
                pipeline_execution_id: Some("e-1".into()),
                command: None,
                command_id: None,
                dry_run: false,
                reason: "score 40 < 80 & probe <down>".into(),
                stage: Some("s".into()),
                step: Some("kill-db".into()),
                run_id: Some("r-1".into()),
                status: Some("failed".into()),
                faults: Vec::new(),
                link: Some("http://view.example/executions/e-1".into()),
            },
        }
    }

    #[test]
    fn the_slack_text_is_escaped_and_links_to_the_view() {
        let text = slack_text(&notification());
        assert_eq!(
            text,
            ":red_circle: chaosgate: step `kill-db` failed for `shop/production/checkout`\n\
             score 40 &lt; 80 &amp; probe &lt;down&gt;\n\
             pipeline `risky-gate`\n\
             <http://view.example/executions/e-1|Open the execution in the chaos experiments view>"
        );
    }

    #[test]
    fn the_webhook_body_is_a_structured_cloud_event() {
        let event = cloud_event(&notification(), "k-1");
        assert_eq!(event["id"], "k-1");
        assert_eq!(event["type"], "dev.chaosgate.notification.step_failed.v1");
        assert_eq!(event["subject"], "shop/production/checkout");
        assert_eq!(event["data"]["event"], "step_failed");
        assert_eq!(event["data"]["flag"]["key"], "checkout");
        assert!(event["data"].get("command").is_none());
    }
}
