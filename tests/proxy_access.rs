//! Who may drive a standalone `chaosgate proxy`: its control API asks for the bearer
//! token when it has one (401 without it or with a wrong one), refuses to start on a
//! non-loopback address without one, serves https with a certificate and key, bounds
//! request bodies, and `chaosgate experiment run` passes the token end to end. All
//! against the real binary over real TCP, HTTP and TLS.

#[path = "support/standalone_proxy.rs"]
mod standalone_proxy;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use chaosgate::catalog::experiment::{Direction, NetworkFault, Toxic};
use chaosgate::chaos::proxy::{BearerToken, ProxyAccess, ProxyClient, ProxyError};
use chaosgate::chaos::run::ExperimentResult;
use chaosgate::contract::run_record::RunStatus;
use serde_json::{Value, json};
use standalone_proxy::{config, echo_server, experiment_file, experiment_run};

/// Outer bound on every wait: a bug fails the test instead of hanging it.
const WAIT: Duration = Duration::from_secs(30);

const TOKEN: &str = "t0ken-for-the-proxy-tests";

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// A raw call: status, `WWW-Authenticate`, JSON body.
async fn call(
    method: reqwest::Method,
    url: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Option<String>, Value) {
    within("control API call", async {
        let mut request = reqwest::Client::new().request(method, url);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("control API reachable");
        let status = response.status().as_u16();
        let challenge = response
            .headers()
            .get("www-authenticate")
            .map(|v| v.to_str().expect("ascii").to_string());
        let text = response.text().await.expect("body");
        (
            status,
            challenge,
            serde_json::from_str(&text).unwrap_or(Value::Null),
        )
    })
    .await
}

fn latency() -> NetworkFault {
    NetworkFault {
        target: "echo".into(),
        proxy: None,
        toxic: Toxic::Latency {
            latency: "100ms".parse().expect("span"),
            jitter: "0ms".parse().expect("span"),
        },
        direction: Direction::Downstream,
        toxicity: 1.0,
    }
}

fn access(token: &str, ca_file: Option<&Path>) -> ProxyAccess {
    ProxyAccess {
        token: Some(BearerToken::new(token).expect("token")),
        ca_file: ca_file.map(Path::to_path_buf),
    }
}

/// Adds a fault through `client`, sees it listed, removes it, sees it gone.
async fn inject_and_revert(client: &ProxyClient) {
    let id = within("add", client.add_network_fault("echo", &latency(), WAIT))
        .await
        .expect("fault added");
    let listed = within("targets", client.targets()).await.expect("targets");
    assert_eq!(
        listed[0].faults.iter().map(|f| f.id).collect::<Vec<_>>(),
        [id]
    );
    assert!(within("remove", client.remove(id)).await.expect("removed"));
    let listed = within("targets", client.targets()).await.expect("targets");
    assert!(listed[0].faults.is_empty(), "{:?}", listed[0].faults);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_protected_control_api_answers_401_without_it_and_works_with_it() {
    let echo = echo_server().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("token");
    // As a mounted Secret often is: the token and a newline.
    std::fs::write(&token_file, format!("{TOKEN}\n")).expect("write token");
    let extra = format!("[control]\ntoken_file = \"{}\"\n", token_file.display());
    let proxy =
        standalone_proxy::start(dir.path(), &config("127.0.0.1:0", &extra, echo), &[]).await;
    let targets = format!("{}/targets", proxy.control);

    let (status, challenge, body) = call(reqwest::Method::GET, &targets, None, None).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(
        challenge.as_deref(),
        Some("Bearer realm=\"chaosgate-proxy\"")
    );
    assert_eq!(body["error"], "unauthorized", "{body}");

    let (status, challenge, body) =
        call(reqwest::Method::GET, &targets, Some("not-the-token"), None).await;
    assert_eq!(status, 401, "{body}");
    assert!(
        challenge
            .as_deref()
            .is_some_and(|c| c.starts_with("Bearer ") && c.contains("error=\"invalid_token\"")),
        "{challenge:?}"
    );
    // Nothing was added by a refused call.
    let add =
        json!({"network": {"toxic": {"type": "latency", "latency": "100ms"}}, "lease_ms": 5000});
    let faults = format!("{}/targets/echo/faults", proxy.control);
    let (status, _, _) = call(reqwest::Method::POST, &faults, None, Some(add.clone())).await;
    assert_eq!(status, 401);

    let (status, _, body) = call(reqwest::Method::GET, &targets, Some(TOKEN), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body[0]["faults"],
        json!([]),
        "the refused add added nothing: {body}"
    );
    // Liveness probes carry no token.
    let health = format!("{}/healthz", proxy.control);
    let (status, _, _) = call(reqwest::Method::GET, &health, None, None).await;
    assert_eq!(status, 200);

    // The client with the token injects and reverts; without it, it is told why.
    let client = ProxyClient::with_access(&proxy.control, &access(TOKEN, None)).expect("client");
    inject_and_revert(&client).await;
    let anonymous = ProxyClient::new(&proxy.control).expect("client");
    let err = within(
        "add without token",
        anonymous.add_network_fault("echo", &latency(), WAIT),
    )
    .await
    .expect_err("401");
    assert!(
        matches!(
            err,
            ProxyError::Remote {
                status: Some(401),
                ..
            }
        ),
        "{err}"
    );

    // Bodies are bounded: 413 with a JSON error, nothing added.
    let big = json!({"network": {"toxic": {"type": "latency", "latency": "100ms"}}, "lease_ms": 5000, "owner": "x".repeat(70 * 1024)});
    let (status, _, body) = call(reqwest::Method::POST, &faults, Some(TOKEN), Some(big)).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"], "body_too_large", "{body}");
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_loopback_control_address_needs_a_token_to_start() {
    let echo = echo_server().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (code, stderr) =
        standalone_proxy::refused(dir.path(), &config("0.0.0.0:0", "", echo), &[]).await;
    assert_ne!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("control_listen 0.0.0.0:0 is not a loopback address")
            && stderr.contains("control.token_file")
            && stderr.contains("CHAOSGATE_PROXY__TOKEN"),
        "{stderr}"
    );
    // A token file that is not there is named.
    let extra = "[control]\ntoken_file = \"/nonexistent/token\"\n";
    let (code, stderr) =
        standalone_proxy::refused(dir.path(), &config("0.0.0.0:0", extra, echo), &[]).await;
    assert_ne!(code, Some(0), "{stderr}");
    assert!(stderr.contains("/nonexistent/token"), "{stderr}");

    // With the token in the environment it starts, on every interface, and asks for it.
    let proxy = standalone_proxy::start(
        dir.path(),
        &config("0.0.0.0:0", "", echo),
        &[("CHAOSGATE_PROXY__TOKEN", TOKEN)],
    )
    .await;
    let port = proxy.control.rsplit(':').next().expect("port").to_string();
    let base = format!("http://127.0.0.1:{port}");
    let (status, _, _) = call(reqwest::Method::GET, &format!("{base}/targets"), None, None).await;
    assert_eq!(status, 401);
    let client = ProxyClient::with_access(&base, &access(TOKEN, None)).expect("client");
    inject_and_revert(&client).await;
}

/// Makes a CA and a server certificate for 127.0.0.1 signed by it, with the openssl
/// CLI; returns (ca.pem, server.pem, server.key).
fn test_certificates(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .output()
            .expect("the openssl CLI is needed to make test certificates");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=chaosgate test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(&ca);
    let mut csr = vec!["req"];
    csr.extend(ec);
    csr.extend([
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    openssl(&csr);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write extensions");
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "server.ext",
    ]);
    (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_api_serves_https_to_a_client_that_trusts_its_ca() {
    let echo = echo_server().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca, cert, key) = test_certificates(dir.path());
    let extra = format!(
        "[control]\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
        cert.display(),
        key.display()
    );
    let proxy = standalone_proxy::start(
        dir.path(),
        &config("127.0.0.1:0", &extra, echo),
        &[("CHAOSGATE_PROXY__TOKEN", TOKEN)],
    )
    .await;
    assert!(
        proxy.control.starts_with("https://127.0.0.1:"),
        "{}",
        proxy.control
    );

    let client =
        ProxyClient::with_access(&proxy.control, &access(TOKEN, Some(&ca))).expect("client");
    inject_and_revert(&client).await;

    // A client that does not trust the CA gets no answer at all.
    let untrusting =
        ProxyClient::with_access(&proxy.control, &access(TOKEN, None)).expect("client");
    let err = within("untrusted", untrusting.targets())
        .await
        .expect_err("untrusted certificate");
    assert!(
        matches!(err, ProxyError::Remote { status: None, .. }),
        "{err}"
    );
    // Plain http to the https port is not served either.
    let plain = proxy.control.replacen("https://", "http://", 1);
    let plain = ProxyClient::with_access(&plain, &access(TOKEN, None)).expect("client");
    assert!(within("plain", plain.targets()).await.is_err());
    // Only one of tls_cert / tls_key is refused at start.
    let half = format!("[control]\ntls_cert = \"{}\"\n", cert.display());
    let (code, stderr) =
        standalone_proxy::refused(dir.path(), &config("127.0.0.1:0", &half, echo), &[]).await;
    assert_ne!(code, Some(0));
    assert!(
        stderr.contains("control.tls_cert is set without control.tls_key"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn experiment_run_passes_the_token_to_a_protected_proxy() {
    let echo = echo_server().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, TOKEN).expect("write token");
    let extra = format!("[control]\ntoken_file = \"{}\"\n", token_file.display());
    let proxy =
        standalone_proxy::start(dir.path(), &config("127.0.0.1:0", &extra, echo), &[]).await;
    let file = experiment_file(dir.path(), "through-token", &proxy.control, "1s");
    let run = |env: &[(&str, &str)]| experiment_run(&file, &[], env);
    let token_file_text = token_file.display().to_string();
    let out = within(
        "experiment run with the token",
        run(&[("CHAOSGATE_PROXY__TOKEN_FILE", &token_file_text)]).output(),
    )
    .await
    .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let result: ExperimentResult =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {stderr}"));
    assert_eq!(result.verdict, RunStatus::Passed, "{:?}", result.log);
    let fault = &result.faults[0];
    assert!(fault.started_at.is_some() && fault.reverted, "{fault:?}");
    assert!(!stderr.contains(TOKEN) && !String::from_utf8_lossy(&out.stdout).contains(TOKEN));
    // The proxy has nothing left.
    let client = ProxyClient::with_access(&proxy.control, &access(TOKEN, None)).expect("client");
    let listed = within("targets", client.targets()).await.expect("targets");
    assert!(listed[0].faults.is_empty(), "{:?}", listed[0].faults);

    // The same run from the environment variable with the value works too; without a
    // token it is an error naming the 401, nothing injected.
    let out = within(
        "with env token",
        run(&[("CHAOSGATE_PROXY__TOKEN", TOKEN)]).output(),
    )
    .await
    .expect("run");
    let result: ExperimentResult = serde_json::from_slice(&out.stdout).expect("result");
    assert_eq!(result.verdict, RunStatus::Passed, "{:?}", result.log);
    let out = within("without token", run(&[]).output())
        .await
        .expect("run");
    let result: ExperimentResult = serde_json::from_slice(&out.stdout).expect("result");
    assert_eq!(result.verdict, RunStatus::Error, "{:?}", result.log);
    assert!(result.summary.contains("401"), "{}", result.summary);
    assert!(result.faults[0].started_at.is_none());
}

fn repo(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// The document of `kind` named `name` in the YAML file `path` (of the repository).
fn deploy_document(path: &str, kind: &str, name: &str) -> Value {
    let text = std::fs::read_to_string(repo(path)).expect("read deploy file");
    let documents: Vec<Value> =
        serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
    documents
        .into_iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("{path}: no {kind} {name}"))
}

/// The file a pod sees at `path` when it mounts the volume holding Secret `secret` (with
/// one item): `Some(mount path + item path)`.
fn secret_file_in_pod(pod: &Value, secret: &str) -> Option<String> {
    let volume = pod["volumes"]
        .as_array()?
        .iter()
        .find(|v| v["secret"]["secretName"] == secret)?;
    let item = volume["secret"]["items"][0]["path"].as_str()?;
    let mount = pod["containers"][0]["volumeMounts"]
        .as_array()?
        .iter()
        .find(|m| m["name"] == volume["name"])?;
    Some(format!("{}/{item}", mount["mountPath"].as_str()?))
}

#[test]
fn kubernetes_and_compose_give_the_token_secret_to_the_proxy_and_the_worker() {
    // Kubernetes: the proxy on 0.0.0.0 reads its token from the Secret's file, and the
    // worker's config reads the same Secret's file.
    let proxy_map = deploy_document(
        "deploy/kubernetes/proxy.yaml",
        "ConfigMap",
        "payments-proxy",
    );
    let proxy_toml = proxy_map["data"]["proxy.toml"]
        .as_str()
        .expect("proxy.toml");
    let proxy_config = chaosgate::chaos::proxy::StandaloneConfig::parse(proxy_toml).expect("parse");
    let proxy_deployment = deploy_document(
        "deploy/kubernetes/proxy.yaml",
        "Deployment",
        "payments-proxy",
    );
    let proxy_pod = &proxy_deployment["spec"]["template"]["spec"];
    let token_file = proxy_config.control.token_file.expect("control.token_file");
    assert_eq!(
        secret_file_in_pod(proxy_pod, "chaosgate-proxy-token").as_deref(),
        token_file.to_str()
    );
    let secret = deploy_document(
        "deploy/kubernetes/secret.example.yaml",
        "Secret",
        "chaosgate-proxy-token",
    );
    assert!(secret["stringData"]["token"].is_string());
    let worker = deploy_document(
        "deploy/kubernetes/deployment.yaml",
        "Deployment",
        "chaosgate",
    );
    let worker_pod = &worker["spec"]["template"]["spec"];
    let worker_map = deploy_document(
        "deploy/kubernetes/configmap.yaml",
        "ConfigMap",
        "chaosgate-config",
    );
    let worker_toml = worker_map["data"]["chaosgate.toml"]
        .as_str()
        .expect("chaosgate.toml");
    let worker_config: toml::Table = toml::from_str(worker_toml).expect("worker config");
    assert_eq!(
        secret_file_in_pod(worker_pod, "chaosgate-proxy-token").as_deref(),
        worker_config["proxy"]["token_file"].as_str()
    );
    // Nothing passes the token as an argument, and the non-root user can read the
    // Secret's file: it is mounted 0440 (root-owned), so the pod's fsGroup must be the
    // user's group (without it the proxy and the worker stop at start, "Permission
    // denied").
    for pod in [proxy_pod, worker_pod] {
        let args = pod["containers"][0]["args"].to_string();
        assert!(!args.contains("token"), "{args}");
        let security = &pod["securityContext"];
        assert!(
            security["fsGroup"].is_number() && security["fsGroup"] == security["runAsGroup"],
            "fsGroup must be the runAsGroup for a 0440 Secret: {security}"
        );
    }

    // Compose: one secret, mounted in both, named by the proxy's config and the worker's
    // variable.
    let compose: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(repo("docker-compose.yml")).expect("read docker-compose.yml"),
    )
    .expect("docker-compose.yml");
    assert!(compose["secrets"]["proxy-token"]["file"].is_string());
    for service in ["chaosgate", "demo-proxy"] {
        let listed = &compose["services"][service]["secrets"];
        assert!(
            listed
                .as_array()
                .is_some_and(|s| s.iter().any(|n| n == "proxy-token")),
            "{service}: {listed}"
        );
    }
    let proxy_config = chaosgate::chaos::proxy::StandaloneConfig::parse(
        &std::fs::read_to_string(repo("deploy/compose/proxy.toml")).expect("read"),
    )
    .expect("parse");
    assert_eq!(
        proxy_config.control.token_file.as_deref(),
        Some(Path::new("/run/secrets/proxy-token"))
    );
    assert_eq!(
        compose["services"]["chaosgate"]["environment"]["CHAOSGATE_PROXY__TOKEN_FILE"],
        "/run/secrets/proxy-token"
    );
}
