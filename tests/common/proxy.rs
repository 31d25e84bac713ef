//! A real nginx (Debian's, installed by `.ci/run`) run as a child process with a configuration written by the test.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// nginx, stopped on drop.
pub struct Nginx {
    child: Child,
    pub addr: SocketAddr,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts nginx (one worker) listening on `addr`, with `http` (upstreams and servers; it
/// may use `{listen}`) inside its `http {}` block and its files under `dir/nginx`.
pub fn start(bin: &Path, dir: &Path, addr: SocketAddr, http: &str) -> Nginx {
    let prefix = dir.join("nginx");
    std::fs::create_dir_all(prefix.join("logs")).expect("nginx dir");
    let conf = format!(
        "worker_processes 1;\nuser root;\npid {p}/nginx.pid;\nerror_log {p}/logs/error.log;\n\
         events {{ worker_connections 256; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {p}/body;\n  proxy_temp_path {p}/proxy;\n\
         fastcgi_temp_path {p}/fastcgi;\n  uwsgi_temp_path {p}/uwsgi;\n  scgi_temp_path {p}/scgi;\n{http}\n}}\n",
        p = prefix.display(),
        http = http.replace("{listen}", &addr.to_string()),
    );
    std::fs::write(prefix.join("nginx.conf"), conf).expect("nginx.conf");
    let child = Command::new(bin)
        .arg("-p")
        .arg(&prefix)
        .arg("-c")
        .arg(prefix.join("nginx.conf"))
        .args(["-g", "daemon off;"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nginx starts");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "nginx did not listen on {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }
    Nginx { child, addr }
}
