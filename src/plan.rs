//! Restore planning: which LTX files rebuild a database at a target TXID,
//! and when each TXID was committed (for `--point-in-time` and `list`).
//!
//! A plan is one full image (a snapshot, i.e. a file with min TXID 1,
//! normally level 9, or a level-0 full copy walsync marked) followed by files
//! of any level whose TXID ranges continue it without a gap
//! (`next.min_txid == current_max + 1`) up to exactly the target TXID.

use crate::catalog::RemoteLtx;
use crate::error::{Error, Result};
use crate::ltx::{Header, HEADER_SIZE};
use crate::storage::{Layout, Storage};
use std::collections::HashMap;

/// `%016x` with a `0x` prefix, the form TXIDs take in messages.
pub fn txid_hex(txid: u64) -> String {
    format!("0x{txid:016x}")
}

/// Why no chain of files restores exactly the target TXID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanFailure {
    /// The replica holds no file of the database.
    NoBackups,
    /// The target is 0 or beyond the newest TXID stored.
    OutOfRange { latest: u64 },
    /// No full image (snapshot or marked full copy) at or before the
    /// target; `oldest` is the oldest image's TXID, if there is one.
    NoImage { oldest: Option<u64> },
    /// The target lies inside a compacted file that no finer files cover.
    InsideCompacted(RemoteLtx),
    /// The TXIDs stop short of the target.
    Gap(Gap),
}

/// Where the TXID chain stops short of the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    /// The highest TXID below the target the chain reaches.
    pub last: u64,
    /// The file that reaches it (the image when nothing continues it).
    pub last_file: RemoteLtx,
    /// The min TXID of the first file above the gap, if any.
    pub next_min: Option<u64>,
}

/// The files that restore the database to exactly `target`: the newest full
/// image at or before `target` from which an unbroken chain reaches it, then
/// the chain (fewest files, then fewest bytes).
///
/// A full image is a level-9 snapshot or a level-0 full copy walsync marked
/// ([`RemoteLtx::image`]); starting from the newest one means a restore reads
/// one full copy of the database and the files after it, not every full copy
/// since an old snapshot. The chain after it may use files of any level.
///
/// This is the one planner: restore, verify and retention (through
/// [`restorable`], the same walk) all ask it, so what one of them proves
/// restorable is what the others restore.
pub fn plan_chain(files: &[RemoteLtx], target: u64) -> Result<Vec<RemoteLtx>, PlanFailure> {
    let latest = files.iter().map(|f| f.id.max_txid).max().unwrap_or(0);
    if files.is_empty() {
        return Err(PlanFailure::NoBackups);
    }
    if target == 0 || target > latest {
        return Err(PlanFailure::OutOfRange { latest });
    }
    let mut images: Vec<&RemoteLtx> = files
        .iter()
        .filter(|f| f.image && f.id.max_txid <= target)
        .collect();
    if images.is_empty() {
        let oldest = files
            .iter()
            .filter(|f| f.image)
            .map(|f| f.id.max_txid)
            .min();
        return Err(PlanFailure::NoImage { oldest });
    }
    // Newest first; for equal TXIDs the smaller object.
    images.sort_by_key(|f| (std::cmp::Reverse(f.id.max_txid), f.size, f.id.level));
    let mut links: Vec<&RemoteLtx> = files
        .iter()
        .filter(|f| f.id.min_txid > 1 && f.id.max_txid <= target)
        .collect();
    links.sort_by_key(|f| (f.id.min_txid, f.id.max_txid, f.id.level));
    for image in &images {
        if let Some(chain) = chain_from(image, &links, target) {
            return Ok(chain);
        }
    }
    Err(why_unreachable(files, images[0], target))
}

/// [`plan_chain`], with a failure turned into the error a command reports.
/// `name` and `url` are for messages. Errors:
/// - no image at or before `target`, or `target` inside a compacted file
///   that no finer files cover: [`Error::Restore`];
/// - a gap in the TXIDs between the image and `target`: [`Error::Integrity`].
pub fn plan(files: &[RemoteLtx], target: u64, name: &str, url: &str) -> Result<Vec<RemoteLtx>> {
    plan_chain(files, target).map_err(|f| f.into_error(name, url, target))
}

/// Every TXID some plan restores from `files`: the ones [`plan_chain`]
/// finds a chain for, by the same walk. Retention proves with it that a
/// replica without the files it deletes still restores every TXID it
/// promises.
pub fn restorable(files: &[RemoteLtx]) -> std::collections::HashSet<u64> {
    let mut links: Vec<&RemoteLtx> = files.iter().filter(|f| f.id.min_txid > 1).collect();
    links.sort_by_key(|f| (f.id.min_txid, f.id.max_txid, f.id.level));
    let mut reached = std::collections::HashSet::new();
    for image in files.iter().filter(|f| f.image) {
        reached.extend(walk(image, &links).into_keys());
    }
    reached
}

/// Shortest chain (files, then bytes) from `image` to `target`, if any.
fn chain_from(image: &RemoteLtx, links: &[&RemoteLtx], target: u64) -> Option<Vec<RemoteLtx>> {
    let best = walk(image, links);
    best.get(&target)?;
    let mut chain = Vec::new();
    let mut at = target;
    while let Some(&Reach {
        from: Some((i, before)),
        ..
    }) = best.get(&at)
    {
        chain.push(links[i].clone());
        at = before;
    }
    chain.push(image.clone());
    chain.reverse();
    Some(chain)
}

/// How a chain reaches a TXID: its length and bytes, and the link that
/// ends it with the TXID it was applied at (`None`: the image).
#[derive(Debug, Clone, Copy)]
struct Reach {
    files: u64,
    bytes: u64,
    from: Option<(usize, u64)>,
}

/// The TXIDs a chain from `image` through `links` reaches, each with its
/// shortest chain (files, then bytes).
///
/// A file of TXIDs `min..=max` continues a state at TXID `p` when
/// `min - 1 <= p < max`: it holds the newest version of every page changed
/// in `min..=max`, so of every page changed after `p`, and the database
/// size at `max`. Litestream's compactions overlap what precedes them this
/// way (a level-1 file may start at the snapshot's TXID); a level-0 file
/// (`min == max`) continues only `max - 1`.
fn walk(image: &RemoteLtx, links: &[&RemoteLtx]) -> HashMap<u64, Reach> {
    let mut best: std::collections::BTreeMap<u64, Reach> = std::collections::BTreeMap::new();
    best.insert(
        image.id.max_txid,
        Reach {
            files: 1,
            bytes: image.size,
            from: None,
        },
    );
    // By max TXID: every TXID below a file's max is final when it is used.
    let mut order: Vec<usize> = (0..links.len()).collect();
    order.sort_by_key(|&i| {
        (
            links[i].id.max_txid,
            links[i].id.min_txid,
            links[i].id.level,
        )
    });
    for i in order {
        let f = links[i];
        if f.id.max_txid <= image.id.max_txid || f.id.min_txid == 0 {
            continue;
        }
        let Some((&at, reach)) = best
            .range(f.id.min_txid - 1..f.id.max_txid)
            .min_by_key(|(_, r)| (r.files, r.bytes))
        else {
            continue;
        };
        // Sizes come from a listing: a lying server must not overflow them.
        let cand = Reach {
            files: reach.files + 1,
            bytes: reach.bytes.saturating_add(f.size),
            from: Some((i, at)),
        };
        let better = match best.get(&f.id.max_txid) {
            Some(b) => (cand.files, cand.bytes) < (b.files, b.bytes),
            None => true,
        };
        if better {
            best.insert(f.id.max_txid, cand);
        }
    }
    best.into_iter().collect()
}

/// Why no chain from the newest usable image reaches `target`: inside a
/// compacted file, or a gap (named by the furthest TXID below the target
/// that files continuing the image reach).
fn why_unreachable(files: &[RemoteLtx], image: &RemoteLtx, target: u64) -> PlanFailure {
    let mut all: Vec<&RemoteLtx> = files.iter().filter(|f| f.id.min_txid > 1).collect();
    all.sort_by_key(|f| (f.id.min_txid, f.id.max_txid, f.id.level));
    let best = walk(image, &all);
    let reached = |from: u64, to: u64| best.keys().any(|&p| from <= p && p < to);
    if let Some(f) = all.iter().find(|f| {
        f.id.min_txid <= target && target < f.id.max_txid && reached(f.id.min_txid - 1, target)
    }) {
        return PlanFailure::InsideCompacted((*f).clone());
    }
    // The image itself is below the target, so this always finds one.
    let last = best
        .keys()
        .copied()
        .filter(|&b| b < target)
        .max()
        .unwrap_or(image.id.max_txid);
    let last_file = match best.get(&last).and_then(|r| r.from) {
        Some((i, _)) => all[i].clone(),
        None => image.clone(),
    };
    let next_min = files
        .iter()
        .map(|f| f.id.min_txid)
        .filter(|&m| m > last + 1)
        .min();
    PlanFailure::Gap(Gap {
        last,
        last_file,
        next_min,
    })
}

impl PlanFailure {
    /// The error a command reports for this failure (see [`plan`]).
    pub fn into_error(self, name: &str, url: &str, target: u64) -> Error {
        match self {
            PlanFailure::NoBackups => Error::Restore(format!(
                "no backups for '{name}' in {url}; check the name with `walsync list -b {url}`"
            )),
            PlanFailure::OutOfRange { latest } => Error::Restore(format!(
                "nothing to restore at TXID {target} for '{name}': the replica holds TXIDs up to {} ({latest}); pick a TXID in that range",
                txid_hex(latest)
            )),
            PlanFailure::NoImage { oldest: Some(t) } => Error::Restore(format!(
                "nothing to restore at that point for '{name}' in {url}: the oldest snapshot is at TXID {} ({t}), after the target TXID {} ({target})",
                txid_hex(t),
                txid_hex(target)
            )),
            PlanFailure::NoImage { oldest: None } => Error::Restore(format!(
                "nothing to restore for '{name}' in {url}: the replica holds no snapshot (no file starting at TXID 1); run `walsync snapshot` on the source"
            )),
            PlanFailure::InsideCompacted(f) => Error::Restore(format!(
                "TXID {} of '{name}' cannot be restored exactly: it lies inside {} (TXIDs {}..{}), and no finer files remain; restore --txid {} or --txid {} instead",
                txid_hex(target),
                f.key,
                txid_hex(f.id.min_txid),
                txid_hex(f.id.max_txid),
                f.id.min_txid - 1,
                f.id.max_txid
            )),
            PlanFailure::Gap(gap) => {
                let missing = match gap.next_min {
                    Some(n) => format!(
                        "TXIDs {}..{} are missing; the next file starts at {}",
                        txid_hex(gap.last + 1),
                        txid_hex(n - 1),
                        txid_hex(n)
                    ),
                    None => format!(
                        "TXIDs {}..{} are missing",
                        txid_hex(gap.last + 1),
                        txid_hex(target)
                    ),
                };
                Error::Integrity(format!(
                    "gap in replica '{name}' ({url}): no file starts at TXID {} after {} ({missing}); restore an earlier state with --txid {}, or take a new snapshot of the source with `walsync snapshot`",
                    txid_hex(gap.last + 1),
                    gap.last_file.key,
                    gap.last
                ))
            }
        }
    }
}

/// When the transaction `f.max_txid` was committed, in Unix milliseconds:
/// from the object's timestamp metadata where walsync or Litestream stored
/// one, else from the LTX header (a 100-byte range read).
pub fn file_time_ms(storage: &dyn Storage, f: &RemoteLtx) -> Result<i64> {
    let head = storage
        .head(&f.key)?
        .ok_or_else(|| missing(storage, &f.key))?;
    // A file replica without walsync's sidecar reports the file's mtime,
    // which is not the commit time: read the header then.
    let trusted = !(storage.layout() == Layout::File && head.meta.sha256.is_none());
    if trusted {
        if let Some(ms) = head
            .meta
            .timestamp
            .as_deref()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
            .map(|t| t.as_millisecond())
        {
            return Ok(ms);
        }
    }
    Ok(read_header(storage, &f.key)?.timestamp_ms)
}

/// Reads and decodes the 100-byte LTX header of `key`.
pub fn read_header(storage: &dyn Storage, key: &str) -> Result<Header> {
    let bytes = storage
        .get_range(key, 0, HEADER_SIZE as u64)?
        .ok_or_else(|| missing(storage, key))?;
    let arr: [u8; HEADER_SIZE] = bytes.as_slice().try_into().map_err(|_| {
        Error::Integrity(format!(
            "object {key} is {} bytes, shorter than an LTX header",
            bytes.len()
        ))
    })?;
    Header::decode(&arr).map_err(|e| e.context(format!("object {key}")))
}

fn missing(storage: &dyn Storage, key: &str) -> Error {
    replica_changed(storage, key)
}

/// A listed object that is gone: retention or compaction changed the
/// replica while a command read it. Nothing was restored from a mixture;
/// running the command again plans from the replica as it is now.
pub fn replica_changed(storage: &dyn Storage, key: &str) -> Error {
    Error::Restore(format!(
        "replica changed under the command: object {key} was listed in {} but is gone (deleted by retention or compaction); run it again",
        storage.describe()
    ))
}

/// For each distinct max TXID (ascending), the file best describing when it
/// was committed: the lowest level (level 0 is written at commit time; a
/// snapshot may be taken much later).
pub fn commit_points(files: &[RemoteLtx]) -> Vec<&RemoteLtx> {
    let mut by_max: std::collections::BTreeMap<u64, &RemoteLtx> = Default::default();
    for f in files {
        by_max
            .entry(f.id.max_txid)
            .and_modify(|cur| {
                if f.id.level < cur.id.level {
                    *cur = f;
                }
            })
            .or_insert(f);
    }
    by_max.into_values().collect()
}

/// The largest TXID committed at or before `at_ms`, found by binary search
/// over the commit points (timestamps grow with TXIDs), reading one
/// timestamp per probe. `None` when even the first point is later.
pub fn txid_at_time(
    storage: &dyn Storage,
    points: &[&RemoteLtx],
    at_ms: i64,
) -> Result<Option<(u64, i64)>> {
    txid_at_time_with(points, at_ms, &mut |f| file_time_ms(storage, f))
}

/// [`txid_at_time`] with the commit time of a file told by `time_of`
/// (which may know it without a request).
pub fn txid_at_time_with(
    points: &[&RemoteLtx],
    at_ms: i64,
    time_of: &mut dyn FnMut(&RemoteLtx) -> Result<i64>,
) -> Result<Option<(u64, i64)>> {
    let (mut lo, mut hi) = (0usize, points.len());
    let mut found = None;
    // Invariant: points[..lo] are at or before at_ms, points[hi..] after.
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let ts = time_of(points[mid])?;
        if ts <= at_ms {
            found = Some((points[mid].id.max_txid, ts));
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    Ok(found)
}

/// The next step to suggest when a stored object is damaged.
pub fn damaged_object_hint(f: &RemoteLtx) -> String {
    if f.id.min_txid > 1 {
        format!(
            "; the replica copy is damaged: restore the state before it with --txid {}, and take a fresh snapshot of the source (`walsync snapshot`)",
            f.id.min_txid - 1
        )
    } else {
        "; the replica copy of this snapshot is damaged: restore from an older snapshot with --txid, and take a fresh snapshot of the source (`walsync snapshot`)".into()
    }
}

/// `None` when an LTX header holds the TXIDs its object's name says, else
/// what differs (a renamed or misplaced object is damage).
pub fn name_mismatch(f: &RemoteLtx, min_txid: u64, max_txid: u64) -> Option<String> {
    ((min_txid, max_txid) != (f.id.min_txid, f.id.max_txid)).then(|| {
        format!(
            "holds TXIDs {}..{} but its name says {}..{}",
            txid_hex(min_txid),
            txid_hex(max_txid),
            txid_hex(f.id.min_txid),
            txid_hex(f.id.max_txid)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::LtxId;

    fn f(level: u32, min: u64, max: u64) -> RemoteLtx {
        let id = LtxId {
            level,
            min_txid: min,
            max_txid: max,
        };
        let key = format!("db/{level:04x}/{min:016x}-{max:016x}.ltx");
        RemoteLtx::new(id, key, if min == 1 { 1000 } else { 10 })
    }

    /// A level-0 full copy walsync marked as an image.
    fn image(txid: u64) -> RemoteLtx {
        RemoteLtx {
            image: true,
            size: 900,
            ..f(0, txid, txid)
        }
    }

    fn ids(chain: &[RemoteLtx]) -> Vec<(u32, u64, u64)> {
        chain
            .iter()
            .map(|f| (f.id.level, f.id.min_txid, f.id.max_txid))
            .collect()
    }

    /// Found by fuzzing (fuzz/regressions/s3_list_xml): sizes a listing
    /// gives are summed, and a server may send any.
    #[test]
    fn listed_sizes_that_would_overflow_do_not_panic() {
        let files = vec![
            RemoteLtx {
                size: u64::MAX,
                ..f(9, 1, 1)
            },
            RemoteLtx {
                size: 1,
                ..f(0, 2, 2)
            },
        ];
        let p = plan(&files, 2, "db", "file:///r").unwrap();
        assert_eq!(ids(&p), vec![(9, 1, 1), (0, 2, 2)]);
    }

    #[test]
    fn snapshot_then_level0() {
        let files = vec![
            f(9, 1, 3),
            f(0, 1, 1),
            f(0, 2, 2),
            f(0, 3, 3),
            f(0, 4, 4),
            f(0, 5, 5),
        ];
        let p = plan(&files, 5, "db", "file:///r").unwrap();
        assert_eq!(ids(&p), vec![(9, 1, 3), (0, 4, 4), (0, 5, 5)]);
        // Before the level-9 snapshot: the level-0 snapshot 1-1 and the chain.
        let p = plan(&files, 2, "db", "file:///r").unwrap();
        assert_eq!(ids(&p), vec![(0, 1, 1), (0, 2, 2)]);
    }

    #[test]
    fn compacted_files_shorten_the_chain_and_fill_gaps() {
        let files = vec![
            f(9, 1, 2),
            f(0, 3, 3),
            f(0, 4, 4),
            f(0, 6, 6),
            f(1, 3, 6),
            f(0, 7, 7),
        ];
        assert_eq!(
            ids(&plan(&files, 7, "db", "u").unwrap()),
            vec![(9, 1, 2), (1, 3, 6), (0, 7, 7)]
        );
        // TXID 4 is reachable through the level-0 files.
        assert_eq!(
            ids(&plan(&files, 4, "db", "u").unwrap()),
            vec![(9, 1, 2), (0, 3, 3), (0, 4, 4)]
        );
        // TXID 5 only exists inside the compacted 3-6.
        let e = plan(&files, 5, "db", "u").unwrap_err();
        assert_eq!(e.exit_code(), 6, "{e}");
        assert!(e.message().contains("inside"), "{e}");
    }

    #[test]
    fn greedy_dead_end_is_avoided() {
        // Going furthest first (3-6) leads nowhere; 3-4 then 5-8 does.
        let files = vec![f(9, 1, 2), f(1, 3, 6), f(0, 3, 4), f(1, 5, 8)];
        assert_eq!(
            ids(&plan(&files, 8, "db", "u").unwrap()),
            vec![(9, 1, 2), (0, 3, 4), (1, 5, 8)]
        );
    }

    #[test]
    fn gaps_are_named() {
        let files = vec![f(9, 1, 2), f(0, 3, 3), f(0, 6, 6), f(0, 7, 7)];
        let e = plan(&files, 7, "db", "u").unwrap_err();
        assert_eq!(e.exit_code(), 5, "{e}");
        let m = e.message();
        assert!(m.contains("gap"), "{m}");
        assert!(m.contains("0x0000000000000004"), "{m}");
        assert!(
            m.contains("db/0000/0000000000000003-0000000000000003.ltx"),
            "{m}"
        );
        // Up to the gap still restores.
        assert_eq!(plan(&files, 3, "db", "u").unwrap().len(), 2);
    }

    #[test]
    fn gaps_name_the_last_file_and_the_next_start() {
        let files = vec![f(9, 1, 2), f(0, 3, 3), f(0, 6, 6), f(0, 7, 7)];
        let Err(PlanFailure::Gap(g)) = plan_chain(&files, 7) else {
            panic!("a gap")
        };
        assert_eq!((g.last, g.next_min), (3, Some(6)));
        assert_eq!((g.last_file.id.min_txid, g.last_file.id.max_txid), (3, 3));
        assert!(plan_chain(&files, 3).is_ok());
        // No snapshot: no gap to name.
        assert_eq!(
            plan_chain(&[f(0, 2, 2)], 2),
            Err(PlanFailure::NoImage { oldest: None })
        );
    }

    #[test]
    fn restores_start_from_the_newest_full_image() {
        // Snapshot 1-2, then level-0 files with full copies at 5 and 8.
        let mut files = vec![f(9, 1, 2), f(0, 3, 3), f(0, 4, 4)];
        files.extend([image(5), f(0, 6, 6), f(0, 7, 7), image(8), f(0, 9, 9)]);
        assert_eq!(
            ids(&plan(&files, 9, "db", "u").unwrap()),
            vec![(0, 8, 8), (0, 9, 9)]
        );
        assert_eq!(
            ids(&plan(&files, 7, "db", "u").unwrap()),
            vec![(0, 5, 5), (0, 6, 6), (0, 7, 7)]
        );
        assert_eq!(
            ids(&plan(&files, 4, "db", "u").unwrap()),
            vec![(9, 1, 2), (0, 3, 3), (0, 4, 4)]
        );
        // An unmarked full copy is just a link of the chain.
        let unmarked: Vec<RemoteLtx> = files
            .iter()
            .map(|x| RemoteLtx {
                image: x.id.min_txid == 1,
                ..x.clone()
            })
            .collect();
        assert_eq!(plan(&unmarked, 9, "db", "u").unwrap().len(), 8);
        // A gap before an image does not matter to the states after it.
        files.retain(|x| x.id.min_txid != 6);
        assert_eq!(plan(&files, 9, "db", "u").unwrap().len(), 2);
        assert_eq!(plan(&files, 7, "db", "u").unwrap_err().exit_code(), 5);
    }

    #[test]
    fn a_compaction_overlapping_the_newest_snapshot_continues_it() {
        // Litestream writes these: level 1 3-6 holds every page changed in
        // 3..=6, so it carries snapshot 1-4 to 6.
        let files = vec![f(9, 1, 2), f(9, 1, 4), f(1, 3, 6)];
        assert_eq!(
            ids(&plan(&files, 6, "db", "u").unwrap()),
            vec![(9, 1, 4), (1, 3, 6)]
        );
        // A level-0 file continues only the TXID right before it.
        let files = vec![f(9, 1, 4), f(0, 4, 4), f(0, 6, 6)];
        assert!(plan(&files, 6, "db", "u").is_err());
    }

    #[test]
    fn a_target_before_the_newest_snapshot_starts_from_an_older_one() {
        let files = vec![f(9, 1, 2), f(9, 1, 6), f(0, 3, 3), f(0, 4, 4)];
        assert_eq!(
            ids(&plan(&files, 4, "db", "u").unwrap()),
            vec![(9, 1, 2), (0, 3, 3), (0, 4, 4)]
        );
    }

    #[test]
    fn nothing_before_the_first_snapshot() {
        let files = vec![f(9, 1, 5), f(0, 6, 6)];
        let e = plan(&files, 3, "db", "u").unwrap_err();
        assert_eq!(e.exit_code(), 6);
        let e = plan(&files, 9, "db", "u").unwrap_err();
        assert_eq!(e.exit_code(), 6);
        let e = plan(&[f(0, 2, 2)], 2, "db", "u").unwrap_err();
        assert_eq!(e.exit_code(), 6);
        assert!(e.message().contains("no snapshot"), "{e}");
    }

    #[test]
    fn commit_points_prefer_low_levels() {
        let files = vec![f(9, 1, 3), f(0, 3, 3), f(0, 4, 4), f(1, 3, 4)];
        let pts: Vec<(u32, u64)> = commit_points(&files)
            .iter()
            .map(|f| (f.id.level, f.id.max_txid))
            .collect();
        assert_eq!(pts, vec![(0, 3), (0, 4)]);
    }
}
