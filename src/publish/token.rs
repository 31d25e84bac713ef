//! Access tokens per account: from `stable_token` (normal mode), an `access_token_url`, or a platform's `component_access_token` (made from its newest ticket), cached in memory and in the spool, one fetch at a time, force refreshes within WeChat's limits; an authorized account's tokens are in [`super::platform`].

use super::error::ApiError;
use super::types::TokenAnswer;
use crate::secret::{Secret, SecretUrl};
use crate::spool::jobs::{self, JobsDb};
use crate::spool::unix_ms;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::Mutex;

/// WeChat allows this many `force_refresh` calls a day…
pub const FORCE_REFRESHES_PER_DAY: u32 = 20;
/// …at least this far apart (ms).
pub const FORCE_REFRESH_GAP_MS: i64 = 30_000;
const DAY_MS: i64 = 24 * 3600 * 1000;

/// Whom an API call is for: a configured account, or an account authorized to the
/// third-party platform entry `account` (`app_id`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub account: String,
    pub app_id: Option<String>,
}

impl Target {
    pub fn account(name: &str) -> Target {
        Target {
            account: name.to_owned(),
            app_id: None,
        }
    }

    /// Whom `job` is for (its `app_id` is empty for a configured account's job).
    pub fn of_job(job: &crate::spool::jobs::Job) -> Target {
        Target {
            account: job.account.clone(),
            app_id: (!job.app_id.is_empty()).then(|| job.app_id.clone()),
        }
    }

    /// The appid a job of this target is kept under (empty for a configured account).
    pub fn job_app_id(&self) -> &str {
        self.app_id.as_deref().unwrap_or("")
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.app_id {
            Some(app_id) => write!(f, "{}/{app_id}", self.account),
            None => f.write_str(&self.account),
        }
    }
}

/// Where an account's tokens come from.
#[derive(Clone)]
pub enum Credentials {
    Stable {
        app_id: String,
        secret: Secret,
    },
    Url(SecretUrl),
    /// A third-party platform: its `component_access_token`, from its AppSecret and the
    /// newest `component_verify_ticket`.
    Component {
        app_id: String,
        secret: Secret,
    },
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Stable { app_id, .. } => write!(f, "stable_token({app_id}, [redacted])"),
            Credentials::Url(url) => write!(f, "access_token_url({url:?})"),
            Credentials::Component { app_id, .. } => {
                write!(f, "component_access_token({app_id}, [redacted])")
            }
        }
    }
}

/// A token and when wxhook stops using it (Unix ms).
#[derive(Clone)]
struct Cached {
    token: Secret,
    renew_at: i64,
}

pub(super) struct AccountTokens {
    pub credentials: Credentials,
    /// The spool key: the account and what its tokens belong to.
    key: String,
    /// Held while fetching: callers wait for one fetch instead of starting their own.
    cached: Mutex<Option<Cached>>,
}

/// Held while one authorized account's token is refreshed.
pub(super) type RefreshLock = Arc<Mutex<()>>;

/// Every account's tokens.
pub struct Tokens {
    pub(super) http: reqwest::Client,
    pub(super) api_base: String,
    pub(super) db: Arc<JobsDb>,
    accounts: HashMap<String, AccountTokens>,
    /// Held while an authorized account's token is refreshed: one refresh at a time.
    pub(super) authorizers: std::sync::Mutex<HashMap<(String, String), RefreshLock>>,
}

/// Stop using a token this long before WeChat says it expires: the last 5 minutes, in
/// which WeChat hands out its successor (half the lifetime for short-lived tokens).
pub(super) fn renew_at(now: i64, expires_in: u64) -> i64 {
    let life = i64::try_from(expires_in.saturating_mul(1000)).unwrap_or(i64::MAX / 4);
    now + life - (life / 2).min(300_000)
}

impl Tokens {
    pub fn new(
        http: reqwest::Client,
        api_base: &str,
        db: Arc<JobsDb>,
        accounts: Vec<(String, Credentials)>,
    ) -> Tokens {
        let accounts = accounts
            .into_iter()
            .map(|(name, credentials)| {
                let key = match &credentials {
                    Credentials::Stable { app_id, .. } => format!("{name}\nstable\n{app_id}"),
                    Credentials::Url(url) => format!("{name}\nurl\n{}", url.redacted()),
                    Credentials::Component { app_id, .. } => {
                        crate::spool::platform::component_token_key(&name, app_id)
                    }
                };
                let tokens = AccountTokens {
                    credentials,
                    key,
                    cached: Mutex::new(None),
                };
                (name, tokens)
            })
            .collect();
        Tokens {
            http,
            api_base: api_base.trim_end_matches('/').to_owned(),
            db,
            accounts,
            authorizers: std::sync::Mutex::new(HashMap::new()),
        }
    }

    pub(super) fn account(&self, account: &str) -> Result<&AccountTokens, ApiError> {
        self.accounts.get(account).ok_or_else(|| {
            ApiError::local(
                format!("account `{account}` has no API credentials"),
                "set `app_secret` (with `app_id`) or `access_token_url` in its [[accounts]] entry",
            )
        })
    }

    /// A valid access token for `target`.
    pub async fn token(&self, target: &Target) -> Result<Secret, ApiError> {
        match &target.app_id {
            Some(app_id) => self.authorizer_token(&target.account, app_id, None).await,
            None => {
                if let Credentials::Component { .. } = self.account(&target.account)?.credentials {
                    return Err(super::platform::needs_app_id(&target.account));
                }
                self.entry_token(&target.account).await
            }
        }
    }

    /// After WeChat refused `rejected`: a fresh token for `target`.
    pub async fn replace_rejected(
        &self,
        target: &Target,
        rejected: &Secret,
    ) -> Result<Secret, ApiError> {
        match &target.app_id {
            Some(app_id) => {
                self.authorizer_token(&target.account, app_id, Some(rejected))
                    .await
            }
            None => self.replace_entry_token(&target.account, rejected).await,
        }
    }

    /// A valid token of the entry `account` (a platform's `component_access_token`): from
    /// memory, else the spool, else one fetch.
    pub(super) async fn entry_token(&self, account: &str) -> Result<Secret, ApiError> {
        let entry = self.account(account)?;
        let mut cached = entry.cached.lock().await;
        let now = unix_ms();
        if let Some(c) = cached.as_ref().filter(|c| c.renew_at > now) {
            return Ok(c.token.clone());
        }
        let key = entry.key.clone();
        let stored = self
            .db
            .run(move |conn| jobs::cached_token(conn, &key, now))
            .await
            .map_err(ApiError::storage)?;
        if let Some((token, renew_at)) = stored {
            let c = Cached {
                token: Secret::new(token),
                renew_at,
            };
            *cached = Some(c.clone());
            return Ok(c.token);
        }
        let c = self.fetch(account, entry, false).await?;
        *cached = Some(c.clone());
        Ok(c.token)
    }

    /// After WeChat refused `rejected` as invalid or expired: a fresh token, asked for
    /// normally first; when that returns the same token, one `force_refresh` if today's
    /// 20 and the 30 s gap allow (across restarts, from the spool).
    pub(super) async fn replace_entry_token(
        &self,
        account: &str,
        rejected: &Secret,
    ) -> Result<Secret, ApiError> {
        let entry = self.account(account)?;
        let mut cached = entry.cached.lock().await;
        if let Some(c) = cached.as_ref()
            && c.token != *rejected
            && c.renew_at > unix_ms()
        {
            // Another caller replaced it while this one waited.
            return Ok(c.token.clone());
        }
        let fresh = self.fetch(account, entry, false).await?;
        if fresh.token != *rejected {
            *cached = Some(fresh.clone());
            return Ok(fresh.token);
        }
        match entry.credentials {
            Credentials::Url(_) => {
                *cached = None;
                return Err(ApiError::local(
                    "WeChat refused the access token and access_token_url returned the same one",
                    "the token service behind access_token_url must renew the token",
                ));
            }
            Credentials::Component { .. } => {
                *cached = None;
                return Err(ApiError::local(
                    "WeChat refused the component_access_token and api_component_token returned the same one",
                    "try again later; check that no other system renews this platform's component_access_token",
                ));
            }
            Credentials::Stable { .. } => {}
        }
        let key = entry.key.clone();
        let now = unix_ms();
        let (today, last) = self
            .db
            .run(move |conn| jobs::force_refreshes(conn, &key, now - DAY_MS))
            .await
            .map_err(ApiError::storage)?;
        if today >= FORCE_REFRESHES_PER_DAY
            || last.is_some_and(|at| now - at < FORCE_REFRESH_GAP_MS)
        {
            *cached = None;
            return Err(ApiError::local(
                "WeChat refused the access token, stable_token returns the same one, and a force refresh is not allowed now",
                format!(
                    "{today} force refreshes in the last 24 h (WeChat allows {FORCE_REFRESHES_PER_DAY}, 30 s apart); try again later, and check that no other system invalidates this account's tokens (cgi-bin/token)"
                ),
            ));
        }
        let forced = self.fetch(account, entry, true).await?;
        *cached = Some(forced.clone());
        Ok(forced.token)
    }

    /// One fetch, stored in the spool.
    async fn fetch(
        &self,
        account: &str,
        entry: &AccountTokens,
        force: bool,
    ) -> Result<Cached, ApiError> {
        let (request, kind) = match &entry.credentials {
            Credentials::Stable { app_id, secret } => (
                self.http
                    .post(format!("{}/cgi-bin/stable_token", self.api_base))
                    .json(&serde_json::json!({
                        "grant_type": "client_credential",
                        "appid": app_id,
                        "secret": secret.expose(),
                        "force_refresh": force,
                    })),
                if force {
                    "force_refresh"
                } else {
                    "stable_token"
                },
            ),
            Credentials::Url(url) => (self.http.get(url.expose()), "access_token_url"),
            Credentials::Component { app_id, secret } => {
                let ticket = self.ticket(account).await?;
                (
                    self.http
                        .post(format!(
                            "{}/cgi-bin/component/api_component_token",
                            self.api_base
                        ))
                        .json(&serde_json::json!({
                            "component_appid": app_id,
                            "component_appsecret": secret.expose(),
                            "component_verify_ticket": ticket.expose(),
                        })),
                    "component_token",
                )
            }
        };
        if force {
            let (key, now) = (entry.key.clone(), unix_ms());
            // Counted before the call: a refresh WeChat performed but whose answer was
            // lost still used one of the day's 20.
            self.db
                .run(move |conn| jobs::record_force_refresh(conn, &key, now))
                .await
                .map_err(ApiError::storage)?;
        }
        let answer = super::client::send_json::<TokenAnswer>(request).await;
        let errcode = match &answer {
            Ok(_) => "0".to_owned(),
            Err(e) => e.label(),
        };
        metrics::counter!(crate::telemetry::TOKEN_FETCHES, "account" => account.to_owned(), "kind" => kind, "errcode" => errcode).increment(1);
        let answer = answer?;
        if answer.access_token.is_empty() {
            return Err(ApiError::transport(
                "the token answer has an empty access_token",
            ));
        }
        let now = unix_ms();
        let cached = Cached {
            token: Secret::new(answer.access_token.clone()),
            renew_at: renew_at(now, answer.expires_in),
        };
        let (key, token, until) = (entry.key.clone(), answer.access_token, cached.renew_at);
        self.db
            .run(move |conn| jobs::store_token(conn, &key, &token, until, now))
            .await
            .map_err(ApiError::storage)?;
        tracing::info!(
            account,
            kind,
            expires_in = answer.expires_in,
            "access token fetched"
        );
        Ok(cached)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn tokens_are_renewed_before_they_expire() {
        assert_eq!(super::renew_at(0, 7200), 7_200_000 - 300_000);
        assert_eq!(super::renew_at(1000, 60), 1000 + 30_000);
    }
}
