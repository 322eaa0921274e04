//! `walsync list`: the databases under a replica URL, with their latest TXID,
//! last change, snapshot count, and files and bytes stored per level; and
//! `walsync list NAME`: what one database restores to (the range every
//! TXID of which restores, and the snapshots kept before it).
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
    /// Files and bytes per level, lowest first.
    pub levels: Vec<LevelSummary>,
}

/// The files of one level.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct LevelSummary {
    pub level: u32,
    pub files: usize,
    pub bytes: u64,
}

/// Files and bytes per level of `files`, lowest level first.
pub fn by_level(files: &[RemoteLtx]) -> Vec<LevelSummary> {
    let mut levels: std::collections::BTreeMap<u32, LevelSummary> = Default::default();
    for f in files {
        let l = levels.entry(f.id.level).or_insert(LevelSummary {
            level: f.id.level,
            files: 0,
            bytes: 0,
        });
        l.files += 1;
        l.bytes = l.bytes.saturating_add(f.size);
    }
    levels.into_values().collect()
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
            txid_hex: plan::txid_hex(newest.id.max_txid),
            last_change: time.map(fsutil::rfc3339_ms),
            snapshots: files
                .iter()
                .filter(|f| f.id.level == SNAPSHOT_LEVEL)
                .count(),
            files: files.len(),
            bytes: files.iter().fold(0u64, |sum, f| sum.saturating_add(f.size)),
            levels: by_level(&files),
        })
        .collect())
}

/// A TXID a database restores to, and when it was committed.
#[derive(Debug, Serialize)]
pub struct Point {
    pub txid: u64,
    pub txid_hex: String,
    /// RFC 3339 (`null` when the file's time cannot be read).
    pub time: Option<String>,
}

/// What `walsync list NAME` shows.
#[derive(Debug, Serialize)]
pub struct DbDetail {
    pub name: String,
    /// Every TXID from `oldest` to `newest` restores (by TXID and by time).
    pub oldest: Point,
    pub newest: Point,
    /// Snapshots before `oldest`, which restore on their own, newest first.
    pub snapshots_before: Vec<Point>,
    /// Other TXIDs before `oldest` that restore (compacted boundaries).
    pub other_points_before: usize,
    pub files: usize,
    pub bytes: u64,
    pub levels: Vec<LevelSummary>,
}

/// The restorable range of database `name` (one listing, and one small
/// read per point shown).
pub fn detail(storage: &dyn Storage, name: &str) -> Result<DbDetail> {
    let files = crate::catalog::list_db(storage, name)?;
    if files.is_empty() {
        return Err(Error::Restore(format!(
            "no backups for '{name}' in {}; check the name with `walsync list`",
            storage.describe()
        )));
    }
    let restorable = plan::restorable(&files);
    let newest = files.iter().map(|f| f.id.max_txid).max().unwrap_or(0);
    let mut oldest = newest;
    while oldest > 1 && restorable.contains(&(oldest - 1)) {
        oldest -= 1;
    }
    let points = plan::commit_points(&files);
    let point = |txid: u64| -> Result<Point> {
        let time = match points.iter().find(|f| f.id.max_txid == txid) {
            Some(f) => match plan::file_time_ms(storage, f) {
                Ok(t) => Some(fsutil::rfc3339_ms(t)),
                Err(Error::Integrity(_)) => None,
                Err(e) => return Err(e),
            },
            None => None,
        };
        Ok(Point {
            txid,
            txid_hex: plan::txid_hex(txid),
            time,
        })
    };
    let mut snapshot_txids: Vec<u64> = files
        .iter()
        .filter(|f| f.id.level == SNAPSHOT_LEVEL && f.id.max_txid < oldest)
        .map(|f| f.id.max_txid)
        .collect();
    snapshot_txids.sort_unstable_by(|a, b| b.cmp(a));
    snapshot_txids.dedup();
    let other_points_before = restorable
        .iter()
        .filter(|t| **t < oldest && !snapshot_txids.contains(t))
        .count();
    Ok(DbDetail {
        name: name.to_string(),
        oldest: point(oldest)?,
        newest: point(newest)?,
        snapshots_before: snapshot_txids
            .into_iter()
            .map(point)
            .collect::<Result<_>>()?,
        other_points_before,
        files: files.len(),
        bytes: files.iter().fold(0u64, |sum, f| sum.saturating_add(f.size)),
        levels: by_level(&files),
    })
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
