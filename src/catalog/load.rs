//! Loading the catalog: finds the YAML files, checks every one of them completely (YAML
//! syntax, the JSON Schema, the checks a schema cannot express, then the cross-file
//! checks), and only when nothing is wrong builds the typed [`Catalog`] the gate uses.
//!
//! Files found in a folder are named relative to it when that folder is the only path
//! given (`pipelines/checkout.yaml`); with several paths, or for files named directly, they
//! are named as given, so two folders with the same layout cannot be confused.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::contract::schema_of;

use super::document::Document;
use super::experiment::Experiment;
use super::pipeline::Pipeline;
use super::problem::{FieldPath, Finding, Problem, sort_problems};
use super::route::RouteTable;
use super::rules;
use super::schema_check::SchemaCheck;
use super::validate::{self, Entry};

/// Folders are searched at most this deep (a guard against symlink loops).
const MAX_DEPTH: usize = 32;

/// The validated catalog: pipelines and experiments by id, and the routes to pipelines.
#[derive(Debug, Clone)]
pub struct Catalog {
    pipelines: BTreeMap<String, Pipeline>,
    experiments: BTreeMap<String, Experiment>,
    routes: RouteTable,
    files: usize,
}

/// What a catalog file holds, from its `kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Pipeline,
    Experiment,
}

/// One parsed file whose kind is known.
struct Source {
    name: String,
    kind: Kind,
    document: Document,
}

impl Catalog {
    /// Loads every `*.yaml`/`*.yml` file under the given folders (recursively) and the
    /// given files; returns every problem found, sorted by file and line, when any.
    pub fn load<P: AsRef<Path>>(paths: &[P]) -> Result<Catalog, Vec<Problem>> {
        let mut problems = Vec::new();
        let files = find_files(paths, &mut problems);
        let mut sources = Vec::new();
        let mut unreadable_experiments = Vec::new();
        for (name, path) in &files {
            match std::fs::read_to_string(path) {
                Ok(text) => match parse(name, &text, &mut problems) {
                    Some(source) => sources.push(source),
                    None => unreadable_experiments.extend(experiment_id_of_broken_file(&text)),
                },
                Err(err) => {
                    problems.push(Problem::file(name.clone(), format!("cannot read: {err}")))
                }
            }
        }
        let catalog = check(sources, &unreadable_experiments, &mut problems);
        sort_problems(&mut problems);
        match catalog {
            Some(mut catalog) if problems.is_empty() => {
                catalog.files = files.len();
                Ok(catalog)
            }
            _ => Err(problems),
        }
    }

    /// Builds a catalog from typed values (for tests and embedded demos), with the same
    /// checks as [`Catalog::load`]; problems name the item (`pipeline 'x'`) as the file.
    pub fn from_parts(
        pipelines: Vec<Pipeline>,
        experiments: Vec<Experiment>,
    ) -> Result<Catalog, Vec<Problem>> {
        let mut problems = Vec::new();
        let mut sources = Vec::new();
        let items = pipelines
            .iter()
            .map(|p| {
                (
                    Kind::Pipeline,
                    format!("pipeline '{}'", p.id),
                    serde_json::to_value(p),
                )
            })
            .chain(experiments.iter().map(|e| {
                (
                    Kind::Experiment,
                    format!("experiment '{}'", e.id),
                    serde_json::to_value(e),
                )
            }));
        for (kind, name, value) in items {
            match value {
                Ok(value) => sources.push(Source {
                    name,
                    kind,
                    document: Document::from_value(value),
                }),
                Err(err) => problems.push(Problem::file(name, err.to_string())),
            }
        }
        let count = sources.len();
        let catalog = check(sources, &[], &mut problems);
        sort_problems(&mut problems);
        match catalog {
            Some(mut catalog) if problems.is_empty() => {
                catalog.files = count;
                Ok(catalog)
            }
            _ => Err(problems),
        }
    }

    /// The pipeline with this id.
    pub fn pipeline(&self, id: &str) -> Option<&Pipeline> {
        self.pipelines.get(id)
    }

    /// The experiment with this id.
    pub fn experiment(&self, id: &str) -> Option<&Experiment> {
        self.experiments.get(id)
    }

    /// The pipeline whose routes take a change to `flag` in `project`/`environment`.
    /// At most one can: overlapping routes are refused when the catalog loads.
    pub fn pipeline_for(&self, project: &str, environment: &str, flag: &str) -> Option<&Pipeline> {
        self.routes
            .pipeline_for(project, environment, flag)
            .and_then(|id| self.pipelines.get(id))
    }

    /// Every pipeline, by id.
    pub fn pipelines(&self) -> impl Iterator<Item = &Pipeline> {
        self.pipelines.values()
    }

    /// Every experiment, by id.
    pub fn experiments(&self) -> impl Iterator<Item = &Experiment> {
        self.experiments.values()
    }

    /// How many files the catalog was read from.
    pub fn file_count(&self) -> usize {
        self.files
    }
}

/// The catalog files under `paths`, each with its display name, in a stable order.
fn find_files<P: AsRef<Path>>(paths: &[P], problems: &mut Vec<Problem>) -> Vec<(String, PathBuf)> {
    let mut files = Vec::new();
    let mut seen = HashSet::new();
    let relative = paths.len() == 1;
    for path in paths {
        let path = path.as_ref();
        let shown = path.display().to_string();
        if path.is_dir() {
            let mut found = Vec::new();
            walk(path, 0, &mut found, problems);
            found.sort();
            if found.is_empty() {
                problems.push(Problem::file(
                    shown.clone(),
                    "no .yaml or .yml files in this folder",
                ));
            }
            for file in found {
                let name = match file.strip_prefix(path) {
                    Ok(inner) if relative => inner.display().to_string(),
                    _ => file.display().to_string(),
                };
                if seen.insert(std::fs::canonicalize(&file).unwrap_or_else(|_| file.clone())) {
                    files.push((name, file));
                }
            }
        } else if path.exists() {
            if seen.insert(std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())) {
                files.push((shown, path.to_path_buf()));
            }
        } else {
            problems.push(Problem::file(shown, "no such file or folder"));
        }
    }
    files
}

/// Collects YAML files below `folder`, skipping hidden entries.
fn walk(folder: &Path, depth: usize, found: &mut Vec<PathBuf>, problems: &mut Vec<Problem>) {
    if depth > MAX_DEPTH {
        return;
    }
    let entries = match std::fs::read_dir(folder) {
        Ok(entries) => entries,
        Err(err) => {
            problems.push(Problem::file(
                folder.display().to_string(),
                format!("cannot read folder: {err}"),
            ));
            return;
        }
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        if path.is_dir() {
            walk(&path, depth + 1, found, problems);
        } else if path
            .extension()
            .is_some_and(|ext| ext == "yaml" || ext == "yml")
        {
            found.push(path);
        }
    }
}

/// Parses one file and reads its kind; problems go to `problems`.
fn parse(name: &str, text: &str, problems: &mut Vec<Problem>) -> Option<Source> {
    let document = match Document::parse(text) {
        Ok(document) => document,
        Err(err) => {
            problems.push(Problem {
                file: name.to_string(),
                line: err.line,
                path: FieldPath::root(),
                message: format!("not valid YAML: {}", err.message),
            });
            return None;
        }
    };
    let problem = |path: FieldPath, message: String| Problem {
        file: name.to_string(),
        line: document.line_of(&path),
        path,
        message,
    };
    let kind_path = FieldPath::root().key("kind");
    let kind = match &document.value {
        Value::Null => {
            problems.push(Problem::file(
                name,
                "empty file: expected a pipeline or an experiment",
            ));
            return None;
        }
        Value::Object(object) => object.get("kind"),
        _ => {
            problems.push(problem(
                FieldPath::root(),
                "expected a mapping with `kind: pipeline` or `kind: experiment`".into(),
            ));
            return None;
        }
    };
    let kind = match kind.map(|k| (k, k.as_str())) {
        Some((_, Some("pipeline"))) => Kind::Pipeline,
        Some((_, Some("experiment"))) => Kind::Experiment,
        None => {
            problems.push(problem(
                FieldPath::root(),
                "missing field 'kind' (pipeline or experiment)".into(),
            ));
            return None;
        }
        Some((value, _)) => {
            let shown = value
                .as_str()
                .map_or_else(|| value.to_string(), |s| format!("'{s}'"));
            problems.push(problem(
                kind_path,
                format!("unknown kind {shown} (allowed: pipeline, experiment)"),
            ));
            return None;
        }
    };
    Some(Source {
        name: name.to_string(),
        kind,
        document,
    })
}

/// The id of an experiment file that is not valid YAML, read from a top-level `id:` line,
/// so that pipelines referring to it do not get "unknown experiment" on top of the file's
/// own syntax error.
fn experiment_id_of_broken_file(text: &str) -> Option<String> {
    let top_level = |key: &str| {
        text.lines().find_map(|line| {
            let value = line.strip_prefix(key)?.split(" #").next()?.trim();
            Some(value.trim_matches(['"', '\'']).to_string()).filter(|v| !v.is_empty())
        })
    };
    (top_level("kind:").as_deref() == Some("experiment"))
        .then(|| top_level("id:"))
        .flatten()
}

/// Runs every check over the parsed files; returns the typed catalog when each file
/// could be read into its type (the caller still refuses it when `problems` is not empty).
/// `unreadable_experiments` are ids of experiment files that could not be parsed.
fn check(
    sources: Vec<Source>,
    unreadable_experiments: &[String],
    problems: &mut Vec<Problem>,
) -> Option<Catalog> {
    let schemas = match (
        SchemaCheck::new("pipeline", schema_of::<Pipeline>("pipeline")),
        SchemaCheck::new("experiment", schema_of::<Experiment>("experiment")),
    ) {
        (Ok(pipeline), Ok(experiment)) => (pipeline, experiment),
        (Err(err), _) | (_, Err(err)) => {
            problems.push(Problem::file("(chaosgate)", err.to_string()));
            return None;
        }
    };
    let names: Vec<String> = sources.iter().map(|s| s.name.clone()).collect();
    let mut typed_ok = true;
    let mut pipelines = BTreeMap::new();
    let mut experiments = BTreeMap::new();
    for source in &sources {
        let (schema, local) = match source.kind {
            Kind::Pipeline => (
                &schemas.0,
                validate::check_pipeline_document(&source.document.value),
            ),
            Kind::Experiment => (
                &schemas.1,
                validate::check_experiment_document(&source.document.value),
            ),
        };
        let shape = schema.check(&source.document.value);
        let shape_ok = shape.is_empty();
        // A document the JSON-level checks faulted (no kind, several kinds) cannot be read
        // into its type either; the reason given then is theirs, not serde's.
        let local_ok = local.is_empty();
        for finding in shape.into_iter().chain(local) {
            problems.push(to_problem(source, finding));
        }
        if !shape_ok {
            typed_ok = false;
            continue;
        }
        let value = &source.document.value;
        let result = match source.kind {
            Kind::Pipeline => typed::<Pipeline>(value).map(|p| {
                for finding in rules::check_pipeline(&p) {
                    problems.push(to_problem(source, finding));
                }
                pipelines.insert(p.id.clone(), p);
            }),
            Kind::Experiment => typed::<Experiment>(value).map(|e| {
                for finding in rules::check_experiment(&e) {
                    problems.push(to_problem(source, finding));
                }
                experiments.insert(e.id.clone(), e);
            }),
        };
        if let Err(finding) = result {
            typed_ok = false;
            if local_ok {
                problems.push(to_problem(source, finding));
            }
        }
    }
    let entries = |kind: Kind| -> Vec<Entry<'_>> {
        sources
            .iter()
            .enumerate()
            .filter(|(_, s)| s.kind == kind)
            .map(|(file, s)| Entry {
                file,
                doc: &s.document.value,
            })
            .collect()
    };
    let pipeline_entries = entries(Kind::Pipeline);
    let experiment_entries = entries(Kind::Experiment);
    let experiment_ids: Vec<&str> = experiment_entries
        .iter()
        .filter_map(|e| e.doc.get("id").and_then(Value::as_str))
        .chain(unreadable_experiments.iter().map(String::as_str))
        .collect();
    let cross = validate::duplicate_ids("pipeline", &pipeline_entries, &names)
        .into_iter()
        .chain(validate::duplicate_ids(
            "experiment",
            &experiment_entries,
            &names,
        ))
        .chain(validate::unknown_experiments(
            &pipeline_entries,
            &experiment_ids,
        ))
        .chain(validate::overlapping_routes(&pipeline_entries, &names));
    for found in cross {
        if let Some(source) = sources.get(found.file) {
            problems.push(to_problem(source, found.finding));
        }
    }
    if !typed_ok {
        return None;
    }
    let every_route = pipelines.values().flat_map(|pipeline| {
        pipeline
            .routes
            .iter()
            .map(|route| (pipeline.id.as_str(), route))
    });
    // A glob that does not compile was reported above (`typed_ok` is false then).
    let routes = RouteTable::new(every_route).ok()?;
    Some(Catalog {
        pipelines,
        experiments,
        routes,
        files: sources.len(),
    })
}

/// Reads a schema-valid document into its type; what the schema cannot see (a duration
/// too long to represent) is reported at its field.
fn typed<T: DeserializeOwned>(value: &Value) -> Result<T, Finding> {
    serde_path_to_error::deserialize(value).map_err(|err| {
        let path = err
            .path()
            .iter()
            .fold(FieldPath::root(), |path, segment| match segment {
                serde_path_to_error::Segment::Seq { index } => path.index(*index),
                serde_path_to_error::Segment::Map { key } => path.key(key.clone()),
                serde_path_to_error::Segment::Enum { variant } => path.key(variant.clone()),
                serde_path_to_error::Segment::Unknown => path,
            });
        Finding::new(path, err.into_inner().to_string())
    })
}

/// Ties a finding to its file and line.
fn to_problem(source: &Source, finding: Finding) -> Problem {
    Problem {
        file: source.name.clone(),
        line: source.document.line_of(&finding.at),
        path: finding.path,
        message: finding.message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::experiment::experiment_example;
    use crate::catalog::pipeline::{Step, pipeline_example};

    #[test]
    fn builds_a_catalog_from_typed_values() {
        let catalog = Catalog::from_parts(vec![pipeline_example()], vec![experiment_example()])
            .unwrap_or_else(|problems| panic!("{problems:#?}"));
        let routed = catalog.pipeline_for("shop", "production", "checkout-v2");
        assert_eq!(routed.map(|p| p.id.as_str()), Some("checkout-release"));
        assert!(catalog.experiment("payments-latency").is_some());
        assert_eq!(catalog.file_count(), 2);
    }

    #[test]
    fn typed_values_get_the_same_checks() {
        let mut pipeline = pipeline_example();
        let Step::Chaos(step) = &mut pipeline.stages[0].steps[0] else {
            panic!("the example's first step is a chaos step");
        };
        step.experiment = "nope".into();
        step.expected_resilience_score = 120.0;
        let problems = Catalog::from_parts(vec![pipeline], vec![experiment_example()]).unwrap_err();
        let shown: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "pipeline 'checkout-release': stages[0].steps[0].expected_resilience_score: 120 is above 100",
                "pipeline 'checkout-release': stages[0].steps[0].experiment: unknown experiment 'nope'",
            ]
        );
    }

    #[test]
    fn a_duration_too_long_to_hold_is_reported_at_its_field() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("big.yaml");
        std::fs::write(
            &file,
            "kind: experiment\nid: big\nfaults:\n  - name: huge\n    weight: 5\n    duration: 99999999999999s\n    network: {target: t, toxic: {type: latency, latency: 1s}}\n",
        )
        .unwrap();
        let problems = Catalog::load(&[dir.path()]).unwrap_err();
        let shown: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "big.yaml:6: faults[0].duration: '99999999999999s' is not a duration (write e.g. 200ms, 30s, 5m, 1h or 1m30s)"
            ]
        );
    }
}
