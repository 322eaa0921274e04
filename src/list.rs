//! `walsync list`: the databases under a replica URL, with their latest TXID,
//! last change, snapshot count, file count and bytes stored.
//!
//! Names are discovered from one listing of the whole replica: every key that
//! parses as an LTX file of the storage's layout names its database
//! (`<name>/<level %04x>/<min>-<max>.ltx` on S3, `<name>/ltx/<level>/...` in a
//! file replica; the name may contain `/`). Anything else is ignored.

use crate::catalog::{Catalog, RemoteLtx};
use crate::error::{Error, Result};
use crate::fsutil;
use crate::plan;
use crate::storage::{Storage, SNAPSHOT_LEVEL};
use serde::Serialize;

/// Threads reading last-change timestamps (one small request per database).
const LOOKUP_THREADS: usize = 8;

/// The names of every database in the replica, sorted.
pub fn database_names(storage: &dyn Storage) -> Result<Vec<String>> {
    Ok(Catalog::read_all(storage)?.names())
}

/// One row of `walsync list`.
#[derive(Debug, Serialize)]
pub struct DbSummary {
    pub name: String,
    pub txid: u64,
    pub txid_hex: String,
    /// RFC 3339 time of the newest file (`null` when it cannot be read).
    pub last_change: Option<String>,
    pub snapshots: usize,
    pub files: usize,
    pub bytes: u64,
}

/// Summaries of every database in the replica, sorted by name.
pub fn summaries(storage: &dyn Storage) -> Result<Vec<DbSummary>> {
    let dbs: Vec<(String, Vec<RemoteLtx>)> = Catalog::read_all(storage)?.into_databases().collect();
    // The newest file of each database: highest max TXID, lowest level.
    let newest: Vec<RemoteLtx> = dbs
        .iter()
        .filter_map(|(_, files)| {
            files
                .iter()
                .max_by_key(|f| (f.id.max_txid, std::cmp::Reverse(f.id.level)))
                .cloned()
        })
        .collect();
    let times = parallel_times(storage, &newest)?;
    Ok(dbs
        .into_iter()
        .zip(newest)
        .zip(times)
        .map(|(((name, files), newest), time)| DbSummary {
            name,
            txid: newest.id.max_txid,
            txid_hex: format!("{:016x}", newest.id.max_txid),
            last_change: time.map(fsutil::rfc3339_ms),
            snapshots: files
                .iter()
                .filter(|f| f.id.level == SNAPSHOT_LEVEL)
                .count(),
            files: files.len(),
            bytes: files.iter().fold(0u64, |sum, f| sum.saturating_add(f.size)),
        })
        .collect())
}

/// The commit time of each file, looked up by a few threads. A file whose
/// header cannot be read gets `None`; storage failures are errors.
fn parallel_times(storage: &dyn Storage, files: &[RemoteLtx]) -> Result<Vec<Option<i64>>> {
    crate::pool::map(
        files.iter().collect(),
        LOOKUP_THREADS,
        |f| match plan::file_time_ms(storage, f) {
            Ok(t) => Ok(Some(t)),
            Err(Error::Integrity(_)) => Ok(None),
            Err(e) => Err(e),
        },
    )
    .into_iter()
    .collect()
}
