//! Metrics in Prometheus text format (through the `metrics` facade) and the names and buckets of every series wxhook records.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use std::time::Duration;

/// Requests, by `account` and `outcome` (`accepted`, `duplicate`, or the refusal).
pub const PUSHES: &str = "wxhook_pushes_total";
/// Time from request to answer, by `account`.
pub const REQUEST_SECONDS: &str = "wxhook_request_duration_seconds";
/// Delivery attempts, by `sink` and `outcome` (`delivered`, `retry`, `dead`).
pub const DELIVERIES: &str = "wxhook_deliveries_total";
/// Events waiting, by `sink`.
pub const SPOOL_DEPTH: &str = "wxhook_spool_depth";
/// Age in seconds of the oldest event waiting, by `sink`.
pub const OLDEST_PENDING: &str = "wxhook_spool_oldest_pending_seconds";
/// Dead letters kept, by `sink`.
pub const DEAD_LETTERS: &str = "wxhook_dead_letters";
/// Spool transactions and their duration (commit and fsync included).
pub const COMMIT_SECONDS: &str = "wxhook_spool_commit_duration_seconds";
/// Requests folded into one spool transaction.
pub const GROUP_SIZE: &str = "wxhook_spool_group_size";
/// WeChat API calls, by `account`, `api` and `errcode` (`0` for success, `-2` for no answer).
pub const API_REQUESTS: &str = "wxhook_api_requests_total";
/// Access token fetches, by `account`, `kind` (`stable_token`, `force_refresh`,
/// `access_token_url`) and `errcode`.
pub const TOKEN_FETCHES: &str = "wxhook_api_token_fetches_total";
/// Publish job polls, by `account` and `outcome` (`final`, `publishing`, `error`).
pub const JOB_POLLS: &str = "wxhook_publish_polls_total";
/// Publish jobs ended without a final status, by `account` and `reason` (`max_age`:
/// none within `reconcile_max_age`; `revoked`: the account left the platform).
pub const JOBS_ABANDONED: &str = "wxhook_publish_jobs_abandoned_total";
/// Whether a `nats` sink is connected (1) or not (0), by `sink`.
pub const NATS_CONNECTED: &str = "wxhook_nats_connected";
/// WeChat callback ranges in force, by `account`.
pub const CALLBACK_RANGES: &str = "wxhook_callback_ip_ranges";

const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.002, 0.004, 0.006, 0.008, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
];
const GROUP_BUCKETS: [f64; 10] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// How often histogram samples are folded into their buckets without a scrape.
const UPKEEP_EVERY: Duration = Duration::from_secs(1);

/// The process-wide recorder (installed on first use) and its renderer.
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(REQUEST_SECONDS.into()), &LATENCY_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full(COMMIT_SECONDS.into()), &LATENCY_BUCKETS)
            })
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full(GROUP_SIZE.into()), &GROUP_BUCKETS)
            });
        let recorder = match builder {
            Ok(b) => b.build_recorder(),
            Err(_) => PrometheusBuilder::new().build_recorder(),
        };
        let handle = recorder.handle();
        // Another recorder may already be installed (a library user's): then ours renders nothing.
        let _ = metrics::set_global_recorder(recorder);
        describe();
        // Histogram samples wait in the recorder until they are folded into buckets: a
        // scrape does it, and so does this upkeep, so memory stays flat when no one scrapes.
        let upkeep = handle.clone();
        let _ = std::thread::Builder::new()
            .name("wxhook-metrics".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(UPKEEP_EVERY);
                    upkeep.run_upkeep();
                }
            });
        handle
    })
}

fn describe() {
    metrics::describe_counter!(PUSHES, "Requests to account URLs, by account and outcome");
    metrics::describe_histogram!(
        REQUEST_SECONDS,
        metrics::Unit::Seconds,
        "Time from request to answer"
    );
    metrics::describe_counter!(DELIVERIES, "Delivery attempts, by sink and outcome");
    metrics::describe_gauge!(SPOOL_DEPTH, "Events waiting for each sink");
    metrics::describe_gauge!(
        OLDEST_PENDING,
        metrics::Unit::Seconds,
        "Age of the oldest event waiting for each sink"
    );
    metrics::describe_gauge!(DEAD_LETTERS, "Dead letters kept for each sink");
    metrics::describe_histogram!(
        COMMIT_SECONDS,
        metrics::Unit::Seconds,
        "Spool transaction time, fsync included"
    );
    metrics::describe_histogram!(GROUP_SIZE, "Requests folded into one spool transaction");
    metrics::describe_counter!(
        API_REQUESTS,
        "WeChat API calls, by account, api and errcode"
    );
    metrics::describe_counter!(
        TOKEN_FETCHES,
        "Access token fetches, by account, kind and errcode"
    );
    metrics::describe_counter!(
        JOB_POLLS,
        "freepublish/get polls of tracked jobs, by outcome"
    );
    metrics::describe_counter!(
        JOBS_ABANDONED,
        "Publish jobs ended without a final status, by reason (max_age, revoked)"
    );
    metrics::describe_gauge!(NATS_CONNECTED, "1 while a nats sink is connected, else 0");
    metrics::describe_gauge!(
        CALLBACK_RANGES,
        "WeChat callback ranges from getcallbackip in force, by account"
    );
}

/// One account's request series, registered once: the common outcomes and the latency
/// histogram are handles, so counting a request needs no lookup.
pub struct AccountMetrics {
    account: String,
    accepted: metrics::Counter,
    duplicate: metrics::Counter,
    latency: metrics::Histogram,
}

impl AccountMetrics {
    pub fn new(account: &str) -> AccountMetrics {
        let counter = |outcome: &'static str| metrics::counter!(PUSHES, "account" => account.to_owned(), "outcome" => outcome);
        AccountMetrics {
            account: account.to_owned(),
            accepted: counter("accepted"),
            duplicate: counter("duplicate"),
            latency: metrics::histogram!(REQUEST_SECONDS, "account" => account.to_owned()),
        }
    }

    /// Counts a request's outcome and records its duration.
    pub fn request(&self, outcome: &'static str, took: Duration) {
        match outcome {
            "accepted" => self.accepted.increment(1),
            "duplicate" => self.duplicate.increment(1),
            other => {
                metrics::counter!(PUSHES, "account" => self.account.clone(), "outcome" => other)
                    .increment(1)
            }
        }
        self.latency.record(took.as_secs_f64());
    }
}

/// Counts one delivery attempt's outcome.
pub fn delivery(sink: &str, outcome: &'static str, events: u64) {
    metrics::counter!(DELIVERIES, "sink" => sink.to_owned(), "outcome" => outcome)
        .increment(events);
}

/// Records one spool transaction.
pub fn commit(took: Duration, group: usize) {
    metrics::histogram!(COMMIT_SECONDS).record(took.as_secs_f64());
    metrics::histogram!(GROUP_SIZE).record(group as f64);
}

/// Sets the backlog gauges of one sink.
pub fn backlog(sink: &str, pending: u64, oldest_age: Duration, dead: u64) {
    metrics::gauge!(SPOOL_DEPTH, "sink" => sink.to_owned()).set(pending as f64);
    metrics::gauge!(OLDEST_PENDING, "sink" => sink.to_owned()).set(oldest_age.as_secs_f64());
    metrics::gauge!(DEAD_LETTERS, "sink" => sink.to_owned()).set(dead as f64);
}
