//! Every fixture in fixtures/pushes, replayed through HTTP as WeChat would send it, reaches the file sink as exactly the expected JSON.

mod common;

use common::*;
use serde_json::Value;

/// The line without `received_at`, which differs per run; checks that it is RFC 3339 and recent.
fn without_received_at(line: &str) -> Value {
    let mut value: Value = serde_json::from_str(line).expect("sink line is JSON");
    let received = value
        .as_object_mut()
        .and_then(|o| o.shift_remove("received_at"))
        .expect("received_at present");
    let received = received.as_str().expect("received_at is a string");
    let at = humantime::parse_rfc3339(received).expect("received_at is RFC 3339");
    let age = std::time::SystemTime::now()
        .duration_since(at)
        .expect("received_at is not in the future");
    assert!(age.as_secs() < 120, "received_at {received} is not recent");
    value
}

#[tokio::test]
async fn every_fixture_reaches_the_file_sink_exactly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = TestApp::spawn(&config_toml(dir.path(), "")).await;
    let files = fixture_files();
    assert!(files.len() >= 15, "fixtures are missing");
    for file in &files {
        let answer = app.push(&std::fs::read(file).expect("fixture")).await;
        assert_eq!(
            (answer.status, answer.body.as_str()),
            (200, "success"),
            "{}",
            file.display()
        );
    }
    let lines = wait_for_lines(&dir.path().join("events.jsonl"), files.len()).await;
    let bless = std::env::var_os("WXHOOK_BLESS").is_some();
    for (file, line) in files.iter().zip(&lines) {
        let got = without_received_at(line);
        let expected_path = file.with_extension("json");
        if bless {
            let text = serde_json::to_string_pretty(&got).expect("json") + "\n";
            std::fs::write(&expected_path, text).expect("write expected JSON");
            continue;
        }
        let expected: Value = serde_json::from_str(
            &std::fs::read_to_string(&expected_path)
                .unwrap_or_else(|_| panic!("{} is missing", expected_path.display())),
        )
        .expect("expected JSON parses");
        assert_eq!(got, expected, "{}", file.display());
    }
    app.stop().await;
}

#[tokio::test]
async fn retries_of_every_fixture_are_delivered_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = TestApp::spawn(&config_toml(dir.path(), "")).await;
    let files = fixture_files();
    // WeChat's three attempts of each push, with fresh signatures each time.
    for _attempt in 0..3 {
        for file in &files {
            let answer = app.push(&std::fs::read(file).expect("fixture")).await;
            assert!(answer.acknowledged(), "{}: {answer:?}", file.display());
        }
    }
    // Sinks deliver in acceptance order: once the sentinel is there, any duplicate would be too.
    assert!(app.push(&publish_push(999_000_111)).await.acknowledged());
    let lines = wait_for_lines(&dir.path().join("events.jsonl"), files.len() + 1).await;
    assert_eq!(lines.len(), files.len() + 1, "duplicates reached the sink");
    let mut unique = ids(&lines);
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), files.len() + 1);
    app.stop().await;
}
