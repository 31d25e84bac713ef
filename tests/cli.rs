//! The `wxhook` binary as a user runs it: env-only quick start, `replay`, `check`, start-up errors, the stdout and log sinks.

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

fn wxhook() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_wxhook"));
    for (key, _) in std::env::vars() {
        if key.starts_with("WXHOOK_") {
            c.env_remove(key);
        }
    }
    c.env("NO_COLOR", "1");
    c
}

fn fixture(name: &str) -> String {
    fixtures_dir()
        .join("pushes")
        .join(name)
        .display()
        .to_string()
}

#[test]
fn quick_start_from_environment_alone_prints_events_on_stdout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("stderr.log");
    let mut child = wxhook()
        .arg("serve")
        .env("WXHOOK_TOKEN", "quickstart-token-6f1e")
        .env("WXHOOK_LISTEN", "127.0.0.1:0")
        .env("WXHOOK_DATA_DIR", dir.path().join("data"))
        .env("WXHOOK_PATH", "/cb")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("starts");
    let addr = wait_for_addr(&log);
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });

    let replay = wxhook()
        .args(["replay", &fixture("publish_success.xml"), "--url"])
        .arg(format!("http://{addr}/cb"))
        .args(["--token", "quickstart-token-6f1e"])
        .output()
        .expect("replay runs");
    let printed = String::from_utf8_lossy(&replay.stdout);
    assert!(replay.status.success(), "{printed}");
    assert!(
        printed.contains("publish_success.xml: 200 success"),
        "{printed}"
    );

    let line = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("a line on stdout");
    let event: serde_json::Value = serde_json::from_str(&line).expect("stdout line is JSON");
    assert_eq!(event["account"], "default");
    assert_eq!(event["id"], "publish-2247503051-0");
    assert_eq!(
        event["publish_event_info"]["article_detail"]["item"][0]["idx"],
        1
    );

    // `health` with no arguments asks /readyz where WXHOOK_LISTEN says the server is.
    let health = wxhook()
        .arg("health")
        .env("WXHOOK_LISTEN", addr.to_string())
        .output()
        .expect("health runs");
    assert!(
        health.status.success(),
        "{}",
        String::from_utf8_lossy(&health.stderr)
    );
    let elsewhere = wxhook()
        .arg("health")
        .env("WXHOOK_LISTEN", "0.0.0.0:1")
        .output()
        .expect("health runs");
    assert!(!elsewhere.status.success());
    assert!(
        String::from_utf8_lossy(&elsewhere.stderr)
            .contains("cannot reach http://127.0.0.1:1/readyz"),
        "{}",
        String::from_utf8_lossy(&elsewhere.stderr)
    );

    // A wrong token: the replay tool reports the refusal and fails.
    let refused = wxhook()
        .args(["replay", &fixture("event_click.xml"), "--url"])
        .arg(format!("http://{addr}/cb"))
        .args(["--token", "wrong"])
        .output()
        .expect("replay runs");
    assert!(!refused.status.success());
    let printed = String::from_utf8_lossy(&refused.stdout);
    assert!(
        printed.contains("401 signature does not match"),
        "{printed}"
    );

    let _ = child.kill();
    let _ = child.wait();
    let logs = std::fs::read_to_string(&log).expect("log");
    assert!(
        !logs.contains("quickstart-token-6f1e"),
        "the token leaked into logs"
    );
    // At the default level a refusal is logged with its reason; accepted pushes are not
    // (they are counted in /metrics and listed by `wxhook events`).
    assert!(
        logs.contains("request refused")
            && logs.contains("outcome=")
            && logs.contains("signature does not match"),
        "{logs}"
    );
    assert!(!logs.contains("push accepted"), "{logs}");
}

#[test]
fn no_token_anywhere_refuses_to_start_and_says_how() {
    let out = wxhook().arg("serve").output().expect("runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("set WXHOOK_TOKEN"), "{err}");
}

#[test]
fn check_prints_the_configuration_without_secrets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("wxhook.toml");
    let relay = "\n[[sinks]]\ntype = \"http\"\nurl = \"https://relay:hunter2@example.com/hook\"\n";
    std::fs::write(&path, format!("{}{relay}", config_toml(dir.path(), ""))).expect("config");
    let out = wxhook()
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .expect("runs");
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!printed.contains(TOKEN), "{printed}");
    assert!(printed.contains("token = \"[redacted]\""), "{printed}");
    assert!(printed.contains("type = \"file\""), "{printed}");
    assert!(!printed.contains("hunter2"), "{printed}");
    assert!(
        printed.contains("url = \"https://[redacted]@example.com/hook\""),
        "{printed}"
    );
    assert!(
        printed.contains("timestamp_tolerance_secs = 300"),
        "{printed}"
    );
}

/// A `nats` sink named `bus` with `keys`.
fn nats_sink(keys: &str) -> String {
    format!("\n[[sinks]]\ntype = \"nats\"\nname = \"bus\"\n{keys}\n")
}

#[test]
fn configuration_mistakes_are_named_at_start_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("wxhook.toml");
    let cases = [
        (
            config_toml(dir.path(), "").replace("type = \"file\"", "type = \"fiel\""),
            "fiel",
        ),
        (
            config_toml(dir.path(), "").replace("path = \"/wechat\"", "pth = \"/wechat\""),
            "pth",
        ),
        (
            config_toml(dir.path(), "listen = \"localhost-ish\""),
            "listen",
        ),
        (
            config_toml(dir.path(), "max_body_bytes = \"big\""),
            "max_body_bytes",
        ),
        (
            config_toml(dir.path(), "") + &nats_sink("url = \"http://127.0.0.1:4222\""),
            "sink `bus`: url `http://127.0.0.1:4222` is not a NATS server address",
        ),
        (
            config_toml(dir.path(), "")
                + &nats_sink(
                    "url = \"nats://127.0.0.1:4222\"\ncredentials_file = \"/nonexistent/bus.creds\"",
                ),
            "sink `bus`: cannot read credentials_file /nonexistent/bus.creds",
        ),
        (
            config_toml(dir.path(), "replay_guard = \"nats\"")
                + &nats_sink("url = \"nats://127.0.0.1:4222\""),
            "needs a [replay_guard_nats] table",
        ),
        (
            config_toml(
                dir.path(),
                "replay_guard = \"nats\"\n[replay_guard_nats]\nsink = \"bsu\"",
            ) + &nats_sink("url = \"nats://127.0.0.1:4222\""),
            "[replay_guard_nats]: `sink = \"bsu\"` names no [[sinks]] of type \"nats\"",
        ),
        (
            config_toml(
                dir.path(),
                "replay_guard = \"nats\"\n[replay_guard_nats]\nurl = \"nats://127.0.0.1:4222\"\ntls = { ca_file = \"/nonexistent/ca.pem\" }",
            ),
            "[replay_guard_nats]: cannot read tls.ca_file /nonexistent/ca.pem",
        ),
    ];
    for (text, named) in cases {
        std::fs::write(&path, text).expect("config");
        for command in ["check", "serve"] {
            let out = wxhook()
                .args([command, "--config"])
                .arg(&path)
                .output()
                .expect("runs");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{command} accepted a bad config");
            assert!(err.contains(named), "{command}: {err}");
        }
    }
    let out = wxhook()
        .args(["check", "--config", "/nonexistent/wxhook.toml"])
        .output()
        .expect("runs");
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
}

#[test]
fn environment_overrides_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("wxhook.toml");
    let relay = "\n[[sinks]]\ntype = \"http\"\nurl = \"https://relay:hunter2@example.com/hook\"\n";
    std::fs::write(&path, format!("{}{relay}", config_toml(dir.path(), ""))).expect("config");
    let out = wxhook()
        .args(["check", "--config"])
        .arg(&path)
        .env("WXHOOK_LISTEN", "0.0.0.0:9999")
        .env("WXHOOK_TIMESTAMP_TOLERANCE_SECS", "60")
        .output()
        .expect("runs");
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("listen = \"0.0.0.0:9999\""), "{printed}");
    assert!(
        printed.contains("timestamp_tolerance_secs = 60"),
        "{printed}"
    );
}

#[test]
fn log_sink_writes_one_structured_record_per_event() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("wxhook.toml");
    let toml = config_toml(dir.path(), "listen = \"127.0.0.1:0\"")
        .replace("type = \"file\"", "type = \"log\"")
        .replace(
            &format!(
                "path = {:?}\n",
                dir.path().join("events.jsonl").display().to_string()
            ),
            "",
        );
    std::fs::write(&path, toml).expect("config");
    let server = Binary::serve(&path, &dir.path().join("stderr.log"), None);
    let replay = wxhook()
        .args([
            "replay",
            &fixture("text_message_cjk.xml"),
            "--url",
            &server.url(),
            "--token",
            TOKEN,
        ])
        .output()
        .expect("replay runs");
    assert!(replay.status.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let logs = server.stderr();
        if let Some(record) = logs.lines().find(|l| l.contains("wxhook::event")) {
            assert!(record.contains("id=msg-24830395848221234"), "{record}");
            assert!(record.contains("account=main"), "{record}");
            assert!(record.contains("你好"), "{record}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no event record:\n{logs}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
