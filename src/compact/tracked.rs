//! What a compaction pass knows of one database's replica: its files and
//! the commit times read so far.
//!
//! `walsync compact` lists the replica and starts from that. `watch` lists
//! it once, at a database's first pass, and from then on keeps it up to date
//! itself: it is the single writer of its prefixes, so every file it stores
//! is told here ([`Tracked::stored`]), and a pass records what it writes and
//! deletes. A pass over a tracked replica therefore makes requests only for
//! real work: merging, storing, deleting, and reading once the commit time
//! of a file it did not store itself.

use crate::catalog::{self, RemoteLtx};
use crate::error::Result;
use crate::plan;
use crate::storage::{LtxId, Storage, SNAPSHOT_LEVEL};
use std::collections::{HashMap, HashSet};

/// One database's files as far as walsync knows, with their commit times.
#[derive(Debug, Default)]
pub struct Tracked {
    files: Vec<RemoteLtx>,
    /// Commit times (Unix ms) known without a request: of files stored by
    /// this process, and of listed files once read.
    times: HashMap<LtxId, i64>,
}

impl Tracked {
    /// The replica of `name` as one listing finds it.
    pub fn list(storage: &dyn Storage, name: &str) -> Result<Tracked> {
        Ok(Tracked {
            files: catalog::list_db(storage, name)?,
            times: HashMap::new(),
        })
    }

    /// The files, in no particular order.
    pub fn files(&self) -> &[RemoteLtx] {
        &self.files
    }

    /// The newest TXID any file reaches (0 when there is none).
    pub fn latest(&self) -> u64 {
        self.files.iter().map(|f| f.id.max_txid).max().unwrap_or(0)
    }

    /// When `f` was committed: known, or read once from storage.
    pub fn time_ms(&mut self, storage: &dyn Storage, f: &RemoteLtx) -> Result<i64> {
        Times(&mut self.times).time_ms(storage, f)
    }

    /// The files, and their commit times to look up while reading them.
    pub fn split(&mut self) -> (&[RemoteLtx], Times<'_>) {
        (&self.files, Times(&mut self.times))
    }

    /// Records a file this process stored, committed at `time_ms`. Returns
    /// false, recording nothing, when it does not follow what is tracked
    /// (the replica moved, or someone else wrote it): the caller lists
    /// again before trusting it.
    pub fn stored(&mut self, f: RemoteLtx, time_ms: i64) -> bool {
        let latest = self.latest();
        let follows = match f.id.level {
            0 => f.id.min_txid == latest + 1,
            SNAPSHOT_LEVEL => f.id.max_txid <= latest + 1,
            _ => false,
        };
        if follows {
            self.add(f, time_ms);
        }
        follows
    }

    /// Adds a file (stored, or about to be on a dry run) with its time.
    pub(super) fn add(&mut self, f: RemoteLtx, time_ms: i64) {
        self.times.insert(f.id, time_ms);
        self.files.retain(|known| known.key != f.key);
        self.files.push(f);
    }

    /// Forgets the files whose keys are in `gone`.
    pub(super) fn remove(&mut self, gone: &HashSet<&str>) {
        let times = &mut self.times;
        self.files.retain(|f| {
            let keep = !gone.contains(f.key.as_str());
            if !keep {
                times.remove(&f.id);
            }
            keep
        });
    }
}

/// The commit times a [`Tracked`] knows, borrowed apart from its files.
pub struct Times<'t>(&'t mut HashMap<LtxId, i64>);

impl Times<'_> {
    /// When `f` was committed: known, or read once from storage.
    pub fn time_ms(&mut self, storage: &dyn Storage, f: &RemoteLtx) -> Result<i64> {
        if let Some(&ms) = self.0.get(&f.id) {
            return Ok(ms);
        }
        let ms = plan::file_time_ms(storage, f)?;
        self.0.insert(f.id, ms);
        Ok(ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(level: u32, min: u64, max: u64) -> RemoteLtx {
        let id = LtxId {
            level,
            min_txid: min,
            max_txid: max,
        };
        RemoteLtx::new(id, format!("db/{level}/{min}-{max}"), 10)
    }

    #[test]
    fn only_files_that_follow_are_recorded() {
        let mut t = Tracked::default();
        assert!(t.stored(file(SNAPSHOT_LEVEL, 1, 1), 0));
        assert!(t.stored(file(0, 2, 4), 1));
        assert!(t.stored(file(SNAPSHOT_LEVEL, 1, 4), 2));
        assert!(
            !t.stored(file(0, 6, 6), 3),
            "a hole means someone else wrote"
        );
        assert!(
            !t.stored(file(1, 2, 4), 3),
            "watch stores level 0 and 9 only"
        );
        assert_eq!(t.latest(), 4);
        assert_eq!(t.files().len(), 3);
    }
}
