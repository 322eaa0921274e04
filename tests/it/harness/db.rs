//! Real SQLite databases on the application's side: creating, writing
//! (deterministic bodies from [`Rng`]), checkpointing and checking them.

use rusqlite::Connection;
use std::path::Path;
use std::time::Duration;

/// A small deterministic generator (xorshift64): the tests need no rand
/// crate, and the same seed gives the same bytes.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // Spread small seeds apart; xorshift never leaves 0.
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// `len` incompressible bytes.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        out.truncate(len);
        out
    }
}

/// `size` incompressible bytes, the same for the same seed.
pub fn noise(size: usize, seed: u64) -> Vec<u8> {
    Rng::new(seed).bytes(size)
}

/// A new WAL-mode database with a table `t(id, body)`.
pub fn create_db(path: &Path, page_size: u32) -> Connection {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).expect("create db folder");
    }
    let conn = Connection::open(path).expect("open db");
    conn.execute_batch(&format!(
        "PRAGMA page_size={page_size}; PRAGMA journal_mode=WAL; PRAGMA busy_timeout=10000;
         CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, body BLOB);"
    ))
    .expect("set up db");
    conn
}

/// An application connection to an existing database.
pub fn app_conn(path: &Path) -> Connection {
    let conn = Connection::open(path).expect("open db");
    conn.busy_timeout(Duration::from_secs(10))
        .expect("busy timeout");
    conn
}

/// Inserts `rows` rows of `size` pseudo-random bytes in one transaction.
pub fn insert(conn: &mut Connection, rows: usize, size: usize, seed: u64) {
    let tx = conn.transaction().expect("begin");
    for i in 0..rows {
        tx.execute(
            "INSERT INTO t(body) VALUES (?1)",
            [noise(size, seed + i as u64)],
        )
        .expect("insert");
    }
    tx.commit().expect("commit");
}

/// Inserts rows with ids `ids`, each with the body `noise(size, id)`, in
/// one transaction: every committed state is "rows 1..=k, bodies by id".
pub fn insert_ids(conn: &mut Connection, ids: std::ops::RangeInclusive<i64>, size: usize) {
    let tx = conn.transaction().expect("begin");
    for id in ids {
        tx.execute(
            "INSERT INTO t(id, body) VALUES (?1, ?2)",
            rusqlite::params![id, noise(size, id as u64)],
        )
        .expect("insert");
    }
    tx.commit().expect("commit");
}

/// The rows of table `t`.
pub fn row_count(path: &Path) -> i64 {
    let conn = Connection::open(path).expect("open");
    conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .expect("count")
}

/// `PRAGMA wal_checkpoint(MODE)` on `conn`: (busy, frames in the WAL,
/// frames checkpointed).
pub fn wal_checkpoint(conn: &Connection, mode: &str) -> (i64, i64, i64) {
    conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
    })
    .unwrap_or_else(|e| panic!("PRAGMA wal_checkpoint({mode}): {e}"))
}

/// Checkpoints a database fully, so that its file holds every commit and
/// its WAL is empty.
pub fn checkpoint_truncate(path: &Path) {
    let got = wal_checkpoint(&app_conn(path), "TRUNCATE");
    assert_eq!(
        got,
        (0, 0, 0),
        "TRUNCATE checkpoint of {} (busy, log, checkpointed)",
        path.display()
    );
}

pub fn integrity_ok(path: &Path) {
    let conn = Connection::open(path).expect("open");
    let r: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("check");
    assert_eq!(r, "ok", "integrity_check of {}", path.display());
}

/// Checks that the database at `path` passes `integrity_check` and holds
/// exactly rows 1..=k with the bodies [`insert_ids`] gives them (a state the
/// application committed); returns k.
pub fn rows_consistent(path: &Path, size: usize) -> i64 {
    integrity_ok(path);
    let conn = Connection::open(path).expect("open");
    let mut stmt = conn
        .prepare("SELECT id, body FROM t ORDER BY id")
        .expect("prepare");
    let rows: Vec<(i64, Vec<u8>)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    for (i, (id, body)) in rows.iter().enumerate() {
        assert_eq!(*id, i as i64 + 1, "{}: rows are not 1..=k", path.display());
        assert!(
            *body == noise(size, *id as u64),
            "{}: row {id} holds other bytes",
            path.display()
        );
    }
    rows.len() as i64
}

/// Asserts two files are byte-identical (without printing megabytes).
pub fn assert_same_bytes(a: &Path, b: &Path) {
    let x = std::fs::read(a).expect("read a");
    let y = std::fs::read(b).expect("read b");
    assert_eq!(
        x.len(),
        y.len(),
        "{} and {} differ in size",
        a.display(),
        b.display()
    );
    if let Some(i) = x.iter().zip(&y).position(|(p, q)| p != q) {
        panic!("{} and {} differ at byte {i}", a.display(), b.display());
    }
}

/// Removes a file if it exists.
pub fn remove_if_exists(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => panic!("remove {}: {e}", path.display()),
    }
}
