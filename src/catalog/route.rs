//! Routing: which pipeline gates a flag change, and whether two pipelines' routes could
//! both claim the same change (which would make the choice ambiguous).
//!
//! A route matches when each field it sets matches: `project` and `environment` exactly,
//! `flag` as a glob (`globset` syntax: `*`, `?`, `[a-z]`, `{a,b}`); an absent field matches
//! anything.
//!
//! # How overlap is decided
//!
//! Two routes overlap when their projects can be equal (same, or either absent), their
//! environments likewise, and their flag globs can match a common flag. For the globs this
//! module computes a real intersection, not just "identical or one absent": each glob is
//! read as a sequence of literal characters, `?`, `*` (and `**`) and character classes, with
//! `{a,b}` alternatives expanded (up to 64 variants; a larger group is treated as `*`), and
//! a search over pairs of positions finds a flag both can match, which the message shows as
//! an example. Two character classes are taken to share a character when one of a set of
//! sample characters (their range bounds, letters, digits, `-`, `_`, `.`) is in both; this
//! may miss an overlap between two exotic classes, never invents one.

use std::collections::{HashMap, HashSet, VecDeque};

use globset::{Glob, GlobSet, GlobSetBuilder};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::pipeline::Route;

/// Every route of a catalog, compiled to match flag changes in one pass.
///
/// The flag globs are compiled together into one `globset::GlobSet`, which matches the
/// literal prefixes and suffixes that routes mostly are (`checkout-*`) without running a
/// regex per route; the routes without a flag glob are checked on their own. Overlapping
/// routes are refused when the catalog loads, so at most one route takes a change.
#[derive(Debug, Clone, Default)]
pub(crate) struct RouteTable {
    routes: Vec<Place>,
    /// The routes' flag globs, compiled together.
    globs: GlobSet,
    /// For each glob in `globs`, its route's index in `routes`.
    globbed: Vec<usize>,
    /// The routes that set no flag glob.
    unglobbed: Vec<usize>,
}

/// A route's pipeline and the exact fields it sets.
#[derive(Debug, Clone)]
struct Place {
    pipeline: String,
    project: Option<String>,
    environment: Option<String>,
}

impl Place {
    fn holds(&self, project: &str, environment: &str) -> bool {
        self.project.as_deref().is_none_or(|p| p == project)
            && self.environment.as_deref().is_none_or(|e| e == environment)
    }
}

impl RouteTable {
    /// Compiles `routes`, each with the id of its pipeline; fails when a flag glob is not
    /// valid (validation reports that first, with its file and line: see [`check_glob`]).
    pub(crate) fn new<'a>(
        routes: impl IntoIterator<Item = (&'a str, &'a Route)>,
    ) -> Result<Self, globset::Error> {
        let mut table = RouteTable::default();
        let mut globs = GlobSetBuilder::new();
        for (pipeline, route) in routes {
            let index = table.routes.len();
            table.routes.push(Place {
                pipeline: pipeline.to_string(),
                project: route.project.clone(),
                environment: route.environment.clone(),
            });
            match &route.flag {
                Some(glob) => {
                    globs.add(Glob::new(glob)?);
                    table.globbed.push(index);
                }
                None => table.unglobbed.push(index),
            }
        }
        table.globs = globs.build()?;
        Ok(table)
    }

    /// The pipeline of the route a change to `flag` in `project`/`environment` takes.
    pub(crate) fn pipeline_for(
        &self,
        project: &str,
        environment: &str,
        flag: &str,
    ) -> Option<&str> {
        let unglobbed = self.unglobbed.iter().copied();
        let globbed = self
            .globs
            .matches(flag)
            .into_iter()
            .map(|glob| self.globbed[glob]);
        unglobbed
            .chain(globbed)
            .map(|index| &self.routes[index])
            .find(|place| place.holds(project, environment))
            .map(|place| place.pipeline.as_str())
    }
}

/// What a flag change no route takes is answered with: the operator's choice
/// (`worker.unrouted` in the configuration). A requested `disable` is passed on whatever
/// this says: turning a flag off is never held back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Unrouted {
    /// Pass the change on at once (`enable`, reason `no_pipeline`): chaosgate gates only
    /// the flags its routes name, and the flag service keeps working for the rest.
    #[default]
    Enable,
    /// Answer `disable` (reason `no_pipeline`): a flag goes on only through a pipeline.
    Disable,
    /// Dead-letter the event (class `unrouted`): no command, the flag service hears
    /// nothing, and the dead-letter topic shows which flags the routes miss.
    DeadLetter,
}

impl Unrouted {
    /// The choice as written in the configuration.
    pub const fn as_str(self) -> &'static str {
        match self {
            Unrouted::Enable => "enable",
            Unrouted::Disable => "disable",
            Unrouted::DeadLetter => "dead_letter",
        }
    }
}

/// Checks that a flag glob compiles; the error says why not.
pub(crate) fn check_glob(glob: &str) -> Result<(), String> {
    Glob::new(glob)
        .map(|_| ())
        .map_err(|err| format!("'{glob}' is not a valid glob: {}", err.kind()))
}

/// A flag change that two routes would both take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Overlap {
    /// The project both accept (`None`: any project).
    pub(crate) project: Option<String>,
    /// The environment both accept (`None`: any environment).
    pub(crate) environment: Option<String>,
    /// A flag key both accept.
    pub(crate) flag: String,
}

impl std::fmt::Display for Overlap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "flag '{}'", self.flag)?;
        match &self.project {
            Some(project) => write!(f, " in project '{project}'")?,
            None => write!(f, " in any project")?,
        }
        match &self.environment {
            Some(environment) => write!(f, ", environment '{environment}'"),
            None => write!(f, ", any environment"),
        }
    }
}

/// A flag change both routes would take, if there is one.
pub(crate) fn overlap(a: &Route, b: &Route) -> Option<Overlap> {
    let project = common_exact(a.project.as_deref(), b.project.as_deref())?;
    let environment = common_exact(b.environment.as_deref(), a.environment.as_deref())?;
    let flag = common_flag(
        a.flag.as_deref().unwrap_or("*"),
        b.flag.as_deref().unwrap_or("*"),
    )?;
    Some(Overlap {
        project,
        environment,
        flag,
    })
}

/// The value two exact-match fields share: `Some(None)` when both accept anything.
fn common_exact(a: Option<&str>, b: Option<&str>) -> Option<Option<String>> {
    match (a, b) {
        (Some(a), Some(b)) if a != b => None,
        (Some(a), _) | (None, Some(a)) => Some(Some(a.to_string())),
        (None, None) => Some(None),
    }
}

/// A flag key both globs match, if there is one.
pub(crate) fn common_flag(a: &str, b: &str) -> Option<String> {
    let left = expand(a);
    let right = expand(b);
    left.iter()
        .flat_map(|x| right.iter().map(move |y| (x, y)))
        .find_map(|(x, y)| intersect(x, y))
        .map(|flag| {
            if flag.is_empty() {
                "x".to_string()
            } else {
                flag
            }
        })
}

/// One element of a glob without alternatives.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// This character.
    Literal(char),
    /// `?`: any one character.
    One,
    /// `*` or `**`: any run of characters.
    Star,
    /// `[...]`: one character in (or, negated, not in) the ranges.
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

impl Token {
    /// Whether this single-character token accepts `c`.
    fn accepts(&self, c: char) -> bool {
        match self {
            Token::Literal(l) => *l == c,
            Token::One | Token::Star => true,
            Token::Class { negated, ranges } => {
                ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&c)) != *negated
            }
        }
    }

    /// Characters worth trying when looking for one this token accepts.
    fn samples(&self) -> Vec<char> {
        let mut chars: Vec<char> = match self {
            Token::Literal(c) => vec![*c],
            Token::Class { ranges, .. } => ranges.iter().flat_map(|(lo, hi)| [*lo, *hi]).collect(),
            Token::One | Token::Star => Vec::new(),
        };
        chars.extend(
            ('a'..='z')
                .chain('0'..='9')
                .chain(['-', '_', '.', 'A', 'Z']),
        );
        chars
    }
}

/// The most variants `{a,b}` groups may expand to before they are read as `*`.
const MAX_VARIANTS: usize = 64;

/// The glob's alternatives, each as a token sequence.
fn expand(glob: &str) -> Vec<Vec<Token>> {
    let chars: Vec<char> = glob.chars().collect();
    let mut variants: Vec<Vec<Token>> = vec![Vec::new()];
    let mut i = 0;
    while i < chars.len() {
        let (tokens, next): (Vec<Vec<Token>>, usize) = match chars[i] {
            '\\' if i + 1 < chars.len() => (vec![vec![Token::Literal(chars[i + 1])]], i + 2),
            '?' => (vec![vec![Token::One]], i + 1),
            '*' => (vec![vec![Token::Star]], i + 1),
            '[' => match class(&chars, i) {
                Some((token, next)) => (vec![vec![token]], next),
                None => (vec![vec![Token::Literal('[')]], i + 1),
            },
            '{' => match chars[i..].iter().position(|c| *c == '}') {
                Some(len) => {
                    let inner: String = chars[i + 1..i + len].iter().collect();
                    let options = inner.split(',').flat_map(expand).collect();
                    (options, i + len + 1)
                }
                None => (vec![vec![Token::Literal('{')]], i + 1),
            },
            c => (vec![vec![Token::Literal(c)]], i + 1),
        };
        i = next;
        if variants.len() * tokens.len() > MAX_VARIANTS {
            variants.iter_mut().for_each(|v| v.push(Token::Star));
            continue;
        }
        variants = variants
            .iter()
            .flat_map(|prefix| {
                tokens.iter().map(move |t| {
                    let mut v = prefix.clone();
                    v.extend(t.iter().cloned());
                    v
                })
            })
            .collect();
    }
    variants
}

/// Reads a `[...]` class starting at `start`; `None` when it is not closed.
fn class(chars: &[char], start: usize) -> Option<(Token, usize)> {
    let mut i = start + 1;
    let negated = matches!(chars.get(i), Some('!' | '^'));
    if negated {
        i += 1;
    }
    let mut ranges = Vec::new();
    let mut first = true;
    while i < chars.len() {
        let c = chars[i];
        if c == ']' && !first {
            return Some((Token::Class { negated, ranges }, i + 1));
        }
        first = false;
        if chars.get(i + 1) == Some(&'-') && chars.get(i + 2).is_some_and(|end| *end != ']') {
            ranges.push((c, chars[i + 2]));
            i += 3;
        } else {
            ranges.push((c, c));
            i += 1;
        }
    }
    None
}

/// A pair of positions, one in each token sequence.
type Position = (usize, usize);

/// A string both token sequences match, found by a breadth-first search over pairs of
/// positions (so the example is a short one).
fn intersect(a: &[Token], b: &[Token]) -> Option<String> {
    let start = (0usize, 0usize);
    let mut came_from: HashMap<Position, (Position, Option<char>)> = HashMap::new();
    let mut queue = VecDeque::from([start]);
    let mut seen = HashSet::from([start]);
    while let Some((i, j)) = queue.pop_front() {
        if i == a.len() && j == b.len() {
            let mut flag: Vec<char> = Vec::new();
            let mut at = (i, j);
            while let Some((previous, c)) = came_from.get(&at) {
                flag.extend(c);
                at = *previous;
            }
            return Some(flag.into_iter().rev().collect());
        }
        let mut moves: Vec<(Position, Option<char>)> = Vec::new();
        match (a.get(i), b.get(j)) {
            (Some(Token::Star), other) => {
                moves.push(((i + 1, j), None));
                match other {
                    Some(Token::Star) => moves.push(((i, j + 1), None)),
                    Some(token) => {
                        moves.extend(one_char(token, &Token::One).map(|c| ((i, j + 1), Some(c))))
                    }
                    None => {}
                }
            }
            (other, Some(Token::Star)) => {
                moves.push(((i, j + 1), None));
                if let Some(token) = other {
                    moves.extend(one_char(token, &Token::One).map(|c| ((i + 1, j), Some(c))));
                }
            }
            (Some(x), Some(y)) => {
                moves.extend(one_char(x, y).map(|c| ((i + 1, j + 1), Some(c))));
            }
            _ => {}
        }
        for (next, c) in moves {
            if seen.insert(next) {
                came_from.insert(next, ((i, j), c));
                queue.push_back(next);
            }
        }
    }
    None
}

/// A character both single-character tokens accept.
fn one_char(x: &Token, y: &Token) -> Option<char> {
    let mut candidates = x.samples();
    candidates.extend(y.samples());
    candidates
        .into_iter()
        .find(|c| x.accepts(*c) && y.accepts(*c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(project: Option<&str>, environment: Option<&str>, flag: Option<&str>) -> Route {
        Route {
            project: project.map(str::to_string),
            environment: environment.map(str::to_string),
            flag: flag.map(str::to_string),
        }
    }

    #[test]
    fn globs_that_share_a_flag_overlap() {
        for (a, b) in [
            ("checkout-*", "checkout-*"),
            ("checkout-*", "checkout-v2"),
            ("checkout-*", "*-v2"),
            ("checkout-?", "checkout-[a-c]"),
            ("{checkout,cart}-*", "cart-new"),
            ("*", "search-*"),
            ("a**b", "a*b"),
        ] {
            let flag = common_flag(a, b).unwrap_or_else(|| panic!("{a} and {b} should overlap"));
            for glob in [a, b] {
                let matcher = Glob::new(glob).unwrap().compile_matcher();
                assert!(
                    matcher.is_match(&flag),
                    "{glob} should match the example {flag}"
                );
            }
        }
    }

    #[test]
    fn globs_that_share_no_flag_do_not_overlap() {
        for (a, b) in [
            ("checkout-*", "search-*"),
            ("checkout-v1", "checkout-v2"),
            ("checkout-?", "checkout-10"),
            ("checkout-[a-c]", "checkout-[d-f]"),
            ("checkout-[!a]", "checkout-a"),
            ("{checkout,cart}-*", "search-*"),
            ("*-beta", "*-stable"),
        ] {
            assert_eq!(common_flag(a, b), None, "{a} and {b} should not overlap");
        }
    }

    #[test]
    fn routes_overlap_only_when_every_field_can_agree() {
        let checkout = route(Some("shop"), Some("production"), Some("checkout-*"));
        let any_shop = route(Some("shop"), None, None);
        let other_project = route(Some("demo"), Some("production"), Some("checkout-*"));
        let staging = route(Some("shop"), Some("staging"), Some("checkout-*"));
        let found = overlap(&checkout, &any_shop).unwrap();
        assert_eq!(found.project.as_deref(), Some("shop"));
        assert_eq!(found.environment.as_deref(), Some("production"));
        assert!(found.flag.starts_with("checkout-"));
        assert_eq!(overlap(&checkout, &other_project), None);
        assert_eq!(overlap(&checkout, &staging), None);
        assert!(overlap(&route(None, None, None), &staging).is_some());
    }

    #[test]
    fn the_table_routes_by_project_environment_and_glob() {
        let checkout = route(Some("demo"), Some("staging"), Some("checkout-*"));
        let search = route(Some("demo"), None, Some("search-{a,b}"));
        let shop = route(Some("shop"), None, None);
        let table = RouteTable::new([
            ("demo-checkout", &checkout),
            ("demo-search", &search),
            ("shop", &shop),
        ])
        .unwrap();
        let find = |p, e, f| table.pipeline_for(p, e, f);
        assert_eq!(
            find("demo", "staging", "checkout-v2"),
            Some("demo-checkout")
        );
        assert_eq!(find("demo", "production", "checkout-v2"), None);
        assert_eq!(find("demo", "production", "search-b"), Some("demo-search"));
        assert_eq!(find("demo", "staging", "search-c"), None);
        assert_eq!(find("shop", "any", "checkout-v2"), Some("shop"));
        assert_eq!(find("other", "staging", "checkout-v2"), None);
        let any = route(None, None, None);
        let all = RouteTable::new([("all", &any)]).unwrap();
        assert_eq!(all.pipeline_for("x", "y", "z"), Some("all"));
        assert_eq!(RouteTable::default().pipeline_for("x", "y", "z"), None);
        assert!(check_glob("checkout-[").is_err());
        assert!(check_glob("checkout-{a,b}").is_ok());
    }
}
