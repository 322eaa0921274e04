//! Capped exponential backoff with jitter: the one retry schedule of
//! walsync, for storage requests and for uploads that failed after them.
//!
//! The n-th delay is a random value in `[d/2, d]` where `d = min(cap, base ·
//! 2^n)` ("equal jitter"): it grows fast enough to spare a struggling
//! service, and the randomness keeps a thousand databases that failed
//! together from retrying in lockstep.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The first and the longest delay before a failed upload is retried, by
/// default: half a second, doubling to 30 s.
pub const UPLOAD_DELAYS: (Duration, Duration) =
    (Duration::from_millis(500), Duration::from_secs(30));

/// A retry schedule; [`Backoff::next_delay`] moves it on, [`Backoff::reset`]
/// starts it over after a success.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
    rng: u64,
}

impl Backoff {
    /// Starts at `base`, doubling up to `cap`.
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff {
            base,
            cap: cap.max(base),
            attempt: 0,
            rng: seed(),
        }
    }

    /// Between attempts of one storage request: 100 ms, doubling to 2 s,
    /// so that a request waiting out an outage notices its end within 2 s.
    pub fn request() -> Backoff {
        Backoff::new(Duration::from_millis(100), Duration::from_secs(2))
    }

    /// Between uploads of one batch (each already retried as requests):
    /// [`UPLOAD_DELAYS`] (`watch` takes `[retry]` over this).
    pub fn upload() -> Backoff {
        Backoff::new(UPLOAD_DELAYS.0, UPLOAD_DELAYS.1)
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let d = self
            .base
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        let half = d / 2;
        let span = u64::try_from(half.as_micros()).unwrap_or(u64::MAX).max(1);
        half + Duration::from_micros(self.next_random() % (span + 1))
    }

    /// Starts the schedule over.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }
}

/// A different non-zero seed for every schedule.
fn seed() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mixed = nanos
        ^ (u64::from(std::process::id()) << 32)
        ^ COUNTER.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
    mixed | 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_within_jitter_bounds_then_cap() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let bounds = [100, 200, 400, 800, 1000, 1000];
        for (n, d) in bounds.iter().enumerate() {
            let got = b.next_delay();
            let d = Duration::from_millis(*d);
            assert!(
                got >= d / 2 && got <= d,
                "delay {n}: {got:?} not in [{:?}, {d:?}]",
                d / 2
            );
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn delays_are_not_constant() {
        // Jitter: among many schedules, the capped delays differ.
        let delays: std::collections::HashSet<Duration> = (0..20)
            .map(|_| {
                let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
                (0..6).map(|_| b.next_delay()).last().unwrap()
            })
            .collect();
        assert!(delays.len() > 10, "{delays:?}");
        // Growth: the first delay of a schedule is below its fifth.
        let mut b = Backoff::request();
        let first = b.next_delay();
        let fifth = (0..4).map(|_| b.next_delay()).last().unwrap();
        assert!(first < fifth, "{first:?} then {fifth:?}");
    }
}
