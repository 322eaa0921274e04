//! The `Storage` contract, written once and run against both backends: the
//! file backend on a temporary folder, the S3 backend on a real s3s-fs
//! server that checks SigV4 signatures.

use crate::harness::{free_port, noise, put_object, Action, Relay, S3Server};
use sha2::{Digest, Sha256};
use std::any::Any;
use std::io::{Cursor, Read};
use std::time::{Duration, Instant};
use walsync::error::Error;
use walsync::storage::s3::{S3Options, S3Storage};
use walsync::storage::{self, file::FileStorage, Layout, ObjectMeta, Storage};

/// A storage plus whatever must stay alive while it is used.
struct Fixture {
    storage: Box<dyn Storage>,
    _guard: Box<dyn Any>,
}

fn file_fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    // A root that does not exist yet: the first put creates it.
    let root = dir.path().join("replica/root");
    let storage = FileStorage::open(root.to_str().unwrap()).unwrap();
    Fixture {
        storage: Box::new(storage),
        _guard: Box::new(dir),
    }
}

fn s3_fixture() -> Fixture {
    let server = S3Server::start();
    server.create_bucket("contract");
    let storage = S3Storage::open("s3://contract/some/prefix/", &server.options()).unwrap();
    Fixture {
        storage: Box::new(storage),
        _guard: Box::new(server),
    }
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn meta_for(data: &[u8], ts: &str) -> ObjectMeta {
    ObjectMeta {
        sha256: Some(sha256_hex(data)),
        timestamp: Some(ts.to_string()),
        db_checksums: Some(ObjectMeta::encode_db_checksums(
            data.len() as u64,
            0x8000_0000_0000_00ff,
        )),
    }
}

fn get_bytes(s: &dyn Storage, key: &str) -> Option<(Vec<u8>, walsync::storage::ObjectHead)> {
    let dl = s.get(key).unwrap_or_else(|e| panic!("get {key}: {e}"))?;
    let mut body = dl.body;
    let mut buf = Vec::new();
    body.read_to_end(&mut buf).unwrap();
    Some((buf, dl.head))
}

// ---------------------------------------------------------------------------
// The contract.

fn contract_round_trip(s: &dyn Storage) {
    let all_bytes: Vec<u8> = (0..=255u8).collect();
    let big = noise(3 * 1024 * 1024 + 17, 42);
    let cases: [(&str, &[u8]); 3] = [
        ("db/empty.bin", &[]),
        ("db/bytes.bin", &all_bytes),
        ("db/big.bin", &big),
    ];
    for (key, data) in cases {
        put_object(s, key, data, &meta_for(data, "2025-01-02T03:04:05Z"));
        let (got, head) = get_bytes(s, key).expect("object just written");
        assert_eq!(got.len(), data.len(), "{key}");
        assert!(got == data, "{key}: body differs");
        assert_eq!(head.size, data.len() as u64, "{key}");
        assert_eq!(s.head(key).unwrap().unwrap().size, data.len() as u64);
    }
}

fn contract_metadata(s: &dyn Storage) {
    let data = b"LTX\x01 some body".to_vec();
    let meta = meta_for(&data, "2024-05-06T07:08:09.123456789Z");
    put_object(s, "m/0001/obj.ltx", &data, &meta);
    let head = s.head("m/0001/obj.ltx").unwrap().unwrap();
    assert_eq!(head.meta, meta);
    assert_eq!(head.size, data.len() as u64);
    let (_, head) = get_bytes(s, "m/0001/obj.ltx").unwrap();
    assert_eq!(head.meta, meta);

    // Metadata is optional.
    put_object(s, "m/0001/bare", b"x", &ObjectMeta::default());
    let head = s.head("m/0001/bare").unwrap().unwrap();
    assert_eq!(head.meta.sha256, None);
}

fn contract_missing(s: &dyn Storage) {
    assert!(s.get("nope/missing").unwrap().is_none());
    assert!(s.head("nope/missing").unwrap().is_none());
    assert!(s.get_range("nope/missing", 0, 10).unwrap().is_none());
    put_object(s, "dir/present", b"here", &ObjectMeta::default());
    assert!(s.get("dir/absent").unwrap().is_none());
    assert!(s.head("dir/absent").unwrap().is_none());
    assert!(s.get_range("dir/absent", 0, 1).unwrap().is_none());
}

fn contract_get_range(s: &dyn Storage) {
    let data = noise(100_000, 7);
    put_object(s, "r/obj", &data, &ObjectMeta::default());
    let r = |off: u64, len: u64| s.get_range("r/obj", off, len).unwrap().unwrap();
    assert_eq!(r(0, 10), data[..10]);
    assert_eq!(r(4096, 4096), data[4096..8192]);
    assert_eq!(r(0, 100_000), data);
    assert_eq!(r(99_990, 10), data[99_990..]);
    // Past the end: short, then empty.
    assert_eq!(r(99_990, 100), data[99_990..]);
    assert_eq!(r(100_000, 10), Vec::<u8>::new());
    assert_eq!(r(200_000, 10), Vec::<u8>::new());
    assert_eq!(r(5, 0), Vec::<u8>::new());
}

fn contract_list_many(s: &dyn Storage) {
    const N: usize = 1100;
    let keys: Vec<String> = (0..N).map(|i| format!("many/{i:05}.ltx")).collect();
    std::thread::scope(|scope| {
        for chunk in keys.chunks(N.div_ceil(8)) {
            scope.spawn(move || {
                for k in chunk {
                    put_object(s, k, k.as_bytes(), &ObjectMeta::default());
                }
            });
        }
    });
    put_object(s, "other/x", b"x", &ObjectMeta::default());
    put_object(s, "manyx", b"x", &ObjectMeta::default());
    let listed = s.list("many/").unwrap();
    let got: Vec<&str> = listed.iter().map(|o| o.key.as_str()).collect();
    let want: Vec<&str> = keys.iter().map(String::as_str).collect();
    assert_eq!(got.len(), N);
    assert_eq!(got, want);
    assert!(listed.iter().all(|o| o.size == 14), "sizes");
    // A prefix that is not a folder.
    let tens = s.list("many/0001").unwrap();
    assert_eq!(tens.len(), 10);
    assert_eq!(tens[0].key, "many/00010.ltx");
    // Everything.
    assert_eq!(s.list("").unwrap().len(), N + 2);
}

fn contract_list_sorted(s: &dyn Storage) {
    let keys = ["b", "a/c", "ab", "a/b/2", "a/b/1", "a/b/10"];
    for (i, k) in keys.iter().enumerate() {
        put_object(s, k, &vec![b'z'; i], &ObjectMeta::default());
    }
    let all = s.list("").unwrap();
    let names: Vec<&str> = all.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(names, ["a/b/1", "a/b/10", "a/b/2", "a/c", "ab", "b"]);
    let size_of = |k: &str| all.iter().find(|o| o.key == k).unwrap().size;
    assert_eq!(size_of("b"), 0);
    assert_eq!(size_of("a/b/10"), 5);
    let names =
        |p: &str| -> Vec<String> { s.list(p).unwrap().into_iter().map(|o| o.key).collect() };
    assert_eq!(names("a/"), ["a/b/1", "a/b/10", "a/b/2", "a/c"]);
    assert_eq!(names("a"), ["a/b/1", "a/b/10", "a/b/2", "a/c", "ab"]);
    assert_eq!(names("a/b/1"), ["a/b/1", "a/b/10"]);
    assert!(names("nope/").is_empty());
    assert!(names("a/b/1/").is_empty());
}

fn contract_delete(s: &dyn Storage) {
    put_object(s, "d/one", b"1", &meta_for(b"1", "2025-01-01T00:00:00Z"));
    put_object(s, "d/two", b"2", &ObjectMeta::default());
    s.delete("d/one").unwrap();
    assert!(s.head("d/one").unwrap().is_none());
    assert!(s.get("d/one").unwrap().is_none());
    let names: Vec<String> = s.list("d/").unwrap().into_iter().map(|o| o.key).collect();
    assert_eq!(names, ["d/two"]);
    // Deleting what is not there is fine.
    s.delete("d/one").unwrap();
    s.delete("never/existed").unwrap();
    // A new object under a deleted key has no stale metadata.
    put_object(s, "d/one", b"new", &ObjectMeta::default());
    assert_eq!(s.head("d/one").unwrap().unwrap().meta.sha256, None);
}

fn contract_overwrite(s: &dyn Storage) {
    let v1 = b"version one, longer".to_vec();
    let v2 = b"v2".to_vec();
    put_object(s, "o/k", &v1, &meta_for(&v1, "2025-01-01T00:00:00Z"));
    put_object(s, "o/k", &v2, &meta_for(&v2, "2025-01-01T00:00:01Z"));
    let (got, head) = get_bytes(s, "o/k").unwrap();
    assert_eq!(got, v2);
    assert_eq!(head.meta, meta_for(&v2, "2025-01-01T00:00:01Z"));
    assert_eq!(s.head("o/k").unwrap().unwrap().size, 2);
    assert_eq!(s.list("o/").unwrap().len(), 1);
}

fn contract_body_position(s: &dyn Storage) {
    // The body is read from its current position, for `len` bytes only.
    let mut cur = Cursor::new(b"0123456789".to_vec());
    cur.set_position(3);
    s.put("p/slice", &mut cur, 4, &ObjectMeta::default())
        .unwrap();
    assert_eq!(get_bytes(s, "p/slice").unwrap().0, b"3456");
}

macro_rules! contract_tests {
    ($module:ident, $fixture:path) => {
        mod $module {
            use super::*;

            #[test]
            fn round_trip() {
                contract_round_trip(&*$fixture().storage);
            }
            #[test]
            fn metadata() {
                contract_metadata(&*$fixture().storage);
            }
            #[test]
            fn missing() {
                contract_missing(&*$fixture().storage);
            }
            #[test]
            fn get_range() {
                contract_get_range(&*$fixture().storage);
            }
            #[test]
            fn list_many() {
                contract_list_many(&*$fixture().storage);
            }
            #[test]
            fn list_sorted() {
                contract_list_sorted(&*$fixture().storage);
            }
            #[test]
            fn delete() {
                contract_delete(&*$fixture().storage);
            }
            #[test]
            fn overwrite() {
                contract_overwrite(&*$fixture().storage);
            }
            #[test]
            fn body_position() {
                contract_body_position(&*$fixture().storage);
            }
        }
    };
}

contract_tests!(file_backend, file_fixture);
contract_tests!(s3_backend, s3_fixture);

// ---------------------------------------------------------------------------
// S3 only.

fn assert_no_secrets(msg: &str, secrets: &[&str]) {
    for s in secrets {
        assert!(!msg.contains(s), "message leaks {s:?}: {msg}");
    }
    for marker in [
        "X-Amz-Signature",
        "X-Amz-Credential",
        "X-Amz-",
        "http://",
        "https://",
    ] {
        assert!(!msg.contains(marker), "message leaks {marker:?}: {msg}");
    }
}

#[test]
fn s3_layout_and_prefix() {
    let server = S3Server::start();
    server.create_bucket("bkt");
    let a = S3Storage::open("s3://bkt/pre/fix", &server.options()).unwrap();
    let b = S3Storage::open("s3://bkt/pre/fix2", &server.options()).unwrap();
    let whole = S3Storage::open("s3://bkt", &server.options()).unwrap();
    assert_eq!(a.describe(), "s3://bkt/pre/fix");
    assert_eq!(whole.describe(), "s3://bkt");
    assert_eq!(a.layout(), Layout::S3);
    put_object(&a, "db/0000/x.ltx", b"a", &ObjectMeta::default());
    put_object(&b, "db/0000/y.ltx", b"b", &ObjectMeta::default());
    // Stored under the prefix.
    assert!(server.root().join("bkt/pre/fix/db/0000/x.ltx").is_file());
    let keys =
        |s: &S3Storage| -> Vec<String> { s.list("").unwrap().into_iter().map(|o| o.key).collect() };
    assert_eq!(keys(&a), ["db/0000/x.ltx"]);
    assert_eq!(keys(&b), ["db/0000/y.ltx"]);
    assert_eq!(
        keys(&whole),
        ["pre/fix/db/0000/x.ltx", "pre/fix2/db/0000/y.ltx"]
    );
    assert_eq!(get_bytes(&whole, "pre/fix2/db/0000/y.ltx").unwrap().0, b"b");
}

#[test]
fn s3_retries_rewind_the_body() {
    let server = S3Server::start();
    server.create_bucket("bkt");
    // The first two requests are refused with 503 SlowDown.
    let relay = Relay::start(&server.endpoint, |i, _| {
        if i < 2 {
            Action::SlowDown
        } else {
            Action::Forward
        }
    });
    let opts = S3Options {
        endpoint: Some(relay.endpoint.clone()),
        ..server.options()
    };
    let s = S3Storage::open("s3://bkt/p", &opts).unwrap();
    let data = noise(200_000, 9);
    let meta = meta_for(&data, "2025-01-01T00:00:00Z");
    let mut body = Cursor::new(data.clone());
    s.put("retried", &mut body, data.len() as u64, &meta)
        .unwrap();
    let puts: Vec<Action> = relay
        .requests()
        .iter()
        .filter(|r| r.method == "PUT" && r.len == data.len() as u64)
        .map(|r| r.action)
        .collect();
    assert_eq!(
        puts,
        [Action::SlowDown, Action::SlowDown, Action::Forward],
        "two whole attempts were refused, the third stored"
    );
    let (got, head) = get_bytes(&s, "retried").unwrap();
    assert!(got == data, "the retried upload stored the whole body");
    assert_eq!(head.meta, meta);
}

#[test]
fn s3_wrong_secret_fails_fast_without_leaking() {
    let server = S3Server::start();
    server.create_bucket("bkt");
    let wrong = "WRONG-secret-do-not-print-42";
    let opts = S3Options {
        secret_key: Some(wrong.to_string()),
        ..server.options()
    };
    let s = S3Storage::open("s3://bkt/p", &opts).unwrap();
    let started = Instant::now();
    let errors = [
        s.put(
            "k",
            &mut Cursor::new(b"x"),
            1,
            &meta_for(b"x", "2025-01-01T00:00:00Z"),
        )
        .unwrap_err(),
        s.get("k").map(|_| ()).unwrap_err(),
        s.head("k").map(|_| ()).unwrap_err(),
        s.list("").map(|_| ()).unwrap_err(),
        s.get_range("k", 0, 1).map(|_| ()).unwrap_err(),
        s.delete("k").unwrap_err(),
    ];
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "credential errors must not be retried ({:?})",
        started.elapsed()
    );
    for e in &errors {
        assert!(matches!(e, Error::Credentials(_)), "{e:?}");
        assert_eq!(e.exit_code(), 4);
        let msg = e.to_string();
        assert_no_secrets(&msg, &[wrong, &server.secret_key, &server.access_key]);
        assert!(msg.contains("AWS_SECRET_ACCESS_KEY"), "{msg}");
        assert!(msg.contains("'bkt'"), "{msg}");
    }
    assert!(
        errors[0].to_string().contains("SignatureDoesNotMatch"),
        "{}",
        errors[0]
    );
}

#[test]
fn s3_unreachable_endpoint_fails_within_30s() {
    let port = free_port();
    let secret = "unreachable-secret-123";
    let opts = S3Options {
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        access_key: Some("AKIDEXAMPLE".into()),
        secret_key: Some(secret.into()),
        ..S3Options::default()
    };
    let s = S3Storage::open("s3://bkt/p", &opts).unwrap();
    let started = Instant::now();
    let e = s
        .put("db/k", &mut Cursor::new(b"abc"), 3, &ObjectMeta::default())
        .unwrap_err();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(30), "took {took:?}");
    assert!(matches!(e, Error::Storage(_)), "{e:?}");
    let msg = e.to_string();
    assert_no_secrets(&msg, &[secret, "AKIDEXAMPLE"]);
    assert!(msg.contains(&format!("127.0.0.1:{port}")), "{msg}");
    assert!(msg.contains("reachable"), "{msg}");
    assert!(msg.contains("db/k"), "{msg}");
    assert!(msg.contains("11 attempts"), "{msg}");
}

#[test]
fn s3_missing_bucket_says_create_it() {
    let server = S3Server::start();
    let s = S3Storage::open("s3://not-there/p", &server.options()).unwrap();
    // (s3s-fs answers NoSuchBucket to listings; it creates the folder on PUT.)
    let e = s.list("").unwrap_err();
    assert_eq!(e.exit_code(), 4);
    let msg = e.to_string();
    assert!(
        msg.contains("'not-there'") && msg.contains("create it"),
        "{msg}"
    );
}

#[test]
fn bad_urls_are_usage_errors() {
    let opts = S3Options::default();
    for url in [
        "s3://",
        "s3:///prefix",
        "s3://bad bucket/x",
        "s3://key:secret@bucket/x",
        "s3://bucket/x?versionId=1",
        "ftp://host/x",
        "file://relative/path",
        "bucket/prefix",
    ] {
        match storage::open(url, &opts) {
            Err(e) => {
                assert!(matches!(e, Error::Usage(_)), "{url}: {e:?}");
                assert_eq!(e.exit_code(), 2);
                assert!(!e.to_string().contains("secret@"), "{e}");
            }
            Ok(s) => panic!("{url} opened as {}", s.describe()),
        }
    }
    let bad_endpoint = S3Options {
        endpoint: Some("ftp://example.com".into()),
        ..S3Options::default()
    };
    let e = storage::open("s3://bucket/x", &bad_endpoint).err().unwrap();
    assert_eq!(e.exit_code(), 2, "{e}");
    let half_creds = S3Options {
        access_key: Some("AKID".into()),
        ..S3Options::default()
    };
    let e = storage::open("s3://bucket/x", &half_creds).err().unwrap();
    assert_eq!(e.exit_code(), 2, "{e}");
    // And good ones open without touching the network.
    let s = storage::open("s3://bucket/a/b/", &opts).unwrap();
    assert_eq!(s.describe(), "s3://bucket/a/b");
    assert_eq!(s.layout(), Layout::S3);
}

// ---------------------------------------------------------------------------
// File only.

/// Every file and folder under `dir`, relative, with '/' separators.
fn tree(dir: &std::path::Path) -> Vec<String> {
    fn walk(base: &std::path::Path, dir: &std::path::Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            out.push(p.strip_prefix(base).unwrap().to_string_lossy().into_owned());
            if p.is_dir() {
                walk(base, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

#[test]
fn file_layout_no_temp_files_and_sidecars_hidden() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("r");
    let s = FileStorage::open(root.to_str().unwrap()).unwrap();
    assert_eq!(s.layout(), Layout::File);
    assert_eq!(s.describe(), format!("file://{}", root.display()));
    assert!(s.list("").unwrap().is_empty(), "missing root lists empty");
    assert!(s.head("db/ltx/0/x.ltx").unwrap().is_none());
    let data = b"ltx bytes";
    put_object(
        &s,
        "db/ltx/0/x.ltx",
        data,
        &meta_for(data, "2025-01-01T00:00:00Z"),
    );
    put_object(
        &s,
        "db/ltx/0/x.ltx",
        data,
        &meta_for(data, "2025-01-01T00:00:00Z"),
    );
    put_object(&s, "db/ltx/1/y.ltx", b"", &ObjectMeta::default());
    assert_eq!(std::fs::read(root.join("db/ltx/0/x.ltx")).unwrap(), data);
    let files = tree(&root);
    assert!(
        files.iter().all(|f| !f.contains(".tmp-")),
        "temp files left: {files:?}"
    );
    // Everything other than the objects is under .walsync-meta.
    let visible: Vec<&String> = files
        .iter()
        .filter(|f| !f.starts_with(".walsync-meta"))
        .collect();
    assert_eq!(
        visible,
        [
            "db",
            "db/ltx",
            "db/ltx/0",
            "db/ltx/0/x.ltx",
            "db/ltx/1",
            "db/ltx/1/y.ltx"
        ]
    );
    let keys: Vec<String> = s.list("").unwrap().into_iter().map(|o| o.key).collect();
    assert_eq!(keys, ["db/ltx/0/x.ltx", "db/ltx/1/y.ltx"]);
}

#[test]
fn file_bad_keys_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("r");
    let s = FileStorage::open(root.to_str().unwrap()).unwrap();
    for key in [
        "../evil",
        "a/../../evil",
        "/etc/passwd",
        "a//b",
        "./a",
        "",
        ".walsync-meta/x.json",
    ] {
        let e = s
            .put(key, &mut Cursor::new(b"x"), 1, &ObjectMeta::default())
            .unwrap_err();
        assert_eq!(e.exit_code(), 2, "{key}: {e}");
        assert!(s.head(key).is_err(), "{key}");
        assert!(s.delete(key).is_err(), "{key}");
    }
    assert!(!dir.path().join("evil").exists());
    assert!(!root.exists(), "nothing was written");
}

#[test]
fn file_folders_are_not_objects() {
    // (Checked for the file backend only: s3s-fs answers HEAD on a folder
    // with a 500, where S3 has no folders at all.)
    let dir = tempfile::tempdir().unwrap();
    let s = FileStorage::open(dir.path().to_str().unwrap()).unwrap();
    put_object(&s, "dir/present", b"here", &ObjectMeta::default());
    assert!(s.head("dir").unwrap().is_none());
    assert!(s.get("dir").unwrap().is_none());
    assert!(s.get_range("dir", 0, 1).unwrap().is_none());
}

#[test]
fn file_foreign_files_get_mtime_timestamp() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("db/ltx/0")).unwrap();
    std::fs::write(root.join("db/ltx/0/a.ltx"), b"written by litestream").unwrap();
    let s = FileStorage::open(root.to_str().unwrap()).unwrap();
    let head = s.head("db/ltx/0/a.ltx").unwrap().unwrap();
    assert_eq!(head.size, 21);
    assert_eq!(head.meta.sha256, None);
    let ts: jiff::Timestamp = head.meta.timestamp.unwrap().parse().unwrap();
    let age = jiff::Timestamp::now().duration_since(ts);
    assert!(age.as_secs().abs() < 60, "{ts}");
}

#[test]
fn file_open_rejects_a_file_as_root() {
    let f = tempfile::NamedTempFile::new().unwrap();
    let e = FileStorage::open(f.path().to_str().unwrap()).unwrap_err();
    assert_eq!(e.exit_code(), 2);
}
