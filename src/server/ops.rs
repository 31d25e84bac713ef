//! Operations endpoints: `/healthz` (the process answers), `/readyz` (spool writable, not draining) and `/metrics` (Prometheus text).

use crate::spool::{Spool, unix_ms};
use crate::telemetry;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Paths the operations endpoints take on the main listener.
pub const PATHS: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

pub struct Ops {
    pub spool: Arc<Spool>,
    pub sinks: Vec<String>,
    /// Set when shutdown begins.
    pub draining: Arc<AtomicBool>,
}

pub fn router(ops: Arc<Ops>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(ops)
}

async fn readyz(State(ops): State<Arc<Ops>>) -> (StatusCode, &'static str) {
    if ops.draining.load(Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n");
    }
    if !ops.spool.stats().writable.load(Ordering::Relaxed) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "the spool's last write failed\n",
        );
    }
    // A round trip through the writer proves it is alive and the database answers.
    match ops.spool.backlog().await {
        Ok(_) => (StatusCode::OK, "ready\n"),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the spool does not answer\n",
        ),
    }
}

async fn metrics(State(ops): State<Arc<Ops>>) -> Response {
    if let Ok(backlog) = ops.spool.backlog().await {
        let now = unix_ms();
        for sink in &ops.sinks {
            let b = backlog.iter().find(|b| &b.sink == sink);
            let age = b
                .and_then(|b| b.oldest_queued_at)
                .map(|at| Duration::from_millis(u64::try_from(now - at).unwrap_or(0)))
                .unwrap_or_default();
            telemetry::backlog(
                sink,
                b.map_or(0, |b| b.pending),
                age,
                b.map_or(0, |b| b.dead),
            );
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        telemetry::handle().render(),
    )
        .into_response()
}
