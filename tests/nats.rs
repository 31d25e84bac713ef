//! The `nats` sink and the shared replay guard against a real nats-server with JetStream (the official release and Debian's 2.9): exactly once across two replicas, replays refused across them, NATS away, and dead letters.

mod common;

use common::nats::{
    NatsServer, create_stream, debian_nats_server_binary, free_port, messages, nats_server_binary,
    wait_messages,
};
use common::{TOKEN, TestApp, now, publish_push, read_lines, signed_query};
use std::path::Path;
use std::time::{Duration, Instant};

/// A replica: account `main`, a file sink and a `nats` sink, its own spool under `dir`.
fn replica_toml(dir: &Path, nats: &str, extra_sink: &str) -> String {
    guarded_replica_toml(dir, nats, "", extra_sink)
}

/// The same with top-level keys and tables (`top`) before the accounts.
fn guarded_replica_toml(dir: &Path, nats: &str, top: &str, extra_sink: &str) -> String {
    format!(
        "data_dir = {data:?}\n{top}\n[[accounts]]\nname = \"main\"\npath = \"/wechat\"\ntoken = {TOKEN:?}\n\
         [[sinks]]\ntype = \"file\"\npath = {file:?}\n\
         [[sinks]]\ntype = \"nats\"\nname = \"bus\"\nurl = {nats:?}\nretry_base = \"200ms\"\nretry_cap = \"1s\"\n{extra_sink}\n",
        data = dir.join("spool").display().to_string(),
        file = dir.join("events.jsonl").display().to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_store_each_event_once() {
    let Some(bin) = nats_server_binary("two_replicas_store_each_event_once") else {
        return;
    };
    two_replicas_scenario(&bin).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shared_replay_guard_refuses_a_replay_at_the_other_replica() {
    let Some(bin) = nats_server_binary("the_shared_replay_guard_refuses_a_replay") else {
        return;
    };
    shared_guard_scenario(&bin).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debian_nats_server_2_9_takes_the_sink_and_the_shared_guard() {
    let Some(bin) = debian_nats_server_binary("debian_nats_server_2_9") else {
        return;
    };
    two_replicas_scenario(&bin).await;
    shared_guard_scenario(&bin).await;
}

/// Two replicas on one server, each push to one and its retry to the other: the stream
/// holds each event once, its payload what the file sink got.
async fn two_replicas_scenario(bin: &Path) {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = NatsServer::start(bin, free_port(), dir.path());
    let (a_dir, b_dir) = (dir.path().join("a"), dir.path().join("b"));
    let a = TestApp::spawn(&replica_toml(&a_dir, &server.url(), "")).await;
    let b = TestApp::spawn(&replica_toml(&b_dir, &server.url(), "")).await;
    // Each push reaches one replica, and WeChat's retry of it the other.
    for id in 0..40u64 {
        let xml = publish_push(7_000_000_000 + id);
        let (first, retry) = if id % 2 == 0 { (&a, &b) } else { (&b, &a) };
        assert!(first.push(&xml).await.acknowledged());
        assert!(retry.push(&xml).await.acknowledged());
    }
    let stored = wait_messages(&server.url(), "WXHOOK", 40).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stored_again = messages(&server.url(), "WXHOOK").await;
    assert_eq!(stored_again.len(), 40, "every event exactly once");
    let ids: std::collections::BTreeSet<&str> = stored.iter().map(|m| m.msg_id.as_str()).collect();
    assert_eq!(ids.len(), 40);
    let first = &stored[0];
    assert_eq!(first.subject, "wxhook.main.publishjobfinish");
    assert_eq!(first.msg_id, "main:-:publish-7000000000-0");
    assert_eq!(first.id, "publish-7000000000-0");
    assert_eq!(first.account, "main");
    assert_eq!(first.event, "publishjobfinish");
    let payload = &first.payload;
    // The payload is byte for byte what the file sink of the replica that stored it got.
    let lines: Vec<String> = read_lines(&a_dir.join("events.jsonl"))
        .into_iter()
        .chain(read_lines(&b_dir.join("events.jsonl")))
        .collect();
    assert!(lines.iter().any(|l| l == payload), "{payload}");
    a.stop().await;
    b.stop().await;
}

/// Two replicas sharing `replay_guard = "nats"`: a signed query accepted at one is a
/// retry at the other with the same body and a replay (401) with another; NATS away, 503.
async fn shared_guard_scenario(bin: &Path) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = NatsServer::start(bin, free_port(), dir.path());
    let top = "timestamp_tolerance_secs = 60\nreplay_guard = \"nats\"\n[replay_guard_nats]\nsink = \"bus\"\ntimeout = \"1s\"";
    let a = TestApp::spawn(&guarded_replica_toml(
        &dir.path().join("a"),
        &server.url(),
        top,
        "",
    ))
    .await;
    let b = TestApp::spawn(&guarded_replica_toml(
        &dir.path().join("b"),
        &server.url(),
        top,
        "",
    ))
    .await;
    let query = signed_query(TOKEN, now());
    let (first, other) = (publish_push(9_100_000_001), publish_push(9_100_000_002));
    let answer = a.post_raw(&query, first.clone()).await;
    assert!(answer.acknowledged(), "{answer:?}");
    let answer = b.post_raw(&query, first.clone()).await;
    assert!(
        answer.acknowledged(),
        "the same query and body is a retry: {answer:?}"
    );
    for replica in [&b, &a] {
        let answer = replica.post_raw(&query, other.clone()).await;
        assert_eq!(answer.status, 401, "{answer:?}");
        assert!(answer.body.contains("replay"), "{answer:?}");
    }
    // The bucket forgets a query after twice the tolerance.
    let client = async_nats::connect(server.url()).await.expect("connects");
    let mut bucket = async_nats::jetstream::new(client)
        .get_stream("KV_wxhook_replay")
        .await
        .expect("the bucket's stream");
    let config = bucket.info().await.expect("info").config.clone();
    assert_eq!(config.max_age, Duration::from_secs(120));
    assert_eq!(config.max_messages_per_subject, 1);

    // NATS away: the guard cannot answer, so the push is not accepted unguarded.
    server.stop();
    let later = publish_push(9_100_000_003);
    let answer = a.post_raw(&signed_query(TOKEN, now()), later.clone()).await;
    assert_eq!(answer.status, 503, "{answer:?}");
    assert!(answer.body.contains("replay guard"), "{answer:?}");
    server.run();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let answer = a.post_raw(&signed_query(TOKEN, now()), later.clone()).await;
        if answer.acknowledged() {
            break;
        }
        assert_eq!(answer.status, 503, "{answer:?}");
        assert!(Instant::now() < deadline, "NATS is back but: {answer:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let stored = wait_messages(&server.url(), "WXHOOK", 2).await;
    let ids: Vec<&str> = stored.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, ["publish-9100000001-0", "publish-9100000003-0"]);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_are_answered_while_nats_is_away_and_the_stream_catches_up() {
    let Some(bin) = nats_server_binary("pushes_are_answered_while_nats_is_away") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let url = format!("nats://127.0.0.1:{port}");
    // wxhook starts before NATS exists at all.
    let app = TestApp::spawn(&replica_toml(dir.path(), &url, "")).await;
    for id in 0..20u64 {
        assert!(
            app.push(&publish_push(8_000_000_000 + id))
                .await
                .acknowledged()
        );
    }
    let mut server = NatsServer::start(&bin, port, dir.path());
    wait_messages(&url, "WXHOOK", 20).await;
    // Away again, under load, and back.
    server.stop();
    for id in 20..60u64 {
        assert!(
            app.push(&publish_push(8_000_000_000 + id))
                .await
                .acknowledged()
        );
    }
    server.run();
    let stored = wait_messages(&url, "WXHOOK", 60).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stored = if stored.len() == 60 {
        messages(&url, "WXHOOK").await
    } else {
        stored
    };
    assert_eq!(stored.len(), 60, "no loss, no duplicate");
    let ids: std::collections::BTreeSet<&str> = stored.iter().map(|m| m.msg_id.as_str()).collect();
    assert_eq!(ids.len(), 60);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subject_no_stream_takes_is_a_dead_letter() {
    let Some(bin) = nats_server_binary("a_subject_no_stream_takes_is_a_dead_letter") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let server = NatsServer::start(&bin, free_port(), dir.path());
    create_stream(
        &server.url(),
        async_nats::jetstream::stream::Config {
            name: "OTHER".into(),
            subjects: vec!["other.>".into()],
            ..Default::default()
        },
    )
    .await;
    let toml = replica_toml(
        dir.path(),
        &server.url(),
        "stream = \"OTHER\"\ncreate_stream = false",
    );
    let app = TestApp::spawn(&toml).await;
    assert!(app.push(&publish_push(9_000_000_001)).await.acknowledged());
    let config = dir.path().join("wxhook.toml");
    std::fs::write(&config, &toml).expect("config");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_wxhook"))
            .args(["dead-letters", "list", "--config"])
            .arg(&config)
            .output()
            .expect("runs");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.contains("publish-9000000001-0") {
            assert!(text.contains("no stream takes subject"), "{text}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no dead letter: {text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_stream_with_a_short_window_is_warned_about_at_start() {
    let Some(bin) = nats_server_binary("an_existing_stream_with_a_short_window") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let server = NatsServer::start(&bin, free_port(), dir.path());
    create_stream(
        &server.url(),
        async_nats::jetstream::stream::Config {
            name: "SHORT".into(),
            subjects: vec!["wxhook.>".into()],
            duplicate_window: Duration::from_secs(10),
            ..Default::default()
        },
    )
    .await;
    let toml = replica_toml(
        dir.path(),
        &server.url(),
        "stream = \"SHORT\"\ncreate_stream = false",
    )
    .replace("data_dir", "listen = \"127.0.0.1:0\"\ndata_dir");
    let config = dir.path().join("wxhook.toml");
    std::fs::write(&config, toml).expect("config");
    let process = common::Binary::serve(&config, &dir.path().join("stderr.log"), None);
    // No push at all: the check is made at start.
    let deadline = Instant::now() + Duration::from_secs(15);
    while !process.stderr().contains("shorter than 1 minute") {
        assert!(
            Instant::now() < deadline,
            "no warning:\n{}",
            process.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let client = async_nats::connect(server.url()).await.expect("connects");
    let mut stream = async_nats::jetstream::new(client)
        .get_stream("SHORT")
        .await
        .expect("stream");
    let info = stream.info().await.expect("info");
    assert_eq!(
        info.config.duplicate_window,
        Duration::from_secs(10),
        "an existing stream is never altered"
    );
}
