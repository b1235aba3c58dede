//! One proposed flag file in flagd's format, read into the flags it defines, each
//! definition standing alone; or every problem found in it, with file and line.
//!
//! The format is flagd's flag set (<https://flagd.dev/reference/flag-definitions/>):
//! `flags` (a map from flag key to definition), `$evaluators` (shared targeting rules,
//! used as `{"$ref": "name"}`), `metadata` and `$schema`. A file is checked in three
//! passes, and a file with any problem yields no flag at all:
//!
//! 1. JSON syntax (serde_json's line and column);
//! 2. flagd's JSON Schema, vendored in `schemas/flagd/` (flagd-schemas json v0.2.13), each
//!    violation on the line of the field it is about (the catalog's line map: JSON is YAML)
//!    and in the catalog's words (`catalog::schema_check`);
//! 3. what flagd's consumers need beyond the schema: a flag key that keeps chaosgate's key
//!    rule (it becomes part of the Kafka key `project/environment/flag`); a `defaultVariant`
//!    that is a string naming one of the flag's variants (the schema allows it null or
//!    absent, but the Rust provider's parser, `flagd-evaluation-engine` 0.1's
//!    `FeatureFlag.default_variant: String`, then refuses the WHOLE configuration it is
//!    sent, every flag of it); and `$ref`s to evaluators that exist and do not refer to
//!    themselves (the same parser's `transpose_evaluator_refs`: an object whose only key is
//!    `$ref`). These are the parser's own refusals, so chaosgate checks them itself rather
//!    than depend on that crate (one release, 0.1.0, and it pulls a JsonLogic engine in).
//!
//! The rule that keeps it right: a definition this module returns has its `$ref`s inlined
//! (the flag-change contract's `value_format = flagd` says so: a definition is served
//! without the file's `$evaluators`), and is compared and hashed only through
//! [`canonical`], so the order of keys in a file never makes two equal definitions differ.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use serde_json::{Map, Value};

use crate::catalog::document::Document;
use crate::catalog::schema_check::SchemaCheck;
use crate::catalog::{FieldPath, Problem};
use crate::contract::flag_change::{KEY_RULE, is_key_name};

/// flagd's flag-set schema, `$id` `https://flagd.dev/schema/v0/flags.json` (draft-07).
pub const FLAGS_SCHEMA: &str = include_str!("../../schemas/flagd/flags.json");
/// flagd's targeting schema, referenced by [`FLAGS_SCHEMA`].
pub const TARGETING_SCHEMA: &str = include_str!("../../schemas/flagd/targeting.json");
const FLAGS_URI: &str = "https://flagd.dev/schema/v0/flags.json";
const TARGETING_URI: &str = "https://flagd.dev/schema/v0/targeting.json";

/// What a flag that fits none of the schema's forms is told: the forms differ only in
/// the type of their variants.
const VARIANT_FORMS: &str = " (flagd's flag schema: its variants must be all true/false, all numbers, all text or all objects)";

/// The flags one file defines: flag key to its definition (`state`, `variants`,
/// `defaultVariant`, and `targeting`/`metadata` when set), `$ref`s inlined.
pub type Definitions = BTreeMap<String, Value>;

static FLAGS_CHECK: LazyLock<Result<SchemaCheck, String>> = LazyLock::new(flags_check);

/// Compiles the vendored schema offline: `targeting.json` from a registry, and the base URI
/// set, since in draft-07 the root `$id` beside `$ref` is ignored.
fn flags_check() -> Result<SchemaCheck, String> {
    let parse = |name: &str, text: &str| {
        serde_json::from_str::<Value>(text).map_err(|e| format!("flagd's {name} schema: {e}"))
    };
    let flags = parse("flags", FLAGS_SCHEMA)?;
    let targeting = parse("targeting", TARGETING_SCHEMA)?;
    let registry = jsonschema::Registry::new()
        .add(TARGETING_URI, targeting)
        .and_then(|registry| registry.prepare())
        .map_err(|e| format!("flagd's targeting schema: {e}"))?;
    let validator = jsonschema::options()
        .with_base_uri(FLAGS_URI)
        .with_registry(&registry)
        .build(&flags)
        .map_err(|e| format!("flagd's flags schema does not compile: {e}"))?;
    Ok(SchemaCheck::from_validator(flags, validator))
}

/// Reads one proposed file: `file` names it in problems (e.g. its name in the folder),
/// `text` is its content.
///
/// Returns every flag it defines ([`Definitions`]), or every problem found, each with
/// `file`, the line when known, the field and what is wrong (`Problem`'s `Display`:
/// `flags.json:7: flags.new-checkout.defaultVariant: ...`). Syntax errors stop the
/// check; schema violations stop it before the consumers' checks (which assume the shape).
pub fn read(file: &str, text: &str) -> Result<Definitions, Vec<Problem>> {
    let value: Value = serde_json::from_str(text).map_err(|e| vec![syntax_problem(file, &e)])?;
    let lines = Document::parse(text).unwrap_or_else(|_| Document::from_value(Value::Null));
    let at = |path: FieldPath, message: String| Problem {
        file: file.to_string(),
        line: lines.line_of(&path),
        path,
        message,
    };
    let check = FLAGS_CHECK
        .as_ref()
        .map_err(|e| vec![Problem::file(file, e.clone())])?;
    let findings = check.check(&value);
    if !findings.is_empty() {
        return Err(findings
            .into_iter()
            .map(|finding| {
                let mut message = finding.message;
                if finding.path.0.len() == 2 && message.ends_with("any of the accepted forms") {
                    message.push_str(VARIANT_FORMS);
                }
                Problem {
                    line: lines.line_of(&finding.at),
                    ..at(finding.path, message)
                }
            })
            .collect());
    }
    let empty = Map::new();
    let evaluators = value
        .get("$evaluators")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let flags = value
        .get("flags")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let mut problems = Vec::new();
    let mut definitions = Definitions::new();
    for (key, flag) in flags {
        let path = FieldPath::root().key("flags").key(key.clone());
        if !is_key_name(key) {
            problems.push(at(
                path.clone(),
                format!("flag key {key:?} is not a key name: {KEY_RULE}"),
            ));
        }
        if let Some(problem) = default_variant_problem(flag) {
            problems.push(at(path.key("defaultVariant"), problem));
        }
        let mut definition = flag.clone();
        if let Some(targeting) = definition.get_mut("targeting") {
            let targeting_path = path.key("targeting");
            if let Err(problem) = inline_refs(targeting, evaluators, &mut Vec::new()) {
                problems.push(at(targeting_path, problem));
            }
        }
        definitions.insert(key.clone(), definition);
    }
    if problems.is_empty() {
        Ok(definitions)
    } else {
        Err(problems)
    }
}

/// A syntax error on its line, in serde_json's words without the location it repeats.
fn syntax_problem(file: &str, error: &serde_json::Error) -> Problem {
    let text = error.to_string();
    let message = text.split(" at line ").next().unwrap_or(&text).to_string();
    Problem {
        file: file.to_string(),
        line: (error.line() > 0).then_some(error.line()),
        path: FieldPath::root(),
        message: format!("not JSON: {message} (column {})", error.column()),
    }
}

/// Why a flag's `defaultVariant` cannot be served, if it cannot.
fn default_variant_problem(flag: &Value) -> Option<String> {
    let variants = flag.get("variants").and_then(Value::as_object);
    let names = || {
        variants
            .map(|v| v.keys().cloned().collect::<Vec<_>>().join(", "))
            .unwrap_or_default()
    };
    match flag.get("defaultVariant") {
        Some(Value::String(name)) if variants.is_some_and(|v| v.contains_key(name)) => None,
        Some(Value::String(name)) => Some(format!(
            "unknown variant '{name}' (the flag's variants: {})",
            names()
        )),
        _ => Some(format!(
            "missing: chaosgate serves only flags whose defaultVariant names one of their variants ({}); flagd's providers refuse a whole configuration with a flag without one",
            names()
        )),
    }
}

/// Replaces each `{"$ref": "name"}` in `value` (an object whose only key is `$ref`, as
/// flagd's parser reads it) by evaluator `name`, itself inlined; `stack` holds the
/// evaluators being inlined, to find a cycle.
fn inline_refs(
    value: &mut Value,
    evaluators: &Map<String, Value>,
    stack: &mut Vec<String>,
) -> Result<(), String> {
    match value {
        Value::Object(object) => {
            if object.len() == 1
                && let Some(name) = object.get("$ref").and_then(Value::as_str)
            {
                if stack.iter().any(|seen| seen == name) {
                    return Err(format!(
                        "evaluator '{name}' refers to itself ({} -> {name})",
                        stack.join(" -> ")
                    ));
                }
                let mut replacement = evaluators.get(name).cloned().ok_or_else(|| {
                    let known: Vec<&str> = evaluators.keys().map(String::as_str).collect();
                    format!(
                        "$ref to unknown evaluator '{name}' ($evaluators: {})",
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known.join(", ")
                        }
                    )
                })?;
                stack.push(name.to_string());
                inline_refs(&mut replacement, evaluators, stack)?;
                stack.pop();
                *value = replacement;
                return Ok(());
            }
            object
                .values_mut()
                .try_for_each(|child| inline_refs(child, evaluators, stack))
        }
        Value::Array(items) => items
            .iter_mut()
            .try_for_each(|item| inline_refs(item, evaluators, stack)),
        _ => Ok(()),
    }
}

/// `value` with the keys of every object sorted, at every depth: the form definitions
/// are compared and hashed in.
pub fn canonical(value: &Value) -> Value {
    match value {
        Value::Object(object) => {
            let mut keys: Vec<&String> = object.keys().collect();
            keys.sort();
            Value::Object(
                keys.into_iter()
                    .map(|key| (key.clone(), canonical(&object[key])))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.iter().map(canonical).collect()),
        other => other.clone(),
    }
}

/// [`canonical`] as compact JSON text.
pub fn canonical_text(value: &Value) -> String {
    canonical(value).to_string()
}

/// Whether flagd's providers accept `definition` as one flag; `Err` names what they would
/// reject. Rules (flags.json's `flag` and flagd-evaluation-engine 0.1's `FeatureFlag`,
/// which parses every flag of a payload and drops the WHOLE payload on one failure): an
/// object; `state` `ENABLED` or `DISABLED`; `variants` a non-empty object; a string
/// `defaultVariant` naming one of them (the schema allows null, the Rust provider does
/// not); `metadata`, when present, an object; no `{"$ref": NAME}` in `targeting` (the
/// served document has no `$evaluators`: definitions come self-contained).
pub fn servable(definition: &Value) -> Result<(), String> {
    let Some(flag) = definition.as_object() else {
        return Err("definition is not a JSON object".into());
    };
    match flag.get("state").and_then(Value::as_str) {
        Some("ENABLED" | "DISABLED") => {}
        _ => return Err("state is not \"ENABLED\" or \"DISABLED\"".into()),
    }
    let Some(variants) = flag.get("variants").and_then(Value::as_object) else {
        return Err("variants is missing or not an object".into());
    };
    if variants.is_empty() {
        return Err("variants is empty".into());
    }
    match flag.get("defaultVariant") {
        Some(Value::String(name)) if variants.contains_key(name) => {}
        Some(Value::String(name)) => {
            return Err(format!("defaultVariant {name:?} names no variant"));
        }
        _ => return Err("defaultVariant is missing or not a string".into()),
    }
    if flag.get("metadata").is_some_and(|m| !m.is_object()) {
        return Err("metadata is not an object".into());
    }
    if flag.get("targeting").is_some_and(has_ref) {
        return Err("targeting has a $ref to an evaluator (definitions must inline them)".into());
    }
    Ok(())
}

fn has_ref(value: &Value) -> bool {
    match value {
        Value::Object(map) => {
            (map.len() == 1 && map.get("$ref").is_some_and(Value::is_string))
                || map.values().any(has_ref)
        }
        Value::Array(items) => items.iter().any(has_ref),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixtures(kind: &str) -> Vec<(String, String)> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("schemas/flagd/test")
            .join(kind);
        let mut files: Vec<(String, String)> = std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| {
                let path = entry.unwrap().path();
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                (name, std::fs::read_to_string(&path).unwrap())
            })
            .collect();
        files.sort();
        files
    }

    fn problems(text: &str) -> Vec<String> {
        read("f.json", text)
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn flagds_own_fixtures_pass_or_fail_as_flagd_says() {
        for (name, text) in fixtures("negative") {
            assert!(read(&name, &text).is_err(), "{name} was accepted");
        }
        // Accepted by the schema, but without a string defaultVariant the Rust provider
        // refuses the whole configuration; the array form is flagd's daemon config only.
        let refused = [
            "example.flagdimport.array.json",
            "no-default-variant.json",
            "null-default-variant.json",
            "undefined-default-variant.json",
        ];
        for (name, text) in fixtures("positive") {
            let result = read(&name, &text);
            if refused.contains(&name.as_str()) {
                assert!(result.is_err(), "{name} was accepted");
            } else {
                assert!(result.is_ok(), "{name}: {:?}", result.err());
            }
        }
    }

    #[test]
    fn a_syntax_error_names_its_line() {
        let problems = problems("{\n  \"flags\": {\n    \"a\": {,\n  }\n}\n");
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].starts_with("f.json:3: not JSON: key must be a string (column"),
            "{problems:?}"
        );
    }

    #[test]
    fn a_schema_violation_names_the_line_of_its_field() {
        let text = r#"{
  "flags": {
    "new-checkout": {
      "state": "ON",
      "variants": { "on": true, "off": false },
      "defaultVariant": "on"
    }
  }
}"#;
        let problems = problems(text);
        assert_eq!(
            problems,
            ["f.json:4: flags.new-checkout.state: unknown state 'ON' (allowed: ENABLED, DISABLED)"]
        );
    }

    #[test]
    fn mixed_variants_are_named_as_the_problem() {
        let text = r#"{
  "flags": {
    "mixed": {
      "state": "ENABLED",
      "variants": { "on": true, "off": "no" },
      "defaultVariant": "on"
    }
  }
}"#;
        let problems = problems(text);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with("f.json:3: flags.mixed: ")
                && problems[0].ends_with(
                    "variants must be all true/false, all numbers, all text or all objects)"
                ),
            "{problems:?}"
        );
    }

    #[test]
    fn consumers_checks_name_the_flag_and_line() {
        let text = r#"{
  "flags": {
    "a": {
      "state": "ENABLED",
      "variants": { "on": true, "off": false },
      "defaultVariant": "maybe"
    },
    "b/c": {
      "state": "ENABLED",
      "variants": { "on": true, "off": false },
      "defaultVariant": "on"
    },
    "d": {
      "state": "ENABLED",
      "variants": { "on": true, "off": false },
      "defaultVariant": "on",
      "targeting": { "if": [ { "$ref": "missing" }, "on", "off" ] }
    }
  }
}"#;
        let problems = problems(text);
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(
            problems[0].starts_with("f.json:6: flags.a.defaultVariant: unknown variant 'maybe'"),
            "{problems:?}"
        );
        assert!(
            problems[1].starts_with("f.json:8: flags.b/c: flag key \"b/c\" is not a key name"),
            "{problems:?}"
        );
        assert!(
            problems[2]
                .starts_with("f.json:17: flags.d.targeting: $ref to unknown evaluator 'missing'"),
            "{problems:?}"
        );
    }

    #[test]
    fn refs_are_inlined_and_cycles_refused() {
        let text = r#"{
  "$evaluators": {
    "staff": { "ends_with": [ { "var": "email" }, "@example.com" ] },
    "nested": { "and": [ { "$ref": "staff" }, true ] }
  },
  "flags": {
    "x": {
      "state": "ENABLED",
      "variants": { "on": true, "off": false },
      "defaultVariant": "off",
      "targeting": { "if": [ { "$ref": "nested" }, "on", null ] }
    }
  }
}"#;
        let flags = read("f.json", text).unwrap();
        assert_eq!(
            flags["x"]["targeting"],
            serde_json::json!({"if": [{"and": [{"ends_with": [{"var": "email"}, "@example.com"]}, true]}, "on", null]})
        );
        let cyclic = text.replace(
            r#""staff": { "ends_with": [ { "var": "email" }, "@example.com" ] }"#,
            r#""staff": { "$ref": "nested" }"#,
        );
        // flagd's schema refuses an evaluator that is only a `$ref`, and so a cycle
        // through evaluators; the inlining still stops at one.
        assert!(!problems(&cyclic).is_empty());
        let evaluators =
            serde_json::json!({"a": {"and": [{"$ref": "b"}]}, "b": {"or": [{"$ref": "a"}]}});
        let mut targeting = serde_json::json!({"if": [{"$ref": "a"}, "on", "off"]});
        let error = inline_refs(
            &mut targeting,
            evaluators.as_object().unwrap(),
            &mut Vec::new(),
        )
        .unwrap_err();
        assert_eq!(error, "evaluator 'a' refers to itself (a -> b -> a)");
    }

    #[test]
    fn canonical_form_ignores_key_order() {
        let a: Value =
            serde_json::from_str(r#"{"b": {"y": 1, "x": [ {"q": 1, "p": 2} ]}, "a": 0}"#).unwrap();
        let b: Value =
            serde_json::from_str(r#"{"a": 0, "b": {"x": [ {"p": 2, "q": 1} ], "y": 1}}"#).unwrap();
        assert_ne!(a.to_string(), b.to_string());
        assert_eq!(canonical_text(&a), canonical_text(&b));
        assert_eq!(
            canonical_text(&a),
            r#"{"a":0,"b":{"x":[{"p":2,"q":1}],"y":1}}"#
        );
    }
}
