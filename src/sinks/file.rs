//! The `file` sink: appends JSON lines to a file and fsyncs once per batch; a failed batch leaves no partial lines.

use super::{SinkError, json_lines};
use crate::spool::Pending;
use serde::{Deserialize, Serialize};
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileSinkConfig {
    /// Name of the sink (default `file`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// File the JSON lines are appended to; created if missing, reopened per batch
    /// (so it may be rotated by moving it away).
    pub path: PathBuf,
}

pub struct FileSink {
    path: PathBuf,
}

impl FileSink {
    pub fn new(config: &FileSinkConfig) -> FileSink {
        FileSink {
            path: config.path.clone(),
        }
    }

    pub async fn deliver(&self, batch: &[Pending]) -> Result<(), SinkError> {
        let lines = json_lines(batch);
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || append_synced(&path, &lines))
            .await
            .map_err(|e| SinkError(e.to_string()))?
            .map_err(|e| SinkError(format!("cannot append to {}: {e}", self.path.display())))
    }
}

/// Appends `bytes` and fsyncs; on failure cuts the file back to its old length.
fn append_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = OpenOptions::new().create(true).append(true).open(path)?;
    let start = file.metadata()?.len();
    let written = file.write_all(bytes).and_then(|_| file.sync_data());
    if written.is_err() {
        let _ = file.set_len(start);
    }
    written
}
