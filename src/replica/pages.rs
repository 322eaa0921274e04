//! The read replica's pages: an [`apply::Pages`](crate::apply::Pages)
//! target that writes through SQLite's own pager (the `sqlite_dbpage`
//! table), inside a transaction the follower opens and commits.
//!
//! Why through SQLite: the replica is a WAL-mode database of its own. Pages
//! written this way land in the replica's WAL as one transaction, so a
//! reader (another process, `?mode=ro` or not) sees the state before a
//! batch or the state after it, never a mixture, and is never blocked; a
//! crash mid-batch leaves an uncommitted WAL tail that SQLite discards.

use crate::apply::Pages;
use crate::error::{Error, Result};
use crate::ltx;
use rusqlite::{params, Connection, OptionalExtension};

/// Pages of the replica, written through `conn` (a transaction is open).
pub struct ReplicaPages<'c> {
    conn: &'c Connection,
    zeros: Vec<u8>,
}

impl<'c> ReplicaPages<'c> {
    pub fn new(conn: &'c Connection) -> ReplicaPages<'c> {
        ReplicaPages {
            conn,
            zeros: Vec::new(),
        }
    }
}

/// Fails with a clear message when this SQLite has no `sqlite_dbpage`
/// (walsync built without `SQLITE_ENABLE_DBPAGE_VTAB`, see
/// `.cargo/config.toml`).
pub fn check_available(conn: &Connection) -> Result<()> {
    conn.query_row("SELECT count(*) FROM sqlite_dbpage WHERE pgno = 1", [], |_| Ok(()))
        .map_err(|e| {
            Error::Other(format!(
                "this walsync's SQLite cannot write pages ({e}): it was built without SQLITE_ENABLE_DBPAGE_VTAB; build walsync from its repository, whose .cargo/config.toml sets it"
            ))
        })
}

/// The database checksum (LTX's: every page's checksum XORed) and the size
/// in pages of the database `conn` has open, read page by page.
pub fn db_checksum(conn: &Connection) -> Result<(u64, u32)> {
    let mut stmt = conn.prepare("SELECT pgno, data FROM sqlite_dbpage ORDER BY pgno")?;
    let mut rows = stmt.query([])?;
    let mut checksum = ltx::EMPTY_DB_CHECKSUM;
    let mut pages = 0u32;
    while let Some(row) = rows.next()? {
        let pgno: u32 = row.get(0)?;
        let data = row.get_ref(1)?.as_blob().map_err(rusqlite::Error::from)?;
        pages = pages.max(pgno);
        let lock = u32::try_from(data.len()).map_or(0, ltx::lock_pgno);
        if pgno != lock {
            checksum = ltx::db_checksum_add(checksum, ltx::page_checksum(pgno, data));
        }
    }
    Ok((checksum, pages))
}

impl Pages for ReplicaPages<'_> {
    fn checksum_of(&mut self, pgno: u32) -> Result<u64> {
        let data: Option<Vec<u8>> = self
            .conn
            .query_row(
                "SELECT data FROM sqlite_dbpage WHERE pgno = ?1",
                params![pgno],
                |row| row.get(0),
            )
            .optional()?;
        let data = data.ok_or_else(|| {
            Error::Other(format!("the replica has no page {pgno} it should have"))
        })?;
        Ok(ltx::page_checksum(pgno, &data))
    }

    fn put(&mut self, pgno: u32, page: &[u8], _checksum: u64) -> Result<()> {
        self.conn.execute(
            "INSERT INTO sqlite_dbpage(pgno, data) VALUES (?1, ?2)",
            params![pgno, page],
        )?;
        Ok(())
    }

    fn put_hole(&mut self, pgno: u32, _checksum: u64) -> Result<()> {
        let size: u32 = self
            .conn
            .query_row("PRAGMA page_size", [], |row| row.get(0))?;
        self.zeros.resize(size as usize, 0);
        let zeros = std::mem::take(&mut self.zeros);
        let put = self.put(pgno, &zeros, 0);
        self.zeros = zeros;
        put
    }

    fn flush(&mut self) -> Result<()> {
        Ok(())
    }

    fn set_len(&mut self, pages: u32, _page_size: u32) -> Result<()> {
        let now: u32 = self
            .conn
            .query_row("PRAGMA page_count", [], |row| row.get(0))?;
        if pages < now {
            // sqlite_dbpage: a NULL page N deletes page N and all after it.
            self.conn.execute(
                "INSERT INTO sqlite_dbpage(pgno, data) VALUES (?1, NULL)",
                params![pages + 1],
            )?;
        }
        Ok(())
    }
}
