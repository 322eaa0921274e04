//! When a database's next level-9 snapshot is due. Four triggers, each
//! off at 0, any one of them suffices:
//!
//! - `snapshot_interval`: this long since the last snapshot (a database
//!   unchanged since then keeps its snapshot, and nothing is stored);
//! - `snapshot_max_changes`: this many WAL pages shipped since it;
//! - `snapshot_on_idle`: no change shipped for this long, after changes;
//! - `snapshot_max_interval`: this long since the first change after it.
//!
//! The counts and times they read live in the local state
//! ([`LocalState::pages_since_snapshot`] and the change times), so they
//! carry over a restart.

use super::shipper::Settings;
use super::state::LocalState;
use std::fmt;
use std::time::Duration;

/// Which trigger made a snapshot due, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Interval,
    MaxChanges,
    OnIdle,
    MaxInterval,
}

impl Trigger {
    /// The setting that made it due.
    pub fn name(self) -> &'static str {
        match self {
            Trigger::Interval => "snapshot_interval",
            Trigger::MaxChanges => "snapshot_max_changes",
            Trigger::OnIdle => "snapshot_on_idle",
            Trigger::MaxInterval => "snapshot_max_interval",
        }
    }
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The first trigger that makes a snapshot due at `now_ms`, if any.
pub fn snapshot_due(settings: &Settings, state: &LocalState, now_ms: i64) -> Option<Trigger> {
    let passed = |since: i64, d: Duration| {
        !d.is_zero() && now_ms.saturating_sub(since) >= crate::fsutil::duration_ms(d)
    };
    let changed = state.pages_since_snapshot > 0 || state.txid != state.last_snapshot_txid;
    if passed(state.last_snapshot_ms, settings.snapshot_interval) {
        return Some(Trigger::Interval);
    }
    if !changed {
        return None;
    }
    if settings.snapshot_max_changes > 0
        && state.pages_since_snapshot >= settings.snapshot_max_changes
    {
        return Some(Trigger::MaxChanges);
    }
    if state.last_change_ms > 0 && passed(state.last_change_ms, settings.snapshot_on_idle) {
        return Some(Trigger::OnIdle);
    }
    if state.first_change_ms > 0 && passed(state.first_change_ms, settings.snapshot_max_interval) {
        return Some(Trigger::MaxInterval);
    }
    None
}

/// Records in `state` that a file of `pages` changed pages was built at
/// `now_ms` (a level-0 file; a snapshot resets the counts instead).
pub fn record_change(state: &mut LocalState, pages: u64, now_ms: i64) {
    state.pages_since_snapshot = state.pages_since_snapshot.saturating_add(pages);
    if state.first_change_ms == 0 {
        state.first_change_ms = now_ms;
    }
    state.last_change_ms = now_ms;
}

/// Records in `state` that a snapshot was built at `now_ms`.
pub fn record_snapshot(state: &mut LocalState, now_ms: i64) {
    state.last_snapshot_ms = now_ms;
    state.pages_since_snapshot = 0;
    state.first_change_ms = 0;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> LocalState {
        let mut s = super::super::state::new_state("file:///r", "db", 4096);
        s.txid = 5;
        s.last_snapshot_txid = 5;
        s.last_snapshot_ms = 1_000;
        s
    }

    fn settings(interval: u64, changes: u64, idle: u64, max: u64) -> Settings {
        Settings {
            snapshot_interval: Duration::from_secs(interval),
            snapshot_max_changes: changes,
            snapshot_on_idle: Duration::from_secs(idle),
            snapshot_max_interval: Duration::from_secs(max),
            ..Settings::default()
        }
    }

    #[test]
    fn each_trigger_fires_on_its_own_and_zero_disables_it() {
        let mut s = state();
        let off = settings(0, 0, 0, 0);
        assert_eq!(snapshot_due(&off, &s, 1_000_000_000), None);
        assert_eq!(
            snapshot_due(&settings(60, 0, 0, 0), &s, 61_000),
            Some(Trigger::Interval)
        );
        // No change: only the interval can fire.
        assert_eq!(snapshot_due(&settings(0, 1, 1, 1), &s, 1_000_000), None);
        record_change(&mut s, 40, 10_000);
        s.txid = 6;
        assert_eq!(snapshot_due(&settings(0, 50, 0, 0), &s, 10_000), None);
        record_change(&mut s, 10, 12_000);
        s.txid = 7;
        assert_eq!(
            snapshot_due(&settings(0, 50, 0, 0), &s, 12_000),
            Some(Trigger::MaxChanges)
        );
        assert_eq!(snapshot_due(&settings(0, 0, 5, 0), &s, 16_999), None);
        assert_eq!(
            snapshot_due(&settings(0, 0, 5, 0), &s, 17_000),
            Some(Trigger::OnIdle)
        );
        assert_eq!(snapshot_due(&settings(0, 0, 0, 8), &s, 17_999), None);
        assert_eq!(
            snapshot_due(&settings(0, 0, 0, 8), &s, 18_000),
            Some(Trigger::MaxInterval)
        );
        record_snapshot(&mut s, 20_000);
        s.last_snapshot_txid = s.txid;
        assert_eq!(snapshot_due(&settings(0, 1, 1, 1), &s, 1_000_000), None);
    }
}
