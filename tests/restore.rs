//! `walsync restore` and `walsync list` end to end: real SQLite databases
//! written through rusqlite, replicated by the real binary (`watch` and
//! `snapshot`) into `file://` replicas, restored by the real binary.

mod common;
mod support;

use rusqlite::Connection;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use support::{integrity_ok, row_count as count, Dest, Watcher};
use walsync::fsutil::{now_ms, rfc3339_ms};
use walsync::storage::parse_ltx_filename;

/// A source database, its `file://` replica and a scratch folder for outputs.
struct Env {
    dir: tempfile::TempDir,
    dest: Dest,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("src")).unwrap();
        let dest = Dest::file(&dir.path().join("replica"));
        Env { dir, dest }
    }

    fn db(&self) -> PathBuf {
        self.dir.path().join("src").join("app.db")
    }

    fn replica(&self) -> PathBuf {
        self.dir.path().join("replica")
    }

    fn url(&self) -> String {
        format!("file://{}", self.replica().display())
    }

    fn out(&self, name: &str) -> PathBuf {
        self.dir.path().join("out").join(name)
    }

    /// Opens the source in WAL mode with table `t`.
    fn open(&self) -> Connection {
        let c = Connection::open(self.db()).unwrap();
        c.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA busy_timeout=5000;
             CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, body BLOB);",
        )
        .unwrap();
        c
    }

    fn level_dir(&self, level: u32) -> PathBuf {
        self.replica()
            .join("app")
            .join("ltx")
            .join(level.to_string())
    }

    /// LTX files of `app` at `level`, sorted, as (min, max, path).
    fn files(&self, level: u32) -> Vec<(u64, u64, PathBuf)> {
        let mut v: Vec<(u64, u64, PathBuf)> = fs::read_dir(self.level_dir(level))
            .map(|it| {
                it.flatten()
                    .filter_map(|e| {
                        let name = e.file_name().to_string_lossy().into_owned();
                        parse_ltx_filename(&name).map(|(a, b)| (a, b, e.path()))
                    })
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// The newest TXID stored at level 0 or 9.
    fn replica_txid(&self) -> u64 {
        self.files(0)
            .into_iter()
            .chain(self.files(9))
            .map(|(_, max, _)| max)
            .max()
            .unwrap_or(0)
    }

    /// Waits until the replica holds a TXID above `prev` and returns it.
    fn wait_txid_above(&self, prev: u64) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let t = self.replica_txid();
            if t > prev {
                return t;
            }
            assert!(
                Instant::now() < deadline,
                "replica stuck at TXID {t} (waiting for > {prev})"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn walsync(&self, args: &[&str]) -> Output {
        self.dest.walsync(args)
    }

    /// `walsync restore app -o OUT -b URL <extra>`.
    fn restore(&self, out: &Path, extra: &[&str]) -> Output {
        self.dest.restore("app", out, extra)
    }

    /// `walsync snapshot DB -b URL`.
    fn snapshot(&self) {
        let db = self.db();
        let o = self.walsync(&["snapshot", db.to_str().unwrap(), "-b", &self.url()]);
        assert!(o.status.success(), "snapshot failed: {}", stderr(&o));
    }
}

/// `walsync watch` on the source, syncing every 50 ms.
fn watch(env: &Env) -> Watcher {
    env.dest
        .watch(&[env.db().as_path()], &["--sync-interval", "50ms"])
}

/// SIGINT, then a clean exit (everything committed shipped).
fn stop(w: Watcher) {
    let (code, err) = w.stop();
    assert_eq!(code, 0, "watch exit code; stderr:\n{err}");
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn code(o: &Output) -> i32 {
    o.status.code().expect("exited by a signal")
}

/// No output, no temporary output, no download folder.
fn assert_nothing_left(out: &Path) {
    for suffix in ["", ".tmp", ".tmp-ltx", ".tmp-wal", ".tmp-shm"] {
        let mut p = out.as_os_str().to_owned();
        p.push(suffix);
        assert!(
            !Path::new(&p).exists(),
            "{} was left behind",
            Path::new(&p).display()
        );
    }
}

/// One commit as the replica recorded it.
#[derive(Debug, Clone, Copy)]
struct Point {
    txid: u64,
    rows: i64,
    /// Wall-clock time once the commit's file was visible in the replica.
    visible_ms: i64,
}

/// Writes `commits` transactions (inserts of growing size, one delete, one
/// large update) under `walsync watch`, waiting for each to reach the
/// replica, `gap_ms` apart. Returns the points; the watch is stopped.
fn history(env: &Env, conn: &Connection, commits: usize, gap_ms: u64) -> Vec<Point> {
    let watcher = watch(env);
    let mut txid = env.wait_txid_above(0);
    let mut points = Vec::new();
    for i in 0..commits {
        match i {
            5 => {
                conn.execute("DELETE FROM t WHERE id % 3 = 0", []).unwrap();
            }
            7 => {
                conn.execute("UPDATE t SET body = zeroblob(3000)", [])
                    .unwrap();
            }
            _ => {
                let tx = conn.unchecked_transaction().unwrap();
                for j in 0..(i + 1) * 3 {
                    tx.execute(
                        "INSERT INTO t(body) VALUES (?1)",
                        [vec![(i * 7 + j) as u8; 200 + 150 * i]],
                    )
                    .unwrap();
                }
                tx.commit().unwrap();
            }
        }
        txid = env.wait_txid_above(txid);
        let rows = conn
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        points.push(Point {
            txid,
            rows,
            visible_ms: now_ms(),
        });
        std::thread::sleep(Duration::from_millis(gap_ms));
    }
    stop(watcher);
    points
}

#[test]
fn latest_restore_is_byte_identical_to_the_checkpointed_source() {
    let env = Env::new();
    let conn = env.open();
    let points = history(&env, &conn, 10, 0);
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
        .unwrap();
    let source = fs::read(env.db()).unwrap();

    // The output folder does not exist yet: restore creates it.
    let out = env.out("latest.db");
    let o = env.restore(&out, &[]);
    assert!(o.status.success(), "restore failed: {}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!("{:016x}", points.last().unwrap().txid)),
        "summary line names the TXID: {}",
        stderr(&o)
    );
    let restored = fs::read(&out).unwrap();
    assert!(restored == source, "restored bytes differ from the source");
    // Read-only verification left no sidecar files.
    for suffix in [".tmp", ".tmp-ltx", "-wal", "-shm"] {
        let mut p = out.as_os_str().to_owned();
        p.push(suffix);
        assert!(!Path::new(&p).exists(), "{suffix} left behind");
    }
    integrity_ok(&out);
    assert_eq!(count(&out), points.last().unwrap().rows);

    // --force replaces it, and drops a WAL that belonged to the old file.
    let wal = env.out("latest.db-wal");
    fs::write(&wal, b"stale wal of another database").unwrap();
    fs::write(&out, b"not a database").unwrap();
    let o = env.restore(&out, &["--force", "--parallelism", "1"]);
    assert!(o.status.success(), "restore --force failed: {}", stderr(&o));
    assert!(!wal.exists(), "stale -wal must be removed");
    assert!(fs::read(&out).unwrap() == source);
}

#[test]
fn txid_restores_give_the_row_counts_of_the_time() {
    let env = Env::new();
    let conn = env.open();
    let points = history(&env, &conn, 9, 0);
    // Each commit took its own TXID.
    for w in points.windows(2) {
        assert_eq!(w[1].txid, w[0].txid + 1, "{points:?}");
    }
    for (i, p) in points.iter().enumerate() {
        if i % 2 == 1 && i != points.len() - 1 {
            continue; // every other one keeps the test quick
        }
        let out = env.out(&format!("txid-{}.db", p.txid));
        let txid = if i % 4 == 0 {
            format!("0x{:x}", p.txid)
        } else {
            p.txid.to_string()
        };
        let o = env.restore(&out, &["--txid", &txid, "--parallelism", "2"]);
        assert!(o.status.success(), "restore --txid {txid}: {}", stderr(&o));
        assert_eq!(count(&out), p.rows, "rows at TXID {}", p.txid);
        integrity_ok(&out);
    }
    // Beyond the newest TXID: nothing to restore there.
    let out = env.out("beyond.db");
    let beyond = (points.last().unwrap().txid + 5).to_string();
    let o = env.restore(&out, &["--txid", &beyond]);
    assert_eq!(code(&o), 6, "{}", stderr(&o));
    assert_nothing_left(&out);
}

#[test]
fn point_in_time_restores_between_commits() {
    let env = Env::new();
    let conn = env.open();
    let points = history(&env, &conn, 6, 150);
    for p in &points {
        // After the commit was stored, before the next commit happened.
        let at = rfc3339_ms(p.visible_ms + 40);
        let out = env.out(&format!("pit-{}.db", p.txid));
        let o = env.restore(&out, &["--point-in-time", &at]);
        assert!(o.status.success(), "restore at {at}: {}", stderr(&o));
        assert_eq!(count(&out), p.rows, "rows at {at} (TXID {})", p.txid);
    }
    // Offsets are accepted too.
    let p = points[2];
    let at = rfc3339_ms(p.visible_ms + 40 + 7_200_000).replace('Z', "+02:00");
    let out = env.out("pit-offset.db");
    let o = env.restore(&out, &["--point-in-time", &at]);
    assert!(o.status.success(), "restore at {at}: {}", stderr(&o));
    assert_eq!(count(&out), p.rows, "rows at {at}");

    // Before anything was replicated.
    let out = env.out("pit-early.db");
    let o = env.restore(&out, &["--point-in-time", "2001-01-01T00:00:00Z"]);
    assert_eq!(code(&o), 6, "{}", stderr(&o));
    assert_nothing_left(&out);
    // Not a time at all: usage error.
    let o = env.restore(&out, &["--point-in-time", "yesterday at noon"]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    let o = env.restore(
        &out,
        &["--point-in-time", "2001-01-01T00:00:00Z", "--txid", "3"],
    );
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert_nothing_left(&out);
}

/// A small replica made by the one-shot `snapshot` command.
fn snapshot_replica() -> (Env, Connection) {
    let env = Env::new();
    let conn = env.open();
    for i in 0..50 {
        conn.execute("INSERT INTO t(body) VALUES (?1)", [vec![i as u8; 500]])
            .unwrap();
    }
    env.snapshot();
    (env, conn)
}

#[test]
fn existing_output_and_missing_replica() {
    let (env, _conn) = snapshot_replica();
    fs::create_dir_all(env.out("")).unwrap();
    let out = env.out("taken.db");
    fs::write(&out, b"precious").unwrap();

    let o = env.restore(&out, &[]);
    assert_eq!(code(&o), 6, "{}", stderr(&o));
    assert!(stderr(&o).contains("--force"), "{}", stderr(&o));
    assert_eq!(fs::read(&out).unwrap(), b"precious");

    let o = env.restore(&out, &["--if-db-not-exists"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(fs::read(&out).unwrap(), b"precious");

    let o = env.restore(&out, &["--force"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(count(&out), 50);

    // A name the replica does not hold.
    let missing = env.out("missing.db");
    let url = env.url();
    let args = [
        "restore",
        "nope",
        "-o",
        missing.to_str().unwrap(),
        "-b",
        &url,
    ];
    let o = env.walsync(&args);
    assert_eq!(code(&o), 6, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("'nope'") && stderr(&o).contains("walsync list"),
        "{}",
        stderr(&o)
    );
    assert_nothing_left(&missing);
    let mut with_flag = args.to_vec();
    with_flag.push("--if-replica-exists");
    let o = env.walsync(&with_flag);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_nothing_left(&missing);
}

/// Flips one byte in the middle of `path`.
fn flip_byte(path: &Path) {
    let mut b = fs::read(path).unwrap();
    let at = b.len() / 2;
    b[at] ^= 0x55;
    fs::write(path, b).unwrap();
}

/// Restores into `out` expecting an integrity failure (exit 5) whose message
/// holds every one of `words`, with nothing left behind.
fn assert_integrity_failure(env: &Env, out: &Path, words: &[&str]) {
    let o = env.restore(out, &[]);
    let err = stderr(&o);
    assert_eq!(code(&o), 5, "{err}");
    for w in words {
        assert!(err.contains(w), "no '{w}' in: {err}");
    }
    assert_nothing_left(out);
}

/// Puts `original` back into `victim`; the restore then succeeds with `rows`.
fn assert_restores_once_repaired(env: &Env, victim: &Path, original: &[u8], out: &Path, rows: i64) {
    fs::write(victim, original).unwrap();
    let o = env.restore(out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(count(out), rows);
}

#[test]
fn corrupt_objects_fail_with_integrity_errors() {
    let env = Env::new();
    let conn = env.open();
    let points = history(&env, &conn, 6, 0);
    let level0 = env.files(0);
    assert!(level0.len() >= 4, "{level0:?}");

    // A flipped byte: the SHA-256 in the metadata catches it.
    let (_, _, victim) = &level0[2];
    let original = fs::read(victim).unwrap();
    flip_byte(victim);
    let out = env.out("corrupt.db");
    let key_name = victim.file_name().unwrap().to_string_lossy().into_owned();
    assert_integrity_failure(&env, &out, &[&key_name]);

    // Without its metadata sidecar (as Litestream writes it), the LTX
    // checksums catch it.
    let sidecar = env
        .replica()
        .join(".walsync-meta/app/ltx/0")
        .join(format!("{key_name}.json"));
    assert!(sidecar.exists(), "{}", sidecar.display());
    fs::remove_file(&sidecar).unwrap();
    assert_integrity_failure(&env, &out, &[&key_name]);

    // Truncated: shorter than the metadata says.
    fs::write(victim, &original[..original.len() - 7]).unwrap();
    assert_integrity_failure(&env, &out, &[]);

    // Restored to the original bytes (no sidecar now), it restores again.
    assert_restores_once_repaired(&env, victim, &original, &out, points.last().unwrap().rows);
}

#[test]
fn a_missing_middle_file_is_a_named_gap() {
    let env = Env::new();
    let conn = env.open();
    let points = history(&env, &conn, 6, 0);
    let level0 = env.files(0);
    let (min, _, victim) = level0[level0.len() / 2].clone();
    fs::remove_file(&victim).unwrap();

    let out = env.out("gap.db");
    let o = env.restore(&out, &[]);
    let err = stderr(&o);
    assert!(matches!(code(&o), 5 | 6), "{err}");
    assert!(err.contains("gap"), "{err}");
    assert!(
        err.contains(&format!("{min:016x}")),
        "names the missing TXID: {err}"
    );
    assert_nothing_left(&out);

    // The state before the gap still restores.
    let before = points.iter().rev().find(|p| p.txid < min).unwrap();
    let o = env.restore(&out, &["--txid", &before.txid.to_string()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(count(&out), before.rows);
}

#[test]
fn list_names_databases_with_txid_and_snapshots() {
    let env = Env::new();
    let url = env.url();
    // An empty replica.
    let o = env.walsync(&["list", "-b", &url]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("no databases"));
    let o = env.walsync(&["list", "-b", &url, "--json"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "[]");

    let conn = env.open();
    let points = history(&env, &conn, 3, 0);
    env.snapshot(); // a second level-9 file
    let txid = env.replica_txid();
    assert!(txid >= points.last().unwrap().txid);
    assert_eq!(env.files(9).len(), 2);

    let o = env.walsync(&["list", "-b", &url]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let row = text
        .lines()
        .find(|l| l.starts_with("app "))
        .unwrap_or_else(|| panic!("no row for app:\n{text}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cols[1], format!("{txid:016x}"), "{text}");
    assert_eq!(cols[3], "2", "snapshots: {text}");

    let o = env.walsync(&["list", "-b", &url, "--json"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let dbs = v.as_array().unwrap();
    assert_eq!(dbs.len(), 1, "{v}");
    let d = &dbs[0];
    assert_eq!(d["name"], "app");
    assert_eq!(d["txid"], txid);
    assert_eq!(d["txid_hex"], format!("{txid:016x}"));
    assert_eq!(d["snapshots"], 2);
    let files = env.files(0).len() + env.files(9).len();
    assert_eq!(d["files"], files as u64);
    assert!(d["bytes"].as_u64().unwrap() > 0);
    let last: jiff::Timestamp = d["last_change"].as_str().unwrap().parse().unwrap();
    let age = now_ms() - last.as_millisecond();
    assert!(
        (0..120_000).contains(&age),
        "last_change {last} is not recent"
    );
}

// ---------------------------------------------------------------------------
// Hand-built replicas: LTX files encoded here from real SQLite database
// states, to exercise compaction levels, Litestream-style (NoChecksum)
// files, full level-0 files and lying checksums.
// ---------------------------------------------------------------------------

mod built {
    use super::*;
    use sha2::{Digest, Sha256};
    use walsync::ltx::{db_checksum, Encoder, Header, HEADER_FLAG_NO_CHECKSUM};
    use walsync::restore::{self, RestoreOptions};
    use walsync::storage::{file::FileStorage, Layout, LtxId, ObjectMeta, Storage};

    const PS: usize = 4096;

    /// The bytes of a rollback-journal database after each of five commits
    /// (growing, then shrunk by VACUUM, then growing again).
    fn states(dir: &Path) -> Vec<Vec<u8>> {
        let path = dir.join("states.db");
        let c = Connection::open(&path).unwrap();
        c.execute_batch(
            "PRAGMA page_size=4096; PRAGMA journal_mode=DELETE;
             CREATE TABLE t(id INTEGER PRIMARY KEY, body BLOB);",
        )
        .unwrap();
        let mut out = vec![fs::read(&path).unwrap()];
        let steps = [
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 40) INSERT INTO t(body) SELECT randomblob(300) FROM n",
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 60) INSERT INTO t(body) SELECT randomblob(2000) FROM n",
            "DELETE FROM t WHERE id > 20",
            "VACUUM",
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 30) INSERT INTO t(body) SELECT randomblob(900) FROM n",
        ];
        for s in steps {
            c.execute_batch(s).unwrap();
            out.push(fs::read(&path).unwrap());
        }
        out
    }

    fn pages(db: &[u8]) -> Vec<(u32, &[u8])> {
        db.chunks(PS)
            .enumerate()
            .map(|(i, p)| (i as u32 + 1, p))
            .collect()
    }

    fn checksum(db: &[u8]) -> u64 {
        db_checksum(pages(db))
    }

    struct Replica {
        _dir: tempfile::TempDir,
        root: PathBuf,
        storage: FileStorage,
        states: Vec<Vec<u8>>,
    }

    impl Replica {
        fn new() -> Replica {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().join("replica");
            let storage = FileStorage::open(root.to_str().unwrap()).unwrap();
            let states = states(dir.path());
            Replica {
                _dir: dir,
                root,
                storage,
                states,
            }
        }

        /// Stores an LTX file taking state `from` (None: empty) to state
        /// `to`, covering TXIDs min..=max (state k is TXID k+1).
        #[allow(clippy::too_many_arguments)]
        fn put(
            &self,
            level: u32,
            min: u64,
            max: u64,
            from: Option<usize>,
            to: usize,
            full: bool,
            litestream: bool,
            post_tweak: u64,
        ) -> String {
            let new = &self.states[to];
            let old: &[u8] = from.map_or(&[], |f| &self.states[f]);
            let header = Header {
                flags: if litestream {
                    HEADER_FLAG_NO_CHECKSUM
                } else {
                    0
                },
                page_size: PS as u32,
                commit: (new.len() / PS) as u32,
                min_txid: min,
                max_txid: max,
                timestamp_ms: 1_767_225_600_000 + max as i64 * 1000,
                pre_apply_checksum: if litestream || min == 1 {
                    0
                } else {
                    checksum(old)
                },
                ..Header::default()
            };
            let mut enc = Encoder::new(Vec::new(), header).unwrap();
            for (pgno, page) in pages(new) {
                let start = (pgno as usize - 1) * PS;
                if full || min == 1 || old.get(start..start + PS) != Some(page) {
                    enc.write_page(pgno, page).unwrap();
                }
            }
            let post = if litestream {
                0
            } else {
                checksum(new) ^ post_tweak
            };
            let (_, body) = enc.finish(post).unwrap();
            let id = LtxId {
                level,
                min_txid: min,
                max_txid: max,
            };
            let key = Layout::File.ltx_key("db", id);
            let meta = ObjectMeta {
                sha256: (!litestream).then(|| walsync::fsutil::hex(&Sha256::digest(&body))),
                timestamp: None,
                db_checksums: None,
            };
            let len = body.len() as u64;
            self.storage
                .put(&key, &mut std::io::Cursor::new(body), len, &meta)
                .unwrap();
            key
        }

        /// The usual chain: snapshot of state 0 at TXID 1, then one level-0
        /// file per commit (TXIDs 2..=6).
        fn chain(&self, litestream: bool) {
            self.put(9, 1, 1, None, 0, false, litestream, 0);
            for k in 1..self.states.len() {
                let t = k as u64 + 1;
                self.put(0, t, t, Some(k - 1), k, false, litestream, 0);
            }
        }

        fn restore(&self, out: &Path, txid: Option<u64>) -> walsync::error::Result<()> {
            restore::run(
                &self.storage,
                &RestoreOptions {
                    name: "db".into(),
                    output: out.to_path_buf(),
                    txid,
                    point_in_time_ms: None,
                    force: true,
                    if_db_not_exists: false,
                    if_replica_exists: false,
                    parallelism: 3,
                    cancel: Default::default(),
                },
                &walsync::event::Discard,
            )
            .map(|_| ())
        }

        fn remove(&self, level: u32, min: u64, max: u64) {
            let id = LtxId {
                level,
                min_txid: min,
                max_txid: max,
            };
            fs::remove_file(self.root.join(Layout::File.ltx_key("db", id))).unwrap();
        }
    }

    #[test]
    fn every_state_restores_byte_for_byte_across_levels() {
        let r = Replica::new();
        r.chain(false);
        // Compactions: 2..=4 at level 1, and a newer snapshot at TXID 4.
        r.put(1, 2, 4, Some(0), 3, false, false, 0);
        r.put(9, 1, 4, None, 3, false, false, 0);
        let out = r.root.with_file_name("out.db");
        for (k, state) in r.states.iter().enumerate() {
            let txid = k as u64 + 1;
            r.restore(&out, Some(txid))
                .unwrap_or_else(|e| panic!("TXID {txid}: {e}"));
            assert!(&fs::read(&out).unwrap() == state, "TXID {txid} differs");
        }
        r.restore(&out, None).unwrap();
        assert!(&fs::read(&out).unwrap() == r.states.last().unwrap());

        // Without the level-0 files 2..=4, TXID 3 exists only inside 2..=4
        // at level 1 (the snapshot at 4 is newer).
        r.remove(9, 1, 4);
        for t in 2..=4 {
            r.remove(0, t, t);
        }
        let e = r.restore(&out, Some(3)).unwrap_err();
        assert_eq!(e.exit_code(), 6, "{e}");
        assert!(e.message().contains("inside"), "{e}");
        r.restore(&out, Some(4)).unwrap();
        assert!(fs::read(&out).unwrap() == r.states[3]);
    }

    #[test]
    fn litestream_files_without_checksums_restore() {
        let r = Replica::new();
        r.chain(true);
        let out = r.root.with_file_name("out.db");
        r.restore(&out, None).unwrap();
        assert!(&fs::read(&out).unwrap() == r.states.last().unwrap());
        r.restore(&out, Some(4)).unwrap();
        assert!(fs::read(&out).unwrap() == r.states[3]);
    }

    #[test]
    fn a_full_level0_file_applies_like_an_incremental() {
        let r = Replica::new();
        r.put(9, 1, 1, None, 0, false, false, 0);
        r.put(0, 2, 2, Some(0), 1, false, false, 0);
        r.put(0, 3, 3, Some(1), 2, true, false, 0);
        r.put(0, 4, 4, Some(2), 3, true, false, 0); // shrinks
        r.put(0, 5, 5, Some(3), 4, false, false, 0);
        let out = r.root.with_file_name("out.db");
        r.restore(&out, None).unwrap();
        assert!(fs::read(&out).unwrap() == r.states[4]);
    }

    #[test]
    fn checksums_that_do_not_match_the_rebuilt_bytes_fail() {
        let out_name = "out.db";
        // A post-apply checksum that the rebuilt bytes do not give.
        let r = Replica::new();
        r.put(9, 1, 1, None, 0, false, false, 0);
        let key = r.put(0, 2, 2, Some(0), 1, false, false, 0b10);
        let out = r.root.with_file_name(out_name);
        let e = r.restore(&out, None).unwrap_err();
        assert_eq!(e.exit_code(), 5, "{e}");
        assert!(e.message().contains("restored bytes differ"), "{e}");
        assert!(e.message().contains(&key), "{e}");
        assert_nothing_left(&out);

        // A file that starts from another state than the chain reaches:
        // TXID 3 built on state 0 instead of state 1.
        let r = Replica::new();
        r.put(9, 1, 1, None, 0, false, false, 0);
        r.put(0, 2, 2, Some(0), 1, false, false, 0);
        let key = r.put(0, 3, 3, Some(0), 2, false, false, 0);
        let out = r.root.with_file_name(out_name);
        let e = r.restore(&out, None).unwrap_err();
        assert_eq!(e.exit_code(), 5, "{e}");
        assert!(e.message().contains(&key), "{e}");
        assert_nothing_left(&out);
        // The state before it is fine.
        r.restore(&out, Some(2)).unwrap();
        assert!(fs::read(&out).unwrap() == r.states[1]);
    }
}

/// The snapshot is applied while it downloads: a damaged one is still
/// reported as the damaged object (not as an LTX decoding error), with the
/// integrity exit code, and leaves nothing behind.
#[test]
fn a_damaged_snapshot_is_named_while_streamed() {
    let env = Env::new();
    let conn = env.open();
    let points = history(&env, &conn, 3, 0);
    let snapshots = env.files(9);
    assert_eq!(snapshots.len(), 1, "{snapshots:?}");
    let (_, _, victim) = &snapshots[0];
    let key_name = victim.file_name().unwrap().to_string_lossy().into_owned();
    let original = fs::read(victim).unwrap();
    let out = env.out("snap.db");

    flip_byte(victim);
    assert_integrity_failure(&env, &out, &[&key_name, "SHA-256"]);

    fs::write(victim, &original[..original.len() / 2]).unwrap();
    assert_integrity_failure(&env, &out, &[&key_name, "truncated"]);

    assert_restores_once_repaired(&env, victim, &original, &out, points.last().unwrap().rows);
}

/// SIGINT while the snapshot is still streaming into the output stops the
/// restore with exit 1 and a message saying so, and leaves nothing behind.
#[test]
fn an_interrupted_restore_leaves_nothing() {
    let env = Env::new();
    let conn = env.open();
    // 96 MiB of incompressible rows: long enough to interrupt mid-apply.
    conn.execute_batch("PRAGMA synchronous=OFF").unwrap();
    let tx = conn.unchecked_transaction().unwrap();
    for i in 0..24_000u32 {
        let body: Vec<u8> = (0..4000u32)
            .map(|j| (i.wrapping_mul(2_654_435_761) ^ j.wrapping_mul(40_503)).to_le_bytes()[1])
            .collect();
        tx.execute("INSERT INTO t(body) VALUES (?1)", [body])
            .unwrap();
    }
    tx.commit().unwrap();
    env.snapshot();

    let out = env.out("interrupted.db");
    fs::create_dir_all(out.parent().unwrap()).unwrap();
    let url = env.url();
    let mut child = Command::new(common::walsync_bin())
        .args(["restore", "app", "-o", out.to_str().unwrap(), "-b", &url])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let tmp = env.out("interrupted.db.tmp");
    let deadline = Instant::now() + Duration::from_secs(20);
    while fs::metadata(&tmp).map_or(true, |m| m.len() == 0) {
        assert!(
            Instant::now() < deadline,
            "the restore never started writing"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the restore ended early"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let o = child.wait_with_output().unwrap();
    let err = stderr(&o);
    assert_eq!(code(&o), 1, "{err}");
    assert!(err.contains("interrupted"), "{err}");
    assert_nothing_left(&out);
}
