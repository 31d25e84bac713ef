//! `wxhook simulate`: a local stand-in for WeChat's API (`stable_token`, the four `freepublish` APIs, `getcallbackip`, and for a third-party platform the component APIs of [`platform`]) that sends the signed, optionally encrypted `PUBLISHJOBFINISH` push a submission leads to.
//!
//! What a submission does is chosen by words in its `media_id` (split at any character
//! that is not a letter or digit):
//!
//! | word | effect |
//! | --- | --- |
//! | (none) | success with 1 article |
//! | `n3` | success with 3 articles |
//! | `original`, `routine`, `audit` | status 2, 3 or 4 (`fail_idx` 1 for 2 and 4) |
//! | `slow` | a "publishing" (status 1) push first, the outcome one delay later |
//! | `nopush` | no push at all: only `freepublish/get` tells the outcome |
//! | `busy` | the first submission answers `-1` (busy) |
//! | `quota` | the first submission answers `45011` (per-minute quota) |
//! | `e48001`, `e53503`… | the submission answers that errcode |

mod platform;

pub use platform::SimPlatform;

use crate::replay;
use crate::wechat::crypto::Cipher;
use axum::extract::{Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;

/// The first `publish_id` handed out: above 2^31, as real ones are.
pub const FIRST_PUBLISH_ID: u64 = 2_247_503_051;

/// How the stand-in behaves.
#[derive(Clone)]
pub struct SimOptions {
    /// The developer URL pushes go to.
    pub callback: String,
    pub token: String,
    /// Encrypts pushes as security mode does.
    pub cipher: Option<Cipher>,
    /// The appid `stable_token` must name (any when `None`).
    pub app_id: Option<String>,
    /// The AppSecret `stable_token` must carry (any when `None`).
    pub app_secret: Option<String>,
    /// From submission to push (and between the two pushes of a `slow` job).
    pub push_delay: Duration,
    /// `expires_in` of the tokens handed out.
    pub token_ttl: u64,
    /// Articles already published before the stand-in started (for `batchget`).
    pub articles: u32,
    /// No push for any job.
    pub drop_pushes: bool,
    /// What `getcallbackip` lists.
    pub callback_ips: Vec<String>,
    /// Play WeChat for a third-party platform (tickets, authorizations, component APIs).
    pub platform: Option<SimPlatform>,
}

impl std::fmt::Debug for SimOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimOptions")
            .field("callback", &self.callback)
            .field("push_delay", &self.push_delay)
            .finish_non_exhaustive()
    }
}

#[derive(Clone)]
struct SimJob {
    status: u32,
    outcome: u32,
    articles: u32,
    article_id: Option<String>,
    fail_idx: Vec<u32>,
    /// The authorized account that submitted it, through the platform.
    app_id: Option<String>,
}

struct SimState {
    token: String,
    /// The current token is refused, yet normal-mode `stable_token` still returns it.
    revoked: bool,
    token_seq: u64,
    next_publish_id: u64,
    jobs: HashMap<String, SimJob>,
    /// Published articles: (article_id, number of news items, update_time).
    articles: Vec<(String, u32, i64)>,
    calls: BTreeMap<String, u64>,
    busy_seen: HashSet<String>,
    callback_ips: Vec<String>,
    pushes: Vec<Value>,
    platform: platform::PlatformState,
}

/// The running stand-in.
pub struct Simulator {
    options: SimOptions,
    state: Mutex<SimState>,
    http: reqwest::Client,
}

fn now_secs() -> i64 {
    crate::spool::unix_ms() / 1000
}

fn error(code: i64, msg: &str) -> Json<Value> {
    Json(json!({ "errcode": code, "errmsg": msg }))
}

#[derive(Deserialize)]
struct TokenQuery {
    access_token: Option<String>,
}

impl Simulator {
    pub fn new(options: SimOptions) -> Arc<Simulator> {
        let articles = (0..options.articles)
            .map(|i| {
                (
                    format!("ARTICLE_{i:04}"),
                    1 + i % 3,
                    1_627_891_234 + i64::from(i),
                )
            })
            .collect();
        let state = SimState {
            token: "SIMTOKEN_1".into(),
            revoked: false,
            token_seq: 1,
            next_publish_id: FIRST_PUBLISH_ID,
            jobs: HashMap::new(),
            articles,
            calls: BTreeMap::new(),
            busy_seen: HashSet::new(),
            callback_ips: options.callback_ips.clone(),
            pushes: Vec::new(),
            platform: platform::PlatformState::default(),
        };
        Arc::new(Simulator {
            options,
            state: Mutex::new(state),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap_or_default(),
        })
    }

    /// Serves the stand-in on `listener` until the process ends.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) -> std::io::Result<()> {
        if let Some(every) = self.options.platform.as_ref().and_then(|p| p.ticket_every) {
            tokio::spawn(self.clone().tickets(every));
        }
        axum::serve(listener, self.router()).await
    }

    /// Starts the stand-in on `listener` in the background.
    pub fn spawn(self: Arc<Self>, listener: TcpListener) -> std::io::Result<SocketAddr> {
        let addr = listener.local_addr()?;
        tokio::spawn(self.serve(listener));
        Ok(addr)
    }

    pub fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route("/cgi-bin/stable_token", post(stable_token))
            .route("/cgi-bin/freepublish/submit", post(submit))
            .route("/cgi-bin/freepublish/get", post(status))
            .route("/cgi-bin/freepublish/getarticle", post(article))
            .route("/cgi-bin/freepublish/batchget", post(batchget))
            .route("/cgi-bin/getcallbackip", get(callback_ips))
            .route(
                "/cgi-bin/component/api_component_token",
                post(platform::component_token),
            )
            .route(
                "/cgi-bin/component/api_query_auth",
                post(platform::query_auth),
            )
            .route(
                "/cgi-bin/component/api_authorizer_token",
                post(platform::authorizer_token),
            )
            .route("/simulator/ticket", post(platform::ticket))
            .route("/simulator/authorize", post(platform::authorize))
            .route("/simulator/unauthorize", post(platform::unauthorize))
            .route("/simulator/access_token", get(central_token))
            .route("/simulator/calls", get(calls))
            .route("/simulator/pushes", get(pushes))
            .route("/simulator/revoke", post(revoke))
            .route("/simulator/rotate", post(rotate))
            .route("/simulator/callback_ips", post(set_callback_ips))
            .with_state(self)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SimState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a call; the authorized account whose token it carries (`None`: the
    /// account's own token); `Err` with WeChat's answer when the token is not current.
    fn authorize(&self, api: &str, query: &TokenQuery) -> Result<Option<String>, Json<Value>> {
        let mut state = self.lock();
        *state.calls.entry(api.to_owned()).or_default() += 1;
        match &query.access_token {
            Some(t) if *t == state.token && !state.revoked => Ok(None),
            Some(t) => state.platform.authorizer_of(t).map(Some).ok_or_else(|| {
                error(
                    40001,
                    "invalid credential, access_token is invalid or not latest",
                )
            }),
            None => Err(error(41001, "access_token missing")),
        }
    }

    fn issue_token(state: &mut SimState) {
        state.token_seq += 1;
        state.token = format!("SIMTOKEN_{}", state.token_seq);
        state.revoked = false;
    }

    /// The push XML of a job's status.
    fn push_xml(publish_id: &str, job: &SimJob) -> String {
        let mut info = format!(
            "<publish_id>{publish_id}</publish_id><publish_status>{}</publish_status>",
            job.status
        );
        if job.status == 0 {
            if let Some(article_id) = &job.article_id {
                info.push_str(&format!(
                    "<article_id><![CDATA[{article_id}]]></article_id>"
                ));
            }
            info.push_str(&format!("<article_detail><count>{}</count>", job.articles));
            for idx in 1..=job.articles {
                info.push_str(&format!(
                    "<item><idx>{idx}</idx><article_url><![CDATA[https://mp.weixin.qq.com/s/{publish_id}-{idx}]]></article_url></item>"
                ));
            }
            info.push_str("</article_detail>");
        }
        for idx in &job.fail_idx {
            info.push_str(&format!("<fail_idx>{idx}</fail_idx>"));
        }
        format!(
            "<xml><ToUserName><![CDATA[gh_5imu1a70r000]]></ToUserName><FromUserName><![CDATA[oSimulatorMpHelper000000000]]></FromUserName>\
             <CreateTime>{}</CreateTime><MsgType><![CDATA[event]]></MsgType><Event><![CDATA[PUBLISHJOBFINISH]]></Event>\
             <PublishEventInfo>{info}</PublishEventInfo></xml>",
            now_secs()
        )
    }

    /// Sends a push as WeChat does: up to three tries, five seconds each.
    async fn push(&self, publish_id: &str, job: &SimJob) {
        let xml = Simulator::push_xml(publish_id, job);
        let cipher = self.options.cipher.as_ref();
        let callback = match &job.app_id {
            Some(app_id) => self.options.callback.replace("{appid}", app_id),
            None => self.options.callback.clone(),
        };
        let mut answered = None;
        for attempt in 1..=3 {
            match replay::send_as(
                &self.http,
                &callback,
                &self.options.token,
                cipher,
                xml.clone().into_bytes(),
            )
            .await
            {
                Ok(answer) if answer.acknowledged() => {
                    answered = Some(answer.status);
                    break;
                }
                Ok(answer) => {
                    tracing::warn!(publish_id, attempt, status = answer.status, body = %answer.body.trim(), "the callback did not answer success")
                }
                Err(e) => {
                    tracing::warn!(publish_id, attempt, error = %e.without_url(), "the callback is unreachable")
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        tracing::info!(
            publish_id,
            status = job.status,
            acknowledged = answered.is_some(),
            "push sent"
        );
        self.lock().pushes.push(json!({
            "publish_id": publish_id,
            "publish_status": job.status,
            "acknowledged": answered.is_some(),
        }));
    }

    /// Runs a submitted job: its pushes (unless dropped) and its status changes.
    async fn run_job(self: Arc<Self>, publish_id: String, slow: bool, push: bool) {
        let delay = self.options.push_delay;
        if slow {
            tokio::time::sleep(delay).await;
            let job = self.lock().jobs.get(&publish_id).cloned();
            if let (Some(job), true) = (job, push) {
                self.push(&publish_id, &job).await;
            }
        }
        tokio::time::sleep(delay).await;
        let job = {
            let mut state = self.lock();
            let Some(job) = state.jobs.get_mut(&publish_id) else {
                return;
            };
            job.status = job.outcome;
            let job = job.clone();
            if let (0, Some(article_id)) = (job.status, &job.article_id) {
                let article = (article_id.clone(), job.articles, now_secs());
                state.articles.push(article);
            }
            job
        };
        if push {
            self.push(&publish_id, &job).await;
        }
    }
}

async fn stable_token(State(sim): State<Arc<Simulator>>, Json(body): Json<Value>) -> Json<Value> {
    let force = body
        .get("force_refresh")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let mut state = sim.lock();
    *state
        .calls
        .entry(
            if force {
                "force_refresh"
            } else {
                "stable_token"
            }
            .to_owned(),
        )
        .or_default() += 1;
    if body.get("grant_type").and_then(Value::as_str) != Some("client_credential") {
        return error(40002, "invalid grant_type");
    }
    let appid = body.get("appid").and_then(Value::as_str).unwrap_or("");
    if sim.options.app_id.as_deref().is_some_and(|a| a != appid) {
        return error(40013, "invalid appid");
    }
    let secret = body.get("secret").and_then(Value::as_str).unwrap_or("");
    if sim
        .options
        .app_secret
        .as_deref()
        .is_some_and(|s| s != secret)
    {
        return error(40125, "invalid appsecret");
    }
    if force {
        Simulator::issue_token(&mut state);
    }
    Json(json!({ "access_token": state.token, "expires_in": sim.options.token_ttl }))
}

/// The behaviour words of a `media_id`.
fn words(media_id: &str) -> Vec<String> {
    media_id
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_ascii_lowercase)
        .collect()
}

async fn submit(
    State(sim): State<Arc<Simulator>>,
    Query(q): Query<TokenQuery>,
    Json(body): Json<Value>,
) -> Json<Value> {
    let caller = match sim.authorize("freepublish/submit", &q) {
        Ok(caller) => caller,
        Err(e) => return e,
    };
    let Some(media_id) = body.get("media_id").and_then(Value::as_str) else {
        return error(40002, "invalid args: media_id");
    };
    let words = words(media_id);
    let has = |w: &str| words.iter().any(|x| x == w);
    if let Some(code) = words
        .iter()
        .find_map(|w| w.strip_prefix('e').and_then(|c| c.parse::<i64>().ok()))
    {
        return error(code, "simulated error");
    }
    let (publish_id, slow, push) = {
        let mut state = sim.lock();
        if has("busy") && state.busy_seen.insert(format!("busy {media_id}")) {
            return error(-1, "system error");
        }
        if has("quota") && state.busy_seen.insert(format!("quota {media_id}")) {
            return error(45011, "api minute-quota reach limit, try again next minute");
        }
        let id = state.next_publish_id;
        state.next_publish_id += 1;
        let (outcome, fail_idx) = if has("original") {
            (2, vec![1])
        } else if has("routine") {
            (3, vec![])
        } else if has("audit") {
            (4, vec![1])
        } else {
            (0, vec![])
        };
        let articles = words
            .iter()
            .find_map(|w| w.strip_prefix('n').and_then(|n| n.parse::<u32>().ok()))
            .unwrap_or(1)
            .clamp(1, 8);
        let job = SimJob {
            status: 1,
            outcome,
            articles,
            article_id: (outcome == 0).then(|| format!("ART_{id}")),
            fail_idx,
            app_id: caller,
        };
        state.jobs.insert(id.to_string(), job);
        (id, has("slow"), !(has("nopush") || sim.options.drop_pushes))
    };
    tokio::spawn(sim.clone().run_job(publish_id.to_string(), slow, push));
    Json(
        json!({ "errcode": 0, "errmsg": "ok", "publish_id": publish_id, "msg_data_id": publish_id + 1_000_000_000 }),
    )
}

async fn status(
    State(sim): State<Arc<Simulator>>,
    Query(q): Query<TokenQuery>,
    Json(body): Json<Value>,
) -> Json<Value> {
    let caller = match sim.authorize("freepublish/get", &q) {
        Ok(caller) => caller,
        Err(e) => return e,
    };
    let publish_id = match body.get("publish_id") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => return error(40002, "invalid args: publish_id"),
    };
    // Another account's job is as unknown as a job that never was.
    let found = sim.lock().jobs.get(&publish_id).cloned();
    let Some(job) = found.filter(|job| job.app_id == caller) else {
        return error(53502, "invalid publish_id");
    };
    let mut answer = json!({ "publish_id": publish_id, "publish_status": job.status });
    if job.status == 0 {
        answer["article_id"] = json!(job.article_id);
        let items: Vec<Value> = (1..=job.articles)
            .map(|idx| json!({ "idx": idx, "article_url": format!("https://mp.weixin.qq.com/s/{publish_id}-{idx}") }))
            .collect();
        answer["article_detail"] = json!({ "count": job.articles, "item": items });
    }
    answer["fail_idx"] = json!(job.fail_idx);
    Json(answer)
}

fn news_items(article_id: &str, n: u32) -> Vec<Value> {
    (1..=n)
        .map(|i| {
            json!({
                "title": format!("{article_id} #{i}"), "author": "wxhook", "digest": "", "content": "<p>simulated</p>",
                "content_source_url": "", "thumb_media_id": "THUMB", "thumb_url": "https://mmbiz.qpic.cn/x",
                "need_open_comment": 0, "only_fans_can_comment": 0,
                "url": format!("https://mp.weixin.qq.com/s/{article_id}-{i}"), "is_deleted": false
            })
        })
        .collect()
}

async fn article(
    State(sim): State<Arc<Simulator>>,
    Query(q): Query<TokenQuery>,
    Json(body): Json<Value>,
) -> Json<Value> {
    if let Err(e) = sim.authorize("freepublish/getarticle", &q) {
        return e;
    }
    let id = body.get("article_id").and_then(Value::as_str).unwrap_or("");
    let found = sim.lock().articles.iter().find(|a| a.0 == id).cloned();
    match found {
        Some((id, n, _)) => {
            Json(json!({ "errcode": 0, "errmsg": "ok", "news_item": news_items(&id, n) }))
        }
        None => error(53600, "Article ID无效"),
    }
}

async fn batchget(
    State(sim): State<Arc<Simulator>>,
    Query(q): Query<TokenQuery>,
    Json(body): Json<Value>,
) -> Json<Value> {
    if let Err(e) = sim.authorize("freepublish/batchget", &q) {
        return e;
    }
    let offset = body.get("offset").and_then(Value::as_u64).unwrap_or(0);
    let count = body.get("count").and_then(Value::as_u64).unwrap_or(0);
    if !(1..=20).contains(&count) {
        return error(40002, "invalid args: count must be 1 to 20");
    }
    let no_content = body.get("no_content").and_then(Value::as_u64) == Some(1);
    let articles = sim.lock().articles.clone();
    let items: Vec<Value> = articles
        .iter()
        .rev()
        .skip(usize::try_from(offset).unwrap_or(usize::MAX))
        .take(usize::try_from(count).unwrap_or(20))
        .enumerate()
        .map(|(i, (id, n, updated))| {
            // Real answers put update_time beside content or inside it: both occur here.
            match (no_content, i % 2) {
                (true, _) => json!({ "article_id": id, "update_time": updated }),
                (false, 0) => json!({ "article_id": id, "content": { "news_item": news_items(id, *n) }, "update_time": updated }),
                (false, _) => json!({ "article_id": id, "content": { "news_item": news_items(id, *n), "update_time": updated, "create_time": updated } }),
            }
        })
        .collect();
    Json(json!({ "total_count": articles.len(), "item_count": items.len(), "item": items }))
}

async fn callback_ips(
    State(sim): State<Arc<Simulator>>,
    Query(q): Query<TokenQuery>,
) -> Json<Value> {
    if let Err(e) = sim.authorize("getcallbackip", &q) {
        return e;
    }
    Json(json!({ "ip_list": sim.lock().callback_ips }))
}

/// A central token service's answer (for `access_token_url`): the current token.
async fn central_token(State(sim): State<Arc<Simulator>>) -> Json<Value> {
    let mut state = sim.lock();
    *state
        .calls
        .entry("access_token_url".to_owned())
        .or_default() += 1;
    Json(json!({ "access_token": state.token, "expires_in": sim.options.token_ttl }))
}

/// Calls by API (`stable_token`, `force_refresh`, `freepublish/get`, …).
async fn calls(State(sim): State<Arc<Simulator>>) -> Json<Value> {
    Json(json!(sim.lock().calls))
}

/// Pushes sent so far, oldest first.
async fn pushes(State(sim): State<Arc<Simulator>>) -> Json<Value> {
    Json(json!(sim.lock().pushes))
}

/// The current token is refused from now on, but normal-mode `stable_token` keeps
/// returning it (as when another system invalidated it): only a force refresh helps.
async fn revoke(State(sim): State<Arc<Simulator>>) -> Json<Value> {
    sim.lock().revoked = true;
    Json(json!({ "revoked": true }))
}

/// A new token replaces the current one (as when it expired early).
async fn rotate(State(sim): State<Arc<Simulator>>) -> Json<Value> {
    let mut state = sim.lock();
    Simulator::issue_token(&mut state);
    Json(json!({ "rotated": true }))
}

/// Replaces what `getcallbackip` lists.
async fn set_callback_ips(
    State(sim): State<Arc<Simulator>>,
    Json(list): Json<Vec<String>>,
) -> Json<Value> {
    let mut state = sim.lock();
    state.callback_ips = list;
    Json(json!({ "ip_list": state.callback_ips }))
}
