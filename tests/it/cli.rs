//! Command-line behaviour: exit codes and messages for bad input, against the
//! real binary and a real S3 server.

use crate::harness::*;
use std::time::{Duration, Instant};

#[test]
fn bundled_sqlite_is_new_enough() {
    // 3.51.3 fixed the WAL-reset corruption bug.
    let v = rusqlite::version_number();
    assert!(
        v >= 3_051_003,
        "bundled SQLite {} is older than 3.51.3",
        rusqlite::version()
    );
    let out = walsync(&["version"], &[]);
    assert_eq!(code(&out), 0);
    assert!(String::from_utf8_lossy(&out.stdout).contains(rusqlite::version()));
}

#[test]
fn usage_errors_exit_2_and_help_exits_0() {
    let out = walsync(&["watch", "--no-such-flag"], &[]);
    assert_eq!(code(&out), 2, "{}", text(&out));
    let out = walsync(&["frobnicate"], &[]);
    assert_eq!(code(&out), 2, "{}", text(&out));
    let out = walsync(&["restore", "app"], &[]); // missing -o
    assert_eq!(code(&out), 2, "{}", text(&out));
    let out = walsync(
        &["watch", "x.db", "-b", "s3://b", "--sync-interval", "soon"],
        &[],
    );
    assert_eq!(code(&out), 2, "{}", text(&out));
    let out = walsync(&["--help"], &[]);
    assert_eq!(code(&out), 0);
    assert!(String::from_utf8_lossy(&out.stdout).contains("restore"));
    let out = walsync(&["restore", "--help"], &[]);
    assert_eq!(code(&out), 0);
    assert!(String::from_utf8_lossy(&out.stdout).contains("--point-in-time"));
}

#[test]
fn bad_urls_and_configs_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("a.db");
    create_db(&db, 4096);
    let db = db.to_str().unwrap();
    for url in [
        "ftp://x/y",
        "s3://",
        "file://relative/path",
        "bucket-without-scheme",
    ] {
        let out = walsync(&["watch", db, "-b", url], &[]);
        assert_eq!(code(&out), 2, "url {url}: {}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("s3://bucket"),
            "{}",
            text(&out)
        );
    }
    let out = walsync(&["watch", db], &[]);
    assert_eq!(code(&out), 2, "no bucket: {}", text(&out));
    let cfg = dir.path().join("walsync.toml");
    std::fs::write(&cfg, "[sync]\nsnapshot_intervl = 5\n").unwrap();
    let out = walsync(
        &[
            "watch",
            db,
            "-b",
            "file:///tmp/x",
            "--config",
            cfg.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("snapshot_intervl"));
}

#[test]
fn non_wal_and_missing_databases_exit_3() {
    let dir = tempfile::tempdir().unwrap();
    let replica = format!("file://{}/replica", dir.path().display());
    let rollback = dir.path().join("rollback.db");
    let conn = rusqlite::Connection::open(&rollback).unwrap();
    conn.execute_batch("PRAGMA journal_mode=DELETE; CREATE TABLE t(x);")
        .unwrap();
    drop(conn);
    let out = walsync(&["watch", rollback.to_str().unwrap(), "-b", &replica], &[]);
    assert_eq!(code(&out), 3, "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("PRAGMA journal_mode=WAL"),
        "{}",
        text(&out)
    );

    let missing = dir.path().join("missing.db");
    let out = walsync(&["watch", missing.to_str().unwrap(), "-b", &replica], &[]);
    assert_eq!(code(&out), 3, "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.db"));
    let out = walsync(
        &["snapshot", missing.to_str().unwrap(), "-b", &replica],
        &[],
    );
    assert_eq!(code(&out), 3, "{}", text(&out));

    let junk = dir.path().join("junk.db");
    std::fs::write(&junk, vec![7u8; 8192]).unwrap();
    let out = walsync(&["watch", junk.to_str().unwrap(), "-b", &replica], &[]);
    assert_eq!(code(&out), 3, "{}", text(&out));
}

#[test]
fn wrong_secret_and_dead_endpoint_exit_4_quickly_without_secrets() {
    let server = S3Server::start();
    server.create_bucket("auth");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("a.db");
    create_db(&db, 4096);
    let db = db.to_str().unwrap();

    let mut env = server.env();
    let wrong = "definitely-not-the-secret-42".to_string();
    for (k, v) in env.iter_mut() {
        if k == "AWS_SECRET_ACCESS_KEY" {
            *v = wrong.clone();
        }
    }
    let started = Instant::now();
    let out = walsync(&["snapshot", db, "-b", "s3://auth/x"], &env);
    assert_eq!(code(&out), 4, "{}", text(&out));
    let took = started.elapsed();
    assert!(took < Duration::from_secs(30), "{took:?}: {}", text(&out));
    let all = text(&out);
    assert!(!all.contains(&wrong) && !all.contains(&server.secret_key));
    assert!(!all.contains("X-Amz-Signature") && !all.contains("X-Amz-Credential"));
    let out = walsync(&["list", "-b", "s3://auth/x"], &env);
    assert_eq!(code(&out), 4, "{}", text(&out));

    let mut env = server.env();
    for (k, v) in env.iter_mut() {
        if k == "AWS_ENDPOINT_URL_S3" {
            *v = format!("http://127.0.0.1:{}", free_port());
        }
    }
    let started = Instant::now();
    let out = walsync(&["watch", db, "-b", "s3://auth/x"], &env);
    assert_eq!(code(&out), 4, "{}", text(&out));
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn a_second_watcher_on_the_same_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("a.db");
    create_db(&db, 4096);
    let dest = Dest::file(&dir.path().join("replica"));
    let first = dest.watch(&[&db], &[]);
    dest.wait_for_txid("a", 1, Duration::from_secs(20));
    let out = dest.walsync(&["watch", db.to_str().unwrap(), "-b", &dest.url]);
    assert_eq!(code(&out), 3, "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("another walsync"));
    let (c, err) = first.stop();
    assert_eq!(c, 0, "{err}");
}

/// A replica on the S3 server with a snapshot and several level-0 files.
fn s3_replica_with_history(server: &S3Server, dir: &std::path::Path) -> Dest {
    let dest = Dest::s3(server, "damage", "p");
    let db = dir.join("d.db");
    create_db(&db, 4096);
    dest.replicate_commits(&db, "d", 5, 3, 500);
    dest
}

#[test]
fn restore_errors_on_s3_name_the_object_and_leave_nothing() {
    let server = S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    let dest = s3_replica_with_history(&server, dir.path());
    let storage = dest.storage();
    let files = dest.files("d");
    let level0: Vec<_> = files.iter().filter(|f| f.id.level == 0).collect();
    assert!(level0.len() >= 4, "{files:?}");

    // The healthy replica restores; the output then exists (6 without --force).
    let out = dir.path().join("out.db");
    let r = dest.restore("d", &out, &[]);
    assert_eq!(code(&r), 0, "{}", text(&r));
    let r = dest.restore("d", &out, &[]);
    assert_eq!(code(&r), 6, "{}", text(&r));
    assert!(stderr(&r).contains("--force"));
    // No backups under that name (6).
    let r = dest.restore("nobody", &dir.path().join("n.db"), &[]);
    assert_eq!(code(&r), 6, "{}", text(&r));

    // One flipped byte in a stored level-0 object (metadata kept): 5.
    let victim = level0[1];
    let (body, meta) = flip_byte(storage.as_ref(), &victim.key);
    let out2 = dir.path().join("out2.db");
    let r = dest.restore("d", &out2, &[]);
    assert_eq!(code(&r), 5, "{}", text(&r));
    assert!(stderr(&r).contains(&victim.key), "{}", text(&r));
    assert_nothing_left(&out2);
    put_object(storage.as_ref(), &victim.key, &body, &meta);

    // A missing middle level-0 file with no covering compaction: a named
    // gap, an integrity error.
    storage.delete(&level0[2].key).unwrap();
    let r = dest.restore("d", &out2, &[]);
    assert_eq!(code(&r), 5, "{}", text(&r));
    let missing = format!("{:016x}", level0[2].id.min_txid);
    assert!(stderr(&r).contains("gap"), "{}", text(&r));
    assert!(stderr(&r).contains(&missing), "{}", text(&r));
    assert_nothing_left(&out2);
}

#[test]
fn first_signal_flushes_and_exits_0_second_exits_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let mut conn = create_db(&db, 4096);
    let dest = Dest::file(&dir.path().join("replica"));
    // No poll due for an hour after the first: only the signal's flush can
    // ship the commit below.
    let w = dest.watch(&[&db], &["--sync-interval", "1h"]);
    dest.wait_for_txid("s", 1, Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(300));
    insert(&mut conn, 5, 100, 1);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        dest.max_txid("s"),
        1,
        "the commit is not shipped before the signal"
    );
    let (code, err) = w.stop();
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("everything committed was stored"), "{err}");
    assert_eq!(
        dest.max_txid("s"),
        2,
        "the commit before the signal was shipped"
    );

    // With a shutdown that cannot finish (an unwritable spool folder), a
    // second signal ends the process at once.
    let w = dest.watch(
        &[&db],
        &["--sync-interval", "50ms", "--shutdown-timeout", "1h"],
    );
    dest.wait_for_txid("s", 2, Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(300));
    std::fs::remove_dir_all(dir.path().join(".s.db-walsync")).unwrap();
    std::fs::write(dir.path().join(".s.db-walsync"), b"x").unwrap();
    insert(&mut conn, 5, 100, 2);
    w.interrupt();
    std::thread::sleep(Duration::from_millis(500));
    w.interrupt();
    let started = Instant::now();
    let (code, err) = w.wait();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("second signal"), "{err}");
}

#[test]
fn an_object_holding_other_txids_than_its_name_is_damage() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("m.db");
    create_db(&db, 4096);
    let dest = Dest::file(&dir.path().join("replica"));
    dest.replicate_commits(&db, "m", 3, 1, 100);
    // Put TXID 3's file (and its metadata) where TXID 4's belongs.
    let level0 = dir.path().join("replica/m/ltx/0");
    let meta0 = dir.path().join("replica/.walsync-meta/m/ltx/0");
    for folder in [&level0, &meta0] {
        let ext = if folder == &meta0 {
            ".ltx.json"
        } else {
            ".ltx"
        };
        let name = |t: u64| folder.join(format!("{t:016x}-{t:016x}{ext}"));
        std::fs::copy(name(3), name(4)).unwrap();
    }
    let out = dir.path().join("out.db");
    let r = dest.restore("m", &out, &[]);
    assert_eq!(code(&r), 5, "{}", text(&r));
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("but its name says"),
        "{}",
        text(&r)
    );
    let v = dest.walsync(&["verify", "m", "-b", &dest.url]);
    assert_eq!(code(&v), 5, "{}", text(&v));
    assert!(
        String::from_utf8_lossy(&v.stdout).contains("0000000000000004-0000000000000004.ltx"),
        "{}",
        text(&v)
    );
}

/// A `[[databases]]` entry's `name` is the database's replica name for
/// every command, not only `watch`: `snapshot` of that file stores under it,
/// and `restore` and `verify` accept the file's path for it.
#[test]
fn snapshot_restore_and_verify_use_the_config_name() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let db = data.join("main.db");
    let mut conn = create_db(&db, 4096);
    insert(&mut conn, 5, 100, 1);
    let replica = dir.path().join("replica");
    let config = dir.path().join("walsync.toml");
    std::fs::write(
        &config,
        format!(
            "[s3]\nbucket = \"file://{}\"\n[[databases]]\npath = \"{}\"\nname = \"primary\"\n",
            replica.display(),
            db.display()
        ),
    )
    .unwrap();
    let cfg = config.to_str().unwrap();
    let out = walsync(&["snapshot", db.to_str().unwrap(), "--config", cfg], &[]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("stored as primary"),
        "{}",
        text(&out)
    );
    let dest = Dest::file(&replica);
    assert!(dest.max_txid("primary") >= 1, "the replica holds 'primary'");
    assert_eq!(dest.max_txid("main"), 0, "nothing under the file stem");
    let restored = dir.path().join("restored.db");
    let out = walsync(
        &[
            "restore",
            db.to_str().unwrap(),
            "-o",
            restored.to_str().unwrap(),
            "--config",
            cfg,
        ],
        &[],
    );
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(row_count(&restored), 5);
    let out = walsync(&["verify", db.to_str().unwrap(), "--config", cfg], &[]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("primary: ok"),
        "{}",
        text(&out)
    );
}

/// A config file holds secrets, and a mistake may put one anywhere: as a
/// value of an unknown key, of the wrong type, as a key, alone on a line,
/// unquoted, in an unclosed string, or in a Litestream YAML passed by
/// mistake. The error says where, never what.
#[test]
fn config_errors_never_show_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY";
    let configs = [
        format!("[s3]\nbucket = \"s3://b/x\"\nsecret_access_key = \"{secret}\"\n"),
        format!("[retry]\nmax_retries = \"{secret}\"\n"),
        format!("[sync]\nsync_interval = \"{secret}\"\n"),
        format!("{secret}\n"),
        format!("[s3]\nbucket = \"s3://b/x\"\nsecret_access_key = {secret}\n"),
        format!("[s3]\nbucket = \"{secret}\n"),
        format!("[s3]\nbucket = '{secret}\n"),
        format!("[[databases]]\npath = \"/x.db\"\n\"{secret}\" = 1\n"),
        format!("[s3]\nbucket = \"s3://b/x\"\n[s3.{secret}]\n"),
        format!(
            "dbs:\n  - path: /var/lib/app.db\n    replicas:\n      - url: s3://b/app\n        access-key-id: AKIAEXAMPLE\n        secret-access-key: {secret}\n"
        ),
    ];
    let path = dir.path().join("walsync.toml");
    for config in &configs {
        std::fs::write(&path, config).unwrap();
        let out = walsync(&["list", "--config", path.to_str().unwrap()], &[]);
        assert_eq!(code(&out), 2, "{}", text(&out));
        let all = text(&out);
        assert!(all.contains("line "), "says where: {all}");
        for part in secret.split('/') {
            assert!(!all.contains(part), "{config}\nshowed a secret: {all}");
        }
    }
    std::fs::write(&path, &configs[9]).unwrap();
    let out = walsync(&["list", "--config", path.to_str().unwrap()], &[]);
    assert!(text(&out).contains("Litestream YAML"), "{}", text(&out));
}

#[test]
fn papercuts_help_version_litestream_flags_and_unknown_commands() {
    for args in [&["-h"][..], &["restore", "-h"], &["--help"]] {
        let out = walsync(args, &[]);
        assert_eq!(code(&out), 0, "{args:?}: {}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage"),
            "{args:?}: {}",
            text(&out)
        );
    }
    for args in [&["--version"][..], &["-V"]] {
        let out = walsync(args, &[]);
        assert_eq!(code(&out), 0, "{args:?}: {}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("walsync"),
            "{}",
            text(&out)
        );
    }
    let out = walsync(&["frobnicate"], &[]);
    assert_eq!(code(&out), 2);
    assert!(
        stderr(&out).contains("unknown command 'frobnicate'"),
        "{}",
        text(&out)
    );
    assert!(
        stderr(&out).contains("watch, snapshot, restore"),
        "{}",
        text(&out)
    );
    for (flag, hint) in [
        ("-config", "use --config"),
        ("-if-db-not-exists", "use --if-db-not-exists"),
        ("-timestamp", "use --point-in-time"),
    ] {
        let out = walsync(&["restore", "app", "-o", "x.db", flag, "v"], &[]);
        assert_eq!(code(&out), 2, "{flag}: {}", text(&out));
        assert!(stderr(&out).contains(hint), "{flag}: {}", text(&out));
    }
    // An endpoint without a scheme is refused at once, saying so.
    let started = Instant::now();
    let out = walsync(
        &["list", "-b", "s3://bkt", "--endpoint", "localhost:9000"],
        &[],
    );
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert!(
        stderr(&out).contains("has no scheme: write http://localhost:9000"),
        "{}",
        text(&out)
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn papercuts_txids_future_times_folders_and_what_a_restore_says() {
    let dir = tempfile::tempdir().unwrap();
    let dest = Dest::file(&dir.path().join("replica"));
    let db = dir.path().join("app.db");
    let mut conn = create_db(&db, 4096);
    dest.snapshot(&db);
    for id in 1..=20 {
        insert_ids(&mut conn, id..=id, 100);
        dest.snapshot(&db);
    }
    // TXID 16 written three ways restores one state; Litestream's 16-digit
    // form is hex, never decimal.
    let mut restored = Vec::new();
    for form in ["0x0000000000000010", "0000000000000010", "16"] {
        let out = dir.path().join(format!("t-{form}.db"));
        let r = dest.restore("app", &out, &["--txid", form]);
        assert!(r.status.success(), "{form}: {}", text(&r));
        assert!(
            stderr(&r).contains("to TXID 0x0000000000000010 committed at 20"),
            "{}",
            text(&r)
        );
        restored.push(out);
    }
    assert_same_bytes(&restored[0], &restored[1]);
    assert_same_bytes(&restored[0], &restored[2]);
    // list prints TXIDs in the form restore takes back.
    let l = dest.walsync(&["list", "-b", &dest.url]);
    assert!(
        String::from_utf8_lossy(&l.stdout).contains("0x0000000000000015"),
        "{}",
        text(&l)
    );
    // A time in the future is an error, not the latest state.
    let out = dir.path().join("future.db");
    let r = dest.restore("app", &out, &["--point-in-time", "2999-01-01T00:00:00Z"]);
    assert_eq!(code(&r), 6, "{}", text(&r));
    assert!(stderr(&r).contains("in the future"), "{}", text(&r));
    assert_nothing_left(&out);
    // A folder as the output is refused before anything is read.
    let r = dest.restore("app", dir.path(), &["--force"]);
    assert_eq!(code(&r), 2, "{}", text(&r));
    assert!(stderr(&r).contains("is a folder"), "{}", text(&r));
}
