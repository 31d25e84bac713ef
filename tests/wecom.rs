//! WeCom (企业微信) accounts: URL verification and pushes signed with `msg_signature` alone, encrypted for the corp id by an independent implementation (wechatpy's `wechatpy.enterprise.crypto`).

mod common;

use common::*;
use serde_json::{Value, json};
use std::path::Path;

const CORP_ID: &str = "ww1a2b3c4d5e6f7a8b";
const KEY: &str = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C";
const OA_KEY: &str = "kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR";
const OA_APP_ID: &str = "wx49f0ab532d5d035a";

/// A WeCom application at `/wecom` and an Official Account at `/oa`; one file sink.
fn toml(dir: &Path) -> String {
    format!(
        "data_dir = {data:?}\n\
         [[accounts]]\nname = \"wecom\"\npath = \"/wecom\"\ntoken = {TOKEN:?}\napp_id = {CORP_ID:?}\nencoding_aes_key = {KEY:?}\n\
         [[accounts]]\nname = \"oa\"\npath = \"/oa\"\ntoken = {TOKEN:?}\napp_id = {OA_APP_ID:?}\nencoding_aes_key = {OA_KEY:?}\n\
         [[sinks]]\ntype = \"file\"\npath = {file:?}\n",
        data = dir.join("spool").display().to_string(),
        file = dir.join("events.jsonl").display().to_string(),
    )
}

/// wechatpy encrypts each push for a corp id and signs it as WeCom does; it also makes
/// an encrypted `echostr` and checks it decrypts back with its own `check_signature`.
const WECOM: &str = r#"
import hashlib, json, sys, xmltodict
from urllib.parse import quote
from wechatpy.crypto import _get_signature
from wechatpy.enterprise.crypto import PrpCrypto, WeChatCrypto
req = json.load(sys.stdin)
crypto = WeChatCrypto(req["token"], req["key"], req["corp_id"])
ts = str(req["ts"])
out = {"pushes": []}
for i, p in enumerate(req["pushes"]):
    nonce = str(7000 + i)
    enc = xmltodict.parse(crypto.encrypt_message(p["xml"], nonce, ts))["xml"]
    query = "msg_signature=%s&timestamp=%s&nonce=%s" % (enc["MsgSignature"], ts, nonce)
    if p.get("plain_signature"):
        query += "&signature=" + hashlib.sha1("".join(sorted([req["token"], ts, nonce])).encode()).hexdigest()
    body = "<xml><ToUserName><![CDATA[%s]]></ToUserName><AgentID><![CDATA[1000002]]></AgentID><Encrypt><![CDATA[%s]]></Encrypt></xml>" % (req["corp_id"], enc["Encrypt"])
    out["pushes"].append({"query": query, "body": body, "encrypt": enc["Encrypt"]})
echo = PrpCrypto(crypto.key).encrypt(req["echo"], req["corp_id"])
echo = echo.decode() if isinstance(echo, bytes) else echo
echo_sig = _get_signature(req["token"], ts, "5150", echo)
back = crypto.check_signature(echo_sig, ts, "5150", echo)
assert (back.decode() if isinstance(back, bytes) else back) == req["echo"], back
out["echo_query"] = "msg_signature=%s&timestamp=%s&nonce=5150&echostr=%s" % (echo_sig, ts, quote(echo, safe=""))
other = WeChatCrypto(req["token"], req["key"], "ww00000000000000ff")
enc = xmltodict.parse(other.encrypt_message(req["pushes"][0]["xml"], "1", ts))["xml"]
out["other_corp"] = {"query": "msg_signature=%s&timestamp=%s&nonce=1" % (enc["MsgSignature"], ts),
                     "body": "<xml><ToUserName>x</ToUserName><AgentID>1</AgentID><Encrypt><![CDATA[%s]]></Encrypt></xml>" % enc["Encrypt"]}
print(json.dumps(out))
"#;

fn change_contact(user: &str) -> String {
    format!(
        "<xml><ToUserName><![CDATA[{CORP_ID}]]></ToUserName><FromUserName><![CDATA[sys]]></FromUserName>\
         <CreateTime>1732172200</CreateTime><MsgType><![CDATA[event]]></MsgType>\
         <Event><![CDATA[change_contact]]></Event><ChangeType>create_user</ChangeType>\
         <UserID><![CDATA[{user}]]></UserID></xml>"
    )
}

#[tokio::test]
async fn wecom_pushes_signed_with_msg_signature_alone_are_verified_decrypted_and_kept() {
    if !python_has("wecom_pushes_signed_with_msg_signature_alone", "wechatpy") {
        return;
    }
    let text = std::fs::read_to_string(fixtures_dir().join("pushes/wecom_text_message.xml"))
        .expect("fixture");
    let contact = std::fs::read_to_string(fixtures_dir().join("pushes/wecom_change_contact.xml"))
        .expect("fixture");
    let pushes = json!([
        {"xml": text},
        {"xml": contact, "plain_signature": true},
        // Two members created in the same second: distinct events, not retries.
        {"xml": change_contact("wangwu")},
        {"xml": change_contact("zhaoliu")},
        // WeCom's retry of the last one.
        {"xml": change_contact("zhaoliu")},
    ]);
    let made = wechatpy(
        WECOM,
        &json!({"token": TOKEN, "key": KEY, "corp_id": CORP_ID, "ts": now(),
                "pushes": pushes, "echo": "echo-8231605"}),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let app = TestApp::spawn(&toml(dir.path())).await;

    // URL verification: GET with msg_signature, timestamp, nonce and an encrypted echostr
    // is answered with exactly its decrypted text.
    let verify = app
        .client
        .get(format!(
            "http://{}/wecom?{}",
            app.addr,
            made["echo_query"].as_str().expect("query")
        ))
        .send()
        .await
        .expect("request");
    assert_eq!(verify.status().as_u16(), 200);
    assert_eq!(verify.text().await.expect("text"), "echo-8231605");

    for (i, p) in made["pushes"].as_array().expect("list").iter().enumerate() {
        let (query, body) = (
            p["query"].as_str().expect("q"),
            p["body"].as_str().expect("b"),
        );
        assert_eq!(
            post_path(&app, "/wecom", query, body).await,
            (200, "success".to_owned()),
            "push {i}"
        );
    }

    // What is refused, and why.
    let first = &made["pushes"][0];
    let (query, body) = (
        first["query"].as_str().expect("q"),
        first["body"].as_str().expect("b"),
    );
    let forged = query.replacen("msg_signature=", "msg_signature=0", 1);
    let (status, answer) = post_path(&app, "/wecom", &forged, body).await;
    assert_eq!(
        (status, answer.trim()),
        (401, "msg_signature does not match")
    );
    let other_body = body.replace(
        first["encrypt"].as_str().expect("e"),
        made["pushes"][1]["encrypt"].as_str().expect("e"),
    );
    let (status, answer) = post_path(&app, "/wecom", query, other_body).await;
    assert_eq!(
        (status, answer.trim()),
        (401, "msg_signature does not match")
    );
    let unsigned = query
        .split('&')
        .filter(|kv| !kv.starts_with("msg_signature="))
        .collect::<Vec<_>>()
        .join("&");
    let (status, answer) = post_path(&app, "/wecom", &unsigned, body).await;
    assert_eq!(
        (status, answer.trim()),
        (401, "missing query parameter `msg_signature`")
    );
    let (status, answer) = post_path(&app, "/wecom", query, text.as_str()).await;
    assert_eq!(status, 401, "a plaintext body: {answer}");
    let other = &made["other_corp"];
    let (status, answer) = post_path(
        &app,
        "/wecom",
        other["query"].as_str().expect("q"),
        other["body"].as_str().expect("b"),
    )
    .await;
    assert_eq!(
        (status, answer.trim()),
        (401, "decrypted message is for another appid")
    );
    // An Official Account beside it, with the same token but its own key, does not take it.
    let (status, answer) = post_path(&app, "/oa", query, body).await;
    assert!(matches!(status, 400 | 401), "{status} {answer}");

    let lines = wait_for_lines(&dir.path().join("events.jsonl"), 4).await;
    assert_eq!(lines.len(), 4, "{lines:?}");
    let events: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    for e in &events {
        assert_eq!(e["account"], "wecom");
        assert_eq!(e["app_id"], CORP_ID);
        assert_eq!(e["to_user_name"], CORP_ID);
    }
    assert_eq!(events[0]["id"], "msg-7381234567890123456");
    assert_eq!(events[0]["msg_type"], "text");
    assert_eq!(events[0]["fields"]["Content"], "请审核本周推文");
    assert_eq!(events[0]["fields"]["AgentID"], "1000002");
    assert_eq!(events[1]["event"], "change_contact");
    assert_eq!(events[1]["fields"]["ChangeType"], "create_user");
    assert_eq!(events[1]["fields"]["Name"], "李四");
    let users: Vec<&str> = events[2..]
        .iter()
        .map(|e| e["fields"]["UserID"].as_str().expect("UserID"))
        .collect();
    assert_eq!(users, ["wangwu", "zhaoliu"]);
    assert_ne!(events[2]["id"], events[3]["id"]);
    assert!(
        events[2]["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("event-1732172200-"))
    );
    app.stop().await;
}

/// The URL-verification sample of WeCom's callback documentation (an older corp id,
/// `wx…`), answered over HTTP with exactly the decrypted `echostr`.
#[tokio::test]
async fn the_wecom_documentation_sample_verifies_the_url() {
    let dir = tempfile::tempdir().expect("tempdir");
    let toml = format!(
        "data_dir = {data:?}\ntimestamp_tolerance_secs = 0\n\
         [[accounts]]\nname = \"corp\"\npath = \"/wecom\"\ntoken = \"QDG6eK\"\n\
         app_id = \"wx5823bf96d3bd56c7\"\nencoding_aes_key = {KEY:?}\n",
        data = dir.path().join("spool").display().to_string(),
    );
    let app = TestApp::spawn(&toml).await;
    let query = "msg_signature=5c45ff5e21c57e6ad56bac8758b79b1d9ac89fd3&timestamp=1409659589\
                 &nonce=263014780&echostr=P9nAzCzyDtyTWESHep1vC5X9xho%2FqYX3Zpb4yKa9SKld1DsH3Iyt3tP3zNdtp%2B4RPcs8TgAE7OaBO%2BFZXvnaqQ%3D%3D";
    let response = app
        .client
        .get(format!("http://{}/wecom?{query}", app.addr))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.text().await.expect("text"), "1616140317555161061");
    app.stop().await;
}
