//! `walsync restore` and `walsync list` end to end: real SQLite databases
//! written through rusqlite, replicated by the real binary (`watch` and
//! `snapshot`) into `file://` replicas, restored by the real binary.

use crate::harness::*;
use rusqlite::Connection;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;
use walsync::fsutil::{now_ms, rfc3339_ms};
use walsync::storage::ObjectMeta;

/// The name the source is replicated as.
const NAME: &str = "app";

/// The application's side: a scratch folder holding the source database
/// `src/app.db` (WAL mode, table `t`) and an open connection to it; outputs
/// go to `out/`, which restore creates.
struct Source {
    dir: TempDir,
    db: PathBuf,
    conn: Connection,
}

/// A new source, and its `file://` replica in the same scratch folder
/// (`replica/`).
fn source() -> (Source, Dest) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("src").join("app.db");
    let conn = create_db(&db, 4096);
    let dest = Dest::file(&dir.path().join("replica"));
    (Source { dir, db, conn }, dest)
}

impl Source {
    /// A path in the output folder.
    fn out(&self, name: &str) -> PathBuf {
        self.dir.path().join("out").join(name)
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
fn history(src: &Source, dest: &Dest, commits: usize, gap_ms: u64) -> Vec<Point> {
    let conn = &src.conn;
    let watcher = dest.watch(&[&src.db], &["--sync-interval", "50ms"]);
    let wait = Duration::from_secs(20);
    let mut txid = dest.wait_for_txid(NAME, 1, wait);
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
        txid = dest.wait_for_txid(NAME, txid + 1, wait);
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
    watcher.stop_clean();
    points
}

#[test]
fn latest_restore_is_byte_identical_to_the_checkpointed_source() {
    let (src, dest) = source();
    let points = history(&src, &dest, 10, 0);
    checkpoint_truncate(&src.db);
    let source = fs::read(&src.db).unwrap();

    // The output folder does not exist yet: restore creates it.
    let out = src.out("latest.db");
    let o = dest.restore(NAME, &out, &[]);
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
    assert_eq!(row_count(&out), points.last().unwrap().rows);

    // --force replaces it, and drops a WAL that belonged to the old file.
    let wal = src.out("latest.db-wal");
    fs::write(&wal, b"stale wal of another database").unwrap();
    fs::write(&out, b"not a database").unwrap();
    let o = dest.restore(NAME, &out, &["--force", "--parallelism", "1"]);
    assert!(o.status.success(), "restore --force failed: {}", stderr(&o));
    assert!(!wal.exists(), "stale -wal must be removed");
    assert!(fs::read(&out).unwrap() == source);
}

#[test]
fn txid_restores_give_the_row_counts_of_the_time() {
    let (src, dest) = source();
    let points = history(&src, &dest, 9, 0);
    // Each commit took its own TXID.
    for w in points.windows(2) {
        assert_eq!(w[1].txid, w[0].txid + 1, "{points:?}");
    }
    for (i, p) in points.iter().enumerate() {
        if i % 2 == 1 && i != points.len() - 1 {
            continue; // every other one keeps the test quick
        }
        let out = src.out(&format!("txid-{}.db", p.txid));
        let txid = if i % 4 == 0 {
            format!("0x{:x}", p.txid)
        } else {
            p.txid.to_string()
        };
        let o = dest.restore(NAME, &out, &["--txid", &txid, "--parallelism", "2"]);
        assert!(o.status.success(), "restore --txid {txid}: {}", stderr(&o));
        assert_eq!(row_count(&out), p.rows, "rows at TXID {}", p.txid);
        integrity_ok(&out);
    }
    // Beyond the newest TXID: nothing to restore there.
    let out = src.out("beyond.db");
    let beyond = (points.last().unwrap().txid + 5).to_string();
    let o = dest.restore(NAME, &out, &["--txid", &beyond]);
    assert_eq!(code(&o), 6, "{}", stderr(&o));
    assert_nothing_left(&out);
}

#[test]
fn point_in_time_restores_between_commits() {
    let (src, dest) = source();
    let points = history(&src, &dest, 6, 150);
    for p in &points {
        // After the commit was stored, before the next commit happened.
        let at = rfc3339_ms(p.visible_ms + 40);
        let out = src.out(&format!("pit-{}.db", p.txid));
        let o = dest.restore(NAME, &out, &["--point-in-time", &at]);
        assert!(o.status.success(), "restore at {at}: {}", stderr(&o));
        assert_eq!(row_count(&out), p.rows, "rows at {at} (TXID {})", p.txid);
    }
    // Offsets are accepted too.
    let p = points[2];
    let at = rfc3339_ms(p.visible_ms + 40 + 7_200_000).replace('Z', "+02:00");
    let out = src.out("pit-offset.db");
    let o = dest.restore(NAME, &out, &["--point-in-time", &at]);
    assert!(o.status.success(), "restore at {at}: {}", stderr(&o));
    assert_eq!(row_count(&out), p.rows, "rows at {at}");

    // Before anything was replicated.
    let out = src.out("pit-early.db");
    let o = dest.restore(NAME, &out, &["--point-in-time", "2001-01-01T00:00:00Z"]);
    assert_eq!(code(&o), 6, "{}", stderr(&o));
    assert_nothing_left(&out);
    // Not a time at all: usage error.
    let o = dest.restore(NAME, &out, &["--point-in-time", "yesterday at noon"]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    let o = dest.restore(
        NAME,
        &out,
        &["--point-in-time", "2001-01-01T00:00:00Z", "--txid", "3"],
    );
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert_nothing_left(&out);
}

/// A small replica made by the one-shot `snapshot` command.
fn snapshot_replica() -> (Source, Dest) {
    let (src, dest) = source();
    for i in 0..50 {
        src.conn
            .execute("INSERT INTO t(body) VALUES (?1)", [vec![i as u8; 500]])
            .unwrap();
    }
    dest.snapshot(&src.db);
    (src, dest)
}

#[test]
fn existing_output_and_missing_replica() {
    let (src, dest) = snapshot_replica();
    fs::create_dir_all(src.out("")).unwrap();
    let out = src.out("taken.db");
    fs::write(&out, b"precious").unwrap();

    let o = dest.restore(NAME, &out, &[]);
    assert_eq!(code(&o), 6, "{}", stderr(&o));
    assert!(stderr(&o).contains("--force"), "{}", stderr(&o));
    assert_eq!(fs::read(&out).unwrap(), b"precious");

    let o = dest.restore(NAME, &out, &["--if-db-not-exists"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(fs::read(&out).unwrap(), b"precious");

    let o = dest.restore(NAME, &out, &["--force"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(row_count(&out), 50);

    // A name the replica does not hold.
    let missing = src.out("missing.db");
    let o = dest.restore("nope", &missing, &[]);
    assert_eq!(code(&o), 6, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("'nope'") && stderr(&o).contains("walsync list"),
        "{}",
        stderr(&o)
    );
    assert_nothing_left(&missing);
    let o = dest.restore("nope", &missing, &["--if-replica-exists"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_nothing_left(&missing);
}

/// Restores into `out` expecting an integrity failure (exit 5) whose message
/// holds every one of `words`, with nothing left behind.
fn assert_integrity_failure(dest: &Dest, out: &Path, words: &[&str]) {
    let o = dest.restore(NAME, out, &[]);
    let err = stderr(&o);
    assert_eq!(code(&o), 5, "{err}");
    for w in words {
        assert!(err.contains(w), "no '{w}' in: {err}");
    }
    assert_nothing_left(out);
}

/// Stores `original` under `key` again (without metadata); the restore then
/// succeeds with `rows`.
fn assert_restores_once_repaired(dest: &Dest, key: &str, original: &[u8], out: &Path, rows: i64) {
    put_object(
        dest.storage().as_ref(),
        key,
        original,
        &ObjectMeta::default(),
    );
    let o = dest.restore(NAME, out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(row_count(out), rows);
}

/// Stores `body` under `key` without metadata, as a file replica holds an
/// object truncated on disk (a sidecar whose size no longer matches is
/// ignored).
fn put_bare(dest: &Dest, key: &str, body: &[u8]) {
    put_object(dest.storage().as_ref(), key, body, &ObjectMeta::default());
}

#[test]
fn corrupt_objects_fail_with_integrity_errors() {
    let (src, dest) = source();
    let points = history(&src, &dest, 6, 0);
    let level0 = dest.keys_at(NAME, 0);
    assert!(level0.len() >= 4, "{level0:?}");

    // A flipped byte: the SHA-256 in the metadata catches it.
    let key = &level0[2];
    let (original, _) = flip_byte(dest.storage().as_ref(), key);
    let out = src.out("corrupt.db");
    assert_integrity_failure(&dest, &out, &[key]);

    // Without its metadata sidecar (as Litestream writes it), the LTX
    // checksums catch it.
    let sidecar = src
        .dir
        .path()
        .join("replica/.walsync-meta")
        .join(format!("{key}.json"));
    assert!(sidecar.exists(), "{}", sidecar.display());
    fs::remove_file(&sidecar).unwrap();
    assert_integrity_failure(&dest, &out, &[key]);

    // Truncated.
    put_bare(&dest, key, &original[..original.len() - 7]);
    assert_integrity_failure(&dest, &out, &[]);

    // Restored to the original bytes, it restores again.
    assert_restores_once_repaired(&dest, key, &original, &out, points.last().unwrap().rows);
}

#[test]
fn a_missing_middle_file_is_a_named_gap() {
    let (src, dest) = source();
    let points = history(&src, &dest, 6, 0);
    let level0: Vec<_> = dest
        .files(NAME)
        .into_iter()
        .filter(|f| f.id.level == 0)
        .collect();
    let victim = &level0[level0.len() / 2];
    let min = victim.id.min_txid;
    dest.storage().delete(&victim.key).unwrap();

    // A gap is damage to the replica: the integrity exit code.
    let out = src.out("gap.db");
    let o = dest.restore(NAME, &out, &[]);
    let err = stderr(&o);
    assert_eq!(code(&o), 5, "{err}");
    assert!(err.contains("gap"), "{err}");
    assert!(
        err.contains(&format!("{min:016x}")),
        "names the missing TXID: {err}"
    );
    assert_nothing_left(&out);
    // One code per condition: verify says the same of the same gap.
    let v = dest.walsync(&["verify", NAME, "-b", &dest.url]);
    assert_eq!(code(&v), 5, "{}", text(&v));

    // The state before the gap still restores.
    let before = points.iter().rev().find(|p| p.txid < min).unwrap();
    let o = dest.restore(NAME, &out, &["--txid", &before.txid.to_string()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(row_count(&out), before.rows);
}

#[test]
fn list_names_databases_with_txid_and_snapshots() {
    let (src, dest) = source();
    let url = dest.url.clone();
    // An empty replica.
    let o = dest.walsync(&["list", "-b", &url]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("no databases"));
    let o = dest.walsync(&["list", "-b", &url, "--json"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "[]");

    let points = history(&src, &dest, 3, 0);
    dest.snapshot(&src.db); // a second level-9 file
    let txid = dest.max_txid(NAME);
    assert!(txid >= points.last().unwrap().txid);
    assert_eq!(dest.keys_at(NAME, 9).len(), 2);

    let o = dest.walsync(&["list", "-b", &url]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let row = text
        .lines()
        .find(|l| l.starts_with("app "))
        .unwrap_or_else(|| panic!("no row for app:\n{text}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cols[1], format!("0x{txid:016x}"), "{text}");
    assert_eq!(cols[3], "2", "snapshots: {text}");

    let o = dest.walsync(&["list", "-b", &url, "--json"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let dbs = v.as_array().unwrap();
    assert_eq!(dbs.len(), 1, "{v}");
    let d = &dbs[0];
    assert_eq!(d["name"], "app");
    assert_eq!(d["txid"], txid);
    assert_eq!(d["txid_hex"], format!("0x{txid:016x}"));
    assert_eq!(d["snapshots"], 2);
    assert_eq!(d["files"], dest.files(NAME).len() as u64);
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
    use std::ops::RangeInclusive;
    use walsync::ltx::{db_checksum, Encoder, Header, HEADER_FLAG_NO_CHECKSUM};
    use walsync::restore::{self, RestoreOptions};
    use walsync::storage::{file::FileStorage, Layout, LtxId, Storage};

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

        /// Stores `f` (state k is TXID k+1) and returns its key.
        fn put(&self, f: Ltx) -> String {
            let (min, max) = (*f.txids.start(), *f.txids.end());
            let new = &self.states[f.to];
            let old: &[u8] = f.from.map_or(&[], |k| &self.states[k]);
            let header = Header {
                flags: if f.litestream {
                    HEADER_FLAG_NO_CHECKSUM
                } else {
                    0
                },
                page_size: PS as u32,
                commit: (new.len() / PS) as u32,
                min_txid: min,
                max_txid: max,
                timestamp_ms: 1_767_225_600_000 + max as i64 * 1000,
                pre_apply_checksum: if f.litestream || min == 1 {
                    0
                } else {
                    checksum(old)
                },
                ..Header::default()
            };
            let mut enc = Encoder::new(Vec::new(), header).unwrap();
            for (pgno, page) in pages(new) {
                let start = (pgno as usize - 1) * PS;
                if f.full || min == 1 || old.get(start..start + PS) != Some(page) {
                    enc.write_page(pgno, page).unwrap();
                }
            }
            let post = if f.litestream {
                0
            } else {
                checksum(new) ^ f.post_tweak
            };
            let (_, body) = enc.finish(post).unwrap();
            let key = key(f.level, min, max);
            let meta = ObjectMeta {
                sha256: (!f.litestream).then(|| walsync::fsutil::hex(&Sha256::digest(&body))),
                timestamp: None,
                db_checksums: None,
            };
            put_object(&self.storage, &key, &body, &meta);
            key
        }

        /// The usual chain: snapshot of state 0 at TXID 1, then one level-0
        /// file per commit (TXIDs 2..=6).
        fn chain(&self, litestream: bool) {
            self.put(Ltx::snapshot(1..=1, 0).litestream(litestream));
            for k in 1..self.states.len() {
                let t = k as u64 + 1;
                self.put(Ltx::step(0, t..=t, k - 1, k).litestream(litestream));
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
            self.storage.delete(&key(level, min, max)).unwrap();
        }
    }

    fn key(level: u32, min_txid: u64, max_txid: u64) -> String {
        let id = LtxId {
            level,
            min_txid,
            max_txid,
        };
        Layout::File.ltx_key("db", id)
    }

    /// An LTX file for [`Replica::put`]: TXIDs `txids` at `level`, taking
    /// state `from` (None: the empty database) to state `to`.
    struct Ltx {
        level: u32,
        txids: RangeInclusive<u64>,
        from: Option<usize>,
        to: usize,
        /// Every page of `to`, not only the changed ones.
        full: bool,
        /// As Litestream writes it: NoChecksum, no SHA-256 metadata.
        litestream: bool,
        /// XORed into the post-apply checksum (0: the true one).
        post_tweak: u64,
    }

    impl Ltx {
        /// A level-9 snapshot of state `to`.
        fn snapshot(txids: RangeInclusive<u64>, to: usize) -> Ltx {
            Ltx {
                level: 9,
                txids,
                from: None,
                to,
                full: false,
                litestream: false,
                post_tweak: 0,
            }
        }

        /// A file at `level` from state `from` to state `to`.
        fn step(level: u32, txids: RangeInclusive<u64>, from: usize, to: usize) -> Ltx {
            Ltx {
                level,
                from: Some(from),
                ..Ltx::snapshot(txids, to)
            }
        }

        fn full(self) -> Ltx {
            Ltx { full: true, ..self }
        }

        fn litestream(self, litestream: bool) -> Ltx {
            Ltx { litestream, ..self }
        }

        fn post_tweak(self, post_tweak: u64) -> Ltx {
            Ltx { post_tweak, ..self }
        }
    }

    #[test]
    fn every_state_restores_byte_for_byte_across_levels() {
        let r = Replica::new();
        r.chain(false);
        // Compactions: 2..=4 at level 1, and a newer snapshot at TXID 4.
        r.put(Ltx::step(1, 2..=4, 0, 3));
        r.put(Ltx::snapshot(1..=4, 3));
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
        r.put(Ltx::snapshot(1..=1, 0));
        r.put(Ltx::step(0, 2..=2, 0, 1));
        r.put(Ltx::step(0, 3..=3, 1, 2).full());
        r.put(Ltx::step(0, 4..=4, 2, 3).full()); // shrinks
        r.put(Ltx::step(0, 5..=5, 3, 4));
        let out = r.root.with_file_name("out.db");
        r.restore(&out, None).unwrap();
        assert!(fs::read(&out).unwrap() == r.states[4]);
    }

    #[test]
    fn checksums_that_do_not_match_the_rebuilt_bytes_fail() {
        let out_name = "out.db";
        // A post-apply checksum that the rebuilt bytes do not give.
        let r = Replica::new();
        r.put(Ltx::snapshot(1..=1, 0));
        let key = r.put(Ltx::step(0, 2..=2, 0, 1).post_tweak(0b10));
        let out = r.root.with_file_name(out_name);
        let e = r.restore(&out, None).unwrap_err();
        assert_eq!(e.exit_code(), 5, "{e}");
        assert!(e.message().contains("restored bytes differ"), "{e}");
        assert!(e.message().contains(&key), "{e}");
        assert_nothing_left(&out);

        // A file that starts from another state than the chain reaches:
        // TXID 3 built on state 0 instead of state 1.
        let r = Replica::new();
        r.put(Ltx::snapshot(1..=1, 0));
        r.put(Ltx::step(0, 2..=2, 0, 1));
        let key = r.put(Ltx::step(0, 3..=3, 0, 2));
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
    let (src, dest) = source();
    let points = history(&src, &dest, 3, 0);
    let snapshots = dest.keys_at(NAME, 9);
    assert_eq!(snapshots.len(), 1, "{snapshots:?}");
    let key = &snapshots[0];
    let out = src.out("snap.db");

    let (original, _) = flip_byte(dest.storage().as_ref(), key);
    assert_integrity_failure(&dest, &out, &[key, "SHA-256"]);

    put_bare(&dest, key, &original[..original.len() / 2]);
    assert_integrity_failure(&dest, &out, &[key, "truncated"]);

    assert_restores_once_repaired(&dest, key, &original, &out, points.last().unwrap().rows);
}

/// SIGINT while the snapshot is still streaming into the output stops the
/// restore with exit 1 and a message saying so, and leaves nothing behind.
#[test]
fn an_interrupted_restore_leaves_nothing() {
    let (src, dest) = source();
    let conn = &src.conn;
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
    dest.snapshot(&src.db);

    let out = src.out("interrupted.db");
    fs::create_dir_all(out.parent().unwrap()).unwrap();
    let mut child = Command::new(walsync_bin())
        .args([
            "restore",
            NAME,
            "-o",
            out.to_str().unwrap(),
            "-b",
            &dest.url,
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let tmp = src.out("interrupted.db.tmp");
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
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("interrupted"), "{err}");
    assert_nothing_left(&out);
}

/// An output that cannot be written is a local file error (exit 7) that
/// names the database, the output and the fix, and leaves nothing behind:
/// a folder where a file is, and a disk that fills up (a file size limit,
/// which fails writes as a full disk does, without needing root).
#[test]
fn an_output_that_cannot_be_written_is_a_local_error() {
    let (mut src, dest) = source();
    insert(&mut src.conn, 200, 4000, 7);
    dest.snapshot(&src.db);

    let blocker = src.out("a-file");
    fs::create_dir_all(blocker.parent().unwrap()).unwrap();
    fs::write(&blocker, b"not a folder").unwrap();
    let out = blocker.join("app.db");
    let o = dest.restore(NAME, &out, &[]);
    assert_eq!(code(&o), 7, "{}", text(&o));
    assert!(stderr(&o).contains("restoring 'app'"), "{}", text(&o));

    let out = src.out("full.db");
    let (mut cmd, _runtime) = walsync_command();
    cmd.args([
        "restore",
        NAME,
        "-o",
        out.to_str().unwrap(),
        "-b",
        &dest.url,
    ]);
    // SAFETY: between fork and exec, only async-signal-safe calls.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            let limit = libc::rlimit {
                rlim_cur: 64 * 1024,
                rlim_max: 64 * 1024,
            };
            libc::setrlimit(libc::RLIMIT_FSIZE, &limit);
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            Ok(())
        });
    }
    let o = cmd.stdin(Stdio::null()).output().unwrap();
    assert_eq!(code(&o), 7, "{}", text(&o));
    let msg = stderr(&o);
    assert!(
        msg.contains("restoring 'app'") && msg.contains("has room"),
        "{msg}"
    );
    assert_nothing_left(&out);
}
