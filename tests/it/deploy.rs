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
    let mut stmt = conn
        .prepare("SELECT id, v FROM events ORDER BY id")
        .unwrap();
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
    // A command that cannot be started: a usage error, once walsync has
    // stopped cleanly.
    let w = dest.watch(&[&db], &["--exec", "no-such-program-walsync-test"]);
    let (code, err) = w.wait();
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("cannot start the --exec command"), "{err}");
    assert!(
        !marker.exists(),
        "the child ran although walsync could not start"
    );
}

/// Runs `walsync import-litestream` on `yaml`; returns the printed config,
/// which must parse as a walsync config.
fn import(dir: &Path, yaml: &str) -> (String, walsync::config::ConfigFile) {
    let path = dir.join("litestream.yml");
    std::fs::write(&path, yaml).unwrap();
    let out = walsync(&["import-litestream", path.to_str().unwrap()], &[]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let toml = String::from_utf8(out.stdout).unwrap();
    let config = walsync::config::ConfigFile::parse(&toml)
        .unwrap_or_else(|e| panic!("the import does not parse: {e}\n{toml}"));
    (toml, config)
}

#[test]
fn import_litestream_translates_a_single_s3_replica_by_url() {
    // Litestream's getting-started shape: one database, one replica URL.
    let dir = tempfile::tempdir().unwrap();
    let (toml, config) = import(
        dir.path(),
        "dbs:\n  - path: /var/lib/app/app.db\n    replica:\n      url: s3://my-bucket/backups/app\n",
    );
    assert_eq!(
        config.s3.bucket.as_deref(),
        Some("s3://my-bucket/backups"),
        "{toml}"
    );
    assert_eq!(config.databases.len(), 1);
    assert_eq!(config.databases[0].path, "/var/lib/app/app.db");
    assert_eq!(config.databases[0].name.as_deref(), Some("app"));
    assert!(!toml.contains("Not translated"), "{toml}");
}

#[test]
fn import_litestream_translates_endpoints_intervals_levels_and_retention() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = r#"
# An S3-compatible provider, documented keys (Litestream 0.5 reference).
access-key-id: AKIAEXAMPLEKEY
secret-access-key: "very-secret-value"
addr: ":9090"
exec: "bin/server --port 8080"
logging:
  level: debug
levels:
  - interval: 5m
  - interval: 1h
snapshot:
  interval: 24h
  retention: 168h
l0-retention: 10m
dbs:
  - path: /data/tenants/acme/app.db
    monitor-interval: 500ms
    checkpoint-interval: 1m
    min-checkpoint-page-count: 2000
    truncate-page-n: 50000
    replica:
      type: s3
      bucket: my-bucket
      path: prod/acme
      endpoint: https://fly.storage.tigris.dev
      region: auto
      force-path-style: true
      sync-interval: 2s
  - path: /data/tenants/globex/app.db
    replica:
      type: s3
      bucket: my-bucket
      path: prod/globex
      endpoint: https://fly.storage.tigris.dev
      region: auto
      force-path-style: true
"#;
    let (toml, config) = import(dir.path(), yaml);
    assert_eq!(config.exec.as_deref(), Some("bin/server --port 8080"));
    assert_eq!(
        config.s3.bucket.as_deref(),
        Some("s3://my-bucket/prod"),
        "{toml}"
    );
    assert_eq!(
        config.s3.endpoint.as_deref(),
        Some("https://fly.storage.tigris.dev")
    );
    assert_eq!(config.s3.region.as_deref(), Some("auto"));
    assert_eq!(config.s3.force_path_style, Some(true));
    // Litestream's ":9090" listens everywhere; walsync's means loopback.
    assert_eq!(
        config.monitoring.metrics_addr.as_deref(),
        Some("0.0.0.0:9090")
    );
    let names: Vec<_> = config
        .databases
        .iter()
        .map(|d| d.name.clone().unwrap())
        .collect();
    assert_eq!(names, ["acme", "globex"]);
    let acme = &config.databases[0];
    assert_eq!(
        acme.sync_interval.map(|d| d.0),
        Some(Duration::from_secs(2)),
        "replica sync-interval wins"
    );
    assert_eq!(acme.min_checkpoint_pages, Some(2000));
    assert_eq!(acme.truncate_checkpoint_pages, Some(50000));
    assert_eq!(
        config.sync.snapshot_interval.map(|d| d.0),
        Some(Duration::from_secs(86400))
    );
    let retention = config.retention.as_ref().expect("[retention]");
    let policy = retention.policy().unwrap();
    assert_eq!(
        policy.levels,
        [Duration::from_secs(300), Duration::from_secs(3600)]
    );
    assert_eq!(
        retention.l0_retention.map(|d| d.0),
        Some(Duration::from_secs(600))
    );
    // Left out, with why; secrets never printed.
    for key in [
        "access-key-id",
        "secret-access-key",
        "logging",
        "dbs[0].checkpoint-interval",
    ] {
        assert!(
            toml.contains(&format!("# - {key}: ")),
            "{key} not listed:\n{toml}"
        );
    }
    assert!(
        !toml.contains("AKIAEXAMPLEKEY") && !toml.contains("very-secret-value"),
        "{toml}"
    );
}

#[test]
fn import_litestream_translates_file_replicas_legacy_lists_and_directories() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = "\
dbs:
  - path: /var/lib/app/app.db
    replicas:
      - type: file
        path: /mnt/backups/app
        retention: 72h
        validation-interval: 6h
      - url: s3://offsite/app
  - dir: /var/lib/tenants
    pattern: \"*.db\"
    recursive: true
    replica:
      type: file
      path: /mnt/backups/tenants
  - path: /var/lib/other.db
    replica:
      type: gs
      bucket: elsewhere
      path: other
";
    let (toml, config) = import(dir.path(), yaml);
    assert_eq!(
        config.s3.bucket.as_deref(),
        Some("file:///mnt/backups"),
        "{toml}"
    );
    // The gs replica's database is left out (listed below).
    assert_eq!(config.databases.len(), 2, "{toml}");
    assert_eq!(config.databases[0].name.as_deref(), Some("app"));
    assert_eq!(
        config.databases[0].validation_interval.map(|d| d.0),
        Some(Duration::from_secs(6 * 3600))
    );
    assert_eq!(config.databases[1].path, "/var/lib/tenants/*.db");
    assert_eq!(config.databases[1].name.as_deref(), Some("tenants/{1}"));
    for key in [
        "dbs[0].replicas[0].retention",
        "dbs[0].replicas[1..]",
        "dbs[1].recursive",
        "dbs[1].dir",
        "dbs[2].replica",
        "dbs[2]",
    ] {
        assert!(
            toml.contains(&format!("# - {key}: ")),
            "{key} not listed:\n{toml}"
        );
    }
}

#[test]
fn a_litestream_config_given_to_watch_points_at_import_litestream() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("litestream.yml");
    std::fs::write(
        &path,
        "dbs:\n  - path: /data/app.db\n    replica:\n      url: s3://b/app\n",
    )
    .unwrap();
    let out = walsync(&["watch", "--config", path.to_str().unwrap()], &[]);
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert!(
        stderr(&out).contains("walsync import-litestream"),
        "{}",
        text(&out)
    );
    // A YAML file import-litestream cannot read: an error naming the line.
    std::fs::write(&path, "dbs:\n  - path: &anchor /data/app.db\n").unwrap();
    let out = walsync(&["import-litestream", path.to_str().unwrap()], &[]);
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert!(stderr(&out).contains("line 2"), "{}", text(&out));
}

/// Removes a database with its WAL, WAL-index and walsync's local state,
/// as a lost volume would.
fn lose(db: &Path) {
    let dir = db.parent().unwrap();
    let file = db.file_name().unwrap().to_str().unwrap();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        if name.starts_with(file) || name.starts_with(&format!(".{file}")) {
            if path.is_dir() {
                std::fs::remove_dir_all(&path).unwrap();
            } else {
                std::fs::remove_file(&path).unwrap();
            }
        }
    }
    assert!(!db.exists());
}

#[test]
fn restore_by_path_finds_the_name_and_the_destination_in_the_config() {
    let server = S3Server::start();
    let dest = Dest::s3(&server, "by-path", "fleet");
    let dir = tempfile::tempdir().unwrap();
    let acme = dir.path().join("tenants/acme/app.db");
    let globex = dir.path().join("tenants/globex/app.db");
    for (db, seed) in [(&acme, 1), (&globex, 2)] {
        let mut conn = create_db(db, 4096);
        insert(&mut conn, 20, 300, seed);
    }
    let config = dir.path().join("walsync.toml");
    std::fs::write(
        &config,
        format!(
            "[[databases]]\npath = \"{}/tenants/*/app.db\"\nname = \"tenants/{{1}}\"\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap().to_string();
    let w = dest.watch(&[], &["--config", &config, "--sync-interval", "50ms"]);
    dest.wait_for_txid("tenants/acme", 1, Duration::from_secs(20));
    dest.wait_for_txid("tenants/globex", 1, Duration::from_secs(20));
    w.stop_clean();
    let expected = row_count(&acme);
    lose(&acme);

    // The path alone: named by the config's template, restored in place.
    let acme_arg = acme.to_str().unwrap();
    let out = dest.walsync(&["restore", acme_arg, "--config", &config, "-b", &dest.url]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(stderr(&out).contains("acme"), "{}", text(&out));
    assert_eq!(row_count(&acme), expected);
    integrity_ok(&acme);

    // The path exists now: refused unless told.
    let out = dest.walsync(&["restore", acme_arg, "--config", &config, "-b", &dest.url]);
    assert_eq!(code(&out), 6, "{}", text(&out));
    let out = dest.walsync(&[
        "restore",
        acme_arg,
        "--config",
        &config,
        "-b",
        &dest.url,
        "--if-db-not-exists",
    ]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let out = dest.walsync(&[
        "restore", acme_arg, "--config", &config, "-b", &dest.url, "--force",
    ]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(row_count(&acme), expected);

    // -o still wins; a name still needs it.
    let elsewhere = dir.path().join("copy.db");
    let globex_arg = globex.to_str().unwrap();
    let out = dest.walsync(&[
        "restore",
        globex_arg,
        "--config",
        &config,
        "-b",
        &dest.url,
        "-o",
        elsewhere.to_str().unwrap(),
    ]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(row_count(&elsewhere), row_count(&globex));
    let out = dest.walsync(&["restore", "tenants/acme", "-b", &dest.url]);
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert!(stderr(&out).contains("-o"), "{}", text(&out));
}

#[test]
fn restore_by_path_refuses_a_replica_of_another_database() {
    let server = S3Server::start();
    let dest = Dest::s3(&server, "by-path-other", "apps");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("one/app.db");
    let mut conn = create_db(&db, 4096);
    insert(&mut conn, 5, 100, 7);
    drop(conn);
    dest.snapshot(&db);
    // Another database with the same stem, never replicated: its path
    // names "app" too, whose replica records the first as its source.
    let other = dir.path().join("two/app.db");
    let out = dest.walsync(&["restore", other.to_str().unwrap(), "-b", &dest.url]);
    assert_eq!(code(&out), 6, "{}", text(&out));
    assert!(stderr(&out).contains("is the replica of"), "{}", text(&out));
    assert!(!other.exists());
    // Its own path (lost) restores in place without a config.
    lose(&db);
    let out = dest.walsync(&["restore", db.to_str().unwrap(), "-b", &dest.url]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(row_count(&db), 5);
}

#[test]
fn import_litestream_reads_url_parameters_and_refuses_what_it_cannot_place() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = "\
addr: \":9090\"
exec: app --port $PORT
dbs:
  - path: /data/app.db
    replica:
      url: s3://my-bucket/db?endpoint=fly.storage.tigris.dev&region=auto&forcePathStyle=false
  - path: /data/spaces.db
    replica:
      url: s3://mybkt.nyc3.digitaloceanspaces.com/spaces
  - path: /data/root.db
    replica:
      url: s3://my-bucket
";
    let (toml, config) = import(dir.path(), yaml);
    assert_eq!(
        config.s3.bucket.as_deref(),
        Some("s3://my-bucket"),
        "{toml}"
    );
    assert_eq!(
        config.s3.endpoint.as_deref(),
        Some("https://fly.storage.tigris.dev")
    );
    assert_eq!(config.s3.region.as_deref(), Some("auto"));
    assert_eq!(config.s3.force_path_style, Some(false));
    // Litestream's ":9090" listens everywhere; walsync's means loopback.
    assert_eq!(
        config.monitoring.metrics_addr.as_deref(),
        Some("0.0.0.0:9090")
    );
    // Only the database walsync can place is translated.
    let paths: Vec<_> = config.databases.iter().map(|d| d.path.as_str()).collect();
    assert_eq!(paths, ["/data/app.db"], "{toml}");
    assert_eq!(config.databases[0].name.as_deref(), Some("db"));
    for key in [
        "exec",
        "dbs[1].replica",
        "dbs[1]",
        "dbs[2].replica",
        "dbs[0].replica.endpoint",
    ] {
        assert!(
            toml.contains(&format!("# - {key}: ")),
            "{key} not listed:\n{toml}"
        );
    }
}

#[test]
fn the_exec_child_gets_the_open_files_limit_walsync_started_with() {
    use std::os::unix::process::CommandExt;
    let server = S3Server::start();
    let dest = Dest::s3(&server, "exec-limits", "apps");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    new_db(&db);
    let seen = dir.path().join("limit");
    let command = format!("sh -c 'ulimit -n > {}'", seen.display());
    let (mut cmd, _runtime) = walsync_command();
    cmd.args([
        "watch",
        db.to_str().unwrap(),
        "-b",
        &dest.url,
        "--exec",
        &command,
    ]);
    cmd.envs(server.env());
    // walsync starts with a soft limit of 1000 (below the hard one), which
    // it raises for itself.
    // SAFETY: setrlimit(2) between fork and exec, on a local value.
    unsafe {
        cmd.pre_exec(|| {
            let mut lim = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
            lim.rlim_cur = 1000.min(lim.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out));
    let child = std::fs::read_to_string(&seen).unwrap();
    assert_eq!(
        child.trim(),
        "1000",
        "walsync raised its own limit, not its child's"
    );
}
