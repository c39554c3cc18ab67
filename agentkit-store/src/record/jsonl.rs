//! Run records as JSON lines in a file.

use std::path::{Path, PathBuf};

use agentkit_core::{Error, Result};
use async_trait::async_trait;
use tokio::fs::{File, OpenOptions};
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;

use super::{RecordStore, RunRecord};

/// Appends one JSON object per line to a file, flushed and synced per record.
///
/// Good for a single process and for shipping with a log collector. [`recent`](RecordStore::recent)
/// reads the whole file: use PostgreSQL for querying at volume.
#[derive(Debug)]
pub struct JsonlRecordStore {
    path: PathBuf,
    file: Mutex<File>,
}

impl JsonlRecordStore {
    /// Opens (creating if needed) the file at `path` for appending.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_owned();
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .await
            .map_err(|e| Error::unavailable(format!("cannot open {}: {e}", path.display())))?;
        Ok(Self {
            path,
            file: Mutex::new(file),
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[async_trait]
impl RecordStore for JsonlRecordStore {
    async fn append(&self, record: &RunRecord) -> Result<()> {
        let mut line = serde_json::to_vec(record)
            .map_err(|e| Error::internal(format!("cannot encode record: {e}")))?;
        line.push(b'\n');
        let mut file = self.file.lock().await;
        let written = async {
            file.write_all(&line).await?;
            file.flush().await?;
            file.sync_data().await
        }
        .await;
        written.map_err(|e| {
            Error::unavailable(format!("cannot append to {}: {e}", self.path.display()))
        })
    }

    async fn recent(&self, agent: Option<&str>, limit: usize) -> Result<Vec<RunRecord>> {
        let text = tokio::fs::read_to_string(&self.path)
            .await
            .map_err(|e| Error::unavailable(format!("cannot read {}: {e}", self.path.display())))?;
        let mut records = Vec::new();
        for line in text.lines().rev() {
            if records.len() >= limit {
                break;
            }
            if line.trim().is_empty() {
                continue;
            }
            // A torn last line (a crash mid-write) is skipped, not fatal.
            let Ok(record) = serde_json::from_str::<RunRecord>(line) else {
                continue;
            };
            if agent.is_none_or(|a| a == record.agent) {
                records.push(record);
            }
        }
        Ok(records)
    }
}
