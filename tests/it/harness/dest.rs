//! Replicas and the binary: where a test replicates to ([`Dest`]), a running
//! `walsync watch` ([`Watcher`]), one-shot runs of `walsync`, and stored
//! objects read, damaged and put back through the `Storage` trait.

use super::server::{walsync_command, S3Server};
use super::Relay;
use std::io::{Cursor, Read};
use std::path::Path;
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};
use walsync::catalog::{self, RemoteLtx};
use walsync::storage::{self, s3::S3Options, ObjectMeta, Storage};

/// Where a test replicates to: an S3 URL on a test server, or a folder.
pub struct Dest {
    pub url: String,
    /// The environment `walsync` runs with (the S3 server's keys, endpoint
    /// and region).
    env: Vec<(String, String)>,
    /// How the test itself opens the replica.
    options: S3Options,
}

impl Dest {
    pub fn s3(server: &S3Server, bucket: &str, prefix: &str) -> Dest {
        server.create_bucket(bucket);
        Dest {
            url: format!("s3://{bucket}/{prefix}"),
            env: server.env(),
            options: server.options(),
        }
    }

    pub fn file(dir: &Path) -> Dest {
        Dest {
            url: format!("file://{}", dir.display()),
            env: Vec::new(),
            options: S3Options::default(),
        }
    }

    /// The same S3 replica, with `walsync` reaching the server through
    /// `relay` (the test's own reads still go straight to the server).
    pub fn via(mut self, relay: &Relay) -> Dest {
        for (k, v) in &mut self.env {
            if k == "AWS_ENDPOINT_URL_S3" {
                v.clone_from(&relay.endpoint);
            }
        }
        self
    }

    /// The same replica, with `key=value` added to walsync's environment.
    pub fn with_env(mut self, key: &str, value: &str) -> Dest {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    pub fn storage(&self) -> Box<dyn Storage> {
        storage::open(&self.url, &self.options).expect("open test storage")
    }

    /// The LTX files of `name` in the replica.
    pub fn files(&self, name: &str) -> Vec<RemoteLtx> {
        catalog::list_db(self.storage().as_ref(), name).expect("list replica")
    }

    /// The keys of `name`'s files at `level`, oldest first.
    pub fn keys_at(&self, name: &str, level: u32) -> Vec<String> {
        self.files(name)
            .into_iter()
            .filter(|f| f.id.level == level)
            .map(|f| f.key)
            .collect()
    }

    pub fn max_txid(&self, name: &str) -> u64 {
        self.files(name)
            .iter()
            .map(|f| f.id.max_txid)
            .max()
            .unwrap_or(0)
    }

    /// Waits until the replica of `name` holds at least `txid`.
    pub fn wait_for_txid(&self, name: &str, txid: u64, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            let max = self.max_txid(name);
            if max >= txid {
                return max;
            }
            assert!(
                Instant::now() < deadline,
                "replica of {name} stuck at TXID {max}, wanted {txid}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs `walsync <args>` with this destination's environment.
    pub fn walsync(&self, args: &[&str]) -> Output {
        walsync(args, &self.env)
    }

    /// Restores `name` into `out` (extra flags appended) and returns the output.
    pub fn restore(&self, name: &str, out: &Path, extra: &[&str]) -> Output {
        let out = out.to_str().expect("utf-8 path");
        let mut args = vec!["restore", name, "-o", out, "-b", &self.url];
        args.extend_from_slice(extra);
        self.walsync(&args)
    }

    /// `walsync snapshot DB -b URL`, which must succeed.
    pub fn snapshot(&self, db: &Path) {
        let db = db.to_str().expect("utf-8 path");
        let out = self.walsync(&["snapshot", db, "-b", &self.url]);
        assert!(out.status.success(), "snapshot of {db}: {}", text(&out));
    }

    /// Replicates `db` (a new database from [`super::create_db`]) as `name`
    /// with a 50 ms sync: the first snapshot, then `commits` transactions of
    /// `rows` rows of `size` bytes, each waited for in the replica; stops
    /// cleanly.
    pub fn replicate_commits(&self, db: &Path, name: &str, commits: u64, rows: usize, size: usize) {
        let mut conn = super::app_conn(db);
        let w = self.watch(&[db], &["--sync-interval", "50ms"]);
        let mut txid = self.wait_for_txid(name, 1, Duration::from_secs(20));
        for i in 0..commits {
            super::insert(&mut conn, rows, size, i);
            txid = self.wait_for_txid(name, txid + 1, Duration::from_secs(20));
        }
        w.stop_clean();
    }

    /// Starts `walsync watch` on `dbs` with extra flags.
    pub fn watch(&self, dbs: &[&Path], extra: &[&str]) -> Watcher {
        let mut args: Vec<&std::ffi::OsStr> = vec!["watch".as_ref()];
        args.extend(dbs.iter().map(|d| d.as_os_str()));
        self.spawn(&args, extra)
    }

    /// Starts `walsync replicate NAME --local LOCAL` with extra flags.
    pub fn replicate(&self, name: &str, local: &Path, extra: &[&str]) -> Watcher {
        let args: [&std::ffi::OsStr; 4] = [
            "replicate".as_ref(),
            name.as_ref(),
            "--local".as_ref(),
            local.as_os_str(),
        ];
        self.spawn(&args, extra)
    }

    /// Starts `walsync ARGS -b URL` in the background (any long-running
    /// command: `restore --follow`…).
    pub fn background(&self, args: &[&str]) -> Watcher {
        let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
        self.spawn(&args, &[])
    }

    /// Starts `walsync ARGS -b URL EXTRA` in the background.
    fn spawn(&self, args: &[&std::ffi::OsStr], extra: &[&str]) -> Watcher {
        let (mut cmd, runtime) = walsync_command();
        cmd.args(args).args(["-b", &self.url]).args(extra);
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(if std::env::var_os("WALSYNC_TEST_STDERR").is_some() {
                Stdio::inherit()
            } else {
                Stdio::piped()
            })
            .spawn()
            .expect("start walsync");
        Watcher {
            child: Some(child),
            _runtime: runtime,
        }
    }
}

/// A running `walsync watch`, killed on drop.
pub struct Watcher {
    child: Option<Child>,
    /// Its runtime folder (see [`walsync_command`]), removed after it.
    _runtime: tempfile::TempDir,
}

impl Watcher {
    /// The process id.
    pub fn pid(&self) -> libc::pid_t {
        self.child.as_ref().map_or(0, |c| c.id() as libc::pid_t)
    }

    /// Sends `signal` without waiting.
    pub fn signal(&self, signal: libc::c_int) {
        let child = self.child.as_ref().expect("running");
        // SAFETY: signalling our own child process, not yet reaped.
        unsafe {
            libc::kill(child.id() as libc::pid_t, signal);
        }
    }

    /// Sends SIGINT without waiting.
    pub fn interrupt(&self) {
        let child = self.child.as_ref().expect("running");
        // SAFETY: signalling our own child process, not yet reaped.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGINT);
        }
    }

    /// Waits for the exit (a minute at most); returns the exit code and
    /// stderr.
    pub fn wait(mut self) -> (i32, String) {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                return (status.code().unwrap_or(-1), err);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("walsync did not exit within a minute");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGINT, then waits; returns the exit code and stderr.
    pub fn stop(self) -> (i32, String) {
        self.interrupt();
        self.wait()
    }

    /// SIGINT, then a clean exit (everything committed was shipped).
    pub fn stop_clean(self) {
        let (code, err) = self.stop();
        assert_eq!(code, 0, "watch exit code; stderr:\n{err}");
    }

    /// SIGKILL, then waits.
    pub fn kill9(mut self) {
        let mut child = self.child.take().expect("running");
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs `walsync <args>` with `env` added to the environment.
pub fn walsync(args: &[&str], env: &[(String, String)]) -> Output {
    let (mut cmd, _runtime) = walsync_command();
    cmd.args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .output()
        .expect("run walsync")
}

/// The exit code (-1 when ended by a signal).
pub fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Exit code, stdout and stderr, for assertion messages.
pub fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Asserts a failed restore left nothing at `out`: no output, no temporary
/// output, no download folder.
pub fn assert_nothing_left(out: &Path) {
    for suffix in ["", ".tmp", ".tmp-ltx", ".tmp-wal", ".tmp-shm"] {
        let mut p = out.as_os_str().to_owned();
        p.push(suffix);
        assert!(
            !Path::new(&p).exists(),
            "{} was left behind",
            Path::new(&p).display()
        );
    }
}

/// A stored object's body and metadata.
pub fn read_object(s: &dyn Storage, key: &str) -> (Vec<u8>, ObjectMeta) {
    let dl = s.get(key).expect("get").expect("object exists");
    let mut body = Vec::new();
    let mut r = dl.body;
    r.read_to_end(&mut body).expect("read body");
    (body, dl.head.meta)
}

/// Stores `body` under `key` with `meta`.
pub fn put_object(s: &dyn Storage, key: &str, body: &[u8], meta: &ObjectMeta) {
    s.put(key, &mut Cursor::new(body), body.len() as u64, meta)
        .unwrap_or_else(|e| panic!("put {key}: {e}"));
}

/// Rewrites `key` with one byte flipped in the middle of its pages (past
/// the 100-byte LTX header, before the 16-byte trailer), keeping its
/// metadata; returns what it held before.
pub fn flip_byte(s: &dyn Storage, key: &str) -> (Vec<u8>, ObjectMeta) {
    let (body, meta) = read_object(s, key);
    let mut bad = body.clone();
    let at = 100 + (bad.len() - 100 - 16) / 2;
    bad[at] ^= 0x40;
    put_object(s, key, &bad, &meta);
    (body, meta)
}
