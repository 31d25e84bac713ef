//! The `http` sink against a real downstream on loopback: outages, error codes, Retry-After, timeouts, 410, dead letters, restarts and signatures.

mod common;

use common::downstream::{Behaviour, Downstream};
use common::*;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};
use wxhook::spool::admin::{Admin, DeliveryState};

/// One account, one `http` sink named `relay` (fast retries unless `extra` says otherwise),
/// and a `file` sink, both fed every event.
fn relay_toml(dir: &Path, url: &str, extra: &str) -> String {
    format!(
        "data_dir = {data:?}\n[[accounts]]\nname = \"main\"\npath = \"/wechat\"\ntoken = {TOKEN:?}\n\n\
         [[sinks]]\ntype = \"http\"\nname = \"relay\"\nurl = {url:?}\nretry_base = \"50ms\"\nretry_cap = \"200ms\"\n{extra}\n\n\
         [[sinks]]\ntype = \"file\"\npath = {file:?}\n",
        data = dir.join("spool").display().to_string(),
        file = dir.join("events.jsonl").display().to_string(),
    )
}

/// One sink's delivery state of event `id`, read from the spool in `dir`.
fn sink_state(dir: &Path, id: &str, sink: &str) -> DeliveryState {
    let events = Admin::open(&dir.join("spool"))
        .expect("admin")
        .find(id)
        .expect("find");
    let event = events.first().unwrap_or_else(|| panic!("no event {id}"));
    event
        .deliveries
        .iter()
        .find(|d| d.sink == sink)
        .cloned()
        .unwrap_or_else(|| panic!("no {sink} delivery for {id}"))
}

fn ids_of(range: std::ops::RangeInclusive<u64>) -> Vec<String> {
    range.map(|i| format!("publish-{i}-0")).collect()
}

fn free_port() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downstream_down_then_up_gets_everything_once_and_wechat_never_waits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let addr = free_port();
    let url = format!("http://{addr}/hook");
    let app = TestApp::spawn(&relay_toml(dir.path(), &url, "")).await;
    for id in 1..=20 {
        let started = Instant::now();
        assert!(app.push(&publish_push(id)).await.acknowledged());
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "WeChat was kept waiting"
        );
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let downstream = Downstream::start_on(addr, Behaviour::Ok).await;
    let mut got = downstream.wait_delivered(20, Duration::from_secs(10)).await;
    got.sort();
    let mut want = ids_of(1..=20);
    want.sort();
    assert_eq!(got, want);
    assert_eq!(
        downstream.delivered_ids().len(),
        20,
        "an event was delivered twice"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_then_success_are_retried_and_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let downstream = Downstream::start(Behaviour::FailFirst(2, 500)).await;
    let app = TestApp::spawn(&relay_toml(dir.path(), &downstream.url(), "")).await;
    for id in 1..=3 {
        assert!(app.push(&publish_push(id)).await.acknowledged());
    }
    downstream.wait_delivered(3, Duration::from_secs(10)).await;
    let mut per_id: BTreeMap<String, Vec<u16>> = BTreeMap::new();
    for r in downstream.received() {
        per_id.entry(r.id).or_default().push(r.status);
    }
    for (id, statuses) in &per_id {
        assert_eq!(statuses, &[500, 500, 200], "{id}");
    }
    app.stop().await;
    let relay = sink_state(dir.path(), "publish-2-0", "relay");
    assert_eq!((relay.state.as_str(), relay.attempts), ("delivered", 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured() {
    let dir = tempfile::tempdir().expect("tempdir");
    let downstream = Downstream::start(Behaviour::RetryAfterFirst(2)).await;
    let app = TestApp::spawn(&relay_toml(
        dir.path(),
        &downstream.url(),
        "concurrency = 1",
    ))
    .await;
    assert!(app.push(&publish_push(1)).await.acknowledged());
    downstream.wait_delivered(1, Duration::from_secs(10)).await;
    let received = downstream.received();
    assert_eq!(
        received.iter().map(|r| r.status).collect::<Vec<_>>(),
        [429, 200]
    );
    let gap = received[1].at - received[0].at;
    assert!(
        gap >= Duration::from_millis(1900),
        "retried after {gap:?}, Retry-After said 2 s"
    );
    assert!(gap < Duration::from_secs(4), "waited {gap:?}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_downstream_times_out_and_is_retried() {
    let dir = tempfile::tempdir().expect("tempdir");
    let downstream = Downstream::start(Behaviour::HangFirst(Duration::from_secs(5))).await;
    let app = TestApp::spawn(&relay_toml(
        dir.path(),
        &downstream.url(),
        "timeout = \"300ms\"",
    ))
    .await;
    let started = Instant::now();
    assert!(app.push(&publish_push(1)).await.acknowledged());
    // The retry is answered at once; the hung first attempt is still sleeping in the downstream.
    let deadline = Instant::now() + Duration::from_secs(4);
    while !downstream.received().iter().any(|r| r.status == 200) {
        assert!(Instant::now() < deadline, "no retry after the timeout");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(started.elapsed() < Duration::from_secs(4));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_is_a_dead_letter_at_once_and_can_be_retried_from_the_command_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let downstream = Downstream::start(Behaviour::Always(410)).await;
    let app = TestApp::spawn(&relay_toml(dir.path(), &downstream.url(), "")).await;
    assert!(app.push(&publish_push(1)).await.acknowledged());
    assert!(app.push(&publish_push(2)).await.acknowledged());
    let spool = dir.path().join("spool");
    let deadline = Instant::now() + Duration::from_secs(10);
    let dead = loop {
        let dead = Admin::open(&spool)
            .expect("admin")
            .dead_letters(None)
            .expect("list");
        if dead.len() == 2 {
            break dead;
        }
        assert!(Instant::now() < deadline, "no dead letters: {dead:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(dead.iter().all(|d| d.sink == "relay" && d.attempts == 1));
    assert!(
        dead[0]
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("410")),
        "{dead:?}"
    );
    assert_eq!(
        downstream.received().len(),
        2,
        "410 was retried: {:?}",
        downstream
            .received()
            .iter()
            .map(|r| (&r.id, r.status))
            .collect::<Vec<_>>()
    );

    let list = std::process::Command::new(env!("CARGO_BIN_EXE_wxhook"))
        .args(["dead-letters", "list", "--data-dir"])
        .arg(&spool)
        .output()
        .expect("runs");
    let printed = String::from_utf8_lossy(&list.stdout);
    assert!(
        printed.contains("publish-1-0\tmain\trelay\t1\t"),
        "{printed}"
    );
    assert!(printed.contains("410 Gone"), "{printed}");

    // The downstream is fixed; the operator re-queues one dead letter while wxhook runs.
    downstream.set(Behaviour::Ok);
    let retry = std::process::Command::new(env!("CARGO_BIN_EXE_wxhook"))
        .args([
            "dead-letters",
            "retry",
            "publish-2-0",
            "--sink",
            "relay",
            "--data-dir",
        ])
        .arg(&spool)
        .output()
        .expect("runs");
    assert_eq!(
        String::from_utf8_lossy(&retry.stdout).trim(),
        "1 dead letters queued again"
    );
    downstream.wait_delivered(1, Duration::from_secs(10)).await;
    assert_eq!(downstream.delivered_ids(), ["publish-2-0"]);
    let left = Admin::open(&spool)
        .expect("admin")
        .dead_letters(Some("relay"))
        .expect("list");
    assert_eq!(
        left.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
        ["publish-1-0"]
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_stop_at_the_attempt_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let downstream = Downstream::start(Behaviour::Always(500)).await;
    let app = TestApp::spawn(&relay_toml(
        dir.path(),
        &downstream.url(),
        "retry_max_attempts = 3",
    ))
    .await;
    assert!(app.push(&publish_push(1)).await.acknowledged());
    let spool = dir.path().join("spool");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let dead = Admin::open(&spool)
            .expect("admin")
            .dead_letters(None)
            .expect("list");
        if let Some(d) = dead.first() {
            assert_eq!(d.attempts, 3);
            let error = d.last_error.clone().unwrap_or_default();
            assert!(
                error.contains("HTTP 500") && error.contains("gave up after 3 attempts"),
                "{error}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "never gave up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(downstream.received().len(), 3);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_sink_down_does_not_delay_the_other() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("http://{}/hook", free_port());
    let app = TestApp::spawn(&relay_toml(dir.path(), &url, "")).await;
    let started = Instant::now();
    for id in 1..=10 {
        assert!(app.push(&publish_push(id)).await.acknowledged());
    }
    let lines = wait_for_lines(&dir.path().join("events.jsonl"), 10).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the file sink was held up"
    );
    assert_eq!(ids(&lines), ids_of(1..=10));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_carry_the_event_json_and_webhook_headers_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let downstream = Downstream::start(Behaviour::Ok).await;
    let extra = "concurrency = 1\nheaders = { Authorization = \"Bearer downstream-key\" }";
    let app = TestApp::spawn(&relay_toml(dir.path(), &downstream.url(), extra)).await;
    for id in 1..=15 {
        assert!(app.push(&publish_push(id)).await.acknowledged());
    }
    downstream.wait_delivered(15, Duration::from_secs(10)).await;
    let lines = wait_for_lines(&dir.path().join("events.jsonl"), 15).await;
    let received = downstream.received();
    assert_eq!(
        received.iter().map(|r| r.id.clone()).collect::<Vec<_>>(),
        ids_of(1..=15)
    );
    for (r, line) in received.iter().zip(&lines) {
        assert_eq!(&r.body, line, "the relay and the file got different bytes");
        assert_eq!(r.content_type.as_deref(), Some("application/json"));
        assert_eq!(r.authorization.as_deref(), Some("Bearer downstream-key"));
        assert_eq!(r.signature, None, "signed without a secret");
        let ts: u64 = r.timestamp.parse().expect("webhook-timestamp is seconds");
        assert!(ts.abs_diff(now()) < 60);
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_resumes_the_retry_schedule() {
    let dir = tempfile::tempdir().expect("tempdir");
    let downstream = Downstream::start(Behaviour::FailFirst(1, 503)).await;
    let toml = relay_toml(dir.path(), &downstream.url(), "").replace(
        "retry_base = \"50ms\"\nretry_cap = \"200ms\"",
        "retry_base = \"3s\"\nretry_cap = \"3s\"",
    );
    let app = TestApp::spawn(&toml).await;
    assert!(app.push(&publish_push(1)).await.acknowledged());
    let deadline = Instant::now() + Duration::from_secs(5);
    while downstream.received().is_empty() {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    app.stop().await;
    let relay = sink_state(dir.path(), "publish-1-0", "relay");
    assert_eq!((relay.state.as_str(), relay.attempts), ("pending", 1));
    assert!(
        relay
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("503"))
    );

    let app = TestApp::spawn(&toml).await;
    downstream.wait_delivered(1, Duration::from_secs(10)).await;
    let second = downstream.received()[1].wall;
    let scheduled = std::time::UNIX_EPOCH
        + Duration::from_millis(u64::try_from(relay.next_attempt_at).expect("positive"));
    assert!(
        second + Duration::from_millis(50) >= scheduled,
        "retried before the schedule kept in the spool"
    );
    app.stop().await;
    let relay = sink_state(dir.path(), "publish-1-0", "relay");
    assert_eq!((relay.state.as_str(), relay.attempts), ("delivered", 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_deliveries_in_flight_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let downstream = Downstream::start(Behaviour::Ok).await;
    let config = dir.path().join("wxhook.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\n{}",
            relay_toml(dir.path(), &downstream.url(), "")
        ),
    )
    .expect("config");
    let mut server = Binary::serve(&config, &dir.path().join("run1.log"), None);
    let load = tokio::spawn(push_many(server.url(), 1, 3000, 16));
    wait_for_progress(&server, 100, || downstream.delivered_ids().len()).await;
    server.kill9();
    let acked = load.await.expect("load joins");
    assert!(
        acked.len() < 3000,
        "the kill came too late to test anything"
    );

    let server = Binary::serve(&config, &dir.path().join("run2.log"), None);
    audit_delivered(&server, &acked, || {
        downstream.delivered_ids().into_iter().collect()
    })
    .await;
    audit_delivered(&server, &acked, || id_set(&dir.path().join("events.jsonl"))).await;
}

/// Checks every delivery with the reference Python implementation of Standard Webhooks
/// (`pip install standardwebhooks`; `.ci/run` installs it and sets WXHOOK_TEST_PYTHON).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signatures_verify_with_the_reference_python_library_for_every_rotated_secret() {
    if !python_has(
        "signatures_verify_with_the_reference_python_library",
        "standardwebhooks",
    ) {
        return;
    }
    let old = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let new = "whsec_dGhpcyBpcyBhIHNlY29uZCBzZWNyZXQga2V5IQ==";
    let dir = tempfile::tempdir().expect("tempdir");
    let downstream = Downstream::start(Behaviour::Ok).await;
    let extra = format!("secret = [{old:?}, {new:?}]");
    let app = TestApp::spawn(&relay_toml(dir.path(), &downstream.url(), &extra)).await;
    for file in [
        "text_message_cjk.xml",
        "publish_success.xml",
        "masssendjobfinish.xml",
    ] {
        let xml = std::fs::read(fixtures_dir().join("pushes").join(file)).expect("fixture");
        assert!(app.push(&xml).await.acknowledged());
    }
    downstream.wait_delivered(3, Duration::from_secs(10)).await;
    app.stop().await;

    let deliveries: Vec<serde_json::Value> = downstream
        .received()
        .iter()
        .map(|r| {
            serde_json::json!({
                "id": r.id, "ts": r.timestamp, "sig": r.signature, "body": r.body,
            })
        })
        .collect();
    let input = dir.path().join("deliveries.json");
    std::fs::write(&input, serde_json::to_vec(&deliveries).expect("json")).expect("write");
    let script = r#"
import json, sys
from standardwebhooks import Webhook
deliveries = json.load(open(sys.argv[1], encoding="utf-8"))
checked = 0
for secret in sys.argv[2:]:
    for d in deliveries:
        headers = {"webhook-id": d["id"], "webhook-timestamp": d["ts"], "webhook-signature": d["sig"]}
        Webhook(secret).verify(d["body"], headers)
        checked += 1
# A tampered body must fail.
d = deliveries[0]
try:
    Webhook(sys.argv[2]).verify(d["body"] + " ", {"webhook-id": d["id"], "webhook-timestamp": d["ts"], "webhook-signature": d["sig"]})
    sys.exit("a tampered body verified")
except Exception:
    pass
print(f"verified {checked}")
"#;
    let python = std::env::var("WXHOOK_TEST_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let out = std::process::Command::new(&python)
        .arg("-c")
        .arg(script)
        .arg(&input)
        .args([old, new])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python}: {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "verified 6");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_prunes_delivered_events_and_keeps_dead_letters() {
    let dir = tempfile::tempdir().expect("tempdir");
    let downstream = Downstream::start(Behaviour::Ok).await;
    let toml = format!(
        "retention = \"1s\"\n{}",
        relay_toml(dir.path(), &downstream.url(), "")
    );
    let app = TestApp::spawn(&toml).await;
    assert!(app.push(&publish_push(1)).await.acknowledged());
    downstream.wait_delivered(1, Duration::from_secs(10)).await;
    downstream.set(Behaviour::Always(410));
    assert!(app.push(&publish_push(2)).await.acknowledged());
    wait_for_lines(&dir.path().join("events.jsonl"), 2).await;

    let spool = dir.path().join("spool");
    let events = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_wxhook"))
            .arg("events")
            .args(args)
            .arg("--data-dir")
            .arg(&spool)
            .output()
            .expect("runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let listed = events(&["list"]);
        if !listed.contains("publish-1-0") {
            assert!(
                listed.contains("publish-2-0"),
                "the dead letter was pruned:\n{listed}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "delivered event never pruned:\n{listed}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let shown = events(&["show", "publish-2-0"]);
    assert!(shown.contains("relay") && shown.contains("dead"), "{shown}");
    assert!(shown.contains("last error: HTTP 410 Gone"), "{shown}");
    assert!(
        shown.contains("file") && shown.contains("delivered"),
        "{shown}"
    );
    assert!(
        shown.contains("\"publish_id\":\"2\""),
        "the event JSON is shown:\n{shown}"
    );
    app.stop().await;
}
