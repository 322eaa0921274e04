//! `walsync verify`: checks that a replica would restore to its latest state,
//! without writing a database.
//!
//! For each database:
//! - a level-9 snapshot exists;
//! - the restore plan to the newest TXID exists (see [`crate::plan`]): a
//!   snapshot, then files whose TXIDs continue it without a gap;
//! - every object of that plan is there and downloads completely; it is
//!   decoded in full, streaming (never whole in memory): header, every page
//!   (order, bounds, LZ4), page index, trailer and the file's CRC-64; its
//!   SHA-256 is computed on the way and compared with the `x-amz-meta-sha256`
//!   metadata (or the file replica's sidecar) when there is one;
//! - each file's header TXIDs match its key and its page size the image's;
//! - the files are replayed in order into a map of page checksums (8 bytes
//!   per page, on disk for large databases), exactly as `restore` applies
//!   them, without writing a database: the database checksum before each
//!   file must equal its recorded pre-apply checksum, and the checksum its
//!   pages produce must equal its recorded post-apply checksum (walsync's
//!   files record both; Litestream's NoChecksum files record neither). So a
//!   replica `restore` rejects is rejected here, with the same exit code,
//!   naming the same object: both run [`crate::apply::Applier`].
//!
//! Only the files of the plan to the latest TXID are downloaded: older
//! images and the finer files a compaction covers are not. After the first
//! problem the rest of the plan is still downloaded and decoded (to name
//! every damaged object), but no longer replayed.
//!
//! Output: a line per problem, naming the object key, and a summary line per
//! database, on stdout; with `--json`, one JSON object per database per line
//! (JSON Lines): `{name, ok, snapshot, files_checked, latest_txid,
//! problems: [{key, kind, message}]}`.
//!
//! Exit code, over all databases, the one `restore` gives for the same
//! condition: 5 (integrity) when any object is damaged (corrupt, wrong
//! SHA-256, checksum chain broken, TXIDs not those of its key) or TXIDs are
//! missing (a gap); else 6 (restore) when there is nothing to restore from
//! (no backup, no snapshot); else 4 when the storage failed while reading,
//! or an object listed was gone when read (run it again); else 0.
//! Corruption wins over unrestorable because it means stored bytes changed,
//! which needs attention even where another problem already stops the
//! restore.
//!
//! Resources: a few databases are verified at once, each through the same
//! download pipeline as restore ([`crate::fetch`]): its image streamed, the
//! files after it prefetched to a temporary folder, `parallelism` downloads
//! in flight in all. Memory holds the listing, the plans in flight, the
//! stream buffers and the page-checksum maps (in memory up to 64 MiB each).

use crate::apply::{Applier, ChecksumMap, Fault, ObjectError};
use crate::cancel::CancelToken;
use crate::catalog::{self, Catalog, RemoteLtx};
use crate::error::{Error, Result};
use crate::fetch::{self, Replay, Staging};
use crate::ltx::Decoder;
use crate::plan::{self, txid_hex, Gap, PlanFailure};
use crate::storage::{db_prefix, Layout, LtxId, Storage, SNAPSHOT_LEVEL};
use serde::Serialize;
use std::io::Read;

/// What went wrong, and which exit code it calls for: a problem of the
/// plan, or of one object (the same [`Fault`]s a restore reports).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Nothing stored for the name.
    NoBackup,
    /// No level-9 snapshot, or no full image the plan can start from.
    NoSnapshot,
    /// TXIDs missing between the full image and the latest file.
    Gap,
    /// An object of the plan is missing, damaged or could not be read.
    Object(Fault),
}

impl Kind {
    /// The name in `--json` output.
    pub fn name(self) -> &'static str {
        match self {
            Kind::NoBackup => "no_backup",
            Kind::NoSnapshot => "no_snapshot",
            Kind::Gap => "gap",
            Kind::Object(f) => f.name(),
        }
    }

    fn is_integrity(self) -> bool {
        matches!(
            self,
            Kind::Gap
                | Kind::Object(
                    Fault::Corrupt | Fault::Sha256Mismatch | Fault::Mismatch | Fault::ChecksumChain
                )
        )
    }

    fn is_unrestorable(self) -> bool {
        matches!(self, Kind::NoBackup | Kind::NoSnapshot)
    }
}

impl Serialize for Kind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// One problem, named by its object key (or the folder an expected object
/// is missing from).
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    pub key: String,
    pub kind: Kind,
    pub message: String,
}

/// The verdict on one database.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub name: String,
    pub ok: bool,
    /// Key of the snapshot the plan starts from.
    pub snapshot: Option<String>,
    pub files_checked: usize,
    pub latest_txid: u64,
    pub problems: Vec<Problem>,
}

/// How many databases verify found ok, damaged, unrestorable or unread,
/// and the exit code that sums them up.
#[derive(Debug, Default)]
pub struct Counts {
    pub total: usize,
    pub ok: usize,
    pub integrity: usize,
    pub unrestorable: usize,
    pub storage: usize,
}

impl Counts {
    /// Counts one report.
    pub fn add(&mut self, r: &Report) {
        self.total += 1;
        if r.ok {
            self.ok += 1;
        } else if r.problems.iter().any(|p| p.kind.is_integrity()) {
            self.integrity += 1;
        } else if r.problems.iter().any(|p| p.kind.is_unrestorable()) {
            self.unrestorable += 1;
        } else {
            self.storage += 1;
        }
    }

    /// `Ok` when every database is ok, else the error whose exit code
    /// sums them up (see the module doc).
    pub fn verdict(&self, storage: &dyn Storage) -> Result<()> {
        let url = storage.describe();
        if self.integrity > 0 {
            Err(Error::Integrity(format!(
                "{} of {} database(s) in {url} have damaged objects or missing TXIDs (listed above); restore an earlier state with `walsync restore --txid`, and take a fresh snapshot of the source (`walsync snapshot`)",
                self.integrity, self.total
            )))
        } else if self.unrestorable > 0 {
            Err(Error::Restore(format!(
                "{} of {} database(s) in {url} cannot be restored to their latest state (listed above); take a fresh snapshot of the source (`walsync snapshot`)",
                self.unrestorable, self.total
            )))
        } else if self.storage > 0 {
            Err(Error::Storage(format!(
                "{} of {} database(s) in {url} could not be read completely (listed above); check the network and credentials and run verify again",
                self.storage, self.total
            )))
        } else {
            Ok(())
        }
    }
}

/// Verifies every database and hands each report to `emit` as soon as it
/// is complete (in order of completion). Storage failures while listing,
/// and cancellation, are returned as errors.
pub fn verify_each(
    storage: &dyn Storage,
    names: &[String],
    parallelism: usize,
    cancel: &CancelToken,
    mut emit: impl FnMut(&Report) -> Result<()>,
) -> Result<()> {
    // With several names, one listing of the whole replica instead of one
    // per database.
    let mut catalog = if names.len() > 1 {
        Some(Catalog::read_all(storage)?)
    } else {
        None
    };
    let mut planned: Vec<(String, Vec<RemoteLtx>)> = Vec::with_capacity(names.len());
    for name in names {
        let files = match catalog.as_mut() {
            Some(c) => c.take(name),
            None => catalog::list_db(storage, name)?,
        };
        planned.push((name.clone(), files));
    }
    drop(catalog);
    let parallelism = parallelism.max(1);
    let at_once = planned.len().clamp(1, (parallelism / 4).clamp(1, 8));
    let per_db = (parallelism / at_once).max(1);
    let work = |(name, files): (String, Vec<RemoteLtx>)| {
        verify_one(storage, &name, &files, per_db, cancel)
    };
    let total = planned.len();
    std::thread::scope(|s| -> Result<()> {
        let (jobs, reports) = crate::pool::workers(s, at_once, &work);
        for job in planned {
            let _ = jobs.send(job);
        }
        drop(jobs);
        let mut done = 0usize;
        for r in reports {
            let report = r.inspect_err(|_| cancel.cancel())?;
            emit(&report).inspect_err(|_| cancel.cancel())?;
            done += 1;
        }
        if done != total {
            return Err(Error::Other(format!(
                "verify stopped early: {done} of {total} database(s) checked"
            )));
        }
        Ok(())
    })
}

/// Verifies one database: plans its latest state, then replays the plan.
fn verify_one(
    storage: &dyn Storage,
    name: &str,
    files: &[RemoteLtx],
    parallelism: usize,
    cancel: &CancelToken,
) -> Result<Report> {
    let (report, chain) = plan_one(storage, name, files);
    if chain.is_empty() {
        return Ok(conclude(report));
    }
    let staging = Staging::temporary("verify")?;
    let mut replay = VerifyReplay {
        applier: Applier::new(ChecksumMap::new()),
        replaying: true,
        report,
    };
    fetch::fetch_and_replay(storage, &chain, &staging, parallelism, cancel, &mut replay)?;
    Ok(conclude(replay.report))
}

/// Verify's consumer of the plan: replays each file into a checksum map
/// and records problems instead of stopping at the first.
struct VerifyReplay {
    applier: Applier<ChecksumMap>,
    /// False after the first problem: the map no longer follows the
    /// source, so later files are only decoded.
    replaying: bool,
    report: Report,
}

impl Replay for VerifyReplay {
    fn apply(
        &mut self,
        f: &RemoteLtx,
        body: &mut dyn Read,
        db_checksums: Option<(u64, u64)>,
    ) -> Result<(), ObjectError> {
        if self.replaying {
            self.applier.apply(f, body, db_checksums)
        } else {
            decode_only(f, body)
        }
    }

    fn done(&mut self, f: &RemoteLtx, result: Result<(), ObjectError>) -> Result<()> {
        let e = match result {
            Ok(()) => {
                self.report.files_checked += 1;
                return Ok(());
            }
            Err(e) => e,
        };
        let hint = match e.fault {
            Fault::Cancelled | Fault::Local => return Err(e.error),
            Fault::Corrupt | Fault::Mismatch | Fault::ChecksumChain => plan::damaged_object_hint(f),
            Fault::Missing | Fault::Sha256Mismatch | Fault::Storage => String::new(),
        };
        let kind = Kind::Object(e.fault);
        let message = format!("{}{hint}", e.error.message());
        self.report.problems.push(Problem {
            key: f.key.clone(),
            kind,
            message,
        });
        self.replaying = false;
        Ok(())
    }
}

/// Decodes a whole file without applying it (after the replay stopped).
fn decode_only(f: &RemoteLtx, body: &mut dyn Read) -> Result<(), ObjectError> {
    let ctx = |e: Error| ObjectError::classify(e.context(format!("object {}", f.key)));
    let mut dec = Decoder::new(body).map_err(ctx)?;
    let h = *dec.header();
    let mut page = Vec::new();
    while dec.next_page(&mut page).map_err(ctx)?.is_some() {}
    dec.finish().map_err(ctx)?;
    match plan::name_mismatch(f, h.min_txid, h.max_txid) {
        Some(m) => Err(ObjectError::new(
            Fault::Mismatch,
            Error::Integrity(format!("object {} {m}", f.key)),
        )),
        None => Ok(()),
    }
}

/// The checks that need only the listing, and the plan to download.
fn plan_one(storage: &dyn Storage, name: &str, files: &[RemoteLtx]) -> (Report, Vec<RemoteLtx>) {
    let url = storage.describe();
    let layout = storage.layout();
    let latest = files.iter().map(|f| f.id.max_txid).max().unwrap_or(0);
    let mut report = Report {
        name: name.to_string(),
        ok: false,
        snapshot: None,
        files_checked: 0,
        latest_txid: latest,
        problems: Vec::new(),
    };
    let snapshot_dir = layout.level_prefix(name, SNAPSHOT_LEVEL);
    let chain = match plan::plan_chain(files, latest) {
        Ok(chain) => chain,
        Err(PlanFailure::Gap(gap)) => {
            report
                .problems
                .push(gap_problem(layout, name, &gap, latest));
            // Up to a gap, the files that do restore are still checked.
            plan::plan_chain(files, gap.last).unwrap_or_default()
        }
        Err(PlanFailure::NoBackups) => {
            report.problems.push(Problem {
                key: db_prefix(name),
                kind: Kind::NoBackup,
                message: format!(
                    "no LTX files for '{name}' in {url}; check the name with `walsync list -b {url}`"
                ),
            });
            Vec::new()
        }
        Err(failure) => {
            let message = failure.into_error(name, &url, latest).message().to_string();
            report
                .problems
                .push(no_image_problem(layout, name, files, message));
            Vec::new()
        }
    };
    let has_l9 = files.iter().any(|f| f.id.level == SNAPSHOT_LEVEL);
    if !has_l9 && !chain.is_empty() {
        report.problems.push(Problem {
            key: snapshot_dir,
            kind: Kind::NoSnapshot,
            message: format!(
                "no level-9 snapshot of '{name}' (the plan starts from {}); take one with `walsync snapshot`",
                chain.first().map_or("?", |f| f.key.as_str())
            ),
        });
    }
    report.snapshot = chain.first().map(|f| f.key.clone());
    (report, chain)
}

/// A gap, named by the level-0 object that would close it.
fn gap_problem(layout: Layout, name: &str, gap: &Gap, latest: u64) -> Problem {
    let to = gap.next_min.map_or(latest, |n| n - 1);
    let expected = layout.ltx_key(
        name,
        LtxId {
            level: 0,
            min_txid: gap.last + 1,
            max_txid: to,
        },
    );
    Problem {
        key: expected,
        kind: Kind::Gap,
        message: format!(
            "TXIDs {}..{} are missing after {} (no object starts at TXID {}); the replica restores only up to TXID {} (`walsync restore --txid {}`); take a fresh snapshot of the source (`walsync snapshot`)",
            txid_hex(gap.last + 1),
            txid_hex(to),
            gap.last_file.key,
            txid_hex(gap.last + 1),
            txid_hex(gap.last),
            gap.last
        ),
    }
}

/// No full image to start from, named by the snapshot the oldest
/// incremental file needs.
fn no_image_problem(layout: Layout, name: &str, files: &[RemoteLtx], message: String) -> Problem {
    let first_min = files.iter().map(|f| f.id.min_txid).min().unwrap_or(2);
    let key = if first_min > 1 {
        layout.ltx_key(
            name,
            LtxId {
                level: SNAPSHOT_LEVEL,
                min_txid: 1,
                max_txid: first_min - 1,
            },
        )
    } else {
        layout.level_prefix(name, SNAPSHOT_LEVEL)
    };
    Problem {
        key,
        kind: Kind::NoSnapshot,
        message,
    }
}

/// Settles the verdict once every file is checked.
fn conclude(mut report: Report) -> Report {
    report.ok = report.problems.is_empty();
    report
}
