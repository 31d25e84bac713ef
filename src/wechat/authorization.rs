//! A third-party platform's authorization event (`component_verify_ticket`, `authorized`, `updateauthorized`, `unauthorized`, any other `InfoType`), typed; the ticket kept apart as a secret.

use super::push::{PushError, to_map};
use super::xml::{self, Element};
use crate::secret::Secret;
use serde::Serialize;
use serde_json::{Map, Value};

/// The elements typed in [`AuthorizationEvent`]; the rest go to `fields`.
const TYPED: [&str; 8] = [
    "AppId",
    "CreateTime",
    "InfoType",
    "ComponentVerifyTicket",
    "AuthorizerAppid",
    "AuthorizationCode",
    "AuthorizationCodeExpiredTime",
    "PreAuthCode",
];

/// One authorization event, as WeChat sends it to a platform's authorization event URL.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuthorizationEvent {
    /// `AppId`: the platform's own (component) appid.
    pub component_app_id: String,
    pub create_time: u64,
    /// `InfoType`: `component_verify_ticket`, `authorized`, `updateauthorized`,
    /// `unauthorized`, or another kept as sent.
    pub info_type: String,
    /// `ComponentVerifyTicket`: stored, never delivered or logged.
    #[serde(skip)]
    pub ticket: Option<Secret>,
    /// `AuthorizerAppid`: the account that authorized, changed or revoked.
    #[serde(skip)]
    pub authorizer_app_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authorization_code: Option<String>,
    /// When `authorization_code` expires (Unix seconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authorization_code_expired_time: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pre_auth_code: Option<String>,
    /// Every other element, as [`crate::wechat::push::Push::fields`] keeps them.
    pub fields: Map<String, Value>,
}

impl AuthorizationEvent {
    /// Parses a decrypted authorization event.
    pub fn parse(body: &[u8]) -> Result<AuthorizationEvent, PushError> {
        let doc = xml::parse(body)?;
        let root = doc.root();
        if root.name() != "xml" {
            return Err(PushError::Root(root.name().to_owned()));
        }
        let text = |name: &'static str| -> Result<Option<String>, PushError> {
            let mut found = root.children().filter(|c| c.name() == name);
            match (found.next(), found.next()) {
                (None, _) => Ok(None),
                (Some(_), Some(_)) => Err(PushError::Duplicate(name)),
                (Some(el), None) if el.has_children() => Err(PushError::NotText(name)),
                (Some(el), None) => Ok(Some(el.text().trim().to_owned())),
            }
        };
        let required = |name| text(name)?.ok_or(PushError::Missing(name));
        let info_type = required("InfoType")?;
        let ticket = text("ComponentVerifyTicket")?;
        if info_type == "component_verify_ticket" && ticket.as_deref().unwrap_or("").is_empty() {
            return Err(PushError::Missing("ComponentVerifyTicket"));
        }
        let expires = text("AuthorizationCodeExpiredTime")?;
        Ok(AuthorizationEvent {
            component_app_id: required("AppId")?,
            create_time: required("CreateTime")?
                .parse()
                .map_err(|_| PushError::CreateTime)?,
            info_type,
            ticket: ticket.map(Secret::new),
            authorizer_app_id: text("AuthorizerAppid")?.filter(|a| !a.is_empty()),
            authorization_code: text("AuthorizationCode")?,
            authorization_code_expired_time: match expires {
                Some(t) => Some(
                    t.parse()
                        .map_err(|_| PushError::Field("AuthorizationCodeExpiredTime"))?,
                ),
                None => None,
            },
            pre_auth_code: text("PreAuthCode")?,
            fields: to_map(
                root.children()
                    .filter(|c: &Element| !TYPED.contains(&c.name())),
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_is_kept_apart_and_authorizations_are_typed() {
        let ticket = AuthorizationEvent::parse(
            b"<xml><AppId>wx0123456789abcdef</AppId><CreateTime>1413192605</CreateTime>\
              <InfoType>component_verify_ticket</InfoType>\
              <ComponentVerifyTicket>ticket@@@secret</ComponentVerifyTicket></xml>",
        )
        .expect("parses");
        assert_eq!(
            ticket.ticket.as_ref().map(Secret::expose),
            Some("ticket@@@secret")
        );
        let json = serde_json::to_string(&ticket).expect("json");
        assert!(!json.contains("secret"), "{json}");
        assert!(!format!("{ticket:?}").contains("secret"));

        let authorized = AuthorizationEvent::parse(
            b"<xml><AppId>wx0123456789abcdef</AppId><CreateTime>1413192760</CreateTime>\
              <InfoType>authorized</InfoType><AuthorizerAppid>wxf8b4f85f3a794e77</AuthorizerAppid>\
              <AuthorizationCode>queryauthcode@@@x</AuthorizationCode>\
              <AuthorizationCodeExpiredTime>1413196360</AuthorizationCodeExpiredTime>\
              <PreAuthCode>preauthcode@@@y</PreAuthCode><Extra>kept</Extra></xml>",
        )
        .expect("parses");
        assert_eq!(
            authorized.authorizer_app_id.as_deref(),
            Some("wxf8b4f85f3a794e77")
        );
        assert_eq!(authorized.authorization_code_expired_time, Some(1413196360));
        assert_eq!(authorized.fields["Extra"], "kept");

        let missing = AuthorizationEvent::parse(
            b"<xml><AppId>wx0123456789abcdef</AppId><CreateTime>1</CreateTime>\
              <InfoType>component_verify_ticket</InfoType></xml>",
        );
        assert_eq!(missing, Err(PushError::Missing("ComponentVerifyTicket")));
    }
}
