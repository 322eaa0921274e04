//! What a replica costs a month: storage, requests and the bill at a few
//! providers' public list prices, for `walsync explain`.
//!
//! The WAL rate is the one walsync recorded for the database: the pages
//! shipped since its last snapshot over the time since (its local state).
//! Every figure is an upper bound of the kind an operator budgets with:
//! pages are counted uncompressed, a level-0 file is assumed at every sync
//! interval while the WAL changes at all, and every compaction level writes
//! once per interval. Egress (reads leaving the provider) is not counted.

use crate::compact::policy::{Retention, SnapshotPolicy};
use crate::watch::Settings;
use std::time::Duration;

/// Seconds in the month the estimate covers (30 days).
pub const MONTH_SECONDS: f64 = 30.0 * 86_400.0;

/// A provider's list prices in US dollars.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Provider {
    pub name: &'static str,
    /// Per GB (10^9 bytes) stored for a month.
    pub storage_gb_month: f64,
    /// Per 1,000 PUT, POST and LIST requests (class A).
    pub writes_per_1000: f64,
    /// Per 1,000 GET and HEAD requests (class B).
    pub reads_per_1000: f64,
}

/// The providers an estimate is priced at: public list prices as published
/// when this was written (standard storage class, the cheapest region).
/// README "Monitoring" repeats them; providers change them, so check.
pub const PROVIDERS: [Provider; 3] = [
    // aws.amazon.com/s3/pricing: S3 Standard, us-east-1.
    Provider {
        name: "aws_s3",
        storage_gb_month: 0.023,
        writes_per_1000: 0.005,
        reads_per_1000: 0.0004,
    },
    // tigrisdata.com/pricing: standard tier.
    Provider {
        name: "tigris",
        storage_gb_month: 0.02,
        writes_per_1000: 0.005,
        reads_per_1000: 0.0005,
    },
    // developers.cloudflare.com/r2/pricing: standard storage.
    Provider {
        name: "r2",
        storage_gb_month: 0.015,
        writes_per_1000: 0.0045,
        reads_per_1000: 0.00036,
    },
];

/// What is known of a database's load.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Load {
    /// The database file's size.
    pub db_bytes: u64,
    pub page_size: u32,
    /// WAL pages shipped per second on average, when walsync has recorded
    /// enough history to say.
    pub pages_per_second: Option<f64>,
}

/// Least history (time since the last snapshot) a rate is taken from.
pub const LEAST_HISTORY: Duration = Duration::from_secs(60);

/// The WAL rate a database's local state records: pages shipped since the
/// last snapshot over the time since, if that time is at least
/// [`LEAST_HISTORY`].
pub fn recorded_rate(state: &crate::watch::LocalState, now_ms: i64) -> Option<f64> {
    let seconds = now_ms.saturating_sub(state.last_snapshot_ms) as f64 / 1000.0;
    (state.last_snapshot_ms > 0 && seconds >= LEAST_HISTORY.as_secs_f64())
        .then(|| state.pages_since_snapshot as f64 / seconds)
}

/// A month of one replica.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Estimate {
    /// Bytes uploaded (level 0, snapshots, compacted levels).
    pub uploaded_bytes: f64,
    /// Bytes held at the end of the month (with retention: steady state).
    pub stored_bytes: f64,
    /// PUT, POST and LIST requests.
    pub writes: f64,
    /// GET and HEAD requests (compaction inputs, validations).
    pub reads: f64,
}

impl Estimate {
    /// The bill at `p`'s list prices.
    pub fn cost(&self, p: &Provider) -> f64 {
        self.stored_bytes / 1e9 * p.storage_gb_month
            + self.writes / 1000.0 * p.writes_per_1000
            + self.reads / 1000.0 * p.reads_per_1000
    }

    pub fn add(&mut self, other: &Estimate) {
        self.uploaded_bytes += other.uploaded_bytes;
        self.stored_bytes += other.stored_bytes;
        self.writes += other.writes;
        self.reads += other.reads;
    }
}

/// Times `every` fits in a month (0 for an interval that is off).
fn per_month(every: Duration) -> f64 {
    if every.is_zero() {
        0.0
    } else {
        MONTH_SECONDS / every.as_secs_f64()
    }
}

/// A month of the replica of a database under `load`, replicated with
/// `settings` and compacted under `retention` (none: every file is kept).
pub fn monthly(load: &Load, settings: &Settings, retention: Option<&Retention>) -> Estimate {
    let pages = load.pages_per_second.unwrap_or(0.0);
    let page_bytes = f64::from(load.page_size);
    let change_bytes_per_second = pages * page_bytes;
    let db_bytes = load.db_bytes as f64;
    // A level-0 file per sync interval while pages change, and never more
    // files than pages.
    let l0_files = per_month(settings.sync_interval).min(pages * MONTH_SECONDS);
    let l0_bytes = change_bytes_per_second * MONTH_SECONDS;
    // A database that does not change takes no new snapshot.
    let snapshots = if pages > 0.0 {
        per_month(settings.snapshot_interval)
    } else {
        0.0
    };
    let mut e = Estimate {
        uploaded_bytes: l0_bytes + snapshots * db_bytes,
        stored_bytes: db_bytes + l0_bytes + snapshots * db_bytes,
        writes: l0_files + snapshots,
        reads: 0.0,
    };
    if let Some(r) = retention {
        compacted(
            &mut e,
            r,
            l0_files,
            l0_bytes,
            change_bytes_per_second,
            db_bytes,
            snapshots,
        );
    }
    if !settings.validation_interval.is_zero() {
        // One listing, the snapshot and the files since it, each time.
        let files_per_snapshot = if snapshots > 0.0 {
            l0_files / snapshots
        } else {
            l0_files
        };
        let validations = per_month(settings.validation_interval);
        e.writes += validations;
        e.reads += validations * (1.0 + files_per_snapshot);
    }
    e
}

/// Adds compaction's requests and replaces the stored bytes by what
/// retention keeps.
fn compacted(
    e: &mut Estimate,
    r: &Retention,
    l0_files: f64,
    l0_bytes: f64,
    change_bytes_per_second: f64,
    db_bytes: f64,
    snapshots: f64,
) {
    let mut inputs = l0_files;
    for every in &r.levels {
        let outputs = per_month(*every).min(inputs);
        e.reads += inputs;
        e.writes += outputs;
        e.uploaded_bytes += l0_bytes;
        inputs = outputs;
    }
    // Deleted a batch of up to 1,000 keys at a time.
    e.writes += (l0_files + snapshots) / 1000.0;
    let kept_snapshots = match r.snapshots {
        SnapshotPolicy::Age(age) => age.as_secs_f64() * snapshots / MONTH_SECONDS,
        SnapshotPolicy::Gfs {
            hourly,
            daily,
            weekly,
            monthly,
        } => f64::from(hourly + daily + weekly + monthly).min(snapshots.max(1.0)),
    } + 2.0;
    let window = r.pitr_window.max(r.l0_retention).as_secs_f64();
    // Level 0 and the top level each hold the window's changes.
    e.stored_bytes = kept_snapshots * db_bytes + 2.0 * change_bytes_per_second * window;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            sync_interval: Duration::from_secs(1),
            snapshot_interval: Duration::from_secs(86_400),
            ..Settings::default()
        }
    }

    #[test]
    fn an_idle_database_costs_its_storage_only() {
        let load = Load {
            db_bytes: 1_000_000_000,
            page_size: 4096,
            pages_per_second: Some(0.0),
        };
        let e = monthly(&load, &settings(), None);
        assert_eq!(e.writes, 0.0);
        assert_eq!(e.uploaded_bytes, 0.0);
        assert!((e.cost(&PROVIDERS[0]) - 0.023).abs() < 1e-9);
    }

    #[test]
    fn a_database_written_a_page_a_minute_snapshots_daily() {
        let load = Load {
            db_bytes: 1_000_000_000,
            page_size: 4096,
            pages_per_second: Some(1.0 / 60.0),
        };
        let e = monthly(&load, &settings(), None);
        // 43,200 level-0 files and 30 snapshots of 1 GB.
        assert!((e.writes - 43_230.0).abs() < 1e-6, "{e:?}");
        assert!(
            (e.uploaded_bytes - (30e9 + 43_200.0 * 4096.0)).abs() < 1.0,
            "{e:?}"
        );
    }

    #[test]
    fn a_busy_database_writes_a_file_a_sync_interval_and_retention_bounds_storage() {
        let load = Load {
            db_bytes: 100_000_000,
            page_size: 4096,
            pages_per_second: Some(10.0),
        };
        let e = monthly(&load, &settings(), None);
        assert_eq!(e.writes, MONTH_SECONDS + 30.0);
        let kept = monthly(&load, &settings(), Some(&Retention::default()));
        assert!(kept.stored_bytes < e.stored_bytes, "{kept:?} {e:?}");
        assert!(
            kept.reads >= MONTH_SECONDS,
            "compaction reads level 0: {kept:?}"
        );
    }
}
