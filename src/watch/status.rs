//! What a running `watch` says about each database: the status board the
//! pollers keep up to date and the control channel reads (`walsync
//! status`).

use crate::error::ErrorClass;
use crate::fsutil;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

/// One database's state, as `walsync status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DbStatus {
    pub name: String,
    pub path: String,
    /// The TXID the replica durably holds.
    pub txid: u64,
    /// When a file was last stored (RFC 3339), if ever in this run.
    pub last_shipped: Option<String>,
    /// How long the oldest commit walsync has seen but not stored has
    /// waited, in milliseconds; 0 when everything seen is stored.
    pub lag_ms: u64,
    /// The WAL's size in bytes at the last poll.
    pub wal_bytes: u64,
    /// The last error, while it lasts, and since when (RFC 3339).
    pub last_error: Option<String>,
    pub error_since: Option<String>,
}

/// What a shipper records for its status line.
#[derive(Debug, Clone, Default)]
pub struct Health {
    pub txid: u64,
    pub last_shipped_ms: Option<i64>,
    /// When walsync first saw a commit that is not stored yet.
    pub unshipped_since_ms: Option<i64>,
    pub wal_bytes: u64,
    pub error: Option<(String, i64)>,
    /// What it did since `watch` started (the metrics' counters).
    pub tally: Tally,
    /// Set by every change, cleared when the board has it: an idle
    /// database costs the board nothing.
    pub changed: bool,
}

/// A database's counts since `watch` started, as the metrics endpoint
/// shows them. Only ever incremented.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub files_shipped: u64,
    pub bytes_shipped: u64,
    pub snapshots: u64,
    /// walsync's own checkpoints by mode: PASSIVE, TRUNCATE.
    pub checkpoints: [u64; 2],
    /// Failures by [`ErrorClass::index`].
    pub errors: [u64; ErrorClass::ALL.len()],
}

impl Health {
    /// Records an error (keeping when the run of errors began).
    pub fn failed(&mut self, error: &crate::error::Error, now_ms: i64) {
        self.count_error(error.error_class());
        let error = error.to_string();
        let since = self.error.as_ref().map_or(now_ms, |(_, since)| *since);
        self.error = Some((error, since));
        self.changed = true;
    }

    /// How long the oldest commit seen but not stored has waited, as of
    /// `now_ms`; 0 when everything seen is stored.
    pub fn lag_ms(&self, now_ms: i64) -> u64 {
        self.unshipped_since_ms
            .map_or(0, |t| u64::try_from(now_ms - t).unwrap_or(0))
    }

    /// Counts a failure that does not change the status line (a failed
    /// checkpoint: shipping goes on).
    pub fn count_error(&mut self, class: ErrorClass) {
        self.tally.errors[class.index()] += 1;
        self.changed = true;
    }

    pub fn status(&self, name: &str, path: &str, now_ms: i64) -> DbStatus {
        DbStatus {
            name: name.to_string(),
            path: path.to_string(),
            txid: self.txid,
            last_shipped: self.last_shipped_ms.map(fsutil::rfc3339_ms),
            lag_ms: self.lag_ms(now_ms),
            wal_bytes: self.wal_bytes,
            last_error: self.error.as_ref().map(|(e, _)| e.clone()),
            error_since: self.error.as_ref().map(|(_, t)| fsutil::rfc3339_ms(*t)),
        }
    }
}

/// One database on the board: its path and health as last published.
#[derive(Debug, Clone)]
struct Entry {
    path: String,
    health: Health,
    /// Its `validation_interval` (0: never), for the validator.
    validation_interval: Duration,
}

/// What the background work besides shipping found about a database.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Checks {
    /// The last periodic validation: whether it passed, and when (Unix ms).
    pub validated: Option<(bool, i64)>,
    /// When a validation last began, whatever came of it (Unix ms).
    pub attempted_ms: Option<i64>,
    /// Failed compaction passes and validations that could not run, by
    /// [`ErrorClass::index`].
    pub errors: [u64; ErrorClass::ALL.len()],
}

/// One database's figures for the metrics endpoint, copied off the board
/// so the lock is not held while they are written to a slow client.
#[derive(Debug, Clone)]
pub struct MetricsRow {
    pub name: String,
    pub txid: u64,
    pub last_shipped_ms: Option<i64>,
    pub lag_ms: u64,
    pub wal_bytes: u64,
    pub tally: Tally,
    pub checks: Checks,
}

/// Every watched database's status, by name.
#[derive(Debug, Default)]
pub struct Board {
    dbs: Mutex<BTreeMap<String, Entry>>,
    /// Kept apart from `dbs`: the shipper replaces its entry whole.
    checks: Mutex<BTreeMap<String, Checks>>,
}

impl Board {
    /// Publishes a database's health (lag is computed when it is read).
    pub fn update(&self, name: &str, path: &str, health: &Health, validation_interval: Duration) {
        let entry = Entry {
            path: path.to_string(),
            health: health.clone(),
            validation_interval,
        };
        lock(&self.dbs).insert(name.to_string(), entry);
    }

    pub fn remove(&self, name: &str) {
        lock(&self.dbs).remove(name);
        lock(&self.checks).remove(name);
    }

    /// How many databases are watched.
    pub fn len(&self) -> usize {
        lock(&self.dbs).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every database's status as of `now_ms`, sorted by name.
    pub fn all(&self, now_ms: i64) -> Vec<DbStatus> {
        lock(&self.dbs)
            .iter()
            .map(|(name, e)| e.health.status(name, &e.path, now_ms))
            .collect()
    }

    /// Every database's figures as of `now_ms`, sorted by name.
    pub fn metrics_rows(&self, now_ms: i64) -> Vec<MetricsRow> {
        let checks = lock(&self.checks).clone();
        lock(&self.dbs)
            .iter()
            .map(|(name, e)| MetricsRow {
                name: name.clone(),
                txid: e.health.txid,
                last_shipped_ms: e.health.last_shipped_ms,
                lag_ms: e.health.lag_ms(now_ms),
                wal_bytes: e.health.wal_bytes,
                tally: e.health.tally,
                checks: checks.get(name).copied().unwrap_or_default(),
            })
            .collect()
    }

    /// The database whose validation is most overdue as of `now_ms`, if
    /// one is due: each is due an interval after its last attempt, or after
    /// `since_ms` (when validation began) before its first. Records the
    /// attempt.
    pub fn take_due_validation(&self, now_ms: i64, since_ms: i64) -> Option<String> {
        let mut checks = lock(&self.checks);
        let dbs = lock(&self.dbs);
        let (due_ms, name) = dbs
            .iter()
            .filter(|(_, e)| !e.validation_interval.is_zero())
            .map(|(name, e)| {
                let last = checks.get(name).and_then(|c| c.attempted_ms);
                let every = crate::fsutil::duration_ms(e.validation_interval);
                (last.unwrap_or(since_ms).saturating_add(every), name)
            })
            .min()?;
        if due_ms > now_ms {
            return None;
        }
        checks.entry(name.clone()).or_default().attempted_ms = Some(now_ms);
        Some(name.clone())
    }

    /// Records a validation's verdict (only for a database still watched).
    pub fn validated(&self, name: &str, ok: bool, at_ms: i64) {
        if lock(&self.dbs).contains_key(name) {
            lock(&self.checks)
                .entry(name.to_string())
                .or_default()
                .validated = Some((ok, at_ms));
        }
    }

    /// Counts a failure of background work on a database.
    pub fn background_failed(&self, name: &str, class: ErrorClass) {
        if lock(&self.dbs).contains_key(name) {
            lock(&self.checks)
                .entry(name.to_string())
                .or_default()
                .errors[class.index()] += 1;
        }
    }
}

/// Locks a board map. A poisoned one still holds the last figures written.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
