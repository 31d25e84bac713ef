//! The `nats` sink: each event published to NATS JetStream with `Nats-Msg-Id`, delivered once JetStream acknowledges it (a duplicate ack counts), the stream created if missing.

use super::http::Outcome;
use super::relay::Relay;
use super::retry::RetryPolicy;
use crate::nats::{Connection, Link};
pub use crate::nats::{Servers, TlsFiles};
use crate::secret::Secret;
use crate::spool::Pending;
use async_nats::jetstream::{self, context::PublishErrorKind, stream::StorageType};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OnceCell;

/// The placeholders a subject may use.
const TOKENS: [&str; 4] = ["{account}", "{app_id}", "{msg_type}", "{event}"];

/// `[[sinks]] type = "nats"`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSinkConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `nats://host:4222`, or a list of servers.
    pub url: Servers,
    /// The subject of each event: `{account}`, `{app_id}`, `{msg_type}`, `{event}` filled in.
    #[serde(default = "default_subject")]
    pub subject: String,
    /// The JetStream stream that takes the subjects.
    #[serde(default = "default_stream")]
    pub stream: String,
    /// Create the stream when it does not exist (an existing one is never altered).
    #[serde(default = "default_true")]
    pub create_stream: bool,
    /// The deduplication window of a stream wxhook creates.
    #[serde(default = "default_window", with = "crate::duration")]
    pub duplicate_window: Duration,
    /// Copies of a stream wxhook creates, in a JetStream cluster (1 to 5).
    #[serde(default = "default_replicas")]
    pub replicas: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<Secret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nkey_seed: Option<Secret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsFiles>,
    /// Publishes awaiting their acknowledgement at once.
    #[serde(default = "default_in_flight")]
    pub max_in_flight: usize,
    /// Time allowed for one publish's acknowledgement.
    #[serde(default = "default_timeout", with = "crate::duration")]
    pub timeout: Duration,
    #[serde(default = "super::retry::default_base", with = "crate::duration")]
    pub retry_base: Duration,
    /// Shorter than the http sink's: NATS is the deployment's own, and once it is back
    /// the stream should catch up within seconds.
    #[serde(default = "default_retry_cap", with = "crate::duration")]
    pub retry_cap: Duration,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_max_attempts: Option<u32>,
    #[serde(default = "super::retry::default_max_age", with = "crate::duration")]
    pub retry_max_age: Duration,
}

fn default_subject() -> String {
    "wxhook.{account}.{event}".into()
}
fn default_stream() -> String {
    "WXHOOK".into()
}
fn default_true() -> bool {
    true
}
fn default_window() -> Duration {
    Duration::from_secs(2 * 3600)
}
fn default_in_flight() -> usize {
    256
}
fn default_replicas() -> usize {
    1
}
fn default_retry_cap() -> Duration {
    Duration::from_secs(30)
}
fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

impl NatsSinkConfig {
    /// Checks what serde cannot; the message names the sink.
    pub fn validate(&self, name: &str) -> Result<(), String> {
        let fail = |msg: String| Err(format!("sink `{name}`: {msg}"));
        if let Err(e) = self.connection().validate() {
            return fail(e);
        }
        let probe = render(&self.subject, ["a", "b", "c", "d"]);
        if !valid_subject(&probe, false) || self.subject.contains(['*', '>']) {
            return fail(format!(
                "subject `{}` must be dot-separated tokens without wildcards, using only {}",
                self.subject,
                TOKENS.join(", ")
            ));
        }
        let leftover = TOKENS
            .iter()
            .fold(self.subject.clone(), |s, t| s.replace(t, ""));
        if leftover.contains(['{', '}']) {
            return fail(format!(
                "subject `{}` has an unknown placeholder (known: {})",
                self.subject,
                TOKENS.join(", ")
            ));
        }
        if self.stream.is_empty() || self.stream.contains(['.', '*', '>', ' ', '/', '\\']) {
            return fail(format!("stream `{}` is not a stream name", self.stream));
        }
        if !(1..=5).contains(&self.replicas) {
            return fail("replicas must be 1 to 5".into());
        }
        if !(1..=65_536).contains(&self.max_in_flight) {
            return fail("max_in_flight must be 1 to 65536".into());
        }
        if self.retry_base.is_zero() || self.retry_cap < self.retry_base {
            return fail("retry_base must be above zero, retry_cap at least retry_base".into());
        }
        if self.duplicate_window < Duration::from_secs(60) {
            return fail("duplicate_window must be at least 1m (WeChat retries for ~15 s)".into());
        }
        Ok(())
    }

    /// How to reach NATS.
    pub fn connection(&self) -> Connection {
        Connection {
            servers: self.url.list(),
            credentials_file: self.credentials_file.clone(),
            token: self.token.clone(),
            user: self.user.clone(),
            password: self.password.clone(),
            nkey_seed: self.nkey_seed.clone(),
            tls: self.tls.clone(),
            timeout: self.timeout,
        }
    }

    /// The subjects the stream must take: each placeholder a `*`.
    pub fn stream_subject(&self) -> String {
        render(&self.subject, ["*", "*", "*", "*"])
    }

    fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            base: self.retry_base,
            cap: self.retry_cap,
            max_attempts: self.retry_max_attempts,
            max_age: self.retry_max_age,
        }
    }
}

/// `template` with its placeholders replaced, in [`TOKENS`] order.
fn render(template: &str, values: [&str; 4]) -> String {
    let mut out = template.to_owned();
    for (token, value) in TOKENS.iter().zip(values) {
        out = out.replace(token, value);
    }
    out
}

/// Dot-separated, non-empty tokens without spaces (wildcards only when allowed).
fn valid_subject(s: &str, wildcards: bool) -> bool {
    !s.is_empty()
        && s.split('.').all(|t| {
            !t.is_empty()
                && !t.chars().any(char::is_whitespace)
                && (wildcards || !t.contains(['*', '>']))
        })
}

/// A value safe as one subject token: `.`, `*`, `>` and whitespace become `_`.
pub fn sanitize(value: &str) -> Cow<'_, str> {
    let bad = |c: char| c == '.' || c == '*' || c == '>' || c.is_whitespace();
    if value.is_empty() {
        Cow::Borrowed("_")
    } else if value.contains(bad) {
        Cow::Owned(value.replace(bad, "_"))
    } else {
        Cow::Borrowed(value)
    }
}

/// What the subject and headers need of an event.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow, default)]
    app_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    msg_type: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    event: Option<Cow<'a, str>>,
    /// A platform's authorization event has `info_type` instead of the two above.
    #[serde(borrow, default)]
    info_type: Option<Cow<'a, str>>,
}

/// A running `nats` sink.
pub struct NatsSink {
    name: String,
    config: NatsSinkConfig,
    policy: RetryPolicy,
    /// The connection, shared with a replay guard that names this sink.
    link: Arc<Link>,
    js: OnceCell<jetstream::Context>,
    /// The stream checked (or created) once.
    stream_ready: OnceCell<()>,
}

impl NatsSink {
    pub fn new(name: &str, config: &NatsSinkConfig, link: Arc<Link>) -> NatsSink {
        NatsSink {
            name: name.to_owned(),
            policy: config.retry_policy(),
            config: config.clone(),
            link,
            js: OnceCell::new(),
            stream_ready: OnceCell::new(),
        }
    }

    /// The stream exists (created if allowed and missing); its window is checked.
    async fn ensure_stream(&self, js: &jetstream::Context) -> Result<(), String> {
        let c = &self.config;
        let mut stream = if c.create_stream {
            js.get_or_create_stream(jetstream::stream::Config {
                name: c.stream.clone(),
                subjects: vec![c.stream_subject()],
                storage: StorageType::File,
                duplicate_window: c.duplicate_window,
                num_replicas: c.replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| format!("cannot find or create stream `{}`: {e}", c.stream))?
        } else {
            js.get_stream(&c.stream)
                .await
                .map_err(|e| format!("cannot find stream `{}`: {e}", c.stream))?
        };
        let info = stream
            .info()
            .await
            .map_err(|e| format!("cannot read stream `{}`: {e}", c.stream))?;
        if info.config.duplicate_window < Duration::from_secs(60) {
            tracing::warn!(sink = %self.name, stream = %c.stream, window = ?info.config.duplicate_window,
                "the stream's duplicate_window is shorter than 1 minute: WeChat's retries landing on two replicas may both be stored");
        }
        Ok(())
    }

    /// The subject, message id and headers of one event.
    fn address(&self, event: &Pending) -> Result<(String, String, String), String> {
        let head: Head = serde_json::from_str(&event.body)
            .map_err(|e| format!("the event JSON lacks its header fields: {e}"))?;
        let app_id = head
            .app_id
            .as_deref()
            .filter(|a| !a.is_empty())
            .unwrap_or("-");
        let msg_type = match (&head.msg_type, &head.info_type) {
            (Some(m), _) => m.as_ref(),
            (None, Some(_)) => "authorization",
            (None, None) => return Err("the event JSON has neither msg_type nor info_type".into()),
        };
        let kind = match (&head.event, &head.info_type) {
            (Some(e), _) if !e.is_empty() => e.to_lowercase(),
            (_, Some(info)) if head.msg_type.is_none() => info.to_lowercase(),
            _ => msg_type.to_owned(),
        };
        let subject = render(
            &self.config.subject,
            [
                &sanitize(&event.account),
                &sanitize(app_id),
                &sanitize(msg_type),
                &sanitize(&kind),
            ],
        );
        let msg_id = format!("{}:{app_id}:{}", event.account, event.id);
        Ok((subject, msg_id, kind))
    }

    async fn publish(&self, event: &Pending) -> Outcome {
        let retry = |error: String| Outcome::Retry { error, after: None };
        let (subject, msg_id, kind) = match self.address(event) {
            Ok(a) => a,
            Err(e) => return Outcome::Gone(e),
        };
        let js = match self.js.get_or_try_init(|| self.link.jetstream()).await {
            Ok(js) => js,
            Err(e) => return retry(e),
        };
        if let Err(e) = self
            .stream_ready
            .get_or_try_init(|| self.ensure_stream(js))
            .await
        {
            return retry(e);
        }
        let publish = jetstream::message::PublishMessage::build()
            .payload(event.body.clone().into())
            .message_id(msg_id)
            .header("wxhook-id", event.id.as_str())
            .header("wxhook-account", event.account.as_str())
            .header("wxhook-event", kind.as_str());
        let ack = match js.send_publish(subject.clone(), publish).await {
            Ok(ack) => ack.await,
            Err(e) => Err(e),
        };
        match ack {
            Ok(_) => Outcome::Delivered,
            Err(e) => match e.kind() {
                PublishErrorKind::MaxPayloadExceeded => {
                    Outcome::Gone(format!("the event exceeds the server's max_payload: {e}"))
                }
                // No responder: permanent only if the stream is there and does not take
                // the subject (a server still loading its streams answers the same way).
                PublishErrorKind::StreamNotFound => match self.stream_subjects(js).await {
                    Some(filters) if !filters.iter().any(|f| subject_matches(f, &subject)) => {
                        Outcome::Gone(format!(
                            "no stream takes subject `{subject}` (stream `{}` takes {filters:?})",
                            self.config.stream
                        ))
                    }
                    _ => retry(format!("publish to `{subject}` failed: {e}")),
                },
                _ => retry(format!("publish to `{subject}` failed: {e}")),
            },
        }
    }
}

impl NatsSink {
    /// The subjects the configured stream takes, when it can be read.
    async fn stream_subjects(&self, js: &jetstream::Context) -> Option<Vec<String>> {
        let mut stream = js.get_stream(&self.config.stream).await.ok()?;
        Some(stream.info().await.ok()?.config.subjects.clone())
    }
}

/// Whether NATS subject filter `filter` (`*` one token, `>` the rest) takes `subject`.
pub fn subject_matches(filter: &str, subject: &str) -> bool {
    let mut tokens = subject.split('.');
    for f in filter.split('.') {
        match (f, tokens.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (f, Some(t)) if f == t => {}
            _ => return false,
        }
    }
    tokens.next().is_none()
}

impl Relay for NatsSink {
    fn concurrency(&self) -> usize {
        self.config.max_in_flight
    }

    fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    async fn send(&self, event: &Pending) -> Outcome {
        self.publish(event).await
    }

    /// The stream checked (and its window warned about) at start, not at the first event.
    async fn start(&self) {
        let ready = async {
            let js = self.js.get_or_try_init(|| self.link.jetstream()).await?;
            self.stream_ready
                .get_or_try_init(|| self.ensure_stream(js))
                .await
                .map(drop)
        };
        if let Err(e) = ready.await {
            tracing::info!(sink = %self.name, error = %e, "NATS is not ready yet; the stream is checked again at the first event");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_match_as_nats_does() {
        assert!(subject_matches(
            "wxhook.*.*",
            "wxhook.main.publishjobfinish"
        ));
        assert!(subject_matches("wxhook.>", "wxhook.main.text"));
        assert!(!subject_matches("other.>", "wxhook.main.text"));
        assert!(!subject_matches("wxhook.*", "wxhook.main.text"));
        assert!(!subject_matches("wxhook.*.*", "wxhook.main"));
    }

    #[test]
    fn subject_tokens_are_sanitised() {
        assert_eq!(sanitize("a.b c*d>e"), "a_b_c_d_e");
        assert_eq!(sanitize(""), "_");
        assert_eq!(
            render(
                "wxhook.{account}.{event}",
                ["shop", "-", "event", "publishjobfinish"]
            ),
            "wxhook.shop.publishjobfinish"
        );
    }
}
