//! The spool on its own: group commit, deduplication, and what a reopened spool still holds.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use wxhook::spool::{Appended, NewEvent, Spool, SpoolOptions};

fn event(id: usize, sinks: &Arc<[String]>) -> NewEvent {
    NewEvent {
        account: "main".into(),
        app_id: String::new(),
        id: format!("e{id}"),
        received_at: "2026-11-21T00:00:00.000Z".into(),
        body: format!("{{\"id\":\"e{id}\"}}"),
        sinks: sinks.clone(),
        seen: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_share_commits_and_survive_reopening() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sinks: Arc<[String]> = vec!["a".to_owned(), "b".to_owned()].into();
    let spool = Arc::new(Spool::open(dir.path(), &sinks, SpoolOptions::default()).expect("opens"));
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

    let spool = Spool::open(dir.path(), &sinks, SpoolOptions::default()).expect("reopens");
    let a = spool.pending("a", 10_000).await.expect("pending a");
    let b = spool.pending("b", 10_000).await.expect("pending b");
    assert_eq!((a.len(), b.len()), (n - 100, n));
    assert!(a.windows(2).all(|w| w[0].seq < w[1].seq), "oldest first");
    assert!(a.iter().all(|p| !first.iter().any(|f| f.seq == p.seq)));
    spool.close().await;
}

#[tokio::test]
async fn failed_attempts_are_counted_and_events_stay_pending() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sinks: Arc<[String]> = vec!["a".to_owned()].into();
    let spool = Spool::open(dir.path(), &sinks, SpoolOptions::default()).expect("opens");
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
    let spool = Arc::new(Spool::open(dir.path(), &sinks, SpoolOptions::default()).expect("opens"));
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
