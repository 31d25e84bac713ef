//! `allow_from = ["wechat"]`: WeChat's callback ranges from `getcallbackip`, fetched at start and every `callback_ip_refresh`, stored in the spool, and swapped into the account's allow-list without a restart.

use super::client::Api;
use crate::server::source::AllowList;
use crate::spool::jobs::{self, JobsDb, format_ms};
use crate::spool::unix_ms;
use ipnet::IpNet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// After a failed fetch, the next try comes this soon (or at the refresh period if shorter).
const RETRY: Duration = Duration::from_secs(30);

/// Ranges as WeChat lists them (`101.226.103.0/25` or a bare address); others are skipped.
pub fn parse_ranges(list: &[String]) -> Vec<IpNet> {
    list.iter()
        .filter_map(|entry| {
            let entry = entry.trim();
            let net = entry
                .parse::<IpNet>()
                .ok()
                .or_else(|| entry.parse::<IpAddr>().ok().map(IpNet::from));
            if net.is_none() {
                tracing::warn!(
                    entry,
                    "getcallbackip listed something that is not an address or range; skipped"
                );
            }
            net
        })
        .collect()
}

/// One account's allow-list kept current.
pub struct CallbackRanges {
    pub api: Arc<Api>,
    pub db: Arc<JobsDb>,
    pub account: String,
    pub allow: Arc<AllowList>,
    /// The CIDRs `allow_from` lists beside `"wechat"`.
    pub fixed: Vec<IpNet>,
    pub every: Duration,
}

impl CallbackRanges {
    fn apply(&self, ranges: &[String]) {
        let wechat = parse_ranges(ranges);
        metrics::gauge!(crate::telemetry::CALLBACK_RANGES, "account" => self.account.clone())
            .set(wechat.len() as f64);
        let mut nets = self.fixed.clone();
        nets.extend(wechat);
        self.allow.replace(Some(nets));
    }

    /// The ranges stored by an earlier run, put in force before the first fetch.
    pub fn load_stored(&self, conn: &rusqlite::Connection) {
        match jobs::stored_ips(conn, &self.account) {
            Ok(Some((ranges, at))) => {
                self.apply(&ranges);
                tracing::info!(account = %self.account, ranges = ranges.len(), fetched_at = %format_ms(at), "WeChat callback ranges from the spool in force until the first fetch");
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!(account = %self.account, error = %e, "cannot read stored WeChat callback ranges")
            }
        }
    }

    /// Fetches now and every `every` until `stop`.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        loop {
            let wait = match self.api.callback_ips(&self.account).await {
                Ok(ranges) => {
                    self.apply(&ranges);
                    let (a, r, now) = (self.account.clone(), ranges.clone(), unix_ms());
                    if let Err(e) = self
                        .db
                        .run(move |conn| jobs::store_ips(conn, &a, &r, now))
                        .await
                    {
                        tracing::error!(account = %self.account, error = %e, "cannot store WeChat callback ranges");
                    }
                    tracing::info!(account = %self.account, ranges = ranges.len(), "WeChat callback ranges refreshed");
                    self.every
                }
                Err(e) => {
                    let a = self.account.clone();
                    let stored = self
                        .db
                        .run(move |conn| jobs::stored_ips(conn, &a))
                        .await
                        .ok()
                        .flatten();
                    match stored {
                        Some((_, at)) => {
                            tracing::warn!(account = %self.account, errcode = e.errcode, errmsg = %e.errmsg, hint = %e.hint, fetched_at = %format_ms(at), "getcallbackip failed; the stored ranges stay in force")
                        }
                        None => {
                            tracing::error!(account = %self.account, errcode = e.errcode, errmsg = %e.errmsg, hint = %e.hint, "getcallbackip failed and no ranges are stored: pushes from WeChat are refused until a fetch succeeds")
                        }
                    }
                    self.every.min(RETRY)
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ranges_and_bare_addresses_are_read() {
        let nets = super::parse_ranges(&[
            "101.226.103.0/25".into(),
            "14.17.22.33".into(),
            "nonsense".into(),
        ]);
        assert_eq!(nets.len(), 2);
        assert_eq!(nets[1].to_string(), "14.17.22.33/32");
    }
}
