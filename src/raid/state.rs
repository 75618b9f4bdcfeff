//! The RAID state that must survive a restart, in `state_dir/raid-state.json`.
//!
//! The degraded set is written (atomically, and fsynced) before any commit
//! that skipped a degraded backend is confirmed to a client: whatever order
//! backends come back in after a restart, a backend recorded as degraded is
//! never read from or written to until it is recovered. A missing file
//! means a new RAID with every backend considered current.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

const FILE_NAME: &str = "raid-state.json";

/// Why and since when a backend is out of service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DegradedRecord {
    pub reason: String,
    /// Unix time, seconds.
    pub since: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersistentState {
    /// Backend name → why it is degraded.
    #[serde(default)]
    pub degraded: BTreeMap<String, DegradedRecord>,
    /// Every oid below this may have been handed out (see `oids`).
    #[serde(default)]
    pub oids_reserved: u64,
    /// How far the shared blob directory is known to be complete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_blobs: Option<SharedBlobsMark>,
}

/// The shared blob directory holds the blob files of every transaction up
/// to `complete_to`. Written after start-up filled it and at a clean
/// shutdown: after a crash, the transactions since the last start are
/// checked again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedBlobsMark {
    pub dir: PathBuf,
    /// A tid, as an integer.
    pub complete_to: u64,
}

/// The state file of one zeoraid.
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    pub fn new(state_dir: &Path) -> StateFile {
        StateFile {
            path: state_dir.join(FILE_NAME),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the state; a missing file is an empty state, an unreadable or
    /// corrupt one an error (never silently a fresh start, which could
    /// promote a stale backend).
    pub fn load(&self) -> io::Result<PersistentState> {
        match fs::read(&self.path) {
            Ok(data) => serde_json::from_slice(&data).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: {e}", self.path.display()),
                )
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(PersistentState::default()),
            Err(e) => Err(e),
        }
    }

    /// Replaces the state atomically and durably: a temporary file is
    /// written and fsynced, renamed over the old one, and the directory is
    /// fsynced so the rename itself survives a crash.
    pub fn save(&self, state: &PersistentState) -> io::Result<()> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let temporary = self.path.with_extension("json.tmp");
        let data = serde_json::to_vec_pretty(state).map_err(io::Error::other)?;
        {
            let mut file = File::create(&temporary)?;
            file.write_all(&data)?;
            file.sync_all()?;
        }
        fs::rename(&temporary, &self.path)?;
        File::open(dir)?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_file_is_an_empty_state() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            StateFile::new(dir.path()).load().unwrap(),
            PersistentState::default()
        );
    }

    #[test]
    fn saved_state_loads_back_and_replaces_the_old() {
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile::new(dir.path());
        let mut state = PersistentState::default();
        state.degraded.insert(
            "b".into(),
            DegradedRecord {
                reason: "disconnected".into(),
                since: 1_795_904_332,
            },
        );
        file.save(&state).unwrap();
        assert_eq!(file.load().unwrap(), state);
        file.save(&PersistentState::default()).unwrap();
        assert_eq!(file.load().unwrap(), PersistentState::default());
        assert!(!dir.path().join("raid-state.json.tmp").exists());
    }

    #[test]
    fn corrupt_file_is_an_error_not_a_fresh_start() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(FILE_NAME), b"{not json").unwrap();
        let error = StateFile::new(dir.path()).load().unwrap_err();
        assert!(error.to_string().contains("raid-state.json"), "{error}");
    }
}
