//! Object storage behind one small trait, and the replica layout on top of it.
//!
//! Backends (`s3`, `file`) store opaque objects under keys relative to the
//! replica root (the S3 prefix or the folder of a `file://` URL). Where LTX
//! files live under that root is the business of [`Layout`], because S3 and
//! file replicas follow different Litestream conventions.

pub mod file;
mod layout;
pub mod s3;

pub use layout::{
    db_prefix, parse_ltx_filename, KeyKind, Layout, LtxId, IMAGE_MARKER_DIR, SNAPSHOT_LEVEL,
};

use crate::error::{Error, Result};
use std::io::{Read, Seek};

/// Metadata stored with every object walsync writes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Hex SHA-256 of the object body (`x-amz-meta-sha256`), when known.
    pub sha256: Option<String>,
    /// RFC 3339 timestamp (`x-amz-meta-litestream-timestamp`), when known.
    pub timestamp: Option<String>,
    /// walsync's database checksums before and after applying this LTX file
    /// (`x-amz-meta-walsync-checksums`, `<pre hex>-<post hex>`), when known.
    pub db_checksums: Option<String>,
}

/// S3 metadata header names, in the order they are sent.
pub const META_SHA256: &str = "x-amz-meta-sha256";
pub const META_TIMESTAMP: &str = "x-amz-meta-litestream-timestamp";
pub const META_DB_CHECKSUMS: &str = "x-amz-meta-walsync-checksums";

impl ObjectMeta {
    /// The metadata that is set, as (header name, value) pairs.
    pub fn headers(&self) -> Vec<(&'static str, &str)> {
        [
            (META_SHA256, &self.sha256),
            (META_TIMESTAMP, &self.timestamp),
            (META_DB_CHECKSUMS, &self.db_checksums),
        ]
        .into_iter()
        .filter_map(|(name, value)| value.as_deref().map(|v| (name, v)))
        .collect()
    }

    /// Metadata read back through `header(name)`.
    pub fn from_headers(header: impl Fn(&str) -> Option<String>) -> ObjectMeta {
        ObjectMeta {
            sha256: header(META_SHA256),
            timestamp: header(META_TIMESTAMP),
            db_checksums: header(META_DB_CHECKSUMS),
        }
    }

    /// Encodes database checksums for [`ObjectMeta::db_checksums`].
    pub fn encode_db_checksums(pre: u64, post: u64) -> String {
        format!("{pre:016x}-{post:016x}")
    }

    /// The (pre, post) database checksums, when present and well formed.
    pub fn parsed_db_checksums(&self) -> Option<(u64, u64)> {
        let (pre, post) = self.db_checksums.as_deref()?.split_once('-')?;
        Some((
            u64::from_str_radix(pre, 16).ok()?,
            u64::from_str_radix(post, 16).ok()?,
        ))
    }
}

/// What a HEAD or a GET says about an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectHead {
    pub size: u64,
    pub meta: ObjectMeta,
}

/// One entry of a listing. `key` is relative to the replica root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedObject {
    pub key: String,
    pub size: u64,
}

/// A streaming download: its head and a reader over the body.
pub struct Download {
    pub head: ObjectHead,
    pub body: Box<dyn Read + Send>,
}

/// The transport failed while a body was read, after the retries: the
/// payload of the `io::Error` a download's reader returns then. Nothing is
/// known to be wrong with the object, so it is a storage error (exit 4),
/// never damage.
#[derive(Debug)]
pub struct TransferFailed(pub String);

impl std::fmt::Display for TransferFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TransferFailed {}

/// The message of a [`TransferFailed`] carried by `e`, if it is one.
pub fn transfer_failure(e: &std::io::Error) -> Option<&str> {
    e.get_ref()?
        .downcast_ref::<TransferFailed>()
        .map(|t| t.0.as_str())
}

/// When storage last made progress (a request answered, body bytes
/// arrived), for a one-shot command's `--timeout`, which gives up only
/// after that long without any.
static PROGRESS_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn process_clock() -> std::time::Duration {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START.get_or_init(std::time::Instant::now).elapsed()
}

/// Notes that storage made progress now.
pub fn mark_progress() {
    let now = u64::try_from(process_clock().as_millis()).unwrap_or(u64::MAX);
    PROGRESS_MS.store(now, std::sync::atomic::Ordering::Relaxed);
}

/// How long since storage last made progress (since the first call, when
/// it never has).
pub fn since_progress() -> std::time::Duration {
    let now = process_clock();
    let last = PROGRESS_MS.load(std::sync::atomic::Ordering::Relaxed);
    now.saturating_sub(std::time::Duration::from_millis(last))
}

/// A request body that can be rewound, so a failed upload can be retried.
///
/// Implemented for everything that is `Read + Seek` (files, `io::Cursor`).
pub trait ReadSeek: Read + Seek {}

impl<T: Read + Seek + ?Sized> ReadSeek for T {}

/// The operations walsync needs from a place that stores objects.
pub trait Storage: Send + Sync {
    /// Stores `len` bytes read from `body` under `key`, with `meta`.
    /// Returns only once the object is durably stored.
    ///
    /// The body is read from its current position; a backend that retries
    /// seeks back to that position before each new attempt.
    fn put(&self, key: &str, body: &mut dyn ReadSeek, len: u64, meta: &ObjectMeta) -> Result<()>;
    /// Streams the object, or `None` when it does not exist.
    fn get(&self, key: &str) -> Result<Option<Download>>;
    /// Reads `len` bytes at `offset`, or `None` when the object does not exist.
    /// Returns fewer bytes (possibly none) when the object ends before
    /// `offset + len`.
    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Option<Vec<u8>>>;
    /// Every object whose key starts with `prefix`, sorted by key.
    fn list(&self, prefix: &str) -> Result<Vec<ListedObject>> {
        self.list_after(prefix, "")
    }
    /// The objects whose key starts with `prefix` and sorts after
    /// `start_after` (S3's `start-after`; empty: all of them), sorted by key.
    /// Finding the newest files of a level costs one short listing this way,
    /// however many older files it holds.
    fn list_after(&self, prefix: &str, start_after: &str) -> Result<Vec<ListedObject>>;
    /// Size and metadata of the object, or `None` when it does not exist.
    fn head(&self, key: &str) -> Result<Option<ObjectHead>>;
    /// Removes the object; removing a missing object is not an error.
    fn delete(&self, key: &str) -> Result<()>;
    /// Removes every object of `keys` (missing ones are not an error) in as
    /// few requests as the backend allows. Returns once all are gone; on an
    /// error some may be gone and some not.
    fn delete_many(&self, keys: &[String]) -> Result<()> {
        keys.iter().try_for_each(|k| self.delete(k))
    }
    /// How LTX files are laid out under this backend's root.
    fn layout(&self) -> Layout;
    /// The URL this storage was opened from, without credentials, for messages.
    fn describe(&self) -> String;
}

/// Opens the storage a `-b/--bucket` URL names.
pub fn open(url: &str, options: &s3::S3Options) -> Result<Box<dyn Storage>> {
    if let Some(path) = url.strip_prefix("file://") {
        if path.is_empty() || !path.starts_with('/') {
            return Err(Error::Usage(format!(
                "bad replica URL '{url}': a file URL needs an absolute path: use file:///var/backups/walsync (or s3://bucket/prefix)"
            )));
        }
        Ok(Box::new(file::FileStorage::open(path)?))
    } else if url.starts_with("s3://") {
        Ok(Box::new(s3::S3Storage::open(url, options)?))
    } else {
        Err(Error::Usage(format!(
            "bad replica URL '{}': use s3://bucket/prefix or file:///path",
            s3::redact_url(url)
        )))
    }
}
