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
//! - each file's header TXIDs match its key, its page size matches the
//!   snapshot's, and its pre-apply checksum equals the previous file's
//!   post-apply checksum where both are present (Litestream's NoChecksum
//!   files carry neither).
//!
//! Only the files of the plan to the latest TXID are downloaded: older
//! snapshots and the finer files a compaction covers are not.
//!
//! Output: a line per problem, naming the object key, and a summary line per
//! database, on stdout; with `--json`, one JSON object per database per line
//! (JSON Lines): `{name, ok, snapshot, files_checked, latest_txid,
//! problems: [{key, kind, message}]}`.
//!
//! Exit code, over all databases: 5 (integrity) when any object is damaged
//! (corrupt, wrong SHA-256, checksum chain broken, TXIDs not those of its
//! key); else 6 (restore) when a backup cannot be restored (no backup, no
//! snapshot, a gap, a planned object missing); else 4 when the storage
//! failed while reading; else 0. Corruption wins over unrestorable because
//! it means stored bytes changed, which needs attention even where another
//! problem already stops the restore.
//!
//! Resources: `parallelism` worker threads download and decode files; the
//! databases are planned one after the other by a feeder thread that hands
//! files to the workers over a bounded channel, so memory holds the
//! listing, the plan of the databases in flight and one page buffer per
//! worker, whatever the size of the files.

use crate::error::{Error, Result};
use crate::fsutil;
use crate::list;
use crate::ltx::Decoder;
use crate::plan::{self, txid_hex};
use crate::remote::{self, RemoteLtx};
use crate::storage::{db_prefix, LtxId, Storage, SNAPSHOT_LEVEL};
use crossbeam_channel::{bounded, unbounded};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::io::{self, Write};

/// What went wrong, and which exit code it calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Nothing stored for the name.
    NoBackup,
    /// No level-9 snapshot, or none the plan can start from.
    NoSnapshot,
    /// TXIDs missing between the snapshot and the latest file.
    Gap,
    /// An object of the plan was listed but cannot be read.
    Missing,
    /// The object does not decode (bad header, pages, index, CRC-64).
    Corrupt,
    /// The body's SHA-256 differs from the object's metadata.
    Sha256Mismatch,
    /// The header's TXIDs or page size disagree with the key or the plan.
    Mismatch,
    /// A pre-apply checksum differs from the previous post-apply checksum.
    ChecksumChain,
    /// The storage failed while reading (network, permissions).
    Storage,
}

impl Kind {
    fn is_integrity(self) -> bool {
        matches!(
            self,
            Kind::Corrupt | Kind::Sha256Mismatch | Kind::Mismatch | Kind::ChecksumChain
        )
    }
    fn is_unrestorable(self) -> bool {
        matches!(
            self,
            Kind::NoBackup | Kind::NoSnapshot | Kind::Gap | Kind::Missing
        )
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

/// What one downloaded and decoded file says.
struct FileFacts {
    page_size: u32,
    pre_apply: u64,
    post_apply: u64,
}

/// A file to check: database slot, position in its plan, the file.
struct Job {
    slot: usize,
    index: usize,
    file: RemoteLtx,
}

enum Msg {
    /// A database was planned: its report so far and how many files follow.
    Planned {
        slot: usize,
        report: Report,
        chain: Vec<RemoteLtx>,
    },
    /// One file checked.
    Checked {
        slot: usize,
        index: usize,
        result: std::result::Result<FileFacts, Problem>,
    },
    /// Planning failed on the storage (fatal).
    Failed(Error),
}

/// Jobs waiting per worker before the feeder blocks.
const QUEUE_PER_WORKER: usize = 2;

/// Verifies `names` in `storage`; prints the results (human lines or JSON
/// Lines) and returns the error whose exit code sums them up.
pub fn run(storage: &dyn Storage, names: &[String], parallelism: usize, json: bool) -> Result<()> {
    if names.is_empty() {
        let url = storage.describe();
        return Err(Error::Restore(format!(
            "no databases in {url}: nothing to verify; check the URL (and prefix) with `walsync list -b {url}`"
        )));
    }
    let stdout = io::stdout();
    let mut out = stdout.lock();
    let mut counts = Counts::default();
    verify_each(storage, names, parallelism, |report| {
        counts.add(report);
        let written = if json {
            serde_json::to_string(report)
                .map_err(|e| io::Error::other(e.to_string()))
                .and_then(|line| writeln!(out, "{line}"))
        } else {
            write_human(&mut out, report)
        };
        written.map_err(|e| Error::Other(format!("writing the verify report: {e}")))
    })?;
    if !json {
        let _ = writeln!(
            out,
            "verified {} database(s) in {}: {} ok, {} damaged, {} not restorable",
            counts.total,
            storage.describe(),
            counts.ok,
            counts.integrity,
            counts.unrestorable
        );
    }
    let _ = out.flush();
    counts.verdict(storage)
}

#[derive(Default)]
struct Counts {
    total: usize,
    ok: usize,
    integrity: usize,
    unrestorable: usize,
    storage: usize,
}

impl Counts {
    fn add(&mut self, r: &Report) {
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

    fn verdict(&self, storage: &dyn Storage) -> Result<()> {
        let url = storage.describe();
        if self.integrity > 0 {
            Err(Error::Integrity(format!(
                "{} of {} database(s) in {url} have damaged objects (listed above); restore an earlier state with `walsync restore --txid`, and take a fresh snapshot of the source (`walsync snapshot`)",
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

fn write_human(out: &mut impl Write, r: &Report) -> io::Result<()> {
    for p in &r.problems {
        writeln!(
            out,
            "{}: {} {}: {}",
            r.name,
            kind_label(p.kind),
            p.key,
            p.message
        )?;
    }
    if r.ok {
        writeln!(
            out,
            "{}: ok: {} file(s) checked from snapshot {} to TXID {}",
            r.name,
            r.files_checked,
            r.snapshot.as_deref().unwrap_or("?"),
            txid_hex(r.latest_txid)
        )
    } else {
        writeln!(
            out,
            "{}: FAILED: {} problem(s), {} file(s) checked, latest TXID {}",
            r.name,
            r.problems.len(),
            r.files_checked,
            txid_hex(r.latest_txid)
        )
    }
}

fn kind_label(k: Kind) -> &'static str {
    match k {
        Kind::NoBackup => "NO BACKUP",
        Kind::NoSnapshot => "NO SNAPSHOT",
        Kind::Gap => "GAP",
        Kind::Missing => "MISSING",
        Kind::Corrupt => "CORRUPT",
        Kind::Sha256Mismatch => "SHA-256 MISMATCH",
        Kind::Mismatch => "MISMATCH",
        Kind::ChecksumChain => "CHECKSUM CHAIN",
        Kind::Storage => "STORAGE",
    }
}

/// Verifies every database and hands each report to `emit` as soon as it
/// is complete (in order of completion, which is mostly the order of
/// `names`: a short plan may finish before a long one queued earlier).
/// Storage failures while listing are returned as errors.
pub fn verify_each(
    storage: &dyn Storage,
    names: &[String],
    parallelism: usize,
    mut emit: impl FnMut(&Report) -> Result<()>,
) -> Result<()> {
    let workers = parallelism.max(1);
    // With several names, one listing of the whole replica (bounded by what
    // the storage returns anyway) instead of one per database.
    let grouped: Option<HashMap<String, Vec<RemoteLtx>>> = if names.len() > 1 {
        let layout = storage.layout();
        let mut map: HashMap<String, Vec<RemoteLtx>> = HashMap::new();
        for o in storage.list("")? {
            if let Some((name, id)) = list::parse_key(layout, &o.key) {
                map.entry(name).or_default().push(RemoteLtx {
                    id,
                    key: o.key,
                    size: o.size,
                });
            }
        }
        for files in map.values_mut() {
            files.sort_by_key(|f| f.id);
        }
        Some(map)
    } else {
        None
    };

    std::thread::scope(|s| -> Result<()> {
        let (job_tx, job_rx) = bounded::<Job>(workers * QUEUE_PER_WORKER);
        let (msg_tx, msg_rx) = unbounded::<Msg>();
        for _ in 0..workers {
            let job_rx = job_rx.clone();
            let msg_tx = msg_tx.clone();
            s.spawn(move || {
                for job in job_rx {
                    let result = check_file(storage, &job.file);
                    let m = Msg::Checked {
                        slot: job.slot,
                        index: job.index,
                        result,
                    };
                    if msg_tx.send(m).is_err() {
                        break;
                    }
                }
            });
        }
        drop(job_rx);
        {
            let msg_tx = msg_tx.clone();
            let grouped = grouped;
            s.spawn(move || {
                let mut grouped = grouped;
                for (slot, name) in names.iter().enumerate() {
                    let files = match grouped.as_mut() {
                        Some(map) => Ok(map.remove(name).unwrap_or_default()),
                        None => remote::list_ltx(storage, name),
                    };
                    let files = match files {
                        Ok(f) => f,
                        Err(e) => {
                            let _ = msg_tx.send(Msg::Failed(e));
                            return;
                        }
                    };
                    let (report, chain) = plan_one(storage, name, &files);
                    let jobs: Vec<Job> = chain
                        .iter()
                        .enumerate()
                        .map(|(index, f)| Job {
                            slot,
                            index,
                            file: f.clone(),
                        })
                        .collect();
                    drop(files);
                    if msg_tx
                        .send(Msg::Planned {
                            slot,
                            report,
                            chain,
                        })
                        .is_err()
                    {
                        return;
                    }
                    for job in jobs {
                        if job_tx.send(job).is_err() {
                            return;
                        }
                    }
                }
            });
        }
        drop(msg_tx);

        // Collect: per database in flight, its report, plan and results.
        struct Pending {
            report: Report,
            chain: Vec<RemoteLtx>,
            results: BTreeMap<usize, std::result::Result<FileFacts, Problem>>,
        }
        let mut pending: HashMap<usize, Pending> = HashMap::new();
        let mut done = 0usize;
        let finish = |p: Pending, emit: &mut dyn FnMut(&Report) -> Result<()>| {
            let report = conclude(p.report, &p.chain, p.results);
            emit(&report)
        };
        for msg in msg_rx.iter() {
            let slot = match msg {
                Msg::Failed(e) => return Err(e),
                Msg::Planned {
                    slot,
                    report,
                    chain,
                } => {
                    pending.insert(
                        slot,
                        Pending {
                            report,
                            chain,
                            results: BTreeMap::new(),
                        },
                    );
                    slot
                }
                Msg::Checked {
                    slot,
                    index,
                    result,
                } => {
                    if let Some(p) = pending.get_mut(&slot) {
                        p.results.insert(index, result);
                    }
                    slot
                }
            };
            let complete = pending
                .get(&slot)
                .is_some_and(|p| p.results.len() == p.chain.len());
            if complete {
                if let Some(p) = pending.remove(&slot) {
                    finish(p, &mut emit)?;
                    done += 1;
                }
            }
        }
        if done != names.len() {
            return Err(Error::Other(format!(
                "verify stopped early: {done} of {} database(s) checked",
                names.len()
            )));
        }
        Ok(())
    })
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
    if files.is_empty() {
        report.problems.push(Problem {
            key: db_prefix(name),
            kind: Kind::NoBackup,
            message: format!(
                "no LTX files for '{name}' in {url}; check the name with `walsync list -b {url}`"
            ),
        });
        return (report, Vec::new());
    }
    let snapshot_dir = layout.level_prefix(name, SNAPSHOT_LEVEL);
    let has_l9 = files.iter().any(|f| f.id.level == SNAPSHOT_LEVEL);
    match plan::plan(files, latest, name, &url) {
        Ok(chain) => {
            if !has_l9 {
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
        Err(e) => {
            // Up to a gap, the files that do restore are still checked.
            let mut chain = Vec::new();
            let problem = match plan::find_gap(files, latest) {
                Some(gap) => {
                    chain = plan::plan(files, gap.last, name, &url).unwrap_or_default();
                    // The object that would close the gap, as a level-0 file.
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
                None => {
                    // No snapshot to start from: name the one the oldest
                    // incremental file needs.
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
                        snapshot_dir
                    };
                    Problem {
                        key,
                        kind: if e.exit_code() == 6 && !has_l9 {
                            Kind::NoSnapshot
                        } else {
                            Kind::Gap
                        },
                        message: e.message().to_string(),
                    }
                }
            };
            report.problems.push(problem);
            report.snapshot = chain.first().map(|f| f.key.clone());
            (report, chain)
        }
    }
}

/// Adds the per-file results and the chain checks to the report.
fn conclude(
    mut report: Report,
    chain: &[RemoteLtx],
    mut results: BTreeMap<usize, std::result::Result<FileFacts, Problem>>,
) -> Report {
    let mut prev: Option<(&RemoteLtx, FileFacts)> = None;
    let mut page_size: Option<u32> = None;
    for (i, f) in chain.iter().enumerate() {
        let facts = match results.remove(&i) {
            Some(Ok(facts)) => facts,
            Some(Err(p)) => {
                report.problems.push(p);
                prev = None;
                continue;
            }
            None => {
                prev = None;
                continue;
            }
        };
        report.files_checked += 1;
        match page_size {
            None => page_size = Some(facts.page_size),
            Some(ps) if ps != facts.page_size => report.problems.push(Problem {
                key: f.key.clone(),
                kind: Kind::Mismatch,
                message: format!(
                    "page size {} differs from the snapshot's {ps}",
                    facts.page_size
                ),
            }),
            Some(_) => {}
        }
        if let Some((pf, pfacts)) = &prev {
            if facts.pre_apply != 0
                && pfacts.post_apply != 0
                && facts.pre_apply != pfacts.post_apply
            {
                report.problems.push(Problem {
                    key: f.key.clone(),
                    kind: Kind::ChecksumChain,
                    message: format!(
                        "pre-apply checksum {:016x} differs from the post-apply checksum {:016x} of {}: the files do not follow each other",
                        facts.pre_apply, pfacts.post_apply, pf.key
                    ),
                });
            }
        }
        prev = Some((f, facts));
    }
    report.ok = report.problems.is_empty();
    report
}

/// Downloads and fully decodes one object, streaming.
fn check_file(storage: &dyn Storage, f: &RemoteLtx) -> std::result::Result<FileFacts, Problem> {
    let problem = |kind: Kind, message: String| Problem {
        key: f.key.clone(),
        kind,
        message,
    };
    let dl = match storage.get(&f.key) {
        Ok(Some(dl)) => dl,
        Ok(None) => {
            return Err(problem(
                Kind::Missing,
                format!(
                    "listed in {} but gone when read (deleted by retention or compaction meanwhile?); run verify again",
                    storage.describe()
                ),
            ))
        }
        Err(e) => return Err(problem(Kind::Storage, e.message().to_string())),
    };
    let meta_checksums = dl.head.meta.parsed_db_checksums();
    let mut hr = fsutil::Hashing::new(dl.body);
    let decoded = (|| -> Result<FileFacts> {
        let mut dec = Decoder::new(&mut hr)?;
        let h = *dec.header();
        let mut page = Vec::new();
        while dec.next_page(&mut page)?.is_some() {}
        let trailer = dec.finish()?;
        if let Some(m) = crate::plan::name_mismatch(f, h.min_txid, h.max_txid) {
            return Err(Error::Restore(m));
        }
        // NoChecksum files (Litestream's, and walsync's own) may carry
        // walsync's database checksums in the object metadata instead.
        let (pre_apply, post_apply) = match meta_checksums {
            Some(c) if h.no_checksum() => c,
            _ => (h.pre_apply_checksum, trailer.post_apply_checksum),
        };
        Ok(FileFacts {
            page_size: h.page_size,
            pre_apply,
            post_apply,
        })
    })();
    let facts = match decoded {
        Ok(facts) => facts,
        // A TXID mismatch (reported as Restore above) is damage too.
        Err(Error::Restore(m)) => return Err(problem(Kind::Mismatch, m)),
        Err(Error::Integrity(m)) => {
            let m = if hr.count() < dl.head.size {
                format!("{m} (received {} of {} bytes)", hr.count(), dl.head.size)
            } else {
                m
            };
            return Err(problem(
                Kind::Corrupt,
                format!("{m}{}", crate::plan::damaged_object_hint(f)),
            ));
        }
        Err(e) => {
            return Err(problem(
                Kind::Storage,
                format!("reading from {}: {}", storage.describe(), e.message()),
            ))
        }
    };
    if hr.count() != dl.head.size {
        return Err(problem(
            Kind::Corrupt,
            format!(
                "received {} bytes, the object is {} bytes{}",
                hr.count(),
                dl.head.size,
                crate::plan::damaged_object_hint(f)
            ),
        ));
    }
    let (_, got, _) = hr.finish();
    if let Some(want) = &dl.head.meta.sha256 {
        if !want.eq_ignore_ascii_case(&got) {
            return Err(problem(
                Kind::Sha256Mismatch,
                format!(
                    "SHA-256 of the body is {got}, the metadata says {want}{}",
                    crate::plan::damaged_object_hint(f)
                ),
            ));
        }
    }
    Ok(facts)
}
