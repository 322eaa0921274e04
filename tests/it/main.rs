//! walsync's integration tests, as one test binary (`cargo test --test it`):
//! the real binary, real SQLite databases, a real S3 server (s3s-fs, which
//! checks SigV4 signatures) and the real Litestream, driven through the
//! shared [`harness`]. One module per area.

mod harness;

mod cli;
mod compact;
mod deploy;
mod faults;
mod fleet;
mod interop;
mod ltx;
mod monitoring;
mod replica;
mod restore;
mod storage_contract;
mod verify;
mod wal;
mod watch;
