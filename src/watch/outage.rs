//! How one database's run of failed uploads is told: one line when it
//! begins (and again when its kind of error changes, say from an
//! unreachable endpoint to refused credentials), one summary line at most every [`SUMMARY_EVERY`] while it
//! lasts, and one line once the database is caught up again. Caught up
//! means the backlog the outage left is stored and then either a poll
//! finds nothing more to ship or the next file (built after the backlog
//! was stored, so holding at most one sync interval of commits) is stored
//! too: a database written without pause is caught up as well. A
//! 20-second storage outage costs two lines a database, not one a retry.

use crate::error::ErrorClass;
use std::time::Duration;

/// The least time between two summary lines of one outage.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(30);

/// A run of failed uploads, from its first failure until the database is
/// caught up.
#[derive(Debug, Clone, Copy)]
pub(super) struct Outage {
    began_ms: i64,
    failures: u32,
    said_ms: i64,
    /// Files stored since uploads began to succeed again; 0 while they
    /// still fail.
    shipped: u32,
    /// The class of the last failure.
    class: ErrorClass,
}

/// What a failure calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tell {
    /// The first failure, or the first of another class: say it.
    Began,
    /// Say how it goes: `failures` so far over `lasted`.
    Summary { failures: u32, lasted: Duration },
    /// Said recently enough.
    Nothing,
}

/// How an outage ended: it `lasted` from its first failure until the
/// database was caught up, `failures` uploads failed and `shipped` files
/// were stored to catch up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Ended {
    pub lasted: Duration,
    pub failures: u32,
    pub shipped: u32,
}

/// A database's outage, if one is under way.
#[derive(Debug, Default)]
pub(super) struct Outages(Option<Outage>);

impl Outages {
    /// An upload failed at `now_ms` with an error of `class`.
    pub fn failed(&mut self, now_ms: i64, class: ErrorClass) -> Tell {
        let Some(o) = &mut self.0 else {
            self.0 = Some(Outage {
                began_ms: now_ms,
                failures: 1,
                said_ms: now_ms,
                shipped: 0,
                class,
            });
            return Tell::Began;
        };
        o.failures = o.failures.saturating_add(1);
        o.shipped = 0;
        if std::mem::replace(&mut o.class, class) != class {
            o.said_ms = now_ms;
            return Tell::Began;
        }
        if now_ms.saturating_sub(o.said_ms) < crate::fsutil::duration_ms(SUMMARY_EVERY) {
            return Tell::Nothing;
        }
        o.said_ms = now_ms;
        Tell::Summary {
            failures: o.failures,
            lasted: since(o.began_ms, now_ms),
        }
    }

    /// An upload succeeded at `now_ms`: the outage under way, if one, is
    /// over when an upload had succeeded before this one (see the module
    /// doc).
    pub fn succeeded(&mut self, now_ms: i64) -> Option<Ended> {
        let o = self.0.as_mut()?;
        o.shipped = o.shipped.saturating_add(1);
        if o.shipped >= 2 {
            self.caught_up(now_ms)
        } else {
            None
        }
    }

    /// A poll at `now_ms` found nothing more to ship: the outage under way,
    /// if its uploads succeed again, is over.
    pub fn caught_up(&mut self, now_ms: i64) -> Option<Ended> {
        let o = self.0.filter(|o| o.shipped > 0)?;
        self.0 = None;
        Some(Ended {
            lasted: since(o.began_ms, now_ms),
            failures: o.failures,
            shipped: o.shipped,
        })
    }
}

fn since(from_ms: i64, to_ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(to_ms.saturating_sub(from_ms)).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    const S: ErrorClass = ErrorClass::Storage;

    #[test]
    fn one_line_to_begin_a_summary_at_intervals_and_one_to_end() {
        let mut o = Outages::default();
        assert_eq!(o.caught_up(0), None);
        assert_eq!(o.failed(1_000, S), Tell::Began);
        assert_eq!(o.failed(2_000, S), Tell::Nothing);
        assert_eq!(o.failed(30_999, S), Tell::Nothing);
        assert_eq!(
            o.failed(31_000, S),
            Tell::Summary {
                failures: 4,
                lasted: Duration::from_secs(30)
            }
        );
        assert_eq!(o.failed(40_000, S), Tell::Nothing);
        // Still failing: not caught up, whatever a poll finds.
        assert_eq!(o.caught_up(40_500), None);
        assert_eq!(o.succeeded(40_600), None);
        // A failure after a success: the outage goes on.
        assert_eq!(o.failed(40_800, S), Tell::Nothing);
        assert_eq!(o.succeeded(41_000), None);
        // A poll finds nothing more: caught up.
        let ended = Ended {
            lasted: Duration::from_secs(41),
            failures: 6,
            shipped: 1,
        };
        assert_eq!(o.caught_up(42_000), Some(ended));
        assert_eq!(o.caught_up(43_000), None);
        assert_eq!(o.succeeded(43_000), None);
        // Written without pause: the second file stored ends it.
        assert_eq!(o.failed(50_000, S), Tell::Began);
        assert_eq!(o.succeeded(51_000), None);
        let ended = Ended {
            lasted: Duration::from_secs(2),
            failures: 1,
            shipped: 2,
        };
        assert_eq!(o.succeeded(52_000), Some(ended));
        // Another kind of error within one outage is said again.
        assert_eq!(o.failed(60_000, S), Tell::Began);
        assert_eq!(o.failed(61_000, S), Tell::Nothing);
        assert_eq!(o.failed(62_000, ErrorClass::Credentials), Tell::Began);
        assert_eq!(o.failed(63_000, ErrorClass::Credentials), Tell::Nothing);
    }
}
