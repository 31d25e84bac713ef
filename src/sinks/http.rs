//! The `http` sink: POSTs each event JSON to a URL with Standard Webhooks headers, and classifies the answer.

use super::retry::RetryPolicy;
use super::signing::Signer;
use crate::secret::{Secret, SecretUrl};
use crate::spool::Pending;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

/// `[[sinks]] type = "http"`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSinkConfig {
    /// Name of the sink (default `http`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Where events are POSTed (http or https); credentials in it are never printed.
    pub url: SecretUrl,
    /// Extra request headers, e.g. `{ Authorization = "Bearer ..." }` (values are secret).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, Secret>,
    /// Time allowed for one request, answer included.
    #[serde(default = "default_timeout", with = "crate::duration")]
    pub timeout: Duration,
    /// Requests in flight at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// `whsec_...` secret, or a list of them during a rotation: each delivery is signed with every one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<Secrets>,
    /// First retry waits up to this long (doubling per attempt, full jitter).
    #[serde(default = "super::retry::default_base", with = "crate::duration")]
    pub retry_base: Duration,
    /// Longest wait between two attempts.
    #[serde(default = "super::retry::default_cap", with = "crate::duration")]
    pub retry_cap: Duration,
    /// Give up after this many attempts (default: no limit but `retry_max_age`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_max_attempts: Option<u32>,
    /// Give up on an event this long after it was queued.
    #[serde(default = "super::retry::default_max_age", with = "crate::duration")]
    pub retry_max_age: Duration,
}

/// One secret or several.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum Secrets {
    One(Secret),
    Many(Vec<Secret>),
}

impl Secrets {
    pub fn list(&self) -> &[Secret] {
        match self {
            Secrets::One(s) => std::slice::from_ref(s),
            Secrets::Many(v) => v,
        }
    }
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_concurrency() -> usize {
    4
}

impl HttpSinkConfig {
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            base: self.retry_base,
            cap: self.retry_cap,
            max_attempts: self.retry_max_attempts,
            max_age: self.retry_max_age,
        }
    }

    /// Checks what serde cannot; the message names the sink.
    pub fn validate(&self, name: &str) -> Result<(), String> {
        let url = reqwest::Url::parse(self.url.expose()).map_err(|e| {
            format!(
                "sink `{name}`: url `{}` is not a URL ({e})",
                self.url.redacted()
            )
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("sink `{name}`: url must be http or https"));
        }
        if !(1..=256).contains(&self.concurrency) {
            return Err(format!("sink `{name}`: concurrency must be 1 to 256"));
        }
        if self.timeout.is_zero() || self.retry_base.is_zero() {
            return Err(format!(
                "sink `{name}`: timeout and retry_base must be above zero"
            ));
        }
        if self.retry_cap < self.retry_base {
            return Err(format!(
                "sink `{name}`: retry_cap is shorter than retry_base"
            ));
        }
        if self.retry_max_attempts == Some(0) {
            return Err(format!(
                "sink `{name}`: retry_max_attempts must be at least 1"
            ));
        }
        self.header_map()
            .map_err(|e| format!("sink `{name}`: {e}"))?;
        if let Some(secrets) = &self.secret {
            Signer::new(secrets.list()).map_err(|e| format!("sink `{name}`: {e}"))?;
        }
        Ok(())
    }

    fn header_map(&self) -> Result<HeaderMap, String> {
        let mut map = HeaderMap::new();
        for (key, value) in &self.headers {
            let name = HeaderName::from_bytes(key.as_bytes())
                .map_err(|_| format!("`{key}` is not a valid header name"))?;
            if name.as_str().starts_with("webhook-") || name == CONTENT_TYPE {
                return Err(format!("header `{key}` is set by wxhook itself"));
            }
            let mut value = HeaderValue::from_str(value.expose())
                .map_err(|_| format!("the value of header `{key}` is not valid in HTTP"))?;
            value.set_sensitive(true);
            map.insert(name, value);
        }
        Ok(map)
    }
}

/// What one delivery attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A 2xx answer.
    Delivered,
    /// Worth another attempt; `after` is the downstream's `Retry-After`, if it gave one.
    Retry {
        error: String,
        after: Option<Duration>,
    },
    /// The downstream will never take it (`410 Gone`; for NATS a payload over its limit
    /// or a subject no stream takes): a dead letter at once.
    Gone(String),
}

impl super::relay::Relay for HttpSink {
    fn concurrency(&self) -> usize {
        self.concurrency
    }

    fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    async fn send(&self, event: &Pending) -> Outcome {
        HttpSink::send(self, event).await
    }
}

/// A running `http` sink.
pub struct HttpSink {
    client: reqwest::Client,
    url: String,
    signer: Option<Signer>,
    pub concurrency: usize,
    pub policy: RetryPolicy,
}

impl HttpSink {
    pub fn new(config: &HttpSinkConfig) -> Result<HttpSink, String> {
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(5)))
            .redirect(reqwest::redirect::Policy::none())
            .default_headers(config.header_map()?)
            .user_agent(concat!("wxhook/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        let signer = match &config.secret {
            Some(secrets) => Some(Signer::new(secrets.list())?),
            None => None,
        };
        Ok(HttpSink {
            client,
            url: config.url.expose().to_owned(),
            signer,
            concurrency: config.concurrency,
            policy: config.retry_policy(),
        })
    }

    /// POSTs one event and classifies the answer.
    pub async fn send(&self, event: &Pending) -> Outcome {
        let timestamp = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(0))
            .unwrap_or(0);
        let mut request = self
            .client
            .post(&self.url)
            .header(CONTENT_TYPE, "application/json")
            .header("webhook-id", &event.id)
            .header("webhook-timestamp", timestamp.to_string());
        if let Some(signer) = &self.signer {
            request = request.header(
                "webhook-signature",
                signer.sign(&event.id, timestamp, event.body.as_bytes()),
            );
        }
        let response = match request.body(event.body.clone()).send().await {
            Ok(response) => response,
            Err(e) => {
                return Outcome::Retry {
                    error: describe(&e),
                    after: None,
                };
            }
        };
        let status = response.status();
        if status.is_success() {
            return Outcome::Delivered;
        }
        let after = retry_after(response.headers().get(RETRY_AFTER));
        let location = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(|l| format!(" (Location: {l})"))
            .unwrap_or_default();
        let snippet = body_snippet(response).await;
        let error = format!("HTTP {status}{location}{snippet}");
        match status.as_u16() {
            410 => Outcome::Gone(error),
            429 | 503 => Outcome::Retry { error, after },
            _ => Outcome::Retry { error, after: None },
        }
    }
}

/// A reqwest error without its URL (which may carry credentials).
fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    let mut text = kind.to_owned();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// `Retry-After` as seconds or an HTTP date.
fn retry_after(value: Option<&HeaderValue>) -> Option<Duration> {
    let text = value?.to_str().ok()?.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(text).ok()?;
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// The first 200 bytes of an error answer, for `last_error`.
async fn body_snippet(mut response: reqwest::Response) -> String {
    match response.chunk().await {
        Ok(Some(chunk)) if !chunk.is_empty() => {
            let text = String::from_utf8_lossy(&chunk[..chunk.len().min(200)]);
            format!(": {}", text.trim())
        }
        _ => String::new(),
    }
}
