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

    let done = dest.walsync(&["compact", "app", "--config", cfg, "--force"]);
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
    let again = dest.walsync(&["compact", "app", "--config", cfg, "--force", "--json"]);
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
