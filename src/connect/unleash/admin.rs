//! The Unleash Admin API calls chaosgate makes: turn a flag on or off in one environment,
//! put strategies back, read events of its log and whom its token acts as.
//!
//! Endpoints (Unleash 7, <https://docs.getunleash.io/reference/api/unleash>):
//! `POST /api/admin/projects/{project}/features/{flag}/environments/{environment}/on`
//! and `.../off` (`toggleFeatureEnvironmentOn`/`Off`), `GET /api/admin/search/events`
//! (`searchEvents`: the events of one transaction group, the type of one event), and
//! `GET /api/admin/user` (whom the token acts as). Requests carry the token as
//! `Authorization: <token>`, raw, as Unleash expects for admin tokens and personal
//! access tokens.
//!
//! The rule that keeps callers right: every failure is classified once, here
//! ([`AdminError`]): what may succeed if tried again (no connection, a timeout, 5xx, 408,
//! 429 with its `Retry-After`) is [`AdminError::Transient`]; what will not (401, 403, 404,
//! any other 4xx) is [`AdminError::Permanent`].

use std::time::Duration;

use reqwest::{StatusCode, Url};

/// A client of one Unleash server's Admin API.
#[derive(Clone)]
pub struct AdminApi {
    base: Url,
    token: String,
    http: reqwest::Client,
}

impl std::fmt::Debug for AdminApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminApi")
            .field("base", &self.base.as_str())
            .finish_non_exhaustive()
    }
}

/// Why an Admin API call did not succeed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AdminError {
    /// May succeed later: the server was not reached, timed out, answered 5xx, 408 or 429.
    #[error("{reason}")]
    Transient {
        /// What happened, with the URL.
        reason: String,
        /// The server's `Retry-After` (429, 503), when it gave one.
        retry_after: Option<Duration>,
    },
    /// Will not succeed if tried again: 401, 403, 404 or another 4xx.
    #[error("{reason}")]
    Permanent {
        /// The HTTP status.
        status: u16,
        /// What happened: method, URL, status and the start of Unleash's answer.
        reason: String,
    },
}

impl AdminApi {
    /// A client of the server at `url` (e.g. `http://unleash:4242`), with `token` and a
    /// per-request `timeout`. Errors: `url` is not an http(s) URL.
    pub fn new(url: &str, token: String, timeout: Duration) -> Result<AdminApi, String> {
        let base = Url::parse(url).map_err(|e| format!("unleash.url {url:?}: {e}"))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(format!("unleash.url {url:?}: not an http(s) URL"));
        }
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .map_err(|e| format!("unleash: HTTP client: {e}"))?;
        Ok(AdminApi { base, token, http })
    }

    /// Turns `flag` on (`on`) or off in `environment` of `project`. Unleash answers 200
    /// whether or not the state changed.
    pub async fn set_enabled(
        &self,
        project: &str,
        environment: &str,
        flag: &str,
        on: bool,
    ) -> Result<(), AdminError> {
        let path = environment_path(project, environment, flag);
        let segments: Vec<&str> = path
            .iter()
            .copied()
            .chain([if on { "on" } else { "off" }])
            .collect();
        self.send(reqwest::Method::POST, &segments, None)
            .await
            .map(drop)
    }

    /// The `createdBy` Unleash writes for this token's changes: `GET /api/admin/user`'s
    /// `user.email` when it has one, else `user.username` (the name of an admin token).
    /// `None` when the answer names neither.
    pub async fn token_actor(&self) -> Result<Option<String>, AdminError> {
        let answer = self.get_json(self.url(&["api", "admin", "user"])).await?;
        let user = answer.get("user");
        let field = |name: &str| {
            user.and_then(|u| u.get(name))
                .and_then(|v| v.as_str())
                .filter(|v| !v.is_empty())
                .map(str::to_string)
        };
        Ok(field("email").or_else(|| field("username")))
    }

    /// The `type` of Unleash event `id` (e.g. `feature-strategy-update`), as
    /// `GET /api/admin/search/events?id=IS:<id>` lists it; `None` when there is none.
    pub async fn event_type(&self, id: u64) -> Result<Option<String>, AdminError> {
        let events = self.search_events("id", &id.to_string()).await?;
        Ok(events
            .iter()
            .find(|e| e.get("id").and_then(|i| i.as_u64()) == Some(id))
            .and_then(|e| e.get("type"))
            .and_then(|t| t.as_str())
            .map(str::to_string))
    }

    /// The events of transaction group `group_id` (at most 100), as
    /// `GET /api/admin/search/events?groupId=IS:<group_id>` lists them (`events[]`).
    pub async fn events_in_group(
        &self,
        group_id: &str,
    ) -> Result<Vec<serde_json::Value>, AdminError> {
        self.search_events("groupId", group_id).await
    }

    /// `GET /api/admin/search/events?<field>=IS:<value>&limit=100`: the `events[]`.
    async fn search_events(
        &self,
        field: &str,
        value: &str,
    ) -> Result<Vec<serde_json::Value>, AdminError> {
        let mut url = self.url(&["api", "admin", "search", "events"]);
        url.query_pairs_mut()
            .append_pair(field, &format!("IS:{value}"))
            .append_pair("limit", "100");
        let answer = self.get_json(url).await?;
        Ok(answer
            .get("events")
            .and_then(|e| e.as_array())
            .cloned()
            .unwrap_or_default())
    }

    /// Sends `method` to the Admin API path `segments` (each percent-encoded as one
    /// segment) with `body` as JSON, and returns the body of a 2xx answer, or the
    /// classified error. For the calls without a method of their own (strategies).
    pub async fn send(
        &self,
        method: reqwest::Method,
        segments: &[&str],
        body: Option<&serde_json::Value>,
    ) -> Result<String, AdminError> {
        let url = self.url(segments);
        let mut request = self
            .http
            .request(method.clone(), url.clone())
            .header("authorization", &self.token);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| transport(method.as_str(), &url, &e))?;
        check(method.as_str(), &url, response).await
    }

    /// `GET url` and its JSON answer; an answer that is not JSON is transient (a proxy's
    /// error page, a server starting).
    async fn get_json(&self, url: Url) -> Result<serde_json::Value, AdminError> {
        let response = self
            .http
            .get(url.clone())
            .header("authorization", &self.token)
            .send()
            .await
            .map_err(|e| transport("GET", &url, &e))?;
        let body = check("GET", &url, response).await?;
        serde_json::from_str(&body).map_err(|e| AdminError::Transient {
            reason: format!("GET {url}: the answer is not JSON: {e}"),
            retry_after: None,
        })
    }

    /// The base URL with `segments` appended, each percent-encoded as one path segment.
    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }
}

/// The path segments of `flag` in `environment` of `project`:
/// `api/admin/projects/{project}/features/{flag}/environments/{environment}`.
pub(super) fn environment_path<'a>(
    project: &'a str,
    environment: &'a str,
    flag: &'a str,
) -> [&'a str; 8] {
    [
        "api",
        "admin",
        "projects",
        project,
        "features",
        flag,
        "environments",
        environment,
    ]
}

fn transport(method: &str, url: &Url, error: &reqwest::Error) -> AdminError {
    let what = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "could not connect"
    } else {
        "failed"
    };
    AdminError::Transient {
        reason: format!("{method} {url}: {what}: {error}"),
        retry_after: None,
    }
}

/// The body of a 2xx answer, or the classified error.
async fn check(method: &str, url: &Url, response: reqwest::Response) -> Result<String, AdminError> {
    let status = response.status();
    let retry_after = crate::connect::retry::retry_after_of(&response);
    let body = response.text().await.unwrap_or_default();
    if status.is_success() {
        return Ok(body);
    }
    let shown: String = body.chars().take(300).collect();
    let reason = format!("{method} {url}: {status}: {}", shown.trim());
    if status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
    {
        Err(AdminError::Transient {
            reason,
            retry_after,
        })
    } else {
        Err(AdminError::Permanent {
            status: status.as_u16(),
            reason,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_are_encoded_and_the_base_path_kept() {
        let api =
            AdminApi::new("http://u:4242/unleash/", "t".into(), Duration::from_secs(1)).unwrap();
        let url = api.url(&["api", "admin", "projects", "a b", "features", "x/y"]);
        assert_eq!(
            url.as_str(),
            "http://u:4242/unleash/api/admin/projects/a%20b/features/x%2Fy"
        );
        assert!(AdminApi::new("ftp://u", "t".into(), Duration::from_secs(1)).is_err());
        let secret = AdminApi::new(
            "http://u:4242",
            "s3cret-t0ken".into(),
            Duration::from_secs(1),
        )
        .unwrap();
        assert!(!format!("{secret:?}").contains("s3cret"));
    }
}
