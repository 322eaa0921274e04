//! Compaction and retention inside `watch` (see [`crate::compact`]): one
//! thread that is told every file the pollers store, keeps each written
//! database's replica tracked in memory, and runs a pass over a database
//! only in answer to its writes.
//!
//! It never sits on the shipping path: its requests go out on its own
//! thread and its own connections, level-0 uploads never wait for it, and
//! a pass that fails is retried later with nothing lost (files are stored
//! before anything is deleted).
//!
//! # Requests
//!
//! A database's pass is due a gap (the shortest compaction interval) after
//! its previous pass, once a file was stored since: passes follow writes,
//! at most one a gap, so deletions go out together, and the last pass
//! after a burst of writes is at most a gap after it. A database with no
//! new writes gets no pass, no listing and no request at all; what its
//! last writes leave (a level not yet due, files not yet out of the
//! window) waits for its next write, and the replica stays as it was,
//! bounded and restorable.
//!
//! A database is listed once, at its first pass after its first write in
//! this process (and again after a failed pass, or when a stored file does
//! not follow what is tracked: the replica moved under walsync). After
//! that, a pass makes only the requests of its work. A database not
//! written for [`FORGET_AFTER`] is forgotten (its memory freed; its next
//! write lists it once more).

use crate::cancel::CancelToken;
use crate::catalog::RemoteLtx;
use crate::compact::{self, policy::Retention, Mode, Tracked};
use crate::event::{Event, EventSink};
use crate::fsutil::now_ms;
use crate::storage::Storage;
use crossbeam_channel::{Receiver, RecvTimeoutError};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

/// A file a poller stored, as the compactor learns of it.
pub(super) struct StoredFile {
    pub db: String,
    pub file: RemoteLtx,
    /// Its commit time (Unix ms).
    pub time_ms: i64,
}

/// The longest a failed pass waits before it is tried again.
const LONGEST_RETRY: Duration = Duration::from_secs(600);

/// A database not written for this long is forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(600);

/// One written database, as the compactor follows it.
#[derive(Default)]
struct Database {
    /// `None` until listed (or after the tracked view became doubtful).
    tracked: Option<Tracked>,
    /// When its next pass is due (Unix ms), if one is.
    due_ms: Option<i64>,
    last_pass_ms: i64,
    /// When a file of it was last stored.
    last_stored_ms: i64,
    failures: u32,
}

pub(super) struct Compactor {
    storage: Arc<dyn Storage>,
    retention: Retention,
    events: Arc<dyn EventSink>,
    databases: HashMap<String, Database>,
    /// Due passes by time: (due ms, name). Invariant: holds exactly the
    /// databases whose `due_ms` is set, with that time.
    schedule: BTreeSet<(i64, String)>,
    /// A database's passes are at least this far apart (the shortest
    /// compaction interval), so its deletions go out in batches.
    gap_ms: i64,
    next_forget_ms: i64,
}

impl Compactor {
    pub fn new(
        storage: Arc<dyn Storage>,
        retention: Retention,
        events: Arc<dyn EventSink>,
    ) -> Compactor {
        let gap = retention
            .levels
            .iter()
            .copied()
            .min()
            .unwrap_or(retention.l0_retention)
            .max(Duration::from_secs(1));
        Compactor {
            storage,
            retention,
            events,
            databases: HashMap::new(),
            schedule: BTreeSet::new(),
            gap_ms: crate::fsutil::duration_ms(gap),
            next_forget_ms: now_ms().saturating_add(crate::fsutil::duration_ms(FORGET_AFTER)),
        }
    }

    /// Follows stored files and runs due passes until `stop` is cancelled
    /// or every poller is gone.
    pub fn run(mut self, stored: &Receiver<StoredFile>, stop: &CancelToken) {
        while !stop.is_cancelled() {
            let wait = self.until_next_due();
            match stored.recv_timeout(wait) {
                Ok(file) => self.stored(file),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            while let Ok(file) = stored.try_recv() {
                self.stored(file);
            }
            self.run_due(stop);
            self.forget_idle();
        }
    }

    /// Drops the databases not written for [`FORGET_AFTER`] and not due.
    fn forget_idle(&mut self) {
        let now = now_ms();
        if now < self.next_forget_ms {
            return;
        }
        self.next_forget_ms = now.saturating_add(crate::fsutil::duration_ms(FORGET_AFTER) / 10);
        let horizon = now.saturating_sub(crate::fsutil::duration_ms(FORGET_AFTER));
        self.databases
            .retain(|_, db| db.due_ms.is_some() || db.last_stored_ms > horizon);
    }

    fn until_next_due(&self) -> Duration {
        let now = now_ms();
        let next = self.schedule.first().map_or(i64::MAX, |(at, _)| *at);
        let ms = next.saturating_sub(now).clamp(10, 1000);
        Duration::from_millis(ms.unsigned_abs())
    }

    /// Records a stored file; new work may be due a gap after the last pass.
    fn stored(&mut self, stored: StoredFile) {
        let now = now_ms();
        let db = self.databases.entry(stored.db.clone()).or_default();
        db.last_stored_ms = now;
        if let Some(tracked) = &mut db.tracked {
            if !tracked.stored(stored.file, stored.time_ms) {
                db.tracked = None;
            }
        }
        if db.failures == 0 {
            let at = now.max(db.last_pass_ms.saturating_add(self.gap_ms));
            let due = db.due_ms.map_or(at, |d| d.min(at));
            self.reschedule(&stored.db, Some(due));
        }
    }

    fn reschedule(&mut self, name: &str, due_ms: Option<i64>) {
        let Some(db) = self.databases.get_mut(name) else {
            return;
        };
        if let Some(old) = db.due_ms.take() {
            self.schedule.remove(&(old, name.to_string()));
        }
        db.due_ms = due_ms;
        if let Some(at) = due_ms {
            self.schedule.insert((at, name.to_string()));
        }
    }

    fn run_due(&mut self, stop: &CancelToken) {
        let now = now_ms();
        while let Some((at, name)) = self.schedule.first().cloned() {
            if at > now || stop.is_cancelled() {
                return;
            }
            self.reschedule(&name, None);
            let retry = self.pass(&name, stop);
            self.reschedule(&name, retry);
        }
    }

    /// One pass over `name`; returns when to try again if it failed (the
    /// next pass of a database that passed waits for its next write).
    fn pass(&mut self, name: &str, stop: &CancelToken) -> Option<i64> {
        let (storage, retention) = (Arc::clone(&self.storage), self.retention.clone());
        let db = self.databases.get_mut(name)?;
        let now = now_ms();
        db.last_pass_ms = now;
        let outcome = (|| {
            let tracked = match &mut db.tracked {
                Some(t) => t,
                None => db.tracked.insert(Tracked::list(storage.as_ref(), name)?),
            };
            compact::pass(
                storage.as_ref(),
                name,
                tracked,
                &retention,
                now,
                Mode::Apply,
                stop,
            )
        })();
        match outcome {
            Ok(report) => {
                db.failures = 0;
                if report.did_work() {
                    self.events.emit(Event::Compacted {
                        db: name.to_string(),
                        compacted: report.compacted.len(),
                        merged: report.compacted.iter().map(|c| c.inputs).sum(),
                        deleted: report.deleted.len(),
                        deleted_bytes: report.deleted.iter().map(|(_, size)| size).sum(),
                        files: report.files_after,
                    });
                }
                None
            }
            Err(e) => {
                db.failures = db.failures.saturating_add(1);
                db.tracked = None;
                let retry = Duration::from_millis(self.gap_ms.unsigned_abs())
                    .saturating_mul(1 << db.failures.min(6))
                    .min(LONGEST_RETRY);
                if !stop.is_cancelled() {
                    self.events.emit(Event::CompactionFailed {
                        db: name.to_string(),
                        error: e.to_string(),
                        retry_in: retry,
                    });
                }
                Some(now.saturating_add(crate::fsutil::duration_ms(retry)))
            }
        }
    }
}
