//! What a replica promises to restore (`[retention]`), and which snapshots
//! a policy keeps beyond the point-in-time window.
//!
//! - Every TXID committed within `pitr_window` of now restores, by TXID and
//!   by time.
//! - Beyond it, snapshots are kept by age (`snapshot_retention`) or by
//!   Grandfather-Father-Son counts (`hourly`, `daily`, `weekly`,
//!   `monthly`): for each of the last N hours (days, ISO weeks, calendar
//!   months, in UTC) that have a snapshot, the newest snapshot of that
//!   period. The newest snapshot is always kept, and the two newest at
//!   least.
//! - Level-0 files stay `l0_retention` at least (followers read them).
//! - Level n (1..=8) is compacted every `compaction_levels[n - 1]`.

use std::collections::BTreeSet;
use std::time::Duration;

/// How long a replica keeps what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention {
    pub pitr_window: Duration,
    pub snapshots: SnapshotPolicy,
    pub l0_retention: Duration,
    /// The compaction interval of levels 1, 2, … (at most 8 levels).
    pub levels: Vec<Duration>,
}

/// Which snapshots beyond the window are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotPolicy {
    /// Those younger than this.
    Age(Duration),
    /// Grandfather-Father-Son: the newest of each of the last N periods
    /// that have one.
    Gfs {
        hourly: u32,
        daily: u32,
        weekly: u32,
        monthly: u32,
    },
}

impl Default for Retention {
    fn default() -> Retention {
        Retention {
            pitr_window: Duration::from_secs(24 * 3600),
            snapshots: SnapshotPolicy::Gfs {
                hourly: 24,
                daily: 7,
                weekly: 12,
                monthly: 12,
            },
            l0_retention: Duration::from_secs(300),
            levels: vec![
                Duration::from_secs(30),
                Duration::from_secs(300),
                Duration::from_secs(3600),
            ],
        }
    }
}

/// One snapshot: its TXID and when it was taken (Unix ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    pub txid: u64,
    pub time_ms: i64,
}

/// The TXIDs of the snapshots `policy` keeps at `now_ms`.
pub fn snapshots_kept(
    snapshots: &[Snapshot],
    now_ms: i64,
    policy: &SnapshotPolicy,
) -> BTreeSet<u64> {
    let mut newest_first: Vec<Snapshot> = snapshots.to_vec();
    newest_first.sort_by_key(|s| std::cmp::Reverse((s.time_ms, s.txid)));
    // The newest always, and the two newest at least.
    let mut kept: BTreeSet<u64> = newest_first.iter().take(2).map(|s| s.txid).collect();
    match policy {
        SnapshotPolicy::Age(age) => {
            let cutoff = now_ms.saturating_sub(i64::try_from(age.as_millis()).unwrap_or(i64::MAX));
            kept.extend(
                newest_first
                    .iter()
                    .filter(|s| s.time_ms >= cutoff)
                    .map(|s| s.txid),
            );
        }
        SnapshotPolicy::Gfs {
            hourly,
            daily,
            weekly,
            monthly,
        } => {
            for (count, period) in [
                (*hourly, Period::Hour),
                (*daily, Period::Day),
                (*weekly, Period::Week),
                (*monthly, Period::Month),
            ] {
                kept.extend(newest_of_periods(&newest_first, count, period));
            }
        }
    }
    kept
}

#[derive(Debug, Clone, Copy)]
enum Period {
    Hour,
    Day,
    /// ISO weeks, from Monday.
    Week,
    /// Calendar months.
    Month,
}

impl Period {
    /// Which period `ms` falls in (UTC), as a number that grows with time.
    fn of(self, ms: i64) -> i64 {
        const HOUR: i64 = 3_600_000;
        const DAY: i64 = 24 * HOUR;
        match self {
            Period::Hour => ms.div_euclid(HOUR),
            Period::Day => ms.div_euclid(DAY),
            // 1970-01-01 was a Thursday: day 4 of its ISO week.
            Period::Week => (ms.div_euclid(DAY) + 3).div_euclid(7),
            Period::Month => match jiff::Timestamp::from_millisecond(ms) {
                Ok(t) => {
                    let date = t.to_zoned(jiff::tz::TimeZone::UTC).date();
                    i64::from(date.year()) * 12 + i64::from(date.month())
                }
                Err(_) => ms.div_euclid(30 * DAY),
            },
        }
    }
}

/// The newest snapshot of each of the last `count` periods that have one
/// (`newest_first` is sorted newest first).
fn newest_of_periods(newest_first: &[Snapshot], count: u32, period: Period) -> Vec<u64> {
    let mut kept = Vec::new();
    let mut last_period = None;
    for s in newest_first {
        if kept.len() >= count as usize {
            break;
        }
        let p = period.of(s.time_ms);
        if last_period != Some(p) {
            kept.push(s.txid);
            last_period = Some(p);
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000;
    const DAY: i64 = 24 * HOUR;

    /// A snapshot every `every` ms for `span` ms before `now`, TXIDs growing.
    fn series(now: i64, span: i64, every: i64) -> Vec<Snapshot> {
        (0..span / every)
            .rev()
            .enumerate()
            .map(|(i, k)| Snapshot {
                txid: i as u64 + 1,
                time_ms: now - k * every,
            })
            .collect()
    }

    #[test]
    fn gfs_keeps_the_newest_of_each_period() {
        // 2026-12-02T07:30:00Z, a Wednesday.
        let now = 1_796_196_600_000;
        let snaps = series(now, 400 * DAY, HOUR / 2);
        let time_of = |txid: u64| snaps.iter().find(|s| s.txid == txid).unwrap().time_ms;
        let policy = SnapshotPolicy::Gfs {
            hourly: 24,
            daily: 7,
            weekly: 12,
            monthly: 12,
        };
        let kept = snapshots_kept(&snaps, now, &policy);
        let newest = snaps.iter().map(|s| s.txid).max().unwrap();
        assert!(kept.contains(&newest) && kept.contains(&(newest - 1)));
        let hours: BTreeSet<i64> = kept.iter().map(|&t| Period::Hour.of(time_of(t))).collect();
        assert!(hours.len() >= 24);
        // Months: 12 distinct calendar months, the oldest about a year ago.
        let months: BTreeSet<i64> = kept.iter().map(|&t| Period::Month.of(time_of(t))).collect();
        assert_eq!(months.len(), 12);
        let oldest = kept.iter().map(|&t| time_of(t)).min().unwrap();
        assert!(now - oldest > 300 * DAY && now - oldest < 366 * DAY);
        // Far fewer than the 19,200 taken; no more than the counts allow.
        assert!(kept.len() <= 2 + 24 + 7 + 12 + 12, "{}", kept.len());
        // Each kept daily one is the newest of its day.
        for &t in &kept {
            let day = Period::Day.of(time_of(t));
            let newest_that_day = snaps
                .iter()
                .filter(|s| Period::Day.of(s.time_ms) == day)
                .map(|s| s.txid)
                .max()
                .unwrap();
            if Period::Day.of(now) - day < 7 {
                assert!(kept.contains(&newest_that_day));
            }
        }
    }

    #[test]
    fn weeks_start_on_monday() {
        // 2026-11-29 (Sunday) and 2026-11-30 (Monday), noon UTC.
        let sunday = 1_795_953_600_000;
        let monday = sunday + DAY;
        assert_ne!(Period::Week.of(sunday), Period::Week.of(monday));
        assert_eq!(Period::Week.of(monday), Period::Week.of(monday + 6 * DAY));
    }

    #[test]
    fn the_newest_two_are_kept_whatever_the_policy() {
        let now = 1_796_196_600_000;
        let old = series(now - 100 * DAY, 3 * DAY, DAY);
        let kept = snapshots_kept(&old, now, &SnapshotPolicy::Age(Duration::from_secs(3600)));
        assert_eq!(kept.len(), 2);
        let none = SnapshotPolicy::Gfs {
            hourly: 0,
            daily: 0,
            weekly: 0,
            monthly: 0,
        };
        assert_eq!(snapshots_kept(&old, now, &none).len(), 2);
        let young = series(now, 10 * HOUR, HOUR);
        let kept = snapshots_kept(
            &young,
            now,
            &SnapshotPolicy::Age(Duration::from_secs(5 * 3600)),
        );
        assert_eq!(kept.len(), 6, "{kept:?}");
    }
}
