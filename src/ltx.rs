//! LTX v3 file codec: the on-disk format of Litestream 0.5 replicas.
//!
//! This module owns everything about the bytes of one LTX file: the 100-byte
//! [`Header`], the page frames, the page index, the 16-byte [`Trailer`], and
//! the three CRC-64 checksums the format carries (file, page and rolling
//! database checksum). It knows nothing of storage, TXID chains or WAL
//! parsing. Behaviour follows the Go reference implementation
//! (`github.com/superfly/ltx`, `ltx.go`, `encoder.go`, `decoder.go`,
//! `checksum.go`) as used by Litestream 0.5.
//!
//! # Layout (all integers big-endian)
//!
//! ```text
//! header   100 bytes   "LTX1" flags page_size commit min_txid max_txid timestamp
//!                      pre_apply_checksum wal_offset wal_size wal_salt1 wal_salt2
//!                      node_id, then 20 zero bytes
//! pages    per page:   pgno u32 | flags u16 | [size u32 | LZ4 block]   (flags = 0x1)
//!                      pgno u32 | flags u16 | one LZ4 frame            (legacy, flags = 0)
//!          end:        six zero bytes
//! index    uvarint triples (pgno, frame offset, frame size), uvarint 0,
//!          then u64 = byte length of the triples plus the terminating 0
//! trailer  post_apply_checksum u64 | file_checksum u64
//! ```
//!
//! # Checksums
//!
//! All are CRC-64 with Go's ISO table ([`crc::CRC_64_GO_ISO`]) and every stored
//! checksum has bit 63 ([`CHECKSUM_FLAG`]) set, so a real checksum is never 0.
//!
//! * **File checksum** — CRC over: the header; for each page its 6-byte page
//!   header, its 4-byte size prefix (block format only) and its *uncompressed*
//!   data; the zero page header; the index triples, terminator and length u64;
//!   the post-apply checksum field. The compressed bytes are not covered (they
//!   are covered indirectly: they must decompress to the covered data). So,
//!   exactly as with Go's decoder, a change to an LZ4 stream that still
//!   decompresses to the very same page (e.g. a match offset moved by one
//!   inside a run of zeros) goes unnoticed — harmlessly, since the pages are
//!   what matter. Every other single-byte change is an error.
//! * **Page checksum** — [`page_checksum`]: CRC of `pgno (u32 BE) ‖ page`.
//! * **Database checksum** — the XOR of the page checksums of every page of
//!   the database except the lock page, with bit 63 forced on. It starts at
//!   [`EMPTY_DB_CHECKSUM`] and is order-independent; see [`db_checksum_add`],
//!   [`db_checksum_remove`] and [`db_checksum_replace`].
//!
//! Files with the [`HEADER_FLAG_NO_CHECKSUM`] flag (which Litestream writes)
//! carry 0 as pre- and post-apply checksum; their file checksum is still
//! present and still verified.
//!
//! # Errors
//!
//! Every problem with the bytes being decoded is an [`Error::Integrity`].
//! The encoder reports misuse by its caller (pages out of order, wrong
//! checksums for the header flags, ...) as [`Error::Other`], and write
//! failures (a full disk) as [`Error::Local`]. A read failure of the
//! decoder's source other than an early end of file is [`Error::Other`].

use std::io::{self, BufReader, Read, Write};

use crc::{Crc, Digest, Table, CRC_64_GO_ISO};

use crate::error::{Error, Result};

/// The first four bytes of every LTX file.
pub const MAGIC: &[u8; 4] = b"LTX1";
/// Size of the file header in bytes.
pub const HEADER_SIZE: usize = 100;
/// Size of a page header (`pgno u32 | flags u16`) in bytes.
pub const PAGE_HEADER_SIZE: usize = 6;
/// Size of the compressed-size prefix that follows a page header with
/// [`PAGE_FLAG_SIZE`].
pub const PAGE_SIZE_PREFIX_SIZE: usize = 4;
/// Size of the file trailer in bytes.
pub const TRAILER_SIZE: usize = 16;

/// Header flag: the file does not track database checksums; its pre- and
/// post-apply checksums are 0.
pub const HEADER_FLAG_NO_CHECKSUM: u32 = 1 << 1;
/// All header flags this codec understands; any other bit is rejected.
pub const HEADER_FLAG_MASK: u32 = HEADER_FLAG_NO_CHECKSUM;
/// Page header flag: a `u32` compressed size and an LZ4 block follow. Without
/// it (legacy files) the page is one standalone LZ4 frame.
pub const PAGE_FLAG_SIZE: u16 = 1 << 0;

/// Bit 63, set on every stored checksum so that a real checksum is never 0.
pub const CHECKSUM_FLAG: u64 = 1 << 63;
/// The database checksum of a database with no pages.
pub const EMPTY_DB_CHECKSUM: u64 = CHECKSUM_FLAG;

/// Smallest SQLite page size.
pub const MIN_PAGE_SIZE: u32 = 512;
/// Largest SQLite page size.
pub const MAX_PAGE_SIZE: u32 = 65536;
/// SQLite's PENDING_BYTE: the page holding it (the lock page) is never stored.
pub const PENDING_BYTE: u64 = 0x4000_0000;

/// Offset of the reserved, zero-filled tail of the header.
const HEADER_RESERVED_START: usize = 80;

static CRC64: Crc<u64, Table<16>> = Crc::<u64, Table<16>>::new(&CRC_64_GO_ISO);

// ---------------------------------------------------------------------------
// Checksums
// ---------------------------------------------------------------------------

/// CRC-64 (Go `hash/crc64` with the ISO table) of `data`, without the flag bit.
pub fn crc64(data: &[u8]) -> u64 {
    CRC64.checksum(data)
}

/// Incremental CRC-64 (Go ISO table), for data that arrives in pieces.
#[derive(Clone)]
pub struct Crc64 {
    digest: Digest<'static, u64, Table<16>>,
}

impl Crc64 {
    /// A digest over no data yet.
    pub fn new() -> Self {
        Crc64 {
            digest: CRC64.digest(),
        }
    }

    /// Feeds `data` into the digest.
    pub fn update(&mut self, data: &[u8]) {
        self.digest.update(data);
    }

    /// The CRC of everything fed so far (the digest stays usable).
    pub fn sum(&self) -> u64 {
        self.digest.clone().finalize()
    }
}

impl Default for Crc64 {
    fn default() -> Self {
        Self::new()
    }
}

/// `x` with bit 63 set, the form in which LTX stores every checksum.
pub fn checksum_flag(x: u64) -> u64 {
    x | CHECKSUM_FLAG
}

/// Checksum of one database page: `CRC64(pgno as u32 BE ‖ page) | 1<<63`.
pub fn page_checksum(pgno: u32, page: &[u8]) -> u64 {
    let mut d = CRC64.digest();
    d.update(&pgno.to_be_bytes());
    d.update(page);
    checksum_flag(d.finalize())
}

/// Database checksum after adding a page whose [`page_checksum`] is
/// `page_cksum` to a database whose checksum is `db`.
///
/// The database checksum is `EMPTY_DB_CHECKSUM` folded with this function
/// over every page but the lock page, in any order. XOR is its own inverse,
/// so this is the same operation as [`db_checksum_remove`].
pub fn db_checksum_add(db: u64, page_cksum: u64) -> u64 {
    checksum_flag(db ^ page_cksum)
}

/// Database checksum after removing a page (e.g. truncation) whose
/// [`page_checksum`] was `page_cksum`.
pub fn db_checksum_remove(db: u64, page_cksum: u64) -> u64 {
    checksum_flag(db ^ page_cksum)
}

/// Database checksum after a page's content changes from one with checksum
/// `old_page_cksum` to one with checksum `new_page_cksum`:
/// `(db ^ old ^ new) | 1<<63`.
pub fn db_checksum_replace(db: u64, old_page_cksum: u64, new_page_cksum: u64) -> u64 {
    checksum_flag(db ^ old_page_cksum ^ new_page_cksum)
}

/// Database checksum of a whole database given as `(pgno, page)` pairs (the
/// lock page, if present, is skipped).
pub fn db_checksum<'a>(pages: impl IntoIterator<Item = (u32, &'a [u8])>) -> u64 {
    pages
        .into_iter()
        .filter(|(pgno, page)| u32::try_from(page.len()).map_or(true, |ps| *pgno != lock_pgno(ps)))
        .fold(EMPTY_DB_CHECKSUM, |db, (pgno, page)| {
            db_checksum_add(db, page_checksum(pgno, page))
        })
}

/// The lock page number for `page_size`: the page that holds SQLite's
/// PENDING_BYTE (`0x40000000 / page_size + 1`). It is never stored in LTX.
pub fn lock_pgno(page_size: u32) -> u32 {
    // page_size >= 1 for any caller that passed validation; guard anyway.
    (PENDING_BYTE / u64::from(page_size.max(1)) + 1) as u32
}

/// True if `size` is a valid SQLite page size (a power of two in 512..=65536).
pub fn is_valid_page_size(size: u32) -> bool {
    (MIN_PAGE_SIZE..=MAX_PAGE_SIZE).contains(&size) && size.is_power_of_two()
}

/// The largest compressed size an LZ4 block holding one page can have; the
/// decoder refuses larger size fields before allocating anything.
pub fn max_compressed_page_size(page_size: u32) -> usize {
    lz4_flex::block::get_maximum_output_size(page_size as usize)
}

// ---------------------------------------------------------------------------
// Header and trailer
// ---------------------------------------------------------------------------

/// The 100-byte header of an LTX file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Header {
    /// Header flags; only [`HEADER_FLAG_NO_CHECKSUM`] is defined.
    pub flags: u32,
    /// Database page size in bytes.
    pub page_size: u32,
    /// Database size in pages after this file is applied.
    pub commit: u32,
    /// First transaction ID covered (1 for a snapshot).
    pub min_txid: u64,
    /// Last transaction ID covered.
    pub max_txid: u64,
    /// Creation time, milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// Database checksum before applying (0 for snapshots and NoChecksum files).
    pub pre_apply_checksum: u64,
    /// Offset in the source WAL this file was built from (0 if none).
    pub wal_offset: u64,
    /// Size of the WAL segment this file was built from (0 if none).
    pub wal_size: u64,
    /// WAL header salt-1 (0 if none).
    pub wal_salt1: u32,
    /// WAL header salt-2 (0 if none).
    pub wal_salt2: u32,
    /// ID of the node that wrote the file (0 if unset).
    pub node_id: u64,
}

impl Header {
    /// True if the file holds the whole database (`min_txid == 1`).
    pub fn is_snapshot(&self) -> bool {
        self.min_txid == 1
    }

    /// True if the file does not track database checksums.
    pub fn no_checksum(&self) -> bool {
        self.flags & HEADER_FLAG_NO_CHECKSUM != 0
    }

    /// The lock page number for this header's page size.
    pub fn lock_pgno(&self) -> u32 {
        lock_pgno(self.page_size)
    }

    /// The 100 bytes of this header.
    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..4].copy_from_slice(MAGIC);
        b[4..8].copy_from_slice(&self.flags.to_be_bytes());
        b[8..12].copy_from_slice(&self.page_size.to_be_bytes());
        b[12..16].copy_from_slice(&self.commit.to_be_bytes());
        b[16..24].copy_from_slice(&self.min_txid.to_be_bytes());
        b[24..32].copy_from_slice(&self.max_txid.to_be_bytes());
        b[32..40].copy_from_slice(&self.timestamp_ms.to_be_bytes());
        b[40..48].copy_from_slice(&self.pre_apply_checksum.to_be_bytes());
        b[48..56].copy_from_slice(&self.wal_offset.to_be_bytes());
        b[56..64].copy_from_slice(&self.wal_size.to_be_bytes());
        b[64..68].copy_from_slice(&self.wal_salt1.to_be_bytes());
        b[68..72].copy_from_slice(&self.wal_salt2.to_be_bytes());
        b[72..80].copy_from_slice(&self.node_id.to_be_bytes());
        b
    }

    /// Parses and validates (see [`Header::validate`]) a header. The magic
    /// must be `LTX1` and the 20 reserved bytes must be zero.
    pub fn decode(b: &[u8; HEADER_SIZE]) -> Result<Header> {
        if &b[0..4] != MAGIC {
            return Err(Error::Integrity(format!(
                "not an LTX file: magic is {:02x?}, expected \"LTX1\"",
                &b[0..4]
            )));
        }
        if b[HEADER_RESERVED_START..].iter().any(|&x| x != 0) {
            return Err(Error::Integrity(
                "LTX header reserved bytes 80..100 are not zero (corrupt, or written by a newer LTX version)"
                    .into(),
            ));
        }
        let h = Header {
            flags: be_u32(&b[4..8]),
            page_size: be_u32(&b[8..12]),
            commit: be_u32(&b[12..16]),
            min_txid: be_u64(&b[16..24]),
            max_txid: be_u64(&b[24..32]),
            timestamp_ms: be_u64(&b[32..40]) as i64,
            pre_apply_checksum: be_u64(&b[40..48]),
            wal_offset: be_u64(&b[48..56]),
            wal_size: be_u64(&b[56..64]),
            wal_salt1: be_u32(&b[64..68]),
            wal_salt2: be_u32(&b[68..72]),
            node_id: be_u64(&b[72..80]),
        };
        h.validate()?;
        Ok(h)
    }

    /// Checks the header the way Go's `Header.Validate` does: known flags,
    /// valid page size, `1 <= min_txid <= max_txid`, WAL fields consistent
    /// (offset/size fit an i64, salts or size need an offset), and the
    /// pre-apply checksum: 0 for snapshots and NoChecksum files, otherwise
    /// non-zero with bit 63 set.
    pub fn validate(&self) -> Result<()> {
        self.check()
            .map_err(|m| Error::Integrity(format!("invalid LTX header: {m}")))
    }

    fn check(&self) -> std::result::Result<(), String> {
        if self.flags & !HEADER_FLAG_MASK != 0 {
            return Err(format!(
                "unknown flags 0x{:08x} (written by a newer LTX version?)",
                self.flags
            ));
        }
        if !is_valid_page_size(self.page_size) {
            return Err(format!("invalid page size {}", self.page_size));
        }
        if self.min_txid == 0 {
            return Err("minimum TXID is 0".into());
        }
        if self.max_txid == 0 {
            return Err("maximum TXID is 0".into());
        }
        if self.min_txid > self.max_txid {
            return Err(format!(
                "TXIDs out of order: min {} > max {}",
                self.min_txid, self.max_txid
            ));
        }
        if self.wal_offset > i64::MAX as u64 {
            return Err(format!("WAL offset {} is negative", self.wal_offset as i64));
        }
        if self.wal_size > i64::MAX as u64 {
            return Err(format!("WAL size {} is negative", self.wal_size as i64));
        }
        if (self.wal_salt1 != 0 || self.wal_salt2 != 0) && self.wal_offset == 0 {
            return Err("WAL salt set without a WAL offset".into());
        }
        if self.wal_offset == 0 && self.wal_size != 0 {
            return Err("WAL size set without a WAL offset".into());
        }
        if self.is_snapshot() {
            if self.pre_apply_checksum != 0 {
                return Err("pre-apply checksum must be 0 on a snapshot".into());
            }
        } else if self.no_checksum() {
            if self.pre_apply_checksum != 0 {
                return Err("pre-apply checksum set on a file flagged NoChecksum".into());
            }
        } else {
            if self.pre_apply_checksum == 0 {
                return Err("pre-apply checksum missing on a non-snapshot file".into());
            }
            if self.pre_apply_checksum & CHECKSUM_FLAG == 0 {
                return Err(format!(
                    "pre-apply checksum {:016x} lacks bit 63",
                    self.pre_apply_checksum
                ));
            }
        }
        Ok(())
    }
}

/// The 16-byte trailer of an LTX file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Trailer {
    /// Database checksum after applying the file (0 for NoChecksum files).
    pub post_apply_checksum: u64,
    /// CRC-64 of the file (see the module documentation), bit 63 set.
    pub file_checksum: u64,
}

impl Trailer {
    /// The 16 bytes of this trailer.
    pub fn encode(&self) -> [u8; TRAILER_SIZE] {
        let mut b = [0u8; TRAILER_SIZE];
        b[0..8].copy_from_slice(&self.post_apply_checksum.to_be_bytes());
        b[8..16].copy_from_slice(&self.file_checksum.to_be_bytes());
        b
    }

    /// Parses a trailer (no validation; see [`Trailer::validate`]).
    pub fn decode(b: &[u8; TRAILER_SIZE]) -> Trailer {
        Trailer {
            post_apply_checksum: be_u64(&b[0..8]),
            file_checksum: be_u64(&b[8..16]),
        }
    }

    /// Checks the trailer against its header the way Go's `Trailer.Validate`
    /// does: post-apply checksum 0 for NoChecksum files, otherwise non-zero
    /// with bit 63; file checksum non-zero with bit 63.
    pub fn validate(&self, header: &Header) -> Result<()> {
        self.check(header)
            .map_err(|m| Error::Integrity(format!("invalid LTX trailer: {m}")))
    }

    fn check(&self, header: &Header) -> std::result::Result<(), String> {
        if header.no_checksum() {
            if self.post_apply_checksum != 0 {
                return Err("post-apply checksum set on a file flagged NoChecksum".into());
            }
        } else if self.post_apply_checksum & CHECKSUM_FLAG == 0 {
            return Err(format!(
                "post-apply checksum {:016x} is missing or lacks bit 63",
                self.post_apply_checksum
            ));
        }
        if self.file_checksum & CHECKSUM_FLAG == 0 {
            return Err(format!(
                "file checksum {:016x} is missing or lacks bit 63",
                self.file_checksum
            ));
        }
        Ok(())
    }
}

fn be_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_be_bytes(a)
}

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

/// Appends `v` as a Go `binary.PutUvarint` varint.
fn put_uvarint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Appends one page index record (pgno, frame offset, frame size).
fn put_index_record(out: &mut Vec<u8>, pgno: u32, offset: u64, size: u64) {
    put_uvarint(out, u64::from(pgno));
    put_uvarint(out, offset);
    put_uvarint(out, size);
}

/// The page number a snapshot must store after `prev` (0 = none yet).
fn next_snapshot_pgno(prev: u32, lock: u32) -> u32 {
    let next = prev.saturating_add(1);
    if next == lock {
        next.saturating_add(1)
    } else {
        next
    }
}

/// The last page number a complete snapshot with `commit` pages stores.
fn last_snapshot_pgno(commit: u32, lock: u32) -> u32 {
    if commit == lock {
        commit - 1
    } else {
        commit
    }
}

// ---------------------------------------------------------------------------
// Encoder
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EncState {
    Pages,
    Failed,
}

/// The rules every stored page number follows, for the encoder and the
/// decoder alike: 1..=commit, never the lock page, strictly increasing, and
/// without holes in a snapshot.
fn check_pgno(h: &Header, prev_pgno: u32, pgno: u32) -> std::result::Result<(), String> {
    if pgno == 0 {
        return Err("page number 0".into());
    }
    if pgno > h.commit {
        return Err(format!(
            "page {pgno} is beyond the commit size {}",
            h.commit
        ));
    }
    if pgno == h.lock_pgno() {
        return Err(format!(
            "page {pgno} is the lock page, which is never stored"
        ));
    }
    if pgno <= prev_pgno {
        return Err(format!(
            "LTX page {pgno} out of order after page {prev_pgno}"
        ));
    }
    if h.is_snapshot() {
        let want = next_snapshot_pgno(prev_pgno, h.lock_pgno());
        if pgno != want {
            return Err(format!(
                "snapshot skips from page {prev_pgno} to page {pgno}"
            ));
        }
    }
    Ok(())
}

/// Streaming LTX writer. Writes the header on [`Encoder::new`], one page
/// frame per [`Encoder::write_page`] (LZ4 block format, flag
/// [`PAGE_FLAG_SIZE`]), and the page index and trailer on
/// [`Encoder::finish`].
///
/// Memory: one compression buffer (about one page) plus the page index as
/// varints (about 10 bytes per page). The encoder issues small writes; give
/// it a buffered writer.
pub struct Encoder<W: Write> {
    w: W,
    header: Header,
    hash: Crc64,
    pos: u64,
    prev_pgno: u32,
    pages: u32,
    index: Vec<u8>,
    cbuf: Vec<u8>,
    db_checksum: u64,
    state: EncState,
}

impl<W: Write> Encoder<W> {
    /// Validates `header` (an invalid one is an `Error::Other`: a caller bug)
    /// and writes it to `w`.
    pub fn new(w: W, header: Header) -> Result<Self> {
        header
            .check()
            .map_err(|m| Error::Other(format!("LTX encoder given an invalid header: {m}")))?;
        let mut enc = Encoder {
            w,
            header,
            hash: Crc64::new(),
            pos: 0,
            prev_pgno: 0,
            pages: 0,
            index: Vec::new(),
            cbuf: vec![0u8; max_compressed_page_size(header.page_size)],
            db_checksum: EMPTY_DB_CHECKSUM,
            state: EncState::Pages,
        };
        enc.write_hashed(&header.encode())?;
        Ok(enc)
    }

    /// The header this encoder writes.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Bytes written to the underlying writer so far.
    pub fn bytes_written(&self) -> u64 {
        self.pos
    }

    /// Pages written so far.
    pub fn page_count(&self) -> u32 {
        self.pages
    }

    /// Writes page `pgno`. Pages must come in strictly increasing order,
    /// with `1 <= pgno <= commit`, never the lock page, and `page.len()` equal
    /// to the page size; a snapshot must store every page from 1 to commit.
    pub fn write_page(&mut self, pgno: u32, page: &[u8]) -> Result<()> {
        self.usable()?;
        self.check_page(pgno, page)
            .map_err(|m| Error::Other(format!("LTX encoder: {m}")))?;

        let n = lz4_flex::block::compress_into(page, &mut self.cbuf).map_err(|e| {
            Error::Other(format!("LTX encoder: LZ4 compression of page {pgno}: {e}"))
        })?;
        let size = u32::try_from(n).map_err(|_| {
            Error::Other(format!("LTX encoder: page {pgno} compressed to {n} bytes"))
        })?;

        let offset = self.pos;
        let mut head = [0u8; PAGE_HEADER_SIZE + PAGE_SIZE_PREFIX_SIZE];
        head[0..4].copy_from_slice(&pgno.to_be_bytes());
        head[4..6].copy_from_slice(&PAGE_FLAG_SIZE.to_be_bytes());
        head[6..10].copy_from_slice(&size.to_be_bytes());
        self.write_hashed(&head)?;
        // The compressed bytes go to the file; the uncompressed page to the hash.
        if let Err(e) = self.w.write_all(&self.cbuf[..n]) {
            self.state = EncState::Failed;
            return Err(Error::Local(format!("writing LTX page {pgno}: {e}")));
        }
        self.pos += n as u64;
        self.hash.update(page);

        put_index_record(&mut self.index, pgno, offset, self.pos - offset);
        if self.header.is_snapshot() {
            self.db_checksum = db_checksum_add(self.db_checksum, page_checksum(pgno, page));
        }
        self.prev_pgno = pgno;
        self.pages += 1;
        Ok(())
    }

    fn check_page(&self, pgno: u32, page: &[u8]) -> std::result::Result<(), String> {
        let h = &self.header;
        if page.len() != h.page_size as usize {
            return Err(format!(
                "page {pgno} is {} bytes, page size is {}",
                page.len(),
                h.page_size
            ));
        }
        check_pgno(h, self.prev_pgno, pgno)
    }

    /// Ends the page block, writes the page index and the trailer, flushes,
    /// and returns the trailer and the writer.
    ///
    /// `post_apply_checksum` is the database checksum after applying this
    /// file: 0 for NoChecksum files, [`EMPTY_DB_CHECKSUM`] when commit is 0,
    /// and, for a snapshot, exactly the checksum of the pages written (checked
    /// here). A snapshot must end at page `commit`.
    pub fn finish(mut self, post_apply_checksum: u64) -> Result<(Trailer, W)> {
        self.usable()?;
        self.check_finish(post_apply_checksum)
            .map_err(|m| Error::Other(format!("LTX encoder: {m}")))?;

        self.write_hashed(&[0u8; PAGE_HEADER_SIZE])?;
        let mut index = std::mem::take(&mut self.index);
        index.push(0); // end marker
        self.write_hashed(&index)?;
        self.write_hashed(&(index.len() as u64).to_be_bytes())?;

        let post = post_apply_checksum.to_be_bytes();
        self.hash.update(&post);
        let trailer = Trailer {
            post_apply_checksum,
            file_checksum: checksum_flag(self.hash.sum()),
        };
        let tb = trailer.encode();
        self.write_raw(&tb)?;
        self.w
            .flush()
            .map_err(|e| Error::Local(format!("flushing LTX file: {e}")))?;
        Ok((trailer, self.w))
    }

    fn check_finish(&self, post: u64) -> std::result::Result<(), String> {
        let h = &self.header;
        if h.is_snapshot() {
            let last = last_snapshot_pgno(h.commit, h.lock_pgno());
            if self.prev_pgno != last {
                return Err(format!(
                    "snapshot ends at page {} but commit is {}",
                    self.prev_pgno, h.commit
                ));
            }
        }
        let t = Trailer {
            post_apply_checksum: post,
            file_checksum: CHECKSUM_FLAG,
        };
        t.check(h)?;
        // As the decoder: a NoChecksum file records no checksum (Litestream
        // writes 0), even for an empty database.
        if h.commit == 0 && !h.no_checksum() && post != EMPTY_DB_CHECKSUM {
            return Err(format!(
                "post-apply checksum {post:016x} must be {EMPTY_DB_CHECKSUM:016x} for an empty database"
            ));
        }
        if h.is_snapshot() && !h.no_checksum() && post != self.db_checksum {
            return Err(format!(
                "post-apply checksum {post:016x} differs from the snapshot's pages' checksum {:016x}",
                self.db_checksum
            ));
        }
        Ok(())
    }

    fn usable(&self) -> Result<()> {
        match self.state {
            EncState::Pages => Ok(()),
            EncState::Failed => Err(Error::Other(
                "LTX encoder used after a write failure".into(),
            )),
        }
    }

    fn write_hashed(&mut self, b: &[u8]) -> Result<()> {
        self.write_raw(b)?;
        self.hash.update(b);
        Ok(())
    }

    fn write_raw(&mut self, b: &[u8]) -> Result<()> {
        if let Err(e) = self.w.write_all(b) {
            self.state = EncState::Failed;
            return Err(Error::Local(format!("writing LTX file: {e}")));
        }
        self.pos += b.len() as u64;
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Decoder
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DecState {
    Pages,
    EndOfPages,
    Failed,
}

/// Streaming, verifying LTX reader.
///
/// [`Decoder::new`] reads and validates the header; [`Decoder::next_page`]
/// returns the pages one by one, checking order, bounds and decompression;
/// [`Decoder::finish`] reads the page index (which must match the frames
/// seen exactly), the trailer, and checks the file checksum, the absence of
/// trailing data and, for snapshots tracking checksums, the post-apply
/// checksum. Pages are only trustworthy once `finish` returns `Ok`.
///
/// Memory: the caller's page buffer, one compressed-page buffer (bounded by
/// [`max_compressed_page_size`]), a 64 KiB read buffer and the expected index
/// as varints (about 10 bytes per page). The source is read through an
/// internal `BufReader`.
pub struct Decoder<R: Read> {
    r: BufReader<R>,
    header: Header,
    hash: Crc64,
    pos: u64,
    prev_pgno: u32,
    pages: u32,
    index: Vec<u8>,
    cbuf: Vec<u8>,
    db_checksum: u64,
    state: DecState,
}

impl<R: Read> Decoder<R> {
    /// Reads and validates the header of the LTX file in `r`.
    pub fn new(r: R) -> Result<Self> {
        let mut dec = Decoder {
            r: BufReader::with_capacity(64 * 1024, r),
            header: Header::default(),
            hash: Crc64::new(),
            pos: 0,
            prev_pgno: 0,
            pages: 0,
            index: Vec::new(),
            cbuf: Vec::new(),
            db_checksum: EMPTY_DB_CHECKSUM,
            state: DecState::Pages,
        };
        let mut b = [0u8; HEADER_SIZE];
        dec.read_hashed(&mut b, "header")?;
        dec.header = Header::decode(&b)?;
        Ok(dec)
    }

    /// The file's header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Bytes consumed from the source so far.
    pub fn bytes_read(&self) -> u64 {
        self.pos
    }

    /// Pages decoded so far.
    pub fn page_count(&self) -> u32 {
        self.pages
    }

    /// Decodes the next page into `buf` (resized to the page size) and
    /// returns its page number, or `None` after the last page.
    pub fn next_page(&mut self, buf: &mut Vec<u8>) -> Result<Option<u32>> {
        match self.state {
            DecState::Pages => {}
            DecState::EndOfPages => return Ok(None),
            DecState::Failed => {
                return Err(Error::Integrity(
                    "LTX decoder used after an earlier error".into(),
                ))
            }
        }
        let r = self.read_page(buf);
        if r.is_err() {
            self.state = DecState::Failed;
        }
        r
    }

    fn read_page(&mut self, buf: &mut Vec<u8>) -> Result<Option<u32>> {
        let h = self.header;
        let offset = self.pos;
        let mut ph = [0u8; PAGE_HEADER_SIZE];
        self.read_hashed(&mut ph, "page header")?;
        let pgno = be_u32(&ph[0..4]);
        let flags = u16::from_be_bytes([ph[4], ph[5]]);

        if pgno == 0 && flags == 0 {
            if h.is_snapshot() {
                let last = last_snapshot_pgno(h.commit, h.lock_pgno());
                if self.prev_pgno != last {
                    return Err(Error::Integrity(format!(
                        "LTX snapshot ends at page {} but its commit size is {}",
                        self.prev_pgno, h.commit
                    )));
                }
            }
            self.state = DecState::EndOfPages;
            return Ok(None);
        }
        self.check_page_header(pgno, flags, offset)?;

        buf.resize(h.page_size as usize, 0);
        if flags & PAGE_FLAG_SIZE != 0 {
            self.read_block_page(pgno, buf)?;
        } else {
            self.read_frame_page(pgno, buf)?;
        }
        self.hash.update(buf);

        put_index_record(&mut self.index, pgno, offset, self.pos - offset);
        if h.is_snapshot() && !h.no_checksum() {
            self.db_checksum = db_checksum_add(self.db_checksum, page_checksum(pgno, buf));
        }
        self.prev_pgno = pgno;
        self.pages += 1;
        Ok(Some(pgno))
    }

    fn check_page_header(&self, pgno: u32, flags: u16, offset: u64) -> Result<()> {
        let bad = |m: String| {
            Err(Error::Integrity(format!(
                "LTX page header at byte {offset}: {m}"
            )))
        };
        if flags & !PAGE_FLAG_SIZE != 0 {
            return bad(format!(
                "page {pgno} has unknown flags 0x{flags:04x} (corrupt, or written by a newer LTX version)"
            ));
        }
        check_pgno(&self.header, self.prev_pgno, pgno).or_else(bad)
    }

    /// Block format: `size u32` (hashed) then an LZ4 block of `size` bytes
    /// that must decompress to exactly one page.
    fn read_block_page(&mut self, pgno: u32, buf: &mut [u8]) -> Result<()> {
        let mut sb = [0u8; PAGE_SIZE_PREFIX_SIZE];
        self.read_hashed(&mut sb, "page size prefix")?;
        let size = be_u32(&sb) as usize;
        let max = max_compressed_page_size(self.header.page_size);
        if size == 0 || size > max {
            return Err(Error::Integrity(format!(
                "LTX page {pgno} claims {size} compressed bytes; a page of {} bytes needs 1..={max}",
                self.header.page_size
            )));
        }
        let mut cbuf = std::mem::take(&mut self.cbuf);
        cbuf.resize(size, 0);
        let r = self.read_raw(&mut cbuf, "compressed page");
        let r = r.and_then(|()| decompress_exact(&cbuf, buf, &[], pgno));
        self.cbuf = cbuf;
        r
    }

    /// Legacy format: one standalone LZ4 frame, parsed here so that nothing
    /// past its end is consumed. The frame bytes are not part of the file
    /// checksum (only the decompressed page is), but the frame's own header
    /// checksum and optional block and content checksums are verified.
    fn read_frame_page(&mut self, pgno: u32, buf: &mut [u8]) -> Result<()> {
        let frame = self.read_frame_descriptor(pgno)?;
        let mut cbuf = std::mem::take(&mut self.cbuf);
        let r = self.read_frame_blocks(pgno, &frame, buf, &mut cbuf);
        self.cbuf = cbuf;
        r?;
        if frame.content_checksum {
            let mut cs = [0u8; 4];
            self.read_raw(&mut cs, "LZ4 content checksum")?;
            if le_u32(&cs) != xxh32(buf, 0) {
                return frame_error(pgno, "content checksum mismatch");
            }
        }
        Ok(())
    }

    /// Reads and checks an LZ4 frame's magic and descriptor.
    fn read_frame_descriptor(&mut self, pgno: u32) -> Result<LegacyFrame> {
        let bad = |m: &str| frame_error(pgno, m);
        let mut magic = [0u8; 4];
        self.read_raw(&mut magic, "LZ4 frame magic")?;
        if le_u32(&magic) != LZ4_FRAME_MAGIC {
            return bad(&format!("has bad magic {magic:02x?}"));
        }
        // Frame descriptor: FLG, BD, [content size u64], [dict id u32], HC.
        let mut desc = [0u8; 14];
        self.read_raw(&mut desc[..2], "LZ4 frame descriptor")?;
        let (flg, bd) = (desc[0], desc[1]);
        if flg >> 6 != 0b01 {
            return bad(&format!("has unsupported version {}", flg >> 6));
        }
        if flg & 0b10 != 0 || bd & 0x8f != 0 {
            return bad("descriptor has reserved bits set");
        }
        if flg & 0x01 != 0 {
            return bad("uses a dictionary, which LTX never does");
        }
        let block_max = match (bd >> 4) & 0x7 {
            4 => 64 << 10,
            5 => 256 << 10,
            6 => 1 << 20,
            7 => 4 << 20,
            _ => return bad("has an invalid block maximum size"),
        };
        let mut dlen = 2;
        if flg & 0x08 != 0 {
            self.read_raw(&mut desc[2..10], "LZ4 frame content size")?;
            dlen = 10;
            let cs = u64::from_le_bytes([
                desc[2], desc[3], desc[4], desc[5], desc[6], desc[7], desc[8], desc[9],
            ]);
            if cs != u64::from(self.header.page_size) {
                return bad(&format!("declares {cs} bytes of content, not one page"));
            }
        }
        let mut hc = [0u8; 1];
        self.read_raw(&mut hc, "LZ4 frame header checksum")?;
        if hc[0] != ((xxh32(&desc[..dlen], 0) >> 8) & 0xff) as u8 {
            return bad("header checksum mismatch");
        }
        Ok(LegacyFrame {
            independent: flg & 0x20 != 0,
            block_checksums: flg & 0x10 != 0,
            content_checksum: flg & 0x04 != 0,
            max_block: max_compressed_page_size(self.header.page_size).min(block_max),
        })
    }

    /// Reads a frame's blocks up to its end mark into `buf`, which they must
    /// fill exactly.
    fn read_frame_blocks(
        &mut self,
        pgno: u32,
        frame: &LegacyFrame,
        buf: &mut [u8],
        cbuf: &mut Vec<u8>,
    ) -> Result<()> {
        let bad = |m: &str| frame_error(pgno, m);
        let page_size = buf.len();
        let mut filled = 0usize;
        loop {
            let mut sb = [0u8; 4];
            self.read_raw(&mut sb, "LZ4 block size")?;
            let word = le_u32(&sb);
            if word == 0 {
                break; // end mark
            }
            let stored = word & 0x8000_0000 != 0;
            let size = (word & 0x7fff_ffff) as usize;
            let limit = if stored {
                page_size - filled
            } else {
                frame.max_block
            };
            if size == 0 || size > limit {
                return bad(&format!(
                    "has a block of {size} bytes, more than one page allows"
                ));
            }
            cbuf.resize(size, 0);
            self.read_raw(cbuf, "LZ4 block")?;
            if frame.block_checksums {
                let mut cs = [0u8; 4];
                self.read_raw(&mut cs, "LZ4 block checksum")?;
                if le_u32(&cs) != xxh32(cbuf, 0) {
                    return bad("block checksum mismatch");
                }
            }
            if stored {
                buf[filled..filled + size].copy_from_slice(cbuf);
                filled += size;
                continue;
            }
            let (done, rest) = buf.split_at_mut(filled);
            let dict: &[u8] = if frame.independent { &[] } else { done };
            let n = lz4_flex::block::decompress_into_with_dict(cbuf, rest, dict)
                .map_err(|e| Error::Integrity(format!("LTX page {pgno}: LZ4 frame block: {e}")))?;
            if n == 0 {
                return bad("has an empty block");
            }
            filled += n;
        }
        if filled != page_size {
            return bad(&format!(
                "holds {filled} bytes, not one page of {page_size}"
            ));
        }
        Ok(())
    }

    /// Reads any pages not read yet (verifying them), then the page index
    /// and trailer; verifies everything and returns the trailer.
    pub fn finish(mut self) -> Result<Trailer> {
        let mut scratch = Vec::new();
        while self.next_page(&mut scratch)?.is_some() {}
        if self.state != DecState::EndOfPages {
            return Err(Error::Integrity(
                "LTX decoder used after an earlier error".into(),
            ));
        }

        // The index must be byte-for-byte the one the frames imply.
        let mut expected = std::mem::take(&mut self.index);
        expected.push(0);
        let mut chunk = [0u8; 4096];
        for (i, want) in expected.chunks(chunk.len()).enumerate() {
            let got = &mut chunk[..want.len()];
            self.read_hashed(got, "page index")?;
            if got != want {
                let at = i * 4096 + got.iter().zip(want).take_while(|(a, b)| a == b).count();
                return Err(Error::Integrity(format!(
                    "LTX page index does not match the page frames (first difference at index byte {at})"
                )));
            }
        }
        let mut lb = [0u8; 8];
        self.read_hashed(&mut lb, "page index length")?;
        let len = u64::from_be_bytes(lb);
        if len != expected.len() as u64 {
            return Err(Error::Integrity(format!(
                "LTX page index length field is {len}, the index is {} bytes",
                expected.len()
            )));
        }

        let mut tb = [0u8; TRAILER_SIZE];
        self.read_raw(&mut tb, "trailer")?;
        self.hash.update(&tb[..8]);
        let trailer = Trailer::decode(&tb);

        let mut extra = [0u8; 1];
        loop {
            match self.r.read(&mut extra) {
                Ok(0) => break,
                Ok(_) => {
                    return Err(Error::Integrity(format!(
                        "unexpected data after the LTX trailer at byte {}",
                        self.pos
                    )))
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::Other(format!("reading LTX file: {e}"))),
            }
        }

        let computed = checksum_flag(self.hash.sum());
        if computed != trailer.file_checksum {
            return Err(Error::Integrity(format!(
                "LTX file checksum mismatch: trailer says {:016x}, content gives {computed:016x}",
                trailer.file_checksum
            )));
        }
        trailer.validate(&self.header)?;
        let h = &self.header;
        if h.commit == 0 && !h.no_checksum() && trailer.post_apply_checksum != EMPTY_DB_CHECKSUM {
            return Err(Error::Integrity(format!(
                "LTX post-apply checksum {:016x} must be {EMPTY_DB_CHECKSUM:016x} for an empty database",
                trailer.post_apply_checksum
            )));
        }
        if h.is_snapshot() && !h.no_checksum() && trailer.post_apply_checksum != self.db_checksum {
            return Err(Error::Integrity(format!(
                "LTX snapshot post-apply checksum {:016x} does not match its pages ({:016x})",
                trailer.post_apply_checksum, self.db_checksum
            )));
        }
        Ok(trailer)
    }

    fn read_hashed(&mut self, b: &mut [u8], what: &str) -> Result<()> {
        self.read_raw(b, what)?;
        self.hash.update(b);
        Ok(())
    }

    fn read_raw(&mut self, b: &mut [u8], what: &str) -> Result<()> {
        match self.r.read_exact(b) {
            Ok(()) => {
                self.pos += b.len() as u64;
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(Error::Integrity(format!(
                "LTX file truncated: end of file reading the {what} at byte {}",
                self.pos
            ))),
            Err(e) => Err(Error::Other(format!(
                "reading LTX file ({what} at byte {}): {e}",
                self.pos
            ))),
        }
    }
}

/// What a legacy page's LZ4 frame descriptor says.
struct LegacyFrame {
    /// Blocks do not refer to the ones before them.
    independent: bool,
    block_checksums: bool,
    content_checksum: bool,
    /// Largest compressed block a page may have in this frame.
    max_block: usize,
}

fn frame_error<T>(pgno: u32, m: &str) -> Result<T> {
    Err(Error::Integrity(format!("LTX page {pgno}: LZ4 frame {m}")))
}

/// Decompresses an LZ4 block into `out`, which it must fill exactly.
fn decompress_exact(input: &[u8], out: &mut [u8], dict: &[u8], pgno: u32) -> Result<()> {
    let n = lz4_flex::block::decompress_into_with_dict(input, out, dict)
        .map_err(|e| Error::Integrity(format!("LTX page {pgno}: bad LZ4 block: {e}")))?;
    if n != out.len() {
        return Err(Error::Integrity(format!(
            "LTX page {pgno}: LZ4 block holds {n} bytes, not one page of {}",
            out.len()
        )));
    }
    Ok(())
}

/// Pages as `(pgno, page bytes)` pairs, in file order.
pub type PageList = Vec<(u32, Vec<u8>)>;

/// Decodes a whole LTX file into memory, verified. For tests and small files.
pub fn decode_all<R: Read>(r: R) -> Result<(Header, PageList, Trailer)> {
    let mut dec = Decoder::new(r)?;
    let header = *dec.header();
    let mut pages = Vec::new();
    let mut buf = Vec::new();
    while let Some(pgno) = dec.next_page(&mut buf)? {
        pages.push((pgno, buf.clone()));
    }
    let trailer = dec.finish()?;
    Ok((header, pages, trailer))
}

// ---------------------------------------------------------------------------
// xxHash32 (for legacy LZ4 frames)
// ---------------------------------------------------------------------------

const LZ4_FRAME_MAGIC: u32 = 0x184D_2204;

const P1: u32 = 0x9E37_79B1;
const P2: u32 = 0x85EB_CA77;
const P3: u32 = 0xC2B2_AE3D;
const P4: u32 = 0x27D4_EB2F;
const P5: u32 = 0x1656_67B1;

/// xxHash32 of `data` (as used by the LZ4 frame format).
pub fn xxh32(data: &[u8], seed: u32) -> u32 {
    fn round(acc: u32, lane: u32) -> u32 {
        acc.wrapping_add(lane.wrapping_mul(P2))
            .rotate_left(13)
            .wrapping_mul(P1)
    }
    let mut rest = data;
    let mut h = if data.len() >= 16 {
        let mut v = [
            seed.wrapping_add(P1).wrapping_add(P2),
            seed.wrapping_add(P2),
            seed,
            seed.wrapping_sub(P1),
        ];
        while rest.len() >= 16 {
            for (i, acc) in v.iter_mut().enumerate() {
                *acc = round(*acc, le_u32(&rest[i * 4..]));
            }
            rest = &rest[16..];
        }
        v[0].rotate_left(1)
            .wrapping_add(v[1].rotate_left(7))
            .wrapping_add(v[2].rotate_left(12))
            .wrapping_add(v[3].rotate_left(18))
    } else {
        seed.wrapping_add(P5)
    };
    h = h.wrapping_add(data.len() as u32);
    while rest.len() >= 4 {
        h = h
            .wrapping_add(le_u32(rest).wrapping_mul(P3))
            .rotate_left(17)
            .wrapping_mul(P4);
        rest = &rest[4..];
    }
    for &b in rest {
        h = h
            .wrapping_add(u32::from(b).wrapping_mul(P5))
            .rotate_left(11)
            .wrapping_mul(P1);
    }
    h ^= h >> 15;
    h = h.wrapping_mul(P2);
    h ^= h >> 13;
    h = h.wrapping_mul(P3);
    h ^= h >> 16;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc64_go_iso_check_value() {
        assert_eq!(crc64(b"123456789"), 0xb909_56c7_75a4_1001);
        let mut d = Crc64::new();
        d.update(b"1234");
        d.update(b"56789");
        assert_eq!(d.sum(), 0xb909_56c7_75a4_1001);
    }

    #[test]
    fn xxh32_known_values() {
        assert_eq!(xxh32(b"", 0), 0x02CC_5D05);
        assert_eq!(xxh32(b"a", 0), 0x550D_7456);
        assert_eq!(xxh32(b"abc", 0), 0x32D1_53FF);
        assert_eq!(
            xxh32(b"Nobody inspects the spammish repetition", 0),
            0xE229_3B2F
        );
    }

    #[test]
    fn uvarint_matches_go() {
        let mut v = Vec::new();
        put_uvarint(&mut v, 0);
        put_uvarint(&mut v, 127);
        put_uvarint(&mut v, 128);
        put_uvarint(&mut v, 300);
        assert_eq!(v, [0x00, 0x7f, 0x80, 0x01, 0xac, 0x02]);
    }

    #[test]
    fn lock_page_numbers() {
        assert_eq!(lock_pgno(4096), 262_145);
        assert_eq!(lock_pgno(512), 2_097_153);
        assert_eq!(lock_pgno(65536), 16_385);
    }

    #[test]
    fn db_checksum_is_order_independent_and_replaceable() {
        let a = vec![1u8; 512];
        let b = vec![2u8; 512];
        let c = vec![3u8; 512];
        let ab = db_checksum([(1, &a[..]), (2, &b[..])]);
        let ba = db_checksum([(2, &b[..]), (1, &a[..])]);
        assert_eq!(ab, ba);
        assert_ne!(ab & CHECKSUM_FLAG, 0);
        let cb = db_checksum([(1, &c[..]), (2, &b[..])]);
        assert_eq!(
            db_checksum_replace(ab, page_checksum(1, &a), page_checksum(1, &c)),
            cb
        );
        assert_eq!(
            db_checksum_remove(ab, page_checksum(2, &b)),
            db_checksum([(1, &a[..])])
        );
        assert_eq!(db_checksum(std::iter::empty()), EMPTY_DB_CHECKSUM);
    }
}
