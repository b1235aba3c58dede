//! chaosgate's fault proxies: a TCP proxy that applies network toxics and an HTTP proxy
//! that applies HTTP faults, one listener per configured target.
//!
//! The same proxies run inside the worker ([`ProxyRegistry`]) and standalone beside a
//! target (`chaosgate proxy --config FILE`, driven through [`control`] by a
//! [`ProxyClient`]). Every fault carries a lease: a fault whose runner stops renewing it
//! is removed by the registry's reaper, so a crashed runner never leaves a fault behind.
//!
//! Modules, each depending only on those listed before it (a test keeps it so):
//!
//! - `settings`: a target as configured ([`ProxyTarget`], [`ProxyProtocol`]).
//! - `error`: [`FaultId`] and [`ProxyError`].
//! - [`access`]: the control API's bearer token and TLS.
//! - `rule`: an HTTP fault compiled.
//! - `state`: a running target and its fault set, shared by the modules below.
//! - `toxic`: what the network toxics do to one connection.
//! - `lease`: the lease table and its reaper.
//! - `pump`: the byte pump (fast pass-through, toxic path).
//! - `tcp`: a TCP target's connection.
//! - `http`: the HTTP/1.1 proxy and its request faults.
//! - `listener`: a target's listener, which hands each connection to `tcp` or `http`.
//! - [`registry`]: the running targets and the faults on them.
//! - [`control`]: the HTTP control API of a standalone proxy, and its config file.
//! - [`client`]: the control API client, and [`FaultBackend`] (embedded or remote).

pub mod access;
pub(crate) mod client;
pub mod control;
mod error;
mod http;
mod lease;
mod listener;
mod pump;
pub(crate) mod registry;
mod rule;
mod settings;
mod state;
mod tcp;
mod toxic;

pub use access::BearerToken;
pub use client::{FaultBackend, ProxyAccess, ProxyClient};
pub use control::{ANONYMOUS_OWNER, StandaloneConfig};
pub use error::{FaultId, ProxyError};
pub use registry::ProxyRegistry;
pub use settings::{ProxyProtocol, ProxyTarget};

#[cfg(test)]
mod tests {
    //! Dependencies inside the proxy point one way: each module imports only the
    //! modules allowed for it here, all listed before it, so there is no cycle.

    use std::collections::BTreeSet;
    use std::path::Path;

    /// Each proxy module, in layer order, with the proxy modules it may import.
    const LAYERS: &[(&str, &[&str])] = &[
        ("settings", &[]),
        ("error", &["settings"]),
        ("access", &[]),
        ("rule", &["error"]),
        ("state", &["settings", "error", "rule"]),
        ("toxic", &["error", "state"]),
        ("lease", &["error", "state"]),
        ("pump", &["state", "toxic"]),
        ("tcp", &["state", "toxic", "pump"]),
        ("http", &["state", "toxic", "rule", "pump"]),
        ("listener", &["settings", "state", "toxic", "tcp", "http"]),
        (
            "registry",
            &[
                "settings", "error", "rule", "state", "toxic", "lease", "listener",
            ],
        ),
        (
            "control",
            &["settings", "error", "access", "lease", "registry"],
        ),
        (
            "client",
            &[
                "settings", "error", "access", "state", "registry", "control",
            ],
        ),
    ];

    /// The first path segment of each item a path starting at `rest` names:
    /// `tcp::x` gives `tcp`, `{a::b, c}` gives `a` and `c`.
    fn first_segments(rest: &str) -> Vec<String> {
        let ident = |s: &str| -> String {
            s.trim_start()
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect()
        };
        let Some(group) = rest.strip_prefix('{') else {
            return vec![ident(rest)];
        };
        let mut depth = 1;
        let mut items = Vec::new();
        let mut item = String::new();
        for c in group.chars() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 1 => items.push(std::mem::take(&mut item)),
                _ => {}
            }
            if depth == 0 {
                break;
            }
            if depth == 1 && c == ',' {
                continue;
            }
            item.push(c);
        }
        items.push(item);
        items
            .iter()
            .map(|i| ident(i))
            .filter(|i| !i.is_empty())
            .collect()
    }

    /// The proxy modules (or `mod` for an item of `mod.rs`) a file's non-test code
    /// names through `super::` or `crate::chaos::proxy::`.
    fn imports(text: &str) -> BTreeSet<String> {
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        let code: String = code
            .lines()
            .map(|line| line.split("//").next().unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n");
        let modules: BTreeSet<&str> = LAYERS.iter().map(|(m, _)| *m).collect();
        let mut found = BTreeSet::new();
        for prefix in ["super::", "crate::chaos::proxy::"] {
            for (at, _) in code.match_indices(prefix) {
                if prefix == "super::" && code[..at].ends_with("::") {
                    continue; // `crate::chaos::proxy::` already counted
                }
                for segment in first_segments(&code[at + prefix.len()..]) {
                    if modules.contains(segment.as_str()) {
                        found.insert(segment);
                    } else {
                        found.insert(format!("mod ({segment})"));
                    }
                }
            }
        }
        found
    }

    #[test]
    fn segments_of_paths_and_groups() {
        assert_eq!(first_segments("tcp::serve;"), ["tcp"]);
        assert_eq!(
            first_segments("{error::{FaultId, ProxyError}, state};"),
            ["error", "state"]
        );
        let text = "use super::state::TargetState;\nuse super::{FaultId, tcp};\n// super::http\n#[cfg(test)]\nuse super::client;";
        let found: Vec<String> = imports(text).into_iter().collect();
        assert_eq!(found, ["mod (FaultId)", "state", "tcp"]);
    }

    #[test]
    fn proxy_modules_depend_one_way() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/chaos/proxy");
        let mut files = BTreeSet::new();
        for entry in std::fs::read_dir(&dir).expect("read src/chaos/proxy") {
            let path = entry.expect("directory entry").path();
            if path.extension().is_some_and(|e| e == "rs") {
                let stem = path.file_stem().expect("file stem").to_string_lossy();
                if stem != "mod" {
                    files.insert(stem.into_owned());
                }
            }
        }
        let listed: BTreeSet<String> = LAYERS.iter().map(|(m, _)| m.to_string()).collect();
        assert_eq!(
            files, listed,
            "every file in src/chaos/proxy has a place in LAYERS"
        );
        let mut problems = Vec::new();
        for (index, (module, allowed)) in LAYERS.iter().enumerate() {
            let earlier: Vec<&str> = LAYERS[..index].iter().map(|(m, _)| *m).collect();
            for dep in *allowed {
                assert!(
                    earlier.contains(dep),
                    "LAYERS lets {module} import {dep}, which is not listed before it"
                );
            }
            let path = dir.join(format!("{module}.rs"));
            let text = std::fs::read_to_string(&path).expect("read proxy module");
            for dep in imports(&text) {
                if !allowed.contains(&dep.as_str()) {
                    problems.push(format!("{module} imports {dep}"));
                }
            }
        }
        assert!(
            problems.is_empty(),
            "imports against the proxy's layers (name the module, not a re-export of mod.rs): {problems:?}"
        );
    }
}
