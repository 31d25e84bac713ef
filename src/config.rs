//! The configuration: one [`Config`], loaded once from TOML and `WXHOOK_*` variables and validated before start.

use crate::secret::{Secret, SecretUrl};
use crate::server::seen_nats::ReplayGuardNatsConfig;
use crate::sinks::SinkConfig;
use figment::Figment;
use figment::providers::{Env, Format, Toml};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Top-level keys that a `WXHOOK_<KEY>` environment variable overrides.
const ENV_KEYS: [&str; 23] = [
    "listen",
    "replay_guard",
    "api_base",
    "api_tokens",
    "api_timeout",
    "reconcile_after",
    "reconcile_max_age",
    "callback_ip_refresh",
    "reject_replayed_signatures",
    "admin_listen",
    "log_format",
    "retention",
    "trusted_proxies",
    "request_timeout",
    "header_timeout",
    "max_connections",
    "max_concurrent_requests",
    "replay_cache_entries",
    "data_dir",
    "timestamp_tolerance_secs",
    "max_body_bytes",
    "accounts",
    "sinks",
];

/// The whole configuration of one wxhook process.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP server binds (`WXHOOK_LISTEN`).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Separate address for `/healthz`, `/readyz` and `/metrics`; on `listen` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_listen: Option<SocketAddr>,
    /// `text` (human-readable, default) or `json` (one object per line) logs on stderr.
    #[serde(default)]
    pub log_format: LogFormat,
    /// Directory of the durable spool (`WXHOOK_DATA_DIR`).
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Largest accepted distance between a push's `timestamp` and now; 0 turns the check off.
    #[serde(default = "default_tolerance")]
    pub timestamp_tolerance_secs: u64,
    /// Largest accepted request body; larger ones are answered 413.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Events delivered to every sink are removed from the spool this long after their
    /// last delivery (dead letters and pending events are never removed).
    #[serde(default = "default_retention", with = "crate::duration")]
    pub retention: Duration,
    /// Reverse proxies whose `X-Forwarded-For`/`Forwarded` headers are believed (CIDRs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_proxies: Vec<IpNet>,
    /// Time allowed to receive a request body and answer it; slower requests get 408.
    #[serde(default = "default_request_timeout", with = "crate::duration")]
    pub request_timeout: Duration,
    /// Time allowed to receive a request's headers; slower connections are closed.
    #[serde(default = "default_header_timeout", with = "crate::duration")]
    pub header_timeout: Duration,
    /// Open connections at most; further ones wait to be accepted.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Requests being processed at most; further ones are answered 503 at once.
    #[serde(default = "default_max_concurrent_requests")]
    pub max_concurrent_requests: usize,
    /// Refuse a signed query seen before with a different body (plain mode's signature does
    /// not cover the body). On by default; turning it off is for load generators that
    /// reuse one signature.
    #[serde(default = "default_true")]
    pub reject_replayed_signatures: bool,
    /// Signed query strings remembered to refuse replays with another body.
    #[serde(default = "default_replay_cache_entries")]
    pub replay_cache_entries: usize,
    /// Where signed queries are remembered: `local` (this process and its spool) or
    /// `nats` (a JetStream key-value bucket every replica shares; see `[replay_guard_nats]`).
    #[serde(default)]
    pub replay_guard: ReplayGuardKind,
    /// The bucket and connection of `replay_guard = "nats"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_guard_nats: Option<ReplayGuardNatsConfig>,
    /// Where WeChat's API is (tests and staging point this at a stand-in such as `wxhook simulate`).
    #[serde(default = "default_api_base")]
    pub api_base: String,
    /// Time allowed for one WeChat API call.
    #[serde(default = "default_api_timeout", with = "crate::duration")]
    pub api_timeout: Duration,
    /// Bearer tokens of the publishing HTTP API (`/api/publish`); the API is off without any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub api_tokens: Vec<Secret>,
    /// A tracked publish job without a final status this long after submission is polled
    /// with `freepublish/get`.
    #[serde(default = "default_reconcile_after", with = "crate::duration")]
    pub reconcile_after: Duration,
    /// A job still without a final status this long after submission is reported abandoned.
    #[serde(default = "default_reconcile_max_age", with = "crate::duration")]
    pub reconcile_max_age: Duration,
    /// How often `allow_from = ["wechat"]` asks `getcallbackip` for WeChat's ranges.
    #[serde(default = "default_callback_ip_refresh", with = "crate::duration")]
    pub callback_ip_refresh: Duration,
    /// The Official Accounts served, each at its own path.
    #[serde(default)]
    pub accounts: Vec<AccountConfig>,
    /// Where accepted events go. None configured means one `stdout` sink.
    #[serde(default)]
    pub sinks: Vec<SinkConfig>,
}

/// One Official Account (one developer URL).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AccountConfig {
    /// Appears as `account` in the event JSON; letters, digits, `-` and `_`.
    pub name: String,
    /// URL path WeChat calls, e.g. `/wechat`.
    #[serde(default = "default_path")]
    pub path: String,
    /// The Token from the WeChat console. Falls back to `WXHOOK_TOKEN_<NAME>`, then,
    /// for a single account, `WXHOOK_TOKEN`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<Secret>,
    /// Names of the sinks this account's events go to; all sinks when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sinks: Option<Vec<String>>,
    /// The account's appid (a platform's own appid for a `{appid}` path); required for
    /// security mode, where every decrypted message must name it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_id: Option<String>,
    /// The console's 43-character EncodingAESKey (security and compatible mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding_aes_key: Option<Secret>,
    /// `plain`, `compatible` or `secure`; default `secure` when a key is set, else `plain`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    /// Source addresses allowed to push: CIDRs, and `"wechat"` for the ranges
    /// `getcallbackip` returns (needs API credentials); all sources when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_from: Option<Vec<AllowFrom>>,
    /// The AppSecret, for WeChat API calls (access tokens from `stable_token`; for a
    /// platform entry, its `component_access_token` and its authorized accounts'). Falls back
    /// to `WXHOOK_APP_SECRET_<NAME>`, then, for the account defined by variables alone,
    /// `WXHOOK_APP_SECRET`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_secret: Option<Secret>,
    /// A third-party platform entry's authorization event URL path (tickets,
    /// authorizations); default: the entry's path with `/{appid}` replaced by `/auth`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_path: Option<String>,
    /// Instead of `app_secret`: a URL answering `{"access_token": "...", "expires_in": N}`
    /// (a central token service, a platform's `authorizer_access_token`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_token_url: Option<SecretUrl>,
}

/// One `allow_from` entry: a CIDR, or `"wechat"` (WeChat's published callback ranges).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowFrom {
    WeChat,
    Net(IpNet),
}

impl<'de> Deserialize<'de> for AllowFrom {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        if text == "wechat" {
            return Ok(AllowFrom::WeChat);
        }
        text.parse().map(AllowFrom::Net).map_err(|_| {
            serde::de::Error::custom(format!(
                "`{text}` is neither a CIDR (e.g. 101.226.103.0/25) nor \"wechat\""
            ))
        })
    }
}

impl Serialize for AllowFrom {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            AllowFrom::WeChat => s.serialize_str("wechat"),
            AllowFrom::Net(net) => s.serialize_str(&net.to_string()),
        }
    }
}

/// Where the replay guard remembers signed queries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplayGuardKind {
    #[default]
    Local,
    Nats,
}

/// The shape of log lines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// How an account's pushes are protected; chosen by configuration, never by the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Plain XML, `signature` only.
    Plain,
    /// Plain fields beside `Encrypt`: the encrypted part is used when present.
    Compatible,
    /// Only `Encrypt`, with `msg_signature`; a plaintext body is refused.
    Secure,
}

/// The path segment that makes an account a third-party platform entry.
pub const APPID_SEGMENT: &str = "{appid}";

impl AccountConfig {
    /// The mode in force (after defaults).
    pub fn mode(&self) -> Mode {
        self.mode.unwrap_or(if self.encoding_aes_key.is_some() {
            Mode::Secure
        } else {
            Mode::Plain
        })
    }

    /// True for a third-party platform entry (`path` ending in `/{appid}`).
    pub fn is_platform(&self) -> bool {
        self.path.ends_with(&format!("/{APPID_SEGMENT}"))
    }

    /// The path of a platform entry's authorization events: `auth_path`, else the entry's
    /// path with `/{appid}` replaced by `/auth`. `None` for other accounts, and for a
    /// platform entry without `encoding_aes_key` (WeChat encrypts these events).
    pub fn authorization_path(&self) -> Option<String> {
        if !self.is_platform() || self.encoding_aes_key.is_none() {
            return None;
        }
        self.auth_path.clone().or_else(|| {
            self.path
                .strip_suffix(&format!("/{APPID_SEGMENT}"))
                .map(|prefix| format!("{prefix}/auth"))
        })
    }

    /// The token; present on every account of a loaded [`Config`].
    pub fn token(&self) -> &str {
        self.token.as_ref().map(Secret::expose).unwrap_or_default()
    }

    /// True when the account can call WeChat's API (`app_secret` or `access_token_url`).
    pub fn has_api(&self) -> bool {
        self.app_secret.is_some() || self.access_token_url.is_some()
    }

    /// Whether `allow_from` names WeChat's published ranges.
    pub fn allows_wechat_ranges(&self) -> bool {
        self.allow_from
            .iter()
            .flatten()
            .any(|a| *a == AllowFrom::WeChat)
    }

    /// The fixed CIDRs of `allow_from` (`None`: every source allowed).
    pub fn allowed_nets(&self) -> Option<Vec<IpNet>> {
        self.allow_from.as_ref().map(|entries| {
            entries
                .iter()
                .filter_map(|a| match a {
                    AllowFrom::Net(net) => Some(*net),
                    AllowFrom::WeChat => None,
                })
                .collect()
        })
    }

    /// The sink names this account delivers to.
    pub fn sink_names<'a>(&'a self, all: &'a [SinkConfig]) -> Vec<&'a str> {
        match &self.sinks {
            Some(names) => names.iter().map(String::as_str).collect(),
            None => all.iter().map(SinkConfig::name).collect(),
        }
    }
}

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0} does not exist")]
    Missing(PathBuf),
    #[error("invalid configuration: {}", .0.to_string().replace("key \"default.", "key \""))]
    Invalid(Box<figment::Error>),
    #[error(
        "no WeChat token configured: set WXHOOK_TOKEN to the Token from the WeChat console \
         (Settings and Development > Basic Configuration), or pass --config with an \
         [[accounts]] entry that has `token`"
    )]
    NoToken,
    #[error(
        "account `{0}` has no token: set `token` in its [[accounts]] entry or the variable {1}"
    )]
    AccountWithoutToken(String, String),
    #[error("{0}")]
    Rule(String),
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("./data")
}
fn default_tolerance() -> u64 {
    300
}
fn default_max_body() -> usize {
    1024 * 1024
}
fn default_true() -> bool {
    true
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_header_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_max_connections() -> usize {
    4096
}
fn default_max_concurrent_requests() -> usize {
    512
}
fn default_replay_cache_entries() -> usize {
    100_000
}
fn default_retention() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}
fn default_api_base() -> String {
    "https://api.weixin.qq.com".to_owned()
}
fn default_api_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_reconcile_after() -> Duration {
    Duration::from_secs(300)
}
fn default_reconcile_max_age() -> Duration {
    Duration::from_secs(48 * 3600)
}
fn default_callback_ip_refresh() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_path() -> String {
    "/wechat".to_owned()
}

impl Config {
    /// Loads the configuration from an optional TOML file and the process environment.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let mut figment = Figment::new();
        if let Some(path) = path {
            if !path.is_file() {
                return Err(ConfigError::Missing(path.to_owned()));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        figment = figment.merge(Env::prefixed("WXHOOK_").only(&ENV_KEYS));
        let config: Config = figment
            .extract()
            .map_err(|e| ConfigError::Invalid(Box::new(e)))?;
        config.resolve(&|key| std::env::var(key).ok())
    }

    /// Only `data_dir`, from the same file and environment, for commands that need no token.
    pub fn load_data_dir(path: Option<&Path>) -> Result<PathBuf, ConfigError> {
        #[derive(Deserialize)]
        struct DataDir {
            #[serde(default = "default_data_dir")]
            data_dir: PathBuf,
        }
        let found: DataDir = load_keys(path, &["data_dir"])?;
        Ok(found.data_dir)
    }

    /// The readiness URL of the server this file and environment configure:
    /// `/readyz` on `admin_listen` if set, else on `listen`, an unspecified address
    /// (`0.0.0.0`, `[::]`) read as loopback. What `wxhook health` asks by default, so
    /// that a container's health check follows its `WXHOOK_LISTEN`.
    pub fn load_ready_url(path: Option<&Path>) -> Result<String, ConfigError> {
        #[derive(Deserialize)]
        struct Listen {
            #[serde(default = "default_listen")]
            listen: SocketAddr,
            #[serde(default)]
            admin_listen: Option<SocketAddr>,
        }
        let found: Listen = load_keys(path, &["listen", "admin_listen"])?;
        let mut addr = found.admin_listen.unwrap_or(found.listen);
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr.ip() {
                std::net::IpAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                std::net::IpAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        Ok(format!("http://{addr}/readyz"))
    }

    /// Parses a TOML document (no environment), then resolves it with `env`.
    pub fn from_toml(
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let config: Config = Figment::from(Toml::string(text))
            .extract()
            .map_err(|e| ConfigError::Invalid(Box::new(e)))?;
        config.resolve(env)
    }

    /// Fills in defaults that depend on the environment, then validates.
    fn resolve(mut self, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        if self.accounts.is_empty() {
            let token = env("WXHOOK_TOKEN").ok_or(ConfigError::NoToken)?;
            self.accounts.push(AccountConfig {
                name: "default".to_owned(),
                path: env("WXHOOK_PATH").unwrap_or_else(default_path),
                token: Some(Secret::new(token)),
                sinks: None,
                app_id: env("WXHOOK_APP_ID"),
                encoding_aes_key: env("WXHOOK_ENCODING_AES_KEY").map(Secret::new),
                mode: None,
                allow_from: None,
                app_secret: env("WXHOOK_APP_SECRET").map(Secret::new),
                access_token_url: None,
                auth_path: None,
            });
        }
        let single = self.accounts.len() == 1;
        for account in &mut self.accounts {
            if account.token.is_none() {
                let var = format!(
                    "WXHOOK_TOKEN_{}",
                    account.name.to_uppercase().replace('-', "_")
                );
                let token = env(&var)
                    .or_else(|| single.then(|| env("WXHOOK_TOKEN")).flatten())
                    .ok_or_else(|| ConfigError::AccountWithoutToken(account.name.clone(), var))?;
                account.token = Some(Secret::new(token));
            }
            if account.app_secret.is_none() && account.access_token_url.is_none() {
                let var = format!(
                    "WXHOOK_APP_SECRET_{}",
                    account.name.to_uppercase().replace('-', "_")
                );
                account.app_secret = env(&var).map(Secret::new);
            }
        }
        if self.sinks.is_empty() {
            self.sinks.push(SinkConfig::default());
        }
        crate::sinks::assign_names(&mut self.sinks);
        self.validate()?;
        Ok(self)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let rule = |msg: String| Err(ConfigError::Rule(msg));
        if self.max_body_bytes == 0 {
            return rule("max_body_bytes must be greater than 0".into());
        }
        if self.max_connections == 0 || self.max_concurrent_requests == 0 {
            return rule(
                "max_connections and max_concurrent_requests must be greater than 0".into(),
            );
        }
        if self.request_timeout.is_zero() || self.header_timeout.is_zero() {
            return rule("request_timeout and header_timeout must be greater than 0".into());
        }
        if !(self.api_base.starts_with("http://") || self.api_base.starts_with("https://")) {
            return rule(format!(
                "api_base `{}` must be an http:// or https:// URL",
                self.api_base
            ));
        }
        if self.api_tokens.iter().any(|t| t.expose().trim().len() < 16) {
            return rule("every api_tokens entry must be at least 16 characters".into());
        }
        if self.api_timeout.is_zero() || self.reconcile_after.is_zero() {
            return rule("api_timeout and reconcile_after must be greater than 0".into());
        }
        if self.reconcile_max_age <= self.reconcile_after {
            return rule("reconcile_max_age must be longer than reconcile_after".into());
        }
        if self.callback_ip_refresh < Duration::from_secs(1) {
            return rule("callback_ip_refresh must be at least 1s".into());
        }
        let sink_names: HashSet<&str> = self.sinks.iter().map(SinkConfig::name).collect();
        if sink_names.len() != self.sinks.len() {
            return rule("two [[sinks]] have the same name; give each a distinct `name`".into());
        }
        for sink in &self.sinks {
            if !is_identifier(sink.name()) {
                return rule(format!(
                    "sink name `{}` may only contain letters, digits, `-` and `_`",
                    sink.name()
                ));
            }
            sink.validate().map_err(ConfigError::Rule)?;
        }
        self.validate_replay_guard()?;
        let (mut names, mut paths) = (HashSet::new(), HashSet::new());
        for account in &self.accounts {
            let name = &account.name;
            if !is_identifier(name) {
                return rule(format!(
                    "account name `{name}` may only contain letters, digits, `-` and `_` (1 to 64)"
                ));
            }
            if !names.insert(name.as_str()) {
                return rule(format!("two accounts are named `{name}`"));
            }
            let path = &account.path;
            let fixed = path.strip_suffix(APPID_SEGMENT).unwrap_or(path);
            if !path.starts_with('/') || fixed.contains(['?', '#', '{', '}', '*', ' ', ':']) {
                return rule(format!(
                    "account `{name}`: path `{path}` must start with `/` and contain no `?#{{}}*:` or spaces \
                     (except a final `/{APPID_SEGMENT}` segment for a third-party platform)"
                ));
            }
            account_crypto(account)?;
            account_api(account)?;
            if self.admin_listen.is_none() && crate::server::ops::PATHS.contains(&path.as_str()) {
                return rule(format!(
                    "account `{name}`: path `{path}` is taken by the operations endpoints (set admin_listen to move them)"
                ));
            }
            if self.admin_listen.is_none()
                && !self.api_tokens.is_empty()
                && path.starts_with(crate::server::api::PREFIX)
            {
                return rule(format!(
                    "account `{name}`: path `{path}` is taken by the publishing API (set admin_listen to move it)"
                ));
            }
            if !paths.insert(path.clone()) {
                return rule(format!(
                    "account `{name}`: path `{path}` is already used by another account"
                ));
            }
            if let Some(auth) = &account.auth_path {
                if !account.is_platform() || account.encoding_aes_key.is_none() {
                    return rule(format!(
                        "account `{name}`: auth_path is for a third-party platform entry (a path ending in `/{APPID_SEGMENT}`) with encoding_aes_key: WeChat encrypts authorization events"
                    ));
                }
                if !auth.starts_with('/') || auth.contains(['?', '#', '{', '}', '*', ' ', ':']) {
                    return rule(format!(
                        "account `{name}`: auth_path `{auth}` must start with `/` and contain no `?#{{}}*:` or spaces"
                    ));
                }
            }
            if let Some(auth) = account.authorization_path()
                && !paths.insert(auth.clone())
            {
                return rule(format!(
                    "account `{name}`: authorization event path `{auth}` is already used (set auth_path)"
                ));
            }
            if account.token().trim().is_empty() {
                return rule(format!("account `{name}`: token is empty"));
            }
            for sink in account.sinks.iter().flatten() {
                if !sink_names.contains(sink.as_str()) {
                    return rule(format!(
                        "account `{name}` names sink `{sink}`, but no [[sinks]] entry has that name"
                    ));
                }
            }
        }
        if !self.api_tokens.is_empty() && !self.accounts.iter().any(AccountConfig::has_api) {
            return rule(
                "api_tokens turns on the publishing API, but no account has `app_secret` or `access_token_url`".into(),
            );
        }
        Ok(())
    }

    fn validate_replay_guard(&self) -> Result<(), ConfigError> {
        let rule = |msg: &str| Err(ConfigError::Rule(msg.to_owned()));
        let Some(guard) = &self.replay_guard_nats else {
            return match self.replay_guard {
                ReplayGuardKind::Nats => rule(
                    "replay_guard = \"nats\" needs a [replay_guard_nats] table (url, or the sink whose connection to share)",
                ),
                ReplayGuardKind::Local => Ok(()),
            };
        };
        // A table beside `replay_guard = "local"` is unused (the server says so at start):
        // one file then serves both, switched by WXHOOK_REPLAY_GUARD.
        if self.replay_guard != ReplayGuardKind::Nats {
            return Ok(());
        }
        if !self.reject_replayed_signatures {
            return rule(
                "replay_guard = \"nats\" needs reject_replayed_signatures (on by default)",
            );
        }
        if self.timestamp_tolerance_secs == 0 {
            return rule(
                "replay_guard = \"nats\" needs timestamp_tolerance_secs above 0: its keys expire after twice that",
            );
        }
        let nats_sinks: Vec<&str> = self
            .sinks
            .iter()
            .filter(|s| s.kind() == "nats")
            .map(SinkConfig::name)
            .collect();
        guard.validate(&nats_sinks).map_err(ConfigError::Rule)
    }

    /// The configuration as TOML with every secret shown as `[redacted]`.
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(self)
            .unwrap_or_else(|e| format!("# cannot print configuration: {e}\n"))
    }
}

/// Some top-level keys, from an optional TOML file and their `WXHOOK_<KEY>` variables;
/// the rest of the file is not validated.
fn load_keys<T: serde::de::DeserializeOwned>(
    path: Option<&Path>,
    keys: &[&str],
) -> Result<T, ConfigError> {
    let mut figment = Figment::new();
    if let Some(path) = path {
        if !path.is_file() {
            return Err(ConfigError::Missing(path.to_owned()));
        }
        figment = figment.merge(Toml::file_exact(path));
    }
    figment
        .merge(Env::prefixed("WXHOOK_").only(keys))
        .extract()
        .map_err(|e| ConfigError::Invalid(Box::new(e)))
}

/// Checks an account's mode, key and appid against each other.
fn account_crypto(account: &AccountConfig) -> Result<(), ConfigError> {
    let name = &account.name;
    let rule = |msg: String| Err(ConfigError::Rule(format!("account `{name}`: {msg}")));
    if let Some(key) = &account.encoding_aes_key {
        let app_id = account.app_id.as_deref().unwrap_or("");
        if let Err(e) = crate::wechat::crypto::Cipher::new(key.expose(), app_id) {
            return rule(e.to_string());
        }
    }
    if let Some(app_id) = &account.app_id {
        if crate::wechat::is_corp_id(app_id) {
            if account.is_platform() {
                return rule(format!(
                    "app_id `{app_id}` is a WeCom corp id; a `/{APPID_SEGMENT}` path serves an Official Account third-party platform, whose appid starts with wx"
                ));
            }
            if account.encoding_aes_key.is_none() || account.mode() != Mode::Secure {
                return rule(format!(
                    "app_id `{app_id}` is a WeCom corp id: WeCom encrypts every callback, so the \
                     account needs `encoding_aes_key` and mode `secure` (the default with a key)"
                ));
            }
        } else if !crate::wechat::is_app_id(app_id) {
            return rule(format!(
                "app_id `{app_id}` is neither an appid (wx followed by 16 letters or digits) \
                 nor a WeCom corp id (ww followed by 16 hex digits)"
            ));
        }
    }
    let encrypted = account.mode() != Mode::Plain;
    if encrypted && (account.encoding_aes_key.is_none() || account.app_id.is_none()) {
        return rule(
            "mode `secure` and `compatible` need both `encoding_aes_key` and `app_id`".into(),
        );
    }
    if account.is_platform() && !encrypted {
        return rule(format!(
            "a third-party platform path (`/{APPID_SEGMENT}`) needs the platform's `encoding_aes_key` and `app_id`"
        ));
    }
    Ok(())
}

/// Checks an account's API credentials and what needs them.
fn account_api(account: &AccountConfig) -> Result<(), ConfigError> {
    let name = &account.name;
    let rule = |msg: String| Err(ConfigError::Rule(format!("account `{name}`: {msg}")));
    if account.app_secret.is_some() && account.access_token_url.is_some() {
        return rule("set `app_secret` or `access_token_url`, not both".into());
    }
    if let Some(secret) = &account.app_secret {
        if secret.expose().trim().is_empty() {
            return rule("app_secret is empty".into());
        }
        match account.app_id.as_deref() {
            Some(id) if crate::wechat::is_app_id(id) && !crate::wechat::is_corp_id(id) => {}
            Some(id) => {
                return rule(format!(
                    "app_secret needs the Official Account's appid (wx…) in `app_id`; `{id}` is not one"
                ));
            }
            None => return rule("app_secret needs `app_id` (stable_token asks for both)".into()),
        }
    }
    if let Some(url) = &account.access_token_url
        && !(url.expose().starts_with("http://") || url.expose().starts_with("https://"))
    {
        return rule(format!(
            "access_token_url `{}` must be an http:// or https:// URL",
            url.redacted()
        ));
    }
    if account.is_platform() && account.access_token_url.is_some() {
        return rule(format!(
            "a third-party platform entry (`/{APPID_SEGMENT}`) gets its tokens with `app_secret` (the platform's AppSecret); access_token_url is for a single account"
        ));
    }
    if account.is_platform() && account.allows_wechat_ranges() {
        return rule(
            "allow_from = [\"wechat\"] needs an Official Account's own token; list WeChat's ranges as CIDRs for a platform entry".into(),
        );
    }
    if account.allows_wechat_ranges() && !account.has_api() {
        return rule(
            "allow_from names \"wechat\", which is the ranges cgi-bin/getcallbackip returns: the account needs `app_secret` (with `app_id`) or `access_token_url`".into(),
        );
    }
    Ok(())
}

/// Letters, digits, `-` and `_`, 1 to 64 characters.
pub(crate) fn is_identifier(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn environment_alone_defines_the_default_account() {
        let env = |k: &str| (k == "WXHOOK_TOKEN").then(|| "tok".to_owned());
        let config = Config::from_toml("", &env).expect("loads");
        assert_eq!(config.accounts.len(), 1);
        assert_eq!(config.accounts[0].name, "default");
        assert_eq!(config.accounts[0].path, "/wechat");
        assert_eq!(config.accounts[0].token(), "tok");
        assert_eq!(config.sinks.len(), 1);
        assert_eq!(config.sinks[0].name(), "stdout");
        assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
    }

    #[test]
    fn no_token_anywhere_says_how_to_set_one() {
        let err = Config::from_toml("", &no_env).expect_err("must refuse");
        assert!(err.to_string().contains("set WXHOOK_TOKEN"), "{err}");
    }

    #[test]
    fn misspelt_sink_type_is_named() {
        let toml = "[[accounts]]\nname='a'\ntoken='t'\n[[sinks]]\ntype='fiel'\npath='x'\n";
        let err = Config::from_toml(toml, &no_env).expect_err("must refuse");
        let msg = err.to_string();
        assert!(msg.contains("fiel") && msg.contains("file"), "{msg}");
    }

    #[test]
    fn misspelt_key_is_named() {
        let toml = "[[accounts]]\nname='a'\ntokn='t'\n";
        let err = Config::from_toml(toml, &no_env).expect_err("must refuse");
        assert!(err.to_string().contains("tokn"), "{err}");
    }

    #[test]
    fn duplicate_paths_are_refused() {
        let toml = "[[accounts]]\nname='a'\ntoken='t'\n[[accounts]]\nname='b'\ntoken='t'\n";
        let err = Config::from_toml(toml, &no_env).expect_err("must refuse");
        assert!(err.to_string().contains("already used"), "{err}");
    }

    #[test]
    fn per_account_token_variable() {
        let toml = "[[accounts]]\nname='shop-cn'\npath='/a'\n[[accounts]]\nname='b'\npath='/b'\ntoken='x'\n";
        let env = |k: &str| (k == "WXHOOK_TOKEN_SHOP_CN").then(|| "from-env".to_owned());
        let config = Config::from_toml(toml, &env).expect("loads");
        assert_eq!(config.accounts[0].token(), "from-env");
        let err = Config::from_toml(toml, &no_env).expect_err("must refuse");
        assert!(err.to_string().contains("WXHOOK_TOKEN_SHOP_CN"), "{err}");
    }

    #[test]
    fn unknown_sink_reference_is_refused() {
        let toml = "[[accounts]]\nname='a'\ntoken='t'\nsinks=['nope']\n";
        let err = Config::from_toml(toml, &no_env).expect_err("must refuse");
        assert!(err.to_string().contains("`nope`"), "{err}");
    }

    #[test]
    fn security_mode_settings_are_checked_at_start() {
        let base = "[[accounts]]\nname='shop'\ntoken='t'\n";
        let key = "kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR";
        let cases = [
            (
                format!("{base}app_id='wx49f0ab532d5d035a'\nencoding_aes_key='short'\n"),
                "43 characters",
            ),
            (
                format!(
                    "{base}app_id='wx49f0ab532d5d035a'\nencoding_aes_key='{}'\n",
                    "!".repeat(43)
                ),
                "not base64",
            ),
            (
                format!("{base}encoding_aes_key='{key}'\n"),
                "need both `encoding_aes_key` and `app_id`",
            ),
            (format!("{base}mode='secure'\n"), "need both"),
            (format!("{base}app_id='wx12'\n"), "is neither an appid"),
            (
                format!("{base}app_id='ww12345678zz345678'\nencoding_aes_key='{key}'\n"),
                "nor a WeCom corp id",
            ),
            (
                format!("{base}app_id='ww0123456789abcdef'\n"),
                "is a WeCom corp id",
            ),
            (
                format!(
                    "{base}app_id='ww0123456789abcdef'\nencoding_aes_key='{key}'\nmode='compatible'\n"
                ),
                "mode `secure`",
            ),
            (format!("{base}mode='sekure'\n"), "sekure"),
            (
                "[[accounts]]\nname='p'\ntoken='t'\npath='/wx/{appid}'\n".to_owned(),
                "third-party platform path",
            ),
            (
                "[[accounts]]\nname='p'\ntoken='t'\npath='/wx/{id}'\n".to_owned(),
                "must start with `/`",
            ),
        ];
        for (toml, expected) in cases {
            let err = Config::from_toml(&toml, &no_env).expect_err(&toml);
            let msg = err.to_string();
            assert!(msg.contains(expected), "{toml}: {msg}");
        }
        let wecom = format!("{base}app_id='ww0123456789ABCDEF'\nencoding_aes_key='{key}'\n");
        let config = Config::from_toml(&wecom, &no_env).expect("a WeCom account is valid");
        assert_eq!(config.accounts[0].mode(), Mode::Secure);
        let ok = format!("{base}app_id='wx49f0ab532d5d035a'\nencoding_aes_key='{key}'\n");
        let config = Config::from_toml(&ok, &no_env).expect("valid");
        assert_eq!(config.accounts[0].mode(), Mode::Secure);
        assert!(!config.to_redacted_toml().contains(key), "the key leaked");
        let platform = format!(
            "[[accounts]]\nname='p'\ntoken='t'\npath='/wx/{{appid}}'\napp_id='wx49f0ab532d5d035a'\nencoding_aes_key='{key}'\n"
        );
        assert!(
            Config::from_toml(&platform, &no_env)
                .expect("valid")
                .accounts[0]
                .is_platform()
        );
    }

    #[test]
    fn the_ready_url_follows_the_listen_addresses() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("wxhook.toml");
        let url = |toml: &str| {
            std::fs::write(&file, toml).expect("write");
            Config::load_ready_url(Some(&file)).expect("loads")
        };
        assert_eq!(
            url("listen = \"0.0.0.0:8080\""),
            "http://127.0.0.1:8080/readyz"
        );
        assert_eq!(
            url("listen = \"10.1.2.3:80\"\nadmin_listen = \"[::]:9100\""),
            "http://[::1]:9100/readyz"
        );
        assert_eq!(
            url("listen = \"127.0.0.1:9\"\n[[accounts]]\nname = \"a\""),
            "http://127.0.0.1:9/readyz"
        );
    }

    #[test]
    fn api_credentials_are_checked_and_never_printed() {
        let base = "[[accounts]]\nname='shop'\ntoken='t'\n";
        let cases = [
            (format!("{base}app_secret='s'\n"), "needs `app_id`"),
            (
                format!(
                    "{base}app_id='wx49f0ab532d5d035a'\napp_secret='s'\naccess_token_url='http://x/t'\n"
                ),
                "not both",
            ),
            (
                format!("{base}access_token_url='ftp://x'\n"),
                "http:// or https://",
            ),
            (
                format!("{base}allow_from=['wechat']\n"),
                "account `shop`: allow_from names \"wechat\"",
            ),
            (
                format!("{base}allow_from=['wechat', 'nonsense']\n"),
                "`nonsense` is neither a CIDR",
            ),
            (format!("api_tokens=['short']\n{base}"), "at least 16"),
            (
                format!("api_tokens=['0123456789abcdef0']\n{base}"),
                "no account has `app_secret`",
            ),
            (format!("api_base='api.weixin.qq.com'\n{base}"), "api_base"),
            (
                format!("reconcile_after='1h'\nreconcile_max_age='30m'\n{base}"),
                "reconcile_max_age",
            ),
        ];
        for (toml, expected) in cases {
            let err = Config::from_toml(&toml, &no_env).expect_err(&toml);
            let msg = err.to_string();
            assert!(msg.contains(expected), "{toml}: {msg}");
        }
        let ok = format!(
            "api_tokens=['0123456789abcdef-token']\n{base}app_id='wx49f0ab532d5d035a'\napp_secret='app-s3cret'\nallow_from=['wechat', '10.0.0.0/8']\n"
        );
        let config = Config::from_toml(&ok, &no_env).expect("valid");
        let account = &config.accounts[0];
        assert!(account.has_api() && account.allows_wechat_ranges());
        assert_eq!(
            account.allowed_nets(),
            Some(vec!["10.0.0.0/8".parse().expect("net")])
        );
        let printed = config.to_redacted_toml();
        assert!(
            !printed.contains("app-s3cret") && !printed.contains("abcdef-token"),
            "{printed}"
        );
        assert!(
            printed.contains("allow_from = [\n    \"wechat\","),
            "{printed}"
        );
        assert!(!format!("{config:?}").contains("app-s3cret"));
        // From the environment: per account, and for the account defined by variables alone.
        let env = |k: &str| match k {
            "WXHOOK_APP_SECRET_SHOP" => Some("from-env".to_owned()),
            _ => None,
        };
        let with_id = format!("{base}app_id='wx49f0ab532d5d035a'\n");
        let config = Config::from_toml(&with_id, &env).expect("loads");
        assert_eq!(
            config.accounts[0].app_secret.as_ref().map(|s| s.expose()),
            Some("from-env")
        );
        let env = |k: &str| match k {
            "WXHOOK_TOKEN" => Some("tok".to_owned()),
            "WXHOOK_APP_ID" => Some("wx49f0ab532d5d035a".to_owned()),
            "WXHOOK_APP_SECRET" => Some("env-secret".to_owned()),
            _ => None,
        };
        let config = Config::from_toml("", &env).expect("loads");
        assert!(config.accounts[0].has_api());
    }

    #[test]
    fn redacted_output_hides_tokens() {
        let toml = "[[accounts]]\nname='a'\ntoken='s3cr3t-token'\n";
        let config = Config::from_toml(toml, &no_env).expect("loads");
        let printed = config.to_redacted_toml();
        assert!(!printed.contains("s3cr3t"), "{printed}");
        assert!(printed.contains("[redacted]"), "{printed}");
        assert!(!format!("{config:?}").contains("s3cr3t"));
    }

    #[test]
    fn a_platform_entry_gets_its_tokens_with_its_app_secret_only() {
        let base = "[[accounts]]\nname='agency'\npath='/wechat/{appid}'\ntoken='t'\n\
                    app_id='wxb11529c136998cb6'\nencoding_aes_key='abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG'\n";
        let config = Config::from_toml(&format!("{base}app_secret='s'\n"), &no_env)
            .expect("a platform with its AppSecret loads");
        assert!(config.accounts[0].has_api());
        let url = format!("{base}access_token_url='https://tokens.internal/x'\n");
        let err = Config::from_toml(&url, &no_env).expect_err("refused");
        assert!(
            err.to_string()
                .contains("access_token_url is for a single account"),
            "{err}"
        );
        let ranges = format!("{base}app_secret='s'\nallow_from=['wechat']\n");
        let err = Config::from_toml(&ranges, &no_env).expect_err("refused");
        assert!(
            err.to_string().contains("list WeChat's ranges as CIDRs"),
            "{err}"
        );
    }
}
