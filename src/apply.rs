//! Applying a restore plan's LTX files in TXID order while proving that the
//! result equals the source: the one replay that `restore` and `verify` share.
//!
//! The [`Applier`] keeps the running database checksum of what it has
//! applied (CRC-64 of every page, XORed, as LTX defines it). Before each file
//! it compares that checksum with the file's recorded pre-apply checksum,
//! and after it with the recorded post-apply checksum. A file whose pages do
//! not produce the checksum its writer recorded is named, whatever the chain
//! of recorded checksums says. The pages go to a [`Pages`] target:
//! - [`OutputPages`] writes them into the restored database file (restore);
//! - [`ChecksumMap`] keeps only each page's checksum, 8 bytes per page, in
//!   memory for small databases and in a temporary file for large ones
//!   (verify, which writes no database).
//!
//! Invariant: after `apply` returns `Ok` for a file, the target holds the
//! database exactly as of that file's max TXID, and `checksum` is its
//! database checksum.

use crate::catalog::RemoteLtx;
use crate::error::{Error, IoContext, Result};
use crate::ltx::{self, Decoder};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;

/// What was wrong with one object, for reports that sort problems by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Listed, but gone when read.
    Missing,
    /// Its bytes do not decode (bad header, pages, index, CRC-64, short).
    Corrupt,
    /// Its body's SHA-256 differs from its metadata.
    Sha256Mismatch,
    /// Its header disagrees with its key or with the files before it.
    Mismatch,
    /// The database checksum before or after it is not the recorded one: the
    /// files before it do not lead to its starting state, or its pages do
    /// not produce the state its writer recorded.
    ChecksumChain,
    /// The storage failed while reading it.
    Storage,
    /// A local failure (disk), not the object's.
    Local,
    /// The work was cancelled.
    Cancelled,
}

impl Fault {
    /// Its name in reports (`verify --json`).
    pub fn name(self) -> &'static str {
        match self {
            Fault::Missing => "missing",
            Fault::Corrupt => "corrupt",
            Fault::Sha256Mismatch => "sha256_mismatch",
            Fault::Mismatch => "mismatch",
            Fault::ChecksumChain => "checksum_chain",
            Fault::Storage => "storage",
            Fault::Local => "local",
            Fault::Cancelled => "cancelled",
        }
    }
}

/// An error about one object, with what kind of problem it is.
#[derive(Debug)]
pub struct ObjectError {
    pub fault: Fault,
    pub error: Error,
}

impl ObjectError {
    pub fn new(fault: Fault, error: Error) -> ObjectError {
        ObjectError { fault, error }
    }

    /// Classifies an error by its class alone: integrity errors are corrupt
    /// bytes, storage errors the storage's, the rest local.
    pub fn classify(error: Error) -> ObjectError {
        let fault = match &error {
            Error::Integrity(_) => Fault::Corrupt,
            Error::Storage(_) | Error::Credentials(_) => Fault::Storage,
            Error::Cancelled => Fault::Cancelled,
            _ => Fault::Local,
        };
        ObjectError { fault, error }
    }
}

impl From<ObjectError> for Error {
    fn from(e: ObjectError) -> Error {
        e.error
    }
}

/// Where applied pages go.
pub trait Pages {
    /// The page checksum of page `pgno` as it is now (`pgno` ≤ the current
    /// size, and not written since the last [`Pages::flush`]).
    fn checksum_of(&mut self, pgno: u32) -> Result<u64>;
    /// Page `pgno` becomes `page`, whose page checksum is `checksum`. Within
    /// one file, pages come in increasing order.
    fn put(&mut self, pgno: u32, page: &[u8], checksum: u64) -> Result<()>;
    /// Page `pgno` is a hole: zeros that no file wrote (`checksum` is that
    /// of a zero page).
    fn put_hole(&mut self, pgno: u32, checksum: u64) -> Result<()>;
    /// Makes every page put so far readable by [`Pages::checksum_of`].
    fn flush(&mut self) -> Result<()>;
    /// The database is now `pages` pages of `page_size` bytes.
    fn set_len(&mut self, pages: u32, page_size: u32) -> Result<()>;
}

/// Applies LTX files in order to a [`Pages`] target, checking the database
/// checksum before and after each.
pub struct Applier<P: Pages> {
    pub pages_target: P,
    pub page_size: Option<u32>,
    /// Database size in pages.
    pub pages: u32,
    /// Running database checksum of what was applied.
    pub checksum: u64,
    /// The TXID of the state applied so far (0 before the first file).
    txid: u64,
    /// The commit time (Unix ms) the last file applied records.
    pub timestamp_ms: i64,
    first: bool,
    page: Vec<u8>,
    zeros: Vec<u8>,
}

impl<P: Pages> Applier<P> {
    pub fn new(pages_target: P) -> Applier<P> {
        Applier {
            pages_target,
            page_size: None,
            pages: 0,
            checksum: ltx::EMPTY_DB_CHECKSUM,
            txid: 0,
            timestamp_ms: 0,
            first: true,
            page: Vec::new(),
            zeros: Vec::new(),
        }
    }

    /// Carries on from a state applied before (a read replica's, see
    /// [`crate::replica`]): `pages_target` holds the database at `txid`,
    /// `pages` pages of `page_size` bytes whose database checksum is
    /// `checksum`.
    pub fn resume(
        pages_target: P,
        page_size: u32,
        pages: u32,
        checksum: u64,
        txid: u64,
    ) -> Applier<P> {
        Applier {
            page_size: Some(page_size),
            pages,
            checksum,
            txid,
            first: false,
            ..Applier::new(pages_target)
        }
    }

    /// The TXID of the state applied so far.
    pub fn txid(&self) -> u64 {
        self.txid
    }

    /// Applies one file read from `src`. Its expected database checksums come
    /// from the LTX header and trailer, or, for files written with the
    /// NoChecksum flag (Litestream compatibility), from walsync's object
    /// metadata (`meta_checksums`) when present.
    pub fn apply(
        &mut self,
        f: &RemoteLtx,
        src: &mut dyn Read,
        meta_checksums: Option<(u64, u64)>,
    ) -> Result<(), ObjectError> {
        let key = &f.key;
        let damaged = |fault: Fault, m: String| ObjectError::new(fault, Error::Integrity(m));
        let ctx = |e: Error| ObjectError::classify(e.context(format!("object {key}")));
        let mut dec = Decoder::new(src).map_err(ctx)?;
        let h = *dec.header();
        if let Some(m) = crate::plan::name_mismatch(f, h.min_txid, h.max_txid) {
            return Err(damaged(Fault::Mismatch, format!("object {key} {m}")));
        }
        match self.page_size {
            None => self.page_size = Some(h.page_size),
            Some(ps) if ps != h.page_size => {
                return Err(damaged(
                    Fault::Mismatch,
                    format!(
                        "object {key} has page size {} but the files before it have {ps}",
                        h.page_size
                    ),
                ))
            }
            Some(_) => {}
        }
        if (self.first && !f.image) || (!self.first && h.is_snapshot()) {
            return Err(damaged(
                Fault::Mismatch,
                format!("object {key}: a restore must start with a full image (a snapshot) and continue with incremental files"),
            ));
        }
        let expected = if h.no_checksum() {
            meta_checksums
        } else {
            Some((h.pre_apply_checksum, 0))
        };
        // A zero checksum is "not recorded" (e.g. the first file walsync
        // writes when it takes over a replica from another tool). A file
        // that overlaps the state applied (a compaction starting at or
        // before its TXID, see [`crate::plan`]) started from an older state:
        // only its post-apply checksum says something then.
        let overlaps = !self.first && h.min_txid <= self.txid;
        if let Some((pre, _)) = expected.filter(|&(pre, _)| !self.first && !overlaps && pre != 0) {
            if pre != self.checksum {
                return Err(damaged(
                    Fault::ChecksumChain,
                    format!(
                        "restored bytes differ from the source's before {key}: its pre-apply checksum is {pre:016x}, the restored database's is {:016x}; the files before it do not lead to its starting state",
                        self.checksum
                    ),
                ));
            }
        }
        let mut page = std::mem::take(&mut self.page);
        let applied = self.apply_pages(&mut dec, &h, &mut page);
        self.page = page;
        applied.map_err(|e| match e.fault {
            Fault::Local | Fault::Cancelled => e,
            _ => ObjectError::new(e.fault, e.error.context(format!("object {key}"))),
        })?;
        let trailer = dec.finish().map_err(ctx)?;
        self.first = false;
        self.txid = h.max_txid;
        self.timestamp_ms = h.timestamp_ms;
        let post = match expected {
            None => None,
            Some(_) if !h.no_checksum() => Some(trailer.post_apply_checksum),
            Some((_, post)) => Some(post),
        };
        if let Some(post) = post.filter(|&p| p != 0 && p != self.checksum) {
            return Err(damaged(
                Fault::ChecksumChain,
                format!(
                    "restored bytes differ from the source's after {key}: its post-apply checksum is {post:016x}, the restored database's is {:016x}; its pages do not produce the state its writer recorded",
                    self.checksum
                ),
            ));
        }
        Ok(())
    }

    /// Applies the pages of one file and resizes the database to its commit.
    fn apply_pages(
        &mut self,
        dec: &mut Decoder<&mut dyn Read>,
        h: &ltx::Header,
        page: &mut Vec<u8>,
    ) -> Result<(), ObjectError> {
        let local = ObjectError::classify;
        let lock = h.lock_pgno();
        let old_pages = self.pages;
        // Highest page that exists in the database so far.
        let mut high = old_pages;
        while let Some(pgno) = dec.next_page(page).map_err(ObjectError::classify)? {
            if pgno <= old_pages {
                let old = self.pages_target.checksum_of(pgno).map_err(local)?;
                self.checksum = ltx::db_checksum_remove(self.checksum, old);
            } else if pgno > high + 1 {
                self.add_holes(high + 1, pgno, lock).map_err(local)?;
            }
            high = high.max(pgno);
            let sum = ltx::page_checksum(pgno, page);
            self.pages_target.put(pgno, page, sum).map_err(local)?;
            self.checksum = ltx::db_checksum_add(self.checksum, sum);
        }
        // Pages are read back below (truncation) and by the next file.
        self.pages_target.flush().map_err(local)?;
        if h.commit < old_pages {
            for pgno in (h.commit + 1)..=old_pages {
                if pgno == lock {
                    continue;
                }
                let old = self.pages_target.checksum_of(pgno).map_err(local)?;
                self.checksum = ltx::db_checksum_remove(self.checksum, old);
            }
        } else if h.commit > high {
            self.add_holes(high + 1, h.commit + 1, lock)
                .map_err(local)?;
        }
        self.pages_target
            .set_len(h.commit, h.page_size)
            .map_err(local)?;
        self.pages = h.commit;
        Ok(())
    }

    /// Pages between the old end and a page written beyond it that no file
    /// wrote are zeros; they count as zero pages.
    fn add_holes(&mut self, from: u32, to: u32, lock: u32) -> Result<()> {
        self.zeros.resize(self.page_size.unwrap_or(0) as usize, 0);
        for pgno in from..to {
            if pgno != lock {
                let sum = ltx::page_checksum(pgno, &self.zeros);
                self.pages_target.put_hole(pgno, sum)?;
                self.checksum = ltx::db_checksum_add(self.checksum, sum);
            }
        }
        Ok(())
    }
}

/// How many bytes of consecutive pages [`OutputPages`] gathers before one
/// write: a snapshot is one long run, so a restore makes one write per MiB
/// instead of one per page.
const WRITE_RUN: usize = 1 << 20;

/// The restored database file. The checksum of a page being replaced is
/// computed from the bytes already in the file (read back before it is
/// overwritten), so a restore needs no table of page checksums.
pub struct OutputPages {
    pub file: File,
    page_size: usize,
    old: Vec<u8>,
    /// Consecutive pages not yet written.
    run: Vec<u8>,
    run_start: u32,
}

impl OutputPages {
    pub fn new(file: File) -> OutputPages {
        OutputPages {
            file,
            page_size: 0,
            old: Vec::new(),
            run: Vec::new(),
            run_start: 0,
        }
    }

    fn offset(&self, pgno: u32) -> u64 {
        u64::from(pgno - 1) * self.page_size as u64
    }
}

impl Pages for OutputPages {
    fn checksum_of(&mut self, pgno: u32) -> Result<u64> {
        self.old.resize(self.page_size, 0);
        let at = self.offset(pgno);
        self.file
            .read_exact_at(&mut self.old, at)
            .local_io(|| format!("reading back page {pgno} of the restored file"))?;
        Ok(ltx::page_checksum(pgno, &self.old))
    }

    fn put(&mut self, pgno: u32, page: &[u8], _checksum: u64) -> Result<()> {
        self.page_size = page.len();
        let queued = (self.run.len() / page.len().max(1)) as u32;
        if !self.run.is_empty() && (pgno != self.run_start + queued || self.run.len() >= WRITE_RUN)
        {
            self.flush()?;
        }
        if self.run.is_empty() {
            self.run_start = pgno;
        }
        self.run.extend_from_slice(page);
        Ok(())
    }

    fn put_hole(&mut self, _pgno: u32, _checksum: u64) -> Result<()> {
        // A write beyond the end leaves zeros behind it; set_len covers the tail.
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.run.is_empty() {
            return Ok(());
        }
        let at = self.offset(self.run_start);
        let first = self.run_start;
        self.file
            .write_all_at(&self.run, at)
            .local_io(|| format!("writing pages from {first} of the restored file"))?;
        self.run.clear();
        Ok(())
    }

    fn set_len(&mut self, pages: u32, page_size: u32) -> Result<()> {
        self.page_size = page_size as usize;
        self.file
            .set_len(u64::from(pages) * u64::from(page_size))
            .local_io(|| "resizing the restored file".to_string())
    }
}

/// Page checksums of a database being replayed without writing it: 8 bytes
/// per page, in memory up to [`ChecksumMap::IN_MEMORY_PAGES`] pages, beyond
/// that in an unlinked temporary file read and written through a one-block
/// cache (a snapshot fills it sequentially).
pub struct ChecksumMap {
    store: MapStore,
}

enum MapStore {
    Memory(Vec<u64>),
    Disk(DiskMap),
}

impl ChecksumMap {
    /// Pages kept in memory (64 MiB of checksums) before moving to disk.
    pub const IN_MEMORY_PAGES: usize = 8 << 20;

    pub fn new() -> ChecksumMap {
        ChecksumMap {
            store: MapStore::Memory(Vec::new()),
        }
    }

    fn get(&mut self, pgno: u32) -> Result<u64> {
        let i = pgno as usize - 1;
        match &mut self.store {
            MapStore::Memory(v) => Ok(v.get(i).copied().unwrap_or(0)),
            MapStore::Disk(d) => d.get(i),
        }
    }

    fn set(&mut self, pgno: u32, checksum: u64) -> Result<()> {
        let i = pgno as usize - 1;
        if let MapStore::Memory(v) = &mut self.store {
            if i < Self::IN_MEMORY_PAGES {
                if v.len() <= i {
                    v.resize(i + 1, 0);
                }
                v[i] = checksum;
                return Ok(());
            }
            let mut disk = DiskMap::create()?;
            for (j, &c) in v.iter().enumerate() {
                disk.set(j, c)?;
            }
            self.store = MapStore::Disk(disk);
        }
        match &mut self.store {
            MapStore::Disk(d) => d.set(i, checksum),
            MapStore::Memory(_) => Ok(()),
        }
    }
}

impl Default for ChecksumMap {
    fn default() -> Self {
        Self::new()
    }
}

impl Pages for ChecksumMap {
    fn checksum_of(&mut self, pgno: u32) -> Result<u64> {
        self.get(pgno)
    }
    fn put(&mut self, pgno: u32, _page: &[u8], checksum: u64) -> Result<()> {
        self.set(pgno, checksum)
    }
    fn put_hole(&mut self, pgno: u32, checksum: u64) -> Result<()> {
        self.set(pgno, checksum)
    }
    fn flush(&mut self) -> Result<()> {
        Ok(())
    }
    fn set_len(&mut self, pages: u32, _page_size: u32) -> Result<()> {
        if let MapStore::Memory(v) = &mut self.store {
            v.truncate(pages as usize);
        }
        // On disk, entries past the end are never read before being set.
        Ok(())
    }
}

/// Entries per cached block of the on-disk map (64 KiB).
const DISK_BLOCK: usize = 8192;

/// The on-disk part of a [`ChecksumMap`].
struct DiskMap {
    file: File,
    block: Vec<u64>,
    block_no: Option<usize>,
    dirty: bool,
}

impl DiskMap {
    fn create() -> Result<DiskMap> {
        let dir = std::env::temp_dir();
        let path = dir.join(format!(
            "walsync-checksums-{}-{}",
            std::process::id(),
            crate::fsutil::now_ms()
        ));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .local_io(|| format!("creating {}", path.display()))?;
        // Unlinked at once: the space is freed when the map is dropped.
        let _ = std::fs::remove_file(&path);
        Ok(DiskMap {
            file,
            block: vec![0; DISK_BLOCK],
            block_no: None,
            dirty: false,
        })
    }

    fn load(&mut self, block_no: usize) -> Result<()> {
        if self.block_no == Some(block_no) {
            return Ok(());
        }
        self.write_back()?;
        let mut bytes = vec![0u8; DISK_BLOCK * 8];
        let at = (block_no * DISK_BLOCK * 8) as u64;
        let mut done = 0;
        while done < bytes.len() {
            let n = self
                .file
                .read_at(&mut bytes[done..], at + done as u64)
                .local_io(|| "reading the page checksum map".to_string())?;
            if n == 0 {
                break;
            }
            done += n;
        }
        for (slot, chunk) in self.block.iter_mut().zip(bytes.chunks_exact(8)) {
            let mut b = [0u8; 8];
            b.copy_from_slice(chunk);
            *slot = u64::from_le_bytes(b);
        }
        self.block_no = Some(block_no);
        Ok(())
    }

    fn write_back(&mut self) -> Result<()> {
        let (Some(block_no), true) = (self.block_no, self.dirty) else {
            return Ok(());
        };
        let bytes: Vec<u8> = self.block.iter().flat_map(|c| c.to_le_bytes()).collect();
        self.file
            .write_all_at(&bytes, (block_no * DISK_BLOCK * 8) as u64)
            .local_io(|| "writing the page checksum map".to_string())?;
        self.dirty = false;
        Ok(())
    }

    fn get(&mut self, i: usize) -> Result<u64> {
        self.load(i / DISK_BLOCK)?;
        Ok(self.block[i % DISK_BLOCK])
    }

    fn set(&mut self, i: usize, checksum: u64) -> Result<()> {
        self.load(i / DISK_BLOCK)?;
        self.block[i % DISK_BLOCK] = checksum;
        self.dirty = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_map_spills_to_disk_and_keeps_values() {
        let mut m = ChecksumMap::new();
        m.set(1, 11).unwrap();
        m.set(3, 33).unwrap();
        assert_eq!(m.get(2).unwrap(), 0);
        let far = ChecksumMap::IN_MEMORY_PAGES as u32 + 5;
        m.set(far, 99).unwrap();
        assert!(matches!(m.store, MapStore::Disk(_)));
        assert_eq!(m.get(1).unwrap(), 11);
        assert_eq!(m.get(3).unwrap(), 33);
        assert_eq!(m.get(far).unwrap(), 99);
        m.set(3, 34).unwrap();
        assert_eq!(m.get(far).unwrap(), 99);
        assert_eq!(m.get(3).unwrap(), 34);
    }
}
