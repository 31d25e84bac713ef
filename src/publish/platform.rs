//! Third-party platforms: the `component_verify_ticket` behind `component_access_token`, authorization codes exchanged with `api_query_auth`, authorized accounts' tokens refreshed with `api_authorizer_token` (each new refresh token stored), and the loop that exchanges codes as they arrive.

use super::client::{Api, send_json};
use super::error::{ApiError, Recovery};
use super::token::{Credentials, Tokens, renew_at};
use crate::secret::Secret;
use crate::spool::jobs::{self, JobsDb};
use crate::spool::platform::{self, AuthorizerState, PendingCode, authorizer_token_key};
use crate::spool::unix_ms;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Codes waiting for an exchange are looked for this often.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// The longest wait between two tries of one code.
const MAX_RETRY_MS: i64 = 60_000;

/// `api_query_auth`'s answer.
#[derive(Deserialize)]
struct QueryAuthAnswer {
    authorization_info: AuthorizationInfo,
}

#[derive(Deserialize)]
struct AuthorizationInfo {
    authorizer_appid: String,
    authorizer_access_token: String,
    #[serde(default = "two_hours")]
    expires_in: u64,
    authorizer_refresh_token: String,
    #[serde(default)]
    func_info: Vec<Value>,
}

/// `api_authorizer_token`'s answer.
#[derive(Deserialize)]
struct AuthorizerTokenAnswer {
    authorizer_access_token: String,
    #[serde(default = "two_hours")]
    expires_in: u64,
    #[serde(default)]
    authorizer_refresh_token: Option<String>,
}

fn two_hours() -> u64 {
    7200
}

/// The permission set ids of `func_info` (`[{"funcscope_category":{"id":7}}, …]`).
fn permission_sets(func_info: &[Value]) -> Vec<u32> {
    func_info
        .iter()
        .filter_map(|f| f.pointer("/funcscope_category/id")?.as_u64())
        .filter_map(|id| u32::try_from(id).ok())
        .collect()
}

/// A platform entry named without the authorized account.
pub fn needs_app_id(account: &str) -> ApiError {
    ApiError::local(
        format!(
            "account `{account}` is a third-party platform: it publishes for the accounts authorized to it"
        ),
        "name the authorized account with --app-id wx… (\"app_id\" in the HTTP API); `wxhook platform authorizers` lists them",
    )
}

fn not_a_platform(account: &str) -> ApiError {
    ApiError::local(
        format!("account `{account}` is not a third-party platform entry"),
        "--app-id (\"app_id\") names an account authorized to a platform entry (path ending in /{appid}, with app_secret)",
    )
}

fn not_authorized(account: &str, app_id: &str, state: AuthorizerState) -> ApiError {
    let why = match state {
        AuthorizerState::Pending => "its authorization code is not exchanged yet",
        AuthorizerState::Revoked => "it revoked its authorization",
        AuthorizerState::Failed | AuthorizerState::Authorized => "no authorization of it is stored",
    };
    ApiError::local(
        format!("{app_id} cannot be called through platform `{account}`: {why}"),
        "the account must authorize the platform (its authorized event reaches the authorization event URL); `wxhook platform authorizers` shows each account's state",
    )
}

impl Tokens {
    /// The platform's appid, for an entry with platform credentials.
    fn component_app_id(&self, account: &str) -> Result<String, ApiError> {
        match &self.account(account)?.credentials {
            Credentials::Component { app_id, .. } => Ok(app_id.clone()),
            _ => Err(not_a_platform(account)),
        }
    }

    /// The newest `component_verify_ticket` of platform `account`.
    pub(super) async fn ticket(&self, account: &str) -> Result<Secret, ApiError> {
        let a = account.to_owned();
        self.db
            .run(move |conn| platform::ticket(conn, &a))
            .await
            .map_err(ApiError::storage)?
            .ok_or_else(|| {
                ApiError::local(
                    format!("platform `{account}` has no component_verify_ticket yet"),
                    "WeChat pushes one every 10 minutes to the platform's authorization event URL (auth_path): check that URL in the platform's settings and wait for the next ticket",
                )
            })
    }

    /// A `cgi-bin/component/{api}` call with the platform's `component_access_token`,
    /// retried once with a new one if WeChat refuses it.
    async fn component_call<T: DeserializeOwned>(
        &self,
        account: &str,
        api: &'static str,
        body: Value,
    ) -> Result<T, ApiError> {
        let mut token = self.entry_token(account).await?;
        let mut retried = false;
        loop {
            // The token under both names WeChat's pages give it (`component_access_token`
            // in the older, `access_token` in the newer); WeChat takes either.
            let url = format!(
                "{}/cgi-bin/component/{api}?component_access_token={token}&access_token={token}",
                self.api_base,
                token = token.expose()
            );
            let answer = send_json::<T>(self.http.post(url).json(&body)).await;
            let label = match &answer {
                Ok(_) => "0".to_owned(),
                Err(e) => e.label(),
            };
            metrics::counter!(crate::telemetry::TOKEN_FETCHES, "account" => account.to_owned(), "kind" => api, "errcode" => label).increment(1);
            match answer {
                Err(e) if e.recovery() == Recovery::Token && !retried => {
                    retried = true;
                    token = self.replace_entry_token(account, &token).await?;
                }
                other => return other,
            }
        }
    }

    /// The access token of `app_id`, authorized to platform `account`: the stored one
    /// (unless it is `rejected`), else a refresh whose new refresh token is stored with it.
    pub(super) async fn authorizer_token(
        &self,
        account: &str,
        app_id: &str,
        rejected: Option<&Secret>,
    ) -> Result<Secret, ApiError> {
        let component = self.component_app_id(account)?;
        let lock = {
            let mut map = self.authorizers.lock().unwrap_or_else(|e| e.into_inner());
            map.entry((account.to_owned(), app_id.to_owned()))
                .or_default()
                .clone()
        };
        let _one_refresh = lock.lock().await;
        let key = authorizer_token_key(account, app_id);
        let (k, a, p, now) = (
            key.clone(),
            account.to_owned(),
            app_id.to_owned(),
            unix_ms(),
        );
        let (stored, refresh) = self
            .db
            .run(move |conn| {
                Ok((
                    jobs::cached_token(conn, &k, now)?,
                    platform::refresh_token(conn, &a, &p)?,
                ))
            })
            .await
            .map_err(ApiError::storage)?;
        let refresh = match refresh {
            Ok(refresh) => refresh,
            // A code the server has not exchanged yet (it waited for a ticket, or this
            // is another process): exchanged here, then the account can be called.
            Err(AuthorizerState::Pending) => {
                return self.exchange_now(account, app_id).await;
            }
            Err(state) => return Err(not_authorized(account, app_id, state)),
        };
        if let Some((token, _)) = stored
            && rejected.is_none_or(|r| r.expose() != token)
        {
            return Ok(Secret::new(token));
        }
        let body = json!({
            "component_appid": component,
            "authorizer_appid": app_id,
            "authorizer_refresh_token": refresh.expose(),
        });
        let answer = match self
            .component_call::<AuthorizerTokenAnswer>(account, "api_authorizer_token", body)
            .await
        {
            Ok(answer) if !answer.authorizer_access_token.is_empty() => answer,
            Ok(_) => {
                return Err(ApiError::transport(
                    "api_authorizer_token answered an empty authorizer_access_token",
                ));
            }
            Err(e) => {
                let (a, p, text) = (account.to_owned(), app_id.to_owned(), e.to_string());
                let _ = self
                    .db
                    .run(move |conn| platform::refresh_failed(conn, &a, &p, &text))
                    .await;
                return Err(e);
            }
        };
        let now = unix_ms();
        let until = renew_at(now, answer.expires_in);
        let token = answer.authorizer_access_token;
        let new_refresh = answer
            .authorizer_refresh_token
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| refresh.expose().to_owned());
        let (a, p, t) = (account.to_owned(), app_id.to_owned(), token.clone());
        let kept = self
            .db
            .run(move |conn| {
                let tx = conn.unchecked_transaction()?;
                let kept = platform::refreshed(&tx, &a, &p, &new_refresh, now)?;
                if kept {
                    jobs::store_token(&tx, &key, &t, until, now)?;
                }
                tx.commit()?;
                Ok(kept)
            })
            .await
            .map_err(ApiError::storage)?;
        if !kept {
            return Err(not_authorized(account, app_id, AuthorizerState::Revoked));
        }
        tracing::info!(
            account,
            app_id,
            expires_in = answer.expires_in,
            "authorizer access token refreshed"
        );
        Ok(Secret::new(token))
    }

    /// The pending code of `app_id` exchanged at once; the access token it gave (or the
    /// one stored by whoever exchanged it first).
    async fn exchange_now(&self, account: &str, app_id: &str) -> Result<Secret, ApiError> {
        let (a, p) = (account.to_owned(), app_id.to_owned());
        let pending = self
            .db
            .run(move |conn| platform::pending_code(conn, &a, &p))
            .await
            .map_err(ApiError::storage)?;
        let exchanged = match &pending {
            Some(pending) if pending.expires_at > unix_ms() => {
                self.exchange(account, pending).await.map(drop)
            }
            _ => Err(not_authorized(account, app_id, AuthorizerState::Failed)),
        };
        let key = authorizer_token_key(account, app_id);
        let now = unix_ms();
        let stored = self
            .db
            .run(move |conn| jobs::cached_token(conn, &key, now))
            .await
            .map_err(ApiError::storage)?;
        match (stored, exchanged) {
            (Some((token, _)), _) => Ok(Secret::new(token)),
            (None, Err(e)) => Err(ApiError {
                errmsg: format!(
                    "{app_id}'s authorization code could not be exchanged: {}",
                    e.errmsg
                ),
                ..e
            }),
            (None, Ok(())) => Err(not_authorized(account, app_id, AuthorizerState::Pending)),
        }
    }

    /// Exchanges an authorization code (`api_query_auth`) and stores the account's
    /// tokens; returns its permission sets.
    async fn exchange(&self, account: &str, pending: &PendingCode) -> Result<Vec<u32>, ApiError> {
        let component = self.component_app_id(account)?;
        let body = json!({
            "component_appid": component,
            "authorization_code": pending.code.expose(),
        });
        let info = self
            .component_call::<QueryAuthAnswer>(account, "api_query_auth", body)
            .await?
            .authorization_info;
        if info.authorizer_appid != pending.app_id {
            return Err(ApiError::transport(format!(
                "api_query_auth answered for {}, but the code was {}'s",
                info.authorizer_appid, pending.app_id
            )));
        }
        if info.authorizer_access_token.is_empty() || info.authorizer_refresh_token.is_empty() {
            return Err(ApiError::transport(
                "api_query_auth answered without authorizer_access_token or authorizer_refresh_token",
            ));
        }
        let sets = permission_sets(&info.func_info);
        let now = unix_ms();
        let until = renew_at(now, info.expires_in);
        let key = authorizer_token_key(account, &pending.app_id);
        let (a, p, code, s) = (
            account.to_owned(),
            pending.app_id.clone(),
            pending.code.clone(),
            sets.clone(),
        );
        self.db
            .run(move |conn| {
                let tx = conn.unchecked_transaction()?;
                let current = platform::exchanged(
                    &tx,
                    &a,
                    &p,
                    code.expose(),
                    &info.authorizer_refresh_token,
                    &s,
                    now,
                )?;
                // A newer authorization event replaced the code meanwhile: it is exchanged next.
                if current {
                    jobs::store_token(&tx, &key, &info.authorizer_access_token, until, now)?;
                }
                tx.commit()
            })
            .await
            .map_err(ApiError::storage)?;
        Ok(sets)
    }
}

/// One platform's authorization codes, exchanged as they arrive and retried with
/// backoff until they expire.
pub struct Authorizations {
    pub api: Arc<Api>,
    pub db: Arc<JobsDb>,
    pub account: String,
}

impl Authorizations {
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        loop {
            if *stop.borrow() {
                return;
            }
            let (a, now) = (self.account.clone(), unix_ms());
            match self
                .db
                .run(move |conn| platform::due_codes(conn, &a, now))
                .await
            {
                Ok(due) => {
                    for pending in due {
                        self.exchange(&pending).await;
                    }
                }
                Err(e) => {
                    tracing::error!(account = %self.account, error = %e, "cannot read the authorization codes")
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(CHECK_EVERY) => {}
                _ = stop.changed() => {}
            }
        }
    }

    async fn exchange(&self, pending: &PendingCode) {
        let (account, app_id) = (self.account.as_str(), pending.app_id.as_str());
        let now = unix_ms();
        let error = if now >= pending.expires_at {
            "the authorization code expired before it could be exchanged".to_owned()
        } else {
            match self.api.tokens().exchange(account, pending).await {
                Ok(sets) => {
                    tracing::info!(
                        account,
                        app_id,
                        permission_sets = ?sets,
                        "account authorized the platform; its tokens are stored"
                    );
                    if !sets.is_empty() && !sets.contains(&7) {
                        tracing::warn!(
                            account,
                            app_id,
                            "the account did not grant permission set 7 (publishing): freepublish calls for it will be refused"
                        );
                    }
                    return;
                }
                Err(e) => e.to_string(),
            }
        };
        // Tried again with backoff while the code lasts; given up (`None`) after.
        let wait = (1000_i64 << pending.tries.min(6)).min(MAX_RETRY_MS);
        let next = Some(now + wait).filter(|at| *at < pending.expires_at);
        let (a, p, code, text) = (
            account.to_owned(),
            app_id.to_owned(),
            pending.code.clone(),
            error.clone(),
        );
        let given_up = self
            .db
            .run(move |conn| platform::exchange_failed(conn, &a, &p, code.expose(), &text, next))
            .await;
        match (given_up, next) {
            (Ok(true), _) => tracing::error!(
                account,
                app_id,
                error,
                "authorization not completed: the account must authorize the platform again"
            ),
            (Ok(false), Some(_)) => tracing::warn!(
                account,
                app_id,
                tries = pending.tries + 1,
                error,
                "exchanging an authorization code failed; trying again"
            ),
            (Ok(false), None) => {}
            (Err(e), _) => {
                tracing::error!(account, app_id, error = %e, "cannot record an exchange failure")
            }
        }
    }
}
