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
use crate::fetch::{self, Replay, Staging};
use crate::fsutil;
use crate::plan::{self, txid_hex};
use crate::storage::Storage;
use std::fs::{self, File, OpenOptions};
use std::io::{IsTerminal, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

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
        Err(e) => Err(Error::Other(format!("cannot remove {}: {e}", p.display()))),
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

pub fn run(storage: &dyn Storage, opts: &RestoreOptions) -> Result<()> {
    let started = Instant::now();
    let out = &opts.output;
    let name = &opts.name;
    let url = storage.describe();
    if out.as_os_str().is_empty() || out.file_name().is_none() {
        return Err(Error::Usage(format!(
            "bad output path '{}': name a database file",
            out.display()
        )));
    }

    if exists(out) {
        if opts.if_db_not_exists {
            eprintln!(
                "walsync: {} exists; nothing restored (--if-db-not-exists)",
                out.display()
            );
            return Ok(());
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

    let files = catalog::list_db(storage, name)?;
    if files.is_empty() {
        if opts.if_replica_exists {
            eprintln!(
                "walsync: no backups for '{name}' in {url}; nothing restored (--if-replica-exists)"
            );
            return Ok(());
        }
        return Err(Error::Restore(format!(
            "no backups for '{name}' in {url}; check the name with `walsync list -b {url}`"
        )));
    }

    let target = match (opts.txid, opts.point_in_time_ms) {
        (Some(t), _) => t,
        (None, Some(at)) => {
            let points = plan::commit_points(&files);
            match plan::txid_at_time(storage, &points, at)? {
                Some((t, _)) => t,
                None => {
                    let first = points
                        .first()
                        .map(|f| plan::file_time_ms(storage, f))
                        .transpose()?;
                    return Err(Error::Restore(format!(
                        "nothing to restore at {} for '{name}' in {url}: the oldest state in the replica is from {}",
                        fsutil::rfc3339_ms(at),
                        first.map_or_else(|| "?".into(), fsutil::rfc3339_ms)
                    )));
                }
            }
        }
        (None, None) => files.iter().map(|f| f.id.max_txid).max().unwrap_or(0),
    };
    let chain = plan::plan(&files, target, name, &url)?;

    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent)
        .local_io(|| format!("creating the output folder {}", parent.display()))?;
    let tmp = sibling(out, ".tmp");
    let mut cleanup = Cleanup {
        paths: vec![
            tmp.clone(),
            sibling(&tmp, "-wal"),
            sibling(&tmp, "-shm"),
            sibling(&tmp, "-journal"),
        ],
        armed: true,
    };
    let staging = Staging::create(sibling(out, ".tmp-ltx"))?;
    for p in &cleanup.paths[1..] {
        remove_file_if_exists(p)?;
    }

    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .local_io(|| format!("creating {}", tmp.display()))?;
    let mut replay = RestoreReplay {
        applier: Applier::new(OutputPages::new(file)),
        progress: Progress::new(name, chain.len()),
        context: format!("restoring '{name}' from {url}"),
    };
    fetch::fetch_and_replay(
        storage,
        &chain,
        &staging,
        opts.parallelism,
        &opts.cancel,
        &mut replay,
    )?;
    drop(staging);
    let RestoreReplay {
        applier, progress, ..
    } = replay;
    progress.finish_line();

    let page_size = applier.page_size.unwrap_or(0);
    let pages = applier.pages;
    let file = applier.pages_target.file;
    file.sync_all()
        .local_io(|| format!("syncing {}", tmp.display()))?;
    drop(file);
    check_database(&tmp, page_size, pages)?;
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

    eprintln!(
        "restored {name} to TXID {} ({} files, {} bytes) in {:.1}s: {}",
        txid_hex(target),
        chain.len(),
        progress.bytes,
        started.elapsed().as_secs_f64(),
        out.display()
    );
    Ok(())
}

/// Restore's consumer of the plan: applies each file to the output and
/// stops at the first problem.
struct RestoreReplay {
    applier: Applier<OutputPages>,
    progress: Progress,
    /// Put in front of every error: which database, from where.
    context: String,
}

impl Replay for RestoreReplay {
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

/// Progress on stderr: an updating line on a terminal, nothing otherwise.
/// It moves within a file too, so a large snapshot shows its bytes.
struct Progress {
    name: String,
    total: usize,
    done: usize,
    /// Bytes of the files applied.
    bytes: u64,
    /// Bytes read so far of the file being applied.
    partial: u64,
    tty: bool,
    last: Option<Instant>,
}

impl Progress {
    fn new(name: &str, total: usize) -> Progress {
        Progress {
            name: name.to_string(),
            total,
            done: 0,
            bytes: 0,
            partial: 0,
            tty: std::io::stderr().is_terminal(),
            last: None,
        }
    }

    fn read(&mut self, bytes: usize) {
        self.partial += bytes as u64;
        self.draw(false);
    }

    fn file_done(&mut self, bytes: u64) {
        self.done += 1;
        self.bytes += bytes;
        self.partial = 0;
        self.draw(self.done == self.total);
    }

    fn draw(&mut self, now: bool) {
        if !self.tty {
            return;
        }
        let due = self
            .last
            .is_none_or(|t| t.elapsed() >= Duration::from_millis(100));
        if due || now {
            self.last = Some(Instant::now());
            eprint!(
                "\rrestoring {}: {}/{} files, {:.1} MB\x1b[K",
                self.name,
                self.done,
                self.total,
                (self.bytes + self.partial) as f64 / 1e6
            );
        }
    }

    fn finish_line(&self) {
        if self.tty && self.last.is_some() {
            eprint!("\r\x1b[K");
        }
    }
}

/// Counts what the applier reads into the progress line.
struct ProgressReader<'a> {
    inner: &'a mut dyn Read,
    progress: &'a mut Progress,
}

impl Read for ProgressReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.read(n);
        Ok(n)
    }
}
