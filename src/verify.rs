//! Verify (in progress).
use crate::error::{Error, Result};
use crate::storage::Storage;
pub fn run(_s: &dyn Storage, _names: &[String], _p: usize, _json: bool) -> Result<()> {
    Err(Error::Other("verify is not built yet".into()))
}
