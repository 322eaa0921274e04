//! Building the LTX files a shipper stores: one level-0 file of new WAL
//! transactions, a level-0 diff or full copy when the WAL cannot be
//! followed, or a level-9 snapshot. Each is written to a spool file beside
//! the database (in memory only while that disk is full, see
//! [`super::spool`]) with the database checksums
//! before and after it, and its page records are updated in
//! [`super::pagesums`] under the new TXID (visible once it is committed).
//!
//! Pages are read through the files walsync's connection holds (see
//! [`super::source`]): the database file with the WAL's committed frames
//! laid over it.

use super::shipper::{Cause, Continuity, Shipped, Shipper};
use super::spool::{Body, SpoolWriter};
use super::state::{self, LocalState};
use crate::error::{Error, IoContext, Result};
use crate::event::{Event, ImageContent};
use crate::fsutil::{self, Hashing};
use crate::ltx::{self, Encoder, Header};
use crate::storage::{LtxId, ObjectMeta, Storage, SNAPSHOT_LEVEL};
use crate::wal::{self, Resume, WalHeader, WalPosition, WalReader};
use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// What kind of file a batch is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchKind {
    /// New transactions from the WAL (level 0).
    Incremental,
    /// Every page whose bytes differ from the shipped state (level 0).
    Diff,
    /// Every page, at level 0, marked as a full image.
    FullCopy,
    /// A level-9 snapshot.
    Snapshot,
}

/// One LTX file built and waiting to be stored.
#[derive(Debug)]
pub struct Batch {
    pub kind: BatchKind,
    pub key: String,
    pub id: LtxId,
    pub body: Body,
    pub len: u64,
    pub meta: ObjectMeta,
    /// When its last transaction was committed (Unix ms, its timestamp).
    pub time_ms: i64,
    /// The key of the marker saying this file is a full image, stored
    /// after it (full copies only).
    pub marker: Option<String>,
    /// The local state once this file is stored.
    pub(super) new_state: LocalState,
    /// The read epoch in which the batch was built (see the continuity rule).
    pub(super) read_epoch: u64,
    /// Whether the batch covers the whole valid WAL as scanned.
    pub(super) reached_wal_end: bool,
    /// Why a snapshot was taken, for the log (snapshots only).
    pub(super) why: Option<&'static str>,
}

impl Batch {
    /// The file as the replica holds it once stored.
    pub fn remote(&self) -> crate::catalog::RemoteLtx {
        let mut file = crate::catalog::RemoteLtx::new(self.id, self.key.clone(), self.len);
        file.image |= self.marker.is_some();
        file
    }

    /// What an uploader needs to store it.
    pub fn request(&self) -> UploadRequest {
        UploadRequest {
            key: self.key.clone(),
            txid: self.id.max_txid,
            body: self.body.clone(),
            len: self.len,
            meta: self.meta.clone(),
            marker: self.marker.clone(),
        }
    }
}

/// What [`Shipper::build_incremental`] found.
pub(super) enum Incremental {
    Nothing,
    /// The WAL was reset in a way the shipped position cannot follow.
    Reset,
    Batch(Box<Batch>),
}

/// The committed transactions a WAL holds after a position.
struct NewFrames {
    /// Newest frame of each page across them (page offsets in the WAL).
    latest: BTreeMap<u32, u64>,
    /// Database size after the last of them.
    db_pages: u32,
    from: WalPosition,
    end: WalPosition,
    salts: (u32, u32),
}

impl NewFrames {
    fn read(mut reader: WalReader, db_pages: u32) -> Result<NewFrames> {
        let header = *reader.header();
        let from = reader.position();
        let mut news = NewFrames {
            latest: BTreeMap::new(),
            db_pages,
            from,
            end: from,
            salts: (header.salt1, header.salt2),
        };
        while let Some(txn) = reader.next_transaction()? {
            for f in txn.frames {
                news.latest.insert(f.pgno, f.page_offset);
            }
            news.db_pages = txn.db_pages;
        }
        news.end = reader.position();
        Ok(news)
    }

    /// The LTX header of a file carrying them, with the WAL range it covers.
    fn header(&self, page_size: u32, id: LtxId, now_ms: i64) -> Header {
        let mut h = header_for(page_size, id, self.db_pages, now_ms);
        h.wal_offset = self.from.offset;
        h.wal_size = self.end.offset - self.from.offset;
        (h.wal_salt1, h.wal_salt2) = self.salts;
        h
    }
}

impl Shipper {
    /// New committed transactions since the shipped position, as one level-0
    /// file with TXID + 1.
    pub(super) fn build_incremental(&mut self, now_ms: i64) -> Result<Incremental> {
        let Shipped::Known(state) = self.shipped.clone() else {
            return Ok(Incremental::Nothing);
        };
        let source = self.source.as_ref().ok_or_else(|| gone(&self.path))?;
        let wal = source.open_wal()?;
        let wal_bytes = wal.metadata().map(|m| m.len()).unwrap_or(0);
        if wal_bytes != self.health.wal_bytes {
            self.health.wal_bytes = wal_bytes;
            self.health.changed = true;
        }
        let start = state.position();
        let reader = match WalReader::resume(&wal, start)? {
            Resume::Continue(r) => r,
            // A WAL restart loses nothing when SQLite could only make it
            // after backfilling all we shipped (see the continuity rule).
            Resume::Reset if self.continuity != Continuity::Covered => {
                return Ok(Incremental::Reset)
            }
            Resume::Reset => match WalReader::open(&wal)? {
                Some(r) => r,
                None => return Ok(Incremental::Nothing),
            },
        };
        let news = NewFrames::read(reader, state.db_pages)?;
        if news.end == news.from {
            if news.from != start {
                // The log restarted but holds nothing new yet: remember the new start.
                let mut s = state;
                s.set_position(news.from);
                self.state_dir.save(&s)?;
                self.shipped = Shipped::Known(s);
            }
            return Ok(Incremental::Nothing);
        }
        let txid = state.txid + 1;
        let id = LtxId {
            level: 0,
            min_txid: txid,
            max_txid: txid,
        };
        let (mut enc, spool) = self.spool_encoder(id, news.header(self.page_size, id, now_ms))?;
        let post = self
            .encode_frames(&news, &wal, &state, txid, &mut enc)
            .map_err(|e| self.spool_failed(&spool, e))?;
        // The frames must still be the ones validated: a restart would change the salts.
        if WalHeader::read(&wal)?.map(|h| (h.salt1, h.salt2)) != Some(news.salts) {
            return Ok(Incremental::Reset);
        }
        let pre = state.db_checksum;
        let mut new_state = state;
        new_state.txid = txid;
        new_state.db_pages = news.db_pages;
        new_state.db_checksum = post;
        new_state.set_position(news.end);
        super::triggers::record_change(&mut new_state, news.latest.len() as u64, now_ms);
        let built = Built {
            kind: BatchKind::Incremental,
            id,
            spool,
            pre,
            new_state,
            reached_wal_end: true,
            timestamp_ms: now_ms,
        };
        Ok(Incremental::Batch(Box::new(self.finish(enc, built)?)))
    }

    /// Writes the newest frame of each page into `enc`, records the pages
    /// under `txid` and returns the database checksum after them.
    fn encode_frames(
        &mut self,
        news: &NewFrames,
        wal_file: &File,
        state: &LocalState,
        txid: u64,
        enc: &mut Encoder<Hashing<SpoolWriter>>,
    ) -> Result<u64> {
        let lock = ltx::lock_pgno(self.page_size);
        let mut xor = state.db_checksum;
        for (&pgno, &offset) in news.latest.range(..=news.db_pages) {
            if pgno == lock {
                continue;
            }
            wal::read_page(wal_file, offset, self.page_size, &mut self.page)?;
            let record = self.pagesums.record_of(pgno, &self.page);
            let old = if pgno <= state.db_pages {
                self.pagesums.get(pgno, state.txid)?
            } else {
                0
            };
            xor ^= old ^ record.checksum;
            self.pagesums.put(pgno, state.txid, txid, record)?;
            enc.write_page(pgno, &self.page)?;
        }
        // Pages past the new end leave the database.
        for pgno in (news.db_pages + 1)..=state.db_pages {
            if pgno != lock {
                xor ^= self.pagesums.get(pgno, state.txid)?;
            }
        }
        Ok(ltx::checksum_flag(xor))
    }

    /// A level-9 snapshot of the shipped state when the interval has passed.
    pub(super) fn periodic_snapshot(&mut self, now_ms: i64) -> Result<Option<Batch>> {
        let Some(state) = self.state() else {
            return Ok(None);
        };
        let trigger = super::triggers::snapshot_due(&self.settings, state, now_ms);
        if (trigger.is_none() && !self.snapshot_requested())
            || self.continuity != Continuity::Covered
        {
            return Ok(None);
        }
        if state.last_snapshot_txid == state.txid {
            // Nothing changed since the last snapshot: it still stands.
            let mut s = state.clone();
            super::triggers::record_snapshot(&mut s, now_ms);
            self.state_dir.save(&s)?;
            self.shipped = Shipped::Known(s);
            return Ok(None);
        }
        let why = match trigger {
            Some(t) => t.name(),
            None => "asked for by `walsync snapshot`",
        };
        Ok(self
            .build_image(BatchKind::Snapshot, None, now_ms)?
            .map(|b| Batch {
                why: Some(why),
                ..b
            }))
    }

    /// Every page of the database, read from the database file with the WAL
    /// frames laid over it: as of the end of the valid WAL (a first snapshot,
    /// a full copy or a diff), or as of the shipped position (a periodic
    /// snapshot). A diff writes only the pages whose bytes differ from the
    /// page record of the shipped state, and is `None` when none does (the
    /// database file holds exactly what was shipped).
    pub(super) fn build_image(
        &mut self,
        kind: BatchKind,
        cause: Option<Cause>,
        now_ms: i64,
    ) -> Result<Option<Batch>> {
        let periodic = kind == BatchKind::Snapshot && self.state().is_some();
        let plan = self.image_plan(kind);
        let source = self.source.as_ref().ok_or_else(|| gone(&self.path))?;
        let until = match (&self.shipped, periodic) {
            (Shipped::Known(s), true) => Some(s.position()),
            _ => None,
        };
        let wal = source.open_wal()?;
        let overlay = Overlay::scan(&wal, until)?;
        let db_pages = match (&self.shipped, periodic, overlay.db_pages) {
            (Shipped::Known(s), true, _) => s.db_pages,
            (_, _, Some(n)) => n,
            _ => db_pages_from_file(source.db_file(), self.page_size, &mut self.page)?,
        };
        let header = header_for(self.page_size, plan.id, db_pages, now_ms);
        let (mut enc, spool) = self.spool_encoder(plan.id, header)?;
        let image = ImageSource {
            wal: &wal,
            overlay: &overlay,
            db_pages,
        };
        let written = self
            .encode_image(kind, periodic, &plan, &image, &mut enc)
            .map_err(|e| self.spool_failed(&spool, e))?;
        let mut new_state = match &self.shipped {
            Shipped::Known(s) => s.clone(),
            _ => state::new_state(&self.storage.describe(), &self.name, self.page_size),
        };
        if kind == BatchKind::Diff && written.changed == 0 && db_pages == new_state.db_pages {
            drop(enc);
            return self.nothing_changed(new_state, overlay.end, cause);
        }
        if periodic && written.checksum != new_state.db_checksum {
            self.emit(Event::SnapshotRebased {
                db: self.name.clone(),
            });
        }
        new_state.txid = plan.new_txid;
        new_state.db_pages = db_pages;
        new_state.db_checksum = written.checksum;
        if kind == BatchKind::Snapshot {
            super::triggers::record_snapshot(&mut new_state, now_ms);
            new_state.last_snapshot_txid = plan.new_txid;
        } else if kind == BatchKind::FullCopy {
            // A full copy is an image too: the snapshot triggers start over
            // from it (a fresh state would otherwise call for a snapshot at
            // once). The last snapshot TXID stays the level-9 one the
            // start-up check lists from.
            super::triggers::record_snapshot(&mut new_state, now_ms);
        } else {
            let pages = if kind == BatchKind::Diff {
                written.changed
            } else {
                db_pages
            };
            super::triggers::record_change(&mut new_state, u64::from(pages), now_ms);
        }
        if !periodic {
            new_state.set_position(overlay.end.unwrap_or(WalPosition {
                offset: 0,
                salt1: 0,
                salt2: 0,
                checksum: (0, 0),
            }));
        }
        let built = Built {
            kind,
            id: plan.id,
            spool,
            pre: plan.pre,
            new_state,
            reached_wal_end: !periodic,
            timestamp_ms: now_ms,
        };
        let batch = self.finish(enc, built)?;
        if let Some(cause) = cause {
            self.report_image(kind, cause, written.changed, db_pages, &batch);
        }
        Ok(Some(batch))
    }

    /// Writes the pages of an image into `enc`: every page, or for a diff
    /// the ones that changed (and page 1, so it is never empty). Records the
    /// pages written, unless it is a periodic snapshot of what is recorded.
    fn encode_image(
        &mut self,
        kind: BatchKind,
        periodic: bool,
        plan: &ImagePlan,
        image: &ImageSource,
        enc: &mut Encoder<Hashing<SpoolWriter>>,
    ) -> Result<Written> {
        let source = self.source.as_ref().ok_or_else(|| gone(&self.path))?;
        let (db_file, wal_file) = (source.db_file(), image.wal);
        let (overlay, db_pages) = (image.overlay, image.db_pages);
        let lock = ltx::lock_pgno(self.page_size);
        let mut xor = 0u64;
        let mut changed = 0u32;
        for pgno in (1..=db_pages).filter(|&p| p != lock) {
            read_state_page(
                db_file,
                wal_file,
                overlay,
                pgno,
                self.page_size,
                &mut self.page,
            )?;
            if periodic {
                xor ^= ltx::page_checksum(pgno, &self.page);
                enc.write_page(pgno, &self.page)?;
                continue;
            }
            let record = self.pagesums.record_of(pgno, &self.page);
            xor ^= record.checksum;
            let unchanged = match (kind, &self.shipped) {
                (BatchKind::Diff, Shipped::Known(s)) if pgno <= s.db_pages => self
                    .pagesums
                    .get_record(pgno, s.txid)?
                    .is_some_and(|old| old.same_page_as(&record)),
                _ => false,
            };
            if unchanged && pgno != 1 {
                continue;
            }
            changed += u32::from(!unchanged);
            self.pagesums
                .put(pgno, plan.committed, plan.new_txid, record)?;
            enc.write_page(pgno, &self.page)?;
        }
        Ok(Written {
            checksum: ltx::checksum_flag(xor),
            changed,
        })
    }

    /// Says why a diff or full copy is shipped, and how big it is.
    fn report_image(&self, kind: BatchKind, cause: Cause, changed: u32, pages: u32, batch: &Batch) {
        let content = match kind {
            BatchKind::Diff => ImageContent::Diff { changed, pages },
            _ => ImageContent::FullCopy { pages },
        };
        self.emit(Event::Shipping {
            db: self.name.clone(),
            cause,
            content,
            txid: batch.id.max_txid,
            bytes: batch.len,
        });
    }

    /// The database checksum of the database as it is now (its file with
    /// the WAL's committed frames laid over it). Reads every page.
    pub(super) fn checksum_now(&mut self) -> Result<u64> {
        let source = self.source.as_ref().ok_or_else(|| gone(&self.path))?;
        let wal = source.open_wal()?;
        let overlay = Overlay::scan(&wal, None)?;
        let db_file = source.db_file();
        let db_pages = match overlay.db_pages {
            Some(n) => n,
            None => db_pages_from_file(db_file, self.page_size, &mut self.page)?,
        };
        let lock = ltx::lock_pgno(self.page_size);
        let mut xor = 0u64;
        for pgno in (1..=db_pages).filter(|&p| p != lock) {
            read_state_page(
                db_file,
                &wal,
                &overlay,
                pgno,
                self.page_size,
                &mut self.page,
            )?;
            xor ^= ltx::page_checksum(pgno, &self.page);
        }
        self.page = Vec::new();
        Ok(ltx::checksum_flag(xor))
    }

    /// The TXIDs and pre-apply checksum of an image of `kind`.
    fn image_plan(&self, kind: BatchKind) -> ImagePlan {
        let (committed, new_txid, pre) = match (&self.shipped, kind) {
            (Shipped::Known(s), BatchKind::Snapshot) => (s.txid, s.txid, 0),
            (Shipped::Known(s), _) => (s.txid, s.txid + 1, s.db_checksum),
            (Shipped::Foreign { remote_max, .. }, _) => (0, remote_max + 1, 0),
            (Shipped::Nothing, _) => (0, 1, 0),
        };
        let id = if kind == BatchKind::Snapshot {
            LtxId {
                level: SNAPSHOT_LEVEL,
                min_txid: 1,
                max_txid: new_txid,
            }
        } else {
            LtxId {
                level: 0,
                min_txid: new_txid,
                max_txid: new_txid,
            }
        };
        ImagePlan {
            id,
            committed,
            new_txid,
            pre,
        }
    }

    /// A diff found every page as shipped: nothing to store. The WAL is
    /// followed from its end from now on (it was read to there in this read
    /// epoch, so the read mark is covered).
    fn nothing_changed(
        &mut self,
        mut state: LocalState,
        end: Option<WalPosition>,
        cause: Option<Cause>,
    ) -> Result<Option<Batch>> {
        if let Some(end) = end {
            state.set_position(end);
        }
        state.checkpointing = false;
        self.state_dir.save(&state)?;
        self.shipped = Shipped::Known(state);
        self.continuity = Continuity::Covered;
        if let Some(cause) = cause {
            self.emit(Event::NothingToShip {
                db: self.name.clone(),
                cause,
            });
        }
        Ok(None)
    }

    /// An encoder writing the batch `id` where its bytes wait for upload,
    /// and a description of that place for messages.
    fn spool_encoder(
        &mut self,
        id: LtxId,
        header: Header,
    ) -> Result<(Encoder<Hashing<SpoolWriter>>, Spool)> {
        let path = self
            .state_dir
            .path(&format!("spool-{}-{:016x}.ltx", id.level, id.max_txid));
        let writer = self.spool_place.writer(path)?;
        let spool = Spool {
            place: writer.place(),
            on_disk: writer.on_disk(),
        };
        let enc =
            Encoder::new(Hashing::new(writer), header).map_err(|e| self.spool_failed(&spool, e))?;
        Ok((enc, spool))
    }

    /// A batch that could not be written: its writer, dropped, leaves
    /// nothing behind. A spool file that could not be written sends the
    /// next batches to memory for a while.
    fn spool_failed(&mut self, spool: &Spool, e: Error) -> Error {
        match e {
            Error::Local(m) if spool.on_disk && self.spool_place.write_failed() => {
                self.spool_place.fell_back();
                Error::Local(format!(
                    "writing {}: {m}; walsync writes each batch there before it ships it: free space on that file system",
                    spool.place
                ))
            }
            e => e,
        }
    }

    /// Finishes the batch's bytes and describes the batch.
    fn finish(&mut self, enc: Encoder<Hashing<SpoolWriter>>, built: Built) -> Result<Batch> {
        let (_, hashing) = enc
            .finish(0)
            .map_err(|e| self.spool_failed(&built.spool, e))?;
        let (writer, sha256, len) = hashing.finish();
        let body = writer
            .finish()
            .map_err(|e| self.spool_failed(&built.spool, e))?;
        let layout = self.storage.layout();
        let mut new_state = built.new_state;
        new_state.checkpointing = false;
        Ok(Batch {
            kind: built.kind,
            key: layout.ltx_key(&self.name, built.id),
            id: built.id,
            body,
            len,
            time_ms: built.timestamp_ms,
            meta: ObjectMeta {
                sha256: Some(sha256),
                timestamp: Some(fsutil::rfc3339_ms(built.timestamp_ms)),
                db_checksums: Some(ObjectMeta::encode_db_checksums(
                    built.pre,
                    new_state.db_checksum,
                )),
            },
            marker: (built.kind == BatchKind::FullCopy)
                .then(|| layout.image_marker_key(&self.name, built.id)),
            new_state,
            read_epoch: self.read_epoch,
            reached_wal_end: built.reached_wal_end,
            why: None,
        })
    }
}

/// Where an image goes in the chain.
struct ImagePlan {
    id: LtxId,
    /// The TXID committed now (page records of newer TXIDs are invisible).
    committed: u64,
    new_txid: u64,
    /// The database checksum before it (0: not recorded).
    pre: u64,
}

/// Where an image's pages come from.
struct ImageSource<'a> {
    wal: &'a File,
    overlay: &'a Overlay,
    db_pages: u32,
}

/// What [`Shipper::encode_image`] wrote.
struct Written {
    /// The database checksum of the image (every page, written or not).
    checksum: u64,
    /// Pages that differ from the record (a diff), or 0.
    changed: u32,
}

/// Where a batch is written, as messages name it.
struct Spool {
    place: String,
    on_disk: bool,
}

/// A batch written, before it is described.
struct Built {
    kind: BatchKind,
    id: LtxId,
    spool: Spool,
    pre: u64,
    new_state: LocalState,
    reached_wal_end: bool,
    timestamp_ms: i64,
}

fn gone(path: &Path) -> Error {
    Error::Database(format!("{} is gone", path.display()))
}

/// The header of a file walsync writes. Files carry the NoChecksum flag,
/// like Litestream's: `litestream restore` 0.5.17 merges its restore plan
/// through a compactor that writes NoChecksum output but copies the last
/// input's post-apply checksum into it, so it refuses ("post-apply checksum
/// not allowed") any replica whose files carry checksums. walsync's
/// database checksums travel in the object metadata instead
/// (`x-amz-meta-walsync-checksums`), where its restore and verify check
/// them and Litestream does not look.
fn header_for(page_size: u32, id: LtxId, commit: u32, now_ms: i64) -> Header {
    Header {
        flags: ltx::HEADER_FLAG_NO_CHECKSUM,
        page_size,
        commit,
        min_txid: id.min_txid,
        max_txid: id.max_txid,
        timestamp_ms: now_ms,
        ..Header::default()
    }
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
    fn scan(wal_file: &File, until: Option<WalPosition>) -> Result<Overlay> {
        let mut overlay = Overlay::default();
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

/// The database size when the WAL holds no commit: the size recorded in
/// the database header (a checkpoint that could not backfill every frame
/// leaves the file longer than the database, e.g. after a VACUUM), or the
/// file size when the header's size is not valid.
fn db_pages_from_file(db_file: &File, page_size: u32, page: &mut Vec<u8>) -> Result<u32> {
    let len = db_file
        .metadata()
        .db_io(|| "reading database size".into())?
        .len();
    let in_file = (len / u64::from(page_size)) as u32;
    if in_file == 0 {
        return Ok(0);
    }
    read_db_page(db_file, 1, page_size, page)?;
    let be32 = |at: usize| u32::from_be_bytes([page[at], page[at + 1], page[at + 2], page[at + 3]]);
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

/// Reads page `pgno` of the state (the WAL's frame when the overlay has one,
/// else the database file's page) into `page`.
fn read_state_page(
    db_file: &File,
    wal_file: &File,
    overlay: &Overlay,
    pgno: u32,
    page_size: u32,
    page: &mut Vec<u8>,
) -> Result<()> {
    match overlay.latest.get(&pgno) {
        Some(&offset) => wal::read_page(wal_file, offset, page_size, page),
        None => read_db_page(db_file, pgno, page_size, page),
    }
}

/// Reads page `pgno` from the database file (zeros past its end).
fn read_db_page(db_file: &File, pgno: u32, page_size: u32, page: &mut Vec<u8>) -> Result<()> {
    page.resize(page_size as usize, 0);
    let at = u64::from(pgno - 1) * u64::from(page_size);
    let mut done = 0;
    while done < page.len() {
        let n = db_file
            .read_at(&mut page[done..], at + done as u64)
            .db_io(|| format!("reading page {pgno} of the database"))?;
        if n == 0 {
            page[done..].fill(0);
            break;
        }
        done += n;
    }
    Ok(())
}

/// What an uploader needs to store a batch: its key, bytes and metadata.
#[derive(Debug, Clone)]
pub struct UploadRequest {
    pub key: String,
    /// The TXID the object ends at.
    pub txid: u64,
    pub body: Body,
    pub len: u64,
    pub meta: ObjectMeta,
    /// A marker to store once the object is (see [`Batch::marker`]).
    pub marker: Option<String>,
}

impl UploadRequest {
    /// Stores the batch under the key, then its marker; returns once both
    /// are stored.
    pub fn upload(&self, storage: &dyn Storage) -> Result<()> {
        let mut body = self.body.open()?;
        storage
            .put(&self.key, &mut body, self.len, &self.meta)
            .map_err(|e| e.context(&self.key))?;
        if let Some(marker) = &self.marker {
            storage
                .put(
                    marker,
                    &mut std::io::Cursor::new(&[][..]),
                    0,
                    &ObjectMeta::default(),
                )
                .map_err(|e| e.context(marker))?;
        }
        Ok(())
    }
}
