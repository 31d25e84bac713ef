//! Publishing through wxhook: the `freepublish` API client, access tokens (a platform's and its authorized accounts' too), tracked jobs and their reconciliation, WeChat's callback ranges, and a stand-in for WeChat.
//!
//! - [`types`] and [`error`] are the API's answers and failures as typed data.
//! - [`token`] gets access tokens (`stable_token` or an `access_token_url`), caches them
//!   in memory and in the spool, and refreshes them within WeChat's limits.
//! - [`platform`] is a third-party platform's side: `component_access_token`, authorization
//!   codes exchanged, authorized accounts' tokens refreshed.
//! - [`client`] makes every WeChat call: one HTTP client, retries by errcode, metrics.
//! - [`service`] is what commands and the HTTP API do: submit, track, status, articles.
//! - [`reconcile`] polls `freepublish/get` for jobs whose push never came.
//! - [`callback_ips`] keeps `allow_from = ["wechat"]` current from `getcallbackip`.
//! - [`commands`] are the `wxhook publish …` and `wxhook simulate` command lines.
//! - [`simulator`] is `wxhook simulate`, a local stand-in for WeChat's API and pushes.

pub mod callback_ips;
pub mod client;
pub mod commands;
pub mod error;
pub mod platform;
pub mod reconcile;
pub mod service;
pub mod simulator;
pub mod token;
pub mod types;
