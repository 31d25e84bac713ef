//! The `stdout` sink: one JSON line per event on standard output (logs go to standard error).

use super::{SinkError, json_lines};
use crate::spool::Pending;
use serde::{Deserialize, Serialize};
use std::io::Write;

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StdoutSinkConfig {
    /// Name of the sink (default `stdout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

pub struct StdoutSink;

impl StdoutSink {
    pub async fn deliver(&self, batch: &[Pending]) -> Result<(), SinkError> {
        let lines = json_lines(batch);
        tokio::task::spawn_blocking(move || {
            let mut out = std::io::stdout().lock();
            out.write_all(&lines).and_then(|_| out.flush())
        })
        .await
        .map_err(|e| SinkError(e.to_string()))?
        .map_err(|e| SinkError(format!("cannot write to stdout: {e}")))
    }
}
