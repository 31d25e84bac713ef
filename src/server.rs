//! The HTTP edge: the router, URL verification (`GET`), push intake (`POST`), and the answer for every failure.

use crate::config::Config;
use crate::envelope::Envelope;
use crate::secret::Secret;
use crate::sinks;
use crate::spool::{Appended, NewEvent, Spool, SpoolError, SpoolOptions};
use crate::wechat::push::{Push, PushError};
use crate::wechat::signature::{self, SignatureError};
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long sinks may take to finish the batch in hand at shutdown.
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
    #[error("server failed: {0}")]
    Serve(std::io::Error),
}

/// A bound, ready service: spool open, sink workers running, listener bound.
pub struct App {
    listener: TcpListener,
    router: Router,
    spool: Arc<Spool>,
    workers: Vec<JoinHandle<()>>,
    stop: watch::Sender<bool>,
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
        let names: Vec<String> = config.sinks.iter().map(|s| s.name().to_owned()).collect();
        let options = SpoolOptions::with_retention(config.retention);
        let spool = Arc::new(Spool::open(&config.data_dir, &names, options)?);
        let (stop, stopped) = watch::channel(false);
        let workers = config
            .sinks
            .iter()
            .map(|c| sinks::spawn(c, spool.clone(), stopped.clone()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(StartError::Sink)?;
        Ok(App {
            listener,
            router: router(&config, spool.clone()),
            spool,
            workers,
            stop,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` completes, then finishes in-flight requests, lets sinks
    /// finish the batch in hand, and closes the spool.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartError> {
        if let Ok(addr) = self.listener.local_addr() {
            tracing::info!(%addr, "listening on {addr}");
        }
        let served = axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown)
            .await;
        let _ = self.stop.send(true);
        let deadline = tokio::time::Instant::now() + SINK_DRAIN;
        for worker in self.workers {
            let _ = tokio::time::timeout_at(deadline, worker).await;
        }
        self.spool.close().await;
        tracing::info!("stopped");
        served.map_err(StartError::Serve)
    }
}

/// One account's intake: what a request to its path needs.
struct Intake {
    account: String,
    token: Secret,
    sinks: Arc<[String]>,
    tolerance: u64,
    spool: Arc<Spool>,
}

/// The router: every account at its path, `GET` for URL verification and `POST` for pushes.
pub fn router(config: &Config, spool: Arc<Spool>) -> Router {
    let mut router = Router::new();
    for account in &config.accounts {
        let intake = Arc::new(Intake {
            account: account.name.clone(),
            token: Secret::new(account.token()),
            sinks: account
                .sink_names(&config.sinks)
                .into_iter()
                .map(str::to_owned)
                .collect(),
            tolerance: config.timestamp_tolerance_secs,
            spool: spool.clone(),
        });
        router = router.route(
            &account.path,
            get(verify_url).post(receive).with_state(intake),
        );
    }
    router
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                "no WeChat account is served at this path\n",
            )
        })
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
}

#[derive(Debug, Deserialize)]
struct SignedQuery {
    signature: Option<String>,
    timestamp: Option<String>,
    nonce: Option<String>,
    echostr: Option<String>,
}

impl Intake {
    /// Checks the signature and the timestamp of a request.
    fn check(&self, q: &SignedQuery) -> Result<(), AppError> {
        let signature = q
            .signature
            .as_deref()
            .ok_or(SignatureError::Missing("signature"))?;
        let timestamp = q
            .timestamp
            .as_deref()
            .ok_or(SignatureError::Missing("timestamp"))?;
        let nonce = q.nonce.as_deref().ok_or(SignatureError::Missing("nonce"))?;
        signature::verify(self.token.expose(), timestamp, nonce, signature)?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        signature::check_fresh(timestamp, now, self.tolerance)?;
        Ok(())
    }
}

async fn verify_url(
    State(intake): State<Arc<Intake>>,
    query: Result<Query<SignedQuery>, QueryRejection>,
) -> Result<Response, AppError> {
    let Query(q) = query.map_err(|e| AppError::BadRequest(e.body_text()))?;
    let echostr = q
        .echostr
        .clone()
        .ok_or(SignatureError::Missing("echostr"))?;
    intake.check(&q).inspect_err(|e| e.log(&intake.account))?;
    tracing::info!(account = %intake.account, "URL verification answered");
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        echostr,
    )
        .into_response())
}

async fn receive(
    State(intake): State<Arc<Intake>>,
    query: Result<Query<SignedQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, AppError> {
    let result = accept(&intake, query, body).await;
    if let Err(e) = &result {
        e.log(&intake.account);
    }
    result
}

async fn accept(
    intake: &Intake,
    query: Result<Query<SignedQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, AppError> {
    let Query(q) = query.map_err(|e| AppError::BadRequest(e.body_text()))?;
    intake.check(&q)?;
    let body = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => AppError::TooLarge,
        _ => AppError::BadRequest(e.body_text()),
    })?;
    let push = Push::parse(&body)?;
    let envelope = Envelope::new(&intake.account, push, SystemTime::now());
    let event = NewEvent {
        account: intake.account.clone(),
        id: envelope.id.clone(),
        received_at: envelope.received_at.clone(),
        body: envelope.to_json(),
        sinks: intake.sinks.clone(),
    };
    match intake.spool.append(event).await? {
        Appended::Stored(seq) => {
            tracing::info!(account = %intake.account, id = %envelope.id, seq, "push accepted")
        }
        Appended::Duplicate => {
            tracing::info!(account = %intake.account, id = %envelope.id, "retry of a stored push accepted")
        }
    }
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "success",
    )
        .into_response())
}

/// Every way a request can fail, and the answer it gets.
#[derive(Debug, thiserror::Error)]
enum AppError {
    #[error("{0}")]
    Unauthorized(#[from] SignatureError),
    #[error("{0}")]
    BadRequest(String),
    #[error("body is larger than the configured max_body_bytes")]
    TooLarge,
    #[error("{0}")]
    Unavailable(#[from] SpoolError),
}

impl From<PushError> for AppError {
    fn from(e: PushError) -> Self {
        AppError::BadRequest(e.to_string())
    }
}

impl AppError {
    fn log(&self, account: &str) {
        match self {
            AppError::Unavailable(e) => {
                tracing::error!(account, error = %e, "push not stored; answered 503 so WeChat retries")
            }
            other => tracing::warn!(account, reason = %other, "request refused"),
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (status, text) = match &self {
            AppError::Unauthorized(e) => (StatusCode::UNAUTHORIZED, e.to_string()),
            AppError::BadRequest(reason) => (StatusCode::BAD_REQUEST, reason.clone()),
            AppError::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, self.to_string()),
            AppError::Unavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "push could not be stored; retry later".to_owned(),
            ),
        };
        (status, format!("{text}\n")).into_response()
    }
}
