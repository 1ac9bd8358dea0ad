//! The `file:PATH` backend: a snapshot (the JSON `list --json` prints) or a TOML fixture.
//!
//! JSON is recognised by its first character (`{`, after any byte-order mark and blank space);
//! anything else is read as a fixture and simulated. Either way errors carry the file, line and
//! column, and the file is read within the bounds of `limits`.

use std::path::{Path, PathBuf};

use async_trait::async_trait;

use crate::sim::SimSource;
use crate::text::{escape_controls, read_text};
use crate::{Snapshot, TopologyError, TopologySource, limits};

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
        let text = read_text(&self.path, limits::MAX_INPUT_BYTES)?;
        if text.trim().is_empty() {
            return Err(TopologyError::EmptyFile { path: self.path.clone() });
        }
        if text.trim_start().starts_with('{') {
            snapshot_from_json(&text, &self.path)
        } else {
            if text.len() as u64 > limits::MAX_FIXTURE_BYTES {
                return Err(TopologyError::TooLarge { path: self.path.clone(), limit: limits::MAX_FIXTURE_BYTES });
            }
            SimSource::from_fixture(&text, &self.path)?.snapshot().await
        }
    }
}

/// A snapshot from the JSON `gpucluster list --json` prints, checked; `path` names it in errors.
/// Peer links are put in order first: their order in a file means nothing.
///
/// # Errors
/// [`TopologyError::Fixture`] with the line and column of a syntax error, or what
/// [`Snapshot::validate`] finds.
pub fn snapshot_from_json(text: &str, path: &Path) -> Result<Snapshot, TopologyError> {
    let mut snapshot: Snapshot = serde_json::from_str(text).map_err(|e| TopologyError::Fixture {
        path: path.to_owned(),
        line: Some(e.line()),
        column: Some(e.column()),
        message: format!("not a gpucluster snapshot: {}", escape_controls(&e.to_string())),
    })?;
    snapshot.hosts.iter_mut().for_each(|h| h.sort_peers());
    snapshot.validate()?;
    Ok(snapshot)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TopologySpec;

    fn load(name: &str, bytes: &[u8]) -> Result<Snapshot, TopologyError> {
        let dir = std::env::temp_dir().join(format!("gpu-topology-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join(name);
        std::fs::write(&path, bytes).expect("write");
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("rt");
        let result = rt.block_on(FileSource::new(&path).snapshot());
        let _ = std::fs::remove_file(&path);
        result
    }

    fn preset(name: &str) -> Snapshot {
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("rt");
        rt.block_on(TopologySpec::Sim(name.into()).open().expect("preset").snapshot()).expect("snapshot")
    }

    #[test]
    fn json_with_a_byte_order_mark_is_read_as_json() {
        let snapshot = preset("a30");
        let json = serde_json::to_string(&snapshot).expect("json");
        let with_bom = [b"\xef\xbb\xbf".as_slice(), json.as_bytes()].concat();
        assert_eq!(load("bom.json", &with_bom).expect("JSON with a BOM"), snapshot);
    }

    #[test]
    fn peer_links_in_any_order_are_put_in_order() {
        let mut snapshot = preset("hgx-h100");
        snapshot.hosts[0].peers.reverse();
        let loaded = load("reversed.json", serde_json::to_string(&snapshot).expect("json").as_bytes()).expect("load");
        assert_eq!(loaded, preset("hgx-h100"));
    }

    #[test]
    fn a_fixture_over_its_limit_is_refused_by_size() {
        let text =
            format!("hostname = \"big\"\n{}", "# padding\n".repeat((limits::MAX_FIXTURE_BYTES / 10 + 1) as usize));
        let err = load("big.toml", text.as_bytes()).expect_err("too big");
        assert!(matches!(err, TopologyError::TooLarge { limit, .. } if limit == limits::MAX_FIXTURE_BYTES), "{err}");
        assert!(err.to_string().contains("larger than 1 MiB"), "{err}");
    }
}
