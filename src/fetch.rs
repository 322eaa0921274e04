//! Reading a plan's objects from storage: checked downloads and the
//! pipeline that hands them, strictly in order, to a [`Replay`].
//!
//! Every object read here is checked the same way, for restore and verify
//! alike: it must still exist ("listed but gone" is reported as such), its
//! body must have the listed length, and its SHA-256 must equal its
//! `x-amz-meta-sha256` metadata (or the file replica's sidecar) when there
//! is one.
//!
//! The first file of a plan (the full image, usually most of the bytes) is
//! streamed: a thread downloads and hashes it while the replay decodes it.
//! Meanwhile `parallelism` workers download the files after it into a
//! folder, as far ahead as [`PREFETCH_BYTES`] allows (and always
//! `parallelism` files), and each is replayed as soon as it and all before
//! it are there. Memory stays bounded: the stream holds at most
//! [`STREAM_CHUNK`] × [`STREAM_CHUNKS`] bytes in flight, and waiting files
//! wait on disk.

use crate::apply::{Fault, ObjectError};
use crate::cancel::CancelToken;
use crate::catalog::RemoteLtx;
use crate::error::{Error, IoContext, Result};
use crate::fsutil::Hashing;
use crate::plan;
use crate::storage::{Download, ObjectHead, Storage};
use crossbeam_channel::{bounded, Receiver, Sender};
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// A staged download's outcome: the database checksums of its metadata.
type Fetched = Result<Option<(u64, u64)>, ObjectError>;

/// How many bytes of downloaded-but-unreplayed files may wait on disk beyond
/// the `parallelism` files always allowed ahead.
pub const PREFETCH_BYTES: u64 = 128 << 20;
/// And how many files at most, whatever their size.
const PREFETCH_FILES: usize = 4096;
/// Size of the chunks a streamed download is handed over in.
pub const STREAM_CHUNK: usize = 256 * 1024;
/// How many chunks may be in flight: 4 MiB of memory at most.
pub const STREAM_CHUNKS: usize = 16;

/// What consumes the files of a plan, in order.
pub trait Replay {
    /// Reads file `f` from `body` (its bytes, not yet known to be complete
    /// or to match their SHA-256: a streamed download is checked after).
    /// `db_checksums` are walsync's pre/post-apply checksums from the
    /// object's metadata, when it has them.
    fn apply(
        &mut self,
        f: &RemoteLtx,
        body: &mut dyn Read,
        db_checksums: Option<(u64, u64)>,
    ) -> Result<(), ObjectError>;

    /// The verdict on file `f`: its download and checks, and its apply. An
    /// error returned here stops the pipeline; `Ok` goes on to the next file.
    fn done(&mut self, f: &RemoteLtx, result: Result<(), ObjectError>) -> Result<()>;
}

/// Starts the download of `f`; a listed object that is gone is an error.
pub fn get(storage: &dyn Storage, f: &RemoteLtx) -> Result<Download, ObjectError> {
    match storage.get(&f.key) {
        Ok(Some(dl)) => Ok(dl),
        Ok(None) => Err(ObjectError::new(
            Fault::Missing,
            plan::replica_changed(storage, &f.key),
        )),
        Err(e) => Err(ObjectError::classify(e)),
    }
}

/// Checks a downloaded body's length and SHA-256 against its metadata.
pub fn check_body(
    f: &RemoteLtx,
    head: &ObjectHead,
    sha: &str,
    len: u64,
) -> Result<(), ObjectError> {
    if len != head.size {
        return Err(ObjectError::new(
            Fault::Corrupt,
            Error::Integrity(format!(
                "object {} is truncated: received {len} of {} bytes",
                f.key, head.size
            )),
        ));
    }
    if let Some(want) = &head.meta.sha256 {
        if !want.eq_ignore_ascii_case(sha) {
            return Err(ObjectError::new(
                Fault::Sha256Mismatch,
                Error::Integrity(format!(
                    "object {} is corrupt: its SHA-256 is {sha}, the metadata says {want}{}",
                    f.key,
                    plan::damaged_object_hint(f)
                )),
            ));
        }
    }
    Ok(())
}

/// Reads a download's body to its end, hashing it and handing each chunk
/// to `sink`, and stops early when `cancel` is set; then checks its length
/// and SHA-256 against the metadata.
pub fn read_checked(
    storage: &dyn Storage,
    f: &RemoteLtx,
    dl: Download,
    cancel: &Stop,
    mut sink: impl FnMut(&[u8]) -> Result<()>,
) -> Result<(), ObjectError> {
    let mut body = dl.body;
    let mut hashed = Hashing::new(std::io::sink());
    let mut buf = vec![0u8; STREAM_CHUNK];
    loop {
        if cancel.stopping() {
            return Err(ObjectError::new(Fault::Cancelled, Error::Cancelled));
        }
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(ObjectError::new(
                    Fault::Storage,
                    Error::Storage(format!(
                        "downloading {} from {}: {e}",
                        f.key,
                        storage.describe()
                    )),
                ))
            }
        };
        crate::storage::mark_progress();
        // Writing to a sink cannot fail.
        let _ = hashed.write_all(&buf[..n]);
        sink(&buf[..n]).map_err(ObjectError::classify)?;
    }
    let (_, sha, len) = hashed.finish();
    check_body(f, &dl.head, &sha, len)
}

/// Downloads one object into `dest`, checked as [`read_checked`] says.
/// Returns the database checksums its metadata carries, if any.
fn download(
    storage: &dyn Storage,
    f: &RemoteLtx,
    dest: &Path,
    cancel: &Stop,
) -> Result<Option<(u64, u64)>, ObjectError> {
    let dl = get(storage, f)?;
    let db_checksums = dl.head.meta.parsed_db_checksums();
    let file = File::create(dest)
        .local_io(|| format!("creating {}", dest.display()))
        .map_err(ObjectError::classify)?;
    let mut w = BufWriter::with_capacity(256 * 1024, file);
    read_checked(storage, f, dl, cancel, |bytes| {
        w.write_all(bytes)
            .local_io(|| format!("writing {}", dest.display()))
    })?;
    w.into_inner().map_err(|e| {
        ObjectError::classify(Error::Local(format!(
            "writing {}: {}",
            dest.display(),
            e.error()
        )))
    })?;
    Ok(db_checksums)
}

/// When the pipeline stops: the caller's token, or an error in the pipeline.
pub struct Stop<'a> {
    token: &'a CancelToken,
    failed: AtomicBool,
}

impl Stop<'_> {
    pub fn new(token: &CancelToken) -> Stop<'_> {
        Stop {
            token,
            failed: AtomicBool::new(false),
        }
    }

    /// Whether the work is being abandoned.
    pub fn stopping(&self) -> bool {
        self.failed.load(Ordering::Relaxed) || self.token.is_cancelled()
    }

    fn fail(&self) {
        self.failed.store(true, Ordering::SeqCst);
    }
}

/// A folder of downloaded files, removed (with its content) on drop.
pub struct Staging {
    dir: PathBuf,
}

impl Staging {
    /// Creates `dir` afresh (anything left there by an earlier run is removed).
    pub fn create(dir: PathBuf) -> Result<Staging> {
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).local_io(|| format!("creating {}", dir.display()))?;
        Ok(Staging { dir })
    }

    /// A new folder under the system's temporary folder.
    pub fn temporary(what: &str) -> Result<Staging> {
        use std::sync::atomic::AtomicU64;
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("walsync-{what}-{}-{n}", std::process::id()));
        Staging::create(dir)
    }

    /// The folder, for files of the caller's own.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path_of(&self, i: usize) -> PathBuf {
        self.dir.join(format!("{i:08}.ltx"))
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Downloads `chain` and hands each file to `replay`, strictly in order
/// (see the module doc). Stops at the first error `replay.done` returns, or
/// when `cancel` is set.
pub fn fetch_and_replay(
    storage: &dyn Storage,
    chain: &[RemoteLtx],
    staging: &Staging,
    parallelism: usize,
    cancel: &CancelToken,
    replay: &mut dyn Replay,
) -> Result<()> {
    let parallelism = parallelism.max(1);
    let workers = parallelism.min(chain.len().saturating_sub(1)).max(1);
    let stop = Stop::new(cancel);
    let download_one = |i: usize| -> (usize, Fetched) {
        if stop.stopping() {
            return (i, Err(ObjectError::new(Fault::Cancelled, Error::Cancelled)));
        }
        (i, download(storage, &chain[i], &staging.path_of(i), &stop))
    };
    std::thread::scope(|s| {
        let (jobs, results) = crate::pool::workers(s, workers, &download_one);
        let mut ahead = Prefetch {
            chain,
            jobs,
            next: 1,
            waiting_bytes: 0,
            parallelism,
        };
        let result = replay_in_order(
            storage, chain, staging, &stop, s, &mut ahead, &results, replay,
        );
        if result.is_err() {
            stop.fail();
        }
        // Dropping the queue lets the workers finish.
        drop(ahead);
        result
    })
}

/// Queues downloads of the files after the first, as far ahead as allowed.
struct Prefetch<'c> {
    chain: &'c [RemoteLtx],
    jobs: Sender<usize>,
    next: usize,
    waiting_bytes: u64,
    parallelism: usize,
}

impl Prefetch<'_> {
    /// Queues files while fewer than `parallelism` are ahead of `applied`,
    /// or while they fit in [`PREFETCH_BYTES`].
    fn dispatch(&mut self, applied: usize) -> Result<()> {
        while self.next < self.chain.len() {
            let ahead = self.next - applied;
            let size = self.chain[self.next].size;
            let fits =
                ahead < PREFETCH_FILES && self.waiting_bytes.saturating_add(size) <= PREFETCH_BYTES;
            if ahead >= self.parallelism && !fits {
                break;
            }
            self.jobs
                .send(self.next)
                .map_err(|_| Error::Other("download workers stopped".into()))?;
            self.waiting_bytes = self.waiting_bytes.saturating_add(size);
            self.next += 1;
        }
        Ok(())
    }

    fn replayed(&mut self, f: &RemoteLtx, index: usize) -> Result<()> {
        self.waiting_bytes = self.waiting_bytes.saturating_sub(f.size);
        self.dispatch(index + 1)
    }
}

#[allow(clippy::too_many_arguments)]
fn replay_in_order<'s, 'e>(
    storage: &'e dyn Storage,
    chain: &'e [RemoteLtx],
    staging: &Staging,
    stop: &'e Stop<'e>,
    scope: &'s std::thread::Scope<'s, 'e>,
    ahead: &mut Prefetch<'_>,
    results: &Receiver<(usize, Fetched)>,
    replay: &mut dyn Replay,
) -> Result<()> {
    let Some(first) = chain.first() else {
        return Ok(());
    };
    ahead.dispatch(1)?;
    let streamed = replay_streamed(storage, first, stop, scope, replay);
    replay.done(first, streamed)?;
    crate::storage::mark_progress();
    let mut ready: BTreeMap<usize, Fetched> = BTreeMap::new();
    for (i, f) in chain.iter().enumerate().skip(1) {
        let downloaded = loop {
            if let Some(r) = ready.remove(&i) {
                break r;
            }
            stop.token.check()?;
            match results.recv_timeout(Duration::from_millis(200)) {
                Ok((j, r)) => {
                    ready.insert(j, r);
                }
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                    return Err(Error::Other("download workers stopped".into()))
                }
            }
        };
        let result = downloaded.and_then(|db_checksums| {
            let path = staging.path_of(i);
            let mut body = File::open(&path)
                .local_io(|| format!("opening {}", path.display()))
                .map_err(ObjectError::classify)?;
            let r = replay.apply(f, &mut body, db_checksums);
            drop(body);
            let _ = fs::remove_file(&path);
            r
        });
        replay.done(f, result)?;
        crate::storage::mark_progress();
        ahead.replayed(f, i)?;
    }
    stop.token.check()
}

/// Downloads `f` on a thread of `scope` that hashes the body and hands it to
/// `replay` in chunks. Afterwards the length and SHA-256 are checked like a
/// staged download's; when the replay fails on bytes the download then finds
/// corrupt or truncated, that is the error reported.
fn replay_streamed<'s, 'e>(
    storage: &'e dyn Storage,
    f: &'e RemoteLtx,
    stop: &'e Stop<'e>,
    scope: &'s std::thread::Scope<'s, 'e>,
    replay: &mut dyn Replay,
) -> Result<(), ObjectError> {
    let dl = get(storage, f)?;
    let db_checksums = dl.head.meta.parsed_db_checksums();
    let (chunk_tx, chunk_rx) = bounded::<Vec<u8>>(STREAM_CHUNKS);
    let (spare_tx, spare_rx) = bounded::<Vec<u8>>(STREAM_CHUNKS + 2);
    let fetcher = scope.spawn(move || -> Result<(), ObjectError> {
        read_checked(storage, f, dl, stop, |bytes| {
            let mut chunk = spare_rx.try_recv().unwrap_or_default();
            chunk.clear();
            chunk.extend_from_slice(bytes);
            // A closed channel: the replay stopped reading, and its error
            // is the one to report.
            chunk_tx.send(chunk).map_err(|_| Error::Cancelled)
        })
    });
    let mut reader = ChunkReader {
        chunks: chunk_rx,
        spare: spare_tx,
        current: Vec::new(),
        pos: 0,
    };
    let applied = replay.apply(f, &mut reader, db_checksums);
    // Read to the end, so the whole object is hashed: after the apply, and
    // after damage was found (damaged bytes are better named by the
    // SHA-256), but not when stopping or after a local error (a full disk).
    let drain = match &applied {
        Ok(()) => true,
        Err(e) => !matches!(e.fault, Fault::Local | Fault::Cancelled | Fault::Storage),
    };
    if drain && !stop.stopping() {
        let _ = std::io::copy(&mut reader, &mut std::io::sink());
    }
    drop(reader);
    let fetched = fetcher.join().unwrap_or_else(|_| {
        Err(ObjectError::classify(Error::Other(
            "the download thread panicked".into(),
        )))
    });
    if stop.token.is_cancelled() {
        return Err(ObjectError::new(Fault::Cancelled, Error::Cancelled));
    }
    match (applied, fetched) {
        (Ok(()), Ok(())) => Ok(()),
        (Err(e), Ok(())) => Err(e),
        (Err(e), Err(d)) if d.fault == Fault::Cancelled => Err(e),
        (_, Err(download_err)) => Err(download_err),
    }
}

/// Reads the chunks a streaming download hands over, returning each buffer
/// for reuse.
struct ChunkReader {
    chunks: Receiver<Vec<u8>>,
    spare: Sender<Vec<u8>>,
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
