//! Merging contiguous LTX files into one: the newest version of each page
//! wins, and pages past the last file's commit (the database size after
//! it) are dropped.
//!
//! The inputs are downloaded and checked as restore checks them (length,
//! SHA-256, the LTX file checksum), in order, by [`crate::fetch`]. Their
//! pages wait in a file of the staging folder, with only an index in
//! memory (page number → offset, 12 bytes a page), so merging an hour of a
//! large database costs disk, not memory.
//!
//! The output is written as Litestream writes compactions: NoChecksum flag,
//! no pre-apply checksum, the last input's timestamp. walsync's database
//! checksums (first input's pre-apply, last input's post-apply) go in the
//! object metadata, as for every file walsync stores.

use crate::apply::ObjectError;
use crate::cancel::CancelToken;
use crate::catalog::RemoteLtx;
use crate::error::{Error, IoContext, Result};
use crate::fetch::{self, Replay, Staging};
use crate::fsutil::{self, Hashing};
use crate::ltx::{self, Decoder, Encoder, Header};
use crate::storage::{LtxId, ObjectMeta, Storage};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

/// One merged file, written in the staging folder, ready to be stored.
#[derive(Debug)]
pub struct Merged {
    pub id: LtxId,
    pub path: PathBuf,
    pub len: u64,
    pub meta: ObjectMeta,
    /// The last input's commit time (Unix ms), the merged file's timestamp.
    pub time_ms: i64,
}

/// Merges `inputs` (contiguous, oldest first) into one file of `level`.
pub fn merge(
    storage: &dyn Storage,
    inputs: &[RemoteLtx],
    level: u32,
    staging: &Staging,
    cancel: &CancelToken,
) -> Result<Merged> {
    let id = merged_id(inputs, level)?;
    let pages_path = staging.dir().join(format!("pages-{level}"));
    let mut collected = Collected {
        pages: std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&pages_path)
            .local_io(|| format!("creating {}", pages_path.display()))?,
        pages_path,
        end: 0,
        index: BTreeMap::new(),
        header: None,
        checksums: Checksums::Unknown,
        buf: Vec::new(),
    };
    fetch::fetch_and_replay(storage, inputs, staging, 4, cancel, &mut collected)?;
    let header = collected
        .header
        .ok_or_else(|| Error::Other("no input was read".into()))?;
    let out = staging.dir().join(format!("merged-{level}.ltx"));
    let (len, sha256) = collected.write(&out, id, header)?;
    let meta = ObjectMeta {
        sha256: Some(sha256),
        timestamp: Some(fsutil::rfc3339_ms(header.timestamp_ms)),
        db_checksums: match collected.checksums {
            Checksums::Known { pre, post } => Some(ObjectMeta::encode_db_checksums(pre, post)),
            Checksums::Unknown | Checksums::Broken => None,
        },
    };
    Ok(Merged {
        id,
        time_ms: header.timestamp_ms,
        path: out,
        len,
        meta,
    })
}

/// The file of `level` that merging `inputs` (contiguous, oldest first)
/// makes: from the first one's min TXID to the last one's max.
pub fn merged_id(inputs: &[RemoteLtx], level: u32) -> Result<LtxId> {
    let (Some(first), Some(last)) = (inputs.first(), inputs.last()) else {
        return Err(Error::Other("a compaction needs at least one file".into()));
    };
    Ok(LtxId {
        level,
        min_txid: first.id.min_txid,
        max_txid: last.id.max_txid,
    })
}

/// What the inputs' metadata says of the database checksums.
#[derive(Debug, Clone, Copy)]
enum Checksums {
    /// Not known (yet, or some input has none).
    Unknown,
    /// Before the first input and after the last one read so far.
    Known { pre: u64, post: u64 },
    /// An input has none: the merged file has none either.
    Broken,
}

/// The inputs' pages, newest version of each.
struct Collected {
    pages: File,
    pages_path: PathBuf,
    end: u64,
    /// Page number → offset of its newest version in `pages`.
    index: BTreeMap<u32, u64>,
    /// The last input's header.
    header: Option<Header>,
    checksums: Checksums,
    buf: Vec<u8>,
}

impl Collected {
    fn read(
        &mut self,
        f: &RemoteLtx,
        body: &mut dyn Read,
        db_checksums: Option<(u64, u64)>,
    ) -> Result<()> {
        let mut dec = Decoder::new(body)?;
        let header = *dec.header();
        if let Some(prev) = self.header {
            if header.page_size != prev.page_size || header.min_txid != prev.max_txid + 1 {
                return Err(Error::Integrity(format!(
                    "{} does not continue the file before it (TXIDs {}..{}, page size {} after TXID {}, page size {})",
                    f.key, header.min_txid, header.max_txid, header.page_size, prev.max_txid, prev.page_size
                )));
            }
        }
        while let Some(pgno) = dec.next_page(&mut self.buf)? {
            self.pages
                .write_all_at(&self.buf, self.end)
                .local_io(|| format!("writing {}", self.pages_path.display()))?;
            self.index.insert(pgno, self.end);
            self.end += self.buf.len() as u64;
        }
        dec.finish()?;
        // Pages past the database's end after this file left it: a later
        // file that grows the database again writes the pages it adds.
        let _ = self.index.split_off(&(header.commit + 1));
        self.checksums = match (self.checksums, db_checksums, self.header) {
            (Checksums::Unknown, Some((pre, post)), None) => Checksums::Known { pre, post },
            (Checksums::Known { pre, post: was }, Some((next_pre, post)), Some(_)) => {
                if next_pre != was {
                    return Err(Error::Integrity(format!(
                        "{} starts from database checksum {next_pre:016x}, but the file before it ends at {was:016x}",
                        f.key
                    )));
                }
                Checksums::Known { pre, post }
            }
            _ => Checksums::Broken,
        };
        self.header = Some(header);
        Ok(())
    }

    /// Writes the merged file to `out`; returns its length and SHA-256.
    fn write(&mut self, out: &std::path::Path, id: LtxId, last: Header) -> Result<(u64, String)> {
        let header = Header {
            flags: ltx::HEADER_FLAG_NO_CHECKSUM,
            page_size: last.page_size,
            commit: last.commit,
            min_txid: id.min_txid,
            max_txid: id.max_txid,
            timestamp_ms: last.timestamp_ms,
            ..Header::default()
        };
        let file = File::create(out).local_io(|| format!("creating {}", out.display()))?;
        let mut enc = Encoder::new(Hashing::new(BufWriter::new(file)), header)?;
        let lock = ltx::lock_pgno(last.page_size);
        let mut page = vec![0u8; last.page_size as usize];
        for (&pgno, &offset) in self.index.range(..=last.commit) {
            if pgno == lock {
                continue;
            }
            self.pages
                .read_exact_at(&mut page, offset)
                .local_io(|| format!("reading {}", self.pages_path.display()))?;
            enc.write_page(pgno, &page)?;
        }
        let (_, hashing) = enc.finish(0)?;
        let (mut buffered, sha256, len) = hashing.finish();
        buffered
            .flush()
            .local_io(|| format!("writing {}", out.display()))?;
        Ok((len, sha256))
    }
}

impl Replay for Collected {
    fn apply(
        &mut self,
        f: &RemoteLtx,
        body: &mut dyn Read,
        db_checksums: Option<(u64, u64)>,
    ) -> Result<(), ObjectError> {
        self.read(f, body, db_checksums)
            .map_err(ObjectError::classify)
    }

    fn done(&mut self, f: &RemoteLtx, result: Result<(), ObjectError>) -> Result<()> {
        result.map_err(|e| e.error.context(format!("compacting {}", f.key)))
    }
}
