//! The `file` sink: appends JSON lines to a file, fsyncs once per batch, and writes each event exactly once across crashes by reading back its own tail.
//!
//! A batch is written, fsync'd, and only then recorded in the spool. A process that dies
//! between the two leaves lines in the file that the spool still counts as pending, and
//! may leave a torn last line. So before the first batch after a start (and after any
//! batch whose outcome is uncertain) the sink reads the file's tail: a last line without
//! its newline is cut, and the leading events of the batch that the file already ends
//! with, byte for byte, are not written again.

use super::{SinkError, json_lines};
use crate::spool::Pending;
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

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
    /// Whether the file may end with lines of the next batch (or a torn line): true at
    /// start, after a failed append, and after a batch the spool could not record.
    unsure: AtomicBool,
}

impl FileSink {
    pub fn new(config: &FileSinkConfig) -> FileSink {
        FileSink {
            path: config.path.clone(),
            unsure: AtomicBool::new(true),
        }
    }

    /// The spool did not record the last batch: compare the tail before writing again.
    pub fn unrecorded(&self) {
        self.unsure.store(true, Ordering::Relaxed);
    }

    pub async fn deliver(&self, batch: &[Pending]) -> Result<(), SinkError> {
        let lines = json_lines(batch);
        let lens: Vec<usize> = batch.iter().map(|p| p.body.len() + 1).collect();
        let path = self.path.clone();
        let check = self.unsure.load(Ordering::Relaxed);
        let result = tokio::task::spawn_blocking(move || {
            let mut file = OpenOptions::new()
                .create(true)
                .append(true)
                .read(true)
                .open(&path)?;
            let skip = if check {
                let present = already_written(&mut file, &lines, &lens)?;
                if present > 0 {
                    tracing::info!(file = %path.display(), events = present, "the file already held events the spool had not recorded; not writing them again");
                }
                lens[..present].iter().sum()
            } else {
                0
            };
            append_synced(&mut file, &lines[skip..])
        })
        .await
        .map_err(|e| SinkError(e.to_string()))?;
        self.unsure.store(result.is_err(), Ordering::Relaxed);
        result.map_err(|e| SinkError(format!("cannot append to {}: {e}", self.path.display())))
    }
}

/// Appends `bytes` and fsyncs; on failure cuts the file back to its old length.
fn append_synced(file: &mut File, bytes: &[u8]) -> std::io::Result<()> {
    if bytes.is_empty() {
        return Ok(());
    }
    let start = file.metadata()?.len();
    let written = file.write_all(bytes).and_then(|_| file.sync_data());
    if written.is_err() {
        let _ = file.set_len(start);
    }
    written
}

/// Cuts a torn last line, then returns how many of the batch's leading lines (`lines`,
/// each `lens[i]` bytes with its newline) the file already ends with.
fn already_written(file: &mut File, lines: &[u8], lens: &[usize]) -> std::io::Result<usize> {
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(0);
    }
    // Everything the batch could have left, a torn line, and one byte before it all.
    let longest = lens.iter().copied().max().unwrap_or(0);
    let want = u64::try_from(lines.len() + longest + 1).unwrap_or(u64::MAX);
    let from = len.saturating_sub(want);
    let mut tail = Vec::new();
    file.seek(SeekFrom::Start(from))?;
    Read::by_ref(file).take(len - from).read_to_end(&mut tail)?;
    if tail.last() != Some(&b'\n') {
        let keep = match tail.iter().rposition(|&b| b == b'\n') {
            Some(i) => i + 1,
            None if from == 0 => 0,
            None => {
                return Err(std::io::Error::other(
                    "its last line has no newline and is longer than any event: \
                     it was not written by this sink; end or remove it",
                ));
            }
        };
        file.set_len(from + u64::try_from(keep).unwrap_or(0))?;
        file.sync_data()?;
        tracing::warn!(
            bytes = tail.len() - keep,
            "cut a torn last line from the file sink's file"
        );
        tail.truncate(keep);
    }
    // The whole lines at the end of the file, newest last; the first piece of the window
    // is a whole line only when the window starts the file or follows a newline.
    let mut whole: Vec<&[u8]> = tail.split_inclusive(|&b| b == b'\n').collect();
    if from > 0 && !whole.is_empty() {
        whole.remove(0);
    }
    let mut batch = Vec::with_capacity(lens.len());
    let mut at = 0;
    for &n in lens {
        batch.push(&lines[at..at + n]);
        at += n;
    }
    let most = batch.len().min(whole.len());
    Ok((1..=most)
        .rev()
        .find(|&j| whole[whole.len() - j..] == batch[..j])
        .unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(bodies: &[&str]) -> (Vec<u8>, Vec<usize>) {
        let lines: Vec<u8> = bodies
            .iter()
            .flat_map(|b| format!("{b}\n").into_bytes())
            .collect();
        (lines, bodies.iter().map(|b| b.len() + 1).collect())
    }

    fn present(existing: &[u8], bodies: &[&str]) -> (usize, Vec<u8>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("events.jsonl");
        std::fs::write(&path, existing).expect("write");
        let mut file = OpenOptions::new()
            .append(true)
            .read(true)
            .open(&path)
            .expect("open");
        let (lines, lens) = batch(bodies);
        let n = already_written(&mut file, &lines, &lens).expect("reads");
        (n, std::fs::read(&path).expect("read"))
    }

    #[test]
    fn the_batch_prefix_the_file_ends_with_is_found_and_a_torn_line_cut() {
        let old = b"{\"id\":\"a\"}\n{\"id\":\"b\"}\n";
        let cases: [(&[u8], usize, &[u8]); 6] = [
            (b"", 0, b""),
            (old, 0, old),
            (
                b"{\"id\":\"a\"}\n{\"id\":\"b\"}\n{\"id\":\"c\"}\n",
                1,
                b"{\"id\":\"a\"}\n{\"id\":\"b\"}\n{\"id\":\"c\"}\n",
            ),
            (
                b"{\"id\":\"b\"}\n{\"id\":\"c\"}\n{\"id\":\"d\"}\n",
                2,
                b"{\"id\":\"b\"}\n{\"id\":\"c\"}\n{\"id\":\"d\"}\n",
            ),
            (
                b"{\"id\":\"a\"}\n{\"id\":\"c\"}\n{\"id\":\"d\"}\n{\"id\":\"e\"}\n",
                3,
                b"{\"id\":\"a\"}\n{\"id\":\"c\"}\n{\"id\":\"d\"}\n{\"id\":\"e\"}\n",
            ),
            (
                b"{\"id\":\"a\"}\n{\"id\":\"c\"}\n{\"id\":\"d",
                1,
                b"{\"id\":\"a\"}\n{\"id\":\"c\"}\n",
            ),
        ];
        for (existing, expected, after) in cases {
            let (n, file) = present(
                existing,
                &["{\"id\":\"c\"}", "{\"id\":\"d\"}", "{\"id\":\"e\"}"],
            );
            assert_eq!(n, expected, "{}", String::from_utf8_lossy(existing));
            assert_eq!(file, after, "{}", String::from_utf8_lossy(existing));
        }
        // A torn first line of the file is cut to nothing.
        assert_eq!(present(b"{\"id\":", &["{\"id\":\"c\"}"]), (0, Vec::new()));
        // A line is only matched whole: a longer line ending the same way is not the event.
        assert_eq!(
            present(b"{\"x\":{\"id\":\"c\"}\n", &["{\"id\":\"c\"}"]).0,
            0
        );
    }

    #[test]
    fn a_long_foreign_line_without_newline_is_refused_not_cut() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("events.jsonl");
        let foreign = format!("{{\"id\":\"a\"}}\n{}", "x".repeat(100));
        std::fs::write(&path, &foreign).expect("write");
        let mut file = OpenOptions::new()
            .append(true)
            .read(true)
            .open(&path)
            .expect("open");
        let (lines, lens) = batch(&["{\"id\":\"c\"}"]);
        let err = already_written(&mut file, &lines, &lens).expect_err("refused");
        assert!(
            err.to_string().contains("not written by this sink"),
            "{err}"
        );
        assert_eq!(std::fs::read_to_string(&path).expect("read"), foreign);
    }
}
