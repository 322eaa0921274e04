//! WAL reader tests on logs written by real SQLite (through rusqlite).

use crate::harness::{row_count, wal_checkpoint};
use rusqlite::Connection;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use walsync::wal::{self, Resume, Transaction, WalHeader, WalReader};

/// A WAL-mode database whose connection stays open so the log is kept.
struct LiveDb {
    dir: tempfile::TempDir,
    conn: Connection,
    /// `PRAGMA page_count` after each commit, in order.
    sizes_after_commit: Vec<u32>,
}

impl LiveDb {
    fn new(page_size: u32) -> LiveDb {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("db")).unwrap();
        conn.execute_batch(&format!(
            "PRAGMA page_size={page_size}; PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0;
             CREATE TABLE t(id INTEGER PRIMARY KEY, body BLOB);"
        ))
        .unwrap();
        let mut db = LiveDb {
            dir,
            conn,
            sizes_after_commit: Vec::new(),
        };
        db.record_commit();
        db
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("db")
    }

    fn wal_path(&self) -> PathBuf {
        self.dir.path().join("db-wal")
    }

    fn record_commit(&mut self) {
        let pages: u32 = self
            .conn
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .unwrap();
        self.sizes_after_commit.push(pages);
    }

    /// One transaction inserting `rows` rows of `size` bytes each.
    fn commit(&mut self, rows: usize, size: usize) {
        let tx = self.conn.transaction().unwrap();
        for i in 0..rows {
            tx.execute(
                "INSERT INTO t(body) VALUES (?1)",
                [vec![(i % 251) as u8; size]],
            )
            .unwrap();
        }
        tx.commit().unwrap();
        self.record_commit();
    }

    /// A copy of the database file and its WAL, taken while the connection
    /// holds them, in a new folder.
    fn snapshot_files(&self) -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("copy.db");
        let wal = dir.path().join("copy.db-wal");
        fs::copy(self.path(), &db).unwrap();
        fs::copy(self.wal_path(), &wal).unwrap();
        (dir, db, wal)
    }
}

fn read_all(wal_path: &Path) -> Vec<Transaction> {
    let file = File::open(wal_path).unwrap();
    let mut reader = WalReader::open(&file).unwrap().expect("valid WAL header");
    let mut txns = Vec::new();
    while let Some(t) = reader.next_transaction().unwrap() {
        txns.push(t);
    }
    txns
}

/// Applies the transactions' pages to a copy of the database file, the way a
/// checkpoint would, and returns the resulting bytes.
fn apply(db_path: &Path, wal_path: &Path, txns: &[Transaction]) -> Vec<u8> {
    let mut db = fs::read(db_path).unwrap();
    let wal_file = File::open(wal_path).unwrap();
    let page_size = WalHeader::read(&wal_file).unwrap().unwrap().page_size as usize;
    let mut page = Vec::new();
    for t in txns {
        for f in &t.frames {
            wal::read_page(&wal_file, f.page_offset, page_size as u32, &mut page).unwrap();
            let at = (f.pgno as usize - 1) * page_size;
            if db.len() < at + page_size {
                db.resize(at + page_size, 0);
            }
            db[at..at + page_size].copy_from_slice(&page);
        }
        db.truncate(t.db_pages as usize * page_size);
    }
    db
}

/// What SQLite itself makes of the copied database and WAL: the file after a
/// full checkpoint (which must not have been busy, and emptied the WAL).
fn sqlite_checkpointed(db_path: &Path) -> Vec<u8> {
    let conn = Connection::open(db_path).unwrap();
    assert_eq!(
        wal_checkpoint(&conn, "TRUNCATE"),
        (0, 0, 0),
        "the copy's checkpoint (busy, log, checkpointed)"
    );
    drop(conn);
    fs::read(db_path).unwrap()
}

fn check_page_size(page_size: u32) {
    let mut db = LiveDb::new(page_size);
    // Single-row, multi-page and many-row transactions.
    db.commit(1, 10);
    db.commit(3, page_size as usize * 3);
    db.commit(50, 100);
    db.commit(1, 200_000);
    let (_dir, db_copy, wal_copy) = db.snapshot_files();

    let txns = read_all(&wal_copy);
    // CREATE TABLE plus the four commits above.
    assert_eq!(txns.len(), db.sizes_after_commit.len());
    let sizes: Vec<u32> = txns.iter().map(|t| t.db_pages).collect();
    assert_eq!(sizes, db.sizes_after_commit);
    assert!(
        txns.iter().any(|t| t.frames.len() > 3),
        "a multi-page transaction"
    );

    let ours = apply(&db_copy, &wal_copy, &txns);
    let theirs = sqlite_checkpointed(&db_copy);
    assert!(
        ours == theirs,
        "pages from the WAL reader rebuild SQLite's own checkpoint"
    );
}

#[test]
fn reads_real_wal_page_size_512() {
    check_page_size(512);
}

#[test]
fn reads_real_wal_page_size_4096() {
    check_page_size(4096);
}

#[test]
fn reads_real_wal_page_size_65536() {
    check_page_size(65536);
}

#[test]
fn torn_last_frame_ends_the_log() {
    let mut db = LiveDb::new(4096);
    db.commit(5, 100);
    db.commit(2, 9000);
    let (_dir, _db_copy, wal_copy) = db.snapshot_files();
    let all = read_all(&wal_copy);
    let len = fs::metadata(&wal_copy).unwrap().len();
    // Cut the copy in the middle of the last frame (the last commit frame).
    let f = fs::OpenOptions::new().write(true).open(&wal_copy).unwrap();
    f.set_len(len - 1000).unwrap();
    let torn = read_all(&wal_copy);
    assert_eq!(torn.len(), all.len() - 1);
    assert_eq!(torn[..], all[..all.len() - 1]);
}

#[test]
fn uncommitted_tail_is_not_shipped() {
    let mut db = LiveDb::new(4096);
    db.commit(5, 100);
    db.commit(1, 20_000); // several frames
    let (_dir, _db_copy, wal_copy) = db.snapshot_files();
    let all = read_all(&wal_copy);
    let last = all.last().unwrap();
    assert!(last.frames.len() > 1);
    // Cut exactly before the commit frame: the remaining frames of the last
    // transaction are whole and valid but uncommitted.
    let commit_frame_start = last.frames.last().unwrap().page_offset - wal::FRAME_HEADER_SIZE;
    let f = fs::OpenOptions::new().write(true).open(&wal_copy).unwrap();
    f.set_len(commit_frame_start).unwrap();
    let cut = read_all(&wal_copy);
    assert_eq!(cut[..], all[..all.len() - 1]);
}

#[test]
fn flipped_byte_in_a_frame_ends_the_log_there() {
    let mut db = LiveDb::new(4096);
    for _ in 0..4 {
        db.commit(3, 100);
    }
    let (_dir, _db_copy, wal_copy) = db.snapshot_files();
    let all = read_all(&wal_copy);
    let mut bytes = fs::read(&wal_copy).unwrap();
    let victim = all[2].frames[0].page_offset as usize + 100;
    bytes[victim] ^= 0x40;
    fs::write(&wal_copy, &bytes).unwrap();
    assert_eq!(read_all(&wal_copy)[..], all[..2]);
}

#[test]
fn restarted_wal_stops_at_old_frames_and_invalidates_old_positions() {
    let mut db = LiveDb::new(4096);
    for _ in 0..20 {
        db.commit(10, 300);
    }
    let (_d1, _db1, wal_before) = db.snapshot_files();
    let before = read_all(&wal_before);
    let old_end = before.last().unwrap().end;

    // Backfill everything, then the next writer restarts the log from the top.
    let (busy, log, checkpointed) = wal_checkpoint(&db.conn, "PASSIVE");
    assert_eq!(busy, 0, "PASSIVE checkpoint busy");
    assert!(log > 0, "the WAL holds frames");
    assert_eq!(checkpointed, log, "every frame was backfilled");
    db.commit(1, 10);
    db.commit(1, 10);
    let (_d2, db_after, wal_after) = db.snapshot_files();
    let wal_len = fs::metadata(&wal_after).unwrap().len();
    assert!(wal_len > 3 * 4096 * 4, "old frames remain past the new end");
    let after = read_all(&wal_after);
    assert_eq!(after.len(), 2, "only the two transactions of the new log");
    assert_ne!(after[0].end.salt1, old_end.salt1);

    let file = File::open(&wal_after).unwrap();
    assert!(matches!(
        WalReader::resume(&file, old_end).unwrap(),
        Resume::Reset
    ));
    let expected_rows = row_count(&db_after);
    assert_eq!(expected_rows, 202);
}

#[test]
fn resume_continues_from_a_saved_position() {
    let mut db = LiveDb::new(4096);
    for i in 0..10 {
        db.commit(i + 1, 500);
    }
    let (_dir, _db_copy, wal_copy) = db.snapshot_files();
    let all = read_all(&wal_copy);
    let file = File::open(&wal_copy).unwrap();
    let saved = all[4].end;
    let Resume::Continue(mut reader) = WalReader::resume(&file, saved).unwrap() else {
        panic!("the same log must resume");
    };
    let mut rest = Vec::new();
    while let Some(t) = reader.next_transaction().unwrap() {
        rest.push(t);
    }
    assert_eq!(rest[..], all[5..]);

    // A position that is not on a frame boundary is not trusted.
    let mut skewed = saved;
    skewed.offset += 7;
    assert!(matches!(
        WalReader::resume(&file, skewed).unwrap(),
        Resume::Reset
    ));
    // A truncated log cannot continue a position past its end.
    let f = fs::OpenOptions::new().write(true).open(&wal_copy).unwrap();
    f.set_len(all[2].end.offset).unwrap();
    assert!(matches!(
        WalReader::resume(&file, saved).unwrap(),
        Resume::Reset
    ));
}

#[test]
fn empty_or_missing_header_means_no_log() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("empty-wal");
    fs::write(&p, b"").unwrap();
    assert!(WalReader::open(&File::open(&p).unwrap()).unwrap().is_none());
    fs::write(&p, [0u8; 32]).unwrap();
    assert!(WalReader::open(&File::open(&p).unwrap()).unwrap().is_none());
}

/// Rewrites a little-endian WAL as a big-endian one (magic 0x377f0683 and
/// every checksum recomputed with big-endian words), as a big-endian host
/// would have written it.
fn to_big_endian(wal_bytes: &[u8], page_size: usize) -> Vec<u8> {
    let mut out = wal_bytes.to_vec();
    out[..4].copy_from_slice(&wal::MAGIC_BE.to_be_bytes());
    let mut ck = wal::wal_checksum(true, &out[..24], (0, 0));
    out[24..28].copy_from_slice(&ck.0.to_be_bytes());
    out[28..32].copy_from_slice(&ck.1.to_be_bytes());
    let frame = 24 + page_size;
    let mut at = 32;
    while at + frame <= out.len() {
        ck = wal::wal_checksum(true, &out[at..at + 8], ck);
        ck = wal::wal_checksum(true, &out[at + 24..at + frame], ck);
        out[at + 16..at + 20].copy_from_slice(&ck.0.to_be_bytes());
        out[at + 20..at + 24].copy_from_slice(&ck.1.to_be_bytes());
        at += frame;
    }
    out
}

#[test]
fn big_endian_checksums_are_read_and_sqlite_agrees() {
    let mut db = LiveDb::new(4096);
    db.commit(20, 700);
    db.commit(1, 30_000);
    let (_dir, db_copy, wal_copy) = db.snapshot_files();
    let le = read_all(&wal_copy);
    let bytes = fs::read(&wal_copy).unwrap();
    fs::write(&wal_copy, to_big_endian(&bytes, 4096)).unwrap();
    let header = WalHeader::read(&File::open(&wal_copy).unwrap())
        .unwrap()
        .unwrap();
    assert!(header.big_endian);
    let be = read_all(&wal_copy);
    assert_eq!(be.len(), le.len());
    let pages = |t: &[Transaction]| -> Vec<_> {
        t.iter().map(|t| (t.frames.clone(), t.db_pages)).collect()
    };
    assert_eq!(pages(&be), pages(&le));
    // SQLite accepts the converted log: the rows are all there.
    assert_eq!(row_count(&db_copy), 21);
}
