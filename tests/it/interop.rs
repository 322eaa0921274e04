//! Interoperability with the real Litestream binary (0.5.17), both ways, on
//! a real S3 server (s3s-fs, SigV4 checked) and on folders:
//! - replicas written by `walsync watch` restore with `litestream restore`;
//! - replicas written by `litestream replicate` (levels 0, 1, 2 and 9, all
//!   NoChecksum files) restore with `walsync restore`, list and verify;
//! - migration: Litestream replicates, walsync takes over the same database
//!   and destination, and Litestream takes it back; both tools restore every
//!   recorded point byte-identically (also with both compacting);
//! - compaction and retention: replicas walsync compacted and pruned restore
//!   with Litestream (by TXID and by time), and replicas Litestream pruned
//!   restore with walsync as with Litestream.

use crate::harness::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const NAME: &str = "app";

/// A destination both tools can use.
enum Backend<'a> {
    S3(&'a S3Server, &'static str),
    File(PathBuf),
}

impl Backend<'_> {
    /// walsync's view: the replica root above the database name.
    fn dest(&self) -> Dest {
        match self {
            Backend::S3(server, bucket) => Dest::s3(server, bucket, "backups"),
            Backend::File(root) => Dest::file(root),
        }
    }

    /// Litestream's `replica:` block for database `NAME`.
    fn replica_yaml(&self) -> String {
        match self {
            Backend::S3(server, bucket) => format!(
                "    replica:\n      type: s3\n      bucket: {bucket}\n      path: backups/{NAME}\n      endpoint: {}\n      region: {}\n      access-key-id: {}\n      secret-access-key: {}\n      force-path-style: true\n      sync-interval: 100ms\n",
                server.endpoint, server.region, server.access_key, server.secret_key
            ),
            Backend::File(root) => format!(
                "    replica:\n      type: file\n      path: {}\n      sync-interval: 100ms\n",
                root.join(NAME).display()
            ),
        }
    }
}

/// A Litestream config file for `db` replicating to `backend`, with short
/// compaction levels (1: 1s, 2: 2s) and a 3s snapshot interval.
fn write_config(dir: &Path, db: &Path, backend: &Backend) -> PathBuf {
    let path = dir.join("litestream.yml");
    let yaml = format!(
        "levels:\n  - interval: 1s\n  - interval: 2s\nsnapshot:\n  interval: 3s\ndbs:\n  - path: {}\n    monitor-interval: 50ms\n{}",
        db.display(),
        backend.replica_yaml()
    );
    std::fs::write(&path, yaml).expect("write litestream.yml");
    path
}

fn litestream(args: &[&str]) -> Command {
    let mut cmd = Command::new(litestream_bin());
    // A CA bundle variable makes Litestream's S3 client fail at start.
    cmd.env_remove("AWS_CA_BUNDLE").args(args);
    cmd.stdin(Stdio::null());
    cmd
}

/// A running `litestream replicate`, stopped with SIGTERM.
struct Litestream {
    child: Option<Child>,
}

impl Litestream {
    fn start(config: &Path) -> Litestream {
        let child = litestream(&["replicate", "-config", config.to_str().unwrap()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start litestream replicate");
        Litestream { child: Some(child) }
    }

    fn stop(mut self) {
        let mut child = self.child.take().unwrap();
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let out = child.wait_with_output().unwrap();
                panic!(
                    "litestream did not stop within 30s: {}",
                    String::from_utf8_lossy(&out.stdout)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output().unwrap();
        // Litestream exits 0 on SIGTERM; anything it logged as an error is
        // a failure of the test setup.
        let log = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            !log.contains("level=ERROR"),
            "litestream logged errors:\n{log}"
        );
    }
}

impl Drop for Litestream {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `litestream restore -config C [-txid T] -o OUT DB`.
fn ls_restore(config: &Path, db: &Path, out: &Path, txid: Option<u64>) -> Output {
    let txid_arg = txid.map(|t| format!("{t:016x}"));
    let mut args = vec!["restore", "-config", config.to_str().unwrap()];
    if let Some(t) = &txid_arg {
        args.extend_from_slice(&["-txid", t]);
    }
    args.extend_from_slice(&["-o", out.to_str().unwrap(), db.to_str().unwrap()]);
    litestream(&args).output().expect("run litestream restore")
}

fn must(out: Output, what: &str) -> Output {
    assert!(out.status.success(), "{what}: {}", text(&out));
    out
}

/// Copies the source's bytes (after a TRUNCATE checkpoint) as the state to
/// compare restores with; nothing may be replicating it at the time.
fn capture(source: &Path, to: &Path) {
    checkpoint_truncate(source);
    std::fs::copy(source, to).expect("copy source");
}

/// The source's state while walsync holds its read transaction (which a
/// TRUNCATE checkpoint would wait for): copies the database and its WAL
/// (the test's writer is idle) and checkpoints the copy.
fn capture_live(source: &Path, to: &Path) {
    std::fs::copy(source, to).expect("copy source");
    let mut wal = source.as_os_str().to_owned();
    wal.push("-wal");
    let mut to_wal = to.as_os_str().to_owned();
    to_wal.push("-wal");
    if Path::new(&wal).exists() {
        std::fs::copy(&wal, &to_wal).expect("copy WAL");
    }
    checkpoint_truncate(to);
    let _ = std::fs::remove_file(&to_wal);
}

/// Restores `txid` (or the latest) with both tools and checks both equal
/// `expected` byte for byte.
fn both_restore_equal(
    dest: &Dest,
    config: &Path,
    db: &Path,
    txid: Option<u64>,
    expected: &Path,
    dir: &Path,
) {
    let tag = txid.map_or("latest".to_string(), |t| t.to_string());
    let w = dir.join(format!("w-{tag}.db"));
    let l = dir.join(format!("l-{tag}.db"));
    let _ = std::fs::remove_file(&w);
    let _ = std::fs::remove_file(&l);
    let t = txid.map(|t| t.to_string());
    let extra: Vec<&str> = match &t {
        Some(t) => vec!["--txid", t],
        None => vec![],
    };
    must(
        dest.restore(NAME, &w, &extra),
        &format!("walsync restore {tag}"),
    );
    must(
        ls_restore(config, db, &l, txid),
        &format!("litestream restore {tag}"),
    );
    assert_same_bytes(expected, &w);
    assert_same_bytes(expected, &l);
}

fn write_for(conn: &mut rusqlite::Connection, dur: Duration, seed: u64) -> u64 {
    let end = Instant::now() + dur;
    let mut n = 0;
    while Instant::now() < end {
        insert(
            conn,
            1 + (n % 3) as usize,
            300 + (n % 7) as usize * 200,
            seed + n,
        );
        n += 1;
        std::thread::sleep(Duration::from_millis(60));
    }
    n
}

/// States of the source database at TXIDs the replica reached, kept as
/// copies, and finally its latest state: both tools must restore each.
struct States<'a> {
    db: &'a Path,
    dir: &'a Path,
    at: Vec<(u64, PathBuf)>,
}

impl<'a> States<'a> {
    fn new(db: &'a Path, dir: &'a Path) -> Self {
        States {
            db,
            dir,
            at: Vec::new(),
        }
    }

    /// Copies the live database as the state at the replica's TXID.
    fn record(&mut self, dest: &Dest) {
        let t = dest.max_txid(NAME);
        let copy = self.dir.join(format!("state-{t}.db"));
        capture_live(self.db, &copy);
        self.at.push((t, copy));
    }

    /// With the application closed: the latest state and every recorded
    /// one restore equal with walsync and with Litestream.
    fn all_restore_equal(&self, dest: &Dest, config: &Path) {
        let latest = self.dir.join("state-latest.db");
        capture(self.db, &latest);
        both_restore_equal(dest, config, self.db, None, &latest, self.dir);
        for (t, copy) in &self.at {
            both_restore_equal(dest, config, self.db, Some(*t), copy, self.dir);
        }
    }
}

// ---------------------------------------------------------------------------
// walsync -> Litestream

fn walsync_to_litestream(backend: Backend, dir: &Path) {
    let dest = backend.dest();
    let db = dir.join("src").join(format!("{NAME}.db"));
    let mut conn = create_db(&db, 4096);
    let config = write_config(dir, &db, &backend);
    let w = dest.watch(&[&db], &["--sync-interval", "50ms"]);
    dest.wait_for_txid(NAME, 1, Duration::from_secs(30));
    let mut states = States::new(&db, dir);
    for round in 0..3u64 {
        for i in 0..4u64 {
            let want = dest.max_txid(NAME) + 1;
            insert(&mut conn, 2, 900, round * 1000 + i * 10);
            dest.wait_for_txid(NAME, want, Duration::from_secs(30));
        }
        states.record(&dest);
    }
    insert(&mut conn, 5, 2000, 99);
    w.stop_clean();
    drop(conn);
    states.all_restore_equal(&dest, &config);
}

#[test]
fn walsync_replica_restores_with_litestream_s3() {
    let server = S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    walsync_to_litestream(Backend::S3(&server, "w2l"), dir.path());
}

#[test]
fn walsync_replica_restores_with_litestream_file() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("replica");
    walsync_to_litestream(Backend::File(root), dir.path());
}

/// walsync's answers to a WAL it cannot follow, read by Litestream: a diff
/// after the application restarted the WAL while walsync was down, and a
/// marked full copy after the database file was replaced.
fn walsync_diffs_and_full_copies_to_litestream(backend: Backend, dir: &Path) {
    let dest = backend.dest();
    let db = dir.join("src").join(format!("{NAME}.db"));
    let mut conn = create_db(&db, 4096);
    let config = write_config(dir, &db, &backend);
    let watch = || dest.watch(&[&db], &["--sync-interval", "50ms"]);
    let mut states = States::new(&db, dir);
    let w = watch();
    dest.wait_for_txid(NAME, 1, Duration::from_secs(30));
    write_for(&mut conn, Duration::from_millis(600), 1);
    std::thread::sleep(Duration::from_millis(300));
    w.stop_clean();
    states.record(&dest);
    // While walsync is down the application writes and restarts the WAL.
    write_for(&mut conn, Duration::from_millis(300), 100);
    checkpoint_truncate(&db);
    let before = dest.max_txid(NAME);
    let w = watch();
    dest.wait_for_txid(NAME, before + 1, Duration::from_secs(30));
    states.record(&dest);
    // The file is replaced while walsync runs.
    let bak = dir.join("src").join("copy.db");
    conn.execute("VACUUM INTO ?1", [bak.to_str().unwrap()])
        .unwrap();
    drop(conn);
    std::fs::rename(&bak, &db).unwrap();
    remove_if_exists(&dir.join("src").join(format!("{NAME}.db-wal")));
    remove_if_exists(&dir.join("src").join(format!("{NAME}.db-shm")));
    let mut conn = create_db(&db, 4096);
    let before = dest.max_txid(NAME);
    dest.wait_for_txid(NAME, before + 1, Duration::from_secs(30));
    write_for(&mut conn, Duration::from_millis(400), 200);
    std::thread::sleep(Duration::from_millis(300));
    let (code, err) = w.stop();
    assert_eq!(code, 0, "watch: {err}");
    assert!(
        err.contains("changed pages") || err.contains("nothing to ship"),
        "{err}"
    );
    assert!(err.contains("full copy"), "{err}");
    assert!(
        dest.files(NAME).iter().any(|f| f.id.level == 0 && f.image),
        "the full copy is marked"
    );
    drop(conn);
    states.all_restore_equal(&dest, &config);
}

#[test]
fn walsync_diffs_and_full_copies_restore_with_litestream_s3() {
    let server = S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    walsync_diffs_and_full_copies_to_litestream(Backend::S3(&server, "w2ld"), dir.path());
}

#[test]
fn walsync_diffs_and_full_copies_restore_with_litestream_file() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("replica");
    walsync_diffs_and_full_copies_to_litestream(Backend::File(root), dir.path());
}

// ---------------------------------------------------------------------------
// Litestream -> walsync

fn litestream_to_walsync(backend: Backend, dir: &Path) {
    let dest = backend.dest();
    let db = dir.join("src").join(format!("{NAME}.db"));
    let mut conn = create_db(&db, 4096);
    let config = write_config(dir, &db, &backend);
    let ls = Litestream::start(&config);
    let t0 = walsync::fsutil::now_ms();
    // Long enough for two level-1 and level-2 rounds and a second snapshot.
    write_for(&mut conn, Duration::from_millis(7500), 1);
    let mid_ms = t0 + 4000;
    std::thread::sleep(Duration::from_millis(2500));
    ls.stop();
    drop(conn);

    let files = dest.files(NAME);
    for level in [0, 1, 2, 9] {
        assert!(
            files.iter().any(|f| f.id.level == level),
            "Litestream wrote no level-{level} file: {:?}",
            files.iter().map(|f| &f.key).collect::<Vec<_>>()
        );
    }
    let latest = dest.max_txid(NAME);

    // list and verify read it.
    let out = must(dest.walsync(&["list", "-b", &dest.url]), "walsync list");
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        listing.contains(NAME) && listing.contains(&format!("{latest:016x}")),
        "{listing}"
    );
    let out = must(
        dest.walsync(&["verify", NAME, "-b", &dest.url]),
        "walsync verify of a Litestream replica",
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("app: ok"));

    // Latest: walsync's restore equals Litestream's and the source.
    let l = dir.join("l-latest.db");
    must(ls_restore(&config, &db, &l, None), "litestream restore");
    let w = dir.join("w-latest.db");
    must(dest.restore(NAME, &w, &[]), "walsync restore");
    assert_same_bytes(&l, &w);
    assert_eq!(row_count(&w), row_count(&db));
    integrity_ok(&w);

    // Every TXID at which some file ends (L0, L1, L2 and L9 boundaries),
    // sampled, plus the ones only a compacted file reaches.
    let mut points: Vec<u64> = files.iter().map(|f| f.id.max_txid).collect();
    points.sort_unstable();
    points.dedup();
    let step = (points.len() / 12).max(1);
    let mut sample: Vec<u64> = points.iter().copied().step_by(step).collect();
    for f in files.iter().filter(|f| f.id.level == 1 || f.id.level == 2) {
        sample.push(f.id.max_txid);
    }
    sample.sort_unstable();
    sample.dedup();
    for t in sample {
        let w = dir.join(format!("w-{t}.db"));
        let l = dir.join(format!("l-{t}.db"));
        let ls_out = ls_restore(&config, &db, &l, Some(t));
        let ws_out = dest.restore(NAME, &w, &["--txid", &t.to_string()]);
        assert!(
            ls_out.status.success(),
            "litestream restore -txid {t}: {}",
            text(&ls_out)
        );
        assert!(
            ws_out.status.success(),
            "walsync restore --txid {t}: {}",
            text(&ws_out)
        );
        assert_same_bytes(&l, &w);
    }

    // Point in time: the TXID walsync picks restores to what Litestream
    // gives for that TXID.
    let at = walsync::fsutil::rfc3339_ms(mid_ms);
    let w = dir.join("w-pit.db");
    let out = must(
        dest.restore(NAME, &w, &["--point-in-time", &at]),
        "walsync restore --point-in-time",
    );
    let err = String::from_utf8_lossy(&out.stderr);
    let hex = err
        .split("to TXID 0x")
        .nth(1)
        .and_then(|s| s.get(..16))
        .unwrap_or_else(|| panic!("no TXID in {err}"));
    let t = u64::from_str_radix(hex, 16).unwrap();
    assert!(
        t > 1 && t < latest,
        "point in time {at} gave TXID {t} of {latest}"
    );
    let l = dir.join("l-pit.db");
    must(
        ls_restore(&config, &db, &l, Some(t)),
        "litestream restore pit",
    );
    assert_same_bytes(&l, &w);
}

#[test]
fn litestream_replica_restores_with_walsync_s3() {
    let server = S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    litestream_to_walsync(Backend::S3(&server, "l2w"), dir.path());
}

#[test]
fn litestream_replica_restores_with_walsync_file() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("replica");
    litestream_to_walsync(Backend::File(root), dir.path());
}

// ---------------------------------------------------------------------------
// Migration

/// How walsync runs in the middle of a migration.
#[derive(Clone, Copy, PartialEq, Eq)]
enum WalsyncSide {
    /// Keeps every file.
    Plain,
    /// Compacts and applies a 60 s window while it replicates.
    Compacting,
}

fn migration(backend: Backend, dir: &Path) {
    migrate(backend, dir, WalsyncSide::Plain);
}

fn migrate(backend: Backend, dir: &Path, side: WalsyncSide) {
    let dest = backend.dest();
    let db = dir.join("src").join(format!("{NAME}.db"));
    let config = write_config(dir, &db, &backend);
    let retention = walsync_retention_config(
        dir,
        &dest,
        "pitr_window = \"60s\"\nl0_retention = \"1s\"\ncompaction_levels = [\"1s\", \"2s\"]",
    );
    let mut walsync_args = vec!["--sync-interval", "50ms"];
    if side == WalsyncSide::Compacting {
        walsync_args.extend(["--config", retention.to_str().unwrap()]);
    }
    let mut conn = create_db(&db, 4096);

    // 1. Litestream replicates for a while.
    let ls = Litestream::start(&config);
    write_for(&mut conn, Duration::from_millis(3500), 10);
    std::thread::sleep(Duration::from_millis(500));
    ls.stop();
    let ta = dest.max_txid(NAME);
    let state_a = dir.join("state-a.db");
    capture(&db, &state_a);

    // 2. walsync takes over the same database and destination; the writer
    //    carries on (same connection, as an application would).
    let w = dest.watch(&[&db], &walsync_args);
    dest.wait_for_txid(NAME, ta + 1, Duration::from_secs(30));
    write_for(&mut conn, Duration::from_millis(1500), 20);
    if side == WalsyncSide::Compacting {
        // Its compactor merges what Litestream and it wrote at level 0.
        write_for(&mut conn, Duration::from_millis(2000), 25);
        let (status, log) = w.stop();
        assert_eq!(status, 0, "{log}");
        assert!(log.contains("compacted"), "walsync compacted:\n{log}");
    } else {
        w.stop_clean();
    }
    let tb = dest.max_txid(NAME);
    assert!(tb > ta + 1, "walsync shipped the new writes ({ta} -> {tb})");
    let state_b = dir.join("state-b.db");
    capture(&db, &state_b);
    let out = must(
        dest.walsync(&["verify", NAME, "-b", &dest.url]),
        "verify after the switch",
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("app: ok"));

    both_restore_equal(&dest, &config, &db, Some(ta), &state_a, dir);
    both_restore_equal(&dest, &config, &db, Some(tb), &state_b, dir);

    // 3. The way back: Litestream replicates again.
    let ls = Litestream::start(&config);
    write_for(&mut conn, Duration::from_millis(2000), 30);
    std::thread::sleep(Duration::from_millis(500));
    ls.stop();
    drop(conn);
    let tc = dest.max_txid(NAME);
    assert!(tc > tb, "Litestream shipped the new writes ({tb} -> {tc})");
    let state_c = dir.join("state-c.db");
    capture(&db, &state_c);
    both_restore_equal(&dest, &config, &db, None, &state_c, dir);
    both_restore_equal(&dest, &config, &db, Some(ta), &state_a, dir);
    both_restore_equal(&dest, &config, &db, Some(tb), &state_b, dir);
    if side == WalsyncSide::Compacting {
        // Litestream carried walsync's levels on: its level-1 files after tb
        // chain on from walsync's.
        let l1_after_tb = dest
            .files(NAME)
            .iter()
            .filter(|f| f.id.level == 1 && f.id.max_txid > tb)
            .count();
        assert!(l1_after_tb >= 1, "Litestream compacted after taking back");
        let out = must(
            dest.walsync(&["verify", NAME, "-b", &dest.url]),
            "verify after compaction on both sides",
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("app: ok"));
    }
}

#[test]
fn migration_litestream_to_walsync_and_back_s3() {
    let server = S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    migration(Backend::S3(&server, "migrate"), dir.path());
}

#[test]
fn migration_with_compaction_on_both_sides_s3() {
    let server = S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    migrate(
        Backend::S3(&server, "migratec"),
        dir.path(),
        WalsyncSide::Compacting,
    );
}

#[test]
fn migration_with_compaction_on_both_sides_file() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("replica");
    migrate(Backend::File(root), dir.path(), WalsyncSide::Compacting);
}

#[test]
fn migration_litestream_to_walsync_and_back_file() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("replica");
    migration(Backend::File(root), dir.path());
}

// ---------------------------------------------------------------------------
// Compaction and retention on both sides

/// A walsync config with `[retention]` for `backend`'s replica root.
fn walsync_retention_config(dir: &Path, dest: &Dest, retention: &str) -> PathBuf {
    let path = dir.join("walsync.toml");
    std::fs::write(
        &path,
        format!(
            "[s3]\nbucket = \"{}\"\n[retention]\n{retention}\n",
            dest.url
        ),
    )
    .expect("write walsync.toml");
    path
}

/// Litestream's config of [`write_config`] with its retention turned
/// short: level 0 kept 1 s after compaction, snapshots every 2 s, kept 4 s.
fn write_pruning_config(dir: &Path, db: &Path, backend: &Backend) -> PathBuf {
    let path = dir.join("litestream-pruning.yml");
    let yaml = format!(
        "levels:\n  - interval: 1s\n  - interval: 2s\nl0-retention: 1s\nl0-retention-check-interval: 500ms\nsnapshot:\n  interval: 2s\n  retention: 4s\ndbs:\n  - path: {}\n    monitor-interval: 50ms\n{}",
        db.display(),
        backend.replica_yaml()
    );
    std::fs::write(&path, yaml).expect("write litestream-pruning.yml");
    path
}

/// `litestream restore -config C -timestamp T -o OUT DB`.
fn ls_restore_at(config: &Path, db: &Path, out: &Path, at: &str) -> Output {
    let args = [
        "restore",
        "-config",
        config.to_str().unwrap(),
        "-timestamp",
        at,
        "-o",
        out.to_str().unwrap(),
        db.to_str().unwrap(),
    ];
    litestream(&args).output().expect("run litestream restore")
}

/// walsync compacts and prunes while it replicates (a 6 s window); then
/// Litestream restores the latest state, every recorded TXID inside the
/// window and a time inside it, each equal to walsync's restore.
fn walsync_compacted_to_litestream(backend: Backend, dir: &Path) {
    let dest = backend.dest();
    let db = dir.join("src").join(format!("{NAME}.db"));
    let mut conn = create_db(&db, 4096);
    let config = write_config(dir, &db, &backend);
    let cfg = walsync_retention_config(
        dir,
        &dest,
        "pitr_window = \"6s\"\nl0_retention = \"1s\"\ncompaction_levels = [\"1s\", \"2s\"]\nsnapshot_retention = \"3s\"",
    );
    let w = dest.watch(
        &[&db],
        &[
            "--config",
            cfg.to_str().unwrap(),
            "--sync-interval",
            "50ms",
            "--snapshot-interval",
            "2s",
        ],
    );
    dest.wait_for_txid(NAME, 1, Duration::from_secs(30));
    let mut states = States::new(&db, dir);
    let started = Instant::now();
    let mut round = 0u64;
    while started.elapsed() < Duration::from_secs(12) {
        round += 1;
        let want = dest.max_txid(NAME) + 1;
        insert(&mut conn, 2, 900, round * 10);
        dest.wait_for_txid(NAME, want, Duration::from_secs(30));
        // The states of the last 4 s are inside the window when it stops.
        if started.elapsed() > Duration::from_secs(8) && round.is_multiple_of(3) {
            states.record(&dest);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mid_ms = walsync::fsutil::now_ms() - 2000;
    insert(&mut conn, 5, 2000, 99);
    let (status, log) = w.stop();
    assert_eq!(status, 0, "{log}");
    drop(conn);
    let files = dest.files(NAME);
    assert!(
        files.iter().all(|f| f.id.level != 0 || f.id.min_txid > 3),
        "walsync pruned the oldest level-0 files:\n{log}"
    );
    for level in [1, 2] {
        assert!(
            files.iter().any(|f| f.id.level == level),
            "a level-{level} file"
        );
    }
    assert!(states.at.len() >= 3, "{} states recorded", states.at.len());
    states.all_restore_equal(&dest, &config);

    // A time inside the window: Litestream restores what walsync does.
    let at = walsync::fsutil::rfc3339_ms(mid_ms);
    let w = dir.join("w-at.db");
    must(
        dest.restore(NAME, &w, &["--point-in-time", &at]),
        "walsync restore --point-in-time",
    );
    let l = dir.join("l-at.db");
    must(
        ls_restore_at(&config, &db, &l, &at),
        "litestream restore -timestamp",
    );
    assert_same_bytes(&w, &l);
}

#[test]
fn walsync_compacted_replica_restores_with_litestream_s3() {
    let server = S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    walsync_compacted_to_litestream(Backend::S3(&server, "wc2l"), dir.path());
}

#[test]
fn walsync_compacted_replica_restores_with_litestream_file() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("replica");
    walsync_compacted_to_litestream(Backend::File(root), dir.path());
}

/// Litestream compacts and prunes (level 0 after 1 s, snapshots after
/// 4 s); walsync lists, verifies and restores what is left, equal to
/// Litestream's own restores.
fn litestream_pruned_to_walsync(backend: Backend, dir: &Path) {
    let dest = backend.dest();
    let db = dir.join("src").join(format!("{NAME}.db"));
    let mut conn = create_db(&db, 4096);
    let config = write_pruning_config(dir, &db, &backend);
    let ls = Litestream::start(&config);
    write_for(&mut conn, Duration::from_secs(9), 1);
    std::thread::sleep(Duration::from_millis(2500));
    ls.stop();
    drop(conn);
    let files = dest.files(NAME);
    assert!(
        !files.iter().any(|f| f.id.level == 9 && f.id.max_txid == 1),
        "Litestream pruned its first snapshot: {:?}",
        files.iter().map(|f| &f.key).collect::<Vec<_>>()
    );
    let out = must(
        dest.walsync(&["verify", NAME, "-b", &dest.url]),
        "walsync verify of a pruned Litestream replica",
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("app: ok"));
    let latest = dir.join("state-latest.db");
    capture(&db, &latest);
    both_restore_equal(&dest, &config, &db, None, &latest, dir);
    // Every boundary both tools can still reach restores equal.
    let mut points: Vec<u64> = files.iter().map(|f| f.id.max_txid).collect();
    points.sort_unstable();
    points.dedup();
    let mut compared = 0;
    for t in points {
        let (w, l) = (dir.join(format!("w-{t}.db")), dir.join(format!("l-{t}.db")));
        let ls_out = ls_restore(&config, &db, &l, Some(t));
        let ws_out = dest.restore(NAME, &w, &["--txid", &t.to_string()]);
        assert_eq!(
            ls_out.status.success(),
            ws_out.status.success(),
            "TXID {t}: litestream {} / walsync {}\nfiles: {:?}",
            text(&ls_out),
            text(&ws_out),
            files.iter().map(|f| &f.key).collect::<Vec<_>>()
        );
        if ws_out.status.success() {
            assert_same_bytes(&l, &w);
            compared += 1;
        }
    }
    // Litestream may have pruned every snapshot but the latest.
    assert!(
        compared >= 1,
        "no point restores: {:?}",
        files.iter().map(|f| &f.key).collect::<Vec<_>>()
    );
}

#[test]
fn litestream_pruned_replica_restores_with_walsync_s3() {
    let server = S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    litestream_pruned_to_walsync(Backend::S3(&server, "lp2w"), dir.path());
}

#[test]
fn litestream_pruned_replica_restores_with_walsync_file() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("replica");
    litestream_pruned_to_walsync(Backend::File(root), dir.path());
}

/// `walsync replicate` follows a replica Litestream writes (NoChecksum
/// files, its compaction levels and snapshots) and ends equal to the
/// source.
#[test]
fn walsync_follows_a_replica_litestream_writes() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("replica");
    let backend = Backend::File(root);
    let dest = backend.dest();
    let db = dir.path().join("src").join(format!("{NAME}.db"));
    let mut conn = create_db(&db, 4096);
    insert_ids(&mut conn, 1..=5, 200);
    let config = write_config(dir.path(), &db, &backend);
    let ls = Litestream::start(&config);
    dest.wait_for_txid(NAME, 1, Duration::from_secs(30));
    let local = dir.path().join("read.db");
    let r = dest.replicate(NAME, &local, &["--interval", "200ms"]);
    let mut next = 6;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(6) {
        insert_ids(&mut conn, next..=next + 2, 200);
        next += 3;
        std::thread::sleep(Duration::from_millis(100));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(local.exists() && row_count(&local) == next - 1) {
        assert!(Instant::now() < deadline, "the replica did not catch up");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, log) = r.stop();
    ls.stop();
    assert_eq!(code, 0, "{log}");
    assert_eq!(rows_consistent(&local, 200), next - 1);
}
