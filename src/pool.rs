//! A small pool of scoped worker threads: jobs go in over one channel,
//! results come out over another in the order they finish. Restore's and
//! verify's downloads, verify's databases and list's timestamp lookups all
//! run on it. (`watch` has its own long-lived pools, in [`crate::watch`].)

use crossbeam_channel::{unbounded, Receiver, Sender};
use std::thread::Scope;

/// Starts `count` (at least one) threads in `scope` that run `work` on each
/// job sent to the returned sender until it is dropped, and send each
/// result to the returned receiver. A worker stops early when the receiver
/// is gone.
pub fn workers<'scope, 'env, J, R, F>(
    scope: &'scope Scope<'scope, 'env>,
    count: usize,
    work: &'env F,
) -> (Sender<J>, Receiver<R>)
where
    J: Send + 'env,
    R: Send + 'env,
    F: Fn(J) -> R + Sync,
{
    let (job_tx, job_rx) = unbounded::<J>();
    let (result_tx, result_rx) = unbounded::<R>();
    for _ in 0..count.max(1) {
        let (job_rx, result_tx) = (job_rx.clone(), result_tx.clone());
        scope.spawn(move || {
            for job in job_rx {
                if result_tx.send(work(job)).is_err() {
                    break;
                }
            }
        });
    }
    (job_tx, result_rx)
}

/// `work` applied to every item on `count` threads, results in the items'
/// order.
pub fn map<T, R, F>(items: Vec<T>, count: usize, work: F) -> Vec<R>
where
    T: Send,
    R: Send,
    F: Fn(T) -> R + Sync,
{
    let n = items.len();
    let indexed = |(i, item): (usize, T)| (i, work(item));
    let mut out: Vec<Option<R>> = (0..n).map(|_| None).collect();
    std::thread::scope(|s| {
        let (jobs, results) = workers(s, count.min(n), &indexed);
        for job in items.into_iter().enumerate() {
            let _ = jobs.send(job);
        }
        drop(jobs);
        for (i, r) in results {
            out[i] = Some(r);
        }
    });
    out.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn map_keeps_the_order_and_runs_everything() {
        let squares = super::map((0..100u64).collect(), 7, |x| {
            std::thread::sleep(std::time::Duration::from_micros(100 - x));
            x * x
        });
        assert_eq!(squares, (0..100u64).map(|x| x * x).collect::<Vec<_>>());
        assert!(super::map(Vec::<u8>::new(), 4, |x| x).is_empty());
    }
}
