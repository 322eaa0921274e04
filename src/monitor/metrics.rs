//! The process-wide counters of a running `watch`: storage requests by kind
//! and outcome, the upload latency histogram and webhook deliveries. All
//! are atomics, so counting costs no lock on the shipping path; the
//! per-database figures live on the status board ([`crate::watch::Board`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A kind of storage request, as the `op` label names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Put,
    Get,
    GetRange,
    List,
    Head,
    Delete,
    DeleteMany,
}

impl Op {
    pub const ALL: [Op; 7] = [
        Op::Put,
        Op::Get,
        Op::GetRange,
        Op::List,
        Op::Head,
        Op::Delete,
        Op::DeleteMany,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Op::Put => "put",
            Op::Get => "get",
            Op::GetRange => "get_range",
            Op::List => "list",
            Op::Head => "head",
            Op::Delete => "delete",
            Op::DeleteMany => "delete_many",
        }
    }
}

/// What became of a webhook delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// The receiver answered 2xx.
    Sent,
    /// Every attempt failed.
    Failed,
    /// The queue was full: never tried.
    Dropped,
}

impl Delivery {
    pub const ALL: [Delivery; 3] = [Delivery::Sent, Delivery::Failed, Delivery::Dropped];

    pub fn label(self) -> &'static str {
        match self {
            Delivery::Sent => "sent",
            Delivery::Failed => "failed",
            Delivery::Dropped => "dropped",
        }
    }
}

/// Upper bounds of the upload latency buckets, in milliseconds.
pub const UPLOAD_BUCKETS_MS: [u64; 12] =
    [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000];

/// The process's counters.
#[derive(Debug)]
pub struct Metrics {
    started: Instant,
    /// By [`Op`] then outcome (0 ok, 1 error).
    requests: [[AtomicU64; 2]; Op::ALL.len()],
    /// Uploads at or below each bucket's bound (not cumulative here; the
    /// exposition sums them), and above the last.
    upload_buckets: [AtomicU64; UPLOAD_BUCKETS_MS.len() + 1],
    upload_micros: AtomicU64,
    deliveries: [AtomicU64; Delivery::ALL.len()],
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            started: Instant::now(),
            requests: Default::default(),
            upload_buckets: Default::default(),
            upload_micros: AtomicU64::new(0),
            deliveries: Default::default(),
        }
    }
}

impl Metrics {
    /// Counts one storage request.
    pub fn request(&self, op: Op, ok: bool) {
        self.requests[op as usize][usize::from(!ok)].fetch_add(1, Ordering::Relaxed);
    }

    /// Records how long one upload (a PUT and its retries) took.
    pub fn upload_took(&self, took: Duration) {
        let ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX);
        let bucket = UPLOAD_BUCKETS_MS
            .iter()
            .position(|&bound| ms <= bound)
            .unwrap_or(UPLOAD_BUCKETS_MS.len());
        self.upload_buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.upload_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// Counts one webhook delivery's outcome.
    pub fn delivered(&self, outcome: Delivery) {
        self.deliveries[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Requests of `op` that succeeded (`ok`) or failed.
    pub fn requests(&self, op: Op, ok: bool) -> u64 {
        self.requests[op as usize][usize::from(!ok)].load(Ordering::Relaxed)
    }

    /// Uploads per bucket (the last is above every bound) and their total
    /// time in seconds.
    pub fn upload_latency(&self) -> ([u64; UPLOAD_BUCKETS_MS.len() + 1], f64) {
        let counts = std::array::from_fn(|i| self.upload_buckets[i].load(Ordering::Relaxed));
        let seconds = self.upload_micros.load(Ordering::Relaxed) as f64 / 1e6;
        (counts, seconds)
    }

    pub fn deliveries(&self, outcome: Delivery) -> u64 {
        self.deliveries[outcome as usize].load(Ordering::Relaxed)
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uploads_land_in_the_first_bucket_that_holds_them() {
        let m = Metrics::default();
        m.upload_took(Duration::from_millis(3));
        m.upload_took(Duration::from_millis(10));
        m.upload_took(Duration::from_millis(11));
        m.upload_took(Duration::from_secs(60));
        let (counts, seconds) = m.upload_latency();
        assert_eq!(counts[0], 1);
        assert_eq!(counts[1], 1);
        assert_eq!(counts[2], 1);
        assert_eq!(counts[UPLOAD_BUCKETS_MS.len()], 1);
        assert!((seconds - 60.024).abs() < 1e-6, "{seconds}");
    }
}
