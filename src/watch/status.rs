//! What a running `watch` says about each database: the status board the
//! pollers keep up to date and the control channel reads (`walsync
//! status`).

use crate::fsutil;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Mutex;

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
    /// Set by every change, cleared when the board has it: an idle
    /// database costs the board nothing.
    pub changed: bool,
}

impl Health {
    /// Records an error (keeping when the run of errors began).
    pub fn failed(&mut self, error: String, now_ms: i64) {
        let since = self.error.as_ref().map_or(now_ms, |(_, since)| *since);
        self.error = Some((error, since));
        self.changed = true;
    }

    pub fn status(&self, name: &str, path: &str, now_ms: i64) -> DbStatus {
        DbStatus {
            name: name.to_string(),
            path: path.to_string(),
            txid: self.txid,
            last_shipped: self.last_shipped_ms.map(fsutil::rfc3339_ms),
            lag_ms: self
                .unshipped_since_ms
                .map_or(0, |t| u64::try_from(now_ms - t).unwrap_or(0)),
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
}

/// Every watched database's status, by name.
#[derive(Debug, Default)]
pub struct Board {
    dbs: Mutex<BTreeMap<String, Entry>>,
}

impl Board {
    /// Publishes a database's health (lag is computed when it is read).
    pub fn update(&self, name: &str, path: &str, health: &Health) {
        let entry = Entry {
            path: path.to_string(),
            health: health.clone(),
        };
        self.lock().insert(name.to_string(), entry);
    }

    pub fn remove(&self, name: &str) {
        self.lock().remove(name);
    }

    /// Every database's status as of `now_ms`, sorted by name.
    pub fn all(&self, now_ms: i64) -> Vec<DbStatus> {
        self.lock()
            .iter()
            .map(|(name, e)| e.health.status(name, &e.path, now_ms))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
        // A poisoned board still holds the last statuses written.
        self.dbs.lock().unwrap_or_else(|e| e.into_inner())
    }
}
