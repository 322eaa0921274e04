//! `walsync verify` end to end: replicas written by the real binary to a
//! real S3 server (s3s-fs, SigV4 checked) and to folders, checked healthy,
//! then damaged one way at a time.

use crate::harness::*;
use std::io::Cursor;
use std::path::Path;
use std::time::Duration;
use walsync::storage::Storage;

const NAME: &str = "app";

/// Replicates a fresh database with a few transactions into `dest`: a
/// level-9 snapshot at TXID 1, then level-0 files 2..=6.
fn make_replica(dest: &Dest, dir: &Path) {
    let db = dir.join("src").join(format!("{NAME}.db"));
    let mut conn = create_db(&db, 4096);
    let w = dest.watch(&[&db], &["--sync-interval", "50ms"]);
    dest.wait_for_txid(NAME, 1, Duration::from_secs(30));
    for i in 0..5u64 {
        let want = dest.max_txid(NAME) + 1;
        insert(&mut conn, 3, 700, i * 100);
        dest.wait_for_txid(NAME, want, Duration::from_secs(30));
    }
    w.stop_clean();
    let files = dest.files(NAME);
    assert_eq!(files.iter().filter(|f| f.id.level == 9).count(), 1);
    assert!(files.iter().filter(|f| f.id.level == 0).count() >= 5);
}

/// Copies every object (with its metadata) from `from` to `to`.
fn copy_all(from: &dyn Storage, to: &dyn Storage) {
    for o in from.list("").expect("list") {
        let (body, meta) = read_object(from, &o.key);
        put_object(to, &o.key, &body, &meta);
    }
}

fn verify(dest: &Dest, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["verify"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-b", &dest.url]);
    let out = dest.walsync(&all);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn key_of(dest: &Dest, level: u32, nth: usize) -> String {
    dest.files(NAME)
        .into_iter()
        .filter(|f| f.id.level == level)
        .nth(nth)
        .unwrap_or_else(|| panic!("no file #{nth} at level {level}"))
        .key
}

/// Each damage on a fresh copy of a healthy replica: the exit code and the
/// key named in the output.
#[test]
fn verify_s3_healthy_then_each_damage() {
    let server = S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    let base = Dest::s3(&server, "verify", "base");
    make_replica(&base, dir.path());

    let (code, out, err) = verify(&base, &[NAME]);
    assert_eq!(code, 0, "healthy replica:\n{out}\n{err}");
    assert!(out.contains("app: ok"), "{out}");

    let (code, out, err) = verify(&base, &[NAME, "--json"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON object");
    assert_eq!(v["name"], NAME);
    assert_eq!(v["ok"], true);
    assert_eq!(v["latest_txid"], base.max_txid(NAME));
    assert_eq!(v["files_checked"], base.files(NAME).len());
    assert!(v["snapshot"].as_str().unwrap().starts_with("app/0009/"));

    type Damage = fn(&Dest) -> String;
    let damages: [(&str, i32, Damage); 5] = [
        ("flipped byte in a level-0 file", 5, |d| {
            let key = key_of(d, 0, 2);
            flip_byte(d.storage().as_ref(), &key);
            key
        }),
        ("flipped byte in the snapshot", 5, |d| {
            let key = key_of(d, 9, 0);
            flip_byte(d.storage().as_ref(), &key);
            key
        }),
        ("deleted middle file", 5, |d| {
            let key = key_of(d, 0, 2);
            d.storage().delete(&key).unwrap();
            key
        }),
        ("deleted snapshot", 6, |d| {
            let key = key_of(d, 9, 0);
            d.storage().delete(&key).unwrap();
            key
        }),
        ("wrong x-amz-meta-sha256", 5, |d| {
            let key = key_of(d, 0, 1);
            let s = d.storage();
            let (body, mut meta) = read_object(s.as_ref(), &key);
            meta.sha256 = Some("00".repeat(32));
            put_object(s.as_ref(), &key, &body, &meta);
            key
        }),
    ];
    for (i, (what, want, damage)) in damages.iter().enumerate() {
        let d = Dest::s3(&server, "verify", &format!("case{i}"));
        copy_all(base.storage().as_ref(), d.storage().as_ref());
        let (code, out, err) = verify(&d, &[NAME]);
        assert_eq!(code, 0, "copy before {what}:\n{out}\n{err}");
        let key = damage(&d);
        let (code, out, err) = verify(&d, &[NAME]);
        assert_eq!(code, *want, "{what}: exit code\n{out}\n{err}");
        assert!(
            out.contains(&key),
            "{what}: the output names {key}\n{out}\n{err}"
        );
        let (code, out, _) = verify(&d, &[NAME, "--json"]);
        assert_eq!(code, *want, "{what} (--json)");
        let v: serde_json::Value = serde_json::from_str(out.trim()).expect("JSON");
        assert_eq!(v["ok"], false, "{what}: {out}");
        let problems = v["problems"].as_array().expect("problems");
        assert!(
            problems.iter().any(|p| p["key"] == key.as_str()),
            "{what}: a problem names {key}: {out}"
        );
    }
}

/// `--all` over a folder replica: every database is checked, the worst
/// result decides the exit code, and a missing name is "not restorable".
#[test]
fn verify_all_file_replica() {
    let dir = tempfile::tempdir().unwrap();
    let replica = dir.path().join("replica");
    let dest = Dest::file(&replica);
    make_replica(&dest, &dir.path().join("one"));
    // A second database under another name: copy the first one's tree.
    let from = replica.join(NAME);
    let to = replica.join("tenant/b");
    copy_tree(&from, &to);

    let (code, out, err) = verify(&dest, &["--all"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("app: ok"), "{out}");
    assert!(out.contains("tenant/b: ok"), "{out}");
    assert!(out.contains("verified 2 database(s)"), "{out}");

    let (code, out, _) = verify(&dest, &["--all", "--json", "--parallelism", "2"]);
    assert_eq!(code, 0);
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(lines.len(), 2, "{out}");

    // Damage a level-0 file of tenant/b (copied without walsync's metadata
    // sidecars, like a Litestream file replica, so with no SHA-256 to keep:
    // the LTX checksum catches it).
    let key = dest.keys_at("tenant/b", 0).swap_remove(1);
    flip_byte(dest.storage().as_ref(), &key);
    let (code, out, err) = verify(&dest, &["--all"]);
    assert_eq!(code, 5, "{out}\n{err}");
    assert!(out.contains(&key), "{out}");
    assert!(out.contains("app: ok"), "{out}");
    assert!(err.contains("integrity error"), "{err}");

    let (code, out, err) = verify(&dest, &["nosuch"]);
    assert_eq!(code, 6, "{out}\n{err}");
    assert!(out.contains("NO BACKUP"), "{out}");

    // An empty replica is not a healthy one.
    let empty = Dest::file(&dir.path().join("empty"));
    let (code, out, err) = verify(&empty, &["--all"]);
    assert_eq!(code, 6, "{out}\n{err}");
    assert!(err.contains("no databases"), "{err}");
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

/// Every single-byte corruption of a stored object is caught once the
/// object's SHA-256 metadata is checked too, including the few flips inside
/// LZ4 data that still decompress to the same page (which the LTX format's
/// own checksum, taken over uncompressed pages, cannot see).
#[test]
fn every_flipped_byte_of_a_stored_object_fails_verify() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("tiny.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch(
        "PRAGMA page_size=512; PRAGMA journal_mode=WAL; CREATE TABLE t(x); INSERT INTO t VALUES ('hello');",
    )
    .unwrap();
    drop(conn);
    let root = dir.path().join("replica");
    let url = format!("file://{}", root.display());
    let run = |args: &[&str]| walsync(args, &[]);
    assert!(run(&["snapshot", db.to_str().unwrap(), "-b", &url])
        .status
        .success());
    let object = root.join("tiny/ltx/9/0000000000000001-0000000000000001.ltx");
    let good = std::fs::read(&object).unwrap();
    assert!(good.len() < 4096, "a small object: {} bytes", good.len());
    assert_eq!(run(&["verify", "tiny", "-b", &url]).status.code(), Some(0));
    for pos in 0..good.len() {
        let mut bad = good.clone();
        bad[pos] ^= 0x01;
        std::fs::write(&object, &bad).unwrap();
        let out = run(&["verify", "tiny", "-b", &url]);
        assert_eq!(
            out.status.code(),
            Some(5),
            "flip at byte {pos}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    std::fs::write(&object, &good).unwrap();
    assert_eq!(run(&["verify", "tiny", "-b", &url]).status.code(), Some(0));
}

/// A file whose pages do not produce the post-apply checksum its writer
/// recorded, although every recorded checksum chains and the file itself is
/// well formed (valid CRC-64, matching SHA-256): what a database replaced
/// under an older walsync left behind. `restore` refuses it with exit 5;
/// `verify` must too, naming the same object.
#[test]
fn verify_rejects_pages_that_do_not_produce_the_recorded_checksum() {
    let server = S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    let dest = Dest::s3(&server, "verify", "pages");
    make_replica(&dest, dir.path());
    let key = key_of(&dest, 0, 2);
    let s = dest.storage();
    let (body, meta) = read_object(s.as_ref(), &key);
    let (header, mut pages, _) = walsync::ltx::decode_all(Cursor::new(&body)).expect("decode");
    // Another page's bytes under a page number of the file: a well-formed
    // file with the wrong content.
    let last = pages.len() - 1;
    pages[last].1[200] ^= 0x01;
    let mut enc = walsync::ltx::Encoder::new(Vec::new(), header).expect("encoder");
    for (pgno, page) in &pages {
        enc.write_page(*pgno, page).expect("page");
    }
    let (_, forged) = enc.finish(0).expect("finish");
    let mut meta = meta;
    meta.sha256 = Some(walsync::fsutil::hex(&sha256(&forged)));
    put_object(s.as_ref(), &key, &forged, &meta);

    let out = dir.path().join("restored.db");
    let r = dest.restore(NAME, &out, &[]);
    assert_eq!(r.status.code(), Some(5), "restore: {}", text(&r));
    assert!(
        String::from_utf8_lossy(&r.stderr).contains(&key),
        "{}",
        text(&r)
    );

    let (code, out, err) = verify(&dest, &[NAME]);
    assert_eq!(
        code, 5,
        "verify must reject what restore rejects:\n{out}\n{err}"
    );
    assert!(out.contains(&key), "verify names {key}:\n{out}");
    let (code, out, _) = verify(&dest, &[NAME, "--json"]);
    assert_eq!(code, 5);
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("JSON");
    let problems = v["problems"].as_array().expect("problems");
    assert!(
        problems
            .iter()
            .any(|p| p["key"] == key.as_str() && p["kind"] == "checksum_chain"),
        "{out}"
    );
}

fn sha256(bytes: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).to_vec()
}
