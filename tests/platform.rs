//! A third-party platform's authorization event URL, with the real binary: tickets and authorizations encrypted by wechatpy, stored and delivered, the ticket kept apart and out of every sink and log.

mod common;

use common::platform::{AUTHORIZER, PLATFORM_APP_ID, PLATFORM_KEY, encrypted_by_wechatpy};
use common::*;
use serde_json::Value;
use std::path::Path;

const TICKET: &str = "ticket@@@Xy7Lq0SecretTicketValue";
const OLDER_TICKET: &str = "ticket@@@OlderSecretTicketValue";

fn platform_toml(dir: &Path) -> String {
    format!(
        "listen = \"127.0.0.1:0\"\ndata_dir = {data:?}\n\
         [[accounts]]\nname = \"platform\"\npath = \"/platform/{{appid}}\"\ntoken = {TOKEN:?}\n\
         app_id = {PLATFORM_APP_ID:?}\nencoding_aes_key = {PLATFORM_KEY:?}\n\
         [[sinks]]\ntype = \"file\"\npath = {file:?}\n\
         [[sinks]]\ntype = \"stdout\"\n",
        data = dir.join("spool").display().to_string(),
        file = dir.join("events.jsonl").display().to_string(),
    )
}

fn event(create_time: u64, info_type: &str, rest: &str) -> String {
    format!(
        "<xml><AppId><![CDATA[{PLATFORM_APP_ID}]]></AppId><CreateTime>{create_time}</CreateTime>\
         <InfoType><![CDATA[{info_type}]]></InfoType>{rest}</xml>"
    )
}

/// The ticket the spool keeps for `account`, read as the next start would read it.
fn stored_ticket(dir: &Path) -> Option<(String, i64)> {
    let conn = rusqlite::Connection::open(dir.join("spool/wxhook.db")).expect("spool");
    conn.query_row(
        "SELECT ticket, create_time FROM component_tickets WHERE account = 'platform'",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .ok()
}

#[tokio::test]
async fn authorization_events_are_stored_delivered_and_the_ticket_kept_apart() {
    if !python_has("authorization_events_are_stored", "wechatpy") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("wxhook.toml");
    std::fs::write(&config, platform_toml(dir.path())).expect("config");
    let log = dir.path().join("stderr.log");
    let server = Binary::serve(&config, &log, None);
    let url = format!("http://{}/platform/auth", server.addr);

    let t = now();
    let xmls = [
        event(
            t,
            "component_verify_ticket",
            &format!("<ComponentVerifyTicket><![CDATA[{TICKET}]]></ComponentVerifyTicket>"),
        ),
        event(
            t + 1,
            "authorized",
            &format!(
                "<AuthorizerAppid><![CDATA[{AUTHORIZER}]]></AuthorizerAppid>\
                 <AuthorizationCode><![CDATA[queryauthcode@@@abc]]></AuthorizationCode>\
                 <AuthorizationCodeExpiredTime>{}</AuthorizationCodeExpiredTime>\
                 <PreAuthCode><![CDATA[preauthcode@@@def]]></PreAuthCode>",
                t + 3600
            ),
        ),
        event(
            t + 2,
            "updateauthorized",
            &format!(
                "<AuthorizerAppid><![CDATA[{AUTHORIZER}]]></AuthorizerAppid>\
                 <AuthorizationCode><![CDATA[queryauthcode@@@ghi]]></AuthorizationCode>\
                 <AuthorizationCodeExpiredTime>{}</AuthorizationCodeExpiredTime>",
                t + 3600
            ),
        ),
        event(
            t + 3,
            "unauthorized",
            &format!("<AuthorizerAppid><![CDATA[{AUTHORIZER}]]></AuthorizerAppid>"),
        ),
        event(
            t + 4,
            "notify_third_fasteregister",
            "<status>0</status><auth_code><![CDATA[code1]]></auth_code><info><name><![CDATA[shop]]></name></info>",
        ),
        // An older ticket arriving late must not replace the newer one.
        event(
            t - 600,
            "component_verify_ticket",
            &format!("<ComponentVerifyTicket><![CDATA[{OLDER_TICKET}]]></ComponentVerifyTicket>"),
        ),
    ];
    let requests = encrypted_by_wechatpy(PLATFORM_APP_ID, &xmls);
    for (query, body) in &requests {
        let answer = post_url(&url, query, body.clone()).await;
        assert_eq!(answer, (200, "success".to_owned()), "{}", server.stderr());
    }
    // WeChat's retry of the ticket push is the same event.
    let (query, body) = &requests[0];
    assert_eq!(post_url(&url, query, body.clone()).await.0, 200);

    let lines = wait_for_lines(&dir.path().join("events.jsonl"), 6).await;
    assert_eq!(lines.len(), 6, "{lines:?}");
    let events: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["info_type"].as_str().expect("info_type"))
        .collect();
    assert_eq!(
        kinds,
        [
            "component_verify_ticket",
            "authorized",
            "updateauthorized",
            "unauthorized",
            "notify_third_fasteregister",
            "component_verify_ticket"
        ]
    );
    for e in &events {
        assert_eq!(e["account"], "platform");
        assert_eq!(e["component_app_id"], PLATFORM_APP_ID);
        assert_eq!(e["source"], "push");
        assert!(e["id"].as_str().expect("id").starts_with("auth-"), "{e}");
    }
    assert!(
        events[0].get("app_id").is_none(),
        "a ticket is for no authorizer"
    );
    let authorized = &events[1];
    assert_eq!(authorized["app_id"], AUTHORIZER);
    assert_eq!(authorized["authorization_code"], "queryauthcode@@@abc");
    assert_eq!(authorized["authorization_code_expired_time"], t + 3600);
    assert_eq!(authorized["pre_auth_code"], "preauthcode@@@def");
    assert_eq!(events[3]["app_id"], AUTHORIZER);
    assert_eq!(events[4]["fields"]["info"]["name"], "shop");

    // The ticket: in the spool (the newest), in no sink and no log line.
    assert_eq!(
        stored_ticket(dir.path()),
        Some((TICKET.to_owned(), t as i64))
    );
    let everything = format!(
        "{}{}",
        std::fs::read_to_string(dir.path().join("events.jsonl")).expect("file"),
        server.stderr()
    );
    for secret in [TICKET, OLDER_TICKET, "SecretTicketValue"] {
        assert!(!everything.contains(secret), "the ticket leaked");
    }
}

#[tokio::test]
async fn authorization_events_for_another_platform_or_in_plain_text_are_refused() {
    if !python_has("authorization_events_for_another_platform", "wechatpy") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let app =
        TestApp::spawn(&platform_toml(dir.path()).replace("listen = \"127.0.0.1:0\"\n", "")).await;
    let url = format!("http://{}/platform/auth", app.addr);
    let ticket = event(
        now(),
        "component_verify_ticket",
        &format!("<ComponentVerifyTicket><![CDATA[{TICKET}]]></ComponentVerifyTicket>"),
    );
    // Encrypted for another appid: the platform's cipher refuses it.
    let other = encrypted_by_wechatpy("wx0000000000000000", std::slice::from_ref(&ticket));
    let (status, text) = post_url(&url, &other[0].0, other[0].1.clone()).await;
    assert_eq!(status, 401, "{text}");
    // In plain text, with a valid plain signature: authorization events are encrypted.
    let (status, text) = post_url(&url, &signed_query(TOKEN, now()), ticket.into_bytes()).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("always encrypted"), "{text}");
    // A ticket event without its ticket.
    let empty = encrypted_by_wechatpy(
        PLATFORM_APP_ID,
        &[event(now(), "component_verify_ticket", "")],
    );
    let (status, text) = post_url(&url, &empty[0].0, empty[0].1.clone()).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("ComponentVerifyTicket"), "{text}");
    assert_eq!(stored_ticket(dir.path()), None);
    app.stop().await;
}

#[tokio::test]
async fn wxhook_replay_sends_the_authorization_fixtures_to_the_authorization_url() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("wxhook.toml");
    std::fs::write(&config, platform_toml(dir.path())).expect("config");
    let server = Binary::serve(&config, &dir.path().join("stderr.log"), None);
    let mut files: Vec<_> = std::fs::read_dir(fixtures_dir().join("authorization"))
        .expect("fixtures/authorization")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wxhook"))
        .arg("replay")
        .args(&files)
        .args(["--url", &format!("http://{}/platform/auth", server.addr)])
        .args(["--token", TOKEN, "--encoding-aes-key", PLATFORM_KEY])
        .args(["--app-id", PLATFORM_APP_ID])
        .output()
        .expect("replay runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", server.stderr());
    assert_eq!(stdout.matches(": 200 success").count(), 3, "{stdout}");
    let lines = wait_for_lines(&dir.path().join("events.jsonl"), 3).await;
    let kinds: Vec<String> = lines
        .iter()
        .map(|l| {
            let e: Value = serde_json::from_str(l).expect("json");
            e["info_type"].as_str().expect("info_type").to_owned()
        })
        .collect();
    assert_eq!(
        kinds,
        ["authorized", "component_verify_ticket", "unauthorized"]
    );
    assert!(!lines.concat().contains("FixtureTicket"));
}
