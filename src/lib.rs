//! walsync: continuous replication of SQLite WAL databases to S3-compatible
//! storage (Litestream 0.5 layout and LTX v3 format), and restore.

pub mod apply;
pub mod backoff;
pub mod cancel;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod error;
pub mod event;
pub mod fetch;
pub mod fsutil;
pub mod list;
pub mod ltx;
pub mod names;
pub mod plan;
pub mod pool;
pub mod restore;
pub mod storage;
pub mod verify;
pub mod wal;
pub mod watch;
