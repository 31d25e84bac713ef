//! The durable spool: a SQLite database in `data_dir` where every accepted event is committed before `success`, and each sink's delivery state lives.
//!
//! One writer thread ([`writer`]) owns the connection. Requests queue on a channel; the
//! thread takes everything queued, runs it in one transaction and commits once (group
//! commit), so concurrent pushes share one fsync. Only after the commit does any caller
//! get its answer. Ordered sinks keep their place with a [`cursor`]; `http` sinks with a
//! row per event. [`admin`] reads and repairs the same database from the command line.

pub mod admin;
mod cursor;
pub mod jobs;
pub mod platform;
mod writer;

use crate::server::seen::SeenRecord;
use rusqlite::{Connection, params};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{Notify, oneshot};

/// File name of the database inside `data_dir`.
pub const DB_FILE: &str = "wxhook.db";
/// The file a server holds locked while it uses the spool.
pub const LOCK_FILE: &str = "wxhook.lock";
/// The schema version this build writes (`PRAGMA user_version`).
const SCHEMA_VERSION: i64 = 7;

/// The first schema. `CREATE … IF NOT EXISTS` throughout: a new spool starts here too.
const SCHEMA_1: &str = "
CREATE TABLE IF NOT EXISTS events (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    account     TEXT NOT NULL,
    app_id      TEXT NOT NULL DEFAULT '',
    id          TEXT NOT NULL,
    received_at TEXT NOT NULL,
    body        TEXT NOT NULL,
    UNIQUE (account, app_id, id)
);
CREATE TABLE IF NOT EXISTS deliveries (
    sink            TEXT NOT NULL,
    seq             INTEGER NOT NULL REFERENCES events(seq) ON DELETE CASCADE,
    state           TEXT NOT NULL DEFAULT 'pending',
    attempts        INTEGER NOT NULL DEFAULT 0,
    queued_at       INTEGER NOT NULL,
    next_attempt_at INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT,
    delivered_at    INTEGER,
    PRIMARY KEY (sink, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS deliveries_pending ON deliveries (sink, seq) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS deliveries_dead ON deliveries (sink, seq) WHERE state = 'dead';
CREATE INDEX IF NOT EXISTS deliveries_seq ON deliveries (seq);
CREATE TABLE IF NOT EXISTS seen (
    account   TEXT NOT NULL,
    signature TEXT NOT NULL,
    timestamp INTEGER NOT NULL,
    body_hash BLOB NOT NULL,
    PRIMARY KEY (account, signature)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS seen_timestamp ON seen (timestamp);
";

/// Schema 2: ordered sinks keep a cursor instead of a row per event, and every query of
/// the writer walks a partial index (what is due for a sink is a range of
/// `deliveries_due`, oldest schedule first). Run once, in a transaction.
const SCHEMA_2: &str = "
-- The sinks an event was routed to when it was accepted, each between newlines.
ALTER TABLE events ADD COLUMN sinks TEXT NOT NULL DEFAULT '';
CREATE TABLE cursors (
    sink       TEXT PRIMARY KEY,
    -- Every event up to here is delivered to the sink (or was not routed to it).
    seq        INTEGER NOT NULL,
    -- Failed attempts at the events after it, and the last reason.
    attempts   INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
) WITHOUT ROWID;
DROP INDEX deliveries_pending;
CREATE INDEX deliveries_due
    ON deliveries (sink, next_attempt_at, seq, queued_at) WHERE state = 'pending';
";

/// Schema 3: `events show ID` and `dead-letters retry ID` find an event by id alone;
/// the unique index starts with the account, so without this they read every event.
const SCHEMA_3: &str = "CREATE INDEX events_id ON events (id);";

/// Schema 5: the signed queries seen are appended in arrival order (a rowid table with
/// an index on their nearly increasing timestamps). Keyed by the random signature, each
/// push dirtied another page of the B-tree, and accepting a push cost twice as much.
const SCHEMA_5: &str = "
CREATE TABLE seen_log (
    timestamp INTEGER NOT NULL,
    account   TEXT NOT NULL,
    signature TEXT NOT NULL,
    body_hash BLOB NOT NULL
);
CREATE INDEX seen_log_timestamp ON seen_log (timestamp);
INSERT INTO seen_log (timestamp, account, signature, body_hash)
    SELECT timestamp, account, signature, body_hash FROM seen ORDER BY timestamp;
DROP TABLE seen;
";

/// Schema 6: each third-party platform's newest `component_verify_ticket`, a secret kept
/// apart from the events (whose JSON says a ticket arrived, not what it is).
const SCHEMA_6: &str = "
CREATE TABLE component_tickets (
    account     TEXT PRIMARY KEY,
    ticket      TEXT NOT NULL,
    -- The ticket event's CreateTime: an older ticket never replaces a newer one.
    create_time INTEGER NOT NULL,
    stored_at   INTEGER NOT NULL
) WITHOUT ROWID;
";

/// An accepted push on its way into the spool.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub account: String,
    /// The authorized account's appid for a third-party platform entry, else empty.
    pub app_id: String,
    pub id: String,
    pub received_at: String,
    /// The event JSON, delivered to sinks byte for byte.
    pub body: String,
    /// Sinks that must receive it.
    pub sinks: Arc<[String]>,
    /// The signed query it came with, remembered to refuse replays after a restart.
    pub seen: Option<SeenRecord>,
    /// For a publish job's status (pushed or polled): the job it belongs to.
    pub publish: Option<PublishNote>,
    /// For a platform's authorization event: the ticket or authorization it records.
    pub platform: Option<Box<platform::PlatformNote>>,
}

/// The publish job status an event reports; the writer adds the job's `job` member to the
/// event and records the status on the job, in the event's transaction.
#[derive(Debug, Clone)]
pub struct PublishNote {
    pub publish_id: String,
    pub status: u32,
    /// `push` or `poll`.
    pub source: &'static str,
}

/// How a sink takes its events from the spool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Strictly in order, retried until it succeeds: a cursor per sink (stdout, log, file).
    Ordered,
    /// Each event on its own schedule, with retries and dead letters: a row per event (http).
    Scheduled,
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
    /// Attempts made so far.
    pub attempts: u32,
    /// When this delivery entered the queue (acceptance, or a manual retry), Unix ms.
    pub queued_at: i64,
}

/// Events due for a sink, and when the next one not yet due will be.
#[derive(Debug, Clone, Default)]
pub struct Due {
    pub events: Vec<Pending>,
    /// Earliest `next_attempt_at` (Unix ms) of a pending event that is not due yet.
    pub next_at: Option<i64>,
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
    Due {
        sink: String,
        limit: usize,
        now: i64,
        reply: Reply<Due>,
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
        next_attempt_at: i64,
        reply: Reply<()>,
    },
    Dead {
        sink: String,
        seqs: Vec<i64>,
        error: String,
        reply: Reply<()>,
    },
    Backlog(Reply<Vec<Backlog>>),
    Shutdown,
}

/// What one sink has left to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backlog {
    pub sink: String,
    pub pending: u64,
    /// When the oldest pending event was queued (Unix ms), if any is pending.
    pub oldest_queued_at: Option<i64>,
    pub dead: u64,
}

/// Counters that show what the writer did.
#[derive(Debug, Default)]
pub struct SpoolStats {
    /// Transactions committed.
    pub commits: AtomicU64,
    /// Events newly stored.
    pub stored: AtomicU64,
    /// Delivered events removed after the retention period.
    pub pruned: AtomicU64,
    /// False while the last transaction failed (a full or broken disk).
    pub writable: std::sync::atomic::AtomicBool,
}

impl SpoolStats {
    fn new() -> SpoolStats {
        SpoolStats {
            writable: std::sync::atomic::AtomicBool::new(true),
            ..SpoolStats::default()
        }
    }
}

/// How the spool keeps history.
#[derive(Debug, Clone, Copy)]
pub struct SpoolOptions {
    /// Events delivered to every sink are removed this long after their last delivery.
    pub retention: Duration,
    /// How often the writer looks for events past retention.
    pub prune_every: Duration,
    /// How long seen signatures are kept (the timestamp tolerance; a day when that is off).
    pub seen_ttl: Duration,
    /// A job first seen in a "publishing" push is polled this long after.
    pub reconcile_after: Duration,
}

impl SpoolOptions {
    /// Keeps delivered events for `retention`, looking for expired ones every quarter of
    /// it (between once a second and once every ten minutes).
    pub fn with_retention(retention: Duration) -> SpoolOptions {
        SpoolOptions {
            retention,
            prune_every: (retention / 4).clamp(Duration::from_secs(1), Duration::from_secs(600)),
            seen_ttl: Duration::from_secs(24 * 3600),
            reconcile_after: Duration::from_secs(300),
        }
    }
}

impl Default for SpoolOptions {
    fn default() -> Self {
        SpoolOptions::with_retention(Duration::from_secs(7 * 24 * 3600))
    }
}

/// Handle to the spool; cheap to share behind an `Arc`.
pub struct Spool {
    tx: mpsc::Sender<Command>,
    seen_at_open: Mutex<Vec<SeenRecord>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    notifiers: Arc<HashMap<String, Arc<Notify>>>,
    stats: Arc<SpoolStats>,
}

/// Opens the database file in `dir` with the pragmas and schema every user of it needs.
pub fn connect(dir: &Path) -> Result<Connection, SpoolError> {
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
    .map_err(|e| open_err(e.to_string()))?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .map_err(|e| open_err(e.to_string()))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(open_err(format!("journal_mode is {mode}, WAL is required")));
    }
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| open_err(e.to_string()))?;
    if version > SCHEMA_VERSION {
        return Err(open_err(format!(
            "it was written by a newer wxhook (schema {version}, this one knows {SCHEMA_VERSION})"
        )));
    }
    // Only a spool behind this version is written to here, so that operator commands
    // opening a live spool take no write lock.
    if version < SCHEMA_VERSION {
        migrate(&conn).map_err(|e| open_err(e.to_string()))?;
    }
    Ok(conn)
}

/// Takes the spool for this process. Two servers on one spool would each deliver every
/// event, and each would move the cursors the other delivers by; the second is refused.
/// On a filesystem without locks the spool is used unlocked, with a warning.
fn lock(dir: &Path) -> Result<Option<std::fs::File>, SpoolError> {
    let path = dir.join(LOCK_FILE);
    let refuse = |reason: String| SpoolError::Open {
        path: dir.to_owned(),
        reason,
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| refuse(format!("cannot open {}: {e}", path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Err(refuse(format!(
            "another wxhook server is using it (it holds {}); give each server its own data_dir",
            path.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) if e.kind() == std::io::ErrorKind::Unsupported => {
            tracing::warn!(path = %path.display(), "the filesystem has no file locks; make sure no other server uses this data_dir");
            Ok(None)
        }
        Err(std::fs::TryLockError::Error(e)) => {
            Err(refuse(format!("cannot lock {}: {e}", path.display())))
        }
    }
}

/// Brings the schema up to [`SCHEMA_VERSION`], every step in one transaction.
fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(SCHEMA_1)?;
    let tx = rusqlite::Transaction::new_unchecked(conn, rusqlite::TransactionBehavior::Immediate)?;
    // Read again under the write lock: another process may have migrated meanwhile.
    let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version < 2 {
        tx.execute_batch(SCHEMA_2)?;
    }
    if version < 3 {
        tx.execute_batch(SCHEMA_3)?;
    }
    if version < 4 {
        tx.execute_batch(jobs::SCHEMA_4)?;
    }
    if version < 5 {
        tx.execute_batch(SCHEMA_5)?;
    }
    if version < 6 {
        tx.execute_batch(SCHEMA_6)?;
    }
    if version < 7 {
        tx.execute_batch(platform::SCHEMA_7)?;
    }
    if version < SCHEMA_VERSION {
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    }
    tx.commit()
}

impl Spool {
    /// Opens (creating if needed) the spool in `dir` for the given sinks.
    pub fn open(
        dir: &Path,
        sinks: &[(String, Delivery)],
        options: SpoolOptions,
    ) -> Result<Spool, SpoolError> {
        let mut conn = connect(dir)?;
        let lock = lock(dir)?;
        let open_err = |e: &dyn std::fmt::Display| SpoolError::Open {
            path: dir.to_owned(),
            reason: e.to_string(),
        };
        let ordered: Vec<String> = sinks
            .iter()
            .filter(|(_, d)| *d == Delivery::Ordered)
            .map(|(name, _)| name.clone())
            .collect();
        cursor::reconcile(&mut conn, &ordered, unix_ms()).map_err(|e| open_err(&e))?;
        let names: Vec<String> = sinks.iter().map(|(name, _)| name.clone()).collect();
        writer::report_backlog(&conn, &names).map_err(|e| open_err(&e))?;
        let oldest =
            unix_ms() / 1000 - i64::try_from(options.seen_ttl.as_secs()).unwrap_or(i64::MAX);
        let seen_at_open = load_seen(&conn, oldest).map_err(|e| open_err(&e))?;
        let notifiers: Arc<HashMap<String, Arc<Notify>>> = Arc::new(
            names
                .into_iter()
                .map(|s| (s, Arc::new(Notify::new())))
                .collect(),
        );
        let stats = Arc::new(SpoolStats::new());
        let (tx, rx) = mpsc::channel();
        let writer = writer::Writer::new(conn, notifiers.clone(), stats.clone(), options, ordered);
        let thread = std::thread::Builder::new()
            .name("wxhook-spool".into())
            .spawn(move || {
                // Held for as long as the writer uses the database.
                let _lock = lock;
                writer.run(rx)
            })
            .map_err(|e| open_err(&e))?;
        Ok(Spool {
            tx,
            seen_at_open: Mutex::new(seen_at_open),
            thread: Mutex::new(Some(thread)),
            notifiers,
            stats,
        })
    }

    /// Commits an event durably; returns only after the commit (or its failure).
    pub async fn append(&self, event: NewEvent) -> Result<Appended, SpoolError> {
        self.ask(|reply| Command::Append(event, reply)).await
    }

    /// Up to `limit` events due for `sink` now, oldest first.
    pub async fn due(&self, sink: &str, limit: usize) -> Result<Due, SpoolError> {
        let sink = sink.to_owned();
        let now = unix_ms();
        self.ask(|reply| Command::Due {
            sink,
            limit,
            now,
            reply,
        })
        .await
    }

    /// Up to `limit` events due for `sink` now, oldest first (without the schedule).
    pub async fn pending(&self, sink: &str, limit: usize) -> Result<Vec<Pending>, SpoolError> {
        Ok(self.due(sink, limit).await?.events)
    }

    /// Marks events as delivered to `sink`.
    pub async fn delivered(&self, sink: &str, seqs: Vec<i64>) -> Result<(), SpoolError> {
        let sink = sink.to_owned();
        self.ask(|reply| Command::Delivered { sink, seqs, reply })
            .await
    }

    /// Records a failed attempt; the events stay pending until `next_attempt_at` (Unix ms).
    pub async fn failed(
        &self,
        sink: &str,
        seqs: Vec<i64>,
        error: String,
        next_attempt_at: i64,
    ) -> Result<(), SpoolError> {
        let sink = sink.to_owned();
        self.ask(|reply| Command::Failed {
            sink,
            seqs,
            error,
            next_attempt_at,
            reply,
        })
        .await
    }

    /// Records a final failed attempt: the events become dead letters for `sink`.
    pub async fn dead(&self, sink: &str, seqs: Vec<i64>, error: String) -> Result<(), SpoolError> {
        let sink = sink.to_owned();
        self.ask(|reply| Command::Dead {
            sink,
            seqs,
            error,
            reply,
        })
        .await
    }

    /// The signatures remembered when the spool was opened (taken once).
    pub fn take_seen(&self) -> Vec<SeenRecord> {
        self.seen_at_open
            .lock()
            .map(|mut s| std::mem::take(&mut *s))
            .unwrap_or_default()
    }

    /// Each sink's pending events, oldest pending age and dead letters.
    pub async fn backlog(&self) -> Result<Vec<Backlog>, SpoolError> {
        self.ask(Command::Backlog).await
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

fn load_seen(conn: &Connection, oldest: i64) -> rusqlite::Result<Vec<SeenRecord>> {
    let mut stmt = conn.prepare(
        "SELECT account, signature, timestamp, body_hash FROM seen_log WHERE timestamp >= ?1 ORDER BY rowid",
    )?;
    let rows = stmt.query_map(params![oldest], |r| {
        let hash: Vec<u8> = r.get(3)?;
        Ok(SeenRecord {
            account: r.get(0)?,
            signature: r.get(1)?,
            timestamp: u64::try_from(r.get::<_, i64>(2)?).unwrap_or(0),
            body_hash: hash.try_into().unwrap_or([0; 32]),
        })
    })?;
    rows.collect()
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
