//! Reconciliation: every followed job without a final status is polled with `freepublish/get` from `reconcile_after` on, with capped, jittered backoff, until it has one or `reconcile_max_age` passes.

use super::client::Api;
use super::token::Target;
use crate::config::Config;
use crate::envelope::publish_event_id;
use crate::spool::jobs::{self, FROM_POLL, Job, JobsDb, format_ms};
use crate::spool::{NewEvent, PublishNote, Spool, unix_ms};
use crate::wechat::push::PublishEventInfo;
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Jobs submitted by a command in another process are noticed within this time.
const IDLE_CHECK: Duration = Duration::from_secs(1);
/// Polls of one account at once, at most.
const BATCH: usize = 20;
/// The longest wait between two polls of one job (unless `reconcile_after` is longer).
const MAX_INTERVAL: Duration = Duration::from_secs(3600);

/// One account's part of the configuration.
#[derive(Clone)]
struct Account {
    app_id: Option<String>,
    sinks: Arc<[String]>,
}

/// The reconciliation loops: one per account with API credentials, so a slow account
/// does not hold up the others.
pub struct Reconciler {
    api: Arc<Api>,
    db: Arc<JobsDb>,
    spool: Arc<Spool>,
    after: Duration,
    max_age: Duration,
    accounts: HashMap<String, Account>,
}

impl Reconciler {
    pub fn new(config: &Config, api: Arc<Api>, db: Arc<JobsDb>, spool: Arc<Spool>) -> Reconciler {
        let accounts = config
            .accounts
            .iter()
            .filter(|a| a.has_api())
            .map(|a| {
                let sinks: Arc<[String]> = a
                    .sink_names(&config.sinks)
                    .into_iter()
                    .map(str::to_owned)
                    .collect();
                (
                    a.name.clone(),
                    Account {
                        app_id: a.app_id.clone(),
                        sinks,
                    },
                )
            })
            .collect();
        Reconciler {
            api,
            db,
            spool,
            after: config.reconcile_after,
            max_age: config.reconcile_max_age,
            accounts,
        }
    }

    /// Starts one loop per account; each ends when `stop` turns true.
    pub fn spawn(self: Arc<Self>, stop: watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
        self.accounts
            .keys()
            .map(|account| {
                let (me, account, stop) = (self.clone(), account.clone(), stop.clone());
                tokio::spawn(async move { me.run(account, stop).await })
            })
            .collect()
    }

    async fn run(&self, account: String, mut stop: watch::Receiver<bool>) {
        loop {
            if *stop.borrow() {
                return;
            }
            let now = unix_ms();
            let a = account.clone();
            let due = self
                .db
                .run(move |conn| jobs::due_jobs(conn, &a, now, BATCH))
                .await;
            match due {
                Ok(due) => {
                    for job in due {
                        self.poll(&job).await;
                    }
                }
                Err(e) => tracing::error!(account, error = %e, "cannot read the publish jobs"),
            }
            let a = account.clone();
            let next = self
                .db
                .run(move |conn| jobs::next_poll(conn, &a))
                .await
                .ok()
                .flatten();
            let wait = next
                .map(|at| Duration::from_millis(u64::try_from(at - unix_ms()).unwrap_or(0)))
                .unwrap_or(IDLE_CHECK)
                .min(IDLE_CHECK);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => {}
            }
        }
    }

    /// One poll of one job.
    async fn poll(&self, job: &Job) {
        let now = unix_ms();
        let (account, publish_id) = (job.account.as_str(), job.publish_id.as_str());
        let target = Target::of_job(job);
        let deadline = job.submitted_at + crate::duration::millis(self.max_age);
        if now >= deadline {
            let (a, id, p) = (
                job.account.clone(),
                job.app_id.clone(),
                job.publish_id.clone(),
            );
            match self
                .db
                .run(move |conn| jobs::abandon(conn, &a, &id, &p, now))
                .await
            {
                Ok(true) => {
                    metrics::counter!(crate::telemetry::JOBS_ABANDONED, "account" => account.to_owned(), "reason" => "max_age").increment(1);
                    tracing::warn!(
                        account,
                        app_id = job.app_id,
                        publish_id,
                        media_id = job.media_id.as_deref().unwrap_or(""),
                        submitted_at = %format_ms(job.submitted_at),
                        polls = job.polls,
                        last_error = job.last_error.as_deref().unwrap_or(""),
                        "publish job abandoned: no final status within reconcile_max_age"
                    );
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::error!(account, publish_id, error = %e, "cannot record an abandoned job")
                }
            }
            return;
        }
        let (outcome, error) = match self.api.status(&target, publish_id).await {
            Ok(info) => {
                let outcome = if info.is_final() {
                    "final"
                } else {
                    "publishing"
                };
                if job.status != Some(info.publish_status)
                    && let Err(e) = self.store(job, info).await
                {
                    tracing::error!(account, publish_id, error = %e, "cannot store a polled status");
                    ("error", Some(e.to_string()))
                } else {
                    (outcome, None)
                }
            }
            Err(e) => {
                tracing::warn!(account = %target, publish_id, errcode = e.errcode, errmsg = %e.errmsg, hint = %e.hint, "freepublish/get failed; polling again later");
                ("error", Some(e.to_string()))
            }
        };
        metrics::counter!(crate::telemetry::JOB_POLLS, "account" => account.to_owned(), "outcome" => outcome).increment(1);
        let next = (outcome != "final").then(|| (now + self.delay(job.polls)).min(deadline));
        let (a, id, p) = (
            job.account.clone(),
            job.app_id.clone(),
            job.publish_id.clone(),
        );
        if let Err(e) = self
            .db
            .run(move |conn| jobs::reschedule(conn, &a, &id, &p, next, error.as_deref()))
            .await
        {
            tracing::error!(account, publish_id, error = %e, "cannot schedule the next poll");
        }
    }

    /// After the first poll twice `reconcile_after`, then four times…, capped at an hour, ±10%.
    fn delay(&self, polls: u32) -> i64 {
        let cap = MAX_INTERVAL.max(self.after);
        let base = self.after.saturating_mul(2 << polls.min(16)).min(cap);
        crate::duration::millis(base.mul_f64(rand::random_range(0.9..1.1)))
    }

    /// A polled status as an event, exactly like a push's but for `source` and the names.
    async fn store(
        &self,
        job: &Job,
        info: PublishEventInfo,
    ) -> Result<(), crate::spool::SpoolError> {
        let Some(account) = self.accounts.get(&job.account) else {
            return Ok(());
        };
        let (name, app_id) = (job.account.clone(), job.app_id.clone());
        let (to, from) = self
            .db
            .run(move |conn| jobs::last_push_names(conn, &name, &app_id))
            .await
            .unwrap_or((None, None));
        let now = unix_ms();
        let id = publish_event_id(&info.publish_id, info.publish_status);
        let received_at = format_ms(now);
        let mut event = serde_json::Map::new();
        event.insert("id".into(), json!(id));
        event.insert("account".into(), json!(job.account));
        // A platform's job is of the authorized account; another job of the account itself.
        if !job.app_id.is_empty() {
            event.insert("app_id".into(), json!(job.app_id));
        } else if let Some(app_id) = &account.app_id {
            event.insert("app_id".into(), json!(app_id));
        }
        event.insert("received_at".into(), json!(received_at));
        event.insert("source".into(), json!(FROM_POLL));
        event.insert("to_user_name".into(), json!(to));
        event.insert("from_user_name".into(), json!(from));
        event.insert("create_time".into(), json!(now / 1000));
        event.insert("msg_type".into(), json!("event"));
        event.insert("event".into(), json!("PUBLISHJOBFINISH"));
        event.insert("publish_event_info".into(), json!(info));
        event.insert("fields".into(), json!({}));
        let body = serde_json::Value::Object(event).to_string();
        let appended = self
            .spool
            .append(NewEvent {
                account: job.account.clone(),
                app_id: job.app_id.clone(),
                id: id.clone(),
                received_at,
                body,
                sinks: account.sinks.clone(),
                seen: None,
                platform: None,
                publish: Some(PublishNote {
                    publish_id: info.publish_id.clone(),
                    status: info.publish_status,
                    source: FROM_POLL,
                }),
            })
            .await?;
        tracing::info!(account = %job.account, publish_id = %job.publish_id, status = info.publish_status, ?appended, "publish status learned by polling");
        Ok(())
    }
}
