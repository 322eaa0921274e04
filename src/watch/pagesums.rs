//! The record of every shipped page, kept on disk beside the database, not
//! in RAM: its LTX page checksum and a keyed hash of its bytes.
//!
//! - The LTX database checksum is the XOR of the page checksums (CRC-64), so
//!   shipping a changed page needs that page's previous checksum.
//! - After a WAL reset walsync cannot follow, walsync ships only the pages
//!   whose bytes differ from what it shipped. That decision rests on the
//!   hash, never on the CRC: a tenant controls page contents, and CRC-64 is
//!   linear, so two different pages with the same CRC are easy to make. The
//!   hash is SHA-256 over a random per-database key, the page number and the
//!   page, truncated to 128 bits; without the key (which never leaves this
//!   file) no one can make two pages that collide.
//!
//! File format (`pagesums2`): a 64-byte header (magic, then the 32-byte key),
//! then per page two slots of `(txid u64, checksum u64, hash [u8; 16])`. A
//! batch for TXID T writes into the slot that is not the current one, tagged
//! T; the record "as of" committed TXID N is the slot with the largest tag
//! ≤ N. So a crash after writing slots but before the local state records T
//! leaves the old records readable: no journal and no fsync ordering is
//! needed for `kill -9`. A zero hash means "unknown" (records converted from
//! the first format, which had none): such a page always counts as changed.

use crate::error::{Error, IoContext, Result};
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 16] = b"walsync-pages-2\n";
const HEADER: u64 = 64;
const SLOT: u64 = 32;
const ENTRY: u64 = 2 * SLOT;
/// The first format: two slots of `(txid u64, checksum u64)` per page.
const V1_ENTRY: u64 = 32;

/// What walsync shipped of one page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRecord {
    /// LTX page checksum (CRC-64 of page number and bytes).
    pub checksum: u64,
    /// Keyed hash of page number and bytes; zero when unknown.
    pub hash: [u8; 16],
}

impl PageRecord {
    /// Whether `other` is certainly the same page content (by the hash).
    pub fn same_page_as(&self, other: &PageRecord) -> bool {
        self.hash != [0; 16] && self.hash == other.hash && self.checksum == other.checksum
    }
}

/// The sidecar file of page records. The file is opened when a record is
/// read or written and closed by [`PageSums::release`] (after each poll), so
/// an idle database holds no descriptor for it.
pub struct PageSums {
    file: Option<File>,
    path: PathBuf,
    /// SHA-256 state after one block holding the key.
    keyed: Sha256,
    /// The file's length as last known while it is open: room is kept
    /// ahead without a `stat` per record written.
    allocated: Option<u64>,
}

/// A lookup result: which slot holds the current record.
#[derive(Debug, Clone, Copy)]
struct Current {
    slot: u64,
    record: PageRecord,
}

impl PageSums {
    /// Opens the record in `dir`, creating it with a fresh key if needed. A
    /// record in the first format (`pagesums`) is converted, its hashes
    /// unknown.
    pub fn open(dir: &Path) -> Result<PageSums> {
        let path = dir.join("pagesums2");
        let old = dir.join("pagesums");
        if !path.exists() {
            let tmp = dir.join(".pagesums2.tmp");
            create(&tmp)?;
            if old.exists() {
                convert_v1(&old, &tmp)?;
            }
            std::fs::rename(&tmp, &path).local_io(|| format!("creating {}", path.display()))?;
            let _ = std::fs::remove_file(&old);
        }
        let file = open_rw(&path)?;
        let mut header = [0u8; HEADER as usize];
        file.read_exact_at(&mut header, 0)
            .local_io(|| format!("reading {}", path.display()))?;
        if &header[..16] != MAGIC {
            return Err(Error::Other(format!(
                "{} is not a walsync page record; remove it (walsync then ships a full copy)",
                path.display()
            )));
        }
        let mut block = [0u8; 64];
        block[..32].copy_from_slice(&header[16..48]);
        Ok(PageSums {
            file: None,
            allocated: None,
            path,
            keyed: Sha256::new_with_prefix(block),
        })
    }

    /// Closes the file until the next record is read or written.
    pub fn release(&mut self) {
        self.file = None;
        self.allocated = None;
    }

    fn file(&mut self) -> Result<&File> {
        if self.file.is_none() {
            self.file = Some(open_rw(&self.path)?);
        }
        match &self.file {
            Some(f) => Ok(f),
            None => Err(Error::Other("page record not open".into())),
        }
    }

    /// The record of `page` as page `pgno`.
    pub fn record_of(&self, pgno: u32, page: &[u8]) -> PageRecord {
        let digest = self
            .keyed
            .clone()
            .chain_update(pgno.to_be_bytes())
            .chain_update(page)
            .finalize();
        let mut hash = [0u8; 16];
        hash.copy_from_slice(&digest[..16]);
        PageRecord {
            checksum: crate::ltx::page_checksum(pgno, page),
            hash,
        }
    }

    /// The checksum of `pgno` as of committed TXID `txid` (0 when unknown).
    pub fn get(&mut self, pgno: u32, txid: u64) -> Result<u64> {
        Ok(self.get_record(pgno, txid)?.map_or(0, |r| r.checksum))
    }

    /// The record of `pgno` as of committed TXID `txid`, if any.
    pub fn get_record(&mut self, pgno: u32, txid: u64) -> Result<Option<PageRecord>> {
        Ok(self.current(pgno, txid)?.map(|c| c.record))
    }

    /// Records `record` for `pgno` in batch `new_txid`, which becomes visible
    /// once the committed TXID reaches `new_txid`; `committed` is the TXID
    /// committed now.
    pub fn put(
        &mut self,
        pgno: u32,
        committed: u64,
        new_txid: u64,
        record: PageRecord,
    ) -> Result<()> {
        let mut entry = [0u8; ENTRY as usize];
        entry[..8].copy_from_slice(&new_txid.to_be_bytes());
        entry[8..16].copy_from_slice(&record.checksum.to_be_bytes());
        entry[16..32].copy_from_slice(&record.hash);
        let at = entry_offset(pgno);
        match self.current(pgno, committed)? {
            // Keep the committed slot, overwrite the other one.
            Some(c) => self.write_at(&entry[..SLOT as usize], at + (1 - c.slot) * SLOT),
            // Nothing committed: both slots are stale, replace the whole entry.
            None => self.write_at(&entry, at),
        }
    }

    /// XOR of the checksums of pages `1..=db_pages` (skipping `lock_pgno`) as
    /// of `txid`, with slots tagged above `txid` (left by a batch that never
    /// committed) cleared on the way. Reads the file sequentially.
    pub fn xor_all_and_clean(&mut self, db_pages: u32, txid: u64, lock_pgno: u32) -> Result<u64> {
        const CHUNK: u32 = 4096;
        let mut acc = 0u64;
        let mut chunk = vec![0u8; (ENTRY * u64::from(CHUNK)) as usize];
        let mut pgno: u32 = 1;
        while pgno <= db_pages {
            let n = (db_pages - pgno + 1).min(CHUNK);
            let bytes = &mut chunk[..(u64::from(n) * ENTRY) as usize];
            let at = entry_offset(pgno);
            self.read_at_padded(bytes, at)?;
            let mut dirty = false;
            for (i, e) in bytes.chunks_exact_mut(ENTRY as usize).enumerate() {
                for s in 0..2 {
                    let slot = &mut e[s * SLOT as usize..(s + 1) * SLOT as usize];
                    if be64(slot) > txid {
                        slot.fill(0);
                        dirty = true;
                    }
                }
                if pgno + i as u32 != lock_pgno {
                    acc ^= pick(e, txid).map_or(0, |c| c.record.checksum);
                }
            }
            if dirty {
                self.write_at(bytes, at)?;
            }
            pgno += n;
        }
        Ok(acc)
    }

    fn current(&mut self, pgno: u32, txid: u64) -> Result<Option<Current>> {
        let mut e = [0u8; ENTRY as usize];
        self.read_at_padded(&mut e, entry_offset(pgno))?;
        Ok(pick(&e, txid))
    }

    fn read_at_padded(&mut self, buf: &mut [u8], at: u64) -> Result<()> {
        let path = self.path.clone();
        read_at_padded(self.file()?, &path, buf, at)
    }

    fn write_at(&mut self, buf: &[u8], at: u64) -> Result<()> {
        let path = self.path.clone();
        let end = at + buf.len() as u64;
        let allocated = self.allocated;
        let file = self.file()?;
        let allocated = reserve_ahead(file, end, allocated);
        self.allocated = Some(allocated);
        self.file()?
            .write_all_at(buf, at)
            .local_io(|| format!("writing {}", path.display()))
    }
}

/// The least room kept allocated past the last record written.
const HEADROOM: u64 = 32 * 1024;

/// Keeps room allocated in `file` past `end` (at least [`HEADROOM`], or
/// half of `end`), taken while the disk has some: on a disk that filled up
/// meanwhile, the records of a database that grows still have a place, and
/// the batch that ships its new pages can be built (see
/// [`super::spool`]). Best effort: a file system without `fallocate`, or
/// one already full, is left as it is. `allocated` is the file's length
/// as last known (`None`: ask, once per opening, not once per page);
/// returns it as it is now.
fn reserve_ahead(file: &File, end: u64, allocated: Option<u64>) -> u64 {
    use std::os::unix::io::AsRawFd;
    let len = match allocated {
        Some(len) => len,
        None => file.metadata().map_or(0, |m| m.len()),
    };
    let wanted = end + HEADROOM.max(end / 2);
    // Only when less than half the room is left: one call now and then.
    if len >= end + (wanted - end) / 2 {
        return len;
    }
    let (Ok(offset), Ok(extra)) = (
        libc::off_t::try_from(len),
        libc::off_t::try_from(wanted - len),
    ) else {
        return len;
    };
    // SAFETY: a valid descriptor; allocates blocks within the file.
    if unsafe { libc::posix_fallocate(file.as_raw_fd(), offset, extra) } == 0 {
        wanted
    } else {
        len.max(end)
    }
}

fn entry_offset(pgno: u32) -> u64 {
    HEADER + u64::from(pgno.saturating_sub(1)) * ENTRY
}

fn be64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

/// The slot with the largest non-zero tag ≤ `txid`.
fn pick(entry: &[u8], txid: u64) -> Option<Current> {
    (0..2u64)
        .filter_map(|s| {
            let slot = &entry[(s * SLOT) as usize..((s + 1) * SLOT) as usize];
            let tag = be64(slot);
            (tag != 0 && tag <= txid).then(|| {
                let mut hash = [0u8; 16];
                hash.copy_from_slice(&slot[16..32]);
                let record = PageRecord {
                    checksum: be64(&slot[8..]),
                    hash,
                };
                (tag, Current { slot: s, record })
            })
        })
        .max_by_key(|&(tag, _)| tag)
        .map(|(_, c)| c)
}

fn read_at_padded(file: &File, path: &Path, buf: &mut [u8], at: u64) -> Result<()> {
    buf.fill(0);
    let mut done = 0;
    while done < buf.len() {
        let n = file
            .read_at(&mut buf[done..], at + done as u64)
            .local_io(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        done += n;
    }
    Ok(())
}

fn open_rw(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .local_io(|| format!("opening page record {}", path.display()))
}

/// Creates an empty record with a fresh random key at `path`.
fn create(path: &Path) -> Result<()> {
    let mut key = [0u8; 32];
    File::open("/dev/urandom")
        .and_then(|mut r| r.read_exact(&mut key))
        .local_io(|| "reading /dev/urandom for the page-hash key".to_string())?;
    let mut header = [0u8; HEADER as usize];
    header[..16].copy_from_slice(MAGIC);
    header[16..48].copy_from_slice(&key);
    let file = File::create(path).local_io(|| format!("creating {}", path.display()))?;
    file.write_all_at(&header, 0)
        .and_then(|()| file.sync_all())
        .local_io(|| format!("writing {}", path.display()))
}

/// Copies the records of a first-format file into a new one (hashes unknown).
fn convert_v1(old: &Path, new: &Path) -> Result<()> {
    let from = File::open(old).local_io(|| format!("opening {}", old.display()))?;
    let to = OpenOptions::new()
        .write(true)
        .open(new)
        .local_io(|| format!("opening {}", new.display()))?;
    let len = from
        .metadata()
        .local_io(|| format!("reading {}", old.display()))?
        .len();
    let mut v1 = vec![0u8; (V1_ENTRY * 4096) as usize];
    let mut v2 = Vec::with_capacity((ENTRY * 4096) as usize);
    let mut at = 0u64;
    while at < len {
        let n = ((len - at) as usize).min(v1.len());
        read_at_padded(&from, old, &mut v1[..n], at)?;
        v2.clear();
        for e in v1[..n].chunks(V1_ENTRY as usize) {
            for s in 0..2 {
                let mut slot = [0u8; SLOT as usize];
                if let Some(old_slot) = e.get(s * 16..s * 16 + 16) {
                    slot[..16].copy_from_slice(old_slot);
                }
                v2.extend_from_slice(&slot);
            }
        }
        to.write_all_at(&v2, HEADER + at / V1_ENTRY * ENTRY)
            .local_io(|| format!("writing {}", new.display()))?;
        at += n as u64;
    }
    to.sync_all()
        .local_io(|| format!("writing {}", new.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(c: u64) -> PageRecord {
        PageRecord {
            checksum: c,
            hash: [c as u8; 16],
        }
    }

    #[test]
    fn room_is_kept_ahead_of_the_records() {
        let d = tempfile::tempdir().unwrap();
        let mut s = PageSums::open(d.path()).unwrap();
        s.put(1, 0, 1, rec(1)).unwrap();
        let len = || std::fs::metadata(d.path().join("pagesums2")).unwrap().len();
        let first = entry_offset(1) + ENTRY;
        assert!(len() >= first + HEADROOM / 2, "{} bytes", len());
        // A database that grows: the room grows ahead of it.
        s.put(10_000, 0, 1, rec(2)).unwrap();
        let end = entry_offset(10_000) + ENTRY;
        assert!(len() >= end + end / 4, "{} bytes for {end}", len());
        assert_eq!(s.get(10_000, 1).unwrap(), 2);
        assert_eq!(s.get(5_000, 1).unwrap(), 0, "room reads as no record");
    }

    #[test]
    fn slots_follow_committed_txid() {
        let d = tempfile::tempdir().unwrap();
        let mut s = PageSums::open(d.path()).unwrap();
        s.put(3, 0, 1, rec(0xaa)).unwrap();
        assert_eq!(s.get(3, 0).unwrap(), 0);
        assert_eq!(s.get(3, 1).unwrap(), 0xaa);
        s.put(3, 1, 2, rec(0xbb)).unwrap();
        assert_eq!(s.get(3, 1).unwrap(), 0xaa, "uncommitted batch is invisible");
        assert_eq!(s.get_record(3, 2).unwrap(), Some(rec(0xbb)));
        // Batch 3 is written but never committed; a retry of 3 overwrites it.
        s.put(3, 2, 3, rec(0xcc)).unwrap();
        s.put(3, 2, 3, rec(0xdd)).unwrap();
        assert_eq!(s.get(3, 3).unwrap(), 0xdd);
        assert_eq!(s.get(3, 2).unwrap(), 0xbb);
    }

    #[test]
    fn xor_skips_lock_page_and_cleans_uncommitted() {
        let d = tempfile::tempdir().unwrap();
        let mut s = PageSums::open(d.path()).unwrap();
        s.put(1, 0, 1, rec(1)).unwrap();
        s.put(2, 0, 1, rec(2)).unwrap();
        s.put(3, 0, 1, rec(4)).unwrap();
        s.put(2, 1, 2, rec(8)).unwrap(); // never committed
        assert_eq!(s.xor_all_and_clean(3, 1, 3).unwrap(), 1 ^ 2);
        // The uncommitted slot is gone: committing TXID 2 now shows the old value.
        assert_eq!(s.get(2, 2).unwrap(), 2);
        assert_eq!(s.xor_all_and_clean(10, 1, 0).unwrap(), 1 ^ 2 ^ 4);
    }

    #[test]
    fn hashes_are_keyed_per_record_and_survive_reopening() {
        let d1 = tempfile::tempdir().unwrap();
        let d2 = tempfile::tempdir().unwrap();
        let a = PageSums::open(d1.path()).unwrap();
        let b = PageSums::open(d2.path()).unwrap();
        let page = vec![7u8; 4096];
        let ra = a.record_of(5, &page);
        assert_eq!(ra.checksum, b.record_of(5, &page).checksum);
        assert_ne!(ra.hash, b.record_of(5, &page).hash, "another key");
        assert_ne!(ra.hash, a.record_of(6, &page).hash, "another page number");
        drop(a);
        let again = PageSums::open(d1.path()).unwrap();
        assert_eq!(again.record_of(5, &page), ra);
    }

    #[test]
    fn first_format_records_convert_with_unknown_hashes() {
        let d = tempfile::tempdir().unwrap();
        // Page 2: slot 0 tagged 1 with checksum 0x11, slot 1 tagged 2 with 0x22.
        let mut v1 = vec![0u8; 2 * V1_ENTRY as usize];
        let e = &mut v1[V1_ENTRY as usize..];
        e[..8].copy_from_slice(&1u64.to_be_bytes());
        e[8..16].copy_from_slice(&0x11u64.to_be_bytes());
        e[16..24].copy_from_slice(&2u64.to_be_bytes());
        e[24..32].copy_from_slice(&0x22u64.to_be_bytes());
        std::fs::write(d.path().join("pagesums"), &v1).unwrap();
        let mut s = PageSums::open(d.path()).unwrap();
        assert!(!d.path().join("pagesums").exists());
        assert_eq!(s.get(2, 1).unwrap(), 0x11);
        let r = s.get_record(2, 2).unwrap().unwrap();
        assert_eq!(r.checksum, 0x22);
        assert!(!r.same_page_as(&r), "an unknown hash never matches");
    }
}
