//! The scale-out example of deploy/ run for real: two wxhook processes with deploy/wxhook-scale.toml behind a real nginx with deploy/nginx-scale.conf, and a real nats-server: WeChat's retries landing on the other replica, a replica killed with `kill -9`, NATS away under load, and a replay refused across replicas.

mod common;

use common::nats::{NatsServer, Stored, free_port, messages, nats_server_binary, try_count};
use common::{
    Binary, TOKEN, id_set, nginx_binary, now, post_url, proxy, publish_push, signed_query,
};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Which replay guard the replicas use.
#[derive(Clone, Copy)]
enum Guard {
    /// deploy/wxhook-scale.toml as it is: `replay_guard = "nats"`.
    Shared,
    /// Each replica its own (`replay_guard = "local"`), which keeps accepting pushes
    /// while NATS is away.
    Local,
}

/// deploy/wxhook-scale.toml for a replica on 127.0.0.1:`port` storing under `dir`, with
/// the test's token and NATS, and a file sink recording what this replica stored.
fn replica_toml(dir: &Path, port: u16, nats: &str, guard: Guard) -> String {
    let deployed = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/wxhook-scale.toml"),
    )
    .expect("deploy/wxhook-scale.toml");
    let replace = |text: String, from: &str, to: &str| {
        assert!(
            text.contains(from),
            "deploy/wxhook-scale.toml lacks `{from}`"
        );
        text.replace(from, to)
    };
    let mut toml = replace(
        deployed,
        "listen = \"0.0.0.0:8080\"",
        &format!("listen = \"127.0.0.1:{port}\""),
    );
    toml = replace(
        toml,
        "data_dir = \"/var/lib/wxhook/data\"",
        &format!("data_dir = {:?}", dir.join("spool").display().to_string()),
    );
    toml = replace(toml, "\"172.31.0.10/32\"", "\"127.0.0.1/32\"");
    toml = replace(
        toml,
        "url = \"nats://nats:4222\"",
        &format!("url = {nats:?}"),
    );
    toml = replace(
        toml,
        "path = \"/wechat\"",
        &format!("path = \"/wechat\"\ntoken = {TOKEN:?}"),
    );
    if let Guard::Local = guard {
        // As WXHOOK_REPLAY_GUARD=local does in deploy/docker-compose.scale.yml.
        toml = replace(toml, "replay_guard = \"nats\"", "replay_guard = \"local\"");
    }
    toml + &format!(
        "\n[[sinks]]\ntype = \"file\"\nname = \"stored\"\npath = {:?}\n",
        dir.join("events.jsonl").display().to_string()
    )
}

/// One replica: the real binary on a fixed port, with its own spool.
struct Replica {
    dir: PathBuf,
    config: PathBuf,
    port: u16,
    process: Option<Binary>,
}

impl Replica {
    fn start(root: &Path, name: &str, nats: &str, guard: Guard) -> Replica {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).expect("replica dir");
        let port = free_port();
        let config = dir.join("wxhook.toml");
        std::fs::write(&config, replica_toml(&dir, port, nats, guard)).expect("config");
        let mut replica = Replica {
            dir,
            config,
            port,
            process: None,
        };
        replica.run();
        replica
    }

    fn run(&mut self) {
        let log = self.dir.join("wxhook.log");
        self.process = Some(Binary::serve(&self.config, &log, None));
    }

    fn kill9(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill9();
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/wechat", self.port)
    }

    /// The ids this replica stored (its file sink).
    fn stored(&self) -> BTreeSet<String> {
        id_set(&self.dir.join("events.jsonl"))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("wxhook.log")).unwrap_or_default()
    }
}

/// deploy/nginx-scale.conf run by a real nginx, its upstream the two replicas.
fn balancer(bin: &Path, dir: &Path, a: &Replica, b: &Replica) -> proxy::Nginx {
    let deployed = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/nginx-scale.conf"),
    )
    .expect("deploy/nginx-scale.conf");
    let mut http = deployed;
    for (from, to) in [
        (
            "server wxhook-a:8080",
            format!("server 127.0.0.1:{}", a.port),
        ),
        (
            "server wxhook-b:8080",
            format!("server 127.0.0.1:{}", b.port),
        ),
        ("listen 80;", "listen {listen};".to_owned()),
    ] {
        assert!(
            http.contains(from),
            "deploy/nginx-scale.conf lacks `{from}`"
        );
        http = http.replace(from, &to);
    }
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    proxy::start(bin, dir, addr, &http)
}

/// Sends one push as WeChat does: the same signed query and body again until it is
/// answered `success` (WeChat stops after three tries; the test insists, to prove that
/// nothing acknowledged goes missing). Returns how many requests it took.
async fn deliver(client: &reqwest::Client, url: &str, xml: Vec<u8>) -> usize {
    let query = signed_query(TOKEN, now());
    let deadline = Instant::now() + Duration::from_secs(30);
    for attempt in 1.. {
        let answer = client
            .post(format!("{url}?{query}"))
            .body(xml.clone())
            .send()
            .await;
        if let Ok(response) = answer {
            let ok = response.status() == 200;
            if ok && response.text().await.is_ok_and(|t| t == "success") {
                return attempt;
            }
        }
        assert!(Instant::now() < deadline, "push never acknowledged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    unreachable!()
}

/// Publish ids `first..first+count` pushed by `workers` concurrent WeChat-like senders;
/// returns them, and how many requests were not acknowledged on the way.
async fn load(url: String, first: u64, count: u64, workers: u64) -> (BTreeSet<String>, usize) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (client, url) = (client.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let (mut sent, mut refused) = (BTreeSet::new(), 0);
            let mut id = first + w;
            while id < first + count {
                refused += deliver(&client, &url, publish_push(id)).await - 1;
                sent.insert(format!("publish-{id}-0"));
                id += workers;
            }
            (sent, refused)
        }));
    }
    let (mut sent, mut refused) = (BTreeSet::new(), 0);
    for task in tasks {
        let (ids, n) = task.await.expect("sender joins");
        sent.extend(ids);
        refused += n;
    }
    (sent, refused)
}

/// Waits until the stream holds exactly the events `expected`, each once.
async fn assert_stream_holds(url: &str, expected: &BTreeSet<String>, replicas: &[&Replica]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let stored: Vec<Stored>;
    loop {
        let count = tokio::time::timeout(Duration::from_secs(5), try_count(url, "WXHOOK"))
            .await
            .ok()
            .flatten()
            .unwrap_or(0);
        if count >= expected.len() as u64 {
            // Anything still on its way would show up now.
            tokio::time::sleep(Duration::from_millis(500)).await;
            stored = messages(url, "WXHOOK").await;
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the stream holds {count} of {} events\n{}",
            expected.len(),
            replicas.iter().map(|r| r.log()).collect::<String>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ids: Vec<&String> = stored.iter().map(|m| &m.id).collect();
    let unique: BTreeSet<String> = ids.iter().map(|s| s.to_string()).collect();
    assert_eq!(ids.len(), unique.len(), "an event is in the stream twice");
    let missing: Vec<&String> = expected.difference(&unique).collect();
    assert!(
        missing.is_empty(),
        "acknowledged but not in the stream: {missing:?}"
    );
    assert_eq!(&unique, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_behind_nginx_store_every_event_once_through_retries_crashes_and_nats_outages() {
    let Some(nats_bin) = nats_server_binary("replicas_behind_nginx") else {
        return;
    };
    let Some(nginx_bin) = nginx_binary("replicas_behind_nginx") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut nats = NatsServer::start(&nats_bin, free_port(), dir.path());
    let mut a = Replica::start(dir.path(), "a", &nats.url(), Guard::Local);
    let b = Replica::start(dir.path(), "b", &nats.url(), Guard::Local);
    let proxy = balancer(&nginx_bin, dir.path(), &a, &b);
    let url = format!("http://{}/hooks/wechat", proxy.addr);
    let client = reqwest::Client::new();

    // 1. WeChat's retries: every push is sent two or three times in a row, so round robin
    // takes the copies to both replicas. Both store it; the stream holds it once.
    let mut expected = BTreeSet::new();
    for id in 0..60u64 {
        let xml = publish_push(5_000_000_000 + id);
        let query = signed_query(TOKEN, now());
        for _ in 0..2 + id % 2 {
            let answer = client
                .post(format!("{url}?{query}"))
                .body(xml.clone())
                .send()
                .await
                .expect("nginx answers");
            assert_eq!(answer.status(), 200);
            assert_eq!(answer.text().await.expect("text"), "success");
        }
        expected.insert(format!("publish-{}-0", 5_000_000_000 + id));
    }
    assert_stream_holds(&nats.url(), &expected, &[&a, &b]).await;
    let (on_a, on_b) = (a.stored(), b.stored());
    let on_both = on_a.intersection(&on_b).count();
    eprintln!(
        "retries: {} on a, {} on b, {on_both} on both",
        on_a.len(),
        on_b.len()
    );
    assert!(
        on_both >= 30,
        "round robin should have taken most pushes to both replicas: {} on a, {} on b, {on_both} on both",
        on_a.len(),
        on_b.len()
    );

    // 2. A replica killed with kill -9 under load and started again: what either
    // acknowledged reaches the stream, once.
    let sending = tokio::spawn(load(url.clone(), 5_100_000_000, 400, 8));
    let deadline = Instant::now() + Duration::from_secs(20);
    while a.stored().len() < on_a.len() + 40 {
        assert!(Instant::now() < deadline, "no load reached replica a");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    a.kill9();
    let stored_at_kill = a.stored().len();
    tokio::time::sleep(Duration::from_millis(500)).await;
    a.run();
    let (sent, refused) = sending.await.expect("load finishes");
    assert_eq!(sent.len(), 400);
    eprintln!(
        "kill -9: replica a had stored {stored_at_kill} events; {refused} requests needed a retry"
    );
    expected.extend(sent);
    assert_stream_holds(&nats.url(), &expected, &[&a, &b]).await;

    // 3. NATS away under load: pushes are still answered `success` (the spools hold
    // them), and the stream catches up without loss or duplicate.
    nats.stop();
    let (sent, refused) = load(url.clone(), 5_200_000_000, 300, 8).await;
    assert_eq!(sent.len(), 300);
    assert_eq!(refused, 0, "NATS away must not cost a push its `success`");
    expected.extend(sent);
    nats.run();
    assert_stream_holds(&nats.url(), &expected, &[&a, &b]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_accepted_at_one_replica_is_refused_at_the_other_with_another_body() {
    let Some(nats_bin) = nats_server_binary("a_query_accepted_at_one_replica") else {
        return;
    };
    let Some(nginx_bin) = nginx_binary("a_query_accepted_at_one_replica") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = NatsServer::start(&nats_bin, free_port(), dir.path());
    let a = Replica::start(dir.path(), "a", &nats.url(), Guard::Shared);
    let b = Replica::start(dir.path(), "b", &nats.url(), Guard::Shared);
    let proxy = balancer(&nginx_bin, dir.path(), &a, &b);
    // Straight to each replica, so that "the other" is certain.
    let query = signed_query(TOKEN, now());
    let (pushed, forged) = (publish_push(6_000_000_001), publish_push(6_000_000_002));
    let accepted = post_url(&a.url(), &query, pushed.clone()).await;
    assert_eq!(accepted, (200, "success".to_owned()));
    let retried = post_url(&b.url(), &query, pushed.clone()).await;
    assert_eq!(
        retried,
        (200, "success".to_owned()),
        "a retry is accepted anywhere"
    );
    let (status, text) = post_url(&b.url(), &query, forged.clone()).await;
    assert_eq!(status, 401, "{text}");
    assert!(text.contains("replay"), "{text}");
    // And through nginx, whichever replica it picks.
    for _ in 0..2 {
        let url = format!("http://{}/hooks/wechat", proxy.addr);
        let (status, text) = post_url(&url, &query, forged.clone()).await;
        assert_eq!(status, 401, "{text}");
    }
    let expected = BTreeSet::from(["publish-6000000001-0".to_owned()]);
    assert_stream_holds(&nats.url(), &expected, &[&a, &b]).await;
    assert!(!a.stored().contains("publish-6000000002-0"));
    assert!(!b.stored().contains("publish-6000000002-0"));

    // A consumer reads it as the README shows: a durable pull consumer, acknowledged.
    let payloads = read_as_consumer(&nats.url(), 1).await;
    assert_eq!(payloads.len(), 1);
    assert!(
        payloads[0].contains("\"publish_id\":\"6000000001\""),
        "{}",
        payloads[0]
    );
    assert!(
        read_as_consumer(&nats.url(), 1).await.is_empty(),
        "acknowledged once"
    );
}

/// Up to `n` payloads from durable pull consumer `publisher` on the PUBLISHJOBFINISH
/// subjects, each acknowledged (the README's consumer example).
async fn read_as_consumer(url: &str, n: usize) -> Vec<String> {
    use async_nats::jetstream::consumer::{AckPolicy, PullConsumer, pull};
    use futures_util::StreamExt;
    let js = async_nats::jetstream::new(async_nats::connect(url).await.expect("connects"));
    let stream = js.get_stream("WXHOOK").await.expect("stream");
    let consumer: PullConsumer = stream
        .get_or_create_consumer(
            "publisher",
            pull::Config {
                durable_name: Some("publisher".into()),
                filter_subject: "wxhook.*.publishjobfinish".into(),
                ack_policy: AckPolicy::Explicit,
                ..Default::default()
            },
        )
        .await
        .expect("consumer");
    let mut batch = consumer
        .fetch()
        .max_messages(n)
        .expires(Duration::from_secs(1))
        .messages()
        .await
        .expect("fetch");
    let mut payloads = Vec::new();
    while let Some(message) = batch.next().await {
        let message = message.expect("message");
        payloads.push(String::from_utf8_lossy(&message.payload).into_owned());
        message
            .ack_with(async_nats::jetstream::AckKind::Ack)
            .await
            .expect("ack");
    }
    payloads
}
