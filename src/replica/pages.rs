//! The read replica's pages: an [`apply::Pages`](crate::apply::Pages)
//! target that writes through SQLite's own pager (the `sqlite_dbpage`
//! table), inside a transaction the follower opens and commits.
//!
//! Why through SQLite: the replica is a WAL-mode database of its own. Pages
//! written this way land in the replica's WAL as one transaction, so a
//! reader (another process, `?mode=ro` or not) sees the state before a
//! batch or the state after it, never a mixture, and is never blocked; a
//! crash mid-batch leaves an uncommitted WAL tail that SQLite discards.
//!
//! One difference from the primary's bytes is SQLite's own: committing a
//! transaction that wrote page 1 sets its change counter, version-valid-for
//! and SQLite version fields. The checksums walsync checks are the
//! primary's, so page 1's is kept as the primary wrote it (see
//! [`super::position::Applied::page1`]).

use crate::apply::Pages;
use crate::error::{Error, Result};
use crate::ltx;
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::HashMap;

/// Pages of the replica, written through `conn` in one transaction.
///
/// Invariant: SQLite's b-tree layer reads the database size once, when the
/// transaction begins, and `sqlite_dbpage` shows no page beyond it; pages
/// this transaction wrote are therefore answered from `written`, and a
/// shrink is applied once, at [`ReplicaPages::finish`], after every file.
pub struct ReplicaPages<'c> {
    conn: &'c Connection,
    /// Checksums of the pages written in this transaction.
    written: HashMap<u32, u64>,
    /// The size when the transaction began, and the highest page written.
    began_len: u32,
    high: u32,
    /// The size the files applied so far leave.
    len: u32,
    page_size: u32,
    /// The checksum of page 1 as the primary wrote it, before this
    /// transaction (the local page 1 differs in SQLite's own fields).
    page1: u64,
}

impl<'c> ReplicaPages<'c> {
    /// Pages of a database of `len` pages of `page_size` bytes whose page
    /// 1, as the primary wrote it, has the checksum `page1`.
    pub fn new(conn: &'c Connection, len: u32, page_size: u32, page1: u64) -> ReplicaPages<'c> {
        ReplicaPages {
            conn,
            written: HashMap::new(),
            began_len: len,
            high: 0,
            len,
            page_size,
            page1,
        }
    }

    /// The checksum of page 1 as the primary wrote it, now.
    pub fn page1(&self) -> u64 {
        self.written.get(&1).copied().unwrap_or(self.page1)
    }

    /// Cuts the database to its final size, when the files shrank it.
    pub fn finish(&mut self) -> Result<()> {
        if self.len < self.began_len.max(self.high) {
            // sqlite_dbpage: a NULL page N deletes page N and all after it.
            self.conn.execute(
                "INSERT INTO sqlite_dbpage(pgno, data) VALUES (?1, NULL)",
                params![self.len + 1],
            )?;
        }
        Ok(())
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

/// What the local file holds, read page by page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scan {
    /// The database checksum (LTX's: every page's checksum XORed).
    pub checksum: u64,
    pub pages: u32,
    /// The checksum of page 1 alone.
    pub page1: u64,
}

impl Scan {
    /// The database checksum with page 1 counted as `primary_page1` (the
    /// primary's page 1 in place of the local one).
    pub fn as_primary(&self, primary_page1: u64) -> u64 {
        ltx::db_checksum_replace(self.checksum, self.page1, primary_page1)
    }
}

/// Reads every page of the database `conn` has open.
pub fn scan(conn: &Connection) -> Result<Scan> {
    let mut stmt = conn.prepare("SELECT pgno, data FROM sqlite_dbpage ORDER BY pgno")?;
    let mut rows = stmt.query([])?;
    let mut checksum = ltx::EMPTY_DB_CHECKSUM;
    let mut pages = 0u32;
    let mut page1 = 0u64;
    while let Some(row) = rows.next()? {
        let pgno: u32 = row.get(0)?;
        let data = row.get_ref(1)?.as_blob().map_err(rusqlite::Error::from)?;
        pages = pages.max(pgno);
        let lock = u32::try_from(data.len()).map_or(0, ltx::lock_pgno);
        if pgno != lock {
            let sum = ltx::page_checksum(pgno, data);
            checksum = ltx::db_checksum_add(checksum, sum);
            if pgno == 1 {
                page1 = sum;
            }
        }
    }
    Ok(Scan {
        checksum,
        pages,
        page1,
    })
}

impl Pages for ReplicaPages<'_> {
    fn checksum_of(&mut self, pgno: u32) -> Result<u64> {
        if let Some(sum) = self.written.get(&pgno) {
            return Ok(*sum);
        }
        if pgno == 1 {
            return Ok(self.page1);
        }
        // Prepared once per connection: this and `put` run once a page.
        let data: Option<Vec<u8>> = self
            .conn
            .prepare_cached("SELECT data FROM sqlite_dbpage WHERE pgno = ?1")?
            .query_row(params![pgno], |row| row.get(0))
            .optional()?;
        let data = data.ok_or_else(|| {
            Error::Other(format!("the replica has no page {pgno} it should have"))
        })?;
        Ok(ltx::page_checksum(pgno, &data))
    }

    fn put(&mut self, pgno: u32, page: &[u8], checksum: u64) -> Result<()> {
        self.conn
            .prepare_cached("INSERT INTO sqlite_dbpage(pgno, data) VALUES (?1, ?2)")?
            .execute(params![pgno, page])?;
        self.written.insert(pgno, checksum);
        self.high = self.high.max(pgno);
        Ok(())
    }

    fn put_hole(&mut self, pgno: u32, checksum: u64) -> Result<()> {
        let zeros = vec![0u8; self.page_size as usize];
        self.put(pgno, &zeros, checksum)
    }

    fn flush(&mut self) -> Result<()> {
        Ok(())
    }

    fn set_len(&mut self, pages: u32, page_size: u32) -> Result<()> {
        self.len = pages;
        self.page_size = page_size;
        Ok(())
    }
}
