//! One catalog file read from YAML: its content as JSON (so it can be checked against the
//! published JSON Schema and walked generically) and the line each field starts on.
//!
//! `serde-saphyr` turns the text into a `serde_json::Value` with YAML 1.2's core schema
//! and reports syntax errors with their line. Plain scalars mean what YAML 1.2 says: only
//! `true`/`false` (any case of the first letter, or all capitals) are booleans, so `yes`,
//! `no`, `on`, `off`, `y` and `n` stay text (YAML 1.1 read them as booleans, and so does
//! serde-saphyr unless told otherwise: a route `flag: no` would become `false`). A boolean
//! field given such a word is reported by the schema check, naming the word. The values
//! it produces carry no positions, so the lines come from a second pass over the same
//! text with its parser (`granit-parser`, re-exported by serde-saphyr): its events carry
//! spans, and walking them gives the line of every mapping key and sequence item by field
//! path.

use std::collections::HashMap;

use serde_json::Value;
use serde_saphyr::granit_parser::{Event, Parser};

use super::problem::FieldPath;

/// A parsed catalog file.
#[derive(Debug, Clone)]
pub struct Document {
    /// The document as JSON.
    pub value: Value,
    /// The 1-based line of each field (mapping key or sequence item), by path.
    lines: HashMap<FieldPath, usize>,
}

/// Why a file is not a YAML document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SyntaxError {
    /// 1-based line of the error, when the parser gives one.
    pub(crate) line: Option<usize>,
    /// The parser's message.
    pub(crate) message: String,
}

impl Document {
    /// Parses one YAML document.
    pub fn parse(text: &str) -> Result<Document, SyntaxError> {
        let value: Value =
            serde_saphyr::from_str_with_options(text, yaml_core_schema()).map_err(|err| {
                SyntaxError {
                    line: err
                        .location()
                        .and_then(|loc| usize::try_from(loc.line()).ok())
                        .filter(|line| *line > 0),
                    message: first_line(&err.without_snippet().to_string()),
                }
            })?;
        Ok(Document {
            value,
            lines: field_lines(text),
        })
    }

    /// A document built in code rather than read from a file: it has no lines.
    pub(crate) fn from_value(value: Value) -> Document {
        Document {
            value,
            lines: HashMap::new(),
        }
    }

    /// The line of `path`, or of its nearest enclosing field the parser saw.
    pub(crate) fn line_of(&self, path: &FieldPath) -> Option<usize> {
        let mut path = path.clone();
        loop {
            if let Some(line) = self.lines.get(&path) {
                return Some(*line);
            }
            path = path.parent()?;
        }
    }
}

/// serde-saphyr's options for YAML 1.2's core schema (section 10.3 of the YAML 1.2.2
/// specification): strict booleans; octal only as `0o17` (serde-saphyr's default).
fn yaml_core_schema() -> serde_saphyr::Options {
    serde_saphyr::options! { strict_booleans: true }
}

/// The parser's message on one line, without the location it repeats ("at line 3 column
/// 1") and without advice about parser options that do not apply here.
fn first_line(message: &str) -> String {
    let mut line = message.lines().next().unwrap_or(message).trim();
    if let Some(at) = line.find(" at line ") {
        line = line[..at].trim_end_matches([',', ':']);
    }
    if let Some(key) = line.strip_prefix("duplicate mapping key: ") {
        let key = key.split(", set DuplicateKeyPolicy").next().unwrap_or(key);
        return format!("duplicate key '{key}'");
    }
    if line.starts_with("multiple YAML documents") {
        return "a catalog file holds one document, this one has several (remove `---`)".into();
    }
    line.to_string()
}

/// Where the walk is inside a collection.
enum Frame {
    /// In a mapping; `key` is the key whose value comes next, if one was read.
    Mapping {
        path: FieldPath,
        key: Option<String>,
    },
    /// In a sequence; `next` is the index of the next item.
    Sequence { path: FieldPath, next: usize },
    /// Inside a complex (non-scalar) mapping key, which has no field path.
    Skipped,
}

/// The line of every field of the first document in `text`. Best effort: a text the
/// parser refuses yields the lines seen up to the error.
fn field_lines(text: &str) -> HashMap<FieldPath, usize> {
    let mut lines = HashMap::new();
    let mut stack: Vec<Frame> = Vec::new();
    for event in Parser::new_from_str(text) {
        let Ok((event, span)) = event else { break };
        let line = span.start.line();
        match event {
            Event::DocumentEnd => break,
            Event::Scalar(text, ..) => {
                place_node(&mut stack, &mut lines, line, Some(text.into_owned()));
            }
            Event::Alias(_) => {
                place_node(&mut stack, &mut lines, line, None);
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                let is_mapping = matches!(event, Event::MappingStart(..));
                let path = place_node(&mut stack, &mut lines, line, None);
                stack.push(match path {
                    Some(path) if is_mapping => Frame::Mapping { path, key: None },
                    Some(path) => Frame::Sequence { path, next: 0 },
                    None => Frame::Skipped,
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                if matches!(stack.pop(), Some(Frame::Skipped)) {
                    // A complex key ended: its value comes next, under a placeholder key.
                    if let Some(Frame::Mapping { key, .. }) = stack.last_mut() {
                        *key = Some("?".to_string());
                    }
                }
            }
            _ => {}
        }
    }
    lines
}

/// Records a node that starts on `line` and returns its field path; `None` when the node
/// is a mapping key (a scalar key is kept as the pending key) or lies inside a complex key.
fn place_node(
    stack: &mut [Frame],
    lines: &mut HashMap<FieldPath, usize>,
    line: usize,
    scalar: Option<String>,
) -> Option<FieldPath> {
    let Some(frame) = stack.last_mut() else {
        lines.insert(FieldPath::root(), line);
        return Some(FieldPath::root());
    };
    match frame {
        Frame::Skipped => None,
        Frame::Sequence { path, next } => {
            let item = path.index(*next);
            *next += 1;
            lines.insert(item.clone(), line);
            Some(item)
        }
        Frame::Mapping { path, key } => match key.take() {
            Some(key) => Some(path.key(key)),
            None => {
                // This node is a key.
                if let Some(name) = scalar {
                    let field = path.key(name.clone());
                    lines.entry(field).or_insert(line);
                    *key = Some(name);
                }
                None
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_scalars_follow_yaml_12_core_schema() {
        let doc = Document::parse(
            "a: no\nb: on\nc: yes\nd: off\ne: y\nf: N\ng: true\nh: False\ni: 0o17\nk: ~\n",
        )
        .unwrap();
        let expected = serde_json::json!({
            "a": "no", "b": "on", "c": "yes", "d": "off", "e": "y", "f": "N",
            "g": true, "h": false, "i": 15, "k": null
        });
        assert_eq!(doc.value, expected);
    }

    #[test]
    fn knows_the_line_of_every_field() {
        let text = "kind: pipeline\nid: checkout\nstages:\n  - id: one\n    steps:\n      - id: a\n        experiment: x\n      - {id: b, experiment: y}\n";
        let doc = Document::parse(text).unwrap();
        let step = FieldPath::root().key("stages").index(0).key("steps");
        assert_eq!(doc.line_of(&FieldPath::root().key("id")), Some(2));
        assert_eq!(doc.line_of(&step.index(0).key("experiment")), Some(7));
        assert_eq!(doc.line_of(&step.index(1).key("experiment")), Some(8));
        assert_eq!(doc.line_of(&step.index(1).key("missing").index(3)), Some(8));
        assert_eq!(doc.value["stages"][0]["steps"][1]["id"], "b");
    }

    #[test]
    fn syntax_errors_carry_a_line() {
        let err = Document::parse("kind: pipeline\nid: [unclosed\nstages: []\n").unwrap_err();
        assert!(err.line.is_some(), "{err:?}");
        assert!(!err.message.is_empty());
    }
}
