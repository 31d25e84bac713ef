//! wxhook behind a real nginx (Debian's, installed by `.ci/run`): path prefix, upstream keep-alive, forwarded addresses and body limits at both layers.

mod common;

use common::proxy;
use common::*;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

fn free_port(ip: &str) -> SocketAddr {
    std::net::TcpListener::bind(format!("{ip}:0"))
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

/// Starts nginx on 127.0.0.2, proxying `/hooks/` to `upstream` from 127.0.0.3, with the
/// body limit and proxy settings of deploy/nginx.conf.
fn nginx(bin: &Path, dir: &Path, upstream: SocketAddr) -> proxy::Nginx {
    let http = format!(
        "upstream wxhook {{ server {upstream}; keepalive 8; }}\n\
         server {{\n    listen {{listen}};\n    client_max_body_size 64k;\n\
             location /hooks/ {{\n      proxy_pass http://wxhook/;\n      proxy_bind 127.0.0.3;\n      proxy_http_version 1.1;\n\
               proxy_set_header Connection \"\";\n      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n    }}\n  }}"
    );
    proxy::start(bin, dir, free_port("127.0.0.2"), &http)
}

fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(ip.parse::<IpAddr>().ok())
        .build()
        .expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixtures_replayed_through_nginx_reach_the_sink_and_limits_hold_at_both_layers() {
    let Some(nginx_bin) = nginx_binary("fixtures_replayed_through_nginx") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("wxhook.toml");
    let toml = config_toml(
        dir.path(),
        "listen = \"127.0.0.1:0\"\ntrusted_proxies = [\"127.0.0.3/32\"]\nmax_body_bytes = 16384",
    )
    .replace(
        "path = \"/wechat\"",
        "path = \"/wechat\"\nallow_from = [\"127.0.0.1/32\"]",
    );
    std::fs::write(&config, toml).expect("config");
    let server = Binary::serve(&config, &dir.path().join("wxhook.log"), None);
    let proxy = nginx(&nginx_bin, dir.path(), server.addr);
    let url = format!("http://{}/hooks/wechat", proxy.addr);

    // Every fixture through nginx, on kept-alive connections, from the allowed address.
    let client = client_from("127.0.0.1");
    let files = fixture_files();
    for file in &files {
        let answer =
            wxhook::replay::send(&client, &url, TOKEN, std::fs::read(file).expect("fixture"))
                .await
                .expect("request");
        assert!(
            answer.acknowledged(),
            "{}: {answer:?}\n{}",
            file.display(),
            server.stderr()
        );
    }
    let lines = wait_for_lines(&dir.path().join("events.jsonl"), files.len()).await;
    assert_eq!(lines.len(), files.len());

    // A client elsewhere is refused, whatever X-Forwarded-For it sends.
    let elsewhere = client_from("127.0.0.4");
    for target in [url.clone(), server.url()] {
        let status = elsewhere
            .post(format!("{target}?{}", signed_query(TOKEN, now())))
            .header("x-forwarded-for", "127.0.0.1")
            .body(publish_push(1))
            .send()
            .await
            .expect("request")
            .status()
            .as_u16();
        assert_eq!(status, 403, "{target}");
    }

    // Bodies too large for wxhook (16 KiB) but not for nginx (64 KiB), and too large for both.
    for (size, from) in [(20_000, "wxhook"), (100_000, "nginx")] {
        let response = client
            .post(format!("{url}?{}", signed_query(TOKEN, now())))
            .body(vec![b'x'; size])
            .send()
            .await
            .expect("request");
        assert_eq!(response.status().as_u16(), 413, "{size} bytes");
        let text = response.text().await.expect("text");
        assert_eq!(
            text.contains("max_body_bytes"),
            from == "wxhook",
            "{from}: {text}"
        );
    }
}
