//! Operating wxhook: health and readiness, Prometheus metrics, JSON logs, and a SIGTERM under load that loses nothing.

mod common;

use common::*;
use std::time::{Duration, Instant};

async fn get(client: &reqwest::Client, url: String) -> (u16, String) {
    let r = client.get(url).send().await.expect("request");
    (r.status().as_u16(), r.text().await.expect("text"))
}

#[tokio::test]
async fn health_readiness_and_metrics_tell_what_happened() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = TestApp::spawn(&config_toml(dir.path(), "")).await;
    let base = format!("http://{}", app.addr);
    assert_eq!(
        get(&app.client, format!("{base}/healthz")).await,
        (200, "ok\n".into())
    );
    assert_eq!(
        get(&app.client, format!("{base}/readyz")).await,
        (200, "ready\n".into())
    );

    assert!(app.push(&publish_push(1)).await.acknowledged());
    assert!(app.push(&publish_push(1)).await.acknowledged());
    assert_eq!(
        app.post_raw(&signed_query("forged", now()), publish_push(2))
            .await
            .status,
        401
    );
    wait_for_lines(&dir.path().join("events.jsonl"), 1).await;

    // The sink counts a delivery just after writing it: wait for the series, bounded.
    let series = [
        "wxhook_pushes_total{account=\"main\",outcome=\"accepted\"}",
        "wxhook_pushes_total{account=\"main\",outcome=\"duplicate\"}",
        "wxhook_pushes_total{account=\"main\",outcome=\"unauthorized\"}",
        "wxhook_request_duration_seconds_bucket{account=\"main\",le=\"0.01\"}",
        "wxhook_deliveries_total{sink=\"file\",outcome=\"delivered\"}",
        "wxhook_spool_depth{sink=\"file\"} 0",
        "wxhook_spool_oldest_pending_seconds{sink=\"file\"} 0",
        "wxhook_dead_letters{sink=\"file\"} 0",
        "wxhook_spool_commit_duration_seconds_bucket{le=\"0.01\"}",
        "wxhook_spool_group_size_count",
    ];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, text) = get(&app.client, format!("{base}/metrics")).await;
        assert_eq!(status, 200);
        let missing: Vec<&&str> = series.iter().filter(|s| !text.contains(**s)).collect();
        if missing.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "missing {missing:?} in:\n{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    app.stop().await;
}

#[tokio::test]
async fn operations_endpoints_can_have_their_own_listener() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = wxhook::config::Config::from_toml(
        &config_toml(dir.path(), "admin_listen = \"127.0.0.1:0\""),
        &|_| None,
    )
    .expect("config");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let app = wxhook::server::App::with_listener(config, listener).expect("app");
    let (main, admin) = (
        app.local_addr().expect("addr"),
        app.admin_addr().expect("admin addr"),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::new();
    assert_eq!(get(&client, format!("http://{admin}/readyz")).await.0, 200);
    assert_eq!(get(&client, format!("http://{main}/metrics")).await.0, 404);
    let _ = stop.send(());
    server.await.expect("joins").expect("stops");
}

#[test]
fn account_paths_may_not_shadow_the_operations_endpoints() {
    let dir = tempfile::tempdir().expect("tempdir");
    let toml = config_toml(dir.path(), "").replace("path = \"/wechat\"", "path = \"/metrics\"");
    let err = wxhook::config::Config::from_toml(&toml, &|_| None).expect_err("refused");
    assert!(
        err.to_string()
            .contains("taken by the operations endpoints"),
        "{err}"
    );
    let moved = format!("admin_listen = \"127.0.0.1:9\"\n{toml}");
    assert!(wxhook::config::Config::from_toml(&moved, &|_| None).is_ok());
}

#[test]
fn json_logs_are_one_object_per_line_with_the_request_span() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("wxhook.toml");
    std::fs::write(
        &path,
        config_toml(
            dir.path(),
            "listen = \"127.0.0.1:0\"\nlog_format = \"json\"",
        ),
    )
    .expect("config");
    let log = dir.path().join("stderr.log");
    // Accepted pushes are logged at debug.
    let server = Binary::serve(
        &path,
        &log,
        Some("export WXHOOK_LOG=info,wxhook::server::intake=debug"),
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wxhook"))
        .args([
            "replay",
            &fixtures_dir()
                .join("pushes/publish_success.xml")
                .display()
                .to_string(),
            "--url",
            &server.url(),
            "--token",
            TOKEN,
        ])
        .output()
        .expect("replay");
    assert!(out.status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let accepted = loop {
        let text = server.stderr();
        if let Some(line) = text.lines().find(|l| l.contains("push accepted")) {
            break line.to_owned();
        }
        assert!(Instant::now() < deadline, "no log line:\n{text}");
        std::thread::sleep(Duration::from_millis(20));
    };
    for line in server.stderr().lines() {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    }
    let v: serde_json::Value = serde_json::from_str(&accepted).expect("json");
    assert_eq!(v["fields"]["id"], "publish-2247503051-0");
    assert_eq!(v["span"]["account"], "main");
    assert!(!server.stderr().contains(TOKEN), "the token leaked");
    assert!(
        !server.stderr().contains("ARTICLE_URL"),
        "message content logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_drains_exits_0_and_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("wxhook.toml");
    std::fs::write(&config, config_toml(dir.path(), "listen = \"127.0.0.1:0\"")).expect("config");
    let mut server = Binary::serve(&config, &dir.path().join("run1.log"), None);
    let load = tokio::spawn(push_many(server.url(), 1, 4000, 16));
    let events = dir.path().join("events.jsonl");
    wait_for_progress(&server, 200, || read_lines(&events).len()).await;
    let pid = server.child.id().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    let started = Instant::now();
    let status = loop {
        if let Some(status) = server.child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(
        status.success(),
        "exit status {status:?}\n{}",
        server.stderr()
    );
    assert!(server.stderr().contains("stopped"), "{}", server.stderr());
    let acked = load.await.expect("load");
    assert!(acked.len() < 4000, "SIGTERM came too late to test anything");

    // Everything acknowledged is in the file, now or after the next start.
    let server = Binary::serve(&config, &dir.path().join("run2.log"), None);
    audit_delivered(&server, &acked, || id_set(&events)).await;
}
