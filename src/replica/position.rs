//! Where a read replica is: the state `walsync replicate` keeps beside the
//! local database (`.<file>-walsync-replica.json`), written atomically after
//! each committed batch.
//!
//! Invariant: the file names a state the local database held after a
//! commit of walsync's. A kill between a commit and this file's update
//! leaves it one batch behind; the follower tells the two apart on start
//! by the database's checksum (it must equal this one, or the one of the
//! batch `pending` names), and refuses a database that matches neither:
//! someone else wrote it.

use crate::error::{Error, Result};
use crate::fsutil;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// A state of the replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub txid: u64,
    /// LTX database checksum of the local database at `txid`.
    pub checksum: u64,
    pub pages: u32,
    pub page_size: u32,
    /// When the primary committed `txid` (Unix ms, from its LTX file).
    pub committed_ms: i64,
    /// The page checksum of page 1 as the primary wrote it, and as it is in
    /// the local file: SQLite rewrites three fields of page 1 (change
    /// counter, version-valid-for, SQLite version) whenever a transaction
    /// writes it, so the local page 1 is the primary's but for those.
    pub page1: u64,
    pub local_page1: u64,
}

/// What the position file holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// The replica URL (without credentials) and the database's name.
    pub replica: String,
    pub name: String,
    pub applied: Applied,
    /// A batch being committed when this was written, if one.
    pub pending: Option<Applied>,
}

/// The position file of the local database `local`.
pub fn path_for(local: &Path) -> PathBuf {
    let file = local
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    local.with_file_name(format!(".{file}-walsync-replica.json"))
}

/// The position kept for `local`, if one is there and readable.
pub fn load(local: &Path) -> Option<Position> {
    let bytes = std::fs::read(path_for(local)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Saves `position` atomically.
pub fn save(local: &Path, position: &Position) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(position)
        .map_err(|e| Error::Other(format!("encoding the replica's position: {e}")))?;
    fsutil::write_atomic(&path_for(local), &bytes)
}

/// Removes the position file (a fresh bootstrap).
pub fn forget(local: &Path) {
    let _ = std::fs::remove_file(path_for(local));
}
