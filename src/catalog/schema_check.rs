//! Checks a document against the JSON Schema generated from its Rust type, and says each
//! violation in the operator's words.
//!
//! The schema is the one published in `schemas/` (the caller generates it from the type
//! with `contract::schema_of`, as the published files are), so editors that use it and
//! `chaosgate validate` agree. `jsonschema` reports every violation with a JSON-pointer instance path;
//! this module turns the path into `stages[1].steps[0].x` form and the message into plain
//! words ("140 is above 100", "unknown field 'wieght' (did you mean 'weight'?)"). For
//! `oneOf`/`anyOf` (tagged enums such as toxics, optional blocks) it looks into the branch
//! the document meant, so the operator sees the real problem rather than "not valid under
//! any of the schemas".

use jsonschema::error::{TypeKind, ValidationErrorKind};
use jsonschema::paths::LocationSegment;
use jsonschema::{ValidationError, Validator};
use serde_json::Value;

use super::experiment::{FaultKind, ProbeType};
use super::problem::{FieldPath, Finding};
use super::span::{SPAN_PATTERN, SpanError};

/// The probe type blocks a probe may have.
pub(crate) const PROBE_TYPES: [&str; 4] = ProbeType::NAMES;

/// The fault kind blocks a fault may have.
pub(crate) const FAULT_KINDS: [&str; 5] = FaultKind::NAMES;

/// Why the schema checker could not be built (a bug in the generated schemas).
#[derive(Debug, thiserror::Error)]
#[error("the {name} schema does not compile: {message}")]
pub(crate) struct SchemaError {
    /// Which schema.
    pub(crate) name: &'static str,
    /// The compiler's message.
    pub(crate) message: String,
}

/// A compiled schema and the schema document, needed to read branch alternatives.
pub(crate) struct SchemaCheck {
    schema: Value,
    validator: Validator,
}

impl SchemaCheck {
    /// Compiles `schema`, a JSON Schema (draft 2020-12) called `name` in errors: the
    /// published one of its type, as [`crate::contract::schema_of`] generates it (the
    /// caller builds it, so this module needs no list of published schemas).
    pub(crate) fn new(name: &'static str, schema: Value) -> Result<Self, SchemaError> {
        let validator = jsonschema::draft202012::new(&schema).map_err(|err| SchemaError {
            name,
            message: err.to_string(),
        })?;
        Ok(SchemaCheck { schema, validator })
    }

    /// Wraps a validator built elsewhere (another draft, or with a registry of the
    /// schemas it references, as flagd's flag schema needs) so its violations read the
    /// same way; `schema` is the document it was built from.
    pub(crate) fn from_validator(schema: Value, validator: Validator) -> Self {
        SchemaCheck { schema, validator }
    }

    /// Every schema violation in `document`.
    pub(crate) fn check(&self, document: &Value) -> Vec<Finding> {
        let mut findings = Vec::new();
        for error in self.validator.iter_errors(document) {
            self.translate(&error, document, &mut findings);
        }
        let mut unique = Vec::with_capacity(findings.len());
        for finding in findings {
            if !unique.contains(&finding) {
                unique.push(finding);
            }
        }
        unique
    }

    /// Turns one violation into findings (several for several unknown fields).
    fn translate(&self, error: &ValidationError<'_>, document: &Value, out: &mut Vec<Finding>) {
        let path = field_path(error);
        let instance = error.instance().as_ref();
        let schema_path = error.schema_path().as_str();
        let message = match error.kind() {
            ValidationErrorKind::AdditionalProperties { unexpected } => {
                let def = self.node(parent_pointer(schema_path));
                for name in unexpected {
                    let value = instance.get(name);
                    let message = unknown_key_message(schema_path, def, name, value);
                    out.push(Finding::at(path.clone(), path.key(name.clone()), message));
                }
                return;
            }
            ValidationErrorKind::Required { property } => {
                let name = property.as_str().unwrap_or_default();
                return out.push(Finding::at(
                    path.clone(),
                    path.key(name),
                    format!("missing field '{name}'"),
                ));
            }
            ValidationErrorKind::Maximum { limit } => {
                format!("{} is above {}", show(instance), number(limit))
            }
            ValidationErrorKind::Minimum { limit } => {
                format!("{} is below {}", show(instance), number(limit))
            }
            ValidationErrorKind::ExclusiveMaximum { limit } => {
                format!("{} must be below {}", show(instance), number(limit))
            }
            ValidationErrorKind::ExclusiveMinimum { limit } => {
                format!("{} must be above {}", show(instance), number(limit))
            }
            ValidationErrorKind::Type { kind } => {
                let node = self.node(parent_pointer(schema_path));
                format!(
                    "expected {}, found {}{}{}",
                    expected_types(kind),
                    describe(instance),
                    yaml_11_boolean_hint(kind, instance),
                    number_as_text_hint(kind, instance, node)
                )
            }
            ValidationErrorKind::Pattern { pattern } => pattern_message(pattern, instance),
            ValidationErrorKind::Enum { options } => {
                let allowed = options.as_array().map(Vec::as_slice).unwrap_or_default();
                unknown_value(&path, instance, allowed)
            }
            ValidationErrorKind::Constant { expected_value } => {
                format!(
                    "expected {}, found {}",
                    show(expected_value),
                    show(instance)
                )
            }
            ValidationErrorKind::OneOfNotValid { context }
            | ValidationErrorKind::AnyOf { context } => {
                let branches = self.node(schema_path).and_then(Value::as_array);
                return self.translate_alternatives(
                    &path,
                    instance,
                    branches.map(Vec::as_slice).unwrap_or_default(),
                    context,
                    document,
                    out,
                );
            }
            ValidationErrorKind::MinItems { limit } => {
                format!("needs at least {limit} item(s)")
            }
            _ => error.to_string(),
        };
        out.push(Finding::new(path, message));
    }

    /// Explains a value that matches none of `branches`: an unknown enum value, an unknown
    /// or missing tag, or the errors of the one branch the value was meant for.
    fn translate_alternatives(
        &self,
        path: &FieldPath,
        instance: &Value,
        branches: &[Value],
        context: &[Vec<ValidationError<'static>>],
        document: &Value,
        out: &mut Vec<Finding>,
    ) {
        let consts: Option<Vec<Value>> = branches
            .iter()
            .map(|branch| branch.get("const").cloned())
            .collect();
        if let Some(allowed) = consts.filter(|c| !c.is_empty()) {
            return out.push(Finding::new(
                path.clone(),
                unknown_value(path, instance, &allowed),
            ));
        }
        if let Some((tag, allowed)) = tag_of(branches) {
            let chosen = instance.get(&tag);
            let index = chosen.and_then(|value| allowed.iter().position(|a| a == value));
            match (chosen, index) {
                (None, _) => {
                    let names = list(&allowed);
                    return out.push(Finding::at(
                        path.clone(),
                        path.key(tag.clone()),
                        format!("missing field '{tag}' (one of {names})"),
                    ));
                }
                (Some(value), None) => {
                    let at = path.key(tag);
                    let message = unknown_value(&at, value, &allowed);
                    return out.push(Finding::new(at, message));
                }
                (Some(_), Some(index)) => {
                    for error in context.get(index).map(Vec::as_slice).unwrap_or_default() {
                        self.translate(error, document, out);
                    }
                    return;
                }
            }
        }
        // Mappings told apart by a key only one of them requires (a step's `experiment`,
        // `approval` or `wait`): the key present says which was meant.
        if let Some(keys) = self.distinguishing_keys(branches)
            && let Some(object) = instance.as_object()
        {
            let mut meant: Vec<usize> = (0..keys.len())
                .filter(|&i| object.contains_key(&keys[i]))
                .collect();
            if meant.is_empty() {
                // No telling key: a field only one of them knows says it.
                let known = self.properties_of(branches);
                meant = (0..known.len())
                    .filter(|&i| {
                        object.keys().any(|key| {
                            known[i].contains(key)
                                && known
                                    .iter()
                                    .enumerate()
                                    .all(|(j, other)| j == i || !other.contains(key))
                        })
                    })
                    .collect();
            }
            if let [index] = meant.as_slice() {
                for error in context.get(*index).map(Vec::as_slice).unwrap_or_default() {
                    self.translate(error, document, out);
                }
                return;
            }
            let names = keys
                .iter()
                .map(|k| format!("'{k}'"))
                .collect::<Vec<_>>()
                .join(", ");
            let message = if meant.is_empty() {
                let has = object
                    .keys()
                    .map(|k| format!("'{k}'"))
                    .collect::<Vec<_>>()
                    .join(", ");
                format!("needs one of the fields {names}, which says what it is (it has {has})")
            } else {
                format!("has more than one of the fields {names}; keep one")
            };
            return out.push(Finding::new(path.clone(), message));
        }
        // Other alternatives (optional blocks, a code or a range): keep the branches whose
        // type fits the value; when one is left, its errors are the real problems.
        let fitting: Vec<&Vec<ValidationError<'static>>> = context
            .iter()
            .filter(|errors| {
                !errors.iter().any(|error| {
                    matches!(error.kind(), ValidationErrorKind::Type { .. })
                        && field_path(error) == *path
                })
            })
            .collect();
        if let [errors] = fitting.as_slice() {
            for error in errors.iter() {
                self.translate(error, document, out);
            }
            return;
        }
        // Several fit: the problems every one of them has are real whichever was meant
        // (flagd's flag is one of four variant types, each with the same `state` enum).
        if let [first, rest @ ..] = fitting.as_slice() {
            let findings = |errors: &Vec<ValidationError<'static>>| {
                let mut findings = Vec::new();
                for error in errors {
                    self.translate(error, document, &mut findings);
                }
                findings
            };
            let others: Vec<Vec<Finding>> = rest.iter().map(|errors| findings(errors)).collect();
            let shared: Vec<Finding> = findings(first)
                .into_iter()
                .filter(|finding| others.iter().all(|other| other.contains(finding)))
                .collect();
            if !shared.is_empty() {
                return out.extend(shared);
            }
        }
        let mut expected: Vec<String> = context
            .iter()
            .flatten()
            .filter_map(|error| match error.kind() {
                ValidationErrorKind::Type { kind } if field_path(error) == *path => {
                    Some(expected_types(kind))
                }
                _ => None,
            })
            .collect();
        if expected.len() > 1 {
            expected.retain(|word| word != "nothing");
        }
        let message = if fitting.is_empty() && !expected.is_empty() {
            format!(
                "expected {}, found {}",
                expected.join(" or "),
                describe(instance)
            )
        } else {
            format!(
                "{} does not have any of the accepted forms",
                describe(instance)
            )
        };
        out.push(Finding::new(path.clone(), message));
    }

    /// The property names each alternative knows, in branch order.
    fn properties_of(&self, branches: &[Value]) -> Vec<Vec<String>> {
        branches
            .iter()
            .map(|branch| {
                let node = match branch.get("$ref").and_then(Value::as_str) {
                    Some(reference) => self.node(reference.trim_start_matches('#')),
                    None => Some(branch),
                };
                node.and_then(|n| n.get("properties"))
                    .and_then(Value::as_object)
                    .map(|p| p.keys().cloned().collect())
                    .unwrap_or_default()
            })
            .collect()
    }

    /// For alternatives that are all mappings, each requiring a key no other one
    /// requires: those keys, in branch order.
    fn distinguishing_keys(&self, branches: &[Value]) -> Option<Vec<String>> {
        let required: Vec<Vec<String>> = branches
            .iter()
            .map(|branch| {
                let node = match branch.get("$ref").and_then(Value::as_str) {
                    Some(reference) => self.node(reference.trim_start_matches('#'))?,
                    None => branch,
                };
                let keys = node.get("required")?.as_array()?;
                Some(
                    keys.iter()
                        .filter_map(Value::as_str)
                        .map(String::from)
                        .collect(),
                )
            })
            .collect::<Option<_>>()?;
        if required.len() < 2 {
            return None;
        }
        required
            .iter()
            .enumerate()
            .map(|(i, keys)| {
                keys.iter()
                    .find(|key| {
                        required
                            .iter()
                            .enumerate()
                            .all(|(j, other)| j == i || !other.contains(key))
                    })
                    .cloned()
            })
            .collect()
    }

    /// The schema node at a JSON pointer into the schema document.
    fn node(&self, pointer: &str) -> Option<&Value> {
        self.schema.pointer(pointer)
    }
}

/// The field path of an error's instance.
fn field_path(error: &ValidationError<'_>) -> FieldPath {
    error
        .instance_path()
        .segments()
        .fold(FieldPath::root(), |path, segment| match segment {
            LocationSegment::Property(name) => path.key(name.into_owned()),
            LocationSegment::Index(index) => path.index(index),
        })
}

/// The pointer of the schema node that holds the keyword at `pointer`.
fn parent_pointer(pointer: &str) -> &str {
    pointer.rsplit_once('/').map_or("", |(parent, _)| parent)
}

/// The message for a key a mapping does not allow.
fn unknown_key_message(
    schema_path: &str,
    def: Option<&Value>,
    name: &str,
    value: Option<&Value>,
) -> String {
    let is_block = value.is_some_and(Value::is_object);
    if is_block && schema_path.starts_with("/$defs/Probe/") {
        return format!(
            "unknown probe type '{name}' (allowed: {})",
            PROBE_TYPES.join(", ")
        );
    }
    if is_block && schema_path.starts_with("/$defs/Fault/") {
        return format!(
            "unknown fault kind '{name}' (allowed: {})",
            FAULT_KINDS.join(", ")
        );
    }
    let known: Vec<&str> = def
        .and_then(|def| def.get("properties"))
        .and_then(Value::as_object)
        .map(|properties| properties.keys().map(String::as_str).collect())
        .unwrap_or_default();
    match closest(name, &known) {
        Some(guess) => format!("unknown field '{name}' (did you mean '{guess}'?)"),
        None if known.is_empty() => format!("unknown field '{name}'"),
        None => format!("unknown field '{name}' (allowed: {})", known.join(", ")),
    }
}

/// The known name closest to `name`, when it is a plausible typo.
fn closest<'a>(name: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|candidate| (edit_distance(name, candidate), *candidate))
        .filter(|(distance, candidate)| *distance <= 1.max(candidate.len() / 3))
        .min()
        .map(|(_, candidate)| candidate)
}

/// Levenshtein distance, counted in characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current.push(substitution.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

/// The tag property every branch fixes with a `const`, and the values it allows.
fn tag_of(branches: &[Value]) -> Option<(String, Vec<Value>)> {
    let first = branches.first()?.get("properties")?.as_object()?;
    first.iter().find_map(|(name, _)| {
        let allowed: Option<Vec<Value>> = branches
            .iter()
            .map(|branch| branch.get("properties")?.get(name)?.get("const").cloned())
            .collect();
        allowed.map(|allowed| (name.clone(), allowed))
    })
}

/// "unknown mode 'sometimes' (allowed: sot, eot, ...)".
fn unknown_value(path: &FieldPath, instance: &Value, allowed: &[Value]) -> String {
    let names = list(allowed);
    match (instance.as_str(), path.last_key()) {
        (Some(value), Some(field)) => format!("unknown {field} '{value}' (allowed: {names})"),
        (Some(value), None) => format!("unknown value '{value}' (allowed: {names})"),
        (None, _) => format!("expected one of {names}, found {}", describe(instance)),
    }
}

/// Allowed values, comma-separated.
fn list(values: &[Value]) -> String {
    values
        .iter()
        .map(|value| {
            value
                .as_str()
                .map_or_else(|| value.to_string(), str::to_string)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The message for a string that does not match a pattern.
fn pattern_message(pattern: &str, instance: &Value) -> String {
    let text = instance.as_str().unwrap_or_default();
    if pattern == SPAN_PATTERN {
        return SpanError { text: text.into() }.to_string();
    }
    if pattern.contains("[1-5][0-9][0-9]-") {
        return format!("'{text}' is not a status code or a range such as \"200-299\"");
    }
    format!("'{text}' does not match the pattern {pattern}")
}

/// A value as the operator wrote it: text in quotes, numbers as they are.
fn show(value: &Value) -> String {
    match value {
        Value::String(text) => format!("'{text}'"),
        Value::Number(_) => number(value),
        other => describe(other),
    }
}

/// A number without a pointless `.0`.
fn number(value: &Value) -> String {
    match value.as_f64() {
        Some(float) if value.is_f64() && float.fract() == 0.0 && float.abs() < 1e15 => {
            format!("{float:.0}")
        }
        _ => value.to_string(),
    }
}

/// For a boolean field given one of YAML 1.1's boolean words (text under YAML 1.2's core
/// schema, which catalog files follow): which word, and what to write instead.
fn yaml_11_boolean_hint(kind: &TypeKind, instance: &Value) -> String {
    let wants_boolean = match kind {
        TypeKind::Single(single) => single.to_string() == "boolean",
        TypeKind::Multiple(set) => set.iter().any(|t| t.to_string() == "boolean"),
    };
    let Some(word) = instance.as_str().filter(|_| wants_boolean) else {
        return String::new();
    };
    let meant = match word.to_ascii_lowercase().as_str() {
        "yes" | "y" | "on" => "true",
        "no" | "n" | "off" => "false",
        _ => return String::new(),
    };
    format!(
        " (catalog files are YAML 1.2, where '{word}' is text, not a boolean: write {meant}; \
         quote it, \"{word}\", where you mean the text)"
    )
}

/// The hint for a plain number where text is wanted: a duration needs its unit, other
/// text its quotes (YAML reads `7.5` and `3` as numbers).
fn number_as_text_hint(kind: &TypeKind, instance: &Value, node: Option<&Value>) -> String {
    let wants_text = match kind {
        TypeKind::Single(single) => single.to_string() == "string",
        TypeKind::Multiple(_) => false,
    };
    if !wants_text || !instance.is_number() {
        return String::new();
    }
    let text = number(instance);
    if node.and_then(|n| n.get("pattern")).and_then(Value::as_str) == Some(SPAN_PATTERN) {
        return format!(" (a duration needs its unit: write e.g. {text}s or {text}ms)");
    }
    format!(" (quote it to give it as text: \"{text}\")")
}

/// What kind of value this is, for "expected X, found Y".
fn describe(value: &Value) -> String {
    match value {
        Value::Null => "nothing (null)".into(),
        Value::Bool(flag) => format!("{flag}"),
        Value::Number(_) => number(value),
        Value::String(text) => format!("text '{text}'"),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "a mapping".into(),
    }
}

/// "an integer", "a string or a list", leaving out null (absent is always allowed).
fn expected_types(kind: &TypeKind) -> String {
    let names: Vec<String> = match kind {
        TypeKind::Single(single) => vec![single.to_string()],
        TypeKind::Multiple(set) => set.iter().map(|t| t.to_string()).collect(),
    };
    let mut words: Vec<&str> = names
        .iter()
        .filter(|name| names.len() == 1 || name.as_str() != "null")
        .map(|name| match name.as_str() {
            "integer" => "a whole number",
            "number" => "a number",
            "string" => "text",
            "object" => "a mapping",
            "array" => "a list",
            "boolean" => "true or false",
            "null" => "nothing",
            _ => "a value",
        })
        .collect();
    words.dedup();
    words.join(" or ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_counts_typos() {
        assert_eq!(edit_distance("wieght", "weight"), 2);
        assert_eq!(
            closest("wieght", &["name", "weight", "duration"]),
            Some("weight")
        );
        assert_eq!(closest("colour", &["name", "weight"]), None);
    }
}
