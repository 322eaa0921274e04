//! A fleet that lives for months: stable names, one source per replica,
//! tenants that come and go while `watch` runs, files that cannot be
//! replicated, and the control channel (`status`, `snapshot` while
//! watching). The real binary on real databases, to folders and s3s-fs.

use crate::harness::*;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const ROW: usize = 200;

/// A config file in `dir` with the given replica URL, a fast discovery and
/// a control socket of the test's own, then `extra` lines. With
/// `WALSYNC_TEST_OLD_CONFIG` set, without the keys older walsyncs refuse,
/// to see these tests fail for their own reasons on an older binary
/// (`WALSYNC_TEST_BIN`).
fn config(dir: &Path, url: &str, extra: &str) -> PathBuf {
    let path = dir.join("walsync.toml");
    let newer = if std::env::var_os("WALSYNC_TEST_OLD_CONFIG").is_some() {
        String::new()
    } else {
        format!(
            "discover_interval = \"500ms\"\n[control]\nsocket = \"{}\"\n",
            dir.join("control.sock").display()
        )
    };
    std::fs::write(
        &path,
        format!("[s3]\nbucket = \"{url}\"\n[sync]\nsync_interval = \"100ms\"\n{newer}{extra}"),
    )
    .expect("write config");
    path
}

/// A tenant database `<root>/<tenant>/app.db` with rows 1..=rows.
fn tenant(root: &Path, tenant: &str, rows: i64) -> PathBuf {
    let db = root.join(tenant).join("app.db");
    let mut conn = create_db(&db, 4096);
    insert_ids(&mut conn, 1..=rows, ROW);
    db
}

/// Waits until `cond` holds, or fails with `what`.
fn eventually(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Restores `name` and returns its row count, after checking every row.
fn restored_rows(dest: &Dest, name: &str, dir: &Path) -> i64 {
    let out = dir.join(format!("restored-{}.db", name.replace('/', "_")));
    remove_if_exists(&out);
    let r = dest.restore(name, &out, &[]);
    assert!(r.status.success(), "restore {name}: {}", text(&r));
    rows_consistent(&out, ROW)
}

#[test]
fn names_do_not_move_when_tenants_are_added() {
    let dir = tempfile::tempdir().unwrap();
    let dest = Dest::file(&dir.path().join("replica"));
    let acme = tenant(dir.path(), "acme", 10);
    let w = dest.watch(&[&acme], &["--sync-interval", "50ms"]);
    dest.wait_for_txid("app", 1, Duration::from_secs(20));
    w.stop_clean();
    // globex is added: acme keeps `app`, globex gets a name of its own.
    let globex = tenant(dir.path(), "globex", 20);
    let w = dest.watch(&[&acme, &globex], &["--sync-interval", "50ms"]);
    dest.wait_for_txid("globex/app", 1, Duration::from_secs(20));
    w.stop_clean();
    assert_eq!(dest.max_txid("acme/app"), 0, "acme's replica did not move");
    assert_eq!(restored_rows(&dest, "app", dir.path()), 10);
    assert_eq!(restored_rows(&dest, "globex/app", dir.path()), 20);
    // A glob names by the path below its fixed part, whoever else exists.
    let cfg = config(
        dir.path(),
        &format!("file://{}", dir.path().join("globbed").display()),
        &format!(
            "[[databases]]\npath = \"{}/*/app.db\"\n",
            dir.path().display()
        ),
    );
    let out = walsync(
        &[
            "snapshot",
            acme.to_str().unwrap(),
            "--config",
            cfg.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("stored as acme/app"),
        "{}",
        text(&out)
    );
}

#[test]
fn a_replica_takes_pages_from_its_own_database_only() {
    let dir = tempfile::tempdir().unwrap();
    let dest = Dest::file(&dir.path().join("replica"));
    let acme = tenant(dir.path(), "acme", 10);
    let globex = tenant(dir.path(), "globex", 30);
    // The config knows acme only, as in the report.
    let cfg = config(
        dir.path(),
        &dest.url,
        &format!("[[databases]]\npath = \"{}\"\n", acme.display()),
    );
    let snap = |db: &Path, extra: &[&str]| {
        let mut args = vec![
            "snapshot",
            db.to_str().unwrap(),
            "--config",
            cfg.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        walsync(&args, &[])
    };
    let out = snap(&acme, &[]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("stored as app"),
        "{}",
        text(&out)
    );
    // globex gets a name of its own, not the next TXID of acme's chain.
    let out = snap(&globex, &[]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("stored as globex/app"),
        "{}",
        text(&out)
    );
    assert_eq!(
        restored_rows(&dest, "app", dir.path()),
        10,
        "acme's rows only"
    );
    assert_eq!(restored_rows(&dest, "globex/app", dir.path()), 30);
    // Pointed at acme's replica by name, globex is refused.
    let before = dest.max_txid("app");
    let out = snap(&globex, &["--name", "app"]);
    assert_eq!(code(&out), 2, "{}", text(&out));
    let err = stderr(&out);
    assert!(
        err.contains(acme.to_str().unwrap()) && err.contains("--takeover"),
        "names both databases and the way out: {err}"
    );
    assert_eq!(dest.max_txid("app"), before, "nothing was written");
    assert_eq!(restored_rows(&dest, "app", dir.path()), 10);
    // A restored copy watched elsewhere carries the chain on.
    let copy = dir.path().join("elsewhere").join("app.db");
    std::fs::create_dir_all(copy.parent().unwrap()).unwrap();
    let r = dest.restore("app", &copy, &[]);
    assert!(r.status.success(), "{}", text(&r));
    let out = snap(&copy, &["--name", "app"]);
    assert_eq!(
        code(&out),
        0,
        "the restored copy is the same database: {}",
        text(&out)
    );
    assert!(dest.max_txid("app") > before);
    // On purpose, globex becomes app's source.
    let out = snap(&globex, &["--name", "app", "--takeover"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(restored_rows(&dest, "app", dir.path()), 30);
}

#[test]
fn tenants_come_and_go_while_watch_runs() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("tenants");
    let server = S3Server::start();
    let dest = Dest::s3(&server, "fleet", "t");
    let mut tenants: Vec<String> = (0..20).map(|i| format!("t{i:02}")).collect();
    for t in &tenants {
        tenant(&root, t, 5);
    }
    let cfg = config(
        dir.path(),
        &dest.url,
        &format!("[[databases]]\npath = \"{}/*/app.db\"\n", root.display()),
    );
    let w = dest.watch(&[], &["--config", cfg.to_str().unwrap()]);
    for t in &tenants {
        dest.wait_for_txid(&format!("{t}/app"), 1, Duration::from_secs(30));
    }
    // Writers on every live tenant while 5 tenants arrive and 3 leave.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, root, tenants) = (stop.clone(), root.clone(), tenants.clone());
        std::thread::spawn(move || {
            let mut next = vec![6i64; tenants.len()];
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                for (i, t) in tenants.iter().enumerate().skip(3) {
                    let mut conn = app_conn(&root.join(t).join("app.db"));
                    insert_ids(&mut conn, next[i]..=next[i], ROW);
                    next[i] += 1;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    for i in 20..25 {
        let t = format!("t{i:02}");
        tenant(&root, &t, 7);
        tenants.push(t);
    }
    for t in &tenants[20..25] {
        dest.wait_for_txid(&format!("{t}/app"), 1, Duration::from_secs(20));
    }
    let gone: Vec<String> = tenants[..3].to_vec();
    for t in &gone {
        std::fs::remove_dir_all(root.join(t)).unwrap();
    }
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    writer.join().unwrap();
    let started = Instant::now();
    let (exit, err) = w.stop();
    assert_eq!(exit, 0, "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "stopping took {:?}",
        started.elapsed()
    );
    assert!(!err.contains("not lost locally"), "{err}");
    for t in &gone {
        let released = err
            .lines()
            .filter(|l| l.contains(&format!("{t}/app: no longer replicated")))
            .count();
        assert_eq!(released, 1, "one line for {t}:\n{err}");
        assert!(restored_rows(&dest, &format!("{t}/app"), dir.path()) >= 5);
    }
    for t in &tenants[3..] {
        let db = root.join(t).join("app.db");
        let out = dir.path().join(format!("{t}.db"));
        let r = dest.restore(&format!("{t}/app"), &out, &[]);
        assert!(r.status.success(), "{}", text(&r));
        checkpoint_truncate(&db);
        assert_same_bytes(&db, &out);
    }
}

#[test]
fn tenants_that_appear_are_found_without_looking_at_every_tenant_again() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("tenants");
    let dest = Dest::file(&dir.path().join("replica")).with_env("WALSYNC_LOG", "debug");
    for t in ["a", "b", "c"] {
        tenant(&root, t, 2);
    }
    let cfg = config(
        dir.path(),
        &dest.url,
        &format!("[[databases]]\npath = \"{}/*/app.db\"\n", root.display()),
    );
    let w = dest.watch(&[], &["--config", cfg.to_str().unwrap()]);
    dest.wait_for_txid("c/app", 1, Duration::from_secs(20));
    // Past the first discovery, which looks at everything.
    std::thread::sleep(Duration::from_millis(1500));
    // Created in place.
    tenant(&root, "made", 3);
    // A folder first, its database later.
    std::fs::create_dir_all(root.join("later")).unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    tenant(&root, "later", 4);
    // Prepared elsewhere and moved in.
    let outside = dir.path().join("staging");
    tenant(&outside, "moved", 5);
    std::fs::rename(outside.join("moved"), root.join("moved")).unwrap();
    for t in ["made", "later", "moved"] {
        dest.wait_for_txid(&format!("{t}/app"), 1, Duration::from_secs(10));
    }
    let (exit, err) = w.stop();
    assert_eq!(exit, 0, "{err}");
    for (t, rows) in [("made", 3), ("later", 4), ("moved", 5)] {
        assert_eq!(restored_rows(&dest, &format!("{t}/app"), dir.path()), rows);
    }
    // Found by looking at what appeared: one full rescan (the first).
    let full = err
        .lines()
        .filter(|l| l.contains("rescanned everything"))
        .count();
    let scoped_finds = err
        .lines()
        .filter(|l| l.contains("new path(s)") && !l.contains(", 0 new;"))
        .count();
    assert_eq!(full, 1, "{err}");
    assert!(scoped_finds >= 2, "{err}");
}

#[test]
fn files_that_cannot_be_replicated_are_skipped_and_looked_at_again() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("tenants");
    let dest = Dest::file(&dir.path().join("replica"));
    tenant(&root, "good", 3);
    std::fs::create_dir_all(root.join("empty")).unwrap();
    std::fs::write(root.join("empty/app.db"), b"").unwrap();
    std::fs::create_dir_all(root.join("text")).unwrap();
    std::fs::write(
        root.join("text/app.db"),
        b"not a database at all, just text",
    )
    .unwrap();
    let rollback = root.join("rollback/app.db");
    std::fs::create_dir_all(rollback.parent().unwrap()).unwrap();
    {
        let c = rusqlite::Connection::open(&rollback).unwrap();
        c.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, body BLOB)")
            .unwrap();
    }
    let cfg = config(
        dir.path(),
        &dest.url,
        &format!(
            "[[databases]]\npath = \"{}/*/app.db\"\n[[databases]]\npath = \"{}/nothing-yet-*/app.db\"\n",
            root.display(),
            root.display()
        ),
    );
    let w = dest.watch(&[], &["--config", cfg.to_str().unwrap()]);
    dest.wait_for_txid("good/app", 1, Duration::from_secs(20));
    // The database in rollback mode is switched to WAL: the next discovery
    // picks it up.
    std::thread::sleep(Duration::from_secs(2));
    {
        let c = rusqlite::Connection::open(&rollback).unwrap();
        let _: String = c
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .unwrap();
        c.execute("INSERT INTO t(id, body) VALUES (1, ?1)", [noise(ROW, 1)])
            .unwrap();
    }
    dest.wait_for_txid("rollback/app", 1, Duration::from_secs(20));
    let (exit, err) = w.stop();
    assert_eq!(exit, 0, "{err}");
    for (name, hint) in [
        ("empty/app", "empty or too short"),
        ("text/app", "not a SQLite database"),
        ("rollback/app", "not WAL"),
    ] {
        let said = err.lines().filter(|l| l.contains(hint)).count();
        assert_eq!(said, 1, "{name} is said once with its hint:\n{err}");
    }
    assert_eq!(dest.max_txid("empty/app"), 0);
    assert_eq!(restored_rows(&dest, "rollback/app", dir.path()), 1);
    // A bad database named on the command line still refuses to start.
    let out = dest.walsync(&[
        "watch",
        root.join("text/app.db").to_str().unwrap(),
        "-b",
        &dest.url,
    ]);
    assert_eq!(code(&out), 3, "{}", text(&out));
}

#[test]
fn status_and_snapshot_reach_a_running_watch() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("tenants");
    let dest = Dest::file(&dir.path().join("replica"));
    let a = tenant(&root, "a", 4);
    tenant(&root, "b", 6);
    let cfg = config(
        dir.path(),
        &dest.url,
        &format!("[[databases]]\npath = \"{}/*/app.db\"\n", root.display()),
    );
    let cfg = cfg.to_str().unwrap();
    let w = dest.watch(&[], &["--config", cfg]);
    dest.wait_for_txid("a/app", 1, Duration::from_secs(20));
    dest.wait_for_txid("b/app", 1, Duration::from_secs(20));
    let mut conn = app_conn(&a);
    insert_ids(&mut conn, 5..=9, ROW);
    let changed = dest.wait_for_txid("a/app", 2, Duration::from_secs(20));
    let snapshots = || dest.keys_at("a/app", 9).len();
    assert_eq!(snapshots(), 1);
    let out = walsync(&["snapshot", a.to_str().unwrap(), "--config", cfg], &[]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("by the running watch"),
        "{}",
        text(&out)
    );
    assert_eq!(snapshots(), 2, "a new snapshot, without stopping the watch");
    let out = walsync(&["status", "--json", "--config", cfg], &[]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let dbs = v.as_array().expect("a list");
    assert_eq!(dbs.len(), 2, "{v}");
    let a_status = dbs.iter().find(|d| d["name"] == "a/app").expect("a/app");
    assert!(a_status["txid"].as_u64().unwrap() >= changed, "{v}");
    assert!(a_status["last_shipped"].is_string(), "{v}");
    assert!(
        !out.stdout.windows(6).any(|w| w == b"secret"),
        "nothing secret is served"
    );
    let out = walsync(&["status", "--config", cfg], &[]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("b/app"),
        "{}",
        text(&out)
    );
    w.stop_clean();
    let out = walsync(&["status", "--config", cfg], &[]);
    assert_eq!(code(&out), 1, "no watch answers: {}", text(&out));
}

/// A watch that hangs up without answering (it was stopping) is a watch
/// that is not there: `snapshot` takes the snapshot itself, and `status`
/// says that no watch answers.
#[test]
fn a_watch_that_hangs_up_is_not_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let dest = Dest::file(&dir.path().join("replica"));
    let db = tenant(dir.path(), "solo", 3);
    let socket = dir.path().join("stopping.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let hang_up = std::thread::spawn(move || {
        for conn in listener.incoming().take(2) {
            drop(conn);
        }
    });
    let sock = socket.to_str().unwrap();
    let args = [
        "snapshot",
        db.to_str().unwrap(),
        "-b",
        &dest.url,
        "--socket",
        sock,
    ];
    let out = dest.walsync(&args);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(restored_rows(&dest, "app", dir.path()), 3);
    let out = walsync(&["status", "--socket", sock], &[]);
    assert_eq!(code(&out), 1, "{}", text(&out));
    assert!(
        text(&out).contains("no walsync watch answers"),
        "{}",
        text(&out)
    );
    hang_up.join().unwrap();
}

#[test]
fn sighup_reads_the_config_again() {
    let dir = tempfile::tempdir().unwrap();
    let dest = Dest::file(&dir.path().join("replica"));
    let first = tenant(dir.path(), "first", 2);
    let second = tenant(dir.path(), "second", 3);
    let entry = |p: &Path, n: &str| {
        format!(
            "[[databases]]\npath = \"{}\"\nname = \"{n}\"\n",
            p.display()
        )
    };
    let cfg = config(dir.path(), &dest.url, &entry(&first, "one"));
    // A long discovery interval: only SIGHUP can make it look soon.
    let text_of = std::fs::read_to_string(&cfg).unwrap().replace(
        "discover_interval = \"500ms\"",
        "discover_interval = \"1h\"",
    );
    std::fs::write(&cfg, &text_of).unwrap();
    let w = dest.watch(&[], &["--config", cfg.to_str().unwrap()]);
    dest.wait_for_txid("one", 1, Duration::from_secs(20));
    std::fs::write(&cfg, format!("{text_of}{}", entry(&second, "two"))).unwrap();
    w.signal(libc::SIGHUP);
    dest.wait_for_txid("two", 1, Duration::from_secs(10));
    w.stop_clean();
    assert_eq!(restored_rows(&dest, "two", dir.path()), 3);
}

/// A reloaded config changes the settings of databases already watched:
/// a sync interval of an hour, shortened by SIGHUP, ships the waiting
/// commit at once instead of an hour later.
#[test]
fn sighup_retunes_databases_already_watched() {
    let dir = tempfile::tempdir().unwrap();
    let dest = Dest::file(&dir.path().join("replica"));
    let db = tenant(dir.path(), "only", 2);
    let entry = format!(
        "[[databases]]\npath = \"{}\"\nname = \"only\"\n",
        db.display()
    );
    let cfg = config(dir.path(), &dest.url, &entry);
    let fast = std::fs::read_to_string(&cfg).unwrap();
    let slow = fast.replace("sync_interval = \"100ms\"", "sync_interval = \"1h\"");
    std::fs::write(&cfg, &slow).unwrap();
    let w = dest.watch(&[], &["--config", cfg.to_str().unwrap()]);
    let first = dest.wait_for_txid("only", 1, Duration::from_secs(20));
    insert_ids(&mut app_conn(&db), 3..=5, ROW);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        dest.max_txid("only"),
        first,
        "an hour's interval shipped early"
    );
    std::fs::write(&cfg, &fast).unwrap();
    w.signal(libc::SIGHUP);
    dest.wait_for_txid("only", first + 1, Duration::from_secs(10));
    let (code, log) = w.stop();
    assert_eq!(code, 0, "{log}");
    assert!(
        log.contains("settings changed by the reloaded config"),
        "{log}"
    );
    assert_eq!(restored_rows(&dest, "only", dir.path()), 5);
}

/// Open descriptors of a process.
fn descriptors(pid: libc::pid_t) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

#[test]
fn four_descriptors_a_database() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("tenants");
    let dest = Dest::file(&dir.path().join("replica"));
    let n = 60;
    for i in 0..n {
        tenant(&root, &format!("t{i:02}"), 1);
    }
    let cfg = config(
        dir.path(),
        &dest.url,
        &format!("[[databases]]\npath = \"{}/*/app.db\"\n", root.display()),
    );
    let w = dest.watch(&[], &["--config", cfg.to_str().unwrap()]);
    eventually("every first snapshot", Duration::from_secs(30), || {
        (0..n).all(|i| dest.max_txid(&format!("t{i:02}/app")) >= 1)
    });
    std::thread::sleep(Duration::from_millis(500));
    let fds = descriptors(w.pid());
    w.stop_clean();
    assert!(
        fds <= 4 * n + 40,
        "{fds} descriptors for {n} databases: more than 4 a database"
    );
}
