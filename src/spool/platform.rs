//! Third-party platforms in the spool: component tickets, authorized accounts (authorization codes to exchange, refresh tokens), and what an authorization event changes, in the event's transaction.

use super::jobs;
use crate::secret::Secret;
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

/// Schema 7: jobs of authorized accounts (keyed by their appid too, and ended by a
/// revocation), and the authorized accounts of each platform.
pub(super) const SCHEMA_7: &str = "
CREATE TABLE jobs_7 (
    account       TEXT NOT NULL,
    -- The authorized account's appid for a platform's job, else empty.
    app_id        TEXT NOT NULL DEFAULT '',
    publish_id    TEXT NOT NULL,
    media_id      TEXT,
    submitted_at  INTEGER NOT NULL,
    origin        TEXT NOT NULL,
    status        INTEGER,
    status_source TEXT,
    status_at     INTEGER,
    polls         INTEGER NOT NULL DEFAULT 0,
    next_poll_at  INTEGER,
    abandoned_at  INTEGER,
    last_error    TEXT,
    -- Why it ended without a final status: max_age or revoked.
    ended_by      TEXT,
    PRIMARY KEY (account, app_id, publish_id)
) WITHOUT ROWID;
INSERT INTO jobs_7 (account, publish_id, media_id, submitted_at, origin, status, status_source,
    status_at, polls, next_poll_at, abandoned_at, last_error, ended_by)
    SELECT account, publish_id, media_id, submitted_at, origin, status, status_source,
    status_at, polls, next_poll_at, abandoned_at, last_error,
    CASE WHEN abandoned_at IS NULL THEN NULL ELSE 'max_age' END FROM jobs;
DROP TABLE jobs;
ALTER TABLE jobs_7 RENAME TO jobs;
CREATE INDEX jobs_due ON jobs (account, next_poll_at) WHERE next_poll_at IS NOT NULL;
CREATE TABLE authorizers (
    account         TEXT NOT NULL,
    app_id          TEXT NOT NULL,
    -- CreateTime of the newest authorization event applied: an older one changes nothing.
    event_time      INTEGER NOT NULL,
    -- The secret that renews the access token; NULL before the code is exchanged and after a revocation.
    refresh_token   TEXT,
    -- An authorization code waiting for api_query_auth, until code_expires_at (Unix ms).
    pending_code    TEXT,
    code_expires_at INTEGER,
    code_tries      INTEGER NOT NULL DEFAULT 0,
    next_try_at     INTEGER,
    -- The permission sets granted (func_info ids), as a JSON list.
    func_info       TEXT,
    authorized_at   INTEGER,
    refreshed_at    INTEGER,
    revoked_at      INTEGER,
    last_error      TEXT,
    PRIMARY KEY (account, app_id)
) WITHOUT ROWID;
";

/// Where an authorized account stands, as `wxhook platform authorizers` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthorizerState {
    /// An authorization code is waiting to be exchanged.
    Pending,
    /// A refresh token is stored: the account can be called.
    Authorized,
    /// The account revoked the authorization.
    Revoked,
    /// The code expired before it could be exchanged: the account must authorize again.
    Failed,
}

impl AuthorizerState {
    /// The state of an `authorizers` row: whether it holds a refresh token, a code
    /// waiting, a revocation.
    fn of(refresh: bool, pending: bool, revoked: bool) -> AuthorizerState {
        match (refresh, pending, revoked) {
            (true, _, _) => AuthorizerState::Authorized,
            (false, true, _) => AuthorizerState::Pending,
            (false, false, true) => AuthorizerState::Revoked,
            (false, false, false) => AuthorizerState::Failed,
        }
    }
}

/// One authorized account of a platform, without its tokens.
#[derive(Debug, Clone, Serialize)]
pub struct Authorizer {
    pub account: String,
    pub app_id: String,
    pub state: AuthorizerState,
    /// The permission sets granted (`func_info` ids; 7 is publishing).
    pub func_info: Vec<u32>,
    #[serde(serialize_with = "jobs::optional_rfc3339")]
    pub authorized_at: Option<i64>,
    /// When the access token was last obtained (exchange or refresh).
    #[serde(serialize_with = "jobs::optional_rfc3339")]
    pub refreshed_at: Option<i64>,
    /// Until when the stored access token is used (absent: none stored).
    #[serde(serialize_with = "jobs::optional_rfc3339")]
    pub access_token_until: Option<i64>,
    #[serde(serialize_with = "jobs::optional_rfc3339")]
    pub revoked_at: Option<i64>,
    pub last_error: Option<String>,
}

/// What a platform's authorization event changes, applied with the event.
#[derive(Debug, Clone)]
pub enum PlatformNote {
    /// `component_verify_ticket`: kept if it is the newest.
    Ticket { ticket: Secret, create_time: u64 },
    /// `authorized` / `updateauthorized`: a code for wxhook to exchange.
    Authorized {
        app_id: String,
        code: Secret,
        /// `AuthorizationCodeExpiredTime` (Unix seconds).
        code_expires: Option<u64>,
        create_time: u64,
    },
    /// `unauthorized`: the account's tokens dropped, its pending jobs ended.
    Unauthorized { app_id: String, create_time: u64 },
}

/// The `tokens` key of a platform's `component_access_token`.
pub fn component_token_key(account: &str, component_app_id: &str) -> String {
    format!("{account}\ncomponent\n{component_app_id}")
}

/// The `tokens` key of an authorized account's `authorizer_access_token`.
pub fn authorizer_token_key(account: &str, app_id: &str) -> String {
    format!("{account}\nauthorizer\n{app_id}")
}

fn secs_to_ms(secs: u64) -> i64 {
    i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX)
}

/// Applies `note` of a newly stored event of platform `account`.
pub(super) fn apply(
    conn: &Connection,
    account: &str,
    note: &PlatformNote,
    now: i64,
) -> rusqlite::Result<()> {
    match note {
        PlatformNote::Ticket {
            ticket,
            create_time,
        } => {
            conn.prepare_cached(
                "INSERT INTO component_tickets (account, ticket, create_time, stored_at) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (account) DO UPDATE SET ticket = excluded.ticket, create_time = excluded.create_time, \
                 stored_at = excluded.stored_at WHERE excluded.create_time >= component_tickets.create_time",
            )?
            .execute(params![
                account,
                ticket.expose(),
                i64::try_from(*create_time).unwrap_or(i64::MAX),
                now
            ])?;
            // Codes waiting for a ticket are exchanged now rather than at their next try.
            conn.prepare_cached(
                "UPDATE authorizers SET next_try_at = ?2 WHERE account = ?1 AND pending_code IS NOT NULL",
            )?
            .execute(params![account, now])?;
        }
        PlatformNote::Authorized {
            app_id,
            code,
            code_expires,
            create_time,
        } => {
            // Without an expiry, WeChat's documented hour.
            let expires = code_expires.map_or(now + 3_600_000, secs_to_ms);
            conn.prepare_cached(
                "INSERT INTO authorizers (account, app_id, event_time, pending_code, code_expires_at, next_try_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
                 ON CONFLICT (account, app_id) DO UPDATE SET event_time = excluded.event_time, \
                 pending_code = excluded.pending_code, code_expires_at = excluded.code_expires_at, \
                 code_tries = 0, next_try_at = excluded.next_try_at, revoked_at = NULL, last_error = NULL \
                 WHERE excluded.event_time >= authorizers.event_time",
            )?
            .execute(params![account, app_id, secs_to_ms(*create_time), code.expose(), expires, now])?;
        }
        PlatformNote::Unauthorized {
            app_id,
            create_time,
        } => {
            let changed = conn
                .prepare_cached(
                    "INSERT INTO authorizers (account, app_id, event_time, revoked_at) VALUES (?1, ?2, ?3, ?4) \
                     ON CONFLICT (account, app_id) DO UPDATE SET event_time = excluded.event_time, \
                     refresh_token = NULL, pending_code = NULL, next_try_at = NULL, revoked_at = excluded.revoked_at \
                     WHERE excluded.event_time >= authorizers.event_time",
                )?
                .execute(params![account, app_id, secs_to_ms(*create_time), now])?;
            if changed == 1 {
                conn.prepare_cached("DELETE FROM tokens WHERE key = ?1")?
                    .execute(params![authorizer_token_key(account, app_id)])?;
                end_revoked_jobs(conn, account, app_id, now)?;
            }
        }
    }
    Ok(())
}

/// Ends the jobs of a revoked account that have no final status, each reported once.
fn end_revoked_jobs(
    conn: &Connection,
    account: &str,
    app_id: &str,
    now: i64,
) -> rusqlite::Result<()> {
    let mut ended = conn.prepare_cached(
        "UPDATE jobs SET abandoned_at = ?3, next_poll_at = NULL, ended_by = 'revoked', \
         last_error = 'the account revoked its authorization of the platform' \
         WHERE account = ?1 AND app_id = ?2 AND abandoned_at IS NULL AND (status IS NULL OR status = 1) \
         RETURNING publish_id, media_id",
    )?;
    let rows = ended.query_map(params![account, app_id, now], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?))
    })?;
    for row in rows {
        let (publish_id, media_id) = row?;
        metrics::counter!(crate::telemetry::JOBS_ABANDONED, "account" => account.to_owned(), "reason" => "revoked").increment(1);
        tracing::warn!(
            account,
            app_id,
            publish_id,
            media_id = media_id.as_deref().unwrap_or(""),
            "publish job ended: the account revoked its authorization of the platform"
        );
    }
    Ok(())
}

/// The platform's newest ticket.
pub fn ticket(conn: &Connection, account: &str) -> rusqlite::Result<Option<Secret>> {
    conn.query_row(
        "SELECT ticket FROM component_tickets WHERE account = ?1",
        params![account],
        |r| r.get::<_, String>(0),
    )
    .optional()
    .map(|t| t.map(Secret::new))
}

/// An authorization code waiting to be exchanged.
#[derive(Debug, Clone)]
pub struct PendingCode {
    pub app_id: String,
    pub code: Secret,
    pub expires_at: i64,
    pub tries: u32,
}

/// Codes of `account` due for an exchange at `now`.
pub fn due_codes(conn: &Connection, account: &str, now: i64) -> rusqlite::Result<Vec<PendingCode>> {
    let mut stmt = conn.prepare_cached(
        "SELECT app_id, pending_code, code_expires_at, code_tries FROM authorizers \
         WHERE account = ?1 AND pending_code IS NOT NULL AND next_try_at <= ?2 ORDER BY next_try_at LIMIT 20",
    )?;
    let rows = stmt.query_map(params![account, now], pending_row)?;
    rows.collect()
}

/// The code of `app_id` waiting to be exchanged, whenever its next try is.
pub fn pending_code(
    conn: &Connection,
    account: &str,
    app_id: &str,
) -> rusqlite::Result<Option<PendingCode>> {
    conn.query_row(
        "SELECT app_id, pending_code, code_expires_at, code_tries FROM authorizers \
         WHERE account = ?1 AND app_id = ?2 AND pending_code IS NOT NULL",
        params![account, app_id],
        pending_row,
    )
    .optional()
}

fn pending_row(r: &rusqlite::Row) -> rusqlite::Result<PendingCode> {
    Ok(PendingCode {
        app_id: r.get(0)?,
        code: Secret::new(r.get::<_, String>(1)?),
        expires_at: r.get::<_, Option<i64>>(2)?.unwrap_or(0),
        tries: u32::try_from(r.get::<_, i64>(3)?).unwrap_or(u32::MAX),
    })
}

/// A code exchanged: the refresh token kept, the code gone (unless a newer event replaced it).
pub fn exchanged(
    conn: &Connection,
    account: &str,
    app_id: &str,
    code: &str,
    refresh_token: &str,
    func_info: &[u32],
    now: i64,
) -> rusqlite::Result<bool> {
    let func = serde_json::to_string(func_info).unwrap_or_else(|_| "[]".into());
    let changed = conn.execute(
        "UPDATE authorizers SET refresh_token = ?4, func_info = ?5, pending_code = NULL, next_try_at = NULL, \
         code_expires_at = NULL, authorized_at = ?6, refreshed_at = ?6, last_error = NULL \
         WHERE account = ?1 AND app_id = ?2 AND pending_code = ?3",
        params![account, app_id, code, refresh_token, func, now],
    )?;
    Ok(changed == 1)
}

/// An exchange that failed: tried again at `next_try_at`, or given up (`None`) when the
/// code expired. True when it was given up now (so it is reported once).
pub fn exchange_failed(
    conn: &Connection,
    account: &str,
    app_id: &str,
    code: &str,
    error: &str,
    next_try_at: Option<i64>,
) -> rusqlite::Result<bool> {
    let changed = match next_try_at {
        Some(at) => conn.execute(
            "UPDATE authorizers SET code_tries = code_tries + 1, next_try_at = ?4, last_error = ?5 \
             WHERE account = ?1 AND app_id = ?2 AND pending_code = ?3",
            params![account, app_id, code, at, error],
        )?,
        None => conn.execute(
            "UPDATE authorizers SET pending_code = NULL, next_try_at = NULL, last_error = ?4 \
             WHERE account = ?1 AND app_id = ?2 AND pending_code = ?3",
            params![account, app_id, code, error],
        )?,
    };
    Ok(next_try_at.is_none() && changed == 1)
}

/// The refresh token of an authorized account, or why there is none.
pub fn refresh_token(
    conn: &Connection,
    account: &str,
    app_id: &str,
) -> rusqlite::Result<Result<Secret, AuthorizerState>> {
    let row: Option<(Option<String>, Option<String>, Option<i64>)> = conn
        .query_row(
            "SELECT refresh_token, pending_code, revoked_at FROM authorizers WHERE account = ?1 AND app_id = ?2",
            params![account, app_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    Ok(match row {
        Some((Some(token), _, _)) => Ok(Secret::new(token)),
        Some((None, pending, revoked_at)) => Err(AuthorizerState::of(
            false,
            pending.is_some(),
            revoked_at.is_some(),
        )),
        None => Err(AuthorizerState::Failed),
    })
}

/// A refresh: the new refresh token replaces the old one (only while still authorized).
pub fn refreshed(
    conn: &Connection,
    account: &str,
    app_id: &str,
    refresh_token: &str,
    now: i64,
) -> rusqlite::Result<bool> {
    let changed = conn.execute(
        "UPDATE authorizers SET refresh_token = ?3, refreshed_at = ?4, last_error = NULL \
         WHERE account = ?1 AND app_id = ?2 AND refresh_token IS NOT NULL",
        params![account, app_id, refresh_token, now],
    )?;
    Ok(changed == 1)
}

/// Records why a refresh failed (shown by `wxhook platform authorizers`).
pub fn refresh_failed(
    conn: &Connection,
    account: &str,
    app_id: &str,
    error: &str,
) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE authorizers SET last_error = ?3 WHERE account = ?1 AND app_id = ?2",
        params![account, app_id, error],
    )?;
    Ok(())
}

/// The authorized accounts (of `account`, or of every platform), by platform and appid.
pub fn authorizers(conn: &Connection, account: Option<&str>) -> rusqlite::Result<Vec<Authorizer>> {
    let mut stmt = conn.prepare(
        "SELECT account, app_id, refresh_token IS NOT NULL, pending_code IS NOT NULL, func_info, \
         authorized_at, refreshed_at, revoked_at, last_error FROM authorizers \
         WHERE (?1 IS NULL OR account = ?1) ORDER BY account, app_id",
    )?;
    let rows = stmt.query_map(params![account], |r| {
        let (refresh, pending): (bool, bool) = (r.get(2)?, r.get(3)?);
        let revoked_at: Option<i64> = r.get(7)?;
        let func: Option<String> = r.get(4)?;
        Ok(Authorizer {
            account: r.get(0)?,
            app_id: r.get(1)?,
            state: AuthorizerState::of(refresh, pending, revoked_at.is_some()),
            func_info: func
                .and_then(|f| serde_json::from_str(&f).ok())
                .unwrap_or_default(),
            authorized_at: r.get(5)?,
            refreshed_at: r.get(6)?,
            access_token_until: None,
            revoked_at,
            last_error: r.get(8)?,
        })
    })?;
    let mut found = rows.collect::<rusqlite::Result<Vec<_>>>()?;
    // The stored access token's renewal time, for an account that can be called.
    let mut until = conn.prepare("SELECT expires_at FROM tokens WHERE key = ?1")?;
    for a in found
        .iter_mut()
        .filter(|a| a.state == AuthorizerState::Authorized)
    {
        let key = authorizer_token_key(&a.account, &a.app_id);
        a.access_token_until = until.query_row(params![key], |r| r.get(0)).optional()?;
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_7_keeps_every_job_of_schema_4() {
        let conn = Connection::open_in_memory().expect("sqlite");
        conn.execute_batch(jobs::SCHEMA_4).expect("schema 4");
        conn.execute_batch(
            "INSERT INTO jobs (account, publish_id, media_id, submitted_at, origin, next_poll_at) \
             VALUES ('main', '100', 'm1', 1, 'submit', 5); \
             INSERT INTO jobs (account, publish_id, submitted_at, origin, abandoned_at) \
             VALUES ('main', '101', 2, 'track', 9);",
        )
        .expect("old jobs");
        conn.execute_batch(SCHEMA_7).expect("schema 7");
        let pending = jobs::job(&conn, "main", "", "100")
            .expect("read")
            .expect("kept");
        assert_eq!(
            (
                pending.media_id.as_deref(),
                pending.next_poll_at,
                pending.ended_by
            ),
            (Some("m1"), Some(5), None)
        );
        let abandoned = jobs::job(&conn, "main", "", "101")
            .expect("read")
            .expect("kept");
        assert_eq!(abandoned.ended_by.as_deref(), Some("max_age"));
        assert!(
            jobs::job(&conn, "main", "wx0000000000000000", "100")
                .expect("read")
                .is_none()
        );
    }

    #[test]
    fn an_older_authorization_event_changes_nothing() {
        let conn = Connection::open_in_memory().expect("sqlite");
        conn.execute_batch(jobs::SCHEMA_4).expect("schema 4");
        conn.execute_batch(SCHEMA_7).expect("schema 7");
        let app_id = "wxf8b4f85f3a794e77".to_owned();
        let revoke = PlatformNote::Unauthorized {
            app_id: app_id.clone(),
            create_time: 200,
        };
        apply(&conn, "p", &revoke, 1).expect("revoked");
        let late = PlatformNote::Authorized {
            app_id: app_id.clone(),
            code: Secret::new("code".to_owned()),
            code_expires: None,
            create_time: 100,
        };
        apply(&conn, "p", &late, 2).expect("applied");
        let listed = authorizers(&conn, None).expect("listed");
        assert_eq!(listed[0].state, AuthorizerState::Revoked);
        assert!(due_codes(&conn, "p", 10).expect("codes").is_empty());
    }
}
