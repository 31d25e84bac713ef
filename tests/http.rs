//! The HTTP answers WeChat (and an attacker) get: URL verification, signature and freshness checks, size limits, malformed bodies.

mod common;

use common::*;

fn body() -> Vec<u8> {
    publish_push(42)
}

#[tokio::test]
async fn url_verification_echoes_echostr_only_when_signed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = TestApp::spawn(&config_toml(dir.path(), "")).await;
    let q = signed_query(TOKEN, now());

    let (ok, content_type) = app.get_raw(&format!("{q}&echostr=5837291003847")).await;
    assert_eq!((ok.status, ok.body.as_str()), (200, "5837291003847"));
    assert!(content_type.is_some_and(|c| c.starts_with("text/plain")));

    let forged = signed_query("not-the-token", now());
    let (bad, _) = app.get_raw(&format!("{forged}&echostr=1")).await;
    assert_eq!(bad.status, 401);
    assert_eq!(bad.body.trim(), "signature does not match");

    let (missing, _) = app.get_raw(&q).await;
    assert_eq!(missing.status, 401);
    assert_eq!(missing.body.trim(), "missing query parameter `echostr`");

    let (stale, _) = app
        .get_raw(&format!("{}&echostr=1", signed_query(TOKEN, now() - 3600)))
        .await;
    assert_eq!(stale.status, 401);
    assert!(
        stale.body.contains("timestamp is 3600 s away"),
        "{}",
        stale.body
    );
    app.stop().await;
}

#[tokio::test]
async fn refused_pushes_get_specific_answers_and_never_reach_a_sink() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = TestApp::spawn(&config_toml(dir.path(), "max_body_bytes = 4096")).await;
    let q = || signed_query(TOKEN, now());
    let ts = now().to_string();

    let cases: Vec<(String, Vec<u8>, u16, &str)> = vec![
        (signed_query("forged", now()), body(), 401, "signature does not match"),
        (format!("timestamp={ts}&nonce=1"), body(), 401, "missing query parameter `signature`"),
        (
            format!("signature={}&nonce=1", "0".repeat(40)),
            body(),
            401,
            "missing query parameter `timestamp`",
        ),
        (String::new(), body(), 401, "missing query parameter `signature`"),
        (q(), vec![b'x'; 5000], 413, "larger than the configured max_body_bytes"),
        (q(), b"<xml><ToUserName>".to_vec(), 400, "element <ToUserName> is not closed"),
        (q(), b"not xml at all".to_vec(), 400, "malformed XML"),
        (q(), Vec::new(), 400, "body is empty"),
        (q(), b"<xml><a>\xff</a></xml>".to_vec(), 400, "body is not UTF-8"),
        (q(), b"<html></html>".to_vec(), 400, "root element is <html>"),
        (
            q(),
            b"<xml><ToUserName>a</ToUserName><FromUserName>b</FromUserName><MsgType>text</MsgType></xml>".to_vec(),
            400,
            "missing element <CreateTime>",
        ),
        (
            q(),
            b"<xml><ToUserName>a</ToUserName><FromUserName>b</FromUserName><CreateTime>soon</CreateTime><MsgType>text</MsgType></xml>".to_vec(),
            400,
            "<CreateTime> is not a number",
        ),
        (
            q(),
            b"<!DOCTYPE x [<!ENTITY e SYSTEM \"file:///etc/passwd\">]><xml>&e;</xml>".to_vec(),
            400,
            "DOCTYPE declarations are not accepted",
        ),
    ];
    for (query, body, status, reason) in cases {
        let answer = app.post_raw(&query, body).await;
        assert_eq!(answer.status, status, "{query}: {answer:?}");
        assert!(
            answer.body.contains(reason),
            "{query}: expected {reason:?}, got {answer:?}"
        );
    }
    // Stale and future timestamps: the answer names the distance the server measured,
    // which is the one sent give or take the seconds the clock ticks meanwhile.
    for (sent, away) in [(now() - 310, 310), (now() + 400, 400)] {
        let query = signed_query(TOKEN, sent);
        let answer = app.post_raw(&query, body()).await;
        assert_eq!(answer.status, 401, "{query}: {answer:?}");
        let measured: Option<u64> = answer
            .body
            .strip_prefix("timestamp is ")
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse().ok());
        assert!(
            measured.is_some_and(|m| m.abs_diff(away) <= 2)
                && answer
                    .body
                    .contains("s away from the server's clock (tolerance 300 s)"),
            "{query}: expected about {away} s away, got {answer:?}"
        );
    }

    let wrong_path = app
        .client
        .post(format!("http://{}/other?{}", app.addr, q()))
        .body(body())
        .send()
        .await
        .expect("request");
    assert_eq!(wrong_path.status().as_u16(), 404);
    let put = app
        .client
        .put(format!("{}?{}", app.url, q()))
        .body(body())
        .send()
        .await
        .expect("request");
    assert_eq!(put.status().as_u16(), 405);

    // A valid push after all of that: it is the only thing the sink ever sees.
    let sentinel = app.push(&publish_push(7)).await;
    assert!(sentinel.acknowledged(), "{sentinel:?}");
    let lines = wait_for_lines(&dir.path().join("events.jsonl"), 1).await;
    assert_eq!(ids(&lines), vec!["publish-7-0".to_owned()]);
    app.stop().await;
}

#[tokio::test]
async fn shared_vector_is_accepted_when_the_freshness_check_is_off() {
    // wechatpy's vector: token `test`, timestamp 1410685589, nonce `test`.
    let query = "signature=f21891de399b4e33a1a93c9a7b8a8fffb5a443ff&timestamp=1410685589&nonce=test&openid=oV5Crj";
    let dir = tempfile::tempdir().expect("tempdir");
    let toml = config_toml(dir.path(), "timestamp_tolerance_secs = 0").replace(TOKEN, "test");
    let app = TestApp::spawn(&toml).await;
    let answer = app.post_raw(query, body()).await;
    assert_eq!((answer.status, answer.body.as_str()), (200, "success"));
    let (echo, _) = app.get_raw(&format!("{query}&echostr=hello")).await;
    assert_eq!(echo.body, "hello");
    app.stop().await;

    // With the default window the same (2014) request is stale.
    let dir = tempfile::tempdir().expect("tempdir");
    let toml = config_toml(dir.path(), "").replace(TOKEN, "test");
    let app = TestApp::spawn(&toml).await;
    let answer = app.post_raw(query, body()).await;
    assert_eq!(answer.status, 401);
    assert!(answer.body.contains("timestamp is"), "{answer:?}");
    app.stop().await;
}

#[tokio::test]
async fn accounts_are_served_at_their_own_paths_with_their_own_tokens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let toml = format!(
        "data_dir = {:?}\n[[accounts]]\nname = \"shop\"\npath = \"/wx/shop\"\ntoken = \"tok-shop\"\nsinks = [\"all\"]\n\
         [[accounts]]\nname = \"news\"\npath = \"/wx/news\"\ntoken = \"tok-news\"\nsinks = [\"news-file\"]\n\
         [[sinks]]\ntype = \"file\"\nname = \"all\"\npath = {:?}\n[[sinks]]\ntype = \"file\"\nname = \"news-file\"\npath = {:?}\n",
        dir.path().join("spool"),
        dir.path().join("all.jsonl"),
        dir.path().join("news.jsonl"),
    );
    let app = TestApp::spawn(&toml).await;
    let base = format!("http://{}", app.addr);
    let send = |path: &str, token: &str, id: u64| {
        let client = app.client.clone();
        let url = format!("{base}{path}");
        let token = token.to_owned();
        async move {
            wxhook::replay::send(&client, &url, &token, publish_push(id))
                .await
                .expect("request")
        }
    };
    assert!(send("/wx/shop", "tok-shop", 1).await.acknowledged());
    assert!(send("/wx/news", "tok-news", 2).await.acknowledged());
    assert_eq!(send("/wx/shop", "tok-news", 3).await.status, 401);

    let all = wait_for_lines(&dir.path().join("all.jsonl"), 1).await;
    let news = wait_for_lines(&dir.path().join("news.jsonl"), 1).await;
    let account = |line: &str| {
        let v: serde_json::Value = serde_json::from_str(line).expect("json");
        v["account"].as_str().map(str::to_owned)
    };
    assert_eq!(account(&news[0]).as_deref(), Some("news"));
    // Sentinels order the check: nothing of one account may reach the other's file.
    assert!(send("/wx/shop", "tok-shop", 4).await.acknowledged());
    assert!(send("/wx/news", "tok-news", 5).await.acknowledged());
    let news = wait_for_lines(&dir.path().join("news.jsonl"), 2).await;
    assert_eq!(ids(&news), vec!["publish-2-0", "publish-5-0"]);
    let all = if all.len() < 2 {
        wait_for_lines(&dir.path().join("all.jsonl"), 2).await
    } else {
        all
    };
    assert_eq!(ids(&all), vec!["publish-1-0", "publish-4-0"]);
    assert_eq!(account(&all[0]).as_deref(), Some("shop"));
    app.stop().await;
}
