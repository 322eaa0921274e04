//! The storage's health as every database of a `watch` sees it: a circuit
//! breaker over upload outcomes, shared by the pollers.
//!
//! Each database retries a failed upload on its own backoff, which grows
//! during an outage. Alone, that would leave the replica trailing for as
//! long as the longest backoff after storage came back. The circuit ends
//! that: after `threshold` failed uploads in a row (over all databases) it
//! opens, and no database sends a retry while it is open, except one probe
//! every `cooldown`. The first upload that succeeds closes it and counts a
//! recovery; every database whose upload failed before that recovery
//! retries at once, whatever its own backoff says (see [`Circuit::recoveries`]).
//!
//! Invariant: while open, at most one probe is out at a time; a probe's
//! failure opens the circuit for another `cooldown`, its success closes it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The `[retry]` settings of the circuit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitSettings {
    pub enabled: bool,
    /// Failed uploads in a row that open the circuit.
    pub threshold: u32,
    /// How long it stays open before a probe.
    pub cooldown: Duration,
}

impl Default for CircuitSettings {
    /// On, 10 failures, a probe a second: storage that comes back is seen
    /// within about a second.
    fn default() -> Self {
        CircuitSettings {
            enabled: true,
            threshold: 10,
            cooldown: Duration::from_secs(1),
        }
    }
}

/// What an outcome changed, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    None,
    /// The circuit opened after this many failures in a row.
    Opened(u32),
    /// Storage answered again after failing for this long.
    Recovered(Duration),
}

pub struct Circuit {
    settings: CircuitSettings,
    state: Mutex<State>,
    recoveries: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    failures: u32,
    failing_since: Option<Instant>,
    open_until: Option<Instant>,
    probe_out: bool,
}

impl Circuit {
    pub fn new(settings: CircuitSettings) -> Circuit {
        Circuit {
            settings,
            state: Mutex::new(State::default()),
            recoveries: AtomicU64::new(0),
        }
    }

    /// Whether a retry may be sent now: always while closed; while open,
    /// only as the one probe once the cooldown is over.
    pub fn allow(&self, now: Instant) -> bool {
        if !self.settings.enabled {
            return true;
        }
        let mut s = self.lock();
        match s.open_until {
            None => true,
            Some(until) if now >= until && !s.probe_out => {
                s.probe_out = true;
                true
            }
            Some(_) => false,
        }
    }

    /// Whether the circuit is open and its probe may go now: any database
    /// with a retry waiting may send it, whatever its own backoff says.
    pub fn wants_probe(&self, now: Instant) -> bool {
        if !self.settings.enabled {
            return false;
        }
        let s = self.lock();
        s.open_until.is_some_and(|until| now >= until) && !s.probe_out
    }

    /// An upload was stored.
    pub fn succeeded(&self, now: Instant) -> Transition {
        let mut s = self.lock();
        let Some(since) = s.failing_since.take() else {
            return Transition::None;
        };
        *s = State::default();
        self.recoveries.fetch_add(1, Ordering::SeqCst);
        Transition::Recovered(now.saturating_duration_since(since))
    }

    /// An upload failed (after its requests' own retries).
    pub fn failed(&self, now: Instant) -> Transition {
        let mut s = self.lock();
        s.failures = s.failures.saturating_add(1);
        s.failing_since.get_or_insert(now);
        let was_open = s.open_until.is_some();
        if !self.settings.enabled || s.failures < self.settings.threshold {
            return Transition::None;
        }
        s.open_until = Some(now + self.settings.cooldown);
        s.probe_out = false;
        if was_open {
            Transition::None
        } else {
            Transition::Opened(s.failures)
        }
    }

    /// How many times storage came back so far. A database whose upload
    /// failed when this was lower than it is now retries at once.
    pub fn recoveries(&self) -> u64 {
        self.recoveries.load(Ordering::SeqCst)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is a few counters, consistent after every statement:
        // a panic elsewhere cannot leave it half-written.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_the_threshold_probes_once_and_closes_on_success() {
        let c = Circuit::new(CircuitSettings {
            enabled: true,
            threshold: 3,
            cooldown: Duration::from_millis(100),
        });
        let t0 = Instant::now();
        assert_eq!(c.failed(t0), Transition::None);
        assert_eq!(c.failed(t0), Transition::None);
        assert_eq!(c.failed(t0), Transition::Opened(3));
        assert!(!c.allow(t0), "open: no retries");
        let later = t0 + Duration::from_millis(150);
        assert!(c.wants_probe(later), "the cooldown is over");
        assert!(c.allow(later), "one probe after the cooldown");
        assert!(!c.wants_probe(later), "the probe is out");
        assert!(!c.allow(later), "only one");
        assert_eq!(c.failed(later), Transition::None, "the probe failed");
        assert!(!c.allow(later + Duration::from_millis(50)));
        let again = later + Duration::from_millis(120);
        assert!(c.allow(again));
        assert_eq!(c.recoveries(), 0);
        assert_eq!(
            c.succeeded(again),
            Transition::Recovered(again - t0),
            "storage is back"
        );
        assert_eq!(c.recoveries(), 1);
        assert!(c.allow(again), "closed");
        assert_eq!(c.succeeded(again), Transition::None);
    }
}
