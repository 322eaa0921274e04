//! The `walsync` command line: flags, dispatch, and everything that owns
//! the process (signal handlers, the open-files limit, printing). The
//! library below it does none of that; configuration is resolved in
//! [`crate::resolve`], and what is printed is made in [`output`].
//!
//! Usage errors (unknown flag, missing argument, bad value) exit 2, not
//! argh's default 1; `--help` prints to standard output and exits 0.

mod args;
mod exec;
mod explain;
mod output;

use crate::cancel::CancelToken;
use crate::config;
use crate::error::{Error, Result};
use crate::event::{EventSink, Level};
use crate::resolve::{EngineFlags, Resolver, Target};
use crate::restore::{self, RestoreOptions, RestoreOutcome};
use crate::selection::SettingFlags;
use crate::watch::control::{self, ClientRequest};
use crate::watch::{self, Controls, Shipper};
use argh::FromArgs;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(FromArgs, Debug)]
/// Continuous replication of SQLite WAL databases to S3-compatible storage,
/// and restore to any point in time. Litestream 0.5 compatible.
#[argh(
    note = "Credentials come from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; the endpoint from --endpoint or AWS_ENDPOINT_URL_S3; the region from --region or AWS_REGION (default us-east-1).",
    error_code(1, "unexpected error"),
    error_code(2, "configuration or usage error"),
    error_code(3, "database error (missing file, not WAL mode, SQLite error)"),
    error_code(4, "storage error (network, authentication, bucket access)"),
    error_code(5, "integrity error (checksum mismatch, malformed LTX, gap in TXIDs)"),
    error_code(
        6,
        "restore error (no snapshot, nothing at that point in time, output exists, the replica changed under the command)"
    ),
    error_code(
        7,
        "local file error (an output or walsync's own files cannot be written)"
    )
)]
pub struct Cli {
    #[argh(subcommand)]
    pub command: Command,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
pub enum Command {
    Watch(WatchCmd),
    Snapshot(SnapshotCmd),
    Restore(RestoreCmd),
    Replicate(ReplicateCmd),
    List(ListCmd),
    Verify(VerifyCmd),
    Compact(CompactCmd),
    Delete(DeleteCmd),
    Status(StatusCmd),
    Explain(ExplainCmd),
    ImportLitestream(ImportLitestreamCmd),
    Pragma(PragmaCmd),
    Version(VersionCmd),
}

/// Declares a command that reaches a replica: its own fields plus the
/// connection flags every such command shares (argh has no flattening).
macro_rules! replica_command {
    ($(#[$meta:meta])* pub struct $name:ident { $($fields:tt)* }) => {
        #[derive(FromArgs, Debug)]
        $(#[$meta])*
        pub struct $name {
            $($fields)*
            /// replica URL: s3://bucket/prefix or file:///path
            #[argh(option, short = 'b')]
            pub bucket: Option<String>,
            /// config file (walsync.toml)
            #[argh(option)]
            pub config: Option<PathBuf>,
            /// S3 endpoint URL for non-AWS providers (env AWS_ENDPOINT_URL_S3)
            #[argh(option)]
            pub endpoint: Option<String>,
            /// S3 region (env AWS_REGION, default us-east-1)
            #[argh(option)]
            pub region: Option<String>,
            /// force path-style (true) or virtual-hosted (false) S3 addressing
            #[argh(option)]
            pub force_path_style: Option<bool>,
        }
    };
}

replica_command! {
/// Replicate databases continuously until SIGINT/SIGTERM.
#[argh(subcommand, name = "watch")]
pub struct WatchCmd {
    /// database files to replicate (or use [[databases]] in --config)
    #[argh(positional)]
    pub databases: Vec<PathBuf>,
    /// how often each WAL is polled, e.g. 1s or 50ms (default 1s)
    #[argh(option, from_str_fn(duration))]
    pub sync_interval: Option<Duration>,
    /// how often a level-9 snapshot is taken, e.g. 1h or 3600 (default 1h; 0: never by time)
    #[argh(option, from_str_fn(trigger))]
    pub snapshot_interval: Option<Duration>,
    /// also snapshot once this many WAL pages were shipped since the last snapshot (default 0: off)
    #[argh(option)]
    pub snapshot_max_changes: Option<u64>,
    /// also snapshot once no change was shipped for this long after changes, e.g. 5m (default 0: off)
    #[argh(option, from_str_fn(trigger))]
    pub snapshot_on_idle: Option<Duration>,
    /// also snapshot once this long passed since the first change after a snapshot, e.g. 15m (default 0: off)
    #[argh(option, from_str_fn(trigger))]
    pub snapshot_max_interval: Option<Duration>,
    /// WAL pages after which walsync runs a PASSIVE checkpoint (default 1000)
    #[argh(option)]
    pub min_checkpoint_pages: Option<u64>,
    /// WAL pages after which walsync runs a TRUNCATE checkpoint (default 121359, about 500 MB at 4 KiB pages)
    #[argh(option)]
    pub truncate_checkpoint_pages: Option<u64>,
    /// verify each replica in the background this often, e.g. 1h (default 0: never)
    #[argh(option, from_str_fn(trigger))]
    pub validation_interval: Option<Duration>,
    /// serve Prometheus metrics at this address, e.g. 127.0.0.1:9090 or :9090 (loopback); default off
    #[argh(option)]
    pub metrics_addr: Option<String>,
    /// poller threads (default min(4, cores))
    #[argh(option)]
    pub pollers: Option<usize>,
    /// uploader threads (default 4)
    #[argh(option)]
    pub uploaders: Option<usize>,
    /// how long a shutdown waits for uploads in flight (default 30s)
    #[argh(option, from_str_fn(duration))]
    pub shutdown_timeout: Option<Duration>,
    /// control socket for `walsync status` and `snapshot` (default: [control] socket, else $XDG_RUNTIME_DIR/walsync.sock or /tmp/walsync-UID.sock)
    #[argh(option)]
    pub socket: Option<PathBuf>,
    /// make each database its replica's source even when the replica records another one
    #[argh(switch)]
    pub takeover: bool,
    /// log from this level up: error, warn, info or debug (default: $WALSYNC_LOG, else info)
    #[argh(option)]
    pub log_level: Option<String>,
    /// log lines as text or json, one object a line (default: $WALSYNC_LOG_FORMAT, else text)
    #[argh(option)]
    pub log_format: Option<String>,
    /// run this command (e.g. "bin/server --port 8080") once replication is under way; SIGINT/SIGTERM go to it; when it exits, walsync ships what is committed and exits with its code (config: exec)
    #[argh(option)]
    pub exec: Option<String>,
}}

replica_command! {
/// Store a level-9 snapshot of a database now (after shipping its WAL).
#[argh(subcommand, name = "snapshot")]
pub struct SnapshotCmd {
    /// give up after this long without progress from storage, e.g. 90s (default: none, since writing a large database's snapshot locally makes no storage progress; each request is still bounded)
    #[argh(option, from_str_fn(duration))]
    pub timeout: Option<Duration>,
    /// database file
    #[argh(positional)]
    pub database: PathBuf,
    /// replica name (default: as `watch` with the same --config names it)
    #[argh(option)]
    pub name: Option<String>,
    /// control socket of a running watch, which then takes the snapshot (default as for watch)
    #[argh(option)]
    pub socket: Option<PathBuf>,
    /// make the database its replica's source even when the replica records another one
    #[argh(switch)]
    pub takeover: bool,
}}

replica_command! {
/// Restore a database from its replica, latest or at a point in time.
#[argh(subcommand, name = "restore")]
pub struct RestoreCmd {
    /// give up after this long without progress from storage, e.g. 90s (default 5m)
    #[argh(option, from_str_fn(duration))]
    pub timeout: Option<Duration>,
    /// replica name of the database (see `walsync list`), or its path: /var/lib/app/acme/app.db, named as `watch` with the same --config names it, also when the file is gone
    #[argh(positional)]
    pub name: String,
    /// output database file (default, when NAME is a path: that path)
    #[argh(option, short = 'o')]
    pub output: Option<PathBuf>,
    /// restore the state as of this TXID: as list prints it (0x0000000000000010, or Litestream's 0000000000000010, both hex) or decimal (16)
    #[argh(option, from_str_fn(txid))]
    pub txid: Option<u64>,
    /// restore the state as of this time (RFC 3339, e.g. 2026-01-02T15:04:05Z)
    #[argh(option)]
    pub point_in_time: Option<String>,
    /// replace the output file if it exists
    #[argh(switch)]
    pub force: bool,
    /// exit 0 without doing anything when the output file already exists
    #[argh(switch)]
    pub if_db_not_exists: bool,
    /// exit 0 without doing anything when the replica holds no backup
    #[argh(switch)]
    pub if_replica_exists: bool,
    /// parallel downloads (default 32)
    #[argh(option, default = "32")]
    pub parallelism: usize,
    /// keep following the replica after the restore, as `walsync replicate` does
    #[argh(switch)]
    pub follow: bool,
    /// with --follow: how often storage is asked for new files (default 1s)
    #[argh(option, from_str_fn(duration))]
    pub interval: Option<Duration>,
}}

replica_command! {
/// Follow a replica into a local database that readers can query (a read replica), until SIGINT/SIGTERM. For Litestream users: `litestream replicate` is `walsync watch`; this is `litestream restore -f`.
#[argh(subcommand, name = "replicate")]
pub struct ReplicateCmd {
    /// replica name of the database (see `walsync list`)
    #[argh(positional)]
    pub name: String,
    /// the local database readers query (WAL mode; walsync alone writes it)
    #[argh(option)]
    pub local: PathBuf,
    /// how often storage is asked for new files, e.g. 1s or 5m (default 1s)
    #[argh(option, from_str_fn(duration))]
    pub interval: Option<Duration>,
    /// apply what is there now and exit (non-zero on damage or a gap)
    #[argh(switch)]
    pub once: bool,
    /// replace --local when it exists and walsync keeps no position for it
    #[argh(switch)]
    pub force: bool,
    /// serve Prometheus metrics (TXID, lag) at this address, e.g. 127.0.0.1:9465 or :9465 (loopback); default off
    #[argh(option)]
    pub metrics_addr: Option<String>,
}}

#[derive(FromArgs, Debug)]
/// Print the walsync.toml equivalent of a Litestream config (keys walsync has no equivalent for are listed as comments, with why; secrets are never copied).
#[argh(subcommand, name = "import-litestream")]
pub struct ImportLitestreamCmd {
    /// the Litestream config, e.g. /etc/litestream.yml
    #[argh(positional)]
    pub config: PathBuf,
}

replica_command! {
/// List the databases in a replica.
#[argh(subcommand, name = "list")]
pub struct ListCmd {
    /// give up after this long without progress from storage, e.g. 90s (default 5m)
    #[argh(option, from_str_fn(duration))]
    pub timeout: Option<Duration>,
    /// show what this database restores to: the range of TXIDs that all restore, and the snapshots before it
    #[argh(positional)]
    pub name: Option<String>,
    /// print JSON for scripts
    #[argh(switch)]
    pub json: bool,
}}

replica_command! {
/// Check that a replica restores, without writing a database.
#[argh(subcommand, name = "verify")]
pub struct VerifyCmd {
    /// give up after this long without progress from storage, e.g. 90s (default 5m)
    #[argh(option, from_str_fn(duration))]
    pub timeout: Option<Duration>,
    /// replica name of the database (omit with --all)
    #[argh(positional)]
    pub name: Option<String>,
    /// verify every database under the replica URL
    #[argh(switch)]
    pub all: bool,
    /// parallel downloads (default 32)
    #[argh(option, default = "32")]
    pub parallelism: usize,
    /// print JSON for scripts
    #[argh(switch)]
    pub json: bool,
}}

replica_command! {
/// Compact a replica's levels and delete what [retention] no longer keeps
/// (one pass; a dry run unless --force). Only for a replica no `watch` is
/// writing.
#[argh(subcommand, name = "compact")]
pub struct CompactCmd {
    /// replica name of the database (omit with --all)
    #[argh(positional)]
    pub name: Option<String>,
    /// every database under the replica URL
    #[argh(switch)]
    pub all: bool,
    /// write and delete (without it: only say what would be written and deleted)
    #[argh(switch)]
    pub force: bool,
    /// with --force, also compact a replica written in the last minute (by default refused: a watch may be writing it)
    #[argh(switch)]
    pub even_if_active: bool,
    /// point-in-time window: every TXID committed this recently stays restorable (default: [retention] pitr_window, else 24h)
    #[argh(option, from_str_fn(duration))]
    pub pitr_window: Option<Duration>,
    /// give up after this long without progress from storage, e.g. 90s (default 5m)
    #[argh(option, from_str_fn(duration))]
    pub timeout: Option<Duration>,
    /// print JSON for scripts
    #[argh(switch)]
    pub json: bool,
}}

replica_command! {
/// Delete every object of one replica name (a departed tenant, an orphan);
/// a dry run unless --force.
#[argh(subcommand, name = "delete")]
pub struct DeleteCmd {
    /// replica name of the database
    #[argh(positional)]
    pub name: String,
    /// delete (without it: only list what would be deleted)
    #[argh(switch)]
    pub force: bool,
    /// give up after this long without progress from storage, e.g. 90s (default 5m)
    #[argh(option, from_str_fn(duration))]
    pub timeout: Option<Duration>,
    /// print JSON for scripts
    #[argh(switch)]
    pub json: bool,
}}

#[derive(FromArgs, Debug)]
/// Show what a running `walsync watch` is doing, database by database.
#[argh(subcommand, name = "status")]
pub struct StatusCmd {
    /// config file (walsync.toml), for [control] socket
    #[argh(option)]
    pub config: Option<PathBuf>,
    /// control socket of the running watch (default as for watch)
    #[argh(option)]
    pub socket: Option<PathBuf>,
    /// print JSON for scripts
    #[argh(switch)]
    pub json: bool,
}

#[derive(FromArgs, Debug)]
/// Print the SQLite settings recommended for applications replicated by walsync.
#[argh(subcommand, name = "pragma")]
pub struct PragmaCmd {}

replica_command! {
/// Say what `watch` would do with this config, without starting it: each
/// database, its name and settings, the destination, retention and the
/// heartbeat.
#[argh(subcommand, name = "explain")]
pub struct ExplainCmd {
    /// database files (as for watch; or use [[databases]] in --config)
    #[argh(positional)]
    pub databases: Vec<PathBuf>,
    /// print JSON for scripts
    #[argh(switch)]
    pub json: bool,
}}

#[derive(FromArgs, Debug)]
/// Print the walsync version and its SQLite version.
#[argh(subcommand, name = "version")]
pub struct VersionCmd {}

fn duration(s: &str) -> std::result::Result<Duration, String> {
    config::parse_duration(s)
}

/// A snapshot trigger's duration: 0 turns it off.
fn trigger(s: &str) -> std::result::Result<Duration, String> {
    config::parse_trigger(s)
}

/// A TXID as a user writes it: `0x`-prefixed hex; 16 hex digits, the form
/// `list` and Litestream print (`0000000000000010` is 16, never 10); or a
/// decimal number of fewer digits.
pub fn txid(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let parsed = if let Some(hex) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        u64::from_str_radix(hex, 16).ok()
    } else if t.len() == 16 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
        u64::from_str_radix(t, 16).ok()
    } else if t.bytes().all(|b| b.is_ascii_digit()) && t.len() < 16 {
        t.parse().ok()
    } else {
        None
    };
    parsed.ok_or_else(|| {
        format!("'{s}' is not a TXID: write it as list prints it (0x0000000000000010 or 0000000000000010, both hex) or as a decimal number (16)")
    })
}

/// Runs the command line `args` (the program name first) as the `walsync`
/// binary does and returns its exit code: the binary and the Python
/// package's `walsync` command both call this. It owns the process: usage
/// errors and `--help` exit from here, and long commands install SIGINT and
/// SIGTERM handlers.
pub fn main(args: &[String]) -> i32 {
    match run(parse(args)) {
        Ok(()) => crate::error::EXIT_OK,
        Err(e) => {
            eprintln!("walsync: {e}");
            e.exit_code()
        }
    }
}

/// Parses a command line (the program name first); usage errors exit 2,
/// help exits 0.
pub fn parse(args: &[String]) -> Cli {
    let strs: Vec<&str> = args.iter().map(String::as_str).collect();
    let cmd = strs.first().map_or("walsync", |c| {
        std::path::Path::new(c)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("walsync")
    });
    let given = match args::preflight(strs.get(1..).unwrap_or(&[])) {
        Ok(given) => given,
        Err(message) => {
            eprintln!("walsync: usage error: {message}");
            eprintln!("Run `walsync help` or `walsync <command> --help` for usage.");
            std::process::exit(2);
        }
    };
    let given: Vec<&str> = given.iter().map(String::as_str).collect();
    match Cli::from_args(&[cmd], &given) {
        Ok(cli) => cli,
        Err(early) => match early.status {
            Ok(()) => {
                println!("{}", early.output);
                std::process::exit(0);
            }
            Err(()) => {
                eprintln!("{}", early.output.trim_end());
                eprintln!("Run `walsync help` or `walsync <command> --help` for usage.");
                std::process::exit(2);
            }
        },
    }
}

/// The connection flags every command has, borrowed from its flag struct.
macro_rules! target {
    ($c:expr) => {
        Target {
            bucket: &$c.bucket,
            config: &$c.config,
            endpoint: &$c.endpoint,
            region: &$c.region,
            force_path_style: $c.force_path_style,
        }
    };
}

/// How long a one-shot command may go without progress from storage.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// Runs a one-shot command under a watchdog: after `timeout` (default
/// [`DEFAULT_TIMEOUT`]) without progress from storage, the command is
/// given up with a storage error (exit 4). One with a `cancel` token is
/// cancelled, so that it cleans up (a restore leaves nothing behind); it
/// notices between reads, and a read blocks for 20 s at most (the read
/// timeout), so it is given 30 s. One without a token exits at once: it
/// writes nothing that an exit could leave half-written.
fn within(
    timeout: Option<Duration>,
    cancel: Option<CancelToken>,
    command: impl FnOnce() -> Result<()>,
) -> Result<()> {
    use std::sync::atomic::{AtomicBool, Ordering};
    static GAVE_UP: AtomicBool = AtomicBool::new(false);
    let timeout = timeout.unwrap_or(DEFAULT_TIMEOUT);
    let given_up = move || {
        format!(
            "no progress from storage for {} s: gave up (--timeout); nothing was left half-written",
            timeout.as_secs()
        )
    };
    crate::storage::mark_progress();
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_millis(250).min(timeout));
        if crate::storage::since_progress() < timeout {
            continue;
        }
        GAVE_UP.store(true, Ordering::SeqCst);
        if let Some(c) = &cancel {
            c.cancel();
            std::thread::sleep(Duration::from_secs(30));
        }
        eprintln!("walsync: storage error: {}", given_up());
        std::process::exit(Error::Storage(String::new()).exit_code());
    });
    match command() {
        Err(Error::Cancelled) if GAVE_UP.load(Ordering::SeqCst) => Err(Error::Storage(given_up())),
        result => result,
    }
}

/// Runs a parsed command.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Watch(c) => watch(c),
        // A snapshot first writes its file locally, which may take long
        // for a large database: no watchdog unless asked for.
        Command::Snapshot(c) => match c.timeout {
            Some(timeout) => within(Some(timeout), None, || snapshot(c)),
            None => snapshot(c),
        },
        Command::Restore(c) if c.follow => restore_and_follow(c),
        Command::Replicate(c) => replicate(c),
        Command::Restore(c) => {
            let cancel = CancelToken::new();
            within(c.timeout, Some(cancel.clone()), || restore(c, cancel))
        }
        Command::List(c) => within(c.timeout, None, || list(c)),
        Command::Verify(c) => {
            let cancel = CancelToken::new();
            within(c.timeout, Some(cancel.clone()), || verify(c, cancel))
        }
        Command::Compact(c) => {
            let cancel = CancelToken::new();
            within(c.timeout, Some(cancel.clone()), || compact(c, cancel))
        }
        Command::Delete(c) => within(c.timeout, None, || delete(c)),
        Command::Status(c) => status(c),
        Command::Explain(c) => explain(c),
        Command::ImportLitestream(c) => import_litestream(&c.config),
        Command::Pragma(_) => {
            print!("{}", PRAGMAS);
            Ok(())
        }
        Command::Version(_) => {
            println!(
                "walsync {} (SQLite {})",
                env!("CARGO_PKG_VERSION"),
                rusqlite::version()
            );
            Ok(())
        }
    }
}

const PRAGMAS: &str = "\
-- Settings for applications whose databases walsync replicates.
PRAGMA journal_mode = WAL;      -- required: walsync ships the write-ahead log
PRAGMA busy_timeout = 5000;     -- wait, rather than fail, while walsync checkpoints
PRAGMA synchronous = NORMAL;    -- safe in WAL mode, and faster
-- Leave wal_autocheckpoint at its default: walsync holds a read lock so
-- SQLite cannot restart the WAL under frames not yet shipped, and runs
-- its own checkpoints once everything is stored.
";

fn watch(c: WatchCmd) -> Result<()> {
    let (level, format) = log_settings(c.log_level.as_deref(), c.log_format.as_deref())?;
    let sink: Arc<dyn EventSink> = Arc::new(output::StderrLog::new(level, format));
    let target = target!(c);
    let flags = SettingFlags {
        sync_interval: c.sync_interval,
        snapshot_interval: c.snapshot_interval,
        snapshot_max_changes: c.snapshot_max_changes,
        snapshot_on_idle: c.snapshot_on_idle,
        snapshot_max_interval: c.snapshot_max_interval,
        min_checkpoint_pages: c.min_checkpoint_pages,
        truncate_checkpoint_pages: c.truncate_checkpoint_pages,
        validation_interval: c.validation_interval,
        takeover: c.takeover,
    };
    let mut resolver = Resolver::load(&target, flags, c.databases.clone())?;
    let storage = resolver.storage_for_watch(&target)?;
    let options = resolver.watch_options(&EngineFlags {
        pollers: c.pollers,
        uploaders: c.uploaders,
        shutdown_timeout: c.shutdown_timeout,
        socket: c.socket.clone(),
        metrics_addr: c.metrics_addr.clone(),
    })?;
    raise_open_files_limit(resolver.databases()?.len())?;
    let controls = Controls::default();
    let exec = c
        .exec
        .clone()
        .or_else(|| resolver.selection.config().exec.clone());
    if let Some(command) = exec {
        let command = exec::split(&command)?;
        on_hangup(controls.reload.clone());
        let code = exec::run(
            &command,
            storage,
            resolver.selection,
            options,
            controls,
            sink,
        )?;
        std::process::exit(code);
    }
    on_signals(
        controls.stop.clone(),
        Some(
            "walsync: stopping: shipping what is committed (send the signal again to exit at once)",
        ),
    )?;
    on_hangup(controls.reload.clone());
    watch::watch(storage, resolver.selection, &options, &controls, sink)
}

/// The event sink of every command: log lines on standard error, by
/// `WALSYNC_LOG` (error, warn, info, debug; default info) and
/// `WALSYNC_LOG_FORMAT` (text, json; default text). `watch` checks them
/// at start (see [`log_settings`]); here a bad value means the default.
fn log() -> Arc<dyn EventSink> {
    let (level, format) =
        log_settings(None, None).unwrap_or((Level::Info, output::LogFormat::Text));
    Arc::new(output::StderrLog::new(level, format))
}

/// The log level and format: the flags, else the environment, else info
/// and text. A value that names neither is a usage error.
fn log_settings(level: Option<&str>, format: Option<&str>) -> Result<(Level, output::LogFormat)> {
    let env = |key: &str| std::env::var(key).ok().filter(|v| !v.is_empty());
    let level = match level
        .map(str::to_string)
        .or_else(|| env("WALSYNC_LOG"))
        .as_deref()
    {
        None | Some("info") => Level::Info,
        Some("error") => Level::Error,
        Some("warn") => Level::Warn,
        Some("debug") => Level::Debug,
        Some(other) => {
            return Err(Error::Usage(format!(
                "log level '{other}' (--log-level or WALSYNC_LOG): use error, warn, info or debug"
            )))
        }
    };
    let format = match format
        .map(str::to_string)
        .or_else(|| env("WALSYNC_LOG_FORMAT"))
        .as_deref()
    {
        None | Some("text") => output::LogFormat::Text,
        Some("json") => output::LogFormat::Json,
        Some(other) => {
            return Err(Error::Usage(format!(
                "log format '{other}' (--log-format or WALSYNC_LOG_FORMAT): use text or json"
            )))
        }
    };
    Ok((level, format))
}

fn snapshot(c: SnapshotCmd) -> Result<()> {
    let target = target!(c);
    let flags = SettingFlags {
        takeover: c.takeover,
        ..SettingFlags::default()
    };
    let mut resolver = Resolver::load(&target, flags, Vec::new())?;
    let storage = resolver.storage(&target, retries_on_stderr())?;
    let (db, settings) = resolver.database(&c.database, c.name.as_deref())?;
    // A running watch that replicates the database takes the snapshot.
    let socket = resolver.socket(c.socket.as_deref());
    let path = crate::selection::absolute(&c.database).into_owned();
    let request = ClientRequest::Snapshot { path: path.clone() };
    if let Some(answer) = control::ask(&socket, &request)? {
        match (answer.ok, answer.txid, answer.error) {
            (true, Some(txid), _) => {
                println!(
                    "snapshot of {} stored as {} (TXID {txid}) by the running watch",
                    c.database.display(),
                    db.name
                );
                return Ok(());
            }
            (_, _, Some(e)) if !e.contains("not replicated by this watch") => {
                return Err(Error::Storage(format!(
                    "the running watch could not store a snapshot of {}: {e}",
                    c.database.display()
                )))
            }
            _ => {}
        }
    }
    let mut shipper = Shipper::open(&db.path, &db.name, storage, settings, log())?;
    let id = shipper.snapshot_now(crate::fsutil::now_ms())?;
    println!(
        "snapshot of {} stored as {} (TXID {})",
        c.database.display(),
        db.name,
        id.max_txid
    );
    shipper.close()
}

fn status(c: StatusCmd) -> Result<()> {
    let target = Target {
        bucket: &None,
        config: &c.config,
        endpoint: &None,
        region: &None,
        force_path_style: None,
    };
    let resolver = Resolver::load(&target, SettingFlags::default(), Vec::new())?;
    let socket = resolver.socket(c.socket.as_deref());
    let answer = control::ask(&socket, &ClientRequest::Status)?.ok_or_else(|| {
        Error::Other(format!(
            "no walsync watch answers at {}; is it running? (its socket is set by [control] socket or --socket)",
            socket.display()
        ))
    })?;
    match (answer.ok, answer.databases) {
        (true, Some(dbs)) => output::status(&dbs, c.json),
        (_, _) => Err(Error::Other(format!(
            "the watch at {} answered: {}",
            socket.display(),
            answer.error.unwrap_or_default()
        ))),
    }
}

fn restore(c: RestoreCmd, cancel: CancelToken) -> Result<()> {
    let target = target!(c);
    let mut resolver = Resolver::load(&target, SettingFlags::default(), Vec::new())?;
    let storage = resolver.storage(&target, retries_on_stderr())?;
    let point_in_time_ms = c
        .point_in_time
        .as_deref()
        .map(crate::fsutil::parse_rfc3339_ms)
        .transpose()?;
    if c.txid.is_some() && point_in_time_ms.is_some() {
        return Err(Error::Usage(
            "use --txid or --point-in-time, not both".into(),
        ));
    }
    let (name, output) = resolver.restore_target(storage.as_ref(), &c.name, c.output)?;
    on_signals(cancel.clone(), None)?;
    let opts = RestoreOptions {
        name,
        output,
        txid: c.txid,
        point_in_time_ms,
        force: c.force,
        if_db_not_exists: c.if_db_not_exists,
        if_replica_exists: c.if_replica_exists,
        parallelism: c.parallelism.max(1),
        cancel,
    };
    let url = storage.describe();
    match restore::run(storage.as_ref(), &opts, log().as_ref())? {
        RestoreOutcome::Restored { .. } => {}
        RestoreOutcome::OutputExists => eprintln!(
            "walsync: {} exists; nothing restored (--if-db-not-exists)",
            opts.output.display()
        ),
        RestoreOutcome::NoBackups => eprintln!(
            "walsync: no backups for '{}' in {url}; nothing restored (--if-replica-exists)",
            opts.name
        ),
    }
    Ok(())
}

/// `walsync replicate`: follows the replica into `--local`.
fn replicate(c: ReplicateCmd) -> Result<()> {
    let target = target!(c);
    let mut resolver = Resolver::load(&target, SettingFlags::default(), Vec::new())?;
    let storage = resolver.storage(&target, retries_on_stderr())?;
    let listener = c
        .metrics_addr
        .as_deref()
        .map(|a| crate::monitor::endpoint::parse_addr(a).and_then(crate::monitor::endpoint::bind))
        .transpose()?;
    let cancel = CancelToken::new();
    on_signals(cancel.clone(), None)?;
    let metrics = Arc::new(crate::monitor::Metrics::default());
    let storage: Arc<dyn crate::storage::Storage> = Arc::new(
        crate::monitor::metered::Metered::new(storage, Arc::clone(&metrics)),
    );
    let opts = crate::replica::FollowOptions {
        name: resolver.replica_name(&c.name)?,
        local: c.local,
        interval: c.interval.unwrap_or(Duration::from_secs(1)),
        once: c.once,
        force: c.force,
        cancel,
        status: Arc::default(),
    };
    let finish = CancelToken::new();
    let endpoint = listener.map(|listener| {
        let (status, finish, name) = (Arc::clone(&opts.status), finish.clone(), opts.name.clone());
        std::thread::spawn(move || {
            let render = |out: &mut dyn std::io::Write| {
                crate::monitor::exposition::write_replica(out, &name, &status, &metrics)
            };
            crate::monitor::endpoint::serve(&listener, &finish, &render);
        })
    });
    let followed = crate::replica::follow(storage.as_ref(), &opts, log().as_ref());
    finish.cancel();
    if let Some(t) = endpoint {
        let _ = t.join();
    }
    followed
}

/// `walsync restore --follow`: `walsync replicate` spelled Litestream's way.
fn restore_and_follow(c: RestoreCmd) -> Result<()> {
    if c.txid.is_some() || c.point_in_time.is_some() || c.if_db_not_exists || c.if_replica_exists {
        return Err(Error::Usage(
            "--follow restores the latest state and follows it: it takes no --txid, --point-in-time, --if-db-not-exists or --if-replica-exists".into(),
        ));
    }
    let Some(local) = c.output else {
        return Err(Error::Usage(
            "--follow needs -o PATH: the local database to follow into".into(),
        ));
    };
    replicate(ReplicateCmd {
        name: c.name,
        local,
        interval: c.interval,
        once: false,
        force: c.force,
        metrics_addr: None,
        bucket: c.bucket,
        config: c.config,
        endpoint: c.endpoint,
        region: c.region,
        force_path_style: c.force_path_style,
    })
}

fn list(c: ListCmd) -> Result<()> {
    let target = target!(c);
    let mut resolver = Resolver::load(&target, SettingFlags::default(), Vec::new())?;
    let storage = resolver.storage(&target, retries_on_stderr())?;
    match &c.name {
        Some(name) => {
            let name = resolver.replica_name(name)?;
            output::list_one(storage.as_ref(), &name, c.json)
        }
        None => output::list(storage.as_ref(), c.json),
    }
}

fn verify(c: VerifyCmd, cancel: CancelToken) -> Result<()> {
    let target = target!(c);
    let mut resolver = Resolver::load(&target, SettingFlags::default(), Vec::new())?;
    let storage = resolver.storage(&target, retries_on_stderr())?;
    let names = match (&c.name, c.all) {
        (Some(n), false) => vec![resolver.replica_name(n)?],
        (None, true) => crate::list::database_names(storage.as_ref())?,
        _ => {
            return Err(Error::Usage(
                "verify takes a database name or --all (not both)".into(),
            ))
        }
    };
    on_signals(cancel.clone(), None)?;
    output::verify(
        storage.as_ref(),
        &names,
        c.parallelism.max(1),
        c.json,
        &cancel,
    )
}

fn compact(c: CompactCmd, cancel: CancelToken) -> Result<()> {
    let target = target!(c);
    let mut resolver = Resolver::load(&target, SettingFlags::default(), Vec::new())?;
    let storage = resolver.storage(&target, retries_on_stderr())?;
    let mut retention = match &resolver.selection.config().retention {
        Some(section) => section.policy()?,
        None => crate::compact::policy::Retention::default(),
    };
    if let Some(window) = c.pitr_window {
        retention.pitr_window = window;
    }
    let names = match (&c.name, c.all) {
        (Some(n), false) => vec![resolver.replica_name(n)?],
        (None, true) => crate::list::database_names(storage.as_ref())?,
        _ => {
            return Err(Error::Usage(
                "compact takes a database name or --all (not both)".into(),
            ))
        }
    };
    let mode = if c.force {
        crate::compact::Mode::Apply
    } else {
        crate::compact::Mode::DryRun
    };
    on_signals(cancel.clone(), None)?;
    let now_ms = crate::fsutil::now_ms();
    let mut reports = Vec::new();
    for name in &names {
        let mut tracked = crate::compact::Tracked::list(storage.as_ref(), name)?;
        if mode == crate::compact::Mode::Apply && !c.even_if_active {
            crate::compact::refuse_if_active(
                storage.as_ref(),
                name,
                &mut tracked,
                &retention,
                now_ms,
            )?;
        }
        let report = crate::compact::pass(
            storage.as_ref(),
            name,
            &mut tracked,
            &retention,
            now_ms,
            mode,
            &cancel,
        )?;
        if !c.json {
            output::compaction(&report, mode);
        }
        reports.push(report);
    }
    if c.json {
        output::compactions_json(&reports, mode);
    }
    Ok(())
}

fn explain(c: ExplainCmd) -> Result<()> {
    let target = target!(c);
    let mut resolver = Resolver::load(&target, SettingFlags::default(), c.databases.clone())?;
    let storage = resolver.storage_for_watch(&target)?;
    let options = resolver.watch_options(&EngineFlags::default())?;
    let dbs = resolver.databases()?;
    let plan = explain::plan(&storage.describe(), &dbs, &options);
    explain::print(&plan, c.json)
}

fn import_litestream(path: &std::path::Path) -> Result<()> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Usage(format!("cannot read {}: {e}", path.display())))?;
    print!(
        "{}",
        crate::import::translate(&text, &path.display().to_string())?
    );
    Ok(())
}

fn delete(c: DeleteCmd) -> Result<()> {
    let target = target!(c);
    let mut resolver = Resolver::load(&target, SettingFlags::default(), Vec::new())?;
    let storage = resolver.storage(&target, retries_on_stderr())?;
    let name = resolver.replica_name(&c.name)?;
    let mode = if c.force {
        crate::compact::Mode::Apply
    } else {
        crate::compact::Mode::DryRun
    };
    let deleted = crate::compact::delete_replica(storage.as_ref(), &name, mode)?;
    if deleted.is_empty() {
        return Err(Error::Restore(format!(
            "no backups for '{name}' in {}; check the name with `walsync list`",
            storage.describe()
        )));
    }
    output::deletion(&name, &deleted, mode, c.json);
    Ok(())
}

/// A one-shot command says each retry of a storage request on stderr.
fn retries_on_stderr() -> crate::storage::s3::RetryProgress {
    Arc::new(|line: &str| eprintln!("walsync: {line}"))
}

/// SIGHUP sets `reload` (watch reads its config file again).
fn on_hangup(reload: crate::cancel::Trigger) {
    static RELOAD: std::sync::OnceLock<crate::cancel::Trigger> = std::sync::OnceLock::new();
    extern "C" fn hangup(_: libc::c_int) {
        // Only an atomic store: async-signal-safe.
        if let Some(r) = RELOAD.get() {
            r.set();
        }
    }
    if RELOAD.set(reload).is_ok() {
        // SAFETY: installs a handler that only stores to an atomic.
        unsafe {
            libc::signal(libc::SIGHUP, hangup as *const () as libc::sighandler_t);
        }
    }
}

/// Installs the SIGINT/SIGTERM handler of a long command: the first signal
/// cancels `token` (after printing `first`), the second exits at once.
fn on_signals(token: CancelToken, first: Option<&'static str>) -> Result<()> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static SIGNALS: AtomicUsize = AtomicUsize::new(0);
    let r = ctrlc::set_handler(move || {
        if SIGNALS.fetch_add(1, Ordering::SeqCst) >= 1 {
            eprintln!("walsync: second signal, exiting at once");
            std::process::exit(1);
        }
        if let Some(m) = first {
            eprintln!("{m}");
        }
        token.cancel();
    });
    match r {
        Ok(()) => Ok(()),
        Err(e) => Err(Error::Other(format!(
            "cannot install the signal handler: {e}"
        ))),
    }
}

/// The open-files limit the process started with, before
/// [`raise_open_files_limit`] (a `--exec` child gets it back).
static ORIGINAL_OPEN_FILES: std::sync::OnceLock<libc::rlimit> = std::sync::OnceLock::new();

fn original_open_files_limit() -> Option<libc::rlimit> {
    ORIGINAL_OPEN_FILES.get().copied()
}

/// Raises the soft open-files limit to the hard limit; fails when even that
/// is too low for `dbs` databases (each needs four descriptors: SQLite's
/// database file, WAL and WAL-index, and walsync's database file; a few
/// more are open for a moment while a database is polled).
fn raise_open_files_limit(dbs: usize) -> Result<()> {
    let needed = (dbs as u64) * 4 + 128;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write to and read from a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Ok(());
        }
        let _ = ORIGINAL_OPEN_FILES.set(lim);
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        }
    }
    if lim.rlim_cur < needed {
        return Err(Error::Usage(format!(
            "watching {dbs} databases needs about {needed} open files but the limit is {}; raise it (`ulimit -n {needed}`, or LimitNOFILE= in the systemd unit)",
            lim.rlim_cur
        )));
    }
    Ok(())
}
