//! The spool's writer thread: group commit of appends and delivery outcomes, and pruning past retention.

use super::{
    Appended, Command, Due, NewEvent, Pending, Reply, SpoolError, SpoolOptions, SpoolStats, unix_ms,
};
use super::{Backlog, cursor, jobs};
use rusqlite::{Connection, OptionalExtension, params};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Most requests folded into one transaction.
const MAX_GROUP: usize = 512;
/// Most events removed by one pruning transaction (keeps it short).
const PRUNE_BATCH: i64 = 5000;

/// A finished request whose answer waits for the commit.
enum Done {
    Append(Reply<Appended>, Result<Appended, SpoolError>),
    Due(Reply<Due>, Result<Due, SpoolError>),
    Unit(Reply<()>, Result<(), SpoolError>),
    Backlog(Reply<Vec<Backlog>>, Result<Vec<Backlog>, SpoolError>),
}

impl Done {
    fn answer(self) {
        match self {
            Done::Append(reply, result) => drop(reply.send(result)),
            Done::Due(reply, result) => drop(reply.send(result)),
            Done::Unit(reply, result) => drop(reply.send(result)),
            Done::Backlog(reply, result) => drop(reply.send(result)),
        }
    }

    fn fail(self, reason: &str) {
        let err = SpoolError::Storage(reason.to_owned());
        match self {
            Done::Append(reply, _) => drop(reply.send(Err(err))),
            Done::Due(reply, _) => drop(reply.send(Err(err))),
            Done::Unit(reply, _) => drop(reply.send(Err(err))),
            Done::Backlog(reply, _) => drop(reply.send(Err(err))),
        }
    }
}

pub(super) struct Writer {
    conn: Connection,
    notifiers: Arc<HashMap<String, Arc<Notify>>>,
    stats: Arc<SpoolStats>,
    options: SpoolOptions,
    ordered: Ordered,
    jobs: jobs::JobsGate,
}

/// Sinks delivered in order by cursor (the others get a `deliveries` row per event), each
/// with a seq no event routed to it is newer than (`i64::MAX` until known): while its
/// cursor is past that, finding what is due needs no scan.
type Ordered = HashMap<String, i64>;

impl Writer {
    pub(super) fn new(
        conn: Connection,
        notifiers: Arc<HashMap<String, Arc<Notify>>>,
        stats: Arc<SpoolStats>,
        options: SpoolOptions,
        ordered: Vec<String>,
    ) -> Writer {
        Writer {
            conn,
            notifiers,
            stats,
            options,
            ordered: ordered.into_iter().map(|s| (s, i64::MAX)).collect(),
            jobs: jobs::JobsGate::new(),
        }
    }

    pub(super) fn run(mut self, rx: mpsc::Receiver<Command>) {
        let mut group = Vec::with_capacity(MAX_GROUP);
        let mut next_prune = Instant::now();
        loop {
            if Instant::now() >= next_prune {
                self.prune();
                next_prune = Instant::now() + self.options.prune_every;
            }
            let wait = next_prune.saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait.max(Duration::from_millis(1))) {
                Ok(first) => group.push(first),
                Err(mpsc::RecvTimeoutError::Timeout) => continue,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            while group.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(next) => group.push(next),
                    Err(_) => break,
                }
            }
            if self.run_group(&mut group) {
                break;
            }
        }
    }

    /// Runs a group of requests in one transaction; true when asked to shut down.
    fn run_group(&mut self, group: &mut Vec<Command>) -> bool {
        let mut shutdown = false;
        let started = Instant::now();
        let size = group.len();
        let mut done = Vec::with_capacity(group.len());
        // The sink lists of the stored events: one per account, so a handful per group.
        let mut woken: Vec<Arc<[String]>> = Vec::new();
        let now = unix_ms();
        let ordered = &mut self.ordered;
        let gate = &mut self.jobs;
        let tx = &self.conn;
        let publishes = group
            .iter()
            .any(|c| matches!(c, Command::Append(e, _) if e.publish.is_some()));
        let outcome = begin(tx).and_then(|()| {
            if publishes {
                gate.refresh(tx)?;
            }
            let mut failure = None;
            for command in group.drain(..) {
                let finished = match command {
                    Command::Append(event, reply) => {
                        let result = append(
                            tx,
                            &event,
                            now,
                            ordered,
                            self.options.reconcile_after,
                            &mut gate.any,
                        );
                        if let Ok(Appended::Stored(seq)) = result {
                            for sink in event.sinks.iter() {
                                if let Some(newest) = ordered.get_mut(sink) {
                                    *newest = seq.max(*newest);
                                }
                            }
                            if !woken.iter().any(|w| Arc::ptr_eq(w, &event.sinks)) {
                                woken.push(Arc::clone(&event.sinks));
                            }
                        }
                        Done::Append(reply, result)
                    }
                    Command::Due {
                        sink,
                        limit,
                        now,
                        reply,
                    } => Done::Due(reply, due(tx, &sink, limit, now, ordered)),
                    Command::Delivered { sink, seqs, reply } => Done::Unit(
                        reply,
                        split(tx, &sink, seqs, ordered).and_then(|(rows, after)| {
                            mark_delivered(tx, &sink, &rows, now)?;
                            match after.iter().max() {
                                Some(&last) => Ok(cursor::advance(tx, &sink, last)?),
                                None => Ok(()),
                            }
                        }),
                    ),
                    Command::Failed {
                        sink,
                        seqs,
                        error,
                        next_attempt_at,
                        reply,
                    } => Done::Unit(
                        reply,
                        split(tx, &sink, seqs, ordered).and_then(|(rows, after)| {
                            mark_failed(tx, &sink, &rows, &error, next_attempt_at)?;
                            match after.is_empty() {
                                true => Ok(()),
                                false => Ok(cursor::failed(tx, &sink, &error)?),
                            }
                        }),
                    ),
                    Command::Dead {
                        sink,
                        seqs,
                        error,
                        reply,
                    } => Done::Unit(reply, mark_dead(tx, &sink, &seqs, &error)),
                    Command::Backlog(reply) => Done::Backlog(reply, backlog(tx)),
                    Command::Shutdown => {
                        shutdown = true;
                        continue;
                    }
                };
                if failure.is_none() {
                    failure = match &finished {
                        Done::Append(_, Err(e)) | Done::Unit(_, Err(e)) => Some(e.to_string()),
                        _ => None,
                    };
                }
                done.push(finished);
            }
            match failure {
                // Nothing of a group with a failed write is kept: every writer in it hears of it.
                Some(reason) => {
                    rollback(tx);
                    Err(SpoolError::Storage(reason))
                }
                None => commit(tx),
            }
        });
        crate::telemetry::commit(started.elapsed(), size);
        self.stats
            .writable
            .store(outcome.is_ok(), Ordering::Relaxed);
        match outcome {
            Ok(()) => {
                self.stats.commits.fetch_add(1, Ordering::Relaxed);
                for d in done {
                    if let Done::Append(_, Ok(Appended::Stored(_))) = &d {
                        self.stats.stored.fetch_add(1, Ordering::Relaxed);
                    }
                    d.answer();
                }
                let sinks: HashSet<&String> = woken.iter().flat_map(|s| s.iter()).collect();
                for sink in sinks {
                    if let Some(n) = self.notifiers.get(sink) {
                        n.notify_one();
                    }
                }
            }
            Err(e) => {
                let reason = e.to_string();
                tracing::error!(error = %reason, "spool transaction failed; nothing of it was kept");
                for d in done {
                    d.fail(&reason);
                }
            }
        }
        shutdown
    }

    /// Removes events delivered to every sink longer ago than the retention period, and
    /// seen signatures past their time to live.
    fn prune(&mut self) {
        let seen_cutoff =
            unix_ms() / 1000 - i64::try_from(self.options.seen_ttl.as_secs()).unwrap_or(i64::MAX);
        if let Err(e) = self.conn.execute(
            "DELETE FROM seen_log WHERE timestamp < ?1",
            params![seen_cutoff],
        ) {
            tracing::warn!(error = %e, "pruning seen signatures failed; will try again later");
        }
        let cutoff = unix_ms()
            .saturating_sub(i64::try_from(self.options.retention.as_millis()).unwrap_or(i64::MAX));
        // Settled jobs go with their events.
        match jobs::prune(&self.conn, cutoff).and_then(|_| self.jobs.recount(&self.conn)) {
            Ok(()) => {}
            Err(e) => {
                tracing::warn!(error = %e, "pruning publish jobs failed; will try again later")
            }
        }
        // Oldest first, in bounded chunks: an event goes once it was received and every
        // delivery of it done before the cutoff. Dead letters and pending events stay. The
        // scan ends at the first event received after the cutoff: nothing later can go.
        let cutoff_text = humantime::format_rfc3339_millis(
            std::time::UNIX_EPOCH + Duration::from_millis(u64::try_from(cutoff).unwrap_or(0)),
        )
        .to_string();
        // Nothing an ordered sink has still to take may go.
        let low = match cursor::low_water(&self.conn) {
            Ok(low) => low,
            Err(e) => {
                tracing::warn!(error = %e, "pruning the spool failed; will try again later");
                return;
            }
        };
        let mut from: i64 = 0;
        loop {
            let next_received: rusqlite::Result<Option<String>> = self
                .conn
                .query_row(
                    "SELECT received_at FROM events WHERE seq > ?1 ORDER BY seq LIMIT 1",
                    params![from],
                    |r| r.get(0),
                )
                .optional();
            match next_received {
                Ok(Some(received)) if received < cutoff_text => {}
                Ok(_) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "pruning the spool failed; will try again later");
                    return;
                }
            }
            let chunk = self.conn.query_row(
                "SELECT MAX(seq) FROM (SELECT seq FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2)",
                params![from, PRUNE_BATCH],
                |r| r.get::<_, Option<i64>>(0),
            );
            let to = match chunk {
                Ok(Some(to)) if from < low => to.min(low),
                Ok(Some(_)) => return,
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "pruning the spool failed; will try again later");
                    return;
                }
            };
            let removed = self.conn.execute(
                "DELETE FROM events WHERE seq > ?1 AND seq <= ?2 AND received_at < ?4 AND NOT EXISTS \
                 (SELECT 1 FROM deliveries d WHERE d.seq = events.seq \
                  AND (d.state <> 'delivered' OR d.delivered_at >= ?3))",
                params![from, to, cutoff, cutoff_text],
            );
            match removed {
                Ok(n) => {
                    self.stats
                        .pruned
                        .fetch_add(u64::try_from(n).unwrap_or(0), Ordering::Relaxed);
                    if n > 0 {
                        tracing::info!(
                            events = n,
                            "pruned events delivered before the retention period"
                        );
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "pruning the spool failed; will try again later");
                    return;
                }
            }
            from = to;
        }
    }
}

/// Starts the group's transaction. IMMEDIATE takes the write lock up front, waiting
/// (busy_timeout) for an operator's command; a deferred transaction could fail to upgrade
/// and drop the whole group. The statement is prepared once, not parsed per group.
fn begin(conn: &Connection) -> Result<(), SpoolError> {
    conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
    Ok(())
}

/// Commits the group's transaction; if that fails, nothing of it is kept.
fn commit(conn: &Connection) -> Result<(), SpoolError> {
    let committed = conn
        .prepare_cached("COMMIT")
        .and_then(|mut stmt| stmt.execute([]));
    committed.map(drop).map_err(|e| {
        rollback(conn);
        SpoolError::from(e)
    })
}

/// Ends a transaction without keeping anything of it (a no-op if SQLite already did).
fn rollback(conn: &Connection) {
    if !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
}

/// Logs what each sink still has to deliver, and pending events of sinks no longer configured.
pub(super) fn report_backlog(conn: &Connection, sinks: &[String]) -> Result<(), SpoolError> {
    for b in backlog(conn)? {
        let configured = sinks.contains(&b.sink);
        if b.pending > 0 && configured {
            tracing::info!(sink = %b.sink, pending = b.pending, "resuming delivery of events accepted before the restart");
        } else if b.pending > 0 {
            tracing::warn!(
                sink = %b.sink,
                pending = b.pending,
                "events are pending for a sink that is no longer configured; restore a [[sinks]] entry with this name to deliver them"
            );
        }
        if b.dead > 0 {
            tracing::warn!(sink = %b.sink, dead_letters = b.dead, "dead letters are waiting; see `wxhook dead-letters list`");
        }
    }
    Ok(())
}

fn append(
    conn: &Connection,
    event: &NewEvent,
    now: i64,
    ordered: &Ordered,
    reconcile_after: Duration,
    jobs_any: &mut bool,
) -> Result<Appended, SpoolError> {
    // The event of a followed publish job names the job (the push itself has no media_id).
    let mut body = std::borrow::Cow::Borrowed(event.body.as_str());
    if let Some(note) = event.publish.as_ref().filter(|_| *jobs_any)
        && let Some((media_id, submitted_at)) =
            jobs::job_ref(conn, &event.account, &event.app_id, &note.publish_id)?
        && let Some(open) = event.body.strip_suffix('}')
    {
        let job = serde_json::json!({
            "media_id": media_id,
            "submitted_at": jobs::format_ms(submitted_at),
        });
        body = std::borrow::Cow::Owned(format!("{open},\"job\":{job}}}"));
    }
    // `changes()` and `last_insert_rowid()` rather than `RETURNING`, which costs an
    // ephemeral table per statement.
    let inserted = conn
        .prepare_cached(
            "INSERT INTO events (account, app_id, id, received_at, body, sinks) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (account, app_id, id) DO NOTHING",
        )?
        .execute(params![
            event.account,
            event.app_id,
            event.id,
            event.received_at,
            body,
            cursor::routes(&event.sinks)
        ])?;
    let seq = (inserted == 1).then(|| conn.last_insert_rowid());
    // A duplicate too: a job followed after its push was stored learns its status here.
    if let Some(note) = &event.publish {
        let first_poll_at =
            now + i64::try_from(reconcile_after.as_millis()).unwrap_or(i64::MAX / 2);
        jobs::status_stored(
            conn,
            &event.account,
            &event.app_id,
            &note.publish_id,
            note.status,
            note.source,
            seq.is_some(),
            now,
            first_poll_at,
            jobs_any,
        )?;
    }
    // With the event, once: a retry of an authorization must not bring back a used code.
    if let Some(note) = event.platform.as_ref().filter(|_| seq.is_some()) {
        super::platform::apply(conn, &event.account, note, now)?;
    }
    if let Some(seen) = &event.seen {
        conn.prepare_cached(
            "INSERT INTO seen_log (account, signature, timestamp, body_hash) VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![
            seen.account,
            seen.signature,
            i64::try_from(seen.timestamp).unwrap_or(i64::MAX),
            &seen.body_hash[..]
        ])?;
    }
    let Some(seq) = seq else {
        return Ok(Appended::Duplicate);
    };
    let mut insert =
        conn.prepare_cached("INSERT INTO deliveries (sink, seq, queued_at) VALUES (?1, ?2, ?3)")?;
    // Ordered sinks find the event after their cursor; the others get a row each.
    for sink in event.sinks.iter().filter(|s| !ordered.contains_key(*s)) {
        insert.execute(params![sink, seq, now])?;
    }
    Ok(Appended::Stored(seq))
}

fn due(
    conn: &Connection,
    sink: &str,
    limit: usize,
    now: i64,
    ordered: &mut Ordered,
) -> Result<Due, SpoolError> {
    let queued = queued(conn, sink, limit, now)?;
    if let Some(newest) = ordered.get_mut(sink)
        && queued.events.is_empty()
    {
        return Ok(Due {
            events: cursor::due(conn, sink, limit, newest)?,
            next_at: None,
        });
    }
    Ok(queued)
}

/// Splits an ordered sink's events into those with a `deliveries` row (at or before its
/// cursor) and those after its cursor; a scheduled sink's are all rows.
fn split(
    conn: &Connection,
    sink: &str,
    seqs: Vec<i64>,
    ordered: &Ordered,
) -> Result<(Vec<i64>, Vec<i64>), SpoolError> {
    if !ordered.contains_key(sink) {
        return Ok((seqs, Vec::new()));
    }
    let at = cursor::position(conn, sink)?.map_or(i64::MAX, |(seq, _)| seq);
    Ok(seqs.into_iter().partition(|&seq| seq <= at))
}

/// Events with a `deliveries` row due for `sink`.
fn queued(conn: &Connection, sink: &str, limit: usize, now: i64) -> Result<Due, SpoolError> {
    // `deliveries_due` is ordered by schedule: events never tried (0) in arrival order, then
    // retries by time. Naming the index keeps the planner off the primary key, which would
    // walk every delivered row of the sink.
    let mut stmt = conn.prepare_cached(
        "SELECT d.seq, e.account, e.id, e.body, d.attempts, d.queued_at \
         FROM deliveries d INDEXED BY deliveries_due JOIN events e ON e.seq = d.seq \
         WHERE d.sink = ?1 AND d.state = 'pending' AND d.next_attempt_at <= ?2 \
         ORDER BY d.next_attempt_at, d.seq LIMIT ?3",
    )?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = stmt.query_map(params![sink, now, limit], |r| {
        Ok(Pending {
            seq: r.get(0)?,
            account: r.get(1)?,
            id: r.get(2)?,
            body: r.get(3)?,
            attempts: r.get(4)?,
            queued_at: r.get(5)?,
        })
    })?;
    let events = rows.collect::<Result<Vec<_>, _>>()?;
    let next_at = conn
        .prepare_cached(
            "SELECT MIN(next_attempt_at) FROM deliveries INDEXED BY deliveries_due \
             WHERE sink = ?1 AND state = 'pending' AND next_attempt_at > ?2",
        )?
        .query_row(params![sink, now], |r| r.get::<_, Option<i64>>(0))?;
    Ok(Due { events, next_at })
}

fn mark_delivered(conn: &Connection, sink: &str, seqs: &[i64], now: i64) -> Result<(), SpoolError> {
    let mut delivered = conn.prepare_cached(
        "UPDATE deliveries SET state = 'delivered', attempts = attempts + 1, \
         delivered_at = ?3, last_error = NULL WHERE sink = ?1 AND seq = ?2",
    )?;
    for seq in seqs {
        delivered.execute(params![sink, seq, now])?;
    }
    Ok(())
}

fn backlog(conn: &Connection) -> Result<Vec<Backlog>, SpoolError> {
    let mut sinks: BTreeMap<String, Backlog> = BTreeMap::new();
    fn of(sinks: &mut BTreeMap<String, Backlog>, sink: String) -> &mut Backlog {
        sinks.entry(sink.clone()).or_insert(Backlog {
            sink,
            pending: 0,
            oldest_queued_at: None,
            dead: 0,
        })
    }
    let mut pending = conn.prepare_cached(
        "SELECT sink, COUNT(*), MIN(queued_at) FROM deliveries INDEXED BY deliveries_due \
         WHERE state = 'pending' GROUP BY sink",
    )?;
    let rows = pending.query_map([], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get(2)?))
    })?;
    for row in rows {
        let (sink, count, oldest) = row?;
        let b = of(&mut sinks, sink);
        b.pending = u64::try_from(count).unwrap_or(0);
        b.oldest_queued_at = oldest;
    }
    let mut dead = conn.prepare_cached(
        "SELECT sink, COUNT(*) FROM deliveries INDEXED BY deliveries_dead \
         WHERE state = 'dead' GROUP BY sink",
    )?;
    let rows = dead.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
    for row in rows {
        let (sink, count) = row?;
        of(&mut sinks, sink).dead = u64::try_from(count).unwrap_or(0);
    }
    for (sink, count, oldest) in cursor::backlog(conn)? {
        let b = of(&mut sinks, sink);
        b.pending += count;
        b.oldest_queued_at = match (b.oldest_queued_at, oldest) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    Ok(sinks.into_values().collect())
}

fn mark_failed(
    conn: &Connection,
    sink: &str,
    seqs: &[i64],
    error: &str,
    next_attempt_at: i64,
) -> Result<(), SpoolError> {
    let mut stmt = conn.prepare_cached(
        "UPDATE deliveries SET attempts = attempts + 1, last_error = ?3, next_attempt_at = ?4 \
         WHERE sink = ?1 AND seq = ?2 AND state = 'pending'",
    )?;
    for seq in seqs {
        stmt.execute(params![sink, seq, error, next_attempt_at])?;
    }
    Ok(())
}

fn mark_dead(conn: &Connection, sink: &str, seqs: &[i64], error: &str) -> Result<(), SpoolError> {
    let mut stmt = conn.prepare_cached(
        "UPDATE deliveries SET state = 'dead', attempts = attempts + 1, last_error = ?3 \
         WHERE sink = ?1 AND seq = ?2 AND state = 'pending'",
    )?;
    for seq in seqs {
        stmt.execute(params![sink, seq, error])?;
    }
    Ok(())
}
