//! Every WeChat API call: one HTTP client with timeouts, the access token in the query, retries by errcode (`-1` with backoff, `45011` at the next minute, one retry with a new token on `40001`/`40014`/`42001`), and a metric per call.

use super::error::{ApiError, Recovery};
use super::token::{Credentials, Target, Tokens};
use super::types::{Article, ArticlePage, CallbackIps, Submitted};
use crate::config::Config;
use crate::spool::jobs::JobsDb;
use crate::wechat::push::PublishEventInfo;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

/// Retries of a call WeChat answered `-1` (busy), and the first wait (doubled each time).
const BUSY_RETRIES: u32 = 3;
const BUSY_FIRST_WAIT: Duration = Duration::from_millis(200);

/// Sends a request and reads WeChat's JSON answer: a non-zero `errcode` is an [`ApiError`].
/// Error texts never carry the URL (its query holds the access token).
pub async fn send_json<T: DeserializeOwned>(
    request: reqwest::RequestBuilder,
) -> Result<T, ApiError> {
    let response = request
        .send()
        .await
        .map_err(|e| ApiError::transport(e.without_url()))?;
    read_answer(response).await
}

/// The WeChat API for every account with credentials.
pub struct Api {
    http: reqwest::Client,
    base: String,
    tokens: Tokens,
    accounts: Vec<String>,
    /// The third-party platform entries among `accounts`.
    platforms: Vec<String>,
}

/// Whether a call may be sent again after a failure that got no answer.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Idempotent {
    Yes,
    /// `freepublish/submit`: sent again only when the request never left (connect error),
    /// so a lost answer cannot publish a draft twice.
    No,
}

impl Api {
    /// The client for `config`'s accounts that have `app_secret` or `access_token_url`.
    pub fn new(config: &Config, db: Arc<JobsDb>) -> Result<Api, ApiError> {
        let http = reqwest::Client::builder()
            .timeout(config.api_timeout)
            .connect_timeout(config.api_timeout.min(Duration::from_secs(5)))
            .user_agent(concat!("wxhook/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ApiError::local(e.to_string(), "cannot build the HTTP client"))?;
        let mut credentials = Vec::new();
        let mut platforms = Vec::new();
        for account in &config.accounts {
            let c = match (
                &account.app_secret,
                &account.access_token_url,
                &account.app_id,
            ) {
                (Some(secret), _, Some(app_id)) if account.is_platform() => {
                    platforms.push(account.name.clone());
                    Credentials::Component {
                        app_id: app_id.clone(),
                        secret: secret.clone(),
                    }
                }
                (Some(secret), _, Some(app_id)) => Credentials::Stable {
                    app_id: app_id.clone(),
                    secret: secret.clone(),
                },
                (_, Some(url), _) => Credentials::Url(url.clone()),
                _ => continue,
            };
            credentials.push((account.name.clone(), c));
        }
        let accounts = credentials.iter().map(|(n, _)| n.clone()).collect();
        let base = config.api_base.trim_end_matches('/').to_owned();
        Ok(Api {
            tokens: Tokens::new(http.clone(), &base, db, credentials),
            http,
            base,
            accounts,
            platforms,
        })
    }

    /// The tokens of every account.
    pub fn tokens(&self) -> &Tokens {
        &self.tokens
    }

    /// The third-party platform entries with platform credentials.
    pub fn platforms(&self) -> &[String] {
        &self.platforms
    }

    /// Accounts that can call the API.
    pub fn accounts(&self) -> &[String] {
        &self.accounts
    }

    /// Whom a command means: the account named (else the only one with credentials, or
    /// with `app_id` the only platform), and for a platform the authorized `app_id`.
    pub fn resolve(&self, name: Option<&str>, app_id: Option<&str>) -> Result<Target, ApiError> {
        let Some(app_id) = app_id else {
            let account = self.resolve_account(name)?;
            if self.platforms.contains(&account) {
                return Err(super::platform::needs_app_id(&account));
            }
            return Ok(Target::account(&account));
        };
        if !crate::wechat::is_app_id(app_id) {
            return Err(ApiError::local(
                format!("`{}` is not an appid", app_id.escape_debug()),
                "an authorized account's appid is wx followed by 16 letters or digits",
            ));
        }
        let account = match (name, self.platforms.as_slice()) {
            (None, [one]) => one.clone(),
            _ => self.resolve_account(name)?,
        };
        if !self.platforms.contains(&account) {
            return Err(ApiError::local(
                format!("account `{account}` is not a third-party platform entry"),
                "--app-id (\"app_id\") names an account authorized to a platform entry (path ending in /{appid}, with app_id and app_secret)",
            ));
        }
        Ok(Target {
            account,
            app_id: Some(app_id.to_owned()),
        })
    }

    fn resolve_account(&self, name: Option<&str>) -> Result<String, ApiError> {
        match (name, self.accounts.as_slice()) {
            (Some(name), accounts) if accounts.iter().any(|a| a == name) => Ok(name.to_owned()),
            (Some(name), _) => Err(ApiError::local(
                format!("account `{name}` has no API credentials (or does not exist)"),
                "set `app_secret` (with `app_id`) or `access_token_url` in its [[accounts]] entry",
            )),
            (None, [one]) => Ok(one.clone()),
            (None, []) => Err(ApiError::local(
                "no account has API credentials",
                "set `app_secret` (with `app_id`) or `access_token_url` in an [[accounts]] entry, or WXHOOK_APP_SECRET",
            )),
            (None, many) => Err(ApiError::local(
                format!("{} accounts have API credentials", many.len()),
                format!("name one with --account ({})", many.join(", ")),
            )),
        }
    }

    pub async fn submit(&self, account: &Target, media_id: &str) -> Result<Submitted, ApiError> {
        let body = json!({ "media_id": media_id });
        self.call(account, "freepublish/submit", Some(body), Idempotent::No)
            .await
    }

    pub async fn status(
        &self,
        account: &Target,
        publish_id: &str,
    ) -> Result<PublishEventInfo, ApiError> {
        let body = json!({ "publish_id": publish_id });
        self.call(account, "freepublish/get", Some(body), Idempotent::Yes)
            .await
    }

    pub async fn article(&self, account: &Target, article_id: &str) -> Result<Article, ApiError> {
        let body = json!({ "article_id": article_id });
        self.call(
            account,
            "freepublish/getarticle",
            Some(body),
            Idempotent::Yes,
        )
        .await
    }

    pub async fn list(
        &self,
        account: &Target,
        offset: u64,
        count: u64,
        no_content: bool,
    ) -> Result<ArticlePage, ApiError> {
        let body = json!({ "offset": offset, "count": count, "no_content": u8::from(no_content) });
        self.call(account, "freepublish/batchget", Some(body), Idempotent::Yes)
            .await
    }

    pub async fn callback_ips(&self, account: &str) -> Result<Vec<String>, ApiError> {
        let answer: CallbackIps = self
            .call(
                &Target::account(account),
                "getcallbackip",
                None,
                Idempotent::Yes,
            )
            .await?;
        Ok(answer.ip_list)
    }

    /// One call with its retries: `-1` and lost answers of idempotent calls up to
    /// [`BUSY_RETRIES`] times with doubling, jittered waits; `45011` once, at the next
    /// minute; a rejected token once, with a new token.
    async fn call<T: DeserializeOwned>(
        &self,
        target: &Target,
        api: &'static str,
        body: Option<Value>,
        idempotent: Idempotent,
    ) -> Result<T, ApiError> {
        let (mut busy, mut token_retried, mut minute_waited) = (0, false, false);
        let account = target.account.as_str();
        let mut token = self.tokens.token(target).await?;
        loop {
            let url = format!(
                "{}/cgi-bin/{api}?access_token={}",
                self.base,
                token.expose()
            );
            let request = match &body {
                Some(body) => self.http.post(url).json(body),
                None => self.http.get(url),
            };
            let (result, sent) = match request.send().await {
                Err(e) if e.is_connect() => (Err(ApiError::transport(e.without_url())), false),
                Err(e) => (Err(ApiError::transport(e.without_url())), true),
                Ok(response) => (read_answer(response).await, true),
            };
            let label = match &result {
                Ok(_) => "0".to_owned(),
                Err(e) => e.label(),
            };
            metrics::counter!(crate::telemetry::API_REQUESTS, "account" => account.to_owned(), "api" => api, "errcode" => label).increment(1);
            let error = match result {
                Ok(value) => return Ok(value),
                Err(e) => e,
            };
            let retry_lost = error.errcode == super::error::TRANSPORT
                && (idempotent == Idempotent::Yes || !sent);
            match error.recovery() {
                Recovery::Token if !token_retried => {
                    token_retried = true;
                    tracing::info!(
                        account = %target,
                        api,
                        errcode = error.errcode,
                        "access token refused; getting a new one"
                    );
                    token = match self.tokens.replace_rejected(target, &token).await {
                        Ok(token) => token,
                        // WeChat's refusal stands, with the reason no new token came.
                        Err(e) => {
                            return Err(ApiError {
                                errmsg: format!("{}; {}", error.errmsg, e.errmsg),
                                hint: e.hint,
                                ..error
                            });
                        }
                    };
                }
                Recovery::Busy if busy < BUSY_RETRIES => {
                    tokio::time::sleep(backoff(busy)).await;
                    busy += 1;
                }
                Recovery::NextMinute if !minute_waited => {
                    minute_waited = true;
                    let into_minute = crate::spool::unix_ms().rem_euclid(60_000);
                    let wait = u64::try_from(60_000 - into_minute).unwrap_or(60_000) + 50;
                    tracing::warn!(
                        account,
                        api,
                        "per-minute quota reached; retrying at the next minute"
                    );
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                }
                Recovery::Never if retry_lost && busy < BUSY_RETRIES => {
                    tokio::time::sleep(backoff(busy)).await;
                    busy += 1;
                }
                _ => return Err(error),
            }
        }
    }
}

async fn read_answer<T: DeserializeOwned>(response: reqwest::Response) -> Result<T, ApiError> {
    let status = response.status();
    let bytes = response
        .bytes()
        .await
        .map_err(|e| ApiError::transport(e.without_url()))?;
    let mut value: Value = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::transport(format!(
            "HTTP {status}, the answer is not JSON ({e}): {}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
        ))
    })?;
    if let Some(code) = value.get("errcode").and_then(Value::as_i64)
        && code != 0
    {
        let msg = value.get("errmsg").and_then(Value::as_str).unwrap_or("");
        return Err(ApiError::from_answer(code, msg));
    }
    if !status.is_success() {
        return Err(ApiError::transport(format!(
            "HTTP {status} without an errcode"
        )));
    }
    // `{"errcode":0,"errmsg":"ok"}` beside the data is not part of it.
    if let Value::Object(map) = &mut value {
        map.remove("errcode");
        map.remove("errmsg");
    }
    serde_json::from_value(value)
        .map_err(|e| ApiError::transport(format!("unexpected answer: {e}")))
}

/// 200 ms, 400 ms, 800 ms…, each ±25%.
fn backoff(attempt: u32) -> Duration {
    let base = BUSY_FIRST_WAIT.saturating_mul(1 << attempt.min(8));
    base.mul_f64(rand::random_range(0.75..1.25))
}
