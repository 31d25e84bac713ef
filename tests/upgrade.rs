//! A spool written by the previous release (schema 2, `fixtures/spool-v2`): every command works on it, and its events become findable by id through an index.
//!
//! The fixture was written by the release before schema 3: five pushes accepted, the
//! `file` sink delivered four and failed the fifth (its directory was missing), and the
//! `http` sink `crm` gave all five up as dead letters.

mod common;

use common::downstream::{Behaviour, Downstream};
use common::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn wxhook(args: &[&str], data_dir: &Path) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_wxhook"))
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .env_remove("WXHOOK_CONFIG")
        .env_remove("WXHOOK_DATA_DIR")
        .output()
        .expect("wxhook runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn old_spool(dir: &Path) -> std::path::PathBuf {
    let spool = dir.join("spool");
    std::fs::create_dir_all(&spool).expect("mkdir");
    std::fs::copy(
        fixtures_dir().join("spool-v2").join("wxhook.db"),
        spool.join("wxhook.db"),
    )
    .expect("copy the old spool");
    spool
}

fn schema(spool: &Path) -> (i64, String) {
    let conn = rusqlite::Connection::open(spool.join("wxhook.db")).expect("open");
    let version = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .expect("version");
    let plan: String = conn
        .query_row(
            "EXPLAIN QUERY PLAN SELECT seq FROM events WHERE id = 'x'",
            [],
            |r| r.get(3),
        )
        .expect("plan");
    (version, plan)
}

#[test]
fn the_operator_commands_work_on_a_spool_of_the_previous_release() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = old_spool(dir.path());
    let (version, plan) = schema(&spool);
    assert_eq!(version, 2, "the fixture is a schema-2 spool");
    assert!(plan.contains("SCAN"), "{plan}");

    let (ok, out, err) = wxhook(&["events", "list"], &spool);
    assert!(ok, "{err}");
    assert_eq!(
        out.lines().filter(|l| !l.starts_with(' ')).count(),
        5,
        "{out}"
    );
    let (version, plan) = schema(&spool);
    assert_eq!(version, 7, "opening it migrated it");
    assert!(plan.contains("INDEX events_id"), "{plan}");

    let (ok, out, err) = wxhook(&["events", "show", "publish-2247503051-0"], &spool);
    assert!(ok, "{err}");
    assert!(out.contains("\"id\":\"publish-2247503051-0\""), "{out}");
    assert!(out.contains("crm") && out.contains("dead"), "{out}");
    let (ok, _, err) = wxhook(&["events", "show", "no-such-id"], &spool);
    assert!(!ok);
    assert!(err.contains("no event with id `no-such-id`"), "{err}");

    let (ok, out, err) = wxhook(&["dead-letters", "list"], &spool);
    assert!(ok, "{err}");
    assert_eq!(
        out.lines().count(),
        6,
        "a header and five dead letters:\n{out}"
    );
    let (ok, out, err) = wxhook(
        &[
            "dead-letters",
            "retry",
            "--sink",
            "crm",
            "msg-24830395848221234",
        ],
        &spool,
    );
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "1 dead letters queued again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_on_a_spool_of_the_previous_release_delivers_what_it_still_owed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = old_spool(dir.path());
    let (ok, _, err) = wxhook(&["dead-letters", "retry", "--sink", "crm"], &spool);
    assert!(ok, "{err}");
    let downstream = Downstream::start(Behaviour::Ok).await;
    let events = dir.path().join("events.jsonl");
    let config = dir.path().join("wxhook.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = {spool:?}\n\
             [[accounts]]\nname = \"main\"\ntoken = {TOKEN:?}\n\
             [[sinks]]\ntype = \"file\"\npath = {events:?}\n\
             [[sinks]]\ntype = \"http\"\nname = \"crm\"\nurl = {url:?}\n",
            spool = spool.display().to_string(),
            events = events.display().to_string(),
            url = downstream.url(),
        ),
    )
    .expect("config");
    let server = Binary::serve(&config, &dir.path().join("serve.log"), None);
    // The file sink gets the one event it had not taken; the relay every re-queued one.
    let lines = wait_for_lines(&events, 1).await;
    assert_eq!(ids(&lines), ["event-1732171400-368f16149aea9661dfb959cd"]);
    let delivered = downstream.wait_delivered(5, Duration::from_secs(20)).await;
    assert_eq!(delivered.len(), 5, "{delivered:?}");
    // A new push lands after them, and its retry is still recognised.
    let client = reqwest::Client::new();
    for _ in 0..2 {
        let answer = wxhook::replay::send(&client, &server.url(), TOKEN, publish_push(77))
            .await
            .expect("request");
        assert!(answer.acknowledged(), "{answer:?}");
    }
    let lines = wait_for_lines(&events, 2).await;
    assert_eq!(ids(&lines)[1], "publish-77-0");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        read_lines(&events).len(),
        2,
        "the retry was delivered again"
    );
    drop(server);
}
