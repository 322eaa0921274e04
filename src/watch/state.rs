//! The small local state kept per replicated database, so a restart (even
//! after `kill -9`) resumes where it left off instead of taking a snapshot.
//!
//! The state lives in a folder beside the database (`.<file>-walsync/`),
//! together with the page checksum sidecar, the upload spool and a lock file.
//! It records only what the replica holds durably: it is written after an
//! upload is acknowledged, atomically (temp file, fsync, rename).

use crate::error::{Error, IoContext, Result};
use crate::fsutil;
use crate::wal::WalPosition;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// What the replica durably holds for one database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalState {
    /// Format version of this file.
    pub version: u32,
    /// The replica (URL without credentials) and name this state belongs to.
    pub replica: String,
    pub name: String,
    /// Last TXID stored in the replica.
    pub txid: u64,
    pub page_size: u32,
    /// Database size in pages as of `txid`.
    pub db_pages: u32,
    /// LTX database checksum as of `txid`.
    pub db_checksum: u64,
    /// WAL position just after the last shipped commit frame.
    pub wal_offset: u64,
    pub wal_salt1: u32,
    pub wal_salt2: u32,
    pub wal_checksum: (u32, u32),
    /// When the last level-9 snapshot was stored (Unix ms).
    pub last_snapshot_ms: i64,
    /// The TXID that snapshot holds.
    pub last_snapshot_txid: u64,
    /// Pages shipped since that snapshot (`snapshot_max_changes`).
    #[serde(default)]
    pub pages_since_snapshot: u64,
    /// When the first change after that snapshot was shipped (Unix ms; 0:
    /// none yet), for `snapshot_max_interval`.
    #[serde(default)]
    pub first_change_ms: i64,
    /// When the last change was shipped (Unix ms; 0: none since start of
    /// this record), for `snapshot_on_idle`.
    #[serde(default)]
    pub last_change_ms: i64,
    /// Set while walsync runs a checkpoint of its own whose file is not
    /// stored yet: if walsync stops before it is, the next start finds the
    /// WAL restarted and says why.
    #[serde(default)]
    pub checkpointing: bool,
}

const VERSION: u32 = 1;

impl LocalState {
    pub fn position(&self) -> WalPosition {
        WalPosition {
            offset: self.wal_offset,
            salt1: self.wal_salt1,
            salt2: self.wal_salt2,
            checksum: self.wal_checksum,
        }
    }

    pub fn set_position(&mut self, p: WalPosition) {
        self.wal_offset = p.offset;
        self.wal_salt1 = p.salt1;
        self.wal_salt2 = p.salt2;
        self.wal_checksum = p.checksum;
    }
}

/// The per-database folder of local files.
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    /// `.<file>-walsync/` beside the database, created if missing.
    pub fn for_database(db_path: &Path) -> Result<StateDir> {
        let file = db_path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let dir = db_path.with_file_name(format!(".{file}-walsync"));
        std::fs::create_dir_all(&dir).map_err(|e| {
            Error::Database(format!(
                "cannot create walsync's state folder {}: {e}; walsync needs write access to the database's folder",
                dir.display()
            ))
        })?;
        Ok(StateDir { dir })
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    /// The folder itself.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The saved state, or `None` when there is none or it belongs to another
    /// replica or name (an unreadable file is treated as absent: the caller
    /// then takes a fresh snapshot, which is always safe).
    pub fn load(&self, replica: &str, name: &str) -> Option<LocalState> {
        let bytes = std::fs::read(self.path("state.json")).ok()?;
        let state: LocalState = serde_json::from_slice(&bytes).ok()?;
        (state.version == VERSION && state.replica == replica && state.name == name)
            .then_some(state)
    }

    /// Saves the state atomically.
    pub fn save(&self, state: &LocalState) -> Result<()> {
        let mut state = state.clone();
        state.version = VERSION;
        let bytes = serde_json::to_vec_pretty(&state)
            .map_err(|e| Error::Other(format!("encoding state: {e}")))?;
        fsutil::write_atomic(&self.path("state.json"), &bytes)
    }

    /// Removes leftover spool files from an earlier run.
    pub fn clean_spool(&self) -> Result<()> {
        let entries =
            std::fs::read_dir(&self.dir).local_io(|| format!("reading {}", self.dir.display()))?;
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with("spool-") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(())
    }
}

/// The name a database's replica was given in `replica`, as its local state
/// records it, without creating anything (see [`crate::names`], rule 2).
pub fn kept_name(db_path: &Path, replica: &str) -> Option<String> {
    peek(db_path, replica).map(|state| state.name)
}

/// The local state a database keeps for `replica`, read without creating
/// anything (`explain` estimates a WAL rate from it).
pub fn peek(db_path: &Path, replica: &str) -> Option<LocalState> {
    let file = db_path.file_name()?.to_string_lossy().into_owned();
    let path = db_path
        .with_file_name(format!(".{file}-walsync"))
        .join("state.json");
    let bytes = std::fs::read(path).ok()?;
    let state: LocalState = serde_json::from_slice(&bytes).ok()?;
    (state.replica == replica).then_some(state)
}

/// A fresh state value (not yet saved).
pub fn new_state(replica: &str, name: &str, page_size: u32) -> LocalState {
    LocalState {
        version: VERSION,
        replica: replica.to_string(),
        name: name.to_string(),
        txid: 0,
        page_size,
        db_pages: 0,
        db_checksum: 0,
        wal_offset: 0,
        wal_salt1: 0,
        wal_salt2: 0,
        wal_checksum: (0, 0),
        last_snapshot_ms: 0,
        last_snapshot_txid: 0,
        pages_since_snapshot: 0,
        first_change_ms: 0,
        last_change_ms: 0,
        checkpointing: false,
    }
}
