//! Per-page checksums of a replicated database, kept on disk, not in RAM.
//!
//! The LTX pre/post-apply checksum of a database is the XOR of its page
//! checksums, so shipping a changed page needs that page's previous checksum.
//! Holding them in memory would grow with database size; this sidecar file
//! keeps them at a fixed offset per page instead.
//!
//! Each page has two slots of `(txid u64, checksum u64)`. A batch for TXID T
//! writes into the slot that is not the current one, tagged T; the value "as
//! of" committed TXID N is the slot with the largest tag ≤ N. So a crash after
//! writing slots but before the local state records T leaves the old values
//! readable: no journal and no fsync ordering is needed for `kill -9`.

use crate::error::{IoContext, Result};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const SLOT: u64 = 16;
const ENTRY: u64 = 2 * SLOT;

/// The sidecar file of page checksums.
pub struct PageSums {
    file: File,
    path: PathBuf,
}

/// A checksum lookup result: which slot holds the current value.
#[derive(Debug, Clone, Copy)]
struct Current {
    slot: u64,
    checksum: u64,
}

impl PageSums {
    /// Opens (creating if needed) the sidecar at `path`.
    pub fn open(path: &Path) -> Result<PageSums> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .local_io(|| format!("opening page checksum file {}", path.display()))?;
        Ok(PageSums {
            file,
            path: path.to_path_buf(),
        })
    }

    /// The checksum of `pgno` as of committed TXID `txid` (0 when unknown).
    pub fn get(&self, pgno: u32, txid: u64) -> Result<u64> {
        Ok(self.current(pgno, txid)?.map_or(0, |c| c.checksum))
    }

    /// Records `checksum` for `pgno` in batch `new_txid`, which becomes visible
    /// once the committed TXID reaches `new_txid`; `committed` is the TXID
    /// committed now.
    pub fn put(&self, pgno: u32, committed: u64, new_txid: u64, checksum: u64) -> Result<()> {
        let mut entry = [0u8; ENTRY as usize];
        entry[..8].copy_from_slice(&new_txid.to_be_bytes());
        entry[8..16].copy_from_slice(&checksum.to_be_bytes());
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
    pub fn xor_all_and_clean(&self, db_pages: u32, txid: u64, lock_pgno: u32) -> Result<u64> {
        let mut acc = 0u64;
        let mut chunk = vec![0u8; (ENTRY * 4096) as usize];
        let mut pgno: u32 = 1;
        while pgno <= db_pages {
            let n = (db_pages - pgno + 1).min(4096);
            let bytes = &mut chunk[..(n as u64 * ENTRY) as usize];
            let at = entry_offset(pgno);
            self.read_at_padded(bytes, at)?;
            let mut dirty = false;
            for i in 0..n {
                let e = &mut bytes[(i as u64 * ENTRY) as usize..((i as u64 + 1) * ENTRY) as usize];
                for s in 0..2 {
                    let tag = be64(&e[s * 16..]);
                    if tag > txid {
                        e[s * 16..s * 16 + 16].fill(0);
                        dirty = true;
                    }
                }
                if pgno + i != lock_pgno {
                    acc ^= pick(e, txid).map_or(0, |c| c.checksum);
                }
            }
            if dirty {
                self.write_at(bytes, at)?;
            }
            pgno += n;
        }
        Ok(acc)
    }

    fn current(&self, pgno: u32, txid: u64) -> Result<Option<Current>> {
        let mut e = [0u8; ENTRY as usize];
        self.read_at_padded(&mut e, entry_offset(pgno))?;
        Ok(pick(&e, txid))
    }

    fn read_at_padded(&self, buf: &mut [u8], at: u64) -> Result<()> {
        buf.fill(0);
        let mut done = 0;
        while done < buf.len() {
            let n = self
                .file
                .read_at(&mut buf[done..], at + done as u64)
                .local_io(|| format!("reading {}", self.path.display()))?;
            if n == 0 {
                break;
            }
            done += n;
        }
        Ok(())
    }

    fn write_at(&self, buf: &[u8], at: u64) -> Result<()> {
        self.file
            .write_all_at(buf, at)
            .local_io(|| format!("writing {}", self.path.display()))
    }
}

fn entry_offset(pgno: u32) -> u64 {
    u64::from(pgno.saturating_sub(1)) * ENTRY
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
            let at = (s * SLOT) as usize;
            let tag = be64(&entry[at..]);
            (tag != 0 && tag <= txid).then(|| (tag, s, be64(&entry[at + 8..])))
        })
        .max_by_key(|&(tag, _, _)| tag)
        .map(|(_, slot, checksum)| Current { slot, checksum })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_committed_txid() {
        let d = tempfile::tempdir().unwrap();
        let s = PageSums::open(&d.path().join("p")).unwrap();
        s.put(3, 0, 1, 0xaa).unwrap();
        assert_eq!(s.get(3, 0).unwrap(), 0);
        assert_eq!(s.get(3, 1).unwrap(), 0xaa);
        s.put(3, 1, 2, 0xbb).unwrap();
        assert_eq!(s.get(3, 1).unwrap(), 0xaa, "uncommitted batch is invisible");
        assert_eq!(s.get(3, 2).unwrap(), 0xbb);
        // Batch 3 is written but never committed; a retry of 3 overwrites it.
        s.put(3, 2, 3, 0xcc).unwrap();
        s.put(3, 2, 3, 0xdd).unwrap();
        assert_eq!(s.get(3, 3).unwrap(), 0xdd);
        assert_eq!(s.get(3, 2).unwrap(), 0xbb);
    }

    #[test]
    fn xor_skips_lock_page_and_cleans_uncommitted() {
        let d = tempfile::tempdir().unwrap();
        let s = PageSums::open(&d.path().join("p")).unwrap();
        s.put(1, 0, 1, 1).unwrap();
        s.put(2, 0, 1, 2).unwrap();
        s.put(3, 0, 1, 4).unwrap();
        s.put(2, 1, 2, 8).unwrap(); // never committed
        assert_eq!(s.xor_all_and_clean(3, 1, 3).unwrap(), 1 ^ 2);
        // The uncommitted slot is gone: committing TXID 2 now shows the old value.
        assert_eq!(s.get(2, 2).unwrap(), 2);
        assert_eq!(s.xor_all_and_clean(10, 1, 0).unwrap(), 1 ^ 2 ^ 4);
    }
}
