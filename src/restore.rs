//! `walsync restore`: rebuilds a database from its replica, at the latest
//! state, a TXID or a point in time.
//!
//! Steps: plan the files (see [`crate::plan`]); stream the snapshot from the
//! store straight into `<out>.tmp` while the files after it download in
//! parallel into a temporary folder beside the output (every object's
//! length and SHA-256 checked against its metadata); apply them strictly in
//! TXID order while keeping the running database checksum (checked against
//! every file's pre- and post-apply checksums where the file carries them);
//! run `PRAGMA integrity_check`, fsync, rename into place and fsync the
//! folder.
//!
//! Bounded resources: the streamed snapshot holds at most 4 MiB in flight;
//! downloaded-but-unapplied files wait on disk, never more than
//! `parallelism` files or 128 MiB (whichever allows more); pages are applied
//! one at a time, and the running checksum is updated from the bytes already
//! in `<out>.tmp` (old page read back before it is overwritten), never from a
//! table of per-page checksums. Any failure removes `<out>.tmp` and the
//! download folder.

use crate::apply::{Applier, ObjectError, OutputPages};
use crate::cancel::CancelToken;
use crate::catalog::{self, RemoteLtx};
use crate::error::{Error, IoContext, Result};
use crate::event::{Event, EventSink};
use crate::fetch::{self, Replay, Staging};
use crate::fsutil;
use crate::plan;
use crate::storage::Storage;
use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What to restore, where, and how.
pub struct RestoreOptions {
    pub name: String,
    pub output: PathBuf,
    pub txid: Option<u64>,
    pub point_in_time_ms: Option<i64>,
    pub force: bool,
    pub if_db_not_exists: bool,
    pub if_replica_exists: bool,
    pub parallelism: usize,
    /// Cancelling it stops the restore and removes what it wrote.
    pub cancel: CancelToken,
}

/// How a restore ended, when it did not fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestoreOutcome {
    /// The output holds the database as of `txid`, committed at
    /// `committed_ms` (Unix ms, as the last file applied records it).
    Restored {
        txid: u64,
        committed_ms: i64,
        files: usize,
        bytes: u64,
        elapsed: Duration,
    },
    /// The output exists and `--if-db-not-exists` was given: nothing done.
    OutputExists,
    /// The replica holds nothing for the name and `--if-replica-exists` was
    /// given: nothing done.
    NoBackups,
}

/// `<out><suffix>` (suffix appended to the file name).
fn sibling(out: &Path, suffix: &str) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn exists(p: &Path) -> bool {
    fs::symlink_metadata(p).is_ok()
}

fn remove_file_if_exists(p: &Path) -> Result<()> {
    match fs::remove_file(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::Local(format!("cannot remove {}: {e}", p.display()))),
    }
}

/// Removes the temporary output unless disarmed.
struct Cleanup {
    paths: Vec<PathBuf>,
    armed: bool,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if self.armed {
            for p in &self.paths {
                let _ = fs::remove_file(p);
            }
        }
    }
}

/// Restores `opts.name` from `storage` into `opts.output`; progress and
/// the result are also reported to `events`. A local file that cannot be
/// written (the output folder read-only, the disk full) is a local file
/// error naming the database, the output and the fix; nothing is left
/// behind.
pub fn run(
    storage: &dyn Storage,
    opts: &RestoreOptions,
    events: &dyn EventSink,
) -> Result<RestoreOutcome> {
    restore(storage, opts, events).map_err(|e| match e {
        Error::Local(m) => {
            let named = format!("'{}'", opts.name);
            let what = if m.contains(&named) {
                m
            } else {
                format!("restoring {named} to {}: {m}", opts.output.display())
            };
            Error::Local(format!(
                "{what}; make sure the folder of {} is writable and has room for the database, then run the restore again (nothing was left behind)",
                opts.output.display()
            ))
        }
        e => e,
    })
}

fn restore(
    storage: &dyn Storage,
    opts: &RestoreOptions,
    events: &dyn EventSink,
) -> Result<RestoreOutcome> {
    let started = Instant::now();
    let out = &opts.output;
    if !check_output(opts)? {
        return Ok(RestoreOutcome::OutputExists);
    }
    let files = catalog::list_db(storage, &opts.name)?;
    if files.is_empty() && opts.if_replica_exists {
        return Ok(RestoreOutcome::NoBackups);
    }
    let target = target_txid(storage, opts, &files)?;
    let chain = plan::plan(&files, target, &opts.name, &storage.describe())?;
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent)
        .local_io(|| format!("creating the output folder {}", parent.display()))?;
    let tmp = sibling(out, ".tmp");
    let mut cleanup = Cleanup {
        paths: ["", "-wal", "-shm", "-journal"]
            .iter()
            .map(|suffix| sibling(&tmp, suffix))
            .collect(),
        armed: true,
    };
    for p in &cleanup.paths[1..] {
        remove_file_if_exists(p)?;
    }
    let (bytes, committed_ms) = rebuild(storage, opts, &chain, &tmp, events)?;
    for p in &cleanup.paths[1..] {
        remove_file_if_exists(p)?;
    }
    opts.cancel.check()?;
    if opts.force {
        // The old database's WAL or journal would be applied to the new file.
        for suffix in ["-wal", "-shm", "-journal"] {
            remove_file_if_exists(&sibling(out, suffix))?;
        }
    }
    fs::rename(&tmp, out)
        .local_io(|| format!("renaming {} to {}", tmp.display(), out.display()))?;
    cleanup.armed = false;
    fsutil::fsync_dir(&parent)?;
    let elapsed = started.elapsed();
    events.emit(Event::Restored {
        db: opts.name.clone(),
        txid: target,
        committed_ms,
        files: chain.len(),
        bytes,
        elapsed,
        output: out.clone(),
    });
    Ok(RestoreOutcome::Restored {
        txid: target,
        committed_ms,
        files: chain.len(),
        bytes,
        elapsed,
    })
}

/// Checks the output path: `false` when it exists and `--if-db-not-exists`
/// says to leave it; an error when it (or a WAL or journal SQLite would
/// apply to it) exists without `--force`.
fn check_output(opts: &RestoreOptions) -> Result<bool> {
    let out = &opts.output;
    if out.as_os_str().is_empty() || out.file_name().is_none() {
        return Err(Error::Usage(format!(
            "bad output path '{}': name a database file",
            out.display()
        )));
    }
    if out.is_dir() {
        return Err(Error::Usage(format!(
            "-o {} is a folder: name the database file to write, like {}",
            out.display(),
            out.join(format!(
                "{}.db",
                opts.name.rsplit('/').next().unwrap_or("restored")
            ))
            .display()
        )));
    }
    if exists(out) {
        if opts.if_db_not_exists {
            return Ok(false);
        }
        if !opts.force {
            return Err(Error::Restore(format!(
                "{} exists; pass --force to replace it, or choose another output with -o",
                out.display()
            )));
        }
    }
    if !opts.force {
        // A WAL or journal left beside the output would be applied to the
        // restored database the first time it is opened.
        for suffix in ["-wal", "-journal"] {
            let p = sibling(out, suffix);
            if exists(&p) {
                return Err(Error::Restore(format!(
                    "{} exists (left by an earlier database?) and SQLite would apply it to the restored file; remove it or pass --force",
                    p.display()
                )));
            }
        }
    }
    Ok(true)
}

/// The TXID to restore: `--txid`, the last committed at `--point-in-time`,
/// or the newest.
fn target_txid(storage: &dyn Storage, opts: &RestoreOptions, files: &[RemoteLtx]) -> Result<u64> {
    let (name, url) = (&opts.name, storage.describe());
    if files.is_empty() {
        return Err(Error::Restore(format!(
            "no backups for '{name}' in {url}; check the name with `walsync list -b {url}`"
        )));
    }
    let at = match (opts.txid, opts.point_in_time_ms) {
        (Some(t), _) => return Ok(t),
        (None, None) => return Ok(files.iter().map(|f| f.id.max_txid).max().unwrap_or(0)),
        (None, Some(at)) if at > fsutil::now_ms() => {
            return Err(Error::Restore(format!(
                "--point-in-time {} is in the future (it is {} now); give a past time, or leave it out for the latest state",
                fsutil::rfc3339_ms(at),
                fsutil::rfc3339_ms(fsutil::now_ms())
            )))
        }
        (None, Some(at)) => at,
    };
    let points = plan::commit_points(files);
    if let Some((t, _)) = plan::txid_at_time(storage, &points, at)? {
        return Ok(t);
    }
    let first = points
        .first()
        .map(|f| plan::file_time_ms(storage, f))
        .transpose()?;
    Err(Error::Restore(format!(
        "nothing to restore at {} for '{name}' in {url}: the oldest state in the replica is from {}",
        fsutil::rfc3339_ms(at),
        first.map_or_else(|| "?".into(), fsutil::rfc3339_ms)
    )))
}

/// Applies `chain` into a new file at `tmp`, then syncs and checks it.
/// Returns the bytes read and the commit time the last file records.
fn rebuild(
    storage: &dyn Storage,
    opts: &RestoreOptions,
    chain: &[RemoteLtx],
    tmp: &Path,
    events: &dyn EventSink,
) -> Result<(u64, i64)> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(tmp)
        .local_io(|| format!("creating {}", tmp.display()))?;
    let mut replay = RestoreReplay {
        applier: Applier::new(OutputPages::new(file)),
        progress: Progress::new(&opts.name, chain.len(), events),
        context: format!("restoring '{}' from {}", opts.name, storage.describe()),
    };
    let staging = Staging::create(sibling(&opts.output, ".tmp-ltx"))?;
    fetch::fetch_and_replay(
        storage,
        chain,
        &staging,
        opts.parallelism,
        &opts.cancel,
        &mut replay,
    )?;
    drop(staging);
    let RestoreReplay {
        applier, progress, ..
    } = replay;
    let (page_size, pages) = (applier.page_size.unwrap_or(0), applier.pages);
    let committed_ms = applier.timestamp_ms;
    let file = applier.pages_target.file;
    file.sync_all()
        .local_io(|| format!("syncing {}", tmp.display()))?;
    drop(file);
    check_database(tmp, page_size, pages)?;
    Ok((progress.bytes, committed_ms))
}

/// Restore's consumer of the plan: applies each file to the output and
/// stops at the first problem.
struct RestoreReplay<'e> {
    applier: Applier<OutputPages>,
    progress: Progress<'e>,
    /// Put in front of every error: which database, from where.
    context: String,
}

impl Replay for RestoreReplay<'_> {
    fn apply(
        &mut self,
        f: &RemoteLtx,
        body: &mut dyn Read,
        db_checksums: Option<(u64, u64)>,
    ) -> Result<(), ObjectError> {
        let mut body = ProgressReader {
            inner: body,
            progress: &mut self.progress,
        };
        self.applier.apply(f, &mut body, db_checksums)
    }

    fn done(&mut self, f: &RemoteLtx, result: Result<(), ObjectError>) -> Result<()> {
        match result {
            Ok(()) => {
                self.progress.file_done(f.size);
                Ok(())
            }
            Err(e) if matches!(e.error, Error::Cancelled) => Err(Error::Cancelled),
            Err(e) => Err(e.error.context(&self.context)),
        }
    }
}

/// Checks the restored file is a sound SQLite database of the expected page
/// size: header, then `PRAGMA integrity_check` on a read-only, immutable
/// connection (which creates no -wal/-shm files and changes no byte).
fn check_database(path: &Path, page_size: u32, pages: u32) -> Result<()> {
    if pages == 0 {
        return Ok(());
    }
    let mut header = [0u8; 100];
    File::open(path)
        .and_then(|f| f.read_exact_at(&mut header, 0))
        .local_io(|| format!("reading {}", path.display()))?;
    if &header[..16] != b"SQLite format 3\0" {
        return Err(Error::Integrity(format!(
            "the restored file {} does not start with the SQLite header; the replica's snapshot is not a SQLite database",
            path.display()
        )));
    }
    let hps = u32::from(u16::from_be_bytes([header[16], header[17]]));
    let hps = if hps == 1 { 65536 } else { hps };
    if hps != page_size {
        return Err(Error::Integrity(format!(
            "the restored database says its page size is {hps}, the replica's files use {page_size}"
        )));
    }
    let abs = fs::canonicalize(path).local_io(|| format!("resolving {}", path.display()))?;
    let mut uri = url::Url::from_file_path(&abs)
        .map_err(|()| Error::Other(format!("cannot make a URI of {}", abs.display())))?;
    uri.set_query(Some("immutable=1"));
    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
        | rusqlite::OpenFlags::SQLITE_OPEN_URI
        | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = rusqlite::Connection::open_with_flags(uri.as_str(), flags).map_err(|e| {
        Error::Integrity(format!(
            "the restored database cannot be opened by SQLite: {e}"
        ))
    })?;
    // Read the first 64 MiB through a memory map (fewer system calls on a
    // small database) without making a large database's pages resident.
    conn.execute_batch("PRAGMA mmap_size = 67108864")
        .map_err(|e| Error::Integrity(format!("integrity check of the restored database: {e}")))?;
    let mut stmt = conn
        .prepare("PRAGMA integrity_check")
        .map_err(|e| Error::Integrity(format!("integrity check of the restored database: {e}")))?;
    let rows: Vec<String> = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .and_then(|it| it.collect())
        .map_err(|e| Error::Integrity(format!("integrity check of the restored database: {e}")))?;
    if rows != ["ok"] {
        let shown: Vec<&str> = rows.iter().take(5).map(String::as_str).collect();
        return Err(Error::Integrity(format!(
            "the restored database fails PRAGMA integrity_check: {}",
            shown.join("; ")
        )));
    }
    Ok(())
}

/// Progress as events: at most one every 100 ms, and one per file done.
/// It moves within a file too, so a large snapshot shows its bytes.
struct Progress<'e> {
    name: String,
    total: usize,
    done: usize,
    /// Bytes of the files applied.
    bytes: u64,
    /// Bytes read so far of the file being applied.
    partial: u64,
    last: Option<Instant>,
    events: &'e dyn EventSink,
}

impl<'e> Progress<'e> {
    fn new(name: &str, total: usize, events: &'e dyn EventSink) -> Progress<'e> {
        Progress {
            name: name.to_string(),
            total,
            done: 0,
            bytes: 0,
            partial: 0,
            last: None,
            events,
        }
    }

    fn read(&mut self, bytes: usize) {
        self.partial += bytes as u64;
        self.report(false);
    }

    fn file_done(&mut self, bytes: u64) {
        self.done += 1;
        self.bytes += bytes;
        self.partial = 0;
        self.report(true);
    }

    fn report(&mut self, now: bool) {
        let due = self
            .last
            .is_none_or(|t| t.elapsed() >= Duration::from_millis(100));
        if due || now {
            self.last = Some(Instant::now());
            self.events.emit(Event::RestoreProgress {
                db: self.name.clone(),
                files_done: self.done,
                files_total: self.total,
                bytes: self.bytes + self.partial,
            });
        }
    }
}

/// Counts what the applier reads into the progress line.
struct ProgressReader<'a, 'e> {
    inner: &'a mut dyn Read,
    progress: &'a mut Progress<'e>,
}

impl Read for ProgressReader<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.read(n);
        Ok(n)
    }
}
