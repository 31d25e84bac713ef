//! The stand-in as a third-party platform sees WeChat: `component_verify_ticket` pushes, authorization events sent on request, `api_component_token`, `api_query_auth` and `api_authorizer_token` (each refresh replaces the refresh token, the old one is refused).

use super::{Simulator, error, now_secs};
use crate::replay;
use axum::Json;
use axum::extract::{Query, State};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// The stand-in plays WeChat for a third-party platform: `app_id` and `app_secret` of
/// [`super::SimOptions`] are the platform's, pushes go to `callback` with `{appid}`
/// replaced by the authorized account's appid.
#[derive(Debug, Clone)]
pub struct SimPlatform {
    /// The platform's authorization event URL (tickets and authorizations go there).
    pub auth_callback: String,
    /// A fresh ticket is pushed this often (WeChat: every 10 minutes), the first at
    /// start; none unasked (`POST /simulator/ticket`) when `None`.
    pub ticket_every: Option<Duration>,
}

/// An authorized account's tokens as the stand-in issued them.
struct Authorizer {
    access_token: String,
    refresh_token: String,
}

#[derive(Default)]
pub(super) struct PlatformState {
    /// Tickets pushed, newest last; the two newest are accepted.
    tickets: Vec<String>,
    component_token: Option<String>,
    seq: u64,
    /// Authorization codes not used yet, by code: the account's appid.
    codes: HashMap<String, String>,
    authorizers: HashMap<String, Authorizer>,
}

impl PlatformState {
    /// The authorized account an access token belongs to.
    pub(super) fn authorizer_of(&self, token: &str) -> Option<String> {
        self.authorizers
            .iter()
            .find(|(_, a)| a.access_token == token)
            .map(|(app_id, _)| app_id.clone())
    }

    fn next(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }
}

#[derive(Deserialize)]
pub(super) struct ComponentQuery {
    component_access_token: Option<String>,
    /// The newer name of the same parameter.
    access_token: Option<String>,
}

impl Simulator {
    fn count(&self, api: &str) {
        *self.lock().calls.entry(api.to_owned()).or_default() += 1;
    }

    fn component_app_id(&self) -> String {
        self.options.app_id.clone().unwrap_or_default()
    }

    /// Checks a component API call's token.
    fn component_authorized(&self, api: &str, q: &ComponentQuery) -> Result<(), Json<Value>> {
        self.count(api);
        let state = self.lock();
        let given = q
            .component_access_token
            .as_ref()
            .or(q.access_token.as_ref());
        match (given, &state.platform.component_token) {
            (Some(given), Some(current)) if given == current => Ok(()),
            (Some(_), _) => Err(error(
                40001,
                "invalid credential, component_access_token is invalid",
            )),
            (None, _) => Err(error(41001, "component_access_token missing")),
        }
    }

    /// An authorization event's XML before encryption.
    fn authorization_xml(&self, info_type: &str, rest: &str) -> String {
        format!(
            "<xml><AppId><![CDATA[{}]]></AppId><CreateTime>{}</CreateTime><InfoType><![CDATA[{info_type}]]></InfoType>{rest}</xml>",
            self.component_app_id(),
            now_secs()
        )
    }

    /// Sends an authorization event as WeChat does (encrypted, up to three tries), or
    /// with `send` false only answers its XML (for a test that sends it another way).
    async fn authorization(&self, info_type: &str, rest: &str, send: bool) -> Value {
        let xml = self.authorization_xml(info_type, rest);
        if send {
            json!({ "acknowledged": self.send_authorization(info_type, xml).await })
        } else {
            json!({ "xml": xml })
        }
    }

    async fn send_authorization(&self, info_type: &str, xml: String) -> bool {
        let Some(platform) = &self.options.platform else {
            return false;
        };
        for _ in 0..3 {
            match replay::send_as(
                &self.http,
                &platform.auth_callback,
                &self.options.token,
                self.options.cipher.as_ref(),
                xml.clone().into_bytes(),
            )
            .await
            {
                Ok(answer) if answer.acknowledged() => return true,
                Ok(answer) => {
                    tracing::warn!(info_type, status = answer.status, body = %answer.body.trim(), "the authorization event URL did not answer success")
                }
                Err(e) => {
                    tracing::warn!(info_type, error = %e.without_url(), "the authorization event URL is unreachable")
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        false
    }

    /// A fresh `component_verify_ticket`, pushed unless `send` is false.
    pub async fn push_ticket(&self, send: bool) -> Value {
        let ticket = {
            let mut state = self.lock();
            let n = state.platform.next();
            let ticket = format!("ticket@@@sim{n:06}{}", rand::random::<u32>());
            state.platform.tickets.push(ticket.clone());
            ticket
        };
        self.authorization(
            "component_verify_ticket",
            &format!("<ComponentVerifyTicket><![CDATA[{ticket}]]></ComponentVerifyTicket>"),
            send,
        )
        .await
    }

    /// Pushes tickets every `ticket_every`, the first at once.
    pub(super) async fn tickets(self: Arc<Self>, every: Duration) {
        loop {
            let answer = self.push_ticket(true).await;
            tracing::info!(%answer, "component_verify_ticket pushed");
            if every.is_zero() {
                return;
            }
            tokio::time::sleep(every).await;
        }
    }
}

pub(super) async fn component_token(
    State(sim): State<Arc<Simulator>>,
    Json(body): Json<Value>,
) -> Json<Value> {
    sim.count("api_component_token");
    let field = |k: &str| body.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    if field("component_appid") != sim.component_app_id() {
        return error(40013, "invalid appid");
    }
    if sim
        .options
        .app_secret
        .as_deref()
        .is_some_and(|s| s != field("component_appsecret"))
    {
        return error(40125, "invalid appsecret");
    }
    let ticket = field("component_verify_ticket");
    let mut state = sim.lock();
    let known = state
        .platform
        .tickets
        .iter()
        .rev()
        .take(2)
        .any(|t| *t == ticket);
    if !known {
        return error(61006, "component ticket is invalid");
    }
    let n = state.platform.next();
    let token = format!("SIMCOMPONENT_{n}");
    state.platform.component_token = Some(token.clone());
    Json(json!({ "component_access_token": token, "expires_in": sim.options.token_ttl }))
}

pub(super) async fn query_auth(
    State(sim): State<Arc<Simulator>>,
    Query(q): Query<ComponentQuery>,
    Json(body): Json<Value>,
) -> Json<Value> {
    if let Err(e) = sim.component_authorized("api_query_auth", &q) {
        return e;
    }
    let code = body
        .get("authorization_code")
        .and_then(Value::as_str)
        .unwrap_or("");
    let mut state = sim.lock();
    let Some(app_id) = state.platform.codes.remove(code) else {
        return error(61010, "authorization code is invalid or used");
    };
    let n = state.platform.next();
    let authorizer = Authorizer {
        access_token: format!("SIMAUTH_{n}"),
        refresh_token: format!("refreshtoken@@@sim{n:06}"),
    };
    let answer = json!({ "authorization_info": {
        "authorizer_appid": app_id,
        "authorizer_access_token": authorizer.access_token,
        "expires_in": sim.options.token_ttl,
        "authorizer_refresh_token": authorizer.refresh_token,
        "func_info": [
            { "funcscope_category": { "id": 1 } },
            { "funcscope_category": { "id": 7 } },
            { "funcscope_category": { "id": 11 } }
        ]
    }});
    state.platform.authorizers.insert(app_id, authorizer);
    Json(answer)
}

pub(super) async fn authorizer_token(
    State(sim): State<Arc<Simulator>>,
    Query(q): Query<ComponentQuery>,
    Json(body): Json<Value>,
) -> Json<Value> {
    if let Err(e) = sim.component_authorized("api_authorizer_token", &q) {
        return e;
    }
    let field = |k: &str| body.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    let (app_id, refresh) = (field("authorizer_appid"), field("authorizer_refresh_token"));
    let mut state = sim.lock();
    let n = state.platform.next();
    let Some(authorizer) = state
        .platform
        .authorizers
        .get_mut(&app_id)
        .filter(|a| a.refresh_token == refresh)
    else {
        return error(61023, "refresh_token is invalid");
    };
    authorizer.access_token = format!("SIMAUTH_{n}");
    authorizer.refresh_token = format!("refreshtoken@@@sim{n:06}");
    Json(json!({
        "authorizer_access_token": authorizer.access_token,
        "expires_in": sim.options.token_ttl,
        "authorizer_refresh_token": authorizer.refresh_token,
    }))
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
pub(super) struct TicketRequest {
    /// False: answer the event's XML instead of sending it.
    #[serde(default = "yes")]
    send: bool,
}

/// `POST /simulator/ticket`: a fresh ticket pushed now.
pub(super) async fn ticket(
    State(sim): State<Arc<Simulator>>,
    Json(req): Json<TicketRequest>,
) -> Json<Value> {
    Json(sim.push_ticket(req.send).await)
}

#[derive(Deserialize)]
pub(super) struct AuthorizerRequest {
    app_id: String,
    /// `updateauthorized` instead of `authorized`.
    #[serde(default)]
    update: bool,
    /// False: answer the event's XML instead of sending it.
    #[serde(default = "yes")]
    send: bool,
}

/// `POST /simulator/authorize`: the account authorizes the platform; its
/// `authorized` event (with a fresh code) is pushed now.
pub(super) async fn authorize(
    State(sim): State<Arc<Simulator>>,
    Json(req): Json<AuthorizerRequest>,
) -> Json<Value> {
    let code = {
        let mut state = sim.lock();
        let n = state.platform.next();
        let code = format!("queryauthcode@@@sim{n:06}");
        state
            .platform
            .codes
            .insert(code.clone(), req.app_id.clone());
        code
    };
    let info_type = if req.update {
        "updateauthorized"
    } else {
        "authorized"
    };
    let rest = format!(
        "<AuthorizerAppid><![CDATA[{}]]></AuthorizerAppid><AuthorizationCode><![CDATA[{code}]]></AuthorizationCode>\
         <AuthorizationCodeExpiredTime>{}</AuthorizationCodeExpiredTime><PreAuthCode><![CDATA[preauthcode@@@sim]]></PreAuthCode>",
        req.app_id,
        now_secs() + 3600
    );
    Json(sim.authorization(info_type, &rest, req.send).await)
}

/// `POST /simulator/unauthorize`: the account revokes the authorization: its tokens are
/// refused from now on, and the `unauthorized` event is pushed.
pub(super) async fn unauthorize(
    State(sim): State<Arc<Simulator>>,
    Json(req): Json<AuthorizerRequest>,
) -> Json<Value> {
    sim.lock().platform.authorizers.remove(&req.app_id);
    let rest = format!(
        "<AuthorizerAppid><![CDATA[{}]]></AuthorizerAppid>",
        req.app_id
    );
    Json(sim.authorization("unauthorized", &rest, req.send).await)
}
