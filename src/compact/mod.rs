//! Compaction and retention: one pass over a database's replica that
//! merges level n−1 files into level n when level n's interval has passed,
//! then deletes what no promised restore needs.
//!
//! # Levels
//!
//! Level 0 holds one file per sync, levels 1..=8 compactions, level 9
//! snapshots (as Litestream 0.5 lays them out). A compaction into level n
//! merges the contiguous level n−1 files that follow the last level-n file
//! into one level-n file ([`merge`]), so level-n files chain: each starts at
//! the previous one's max TXID + 1.
//!
//! # What may be deleted (the invariant retention keeps)
//!
//! A file is deleted only if every TXID the policy promises ([`policy`])
//! and the replica restores now still restores without it, as proved by
//! [`plan::restorable`], the walk restore's planner uses. The newest file of
//! every level is never deleted (Litestream finds its position from level
//! 0), nor any level-0 file younger than `l0_retention`. Compacted files are
//! stored before anything is deleted, so a pass killed at any point leaves
//! a replica that restores every promised TXID; the next pass carries on.

pub mod merge;
pub mod policy;

use crate::cancel::CancelToken;
use crate::catalog::{self, RemoteLtx};
use crate::error::{Error, IoContext, Result};
use crate::fetch::Staging;
use crate::plan;
use crate::storage::{LtxId, Storage, SNAPSHOT_LEVEL};
use policy::{Retention, Snapshot};
use std::collections::{BTreeSet, HashSet};

/// Whether a pass changes the replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Only says what it would write and delete.
    DryRun,
    Apply,
}

/// What a pass wrote (or would write) and deleted (or would delete).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PassReport {
    pub name: String,
    /// One per compaction: the file written and how many files it merged.
    pub compacted: Vec<Compaction>,
    /// The keys deleted, with their sizes.
    pub deleted: Vec<(String, u64)>,
    /// Files and bytes the replica holds after the pass.
    pub files_after: usize,
    pub bytes_after: u64,
    /// The oldest TXID the window promises.
    pub window_starts_at: Option<u64>,
    /// The snapshots the policy keeps beyond the window.
    pub snapshots_kept: Vec<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compaction {
    pub id: LtxId,
    pub inputs: usize,
    pub input_bytes: u64,
    /// The merged file's size (the inputs' total on a dry run).
    pub bytes: u64,
}

/// One compaction and retention pass over database `name` at `now_ms`.
pub fn pass(
    storage: &dyn Storage,
    name: &str,
    retention: &Retention,
    now_ms: i64,
    mode: Mode,
    cancel: &CancelToken,
) -> Result<PassReport> {
    let mut files = catalog::list_db(storage, name)?;
    let mut report = PassReport {
        name: name.to_string(),
        ..PassReport::default()
    };
    if files.is_empty() {
        return Err(Error::Restore(format!(
            "no backups for '{name}' in {}; check the name with `walsync list`",
            storage.describe()
        )));
    }
    let staging = Staging::temporary("compact")?;
    for (i, interval) in retention.levels.iter().enumerate().take(8) {
        let level = i as u32 + 1;
        let Some(inputs) = due_inputs(storage, &files, level, *interval, now_ms)? else {
            continue;
        };
        let compaction = compact(storage, name, &inputs, level, mode, &staging, cancel)?;
        files.push(RemoteLtx::new(
            compaction.id,
            storage.layout().ltx_key(name, compaction.id),
            compaction.bytes,
        ));
        report.compacted.push(compaction);
    }
    let doomed = doomed(storage, &files, retention, now_ms, &mut report)?;
    for f in &doomed {
        if mode == Mode::Apply {
            storage.delete(&f.key)?;
            if f.image && f.id.level != SNAPSHOT_LEVEL {
                storage.delete(&storage.layout().image_marker_key(name, f.id))?;
            }
        }
        report.deleted.push((f.key.clone(), f.size));
    }
    let gone: HashSet<&str> = doomed.iter().map(|f| f.key.as_str()).collect();
    let left: Vec<&RemoteLtx> = files
        .iter()
        .filter(|f| !gone.contains(f.key.as_str()))
        .collect();
    report.files_after = left.len();
    report.bytes_after = left.iter().map(|f| f.size).sum();
    Ok(report)
}

/// The level n−1 files a compaction into `level` merges now, if it is due:
/// `interval` has passed since the last level-`level` file was written (or
/// there is none), and level n−1 has files after it. They are the
/// contiguous run that starts at the first such file.
fn due_inputs(
    storage: &dyn Storage,
    files: &[RemoteLtx],
    level: u32,
    interval: std::time::Duration,
    now_ms: i64,
) -> Result<Option<Vec<RemoteLtx>>> {
    let last = files
        .iter()
        .filter(|f| f.id.level == level)
        .max_by_key(|f| f.id.max_txid);
    if let Some(last) = last {
        let written = plan::file_time_ms(storage, last)?;
        let interval_ms = i64::try_from(interval.as_millis()).unwrap_or(i64::MAX);
        if now_ms.saturating_sub(written) < interval_ms {
            return Ok(None);
        }
    }
    let after = last.map_or(0, |f| f.id.max_txid);
    let mut below: Vec<&RemoteLtx> = files
        .iter()
        .filter(|f| f.id.level == level - 1 && f.id.min_txid > after)
        .collect();
    below.sort_by_key(|f| f.id.min_txid);
    let mut run: Vec<RemoteLtx> = Vec::new();
    for f in below {
        match run.last() {
            Some(prev) if f.id.min_txid != prev.id.max_txid + 1 => break,
            _ => run.push(f.clone()),
        }
    }
    Ok((!run.is_empty()).then_some(run))
}

/// Merges `inputs` into one file of `level` and stores it (on a dry run,
/// only describes it).
fn compact(
    storage: &dyn Storage,
    name: &str,
    inputs: &[RemoteLtx],
    level: u32,
    mode: Mode,
    staging: &Staging,
    cancel: &CancelToken,
) -> Result<Compaction> {
    let input_bytes = inputs.iter().map(|f| f.size).sum();
    let id = merge::merged_id(inputs, level)?;
    if mode == Mode::DryRun {
        return Ok(Compaction {
            id,
            inputs: inputs.len(),
            input_bytes,
            bytes: input_bytes,
        });
    }
    let merged = merge::merge(storage, inputs, level, staging, cancel)?;
    let key = storage.layout().ltx_key(name, merged.id);
    let mut body = std::fs::File::open(&merged.path)
        .local_io(|| format!("opening {}", merged.path.display()))?;
    storage
        .put(&key, &mut body, merged.len, &merged.meta)
        .map_err(|e| e.context(&key))?;
    let _ = std::fs::remove_file(&merged.path);
    Ok(Compaction {
        id: merged.id,
        inputs: inputs.len(),
        input_bytes,
        bytes: merged.len,
    })
}

/// The files retention deletes: those no promised restore needs, proved
/// with the planner's walk. Fills in what the window and policy keep.
fn doomed(
    storage: &dyn Storage,
    files: &[RemoteLtx],
    retention: &Retention,
    now_ms: i64,
    report: &mut PassReport,
) -> Result<Vec<RemoteLtx>> {
    let latest = files.iter().map(|f| f.id.max_txid).max().unwrap_or(0);
    let ms = |d: std::time::Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    // The state at the window's start: the newest TXID committed by then.
    let points = plan::commit_points(files);
    let at = |cutoff: i64| -> Result<u64> {
        Ok(plan::txid_at_time(storage, &points, cutoff)?.map_or(0, |(txid, _)| txid))
    };
    let window_start = at(now_ms.saturating_sub(ms(retention.pitr_window)))?;
    let l0_start = at(now_ms.saturating_sub(ms(retention.l0_retention)))?;
    report.window_starts_at = Some(window_start.max(1));
    let snapshots: Vec<Snapshot> = files
        .iter()
        .filter(|f| f.id.level == SNAPSHOT_LEVEL)
        .map(|f| {
            Ok(Snapshot {
                txid: f.id.max_txid,
                time_ms: plan::file_time_ms(storage, f)?,
            })
        })
        .collect::<Result<_>>()?;
    let kept_snapshots = policy::snapshots_kept(&snapshots, now_ms, &retention.snapshots);
    report.snapshots_kept = kept_snapshots.iter().copied().collect();

    let mut keep: BTreeSet<&str> = BTreeSet::new();
    // Everything the window may need, and level 0 while followers read it.
    for f in files {
        let in_window = f.id.max_txid > window_start;
        let young_l0 = f.id.level == 0 && f.id.max_txid > l0_start;
        let kept_snapshot = f.id.level == SNAPSHOT_LEVEL && kept_snapshots.contains(&f.id.max_txid);
        if in_window || young_l0 || kept_snapshot {
            keep.insert(&f.key);
        }
    }
    // The newest file of every level.
    for level in 0..=SNAPSHOT_LEVEL {
        if let Some(f) = files
            .iter()
            .filter(|f| f.id.level == level)
            .max_by_key(|f| f.id.max_txid)
        {
            keep.insert(&f.key);
        }
    }
    // The chain that restores the window's first TXID.
    if window_start >= 1 {
        if let Ok(chain) = plan::plan_chain(files, window_start) {
            for f in chain {
                if let Some(known) = files.iter().find(|k| k.key == f.key) {
                    keep.insert(&known.key);
                }
            }
        }
    }
    let kept: Vec<RemoteLtx> = files
        .iter()
        .filter(|f| keep.contains(f.key.as_str()))
        .cloned()
        .collect();
    prove(files, &kept, window_start.max(1), latest, &kept_snapshots)?;
    Ok(files
        .iter()
        .filter(|f| !keep.contains(f.key.as_str()))
        .cloned()
        .collect())
}

/// Fails unless every promised TXID that restores from `files` still
/// restores from `kept`: the window `from..=latest` and the kept snapshots.
fn prove(
    files: &[RemoteLtx],
    kept: &[RemoteLtx],
    from: u64,
    latest: u64,
    snapshots: &BTreeSet<u64>,
) -> Result<()> {
    let before = plan::restorable(files);
    let after = plan::restorable(kept);
    let promised = (from..=latest).chain(snapshots.iter().copied());
    if let Some(lost) = promised
        .filter(|t| before.contains(t))
        .find(|t| !after.contains(t))
    {
        return Err(Error::Other(format!(
            "retention would leave TXID {} unrestorable; nothing was deleted (a walsync bug: please report it)",
            plan::txid_hex(lost)
        )));
    }
    Ok(())
}

/// Deletes every object of database `name` (its LTX files, markers and
/// source record); on a dry run only lists them. Returns keys and sizes.
pub fn delete_replica(storage: &dyn Storage, name: &str, mode: Mode) -> Result<Vec<(String, u64)>> {
    let objects = storage.list(&crate::storage::db_prefix(name))?;
    let layout = storage.layout();
    let source = crate::watch::identity::record_key(name);
    let mine: Vec<(String, u64)> = objects
        .into_iter()
        .filter(|o| o.key == source || layout.parse_db_key(name, &o.key).is_some())
        .map(|o| (o.key, o.size))
        .collect();
    if mode == Mode::Apply {
        for (key, _) in &mine {
            storage.delete(key)?;
        }
    }
    Ok(mine)
}
