//! The crate's layering, kept true: each top-level module of the library uses only the
//! modules below it (`docs/architecture.md`, "Code map").
//!
//! The test reads every `src/**/*.rs` file of the library (not `main.rs` and `cli/`, the
//! binary on top of everything), drops comments, string and character literals and
//! `#[cfg(test)]` items (a module's tests may build values of any module), collects each
//! `crate::<module>` path, `use crate::{..}` groups included, and checks it against
//! [`ALLOWED`]. A new top-level module must be given its place there first.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each top-level module of the library and the modules it may use, lowest first:
///
/// ```text
/// contract ◄─ catalog ◄─ chaos ◄─ gate ◄─ bus ◄─ view, connect
///     ▲                    ▲                ▲
///     └─── telemetry ◄─────┴── config ◄─────┘   schema uses catalog, chaos, config
/// ```
///
/// `telemetry` is a leaf beside `catalog`: everything may report through it, and it
/// knows no configuration or catalog type. `os` (this process's operating-system limits)
/// is a leaf used only by the binary and benches. `flagd` (flagd flag definitions and the
/// approval rule) uses `catalog` (its field lines and readable schema messages) and is used by `bus` and
/// `connect`.
const ALLOWED: &[(&str, &[&str])] = &[
    ("os", &[]),
    ("contract", &[]),
    ("catalog", &["contract"]),
    ("telemetry", &["contract"]),
    ("flagd", &["contract", "catalog"]),
    ("chaos", &["contract", "catalog", "telemetry"]),
    ("gate", &["contract", "catalog", "chaos", "telemetry"]),
    ("config", &["contract", "catalog", "chaos", "telemetry"]),
    (
        "bus",
        &[
            "contract",
            "flagd",
            "catalog",
            "chaos",
            "gate",
            "telemetry",
            "config",
        ],
    ),
    (
        "view",
        &[
            "contract",
            "catalog",
            "chaos",
            "gate",
            "bus",
            "telemetry",
            "config",
        ],
    ),
    (
        "connect",
        &[
            "contract",
            "flagd",
            "catalog",
            "chaos",
            "gate",
            "bus",
            "telemetry",
            "config",
        ],
    ),
    (
        "schema",
        &["contract", "catalog", "chaos", "telemetry", "config"],
    ),
];

/// The parts of `bus` the view may use: the worker's client settings and its record
/// conversion, never the worker's internals.
const VIEW_USES_OF_BUS: &[&str] = &["client", "record"];

/// One `crate::` path in a file: the top-level module it names and the next segment.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Use {
    module: String,
    next: Option<String>,
    line: usize,
}

#[test]
fn each_module_uses_only_the_modules_below_it() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let declared = declared_modules(&root.join("src/lib.rs"));
    let placed: BTreeSet<String> = allowed.keys().map(|m| m.to_string()).collect();
    assert_eq!(
        declared, placed,
        "src/lib.rs declares these top-level modules; give each its place in ALLOWED"
    );

    let mut violations = Vec::new();
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    let mut scanned = 0;
    for file in &files {
        let relative = file.strip_prefix(root).unwrap_or(file);
        let Some(module) = top_module(relative) else {
            continue;
        };
        let Some(may_use) = allowed.get(module.as_str()) else {
            continue;
        };
        scanned += 1;
        let text = std::fs::read_to_string(file)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
        for used in crate_uses(&without_tests(&code_only(&text))) {
            if used.module == module {
                continue;
            }
            let ok = may_use.contains(&used.module.as_str())
                && (module != "view"
                    || used.module != "bus"
                    || used
                        .next
                        .as_deref()
                        .is_some_and(|next| VIEW_USES_OF_BUS.contains(&next)));
            if !ok {
                let of_bus = if module == "view" {
                    format!("; of bus only {}", VIEW_USES_OF_BUS.join(", "))
                } else {
                    String::new()
                };
                violations.push(format!(
                    "{}:{}: {module} uses crate::{}{} (it may use: {}{of_bus})",
                    relative.display(),
                    used.line,
                    used.module,
                    used.next.map(|n| format!("::{n}")).unwrap_or_default(),
                    may_use.join(", ")
                ));
            }
        }
    }
    assert!(scanned > 50, "only {scanned} files scanned under src/");
    assert!(
        violations.is_empty(),
        "{} uses against the layering:\n{}",
        violations.len(),
        violations.join("\n")
    );
}

/// The scanner itself: what it finds and what it leaves out.
#[test]
fn the_scanner_finds_crate_paths_in_code_only() {
    let text = r##"
//! Uses [`crate::doc_link`] in a doc comment.
use crate::alpha::Thing;
use crate::{beta::{self, Other}, gamma};
use crate::
    delta;
/* crate::block_comment */
fn f() -> &'static str {
    let c = '{';
    let _ = crate::epsilon::make();
    let _ = r#"crate::raw_string"#;
    let _ = br"crate::raw_bytes\";
    "crate::string { with a brace"
}
#[cfg(test)]
mod tests {
    use crate::in_tests;
    fn g() { let _ = "}"; }
}
#[cfg(test)]
use crate::test_only_import;
const AFTER: () = crate::zeta::X;
"##;
    let found: Vec<(String, Option<String>, usize)> = crate_uses(&without_tests(&code_only(text)))
        .into_iter()
        .map(|u| (u.module, u.next, u.line))
        .collect();
    let expected = [
        ("alpha", Some("Thing"), 3),
        ("beta", Some("self"), 4),
        ("gamma", None, 4),
        ("delta", None, 5),
        ("epsilon", Some("make"), 10),
        ("zeta", Some("X"), 22),
    ]
    .map(|(m, n, l)| (m.to_string(), n.map(str::to_string), l));
    assert_eq!(found, expected);
}

/// The top-level modules `lib.rs` declares (`pub mod x;`, `mod x;`).
fn declared_modules(lib: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(lib).unwrap_or_else(|e| panic!("cannot read lib.rs: {e}"));
    code_only(&text)
        .lines()
        .filter_map(|line| {
            let line = line.trim();
            let rest = line
                .strip_prefix("pub mod ")
                .or_else(|| line.strip_prefix("pub(crate) mod "))
                .or_else(|| line.strip_prefix("mod "))?;
            Some(rest.trim_end_matches(';').trim().to_string())
        })
        .collect()
}

/// Every `.rs` file under `dir`, sorted.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The library's top-level module a file under `src/` belongs to; `None` for `lib.rs`,
/// `main.rs` and the binary's `cli/`.
fn top_module(relative: &Path) -> Option<String> {
    let mut parts = relative.strip_prefix("src").ok()?.components();
    let first = parts.next()?.as_os_str().to_str()?;
    let module = first.strip_suffix(".rs").unwrap_or(first);
    match module {
        "lib" | "main" | "cli" => None,
        _ => Some(module.to_string()),
    }
}

/// `text` with comments, string literals and character literals blanked (newlines
/// kept, so line numbers stay right).
fn code_only(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        let is_ident = |c: char| c.is_alphanumeric() || c == '_';
        let prev_is_ident = i > 0 && is_ident(chars[i - 1]);
        // `r"`, `r#"`, and `br"` after a byte-string prefix.
        let raw_prefix =
            !prev_is_ident || (chars[i - 1] == 'b' && (i < 2 || !is_ident(chars[i - 2])));
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(chars[i]));
                    i += 1;
                }
            }
        } else if c == 'r' && raw_prefix && matches!(next, Some('"') | Some('#')) && {
            let hashes = chars[i + 1..].iter().take_while(|c| **c == '#').count();
            chars.get(i + 1 + hashes) == Some(&'"')
        } {
            // A raw string: r"..." or r#"..."#, ended by a quote and as many hashes.
            let hashes = chars[i + 1..].iter().take_while(|c| **c == '#').count();
            let start = i;
            i += 2 + hashes;
            while i < chars.len() {
                if chars[i] == '"'
                    && chars[i + 1..]
                        .iter()
                        .take(hashes)
                        .filter(|c| **c == '#')
                        .count()
                        == hashes
                {
                    i += 1 + hashes;
                    break;
                }
                i += 1;
            }
            out.extend(chars[start..i.min(chars.len())].iter().map(|c| blank(*c)));
        } else if c == '"' {
            out.push(' ');
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    out.push(' ');
                    i += 1;
                }
                if i < chars.len() {
                    out.push(blank(chars[i]));
                    i += 1;
                }
            }
            out.push(' ');
            i += 1;
        } else if c == '\'' && next == Some('\\') {
            // An escaped character literal: '\n', '\'', '\u{7f}'.
            let end = chars[i + 2..]
                .iter()
                .skip(1)
                .position(|c| *c == '\'')
                .map_or(chars.len(), |p| i + 3 + p + 1);
            out.extend(chars[i..end].iter().map(|c| blank(*c)));
            i = end;
        } else if c == '\'' && chars.get(i + 2) == Some(&'\'') {
            out.push_str("   ");
            i += 3;
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// `code` (see [`code_only`]) with every `#[cfg(test)]` item blanked: an inline
/// `mod tests { .. }`, a `mod tests;` declaration, or any other item.
fn without_tests(code: &str) -> String {
    let mut chars: Vec<char> = code.chars().collect();
    let marker: Vec<char> = "#[cfg(test)]".chars().collect();
    let mut i = 0;
    while i + marker.len() <= chars.len() {
        if chars[i..i + marker.len()] != marker[..] {
            i += 1;
            continue;
        }
        let mut j = i + marker.len();
        let mut depth = 0usize;
        while j < chars.len() {
            match chars[j] {
                '{' => depth += 1,
                '}' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        j += 1;
                        break;
                    }
                }
                ';' if depth == 0 => {
                    j += 1;
                    break;
                }
                _ => {}
            }
            j += 1;
        }
        let end = j.min(chars.len());
        for c in &mut chars[i..end] {
            if *c != '\n' {
                *c = ' ';
            }
        }
        i = j;
    }
    chars.into_iter().collect()
}

/// Every `crate::` path in `code`, with its line (1-based).
fn crate_uses(code: &str) -> Vec<Use> {
    let chars: Vec<char> = code.chars().collect();
    let mut uses = Vec::new();
    let mut i = 0;
    while i + 5 <= chars.len() {
        let before_ok =
            i == 0 || !(chars[i - 1].is_alphanumeric() || matches!(chars[i - 1], '_' | '$'));
        if !(before_ok && chars[i..i + 5].iter().collect::<String>() == "crate") {
            i += 1;
            continue;
        }
        let line = chars[..i].iter().filter(|c| **c == '\n').count() + 1;
        let mut j = skip_space(&chars, i + 5);
        if !(chars.get(j) == Some(&':') && chars.get(j + 1) == Some(&':')) {
            i += 5;
            continue;
        }
        j = skip_space(&chars, j + 2);
        if chars.get(j) == Some(&'{') {
            // A group: one path per element at depth 1.
            let mut depth = 0;
            let mut element = String::new();
            while j < chars.len() {
                let c = chars[j];
                match c {
                    '{' => {
                        depth += 1;
                        if depth > 1 {
                            element.push(c);
                        }
                    }
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            uses.extend(path_use(&element, line));
                            break;
                        }
                        element.push(c);
                    }
                    ',' if depth == 1 => {
                        uses.extend(path_use(&element, line));
                        element.clear();
                    }
                    _ => element.push(c),
                }
                j += 1;
            }
        } else {
            let end = chars[j..]
                .iter()
                .position(|c| !(c.is_alphanumeric() || matches!(c, '_' | ':') || c.is_whitespace()))
                .map_or(chars.len(), |p| j + p);
            let path: String = chars[j..end].iter().collect();
            uses.extend(path_use(&path, line));
            j = end;
        }
        i = j.max(i + 5);
    }
    uses
}

fn skip_space(chars: &[char], mut i: usize) -> usize {
    while chars.get(i).is_some_and(|c| c.is_whitespace()) {
        i += 1;
    }
    i
}

/// The module and next segment of a path such as `chaos :: proxy :: X`.
fn path_use(path: &str, line: usize) -> Option<Use> {
    let mut segments = path
        .split("::")
        .map(|s| s.trim().trim_start_matches('{').trim())
        .filter(|s| !s.is_empty());
    let module = segments.next()?;
    let ident = |s: &str| {
        s.split(|c: char| !(c.is_alphanumeric() || c == '_'))
            .next()
            .unwrap_or_default()
            .to_string()
    };
    let module = ident(module);
    if module.is_empty() {
        return None;
    }
    Some(Use {
        module,
        next: segments.next().map(ident).filter(|s| !s.is_empty()),
        line,
    })
}
