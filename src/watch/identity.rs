//! Which database a replica belongs to: walsync never appends one
//! database's pages to another's chain.
//!
//! Every replica walsync starts records its source in a small object
//! beside the levels, `<name>/.walsync-source` (JSON: the database's
//! absolute path and the host), which Litestream never reads. When walsync
//! has no local state for a replica that already holds files, it checks
//! that record before it ships anything:
//!
//! - no record (a Litestream replica, or one an older walsync wrote): the
//!   replica is taken over, as documented for migrations;
//! - the same path: the same database (its local state was lost, or it was
//!   restored in place, the container idiom `restore --if-db-not-exists`
//!   then `watch`); the chain carries on;
//! - another path: it is the same database only when its content equals the
//!   replica's newest state (a copy restored elsewhere, then watched);
//!   otherwise walsync refuses, naming both databases, and writes nothing.
//!
//! `--takeover` makes a database the replica's source on purpose.
//! With usable local state none of this runs: the state proves the
//! database is the replica's source.

use super::shipper::Shipper;
use crate::catalog::RemoteLtx;
use crate::error::{Error, Result};
use crate::storage::{db_prefix, ObjectMeta};
use serde::{Deserialize, Serialize};
use std::io::Read;

/// The record of a replica's source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceRecord {
    /// The database's absolute path.
    pub path: String,
    /// The host it lives on.
    pub host: String,
}

/// The source the replica of `name` records, if it records one walsync
/// can read.
pub fn source_of(
    storage: &dyn crate::storage::Storage,
    name: &str,
) -> Result<Option<SourceRecord>> {
    let Some(dl) = storage.get(&record_key(name))? else {
        return Ok(None);
    };
    let mut text = String::new();
    dl.body
        .take(64 * 1024)
        .read_to_string(&mut text)
        .map_err(|e| Error::Storage(format!("reading {}: {e}", record_key(name))))?;
    // A record walsync cannot read says nothing about the source.
    Ok(serde_json::from_str(&text).ok())
}

/// The key of the record under a database's name.
pub fn record_key(name: &str) -> String {
    format!("{}.walsync-source", db_prefix(name))
}

impl Shipper {
    /// Before walsync writes to a replica it has no local state for: checks
    /// that the replica's recorded source is this database (see the module
    /// doc), then records this database as its source. `files` is the
    /// replica's listing (empty: a new replica).
    pub(super) fn claim_replica(&mut self, files: &[RemoteLtx]) -> Result<()> {
        if !files.is_empty() && !self.settings.takeover {
            if let Some(record) = self.read_record()? {
                self.check_record(&record, files)?;
            }
        }
        self.write_record()
    }

    fn check_record(&mut self, record: &SourceRecord, files: &[RemoteLtx]) -> Result<()> {
        let mine = self.key.display().to_string();
        if record.path == mine {
            return Ok(());
        }
        if let Some(latest) = self.replica_checksum(files)? {
            if latest == self.checksum_now()? {
                return Ok(());
            }
        }
        Err(Error::Usage(format!(
            "replica '{}' in {} belongs to {} (on {}), and {mine} is another database (its content is not the replica's newest state); nothing was written. Give {mine} its own name (`name` in its [[databases]] entry, or --name), or, to make it the replica's source on purpose, run again with --takeover",
            self.name,
            self.storage.describe(),
            record.path,
            record.host
        )))
    }

    /// The database checksum after the replica's newest file, when its
    /// writer recorded one.
    fn replica_checksum(&self, files: &[RemoteLtx]) -> Result<Option<u64>> {
        let Some(newest) = files
            .iter()
            .max_by_key(|f| (f.id.max_txid, std::cmp::Reverse(f.id.level)))
        else {
            return Ok(None);
        };
        let head = self.storage.head(&newest.key)?;
        Ok(head
            .and_then(|h| h.meta.parsed_db_checksums())
            .map(|(_, post)| post)
            .filter(|&post| post != 0))
    }

    fn read_record(&self) -> Result<Option<SourceRecord>> {
        source_of(self.storage.as_ref(), &self.name)
    }

    fn write_record(&self) -> Result<()> {
        let record = SourceRecord {
            path: self.key.display().to_string(),
            host: hostname(),
        };
        let body = serde_json::to_vec(&record)
            .map_err(|e| Error::Other(format!("encoding the source record: {e}")))?;
        self.storage.put(
            &record_key(&self.name),
            &mut std::io::Cursor::new(&body),
            body.len() as u64,
            &ObjectMeta::default(),
        )
    }
}

/// This machine's host name (empty when it cannot be read).
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}
