//! Restore (in progress).
use crate::error::{Error, Result};
use crate::storage::Storage;
use std::path::PathBuf;
pub struct RestoreOptions {
    pub name: String,
    pub output: PathBuf,
    pub txid: Option<u64>,
    pub point_in_time_ms: Option<i64>,
    pub force: bool,
    pub if_db_not_exists: bool,
    pub if_replica_exists: bool,
    pub parallelism: usize,
}
pub fn run(_s: &dyn Storage, _o: &RestoreOptions) -> Result<()> {
    Err(Error::Other("restore is not built yet".into()))
}
