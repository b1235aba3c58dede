//! The published contracts: schemas match the Rust types, every schema example is valid,
//! and messages round-trip through JSON.

use chaosgate::contract::{
    dead_letter::dead_letter_example, flag_change::flag_change_example,
    flag_command::flag_command_example, run_record::run_record_example,
};
use chaosgate::schema;

fn schemas_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas")
}

#[test]
fn committed_schemas_are_fresh() {
    let mut stale = Vec::new();
    for name in schema::NAMES {
        let path = schemas_dir().join(schema::file_name(name));
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        if committed != schema::rendered(name).unwrap() {
            stale.push(path.display().to_string());
        }
    }
    assert!(
        stale.is_empty(),
        "stale schemas (regenerate with `cargo run -- schema --write schemas`): {stale:?}"
    );
}

#[test]
fn every_schema_has_valid_examples() {
    for name in schema::NAMES {
        let schema = schema::schema(name).unwrap();
        let validator = jsonschema::draft202012::new(&schema)
            .unwrap_or_else(|e| panic!("{name}: schema does not compile: {e}"));
        let examples = schema["examples"]
            .as_array()
            .unwrap_or_else(|| panic!("{name}: schema has no examples"));
        assert!(!examples.is_empty(), "{name}: schema has no examples");
        for example in examples {
            let errors: Vec<String> = validator
                .iter_errors(example)
                .map(|e| e.to_string())
                .collect();
            assert!(errors.is_empty(), "{name}: example invalid: {errors:?}");
        }
    }
}

fn round_trip<T>(value: &T)
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let text = serde_json::to_string(value).unwrap();
    let back: T = serde_json::from_str(&text).unwrap();
    assert_eq!(&back, value);
}

#[test]
fn messages_round_trip_through_json() {
    round_trip(&flag_change_example());
    round_trip(&run_record_example());
    round_trip(&flag_command_example());
    round_trip(&dead_letter_example());
}

#[test]
fn flag_change_ignores_unknown_fields() {
    let mut value = serde_json::to_value(flag_change_example()).unwrap();
    value["future_field"] = serde_json::json!({"x": 1});
    let change: chaosgate::contract::FlagChange = serde_json::from_value(value).unwrap();
    assert_eq!(change, flag_change_example());
}

#[test]
fn asyncapi_describes_every_topic_and_schema() {
    let text = std::fs::read_to_string(schemas_dir().join("asyncapi.yaml")).unwrap();
    let doc: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
    assert_eq!(doc["asyncapi"], "3.0.0");
    let topics = chaosgate::config::Config::parse(
        "[kafka]\nbootstrap_servers = \"x\"\n[catalog]\npath = \"x\"\n",
        "inline",
        Vec::new(),
    )
    .unwrap()
    .kafka
    .topics;
    let addresses: Vec<&str> = doc["channels"]
        .as_object()
        .unwrap()
        .values()
        .map(|c| c["address"].as_str().unwrap())
        .collect();
    for topic in [
        &topics.flag_changes,
        &topics.runs,
        &topics.commands,
        &topics.dead_letter,
        &topics.control,
        &topics.approved_flags,
        &topics.flag_state,
    ] {
        assert!(
            addresses.contains(&topic.as_str()),
            "asyncapi lacks topic {topic}"
        );
    }
    // Every message schema is some message's payload.
    let payloads: Vec<&str> = doc["components"]["messages"]
        .as_object()
        .unwrap()
        .values()
        .filter_map(|m| m["payload"]["$ref"].as_str())
        .collect();
    for name in chaosgate::schema::NAMES {
        // A dead letter's value is the original bytes; its schema is the JSON view.
        if ["pipeline", "experiment", "config", "dead-letter"].contains(&name) {
            continue;
        }
        let file = format!("./{}", chaosgate::schema::file_name(name));
        assert!(
            payloads.contains(&file.as_str()),
            "asyncapi lacks a message for {file}"
        );
    }
    // Every payload reference names a committed schema file.
    for message in doc["components"]["messages"].as_object().unwrap().values() {
        if let Some(reference) = message["payload"]["$ref"].as_str() {
            let file = reference.trim_start_matches("./");
            assert!(
                schemas_dir().join(file).exists(),
                "{reference} does not exist"
            );
        }
        // Every channel message has a description of its key.
        assert!(
            message["bindings"]["kafka"]["key"].is_object()
                || message["name"] == "AbortRequest"
                || message["name"] == "ApprovalRequest"
        );
    }
    for channel in doc["channels"].as_object().unwrap().values() {
        let description = channel["description"].as_str().unwrap();
        assert!(description.contains("Produced by") && description.contains("onsumed by"));
    }
}
