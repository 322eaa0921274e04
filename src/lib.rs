//! walsync replicates SQLite databases in WAL mode to S3-compatible storage
//! or a folder, and restores them to the latest state or to any transaction
//! or moment, proving on the way that the restored bytes are the ones that
//! were written. It writes Litestream 0.5's replica layout and LTX files, so
//! either tool restores the other's replicas.
//!
//! # How data flows
//!
//! **Replicating** ([`watch()`]): for each database a [`Shipper`] holds a
//! connection with a long read transaction (so SQLite cannot restart the WAL
//! under frames not shipped yet), reads new committed transactions from the
//! WAL with plain file I/O ([`wal`]), and writes them as one LTX file
//! ([`ltx`]) per sync into a spool file. A small pool of uploaders stores
//! spool files in a [`Storage`] (S3 or a folder) under keys the replica
//! layout gives ([`storage::Layout`]): level 0 for each sync, level 9 for
//! snapshots. The local state moves on only once an object is stored. Every
//! file records the database checksum before and after it.
//!
//! **Reading a replica** ([`catalog`]): one listing becomes each database's
//! files; the restore planner ([`plan`]) picks the newest full image at or
//! before the target and the files that carry the TXID chain on to it.
//!
//! **Restoring** ([`restore()`]) and **verifying** ([`verify_each`]) run the
//! same checked downloads and the same replay: each file's length, SHA-256
//! and CRC-64 are checked, and replaying its pages must produce the database
//! checksum its writer recorded. Restore writes the pages to a new file;
//! verify keeps only page checksums.
//!
//! # Using the library
//!
//! The library never owns the process: it installs no signal handler, never
//! exits, never prints. Long work takes a [`CancelToken`] and reports what it
//! does as [`Event`]s to an [`EventSink`] the caller provides; errors are
//! [`Error`]s whose class maps to the documented exit codes.
//!
//! ```no_run
//! use std::sync::Arc;
//! use walsync::{restore, CancelToken, RestoreOptions};
//!
//! let storage = walsync::open_storage("file:///var/backups/walsync", &Default::default())?;
//! let outcome = restore(
//!     storage.as_ref(),
//!     &RestoreOptions {
//!         name: "app".into(),
//!         output: "/tmp/app.db".into(),
//!         txid: None,
//!         point_in_time_ms: None,
//!         force: false,
//!         if_db_not_exists: false,
//!         if_replica_exists: false,
//!         parallelism: 8,
//!         cancel: CancelToken::new(),
//!     },
//!     &walsync::event::Discard,
//! )?;
//! assert!(matches!(outcome, walsync::RestoreOutcome::Restored { .. }));
//! # Ok::<(), walsync::Error>(())
//! ```

// The building blocks: file formats, storage and the reading of a replica.
pub mod catalog;
pub mod compact;
pub mod ltx;
pub mod storage;
pub mod wal;

// What the library does, one module per concept.
pub mod estimate;
pub mod event;
pub mod import;
pub mod list;
pub mod monitor;
pub mod names;
pub mod plan;
pub mod replica;
pub mod resolve;
pub mod restore;
pub mod selection;
pub mod verify;
pub mod watch;

// Shared pieces.
pub mod apply;
mod backoff;
mod cancel;
pub mod config;
pub mod error;
mod fetch;
pub mod fsutil;
pub mod glob;
mod memory;
mod pool;

// The `walsync` binary's command line (the only code that owns the process).
pub mod cli;

pub use cancel::CancelToken;
pub use error::{Error, Result};
pub use event::{Event, EventSink, Level};
pub use list::{summaries, DbSummary};
pub use restore::{run as restore, RestoreOptions, RestoreOutcome};
pub use storage::{open as open_storage, s3::S3Options, Storage};
pub use verify::{verify_each, Report};
pub use watch::{watch, Settings, Shipper, WatchOptions};
