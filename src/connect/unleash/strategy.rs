//! Putting an Unleash activation strategy back: the `revert` of a strategy change, whose
//! value is the strategy as it was (the webhook's `preData`, the change's `from`).
//!
//! Endpoints (Unleash 7, `updateFeatureStrategy`, `getFeatureStrategies`,
//! `addFeatureStrategy`): `PUT`, `GET` and `POST`
//! `/api/admin/projects/{project}/features/{flag}/environments/{environment}/strategies[/{id}]`.
//!
//! The rule: the strategy with the old one's `id` gets the old configuration back
//! (`PUT`); when Unleash no longer has that id (the change removed the strategy: `404`),
//! the old strategy is added again (`POST`, Unleash gives it a new id), unless the
//! environment already has a strategy with the same name, parameters and constraints
//! (this revert was applied before and is delivered again), so a revert applied twice
//! adds it once.

use reqwest::Method;
use serde_json::{Map, Value};

use super::admin::environment_path;
use super::{AdminApi, AdminError};

/// The fields of a strategy Unleash takes back in `PUT` and `POST`
/// (`updateFeatureStrategySchema`, `createFeatureStrategySchema`).
const FIELDS: [&str; 8] = [
    "name",
    "title",
    "disabled",
    "sortOrder",
    "constraints",
    "variants",
    "parameters",
    "segments",
];

/// The old strategy's `id` and its configuration as a request body, or `None` when
/// `strategy` is not an Unleash strategy (an object with a text `id` and `name`).
pub fn parse(strategy: &Value) -> Option<(String, Value)> {
    let id = strategy.get("id")?.as_str()?;
    strategy.get("name")?.as_str()?;
    let body: Map<String, Value> = FIELDS
        .iter()
        .filter_map(|field| Some((field.to_string(), strategy.get(*field)?.clone())))
        .collect();
    Some((id.to_string(), Value::Object(body)))
}

/// Puts `strategy` (an old strategy, see [`parse`]) back on `flag` in `environment` of
/// `project`. Errors as the Admin API's ([`AdminError`]); a flag Unleash does not have is
/// [`AdminError::Permanent`] (404).
pub async fn put_back(
    admin: &AdminApi,
    project: &str,
    environment: &str,
    flag: &str,
    id: &str,
    body: &Value,
) -> Result<(), AdminError> {
    let path: Vec<&str> = environment_path(project, environment, flag)
        .into_iter()
        .chain(["strategies"])
        .collect();
    let with_id: Vec<&str> = path.iter().copied().chain([id]).collect();
    match admin.send(Method::PUT, &with_id, Some(body)).await {
        Err(AdminError::Permanent { status: 404, .. }) => {}
        other => return other.map(drop),
    }
    // Removed: added again, once.
    let present = admin.send(Method::GET, &path, None).await?;
    let present: Value = serde_json::from_str(&present).map_err(|e| AdminError::Transient {
        reason: format!("GET strategies of {project}/{environment}/{flag}: not JSON: {e}"),
        retry_after: None,
    })?;
    let listed = present
        .as_array()
        .or_else(|| present.get("strategies").and_then(Value::as_array));
    if listed.is_some_and(|list| list.iter().any(|s| same(s, body))) {
        return Ok(());
    }
    admin.send(Method::POST, &path, Some(body)).await.map(drop)
}

/// Same strategy type, parameters and constraints.
fn same(a: &Value, b: &Value) -> bool {
    ["name", "parameters", "constraints"]
        .iter()
        .all(|field| a.get(*field) == b.get(*field))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_strategy_parses_to_its_id_and_the_fields_unleash_takes() {
        let old = json!({
            "id": "0a62", "name": "flexibleRollout", "title": null, "disabled": false,
            "featureName": "checkout-v2", "sortOrder": 0, "segments": [], "variants": [],
            "parameters": {"rollout": "25"}, "constraints": []
        });
        let (id, body) = parse(&old).expect("a strategy");
        assert_eq!(id, "0a62");
        assert_eq!(body.get("featureName"), None);
        assert_eq!(body.get("id"), None);
        assert_eq!(body["parameters"], json!({"rollout": "25"}));
        assert_eq!(body["title"], Value::Null);
        assert!(same(&old, &body));
        assert!(parse(&json!({"name": "default"})).is_none(), "no id");
        assert!(parse(&json!(true)).is_none());
    }
}
