//! The `file:PATH` backend: a snapshot (the JSON `list --json` prints) or a TOML fixture.
//!
//! JSON is recognised by its first character (`{`); anything else is read as a fixture and
//! simulated. Either way errors carry the file, line and column.

use std::path::PathBuf;

use async_trait::async_trait;

use crate::sim::SimSource;
use crate::{Snapshot, TopologyError, TopologySource};

/// A topology read from a file.
#[derive(Debug, Clone)]
pub struct FileSource {
    path: PathBuf,
}

impl FileSource {
    /// Reads `path` when a snapshot is asked for.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }
}

#[async_trait]
impl TopologySource for FileSource {
    fn describe(&self) -> String {
        format!("file:{}", self.path.display())
    }

    async fn snapshot(&self) -> Result<Snapshot, TopologyError> {
        let text = std::fs::read_to_string(&self.path)
            .map_err(|error| TopologyError::Io { path: self.path.clone(), error })?;
        if text.trim_start().starts_with('{') {
            let snapshot: Snapshot = serde_json::from_str(&text).map_err(|e| TopologyError::Fixture {
                path: self.path.clone(),
                line: Some(e.line()),
                column: Some(e.column()),
                message: format!("not a gpucluster snapshot: {e}"),
            })?;
            snapshot.validate()?;
            Ok(snapshot)
        } else {
            SimSource::from_fixture(&text, &self.path)?.snapshot().await
        }
    }
}
