//! The HTTP edge: the router that serves every account at its path, and the [`App`] that runs it with the spool and the sinks.
//!
//! [`intake`] handles one request from source check to durable store, [`error`] maps every
//! failure to its answer, [`source`] decides where a request comes from, [`seen`] refuses
//! replays, and [`serve`] runs the connections.

pub mod api;
pub mod error;
pub mod intake;
pub mod ops;
pub mod seen;
pub mod seen_nats;
mod serve;
pub mod source;

use crate::config::{Config, Mode, ReplayGuardKind};
use crate::publish::callback_ips::CallbackRanges;
use crate::publish::reconcile::Reconciler;
use crate::publish::service::Publisher;
use crate::secret::Secret;
use crate::sinks;
use crate::spool::jobs::JobsDb;
use crate::spool::{Delivery, Spool, SpoolError, SpoolOptions};
use crate::wechat::crypto::Cipher;
use crate::wechat::inbound::Verifier;
use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use intake::{Intake, Shared};
use seen::{ReplayGuard, SeenSignatures};
use seen_nats::SharedSeen;
use source::{AllowList, TrustedProxies};
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

/// How long sinks may take to finish the work in hand at shutdown.
const SINK_DRAIN: Duration = Duration::from_secs(10);

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("{0}")]
    Sink(String),
    #[error("account `{0}`: {1}")]
    Account(String, String),
    #[error("publishing: {0}")]
    Publishing(String),
}

/// A bound, ready service: spool open, sink workers running, listener bound.
pub struct App {
    listener: TcpListener,
    router: Router,
    spool: Arc<Spool>,
    workers: Vec<JoinHandle<()>>,
    stop: watch::Sender<bool>,
    allow_lists: HashMap<String, Arc<AllowList>>,
    limits: serve::ConnLimits,
    admin: Option<(TcpListener, Router)>,
    draining: Arc<AtomicBool>,
}

impl App {
    /// Opens the spool, starts the sink workers and binds `config.listen`.
    pub async fn build(config: Config) -> Result<App, StartError> {
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|e| StartError::Bind(config.listen, e))?;
        App::with_listener(config, listener)
    }

    /// Like [`App::build`] on a listener the caller bound (tests bind `127.0.0.1:0`).
    pub fn with_listener(config: Config, listener: TcpListener) -> Result<App, StartError> {
        // The recorder must exist before the first request is counted.
        crate::telemetry::handle();
        let names: Vec<String> = config.sinks.iter().map(|s| s.name().to_owned()).collect();
        let mut options = SpoolOptions::with_retention(config.retention);
        if config.timestamp_tolerance_secs > 0 {
            options.seen_ttl = Duration::from_secs(config.timestamp_tolerance_secs);
        }
        let deliveries: Vec<(String, Delivery)> = config
            .sinks
            .iter()
            .map(|s| (s.name().to_owned(), s.delivery()))
            .collect();
        options.reconcile_after = config.reconcile_after;
        let spool = Arc::new(Spool::open(&config.data_dir, &deliveries, options)?);
        let links = sinks::nats_links(&config.sinks);
        let (mut router, allow_lists) = router(&config, spool.clone(), &links)?;
        let draining = Arc::new(AtomicBool::new(false));
        let mut ops = ops::router(Arc::new(ops::Ops {
            spool: spool.clone(),
            sinks: names.clone(),
            draining: draining.clone(),
        }));
        let (stop, stopped) = watch::channel(false);
        let mut background = Vec::new();
        if config.accounts.iter().any(|a| a.has_api()) {
            let db = Arc::new(JobsDb::open(&config.data_dir)?);
            let publisher = Arc::new(
                Publisher::with_db(&config, db.clone())
                    .map_err(|e| StartError::Publishing(e.to_string()))?,
            );
            let reconciler =
                Reconciler::new(&config, publisher.api.clone(), db.clone(), spool.clone());
            background.extend(Arc::new(reconciler).spawn(stopped.clone()));
            for account in publisher.api.platforms() {
                let codes = crate::publish::platform::Authorizations {
                    api: publisher.api.clone(),
                    db: db.clone(),
                    account: account.clone(),
                };
                background.push(tokio::spawn(codes.run(stopped.clone())));
            }
            for account in config.accounts.iter().filter(|a| a.allows_wechat_ranges()) {
                let Some(allow) = allow_lists.get(&account.name) else {
                    continue;
                };
                let ranges = CallbackRanges {
                    api: publisher.api.clone(),
                    db: db.clone(),
                    account: account.name.clone(),
                    allow: allow.clone(),
                    fixed: account.allowed_nets().unwrap_or_default(),
                    every: config.callback_ip_refresh,
                };
                db.with(|conn| ranges.load_stored(conn))?;
                background.push(tokio::spawn(ranges.run(stopped.clone())));
            }
            if !config.api_tokens.is_empty() {
                ops = ops.merge(api::router(Arc::new(api::PublishApi {
                    publisher,
                    tokens: config.api_tokens.clone(),
                })));
            }
        }
        let admin = match config.admin_listen {
            Some(addr) => {
                let bind = std::net::TcpListener::bind(addr)
                    .and_then(|l| l.set_nonblocking(true).map(|_| l))
                    .and_then(TcpListener::from_std)
                    .map_err(|e| StartError::Bind(addr, e))?;
                Some((bind, ops))
            }
            None => {
                router = router.merge(ops);
                None
            }
        };
        let workers = config
            .sinks
            .iter()
            .map(|c| sinks::spawn(c, spool.clone(), stopped.clone(), &links))
            .collect::<Result<Vec<_>, _>>()
            .map_err(StartError::Sink)?;
        let mut workers = workers;
        workers.extend(background);
        Ok(App {
            listener,
            router,
            spool,
            workers,
            stop,
            allow_lists,
            limits: serve::ConnLimits {
                max_connections: config.max_connections,
                header_timeout: config.header_timeout,
                drain: config.request_timeout,
            },
            admin,
            draining,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The address of the operations endpoints when they have their own listener.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    /// The allow-list of an account, to replace while the service runs.
    pub fn allow_list(&self, account: &str) -> Option<Arc<AllowList>> {
        self.allow_lists.get(account).cloned()
    }

    /// Serves until `shutdown` completes, then finishes in-flight requests, lets sinks
    /// finish the work in hand, and closes the spool.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartError> {
        if let Ok(addr) = self.listener.local_addr() {
            tracing::info!(%addr, "listening on {addr}");
        }
        let (stopping, mut stopped) = watch::channel(false);
        let draining = self.draining.clone();
        let shutdown = async move {
            shutdown.await;
            draining.store(true, Ordering::Relaxed);
            let _ = stopping.send(true);
        };
        let admin = self.admin.map(|(listener, router)| {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(%addr, "operations endpoints on {addr}");
            }
            tokio::spawn(serve::serve(listener, router, self.limits, async move {
                let _ = stopped.wait_for(|s| *s).await;
            }))
        });
        serve::serve(self.listener, self.router, self.limits, shutdown).await;
        if let Some(admin) = admin {
            let _ = admin.await;
        }
        let _ = self.stop.send(true);
        let deadline = tokio::time::Instant::now() + SINK_DRAIN;
        for worker in self.workers {
            let _ = tokio::time::timeout_at(deadline, worker).await;
        }
        self.spool.close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// The replay guard `config` asks for; a shared one uses the connection of the sink it
/// names in `links`.
fn replay_guard(config: &Config, spool: &Spool, links: &crate::nats::Links) -> ReplayGuard {
    let shared = config.replay_guard_nats.as_ref();
    if config.replay_guard == ReplayGuardKind::Local && shared.is_some() {
        tracing::warn!(
            "[replay_guard_nats] is set but replay_guard is \"local\": signed queries are remembered by this process only"
        );
    }
    if let Some(shared) = shared.filter(|_| config.replay_guard == ReplayGuardKind::Nats) {
        let link = shared
            .sink
            .as_ref()
            .and_then(|name| links.get(name).cloned())
            .or_else(|| {
                shared
                    .connection()
                    .map(|c| crate::nats::Link::new("replay_guard", c))
            });
        if let Some(link) = link {
            let tolerance = config.timestamp_tolerance_secs;
            return ReplayGuard::Shared(Box::new(SharedSeen::new(link, shared, tolerance)));
        }
    }
    let seen = SeenSignatures::new(config.replay_cache_entries);
    let oldest = match config.timestamp_tolerance_secs {
        0 => 0,
        t => (crate::spool::unix_ms().max(0).unsigned_abs() / 1000).saturating_sub(t),
    };
    seen.preload(spool.take_seen(), oldest);
    ReplayGuard::Local(seen)
}

/// The router: every account at its path, `GET` for URL verification and `POST` for
/// pushes; and each account's allow-list.
pub fn router(
    config: &Config,
    spool: Arc<Spool>,
    links: &crate::nats::Links,
) -> Result<(Router, HashMap<String, Arc<AllowList>>), StartError> {
    let seen = config
        .reject_replayed_signatures
        .then(|| replay_guard(config, &spool, links));
    let shared = Arc::new(Shared {
        spool,
        seen,
        proxies: TrustedProxies::new(config.trusted_proxies.clone()),
        tolerance: config.timestamp_tolerance_secs,
        max_body: config.max_body_bytes,
        request_timeout: config.request_timeout,
        in_flight: Semaphore::new(config.max_concurrent_requests),
    });
    let mut router = Router::new();
    let mut allow_lists = HashMap::new();
    for account in &config.accounts {
        let cipher = match (&account.encoding_aes_key, account.mode()) {
            (Some(key), Mode::Secure | Mode::Compatible) => Some(
                Cipher::new(key.expose(), account.app_id.as_deref().unwrap_or(""))
                    .map_err(|e| StartError::Account(account.name.clone(), e.to_string()))?,
            ),
            _ => None,
        };
        let allow = Arc::new(AllowList::new(account.allowed_nets()));
        allow_lists.insert(account.name.clone(), allow.clone());
        let intake = |authorization: bool| {
            Arc::new(Intake {
                metrics: crate::telemetry::AccountMetrics::new(&account.name),
                account: account.name.clone(),
                verifier: Verifier {
                    token: Secret::new(account.token()),
                    mode: account.mode(),
                    cipher: cipher.clone(),
                    tolerance: config.timestamp_tolerance_secs,
                },
                platform: account.is_platform(),
                authorization,
                app_id: account.app_id.clone(),
                sinks: account
                    .sink_names(&config.sinks)
                    .into_iter()
                    .map(str::to_owned)
                    .collect(),
                allow: allow.clone(),
                shared: shared.clone(),
            })
        };
        let routes = get(intake::verify_url).post(intake::receive);
        router = router.route(&account.path, routes.with_state(intake(false)));
        if let Some(path) = account.authorization_path() {
            let routes = get(intake::verify_url).post(intake::receive);
            router = router.route(&path, routes.with_state(intake(true)));
        }
    }
    let router = router
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                "no WeChat account is served at this path\n",
            )
        });
    Ok((router, allow_lists))
}
