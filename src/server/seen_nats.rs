//! The replay guard shared by replicas: each signed query's key created atomically in a JetStream key-value bucket, so a replay is refused whichever replica saw the query first.

use super::seen::{Seen, SeenRecord};
use crate::nats::{Connection, Link, Servers, TlsFiles};
use crate::secret::Secret;
use async_nats::jetstream::kv::{CreateErrorKind, Store};
use async_nats::jetstream::stream::{Config as StreamConfig, DiscardPolicy, StorageType};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OnceCell;

/// `[replay_guard_nats]`: where the bucket is.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayGuardNatsConfig {
    /// A `nats` sink whose connection the guard shares; else `url` and credentials here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sink: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<Servers>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<Secret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nkey_seed: Option<Secret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsFiles>,
    /// The key-value bucket (stream `KV_<bucket>`), created if missing.
    #[serde(default = "default_bucket")]
    pub bucket: String,
    /// Copies of the bucket in a JetStream cluster (1 to 5).
    #[serde(default = "default_replicas")]
    pub replicas: usize,
    /// Time allowed for NATS to answer one check; past it the push gets 503.
    #[serde(default = "default_timeout", with = "crate::duration")]
    pub timeout: Duration,
}

fn default_bucket() -> String {
    "wxhook_replay".into()
}
fn default_replicas() -> usize {
    1
}
fn default_timeout() -> Duration {
    Duration::from_secs(2)
}

impl ReplayGuardNatsConfig {
    /// The connection of its own, when it names no sink.
    pub fn connection(&self) -> Option<Connection> {
        Some(Connection {
            servers: self.url.as_ref()?.list(),
            credentials_file: self.credentials_file.clone(),
            token: self.token.clone(),
            user: self.user.clone(),
            password: self.password.clone(),
            nkey_seed: self.nkey_seed.clone(),
            tls: self.tls.clone(),
            timeout: self.timeout,
        })
    }

    /// Checks what serde cannot; `nats_sinks` are the names of the `nats` sinks.
    pub fn validate(&self, nats_sinks: &[&str]) -> Result<(), String> {
        let fail = |msg: String| Err(format!("[replay_guard_nats]: {msg}"));
        let own_keys = self.credentials_file.is_some()
            || self.token.is_some()
            || self.user.is_some()
            || self.nkey_seed.is_some()
            || self.tls.is_some();
        match (&self.sink, self.connection()) {
            (Some(_), Some(_)) => return fail("set either `sink` or `url`, not both".into()),
            (Some(sink), None) if !nats_sinks.contains(&sink.as_str()) => {
                return fail(format!(
                    "`sink = \"{sink}\"` names no [[sinks]] of type \"nats\""
                ));
            }
            (Some(_), None) if own_keys => {
                return fail(
                    "with `sink`, the connection is the sink's: credentials and tls go there"
                        .into(),
                );
            }
            (Some(_), None) => {}
            (None, Some(connection)) => connection.validate().or_else(&fail)?,
            (None, None) => {
                return fail("set `url` (the NATS servers) or `sink` (a nats sink's name)".into());
            }
        }
        let bucket_ok = !self.bucket.is_empty()
            && self
                .bucket
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !bucket_ok {
            return fail(format!(
                "bucket `{}` may only contain letters, digits, `-` and `_`",
                self.bucket
            ));
        }
        if !(1..=5).contains(&self.replicas) {
            return fail("replicas must be 1 to 5".into());
        }
        if self.timeout.is_zero() {
            return fail("timeout must be above zero".into());
        }
        Ok(())
    }
}

/// The guard: a bucket whose keys live twice the timestamp tolerance.
pub struct SharedSeen {
    link: Arc<Link>,
    config: ReplayGuardNatsConfig,
    ttl: Duration,
    store: OnceCell<Store>,
}

/// Why the guard could not answer (the push is answered 503).
#[derive(Debug, thiserror::Error)]
#[error("the shared replay guard cannot answer: {0}")]
pub struct GuardError(pub String);

impl SharedSeen {
    pub fn new(link: Arc<Link>, config: &ReplayGuardNatsConfig, tolerance_secs: u64) -> SharedSeen {
        SharedSeen {
            link,
            config: config.clone(),
            ttl: Duration::from_secs(2 * tolerance_secs.max(1)),
            store: OnceCell::new(),
        }
    }

    /// The bucket's stream, created if missing the way a key-value bucket is (not with
    /// `create_key_value`, which needs account fields servers before 2.10.8 do not send).
    async fn open(&self) -> Result<Store, String> {
        let js = self.link.jetstream().await?;
        let bucket = &self.config.bucket;
        js.get_or_create_stream(StreamConfig {
            name: format!("KV_{bucket}"),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: 1,
            max_age: self.ttl,
            // A create that crossed a reconnect and is sent again is not taken twice.
            duplicate_window: self.ttl.min(Duration::from_secs(120)),
            storage: StorageType::File,
            num_replicas: self.config.replicas,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: DiscardPolicy::New,
            ..Default::default()
        })
        .await
        .map_err(|e| format!("cannot find or create bucket `{bucket}`: {e}"))?;
        js.get_key_value(bucket)
            .await
            .map_err(|e| format!("cannot open bucket `{bucket}`: {e}"))
    }

    /// Remembers `record` unless some replica did; says whether it is new, a retry or a replay.
    pub async fn check(&self, record: &SeenRecord, nonce: &str) -> Result<Seen, GuardError> {
        if !self.link.connected() && self.store.initialized() {
            return Err(GuardError("NATS is not connected".into()));
        }
        let work = async {
            let store = self.store.get_or_try_init(|| self.open()).await?;
            let key = hex::encode(
                Sha256::new()
                    .chain_update(record.account.as_bytes())
                    .chain_update([0])
                    .chain_update(record.timestamp.to_string())
                    .chain_update([0])
                    .chain_update(nonce.as_bytes())
                    .chain_update([0])
                    .chain_update(record.signature.as_bytes())
                    .finalize(),
            );
            // A key that expires between the failed create and the read is created again.
            for _ in 0..2 {
                match store.create(&key, record.body_hash.to_vec().into()).await {
                    Ok(_) => return Ok(Seen::New),
                    Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {}
                    Err(e) => return Err(format!("create: {e}")),
                }
                match store.get(&key).await {
                    Ok(Some(seen)) if seen[..] == record.body_hash[..] => {
                        return Ok(Seen::SameBody);
                    }
                    Ok(Some(_)) => return Ok(Seen::OtherBody),
                    Ok(None) => continue,
                    Err(e) => return Err(format!("get: {e}")),
                }
            }
            Err("the key came and went twice".into())
        };
        match tokio::time::timeout(self.config.timeout, work).await {
            Ok(answer) => answer.map_err(GuardError),
            Err(_) => Err(GuardError(format!(
                "no answer within {:?}",
                self.config.timeout
            ))),
        }
    }
}
