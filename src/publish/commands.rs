//! The `wxhook publish …` and `wxhook simulate` command lines: arguments, and JSON on stdout, one line per item.

use super::service::{PAGE_MAX, Publisher};
use super::simulator::{SimOptions, SimPlatform, Simulator};
use crate::config::Config;
use anyhow::{Context, Result};
use clap::Subcommand;
use serde::Serialize;
use std::time::Duration;

/// Whom a `publish` command acts for.
#[derive(clap::Args)]
pub struct Whom {
    /// The account (may be left out when only one has API credentials).
    #[arg(long)]
    pub account: Option<String>,
    /// For a third-party platform entry: the authorized account's appid.
    #[arg(long)]
    pub app_id: Option<String>,
}

impl Whom {
    fn parts(&self) -> (Option<&str>, Option<&str>) {
        (self.account.as_deref(), self.app_id.as_deref())
    }
}

#[derive(Subcommand)]
pub enum PublishAction {
    /// Publish a draft (freepublish/submit) and follow the job until its outcome.
    Submit {
        media_id: String,
        #[command(flatten)]
        whom: Whom,
    },
    /// Ask WeChat for a job's status (freepublish/get).
    Status {
        publish_id: String,
        #[command(flatten)]
        whom: Whom,
    },
    /// A published article (freepublish/getarticle).
    Article {
        article_id: String,
        #[command(flatten)]
        whom: Whom,
    },
    /// Published articles (freepublish/batchget), one line each.
    List {
        #[command(flatten)]
        whom: Whom,
        #[arg(long, default_value_t = 0)]
        offset: u64,
        /// Items of one page, 1 to 20.
        #[arg(long, default_value_t = PAGE_MAX)]
        count: u64,
        /// Leave out each item's content.
        #[arg(long)]
        no_content: bool,
        /// Every item, page after page (from --offset on).
        #[arg(long)]
        all: bool,
    },
    /// Follow a job submitted elsewhere.
    Track {
        publish_id: String,
        #[command(flatten)]
        whom: Whom,
    },
    /// The jobs wxhook follows, newest first.
    Jobs {
        #[command(flatten)]
        whom: Whom,
        /// Only those still followed: no final status yet, not ended.
        #[arg(long)]
        pending: bool,
    },
}

#[derive(Subcommand)]
pub enum PlatformAction {
    /// The accounts authorized to each platform, with their state (never their tokens).
    Authorizers {
        /// Only this platform entry's.
        #[arg(long)]
        account: Option<String>,
    },
}

/// Runs one `platform` command on the spool in `data_dir`.
pub fn platform(action: PlatformAction, data_dir: &std::path::Path) -> Result<()> {
    let db = crate::spool::jobs::JobsDb::open(data_dir)?;
    match action {
        PlatformAction::Authorizers { account } => {
            let found =
                db.with(|conn| crate::spool::platform::authorizers(conn, account.as_deref()))??;
            for authorizer in &found {
                line(authorizer)?;
            }
        }
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct SimulateArgs {
    /// The developer URL the pushes go to, e.g. http://127.0.0.1:8080/wechat
    #[arg(long)]
    pub callback: String,
    /// The Token pushes are signed with.
    #[arg(long, env = "WXHOOK_TOKEN", hide_env_values = true)]
    pub token: String,
    /// Encrypt pushes as security mode does (needs --app-id).
    #[arg(long, hide_env_values = true, requires = "app_id")]
    pub encoding_aes_key: Option<String>,
    /// The appid stable_token must name, and encrypted pushes carry.
    #[arg(long)]
    pub app_id: Option<String>,
    /// The AppSecret stable_token must carry (any when absent).
    #[arg(long, hide_env_values = true)]
    pub app_secret: Option<String>,
    /// Where the stand-in listens.
    #[arg(long, default_value = "127.0.0.1:9009")]
    pub listen: std::net::SocketAddr,
    /// From submission to push.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub push_delay: Duration,
    /// expires_in of the access tokens handed out (seconds).
    #[arg(long, default_value_t = 7200)]
    pub token_ttl: u64,
    /// Articles already published (what batchget lists before any submission).
    #[arg(long, default_value_t = 3)]
    pub articles: u32,
    /// Send no push at all: only polling finds the outcomes.
    #[arg(long)]
    pub drop_pushes: bool,
    /// What getcallbackip lists (repeatable).
    #[arg(long = "callback-ip", default_value = "127.0.0.1/32")]
    pub callback_ips: Vec<String>,
    /// Play WeChat for a third-party platform: its authorization event URL. --app-id,
    /// --app-secret and --encoding-aes-key are then the platform's, and --callback holds
    /// `{appid}`, e.g. http://127.0.0.1:8080/wechat/{appid}
    #[arg(long, requires_all = ["encoding_aes_key", "app_id"])]
    pub auth_callback: Option<String>,
    /// How often a fresh component_verify_ticket is pushed (the first at start).
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub ticket_every: Duration,
}

fn line(value: &impl Serialize) -> Result<()> {
    println!("{}", serde_json::to_string(value)?);
    Ok(())
}

/// Runs one `publish` command against `config`'s accounts.
pub async fn publish(action: PublishAction, config: &Config) -> Result<()> {
    let publisher = Publisher::open(config)?;
    match action {
        PublishAction::Submit { media_id, whom } => {
            let (account, app_id) = whom.parts();
            let submitted = publisher.submit(account, app_id, &media_id).await?;
            line(&submitted)?;
        }
        PublishAction::Status { publish_id, whom } => {
            let (account, app_id) = whom.parts();
            let status = publisher.status(account, app_id, &publish_id).await?;
            line(&status)?;
        }
        PublishAction::Article { article_id, whom } => {
            let (account, app_id) = whom.parts();
            let article = publisher.article(account, app_id, &article_id).await?;
            let mut out = serde_json::Map::new();
            out.insert("article_id".into(), article_id.into());
            out.insert(
                "news_item".into(),
                serde_json::to_value(&article.news_item)?,
            );
            out.extend(article.extra);
            line(&out)?;
        }
        PublishAction::List {
            whom,
            offset,
            count,
            no_content,
            all,
        } => {
            let (account, app_id) = whom.parts();
            let mut offset = offset;
            loop {
                let count = if all { PAGE_MAX } else { count };
                let page = publisher
                    .list(account, app_id, offset, count, no_content)
                    .await?;
                for item in &page.item {
                    line(item)?;
                }
                let got = page.item.len() as u64;
                offset += got;
                if !all || got == 0 || offset >= page.total_count {
                    break;
                }
            }
        }
        PublishAction::Track { publish_id, whom } => {
            let (account, app_id) = whom.parts();
            let job = publisher.track(account, app_id, &publish_id).await?;
            line(&job)?;
        }
        PublishAction::Jobs { whom, pending } => {
            let (account, app_id) = whom.parts();
            for job in publisher.jobs(account, app_id, pending).await? {
                line(&job)?;
            }
        }
    }
    Ok(())
}

/// Runs the stand-in until the process is stopped.
pub async fn simulate(args: SimulateArgs) -> Result<()> {
    let cipher = match (&args.encoding_aes_key, &args.app_id) {
        (Some(key), Some(app_id)) => Some(crate::wechat::crypto::Cipher::new(key, app_id)?),
        _ => None,
    };
    let simulator = Simulator::new(SimOptions {
        callback: args.callback,
        token: args.token,
        cipher,
        app_id: args.app_id,
        app_secret: args.app_secret,
        push_delay: args.push_delay,
        token_ttl: args.token_ttl,
        articles: args.articles,
        drop_pushes: args.drop_pushes,
        callback_ips: args.callback_ips,
        platform: args.auth_callback.map(|auth_callback| SimPlatform {
            auth_callback,
            ticket_every: Some(args.ticket_every),
        }),
    });
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "WeChat stand-in listening on {addr}; set api_base = \"http://{addr}\"");
    simulator.serve(listener).await?;
    Ok(())
}
