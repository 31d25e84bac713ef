//! Test helpers: the real server on 127.0.0.1:0 (in-process or as the real binary), signed requests, and sink readers.
#![allow(dead_code)]

pub mod downstream;
pub mod nats;
pub mod platform;
pub mod proxy;
pub mod publishing;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use wxhook::config::Config;
use wxhook::replay::{self, Answer};
use wxhook::server::{App, StartError};
use wxhook::wechat::signature;

pub const TOKEN: &str = "testtoken";

/// A configuration with one account `main` at `/wechat` and one file sink, spool in `dir`.
pub fn config_toml(dir: &Path, extra: &str) -> String {
    format!(
        "data_dir = {data:?}\n{extra}\n[[accounts]]\nname = \"main\"\npath = \"/wechat\"\ntoken = {TOKEN:?}\n\n[[sinks]]\ntype = \"file\"\npath = {file:?}\n",
        data = dir.join("spool").display().to_string(),
        file = dir.join("events.jsonl").display().to_string(),
    )
}

/// The server running inside the test process.
pub struct TestApp {
    pub addr: SocketAddr,
    pub url: String,
    pub client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), StartError>>>,
}

impl TestApp {
    /// Starts the server for `toml` on a free loopback port.
    pub async fn spawn(toml: &str) -> TestApp {
        let config = Config::from_toml(toml, &|_| None).expect("test configuration loads");
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let app = App::with_listener(config, listener).expect("app starts");
        let addr = app.local_addr().expect("bound address");
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(app.run_until(async {
            let _ = stopped.await;
        }));
        TestApp {
            addr,
            url: format!("http://{addr}/wechat"),
            client: reqwest::Client::new(),
            stop: Some(stop),
            handle: Some(handle),
        }
    }

    /// Signs and POSTs a push as WeChat would.
    pub async fn push(&self, xml: &[u8]) -> Answer {
        replay::send(&self.client, &self.url, TOKEN, xml.to_vec())
            .await
            .expect("request reaches the server")
    }

    /// POSTs `body` to the account URL with `query` as given.
    pub async fn post_raw(&self, query: &str, body: impl Into<reqwest::Body>) -> Answer {
        let response = self
            .client
            .post(format!("{}?{query}", self.url))
            .body(body)
            .send()
            .await
            .expect("request reaches the server");
        answer(response).await
    }

    /// GETs the account URL with `query`.
    pub async fn get_raw(&self, query: &str) -> (Answer, Option<String>) {
        let response = self
            .client
            .get(format!("{}?{query}", self.url))
            .send()
            .await
            .expect("request reaches the server");
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        (answer(response).await, content_type)
    }

    /// Stops the server the way SIGTERM does and waits until the spool is closed.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(handle) = self.handle.take() {
            handle
                .await
                .expect("server task joins")
                .expect("server stops cleanly");
        }
    }
}

async fn answer(response: reqwest::Response) -> Answer {
    Answer {
        status: response.status().as_u16(),
        body: response.text().await.expect("body is text"),
    }
}

/// POSTs `body` to `path` on the test server with `query` as given: (status, body).
pub async fn post_path(
    app: &TestApp,
    path: &str,
    query: &str,
    body: impl Into<Vec<u8>>,
) -> (u16, String) {
    let response = app
        .client
        .post(format!("http://{}{path}?{query}", app.addr))
        .body(body.into())
        .send()
        .await
        .expect("request");
    (
        response.status().as_u16(),
        response.text().await.expect("text"),
    )
}

/// POSTs `body` to `url` with `query` as given: (status, body).
pub async fn post_url(url: &str, query: &str, body: Vec<u8>) -> (u16, String) {
    let response = reqwest::Client::new()
        .post(format!("{url}?{query}"))
        .body(body)
        .send()
        .await
        .expect("answered");
    (
        response.status().as_u16(),
        response.text().await.expect("text"),
    )
}

/// A signed query for `token` at `timestamp` with a fresh nonce, as WeChat sends.
pub fn signed_query(token: &str, timestamp: u64) -> String {
    let ts = timestamp.to_string();
    let nonce = rand::random::<u32>().to_string();
    format!(
        "signature={}&timestamp={ts}&nonce={nonce}",
        signature::sign(token, &ts, &nonce)
    )
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Waits until `path` holds at least `n` lines; returns them.
pub async fn wait_for_lines(path: &Path, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let lines = read_lines(path);
        if lines.len() >= n {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {n} lines in {}; have {}",
            path.display(),
            lines.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn read_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .map(|s| s.lines().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// The `id` of every JSON line.
pub fn ids(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("each line is JSON");
            v["id"].as_str().expect("id is a string").to_owned()
        })
        .collect()
}

/// A `PUBLISHJOBFINISH` success push with its own publish id.
pub fn publish_push(publish_id: u64) -> Vec<u8> {
    format!(
        "<xml><ToUserName><![CDATA[gh_test]]></ToUserName><FromUserName><![CDATA[mphelper]]></FromUserName>\
         <CreateTime>1732170000</CreateTime><MsgType><![CDATA[event]]></MsgType>\
         <Event><![CDATA[PUBLISHJOBFINISH]]></Event><PublishEventInfo><publish_id>{publish_id}</publish_id>\
         <publish_status>0</publish_status><article_id><![CDATA[art{publish_id}]]></article_id>\
         <article_detail><count>1</count><item><idx>1</idx><article_url><![CDATA[https://mp.weixin.qq.com/s/{publish_id}]]></article_url></item></article_detail>\
         </PublishEventInfo></xml>"
    )
    .into_bytes()
}

/// Pushes `count` distinct events from `workers` concurrent clients; returns the acknowledged ids.
pub async fn push_many(url: String, first: u64, count: u64, workers: u64) -> BTreeSet<String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (client, url) = (client.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let mut acked = BTreeSet::new();
            let mut id = first + w;
            while id < first + count {
                let answer = wxhook::replay::send(&client, &url, TOKEN, publish_push(id)).await;
                if answer.is_ok_and(|a| a.acknowledged()) {
                    acked.insert(format!("publish-{id}-0"));
                }
                id += workers;
            }
            acked
        }));
    }
    let mut acked = BTreeSet::new();
    for t in tasks {
        acked.extend(t.await.expect("worker joins"));
    }
    acked
}

/// The ids in a JSON-lines sink file.
pub fn id_set(path: &Path) -> BTreeSet<String> {
    ids(&read_lines(path)).into_iter().collect()
}

/// Waits until `progress()` reaches `n`, so that a kill lands while the load is in flight.
pub async fn wait_for_progress(server: &Binary, n: usize, progress: impl Fn() -> usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while progress() < n {
        assert!(
            Instant::now() < deadline,
            "no deliveries:\n{}",
            server.stderr()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until every acknowledged id is among `delivered()`; fails naming what is missing.
pub async fn audit_delivered(
    server: &Binary,
    acked: &BTreeSet<String>,
    delivered: impl Fn() -> BTreeSet<String>,
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = delivered();
        let missing: Vec<&String> = acked.difference(&got).collect();
        if missing.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} acknowledged events never arrived, e.g. {:?}\n{}",
            missing.len(),
            &missing[..missing.len().min(5)],
            server.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// Every push fixture (`fixtures/pushes/*.xml`), sorted by name.
pub fn fixture_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(fixtures_dir().join("pushes"))
        .expect("fixtures/pushes exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "xml"))
        .collect();
    files.sort();
    files
}

/// The real `wxhook` binary, started with `args`, killed when dropped.
pub struct Binary {
    pub child: Child,
    pub addr: SocketAddr,
    stderr_log: PathBuf,
}

impl Binary {
    /// Starts `wxhook serve --config CONFIG` (via `prefix`, e.g. a shell setting limits) and
    /// waits until it logs its address. Its stderr goes to `stderr_log`.
    pub fn serve(config: &Path, stderr_log: &Path, shell_prefix: Option<&str>) -> Binary {
        let bin = env!("CARGO_BIN_EXE_wxhook");
        let stderr = std::fs::File::create(stderr_log).expect("stderr log file");
        let mut command = match shell_prefix {
            Some(prefix) => {
                let mut c = Command::new("bash");
                c.arg("-c")
                    .arg(format!("{prefix}; exec \"$0\" serve --config \"$1\"",));
                c.arg(bin).arg(config);
                c
            }
            None => {
                let mut c = Command::new(bin);
                c.arg("serve").arg("--config").arg(config);
                c
            }
        };
        let child = command
            .env("WXHOOK_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("binary starts");
        let addr = wait_for_addr(stderr_log);
        Binary {
            child,
            addr,
            stderr_log: stderr_log.to_owned(),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/wechat", self.addr)
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads `listening on ADDR` from a log file the binary writes.
pub fn wait_for_addr(log: &Path) -> SocketAddr {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(rest) = text.split("listening on ").nth(1) {
            let addr: String = rest
                .chars()
                .take_while(|c| c.is_ascii_hexdigit() || ".:[]".contains(*c))
                .collect();
            return addr.parse().expect("address after `listening on`");
        }
        assert!(
            Instant::now() < deadline,
            "the binary did not report its address:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs a Python snippet with wechatpy (installed by `.ci/run`, which sets WXHOOK_TEST_PYTHON);
/// call [`python_has`] first.
pub fn wechatpy(script: &str, input: &serde_json::Value) -> serde_json::Value {
    let python = std::env::var("WXHOOK_TEST_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let mut child = std::process::Command::new(&python)
        .arg("-c")
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {python}: {e}"));
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(input.to_string().as_bytes())
            .expect("write stdin");
    }
    let out = child.wait_with_output().expect("python ends");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    serde_json::from_slice(&out.stdout).expect("python printed JSON")
}

/// Whether a test may run without a tool it needs. `.ci/run` sets WXHOOK_REQUIRE_TOOLS=1
/// where it could install every tool (as root, as on CI): there a missing tool fails the
/// test. Elsewhere (`cargo test` alone, a contributor without root) the test says what
/// it skipped and how to get the tool, and passes.
pub fn missing_tool(test: &str, what: &str, how: &str) {
    let message = format!("{test} needs {what}, which is not here: {how}");
    if std::env::var("WXHOOK_REQUIRE_TOOLS").is_ok_and(|v| v == "1") {
        panic!("{message}");
    }
    eprintln!("SKIPPED: {message}");
    if let Some(log) = std::env::var_os("WXHOOK_SKIP_LOG") {
        use std::io::Write;
        if let Ok(mut file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
        {
            let _ = writeln!(file, "{message}");
        }
    }
}

/// The nginx binary (`WXHOOK_TEST_NGINX`, default Debian's), or `None` after saying why not.
pub fn nginx_binary(test: &str) -> Option<PathBuf> {
    let bin = PathBuf::from(
        std::env::var("WXHOOK_TEST_NGINX").unwrap_or_else(|_| "/usr/sbin/nginx".to_owned()),
    );
    if bin.exists() {
        return Some(bin);
    }
    missing_tool(
        test,
        &format!("nginx at {}", bin.display()),
        "run .ci/run as root (it installs Debian's nginx-light), or `sudo apt-get install nginx-light`, or set WXHOOK_TEST_NGINX",
    );
    None
}

/// True when the test Python (`WXHOOK_TEST_PYTHON`, default `python3`) imports `module`;
/// otherwise says why the test is skipped.
pub fn python_has(test: &str, module: &str) -> bool {
    let python = std::env::var("WXHOOK_TEST_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let found = Command::new(&python)
        .args(["-c", &format!("import {module}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        missing_tool(
            test,
            &format!("the Python module `{module}` (in {python})"),
            "run .ci/run (it makes target/ci-venv and sets WXHOOK_TEST_PYTHON), or \
             `pip install standardwebhooks==1.1.0 wechatpy==1.8.18 cryptography` and set WXHOOK_TEST_PYTHON",
        );
    }
    found
}
