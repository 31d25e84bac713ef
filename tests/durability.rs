//! What survives: a failing sink, a restart, `kill -9` mid-stream, and storage that stops accepting writes.

mod common;

use common::*;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// A configuration whose file sink writes into a directory that does not exist yet.
fn broken_sink_toml(dir: &std::path::Path) -> String {
    config_toml(dir, "").replace(
        &dir.join("events.jsonl").display().to_string(),
        &dir.join("later").join("events.jsonl").display().to_string(),
    )
}

#[tokio::test]
async fn undelivered_events_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = TestApp::spawn(&broken_sink_toml(dir.path())).await;
    for id in 1..=5 {
        let started = Instant::now();
        let answer = app.push(&publish_push(id)).await;
        assert!(answer.acknowledged(), "{answer:?}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "a failing sink delayed the answer to WeChat"
        );
    }
    app.stop().await;
    assert!(!dir.path().join("later").exists());

    // Same data_dir, same sink name, now with a path that works.
    let app = TestApp::spawn(&config_toml(dir.path(), "")).await;
    let lines = wait_for_lines(&dir.path().join("events.jsonl"), 5).await;
    assert_eq!(
        ids(&lines),
        (1..=5)
            .map(|i| format!("publish-{i}-0"))
            .collect::<Vec<_>>()
    );
    app.stop().await;
}

#[tokio::test]
async fn a_sink_that_comes_back_receives_everything_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = TestApp::spawn(&broken_sink_toml(dir.path())).await;
    for id in 1..=3 {
        assert!(app.push(&publish_push(id)).await.acknowledged());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::create_dir(dir.path().join("later")).expect("mkdir");
    for id in 4..=6 {
        assert!(app.push(&publish_push(id)).await.acknowledged());
    }
    let lines = wait_for_lines(&dir.path().join("later").join("events.jsonl"), 6).await;
    assert_eq!(
        ids(&lines),
        (1..=6)
            .map(|i| format!("publish-{i}-0"))
            .collect::<Vec<_>>()
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("wxhook.toml");
    std::fs::write(&config, config_toml(dir.path(), "listen = \"127.0.0.1:0\"")).expect("config");
    let mut server = Binary::serve(&config, &dir.path().join("run1.log"), None);

    let load = tokio::spawn(push_many(server.url(), 1, 3000, 16));
    // Kill while the load is in full flight.
    let events = dir.path().join("events.jsonl");
    wait_for_progress(&server, 200, || read_lines(&events).len()).await;
    server.kill9();
    let acked = load.await.expect("load joins");
    eprintln!("acknowledged before kill -9: {}", acked.len());
    assert!(
        acked.len() >= 200,
        "too few pushes were acknowledged: {}",
        acked.len()
    );
    assert!(
        acked.len() < 3000,
        "the kill came too late to test anything"
    );

    let server = Binary::serve(&config, &dir.path().join("run2.log"), None);
    audit_delivered(&server, &acked, || id_set(&events)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_failure_answers_503_and_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("wxhook.toml");
    std::fs::write(&config, config_toml(dir.path(), "listen = \"127.0.0.1:0\"")).expect("config");
    // Files may not grow past 1 MiB: the spool's WAL hits the limit after a few hundred
    // commits, as on a full disk (SIGXFSZ ignored, so writes fail with EFBIG).
    let server = Binary::serve(
        &config,
        &dir.path().join("run1.log"),
        Some("trap '' XFSZ; ulimit -S -f 1024"),
    );
    let client = reqwest::Client::new();
    let mut acked = BTreeSet::new();
    let mut refused = Vec::new();
    for id in 1..=5000u64 {
        let answer = wxhook::replay::send(&client, &server.url(), TOKEN, publish_push(id))
            .await
            .expect("request");
        match answer.status {
            200 if answer.body == "success" => {
                acked.insert(format!("publish-{id}-0"));
            }
            503 => {
                assert_eq!(answer.body.trim(), "push could not be stored; retry later");
                refused.push(id);
                if refused.len() >= 5 {
                    break;
                }
            }
            other => panic!("unexpected answer {other}: {}", answer.body),
        }
    }
    eprintln!(
        "acked before storage failed: {}, refused: {refused:?}",
        acked.len()
    );
    assert!(
        !refused.is_empty(),
        "storage never failed; the test proves nothing"
    );
    assert!(
        server.stderr().contains("push not stored"),
        "{}",
        server.stderr()
    );
    let ready = |addr: std::net::SocketAddr| {
        let client = client.clone();
        async move {
            let r = client
                .get(format!("http://{addr}/readyz"))
                .send()
                .await
                .expect("readyz");
            (r.status().as_u16(), r.text().await.expect("text"))
        }
    };
    assert_eq!(
        ready(server.addr).await,
        (503, "the spool's last write failed\n".to_owned())
    );

    // Space comes back while the process runs: WeChat's retry of a refused push is accepted.
    let raised = std::process::Command::new("prlimit")
        .arg(format!("--pid={}", server.child.id()))
        .arg("--fsize=unlimited:")
        .status()
        .expect("prlimit runs");
    assert!(raised.success());
    let retry = wxhook::replay::send(&client, &server.url(), TOKEN, publish_push(refused[0]))
        .await
        .expect("request");
    assert!(
        retry.acknowledged(),
        "no recovery without a restart: {retry:?}"
    );
    acked.insert(format!("publish-{}-0", refused[0]));
    wait_for_lines(&dir.path().join("events.jsonl"), acked.len()).await;
    assert_eq!(
        ready(server.addr).await.0,
        200,
        "ready again once writes succeed"
    );
    drop(server);

    // After a restart everything acknowledged is there, and the other refused pushes are taken.
    let server = Binary::serve(&config, &dir.path().join("run2.log"), None);
    let retry = wxhook::replay::send(&client, &server.url(), TOKEN, publish_push(refused[1]))
        .await
        .expect("request");
    assert!(retry.acknowledged(), "{retry:?}");
    acked.insert(format!("publish-{}-0", refused[1]));
    audit_delivered(&server, &acked, || id_set(&dir.path().join("events.jsonl"))).await;
}

/// The event bodies in the spool, oldest first, as the file sink writes them.
fn stored_bodies(dir: &std::path::Path) -> Vec<String> {
    let admin = wxhook::spool::admin::Admin::open(&dir.join("spool")).expect("spool opens");
    let mut events = admin.recent(100, None).expect("events");
    events.reverse();
    events.into_iter().map(|e| e.body).collect()
}

/// The state a crash between writing a batch and recording it leaves: the file holds some
/// of the batch and a torn line, the spool still counts the whole batch as pending.
#[tokio::test]
async fn a_file_sink_after_a_crash_mid_batch_cuts_the_torn_line_and_writes_each_event_once() {
    for written in [0, 2, 5] {
        let dir = tempfile::tempdir().expect("tempdir");
        let app = TestApp::spawn(&broken_sink_toml(dir.path())).await;
        for id in 1..=5 {
            assert!(app.push(&publish_push(id)).await.acknowledged());
        }
        app.stop().await;
        let bodies = stored_bodies(dir.path());
        assert_eq!(bodies.len(), 5);

        // What the dead process got onto disk: an older line, `written` whole events of
        // the batch, and half of the next one.
        std::fs::create_dir(dir.path().join("later")).expect("mkdir");
        let file = dir.path().join("later").join("events.jsonl");
        let mut disk = String::from("{\"id\":\"from-before\"}\n");
        for body in &bodies[..written] {
            disk.push_str(body);
            disk.push('\n');
        }
        if let Some(next) = bodies.get(written) {
            disk.push_str(&next[..next.len() / 2]);
        }
        std::fs::write(&file, disk).expect("write");

        let app = TestApp::spawn(&broken_sink_toml(dir.path())).await;
        assert!(app.push(&publish_push(6)).await.acknowledged());
        let lines = wait_for_lines(&file, 7).await;
        let mut expected = vec!["{\"id\":\"from-before\"}".to_owned()];
        expected.extend(bodies.iter().cloned());
        expected.extend(stored_bodies(dir.path()).into_iter().skip(5));
        assert_eq!(lines, expected, "with {written} events already written");
        app.stop().await;
    }
}

/// `kill -9` again and again under load: every acknowledged push is in the file exactly
/// once, and every line is whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_kill_9_cycles_leave_every_acknowledged_push_in_the_file_exactly_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("wxhook.toml");
    std::fs::write(&config, config_toml(dir.path(), "listen = \"127.0.0.1:0\"")).expect("config");
    let events = dir.path().join("events.jsonl");
    let mut acked = BTreeSet::new();
    let cycles = 8u64;
    for cycle in 0..cycles {
        let log = dir.path().join(format!("run{cycle}.log"));
        let mut server = Binary::serve(&config, &log, None);
        let first = 1 + cycle * 100_000;
        let load = tokio::spawn(push_many(server.url(), first, 20_000, 16));
        let before = read_lines(&events).len();
        // Vary the moment of the kill from cycle to cycle.
        let wanted = before + 50 + usize::try_from(cycle * 37).unwrap_or(0);
        wait_for_progress(&server, wanted, || read_lines(&events).len()).await;
        server.kill9();
        let got = load.await.expect("load joins");
        assert!(got.len() < 20_000, "the kill came too late");
        acked.extend(got);
    }
    let server = Binary::serve(&config, &dir.path().join("last.log"), None);
    audit_delivered(&server, &acked, || id_set(&events)).await;
    drop(server);

    let text = std::fs::read_to_string(&events).expect("file");
    assert!(text.ends_with('\n'), "the file ends in a torn line");
    let lines: Vec<String> = text.lines().map(str::to_owned).collect();
    for line in &lines {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "a partial line: {line}"
        );
    }
    let all = ids(&lines);
    let unique: BTreeSet<&String> = all.iter().collect();
    assert_eq!(
        unique.len(),
        all.len(),
        "{} events are in the file more than once",
        all.len() - unique.len()
    );
    eprintln!(
        "{cycles} kill -9 cycles: {} acknowledged, {} lines, none twice",
        acked.len(),
        all.len()
    );
}
