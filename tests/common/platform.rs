//! A third-party platform stage: the real binary as a platform entry, the WeChat stand-in playing WeChat for the platform (tickets, authorizations, component APIs), and events encrypted by wechatpy.

use super::publishing::{API_TOKEN, cli, sim_calls};
use super::{Binary, TOKEN, now, post_url, read_lines, wechatpy};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use wxhook::publish::simulator::{SimOptions, SimPlatform, Simulator};
use wxhook::wechat::crypto::Cipher;

pub const PLATFORM_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
pub const PLATFORM_APP_ID: &str = "wxb11529c136998cb6";
pub const PLATFORM_SECRET: &str = "platform-app-secret-0123456789abc";
pub const AUTHORIZER: &str = "wxf8b4f85f3a794e77";

/// The events as WeChat sends them to the authorization event URL: decrypting to
/// `<xml><AppId/><CreateTime/><InfoType/>…</xml>`, encrypted and signed by wechatpy for
/// `app_id`. Returns (query, body) pairs.
pub fn encrypted_by_wechatpy(app_id: &str, xmls: &[String]) -> Vec<(String, Vec<u8>)> {
    let script = r#"
import hashlib, json, sys, xmltodict
from wechatpy.crypto import WeChatCrypto
req = json.load(sys.stdin)
crypto = WeChatCrypto(req["token"], req["key"], req["app_id"])
out = []
for i, xml in enumerate(req["xmls"]):
    ts, nonce = str(req["ts"]), str(req["nonce"] + i)
    enc = xmltodict.parse(crypto.encrypt_message(xml, nonce, ts))["xml"]
    sig = hashlib.sha1("".join(sorted([req["token"], ts, nonce])).encode()).hexdigest()
    body = "<xml><AppId><![CDATA[%s]]></AppId><Encrypt><![CDATA[%s]]></Encrypt></xml>" % (req["app_id"], enc["Encrypt"])
    out.append({"query": "signature=%s&timestamp=%s&nonce=%s&encrypt_type=aes&msg_signature=%s" % (sig, ts, nonce, enc["MsgSignature"]), "body": body})
print(json.dumps(out))
"#;
    let made = wechatpy(
        script,
        &json!({
            "token": TOKEN, "key": PLATFORM_KEY, "app_id": app_id, "ts": now(), "xmls": xmls,
            // Fresh nonces: two calls within one second must not sign the same query.
            "nonce": rand::random::<u32>() / 2,
        }),
    );
    made.as_array()
        .expect("list")
        .iter()
        .map(|r| {
            (
                r["query"].as_str().expect("query").to_owned(),
                r["body"].as_str().expect("body").as_bytes().to_vec(),
            )
        })
        .collect()
}

/// The platform entry `agency` at `/wechat/{appid}` (authorization events at
/// `/wechat/auth`) with the platform's AppSecret, on `port`, pointed at the stand-in.
pub fn platform_toml(dir: &Path, port: u16, sim: &str, top: &str) -> String {
    format!(
        "listen = \"127.0.0.1:{port}\"\ndata_dir = {data:?}\napi_base = {sim:?}\napi_tokens = [{API_TOKEN:?}]\n{top}\n\
         [[accounts]]\nname = \"agency\"\npath = \"/wechat/{{appid}}\"\ntoken = {TOKEN:?}\n\
         app_id = {PLATFORM_APP_ID:?}\napp_secret = {PLATFORM_SECRET:?}\nencoding_aes_key = {PLATFORM_KEY:?}\n\
         [[sinks]]\ntype = \"file\"\npath = {file:?}\n",
        data = dir.join("spool").display().to_string(),
        file = dir.join("events.jsonl").display().to_string(),
    )
}

pub struct PlatformStage {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub sim: String,
    pub base: String,
    pub server: Option<Binary>,
    /// Every stderr log of the binary (one per start).
    pub logs: Vec<PathBuf>,
    pub client: reqwest::Client,
}

impl PlatformStage {
    /// The binary on a free port, then the stand-in (access tokens living `token_ttl`
    /// seconds) pushing to it; `top` adds top-level keys.
    pub async fn start(dir: &Path, token_ttl: u64, top: &str) -> PlatformStage {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let sim = format!("http://{}", listener.local_addr().expect("addr"));
        let config = dir.join("wxhook.toml");
        std::fs::write(&config, platform_toml(dir, port, &sim, top)).expect("config");
        let base = format!("http://127.0.0.1:{port}");
        let mut stage = PlatformStage {
            dir: dir.to_owned(),
            config,
            sim,
            base: base.clone(),
            server: None,
            logs: Vec::new(),
            client: reqwest::Client::new(),
        };
        stage.start_server();
        Simulator::new(SimOptions {
            callback: format!("{base}/wechat/{{appid}}"),
            token: TOKEN.into(),
            cipher: Some(Cipher::new(PLATFORM_KEY, PLATFORM_APP_ID).expect("cipher")),
            app_id: Some(PLATFORM_APP_ID.into()),
            app_secret: Some(PLATFORM_SECRET.into()),
            push_delay: Duration::from_millis(300),
            token_ttl,
            articles: 3,
            drop_pushes: false,
            callback_ips: vec!["127.0.0.1/32".into()],
            platform: Some(SimPlatform {
                auth_callback: format!("{base}/wechat/auth"),
                ticket_every: None,
            }),
        })
        .spawn(listener)
        .expect("stand-in starts");
        stage
    }

    /// Starts the binary (again), with a log of its own.
    pub fn start_server(&mut self) {
        let log = self.dir.join(format!("stderr-{}.log", self.logs.len()));
        self.server = Some(Binary::serve(&self.config, &log, None));
        self.logs.push(log);
    }

    /// Kills the binary (as a crash or a redeploy would).
    pub fn stop_server(&mut self) {
        if let Some(mut server) = self.server.take() {
            server.kill9();
        }
    }

    /// Every log line the binary wrote, across starts.
    pub fn stderr(&self) -> String {
        self.logs
            .iter()
            .map(|l| std::fs::read_to_string(l).unwrap_or_default())
            .collect()
    }

    /// `wxhook ARGS --config CONFIG`: (success, stdout, stderr).
    pub async fn cli(&self, args: &[&str]) -> (bool, String, String) {
        cli(&self.config, args).await
    }

    /// Like [`PlatformStage::cli`], expecting success; stdout lines as JSON.
    pub async fn cli_json(&self, args: &[&str]) -> Vec<Value> {
        let (ok, out, err) = self.cli(args).await;
        assert!(ok, "wxhook {args:?} failed: {err}\n{}", self.stderr());
        out.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
            .collect()
    }

    /// POSTs a control request to the stand-in; its answer.
    pub async fn control(&self, what: &str, body: Value) -> Value {
        let response = self
            .client
            .post(format!("{}/simulator/{what}", self.sim))
            .json(&body)
            .send()
            .await
            .expect("stand-in answers");
        assert!(response.status().is_success(), "{what}");
        response.json().await.expect("json")
    }

    /// Calls the stand-in received, by API.
    pub async fn calls(&self, api: &str) -> u64 {
        sim_calls(&self.client, &self.sim, api).await
    }

    /// Sends an authorization event's XML encrypted by wechatpy; expects `success`.
    pub async fn send_by_wechatpy(&self, xml: &str) {
        let requests = encrypted_by_wechatpy(PLATFORM_APP_ID, &[xml.to_owned()]);
        let (query, body) = &requests[0];
        let answer = post_url(&format!("{}/wechat/auth", self.base), query, body.clone()).await;
        assert_eq!(answer, (200, "success".to_owned()), "{}", self.stderr());
    }

    /// `wxhook platform authorizers`.
    pub async fn authorizers(&self) -> Vec<Value> {
        self.cli_json(&["platform", "authorizers"]).await
    }

    /// Waits until `app_id` is in `state`; its line of `wxhook platform authorizers`.
    pub async fn wait_authorizer(&self, app_id: &str, state: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let all = self.authorizers().await;
            if let Some(found) = all
                .iter()
                .find(|a| a["app_id"] == app_id && a["state"] == state)
            {
                return found.clone();
            }
            assert!(
                Instant::now() < deadline,
                "{app_id} never became {state}: {all:?}\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The file sink's events.
    pub fn events(&self) -> Vec<Value> {
        read_lines(&self.dir.join("events.jsonl"))
            .iter()
            .map(|l| serde_json::from_str(l).expect("JSON line"))
            .collect()
    }

    /// Waits for the event `id` in the file sink.
    pub async fn wait_event(&self, id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(found) = self.events().into_iter().find(|e| e["id"] == id) {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "no event {id}: {:?}\n{}",
                self.events(),
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for the first event with `info_type`.
    pub async fn wait_info_type(&self, info_type: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(found) = self
                .events()
                .into_iter()
                .find(|e| e["info_type"] == info_type)
            {
                return found;
            }
            assert!(Instant::now() < deadline, "no {info_type} event");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Everything a user can read: the sink's file and every log.
    pub fn everything_visible(&self) -> String {
        format!(
            "{}{}",
            std::fs::read_to_string(self.dir.join("events.jsonl")).unwrap_or_default(),
            self.stderr()
        )
    }
}
