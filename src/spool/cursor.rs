//! Ordered sinks' delivery state: one cursor per sink ("delivered up to seq N") instead of a row per event.
//!
//! An ordered sink (stdout, log, file) takes events strictly in `seq` order, so its whole
//! state is the position of its cursor plus the failed attempts at what follows it. The
//! events it must receive are those after the cursor whose `sinks` column names it.
//! Rows in `deliveries` can still exist for an ordered sink (a spool written before
//! cursors, a sink that changed kind, a dead letter put back): they all precede the
//! cursor and are delivered first.

use super::{Pending, SpoolError};
use rusqlite::{Connection, OptionalExtension, params};

/// The `sinks` column of an event routed to these sinks: each name between newlines.
pub fn routes(sinks: &[String]) -> String {
    let mut text = String::from("\n");
    for sink in sinks {
        text.push_str(sink);
        text.push('\n');
    }
    text
}

/// How the `sinks` column names one sink.
fn route(sink: &str) -> String {
    format!("\n{sink}\n")
}

/// Where a sink's cursor stands: (seq, failed attempts since it last moved).
pub fn position(conn: &Connection, sink: &str) -> rusqlite::Result<Option<(i64, u32)>> {
    conn.prepare_cached("SELECT seq, attempts FROM cursors WHERE sink = ?1")?
        .query_row(params![sink], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()
}

/// Moves the cursor forward to `seq` (never back) and clears the failure record.
pub fn advance(conn: &Connection, sink: &str, seq: i64) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "UPDATE cursors SET seq = MAX(seq, ?2), attempts = 0, last_error = NULL WHERE sink = ?1",
    )?
    .execute(params![sink, seq])?;
    Ok(())
}

/// Records a failed attempt at the events after the cursor.
pub fn failed(conn: &Connection, sink: &str, error: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "UPDATE cursors SET attempts = attempts + 1, last_error = ?2 WHERE sink = ?1",
    )?
    .execute(params![sink, error])?;
    Ok(())
}

/// Up to `limit` events after the cursor routed to `sink`, oldest first. When none is,
/// the cursor steps over everything after it (all routed elsewhere) in one move.
///
/// `routed` is a seq no event routed to the sink is newer than: with the cursor at or
/// past it, no event is looked at. It is lowered to the newest event when that is known.
pub fn due(
    conn: &Connection,
    sink: &str,
    limit: usize,
    routed: &mut i64,
) -> Result<Vec<Pending>, SpoolError> {
    let Some((from, attempts)) = position(conn, sink)? else {
        return Err(SpoolError::Storage(format!(
            "sink `{sink}` has no cursor in the spool"
        )));
    };
    if *routed <= from {
        step_over(conn, sink, from, routed)?;
        return Ok(Vec::new());
    }
    // The route is tested inside SQLite: a stretch of events routed elsewhere is skipped
    // without handing a row of it out.
    let mut stmt = conn.prepare_cached(
        "SELECT seq, account, id, body, received_at FROM events \
         WHERE seq > ?1 AND instr(sinks, ?2) > 0 ORDER BY seq LIMIT ?3",
    )?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let events = stmt
        .query_map(params![from, route(sink), limit], |r| {
            Ok(Pending {
                seq: r.get(0)?,
                account: r.get(1)?,
                id: r.get(2)?,
                body: r.get(3)?,
                attempts,
                queued_at: received_ms(&r.get::<_, String>(4)?),
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    if events.is_empty() {
        step_over(conn, sink, from, routed)?;
    }
    Ok(events)
}

/// Moves the cursor from `from` past every event after it, none of which is routed to
/// `sink`, and records that nothing up to the newest event is.
fn step_over(conn: &Connection, sink: &str, from: i64, routed: &mut i64) -> rusqlite::Result<()> {
    let newest: Option<i64> = conn
        .prepare_cached("SELECT MAX(seq) FROM events")?
        .query_row([], |r| r.get(0))?;
    let newest = newest.unwrap_or(0).max(from);
    if newest > from {
        advance(conn, sink, newest)?;
    }
    *routed = newest;
    Ok(())
}

/// Each cursor's events still to deliver: (sink, count, oldest `received_at` in Unix ms).
pub fn backlog(conn: &Connection) -> rusqlite::Result<Vec<(String, u64, Option<i64>)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT c.sink, COUNT(e.seq), MIN(e.received_at) FROM cursors c \
         LEFT JOIN events e ON e.seq > c.seq AND instr(e.sinks, char(10) || c.sink || char(10)) > 0 \
         GROUP BY c.sink",
    )?;
    let rows = stmt.query_map([], |r| {
        let oldest: Option<String> = r.get(2)?;
        Ok((
            r.get::<_, String>(0)?,
            u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0),
            oldest.as_deref().map(received_ms),
        ))
    })?;
    rows.collect()
}

/// The lowest cursor: no event after it may be pruned.
pub fn low_water(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("SELECT MIN(seq) FROM cursors", [], |r| {
        r.get::<_, Option<i64>>(0)
    })
    .map(|low| low.unwrap_or(i64::MAX))
}

/// Matches the cursors to the configured ordered sinks when the spool opens: a new
/// ordered sink starts after the newest event (it gets what is accepted from now on); a
/// cursor whose sink is gone, or no longer ordered, becomes a `deliveries` row per
/// event it still owed, so that nothing owed is forgotten and pruning is not held back.
pub fn reconcile(conn: &mut Connection, ordered: &[String], now: i64) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let existing: Vec<(String, i64)> = tx
        .prepare("SELECT sink, seq FROM cursors")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    for (sink, seq) in &existing {
        if ordered.contains(sink) {
            continue;
        }
        tx.execute(
            "INSERT OR IGNORE INTO deliveries (sink, seq, queued_at) \
             SELECT ?1, seq, ?3 FROM events WHERE seq > ?2 AND instr(sinks, ?4) > 0",
            params![sink, seq, now, route(sink)],
        )?;
        tx.execute("DELETE FROM cursors WHERE sink = ?1", params![sink])?;
    }
    for sink in ordered {
        tx.execute(
            "INSERT OR IGNORE INTO cursors (sink, seq) \
             SELECT ?1, COALESCE(MAX(seq), 0) FROM events",
            params![sink],
        )?;
    }
    tx.commit()
}

/// `received_at` (RFC 3339) in Unix ms; 0 if it does not parse.
fn received_ms(text: &str) -> i64 {
    humantime::parse_rfc3339(text)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
