//! A real Unleash server of one test's own: its own database on the PostgreSQL that
//! `deploy/local/unleash.sh` runs (`UNLEASH_PG_URL`), its own `node dist/server.js`
//! process (`UNLEASH_SERVER_JS`) on a free loopback port, killed and its database dropped
//! when the [`UnleashServer`] is dropped. `scripts/test.sh` starts the PostgreSQL and
//! exports both variables; without them every test using this FAILS (never skips).
//!
//! Two actors, as Unleash records them in `createdBy`: the admin token seeded with
//! `INIT_ADMIN_API_TOKENS` is named `admin` ([`HUMAN`], "the human" flipping flags), and
//! the user `chaosgate`'s personal access token ([`CHAOSGATE`], chaosgate's own changes).
//!
//! Unleash reads its list of integrations once at start and then caches it for 60 s
//! (memoizee `maxAge` in `dist/lib/services/addon-service.js`), so
//! [`UnleashServer::add_webhook`] restarts the server for the webhook to take effect at
//! once.

#![allow(dead_code)] // each test file uses its own part

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

#[path = "connect.rs"]
mod connect;

/// Starts `chaosgate connect unleash --config CONFIG` (this build's binary) in `dir`, its
/// output to `log`, without the test's own `CHAOSGATE_*` and `RUST_LOG` variables.
pub fn spawn_bridges(config: &Path, dir: &Path, log: &Path) -> Child {
    connect::spawn_connect("unleash", config, dir, log)
}

/// `createdBy` of changes made with [`UnleashServer::admin_token`] (Unleash names tokens
/// seeded by `INIT_ADMIN_API_TOKENS` `admin`).
pub const HUMAN: &str = "admin";
/// `createdBy` of changes made with [`UnleashServer::chaosgate_token`] (the user's
/// username: it has no email).
pub const CHAOSGATE: &str = "chaosgate";
/// The events Unleash's webhook integration sends to chaosgate (README, "Connect Unleash").
pub const WEBHOOK_EVENTS: [&str; 5] = [
    "feature-environment-enabled",
    "feature-environment-disabled",
    "feature-strategy-add",
    "feature-strategy-update",
    "feature-strategy-remove",
];

const ADMIN_TOKEN: &str = "*:*.chaosgate-test-admin-token";
const CHAOSGATE_PASSWORD: &str = "Chaosgate-pw-123!";
/// Outer bound on one start (migrations of a fresh database take ~2 s unloaded): a bug
/// fails the test instead of hanging it.
const START: Duration = Duration::from_secs(90);
const REQUEST: Duration = Duration::from_secs(20);

/// One Unleash server with its own database; killed and dropped with it.
pub struct UnleashServer {
    port: u16,
    url: String,
    database: String,
    pg: PgUrl,
    server_js: PathBuf,
    dir: tempfile::TempDir,
    child: Mutex<Option<Child>>,
    http: reqwest::Client,
    chaosgate_token: tokio::sync::OnceCell<String>,
}

/// The parts of `UNLEASH_PG_URL` (`postgres://USER@HOST:PORT`) psql and Unleash need.
#[derive(Clone)]
struct PgUrl {
    user: String,
    host: String,
    port: u16,
}

fn required_env(name: &str) -> String {
    match std::env::var(name) {
        Ok(value) if !value.is_empty() => value,
        _ => panic!(
            "{name} is not set: the Unleash tests need the PostgreSQL and the unleash-server \
             install that `deploy/local/unleash.sh start` provides; run the tests with \
             `scripts/test.sh`, or `deploy/local/unleash.sh start && eval \"$(deploy/local/unleash.sh env)\"` \
             first"
        ),
    }
}

impl PgUrl {
    fn from_env() -> PgUrl {
        let raw = required_env("UNLEASH_PG_URL");
        let url = reqwest::Url::parse(&raw)
            .unwrap_or_else(|e| panic!("UNLEASH_PG_URL={raw} is not a URL: {e}"));
        PgUrl {
            user: if url.username().is_empty() {
                "unleash".into()
            } else {
                url.username().into()
            },
            host: url.host_str().unwrap_or("127.0.0.1").into(),
            port: url.port().unwrap_or(5432),
        }
    }

    fn database_url(&self, database: &str) -> String {
        format!(
            "postgres://{}@{}:{}/{database}",
            self.user, self.host, self.port
        )
    }

    /// Runs one SQL statement on the `postgres` database with psql; panics with its
    /// output when it fails.
    fn exec(&self, sql: &str) {
        let output = Command::new("psql")
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", &self.host])
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                &self.user,
                "-d",
                "postgres",
            ])
            .args(["-c", sql])
            .output()
            .unwrap_or_else(|e| panic!("run psql (install postgresql-client): {e}"));
        assert!(
            output.status.success(),
            "psql -h {} -p {} -c {sql:?} failed (is `deploy/local/unleash.sh start` running?): {}",
            self.host,
            self.port,
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address").port()
}

impl UnleashServer {
    /// Creates a fresh database, starts Unleash on it and waits until `/health` answers
    /// GOOD. Panics naming `scripts/test.sh` when `UNLEASH_PG_URL` or `UNLEASH_SERVER_JS`
    /// is missing.
    pub async fn new() -> UnleashServer {
        let pg = PgUrl::from_env();
        let server_js = PathBuf::from(required_env("UNLEASH_SERVER_JS"));
        assert!(
            server_js.is_file(),
            "UNLEASH_SERVER_JS={} is not a file (run `deploy/local/unleash.sh start`)",
            server_js.display()
        );
        let database = format!("cg_test_{}", uuid::Uuid::new_v4().simple());
        let create = format!("create database {database}");
        let pg_for_create = pg.clone();
        tokio::task::spawn_blocking(move || pg_for_create.exec(&create))
            .await
            .expect("join psql");
        let port = free_port();
        let server = UnleashServer {
            port,
            url: format!("http://127.0.0.1:{port}"),
            database,
            pg,
            server_js,
            dir: tempfile::Builder::new()
                .prefix("chaosgate-unleash-")
                .tempdir()
                .expect("temp dir"),
            child: Mutex::new(None),
            http: reqwest::Client::builder()
                .timeout(REQUEST)
                .build()
                .expect("http client"),
            chaosgate_token: tokio::sync::OnceCell::new(),
        };
        server.start().await;
        server
    }

    /// Base URL, e.g. `http://127.0.0.1:41234` (no trailing slash).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The admin token ([`HUMAN`]'s changes), sent raw in `Authorization`.
    pub fn admin_token(&self) -> &str {
        ADMIN_TOKEN
    }

    /// The file Unleash's output goes to (for a test's failure message).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("unleash.log")
    }

    /// The last `lines` lines of Unleash's output.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Starts the server process again (after [`UnleashServer::stop`]) on the same port
    /// and database, and waits for `/health`. Does nothing when it runs.
    pub async fn start(&self) {
        if self.child.lock().expect("lock").is_some() {
            return;
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open unleash log");
        let mut command = Command::new("node");
        command
            .arg(&self.server_js)
            .current_dir(self.dir.path())
            .env("TZ", "UTC")
            .env("DATABASE_URL", self.pg.database_url(&self.database))
            .env("DATABASE_SSL", "false")
            .env("HTTP_HOST", "127.0.0.1")
            .env("HTTP_PORT", self.port.to_string())
            .env("UNLEASH_URL", &self.url)
            .env("INIT_ADMIN_API_TOKENS", ADMIN_TOKEN)
            .env("CHECK_VERSION", "false")
            .env("SEND_TELEMETRY", "false")
            .env("LOG_LEVEL", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log);
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("start node {}: {e}", self.server_js.display()));
        *self.child.lock().expect("lock") = Some(child);
        let deadline = Instant::now() + START;
        loop {
            if let Some(status) = self
                .child
                .lock()
                .expect("lock")
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "Unleash at {} exited during start-up ({status}); its log:\n{}",
                    self.url,
                    self.log_tail(40)
                );
            }
            if self.healthy().await {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "Unleash at {} not healthy within {START:?}; its log:\n{}",
                self.url,
                self.log_tail(40)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Kills the server process (SIGKILL) and waits for it: the API is unreachable until
    /// [`UnleashServer::start`]. The database is kept.
    pub async fn stop(&self) {
        let child = self.child.lock().expect("lock").take();
        if let Some(mut child) = child {
            kill_group(&mut child);
            tokio::task::spawn_blocking(move || child.wait())
                .await
                .expect("join")
                .expect("wait for unleash");
        }
    }

    /// Stops and starts the server (same port and database).
    pub async fn restart(&self) {
        self.stop().await;
        self.start().await;
    }

    async fn healthy(&self) -> bool {
        match self
            .http
            .get(format!("{}/health", self.url))
            .timeout(Duration::from_secs(2))
            .send()
            .await
        {
            Ok(response) => response
                .text()
                .await
                .is_ok_and(|body| body.contains("\"GOOD\"")),
            Err(_) => false,
        }
    }

    /// Sends one Admin API request with `token` and returns the status and the JSON body
    /// (`Value::Null` when empty or not JSON).
    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (reqwest::StatusCode, Value) {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.url))
            .header("authorization", token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {}{path}: {e}", self.url));
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// As [`UnleashServer::request`] with the admin token; panics unless 2xx.
    async fn admin(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let (status, value) = self.request(method.clone(), path, ADMIN_TOKEN, body).await;
        assert!(
            status.is_success(),
            "{method} {}{path} answered {status}: {value}",
            self.url
        );
        value
    }

    /// The personal access token of user `chaosgate` (created on first call: the user
    /// with the Admin root role, a login, the token). Changes made with it have
    /// `createdBy` [`CHAOSGATE`].
    pub async fn chaosgate_token(&self) -> String {
        self.chaosgate_token
            .get_or_init(|| self.create_chaosgate_token())
            .await
            .clone()
    }

    async fn create_chaosgate_token(&self) -> String {
        self.admin(
            reqwest::Method::POST,
            "/api/admin/user-admin",
            Some(json!({
                "username": CHAOSGATE,
                "rootRole": 1,
                "password": CHAOSGATE_PASSWORD,
                "sendEmail": false,
            })),
        )
        .await;
        // Under load Unleash sometimes answers the token request 401 right after the
        // login (its session not stored yet): log in and ask again, a few times.
        let mut tries = 0;
        loop {
            tries += 1;
            match self.login_and_create_token().await {
                Ok(secret) => return secret,
                Err(why) if tries < 5 => {
                    eprintln!("chaosgate's PAT, try {tries}: {why}; trying again");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(why) => panic!("{why}"),
            }
        }
    }

    /// Logs in as user chaosgate and creates its PAT; `Err` when Unleash answered the
    /// token request 401 (a session it did not know yet).
    async fn login_and_create_token(&self) -> Result<String, String> {
        let login = self
            .http
            .post(format!("{}/auth/simple/login", self.url))
            .json(&json!({"username": CHAOSGATE, "password": CHAOSGATE_PASSWORD}))
            .send()
            .await
            .expect("log in as chaosgate");
        assert!(
            login.status().is_success(),
            "login as chaosgate answered {}",
            login.status()
        );
        let cookies: Vec<String> = login
            .headers()
            .get_all(reqwest::header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(|v| v.split(';').next())
            .map(str::to_string)
            .collect();
        assert!(!cookies.is_empty(), "login as chaosgate set no cookie");
        let response = self
            .http
            .post(format!("{}/api/admin/user/tokens", self.url))
            .header(reqwest::header::COOKIE, cookies.join("; "))
            .json(&json!({"description": "chaosgate", "expiresAt": "2030-01-01T00:00:00Z"}))
            .send()
            .await
            .expect("create chaosgate's token");
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if status == reqwest::StatusCode::UNAUTHORIZED {
            return Err(format!("creating the PAT answered {status}: {body}"));
        }
        assert!(
            status.is_success(),
            "creating the PAT answered {status}: {body}"
        );
        Ok(body["secret"]
            .as_str()
            .unwrap_or_else(|| panic!("no secret in {body}"))
            .to_string())
    }

    /// Creates flag `name` (type release, no strategies) in `project`, as the human.
    pub async fn create_flag(&self, project: &str, name: &str) {
        self.admin(
            reqwest::Method::POST,
            &format!("/api/admin/projects/{project}/features"),
            Some(json!({"name": name})),
        )
        .await;
    }

    /// Turns `flag` on or off in `environment` as the human (`createdBy` [`HUMAN`]).
    /// Turning on a flag without strategies there also adds the default strategy
    /// (Unleash records a `feature-strategy-add` in the same transaction).
    pub async fn set_enabled(&self, project: &str, environment: &str, flag: &str, on: bool) {
        let path = format!(
            "/api/admin/projects/{project}/features/{flag}/environments/{environment}/{}",
            if on { "on" } else { "off" }
        );
        self.admin(reqwest::Method::POST, &path, None).await;
    }

    /// Whether `flag` is on in `environment`, read back through the Admin API.
    pub async fn is_enabled(&self, project: &str, environment: &str, flag: &str) -> bool {
        let feature = self
            .admin(
                reqwest::Method::GET,
                &format!("/api/admin/projects/{project}/features/{flag}"),
                None,
            )
            .await;
        feature["environments"]
            .as_array()
            .and_then(|envs| envs.iter().find(|e| e["name"] == environment))
            .and_then(|e| e["enabled"].as_bool())
            .unwrap_or_else(|| panic!("no environment {environment} in {feature}"))
    }

    /// Creates the webhook integration posting [`WEBHOOK_EVENTS`] of every project and
    /// environment to `url` with header `authorization: secret`, then restarts Unleash so
    /// it takes effect at once (see the module doc). Returns the integration's id.
    pub async fn add_webhook(&self, url: &str, secret: &str) -> i64 {
        let addon = self
            .admin(
                reqwest::Method::POST,
                "/api/admin/addons",
                Some(json!({
                    "provider": "webhook",
                    "enabled": true,
                    "description": "chaosgate",
                    "parameters": {"url": url, "authorization": secret},
                    "events": WEBHOOK_EVENTS,
                    "projects": ["*"],
                    "environments": ["*"],
                })),
            )
            .await;
        let id = addon["id"]
            .as_i64()
            .unwrap_or_else(|| panic!("no id in {addon}"));
        self.restart().await;
        id
    }

    /// The deliveries of integration `id` (`GET /api/admin/addons/{id}/events`, at most
    /// 50), newest first, each with its `state` (`success`, `failed`, ...),
    /// `stateDetails` and `event` (the event sent). Unleash records a delivery after it
    /// got the answer, so a test polls this.
    pub async fn webhook_deliveries(&self, id: i64) -> Vec<Value> {
        let body = self
            .admin(
                reqwest::Method::GET,
                &format!("/api/admin/addons/{id}/events"),
                None,
            )
            .await;
        body["integrationEvents"]
            .as_array()
            .cloned()
            .unwrap_or_else(|| panic!("no integrationEvents in {body}"))
    }

    /// The event log (`GET /api/admin/events`), newest first: each with `id`, `type`,
    /// `createdBy`, `featureName`, `project`, `environment`, `data`, `preData`.
    pub async fn events(&self) -> Vec<Value> {
        let body = self
            .admin(reqwest::Method::GET, "/api/admin/events?limit=1000", None)
            .await;
        body["events"]
            .as_array()
            .cloned()
            .unwrap_or_else(|| panic!("no events in {body}"))
    }
}

fn kill_group(child: &mut Child) {
    // SAFETY: kill(2) has no memory effects; the group is the child's own (process_group(0)).
    unsafe {
        libc::kill(-(child.id() as i32), libc::SIGKILL);
    }
}

impl Drop for UnleashServer {
    fn drop(&mut self) {
        let child = match self.child.get_mut() {
            Ok(child) => child.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(mut child) = child {
            kill_group(&mut child);
            let _ = child.wait();
        }
        let _ = Command::new("psql")
            .args(["-X", "-q", "-h", &self.pg.host])
            .args([
                "-p",
                &self.pg.port.to_string(),
                "-U",
                &self.pg.user,
                "-d",
                "postgres",
            ])
            .args([
                "-c",
                &format!("drop database if exists {} with (force)", self.database),
            ])
            .output();
    }
}
