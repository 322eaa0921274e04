//! Helpers of the engine tests: a `walsync watch` child process, writers on
//! real SQLite databases, replica inspection and restores through the binary.
#![allow(dead_code)]

use rusqlite::Connection;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use walsync::catalog::{self, RemoteLtx};
use walsync::storage::{self, s3::S3Options, Storage};

/// Where a test replicates to: an S3 URL on a test server, or a folder.
pub struct Dest {
    pub url: String,
    pub env: Vec<(String, String)>,
    pub options: S3Options,
}

impl Dest {
    pub fn s3(server: &crate::common::S3Server, bucket: &str, prefix: &str) -> Dest {
        server.create_bucket(bucket);
        Dest {
            url: format!("s3://{bucket}/{prefix}"),
            env: server.env(),
            options: server.options(),
        }
    }

    pub fn file(dir: &Path) -> Dest {
        Dest {
            url: format!("file://{}", dir.display()),
            env: Vec::new(),
            options: S3Options::default(),
        }
    }

    pub fn storage(&self) -> Box<dyn Storage> {
        storage::open(&self.url, &self.options).expect("open test storage")
    }

    /// The LTX files of `name` in the replica.
    pub fn files(&self, name: &str) -> Vec<RemoteLtx> {
        catalog::list_db(self.storage().as_ref(), name).expect("list replica")
    }

    pub fn max_txid(&self, name: &str) -> u64 {
        self.files(name)
            .iter()
            .map(|f| f.id.max_txid)
            .max()
            .unwrap_or(0)
    }

    /// Waits until the replica of `name` holds at least `txid`.
    pub fn wait_for_txid(&self, name: &str, txid: u64, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            let max = self.max_txid(name);
            if max >= txid {
                return max;
            }
            assert!(
                Instant::now() < deadline,
                "replica of {name} stuck at TXID {max}, wanted {txid}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs `walsync <args>` with this destination's environment.
    pub fn walsync(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(crate::common::walsync_bin());
        cmd.args(args).envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd.stdin(Stdio::null()).output().expect("run walsync")
    }

    /// Restores `name` into `out` (extra flags appended) and returns the output.
    pub fn restore(&self, name: &str, out: &Path, extra: &[&str]) -> Output {
        let out = out.to_str().expect("utf-8 path");
        let mut args = vec!["restore", name, "-o", out, "-b", &self.url];
        args.extend_from_slice(extra);
        self.walsync(&args)
    }

    /// Replicates `db` (a new database from [`create_db`]) as `name` with a
    /// 50 ms sync: the first snapshot, then `commits` transactions of `rows`
    /// rows of `size` bytes, each waited for in the replica; stops cleanly.
    pub fn replicate_commits(&self, db: &Path, name: &str, commits: u64, rows: usize, size: usize) {
        let mut conn = app_conn(db);
        let w = self.watch(&[db], &["--sync-interval", "50ms"]);
        let mut txid = self.wait_for_txid(name, 1, Duration::from_secs(20));
        for i in 0..commits {
            insert(&mut conn, rows, size, i);
            txid = self.wait_for_txid(name, txid + 1, Duration::from_secs(20));
        }
        let (code, err) = w.stop();
        assert_eq!(code, 0, "watch exit code; stderr:\n{err}");
    }

    /// Starts `walsync watch` on `dbs` with extra flags.
    pub fn watch(&self, dbs: &[&Path], extra: &[&str]) -> Watcher {
        let mut cmd = Command::new(crate::common::walsync_bin());
        cmd.arg("watch");
        for db in dbs {
            cmd.arg(db);
        }
        cmd.args(["-b", &self.url]).args(extra);
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(if std::env::var_os("WALSYNC_TEST_STDERR").is_some() {
                Stdio::inherit()
            } else {
                Stdio::piped()
            })
            .spawn()
            .expect("start walsync watch");
        Watcher { child: Some(child) }
    }
}

/// A running `walsync watch`.
pub struct Watcher {
    child: Option<Child>,
}

impl Watcher {
    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    /// SIGINT, then waits; returns the exit code and stderr.
    pub fn stop(mut self) -> (i32, String) {
        let mut child = self.child.take().expect("running");
        unsafe {
            libc::kill(child.id() as i32, libc::SIGINT);
        }
        wait_with_timeout(&mut child, Duration::from_secs(60))
    }

    /// SIGKILL, then waits.
    pub fn kill9(mut self) {
        let mut child = self.child.take().expect("running");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn wait_with_timeout(child: &mut Child, timeout: Duration) -> (i32, String) {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut err);
            }
            return (status.code().unwrap_or(-1), err);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("walsync did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
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

pub fn row_count(path: &Path) -> i64 {
    let conn = Connection::open(path).expect("open");
    conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .expect("count")
}

/// Deterministic incompressible-ish bytes.
pub fn noise(size: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Checkpoints a source database fully so its file holds every commit.
pub fn checkpoint_truncate(path: &Path) {
    let conn = app_conn(path);
    let (busy, _, _): (i64, i64, i64) = conn
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .expect("checkpoint");
    assert_eq!(
        busy,
        0,
        "TRUNCATE checkpoint of {} was busy",
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

pub fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn tmp_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
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

/// Removes a file if it exists.
pub fn remove_if_exists(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => panic!("remove {}: {e}", path.display()),
    }
}
