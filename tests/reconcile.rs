//! Reconciliation against the WeChat stand-in: outcomes learned by polling when the push never came, deduplicated against pushes, across restarts; abandoned jobs; WeChat's callback ranges.

mod common;

use common::publishing::{APP_SECRET, Stage, count, sim_options};
use common::{Binary, TOKEN};
use serde_json::Value;
use std::time::{Duration, Instant};

/// Waits until `probe` holds.
async fn until(what: &str, mut probe: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !probe().await {
        assert!(Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_push_is_found_by_polling_and_the_late_push_is_a_duplicate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stage = Stage::start(dir.path(), sim_options(), "reconcile_after = \"1s\"", "").await;
    let out = stage
        .cli_json(&["publish", "submit", "draft_nopush_n2"])
        .await;
    let publish_id = out[0]["publish_id"].as_str().expect("id").to_owned();
    let id = format!("publish-{publish_id}-0");
    let events = stage.wait_event(&id).await;
    let event = events.iter().find(|e| e["id"] == id).expect("event");
    assert_eq!(event["source"], "poll");
    assert_eq!(event["account"], "main");
    assert_eq!(event["app_id"], common::publishing::APP_ID);
    assert_eq!(event["msg_type"], "event");
    assert_eq!(event["event"], "PUBLISHJOBFINISH");
    assert!(event["to_user_name"].is_null(), "no push seen yet: {event}");
    assert_eq!(event["job"]["media_id"], "draft_nopush_n2");
    assert_eq!(event["publish_event_info"]["article_detail"]["count"], 2);
    let create_time = event["create_time"].as_u64().expect("number");
    assert!(create_time.abs_diff(common::now()) < 60, "the poll's time");

    // The push WeChat did not deliver arrives late after all: acknowledged, not delivered again.
    let status = stage.cli_json(&["publish", "status", &publish_id]).await;
    let info = &status[0];
    let xml = format!(
        "<xml><ToUserName><![CDATA[gh_x]]></ToUserName><FromUserName><![CDATA[mp]]></FromUserName><CreateTime>{}</CreateTime>\
         <MsgType><![CDATA[event]]></MsgType><Event><![CDATA[PUBLISHJOBFINISH]]></Event><PublishEventInfo>\
         <publish_id>{publish_id}</publish_id><publish_status>0</publish_status><article_id>{}</article_id>\
         <article_detail><count>2</count><item><idx>1</idx><article_url>{}</article_url></item><item><idx>2</idx><article_url>{}</article_url></item></article_detail>\
         </PublishEventInfo></xml>",
        common::now(),
        info["article_id"].as_str().expect("article_id"),
        info["article_detail"]["item"][0]["article_url"]
            .as_str()
            .expect("url"),
        info["article_detail"]["item"][1]["article_url"]
            .as_str()
            .expect("url"),
    );
    let answer = stage.app().push(xml.as_bytes()).await;
    assert!(answer.acknowledged(), "{answer:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        count(&stage.events(), &id),
        1,
        "the outcome reaches the sink once"
    );
    let jobs = stage.cli_json(&["publish", "jobs"]).await;
    assert_eq!(jobs[0]["source"], "poll");
    assert!(jobs[0]["next_poll_at"].is_null(), "polling stopped");
    let polls = stage.calls("freepublish/get").await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        stage.calls("freepublish/get").await,
        polls,
        "no poll after the outcome"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_outcome_costs_no_poll() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stage = Stage::start(dir.path(), sim_options(), "reconcile_after = \"2s\"", "").await;
    let out = stage.cli_json(&["publish", "submit", "draft_audit"]).await;
    let publish_id = out[0]["publish_id"].as_str().expect("id").to_owned();
    let id = format!("publish-{publish_id}-4");
    let events = stage.wait_event(&id).await;
    let event = events.iter().find(|e| e["id"] == id).expect("event");
    assert_eq!(event["source"], "push");
    assert_eq!(
        event["publish_event_info"]["fail_idx"],
        serde_json::json!([1])
    );
    assert_eq!(event["job"]["media_id"], "draft_audit");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(stage.calls("freepublish/get").await, 0);
    assert_eq!(stage.events().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_then_success_by_push() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stage = Stage::start(dir.path(), sim_options(), "reconcile_after = \"3s\"", "").await;
    // "publishing", then the outcome; both events name the job, no poll needed.
    let out = stage.cli_json(&["publish", "submit", "draft_slow"]).await;
    let publish_id = out[0]["publish_id"].as_str().expect("id").to_owned();
    let events = stage.wait_event(&format!("publish-{publish_id}-0")).await;
    let ids: Vec<&str> = events.iter().filter_map(|e| e["id"].as_str()).collect();
    assert_eq!(
        ids,
        [
            format!("publish-{publish_id}-1"),
            format!("publish-{publish_id}-0")
        ]
    );
    assert!(
        events
            .iter()
            .all(|e| e["source"] == "push" && e["job"]["media_id"] == "draft_slow"),
        "{events:?}"
    );
    let jobs = stage.cli_json(&["publish", "jobs"]).await;
    assert_eq!(jobs[0]["publish_status"], 0);
    assert!(jobs[0]["next_poll_at"].is_null());
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(stage.calls("freepublish/get").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_then_success_by_polling() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut options = sim_options();
    options.push_delay = Duration::from_secs(2);
    let stage = Stage::start(dir.path(), options, "reconcile_after = \"1s\"", "").await;
    // One pushed job first, so that wxhook knows the account's names.
    let out = stage.cli_json(&["publish", "submit", "draft_first"]).await;
    let first = out[0]["publish_id"].as_str().expect("id").to_owned();
    stage.wait_event(&format!("publish-{first}-0")).await;
    // The stand-in says "publishing" at the first poll, the outcome at a later one.
    let out = stage
        .cli_json(&["publish", "submit", "draft_slow_nopush"])
        .await;
    let publish_id = out[0]["publish_id"].as_str().expect("id").to_owned();
    let events = stage.wait_event(&format!("publish-{publish_id}-0")).await;
    let mine: Vec<&Value> = events
        .iter()
        .filter(|e| e["publish_event_info"]["publish_id"] == publish_id.as_str())
        .collect();
    let ids: Vec<&str> = mine.iter().filter_map(|e| e["id"].as_str()).collect();
    assert_eq!(
        ids,
        [
            format!("publish-{publish_id}-1"),
            format!("publish-{publish_id}-0")
        ],
        "each status once"
    );
    for event in &mine {
        assert_eq!(event["source"], "poll");
        assert_eq!(event["job"]["media_id"], "draft_slow_nopush");
        // The names of the account's last push.
        assert_eq!(event["to_user_name"], "gh_5imu1a70r000");
        assert_eq!(event["from_user_name"], "oSimulatorMpHelper000000000");
    }
    assert!(stage.calls("freepublish/get").await >= 2);
    let jobs = stage.cli_json(&["publish", "jobs", "--pending"]).await;
    assert!(jobs.is_empty(), "{jobs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_survives_a_kill_and_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut options = sim_options();
    options.push_delay = Duration::from_secs(4);
    options.drop_pushes = true;
    // The stand-in runs here; wxhook runs as the real binary, killed and restarted.
    let stage = Stage::start(dir.path(), options, "reconcile_after = \"500ms\"", "").await;
    let mut stage = stage;
    stage.stop().await;
    let config = dir.path().join("serve.toml");
    let toml = stage
        .toml
        .replace("[[accounts]]", "listen = \"127.0.0.1:0\"\n[[accounts]]");
    std::fs::write(&config, toml).expect("config");
    let log = dir.path().join("serve.log");
    let mut server = Binary::serve(&config, &log, None);
    let out = stage
        .cli_json(&["publish", "submit", "draft_restart"])
        .await;
    let publish_id = out[0]["publish_id"].as_str().expect("id").to_owned();
    until("a first poll", async || {
        stage.calls("freepublish/get").await >= 1
    })
    .await;
    server.kill9();
    let polls = stage.calls("freepublish/get").await;
    let log2 = dir.path().join("serve2.log");
    let server = Binary::serve(&config, &log2, None);
    let id = format!("publish-{publish_id}-0");
    let events = stage.wait_event(&id).await;
    assert_eq!(count(&events, &id), 1);
    assert_eq!(
        events.iter().find(|e| e["id"] == id).expect("event")["source"],
        "poll"
    );
    assert!(
        stage.calls("freepublish/get").await > polls,
        "the restarted server polled"
    );
    let stderr = server.stderr() + &std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        !stderr.contains(APP_SECRET),
        "the secret leaked into the log"
    );
    assert!(
        !stderr.contains("SIMTOKEN"),
        "an access token leaked into the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_without_outcome_is_reported_abandoned_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stage = Stage::start(
        dir.path(),
        sim_options(),
        "reconcile_after = \"300ms\"\nreconcile_max_age = \"2s\"",
        "",
    )
    .await;
    // A job the stand-in does not know: every poll fails (53502), none settles it.
    stage.cli_json(&["publish", "track", "777"]).await;
    let app = stage.app();
    let metrics_url = format!("http://{}/metrics", app.addr);
    let client = &stage.client;
    until("the job is abandoned", async || {
        let jobs = stage.cli_json(&["publish", "jobs"]).await;
        jobs[0]["abandoned_at"].is_string()
    })
    .await;
    let jobs = stage.cli_json(&["publish", "jobs"]).await;
    assert!(
        jobs[0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("53502")),
        "{jobs:?}"
    );
    assert!(jobs[0]["next_poll_at"].is_null());
    let polls = stage.calls("freepublish/get").await;
    assert!(polls >= 2, "polled with backoff before giving up: {polls}");
    let metrics = client
        .get(&metrics_url)
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let line = metrics
        .lines()
        .find(|l| l.starts_with("wxhook_publish_jobs_abandoned_total"))
        .unwrap_or_else(|| panic!("no abandoned metric:\n{metrics}"));
    assert!(line.ends_with(" 1"), "{line}");
    assert!(
        metrics.contains(
            "wxhook_api_requests_total{account=\"main\",api=\"freepublish/get\",errcode=\"53502\"}"
        ),
        "{metrics}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        stage.calls("freepublish/get").await,
        polls,
        "no poll after abandoning"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_from_wechat_follows_the_published_ranges() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut options = sim_options();
    options.callback_ips = vec!["10.9.9.0/24".into()];
    let mut stage = Stage::start(
        dir.path(),
        options,
        "callback_ip_refresh = \"1s\"",
        "allow_from = [\"wechat\"]",
    )
    .await;
    let xml = common::publish_push(5_000_000_001);
    until("the first ranges are in force", async || {
        stage.calls("getcallbackip").await >= 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        stage.app().push(&xml).await.status,
        403,
        "127.0.0.1 is not WeChat's"
    );
    stage
        .control(
            "callback_ips",
            serde_json::json!(["203.0.113.0/24", "127.0.0.1"]),
        )
        .await;
    until("the new ranges admit loopback", async || {
        stage.app().push(&xml).await.acknowledged()
    })
    .await;

    // A restart while the API is unreachable uses the stored ranges.
    stage.stop().await;
    let offline = stage.toml.replace(&stage.sim, "http://127.0.0.1:9");
    let app = common::TestApp::spawn(&offline).await;
    assert!(
        app.push(&common::publish_push(5_000_000_002))
            .await
            .acknowledged()
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_stay_out_of_check_logs_and_output() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stage = Stage::start(dir.path(), sim_options(), "", "").await;
    let (ok, out, err) = stage.cli(&["check"]).await;
    assert!(ok, "{err}");
    assert!(out.contains("app_secret = \"[redacted]\""), "{out}");
    assert!(
        !out.contains(APP_SECRET) && !out.contains(common::publishing::API_TOKEN),
        "{out}"
    );
    assert!(!out.contains(TOKEN), "{out}");
    let logged = std::process::Command::new(env!("CARGO_BIN_EXE_wxhook"))
        .args(["publish", "submit", "draft_e48001", "--config"])
        .arg(&stage.config)
        .env("WXHOOK_LOG", "trace")
        .output()
        .expect("runs");
    let text = String::from_utf8_lossy(&logged.stdout).into_owned()
        + &String::from_utf8_lossy(&logged.stderr);
    assert!(text.contains("48001"), "{text}");
    assert!(!text.contains(APP_SECRET), "the secret leaked: {text}");
    assert!(
        !text.contains("SIMTOKEN"),
        "the access token leaked: {text}"
    );
    let ok = stage.cli_json(&["publish", "list"]).await;
    assert!(
        !serde_json::to_string(&ok)
            .expect("json")
            .contains("SIMTOKEN")
    );
    let value: Value = serde_json::to_value(&ok).expect("json");
    assert!(value.is_array());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_tracked_after_its_push_settles_at_the_first_poll() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stage = Stage::start(dir.path(), sim_options(), "reconcile_after = \"500ms\"", "").await;
    // Submitted by another deployment (its own spool): the push still comes here.
    let elsewhere = dir.path().join("elsewhere.toml");
    let other_spool = dir.path().join("other-spool").display().to_string();
    let spool = dir.path().join("spool").display().to_string();
    std::fs::write(&elsewhere, stage.toml.replace(&spool, &other_spool)).expect("config");
    let (ok, out, err) =
        common::publishing::cli(&elsewhere, &["publish", "submit", "draft_elsewhere"]).await;
    assert!(ok, "{err}");
    let submitted: Value = serde_json::from_str(out.trim()).expect("json");
    let publish_id = submitted["publish_id"].as_str().expect("id").to_owned();
    let id = format!("publish-{publish_id}-0");
    let events = stage.wait_event(&id).await;
    assert!(events[0].get("job").is_none(), "not followed here yet");

    stage.cli_json(&["publish", "track", &publish_id]).await;
    until("the job learns its status", async || {
        let jobs = stage.cli_json(&["publish", "jobs"]).await;
        jobs[0]["publish_status"] == 0
    })
    .await;
    let jobs = stage.cli_json(&["publish", "jobs"]).await;
    assert_eq!(jobs[0]["source"], "push", "the stored event came by push");
    assert!(jobs[0]["next_poll_at"].is_null());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        stage.calls("freepublish/get").await,
        1,
        "one poll, then settled"
    );
    assert_eq!(count(&stage.events(), &id), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publishing_push_starts_following_the_job() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut options = sim_options();
    options.push_delay = Duration::from_secs(1);
    let stage = Stage::start(dir.path(), options, "reconcile_after = \"500ms\"", "").await;
    // Submitted by another deployment, whose pushes never come: only "publishing" does,
    // sent here by hand.
    let elsewhere = dir.path().join("elsewhere.toml");
    let other_spool = dir.path().join("other-spool").display().to_string();
    let spool = dir.path().join("spool").display().to_string();
    std::fs::write(&elsewhere, stage.toml.replace(&spool, &other_spool)).expect("config");
    let (ok, out, err) =
        common::publishing::cli(&elsewhere, &["publish", "submit", "draft_slow_nopush"]).await;
    assert!(ok, "{err}");
    let submitted: Value = serde_json::from_str(out.trim()).expect("json");
    let publish_id = submitted["publish_id"].as_str().expect("id").to_owned();
    let publishing = format!(
        "<xml><ToUserName><![CDATA[gh_x]]></ToUserName><FromUserName><![CDATA[mp]]></FromUserName><CreateTime>{}</CreateTime>\
         <MsgType><![CDATA[event]]></MsgType><Event><![CDATA[PUBLISHJOBFINISH]]></Event><PublishEventInfo>\
         <publish_id>{publish_id}</publish_id><publish_status>1</publish_status></PublishEventInfo></xml>",
        common::now()
    );
    assert!(stage.app().push(publishing.as_bytes()).await.acknowledged());
    let jobs = stage.cli_json(&["publish", "jobs"]).await;
    assert_eq!(jobs[0]["origin"], "push");
    assert_eq!(jobs[0]["publish_status"], 1);
    let id = format!("publish-{publish_id}-0");
    let events = stage.wait_event(&id).await;
    let outcome = events.iter().find(|e| e["id"] == id).expect("outcome");
    assert_eq!(outcome["source"], "poll");
    assert!(outcome["job"]["media_id"].is_null(), "{outcome}");
    assert_eq!(
        outcome["to_user_name"], "gh_x",
        "the names of the account's last push"
    );
    let ids: Vec<&str> = events.iter().filter_map(|e| e["id"].as_str()).collect();
    assert_eq!(ids, [format!("publish-{publish_id}-1"), id.clone()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settled_jobs_go_with_their_events_and_new_ones_are_still_seen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stage = Stage::start(dir.path(), sim_options(), "retention = \"1s\"", "").await;
    let out = stage.cli_json(&["publish", "submit", "draft_one"]).await;
    let first = out[0]["publish_id"].as_str().expect("id").to_owned();
    stage.wait_event(&format!("publish-{first}-0")).await;
    until("the settled job is pruned", async || {
        stage.cli_json(&["publish", "jobs"]).await.is_empty()
    })
    .await;
    // With no job left, a job submitted now is still found for its push.
    let out = stage.cli_json(&["publish", "submit", "draft_two"]).await;
    let second = out[0]["publish_id"].as_str().expect("id").to_owned();
    let events = stage.wait_event(&format!("publish-{second}-0")).await;
    let event = events
        .iter()
        .find(|e| e["id"] == format!("publish-{second}-0"))
        .expect("event");
    assert_eq!(event["job"]["media_id"], "draft_two");
}
