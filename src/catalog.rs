//! What a replica holds: for each database, its LTX files across levels,
//! each marked when it is a full image a restore can start from.
//!
//! This is the one place a listing becomes files: `restore`, `verify`,
//! `list` and the start-up of `watch` all read a replica through it, and
//! the key parsing lives on [`Layout`].

use crate::error::Result;
use crate::storage::{db_prefix, KeyKind, Layout, ListedObject, LtxId, Storage, SNAPSHOT_LEVEL};
use std::collections::{BTreeMap, HashSet};

/// One LTX object of a database in the replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteLtx {
    pub id: LtxId,
    pub key: String,
    pub size: u64,
    /// Whether the file holds every page of the database as of its max TXID,
    /// so a restore can start from it: a snapshot (min TXID 1), or a level-0
    /// full copy that walsync marked (see [`crate::storage::IMAGE_MARKER_DIR`]).
    pub image: bool,
}

impl RemoteLtx {
    /// A file as listed; `image` is set for snapshots (min TXID 1).
    pub fn new(id: LtxId, key: String, size: u64) -> RemoteLtx {
        RemoteLtx {
            id,
            key,
            size,
            image: id.min_txid == 1,
        }
    }
}

/// The databases of a replica and their files, by name.
#[derive(Debug, Default)]
pub struct Catalog {
    dbs: BTreeMap<String, Vec<RemoteLtx>>,
}

/// Files and image markers of one database while a listing is read.
#[derive(Default)]
struct Gathered {
    files: Vec<RemoteLtx>,
    markers: HashSet<LtxId>,
}

impl Gathered {
    fn add(&mut self, kind: KeyKind, object: ListedObject) {
        match kind {
            KeyKind::Ltx(id) => self.files.push(RemoteLtx::new(id, object.key, object.size)),
            KeyKind::ImageMarker(id) => {
                self.markers.insert(id);
            }
        }
    }

    /// The files sorted by (level, min, max), with markers applied (a marker
    /// without its file is ignored).
    fn finish(mut self) -> Vec<RemoteLtx> {
        for f in &mut self.files {
            f.image |= self.markers.contains(&f.id);
        }
        self.files.sort_by_key(|f| f.id);
        self.files
    }
}

impl Catalog {
    /// Reads the whole replica with one listing.
    pub fn read_all(storage: &dyn Storage) -> Result<Catalog> {
        let layout = storage.layout();
        let mut gathered: BTreeMap<String, Gathered> = BTreeMap::new();
        for o in storage.list("")? {
            if let Some((name, kind)) = layout.parse_key(&o.key) {
                gathered.entry(name).or_default().add(kind, o);
            }
        }
        let dbs = gathered
            .into_iter()
            .map(|(name, g)| (name, g.finish()))
            .filter(|(_, files)| !files.is_empty())
            .collect();
        Ok(Catalog { dbs })
    }

    /// The names of the databases that have at least one LTX file, sorted.
    pub fn names(&self) -> Vec<String> {
        self.dbs.keys().cloned().collect()
    }

    /// Every database with its files, sorted by name.
    pub fn into_databases(self) -> impl Iterator<Item = (String, Vec<RemoteLtx>)> {
        self.dbs.into_iter()
    }

    /// Takes the files of `name` out of the catalog (empty when it has none).
    pub fn take(&mut self, name: &str) -> Vec<RemoteLtx> {
        self.dbs.remove(name).unwrap_or_default()
    }
}

/// Every LTX file of database `name`, sorted by (level, min, max).
pub fn list_db(storage: &dyn Storage, name: &str) -> Result<Vec<RemoteLtx>> {
    let objects = storage.list(&db_prefix(name))?;
    Ok(gather(storage.layout(), name, objects))
}

/// The files of `name` in one level whose min TXID is at least `min_txid`,
/// from one short listing (`start-after`), whatever the level holds before.
/// Image markers live elsewhere, so only snapshots are marked as images.
pub fn list_level_from(
    storage: &dyn Storage,
    name: &str,
    level: u32,
    min_txid: u64,
) -> Result<Vec<RemoteLtx>> {
    let layout = storage.layout();
    let objects = storage.list_after(
        &layout.level_prefix(name, level),
        &layout.level_start_after(name, level, min_txid),
    )?;
    Ok(gather(layout, name, objects))
}

/// The level-9 snapshots of `name` whose max TXID is at least `max_txid`,
/// from one short listing (every snapshot's min TXID is 1, so its key sorts
/// by its max TXID).
pub fn list_snapshots_from(
    storage: &dyn Storage,
    name: &str,
    max_txid: u64,
) -> Result<Vec<RemoteLtx>> {
    let layout = storage.layout();
    let prefix = layout.level_prefix(name, SNAPSHOT_LEVEL);
    let start_after = format!("{prefix}{:016x}-{max_txid:016x}", 1);
    let objects = storage.list_after(&prefix, &start_after)?;
    Ok(gather(layout, name, objects))
}

fn gather(layout: Layout, name: &str, objects: Vec<ListedObject>) -> Vec<RemoteLtx> {
    let mut g = Gathered::default();
    for o in objects {
        if let Some(kind) = layout.parse_db_key(name, &o.key) {
            g.add(kind, o);
        }
    }
    g.finish()
}
