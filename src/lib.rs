//! wxhook: receives WeChat Official Account pushes, verifies them, stores them durably and relays them to sinks.
//!
//! The path of one push through the crate:
//!
//! - [`config`] loads one [`config::Config`] from TOML and `WXHOOK_*` environment variables
//!   and fails fast naming the key that is wrong.
//! - [`server`] owns the HTTP edge: the router, URL verification (`GET`), push intake
//!   (`POST`), and the mapping of every failure to a specific HTTP answer.
//!   Official Accounts and WeCom applications (corp ids, `msg_signature` alone) alike.
//! - [`wechat`] is the protocol: [`wechat::signature`] checks WeChat's SHA-1 signature in
//!   constant time, [`wechat::xml`] reads the body with quick-xml into a bounded tree, and
//!   [`wechat::push`] turns that tree into a typed push (`PUBLISHJOBFINISH` fully typed,
//!   everything else kept field by field).
//! - [`envelope`] builds the event JSON that every sink receives, including the stable `id`
//!   that makes WeChat's retries deduplicate.
//! - [`spool`] is the durable SQLite store between "answered `success`" and "delivered":
//!   group-committed appends, per-sink delivery state (a cursor for ordered sinks, a row
//!   per event for `http`), restart recovery.
//! - [`sinks`] delivers events from the spool, one independent worker per sink:
//!   `stdout`, `log` and `file` in ordered batches (`file` exactly once across crashes,
//!   reading back its own tail), `http` with concurrent requests, `nats` to a JetStream
//!   stream deduplicated by `Nats-Msg-Id` (so replicas store each event once),
//!   a retry schedule kept in the spool, Standard Webhooks signatures and dead letters.
//!   [`spool::admin`] is the operator's view of the same data (`dead-letters`, `events`).
//! - [`publish`] submits and follows publish jobs through WeChat's `freepublish` API:
//!   access tokens, the typed answers, reconciliation by polling when a push never came,
//!   WeChat's callback ranges for `allow_from`, and `wxhook simulate`, a stand-in for WeChat.
//!   [`publish::platform`] does it for the accounts authorized to a third-party platform
//!   (component and authorizer tokens), from the tickets and authorizations that
//!   [`spool::platform`] keeps.
//!   [`server::api`] serves it over HTTP.
//! - [`nats`] is the connection to NATS that a `nats` sink and the shared replay guard
//!   ([`server::seen_nats`], `replay_guard = "nats"`) use.
//! - [`replay`] signs fixture XML exactly as WeChat would and POSTs it to a deployment.
//! - [`fuzzing`] is the fuzz harness (`fuzz/`), replayed over its seeds by the tests.
//! - [`telemetry`] names the Prometheus metrics served at `/metrics` ([`server::ops`]).
//! - [`secret`] keeps tokens out of logs and `Debug` output; [`duration`] reads `10s`-style values.

pub mod config;
pub mod duration;
pub mod envelope;
pub mod fuzzing;
pub mod nats;
pub mod publish;
pub mod replay;
pub mod secret;
pub mod server;
pub mod sinks;
pub mod spool;
pub mod telemetry;
pub mod wechat;
