//! A publishing stage: the WeChat stand-in (`wxhook simulate`'s code) on loopback, wxhook pointed at it, and the real binary for commands.

use super::{TOKEN, TestApp};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use wxhook::publish::simulator::{SimOptions, Simulator};

pub const APP_ID: &str = "wx49f0ab532d5d035a";
pub const APP_SECRET: &str = "s1mulated-app-secret-0123456789";
pub const API_TOKEN: &str = "backend-bearer-token-0123456789";

pub struct Stage {
    pub app: Option<TestApp>,
    pub sim: String,
    pub config: PathBuf,
    pub events: PathBuf,
    pub toml: String,
    pub client: reqwest::Client,
}

/// Simulator defaults for tests: quick pushes, a few published articles.
pub fn sim_options() -> SimOptions {
    SimOptions {
        callback: String::new(),
        token: TOKEN.into(),
        cipher: None,
        app_id: Some(APP_ID.into()),
        app_secret: Some(APP_SECRET.into()),
        push_delay: Duration::from_millis(300),
        token_ttl: 7200,
        articles: 3,
        drop_pushes: false,
        callback_ips: vec!["127.0.0.1/32".into()],
        platform: None,
    }
}

/// The configuration: account `main` with API credentials at the stand-in, a file sink.
pub fn stage_toml(dir: &Path, sim: &str, top: &str, account: &str) -> String {
    format!(
        "data_dir = {data:?}\napi_base = {sim:?}\napi_tokens = [{API_TOKEN:?}]\n{top}\n\
         [[accounts]]\nname = \"main\"\npath = \"/wechat\"\ntoken = {TOKEN:?}\napp_id = {APP_ID:?}\napp_secret = {APP_SECRET:?}\n{account}\n\
         [[sinks]]\ntype = \"file\"\npath = {file:?}\n",
        data = dir.join("spool").display().to_string(),
        file = dir.join("events.jsonl").display().to_string(),
    )
}

impl Stage {
    /// Starts the stand-in and wxhook (in this process) for `top`-level and `account` keys.
    pub async fn start(dir: &Path, options: SimOptions, top: &str, account: &str) -> Stage {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let sim = format!("http://{}", listener.local_addr().expect("addr"));
        let toml = stage_toml(dir, &sim, top, account);
        Stage::start_with(dir, options, listener, toml).await
    }

    /// Like [`Stage::start`] with the stand-in's listener and the configuration given.
    pub async fn start_with(
        dir: &Path,
        mut options: SimOptions,
        listener: TcpListener,
        toml: String,
    ) -> Stage {
        let sim = format!("http://{}", listener.local_addr().expect("addr"));
        let config = dir.join("wxhook.toml");
        std::fs::write(&config, &toml).expect("write config");
        let app = TestApp::spawn(&toml).await;
        options.callback = app.url.clone();
        Simulator::new(options)
            .spawn(listener)
            .expect("stand-in starts");
        Stage {
            app: Some(app),
            sim,
            config,
            events: dir.join("events.jsonl"),
            toml,
            client: reqwest::Client::new(),
        }
    }

    pub fn app(&self) -> &TestApp {
        self.app.as_ref().expect("running")
    }

    /// Runs `wxhook ARGS --config CONFIG`: (success, stdout, stderr).
    pub async fn cli(&self, args: &[&str]) -> (bool, String, String) {
        cli(&self.config, args).await
    }

    /// Like [`Stage::cli`], expecting success; the stdout lines as JSON.
    pub async fn cli_json(&self, args: &[&str]) -> Vec<Value> {
        let (ok, out, err) = self.cli(args).await;
        assert!(ok, "wxhook {args:?} failed: {err}");
        out.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
            .collect()
    }

    /// Calls the stand-in received, by API.
    pub async fn calls(&self, api: &str) -> u64 {
        sim_calls(&self.client, &self.sim, api).await
    }

    /// POSTs a control request to the stand-in.
    pub async fn control(&self, what: &str, body: Value) {
        let status = self
            .client
            .post(format!("{}/simulator/{what}", self.sim))
            .json(&body)
            .send()
            .await
            .expect("stand-in answers")
            .status();
        assert!(status.is_success(), "{what}: {status}");
    }

    /// The file sink's events, parsed.
    pub fn events(&self) -> Vec<Value> {
        super::read_lines(&self.events)
            .iter()
            .map(|l| serde_json::from_str(l).expect("JSON line"))
            .collect()
    }

    /// Waits until the file sink holds an event with `id`; returns every event then.
    pub async fn wait_event(&self, id: &str) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let events = self.events();
            if events.iter().any(|e| e["id"] == id) {
                return events;
            }
            assert!(Instant::now() < deadline, "no event {id}; have {events:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn stop(&mut self) {
        if let Some(app) = self.app.take() {
            app.stop().await;
        }
    }
}

/// Runs the real binary with `--config`.
pub async fn cli(config: &Path, args: &[&str]) -> (bool, String, String) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_wxhook"));
    command
        .args(args)
        .arg("--config")
        .arg(config)
        .env("NO_COLOR", "1");
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("joins")
        .expect("the binary runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Calls the stand-in at `sim` received of `api`.
pub async fn sim_calls(client: &reqwest::Client, sim: &str, api: &str) -> u64 {
    let calls: Value = client
        .get(format!("{sim}/simulator/calls"))
        .send()
        .await
        .expect("stand-in answers")
        .json()
        .await
        .expect("json");
    calls[api].as_u64().unwrap_or(0)
}

/// How many events in `events` have `id`.
pub fn count(events: &[Value], id: &str) -> usize {
    events.iter().filter(|e| e["id"] == id).count()
}
