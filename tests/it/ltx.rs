//! LTX v3 codec tests on real SQLite databases and a real Litestream 0.5.17 file.

use std::io::Write;
use std::path::Path;

use crate::harness::{max_alloc, noise, reset_max_alloc};
use rusqlite::Connection;
use walsync::error::Error;
use walsync::ltx::{self, Decoder, Encoder, Header, Trailer};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

type Pages = Vec<(u32, Vec<u8>)>;

/// Builds a real SQLite database (rollback journal, so the file is complete)
/// and returns its bytes.
fn make_db(dir: &Path, name: &str, page_size: u32, rows: usize) -> Vec<u8> {
    let path = dir.join(name);
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch(&format!(
        "PRAGMA page_size={page_size}; PRAGMA journal_mode=DELETE;
         CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT, body BLOB);
         CREATE INDEX t_name ON t(name);"
    ))
    .unwrap();
    insert_rows(&conn, 0, rows);
    drop(conn);
    std::fs::read(&path).unwrap()
}

fn insert_rows(conn: &Connection, start: usize, n: usize) {
    conn.execute_batch("BEGIN").unwrap();
    for i in start..start + n {
        let body: Vec<u8> = (0..(i * 37) % 300)
            .map(|j| ((i * 7 + j * 13) % 251) as u8)
            .collect();
        conn.execute(
            "INSERT INTO t(name, body) VALUES (?1, ?2)",
            rusqlite::params![format!("row-{i:05}-{}", "x".repeat(i % 17)), body],
        )
        .unwrap();
    }
    conn.execute_batch("COMMIT").unwrap();
}

fn split_pages(db: &[u8], page_size: u32) -> Pages {
    assert_eq!(db.len() % page_size as usize, 0);
    db.chunks(page_size as usize)
        .enumerate()
        .map(|(i, p)| (i as u32 + 1, p.to_vec()))
        .filter(|(pgno, _)| *pgno != ltx::lock_pgno(page_size))
        .collect()
}

fn pages_checksum(pages: &Pages) -> u64 {
    ltx::db_checksum(pages.iter().map(|(n, p)| (*n, &p[..])))
}

fn snapshot_header(page_size: u32, commit: u32) -> Header {
    Header {
        page_size,
        commit,
        min_txid: 1,
        max_txid: 1,
        timestamp_ms: 1_700_000_000_123,
        ..Header::default()
    }
}

fn encode(header: Header, pages: &Pages, post: u64) -> (Vec<u8>, Trailer) {
    let mut enc = Encoder::new(Vec::new(), header).unwrap();
    for (pgno, page) in pages {
        enc.write_page(*pgno, page).unwrap();
    }
    let written = enc.bytes_written();
    let (trailer, out) = enc.finish(post).unwrap();
    assert!(out.len() as u64 > written);
    (out, trailer)
}

fn decode(bytes: &[u8]) -> walsync::error::Result<(Header, Pages, Trailer)> {
    ltx::decode_all(bytes)
}

fn assert_integrity<T: std::fmt::Debug>(r: walsync::error::Result<T>, needle: &str) {
    match r {
        Err(Error::Integrity(m)) => assert!(
            m.contains(needle),
            "integrity error {m:?} does not mention {needle:?}"
        ),
        other => panic!("expected an integrity error mentioning {needle:?}, got {other:?}"),
    }
}

fn put_uvarint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// One page frame as stored after its 6-byte page header, plus the bytes the
/// file checksum covers for it after the page header.
struct RawFrame {
    pgno: u32,
    flags: u16,
    stored: Vec<u8>,
    hashed: Vec<u8>,
}

fn block_frame(pgno: u32, page: &[u8]) -> RawFrame {
    let c = lz4_flex::block::compress(page);
    let size = (c.len() as u32).to_be_bytes();
    RawFrame {
        pgno,
        flags: ltx::PAGE_FLAG_SIZE,
        stored: [&size[..], &c].concat(),
        hashed: [&size[..], page].concat(),
    }
}

fn legacy_frame(pgno: u32, page: &[u8], info: lz4_flex::frame::FrameInfo) -> RawFrame {
    let mut enc = lz4_flex::frame::FrameEncoder::with_frame_info(info, Vec::new());
    enc.write_all(page).unwrap();
    RawFrame {
        pgno,
        flags: 0,
        stored: enc.finish().unwrap(),
        hashed: page.to_vec(),
    }
}

/// Go ltx v0.5.1-style legacy frame options: 64 KiB blocks, content checksum.
fn go_legacy_info() -> lz4_flex::frame::FrameInfo {
    lz4_flex::frame::FrameInfo::new()
        .block_size(lz4_flex::frame::BlockSize::Max64KB)
        .content_checksum(true)
}

/// Assembles an LTX file by hand, independently of the encoder. `index`
/// replaces the whole index region (records, 0, length u64) when given.
fn raw_file(h: &Header, frames: &[RawFrame], index: Option<Vec<u8>>, post: u64) -> Vec<u8> {
    let mut out = h.encode().to_vec();
    let mut hashed = out.clone();
    let mut recs = Vec::new();
    for f in frames {
        let off = out.len() as u64;
        let ph = [&f.pgno.to_be_bytes()[..], &f.flags.to_be_bytes()].concat();
        out.extend_from_slice(&ph);
        out.extend_from_slice(&f.stored);
        hashed.extend_from_slice(&ph);
        hashed.extend_from_slice(&f.hashed);
        put_uvarint(&mut recs, u64::from(f.pgno));
        put_uvarint(&mut recs, off);
        put_uvarint(&mut recs, out.len() as u64 - off);
    }
    out.extend_from_slice(&[0; 6]);
    hashed.extend_from_slice(&[0; 6]);
    let index = index.unwrap_or_else(|| {
        recs.push(0);
        let n = recs.len() as u64;
        [recs, n.to_be_bytes().to_vec()].concat()
    });
    out.extend_from_slice(&index);
    hashed.extend_from_slice(&index);
    hashed.extend_from_slice(&post.to_be_bytes());
    let file = ltx::crc64(&hashed) | ltx::CHECKSUM_FLAG;
    out.extend_from_slice(&post.to_be_bytes());
    out.extend_from_slice(&file.to_be_bytes());
    out
}

// ---------------------------------------------------------------------------
// 1-2. Round trips
// ---------------------------------------------------------------------------

#[test]
fn snapshot_round_trip_real_databases() {
    let dir = tempfile::tempdir().unwrap();
    for (page_size, rows) in [(4096u32, 400usize), (512, 300), (65536, 400)] {
        let db = make_db(dir.path(), &format!("db{page_size}"), page_size, rows);
        let pages = split_pages(&db, page_size);
        assert!(pages.len() >= 2, "database too small to be interesting");
        let commit = pages.len() as u32;
        let post = pages_checksum(&pages);
        let header = snapshot_header(page_size, commit);
        let (bytes, trailer) = encode(header, &pages, post);

        // Compressed: real pages compress.
        assert!(
            bytes.len() < db.len(),
            "page size {page_size}: no compression"
        );
        let (h, got, t) = decode(&bytes).unwrap();
        assert_eq!(h, header);
        assert_eq!(t, trailer);
        assert_eq!(t.post_apply_checksum, post);
        assert_eq!(got, pages, "page size {page_size}: pages differ");

        // Trailer on disk is what finish() returned.
        let tail: [u8; 16] = bytes[bytes.len() - 16..].try_into().unwrap();
        assert_eq!(Trailer::decode(&tail), trailer);
        // Every page frame is block format.
        assert_eq!(&bytes[100..106], &[0, 0, 0, 1, 0, 1]);

        // The NoChecksum flavour Litestream writes.
        let nc = Header {
            flags: ltx::HEADER_FLAG_NO_CHECKSUM,
            ..header
        };
        let (bytes, _) = encode(nc, &pages, 0);
        let (h, got, t) = decode(&bytes).unwrap();
        assert!(h.no_checksum());
        assert_eq!(t.post_apply_checksum, 0);
        assert_ne!(t.file_checksum & ltx::CHECKSUM_FLAG, 0);
        assert_eq!(got, pages);
    }
}

#[test]
fn incremental_round_trip_applies_to_the_new_database() {
    let dir = tempfile::tempdir().unwrap();
    let page_size = 4096;
    let old = make_db(dir.path(), "inc.db", page_size, 200);
    let conn = Connection::open(dir.path().join("inc.db")).unwrap();
    insert_rows(&conn, 200, 40);
    conn.execute("UPDATE t SET name = name || '-u' WHERE id = 3", [])
        .unwrap();
    drop(conn);
    let new = std::fs::read(dir.path().join("inc.db")).unwrap();
    let (old_pages, new_pages) = (split_pages(&old, page_size), split_pages(&new, page_size));
    assert!(new_pages.len() > old_pages.len());

    let changed: Pages = new_pages
        .iter()
        .filter(|(n, p)| old_pages.get(*n as usize - 1).is_none_or(|(_, o)| o != p))
        .cloned()
        .collect();
    assert!(
        !changed.is_empty() && changed.len() < new_pages.len(),
        "want a proper subset"
    );

    let pre = pages_checksum(&old_pages);
    // The post-apply checksum, rolled forward page by page from `pre`.
    let mut post = pre;
    for (n, p) in &changed {
        post = match old_pages.get(*n as usize - 1) {
            Some((_, o)) => {
                ltx::db_checksum_replace(post, ltx::page_checksum(*n, o), ltx::page_checksum(*n, p))
            }
            None => ltx::db_checksum_add(post, ltx::page_checksum(*n, p)),
        };
    }
    assert_eq!(
        post,
        pages_checksum(&new_pages),
        "rolling checksum disagrees"
    );

    let header = Header {
        page_size,
        commit: new_pages.len() as u32,
        min_txid: 5,
        max_txid: 7,
        timestamp_ms: 1_700_000_000_000,
        pre_apply_checksum: pre,
        ..Header::default()
    };
    assert!(!header.is_snapshot());
    let (bytes, trailer) = encode(header, &changed, post);
    let (h, got, t) = decode(&bytes).unwrap();
    assert_eq!((h, t), (header, trailer));
    assert_eq!(got, changed);

    // Applying the file to the old database yields the new one, byte for byte.
    let mut db = old.clone();
    db.resize(h.commit as usize * page_size as usize, 0);
    for (n, p) in &got {
        let at = (*n as usize - 1) * page_size as usize;
        db[at..at + page_size as usize].copy_from_slice(p);
    }
    assert_eq!(db, new);
}

#[test]
fn legacy_lz4_frame_pages_decode() {
    let dir = tempfile::tempdir().unwrap();
    for page_size in [512u32, 4096, 65536] {
        let db = make_db(dir.path(), &format!("legacy{page_size}"), page_size, 120);
        let pages = split_pages(&db, page_size);
        let post = pages_checksum(&pages);
        let infos = [
            go_legacy_info(),
            go_legacy_info().block_checksums(true),
            go_legacy_info().content_size(Some(u64::from(page_size))),
            lz4_flex::frame::FrameInfo::new()
                .block_size(lz4_flex::frame::BlockSize::Max256KB)
                .block_mode(lz4_flex::frame::BlockMode::Linked),
        ];
        for info in infos {
            // Mixed: legacy frames and block frames in one file.
            let frames: Vec<RawFrame> = pages
                .iter()
                .map(|(n, p)| {
                    if n % 3 == 0 {
                        block_frame(*n, p)
                    } else {
                        legacy_frame(*n, p, info.clone())
                    }
                })
                .collect();
            let bytes = raw_file(
                &snapshot_header(page_size, pages.len() as u32),
                &frames,
                None,
                post,
            );
            let (_, got, t) = decode(&bytes).unwrap();
            assert_eq!(t.post_apply_checksum, post);
            assert_eq!(got, pages, "page size {page_size}");
        }
    }

    // An incompressible page becomes a stored ("uncompressed") LZ4 block.
    let page = noise(4096, 1);
    let pages = vec![(1u32, page)];
    let frame = legacy_frame(1, &pages[0].1, go_legacy_info());
    let word = u32::from_le_bytes(frame.stored[7..11].try_into().unwrap());
    assert_ne!(word & 0x8000_0000, 0, "expected a stored block");
    let bytes = raw_file(
        &snapshot_header(4096, 1),
        &[frame],
        None,
        pages_checksum(&pages),
    );
    assert_eq!(decode(&bytes).unwrap().1, pages);
}

#[test]
fn hand_built_block_file_matches_encoder_output() {
    // The encoder and an independent assembly of the format agree byte for
    // byte (both use lz4_flex's block compressor).
    let dir = tempfile::tempdir().unwrap();
    let db = make_db(dir.path(), "same.db", 1024, 80);
    let pages = split_pages(&db, 1024);
    let post = pages_checksum(&pages);
    let header = snapshot_header(1024, pages.len() as u32);
    let (bytes, _) = encode(header, &pages, post);
    let frames: Vec<RawFrame> = pages.iter().map(|(n, p)| block_frame(*n, p)).collect();
    assert_eq!(raw_file(&header, &frames, None, post), bytes);
}

// ---------------------------------------------------------------------------
// 3. Every single-byte corruption, every truncation
// ---------------------------------------------------------------------------

/// Byte ranges of compressed page payloads (LZ4 block or frame bytes), the
/// only bytes the file checksum does not cover directly, from the file's index.
fn compressed_ranges(bytes: &[u8]) -> Vec<std::ops::Range<usize>> {
    fn uvarint(b: &[u8], at: &mut usize) -> u64 {
        let (mut v, mut shift) = (0u64, 0);
        loop {
            let x = b[*at];
            *at += 1;
            v |= u64::from(x & 0x7f) << shift;
            if x < 0x80 {
                return v;
            }
            shift += 7;
        }
    }
    let n = bytes.len();
    let idx_len = u64::from_be_bytes(bytes[n - 24..n - 16].try_into().unwrap()) as usize;
    let mut at = n - 24 - idx_len;
    let mut out = Vec::new();
    loop {
        if uvarint(bytes, &mut at) == 0 {
            return out;
        }
        let off = uvarint(bytes, &mut at) as usize;
        let size = uvarint(bytes, &mut at) as usize;
        let flags = u16::from_be_bytes([bytes[off + 4], bytes[off + 5]]);
        let skip = if flags & ltx::PAGE_FLAG_SIZE != 0 {
            10
        } else {
            6
        };
        out.push(off + skip..off + size);
    }
}

fn corruption_sweep(name: &str, bytes: &[u8], pages: &Pages, masks: &[u8]) {
    let good = decode(bytes).unwrap();
    assert_eq!(&good.1, pages);
    let ranges = compressed_ranges(bytes);
    assert_eq!(ranges.len(), pages.len());
    let mut harmless = 0;
    for pos in 0..bytes.len() {
        for &mask in masks {
            let mut bad = bytes.to_vec();
            bad[pos] ^= mask;
            match decode(&bad) {
                Err(Error::Integrity(_)) => {}
                Err(e) => {
                    panic!("{name}: flip {mask:#04x} at byte {pos}: non-integrity error {e:?}")
                }
                Ok((h, p, t)) => {
                    // Only possible inside compressed bytes, and only if the
                    // corrupt LZ4 stream still yields the very same pages.
                    let in_payload = ranges.iter().any(|r| r.contains(&pos));
                    assert!(
                        in_payload && h == good.0 && p == good.1 && t == good.2,
                        "{name}: flip {mask:#04x} at byte {pos} of {} decoded without error",
                        bytes.len()
                    );
                    harmless += 1;
                }
            }
        }
    }
    for len in 0..bytes.len() {
        assert!(
            matches!(decode(&bytes[..len]), Err(Error::Integrity(_))),
            "{name}: truncation to {len} bytes not detected"
        );
    }
    // Trailing garbage.
    let mut long = bytes.to_vec();
    long.push(0);
    assert_integrity(decode(&long), "after the LTX trailer");
    eprintln!(
        "{name}: {} bytes x {} flips: all detected except {harmless} flips in LZ4 bytes that decode to identical pages",
        bytes.len(),
        masks.len()
    );
}

#[test]
fn every_single_byte_corruption_and_truncation_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let db = make_db(dir.path(), "small.db", 512, 12);
    let pages = split_pages(&db, 512);
    assert!((3..=12).contains(&pages.len()), "{} pages", pages.len());
    let post = pages_checksum(&pages);

    // Snapshot with real checksums, from the encoder.
    let header = snapshot_header(512, pages.len() as u32);
    let (bytes, _) = encode(header, &pages, post);
    let frames: Vec<RawFrame> = pages.iter().map(|(n, p)| block_frame(*n, p)).collect();
    assert_eq!(raw_file(&header, &frames, None, post), bytes);
    corruption_sweep("snapshot", &bytes, &pages, &[0x01, 0x80, 0xff]);

    // Incremental with a pre-apply checksum.
    let subset: Pages = pages.iter().filter(|(n, _)| n % 2 == 0).cloned().collect();
    let inc = Header {
        min_txid: 5,
        max_txid: 7,
        pre_apply_checksum: ltx::checksum_flag(0x1234_5678_9abc),
        ..header
    };
    let (bytes, _) = encode(inc, &subset, ltx::checksum_flag(0x0fed_cba9));
    corruption_sweep("incremental", &bytes, &subset, &[0x01, 0x80, 0xff]);

    // Legacy LZ4 frames.
    let frames: Vec<RawFrame> = pages
        .iter()
        .map(|(n, p)| legacy_frame(*n, p, go_legacy_info()))
        .collect();
    let bytes = raw_file(&header, &frames, None, post);
    corruption_sweep("legacy", &bytes, &pages, &[0x01, 0x80, 0xff]);
}

// ---------------------------------------------------------------------------
// 4. Specific errors
// ---------------------------------------------------------------------------

fn small_pages(page_size: u32, n: u32) -> Pages {
    (1..=n)
        .map(|pgno| {
            let mut p = vec![0u8; page_size as usize];
            for (i, b) in p.iter_mut().enumerate() {
                *b = ((i as u32 / 7 + pgno * 31) % 256) as u8;
            }
            (pgno, p)
        })
        .collect()
}

#[test]
fn header_errors() {
    let pages = small_pages(512, 2);
    let header = snapshot_header(512, 2);
    let (good, _) = encode(header, &pages, pages_checksum(&pages));

    let mut bad = good.clone();
    bad[0..4].copy_from_slice(b"LTX2");
    assert_integrity(decode(&bad), "not an LTX file");
    assert_integrity(decode(b"SQLite format 3\0"), "truncated");
    assert_integrity(decode(b""), "truncated");

    let check = |h: Header, needle: &str| {
        let b = h.encode();
        assert_integrity(Header::decode(&b), needle);
        // Same through the decoder, with an otherwise well-formed file.
        let mut f = good.clone();
        f[..100].copy_from_slice(&b);
        assert_integrity(decode(&f), needle);
    };
    check(Header { flags: 1, ..header }, "unknown flags");
    check(
        Header {
            flags: 0x8000_0002,
            ..header
        },
        "unknown flags",
    );
    check(
        Header {
            page_size: 1000,
            ..header
        },
        "invalid page size",
    );
    check(
        Header {
            page_size: 256,
            ..header
        },
        "invalid page size",
    );
    check(
        Header {
            page_size: 131_072,
            ..header
        },
        "invalid page size",
    );
    check(
        Header {
            min_txid: 0,
            ..header
        },
        "minimum TXID",
    );
    check(
        Header {
            min_txid: 3,
            max_txid: 2,
            pre_apply_checksum: ltx::checksum_flag(1),
            ..header
        },
        "out of order",
    );
    check(
        Header {
            pre_apply_checksum: ltx::checksum_flag(1),
            ..header
        },
        "must be 0 on a snapshot",
    );
    check(
        Header {
            min_txid: 2,
            max_txid: 2,
            ..header
        },
        "pre-apply checksum missing",
    );
    check(
        Header {
            min_txid: 2,
            max_txid: 2,
            pre_apply_checksum: 5,
            ..header
        },
        "lacks bit 63",
    );
    check(
        Header {
            min_txid: 2,
            max_txid: 2,
            flags: ltx::HEADER_FLAG_NO_CHECKSUM,
            pre_apply_checksum: ltx::checksum_flag(5),
            ..header
        },
        "NoChecksum",
    );
    check(
        Header {
            wal_salt1: 9,
            ..header
        },
        "WAL salt",
    );
    check(
        Header {
            wal_size: 9,
            ..header
        },
        "WAL size set",
    );
    check(
        Header {
            wal_offset: 1 << 63,
            ..header
        },
        "negative",
    );

    let mut b = header.encode();
    b[90] = 1;
    assert_integrity(Header::decode(&b), "reserved");
}

#[test]
fn page_order_bounds_and_flags_errors() {
    let pages = small_pages(512, 4);
    let inc = Header {
        min_txid: 2,
        max_txid: 2,
        pre_apply_checksum: ltx::checksum_flag(1),
        ..snapshot_header(512, 4)
    };
    let post = ltx::checksum_flag(2);
    let f = |n: u32| block_frame(n, &pages[n as usize - 1].1);

    assert!(decode(&raw_file(&inc, &[f(1), f(3)], None, post)).is_ok());
    assert_integrity(
        decode(&raw_file(&inc, &[f(3), f(2)], None, post)),
        "LTX page 2 out of order after page 3",
    );
    assert_integrity(
        decode(&raw_file(&inc, &[f(2), f(2)], None, post)),
        "out of order",
    );
    let short = Header { commit: 2, ..inc };
    assert_integrity(
        decode(&raw_file(&short, &[f(1), f(3)], None, post)),
        "beyond the commit size 2",
    );

    // Unknown page flag bit.
    let mut fr = f(1);
    fr.flags |= 0x4;
    assert_integrity(decode(&raw_file(&inc, &[fr], None, post)), "unknown flags");
    // Page number 0 with a flag set.
    let mut fr = f(1);
    fr.pgno = 0;
    assert_integrity(decode(&raw_file(&inc, &[fr], None, post)), "page number 0");

    // Lock page (page size 65536: lock page 16385).
    let big = Header {
        page_size: 65536,
        commit: 16_400,
        ..inc
    };
    let page = vec![7u8; 65536];
    assert!(decode(&raw_file(
        &big,
        &[block_frame(16_384, &page), block_frame(16_386, &page)],
        None,
        post
    ))
    .is_ok());
    assert_integrity(
        decode(&raw_file(&big, &[block_frame(16_385, &page)], None, post)),
        "lock page",
    );

    // Snapshots: must start at 1, have no gaps and end at commit.
    let snap = snapshot_header(512, 4);
    let sp = pages_checksum(&pages);
    assert_integrity(
        decode(&raw_file(&snap, &[f(2), f(3), f(4)], None, sp)),
        "skips",
    );
    assert_integrity(
        decode(&raw_file(&snap, &[f(1), f(2), f(4)], None, sp)),
        "skips",
    );
    let three: Pages = pages[..3].to_vec();
    assert_integrity(
        decode(&raw_file(
            &snap,
            &[f(1), f(2), f(3)],
            None,
            pages_checksum(&three),
        )),
        "ends at page 3",
    );

    // A page that decompresses to the wrong size.
    let mut fr = block_frame(1, &pages[0].1[..256]);
    fr.hashed = [&fr.hashed[..4], &pages[0].1].concat();
    assert_integrity(decode(&raw_file(&inc, &[fr], None, post)), "not one page");
}

#[test]
fn index_and_checksum_errors() {
    let pages = small_pages(512, 3);
    let header = snapshot_header(512, 3);
    let post = pages_checksum(&pages);
    let frames = || -> Vec<RawFrame> { pages.iter().map(|(n, p)| block_frame(*n, p)).collect() };
    let good = raw_file(&header, &frames(), None, post);
    assert!(decode(&good).is_ok());

    // Index region of the good file: records + 0 + u64 length.
    let idx_len =
        u64::from_be_bytes(good[good.len() - 24..good.len() - 16].try_into().unwrap()) as usize;
    let idx_start = good.len() - 24 - idx_len;
    let index = good[idx_start..good.len() - 16].to_vec();

    // Wrong offset for page 2 (file checksum recomputed, so only the index check can fail).
    let mut bad = index.clone();
    bad[4] ^= 0x01; // page 2's pgno is at [3]; [4] starts its offset
    assert_integrity(
        decode(&raw_file(&header, &frames(), Some(bad), post)),
        "page index does not match",
    );
    // Missing entry.
    let mut recs = Vec::new();
    // Only page 1's record (offset 100, frame size 10).
    put_uvarint(&mut recs, 1);
    put_uvarint(&mut recs, 100);
    put_uvarint(&mut recs, 10);
    recs.push(0);
    let n = recs.len() as u64;
    recs.extend_from_slice(&n.to_be_bytes());
    assert_integrity(
        decode(&raw_file(&header, &frames(), Some(recs), post)),
        "page index",
    );
    // Length field excluding the terminator (off by one).
    let mut bad = index.clone();
    let l = bad.len();
    bad[l - 1] -= 1;
    assert_integrity(
        decode(&raw_file(&header, &frames(), Some(bad), post)),
        "length field",
    );
    // Index cut short.
    assert_integrity(
        decode(&raw_file(
            &header,
            &frames(),
            Some(index[..5].to_vec()),
            post,
        )),
        "",
    );

    // File checksum.
    let mut bad = good.clone();
    let l = bad.len();
    bad[l - 3] ^= 0x10;
    assert_integrity(decode(&bad), "file checksum mismatch");
    // Page data changed but compressed stream still valid: caught by the CRC.
    let mut fr = frames();
    let mut other = pages[1].1.clone();
    other[17] ^= 1;
    let alt = block_frame(2, &other);
    fr[1].stored = alt.stored;
    assert_integrity(
        decode(&raw_file(&header, &fr, None, post)),
        "file checksum mismatch",
    );

    // Snapshot post-apply checksum that does not match its pages.
    assert_integrity(
        decode(&raw_file(
            &header,
            &frames(),
            None,
            ltx::checksum_flag(post ^ 4),
        )),
        "does not match its pages",
    );
    // Trailer rules.
    assert_integrity(
        decode(&raw_file(
            &header,
            &frames(),
            None,
            post & !ltx::CHECKSUM_FLAG,
        )),
        "lacks bit 63",
    );
    let nc = Header {
        flags: ltx::HEADER_FLAG_NO_CHECKSUM,
        ..header
    };
    assert!(decode(&raw_file(&nc, &frames(), None, 0)).is_ok());
    assert_integrity(decode(&raw_file(&nc, &frames(), None, post)), "NoChecksum");
}

#[test]
fn huge_size_field_is_refused_without_allocating() {
    let pages = small_pages(4096, 2);
    let (good, _) = encode(snapshot_header(4096, 2), &pages, pages_checksum(&pages));
    let mut bad = good.clone();
    assert_eq!(&bad[104..106], &[0, 1]);
    bad[106..110].copy_from_slice(&0xffff_fff0u32.to_be_bytes());
    reset_max_alloc();
    let r = decode(&bad);
    let biggest = max_alloc();
    assert_integrity(r, "claims 4294967280 compressed bytes");
    assert!(
        biggest < 256 * 1024,
        "decoder allocated {biggest} bytes at once"
    );

    // Just above the LZ4 bound for one page.
    let mut bad = good.clone();
    let over = ltx::max_compressed_page_size(4096) as u32 + 1;
    bad[106..110].copy_from_slice(&over.to_be_bytes());
    assert_integrity(decode(&bad), "compressed bytes");
    // Zero.
    bad[106..110].copy_from_slice(&0u32.to_be_bytes());
    assert_integrity(decode(&bad), "claims 0");

    // Legacy frame with a huge block size word.
    let frame = legacy_frame(1, &pages[0].1, go_legacy_info());
    let mut f = frame;
    f.stored[7..11].copy_from_slice(&0x7fff_fff0u32.to_le_bytes());
    let bytes = raw_file(
        &snapshot_header(4096, 1),
        &[f],
        None,
        pages_checksum(&pages[..1].to_vec()),
    );
    reset_max_alloc();
    let r = decode(&bytes);
    let biggest = max_alloc();
    assert_integrity(r, "LZ4 frame has a block");
    assert!(
        biggest < 256 * 1024,
        "decoder allocated {biggest} bytes at once"
    );
}

#[test]
fn decoder_streams_and_finish_drains() {
    let pages = small_pages(1024, 5);
    let (bytes, trailer) = encode(snapshot_header(1024, 5), &pages, pages_checksum(&pages));
    // Read two pages, let finish() verify the rest.
    let mut dec = Decoder::new(&bytes[..]).unwrap();
    assert_eq!(dec.header().commit, 5);
    let mut buf = Vec::new();
    assert_eq!(dec.next_page(&mut buf).unwrap(), Some(1));
    assert_eq!(buf, pages[0].1);
    assert_eq!(dec.next_page(&mut buf).unwrap(), Some(2));
    assert_eq!(dec.finish().unwrap(), trailer);

    // After an error the decoder refuses to continue.
    let mut bad = bytes.clone();
    bad[110] ^= 0xff;
    let mut dec = Decoder::new(&bad[..]).unwrap();
    let mut buf = Vec::new();
    let first = dec.next_page(&mut buf);
    if first.is_err() {
        assert!(dec.next_page(&mut buf).is_err());
    }
    assert!(dec.finish().is_err());
}

#[test]
fn encoder_rejects_misuse() {
    let pages = small_pages(512, 4);
    let snap = snapshot_header(512, 4);
    let other = |r: walsync::error::Result<()>, needle: &str| match r {
        Err(Error::Other(m)) => assert!(m.contains(needle), "{m:?} lacks {needle:?}"),
        r => panic!("expected Error::Other({needle:?}), got {r:?}"),
    };
    let mut enc = Encoder::new(Vec::new(), snap).unwrap();
    other(enc.write_page(2, &pages[1].1), "skips");
    enc.write_page(1, &pages[0].1).unwrap();
    other(enc.write_page(1, &pages[0].1), "out of order");
    other(enc.write_page(2, &pages[1].1[..100]), "page size");
    other(enc.write_page(5, &pages[1].1), "beyond the commit size");
    other(
        enc.finish(pages_checksum(&pages)).map(|_| ()),
        "ends at page 1",
    );

    let mut enc = Encoder::new(Vec::new(), snap).unwrap();
    for (n, p) in &pages {
        enc.write_page(*n, p).unwrap();
    }
    other(
        enc.finish(ltx::checksum_flag(42)).map(|_| ()),
        "differs from the snapshot",
    );

    let inc = Header {
        min_txid: 2,
        max_txid: 2,
        pre_apply_checksum: ltx::checksum_flag(1),
        commit: 20_000,
        page_size: 65536,
        ..snap
    };
    let mut enc = Encoder::new(Vec::new(), inc).unwrap();
    other(enc.write_page(16_385, &[0u8; 65536]), "lock page");
    other(enc.finish(0).map(|_| ()), "post-apply");

    other(
        Encoder::new(
            Vec::new(),
            Header {
                page_size: 3,
                ..snap
            },
        )
        .map(|_| ()),
        "invalid page size",
    );

    // Writer failures are local file errors (exit 7), and the encoder is
    // then unusable (misuse, an Error::Other).
    struct Full(usize);
    impl Write for Full {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            if self.0 < b.len() {
                return Err(std::io::Error::other("disk full"));
            }
            self.0 -= b.len();
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut enc = Encoder::new(Full(120), snap).unwrap();
    match enc.write_page(1, &pages[0].1) {
        Err(Error::Local(m)) => assert!(m.contains("disk full"), "{m}"),
        r => panic!("expected Error::Local(disk full), got {r:?}"),
    }
    other(enc.write_page(1, &pages[0].1), "after a write failure");
}

#[test]
fn empty_database_file() {
    // commit 0: no pages, post-apply checksum is the empty-database checksum.
    let h = Header {
        min_txid: 3,
        max_txid: 3,
        commit: 0,
        pre_apply_checksum: ltx::checksum_flag(9),
        ..snapshot_header(4096, 0)
    };
    let (bytes, t) = encode(h, &Vec::new(), ltx::EMPTY_DB_CHECKSUM);
    let (_, pages, t2) = decode(&bytes).unwrap();
    assert!(pages.is_empty());
    assert_eq!(t, t2);
    let bad = raw_file(&h, &[], None, ltx::checksum_flag(5));
    assert_integrity(decode(&bad), "empty database");

    // A NoChecksum file (as Litestream writes them) records no checksum,
    // even for an empty database: the encoder writes what the decoder
    // reads (found by fuzzing: the encoder refused it).
    let no_checksum = Header {
        flags: ltx::HEADER_FLAG_NO_CHECKSUM,
        pre_apply_checksum: 0,
        ..h
    };
    let (bytes, t) = encode(no_checksum, &Vec::new(), 0);
    let (h2, pages, t2) = decode(&bytes).unwrap();
    assert_eq!(h2, no_checksum);
    assert!(pages.is_empty());
    assert_eq!(t, t2);
}

// ---------------------------------------------------------------------------
// 5. Litestream 0.5.17 fixture
// ---------------------------------------------------------------------------

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data")
            .join(name),
    )
    .unwrap()
}

#[test]
fn litestream_snapshot_decodes_to_the_source_database() {
    let src = fixture("litestream-src.db");
    let src_pages = split_pages(&src, 4096);
    for name in [
        "litestream-0.5.17-l9-snapshot.ltx",
        "litestream-0.5.17-l0-snapshot.ltx",
    ] {
        let file = fixture(name);
        let (h, pages, t) = decode(&file).unwrap();
        // What Litestream 0.5.17 writes: NoChecksum, block-format pages.
        assert_eq!(h.flags, ltx::HEADER_FLAG_NO_CHECKSUM, "{name}");
        assert!(h.is_snapshot() && h.max_txid == 1);
        assert_eq!((h.page_size, h.commit), (4096, src_pages.len() as u32));
        assert_eq!(h.pre_apply_checksum, 0);
        assert_eq!(t.post_apply_checksum, 0);
        assert_ne!(t.file_checksum & ltx::CHECKSUM_FLAG, 0);
        assert_eq!(&file[104..106], &ltx::PAGE_FLAG_SIZE.to_be_bytes());
        assert_eq!(
            pages, src_pages,
            "{name}: pages differ from the source database"
        );

        // walsync's encoding of the same state decodes to identical pages,
        // with real checksums and with Litestream's NoChecksum flag.
        let ours = Header { flags: 0, ..h };
        let (bytes, _) = encode(ours, &src_pages, pages_checksum(&src_pages));
        assert_eq!(decode(&bytes).unwrap().1, pages);
        let (bytes, _) = encode(h, &src_pages, 0);
        let (h2, p2, _) = decode(&bytes).unwrap();
        assert_eq!((h2, p2), (h, pages));
    }
}

#[test]
fn litestream_0_5_5_legacy_frame_snapshot_decodes() {
    // Litestream 0.5.5 (Go ltx before the block format) stores every page as
    // a standalone LZ4 frame (page flags 0).
    let src_pages = split_pages(&fixture("litestream-0.5.5-src.db"), 4096);
    let file = fixture("litestream-0.5.5-l9-snapshot.ltx");
    assert_eq!(&file[104..110], &[0, 0, 0x04, 0x22, 0x4d, 0x18]);
    let (h, pages, t) = decode(&file).unwrap();
    assert_eq!(h.flags, ltx::HEADER_FLAG_NO_CHECKSUM);
    assert_eq!(t.post_apply_checksum, 0);
    assert_eq!(pages, src_pages);
}

#[test]
fn litestream_files_every_single_byte_corruption_is_detected() {
    let cases = [
        ("litestream-0.5.17-l9-snapshot.ltx", "litestream-src.db"),
        (
            "litestream-0.5.5-l9-snapshot.ltx",
            "litestream-0.5.5-src.db",
        ),
    ];
    for (ltx_name, db_name) in cases {
        let pages = split_pages(&fixture(db_name), 4096);
        corruption_sweep(ltx_name, &fixture(ltx_name), &pages, &[0x01]);
    }
}
