//! Read replicas: `walsync replicate NAME -b URL --local PATH` (and
//! `restore NAME -o PATH --follow`) keeps a local database that follows a
//! replica, for readers that query it: offloaded reads, analytics, a warm
//! standby. It never writes to the replica's storage.
//!
//! How it goes:
//! - Start: the latest state is restored into `PATH` (the restore's checks,
//!   written beside it and renamed into place), or, when a position is kept
//!   beside `PATH` ([`position`]), the local database is proven to be the
//!   state it names (its database checksum, page by page) and followed on
//!   without downloading the snapshot again.
//! - Every interval: one listing of level 0 after its TXID (`start-after`);
//!   the files that continue it are downloaded, checked (length, SHA-256,
//!   LTX checksums, the database checksum before and after each) and
//!   applied, all of a poll's files in one SQLite transaction through
//!   [`pages`]. When level 0 no longer holds the next TXID (compaction
//!   pruned it), the other levels are listed and the files that continue
//!   it are used; when nothing continues it, no file but full images
//!   reaches back to its next TXID (retention pruned its history) and a
//!   newer full image exists, the position is proven gone from storage, and
//!   the replica re-bootstraps from that image, in one transaction too.
//! - Damage, or a gap nothing bridges, stops it with the last good state in
//!   place (the transaction is rolled back). It never guesses.
//!
//! Invariant: readers see only whole states: the local database is in WAL
//! mode and walsync writes it only in transactions that end at a TXID the
//! primary committed. Another program writing it is detected (SQLite's
//! `data_version`, and the checksum on start) and stops the follower.

pub mod pages;
pub mod position;

use crate::apply::Applier;
use crate::cancel::CancelToken;
use crate::catalog::{self, RemoteLtx};
use crate::error::{Error, ErrorClass, IoContext, Result};
use crate::event::{Event, EventSink};
use crate::fetch;
use crate::restore::{self, RestoreOptions, RestoreOutcome};
use crate::storage::Storage;
use pages::ReplicaPages;
use position::{Applied, Position};
use rusqlite::Connection;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How to follow.
#[derive(Debug, Clone)]
pub struct FollowOptions {
    pub name: String,
    /// The local database readers query.
    pub local: PathBuf,
    /// How often storage is asked for new files.
    pub interval: Duration,
    /// Apply what is there once and return (exit status for scripts).
    pub once: bool,
    /// Replace `local` when it exists and no position is kept for it.
    pub force: bool,
    /// Cancelled: return after the batch under way.
    pub cancel: CancelToken,
    /// Where the follower publishes its position (for metrics).
    pub status: std::sync::Arc<FollowStatus>,
}

/// What a follower publishes: the TXID the local database holds, when the
/// primary committed it and when it became visible (Unix ms).
#[derive(Debug, Default)]
pub struct FollowStatus {
    txid: AtomicU64,
    committed_ms: AtomicI64,
    applied_ms: AtomicI64,
}

impl FollowStatus {
    fn set(&self, applied: &Applied, visible_ms: i64) {
        self.txid.store(applied.txid, Ordering::Relaxed);
        self.committed_ms
            .store(applied.committed_ms, Ordering::Relaxed);
        self.applied_ms.store(visible_ms, Ordering::Relaxed);
    }

    /// (TXID, committed at, visible at).
    pub fn get(&self) -> (u64, i64, i64) {
        (
            self.txid.load(Ordering::Relaxed),
            self.committed_ms.load(Ordering::Relaxed),
            self.applied_ms.load(Ordering::Relaxed),
        )
    }
}

/// Follows the replica until `opts.cancel` is cancelled (or once). Errors:
/// the local database changed by another program, or not the state kept
/// ([`Error::Restore`]); damage or a gap in the replica
/// ([`Error::Integrity`]); storage failing, with `once`.
pub fn follow(storage: &dyn Storage, opts: &FollowOptions, events: &dyn EventSink) -> Result<()> {
    let mut follower = Follower::start(storage, opts, events)?;
    loop {
        match follower.poll() {
            Ok(()) => {}
            // A signal mid-batch: the batch was rolled back; a clean stop.
            Err(Error::Cancelled) => return Ok(()),
            Err(e) if opts.once || !transient(&e) => return Err(e),
            Err(e) => events.emit(Event::PollFailed {
                db: opts.name.clone(),
                error: e.to_string(),
                class: e.error_class(),
                retry_in: opts.interval,
            }),
        }
        if opts.once {
            return Ok(());
        }
        let until = Instant::now() + opts.interval;
        while Instant::now() < until {
            if opts.cancel.is_cancelled() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20).min(until - Instant::now()));
        }
    }
}

/// Whether a failed poll is tried again at the next interval: storage
/// trouble is; damage, a gap, or a local database someone else changed is
/// not.
fn transient(e: &Error) -> bool {
    matches!(
        e.error_class(),
        ErrorClass::Storage | ErrorClass::Credentials
    )
}

struct Follower<'s> {
    storage: &'s dyn Storage,
    opts: &'s FollowOptions,
    events: &'s dyn EventSink,
    replica: String,
    conn: Connection,
    applied: Applied,
    /// SQLite's `data_version` after walsync's last commit: it moves when
    /// another connection commits.
    data_version: i64,
    /// When an empty level 0 calls for a listing of every level again.
    next_full_look: Instant,
}

/// How often a follower that finds nothing at level 0 lists every level.
const FULL_LOOK_EVERY: Duration = Duration::from_secs(300);

impl<'s> Follower<'s> {
    /// Resumes from the kept position, or restores the latest state.
    fn start(
        storage: &'s dyn Storage,
        opts: &'s FollowOptions,
        events: &'s dyn EventSink,
    ) -> Result<Follower<'s>> {
        let replica = storage.describe();
        let kept = position::load(&opts.local)
            .filter(|p| p.replica == replica && p.name == opts.name)
            .filter(|_| opts.local.exists());
        let (applied, conn) = match kept {
            Some(p) => {
                let conn = open(opts)?;
                (resume(&conn, opts, &p)?, conn)
            }
            None => bootstrap(storage, opts, events)?,
        };
        let data_version = data_version(&conn)?;
        opts.status.set(&applied, crate::fsutil::now_ms());
        let follower = Follower {
            storage,
            opts,
            events,
            replica,
            conn,
            applied,
            data_version,
            next_full_look: Instant::now(),
        };
        follower.save(None)?;
        Ok(follower)
    }

    /// One poll: what continues the local state, applied.
    fn poll(&mut self) -> Result<()> {
        self.check_unchanged()?;
        let txid = self.applied.txid;
        let after = catalog::list_level_from(self.storage, &self.opts.name, 0, txid + 1)?;
        let mut chain = continuing(&after, txid);
        if chain.is_empty() && after.is_empty() {
            // Nothing new at level 0, or level 0 was pruned past the
            // position while the primary went idle (the replica was down,
            // or polls more slowly than level 0 is kept): the other levels
            // are looked at on the first poll and then every
            // FULL_LOOK_EVERY, a listing more per few minutes.
            if Instant::now() < self.next_full_look {
                return Ok(());
            }
        }
        if chain.is_empty() {
            self.next_full_look = Instant::now() + FULL_LOOK_EVERY;
            // Level 0 no longer holds the next TXID: compaction pruned it.
            let all = catalog::list_db(self.storage, &self.opts.name)?;
            chain = continuing(&all, txid);
            if chain.is_empty() {
                return self.rebootstrap(&all);
            }
        }
        self.apply(&chain, false)
    }

    /// Applies `chain` in one transaction (from scratch when `fresh`: a
    /// re-bootstrap from a full image).
    fn apply(&mut self, chain: &[RemoteLtx], fresh: bool) -> Result<()> {
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        let applied = self.apply_in_transaction(chain, fresh);
        let committed = applied.and_then(|next| {
            self.save(Some(next))?;
            self.conn.execute_batch("COMMIT")?;
            Ok(next)
        });
        let next = match committed {
            Ok(next) => next,
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                return Err(e);
            }
        };
        self.applied = Applied {
            local_page1: page1_checksum(&self.conn)?,
            ..next
        };
        self.data_version = data_version(&self.conn)?;
        self.save(None)?;
        let visible_ms = crate::fsutil::now_ms();
        self.opts.status.set(&next, visible_ms);
        let lag_ms = visible_ms.saturating_sub(next.committed_ms);
        self.events.emit(Event::Followed {
            db: self.opts.name.clone(),
            txid: next.txid,
            files: chain.len(),
            lag: Duration::from_millis(u64::try_from(lag_ms).unwrap_or(0)),
        });
        Ok(())
    }

    fn apply_in_transaction(&self, chain: &[RemoteLtx], fresh: bool) -> Result<Applied> {
        let a = &self.applied;
        let target = ReplicaPages::new(&self.conn, a.pages, a.page_size, a.page1);
        let mut applier = if fresh {
            Applier::new(target)
        } else {
            Applier::resume(target, a.page_size, a.pages, a.checksum, a.txid)
        };
        let stop = fetch::Stop::new(&self.opts.cancel);
        for f in chain {
            let (mut body, meta) = self.download(f, &stop)?;
            applier.apply(f, &mut body, meta)?;
        }
        applier.pages_target.finish()?;
        Ok(Applied {
            txid: applier.txid(),
            checksum: applier.checksum,
            pages: applier.pages,
            page_size: applier.page_size.unwrap_or(self.applied.page_size),
            committed_ms: applier.timestamp_ms,
            page1: applier.pages_target.page1(),
            // Known once committed (see `apply`).
            local_page1: self.applied.local_page1,
        })
    }

    /// Downloads `f` whole and checked (length, SHA-256): small files into
    /// memory, larger ones ([`IN_MEMORY`]) into an unlinked file beside the
    /// replica. Returns its body and the database checksums its metadata
    /// records.
    fn download(
        &self,
        f: &RemoteLtx,
        stop: &fetch::Stop,
    ) -> Result<(Box<dyn Read>, RecordedChecksums)> {
        // A file listed and then deleted (retention, after a compaction
        // merged it) is storage moving on, not damage: the next poll plans
        // again from what is there.
        let dl = fetch::get(self.storage, f).map_err(|e| match e.fault {
            crate::apply::Fault::Missing => Error::Storage(e.error.message().to_string()),
            _ => e.error,
        })?;
        let meta = dl.head.meta.parsed_db_checksums();
        if f.size <= IN_MEMORY {
            let mut body = Vec::with_capacity(usize::try_from(f.size).unwrap_or(0));
            fetch::read_checked(self.storage, f, dl, stop, |chunk| {
                body.extend_from_slice(chunk);
                Ok(())
            })?;
            return Ok((Box::new(std::io::Cursor::new(body)), meta));
        }
        let path = staging_path(&self.opts.local);
        let what = || format!("writing {}", path.display());
        let mut file = std::fs::File::create(&path).local_io(what)?;
        let written = fetch::read_checked(self.storage, f, dl, stop, |chunk| {
            file.write_all(chunk).local_io(what)
        });
        let opened = std::fs::File::open(&path).local_io(what);
        let _ = std::fs::remove_file(&path);
        written?;
        Ok((Box::new(std::io::BufReader::new(opened?)), meta))
    }

    /// Nothing continues the local state. The position is proven gone
    /// only when retention pruned it: no file but full images reaches back
    /// to the next TXID, and a newer full image exists; the replica then
    /// starts over from it, in one transaction. Files older than the
    /// position still there while the next TXID is missing are a gap:
    /// stop.
    fn rebootstrap(&mut self, all: &[RemoteLtx]) -> Result<()> {
        let txid = self.applied.txid;
        let latest = all.iter().map(|f| f.id.max_txid).max().unwrap_or(0);
        if latest <= txid {
            return Ok(());
        }
        let plan = position_pruned(all, txid)
            .then(|| crate::plan::plan_chain(all, latest).ok())
            .flatten();
        let Some(plan) = plan else {
            return Err(Error::Integrity(format!(
                "replica '{}' in {} has no file after TXID {} (its newest is {}) and its history there was not pruned (a gap: files are missing), or no newer snapshot to start over from; the local database keeps TXID {}",
                self.opts.name,
                self.replica,
                crate::plan::txid_hex(txid),
                crate::plan::txid_hex(latest),
                crate::plan::txid_hex(txid)
            )));
        };
        self.apply(&plan, true)
    }

    /// Fails when another program committed to the local database.
    fn check_unchanged(&self) -> Result<()> {
        if data_version(&self.conn)? == self.data_version && self.opts.local.exists() {
            return Ok(());
        }
        Err(Error::Restore(format!(
            "{} was changed by another program since walsync applied TXID {}; a read replica must only be read. Move it away (with {}) and run walsync replicate again to start over",
            self.opts.local.display(),
            crate::plan::txid_hex(self.applied.txid),
            position::path_for(&self.opts.local).display()
        )))
    }

    fn save(&self, pending: Option<Applied>) -> Result<()> {
        position::save(
            &self.opts.local,
            &Position {
                replica: self.replica.clone(),
                name: self.opts.name.clone(),
                applied: self.applied,
                pending,
            },
        )
    }
}

/// The database checksums before and after a file, as its metadata
/// records them (walsync's files carry them in the LTX itself too).
type RecordedChecksums = Option<(u64, u64)>;

/// Files up to this size are held in memory while they are applied.
const IN_MEMORY: u64 = 8 << 20;

/// Where a large file waits while it is applied (unlinked once opened).
fn staging_path(local: &std::path::Path) -> PathBuf {
    let file = local
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    local.with_file_name(format!(".{file}-walsync-replica.ltx"))
}

/// The files that continue `txid`, in order: each starts at or before the
/// next TXID and ends after the state so far (a compaction may start
/// before it, see [`crate::plan`]); the one reaching furthest is taken.
/// Full images (min TXID 1) are not continuations.
fn continuing(files: &[RemoteLtx], txid: u64) -> Vec<RemoteLtx> {
    let mut chain = Vec::new();
    let mut at = txid;
    while let Some(next) = files
        .iter()
        .filter(|f| f.id.min_txid > 1 && f.id.min_txid <= at + 1 && f.id.max_txid > at)
        .max_by_key(|f| (f.id.max_txid, std::cmp::Reverse(f.id.level)))
    {
        at = next.id.max_txid;
        chain.push(next.clone());
    }
    chain
}

/// Whether retention pruned the history at `txid`: no file but full
/// images starts at or before the next TXID, and a full image newer than
/// `txid` exists.
fn position_pruned(files: &[RemoteLtx], txid: u64) -> bool {
    let history_there = files
        .iter()
        .any(|f| !f.image && f.id.min_txid > 1 && f.id.min_txid <= txid + 1);
    let newer_image = files.iter().any(|f| f.image && f.id.max_txid > txid);
    !history_there && newer_image
}

/// Proves the local database is the state `kept` names (or the batch it
/// was committing), and returns it. Page 1 counts as the primary wrote
/// it; the local page 1 must be the one walsync left (any commit by
/// another program rewrites it), unless the batch under way was.
fn resume(conn: &Connection, opts: &FollowOptions, kept: &Position) -> Result<Applied> {
    let scan = pages::scan(conn)?;
    let applied = kept.applied;
    let matches_applied =
        scan.page1 == applied.local_page1 && scan.as_primary(applied.page1) == applied.checksum;
    let pending = kept
        .pending
        .filter(|p| scan.as_primary(p.page1) == p.checksum)
        .map(|p| Applied {
            local_page1: scan.page1,
            ..p
        });
    matches_applied
        .then_some(applied)
        .or(pending)
        .ok_or_else(|| {
            Error::Restore(format!(
                "{} is not the state walsync left it in (TXID {}): another program changed it. Move it away (with {}) and run walsync replicate again to start over",
                opts.local.display(),
                crate::plan::txid_hex(kept.applied.txid),
                position::path_for(&opts.local).display()
            ))
        })
}

/// Restores the latest state into `opts.local`; returns what it holds and
/// the connection to follow it with.
fn bootstrap(
    storage: &dyn Storage,
    opts: &FollowOptions,
    events: &dyn EventSink,
) -> Result<(Applied, Connection)> {
    position::forget(&opts.local);
    let restore_opts = RestoreOptions {
        name: opts.name.clone(),
        output: opts.local.clone(),
        txid: None,
        point_in_time_ms: None,
        force: opts.force,
        if_db_not_exists: false,
        if_replica_exists: false,
        parallelism: 8,
        cancel: opts.cancel.clone(),
    };
    let RestoreOutcome::Restored {
        txid, committed_ms, ..
    } = restore::run(storage, &restore_opts, events)?
    else {
        return Err(Error::Restore(format!(
            "nothing to follow for '{}' in {}",
            opts.name,
            storage.describe()
        )));
    };
    // The restored file is the primary's, page 1 included.
    let conn = open(opts)?;
    let scan = pages::scan(&conn)?;
    let page_size: u32 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    let applied = Applied {
        txid,
        checksum: scan.checksum,
        pages: scan.pages,
        page_size,
        committed_ms,
        page1: scan.page1,
        local_page1: scan.page1,
    };
    Ok((applied, conn))
}

/// Opens the local database for writing pages: WAL mode (readers never
/// wait), a busy timeout for a reader's checkpoint, `sqlite_dbpage` there.
fn open(opts: &FollowOptions) -> Result<Connection> {
    let conn = Connection::open(&opts.local)?;
    conn.busy_timeout(Duration::from_secs(30))?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Error::Database(format!(
            "{} cannot be put in WAL mode (it is in {mode}); a read replica needs it so readers never see a half-applied state",
            opts.local.display()
        )));
    }
    pages::check_available(&conn)?;
    Ok(conn)
}

/// The checksum of the local page 1.
fn page1_checksum(conn: &Connection) -> Result<u64> {
    let data: Vec<u8> =
        conn.query_row("SELECT data FROM sqlite_dbpage WHERE pgno = 1", [], |r| {
            r.get(0)
        })?;
    Ok(crate::ltx::page_checksum(1, &data))
}

fn data_version(conn: &Connection) -> Result<i64> {
    Ok(conn.query_row("PRAGMA data_version", [], |r| r.get(0))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::LtxId;

    fn file(level: u32, min: u64, max: u64) -> RemoteLtx {
        let id = LtxId {
            level,
            min_txid: min,
            max_txid: max,
        };
        let mut f = RemoteLtx::new(id, format!("app/{level}/{min}-{max}"), 100);
        f.image = level == 9;
        f
    }

    #[test]
    fn a_compacted_file_continues_where_level_0_was_pruned() {
        // Level 0 holds 7.. only; level 1 merged 4-6 (and 2-3 before it).
        let files = [
            file(9, 1, 1),
            file(1, 2, 3),
            file(1, 4, 6),
            file(0, 7, 7),
            file(0, 8, 8),
        ];
        let chain: Vec<(u64, u64)> = continuing(&files, 3)
            .iter()
            .map(|f| (f.id.min_txid, f.id.max_txid))
            .collect();
        assert_eq!(chain, [(4, 6), (7, 7), (8, 8)]);
        // A compaction that starts before the position continues it too.
        let files = [file(1, 2, 6), file(0, 7, 7)];
        let chain: Vec<u64> = continuing(&files, 4)
            .iter()
            .map(|f| f.id.max_txid)
            .collect();
        assert_eq!(chain, [6, 7]);
        // Snapshots never continue a position.
        assert!(continuing(&[file(9, 1, 9)], 3).is_empty());
    }

    #[test]
    fn only_a_pruned_position_with_a_newer_snapshot_starts_over() {
        // Retention removed everything up to 10; a snapshot at 12 remains.
        let pruned = [
            file(9, 1, 2),
            file(9, 1, 12),
            file(0, 11, 11),
            file(0, 13, 13),
        ];
        assert!(position_pruned(&pruned, 5));
        // A file before the position is still there and 6 is missing: a gap.
        let gap = [file(9, 1, 12), file(0, 5, 5), file(0, 7, 7)];
        assert!(!position_pruned(&gap, 5));
        // No newer image to start over from.
        assert!(!position_pruned(&[file(9, 1, 2), file(0, 11, 11)], 5));
    }
}
