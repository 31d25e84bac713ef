//! The `nats` sink against a real nats-server with JetStream: exactly once across two replicas, NATS away under load, and dead letters.

mod common;

use common::nats::{NatsServer, free_port, messages, nats_server_binary, wait_messages};
use common::{TOKEN, TestApp, publish_push, read_lines};
use std::path::Path;
use std::time::Duration;

/// A replica: account `main`, a file sink and a `nats` sink, its own spool under `dir`.
fn replica_toml(dir: &Path, nats: &str, extra_sink: &str) -> String {
    format!(
        "data_dir = {data:?}\n[[accounts]]\nname = \"main\"\npath = \"/wechat\"\ntoken = {TOKEN:?}\n\
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
    let dir = tempfile::tempdir().expect("tempdir");
    let server = NatsServer::start(&bin, free_port(), dir.path());
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
    let client = async_nats::connect(server.url()).await.expect("connects");
    async_nats::jetstream::new(client)
        .create_stream(async_nats::jetstream::stream::Config {
            name: "OTHER".into(),
            subjects: vec!["other.>".into()],
            ..Default::default()
        })
        .await
        .expect("stream");
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
