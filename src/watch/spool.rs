//! Where a built batch waits for its upload: a spool file in the
//! database's state folder, or memory when that file system cannot take
//! it (full, over quota, read-only).
//!
//! A batch is written to disk so that a large one costs no memory. But on a
//! full disk, a spool that cannot be written would stop replication exactly
//! when the application can still commit into space freed elsewhere: walsync
//! would keep its read transaction, the WAL would grow into that space, and
//! nothing would ship. So after a spool write fails, batches are built in
//! memory for [`MEMORY_SPELL`], within [`MEMORY_BUDGET`] over all databases
//! (a batch that does not fit fails as before, and is tried again).
//!
//! Invariant: a batch's bytes stay where they were written, unchanged, until
//! it is stored or dropped; a spool file is removed when its batch is.

use crate::error::{Error, IoContext, Result};
use std::fs::File;
use std::io::{BufWriter, Cursor, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The most bytes of batches held in memory at once, over all databases.
pub const MEMORY_BUDGET: usize = 256 << 20;

/// How long batches are built in memory after a spool write failed, before
/// the disk is tried again.
pub const MEMORY_SPELL: Duration = Duration::from_secs(60);

/// Bytes of batches in memory now.
static HELD: AtomicUsize = AtomicUsize::new(0);

/// A built batch's bytes.
#[derive(Debug, Clone)]
pub enum Body {
    /// In a spool file.
    File(PathBuf),
    /// In memory, shared with the uploader's request.
    Memory(Arc<Held>),
}

/// Bytes counted against [`MEMORY_BUDGET`] until dropped.
#[derive(Debug)]
pub struct Held(Vec<u8>);

impl Drop for Held {
    fn drop(&mut self) {
        HELD.fetch_sub(self.0.len(), Ordering::Relaxed);
    }
}

impl Body {
    /// Opens the bytes for an upload.
    pub fn open(&self) -> Result<Box<dyn crate::storage::ReadSeek + Send + '_>> {
        Ok(match self {
            Body::File(path) => {
                Box::new(File::open(path).local_io(|| format!("opening spool {}", path.display()))?)
            }
            Body::Memory(held) => Box::new(Cursor::new(&held.0[..])),
        })
    }

    /// Lets go of the bytes: the spool file is removed (memory is freed
    /// when the last holder drops it).
    pub fn discard(&self) {
        if let Body::File(path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Whether the state folder's file system takes spool files now.
#[derive(Debug, Default)]
pub struct SpoolPlace {
    /// Until when batches are built in memory.
    memory_until: Option<Instant>,
    /// Set by a writer whose spool file could not be written.
    write_failed: Arc<AtomicBool>,
}

impl SpoolPlace {
    /// A writer for the batch whose spool file would be `path`.
    pub fn writer(&mut self, path: PathBuf) -> Result<SpoolWriter> {
        self.write_failed.store(false, Ordering::Relaxed);
        if self.in_memory() {
            return Ok(SpoolWriter::new(Out::Memory(Vec::new())));
        }
        self.memory_until = None;
        match File::create(&path) {
            Ok(f) => {
                let failed = Arc::clone(&self.write_failed);
                Ok(SpoolWriter::new(Out::File(BufWriter::new(f), path, failed)))
            }
            Err(e) => {
                self.fell_back();
                Err(Error::Local(format!(
                    "creating spool file {}: {e}; walsync writes each batch there before it ships it: free space on that file system",
                    path.display()
                )))
            }
        }
    }

    /// Whether the spool file of the last writer could not be written (an
    /// error while building a batch may come from elsewhere).
    pub fn write_failed(&self) -> bool {
        self.write_failed.load(Ordering::Relaxed)
    }

    /// A spool write failed: the next batches are built in memory.
    pub fn fell_back(&mut self) {
        self.memory_until = Some(Instant::now() + MEMORY_SPELL);
    }

    /// Whether batches are built in memory now.
    pub fn in_memory(&self) -> bool {
        self.memory_until.is_some_and(|t| Instant::now() < t)
    }
}

/// Where a batch is being written. Dropped unfinished, it leaves nothing
/// behind: its spool file is removed, its memory uncounted.
pub struct SpoolWriter {
    out: Out,
    finished: bool,
}

enum Out {
    /// The file, its path, and where to say that writing it failed.
    File(BufWriter<File>, PathBuf, Arc<AtomicBool>),
    /// Every byte is counted in [`HELD`] as it is written.
    Memory(Vec<u8>),
}

impl Write for SpoolWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match &mut self.out {
            Out::File(f, _, failed) => f.write(buf).inspect_err(|_| {
                failed.store(true, Ordering::Relaxed);
            }),
            Out::Memory(bytes) => {
                let held = HELD.fetch_add(buf.len(), Ordering::Relaxed) + buf.len();
                if held > MEMORY_BUDGET {
                    HELD.fetch_sub(buf.len(), Ordering::Relaxed);
                    return Err(std::io::Error::other(format!(
                        "the batches held in memory while the spool's file system is full would pass {} MiB",
                        MEMORY_BUDGET >> 20
                    )));
                }
                bytes.extend_from_slice(buf);
                Ok(buf.len())
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.out {
            Out::File(f, _, failed) => f.flush().inspect_err(|_| {
                failed.store(true, Ordering::Relaxed);
            }),
            Out::Memory(_) => Ok(()),
        }
    }
}

impl SpoolWriter {
    fn new(out: Out) -> SpoolWriter {
        SpoolWriter {
            out,
            finished: false,
        }
    }

    /// The batch's bytes, written.
    pub fn finish(mut self) -> Result<Body> {
        if let Out::File(f, path, failed) = &mut self.out {
            if let Err(e) = f.flush() {
                failed.store(true, Ordering::Relaxed);
                return Err(Error::Local(format!(
                    "writing spool file {}: {e}",
                    path.display()
                )));
            }
        }
        self.finished = true;
        Ok(
            match std::mem::replace(&mut self.out, Out::Memory(Vec::new())) {
                Out::File(_, path, _) => Body::File(path),
                Out::Memory(bytes) => Body::Memory(Arc::new(Held(bytes))),
            },
        )
    }

    /// Whether it writes to a spool file (not memory).
    pub fn on_disk(&self) -> bool {
        matches!(self.out, Out::File(..))
    }

    /// Where it writes, for messages.
    pub fn place(&self) -> String {
        match &self.out {
            Out::File(_, path, _) => format!("spool file {}", path.display()),
            Out::Memory(_) => "memory".to_string(),
        }
    }
}

impl Drop for SpoolWriter {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        match &self.out {
            Out::File(_, path, _) => {
                let _ = std::fs::remove_file(path);
            }
            Out::Memory(bytes) => {
                HELD.fetch_sub(bytes.len(), Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn a_spool_that_cannot_be_created_sends_batches_to_memory_for_a_spell() {
        let dir = tempfile::tempdir().unwrap();
        let mut place = SpoolPlace::default();
        // A folder where the spool file would go: creating it fails.
        let blocked = dir.path().join("spool-0-1.ltx");
        std::fs::create_dir(&blocked).unwrap();
        assert!(place.writer(blocked).is_err());
        assert!(place.in_memory());
        let mut w = place.writer(dir.path().join("spool-0-2.ltx")).unwrap();
        assert!(!w.on_disk());
        w.write_all(b"frames").unwrap();
        let body = w.finish().unwrap();
        assert!(!dir.path().join("spool-0-2.ltx").exists());
        let mut read = Vec::new();
        body.open().unwrap().read_to_end(&mut read).unwrap();
        assert_eq!(read, b"frames");
        // After the spell, the disk again.
        place.memory_until = Some(Instant::now());
        let w = place.writer(dir.path().join("spool-0-3.ltx")).unwrap();
        assert!(w.on_disk());
    }

    #[test]
    fn an_unfinished_batch_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool-0-1.ltx");
        let mut place = SpoolPlace::default();
        let mut w = place.writer(path.clone()).unwrap();
        w.write_all(b"half").unwrap();
        drop(w);
        assert!(!path.exists());
        let body = place.writer(path.clone()).unwrap().finish().unwrap();
        assert!(path.exists());
        body.discard();
        assert!(!path.exists());
    }

    #[test]
    fn memory_is_bounded_over_all_batches() {
        let mut place = SpoolPlace::default();
        place.fell_back();
        let mut w = place.writer(PathBuf::from("/nowhere")).unwrap();
        let chunk = vec![0u8; 1 << 20];
        let mut written = 0;
        let refused = loop {
            match w.write_all(&chunk) {
                Ok(()) => written += chunk.len(),
                Err(e) => break e,
            }
            assert!(written <= MEMORY_BUDGET, "the budget holds");
        };
        assert!(refused.to_string().contains("MiB"), "{refused}");
        // Dropped, its bytes no longer count: another batch fits.
        drop(w);
        let mut other = place.writer(PathBuf::from("/nowhere")).unwrap();
        other.write_all(&chunk).unwrap();
    }
}
