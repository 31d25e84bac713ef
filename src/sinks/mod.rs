//! Sinks: where accepted events go. The `[[sinks]]` configuration, the sink kinds, and their delivery workers.

mod file;
pub mod http;
mod log;
pub mod nats;
mod relay;
pub mod retry;
pub mod signing;
mod stdout;
pub mod worker;

pub use file::{FileSink, FileSinkConfig};
pub use http::{HttpSink, HttpSinkConfig};
pub use log::{LogSink, LogSinkConfig};
pub use nats::{NatsSink, NatsSinkConfig};
pub use stdout::{StdoutSink, StdoutSinkConfig};

use crate::spool::{Delivery, Pending, Spool};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// One `[[sinks]]` entry, chosen by its `type`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum SinkConfig {
    /// JSON lines on standard output.
    Stdout(StdoutSinkConfig),
    /// One structured tracing record per event.
    Log(LogSinkConfig),
    /// JSON lines appended to a file, fsync'd per batch.
    File(FileSinkConfig),
    /// Each event POSTed to a URL, with retries, signatures and dead letters.
    Http(HttpSinkConfig),
    /// Each event published to NATS JetStream, deduplicated by the stream across replicas.
    Nats(Box<NatsSinkConfig>),
}

impl Default for SinkConfig {
    fn default() -> Self {
        SinkConfig::Stdout(StdoutSinkConfig::default())
    }
}

impl SinkConfig {
    /// The kind, as written in `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            SinkConfig::Stdout(_) => "stdout",
            SinkConfig::Log(_) => "log",
            SinkConfig::File(_) => "file",
            SinkConfig::Http(_) => "http",
            SinkConfig::Nats(_) => "nats",
        }
    }

    /// How the sink takes events from the spool: the local kinds strictly in order.
    pub fn delivery(&self) -> Delivery {
        match self {
            SinkConfig::Http(_) | SinkConfig::Nats(_) => Delivery::Scheduled,
            _ => Delivery::Ordered,
        }
    }

    /// The sink's name: its `name`, or its type when it has none.
    pub fn name(&self) -> &str {
        let name = match self {
            SinkConfig::Stdout(c) => &c.name,
            SinkConfig::Log(c) => &c.name,
            SinkConfig::File(c) => &c.name,
            SinkConfig::Http(c) => &c.name,
            SinkConfig::Nats(c) => &c.name,
        };
        name.as_deref().unwrap_or(self.kind())
    }

    fn name_mut(&mut self) -> &mut Option<String> {
        match self {
            SinkConfig::Stdout(c) => &mut c.name,
            SinkConfig::Log(c) => &mut c.name,
            SinkConfig::File(c) => &mut c.name,
            SinkConfig::Http(c) => &mut c.name,
            SinkConfig::Nats(c) => &mut c.name,
        }
    }

    /// Checks the values a type cannot express.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            SinkConfig::File(c) if c.path.as_os_str().is_empty() => {
                Err(format!("sink `{}`: `path` is empty", self.name()))
            }
            SinkConfig::Http(c) => c.validate(self.name()),
            SinkConfig::Nats(c) => c.validate(self.name()),
            _ => Ok(()),
        }
    }
}

/// Names unnamed sinks after their type, numbering a type that appears more than once
/// (`file-1`, `file-2`); the name keys delivery state in the spool, so keep it stable.
pub fn assign_names(sinks: &mut [SinkConfig]) {
    let kinds: Vec<&'static str> = sinks.iter().map(SinkConfig::kind).collect();
    let mut seen: std::collections::HashMap<&str, usize> = Default::default();
    for (sink, kind) in sinks.iter_mut().zip(&kinds) {
        let n = seen.entry(kind).or_default();
        *n += 1;
        let repeated = kinds.iter().filter(|k| *k == kind).count() > 1;
        let name = sink.name_mut();
        if name.is_none() {
            *name = Some(if repeated {
                format!("{kind}-{n}")
            } else {
                (*kind).to_owned()
            });
        }
    }
}

/// Why a batch did not reach a sink; the batch stays pending and is tried again.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SinkError(pub String);

/// One NATS connection per `nats` sink, by the sink's name (a replay guard may share one).
pub fn nats_links(configs: &[SinkConfig]) -> crate::nats::Links {
    configs
        .iter()
        .filter_map(|c| match c {
            SinkConfig::Nats(n) => Some((
                c.name().to_owned(),
                crate::nats::Link::new(c.name(), n.connection()),
            )),
            _ => None,
        })
        .collect()
}

/// Starts the delivery worker of one sink; it stops when `stop` turns true. A `nats`
/// sink uses its connection in `links` (see [`nats_links`]).
pub fn spawn(
    config: &SinkConfig,
    spool: Arc<Spool>,
    stop: watch::Receiver<bool>,
    links: &crate::nats::Links,
) -> Result<JoinHandle<()>, String> {
    let name = config.name().to_owned();
    let local = match config {
        SinkConfig::Stdout(_) => Sink::Stdout(StdoutSink),
        SinkConfig::Log(_) => Sink::Log(LogSink::new(&name)),
        SinkConfig::File(c) => Sink::File(FileSink::new(c)),
        SinkConfig::Http(c) => {
            let sink = HttpSink::new(c).map_err(|e| format!("sink `{name}`: {e}"))?;
            return Ok(tokio::spawn(relay::run(name, sink, spool, stop)));
        }
        SinkConfig::Nats(c) => {
            let link = links
                .get(&name)
                .cloned()
                .unwrap_or_else(|| crate::nats::Link::new(&name, c.connection()));
            let sink = NatsSink::new(&name, c, link);
            return Ok(tokio::spawn(relay::run(name, sink, spool, stop)));
        }
    };
    Ok(worker::spawn(name, local, spool, stop))
}

/// A running local sink, fed in batches.
pub enum Sink {
    Stdout(StdoutSink),
    Log(LogSink),
    File(FileSink),
}

impl Sink {
    /// Delivers a batch, all or nothing as far as the sink allows.
    pub async fn deliver(&self, batch: &[Pending]) -> Result<(), SinkError> {
        match self {
            Sink::Stdout(s) => s.deliver(batch).await,
            Sink::Log(s) => {
                s.deliver(batch);
                Ok(())
            }
            Sink::File(s) => s.deliver(batch).await,
        }
    }

    /// The last batch was delivered but the spool could not record it.
    pub fn unrecorded(&self) {
        if let Sink::File(s) = self {
            s.unrecorded();
        }
    }
}

/// A batch as JSON lines, one event a line.
fn json_lines(batch: &[Pending]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(batch.iter().map(|p| p.body.len() + 1).sum());
    for p in batch {
        buf.extend_from_slice(p.body.as_bytes());
        buf.push(b'\n');
    }
    buf
}
