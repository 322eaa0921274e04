//! walsync: continuous replication of SQLite WAL databases to S3-compatible
//! storage (Litestream 0.5 layout and LTX v3 format), and restore.

pub mod error;
pub mod ltx;
pub mod storage;
pub mod wal;
