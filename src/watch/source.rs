//! The SQLite side of a replicated database: walsync's own connection, and
//! the files it holds.
//!
//! The connection runs with `wal_autocheckpoint=0` and holds a long read
//! transaction, so no other connection can restart the WAL under frames that
//! are not shipped yet. It is released only around walsync's own checkpoints,
//! which this module runs: PASSIVE behind a writer-lock barrier held on a
//! second, short-lived connection, and TRUNCATE with a `data_version` check.
//!
//! Identity: walsync records the database file and the WAL (device and
//! inode) that its connection opened, and [`Source::identity`] compares them
//! with what the paths name now, at every poll. Pages are read through the
//! database file held since the connection opened, and through the WAL
//! opened for one poll and checked to be the recorded one. A database
//! replaced under walsync (renamed over, deleted and recreated, its `-wal`
//! removed) is thereby seen at the next poll, and its pages are never read
//! through another file's layout.
//!
//! Descriptors: SQLite's three (database, WAL, WAL-index) and one of
//! walsync's, the database file. POSIX record locks belong to the process,
//! and closing any descriptor of a file drops all of them, so that one is
//! opened once, never duplicated, and closed only after the connection. It
//! also carries walsync's exclusive claim on the database (an open file
//! description lock far past SQLite's lock bytes): one walsync per
//! database. The WAL holds no POSIX locks, so opening and closing it per
//! poll is safe.

use crate::error::{Error, IoContext, Result};
use rusqlite::{Connection, OpenFlags};
use std::fs::File;
use std::io::Read;
use std::mem::ManuallyDrop;
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A file's identity: device and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    fn of_file(f: &File, what: &Path) -> Result<FileId> {
        let m = f
            .metadata()
            .db_io(|| format!("reading {}", what.display()))?;
        Ok(FileId {
            dev: m.dev(),
            ino: m.ino(),
        })
    }

    /// The identity of what `path` names now; `None` when nothing does.
    fn of_path(path: &Path) -> Result<Option<FileId>> {
        match std::fs::metadata(path) {
            Ok(m) => Ok(Some(FileId {
                dev: m.dev(),
                ino: m.ino(),
            })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::Database(format!(
                "cannot read {}: {e}",
                path.display()
            ))),
        }
    }
}

/// How the WAL looked at a poll: when its size and modification time are
/// unchanged, nothing was written to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalStamp {
    size: u64,
    mtime_ns: i128,
}

/// Whether the files walsync holds are still the database's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identity {
    /// The database file and its WAL are the ones walsync holds.
    Same,
    /// `which` ("database file" or "WAL") was replaced: the path names
    /// another file now.
    Replaced(&'static str),
    /// `which` no longer exists.
    Deleted(&'static str),
}

/// The files of one database, as the connection opened them.
struct HeldFiles {
    /// Held open for the connection's life (see the module doc).
    db: File,
    db_id: FileId,
    wal_id: FileId,
    shm_id: Option<FileId>,
}

/// walsync's connection to one database.
pub struct Source {
    path: PathBuf,
    /// Closed explicitly in `Drop`, before the held files (see the module doc).
    conn: ManuallyDrop<Connection>,
    reading: bool,
    held: HeldFiles,
}

/// What closing a source does with the WAL and WAL-index at the paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnClose {
    /// They are the database's own: SQLite's last connection checkpoints
    /// and removes them, as always.
    Normal,
    /// They are someone else's now (or someone else still uses them): close
    /// without SQLite's checkpoint-on-close and leave them be.
    KeepThem,
    /// The database file was replaced and nobody else uses its old WAL: it
    /// is removed, as the application's last close would have removed it.
    RemoveOldWal,
}

impl Drop for Source {
    /// See [`Source::close`]; dropping a source closes it the same way.
    fn drop(&mut self) {
        let _ = self.end_read();
        // The WAL-index is opened for the probe and closed only once the
        // connection is (closing it earlier would drop SQLite's locks on it).
        let shm = File::open(shm_path(&self.path)).ok();
        let on_close = self.on_close(shm.as_ref());
        if on_close != OnClose::Normal {
            let _ = self.conn.set_db_config(
                rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
                true,
            );
        }
        // SAFETY: the connection is dropped once, here, and never used after.
        unsafe { ManuallyDrop::drop(&mut self.conn) };
        if on_close == OnClose::RemoveOldWal && self.old_wal_still_ours() {
            let _ = std::fs::remove_file(wal_path(&self.path));
            let _ = std::fs::remove_file(shm_path(&self.path));
        }
        drop(shm);
    }
}

/// A writer lock held on a second connection: while it lives, no other
/// connection can commit.
pub struct Barrier {
    conn: Connection,
}

impl Drop for Barrier {
    fn drop(&mut self) {
        let _ = self.conn.execute_batch("ROLLBACK");
    }
}

impl Source {
    /// Opens a database for replication after checking that it exists, is a
    /// SQLite database and is in WAL mode.
    pub fn open(path: &Path) -> Result<Source> {
        check_is_sqlite(path)?;
        let conn = open_connection(path)?;
        let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::Database(format!(
                "{} is in journal_mode={mode}, not WAL; walsync replicates WAL databases only: run `sqlite3 {} 'PRAGMA journal_mode=WAL'` (or set it in your app) and start walsync again",
                path.display(),
                path.display()
            )));
        }
        conn.execute_batch("PRAGMA wal_autocheckpoint=0")?;
        // Read and write: an exclusive lock needs a descriptor open for
        // writing (walsync never writes through it).
        let db = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .db_io(|| format!("opening {}", path.display()))?;
        claim(&db, path)?;
        let db_id = FileId::of_file(&db, path)?;
        // A first read makes SQLite open (or create) the WAL and the
        // WAL-index; the ones recorded are the ones it opened.
        let _: i64 = conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))?;
        let changed = || {
            Error::Database(format!(
                "{} changed while walsync opened it; it will try again",
                path.display()
            ))
        };
        let wal_id = FileId::of_path(&wal_path(path))?.ok_or_else(changed)?;
        let shm_id = FileId::of_path(&shm_path(path))?;
        let source = Source {
            path: path.to_path_buf(),
            conn: ManuallyDrop::new(conn),
            reading: false,
            held: HeldFiles {
                db,
                db_id,
                wal_id,
                shm_id,
            },
        };
        // The database file walsync reads must be the one SQLite opened.
        if source.identity()? != Identity::Same {
            return Err(changed());
        }
        Ok(source)
    }

    /// The database file as opened with the connection (pages are read
    /// through it, never through the path).
    pub fn db_file(&self) -> &File {
        &self.held.db
    }

    /// The WAL SQLite has open, opened for one use: `Err` when the path
    /// names another file now (the next poll sees the replacement).
    pub fn open_wal(&self) -> Result<File> {
        let path = wal_path(&self.path);
        let wal = File::open(&path).db_io(|| format!("opening {}", path.display()))?;
        if FileId::of_file(&wal, &path)? != self.held.wal_id {
            return Err(Error::Database(format!(
                "{} was replaced; walsync lets go of the database at its next poll",
                path.display()
            )));
        }
        Ok(wal)
    }

    /// Compares the held database file and WAL with what their paths name.
    pub fn identity(&self) -> Result<Identity> {
        Ok(self.check()?.0)
    }

    /// [`Source::identity`], and when it is the same, how the WAL looks
    /// (two `stat` calls in all: the cheapest way to see that nothing
    /// changed since the last poll).
    pub fn check(&self) -> Result<(Identity, Option<WalStamp>)> {
        match FileId::of_path(&self.path)? {
            None => return Ok((Identity::Deleted("database file"), None)),
            Some(now) if now != self.held.db_id => {
                return Ok((Identity::Replaced("database file"), None))
            }
            Some(_) => {}
        }
        let wal = match std::fs::metadata(wal_path(&self.path)) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok((Identity::Deleted("WAL"), None))
            }
            Err(e) => {
                return Err(Error::Database(format!(
                    "cannot read the WAL of {}: {e}",
                    self.path.display()
                )))
            }
        };
        let id = FileId {
            dev: wal.dev(),
            ino: wal.ino(),
        };
        if id != self.held.wal_id {
            return Ok((Identity::Replaced("WAL"), None));
        }
        let stamp = WalStamp {
            size: wal.len(),
            mtime_ns: wal.mtime() as i128 * 1_000_000_000 + i128::from(wal.mtime_nsec()),
        };
        Ok((Identity::Same, Some(stamp)))
    }

    /// Closes the connection, then the held files.
    ///
    /// SQLite's last connection to a database checkpoints the WAL into the
    /// database file and deletes `-wal` and `-shm` by path. That is right
    /// only while those paths still name the files this connection has
    /// open: after a replacement they may be the application's new ones,
    /// and deleting them would lose its commits. So the connection closes
    /// without that checkpoint (`SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE`) unless
    /// `-wal` and `-shm` are still its own.
    ///
    /// When the database file itself was replaced (renamed over) but its old
    /// `-wal` and `-shm` stayed, SQLite skips the checkpoint on close anyway
    /// (the file has moved), and the old WAL would be read over the new file
    /// by the next connection that opens it. Unless another process is
    /// attached to that old WAL-index, walsync then removes the old `-wal`
    /// and `-shm`, as the application's own last close would have done had
    /// walsync not been connected. Their frames belong to the replaced file,
    /// which nothing reads any more.
    pub fn close(mut self) -> Result<()> {
        let ended = self.end_read();
        drop(self);
        ended
    }

    /// Decides what the close does (see [`OnClose`]); `shm` is the
    /// WAL-index, opened for the probe.
    fn on_close(&self, shm: Option<&File>) -> OnClose {
        if !self.old_wal_still_ours() {
            OnClose::KeepThem
        } else if is_same(Some(self.held.db_id), &self.path) {
            OnClose::Normal
        } else if shm.is_none_or(used_by_another_process) {
            OnClose::KeepThem
        } else {
            OnClose::RemoveOldWal
        }
    }

    /// Whether `-wal` and `-shm` still name the files this connection has.
    fn old_wal_still_ours(&self) -> bool {
        is_same(Some(self.held.wal_id), &wal_path(&self.path))
            && is_same(self.held.shm_id, &shm_path(&self.path))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn wal_path(&self) -> PathBuf {
        wal_path(&self.path)
    }

    pub fn page_size(&self) -> Result<u32> {
        Ok(self.conn.query_row("PRAGMA page_size", [], |r| r.get(0))?)
    }

    /// Whether the long read transaction is held.
    pub fn is_reading(&self) -> bool {
        self.reading
    }

    /// Starts the long read transaction (a no-op when it is held).
    pub fn begin_read(&mut self) -> Result<()> {
        if !self.reading {
            self.conn.execute_batch("BEGIN")?;
            // A deferred transaction takes its read lock at the first read.
            let r: rusqlite::Result<i64> =
                self.conn
                    .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0));
            if let Err(e) = r {
                let _ = self.conn.execute_batch("ROLLBACK");
                return Err(e.into());
            }
            self.reading = true;
            // Keep nothing cached: the connection exists to hold the lock.
            // The parsed schema goes too (SQLite reads it again if a
            // statement ever needs it): an application's schema can take
            // more memory than the rest of the connection.
            self.conn.execute_batch("PRAGMA writable_schema = RESET")?;
            self.conn.release_memory()?;
            self.unmap_wal_index();
        }
        Ok(())
    }

    /// Lets go of the pages of the WAL-index (`-shm`) mapping this
    /// connection touched. SQLite maps the WAL-index in 32 KiB regions and the
    /// kernel's fault-around makes a whole region resident on the first
    /// access, so a thousand idle connections would hold 32 MB of mapped file
    /// pages they never read again. `MADV_DONTNEED` on this shared file
    /// mapping only drops our page-table entries (the data stays in the page
    /// cache, shared with the application, and SQLite's next access faults
    /// it back in); `MADV_RANDOM` keeps later faults to one page. Best effort:
    /// any failure leaves the mapping as SQLite made it.
    fn unmap_wal_index(&self) {
        use rusqlite::ffi;
        use std::ffi::c_void;
        const REGION: usize = 32 * 1024;
        // SAFETY: the handle is this connection's, used on this thread only;
        // SQLITE_FCNTL_FILE_POINTER yields the main database's sqlite3_file
        // (owned by SQLite, valid while the connection is open). xShmMap with
        // bExtend = 0 returns an existing region's address (or null) without
        // growing anything, and madvise only changes paging of that range.
        unsafe {
            let db = self.conn.handle();
            let mut file: *mut ffi::sqlite3_file = std::ptr::null_mut();
            let rc = ffi::sqlite3_file_control(
                db,
                c"main".as_ptr(),
                ffi::SQLITE_FCNTL_FILE_POINTER,
                (&mut file as *mut *mut ffi::sqlite3_file).cast::<c_void>(),
            );
            if rc != ffi::SQLITE_OK || file.is_null() || (*file).pMethods.is_null() {
                return;
            }
            let methods = &*(*file).pMethods;
            let Some(shm_map) = methods.xShmMap.filter(|_| methods.iVersion >= 2) else {
                return;
            };
            for region in 0..64 {
                let mut addr: *mut c_void = std::ptr::null_mut();
                if shm_map(file, region, REGION as i32, 0, &mut addr) != ffi::SQLITE_OK
                    || addr.is_null()
                {
                    break;
                }
                libc::madvise(addr, REGION, libc::MADV_RANDOM);
                libc::madvise(addr, REGION, libc::MADV_DONTNEED);
            }
        }
    }

    /// Ends the long read transaction.
    pub fn end_read(&mut self) -> Result<()> {
        if self.reading {
            self.conn.execute_batch("ROLLBACK")?;
            self.reading = false;
        }
        Ok(())
    }

    /// Takes the writer lock on a second connection, waiting at most `wait`.
    /// `None` when an application writer holds it longer.
    pub fn barrier(&self, wait: Duration) -> Result<Option<Barrier>> {
        let conn = open_connection(&self.path)?;
        conn.busy_timeout(wait)?;
        match conn.execute_batch("BEGIN IMMEDIATE") {
            Ok(()) => Ok(Some(Barrier { conn })),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy =>
            {
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Runs `PRAGMA wal_checkpoint(mode)` outside the read transaction.
    /// Returns (busy, WAL frames, frames checkpointed).
    pub fn checkpoint(&mut self, mode: &str) -> Result<(bool, i64, i64)> {
        self.end_read()?;
        let r = self
            .conn
            .query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
                Ok((r.get::<_, i64>(0)? != 0, r.get(1)?, r.get(2)?))
            });
        Ok(r?)
    }

    /// `PRAGMA data_version`: changes when another connection commits.
    pub fn data_version(&self) -> Result<i64> {
        Ok(self
            .conn
            .query_row("PRAGMA data_version", [], |r| r.get(0))?)
    }

    pub fn set_busy_timeout(&self, t: Duration) -> Result<()> {
        Ok(self.conn.busy_timeout(t)?)
    }
}

/// Whether another process holds a lock on the WAL-index's lock bytes
/// (every SQLite connection holds a shared lock on its "dead man
/// switch" byte while open). Locks of this process are not reported.
fn used_by_another_process(shm: &File) -> bool {
    // SQLite's unix VFS locks bytes 120..=128 of the -shm file
    // (UNIX_SHM_BASE .. UNIX_SHM_DMS).
    let mut probe = libc::flock {
        l_type: libc::F_WRLCK as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 120,
        l_len: 9,
        l_pid: 0,
    };
    // SAFETY: F_GETLK on a descriptor we own, writing only to `probe`.
    let rc = unsafe { libc::fcntl(shm.as_raw_fd(), libc::F_GETLK, &mut probe) };
    // When the probe fails, assume someone is there: keep their files.
    rc != 0 || probe.l_type != libc::F_UNLCK as libc::c_short
}

/// Claims the database for this walsync: an exclusive open file
/// description lock on one byte far past SQLite's lock bytes (which sit at
/// 1 GiB), on the descriptor held for the connection's life. Another
/// walsync process, or a second claim in this one, is refused; SQLite never
/// touches that byte.
fn claim(db: &File, path: &Path) -> Result<()> {
    let mut lock = libc::flock {
        l_type: libc::F_WRLCK as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 1 << 62,
        l_len: 1,
        l_pid: 0,
    };
    // SAFETY: F_OFD_SETLK on a descriptor we own, reading only `lock`.
    let rc = unsafe { libc::fcntl(db.as_raw_fd(), libc::F_OFD_SETLK, &mut lock) };
    if rc == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EACCES) => Err(Error::Database(format!(
            "another walsync is replicating {}; stop it first, or ask it (`walsync snapshot`, `walsync status` reach a running watch)",
            path.display()
        ))),
        _ => Err(Error::Database(format!(
            "cannot lock {} for walsync: {err}",
            path.display()
        ))),
    }
}

/// Whether `path` names the file `held` (never, when `held` is `None`).
fn is_same(held: Option<FileId>, path: &Path) -> bool {
    held.is_some() && matches!(FileId::of_path(path), Ok(now) if now == held)
}

/// `<db>-wal`.
pub fn wal_path(db: &Path) -> PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push("-wal");
    PathBuf::from(s)
}

/// `<db>-shm`.
pub fn shm_path(db: &Path) -> PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push("-shm");
    PathBuf::from(s)
}

fn open_connection(path: &Path) -> Result<Connection> {
    configure_sqlite_once();
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| Error::Database(format!("cannot open {}: {e}", path.display())))?;
    keep_memory_small(&conn)?;
    // walsync prepares no statement twice: no cache (rusqlite's holds a
    // table of 16 entries otherwise).
    conn.set_prepared_statement_cache_capacity(0);
    conn.busy_timeout(Duration::from_secs(5))?;
    Ok(conn)
}

/// walsync keeps one connection per replicated database, so per-connection
/// memory decides RSS at a thousand databases. Its connections only hold a
/// read lock and read the schema, so they need neither lookaside (about
/// 120 KiB a connection with SQLite's defaults, all touched at open) nor
/// the page cache's up-front bulk allocation (20 pages), nor more than a
/// couple of cached pages. Set at run time, so the figures hold however
/// SQLite was built:
/// - once per process, before SQLite initializes (at walsync's first
///   connection), SQLite's defaults for new connections: no lookaside, no
///   bulk allocation. When something else initialized this SQLite first,
///   SQLite refuses (it must be configured before it starts) and the
///   per-connection settings below still apply.
/// - per connection: lookaside off and a 2-page cache.
fn keep_memory_small(conn: &Connection) -> Result<()> {
    use rusqlite::ffi;
    // SAFETY: the handle is this connection's, used on this thread; with a
    // null buffer and zero sizes SQLite frees its lookaside buffer. It
    // refuses (SQLITE_BUSY) only while lookaside memory is in use, which a
    // connection that has run no statement does not have.
    let rc = unsafe {
        ffi::sqlite3_db_config(
            conn.handle(),
            ffi::SQLITE_DBCONFIG_LOOKASIDE,
            std::ptr::null_mut::<std::ffi::c_void>(),
            0 as std::ffi::c_int,
            0 as std::ffi::c_int,
        )
    };
    if rc != ffi::SQLITE_OK {
        return Err(Error::Database(format!(
            "SQLite refused to turn lookaside off (code {rc})"
        )));
    }
    conn.execute_batch("PRAGMA cache_size = 2")?;
    Ok(())
}

/// SQLite's process-wide defaults for new connections (see
/// [`keep_memory_small`]); only possible before SQLite initializes.
fn configure_sqlite_once() {
    use rusqlite::ffi;
    use std::ffi::{c_int, c_void};
    static CONFIGURE: std::sync::Once = std::sync::Once::new();
    CONFIGURE.call_once(|| {
        // SAFETY: sqlite3_config before sqlite3_initialize, with the
        // argument types these options take; it returns SQLITE_MISUSE
        // (ignored) once SQLite is running.
        unsafe {
            ffi::sqlite3_config(ffi::SQLITE_CONFIG_LOOKASIDE, 0 as c_int, 0 as c_int);
            ffi::sqlite3_config(
                ffi::SQLITE_CONFIG_PAGECACHE,
                std::ptr::null_mut::<c_void>(),
                0 as c_int,
                0 as c_int,
            );
        }
    });
}

/// Refuses paths that do not exist or are not SQLite databases, with a hint.
pub fn check_is_sqlite(path: &Path) -> Result<()> {
    let mut header = [0u8; 16];
    let read = std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut header));
    match read {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::Database(format!(
            "{} does not exist; check the path (walsync does not create databases)",
            path.display()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(Error::Database(format!(
            "{} is empty or too short to be a SQLite database; create it with your app first",
            path.display()
        ))),
        Err(e) => Err(Error::Database(format!(
            "cannot read {}: {e}",
            path.display()
        ))),
        Ok(()) if &header != b"SQLite format 3\0" => Err(Error::Database(format!(
            "{} is not a SQLite database (bad file header)",
            path.display()
        ))),
        Ok(()) => Ok(()),
    }
}
