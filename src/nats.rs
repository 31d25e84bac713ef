//! The connection to NATS: its settings (servers, credentials, TLS) checked before start, and one client per connection, made on first use and shared by the `nats` sink and the shared replay guard.

use crate::secret::Secret;
use async_nats::jetstream;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OnceCell;

/// One server or several.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum Servers {
    One(String),
    Many(Vec<String>),
}

impl Servers {
    pub fn list(&self) -> Vec<String> {
        match self {
            Servers::One(s) => vec![s.clone()],
            Servers::Many(v) => v.clone(),
        }
    }
}

/// Files for TLS to the servers.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
}

/// How to reach NATS: what a `nats` sink and `[replay_guard_nats]` both configure.
#[derive(Debug, Clone)]
pub struct Connection {
    pub servers: Vec<String>,
    pub credentials_file: Option<PathBuf>,
    pub token: Option<Secret>,
    pub user: Option<String>,
    pub password: Option<Secret>,
    pub nkey_seed: Option<Secret>,
    pub tls: Option<TlsFiles>,
    /// Time allowed for one JetStream request.
    pub timeout: Duration,
}

/// A file the connection reads must be there and readable.
fn readable(key: &str, path: &Path) -> Result<(), String> {
    std::fs::File::open(path)
        .map(drop)
        .map_err(|e| format!("{key} {}: {e}", path.display()))
}

impl Connection {
    /// Checks the servers' URLs and that every file named can be read.
    pub fn validate(&self) -> Result<(), String> {
        if self.servers.is_empty() {
            return Err("url lists no server".into());
        }
        for s in &self.servers {
            let scheme_ok =
                !s.contains("://") || s.starts_with("nats://") || s.starts_with("tls://");
            if !scheme_ok || s.parse::<async_nats::ServerAddr>().is_err() {
                return Err(format!(
                    "url `{s}` is not a NATS server address (nats://host:4222 or tls://host:4222)"
                ));
            }
        }
        if self.password.is_some() != self.user.is_some() {
            return Err("user and password go together".into());
        }
        if let Some(path) = &self.credentials_file {
            readable("cannot read credentials_file", path)?;
        }
        if let Some(tls) = &self.tls {
            if tls.cert_file.is_some() != tls.key_file.is_some() {
                return Err("tls.cert_file and tls.key_file go together".into());
            }
            for (key, path) in [
                ("cannot read tls.ca_file", &tls.ca_file),
                ("cannot read tls.cert_file", &tls.cert_file),
                ("cannot read tls.key_file", &tls.key_file),
            ] {
                if let Some(path) = path {
                    readable(key, path)?;
                }
            }
        }
        if self.timeout.is_zero() {
            return Err("timeout must be above zero".into());
        }
        Ok(())
    }

    /// A client that connects in the background and reconnects on its own; `name` labels
    /// `wxhook_nats_connected` and the log lines of its state.
    async fn connect(&self, name: &str) -> Result<async_nats::Client, String> {
        let mut options = async_nats::ConnectOptions::new()
            .name(format!("wxhook {name}"))
            .retry_on_initial_connect()
            .connection_timeout(self.timeout.min(Duration::from_secs(5)));
        if let Some(path) = &self.credentials_file {
            options = options
                .credentials_file(path)
                .await
                .map_err(|e| format!("cannot read credentials_file {}: {e}", path.display()))?;
        }
        if let Some(token) = &self.token {
            options = options.token(token.expose().to_owned());
        }
        if let (Some(user), Some(password)) = (&self.user, &self.password) {
            options = options.user_and_password(user.clone(), password.expose().to_owned());
        }
        if let Some(seed) = &self.nkey_seed {
            options = options.nkey(seed.expose().to_owned());
        }
        if let Some(tls) = &self.tls {
            options = options.require_tls(true);
            if let Some(ca) = &tls.ca_file {
                options = options.add_root_certificates(ca.clone());
            }
            if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
                options = options.add_client_certificate(cert.clone(), key.clone());
            }
        }
        let label = name.to_owned();
        options = options.event_callback(move |event| {
            let label = label.clone();
            async move {
                let connected = match event {
                    async_nats::Event::Connected => 1.0,
                    async_nats::Event::Disconnected => 0.0,
                    _ => return,
                };
                metrics::gauge!(crate::telemetry::NATS_CONNECTED, "sink" => label.clone())
                    .set(connected);
                tracing::info!(
                    connection = label,
                    connected = connected > 0.0,
                    "NATS connection state"
                );
            }
        });
        options
            .connect(self.servers.clone())
            .await
            .map_err(|e| format!("cannot connect to NATS: {e}"))
    }
}

/// One connection, made on first use and shared by everything that names it.
pub struct Link {
    name: String,
    connection: Connection,
    client: OnceCell<async_nats::Client>,
}

/// The links of a process, by the name of the `nats` sink that configures them.
pub type Links = HashMap<String, Arc<Link>>;

impl Link {
    pub fn new(name: &str, connection: Connection) -> Arc<Link> {
        Arc::new(Link {
            name: name.to_owned(),
            connection,
            client: OnceCell::new(),
        })
    }

    /// A JetStream context on the shared client, with the connection's request timeout.
    pub async fn jetstream(&self) -> Result<jetstream::Context, String> {
        let client = self
            .client
            .get_or_try_init(|| self.connection.connect(&self.name))
            .await?;
        let mut js = jetstream::new(client.clone());
        js.set_timeout(self.connection.timeout);
        Ok(js)
    }

    /// Whether the client is connected now (false before first use).
    pub fn connected(&self) -> bool {
        self.client
            .get()
            .is_some_and(|c| c.connection_state() == async_nats::connection::State::Connected)
    }
}
