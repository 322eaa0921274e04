//! How one database's run of failed uploads is told: one line when it
//! begins, one summary line at most every [`SUMMARY_EVERY`] while it
//! lasts, and one line when an upload succeeds again. A 20-second storage
//! outage costs two lines a database, not one a retry.

use std::time::Duration;

/// The least time between two summary lines of one outage.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(30);

/// A run of failed uploads that is under way.
#[derive(Debug, Clone, Copy)]
pub(super) struct Outage {
    began_ms: i64,
    failures: u32,
    said_ms: i64,
}

/// What a failure calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tell {
    /// The first failure: say it.
    Began,
    /// Say how it goes: `failures` so far over `lasted`.
    Summary { failures: u32, lasted: Duration },
    /// Said recently enough.
    Nothing,
}

/// A database's outage, if one is under way.
#[derive(Debug, Default)]
pub(super) struct Outages(Option<Outage>);

impl Outages {
    /// An upload failed at `now_ms`.
    pub fn failed(&mut self, now_ms: i64) -> Tell {
        let Some(o) = &mut self.0 else {
            self.0 = Some(Outage {
                began_ms: now_ms,
                failures: 1,
                said_ms: now_ms,
            });
            return Tell::Began;
        };
        o.failures = o.failures.saturating_add(1);
        if now_ms.saturating_sub(o.said_ms) < crate::fsutil::duration_ms(SUMMARY_EVERY) {
            return Tell::Nothing;
        }
        o.said_ms = now_ms;
        Tell::Summary {
            failures: o.failures,
            lasted: since(o.began_ms, now_ms),
        }
    }

    /// An upload succeeded at `now_ms`: how long the outage it ends
    /// lasted and how many uploads failed in it, if one was under way.
    pub fn succeeded(&mut self, now_ms: i64) -> Option<(Duration, u32)> {
        self.0
            .take()
            .map(|o| (since(o.began_ms, now_ms), o.failures))
    }
}

fn since(from_ms: i64, to_ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(to_ms.saturating_sub(from_ms)).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_to_begin_a_summary_at_intervals_and_one_to_end() {
        let mut o = Outages::default();
        assert_eq!(o.succeeded(0), None);
        assert_eq!(o.failed(1_000), Tell::Began);
        assert_eq!(o.failed(2_000), Tell::Nothing);
        assert_eq!(o.failed(30_999), Tell::Nothing);
        assert_eq!(
            o.failed(31_000),
            Tell::Summary {
                failures: 4,
                lasted: Duration::from_secs(30)
            }
        );
        assert_eq!(o.failed(40_000), Tell::Nothing);
        assert_eq!(o.succeeded(41_000), Some((Duration::from_secs(40), 5)));
        assert_eq!(o.succeeded(42_000), None);
        assert_eq!(o.failed(50_000), Tell::Began);
    }
}
