//! The checks a JSON Schema cannot express: inside one document (duplicate stage and step
//! ids, assertions that do not compile, faults and probes with no or several kinds, probes
//! named but not defined, invalid regexes...) and across the catalog (duplicate ids,
//! unknown experiment refs, routes that make the pipeline for a flag ambiguous).
//!
//! They read the document as JSON rather than the typed structs, so they run even when the
//! schema check found problems in the same file: the operator gets every problem at once.
//! Whatever the schema already reports (wrong types, ranges, unknown fields) is skipped
//! here, each check looks only at values of the type it expects.

use std::collections::BTreeMap;

use serde_json::Value;

use super::assertion;
use super::number::{Decimal, Float};
use super::pipeline::Route;
use super::problem::{FieldPath, Finding};
use super::route;
use super::schema_check::{FAULT_KINDS, PROBE_TYPES};

/// A fault sets exactly one kind block.
const FAULT_BLOCKS: Blocks<'static> = Blocks {
    what: "fault",
    noun: "kind",
    names: &FAULT_KINDS,
    fields: &["name", "weight", "duration", "probes"],
};

/// A probe sets exactly one type block.
const PROBE_BLOCKS: Blocks<'static> = Blocks {
    what: "probe",
    noun: "type",
    names: &PROBE_TYPES,
    fields: &["name", "mode", "run_properties"],
};

/// The items of the list at `key`, with their indexes (none when it is not a list).
fn items<'a>(value: &'a Value, key: &str) -> impl Iterator<Item = (usize, &'a Value)> {
    value
        .get(key)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
}

/// The text at `key`, if it is text.
fn text<'a>(value: &'a Value, key: &str) -> Option<&'a str> {
    value.get(key).and_then(Value::as_str)
}

/// Whether `key` holds a block (anything but null or absent).
fn has(value: &Value, key: &str) -> bool {
    value.get(key).is_some_and(|v| !v.is_null())
}

/// Reports ids that appear twice in a list: `what` names them in the message.
fn duplicates<'a>(
    entries: impl Iterator<Item = (usize, &'a Value)>,
    key: &str,
    list: &FieldPath,
    what: &str,
    out: &mut Vec<Finding>,
) {
    let mut first: BTreeMap<&str, usize> = BTreeMap::new();
    for (index, entry) in entries {
        let Some(id) = text(entry, key) else { continue };
        match first.get(id) {
            Some(earlier) => out.push(Finding::new(
                list.index(index).key(key),
                format!("duplicate {what} '{id}' (also {})", list.index(*earlier)),
            )),
            None => {
                first.insert(id, index);
            }
        }
    }
}

/// Checks one pipeline document on its own.
pub(crate) fn check_pipeline_document(doc: &Value) -> Vec<Finding> {
    let mut out = Vec::new();
    let root = FieldPath::root();
    for (i, route) in items(doc, "routes") {
        if let Some(glob) = text(route, "flag")
            && let Err(message) = route::check_glob(glob)
        {
            out.push(Finding::new(
                root.key("routes").index(i).key("flag"),
                message,
            ));
        }
    }
    // Guard probes are experiment probes: exactly one type block, and its contents.
    let guard_probes = root.key("guard").key("probes");
    for (i, probe) in doc
        .get("guard")
        .into_iter()
        .flat_map(|g| items(g, "probes"))
    {
        let path = guard_probes.index(i);
        PROBE_BLOCKS.check_exactly_one(probe, &path, &mut out);
        check_probe_blocks(probe, &path, &mut out);
    }
    let stages = root.key("stages");
    duplicates(items(doc, "stages"), "id", &stages, "stage id", &mut out);
    for (i, stage) in items(doc, "stages") {
        let steps = stages.index(i).key("steps");
        duplicates(items(stage, "steps"), "id", &steps, "step id", &mut out);
        for (j, step) in items(stage, "steps") {
            if let Some(expression) = text(step, "assertion")
                && let Err(err) = assertion::compile(expression)
            {
                out.push(Finding::new(
                    steps.index(j).key("assertion"),
                    err.to_string(),
                ));
            }
        }
    }
    out
}

/// Checks one experiment document on its own.
pub(crate) fn check_experiment_document(doc: &Value) -> Vec<Finding> {
    let mut out = Vec::new();
    let root = FieldPath::root();
    let faults = root.key("faults");
    let probes = root.key("probes");
    for (i, fault) in items(doc, "faults") {
        let path = faults.index(i);
        FAULT_BLOCKS.check_exactly_one(fault, &path, &mut out);
        check_fault_blocks(fault, &path, &mut out);
    }
    let has_faults = items(doc, "faults").next().is_some();
    for (i, probe) in items(doc, "probes") {
        let path = probes.index(i);
        PROBE_BLOCKS.check_exactly_one(probe, &path, &mut out);
        if text(probe, "mode") == Some("edge") && !has_faults {
            out.push(Finding::new(
                path.key("mode"),
                "an edge probe compares before and after the faults, but this experiment has no faults",
            ));
        }
        check_probe_blocks(probe, &path, &mut out);
    }
    out
}

/// The blocks of which a fault (its kind) or a probe (its type) sets exactly one.
struct Blocks<'a> {
    /// `fault` or `probe`.
    what: &'a str,
    /// `kind` or `type`.
    noun: &'a str,
    /// The block keys.
    names: &'a [&'a str],
    /// The other fields.
    fields: &'a [&'a str],
}

impl Blocks<'_> {
    /// Reports an entry that sets no block or several.
    fn check_exactly_one(&self, entry: &Value, path: &FieldPath, out: &mut Vec<Finding>) {
        let (what, noun) = (self.what, self.noun);
        let name = text(entry, "name").unwrap_or("?");
        let set: Vec<&str> = self
            .names
            .iter()
            .copied()
            .filter(|k| has(entry, k))
            .collect();
        let message = match set.as_slice() {
            [] if !self.has_unknown_block(entry) => {
                format!(
                    "{what} '{name}' has no {noun}: set one of {}",
                    self.names.join(", ")
                )
            }
            [] | [_] => return,
            several => format!(
                "{what} '{name}' sets several {noun}s ({}): set exactly one",
                several.join(", ")
            ),
        };
        out.push(Finding::new(path.clone(), message));
    }

    /// Whether the entry holds a block under a key the schema does not know (which the
    /// schema check reports as an unknown kind or type, so "no kind" would only repeat it).
    fn has_unknown_block(&self, entry: &Value) -> bool {
        entry.as_object().is_some_and(|object| {
            object.iter().any(|(key, value)| {
                value.is_object()
                    && !self.fields.contains(&key.as_str())
                    && !self.names.contains(&key.as_str())
            })
        })
    }
}

/// Checks inside a fault's kind block.
fn check_fault_blocks(fault: &Value, path: &FieldPath, out: &mut Vec<Finding>) {
    if let Some(toxiproxy) = fault.get("toxiproxy") {
        let at = path.key("toxiproxy");
        if toxiproxy.get("toxic").and_then(|t| text(t, "type")) == Some("refuse") {
            out.push(Finding::new(
                at.key("toxic").key("type"),
                "the 'refuse' toxic is not available on Toxiproxy (use reset_peer or timeout, or a network fault)",
            ));
        }
        check_url(toxiproxy, "api", &at, out);
    }
    for kind in ["network", "http"] {
        if let Some(block) = fault.get(kind) {
            check_url(block, "proxy", &path.key(kind), out);
        }
    }
    if let Some(process) = fault.get("process").filter(|p| p.is_object())
        && !has(process, "pid_file")
        && !has(process, "name")
    {
        out.push(Finding::new(
            path.key("process"),
            "set pid_file or name so the process can be found",
        ));
    }
    if let Some(command) = fault.get("command") {
        for part in ["inject", "revert"] {
            if let Some(line) = command.get(part) {
                check_argv(line, &path.key("command").key(part), out);
            }
        }
    }
}

/// Checks inside a probe's type block.
fn check_probe_blocks(probe: &Value, path: &FieldPath, out: &mut Vec<Finding>) {
    if let Some(http) = probe.get("http") {
        let at = path.key("http");
        check_url(http, "url", &at, out);
        if http.get("redirect_any_host") == Some(&Value::Bool(true))
            && http.get("follow_redirects") != Some(&Value::Bool(true))
        {
            out.push(Finding::new(
                at.key("redirect_any_host"),
                "redirect_any_host has no effect without follow_redirects: true",
            ));
        }
        if let Some(criteria) = http.get("criteria") {
            let at = at.key("criteria");
            if let Some(pattern) = text(criteria, "body_regex") {
                check_regex(pattern, &at.key("body_regex"), out);
            }
            for (k, status) in items(criteria, "status") {
                if let Some((lo, hi)) = status.as_str().and_then(|s| s.split_once('-'))
                    && lo.parse::<u16>().ok() > hi.parse::<u16>().ok()
                {
                    out.push(Finding::new(
                        at.key("status").index(k),
                        format!("range '{lo}-{hi}' is empty: its low end is above its high end"),
                    ));
                }
            }
            if let Some(pointer) = criteria.get("json").and_then(|j| text(j, "pointer"))
                && !pointer.is_empty()
                && !pointer.starts_with('/')
            {
                out.push(Finding::new(
                    at.key("json").key("pointer"),
                    format!("'{pointer}' is not a JSON pointer (write e.g. /status)"),
                ));
            }
        }
    }
    if let Some(address) = probe.get("tcp").and_then(|t| text(t, "address")) {
        let valid = address.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        if !valid {
            out.push(Finding::new(
                path.key("tcp").key("address"),
                format!("'{address}' is not host:port (write e.g. 127.0.0.1:5432)"),
            ));
        }
    }
    if let Some(command) = probe.get("command") {
        let at = path.key("command");
        if let Some(line) = command.get("command") {
            check_argv(line, &at.key("command"), out);
        }
        if let Some(comparison) = command.get("stdout") {
            check_comparison(comparison, &at.key("stdout"), out);
        }
    }
    if let Some(prometheus) = probe.get("prometheus") {
        let at = path.key("prometheus");
        check_url(prometheus, "endpoint", &at, out);
        if let Some(comparison) = prometheus.get("comparison") {
            let at = at.key("comparison");
            if text(comparison, "type") == Some("string") {
                out.push(Finding::new(
                    at.key("type"),
                    "a Prometheus sample is a number: use type float or int",
                ));
            }
            check_comparison(comparison, &at, out);
        }
    }
}

/// Checks that a typed comparison's value fits its type and criteria.
fn check_comparison(comparison: &Value, path: &FieldPath, out: &mut Vec<Finding>) {
    let (Some(value_type), Some(criteria), Some(value)) = (
        text(comparison, "type"),
        text(comparison, "criteria"),
        text(comparison, "value"),
    ) else {
        return;
    };
    let textual = matches!(criteria, "contains" | "matches");
    if textual && value_type != "string" {
        out.push(Finding::new(
            path.key("criteria"),
            format!("'{criteria}' compares text: use type string"),
        ));
    } else if criteria == "matches" {
        check_regex(value, &path.key("value"), out);
    }
    // The same reading as the probe's comparison (`chaos::probe::compare`): exact decimal
    // values, an int whole, a float finite.
    let problem = match value_type {
        "int" if !Decimal::parse(value.trim()).is_some_and(|d| d.is_whole()) => Some(format!(
            "'{value}' is not an int (decimal text of a whole number)"
        )),
        "float" => match Float::parse(value.trim()) {
            Some(Float::Finite(_)) => None,
            Some(_) => Some(format!(
                "'{value}' is not a finite number: nothing equals or orders against it"
            )),
            None => Some(format!("'{value}' is not a float")),
        },
        _ => None,
    };
    if let Some(problem) = problem {
        out.push(Finding::new(path.key("value"), problem));
    }
}

/// Checks that a regular expression compiles.
fn check_regex(pattern: &str, path: &FieldPath, out: &mut Vec<Finding>) {
    if let Err(err) = regex::Regex::new(pattern) {
        let reason = err.to_string();
        let reason = reason
            .lines()
            .last()
            .unwrap_or_default()
            .trim()
            .trim_start_matches("error: ");
        out.push(Finding::new(
            path.clone(),
            format!("'{pattern}' is not a valid regular expression: {reason}"),
        ));
    }
}

/// Checks that the URL at `key`, if any, is an absolute http(s) URL.
fn check_url(block: &Value, key: &str, path: &FieldPath, out: &mut Vec<Finding>) {
    let Some(url) = text(block, key) else { return };
    let valid = reqwest::Url::parse(url)
        .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
    if !valid {
        out.push(Finding::new(
            path.key(key),
            format!("'{url}' is not an http:// or https:// URL"),
        ));
    }
}

/// Checks that a command line has a program to run.
fn check_argv(line: &Value, path: &FieldPath, out: &mut Vec<Finding>) {
    if line
        .get("argv")
        .and_then(Value::as_array)
        .is_some_and(Vec::is_empty)
    {
        out.push(Finding::new(
            path.key("argv"),
            "needs at least the program to run",
        ));
    }
}

/// The facts cross-file checks need from one file.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Entry<'a> {
    /// Index of the file in the load order.
    pub(crate) file: usize,
    /// The document.
    pub(crate) doc: &'a Value,
}

/// A finding from a cross-file check, tied to the file it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CrossFinding {
    /// Index of the file in the load order.
    pub(crate) file: usize,
    /// The finding.
    pub(crate) finding: Finding,
}

/// Reports ids defined in more than one file; `names` gives each file's display name.
pub(crate) fn duplicate_ids(
    kind: &str,
    entries: &[Entry<'_>],
    names: &[String],
) -> Vec<CrossFinding> {
    let mut by_id: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for entry in entries {
        if let Some(id) = text(entry.doc, "id") {
            by_id.entry(id).or_default().push(entry.file);
        }
    }
    let mut out = Vec::new();
    for (id, files) in by_id.into_iter().filter(|(_, files)| files.len() > 1) {
        for file in &files {
            let others: Vec<&str> = files
                .iter()
                .filter(|other| *other != file)
                .filter_map(|other| names.get(*other).map(String::as_str))
                .collect();
            let message = if others.is_empty() {
                format!("duplicate {kind} id '{id}'")
            } else {
                format!("duplicate {kind} id '{id}' (also in {})", others.join(", "))
            };
            out.push(CrossFinding {
                file: *file,
                finding: Finding::new(FieldPath::root().key("id"), message),
            });
        }
    }
    out
}

/// Reports steps whose experiment is not in the catalog.
pub(crate) fn unknown_experiments(
    pipelines: &[Entry<'_>],
    experiment_ids: &[&str],
) -> Vec<CrossFinding> {
    let mut out = Vec::new();
    for entry in pipelines {
        for (i, stage) in items(entry.doc, "stages") {
            for (j, step) in items(stage, "steps") {
                let Some(experiment) = text(step, "experiment") else {
                    continue;
                };
                if !experiment_ids.contains(&experiment) {
                    out.push(CrossFinding {
                        file: entry.file,
                        finding: Finding::new(
                            FieldPath::root()
                                .key("stages")
                                .index(i)
                                .key("steps")
                                .index(j)
                                .key("experiment"),
                            format!("unknown experiment '{experiment}'"),
                        ),
                    });
                }
            }
        }
    }
    out
}

/// Reports routes of different pipelines that could both take the same flag change. Each
/// pair is reported once, on the later file (or later pipeline), naming the other.
pub(crate) fn overlapping_routes(pipelines: &[Entry<'_>], names: &[String]) -> Vec<CrossFinding> {
    let mut routes: Vec<(usize, &str, usize, Route)> = Vec::new();
    for entry in pipelines {
        let Some(id) = text(entry.doc, "id") else {
            continue;
        };
        for (i, value) in items(entry.doc, "routes") {
            let Ok(route) = serde_json::from_value::<Route>(value.clone()) else {
                continue;
            };
            if route
                .flag
                .as_deref()
                .is_some_and(|g| route::check_glob(g).is_err())
            {
                continue;
            }
            routes.push((entry.file, id, i, route));
        }
    }
    let mut out = Vec::new();
    for (later, (file, id, index, route)) in routes.iter().enumerate() {
        for (other_file, other_id, other_index, other) in &routes[..later] {
            if other_id == id {
                continue;
            }
            if let Some(example) = route::overlap(other, route) {
                let where_ = names.get(*other_file).map(String::as_str).unwrap_or("?");
                out.push(CrossFinding {
                    file: *file,
                    finding: Finding::new(
                        FieldPath::root().key("routes").index(*index),
                        format!(
                            "overlaps route {other_index} of pipeline '{other_id}' ({where_}): a change to {example} would match both, so the pipeline for it is ambiguous"
                        ),
                    ),
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn messages(findings: &[Finding]) -> Vec<String> {
        findings
            .iter()
            .map(|f| format!("{}: {}", f.path, f.message))
            .collect()
    }

    #[test]
    fn expected_values_are_read_as_the_comparison_reads_them() {
        let expecting = |value_type: &str, value: &str| {
            let doc = json!({"kind": "experiment", "id": "x", "probes": [{
                "name": "p", "mode": "sot",
                "command": {"command": {"argv": ["echo"]},
                            "stdout": {"type": value_type, "criteria": "eq", "value": value}}}]});
            messages(&check_experiment_document(&doc))
        };
        for fine in [
            ("int", "99999999999999999999"),
            ("int", "017"),
            ("int", "4.2e1"),
            ("float", "1e400"),
        ] {
            assert!(expecting(fine.0, fine.1).is_empty(), "{fine:?}");
        }
        assert_eq!(
            expecting("int", "7.5"),
            [
                "probes[0].command.stdout.value: '7.5' is not an int (decimal text of a whole number)"
            ]
        );
        assert_eq!(
            expecting("float", "NaN"),
            [
                "probes[0].command.stdout.value: 'NaN' is not a finite number: nothing equals or orders against it"
            ]
        );
        assert_eq!(
            expecting("float", "abc"),
            ["probes[0].command.stdout.value: 'abc' is not a float"]
        );
    }

    #[test]
    fn redirect_any_host_without_follow_redirects_is_refused() {
        let probe = |http: serde_json::Value| {
            json!({"kind": "experiment", "id": "x", "faults": [],
                   "probes": [{"name": "p", "mode": "eot", "http": http}]})
        };
        let alone = probe(json!({"url": "http://x/", "redirect_any_host": true}));
        assert_eq!(
            messages(&check_experiment_document(&alone)),
            [
                "probes[0].http.redirect_any_host: redirect_any_host has no effect without follow_redirects: true"
            ]
        );
        let both =
            probe(json!({"url": "http://x/", "follow_redirects": true, "redirect_any_host": true}));
        assert!(messages(&check_experiment_document(&both)).is_empty());
    }

    #[test]
    fn experiment_checks_report_each_problem_at_its_field() {
        let doc = json!({
            "kind": "experiment", "id": "x",
            "faults": [
                {"name": "a", "weight": 1, "duration": "1s", "probes": ["nope"]},
                {"name": "a", "weight": 1, "duration": "1s",
                 "toxiproxy": {"api": "http://127.0.0.1:8474", "proxy": "p", "toxic": {"type": "refuse"}},
                 "network": {"target": "t", "toxic": {"type": "refuse"}}}
            ],
            "probes": [
                {"name": "p", "mode": "eot"},
                {"name": "q", "mode": "eot", "http": {"url": "http://x/", "criteria": {"body_regex": "(unclosed"}}}
            ]
        });
        let found = messages(&check_experiment_document(&doc));
        let expected = [
            "faults[0]: fault 'a' has no kind: set one of network, http, toxiproxy, process, command",
            "faults[1]: fault 'a' sets several kinds (network, toxiproxy): set exactly one",
            "faults[1].toxiproxy.toxic.type: the 'refuse' toxic is not available on Toxiproxy (use reset_peer or timeout, or a network fault)",
            "probes[0]: probe 'p' has no type: set one of http, tcp, command, prometheus",
        ];
        for line in expected {
            assert!(
                found.iter().any(|f| f == line),
                "missing {line:?} in {found:#?}"
            );
        }
        assert!(
            found.iter().any(|f| f.starts_with(
                "probes[1].http.criteria.body_regex: '(unclosed' is not a valid regular expression"
            )),
            "{found:#?}"
        );
    }
}
