//! A load generator that signs every push afresh (its own timestamp, nonce and publish id), so that the replay guard is exercised as WeChat's traffic exercises it; `bench/guard.sh` runs it.
//!
//! `cargo bench --bench signed_load -- URL TOKEN SECONDS CONNECTIONS`

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A `PUBLISHJOBFINISH` push with its own publish id.
fn push(id: u64) -> Vec<u8> {
    format!(
        "<xml><ToUserName><![CDATA[gh_test]]></ToUserName><FromUserName><![CDATA[mphelper]]></FromUserName>\
         <CreateTime>1732170000</CreateTime><MsgType><![CDATA[event]]></MsgType>\
         <Event><![CDATA[PUBLISHJOBFINISH]]></Event><PublishEventInfo><publish_id>{id}</publish_id>\
         <publish_status>0</publish_status><article_id><![CDATA[a{id}]]></article_id></PublishEventInfo></xml>"
    )
    .into_bytes()
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let [url, token, secs, conns] = &args[..] else {
        eprintln!("usage: signed_load URL TOKEN SECONDS CONNECTIONS");
        std::process::exit(2);
    };
    let (Ok(secs), Ok(conns)) = (secs.parse::<u64>(), conns.parse::<u64>()) else {
        eprintln!("SECONDS and CONNECTIONS are numbers");
        std::process::exit(2);
    };
    let (url, token) = (url.clone(), token.clone());
    let ok = Arc::new(AtomicU64::new(0));
    let bad = Arc::new(AtomicU64::new(0));
    let next = Arc::new(AtomicU64::new(rand::random::<u32>() as u64 * 1_000_000));
    let stop = Instant::now() + Duration::from_secs(secs);
    let mut lat = Vec::new();
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (url, token, ok, bad, next) = (
            url.clone(),
            token.clone(),
            ok.clone(),
            bad.clone(),
            next.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut lat = Vec::new();
            while Instant::now() < stop {
                let id = next.fetch_add(1, Ordering::Relaxed);
                let xml = push(id);
                let t = Instant::now();
                match wxhook::replay::send(&client, &url, &token, xml).await {
                    Ok(a) if a.acknowledged() => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        lat.push(t.elapsed());
                    }
                    _ => {
                        bad.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            lat
        }));
    }
    for t in tasks {
        if let Ok(l) = t.await {
            lat.extend(l);
        }
    }
    lat.sort();
    let n = ok.load(Ordering::Relaxed);
    let p = |q: f64| {
        lat.get(((lat.len() as f64) * q) as usize)
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or(0.0)
    };
    println!(
        "ok={n} bad={} rps={:.0} p50_ms={:.2} p99_ms={:.2}",
        bad.load(Ordering::Relaxed),
        n as f64 / secs as f64,
        p(0.5),
        p(0.99)
    );
}
