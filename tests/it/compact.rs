//! Compaction, retention and `delete`: the real binary on real databases,
//! to a folder replica, with short intervals.

use crate::harness::*;
use std::path::Path;
use std::time::Duration;

const ROW: usize = 200;

fn config(dir: &Path, url: &str, retention: &str) -> std::path::PathBuf {
    let path = dir.join("walsync.toml");
    std::fs::write(
        &path,
        format!("[s3]\nbucket = \"{url}\"\n[retention]\n{retention}\n"),
    )
    .unwrap();
    path
}

/// The LTX files of `name`, by level.
fn levels(dest: &Dest, name: &str) -> std::collections::BTreeMap<u32, usize> {
    let mut by_level = std::collections::BTreeMap::new();
    for f in dest.files(name) {
        *by_level.entry(f.id.level).or_insert(0) += 1;
    }
    by_level
}

#[test]
fn compact_merges_levels_and_deletes_only_what_no_promised_restore_needs() {
    let dir = tempfile::tempdir().unwrap();
    let dest = Dest::file(&dir.path().join("replica"));
    let db = dir.path().join("app.db");
    let mut conn = create_db(&db, 4096);
    insert_ids(&mut conn, 1..=5, ROW);
    let w = dest.watch(
        &[&db],
        &["--sync-interval", "50ms", "--snapshot-interval", "2s"],
    );
    let mut txid = dest.wait_for_txid("app", 1, Duration::from_secs(20));
    // Old history: 20 commits, then the window's: 10 more, 3 s later (a
    // snapshot is taken meanwhile).
    for id in 6..=25 {
        insert_ids(&mut conn, id..=id, ROW);
        txid = dest.wait_for_txid("app", txid + 1, Duration::from_secs(20));
    }
    std::thread::sleep(Duration::from_secs(3));
    let window_from = txid + 1;
    for id in 26..=35 {
        insert_ids(&mut conn, id..=id, ROW);
        txid = dest.wait_for_txid("app", txid + 1, Duration::from_secs(20));
    }
    w.stop_clean();
    let before = dest.files("app").len();
    let cfg = config(
        dir.path(),
        &dest.url,
        "pitr_window = \"2s\"\nl0_retention = \"1s\"\ncompaction_levels = [\"1s\", \"1h\"]",
    );
    let cfg = cfg.to_str().unwrap();
    // A dry run changes nothing.
    let dry = dest.walsync(&["compact", "app", "--config", cfg]);
    assert!(dry.status.success(), "{}", text(&dry));
    assert!(text(&dry).contains("would delete"), "{}", text(&dry));
    assert_eq!(dest.files("app").len(), before);
    // Every TXID in the window, as restored before the pass.
    let restore_at = |t: u64, tag: &str| {
        let out = dir.path().join(format!("{tag}-{t}.db"));
        let r = dest.restore("app", &out, &["--txid", &t.to_string()]);
        assert!(r.status.success(), "TXID {t}: {}", text(&r));
        out
    };
    let expected: Vec<_> = (window_from..=txid)
        .map(|t| (t, restore_at(t, "before")))
        .collect();

    // Written a moment ago: a watch may be writing it.
    let refused = dest.walsync(&["compact", "app", "--config", cfg, "--force"]);
    assert_eq!(code(&refused), 2, "{}", text(&refused));
    assert!(
        text(&refused).contains("--even-if-active"),
        "{}",
        text(&refused)
    );
    assert_eq!(dest.files("app").len(), before);
    let done = dest.walsync(&[
        "compact",
        "app",
        "--config",
        cfg,
        "--force",
        "--even-if-active",
    ]);
    assert!(done.status.success(), "{}", text(&done));
    let after = levels(&dest, "app");
    assert!(
        after.get(&1).copied().unwrap_or(0) >= 1,
        "a level-1 file: {after:?}"
    );
    assert!(
        dest.files("app").len() < before,
        "{before} -> {after:?}\n{}",
        text(&done)
    );
    for (t, want) in &expected {
        assert_same_bytes(want, &restore_at(*t, "after"));
    }
    let v = dest.walsync(&["verify", "app", "-b", &dest.url]);
    assert!(v.status.success(), "{}", text(&v));
    // The latest state is the database's.
    drop(conn);
    checkpoint_truncate(&db);
    let latest = dir.path().join("latest.db");
    let r = dest.restore("app", &latest, &[]);
    assert!(r.status.success(), "{}", text(&r));
    assert_same_bytes(&db, &latest);
    // A second pass right after has nothing to compact.
    let again = dest.walsync(&[
        "compact",
        "app",
        "--config",
        cfg,
        "--force",
        "--even-if-active",
        "--json",
    ]);
    assert!(again.status.success(), "{}", text(&again));
    let report: serde_json::Value = serde_json::from_slice(&again.stdout).expect("one JSON object");
    assert_eq!(
        report["compacted"].as_array().map(Vec::len),
        Some(0),
        "{report}"
    );
}

#[test]
fn delete_removes_one_replica_name_only_with_force() {
    let dir = tempfile::tempdir().unwrap();
    let dest = Dest::file(&dir.path().join("replica"));
    for name in ["gone", "stays"] {
        let db = dir.path().join(format!("{name}.db"));
        let mut conn = create_db(&db, 4096);
        insert_ids(&mut conn, 1..=3, ROW);
        dest.snapshot(&db);
    }
    let dry = dest.walsync(&["delete", "gone", "-b", &dest.url]);
    assert!(dry.status.success(), "{}", text(&dry));
    assert!(!dest.files("gone").is_empty());
    let done = dest.walsync(&["delete", "gone", "-b", &dest.url, "--force"]);
    assert!(done.status.success(), "{}", text(&done));
    assert!(dest.files("gone").is_empty());
    assert!(!dest.files("stays").is_empty());
    let again = dest.walsync(&["delete", "gone", "-b", &dest.url, "--force"]);
    assert_eq!(code(&again), 6, "{}", text(&again));
}

/// The retention of the watch tests: a 3 s window, level 0 kept 1 s,
/// levels 1 and 2 every 1 s and 2 s, snapshots 4 s.
const SHORT_RETENTION: &str = "pitr_window = \"3s\"\nl0_retention = \"1s\"\ncompaction_levels = [\"1s\", \"2s\"]\nsnapshot_retention = \"4s\"";

/// `watch` with [retention] from `cfg`, a 100 ms sync and 2 s snapshots.
fn watch_compacting(dest: &Dest, db: &Path, cfg: &Path) -> Watcher {
    let cfg = cfg.to_str().unwrap();
    dest.watch(
        &[db],
        &[
            "--config",
            cfg,
            "--sync-interval",
            "100ms",
            "--snapshot-interval",
            "2s",
        ],
    )
}

/// Restores `name` at every TXID of `txids` and checks each is a state the
/// source held (rows 1..=k, k growing with the TXID). Returns the counts.
fn restore_each(dest: &Dest, dir: &Path, name: &str, txids: &[u64]) -> Vec<i64> {
    let mut counts = Vec::new();
    for t in txids {
        let out = dir.join(format!("at-{t}.db"));
        let r = dest.restore(name, &out, &["--txid", &t.to_string(), "--force"]);
        assert!(r.status.success(), "TXID {t}: {}", text(&r));
        let k = rows_consistent(&out, ROW);
        if let Some(prev) = counts.last() {
            assert!(k >= *prev, "TXID {t} holds {k} rows, an earlier one {prev}");
        }
        counts.push(k);
    }
    counts
}

#[test]
fn watch_keeps_the_replica_bounded_and_every_window_txid_restores() {
    let server = S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    let dest = Dest::s3(&server, "bounded", "r");
    let db = dir.path().join("app.db");
    let mut conn = create_db(&db, 4096);
    let cfg = config(dir.path(), &dest.url, SHORT_RETENTION);
    let w = watch_compacting(&dest, &db, &cfg);
    // About 12 s of commits, one row each; when each TXID showed up.
    let mut seen: Vec<(u64, std::time::Instant)> = Vec::new();
    let mut most_files = 0;
    let started = std::time::Instant::now();
    let mut id = 0;
    while started.elapsed() < Duration::from_secs(12) {
        id += 1;
        insert_ids(&mut conn, id..=id, ROW);
        std::thread::sleep(Duration::from_millis(30));
        if id % 10 == 0 {
            let files = dest.files("app");
            let max = files.iter().map(|f| f.id.max_txid).max().unwrap_or(0);
            if seen.last().is_none_or(|(t, _)| *t < max) {
                seen.push((max, std::time::Instant::now()));
            }
            if started.elapsed() > Duration::from_secs(6) {
                most_files = most_files.max(files.len());
            }
        }
    }
    let total = id;
    let stopped = std::time::Instant::now();
    let (status, log) = w.stop();
    assert_eq!(status, 0, "{log}");
    // A clean stop ships every commit.
    let latest = dest.max_txid("app");
    assert!(
        log.contains("compacted"),
        "watch compacts on its own:\n{log}"
    );
    // Bounded: 12 s at a 100 ms sync stored about 120 level-0 files; a 3 s
    // window keeps about 30 of them, plus a few compactions and snapshots.
    assert!(latest > 60, "only {latest} TXIDs were stored");
    assert!(
        most_files < 70,
        "the replica held {most_files} files in the last 6 s:\n{log}"
    );
    // Every TXID that was stored well inside the window restores to a
    // state the source held, in order.
    let window_from = seen
        .iter()
        .find(|(_, at)| stopped.duration_since(*at) < Duration::from_secs(2))
        .map_or(latest, |(t, _)| *t);
    let txids: Vec<u64> = (window_from..=latest).collect();
    assert!(txids.len() >= 5, "window {window_from}..={latest}");
    let counts = restore_each(&dest, dir.path(), "app", &txids);
    assert_eq!(
        counts.last().copied(),
        Some(total),
        "the latest TXID holds every row"
    );
    // `list NAME` shows that range (or more), `list` the levels.
    let one = dest.walsync(&["list", "app", "-b", &dest.url, "--json"]);
    assert!(one.status.success(), "{}", text(&one));
    let one: serde_json::Value = serde_json::from_slice(&one.stdout).unwrap();
    assert!(
        one["oldest"]["txid"].as_u64().unwrap() <= window_from,
        "{one}"
    );
    assert_eq!(one["newest"]["txid"].as_u64(), Some(latest), "{one}");
    let all = dest.walsync(&["list", "-b", &dest.url, "--json"]);
    let all: serde_json::Value = serde_json::from_slice(&all.stdout).unwrap();
    let levels: Vec<u64> = all[0]["levels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["level"].as_u64().unwrap())
        .collect();
    assert_eq!(levels, vec![0, 1, 2, 9], "{all}");
    let v = dest.walsync(&["verify", "app", "-b", &dest.url]);
    assert!(v.status.success(), "{}", text(&v));
}

/// Waits until `relay` saw no request for `quiet` (at most `limit`).
fn wait_until_quiet(relay: &Relay, quiet: Duration, limit: Duration) {
    let started = std::time::Instant::now();
    let mut count = relay.requests().len();
    let mut since = std::time::Instant::now();
    while since.elapsed() < quiet {
        assert!(
            started.elapsed() < limit,
            "requests never stopped: {:?}",
            relay
                .requests()
                .iter()
                .rev()
                .take(5)
                .map(|r| (&r.method, &r.target))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(200));
        let now = relay.requests().len();
        if now != count {
            (count, since) = (now, std::time::Instant::now());
        }
    }
}

#[test]
fn idle_databases_make_no_request_once_their_writes_are_compacted() {
    let server = S3Server::start();
    let relay = Relay::start(&server.endpoint, |_, _| Action::Forward);
    let dir = tempfile::tempdir().unwrap();
    let dest = Dest::s3(&server, "idle", "r").via(&relay);
    let busy = dir.path().join("busy.db");
    let quiet = dir.path().join("quiet.db");
    let mut conn = create_db(&busy, 4096);
    insert_ids(&mut create_db(&quiet, 4096), 1..=1, ROW);
    let cfg = config(dir.path(), &dest.url, SHORT_RETENTION);
    let cfg = cfg.to_str().unwrap();
    let w = dest.watch(
        &[&busy, &quiet],
        &[
            "--config",
            cfg,
            "--sync-interval",
            "100ms",
            "--snapshot-interval",
            "2s",
        ],
    );
    dest.wait_for_txid("quiet", 1, Duration::from_secs(20));
    for id in 1..=40 {
        insert_ids(&mut conn, id..=id, ROW);
        std::thread::sleep(Duration::from_millis(75));
    }
    // The last writes are shipped, snapshotted (2 s) and answered by one
    // pass (1 s after the previous); then nothing happens until the next
    // write, however the window moves.
    wait_until_quiet(&relay, Duration::from_secs(6), Duration::from_secs(20));
    let from = relay.requests().len();
    std::thread::sleep(Duration::from_secs(60));
    let idle: Vec<(String, String)> = relay.requests()[from..]
        .iter()
        .map(|r| (r.method.clone(), r.target.clone()))
        .collect();
    let (status, log) = w.stop();
    assert_eq!(status, 0, "{log}");
    assert!(
        idle.is_empty(),
        "{} requests in 60 s idle: {idle:?}\n{log}",
        idle.len()
    );
    assert!(log.contains("compacted"), "{log}");
    let before_idle = &relay.requests()[..from];
    assert!(
        before_idle
            .iter()
            .any(|r| r.method == "POST" && r.target.contains("delete")),
        "retention deletes in batches (DeleteObjects)"
    );
    assert!(
        !before_idle.iter().any(|r| r.method == "DELETE"),
        "no single DELETE while batches work"
    );
}

/// Puts `n` small objects named as level-0 files of `name`.
fn put_level0_keys(storage: &dyn walsync::storage::Storage, name: &str, n: u64) {
    for i in 1..=n {
        let id = walsync::storage::LtxId {
            level: 0,
            min_txid: i,
            max_txid: i,
        };
        let key = storage.layout().ltx_key(name, id);
        put_object(storage, &key, b"x", &Default::default());
    }
}

#[test]
fn deletes_go_a_thousand_keys_a_request_or_one_by_one_where_batches_are_not_implemented() {
    let server = S3Server::start();
    let batches = Relay::start(&server.endpoint, |_, _| Action::Forward);
    let no_batches = Relay::start_by_target(&server.endpoint, |_, method, target| {
        if method == "POST" && target.contains("delete") {
            Action::NotImplemented
        } else {
            Action::Forward
        }
    });
    let dest = Dest::s3(&server, "many", "r");
    put_level0_keys(dest.storage().as_ref(), "big", 1001);
    put_level0_keys(dest.storage().as_ref(), "small", 3);

    let big = Dest::s3(&server, "many", "r").via(&batches);
    let done = big.walsync(&["delete", "big", "-b", &big.url, "--force"]);
    assert!(done.status.success(), "{}", text(&done));
    assert!(dest.files("big").is_empty());
    let posts = batches
        .requests()
        .iter()
        .filter(|r| r.method == "POST")
        .count();
    assert_eq!(posts, 2, "1,001 keys: two DeleteObjects requests");
    assert!(!batches.requests().iter().any(|r| r.method == "DELETE"));

    let small = Dest::s3(&server, "many", "r").via(&no_batches);
    let done = small.walsync(&["delete", "small", "-b", &small.url, "--force"]);
    assert!(done.status.success(), "{}", text(&done));
    assert!(dest.files("small").is_empty());
    let methods: Vec<String> = no_batches
        .requests()
        .iter()
        .map(|r| r.method.clone())
        .collect();
    assert_eq!(
        methods.iter().filter(|m| *m == "DELETE").count(),
        3,
        "one DELETE a key after the refused batch: {methods:?}"
    );
}

/// Whether an S3 request stores a compacted file or deletes in a batch
/// (`<name>/<level %04x>/…` keys; level 0 and 9 are watch's own).
fn compaction_request(method: &str, target: &str) -> bool {
    let compacted = (1..=8).any(|l| target.contains(&format!("/{l:04x}/")));
    (method == "PUT" && compacted) || (method == "POST" && target.contains("delete"))
}

/// A writer thread committing one row every 20 ms until told to stop;
/// returns how many it committed.
fn writer(
    db: &Path,
) -> (
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    std::thread::JoinHandle<i64>,
) {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (db, flag) = (db.to_path_buf(), stop.clone());
    let t = std::thread::spawn(move || {
        let mut conn = app_conn(&db);
        let mut id = 0;
        while !flag.load(std::sync::atomic::Ordering::SeqCst) {
            id += 1;
            insert_ids(&mut conn, id..=id, ROW);
            std::thread::sleep(Duration::from_millis(20));
        }
        id
    });
    (stop, t)
}

#[test]
fn kill_9_during_compaction_and_deletion_leaves_a_replica_that_restores() {
    let server = S3Server::start();
    // Compaction's stores and deletes take 700 ms: most kills land inside one.
    let relay = Relay::start_by_target(&server.endpoint, |_, method, target| {
        if compaction_request(method, target) {
            Action::Delay(Duration::from_millis(700))
        } else {
            Action::Forward
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let dest = Dest::s3(&server, "kills", "r").via(&relay);
    let db = dir.path().join("app.db");
    drop(create_db(&db, 4096));
    let cfg = config(dir.path(), &dest.url, SHORT_RETENTION);
    let (stop, writing) = writer(&db);
    let mut rng = Rng::new(9);
    for _ in 0..6 {
        let w = watch_compacting(&dest, &db, &cfg);
        std::thread::sleep(Duration::from_millis(1500 + rng.below(2000)));
        w.kill9();
    }
    let cut_during_a_pass = relay
        .requests()
        .iter()
        .filter(|r| compaction_request(&r.method, &r.target))
        .count();
    assert!(cut_during_a_pass >= 3, "compaction ran between the kills");
    // Each replica left behind restores; the next start carries on.
    let v = dest.walsync(&["verify", "app", "-b", &dest.url]);
    assert!(v.status.success(), "after the kills: {}", text(&v));
    let w = watch_compacting(&dest, &db, &cfg);
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let total = writing.join().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let (status, log) = w.stop();
    assert_eq!(status, 0, "{log}");
    assert!(log.contains("compacted"), "the next start compacts:\n{log}");
    let v = dest.walsync(&["verify", "app", "-b", &dest.url]);
    assert!(v.status.success(), "{}", text(&v));
    let latest = dir.path().join("latest.db");
    let r = dest.restore("app", &latest, &[]);
    assert!(r.status.success(), "{}", text(&r));
    assert_eq!(rows_consistent(&latest, ROW), total);
    checkpoint_truncate(&db);
    assert_same_bytes(&db, &latest);
}

#[test]
fn a_restore_raced_against_compaction_is_right_or_says_run_it_again() {
    let server = S3Server::start();
    // The restores' reads are slow (not watch's), so they overlap the
    // passes' deletions.
    let slow = Relay::start(&server.endpoint, |_, method| {
        if method == "GET" {
            Action::Delay(Duration::from_millis(700))
        } else {
            Action::Forward
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let dest = Dest::s3(&server, "race", "r");
    let reader = Dest::s3(&server, "race", "r").via(&slow);
    let db = dir.path().join("app.db");
    drop(create_db(&db, 4096));
    let cfg = config(dir.path(), &dest.url, SHORT_RETENTION);
    let (stop, writing) = writer(&db);
    let w = watch_compacting(&dest, &db, &cfg);
    dest.wait_for_txid("app", 5, Duration::from_secs(20));
    let (mut right, mut again) = (0, 0);
    let started = std::time::Instant::now();
    let mut messages = std::collections::BTreeSet::new();
    while started.elapsed() < Duration::from_secs(20) {
        // The oldest TXID that restores now: the next pass deletes what it
        // reads.
        // `list NAME` reads files' times after listing, so it too may find
        // one compacted away and say to run it again (exit 6): it is.
        let listed = (0..10)
            .map(|_| dest.walsync(&["list", "app", "-b", &dest.url, "--json"]))
            .find(|out| code(out) != 6)
            .expect("list said 'run it again' ten times in a row");
        assert_eq!(code(&listed), 0, "{}", text(&listed));
        let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
        let oldest = listed["oldest"]["txid"].as_u64().unwrap().to_string();
        for target in [vec!["--txid", oldest.as_str()], vec![]] {
            let out = dir.path().join("raced.db");
            remove_if_exists(&out);
            let r = reader.restore("app", &out, &target);
            match code(&r) {
                0 => {
                    rows_consistent(&out, ROW);
                    right += 1;
                }
                6 => {
                    assert_nothing_left(&out);
                    // Changed under it, or (a TXID target) aged out of the
                    // window before it listed.
                    let said = text(&r);
                    let aged_out =
                        !target.is_empty() && said.contains("nothing to restore at that point");
                    assert!(said.contains("run it again") || aged_out, "{said}");
                    if !aged_out {
                        messages.insert(said);
                        again += 1;
                    }
                }
                c => panic!("restore exit {c}: {}", text(&r)),
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    writing.join().unwrap();
    let (status, log) = w.stop();
    assert_eq!(status, 0, "{log}");
    assert!(
        log.contains("deleted"),
        "passes deleted files meanwhile:\n{log}"
    );
    assert!(right >= 3, "{right} right, {again} told to run again");
    eprintln!("raced restores: {right} right, {again} told to run it again: {messages:?}");
}
