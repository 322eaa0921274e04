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
//! 0), nor any level-0 file younger than `l0_retention`. Inside the window
//! level 0 is kept whole, and the top level; a middle-level file there
//! goes once the next level has merged it. Compacted files are
//! stored before anything is deleted, so a pass killed at any point leaves
//! a replica that restores every promised TXID; the next pass carries on.
//! Level n−1 files not yet merged into level n are kept too, so level n
//! always chains.
//!
//! # Requests
//!
//! A pass works on a [`Tracked`] replica. Apart from the listing that
//! builds one, it makes requests only for work it does: reading the inputs
//! of a merge, storing the merged file, one batched delete, and reading
//! once the commit time of a file it did not store. A pass with nothing to
//! do makes none.

pub mod merge;
pub mod policy;
pub mod tracked;

use crate::cancel::CancelToken;
use crate::catalog::RemoteLtx;
use crate::error::{Error, IoContext, Result};
use crate::fetch::Staging;
use crate::plan;
use crate::storage::{LtxId, Storage, SNAPSHOT_LEVEL};
use policy::{Retention, Snapshot};
use std::collections::{BTreeSet, HashSet};
use std::time::Duration;
pub use tracked::Tracked;

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

impl PassReport {
    /// Whether the pass wrote or deleted anything.
    /// The report as `walsync compact --json` prints it (one object).
    pub fn to_json(&self, mode: Mode) -> serde_json::Value {
        serde_json::json!({
            "name": self.name,
            "dry_run": mode == Mode::DryRun,
            "compacted": self.compacted.iter().map(|c| serde_json::json!({
                "level": c.id.level,
                "min_txid": c.id.min_txid,
                "max_txid": c.id.max_txid,
                "inputs": c.inputs,
                "input_bytes": c.input_bytes,
                "bytes": c.bytes,
            })).collect::<Vec<_>>(),
            "deleted": self.deleted.iter().map(|(key, size)| serde_json::json!({"key": key, "bytes": size})).collect::<Vec<_>>(),
            "files_after": self.files_after,
            "bytes_after": self.bytes_after,
            "window_starts_at": self.window_starts_at,
            "snapshots_kept": self.snapshots_kept,
        })
    }

    pub fn did_work(&self) -> bool {
        !self.compacted.is_empty() || !self.deleted.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compaction {
    pub id: LtxId,
    pub inputs: usize,
    pub input_bytes: u64,
    /// The merged file's size (the inputs' total on a dry run).
    pub bytes: u64,
}

/// One compaction and retention pass over database `name`'s replica as
/// `tracked` holds it, at `now_ms`; `tracked` follows what the pass does.
pub fn pass(
    storage: &dyn Storage,
    name: &str,
    tracked: &mut Tracked,
    retention: &Retention,
    now_ms: i64,
    mode: Mode,
    cancel: &CancelToken,
) -> Result<PassReport> {
    let mut report = PassReport {
        name: name.to_string(),
        ..PassReport::default()
    };
    if tracked.files().is_empty() {
        return Err(Error::Restore(format!(
            "no backups for '{name}' in {}; check the name with `walsync list`",
            storage.describe()
        )));
    }
    let mut staging = None;
    for (i, interval) in retention.levels.iter().enumerate().take(8) {
        let level = i as u32 + 1;
        let Some(inputs) = due_inputs(storage, tracked, level, *interval, now_ms)? else {
            continue;
        };
        if staging.is_none() {
            staging = Some(Staging::temporary("compact")?);
        }
        let Some(staging) = &staging else { continue };
        let (compaction, time_ms) = compact(
            storage, name, tracked, &inputs, level, mode, staging, cancel,
        )?;
        let file = RemoteLtx::new(
            compaction.id,
            storage.layout().ltx_key(name, compaction.id),
            compaction.bytes,
        );
        tracked.add(file, time_ms);
        report.compacted.push(compaction);
    }
    let doomed = doomed(storage, tracked, retention, now_ms, &mut report)?;
    if mode == Mode::Apply && !doomed.is_empty() {
        let mut keys: Vec<String> = Vec::with_capacity(doomed.len());
        for f in &doomed {
            keys.push(f.key.clone());
            if f.image && f.id.level != SNAPSHOT_LEVEL {
                keys.push(storage.layout().image_marker_key(name, f.id));
            }
        }
        storage.delete_many(&keys)?;
    }
    report.deleted = doomed.iter().map(|f| (f.key.clone(), f.size)).collect();
    let gone: HashSet<&str> = doomed.iter().map(|f| f.key.as_str()).collect();
    tracked.remove(&gone);
    report.files_after = tracked.files().len();
    report.bytes_after = tracked.files().iter().map(|f| f.size).sum();
    Ok(report)
}

/// The newest file of `level`, if it has one.
fn newest_of(files: &[RemoteLtx], level: u32) -> Option<&RemoteLtx> {
    files
        .iter()
        .filter(|f| f.id.level == level)
        .max_by_key(|f| f.id.max_txid)
}

/// The level n−1 files not yet merged into `level` (those after its
/// newest file), oldest first.
fn unmerged_below(files: &[RemoteLtx], level: u32) -> Vec<&RemoteLtx> {
    let after = newest_of(files, level).map_or(0, |f| f.id.max_txid);
    let mut below: Vec<&RemoteLtx> = files
        .iter()
        .filter(|f| f.id.level == level - 1 && f.id.min_txid > after)
        .collect();
    below.sort_by_key(|f| f.id.min_txid);
    below
}

/// When a compaction into `level` is due (Unix ms), if level n−1 has
/// files to merge: `interval` after the newest level-`level` file was
/// committed, or at once when the level has none.
fn compaction_due_ms(
    storage: &dyn Storage,
    tracked: &mut Tracked,
    level: u32,
    interval: Duration,
) -> Result<Option<i64>> {
    if unmerged_below(tracked.files(), level).is_empty() {
        return Ok(None);
    }
    let Some(last) = newest_of(tracked.files(), level).cloned() else {
        return Ok(Some(i64::MIN));
    };
    let written = tracked.time_ms(storage, &last)?;
    Ok(Some(
        written.saturating_add(crate::fsutil::duration_ms(interval)),
    ))
}

/// The level n−1 files a compaction into `level` merges now, if it is due
/// (see [`compaction_due_ms`]): the contiguous run that starts right after
/// the newest level-`level` file (at the first file when there is none).
fn due_inputs(
    storage: &dyn Storage,
    tracked: &mut Tracked,
    level: u32,
    interval: Duration,
    now_ms: i64,
) -> Result<Option<Vec<RemoteLtx>>> {
    match compaction_due_ms(storage, tracked, level, interval)? {
        Some(due) if due <= now_ms => {}
        _ => return Ok(None),
    }
    let files = tracked.files();
    let after = newest_of(files, level).map(|f| f.id.max_txid);
    let mut run: Vec<RemoteLtx> = Vec::new();
    for f in unmerged_below(files, level) {
        let next = match run.last() {
            Some(prev) => prev.id.max_txid + 1,
            // Level n must chain: its next file starts right after its last.
            None => after.map_or(f.id.min_txid, |a| a + 1),
        };
        if f.id.min_txid != next {
            break;
        }
        run.push(f.clone());
    }
    Ok((!run.is_empty()).then_some(run))
}

/// Merges `inputs` into one file of `level` and stores it (on a dry run,
/// only describes it). Returns it with its commit time.
#[allow(clippy::too_many_arguments)]
fn compact(
    storage: &dyn Storage,
    name: &str,
    tracked: &mut Tracked,
    inputs: &[RemoteLtx],
    level: u32,
    mode: Mode,
    staging: &Staging,
    cancel: &CancelToken,
) -> Result<(Compaction, i64)> {
    let input_bytes = inputs.iter().map(|f| f.size).sum();
    let id = merge::merged_id(inputs, level)?;
    if mode == Mode::DryRun {
        let time_ms = match inputs.last() {
            Some(last) => tracked.time_ms(storage, last)?,
            None => 0,
        };
        let compaction = Compaction {
            id,
            inputs: inputs.len(),
            input_bytes,
            bytes: input_bytes,
        };
        return Ok((compaction, time_ms));
    }
    let merged = merge::merge(storage, inputs, level, staging, cancel)?;
    let key = storage.layout().ltx_key(name, merged.id);
    let mut body = std::fs::File::open(&merged.path)
        .local_io(|| format!("opening {}", merged.path.display()))?;
    storage
        .put(&key, &mut body, merged.len, &merged.meta)
        .map_err(|e| e.context(&key))?;
    let _ = std::fs::remove_file(&merged.path);
    let compaction = Compaction {
        id: merged.id,
        inputs: inputs.len(),
        input_bytes,
        bytes: merged.len,
    };
    Ok((compaction, merged.time_ms))
}

/// The TXID a replica restores to as of `at_ms` (0 before its first).
fn txid_as_of(storage: &dyn Storage, tracked: &mut Tracked, at_ms: i64) -> Result<u64> {
    let (files, mut times) = tracked.split();
    let points = plan::commit_points(files);
    let found = plan::txid_at_time_with(&points, at_ms, &mut |f| times.time_ms(storage, f))?;
    Ok(found.map_or(0, |(txid, _)| txid))
}

/// The files retention deletes: those no promised restore needs, proved
/// with the planner's walk. Fills in what the window and policy keep.
fn doomed(
    storage: &dyn Storage,
    tracked: &mut Tracked,
    retention: &Retention,
    now_ms: i64,
    report: &mut PassReport,
) -> Result<Vec<RemoteLtx>> {
    // The state at the window's start: the newest TXID committed by then.
    let window_start = txid_as_of(
        storage,
        tracked,
        now_ms.saturating_sub(crate::fsutil::duration_ms(retention.pitr_window)),
    )?;
    let l0_start = txid_as_of(
        storage,
        tracked,
        now_ms.saturating_sub(crate::fsutil::duration_ms(retention.l0_retention)),
    )?;
    report.window_starts_at = Some(window_start.max(1));
    let kept_snapshots = kept_snapshots(storage, tracked, retention, now_ms)?;
    report.snapshots_kept = kept_snapshots.iter().copied().collect();

    let files = tracked.files();
    let latest = tracked.latest();
    let mut keep: BTreeSet<&str> = BTreeSet::new();
    // In the window: level 0 (every TXID restores from it) and the top
    // level and snapshots (so a restore there reads few files). A file of
    // a middle level the next level has merged adds nothing the window
    // needs. And level 0 while followers read it.
    let top = retention.levels.len().min(8) as u32;
    for f in files {
        let in_window = f.id.max_txid > window_start && (f.id.level == 0 || f.id.level >= top);
        let young_l0 = f.id.level == 0 && f.id.max_txid > l0_start;
        let kept_snapshot = f.id.level == SNAPSHOT_LEVEL && kept_snapshots.contains(&f.id.max_txid);
        if in_window || young_l0 || kept_snapshot {
            keep.insert(&f.key);
        }
    }
    // The newest file of every level, and what the next level has yet to
    // merge (so that level keeps chaining).
    for level in 0..=SNAPSHOT_LEVEL {
        if let Some(f) = newest_of(files, level) {
            keep.insert(&f.key);
        }
    }
    for level in 1..=retention.levels.len().min(8) as u32 {
        keep.extend(
            unmerged_below(files, level)
                .into_iter()
                .map(|f| f.key.as_str()),
        );
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

/// The snapshots the policy keeps, by max TXID.
fn kept_snapshots(
    storage: &dyn Storage,
    tracked: &mut Tracked,
    retention: &Retention,
    now_ms: i64,
) -> Result<BTreeSet<u64>> {
    let snapshots = snapshots_of(storage, tracked)?;
    Ok(policy::snapshots_kept(
        &snapshots,
        now_ms,
        &retention.snapshots,
    ))
}

/// Every snapshot with its commit time.
fn snapshots_of(storage: &dyn Storage, tracked: &mut Tracked) -> Result<Vec<Snapshot>> {
    let (files, mut times) = tracked.split();
    files
        .iter()
        .filter(|f| f.id.level == SNAPSHOT_LEVEL)
        .map(|f| {
            Ok(Snapshot {
                txid: f.id.max_txid,
                time_ms: times.time_ms(storage, f)?,
            })
        })
        .collect()
}

/// How long ago the newest level-0 file was committed (`None` without
/// one; one small read unless its time is known).
pub fn newest_write_age(
    storage: &dyn Storage,
    tracked: &mut Tracked,
    now_ms: i64,
) -> Result<Option<Duration>> {
    let Some(newest) = newest_of(tracked.files(), 0).cloned() else {
        return Ok(None);
    };
    let at = tracked.time_ms(storage, &newest)?;
    let age_ms = u64::try_from(now_ms.saturating_sub(at)).unwrap_or(0);
    Ok(Some(Duration::from_millis(age_ms)))
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

/// Refuses to compact a replica written so recently that a `watch` may be
/// writing it: a watch touches a replica only in answer to writes, at most
/// one compaction interval after them, so a quiet minute (or two shortest
/// intervals) means none is.
pub fn refuse_if_active(
    storage: &dyn Storage,
    name: &str,
    tracked: &mut Tracked,
    retention: &Retention,
    now_ms: i64,
) -> Result<()> {
    let shortest = retention.levels.iter().copied().min().unwrap_or_default();
    let quiet = Duration::from_secs(60).max(shortest * 2);
    let Some(age) = newest_write_age(storage, tracked, now_ms)? else {
        return Ok(());
    };
    if age >= quiet {
        return Ok(());
    }
    Err(Error::Usage(format!(
        "the replica of '{name}' was written {} s ago: a `watch` may be writing it, and a watch with [retention] compacts its own replicas. Run compact on replicas no watch writes (stop the watch and wait {} s), or pass --even-if-active",
        age.as_secs(),
        quiet.as_secs()
    )))
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
        let keys: Vec<String> = mine.iter().map(|(k, _)| k.clone()).collect();
        storage.delete_many(&keys)?;
    }
    Ok(mine)
}
