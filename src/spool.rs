//! The durable spool: a SQLite database in `data_dir` where every accepted event is committed before `success`, and each sink's delivery state lives.
//!
//! One writer thread owns the connection. Requests queue on a channel; the thread takes
//! everything queued, runs it in one transaction and commits once (group commit), so
//! concurrent pushes share one fsync. Only after the commit does any caller get its answer.

use rusqlite::{Connection, OptionalExtension, params};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::{Notify, oneshot};

/// File name of the database inside `data_dir`.
pub const DB_FILE: &str = "wxhook.db";
/// Most requests folded into one transaction.
const MAX_GROUP: usize = 512;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    account     TEXT NOT NULL,
    id          TEXT NOT NULL,
    received_at TEXT NOT NULL,
    body        TEXT NOT NULL,
    UNIQUE (account, id)
);
CREATE TABLE IF NOT EXISTS deliveries (
    sink            TEXT NOT NULL,
    seq             INTEGER NOT NULL REFERENCES events(seq) ON DELETE CASCADE,
    state           TEXT NOT NULL DEFAULT 'pending',
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT,
    delivered_at    INTEGER,
    PRIMARY KEY (sink, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS deliveries_pending ON deliveries (sink, seq) WHERE state = 'pending';
PRAGMA user_version = 1;
";

/// An accepted push on its way into the spool.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub account: String,
    pub id: String,
    pub received_at: String,
    /// The event JSON, delivered to sinks byte for byte.
    pub body: String,
    /// Sinks that must receive it.
    pub sinks: Arc<[String]>,
}

/// What an append did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// Newly stored with this sequence number.
    Stored(i64),
    /// The account already had an event with this id (a WeChat retry); nothing changed.
    Duplicate,
}

/// An event waiting for one sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub seq: i64,
    pub account: String,
    pub id: String,
    pub body: String,
    pub attempts: u32,
}

/// Why the spool could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("cannot open the spool in {path}: {reason}")]
    Open { path: PathBuf, reason: String },
    #[error("spool storage failed: {0}")]
    Storage(String),
    #[error("the spool is closed")]
    Closed,
}

impl From<rusqlite::Error> for SpoolError {
    fn from(e: rusqlite::Error) -> Self {
        SpoolError::Storage(e.to_string())
    }
}

type Reply<T> = oneshot::Sender<Result<T, SpoolError>>;

enum Command {
    Append(NewEvent, Reply<Appended>),
    Pending {
        sink: String,
        limit: usize,
        reply: Reply<Vec<Pending>>,
    },
    Delivered {
        sink: String,
        seqs: Vec<i64>,
        reply: Reply<()>,
    },
    Failed {
        sink: String,
        seqs: Vec<i64>,
        error: String,
        reply: Reply<()>,
    },
    Shutdown,
}

/// Counters that show what the writer did.
#[derive(Debug, Default)]
pub struct SpoolStats {
    /// Transactions committed.
    pub commits: AtomicU64,
    /// Events newly stored.
    pub stored: AtomicU64,
}

/// Handle to the spool; cheap to share behind an `Arc`.
pub struct Spool {
    tx: mpsc::Sender<Command>,
    thread: Mutex<Option<JoinHandle<()>>>,
    notifiers: Arc<HashMap<String, Arc<Notify>>>,
    stats: Arc<SpoolStats>,
}

impl Spool {
    /// Opens (creating if needed) the spool in `dir` for the given sink names.
    pub fn open(dir: &Path, sinks: &[String]) -> Result<Spool, SpoolError> {
        let open_err = |reason: String| SpoolError::Open {
            path: dir.to_owned(),
            reason,
        };
        std::fs::create_dir_all(dir).map_err(|e| open_err(e.to_string()))?;
        let conn = Connection::open(dir.join(DB_FILE)).map_err(|e| open_err(e.to_string()))?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; \
             PRAGMA busy_timeout = 5000;",
        )
        .and_then(|_| conn.execute_batch(SCHEMA))
        .map_err(|e| open_err(e.to_string()))?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .map_err(|e| open_err(e.to_string()))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(open_err(format!("journal_mode is {mode}, WAL is required")));
        }
        report_backlog(&conn, sinks).map_err(|e| open_err(e.to_string()))?;
        let notifiers: Arc<HashMap<String, Arc<Notify>>> = Arc::new(
            sinks
                .iter()
                .map(|s| (s.clone(), Arc::new(Notify::new())))
                .collect(),
        );
        let stats = Arc::new(SpoolStats::default());
        let (tx, rx) = mpsc::channel();
        let writer = Writer {
            conn,
            notifiers: notifiers.clone(),
            stats: stats.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("wxhook-spool".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| open_err(e.to_string()))?;
        Ok(Spool {
            tx,
            thread: Mutex::new(Some(thread)),
            notifiers,
            stats,
        })
    }

    /// Commits an event durably; returns only after the commit (or its failure).
    pub async fn append(&self, event: NewEvent) -> Result<Appended, SpoolError> {
        self.ask(|reply| Command::Append(event, reply)).await
    }

    /// Up to `limit` events waiting for `sink`, oldest first.
    pub async fn pending(&self, sink: &str, limit: usize) -> Result<Vec<Pending>, SpoolError> {
        let sink = sink.to_owned();
        self.ask(|reply| Command::Pending { sink, limit, reply })
            .await
    }

    /// Marks events as delivered to `sink`.
    pub async fn delivered(&self, sink: &str, seqs: Vec<i64>) -> Result<(), SpoolError> {
        let sink = sink.to_owned();
        self.ask(|reply| Command::Delivered { sink, seqs, reply })
            .await
    }

    /// Records a failed attempt to deliver events to `sink`; they stay pending.
    pub async fn failed(
        &self,
        sink: &str,
        seqs: Vec<i64>,
        error: String,
    ) -> Result<(), SpoolError> {
        let sink = sink.to_owned();
        self.ask(|reply| Command::Failed {
            sink,
            seqs,
            error,
            reply,
        })
        .await
    }

    /// Woken whenever `sink` has new pending events.
    pub fn notifier(&self, sink: &str) -> Option<Arc<Notify>> {
        self.notifiers.get(sink).cloned()
    }

    pub fn stats(&self) -> &SpoolStats {
        &self.stats
    }

    /// Stops the writer after the requests already queued and closes the database.
    pub async fn close(&self) {
        let _ = self.tx.send(Command::Shutdown);
        let thread = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }

    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, SpoolError> {
        let (reply, answer) = oneshot::channel();
        self.tx.send(make(reply)).map_err(|_| SpoolError::Closed)?;
        answer.await.map_err(|_| SpoolError::Closed)?
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = self.tx.send(Command::Shutdown);
        if let Some(thread) = self.thread.get_mut().ok().and_then(Option::take) {
            let _ = thread.join();
        }
    }
}

/// A finished request whose answer waits for the commit.
enum Done {
    Append(Reply<Appended>, Result<Appended, SpoolError>),
    Pending(Reply<Vec<Pending>>, Result<Vec<Pending>, SpoolError>),
    Unit(Reply<()>, Result<(), SpoolError>),
}

struct Writer {
    conn: Connection,
    notifiers: Arc<HashMap<String, Arc<Notify>>>,
    stats: Arc<SpoolStats>,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Command>) {
        let mut group = Vec::with_capacity(MAX_GROUP);
        while let Ok(first) = rx.recv() {
            group.push(first);
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
        let mut done = Vec::with_capacity(group.len());
        let mut woken: HashSet<String> = HashSet::new();
        let outcome = self
            .conn
            .transaction()
            .map_err(SpoolError::from)
            .and_then(|tx| {
                let mut failure = None;
                for command in group.drain(..) {
                    match command {
                        Command::Append(event, reply) => {
                            let result = append(&tx, &event);
                            if let Ok(Appended::Stored(_)) = result {
                                woken.extend(event.sinks.iter().cloned());
                            }
                            record_failure(&result, &mut failure);
                            done.push(Done::Append(reply, result));
                        }
                        Command::Pending { sink, limit, reply } => {
                            done.push(Done::Pending(reply, pending(&tx, &sink, limit)));
                        }
                        Command::Delivered { sink, seqs, reply } => {
                            let result = mark_delivered(&tx, &sink, &seqs);
                            record_failure(&result, &mut failure);
                            done.push(Done::Unit(reply, result));
                        }
                        Command::Failed {
                            sink,
                            seqs,
                            error,
                            reply,
                        } => {
                            let result = mark_failed(&tx, &sink, &seqs, &error);
                            record_failure(&result, &mut failure);
                            done.push(Done::Unit(reply, result));
                        }
                        Command::Shutdown => shutdown = true,
                    }
                }
                match failure {
                    // Nothing of a group with a failed write is kept: every writer in it hears of it.
                    Some(reason) => Err(SpoolError::Storage(reason)),
                    None => tx.commit().map_err(SpoolError::from),
                }
            });
        match outcome {
            Ok(()) => {
                self.stats.commits.fetch_add(1, Ordering::Relaxed);
                for d in done {
                    match d {
                        Done::Append(reply, result) => {
                            if let Ok(Appended::Stored(_)) = result {
                                self.stats.stored.fetch_add(1, Ordering::Relaxed);
                            }
                            let _ = reply.send(result);
                        }
                        Done::Pending(reply, result) => drop(reply.send(result)),
                        Done::Unit(reply, result) => drop(reply.send(result)),
                    }
                }
                for sink in woken {
                    if let Some(n) = self.notifiers.get(&sink) {
                        n.notify_one();
                    }
                }
            }
            Err(e) => {
                let reason = e.to_string();
                tracing::error!(error = %reason, "spool transaction failed; nothing of it was kept");
                for d in done {
                    let err = SpoolError::Storage(reason.clone());
                    match d {
                        Done::Append(reply, _) => drop(reply.send(Err(err))),
                        Done::Pending(reply, _) => drop(reply.send(Err(err))),
                        Done::Unit(reply, _) => drop(reply.send(Err(err))),
                    }
                }
            }
        }
        shutdown
    }
}

/// Logs what each sink still has to deliver, and pending events of sinks no longer configured.
fn report_backlog(conn: &Connection, sinks: &[String]) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare(
        "SELECT sink, COUNT(*) FROM deliveries WHERE state = 'pending' GROUP BY sink ORDER BY sink",
    )?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
    for row in rows {
        let (sink, count) = row?;
        if sinks.contains(&sink) {
            tracing::info!(sink = %sink, pending = count, "resuming delivery of events accepted before the restart");
        } else {
            tracing::warn!(
                sink = %sink,
                pending = count,
                "events are pending for a sink that is no longer configured; restore a [[sinks]] entry with this name to deliver them"
            );
        }
    }
    Ok(())
}

fn record_failure<T>(result: &Result<T, SpoolError>, failure: &mut Option<String>) {
    if let (Err(e), None) = (result, &failure) {
        *failure = Some(e.to_string());
    }
}

fn append(conn: &Connection, event: &NewEvent) -> Result<Appended, SpoolError> {
    let seq: Option<i64> = conn
        .prepare_cached(
            "INSERT INTO events (account, id, received_at, body) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (account, id) DO NOTHING RETURNING seq",
        )?
        .query_row(
            params![event.account, event.id, event.received_at, event.body],
            |r| r.get(0),
        )
        .optional()?;
    let Some(seq) = seq else {
        return Ok(Appended::Duplicate);
    };
    let mut insert = conn.prepare_cached("INSERT INTO deliveries (sink, seq) VALUES (?1, ?2)")?;
    for sink in event.sinks.iter() {
        insert.execute(params![sink, seq])?;
    }
    Ok(Appended::Stored(seq))
}

fn pending(conn: &Connection, sink: &str, limit: usize) -> Result<Vec<Pending>, SpoolError> {
    let mut stmt = conn.prepare_cached(
        "SELECT d.seq, e.account, e.id, e.body, d.attempts FROM deliveries d \
         JOIN events e ON e.seq = d.seq \
         WHERE d.sink = ?1 AND d.state = 'pending' ORDER BY d.seq LIMIT ?2",
    )?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = stmt.query_map(params![sink, limit], |r| {
        Ok(Pending {
            seq: r.get(0)?,
            account: r.get(1)?,
            id: r.get(2)?,
            body: r.get(3)?,
            attempts: r.get(4)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn mark_delivered(conn: &Connection, sink: &str, seqs: &[i64]) -> Result<(), SpoolError> {
    let mut stmt = conn.prepare_cached(
        "UPDATE deliveries SET state = 'delivered', attempts = attempts + 1, \
         delivered_at = ?3, last_error = NULL WHERE sink = ?1 AND seq = ?2",
    )?;
    let now = unix_now();
    for seq in seqs {
        stmt.execute(params![sink, seq, now])?;
    }
    Ok(())
}

fn mark_failed(conn: &Connection, sink: &str, seqs: &[i64], error: &str) -> Result<(), SpoolError> {
    let mut stmt = conn.prepare_cached(
        "UPDATE deliveries SET attempts = attempts + 1, last_error = ?3 \
         WHERE sink = ?1 AND seq = ?2",
    )?;
    for seq in seqs {
        stmt.execute(params![sink, seq, error])?;
    }
    Ok(())
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
