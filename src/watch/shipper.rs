//! Shipping one database: what the replica durably holds of it, and what the
//! next file must be.
//!
//! A [`Shipper`] is owned by one poller thread. [`Shipper::poll`] builds at
//! most one [`Batch`] at a time (a level-0 file for new transactions, a
//! level-0 diff or full copy when the WAL cannot be followed, or a level-9
//! snapshot) into a spool file (or memory, while that disk is full); the
//! batch is uploaded elsewhere and reported
//! back through [`Shipper::uploaded`] or [`Shipper::upload_failed`]. Until
//! then nothing else is built, so the remote TXID chain never has a hole,
//! and the local state advances only after the object is stored.
//!
//! # The continuity rule
//!
//! While walsync's read transaction is held, SQLite can restart the WAL only
//! if every frame that existed when the read began was backfilled and none
//! was appended since. So once a batch built in the current read epoch
//! reached the WAL end and is stored, the shipped position covers the read
//! mark ([`Continuity::Covered`]): a WAL restart loses nothing and reading
//! continues in the new log. Any other reset (salt change, shrink, unknown
//! frames, a reset found at start-up) cannot be followed: the next file is a
//! diff of every page whose bytes differ from what was shipped
//! ([`Continuity::NeedsDiff`]), found through the page record
//! ([`super::pagesums`]). A file replaced under walsync is answered with a
//! full copy of the new file ([`Continuity::NeedsFull`]).
//!
//! Invariant: `continuity` becomes `NeedsDiff`/`NeedsFull` only while no
//! batch is pending, so the diff or full copy stored next is the one that
//! answers it.

use super::build::{Batch, BatchKind, Incremental};
use super::pagesums::PageSums;
use super::source::{Identity, Source, WalStamp};
use super::spool::SpoolPlace;
use super::state::{LocalState, StateDir};
use super::status::Health;
use crate::backoff::Backoff;
use crate::catalog;
use crate::error::{Error, Result};
use crate::event::{Event, EventSink};
use crate::ltx;
use crate::storage::{LtxId, Storage, SNAPSHOT_LEVEL};
use crossbeam_channel::Sender;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Per-database settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub sync_interval: Duration,
    /// The snapshot triggers (see [`super::triggers`]); 0 turns one off.
    pub snapshot_interval: Duration,
    pub snapshot_max_changes: u64,
    pub snapshot_on_idle: Duration,
    pub snapshot_max_interval: Duration,
    pub min_checkpoint_pages: u64,
    pub truncate_checkpoint_pages: u64,
    /// How often the replica is verified in the background (see
    /// [`super::validator`]); 0: never.
    pub validation_interval: Duration,
    /// Make this database its replica's source even when the replica
    /// records another one (see [`super::identity`]).
    pub takeover: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            sync_interval: Duration::from_secs(1),
            snapshot_interval: Duration::from_secs(3600),
            snapshot_max_changes: 0,
            snapshot_on_idle: Duration::ZERO,
            snapshot_max_interval: Duration::ZERO,
            min_checkpoint_pages: 1000,
            truncate_checkpoint_pages: 121_359,
            validation_interval: Duration::ZERO,
            takeover: false,
        }
    }
}

/// What the replica holds of this database, as far as walsync knows.
#[derive(Debug, Clone)]
pub(super) enum Shipped {
    /// Nothing: the first file is a level-9 snapshot with TXID 1.
    Nothing,
    /// A chain walsync has no local state for (Litestream's, or walsync's
    /// own after its local state was lost), up to `remote_max`: the first
    /// file is a full copy at level 0 with the next TXID, so level 0 stays
    /// contiguous (Litestream's compaction refuses a missing TXID).
    Foreign { remote_max: u64, cause: Cause },
    /// The chain up to `LocalState::txid`, as the local state records it.
    Known(LocalState),
}

/// Whether the WAL can be followed from the shipped position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Continuity {
    /// Not proven yet that a WAL restart would lose nothing.
    Unproven,
    /// The shipped position covers the read mark (see the module doc).
    Covered,
    /// The WAL cannot be followed: the next file carries every page that
    /// differs from what was shipped.
    NeedsDiff(Cause),
    /// The database file is another one: the next file is a full copy.
    NeedsFull(Cause),
}

/// Why walsync ships a diff or a full copy instead of the WAL's frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// walsync has no local state for this replica.
    NoLocalState,
    /// The local page record does not match the local state.
    PageRecordMismatch,
    /// The replica is not where the local state says.
    ReplicaMoved { remote: u64, saved: u64 },
    /// The application checkpointed and restarted the WAL while walsync
    /// was not running.
    WalRestartedWhileDown,
    /// walsync stopped during its own checkpoint, before the file built for
    /// it was stored.
    OwnCheckpointInterrupted,
    /// Another connection reset the WAL while walsync was not holding its
    /// read lock.
    WalResetWhileRunning,
    /// A commit landed during walsync's TRUNCATE checkpoint.
    CommitDuringTruncate,
    /// The database file or its WAL was replaced by another file.
    Replaced(&'static str),
    /// The database file was deleted, and a file appeared at its path again.
    Reappeared,
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::NoLocalState => write!(f, "no local state for this replica"),
            Cause::PageRecordMismatch => {
                write!(f, "the local page record does not match the local state")
            }
            Cause::ReplicaMoved { remote, saved } => write!(
                f,
                "the replica holds TXID {remote} but the local state says {saved}"
            ),
            Cause::WalRestartedWhileDown => write!(
                f,
                "the application checkpointed and restarted the WAL while walsync was not running"
            ),
            Cause::OwnCheckpointInterrupted => write!(
                f,
                "walsync was stopped during its own checkpoint, before the file built for it was stored"
            ),
            Cause::WalResetWhileRunning => write!(
                f,
                "another connection reset the WAL while walsync's read lock was not held"
            ),
            Cause::CommitDuringTruncate => {
                write!(f, "a commit landed during walsync's TRUNCATE checkpoint")
            }
            Cause::Replaced(which) => write!(f, "the {which} was replaced by another file"),
            Cause::Reappeared => write!(f, "the database file was deleted and created again"),
        }
    }
}

/// The replication of one database.
pub struct Shipper {
    pub name: String,
    pub(super) path: PathBuf,
    /// The absolute path: what identifies the database in the fleet.
    pub key: PathBuf,
    /// walsync's connection and held files; `None` while the database is
    /// gone from its path.
    pub(super) source: Option<Source>,
    pub(super) state_dir: StateDir,
    /// Whether batches go to spool files or, while that disk is full, memory.
    pub(super) spool_place: SpoolPlace,
    pub(super) pagesums: PageSums,
    pub(super) storage: Arc<dyn Storage>,
    pub(super) settings: Settings,
    pub(super) page_size: u32,
    pub(super) shipped: Shipped,
    pub(super) continuity: Continuity,
    /// A built batch not yet stored.
    pub(super) pending: Option<Batch>,
    /// When a failed upload of `pending` is tried again, and how long the
    /// next wait after a failure is.
    retry: Retry,
    /// Counts read transactions begun; a batch built in the current epoch
    /// that reached the WAL end proves the read mark is covered.
    pub(super) read_epoch: u64,
    /// WAL salt and offset at walsync's last checkpoint: the next one waits
    /// until the log grew by the threshold again (a checkpoint that could
    /// not restart the log would otherwise repeat at every poll).
    pub(super) last_checkpoint: Option<(u32, u64)>,
    /// The page buffer, only allocated while building.
    pub(super) page: Vec<u8>,
    /// Why the database was let go of and what was said about it, while it is.
    detached: Detached,
    /// For the status board.
    pub(super) health: Health,
    /// The run of failed uploads under way, as the log tells it.
    outages: super::outage::Outages,
    /// The WAL as it was when the last poll found nothing to do: while it
    /// looks the same, a poll does nothing more than two `stat` calls.
    quiet: Option<WalStamp>,
    /// The last poll found the WAL changed since the one before.
    pub(super) saw_change: bool,
    /// Who waits for a snapshot asked for through the control channel.
    snapshot_waiters: Vec<Sender<std::result::Result<u64, String>>>,
    pub(super) events: Arc<dyn EventSink>,
}

/// The retry schedule of a failed upload.
struct Retry {
    at: Option<Instant>,
    backoff: Backoff,
    /// The storage's recovery count (see [`super::circuit`]) when the
    /// upload last failed: once storage recovers past it, the retry is due
    /// at once.
    failed_before_recovery: u64,
}

/// A database walsync let go of (deleted, or replaced and not reopened yet).
#[derive(Default)]
struct Detached {
    /// Why: the cause of the full copy once it is back.
    cause: Option<Cause>,
    /// What was last said about it, so it is said once, not at every poll.
    note: Option<String>,
}

/// The read epoch begun when the database was opened: a WAL reset found in
/// it happened while walsync was not running.
const FIRST_EPOCH: u64 = 1;

impl Shipper {
    /// Opens a database for replication: checks it, locks its state folder,
    /// starts the long read transaction and finds what the replica holds.
    pub fn open(
        path: &Path,
        name: &str,
        storage: Arc<dyn Storage>,
        settings: Settings,
        events: Arc<dyn EventSink>,
    ) -> Result<Shipper> {
        let mut source = Source::open(path)?;
        let state_dir = StateDir::for_database(path)?;
        state_dir.clean_spool()?;
        let pagesums = PageSums::open(state_dir.dir())?;
        let page_size = source.page_size()?;
        source.begin_read()?;
        let mut shipper = Shipper {
            name: name.to_string(),
            path: path.to_path_buf(),
            key: crate::selection::absolute(path).into_owned(),
            source: Some(source),
            state_dir,
            spool_place: SpoolPlace::default(),
            pagesums,
            storage,
            settings,
            page_size,
            shipped: Shipped::Nothing,
            continuity: Continuity::Unproven,
            pending: None,
            retry: Retry {
                at: None,
                backoff: Backoff::upload(),
                failed_before_recovery: 0,
            },
            read_epoch: FIRST_EPOCH,
            last_checkpoint: None,
            page: Vec::new(),
            detached: Detached::default(),
            health: Health {
                changed: true,
                ..Health::default()
            },
            outages: Default::default(),
            quiet: None,
            saw_change: false,
            snapshot_waiters: Vec::new(),
            events,
        };
        shipper.shipped = shipper.find_start()?;
        Ok(shipper)
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The TXID the replica durably holds (0 before the first snapshot).
    pub fn txid(&self) -> u64 {
        self.state().map_or(0, |s| s.txid)
    }

    pub fn has_pending(&self) -> bool {
        self.pending.is_some()
    }

    pub(super) fn state(&self) -> Option<&LocalState> {
        match &self.shipped {
            Shipped::Known(s) => Some(s),
            _ => None,
        }
    }

    /// What the replica holds, found from the saved state and two short
    /// listings (`start-after`: the level-0 files from the saved TXID on,
    /// and the snapshots from the last one on), whatever the replica holds
    /// before them. Only without a usable saved state is the whole prefix
    /// of the database listed. Listing here makes a bad endpoint or bad
    /// credentials fail at start.
    fn find_start(&mut self) -> Result<Shipped> {
        let replica = self.storage.describe();
        let saved = self.state_dir.load(&replica, &self.name);
        let cause = match saved {
            Some(saved) if saved.page_size == self.page_size => match self.check_saved(&saved)? {
                None => return Ok(Shipped::Known(saved)),
                Some(cause) => cause,
            },
            _ => Cause::NoLocalState,
        };
        let files = catalog::list_db(self.storage.as_ref(), &self.name)?;
        self.claim_replica(&files)?;
        match files.iter().map(|f| f.id.max_txid).max() {
            None => Ok(Shipped::Nothing),
            Some(remote_max) => Ok(Shipped::Foreign { remote_max, cause }),
        }
    }

    /// `None` when the saved state still describes this database and
    /// replica: its page records agree with it, the snapshot it took is
    /// still stored, and the replica's newest TXID equals it (or is one
    /// above: an upload that landed just before a crash, which the next
    /// batch overwrites with the same TXID). Else why not.
    fn check_saved(&mut self, saved: &LocalState) -> Result<Option<Cause>> {
        let lock = ltx::lock_pgno(self.page_size);
        let xor = self
            .pagesums
            .xor_all_and_clean(saved.db_pages, saved.txid, lock)?;
        self.pagesums.release();
        if ltx::checksum_flag(xor) != saved.db_checksum {
            return Ok(Some(Cause::PageRecordMismatch));
        }
        let storage = self.storage.as_ref();
        let level0 = catalog::list_level_from(storage, &self.name, 0, saved.txid)?;
        let snapshots =
            catalog::list_snapshots_from(storage, &self.name, saved.last_snapshot_txid.max(1))?;
        let remote = level0
            .iter()
            .chain(&snapshots)
            .map(|f| f.id.max_txid)
            .max()
            .unwrap_or(0);
        let moved = snapshots.is_empty()
            || (remote != saved.txid && remote != saved.txid + 1)
            || (remote == saved.txid + 1 && self.is_image(&snapshots, remote)?);
        if moved {
            return Ok(Some(Cause::ReplicaMoved {
                remote,
                saved: saved.txid,
            }));
        }
        Ok(None)
    }

    /// Whether the replica holds a full image at `txid`: a snapshot among
    /// `snapshots`, or a level-0 full copy with its marker. An upload that
    /// landed just before a crash is overwritten by the next batch of the
    /// same TXID only when it is a plain level-0 file: a full image at
    /// that TXID would stay beside it (and its marker would make the new
    /// file pass for an image), so the replica counts as moved instead and
    /// the next file is a full copy after it.
    fn is_image(&self, snapshots: &[catalog::RemoteLtx], txid: u64) -> Result<bool> {
        if snapshots.iter().any(|f| f.id.max_txid == txid) {
            return Ok(true);
        }
        let id = LtxId {
            level: 0,
            min_txid: txid,
            max_txid: txid,
        };
        let marker = self.storage.layout().image_marker_key(&self.name, id);
        Ok(self.storage.head(&marker)?.is_some())
    }

    /// Whether the batch waiting for retry may be sent again now.
    pub fn retry_due(&self, now: Instant) -> bool {
        self.pending.is_some() && self.retry.at.is_some_and(|t| now >= t)
    }

    /// Whether a failed upload waits for its retry.
    pub fn retry_waiting(&self) -> bool {
        self.pending.is_some() && self.retry.at.is_some()
    }

    /// Whether a retry is waiting although storage recovered since its
    /// upload failed: it is due now, on a fresh backoff.
    pub fn retry_after_recovery(&mut self, recoveries: u64) -> bool {
        let waiting = self.pending.is_some() && self.retry.at.is_some();
        if waiting && self.retry.failed_before_recovery < recoveries {
            self.retry.backoff.reset();
            return true;
        }
        false
    }

    /// The schedule of failed uploads' retries (`[retry]` base and maximum
    /// delays).
    pub fn set_upload_backoff(&mut self, backoff: Backoff) {
        self.retry.backoff = backoff;
    }

    /// Hands out the pending batch for another upload attempt.
    pub fn take_retry(&mut self) -> Option<&Batch> {
        self.retry.at = None;
        self.pending.as_ref()
    }

    /// Looks for work and builds the next batch, if any. `None` when there is
    /// nothing to ship, a batch is already waiting, or the database is gone.
    pub fn poll(&mut self, now_ms: i64) -> Result<Option<&Batch>> {
        if self.pending.is_some() {
            return Ok(None);
        }
        let Some(stamp) = self.attached()? else {
            return Ok(None);
        };
        self.saw_change = self.quiet.is_some_and(|q| q != stamp);
        if self.quiet == Some(stamp) && !self.anything_due(now_ms) {
            return Ok(None);
        }
        self.quiet = None;
        if !self.source_mut()?.is_reading() {
            self.begin_new_read()?;
        }
        let on_disk = !self.spool_place.in_memory();
        let mut batch = match self.next_batch(now_ms) {
            // The spool's disk is full: said, and built again at once, in
            // memory.
            Err(e) if on_disk && self.spool_place.in_memory() => {
                self.emit(Event::SpoolInMemory {
                    db: self.name.clone(),
                    error: e.to_string(),
                });
                self.next_batch(now_ms)?
            }
            built => built?,
        };
        if batch.is_none() && self.continuity == Continuity::Covered {
            self.quiet = Some(stamp);
            self.report_caught_up(now_ms);
        }
        let image = matches!(
            batch.as_ref().map(|b| b.kind),
            Some(BatchKind::FullCopy | BatchKind::Diff)
        );
        if image && self.source()?.identity()? != Identity::Same {
            // Replaced while it was read: the next poll starts over.
            if let Some(b) = batch.take() {
                b.body.discard();
            }
        }
        if batch.is_some() && self.health.unshipped_since_ms.is_none() {
            self.health.unshipped_since_ms = Some(now_ms);
            self.health.changed = true;
        }
        self.pending = batch;
        // The page buffer and the page record are only needed while
        // building: an idle database costs no page of memory and no
        // descriptor beyond the database file.
        self.page = Vec::new();
        self.pagesums.release();
        Ok(self.pending.as_ref())
    }

    fn next_batch(&mut self, now_ms: i64) -> Result<Option<Batch>> {
        let image = match (&self.shipped, self.continuity) {
            (Shipped::Nothing, _) => Some((BatchKind::Snapshot, None)),
            (Shipped::Foreign { cause, .. }, _) => Some((BatchKind::FullCopy, Some(*cause))),
            (Shipped::Known(_), Continuity::NeedsFull(cause)) => {
                Some((BatchKind::FullCopy, Some(cause)))
            }
            (Shipped::Known(_), Continuity::NeedsDiff(cause)) => {
                Some((BatchKind::Diff, Some(cause)))
            }
            (Shipped::Known(_), _) => None,
        };
        if let Some((kind, cause)) = image {
            let batch = self.build_image(kind, cause, now_ms)?;
            let first = (kind == BatchKind::Snapshot).then_some("the first file of a new replica");
            return Ok(batch.map(|b| Batch { why: first, ..b }));
        }
        // A due snapshot goes first, so a busy database still gets one: it
        // is taken at the shipped position, and whatever the WAL holds
        // beyond it is shipped by the next poll.
        if let Some(snapshot) = self.periodic_snapshot(now_ms)? {
            return Ok(Some(snapshot));
        }
        match self.build_incremental(now_ms)? {
            Incremental::Batch(b) => Ok(Some(*b)),
            Incremental::Reset => {
                let cause = self.reset_cause();
                self.continuity = Continuity::NeedsDiff(cause);
                self.build_image(BatchKind::Diff, Some(cause), now_ms)
            }
            Incremental::Nothing => {
                self.continuity = Continuity::Covered;
                Ok(None)
            }
        }
    }

    /// Why the WAL could not be followed: found in the read epoch begun at
    /// start-up, the reset happened while walsync was not running.
    pub(super) fn reset_cause(&self) -> Cause {
        if self.read_epoch != FIRST_EPOCH {
            Cause::WalResetWhileRunning
        } else if self.state().is_some_and(|s| s.checkpointing) {
            Cause::OwnCheckpointInterrupted
        } else {
            Cause::WalRestartedWhileDown
        }
    }

    /// Records that the pending batch is stored.
    pub fn uploaded(&mut self) -> Result<()> {
        let Some(batch) = self.pending.take() else {
            return Ok(());
        };
        // The object is stored, so the shipped position moves even when the
        // state cannot be saved: the next batch must start where this one
        // ended (the WAL may have restarted behind it). A restart that then
        // finds the replica ahead of the saved state handles that.
        let saved = self.state_dir.save(&batch.new_state);
        if batch.read_epoch == self.read_epoch && batch.reached_wal_end {
            self.continuity = Continuity::Covered;
        } else if batch.kind != BatchKind::Snapshot {
            // A diff or full copy answered the need for one (see the
            // invariant in the module doc).
            if matches!(
                self.continuity,
                Continuity::NeedsDiff(_) | Continuity::NeedsFull(_)
            ) {
                self.continuity = Continuity::Unproven;
            }
        }
        if batch.kind == BatchKind::Snapshot {
            for waiter in self.snapshot_waiters.drain(..) {
                let _ = waiter.send(Ok(batch.id.max_txid));
            }
        }
        self.shipped = Shipped::Known(batch.new_state);
        self.retry.backoff.reset();
        let now_ms = crate::fsutil::now_ms();
        let tally = &mut self.health.tally;
        tally.files_shipped += 1;
        tally.bytes_shipped += batch.len;
        tally.snapshots += u64::from(batch.kind == BatchKind::Snapshot);
        self.health.last_shipped_ms = Some(now_ms);
        self.health.unshipped_since_ms = None;
        self.health.error = None;
        self.health.changed = true;
        batch.body.discard();
        saved
    }

    /// [`Shipper::uploaded`], said as an event. Returns the file stored
    /// and its commit time.
    pub fn uploaded_and_report(&mut self) -> Option<(crate::catalog::RemoteLtx, i64)> {
        let (stored, time_ms) = self.pending.as_ref().map(|b| (b.remote(), b.time_ms))?;
        let (key, txid, bytes) = (stored.key.clone(), stored.id.max_txid, stored.size);
        let snapshot_why = self.pending.as_ref().and_then(|b| b.why);
        let db = self.name.clone();
        if let Some(ended) = self.outages.succeeded(crate::fsutil::now_ms()) {
            self.report_recovered(ended);
        }
        if let Some(why) = snapshot_why {
            self.emit(Event::Snapshotted {
                db: db.clone(),
                txid,
                bytes,
                why,
            });
        }
        let event = match self.uploaded() {
            Ok(()) => Event::Stored {
                db,
                key,
                txid,
                bytes,
            },
            Err(e) => Event::StateNotSaved {
                db,
                error: e.to_string(),
            },
        };
        self.emit(event);
        Some((stored, time_ms))
    }

    /// Says that an outage is over, when a poll finds nothing more to
    /// ship after uploads succeeded again.
    fn report_caught_up(&mut self, now_ms: i64) {
        if let Some(ended) = self.outages.caught_up(now_ms) {
            self.report_recovered(ended);
        }
    }

    fn report_recovered(&self, ended: super::outage::Ended) {
        self.emit(Event::Recovered {
            db: self.name.clone(),
            after: ended.lasted,
            failures: ended.failures,
            shipped: ended.shipped,
        });
    }

    /// [`Shipper::upload_failed`], said as an event.
    /// Only the first failure of a run and a summary at intervals are
    /// said (see [`super::outage`]).
    pub fn upload_failed_and_report(&mut self, e: Error, now: Instant, recoveries: u64) {
        let retry_in = self.upload_failed(now, recoveries);
        let now_ms = crate::fsutil::now_ms();
        self.health.failed(&e, now_ms);
        let db = self.name.clone();
        match self.outages.failed(now_ms, e.error_class()) {
            super::outage::Tell::Began => self.emit(Event::UploadFailed {
                db,
                error: e.to_string(),
                class: e.error_class(),
                retry_in,
            }),
            super::outage::Tell::Summary { failures, lasted } => {
                let oldest = self
                    .health
                    .unshipped_since_ms
                    .map(|t| Duration::from_millis(u64::try_from(now_ms - t).unwrap_or(0)));
                self.emit(Event::StillFailing {
                    db,
                    error: e.to_string(),
                    class: e.error_class(),
                    failures,
                    lasted,
                    oldest_unstored: oldest,
                })
            }
            super::outage::Tell::Nothing => {}
        }
    }

    /// A poll failed; said as an event.
    pub fn poll_failed_and_report(&mut self, e: Error, retry_in: Duration, now_ms: i64) {
        self.health.failed(&e, now_ms);
        self.emit(Event::PollFailed {
            db: self.name.clone(),
            error: e.to_string(),
            class: e.error_class(),
            retry_in,
        });
    }

    /// Asks for a snapshot now; `reply` gets its TXID once it is stored
    /// (at once when the last snapshot still holds the state shipped).
    pub fn request_snapshot(&mut self, reply: Sender<std::result::Result<u64, String>>) {
        match self.state() {
            Some(s) if s.last_snapshot_txid == s.txid => {
                let _ = reply.send(Ok(s.txid));
            }
            _ => self.snapshot_waiters.push(reply),
        }
    }

    /// Whether a poll now would only find the WAL as the last one left it
    /// (when the kernel reports no change to its files).
    pub fn can_skip(&self, now_ms: i64) -> bool {
        self.pending.is_none()
            && self.source.is_some()
            && self.quiet.is_some()
            && !self.anything_due(now_ms)
    }

    /// Whether anything but new WAL frames calls for work: a snapshot due
    /// or asked for, or a diff or full copy owed.
    fn anything_due(&self, now_ms: i64) -> bool {
        let snapshot_due = self
            .state()
            .is_none_or(|s| super::triggers::snapshot_due(&self.settings, s, now_ms).is_some());
        snapshot_due || self.snapshot_requested() || self.continuity != Continuity::Covered
    }

    /// Whether a snapshot was asked for and not stored yet.
    pub(super) fn snapshot_requested(&self) -> bool {
        !self.snapshot_waiters.is_empty()
    }

    /// Whether the database's file is gone (a poll found it deleted, and
    /// nothing is at its path): there is nothing left to replicate. No
    /// system call while the database is there.
    pub fn gone(&self) -> bool {
        self.source.is_none() && std::fs::symlink_metadata(&self.path).is_err()
    }

    /// [`Shipper::gone`], after looking at the files now (an upload failed:
    /// perhaps because the tenant's folder was deleted with its spool).
    pub fn check_gone(&mut self) -> bool {
        if let Some(source) = &self.source {
            if matches!(source.identity(), Ok(Identity::Deleted(_))) {
                let why = format!("the files of {} were deleted", self.path.display());
                self.detach(Cause::Reappeared, why);
            }
        }
        self.gone()
    }

    /// Publishes its health on `board` when it changed since last time.
    pub fn publish(&mut self, board: &super::status::Board) {
        if std::mem::take(&mut self.health.changed) {
            self.health.txid = self.txid();
            let path = self.path.display().to_string();
            board.update(
                &self.name,
                &path,
                &self.health,
                self.settings.validation_interval,
            );
        }
    }

    /// Records a failed upload; the same batch is retried after a backoff.
    pub fn upload_failed(&mut self, now: Instant, recoveries: u64) -> Duration {
        let delay = self.retry.backoff.next_delay();
        self.retry.at = Some(now + delay);
        self.retry.failed_before_recovery = recoveries;
        delay
    }

    /// Ships the WAL and stores a level-9 snapshot now, synchronously (the
    /// `snapshot` command). Returns the snapshot's id.
    pub fn snapshot_now(&mut self, now_ms: i64) -> Result<LtxId> {
        while let Some(kind) = self.poll(now_ms)?.map(|b| b.kind) {
            let id = self.store_pending()?;
            if kind == BatchKind::Snapshot {
                return Ok(id);
            }
        }
        let state = self.state().ok_or_else(|| {
            Error::Database(format!(
                "{} is gone; nothing was shipped",
                self.path.display()
            ))
        })?;
        if state.last_snapshot_txid == state.txid {
            return Ok(LtxId {
                level: SNAPSHOT_LEVEL,
                min_txid: 1,
                max_txid: state.txid,
            });
        }
        let batch = self.build_image(BatchKind::Snapshot, None, now_ms)?;
        self.pending = batch.map(|b| Batch {
            why: Some("asked for by `walsync snapshot`"),
            ..b
        });
        self.store_pending()
    }

    /// Uploads the pending batch in this thread and records it.
    pub(super) fn store_pending(&mut self) -> Result<LtxId> {
        let Some(batch) = &self.pending else {
            return Err(Error::Other("nothing pending to store".into()));
        };
        let id = batch.id;
        if let Err(e) = batch.request().upload(self.storage.as_ref()) {
            self.pending = None;
            return Err(e);
        }
        self.uploaded()?;
        Ok(id)
    }

    /// Takes the long read transaction again. The WAL may have restarted
    /// while it was not held, so the continuity rule starts over (a pending
    /// need for a diff or full copy stays), even when taking it fails (it is
    /// tried again at the next poll).
    pub(super) fn begin_new_read(&mut self) -> Result<()> {
        self.read_epoch += 1;
        if self.continuity == Continuity::Covered {
            self.continuity = Continuity::Unproven;
        }
        self.source_mut()?.begin_read()
    }

    pub(super) fn source_mut(&mut self) -> Result<&mut Source> {
        self.source
            .as_mut()
            .ok_or_else(|| Error::Database(format!("{} is gone", self.path.display())))
    }

    pub(super) fn source(&self) -> Result<&Source> {
        self.source
            .as_ref()
            .ok_or_else(|| Error::Database(format!("{} is gone", self.path.display())))
    }

    /// Checks that the files walsync holds are still the database's, letting
    /// go of them at once when they are not, and opening the file that took
    /// their place. `None` while there is no usable database at the path,
    /// and at the poll that opened a new one: the full copy is built at the
    /// next poll, once the identity holds again (an application that renames
    /// a file over the database and then removes `-wal` and `-shm` is done
    /// by then, so the copy never reads a WAL that is not the file's).
    fn attached(&mut self) -> Result<Option<WalStamp>> {
        let (identity, stamp) = match &self.source {
            Some(source) => source.check()?,
            None => {
                self.attach();
                return Ok(None);
            }
        };
        match identity {
            Identity::Same => return Ok(stamp),
            Identity::Replaced(which) => {
                let cause = Cause::Replaced(which);
                let why = format!(
                    "{cause} ({}); walsync let go of the old one",
                    self.path.display()
                );
                self.detach(cause, why);
                self.attach();
            }
            Identity::Deleted(which) => {
                let why = format!(
                    "the {which} of {} was deleted; walsync let go of it and waits for it to come back",
                    self.path.display()
                );
                self.detach(Cause::Reappeared, why);
            }
        }
        Ok(None)
    }

    /// Drops the connection and held files (closing them so that no old WAL
    /// is kept alive for the application to find), saying why once.
    fn detach(&mut self, cause: Cause, why: String) {
        self.detached.cause = Some(cause);
        if let Some(source) = self.source.take() {
            if let Err(e) = source.close() {
                self.emit(Event::CloseFailed {
                    db: self.name.clone(),
                    error: e.to_string(),
                });
            }
        }
        self.note(why, |db, what| Event::LetGo { db, what });
    }

    /// Opens the database at the path afresh; the next file is a full copy
    /// of it. `false` (said once) while that fails.
    fn attach(&mut self) -> bool {
        if !self.path.exists() {
            return false;
        }
        let cause = self.detached.cause.unwrap_or(Cause::Reappeared);
        let opened = Source::open(&self.path).and_then(|mut source| {
            let page_size = source.page_size()?;
            source.begin_read()?;
            Ok((source, page_size))
        });
        match opened {
            Ok((source, page_size)) => {
                self.source = Some(source);
                self.page_size = page_size;
                self.read_epoch += 1;
                self.last_checkpoint = None;
                self.continuity = Continuity::NeedsFull(cause);
                self.detached = Detached::default();
                true
            }
            Err(e) => {
                self.note(e.to_string(), |db, error| Event::Unavailable { db, error });
                false
            }
        }
    }

    /// Emits `event(db, message)` unless the same message was the last one
    /// said about a missing or unusable database.
    fn note(&mut self, message: String, event: fn(String, String) -> Event) {
        if self.detached.note.as_deref() != Some(message.as_str()) {
            self.emit(event(self.name.clone(), message.clone()));
            self.detached.note = Some(message);
        }
    }

    pub(super) fn emit(&self, event: Event) {
        self.events.emit(event);
    }

    /// Releases the read transaction and the connection (end of `watch`).
    pub fn close(self) -> Result<()> {
        match self.source {
            Some(source) => source.close(),
            None => Ok(()),
        }
    }
}
