//! List (in progress).
use crate::error::{Error, Result};
use crate::storage::Storage;
pub fn run(_s: &dyn Storage, _json: bool) -> Result<()> {
    Err(Error::Other("list is not built yet".into()))
}
pub fn database_names(_s: &dyn Storage) -> Result<Vec<String>> {
    Err(Error::Other("list is not built yet".into()))
}
