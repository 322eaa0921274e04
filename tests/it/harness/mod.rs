//! The integration tests' shared harness, one for every module of the `it`
//! binary:
//! - [`server`]: a real S3 server (s3s-fs, which checks SigV4 signatures)
//!   on a loopback port, and the paths of the binaries under test
//!   (walsync, Litestream); missing tools fail with instructions, never
//!   skip;
//! - [`relay`]: a TCP relay in front of that server that delays, refuses
//!   or passes each request as the test chooses, and records them;
//! - [`dest`]: a replica (`s3://` or `file://`) with the `walsync` runs
//!   against it, a running `walsync watch`, and stored objects read,
//!   damaged and put back;
//! - [`db`]: application-side SQLite databases, written with deterministic
//!   bytes, checkpointed and checked;
//! - [`alloc`]: the binary's allocator, which notes the largest allocation;
//! - [`metrics`]: a metrics endpoint scraped and read.

mod alloc;
mod db;
mod dest;
mod metrics;
mod relay;
mod server;

pub use alloc::{max_alloc, reset_max_alloc};
pub use db::*;
pub use dest::*;
pub use metrics::{sample, scrape};
pub use relay::{Action, Relay, Request};
pub use server::{free_port, litestream_bin, walsync_bin, walsync_command, S3Server};
