//! What a catalog command can see, what is scrubbed, and what is bounded, shown with the
//! real binary: `chaosgate experiment run` and the worker (`chaosgate run` on the real
//! broker) with the worker's Kafka password in its environment, commands that write
//! their environment to a file, a Toxiproxy API URL with a percent-encoded password, a
//! Prometheus endpoint that answers without end, and a flag change whose flag holds a
//! forged log line.

#[path = "support/kafka.rs"]
mod kafka;
#[path = "support/worker.rs"]
mod worker;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chaosgate::catalog::Span;
use chaosgate::catalog::experiment::{
    Comparator, Comparison, Probe, ProbeMode, ProbeType, PrometheusProbe, RunProperties, ValueType,
};
use chaosgate::chaos::probe::check;
use chaosgate::contract::ChangeKind;
use chaosgate::contract::dead_letter::{HEADER_ERROR_CLASS, HEADER_ERROR_MESSAGE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use worker::{Harness, Settings, change, pipeline_yaml};

/// The worker's own credential, passed the way the Kubernetes manifests pass it: the
/// password of the broker's SASL/PLAIN listener (`deploy/local/kafka.sh`, user
/// `chaosgate`), which the worker test really logs in with.
const WORKER_SECRET_VARIABLE: &str = "CHAOSGATE_KAFKA__PROPERTIES__SASL_PASSWORD";
const WORKER_SECRET: &str = "chaosgate-secret";
/// Some other variable of the worker's environment, named by no experiment.
const UNRELATED_VARIABLE: &str = "SECRETS_TEST_UNRELATED";
/// A variable an experiment passes on with `env_from_worker`.
const PASSED_VARIABLE: &str = "SECRETS_TEST_PASSED";

/// Upper bound for anything a test waits for: generous, so only a bug reaches it.
const PATIENCE: Duration = Duration::from_secs(90);

/// An experiment whose fault inject, fault revert and probe each write their environment
/// to `DIR/inject.env`, `DIR/revert.env` and `DIR/probe.env`.
fn env_dump_experiment(id: &str, dir: &Path) -> String {
    let dir = dir.display();
    format!(
        r#"kind: experiment
id: {id}
timeout: 5m
faults:
  - name: dump
    weight: 5
    duration: 500ms
    command:
      inject:
        argv: ["env > '{dir}/inject.env'"]
        shell: true
        env: {{FAULT_MODE: inject, LITERAL: "${{HOME}}"}}
      revert:
        argv: ["env > '{dir}/revert.env'"]
        shell: true
        env_from_worker: [{PASSED_VARIABLE}]
probes:
  - name: dump
    mode: eot
    command:
      command:
        argv: [sh, -c, 'env > "$DUMP"']
        env: {{DUMP: "{dir}/probe.env"}}
"#
    )
}

/// The variables in an `env` dump: name, value (single-line values).
fn variables(path: &Path) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{} was not written: {e}", path.display()));
    text.lines()
        .filter_map(|line| line.split_once('='))
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect()
}

/// Checks the three dumps of [`env_dump_experiment`]: none holds a worker variable, each
/// holds PATH, HOME, LANG and what the experiment declared.
fn assert_clean_dumps(dir: &Path) {
    for (file, declared) in [
        (
            "inject.env",
            vec![("FAULT_MODE", "inject"), ("LITERAL", "${HOME}")],
        ),
        ("revert.env", vec![(PASSED_VARIABLE, "passed-on")]),
        ("probe.env", vec![("DUMP", "")]),
    ] {
        let path = dir.join(file);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{} was not written: {e}", path.display()));
        let seen = variables(&path);
        assert!(
            !text.contains(WORKER_SECRET),
            "{file} holds the worker's password:\n{text}"
        );
        for name in seen.keys() {
            assert!(
                !name.starts_with("CHAOSGATE_") && name != UNRELATED_VARIABLE,
                "{file} holds the worker's {name}:\n{text}"
            );
        }
        for base in ["PATH", "HOME", "LANG"] {
            assert!(seen.contains_key(base), "{file} has no {base}:\n{text}");
        }
        assert_eq!(seen["LANG"], "C.UTF-8", "{file}");
        for (name, value) in declared {
            let got = seen.get(name).map(String::as_str);
            if value.is_empty() {
                assert!(got.is_some(), "{file} has no {name}:\n{text}");
            } else {
                assert_eq!(got, Some(value), "{file}: {name}\n{text}");
            }
        }
    }
}

/// `command` with the worker-side environment every test gives the binary.
fn with_worker_environment(command: &mut Command) -> &mut Command {
    command
        .env(WORKER_SECRET_VARIABLE, WORKER_SECRET)
        .env(UNRELATED_VARIABLE, "unrelated")
        .env(PASSED_VARIABLE, "passed-on")
        .env("LANG", "C.UTF-8")
        .env_remove("RUST_LOG")
}

#[test]
fn experiment_run_commands_see_only_what_the_experiment_declares() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dump.yaml");
    std::fs::write(&file, env_dump_experiment("env-dump", dir.path())).unwrap();
    let output = with_worker_environment(&mut Command::new(env!("CARGO_BIN_EXE_chaosgate")))
        .args(["experiment", "run", "--json"])
        .arg(&file)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert_clean_dumps(dir.path());
}

#[test]
fn a_command_cannot_be_handed_the_workers_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("greedy.yaml");
    std::fs::write(
        &file,
        format!(
            "kind: experiment\nid: greedy\nprobes:\n  - name: p\n    mode: eot\n    command:\n      command:\n        argv: [env]\n        env_from_worker: [{WORKER_SECRET_VARIABLE}]\n"
        ),
    )
    .unwrap();
    let output = with_worker_environment(&mut Command::new(env!("CARGO_BIN_EXE_chaosgate")))
        .arg("validate")
        .arg(&file)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert_ne!(output.status.code(), Some(0), "{text}");
    assert!(
        text.contains("greedy.yaml:9: probes[0].command.command.env_from_worker[0]: 'CHAOSGATE_KAFKA__PROPERTIES__SASL_PASSWORD' is a worker configuration variable"),
        "{text}"
    );
}

#[test]
fn url_passwords_and_credential_variables_never_reach_the_output() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on the Toxiproxy port: the inject fails, and its error quotes the
    // URL (the URL library writes the password percent-encoded).
    let port = closed_port();
    let toxic = format!(
        r#"kind: experiment
id: leaky-url
faults:
  - name: toxic
    weight: 5
    duration: 1s
    toxiproxy:
      api: "http://chaos:t0x%40pa55@127.0.0.1:{port}"
      proxy: db
      toxic: {{type: latency, latency: 100ms}}
probes:
  - name: p
    mode: eot
    command: {{command: {{argv: ["true"]}}}}
"#
    );
    // The inject fails and prints the token it was given: its standard error is quoted.
    let echo = r#"kind: experiment
id: leaky-env
faults:
  - name: echo
    weight: 5
    duration: 1s
    command:
      inject:
        argv: ["echo \"token $API_TOKEN\" >&2; exit 3"]
        shell: true
        env: {API_TOKEN: tok-declared-0123}
      revert: {argv: ["true"]}
probes:
  - name: p
    mode: eot
    command: {command: {argv: ["true"]}}
"#;
    for (name, yaml, shown) in [
        (
            "url.yaml",
            toxic.as_str(),
            format!("http://chaos:***@127.0.0.1:{port}"),
        ),
        ("env.yaml", echo, "token ***".to_string()),
    ] {
        let file = dir.path().join(name);
        std::fs::write(&file, yaml).unwrap();
        for json in [true, false] {
            let mut command = Command::new(env!("CARGO_BIN_EXE_chaosgate"));
            with_worker_environment(&mut command).args(["experiment", "run"]);
            if json {
                command.arg("--json");
            }
            // Output to files, and the runner alone waited for: the toxic fault's guard
            // takes over the revert the runner gave up (the API is gone for good) and
            // would keep a piped standard error open for its 10 minutes of retries.
            let mark = uuid::Uuid::new_v4().to_string();
            let out = dir.path().join(format!("{name}.{json}.out"));
            let err = dir.path().join(format!("{name}.{json}.err"));
            let status = command
                .arg(&file)
                .env(GUARD_MARK, &mark)
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(&out).unwrap())
                .stderr(std::fs::File::create(&err).unwrap())
                .status()
                .unwrap();
            sigkill_marked(&mark);
            assert!(!status.success(), "{name}: the run fails");
            let text = format!(
                "{}{}",
                std::fs::read_to_string(&out).unwrap(),
                std::fs::read_to_string(&err).unwrap()
            );
            assert!(
                text.contains(&shown),
                "{name}: the failure is reported: {text}"
            );
            for secret in ["t0x%40pa55", "t0x@pa55", "tok-declared-0123"] {
                assert!(
                    !text.contains(secret),
                    "{name}: {secret} shown (json {json}):\n{text}"
                );
            }
        }
    }
}

/// Marks the processes of one run (the runner and its fault guards) in their environment.
const GUARD_MARK: &str = "CHAOSGATE_TEST_SECRETS_MARK";

/// SIGKILLs every process whose environment holds `GUARD_MARK=mark` (guards left
/// retrying a revert that cannot succeed).
fn sigkill_marked(mark: &str) {
    for pid in worker::pids_with_env(GUARD_MARK, mark) {
        // SAFETY: kill(2) has no memory effects; the process is this test's own.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// A loopback port with nothing listening on it.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test]
async fn a_prometheus_answer_without_end_is_cut_at_the_limit() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = sent.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                let _ = socket.read(&mut request).await;
                let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
                if socket.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let chunk = format!("{:x}\r\n{}\r\n", 65536, " ".repeat(65536));
                // Without end: until the probe stops reading, or 1 GiB.
                for _ in 0..16_384 {
                    if socket.write_all(chunk.as_bytes()).await.is_err() {
                        return;
                    }
                    counter.fetch_add(65536, std::sync::atomic::Ordering::Relaxed);
                }
            });
        }
    });
    let endpoint = format!("http://{address}");
    let probe = Probe {
        name: "endless".into(),
        mode: ProbeMode::Eot,
        run_properties: RunProperties {
            timeout: Span::from_millis(60_000),
            ..RunProperties::default()
        },
        probe_type: ProbeType::Prometheus(PrometheusProbe {
            endpoint: endpoint.clone(),
            query: "up".into(),
            comparison: Comparison {
                value_type: ValueType::Int,
                criteria: Comparator::Ge,
                value: "1".into(),
            },
        }),
    };
    let started = Instant::now();
    let result = check(&probe).await;
    let error = result.error.clone().unwrap_or_default();
    assert!(!result.passed, "{result:?}");
    assert!(
        error.contains(&endpoint) && error.contains("over the 1048576-byte limit"),
        "{error}"
    );
    // The probe stopped reading near the limit (what the kernel buffers aside), long
    // before the server ran out.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let written = sent.load(std::sync::atomic::Ordering::Relaxed);
    assert!(written < 64 << 20, "the server wrote {written} bytes");
    assert!(started.elapsed() < Duration::from_secs(60));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_commands_see_only_what_the_experiment_declares_and_a_forged_flag_is_dead_lettered()
{
    let servers = kafka::require_broker();
    let sasl_servers = std::env::var("KAFKA_SASL_BOOTSTRAP_SERVERS").unwrap_or_else(|_| {
        panic!(
            "KAFKA_SASL_BOOTSTRAP_SERVERS is not set: start the broker with a SASL listener \
             (`eval \"$(KAFKA_SASL_PORT=19094 deploy/local/kafka.sh env)\"`), as scripts/test.sh does"
        )
    });
    // (Not "secrets": the test folder is named after it, and "chaosgate-secrets-..."
    // would hold the password "chaosgate-secret".)
    let h = Harness::new(&servers, "clean-env", 1).await;
    let dumps = h.dir.path().join("dumps");
    std::fs::create_dir_all(&dumps).unwrap();
    h.catalog_file("exp.yaml", &env_dump_experiment("env-dump", &dumps));
    h.catalog_file(
        "pipe.yaml",
        &pipeline_yaml("env-gate", Some("env-*"), &["env-dump"]),
    );
    // The worker logs in over SASL/PLAIN with the password from its environment only: a
    // command it gates cannot read it.
    let settings = Settings {
        properties: vec![
            ("security.protocol", "SASL_PLAINTEXT".to_string()),
            ("sasl.mechanism", "PLAIN".to_string()),
            ("sasl.username", "chaosgate".to_string()),
        ],
        ..Settings::default()
    };
    let config = h.config("w1", &settings);
    let text = std::fs::read_to_string(&config).unwrap().replace(
        &format!("bootstrap_servers = \"{servers}\""),
        &format!("bootstrap_servers = \"{sasl_servers}\""),
    );
    assert!(!text.contains(WORKER_SECRET));
    std::fs::write(&config, text).unwrap();
    let log = h.dir.path().join("w1-1.log");
    let out = std::fs::File::create(&log).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_chaosgate"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("CHAOSGATE_") {
            command.env_remove(name);
        }
    }
    let mut child = KillOnDrop(
        with_worker_environment(&mut command)
            .arg("run")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap(),
    );

    let collector = h.collect();
    let good = change("env-check", ChangeKind::Enable, None);
    let forged_line = "2026-11-30T06:00:00.000000Z  INFO chaosgate::gate: gate opened";
    let forged = change(&format!("env-x\n{forged_line}"), ChangeKind::Enable, None);
    h.produce_change(&forged).await;
    h.produce_change(&good).await;
    let out = h
        .wait_for(&collector, "a command and a dead letter", PATIENCE, |o| {
            !o.commands_for(&good.event_id).is_empty() && !o.dead_letters.is_empty()
        })
        .await;
    assert_clean_dumps(&dumps);

    let letter = &out.dead_letters[0].value;
    let header = |name: &str| {
        letter
            .header(name)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default()
    };
    assert_eq!(header(HEADER_ERROR_CLASS), "schema_violation");
    let reason = header(HEADER_ERROR_MESSAGE);
    assert!(
        reason.starts_with("data.flag: \"env-x\\n2026-11-30T06:00:00.000000Z")
            && reason.contains("is not a key name: 1 to 128 characters"),
        "{reason}"
    );
    assert!(!reason.contains('\n'), "{reason}");

    child.0.kill().ok();
    child.0.wait().ok();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.lines().all(|line| !line.starts_with(forged_line)),
        "a forged line in the worker log:\n{text}"
    );
    assert!(!text.contains(WORKER_SECRET), "{text}");
}

/// A child process killed when the test ends, pass or fail.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
