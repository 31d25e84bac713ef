//! The publishing HTTP API for backends (`/api/publish`), behind bearer tokens compared in constant time; off unless `api_tokens` is set.

use crate::publish::error::{ApiError, Origin};
use crate::publish::service::Publisher;
use crate::secret::Secret;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// Paths the API takes (on `admin_listen`, else on `listen`).
pub const PREFIX: &str = "/api/publish";

pub struct PublishApi {
    pub publisher: Arc<Publisher>,
    pub tokens: Vec<Secret>,
}

pub fn router(api: Arc<PublishApi>) -> Router {
    Router::new()
        .route(PREFIX, post(submit))
        .route("/api/publish/track", post(track))
        .route("/api/publish/{publish_id}", get(job))
        .with_state(api)
}

/// An answer with a JSON body.
fn answer(status: StatusCode, body: serde_json::Value) -> Response {
    (status, Json(body)).into_response()
}

fn bad_request(msg: impl Into<String>) -> Response {
    answer(StatusCode::BAD_REQUEST, json!({ "error": msg.into() }))
}

/// WeChat's refusals and failures to reach it: 502; problems with the request: 400; a
/// spool that cannot be read or written: 503.
fn api_error(e: ApiError) -> Response {
    let status = match e.origin {
        Origin::WeChat => StatusCode::BAD_GATEWAY,
        Origin::Request => StatusCode::BAD_REQUEST,
        Origin::Storage => StatusCode::SERVICE_UNAVAILABLE,
    };
    answer(
        status,
        json!({ "errcode": e.errcode, "errmsg": e.errmsg, "hint": e.hint }),
    )
}

impl PublishApi {
    /// The bearer token matches one configured, each compared in constant time.
    fn authorized(&self, headers: &HeaderMap) -> bool {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        let mut ok = subtle::Choice::from(0);
        for token in &self.tokens {
            ok |= given.as_bytes().ct_eq(token.expose().as_bytes());
        }
        bool::from(ok) && !given.is_empty()
    }
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        Json(json!({ "error": "missing or wrong bearer token (Authorization: Bearer <one of api_tokens>)" })),
    )
        .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubmitRequest {
    account: Option<String>,
    /// For a third-party platform: the authorized account.
    app_id: Option<String>,
    media_id: String,
}

/// The request's JSON body once its token is checked, or the answer refusing it.
fn accept<T>(
    api: &PublishApi,
    headers: &HeaderMap,
    body: Result<Json<T>, JsonRejection>,
) -> Result<T, Box<Response>> {
    if !api.authorized(headers) {
        return Err(Box::new(unauthorized()));
    }
    body.map(|Json(b)| b)
        .map_err(|e| Box::new(bad_request(e.body_text())))
}

/// `200` with the result, or the error's answer.
fn respond<T: serde::Serialize>(result: Result<T, ApiError>) -> Response {
    match result {
        Ok(value) => answer(StatusCode::OK, json!(value)),
        Err(e) => api_error(e),
    }
}

async fn submit(
    State(api): State<Arc<PublishApi>>,
    headers: HeaderMap,
    body: Result<Json<SubmitRequest>, JsonRejection>,
) -> Response {
    match accept(&api, &headers, body) {
        Ok(req) => respond(
            api.publisher
                .submit(req.account.as_deref(), req.app_id.as_deref(), &req.media_id)
                .await,
        ),
        Err(refused) => *refused,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TrackRequest {
    account: Option<String>,
    app_id: Option<String>,
    #[serde(deserialize_with = "crate::publish::types::id_text")]
    publish_id: String,
}

async fn track(
    State(api): State<Arc<PublishApi>>,
    headers: HeaderMap,
    body: Result<Json<TrackRequest>, JsonRejection>,
) -> Response {
    match accept(&api, &headers, body) {
        Ok(req) => respond(
            api.publisher
                .track(
                    req.account.as_deref(),
                    req.app_id.as_deref(),
                    &req.publish_id,
                )
                .await,
        ),
        Err(refused) => *refused,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JobQuery {
    account: Option<String>,
    app_id: Option<String>,
}

async fn job(
    State(api): State<Arc<PublishApi>>,
    headers: HeaderMap,
    Path(publish_id): Path<String>,
    query: Result<Query<JobQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if !api.authorized(&headers) {
        return unauthorized();
    }
    let Ok(Query(query)) = query else {
        return bad_request("the query string takes account=NAME and, for a platform, app_id=wx…");
    };
    if let Err(e) = crate::publish::service::check_id("publish_id", &publish_id) {
        return api_error(e);
    }
    let target = match api
        .publisher
        .api
        .resolve(query.account.as_deref(), query.app_id.as_deref())
    {
        Ok(t) => t,
        Err(e) => return api_error(e),
    };
    match api.publisher.job(&target, &publish_id).await {
        Ok(Some(job)) => answer(StatusCode::OK, json!(job)),
        Ok(None) => answer(
            StatusCode::NOT_FOUND,
            json!({ "error": format!("account `{target}` follows no publish job {publish_id}; POST /api/publish/track to follow one") }),
        ),
        Err(e) => api_error(e),
    }
}
