//! A third-party platform end to end with the real binary and the WeChat stand-in: a ticket, then `component_access_token`; an authorization exchanged for the account's tokens; publishing on its behalf (CLI and HTTP API), its push and its polled outcome; refreshes across restarts; revocation ending its jobs; no secret in sinks, logs or `check`.

mod common;

use common::platform::{AUTHORIZER, PLATFORM_SECRET, PlatformStage};
use common::publishing::API_TOKEN;
use common::python_has;
use serde_json::{Value, json};
use std::time::Duration;

/// The secrets the stand-in hands out, by the shape it gives them (a ticket, component
/// and authorizer access tokens, refresh tokens).
const SECRET_SHAPES: [&str; 4] = [
    "ticket@@@sim",
    "SIMCOMPONENT_",
    "SIMAUTH_",
    "refreshtoken@@@",
];

fn assert_no_secret(text: &str, place: &str) {
    for shape in SECRET_SHAPES.iter().chain([&PLATFORM_SECRET]) {
        assert!(
            !text.contains(shape),
            "{place} shows a secret ({shape}):\n{text}"
        );
    }
}

/// A ticket and an authorization through the stand-in's own sender; waits until the
/// account's tokens are stored.
async fn authorize(stage: &PlatformStage) {
    let answer = stage.control("ticket", json!({})).await;
    assert_eq!(answer["acknowledged"], true, "{}", stage.stderr());
    let answer = stage
        .control("authorize", json!({ "app_id": AUTHORIZER }))
        .await;
    assert_eq!(answer["acknowledged"], true, "{}", stage.stderr());
    stage.wait_authorizer(AUTHORIZER, "authorized").await;
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or_else(|| panic!("no {key} in {v}"))
}

#[tokio::test]
async fn a_platform_publishes_for_an_authorized_account_end_to_end() {
    if !python_has("a_platform_publishes_for_an_authorized_account", "wechatpy") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let stage = PlatformStage::start(dir.path(), 7200, "reconcile_after = \"3s\"").await;

    // Before any ticket: no component_access_token, so nothing to call.
    let (ok, _, err) = stage
        .cli(&["publish", "submit", "draft", "--app-id", AUTHORIZER])
        .await;
    assert!(!ok);
    assert!(
        err.contains("cannot be called through platform `agency`"),
        "{err}"
    );

    // The ticket and the authorization, as WeChat encrypts them (wechatpy).
    let ticket = stage.control("ticket", json!({ "send": false })).await;
    stage.send_by_wechatpy(str_of(&ticket, "xml")).await;
    let ticket_event = stage.wait_info_type("component_verify_ticket").await;
    assert!(ticket_event.get("component_verify_ticket").is_none());
    assert!(stage.authorizers().await.is_empty());
    let authorized = stage
        .control("authorize", json!({ "app_id": AUTHORIZER, "send": false }))
        .await;
    stage.send_by_wechatpy(str_of(&authorized, "xml")).await;
    let line = stage.wait_authorizer(AUTHORIZER, "authorized").await;
    assert_eq!(line["account"], "agency");
    assert_eq!(line["func_info"], json!([1, 7, 11]));
    assert!(line["access_token_until"].is_string(), "{line}");
    let event = stage.wait_info_type("authorized").await;
    assert_eq!(event["app_id"], AUTHORIZER);
    assert_eq!(stage.calls("api_component_token").await, 1);
    assert_eq!(stage.calls("api_query_auth").await, 1);

    // A platform entry is named with the authorized account, never alone.
    let (ok, _, err) = stage
        .cli(&["publish", "submit", "draft", "--account", "agency"])
        .await;
    assert!(!ok);
    assert!(err.contains("is a third-party platform"), "{err}");

    // Publishing on the account's behalf: the push arrives at /wechat/{appid}.
    let submitted = stage
        .cli_json(&[
            "publish",
            "submit",
            "draft-n2",
            "--account",
            "agency",
            "--app-id",
            AUTHORIZER,
        ])
        .await;
    assert_eq!(submitted[0]["account"], "agency");
    assert_eq!(submitted[0]["app_id"], AUTHORIZER);
    let publish_id = str_of(&submitted[0], "publish_id").to_owned();
    let outcome = stage.wait_event(&format!("publish-{publish_id}-0")).await;
    assert_eq!(outcome["account"], "agency");
    assert_eq!(outcome["app_id"], AUTHORIZER);
    assert_eq!(outcome["source"], "push");
    assert_eq!(outcome["job"]["media_id"], "draft-n2");
    assert_eq!(outcome["publish_event_info"]["article_detail"]["count"], 2);

    // The HTTP API, with `app_id`; no push comes, so reconciliation polls the account.
    let response = stage
        .client
        .post(format!("{}/api/publish", stage.base))
        .bearer_auth(API_TOKEN)
        .json(&json!({ "app_id": AUTHORIZER, "media_id": "api-nopush" }))
        .send()
        .await
        .expect("API answers");
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["app_id"], AUTHORIZER);
    let polled_id = str_of(&body, "publish_id").to_owned();
    let polled = stage.wait_event(&format!("publish-{polled_id}-0")).await;
    assert_eq!(polled["source"], "poll");
    assert_eq!(polled["app_id"], AUTHORIZER);
    assert_eq!(polled["job"]["media_id"], "api-nopush");
    let job: Value = stage
        .client
        .get(format!(
            "{}/api/publish/{polled_id}?app_id={AUTHORIZER}",
            stage.base
        ))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .expect("API answers")
        .json()
        .await
        .expect("json");
    assert_eq!(job["publish_status"], 0, "{job}");
    assert_eq!(job["app_id"], AUTHORIZER);
    assert_eq!(job["source"], "poll");
    let jobs = stage
        .cli_json(&["publish", "jobs", "--app-id", AUTHORIZER])
        .await;
    assert_eq!(jobs.len(), 2, "{jobs:?}");
    assert!(
        jobs.iter()
            .all(|j| j["publish_status"] == 0 && j["app_id"] == AUTHORIZER)
    );

    // The account's articles through its own token.
    let article = stage
        .cli_json(&[
            "publish",
            "article",
            &format!("ART_{publish_id}"),
            "--app-id",
            AUTHORIZER,
        ])
        .await;
    assert_eq!(article[0]["news_item"].as_array().map(Vec::len), Some(2));

    // No secret anywhere a user reads.
    assert_no_secret(&stage.everything_visible(), "the sink or a log");
    let (ok, checked, _) = stage.cli(&["check"]).await;
    assert!(ok);
    assert_no_secret(&checked, "`wxhook check`");
    let listed = stage.cli(&["platform", "authorizers"]).await.1;
    assert_no_secret(&listed, "`wxhook platform authorizers`");
}

#[tokio::test]
async fn an_authorized_accounts_token_is_refreshed_across_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Tokens live 2 s: each is renewed after 1 s.
    let mut stage = PlatformStage::start(dir.path(), 2, "").await;
    authorize(&stage).await;
    let first = stage.wait_authorizer(AUTHORIZER, "authorized").await;
    assert_eq!(stage.calls("api_authorizer_token").await, 0);

    for round in 1..=2u64 {
        stage.stop_server();
        tokio::time::sleep(Duration::from_millis(1300)).await;
        stage.start_server();
        let media_id = format!("draft-restart-{round}");
        let submitted = stage
            .cli_json(&["publish", "submit", &media_id, "--app-id", AUTHORIZER])
            .await;
        // Each refresh must use the refresh token the previous one returned: the
        // stand-in refuses any other.
        assert_eq!(stage.calls("api_authorizer_token").await, round);
        let publish_id = str_of(&submitted[0], "publish_id").to_owned();
        let outcome = stage.wait_event(&format!("publish-{publish_id}-0")).await;
        assert_eq!(outcome["app_id"], AUTHORIZER);
        assert_eq!(outcome["job"]["media_id"], media_id.as_str());
    }
    let last = stage.wait_authorizer(AUTHORIZER, "authorized").await;
    assert!(str_of(&last, "refreshed_at") > str_of(&first, "refreshed_at"));
    assert_eq!(stage.calls("api_query_auth").await, 1);
    assert_no_secret(&stage.everything_visible(), "the sink or a log");
}

#[tokio::test]
async fn revocation_ends_the_accounts_jobs_and_drops_its_tokens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stage = PlatformStage::start(dir.path(), 7200, "reconcile_after = \"1h\"").await;
    authorize(&stage).await;
    let submitted = stage
        .cli_json(&[
            "publish",
            "submit",
            "waiting-nopush",
            "--app-id",
            AUTHORIZER,
        ])
        .await;
    let publish_id = str_of(&submitted[0], "publish_id").to_owned();
    let pending = stage
        .cli_json(&["publish", "jobs", "--pending", "--app-id", AUTHORIZER])
        .await;
    assert_eq!(pending.len(), 1);

    let answer = stage
        .control("unauthorize", json!({ "app_id": AUTHORIZER }))
        .await;
    assert_eq!(answer["acknowledged"], true, "{}", stage.stderr());
    let event = stage.wait_info_type("unauthorized").await;
    assert_eq!(event["app_id"], AUTHORIZER);

    let line = stage.wait_authorizer(AUTHORIZER, "revoked").await;
    assert!(line["access_token_until"].is_null(), "{line}");
    let jobs = stage
        .cli_json(&["publish", "jobs", "--app-id", AUTHORIZER])
        .await;
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0]["publish_id"], publish_id.as_str());
    assert_eq!(jobs[0]["ended_by"], "revoked");
    assert!(jobs[0]["abandoned_at"].is_string());
    assert!(jobs[0]["next_poll_at"].is_null());
    assert!(
        stage
            .cli_json(&["publish", "jobs", "--pending"])
            .await
            .is_empty()
    );
    // Reported once.
    assert_eq!(
        stage
            .stderr()
            .matches("publish job ended: the account revoked its authorization")
            .count(),
        1,
        "{}",
        stage.stderr()
    );
    let (ok, _, err) = stage
        .cli(&["publish", "submit", "after", "--app-id", AUTHORIZER])
        .await;
    assert!(!ok);
    assert!(err.contains("it revoked its authorization"), "{err}");

    // Authorizing again brings the account back.
    let answer = stage
        .control("authorize", json!({ "app_id": AUTHORIZER }))
        .await;
    assert_eq!(answer["acknowledged"], true);
    stage.wait_authorizer(AUTHORIZER, "authorized").await;
    let again = stage
        .cli_json(&["publish", "submit", "again", "--app-id", AUTHORIZER])
        .await;
    let publish_id = str_of(&again[0], "publish_id").to_owned();
    stage.wait_event(&format!("publish-{publish_id}-0")).await;
    assert_eq!(stage.calls("api_query_auth").await, 2);
    assert_no_secret(&stage.everything_visible(), "the sink or a log");
}

#[tokio::test]
async fn an_authorization_before_any_ticket_completes_as_soon_as_a_ticket_comes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stage = PlatformStage::start(dir.path(), 7200, "").await;
    let answer = stage
        .control("authorize", json!({ "app_id": AUTHORIZER }))
        .await;
    assert_eq!(answer["acknowledged"], true, "{}", stage.stderr());
    // Without a ticket there is no component_access_token: the code waits, and says why.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let all = stage.authorizers().await;
        let waiting = all.iter().find(|a| a["app_id"] == AUTHORIZER);
        if waiting.is_some_and(|a| {
            a["state"] == "pending"
                && a["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("no component_verify_ticket yet"))
        }) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{all:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (ok, _, err) = stage
        .cli(&["publish", "submit", "too-early", "--app-id", AUTHORIZER])
        .await;
    assert!(!ok);
    assert!(err.contains("could not be exchanged"), "{err}");

    // The ticket arrives: publishing works at once, not at the code's next try.
    assert_eq!(
        stage.control("ticket", json!({})).await["acknowledged"],
        true
    );
    let submitted = stage
        .cli_json(&["publish", "submit", "right-after", "--app-id", AUTHORIZER])
        .await;
    let publish_id = str_of(&submitted[0], "publish_id").to_owned();
    let outcome = stage.wait_event(&format!("publish-{publish_id}-0")).await;
    assert_eq!(outcome["job"]["media_id"], "right-after");
    stage.wait_authorizer(AUTHORIZER, "authorized").await;
}
