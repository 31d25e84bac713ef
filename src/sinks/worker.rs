//! The local sinks' worker: takes pending events from the spool in batches, delivers them in order, retries a failed batch until it succeeds.

use super::Sink;
use crate::spool::Spool;
use backon::{BackoffBuilder, ExponentialBuilder};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Events taken from the spool per delivery.
pub const BATCH: usize = 256;
/// How often an idle worker looks at the spool even without a wake-up.
const IDLE_POLL: Duration = Duration::from_secs(2);

/// Starts the worker for sink `name`; it stops when `stop` turns true.
pub fn spawn(
    name: String,
    sink: Sink,
    spool: Arc<Spool>,
    stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run(name, sink, spool, stop))
}

fn backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(500))
        .with_max_delay(Duration::from_secs(60))
        .with_jitter()
        .without_max_times()
        .build()
}

async fn run(name: String, sink: Sink, spool: Arc<Spool>, mut stop: watch::Receiver<bool>) {
    let Some(wake) = spool.notifier(&name) else {
        tracing::error!(sink = %name, "sink is not registered with the spool");
        return;
    };
    let mut delays = backoff();
    while !*stop.borrow() {
        let batch = match spool.pending(&name, BATCH).await {
            Ok(batch) => batch,
            Err(e) => {
                tracing::warn!(sink = %name, error = %e, "cannot read pending events");
                pause(&mut stop, delays.next()).await;
                continue;
            }
        };
        if batch.is_empty() {
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(IDLE_POLL) => {}
                _ = stop.changed() => {}
            }
            continue;
        }
        let seqs: Vec<i64> = batch.iter().map(|p| p.seq).collect();
        let count = u64::try_from(batch.len()).unwrap_or(0);
        match sink.deliver(&batch).await {
            Ok(()) => {
                crate::telemetry::delivery(&name, "delivered", count);
                if let Err(e) = spool.delivered(&name, seqs).await {
                    sink.unrecorded();
                    tracing::warn!(sink = %name, error = %e, "delivered, but could not record it; events will be offered again (a file sink skips what it already holds)");
                    pause(&mut stop, delays.next()).await;
                } else {
                    delays = backoff();
                }
            }
            Err(e) => {
                crate::telemetry::delivery(&name, "retry", count);
                tracing::warn!(sink = %name, events = batch.len(), error = %e, "delivery failed; will retry");
                let _ = spool.failed(&name, seqs, e.to_string(), 0).await;
                pause(&mut stop, delays.next()).await;
            }
        }
    }
}

async fn pause(stop: &mut watch::Receiver<bool>, delay: Option<Duration>) {
    let delay = delay.unwrap_or(Duration::from_secs(60));
    tokio::select! {
        _ = tokio::time::sleep(delay) => {}
        _ = stop.changed() => {}
    }
}
