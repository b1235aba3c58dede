//! The view's web layer in a test, in process: the real router on a loopback port over
//! a store that the real ingest fills from the real broker.

#![allow(dead_code)]

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use chaosgate::view::IngestStatus;
use chaosgate::view::Store;
use chaosgate::view::web::{self, WebOptions};

/// A running web layer; stopped when dropped.
pub struct Served {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    shutdown: CancellationToken,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl Served {
    /// Serves `store` and `ingest` with `options` on a free loopback port.
    pub async fn start(store: Store, ingest: IngestStatus, options: WebOptions) -> Served {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(web::serve(
            listener,
            store,
            ingest,
            options,
            shutdown.clone(),
        ));
        Served {
            url,
            shutdown,
            task: Some(task),
        }
    }

    /// `self.url` + `path`.
    pub fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// Stops serving and waits (up to 10 s) for the server to end.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        let task = self.task.take().expect("not stopped yet");
        let result = tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the view stops within 10 s of shutdown");
        result
            .expect("serve task")
            .expect("serve ends without an I/O error");
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// An HTTP client that does not follow redirects and uses no proxy.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client")
}
