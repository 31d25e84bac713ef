//! One account's intake: source check, signature and freshness, replay guard, decryption by mode, parsing, and the durable store before `success`.

use super::error::AppError;
use super::seen::{Seen, SeenRecord, SeenSignatures};
use super::source::{AllowList, TrustedProxies};
use crate::config::Mode;
use crate::envelope::Envelope;
use crate::secret::Secret;
use crate::spool::{Appended, NewEvent, Spool};
use crate::wechat::crypto::Cipher;
use crate::wechat::push::{Push, PushError};
use crate::wechat::signature::{self, SignatureError};
use crate::wechat::{is_app_id, xml};
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::Semaphore;

/// What every account's intake shares.
pub struct Shared {
    pub spool: Arc<Spool>,
    pub seen: SeenSignatures,
    pub proxies: TrustedProxies,
    pub tolerance: u64,
    pub max_body: usize,
    pub request_timeout: Duration,
    pub in_flight: Semaphore,
}

/// One account (one path).
pub struct Intake {
    pub account: String,
    pub token: Secret,
    pub mode: Mode,
    pub cipher: Option<Cipher>,
    /// A third-party platform entry: the authorized appid comes from the path.
    pub platform: bool,
    pub app_id: Option<String>,
    pub sinks: Arc<[String]>,
    pub allow: Arc<AllowList>,
    pub shared: Arc<Shared>,
}

#[derive(Debug, Deserialize)]
pub struct SignedQuery {
    signature: Option<String>,
    timestamp: Option<String>,
    nonce: Option<String>,
    echostr: Option<String>,
    msg_signature: Option<String>,
}

type QueryResult = Result<Query<SignedQuery>, QueryRejection>;

pub async fn verify_url(
    State(intake): State<Arc<Intake>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    query: QueryResult,
) -> Result<Response, AppError> {
    intake
        .logged(intake.verify_url(None, peer, &headers, query))
        .await
}

pub async fn verify_url_platform(
    State(intake): State<Arc<Intake>>,
    Path(app_id): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    query: QueryResult,
) -> Result<Response, AppError> {
    intake
        .logged(intake.verify_url(Some(app_id), peer, &headers, query))
        .await
}

pub async fn receive(
    State(intake): State<Arc<Intake>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    query: QueryResult,
    body: Body,
) -> Result<Response, AppError> {
    intake
        .logged(intake.receive(None, peer, &headers, query, body))
        .await
}

pub async fn receive_platform(
    State(intake): State<Arc<Intake>>,
    Path(app_id): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    query: QueryResult,
    body: Body,
) -> Result<Response, AppError> {
    intake
        .logged(intake.receive(Some(app_id), peer, &headers, query, body))
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
    /// Bounds the request in count and time, and logs a refusal.
    async fn logged(
        &self,
        work: impl std::future::Future<Output = Result<Response, AppError>>,
    ) -> Result<Response, AppError> {
        let result = match self.shared.in_flight.try_acquire() {
            Err(_) => Err(AppError::Busy),
            Ok(_permit) => tokio::time::timeout(self.shared.request_timeout, work)
                .await
                .unwrap_or(Err(AppError::Timeout)),
        };
        if let Err(e) = &result {
            e.log(&self.account);
        }
        result
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

    fn check_fresh(&self, timestamp: &str) -> Result<(), AppError> {
        Ok(signature::check_fresh(
            timestamp,
            unix_now(),
            self.shared.tolerance,
        )?)
    }

    /// Checks `signature` over token, timestamp and nonce, and the timestamp's freshness.
    fn check_signature<'q>(
        &self,
        q: &'q SignedQuery,
    ) -> Result<(&'q str, &'q str, &'q str), AppError> {
        let sig = q
            .signature
            .as_deref()
            .ok_or(SignatureError::Missing("signature"))?;
        let ts = q
            .timestamp
            .as_deref()
            .ok_or(SignatureError::Missing("timestamp"))?;
        let nonce = q.nonce.as_deref().ok_or(SignatureError::Missing("nonce"))?;
        signature::verify(self.token.expose(), ts, nonce, sig)?;
        self.check_fresh(ts)?;
        Ok((sig, ts, nonce))
    }

    /// Checks `msg_signature` over token, timestamp, nonce and the encrypted value, then decrypts it.
    fn decrypt(&self, q: &SignedQuery, encrypted: &str) -> Result<Vec<u8>, AppError> {
        let cipher = self
            .cipher
            .as_ref()
            .ok_or_else(|| AppError::Rejected("this account has no encoding_aes_key".into()))?;
        let msg_sig = q
            .msg_signature
            .as_deref()
            .ok_or(SignatureError::Missing("msg_signature"))?;
        let ts = q
            .timestamp
            .as_deref()
            .ok_or(SignatureError::Missing("timestamp"))?;
        let nonce = q.nonce.as_deref().ok_or(SignatureError::Missing("nonce"))?;
        let expected = signature::digest(&mut [self.token.expose(), ts, nonce, encrypted]);
        if !signature::matches(&expected, msg_sig) {
            return Err(SignatureError::MsgMismatch.into());
        }
        self.check_fresh(ts)?;
        Ok(cipher.decrypt(encrypted)?)
    }

    async fn verify_url(
        &self,
        path_app_id: Option<String>,
        peer: SocketAddr,
        headers: &HeaderMap,
        query: QueryResult,
    ) -> Result<Response, AppError> {
        self.admit(path_app_id, peer, headers)?;
        let Query(q) = query.map_err(|e| AppError::BadRequest(e.body_text()))?;
        let echostr = q
            .echostr
            .as_deref()
            .ok_or(SignatureError::Missing("echostr"))?;
        let answer = if q.msg_signature.is_some() && self.cipher.is_some() {
            // Encrypted echostr: msg_signature covers it, and the answer is its plaintext.
            let plain = self.decrypt(&q, echostr)?;
            String::from_utf8(plain)
                .map_err(|_| AppError::BadRequest("decrypted echostr is not UTF-8".into()))?
        } else {
            self.check_signature(&q)?;
            echostr.to_owned()
        };
        tracing::info!(account = %self.account, "URL verification answered");
        Ok(text(answer))
    }

    async fn receive(
        &self,
        path_app_id: Option<String>,
        peer: SocketAddr,
        headers: &HeaderMap,
        query: QueryResult,
        body: Body,
    ) -> Result<Response, AppError> {
        let app_id = self.admit(path_app_id, peer, headers)?;
        let Query(q) = query.map_err(|e| AppError::BadRequest(e.body_text()))?;
        let (sig, ts, _) = self.check_signature(&q)?;
        let body = read_body(body, self.shared.max_body).await?;
        let seen = SeenRecord {
            account: self.account.clone(),
            signature: sig.to_ascii_lowercase(),
            timestamp: ts.parse().unwrap_or(0),
            body_hash: Sha256::digest(&body).into(),
        };
        let oldest = match self.shared.tolerance {
            0 => 0,
            t => unix_now().saturating_sub(t),
        };
        if self.shared.seen.check(&seen, oldest) == Seen::OtherBody {
            return Err(AppError::Rejected(
                "this signed query was already used with a different body (replay)".into(),
            ));
        }
        let push = self.open(&q, &body)?;
        let envelope = Envelope::new(&self.account, app_id.as_deref(), push, SystemTime::now());
        let event = NewEvent {
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
            seen: Some(seen),
        };
        match self.shared.spool.append(event).await? {
            Appended::Stored(seq) => {
                tracing::info!(account = %self.account, id = %envelope.id, seq, "push accepted")
            }
            Appended::Duplicate => {
                tracing::info!(account = %self.account, id = %envelope.id, "retry of a stored push accepted")
            }
        }
        Ok(text("success"))
    }

    /// The push inside the body, as the account's mode says to read it.
    fn open(&self, q: &SignedQuery, body: &[u8]) -> Result<Push, AppError> {
        if self.mode == Mode::Plain {
            return Ok(Push::parse(body)?);
        }
        let outer = xml::parse(body).map_err(PushError::from)?;
        match outer.child_text("Encrypt") {
            Some(encrypted) => Ok(Push::parse(&self.decrypt(q, encrypted)?)?),
            None if self.mode == Mode::Compatible => Ok(Push::from_element(&outer)?),
            None => Err(AppError::Rejected(
                "this account is in secure mode: a body without <Encrypt> is refused".into(),
            )),
        }
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
