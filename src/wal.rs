//! Reading SQLite's write-ahead log with plain file I/O.
//!
//! This module owns the WAL file format: the 32-byte header, 24-byte frame
//! headers, the cumulative checksum in both byte orders, and the rule that a
//! frame is valid only while its salts match the header and the checksum chain
//! holds. [`WalReader`] yields whole committed transactions only (frames up to
//! a commit frame) and can resume from a saved [`WalPosition`]. It never calls
//! SQLite and never holds page data beyond one frame.

use crate::error::{Error, IoContext, Result};
use std::fs::File;
use std::os::unix::fs::FileExt;

/// Size of the WAL file header.
pub const HEADER_SIZE: u64 = 32;
/// Size of each frame header.
pub const FRAME_HEADER_SIZE: u64 = 24;
/// Magic for a WAL whose checksums use little-endian words.
pub const MAGIC_LE: u32 = 0x377f_0682;
/// Magic for a WAL whose checksums use big-endian words.
pub const MAGIC_BE: u32 = 0x377f_0683;
/// The only WAL format version SQLite writes.
pub const VERSION: u32 = 3_007_000;

/// The running checksum pair of the WAL checksum chain.
pub type Checksum = (u32, u32);

/// The parsed, checksum-verified WAL header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalHeader {
    pub big_endian: bool,
    pub page_size: u32,
    pub checkpoint_seq: u32,
    pub salt1: u32,
    pub salt2: u32,
    pub checksum: Checksum,
}

impl WalHeader {
    /// Parses a header; `None` when it is not a valid WAL header (wrong magic,
    /// version, page size or checksum), which SQLite treats as an empty log.
    pub fn parse(bytes: &[u8; HEADER_SIZE as usize]) -> Option<WalHeader> {
        let magic = be32(bytes, 0);
        let big_endian = match magic {
            MAGIC_LE => false,
            MAGIC_BE => true,
            _ => return None,
        };
        if be32(bytes, 4) != VERSION {
            return None;
        }
        let raw_page_size = be32(bytes, 8);
        // SQLite stores 65536 as 1 in the (16-bit era) page size field.
        let page_size = if raw_page_size == 1 {
            65536
        } else {
            raw_page_size
        };
        if !(512..=65536).contains(&page_size) || !page_size.is_power_of_two() {
            return None;
        }
        let checksum = wal_checksum(big_endian, &bytes[..24], (0, 0));
        if checksum != (be32(bytes, 24), be32(bytes, 28)) {
            return None;
        }
        Some(WalHeader {
            big_endian,
            page_size,
            checkpoint_seq: be32(bytes, 12),
            salt1: be32(bytes, 16),
            salt2: be32(bytes, 20),
            checksum,
        })
    }

    /// Reads and parses the header of a WAL file; `None` when the file is
    /// shorter than a header or the header is not valid.
    pub fn read(file: &File) -> Result<Option<WalHeader>> {
        let mut bytes = [0u8; HEADER_SIZE as usize];
        match read_exact_at(file, &mut bytes, 0)? {
            true => Ok(WalHeader::parse(&bytes)),
            false => Ok(None),
        }
    }

    /// Size of one frame (header plus page) in this WAL.
    pub fn frame_size(&self) -> u64 {
        FRAME_HEADER_SIZE + u64::from(self.page_size)
    }

    /// The position just after the header: where the first frame starts.
    pub fn start(&self) -> WalPosition {
        WalPosition {
            offset: HEADER_SIZE,
            salt1: self.salt1,
            salt2: self.salt2,
            checksum: self.checksum,
        }
    }
}

/// A point in the log from which reading resumes: the offset of the next
/// frame, the salts of the log it belongs to and the checksum chain so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalPosition {
    pub offset: u64,
    pub salt1: u32,
    pub salt2: u32,
    pub checksum: Checksum,
}

/// Where a frame's page sits in the WAL file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameRef {
    pub pgno: u32,
    /// Offset of the page data (just after the frame header).
    pub page_offset: u64,
}

/// One committed transaction: its frames in log order, the database size in
/// pages after it, and the position just after its commit frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    pub frames: Vec<FrameRef>,
    pub db_pages: u32,
    pub end: WalPosition,
}

/// What a saved position means for the WAL as it is now.
#[derive(Debug)]
pub enum Resume<'f> {
    /// The log still continues the saved position.
    Continue(WalReader<'f>),
    /// The log was restarted or truncated since: continuity cannot be proven
    /// from the WAL alone.
    Reset,
}

/// Reads committed transactions from a WAL file, frame by frame.
#[derive(Debug)]
pub struct WalReader<'f> {
    file: &'f File,
    header: WalHeader,
    position: WalPosition,
    frame: Vec<u8>,
}

impl<'f> WalReader<'f> {
    /// Starts at the first frame. `None` when the WAL has no valid header
    /// (missing, empty or never written): there is nothing to read.
    pub fn open(file: &'f File) -> Result<Option<WalReader<'f>>> {
        Ok(WalHeader::read(file)?.map(|header| WalReader::at(file, header, header.start())))
    }

    /// Continues from a saved position, after checking that the log is still
    /// the one the position belongs to (same salts, long enough).
    pub fn resume(file: &'f File, saved: WalPosition) -> Result<Resume<'f>> {
        let Some(header) = WalHeader::read(file)? else {
            return Ok(Resume::Reset);
        };
        let len = file_len(file)?;
        let aligned = saved.offset >= HEADER_SIZE
            && (saved.offset - HEADER_SIZE).is_multiple_of(header.frame_size());
        if header.salt1 != saved.salt1
            || header.salt2 != saved.salt2
            || !aligned
            || len < saved.offset
        {
            return Ok(Resume::Reset);
        }
        Ok(Resume::Continue(WalReader::at(file, header, saved)))
    }

    fn at(file: &'f File, header: WalHeader, position: WalPosition) -> WalReader<'f> {
        WalReader {
            file,
            header,
            position,
            frame: Vec::new(),
        }
    }

    pub fn header(&self) -> &WalHeader {
        &self.header
    }

    /// The position after the last transaction returned so far.
    pub fn position(&self) -> WalPosition {
        self.position
    }

    /// The next whole committed transaction, or `None` at the end of the valid
    /// log (end of file, a torn or foreign frame, or an uncommitted tail).
    pub fn next_transaction(&mut self) -> Result<Option<Transaction>> {
        let mut frames = Vec::new();
        let mut offset = self.position.offset;
        let mut checksum = self.position.checksum;
        loop {
            let Some(frame) = self.read_valid_frame(offset, checksum)? else {
                return Ok(None);
            };
            frames.push(FrameRef {
                pgno: frame.pgno,
                page_offset: offset + FRAME_HEADER_SIZE,
            });
            offset += self.header.frame_size();
            checksum = frame.checksum;
            if frame.commit != 0 {
                self.position = WalPosition {
                    offset,
                    checksum,
                    ..self.position
                };
                return Ok(Some(Transaction {
                    frames,
                    db_pages: frame.commit,
                    end: self.position,
                }));
            }
        }
    }

    /// Reads the frame at `offset`; `None` when it is missing, torn, carries
    /// other salts or breaks the checksum chain.
    fn read_valid_frame(&mut self, offset: u64, prev: Checksum) -> Result<Option<ValidFrame>> {
        let size = self.header.frame_size() as usize;
        self.frame.resize(size, 0);
        if !read_exact_at(self.file, &mut self.frame, offset)? {
            return Ok(None);
        }
        let f = &self.frame;
        let (salt1, salt2) = (be32(f, 8), be32(f, 12));
        if salt1 != self.header.salt1 || salt2 != self.header.salt2 {
            return Ok(None);
        }
        let checksum = wal_checksum(self.header.big_endian, &f[..8], prev);
        let checksum = wal_checksum(self.header.big_endian, &f[24..], checksum);
        if checksum != (be32(f, 16), be32(f, 20)) {
            return Ok(None);
        }
        let pgno = be32(f, 0);
        if pgno == 0 {
            return Ok(None);
        }
        Ok(Some(ValidFrame {
            pgno,
            commit: be32(f, 4),
            checksum,
        }))
    }
}

struct ValidFrame {
    pgno: u32,
    commit: u32,
    checksum: Checksum,
}

/// SQLite's WAL checksum over `data` (a multiple of 8 bytes), continuing
/// from `seed`. Words are read big- or little-endian as the magic says.
pub fn wal_checksum(big_endian: bool, data: &[u8], seed: Checksum) -> Checksum {
    let (mut s0, mut s1) = seed;
    for pair in data.chunks_exact(8) {
        let word = |b: &[u8]| {
            let b = [b[0], b[1], b[2], b[3]];
            if big_endian {
                u32::from_be_bytes(b)
            } else {
                u32::from_le_bytes(b)
            }
        };
        s0 = s0.wrapping_add(word(&pair[..4])).wrapping_add(s1);
        s1 = s1.wrapping_add(word(&pair[4..])).wrapping_add(s0);
    }
    (s0, s1)
}

/// Reads one page from the WAL at `page_offset` into `buf` (resized to
/// `page_size`).
pub fn read_page(file: &File, page_offset: u64, page_size: u32, buf: &mut Vec<u8>) -> Result<()> {
    buf.resize(page_size as usize, 0);
    if read_exact_at(file, buf, page_offset)? {
        Ok(())
    } else {
        Err(Error::Database(format!(
            "WAL page at offset {page_offset} vanished while it was being shipped; the WAL was truncated under walsync"
        )))
    }
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn file_len(file: &File) -> Result<u64> {
    Ok(file.metadata().db_io(|| "reading WAL size".into())?.len())
}

/// Fills `buf` from `offset`; `false` when the file ends first.
fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> Result<bool> {
    match file.read_exact_at(buf, offset) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(Error::Database(format!(
            "reading WAL at offset {offset}: {e}"
        ))),
    }
}
