//! The event JSON every sink receives, and the `id` that stays the same across WeChat's retries of one push.

use crate::wechat::authorization::AuthorizationEvent;
use crate::wechat::push::Push;
use serde::{Deserialize, Serialize};
use sha1::{Digest, Sha1};
use std::time::SystemTime;

/// One accepted push as sinks see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Stable across WeChat's retries; unique per account (see [`event_id`]).
    pub id: String,
    /// The `name` of the account whose URL received the push.
    pub account: String,
    /// The appid the push is for: the authorized account's (from the path) for a
    /// third-party platform entry, else the account's configured `app_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_id: Option<String>,
    /// When wxhook first accepted the push (RFC 3339, UTC, milliseconds).
    pub received_at: String,
    /// How wxhook learned it: WeChat pushed it, or `freepublish/get` answered it.
    pub source: Source,
    #[serde(flatten)]
    pub push: Push,
    /// For an event of a publish job wxhook follows: `{"media_id", "submitted_at"}`
    /// (added by the spool when it stores the event).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<serde_json::Value>,
}

/// Where an event came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Push,
    Poll,
}

impl Envelope {
    pub fn new(
        account: &str,
        app_id: Option<&str>,
        push: Push,
        received_at: SystemTime,
    ) -> Envelope {
        Envelope {
            id: event_id(&push),
            account: account.to_owned(),
            app_id: app_id.map(str::to_owned),
            received_at: humantime::format_rfc3339_millis(received_at).to_string(),
            source: Source::Push,
            push,
            job: None,
        }
    }

    /// The JSON text stored in the spool and delivered byte for byte to every sink.
    pub fn to_json(&self) -> String {
        json_text(&self.id, self)
    }
}

/// An event's JSON text. Serializing strings, numbers and maps cannot fail; should it,
/// the event is kept regardless, with the reason.
fn json_text(id: &str, event: &impl Serialize) -> String {
    serde_json::to_string(event).unwrap_or_else(|e| {
        format!(
            "{{\"id\":{id:?},\"serialization_error\":{:?}}}",
            e.to_string()
        )
    })
}

/// A third-party platform's authorization event as sinks see it: `app_id` is the
/// authorizer's (absent for a ticket), and a ticket's value is never in it.
#[derive(Debug, Clone, Serialize)]
pub struct AuthorizationEnvelope<'e> {
    pub id: String,
    pub account: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_id: Option<&'e str>,
    pub received_at: String,
    pub source: Source,
    #[serde(flatten)]
    pub event: &'e AuthorizationEvent,
}

impl<'e> AuthorizationEnvelope<'e> {
    pub fn new(
        account: &str,
        event: &'e AuthorizationEvent,
        received_at: SystemTime,
    ) -> AuthorizationEnvelope<'e> {
        AuthorizationEnvelope {
            id: authorization_event_id(event),
            account: account.to_owned(),
            app_id: event.authorizer_app_id.as_deref(),
            received_at: humantime::format_rfc3339_millis(received_at).to_string(),
            source: Source::Push,
            event,
        }
    }

    /// The JSON text stored in the spool and delivered to every sink.
    pub fn to_json(&self) -> String {
        json_text(&self.id, self)
    }
}

/// `auth-<CreateTime>-<hash>`, the hash covering the whole event (the ticket included):
/// WeChat's retries repeat it exactly.
pub fn authorization_event_id(event: &AuthorizationEvent) -> String {
    let create_time = event.create_time.to_string();
    let typed = serde_json::to_string(event).unwrap_or_default();
    let mut hasher = Sha1::new();
    for piece in [
        event.component_app_id.as_str(),
        &create_time,
        &event.info_type,
        event.authorizer_app_id.as_deref().unwrap_or(""),
        event.ticket.as_ref().map(|t| t.expose()).unwrap_or(""),
        &typed,
    ] {
        hasher.update(piece.as_bytes());
        hasher.update([0u8]);
    }
    let digest = hex::encode(hasher.finalize());
    format!("auth-{create_time}-{}", &digest[..24])
}

/// The deduplication key of a push, safe as a Standard Webhooks `webhook-id` (no `.`):
/// - `publish-<publish_id>-<publish_status>` for `PUBLISHJOBFINISH`;
/// - `msg-<MsgId>` where the push has `MsgId` (or `MsgID`);
/// - otherwise `event-<CreateTime>-<hash>`, the hash covering the whole push: its header
///   and every field. WeChat's retries of a push repeat it exactly, while two distinct
///   events of one second (WeCom's `change_contact` for two members, say) differ in
///   some field.
pub fn event_id(push: &Push) -> String {
    if let Some(info) = &push.publish_event_info {
        return publish_event_id(&info.publish_id, info.publish_status);
    }
    let msg_id = ["MsgId", "MsgID"]
        .iter()
        .find_map(|key| push.fields.get(*key).and_then(|v| v.as_str()));
    if let Some(msg_id) = msg_id.filter(|id| !id.trim().is_empty()) {
        return format!("msg-{}", part(msg_id.trim()));
    }
    let create_time = push.create_time.to_string();
    let fields = serde_json::to_string(&push.fields).unwrap_or_default();
    let mut hasher = Sha1::new();
    for piece in [
        push.to_user_name.as_str(),
        push.from_user_name.as_str(),
        &create_time,
        &push.msg_type,
        push.event.as_deref().unwrap_or(""),
        &fields,
    ] {
        hasher.update(piece.as_bytes());
        hasher.update([0u8]);
    }
    let digest = hex::encode(hasher.finalize());
    format!("event-{create_time}-{}", &digest[..24])
}

/// The id of a publish job's status event, pushed or polled alike.
pub fn publish_event_id(publish_id: &str, status: u32) -> String {
    format!("publish-{}-{status}", part(publish_id))
}

/// A piece of WeChat data usable inside an id as is, or a hash of it when it is not.
fn part(s: &str) -> String {
    let safe = (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if safe {
        s.to_owned()
    } else {
        let digest = hex::encode(Sha1::digest(s.as_bytes()));
        format!("h{}", &digest[..24])
    }
}
