//! What walsync reports while it works: one [`Event`] type that logs,
//! metrics and alerts all consume, and the [`EventSink`] that receives them.
//!
//! The library never prints. It hands events to the sink its caller gave
//! it; the `walsync` binary's sink writes them to standard error, and an
//! embedding application can route them anywhere. An event's `Display` is
//! its log line without the `walsync: ` prefix.

use crate::error::ErrorClass;
use crate::watch::Cause;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// How much an event matters to an operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

/// What a diff or a full copy carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageContent {
    /// The pages whose bytes differ from what was shipped.
    Diff { changed: u32, pages: u32 },
    /// Every page.
    FullCopy { pages: u32 },
}

/// Something walsync did or saw.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// `watch` started on its databases.
    Watching {
        databases: usize,
        replica: String,
        pollers: usize,
        uploaders: usize,
    },
    /// `watch` stopped; `clean` when everything committed was stored.
    Stopped { clean: bool },
    /// A database appeared (discovery) and is replicated from now on.
    Discovered { db: String, path: PathBuf },
    /// A database is no longer replicated: `reason` says why.
    Released { db: String, reason: String },
    /// A reloaded config changed a database's settings; they apply now.
    Retuned { db: String },
    /// Looking for databases failed (e.g. a reloaded config is wrong).
    DiscoveryFailed { error: String },
    /// Uploads failed `failures` times in a row over all databases: the
    /// circuit opened, and only one probe a cooldown goes out.
    StorageDown { failures: u32 },
    /// Storage stored an upload again after failing for `after`: every
    /// waiting database retries now.
    StorageBack { after: Duration },
    /// A batch could not be written to its spool file (a full disk): it
    /// and the next ones are built in memory for a while.
    SpoolInMemory { db: String, error: String },
    /// A rescan looked at `looked_at` (everything, or only the paths that
    /// appeared since the last), found `new` databases, and `databases` are
    /// replicated now. Looking took `scan_cpu` of the thread's CPU time,
    /// and opening the new ones (the same work as at start) `open_cpu`.
    Rescanned {
        looked_at: Option<usize>,
        databases: usize,
        new: usize,
        scan_cpu: Duration,
        open_cpu: Duration,
    },
    /// An object of a database was stored.
    Stored {
        db: String,
        key: String,
        txid: u64,
        bytes: u64,
    },
    /// A database's WAL could not be followed (or its file was replaced):
    /// a diff or a full copy is being shipped instead.
    Shipping {
        db: String,
        cause: Cause,
        content: ImageContent,
        txid: u64,
        bytes: u64,
    },
    /// Same, but every page was as shipped: nothing to store.
    NothingToShip { db: String, cause: Cause },
    /// walsync let go of a database's files: `what` says why.
    LetGo { db: String, what: String },
    /// A database cannot be opened or read for now; tried again later.
    Unavailable { db: String, error: String },
    /// An upload failed (after the storage's own retries).
    UploadFailed {
        db: String,
        error: String,
        class: ErrorClass,
        retry_in: Duration,
    },
    /// Uploads of a database kept failing: `failures` over `lasted`; its
    /// oldest commit not stored is `oldest_unstored` old (said at most
    /// every 30 s while it lasts).
    StillFailing {
        db: String,
        error: String,
        class: ErrorClass,
        failures: u32,
        lasted: Duration,
        oldest_unstored: Option<Duration>,
    },
    /// A level-9 snapshot was stored; `why` names what called for it.
    Snapshotted {
        db: String,
        txid: u64,
        bytes: u64,
        why: &'static str,
    },
    /// walsync checkpointed a database's WAL (`mode` PASSIVE or TRUNCATE)
    /// because it held `wal_pages`, past the `setting`.
    Checkpointed {
        db: String,
        mode: &'static str,
        wal_pages: u64,
        setting: &'static str,
    },
    /// A periodic validation found the replica restorable to `txid`,
    /// checking `files` files.
    Validated { db: String, txid: u64, files: usize },
    /// A periodic validation found the replica damaged or unrestorable.
    ValidationFailed { db: String, problems: String },
    /// A periodic validation could not finish (storage failing, or files
    /// changed under it); tried again at the next interval.
    ValidationIncomplete { db: String, error: String },
    /// A webhook delivery of `event` to `host` failed after its retries.
    WebhookFailed {
        host: String,
        event: &'static str,
        error: String,
    },
    /// The heartbeat is held back: `why` names a database behind.
    HeartbeatHeld { why: String },
    /// A heartbeat request to `host` failed.
    HeartbeatFailed { host: String, error: String },
    /// A database is caught up after an outage that lasted `after`, in
    /// which `failures` uploads failed and `shipped` files were stored once
    /// uploads succeeded again.
    Recovered {
        db: String,
        after: Duration,
        failures: u32,
        shipped: u32,
    },
    /// Looking for work failed; tried again after `retry_in`.
    PollFailed {
        db: String,
        error: String,
        class: ErrorClass,
        retry_in: Duration,
    },
    /// walsync's own checkpoint failed.
    CheckpointFailed { db: String, error: String },
    /// The local state could not be saved (the object is stored anyway).
    StateNotSaved { db: String, error: String },
    /// Closing a database's connection failed.
    CloseFailed { db: String, error: String },
    /// A periodic snapshot's checksum differed from the tracked one.
    SnapshotRebased { db: String },
    /// A compaction and retention pass wrote `compacted` files (merging
    /// `merged`) and deleted `deleted` files of `deleted_bytes`; the
    /// replica holds `files` files now.
    Compacted {
        db: String,
        compacted: usize,
        merged: usize,
        deleted: usize,
        deleted_bytes: u64,
        files: usize,
    },
    /// A compaction and retention pass failed; tried again after `retry_in`.
    CompactionFailed {
        db: String,
        error: String,
        retry_in: Duration,
    },
    /// A read replica applied `files` files up to `txid`, visible to its
    /// readers `lag` after the primary committed it.
    Followed {
        db: String,
        txid: u64,
        files: usize,
        lag: Duration,
    },
    /// A restore is under way.
    RestoreProgress {
        db: String,
        files_done: usize,
        files_total: usize,
        bytes: u64,
    },
    /// A restore finished.
    Restored {
        db: String,
        txid: u64,
        /// When that TXID was committed (Unix ms, as its file records it).
        committed_ms: i64,
        files: usize,
        bytes: u64,
        elapsed: Duration,
        output: PathBuf,
    },
}

impl Event {
    /// How much it matters.
    pub fn level(&self) -> Level {
        match self {
            Event::Stored { .. }
            | Event::RestoreProgress { .. }
            | Event::Rescanned { .. }
            | Event::Validated { .. }
            | Event::Followed { .. } => Level::Debug,
            Event::ValidationFailed { .. } => Level::Error,
            Event::Watching { .. }
            | Event::Stopped { clean: true }
            | Event::Discovered { .. }
            | Event::Released { .. }
            | Event::Retuned { .. }
            | Event::StorageBack { .. }
            | Event::NothingToShip { .. }
            | Event::Compacted { .. }
            | Event::Recovered { .. }
            | Event::Snapshotted { .. }
            | Event::Checkpointed { .. }
            | Event::Restored { .. } => Level::Info,
            Event::HeartbeatHeld { .. }
            | Event::HeartbeatFailed { .. }
            | Event::WebhookFailed { .. }
            | Event::ValidationIncomplete { .. } => Level::Warn,
            Event::Shipping { .. }
            | Event::LetGo { .. }
            | Event::Unavailable { .. }
            | Event::UploadFailed { .. }
            | Event::PollFailed { .. }
            | Event::SpoolInMemory { .. }
            | Event::CheckpointFailed { .. }
            | Event::StateNotSaved { .. }
            | Event::CloseFailed { .. }
            | Event::SnapshotRebased { .. }
            | Event::CompactionFailed { .. }
            | Event::StillFailing { .. }
            | Event::StorageDown { .. }
            | Event::DiscoveryFailed { .. } => Level::Warn,
            Event::Stopped { clean: false } => Level::Error,
        }
    }

    /// The database it is about, if one.
    pub fn database(&self) -> Option<&str> {
        match self {
            Event::Watching { .. }
            | Event::Stopped { .. }
            | Event::DiscoveryFailed { .. }
            | Event::StorageDown { .. }
            | Event::StorageBack { .. }
            | Event::Rescanned { .. }
            | Event::HeartbeatHeld { .. }
            | Event::HeartbeatFailed { .. }
            | Event::WebhookFailed { .. } => None,
            Event::Validated { db, .. }
            | Event::Followed { db, .. }
            | Event::ValidationFailed { db, .. }
            | Event::ValidationIncomplete { db, .. } => Some(db),
            Event::Stored { db, .. }
            | Event::Shipping { db, .. }
            | Event::NothingToShip { db, .. }
            | Event::LetGo { db, .. }
            | Event::Unavailable { db, .. }
            | Event::UploadFailed { db, .. }
            | Event::PollFailed { db, .. }
            | Event::SpoolInMemory { db, .. }
            | Event::CheckpointFailed { db, .. }
            | Event::StateNotSaved { db, .. }
            | Event::CloseFailed { db, .. }
            | Event::SnapshotRebased { db }
            | Event::Compacted { db, .. }
            | Event::CompactionFailed { db, .. }
            | Event::StillFailing { db, .. }
            | Event::Recovered { db, .. }
            | Event::Snapshotted { db, .. }
            | Event::Checkpointed { db, .. }
            | Event::Discovered { db, .. }
            | Event::Released { db, .. }
            | Event::Retuned { db }
            | Event::RestoreProgress { db, .. }
            | Event::Restored { db, .. } => Some(db),
        }
    }
}

impl Level {
    /// `ERROR`, `WARN`, `INFO` or `DEBUG`.
    pub fn name(self) -> &'static str {
        match self {
            Level::Debug => "DEBUG",
            Level::Info => "INFO",
            Level::Warn => "WARN",
            Level::Error => "ERROR",
        }
    }
}

impl fmt::Display for Event {
    /// `db: message`, or the message alone for an event of no database.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(db) = self.database() {
            write!(f, "{db}: ")?;
        }
        write!(f, "{}", self.message())
    }
}

/// An event's message, without its database (see [`Event::message`]).
pub struct Message<'e>(&'e Event);

impl Event {
    /// What happened, without the database it happened to.
    pub fn message(&self) -> Message<'_> {
        Message(self)
    }

    /// The event's name in structured logs (`stored`, `upload_failed`…).
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Watching { .. } => "watching",
            Event::Stopped { .. } => "stopped",
            Event::Discovered { .. } => "discovered",
            Event::Released { .. } => "released",
            Event::Retuned { .. } => "retuned",
            Event::DiscoveryFailed { .. } => "discovery_failed",
            Event::StorageDown { .. } => "storage_down",
            Event::StorageBack { .. } => "storage_back",
            Event::SpoolInMemory { .. } => "spool_in_memory",
            Event::Rescanned { .. } => "rescanned",
            Event::Stored { .. } => "stored",
            Event::Shipping { .. } => "shipping",
            Event::NothingToShip { .. } => "nothing_to_ship",
            Event::LetGo { .. } => "let_go",
            Event::Unavailable { .. } => "unavailable",
            Event::UploadFailed { .. } => "upload_failed",
            Event::PollFailed { .. } => "poll_failed",
            Event::CheckpointFailed { .. } => "checkpoint_failed",
            Event::StateNotSaved { .. } => "state_not_saved",
            Event::CloseFailed { .. } => "close_failed",
            Event::SnapshotRebased { .. } => "snapshot_rebased",
            Event::Compacted { .. } => "compacted",
            Event::StillFailing { .. } => "still_failing",
            Event::Recovered { .. } => "recovered",
            Event::Snapshotted { .. } => "snapshotted",
            Event::HeartbeatHeld { .. } => "heartbeat_held",
            Event::Validated { .. } => "validated",
            Event::Followed { .. } => "followed",
            Event::ValidationFailed { .. } => "validation_failed",
            Event::ValidationIncomplete { .. } => "validation_incomplete",
            Event::WebhookFailed { .. } => "webhook_failed",
            Event::HeartbeatFailed { .. } => "heartbeat_failed",
            Event::Checkpointed { .. } => "checkpointed",
            Event::CompactionFailed { .. } => "compaction_failed",
            Event::RestoreProgress { .. } => "restore_progress",
            Event::Restored { .. } => "restored",
        }
    }
}

impl fmt::Display for Message<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Event::Watching {
                databases,
                replica,
                pollers,
                uploaders,
            } => write!(
                f,
                "watching {databases} database(s) to {replica} with {pollers} poller(s) and {uploaders} uploader(s)"
            ),
            Event::Stopped { clean: true } => write!(f, "stopped; everything committed was stored"),
            Event::Stopped { clean: false } => write!(
                f,
                "stopped before everything committed was stored (see the errors above)"
            ),
            Event::Discovered { path, .. } => {
                write!(f, "found {}; replicating it", path.display())
            }
            Event::Released { reason, .. } => write!(f, "no longer replicated: {reason}"),
            Event::Retuned { .. } => write!(f, "settings changed by the reloaded config"),
            Event::DiscoveryFailed { error } => write!(f, "{error}"),
            Event::StorageDown { failures } => write!(
                f,
                "storage is failing ({failures} uploads in a row): retries wait, one probe at a time, until it answers"
            ),
            Event::StorageBack { after } => write!(
                f,
                "storage is back after {:.1} s: every waiting database retries now",
                after.as_secs_f64()
            ),
            Event::Rescanned {
                looked_at,
                databases,
                new,
                scan_cpu,
                open_cpu,
            } => write!(
                f,
                "rescanned {}: {databases} database(s), {new} new; {:.2} ms of CPU to look, {:.2} ms to open the new",
                match looked_at {
                    None => "everything".to_string(),
                    Some(n) => format!("{n} new path(s)"),
                },
                scan_cpu.as_secs_f64() * 1e3,
                open_cpu.as_secs_f64() * 1e3
            ),
            Event::Stored { key, txid, bytes, .. } => {
                write!(f, "stored {key} (TXID {txid}, {bytes} bytes)")
            }
            Event::Shipping {
                cause,
                content,
                txid,
                bytes,
                ..
            } => write!(f, "{cause}; shipping {content} as TXID {txid} ({bytes} bytes)"),
            Event::NothingToShip { cause, .. } => write!(
                f,
                "{cause}; the database holds exactly what was shipped: nothing to ship"
            ),
            Event::LetGo { what, .. } => write!(f, "{what}"),
            Event::Unavailable { error, .. } => write!(f, "{error}; will try again"),
            Event::UploadFailed {
                error, retry_in, ..
            } => write!(
                f,
                "{error}; retrying in {:.1}s (nothing is lost: the WAL is kept until it is stored)",
                retry_in.as_secs_f64()
            ),
            Event::PollFailed {
                error, retry_in, ..
            } => write!(
                f,
                "{error}; will try again in {:.1}s",
                retry_in.as_secs_f64()
            ),
            Event::SpoolInMemory { error, .. } => write!(
                f,
                "{error}; building batches in memory (at most {} MiB over all databases) for the next {} s",
                crate::watch::SPOOL_MEMORY_BUDGET >> 20,
                crate::watch::SPOOL_MEMORY_SPELL.as_secs()
            ),
            Event::CheckpointFailed { error, .. } => write!(f, "checkpoint: {error}"),
            Event::StateNotSaved { error, .. } => write!(
                f,
                "recording the upload: {error} (the object is stored; a restart finds it)"
            ),
            Event::CloseFailed { error, .. } => write!(f, "closing: {error}"),
            Event::SnapshotRebased { .. } => write!(
                f,
                "snapshot checksum differs from the tracked checksum; re-basing on the snapshot"
            ),
            Event::Compacted {
                compacted,
                merged,
                deleted,
                deleted_bytes,
                files,
                ..
            } => {
                if *compacted > 0 {
                    write!(f, "compacted {merged} file(s) into {compacted}; ")?;
                }
                if *deleted > 0 {
                    write!(
                        f,
                        "deleted {deleted} file(s) ({:.1} KB) no promised restore needs; ",
                        *deleted_bytes as f64 / 1e3
                    )?;
                }
                write!(f, "the replica holds {files} file(s)")
            }
            Event::StillFailing {
                error,
                failures,
                lasted,
                oldest_unstored,
                ..
            } => {
                write!(
                    f,
                    "uploads still failing after {:.0}s ({failures} attempts)",
                    lasted.as_secs_f64()
                )?;
                if let Some(age) = oldest_unstored {
                    write!(f, "; the oldest commit not stored is {:.0}s old", age.as_secs_f64())?;
                }
                write!(f, "; last error: {error}")
            }
            Event::HeartbeatHeld { why } => write!(
                f,
                "heartbeat held back (its service will alert): {why}"
            ),
            Event::HeartbeatFailed { host, error } => {
                write!(f, "heartbeat to {host} failed: {error}")
            }
            Event::Validated { txid, files, .. } => write!(
                f,
                "validated: restorable to TXID {}, {files} file(s) checked",
                crate::plan::txid_hex(*txid)
            ),
            Event::ValidationFailed { problems, .. } => write!(
                f,
                "validation FAILED: {problems}; run `walsync verify` for the details, and take a fresh snapshot (`walsync snapshot`)"
            ),
            Event::Followed {
                txid, files, lag, ..
            } => write!(
                f,
                "applied {files} file(s) up to TXID {}: visible {:.0} ms after the primary's commit",
                crate::plan::txid_hex(*txid),
                lag.as_secs_f64() * 1e3
            ),
            Event::ValidationIncomplete { error, .. } => {
                write!(f, "validation could not finish: {error}; will try again")
            }
            Event::WebhookFailed { host, event, error } => {
                write!(f, "webhook {event} to {host} failed: {error}")
            }
            Event::Snapshotted {
                txid, bytes, why, ..
            } => write!(
                f,
                "stored a snapshot at TXID {} ({bytes} bytes): {why}",
                crate::plan::txid_hex(*txid)
            ),
            Event::Checkpointed {
                mode,
                wal_pages,
                setting,
                ..
            } => write!(
                f,
                "checkpointed ({mode}): the WAL held {wal_pages} pages, past {setting}"
            ),
            Event::Recovered {
                after,
                failures,
                shipped,
                ..
            } => write!(
                f,
                "recovered after {:.0}s, {shipped} file(s) shipped; caught up ({failures} failed uploads)",
                after.as_secs_f64()
            ),
            Event::CompactionFailed {
                error, retry_in, ..
            } => write!(
                f,
                "compaction and retention: {error}; nothing is lost, will try again in {:.0}s",
                retry_in.as_secs_f64()
            ),
            Event::RestoreProgress { .. } | Event::Restored { .. } => self.0.fmt_restore(f),
        }
    }
}

impl Event {
    fn fmt_restore(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::RestoreProgress {
                files_done,
                files_total,
                bytes,
                ..
            } => write!(
                f,
                "restoring: {files_done}/{files_total} files, {:.1} MB",
                *bytes as f64 / 1e6
            ),
            Event::Restored {
                txid,
                committed_ms,
                files,
                bytes,
                elapsed,
                output,
                ..
            } => write!(
                f,
                "restored to TXID {} committed at {} ({files} files, {bytes} bytes) in {:.1}s: {}",
                crate::plan::txid_hex(*txid),
                jiff::Timestamp::from_millisecond(*committed_ms)
                    .map_or_else(|_| "an unknown time".into(), |t| format!("{t:.3}")),
                elapsed.as_secs_f64(),
                output.display()
            ),
            _ => Ok(()),
        }
    }
}

impl fmt::Display for ImageContent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageContent::Diff { changed, pages } => {
                write!(f, "the {changed} changed pages of {pages}")
            }
            ImageContent::FullCopy { pages } => write!(f, "a full copy ({pages} pages)"),
        }
    }
}

/// Receives events. Called from walsync's worker threads, so it must be
/// quick and must not block for long.
pub trait EventSink: Send + Sync {
    fn emit(&self, event: Event);
}

impl<F: Fn(Event) + Send + Sync> EventSink for F {
    fn emit(&self, event: Event) {
        self(event)
    }
}

/// A sink that drops every event.
#[derive(Debug, Clone, Copy, Default)]
pub struct Discard;

impl EventSink for Discard {
    fn emit(&self, _event: Event) {}
}
