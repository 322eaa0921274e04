//! Engine acceptance tests: the real `walsync` binary replicating real SQLite
//! databases to a real S3 server (s3s-fs, SigV4 checked), then restored.

mod common;
mod support;

use rand_free::Rng;
use std::path::Path;
use std::time::{Duration, Instant};
use support::*;

/// A tiny deterministic generator (the tests need no rand crate).
mod rand_free {
    pub struct Rng(pub u64);
    impl Rng {
        pub fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        pub fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }
}

fn stop_clean(w: Watcher) {
    let (code, err) = w.stop();
    assert_eq!(code, 0, "watch exit code; stderr:\n{err}");
}

/// Restores `name` and checks it equals the (fully checkpointed) source.
fn restore_equals_source(dest: &Dest, name: &str, source: &Path, dir: &Path) {
    let out = dir.join(format!("restored-{}.db", name.replace('/', "_")));
    let r = dest.restore(name, &out, &[]);
    assert!(r.status.success(), "restore {name}: {}", text(&r));
    checkpoint_truncate(source);
    assert_same_bytes(source, &out);
    integrity_ok(&out);
}

#[test]
fn three_databases_mixed_workload_restore_byte_identical() {
    let server = common::S3Server::start();
    let dest = Dest::s3(&server, "mixed", "backups");
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("romneys/app.db");
    let b = dir.path().join("smiths/app.db");
    let c = dir.path().join("other/big.db");
    let mut conns = vec![
        create_db(&a, 4096),
        create_db(&b, 65536),
        create_db(&c, 4096),
    ];
    let w = dest.watch(&[&a, &b, &c], &["--sync-interval", "100ms"]);

    // 1,000 transactions in all, of mixed sizes, spread over the three.
    let mut rng = Rng(7);
    for i in 0..1000u64 {
        let db = (i % 3) as usize;
        let size = match rng.below(10) {
            0 => 20_000,
            1..=3 => 2_000,
            _ => 100,
        };
        insert(&mut conns[db], 1 + rng.below(5) as usize, size, i);
        if i == 500 {
            // One 50 MB transaction.
            insert(&mut conns[2], 50, 1_000_000, 99);
        }
        if i == 700 {
            // Delete most rows, then VACUUM: the file shrinks.
            conns[2]
                .execute("DELETE FROM t WHERE id % 10 != 0", [])
                .unwrap();
            conns[2].execute_batch("VACUUM").unwrap();
        }
    }
    drop(conns);
    let names = ["romneys/app", "smiths/app", "big"];
    std::thread::sleep(Duration::from_millis(500));
    stop_clean(w);
    for (name, path) in names.iter().zip([&a, &b, &c]) {
        restore_equals_source(&dest, name, path, dir.path());
    }
}

#[test]
fn point_in_time_by_txid_and_timestamp() {
    let server = common::S3Server::start();
    let dest = Dest::s3(&server, "pitr", "p");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("pitr.db");
    let mut conn = create_db(&db, 4096);
    let w = dest.watch(&[&db], &["--sync-interval", "50ms"]);
    let mut txid = dest.wait_for_txid("pitr", 1, Duration::from_secs(20));
    let mut points = Vec::new(); // (txid, time between commits, rows)
    for i in 0..12 {
        insert(&mut conn, 1, 100, i);
        txid = dest.wait_for_txid("pitr", txid + 1, Duration::from_secs(20));
        std::thread::sleep(Duration::from_millis(60));
        let between = jiff::Timestamp::now();
        std::thread::sleep(Duration::from_millis(60));
        points.push((txid, between, i as i64 + 1));
    }
    stop_clean(w);
    for (txid, _, rows) in points.iter().step_by(2).take(5) {
        let out = dir.path().join(format!("at-{txid}.db"));
        let r = dest.restore("pitr", &out, &["--txid", &txid.to_string()]);
        assert!(r.status.success(), "{}", text(&r));
        assert_eq!(row_count(&out), *rows, "rows at TXID {txid}");
    }
    for (i, (_, at, rows)) in points.iter().skip(1).step_by(2).take(5).enumerate() {
        let out = dir.path().join(format!("time-{i}.db"));
        let r = dest.restore("pitr", &out, &["--point-in-time", &format!("{at:.9}")]);
        assert!(r.status.success(), "{}", text(&r));
        assert_eq!(row_count(&out), *rows, "rows at {at}");
    }
}

#[test]
fn kill_nine_twenty_times_resumes_without_snapshot_or_gap() {
    let server = common::S3Server::start();
    let dest = Dest::s3(&server, "kill9", "k");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("k.db");
    create_db(&db, 4096);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let db = db.clone();
        std::thread::spawn(move || {
            let mut conn = app_conn(&db);
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                insert(&mut conn, 1, 300, i);
                i += 1;
                std::thread::sleep(Duration::from_millis(3));
            }
        })
    };
    let mut rng = Rng(42);
    let first = dest.watch(&[&db], &["--sync-interval", "50ms"]);
    dest.wait_for_txid("k", 1, Duration::from_secs(20));
    first.kill9();
    for _ in 0..20 {
        let w = dest.watch(&[&db], &["--sync-interval", "50ms"]);
        std::thread::sleep(Duration::from_millis(150 + rng.below(600)));
        w.kill9();
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    writer.join().unwrap();
    let last = dest.watch(&[&db], &["--sync-interval", "50ms"]);
    std::thread::sleep(Duration::from_millis(800));
    stop_clean(last);

    let files = dest.files("k");
    let snapshots: Vec<_> = files.iter().filter(|f| f.id.level == 9).collect();
    assert_eq!(snapshots.len(), 1, "only the first snapshot: {snapshots:?}");
    let mut l0: Vec<u64> = files
        .iter()
        .filter(|f| f.id.level == 0)
        .map(|f| f.id.min_txid)
        .collect();
    l0.sort();
    let max = files.iter().map(|f| f.id.max_txid).max().unwrap();
    assert_eq!(l0, (2..=max).collect::<Vec<_>>(), "level 0 has no TXID gap");
    restore_equals_source(&dest, "k", &db, dir.path());
}

#[test]
fn application_checkpoints_lose_nothing() {
    let server = common::S3Server::start();
    let dest = Dest::s3(&server, "appckpt", "");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("a.db");
    let mut conn = create_db(&db, 4096);
    let w = dest.watch(
        &[&db],
        &["--sync-interval", "50ms", "--min-checkpoint-pages", "40"],
    );
    let started = Instant::now();
    for i in 0..600u64 {
        insert(&mut conn, 1, 1500, i);
        let mode = match i % 50 {
            10 => "TRUNCATE",
            35 => "RESTART",
            _ => continue,
        };
        // walsync's read lock makes these wait for the busy timeout and
        // report busy (nothing else): keep the wait short.
        conn.busy_timeout(Duration::from_millis(100)).unwrap();
        conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |_| Ok(()))
            .unwrap();
        conn.busy_timeout(Duration::from_secs(10)).unwrap();
    }
    drop(conn);
    assert!(started.elapsed() < Duration::from_secs(120));
    std::thread::sleep(Duration::from_millis(500));
    stop_clean(w);
    restore_equals_source(&dest, "a", &db, dir.path());
}

#[test]
fn own_checkpoints_under_a_hammering_writer() {
    let server = common::S3Server::start();
    let dest = Dest::s3(&server, "ownckpt", "x");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("h.db");
    create_db(&db, 4096);
    // PASSIVE past 30 pages, TRUNCATE past 120: both paths run many times.
    let w = dest.watch(
        &[&db],
        &[
            "--sync-interval",
            "50ms",
            "--min-checkpoint-pages",
            "30",
            "--truncate-checkpoint-pages",
            "120",
        ],
    );
    let writers: Vec<_> = (0..2)
        .map(|t| {
            let db = db.clone();
            std::thread::spawn(move || {
                let mut conn = app_conn(&db);
                // Readers of the application keep the WAL from restarting at times.
                for i in 0..700u64 {
                    insert(&mut conn, 1 + (i % 3) as usize, 3000, t * 10_000 + i);
                }
            })
        })
        .collect();
    for wr in writers {
        wr.join().unwrap();
    }
    std::thread::sleep(Duration::from_millis(600));
    let wal_len = std::fs::metadata(support::tmp_path(dir.path(), "h.db-wal"))
        .map(|m| m.len())
        .unwrap_or(0);
    stop_clean(w);
    assert!(
        wal_len < 40 * 1024 * 1024,
        "walsync's checkpoints keep the WAL bounded ({wal_len} bytes)"
    );
    restore_equals_source(&dest, "h", &db, dir.path());
}

#[test]
fn restart_after_clean_stop_resumes_without_snapshot() {
    let server = common::S3Server::start();
    let dest = Dest::s3(&server, "resume", "r");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("r.db");
    let mut conn = create_db(&db, 4096);
    let w = dest.watch(&[&db], &["--sync-interval", "50ms"]);
    dest.wait_for_txid("r", 1, Duration::from_secs(20));
    insert(&mut conn, 10, 100, 1);
    let t = dest.wait_for_txid("r", 2, Duration::from_secs(20));
    stop_clean(w);
    insert(&mut conn, 10, 100, 2);
    let w = dest.watch(&[&db], &["--sync-interval", "50ms"]);
    dest.wait_for_txid("r", t + 1, Duration::from_secs(20));
    stop_clean(w);
    let snapshots = dest.files("r").iter().filter(|f| f.id.level == 9).count();
    assert_eq!(snapshots, 1);
    drop(conn);
    restore_equals_source(&dest, "r", &db, dir.path());
}

#[test]
fn changes_checkpointed_while_walsync_was_down_are_shipped() {
    let dir = tempfile::tempdir().unwrap();
    let dest = Dest::file(&dir.path().join("replica"));
    let db = dir.path().join("down.db");
    let mut conn = create_db(&db, 4096);
    insert(&mut conn, 10, 100, 1);
    drop(conn); // the last connection checkpoints and removes the WAL
    let out = dest.walsync(&["snapshot", db.to_str().unwrap(), "-b", &dest.url]);
    assert!(out.status.success(), "{}", text(&out));
    // While walsync is not running, the app writes and closes again.
    let mut conn = app_conn(&db);
    insert(&mut conn, 50, 100, 2);
    drop(conn);
    let out = dest.walsync(&["snapshot", db.to_str().unwrap(), "-b", &dest.url]);
    assert!(out.status.success(), "{}", text(&out));
    let restored = dir.path().join("restored.db");
    let r = dest.restore("down", &restored, &[]);
    assert!(r.status.success(), "{}", text(&r));
    assert_eq!(row_count(&restored), 60);
    // And with nothing changed, a third run ships no full copy.
    let before = dest.files("down").len();
    let out = dest.walsync(&["snapshot", db.to_str().unwrap(), "-b", &dest.url]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(dest.files("down").len(), before);
}

#[test]
fn config_file_globs_and_names() {
    let server = common::S3Server::start();
    let dest = Dest::s3(&server, "cfg", "");
    let dir = tempfile::tempdir().unwrap();
    let tenants = ["acme", "globex"];
    let mut conns: Vec<_> = tenants
        .iter()
        .map(|t| create_db(&dir.path().join(t).join("app.db"), 4096))
        .collect();
    let main = dir.path().join("main.db");
    let mut main_conn = create_db(&main, 4096);
    let cfg = dir.path().join("walsync.toml");
    std::fs::write(
        &cfg,
        format!(
            "[s3]\nbucket = \"{}\"\n[sync]\nsync_interval = \"50ms\"\n\
             [[databases]]\npath = \"{}/*/app.db\"\n\
             [[databases]]\npath = \"{}\"\nname = \"primary\"\n",
            dest.url,
            dir.path().display(),
            main.display()
        ),
    )
    .unwrap();
    let w = dest.watch(&[], &["--config", cfg.to_str().unwrap()]);
    for name in ["acme/app", "globex/app", "primary"] {
        dest.wait_for_txid(name, 1, Duration::from_secs(20));
    }
    insert(&mut conns[1], 2, 100, 1);
    insert(&mut main_conn, 2, 100, 2);
    dest.wait_for_txid("globex/app", 2, Duration::from_secs(20));
    dest.wait_for_txid("primary", 2, Duration::from_secs(20));
    stop_clean(w);
    conns.clear();
    drop(main_conn);
    restore_equals_source(&dest, "primary", &main, dir.path());
    restore_equals_source(
        &dest,
        "globex/app",
        &dir.path().join("globex/app.db"),
        dir.path(),
    );
}

#[test]
fn one_failing_database_does_not_stop_the_others() {
    let server = common::S3Server::start();
    let dest = Dest::s3(&server, "isolate", "i");
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.db");
    let bad = dir.path().join("bad.db");
    let mut good_conn = create_db(&good, 4096);
    let mut bad_conn = create_db(&bad, 4096);
    let w = dest.watch(
        &[&good, &bad],
        &["--sync-interval", "50ms", "--shutdown-timeout", "2s"],
    );
    dest.wait_for_txid("good", 1, Duration::from_secs(20));
    dest.wait_for_txid("bad", 1, Duration::from_secs(20));
    // Take away bad.db's local state folder: its spool files cannot be written.
    std::fs::remove_dir_all(dir.path().join(".bad.db-walsync")).unwrap();
    std::fs::write(dir.path().join(".bad.db-walsync"), b"not a folder").unwrap();
    insert(&mut bad_conn, 1, 100, 1);
    for i in 0..5 {
        insert(&mut good_conn, 1, 100, i);
        std::thread::sleep(Duration::from_millis(100));
    }
    let t = dest.wait_for_txid("good", 6, Duration::from_secs(20));
    assert!(t >= 6);
    assert_eq!(dest.max_txid("bad"), 1, "bad.db cannot ship");
    let (code, err) = w.stop();
    // bad.db's commit could not be shipped: the stop says so (exit 1).
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("walsync: bad:"),
        "the failure is logged with the database name: {err}"
    );
    assert!(
        err.contains("before everything committed was stored"),
        "{err}"
    );
    drop(good_conn);
    restore_equals_source(&dest, "good", &good, dir.path());
}

#[test]
fn a_never_idle_database_still_gets_snapshots_and_checkpoints() {
    let server = common::S3Server::start();
    let dest = Dest::s3(&server, "busy", "b");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("busy.db");
    let mut conn = create_db(&db, 4096);
    let w = dest.watch(
        &[&db],
        &[
            "--sync-interval",
            "100ms",
            "--snapshot-interval",
            "1s",
            "--min-checkpoint-pages",
            "50",
        ],
    );
    dest.wait_for_txid("busy", 1, Duration::from_secs(20));
    let started = Instant::now();
    let mut i = 0;
    let mut biggest_wal = 0;
    while started.elapsed() < Duration::from_secs(7) {
        insert(&mut conn, 1, 3000, i); // a commit every ~10 ms: no poll finds the WAL idle
        i += 1;
        std::thread::sleep(Duration::from_millis(10));
        let wal = std::fs::metadata(dir.path().join("busy.db-wal")).map_or(0, |m| m.len());
        biggest_wal = biggest_wal.max(wal);
    }
    stop_clean(w);
    let snapshots = dest
        .files("busy")
        .iter()
        .filter(|f| f.id.level == 9)
        .count();
    assert!(
        snapshots >= 3,
        "periodic snapshots under constant writes: {snapshots}"
    );
    // 50 pages of 4 KiB plus what lands during one interval.
    assert!(
        biggest_wal < 4 * 1024 * 1024,
        "WAL grew to {biggest_wal} bytes"
    );
    drop(conn);
    restore_equals_source(&dest, "busy", &db, dir.path());
}

#[test]
fn a_signal_during_a_long_upload_still_ships_everything_committed() {
    let server = common::S3Server::start();
    let dest = Dest::s3(&server, "flush", "f");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("flush.db");
    let mut conn = create_db(&db, 4096);
    let w = dest.watch(&[&db], &["--sync-interval", "50ms"]);
    dest.wait_for_txid("flush", 1, Duration::from_secs(20));
    // A large transaction whose upload takes a while, commits behind it,
    // and the signal while it is still in flight.
    insert(&mut conn, 40, 1_000_000, 1);
    std::thread::sleep(Duration::from_millis(120));
    for i in 0..20 {
        insert(&mut conn, 1, 100, 100 + i);
    }
    stop_clean(w);
    drop(conn);
    restore_equals_source(&dest, "flush", &db, dir.path());
}

/// walsync opens the database file for snapshots. Closing such a descriptor
/// would drop every POSIX lock the process holds on the file, SQLite's
/// included, and the application's last connection to close would then
/// checkpoint and delete the WAL under walsync.
#[test]
fn application_connections_closing_after_a_snapshot_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let dest = Dest::file(&dir.path().join("replica"));
    let db = dir.path().join("locks.db");
    drop(create_db(&db, 4096));
    let w = dest.watch(
        &[&db],
        &["--sync-interval", "50ms", "--snapshot-interval", "200ms"],
    );
    dest.wait_for_txid("locks", 1, Duration::from_secs(20));
    for i in 0..6 {
        // Each round: one short-lived application connection, and a
        // periodic snapshot in between.
        let mut conn = app_conn(&db);
        insert(&mut conn, 20, 500, i);
        drop(conn);
        std::thread::sleep(Duration::from_millis(400));
        assert!(
            dir.path().join("locks.db-wal").exists(),
            "round {i}: the application deleted the WAL while walsync held it"
        );
    }
    stop_clean(w);
    restore_equals_source(&dest, "locks", &db, dir.path());
}

/// walsync's own checkpoints hold the application's writer lock only for
/// local work: on a slow store (every PUT held for 1.5 s by a relay), no
/// application commit waits for an upload, the WAL is still checkpointed
/// and restarted, and nothing is lost.
#[test]
fn own_checkpoints_do_not_hold_the_writer_lock_during_uploads() {
    let server = common::S3Server::start();
    let mut dest = Dest::s3(&server, "slowput", "s");
    let upstream = dest
        .env
        .iter()
        .find(|(k, _)| k == "AWS_ENDPOINT_URL_S3")
        .map(|(_, v)| v.clone())
        .unwrap();
    let relay = common::SlowPuts::start(&upstream, Duration::from_millis(1500));
    for (k, v) in dest.env.iter_mut() {
        if k == "AWS_ENDPOINT_URL_S3" {
            *v = relay.endpoint.clone();
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("slow.db");
    let mut conn = create_db(&db, 4096);
    // Only walsync checkpoints this database.
    conn.execute_batch("PRAGMA wal_autocheckpoint=0").unwrap();
    let w = dest.watch(
        &[&db],
        &["--sync-interval", "50ms", "--min-checkpoint-pages", "40"],
    );
    dest.wait_for_txid("slow", 1, Duration::from_secs(20));
    let wal = dir.path().join("slow.db-wal");
    let wal_salt = || {
        std::fs::read(&wal)
            .ok()
            .and_then(|b| b.get(16..20).map(|s| s.to_vec()))
    };
    let first_salt = wal_salt();
    let mut slowest = Duration::ZERO;
    let mut restarts = 0;
    let mut salt = first_salt.clone();
    let started = Instant::now();
    let mut i = 0;
    while started.elapsed() < Duration::from_secs(8) {
        let t0 = Instant::now();
        insert(&mut conn, 4, 3000, i);
        slowest = slowest.max(t0.elapsed());
        i += 1;
        let now = wal_salt();
        if now != salt {
            restarts += 1;
            salt = now;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(restarts >= 1, "walsync's checkpoints let the WAL restart");
    assert!(
        slowest < Duration::from_millis(700),
        "an application commit waited {slowest:?}: a checkpoint held the writer lock during an upload"
    );
    drop(conn);
    stop_clean(w);
    restore_equals_source(&dest, "slow", &db, dir.path());
}

/// A state file that cannot be saved (here a folder squats on its temporary
/// name) does not stop the shipped position from following what is stored:
/// with walsync's checkpoints restarting the WAL meanwhile, nothing is
/// shipped twice under one TXID and nothing is lost.
#[test]
fn an_unsavable_state_file_loses_nothing() {
    let server = common::S3Server::start();
    let dest = Dest::s3(&server, "nostate", "n");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("n.db");
    let mut conn = create_db(&db, 4096);
    conn.execute_batch("PRAGMA wal_autocheckpoint=0").unwrap();
    let w = dest.watch(
        &[&db],
        &["--sync-interval", "50ms", "--min-checkpoint-pages", "40"],
    );
    dest.wait_for_txid("n", 1, Duration::from_secs(20));
    // The folder comes and goes, so some saves fail, among them some right
    // after a checkpoint, while others succeed and let checkpoints happen.
    let squatter = dir.path().join(".n.db-walsync").join(".state.json.tmp");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let toggler = {
        let stop = stop.clone();
        let squatter = squatter.clone();
        std::thread::spawn(move || {
            let mut rng = Rng(7);
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let _ = std::fs::create_dir(&squatter);
                std::thread::sleep(Duration::from_millis(20 + rng.below(80)));
                let _ = std::fs::remove_dir(&squatter);
                std::thread::sleep(Duration::from_millis(20 + rng.below(80)));
            }
        })
    };
    let started = Instant::now();
    let mut i = 0;
    while started.elapsed() < Duration::from_secs(6) {
        insert(&mut conn, 4, 3000, i);
        i += 1;
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    toggler.join().unwrap();
    for j in 0..20 {
        insert(&mut conn, 1, 3000, 1_000_000 + j);
    }
    drop(conn);
    std::thread::sleep(Duration::from_millis(300));
    stop_clean(w);
    restore_equals_source(&dest, "n", &db, dir.path());
}
