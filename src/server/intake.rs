//! One account's intake: source check, signature and freshness, replay guard, decryption by mode, parsing, and the durable store before `success`.

use super::error::AppError;
use super::seen::{ReplayGuard, Seen, SeenRecord};
use super::source::{AllowList, Forwarding, TrustedProxies};
use crate::envelope::{AuthorizationEnvelope, Envelope};
use crate::spool::platform::PlatformNote;
use crate::spool::{Appended, NewEvent, PublishNote, Spool};
use crate::telemetry;
use crate::wechat::authorization::AuthorizationEvent;
use crate::wechat::inbound::{SignedQuery, Verifier};
use crate::wechat::is_app_id;
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::Semaphore;
use tracing::Instrument;

/// What every account's intake shares.
pub struct Shared {
    pub spool: Arc<Spool>,
    /// `None` when `reject_replayed_signatures` is off.
    pub seen: Option<ReplayGuard>,
    pub proxies: TrustedProxies,
    pub tolerance: u64,
    pub max_body: usize,
    pub request_timeout: Duration,
    pub in_flight: Semaphore,
}

/// One account (one path).
pub struct Intake {
    pub account: String,
    pub verifier: Verifier,
    /// A third-party platform entry: the authorized appid comes from the path.
    pub platform: bool,
    /// The platform's authorization event URL (tickets, authorizations), not its pushes.
    pub authorization: bool,
    pub app_id: Option<String>,
    pub sinks: Arc<[String]>,
    pub allow: Arc<AllowList>,
    pub shared: Arc<Shared>,
    pub metrics: telemetry::AccountMetrics,
}

type QueryResult = Result<Query<SignedQuery>, QueryRejection>;

// One handler pair serves both kinds of route: a third-party platform's account path
// ends in `/{appid}`, an ordinary one has no parameter.
pub async fn verify_url(
    State(intake): State<Arc<Intake>>,
    app_id: Option<Path<String>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Forwarding(headers): Forwarding,
    query: QueryResult,
) -> Result<Response, AppError> {
    let app_id = app_id.map(|Path(id)| id);
    intake
        .logged(intake.verify_url(app_id, peer, &headers, query))
        .await
}

pub async fn receive(
    State(intake): State<Arc<Intake>>,
    app_id: Option<Path<String>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Forwarding(headers): Forwarding,
    query: QueryResult,
    body: Body,
) -> Result<Response, AppError> {
    let app_id = app_id.map(|Path(id)| id);
    intake
        .logged(intake.receive(app_id, peer, &headers, query, body))
        .await
}

fn text(body: impl Into<String>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body.into(),
    )
        .into_response()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Intake {
    /// Bounds the request in count and time, logs a refusal, and records the outcome.
    async fn logged(
        &self,
        work: impl std::future::Future<Output = Result<(Response, &'static str), AppError>>,
    ) -> Result<Response, AppError> {
        let started = std::time::Instant::now();
        // At debug, like tower-http's spans: a span recorded at info costs ~10% of
        // throughput. Refusals are logged at info with account, outcome and reason.
        let span = tracing::debug_span!("request", account = %self.account, id = tracing::field::Empty, outcome = tracing::field::Empty);
        let result = match self.shared.in_flight.try_acquire() {
            Err(_) => Err(AppError::Busy),
            Ok(_permit) => {
                tokio::time::timeout(self.shared.request_timeout, work.instrument(span.clone()))
                    .await
                    .unwrap_or(Err(AppError::Timeout))
            }
        };
        let outcome = match &result {
            Ok((_, outcome)) => outcome,
            Err(e) => e.kind(),
        };
        span.record("outcome", outcome);
        self.metrics.request(outcome, started.elapsed());
        if let Err(e) = &result {
            span.in_scope(|| e.log(&self.account));
        }
        result.map(|(response, _)| response)
    }

    /// The source-address check and, for a platform entry, the appid from the path.
    fn admit(
        &self,
        path_app_id: Option<String>,
        peer: SocketAddr,
        headers: &HeaderMap,
    ) -> Result<Option<String>, AppError> {
        let client = self.shared.proxies.client(peer.ip(), headers);
        if !self.allow.allows(client) {
            return Err(AppError::Forbidden);
        }
        match path_app_id {
            Some(app_id) if !is_app_id(&app_id) => Err(AppError::BadRequest(
                "the path does not end in an appid (wx followed by 16 letters or digits)".into(),
            )),
            Some(app_id) => Ok(Some(app_id)),
            None => Ok(self.app_id.clone()),
        }
    }

    async fn verify_url(
        &self,
        path_app_id: Option<String>,
        peer: SocketAddr,
        headers: &HeaderMap,
        query: QueryResult,
    ) -> Result<(Response, &'static str), AppError> {
        self.admit(path_app_id, peer, headers)?;
        let Query(q) = query.map_err(|e| AppError::BadRequest(e.body_text()))?;
        let answer = self.verifier.echo(&q, unix_now())?;
        tracing::info!(account = %self.account, "URL verification answered");
        Ok((text(answer), "verified"))
    }

    async fn receive(
        &self,
        path_app_id: Option<String>,
        peer: SocketAddr,
        headers: &HeaderMap,
        query: QueryResult,
        body: Body,
    ) -> Result<(Response, &'static str), AppError> {
        let app_id = self.admit(path_app_id, peer, headers)?;
        let Query(q) = query.map_err(|e| AppError::BadRequest(e.body_text()))?;
        let now = unix_now();
        let signed = self.verifier.check_signature(&q, now)?;
        let body = read_body(body, self.shared.max_body).await?;
        // A query signed with `msg_signature` alone (WeCom) covers the body itself, so it
        // cannot come back with another one: only a plain `signature` is remembered.
        let seen = match (&self.shared.seen, signed) {
            (Some(guard), Some((sig, ts))) => {
                let record = SeenRecord {
                    account: self.account.clone(),
                    signature: sig.to_ascii_lowercase(),
                    timestamp: ts.parse().unwrap_or(0),
                    body_hash: Sha256::digest(&body).into(),
                };
                let oldest = match self.shared.tolerance {
                    0 => 0,
                    t => now.saturating_sub(t),
                };
                let nonce = q.nonce.as_deref().unwrap_or_default();
                if guard.check(&record, nonce, oldest).await? == Seen::OtherBody {
                    return Err(AppError::Rejected(
                        "this signed query was already used with a different body (replay)".into(),
                    ));
                }
                guard.spooled().then_some(record)
            }
            _ => None,
        };
        let event = if self.authorization {
            self.authorization_event(&q, &body, now, seen)?
        } else {
            self.push_event(&q, &body, now, app_id, seen)?
        };
        let id = event.id.clone();
        tracing::Span::current().record("id", id.as_str());
        let outcome = match self.shared.spool.append(event).await? {
            Appended::Stored(seq) => {
                tracing::debug!(account = %self.account, id = %id, seq, "push accepted");
                "accepted"
            }
            Appended::Duplicate => {
                tracing::info!(account = %self.account, id = %id, "retry of a stored push accepted");
                "duplicate"
            }
        };
        Ok((text("success"), outcome))
    }

    /// A message or event push: typed, its event JSON, and a publish job's status.
    fn push_event(
        &self,
        q: &SignedQuery,
        body: &[u8],
        now: u64,
        app_id: Option<String>,
        seen: Option<SeenRecord>,
    ) -> Result<NewEvent, AppError> {
        let push = self.verifier.open(q, body, now)?;
        let envelope = Envelope::new(&self.account, app_id.as_deref(), push, SystemTime::now());
        Ok(NewEvent {
            account: self.account.clone(),
            app_id: if self.platform {
                app_id.unwrap_or_default()
            } else {
                String::new()
            },
            id: envelope.id.clone(),
            received_at: envelope.received_at.clone(),
            body: envelope.to_json(),
            sinks: self.sinks.clone(),
            seen,
            publish: envelope
                .push
                .publish_event_info
                .as_ref()
                .map(|info| PublishNote {
                    publish_id: info.publish_id.clone(),
                    status: info.publish_status,
                    source: crate::spool::jobs::FROM_PUSH,
                }),
            platform: None,
        })
    }

    /// An authorization event of the platform: its event JSON, and a ticket kept apart.
    fn authorization_event(
        &self,
        q: &SignedQuery,
        body: &[u8],
        now: u64,
        seen: Option<SeenRecord>,
    ) -> Result<NewEvent, AppError> {
        let plain = self.verifier.open_encrypted(q, body, now)?;
        let event = AuthorizationEvent::parse(&plain)?;
        if self.app_id.as_deref() != Some(event.component_app_id.as_str()) {
            return Err(AppError::Rejected(format!(
                "the event is for platform appid `{}`, not this account's",
                event.component_app_id
            )));
        }
        let envelope = AuthorizationEnvelope::new(&self.account, &event, SystemTime::now());
        Ok(NewEvent {
            account: self.account.clone(),
            app_id: event.authorizer_app_id.clone().unwrap_or_default(),
            id: envelope.id.clone(),
            received_at: envelope.received_at.clone(),
            body: envelope.to_json(),
            sinks: self.sinks.clone(),
            seen,
            publish: None,
            platform: platform_note(&event).map(Box::new),
        })
    }
}

/// What an authorization event changes for the platform: a ticket to keep, a code to
/// exchange, an account's tokens and jobs to end.
fn platform_note(event: &AuthorizationEvent) -> Option<PlatformNote> {
    let create_time = event.create_time;
    match (event.info_type.as_str(), &event.authorizer_app_id) {
        ("component_verify_ticket", _) => event.ticket.clone().map(|ticket| PlatformNote::Ticket {
            ticket,
            create_time,
        }),
        ("authorized" | "updateauthorized", Some(app_id)) => event
            .authorization_code
            .as_ref()
            .filter(|code| !code.is_empty())
            .map(|code| PlatformNote::Authorized {
                app_id: app_id.clone(),
                code: crate::secret::Secret::new(code.clone()),
                code_expires: event.authorization_code_expired_time,
                create_time,
            }),
        ("unauthorized", Some(app_id)) => Some(PlatformNote::Unauthorized {
            app_id: app_id.clone(),
            create_time,
        }),
        _ => None,
    }
}

/// Reads the whole body, refusing more than `max` bytes.
async fn read_body(body: Body, max: usize) -> Result<Bytes, AppError> {
    match Limited::new(body, max).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(AppError::TooLarge),
        Err(e) => Err(AppError::BadRequest(format!("cannot read the body: {e}"))),
    }
}
