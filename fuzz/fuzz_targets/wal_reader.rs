//! SQLite WAL reading of arbitrary bytes, through the entry points the
//! shipper uses (src/watch/build.rs): `WalHeader::parse`/`read`,
//! `WalReader::open` and `next_transaction` to the end, `WalReader::resume`
//! from saved positions, and `wal::read_page` for every frame returned.
//!
//! The reader works on a `File` (positioned reads), so each input is
//! written to a file in /dev/shm (one per process, so `-jobs`/`-fork` work).
//!
//! Each input is read twice: as it is, and "repaired": with a valid header,
//! the header checksum and the checksum chain of the frames that carry the
//! header's salts are recomputed (with `wal::wal_checksum`), so that mutated
//! frame headers (page numbers, commit sizes, salts) get past the checksums
//! that random mutation almost never satisfies.

#![no_main]

use libfuzzer_sys::fuzz_target;
use std::fs::File;
use std::path::PathBuf;
use std::sync::OnceLock;
use walsync::wal::{self, Resume, Transaction, WalHeader, WalPosition, WalReader};

fn scratch() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        dir.join(format!("walsync-fuzz-wal-{}", std::process::id()))
    })
}

/// Every transaction from `reader` to the end of the valid log.
fn drain(reader: &mut WalReader<'_>) -> Vec<Transaction> {
    let mut out = Vec::new();
    // Each transaction holds at least one frame, so this ends; the bound is
    // only a guard against a reader that stops advancing.
    for _ in 0..100_000 {
        match reader
            .next_transaction()
            .expect("reading a WAL in /dev/shm")
        {
            Some(t) => out.push(t),
            None => return out,
        }
    }
    panic!("WalReader::next_transaction never reached the end");
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}

/// `data` with its header checksum and frame checksum chain recomputed;
/// `None` when the magic, version or page size is not a WAL's.
fn repair(data: &[u8]) -> Option<Vec<u8>> {
    let h = data.get(..wal::HEADER_SIZE as usize)?;
    let big_endian = match be32(h, 0) {
        wal::MAGIC_LE => false,
        wal::MAGIC_BE => true,
        _ => return None,
    };
    let page_size = match be32(h, 8) {
        1 => 65536,
        p => p,
    };
    if be32(h, 4) != wal::VERSION
        || !(512..=65536).contains(&page_size)
        || !page_size.is_power_of_two()
    {
        return None;
    }
    let mut out = data.to_vec();
    let mut sum = wal::wal_checksum(big_endian, &out[..24], (0, 0));
    out[24..28].copy_from_slice(&sum.0.to_be_bytes());
    out[28..32].copy_from_slice(&sum.1.to_be_bytes());
    let frame = wal::FRAME_HEADER_SIZE as usize + page_size as usize;
    let mut at = wal::HEADER_SIZE as usize;
    while at + frame <= out.len() {
        if out[at + 8..at + 16] != out[16..24] {
            break; // a frame of an earlier log ends the valid one
        }
        sum = wal::wal_checksum(big_endian, &out[at..at + 8], sum);
        sum = wal::wal_checksum(big_endian, &out[at + 24..at + frame], sum);
        out[at + 16..at + 20].copy_from_slice(&sum.0.to_be_bytes());
        out[at + 20..at + 24].copy_from_slice(&sum.1.to_be_bytes());
        at += frame;
    }
    Some(out)
}

fuzz_target!(|data: &[u8]| {
    check(data);
    if let Some(fixed) = repair(data) {
        if fixed != data {
            check(&fixed);
        }
    }
    // Leave nothing behind in /dev/shm when the fuzzer exits.
    let _ = std::fs::remove_file(scratch());
});

fn check(data: &[u8]) {
    // 1. The header parser alone.
    let parsed = data
        .get(..wal::HEADER_SIZE as usize)
        .and_then(|b| WalHeader::parse(b.try_into().unwrap()));

    let path = scratch();
    std::fs::write(path, data).expect("writing the WAL scratch file");
    let file = File::open(path).expect("opening the WAL scratch file");

    assert_eq!(WalHeader::read(&file).expect("WalHeader::read"), parsed);

    // 2. Everything committed, from the first frame.
    let Some(mut reader) = WalReader::open(&file).expect("WalReader::open") else {
        assert!(parsed.is_none());
        return;
    };
    let header = *reader.header();
    assert_eq!(Some(header), parsed);
    let txs = drain(&mut reader);
    // After the end, the reader stays at the end.
    assert!(reader.next_transaction().unwrap().is_none());

    let frame_size = header.frame_size();
    let mut page = Vec::new();
    let mut prev_end = header.start();
    for t in &txs {
        assert!(!t.frames.is_empty());
        assert!(t.db_pages != 0);
        assert_eq!((t.end.salt1, t.end.salt2), (header.salt1, header.salt2));
        assert_eq!(
            t.end.offset,
            prev_end.offset + frame_size * t.frames.len() as u64
        );
        for (i, f) in t.frames.iter().enumerate() {
            assert!(f.pgno != 0);
            assert_eq!(
                f.page_offset,
                prev_end.offset + frame_size * i as u64 + wal::FRAME_HEADER_SIZE
            );
            // Every frame a transaction names is whole in the file.
            wal::read_page(&file, f.page_offset, header.page_size, &mut page)
                .expect("read_page of a frame WalReader returned");
            assert_eq!(page.len(), header.page_size as usize);
        }
        prev_end = t.end;
    }
    assert_eq!(reader.position(), prev_end);
    assert!(prev_end.offset <= data.len() as u64);

    // 3. Resuming from a saved position continues exactly where the first
    //    reader did: from the start, after the first and after the last.
    let mut saved: Vec<(WalPosition, usize)> = vec![(header.start(), 0)];
    if let Some(t) = txs.first() {
        saved.push((t.end, 1));
    }
    if txs.len() > 1 {
        saved.push((txs[txs.len() - 1].end, txs.len()));
    }
    for (pos, done) in saved {
        match WalReader::resume(&file, pos).expect("WalReader::resume") {
            Resume::Continue(mut r) => {
                assert_eq!(r.position(), pos);
                assert_eq!(
                    drain(&mut r),
                    txs[done..],
                    "resumed reader reads differently"
                );
            }
            Resume::Reset => panic!("resume from a position the reader returned says Reset"),
        }
    }

    // 4. Positions that do not belong to this log (or to no frame boundary):
    //    Reset or a reader; never a panic.
    let tail = data.len().saturating_sub(8);
    let noise = u64::from_le_bytes(
        data[tail..]
            .iter()
            .chain([0u8; 8].iter())
            .take(8)
            .copied()
            .collect::<Vec<_>>()
            .try_into()
            .unwrap(),
    );
    let odd = [
        WalPosition {
            offset: prev_end.offset + 1,
            ..prev_end
        },
        WalPosition {
            offset: 0,
            ..prev_end
        },
        WalPosition {
            offset: noise,
            ..prev_end
        },
        WalPosition {
            offset: prev_end.offset + frame_size,
            ..prev_end
        },
        WalPosition {
            salt1: prev_end.salt1 ^ 1,
            ..prev_end
        },
        WalPosition {
            checksum: (noise as u32, (noise >> 32) as u32),
            ..prev_end
        },
    ];
    for pos in odd {
        if let Resume::Continue(mut r) = WalReader::resume(&file, pos).expect("resume") {
            let _ = drain(&mut r);
        }
    }

    // 5. read_page at arbitrary offsets: Ok or Err, no panic.
    let _ = wal::read_page(&file, noise, header.page_size, &mut page);
    let _ = wal::read_page(&file, data.len() as u64, header.page_size, &mut page);
}
