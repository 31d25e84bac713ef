//! The spool on its own: group commit, deduplication, and what a reopened spool still holds.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use wxhook::spool::{Appended, Delivery, NewEvent, Spool, SpoolOptions};

fn event(id: usize, sinks: &Arc<[String]>) -> NewEvent {
    NewEvent {
        account: "main".into(),
        app_id: String::new(),
        id: format!("e{id}"),
        received_at: "2026-11-21T00:00:00.000Z".into(),
        body: format!("{{\"id\":\"e{id}\"}}"),
        sinks: sinks.clone(),
        seen: None,
        platform: None,
        publish: None,
    }
}

fn open(dir: &std::path::Path, sinks: &[String], delivery: Delivery) -> Spool {
    let sinks: Vec<(String, Delivery)> = sinks.iter().map(|s| (s.clone(), delivery)).collect();
    Spool::open(dir, &sinks, SpoolOptions::default()).expect("opens")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_share_commits_and_survive_reopening() {
    for delivery in [Delivery::Ordered, Delivery::Scheduled] {
        appends_share_commits_and_survive_reopening(delivery).await;
    }
}

async fn appends_share_commits_and_survive_reopening(delivery: Delivery) {
    let dir = tempfile::tempdir().expect("tempdir");
    let sinks: Arc<[String]> = vec!["a".to_owned(), "b".to_owned()].into();
    let spool = Arc::new(open(dir.path(), &sinks, delivery));
    let n = 1000;
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (spool, sinks) = (spool.clone(), sinks.clone());
            tokio::spawn(async move { spool.append(event(i, &sinks)).await })
        })
        .collect();
    for t in tasks {
        assert!(matches!(t.await.expect("joins"), Ok(Appended::Stored(_))));
    }
    let commits = spool.stats().commits.load(Ordering::Relaxed);
    assert_eq!(spool.stats().stored.load(Ordering::Relaxed), n as u64);
    assert!(
        commits < n as u64 / 2,
        "{commits} commits for {n} appends: no group commit"
    );

    // A retry of a stored event changes nothing.
    assert_eq!(
        spool.append(event(7, &sinks)).await.ok(),
        Some(Appended::Duplicate)
    );

    // Sink `a` takes some; after reopening, each sink has exactly what it has not had.
    let first = spool.pending("a", 100).await.expect("pending");
    assert_eq!(first.len(), 100);
    spool
        .delivered("a", first.iter().map(|p| p.seq).collect())
        .await
        .expect("delivered");
    spool.close().await;
    drop(spool);

    let spool = open(dir.path(), &sinks, delivery);
    let a = spool.pending("a", 10_000).await.expect("pending a");
    let b = spool.pending("b", 10_000).await.expect("pending b");
    assert_eq!((a.len(), b.len()), (n - 100, n));
    assert!(a.windows(2).all(|w| w[0].seq < w[1].seq), "oldest first");
    assert!(a.iter().all(|p| !first.iter().any(|f| f.seq == p.seq)));
    spool.close().await;
}

#[tokio::test]
async fn failed_attempts_are_counted_and_events_stay_pending() {
    for delivery in [Delivery::Ordered, Delivery::Scheduled] {
        failed_attempts_are_counted(delivery).await;
    }
}

async fn failed_attempts_are_counted(delivery: Delivery) {
    let dir = tempfile::tempdir().expect("tempdir");
    let sinks: Arc<[String]> = vec!["a".to_owned()].into();
    let spool = open(dir.path(), &sinks, delivery);
    spool.append(event(1, &sinks)).await.expect("append");
    let p = spool.pending("a", 10).await.expect("pending");
    spool
        .failed("a", vec![p[0].seq], "downstream said no".into(), 0)
        .await
        .expect("failed");
    let again = spool.pending("a", 10).await.expect("pending");
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].attempts, 1);
    assert_eq!(again[0].body, "{\"id\":\"e1\"}");
    spool.close().await;
}

#[test]
fn an_unusable_data_dir_is_refused_with_its_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").expect("file");
    let err = match Spool::open(&file.join("spool"), &[], SpoolOptions::default()) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("opened a spool under a regular file"),
    };
    assert!(
        err.contains("cannot open the spool in") && err.contains("not-a-dir"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_commands_on_a_live_spool_never_fail_an_append() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sinks: Arc<[String]> = vec!["a".to_owned()].into();
    let spool = Arc::new(open(dir.path(), &sinks, Delivery::Ordered));
    let path = dir.path().to_owned();
    let operator = std::thread::spawn(move || {
        for _ in 0..200 {
            let admin = wxhook::spool::admin::Admin::open(&path).expect("admin opens");
            admin.recent(5, None).expect("list");
            admin.retry_dead(None, &[]).expect("retry");
        }
    });
    let tasks: Vec<_> = (0..2000)
        .map(|i| {
            let (spool, sinks) = (spool.clone(), sinks.clone());
            tokio::spawn(async move { spool.append(event(i, &sinks)).await })
        })
        .collect();
    // A sink reading and acknowledging at the same time: groups that start with a read.
    let reader = {
        let spool = spool.clone();
        tokio::spawn(async move {
            for _ in 0..400 {
                let due = spool.pending("a", 10).await.expect("a read never fails");
                let seqs = due.iter().map(|p| p.seq).collect();
                spool
                    .delivered("a", seqs)
                    .await
                    .expect("an acknowledgement never fails");
            }
        })
    };
    for t in tasks {
        let appended = t.await.expect("joins");
        assert!(matches!(appended, Ok(Appended::Stored(_))), "{appended:?}");
    }
    reader.await.expect("reader joins");
    operator.join().expect("operator thread");
    spool.close().await;
}

fn routed(id: usize, sinks: &[&str]) -> NewEvent {
    let sinks: Arc<[String]> = sinks.iter().map(|s| (*s).to_owned()).collect();
    event(id, &sinks)
}

fn ids(pending: &[wxhook::spool::Pending]) -> Vec<String> {
    pending.iter().map(|p| p.id.clone()).collect()
}

/// Takes and acknowledges batches for `sink` until none is left; the ids in order.
async fn drain(spool: &Spool, sink: &str) -> Vec<String> {
    let mut got = Vec::new();
    loop {
        let batch = spool.pending(sink, 10).await.expect("pending");
        if batch.is_empty() {
            return got;
        }
        got.extend(ids(&batch));
        spool
            .delivered(sink, batch.iter().map(|p| p.seq).collect())
            .await
            .expect("delivered");
    }
}

#[tokio::test]
async fn a_second_server_on_the_same_spool_is_refused_until_the_first_closes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = open(dir.path(), &["file".into()], Delivery::Ordered);
    let err = match Spool::open(dir.path(), &[], SpoolOptions::default()) {
        Ok(_) => panic!("a second spool opened on a spool in use"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("another wxhook server is using it") && err.contains("wxhook.lock"),
        "{err}"
    );
    first
        .append(event(1, &Arc::from(vec!["file".to_string()])))
        .await
        .expect("append");
    first.close().await;
    drop(first);
    let again = open(dir.path(), &["file".into()], Delivery::Ordered);
    assert_eq!(again.pending("file", 10).await.expect("pending").len(), 1);
    again.close().await;
}

#[tokio::test]
async fn an_ordered_sink_gets_only_the_events_routed_to_it_past_any_stretch_of_others() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = open(dir.path(), &["a".into(), "b".into()], Delivery::Ordered);
    for i in 0..600 {
        spool.append(routed(i, &["b"])).await.expect("append");
    }
    spool.append(routed(600, &["a"])).await.expect("append");
    spool
        .append(routed(601, &["a", "b"]))
        .await
        .expect("append");

    let a = spool.pending("a", 256).await.expect("pending a");
    assert_eq!(ids(&a), ["e600", "e601"]);
    let b = spool.pending("b", 1000).await.expect("pending b");
    assert_eq!(b.len(), 601);
    assert_eq!(b.last().map(|p| p.id.as_str()), Some("e601"));

    let backlog = spool.backlog().await.expect("backlog");
    let pending: Vec<(String, u64)> = backlog
        .iter()
        .map(|b| (b.sink.clone(), b.pending))
        .collect();
    assert_eq!(pending, [("a".into(), 2), ("b".into(), 601)]);

    spool
        .delivered("a", a.iter().map(|p| p.seq).collect())
        .await
        .expect("delivered");
    assert!(spool.pending("a", 256).await.expect("pending a").is_empty());
    spool.close().await;
}

#[tokio::test]
async fn an_ordered_sink_steps_over_what_is_routed_elsewhere_and_still_gets_its_own() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sinks = [
        ("a".into(), Delivery::Ordered),
        ("b".into(), Delivery::Ordered),
    ];
    let options = SpoolOptions {
        retention: std::time::Duration::ZERO,
        prune_every: std::time::Duration::from_millis(50),
        ..SpoolOptions::default()
    };
    let spool = Spool::open(dir.path(), &sinks, options).expect("opens");
    for i in 0..600 {
        spool.append(routed(i, &["b"])).await.expect("append");
    }
    assert_eq!(drain(&spool, "b").await.len(), 600);
    // `a` is owed none of them; looking once moves its cursor past them all.
    assert!(spool.pending("a", 256).await.expect("pending a").is_empty());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while spool.stats().pruned.load(Ordering::Relaxed) < 600 {
        assert!(
            std::time::Instant::now() < deadline,
            "only {} of 600 delivered events pruned",
            spool.stats().pruned.load(Ordering::Relaxed)
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // What comes for `a` afterwards still reaches it, however little was routed to it.
    spool.append(routed(600, &["b"])).await.expect("append");
    assert!(spool.pending("a", 256).await.expect("pending a").is_empty());
    spool.append(routed(601, &["a"])).await.expect("append");
    spool.append(routed(602, &["b"])).await.expect("append");
    assert_eq!(drain(&spool, "a").await, ["e601"]);
    spool.close().await;
}

#[tokio::test]
async fn a_sink_removed_from_the_configuration_keeps_what_it_was_owed_until_it_returns() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = open(dir.path(), &["a".into()], Delivery::Ordered);
    for i in 0..3 {
        spool.append(routed(i, &["a"])).await.expect("append");
    }
    let first = spool.pending("a", 1).await.expect("pending");
    spool
        .delivered("a", vec![first[0].seq])
        .await
        .expect("delivered");
    spool.close().await;
    drop(spool);

    // Without `a` its two undelivered events are still counted as owed to it.
    let spool = open(dir.path(), &[], Delivery::Ordered);
    let backlog = spool.backlog().await.expect("backlog");
    assert_eq!(backlog.len(), 1);
    assert_eq!((backlog[0].sink.as_str(), backlog[0].pending), ("a", 2));
    spool.close().await;
    drop(spool);

    // Back again, it gets them first, then what is accepted from now on, in order.
    let spool = open(dir.path(), &["a".into()], Delivery::Ordered);
    spool.append(routed(3, &["a"])).await.expect("append");
    assert_eq!(drain(&spool, "a").await, ["e1", "e2", "e3"]);
    spool.close().await;
}

#[tokio::test]
async fn a_spool_of_the_first_schema_is_upgraded_and_its_pending_events_delivered() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        // The schema 1 spool as the first release wrote it, with one event pending for
        // `file` and one already delivered.
        let conn = rusqlite::Connection::open(dir.path().join("wxhook.db")).expect("db");
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, account TEXT NOT NULL,
                 app_id TEXT NOT NULL DEFAULT '', id TEXT NOT NULL, received_at TEXT NOT NULL,
                 body TEXT NOT NULL, UNIQUE (account, app_id, id));
             CREATE TABLE deliveries (sink TEXT NOT NULL,
                 seq INTEGER NOT NULL REFERENCES events(seq) ON DELETE CASCADE,
                 state TEXT NOT NULL DEFAULT 'pending', attempts INTEGER NOT NULL DEFAULT 0,
                 queued_at INTEGER NOT NULL, next_attempt_at INTEGER NOT NULL DEFAULT 0,
                 last_error TEXT, delivered_at INTEGER, PRIMARY KEY (sink, seq)) WITHOUT ROWID;
             CREATE INDEX deliveries_pending ON deliveries (sink, seq) WHERE state = 'pending';
             CREATE INDEX deliveries_dead ON deliveries (sink, seq) WHERE state = 'dead';
             CREATE INDEX deliveries_seq ON deliveries (seq);
             CREATE TABLE seen (account TEXT NOT NULL, signature TEXT NOT NULL,
                 timestamp INTEGER NOT NULL, body_hash BLOB NOT NULL,
                 PRIMARY KEY (account, signature)) WITHOUT ROWID;
             CREATE INDEX seen_timestamp ON seen (timestamp);
             INSERT INTO events (account, id, received_at, body) VALUES
                 ('main', 'old-1', '2026-11-20T00:00:00.000Z', '{\"id\":\"old-1\"}'),
                 ('main', 'old-2', '2026-11-20T00:00:01.000Z', '{\"id\":\"old-2\"}');
             INSERT INTO deliveries (sink, seq, state, queued_at) VALUES
                 ('file', 1, 'delivered', 0), ('file', 2, 'pending', 0);
             PRAGMA user_version = 1;",
        )
        .expect("schema 1");
    }
    let spool = open(dir.path(), &["file".into()], Delivery::Ordered);
    spool.append(routed(9, &["file"])).await.expect("append");
    assert_eq!(drain(&spool, "file").await, ["old-2", "e9"]);
    spool.close().await;
}
