//! walsync: continuous replication of SQLite WAL databases to S3-compatible
//! storage (Litestream 0.5 layout and LTX v3 format), and restore.

pub mod cli;
pub mod config;
pub mod error;
pub mod fsutil;
pub mod list;
pub mod ltx;
pub mod names;
pub mod pagesums;
pub mod plan;
pub mod remote;
pub mod replicate;
pub mod restore;
pub mod shipper;
pub mod source;
pub mod state;
pub mod storage;
pub mod verify;
pub mod wal;
