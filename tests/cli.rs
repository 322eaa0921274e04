//! Command-line behaviour: exit codes and messages for bad input, against the
//! real binary and a real S3 server.

mod common;
mod support;

use std::process::Command;
use std::time::{Duration, Instant};
use support::*;

fn run(args: &[&str], env: &[(String, String)]) -> std::process::Output {
    Command::new(common::walsync_bin())
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("run walsync")
}

fn code(out: &std::process::Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

#[test]
fn bundled_sqlite_is_new_enough() {
    // 3.51.3 fixed the WAL-reset corruption bug.
    let v = rusqlite::version_number();
    assert!(
        v >= 3_051_003,
        "bundled SQLite {} is older than 3.51.3",
        rusqlite::version()
    );
    let out = run(&["version"], &[]);
    assert_eq!(code(&out), 0);
    assert!(String::from_utf8_lossy(&out.stdout).contains(rusqlite::version()));
}

#[test]
fn usage_errors_exit_2_and_help_exits_0() {
    let out = run(&["watch", "--no-such-flag"], &[]);
    assert_eq!(code(&out), 2, "{}", text(&out));
    let out = run(&["frobnicate"], &[]);
    assert_eq!(code(&out), 2, "{}", text(&out));
    let out = run(&["restore", "app"], &[]); // missing -o
    assert_eq!(code(&out), 2, "{}", text(&out));
    let out = run(
        &["watch", "x.db", "-b", "s3://b", "--sync-interval", "soon"],
        &[],
    );
    assert_eq!(code(&out), 2, "{}", text(&out));
    let out = run(&["--help"], &[]);
    assert_eq!(code(&out), 0);
    assert!(String::from_utf8_lossy(&out.stdout).contains("restore"));
    let out = run(&["restore", "--help"], &[]);
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
        let out = run(&["watch", db, "-b", url], &[]);
        assert_eq!(code(&out), 2, "url {url}: {}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("s3://bucket"),
            "{}",
            text(&out)
        );
    }
    let out = run(&["watch", db], &[]);
    assert_eq!(code(&out), 2, "no bucket: {}", text(&out));
    let cfg = dir.path().join("walsync.toml");
    std::fs::write(&cfg, "[sync]\nsnapshot_intervl = 5\n").unwrap();
    let out = run(
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
    let out = run(&["watch", rollback.to_str().unwrap(), "-b", &replica], &[]);
    assert_eq!(code(&out), 3, "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("PRAGMA journal_mode=WAL"),
        "{}",
        text(&out)
    );

    let missing = dir.path().join("missing.db");
    let out = run(&["watch", missing.to_str().unwrap(), "-b", &replica], &[]);
    assert_eq!(code(&out), 3, "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.db"));
    let out = run(
        &["snapshot", missing.to_str().unwrap(), "-b", &replica],
        &[],
    );
    assert_eq!(code(&out), 3, "{}", text(&out));

    let junk = dir.path().join("junk.db");
    std::fs::write(&junk, vec![7u8; 8192]).unwrap();
    let out = run(&["watch", junk.to_str().unwrap(), "-b", &replica], &[]);
    assert_eq!(code(&out), 3, "{}", text(&out));
}

#[test]
fn wrong_secret_and_dead_endpoint_exit_4_quickly_without_secrets() {
    let server = common::S3Server::start();
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
    let out = run(&["snapshot", db, "-b", "s3://auth/x"], &env);
    assert_eq!(code(&out), 4, "{}", text(&out));
    assert!(started.elapsed() < Duration::from_secs(30));
    let all = text(&out);
    assert!(!all.contains(&wrong) && !all.contains(&server.secret_key));
    assert!(!all.contains("X-Amz-Signature") && !all.contains("X-Amz-Credential"));
    let out = run(&["list", "-b", "s3://auth/x"], &env);
    assert_eq!(code(&out), 4, "{}", text(&out));

    let mut env = server.env();
    for (k, v) in env.iter_mut() {
        if k == "AWS_ENDPOINT_URL_S3" {
            *v = format!("http://127.0.0.1:{}", common::free_port());
        }
    }
    let started = Instant::now();
    let out = run(&["watch", db, "-b", "s3://auth/x"], &env);
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
