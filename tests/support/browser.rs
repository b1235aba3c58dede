//! A real headless Chromium for tests, driven over WebDriver: Debian's `chromium` and
//! `chromium-driver` (paths from `CHROMIUM_BIN` / `CHROMEDRIVER_BIN`, else
//! `/usr/bin/chromium` and `/usr/bin/chromedriver`; `scripts/test.sh` installs them).
//! chromedriver runs on a free loopback port with a fresh profile folder; both stop
//! when the [`Browser`] is dropped. Missing binaries fail the test: it never skips.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};

/// chromedriver plus one browser session.
pub struct Browser {
    pub client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
    /// Where [`Browser::screenshot`] writes.
    pub screenshots: PathBuf,
}

fn binary(variable: &str, default: &str) -> PathBuf {
    let path = std::env::var_os(variable).map_or_else(|| PathBuf::from(default), PathBuf::from);
    assert!(
        path.is_file(),
        "{} not found (set {variable}, or install Debian's chromium and chromium-driver: scripts/test.sh does)",
        path.display()
    );
    path
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session (1366x900 window).
    pub async fn start() -> Browser {
        let chromium = binary("CHROMIUM_BIN", "/usr/bin/chromium");
        let chromedriver = binary("CHROMEDRIVER_BIN", "/usr/bin/chromedriver");
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
            listener.local_addr().expect("address").port()
        };
        let driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromedriver.display()));
        let profile = tempfile::Builder::new()
            .prefix("chaosgate-chromium-")
            .tempdir()
            .expect("profile dir");
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": chromium,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--window-size=1366,900",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }),
        );
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(60);
        let client = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(capabilities.clone())
                .connect(&url)
                .await
            {
                Ok(client) => break client,
                Err(error) if Instant::now() < deadline => {
                    let _ = error;
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(error) => {
                    panic!("cannot open a Chromium session through chromedriver at {url}: {error}")
                }
            }
        };
        let screenshots = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .parent()
            .map_or_else(|| PathBuf::from("target"), Path::to_path_buf)
            .join("view-screenshots");
        std::fs::create_dir_all(&screenshots).expect("screenshot dir");
        Browser {
            client,
            driver,
            _profile: profile,
            screenshots,
        }
    }

    /// Saves a PNG of the whole page (the window grown to the page's height, at most
    /// 4000 px) as `NAME.png`; returns its path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let height = self
            .client
            .execute("return document.documentElement.scrollHeight", vec![])
            .await
            .ok()
            .and_then(|v| v.as_u64())
            .unwrap_or(900)
            .clamp(600, 4000);
        let _ = self
            .client
            .set_window_size(1366, u32::try_from(height).unwrap_or(900) + 140)
            .await;
        let png = self.client.screenshot().await.expect("screenshot");
        let _ = self.client.set_window_size(1366, 900).await;
        let path = self.screenshots.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write screenshot");
        println!("screenshot: {}", path.display());
        path
    }

    /// The text of the first element matching `css`, waiting up to `timeout` for it.
    pub async fn text(&self, css: &str, timeout: Duration) -> String {
        let element = self
            .client
            .wait()
            .at_most(timeout)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no element '{css}' within {timeout:?}: {e}"));
        element.text().await.expect("element text")
    }

    /// Waits until `check` holds for the page's HTML, or fails with what it saw.
    pub async fn wait_html(
        &self,
        what: &str,
        timeout: Duration,
        check: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let html = self.client.source().await.expect("page source");
            if check(&html) {
                return html;
            }
            if Instant::now() >= deadline {
                panic!(
                    "waited {timeout:?} for {what}; the page was:\n{}",
                    html.get(..6000).unwrap_or(&html)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Browser {
    /// Ends the browser session (Chromium exits), then chromedriver.
    pub async fn close(self) {
        let _ = self.client.clone().close().await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
