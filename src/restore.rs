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

use crate::error::{Error, IoContext, Result};
use crate::fsutil::{self, Hashing};
use crate::ltx::{self, Decoder};
use crate::plan::{self, txid_hex};
use crate::remote::{self, RemoteLtx};
use crate::storage::Storage;
use crossbeam_channel::{bounded, unbounded};
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, IsTerminal, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
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
}

/// Set by SIGINT/SIGTERM during a restore: stop and clean up.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);
static SIGNALS: AtomicU32 = AtomicU32::new(0);

fn install_signal_handler() {
    // Only one handler per process; when one is already installed (e.g. a
    // caller embedding walsync) restore simply is not interruptible cleanly.
    let _ = ctrlc::set_handler(|| {
        if SIGNALS.fetch_add(1, Ordering::SeqCst) >= 1 {
            eprintln!("walsync: second signal, exiting at once (the .tmp output may remain)");
            std::process::exit(1);
        }
        INTERRUPTED.store(true, Ordering::SeqCst);
    });
}

fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        Err(Error::Other(
            "restore interrupted; the output was not written".into(),
        ))
    } else {
        Ok(())
    }
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

/// Removes the temporary output and download folder unless disarmed.
struct Cleanup {
    paths: Vec<PathBuf>,
    dir: PathBuf,
    armed: bool,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if self.armed {
            for p in &self.paths {
                let _ = fs::remove_file(p);
            }
        }
        let _ = fs::remove_dir_all(&self.dir);
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

    let files = remote::list_ltx(storage, name)?;
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

    install_signal_handler();
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent)
        .local_io(|| format!("creating the output folder {}", parent.display()))?;
    let tmp = sibling(out, ".tmp");
    let dl_dir = sibling(out, ".tmp-ltx");
    let mut cleanup = Cleanup {
        paths: vec![
            tmp.clone(),
            sibling(&tmp, "-wal"),
            sibling(&tmp, "-shm"),
            sibling(&tmp, "-journal"),
        ],
        dir: dl_dir.clone(),
        armed: true,
    };
    let _ = fs::remove_dir_all(&dl_dir);
    fs::create_dir(&dl_dir).local_io(|| format!("creating {}", dl_dir.display()))?;
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
    let mut applier = Applier::new(file);
    let mut progress = Progress::new(name, chain.len());
    fetch_and_apply(
        storage,
        &chain,
        &dl_dir,
        opts.parallelism.max(1),
        |f, src, db_checksums| {
            check_interrupted()?;
            let mut src = ProgressReader {
                inner: src,
                progress: &mut progress,
            };
            applier
                .apply(f, &mut src, db_checksums)
                .map_err(|e| e.context(format!("restoring '{name}' from {url}")))?;
            progress.file_done(f.size);
            Ok(())
        },
    )?;
    progress.finish_line();

    let page_size = applier.page_size.unwrap_or(0);
    let pages = applier.pages;
    let file = applier.file;
    file.sync_all()
        .local_io(|| format!("syncing {}", tmp.display()))?;
    drop(file);
    check_database(&tmp, page_size, pages)?;
    for p in &cleanup.paths[1..] {
        remove_file_if_exists(p)?;
    }
    check_interrupted()?;

    if opts.force {
        // The old database's WAL or journal would be applied to the new file.
        for suffix in ["-wal", "-shm", "-journal"] {
            remove_file_if_exists(&sibling(out, suffix))?;
        }
    }
    fs::rename(&tmp, out)
        .local_io(|| format!("renaming {} to {}", tmp.display(), out.display()))?;
    cleanup.armed = false;
    drop(cleanup);
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

/// How many bytes of downloaded-but-unapplied files may wait on disk beyond
/// the `parallelism` files always allowed ahead: small incremental files are
/// fetched while the snapshot is still being applied.
const PREFETCH_BYTES: u64 = 128 << 20;
/// And how many files at most, whatever their size.
const PREFETCH_FILES: usize = 4096;

/// Downloads `chain` and calls `apply` for each file strictly in order.
///
/// The first file (the snapshot, usually most of the bytes) is streamed: a
/// thread downloads and hashes it while `apply` decodes it, so the download
/// and the apply overlap. Meanwhile `parallelism` workers download the files
/// after it into `dir`, as far ahead as [`PREFETCH_BYTES`] allows (and always
/// `parallelism` files), and each is applied as soon as it and all before it
/// are there.
fn fetch_and_apply(
    storage: &dyn Storage,
    chain: &[RemoteLtx],
    dir: &Path,
    parallelism: usize,
    mut apply: impl FnMut(&RemoteLtx, &mut dyn Read, Option<(u64, u64)>) -> Result<()>,
) -> Result<()> {
    let n = chain.len();
    let workers = parallelism.min(n.saturating_sub(1)).max(1);
    let cancel = AtomicBool::new(false);
    let path_of = |i: usize| dir.join(format!("{i:08}.ltx"));
    std::thread::scope(|s| {
        let (job_tx, job_rx) = unbounded::<usize>();
        let (res_tx, res_rx) = unbounded::<(usize, Result<Option<(u64, u64)>>)>();
        for _ in 0..workers {
            let job_rx = job_rx.clone();
            let res_tx = res_tx.clone();
            let cancel = &cancel;
            s.spawn(move || {
                for i in job_rx {
                    let r = if cancel.load(Ordering::SeqCst) {
                        Err(Error::Other("cancelled".into()))
                    } else {
                        download(storage, &chain[i], &path_of(i), cancel)
                    };
                    if res_tx.send((i, r)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(job_rx);
        drop(res_tx);

        let result = (|| -> Result<()> {
            let Some(first) = chain.first() else {
                return Ok(());
            };
            // Queue downloads of the files after the first.
            let mut next = 1;
            let mut waiting_bytes = 0u64;
            let mut dispatch = |applied: usize, waiting_bytes: &mut u64| -> Result<()> {
                while next < n {
                    let ahead = next - applied;
                    let size = chain[next].size;
                    let fits = ahead < PREFETCH_FILES && *waiting_bytes + size <= PREFETCH_BYTES;
                    if ahead >= parallelism && !fits {
                        break;
                    }
                    job_tx
                        .send(next)
                        .map_err(|_| Error::Other("download workers stopped".into()))?;
                    *waiting_bytes += size;
                    next += 1;
                }
                Ok(())
            };
            dispatch(1, &mut waiting_bytes)?;
            apply_streamed(storage, first, &cancel, s, &mut apply)?;

            let mut ready: BTreeMap<usize, Result<Option<(u64, u64)>>> = BTreeMap::new();
            for (i, f) in chain.iter().enumerate().skip(1) {
                let r = loop {
                    if let Some(r) = ready.remove(&i) {
                        break r;
                    }
                    check_interrupted()?;
                    match res_rx.recv_timeout(Duration::from_millis(200)) {
                        Ok((j, r)) => {
                            ready.insert(j, r);
                        }
                        Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                        Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                            return Err(Error::Other("download workers stopped".into()))
                        }
                    }
                };
                let db_checksums = r?;
                let path = path_of(i);
                let mut src =
                    File::open(&path).local_io(|| format!("opening {}", path.display()))?;
                apply(f, &mut src, db_checksums)?;
                drop(src);
                let _ = fs::remove_file(&path);
                waiting_bytes = waiting_bytes.saturating_sub(f.size);
                dispatch(i + 1, &mut waiting_bytes)?;
            }
            Ok(())
        })();
        if result.is_err() {
            cancel.store(true, Ordering::SeqCst);
        }
        drop(job_tx);
        result
    })
}

/// Size of the chunks a streamed download is handed over in, and how many
/// may be in flight: 4 MiB of memory at most.
const STREAM_CHUNK: usize = 256 * 1024;
const STREAM_CHUNKS: usize = 16;

/// Downloads `f` on a thread of `scope` that hashes the body and hands it to
/// `apply` in chunks. Afterwards the length and SHA-256 are checked like a
/// staged download's; when `apply` fails on bytes the download then finds
/// corrupt or truncated, that is the error reported.
fn apply_streamed<'s, 'e>(
    storage: &'e dyn Storage,
    f: &'e RemoteLtx,
    cancel: &'e AtomicBool,
    scope: &'s std::thread::Scope<'s, 'e>,
    apply: &mut impl FnMut(&RemoteLtx, &mut dyn Read, Option<(u64, u64)>) -> Result<()>,
) -> Result<()> {
    let dl = get(storage, f)?;
    let db_checksums = dl.head.meta.parsed_db_checksums();
    let (chunk_tx, chunk_rx) = bounded::<Vec<u8>>(STREAM_CHUNKS);
    let (spare_tx, spare_rx) = bounded::<Vec<u8>>(STREAM_CHUNKS + 2);
    let fetcher = scope.spawn(move || -> Result<()> {
        read_checked(storage, f, dl, cancel, |bytes| {
            let mut chunk = spare_rx.try_recv().unwrap_or_default();
            chunk.clear();
            chunk.extend_from_slice(bytes);
            // A closed channel: the applier stopped reading, and its error
            // is the one to report.
            chunk_tx
                .send(chunk)
                .map_err(|_| Error::Other("cancelled".into()))
        })
        .map(|_| ())
    });
    let mut reader = ChunkReader {
        chunks: chunk_rx,
        spare: spare_tx,
        current: Vec::new(),
        pos: 0,
    };
    let applied = apply(f, &mut reader, db_checksums);
    // Read to the end, so the whole object is hashed: after the apply, and
    // after an integrity error (damaged bytes are better named by the
    // SHA-256), but not when stopping or after a local error (a full disk).
    let drain = matches!(applied, Ok(()) | Err(Error::Integrity(_)));
    if drain && !stopping(cancel) {
        let _ = std::io::copy(&mut reader, &mut std::io::sink());
    }
    drop(reader);
    let fetched = fetcher
        .join()
        .unwrap_or_else(|_| Err(Error::Other("the download thread panicked".into())));
    check_interrupted()?;
    match (applied, fetched) {
        (Ok(()), Ok(())) => Ok(()),
        (Err(e), Err(Error::Other(_))) | (Err(e), Ok(())) => Err(e),
        (_, Err(download_err)) => Err(download_err),
    }
}

/// Reads the chunks a streaming download hands over, returning each buffer
/// for reuse.
struct ChunkReader {
    chunks: crossbeam_channel::Receiver<Vec<u8>>,
    spare: crossbeam_channel::Sender<Vec<u8>>,
    current: Vec<u8>,
    pos: usize,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.current.len() {
            match self.chunks.recv() {
                Ok(chunk) => {
                    let used = std::mem::replace(&mut self.current, chunk);
                    let _ = self.spare.try_send(used);
                    self.pos = 0;
                }
                // The download ended (or failed: the fetcher reports why).
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len() - self.pos);
        buf[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Starts the download of `f`; a listed object that is gone is an error.
fn get(storage: &dyn Storage, f: &RemoteLtx) -> Result<crate::storage::Download> {
    storage.get(&f.key)?.ok_or_else(|| {
        Error::Storage(format!(
            "object {} was listed in {} but is gone (deleted by retention or compaction?); run the restore again",
            f.key,
            storage.describe()
        ))
    })
}

fn download_error(storage: &dyn Storage, f: &RemoteLtx, e: &std::io::Error) -> Error {
    Error::Storage(format!(
        "downloading {} from {}: {e}",
        f.key,
        storage.describe()
    ))
}

/// Checks a downloaded body's length and SHA-256 against its metadata.
fn check_download(
    f: &RemoteLtx,
    head: &crate::storage::ObjectHead,
    sha: &str,
    len: u64,
) -> Result<()> {
    if len != head.size {
        return Err(Error::Integrity(format!(
            "object {} is truncated: received {len} of {} bytes",
            f.key, head.size
        )));
    }
    if let Some(want) = &head.meta.sha256 {
        if !want.eq_ignore_ascii_case(sha) {
            return Err(Error::Integrity(format!(
                "object {} is corrupt: its SHA-256 is {sha}, the metadata says {want}{}",
                f.key,
                plan::damaged_object_hint(f)
            )));
        }
    }
    Ok(())
}

/// Whether the restore is being abandoned (an error elsewhere, or a signal).
fn stopping(cancel: &AtomicBool) -> bool {
    cancel.load(Ordering::Relaxed) || INTERRUPTED.load(Ordering::Relaxed)
}

/// Reads a download's body to its end, hashing it and handing each chunk
/// to `sink`, and stops early when the restore is being abandoned; then
/// checks its length and SHA-256 against the metadata. Returns the database
/// checksums the metadata carries (walsync's files), if any.
fn read_checked(
    storage: &dyn Storage,
    f: &RemoteLtx,
    dl: crate::storage::Download,
    cancel: &AtomicBool,
    mut sink: impl FnMut(&[u8]) -> Result<()>,
) -> Result<Option<(u64, u64)>> {
    let mut body = dl.body;
    let mut hashed = Hashing::new(std::io::sink());
    let mut buf = vec![0u8; STREAM_CHUNK];
    loop {
        if stopping(cancel) {
            return Err(Error::Other("cancelled".into()));
        }
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(download_error(storage, f, &e)),
        };
        // Writing to a sink cannot fail.
        let _ = hashed.write_all(&buf[..n]);
        sink(&buf[..n])?;
    }
    let (_, sha, len) = hashed.finish();
    check_download(f, &dl.head, &sha, len)?;
    Ok(dl.head.meta.parsed_db_checksums())
}

/// Downloads one object into `dest`, checked as [`read_checked`] says.
fn download(
    storage: &dyn Storage,
    f: &RemoteLtx,
    dest: &Path,
    cancel: &AtomicBool,
) -> Result<Option<(u64, u64)>> {
    let dl = get(storage, f)?;
    let file = File::create(dest).local_io(|| format!("creating {}", dest.display()))?;
    let mut w = BufWriter::with_capacity(256 * 1024, file);
    let db_checksums = read_checked(storage, f, dl, cancel, |bytes| {
        w.write_all(bytes)
            .local_io(|| format!("writing {}", dest.display()))
    })?;
    w.into_inner()
        .map_err(|e| Error::Other(format!("writing {}: {}", dest.display(), e.error())))?;
    Ok(db_checksums)
}

/// Applies LTX files to the output file in order, tracking the database
/// checksum from the bytes in the file.
struct Applier {
    file: File,
    page_size: Option<u32>,
    /// Database size in pages.
    pages: u32,
    /// Running database checksum of the file's content.
    checksum: u64,
    first: bool,
    page: Vec<u8>,
    old: Vec<u8>,
    zeros: Vec<u8>,
    /// Consecutive pages not yet written (a snapshot is one long run), so a
    /// restore makes one write per MiB instead of one per page.
    run: Vec<u8>,
    run_start: u32,
}

/// How many bytes of consecutive pages are gathered before one write.
const WRITE_RUN: usize = 1 << 20;

impl Applier {
    fn new(file: File) -> Applier {
        Applier {
            file,
            page_size: None,
            pages: 0,
            checksum: ltx::EMPTY_DB_CHECKSUM,
            first: true,
            page: Vec::new(),
            old: Vec::new(),
            zeros: Vec::new(),
            run: Vec::new(),
            run_start: 0,
        }
    }

    /// Queues page `pgno` for writing, after the pages queued before it when
    /// it follows them; otherwise writes those first.
    fn write_page(&mut self, pgno: u32, page: &[u8]) -> Result<()> {
        let queued = (self.run.len() / page.len().max(1)) as u32;
        if !self.run.is_empty() && (pgno != self.run_start + queued || self.run.len() >= WRITE_RUN)
        {
            self.flush_run()?;
        }
        if self.run.is_empty() {
            self.run_start = pgno;
        }
        self.run.extend_from_slice(page);
        Ok(())
    }

    /// Writes the queued pages.
    fn flush_run(&mut self) -> Result<()> {
        if self.run.is_empty() {
            return Ok(());
        }
        let at = self.offset(self.run_start);
        let first = self.run_start;
        self.file
            .write_all_at(&self.run, at)
            .local_io(|| format!("writing pages from {first} of the restored file"))?;
        self.run.clear();
        Ok(())
    }

    fn offset(&self, pgno: u32) -> u64 {
        u64::from(pgno - 1) * u64::from(self.page_size.unwrap_or(0))
    }

    fn old_page_checksum(&mut self, pgno: u32) -> Result<u64> {
        let ps = self.page_size.unwrap_or(0) as usize;
        self.old.resize(ps, 0);
        let at = self.offset(pgno);
        self.file
            .read_exact_at(&mut self.old, at)
            .local_io(|| format!("reading back page {pgno} of the restored file"))?;
        Ok(ltx::page_checksum(pgno, &self.old))
    }

    /// Pages between the old end and a page written beyond it that no file
    /// wrote are zeros in the output; they count as zero pages.
    fn add_holes(&mut self, from: u32, to: u32, lock: u32) {
        self.zeros.resize(self.page_size.unwrap_or(0) as usize, 0);
        for pgno in from..to {
            if pgno != lock {
                let sum = ltx::page_checksum(pgno, &self.zeros);
                self.checksum = ltx::db_checksum_add(self.checksum, sum);
            }
        }
    }

    /// Applies one file. Its expected database checksums come from the LTX
    /// header and trailer, or, for files written with the NoChecksum flag
    /// (Litestream compatibility), from walsync's object metadata when present.
    fn apply(
        &mut self,
        f: &RemoteLtx,
        src: &mut dyn Read,
        meta_checksums: Option<(u64, u64)>,
    ) -> Result<()> {
        let key = &f.key;
        let ctx = |e: Error| e.context(format!("object {key}"));
        let mut dec = Decoder::new(src).map_err(ctx)?;
        let h = *dec.header();
        if let Some(m) = plan::name_mismatch(f, h.min_txid, h.max_txid) {
            return Err(Error::Integrity(format!("object {key} {m}")));
        }
        match self.page_size {
            None => self.page_size = Some(h.page_size),
            Some(ps) if ps != h.page_size => {
                return Err(Error::Integrity(format!(
                    "object {key} has page size {} but the files before it have {ps}",
                    h.page_size
                )))
            }
            Some(_) => {}
        }
        if self.first != h.is_snapshot() {
            return Err(Error::Integrity(format!(
                "object {key}: a restore must start with a snapshot and continue with incremental files"
            )));
        }
        let expected = if h.no_checksum() {
            meta_checksums
        } else {
            Some((h.pre_apply_checksum, 0))
        };
        // A zero checksum is "not recorded" (e.g. the first file walsync
        // writes when it takes over a replica from another tool).
        if let Some((pre, _)) = expected.filter(|&(pre, _)| !self.first && pre != 0) {
            if pre != self.checksum {
                return Err(Error::Integrity(format!(
                    "restored bytes differ from the source's before {key}: its pre-apply checksum is {pre:016x}, the restored database's is {:016x}; the files before it do not lead to its starting state",
                    self.checksum
                )));
            }
        }
        let lock = h.lock_pgno();
        let old_pages = self.pages;
        // Highest page that exists in the file so far.
        let mut high = old_pages;
        let mut page = std::mem::take(&mut self.page);
        let r = (|| -> Result<()> {
            while let Some(pgno) = dec.next_page(&mut page).map_err(ctx)? {
                if pgno <= old_pages {
                    let old = self.old_page_checksum(pgno)?;
                    self.checksum = ltx::db_checksum_remove(self.checksum, old);
                } else if pgno > high + 1 {
                    self.add_holes(high + 1, pgno, lock);
                }
                high = high.max(pgno);
                self.write_page(pgno, &page)?;
                self.checksum =
                    ltx::db_checksum_add(self.checksum, ltx::page_checksum(pgno, &page));
            }
            Ok(())
        })();
        self.page = page;
        r?;
        // Pages are read back below (truncation) and by the next file.
        self.flush_run()?;
        let trailer = dec.finish().map_err(ctx)?;
        if h.commit < old_pages {
            for pgno in (h.commit + 1)..=old_pages {
                if pgno == lock {
                    continue;
                }
                let old = self.old_page_checksum(pgno)?;
                self.checksum = ltx::db_checksum_remove(self.checksum, old);
            }
        } else if h.commit > high {
            self.add_holes(high + 1, h.commit + 1, lock);
        }
        self.file
            .set_len(u64::from(h.commit) * u64::from(h.page_size))
            .local_io(|| "resizing the restored file".to_string())?;
        self.pages = h.commit;
        self.first = false;
        let post = match expected {
            None => None,
            Some(_) if !h.no_checksum() => Some(trailer.post_apply_checksum),
            Some((_, post)) => Some(post),
        };
        if let Some(post) = post.filter(|&p| p != 0 && p != self.checksum) {
            return Err(Error::Integrity(format!(
                "restored bytes differ from the source's after {key}: its post-apply checksum is {post:016x}, the restored database's is {:016x}",
                self.checksum
            )));
        }
        Ok(())
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
