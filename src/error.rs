//! The one error type of walsync and its mapping to the documented exit codes.
//!
//! Every variant is a class a shell script can act on (see README "Exit codes").
//! Messages name the database or object involved and the next step; they never
//! carry credentials, signatures or presigned URLs.

use std::fmt;

/// Exit code for success.
pub const EXIT_OK: i32 = 0;

/// A walsync failure, classified by what the operator must fix.
#[derive(Debug)]
pub enum Error {
    /// Anything unexpected (a bug, an OS failure we cannot classify). Exit 1.
    Other(String),
    /// Bad flag, bad config file, bad URL. Exit 2.
    Usage(String),
    /// Missing file, not in WAL mode, SQLite error. Exit 3.
    Database(String),
    /// Network, authentication or bucket access failure after retries. Exit 4.
    Storage(String),
    /// Checksum mismatch, malformed LTX, gap in TXIDs. Exit 5.
    Integrity(String),
    /// Nothing to restore, nothing at that point in time, output exists. Exit 6.
    Restore(String),
    /// A local file walsync writes cannot be written: a restore's output,
    /// its local state, its temporary files (permission denied, read-only
    /// folder, full disk). Exit 7.
    Local(String),
    /// The caller cancelled the work (a signal, or `stop()` of an embedder).
    /// Exit 1: the work did not complete.
    Cancelled,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The process exit code documented for this class of error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Other(_) => 1,
            Error::Usage(_) => 2,
            Error::Database(_) => 3,
            Error::Storage(_) => 4,
            Error::Integrity(_) => 5,
            Error::Restore(_) => 6,
            Error::Local(_) => 7,
            Error::Cancelled => 1,
        }
    }

    /// The message without the class prefix.
    pub fn message(&self) -> &str {
        match self {
            Error::Other(m)
            | Error::Usage(m)
            | Error::Database(m)
            | Error::Storage(m)
            | Error::Integrity(m)
            | Error::Restore(m)
            | Error::Local(m) => m,
            Error::Cancelled => "interrupted before it completed; nothing was left half-written",
        }
    }

    fn class(&self) -> &'static str {
        match self {
            Error::Other(_) => "error",
            Error::Usage(_) => "usage error",
            Error::Database(_) => "database error",
            Error::Storage(_) => "storage error",
            Error::Integrity(_) => "integrity error",
            Error::Restore(_) => "restore error",
            Error::Local(_) => "local file error",
            Error::Cancelled => "stopped",
        }
    }

    /// Same class, with `context` put in front of the message.
    pub fn context(self, context: impl fmt::Display) -> Error {
        let wrap = |m: String| format!("{context}: {m}");
        match self {
            Error::Other(m) => Error::Other(wrap(m)),
            Error::Usage(m) => Error::Usage(wrap(m)),
            Error::Database(m) => Error::Database(wrap(m)),
            Error::Storage(m) => Error::Storage(wrap(m)),
            Error::Integrity(m) => Error::Integrity(wrap(m)),
            Error::Restore(m) => Error::Restore(wrap(m)),
            Error::Local(m) => Error::Local(wrap(m)),
            Error::Cancelled => Error::Cancelled,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.class(), self.message())
    }
}

impl std::error::Error for Error {}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        Error::Database(format!("SQLite: {e}"))
    }
}

/// Adds context to an I/O error and classifies it.
pub trait IoContext<T> {
    /// An I/O failure on a local database file or its WAL (exit 3).
    fn db_io(self, what: impl FnOnce() -> String) -> Result<T>;
    /// An I/O failure on walsync's own files, spool or output (exit 7).
    fn local_io(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn db_io(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::Database(format!("{}: {e}", what())))
    }
    fn local_io(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::Local(format!("{}: {e}", what())))
    }
}
