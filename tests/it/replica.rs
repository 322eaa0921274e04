//! Read replicas (`walsync replicate`, `restore --follow`): a local
//! database that follows a replica, checked against the primary with real
//! databases, the real binary and real readers in other connections.

use crate::harness::*;
use rusqlite::{Connection, OpenFlags};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BODY: usize = 300;

/// Waits until the replica at `local` holds exactly rows 1..=`rows` (a
/// state the primary committed, checked row by row).
fn wait_for_rows(local: &Path, rows: i64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        if local.exists() && read_consistent(local).ok() == Some(rows) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} holds {:?} rows, not {rows}, after {timeout:?}",
            local.display(),
            read_consistent(local)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Opens `path` read-only as a reader would, checks it
/// (`integrity_check`, rows 1..=k with the bodies `insert_ids` wrote) and
/// returns k, or what was wrong.
fn read_consistent(path: &Path) -> Result<i64, String> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| e.to_string())?;
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(|e| e.to_string())?;
    // One read transaction for both checks: one state.
    conn.execute_batch("BEGIN").map_err(|e| e.to_string())?;
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .map_err(|e| e.to_string())?;
    if check != "ok" {
        return Err(format!("integrity_check: {check}"));
    }
    let mut stmt = conn
        .prepare("SELECT id, body FROM t ORDER BY id")
        .map_err(|e| e.to_string())?;
    let rows: Vec<(i64, Vec<u8>)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .map_err(|e| e.to_string())?
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    for (i, (id, body)) in rows.iter().enumerate() {
        if *id != i as i64 + 1 || *body != noise(BODY, *id as u64) {
            return Err(format!(
                "row {} is id {id} with other bytes: a mixed state",
                i + 1
            ));
        }
    }
    Ok(rows.len() as i64)
}

#[test]
fn the_replica_follows_writes_snapshots_and_checkpoints_and_ends_equal() {
    let dir = tempfile::tempdir().unwrap();
    let dest = Dest::file(&dir.path().join("replica"));
    let db = dir.path().join("app.db");
    let mut conn = create_db(&db, 4096);
    insert_ids(&mut conn, 1..=5, BODY);
    let w = dest.watch(
        &[&db],
        &[
            "--sync-interval",
            "100ms",
            "--snapshot-interval",
            "2s",
            "--min-checkpoint-pages",
            "40",
        ],
    );
    dest.wait_for_txid("app", 1, Duration::from_secs(20));
    let local = dir.path().join("read.db");
    let r = dest.replicate("app", &local, &["--interval", "200ms"]);
    wait_for_rows(&local, 5, Duration::from_secs(20));
    let mut next = 6;
    let started = Instant::now();
    let mut restarted_wal = false;
    while started.elapsed() < Duration::from_secs(7) {
        insert_ids(&mut conn, next..=next + 4, BODY);
        next += 5;
        if !restarted_wal && started.elapsed() > Duration::from_secs(3) {
            // The application restarts the WAL under walsync.
            wal_checkpoint(&conn, "TRUNCATE");
            restarted_wal = true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    wait_for_rows(&local, next - 1, Duration::from_secs(30));
    let (code, log) = r.stop();
    w.stop_clean();
    assert_eq!(code, 0, "{log}");
    assert_eq!(
        log.matches("restored to").count(),
        1,
        "one bootstrap:\n{log}"
    );
    let snapshots = dest.files("app").iter().filter(|f| f.id.level == 9).count();
    assert!(
        snapshots >= 2,
        "the replica followed across snapshots ({snapshots})"
    );
    // The local database is the primary's state, page for page.
    assert_eq!(read_consistent(&local), Ok(next - 1));
    assert_eq!(read_consistent(&db), Ok(next - 1));
}

/// Readers in other connections check the replica in a loop while the
/// primary writes hard: every state they see passes integrity_check and
/// holds rows 1..=k exactly, and k never goes back.
#[test]
fn readers_see_only_whole_states_while_the_primary_writes_hard() {
    let dir = tempfile::tempdir().unwrap();
    let dest = Dest::file(&dir.path().join("replica"));
    let db = dir.path().join("app.db");
    let mut conn = create_db(&db, 4096);
    insert_ids(&mut conn, 1..=20, BODY);
    let w = dest.watch(&[&db], &["--sync-interval", "50ms"]);
    dest.wait_for_txid("app", 1, Duration::from_secs(20));
    let local = dir.path().join("read.db");
    let r = dest.replicate("app", &local, &["--interval", "50ms"]);
    wait_for_rows(&local, 20, Duration::from_secs(20));
    let stop = Arc::new(AtomicBool::new(false));
    let checks = Arc::new(AtomicUsize::new(0));
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let (local, stop, checks) = (local.clone(), stop.clone(), checks.clone());
            std::thread::spawn(move || -> Result<(), String> {
                let mut seen = 0;
                while !stop.load(Ordering::Relaxed) {
                    let k = read_consistent(&local)?;
                    if k < seen {
                        return Err(format!("went back from {seen} to {k} rows"));
                    }
                    seen = k;
                    checks.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            })
        })
        .collect();
    let mut next = 21;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(8) {
        insert_ids(&mut conn, next..=next + 9, BODY);
        next += 10;
        std::thread::sleep(Duration::from_millis(10));
    }
    wait_for_rows(&local, next - 1, Duration::from_secs(30));
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        reader.join().unwrap().unwrap();
    }
    let (code, log) = r.stop();
    w.stop_clean();
    assert_eq!(code, 0, "{log}");
    let checks = checks.load(Ordering::Relaxed);
    eprintln!("{checks} reader checks, {} rows", next - 1);
    assert!(checks >= 30, "only {checks} reader checks");
}

/// kill -9 of the replica at any moment, then a restart: it resumes from
/// its position (no second restore) and ends equal to the primary.
#[test]
fn kill_9_and_resume_without_the_snapshot_or_a_wrong_state() {
    let dir = tempfile::tempdir().unwrap();
    let dest = Dest::file(&dir.path().join("replica"));
    let db = dir.path().join("app.db");
    let mut conn = create_db(&db, 4096);
    insert_ids(&mut conn, 1..=10, BODY);
    let w = dest.watch(&[&db], &["--sync-interval", "50ms"]);
    dest.wait_for_txid("app", 1, Duration::from_secs(20));
    let local = dir.path().join("read.db");
    let first = dest.replicate("app", &local, &["--interval", "30ms"]);
    wait_for_rows(&local, 10, Duration::from_secs(20));
    first.kill9();
    let mut next = 11;
    let mut rng = Rng::new(9);
    for _ in 0..8 {
        let r = dest.replicate("app", &local, &["--interval", "30ms"]);
        let until = Instant::now() + Duration::from_millis(200 + rng.below(600));
        while Instant::now() < until {
            insert_ids(&mut conn, next..=next + 2, BODY);
            next += 3;
            std::thread::sleep(Duration::from_millis(15));
        }
        r.kill9();
        // Whatever moment it died at, the file is a whole state.
        read_consistent(&local).unwrap();
    }
    let r = dest.replicate("app", &local, &["--interval", "30ms"]);
    wait_for_rows(&local, next - 1, Duration::from_secs(30));
    let (code, log) = r.stop();
    w.stop_clean();
    assert_eq!(code, 0, "{log}");
    assert!(
        !log.contains("restored to"),
        "resumed, not restored:\n{log}"
    );
}

/// A damaged file stops the replica with the last good state in place and
/// the integrity exit code; so does a local file someone else wrote.
#[test]
fn damage_or_another_writer_stops_the_replica_and_keeps_the_last_good_state() {
    let dir = tempfile::tempdir().unwrap();
    let replica = dir.path().join("replica");
    let dest = Dest::file(&replica);
    let db = dir.path().join("app.db");
    let mut conn = create_db(&db, 4096);
    insert_ids(&mut conn, 1..=10, BODY);
    let w = dest.watch(&[&db], &["--sync-interval", "50ms"]);
    let txid = dest.wait_for_txid("app", 1, Duration::from_secs(20));
    let local = dir.path().join("read.db");
    let local_s = local.to_str().unwrap();
    let once = |extra: &[&str]| {
        let mut args = vec![
            "replicate",
            "app",
            "--local",
            local_s,
            "-b",
            &dest.url,
            "--once",
        ];
        args.extend_from_slice(extra);
        dest.walsync(&args)
    };
    let out = once(&[]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(read_consistent(&local), Ok(10));
    // A new file, damaged in storage before the replica reads it.
    insert_ids(&mut conn, 11..=20, BODY);
    dest.wait_for_txid("app", txid + 1, Duration::from_secs(20));
    w.stop_clean();
    let newest = dest.keys_at("app", 0).pop().unwrap();
    let path = replica.join(&newest);
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x10;
    std::fs::write(&path, &bytes).unwrap();
    let out = once(&[]);
    assert_eq!(code(&out), 5, "{}", text(&out));
    assert!(
        stderr(&out).contains(newest.rsplit('/').next().unwrap()),
        "{}",
        text(&out)
    );
    assert_eq!(read_consistent(&local), Ok(10), "the last good state stays");
    // Someone writes the replica's file: refused, on start.
    bytes[middle] ^= 0x10;
    std::fs::write(&path, &bytes).unwrap();
    Connection::open(&local)
        .unwrap()
        .execute("INSERT INTO t(id, body) VALUES (999, x'00')", [])
        .unwrap();
    let out = once(&[]);
    assert_eq!(code(&out), 6, "{}", text(&out));
    assert!(stderr(&out).contains("another program"), "{}", text(&out));
    // --force starts over from the replica.
    std::fs::remove_file(local.with_file_name(".read.db-walsync-replica.json")).unwrap();
    let out = once(&["--force"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(read_consistent(&local), Ok(20));
}

/// The replica never writes to the replica's storage: every request a
/// follow makes through the relay is a read. Its metrics say where it is.
#[test]
fn a_replica_only_reads_storage_and_polls_with_one_listing() {
    let server = S3Server::start();
    let relay = Relay::start(&server.endpoint, |_, _| Action::Forward);
    let dir = tempfile::tempdir().unwrap();
    let primary = Dest::s3(&server, "follow", "r");
    let db = dir.path().join("app.db");
    let mut conn = create_db(&db, 4096);
    insert_ids(&mut conn, 1..=5, BODY);
    let w = primary.watch(&[&db], &["--sync-interval", "100ms"]);
    primary.wait_for_txid("app", 1, Duration::from_secs(20));
    let follower = Dest::s3(&server, "follow", "r").via(&relay);
    let local = dir.path().join("read.db");
    let addr = format!("127.0.0.1:{}", free_port());
    let r = follower.replicate(
        "app",
        &local,
        &["--interval", "500ms", "--metrics-addr", &addr],
    );
    wait_for_rows(&local, 5, Duration::from_secs(20));
    insert_ids(&mut conn, 6..=9, BODY);
    wait_for_rows(&local, 9, Duration::from_secs(20));
    // The replica's position and lag, as its metrics say.
    let metrics = scrape(&addr).expect("the metrics endpoint answers");
    let txid = primary.max_txid("app") as f64;
    assert_eq!(
        sample(&metrics, r#"walsync_replica_txid{db="app"}"#),
        Some(txid),
        "{metrics}"
    );
    let lag = sample(&metrics, r#"walsync_replica_lag_seconds{db="app"}"#).expect("a lag sample");
    assert!((0.0..5.0).contains(&lag), "{metrics}");
    // Idle: one listing a poll.
    std::thread::sleep(Duration::from_millis(500));
    let before = relay.requests().len();
    std::thread::sleep(Duration::from_secs(3));
    let idle = relay.requests().len() - before;
    let (code, log) = r.stop();
    w.stop_clean();
    assert_eq!(code, 0, "{log}");
    let methods: Vec<String> = relay.requests().iter().map(|q| q.method.clone()).collect();
    assert!(
        methods.iter().all(|m| m == "GET" || m == "HEAD"),
        "a replica only reads: {methods:?}"
    );
    assert!(
        (4..=8).contains(&idle),
        "{idle} requests in 3 idle seconds at 500 ms"
    );
}

/// The primary compacts and prunes level 0 faster than the replica polls:
/// the replica bridges with compacted levels (or starts over from a newer
/// snapshot when its position is gone) and ends equal, never stopping on a
/// gap. Spelled `restore --follow`, as Litestream users would.
#[test]
fn the_replica_follows_across_compaction_and_level_0_pruning() {
    let dir = tempfile::tempdir().unwrap();
    let dest = Dest::file(&dir.path().join("replica"));
    let db = dir.path().join("app.db");
    let mut conn = create_db(&db, 4096);
    insert_ids(&mut conn, 1..=5, BODY);
    let cfg = dir.path().join("walsync.toml");
    std::fs::write(
        &cfg,
        "[sync]\nsnapshot_interval = \"4s\"\n[retention]\npitr_window = \"2s\"\nsnapshot_retention = \"6s\"\nl0_retention = \"1s\"\ncompaction_levels = [\"1s\", \"2s\"]\n",
    )
    .unwrap();
    let w = dest.watch(
        &[&db],
        &[
            "--sync-interval",
            "100ms",
            "--config",
            cfg.to_str().unwrap(),
        ],
    );
    dest.wait_for_txid("app", 1, Duration::from_secs(20));
    let local = dir.path().join("read.db");
    let local_s = local.to_str().unwrap();
    let r = dest.background(&[
        "restore",
        "app",
        "-o",
        local_s,
        "--follow",
        "--interval",
        "5s",
    ]);
    wait_for_rows(&local, 5, Duration::from_secs(20));
    let mut next = 6;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(12) {
        insert_ids(&mut conn, next..=next + 2, BODY);
        next += 3;
        std::thread::sleep(Duration::from_millis(100));
    }
    let levels: Vec<u32> = dest.files("app").iter().map(|f| f.id.level).collect();
    assert!(levels.contains(&1), "compacted: {levels:?}");
    wait_for_rows(&local, next - 1, Duration::from_secs(30));
    let (code, log) = r.stop();
    w.stop_clean();
    assert_eq!(code, 0, "{log}");
    assert!(!log.contains("integrity error"), "{log}");
}
