//! The `log` sink: one structured tracing record per event, target `wxhook::event`.

use crate::spool::Pending;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogSinkConfig {
    /// Name of the sink (default `log`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

pub struct LogSink {
    name: String,
}

impl LogSink {
    pub fn new(name: &str) -> LogSink {
        LogSink {
            name: name.to_owned(),
        }
    }

    pub fn deliver(&self, batch: &[Pending]) {
        for p in batch {
            tracing::info!(
                target: "wxhook::event",
                sink = %self.name,
                account = %p.account,
                id = %p.id,
                event = %p.body,
                "event"
            );
        }
    }
}
