//! One thing wrong with the catalog, said the way an operator fixes it: which file, which
//! line when the parser knows it, which field, and what is wrong.
//!
//! Displayed as `pipelines/checkout.yaml:14: stages[1].steps[0].expected_resilience_score:
//! 140 is above 100`, so editors and terminals can jump to the spot.

use std::fmt;

/// One step of a [`FieldPath`]: a mapping key or a sequence index.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Segment {
    /// A mapping key, e.g. `stages`.
    Key(String),
    /// A sequence index, e.g. `1`.
    Index(usize),
}

/// Where a field sits in a document, e.g. `stages[1].steps[0].experiment`. Empty for the
/// document itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FieldPath(pub Vec<Segment>);

impl FieldPath {
    /// The document itself.
    pub(crate) fn root() -> Self {
        FieldPath(Vec::new())
    }

    /// This path extended with a mapping key.
    pub(crate) fn key(&self, key: impl Into<String>) -> Self {
        let mut segments = self.0.clone();
        segments.push(Segment::Key(key.into()));
        FieldPath(segments)
    }

    /// This path extended with a sequence index.
    pub(crate) fn index(&self, index: usize) -> Self {
        let mut segments = self.0.clone();
        segments.push(Segment::Index(index));
        FieldPath(segments)
    }

    /// The path of the enclosing field, or `None` for the document itself.
    pub(crate) fn parent(&self) -> Option<Self> {
        let (_, rest) = self.0.split_last()?;
        Some(FieldPath(rest.to_vec()))
    }

    /// The last mapping key of the path, if it ends in one.
    pub(crate) fn last_key(&self) -> Option<&str> {
        match self.0.last() {
            Some(Segment::Key(key)) => Some(key),
            _ => None,
        }
    }

    /// Whether this is the document itself.
    pub(crate) fn is_root(&self) -> bool {
        self.0.is_empty()
    }
}

impl FieldPath {}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, segment) in self.0.iter().enumerate() {
            match segment {
                Segment::Key(key) if i == 0 => f.write_str(key)?,
                Segment::Key(key) => write!(f, ".{key}")?,
                Segment::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

/// A problem found in a catalog file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file, relative to the catalog folder (or as given when named directly).
    pub file: String,
    /// 1-based line, when known.
    pub(crate) line: Option<usize>,
    /// The field the problem is about; empty for the file as a whole.
    pub(crate) path: FieldPath,
    /// What is wrong, in plain words.
    pub(crate) message: String,
}

impl Problem {
    /// A problem about the whole file, without a line.
    pub(crate) fn file(file: impl Into<String>, message: impl Into<String>) -> Self {
        Problem {
            file: file.into(),
            line: None,
            path: FieldPath::root(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.path.is_root() {
            write!(f, ": {}", self.path)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// A problem inside one document, before it is tied to its file and line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Finding {
    /// The field the problem is about, as displayed.
    pub(crate) path: FieldPath,
    /// The field whose line is reported (usually `path`; a key inside it for unknown fields).
    pub(crate) at: FieldPath,
    /// What is wrong.
    pub(crate) message: String,
}

impl Finding {
    /// A finding about the field at `path`.
    pub(crate) fn new(path: FieldPath, message: impl Into<String>) -> Self {
        Finding {
            at: path.clone(),
            path,
            message: message.into(),
        }
    }

    /// A finding about `path`, reported on the line of `at`.
    pub(crate) fn at(path: FieldPath, at: FieldPath, message: impl Into<String>) -> Self {
        Finding {
            path,
            at,
            message: message.into(),
        }
    }
}

/// Puts problems in reading order: by file, then line (problems without a line first),
/// keeping the order they were found in otherwise.
pub(crate) fn sort_problems(problems: &mut [Problem]) {
    problems.sort_by(|a, b| a.file.cmp(&b.file).then(a.line.cmp(&b.line)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_file_line_path_and_message() {
        let path = FieldPath::root()
            .key("stages")
            .index(1)
            .key("steps")
            .index(0)
            .key("expected_resilience_score");
        let mut problem = Problem {
            file: "pipelines/checkout.yaml".into(),
            line: None,
            path,
            message: "140 is above 100".into(),
        };
        assert_eq!(
            problem.to_string(),
            "pipelines/checkout.yaml: stages[1].steps[0].expected_resilience_score: 140 is above 100"
        );
        problem.line = Some(14);
        assert!(
            problem
                .to_string()
                .starts_with("pipelines/checkout.yaml:14: stages[1]")
        );
        let whole = Problem::file("a.yaml", "empty file");
        assert_eq!(whole.to_string(), "a.yaml: empty file");
    }
}
