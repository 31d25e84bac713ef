//! A real HTTP downstream on 127.0.0.1 for relay tests: records every request and answers as scripted.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// How the downstream answers.
#[derive(Debug, Clone)]
pub enum Behaviour {
    Ok,
    /// The first `n` attempts of each `webhook-id` get `status`, later ones 200.
    FailFirst(usize, u16),
    /// The first attempt of each id gets 429 with `Retry-After: secs`, later ones 200.
    RetryAfterFirst(u64),
    /// The first attempt of each id hangs this long before answering 200.
    HangFirst(Duration),
    /// Every attempt gets this status.
    Always(u16),
}

/// One request the downstream received.
#[derive(Debug, Clone)]
pub struct Received {
    pub id: String,
    pub timestamp: String,
    pub signature: Option<String>,
    pub content_type: Option<String>,
    pub authorization: Option<String>,
    pub body: String,
    pub at: Instant,
    pub wall: SystemTime,
    /// The status it was answered.
    pub status: u16,
}

#[derive(Default)]
struct Inner {
    behaviour: Option<Behaviour>,
    received: Vec<Received>,
    attempts: HashMap<String, usize>,
}

#[derive(Clone)]
pub struct Downstream {
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
}

impl Downstream {
    /// Starts on a free port.
    pub async fn start(behaviour: Behaviour) -> Downstream {
        Downstream::start_on("127.0.0.1:0".parse().expect("addr"), behaviour).await
    }

    /// Starts on `addr` (to bring a downstream "back up" on a known port).
    pub async fn start_on(addr: SocketAddr, behaviour: Behaviour) -> Downstream {
        let inner = Arc::new(Mutex::new(Inner {
            behaviour: Some(behaviour),
            ..Inner::default()
        }));
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .expect("bind downstream");
        let addr = listener.local_addr().expect("addr");
        let app = Router::new()
            .route("/hook", post(receive))
            .with_state(inner.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Downstream { addr, inner }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub fn set(&self, behaviour: Behaviour) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.behaviour = Some(behaviour);
        }
    }

    pub fn received(&self) -> Vec<Received> {
        self.inner
            .lock()
            .map(|i| i.received.clone())
            .unwrap_or_default()
    }

    /// Ids answered 2xx, in the order they were answered.
    pub fn delivered_ids(&self) -> Vec<String> {
        self.received()
            .into_iter()
            .filter(|r| (200..300).contains(&r.status))
            .map(|r| r.id)
            .collect()
    }

    /// Waits until `n` distinct ids were answered 2xx.
    pub async fn wait_delivered(&self, n: usize, within: Duration) -> Vec<String> {
        let deadline = Instant::now() + within;
        loop {
            let mut ids = self.delivered_ids();
            ids.sort();
            ids.dedup();
            if ids.len() >= n {
                return ids;
            }
            assert!(
                Instant::now() < deadline,
                "only {} of {n} events reached the downstream; received {:?}",
                ids.len(),
                self.received()
                    .iter()
                    .map(|r| (&r.id, r.status))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn receive(
    State(inner): State<Arc<Mutex<Inner>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let id = header("webhook-id").unwrap_or_default();
    let (behaviour, attempt) = {
        let Ok(mut inner) = inner.lock() else {
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        };
        let attempt = {
            let n = inner.attempts.entry(id.clone()).or_default();
            *n += 1;
            *n
        };
        (inner.behaviour.clone().unwrap_or(Behaviour::Ok), attempt)
    };
    let (status, retry_after) = match behaviour {
        Behaviour::Ok => (200, None),
        Behaviour::FailFirst(n, status) if attempt <= n => (status, None),
        Behaviour::FailFirst(..) => (200, None),
        Behaviour::RetryAfterFirst(secs) if attempt == 1 => (429, Some(secs)),
        Behaviour::RetryAfterFirst(_) => (200, None),
        Behaviour::HangFirst(d) if attempt == 1 => {
            tokio::time::sleep(d).await;
            (200, None)
        }
        Behaviour::HangFirst(_) => (200, None),
        Behaviour::Always(status) => (status, None),
    };
    if let Ok(mut inner) = inner.lock() {
        inner.received.push(Received {
            id,
            timestamp: header("webhook-timestamp").unwrap_or_default(),
            signature: header("webhook-signature"),
            content_type: header("content-type"),
            authorization: header("authorization"),
            body: String::from_utf8_lossy(&body).into_owned(),
            at: Instant::now(),
            wall: SystemTime::now(),
            status,
        });
    }
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    match retry_after {
        Some(secs) => (status, [("retry-after", secs.to_string())], "slow down").into_response(),
        None => (status, "downstream says so").into_response(),
    }
}
