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
    /// Network or bucket access failure after retries. Exit 4.
    Storage(String),
    /// Storage refused the credentials (wrong, expired, or not allowed on
    /// the bucket): retrying cannot help until someone renews them. Exit 4,
    /// a storage error to scripts; its own variant so alerts can tell it.
    Credentials(String),
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
            Error::Storage(_) | Error::Credentials(_) => 4,
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
            | Error::Credentials(m)
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
            Error::Storage(_) | Error::Credentials(_) => "storage error",
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
            Error::Credentials(m) => Error::Credentials(wrap(m)),
            Error::Integrity(m) => Error::Integrity(wrap(m)),
            Error::Restore(m) => Error::Restore(wrap(m)),
            Error::Local(m) => Error::Local(wrap(m)),
            Error::Cancelled => Error::Cancelled,
        }
    }
}

/// What kind of failure an error is, for metrics and alerts: the exit
/// code's classes, with refused credentials told apart from other storage
/// failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ErrorClass {
    Storage,
    Credentials,
    Database,
    Integrity,
    Local,
    Other,
}

impl ErrorClass {
    /// Every class, in the order of [`ErrorClass::index`].
    pub const ALL: [ErrorClass; 6] = [
        ErrorClass::Storage,
        ErrorClass::Credentials,
        ErrorClass::Database,
        ErrorClass::Integrity,
        ErrorClass::Local,
        ErrorClass::Other,
    ];

    /// Its label in metrics (`class="storage"`).
    pub fn label(self) -> &'static str {
        match self {
            ErrorClass::Storage => "storage",
            ErrorClass::Credentials => "credentials",
            ErrorClass::Database => "database",
            ErrorClass::Integrity => "integrity",
            ErrorClass::Local => "local",
            ErrorClass::Other => "other",
        }
    }

    /// Its position in [`ErrorClass::ALL`], to index a table of counts.
    pub fn index(self) -> usize {
        self as usize
    }
}

impl Error {
    /// The class metrics and alerts count this error in.
    pub fn error_class(&self) -> ErrorClass {
        match self {
            Error::Storage(_) => ErrorClass::Storage,
            Error::Credentials(_) => ErrorClass::Credentials,
            Error::Database(_) => ErrorClass::Database,
            Error::Integrity(_) => ErrorClass::Integrity,
            Error::Local(_) => ErrorClass::Local,
            Error::Other(_) | Error::Usage(_) | Error::Restore(_) | Error::Cancelled => {
                ErrorClass::Other
            }
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
