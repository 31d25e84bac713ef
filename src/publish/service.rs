//! What the `publish` commands and the HTTP API do: submit and record a job, track one, ask its status, read articles, list the tracked jobs.

use super::client::Api;
use super::error::ApiError;
use super::token::Target;
use super::types::{Article, ArticlePage};
use crate::config::Config;
use crate::spool::jobs::{self, Job, JobsDb};
use crate::spool::unix_ms;
use crate::wechat::push::PublishEventInfo;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;

/// `batchget` pages hold at most this many items.
pub const PAGE_MAX: u64 = 20;

/// The publishing operations of one configuration.
pub struct Publisher {
    pub api: Arc<Api>,
    pub db: Arc<JobsDb>,
    reconcile_after: Duration,
}

/// What `submit` answers.
#[derive(Debug, Clone, Serialize)]
pub struct SubmitOutcome {
    pub account: String,
    /// The authorized account published for, through a platform.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_id: Option<String>,
    pub publish_id: String,
    pub msg_data_id: Option<String>,
}

/// A job with the stored event of its last known status.
#[derive(Debug, Clone, Serialize)]
pub struct JobView {
    #[serde(flatten)]
    pub job: Job,
    /// The `publish_event_info` of the last known status, while its event is in the spool.
    pub publish_event_info: Option<serde_json::Value>,
}

/// A `media_id`, `publish_id` or `article_id` as WeChat issues them: 1 to 128 printable
/// ASCII characters.
pub fn check_id(what: &str, id: &str) -> Result<(), ApiError> {
    let ok = (1..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(())
    } else {
        Err(ApiError::local(
            format!("`{}` is not a valid {what}", id.escape_debug()),
            format!("a {what} is 1 to 128 printable ASCII characters without spaces"),
        ))
    }
}

impl Publisher {
    /// The API client and the spool's job tables for `config`.
    pub fn open(config: &Config) -> Result<Publisher, ApiError> {
        let db = Arc::new(JobsDb::open(&config.data_dir).map_err(ApiError::storage)?);
        Publisher::with_db(config, db)
    }

    pub fn with_db(config: &Config, db: Arc<JobsDb>) -> Result<Publisher, ApiError> {
        Ok(Publisher {
            api: Arc::new(Api::new(config, db.clone())?),
            db,
            reconcile_after: config.reconcile_after,
        })
    }

    /// `freepublish/submit`, then the job is recorded for reconciliation.
    pub async fn submit(
        &self,
        account: Option<&str>,
        app_id: Option<&str>,
        media_id: &str,
    ) -> Result<SubmitOutcome, ApiError> {
        check_id("media_id", media_id)?;
        let target = self.api.resolve(account, app_id)?;
        let submitted = self.api.submit(&target, media_id).await?;
        self.record(&target, &submitted.publish_id, Some(media_id), "submit")
            .await
            .map_err(|e| {
                ApiError::local(
                    format!(
                        "publish_id {} was submitted but cannot be recorded: {}",
                        submitted.publish_id, e.errmsg
                    ),
                    "run `wxhook publish track` with this publish_id once the spool is writable",
                )
            })?;
        tracing::info!(account = %target, publish_id = %submitted.publish_id, media_id, "publish job submitted");
        Ok(SubmitOutcome {
            account: target.account,
            app_id: target.app_id,
            publish_id: submitted.publish_id,
            msg_data_id: submitted.msg_data_id,
        })
    }

    /// Follows a job submitted elsewhere: polled after `reconcile_after` unless a push comes.
    pub async fn track(
        &self,
        account: Option<&str>,
        app_id: Option<&str>,
        publish_id: &str,
    ) -> Result<JobView, ApiError> {
        check_id("publish_id", publish_id)?;
        let target = self.api.resolve(account, app_id)?;
        self.record(&target, publish_id, None, "track").await?;
        self.job(&target, publish_id)
            .await?
            .ok_or_else(|| ApiError::local("the tracked job vanished", "try again"))
    }

    /// Starts following a job: first poll `reconcile_after` from now.
    async fn record(
        &self,
        target: &Target,
        publish_id: &str,
        media_id: Option<&str>,
        origin: &'static str,
    ) -> Result<(), ApiError> {
        let now = unix_ms();
        let first = now + crate::duration::millis(self.reconcile_after);
        let (a, id, p, m) = (
            target.account.clone(),
            target.job_app_id().to_owned(),
            publish_id.to_owned(),
            media_id.map(str::to_owned),
        );
        self.db
            .run(move |conn| jobs::record_job(conn, &a, &id, &p, m.as_deref(), origin, now, first))
            .await
            .map(drop)
            .map_err(ApiError::storage)
    }

    /// A tracked job and its last known status.
    pub async fn job(
        &self,
        target: &Target,
        publish_id: &str,
    ) -> Result<Option<JobView>, ApiError> {
        let (a, id, p) = (
            target.account.clone(),
            target.job_app_id().to_owned(),
            publish_id.to_owned(),
        );
        self.db
            .run(move |conn| {
                let Some(job) = jobs::job(conn, &a, &id, &p)? else {
                    return Ok(None);
                };
                let body = match job.status {
                    Some(status) => jobs::status_event(conn, &a, &id, &p, status)?,
                    None => None,
                };
                let info = body
                    .and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok())
                    .and_then(|mut v| v.get_mut("publish_event_info").map(serde_json::Value::take));
                Ok(Some(JobView {
                    job,
                    publish_event_info: info,
                }))
            })
            .await
            .map_err(ApiError::storage)
    }

    /// Tracked jobs, newest first.
    pub async fn jobs(
        &self,
        account: Option<&str>,
        app_id: Option<&str>,
        pending: bool,
    ) -> Result<Vec<Job>, ApiError> {
        let (account, app_id) = (account.map(str::to_owned), app_id.map(str::to_owned));
        self.db
            .run(move |conn| jobs::jobs(conn, account.as_deref(), app_id.as_deref(), pending))
            .await
            .map_err(ApiError::storage)
    }

    pub async fn status(
        &self,
        account: Option<&str>,
        app_id: Option<&str>,
        publish_id: &str,
    ) -> Result<PublishEventInfo, ApiError> {
        check_id("publish_id", publish_id)?;
        let target = self.api.resolve(account, app_id)?;
        self.api.status(&target, publish_id).await
    }

    pub async fn article(
        &self,
        account: Option<&str>,
        app_id: Option<&str>,
        article_id: &str,
    ) -> Result<Article, ApiError> {
        check_id("article_id", article_id)?;
        let target = self.api.resolve(account, app_id)?;
        self.api.article(&target, article_id).await
    }

    /// One `batchget` page (`count` 1 to 20).
    pub async fn list(
        &self,
        account: Option<&str>,
        app_id: Option<&str>,
        offset: u64,
        count: u64,
        no_content: bool,
    ) -> Result<ArticlePage, ApiError> {
        if !(1..=PAGE_MAX).contains(&count) {
            return Err(ApiError::local(
                format!("count {count} is out of range"),
                "batchget returns 1 to 20 items per call; use --all to page through everything",
            ));
        }
        let target = self.api.resolve(account, app_id)?;
        self.api.list(&target, offset, count, no_content).await
    }
}
