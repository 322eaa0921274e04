//! Benchmark harness: walsync and Litestream side by side (scripts/bench.sh).
//!
//! One run starts one s3s-fs server and one counting proxy in front of it.
//! Both replicators talk to the server only through the proxy, each to its
//! own bucket (`ws` for walsync, `ls` for Litestream), with the same sync
//! interval and the same writers (every commit goes to both tools' copy of a
//! database). The harness measures
//!
//! - fleet phases (1, 10, 100, 1,000 databases, both tools running at once):
//!   median and peak RSS, S3 requests by kind during steady writes and
//!   during idle time, CPU seconds per 10,000 commits;
//! - lag phases (one tool at a time): commit → LTX object on the server's
//!   disk, at two sync intervals;
//! - the application's commit latency with no replicator, walsync, Litestream
//!   (interleaved turns, see `commit_latency`);
//! - restore wall time and peak RSS of a large database with many
//!   incremental files, each tool restoring its own replica and walsync
//!   restoring Litestream's;
//! - a retention phase (`retention`): both tools compacting and pruning
//!   under a compressed schedule, then idle: objects per database, requests
//!   per hour, the files a latest restore reads, verify time over the run.
//!
//! Every phase ends with restores, `PRAGMA integrity_check` and a row-count
//! comparison with the source; if any check fails no figures are printed.
//!
//! usage: walsync-bench run --walsync BIN --litestream BIN --s3s-fs BIN
//!        --out DIR [--quick] [--counts 1,10,100] [--steady S] [--idle S]
//!        [--rss-secs S] [--load-dbs N] [--lag-samples N]
//!        [--restore-mib M] [--restore-incrementals K] [--latency-commits N]
//!        [--day S] [--day-idle S]
//!        [--only fleet,lag,latency,restore,retention] [--keep]

use rusqlite::{params, Connection};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

type R<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

mod follow;
mod monitoring;
mod retention;

const ACCESS_KEY: &str = "benchkey";
const SECRET_KEY: &str = "benchsecret0123456789";
const WS: &str = "walsync-replica";
const LS: &str = "litestream-replica";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("measure") {
        // Internal: run a command and report its wall time and peak RSS.
        // A separate small process, because a child's ru_maxrss starts from
        // the RSS of the process that forked it.
        match measure_child(&args[1..]) {
            Ok((wall, rss, code)) => {
                println!("{wall} {rss} {code}");
                return;
            }
            Err(e) => {
                eprintln!("walsync-bench measure: {e}");
                std::process::exit(1);
            }
        }
    }
    if args.first().map(String::as_str) != Some("run") {
        eprintln!("usage: walsync-bench run --walsync BIN --litestream BIN --s3s-fs BIN --out DIR [--quick] ...");
        std::process::exit(2);
    }
    let opts = match Opts::parse(&args[1..]) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("walsync-bench: {e}");
            std::process::exit(2);
        }
    };
    match run(&opts) {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("walsync-bench: {e}");
            std::process::exit(1);
        }
    }
}

#[derive(Debug, Clone)]
struct Opts {
    mode: String,
    walsync: PathBuf,
    litestream: PathBuf,
    s3s_fs: PathBuf,
    out: PathBuf,
    counts: Vec<usize>,
    load_dbs: usize,
    steady_secs: u64,
    idle_secs: u64,
    rss_secs: u64,
    lag_samples: usize,
    lag_dbs: usize,
    restore_mib: u64,
    restore_incrementals: usize,
    latency_commits: usize,
    day_secs: u64,
    day_idle_secs: u64,
    /// Databases per process and seconds of writes in the monitoring phase.
    monitor_dbs: usize,
    monitor_secs: u64,
    /// Commits and idle seconds of the follow phase.
    follow_commits: usize,
    follow_idle_secs: u64,
    keep: bool,
    only: Vec<String>,
}

impl Opts {
    fn parse(args: &[String]) -> R<Opts> {
        let quick = args.iter().any(|a| a == "--quick");
        let mut o = if quick {
            Opts {
                mode: "quick".into(),
                walsync: PathBuf::new(),
                litestream: PathBuf::new(),
                s3s_fs: PathBuf::new(),
                out: PathBuf::from("target/bench"),
                counts: vec![1, 10, 100],
                load_dbs: 10,
                steady_secs: 15,
                idle_secs: 15,
                rss_secs: 8,
                lag_samples: 100,
                lag_dbs: 20,
                restore_mib: 64,
                restore_incrementals: 200,
                latency_commits: 1000,
                day_secs: 180,
                day_idle_secs: 180,
                monitor_dbs: 1000,
                monitor_secs: 60,
                follow_commits: 60,
                follow_idle_secs: 30,
                keep: false,
                only: Vec::new(),
            }
        } else {
            Opts {
                mode: "full".into(),
                walsync: PathBuf::new(),
                litestream: PathBuf::new(),
                s3s_fs: PathBuf::new(),
                out: PathBuf::from("target/bench"),
                counts: vec![1, 10, 100, 1000],
                load_dbs: 10,
                steady_secs: 300,
                idle_secs: 300,
                rss_secs: 60,
                lag_samples: 400,
                lag_dbs: 10,
                restore_mib: 1024,
                restore_incrementals: 1000,
                latency_commits: 5000,
                day_secs: 600,
                day_idle_secs: 240,
                monitor_dbs: 1000,
                monitor_secs: 300,
                follow_commits: 300,
                follow_idle_secs: 120,
                keep: false,
                only: Vec::new(),
            }
        };
        let mut custom = false;
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut val = || -> R<String> {
                it.next()
                    .cloned()
                    .ok_or_else(|| format!("{a} needs a value").into())
            };
            match a.as_str() {
                "--quick" => {}
                "--keep" => o.keep = true,
                "--walsync" => o.walsync = val()?.into(),
                "--litestream" => o.litestream = val()?.into(),
                "--s3s-fs" => o.s3s_fs = val()?.into(),
                "--out" => o.out = val()?.into(),
                other => {
                    custom = true;
                    match other {
                        "--counts" => {
                            o.counts = val()?
                                .split(',')
                                .map(|s| s.trim().parse())
                                .collect::<Result<_, _>>()?
                        }
                        "--load-dbs" => o.load_dbs = val()?.parse()?,
                        "--steady" => o.steady_secs = val()?.parse()?,
                        "--idle" => o.idle_secs = val()?.parse()?,
                        "--rss-secs" => o.rss_secs = val()?.parse()?,
                        "--lag-samples" => o.lag_samples = val()?.parse()?,
                        "--lag-dbs" => o.lag_dbs = val()?.parse()?,
                        "--restore-mib" => o.restore_mib = val()?.parse()?,
                        "--restore-incrementals" => o.restore_incrementals = val()?.parse()?,
                        "--latency-commits" => o.latency_commits = val()?.parse()?,
                        "--day" => o.day_secs = val()?.parse()?,
                        "--day-idle" => o.day_idle_secs = val()?.parse()?,
                        "--monitor-dbs" => o.monitor_dbs = val()?.parse()?,
                        "--monitor-secs" => o.monitor_secs = val()?.parse()?,
                        "--follow-commits" => o.follow_commits = val()?.parse()?,
                        "--follow-idle" => o.follow_idle_secs = val()?.parse()?,
                        "--only" => o.only = val()?.split(',').map(str::to_string).collect(),
                        _ => return Err(format!("unknown flag {other}").into()),
                    }
                }
            }
        }
        if custom {
            o.mode = format!("{} (custom)", o.mode);
        }
        for (p, what) in [
            (&o.walsync, "--walsync"),
            (&o.litestream, "--litestream"),
            (&o.s3s_fs, "--s3s-fs"),
        ] {
            if !p.is_file() {
                return Err(format!("{what} {} is not a file", p.display()).into());
            }
        }
        if !o.counts.contains(&o.load_dbs) {
            o.counts.push(o.load_dbs);
            o.counts.sort();
        }
        Ok(o)
    }
}

// ---------------------------------------------------------------- helpers

fn log(msg: impl AsRef<str>) {
    eprintln!("[bench {}] {}", clock(), msg.as_ref());
}

fn clock() -> String {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let s = START.get_or_init(Instant::now).elapsed().as_secs_f64();
    format!("{s:7.1}s")
}

struct Rng(u64);
impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn pct(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn free_port() -> R<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn wait_port(port: u16, secs: u64) -> R<()> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(50));
    }
    Err(format!("nothing listens on port {port} after {secs}s").into())
}

fn raise_nofile() {
    // SAFETY: plain libc calls on a local struct.
    unsafe {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

// ------------------------------------------------------ /proc measurements

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// user + system CPU seconds of a process (all its threads).
fn cpu_secs(pid: u32) -> f64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return f64::NAN;
    };
    // Fields after the command name, which is in parentheses.
    let rest = &s[s.rfind(')').map(|i| i + 2).unwrap_or(0)..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 here.
    let ticks: f64 = f.get(11).and_then(|x| x.parse().ok()).unwrap_or(f64::NAN)
        + f.get(12).and_then(|x| x.parse().ok()).unwrap_or(f64::NAN);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks / hz
}

fn smaps_rollup(pid: u32) -> Value {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) else {
        return Value::Null;
    };
    let mut m = serde_json::Map::new();
    for l in s.lines().skip(1) {
        let mut f = l.split_whitespace();
        if let (Some(k), Some(v)) = (f.next(), f.next()) {
            if let Ok(v) = v.parse::<u64>() {
                m.insert(k.trim_end_matches(':').to_string(), json!(v));
            }
        }
    }
    Value::Object(m)
}

/// Samples VmRSS of some processes every 200 ms until stopped.
struct Sampler {
    stop: Arc<AtomicBool>,
    handle: thread::JoinHandle<Vec<Vec<u64>>>,
}

impl Sampler {
    fn start(pids: Vec<u32>) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = thread::spawn(move || {
            let mut out = vec![Vec::new(); pids.len()];
            while !s.load(Ordering::Relaxed) {
                for (i, p) in pids.iter().enumerate() {
                    if let Some(v) = status_kib(*p, "VmRSS:") {
                        out[i].push(v);
                    }
                }
                thread::sleep(Duration::from_millis(200));
            }
            out
        });
        Sampler { stop, handle }
    }
    /// Median VmRSS (KiB) of each process.
    fn finish(self) -> Vec<u64> {
        self.stop.store(true, Ordering::Relaxed);
        let v = self.handle.join().unwrap_or_default();
        v.into_iter()
            .map(|mut s| {
                s.sort();
                s.get(s.len() / 2).copied().unwrap_or(0)
            })
            .collect()
    }
}

// ---------------------------------------------------------- counting proxy

/// Request counts by (bucket, kind).
#[derive(Default)]
struct Counters(Mutex<BTreeMap<(String, String), u64>>);

impl Counters {
    fn add(&self, bucket: &str, kind: &str) {
        let mut m = self.0.lock().unwrap();
        *m.entry((bucket.to_string(), kind.to_string())).or_default() += 1;
    }
    fn snapshot(&self) -> BTreeMap<(String, String), u64> {
        self.0.lock().unwrap().clone()
    }
}

const KINDS: [&str; 6] = ["PUT", "GET", "LIST", "HEAD", "DELETE", "POST"];

fn diff(
    a: &BTreeMap<(String, String), u64>,
    b: &BTreeMap<(String, String), u64>,
    bucket: &str,
) -> BTreeMap<String, u64> {
    let mut out: BTreeMap<String, u64> = KINDS.iter().map(|k| (k.to_string(), 0)).collect();
    for ((bk, kind), n) in b {
        if bk == bucket {
            let before = a.get(&(bk.clone(), kind.clone())).copied().unwrap_or(0);
            *out.entry(kind.clone()).or_default() += n - before;
        }
    }
    out
}

/// What kind of S3 request a request line is (path-style addressing).
fn classify(method: &str, target: &str) -> (String, &'static str) {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let path = path.trim_start_matches('/');
    let (bucket, key) = path.split_once('/').unwrap_or((path, ""));
    let kind = match method {
        "GET" if key.is_empty() || query.split('&').any(|p| p.starts_with("list-type=")) => "LIST",
        "GET" => "GET",
        "PUT" => "PUT",
        "HEAD" => "HEAD",
        "DELETE" => "DELETE",
        "POST" => "POST",
        _ => "OTHER",
    };
    (bucket.to_string(), kind)
}

/// Starts the proxy on a free port; returns the port.
fn start_proxy(upstream: SocketAddr, counters: Arc<Counters>) -> R<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let c = counters.clone();
            thread::spawn(move || {
                let _ = proxy_conn(conn, upstream, &c);
            });
        }
    });
    Ok(port)
}

/// Forwards one client connection byte for byte. Requests are parsed only
/// to find where each one ends (Content-Length or chunked bodies) and to
/// count it; responses are copied back unparsed on their own thread, so
/// `Expect: 100-continue` and chunked responses pass through untouched. The
/// Host header is forwarded as the client sent it, so SigV4 still verifies.
fn proxy_conn(client: TcpStream, upstream: SocketAddr, counters: &Counters) -> R<()> {
    let up = TcpStream::connect(upstream)?;
    client.set_nodelay(true)?;
    up.set_nodelay(true)?;
    let mut up_r = up.try_clone()?;
    let mut client_w = client.try_clone()?;
    let back = thread::spawn(move || {
        let _ = std::io::copy(&mut up_r, &mut client_w);
        let _ = client_w.shutdown(Shutdown::Both);
    });
    let mut r = BufReader::with_capacity(64 * 1024, client);
    let mut w = up;
    let res = (|| -> R<()> {
        loop {
            let mut head = Vec::with_capacity(1024);
            let mut first = true;
            let (mut method, mut target) = (String::new(), String::new());
            let mut content_length = 0u64;
            let mut chunked = false;
            loop {
                let start = head.len();
                if r.read_until(b'\n', &mut head)? == 0 {
                    return Ok(()); // client closed
                }
                let line = String::from_utf8_lossy(&head[start..])
                    .trim_end()
                    .to_string();
                if first {
                    let mut f = line.split_whitespace();
                    method = f.next().unwrap_or("").to_string();
                    target = f.next().unwrap_or("").to_string();
                    first = false;
                } else if line.is_empty() {
                    break;
                } else if let Some((k, v)) = line.split_once(':') {
                    let k = k.trim().to_ascii_lowercase();
                    let v = v.trim();
                    if k == "content-length" {
                        content_length = v.parse()?;
                    } else if k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked")
                    {
                        chunked = true;
                    }
                }
            }
            let (bucket, kind) = classify(&method, &target);
            counters.add(&bucket, kind);
            w.write_all(&head)?;
            if chunked {
                loop {
                    let mut line = Vec::new();
                    r.read_until(b'\n', &mut line)?;
                    w.write_all(&line)?;
                    let s = String::from_utf8_lossy(&line);
                    let size = u64::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16)?;
                    if size == 0 {
                        // trailers, then an empty line
                        loop {
                            let mut t = Vec::new();
                            if r.read_until(b'\n', &mut t)? == 0 {
                                return Ok(());
                            }
                            w.write_all(&t)?;
                            if t == b"\r\n" || t == b"\n" {
                                break;
                            }
                        }
                        break;
                    }
                    std::io::copy(&mut (&mut r).take(size + 2), &mut w)?;
                }
            } else if content_length > 0 {
                let n = std::io::copy(&mut (&mut r).take(content_length), &mut w)?;
                if n != content_length {
                    return Ok(());
                }
            }
            w.flush()?;
        }
    })();
    let _ = w.shutdown(Shutdown::Write);
    let _ = back.join();
    res
}

// ----------------------------------------------------------- the harness

struct Env {
    opts: Opts,
    work: PathBuf,
    s3_root: PathBuf,
    direct: String,
    proxied: String,
    counters: Arc<Counters>,
    failures: Mutex<Vec<String>>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Tool {
    Walsync,
    Litestream,
}

impl Tool {
    fn bucket(self) -> &'static str {
        match self {
            Tool::Walsync => WS,
            Tool::Litestream => LS,
        }
    }
    fn label(self) -> &'static str {
        match self {
            Tool::Walsync => "walsync",
            Tool::Litestream => "litestream",
        }
    }
}

fn db_name(i: usize) -> String {
    format!("db{i:04}")
}

/// A set of databases of one tool: `<dir>/db0000.db` …, replicated to
/// `<bucket>/<prefix>/db0000/`.
#[derive(Clone)]
struct DbSet {
    tool: Tool,
    dir: PathBuf,
    prefix: String,
    n: usize,
}

impl DbSet {
    fn path(&self, i: usize) -> PathBuf {
        self.dir.join(format!("{}.db", db_name(i)))
    }
    fn remote_dir(&self, env: &Env, i: usize) -> PathBuf {
        env.s3_root
            .join(self.tool.bucket())
            .join(&self.prefix)
            .join(db_name(i))
    }
}

fn create_db(path: &Path) -> R<()> {
    let c = Connection::open(path)?;
    c.execute_batch(
        "PRAGMA page_size=4096; PRAGMA journal_mode=WAL;
         CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, body BLOB);
         INSERT INTO t(body) VALUES (zeroblob(200));",
    )?;
    Ok(())
}

/// Creates `n` identical small databases for each tool.
fn create_sets(env: &Env, phase: &str, n: usize) -> R<(DbSet, DbSet)> {
    let mk = |tool: Tool| DbSet {
        tool,
        dir: env.work.join(phase).join(tool.label()),
        prefix: phase.to_string(),
        n,
    };
    let (a, b) = (mk(Tool::Walsync), mk(Tool::Litestream));
    std::fs::create_dir_all(&a.dir)?;
    std::fs::create_dir_all(&b.dir)?;
    for i in 0..n {
        create_db(&a.path(i))?;
        std::fs::copy(a.path(i), b.path(i))?;
    }
    Ok((a, b))
}

fn open_writer(path: &Path) -> R<Connection> {
    let c = Connection::open(path)?;
    c.execute_batch("PRAGMA busy_timeout=10000; PRAGMA synchronous=NORMAL;")?;
    Ok(c)
}

fn dur_arg(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

fn litestream_yaml(env: &Env, sets: &[&DbSet], interval: Duration, endpoint: &str) -> String {
    let mut y = String::from("dbs:\n");
    for set in sets {
        for i in 0..set.n {
            let _ = write!(
                y,
                "  - path: {}\n    monitor-interval: {iv}\n    replica:\n      type: s3\n      bucket: {LS}\n      path: {}/{}\n      endpoint: {endpoint}\n      region: us-east-1\n      access-key-id: {ACCESS_KEY}\n      secret-access-key: {SECRET_KEY}\n      force-path-style: true\n      sync-interval: {iv}\n",
                set.path(i).display(),
                set.prefix,
                db_name(i),
                iv = dur_arg(interval)
            );
        }
    }
    let _ = env;
    y
}

struct Running {
    tool: Tool,
    child: Child,
}

impl Running {
    fn pid(&self) -> u32 {
        self.child.id()
    }
    /// SIGINT, then wait; SIGKILL after 60 s (walsync) or 5 s (Litestream,
    /// which can take 10-15 s to exit; by then the phase has already waited
    /// for its last commits to be stored). Returns whether it exited 0.
    fn stop(mut self) -> bool {
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGINT);
        }
        let grace = match self.tool {
            Tool::Walsync => 60,
            Tool::Litestream => 5,
        };
        let end = Instant::now() + Duration::from_secs(grace);
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st.success();
            }
            if Instant::now() > end {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return false;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A phase that fails part-way must not leave a replicator running.
impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn start_tool(env: &Env, set: &DbSet, interval: Duration, logname: &str) -> R<Running> {
    let logf = std::fs::File::create(env.work.join(format!("{logname}.log")))?;
    let mut cmd = match set.tool {
        Tool::Walsync => {
            let mut c = Command::new(&env.opts.walsync);
            c.arg("watch");
            for i in 0..set.n {
                c.arg(set.path(i));
            }
            c.arg("-b")
                .arg(format!("s3://{WS}/{}", set.prefix))
                .arg("--sync-interval")
                .arg(dur_arg(interval))
                .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
                .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
                .env("AWS_ENDPOINT_URL_S3", &env.proxied)
                .env("AWS_REGION", "us-east-1");
            c
        }
        Tool::Litestream => {
            let cfg = env.work.join(format!("{logname}.yml"));
            std::fs::write(&cfg, litestream_yaml(env, &[set], interval, &env.proxied))?;
            let mut c = Command::new(&env.opts.litestream);
            c.arg("replicate").arg("-config").arg(cfg);
            c.env_remove("AWS_CA_BUNDLE");
            c
        }
    };
    cmd.stdin(Stdio::null())
        .stdout(logf.try_clone()?)
        .stderr(logf);
    let child = cmd.spawn()?;
    Ok(Running {
        tool: set.tool,
        child,
    })
}

/// Highest max TXID among a database's level-0 objects on the server's disk.
fn max_l0_txid(remote: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(remote.join("0000")) else {
        return 0;
    };
    rd.flatten()
        .filter_map(|e| {
            let n = e.file_name().into_string().ok()?;
            walsync::storage::parse_ltx_filename(&n).map(|(_, max)| max)
        })
        .max()
        .unwrap_or(0)
}

/// Objects per level (level → count) of a database's replica on disk.
fn remote_files(remote: &Path) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    if let Ok(rd) = std::fs::read_dir(remote) {
        for lvl in rd.flatten() {
            let n = std::fs::read_dir(lvl.path())
                .map(|d| {
                    d.flatten()
                        .filter(|e| e.file_name().to_string_lossy().ends_with(".ltx"))
                        .count()
                })
                .unwrap_or(0);
            if n > 0 {
                out.insert(lvl.file_name().to_string_lossy().to_string(), n);
            }
        }
    }
    out
}

fn wait_initial(env: &Env, set: &DbSet, secs: u64, proc_: &mut Running) -> R<()> {
    let end = Instant::now() + Duration::from_secs(secs);
    let mut next = 0;
    while next < set.n {
        if !remote_files(&set.remote_dir(env, next)).is_empty() {
            next += 1;
            continue;
        }
        if let Ok(Some(st)) = proc_.child.try_wait() {
            return Err(format!("{} exited during start-up: {st}", set.tool.label()).into());
        }
        if Instant::now() > end {
            return Err(format!(
                "{}: {} of {} databases have no object in the bucket after {secs}s",
                set.tool.label(),
                set.n - next,
                set.n
            )
            .into());
        }
        thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Runs a command to completion; returns wall time, peak RSS (KiB) and
/// whether it exited 0. The command runs under `walsync-bench measure`, a
/// small process of its own, so the parent's RSS does not leak into the
/// child's `ru_maxrss`.
fn run_measured(cmd: &mut Command, log: &Path) -> R<(f64, u64, bool)> {
    let f = std::fs::File::create(log)?;
    let mut wrapped = Command::new(std::env::current_exe()?);
    wrapped
        .arg("measure")
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => wrapped.env(k, v),
            None => wrapped.env_remove(k),
        };
    }
    let out = wrapped.stdin(Stdio::null()).stderr(f).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or("");
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() != 3 {
        return Err(format!("walsync-bench measure printed '{line}'").into());
    }
    Ok((f[0].parse()?, f[1].parse()?, f[2] == "0"))
}

/// `walsync-bench measure CMD ARGS...`: wall seconds, peak RSS (KiB) from
/// wait4, exit code. The command's standard output goes to standard error.
fn measure_child(args: &[String]) -> R<(f64, u64, i32)> {
    let (prog, rest) = args.split_first().ok_or("measure: no command")?;
    let t0 = Instant::now();
    let child = Command::new(prog)
        .args(rest)
        .stdin(Stdio::null())
        .stdout(std::io::stderr())
        .spawn()?;
    let mut status = 0i32;
    // SAFETY: zeroed rusage is a valid value; we reap our own child.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut ru) };
    let wall = t0.elapsed().as_secs_f64();
    if rc < 0 {
        return Err("wait4 failed".into());
    }
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    Ok((wall, ru.ru_maxrss as u64, code))
}

/// Restores database `i` of a set. `by` chooses the restoring tool.
fn restore(
    env: &Env,
    set: &DbSet,
    i: usize,
    by: Tool,
    out: &Path,
    full_check: bool,
) -> R<(f64, u64, bool)> {
    let _ = std::fs::remove_file(out);
    // Every timed restore starts with no dirty pages waiting for writeback
    // (the previous phase or restore may have left a gigabyte of them), so
    // neither tool pays for the other's writes.
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    let log = env.work.join(format!(
        "restore-{}-{}-by-{}-{}.log",
        set.prefix,
        set.tool.label(),
        by.label(),
        db_name(i)
    ));
    match by {
        Tool::Walsync => run_measured(
            Command::new(&env.opts.walsync)
                .arg("restore")
                .arg(format!("{}/{}", set.prefix, db_name(i)))
                .arg("-o")
                .arg(out)
                .arg("-b")
                .arg(format!("s3://{}", set.tool.bucket()))
                .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
                .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
                .env("AWS_ENDPOINT_URL_S3", &env.direct)
                .env("AWS_REGION", "us-east-1"),
            &log,
        ),
        Tool::Litestream => {
            assert_eq!(set.tool, Tool::Litestream);
            let one = DbSet {
                n: i + 1,
                ..set.clone()
            };
            let cfg = env
                .work
                .join(format!("restore-{}-{}.yml", set.prefix, db_name(i)));
            std::fs::write(
                &cfg,
                litestream_yaml(env, &[&one], Duration::from_secs(1), &env.direct),
            )?;
            run_measured(
                Command::new(&env.opts.litestream)
                    .arg("restore")
                    .args(if full_check {
                        &["-integrity-check", "full"][..]
                    } else {
                        &[][..]
                    })
                    .arg("-config")
                    .arg(&cfg)
                    .arg("-o")
                    .arg(out)
                    .arg(set.path(i))
                    .env_remove("AWS_CA_BUNDLE"),
                &log,
            )
        }
    }
}

/// Row count and a digest of the rows.
fn fingerprint(path: &Path) -> R<(u64, String)> {
    let c = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let mut st = c.prepare("SELECT id, body FROM t ORDER BY id")?;
    let mut rows = st.query([])?;
    let mut h = Sha256::new();
    let mut n = 0u64;
    while let Some(r) = rows.next()? {
        let id: i64 = r.get(0)?;
        let body: Vec<u8> = r.get(1)?;
        h.update(id.to_be_bytes());
        h.update((body.len() as u64).to_be_bytes());
        h.update(&body);
        n += 1;
    }
    Ok((n, walsync::fsutil::hex(&h.finalize())))
}

fn integrity_ok(path: &Path) -> R<bool> {
    let c = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let s: String = c.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
    Ok(s == "ok")
}

/// Restores database `i` with `by`, checks integrity and rows against the
/// source. Records a failure and returns the measurement.
fn check_restore(env: &Env, set: &DbSet, i: usize, by: Tool) -> R<(f64, u64, bool)> {
    check_restore_with(env, set, i, by, false)
}

fn check_restore_with(
    env: &Env,
    set: &DbSet,
    i: usize,
    by: Tool,
    full_check: bool,
) -> R<(f64, u64, bool)> {
    let out = env.work.join("restored.db");
    let (wall, rss, ok) = restore(env, set, i, by, &out, full_check)?;
    let what = format!(
        "{} restoring {}'s replica of {}/{}",
        by.label(),
        set.tool.label(),
        set.prefix,
        db_name(i)
    );
    let good = if !ok || !out.exists() {
        env.fail(format!(
            "{what}: the restore command failed (see the logs in {})",
            env.work.display()
        ));
        false
    } else if !integrity_ok(&out)? {
        env.fail(format!("{what}: PRAGMA integrity_check is not ok"));
        false
    } else {
        let src = fingerprint(&set.path(i))?;
        let got = fingerprint(&out)?;
        if src != got {
            env.fail(format!(
                "{what}: {} rows restored, source has {} (or the rows differ)",
                got.0, src.0
            ));
            false
        } else {
            true
        }
    };
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", out.display()));
    }
    Ok((wall, rss, good))
}

fn sample_indices(n: usize, max: usize) -> Vec<usize> {
    if n <= max {
        return (0..n).collect();
    }
    let mut v: Vec<usize> = (0..max).map(|k| k * (n - 1) / (max - 1)).collect();
    v.dedup();
    v
}

impl Env {
    fn fail(&self, msg: String) {
        log(format!("CHECK FAILED: {msg}"));
        self.failures.lock().unwrap().push(msg);
    }
}

// ------------------------------------------------------------------ phases

/// Fleet phase: both tools on their own copy of `n` databases at once.
fn fleet(env: &Env, n: usize) -> R<Value> {
    let o = &env.opts;
    let load = n == o.load_dbs;
    let steady = if load { o.steady_secs } else { o.rss_secs };
    let idle = if load { o.idle_secs } else { 0 };
    let interval = Duration::from_secs(1);
    let phase = format!("fleet-{n}");
    log(format!("{phase}: creating {n} databases per tool"));
    let (a, b) = create_sets(env, &phase, n)?;
    let mut ws = start_tool(env, &a, interval, &format!("{phase}-walsync"))?;
    let mut ls = start_tool(env, &b, interval, &format!("{phase}-litestream"))?;
    let boot = 60 + n as u64 / 5;
    wait_initial(env, &a, boot, &mut ws)?;
    wait_initial(env, &b, boot, &mut ls)?;
    thread::sleep(Duration::from_secs(1));
    log(format!(
        "{phase}: both tools have every database in the bucket; writing for {steady}s"
    ));

    let sampler = Sampler::start(vec![ws.pid(), ls.pid()]);
    let c0 = env.counters.snapshot();
    let cpu0 = (cpu_secs(ws.pid()), cpu_secs(ls.pid()));
    // Light writes: 2 commits/s per database, at most 100 commits/s in all.
    let rate = (n as f64 * 2.0).min(100.0);
    let commits = {
        let mut conns = Vec::with_capacity(2 * n);
        for i in 0..n {
            conns.push((open_writer(&a.path(i))?, open_writer(&b.path(i))?));
        }
        let mut rng = Rng::new(n as u64);
        let start = Instant::now();
        let end = start + Duration::from_secs(steady);
        let mut k = 0u64;
        while Instant::now() < end {
            let i = (k as usize) % n;
            let body = rng.bytes(100);
            conns[i]
                .0
                .execute("INSERT INTO t(body) VALUES (?1)", params![body])?;
            conns[i]
                .1
                .execute("INSERT INTO t(body) VALUES (?1)", params![body])?;
            k += 1;
            let due = start + Duration::from_secs_f64(k as f64 / rate);
            if let Some(d) = due.checked_duration_since(Instant::now()) {
                thread::sleep(d);
            }
        }
        k
    };
    // Let the last commits ship before closing the steady window.
    thread::sleep(Duration::from_secs(2));
    let c1 = env.counters.snapshot();
    let cpu1 = (cpu_secs(ws.pid()), cpu_secs(ls.pid()));
    if idle > 0 {
        log(format!("{phase}: idle for {idle}s"));
        thread::sleep(Duration::from_secs(idle));
    }
    let c2 = env.counters.snapshot();
    let medians = sampler.finish();
    let peaks = (
        status_kib(ws.pid(), "VmHWM:").unwrap_or(0),
        status_kib(ls.pid(), "VmHWM:").unwrap_or(0),
    );
    let smaps = (smaps_rollup(ws.pid()), smaps_rollup(ls.pid()));
    let stopped = (ws.stop(), ls.stop());
    if !stopped.0 {
        env.fail(format!("{phase}: walsync did not exit 0 on SIGINT"));
    }
    if !stopped.1 {
        log(format!(
            "{phase}: litestream did not exit 0 on SIGINT (noted)"
        ));
    }
    log(format!(
        "{phase}: {commits} commits per tool; checking restores"
    ));
    for i in sample_indices(n, 10) {
        check_restore(env, &a, i, Tool::Walsync)?;
        check_restore(env, &b, i, Tool::Litestream)?;
    }
    let per = |tool: Tool, med: u64, peak: u64, cpu: f64, smaps: &Value| {
        json!({
            "rss_median_kib": med,
            "rss_peak_kib": peak,
            "cpu_s_steady": cpu,
            "cpu_s_per_10k_commits": if commits > 0 { cpu * 10_000.0 / commits as f64 } else { f64::NAN },
            "requests_steady": diff(&c0, &c1, tool.bucket()),
            "requests_idle": diff(&c1, &c2, tool.bucket()),
            "smaps_rollup_kib": smaps,
        })
    };
    Ok(json!({
        "databases": n,
        "steady_secs": steady,
        "idle_secs": idle,
        "commits_per_tool": commits,
        "commit_rate_per_s": rate,
        "walsync": per(Tool::Walsync, medians[0], peaks.0, cpu1.0 - cpu0.0, &smaps.0),
        "litestream": per(Tool::Litestream, medians[1], peaks.1, cpu1.1 - cpu0.1, &smaps.1),
    }))
}

/// Lag phase for one tool at one sync interval.
fn lag(env: &Env, tool: Tool, interval: Duration) -> R<Value> {
    let o = &env.opts;
    let dbs = o.lag_dbs.max(1);
    let per_db = o.lag_samples.div_ceil(dbs);
    let phase = format!("lag-{}ms-{}", interval.as_millis(), tool.label());
    let (a, b) = create_sets(env, &phase, dbs)?;
    let set = if tool == Tool::Walsync { a } else { b };
    let mut p = start_tool(env, &set, interval, &phase)?;
    wait_initial(env, &set, 60, &mut p)?;
    thread::sleep(Duration::from_millis(500));
    log(format!(
        "{phase}: {per_db} commits on each of {dbs} databases"
    ));
    let timeouts = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::new();
    for i in 0..dbs {
        let path = set.path(i);
        let remote = set.remote_dir(env, i);
        let timeouts = timeouts.clone();
        handles.push(thread::spawn(move || -> R<Vec<f64>> {
            let c = open_writer(&path)?;
            let mut rng = Rng::new(1000 + i as u64);
            let mut lags = Vec::new();
            for _ in 0..per_db {
                // A random phase against the replicator's ticker.
                let gap = rng.below(interval.as_millis() as u64) + 20;
                thread::sleep(Duration::from_millis(gap));
                let before = max_l0_txid(&remote);
                c.execute("INSERT INTO t(body) VALUES (?1)", params![rng.bytes(100)])?;
                let t0 = Instant::now();
                let deadline = t0 + interval + Duration::from_secs(10);
                loop {
                    if max_l0_txid(&remote) > before {
                        lags.push(t0.elapsed().as_secs_f64() * 1000.0);
                        break;
                    }
                    if Instant::now() > deadline {
                        timeouts.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    thread::sleep(Duration::from_millis(2));
                }
            }
            Ok(lags)
        }));
    }
    let mut lags = Vec::new();
    for h in handles {
        lags.extend(h.join().map_err(|_| "lag writer panicked")??);
    }
    thread::sleep(Duration::from_secs(2));
    log(format!("{phase}: stopping {}", tool.label()));
    if !p.stop() && tool == Tool::Walsync {
        env.fail(format!("{phase}: walsync did not exit 0 on SIGINT"));
    }
    for i in sample_indices(dbs, 5) {
        check_restore(env, &set, i, tool)?;
    }
    lags.sort_by(f64::total_cmp);
    Ok(json!({
        "tool": tool.label(),
        "interval_ms": interval.as_millis() as u64,
        "samples": lags.len(),
        "timeouts": timeouts.load(Ordering::Relaxed),
        "p50_ms": pct(&lags, 0.50),
        "p95_ms": pct(&lags, 0.95),
        "p99_ms": pct(&lags, 0.99),
        "max_ms": lags.last().copied().unwrap_or(f64::NAN),
    }))
}

/// The application's commit latency with no replicator or one tool.
/// Commits per turn in the latency phase, and the pause after each turn
/// (longer than the 1 s sync interval, so a replicator's work on its turn is
/// done before the next turn starts).
const LATENCY_TURN: usize = 250;
const LATENCY_PAUSE: Duration = Duration::from_millis(1300);

/// The application's commit latency with no replicator, under walsync and
/// under Litestream, interleaved: three identical databases, one left alone,
/// one watched by walsync and one by Litestream (both running throughout),
/// are written in turns of [`LATENCY_TURN`] commits, rotating which goes
/// first. Slow drifts of a shared machine (other load, CPU clocks, disk
/// writeback) then fall on the three alike instead of on whichever ran
/// last. During one database's turn the other replicators have nothing to
/// do: their databases do not change.
fn commit_latency(env: &Env) -> R<Vec<Value>> {
    let phase = "latency";
    let (a, b) = create_sets(env, phase, 1)?;
    let alone = env.work.join(phase).join("unreplicated.db");
    create_db(&alone)?;
    let interval = Duration::from_secs(1);
    let mut ws = start_tool(env, &a, interval, "latency-walsync")?;
    let mut ls = start_tool(env, &b, interval, "latency-litestream")?;
    wait_initial(env, &a, 60, &mut ws)?;
    wait_initial(env, &b, 60, &mut ls)?;
    thread::sleep(Duration::from_millis(500));

    let labels = ["none", "walsync", "litestream"];
    let writers = [
        open_writer(&alone)?,
        open_writer(&a.path(0))?,
        open_writer(&b.path(0))?,
    ];
    let mut lat: [Vec<f64>; 3] = Default::default();
    let turns = env.opts.latency_commits.div_ceil(LATENCY_TURN);
    log(format!(
        "latency: {} commits each, in {turns} turns of {LATENCY_TURN}",
        turns * LATENCY_TURN
    ));
    let mut rng = Rng::new(7);
    for round in 0..turns {
        for k in 0..3 {
            let who = (round + k) % 3;
            for _ in 0..LATENCY_TURN {
                let body = rng.bytes(200);
                let t0 = Instant::now();
                writers[who].execute("INSERT INTO t(body) VALUES (?1)", params![body])?;
                lat[who].push(t0.elapsed().as_secs_f64() * 1e6);
                thread::sleep(Duration::from_millis(2));
            }
            thread::sleep(LATENCY_PAUSE);
        }
    }
    drop(writers);
    thread::sleep(Duration::from_secs(2));
    for run in [ws, ls] {
        let t = run.tool;
        log(format!("latency: stopping {}", t.label()));
        if !run.stop() && t == Tool::Walsync {
            env.fail("latency: walsync did not exit 0 on SIGINT".into());
        }
    }
    check_restore(env, &a, 0, Tool::Walsync)?;
    check_restore(env, &b, 0, Tool::Litestream)?;
    Ok(labels
        .iter()
        .zip(lat.iter_mut())
        .map(|(label, l)| {
            l.sort_by(f64::total_cmp);
            json!({
                "replicator": label,
                "commits": l.len(),
                "p50_us": pct(l, 0.50),
                "p99_us": pct(l, 0.99),
            })
        })
        .collect())
}

/// Restore phase: a large database, a snapshot and many incremental files.
fn restore_phase(env: &Env) -> R<Value> {
    let o = &env.opts;
    let phase = "restore".to_string();
    let mk = |tool: Tool| DbSet {
        tool,
        dir: env.work.join(&phase).join(tool.label()),
        prefix: phase.clone(),
        n: 1,
    };
    let (a, b) = (mk(Tool::Walsync), mk(Tool::Litestream));
    std::fs::create_dir_all(&a.dir)?;
    std::fs::create_dir_all(&b.dir)?;
    log(format!(
        "restore: building a {} MiB database",
        o.restore_mib
    ));
    let rows = o.restore_mib * 1024 * 1024 / 1100;
    {
        let c = Connection::open(a.path(0))?;
        c.execute_batch(
            "PRAGMA page_size=4096; PRAGMA journal_mode=WAL; PRAGMA synchronous=OFF;
             CREATE TABLE t(id INTEGER PRIMARY KEY, body BLOB);",
        )?;
        let mut rng = Rng::new(99);
        let tx = c.unchecked_transaction()?;
        {
            let mut st = tx.prepare("INSERT INTO t(body) VALUES (?1)")?;
            for _ in 0..rows {
                // Half random, half repetitive: compresses about 2:1.
                let mut body = rng.bytes(500);
                body.extend(std::iter::repeat_n(b'x', 500));
                st.execute(params![body])?;
            }
        }
        tx.commit()?;
        c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")?;
    }
    std::fs::copy(a.path(0), b.path(0))?;
    let db_bytes = std::fs::metadata(a.path(0))?.len();
    let interval = Duration::from_millis(50);
    let mut ws = start_tool(env, &a, interval, "restore-walsync")?;
    let mut ls = start_tool(env, &b, interval, "restore-litestream")?;
    wait_initial(env, &a, 600, &mut ws)?;
    wait_initial(env, &b, 600, &mut ls)?;
    thread::sleep(Duration::from_secs(1));
    log(format!(
        "restore: snapshots stored; {} small transactions, one per sync",
        o.restore_incrementals
    ));
    {
        let ca = open_writer(&a.path(0))?;
        let cb = open_writer(&b.path(0))?;
        let mut rng = Rng::new(5);
        for _ in 0..o.restore_incrementals {
            let ids: Vec<i64> = (0..4).map(|_| 1 + rng.below(rows) as i64).collect();
            let body = rng.bytes(1000);
            for c in [&ca, &cb] {
                let tx = c.unchecked_transaction()?;
                for id in &ids {
                    tx.execute("UPDATE t SET body=?1 WHERE id=?2", params![body, id])?;
                }
                tx.commit()?;
            }
            thread::sleep(interval + Duration::from_millis(25));
        }
    }
    thread::sleep(Duration::from_secs(3));
    if !ws.stop() {
        env.fail("restore: walsync did not exit 0 on SIGINT".into());
    }
    ls.stop();
    let files = (
        remote_files(&a.remote_dir(env, 0)),
        remote_files(&b.remote_dir(env, 0)),
    );
    log(format!(
        "restore: replica files by level: walsync {:?}, litestream {:?}",
        files.0, files.1
    ));
    let m =
        |(wall, rss, ok): (f64, u64, bool)| json!({"wall_s": wall, "peak_rss_kib": rss, "ok": ok});
    log("restore: walsync restoring its own replica");
    let w = check_restore(env, &a, 0, Tool::Walsync)?;
    log("restore: litestream restoring its own replica");
    let l = check_restore(env, &b, 0, Tool::Litestream)?;
    log("restore: litestream restoring its own replica with -integrity-check full");
    let lf = check_restore_with(env, &b, 0, Tool::Litestream, true)?;
    log("restore: walsync restoring litestream's replica");
    let x = check_restore(env, &b, 0, Tool::Walsync)?;
    Ok(json!({
        "db_bytes": db_bytes,
        "incremental_commits": o.restore_incrementals,
        "sync_interval_ms": interval.as_millis() as u64,
        "replica_files_walsync": files.0,
        "replica_files_litestream": files.1,
        "walsync_own": m(w),
        "litestream_own": m(l),
        "litestream_own_full_check": m(lf),
        "walsync_from_litestream": m(x),
    }))
}

// ------------------------------------------------------------------ report

fn mb(kib: &Value) -> String {
    kib.as_f64()
        .map(|k| format!("{:.1}", k / 1024.0))
        .unwrap_or_else(|| "-".into())
}

fn f1(v: &Value) -> String {
    v.as_f64()
        .map(|x| format!("{x:.1}"))
        .unwrap_or_else(|| "-".into())
}

fn f2(v: &Value) -> String {
    v.as_f64()
        .map(|x| format!("{x:.2}"))
        .unwrap_or_else(|| "-".into())
}

fn report(r: &Value) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "## walsync vs Litestream 0.5.17 — mode: {}, finished {} ({} cores, load average at start {})\n",
        r["mode"].as_str().unwrap_or(""),
        r["date"].as_str().unwrap_or(""),
        r["cores"],
        r["loadavg_start"].as_str().unwrap_or("")
    );
    let _ = writeln!(
        s,
        "### Memory of the replicating process (1 s sync interval, light writes)\n"
    );
    let _ = writeln!(s, "| databases | walsync median RSS MB | walsync peak RSS MB | Litestream median RSS MB | Litestream peak RSS MB | commits/tool |");
    let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|");
    for f in r["fleet"].as_array().into_iter().flatten() {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            f["databases"],
            mb(&f["walsync"]["rss_median_kib"]),
            mb(&f["walsync"]["rss_peak_kib"]),
            mb(&f["litestream"]["rss_median_kib"]),
            mb(&f["litestream"]["rss_peak_kib"]),
            f["commits_per_tool"]
        );
    }
    let _ = writeln!(
        s,
        "\n### Replication lag, commit → object on the server (ms)\n"
    );
    let _ = writeln!(
        s,
        "| sync interval | tool | samples | p50 | p95 | p99 | max | timeouts |"
    );
    let _ = writeln!(s, "|---:|---|---:|---:|---:|---:|---:|---:|");
    for l in r["lag"].as_array().into_iter().flatten() {
        let _ = writeln!(
            s,
            "| {} ms | {} | {} | {} | {} | {} | {} | {} |",
            l["interval_ms"],
            l["tool"].as_str().unwrap_or(""),
            l["samples"],
            f1(&l["p50_ms"]),
            f1(&l["p95_ms"]),
            f1(&l["p99_ms"]),
            f1(&l["max_ms"]),
            l["timeouts"]
        );
    }
    let _ = writeln!(s, "\n### S3 requests through the counting proxy, and CPU\n");
    let _ = writeln!(s, "| databases | window | tool | PUT | GET | LIST | HEAD | DELETE | POST | CPU s per 10k commits |");
    let _ = writeln!(s, "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for f in r["fleet"].as_array().into_iter().flatten() {
        for (win, key, secs) in [
            ("steady", "requests_steady", &f["steady_secs"]),
            ("idle", "requests_idle", &f["idle_secs"]),
        ] {
            if key == "requests_idle" && f["idle_secs"].as_u64() == Some(0) {
                continue;
            }
            for tool in ["walsync", "litestream"] {
                let q = &f[tool][key];
                let _ = writeln!(
                    s,
                    "| {} | {win} {secs} s | {tool} | {} | {} | {} | {} | {} | {} | {} |",
                    f["databases"],
                    q["PUT"],
                    q["GET"],
                    q["LIST"],
                    q["HEAD"],
                    q["DELETE"],
                    q["POST"],
                    if win == "steady" {
                        f2(&f[tool]["cpu_s_per_10k_commits"])
                    } else {
                        String::new()
                    }
                );
            }
        }
    }
    let rs = &r["restore"];
    let _ = writeln!(
        s,
        "\n### Restore of a {:.0} MiB database with {} incremental commits after its snapshot\n",
        rs["db_bytes"].as_f64().unwrap_or(0.0) / 1048576.0,
        rs["incremental_commits"]
    );
    let _ = writeln!(
        s,
        "Replica files by level — walsync: {}, Litestream: {}\n",
        rs["replica_files_walsync"], rs["replica_files_litestream"]
    );
    let _ = writeln!(s, "| restore | wall s | peak RSS MB |");
    let _ = writeln!(s, "|---|---:|---:|");
    for (label, key) in [
        (
            "walsync, own replica (always runs PRAGMA integrity_check)",
            "walsync_own",
        ),
        (
            "Litestream, own replica (default: no integrity check)",
            "litestream_own",
        ),
        (
            "Litestream, own replica, -integrity-check full",
            "litestream_own_full_check",
        ),
        ("walsync, Litestream's replica", "walsync_from_litestream"),
    ] {
        let _ = writeln!(
            s,
            "| {label} | {} | {} |",
            f2(&rs[key]["wall_s"]),
            mb(&rs[key]["peak_rss_kib"])
        );
    }
    let _ = writeln!(
        s,
        "\n### Application commit latency (µs, synchronous=NORMAL, 1 s sync interval)\n"
    );
    let _ = writeln!(s, "| replicator | commits | p50 | p99 |");
    let _ = writeln!(s, "|---|---:|---:|---:|");
    for l in r["commit_latency"].as_array().into_iter().flatten() {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} |",
            l["replicator"].as_str().unwrap_or(""),
            l["commits"],
            f1(&l["p50_us"]),
            f1(&l["p99_us"])
        );
    }
    retention::report(&mut s, &r["retention"]);
    monitoring::report(&mut s, &r["monitoring"]);
    follow::report(&mut s, &r["follow"]);
    let _ = writeln!(s, "\n### Targets\n");
    let _ = writeln!(s, "| target | measured | met |");
    let _ = writeln!(s, "|---|---|---|");
    for t in r["targets"].as_array().into_iter().flatten() {
        let _ = writeln!(
            s,
            "| {} | {} | {} |",
            t["target"].as_str().unwrap_or(""),
            t["measured"].as_str().unwrap_or(""),
            if t["met"].as_bool() == Some(true) {
                "yes"
            } else {
                "no"
            }
        );
    }
    s
}

fn targets(r: &Value) -> Vec<Value> {
    let mut t = Vec::new();
    let mut push = |target: String, measured: String, met: bool| {
        t.push(json!({"target": target, "measured": measured, "met": met}));
    };
    for f in r["fleet"].as_array().into_iter().flatten() {
        let n = f["databases"].as_u64().unwrap_or(0);
        let limit = match n {
            1 => 8.0,
            100 => 16.0,
            1000 => 64.0,
            _ => continue,
        };
        let peak = f["walsync"]["rss_peak_kib"].as_f64().unwrap_or(f64::NAN) / 1024.0;
        push(
            format!("RSS ≤ {limit} MB at {n} database(s)"),
            format!(
                "peak {peak:.1} MB, median {} MB (Litestream peak {} MB)",
                mb(&f["walsync"]["rss_median_kib"]),
                mb(&f["litestream"]["rss_peak_kib"])
            ),
            peak <= limit,
        );
    }
    let lags = r["lag"].as_array().cloned().unwrap_or_default();
    for iv in [1000u64, 100] {
        let get = |tool: &str| {
            lags.iter()
                .find(|l| l["tool"] == tool && l["interval_ms"].as_u64() == Some(iv))
                .cloned()
                .unwrap_or(Value::Null)
        };
        let (w, l) = (get("walsync"), get("litestream"));
        let p99 = w["p99_ms"].as_f64().unwrap_or(f64::NAN);
        push(
            format!("lag p99 ≤ {} ms at {iv} ms", iv + 100),
            format!("{p99:.1} ms"),
            p99 <= (iv + 100) as f64,
        );
        let (wp, lp) = (
            w["p50_ms"].as_f64().unwrap_or(f64::NAN),
            l["p50_ms"].as_f64().unwrap_or(f64::NAN),
        );
        push(
            format!("lag p50 below Litestream's at {iv} ms"),
            format!("{wp:.1} vs {lp:.1} ms"),
            wp < lp,
        );
    }
    for f in r["fleet"].as_array().into_iter().flatten() {
        if f["idle_secs"].as_u64().unwrap_or(0) == 0 {
            continue;
        }
        let n = &f["databases"];
        let idle: u64 = f["walsync"]["requests_idle"]
            .as_object()
            .map(|m| m.values().filter_map(Value::as_u64).sum())
            .unwrap_or(0);
        let lidle: u64 = f["litestream"]["requests_idle"]
            .as_object()
            .map(|m| m.values().filter_map(Value::as_u64).sum())
            .unwrap_or(0);
        push(
            format!(
                "zero S3 requests while idle ({n} databases, {} s)",
                f["idle_secs"]
            ),
            format!("{idle} (Litestream {lidle})"),
            idle == 0,
        );
        let pl = |tool: &str| {
            let q = &f[tool]["requests_steady"];
            q["PUT"].as_u64().unwrap_or(0) + q["LIST"].as_u64().unwrap_or(0)
        };
        push(
            format!("fewer PUT+LIST than Litestream under steady load ({n} databases)"),
            format!("{} vs {}", pl("walsync"), pl("litestream")),
            pl("walsync") < pl("litestream"),
        );
    }
    let rs = &r["restore"];
    let (w, l) = (
        rs["walsync_own"]["wall_s"].as_f64().unwrap_or(f64::NAN),
        rs["litestream_own"]["wall_s"].as_f64().unwrap_or(f64::NAN),
    );
    let lf = rs["litestream_own_full_check"]["wall_s"]
        .as_f64()
        .unwrap_or(f64::NAN);
    push(
        "restore ≥ 2× faster than Litestream".into(),
        format!(
            "{w:.2} s vs {l:.2} s ({:.1}×); vs Litestream with -integrity-check full {lf:.2} s ({:.1}×)",
            l / w,
            lf / w
        ),
        l / w >= 2.0,
    );
    let lat = r["commit_latency"].as_array().cloned().unwrap_or_default();
    let g = |who: &str, k: &str| {
        lat.iter()
            .find(|l| l["replicator"] == who)
            .and_then(|l| l[k].as_f64())
            .unwrap_or(f64::NAN)
    };
    let (n50, n99) = (g("none", "p50_us"), g("none", "p99_us"));
    let (w50, w99) = (g("walsync", "p50_us"), g("walsync", "p99_us"));
    let (l50, l99) = (g("litestream", "p50_us"), g("litestream", "p99_us"));
    // Microsecond latencies on a shared machine are noisy: "no worse" here
    // means within 10 % of the latency under Litestream.
    push(
        "commit latency under walsync no worse than under Litestream (±10 %)".into(),
        format!(
            "p50 {w50:.0} µs / p99 {w99:.0} µs; Litestream {l50:.0} / {l99:.0} µs; none {n50:.0} / {n99:.0} µs"
        ),
        w50 <= l50 * 1.1 && w99 <= l99 * 1.1,
    );
    t
}

fn run(opts: &Opts) -> R<bool> {
    raise_nofile();
    clock();
    let started = Instant::now();
    std::fs::create_dir_all(&opts.out)?;
    let out = std::fs::canonicalize(&opts.out)?;
    let work = out.join(format!("work-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let s3_root = work.join("s3");
    for b in [WS, LS] {
        std::fs::create_dir_all(s3_root.join(b))?;
    }
    let port = free_port()?;
    let mut s3 = Command::new(&opts.s3s_fs)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
        .arg(&s3_root)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(work.join("s3s-fs.log"))?)
        .spawn()?;
    let result = (|| -> R<bool> {
        wait_port(port, 15)?;
        let counters = Arc::new(Counters::default());
        let pport = start_proxy(SocketAddr::from(([127, 0, 0, 1], port)), counters.clone())?;
        let env = Env {
            opts: opts.clone(),
            work: work.clone(),
            s3_root: s3_root.clone(),
            direct: format!("http://127.0.0.1:{port}"),
            proxied: format!("http://127.0.0.1:{pport}"),
            counters,
            failures: Mutex::new(Vec::new()),
        };
        let loadavg = std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ");
        log(format!(
            "mode {}, work folder {}",
            opts.mode,
            work.display()
        ));
        let on = |p: &str| opts.only.is_empty() || opts.only.iter().any(|o| o == p);
        let mut fleet_r = Vec::new();
        for &n in opts.counts.iter().filter(|_| on("fleet")) {
            fleet_r.push(fleet(&env, n)?);
        }
        let mut lag_r = Vec::new();
        for iv in [Duration::from_secs(1), Duration::from_millis(100)]
            .into_iter()
            .filter(|_| on("lag"))
        {
            for tool in [Tool::Walsync, Tool::Litestream] {
                lag_r.push(lag(&env, tool, iv)?);
            }
        }
        let lat_r = if on("latency") {
            commit_latency(&env)?
        } else {
            Vec::new()
        };
        let restore_r = if on("restore") {
            restore_phase(&env)?
        } else {
            Value::Null
        };
        let retention_r = if on("retention") {
            retention::day(&env)?
        } else {
            Value::Null
        };
        let monitoring_r = if on("monitoring") {
            monitoring::run(&env)?
        } else {
            Value::Null
        };
        let follow_r = if on("follow") {
            follow::run(&env)?
        } else {
            Value::Null
        };
        let mut r = json!({
            "mode": opts.mode,
            "date": jiff::Timestamp::now().to_string(),
            "cores": thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "loadavg_start": loadavg,
            "wall_s": started.elapsed().as_secs_f64(),
            "walsync_version": String::from_utf8_lossy(&Command::new(&opts.walsync).arg("version").output()?.stdout).trim().to_string(),
            "litestream_version": String::from_utf8_lossy(&Command::new(&opts.litestream).arg("version").output()?.stdout).trim().to_string(),
            "fleet": fleet_r,
            "lag": lag_r,
            "commit_latency": lat_r,
            "restore": restore_r,
            "retention": retention_r,
            "monitoring": monitoring_r,
            "follow": follow_r,
        });
        r["targets"] = Value::Array(targets(&r));
        let failures = env.failures.lock().unwrap().clone();
        if !failures.is_empty() {
            eprintln!("\nRESTORE CHECKS FAILED — no figures are printed:");
            for f in &failures {
                eprintln!("  - {f}");
            }
            eprintln!("logs and data kept in {}", work.display());
            return Ok(false);
        }
        let md = report(&r);
        println!("{md}");
        println!("(run took {:.0} s)", started.elapsed().as_secs_f64());
        let tag = if opts.mode.starts_with("quick") {
            "quick"
        } else {
            "full"
        };
        std::fs::write(out.join(format!("results-{tag}.md")), &md)?;
        std::fs::write(
            out.join(format!("results-{tag}.json")),
            serde_json::to_string_pretty(&r)?,
        )?;
        std::fs::write(out.join("results.md"), &md)?;
        std::fs::write(out.join("results.json"), serde_json::to_string_pretty(&r)?)?;
        eprintln!("wrote {}/results-{tag}.md and .json", out.display());
        Ok(true)
    })();
    let _ = s3.kill();
    let _ = s3.wait();
    match &result {
        Ok(true) if !opts.keep => {
            let _ = std::fs::remove_dir_all(&work);
        }
        _ => eprintln!("work folder kept: {}", work.display()),
    }
    result
}
