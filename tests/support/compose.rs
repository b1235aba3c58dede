//! `docker-compose.yml` for the tests: the file parsed, and the configuration a service
//! of it runs with (the image's `deploy/container/chaosgate.toml` plus the service's
//! `CHAOSGATE_*` environment).

#![allow(dead_code)]

use serde_json::Value;

/// A path in the repository.
pub fn repo(path: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// `docker-compose.yml`, parsed.
pub fn compose() -> Value {
    serde_saphyr::from_str(
        &std::fs::read_to_string(repo("docker-compose.yml")).expect("read docker-compose.yml"),
    )
    .expect("docker-compose.yml")
}

/// The configuration `service` of `compose` runs with.
pub fn service_config(compose: &Value, service: &str) -> chaosgate::config::Config {
    let overrides: Vec<(String, String)> = compose["services"][service]["environment"]
        .as_object()
        .unwrap_or_else(|| panic!("{service}'s environment"))
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().expect("a string").to_string()))
        .collect();
    chaosgate::config::Config::parse(
        &std::fs::read_to_string(repo("deploy/container/chaosgate.toml")).expect("read"),
        "image config",
        overrides,
    )
    .unwrap_or_else(|e| panic!("{e}"))
}
