//! The worker of the sinks that take each event on its own schedule (`http`, `nats`): up to `concurrency` deliveries in flight, each failure rescheduled in the spool, dead letters when the policy gives up.

use super::http::Outcome;
use super::retry::{Decision, RetryPolicy};
use crate::spool::{Pending, Spool, unix_ms};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// How often an idle worker looks at the spool even without a wake-up (picks up
/// dead letters re-queued from the command line).
const IDLE_POLL: Duration = Duration::from_secs(2);

/// A sink delivered one event at a time, many at once.
pub trait Relay: Send + Sync + 'static {
    /// Deliveries in flight at most.
    fn concurrency(&self) -> usize;
    /// When to try again, and when to give up.
    fn policy(&self) -> &RetryPolicy;
    /// One attempt at one event.
    fn send(&self, event: &Pending) -> impl std::future::Future<Output = Outcome> + Send;
    /// Checks made once at start, beside the first deliveries (a `nats` sink's stream).
    fn start(&self) -> impl std::future::Future<Output = ()> + Send {
        async {}
    }
}

pub async fn run<S: Relay>(
    name: String,
    sink: S,
    spool: Arc<Spool>,
    mut stop: watch::Receiver<bool>,
) {
    let Some(wake) = spool.notifier(&name) else {
        tracing::error!(sink = %name, "sink is not registered with the spool");
        return;
    };
    let sink = Arc::new(sink);
    let starting = sink.clone();
    tokio::spawn(async move { starting.start().await });
    let mut inflight: JoinSet<(Pending, Outcome)> = JoinSet::new();
    let mut task_seq: HashMap<tokio::task::Id, i64> = HashMap::new();
    let mut busy: HashSet<i64> = HashSet::new();
    let mut paused_until: Option<Instant> = None;
    let mut next_at: Option<i64> = None;
    while !*stop.borrow() {
        let paused = paused_until.is_some_and(|t| t > Instant::now());
        // Refilled when half the window is free, so that each read of what is due (which
        // returns the events in flight too) starts many deliveries, not one.
        if !paused && inflight.len() <= sink.concurrency() / 2 {
            match spool.due(&name, sink.concurrency() + busy.len()).await {
                Ok(due) => {
                    next_at = due.next_at;
                    for event in due.events {
                        if inflight.len() >= sink.concurrency() {
                            break;
                        }
                        if busy.insert(event.seq) {
                            let seq = event.seq;
                            let sink = sink.clone();
                            let handle = inflight.spawn(async move {
                                let outcome = sink.send(&event).await;
                                (event, outcome)
                            });
                            task_seq.insert(handle.id(), seq);
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(sink = %name, error = %e, "cannot read due events");
                    next_at = Some(unix_ms() + 1000);
                }
            }
        }
        let mut wait = IDLE_POLL;
        if let Some(at) = next_at {
            wait = wait.min(Duration::from_millis(
                u64::try_from(at - unix_ms()).unwrap_or(0),
            ));
        }
        if let Some(until) = paused_until {
            wait = wait.min(until.saturating_duration_since(Instant::now()));
        }
        tokio::select! {
            Some(joined) = inflight.join_next_with_id(), if !inflight.is_empty() => {
                // This outcome and every other one already finished: recorded together,
                // the deliveries in one spool transaction.
                let mut finished = Vec::new();
                let mut next = Some(joined);
                while let Some(joined) = next {
                    match joined {
                        Ok((id, (event, outcome))) => {
                            task_seq.remove(&id);
                            busy.remove(&event.seq);
                            finished.push((event, outcome));
                        }
                        Err(e) => {
                            // A delivery task ended abnormally: its event stays pending and is tried again.
                            if let Some(seq) = task_seq.remove(&e.id()) {
                                busy.remove(&seq);
                            }
                            tracing::error!(sink = %name, error = %e, "delivery task failed");
                        }
                    }
                    next = inflight.try_join_next_with_id();
                }
                if let Some(pause) = record_all(&name, &*sink, &spool, finished).await {
                    paused_until = Some(Instant::now() + pause);
                }
            }
            _ = wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => {}
        }
    }
    // Stopping: let the requests in flight finish and record what they came to.
    let mut finished = Vec::new();
    while let Some(joined) = inflight.join_next().await {
        if let Ok(done) = joined {
            finished.push(done);
        }
    }
    record_all(&name, &*sink, &spool, finished).await;
}

/// Stores the outcomes of finished attempts: the deliveries in one spool transaction,
/// the rest one by one; returns the longest pause the downstream asked for.
async fn record_all<S: Relay>(
    name: &str,
    sink: &S,
    spool: &Spool,
    finished: Vec<(Pending, Outcome)>,
) -> Option<Duration> {
    let mut delivered = Vec::new();
    let mut pause: Option<Duration> = None;
    for (event, outcome) in finished {
        if outcome == Outcome::Delivered {
            tracing::debug!(sink = %name, id = %event.id, attempts = event.attempts.saturating_add(1), "delivered");
            delivered.push(event.seq);
        } else if let Some(p) = record(name, sink, spool, &event, outcome).await {
            pause = Some(pause.map_or(p, |q| q.max(p)));
        }
    }
    if !delivered.is_empty() {
        crate::telemetry::delivery(name, "delivered", delivered.len() as u64);
        let n = delivered.len();
        if let Err(e) = spool.delivered(name, delivered).await {
            tracing::warn!(sink = %name, events = n, error = %e, "could not record deliveries; those events will be sent again");
        }
    }
    pause
}

/// Stores the outcome of one attempt; returns how long the whole sink should pause
/// when the downstream asked for it (`Retry-After`).
async fn record<S: Relay>(
    name: &str,
    sink: &S,
    spool: &Spool,
    event: &Pending,
    outcome: Outcome,
) -> Option<Duration> {
    let attempts = event.attempts.saturating_add(1);
    let (stored, pause) = match outcome {
        Outcome::Delivered => {
            crate::telemetry::delivery(name, "delivered", 1);
            tracing::debug!(sink = %name, id = %event.id, attempts, "delivered");
            (spool.delivered(name, vec![event.seq]).await, None)
        }
        Outcome::Gone(error) => {
            crate::telemetry::delivery(name, "dead", 1);
            tracing::warn!(sink = %name, id = %event.id, %error, "the downstream will never take it; kept as a dead letter");
            (spool.dead(name, vec![event.seq], error).await, None)
        }
        Outcome::Retry { error, after } => {
            match sink
                .policy()
                .decide(attempts, event.queued_at, unix_ms(), after)
            {
                Decision::RetryAt(at) => {
                    crate::telemetry::delivery(name, "retry", 1);
                    tracing::warn!(
                        sink = %name, id = %event.id, attempts, %error,
                        retry_in_ms = at - unix_ms(), "delivery failed; will retry"
                    );
                    (spool.failed(name, vec![event.seq], error, at).await, after)
                }
                Decision::GiveUp(why) => {
                    crate::telemetry::delivery(name, "dead", 1);
                    tracing::error!(sink = %name, id = %event.id, attempts, %error, "{why}; kept as a dead letter");
                    (
                        spool
                            .dead(name, vec![event.seq], format!("{error} ({why})"))
                            .await,
                        after,
                    )
                }
            }
        }
    };
    if let Err(e) = stored {
        tracing::warn!(sink = %name, id = %event.id, error = %e, "could not record a delivery outcome; the event will be tried again");
    }
    pause
}
