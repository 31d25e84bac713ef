//! The `wxhook` command: `serve`, `check` and `replay`.

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use wxhook::config::{Config, LogFormat};
use wxhook::publish::commands::{self, PlatformAction, PublishAction, SimulateArgs};
use wxhook::replay;
use wxhook::server::App;
use wxhook::spool::admin::{self, Admin};

// Every request allocates and frees many small buffers on several threads; jemalloc's
// thread caches do that ~15% faster than glibc's malloc here, for ~4 MiB more RSS.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "wxhook",
    version,
    about = "Receives WeChat Official Account pushes and relays them durably"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (WeChat's developer URL).
    Serve {
        /// TOML configuration file; without one, WXHOOK_* variables define one account.
        #[arg(long, env = "WXHOOK_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Validate the configuration and print it with secrets redacted.
    Check {
        #[arg(long, env = "WXHOOK_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Sign push XML files as WeChat would and POST them; fails unless every answer is `success`.
    Replay {
        /// XML files, each one push.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The developer URL, e.g. http://127.0.0.1:8080/wechat
        #[arg(long)]
        url: String,
        /// The account's Token.
        #[arg(long, env = "WXHOOK_TOKEN", hide_env_values = true)]
        token: String,
        /// Encrypt as security mode does, with this EncodingAESKey (needs --app-id).
        #[arg(
            long,
            env = "WXHOOK_ENCODING_AES_KEY",
            hide_env_values = true,
            requires = "app_id"
        )]
        encoding_aes_key: Option<String>,
        /// The appid the encrypted messages name.
        #[arg(long)]
        app_id: Option<String>,
    },
    /// Exit 0 when a running wxhook is ready (for container health checks).
    Health {
        /// The readiness URL; by default `/readyz` on the configured `admin_listen` or
        /// `listen` (from --config or WXHOOK_ADMIN_LISTEN / WXHOOK_LISTEN), with 0.0.0.0 read as 127.0.0.1.
        #[arg(long)]
        url: Option<String>,
        #[arg(long, env = "WXHOOK_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Submit and follow publish jobs through WeChat's freepublish API.
    Publish {
        #[command(subcommand)]
        action: PublishAction,
        #[arg(long, global = true, env = "WXHOOK_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Third-party platforms: the accounts authorized to them.
    Platform {
        #[command(subcommand)]
        action: PlatformAction,
        #[command(flatten)]
        spool: SpoolArgs,
    },
    /// A local stand-in for WeChat's API that pushes PUBLISHJOBFINISH to --callback.
    Simulate(SimulateArgs),
    /// Events a sink gave up on: list them, or put them back in the queue.
    DeadLetters {
        #[command(subcommand)]
        action: DeadLetterAction,
        #[command(flatten)]
        spool: SpoolArgs,
    },
    /// Recent events and each sink's delivery state.
    Events {
        #[command(subcommand)]
        action: EventAction,
        #[command(flatten)]
        spool: SpoolArgs,
    },
}

#[derive(clap::Args)]
struct SpoolArgs {
    /// Read data_dir from this configuration file.
    #[arg(long, global = true, env = "WXHOOK_CONFIG")]
    config: Option<PathBuf>,
    /// The spool directory (overrides the configuration).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
}

impl SpoolArgs {
    fn dir(&self) -> Result<PathBuf> {
        Ok(match &self.data_dir {
            Some(dir) => dir.clone(),
            None => Config::load_data_dir(self.config.as_deref())?,
        })
    }

    fn open(&self) -> Result<Admin> {
        Ok(Admin::open(&self.dir()?)?)
    }
}

#[derive(Subcommand)]
enum DeadLetterAction {
    /// Show dead letters: id, account, sink, attempts, age, last error.
    List {
        #[arg(long)]
        sink: Option<String>,
    },
    /// Queue dead letters again (all, those of one sink, or the given event ids).
    Retry {
        #[arg(long)]
        sink: Option<String>,
        ids: Vec<String>,
    },
}

#[derive(Subcommand)]
enum EventAction {
    /// The newest events with each sink's state.
    List {
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[arg(long)]
        account: Option<String>,
    },
    /// One event: its JSON and each sink's state, attempts and last error.
    Show { id: String },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs on stderr, human-readable or JSON; `WXHOOK_LOG` takes a tracing filter (default `info`).
fn init_logging(format: LogFormat) {
    init_logging_at(format, "info");
}

fn init_logging_at(format: LogFormat, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WXHOOK_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    match format {
        LogFormat::Json => builder.json().with_current_span(true).init(),
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
}

async fn run(command: Command) -> Result<()> {
    match command {
        Command::Serve { config } => {
            let config = Config::load(config.as_deref())?;
            init_logging(config.log_format);
            let app = App::build(config).await?;
            app.run_until(shutdown_signal()).await?;
        }
        Command::Publish { action, config } => {
            let config = Config::load(config.as_deref())?;
            init_logging_at(config.log_format, "warn");
            commands::publish(action, &config).await?;
        }
        Command::Simulate(args) => {
            init_logging(LogFormat::Text);
            commands::simulate(args).await?;
        }
        Command::Check { config } => {
            init_logging(LogFormat::Text);
            let config = Config::load(config.as_deref())?;
            println!("{}", config.to_redacted_toml().trim_end());
        }
        Command::Replay {
            files,
            url,
            token,
            encoding_aes_key,
            app_id,
        } => {
            init_logging(LogFormat::Text);
            let cipher = match (encoding_aes_key, app_id) {
                (Some(key), Some(app_id)) => {
                    Some(wxhook::wechat::crypto::Cipher::new(&key, &app_id)?)
                }
                _ => None,
            };
            let client = reqwest::Client::new();
            let mut refused = 0;
            for file in &files {
                let body = std::fs::read(file)
                    .with_context(|| format!("cannot read {}", file.display()))?;
                let answer = replay::send_as(&client, &url, &token, cipher.as_ref(), body)
                    .await
                    .with_context(|| format!("cannot POST {} to {url}", file.display()))?;
                println!(
                    "{}: {} {}",
                    file.display(),
                    answer.status,
                    answer.body.trim_end()
                );
                if !answer.acknowledged() {
                    refused += 1;
                }
            }
            if refused > 0 {
                bail!(
                    "{refused} of {} pushes were not answered `success`",
                    files.len()
                );
            }
        }
        Command::Health { url, config } => {
            let url = match url {
                Some(url) => url,
                None => Config::load_ready_url(config.as_deref())?,
            };
            let client = reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(3))
                .build()?;
            let response = client
                .get(&url)
                .send()
                .await
                .with_context(|| format!("cannot reach {url}"))?;
            let status = response.status();
            let text = response.text().await.unwrap_or_default();
            if !status.is_success() {
                bail!("not ready ({status}): {}", text.trim());
            }
            println!("{}", text.trim());
        }
        Command::Platform { action, spool } => {
            init_logging_at(LogFormat::Text, "warn");
            commands::platform(action, &spool.dir()?)?;
        }
        Command::DeadLetters { action, spool } => {
            let admin = spool.open()?;
            match action {
                DeadLetterAction::List { sink } => {
                    print!(
                        "{}",
                        admin::render_dead_letters(&admin.dead_letters(sink.as_deref())?)
                    );
                }
                DeadLetterAction::Retry { sink, ids } => {
                    let n = admin.retry_dead(sink.as_deref(), &ids)?;
                    println!("{n} dead letters queued again");
                }
            }
        }
        Command::Events { action, spool } => {
            let admin = spool.open()?;
            match action {
                EventAction::List { limit, account } => {
                    print!(
                        "{}",
                        admin::render_events(&admin.recent(limit, account.as_deref())?, false)
                    );
                }
                EventAction::Show { id } => {
                    let found = admin.find(&id)?;
                    if found.is_empty() {
                        bail!("no event with id `{id}` in the spool");
                    }
                    print!("{}", admin::render_events(&found, true));
                }
            }
        }
    }
    Ok(())
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("shutdown requested");
}
