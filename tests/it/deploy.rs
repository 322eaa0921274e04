//! Deploying: `watch --exec` (the application as walsync's child), against
//! the real binary, real SQLite databases written by a real child process
//! and a real S3 server.

use crate::harness::*;
use std::path::Path;
use std::time::{Duration, Instant};

/// A writer the child runs: commits `rows` rows to `db` (one transaction
/// each); on SIGTERM or SIGINT it commits one more row naming the signal;
/// with `linger`, it then waits for a signal; it exits with `code`.
const WRITER: &str = r#"
import signal, sqlite3, sys, time
db, rows, linger, code = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "linger", int(sys.argv[4])
con = sqlite3.connect(db, isolation_level=None)
con.execute("PRAGMA busy_timeout=5000")
got = []
def on_signal(signum, frame):
    got.append(signum)
signal.signal(signal.SIGTERM, on_signal)
signal.signal(signal.SIGINT, on_signal)
for i in range(rows):
    con.execute("INSERT INTO events(v) VALUES ('child')")
deadline = time.time() + 30
while linger and not got and time.time() < deadline:
    time.sleep(0.01)
if got:
    con.execute("INSERT INTO events(id, v) VALUES (?, ?)", (9000 + got[0], signal.Signals(got[0]).name))
con.close()
sys.exit(code)
"#;

fn writer_command(dir: &Path, db: &Path, rows: u32, linger: bool, code: i32) -> String {
    let script = dir.join("writer.py");
    std::fs::write(&script, WRITER).unwrap();
    format!(
        "python3 '{}' '{}' {rows} {} {code}",
        script.display(),
        db.display(),
        if linger { "linger" } else { "once" }
    )
}

fn new_db(path: &Path) {
    let conn = create_db(path, 4096);
    conn.execute_batch("CREATE TABLE events(id INTEGER PRIMARY KEY, v TEXT)")
        .unwrap();
}

fn restored_rows(dest: &Dest, name: &str, dir: &Path, file: &str) -> Vec<(i64, String)> {
    let out = dir.join(file);
    let r = dest.restore(name, &out, &[]);
    assert_eq!(code(&r), 0, "{}", text(&r));
    let conn = rusqlite::Connection::open(&out).unwrap();
    let mut stmt = conn.prepare("SELECT id, v FROM events ORDER BY id").unwrap();
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    rows
}

#[test]
fn exec_ships_the_childs_last_commit_and_exits_with_its_code() {
    let server = S3Server::start();
    let dest = Dest::s3(&server, "exec", "apps");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    new_db(&db);
    // A long sync interval: the child's commits are shipped by the stop
    // that follows its exit, not by a poll that happens to come first.
    let command = writer_command(dir.path(), &db, 25, false, 3);
    let w = dest.watch(&[&db], &["--sync-interval", "10s", "--exec", &command]);
    let (code, err) = w.wait();
    assert_eq!(
        code, 3,
        "walsync exits with the child's code; stderr:\n{err}"
    );
    assert!(err.contains("exited (code 3)"), "{err}");
    let rows = restored_rows(&dest, "app", dir.path(), "out.db");
    assert_eq!(
        rows.len(),
        25,
        "every commit of the child is in the replica"
    );
    assert!(rows.iter().all(|(_, v)| v == "child"));

    // The same from the config file's `exec`, and a child that exits 0.
    let config = dir.path().join("walsync.toml");
    let command = writer_command(dir.path(), &db, 5, false, 0);
    std::fs::write(&config, format!("exec = {}\n", toml_string(&command))).unwrap();
    let config = config.to_str().unwrap();
    let w = dest.watch(&[&db], &["--sync-interval", "10s", "--config", config]);
    let (code, err) = w.wait();
    assert_eq!(code, 0, "{err}");
    assert_eq!(restored_rows(&dest, "app", dir.path(), "out2.db").len(), 30);
}

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

#[test]
fn exec_forwards_sigterm_and_sigint_to_the_child() {
    let server = S3Server::start();
    let dest = Dest::s3(&server, "exec-signals", "apps");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    new_db(&db);
    for (signal, name, id) in [
        (libc::SIGTERM, "SIGTERM", 9000 + libc::SIGTERM as i64),
        (libc::SIGINT, "SIGINT", 9000 + libc::SIGINT as i64),
    ] {
        let command = writer_command(dir.path(), &db, 3, true, 0);
        let w = dest.watch(&[&db], &["--sync-interval", "10s", "--exec", &command]);
        // Once the child's first commits are visible, it is waiting.
        let deadline = Instant::now() + Duration::from_secs(20);
        while rusqlite::Connection::open(&db)
            .and_then(|c| {
                c.query_row("SELECT count(*) FROM events WHERE v = 'child'", [], |r| {
                    r.get::<_, i64>(0)
                })
            })
            .unwrap_or(0)
            < 3
        {
            assert!(Instant::now() < deadline, "the child did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        std::fs::remove_file(dir.path().join("out.db")).ok();
        w.signal(signal);
        let (code, err) = w.wait();
        assert_eq!(
            code, 0,
            "the child handled {name} and exited 0; stderr:\n{err}"
        );
        let rows = restored_rows(&dest, "app", dir.path(), "out.db");
        assert!(
            rows.contains(&(id, name.to_string())),
            "the commit the child made on {name} is in the replica: {rows:?}"
        );
        rusqlite::Connection::open(&db)
            .unwrap()
            .execute("DELETE FROM events WHERE v = 'child'", [])
            .unwrap();
    }
    // A child that a forwarded signal ends: 128 + the signal, as a shell says.
    let w = dest.watch(&[&db], &["--exec", "sleep 30"]);
    std::thread::sleep(Duration::from_millis(500));
    w.signal(libc::SIGTERM);
    let (code, err) = w.wait();
    assert_eq!(code, 128 + libc::SIGTERM, "{err}");
}

#[test]
fn exec_never_starts_the_child_when_walsync_cannot_start() {
    let server = S3Server::start();
    let dest = Dest::s3(&server, "exec-refused", "apps");
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("child-ran");
    let command = format!("touch '{}'", marker.display());
    let missing = dir.path().join("missing.db");
    let w = dest.watch(&[&missing], &["--exec", &command]);
    let (code, err) = w.wait();
    assert_eq!(code, 3, "{err}");
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "[sync]\nsync_interval = \"soon\"\n").unwrap();
    let db = dir.path().join("app.db");
    new_db(&db);
    let w = dest.watch(
        &[&db],
        &["--config", config.to_str().unwrap(), "--exec", &command],
    );
    let (code, err) = w.wait();
    assert_eq!(code, 2, "{err}");
    let w = dest.watch(&[&db], &["--exec", "'unclosed"]);
    let (code, err) = w.wait();
    assert_eq!(code, 2, "{err}");
    assert!(
        !marker.exists(),
        "the child ran although walsync could not start"
    );
}
