//! Publish jobs, cached access tokens, force-refresh history and WeChat's callback ranges: the spool tables the publishing capability keeps across restarts.

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

/// Schema 4: the publishing tables.
pub(super) const SCHEMA_4: &str = "
CREATE TABLE jobs (
    account       TEXT NOT NULL,
    publish_id    TEXT NOT NULL,
    media_id      TEXT,
    -- Unix ms of the submission (or of the first sighting of a job submitted elsewhere).
    submitted_at  INTEGER NOT NULL,
    -- submit, track or push: how wxhook came to follow it.
    origin        TEXT NOT NULL,
    status        INTEGER,
    status_source TEXT,
    status_at     INTEGER,
    polls         INTEGER NOT NULL DEFAULT 0,
    -- Unix ms of the next freepublish/get; NULL once the job has a final status or is abandoned.
    next_poll_at  INTEGER,
    abandoned_at  INTEGER,
    last_error    TEXT,
    PRIMARY KEY (account, publish_id)
) WITHOUT ROWID;
CREATE INDEX jobs_due ON jobs (account, next_poll_at) WHERE next_poll_at IS NOT NULL;
CREATE TABLE tokens (
    key          TEXT PRIMARY KEY,
    access_token TEXT NOT NULL,
    expires_at   INTEGER NOT NULL,
    fetched_at   INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE force_refreshes (key TEXT NOT NULL, at INTEGER NOT NULL);
CREATE INDEX force_refreshes_key ON force_refreshes (key, at);
CREATE TABLE callback_ips (
    account    TEXT PRIMARY KEY,
    ip_list    TEXT NOT NULL,
    fetched_at INTEGER NOT NULL
) WITHOUT ROWID;
";

/// Where a job's last known status came from.
pub const FROM_PUSH: &str = "push";
pub const FROM_POLL: &str = "poll";

/// A publish job wxhook follows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Job {
    pub account: String,
    /// The authorized account's appid, for a job of a third-party platform.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub app_id: String,
    pub publish_id: String,
    pub media_id: Option<String>,
    #[serde(serialize_with = "rfc3339")]
    pub submitted_at: i64,
    pub origin: String,
    /// The last known `publish_status` (`null` until one is known).
    #[serde(rename = "publish_status")]
    pub status: Option<u32>,
    /// Where it came from: `push` or `poll`.
    #[serde(rename = "source")]
    pub status_source: Option<String>,
    #[serde(serialize_with = "optional_rfc3339")]
    pub status_at: Option<i64>,
    pub polls: u32,
    #[serde(serialize_with = "optional_rfc3339")]
    pub next_poll_at: Option<i64>,
    #[serde(serialize_with = "optional_rfc3339")]
    pub abandoned_at: Option<i64>,
    /// Why it ended without a final status: `max_age` or `revoked`.
    pub ended_by: Option<String>,
    pub last_error: Option<String>,
}

impl Job {
    /// Any status but 1 (publishing) is final.
    pub fn is_final(&self) -> bool {
        self.status.is_some_and(|s| s != 1)
    }
}

/// Unix ms as RFC 3339 (UTC, milliseconds), as `received_at` is written.
pub fn format_ms(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0).unsigned_abs());
    humantime::format_rfc3339_millis(t).to_string()
}

fn rfc3339<S: serde::Serializer>(ms: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_ms(*ms))
}

pub(crate) fn optional_rfc3339<S: serde::Serializer>(
    ms: &Option<i64>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match ms {
        Some(ms) => s.serialize_str(&format_ms(*ms)),
        None => s.serialize_none(),
    }
}

const JOB_COLUMNS: &str = "account, app_id, publish_id, media_id, submitted_at, origin, status, \
     status_source, status_at, polls, next_poll_at, abandoned_at, ended_by, last_error";

fn job_row(r: &rusqlite::Row) -> rusqlite::Result<Job> {
    Ok(Job {
        account: r.get(0)?,
        app_id: r.get(1)?,
        publish_id: r.get(2)?,
        media_id: r.get(3)?,
        submitted_at: r.get(4)?,
        origin: r.get(5)?,
        status: r
            .get::<_, Option<i64>>(6)?
            .map(|s| u32::try_from(s).unwrap_or(u32::MAX)),
        status_source: r.get(7)?,
        status_at: r.get(8)?,
        polls: u32::try_from(r.get::<_, i64>(9)?).unwrap_or(u32::MAX),
        next_poll_at: r.get(10)?,
        abandoned_at: r.get(11)?,
        ended_by: r.get(12)?,
        last_error: r.get(13)?,
    })
}

/// Starts following a job (or keeps following it: a second submission record or track of
/// the same job changes nothing but a missing `media_id`). Returns the job as stored.
#[allow(clippy::too_many_arguments)]
pub fn record_job(
    conn: &Connection,
    account: &str,
    app_id: &str,
    publish_id: &str,
    media_id: Option<&str>,
    origin: &str,
    now: i64,
    first_poll_at: i64,
) -> rusqlite::Result<Job> {
    conn.execute(
        "INSERT INTO jobs (account, app_id, publish_id, media_id, submitted_at, origin, next_poll_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
         ON CONFLICT (account, app_id, publish_id) DO UPDATE SET media_id = COALESCE(media_id, excluded.media_id)",
        params![account, app_id, publish_id, media_id, now, origin, first_poll_at],
    )?;
    job(conn, account, app_id, publish_id)?.ok_or(rusqlite::Error::QueryReturnedNoRows)
}

/// One job.
pub fn job(
    conn: &Connection,
    account: &str,
    app_id: &str,
    publish_id: &str,
) -> rusqlite::Result<Option<Job>> {
    conn.query_row(
        &format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE account = ?1 AND app_id = ?2 AND publish_id = ?3"
        ),
        params![account, app_id, publish_id],
        job_row,
    )
    .optional()
}

/// Jobs, newest submission first; only those still without a final status (and not
/// ended) with `pending`; of one authorized account with `app_id`.
pub fn jobs(
    conn: &Connection,
    account: Option<&str>,
    app_id: Option<&str>,
    pending: bool,
) -> rusqlite::Result<Vec<Job>> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {JOB_COLUMNS} FROM jobs WHERE (?1 IS NULL OR account = ?1) AND (?2 IS NULL OR app_id = ?2) \
         AND (?3 = 0 OR ((status IS NULL OR status = 1) AND abandoned_at IS NULL)) \
         ORDER BY submitted_at DESC, publish_id"
    ))?;
    let rows = stmt.query_map(params![account, app_id, pending], job_row)?;
    rows.collect()
}

/// Jobs of `account` whose poll is due at `now`, oldest schedule first.
pub fn due_jobs(
    conn: &Connection,
    account: &str,
    now: i64,
    limit: usize,
) -> rusqlite::Result<Vec<Job>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {JOB_COLUMNS} FROM jobs WHERE account = ?1 AND next_poll_at IS NOT NULL \
         AND next_poll_at <= ?2 ORDER BY next_poll_at LIMIT ?3"
    ))?;
    let rows = stmt.query_map(
        params![account, now, i64::try_from(limit).unwrap_or(i64::MAX)],
        job_row,
    )?;
    rows.collect()
}

/// The earliest scheduled poll of `account`.
pub fn next_poll(conn: &Connection, account: &str) -> rusqlite::Result<Option<i64>> {
    conn.query_row(
        "SELECT MIN(next_poll_at) FROM jobs WHERE account = ?1 AND next_poll_at IS NOT NULL",
        params![account],
        |r| r.get(0),
    )
}

/// Records a poll and when to poll next (`None`: never, the job is settled). A job that
/// got a final status meanwhile (a push) keeps no schedule.
pub fn reschedule(
    conn: &Connection,
    account: &str,
    app_id: &str,
    publish_id: &str,
    next_poll_at: Option<i64>,
    error: Option<&str>,
) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE jobs SET polls = polls + 1, last_error = ?4, \
         next_poll_at = CASE WHEN (status IS NOT NULL AND status != 1) OR abandoned_at IS NOT NULL \
         THEN NULL ELSE ?5 END \
         WHERE account = ?1 AND app_id = ?2 AND publish_id = ?3",
        params![account, app_id, publish_id, error, next_poll_at],
    )?;
    Ok(())
}

/// Gives up on a job; true the first time (so it is reported once).
pub fn abandon(
    conn: &Connection,
    account: &str,
    app_id: &str,
    publish_id: &str,
    now: i64,
) -> rusqlite::Result<bool> {
    let changed = conn.execute(
        "UPDATE jobs SET abandoned_at = ?4, next_poll_at = NULL, ended_by = 'max_age' \
         WHERE account = ?1 AND app_id = ?2 AND publish_id = ?3 AND abandoned_at IS NULL \
         AND (status IS NULL OR status = 1)",
        params![account, app_id, publish_id, now],
    )?;
    Ok(changed == 1)
}

/// Whether the spool holds any job: while it holds none, the writer stores a publish
/// result without looking for its job (two statements a push on the intake path).
pub(super) struct JobsGate {
    /// `PRAGMA data_version` when `any` was read: it changes when another connection
    /// (a `publish` command, the reconciler) commits.
    data_version: Option<i64>,
    pub any: bool,
}

impl JobsGate {
    pub fn new() -> JobsGate {
        JobsGate {
            data_version: None,
            any: true,
        }
    }

    /// Reads `any` again if another connection committed since; inside the writer's
    /// transaction, so that no job can appear unseen before the group commits.
    pub fn refresh(&mut self, conn: &Connection) -> rusqlite::Result<()> {
        let version: i64 = conn
            .prepare_cached("PRAGMA data_version")?
            .query_row([], |r| r.get(0))?;
        if self.data_version != Some(version) {
            self.recount(conn)?;
            self.data_version = Some(version);
        }
        Ok(())
    }

    /// Reads `any` again (after this connection removed jobs).
    pub fn recount(&mut self, conn: &Connection) -> rusqlite::Result<()> {
        self.any = conn
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM jobs)")?
            .query_row([], |r| r.get(0))?;
        Ok(())
    }
}

/// Removes settled and abandoned jobs whose last change is older than `cutoff` (Unix ms).
pub(super) fn prune(conn: &Connection, cutoff: i64) -> rusqlite::Result<usize> {
    conn.execute(
        "DELETE FROM jobs WHERE next_poll_at IS NULL \
         AND MAX(submitted_at, COALESCE(status_at, 0), COALESCE(abandoned_at, 0)) < ?1",
        params![cutoff],
    )
}

/// What the writer needs of a job when it stores one of its events: `media_id` and
/// `submitted_at` for the event's `job` member.
pub(super) fn job_ref(
    conn: &Connection,
    account: &str,
    app_id: &str,
    publish_id: &str,
) -> rusqlite::Result<Option<(Option<String>, i64)>> {
    conn.prepare_cached(
        "SELECT media_id, submitted_at FROM jobs WHERE account = ?1 AND app_id = ?2 AND publish_id = ?3",
    )?
    .query_row(params![account, app_id, publish_id], |r| {
        Ok((r.get(0)?, r.get(1)?))
    })
    .optional()
}

/// Records a job's status whose event is now in the spool: a final one ends its polling
/// (a final status is never taken back by a late "publishing"); a push saying
/// "publishing" of a job not followed yet starts following it. `stored` is false when the
/// event was there already: then the job learns the status as that event's source gave it.
#[allow(clippy::too_many_arguments)]
pub(super) fn status_stored(
    conn: &Connection,
    account: &str,
    app_id: &str,
    publish_id: &str,
    status: u32,
    source: &str,
    stored: bool,
    now: i64,
    first_poll_at: i64,
    any: &mut bool,
) -> rusqlite::Result<()> {
    let starts_following = stored && status == 1;
    if !(*any || starts_following) {
        return Ok(());
    }
    let source = if stored || !*any {
        source.to_owned()
    } else {
        let id = crate::envelope::publish_event_id(publish_id, status);
        conn.prepare_cached(
            "SELECT COALESCE(json_extract(body, '$.source'), 'push') FROM events WHERE id = ?1 AND account = ?2 AND app_id = ?3 LIMIT 1",
        )?
        .query_row(params![id, account, app_id], |r| r.get(0))
        .optional()?
        .unwrap_or_else(|| source.to_owned())
    };
    let changed = if !*any {
        0
    } else {
        conn.prepare_cached(
            "UPDATE jobs SET status = ?4, status_source = ?5, status_at = ?6, \
             next_poll_at = CASE WHEN ?4 != 1 THEN NULL ELSE next_poll_at END \
             WHERE account = ?1 AND app_id = ?2 AND publish_id = ?3 AND status IS NOT ?4 \
             AND NOT (?4 = 1 AND status IS NOT NULL AND status != 1)",
        )?
        .execute(params![account, app_id, publish_id, status, source, now])?
    };
    if changed == 0 && status == 1 && stored {
        conn.prepare_cached(
            "INSERT INTO jobs (account, app_id, publish_id, submitted_at, origin, status, status_source, status_at, next_poll_at) \
             VALUES (?1, ?2, ?3, ?4, 'push', 1, ?5, ?4, ?6) ON CONFLICT DO NOTHING",
        )?
        .execute(params![account, app_id, publish_id, now, &source, first_poll_at])?;
        *any = true;
    }
    Ok(())
}

/// A cached access token still valid at `now` (Unix ms): (token, expires_at).
pub fn cached_token(
    conn: &Connection,
    key: &str,
    now: i64,
) -> rusqlite::Result<Option<(String, i64)>> {
    conn.query_row(
        "SELECT access_token, expires_at FROM tokens WHERE key = ?1 AND expires_at > ?2",
        params![key, now],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .optional()
}

pub fn store_token(
    conn: &Connection,
    key: &str,
    token: &str,
    expires_at: i64,
    now: i64,
) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO tokens (key, access_token, expires_at, fetched_at) VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT (key) DO UPDATE SET access_token = excluded.access_token, \
         expires_at = excluded.expires_at, fetched_at = excluded.fetched_at",
        params![key, token, expires_at, now],
    )?;
    Ok(())
}

/// Force refreshes of `key` since `since` (Unix ms): how many, and the newest.
pub fn force_refreshes(
    conn: &Connection,
    key: &str,
    since: i64,
) -> rusqlite::Result<(u32, Option<i64>)> {
    conn.query_row(
        "SELECT COUNT(*), MAX(at) FROM force_refreshes WHERE key = ?1 AND at >= ?2",
        params![key, since],
        |r| {
            Ok((
                u32::try_from(r.get::<_, i64>(0)?).unwrap_or(u32::MAX),
                r.get(1)?,
            ))
        },
    )
}

pub fn record_force_refresh(conn: &Connection, key: &str, now: i64) -> rusqlite::Result<()> {
    conn.execute(
        "DELETE FROM force_refreshes WHERE at < ?1",
        params![now - 2 * 24 * 3600 * 1000],
    )?;
    conn.execute(
        "INSERT INTO force_refreshes (key, at) VALUES (?1, ?2)",
        params![key, now],
    )?;
    Ok(())
}

/// WeChat's callback ranges as last fetched for `account`: (ranges, fetched_at).
pub fn stored_ips(
    conn: &Connection,
    account: &str,
) -> rusqlite::Result<Option<(Vec<String>, i64)>> {
    let row: Option<(String, i64)> = conn
        .query_row(
            "SELECT ip_list, fetched_at FROM callback_ips WHERE account = ?1",
            params![account],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    Ok(row.map(|(list, at)| (serde_json::from_str(&list).unwrap_or_default(), at)))
}

pub fn store_ips(
    conn: &Connection,
    account: &str,
    ips: &[String],
    now: i64,
) -> rusqlite::Result<()> {
    let list = serde_json::to_string(ips).unwrap_or_else(|_| "[]".into());
    conn.execute(
        "INSERT INTO callback_ips (account, ip_list, fetched_at) VALUES (?1, ?2, ?3) \
         ON CONFLICT (account) DO UPDATE SET ip_list = excluded.ip_list, fetched_at = excluded.fetched_at",
        params![account, list, now],
    )?;
    Ok(())
}

/// The newest pushed `PUBLISHJOBFINISH` names of `account` (`ToUserName`, `FromUserName`),
/// for events learned by polling; among its 500 newest events.
pub fn last_push_names(
    conn: &Connection,
    account: &str,
    app_id: &str,
) -> rusqlite::Result<(Option<String>, Option<String>)> {
    let mut stmt = conn.prepare_cached(
        "SELECT body FROM events WHERE account = ?1 AND app_id = ?2 AND id LIKE 'publish-%' ORDER BY seq DESC LIMIT 500",
    )?;
    let mut rows = stmt.query(params![account, app_id])?;
    while let Some(row) = rows.next()? {
        let body: String = row.get(0)?;
        let Ok(value) = serde_json::from_str::<serde_json::Value>(&body) else {
            continue;
        };
        if value.get("source").and_then(|s| s.as_str()) == Some(FROM_POLL) {
            continue;
        }
        let name = |key: &str| value.get(key).and_then(|v| v.as_str()).map(str::to_owned);
        if let (Some(to), Some(from)) = (name("to_user_name"), name("from_user_name")) {
            return Ok((Some(to), Some(from)));
        }
    }
    Ok((None, None))
}

/// The stored event of a job's status, if still in the spool.
pub fn status_event(
    conn: &Connection,
    account: &str,
    app_id: &str,
    publish_id: &str,
    status: u32,
) -> rusqlite::Result<Option<String>> {
    let id = crate::envelope::publish_event_id(publish_id, status);
    conn.query_row(
        "SELECT body FROM events WHERE id = ?1 AND account = ?2 AND app_id = ?3 ORDER BY seq DESC LIMIT 1",
        params![id, account, app_id],
        |r| r.get(0),
    )
    .optional()
}

/// A connection of its own to the spool's publishing tables, for the API client, the
/// reconciler and the commands (the writer thread keeps the events).
pub struct JobsDb(std::sync::Mutex<Connection>);

impl JobsDb {
    /// Opens the spool in `dir` (creating or upgrading it as any user of it does).
    pub fn open(dir: &std::path::Path) -> Result<JobsDb, super::SpoolError> {
        Ok(JobsDb(std::sync::Mutex::new(super::connect(dir)?)))
    }

    /// Runs `f` on the connection on this thread (at start, before serving).
    pub fn with<T>(&self, f: impl FnOnce(&Connection) -> T) -> Result<T, super::SpoolError> {
        let conn = self
            .0
            .lock()
            .map_err(|_| super::SpoolError::Storage("the jobs connection is poisoned".into()))?;
        Ok(f(&conn))
    }

    /// Runs `f` on the connection on a blocking thread.
    pub async fn run<T: Send + 'static>(
        self: &std::sync::Arc<Self>,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, super::SpoolError> {
        let db = self.clone();
        tokio::task::spawn_blocking(move || {
            let conn = db.0.lock().map_err(|_| {
                super::SpoolError::Storage("the jobs connection is poisoned".into())
            })?;
            f(&conn).map_err(super::SpoolError::from)
        })
        .await
        .map_err(|e| super::SpoolError::Storage(e.to_string()))?
    }
}
