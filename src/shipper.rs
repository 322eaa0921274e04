//! Shipping one database: turns new WAL transactions into LTX files, takes
//! snapshots, runs walsync's own checkpoints and tracks what the replica
//! durably holds.
//!
//! A [`Shipper`] is owned by one poller thread. [`Shipper::poll`] builds at
//! most one [`Batch`] at a time (a level-0 file for new transactions, a full
//! file after a WAL reset, or a level-9 snapshot) into a spool file; the batch
//! is uploaded elsewhere and reported back through [`Shipper::uploaded`] or
//! [`Shipper::upload_failed`]. Until then nothing else is built, so the remote
//! TXID chain never has a hole, and the local state advances only after the
//! object is stored.
//!
//! Continuity rule: while walsync's read transaction is held, SQLite can
//! restart the WAL only if every frame that existed when the read began was
//! backfilled and none was appended since. So once the shipped position
//! covers the WAL end seen after the read began (`covers_read_mark`), a WAL
//! restart loses nothing and reading continues in the new log; any other
//! reset (salt change, shrink, unknown frames) is answered with a full file.
//! walsync's own PASSIVE checkpoint sets `covers_read_mark` while the batch
//! it built up to the WAL end is still uploading: nothing else is built
//! until that batch is stored, and then the shipped position is that end.

use crate::error::{Error, IoContext, Result};
use crate::fsutil::{self, FileLock, Hashing};
use crate::ltx::{self, Encoder, Header};
use crate::pagesums::PageSums;
use crate::source::Source;
use crate::state::{self, LocalState, StateDir};
use crate::storage::{LtxId, ObjectMeta, Storage, SNAPSHOT_LEVEL};
use crate::wal::{self, Resume, WalHeader, WalPosition, WalReader};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufWriter;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Per-database settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub sync_interval: Duration,
    pub snapshot_interval: Duration,
    pub min_checkpoint_pages: u64,
    pub truncate_checkpoint_pages: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            sync_interval: Duration::from_secs(1),
            snapshot_interval: Duration::from_secs(3600),
            min_checkpoint_pages: 1000,
            truncate_checkpoint_pages: 121_359,
        }
    }
}

/// What kind of file a batch is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchKind {
    /// New transactions from the WAL (level 0).
    Incremental,
    /// Every page, at level 0, after a WAL reset we could not follow.
    Full,
    /// A level-9 snapshot.
    Snapshot,
}

/// One LTX file built and waiting to be stored.
#[derive(Debug)]
pub struct Batch {
    pub kind: BatchKind,
    pub key: String,
    pub id: LtxId,
    pub spool: PathBuf,
    pub len: u64,
    pub meta: ObjectMeta,
    /// The local state once this file is stored.
    new_state: LocalState,
    /// The read epoch in which the batch was built (see `covers_read_mark`).
    read_epoch: u64,
    /// Whether the batch covers the whole valid WAL as scanned.
    reached_wal_end: bool,
}

/// The replication of one database.
pub struct Shipper {
    pub name: String,
    source: Source,
    state_dir: StateDir,
    _lock: FileLock,
    pagesums: PageSums,
    storage: Arc<dyn Storage>,
    settings: Settings,
    page_size: u32,
    /// What the replica durably holds; `None` until the first snapshot.
    state: Option<LocalState>,
    /// A built batch not yet stored.
    pending: Option<Batch>,
    retry_at: Option<Instant>,
    failures: u32,
    /// Counts begin-read calls; a batch built in the current epoch after a
    /// full scan proves the shipped position covers the read mark.
    read_epoch: u64,
    covers_read_mark: bool,
    /// Set when a TRUNCATE checkpoint may have hidden a commit.
    force_full: bool,
    /// WAL salt and offset at walsync's last checkpoint: the next one waits
    /// until the log grew by the threshold again (a checkpoint that could
    /// not restart the log would otherwise repeat at every poll).
    last_checkpoint: Option<(u32, u64)>,
    /// The replica's newest TXID when the database was opened.
    remote_max_txid: u64,
    /// The database file, opened once for as long as the connection lives.
    /// POSIX record locks belong to the process, and closing any descriptor
    /// of a file drops all of them: opening and closing the database file for
    /// a snapshot would release SQLite's shared lock, and the next
    /// application connection to close would think itself the last one,
    /// checkpoint and delete the WAL under walsync. (Shared by `Arc`, never
    /// duplicated: closing a duplicate drops the locks too.)
    db_file: Arc<File>,
    page: Vec<u8>,
}

impl Shipper {
    /// Opens a database for replication: checks it, locks its state folder,
    /// starts the long read transaction and decides whether the saved state
    /// can be resumed (else the first poll takes a snapshot).
    pub fn open(
        path: &Path,
        name: &str,
        storage: Arc<dyn Storage>,
        settings: Settings,
    ) -> Result<Shipper> {
        let mut source = Source::open(path)?;
        let db_file = Arc::new(File::open(path).db_io(|| format!("opening {}", path.display()))?);
        let state_dir = StateDir::for_database(path)?;
        let lock = FileLock::try_lock(&state_dir.path("lock"))?.ok_or_else(|| {
            Error::Database(format!(
                "another walsync process is replicating {}; stop it first (lock: {})",
                path.display(),
                state_dir.path("lock").display()
            ))
        })?;
        state_dir.clean_spool()?;
        let pagesums = PageSums::open(&state_dir.path("pagesums"))?;
        let page_size = source.page_size()?;
        source.begin_read()?;
        let mut shipper = Shipper {
            name: name.to_string(),
            source,
            state_dir,
            _lock: lock,
            pagesums,
            storage,
            settings,
            page_size,
            state: None,
            pending: None,
            retry_at: None,
            failures: 0,
            read_epoch: 1,
            covers_read_mark: false,
            force_full: false,
            last_checkpoint: None,
            remote_max_txid: 0,
            db_file,
            page: Vec::new(),
        };
        shipper.state = shipper.usable_saved_state()?;
        Ok(shipper)
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn path(&self) -> &Path {
        self.source.path()
    }

    /// The TXID the replica durably holds (0 before the first snapshot).
    pub fn txid(&self) -> u64 {
        self.state.as_ref().map_or(0, |s| s.txid)
    }

    pub fn has_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// The saved state, if it still describes this database and replica:
    /// page checksums consistent, and the replica's newest TXID equal to it
    /// (or one above: an upload that landed just before a crash, which the
    /// next batch overwrites with the same frames). Also remembers the
    /// replica's newest TXID, which a first snapshot continues from. Listing
    /// the replica here makes a bad endpoint or bad credentials fail at start.
    fn usable_saved_state(&mut self) -> Result<Option<LocalState>> {
        let remote = crate::remote::list_ltx(self.storage.as_ref(), &self.name)?;
        let max = remote.iter().map(|f| f.id.max_txid).max().unwrap_or(0);
        self.remote_max_txid = max;
        let replica = self.storage.describe();
        let Some(saved) = self.state_dir.load(&replica, &self.name) else {
            return Ok(None);
        };
        if saved.page_size != self.page_size {
            return Ok(None);
        }
        let lock = ltx::lock_pgno(self.page_size);
        let xor = self
            .pagesums
            .xor_all_and_clean(saved.db_pages, saved.txid, lock)?;
        if ltx::checksum_flag(xor) != saved.db_checksum {
            log(
                &self.name,
                "local page checksums do not match the saved state; taking a fresh snapshot",
            );
            return Ok(None);
        }
        let has_snapshot = remote.iter().any(|f| f.id.min_txid == 1);
        if !has_snapshot || (max != saved.txid && max != saved.txid + 1) {
            log(
                &self.name,
                &format!(
                    "the replica holds TXID {max} but the local state says {}; taking a fresh snapshot",
                    saved.txid
                ),
            );
            return Ok(None);
        }
        Ok(Some(saved))
    }

    /// Whether the batch waiting for retry may be sent again now.
    pub fn retry_due(&self, now: Instant) -> bool {
        self.pending.is_some() && self.retry_at.is_some_and(|t| now >= t)
    }

    /// Hands out the pending batch for another upload attempt.
    pub fn take_retry(&mut self) -> Option<&Batch> {
        self.retry_at = None;
        self.pending.as_ref()
    }

    /// Looks for work and builds the next batch, if any. `None` when there is
    /// nothing to ship or a batch is already waiting.
    pub fn poll(&mut self, now_ms: i64) -> Result<Option<&Batch>> {
        if self.pending.is_some() {
            return Ok(None);
        }
        if !self.source.is_reading() {
            self.begin_new_read()?;
        }
        let batch = match &self.state {
            // Taking over a replica that already holds TXIDs (Litestream's,
            // or walsync's after its local state was lost): the first file is
            // a full copy at level 0 with the next TXID, so level 0 stays
            // contiguous (Litestream's compaction of level 0 into level 1
            // refuses a missing TXID); the level-9 snapshot is due at once
            // and follows at the next poll.
            None if self.remote_max_txid > 0 => Some(self.build_full(BatchKind::Full, now_ms)?),
            None => Some(self.build_full(BatchKind::Snapshot, now_ms)?),
            Some(_) if self.force_full => Some(self.build_full(BatchKind::Full, now_ms)?),
            // A due snapshot goes first, so a busy database still gets one:
            // it is taken at the shipped position, and whatever the WAL holds
            // beyond it is shipped by the next poll.
            Some(_) => match self.periodic_snapshot(now_ms)? {
                Some(snapshot) => Some(snapshot),
                None => match self.build_incremental(now_ms)? {
                    Incremental::Batch(b) => Some(*b),
                    Incremental::Reset => {
                        log(
                            &self.name,
                            "the WAL was reset by another process; shipping a full copy",
                        );
                        Some(self.build_full(BatchKind::Full, now_ms)?)
                    }
                    Incremental::Nothing => {
                        self.covers_read_mark = true;
                        None
                    }
                },
            },
        };
        self.pending = batch;
        // The page buffer is only needed while building: an idle database
        // costs no page of memory.
        self.page = Vec::new();
        Ok(self.pending.as_ref())
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
            self.covers_read_mark = true;
        }
        if batch.kind != BatchKind::Snapshot {
            self.force_full = false;
        }
        self.state = Some(batch.new_state);
        self.failures = 0;
        let _ = std::fs::remove_file(&batch.spool);
        saved
    }

    /// Records a failed upload; the same batch is retried after a backoff.
    pub fn upload_failed(&mut self, now: Instant) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let backoff =
            Duration::from_millis(500u64 << self.failures.min(7)).min(Duration::from_secs(60));
        self.retry_at = Some(now + backoff);
        backoff
    }

    /// Number of WAL frames past the last checkpoint, as shipped.
    fn shipped_wal_frames(&self) -> u64 {
        let Some(s) = &self.state else { return 0 };
        let base = match self.last_checkpoint {
            Some((salt1, offset)) if salt1 == s.wal_salt1 => offset,
            _ => wal::HEADER_SIZE,
        };
        s.wal_offset.saturating_sub(base) / (wal::FRAME_HEADER_SIZE + u64::from(self.page_size))
    }

    /// Remembers the WAL position a checkpoint covered: the end of the batch
    /// built for it when that is still uploading, else the shipped position.
    fn note_checkpoint(&mut self) {
        let at = match &self.pending {
            Some(batch) => Some(&batch.new_state),
            None => self.state.as_ref(),
        };
        self.last_checkpoint = at.map(|s| (s.wal_salt1, s.wal_offset));
    }

    /// Runs a checkpoint when the WAL is past a threshold and everything in
    /// it is shipped or built. Returns the batch built for it, which the
    /// caller uploads like any other.
    pub fn maybe_checkpoint(&mut self, now_ms: i64) -> Result<Option<&Batch>> {
        if self.pending.is_some() || self.state.is_none() {
            return Ok(None);
        }
        let frames = self.shipped_wal_frames();
        if frames >= self.settings.truncate_checkpoint_pages {
            self.checkpoint_truncate(now_ms)?;
            Ok(None)
        } else if frames >= self.settings.min_checkpoint_pages {
            if let Err(e) = self.checkpoint_passive(now_ms) {
                // A batch built before the failure must still be uploaded.
                if self.pending.is_none() {
                    return Err(e);
                }
                log(&self.name, &format!("checkpoint: {e}"));
            }
            Ok(self.pending.as_ref())
        } else {
            Ok(None)
        }
    }

    /// PASSIVE checkpoint behind a writer-lock barrier: build (not upload)
    /// what landed before the barrier, drop the read transaction,
    /// checkpoint, take it again, release the barrier. The application waits
    /// only for the local work; the batch is uploaded after the barrier.
    ///
    /// Why that loses nothing: the batch's spool file holds every frame up to
    /// the WAL end, so a WAL restart after the barrier overwrites nothing
    /// unbuilt; the shipped position reaches that end when the batch is
    /// stored, and until then nothing else is built. If walsync dies before
    /// the upload, the next start finds the replica behind a restarted WAL
    /// and ships a full copy.
    fn checkpoint_passive(&mut self, now_ms: i64) -> Result<()> {
        let Some(_barrier) = self.source.barrier(Duration::from_millis(200))? else {
            return Ok(()); // a long application write; try at the next poll
        };
        match self.build_incremental(now_ms)? {
            Incremental::Nothing => {}
            Incremental::Reset => {
                self.force_full = true;
                return Ok(());
            }
            Incremental::Batch(batch) => self.pending = Some(*batch),
        }
        self.page = Vec::new();
        let checkpointed = self.source.checkpoint("PASSIVE");
        self.begin_new_read()?;
        checkpointed?;
        self.note_checkpoint();
        // Under the barrier nothing was appended: once the batch is stored
        // (and nothing is built before), the position is the WAL end.
        self.covers_read_mark = true;
        Ok(())
    }

    /// TRUNCATE checkpoint (emergency size): needs the writer lock itself, so
    /// no barrier. `data_version` is read once the long read transaction is
    /// dropped (inside it the value would not move); commits that landed
    /// before that are still in the WAL and are shipped next; a commit after
    /// it may have been truncated away unseen, so it is answered with a full
    /// copy.
    fn checkpoint_truncate(&mut self, now_ms: i64) -> Result<()> {
        if !self.ship_now(now_ms)? {
            return Ok(());
        }
        self.source.end_read()?;
        let before = self.source.data_version()?;
        if !self.ship_now(now_ms)? {
            return self.begin_new_read();
        }
        let (busy, _, _) = self.source.checkpoint("TRUNCATE")?;
        self.begin_new_read()?;
        self.note_checkpoint();
        let after = self.source.data_version()?;
        if !busy && before != after {
            log(
                &self.name,
                "a commit landed during the TRUNCATE checkpoint; shipping a full copy",
            );
            self.force_full = true;
        } else {
            self.covers_read_mark = true;
        }
        Ok(())
    }

    /// Builds and stores (synchronously) whatever the WAL holds beyond the
    /// shipped position. `false` when the upload failed (the batch stays
    /// pending for the normal retry path).
    fn ship_now(&mut self, now_ms: i64) -> Result<bool> {
        match self.build_incremental(now_ms)? {
            Incremental::Nothing => Ok(true),
            Incremental::Reset => {
                self.force_full = true;
                Ok(false)
            }
            Incremental::Batch(batch) => {
                let stored = UploadRequest::from(&*batch).upload(self.storage.as_ref());
                self.pending = Some(*batch);
                match stored {
                    Ok(()) => {
                        self.uploaded()?;
                        Ok(true)
                    }
                    Err(e) => {
                        log(&self.name, &format!("upload before checkpoint failed: {e}"));
                        self.upload_failed(Instant::now());
                        Ok(false)
                    }
                }
            }
        }
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
        let state = self
            .state
            .as_ref()
            .ok_or_else(|| Error::Other("no state after shipping".into()))?;
        if state.last_snapshot_txid == state.txid {
            return Ok(LtxId {
                level: SNAPSHOT_LEVEL,
                min_txid: 1,
                max_txid: state.txid,
            });
        }
        self.pending = Some(self.build_full(BatchKind::Snapshot, now_ms)?);
        self.store_pending()
    }

    /// Uploads the pending batch in this thread and records it.
    fn store_pending(&mut self) -> Result<LtxId> {
        let Some(batch) = &self.pending else {
            return Err(Error::Other("nothing pending to store".into()));
        };
        let id = batch.id;
        if let Err(e) = UploadRequest::from(batch).upload(self.storage.as_ref()) {
            self.pending = None;
            return Err(e);
        }
        self.uploaded()?;
        Ok(id)
    }

    /// Takes the long read transaction again. The WAL may have restarted
    /// while it was not held, so the continuity rule starts over, even
    /// when taking it fails (it is tried again at the next poll).
    fn begin_new_read(&mut self) -> Result<()> {
        self.read_epoch += 1;
        self.covers_read_mark = false;
        self.source.begin_read()
    }

    /// Releases the read transaction and the connection (end of `watch`).
    pub fn close(mut self) -> Result<()> {
        self.source.end_read()
    }

    fn open_wal(&self) -> Result<Option<File>> {
        match File::open(self.source.wal_path()) {
            Ok(f) => Ok(Some(f)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::Database(format!(
                "cannot open {}: {e}",
                self.source.wal_path().display()
            ))),
        }
    }

    /// New committed transactions since the shipped position, as one level-0
    /// file with TXID + 1.
    fn build_incremental(&mut self, now_ms: i64) -> Result<Incremental> {
        let Some(state) = self.state.clone() else {
            return Ok(Incremental::Nothing);
        };
        let start = state.position();
        let wal_file = self.open_wal()?;
        let resumed = match &wal_file {
            Some(f) => WalReader::resume(f, start)?,
            None => Resume::Reset,
        };
        let mut reader = match resumed {
            Resume::Continue(r) => r,
            Resume::Reset => {
                // A WAL restart loses nothing when SQLite could only make it
                // after backfilling all we shipped (see the module doc), or
                // when the database file holds exactly the shipped state.
                if !self.covers_read_mark {
                    if !self.db_file_is_state(&state)? {
                        return Ok(Incremental::Reset);
                    }
                    self.covers_read_mark = true;
                }
                match wal_file
                    .as_ref()
                    .map(WalReader::open)
                    .transpose()?
                    .flatten()
                {
                    Some(r) => r,
                    None => return Ok(Incremental::Nothing),
                }
            }
        };
        let Some(wal_file) = wal_file.as_ref() else {
            return Ok(Incremental::Nothing);
        };
        let header = *reader.header();
        let from = reader.position();
        let mut latest: BTreeMap<u32, u64> = BTreeMap::new();
        let mut db_pages = state.db_pages;
        while let Some(txn) = reader.next_transaction()? {
            for f in txn.frames {
                latest.insert(f.pgno, f.page_offset);
            }
            db_pages = txn.db_pages;
        }
        let end = reader.position();
        if end == from {
            if from != start {
                // The log restarted but holds nothing new yet: remember the new start.
                let mut s = state;
                s.set_position(from);
                self.state_dir.save(&s)?;
                self.state = Some(s);
            }
            return Ok(Incremental::Nothing);
        }
        let txid = state.txid + 1;
        let id = LtxId {
            level: 0,
            min_txid: txid,
            max_txid: txid,
        };
        let mut hdr = self.header(id, db_pages, now_ms);
        hdr.wal_offset = from.offset;
        hdr.wal_size = end.offset - from.offset;
        hdr.wal_salt1 = header.salt1;
        hdr.wal_salt2 = header.salt2;
        let spool = self.spool_path(id);
        let mut enc = Encoder::new(Hashing::new(BufWriter::new(create(&spool)?)), hdr)?;
        let lock = ltx::lock_pgno(self.page_size);
        let mut xor = state.db_checksum;
        for (&pgno, &offset) in latest.range(..=db_pages) {
            if pgno == lock {
                continue;
            }
            wal::read_page(wal_file, offset, self.page_size, &mut self.page)?;
            let new = ltx::page_checksum(pgno, &self.page);
            let old = self.old_checksum(&state, pgno)?;
            xor ^= old ^ new;
            self.pagesums.put(pgno, state.txid, txid, new)?;
            enc.write_page(pgno, &self.page)?;
        }
        for pgno in (db_pages + 1)..=state.db_pages {
            if pgno != lock {
                xor ^= self.pagesums.get(pgno, state.txid)?;
            }
        }
        // The frames must still be the ones validated: a restart would change the salts.
        if WalHeader::read(wal_file)?.map(|h| (h.salt1, h.salt2))
            != Some((header.salt1, header.salt2))
        {
            let _ = std::fs::remove_file(&spool);
            return Ok(Incremental::Reset);
        }
        let post = ltx::checksum_flag(xor);
        let state_pre = state.db_checksum;
        let mut new_state = state;
        new_state.txid = txid;
        new_state.db_pages = db_pages;
        new_state.db_checksum = post;
        new_state.set_position(end);
        let batch = self.finish(
            BatchKind::Incremental,
            enc,
            state_pre,
            id,
            spool,
            new_state,
            true,
            now_ms,
        )?;
        Ok(Incremental::Batch(Box::new(batch)))
    }

    /// Whether the database file alone holds exactly the shipped state (its
    /// size and database checksum match). Reads the whole file; used only
    /// when a WAL reset is found that walsync did not see happen.
    fn db_file_is_state(&mut self, state: &LocalState) -> Result<bool> {
        let db_file = Arc::clone(&self.db_file);
        if self.db_pages_from_file(&db_file)? != state.db_pages {
            return Ok(false);
        }
        let no_overlay = Overlay::default();
        let lock = ltx::lock_pgno(self.page_size);
        let mut xor = 0u64;
        for pgno in (1..=state.db_pages).filter(|&p| p != lock) {
            self.read_state_page(&db_file, None, &no_overlay, pgno)?;
            xor ^= ltx::page_checksum(pgno, &self.page);
        }
        Ok(ltx::checksum_flag(xor) == state.db_checksum)
    }

    fn old_checksum(&self, state: &LocalState, pgno: u32) -> Result<u64> {
        if pgno <= state.db_pages {
            self.pagesums.get(pgno, state.txid)
        } else {
            Ok(0)
        }
    }

    /// A level-9 snapshot of the shipped state when the interval has passed.
    fn periodic_snapshot(&mut self, now_ms: i64) -> Result<Option<Batch>> {
        let Some(state) = &self.state else {
            return Ok(None);
        };
        let due =
            now_ms - state.last_snapshot_ms >= self.settings.snapshot_interval.as_millis() as i64;
        if !due || !self.covers_read_mark {
            return Ok(None);
        }
        if state.last_snapshot_txid == state.txid {
            // Nothing changed since the last snapshot: it still stands.
            let mut s = state.clone();
            s.last_snapshot_ms = now_ms;
            self.state_dir.save(&s)?;
            self.state = Some(s);
            return Ok(None);
        }
        Ok(Some(self.build_full(BatchKind::Snapshot, now_ms)?))
    }

    /// Every page of the database as of the end of the valid WAL (for a first
    /// snapshot or after a reset), or as of the shipped position (periodic
    /// snapshot), read from the database file with WAL frames laid over it.
    fn build_full(&mut self, kind: BatchKind, now_ms: i64) -> Result<Batch> {
        let wal_file = self.open_wal()?;
        let periodic = kind == BatchKind::Snapshot && self.state.is_some();
        let until = if periodic {
            self.state.as_ref().map(|s| s.position())
        } else {
            None
        };
        let overlay = Overlay::scan(wal_file.as_ref(), until)?;
        let db_file = Arc::clone(&self.db_file);
        let db_pages = match (&self.state, periodic) {
            (Some(s), true) => s.db_pages,
            _ => match overlay.db_pages {
                Some(n) => n,
                None => self.db_pages_from_file(&db_file)?,
            },
        };
        let (committed, txid) = match (&self.state, kind) {
            (Some(s), BatchKind::Snapshot) => (s.txid, s.txid),
            (Some(s), _) => (s.txid, s.txid + 1),
            (None, _) => (0, self.remote_max_txid + 1),
        };
        let id = match kind {
            BatchKind::Snapshot => LtxId {
                level: SNAPSHOT_LEVEL,
                min_txid: 1,
                max_txid: txid,
            },
            _ => LtxId {
                level: 0,
                min_txid: txid,
                max_txid: txid,
            },
        };
        let pre = match (&self.state, kind) {
            (Some(s), BatchKind::Full) => s.db_checksum,
            _ => 0,
        };
        let spool = self.spool_path(id);
        let mut enc = Encoder::new(
            Hashing::new(BufWriter::new(create(&spool)?)),
            self.header(id, db_pages, now_ms),
        )?;
        let lock = ltx::lock_pgno(self.page_size);
        let mut xor = 0u64;
        for pgno in 1..=db_pages {
            if pgno == lock {
                continue;
            }
            self.read_state_page(&db_file, wal_file.as_ref(), &overlay, pgno)?;
            let sum = ltx::page_checksum(pgno, &self.page);
            xor ^= sum;
            if !periodic {
                self.pagesums.put(pgno, committed, txid, sum)?;
            }
            enc.write_page(pgno, &self.page)?;
        }
        let post = ltx::checksum_flag(xor);
        let mut new_state = match &self.state {
            Some(s) => s.clone(),
            None => state::new_state(&self.storage.describe(), &self.name, self.page_size),
        };
        if periodic && post != new_state.db_checksum {
            log(
                &self.name,
                "snapshot checksum differs from the tracked checksum; re-basing on the snapshot",
            );
        }
        new_state.txid = txid;
        new_state.db_pages = db_pages;
        new_state.db_checksum = post;
        if kind == BatchKind::Snapshot {
            new_state.last_snapshot_ms = now_ms;
            new_state.last_snapshot_txid = txid;
        }
        if !periodic {
            new_state.set_position(overlay.end.unwrap_or(WalPosition {
                offset: 0,
                salt1: 0,
                salt2: 0,
                checksum: (0, 0),
            }));
        }
        self.finish(kind, enc, pre, id, spool, new_state, !periodic, now_ms)
    }

    /// The database size when the WAL holds no commit: the size recorded in
    /// the database header (a checkpoint that could not backfill every frame
    /// leaves the file longer than the database, e.g. after a VACUUM), or the
    /// file size when the header's size is not valid.
    fn db_pages_from_file(&mut self, db_file: &File) -> Result<u32> {
        let in_file = pages_in_file(db_file, self.page_size)?;
        if in_file == 0 {
            return Ok(0);
        }
        self.read_state_page(db_file, None, &Overlay::default(), 1)?;
        let be32 = |at: usize| {
            u32::from_be_bytes([
                self.page[at],
                self.page[at + 1],
                self.page[at + 2],
                self.page[at + 3],
            ])
        };
        // The in-header size is valid when "version-valid-for" equals the
        // change counter (SQLite file format, database header offsets 28, 92, 24).
        let (in_header, valid_for, counter) = (be32(28), be32(92), be32(24));
        Ok(
            if in_header > 0 && valid_for == counter && in_header <= in_file {
                in_header
            } else {
                in_file
            },
        )
    }

    /// Reads page `pgno` of the state into `self.page`.
    fn read_state_page(
        &mut self,
        db_file: &File,
        wal_file: Option<&File>,
        overlay: &Overlay,
        pgno: u32,
    ) -> Result<()> {
        if let (Some(&offset), Some(wal_file)) = (overlay.latest.get(&pgno), wal_file) {
            return wal::read_page(wal_file, offset, self.page_size, &mut self.page);
        }
        self.page.resize(self.page_size as usize, 0);
        let at = u64::from(pgno - 1) * u64::from(self.page_size);
        let mut done = 0;
        while done < self.page.len() {
            let n = db_file
                .read_at(&mut self.page[done..], at + done as u64)
                .db_io(|| format!("reading page {pgno} of {}", self.source.path().display()))?;
            if n == 0 {
                self.page[done..].fill(0);
                break;
            }
            done += n;
        }
        Ok(())
    }

    /// The header of a file walsync writes. Files carry the NoChecksum flag,
    /// like Litestream's: `litestream restore` 0.5.17 merges its restore plan
    /// through a compactor that writes NoChecksum output but copies the last
    /// input's post-apply checksum into it, so it refuses ("post-apply
    /// checksum not allowed") any replica whose files carry checksums.
    /// walsync's database checksums travel in the object metadata instead
    /// (`x-amz-meta-walsync-checksums`), where its restore and verify check
    /// them and Litestream does not look.
    fn header(&self, id: LtxId, commit: u32, now_ms: i64) -> Header {
        Header {
            flags: ltx::HEADER_FLAG_NO_CHECKSUM,
            page_size: self.page_size,
            commit,
            min_txid: id.min_txid,
            max_txid: id.max_txid,
            timestamp_ms: now_ms,
            ..Header::default()
        }
    }

    fn spool_path(&self, id: LtxId) -> PathBuf {
        self.state_dir
            .path(&format!("spool-{}-{:016x}.ltx", id.level, id.max_txid))
    }

    #[allow(clippy::too_many_arguments)]
    fn finish(
        &self,
        kind: BatchKind,
        enc: Encoder<Hashing<BufWriter<File>>>,
        pre: u64,
        id: LtxId,
        spool: PathBuf,
        new_state: LocalState,
        reached_wal_end: bool,
        timestamp_ms: i64,
    ) -> Result<Batch> {
        let (_, hashing) = enc.finish(0)?;
        let (buffered, sha256, len) = hashing.finish();
        buffered
            .into_inner()
            .map_err(|e| Error::Other(format!("writing spool {}: {e}", spool.display())))?;
        Ok(Batch {
            kind,
            key: self.storage.layout().ltx_key(&self.name, id),
            id,
            spool,
            len,
            meta: ObjectMeta {
                sha256: Some(sha256),
                timestamp: Some(fsutil::rfc3339_ms(timestamp_ms)),
                db_checksums: Some(ObjectMeta::encode_db_checksums(pre, new_state.db_checksum)),
            },
            new_state,
            read_epoch: self.read_epoch,
            reached_wal_end,
        })
    }
}

enum Incremental {
    Nothing,
    Reset,
    Batch(Box<Batch>),
}

/// The newest frame of each page in the valid WAL (up to `until`, or to its
/// end), the database size after the last commit and the end position.
#[derive(Default)]
struct Overlay {
    latest: BTreeMap<u32, u64>,
    db_pages: Option<u32>,
    end: Option<WalPosition>,
}

impl Overlay {
    fn scan(wal_file: Option<&File>, until: Option<WalPosition>) -> Result<Overlay> {
        let mut overlay = Overlay {
            latest: BTreeMap::new(),
            db_pages: None,
            end: None,
        };
        let Some(wal_file) = wal_file else {
            return Ok(overlay);
        };
        let Some(mut reader) = WalReader::open(wal_file)? else {
            return Ok(overlay);
        };
        overlay.end = Some(reader.position());
        if until.is_some_and(|u| {
            u.offset <= wal::HEADER_SIZE
                || (u.salt1, u.salt2) != (reader.header().salt1, reader.header().salt2)
        }) {
            return Ok(overlay);
        }
        while let Some(txn) = reader.next_transaction()? {
            for f in txn.frames {
                overlay.latest.insert(f.pgno, f.page_offset);
            }
            overlay.db_pages = Some(txn.db_pages);
            overlay.end = Some(txn.end);
            if until.is_some_and(|u| txn.end.offset >= u.offset) {
                break;
            }
        }
        Ok(overlay)
    }
}

fn pages_in_file(file: &File, page_size: u32) -> Result<u32> {
    let len = file
        .metadata()
        .db_io(|| "reading database size".into())?
        .len();
    Ok((len / u64::from(page_size)) as u32)
}

fn create(path: &Path) -> Result<File> {
    File::create(path).local_io(|| format!("creating spool file {}", path.display()))
}

/// What an uploader needs to store a batch: its key, spool file and metadata.
#[derive(Debug, Clone)]
pub struct UploadRequest {
    pub key: String,
    pub spool: PathBuf,
    pub len: u64,
    pub meta: ObjectMeta,
}

impl From<&Batch> for UploadRequest {
    fn from(b: &Batch) -> Self {
        UploadRequest {
            key: b.key.clone(),
            spool: b.spool.clone(),
            len: b.len,
            meta: b.meta.clone(),
        }
    }
}

impl UploadRequest {
    /// Stores the spool file under the key; returns once it is stored.
    pub fn upload(&self, storage: &dyn Storage) -> Result<()> {
        let mut f = File::open(&self.spool)
            .local_io(|| format!("opening spool {}", self.spool.display()))?;
        storage
            .put(&self.key, &mut f, self.len, &self.meta)
            .map_err(|e| e.context(&self.key))
    }
}

/// A log line on standard error, naming the database.
pub fn log(name: &str, message: &str) {
    eprintln!("walsync: {name}: {message}");
}
