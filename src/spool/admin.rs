//! Operator access to a spool from the command line: dead letters, recent events, and each event's delivery state.
//!
//! It opens its own connection, so it works while the server runs (SQLite WAL); a running
//! server picks up re-queued dead letters within a few seconds.

use super::{DB_FILE, SpoolError, connect, unix_ms};
use rusqlite::{Connection, params};
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

/// An event a sink gave up on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub seq: i64,
    pub account: String,
    pub id: String,
    pub sink: String,
    pub attempts: i64,
    pub last_error: Option<String>,
    /// When the delivery was queued (Unix ms).
    pub queued_at: i64,
}

/// One sink's view of one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryState {
    pub sink: String,
    /// `pending`, `delivered` or `dead`.
    pub state: String,
    pub attempts: i64,
    /// Unix ms; 0 means "as soon as the sink can".
    pub next_attempt_at: i64,
    pub last_error: Option<String>,
    pub delivered_at: Option<i64>,
}

/// A stored event with its delivery state per sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRecord {
    pub seq: i64,
    pub account: String,
    pub id: String,
    pub received_at: String,
    pub body: String,
    pub deliveries: Vec<DeliveryState>,
}

/// A connection for operator commands.
pub struct Admin {
    conn: Connection,
}

impl Admin {
    /// Opens the spool in `dir`; refuses a directory that holds none.
    pub fn open(dir: &Path) -> Result<Admin, SpoolError> {
        if !dir.join(DB_FILE).is_file() {
            return Err(SpoolError::Open {
                path: dir.to_owned(),
                reason: format!("there is no {DB_FILE} (is data_dir right?)"),
            });
        }
        Ok(Admin {
            conn: connect(dir)?,
        })
    }

    /// Dead letters, oldest first, of one sink or all.
    pub fn dead_letters(&self, sink: Option<&str>) -> Result<Vec<DeadLetter>, SpoolError> {
        let mut stmt = self.conn.prepare(
            "SELECT d.seq, e.account, e.id, d.sink, d.attempts, d.last_error, d.queued_at \
             FROM deliveries d INDEXED BY deliveries_dead JOIN events e ON e.seq = d.seq \
             WHERE d.state = 'dead' AND (?1 IS NULL OR d.sink = ?1) ORDER BY d.seq, d.sink",
        )?;
        let rows = stmt.query_map(params![sink], |r| {
            Ok(DeadLetter {
                seq: r.get(0)?,
                account: r.get(1)?,
                id: r.get(2)?,
                sink: r.get(3)?,
                attempts: r.get(4)?,
                last_error: r.get(5)?,
                queued_at: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Puts dead letters back in the queue (all of a sink's, or those with the given ids),
    /// with a fresh attempt count and age. Returns how many.
    pub fn retry_dead(&self, sink: Option<&str>, ids: &[String]) -> Result<usize, SpoolError> {
        let tx = rusqlite::Transaction::new_unchecked(
            &self.conn,
            rusqlite::TransactionBehavior::Immediate,
        )?;
        let now = unix_ms();
        let sql = "UPDATE deliveries SET state = 'pending', attempts = 0, next_attempt_at = 0, \
                   queued_at = ?2 WHERE state = 'dead' AND (?1 IS NULL OR sink = ?1)";
        let mut count = 0;
        if ids.is_empty() {
            count += tx.execute(sql, params![sink, now])?;
        } else {
            let by_id = format!("{sql} AND seq IN (SELECT seq FROM events WHERE id = ?3)");
            for id in ids {
                count += tx.execute(&by_id, params![sink, now, id])?;
            }
        }
        tx.commit()?;
        Ok(count)
    }

    /// The newest events, newest first.
    pub fn recent(
        &self,
        limit: usize,
        account: Option<&str>,
    ) -> Result<Vec<EventRecord>, SpoolError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.events(
            "SELECT seq, account, id, received_at, body, sinks FROM events \
             WHERE (?1 IS NULL OR account = ?1) ORDER BY seq DESC LIMIT ?2",
            params![account, limit],
        )
    }

    /// Every stored event with this id (one per account that has it).
    pub fn find(&self, id: &str) -> Result<Vec<EventRecord>, SpoolError> {
        self.events(
            "SELECT seq, account, id, received_at, body, sinks FROM events WHERE id = ?1 ORDER BY seq",
            params![id],
        )
    }

    fn events(
        &self,
        sql: &str,
        args: impl rusqlite::Params,
    ) -> Result<Vec<EventRecord>, SpoolError> {
        let mut stmt = self.conn.prepare(sql)?;
        let rows = stmt.query_map(args, |r| {
            let record = EventRecord {
                seq: r.get(0)?,
                account: r.get(1)?,
                id: r.get(2)?,
                received_at: r.get(3)?,
                body: r.get(4)?,
                deliveries: Vec::new(),
            };
            Ok((record, r.get::<_, String>(5)?))
        })?;
        let found = rows.collect::<Result<Vec<_>, _>>()?;
        let cursors: Vec<(String, i64, i64, Option<String>)> = self
            .conn
            .prepare("SELECT sink, seq, attempts, last_error FROM cursors ORDER BY sink")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
            .collect::<Result<_, _>>()?;
        let mut stmt = self.conn.prepare(
            "SELECT sink, state, attempts, next_attempt_at, last_error, delivered_at \
             FROM deliveries WHERE seq = ?1 ORDER BY sink",
        )?;
        let mut events = Vec::with_capacity(found.len());
        for (mut event, routes) in found {
            let rows = stmt.query_map(params![event.seq], |r| {
                Ok(DeliveryState {
                    sink: r.get(0)?,
                    state: r.get(1)?,
                    attempts: r.get(2)?,
                    next_attempt_at: r.get(3)?,
                    last_error: r.get(4)?,
                    delivered_at: r.get(5)?,
                })
            })?;
            event.deliveries = rows.collect::<Result<_, _>>()?;
            // An ordered sink's state is where its cursor stands.
            for (sink, at, attempts, last_error) in &cursors {
                let routed = routes.split('\n').any(|r| r == sink);
                if !routed || event.deliveries.iter().any(|d| &d.sink == sink) {
                    continue;
                }
                let delivered = event.seq <= *at;
                event.deliveries.push(DeliveryState {
                    sink: sink.clone(),
                    state: if delivered { "delivered" } else { "pending" }.to_owned(),
                    attempts: if delivered { 0 } else { *attempts },
                    next_attempt_at: 0,
                    last_error: if delivered { None } else { last_error.clone() },
                    delivered_at: None,
                });
            }
            event.deliveries.sort_by(|a, b| a.sink.cmp(&b.sink));
            events.push(event);
        }
        Ok(events)
    }
}

/// How long ago a Unix-ms instant was, e.g. `3m 12s`.
pub fn age(ms: i64) -> String {
    let secs = unix_ms().saturating_sub(ms).max(0) / 1000;
    humantime::format_duration(Duration::from_secs(u64::try_from(secs).unwrap_or(0))).to_string()
}

/// A Unix-ms instant as RFC 3339.
pub fn timestamp(ms: i64) -> String {
    let d = Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + d).to_string()
}

/// Dead letters as a table.
pub fn render_dead_letters(list: &[DeadLetter]) -> String {
    if list.is_empty() {
        return "no dead letters\n".to_owned();
    }
    let mut out = String::from("ID\tACCOUNT\tSINK\tATTEMPTS\tAGE\tLAST ERROR\n");
    for d in list {
        let _ = writeln!(
            out,
            "{}\t{}\t{}\t{}\t{}\t{}",
            d.id,
            d.account,
            d.sink,
            d.attempts,
            age(d.queued_at),
            d.last_error.as_deref().unwrap_or("-")
        );
    }
    out
}

/// Events with one line per sink's state.
pub fn render_events(events: &[EventRecord], with_body: bool) -> String {
    let mut out = String::new();
    for e in events {
        let _ = writeln!(
            out,
            "{}  account={}  seq={}  received_at={}",
            e.id, e.account, e.seq, e.received_at
        );
        for d in &e.deliveries {
            let detail = match d.state.as_str() {
                "delivered" => d.delivered_at.map(timestamp).unwrap_or_default(),
                "pending" if d.next_attempt_at > unix_ms() => {
                    format!("next attempt {}", timestamp(d.next_attempt_at))
                }
                "pending" => "due now".to_owned(),
                _ => String::new(),
            };
            let _ = writeln!(
                out,
                "  {:<16} {:<9} attempts={:<3} {}{}",
                d.sink,
                d.state,
                d.attempts,
                detail,
                d.last_error
                    .as_deref()
                    .map(|e| format!("  last error: {e}"))
                    .unwrap_or_default()
            );
        }
        if with_body {
            let _ = writeln!(out, "  {}", e.body);
        }
    }
    if events.is_empty() {
        out.push_str("no events\n");
    }
    out
}
