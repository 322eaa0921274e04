//! What a replica holds for one database: its LTX files across levels.

use crate::error::Result;
use crate::storage::{db_prefix, LtxId, Storage};

/// One LTX object of a database in the replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteLtx {
    pub id: LtxId,
    pub key: String,
    pub size: u64,
}

/// Every LTX file of database `name`, sorted by (level, min, max).
pub fn list_ltx(storage: &dyn Storage, name: &str) -> Result<Vec<RemoteLtx>> {
    let layout = storage.layout();
    let mut files: Vec<RemoteLtx> = storage
        .list(&db_prefix(name))?
        .into_iter()
        .filter_map(|o| {
            layout.parse_ltx_key(name, &o.key).map(|id| RemoteLtx {
                id,
                key: o.key,
                size: o.size,
            })
        })
        .collect();
    files.sort_by_key(|f| f.id);
    Ok(files)
}
