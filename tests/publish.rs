//! Publishing against the WeChat stand-in: every `wxhook publish` command, access tokens, retries by errcode, and the HTTP API.

mod common;

use common::publishing::{API_TOKEN, APP_SECRET, Stage, count, sim_options};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_works_against_the_stand_in() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stage = Stage::start(dir.path(), sim_options(), "", "").await;

    // submit: the stand-in answers publish_id as a JSON number above 2^31.
    let out = stage.cli_json(&["publish", "submit", "draft_n2"]).await;
    assert_eq!(out.len(), 1);
    let publish_id = out[0]["publish_id"].as_str().expect("a string").to_owned();
    assert!(
        publish_id.parse::<u64>().expect("digits") > 1 << 31,
        "{out:?}"
    );
    assert_eq!(out[0]["account"], "main");
    assert!(out[0]["msg_data_id"].is_string(), "{out:?}");

    // The push arrives; its event names the job, which the push itself cannot.
    let id = format!("publish-{publish_id}-0");
    let events = stage.wait_event(&id).await;
    let event = events.iter().find(|e| e["id"] == id).expect("event");
    assert_eq!(event["source"], "push");
    assert_eq!(event["job"]["media_id"], "draft_n2");
    assert!(event["job"]["submitted_at"].is_string(), "{event}");
    assert_eq!(event["publish_event_info"]["article_detail"]["count"], 2);

    // status: the same shape as the push's publish_event_info.
    let status = stage.cli_json(&["publish", "status", &publish_id]).await;
    assert_eq!(status[0]["publish_id"], publish_id.as_str());
    assert_eq!(status[0]["publish_status"], 0);
    assert_eq!(status[0], event["publish_event_info"]);

    // article
    let article_id = status[0]["article_id"]
        .as_str()
        .expect("article_id")
        .to_owned();
    let article = stage.cli_json(&["publish", "article", &article_id]).await;
    assert_eq!(article[0]["article_id"], article_id.as_str());
    assert_eq!(article[0]["news_item"].as_array().expect("list").len(), 2);

    // list: the three articles published before, and this one, newest first.
    let listed = stage.cli_json(&["publish", "list", "--count", "2"]).await;
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0]["article_id"], article_id.as_str());
    let bare = stage
        .cli_json(&["publish", "list", "--no-content", "--offset", "1"])
        .await;
    assert_eq!(bare.len(), 3);
    assert!(bare.iter().all(|i| i.get("content").is_none()), "{bare:?}");

    // track a job submitted elsewhere, then jobs.
    let tracked = stage.cli_json(&["publish", "track", "1234567890123"]).await;
    assert_eq!(tracked[0]["publish_id"], "1234567890123");
    assert_eq!(tracked[0]["origin"], "track");
    assert!(tracked[0]["media_id"].is_null());
    let jobs = stage.cli_json(&["publish", "jobs"]).await;
    assert_eq!(jobs.len(), 2, "{jobs:?}");
    let submitted = jobs
        .iter()
        .find(|j| j["publish_id"] == publish_id.as_str())
        .expect("job");
    assert_eq!(submitted["media_id"], "draft_n2");
    assert_eq!(submitted["publish_status"], 0);
    assert_eq!(submitted["source"], "push");
    assert!(submitted["next_poll_at"].is_null());
    let pending = stage.cli_json(&["publish", "jobs", "--pending"]).await;
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0]["publish_id"], "1234567890123");
    assert!(pending[0]["next_poll_at"].is_string());

    // Bad input: a clear error, exit status non-zero.
    let (ok, _, err) = stage.cli(&["publish", "list", "--count", "21"]).await;
    assert!(!ok && err.contains("1 to 20"), "{err}");
    let (ok, _, err) = stage
        .cli(&["publish", "submit", "draft", "--account", "nope"])
        .await;
    assert!(!ok && err.contains("`nope`"), "{err}");
    let (ok, _, err) = stage.cli(&["publish", "status", "999"]).await;
    assert!(!ok && err.contains("53502"), "{err}");
    // One token for all of it.
    assert_eq!(stage.calls("stable_token").await, 1);
    assert_eq!(stage.calls("force_refresh").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_all_pages_through_every_article() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut options = sim_options();
    options.articles = 45;
    let stage = Stage::start(dir.path(), options, "", "").await;
    let items = stage.cli_json(&["publish", "list", "--all"]).await;
    assert_eq!(items.len(), 45);
    let ids: std::collections::BTreeSet<&str> = items
        .iter()
        .filter_map(|i| i["article_id"].as_str())
        .collect();
    assert_eq!(ids.len(), 45, "every article once");
    // update_time beside content or inside it: both are kept as sent.
    assert!(items[0]["update_time"].is_number(), "{}", items[0]);
    assert!(
        items[1]["content"]["update_time"].is_number(),
        "{}",
        items[1]
    );
    assert_eq!(stage.calls("freepublish/batchget").await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_cached_and_refreshed_within_wechats_limits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stage = Stage::start(dir.path(), sim_options(), "", "").await;
    for _ in 0..4 {
        stage.cli_json(&["publish", "list", "--count", "1"]).await;
    }
    assert_eq!(
        stage.calls("stable_token").await,
        1,
        "cached in the spool across processes"
    );
    assert_eq!(stage.calls("freepublish/batchget").await, 4);

    // The token expired early: WeChat answers 40001, stable_token hands out the new one.
    stage.control("rotate", json!({})).await;
    stage.cli_json(&["publish", "list", "--count", "1"]).await;
    assert_eq!(stage.calls("stable_token").await, 2);
    assert_eq!(stage.calls("force_refresh").await, 0);
    assert_eq!(stage.calls("freepublish/batchget").await, 6, "one retry");

    // Revoked, yet stable_token keeps returning it: one force refresh, then the call.
    stage.control("revoke", json!({})).await;
    stage.cli_json(&["publish", "list", "--count", "1"]).await;
    assert_eq!(stage.calls("force_refresh").await, 1);
    assert_eq!(stage.calls("freepublish/batchget").await, 8);

    // Again within 30 s: no second force refresh; the command fails saying why.
    stage.control("revoke", json!({})).await;
    let (ok, _, err) = stage.cli(&["publish", "list", "--count", "1"]).await;
    assert!(!ok, "must fail");
    assert!(
        err.contains("force refresh") && err.contains("30 s"),
        "{err}"
    );
    assert_eq!(stage.calls("force_refresh").await, 1);
    assert_eq!(
        stage.calls("freepublish/batchget").await,
        9,
        "never more than one retry"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_is_retried_and_refusals_are_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stage = Stage::start(dir.path(), sim_options(), "", "").await;
    let out = stage.cli_json(&["publish", "submit", "draft_busy"]).await;
    assert!(out[0]["publish_id"].is_string());
    assert_eq!(
        stage.calls("freepublish/submit").await,
        2,
        "-1 then success"
    );

    let cases = [
        ("draft_e48001", "48001", "not authorized"),
        ("draft_e53503", "53503", "publication check"),
        ("draft_e45009", "45009", "daily quota"),
        ("draft_e53505", "53505", "save the draft manually"),
    ];
    for (i, (media_id, code, hint)) in cases.iter().enumerate() {
        let (ok, out, err) = stage.cli(&["publish", "submit", media_id]).await;
        assert!(!ok && out.is_empty(), "{media_id}: {out}");
        assert!(
            err.contains(code) && err.contains(hint),
            "{media_id}: {err}"
        );
        assert_eq!(
            stage.calls("freepublish/submit").await,
            3 + i as u64,
            "{media_id}: no retry"
        );
    }
    let jobs = stage.cli_json(&["publish", "jobs"]).await;
    assert_eq!(jobs.len(), 1, "refused submissions are not jobs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_api_needs_its_token_and_says_what_went_wrong() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stage = Stage::start(dir.path(), sim_options(), "", "").await;
    let base = format!("http://{}", stage.app().addr);
    let post = |path: &str, token: Option<&str>, body: Value| {
        let mut request = stage.client.post(format!("{base}{path}")).json(&body);
        if let Some(t) = token {
            request = request.bearer_auth(t);
        }
        async move {
            let response = request.send().await.expect("answers");
            let status = response.status().as_u16();
            (
                status,
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let body = json!({ "account": "main", "media_id": "draft_api" });
    assert_eq!(post("/api/publish", None, body.clone()).await.0, 401);
    assert_eq!(
        post(
            "/api/publish",
            Some("wrong-token-wrong-token"),
            body.clone()
        )
        .await
        .0,
        401
    );
    assert_eq!(stage.calls("freepublish/submit").await, 0);

    let (status, answer) = post("/api/publish", Some(API_TOKEN), body).await;
    assert_eq!(status, 200, "{answer}");
    let publish_id = answer["publish_id"].as_str().expect("string").to_owned();
    stage.wait_event(&format!("publish-{publish_id}-0")).await;
    let job: Value = stage
        .client
        .get(format!("{base}/api/publish/{publish_id}?account=main"))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .expect("answers")
        .json()
        .await
        .expect("json");
    assert_eq!(job["media_id"], "draft_api");
    assert_eq!(job["publish_status"], 0);
    assert_eq!(job["source"], "push");
    assert_eq!(job["publish_event_info"]["publish_status"], 0);

    let (status, answer) = post(
        "/api/publish",
        Some(API_TOKEN),
        json!({ "media_id": "x_e48001" }),
    )
    .await;
    assert_eq!(status, 502);
    assert_eq!(answer["errcode"], 48001);
    assert!(
        answer["hint"]
            .as_str()
            .is_some_and(|h| h.contains("not authorized")),
        "{answer}"
    );
    let (status, answer) = post("/api/publish", Some(API_TOKEN), json!({ "mediaid": "x" })).await;
    assert_eq!(status, 400, "{answer}");
    let (status, answer) = post(
        "/api/publish",
        Some(API_TOKEN),
        json!({ "media_id": "has space" }),
    )
    .await;
    assert_eq!(status, 400, "{answer}");

    let (status, tracked) = post(
        "/api/publish/track",
        Some(API_TOKEN),
        json!({ "account": "main", "publish_id": 3000000001u64 }),
    )
    .await;
    assert_eq!(status, 200, "{tracked}");
    assert_eq!(tracked["publish_id"], "3000000001");
    assert!(tracked["publish_status"].is_null());
    let missing = stage
        .client
        .get(format!("{base}/api/publish/42?account=main"))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .expect("answers");
    assert_eq!(missing.status().as_u16(), 404);
    let unauthorized = stage
        .client
        .get(format!("{base}/api/publish/42"))
        .send()
        .await
        .expect("answers");
    assert_eq!(unauthorized.status().as_u16(), 401);
    // The secrets appear nowhere the API answers.
    assert!(!job.to_string().contains(APP_SECRET));
    assert_eq!(
        count(&stage.events(), &format!("publish-{publish_id}-0")),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stand_in_pushes_in_security_mode() {
    const KEY: &str = "kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR";
    let dir = tempfile::tempdir().expect("tempdir");
    let mut options = sim_options();
    options.cipher =
        Some(wxhook::wechat::crypto::Cipher::new(KEY, common::publishing::APP_ID).expect("cipher"));
    let account = format!("encoding_aes_key = {KEY:?}");
    let stage = Stage::start(dir.path(), options, "", &account).await;
    let out = stage
        .cli_json(&["publish", "submit", "draft_secure_original"])
        .await;
    let publish_id = out[0]["publish_id"].as_str().expect("id").to_owned();
    let id = format!("publish-{publish_id}-2");
    let events = stage.wait_event(&id).await;
    assert_eq!(events[0]["publish_event_info"]["fail_idx"], json!([1]));
    assert_eq!(events[0]["job"]["media_id"], "draft_secure_original");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_wait_for_one_token_fetch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stage = Stage::start(dir.path(), sim_options(), "", "").await;
    let url = format!("http://{}/api/publish", stage.app().addr);
    let calls = (0..12).map(|i| {
        let request = stage
            .client
            .post(&url)
            .bearer_auth(API_TOKEN)
            .json(&json!({ "media_id": format!("draft_{i}") }));
        async move { request.send().await.expect("answers").status().as_u16() }
    });
    let statuses = futures_join(calls).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(
        stage.calls("stable_token").await,
        1,
        "one fetch for twelve callers"
    );
    assert_eq!(stage.calls("freepublish/submit").await, 12);
    assert_eq!(stage.cli_json(&["publish", "jobs"]).await.len(), 12);
}

/// Runs the futures concurrently and collects their outputs in order.
async fn futures_join<T: Send + 'static>(
    futures: impl Iterator<Item = impl std::future::Future<Output = T> + Send + 'static>,
) -> Vec<T> {
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.expect("joins"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_access_token_url_replaces_stable_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let sim = format!("http://{}", listener.local_addr().expect("addr"));
    // The account's tokens come from a central service (here the stand-in's).
    let toml = common::publishing::stage_toml(dir.path(), &sim, "", "").replace(
        &format!("app_secret = {APP_SECRET:?}"),
        &format!("access_token_url = \"{sim}/simulator/access_token\""),
    );
    let stage = Stage::start_with(dir.path(), sim_options(), listener, toml).await;
    for _ in 0..3 {
        stage.cli_json(&["publish", "list", "--count", "1"]).await;
    }
    assert_eq!(stage.calls("access_token_url").await, 1, "cached");
    // Refused: the service is asked again, and its new token is used.
    stage.control("rotate", json!({})).await;
    stage.cli_json(&["publish", "list", "--count", "1"]).await;
    assert_eq!(stage.calls("access_token_url").await, 2);
    // Refused, and the service hands out the same token: a clear error, no force refresh.
    stage.control("revoke", json!({})).await;
    let (ok, _, err) = stage.cli(&["publish", "list", "--count", "1"]).await;
    assert!(
        !ok && err.contains("40001") && err.contains("access_token_url"),
        "{err}"
    );
    assert_eq!(stage.calls("stable_token").await, 0);
    assert_eq!(stage.calls("force_refresh").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_minute_quota_is_waited_out_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stage = Stage::start(dir.path(), sim_options(), "", "").await;
    let started = wxhook::spool::unix_ms();
    let out = stage.cli_json(&["publish", "submit", "draft_quota"]).await;
    assert!(out[0]["publish_id"].is_string());
    assert_eq!(
        stage.calls("freepublish/submit").await,
        2,
        "45011, then the retry"
    );
    // The retry waited for the next minute (the first call came at most a second in).
    let next_minute = started - started.rem_euclid(60_000) + 60_000;
    assert!(
        wxhook::spool::unix_ms() >= next_minute,
        "retried before the next minute"
    );
}
