//! Security and compatible mode, third-party platform entries, and the defences of a public URL: forged, tampered, replayed, spoofed and hostile requests.

mod common;

use common::*;
use serde_json::Value;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wxhook::replay::{self, encrypted_request};
use wxhook::wechat::crypto::{Cipher, msg_signature};
use wxhook::wechat::signature;

const KEY: &str = "kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR";
const APP_ID: &str = "wx49f0ab532d5d035a";
const PLATFORM_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
const PLATFORM_APP_ID: &str = "wxb11529c136998cb6";
const AUTHORIZED: &str = "wx1234567890abcdef";

/// Accounts in every mode, plus a platform entry; one file sink.
fn accounts_toml(dir: &Path, extra: &str) -> String {
    format!(
        "data_dir = {data:?}\n{extra}\n\
         [[accounts]]\nname = \"secure\"\npath = \"/secure\"\ntoken = {TOKEN:?}\napp_id = {APP_ID:?}\nencoding_aes_key = {KEY:?}\n\
         [[accounts]]\nname = \"compat\"\npath = \"/compat\"\ntoken = {TOKEN:?}\napp_id = {APP_ID:?}\nencoding_aes_key = {KEY:?}\nmode = \"compatible\"\n\
         [[accounts]]\nname = \"plain\"\npath = \"/plain\"\ntoken = {TOKEN:?}\n\
         [[accounts]]\nname = \"platform\"\npath = \"/platform/{{appid}}\"\ntoken = {TOKEN:?}\napp_id = {PLATFORM_APP_ID:?}\nencoding_aes_key = {PLATFORM_KEY:?}\n\
         [[sinks]]\ntype = \"file\"\npath = {file:?}\n",
        data = dir.join("spool").display().to_string(),
        file = dir.join("events.jsonl").display().to_string(),
    )
}

fn cipher() -> Cipher {
    Cipher::new(KEY, APP_ID).expect("key")
}

fn text_push(content: &str) -> Vec<u8> {
    format!(
        "<xml><ToUserName><![CDATA[gh_x]]></ToUserName><FromUserName><![CDATA[user]]></FromUserName>\
         <CreateTime>1732171000</CreateTime><MsgType><![CDATA[text]]></MsgType>\
         <Content><![CDATA[{content}]]></Content><MsgId>{}</MsgId></xml>",
        rand::random::<u32>()
    )
    .into_bytes()
}

/// An encrypted push signed for `token`, as WeChat sends it.
fn encrypted(cipher: &Cipher, xml: &[u8]) -> (String, Vec<u8>) {
    let ts = now();
    let nonce = rand::random::<u32>().to_string();
    let (extra, body) = encrypted_request(cipher, TOKEN, ts, &nonce, xml);
    let query = format!(
        "signature={}&timestamp={ts}&nonce={nonce}{extra}",
        signature::sign(TOKEN, &ts.to_string(), &nonce)
    );
    (query, body)
}

fn contents(lines: &[String]) -> Vec<(String, Option<String>, String)> {
    lines
        .iter()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("json");
            (
                v["account"].as_str().unwrap_or("").to_owned(),
                v["app_id"].as_str().map(str::to_owned),
                v["fields"]["Content"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn wechatpy_shared_vector_is_accepted_in_secure_mode() {
    let dir = tempfile::tempdir().expect("tempdir");
    let toml = accounts_toml(dir.path(), "timestamp_tolerance_secs = 0").replace(TOKEN, "123456");
    let app = TestApp::spawn(&toml).await;
    let encrypt = "RgqEoJj5A4EMYlLvWO1F86ioRjZfaex/gePD0gOXTxpsq5Yj4GNglrBb8I2BAJVODGajiFnXBu7mCPatfjsu6IHCrsTyeDXzF6Bv283dGymzxh6ydJRvZsryDyZbLTE7rhnus50qGPMfp2wASFlzEgMW9z1ef/RD8XzaFYgm7iTdaXpXaG4+BiYyolBug/gYNx410cvkKR2/nPwBiT+P4hIiOAQqGp/TywZBtDh1yCF2KOd0gpiMZ5jSw3e29mTvmUHzkVQiMS6td7vXUaWOMZnYZlF3So2SjHnwh4jYFxdgpkHHqIrH/54SNdshoQgWYEvccTKe7FS709/5t6NMxuGhcUGAPOQipvWTT4dShyqio7mlsl5noTrb++x6En749zCpQVhDpbV6GDnTbcX2e8K9QaNWHp91eBdCRxthuL0=";
    let query = format!(
        "signature={}&timestamp=1411525903&nonce=461056294&encrypt_type=aes&msg_signature=74d92dfeb87ba7c714f89d98870ae5eb62dff26d",
        signature::sign("123456", "1411525903", "461056294")
    );
    let body = format!(
        "<xml><ToUserName><![CDATA[gh_x]]></ToUserName><Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>"
    );
    assert_eq!(
        post_path(&app, "/secure", &query, body.into_bytes()).await,
        (200, "success".into())
    );
    let lines = wait_for_lines(&dir.path().join("events.jsonl"), 1).await;
    assert_eq!(
        contents(&lines),
        [("secure".into(), Some(APP_ID.into()), "test".into())]
    );
    app.stop().await;
}

#[tokio::test]
async fn modes_come_from_configuration_never_from_the_request() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = TestApp::spawn(&accounts_toml(dir.path(), "")).await;
    let plain_query = || signed_query(TOKEN, now());

    // Secure: a plaintext body with a valid plain signature is refused, even claiming encrypt_type=raw.
    let (status, body) = post_path(
        &app,
        "/secure",
        &format!("{}&encrypt_type=raw", plain_query()),
        text_push("plain"),
    )
    .await;
    assert_eq!(status, 401);
    assert!(
        body.contains("secure mode: a body without <Encrypt> is refused"),
        "{body}"
    );

    // Secure: encrypted is accepted.
    let (q, b) = encrypted(&cipher(), &text_push("secret one"));
    assert_eq!(post_path(&app, "/secure", &q, b).await.0, 200);

    // Compatible: plaintext accepted; with both parts the encrypted one wins.
    assert_eq!(
        post_path(&app, "/compat", &plain_query(), text_push("compat plain"))
            .await
            .0,
        200
    );
    let (q, b) = encrypted(&cipher(), &text_push("compat encrypted"));
    let both = String::from_utf8(b).expect("utf-8").replace(
        "<Encrypt>",
        "<FromUserName>forged</FromUserName><CreateTime>1</CreateTime><MsgType>text</MsgType><Content>forged</Content><Encrypt>",
    );
    assert_eq!(
        post_path(&app, "/compat", &q, both.into_bytes()).await.0,
        200
    );

    // Plain: an encrypted body is not decrypted, so it is not a push.
    let (q, b) = encrypted(&cipher(), &text_push("to plain"));
    let (status, body) = post_path(&app, "/plain", &q, b).await;
    assert_eq!(status, 400, "{body}");

    let lines = wait_for_lines(&dir.path().join("events.jsonl"), 3).await;
    let got: Vec<String> = contents(&lines).into_iter().map(|c| c.2).collect();
    assert_eq!(got, ["secret one", "compat plain", "compat encrypted"]);
    app.stop().await;
}

#[tokio::test]
async fn tampered_and_mis_signed_ciphertexts_get_specific_answers() {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let dir = tempfile::tempdir().expect("tempdir");
    let app = TestApp::spawn(&accounts_toml(dir.path(), "")).await;
    // Re-signs a given Encrypt value correctly, so only its content is wrong.
    let signed_with = |encrypt: &str| {
        let ts = now().to_string();
        let nonce = rand::random::<u32>().to_string();
        let query = format!(
            "signature={}&timestamp={ts}&nonce={nonce}&encrypt_type=aes&msg_signature={}",
            signature::sign(TOKEN, &ts, &nonce),
            msg_signature(TOKEN, &ts, &nonce, encrypt)
        );
        let body = format!(
            "<xml><ToUserName>x</ToUserName><Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>"
        );
        (query, body.into_bytes())
    };
    let good = cipher().encrypt(&text_push("x"));
    let raw = b64.decode(&good).expect("b64");
    let mut flipped = raw.clone();
    flipped[20] ^= 1; // corrupts the length field's block
    let other_app = Cipher::new(KEY, "wx0000000000000000")
        .expect("key")
        .encrypt(&text_push("x"));
    let cases: Vec<(String, u16, &str)> = vec![
        (
            "%%%not base64%%%".into(),
            400,
            "cannot decrypt: Encrypt is not base64",
        ),
        (
            b64.encode(&raw[..raw.len() - 1]),
            400,
            "not a positive multiple of the AES block size",
        ),
        (
            b64.encode(&raw[..31]),
            400,
            "not a positive multiple of the AES block size",
        ),
        (b64.encode(&raw[..32]), 400, "cannot decrypt"),
        (b64.encode(&flipped), 400, "cannot decrypt"),
        (other_app, 401, "decrypted message is for another appid"),
    ];
    for (encrypt, status, reason) in cases {
        let (q, b) = signed_with(&encrypt);
        let (got, body) = post_path(&app, "/secure", &q, b).await;
        assert_eq!(got, status, "{encrypt}: {body}");
        assert!(
            body.contains(reason),
            "{encrypt}: expected {reason:?}, got {body:?}"
        );
    }
    // Signatures: missing or wrong msg_signature, a wrong plain signature.
    let (q, b) = encrypted(&cipher(), &text_push("x"));
    let without = q.split("&msg_signature").next().unwrap_or("").to_owned();
    assert_eq!(
        post_path(&app, "/secure", &without, b.clone()).await,
        (401, "missing query parameter `msg_signature`\n".into())
    );
    let wrong = format!("{without}&msg_signature={}", "0".repeat(40));
    assert_eq!(
        post_path(&app, "/secure", &wrong, b.clone()).await,
        (401, "msg_signature does not match\n".into())
    );
    let forged = q.replacen("signature=", "signature=0", 1);
    assert_eq!(post_path(&app, "/secure", &forged, b).await.0, 401);

    // Nothing of that reached the sink: the sentinel is the first and only line.
    let (q, b) = encrypted(&cipher(), &text_push("sentinel"));
    assert_eq!(post_path(&app, "/secure", &q, b).await.0, 200);
    let lines = wait_for_lines(&dir.path().join("events.jsonl"), 1).await;
    assert_eq!(contents(&lines).len(), 1);
    assert_eq!(contents(&lines)[0].2, "sentinel");
    app.stop().await;
}

#[tokio::test]
async fn url_verification_handles_plain_and_encrypted_echostr() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = TestApp::spawn(&accounts_toml(dir.path(), "")).await;
    let get = |path: &str, query: String| {
        let client = app.client.clone();
        let url = format!("http://{}{path}?{query}", app.addr);
        async move {
            let r = client.get(url).send().await.expect("request");
            (r.status().as_u16(), r.text().await.expect("text"))
        }
    };
    assert_eq!(
        get(
            "/secure",
            format!("{}&echostr=8812", signed_query(TOKEN, now()))
        )
        .await,
        (200, "8812".into())
    );
    let encrypted_echo = cipher().encrypt(b"echo-6734");
    let ts = now().to_string();
    let ms = msg_signature(TOKEN, &ts, "99", &encrypted_echo);
    let enc_query = |sig: &str| {
        format!(
            "timestamp={ts}&nonce=99&msg_signature={sig}&echostr={}",
            encrypted_echo
                .replace('+', "%2B")
                .replace('/', "%2F")
                .replace('=', "%3D")
        )
    };
    assert_eq!(
        get("/secure", enc_query(&ms)).await,
        (200, "echo-6734".into())
    );
    let (status, body) = get("/secure", enc_query(&"1".repeat(40))).await;
    assert_eq!((status, body.trim()), (401, "msg_signature does not match"));
    app.stop().await;
}

#[tokio::test]
async fn platform_entries_serve_every_authorized_appid_and_name_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = TestApp::spawn(&accounts_toml(dir.path(), "")).await;
    let platform = Cipher::new(PLATFORM_KEY, PLATFORM_APP_ID).expect("key");
    let push = text_push("for the shop");
    for appid in [AUTHORIZED, "wxfedcba0987654321"] {
        let (q, b) = encrypted(&platform, &push);
        assert_eq!(
            post_path(&app, &format!("/platform/{appid}"), &q, b)
                .await
                .0,
            200,
            "{appid}"
        );
    }
    // Not an appid in the path.
    for bad in [
        "wx123",
        "wx1234567890abcde%3B",
        "evil..",
        "wx1234567890abcdef0",
    ] {
        let (q, b) = encrypted(&platform, &text_push("x"));
        let (status, body) = post_path(&app, &format!("/platform/{bad}"), &q, b).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body.contains("does not end in an appid"), "{body}");
    }
    // Encrypted for the authorized account's own appid instead of the platform's.
    let own = Cipher::new(PLATFORM_KEY, AUTHORIZED).expect("key");
    let (q, b) = encrypted(&own, &text_push("x"));
    assert_eq!(
        post_path(&app, &format!("/platform/{AUTHORIZED}"), &q, b)
            .await
            .0,
        401
    );

    let lines = wait_for_lines(&dir.path().join("events.jsonl"), 2).await;
    let got = contents(&lines);
    assert_eq!(
        got[0],
        (
            "platform".into(),
            Some(AUTHORIZED.into()),
            "for the shop".into()
        )
    );
    assert_eq!(
        got[1],
        (
            "platform".into(),
            Some("wxfedcba0987654321".into()),
            "for the shop".into()
        )
    );
    app.stop().await;
}

#[tokio::test]
async fn a_signed_query_replayed_with_another_body_is_refused_even_after_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let toml = config_toml(dir.path(), "");
    let app = TestApp::spawn(&toml).await;
    let q = signed_query(TOKEN, now());
    assert!(app.post_raw(&q, publish_push(1)).await.acknowledged());
    assert!(
        app.post_raw(&q, publish_push(1)).await.acknowledged(),
        "an identical retry"
    );
    let replay = app.post_raw(&q, publish_push(666)).await;
    assert_eq!(replay.status, 401);
    assert!(
        replay.body.contains("already used with a different body"),
        "{replay:?}"
    );
    app.stop().await;

    let app = TestApp::spawn(&toml).await;
    assert_eq!(
        app.post_raw(&q, publish_push(667)).await.status,
        401,
        "forgotten at restart"
    );
    assert!(app.post_raw(&q, publish_push(1)).await.acknowledged());
    assert!(app.push(&publish_push(2)).await.acknowledged());
    let lines = wait_for_lines(&dir.path().join("events.jsonl"), 2).await;
    assert_eq!(ids(&lines), ["publish-1-0", "publish-2-0"]);
    app.stop().await;
}

#[tokio::test]
async fn allow_lists_use_forwarded_addresses_only_from_trusted_proxies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let toml = config_toml(dir.path(), "").replace(
        "path = \"/wechat\"",
        "path = \"/wechat\"\nallow_from = [\"101.226.103.0/25\"]",
    );
    let send = |app: &TestApp, xff: Option<&str>| {
        let mut request = app
            .client
            .post(format!("{}?{}", app.url, signed_query(TOKEN, now())))
            .body(publish_push(rand::random::<u32>().into()));
        if let Some(xff) = xff {
            request = request.header("x-forwarded-for", xff);
        }
        async move { request.send().await.expect("request").status().as_u16() }
    };
    // No trusted proxy: the peer (127.0.0.1) is the client, whatever the header says.
    let app = TestApp::spawn(&toml).await;
    assert_eq!(send(&app, None).await, 403);
    assert_eq!(send(&app, Some("101.226.103.5")).await, 403);
    app.stop().await;

    let trusted = format!("trusted_proxies = [\"127.0.0.1/32\"]\n{toml}");
    let app = TestApp::spawn(&trusted).await;
    assert_eq!(send(&app, Some("101.226.103.5")).await, 200);
    assert_eq!(send(&app, Some("101.226.103.200")).await, 403);
    assert_eq!(
        send(&app, Some("101.226.103.5, 8.8.8.8")).await,
        403,
        "the nearest untrusted hop counts"
    );
    assert_eq!(send(&app, Some("garbage")).await, 403);
    app.stop().await;
}

#[tokio::test]
async fn allow_lists_can_be_replaced_while_running() {
    let dir = tempfile::tempdir().expect("tempdir");
    let toml = config_toml(dir.path(), "").replace(
        "path = \"/wechat\"",
        "path = \"/wechat\"\nallow_from = [\"101.226.103.0/25\"]",
    );
    let config = wxhook::config::Config::from_toml(&toml, &|_| None).expect("config");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let app = wxhook::server::App::with_listener(config, listener).expect("app");
    let url = format!("http://{}/wechat", app.local_addr().expect("addr"));
    let list = app.allow_list("main").expect("allow list");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::new();
    assert_eq!(
        replay::send(&client, &url, TOKEN, publish_push(1))
            .await
            .expect("req")
            .status,
        403
    );
    list.replace(Some(vec!["127.0.0.0/8".parse().expect("net")]));
    assert!(
        replay::send(&client, &url, TOKEN, publish_push(1))
            .await
            .expect("req")
            .acknowledged()
    );
    let _ = stop.send(());
    server.await.expect("joins").expect("stops");
}

#[tokio::test]
async fn slow_clients_and_floods_are_cut_off() {
    let dir = tempfile::tempdir().expect("tempdir");
    let extra =
        "request_timeout = \"500ms\"\nheader_timeout = \"500ms\"\nmax_concurrent_requests = 1";
    let app = TestApp::spawn(&config_toml(dir.path(), extra)).await;
    let addr = app.addr;

    // Headers that never end: the connection is closed.
    let mut headers_only = tokio::net::TcpStream::connect(addr).await.expect("connect");
    headers_only
        .write_all(b"POST /wechat HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    let mut buf = Vec::new();
    let closed =
        tokio::time::timeout(Duration::from_secs(3), headers_only.read_to_end(&mut buf)).await;
    assert!(
        closed.is_ok(),
        "a client trickling headers kept its connection"
    );

    // A body that never arrives: 408 after request_timeout, and meanwhile a second request is turned away.
    let mut slow = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST /wechat?{} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n<xml>",
        signed_query(TOKEN, now())
    );
    slow.write_all(head.as_bytes()).await.expect("write");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let busy = app.push(&publish_push(1)).await;
    assert_eq!(busy.status, 503, "{busy:?}");
    assert!(
        busy.body.contains("too many requests in flight"),
        "{busy:?}"
    );
    let mut answer = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), slow.read_to_string(&mut answer)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        app.push(&publish_push(2)).await.acknowledged(),
        "the service recovered"
    );
    app.stop().await;
}

#[tokio::test]
async fn hostile_xml_is_refused_quickly_and_huge_attributes_are_kept_bounded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = TestApp::spawn(&config_toml(dir.path(), "")).await;
    let lol = "<?xml version=\"1.0\"?><!DOCTYPE lolz [<!ENTITY lol \"lol\"><!ENTITY lol1 \"&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;\"><!ENTITY lol2 \"&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;\">]><xml>&lol2;</xml>";
    let deep = format!("<xml>{}{}</xml>", "<a>".repeat(5000), "</a>".repeat(5000));
    let many = format!("<xml>{}</xml>", "<a/>".repeat(20_000));
    for (body, reason) in [
        (lol.to_owned(), "DOCTYPE declarations are not accepted"),
        (deep, "nested deeper than 32 levels"),
        (many, "more than 10000 elements"),
        ("<xml>&unknown;</xml>".to_owned(), "unknown entity"),
    ] {
        let answer = app.post_raw(&signed_query(TOKEN, now()), body).await;
        assert_eq!(answer.status, 400, "{answer:?}");
        assert!(answer.body.contains(reason), "{reason}: {answer:?}");
    }
    let huge = "A".repeat(900_000);
    let body = String::from_utf8(text_push("with a huge attribute"))
        .expect("utf-8")
        .replace(
            "<MsgId>",
            &format!("<Extra note=\"{huge}\">x</Extra><MsgId>"),
        );
    assert!(
        app.post_raw(&signed_query(TOKEN, now()), body)
            .await
            .acknowledged()
    );
    let lines = wait_for_lines(&dir.path().join("events.jsonl"), 1).await;
    let v: Value = serde_json::from_str(&lines[0]).expect("json");
    assert_eq!(
        v["fields"]["Extra"]["@note"].as_str().map(str::len),
        Some(900_000)
    );
    app.stop().await;
}

/// wechatpy encrypts and signs every fixture; wxhook must accept each and produce the same
/// event JSON as for the plain fixture.
#[tokio::test]
async fn pushes_encrypted_by_wechatpy_are_accepted_and_parsed_like_plain_ones() {
    if !python_has("pushes_encrypted_by_wechatpy", "wechatpy") {
        return;
    }
    let script = r#"
import hashlib, json, sys, xmltodict
from wechatpy.crypto import WeChatCrypto
req = json.load(sys.stdin)
crypto = WeChatCrypto(req["token"], req["key"], req["app_id"])
out = []
for i, xml in enumerate(req["xmls"]):
    ts, nonce = str(req["ts"]), str(1000 + i)
    enc = xmltodict.parse(crypto.encrypt_message(xml, nonce, ts))["xml"]
    sig = hashlib.sha1("".join(sorted([req["token"], ts, nonce])).encode()).hexdigest()
    body = "<xml><ToUserName><![CDATA[gh_4d00ed8d6399]]></ToUserName><Encrypt><![CDATA[%s]]></Encrypt></xml>" % enc["Encrypt"]
    out.append({"query": "signature=%s&timestamp=%s&nonce=%s&encrypt_type=aes&msg_signature=%s" % (sig, ts, nonce, enc["MsgSignature"]), "body": body})
print(json.dumps(out))
"#;
    let files = fixture_files();
    let xmls: Vec<String> = files
        .iter()
        .map(|f| std::fs::read_to_string(f).expect("fixture"))
        .collect();
    let requests = wechatpy(
        script,
        &serde_json::json!({"token": TOKEN, "key": KEY, "app_id": APP_ID, "ts": now(), "xmls": xmls}),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let app = TestApp::spawn(&accounts_toml(dir.path(), "")).await;
    for (file, r) in files.iter().zip(requests.as_array().expect("list")) {
        let body = r["body"].as_str().expect("body").as_bytes().to_vec();
        let (status, answer) =
            post_path(&app, "/secure", r["query"].as_str().expect("query"), body).await;
        assert_eq!(
            (status, answer.as_str()),
            (200, "success"),
            "{}",
            file.display()
        );
    }
    let lines = wait_for_lines(&dir.path().join("events.jsonl"), files.len()).await;
    for (file, line) in files.iter().zip(&lines) {
        let mut got: Value = serde_json::from_str(line).expect("json");
        let obj = got.as_object_mut().expect("object");
        obj.shift_remove("received_at");
        assert_eq!(obj.shift_remove("account"), Some(Value::from("secure")));
        assert_eq!(obj.shift_remove("app_id"), Some(Value::from(APP_ID)));
        let mut expected: Value = serde_json::from_str(
            &std::fs::read_to_string(file.with_extension("json")).expect("json"),
        )
        .expect("expected JSON");
        expected
            .as_object_mut()
            .expect("object")
            .shift_remove("account");
        assert_eq!(got, expected, "{}", file.display());
    }
    app.stop().await;
}

/// What wxhook encrypts (the replay tool, future passive replies) wechatpy decrypts and verifies.
#[test]
fn wechatpy_decrypts_and_verifies_what_wxhook_encrypts() {
    if !python_has(
        "wechatpy_decrypts_and_verifies_what_wxhook_encrypts",
        "wechatpy",
    ) {
        return;
    }
    let script = r#"
import json, sys
from wechatpy.crypto import WeChatCrypto
req = json.load(sys.stdin)
crypto = WeChatCrypto(req["token"], req["key"], req["app_id"])
out = [crypto.decrypt_message(m["body"], m["msg_signature"], m["ts"], m["nonce"]) for m in req["messages"]]
print(json.dumps(out, ensure_ascii=False))
"#;
    let messages: Vec<Value> = ["<xml><a>1</a></xml>", "<xml><Content><![CDATA[中文 & 🙂]]></Content></xml>", &"x".repeat(1000)]
        .iter()
        .enumerate()
        .map(|(i, xml)| {
            let ts = now();
            let nonce = format!("{i}77");
            let (extra, body) = encrypted_request(&cipher(), TOKEN, ts, &nonce, xml.as_bytes());
            let msg_sig = extra.rsplit('=').next().unwrap_or("").to_owned();
            serde_json::json!({"body": String::from_utf8(body).expect("utf-8"), "msg_signature": msg_sig, "ts": ts.to_string(), "nonce": nonce, "xml": xml})
        })
        .collect();
    let decrypted = wechatpy(
        script,
        &serde_json::json!({"token": TOKEN, "key": KEY, "app_id": APP_ID, "messages": messages}),
    );
    let expected: Vec<Value> = messages.iter().map(|m| m["xml"].clone()).collect();
    assert_eq!(decrypted, Value::Array(expected));
}
