//! The SQLite side of a replicated database: walsync's own connection.
//!
//! The connection runs with `wal_autocheckpoint=0` and holds a long read
//! transaction, so no other connection can restart the WAL under frames that
//! are not shipped yet. It is released only around walsync's own checkpoints,
//! which this module runs: PASSIVE behind a writer-lock barrier held on a
//! second, short-lived connection, and TRUNCATE with a `data_version` check.

use crate::error::{Error, Result};
use rusqlite::{Connection, OpenFlags};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// walsync's connection to one database.
pub struct Source {
    path: PathBuf,
    conn: Connection,
    reading: bool,
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
        conn.execute_batch("PRAGMA wal_autocheckpoint=0; PRAGMA cache_size=-64;")?;
        Ok(Source {
            path: path.to_path_buf(),
            conn,
            reading: false,
        })
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

/// `<db>-wal`.
pub fn wal_path(db: &Path) -> PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push("-wal");
    PathBuf::from(s)
}

fn open_connection(path: &Path) -> Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| Error::Database(format!("cannot open {}: {e}", path.display())))?;
    conn.busy_timeout(Duration::from_secs(5))?;
    Ok(conn)
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
