//! Engine acceptance tests: the real `walsync` binary replicating real SQLite
//! databases to a real S3 server (s3s-fs, SigV4 checked), then restored.

use crate::harness::*;
use std::path::Path;
use std::time::{Duration, Instant};

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
    let server = S3Server::start();
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
    let mut rng = Rng::new(7);
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
    w.stop_clean();
    for (name, path) in names.iter().zip([&a, &b, &c]) {
        restore_equals_source(&dest, name, path, dir.path());
    }
}

#[test]
fn point_in_time_by_txid_and_timestamp() {
    let server = S3Server::start();
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
    w.stop_clean();
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
    let server = S3Server::start();
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
    let mut rng = Rng::new(42);
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
    last.stop_clean();

    let files = dest.files("k");
    let snapshots: Vec<_> = files.iter().filter(|f| f.id.level == 9).collect();
    assert_eq!(
        snapshots.len(),
        1,
        "only the first snapshot: {snapshots:?}\nall: {:?}",
        files
            .iter()
            .map(|f| (f.id.level, f.id.min_txid, f.id.max_txid, f.image))
            .collect::<Vec<_>>()
    );
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

/// An application's `PRAGMA wal_checkpoint(MODE)` (RESTART or TRUNCATE)
/// while walsync watches the database. walsync's read transaction makes it
/// wait for the busy timeout (kept short) and report busy, having
/// backfilled at most the frames below walsync's read mark; when walsync's
/// reader had no frames to protect (at start, or right after walsync's own
/// checkpoint), it completes: every frame backfilled, and with TRUNCATE the
/// WAL emptied. Returns whether it was held off.
fn app_checkpoint(conn: &rusqlite::Connection, mode: &str) -> bool {
    conn.busy_timeout(Duration::from_millis(100)).unwrap();
    let (busy, log, checkpointed) = wal_checkpoint(conn, mode);
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    let got = format!("{mode}: busy {busy}, log {log}, checkpointed {checkpointed}");
    match busy {
        0 => {
            assert_eq!(checkpointed, log, "a completed {got}");
            if mode == "TRUNCATE" {
                assert_eq!(log, 0, "a completed {got}");
            }
            false
        }
        1 => {
            assert!(
                log > 0 && (0..=log).contains(&checkpointed),
                "a held-off {got}"
            );
            true
        }
        _ => panic!("{got}"),
    }
}

#[test]
fn application_checkpoints_lose_nothing() {
    let server = S3Server::start();
    let dest = Dest::s3(&server, "appckpt", "");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("a.db");
    let mut conn = create_db(&db, 4096);
    let w = dest.watch(
        &[&db],
        &["--sync-interval", "50ms", "--min-checkpoint-pages", "40"],
    );
    let started = Instant::now();
    let (mut checkpoints, mut held_off) = (0, 0);
    for i in 0..600u64 {
        insert(&mut conn, 1, 1500, i);
        let mode = match i % 50 {
            10 => "TRUNCATE",
            35 => "RESTART",
            _ => continue,
        };
        held_off += usize::from(app_checkpoint(&conn, mode));
        checkpoints += 1;
    }
    assert!(
        held_off > 0,
        "none of the {checkpoints} application checkpoints met walsync's read transaction"
    );
    drop(conn);
    assert!(started.elapsed() < Duration::from_secs(120));
    std::thread::sleep(Duration::from_millis(500));
    w.stop_clean();
    restore_equals_source(&dest, "a", &db, dir.path());
}

#[test]
fn own_checkpoints_under_a_hammering_writer() {
    let server = S3Server::start();
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
    let wal_len = std::fs::metadata(dir.path().join("h.db-wal"))
        .map(|m| m.len())
        .unwrap_or(0);
    w.stop_clean();
    assert!(
        wal_len < 40 * 1024 * 1024,
        "walsync's checkpoints keep the WAL bounded ({wal_len} bytes)"
    );
    restore_equals_source(&dest, "h", &db, dir.path());
}

#[test]
fn restart_after_clean_stop_resumes_without_snapshot() {
    let server = S3Server::start();
    let dest = Dest::s3(&server, "resume", "r");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("r.db");
    let mut conn = create_db(&db, 4096);
    let w = dest.watch(&[&db], &["--sync-interval", "50ms"]);
    dest.wait_for_txid("r", 1, Duration::from_secs(20));
    insert(&mut conn, 10, 100, 1);
    let t = dest.wait_for_txid("r", 2, Duration::from_secs(20));
    w.stop_clean();
    insert(&mut conn, 10, 100, 2);
    let w = dest.watch(&[&db], &["--sync-interval", "50ms"]);
    dest.wait_for_txid("r", t + 1, Duration::from_secs(20));
    w.stop_clean();
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
    let server = S3Server::start();
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
    w.stop_clean();
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
    let server = S3Server::start();
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
    let server = S3Server::start();
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
    w.stop_clean();
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

/// SIGINT while a large upload is held up by a slow store (a relay holds
/// every PUT for a second): the upload in flight and the commits behind it
/// are all stored before the clean exit.
#[test]
fn a_signal_during_a_long_upload_still_ships_everything_committed() {
    let server = S3Server::start();
    let relay = Relay::start(&server.endpoint, |_, method| match method {
        "PUT" => Action::Delay(Duration::from_secs(1)),
        _ => Action::Forward,
    });
    let dest = Dest::s3(&server, "flush", "f").via(&relay);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("flush.db");
    let mut conn = create_db(&db, 4096);
    let w = dest.watch(&[&db], &["--sync-interval", "50ms"]);
    dest.wait_for_txid("flush", 1, Duration::from_secs(20));
    // A large transaction (40 MB) whose upload takes a while, commits
    // behind it, and the signal while its PUT is still held.
    const BIG: u64 = 30_000_000;
    insert(&mut conn, 40, 1_000_000, 1);
    let is_big = |r: &Request| r.method == "PUT" && r.len > BIG;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !relay.requests().iter().any(is_big) {
        assert!(Instant::now() < deadline, "the large upload never started");
        std::thread::sleep(Duration::from_millis(5));
    }
    for i in 0..20 {
        insert(&mut conn, 1, 100, 100 + i);
    }
    let before = Instant::now();
    w.interrupt();
    let after = Instant::now();
    let (code, err) = w.wait();
    assert_eq!(code, 0, "watch exit code; stderr:\n{err}");
    let requests = relay.requests();
    let big = requests.iter().find(|r| is_big(r)).unwrap();
    assert!(
        big.held_during(before, after),
        "the large upload was in flight when the signal came: {big:?}, signal {:?} after its arrival",
        before - big.arrived
    );
    assert!(
        requests
            .iter()
            .any(|r| r.method == "PUT" && r.arrived > after),
        "the commits behind it were shipped after the signal"
    );
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
    w.stop_clean();
    restore_equals_source(&dest, "locks", &db, dir.path());
}

/// walsync's own checkpoints hold the application's writer lock only for
/// local work: on a slow store (every PUT held for 1.5 s by a relay), no
/// application commit waits for an upload, the WAL is still checkpointed
/// and restarted, and nothing is lost.
#[test]
fn own_checkpoints_do_not_hold_the_writer_lock_during_uploads() {
    let server = S3Server::start();
    let relay = Relay::start(&server.endpoint, |_, method| match method {
        "PUT" => Action::Delay(Duration::from_millis(1500)),
        _ => Action::Forward,
    });
    let dest = Dest::s3(&server, "slowput", "s").via(&relay);
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
    w.stop_clean();
    restore_equals_source(&dest, "slow", &db, dir.path());
}

/// A state file that cannot be saved (here a folder squats on its temporary
/// name) does not stop the shipped position from following what is stored:
/// with walsync's checkpoints restarting the WAL meanwhile, nothing is
/// shipped twice under one TXID and nothing is lost.
#[test]
fn an_unsavable_state_file_loses_nothing() {
    let server = S3Server::start();
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
            let mut rng = Rng::new(7);
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
    w.stop_clean();
    restore_equals_source(&dest, "n", &db, dir.path());
}

/// How a test application replaces its database file under `watch`.
#[derive(Clone, Copy, Debug)]
struct Swap {
    /// Remove `-wal` and `-shm` along with the rename.
    delete_wal: bool,
    /// Run `PRAGMA wal_checkpoint(TRUNCATE)` between the commits after it.
    app_checkpoints: bool,
}

const ROW: usize = 300;

/// The reproduction of a database replaced under `watch`: the application
/// writes, runs `VACUUM INTO 'app.db.bak'`, closes, renames the copy over
/// `app.db` (removing `-wal`/`-shm` or not), reopens and commits 40 rows.
/// Every TXID stored from the swap on must restore to a state the
/// application committed, and the latest to the source's rows.
fn replaced_database(dest: &Dest, dir: &Path, swap: Swap) {
    let db = dir.join("app.db");
    let mut conn = create_db(&db, 4096);
    // Rows of a second table between the rows of `t`, deleted before the
    // VACUUM: the copy then lays `t` out on other pages than the original.
    conn.execute_batch("CREATE TABLE junk(x BLOB)").unwrap();
    for k in 0..20 {
        insert_ids(&mut conn, k * 10 + 1..=k * 10 + 10, ROW);
        conn.execute("INSERT INTO junk(x) VALUES (?1)", [noise(5000, k as u64)])
            .unwrap();
    }
    let w = dest.watch(&[&db], &["--sync-interval", "100ms"]);
    let first = dest.wait_for_txid("app", 1, Duration::from_secs(20));
    insert_ids(&mut conn, 201..=210, ROW);
    let before_swap = dest.wait_for_txid("app", first + 1, Duration::from_secs(20));

    insert_ids(&mut conn, 211..=211, ROW);
    conn.execute_batch("DELETE FROM junk").unwrap();
    let bak = dir.join("app.db.bak");
    conn.execute("VACUUM INTO ?1", [bak.to_str().unwrap()])
        .expect("VACUUM INTO");
    drop(conn);
    std::fs::rename(&bak, &db).expect("rename the copy over the database");
    if swap.delete_wal {
        remove_if_exists(&dir.join("app.db-wal"));
        remove_if_exists(&dir.join("app.db-shm"));
    } else {
        // Reopening at once onto a kept WAL that another connection holds
        // is SQLite's documented way to corrupt a database; walsync lets go
        // of the old file at its next poll.
        std::thread::sleep(Duration::from_secs(1));
    }
    let mut conn = create_db(&db, 4096);
    let mut held_off = 0;
    for chunk in 0..4 {
        let from = 212 + 10 * chunk;
        insert_ids(&mut conn, from..=from + 9, ROW);
        if swap.app_checkpoints {
            held_off += usize::from(app_checkpoint(&conn, "TRUNCATE"));
        }
        std::thread::sleep(Duration::from_millis(150));
    }
    if swap.app_checkpoints {
        assert!(
            held_off > 0,
            "walsync was reading the new file when the application checkpointed it"
        );
    }
    assert_eq!(
        rows_consistent(&db, ROW),
        251,
        "the application's own database"
    );
    std::thread::sleep(Duration::from_millis(500));
    let (code, err) = w.stop();
    assert_eq!(code, 0, "watch exit code; stderr:\n{err}");
    let latest = dest.max_txid("app");
    assert!(latest > before_swap, "nothing stored after the swap");
    let mut last_rows = 0;
    for txid in before_swap..=latest {
        let out = dir.join(format!("at-{txid}.db"));
        let r = dest.restore("app", &out, &["--txid", &txid.to_string()]);
        assert!(r.status.success(), "restore --txid {txid}: {}", text(&r));
        let rows = rows_consistent(&out, ROW);
        assert!(
            rows >= last_rows,
            "TXID {txid} has fewer rows than the one before"
        );
        last_rows = rows;
    }
    assert_eq!(last_rows, 251, "the latest TXID holds every row");
    let out = dir.join("latest.db");
    let r = dest.restore("app", &out, &[]);
    assert!(r.status.success(), "{}", text(&r));
    assert_eq!(rows_consistent(&out, ROW), 251);
    let v = dest.walsync(&["verify", "app", "-b", &dest.url]);
    assert!(v.status.success(), "verify: {}", text(&v));
    assert!(
        err.contains("was replaced"),
        "the replacement is logged:\n{err}"
    );
}

#[test]
fn replaced_database_with_its_wal_removed_is_shipped_as_a_full_copy() {
    let dir = tempfile::tempdir().unwrap();
    let dest = Dest::file(&dir.path().join("replica"));
    let swap = Swap {
        delete_wal: true,
        app_checkpoints: false,
    };
    replaced_database(&dest, &dir.path().join("db"), swap);
}

#[test]
fn replaced_database_with_its_wal_removed_and_app_checkpoints() {
    let server = S3Server::start();
    let dest = Dest::s3(&server, "replaced", "a");
    let dir = tempfile::tempdir().unwrap();
    let swap = Swap {
        delete_wal: true,
        app_checkpoints: true,
    };
    replaced_database(&dest, dir.path(), swap);
}

#[test]
fn replaced_database_with_its_wal_kept() {
    let server = S3Server::start();
    let dest = Dest::s3(&server, "replaced", "b");
    let dir = tempfile::tempdir().unwrap();
    let swap = Swap {
        delete_wal: false,
        app_checkpoints: false,
    };
    replaced_database(&dest, dir.path(), swap);
}

#[test]
fn replaced_database_with_its_wal_kept_and_app_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let dest = Dest::file(&dir.path().join("replica"));
    let swap = Swap {
        delete_wal: false,
        app_checkpoints: true,
    };
    replaced_database(&dest, &dir.path().join("db"), swap);
}

/// `(N files, B bytes)` from restore's closing line.
fn restored_files_and_bytes(stderr: &str) -> (u64, u64) {
    let at = stderr.rfind(" files, ").expect("restore's closing line");
    let files = stderr[..at]
        .rsplit('(')
        .next()
        .and_then(|n| n.trim().parse().ok())
        .expect("file count");
    let bytes = stderr[at + 8..]
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .expect("byte count");
    (files, bytes)
}

#[test]
fn restarts_after_the_app_restarted_the_wal_ship_only_changed_pages() {
    let server = S3Server::start();
    let dest = Dest::s3(&server, "diffs", "d");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("d.db");
    let mut conn = create_db(&db, 4096);
    // About 8 MB: 2,000 rows of 4 KB.
    for k in 0..20 {
        insert_ids(&mut conn, k * 100 + 1..=k * 100 + 100, 4000);
    }
    let db_size = std::fs::metadata(&db).unwrap().len() + 8_000_000;
    let w = dest.watch(&[&db], &["--sync-interval", "50ms"]);
    dest.wait_for_txid("d", 1, Duration::from_secs(30));
    w.stop_clean();
    let mut restart_bytes = 0;
    let mut logs = Vec::new();
    for round in 0..5i64 {
        // While walsync is down: a few rows change, and the application's
        // checkpoint restarts the WAL (nothing holds it off now).
        let id = 2001 + round;
        insert_ids(&mut conn, id..=id, 4000);
        conn.execute(
            "UPDATE t SET body = ?1 WHERE id = ?2",
            rusqlite::params![noise(4000, 7), 5 + round],
        )
        .unwrap();
        conn.execute(
            "UPDATE t SET body = ?1 WHERE id = ?2",
            rusqlite::params![noise(4000, 5 + round as u64), 5 + round],
        )
        .unwrap();
        checkpoint_truncate(&db);
        let before = dest.max_txid("d");
        let w = dest.watch(&[&db], &["--sync-interval", "50ms"]);
        dest.wait_for_txid("d", before + 1, Duration::from_secs(30));
        let (code, err) = w.stop();
        assert_eq!(code, 0, "{err}");
        let shipped: u64 = dest
            .files("d")
            .iter()
            .filter(|f| f.id.min_txid > before)
            .map(|f| f.size)
            .sum();
        restart_bytes += shipped;
        logs.push(err);
    }
    assert!(
        restart_bytes < db_size / 20,
        "5 restarts uploaded {restart_bytes} bytes for a {db_size}-byte database: that is full copies, not diffs"
    );
    for err in &logs {
        assert!(
            err.contains("while walsync was not running") && err.contains("changed pages"),
            "each restart says why it ships a diff:\n{err}"
        );
    }
    drop(conn);
    let out = dir.path().join("restored.db");
    let r = dest.restore("d", &out, &[]);
    assert!(r.status.success(), "{}", text(&r));
    assert_eq!(rows_consistent(&out, 4000), 2005);
    checkpoint_truncate(&db);
    assert_same_bytes(&db, &out);
}

#[test]
fn restores_start_from_the_newest_full_copy() {
    let dir = tempfile::tempdir().unwrap();
    let dest = Dest::file(&dir.path().join("replica"));
    let db = dir.path().join("img.db");
    let mut conn = create_db(&db, 4096);
    insert_ids(&mut conn, 1..=300, 2000);
    let w = dest.watch(&[&db], &["--sync-interval", "50ms"]);
    let mut txid = dest.wait_for_txid("img", 1, Duration::from_secs(20));
    for k in 0..5 {
        insert_ids(&mut conn, 301 + k..=301 + k, 2000);
        txid = dest.wait_for_txid("img", txid + 1, Duration::from_secs(20));
    }
    // Replace the file: walsync ships a full copy and marks it.
    let bak = dir.path().join("img.db.bak");
    conn.execute("VACUUM INTO ?1", [bak.to_str().unwrap()])
        .unwrap();
    drop(conn);
    std::fs::rename(&bak, &db).unwrap();
    remove_if_exists(&dir.path().join("img.db-wal"));
    remove_if_exists(&dir.path().join("img.db-shm"));
    let mut conn = create_db(&db, 4096);
    let full = dest.wait_for_txid("img", txid + 1, Duration::from_secs(20));
    for k in 0..3 {
        insert_ids(&mut conn, 306 + k..=306 + k, 2000);
        dest.wait_for_txid("img", full + 1 + k as u64, Duration::from_secs(20));
    }
    w.stop_clean();
    let files = dest.files("img");
    let image = files
        .iter()
        .find(|f| f.id.level == 0 && f.image)
        .expect("the full copy is marked as an image");
    assert_eq!(image.id.max_txid, full);
    let after = files
        .iter()
        .filter(|f| f.id.level == 0 && f.id.min_txid > full)
        .count() as u64;
    let out = dir.path().join("restored.db");
    let r = dest.restore("img", &out, &[]);
    assert!(r.status.success(), "{}", text(&r));
    let (n, bytes) = restored_files_and_bytes(&String::from_utf8_lossy(&r.stderr));
    assert_eq!(
        n,
        1 + after,
        "the full copy and the files after it, not the snapshot"
    );
    let read: u64 = image.size
        + files
            .iter()
            .filter(|f| f.id.level == 0 && f.id.min_txid > full)
            .map(|f| f.size)
            .sum::<u64>();
    assert_eq!(bytes, read);
    assert_eq!(rows_consistent(&out, 2000), 308);
    // States before the copy still restore from the snapshot.
    let r = dest.restore(
        "img",
        &dir.path().join("before.db"),
        &["--txid", &txid.to_string()],
    );
    assert!(r.status.success(), "{}", text(&r));
    assert_eq!(rows_consistent(&dir.path().join("before.db"), 2000), 305);
}

/// A storage that counts the objects its listings return.
struct CountingListings {
    inner: Box<dyn walsync::storage::Storage>,
    listed: std::sync::atomic::AtomicUsize,
}

impl walsync::storage::Storage for CountingListings {
    fn put(
        &self,
        key: &str,
        body: &mut dyn walsync::storage::ReadSeek,
        len: u64,
        meta: &walsync::storage::ObjectMeta,
    ) -> walsync::error::Result<()> {
        self.inner.put(key, body, len, meta)
    }
    fn get(&self, key: &str) -> walsync::error::Result<Option<walsync::storage::Download>> {
        self.inner.get(key)
    }
    fn get_range(
        &self,
        key: &str,
        offset: u64,
        len: u64,
    ) -> walsync::error::Result<Option<Vec<u8>>> {
        self.inner.get_range(key, offset, len)
    }
    fn list_after(
        &self,
        prefix: &str,
        start_after: &str,
    ) -> walsync::error::Result<Vec<walsync::storage::ListedObject>> {
        let r = self.inner.list_after(prefix, start_after)?;
        self.listed
            .fetch_add(r.len(), std::sync::atomic::Ordering::SeqCst);
        Ok(r)
    }
    fn head(&self, key: &str) -> walsync::error::Result<Option<walsync::storage::ObjectHead>> {
        self.inner.head(key)
    }
    fn delete(&self, key: &str) -> walsync::error::Result<()> {
        self.inner.delete(key)
    }
    fn layout(&self) -> walsync::storage::Layout {
        self.inner.layout()
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

#[test]
fn a_restart_finds_its_place_without_listing_the_replica() {
    let server = S3Server::start();
    let dest = Dest::s3(&server, "startup", "s");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    drop(create_db(&db, 4096));
    dest.replicate_commits(&db, "s", 40, 1, 100);
    let stored = dest.files("s").len();
    assert!(stored > 40, "{stored} files");
    let storage = std::sync::Arc::new(CountingListings {
        inner: dest.storage(),
        listed: Default::default(),
    });
    let shipper = walsync::watch::Shipper::open(
        &db,
        "s",
        storage.clone(),
        walsync::watch::Settings::default(),
        std::sync::Arc::new(walsync::event::Discard),
    )
    .expect("open");
    assert_eq!(
        shipper.txid(),
        dest.max_txid("s"),
        "resumed where it stopped"
    );
    let listed = storage.listed.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        listed <= 3,
        "start-up listed {listed} of the {stored} objects; it needs the newest only"
    );
    shipper.close().unwrap();
}

/// The WAL deleted under a running application and `watch` (an operator's
/// `rm app.db-wal`): walsync says so once, lets go of the files, and
/// follows the database again; every commit the application makes after
/// its close is in the replica, and a stop that claims so is true.
#[test]
fn a_wal_deleted_under_watch_is_said_once_and_followed_again() {
    let dir = tempfile::tempdir().unwrap();
    let dest = Dest::file(&dir.path().join("replica"));
    let db = dir.path().join("app.db");
    let mut conn = create_db(&db, 4096);
    insert_ids(&mut conn, 1..=5, ROW);
    let w = dest.watch(&[&db], &["--sync-interval", "100ms"]);
    let first = dest.wait_for_txid("app", 1, Duration::from_secs(20));
    insert_ids(&mut conn, 6..=40, ROW);
    dest.wait_for_txid("app", first + 1, Duration::from_secs(20));
    std::fs::remove_file(dir.path().join("app.db-wal")).unwrap();
    for id in 41..=200 {
        insert_ids(&mut conn, id..=id, ROW);
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(conn);
    let rows = rows_consistent(&db, ROW);
    let shipped = dest.max_txid("app");
    dest.wait_for_txid("app", shipped + 1, Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(500));
    let (code, log) = w.stop();
    assert_eq!(code, 0, "{log}");
    let said = log.matches("the WAL of").count();
    assert_eq!(said, 1, "said once: {log}");
    let out = dir.path().join("restored.db");
    let r = dest.restore("app", &out, &[]);
    assert!(r.status.success(), "{}", text(&r));
    assert_eq!(rows_consistent(&out, ROW), rows, "{log}");
}

/// A state folder that takes no spool file (as a full disk would refuse
/// one): the batches are built in memory, said once, and every commit
/// ships; once spool files can be written again, they are used.
#[test]
fn batches_ship_from_memory_when_no_spool_file_can_be_written() {
    let dir = tempfile::tempdir().unwrap();
    let dest = Dest::file(&dir.path().join("replica"));
    let db = dir.path().join("app.db");
    let mut conn = create_db(&db, 4096);
    insert_ids(&mut conn, 1..=5, ROW);
    let w = dest.watch(&[&db], &["--sync-interval", "100ms"]);
    let first = dest.wait_for_txid("app", 1, Duration::from_secs(20));
    // Folders where the next spool files would go: creating them fails.
    let state = dir.path().join(".app.db-walsync");
    let blocked: Vec<_> = (first + 1..first + 40)
        .map(|txid| state.join(format!("spool-0-{txid:016x}.ltx")))
        .collect();
    for b in &blocked {
        std::fs::create_dir(b).unwrap();
    }
    for id in 6..=60 {
        insert_ids(&mut conn, id..=id, ROW);
        std::thread::sleep(Duration::from_millis(20));
    }
    let rows = rows_consistent(&db, ROW);
    let shipped = dest.wait_for_txid("app", first + 3, Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(500));
    let (code, log) = w.stop();
    assert_eq!(code, 0, "{log}");
    assert!(dest.max_txid("app") >= shipped);
    assert_eq!(
        log.matches("building batches in memory").count(),
        1,
        "said once: {log}"
    );
    assert!(log.contains("creating spool file"), "{log}");
    let out = dir.path().join("restored.db");
    let r = dest.restore("app", &out, &[]);
    assert!(r.status.success(), "{}", text(&r));
    assert_eq!(rows_consistent(&out, ROW), rows, "{log}");
    // Nothing was left in the state folder but what blocked it.
    let left: Vec<_> = std::fs::read_dir(&state)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("spool-"))
        })
        .filter(|p| !blocked.contains(p))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// A full copy stored just before a crash that kept walsync from saving
/// its state (a full disk, kill -9): the restart finds the replica one TXID
/// past its state. Overwriting that TXID with an ordinary file would leave
/// the full copy's marker beside it, and restores would start from a file
/// that is not a full image (found by the disk-full fault suite).
#[test]
fn a_full_copy_stored_before_a_crash_is_not_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let dest = Dest::file(&dir.path().join("replica"));
    let db = dir.path().join("app.db");
    let state = dir.path().join(".app.db-walsync");
    let mut conn = create_db(&db, 4096);
    insert_ids(&mut conn, 1..=20, ROW);
    let w = dest.watch(&[&db], &["--sync-interval", "100ms"]);
    let before = dest.wait_for_txid("app", 1, Duration::from_secs(20));
    w.stop_clean();
    let saved: Vec<(std::path::PathBuf, Vec<u8>)> = ["state.json", "pagesums2"]
        .iter()
        .map(|f| (state.join(f), std::fs::read(state.join(f)).unwrap()))
        .collect();
    // A page record that does not match: the next start ships a full copy.
    std::fs::remove_file(state.join("pagesums2")).unwrap();
    let w = dest.watch(&[&db], &["--sync-interval", "100ms"]);
    dest.wait_for_txid("app", before + 1, Duration::from_secs(20));
    w.stop_clean();
    // As if the state of the crashed run had never been written.
    for (path, bytes) in &saved {
        std::fs::write(path, bytes).unwrap();
    }
    insert_ids(&mut conn, 21..=40, ROW);
    let w = dest.watch(&[&db], &["--sync-interval", "100ms"]);
    dest.wait_for_txid("app", before + 2, Duration::from_secs(20));
    let (code, log) = w.stop();
    assert_eq!(code, 0, "{log}");
    drop(conn);
    let out = dir.path().join("restored.db");
    let r = dest.restore("app", &out, &[]);
    assert!(r.status.success(), "{}\n{log}", text(&r));
    checkpoint_truncate(&db);
    assert_same_bytes(&db, &out);
    let v = dest.walsync(&["verify", "app", "-b", &dest.url]);
    assert!(v.status.success(), "{}", text(&v));
}

/// The level-9 snapshots of `name`, by max TXID.
fn snapshot_txids(dest: &Dest, name: &str) -> Vec<u64> {
    let mut txids: Vec<u64> = dest
        .files(name)
        .iter()
        .filter(|f| f.id.level == 9)
        .map(|f| f.id.max_txid)
        .collect();
    txids.sort_unstable();
    txids
}

#[test]
fn snapshots_follow_each_trigger_and_zero_turns_the_interval_off() {
    let dir = tempfile::tempdir().unwrap();
    let dest = Dest::file(&dir.path().join("replica"));
    let names = ["changes", "idle", "longest"];
    let mut conns: Vec<_> = names
        .iter()
        .map(|n| create_db(&dir.path().join(format!("{n}.db")), 4096))
        .collect();
    let cfg = dir.path().join("walsync.toml");
    let entry = |name: &str, trigger: &str| {
        format!(
            "[[databases]]\npath = \"{}\"\n{trigger}\n",
            dir.path().join(format!("{name}.db")).display()
        )
    };
    std::fs::write(
        &cfg,
        format!(
            "[s3]\nbucket = \"{}\"\n[sync]\nsync_interval = \"50ms\"\nsnapshot_interval = 0\n{}{}{}",
            dest.url,
            entry("changes", "snapshot_max_changes = 12"),
            entry("idle", "snapshot_on_idle = \"1s\""),
            entry("longest", "snapshot_max_interval = \"2s\""),
        ),
    )
    .unwrap();
    let w = dest.watch(&[], &["--config", cfg.to_str().unwrap()]);
    for n in names {
        dest.wait_for_txid(n, 1, Duration::from_secs(20));
    }
    // 5 s of commits every 100 ms, a page or two each.
    let started = Instant::now();
    let mut id = 0;
    while started.elapsed() < Duration::from_secs(5) {
        id += 1;
        for c in &mut conns {
            insert_ids(c, id..=id, 3000);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let idle_during_writes = snapshot_txids(&dest, "idle");
    std::thread::sleep(Duration::from_secs(3));
    w.stop_clean();
    // Every ~12 pages: many snapshots.
    let changes = snapshot_txids(&dest, "changes");
    assert!(changes.len() >= 4, "snapshot_max_changes: {changes:?}");
    // None while writes never paused for 1 s, one at the latest TXID after.
    assert_eq!(
        idle_during_writes,
        vec![1],
        "snapshot_on_idle during writes"
    );
    let idle = snapshot_txids(&dest, "idle");
    assert_eq!(idle.len(), 2, "snapshot_on_idle: {idle:?}");
    assert_eq!(idle.last().copied(), Some(dest.max_txid("idle")));
    // Every ~2 s of continuous writes: 2 or 3 more than the first.
    let longest = snapshot_txids(&dest, "longest");
    assert!(
        (3..=4).contains(&longest.len()),
        "snapshot_max_interval: {longest:?}"
    );
}

#[test]
fn log_lines_carry_time_level_and_database_as_text_or_json() {
    let dir = tempfile::tempdir().unwrap();
    let dest = Dest::file(&dir.path().join("replica"));
    let db = dir.path().join("app.db");
    create_db(&db, 4096);
    let w = dest.watch(
        &[&db],
        &[
            "--sync-interval",
            "50ms",
            "--log-format",
            "json",
            "--log-level",
            "debug",
        ],
    );
    dest.wait_for_txid("app", 1, Duration::from_secs(20));
    let (status, log) = w.stop();
    assert_eq!(status, 0, "{log}");
    let events: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    for e in &events {
        let time = e["time"].as_str().unwrap_or_default();
        assert!(time.parse::<jiff::Timestamp>().is_ok(), "{e}");
        assert!(
            ["debug", "info", "warn", "error"].contains(&e["level"].as_str().unwrap_or("")),
            "{e}"
        );
        assert!(e["msg"].is_string() && e["event"].is_string(), "{e}");
    }
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["event"].as_str()).collect();
    assert!(
        kinds.contains(&"watching") && kinds.contains(&"stored"),
        "{kinds:?}\n{log}"
    );
    let stored = events.iter().find(|e| e["event"] == "stored").unwrap();
    assert_eq!(stored["db"], "app", "{stored}");
    let first = events
        .iter()
        .find(|e| e["event"] == "snapshotted")
        .expect(&log);
    let said = first["msg"].as_str().unwrap_or_default();
    assert!(
        said.starts_with("stored a snapshot at TXID 0x0000000000000001 (")
            && said.ends_with("the first file of a new replica"),
        "{first}"
    );

    // Text: time, level, then the line as before; info says why a
    // snapshot or a checkpoint happened.
    let w = dest.watch(
        &[&db],
        &[
            "--sync-interval",
            "50ms",
            "--snapshot-interval",
            "1s",
            "--min-checkpoint-pages",
            "8",
        ],
    );
    let mut conn = app_conn(&db);
    for id in 1..=20 {
        insert_ids(&mut conn, id..=id, 3000);
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(1500));
    let (status, log) = w.stop();
    assert_eq!(status, 0, "{log}");
    assert!(log.contains("): snapshot_interval"), "{log}");
    assert!(
        log.contains("checkpointed (PASSIVE): the WAL held"),
        "{log}"
    );
    let watching = log
        .lines()
        .find(|l| l.contains("walsync: watching"))
        .expect(&log);
    let mut parts = watching.splitn(3, ' ');
    let time = parts.next().unwrap_or_default();
    assert!(time.parse::<jiff::Timestamp>().is_ok(), "{watching}");
    assert_eq!(parts.next(), Some("INFO"), "{watching}");

    let bad = dest.walsync(&[
        "watch",
        db.to_str().unwrap(),
        "-b",
        &dest.url,
        "--log-level",
        "loud",
    ]);
    assert_eq!(code(&bad), 2, "{}", text(&bad));
    assert!(
        stderr(&bad).contains("use error, warn, info or debug"),
        "{}",
        text(&bad)
    );
}

/// CPU time (user + system) of a process so far, in seconds.
fn cpu_seconds(pid: libc::pid_t) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) in parentheses.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<f64>().ok()))
        .sum();
    // SAFETY: sysconf only reads a system constant.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// A second `watch` whose control socket another one holds warns once and
/// replicates on, idle like the first: found by the monitoring benchmark,
/// where the one without the socket spun a core (its control requests
/// channel had no sender left, and the supervisor's wait returned at once).
#[test]
fn a_watch_without_its_control_socket_does_not_spin() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("control.sock");
    let socket = socket.to_str().unwrap();
    let (a, b) = (dir.path().join("a.db"), dir.path().join("b.db"));
    create_db(&a, 4096);
    create_db(&b, 4096);
    let dest = Dest::file(&dir.path().join("replica"));
    let first = dest.watch(&[&a], &["--socket", socket]);
    dest.wait_for_txid("a", 1, Duration::from_secs(20));
    let second = dest.watch(&[&b], &["--socket", socket]);
    dest.wait_for_txid("b", 1, Duration::from_secs(20));
    let before = cpu_seconds(second.pid());
    std::thread::sleep(Duration::from_secs(3));
    let spent = cpu_seconds(second.pid()) - before;
    let (code, log) = second.stop();
    first.stop_clean();
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("is in use by another walsync"), "{log}");
    assert!(spent < 0.5, "{spent:.2} s of CPU in 3 idle seconds\n{log}");
}
